--- The result sinks of `tide run`: JSONL on stdout, or the files of an
-- --output directory. A sink has the shape every result sink has (see
-- docs/architecture.md): put(), flush() and close(complete).
--
-- The promise kept here: every input ends as whole lines in exactly one
-- of these places, and nothing is counted before it is written.
--   stdout   one line per input: {"id","status":"done","output"} or
--            {"id","status":"failed","error","input"}; rejected lines are reported
--            on stderr only.
--   --output DIR/<sink>.jsonl  {"id","output"} in the file of each sink
--                              the input reached;
--            DIR/failed.jsonl  {"id","error","input"}: re-runnable;
--            DIR/rejects.jsonl {"line","error","text"}: lines that are
--                              not inputs;
--            DIR/dropped.jsonl {"id","input"}: inputs whose routers chose
--                              no sink.
-- Lines go through core writers (src/lua/lfile.c): whole lines only, one
-- write(2) per flush, every error reported. Counts move from `pending`
-- to `counts` only when a flush of every file succeeded.
--
-- A directory that already holds results is refused unless the caller
-- says `append` or `overwrite`. The one exception is the documented
-- re-run, `--input DIR/failed.jsonl --output DIR`: sink files are
-- appended to, and the new failures go to a temporary file that replaces
-- failed.jsonl when the run has consumed all of its input, so the earlier
-- successes stay, the new ones are added, and failed.jsonl ends holding
-- what still fails.
local core = require "tide.core"
local errors = require "tide.errors"
local record = require "tide.record"

local bit = require "bit"
local json = core.json
local enc = json.encode
local format, tostring, ipairs, pairs, next, select = string.format, tostring, ipairs, pairs, next, select
local io_stderr = io.stderr

local M = {}

-- The files tide writes next to the sinks' (name -> what they hold).
M.RESERVED = {
    failed = "failures", rejects = "rejected lines", dropped = "inputs that reached no sink",
}

local Out = {}
Out.__index = Out


--- Under --output each sink writes DIR/<name>.jsonl: the name must be a
-- plain file name that is not one of tide's own files.
function M.check_sink_names(names)
    for _, name in ipairs(names) do
        if M.RESERVED[name] then
            return nil, ("--output: sink task '%s' would write %s.jsonl, where tide writes its %s; "
                         .. "rename the task"):format(name, name, M.RESERVED[name])
        end
        if not name:match("^[%w_%-][%w_%.%-]*$") then
            return nil, ("--output: sink task name '%s' cannot be used as a file name "
                         .. "(letters, digits, '.', '_' and '-' only)"):format(name)
        end
    end
    return true
end


local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Base64 of s (RFC 4648), for the exact bytes of a rejected line.
local function base64(s)
    local out, byte, sub = {}, string.byte, string.sub
    for i = 1, #s, 3 do
        local a, b, c = byte(s, i, i + 2)
        local v = a * 65536 + (b or 0) * 256 + (c or 0)
        local q = {}
        for k = 3, 0, -1 do
            local d = math.floor(v / 64 ^ k) % 64
            q[#q + 1] = sub(B64, d + 1, d + 1)
        end
        if not b then q[3], q[4] = "=", "=" elseif not c then q[4] = "=" end
        out[#out + 1] = table.concat(q)
    end
    return table.concat(out)
end


local function same_file(a, b)
    return a and b and a.dev == b.dev and a.ino == b.ino
end


local function new_out(o)
    o.counts = { done = 0, failed = 0, rejected = 0, dropped = 0 }
    o.pending = { done = 0, failed = 0, rejected = 0, dropped = 0 }
    o.id_json = record.id
    return setmetatable(o, Out)
end


--- Opens the destination of a run.
-- @param opts { dir = DIR or nil (stdout), mode = nil | "append" |
--   "overwrite", input = the --input path or nil, sinks = sink names,
--   routed = whether routers may drop inputs, resume = file name ->
--   length (a journal's resume: each file is cut back to its length) }
-- @return out, or nil, message, exit code (2: usage, 3: I/O)
function M.open(opts)
    if opts.resume then return M.resume(opts) end
    if not opts.dir then
        return new_out({ stdout = core.writer_fd(1, "stdout"), writers = {} })
    end
    local dir = opts.dir
    local ok, nerr = M.check_sink_names(opts.sinks)
    if not ok then return nil, nerr, 2 end
    local mok, merr = core.mkdir_p(dir)
    if not mok then return nil, "--output: " .. tostring(merr), 3 end

    -- Which of our files exist, and which of them hold results.
    local names = {}
    for _, s in ipairs(opts.sinks) do names[#names + 1] = s end
    names[#names + 1], names[#names + 2], names[#names + 3] = "failed", "rejects", "dropped"
    local input_st = opts.input and core.stat(opts.input)
    local holding, rerun = {}, false
    for _, name in ipairs(names) do
        local path = dir .. "/" .. name .. ".jsonl"
        local st = core.stat(path)
        if st and same_file(st, input_st) then
            if name ~= "failed" then
                return nil, ("--input %s is %s, which this run writes its results to")
                    :format(opts.input, path), 2
            end
            rerun = true
        end
        if st and st.kind == "file" and st.size > 0 then holding[#holding + 1] = name .. ".jsonl" end
    end
    local mode = opts.mode
    if rerun then
        if mode == "overwrite" then
            return nil, ("--overwrite would erase %s/failed.jsonl, which is the input; "
                         .. "re-running failures into their own directory keeps the earlier "
                         .. "results without --overwrite"):format(dir), 2
        end
        mode = "append"
    elseif #holding > 0 and not mode then
        return nil, ("--output %s already holds results (%s): add --append to add to them, "
                     .. "--overwrite to replace them, or choose another directory")
            :format(dir, table.concat(holding, ", ")), 2
    end

    local o = { dir = dir, writers = {}, sinks = {}, rerun = rerun, names = {}, by_name = {} }
    local function open(name, how)
        local path = dir .. "/" .. name
        local w, err = core.file_open(path, how)
        if not w then return nil, err end
        o.writers[#o.writers + 1] = w
        o.names[w], o.by_name[name] = name, w
        if err and err > 0 then
            io_stderr:write(format("tide: %s: cut a torn last line (%d bytes) left by an "
                                   .. "interrupted run\n", path, err))
        end
        return w
    end
    local how = mode == "append" and "append" or "truncate"
    local err
    for _, s in ipairs(opts.sinks) do
        o.sinks[s], err = open(s .. ".jsonl", how)
        if not o.sinks[s] then return nil, err, 3 end
    end
    if rerun then
        -- Read from failed.jsonl, write the failures that remain beside
        -- it; close() puts them in its place once all of it was read.
        o.failed_tmp, o.failed_path = dir .. "/failed.jsonl.next", dir .. "/failed.jsonl"
        o.failed, err = open("failed.jsonl.next", "truncate")
    else
        o.failed, err = open("failed.jsonl", how)
    end
    if not o.failed then return nil, err, 3 end
    o.rejects, err = open("rejects.jsonl", how)
    if not o.rejects then return nil, err, 3 end
    if opts.routed then
        o.dropped, err = open("dropped.jsonl", how)
        if not o.dropped then return nil, err, 3 end
    elseif how == "truncate" then
        os.remove(dir .. "/dropped.jsonl") -- no stale drops of an earlier pipeline
    end
    return new_out(o)
end


--- Reopens the files of a journaled run to resume it: each file named in
-- opts.resume is cut back to the length the journal recorded (what a
-- crash wrote after it goes: the journal has those results), and the
-- sinks' files are found by name as open() made them.
function M.resume(opts)
    local dir = opts.dir
    local o = { dir = dir, writers = {}, sinks = {}, names = {}, by_name = {} }
    for name, length in pairs(opts.resume) do
        local path = dir .. "/" .. name
        local st = core.stat(path)
        if not st or st.size < length then
            return nil, ("%s holds %s bytes, fewer than the %d the journal recorded: it was changed "
                         .. "since (add --journal-reset to start over)"):format(path, st and st.size or "no",
                                                                               length), 3
        end
        local w, err = core.file_open(path, "append")
        if not w then return nil, err, 3 end
        local ok, terr = w:truncate(length)
        if not ok then return nil, terr, 3 end
        o.writers[#o.writers + 1] = w
        o.names[w], o.by_name[name] = name, w
    end
    for _, s in ipairs(opts.sinks) do o.sinks[s] = o.by_name[s .. ".jsonl"] end
    o.failed, o.rejects, o.dropped = o.by_name["failed.jsonl"], o.by_name["rejects.jsonl"],
        o.by_name["dropped.jsonl"]
    for _, s in ipairs(opts.sinks) do
        if not o.sinks[s] then
            return nil, ("the journal does not know the file of sink '%s'"):format(s), 3
        end
    end
    if not o.failed or not o.rejects or (opts.routed and not o.dropped) then
        return nil, "the journal does not know the files tide writes failures to", 3
    end
    return new_out(o)
end


--- Puts what was written on the device (fdatasync); returns nil or the
-- first error.
function Out:sync()
    for _, w in ipairs(self.writers) do
        local ok, err = w:sync()
        if not ok then return self:_failed_write(err) end
    end
    return nil
end


--- The committed length of every file, as "name\tlength\n" lines (what
-- a journal records after a flush).
function Out:lengths()
    local parts = {}
    for _, w in ipairs(self.writers) do
        parts[#parts + 1] = self.names[w] .. "\t" .. (w:stats()) .. "\n"
    end
    return table.concat(parts)
end


-- Writes one line to w, and keeps it for take_lines() while a journal
-- captures.
function Out:_line(w, text)
    local cap = self.captured
    if cap then cap[#cap + 1] = (self.names[w] or "stdout") .. "\t" .. text end
    return w:line(text)
end


--- The lines written since the last call, as "file\ttext\n" each (a
-- journal keeps them to write them again on a resume); capture starts
-- with the first call.
function Out:take_lines()
    local cap = self.captured
    self.captured = {}
    if not cap or #cap == 0 then return "" end
    return table.concat(cap, "\n") .. "\n"
end


--- Writes lines kept by take_lines() again (a resume: the journal had
-- them, the files lost them to the crash). Returns nil or an error.
function Out:rewrite(blob)
    for file, text in blob:gmatch("([^\t\n]*)\t([^\n]*)\n") do
        local w = self.by_name[file]
        if not w then return "the journal names a file this run does not write: " .. file end
        local ok, err = w:line(text)
        if not ok then return self:_failed_write(err) end
    end
    return nil
end


-- Records a write failure (the first one is kept) and returns it.
function Out:_failed_write(err)
    self.error = self.error or err
    return self.error
end


--- Writes the result of one input. `sid` is its id as JSON text (made by
-- out.id_json), `ran` the sinks that ran (see ex:subscribe) and `input`
-- the input, kept in failed.jsonl. Returns the status it was written as
-- ("done", "failed" or "dropped"), and a write error message or nil.
function Out:put(sid, status, value, ran, input)
    if status == "done" then
        local ok, kind, err = self:_done(sid, value, ran, input)
        if ok then return kind, err end
        -- An output no task should have been able to return.
        value = errors.new("EVALUE", "the output cannot be encoded: " .. tostring(kind))
    end
    return "failed", self:_fail(sid, value, input)
end


function Out:_done(sid, value, ran, input)
    local pending, ok, err = self.pending, true, nil
    if self.stdout or ran == nil then
        local w = self.stdout or select(2, next(self.sinks))
        if self.captured then
            -- A journal keeps the text of each line: make it a string.
            local s, eerr = enc(value)
            if s == nil then return false, eerr end
            if self.stdout then
                ok, err = self:_line(w, record.done(sid, s))
            else
                ok, err = self:_line(w, '{"id":' .. sid .. ',"output":' .. s .. '}')
            end
        else
            -- Encoded straight into the file's buffer (no string per line).
            local code
            if self.stdout then
                ok, err, code = w:json_line('{"id":', sid, ',"status":"done","output":', value, '}')
            else
                ok, err, code = w:json_line('{"id":', sid, ',"output":', value, '}')
            end
            if code then return false, err end
        end
    elseif next(ran) == nil then
        local si = enc(input)
        ok, err = self:_line(self.dropped, '{"id":' .. sid .. ',"input":' .. (si or "null") .. '}')
        if not ok then return true, "dropped", self:_failed_write(err) end
        pending.dropped = pending.dropped + 1
        return true, "dropped", nil
    else
        -- Encode every sink's value first, so that a failure writes no line.
        local texts = {}
        for name, v in pairs(ran) do
            local s, eerr = enc(v)
            if s == nil then return false, eerr end
            texts[name] = s
        end
        for name, s in pairs(texts) do
            local wok, werr = self:_line(self.sinks[name], '{"id":' .. sid .. ',"output":' .. s .. '}')
            if not wok then ok, err = false, werr end
        end
    end
    if not ok then return true, "done", self:_failed_write(err) end
    pending.done = pending.done + 1
    return true, "done", nil
end


function Out:_fail(sid, rec, input)
    local ok, err
    if self.stdout then
        ok, err = self:_line(self.stdout, record.failed(sid, "failed", rec, false, enc(input) or "null"))
    else
        ok, err = self:_line(self.failed, record.failed(sid, "failed", rec, true, enc(input) or "null"))
    end
    if not ok then return self:_failed_write(err) end
    self.pending.failed = self.pending.failed + 1
    return nil
end


-- ===== PER-JOB LOG FILES =====

-- The longest file name a log file gets, without ".log": file systems
-- allow 255 bytes, and the rest is room to spare.
M.LOG_NAME_MAX = 200

-- A 32-bit FNV-1a hash of s, as 8 hex digits: tells apart long ids that
-- share the first bytes kept in their file names.
local function fnv1a(s)
    local h = 2166136261
    for i = 1, #s do
        h = bit.bxor(h, s:byte(i))
        h = (h * 16777619) % 4294967296
    end
    return format("%08x", h)
end

--- The file name (without directory) a job's log lines go to under
-- DIR/logs: the id, its bytes other than ASCII letters, digits, '-', '_'
-- and '.' written %XX (two upper-case hex digits), a leading '.' too (no
-- "..", no hidden files), the empty id as "%"; an encoding longer than
-- M.LOG_NAME_MAX bytes keeps its first 180 bytes (never half of a %XX)
-- and adds '~' and the FNV-1a hash of the whole id. Then ".log".
function M.log_name(id)
    id = tostring(id)
    if id == "" then return "%.log" end
    local name = id:gsub("[^%w%-_%.]", function(c) return format("%%%02X", c:byte()) end)
    if name:sub(1, 1) == "." then name = "%2E" .. name:sub(2) end
    if #name > M.LOG_NAME_MAX then
        local cut = 180
        -- A '%' in the last two kept bytes starts an escape the cut would
        -- split: cut before it.
        local pct = name:sub(cut - 1, cut):find("%", 1, true)
        if pct then cut = cut - 2 + pct - 1 end
        name = name:sub(1, cut) .. "~" .. fnv1a(id)
    end
    return name .. ".log"
end

-- One kept line as the log file shows it: UTC time to the millisecond,
-- the task and its attempt, the line.
local function log_line(l)
    local t = l.time
    local sec = math.floor(t)
    return format("%s.%03dZ [%s #%d] %s\n", os.date("!%Y-%m-%dT%H:%M:%S", sec), math.floor((t - sec) * 1000),
                  tostring(l.task), l.attempt, l.line)
end

--- Writes the kept log lines of job `id` (ex:subscribe's `logs`, nil when
-- it kept none) to self.logs_dir/<M.log_name(id)> when it failed ("kind"
-- as Out:put returned it), or whatever its end with self.keep_logs. A job
-- without lines gets no file. Returns an error message or nil; after the
-- first error no further log file is tried (the results go on).
function Out:put_logs(id, kind, logs)
    local dir = self.logs_dir
    if not dir or not logs or #logs.lines == 0 or self.logs_error then return nil end
    if kind ~= "failed" and not self.keep_logs then return nil end
    if not self.logs_made then
        local ok, err = core.mkdir_p(dir)
        if not ok then
            self.logs_error = dir .. ": " .. tostring(err)
            return self.logs_error
        end
        self.logs_made = true
    end
    local path = dir .. "/" .. M.log_name(id)
    local f, err = io.open(path, "wb")
    if not f then
        self.logs_error = tostring(err)
        return self.logs_error
    end
    local parts = {}
    if logs.dropped > 0 then
        parts[1] = format("(%d earlier lines were dropped: a job keeps its last %d)\n", logs.dropped,
                          #logs.lines)
    end
    for _, l in ipairs(logs.lines) do parts[#parts + 1] = log_line(l) end
    local ok, werr = f:write(table.concat(parts))
    local cok, cerr = f:close()
    if not ok or not cok then
        self.logs_error = path .. ": " .. tostring(werr or cerr)
        return self.logs_error
    end
    return nil
end


--- Reports an input line that is not an input (malformed, too long): on
-- stderr, and as a record of rejects.jsonl under --output. `text` is the
-- line (nil when it was too long to keep). Returns a write error or nil.
function Out:reject(lineno, text, msg)
    io_stderr:write(format("tide: line %d: %s\n", lineno, msg))
    if not self.rejects then
        self.counts.rejected = self.counts.rejected + 1
        return nil
    end
    local parts
    if text == nil then
        parts = { '{"line":', lineno, ',"error":', enc(errors.utf8(msg)), '}' }
    else
        local t = enc(text)
        local extra = ""
        if not t then
            -- Not UTF-8: show it lossily, and keep the exact bytes.
            t = enc(errors.utf8(text)) or '""'
            extra = ',"base64":"' .. base64(text) .. '"'
        end
        parts = { '{"line":', lineno, ',"error":', enc(errors.utf8(msg)), ',"text":', t, extra, '}' }
    end
    local ok, err = self:_line(self.rejects, table.concat(parts))
    if not ok then return self:_failed_write(err) end
    self.pending.rejected = self.pending.rejected + 1
    return nil
end


--- Copies a line of the input, unread, to the failures that remain (a
-- re-run of failed.jsonl that was interrupted: its lines are failure
-- records already). Returns a write error or nil.
function Out:pass_through(line)
    local ok, err = self.failed:line(line)
    if not ok then return self:_failed_write(err) end
    return nil
end


--- Writes what waits in every file. Returns nil, or the first write
-- error (which stays: nothing more is written after it).
function Out:flush()
    if self.error then return self.error end
    local ws = self.writers
    if self.stdout then ws = { self.stdout } end
    for _, w in ipairs(ws) do
        local ok, err = w:flush()
        if not ok then return self:_failed_write(err) end
    end
    local c, p = self.counts, self.pending
    for k, n in pairs(p) do
        c[k] = c[k] + n
        p[k] = 0
    end
    return nil
end


--- What each file holds of this run, for the report of a write error:
-- "name: N lines" per file, joined.
function Out:written()
    local parts = {}
    for _, w in ipairs(self.stdout and { self.stdout } or self.writers) do
        local _, lines = w:stats()
        parts[#parts + 1] = format("%s: %d lines", w:name(), lines)
    end
    return table.concat(parts, ", ")
end


--- Flushes and closes every file. `complete` says the whole input was
-- consumed (run, or copied on): only then does a re-run's list of
-- remaining failures replace failed.jsonl. Returns nil or the first
-- error.
function Out:close(complete)
    local err = self:flush()
    for _, w in ipairs(self.writers) do
        local ok, cerr = w:close()
        if not ok then err = err or self:_failed_write(cerr) end
    end
    if self.failed_tmp then
        if complete and not err then
            local ok, rerr = os.rename(self.failed_tmp, self.failed_path)
            if not ok then err = self:_failed_write(rerr) end
        else
            os.remove(self.failed_tmp) -- failed.jsonl still lists every failure
        end
    end
    return err
end

return M
