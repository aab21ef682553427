-- bench/w4.lua: W4 (docs/benchmarks.md), parallel CPU. 8 x cores
-- loops of ~50 ms, run serially and in parallel, interleaved in pairs, by
-- tide (kind = "sync" tasks) and by a bare LuaJIT + libuv pool (lua-luv,
-- uv.new_work), all in this one process. Then the per-task cost of a
-- trivial sync task (marshalling and queueing).
--
--   luajit bench/w4.lua          (after make, from the repo root)
package.path = "lua/?.lua;lua/?/init.lua;bench/?.lua;" .. package.path
package.cpath = "build/lib/?.so;" .. package.cpath

local harness = require "harness"
local tide = require "tide"
local core = require "tide.core"

local fmt, sort, floor = string.format, table.sort, math.floor
local now = harness.now

local CORES = core.cores()
local N = 8 * CORES
local PAIRS = 5

-- The CPU loop, self-contained so that it can be shipped as bytecode.
local function spin(iters)
    local s = 0
    for i = 1, iters do s = (s + i * i) % 1000003 end
    return s
end

-- Iterations for ~50 ms in this runtime.
local function calibrate()
    local iters = 100000
    while true do
        local t0 = now()
        spin(iters)
        local dt = now() - t0
        if dt > 0.02 then return floor(iters * 0.050 / dt) end
        iters = iters * 2
    end
end

local function serial(iters)
    local t0 = now()
    for _ = 1, N do spin(iters) end
    return now() - t0
end

local function median(t)
    local c = {}
    for i, v in ipairs(t) do c[i] = v end
    sort(c)
    return c[floor((#c + 1) / 2)]
end

-- Pairs of (serial, engine) runs; returns speedup, speedup_med, serial_s,
-- engine_s.
local function pairs_of(iters, engine)
    local sers, engs, ratios = {}, {}, {}
    engine(iters) -- warm-up: threads, states, traces
    for i = 1, PAIRS do
        collectgarbage()
        sers[i] = serial(iters)
        collectgarbage()
        engs[i] = engine(iters)
        ratios[i] = sers[i] / engs[i]
    end
    sort(sers)
    sort(engs)
    return sers[1] / engs[1], median(ratios), sers[1], engs[1]
end

local iters = calibrate()

-- tide: one executor, N sync tasks per run.
local ex = tide.executor { threads = CORES }
local p = tide.pipeline "w4"
p:task("spin", { kind = "sync" }, spin)
local function tide_run(n_iters)
    local t0 = now()
    local ids = {}
    for i = 1, N do ids[i] = ex:submit(p, n_iters) end
    ex:run()
    for i = 1, N do assert(type(ex:result(ids[i])) == "number", "a W4 task failed") end
    return now() - t0
end

local lines = {}
local sp, med, ser, eng = pairs_of(iters, tide_run)
lines[#lines + 1] = { "tide", sp, med, ser, eng }

-- The bare pool: lua-luv's uv.new_work on libuv's threadpool.
local has_luv, uv = pcall(require, "luv")
if has_luv then
    local function luv_run(n_iters)
        local t0 = now()
        local pending = N
        local w = uv.new_work(function(n)
            local s = 0
            for i = 1, n do s = (s + i * i) % 1000003 end
            return s
        end, function() pending = pending - 1 end)
        for _ = 1, N do w:queue(n_iters) end
        uv.run("default")
        assert(pending == 0)
        return now() - t0
    end
    sp, med, ser, eng = pairs_of(iters, luv_run)
    lines[#lines + 1] = { "luajit-luv-pool", sp, med, ser, eng }
end

for _, l in ipairs(lines) do
    harness.line("W4", l[1], N, l[5], N, l[5], PAIRS, true,
                 fmt(" speedup=%.3f speedup_med=%.3f serial_s=%.6f iters=%d threads=%d",
                     l[2], l[3], l[4], iters, CORES))
end
if #lines == 2 then
    local r = lines[1][2] / lines[2][2]
    print(fmt("ratio workload=W4 tide_speedup=%.3f pool_speedup=%.3f ratio=%.3f target=0.97 ok=%d",
              lines[1][2], lines[2][2], r, r >= 0.97 and 1 or 0))
end

-- The cost of a trivial sync task: 20000 x (return x + 1).
local q = tide.pipeline "trivial-sync"
q:task("inc", { kind = "sync" }, function(x) return x + 1 end)
local inputs = {}
for i = 1, 20000 do inputs[i] = i end
local seconds, min_s = harness.measure(5, function()
    local outs = tide.run(q, inputs, { threads = CORES })
    return outs[20000] == 20001
end)
harness.line("sync-trivial", "tide", #inputs, seconds, #inputs, min_s, 5, true, fmt(" threads=%d", CORES))
ex:close()
