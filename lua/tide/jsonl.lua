--- JSONL input: the id rule of `tide run`, and the JSONL job source.
--
-- The lines themselves never reach Lua as strings: the core reader in
-- line mode (src/lua/lreader.c) cuts the input into numbered lines in C
-- and decodes each one straight from its buffer when the source takes it
-- (a Lua string per line made LuaJIT's string table the cost of a long
-- run: see lreader.c). Only a rejected line's text comes to Lua. A line
-- longer than `max_bytes` is not kept at all: it is dropped as it comes
-- and reported by number and size, so one bad line costs no memory; a
-- line that spans chunks is copied once, whatever its length.
local core = require "tide.core"

local floor, tostring, type, getmetatable = math.floor, tostring, type, getmetatable
local format = string.format
local json = core.json

local M = {}

M.DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024


--- Makes the id allocator of a run: next_id(lineno, id) returns the id
-- the input on that line runs as, and the id it asked for when that one
-- was taken.
--
-- The rule: an input with an id runs as that id; one without runs as its
-- line number. An id that an earlier line already runs as is taken, and
-- the later line runs as "<id>#<line>" instead (with "-2", "-3", ... added
-- in the unlikely case that is taken too), so no valid line is refused for
-- another line's id and every id in the output is unique.
--
-- Memory: ids given by the input are remembered for the whole run, in a
-- set outside the Lua heap (core.idset: a Lua table of a million ids
-- cost the collector a walk of them all each cycle); line numbers used
-- as ids are remembered as runs of consecutive numbers (one run for an
-- input that gives no ids at all).
function M.ids()
    local taken = core.idset()
    local lo, hi, nruns = {}, {}, 0

    -- Whether id is a line number handed out as an id already.
    local function generated(id)
        if nruns == 0 or #id > 15 or not id:match("^[1-9]%d*$") then return false end
        local n = tonumber(id)
        local a, b = 1, nruns
        while a <= b do
            local m = floor((a + b) / 2)
            if n < lo[m] then b = m - 1 elseif n > hi[m] then a = m + 1 else return true end
        end
        return false
    end

    return function(lineno, id)
        if id == nil then
            id = tostring(lineno)
            if not taken:has(id) then
                if nruns > 0 and hi[nruns] == lineno - 1 then
                    hi[nruns] = lineno
                else
                    nruns = nruns + 1
                    lo[nruns], hi[nruns] = lineno, lineno
                end
                return id
            end
        elseif not generated(id) and taken:add(id) then
            return id -- add() said it was free, and took it
        end
        local base = id .. "#" .. lineno
        local cand, k = base, 1
        while not taken:add(cand) do
            k = k + 1
            cand = base .. "-" .. k
        end
        return cand, id
    end
end


-- The id an input gives: its "id" field when that is a non-empty string
-- or a number (numbers keep every digit: their JSON text is the id), else
-- nil. The second value says why an "id" field that is present was not
-- used.
local function given_id(v)
    local id = v.id
    local t = type(id)
    if t == "string" then
        if id ~= "" then return id end
        return nil, "an empty string"
    elseif t == "number" or t == "cdata" then
        local s = json.encode(id)
        if s then return s end
        return nil, "a number JSON cannot carry"
    elseif id ~= nil then
        return nil, id == json.null and "null" or ("a " .. t)
    end
    return nil
end


local Source = {}
Source.__index = Source


--- The JSONL job source of `tide run`: lines of a file (or stdin, path
-- nil) read on executor ex's loop. It is pulled: on_ready() says that
-- jobs may be there, take() hands them out one by one. The reader stops
-- reading while lines wait, so memory holds at most about one chunk of
-- input (and one line that spans chunks).
--
-- A job is { id =, input =, line = } with a unique id (see M.ids); a line
-- of failed.jsonl ({"id","error","input"}) is the job of its input. Lines
-- that are not jobs go to handlers.reject(lineno, text or nil, message);
-- handlers.warn(message) hears about ids that could not be used as given;
-- handlers.skip(id), when given, says which jobs to leave out (a resume).
-- @return the source, or nil, rec (the input cannot be opened)
function M.source(ex, path, max_line_bytes, handlers)
    return setmetatable({
        ex = ex, path = path, max_line_bytes = max_line_bytes, handlers = handlers,
        next_id = M.ids(), eof = false, read_error = nil, last = 0,
    }, Source)
end


-- Rejects the lines the reader found too long ({lineno, bytes, ...}).
function Source:_too_long(longs)
    for i = 1, #longs, 2 do
        self.handlers.reject(longs[i], nil, format("the line is %d bytes long, more than --max-line-bytes (%d)",
                                                   longs[i + 1], self.max_line_bytes))
    end
end


--- Starts reading; on_ready() is called whenever lines arrived or the
-- input ended. Returns true, or nil, rec when the input cannot be read.
function Source:start(on_ready)
    local r, rec = self.ex:reader(self.path, function(more, err, longs)
        if more == nil then
            self.eof = true
            if err then self.read_error = "reading input: " .. tostring(err) end
        else
            longs = err
        end
        if longs then self:_too_long(longs) end
        on_ready()
    end, self.max_line_bytes)
    if not r then return nil, rec end
    self.reader = r
    return true
end


--- The next job, or nil when no line waits (rejected lines are reported
-- on the way).
function Source:take()
    local r = self.reader
    if not r then return nil end
    while true do
        local no, v, err, text = r:take()
        if not no then return nil end
        local job = self:_job(no, v, err, text)
        if job then return job end
    end
end


-- The job of line `no`, decoded as v (or not JSON: err, text); nil when
-- the line is rejected or skipped.
function Source:_job(no, v, err, text)
    if v == nil and err then
        self.handlers.reject(no, text, "malformed JSON: " .. tostring(err))
        return nil
    end
    local id, why
    if type(v) == "table" and getmetatable(v) == json.object_mt then
        id, why = given_id(v)
        -- A record of failed.jsonl re-runs its original input.
        if v.error ~= nil and v.input ~= nil and v.id ~= nil then v = v.input end
        if why then
            self.handlers.warn(format("line %d: the id is %s, not a string or a number; "
                                      .. "the line number is used instead", no, why))
        end
    end
    local given = id
    local taken
    id, taken = self.next_id(no, id)
    -- An input a journaled run already finished (the ids are worked out
    -- first: the rule depends on every line before).
    if self.handlers.skip and self.handlers.skip(id) then return nil end
    if taken then
        self.handlers.warn(format("line %d: id '%s' is already taken by an earlier line; "
                                  .. "this input runs as '%s'", no, given or taken, id))
    end
    self.last = no
    return { id = id, input = v, line = no }
end


--- Hands every line not taken yet, as it is, to fn(line): those waiting
-- now and, as they arrive, the rest of the input (a re-run of failures
-- that stops copies them on). on_ready() still says when more came.
function Source:pass_rest(fn)
    local r = self.reader
    if not r then return end
    while true do
        local no, line = r:take_raw()
        if not no then break end
        fn(line)
    end
end


--- Whether the whole input was read and taken (not stopped by close()).
function Source:done()
    return self.eof and not self.closed and not (self.reader and self.reader:waiting())
end


--- The number of the last line taken as a job (0 before the first).
function Source:last_line()
    return self.last
end


--- Stops reading; lines waiting are dropped.
function Source:close()
    self.eof, self.closed = true, true
    if self.reader then
        self.reader:close()
        self.reader = nil
    end
end

return M
