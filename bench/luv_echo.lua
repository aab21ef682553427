-- bench/luv_echo.lua: a lua-luv TCP echo server that runs tide inside its
-- loop, for the host-latency figures of docs/benchmarks.md and the spec
-- spec/e2e/luv_spec.lua.
--
--   luajit bench/luv_echo.lua [DRIVER] [N]    (from the repository root)
--
-- It listens on a free loopback port and prints "port P". A client line
-- "go" submits N async tasks (default 10000), each computing ~50 us, then
-- sleeping 1 ms, then computing again; every other line is echoed back
-- with "busy " or "idle " in front (whether tide still runs those jobs).
-- "quit" ends the server. DRIVER is how tide is driven: "adapter" (the
-- default: require("tide.luv").attach) or "timer" (a timer re-armed with
-- tide.timeout(), 0 when work is ready: what hosts wrote by hand before
-- the adapter, which starves the host's I/O while tide has work).
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("TIDE_BUILD") or "build") .. "/lib/?.so;" .. package.cpath

local uv = require "luv"
local tide = require "tide"

local driver, n = arg[1] or "adapter", tonumber(arg[2]) or 10000

local p = tide.pipeline "echo-load"
local function work(x)
    local s = 0
    for i = 1, 20000 do s = s + (i * x) % 7 end
    return s
end
p:task("t", function(x)
    local a = work(x)
    tide.sleep(0.001)
    return a + work(x + 1)
end)

local ex = tide.executor()
local done, started = 0, nil
ex:subscribe(function(_, status)
    if status == "done" then done = done + 1 end
    if done == n then
        io.stderr:write(string.format("luv_echo: %d tasks in %.3f s\n", n, uv.hrtime() / 1e9 - started))
    end
end)

local drive
if driver == "adapter" then
    drive = require("tide.luv").attach(uv)
elseif driver == "timer" then
    local timer = uv.new_timer()
    local function tick()
        tide.step()
        local t = tide.timeout()
        if t then timer:start(math.ceil(t * 1000), 0, tick) end
    end
    drive = { step = function() if not timer:is_active() then tick() end end,
              close = function() timer:close() end }
    local poll = uv.new_poll(tide.fd())
    poll:start("r", function() drive.step() end)
    local close = drive.close
    drive.close = function() poll:close() close() end
else
    error("driver must be adapter or timer")
end

local server = uv.new_tcp()
server:bind("127.0.0.1", 0)
server:listen(16, function()
    local c = uv.new_tcp()
    server:accept(c)
    local buf = ""
    c:read_start(function(err, chunk)
        if err or not chunk then c:close() return end
        buf = buf .. chunk
        for line in buf:gmatch("([^\n]*)\n") do
            if line == "go" then
                started = uv.hrtime() / 1e9
                for i = 1, n do ex:submit(p, i) end
                c:write("started\n")
            elseif line == "quit" then
                c:write("bye\n")
                c:close()
                drive.close()
                server:close()
                return
            else
                c:write((ex:stats().live > 0 and "busy " or "idle ") .. line .. "\n")
            end
        end
        buf = buf:match("[^\n]*$")
    end)
end)
print("port " .. server:getsockname().port)
io.stdout:flush()
uv.run()
ex:close()
