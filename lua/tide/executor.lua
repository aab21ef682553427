--- The executor: submits contexts to the C engine and runs task bodies.
--
-- DESIGN
-- ------
-- The C engine (src/sched.c) owns the ready queue, the per-context
-- counters and the timers; this file owns the values. Each context lives
-- in a slot; `outputs[slot]` holds its task outputs by task index (index 0
-- is the context's input). The runner below is the body of every runner
-- coroutine: it asks the engine for the next operation with `nxt`, runs a
-- task body under xpcall, stores the output and reports completion in the
-- same `nxt` call. Per task that is one C call, one xpcall and a few table
-- reads: no coroutine, no registry ref and no table built in C.
--
-- Task indices given by the engine are global (one range per attached
-- pipeline), so per-task facts sit in flat arrays indexed by them.
local core = require "tide.core"
local errors = require "tide.errors"
local pipeline = require "tide.pipeline"

local json = core.json
local type, pairs, ipairs, tostring, error, select = type, pairs, ipairs, tostring, error, select
local xpcall, pcall, setmetatable, unpack = xpcall, pcall, setmetatable, unpack
local traceback, huge, floor = debug.traceback, math.huge, math.floor
local hrtime = core.hrtime
local ok_tnew, tnew = pcall(require, "table.new")
if not ok_tnew then tnew = function() return {} end end
local new_error, is_error = errors.new, errors.is
local jarray, jnull, jcheck = json.array, json.null, json.check
local io_stderr = io.stderr

local M = {}
-- A host may set M.interrupted to a function returning true when a
-- top-level wait (ex:result outside a task) should stop early.
M.interrupted = nil
-- Every open executor (weak: one nobody references can go), and the epoll
-- set a host polls to know when any of them has something to do.
local open_executors = setmetatable({}, { __mode = "k" })

-- The open executors, skipping (and forgetting) those whose engine the GC
-- already closed: an executor dropped without ex:close() stays reachable
-- from its engine's runner until the engine's finalizer has run.
local function each_open()
    return function(_, prev)
        local ex = next(open_executors, prev)
        while ex and ex._E.closed() do
            local dead = ex
            ex = next(open_executors, dead)
            open_executors[dead] = nil
        end
        return ex
    end, nil, nil
end
local hub_fd
M.open_executors = open_executors
local Executor = {}
Executor.__index = Executor
M.Executor = Executor

local OP_RUN, OP_FINISH, OP_CHILD, OP_FAIL, OP_BATCH, OP_QUIT = 1, 2, 3, 4, 5, 6
local PRIO = { high = 0, low = 1, lifo = 2 }
M.PRIO = PRIO

local EXEC_OPTS = {
    threads = true, concurrency = true, task_timeout = true,
    retention = true, max_results = true, on_done = true,
}


-- The xpcall message handler: keeps the error value and a traceback.
local function on_error(e)
    return { e, traceback(type(e) == "string" and e or tostring(e), 2) }
end


-- Why a value cannot be carried as JSON, or nil when it can.
local function unfit(v)
    local tv = type(v)
    if tv == "number" then
        if v ~= v or v == huge or v == -huge then
            return "a non-finite number (" .. tostring(v) .. ")"
        end
        return nil
    elseif tv == "table" or tv == "string" or tv == "cdata" then
        local ok, msg = jcheck(v)
        if ok then return nil end
        return (tostring(msg):gsub("^EVALUE: ", ""))
    elseif tv == "function" or tv == "thread" or (tv == "userdata" and v ~= jnull) then
        return "a " .. tv
    end
    return nil
end
M.unfit = unfit


local object_mt, array_mt = json.object_mt, json.array_mt

-- Why a map task's output cannot fan out, or nil when it is an array: a
-- table marked as an array, or a plain table whose keys are 1..#t.
local function not_array(v)
    local tv = type(v)
    if tv ~= "table" then
        if v == jnull then return "null" end
        return tv == "nil" and "nil" or ("a " .. tv)
    end
    local mt = getmetatable(v)
    if mt == array_mt then return nil end
    if mt == object_mt then return "an object" end
    local n = #v
    for k in pairs(v) do
        if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
            return "a table with the key " .. (type(k) == "string" and ("'" .. k .. "'") or tostring(k))
                .. " (an object, not an array)"
        end
    end
    return nil
end


-- Limits of the options: the engine's slot table, and a thread count no
-- machine of this kind runs usefully (each worker has its own Lua state).
M.MAX_CONCURRENCY = 100000000
M.MAX_THREADS = 1024


--- Creates an executor.
-- @param opts { concurrency = n (root contexts in flight, default 10000),
--   threads = n (reserved for sync tasks), task_timeout = s (default per
--   attempt), retention = s and max_results = n (how long finished results
--   are kept) }
function M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then
        error("tide.executor: options must be a table, got " .. type(opts), 2)
    end
    for k in pairs(opts) do
        if not EXEC_OPTS[k] then
            error("tide.executor: unknown option '" .. tostring(k) .. "'", 2)
        end
    end
    local conc = opts.concurrency or 10000
    if type(conc) ~= "number" or conc < 1 or conc ~= floor(conc) or conc > M.MAX_CONCURRENCY then
        error("tide.executor: concurrency must be a whole number from 1 to " .. M.MAX_CONCURRENCY, 2)
    end
    local th = opts.threads
    if th ~= nil and (type(th) ~= "number" or th < 1 or th ~= floor(th) or th > M.MAX_THREADS) then
        error("tide.executor: threads must be a whole number from 1 to " .. M.MAX_THREADS, 2)
    end
    local tt = opts.task_timeout
    if tt ~= nil and (type(tt) ~= "number" or not (tt > 0)) then
        error("tide.executor: task_timeout must be a number of seconds > 0", 2)
    end
    if opts.on_done ~= nil and type(opts.on_done) ~= "function" then
        error("tide.executor: on_done must be a function", 2)
    end

    local ud, E = core.engine(conc)
    local self = setmetatable({
        _ud = ud, _E = E, _task_timeout = tt, _threads = opts.threads or core.cores(),
        _retention = opts.retention or 3600,
        _max_results = opts.max_results or 1000000,
        _attached = {}, _live = {}, _results = {}, _rorder = {},
        _rhead = 1, _rtail = 0, _waiters = {}, _next_id = 0,
        _on_done = opts.on_done, _nsubmitted = 0,
    }, Executor)

    -- Per global task index.
    local T_fn, T_pred1, T_preds, T_pnames, T_ctx = {}, {}, {}, {}, {}
    local T_local, T_map, T_gather_of, T_retry, T_name = {}, {}, {}, {}, {}
    local T_pipe, T_collect, T_timeout, T_when, T_route = {}, {}, {}, {}, {}
    local T_plain, T_batch, T_routed = {}, {}, {}
    -- Per batch task: the members waiting, as parallel arrays.
    local batches = {}
    local settle -- defined below, used by the runner
    self._T = { fn = T_fn, pred1 = T_pred1, preds = T_preds, pnames = T_pnames,
                ctx = T_ctx, loc = T_local, map = T_map, gather_of = T_gather_of,
                retry = T_retry, name = T_name, pipe = T_pipe,
                collect = T_collect, timeout = T_timeout, when = T_when,
                route = T_route, plain = T_plain, batch = T_batch,
                routed = T_routed }
    -- Per slot.
    local outputs, ids, kids, parent_of, index_of, data_of, pipe_of, waiting =
        {}, {}, {}, {}, {}, {}, {}, {}
    local map_of, children_of = {}, {}
    -- Slots that have any of the fields above other than outputs, ids and
    -- pipe_of (children, ctx data, waits): only those need a full forget.
    local rare = {}
    self._rare = rare
    self._outputs, self._ids, self._pipe_of = outputs, ids, pipe_of
    self._children_of = children_of
    self._waiting = waiting

    local nxt, spawn, retry, finalize, release = E.nxt, E.spawn, E.retry, E.finalize, E.release
    local route, bypassed = E.route, E.bypassed
    local batch_timer, done, detach = E.batch_timer, E.done, E.detach

    -- Builds the value a finished context hands out: its sink's output,
    -- or a table keyed by sink name when it has several. The second value
    -- says which sinks ran (nil when the pipeline has one sink and no
    -- router, so that sink ran): sink name -> output, json.null standing
    -- for a nil output. A sink inside a map ran when its map did.
    local function context_output(slot)
        local p = pipe_of[slot]
        local outs = outputs[slot]
        local sinks = p.sinks
        if #sinks == 1 and not p.has_routes then return outs[sinks[1]], nil end
        local r, ran, n, last = {}, {}, 0, nil
        local routed, gate = p.has_routes, p.sink_gate
        for i, s in ipairs(sinks) do
            if not (routed and bypassed(slot, gate[s])) then
                local name, v = p.sink_names[i], outs[s]
                r[name] = v
                if v == nil then ran[name] = jnull else ran[name] = v end
                n, last = n + 1, s
            end
        end
        -- With routers, "the value of its sink when one sink ran".
        if routed and n == 1 then return outs[last], ran end
        return r, ran
    end

    -- The children of context `slot` all reported: fill in the arrays of
    -- the sinks inside its maps that no gather collects.
    local function collect_inner(slot, region)
        local p = pipe_of[slot]
        local k = kids[slot]
        if not k then return end
        local base = p._gbase
        for m, sinks in pairs(p.inner_sinks) do
            if p.tasks[m].region == region then
                local acc = k[base + m] or {}
                for _, s in ipairs(sinks) do
                    local arr = jarray({})
                    for i = 1, #acc do
                        local c = acc[i]
                        if is_error(c) then arr[i] = c else arr[i] = c[s] end
                    end
                    outputs[slot][s] = arr
                end
            end
        end
    end

    -- Drops everything Lua holds for a slot, and for its children that
    -- are still running (the engine frees those with their parent).
    local function forget(slot)
        outputs[slot], ids[slot], pipe_of[slot] = nil, nil, nil
        if not rare[slot] then return end
        rare[slot] = nil
        local ch = children_of[slot]
        if ch then
            children_of[slot] = nil
            for c in pairs(ch) do
                if parent_of[c] == slot then forget(c) end
            end
        end
        local parent = parent_of[slot]
        if parent and children_of[parent] then children_of[parent][slot] = nil end
        kids[slot], parent_of[slot] = nil, nil
        index_of[slot], data_of[slot], waiting[slot] = nil, nil, nil
        map_of[slot] = nil
    end
    self._forget = forget

    -- A root context ended: hand the result out (`ran`: see
    -- context_output).
    local function finish(slot, status, value, ran)
        local id = ids[slot]
        forget(slot)
        release(slot)
        self._live[id] = nil
        self:_done(id, status, value, ran)
    end
    self._finish = finish

    -- Context `slot` failed for good with rec. A child either becomes an
    -- error entry of its parent's gather (errors = "collect") or fails
    -- the parent with the same record. `g` names the attempt that ended.
    local function fail_context(slot, g, rec)
        local parent = parent_of[slot]
        finalize(slot, "failed", g)
        if not parent then
            finish(slot, "failed", rec)
            return
        end
        local p = pipe_of[slot]
        local m = p._gbase + map_of[slot]
        rec.map_index = rec.map_index or index_of[slot]
        if T_collect[m] then
            local k = kids[parent]
            k[m][index_of[slot]] = rec
            forget(slot)
            release(slot)
        else
            -- The parent's finalize cancels this child and its siblings
            -- and frees their slots: do not release it here.
            forget(slot)
            fail_context(parent, nil, rec)
        end
    end

    -- An attempt failed with rec: retry per policy or fail the context.
    local function attempt_failed(slot, g, attempt, rec)
        if ids[slot] == nil then
            -- Its context ended while the attempt ran (cancelled): only
            -- the attempt needs ending.
            finalize(slot, "failed", g)
            return
        end
        rec.task = T_name[g]
        rec.attempts = attempt
        local r = T_retry[g]
        local code = rec.code
        if r and attempt <= r.times and code ~= "EDEADLK" and code ~= "ECANCELED" then
            local again, delay = true, 0
            if r.on then
                local ok, res = pcall(r.on, rec)
                if not ok then
                    rec.message = rec.message .. " (and retry.on raised: " .. tostring(res) .. ")"
                    again = false
                else
                    again = res and true or false
                end
            end
            if again then
                local iv = r.interval
                if type(iv) == "function" then
                    local ok, res = pcall(iv, self:_ctx(slot, g, attempt), attempt, rec)
                    if not ok or type(res) ~= "number" or not (res >= 0) then
                        rec.message = rec.message .. " (and retry.interval "
                            .. (ok and ("returned " .. tostring(res) .. ", not seconds >= 0")
                                or ("raised: " .. tostring(res))) .. ")"
                        again = false
                    else
                        delay = res
                    end
                else
                    delay = iv
                end
            end
            if again then
                retry(slot, g, delay)
                return
            end
        end
        fail_context(slot, g, rec)
    end

    -- Turns what xpcall returned into an error record.
    local function body_error(g, ok, res, err)
        if not ok then
            if type(res) ~= "table" then
                -- Not from on_error: "error in error handling" (an error
                -- in __tostring of what the body raised), out of memory.
                return new_error("ETASK", tostring(res))
            end
            local e, tb = res[1], res[2]
            if is_error(e) then
                return new_error(e.code, e.message, nil, nil, tb)
            end
            return new_error("ETASK", type(e) == "string" and e or tostring(e), nil, nil, tb)
        end
        if res == nil and err ~= nil then
            if is_error(err) then return new_error(err.code, err.message) end
            return new_error("ETASK", tostring(err))
        end
        return nil
    end

    local function make_ctx(slot, g, attempt)
        local d = data_of[slot]
        if not d then
            d = {}
            data_of[slot] = d
            rare[slot] = true
        end
        local id = ids[slot]
        local name = T_name[g]
        local ctx = { id = tostring(id), attempt = attempt, map_index = index_of[slot],
                      data = d, task = name }
        ctx.log = function(...)
            local n = select("#", ...)
            local parts = {}
            for i = 1, n do parts[i] = tostring((select(i, ...))) end
            io_stderr:write("[", tostring(id), " ", name, "] ", table.concat(parts, "\t"), "\n")
        end
        return ctx
    end
    self._make_ctx = make_ctx

    -- The input of a task with several predecessors (a table keyed by
    -- predecessor name) or of a gather (an array in map_index order).
    local function join_input(slot, g, outs)
        local m = T_gather_of[g]
        if m then
            local acc = kids[slot] and kids[slot][m] or {}
            local preds, names = T_preds[g], T_pnames[g]
            local arr = jarray({})
            for i = 1, #acc do
                local c = acc[i]
                if is_error(c) then
                    arr[i] = c
                elseif #preds == 1 then
                    arr[i] = c[preds[1]]
                else
                    local t = {}
                    for k = 1, #preds do t[names[k]] = c[preds[k]] end
                    arr[i] = t
                end
            end
            return arr
        end
        local preds, names = T_preds[g], T_pnames[g]
        local t = tnew(0, #preds)
        if T_routed[g] then
            -- Only the predecessors that ran (a router may have bypassed some).
            for k = 1, #preds do
                if not bypassed(slot, preds[k]) then t[names[k]] = outs[preds[k]] end
            end
            return t
        end
        for k = 1, #preds do t[names[k]] = outs[preds[k]] end
        return t
    end

    -- A router returned res: a successor name or a list of them.
    local function choose(g, res)
        local succ = T_route[g]
        local names = type(res) == "string" and { res } or res
        if type(names) ~= "table" then
            return "router '" .. T_name[g] .. "' must return a successor name or a list of names, got "
                .. type(res)
        end
        local chosen = {}
        for i = 1, #names do
            local k = succ[names[i]]
            if not k then
                local known = {}
                for n in pairs(succ) do known[#known + 1] = n end
                table.sort(known)
                return "router '" .. T_name[g] .. "' chose '" .. tostring(names[i])
                    .. "', which is not one of its successors (" .. table.concat(known, ", ") .. ")"
            end
            chosen[#chosen + 1] = k
        end
        route(unpack(chosen))
        return nil
    end

    -- A map task returned `res`: one child context per element.
    local function fan_out(slot, g, res)
        local k = kids[slot]
        if not k then
            k = {}
            kids[slot] = k
        end
        local n = #res
        k[g] = {}
        rare[slot] = true
        local ch = children_of[slot]
        if not ch then
            ch = {}
            children_of[slot] = ch
        end
        local p = pipe_of[slot]
        local loc = T_local[g]
        local id = ids[slot]
        for i = 1, n do
            local c = spawn(slot, g, i)
            outputs[c] = { [loc] = res[i] }
            parent_of[c], index_of[c], ids[c], pipe_of[c] = slot, i, id, p
            map_of[c] = loc
            ch[c] = true
            rare[c] = true
        end
    end

    -- Runs one attempt the general way (when, ctx, routers, maps, any
    -- output) and reports it; returns the next operation.
    local function run_attempt(slot, g, attempt, input, outs)
        local ok, res, err
        local when = T_when[g]
        local skip = false
        if when then
            local wok, wres = pcall(when, input, make_ctx(slot, g, attempt))
            if not wok then
                ok, res = false, { "when: " .. tostring(wres), traceback("when: " .. tostring(wres)) }
            elseif not wres then
                ok, res, skip = true, input, true -- bypass: pass the input through
            end
        end
        if ok == nil then -- not decided by `when`
            if T_ctx[g] then
                ok, res, err = xpcall(T_fn[g], on_error, input, make_ctx(slot, g, attempt))
            else
                ok, res, err = xpcall(T_fn[g], on_error, input)
            end
        end
        return settle(slot, g, attempt, input, outs, ok, res, err, skip)
    end

    -- Turns what a body returned into a completion or a failure; returns
    -- the next operation.
    function settle(slot, g, attempt, input, outs, ok, res, err, skip)
        local rec = body_error(g, ok, res, err)
        if rec == nil then
            local why = unfit(res)
            if why then
                rec = new_error("EVALUE", "task '" .. T_name[g]
                    .. "' returned a value JSON cannot carry: " .. why)
            elseif T_route[g] and not skip then
                -- A router's successors get its input: the names it
                -- returned only choose where the data goes.
                local why2 = choose(g, res)
                if why2 then rec = new_error("EVALUE", why2) else res = input end
            elseif T_map[g] then
                local why2 = not_array(res)
                if why2 then
                    rec = new_error("EVALUE", "map task '" .. T_name[g]
                        .. "' must return an array, got " .. why2)
                else
                    fan_out(slot, g, res)
                end
            end
        end
        if rec == nil then
            outs[T_local[g]] = res
            return nxt(slot, g)
        end
        attempt_failed(slot, g, attempt, rec)
        return nxt(0, 0)
    end

    -- Runs the waiting members of batch task g as one call: the body gets
    -- their inputs as an array and returns one output per input.
    local function run_batch(g)
        local b = batches[g]
        local n = b and #b.slot or 0
        if n == 0 then return end
        batches[g] = nil
        batch_timer(g, -1)
        detach()
        local slots, attempts, inputs, outs_of = b.slot, b.attempt, b.input, b.outs
        local ok, res, err = xpcall(T_fn[g], on_error, jarray(inputs))
        local rec = body_error(g, ok, res, err)
        if rec == nil then
            if type(res) ~= "table" or #res ~= n then
                rec = new_error("EVALUE", "batch task '" .. T_name[g] .. "' got " .. n
                    .. " inputs and must return as many outputs, returned "
                    .. (type(res) == "table" and (#res .. " outputs") or type(res)))
            else
                local why = unfit(res)
                if why then
                    rec = new_error("EVALUE", "task '" .. T_name[g]
                        .. "' returned a value JSON cannot carry: " .. why)
                end
            end
        end
        local loc = T_local[g]
        for i = 1, n do
            if rec == nil then
                outs_of[i][loc] = res[i]
                done(slots[i], g)
            else
                -- Every member fails with its own copy of the record.
                local r = new_error(rec.code, rec.message, nil, nil, rec.traceback)
                attempt_failed(slots[i], g, attempts[i], r)
            end
        end
    end

    -- A member of batch task g is ready: it waits for the batch to fill up
    -- or for `wait` seconds after the first member, whichever is first.
    local function join_batch(slot, g, attempt, input, outs)
        local b = batches[g]
        if not b then
            b = { slot = {}, attempt = {}, input = {}, outs = {} }
            batches[g] = b
        end
        local n = #b.slot + 1
        b.slot[n], b.attempt[n], b.input[n], b.outs[n] = slot, attempt, input, outs
        local spec = T_batch[g]
        if n >= spec.size then
            run_batch(g)
        elseif n == 1 then
            batch_timer(g, spec.wait)
        end
    end

    local function runner()
        local op, a, b, c, d = nxt(0, 0)
        while true do
            if op == OP_RUN then
                local slot, g = a, b
                local outs = outputs[slot]
                local p1 = T_pred1[g]
                local input
                if p1 then input = outs[p1] else input = join_input(slot, g, outs) end
                if T_batch[g] then
                    detach()
                    join_batch(slot, g, c, input, outs)
                    op, a, b, c, d = nxt(0, 0)
                elseif T_plain[g] then
                    -- The hot path: no when, ctx, router or map, and a
                    -- finite number or a string as the output.
                    local ok, res, err = xpcall(T_fn[g], on_error, input)
                    local tr = type(res)
                    if ok and ((tr == "number" and res == res and res ~= huge and res ~= -huge)
                               or (tr == "string" and jcheck(res))) then
                        outs[T_local[g]] = res
                        op, a, b, c, d = nxt(slot, g)
                    else
                        op, a, b, c, d = settle(slot, g, c, input, outs, ok, res, err, false)
                    end
                else
                    op, a, b, c, d = run_attempt(slot, g, c, input, outs)
                end
            elseif op == OP_BATCH then
                run_batch(b)
                op, a, b, c, d = nxt(0, 0)
            elseif op == OP_FINISH then
                collect_inner(a, 0)
                local value, ran = context_output(a)
                finish(a, "done", value, ran)
                op, a, b, c, d = nxt(0, 0)
            elseif op == OP_CHILD then
                -- a = child slot, b = map task, c = parent slot, d = index
                collect_inner(a, map_of[a])
                local k = kids[c]
                if k and k[b] then k[b][d] = outputs[a] end
                forget(a)
                release(a)
                op, a, b, c, d = nxt(0, 0)
            elseif op == OP_FAIL then
                -- a = slot, b = task, c = attempt, d = code
                local msg
                if d == "ETIMEDOUT" then
                    msg = "task '" .. T_name[b] .. "' timed out after "
                        .. tostring(T_timeout[b]) .. " s"
                elseif d == "EDEADLK" then
                    local w = waiting[a]
                    msg = "deadlock: task '" .. T_name[b] .. "' waits for "
                        .. (w and ("job '" .. tostring(w) .. "'") or "other work")
                        .. ", which can never finish"
                else
                    msg = "attempt failed (" .. tostring(d) .. ")"
                end
                attempt_failed(a, b, c, new_error(d, msg))
                op, a, b, c, d = nxt(0, 0)
            elseif op == OP_QUIT then
                -- The engine closes: this thread may serve another one.
                return
            else
                op, a, b, c, d = nxt(0, 0)
            end
        end
    end
    E.set_runner(runner)

    -- The watchdog stops a body that ran its limit (its timeout, or 5 s)
    -- without yielding: its hook calls this inside the body (first = the
    -- first time for this attempt), reports it, and raises what it returns.
    local function on_stuck(slot, g, ran, limit, signum, first)
        local name = T_name[g]
        if first then
            io_stderr:write(("tide: watchdog: task '%s' of context '%s' has run %.1f s without yielding%s; "
                             .. "stopping it\n"):format(name, tostring(ids[slot]), ran,
                                                        signum and (" (signal " .. signum .. ")") or ""))
        end
        if signum then
            return new_error("ECANCELED", ("task '%s' was stopped on signal %d: it had run %.1f s "
                                           .. "without yielding"):format(name, signum, ran))
        end
        return new_error("ETIMEDOUT", ("task '%s' timed out after %s s without yielding "
                                       .. "(stopped by the watchdog)"):format(name, tostring(T_timeout[g] or limit)))
    end
    -- Its hook leaves tide's own code alone: the executor's bookkeeping,
    -- and errors.lua (the runner's handler calls the records' __tostring).
    E.set_watchdog(xpcall, on_stuck, errors.new)
    open_executors[self] = true
    if hub_fd then
        self._fd = (E.backend())
        core.epoll_ctl(hub_fd, self._fd, true)
    end
    return self
end


--- The fd a host loop polls for readability before calling M.step; made
-- on first use and covering every open executor.
function M.fd()
    if not hub_fd then
        local fd, err = core.epoll_create()
        if not fd then return nil, "tide.fd: " .. err, "EIO" end
        hub_fd = fd
        for ex in each_open() do
            ex._fd = (ex._E.backend())
            core.epoll_ctl(hub_fd, ex._fd, true)
        end
    end
    return hub_fd
end


--- How long a host may wait for M.fd() before calling M.step: seconds,
-- 0 when work is ready, nil when only I/O can wake tide.
function M.timeout()
    local best
    for ex in each_open() do
        local _, ms = ex._E.backend()
        if ms >= 0 and (best == nil or ms < best) then best = ms end
    end
    return best and best / 1000 or nil
end


--- Runs what is ready in every open executor without blocking. Returns
-- whether work remains (jobs not finished), and how many jobs that is.
function M.step()
    local live = 0
    for ex in each_open() do live = live + ex._E.step() end
    return live > 0, live
end


--- Runs every open executor until all their jobs finished.
function M.run_all()
    local fd = M.fd()
    while M.step() do
        local t = M.timeout()
        core.poll(fd, t and math.ceil(t * 1000) or -1)
    end
    return true
end


-- Registers pipeline p with this executor's engine (once).
function Executor:_attach(p)
    local att = self._attached[p]
    if att then return att end
    p:compile()
    local timeouts, lims = {}, {}
    self._limiter_ids = self._limiter_ids or {}
    for i, t in ipairs(p.tasks) do
        timeouts[i] = t.timeout or self._task_timeout
        if t.limit then
            -- One engine limiter per name, shared by every task naming it.
            local id = self._limiter_ids[t.limit]
            if not id then
                local spec = pipeline.limiters[t.limit]
                id = self._E.limiter(spec.rate, spec.burst, spec.concurrency)
                self._limiter_ids[t.limit] = id
            end
            lims[i] = id
        end
    end
    local gid, gbase = self._E.attach(p._graph, timeouts, lims)
    local T = self._T
    -- Pipelines may be shared by executors: per-executor facts live in a
    -- shadow table so that p stays immutable.
    local shadow = setmetatable({ _gbase = gbase }, { __index = p })
    for i, t in ipairs(p.tasks) do
        local g = gbase + i
        T.fn[g] = t.fn
        if t.kind == "sync" or t.kind == "native" then
            T.fn[g] = self:_sync_body(p, t)
        elseif t.kind == "exec" then
            -- The body returns the command ({ "cmd", args..., env=, ... });
            -- tide runs it and the task's output is the result.
            local body, exec = t.fn, require("tide.exec").exec
            T.fn[g] = function(input, ctx)
                local spec = body(input, ctx)
                local res, rec = exec(spec)
                if not res then error(rec, 0) end
                return res
            end
        end
        T.name[g] = t.name
        T.loc[g] = i
        T.ctx[g] = t.nparams >= 2 or nil
        T.map[g] = t.map or nil
        T.retry[g] = t.retry
        T.timeout[g] = timeouts[i]
        T.pipe[g] = shadow
        T.when[g] = t.when
        T.plain[g] = not (t.when or t.route or t.map or t.nparams >= 2 or t.kind ~= "async") or nil
        if t.kind == "native" then T.ctx[g] = nil end
        T.ctx[g] = (t.nparams >= 2 or t.kind == "exec") or nil
        T.batch[g] = t.batch
        T.routed[g] = p.has_routes or nil
        if t.route then
            local succ = {}
            for _, si in ipairs(t.succs) do succ[p.tasks[si].name] = si end
            T.route[g] = succ
        end
        local preds = t.preds
        if t.gather then
            T.gather_of[g] = gbase + t.gather_of
            local pr, pn = {}, {}
            for k, pi in ipairs(preds) do pr[k], pn[k] = pi, p.tasks[pi].name end
            T.preds[g], T.pnames[g] = pr, pn
            if t.errors == "collect" then T.collect[gbase + t.gather_of] = true end
        elseif #preds == 0 then
            T.pred1[g] = 0
        elseif #preds == 1 then
            T.pred1[g] = preds[1]
        else
            local pr, pn = {}, {}
            for k, pi in ipairs(preds) do pr[k], pn[k] = pi, p.tasks[pi].name end
            T.preds[g], T.pnames[g] = pr, pn
        end
    end
    att = { gid = gid, gbase = gbase, shadow = shadow, ntasks = #p.tasks }
    self._attached[p] = att
    return att
end


-- The loop-side body of a sync task: ships the input to a worker thread,
-- parks until it is done, and returns its output (or raises its error).
function Executor:_sync_body(p, t)
    local key, code
    if t.kind == "native" then
        key, code = "native:" .. t.native.path .. ":" .. t.native.symbol, t.native.fn
    elseif p._file then
        key = "file:" .. p._file
    else
        -- No file to load in the workers: ship the body as bytecode, which
        -- cannot carry upvalues.
        local names = {}
        for i = 1, 200 do
            local name = debug.getupvalue(t.fn, i)
            if not name then break end
            names[#names + 1] = name
        end
        if #names > 0 then
            error(t.where .. ": sync task '" .. t.name .. "' uses upvalues ("
                  .. table.concat(names, ", ") .. "): declare its pipeline in a file "
                  .. "(loaded by tide run, tide.pipeline_file or :load), or make the body "
                  .. "self-contained", 0)
        end
        code = string.dump(t.fn)
        key = "code:" .. tostring(t.fn)
    end
    local name = t.name
    local timeout = t.timeout or self._task_timeout
    local pool_wait, pool_result = core.pool_wait, core.pool_result
    return function(input)
        local job, msg, code2 = self:_pool():submit(key, name, code, input, timeout)
        if not job then error(new_error(code2, msg), 0) end
        pool_wait(job)
        local ok, res, tb, ecode = pool_result(job)
        if ok then return res end
        error(new_error(ecode, res, nil, nil, tb), 0)
    end
end


function Executor:_pool()
    local pool = self._pool_ud
    if not pool then
        pool = core.pool_new(self._ud, self._threads)
        self._pool_ud = pool
    end
    return pool
end


function Executor:_ctx(slot, g, attempt)
    return self._make_ctx(slot, g, attempt)
end


-- Stores a finished context's result and wakes whoever waits for it.
function Executor:_done(id, status, value, ran)
    local on_done = self._on_done
    if on_done then
        on_done(id, status, value, ran)
        return
    end
    -- A small array, not a record with named fields: a server keeps
    -- 100 000 of these, and the array part is half the size.
    self._results[id] = { status, value, hrtime() }
    local tail = self._rtail + 1
    self._rtail = tail
    self._rorder[tail] = id
    self:_evict()
    local w = self._waiters[id]
    if w then
        self._waiters[id] = nil
        local wake = self._E.wake
        for _, h in ipairs(w) do
            if type(h) == "function" then
                local ok, err = pcall(h, id)
                if not ok then io_stderr:write("tide: result watcher failed: ", tostring(err), "\n") end
            else
                wake(h)
            end
        end
    end
end


--- Calls fn(id) once the job finished (at once when it has already).
-- For servers (long-polls); fn runs on the loop thread and must not wait.
-- Returns a token for ex:unwatch, or nil when fn ran at once.
function Executor:watch(id, fn)
    if self._results[id] then
        fn(id)
        return nil
    end
    local w = self._waiters[id]
    if not w then
        w = {}
        self._waiters[id] = w
    end
    w[#w + 1] = fn
    return fn
end


--- Removes a watcher before it ran: a long-poll whose wait expired or
-- whose client left no longer needs it, and without this it would stay
-- until the job ends (1.44 million polls of one running job: +800 MB).
-- Returns true when the token was still registered.
function Executor:unwatch(id, token)
    local w = self._waiters[id]
    if not w or token == nil then return false end
    for i = #w, 1, -1 do
        if w[i] == token then
            table.remove(w, i)
            if #w == 0 then self._waiters[id] = nil end
            return true
        end
    end
    return false
end


-- Drops the oldest results beyond max_results or older than retention.
function Executor:_evict()
    local results, order = self._results, self._rorder
    local head, tail = self._rhead, self._rtail
    local now = hrtime()
    while head <= tail do
        local id = order[head]
        local r = results[id]
        if r and (tail - head + 1 <= self._max_results) and now - r[3] < self._retention then
            break
        end
        order[head] = nil
        if r then
            results[id] = nil
            if self._on_evict then self._on_evict(id) end
        end
        head = head + 1
    end
    self._rhead = head
end


local function check_self(self, fname)
    if getmetatable(self) ~= Executor then
        error(fname .. ": call it as ex:" .. fname:match("[%w_]+$") .. "(...), with a colon", 3)
    end
end


--- The status ("done", "failed", "cancelled") and value (output or error
-- record) of a finished job whose result is kept; nil otherwise. For
-- servers and the REPL: it neither waits nor consumes.
function Executor:finished(id)
    check_self(self, "ex:finished")
    local r = self._results[id]
    if r then return r[1], r[2] end
    return nil
end


--- Submits one input. Returns its id.
-- @param opts { id = string (default: generated), priority = "high"|"low"|"lifo" }
-- @raise on a duplicate id, a bad pipeline or bad options
function Executor:submit(p, input, opts)
    check_self(self, "ex:submit")
    if not pipeline.is(p) then
        error("ex:submit: argument 1 must be a pipeline (tide.pipeline), got " .. type(p), 2)
    end
    local id, prio = nil, PRIO.low
    if opts ~= nil then
        if type(opts) ~= "table" then
            error("ex:submit: options must be a table, got " .. type(opts), 2)
        end
        for k in pairs(opts) do
            if k ~= "id" and k ~= "priority" then
                error("ex:submit: unknown option '" .. tostring(k) .. "'", 2)
            end
        end
        id = opts.id
        if id ~= nil then
            if type(id) == "number" then id = tostring(id) end
            if type(id) ~= "string" or id == "" then
                error("ex:submit: id must be a non-empty string", 2)
            end
        end
        if opts.priority ~= nil then
            prio = PRIO[opts.priority]
            if not prio then
                error("ex:submit: priority must be 'high', 'low' or 'lifo', got "
                      .. tostring(opts.priority), 2)
            end
        end
    end
    local ok, err = pcall(self._attach, self, p)
    if not ok then error(err, 2) end
    if id == nil then
        repeat
            self._next_id = self._next_id + 1
            id = tostring(self._next_id)
        until self._live[id] == nil and self._results[id] == nil
    elseif self._live[id] or self._results[id] then
        error("ex:submit: duplicate id '" .. id .. "'", 2)
    end
    return self:_submit(p, input, id, prio)
end


-- Submits without checks (tide.run and the CLI checked already).
function Executor:_submit(p, input, id, prio)
    local att = self._attached[p] or self:_attach(p)
    local slot = self._E.submit(att.gid, prio)
    local outs = tnew(att.ntasks, 0) -- array part for indices 0..n
    outs[0] = input
    self._outputs[slot] = outs
    self._ids[slot] = id
    self._pipe_of[slot] = att.shadow
    self._live[id] = slot
    self._nsubmitted = self._nsubmitted + 1
    return id
end


--- The status of a job: "pending", "running", "waiting", "done", "failed"
-- or "cancelled"; `nil, rec, "ENOENT"` for an unknown id.
function Executor:status(id)
    check_self(self, "ex:status")
    local r = self._results[id]
    if r then return r[1] end
    local slot = self._live[id]
    if slot then return self._E.status(slot) end
    return errors.fail("ENOENT", "no job with id '" .. tostring(id) .. "'")
end


local function result_of(r, id)
    if r[1] == "done" then return r[2] end
    local rec = r[2]
    if not is_error(rec) then rec = new_error("ETASK", tostring(rec)) end
    rec.id = rec.id or id
    return nil, rec, rec.code
end


--- The output of a job, waiting up to `timeout` seconds (nil: no limit).
-- Inside a task it waits without blocking the loop (and gives back the
-- task's concurrency slot); at top level it runs the loop meanwhile.
-- @return output | nil, rec, code ("EAGAIN" when the wait expired,
--   "ENOENT" for an unknown id, else the job's own error)
function Executor:result(id, timeout)
    check_self(self, "ex:result")
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
        error("ex:result: timeout must be a number of seconds >= 0", 2)
    end
    local r = self._results[id]
    if r then return result_of(r, id) end
    local slot = self._live[id]
    if not slot then
        return errors.fail("ENOENT", "no job with id '" .. tostring(id) .. "'")
    end
    local E = self._E
    local h = E.handle()
    if h then
        -- Inside a task body of this executor: park until woken.
        local w = self._waiters[id]
        if not w then
            w = {}
            self._waiters[id] = w
        end
        w[#w + 1] = h
        local _, me = E.handle()
        self._waiting[me] = id
        self._rare[me] = true
        E.park(timeout)
        if self._waiting[me] == id then self._waiting[me] = nil end
    else
        local deadline = timeout and (hrtime() + timeout) or nil
        local interrupted = M.interrupted
        while not self._results[id] do
            local left = deadline and (deadline - hrtime()) or 3600
            if left <= 0 then break end
            -- In slices, so that a host's interrupt check (the REPL's
            -- Ctrl-C) can end the wait.
            if interrupted and left > 0.1 then left = 0.1 end
            if not E.turn(left) and not self._results[id] then break end
            if interrupted and interrupted() then
                return errors.fail("EAGAIN", "wait for job '" .. tostring(id) .. "' interrupted")
            end
        end
    end
    r = self._results[id]
    if r then return result_of(r, id) end
    if self._live[id] then
        return errors.fail("EAGAIN", "job '" .. tostring(id) .. "' has not finished yet")
    end
    return errors.fail("ENOENT", "no job with id '" .. tostring(id) .. "'")
end


--- Cancels a job: its running attempts stop at their yield point, its
-- children and retry timers go. Returns true, or nil, msg, name for an
-- unknown or finished job.
function Executor:cancel(id)
    check_self(self, "ex:cancel")
    local slot = self._live[id]
    if not slot then
        if self._results[id] then
            return nil, "EINVAL: job '" .. tostring(id) .. "' has already finished", "EINVAL"
        end
        return nil, "ENOENT: no job with id '" .. tostring(id) .. "'", "ENOENT"
    end
    self._E.finalize(slot, "cancelled")
    self._finish(slot, "cancelled", new_error("ECANCELED", "job '" .. tostring(id) .. "' was cancelled"))
    return true
end


--- Runs the loop until every submitted job finished.
-- @raise when a runner failed inside tide (the jobs it held cannot finish;
--   the traceback is on stderr)
function Executor:run()
    check_self(self, "ex:run")
    local before = self._E.stats().internal_errors
    self._E.run()
    local n = self._E.stats().internal_errors - before
    if n > 0 then
        error("tide: " .. n .. " internal error(s) in the runner (tracebacks above); "
              .. "the jobs they held did not finish", 2)
    end
    return true
end


--- Counters for tests and progress: live, active, queued, timers, ...,
-- and for sync tasks: workers (threads alive) and workers_replaced
-- (stand-ins started for workers stuck in timed-out bodies).
function Executor:stats()
    local s = self._E.stats()
    if self._pool_ud then
        local ps = self._pool_ud:stats()
        s.workers, s.workers_replaced = ps.threads, ps.replaced
    else
        s.workers, s.workers_replaced = 0, 0
    end
    return s
end


--- A limiter's counters in this executor: running, waiting, started
-- (nil when no task of this executor named it yet).
function Executor:limiter_stats(name)
    local id = self._limiter_ids and self._limiter_ids[name]
    if not id then return nil end
    local running, waiting, started = self._E.limiter_stats(id)
    return { running = running, waiting = waiting, started = started }
end


--- Per-task counters of pipeline p in this executor (nil when p never
-- ran here): an array in task order of { task, attempts, done, failures,
-- retries, running, retrying, sum, hist }. hist counts attempt durations
-- per bucket of ex:hist_bounds() (the last bucket is +Inf); durations are
-- measured only after ex:timing(true).
function Executor:task_stats(p)
    check_self(self, "ex:task_stats")
    local att = self._attached[p]
    if not att then return nil end
    local out, ts = {}, self._E.task_stats
    for i, t in ipairs(p.tasks) do
        local s = ts(att.gbase + i)
        s.task = t.name
        out[i] = s
    end
    return out
end


--- Turns the measurement of attempt durations on or off (it costs two
-- clock reads per attempt, so it is off unless a server asks for it).
function Executor:timing(on)
    check_self(self, "ex:timing")
    self._E.timing(on and true or false)
end


--- The upper bounds, in seconds, of the duration histogram's buckets
-- but the last (+Inf).
function Executor:hist_bounds()
    check_self(self, "ex:hist_bounds")
    return self._E.hist_bounds()
end


--- Releases the engine and its loop; the executor cannot be used after.
function Executor:close()
    -- The engine first: it refuses while the executor runs, before the
    -- pool's threads are touched.
    self._E.close()
    if self._pool_ud then
        self._pool_ud:close() -- joins idle workers, leaves busy ones
        self._pool_ud = nil
    end
    if open_executors[self] then
        open_executors[self] = nil
        if hub_fd and self._fd then core.epoll_ctl(hub_fd, self._fd, false) end
    end
end

return M
