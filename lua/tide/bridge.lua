--- The sync-task bridge: the loop-side body of a `kind = "sync"` or
-- `kind = "native"` task ships its input to tide's worker threads
-- (src/lua/lpool.c), parks until the job is done and returns its output or
-- raises its error. Part of the executor.
local core = require "tide.core"
local errors = require "tide.errors"
local runner = require "tide.runner"

local new_error = errors.new
local error, tostring = error, tostring

local M = {}


--- The worker pool of executor ex, made on first use with ex's threads.
function M.pool(ex)
    local pool = ex._pool_ud
    if not pool then
        pool = core.pool_new(ex._ud, ex._threads, ex._worker_memory)
        ex._pool_ud = pool
    end
    return pool
end


--- The body the runner calls for sync or native task t of pipeline p in
-- executor ex. Worker states find the task by key: the pipeline's file
-- (loaded again in each worker), the native symbol, or bytecode of a body
-- declared without a file, which cannot carry upvalues (refused here).
-- @raise when such a body uses upvalues
function M.body(ex, p, t)
    local key, code
    if t.kind == "native" then
        key, code = "native:" .. t.native.path .. ":" .. t.native.symbol, t.native.fn
    elseif p._file then
        key = "file:" .. (p._file_key or p._file)
    else
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
    local timeout = t.timeout or ex._task_timeout
    local pool_wait, pool_result = core.pool_wait, core.pool_result
    return function(input)
        local job, msg, code2 = M.pool(ex):submit(key, name, code, input, timeout)
        if not job then error(new_error(code2, msg), 0) end
        pool_wait(job)
        local ok, res, tb, ecode, logs = pool_result(job)
        if logs then M.keep_logs(ex, logs) end
        if ok then return res end
        error(new_error(ecode, res, nil, nil, tb), 0)
    end
end


--- Keeps the lines a sync body printed on its worker thread (they were
-- written to stderr there, as they were printed) in the log of the job
-- whose attempt is running now: { {time, text, length}, ..., dropped = n }
-- from src/lua/lpool.c.
function M.keep_logs(ex, logs)
    local slot, g, attempt = ex._E.current()
    if not slot then return end
    local rt = ex._rt
    if logs.dropped and logs.dropped > 0 then
        runner.keep_log(rt, slot, g, attempt, "[" .. logs.dropped .. " earlier lines of this attempt "
                        .. "were not kept]", logs[1] and logs[1][1])
    end
    for i = 1, #logs do
        local l = logs[i]
        runner.keep_log(rt, slot, g, attempt, l[2], l[1], l[3])
    end
end

return M
