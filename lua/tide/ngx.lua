--- tide in nginx's Lua module (lua-nginx-module, OpenResty):
--
--   init_worker_by_lua_block { require("tide.ngx").init_worker { threads = 2 } }
--   content_by_lua_block {
--       local tn = require "tide.ngx"
--       local id = tn.submit(require "my_pipeline", { n = 1 })
--       local out, err = tn.wait(id, 5)      -- yields this request only
--   }
--
-- DESIGN
-- ------
-- One executor per worker process, made in init_worker: an executor made
-- in the master (init_by_lua) would be copied into every worker by fork,
-- without its threads. nginx cannot watch another fd from Lua, so the
-- executor is stepped by a recurring timer (ngx.timer.every, every
-- `interval` seconds, stepping for at most `budget` seconds while work is
-- ready), and a submit asks for a step at once (ngx.timer.at(0)). Task
-- bodies therefore run in a timer's context, never in the request that
-- submitted them: they may use ngx.log, ngx.now, shared dicts, but not
-- ngx.sleep, cosockets or anything else that yields to nginx: the
-- executor is made with bare_yield = "fail", so such a yield fails the
-- attempt with EVALUE ("foreign yield") instead of handing nginx's
-- coroutine to tide. Waiting is tide's (tide.sleep, tide.exec, sync
-- tasks).
--
-- A request waits for its job with wait(id, timeout): it parks on an
-- ngx.semaphore that the job's watcher (ex:watch, called when the job
-- finishes, in the timer's step) posts, so the worker serves other
-- requests meanwhile and nothing polls.
--
-- When the worker shuts down gracefully (nginx -s quit, a reload), the
-- timer's last (premature) run keeps stepping until the jobs in flight
-- finished or `shutdown_timeout` passed, then cancels what is left and
-- closes the executor.
local tide = require "tide"
local errors = require "tide.errors"

local type, pairs, tostring, error, pcall = type, pairs, tostring, error, pcall
local min = math.min

local M = {}

local OPTS = {
    threads = true, concurrency = true, task_timeout = true, retention = true,
    max_results = true, interval = true, budget = true, shutdown_timeout = true,
}

local st -- this worker's { ex, interval, budget, shutdown_timeout, kicked }


local function ngx_api(fname)
    local ngx = _G.ngx
    if type(ngx) ~= "table" or type(ngx.get_phase) ~= "function" then
        error(fname .. ": not running inside nginx's Lua module", 3)
    end
    return ngx
end


-- Steps while work is ready, for at most st.budget seconds: nginx's
-- other events wait meanwhile.
local function step_some(ngx)
    ngx.update_time()
    local t0 = ngx.now()
    repeat
        local ok, err = pcall(tide.step)
        if not ok then
            ngx.log(ngx.ERR, "tide.ngx: a step failed: ", tostring(err))
            return
        end
        ngx.update_time()
    until tide.timeout() ~= 0 or ngx.now() - t0 >= st.budget
end


-- The worker is exiting: finish what runs, within shutdown_timeout.
local function drain(ngx)
    local ex = st.ex
    local deadline = ngx.now() + st.shutdown_timeout
    while ex:stats().live > 0 and ngx.now() < deadline do
        step_some(ngx)
        if ex:stats().live == 0 then break end
        local t = tide.timeout()
        ngx.sleep(min(t or 0.01, 0.01, deadline - ngx.now()))
        ngx.update_time()
    end
    local left = ex:cancel_all()
    if left > 0 then
        ngx.log(ngx.WARN, "tide.ngx: ", left, " job(s) cancelled at worker exit")
        pcall(tide.step)
    end
    ex:close()
    st = nil
end


local function tick(premature)
    local ngx = _G.ngx
    if not st or st.draining then return end
    if premature then
        -- One drain, whichever timer runs first at exit.
        st.draining = true
        return drain(ngx)
    end
    step_some(ngx)
end


local function kicked(premature)
    if st then
        st.kicked = false
        tick(premature)
    end
end


--- Makes this worker's executor and starts stepping it. Call it from
-- init_worker_by_lua*, once per worker.
-- @param opts { threads = n (worker threads for sync tasks, default 1),
--   interval = s (the stepping timer, default 0.001), budget = s (most
--   time one timer run steps, default 0.002), shutdown_timeout = s (how
--   long a gracefully exiting worker lets jobs finish, default 10), and
--   concurrency, task_timeout, retention, max_results as tide.executor }
-- @return the executor, or nil, rec (EIO) when nginx refuses the timer
-- @raise outside nginx, outside init_worker (in the master), when called
--   twice, or on a bad option
function M.init_worker(opts)
    local ngx = ngx_api("tide.ngx.init_worker")
    local phase = ngx.get_phase()
    if phase ~= "init_worker" then
        error("tide.ngx.init_worker: call it from init_worker_by_lua (phase '" .. tostring(phase)
              .. "'): an executor made in the master process would be copied into each worker "
              .. "by fork, without its threads", 2)
    end
    if st then error("tide.ngx.init_worker: this worker has an executor already", 2) end
    opts = opts or {}
    if type(opts) ~= "table" then error("tide.ngx.init_worker: options must be a table, got " .. type(opts), 2) end
    for k in pairs(opts) do
        if not OPTS[k] then error("tide.ngx.init_worker: unknown option '" .. tostring(k) .. "'", 2) end
    end
    for _, k in pairs({ "interval", "budget", "shutdown_timeout" }) do
        local v = opts[k]
        if v ~= nil and (type(v) ~= "number" or not (v > 0)) then
            error("tide.ngx.init_worker: " .. k .. " must be a number of seconds > 0", 2)
        end
    end
    local ok, ex = pcall(tide.executor, {
        threads = opts.threads or 1, concurrency = opts.concurrency,
        task_timeout = opts.task_timeout, retention = opts.retention,
        max_results = opts.max_results, bare_yield = "fail",
    })
    if not ok then error((tostring(ex):gsub("^tide%.executor", "tide.ngx.init_worker")), 2) end
    st = {
        ex = ex, interval = opts.interval or 0.001, budget = opts.budget or 0.002,
        shutdown_timeout = opts.shutdown_timeout or 10, kicked = false,
    }
    local tok, err = ngx.timer.every(st.interval, tick)
    if not tok then
        ex:close()
        st = nil
        return errors.fail("EIO", "tide.ngx.init_worker: cannot start the stepping timer: " .. tostring(err))
    end
    return ex
end


--- This worker's executor (nil before init_worker).
function M.executor()
    return st and st.ex
end


--- Submits a job to this worker's executor (ex:submit) and asks for a
-- step at once rather than at the next tick. Returns its id.
-- @raise before init_worker, or as ex:submit
function M.submit(p, input, opts)
    local ngx = ngx_api("tide.ngx.submit")
    if not st then error("tide.ngx.submit: no executor in this worker (call init_worker first)", 2) end
    local ok, id = pcall(st.ex.submit, st.ex, p, input, opts)
    if not ok then error(id, 2) end
    if not st.kicked then
        -- At most one pending; the recurring timer steps anyway.
        st.kicked = ngx.timer.at(0, kicked) and true or false
    end
    return id
end


--- Waits for job id without blocking the worker (the request's coroutine
-- yields to nginx), up to `timeout` seconds (default 60). Returns the
-- output, or nil, rec: the job's error record, EAGAIN when the wait
-- expired (the job goes on), ENOENT for an unknown id. Call it where
-- nginx lets a request wait (rewrite, access, content, timers).
-- @raise before init_worker, or on a bad timeout
function M.wait(id, timeout)
    ngx_api("tide.ngx.wait")
    if not st then error("tide.ngx.wait: no executor in this worker (call init_worker first)", 2) end
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
        error("tide.ngx.wait: timeout must be a number of seconds >= 0", 2)
    end
    local ex = st.ex
    local out, rec = ex:result(id, 0)
    if out ~= nil or rec.code ~= "EAGAIN" then return out, rec end
    local sema = require("ngx.semaphore").new()
    local token = ex:watch(id, function() sema:post(1) end)
    local ok, err = sema:wait(timeout or 60)
    if not ok then
        ex:unwatch(id, token)
        return errors.fail("EAGAIN", "job '" .. tostring(id) .. "' has not finished yet (wait: "
                           .. tostring(err) .. ")")
    end
    return ex:result(id, 0)
end

return M
