--- The runner: the body of every runner coroutine, and the policies that
-- decide what happens when an attempt ends. Part of the executor (its
-- fields are shared with lua/tide/executor.lua).
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
-- reads: no coroutine, no registry ref and no table built in C. That loop
-- keeps its tables in upvalues (install); everything it does less often
-- than once per task is a module-level function below that takes the
-- runner's state `rt` explicitly.
--
-- Task indices given by the engine are global (one range per attached
-- pipeline), so per-task facts sit in flat arrays indexed by them
-- (rt.T_*). Per-slot facts sit in arrays indexed by slot: outputs, ids,
-- pipe_of for every context; the rest only for the `rare` slots that have
-- children, ctx data or a wait (forget() looks at those only).
--
-- Ownership: a slot's entries are made by seed() (a root context) or
-- fan_out() (a child) and dropped by forget(), called exactly where the
-- engine releases or finalizes the slot.
local core = require "tide.core"
local errors = require "tide.errors"
local pipeline = require "tide.pipeline"
local cache = require "tide.cache"

local json = core.json
local type, pairs, ipairs, tostring, error, select, next = type, pairs, ipairs, tostring, error, select, next
local xpcall, pcall, setmetatable, getmetatable, unpack = xpcall, pcall, setmetatable, getmetatable, unpack
local traceback, huge = debug.traceback, math.huge
local ok_tnew, tnew = pcall(require, "table.new")
if not ok_tnew then tnew = function() return {} end end
local new_error, is_error = errors.new, errors.is
local jarray, jnull, jcheck, jencode = json.array, json.null, json.check, json.encode
local object_mt, array_mt = json.object_mt, json.array_mt
local io_stderr = io.stderr
local mem_tripped, mem_rearm = core.mem_tripped, core.mem_rearm

local M = {}

local OP_RUN, OP_FINISH, OP_CHILD, OP_FAIL, OP_BATCH, OP_QUIT, OP_SLOW = 1, 2, 3, 4, 5, 6, 7
local checkpoint_inputs -- defined with the failures, used before them


-- ===== OUTPUT VALIDITY =====

--- Why a value cannot be carried as JSON, or nil when it can (and then,
-- for a table, "array" or "object": how it encodes). Decided once, when
-- the attempt that made it ends.
function M.unfit(v)
    local tv = type(v)
    if tv == "number" then
        if v ~= v or v == huge or v == -huge then
            return "a non-finite number (" .. tostring(v) .. ")"
        end
        return nil
    elseif tv == "table" or tv == "string" or tv == "cdata" then
        local ok, msg = jcheck(v)
        if ok then return nil, msg end
        return (tostring(msg):gsub("^EVALUE: ", ""))
    elseif tv == "function" or tv == "thread" or (tv == "userdata" and v ~= jnull) then
        return "a " .. tv
    end
    return nil
end
local unfit = M.unfit


-- Why a map task's output cannot fan out, or nil when it is an array:
-- what encodes as one (`kind`, from unfit), or an empty plain table.
local function not_array(v, kind)
    local tv = type(v)
    if tv ~= "table" then
        if v == jnull then return "null" end
        return tv == "nil" and "nil" or ("a " .. tv)
    end
    if kind == "array" then return nil end
    local mt = getmetatable(v)
    if mt == object_mt then return "an object" end
    if mt ~= array_mt and next(v) == nil then return nil end -- {}: no children
    local n = #v
    for k in pairs(v) do
        if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
            return "a table with the key " .. (type(k) == "string" and ("'" .. k .. "'") or tostring(k))
                .. " (an object, not an array)"
        end
    end
    return "an object"
end


-- The xpcall message handler: keeps the error value and a traceback.
local function on_error(e)
    return { e, traceback(type(e) == "string" and e or tostring(e), 2) }
end


-- The record of an attempt that ran the state out of its memory limit
-- (core.mem_tripped() says the limit refused an allocation; the error is
-- LuaJIT's "not enough memory"). It is made from the headroom the limit
-- keeps once tripped; attempt_failed collects and arms it again after.
local function oom_error()
    local limit = mem_tripped()
    if not limit then return nil end
    return new_error("ENOMEM", ("out of memory: the Lua state reached its memory_limit "
                                .. "(%d MiB)"):format(limit / 1048576))
end


-- Turns what xpcall returned into an error record, or nil for a success.
local function body_error(ok, res, err)
    if not ok then
        if type(res) ~= "table" then
            -- Not from on_error: "error in error handling" (an error
            -- in __tostring of what the body raised), or out of memory
            -- (LuaJIT calls no message handler for memory errors).
            return (res == "not enough memory" and oom_error()) or new_error("ETASK", tostring(res))
        end
        local e, tb = res[1], res[2]
        if e == "not enough memory" then
            -- Raised again by Lua code (a pcall in the body, a C
            -- function): still the limit's doing when it tripped.
            local rec = oom_error()
            if rec then return rec end
        end
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


-- ===== EVENTS =====
-- Lifecycle hooks: the executor's (rt.ev[event], a list) and those of the
-- context's pipeline (p.hooks[event]). They run on the loop thread, in
-- the order they were added; an error in one is reported once per hook
-- and never fails the job.

local warned = setmetatable({}, { __mode = "k" })

local function call_hooks(list, event, ...)
    for i = 1, #list do
        local fn = list[i]
        local ok, err = pcall(fn, ...)
        if not ok and not warned[fn] then
            warned[fn] = true
            io_stderr:write("tide: a hook of '", event, "' failed (reported once per hook): ",
                            tostring(err), "\n")
        end
    end
end


-- Fires `event` for a context of pipeline p (its shadow is fine).
local function fire(rt, p, event, ...)
    local list = rt.ev[event]
    if list then call_hooks(list, event, ...) end
    local plist = p and p.hooks[event]
    if plist then call_hooks(plist, event, ...) end
end


-- Whether anything listens to `event` for contexts of p.
local function hooked(rt, p, event)
    return rt.ev[event] ~= nil or (p ~= nil and p.hooks[event] ~= nil)
end


--- Recomputes rt.flags.tasks: whether task_start or task_end hooks exist
-- for any attached pipeline; and rt.flags.general: that, or a context
-- with restored outputs. The hot path reads only `general`: when it is
-- set, every task goes the general way.
function M.update_flags(rt)
    local flags = rt.flags
    local on = rt.ev.task_start ~= nil or rt.ev.task_end ~= nil
    for p in pairs(rt.attached) do
        if p.hooks.task_start or p.hooks.task_end then on = true end
    end
    flags.tasks = on
    flags.general = on or flags.restored > 0
end


-- ===== SLOTS =====

-- Drops everything Lua holds for a slot, and for its children that are
-- still running (the engine frees those with their parent).
local function forget(rt, slot)
    rt.outputs[slot], rt.ids[slot], rt.pipe_of[slot] = nil, nil, nil
    local rare = rt.rare
    if not rare[slot] then return end
    rare[slot] = nil
    local children_of, parent_of = rt.children_of, rt.parent_of
    local ch = children_of[slot]
    if ch then
        children_of[slot] = nil
        for c in pairs(ch) do
            if parent_of[c] == slot then forget(rt, c) end
        end
    end
    local parent = parent_of[slot]
    if parent and children_of[parent] then children_of[parent][slot] = nil end
    rt.kids[slot], parent_of[slot] = nil, nil
    rt.index_of[slot], rt.data_of[slot], rt.waiting[slot] = nil, nil, nil
    rt.map_of[slot], rt.checkpointed[slot], rt.logs[slot] = nil, nil, nil
    if rt.restored[slot] then
        rt.restored[slot] = nil
        local flags = rt.flags
        flags.restored = flags.restored - 1
        flags.general = flags.tasks or flags.restored > 0
    end
end


--- A root context starts in `slot` with `input` under `id`; `att` is its
-- pipeline's attachment (M.attach). `restore` (task name -> output), when
-- given, holds checkpointed outputs: those tasks return them at once
-- instead of running their bodies (a resume).
function M.seed(rt, slot, input, id, att, restore)
    local outs = tnew(att.ntasks, 0) -- array part for indices 0..n
    outs[0] = input
    rt.outputs[slot] = outs
    rt.ids[slot] = id
    rt.pipe_of[slot] = att.shadow
    if restore and next(restore) ~= nil then
        local byname, byloc = att.shadow.byname, {}
        for name, v in pairs(restore) do
            local i = byname[name]
            if i then byloc[i] = v end
        end
        rt.restored[slot] = byloc
        rt.rare[slot] = true
        rt.flags.restored = rt.flags.restored + 1
        rt.flags.general = true
    end
    if hooked(rt, att.shadow, "context_start") then fire(rt, att.shadow, "context_start", id, input) end
end


--- Notes that the task running in slot `me` waits for job `id` (for the
-- EDEADLK message), or no longer does (id nil).
function M.note_wait(rt, me, id)
    rt.waiting[me] = id
    if id then rt.rare[me] = true end
end


-- ===== RESULTS =====

-- Builds the value a finished context hands out: its sink's output, or a
-- table keyed by sink name when it has several. The second value says
-- which sinks ran (nil when the pipeline has one sink and no router, so
-- that sink ran): sink name -> output, json.null standing for a nil
-- output. A sink inside a map ran when its map did.
local function context_output(rt, slot)
    local p = rt.pipe_of[slot]
    local outs = rt.outputs[slot]
    local sinks = p.sinks
    if #sinks == 1 and not p.has_routes then return outs[sinks[1]], nil end
    local r, ran, n, last = {}, {}, 0, nil
    local routed, gate, bypassed = p.has_routes, p.sink_gate, rt.E.bypassed
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


-- The children of context `slot` all reported: fills in the arrays of the
-- sinks inside its maps that no gather collects.
local function collect_inner(rt, slot, region)
    local p = rt.pipe_of[slot]
    local k = rt.kids[slot]
    if not k then return end
    local base, outs = p._gbase, rt.outputs[slot]
    for m, sinks in pairs(p.inner_sinks) do
        if p.tasks[m].region == region then
            local acc = k[base + m] or {}
            for _, s in ipairs(sinks) do
                local arr = jarray({})
                for i = 1, #acc do
                    local c = acc[i]
                    if is_error(c) then arr[i] = c else arr[i] = c[s] end
                end
                outs[s] = arr
            end
        end
    end
end


-- A failure record carries the input of its root context (rec.input), so
-- that whoever reads the failure (failed.jsonl, ex:result, the HTTP API, a
-- journal, `tide replay`) can run it again. The record may already belong
-- to another job (a body that returned the record of a job it waited for),
-- so a record that holds a different input is copied rather than changed.
-- This runs once per failed context, never on the path of a task.
local function with_input(rec, outs)
    local input = outs and outs[0]
    if input == nil or not is_error(rec) or rec.input == input then return rec end
    if rec.input ~= nil then
        local copy = {}
        for k, v in pairs(rec) do copy[k] = v end
        rec = setmetatable(copy, getmetatable(rec))
    end
    rec.input = input
    return rec
end


-- A copy of table t with room for twice its n keys, and n: such a copy
-- takes at least n + 32 new keys before LuaJIT rehashes it.
local function roomy_copy(t)
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    local fresh = tnew(0, 2 * n + 32)
    for k, v in pairs(t) do fresh[k] = v end
    return fresh, n
end


--- Takes key out of t, a table whose keys come and go (the ids of the
-- running jobs, of the jobs in flight), and returns the table to use from
-- now on with the new counts: t, dels, every (start with 0 and 16).
--
-- A LuaJIT table whose string keys come and go, with about as many of
-- them as a power of two, falls into a trap: a key set to nil keeps its
-- node, so new keys use up the free nodes, and then a rehash sizes the
-- table to the keys it holds, leaving almost no free node, so the next
-- rehash comes a few insertions later. With 1000 jobs in flight (the
-- default --concurrency) each insertion cost a rehash of 1024 nodes
-- every few jobs: more than decoding and encoding a line. So every so
-- many removals (`every`: half the keys it had, and 16) the table is
-- replaced by a copy with room for twice its keys (roomy_copy), before
-- its free nodes run out; a copy costs about three insertions per
-- removal, and its size stays within twice what LuaJIT would give the
-- table.
function M.churn_remove(t, key, dels, every)
    t[key] = nil
    -- Whole-number keys (tide.run's ids: 1 .. n) live in the table's
    -- array part, which has no such trap; a copy would move them into a
    -- hash part (W1 took 70 % longer).
    if type(key) == "number" then return t, dels, every end
    dels = dels + 1
    if dels < every then return t, dels, every end
    local fresh, n = roomy_copy(t)
    return fresh, 0, math.floor(n / 2) + 16
end
local churn_remove = M.churn_remove


--- Takes id out of rt.live, the ids of the running jobs (id -> slot),
-- which churn_remove may replace.
function M.live_forget(rt, id)
    rt.live, rt.live_dels, rt.live_every = churn_remove(rt.live, id, rt.live_dels, rt.live_every)
end


--- A root context ended: its slot goes, and the result leaves through
-- the executor (`ran`: see context_output).
function M.finish(rt, slot, status, value, ran)
    local id = rt.ids[slot]
    local p = rt.pipe_of[slot]
    if status ~= "done" then value = with_input(value, rt.outputs[slot]) end
    if hooked(rt, p, "context_end") then fire(rt, p, "context_end", id, status, value) end
    -- The job's kept lines leave with its result (forget drops them).
    local ring = rt.logs[slot]
    forget(rt, slot)
    rt.E.release(slot)
    M.live_forget(rt, id)
    rt.emit(id, status, value, ran, ring and M.log_lines(rt, ring) or nil)
end
local finish = M.finish


-- ===== FAILURES AND RETRIES =====

-- Context `slot` failed for good with rec. A child either becomes an error
-- entry of its parent's gather (errors = "collect") or fails the parent
-- with the same record. `g` names the attempt that ended.
local function fail_context(rt, slot, g, rec)
    local parent = rt.parent_of[slot]
    rt.E.finalize(slot, "failed", g)
    if not parent then
        finish(rt, slot, "failed", rec)
        return
    end
    local p = rt.pipe_of[slot]
    local m = p._gbase + rt.map_of[slot]
    local index = rt.index_of[slot]
    rec.map_index = rec.map_index or index
    if rt.T_collect[m] then
        rt.kids[parent][m][index] = rec
        forget(rt, slot)
        rt.E.release(slot)
    else
        -- The parent's finalize cancels this child and its siblings and
        -- frees their slots: do not release it here.
        forget(rt, slot)
        fail_context(rt, parent, nil, rec)
    end
end


-- ===== PER-JOB LOGS =====

-- The longest line a job keeps, in bytes: a body that logs a whole file
-- must not make one job hold megabytes. Longer lines keep their first
-- bytes (cut at a UTF-8 boundary) and a marker saying how long they were.
M.LOG_LINE_MAX = 4096

-- How many lines a job keeps when the executor is not told (log_lines).
M.LOG_LINES = 100


-- rt[field][slot], a table made on first use; a slot that has one is rare
-- (forget clears its fields).
local function slot_table(rt, field, slot)
    local t = rt[field][slot]
    if not t then
        t = {}
        rt[field][slot] = t
        rt.rare[slot] = true
    end
    return t
end


-- text as a job keeps it; len: the length of the line it was cut from
-- (a sync task's worker sends at most a few bytes past LOG_LINE_MAX).
local function clip(text, len)
    if not jcheck(text) then
        -- Not UTF-8 (binary, or Latin-1): the lines leave as JSON, which
        -- cannot carry such bytes, so each byte >= 0x80 is written \xNN.
        text = text:gsub("[\128-\255]", function(c) return ("\\x%02X"):format(c:byte()) end)
    end
    len = len or #text
    if len <= M.LOG_LINE_MAX and #text <= M.LOG_LINE_MAX then return text end
    local cut = M.LOG_LINE_MAX
    -- Back off over continuation bytes so that a cut never splits a
    -- character: the JSON of the logs must stay valid UTF-8.
    local b = text:byte(cut + 1)
    while cut > 0 and b and b >= 0x80 and b < 0xC0 do
        b = text:byte(cut)
        cut = cut - 1
    end
    return text:sub(1, cut) .. " [truncated: " .. len .. " bytes]"
end

--- Keeps one line logged by task g (attempt `attempt`) of the context in
-- `slot` in the ring of its root context (the job). Lines are only kept
-- here; writing them to stderr is the caller's business. `time` (default:
-- now) and `len` (the length of the line `text` was cut from) are given
-- for the lines of a sync task, which come back after it ran.
function M.keep_log(rt, slot, g, attempt, text, time, len)
    local cap = rt.log_lines
    if cap == 0 then return end
    local parent_of = rt.parent_of
    local root = slot
    while parent_of[root] do root = parent_of[root] end
    -- A body that outlived its cancelled job has no job to log to.
    if rt.ids[root] == nil then return end
    local ring = slot_table(rt, "logs", root)
    local n = (ring.n or 0) + 1
    ring.n = n
    ring[(n - 1) % cap + 1] = { time = time or rt.E.wallclock(), task = rt.T_name[g], attempt = attempt,
                                line = clip(text, len) }
end

--- The lines of a ring, oldest first, as { lines = {...}, dropped = n }
-- (dropped: the older lines the bound pushed out).
function M.log_lines(rt, ring)
    local cap, n = rt.log_lines, ring.n
    local lines = {}
    local first = n > cap and n - cap + 1 or 1
    for k = first, n do lines[#lines + 1] = ring[(k - 1) % cap + 1] end
    return { lines = lines, dropped = first - 1 }
end

--- The kept lines of the live job in root `slot` (none yet: no lines).
function M.live_logs(rt, slot)
    local ring = rt.logs[slot]
    if not ring then return { lines = {}, dropped = 0 } end
    return M.log_lines(rt, ring)
end


-- The ctx table a body, `when` or a retry interval gets.
local function make_ctx(rt, slot, g, attempt)
    local d = slot_table(rt, "data_of", slot)
    local id = rt.ids[slot]
    local name = rt.T_name[g]
    local ctx = { id = tostring(id), attempt = attempt, map_index = rt.index_of[slot],
                  data = d, task = name }
    ctx.log = function(...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do parts[i] = tostring((select(i, ...))) end
        local text = table.concat(parts, "\t")
        M.keep_log(rt, slot, g, attempt, text)
        io_stderr:write("[", tostring(id), " ", name, "] ", text, "\n")
    end
    return ctx
end


-- The retry choice: how many seconds until the next attempt of a failed
-- one, or nil when there is none (no policy left, retry.on said no, or a
-- policy function failed: that is added to rec.message).
local function retry_delay(rt, slot, g, attempt, rec)
    local r = rt.T_retry[g]
    local code = rec.code
    if not r or attempt > r.times or code == "EDEADLK" or code == "ECANCELED" then return nil end
    if r.on then
        local ok, res = pcall(r.on, rec)
        if not ok then
            rec.message = rec.message .. " (and retry.on raised: " .. tostring(res) .. ")"
            return nil
        end
        if not res then return nil end
    end
    local iv = r.interval
    if type(iv) ~= "function" then return iv end
    local ok, res = pcall(iv, make_ctx(rt, slot, g, attempt), attempt, rec)
    if not ok or type(res) ~= "number" or not (res >= 0) then
        rec.message = rec.message .. " (and retry.interval "
            .. (ok and ("returned " .. tostring(res) .. ", not seconds >= 0")
                or ("raised: " .. tostring(res))) .. ")"
        return nil
    end
    return res
end


-- Fires checkpoint(id, task, output) for a task of a root context, once
-- per task and context. A router is never checkpointed: its output is
-- the input it passed on, while a restored task's output is judged as if
-- its body returned it, and a router's body returns the names it chose.
-- What fed it is checkpointed instead: a resume runs the router again.
local function checkpoint(rt, slot, loc, p)
    local t = p.tasks[loc]
    if t.route then
        for _, pr in ipairs(t.preds) do checkpoint(rt, slot, pr, p) end
        return
    end
    local done = slot_table(rt, "checkpointed", slot)
    if done[loc] then return end
    done[loc] = true
    local v = rt.outputs[slot][loc]
    fire(rt, p, "checkpoint", rt.ids[slot], p.tasks[loc].name, v == nil and jnull or v)
end


-- Checkpoints the outputs that task g of slot takes as its input.
checkpoint_inputs = function(rt, slot, g, p)
    local p1 = rt.T_pred1[g]
    if p1 and p1 > 0 then
        checkpoint(rt, slot, p1, p)
    elseif rt.T_preds[g] and not rt.T_gather_of[g] then
        for _, pr in ipairs(rt.T_preds[g]) do checkpoint(rt, slot, pr, p) end
    end
end


-- ===== SLOW STEPS =====
-- A journaled run checkpoints around slow steps without timing any task:
-- a periodic sweep (M.sweep, on a timer of the executor's, only while a
-- checkpoint hook exists) asks the engine for the attempts that have run
-- or waited past the mark. For each, the outputs its root context already
-- has and still needs (the done tasks that feed one not done) are
-- checkpointed, so that a crash during the slow step resumes at it; and
-- the engine hands its success back (OP_SLOW), so that its own output is
-- checkpointed as it ends, before its successors run.

--- Checkpoints around the attempts that have run for `after` seconds or
-- more since the last sweep (once per attempt).
function M.sweep(rt, after)
    local E = rt.E
    local list = E.sweep(after)
    local parent_of, ids, pipe_of = rt.parent_of, rt.ids, rt.pipe_of
    for i = 1, #list, 2 do
        local root = list[i]
        while parent_of[root] do root = parent_of[root] end
        local p = pipe_of[root]
        if ids[root] ~= nil and p and hooked(rt, p, "checkpoint") then
            local front = E.frontier(root)
            for k = 1, #front do checkpoint(rt, root, front[k], p) end
        end
    end
end


-- Task g of slot, which the sweep found slow, succeeded (OP_SLOW, right
-- after its completion): its output is checkpointed.
local function slow_done(rt, slot, g)
    local p = rt.pipe_of[slot]
    local loc = rt.T_local[g]
    if rt.parent_of[slot] == nil and rt.ids[slot] ~= nil and p and p._gbase + loc == g
       and hooked(rt, p, "checkpoint") and rt.E.task_done(slot, loc) then
        checkpoint(rt, slot, loc, p)
    end
end


-- An attempt failed with rec: retry per policy or fail the context.
local function attempt_failed(rt, slot, g, attempt, rec)
    if rt.ids[slot] == nil then
        -- Its context ended while the attempt ran (cancelled): only the
        -- attempt needs ending.
        rt.E.finalize(slot, "failed", g)
        return
    end
    rec.task = rt.T_name[g]
    rec.attempts = attempt
    local delay = retry_delay(rt, slot, g, attempt, rec)
    local p = rt.pipe_of[slot]
    if rt.parent_of[slot] == nil and hooked(rt, p, "checkpoint") then
        -- A failing step: what it needs is kept, so that a resume does
        -- not redo the steps before it.
        checkpoint_inputs(rt, slot, g, p)
    end
    if delay then
        if hooked(rt, p, "retry") then fire(rt, p, "retry", rt.ids[slot], rec.task, attempt, rec, delay) end
        rt.E.retry(slot, g, delay)
    else
        fail_context(rt, slot, g, rec)
    end
    -- Out of memory: the attempt's record is out (built and emitted from
    -- the limit's headroom); what it left goes now, and the limit is
    -- armed again for the next one.
    if rec.code == "ENOMEM" then mem_rearm() end
end


-- The record of an attempt the engine failed (op OP_FAIL): a timeout, a
-- deadlock or another code.
local function engine_failure(rt, slot, g, code)
    local msg
    if code == "ETIMEDOUT" then
        msg = "task '" .. rt.T_name[g] .. "' timed out after " .. tostring(rt.T_timeout[g]) .. " s"
    elseif code == "EDEADLK" then
        local w = rt.waiting[slot]
        msg = "deadlock: task '" .. rt.T_name[g] .. "' waits for "
            .. (w and ("job '" .. tostring(w) .. "'") or "other work") .. ", which can never finish"
    else
        -- The engine's own reason (a foreign yield), when it gave one.
        msg = rt.E.fail_message(slot, g) or ("attempt failed (" .. tostring(code) .. ")")
    end
    return new_error(code, msg)
end


-- ===== FLOW: JOINS, ROUTES, FAN-OUT =====

-- The input of a task with several predecessors (a table keyed by
-- predecessor name) or of a gather (an array in map_index order).
local function join_input(rt, slot, g, outs)
    local preds, names = rt.T_preds[g], rt.T_pnames[g]
    local m = rt.T_gather_of[g]
    if m then
        local acc = rt.kids[slot] and rt.kids[slot][m] or {}
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
    local t = tnew(0, #preds)
    if rt.T_routed[g] then
        -- Only the predecessors that ran (a router may have bypassed some).
        local bypassed = rt.E.bypassed
        for k = 1, #preds do
            if not bypassed(slot, preds[k]) then t[names[k]] = outs[preds[k]] end
        end
        return t
    end
    for k = 1, #preds do t[names[k]] = outs[preds[k]] end
    return t
end


-- A router returned res: a successor name or a list of them. Tells the
-- engine; returns nil, or why res chooses nothing valid.
local function choose(rt, g, res)
    local succ = rt.T_route[g]
    local names = type(res) == "string" and { res } or res
    if type(names) ~= "table" then
        return "router '" .. rt.T_name[g] .. "' must return a successor name or a list of names, got "
            .. type(res)
    end
    local chosen = {}
    for i = 1, #names do
        local k = succ[names[i]]
        if not k then
            local known = {}
            for n in pairs(succ) do known[#known + 1] = n end
            table.sort(known)
            return "router '" .. rt.T_name[g] .. "' chose '" .. tostring(names[i])
                .. "', which is not one of its successors (" .. table.concat(known, ", ") .. ")"
        end
        chosen[#chosen + 1] = k
    end
    rt.E.route(unpack(chosen))
    return nil
end


-- A map task returned the array `res`: one child context per element.
local function fan_out(rt, slot, g, res)
    local kids, rare, children_of = rt.kids, rt.rare, rt.children_of
    local k = kids[slot]
    if not k then
        k = {}
        kids[slot] = k
    end
    k[g] = {}
    rare[slot] = true
    local ch = children_of[slot]
    if not ch then
        ch = {}
        children_of[slot] = ch
    end
    local p, id, loc = rt.pipe_of[slot], rt.ids[slot], rt.T_local[g]
    local outputs, parent_of, index_of, ids, pipe_of, map_of =
        rt.outputs, rt.parent_of, rt.index_of, rt.ids, rt.pipe_of, rt.map_of
    local spawn = rt.E.spawn
    for i = 1, #res do
        local c = spawn(slot, g, i)
        outputs[c] = { [loc] = res[i] }
        parent_of[c], index_of[c], ids[c], pipe_of[c] = slot, i, id, p
        map_of[c] = loc
        ch[c] = true
        rare[c] = true
    end
end


-- What an attempt's end means, for every body but the plain hot path:
-- validity, then routes and fan-out. Returns nil and the output to keep,
-- or an error record.
local function judge(rt, slot, g, input, ok, res, err, skip)
    local rec = body_error(ok, res, err)
    if rec then return rec end
    local why, kind = unfit(res)
    if why then
        return new_error("EVALUE", "task '" .. rt.T_name[g] .. "' returned a value JSON cannot carry: " .. why)
    end
    if rt.T_route[g] and not skip then
        -- A router's successors get its input: the names it returned only
        -- choose where the data goes.
        local why2 = choose(rt, g, res)
        if why2 then return new_error("EVALUE", why2) end
        return nil, input
    elseif rt.T_map[g] then
        local why2 = not_array(res, kind)
        if why2 then
            return new_error("EVALUE", "map task '" .. rt.T_name[g] .. "' must return an array, got " .. why2)
        end
        fan_out(rt, slot, g, res)
    end
    return nil, res
end


-- ===== THE RESULT CACHE =====

-- Asks the cache for an attempt of cached task g, before its body runs
-- (on the loop thread, so sync and native tasks too). Returns true and
-- the stored output on a hit; nil and the key to store the output under
-- after a success on a miss (no key: the attempt is not cached: no store,
-- cache.key returned nil, or an input JSON cannot carry); false and what
-- xpcall's handler makes when cache.key failed, which fails the attempt.
local function cache_lookup(rt, slot, g, attempt, input)
    local store = rt.cache
    if not store then return nil end
    local spec = rt.T_cache[g]
    local text
    local kf = spec.key
    if kf then
        local ok, k = pcall(kf, input, spec.key_ctx and make_ctx(rt, slot, g, attempt) or nil)
        if not ok then
            local msg = "cache.key: " .. tostring(k)
            return false, { msg, traceback(msg) }
        end
        if k == nil then return nil end
        if type(k) == "string" then
            text = "s" .. k
        else
            local why = unfit(k)
            if why then
                return false, { new_error("EVALUE", "cache.key of task '" .. rt.T_name[g]
                    .. "' returned a value JSON cannot carry: " .. why) }
            end
            text = "j" .. jencode(k)
        end
    else
        text = jencode(input)
        if not text then return nil end
        text = "j" .. text
    end
    local key = cache.key(spec, text)
    local found, value = store:get(key, spec.ttl)
    if found then
        rt.cache_hits = rt.cache_hits + 1
        return true, value
    end
    rt.cache_misses = rt.cache_misses + 1
    return nil, nil, key
end


-- ===== BATCHES =====

-- Runs the waiting members of batch task g as one call: the body gets
-- their inputs as an array and returns one output per input.
local function run_batch(rt, g)
    local b = rt.batches[g]
    local n = b and #b.slot or 0
    if n == 0 then return end
    rt.batches[g] = nil
    local E = rt.E
    E.batch_timer(g, -1)
    E.detach()
    local slots, attempts, outs_of = b.slot, b.attempt, b.outs
    local ok, res, err = xpcall(rt.T_fn[g], on_error, jarray(b.input))
    local rec = body_error(ok, res, err)
    if rec == nil then
        if type(res) ~= "table" or #res ~= n then
            rec = new_error("EVALUE", "batch task '" .. rt.T_name[g] .. "' got " .. n
                .. " inputs and must return as many outputs, returned "
                .. (type(res) == "table" and (#res .. " outputs") or type(res)))
        else
            local why = unfit(res)
            if why then
                rec = new_error("EVALUE", "task '" .. rt.T_name[g]
                    .. "' returned a value JSON cannot carry: " .. why)
            end
        end
    end
    local loc, done = rt.T_local[g], E.done
    for i = 1, n do
        if rec == nil then
            outs_of[i][loc] = res[i]
            done(slots[i], g)
        else
            -- Every member fails with its own copy of the record.
            local r = new_error(rec.code, rec.message, nil, nil, rec.traceback)
            attempt_failed(rt, slots[i], g, attempts[i], r)
        end
    end
end


-- A member of batch task g is ready: it waits for the batch to fill up or
-- for `wait` seconds after the first member, whichever is first.
local function join_batch(rt, slot, g, attempt, input, outs)
    local b = rt.batches[g]
    if not b then
        b = { slot = {}, attempt = {}, input = {}, outs = {} }
        rt.batches[g] = b
    end
    local n = #b.slot + 1
    b.slot[n], b.attempt[n], b.input[n], b.outs[n] = slot, attempt, input, outs
    local spec = rt.T_batch[g]
    if n >= spec.size then
        run_batch(rt, g)
    elseif n == 1 then
        rt.E.batch_timer(g, spec.wait)
    end
end


-- ===== THE RUNNER =====

--- Makes the runner state of executor `ex` (engine functions E, live ids
-- table `live`, and `emit(id, status, value, ran)` through which results
-- leave) and gives the engine its runner. Returns the state.
local ffi_ok, ffi = pcall(require, "ffi")
local step_ct, submit_ct, spawn_ct, release_ct
if ffi_ok then
    step_ct = ffi.typeof("int32_t (*)(void *, uint32_t, uint32_t, int32_t *)")
    submit_ct = ffi.typeof("uint32_t (*)(void *, uint32_t, int32_t)")
    spawn_ct = ffi.typeof("uint32_t (*)(void *, uint32_t, uint32_t, uint32_t)")
    release_ct = ffi.typeof("int32_t (*)(void *, uint32_t)")
end

--- The runner's way to the engine: `next_op(slot, task)` completes
-- (slot, task) when slot > 0 and returns the next operation's code, its
-- operands in `out[0..3]` (slot, task, attempt | parent, map index) and a
-- failure's code name in `code[1]`; 0 when there is nothing to do (the
-- runner was resumed idle and asks again). Where LuaJIT has its FFI, the
-- common operations come through a C function pointer (src/lua/lengine.c,
-- leng_step), which the runner's compiled loop calls without leaving its
-- trace; what that cannot do (yield, name a failure) goes through the
-- engine's nxt. The operands go through `out`, not return values, so
-- that the loop carries one number from one iteration to the next (values
-- of changing types there make LuaJIT give up compiling it).
-- The engine's submit, spawn and release, which run once per context,
-- are replaced in E the same way (each falls back on the engine's own,
-- which raises the error, when the fast one refuses its arguments).
-- TIDE_NO_FFI=1 uses the engine's functions only (to compare).
function M.next_op(E)
    local slow = E.nxt
    local code = {}
    local out
    local function classic(slot, g, idle)
        local op, a, b, c, d = slow(slot, g, idle)
        if op == nil then return 0 end
        out[0], out[1], out[2] = a or 0, b or 0, c or 0
        if op == OP_FAIL then
            out[3], code[1] = 0, d
        else
            out[3] = d or 0
        end
        return op
    end
    if not step_ct or not E.fast or os.getenv("TIDE_NO_FFI") then
        out = { [0] = 0, 0, 0, 0 }
        return classic, out, code
    end
    local ep, fstep, fsubmit, fspawn, frelease = E.fast()
    local eng, step = ffi.cast("void *", ep), ffi.cast(step_ct, fstep)
    local csubmit, cspawn, crelease = E.submit, E.spawn, E.release
    local submit, spawn = ffi.cast(submit_ct, fsubmit), ffi.cast(spawn_ct, fspawn)
    local release = ffi.cast(release_ct, frelease)
    E.submit = function(g, prio)
        local slot = submit(eng, g, prio)
        if slot > 0 then return slot end
        return csubmit(g, prio)
    end
    E.spawn = function(parent, t, index)
        local slot = spawn(eng, parent, t, index)
        if slot > 0 then return slot end
        return cspawn(parent, t, index)
    end
    E.release = function(slot)
        if release(eng, slot) ~= 0 then return crelease(slot) end
    end
    out = ffi.new("int32_t[4]")
    return function(slot, g)
        local op = step(eng, slot, g, out)
        if op > 0 then return op end
        return classic(0, 0, op == 0)
    end, out, code
end


function M.install(E, live, emit)
    local rt = {
        E = E, live = live, live_dels = 0, live_every = 16, emit = emit, attached = {}, limiter_ids = {},
        batches = {},
        ev = {}, flags = { tasks = false, restored = 0, general = false }, restored = {}, checkpointed = {},
        T_checkpoint = {},
        -- Per global task index.
        T_fn = {}, T_pred1 = {}, T_preds = {}, T_pnames = {}, T_ctx = {}, T_local = {},
        T_map = {}, T_gather_of = {}, T_retry = {}, T_name = {}, T_collect = {},
        T_timeout = {}, T_when = {}, T_route = {}, T_plain = {}, T_batch = {}, T_routed = {},
        T_cache = {},
        -- The executor's result cache (cache.store) or nil, and what it
        -- answered.
        cache = nil, cache_hits = 0, cache_misses = 0,
        -- Per slot.
        outputs = {}, ids = {}, pipe_of = {}, kids = {}, parent_of = {}, index_of = {},
        data_of = {}, waiting = {}, map_of = {}, children_of = {}, rare = {},
        -- Per root slot: the ring of its kept log lines (M.keep_log), and
        -- the ring's size (the executor's log_lines).
        logs = {}, log_lines = M.LOG_LINES,
    }
    -- The hot loop's upvalues.
    local outputs, T_fn, T_pred1, T_local, T_plain = rt.outputs, rt.T_fn, rt.T_pred1, rt.T_local, rt.T_plain
    local T_batch, T_ctx, T_when, T_name, T_timeout = rt.T_batch, rt.T_ctx, rt.T_when, rt.T_name, rt.T_timeout
    local T_cache = rt.T_cache
    local nxt, out, fail_code = M.next_op(E)
    local detach = E.detach
    local flags, restored = rt.flags, rt.restored

    -- Runs one attempt the general way (when, ctx, routers, maps, any
    -- output, events, checkpoints) and reports it; returns the next
    -- operation.
    local function run_attempt(slot, g, attempt, input, outs)
        local ok, res, err
        local skip = false
        local p = rt.pipe_of[slot]
        local events = flags.tasks
        if events and hooked(rt, p, "task_start") then
            fire(rt, p, "task_start", rt.ids[slot], T_name[g], attempt, rt.index_of[slot], input)
        end
        local from -- nil: the body (or `when`) decided; "restore", "cache"
        local r = flags.restored > 0 and restored[slot]
        if r and r[T_local[g]] ~= nil then
            -- Checkpointed by an earlier run: its output, not its body
            -- (nor the cache's).
            local v = r[T_local[g]]
            if v == jnull then v = nil end
            ok, res, from = true, v, "restore"
        end
        local when = ok == nil and T_when[g]
        if when then
            local wok, wres = pcall(when, input, make_ctx(rt, slot, g, attempt))
            if not wok then
                ok, res = false, { "when: " .. tostring(wres), traceback("when: " .. tostring(wres)) }
            elseif not wres then
                ok, res, skip = true, input, true -- bypass: pass the input through
            end
        end
        local ckey
        if ok == nil and T_cache[g] then
            ok, res, ckey = cache_lookup(rt, slot, g, attempt, input)
            if ok then from = "cache" end
        end
        if ok == nil then -- not decided by `when` or the cache
            if T_ctx[g] then
                ok, res, err = xpcall(T_fn[g], on_error, input, make_ctx(rt, slot, g, attempt))
            else
                ok, res, err = xpcall(T_fn[g], on_error, input)
            end
        end
        local rec, keep = judge(rt, slot, g, input, ok, res, err, skip)
        if events and hooked(rt, p, "task_end") then
            fire(rt, p, "task_end", rt.ids[slot], T_name[g], attempt, rec == nil and keep or nil, rec,
                 rt.index_of[slot], from)
        end
        if rec == nil then
            -- What the body returned (a router's names, a map's array),
            -- not what its successors get.
            if ckey then rt.cache:put(ckey, T_cache[g].task, res) end
            outs[T_local[g]] = keep
            if rt.T_checkpoint[g] and rt.parent_of[slot] == nil and hooked(rt, p, "checkpoint") then
                checkpoint(rt, slot, T_local[g], p)
            end
            return nxt(slot, g)
        end
        attempt_failed(rt, slot, g, attempt, rec)
        return nxt(0, 0)
    end

    local function runner()
        local op = nxt(0, 0)
        while true do
            if op == OP_RUN then
                local slot, g, attempt = out[0], out[1], out[2]
                local outs = outputs[slot]
                local p1 = T_pred1[g]
                local input
                if p1 then input = outs[p1] else input = join_input(rt, slot, g, outs) end
                if T_batch[g] then
                    detach()
                    join_batch(rt, slot, g, attempt, input, outs)
                    op = nxt(0, 0)
                elseif T_plain[g] and not flags.general then
                    -- The hot path: no when, ctx, router or map, and a
                    -- finite number or a valid string as the output.
                    local ok, res, err = xpcall(T_fn[g], on_error, input)
                    local tr = type(res)
                    if ok and ((tr == "number" and res == res and res ~= huge and res ~= -huge)
                               or (tr == "string" and jcheck(res))) then
                        outs[T_local[g]] = res
                        op = nxt(slot, g)
                    else
                        local rec, keep = judge(rt, slot, g, input, ok, res, err, false)
                        if rec == nil then
                            outs[T_local[g]] = keep
                            op = nxt(slot, g)
                        else
                            attempt_failed(rt, slot, g, attempt, rec)
                            op = nxt(0, 0)
                        end
                    end
                else
                    op = run_attempt(slot, g, attempt, input, outs)
                end
            elseif op == OP_BATCH then
                run_batch(rt, out[1])
                op = nxt(0, 0)
            elseif op == OP_FINISH then
                local slot = out[0]
                collect_inner(rt, slot, 0)
                local value, ran = context_output(rt, slot)
                finish(rt, slot, "done", value, ran)
                op = nxt(0, 0)
            elseif op == OP_CHILD then
                local slot, map_task, parent, index = out[0], out[1], out[2], out[3]
                collect_inner(rt, slot, rt.map_of[slot])
                local k = rt.kids[parent]
                if k and k[map_task] then k[map_task][index] = outputs[slot] end
                forget(rt, slot)
                E.release(slot)
                op = nxt(0, 0)
            elseif op == OP_FAIL then
                local slot, g, attempt = out[0], out[1], out[2]
                attempt_failed(rt, slot, g, attempt, engine_failure(rt, slot, g, fail_code[1]))
                op = nxt(0, 0)
            elseif op == OP_SLOW then
                slow_done(rt, out[0], out[1])
                op = nxt(0, 0)
            elseif op == OP_QUIT then
                -- The engine closes: this thread may serve another one.
                return
            else
                op = nxt(0, 0)
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
                             .. "stopping it\n"):format(name, tostring(rt.ids[slot]), ran,
                                                        signum and (" (signal " .. signum .. ")") or ""))
        end
        if signum then
            return new_error("ECANCELED", ("task '%s' was stopped on signal %d: it had run %.1f s "
                                           .. "without yielding"):format(name, signum, ran))
        end
        return new_error("ETIMEDOUT", ("task '%s' timed out after %s s without yielding "
                                       .. "(stopped by the watchdog)"):format(name, tostring(T_timeout[g] or limit)))
    end
    rt.on_stuck = on_stuck
    return rt
end


--- Registers pipeline p with the engine (once per executor) and fills
-- the per-task tables. `sync_body(p, t)` makes the loop-side body of a
-- sync or native task. Returns the attachment { gid, gbase, shadow,
-- ntasks }.
function M.attach(rt, p, task_timeout, sync_body)
    local att = rt.attached[p]
    if att then return att end
    p:compile()
    pipeline.ensure_setup(p)
    local E = rt.E
    local timeouts, lims = {}, {}
    for i, t in ipairs(p.tasks) do
        timeouts[i] = t.timeout or task_timeout
        if t.limit then
            -- One engine limiter per name, shared by every task naming it.
            local id = rt.limiter_ids[t.limit]
            if not id then
                local spec = pipeline.limiters[t.limit]
                id = E.limiter(spec.rate, spec.burst, spec.concurrency)
                rt.limiter_ids[t.limit] = id
            end
            lims[i] = id
        end
    end
    local gid, gbase = E.attach(p._graph, timeouts, lims)
    -- Pipelines may be shared by executors: per-executor facts live in a
    -- shadow table so that p stays immutable.
    local shadow = setmetatable({ _gbase = gbase }, { __index = p })
    for i, t in ipairs(p.tasks) do
        local g = gbase + i
        local fn = t.fn
        if t.kind == "sync" or t.kind == "native" then
            fn = sync_body(p, t)
        elseif t.kind == "exec" then
            -- The body returns the command ({ "cmd", args..., env=, ... });
            -- tide runs it and the task's output is the result.
            local body, exec = t.fn, require("tide.exec").exec
            fn = function(input, ctx)
                local res, rec = exec(body(input, ctx))
                if not res then error(rec, 0) end
                return res
            end
        end
        rt.T_fn[g] = fn
        rt.T_name[g] = t.name
        rt.T_local[g] = i
        rt.T_ctx[g] = (t.kind ~= "native" and (t.nparams >= 2 or t.kind == "exec")) or nil
        rt.T_map[g] = t.map or nil
        rt.T_retry[g] = t.retry
        rt.T_timeout[g] = timeouts[i]
        rt.T_when[g] = t.when
        rt.T_plain[g] = not (t.when or t.route or t.map or t.cache or t.checkpoint or t.nparams >= 2
                             or t.kind ~= "async") or nil
        rt.T_cache[g] = t.cache and cache.spec(p, t) or nil
        rt.T_checkpoint[g] = t.checkpoint or nil
        rt.T_batch[g] = t.batch
        rt.T_routed[g] = p.has_routes or nil
        if t.route then
            local succ = {}
            for _, si in ipairs(t.succs) do succ[p.tasks[si].name] = si end
            rt.T_route[g] = succ
        end
        local preds = t.preds
        if t.gather then
            rt.T_gather_of[g] = gbase + t.gather_of
            local pr, pn = {}, {}
            for k, pi in ipairs(preds) do pr[k], pn[k] = pi, p.tasks[pi].name end
            rt.T_preds[g], rt.T_pnames[g] = pr, pn
            if t.errors == "collect" then rt.T_collect[gbase + t.gather_of] = true end
        elseif #preds == 0 then
            rt.T_pred1[g] = 0
        elseif #preds == 1 then
            rt.T_pred1[g] = preds[1]
        else
            local pr, pn = {}, {}
            for k, pi in ipairs(preds) do pr[k], pn[k] = pi, p.tasks[pi].name end
            rt.T_preds[g], rt.T_pnames[g] = pr, pn
        end
    end
    att = { gid = gid, gbase = gbase, shadow = shadow, ntasks = #p.tasks }
    rt.attached[p] = att
    -- A task_start or task_end hook p:on adds later must reach this
    -- executor's flags too.
    p._flags[rt.flags] = true
    M.update_flags(rt)
    return att
end


--- How many slots the runner holds values for (0 once idle).
function M.held(rt)
    local n = 0
    for _ in pairs(rt.outputs) do n = n + 1 end
    for _ in pairs(rt.children_of) do n = n + 1 end
    return n
end

return M
