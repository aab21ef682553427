--- tide: a workflow engine whose pipelines are Lua scripts.
-- `local tide = require "tide"`; see README.md for a tour and docs/api.md
-- for the reference.
local core = require "tide.core"
local pipeline = require "tide.pipeline"
local executor = require "tide.executor"
local errors = require "tide.errors"

local type, error, pcall, tostring, setmetatable = type, error, pcall, tostring, setmetatable

local M = { _VERSION = core.version, version = core.version }

M.pipeline = pipeline.new
M.limiter = pipeline.limiter
-- The parameters and arguments of the pipeline file loaded last (see
-- docs/api.md#parameters): empty until a load, or filled by an embedding
-- host before it declares parameters outside a file.
M.params = {}
M.args = {}


--- Loads a pipeline file (see pipeline.load); opts.params (name -> value)
-- and opts.args (a list of strings) are what the file sees as
-- tide.params and tide.args while it loads.
-- @return the pipeline, or nil and a message
-- @raise on bad opts
function M.pipeline_file(path, opts)
    if type(path) ~= "string" then
        error("tide.pipeline_file: path must be a string, got " .. type(path), 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("tide.pipeline_file: options must be a table, got " .. type(opts), 2)
    end
    opts = opts or {}
    for k in pairs(opts) do
        if k ~= "params" and k ~= "args" then
            error("tide.pipeline_file: unknown option '" .. tostring(k) .. "' (params and args)", 2)
        end
    end
    if opts.params ~= nil and type(opts.params) ~= "table" then
        error("tide.pipeline_file: params must be a table of name = value, got " .. type(opts.params), 2)
    end
    if opts.args ~= nil then
        if type(opts.args) ~= "table" then
            error("tide.pipeline_file: args must be a list of strings, got " .. type(opts.args), 2)
        end
        for i, a in ipairs(opts.args) do
            if type(a) ~= "string" then
                error("tide.pipeline_file: args[" .. i .. "] must be a string, got " .. type(a), 2)
            end
        end
    end
    local p, err = pipeline.load(path, nil, { params = opts.params, args = opts.args,
                                              from = "tide.pipeline_file's params" })
    return p, err
end
M.executor = executor.new
M.sleep = core.sleep
M.exec = require("tide.exec").exec
M.serve = function(...) return require("tide.serve").serve(...) end
-- tide.json: the codec with the API's failure rule, `nil, rec` (the C
-- codec, tide.core.json, returns nil, "EVALUE: message", "EVALUE").
local cjson = core.json
M.json = setmetatable({
    encode = function(v)
        local s, msg = cjson.encode(v)
        if s == nil then return nil, errors.new("EVALUE", (tostring(msg):gsub("^EVALUE: ", ""))) end
        return s
    end,
    decode = function(text)
        local v, msg = cjson.decode(text)
        if v == nil and msg ~= nil then
            return nil, errors.new("EVALUE", (tostring(msg):gsub("^EVALUE: ", "")))
        end
        return v
    end,
}, { __index = cjson })
M.is_error = errors.is
-- For hosts with a loop of their own: tide.fd() to poll, tide.timeout() to
-- bound the wait, tide.step() to run what is ready (see docs/embedding.md).
M.step = executor.step
M.fd = executor.fd
M.timeout = executor.timeout
M.error_mt = errors.mt

if os.getenv("TIDE_GC_STRESS") == "1" then
    -- Collect all the time, to shake out missing anchors: a Lua value that
    -- C still uses but nothing in Lua references is collected at once, so
    -- the specs fail instead of a rare crash later.
    collectgarbage("setpause", 0)
end


-- Values made by worker_local accessors in this Lua state (the loop's, or
-- a worker thread's), closed when the state closes.
local locals = {}
local closer = newproxy(true)
getmetatable(closer).__gc = function()
    for i = #locals, 1, -1 do
        local l = locals[i]
        if l.made and l.close then
            local ok, err = pcall(l.close, l.value)
            if not ok then io.stderr:write("tide: worker_local close failed: ", tostring(err), "\n") end
        end
    end
end
M._worker_locals_anchor = closer


--- Returns an accessor: `get()` gives this worker's value (the loop
-- thread and each worker thread have their own), made by `init()` on
-- first use and kept across tasks; `close(value)` runs when the worker's
-- Lua state closes. For sync tasks the pipeline must come from a file.
-- @raise when init or close is not a function
function M.worker_local(init, close)
    if type(init) ~= "function" then
        error("tide.worker_local: init must be a function, got " .. type(init), 2)
    end
    if close ~= nil and type(close) ~= "function" then
        error("tide.worker_local: close must be a function, got " .. type(close), 2)
    end
    local l = { close = close, made = false }
    locals[#locals + 1] = l
    return function()
        if not l.made then
            l.value = init()
            l.made = true
        end
        return l.value
    end
end


--- Runs every input through p and returns `outputs, errors`, both
-- indexed like inputs (an input's entry is in one of the two). Without
-- arguments, runs every open executor until all their jobs finished.
-- @param opts { concurrency = n, task_timeout = s }
function M.run(p, inputs, opts)
    if p == nil and inputs == nil then
        -- tide.run(): drive every executor until idle (embedding hosts).
        return executor.run_all()
    end
    if not pipeline.is(p) then
        error("tide.run: argument 1 must be a pipeline, got " .. type(p), 2)
    end
    if type(inputs) ~= "table" then
        error("tide.run: argument 2 must be an array of inputs, got " .. type(inputs), 2)
    end
    opts = opts or {}
    if type(opts) ~= "table" then
        error("tide.run: options must be a table, got " .. type(opts), 2)
    end
    local ok, err = pcall(p.compile, p)
    if not ok then error(err, 2) end
    return executor.run_inputs(p, inputs, opts)
end

if core.is_worker() then
    -- The worker flavour (sync tasks, docs/api.md; the threads:
    -- docs/architecture.md): a pipeline file loaded
    -- on a worker thread declares its tasks, but runs nothing itself.
    local function not_here(name)
        return function() error(name .. " is not available on a worker thread", 2) end
    end
    M.executor = not_here("tide.executor")
    M.run = not_here("tide.run")
    M.limiter = function(name) return name end
end

return M
