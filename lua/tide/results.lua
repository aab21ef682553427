--- The in-memory result store behind ex:result, ex:finished and tide
-- serve: one of the result stores an executor hands finished jobs to.
-- Part of the executor.
--
-- A result is kept for `retention` seconds and among the last
-- `max_results`; the oldest go first. Eviction hooks learn which ids went
-- (a server answers 410 for them rather than 404).
--
-- DESIGN
-- ------
-- A server keeps up to a million results, so their bytes count. Results
-- sit in a ring of parallel arrays (id, status, value, time), indexed from
-- `index` (id -> ring position): no table per result, and a ring rather
-- than ever-growing positions, because an array whose front is cleared
-- moves to LuaJIT's hash part (three times the bytes per entry) at its
-- next resize. In a server's store (as_json), a successful job's table
-- output is kept as its JSON text (a string is a third of the bytes of a
-- small table with a hash part) and decoded when it is read; its status
-- code then says so. An executor's own store keeps the Lua value as it
-- is (a JSON round trip changes tables: [1] = nil, 2, 3 comes back as an
-- object with keys "2" and "3"). Error
-- records stay tables: they are few, and carry metatables. Kept log lines
-- are rare: a table by position, only for the jobs that have some.
local core = require "tide.core"
local errors = require "tide.errors"

local hrtime = core.hrtime
local json = core.json
local jencode, jdecode = json.encode, json.decode
local is_error = errors.is
local pcall, tostring, type, ipairs, error = pcall, tostring, type, ipairs, error
local io_stderr = io.stderr

local M = {}

-- Statuses by code; DONE_JSON: done, its value kept as JSON text.
local DONE, DONE_JSON = 1, 2
local CODE = { done = DONE, failed = 3, cancelled = 4 }
local NAME = { "done", "done", "failed", "cancelled" }

-- Per result, the status code and the time it was kept (seconds since the
-- store was made, as a float: a 4-byte float still tells seconds apart
-- after months) in FFI arrays where LuaJIT has its FFI: 5 bytes where two
-- Lua array slots take 16.
local ffi_ok, ffi = pcall(require, "ffi")
local codes_ct = ffi_ok and ffi.typeof("uint8_t[?]")
local times_ct = ffi_ok and ffi.typeof("float[?]")

local function new_array(ct, n)
    if ct then return ct(n + 1) end -- index 0 unused, like a Lua array
    return {}
end

local Store = {}
Store.__index = Store


--- A store keeping at most max_results results for retention seconds;
-- `as_json`: successful table outputs are kept as their JSON text (what a
-- server hands out anyway), and read back decoded.
function M.new(max_results, retention, as_json)
    return setmetatable({
        index = {}, ids = {}, st = new_array(codes_ct, 0), vals = {}, times = new_array(times_ct, 0),
        logs_of = {}, t0 = hrtime(),
        head = 0, n = 0, cap = 0, -- ring: positions head .. head + n - 1 (mod cap), 1-based slots
        max = max_results, retention = retention, hooks = {}, as_json = as_json or false,
    }, Store)
end


-- The ring slot of the i-th kept result (0 = the oldest).
local function slot_of(self, i)
    return (self.head + i) % self.cap + 1
end


-- Doubles the ring (up to max), keeping the order: the oldest goes to
-- slot 1, and every index entry follows its result.
local function grow(self)
    local cap = self.cap == 0 and 64 or self.cap * 2
    if cap > self.max then cap = self.max end
    if cap < 1 then cap = 1 end
    local ids, vals, logs = {}, {}, {}
    local st, times = new_array(codes_ct, cap), new_array(times_ct, cap)
    local index = self.index
    for i = 0, self.n - 1 do
        local k = slot_of(self, i)
        local id = self.ids[k]
        ids[i + 1], st[i + 1], vals[i + 1], times[i + 1] = id, self.st[k], self.vals[k], self.times[k]
        logs[i + 1] = self.logs_of[k]
        if id ~= false then index[id] = i + 1 end
    end
    self.ids, self.st, self.vals, self.times, self.logs_of = ids, st, vals, times, logs
    self.head, self.cap = 0, cap
end


-- Drops the oldest result (its id is false when a newer result of the
-- same id replaced it).
local function drop_oldest(self)
    local k = self.head % self.cap + 1
    local id = self.ids[k]
    self.ids[k], self.vals[k], self.logs_of[k] = false, false, nil
    self.head = (self.head + 1) % self.cap
    self.n = self.n - 1
    if id == false then return end
    self.index[id] = nil
    for _, fn in ipairs(self.hooks) do
        local ok, err = pcall(fn, id)
        if not ok then io_stderr:write("tide: eviction hook failed: ", tostring(err), "\n") end
    end
end


-- Drops the oldest results beyond max or older than retention.
function Store:evict()
    local now, retention = hrtime() - self.t0, self.retention
    while self.n > 0 do
        local k = self.head % self.cap + 1
        if self.ids[k] ~= false and self.n <= self.max and now - self.times[k] < retention then break end
        drop_oldest(self)
    end
end


--- Keeps a finished job's result, and its kept log lines (nil: none),
-- which go when the result goes.
function Store:put(id, status, value, logs)
    local old = self.index[id]
    if old then self.ids[old] = false end -- its newer result replaces it
    local code = CODE[status] or error("results: unknown status " .. tostring(status), 2)
    if self.as_json and type(value) == "table" and code == DONE and not is_error(value) then
        local ok, text = pcall(jencode, value)
        if ok then value, code = text, DONE_JSON end
    end
    if self.n == self.cap then
        if self.cap < self.max then grow(self) else drop_oldest(self) end
    end
    local k = slot_of(self, self.n)
    self.n = self.n + 1
    self.ids[k], self.st[k], self.vals[k], self.times[k] = id, code, value, hrtime() - self.t0
    if logs then self.logs_of[k] = logs end
    self.index[id] = k
    self:evict()
end


--- status, value of a kept result, or nil.
function Store:get(id)
    local k = self.index[id]
    if not k then return nil end
    local code, value = self.st[k], self.vals[k]
    if code == DONE_JSON then return "done", jdecode(value) end
    return NAME[code], value
end


--- The status of a kept result (without decoding its value), or nil.
function Store:status(id)
    local k = self.index[id]
    if not k then return nil end
    return NAME[self.st[k]]
end


--- The kept log lines of a kept result (runner.log_lines), or nil.
function Store:logs(id)
    local k = self.index[id]
    return k and self.logs_of[k] or nil
end


--- Calls fn(id) for each id whose result is evicted from now on; returns
-- fn, the token for off_evict.
function Store:on_evict(fn)
    self.hooks[#self.hooks + 1] = fn
    return fn
end


function Store:off_evict(token)
    for i = #self.hooks, 1, -1 do
        if self.hooks[i] == token then
            table.remove(self.hooks, i)
            return true
        end
    end
    return false
end


--- Iterates over the kept ids, oldest first: for id, status, value in ...
function Store:each()
    local i = -1
    return function()
        while i < self.n - 1 do
            i = i + 1
            local id = self.ids[slot_of(self, i)]
            if id ~= false then return id, self:get(id) end
        end
        return nil
    end
end

return M
