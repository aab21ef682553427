--- The result cache of tasks declared with `cache` (docs/cache.md): which
-- file holds it, what identifies a task's code across processes, and the
-- store an executor opens on its first cached attempt.
--
-- The runner (lua/tide/runner.lua) asks the store before a cached task's
-- body runs, on the loop thread, and hands it the output of an attempt
-- that succeeded; the file is src/cache.c's (lookups on the loop, writes
-- by a thread of its own). Nothing here ever fails a job: a cache that
-- cannot be used is said once on stderr and the tasks run without it.
local core = require "tide.core"

local json = core.json
local xxh128 = core.xxh128
local type, tostring, pcall, setmetatable = type, tostring, pcall, setmetatable
local getupvalue, dump, format = debug.getupvalue, string.dump, string.format
local io_stderr = io.stderr

local M = {}

-- Changes when what a key covers changes, so that entries made under
-- another rule are never read as this one's.
local KEY_RULE = "tide-cache-key-1"

-- The most functions a task's code takes in through upvalues: enough for
-- any helper chain, and a bound on the work for a body that reaches a
-- large module of functions.
local MAX_FUNCTIONS = 256


local function dirname(path)
    local d = path:match("^(.*)/[^/]*$")
    if d == nil then return "." end
    if d == "" then return "/" end
    return d
end


--- The cache file used when none is given:
-- $XDG_CACHE_HOME/tide/cache.db (an absolute XDG_CACHE_HOME), else
-- $HOME/.cache/tide/cache.db; or nil and why when neither is set.
function M.default_path()
    local xdg = os.getenv("XDG_CACHE_HOME")
    if xdg and xdg:sub(1, 1) == "/" then return xdg .. "/tide/cache.db" end
    local home = os.getenv("HOME")
    if home and home ~= "" then return home .. "/.cache/tide/cache.db" end
    return nil, "no cache file: neither XDG_CACHE_HOME nor HOME is set (give one with --cache FILE)"
end


--- Whether `path` can hold a cache file: not a directory or a device, its
-- directory made if missing, and writable. For `--cache FILE`, checked
-- when a command starts. Returns true, or nil and why.
function M.check_place(path)
    local st = core.stat(path)
    if st and st.kind == "dir" then return nil, path .. " is a directory" end
    if st and st.kind ~= "file" then return nil, path .. " is not a regular file" end
    local dir = dirname(path)
    local ok, err = core.mkdir_p(dir)
    if not ok then return nil, "cannot make the directory of " .. path .. ": " .. tostring(err) end
    ok, err = core.writable(st and path or dir)
    if not ok then return nil, "cannot write " .. tostring(err) end
    return true
end


-- ===== KEYS =====

-- Appends to `parts` what identifies fn's code: its bytecode without
-- debug information (so comments, blank lines and moved lines do not
-- count, and neither does the file's path), then, upvalue by upvalue, the
-- code of each Lua function it reaches (a helper edited elsewhere in the
-- file changes the key) and the value of each number, string and boolean
-- (a `local RATE = 2` edited counts). Tables, userdata and the state of
-- modules are left out: see docs/cache.md.
local function collect(fn, parts, seen)
    if seen[fn] or seen[0] >= MAX_FUNCTIONS then return end
    seen[fn] = true
    seen[0] = seen[0] + 1
    local ok, code = pcall(dump, fn, true)
    if not ok then
        -- A C function: no code to see, and its upvalues are its own.
        parts[#parts + 1] = "C"
        return
    end
    parts[#parts + 1] = code
    for i = 1, 255 do
        local name, v = getupvalue(fn, i)
        if name == nil then break end
        local tv = type(v)
        if tv == "function" then
            collect(v, parts, seen)
        elseif tv == "number" then
            parts[#parts + 1] = format("n%.17g", v)
        elseif tv == "string" or tv == "boolean" then
            parts[#parts + 1] = tv:sub(1, 1) .. tostring(v)
        else
            parts[#parts + 1] = "-"
        end
    end
end


-- The code of a native task: its library's bytes and its symbol, so that
-- a rebuilt library misses and a moved one does not.
local function native_code(t)
    local f = io.open(t.native.path, "rb")
    local bytes = f and f:read("*a") or t.native.path
    if f then f:close() end
    return { "native", xxh128(bytes), t.native.symbol }
end


--- What every key of task t of pipeline p starts with: a hash of the key
-- rule, the pipeline's and the task's names (tasks made in a loop share
-- their code) and the task's code (see collect).
function M.code_of(p, t)
    local parts
    if t.kind == "native" then
        parts = native_code(t)
    else
        parts = {}
        collect(t.fn, parts, { [0] = 0 })
    end
    -- Each part with its length, so that no two lists join to the same
    -- text.
    local framed = { KEY_RULE, #p.name, p.name, #t.name, t.name }
    for i = 1, #parts do
        framed[#framed + 1] = #parts[i]
        framed[#framed + 1] = parts[i]
    end
    return xxh128(table.concat(framed, "\0")) .. "\0"
end


-- Specs by task declaration, made once per Lua state: the upvalues'
-- values are read when the pipeline is first used in the process, before
-- any body ran, so a counter the body bumps does not change the key of
-- the next executor (and every process reads the same initial values).
local specs = setmetatable({}, { __mode = "k" })


--- The runner's facts about cached task t of p: { code, ttl, key,
-- key_ctx, task }.
function M.spec(p, t)
    local s = specs[t]
    if s then return s end
    local c = t.cache
    s = { code = M.code_of(p, t), ttl = c.ttl, key = c.key, key_ctx = c.key_ctx,
          task = p.name .. "/" .. t.name }
    specs[t] = s
    return s
end


--- The key of an attempt of the task whose spec is `spec`, from the text
-- that stands for its input (the input's JSON, or what cache.key
-- returned, tagged by kind).
function M.key(spec, text)
    return xxh128(spec.code .. text)
end


-- ===== THE STORE =====

local Store = {}
Store.__index = Store


--- A store for the file at `path` (nil: the default file), opened on
-- first use.
function M.store(path)
    return setmetatable({ path = path, db = nil, off = false, warned = false }, Store)
end


-- Says once why the cache is not used.
local function warn(self, msg)
    if self.warned then return end
    self.warned = true
    io_stderr:write("tide: cache: ", msg, "; tasks with cache run without it\n")
end


-- The open file, or nil when it cannot be used (said once).
local function open(self)
    local db = self.db
    if db then return db end
    if self.off then return nil end
    -- Tried once: a file that failed to open is not tried per task.
    self.off = true
    local path = self.path
    if not path then
        local why
        path, why = M.default_path()
        if not path then
            warn(self, why)
            return nil
        end
        self.path = path
    end
    local ok, err = core.mkdir_p(dirname(path))
    if not ok then
        warn(self, path .. ": cannot make its directory: " .. tostring(err))
        return nil
    end
    db, err = core.cache_open(path)
    if not db then
        warn(self, err)
        return nil
    end
    self.db, self.off = db, false
    return db
end


-- Stops using the file after a failure (said once).
local function give_up(self, msg)
    warn(self, self.path .. ": " .. msg)
    local db = self.db
    self.db, self.off = nil, true
    if db then db:close() end
end


--- Looks `key` up: true and the value stored under it (made less than
-- ttl seconds ago), or false. A hit is counted in the file.
function Store:get(key, ttl)
    local db = open(self)
    if not db then return false end
    local text, err, code = db:get(key, ttl)
    if text == nil then
        -- A lock held too long is a miss; anything else (a damaged file)
        -- ends the use of the file.
        if code ~= "EAGAIN" then give_up(self, err) end
        return false
    end
    if not text then return false end
    local value
    if text ~= "" then
        value = json.decode(text)
        -- A damaged entry is a miss: the body's output replaces it.
        if value == nil then return false end
    end
    db:hit(key)
    return true, value
end


--- Stores the output of a successful attempt under `key` (as JSON; "" for
-- nil). A full queue drops it: a cache entry is never worth memory.
function Store:put(key, task, value)
    local db = self.db
    if not db then return end
    local text = ""
    if value ~= nil then
        text = json.encode(value)
        if not text then return end
    end
    if not db:put(key, task, text) then
        local err = db:error()
        if err then warn(self, self.path .. ": " .. err) end
    end
end


--- Commits what is queued and closes the file; the store is not used
-- after.
function Store:close()
    local db = self.db
    self.db, self.off = nil, true
    if db then
        local ok, err = db:close()
        if not ok then warn(self, self.path .. ": " .. tostring(err)) end
    end
end


-- ===== tide cache stats|clear =====

--- Opens the file at path for `tide cache`: the cache object, or nil,
-- message, code ("ENOENT" when there is no file).
function M.open_file(path)
    local st = core.stat(path)
    if not st then return nil, "no cache file at " .. path, "ENOENT" end
    if st.kind == "dir" then return nil, path .. " is a directory", "EIO" end
    return core.cache_open(path)
end

return M
