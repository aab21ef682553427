--- The pipeline DSL: `tide.pipeline(name)` and `p:task(name, opts, fn)`.
-- Argument types are checked at the call (raising with the caller's
-- file:line); names, `after` references and cycles are checked when the
-- pipeline is compiled, on first use or at the end of loading its file.
local core = require "tide.core"

local type, pairs, ipairs, error, tostring = type, pairs, ipairs, error, tostring
local setmetatable, getinfo = setmetatable, debug.getinfo
local format = string.format

local M = {}
local Pipeline = {}
Pipeline.__index = Pipeline
M.Pipeline = Pipeline

local KNOWN_OPTS = {
    after = true, retry = true, timeout = true, map = true, gather = true,
    errors = true, kind = true, limit = true, route = true, when = true,
    batch = true, native = true, cache = true, checkpoint = true,
}

--- The lifecycle events hooks can be attached to (p:on, tide.executor{ on }).
M.EVENTS = {
    context_start = true, task_start = true, task_end = true, retry = true,
    context_end = true, checkpoint = true,
}



-- The engine counts attempts in 16 bits.
local MAX_RETRIES = 10000


local function where(level)
    local info = getinfo(level + 1, "Sl")
    if not info then return "?" end
    return info.short_src .. ":" .. (info.currentline or 0)
end


local function argerr(fname, msg)
    error(fname .. ": " .. msg, 3)
end


-- Limiters declared with tide.limiter, by name (one registry per Lua
-- state, shared by every pipeline and executor in it).
local limiters = {}
M.limiters = limiters


--- Declares (or redeclares) a limiter that tasks name with `limit = name`.
-- @param opts { rate = starts per second, burst = bucket size (default 1),
--   concurrency = attempts running at once }
-- @raise on bad arguments
function M.limiter(name, opts)
    if type(name) ~= "string" or name == "" then
        error("tide.limiter: name must be a non-empty string, got " .. type(name), 2)
    end
    if type(opts) ~= "table" then
        error("tide.limiter: options must be a table, got " .. type(opts), 2)
    end
    for k in pairs(opts) do
        if k ~= "rate" and k ~= "burst" and k ~= "concurrency" then
            error("tide.limiter: unknown option '" .. tostring(k) .. "'", 2)
        end
    end
    local rate, burst, conc = opts.rate, opts.burst, opts.concurrency
    if rate ~= nil and (type(rate) ~= "number" or not (rate > 0) or rate == math.huge) then
        error("tide.limiter: rate must be a number of starts per second > 0", 2)
    end
    if burst ~= nil and (type(burst) ~= "number" or not (burst >= 1) or burst == math.huge) then
        error("tide.limiter: burst must be a number >= 1", 2)
    end
    if burst ~= nil and rate == nil then
        error("tide.limiter: burst needs a rate", 2)
    end
    if conc ~= nil and (type(conc) ~= "number" or conc < 1 or conc ~= math.floor(conc)) then
        error("tide.limiter: concurrency must be a whole number >= 1", 2)
    end
    if rate == nil and conc == nil then
        error("tide.limiter: give a rate, a concurrency or both", 2)
    end
    limiters[name] = { name = name, rate = rate or 0, burst = burst or 1,
                       concurrency = conc or 0, where = where(2) }
    return name
end


--- Creates an empty pipeline.
-- @raise when name is not a non-empty string
function M.new(name)
    if type(name) ~= "string" or name == "" then
        error("tide.pipeline: name must be a non-empty string, got "
              .. type(name), 2)
    end
    -- _flags: the runner flags of the executors it is attached to (weak),
    -- which p:on turns to the general path when it adds a task hook.
    return setmetatable({ name = name, tasks = {}, hooks = {}, _where = where(2),
                          _flags = setmetatable({}, { __mode = "k" }) },
                        Pipeline)
end


function M.is(v)
    return type(v) == "table" and getmetatable(v) == Pipeline
end


-- How a bad value is shown after "got": numbers by value, others by type.
local function got(v)
    if type(v) == "number" then return tostring(v) end
    return type(v)
end


-- The nested option tables are checked by functions that return the
-- normalised table, or nil and a message; p:task raises it, so the error
-- names the user's file:line and the task (a raise from in here would
-- point into tide).
local function check_retry(r)
    if r == nil then return nil end
    if type(r) == "number" then
        if r < 0 or r ~= math.floor(r) or r > MAX_RETRIES then
            return nil, "retry must be a whole number from 0 to " .. MAX_RETRIES .. ", got " .. got(r)
        end
        return { times = r, interval = 0 }
    end
    if type(r) ~= "table" then
        return nil, "retry must be a number or a table, got " .. got(r)
    end
    for k in pairs(r) do
        if k ~= "times" and k ~= "interval" and k ~= "on" then
            return nil, "unknown retry option '" .. tostring(k) .. "' (retry takes times, interval and on)"
        end
    end
    local times = r.times or 1
    if type(times) ~= "number" or times < 0 or times ~= math.floor(times) or times > MAX_RETRIES then
        return nil, "retry.times must be a whole number from 0 to " .. MAX_RETRIES .. ", got " .. got(times)
    end
    local iv = r.interval or 0
    if type(iv) == "number" then
        if iv < 0 or iv ~= iv then return nil, "retry.interval must be >= 0, got " .. got(iv) end
    elseif type(iv) ~= "function" then
        return nil, "retry.interval must be a number or a function, got " .. got(iv)
    end
    if r.on ~= nil and type(r.on) ~= "function" then
        return nil, "retry.on must be a function, got " .. got(r.on)
    end
    return { times = times, interval = iv, on = r.on }
end


local function check_batch(batch, opts)
    if type(batch) ~= "table" then
        return nil, "batch must be a table { size = n, wait = seconds }, got " .. got(batch)
    end
    for k in pairs(batch) do
        if k ~= "size" and k ~= "wait" then
            return nil, "unknown batch option '" .. tostring(k) .. "' (batch takes size and wait)"
        end
    end
    local size, wait = batch.size, batch.wait or 0
    if type(size) ~= "number" or size < 1 or size ~= math.floor(size) then
        return nil, "batch.size must be a whole number >= 1, got " .. got(size)
    end
    if type(wait) ~= "number" or not (wait >= 0) or wait == math.huge then
        return nil, "batch.wait must be a number of seconds >= 0, got " .. got(wait)
    end
    for _, k in ipairs({ "map", "gather", "route", "when", "timeout" }) do
        if opts[k] then
            return nil, "batch cannot be combined with " .. k
        end
    end
    return { size = size, wait = wait }
end


-- `cache = true` or `cache = { ttl = seconds, key = function(input, ctx) }`
-- (docs/cache.md): the normalised table, nil for no cache, or nil and a
-- message.
local function check_cache(c)
    if c == nil or c == false then return nil end
    if c == true then return {} end
    if type(c) ~= "table" then
        return nil, "cache must be true or a table { ttl = seconds, key = function(input, ctx) }, got " .. got(c)
    end
    for k in pairs(c) do
        if k ~= "ttl" and k ~= "key" then
            return nil, "unknown cache option '" .. tostring(k) .. "' (cache takes ttl and key)"
        end
    end
    local ttl, key = c.ttl, c.key
    if ttl ~= nil and (type(ttl) ~= "number" or not (ttl > 0)) then
        return nil, "cache.ttl must be a number of seconds > 0, got " .. got(ttl)
    end
    if key ~= nil and type(key) ~= "function" then
        return nil, "cache.key must be a function(input, ctx) returning the key, got " .. got(key)
    end
    -- An infinite ttl is no ttl.
    if ttl == math.huge then ttl = nil end
    return { ttl = ttl, key = key, key_ctx = key ~= nil and getinfo(key, "u").nparams >= 2 }
end


--- Declares a task. `opts` may be omitted: `p:task(name, fn)`.
-- @return the pipeline, so declarations can chain
-- @raise on wrong argument types or unknown options
function Pipeline:task(name, opts, fn)
    local fname = "p:task"
    if getmetatable(self) ~= Pipeline then
        error("p:task: call it as p:task(...), with a colon", 2)
    end
    if fn == nil and type(opts) == "function" then opts, fn = {}, opts end
    if fn == nil and type(opts) == "table" and opts.kind == "native" then
        fn = function() end -- native tasks have no Lua body
    end
    if type(name) ~= "string" or name == "" then
        argerr(fname, "task name must be a non-empty string, got " .. type(name))
    end
    if opts == nil then opts = {} end
    if type(opts) ~= "table" then
        argerr(fname, "options for task '" .. name .. "' must be a table, got " .. type(opts))
    end
    if type(fn) ~= "function" then
        argerr(fname, "task '" .. name .. "' needs a function body, got " .. type(fn))
    end
    if self._graph then
        argerr(fname, "pipeline '" .. self.name .. "' is already compiled; "
               .. "declare every task before first use")
    end
    for k in pairs(opts) do
        if not KNOWN_OPTS[k] then
            argerr(fname, "task '" .. name .. "': unknown option '" .. tostring(k) .. "'")
        end
    end
    local after = opts.after
    if type(after) == "string" then
        after = { after }
    elseif after == nil then
        after = {}
    elseif type(after) == "table" then
        local n = #after
        for k in pairs(after) do
            if type(k) ~= "number" or k < 1 or k > n or k ~= math.floor(k) then
                argerr(fname, "task '" .. name .. "': after must be a list of names, got key '" .. tostring(k) .. "'")
            end
        end
        for i, a in ipairs(after) do
            if type(a) ~= "string" then
                argerr(fname, "task '" .. name .. "': after[" .. i .. "] must be a task name, got " .. type(a))
            end
        end
    else
        argerr(fname, "task '" .. name .. "': after must be a name or a list of names")
    end
    local timeout = opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0)) then
        argerr(fname, "task '" .. name .. "': timeout must be a number of seconds > 0")
    end
    for _, k in ipairs({ "map", "gather" }) do
        if opts[k] ~= nil and type(opts[k]) ~= "boolean" then
            argerr(fname, "task '" .. name .. "': " .. k .. " must be a boolean")
        end
    end
    local errors = opts.errors
    if errors ~= nil then
        if errors ~= "fail" and errors ~= "collect" then
            argerr(fname, "task '" .. name .. "': errors must be 'fail' or 'collect'")
        end
        if not opts.gather then
            argerr(fname, "task '" .. name .. "': errors applies to gather tasks only")
        end
    end
    if opts.limit ~= nil and (type(opts.limit) ~= "string" or opts.limit == "") then
        argerr(fname, "task '" .. name .. "': limit must be a limiter name")
    end
    if opts.route ~= nil and type(opts.route) ~= "boolean" then
        argerr(fname, "task '" .. name .. "': route must be a boolean")
    end
    if opts.when ~= nil and type(opts.when) ~= "function" then
        argerr(fname, "task '" .. name .. "': when must be a function(input, ctx)")
    end
    if opts.kind == "sync" or opts.kind == "native" then
        for _, k in ipairs({ "map", "gather", "route", "batch" }) do
            if opts[k] then
                argerr(fname, "task '" .. name .. "': kind '" .. opts.kind .. "' cannot be combined with " .. k)
            end
        end
        if opts.kind == "sync" and getinfo(fn, "u").nparams >= 2 then
            argerr(fname, "task '" .. name .. "': a sync task's body gets only its input (no ctx): "
                   .. "it runs on a worker thread")
        end
    end
    local batch, retry, bad
    if opts.batch ~= nil then
        batch, bad = check_batch(opts.batch, opts)
        if not batch then argerr(fname, "task '" .. name .. "': " .. bad) end
    end
    retry, bad = check_retry(opts.retry)
    if bad then argerr(fname, "task '" .. name .. "': " .. bad) end
    local cache
    cache, bad = check_cache(opts.cache)
    if bad then argerr(fname, "task '" .. name .. "': " .. bad) end
    if cache and batch then
        -- A batch body's call covers several inputs at once: there is no
        -- one input to key an output by.
        argerr(fname, "task '" .. name .. "': cache cannot be combined with batch")
    end
    if opts.checkpoint ~= nil and type(opts.checkpoint) ~= "boolean" then
        argerr(fname, "task '" .. name .. "': checkpoint must be a boolean")
    end
    if opts.checkpoint and (opts.route or opts.batch) then
        argerr(fname, "task '" .. name .. "': checkpoint cannot be combined with "
               .. (opts.route and "route" or "batch"))
    end
    local kind = opts.kind or "async"
    if kind ~= "async" and kind ~= "exec" and kind ~= "sync" and kind ~= "native" then
        argerr(fname, "task '" .. name .. "': unknown kind '" .. tostring(kind) .. "'")
    end
    local native
    if kind == "native" then
        local spec = opts.native
        if type(spec) ~= "string" or not spec:match("^.+:[%a_][%w_]*$") then
            argerr(fname, "task '" .. name .. "': native must be \"path/lib.so:symbol\"")
        end
        local path, sym = spec:match("^(.+):([%a_][%w_]*)$")
        if path:sub(1, 1) ~= "/" then
            -- Relative to the file that declares the task.
            local src = getinfo(2, "S").source
            local dir = src:sub(1, 1) == "@" and src:sub(2):match("^(.*)/[^/]*$") or "."
            path = dir .. "/" .. path
        end
        native = { path = path, symbol = sym }
    elseif opts.native ~= nil then
        argerr(fname, "task '" .. name .. "': native needs kind = \"native\"")
    end
    local t = {
        name = name, after = after, fn = fn, timeout = timeout,
        retry = retry, map = opts.map or false,
        gather = opts.gather or false, errors = errors or "fail", kind = kind,
        limit = opts.limit, route = opts.route or false, when = opts.when,
        batch = batch, native = native, cache = cache, checkpoint = opts.checkpoint or false,
        where = where(2), nparams = getinfo(fn, "u").nparams,
    }
    self.tasks[#self.tasks + 1] = t
    return self
end


--- Attaches fn to a lifecycle event of this pipeline's contexts (see
-- M.EVENTS and docs/api.md): it runs on the loop thread, and an error in
-- it is reported once and never fails the job.
-- @raise on an unknown event or a fn that is not a function
function Pipeline:on(event, fn)
    if getmetatable(self) ~= Pipeline then
        error("p:on: call it as p:on(...), with a colon", 2)
    end
    if not M.EVENTS[event] then
        error("p:on: unknown event '" .. tostring(event) .. "' (context_start, task_start, task_end, "
              .. "retry, context_end, checkpoint)", 2)
    end
    if type(fn) ~= "function" then
        error("p:on: the hook of '" .. event .. "' must be a function, got " .. type(fn), 2)
    end
    local list = self.hooks[event]
    if not list then
        list = {}
        self.hooks[event] = list
    end
    list[#list + 1] = fn
    if event == "task_start" or event == "task_end" then
        -- Executors already running this pipeline stop taking the hot
        -- path, which fires no task events.
        for flags in pairs(self._flags) do flags.tasks, flags.general = true, true end
    end
    return self
end


--- Sets functions that run once per Lua state that runs this pipeline:
-- setup() before its first job there (the loop's state, and each worker
-- thread's for sync tasks), teardown() when that state closes.
-- @raise when they are not functions
function Pipeline:setup(setup, teardown)
    if getmetatable(self) ~= Pipeline then
        error("p:setup: call it as p:setup(...), with a colon", 2)
    end
    if type(setup) ~= "function" then
        error("p:setup: setup must be a function, got " .. type(setup), 2)
    end
    if teardown ~= nil and type(teardown) ~= "function" then
        error("p:setup: teardown must be a function, got " .. type(teardown), 2)
    end
    self._setup = { setup = setup, teardown = teardown }
    return self
end


-- The ways a schedule can treat the fires it missed while no server ran.
local CATCHUP = { none = true, all = true, latest = true }
local SCHEDULE_OPTS = { name = true, tz = true, catchup = true }


--- Declares a schedule: while `tide serve` runs, fn(now, fire) is called
-- at each fire time of the cron expression and what it returns is
-- submitted as an input, under the id "<name>@<ISO time in UTC>"; nil
-- skips that fire. `now` is the fire time (Unix seconds); `fire` holds
-- name, time, iso and late (true for a fire made up after downtime).
-- @param opts { name = "schedule<k>", tz = "UTC" | "+HH:MM" | "Area/City",
--   catchup = "none" | "all" | "latest" }
-- @raise (at the caller's line) on a bad expression, option or function
function Pipeline:schedule(expr, opts, fn)
    if getmetatable(self) ~= Pipeline then
        error("p:schedule: call it as p:schedule(...), with a colon", 2)
    end
    if fn == nil and type(opts) == "function" then opts, fn = nil, opts end
    local cron = require "tide.cron"
    local c, err = cron.parse(expr)
    if not c then error("p:schedule: " .. err, 2) end
    if opts ~= nil and type(opts) ~= "table" then
        error("p:schedule: options must be a table, got " .. type(opts), 2)
    end
    opts = opts or {}
    for k in pairs(opts) do
        if not SCHEDULE_OPTS[k] then
            error("p:schedule: unknown option '" .. tostring(k) .. "' (name, tz, catchup)", 2)
        end
    end
    if type(fn) ~= "function" then
        error("p:schedule: the last argument must be a function(now) that returns the input, got "
              .. type(fn), 2)
    end
    local zone
    zone, err = cron.zone(opts.tz)
    if not zone then error("p:schedule: " .. err, 2) end
    local catchup = opts.catchup or "none"
    if not CATCHUP[catchup] then
        error("p:schedule: catchup must be \"none\", \"all\" or \"latest\", got " .. tostring(catchup), 2)
    end
    local list = rawget(self, "schedules")
    if not list then
        list = {}
        self.schedules = list
    end
    local name = opts.name
    if name == nil then name = "schedule" .. (#list + 1) end
    -- The name starts the ids of the jobs, which go in URL paths.
    if type(name) ~= "string" or not name:match("^[%w_][%w_.%-]*$") then
        error("p:schedule: name must be a string of letters, digits, '_', '.' and '-', got "
              .. tostring(name), 2)
    end
    for _, s in ipairs(list) do
        if s.name == name then
            error("p:schedule: schedule '" .. name .. "' is declared twice (first at " .. s.where .. ")", 2)
        end
    end
    list[#list + 1] = { name = name, expr = expr, cron = c, zone = zone, tz = opts.tz or "UTC",
                        catchup = catchup, fn = fn, where = where(2) }
    return self
end


--- Compiles the pipeline once: checks names, `after` and cycles, and
-- computes the order. Returns the pipeline.
-- @raise with file:line of the task at fault
function Pipeline:compile()
    if self._graph then return self end
    local specs = {}
    for i, t in ipairs(self.tasks) do
        specs[i] = { name = t.name, after = t.after, map = t.map, gather = t.gather }
    end
    if #specs == 0 then
        error(format("%s: pipeline '%s' has no tasks", self._where, self.name), 0)
    end
    local g, msg, bad = core.compile(specs)
    if not g then
        local loc = bad and bad > 0 and self.tasks[bad].where or self._where
        if msg:match("^duplicate") then
            -- Name both declarations.
            local first
            for _, t in ipairs(self.tasks) do
                if t.name == self.tasks[bad].name then first = t break end
            end
            msg = msg:gsub(" %(also task #%d+%)", " (first declared at " .. first.where .. ")")
        end
        error(format("%s: pipeline '%s': %s", loc, self.name, msg), 0)
    end
    for _, t in ipairs(self.tasks) do
        if t.native and not t.native.fn then
            -- Loaded once per process; a missing library or symbol is a
            -- load error naming both.
            local fn, err = core.native_load(t.native.path, t.native.symbol)
            if not fn then
                error(format("%s: pipeline '%s': task '%s': %s", t.where, self.name, t.name, err), 0)
            end
            t.native.fn = fn
        end
        if t.limit and not limiters[t.limit] then
            error(format("%s: pipeline '%s': task '%s' names unknown limiter '%s' "
                         .. "(declare it with tide.limiter)", t.where, self.name, t.name, t.limit), 0)
        end
    end
    self._graph = g
    local info = core.graph_info(g)
    local byname = {}
    for i, t in ipairs(self.tasks) do
        byname[t.name] = i
        t.index = i
        local gi = info[i]
        t.preds, t.succs, t.depth = gi.preds, gi.succs, gi.depth
        t.region, t.gather_of = gi.region, gi.gather_of
    end
    self.byname = byname
    for _, t in ipairs(self.tasks) do
        if t.route then
            if #t.succs == 0 then
                error(format("%s: pipeline '%s': router '%s' has no successors to choose from",
                             t.where, self.name, t.name), 0)
            end
            self.has_routes = true
        end
    end
    -- Sinks and, per map, the sinks inside its region that no gather
    -- collects: their values reach the parent as arrays.
    -- sink_gate[s] is the task whose bypass bypasses sink s in a root
    -- context: the outermost map enclosing s, or s itself.
    local sinks, inner, gate = {}, {}, {}
    for i, t in ipairs(self.tasks) do
        if #t.succs == 0 then
            sinks[#sinks + 1] = i
            gate[i] = i
            -- Walk up the chain of maps that enclose this sink.
            local r = t.region
            while r ~= 0 do
                inner[r] = inner[r] or {}
                inner[r][#inner[r] + 1] = i
                gate[i] = r
                r = self.tasks[r].region
            end
        end
    end
    self.sinks, self.inner_sinks, self.sink_gate = sinks, inner, gate
    local names = {}
    for i, s in ipairs(sinks) do names[i] = self.tasks[s].name end
    self.sink_names = names
    return self
end


-- ===== Parameters =====
-- A pipeline file declares its parameters with p:param while it runs, and
-- gets their values at once (the file may shape its DAG by them). The
-- values come from the load in progress (see M.load: the command line's
-- --param, --param-file and `-- args`, or tide.pipeline_file's options),
-- or, outside a file load, from the table tide.params that an embedding
-- host fills.

local PARAM_TYPES = { string = true, number = true, boolean = true, table = true }

-- The file load in progress, if any: { settings, values, declared, missing }.
local loading = nil


-- A number written the JSON way (no hex, no inf or nan, no spaces): the
-- text of a --param must mean one thing only.
local function parse_number(text)
    if not (text:match("^%-?%d+%.?%d*[eE][%+%-]?%d+$") or text:match("^%-?%d+%.?%d*$")
            or text:match("^%-?%.%d+[eE][%+%-]?%d+$") or text:match("^%-?%.%d+$")) then
        return nil
    end
    local v = tonumber(text)
    if v == nil or v ~= v or v == math.huge or v == -math.huge then return nil end
    return v
end


-- The value of parameter `name` given as command-line text, read as type
-- ty (nil: a boolean or a number when the text is one, else the text).
-- Returns the value, or nil and why not.
local function from_text(text, ty)
    if ty == "string" then return text end
    if ty == "boolean" or ty == nil then
        if text == "true" then return true end
        if text == "false" then return false end
        if ty == "boolean" then return nil, "expected a boolean (true or false)" end
    end
    if ty == "number" or ty == nil then
        local v = parse_number(text)
        if v ~= nil then return v end
        if ty == "number" then return nil, "expected a number" end
        return text
    end
    -- A table: JSON text.
    local v, err = core.json.decode(text)
    if type(v) ~= "table" then
        return nil, "expected a JSON object or array" .. (v == nil and err and (": " .. tostring(err)) or "")
    end
    return v
end


-- Whether value v is of the declared type ty (nil: any type). Numbers
-- above 2^53 decoded from JSON are int64 cdata: still numbers.
local function of_type(v, ty)
    if ty == nil then return true end
    local t = type(v)
    if ty == "number" and t == "cdata" then return true end
    return t == ty
end


-- How a value is shown in messages.
local function show(v)
    if type(v) == "string" then return format("%q", v) end
    if type(v) == "table" then return "a table" end
    return tostring(v)
end


-- Raised while a file loads when a given value does not fit a parameter:
-- M.load reports the message alone (it is the caller's value at fault,
-- not a line of the file).
local ParamError = {}
ParamError.__index = ParamError
ParamError.__tostring = function(e) return e.message end


--- Declares a parameter of the pipeline and returns its value: the one
-- given for this load (--param, --param-file, tide.pipeline_file's
-- params), else `opts.default`. tide.params[name] holds it too.
-- @param opts { default = value, doc = "text", type = "string"|"number"|"boolean"|"table" }
--   the type is the default's when not given; without a default the
--   parameter is required.
-- @raise on a bad name or bad options; while a file loads, a given value
--   of the wrong type stops the load (M.load returns nil, message)
function Pipeline:param(name, opts)
    if getmetatable(self) ~= Pipeline then
        error("p:param: call it as p:param(...), with a colon", 2)
    end
    if type(name) ~= "string" or not name:match("^[%a_][%w_%.%-]*$") then
        error("p:param: name must be a string of letters, digits, '_', '.' and '-' that starts with a "
              .. "letter or '_', got " .. (type(name) == "string" and format("%q", name) or type(name)), 2)
    end
    if opts == nil then opts = {} end
    if type(opts) ~= "table" then
        error("p:param: options for parameter '" .. name .. "' must be a table, got " .. type(opts), 2)
    end
    for k in pairs(opts) do
        if k ~= "default" and k ~= "doc" and k ~= "type" then
            error("p:param: parameter '" .. name .. "': unknown option '" .. tostring(k)
                  .. "' (default, doc and type)", 2)
        end
    end
    local default, doc, ty = opts.default, opts.doc, opts.type
    if doc ~= nil and type(doc) ~= "string" then
        error("p:param: parameter '" .. name .. "': doc must be a string, got " .. type(doc), 2)
    end
    if ty ~= nil and not PARAM_TYPES[ty] then
        error("p:param: parameter '" .. name .. "': type must be \"string\", \"number\", \"boolean\" "
              .. "or \"table\", got " .. show(ty), 2)
    end
    if default ~= nil and not PARAM_TYPES[type(default)] then
        error("p:param: parameter '" .. name .. "': a default must be a string, number, boolean or "
              .. "table, got " .. type(default), 2)
    end
    if default ~= nil and ty ~= nil and type(default) ~= ty then
        error("p:param: parameter '" .. name .. "': the default is a " .. type(default)
              .. ", not a " .. ty, 2)
    end
    ty = ty or (default ~= nil and type(default) or nil)
    if self._graph then
        error("p:param: pipeline '" .. self.name .. "' is already compiled; declare its parameters "
              .. "before first use", 2)
    end
    local params = rawget(self, "params")
    if not params then
        params = {}
        self.params, self.param_decls = params, {}
    end
    for _, d in ipairs(self.param_decls) do
        if d.name == name then
            error("p:param: parameter '" .. name .. "' is declared twice (first at " .. d.where .. ")", 2)
        end
    end
    local decl = { name = name, doc = doc, default = default, type = ty, where = where(2),
                   required = default == nil }
    self.param_decls[#self.param_decls + 1] = decl
    local v
    if loading then
        local st = loading.settings
        local text = st.texts and st.texts[name]
        if text ~= nil and not st.help then
            local why
            v, why = from_text(text, ty)
            if v == nil then
                error(setmetatable({ message = format("--param %s=%s: %s", name, text, why) }, ParamError))
            end
        elseif st.params and st.params[name] ~= nil and not st.help then
            v = st.params[name]
            if not of_type(v, ty) then
                error(setmetatable({ message = format("parameter '%s' from %s: expected a %s, got %s",
                                                      name, st.from or "params", ty, show(v)) },
                                   ParamError))
            end
        else
            v = default
        end
        loading.declared[#loading.declared + 1] = decl
        if v == nil and not st.help then loading.missing[#loading.missing + 1] = decl end
        loading.values[name] = v
    else
        -- An embedding host gives values by filling tide.params first.
        local host = require("tide").params
        v = host[name]
        if v ~= nil and not of_type(v, ty) then
            error(format("p:param: tide.params.%s: expected a %s, got %s", name, ty, show(v)), 2)
        end
        if v == nil then v = default end
        if v == nil then
            error("p:param: parameter '" .. name .. "' is required (it has no default): set tide.params."
                  .. name .. " before declaring it, or load the file with tide.pipeline_file(path, "
                  .. "{ params = ... })", 2)
        end
        host[name] = v
    end
    params[name] = v
    return v
end


-- The message for the required parameters a load did not get.
local function missing_message(ld)
    local parts = {}
    for i, d in ipairs(ld.missing) do
        parts[i] = d.name .. (d.doc and (" (" .. d.doc .. ")") or "")
    end
    return format("missing required parameter%s: %s (give --param NAME=VALUE or --param-file FILE)",
                  #parts > 1 and "s" or "", table.concat(parts, ", "))
end


-- The key worker threads load this file by (see bridge.lua and
-- M.load_cached): the path alone when the load had no settings, else the
-- settings as JSON in front of it, so a worker sees the same parameters.
-- A pinned load (settings.source, see M.load) carries the file's text in
-- the key, so a worker compiles that very version whatever the file holds
-- by then, and each version has a key, and a worker cache entry, of its
-- own.
local function file_key(path, settings)
    local plain = next(settings.params or {}) == nil and next(settings.texts or {}) == nil
                  and #(settings.args or {}) == 0 and settings.source == nil
    if plain and path:sub(1, 1) ~= "\1" then return path end
    local text, err = core.json.encode({ params = settings.params or {}, texts = settings.texts or {},
                                         args = settings.args or {}, from = settings.from,
                                         source = settings.source })
    if not text then return nil, "parameters must be JSON values: " .. tostring(err) end
    return "\1" .. #text .. ":" .. text .. path
end


--- Loads a pipeline from a Lua chunk (a file's, or source text given as
-- `source`): the chunk must return a pipeline, which is compiled. Modules
-- next to the file can be required.
-- `settings` (all optional): { params = { name = value }, texts = { name =
-- command-line text }, args = { strings }, from = where params came from
-- (for messages), help = true to only collect the declarations (no value
-- is checked, none is missing) }. While the chunk runs, tide.params is the
-- table p:param fills and tide.args the list of args; both stay set after
-- a load that succeeded.
-- settings.pin = true reads the file's text once and pins the pipeline to
-- it (settings.source then holds the text): worker threads compile the
-- same text rather than reading the file again, and M.version(p) is its
-- hash. tide serve pins, so that a reload (M.reload) never makes a sync
-- task of a running job load the file's newer version.
-- @return the pipeline, or nil and a message naming file:line (or the
--   parameter at fault); the parameters declared come third either way
function M.load(path, source, settings)
    settings = settings or {}
    if settings.pin and not settings.source then
        local f, ferr = io.open(path, "rb")
        if not f then return nil, tostring(ferr), {} end
        local text = f:read("*a")
        f:close()
        if not text then return nil, path .. ": cannot be read", {} end
        local copy = {}
        for k, v in pairs(settings) do copy[k] = v end
        copy.pin, copy.source = nil, text
        settings = copy
    end
    if settings.source then source = settings.source end
    local pinned = settings.source ~= nil
    local chunk, err
    if source and not pinned then
        chunk, err = loadstring(source, "=" .. path)
    else
        -- Modules next to the file can be required (the directory is added
        -- once: a server that reloads loads the same file many times).
        local dir = (path:match("^(.*)/[^/]*$") or ".") .. "/?.lua;"
        if package.path:sub(1, #dir) ~= dir then package.path = dir .. package.path end
        if pinned then
            chunk, err = loadstring(source, "@" .. path)
        else
            chunk, err = loadfile(path)
        end
    end
    local ld = { settings = settings, values = {}, declared = {}, missing = {} }
    if not chunk then return nil, err, ld.declared end
    local key, kerr = file_key(path, settings)
    if not key then return nil, kerr, ld.declared end
    local tide = require "tide"
    local old_params, old_args = tide.params, tide.args
    local args = {}
    for i, a in ipairs(settings.args or {}) do args[i] = a end
    tide.params, tide.args = ld.values, args
    local outer = loading
    loading = ld
    local ok, p = pcall(chunk)
    loading = outer
    local function fail(msg)
        tide.params, tide.args = old_params, old_args
        return nil, msg, ld.declared
    end
    if not ok then
        if getmetatable(p) == ParamError then return fail(p.message) end
        -- A required parameter that is missing is the likely cause of an
        -- error after its declaration (the file used its nil value).
        if #ld.missing > 0 then return fail(missing_message(ld)) end
        return fail(tostring(p))
    end
    if #ld.missing > 0 then return fail(missing_message(ld)) end
    if not M.is(p) then
        return fail(path .. ": the chunk must return a pipeline (return p), got " .. type(p))
    end
    if not settings.help then
        local known, names = {}, {}
        for _, d in ipairs(ld.declared) do
            known[d.name] = true
            names[#names + 1] = d.name
        end
        for _, given in ipairs({ settings.texts or {}, settings.params or {} }) do
            local unknown = {}
            for name in pairs(given) do
                if not known[name] then unknown[#unknown + 1] = tostring(name) end
            end
            if #unknown > 0 then
                table.sort(unknown)
                return fail(format("unknown parameter%s %s: pipeline '%s' declares %s", #unknown > 1 and "s" or "",
                                   "'" .. table.concat(unknown, "', '") .. "'", p.name,
                                   #names > 0 and table.concat(names, ", ") or "no parameters"))
            end
        end
    end
    local cok, cerr = pcall(p.compile, p)
    if not cok then return fail(tostring(cerr)) end
    if not rawget(p, "params") then p.params, p.param_decls = {}, {} end
    p.args = args
    -- Worker threads load sync tasks from the same file, with the same
    -- parameters.
    if not source or pinned then p._file, p._file_key, p._settings = path, key, settings end
    if pinned then p._version = core.xxh128(source) end
    return p, nil, ld.declared
end


--- The version of pipeline p: the hash (core.xxh128) of the file text it
-- was compiled from, as the journal records it. Pins p first when it was
-- loaded from a file without settings.pin: its text is read now.
-- @return the version, or nil when p was not loaded from a file
function M.version(p)
    if not M.is(p) then error("pipeline.version: expects a pipeline, got " .. type(p), 2) end
    local v = rawget(p, "_version")
    if v or not rawget(p, "_file") then return v end
    local f = io.open(p._file, "rb")
    local text = f and f:read("*a")
    if f then f:close() end
    if not text then return nil end
    local settings = {}
    for k, x in pairs(p._settings or {}) do settings[k] = x end
    settings.source = text
    -- Only the key changes: the pipeline's bodies are those loaded before,
    -- which the text read now holds unless the file changed in between.
    local key = file_key(p._file, settings)
    if not key then return nil end
    p._file_key, p._settings, p._version = key, settings, core.xxh128(text)
    return p._version
end


--- Loads the file of pipeline p again, with the parameters and args p was
-- loaded with, pinned to the text read now (see M.load).
-- @return the new pipeline, or nil and a message (the file cannot be
--   read, does not load or does not compile)
-- @raise when p was not loaded from a file
function M.reload(p)
    if not M.is(p) or not rawget(p, "_file") then
        error("pipeline.reload: expects a pipeline loaded from a file", 2)
    end
    local settings = {}
    for k, v in pairs(p._settings or {}) do settings[k] = v end
    settings.source, settings.pin = nil, true
    local np, err = M.load(p._file, nil, settings)
    return np, err
end


-- Pipelines loaded from files by this Lua state, by path: a worker
-- thread loads a file once, whichever of its sync tasks it runs first.
local by_path = {}


--- The pipeline of file `key`, loaded once per Lua state (see M.load):
-- a path, or the settings of the load in front of it (see file_key).
function M.load_cached(key)
    local p = by_path[key]
    if p then return p end
    local path, settings = key, nil
    if key:sub(1, 1) == "\1" then
        local n, rest = key:match("^\1(%d+):(.*)$")
        n = tonumber(n)
        settings = core.json.decode(rest:sub(1, n))
        path = rest:sub(n + 1)
        settings.from = settings.from ~= core.json.null and settings.from or nil
    end
    local err
    p, err = M.load(path, settings and settings.source, settings)
    if not p then return nil, err end
    by_path[key] = p
    return p
end


-- The teardown functions of the setups that ran in this state, run when
-- the state closes (last set up, first torn down).
local teardowns = {}
local closer = newproxy(true)
getmetatable(closer).__gc = function()
    for i = #teardowns, 1, -1 do
        local ok, err = pcall(teardowns[i].fn)
        if not ok then
            io.stderr:write("tide: teardown of pipeline '", teardowns[i].name, "' failed: ", tostring(err), "\n")
        end
    end
end
M._teardown_anchor = closer


--- Runs p's setup function in this Lua state if it has not run here yet
-- (see Pipeline:setup).
-- @raise with the setup's error, naming the pipeline
function M.ensure_setup(p)
    local s = rawget(p, "_setup")
    if not s or s.done then return end
    local ok, err = pcall(s.setup)
    if not ok then
        -- Not done: the next attach tries again (a database may be back).
        error(format("pipeline '%s': setup failed: %s", p.name, tostring(err)), 0)
    end
    s.done = true
    if s.teardown then teardowns[#teardowns + 1] = { fn = s.teardown, name = p.name } end
end


function Pipeline:__tostring()
    return "tide.pipeline(" .. self.name .. ")"
end

return M
