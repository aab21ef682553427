--- The Lua half of the C embedding API (src/lua/lapi.c, tide.h): one
-- engine is one executor and one loaded pipeline. Functions return their
-- result, or nil, message, code name (what src/lua/lapi.c turns into a
-- TIDE_E* code and a message).
local pipeline = require "tide.pipeline"
local executor = require "tide.executor"
local errors = require "tide.errors"

local json = require("tide.core").json -- (nil, message) on failure, for lapi.c
local M = {}


function M.new(concurrency, task_timeout)
    return { ex = executor.new { concurrency = concurrency, task_timeout = task_timeout } }
end


function M.load(st, path, source)
    local p, err = pipeline.load(path, source)
    if not p then return nil, err, "EPIPELINE" end
    st.p = p
    return true
end


function M.submit(st, id, text)
    if not st.p then return nil, "no pipeline loaded", "EINVAL" end
    local v, err = json.decode(text)
    if v == nil and err then return nil, "input is not JSON: " .. err, "EVALUE" end
    if id and st.ex:has(id) then
        return nil, "duplicate id '" .. id .. "'", "EEXIST"
    end
    return st.ex:submit(st.p, v, { id = id })
end


function M.status(st, id)
    local s, rec = st.ex:status(id)
    if s == nil then return nil, rec.message, rec.code end
    return s
end


-- Returns "OK" and the output as JSON, or the error code and the error
-- record as JSON (nil for EAGAIN and ENOENT).
function M.result(st, id)
    local out, rec = st.ex:result(id, 0)
    if rec == nil then
        local text, err = json.encode(out == nil and json.null or out)
        if text then return "OK", text end
        rec = errors.new("EVALUE", "output cannot be encoded: " .. tostring(err))
    end
    local code = rec.code
    if code == "EAGAIN" or code == "ENOENT" then return code end
    return code, errors.json(rec, true)
end


function M.cancel(st, id)
    local ok, rec = st.ex:cancel(id)
    if ok then return true end
    return nil, tostring(rec), rec.code
end


function M.step(st)
    return st.ex:step()
end


-- The executor's fd for the host's poll (tide_engine_fd).
function M.fd(st)
    return st.ex:fd()
end


-- Milliseconds the host may wait, rounded up; nil: only the fd
-- (tide_engine_timeout, where nil becomes -1).
function M.timeout(st)
    local t = st.ex:timeout()
    return t and math.ceil(t * 1000) or nil
end


function M.run(st)
    st.ex:run()
    return true
end


function M.close(st)
    st.ex:cancel_all()
    st.ex:close()
end

return M
