--- The journal of a run (`tide run --journal FILE`): what makes a run
-- resumable after kill -9, power loss or Ctrl-C. The file is SQLite,
-- written in group commits by a thread of its own (src/journal.c); this
-- module decides what goes in and what a resume does with it.
--
-- What a run journals:
--   meta     format, pipeline (name, file, hash of the file's text), its
--            parameters and args (JSON), state
--            ("running", "finished"), exit code, "flushed" (below);
--   items    one per input that ended: kind "result" (status done, failed
--            or dropped) or "reject" (a line that was not an input), keyed
--            by the input's id ("#<line>" for a reject), holding the lines
--            it wrote ("file\ttext\n" each);
--   files    each output file's committed length at the last flush, and
--            meta "flushed": the last item whose lines those lengths hold;
--   checkpoints  the outputs of tasks marked checkpoint = true (and of the
--            steps before a failing one) of inputs that have not ended: a
--            resume gives them back instead of running those tasks.
--
-- A result is durable once its item is committed (within about 1 ms of
-- the end of its context). A resume cuts every file back to its recorded
-- length (dropping whatever a crash left after it, torn lines included),
-- writes again the lines of the items after "flushed", and runs only the
-- inputs whose ids have no item: so the files end exactly as after an
-- uninterrupted run, each input once.
local core = require "tide.core"

local format, tostring, tonumber = string.format, tostring, tonumber

local M = {}

local Journal = {}
Journal.__index = Journal


local function slurp(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end


local function remove_files(path)
    for _, suffix in ipairs({ "", "-wal", "-shm" }) do os.remove(path .. suffix) end
end


-- The parameters and args of a loaded pipeline as canonical JSON (keys
-- sorted), recorded in the journal so that a resume can check them.
local function params_text(p)
    return core.json.encode({ params = p.params or {}, args = p.args or {} }) or "?"
end
-- What a journal without the record (older than parameters) ran with.
local NO_PARAMS = core.json.encode({ params = {}, args = {} })


--- Opens the journal of a run of pipeline p (loaded from `file`) on
-- executor ex. opts.reset starts over (the old journal is removed).
-- @return the journal, or nil, message, exit code (2: it belongs to
--   another pipeline or a newer tide; 3: it cannot be opened or read)
function M.open(ex, path, p, file, opts)
    local text = slurp(file)
    if not text then return nil, ("--journal: cannot read the pipeline %s"):format(file), 3 end
    local hash = core.xxh128(text)
    local params = params_text(p)
    if opts.reset then remove_files(path) end
    local existed = core.stat(path) ~= nil
    local j, err = core.journal_open(ex:loop(), path)
    if not j then return nil, "--journal: " .. tostring(err), 3 end
    local ok, meta = pcall(j.map, j, "SELECT key, value FROM meta")
    if not ok then
        j:close()
        return nil, ("--journal %s: cannot read it: %s"):format(path, tostring(meta)), 3
    end
    local self = setmetatable({ j = j, path = path, meta = meta, last_item = 0 }, Journal)
    if existed and meta.format ~= nil then
        local fmt = tonumber(meta.format)
        if not fmt or fmt > core.journal_format then
            j:close()
            return nil, ("--journal %s was written by a newer tide (format %s; this tide reads format %d "
                         .. "and older)"):format(path, tostring(meta.format), core.journal_format), 2
        end
        local command = opts.command or "run"
        if meta.command ~= nil and meta.command ~= command then
            j:close()
            return nil, ("--journal %s is the journal of a `tide %s`, not of a `tide %s`")
                :format(path, tostring(meta.command), command), 2
        end
        if meta.pipeline_hash ~= hash then
            j:close()
            return nil, ("--journal %s belongs to another version of the pipeline: %s changed since "
                         .. "it was written (add --journal-reset to start over)"):format(path, file), 2
        end
        -- Other parameters would make another run: its inputs that ended
        -- did so under the old values, so a resume cannot mix the two.
        local had = meta.params or NO_PARAMS
        if had ~= params then
            j:close()
            return nil, ("--journal %s was written by a run with other parameters: %s then, %s now; a "
                         .. "resume needs the same --param, --param-file and -- args (or add "
                         .. "--journal-reset to start over)"):format(path, had, params), 2
        end
        self.resume = true
        self.finished = meta.state == "finished"
        -- The items of the runs before this one count as journaled: a
        -- resume writes again the lines of those after "flushed" before
        -- its first flush mark, so that mark, and every one until this
        -- run journals an item of its own, must name the last of them.
        -- From 0, a crash before this run's first item left a mark that
        -- made the next resume write every item's lines a second time
        -- into files that held them already.
        self.last_item = j:rows("SELECT coalesce(max(seq), 0) FROM items")[1][1]
        return self
    end
    local nitems = j:rows("SELECT count(*) FROM items")[1][1]
    if existed and nitems > 0 then
        j:close()
        return nil, ("--journal %s is not a tide journal"):format(path), 3
    end
    j:meta_put("format", tostring(core.journal_format))
    j:meta_put("command", opts.command or "run")
    j:meta_put("pipeline", p.name)
    j:meta_put("pipeline_file", file)
    j:meta_put("pipeline_hash", hash)
    j:meta_put("params", params)
    j:meta_put("state", "running")
    j:meta_put("created", tostring(os.time()))
    return self
end


--- The files and their committed lengths at the last flush.
function Journal:files()
    return self.j:map("SELECT name, length FROM files")
end


--- The keys of the inputs that ended (results and rejects): a resume
-- skips them.
function Journal:done_keys()
    return self.j:map("SELECT key, 1 FROM items WHERE kind IN ('result', 'reject')")
end


--- The counts of what ended, for the summary: done, failed, dropped,
-- rejected.
function Journal:counts()
    local c = { done = 0, failed = 0, rejected = 0, dropped = 0 }
    for _, row in ipairs(self.j:rows("SELECT kind, status, count(*) FROM items "
                                     .. "WHERE kind IN ('result', 'reject') GROUP BY kind, status")) do
        if row[1] == "reject" then
            c.rejected = c.rejected + row[3]
        elseif c[row[2]] then
            c[row[2]] = c[row[2]] + row[3]
        end
    end
    return c
end


--- Calls fn(lines) for each item after the last flush, in order: their
-- lines may be missing from the files.
function Journal:unflushed(fn)
    local upto = tonumber(self.meta.flushed) or 0
    for _, row in ipairs(self.j:rows("SELECT data FROM items WHERE seq > ? AND kind IN "
                                     .. "('result', 'reject') ORDER BY seq", upto)) do
        local err = fn(row[1] or "")
        if err then return err end
    end
    return nil
end


--- Journals the end of input `key` (status: done, failed, dropped) with
-- the lines it wrote.
function Journal:result(key, status, lines)
    self.last_item = self.j:item(key, "result", status, lines)
end


--- Journals a rejected line.
function Journal:reject(lineno, lines)
    self.last_item = self.j:item("#" .. lineno, "reject", nil, lines)
end


--- Journals a checkpointed task output of input `key` (JSON text).
function Journal:checkpoint(key, task, output_json)
    self.j:checkpoint(key, task, output_json)
end


--- Drops the checkpoints of input `key` (its result is journaled).
function Journal:forget(key)
    self.j:forget(key)
end


--- The checkpoints of inputs that did not end: key -> { task = JSON }.
function Journal:checkpoints()
    local out = {}
    for _, row in ipairs(self.j:rows("SELECT key, task, output FROM checkpoints")) do
        local t = out[row[1]]
        if not t then
            t = {}
            out[row[1]] = t
        end
        t[row[2]] = row[3]
    end
    return out
end


--- Records the files' lengths after a flush; they hold the lines of every
-- item journaled so far.
function Journal:flushed(lengths)
    self.j:flush_mark(lengths, self.last_item)
end


-- ===== tide serve =====
-- A server journals each accepted job (kind "job": its input as JSON, its
-- priority as the status) before it answers 201, and each result (kind
-- "result": the result record as JSON). A restart runs again the jobs
-- without a result; results are read back from the journal when the
-- memory store no longer has them. Schedules (p:schedule) journal their
-- jobs the same way, and the last fire each dealt with as a meta row.

--- Journals an accepted job; returns the sequence number to wait for.
function Journal:job(id, input_json, priority)
    return self.j:item(id, "job", priority, input_json)
end


--- Journals the result record of a job.
function Journal:job_result(id, status, record_json)
    return self.j:item(id, "result", status, record_json)
end


--- The accepted jobs that have no result, in the order they came:
-- { { id, priority, input_json }, ... }.
function Journal:unfinished_jobs()
    return self.j:rows("SELECT j.key, j.status, j.data FROM items j WHERE j.kind = 'job' AND NOT EXISTS "
                       .. "(SELECT 1 FROM items r WHERE r.key = j.key AND r.kind = 'result') ORDER BY j.seq")
end


--- What the journal knows of job id: "result", status, record_json; or
-- "job" (accepted, no result yet); or nil.
function Journal:lookup(id)
    local rows = self.j:rows("SELECT kind, status, data FROM items WHERE key = ? ORDER BY seq DESC LIMIT 1", id)
    local r = rows[1]
    if not r then return nil end
    return r[1], r[2], r[3]
end


--- The last fire time (Unix seconds) of schedule `name` that a server
-- of this journal dealt with (submitted or skipped), or nil: a restart
-- makes up the fires after it by the schedule's catchup policy.
function Journal:schedule_last(name)
    return tonumber(self.meta["schedule:" .. name])
end


--- Records that the fire of schedule `name` at Unix time t was dealt
-- with (a meta row "schedule:<name>", written after the fire's job).
function Journal:schedule_mark(name, t)
    self.meta["schedule:" .. name] = tostring(t)
    return self.j:meta_put("schedule:" .. name, tostring(t))
end


--- Calls fn(committed_seq) on the loop after each group commit.
function Journal:on_commit(fn)
    self.j:on_commit(fn)
end


--- The sequence number of the last operation on the device.
function Journal:committed()
    return self.j:committed()
end


--- Why writing the journal failed, or nil.
function Journal:error()
    return self.j:error()
end


--- Marks the run finished, with its exit code (a later run of the same
-- command only says so).
function Journal:finish(code)
    self.j:meta_put("exit_code", tostring(code))
    self.j:meta_put("state", "finished")
end


--- One line on how the journal kept up: items, commits, and how long a
-- result waited to be on the device (mean and worst).
function Journal:summary()
    local st = self.j:stats()
    return format("journal: %d operations in %d commits, on the device within %.1f ms on average "
                  .. "(at worst %.1f ms)", st.operations, st.commits, st.wait_mean * 1e3, st.wait_max * 1e3)
end


--- Commits what is queued and closes; returns nil or an error message.
function Journal:close()
    local ok, err = self.j:close()
    if not ok then return err end
    return nil
end


--- What a second run of a finished journal prints.
function Journal:finished_message()
    local c = self:counts()
    return format("the journal %s holds a finished run of '%s' (%d done, %d failed, %d rejected%s): "
                  .. "nothing to do (add --journal-reset to run it again)", self.path,
                  tostring(self.meta.pipeline), c.done, c.failed, c.rejected,
                  c.dropped > 0 and (", " .. c.dropped .. " dropped") or "")
end


function Journal:exit_code()
    return tonumber(self.meta.exit_code) or 0
end

return M
