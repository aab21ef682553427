--- What every benchmark script shares (the protocol of docs/benchmarks.md):
-- the monotonic clock, timed repetitions with a full GC before each, the
-- lower median and the minimum, and the output line format.
local ffi = require "ffi"
local jit = require "jit"

local M = {}

local fmt, sort, floor, tonumber = string.format, table.sort, math.floor, tonumber

ffi.cdef [[
struct bench_harness_timespec { long tv_sec; long tv_nsec; };
int bench_harness_clock_gettime(int clk, struct bench_harness_timespec *ts) __asm__("clock_gettime");
]]

local CLOCK_MONOTONIC = 1
local ts = ffi.new("struct bench_harness_timespec")


--- Seconds on the monotonic clock.
function M.now()
    ffi.C.bench_harness_clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end


--- Runs once(r) `reps` times, each after a full GC; once returns whether
-- its result was right and, optionally, the seconds it measured itself.
-- Returns the lower median, the minimum and whether every run was right.
function M.measure(reps, once)
    local times, ok = {}, true
    for r = 1, reps do
        collectgarbage()
        collectgarbage()
        local start = M.now()
        local good, seconds = once(r)
        times[r] = seconds or (M.now() - start)
        ok = good and ok
    end
    sort(times)
    return times[floor((reps + 1) / 2)], times[1], ok
end


--- The runtime key of the output line, e.g. "luajit2.1.0-beta3".
function M.runtime()
    return (jit.version:lower():gsub("%s+", ""))
end


--- Writes one result line; the first six keys are fixed, extra is
-- appended as is (" key=value ...").
function M.line(workload, impl, n, seconds, tasks, min_s, reps, ok, extra)
    io.write(fmt("workload=%s impl=%s n=%d seconds=%.6f tasks_per_s=%.1f tasks=%d "
        .. "us_per_task=%.3f min_s=%.6f reps=%d ok=%d runtime=%s%s\n",
        workload, impl, n, seconds, tasks / seconds, tasks, seconds / tasks * 1e6, min_s, reps,
        ok and 1 or 0, M.runtime(), extra or ""))
end



--- The protocol every workload script follows: reads "NAME [N]" from
-- argv, builds the run (timed: build_s), warms up twice at
-- spec.warmup_n(w, n), times spec.reps runs at N and writes the line.
-- spec = { script, usage, impl, reps, workloads (name -> w, with
-- default_n and tasks(n)), warmup_n(w, n), build(w, n) -> state,
-- run(w, state, n) -> right?, extra(name, n, seconds, build_s) -> text }.
-- Returns the exit status: 0, 1 (a wrong result) or 2 (usage).
function M.main(argv, spec)
    local name = argv[1]
    local w = spec.workloads[name or ""]
    local n = w and tonumber(argv[2] or tostring(w.default_n))
    if not w or not n or n < 1 or n % 1 ~= 0 then
        io.stderr:write("usage: luajit ", spec.script, " ", spec.usage, " [N]\n")
        return 2
    end
    local t0 = M.now()
    local state = spec.build(w, n)
    local build_s = M.now() - t0
    local small = spec.warmup_n(w, n)
    local small_state = small == n and state or spec.build(w, small)
    local ok = true
    for _ = 1, 2 do
        ok = spec.run(w, small_state, small) and ok
    end
    local seconds, min_s, good = M.measure(spec.reps, function()
        return spec.run(w, state, n)
    end)
    ok = ok and good
    M.line(name, spec.impl, n, seconds, w.tasks(n), min_s, spec.reps, ok,
           spec.extra(name, n, seconds, build_s))
    return ok and 0 or 1
end

return M
