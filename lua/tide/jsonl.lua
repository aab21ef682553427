--- JSONL framing: cuts a stream of chunks into numbered lines.
--
-- Linear in the input: the pieces of a line that spans chunks are kept in
-- a table and joined once, when its newline arrives (joining the partial
-- line to each new chunk would copy a long line once per chunk: an 8 MiB
-- line took seconds, a 30 MiB one a minute). A line longer than
-- `max_bytes` is not kept at all: its pieces are dropped as they come and
-- it is reported by number and size, so one bad line costs no memory.
local sub, find, byte, concat = string.sub, string.find, string.byte, table.concat
local floor, tostring = math.floor, tostring

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

return M
