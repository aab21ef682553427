--- JSONL input: framing (a stream of chunks cut into numbered lines), the
-- id rule of `tide run`, and the JSONL job source built on both.
--
-- Linear in the input: the pieces of a line that spans chunks are kept in
-- a table and joined once, when its newline arrives (joining the partial
-- line to each new chunk would copy a long line once per chunk: an 8 MiB
-- line took seconds, a 30 MiB one a minute). A line longer than
-- `max_bytes` is not kept at all: its pieces are dropped as they come and
-- it is reported by number and size, so one bad line costs no memory.
local core = require "tide.core"

local sub, find, byte, concat = string.sub, string.find, string.byte, table.concat
local floor, tostring, type, getmetatable = math.floor, tostring, type, getmetatable
local format = string.format
local json = core.json

local M = {}

M.DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024


--- Makes a framer.
-- @param max_bytes the longest line kept (bytes, without the newline)
-- @param on_line function(lineno, line) for each line that is not blank
--   (a trailing "\r" removed), and function(lineno, nil, nbytes) for a
--   line longer than max_bytes
-- @return an object with feed(chunk) and finish()
function M.framer(max_bytes, on_line)
    local pieces, npieces, plen = {}, 0, 0 -- the unfinished line
    local toolong = false
    local lineno = 0

    local function emit(line, n)
        lineno = lineno + 1
        if toolong then
            toolong = false
            on_line(lineno, nil, n)
            return
        end
        if byte(line, -1) == 13 then line = sub(line, 1, -2) end
        local b = byte(line, 1)
        if b and (b > 32 or find(line, "%S")) then on_line(lineno, line) end
    end

    -- Adds s (no newline in it) to the unfinished line.
    local function keep(s)
        local n = #s
        if n == 0 then return end
        plen = plen + n
        if toolong then return end
        if plen > max_bytes then
            toolong = true
            for i = 1, npieces do pieces[i] = nil end
            npieces = 0
            return
        end
        npieces = npieces + 1
        pieces[npieces] = s
    end

    -- The unfinished line plus s, as one string; the unfinished line is
    -- reset.
    local function take(s)
        local line
        if npieces == 0 then
            line = s
        else
            npieces = npieces + 1
            pieces[npieces] = s
            line = concat(pieces, "", 1, npieces)
            for i = 1, npieces do pieces[i] = nil end
            npieces = 0
        end
        local n = plen + #s
        plen = 0
        return line, n
    end

    local self = {}

    function self.feed(chunk)
        local pos = 1
        while true do
            local nl = find(chunk, "\n", pos, true)
            if not nl then break end
            if toolong or plen + nl - pos > max_bytes then
                toolong = true
                local n = plen + nl - pos
                for i = 1, npieces do pieces[i] = nil end
                npieces, plen = 0, 0
                emit(nil, n)
            else
                emit(take(sub(chunk, pos, nl - 1)))
            end
            pos = nl + 1
        end
        if pos <= #chunk then keep(sub(chunk, pos)) end
    end

    --- The end of the input: a last line without a newline counts.
    function self.finish()
        if plen > 0 then
            if toolong then
                local n = plen
                plen = 0
                emit(nil, n)
            else
                emit(take(""))
            end
        end
    end

    --- The number of the last line seen.
    function self.lineno() return lineno end

    return self
end


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
-- Memory: ids given by the input are remembered for the whole run; line
-- numbers used as ids are remembered as runs of consecutive numbers
-- (one run for an input that gives no ids at all).
function M.ids()
    local taken = {}
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
            if not taken[id] then
                if nruns > 0 and hi[nruns] == lineno - 1 then
                    hi[nruns] = lineno
                else
                    nruns = nruns + 1
                    lo[nruns], hi[nruns] = lineno, lineno
                end
                return id
            end
        elseif not taken[id] and not generated(id) then
            taken[id] = true
            return id
        end
        local base = id .. "#" .. lineno
        local cand, k = base, 1
        while taken[cand] do
            k = k + 1
            cand = base .. "-" .. k
        end
        taken[cand] = true
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
-- jobs may be there, take() hands them out one by one. The reader pauses
-- while lines wait, so memory holds at most about one chunk of input.
--
-- A job is { id =, input =, line = } with a unique id (see M.ids); a line
-- of failed.jsonl ({"id","error","input"}) is the job of its input. Lines
-- that are not jobs go to handlers.reject(lineno, text or nil, message);
-- handlers.warn(message) hears about ids that could not be used as given;
-- handlers.skip(id), when given, says which jobs to leave out (a resume).
-- @return the source, or nil, rec (the input cannot be opened)
function M.source(ex, path, max_line_bytes, handlers)
    local self = setmetatable({
        ex = ex, path = path, handlers = handlers, next_id = M.ids(),
        nos = {}, lines = {}, head = 1, tail = 0, eof = false, paused = false,
        read_error = nil, last = 0,
    }, Source)
    self.framer = M.framer(max_line_bytes, function(no, line, nbytes)
        if line == nil then
            handlers.reject(no, nil, format("the line is %d bytes long, more than --max-line-bytes (%d)",
                                            nbytes, max_line_bytes))
            return
        end
        local t = self.tail + 1
        self.tail = t
        self.nos[t], self.lines[t] = no, line
    end)
    return self
end


-- Pauses the reader while lines wait, resumes it when none do.
function Source:_flow()
    local r = self.reader
    if not r then return end
    local want = self.head <= self.tail
    if want ~= self.paused then
        self.paused = want
        if want then r:pause() elseif not self.eof then r:resume() end
    end
end


--- Starts reading; on_ready() is called whenever lines arrived or the
-- input ended. Returns true, or nil, rec when the input cannot be read.
function Source:start(on_ready)
    local r, rec = self.ex:reader(self.path, function(chunk, err)
        if chunk == nil then
            self.eof = true
            if err then self.read_error = "reading input: " .. tostring(err) end
            self.framer.finish()
        else
            self.framer.feed(chunk)
        end
        on_ready()
        self:_flow()
    end)
    if not r then return nil, rec end
    self.reader = r
    return true
end


-- The next waiting line: lineno, text; or nil.
function Source:_next_line()
    local h = self.head
    if h > self.tail then return nil end
    local no, line = self.nos[h], self.lines[h]
    self.nos[h], self.lines[h] = nil, nil
    self.head = h + 1
    return no, line
end


--- The next job, or nil when no line waits (rejected lines are reported
-- on the way).
function Source:take()
    while true do
        local no, line = self:_next_line()
        if not no then
            self:_flow()
            return nil
        end
        local job = self:_job(no, line)
        if job then return job end
    end
end


function Source:_job(no, line)
    local v, err = json.decode(line)
    if v == nil and err then
        self.handlers.reject(no, line, "malformed JSON: " .. tostring(err))
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
    while true do
        local no, line = self:_next_line()
        if not no then break end
        fn(line)
    end
    self:_flow()
end


--- Whether the whole input was read and taken (not stopped by close()).
function Source:done()
    return self.eof and not self.closed and self.head > self.tail
end


--- The number of the last line taken as a job (0 before the first).
function Source:last_line()
    return self.last
end


--- Stops reading; lines waiting are dropped.
function Source:close()
    self.eof, self.closed = true, true
    self.head = self.tail + 1
    if self.reader then
        self.reader:close()
        self.reader = nil
    end
end

return M
