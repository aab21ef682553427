--- Replaying failures: reading failure records (lines of failed.jsonl, or
-- failed lines of `tide run`'s stdout) and running their inputs again, one
-- at a time, under a tracer. Used by `tide replay` and the REPL's :replay.
local core = require "tide.core"
local errors = require "tide.errors"

local json = core.json
local format, tostring, type = string.format, tostring, type

local M = {}

-- Exit codes of `tide replay` for what reading a file can go wrong with.
M.EXIT_USAGE, M.EXIT_IO = 2, 3


-- Whether a decoded line is a failure record: an object with an id (a
-- non-empty string or a number), an error object and an input (which may
-- be null). `tide run` writes exactly this shape to failed.jsonl, and, with
-- "status":"failed", to stdout.
local function is_failure(t)
    if type(t) ~= "table" or getmetatable(t) == json.array_mt then return false end
    local id = t.id
    if not ((type(id) == "string" and id ~= "") or type(id) == "number") then return false end
    return type(t.error) == "table" and t.input ~= nil
end


-- Opens a file of failure records; nil, message, exit code when it
-- cannot be (EXIT_USAGE for a missing file, EXIT_IO otherwise).
local function open(path)
    local f, oerr = io.open(path, "rb")
    if f then return f end
    local missing = not core.stat(path)
    return nil, tostring(oerr), missing and M.EXIT_USAGE or M.EXIT_IO
end


-- Calls each(text, no, k) for every non-blank line of an open file (no:
-- its line number, k: its rank among the non-blank lines) until each
-- returns a value; returns that value, or nil at the end, or nil,
-- message, EXIT_IO on a read error (a directory shows up at the first
-- read on Linux).
local function each_line(f, path, each)
    local no, k = 0, 0
    while true do
        local line, rerr = f:read("*l")
        if line == nil then
            if rerr then return nil, path .. ": " .. tostring(rerr), M.EXIT_IO end
            return nil
        end
        no = no + 1
        line = line:gsub("\r$", "")
        if not line:match("^%s*$") then
            k = k + 1
            local r, e, c = each(line, no, k)
            if r ~= nil or e ~= nil then return r, e, c end
        end
    end
end


-- One line as a record { id, input, error, line }, or nil, message,
-- EXIT_USAGE when it is not JSON or not a failure record.
local function parse(line, path, no)
    local t, jerr = json.decode(line)
    if t == nil then
        return nil, format("%s:%d: not JSON (%s): a failure record is expected", path, no,
                           tostring(jerr)), M.EXIT_USAGE
    end
    if not is_failure(t) then
        return nil, format("%s:%d: not a failure record (an object with \"id\", \"error\" and "
                           .. "\"input\", as in failed.jsonl)", path, no), M.EXIT_USAGE
    end
    local input = t.input
    if input == json.null then input = nil end
    return { id = tostring(t.id), input = input, error = t.error, line = no }
end


--- Reads the failure records of a file. Returns a list of { id, input,
-- error, line }, or nil, message, exit code (EXIT_USAGE for a missing
-- file, a line that is not JSON or not a failure record, a file without
-- records; EXIT_IO when the file cannot be read).
function M.read(path)
    local f, oerr, ocode = open(path)
    if not f then return nil, oerr, ocode end
    local recs = {}
    local _, err, code = each_line(f, path, function(line, no)
        local r, perr, pcode = parse(line, path, no)
        if not r then return nil, perr, pcode end
        recs[#recs + 1] = r
    end)
    f:close()
    if err then return nil, err, code end
    if #recs == 0 then
        return nil, path .. ": holds no failure records", M.EXIT_USAGE
    end
    return recs
end


--- Reads the n-th record of a file (n counts the non-blank lines from 1,
-- as `:replay FILE#N` does); the other lines are not looked at. Returns
-- the record, or nil, message, exit code as M.read does (EXIT_USAGE when
-- the file has fewer than n records or that line is not one).
function M.read_nth(path, n)
    if type(n) ~= "number" or n < 1 or n % 1 ~= 0 then
        return nil, format("%s#%s: the line number must be a whole number >= 1", path, tostring(n)),
               M.EXIT_USAGE
    end
    local f, oerr, ocode = open(path)
    if not f then return nil, oerr, ocode end
    local seen = 0
    local r, err, code = each_line(f, path, function(line, no, k)
        seen = k
        if k == n then
            local rec, perr, pcode = parse(line, path, no)
            if not rec then return nil, perr, pcode end
            return rec
        end
    end)
    f:close()
    if r then return r end
    if err then return nil, err, code end
    return nil, format("%s#%d is out of range: the file has %d non-blank line%s", path, n, seen,
                       seen == 1 and "" or "s"),
           M.EXIT_USAGE
end


--- The records of `recs` whose ids are in `ids` (all of them when ids is
-- nil or empty), in file order. Returns the list, or nil and a message
-- naming the first id that is not in the file.
function M.select(recs, ids, path)
    if not ids or #ids == 0 then return recs end
    local want, seen = {}, {}
    for _, id in ipairs(ids) do want[tostring(id)] = true end
    local out = {}
    for _, r in ipairs(recs) do
        if want[r.id] then
            out[#out + 1] = r
            seen[r.id] = true
        end
    end
    for _, id in ipairs(ids) do
        if not seen[tostring(id)] then
            local known = {}
            for i = 1, math.min(#recs, 10) do known[i] = recs[i].id end
            return nil, format("no failure with id '%s' in %s (ids there: %s%s)", tostring(id), path,
                               table.concat(known, ", "), #recs > 10 and ", ..." or "")
        end
    end
    return out
end


--- Runs one record's input through p on ex under `id`, with `tracer`
-- tracing it, and waits for the end (the loop runs meanwhile). Returns
-- status ("done", "failed", "cancelled") and the output or error record.
-- Raises like ex:submit (a duplicate id, a pipeline that does not compile).
function M.run_one(ex, p, input, id, tracer)
    tracer:add(id)
    local jid = ex:submit(p, input, { id = id })
    local out, rec = ex:result(jid)
    tracer:remove(jid)
    if rec == nil then return "done", out, jid end
    -- A wait the REPL's Ctrl-C interrupted leaves the job running; it is
    -- cancelled so that "one by one" holds.
    if rec.code == "EAGAIN" and ex:status(jid) ~= nil and not ex:finished(jid) then
        ex:cancel(jid)
        return "cancelled", rec, jid
    end
    return (ex:finished(jid)) or "failed", rec, jid
end


--- The id a replay runs a record under: its own, unless the executor has
-- that id already (a second record with the same id, or a job of the
-- REPL); then `<id>#replay<N>`, the first N free.
function M.free_id(ex, id)
    if not ex:has(id) then return id end
    local n = 1
    while ex:has(id .. "#replay" .. n) do n = n + 1 end
    return id .. "#replay" .. n
end


--- The one-line verdict of a replayed record.
function M.verdict(id, status, value)
    if status == "done" then return format("replay %s: done", id) end
    local rec = errors.is(value) and value or errors.new("ETASK", tostring(value))
    return format("replay %s: %s: %s", id, status, tostring(rec))
end

return M
