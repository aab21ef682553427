--- The executor: tide's public API for running pipelines.
--
-- DESIGN
-- ------
-- An executor owns one C engine (its libuv loop, ready queue, timers and
-- context slots: src/sched.c through src/lua/lengine.c) and the Lua side
-- of the jobs it runs. Its modules share its fields: this file (the class
-- and its public methods), runner.lua (the runner coroutine and the
-- policies applied when an attempt ends), results.lua (the in-memory
-- result store), hub.lua (tide.fd/timeout/step for host loops) and
-- bridge.lua (sync and native tasks on worker threads). No other module
-- touches a field whose name starts with an underscore (make lint).
--
-- Jobs come in one way, ex:submit (the job sources of tide run, tide
-- serve, the REPL and the C API all call it), and leave one way: when a
-- root context ends, emit() hands (id, status, value, ran) to the result
-- store, if the executor keeps one, then to every subscriber, then wakes
-- the job's watchers (long-polls, tasks waiting in ex:result). ex:result
-- and ex:finished read the store.
local core = require "tide.core"
local errors = require "tide.errors"
local pipeline = require "tide.pipeline"
local runner = require "tide.runner"
local results = require "tide.results"
local hub = require "tide.hub"
local bridge = require "tide.bridge"
local cache = require "tide.cache"

local type, pairs, ipairs, tostring, tonumber, error = type, pairs, ipairs, tostring, tonumber, error
local pcall, xpcall, setmetatable, getmetatable = pcall, xpcall, setmetatable, getmetatable
local floor = math.floor
local hrtime = core.hrtime
local new_error, is_error = errors.new, errors.is
local io_stderr = io.stderr

local M = {}
-- A host may set M.interrupted to a function returning true when a
-- top-level wait (ex:result outside a task) should stop early.
M.interrupted = nil

local Executor = {}
Executor.__index = Executor
M.Executor = Executor

local PRIO = { high = 0, low = 1, lifo = 2 }
M.PRIO = PRIO
M.unfit = runner.unfit

-- Limits of the options: the engine's slot table, and a thread count no
-- machine of this kind runs usefully (each worker has its own Lua state).
M.MAX_CONCURRENCY = 100000000
M.MAX_THREADS = 1024

-- The host-loop hub (tide.fd, tide.timeout, tide.step, tide.run()).
M.fd, M.timeout, M.step, M.run_all = hub.fd, hub.timeout, hub.step, hub.run_all

local EXEC_OPTS = {
    threads = true, concurrency = true, task_timeout = true,
    retention = true, max_results = true, results = true, cache = true, bare_yield = true,
    memory_limit = true, on = true, log_lines = true, checkpoint_after = true,
}

-- Seconds a step runs before a journaled run checkpoints around it
-- (checkpoint_after), and how often the sweep that finds such steps runs
-- at most.
M.CHECKPOINT_AFTER = 1
local SWEEP_EVERY = 0.25

-- The most lines a job may keep (log_lines): a bound that still lets a
-- mistyped option show up as an error instead of eating the memory.
M.MAX_LOG_LINES = 1000000

-- Each worker state's memory limit when the executor sets none: a body
-- that runs away fails with ENOMEM instead of taking the machine.
M.WORKER_MEMORY_LIMIT = 1024 ^ 3
M.MIN_MEMORY_LIMIT = 1024 ^ 2

local UNITS = { [""] = 1, K = 1024, M = 1024 ^ 2, G = 1024 ^ 3 }

--- Bytes from a number, or a string of digits with an optional K, M or G
-- (powers of 1024): "512M", "1G". Nil when v is neither.
function M.parse_bytes(v)
    local n
    if type(v) == "number" then
        n = v
    elseif type(v) == "string" then
        local digits, unit = v:match("^(%d+)([KMGkmg]?)$")
        if not digits then return nil end
        n = tonumber(digits) * UNITS[unit:upper()]
    else
        return nil
    end
    if n ~= floor(n) or n < M.MIN_MEMORY_LIMIT or n > 2 ^ 53 then return nil end
    return n
end


local function check_self(self, fname)
    if getmetatable(self) ~= Executor then
        error(fname .. ": call it as ex:" .. fname:match("[%w_]+$") .. "(...), with a colon", 3)
    end
    if self._E.forked() then
        -- Its loop and threads are the parent's: sync jobs would wait for
        -- threads this process does not have.
        error(fname .. ": this executor was made in process " .. tostring(self._pid)
              .. " before a fork, and cannot be used in process " .. tostring(core.getpid())
              .. "; make executors after forking (in nginx: in init_worker_by_lua, e.g. "
              .. "require('tide.ngx').init_worker)", 3)
    end
end


local function no_job(id)
    return errors.fail("ENOENT", "no job with id '" .. tostring(id) .. "'")
end


-- Calls fn(...) for a subscriber or watcher; a failure is reported and
-- counted (ex:run raises after the loop: a subscriber that failed may
-- have lost a result, so a run must not look successful).
local function call_hook(self, what, fn, ...)
    local ok, err = pcall(fn, ...)
    if not ok then
        self._hook_errors = self._hook_errors + 1
        io_stderr:write("tide: ", what, " failed: ", tostring(err), "\n")
    end
end


-- A root context ended: the one way results leave the executor.
local function emit(self, id, status, value, ran, logs)
    local store = self._store
    if store then store:put(id, status, value, logs) end
    local subs = self._subs
    for i = 1, #subs do call_hook(self, "a result subscriber", subs[i], id, status, value, ran, logs) end
    local w = self._waiters[id]
    if w then
        self._waiters[id] = nil
        local wake = self._E.wake
        for _, h in ipairs(w) do
            if type(h) == "function" then call_hook(self, "a result watcher", h, id) else wake(h) end
        end
    end
end


--- Creates an executor.
-- @param opts { concurrency = n (root contexts in flight, default 10000),
--   threads = n (worker threads for sync tasks, default: the cores),
--   task_timeout = s (default per attempt), retention = s and max_results
--   = n (how long and how many finished results the store keeps: 3600 s,
--   1 000 000), results = false (keep no results: subscribers get them),
--   cache = FILE | true | false (the result cache of tasks declared with
--   `cache`: a file, the default file, or none; default: the default
--   file, opened on first use), on = { event = fn } (lifecycle hooks, as
--   ex:on), log_lines = n (the lines of ctx.log and print each job keeps
--   for ex:logs, the newest; 0 keeps none; default 100),
--   checkpoint_after = s (while a checkpoint hook exists, a step that
--   runs or waits this long gets the outputs its context needs
--   checkpointed, and its own when it ends; 0: never; default 1) }
-- @raise on a bad option
function M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then
        error("tide.executor: options must be a table, got " .. type(opts), 2)
    end
    -- Jobs that run on `tide worker` processes: another kind of executor
    -- (tide.rexec), with the same submit, result, status and cancel.
    if opts.redis ~= nil then return require("tide.rexec").new(opts) end
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
    if opts.results ~= nil and type(opts.results) ~= "boolean" and opts.results ~= "json" then
        error("tide.executor: results must be true, false or \"json\"", 2)
    end
    local cfile = opts.cache
    if cfile ~= nil and cfile ~= false and cfile ~= true and (type(cfile) ~= "string" or cfile == "") then
        error("tide.executor: cache must be a file name, true (the default file) or false (no cache), got "
              .. type(cfile), 2)
    end
    local by = opts.bare_yield
    if by ~= nil and by ~= "requeue" and by ~= "fail" then
        error("tide.executor: bare_yield must be 'requeue' or 'fail', got " .. tostring(by), 2)
    end
    if by == nil then
        -- Inside nginx's Lua module, ngx.sleep and cosockets yield without
        -- values, like a bare coroutine.yield(): only "fail" keeps tide
        -- from resuming what nginx will resume, whoever wrote the glue.
        local ngx = rawget(_G, "ngx")
        by = (type(ngx) == "table" and type(ngx.get_phase) == "function") and "fail" or "requeue"
    end
    local on = opts.on
    if on ~= nil then
        if type(on) ~= "table" then error("tide.executor: on must be a table { event = fn }", 2) end
        for event, fn in pairs(on) do
            if not pipeline.EVENTS[event] then
                error("tide.executor: on: unknown event '" .. tostring(event) .. "'", 2)
            end
            if type(fn) ~= "function" then
                error("tide.executor: on: the hook of '" .. event .. "' must be a function", 2)
            end
        end
    end
    local ll = opts.log_lines
    if ll ~= nil and (type(ll) ~= "number" or ll < 0 or ll ~= floor(ll) or ll > M.MAX_LOG_LINES) then
        error("tide.executor: log_lines must be a whole number from 0 to " .. M.MAX_LOG_LINES, 2)
    end
    local cpa = opts.checkpoint_after
    if cpa ~= nil and (type(cpa) ~= "number" or not (cpa >= 0) or cpa == math.huge) then
        error("tide.executor: checkpoint_after must be a number of seconds >= 0 (0: never), got "
              .. tostring(cpa), 2)
    end
    local mem
    if opts.memory_limit ~= nil then
        mem = M.parse_bytes(opts.memory_limit)
        if not mem then
            error("tide.executor: memory_limit must be bytes >= 1M: a whole number, "
                  .. "or a string such as \"512M\" or \"1G\"", 2)
        end
        -- The Lua state this executor runs in: its bodies, its engine and
        -- everything else in that state share it.
        core.mem_limit(mem)
    end

    local ud, E = core.engine(conc)
    local self = setmetatable({
        _ud = ud, _E = E, _task_timeout = tt, _threads = opts.threads or core.cores(),
        _worker_memory = mem or M.WORKER_MEMORY_LIMIT,
        _next_id = 0, _subs = {}, _waiters = {}, _hook_errors = 0,
        _pid = core.getpid(), _checkpoint_after = cpa or M.CHECKPOINT_AFTER,
    }, Executor)
    if by == "fail" then E.bare_yield(true) end
    if opts.results ~= false then
        self._store = results.new(opts.max_results or 1000000, opts.retention or 3600,
                                  opts.results == "json")
    end
    -- The ids of the running jobs (id -> slot) are self._rt.live, which
    -- the runner replaces now and then (see runner.live_forget).
    self._rt = runner.install(E, {}, function(id, status, value, ran, logs)
        emit(self, id, status, value, ran, logs)
    end)
    if ll then self._rt.log_lines = ll end
    if cfile ~= false then
        -- Opened on the first attempt of a task with `cache`: an executor
        -- whose tasks cache nothing never touches the file.
        self._cache = cache.store(type(cfile) == "string" and cfile or nil)
        self._rt.cache = self._cache
    end
    -- The watchdog's hook never stops the executor's own code halfway:
    -- the runner's chunk (where bodies are called), error records, this
    -- file (a body may call ex:submit or ex:result) and the store.
    E.set_watchdog(xpcall, self._rt.on_stuck, errors.new, Executor.submit, results.new)
    for event, fn in pairs(on or {}) do self:on(event, fn) end
    hub.add(self)
    return self
end


-- tide.run's own executor. Making and closing an executor (a libuv
-- loop, the engine, its runners) costs a good part of a millisecond, as
-- much as a short run itself, so tide.run keeps one between its calls:
-- made by the first call without options, it belongs to this module
-- (`default`), which releases it when a call fails, when it has attached
-- MAX_DEFAULT_PIPELINES pipelines and a new one comes (the engine keeps
-- every pipeline it attached), and in a forked child (it is the
-- parent's); the collector closes the last one. It is out of the hub
-- between calls, so tide.fd() and tide.run() never see it idle, and
-- each call gives back what an executor holds beyond its loop: the
-- worker threads of sync tasks and the cache file.
local default, default_pipes = nil, 0
M.MAX_DEFAULT_PIPELINES = 16

local function drop_default()
    local ex = default
    default, default_pipes = nil, 0
    if ex and not ex._E.forked() and not ex._E.closed() then
        hub.add(ex) -- close() takes it out again
        pcall(ex.close, ex)
    end
end


-- The executor for a call of tide.run with these options: the kept one
-- (made on first use) for the default options, when no other call is
-- running on it; else a new one, closed after the call. Returns it and
-- whether it is the kept one.
local function run_executor(p, opts)
    if opts.concurrency == nil and opts.task_timeout == nil and opts.threads == nil
        and opts.memory_limit == nil and opts.cache == nil then
        if default and (default._E.forked() or default._E.closed()) then drop_default() end
        if default and not default._running then
            if not default._rt.attached[p] and default_pipes >= M.MAX_DEFAULT_PIPELINES then
                drop_default()
            end
        end
        if not default then
            default = M.new { results = false }
            hub.remove(default)
        end
        if not default._running then
            if not default._rt.attached[p] then default_pipes = default_pipes + 1 end
            return default, true
        end
    end
    return M.new {
        concurrency = opts.concurrency, task_timeout = opts.task_timeout,
        threads = opts.threads, memory_limit = opts.memory_limit, results = false, cache = opts.cache,
    }, false
end


-- Gives back what a kept executor holds between runs but its loop: the
-- worker threads (joined, as ex:close does) and the cache file
-- (committed; a new store opens it again on the next cached attempt).
local function release_between_runs(ex)
    if ex._pool_ud then
        ex._pool_ud:close()
        ex._pool_ud = nil
    end
    if ex._cache and ex._cache.db then
        ex._cache:close()
        ex._cache = cache.store(nil)
        ex._rt.cache = ex._cache
    end
end


--- Runs every input through p and returns `outputs, errors`, both
-- indexed like inputs (tide.run(p, inputs, opts)).
function M.run_inputs(p, inputs, opts)
    local outs, errs = {}, {}
    local ex, kept = run_executor(p, opts)
    local sub = function(id, status, value)
        if status == "done" then outs[id] = value else errs[id] = value end
    end
    local ok, err = pcall(function()
        if kept then
            ex._running = true
            hub.add(ex)
        end
        ex:subscribe(sub)
        local att = runner.attach(ex._rt, p, ex._task_timeout,
                                  function(pp, t) return bridge.body(ex, pp, t) end)
        local rt, submit, low = ex._rt, ex._E.submit, PRIO.low
        for i = 1, #inputs do
            -- The ids are the indices (numbers): they never leave this call.
            local slot = submit(att.gid, low)
            runner.seed(rt, slot, inputs[i], i, att)
            rt.live[i] = slot
        end
        ex:run()
    end)
    if kept and ok then
        ex._running = nil
        ex:unsubscribe(sub)
        hub.remove(ex)
        ok, err = pcall(release_between_runs, ex)
    end
    if not kept then
        ex:close()
    elseif not ok then
        -- Jobs may be left in it (a failed runner, an input that did not
        -- seed): the next call makes a new one.
        ex._running = nil
        if default == ex then drop_default() end
    end
    if not ok then error(err, 0) end
    return outs, errs
end


-- Registers p with this executor (once); raises with the pipeline's
-- compile error.
local function attach(self, p)
    return runner.attach(self._rt, p, self._task_timeout,
                         function(pp, t) return bridge.body(self, pp, t) end)
end


--- Compiles p and registers it with this executor now rather than at its
-- first job (so that its per-task counters exist from the start).
-- @raise when p does not compile
function Executor:prepare(p)
    check_self(self, "ex:prepare")
    if not pipeline.is(p) then
        error("ex:prepare: argument 1 must be a pipeline (tide.pipeline), got " .. type(p), 2)
    end
    local ok, err = pcall(attach, self, p)
    if not ok then error(err, 2) end
end


--- Submits one input. Returns its id.
-- @param opts { id = string or number (default: generated), priority =
--   "high" | "low" (the default) | "lifo", restore = { task = output }:
--   outputs checkpointed by an earlier run, returned by those tasks
--   instead of running their bodies }
-- @raise on a duplicate id (a job with that id runs, or its result is
--   kept), a bad pipeline or bad options
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
            if k ~= "id" and k ~= "priority" and k ~= "restore" then
                error("ex:submit: unknown option '" .. tostring(k) .. "'", 2)
            end
        end
        if opts.restore ~= nil and type(opts.restore) ~= "table" then
            error("ex:submit: restore must be a table { task = output }", 2)
        end
        id = opts.id
        if id ~= nil then
            local tid = type(id)
            if tid == "number" or tid == "cdata" then
                -- Every digit counts (tostring keeps 14): the JSON text.
                id = core.json.encode(id)
            end
            if type(id) ~= "string" or id == "" then
                error("ex:submit: id must be a non-empty string or a finite number", 2)
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
    local att = self._rt.attached[p]
    if not att then
        local ok, res = pcall(attach, self, p)
        if not ok then error(res, 2) end
        att = res
    end
    if id == nil then
        -- A loop that runs once would abort the JIT's trace ("leaving
        -- loop"): it runs only when the next number is taken already.
        self._next_id = self._next_id + 1
        id = tostring(self._next_id)
        while self:has(id) do
            self._next_id = self._next_id + 1
            id = tostring(self._next_id)
        end
    elseif self:has(id) then
        error("ex:submit: duplicate id '" .. id .. "'", 2)
    end
    local slot = self._E.submit(att.gid, prio)
    runner.seed(self._rt, slot, input, id, att, opts and opts.restore)
    self._rt.live[id] = slot
    return id
end


--- Whether a job with this id runs or has a kept result (a new job may
-- not take its id).
function Executor:has(id)
    return self._rt.live[id] ~= nil or (self._store ~= nil and self._store:status(id) ~= nil)
end


--- The status of a job: "pending", "running", "waiting", "done", "failed"
-- or "cancelled"; nil, rec (code ENOENT) for an unknown id.
function Executor:status(id)
    check_self(self, "ex:status")
    local slot = self._rt.live[id]
    if slot then return self._E.status(slot) end
    local status = self._store and self._store:status(id)
    if status then return status end
    return no_job(id)
end


--- The status ("done", "failed", "cancelled") and value (output or error
-- record) of a finished job whose result is kept; nil otherwise. It
-- neither waits nor consumes.
function Executor:finished(id)
    check_self(self, "ex:finished")
    if not self._store then return nil end
    return self._store:get(id)
end


--- status, text of a finished job whose output the store keeps as JSON
-- text (`results = "json"`: a table output), undecoded; status, nil,
-- value (as ex:finished) for another kept result; nil otherwise.
function Executor:finished_json(id)
    check_self(self, "ex:finished_json")
    if not self._store then return nil end
    return self._store:get_json(id)
end


local function result_of(id, status, value)
    if status == "done" then return value end
    local rec = value
    if not is_error(rec) then rec = new_error("ETASK", tostring(rec)) end
    rec.id = rec.id or id
    return nil, rec
end


-- Adds a watcher (a function or a parked task's wake handle) for id.
local function add_waiter(self, id, h)
    local w = self._waiters[id]
    if not w then
        w = {}
        self._waiters[id] = w
    end
    w[#w + 1] = h
end


--- The output of a job, waiting up to `timeout` seconds (nil: no limit).
-- Inside a task it waits without blocking the loop (and gives back the
-- task's concurrency slot); at top level it runs the loop meanwhile.
-- @return output | nil, rec (rec.code "EAGAIN" when the wait expired,
--   "ENOENT" for an unknown id, else the job's own error)
function Executor:result(id, timeout)
    check_self(self, "ex:result")
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
        error("ex:result: timeout must be a number of seconds >= 0", 2)
    end
    local store = self._store
    local status, value = self:finished(id)
    if status then return result_of(id, status, value) end
    if not self._rt.live[id] or not store then return no_job(id) end
    local E = self._E
    local h, me = E.handle()
    if h then
        -- Inside a task body of this executor: park until woken.
        add_waiter(self, id, h)
        runner.note_wait(self._rt, me, id)
        E.park(timeout)
        runner.note_wait(self._rt, me, nil)
        self:unwatch(id, h) -- the wait expired: the handle goes now
    else
        local deadline = timeout and (hrtime() + timeout) or nil
        local interrupted = M.interrupted
        while not store:get(id) do
            local left = deadline and (deadline - hrtime()) or 3600
            if left <= 0 then break end
            -- In slices, so that a host's interrupt check (the REPL's
            -- Ctrl-C) can end the wait.
            if interrupted and left > 0.1 then left = 0.1 end
            if not E.turn(left) and not store:get(id) then break end
            if interrupted and interrupted() then
                return errors.fail("EAGAIN", "wait for job '" .. tostring(id) .. "' interrupted")
            end
        end
    end
    status, value = store:get(id)
    if status then return result_of(id, status, value) end
    if self._rt.live[id] then
        return errors.fail("EAGAIN", "job '" .. tostring(id) .. "' has not finished yet")
    end
    return no_job(id)
end


--- Cancels a job: its running attempts stop at their yield point, its
-- children and retry timers go, and its result is ECANCELED. Returns true,
-- or nil, rec for an unknown (ENOENT) or finished (EINVAL) job.
function Executor:cancel(id)
    check_self(self, "ex:cancel")
    local slot = self._rt.live[id]
    if not slot then
        if self:finished(id) then
            return errors.fail("EINVAL", "job '" .. tostring(id) .. "' has already finished")
        end
        return no_job(id)
    end
    self._E.finalize(slot, "cancelled")
    runner.finish(self._rt, slot, "cancelled", new_error("ECANCELED", "job '" .. tostring(id) .. "' was cancelled"))
    return true
end


--- Cancels every job that has not finished; returns how many.
function Executor:cancel_all()
    check_self(self, "ex:cancel_all")
    local ids = {}
    for id in pairs(self._rt.live) do ids[#ids + 1] = id end
    for _, id in ipairs(ids) do self:cancel(id) end
    return #ids
end


--- The jobs that have not finished, as an array of { id =, status = }.
function Executor:jobs()
    check_self(self, "ex:jobs")
    local out, status = {}, self._E.status
    for id, slot in pairs(self._rt.live) do out[#out + 1] = { id = id, status = status(slot) } end
    return out
end


--- The lines a job kept (ctx.log and print in its tasks, the newest
-- log_lines of them), as { id =, lines = { { time =, task =, attempt =,
-- line = }, ... }, dropped = n }: a running job's so far, a finished
-- one's while its result is kept. nil, rec (ENOENT) for an unknown id.
function Executor:logs(id)
    check_self(self, "ex:logs")
    local slot = self._rt.live[id]
    local out
    if slot then
        out = runner.live_logs(self._rt, slot)
    elseif self._store and self._store:status(id) then
        out = self._store:logs(id) or { lines = {}, dropped = 0 }
    else
        return no_job(id)
    end
    return { id = id, lines = out.lines, dropped = out.dropped }
end


--- The open executor whose task body runs now, and that body's slot,
-- global task and attempt; nil outside task bodies (and in sync tasks:
-- they run on other threads).
function M.current()
    for ex in hub.each() do
        local slot, g, attempt = ex._E.current()
        if slot then return ex, slot, g, attempt end
    end
    return nil
end


--- Keeps `text` as a line of the job whose task body runs now, on
-- whichever open executor runs it; returns whether a job kept it (false
-- outside task bodies, and in sync tasks: they run on other threads).
-- print replacements call it (M.print, the REPL's print).
function M.keep_print(text)
    local ex, slot, g, attempt = M.current()
    if not ex then return false end
    runner.keep_log(ex._rt, slot, g, attempt, text)
    return true
end


--- A print for task bodies: keeps the line for the running job (ex:logs)
-- and writes it to stderr, as print did before tide replaced it (stdout
-- carries results in tide run).
function M.print(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    local text = table.concat(parts, "\t")
    M.keep_print(text)
    io_stderr:write(text, "\n")
end


--- Iterates over the kept results, oldest first:
-- `for id, status, value in ex:each_result() do ... end`.
function Executor:each_result()
    check_self(self, "ex:each_result")
    if not self._store then return function() return nil end end
    return self._store:each()
end


--- Calls fn(id, status, value, ran, logs) on the loop thread each time a job
-- finishes: status "done" (value: its output), "failed" or "cancelled"
-- (value: its error record); `ran` tells which sinks ran (sink name ->
-- output; nil for a pipeline with one sink and no routers); `logs` is
-- what ex:logs would answer for it without the id, or nil when it kept
-- no line. fn must not
-- wait; an error in it is reported, and ex:run() then raises. Returns a
-- token for ex:unsubscribe.
function Executor:subscribe(fn)
    check_self(self, "ex:subscribe")
    if type(fn) ~= "function" then error("ex:subscribe: fn must be a function", 2) end
    self._subs[#self._subs + 1] = fn
    return fn
end


--- Stops a subscription; returns whether it was there.
function Executor:unsubscribe(token)
    check_self(self, "ex:unsubscribe")
    local subs = self._subs
    for i = #subs, 1, -1 do
        if subs[i] == token then
            table.remove(subs, i)
            return true
        end
    end
    return false
end


-- The slow sweep (runner.sweep) runs while the executor has a checkpoint
-- hook (a journal adds one) and checkpoint_after is not 0: one timer,
-- nothing on a task's path.
local function update_sweep(self)
    local want = self._rt.ev.checkpoint ~= nil and self._checkpoint_after > 0
        and not self._E.closed()
    if want and not self._sweep then
        local after, rt = self._checkpoint_after, self._rt
        self._sweep = core.timer(self._ud, math.min(SWEEP_EVERY, after), function()
            runner.sweep(rt, after)
        end)
    elseif not want and self._sweep then
        self._sweep:close()
        self._sweep = nil
    end
end


--- Attaches fn to a lifecycle event of every job of this executor:
-- context_start(id, input), task_start(id, task, attempt, map_index),
-- task_end(id, task, attempt, output, rec, map_index, from: "cache" or
-- "restore" when the body did not run), retry(id, task,
-- attempt, rec, delay), context_end(id, status, value), checkpoint(id,
-- task, output). Hooks run on the loop thread; an error in one is
-- reported once and never fails the job. Returns fn (for ex:off).
-- Hooks on task_start or task_end make every task take the general path
-- (about 100 ns more a task).
-- @raise on an unknown event or a fn that is not a function
function Executor:on(event, fn)
    check_self(self, "ex:on")
    if not pipeline.EVENTS[event] then error("ex:on: unknown event '" .. tostring(event) .. "'", 2) end
    if type(fn) ~= "function" then error("ex:on: the hook must be a function", 2) end
    local ev = self._rt.ev
    local list = ev[event] or {}
    list[#list + 1] = fn
    ev[event] = list
    runner.update_flags(self._rt)
    if event == "checkpoint" then update_sweep(self) end
    return fn
end


--- Removes a hook added with ex:on; returns whether it was there.
function Executor:off(event, fn)
    check_self(self, "ex:off")
    local ev = self._rt.ev
    local list = ev[event]
    if not list then return false end
    for i = #list, 1, -1 do
        if list[i] == fn then
            table.remove(list, i)
            if #list == 0 then ev[event] = nil end
            runner.update_flags(self._rt)
            if event == "checkpoint" then update_sweep(self) end
            return true
        end
    end
    return false
end


--- Calls fn(id) once job id finished (at once when its result is kept
-- already). For servers (long-polls); fn runs on the loop thread and must
-- not wait. Returns a token for ex:unwatch (nil when fn already ran).
function Executor:watch(id, fn)
    check_self(self, "ex:watch")
    if self:finished(id) then
        fn(id)
        return nil
    end
    add_waiter(self, id, fn)
    return fn
end


--- Removes a watcher before it ran (a long-poll whose wait expired or
-- whose client left): without it, it would stay until the job ends.
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


--- How many watchers wait for jobs (long-polls, tasks in ex:result).
function Executor:watchers()
    local n = 0
    for _, w in pairs(self._waiters) do n = n + #w end
    return n
end


--- Calls fn(id) for each id whose kept result is evicted (too old, or
-- beyond max_results). Returns a token for ex:off_evict.
function Executor:on_evict(fn)
    check_self(self, "ex:on_evict")
    if not self._store then return nil end
    return self._store:on_evict(fn)
end


function Executor:off_evict(token)
    check_self(self, "ex:off_evict")
    return self._store ~= nil and self._store:off_evict(token)
end


-- ===== THE LOOP =====

--- The loop handle, for tide.core functions that attach to an
-- executor's loop (core.http_listen, core.pool_new).
function Executor:loop()
    return self._ud
end


--- A repeating timer on this executor's loop: fn() every `seconds`.
-- Returns a handle with :close(). It does not keep ex:run() going.
function Executor:timer(seconds, fn)
    check_self(self, "ex:timer")
    return core.timer(self._ud, seconds, fn)
end


--- A signal watcher on this executor's loop: fn(signum) on each signal.
-- For SIGINT and SIGTERM a second signal ends the process at once
-- (130/143). Returns a handle with :close().
function Executor:signal(signum, fn)
    check_self(self, "ex:signal")
    return core.signal(self._ud, signum, fn)
end


--- A chunked reader of a file (or stdin when path is nil) on this
-- executor's loop: fn(chunk) per chunk, fn(nil, err|nil) at the end.
-- With max_line (bytes) it reads lines instead, kept in C and taken
-- decoded (:take(); see src/lua/lreader.c for the protocol).
-- Returns the reader (:pause(), :resume(), :close()), or nil, rec.
function Executor:reader(path, fn, max_line)
    check_self(self, "ex:reader")
    local r, err, code = core.reader(self._ud, path, fn, max_line)
    if not r then return errors.fail(code or "EIO", tostring(err)) end
    return r
end


--- Runs the loop until every submitted job finished.
-- @raise when a runner failed inside tide, or a subscriber or watcher
--   failed (their errors are on stderr): results may have been lost
function Executor:run()
    check_self(self, "ex:run")
    local before, hooks_before = self._E.stats().internal_errors, self._hook_errors
    self._E.run()
    local n = self._E.stats().internal_errors - before
    if n > 0 then
        error("tide: " .. n .. " internal error(s) in the runner (tracebacks above); "
              .. "the jobs they held did not finish", 2)
    end
    n = self._hook_errors - hooks_before
    if n > 0 then
        error("tide: " .. n .. " result subscriber or watcher call(s) failed (above); "
              .. "their results may be lost", 2)
    end
    return true
end


--- Runs one turn of the loop, waiting at most `seconds` for something to
-- happen (I/O, a timer, a finished job): for code that waits on this loop
-- for an event of its own (the Redis executor's replies). Returns whether
-- jobs are left.
function Executor:turn(seconds)
    check_self(self, "ex:turn")
    if type(seconds) ~= "number" or seconds < 0 then
        error("ex:turn: seconds must be a number >= 0", 2)
    end
    return self._E.turn(seconds)
end


--- This executor's own fd for a host loop: readable when its loop has
-- something to do (I/O, a finished sync job, a submit or cancel from
-- outside the loop). tide.fd() covers every executor at once.
function Executor:fd()
    check_self(self, "ex:fd")
    return (self._E.backend())
end


--- How long a host may wait on ex:fd() before calling ex:step(): seconds,
-- 0 when work is ready, nil when only I/O can wake this executor.
function Executor:timeout()
    check_self(self, "ex:timeout")
    local _, ms = self._E.backend()
    if ms < 0 then return nil end
    return ms / 1000
end


--- Runs what is ready without blocking; returns the number of jobs not
-- finished.
function Executor:step()
    check_self(self, "ex:step")
    return self._E.step()
end


--- Runs the ready work now when called from a callback of the loop
-- ex:run (or step, turn) runs, outside a task: what the loop would run at
-- its next turn (for servers answering in the same callback). Elsewhere it
-- does nothing. Returns whether it ran.
function Executor:drain_now()
    check_self(self, "ex:drain_now")
    return self._E.drain_now()
end


--- Counters for tests and progress: live, active, queued, timers, slots,
-- attempts, runners; held (slots whose values Lua keeps); for sync
-- tasks: workers (threads alive) and workers_replaced (stand-ins started
-- for workers stuck in timed-out bodies); cache_hits and cache_misses
-- (attempts of cached tasks answered by the cache, and run).
function Executor:stats()
    local s = self._E.stats()
    s.held = runner.held(self._rt)
    if self._pool_ud then
        local ps = self._pool_ud:stats()
        s.workers, s.workers_replaced = ps.threads, ps.replaced
    else
        s.workers, s.workers_replaced = 0, 0
    end
    s.cache_hits, s.cache_misses = self._rt.cache_hits, self._rt.cache_misses
    return s
end


--- A limiter's counters in this executor: running, waiting, started
-- (nil when no task of this executor named it yet).
function Executor:limiter_stats(name)
    local id = self._rt.limiter_ids[name]
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
    local att = self._rt.attached[p]
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
    if self._sweep then
        self._sweep:close()
        self._sweep = nil
    end
    if self._pool_ud then
        self._pool_ud:close() -- joins idle workers, leaves busy ones
        self._pool_ud = nil
    end
    if self._cache then
        -- Commits the entries still queued, so the next process finds
        -- them.
        self._cache:close()
        self._cache = nil
        self._rt.cache = nil
    end
    hub.remove(self)
end

return M
