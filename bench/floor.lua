-- bench/floor.lua: the `luajit-queue` floor of docs/benchmarks.md.
--
-- Plain LuaJIT, no C, no libuv: a shared task template (the DAG, compiled
-- once and interpreted at run time), a per-context table of dependency
-- counters, one FIFO ready queue of (context, task) pairs, fan-out children
-- with a join counter. Task bodies are called directly (no coroutine).
--
--   luajit bench/floor.lua W1|W2|W3 [N]        (N defaults to 100000)
--
-- Prints one result line on stdout, in the format of bench/harness.lua
-- (docs/benchmarks.md).

package.path = "bench/?.lua;" .. package.path
local harness = require "harness"
local tnew = require "table.new"

local error, ipairs, type = error, ipairs, type
local fmt = string.format

local WARMUP_N = 10000
local REPS = 5


---------------------------------------------------------------------------
-- The DAG template.

local function dag_new(name)
    return { name = name, decl = {} }
end


-- opts: after = name | {names}, map = true, gather = true.
local function dag_task(dag, name, opts, fn)
    local after = opts.after
    if type(after) == "string" then
        after = { after }
    end
    dag.decl[#dag.decl + 1] = {
        name = name, after = after or {}, map = opts.map, gather = opts.gather, fn = fn,
    }
end


-- Resolves names, checks duplicates, unknown names and cycles, and returns
-- the template: flat arrays indexed by task number.
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
        prednames = {}, succ = {}, ismap = {}, gather_of = {}, roots = {}, nsink = 0,
    }
    for t, d in ipairs(decl) do
        tpl.names[t], tpl.fn[t], tpl.succ[t] = d.name, d.fn, {}
        tpl.ismap[t] = d.map and true or false
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
        tpl.npred[t], tpl.preds[t], tpl.prednames[t] = #preds, preds, d.after
        tpl.pred1[t] = preds[1] or 0
        if #preds == 0 then
            tpl.roots[#tpl.roots + 1] = t
        end
    end
    for t = 1, ntask do
        if #tpl.succ[t] == 0 then
            tpl.nsink = tpl.nsink + 1
        end
    end
    -- Cycle check (Kahn).
    local left, stack, seen = {}, {}, 0
    for t = 1, ntask do
        left[t] = tpl.npred[t]
        if left[t] == 0 then
            stack[#stack + 1] = t
        end
    end
    while #stack > 0 do
        local t = stack[#stack]
        stack[#stack] = nil
        seen = seen + 1
        for _, s in ipairs(tpl.succ[t]) do
            left[s] = left[s] - 1
            if left[s] == 0 then
                stack[#stack + 1] = s
            end
        end
    end
    if seen ~= ntask then
        error("pipeline " .. dag.name .. " has a cycle")
    end
    -- Each map task is closed by the gather task downstream of it that
    -- brings the map nesting depth back to zero (nested maps each get their
    -- own); without one, its children run to the sinks.
    for t = 1, ntask do
        if tpl.ismap[t] then
            local queue, qdepth, head = { t }, { 1 }, 1
            while head <= #queue and not tpl.gather_of[t] do
                local u, depth = queue[head], qdepth[head]
                head = head + 1
                for _, s in ipairs(tpl.succ[u]) do
                    local d = depth
                    if decl[s].gather then
                        d = d - 1
                        if d == 0 then
                            tpl.gather_of[t] = s
                            break
                        end
                    end
                    if tpl.ismap[s] then
                        d = d + 1
                    end
                    local q = #queue + 1
                    queue[q], qdepth[q] = s, d
                end
            end
        end
    end
    return tpl
end


---------------------------------------------------------------------------
-- The scheduler. A context is one table: the outputs of its finished tasks
-- in the array part ([task] = output) and the fields input, cnt (its table
-- of dependency counters: [task] = predecessors left, nil meaning none done
-- yet), idx (its index among the inputs or its map index), parent and gather
-- (for a fan-out child) and join, items (while its own children run).

-- Runs every input through the template; returns the sink outputs indexed
-- like inputs (a table keyed by sink name when the DAG has several sinks).
local function run(tpl, inputs)
    local ntask, fns, npred, pred1 = tpl.ntask, tpl.fn, tpl.npred, tpl.pred1
    local preds, prednames, succ, names = tpl.preds, tpl.prednames, tpl.succ, tpl.names
    local ismap, gather_of, roots = tpl.ismap, tpl.gather_of, tpl.roots
    local multisink = tpl.nsink > 1
    local qc, qt, head, tail = {}, {}, 0, 0
    local results = {}

    local function new_ctx(input, idx, parent, gather)
        local c = tnew(ntask, 8)
        c.input, c.cnt, c.idx, c.parent, c.gather = input, tnew(ntask, 0), idx, parent, gather
        return c
    end

    -- Records c's output of task t and makes the successors that have all
    -- their inputs ready.
    local function complete(c, t, v)
        c[t] = v
        local ss = succ[t]
        local ns = #ss
        if ns == 0 then
            if c.parent == nil then
                if multisink then
                    local r = results[c.idx] or {}
                    r[names[t]] = v
                    results[c.idx] = r
                else
                    results[c.idx] = v
                end
            end
            return
        end
        for k = 1, ns do
            local s = ss[k]
            if s == c.gather then
                -- End of a fan-out child: hand the value to the parent's join.
                local parent = c.parent
                local items = parent.items
                items[c.idx] = v
                local left = parent.join - 1
                parent.join = left
                if left == 0 then
                    parent.items = nil
                    complete(parent, t, items)
                end
            else
                local cnt = c.cnt
                local left = (cnt[s] or npred[s]) - 1
                cnt[s] = left
                if left == 0 then
                    tail = tail + 1
                    qc[tail], qt[tail] = c, s
                end
            end
        end
    end

    for i = 1, #inputs do
        local c = new_ctx(inputs[i], i, nil, nil)
        for k = 1, #roots do
            tail = tail + 1
            qc[tail], qt[tail] = c, roots[k]
        end
    end

    while head < tail do
        head = head + 1
        local c, t = qc[head], qt[head]
        qc[head] = nil
        local np = npred[t]
        local x
        if np == 0 then
            x = c.input
        elseif np == 1 then
            x = c[pred1[t]]
        else
            x = tnew(0, np)
            local ps, pn = preds[t], prednames[t]
            for k = 1, np do
                x[pn[k]] = c[ps[k]]
            end
        end
        local v = fns[t](x)
        if ismap[t] then
            -- Fan-out: one child context per element, joined at the gather.
            local n, g = #v, gather_of[t]
            c[t] = v
            if g then
                c.join, c.items = n, tnew(n, 0)
                if n == 0 then
                    complete(c, preds[g][1], {})
                end
            end
            for i = 1, n do
                complete(new_ctx(nil, i, c, g), t, v[i])
            end
        else
            complete(c, t, v)
        end
        if head == tail then
            head, tail = 0, 0
        end
    end
    return results
end


---------------------------------------------------------------------------
-- Workloads.

local workloads = {}

workloads.W1 = {
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
    tasks = function(n) return 4 * n end,
    dag = function()
        local d = dag_new("w3")
        dag_task(d, "a", {}, function(v) return v + 1 end)
        dag_task(d, "b", { after = "a" }, function(a) return a + 1 end)
        dag_task(d, "c", { after = "a" }, function(a) return a + 2 end)
        dag_task(d, "d", { after = { "b", "c" } }, function(input) return input.b + input.c end)
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
