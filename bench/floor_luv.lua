-- bench/floor_luv.lua: the W5 floor of ../shared/WORKLOADS.md (impl=luajit-luv).
--
-- N coroutines, each sleeping 10 ms on its own libuv timer through Debian's
-- lua-luv (`apt-get install lua-luv`), resumed from the timer callback; the
-- wall time of running all of them is the result.
--
--   luajit bench/floor_luv.lua W5 [N]          (N defaults to 1000)

package.path = "bench/?.lua;" .. package.path
local harness = require "harness"
local uv = require "luv"

local error, tonumber = error, tonumber
local co_create, co_resume, co_running, co_yield =
    coroutine.create, coroutine.resume, coroutine.running, coroutine.yield
local fmt = string.format
local floor = math.floor
local io_stderr = io.stderr

local SLEEP_S = 0.010
local REPS = 5


-- Suspends the calling coroutine for `secs` on a one-shot uv timer.
local function sleep(secs)
    local co = co_running()
    local timer = uv.new_timer()
    timer:start(floor(secs * 1000 + 0.5), 0, function()
        timer:close()
        local ok, err = co_resume(co)
        if not ok then
            error(err)
        end
    end)
    co_yield()
end


-- Starts n coroutines that each sleep SLEEP_S, runs the loop until all are
-- done, and returns how many finished.
local function run(n)
    local done = 0
    local function body()
        sleep(SLEEP_S)
        done = done + 1
    end
    uv.update_time() -- the loop's cached "now" is stale after an idle gap
    for _ = 1, n do
        local ok, err = co_resume(co_create(body))
        if not ok then
            error(err)
        end
    end
    uv.run("default")
    return done
end


local function main(argv)
    local name, n = argv[1], tonumber(argv[2] or "1000")
    if name ~= "W5" or not n or n < 1 or n % 1 ~= 0 then
        io_stderr:write("usage: luajit bench/floor_luv.lua W5 [N]\n")
        return 2
    end

    local ok = true
    for _ = 1, 2 do
        ok = run(n) == n and ok
    end
    local seconds, min_s, good = harness.measure(REPS, function()
        return run(n) == n
    end)
    ok = ok and good
    harness.line("W5", "luajit-luv", n, seconds, n, min_s, REPS, ok,
                 fmt(" concurrency=%.1f luv=%s", n * SLEEP_S / seconds, uv.version_string()))
    return ok and 0 or 1
end


os.exit(main(arg))
