--- The in-memory result store behind ex:result, ex:finished and tide
-- serve: one of the result stores an executor hands finished jobs to.
-- Part of the executor.
--
-- A result is kept for `retention` seconds and among the last
-- `max_results`; the oldest go first. Each kept result is a small array
-- { status, value, time } (a server keeps 100 000 of them: the array part
-- is half the size of a record with named fields). Eviction hooks learn
-- which ids went (a server answers 410 for them rather than 404).
local core = require "tide.core"

local hrtime = core.hrtime
local pcall, tostring = pcall, tostring
local io_stderr = io.stderr

local M = {}

local Store = {}
Store.__index = Store


--- A store keeping at most max_results results for retention seconds.
function M.new(max_results, retention)
    return setmetatable({
        results = {}, order = {}, head = 1, tail = 0,
        max = max_results, retention = retention, hooks = {},
    }, Store)
end


-- Drops the oldest results beyond max or older than retention.
function Store:evict()
    local results, order, hooks = self.results, self.order, self.hooks
    local head, tail = self.head, self.tail
    local now = hrtime()
    while head <= tail do
        local id = order[head]
        local r = results[id]
        if r and (tail - head + 1 <= self.max) and now - r[3] < self.retention then break end
        order[head] = nil
        if r then
            results[id] = nil
            for _, fn in ipairs(hooks) do
                local ok, err = pcall(fn, id)
                if not ok then io_stderr:write("tide: eviction hook failed: ", tostring(err), "\n") end
            end
        end
        head = head + 1
    end
    self.head = head
end


--- Keeps a finished job's result, and its kept log lines (nil: none),
-- which go when the result goes.
function Store:put(id, status, value, logs)
    self.results[id] = { status, value, hrtime(), logs }
    local tail = self.tail + 1
    self.tail = tail
    self.order[tail] = id
    self:evict()
end


--- status, value of a kept result, or nil.
function Store:get(id)
    local r = self.results[id]
    if r then return r[1], r[2] end
    return nil
end


--- The kept log lines of a kept result (runner.log_lines), or nil.
function Store:logs(id)
    local r = self.results[id]
    return r and r[4]
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
    local i = self.head - 1
    return function()
        while i < self.tail do
            i = i + 1
            local id = self.order[i]
            local r = id and self.results[id]
            if r then return id, r[1], r[2] end
        end
        return nil
    end
end

return M
