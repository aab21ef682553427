-- wrk script of make soak: a steady mix of requests against tide serve.
-- Each thread numbers its jobs; ids carry the run's and the thread's tag
-- so that a cancel or a long-poll can name a job submitted just before.
-- luacheck: globals wrk setup init request response
local threads = {}
local counter = 1

function setup(thread)
    thread:set("tag", string.format("%s-%d", os.getenv("SOAK_TAG") or "s", counter))
    counter = counter + 1
    table.insert(threads, thread)
end

local tag, n, step = nil, 0, 0
local JSON = { ["Content-Type"] = "application/json" }

function init()
    tag = wrk.thread:get("tag")
end

local function id(k) return tag .. "-" .. k end

local function post(op, query, extra)
    n = n + 1
    local body = string.format('{"id":"%s","input":{"op":"%s","n":%d%s}}', id(n), op, n, extra or "")
    return wrk.format("POST", "/v1/jobs" .. (query or ""), JSON, body)
end

function request()
    step = step + 1
    local k = step % 24
    if k <= 6 then return post("ok") end
    if k == 7 then return post("ok", nil, ',"pad":2000') end
    if k == 8 then return post("fail") end
    if k == 9 then return post("retry") end
    if k == 10 then return post("timeout") end
    if k == 11 then return post("slow") end
    if k == 12 then return wrk.format("DELETE", "/v1/jobs/" .. id(n)) end -- cancel the slow one
    if k == 13 then return post("ok", "?wait=1") end -- long-poll that gets its result
    if k == 14 then return post("slow", "?wait=0.05") end -- long-poll whose wait ends first (202)
    if k == 15 then return wrk.format("GET", "/v1/jobs/" .. id(n) .. "/result?wait=0.5") end
    if k == 16 then return post("sync") end
    if k == 17 then return wrk.format("GET", "/v1/jobs/" .. id(n - 3)) end
    if k == 18 then return wrk.format("GET", "/v1/jobs/" .. id(n - 5) .. "/result") end
    if k == 19 then return wrk.format("GET", "/healthz") end
    if k == 20 then return wrk.format("GET", "/metrics") end
    if k == 21 then return wrk.format("GET", "/v1/jobs/nope-" .. step) end -- 404
    if k == 22 then return wrk.format("POST", "/v1/jobs", JSON, "{not json") end -- 400
    return wrk.format("GET", "/v1/stats")
end
