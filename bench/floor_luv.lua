-- bench/floor_luv.lua: the W5 floor of ../shared/WORKLOADS.md (impl=luajit-luv).
--
-- N coroutines, each sleeping 10 ms on its own libuv timer through Debian's
-- lua-luv (`apt-get install lua-luv`), resumed from the timer callback; the
-- wall time of running all of them is the result.
--
--   luajit bench/floor_luv.lua W5 [N]          (N defaults to 1000)

local ffi = require "ffi"
local jit = require "jit"
local uv = require "luv"

local error, tonumber = error, tonumber
local collectgarbage = collectgarbage
local co_create, co_resume, co_running, co_yield =
    coroutine.create, coroutine.resume, coroutine.running, coroutine.yield
local fmt = string.format
local sort = table.sort
local floor = math.floor
local io_write, io_stderr = io.write, io.stderr

local CLOCK_MONOTONIC = 1
local SLEEP_S = 0.010
local REPS = 5

ffi.cdef [[
struct floor_luv_timespec { long tv_sec; long tv_nsec; };
int floor_luv_clock_gettime(int clk, struct floor_luv_timespec *ts) __asm__("clock_gettime");
]]

local ts = ffi.new("struct floor_luv_timespec")


local function now()
    ffi.C.floor_luv_clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end


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
    local times = {}
    for r = 1, REPS do
        collectgarbage()
        collectgarbage()
        local start = now()
        local done = run(n)
        times[r] = now() - start
        ok = done == n and ok
    end
    sort(times)
    local seconds, min_s = times[floor((REPS + 1) / 2)], times[1]
    io_write(fmt("workload=W5 impl=luajit-luv n=%d seconds=%.6f tasks_per_s=%.1f tasks=%d "
        .. "us_per_task=%.3f min_s=%.6f reps=%d ok=%d runtime=%s concurrency=%.1f luv=%s\n",
        n, seconds, n / seconds, n, seconds / n * 1e6, min_s, REPS, ok and 1 or 0,
        (jit.version:lower():gsub("%s+", "")), n * SLEEP_S / seconds, uv.version_string()))
    return ok and 0 or 1
end


os.exit(main(arg))
