-- bench/tide.lua: workloads W1, W2, W3 and W5 (docs/benchmarks.md) for
-- tide (impl=tide), written against tide's public Lua API.
--
-- Run from the repo root with a stock luajit, after `make`:
--
--   luajit bench/tide.lua W1|W2|W3 [N]      (N defaults to 100000)
--   luajit bench/tide.lua W5 [N]            (N defaults to 1000)
--
-- The timed section is `tide.run(p, inputs)` with default options: submit
-- every input, schedule, run the bodies, collect the outputs, on the
-- executor tide.run keeps between calls (made by the warm-up). Declaring
-- the pipeline and building the inputs is reported as build_s.

package.path = "lua/?.lua;lua/?/init.lua;bench/?.lua;" .. package.path
package.cpath = "build/lib/?.so;" .. package.cpath

local harness = require "harness"

local loaded, tide = pcall(require, "tide")
if not loaded then
    io.stderr:write("bench/tide.lua: cannot load tide (run `make` first, from the repo root): ",
        tostring(tide), "\n")
    os.exit(3)
end

local tostring, type = tostring, type
local fmt = string.format
local io_stderr = io.stderr
local now = harness.now

local WARMUP_N = 10000
local REPS = 5
local SLEEP_S = 0.010


local function range_inputs(n)
    local t = {}
    for i = 0, n - 1 do
        t[i + 1] = i
    end
    return t
end


-- Sum of outputs[1..n], or nil when one is not a number.
local function sum_outputs(n, outputs)
    local s = 0
    for i = 1, n do
        local v = outputs[i]
        if type(v) ~= "number" then
            return nil
        end
        s = s + v
    end
    return s
end


---------------------------------------------------------------------------
-- Workloads: pipeline(n) declares the DAG, inputs(n) builds the inputs,
-- check(n, outputs) verifies the result.

local workloads = {}

workloads.W1 = {
    default_n = 100000,
    tasks = function(n) return 4 * n end,
    pipeline = function()
        local p = tide.pipeline "w1"
        p:task("t0", {}, function(x) return x + 1 end)
        p:task("t1", { after = "t0" }, function(x) return x + 1 end)
        p:task("t2", { after = "t1" }, function(x) return x + 1 end)
        p:task("t3", { after = "t2" }, function(x) return x + 1 end)
        return p
    end,
    inputs = range_inputs,
    check = function(n, outputs)
        return sum_outputs(n, outputs) == n * (n - 1) / 2 + 4 * n
    end,
}

workloads.W2 = {
    default_n = 100000,
    tasks = function(n) return n + 2 end,
    pipeline = function()
        local p = tide.pipeline "w2"
        p:task("split", { map = true }, function(n)
            local items = {}
            for i = 0, n - 1 do
                items[i + 1] = i
            end
            return items
        end)
        p:task("inc", { after = "split" }, function(x) return x + 1 end)
        p:task("reduce", { after = "inc", gather = true }, function(xs)
            local s = 0
            for i = 1, #xs do
                s = s + xs[i]
            end
            return s
        end)
        return p
    end,
    inputs = function(n) return { n } end,
    check = function(n, outputs)
        return outputs[1] == n * (n + 1) / 2
    end,
}

workloads.W3 = {
    default_n = 100000,
    tasks = function(n) return 4 * n end,
    pipeline = function()
        local p = tide.pipeline "w3"
        p:task("a", {}, function(v) return v + 1 end)
        p:task("b", { after = "a" }, function(a) return a + 1 end)
        p:task("c", { after = "a" }, function(a) return a + 2 end)
        p:task("d", { after = { "b", "c" } }, function(input) return input.b + input.c end)
        return p
    end,
    inputs = range_inputs,
    check = function(n, outputs)
        return sum_outputs(n, outputs) == n * (n - 1) + 5 * n
    end,
}

workloads.W5 = {
    default_n = 1000,
    full_warmup = true,
    tasks = function(n) return n end,
    pipeline = function()
        local p = tide.pipeline "w5"
        p:task("sleep", {}, function(x)
            tide.sleep(SLEEP_S)
            return x
        end)
        return p
    end,
    inputs = range_inputs,
    check = function(n, outputs)
        for i = 1, n do
            if outputs[i] ~= i - 1 then
                return false
            end
        end
        return true
    end,
}


---------------------------------------------------------------------------
-- Protocol: warm-up twice at a small n (W5: at N), REPS timed runs at N with
-- a full GC before each, lower median and minimum.

-- Runs p on inputs; true when every output is right and no input failed.
-- The first error record is reported on stderr.
local function run_checked(w, p, n, inputs)
    local start = now()
    local outputs, errors = tide.run(p, inputs)
    local seconds = now() - start
    if errors ~= nil then
        for i = 1, #inputs do
            if errors[i] ~= nil then
                io_stderr:write(fmt("bench/tide.lua: input %d failed: %s\n", i, tostring(errors[i])))
                return false, seconds
            end
        end
    end
    if outputs == nil or not w.check(n, outputs) then
        io_stderr:write("bench/tide.lua: wrong outputs\n")
        return false, seconds
    end
    return true, seconds
end


os.exit(harness.main(arg, {
    script = "bench/tide.lua", usage = "W1|W2|W3|W5", impl = "tide", reps = REPS,
    workloads = workloads,
    warmup_n = function(w, n) return (w.full_warmup or n < WARMUP_N) and n or WARMUP_N end,
    build = function(w, n) return { p = w.pipeline(), inputs = w.inputs(n) } end,
    run = function(w, st, n) return run_checked(w, st.p, n, st.inputs) end,
    extra = function(name, n, seconds, build_s)
        local extra = fmt(" build_s=%.6f", build_s)
        if name == "W5" then
            extra = fmt(" concurrency=%.1f", n * SLEEP_S / seconds) .. extra
        end
        if type(tide._VERSION) == "string" then
            extra = extra .. " tide=" .. tide._VERSION
        end
        return extra
    end,
}))
