-- bench/floor.lua: the `luajit-queue` floor (docs/benchmarks.md).
--
-- Plain LuaJIT, no C, no libuv: a task template shared by every context,
-- a per-context table of dependency counters, one FIFO ready queue of
-- (context, task) pairs, fan-out children with a join counter. Task bodies
-- are called directly (no coroutine).
--
--   luajit bench/floor.lua W1|W2|W3 [N]        (N defaults to 100000)
--
-- Prints one result line (docs/benchmarks.md) on stdout.
--
-- DESIGN
-- ------
-- The floor is the least a scheduler of this kind can do, written the way
-- a careful Lua programmer would in an afternoon; tide's ratios are taken
-- against it, so it must neither do more than that (then tide looks
-- better than it is) nor less (then it is not the same algorithm).
--
-- * A context is a table with named fields: the task bodies read and
--   write them (`c.v = c.v + 1`), and `pend` holds its counters, one per
--   task (predecessors not done yet), filled when the context is made.
-- * The queue is two arrays, contexts and task numbers, with a head and
--   a tail. Taken slots are not cleared: clearing the front of a growing
--   array makes LuaJIT's next resize count it as sparse and move it to
--   the hash part, a hash insert per push from then on.
-- * A body that returns a list fans out: each element is a child context
--   that runs the successors of that task, except the join, which runs
--   once in the parent when its last child reaches it.
-- * One loop, no closure, no recursion, nothing per task but the call and
--   the counters.
--
-- An earlier floor passed values between tasks (inputs as arguments,
-- outputs as returns, stored in the context's array part) and sized every
-- table once. It measured 0.055 s for W1 in some processes and 0.14 s in
-- others (the allocator's state decides how many pages a run faults in)
-- and half the reference's time for W2: not the same floor. This one
-- follows the reference algorithm, so the ratios mean what they say.

package.path = "bench/?.lua;" .. package.path
local harness = require "harness"

local fmt = string.format

local WARMUP_N = 10000
local REPS = 5


---------------------------------------------------------------------------
-- The template: tasks[i] = { fn = body(c), downs = {successors}, nups =
-- number of predecessors, join = true for the task a fan-out's children
-- report to }; roots lists the tasks without predecessors.

local function template(spec)
    local tasks, roots = {}, {}
    for i, s in ipairs(spec) do
        tasks[i] = { fn = s.fn, downs = {}, nups = #s.deps, join = s.join or false }
    end
    for i, s in ipairs(spec) do
        for _, d in ipairs(s.deps) do
            local downs = tasks[d].downs
            downs[#downs + 1] = i
        end
    end
    for i, t in ipairs(tasks) do
        if t.nups == 0 then roots[#roots + 1] = i end
    end
    return tasks, roots
end


-- A context's counters: one per task, its predecessors not done yet.
local function counters(tasks, ntask)
    local pend = {}
    for t = 1, ntask do pend[t] = tasks[t].nups end
    return pend
end


---------------------------------------------------------------------------
-- The scheduler. Returns the number of task executions.

local function run(tasks, roots, ctxs)
    local ntask, nroot = #tasks, #roots
    local qc, qt, head, tail = {}, {}, 1, 0
    for i = 1, #ctxs do
        local c = ctxs[i]
        c.pend = counters(tasks, ntask)
        for k = 1, nroot do
            tail = tail + 1
            qc[tail], qt[tail] = c, roots[k]
        end
    end
    local ran = 0
    while head <= tail do
        local c, t = qc[head], qt[head]
        head = head + 1
        local task = tasks[t]
        local children = task.fn(c)
        ran = ran + 1
        local downs = task.downs
        if children then
            -- Fan-out: every child runs the successors, but the join,
            -- which waits in the parent for all of them.
            c.waiting = #children
            for k = 1, #children do
                local ch = children[k]
                ch.parent = c
                ch.pend = counters(tasks, ntask)
                for j = 1, #downs do
                    local d = downs[j]
                    if not tasks[d].join then
                        tail = tail + 1
                        qc[tail], qt[tail] = ch, d
                    end
                end
            end
        else
            local pend, parent = c.pend, c.parent
            for j = 1, #downs do
                local d = downs[j]
                if parent and tasks[d].join then
                    local left = parent.waiting - 1
                    parent.waiting = left
                    if left == 0 then
                        tail = tail + 1
                        qc[tail], qt[tail] = parent, d
                    end
                else
                    local left = pend[d] - 1
                    pend[d] = left
                    if left == 0 then
                        tail = tail + 1
                        qc[tail], qt[tail] = c, d
                    end
                end
            end
        end
    end
    return ran
end


---------------------------------------------------------------------------
-- Workloads: each run makes its contexts (inside the timed run, as tide
-- makes its own), schedules them and returns the checked sum.

local function inc(c) c.v = c.v + 1 end

local function contexts(n)
    local ctxs = {}
    for i = 0, n - 1 do ctxs[i + 1] = { v = i } end
    return ctxs
end

local workloads = {}

workloads.W1 = {
    default_n = 100000,
    tasks = function(n) return 4 * n end,
    build = function() return { template { { fn = inc, deps = {} }, { fn = inc, deps = { 1 } },
                                           { fn = inc, deps = { 2 } }, { fn = inc, deps = { 3 } } } } end,
    run = function(st, n)
        local ctxs = contexts(n)
        local ran = run(st[1], st[2], ctxs)
        local s = 0
        for i = 1, n do s = s + ctxs[i].v end
        return ran == 4 * n and s == n * (n - 1) / 2 + 4 * n
    end,
}

workloads.W2 = {
    default_n = 100000,
    tasks = function(n) return n + 2 end,
    build = function(n)
        local function split(c)
            local items = {}
            for i = 0, c.n - 1 do items[i + 1] = { v = i } end
            c.items = items
            return items
        end
        local function reduce(c)
            local s, items = 0, c.items
            for i = 1, #items do s = s + items[i].v end
            c.sum = s
        end
        return { template { { fn = split, deps = {} }, { fn = inc, deps = { 1 } },
                            { fn = reduce, deps = { 2 }, join = true } } }
    end,
    run = function(st, n)
        local root = { n = n }
        local ran = run(st[1], st[2], { root })
        return ran == n + 2 and root.sum == n * (n + 1) / 2
    end,
}

workloads.W3 = {
    default_n = 100000,
    tasks = function(n) return 4 * n end,
    build = function()
        return { template {
            { fn = function(c) c.a = c.v + 1 end, deps = {} },
            { fn = function(c) c.b = c.a + 1 end, deps = { 1 } },
            { fn = function(c) c.c = c.a + 2 end, deps = { 1 } },
            { fn = function(c) c.d = c.b + c.c end, deps = { 2, 3 } } } }
    end,
    run = function(st, n)
        local ctxs = contexts(n)
        local ran = run(st[1], st[2], ctxs)
        local s = 0
        for i = 1, n do s = s + ctxs[i].d end
        return ran == 4 * n and s == n * (n - 1) + 5 * n
    end,
}


---------------------------------------------------------------------------
-- Protocol: warm-up twice at a small n, REPS timed runs at N with a full
-- GC before each, lower median and minimum.

os.exit(harness.main(arg, {
    script = "bench/floor.lua", usage = "W1|W2|W3", impl = "luajit-queue", reps = REPS,
    workloads = workloads,
    warmup_n = function(_, n) return n < WARMUP_N and n or WARMUP_N end,
    build = function(w, n) return w.build(n) end,
    run = function(w, st, n) return w.run(st, n) end,
    extra = function(_, _, _, build_s) return fmt(" build_s=%.6f", build_s) end,
}))
