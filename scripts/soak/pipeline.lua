--- The soak's pipeline (make soak): what a job does is chosen by its
-- input's op, so one server sees successes, failures, retries, timeouts,
-- slow jobs (cancelled or waited for) and sync work on worker threads.
local tide = require "tide"

local p = tide.pipeline "soak"
p:task("work", { retry = { times = 2 }, timeout = 0.2 }, function(x, ctx)
    local op = x.op
    if op == "fail" then error("failing on purpose") end -- three attempts, then failed
    if op == "retry" and ctx.attempt == 1 then return nil, "the first attempt fails" end
    if op == "timeout" then tide.sleep(1) end -- ETIMEDOUT three times
    if op == "slow" then tide.sleep(0.15) end
    return { op = op, n = x.n, pad = ("p"):rep(x.pad or 0) }
end)
p:task("crunch", { after = "work", kind = "sync" }, function(r)
    if r.op == "sync" then
        local s = 0
        for i = 1, 20000 do s = s + i % 7 end
        r.sum = s
    end
    return r
end)
return p
