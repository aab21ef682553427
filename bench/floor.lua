-- bench/floor.lua: the `luajit-queue` floor (docs/benchmarks.md).
--
-- Plain LuaJIT, no C, no libuv: a shared task template (the DAG, compiled
-- once and interpreted at run time), a per-context table of dependency
-- counters, one FIFO ready queue of (context, task) pairs, fan-out children
-- with a join counter. Task bodies are called directly (no coroutine).
--
--   luajit bench/floor.lua W1|W2|W3 [N]        (N defaults to 100000)
--
-- Prints one result line (docs/benchmarks.md) on stdout.
--
-- DESIGN
-- ------
-- The floor is what tide's per-task overhead is measured against, so it
-- does no work the workloads do not need. What that means here:
--
-- * Bytes count more than instructions. On the 2-core VM the figures come
--   from, the first touch of a fresh page costs ~20 us (a page fault), and
--   LuaJIT's allocator hands much of a run's garbage back to the kernel
--   when the full GC before the next run frees it (blocks of 128 KiB and
--   more at once): a run's time follows the memory it allocates. So a context is one table, the input at [0] and
--   the output of task t at [t] in its array part, plus its counters, a
--   second array table at [-1]; both are sized once (table.new) and never
--   grow, and no context has named fields (a hash part sized for them
--   would make each context 400 bytes instead of 230).
-- * The queue is two arrays (contexts, tasks) with a head index. Taken
--   slots are not cleared: clearing the front of a growing array makes
--   LuaJIT's next resize count it as sparse and move it to the hash part.
-- * The loop is one function with no closures and no recursion: the end of
--   a fan-out child hands its value to the parent's join, and the last one
--   queues the gather task on the parent like any other ready task.
-- * A body gets its input: a root the context's input, a task with one
--   predecessor that one's output, a task with several their outputs as
--   arguments, in `after` order (no table per call). It returns its output.

package.path = "bench/?.lua;" .. package.path
local harness = require "harness"
local tnew = require "table.new"

local error, ipairs, type, unpack = error, ipairs, type, unpack
local fmt = string.format

local WARMUP_N = 10000
local REPS = 5


---------------------------------------------------------------------------
-- The DAG template.

local function dag_new(name)
    return { name = name, decl = {} }
end


-- opts: after = name | {names}, map = true (the body returns a list: each
-- element runs the successors in a child context of its own), gather = true
-- (runs once in the parent context of the innermost open map, on the list of
-- what its children handed it).
local function dag_task(dag, name, opts, fn)
    local after = opts.after
    if type(after) == "string" then
        after = { after }
    end
    dag.decl[#dag.decl + 1] = {
        name = name, after = after or {}, map = opts.map, gather = opts.gather, fn = fn,
    }
end


-- Resolves names; rejects duplicates, unknown names, cycles, a gather with
-- other than one predecessor or with no map upstream, and a task joining
-- tasks of different fan-out levels. Returns the template: flat arrays
-- indexed by task number.
local function dag_compile(dag)
    local decl = dag.decl
    local ntask = #decl
    local index = {}
    for t, d in ipairs(decl) do
        if index[d.name] then
            error("duplicate task " .. d.name)
        end
        index[d.name] = t
    end
    local tpl = {
        ntask = ntask, names = {}, fn = {}, npred = {}, pred1 = {}, preds = {},
        succ = {}, ismap = {}, isgather = {}, gather_of = {}, roots = {}, sinks = {},
    }
    for t, d in ipairs(decl) do
        tpl.names[t], tpl.fn[t], tpl.succ[t] = d.name, d.fn, {}
        tpl.ismap[t], tpl.isgather[t] = d.map and true or false, d.gather and true or false
    end
    for t, d in ipairs(decl) do
        local preds = {}
        for k, pname in ipairs(d.after) do
            local p = index[pname]
            if not p then
                error("task " .. d.name .. ": unknown task " .. pname)
            end
            preds[k] = p
            local s = tpl.succ[p]
            s[#s + 1] = t
        end
        if d.gather and #preds ~= 1 then
            error("gather task " .. d.name .. " needs exactly one predecessor")
        end
        tpl.npred[t], tpl.preds[t] = #preds, preds
        tpl.pred1[t] = preds[1] or 0
        if #preds == 0 then
            tpl.roots[#tpl.roots + 1] = t
        end
    end
    for t = 1, ntask do
        if #tpl.succ[t] == 0 then
            tpl.sinks[#tpl.sinks + 1] = t
        end
    end
    -- Kahn's order: finds cycles, and gives each task its fan-out level (how
    -- many maps are open where it runs) from its predecessors'.
    local left, order, level = {}, {}, {}
    for t = 1, ntask do
        left[t] = tpl.npred[t]
        if left[t] == 0 then
            order[#order + 1] = t
        end
    end
    local k = 1
    while k <= #order do
        local t = order[k]
        k = k + 1
        local lv = 0
        for j, p in ipairs(tpl.preds[t]) do
            local l = level[p] + (tpl.ismap[p] and 1 or 0)
            if j > 1 and l ~= lv then
                error("task " .. tpl.names[t] .. " joins tasks of different fan-out levels")
            end
            lv = l
        end
        if tpl.isgather[t] then
            lv = lv - 1
            if lv < 0 then
                error("gather task " .. tpl.names[t] .. " has no map upstream")
            end
        end
        level[t] = lv
        for _, s in ipairs(tpl.succ[t]) do
            left[s] = left[s] - 1
            if left[s] == 0 then
                order[#order + 1] = s
            end
        end
    end
    if #order ~= ntask then
        error("pipeline " .. dag.name .. " has a cycle")
    end
    -- The gather that closes map t is the one downstream of it back at its
    -- level: every path from t to a task at that level passes through one,
    -- and one counter per map cannot count two.
    for t = 1, ntask do
        if tpl.ismap[t] then
            local seen, stack = {}, { t }
            while #stack > 0 do
                local u = stack[#stack]
                stack[#stack] = nil
                for _, s in ipairs(tpl.succ[u]) do
                    if not seen[s] then
                        seen[s] = true
                        if tpl.isgather[s] and level[s] == level[t] then
                            if tpl.gather_of[t] then
                                error("map task " .. tpl.names[t] .. " is closed by two gathers")
                            end
                            tpl.gather_of[t] = s
                        elseif level[s] > level[t] then
                            stack[#stack + 1] = s
                        end
                    end
                end
            end
        end
    end
    return tpl
end


---------------------------------------------------------------------------
-- The scheduler.

-- A new context: [0] = input, [t] = output of task t (both in the array
-- part) and [-1] = its counters: [t] = predecessors of t not done yet, nil
-- before the first is. A fan-out child has no input of its own (its first
-- task's input is its element): [0] is its index among its siblings and
-- [-2] its parent. Negative keys live in the hash part, which nhash sizes
-- once: 1 slot, 2 for a child.
local function ctx_new(ntask, nhash, input)
    local c = tnew(ntask, nhash)
    c[0], c[-1] = input, tnew(ntask, 0)
    return c
end


-- Task t of c finished with output v: stores it and releases the successors
-- of t that have all their inputs. A successor that is a gather, reached
-- from a fan-out child, takes v into the parent's join instead; the last
-- child to arrive queues the gather on the parent. Returns the new tail.
local function release(qc, qt, tail, npred, pred1, isgather, ss, c, t, v)
    c[t] = v
    for k = 1, #ss do
        local s = ss[k]
        if isgather[s] then
            local parent = c[-2]
            local items = parent[-4]
            items[c[0]] = v
            local n = parent[-5] - 1
            parent[-5] = n
            if n == 0 then
                parent[pred1[s]] = items
                tail = tail + 1
                qc[tail], qt[tail] = parent, s
            end
        else
            local cnt = c[-1]
            local n = (cnt[s] or npred[s]) - 1
            cnt[s] = n
            if n == 0 then
                tail = tail + 1
                qc[tail], qt[tail] = c, s
            end
        end
    end
    return tail
end


-- Runs every input through the template; returns the sink outputs indexed
-- like inputs (a table keyed by sink name when the DAG has several sinks).
local function run(tpl, inputs)
    local ntask, fns, npred, pred1 = tpl.ntask, tpl.fn, tpl.npred, tpl.pred1
    local preds, succ = tpl.preds, tpl.succ
    local ismap, isgather, gather_of = tpl.ismap, tpl.isgather, tpl.gather_of
    local roots, sinks, names = tpl.roots, tpl.sinks, tpl.names
    local ninput, nroot = #inputs, #roots
    local ctxs = tnew(ninput, 0)
    local qc, qt = tnew(ninput * nroot, 0), tnew(ninput * nroot, 0)
    local head, tail = 1, 0

    for i = 1, ninput do
        local c = ctx_new(ntask, 1, inputs[i])
        ctxs[i] = c
        for k = 1, nroot do
            tail = tail + 1
            qc[tail], qt[tail] = c, roots[k]
        end
    end

    while head <= tail do
        local c, t = qc[head], qt[head]
        head = head + 1
        local np = npred[t]
        local v
        if np == 0 then
            v = fns[t](c[0])
        elseif np == 1 then
            v = fns[t](c[pred1[t]])
        elseif np == 2 then
            local ps = preds[t]
            v = fns[t](c[ps[1]], c[ps[2]])
        else
            local ps, args = preds[t], tnew(np, 0)
            for k = 1, np do
                args[k] = c[ps[k]]
            end
            v = fns[t](unpack(args, 1, np))
        end
        local ss = succ[t]
        if ismap[t] then
            -- Fan-out: one child context per element; the gather that
            -- closes this map, if any, counts them back in ([-4] = the
            -- items, [-5] = how many are still to come).
            local n, g = #v, gather_of[t]
            c[t] = v
            if g then
                local items = tnew(n, 0)
                c[-4], c[-5] = items, n
                if n == 0 then
                    c[pred1[g]] = items
                    tail = tail + 1
                    qc[tail], qt[tail] = c, g
                end
            end
            for i = 1, n do
                local child = ctx_new(ntask, 2, i)
                child[-2] = c
                tail = release(qc, qt, tail, npred, pred1, isgather, ss, child, t, v[i])
            end
        else
            tail = release(qc, qt, tail, npred, pred1, isgather, ss, c, t, v)
        end
    end

    local results = tnew(ninput, 0)
    local nsink = #sinks
    for i = 1, ninput do
        local c = ctxs[i]
        if nsink == 1 then
            results[i] = c[sinks[1]]
        else
            local r = {}
            for k = 1, nsink do
                r[names[sinks[k]]] = c[sinks[k]]
            end
            results[i] = r
        end
    end
    return results
end


---------------------------------------------------------------------------
-- Workloads.

local workloads = {}

workloads.W1 = {
    default_n = 100000,
    tasks = function(n) return 4 * n end,
    dag = function()
        local d = dag_new("w1")
        dag_task(d, "t0", {}, function(x) return x + 1 end)
        dag_task(d, "t1", { after = "t0" }, function(x) return x + 1 end)
        dag_task(d, "t2", { after = "t1" }, function(x) return x + 1 end)
        dag_task(d, "t3", { after = "t2" }, function(x) return x + 1 end)
        return dag_compile(d)
    end,
    inputs = function(n)
        local t = {}
        for i = 0, n - 1 do
            t[i + 1] = i
        end
        return t
    end,
    check = function(n, out)
        local s = 0
        for i = 1, n do
            if type(out[i]) ~= "number" then
                return false
            end
            s = s + out[i]
        end
        return s == n * (n - 1) / 2 + 4 * n
    end,
}

workloads.W2 = {
    default_n = 100000,
    tasks = function(n) return n + 2 end,
    dag = function()
        local d = dag_new("w2")
        dag_task(d, "split", { map = true }, function(n)
            local items = {}
            for i = 0, n - 1 do
                items[i + 1] = i
            end
            return items
        end)
        dag_task(d, "inc", { after = "split" }, function(x) return x + 1 end)
        dag_task(d, "reduce", { after = "inc", gather = true }, function(xs)
            local s = 0
            for i = 1, #xs do
                s = s + xs[i]
            end
            return s
        end)
        return dag_compile(d)
    end,
    inputs = function(n) return { n } end,
    check = function(n, out)
        return out[1] == n * (n + 1) / 2
    end,
}

workloads.W3 = {
    default_n = 100000,
    tasks = function(n) return 4 * n end,
    dag = function()
        local d = dag_new("w3")
        dag_task(d, "a", {}, function(v) return v + 1 end)
        dag_task(d, "b", { after = "a" }, function(a) return a + 1 end)
        dag_task(d, "c", { after = "a" }, function(a) return a + 2 end)
        dag_task(d, "d", { after = { "b", "c" } }, function(b, c) return b + c end)
        return dag_compile(d)
    end,
    inputs = workloads.W1.inputs,
    check = function(n, out)
        local s = 0
        for i = 1, n do
            if type(out[i]) ~= "number" then
                return false
            end
            s = s + out[i]
        end
        return s == n * (n - 1) + 5 * n
    end,
}


---------------------------------------------------------------------------
-- Protocol: warm-up twice at a small n, REPS timed runs at N with a full
-- GC before each, lower median and minimum.

os.exit(harness.main(arg, {
    script = "bench/floor.lua", usage = "W1|W2|W3", impl = "luajit-queue", reps = REPS,
    workloads = workloads,
    warmup_n = function(_, n) return n < WARMUP_N and n or WARMUP_N end,
    build = function(w, n) return { tpl = w.dag(), inputs = w.inputs(n) } end,
    run = function(w, st, n) return w.check(n, run(st.tpl, st.inputs)) end,
    extra = function(_, _, _, build_s) return fmt(" build_s=%.6f", build_s) end,
}))
