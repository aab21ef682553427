-- bench/floor_luv.lua: the W5 floor (impl=luajit-luv, docs/benchmarks.md).
--
-- N coroutines, each sleeping 10 ms on its own libuv timer through Debian's
-- lua-luv (`apt-get install lua-luv`), resumed from the timer callback; the
-- wall time of running all of them is the result.
--
--   luajit bench/floor_luv.lua W5 [N]          (N defaults to 1000)

package.path = "bench/?.lua;" .. package.path
local harness = require "harness"
local uv = require "luv"

local error = error
local co_create, co_resume, co_running, co_yield =
    coroutine.create, coroutine.resume, coroutine.running, coroutine.yield
local fmt = string.format
local floor = math.floor

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


os.exit(harness.main(arg, {
    script = "bench/floor_luv.lua", usage = "W5", impl = "luajit-luv", reps = REPS,
    workloads = { W5 = { default_n = 1000, tasks = function(n) return n end } },
    warmup_n = function(_, n) return n end,
    build = function() return nil end,
    run = function(_, _, n) return run(n) == n end,
    extra = function(_, n, seconds)
        return fmt(" concurrency=%.1f luv=%s", n * SLEEP_S / seconds, uv.version_string())
    end,
}))
