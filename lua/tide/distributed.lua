--- Distributed runs on Redis Streams: the job source and result sink of
-- `tide worker`, and the executor stand-in of `tide run --redis` that
-- submits jobs to Redis and collects their results. Both plug into
-- drive.lua through the seams docs/architecture.md describes; nothing
-- here runs a task.
--
-- Layout (NAME is the pipeline's name; the braces are a Redis Cluster
-- hash tag, so that every key of a pipeline is in one slot):
--   tide:{NAME}:jobs        stream of jobs: id, run, hash, input (JSON)
--                           consumer group "workers"
--   tide:{NAME}:res:RUN     stream of the results of one submitting run:
--                           id, status, value (JSON), ran (JSON or "")
--   tide:{NAME}:dlq         stream of jobs given up after max_deliveries
--
-- A job's lease is its idle time in the group's pending list. A worker
-- renews the leases of the jobs it holds with RENEW, which checks that it
-- still owns each one (a bare XCLAIM would take back a job another worker
-- has taken over). A reaper in every worker runs REAP: it looks at the
-- jobs idle longer than the lease (XPENDING IDLE) and claims those of its
-- pipeline version with XCLAIM, counting a delivery. A dead worker's
-- jobs run again together, at full parallelism; from their third
-- delivery (M.alone_from) they are claimed one at a time and run alone,
-- so that a job that kills every worker it runs on has only its own
-- deliveries counted from then on, and the jobs that died with it twice
-- end at delivery 3, short of max_deliveries. A job delivered more than
-- max_deliveries times goes to the dead-letter stream with a failure
-- result instead. A job of another version is passed on (PASS, and REAP
-- after a lease with no taker), and ends in the dead-letter stream when
-- no worker of its version takes it. COMMIT writes the results of a loop
-- turn and acknowledges their jobs in one script, each only while the
-- committing worker still owns that delivery (owner and delivery count),
-- so a late duplicate never adds a second result.
local core = require "tide.core"
local errors = require "tide.errors"
local redis = require "tide.redis"

local json = core.json
local encode, decode = json.encode, json.decode
local format, tostring, pairs, setmetatable = string.format, tostring, pairs, setmetatable
local io_stderr = io.stderr

local M = {}

M.GROUP = "workers"
M.DEFAULT_LEASE = 10
M.DEFAULT_MAX_DELIVERIES = 5
M.RESULT_TTL_MS = 24 * 3600 * 1000
-- Times `tide run --redis` sends a job whose submission got no reply.
M.SUBMIT_ATTEMPTS = 5

-- The keys of a pipeline.
function M.keys(name)
    local base = "tide:{" .. name .. "}:"
    return { jobs = base .. "jobs", dlq = base .. "dlq", res = base .. "res:" }
end


-- KEYS: jobs. ARGV: group, consumer, ttl_ms, results key prefix, then
-- for each job eight values: entry, deliveries, id, run, status, value,
-- ran, logs (the job's kept log lines as JSON, or "" for none: then the
-- result has no logs field). Commits every job the consumer still owns in that delivery:
-- appends its result to its run's result stream, then acknowledges and
-- deletes all of them at once. Returns one code per job: 1 (committed),
-- 0 (not pending any more: committed or given up already) or -1
-- (another delivery owns it).
M.COMMIT = redis.script([==[
local g, me, ttl, pre = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out, acked, runs, seen = {}, {}, {}, {}
for i = 5, #ARGV, 8 do
  local entry = ARGV[i]
  local e = not seen[entry] and redis.call('XPENDING', KEYS[1], g, entry, entry, 1)[1]
  seen[entry] = true
  local r = 0
  if e then
    if e[2] ~= me or e[4] ~= tonumber(ARGV[i + 1]) then
      r = -1
    else
      local rk = pre .. ARGV[i + 3]
      if ARGV[i + 7] == '' then
        redis.call('XADD', rk, '*', 'id', ARGV[i + 2], 'status', ARGV[i + 4], 'value', ARGV[i + 5],
                   'ran', ARGV[i + 6])
      else
        redis.call('XADD', rk, '*', 'id', ARGV[i + 2], 'status', ARGV[i + 4], 'value', ARGV[i + 5],
                   'ran', ARGV[i + 6], 'logs', ARGV[i + 7])
      end
      runs[rk] = true
      acked[#acked + 1] = entry
      r = 1
    end
  end
  out[#out + 1] = r
end
if #acked > 0 then
  redis.call('XACK', KEYS[1], g, unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
end
for rk in pairs(runs) do redis.call('PEXPIRE', rk, ttl) end
return out
]==])

-- KEYS: jobs. ARGV: group, consumer, then entry, deliveries pairs.
-- Resets the idle time of each job the consumer still owns in that
-- delivery; returns the entries it does not own any more.
M.RENEW = redis.script([==[
local lost = {}
for i = 3, #ARGV, 2 do
  local e = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if e and e[2] == ARGV[2] and e[4] == tonumber(ARGV[i + 1]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
]==])

-- KEYS: jobs, dlq. ARGV: group, consumer, min_idle_ms, scan (entries to
-- look at, at most), max_deliveries, ttl_ms, results key prefix, hash
-- (of this worker's pipeline file), pass_idle_ms, count, alone (see
-- M.alone_from).
--
-- Looks at the jobs idle past their lease (XPENDING IDLE, which claims
-- nothing) and claims those of this worker's pipeline version with
-- XCLAIM, setting their delivery count one higher (RETRYCOUNT: the
-- count of a delivery, as XAUTOCLAIM without JUSTID would). A job whose
-- delivery count is then below `alone` is claimed with others, up to
-- `count` (two reads' worth), and runs with them: a job
-- never run (count 0: a worker of another version passed it on, see
-- PASS), or a job whose worker died once while holding it (count 1: it
-- ran there, or only waited there, read ahead). A job that reaches
-- `alone` was held by workers that died twice: it is claimed alone, when
-- nothing else was, and runs alone (see Source:take), so that if it is
-- the one that kills its workers, no other job's delivery is counted for
-- it from then on.
--
-- A job of another version is left to the workers of that version; once
-- it has been idle for pass_idle_ms (none of them took it within its
-- lease), this worker claims it too (counted) and leaves it idle again:
-- a pass. A job delivered more than max_deliveries times goes to the
-- dead-letter stream, with a failure result for the run that submitted
-- it: EVERSION "no worker with pipeline hash X" when its last delivery
-- was a pass, EDELIVERY "delivered N times" otherwise. Giving up takes
-- no room, so it happens whatever `count` is.
--
-- Returns { jobs, notes }: jobs = { { entry, fields, deliveries }... }
-- (either jobs to run together, or one job to run alone); notes = { {
-- id, hash, deliveries, given_up (0|1), passed (0|1) }... } for the
-- worker's log.
M.REAP = redis.script([==[
local g, me, idle, scan = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local maxd, ttl, pre, hash, pass_idle = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local count, alone = tonumber(ARGV[10]), tonumber(ARGV[11])
local jobs, notes = {}, {}
local function give_up(id, f, n, err)
  redis.call('XADD', KEYS[2], '*', 'id', f.id or '', 'run', f.run or '', 'hash', f.hash or '',
             'input', f.input or 'null', 'deliveries', n, 'error', err)
  if f.run then
    local rk = pre .. f.run
    redis.call('XADD', rk, '*', 'id', f.id or '', 'status', 'failed', 'value', err, 'ran', '')
    redis.call('PEXPIRE', rk, ttl)
  end
  redis.call('XACK', KEYS[1], g, id)
  redis.call('XDEL', KEYS[1], id)
end
local function claim(id, n)
  redis.call('XCLAIM', KEYS[1], g, me, idle, id, 'JUSTID', 'RETRYCOUNT', n)
end
local start, looked = '-', 0
while looked < scan do
  local page = redis.call('XPENDING', KEYS[1], g, 'IDLE', idle, start, '+', 100)
  if #page == 0 then break end
  for _, p in ipairs(page) do
    looked = looked + 1
    local id, pidle, n = p[1], p[3], p[4]
    local after = n + 1
    -- A job that could not be claimed now (no room for it, or one to
    -- run alone after others were claimed) is skipped without reading
    -- it, unless it is past max_deliveries or may be another version's
    -- job to pass on.
    local need = after > maxd or pidle >= pass_idle or (after < alone and #jobs < count)
      or (after >= alone and #jobs == 0)
    local ent = need and redis.call('XRANGE', KEYS[1], id, id)[1]
    if ent == false then
      -- Skipped.
    elseif not ent then
      -- Deleted from the stream while pending: nothing to run.
      redis.call('XACK', KEYS[1], g, id)
    else
      local fields, f = ent[2], {}
      for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
      if f.hash == hash then
        if after > maxd then
          claim(id, after)
          give_up(id, f, after, cjson.encode({ code = 'EDELIVERY', message = 'the job was delivered ' .. after
            .. ' times and no worker finished it (each one stopped while running it); it is in the '
            .. 'dead-letter stream' }))
          notes[#notes + 1] = { f.id or '', f.hash or '', after, 1, 0 }
        elseif after < alone then
          if #jobs < count then
            claim(id, after)
            jobs[#jobs + 1] = { id, fields, after }
          end
        elseif #jobs == 0 then
          claim(id, after)
          return { { { id, fields, after } }, notes }
        end
      elseif pidle >= pass_idle then
        claim(id, after)
        if after > maxd then
          give_up(id, f, after, cjson.encode({ code = 'EVERSION', message = 'no worker with pipeline hash '
            .. (f.hash or '?') .. ' took the job within ' .. after .. ' deliveries (workers of other '
            .. 'versions passed it on); it is in the dead-letter stream' }))
          notes[#notes + 1] = { f.id or '', f.hash or '', after, 1, 1 }
        else
          notes[#notes + 1] = { f.id or '', f.hash or '', after, 0, 1 }
        end
      end
    end
    if looked >= scan or (count > 0 and #jobs >= count) then break end
  end
  if count > 0 and #jobs >= count then break end
  start = '(' .. page[#page][1]
end
return { jobs, notes }
]==])

--- The delivery count from which a job taken over runs alone, for a
-- worker whose jobs go to the dead-letter stream after max_deliveries.
-- A worker that dies takes down every job it holds, the one that killed
-- it (if a job did) and the innocent ones running or waiting with it.
-- Run together up to delivery 2, a job is counted for at most two such
-- deaths of other jobs' making; from delivery 3 it runs alone, so it
-- dies only of itself. An innocent job therefore ends at delivery 3 at
-- most, within the default max_deliveries of 5, while the jobs of a
-- worker that died once (its read-ahead included) run again at full
-- parallelism. With max_deliveries 2, delivery 3 would be past the
-- limit: jobs run alone from delivery 2 (a dead worker's jobs then run
-- one at a time). With max_deliveries 1 a job is never delivered twice:
-- every job a dead worker held goes to the dead-letter stream.
function M.alone_from(max_deliveries)
    return math.max(2, math.min(3, max_deliveries))
end

-- KEYS: jobs. ARGV: group, consumer, idle_ms, then entries: jobs of
-- another version of the pipeline, read by this worker and never run.
-- Each one this consumer still holds in its first delivery is given the
-- idle time idle_ms (so that the next reaper round of a worker of its
-- version takes it) and the delivery count 0 (it never ran: that worker
-- runs it as a first delivery, not alone).
M.PASS = redis.script([==[
for i = 4, #ARGV do
  local e = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if e and e[2] == ARGV[2] and e[4] == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID', 'RETRYCOUNT', 0)
  end
end
return 0
]==])


--- The hash of a pipeline file's text (what jobs carry and workers
-- compare), or nil, message.
function M.pipeline_hash(path)
    local f, err = io.open(path, "rb")
    if not f then return nil, err end
    local text = f:read("*a")
    f:close()
    return core.xxh128(text)
end


local function fields_table(list)
    return redis.pairs_to_table(list)
end


-- Creates the consumer group (and the stream) unless it exists; then
-- fn(true) or fn(nil, rec).
local function ensure_group(client, keys, fn)
    client:send(function(_, rec)
        if rec and not (rec.code == "EREDIS" and rec.message:find("^BUSYGROUP")) then return fn(nil, rec) end
        fn(true)
    end, "XGROUP", "CREATE", keys.jobs, M.GROUP, "0", "MKSTREAM")
end


--- Connects to Redis at url on executor ex and checks that it answers
-- (running ex's loop until it does or `timeout` seconds pass). Returns
-- the client, or nil and a message.
function M.connect_checked(ex, url, timeout)
    local c, rec = redis.connect(ex, url, { timeout = timeout, connect_timeout = timeout })
    if not c then return nil, rec.message end
    local ok, why
    c:send(function(v, r)
        ok = v == "PONG"
        why = r
    end, "PING")
    ex:run()
    if not ok then
        c:close()
        return nil, format("cannot reach Redis at %s: %s", redis.redact(url), why and why.message or "no answer")
    end
    return c
end


-- ===== THE WORKER'S SOURCE AND SINK =====

local Source = {}
Source.__index = Source

local Sink = {}
Sink.__index = Sink

-- Jobs one COMMIT carries at most (8 arguments each, under the client's
-- limit of 1024 arguments a command).
M.COMMIT_BATCH = 120
-- Entries of the pending list one reaper round looks at, at most.
M.REAP_SCAN = 1000


--- The job source and result sink of `tide worker`.
-- @param ex the executor that runs the jobs
-- @param opts { url, name, hash, consumer, concurrency, lease, max_deliveries,
--   cmd = the command client, blk = the client for blocking reads }
-- @return source, sink, and a function that stops the worker's timers
function M.worker(ex, opts)
    local keys = M.keys(opts.name)
    local cmd, blk = opts.cmd, opts.blk
    local lease_ms = math.floor(opts.lease * 1000)
    local held = {}      -- entry -> deliveries, for every job this worker holds
    local exids = {}     -- entry -> the executor id of the job running it
    local batch = math.min(opts.concurrency, 1000)
    local src = setmetatable({
        queue = {}, head = 1, tail = 0, reading = false, closed = false, held = held,
        hash = opts.hash, warned = {}, last = 0, batch = batch,
        suspect = nil,   -- the job taken over from the reaper, run alone
        streak = 0,      -- jobs taken over since the reaper last found none
        warned_alone = false, -- this streak's log said that jobs run alone
    }, Source)
    local sink = setmetatable({
        jobs = {}, njobs = 0, counts = { done = 0, failed = 0, rejected = 0, dropped = 0 },
        refused = 0, commit_errors = 0, held = held, exids = exids, src = src,
        pending = {}, npending = 0, flush_timer = nil,
    }, Sink)
    sink.id_json = function(id) return id end

    local function push(entry, fields, deliveries)
        if held[entry] then return end -- already here
        held[entry] = deliveries
        local t = src.tail + 1
        src.tail = t
        src.queue[t] = { entry = entry, fields = fields, deliveries = deliveries }
    end

    -- A job taken over: it goes before the jobs read and waiting.
    local function push_front(entry, fields, deliveries)
        if held[entry] then return end
        held[entry] = deliveries
        local h = src.head - 1
        src.head = h
        src.queue[h] = { entry = entry, fields = fields, deliveries = deliveries }
    end

    -- One blocking read of new jobs; another follows while the driver
    -- has room (see Source:take). None while a job taken over waits to
    -- run alone.
    function src.read()
        if src.reading or src.closed or src.suspect then return end
        src.reading = true
        blk:send_t(3, function(v, rec)
            src.reading = false
            if src.closed then return end
            if rec then
                if rec.code == "ECLOSED" then return end
                if not src.down then
                    io_stderr:write("tide: worker: reading jobs: ", tostring(rec), "\n")
                    src.down = true
                end
                -- The client reconnects, and the next read waits for it
                -- (up to its time limit): a command that waits keeps the
                -- loop running, where a timer would not.
                return src.read()
            end
            if src.down then
                io_stderr:write("tide: worker: reading jobs again\n")
                src.down = false
            end
            local got = 0
            if v then
                for _, ent in ipairs(v[1][2]) do
                    push(ent[1], ent[2], 1)
                    got = got + 1
                end
            end
            if got == 0 then return src.read() end
            src.on_ready()
        end, "XREADGROUP", "GROUP", M.GROUP, opts.consumer, "COUNT", batch, "BLOCK", 1000,
           "STREAMS", keys.jobs, ">")
    end

    -- The reaper: jobs whose lease ran out come to this worker (REAP).
    -- Those whose delivery count stays below `alone` come up to two
    -- reads' worth a round (twice a second) and go to the front of the
    -- queue: they have waited longest. A worker holds up to
    -- --concurrency running jobs and one and a half reads waiting, so two
    -- rounds (of one live worker, or one each of two) take over all that
    -- a dead worker held, within lease + 1 s, and they run again at the
    -- live workers' full parallelism. One that reaches `alone` comes by
    -- itself and runs alone, and the next is claimed as soon as it is
    -- committed.
    local alone = M.alone_from(opts.max_deliveries)
    local reap_count = math.min(2 * batch, M.REAP_SCAN)
    local reaping = false
    local function reap()
        if reaping or src.closed or src.suspect then return end
        reaping = true
        cmd:eval(M.REAP, { keys.jobs, keys.dlq },
                 { M.GROUP, opts.consumer, lease_ms, M.REAP_SCAN, opts.max_deliveries, M.RESULT_TTL_MS,
                   keys.res, opts.hash, 2 * lease_ms + 1000, reap_count, alone },
                 function(v, rec)
            reaping = false
            if rec then return end -- Redis is away: the next round tries again
            for _, n in ipairs(v[2]) do
                local id, hash, deliveries, given_up = n[1], n[2], n[3], n[4] == 1
                if n[5] == 1 then
                    io_stderr:write(format("tide: worker: job %s is for pipeline hash %s, and no worker with "
                                           .. "that hash took it within its lease (delivery %d)%s\n",
                                           id, hash, deliveries,
                                           given_up and ": moved to the dead-letter stream" or
                                           ": left for a worker with that hash"))
                else
                    io_stderr:write(format("tide: worker: job %s was delivered %d times without finishing: "
                                           .. "moved to the dead-letter stream\n", id, deliveries))
                end
            end
            local jobs = v[1]
            if #jobs == 0 then
                if src.streak > 1 then
                    io_stderr:write(format("tide: worker: took over %d jobs in all\n", src.streak))
                end
                src.streak = 0
                src.warned_alone = false
                return
            end
            if src.closed then return end
            local first = jobs[1]
            if src.streak == 0 or (first[3] >= alone and not src.warned_alone) then
                io_stderr:write(format("tide: worker: took over job %s whose lease ran out (delivery %d)%s\n",
                                       tostring(fields_table(first[2]).id), first[3],
                                       first[3] >= alone and format("; jobs delivered %d times or more run "
                                                                    .. "alone, one at a time", alone) or ""))
                if first[3] >= alone then src.warned_alone = true end
            end
            src.streak = src.streak + #jobs
            if first[3] >= alone then
                held[first[1]] = first[3]
                src.suspect = { entry = first[1], fields = first[2], deliveries = first[3] }
            else
                -- Run with the jobs read (never run, or held by one
                -- worker that died), before them, in their order.
                for i = #jobs, 1, -1 do push_front(jobs[i][1], jobs[i][2], jobs[i][3]) end
            end
            src.on_ready()
        end)
    end
    src.reap = reap

    -- Lease renewal of every job held (running or waiting here).
    local renewing = false
    local function renew()
        if renewing then return end
        local args, n = { M.GROUP, opts.consumer }, 2
        for entry, deliveries in pairs(held) do
            args[n + 1], args[n + 2] = entry, deliveries
            n = n + 2
        end
        if n == 2 then return end
        renewing = true
        cmd:eval(M.RENEW, { keys.jobs }, args, function(lost, rec)
            renewing = false
            if rec then return end
            for _, entry in ipairs(lost) do
                -- Another worker has it now: stop running it here (its
                -- commit would be refused anyway).
                held[entry] = nil
                local exid = exids[entry]
                if exid then ex:cancel(exid) end
                if src.suspect and src.suspect.entry == entry and not src.suspect.running then
                    src.suspect = nil
                end
            end
        end)
    end

    local reaper = ex:timer(math.min(0.5, opts.lease / 2), reap)
    local renewer = ex:timer(opts.lease / 3, renew)
    local function stop_timers()
        reaper:close()
        renewer:close()
        if sink.flush_timer then
            sink.flush_timer:close()
            sink.flush_timer = nil
        end
    end

    src.ex, src.sink, src.exids, src.blk = ex, sink, exids, blk
    sink.cmd, sink.keys, sink.opts, sink.ex = cmd, keys, opts, ex
    return src, sink, stop_timers
end


function Source:start(on_ready)
    self.on_ready = on_ready
    self.read()
    return true
end


-- Hands a job to the driver: its record for the sink, its executor id.
function Source:_start_job(j, f)
    local exid = j.entry .. "/" .. j.deliveries
    local sink = self.sink
    sink.jobs[exid] = { entry = j.entry, deliveries = j.deliveries, id = f.id or "", run = f.run or "" }
    sink.njobs = sink.njobs + 1
    self.exids[j.entry] = exid
    self.last = self.last + 1
    return { id = exid, input = decode(f.input or "null"), line = self.last }
end


-- A job of another version of the pipeline, read here: never run here.
-- PASS makes it idle past its lease at once, so that the reaper of a
-- worker of its version takes it on its next round; with none, the
-- reapers pass it on and it ends in the dead-letter stream (REAP).
function Source:_pass(j, f)
    self.held[j.entry] = nil
    local s = self.sink
    s.cmd:eval(M.PASS, { s.keys.jobs }, { M.GROUP, s.opts.consumer, math.floor(s.opts.lease * 1000), j.entry },
               function() end)
    if not self.warned[f.hash or ""] then
        self.warned[f.hash or ""] = true
        io_stderr:write(format("tide: worker: job %s was submitted with another version of the "
                               .. "pipeline (hash %s, this worker runs %s): left for a worker that "
                               .. "runs it\n", tostring(f.id), tostring(f.hash), self.hash))
    end
end


--- The next job to run, or nil (then a read of new jobs starts: the
-- driver calls take only while it has room). A job taken over by the
-- reaper at delivery M.alone_from or later (self.suspect) runs alone:
-- no new jobs are read while it waits, and it starts once every other
-- job this worker held is committed, so that if it kills the worker, no
-- other job's delivery is counted for it.
function Source:take()
    while true do
        local h = self.head
        if h > self.tail then break end
        local j = self.queue[h]
        self.queue[h] = nil
        self.head = h + 1
        local f = fields_table(j.fields)
        if f.hash ~= self.hash then
            self:_pass(j, f)
        elseif self.held[j.entry] == j.deliveries then
            -- Reading ahead: the next jobs are on their way while these
            -- run, once fewer than half a read are left here.
            if self.tail - self.head < self.batch / 2 then self.read() end
            return self:_start_job(j, f)
        end
    end
    local s = self.suspect
    if not s then
        self.read()
        return nil
    end
    if s.running then return nil end
    local held = self.held
    local first = next(held)
    if first == s.entry and next(held, first) == nil then
        s.running = true
        return self:_start_job(s, fields_table(s.fields))
    end
    return nil
end


function Source:done() return self.closed and self.head > self.tail end
function Source:last_line() return self.last end
function Source:pass_rest() end


--- Stops taking jobs. Jobs read but not started are left to their
-- leases (another worker takes them when they run out).
function Source:close()
    if self.closed then return end
    self.closed = true
    -- The blocking read ends now rather than at its BLOCK time; jobs it
    -- may have been handed stay pending and go elsewhere after the lease.
    self.blk:close()
    for i = self.head, self.tail do
        local j = self.queue[i]
        self.queue[i] = nil
        self.held[j.entry] = nil
    end
    self.head = self.tail + 1
    local s = self.suspect
    if s and not s.running then
        self.held[s.entry] = nil
        self.suspect = nil
    end
end


-- After the job of entry left this worker (committed, refused,
-- cancelled): a job taken over that waits to run alone may start now; one
-- that ran alone lets the reaper claim the next one and new reads start.
function Sink:_left(entry)
    local src = self.src
    local s = src.suspect
    if not s then return end
    if s.entry == entry then
        src.suspect = nil
        src.reap()
    end
    if not src.closed then src.on_ready() end
end


-- Sends the pending results in one COMMIT.
function Sink:_commit()
    local batch, n = self.pending, self.npending
    if n == 0 then return end
    self.pending, self.npending = {}, 0
    local args = { M.GROUP, self.opts.consumer, M.RESULT_TTL_MS, self.keys.res }
    local a = 4
    for i = 1, n do
        local c = batch[i]
        local job = c.job
        args[a + 1], args[a + 2], args[a + 3], args[a + 4] = job.entry, job.deliveries, job.id, job.run
        args[a + 5], args[a + 6], args[a + 7], args[a + 8] = c.status, c.vtext, c.rtext, c.ltext
        a = a + 8
    end
    local counts = self.counts
    self.cmd:eval(M.COMMIT, { self.keys.jobs }, args, function(v, rec)
        if rec then
            -- Not committed (Redis away or too slow): the jobs stay
            -- pending and run again elsewhere when their leases end (or
            -- the commit ran and its reply was lost: then they are done).
            self.commit_errors = self.commit_errors + n
            io_stderr:write(format("tide: worker: committing %d results: %s\n", n, tostring(rec)))
        end
        for i = 1, n do
            local c = batch[i]
            local job = c.job
            if self.held[job.entry] == job.deliveries then self.held[job.entry] = nil end
            local r = not rec and v[i]
            if r == 1 then
                if c.status == "done" then counts.done = counts.done + 1 else counts.failed = counts.failed + 1 end
            elseif r then
                self.refused = self.refused + 1
            end
        end
        for i = 1, n do self:_left(batch[i].job.entry) end
    end)
end


--- Queues one result for COMMIT. The results of one loop turn leave in
-- one script call, sent on the next turn (a one-shot timer), or at once
-- when no other job runs here (then nothing else would keep the loop
-- going) or the batch is full; the reply comes later (the client keeps
-- the loop running until it does). A cancelled job (a drain that ran out
-- of time, a lease lost) is not committed: it stays pending and another
-- delivery runs it.
function Sink:put(exid, status, value, ran, _, logs)
    local job = self.jobs[exid]
    if not job then return "failed", nil end
    self.jobs[exid] = nil
    self.njobs = self.njobs - 1
    if self.exids[job.entry] == exid then self.exids[job.entry] = nil end
    if status == "cancelled" then
        if self.held[job.entry] == job.deliveries then self.held[job.entry] = nil end
        self:_left(job.entry)
        return "cancelled", nil
    end
    local vtext, rtext
    if status == "done" then
        vtext = encode(value)
        if ran ~= nil then rtext = encode(ran) end
        if vtext == nil or (ran ~= nil and rtext == nil) then
            status, value = "failed", errors.new("EVALUE", "the output cannot be encoded")
        end
    end
    if status ~= "done" then
        if not errors.is(value) then value = errors.new("ETASK", tostring(value)) end
        vtext, rtext = errors.json(value, true), nil
    end
    local n = self.npending + 1
    self.npending = n
    -- The lines the job kept travel with its result (tide run --redis
    -- writes them to DIR/logs, GET /v1/jobs/ID/logs answers them).
    local ltext = logs and #logs.lines > 0 and encode(logs) or ""
    self.pending[n] = { job = job, status = status, vtext = vtext, rtext = rtext or "", ltext = ltext }
    if n >= M.COMMIT_BATCH or self.njobs == 0 then
        self:_commit()
    elseif not self.flush_timer then
        self.flush_timer = self.ex:timer(0.001, function()
            self.flush_timer:close()
            self.flush_timer = nil
            self:_commit()
        end)
    end
    return status, nil
end


function Sink:flush()
    self:_commit()
    return nil
end

function Sink:close() return nil end
function Sink:written() return "" end


-- The name of this host (for consumer names).
local function hostname()
    local f = io.open("/proc/sys/kernel/hostname")
    local h = f and f:read("*l")
    if f then f:close() end
    return h or os.getenv("HOSTNAME") or "host"
end


-- What both sides do first: the pipeline file's hash, a command client
-- that answered, a client for blocking reads, and the consumer group.
local function open_common(ex, url, p, path)
    local hash, herr = M.pipeline_hash(path)
    if not hash then return nil, tostring(herr) end
    local cmd, err = M.connect_checked(ex, url, 2)
    if not cmd then return nil, err end
    local blk = redis.connect(ex, url, { timeout = 5 })
    local keys = M.keys(p.name)
    local gok, grec
    ensure_group(cmd, keys, function(ok, rec) gok, grec = ok, rec end)
    ex:run()
    if not gok then
        cmd:close()
        blk:close()
        return nil, "creating the consumer group of " .. keys.jobs .. ": " .. tostring(grec)
    end
    return hash, cmd, blk
end


--- Sets up `tide worker`: returns { consumer, hash, source, sink,
-- close() }, or nil and a message (Redis cannot be reached: exit 3).
-- o: { concurrency, lease, max_deliveries }
function M.open_worker(ex, url, p, path, o)
    local hash, cmd, blk = open_common(ex, url, p, path)
    if not hash then return nil, cmd end
    local consumer = format("%s-%d", hostname(), core.getpid())
    local src, sink, stop = M.worker(ex, {
        name = p.name, hash = hash, consumer = consumer, concurrency = o.concurrency, lease = o.lease,
        max_deliveries = o.max_deliveries, cmd = cmd, blk = blk,
    })
    return {
        consumer = consumer, hash = hash, source = src, sink = sink,
        close = function()
            stop()
            cmd:close()
            blk:close()
        end,
    }
end


--- Sets up `tide run --redis`: returns the executor stand-in, or nil and
-- a message (Redis cannot be reached: exit 3).
function M.open_remote(ex, url, p, path)
    local hash, cmd, blk = open_common(ex, url, p, path)
    if not hash then return nil, cmd end
    return M.remote(ex, { name = p.name, hash = hash, cmd = cmd, blk = blk })
end


--- Decodes the logs field of a result entry (distributed.lua's COMMIT):
-- { lines = { {time, task, attempt, line}... }, dropped = n }, or nil
-- when it has none or it is not of that shape (written by something
-- else than a worker).
function M.logs_value(text)
    if type(text) ~= "string" or text == "" then return nil end
    local v = decode(text)
    if type(v) ~= "table" or type(v.lines) ~= "table" then return nil end
    local lines = {}
    for i, l in ipairs(v.lines) do
        if type(l) ~= "table" or type(l.time) ~= "number" or type(l.attempt) ~= "number"
            or type(l.line) ~= "string" then
            return nil
        end
        lines[i] = { time = l.time, task = tostring(l.task), attempt = l.attempt, line = l.line }
    end
    return { lines = lines, dropped = type(v.dropped) == "number" and v.dropped or 0 }
end



-- ===== THE SUBMITTING SIDE (tide run --redis) =====

local Remote = {}
Remote.__index = Remote


--- An executor stand-in for drive.run that runs jobs on workers: submit
-- adds a job to the stream, and results come back through subscribe, read
-- from this run's result stream. Timers, signals and readers are those of
-- the local executor ex (whose loop carries the clients).
-- @param opts { name, hash, cmd, blk }
function M.remote(ex, opts)
    local keys = M.keys(opts.name)
    -- Unique enough across submitting processes: the wall clock, the
    -- monotonic clock in microseconds and a random number.
    local run = format("%d-%.0f-%d", os.time(), core.hrtime() * 1e6, math.random(1, 1e9))
    local self = setmetatable({
        ex = ex, keys = keys, run_id = run, reskey = keys.res .. run, cmd = opts.cmd, blk = opts.blk,
        hash = opts.hash, live = {}, nlive = 0, subs = {}, last = "0-0", reading = false,
        duplicates = 0,
    }, Remote)
    return self
end


function Remote:_emit(id, status, value, ran, logs)
    if not self.live[id] then
        self.duplicates = self.duplicates + 1
        return
    end
    self.live[id] = nil
    self.nlive = self.nlive - 1
    for _, fn in ipairs(self.subs) do fn(id, status, value, ran, logs) end
end


-- Reads results while jobs are out (a blocking XREAD on its own
-- connection: no polling).
function Remote:_read()
    if self.reading or self.nlive == 0 then return end
    self.reading = true
    self.blk:send_t(3, function(v, rec)
        self.reading = false
        if rec then
            if rec.code == "ECLOSED" then return end
            -- Redis away: the client reconnects, and the read sent now
            -- waits for it (a command that waits keeps the loop running,
            -- so the run cannot end while jobs are out).
            if not self.down then
                io_stderr:write("tide: reading results: ", tostring(rec), "\n")
                self.down = true
            end
            return self:_read()
        end
        if self.down then
            io_stderr:write("tide: reading results again\n")
            self.down = false
        end
        if v then
            for _, ent in ipairs(v[1][2]) do
                self.last = ent[1]
                local f = fields_table(ent[2])
                local status, value, ran = f.status, decode(f.value or "null"), nil
                if status == "done" then
                    if f.ran and f.ran ~= "" then ran = decode(f.ran) end
                else
                    value = setmetatable(value or {}, errors.mt)
                end
                self:_emit(f.id, status, value, ran, M.logs_value(f.logs))
            end
        end
        self:_read()
    end, "XREAD", "COUNT", 1000, "BLOCK", 1000, "STREAMS", self.reskey, self.last)
end


function Remote:submit(_, input, opts)
    local id = opts.id
    local text = encode(input) or "null"
    self.live[id] = true
    self.nlive = self.nlive + 1
    self:_add(id, text, 1)
    self:_read()
    return id
end


-- Adds a job to the stream. A submission that failed because the
-- connection was lost or Redis did not answer in time is sent again (the
-- client waits for the connection): it may have been added already, and
-- then the job runs twice, but only its first result is kept (_emit).
function Remote:_add(id, text, attempt)
    self.cmd:send(function(_, rec)
        if not rec or not self.live[id] then return end
        if rec.code ~= "EREDIS" and rec.code ~= "ECLOSED" and attempt < M.SUBMIT_ATTEMPTS then
            return self:_add(id, text, attempt + 1)
        end
        self:_emit(id, "failed", rec)
    end, "XADD", self.keys.jobs, "*", "id", id, "run", self.run_id, "hash", self.hash, "input", text)
end


--- A job that is out cannot be taken back from the workers: it is
-- reported cancelled here, and its result, if one comes, is ignored.
function Remote:cancel(id)
    if self.live[id] then self:_emit(id, "cancelled", errors.new("ECANCELED", "the run was stopped")) end
end


function Remote:subscribe(fn) self.subs[#self.subs + 1] = fn end
function Remote:timer(s, fn) return self.ex:timer(s, fn) end
function Remote:signal(n, fn) return self.ex:signal(n, fn) end
function Remote:reader(path, fn, max_line) return self.ex:reader(path, fn, max_line) end
function Remote:run() return self.ex:run() end


--- Removes this run's result stream (its results are in the files now)
-- and closes the clients.
function Remote:finish()
    self.cmd:send(function() end, "DEL", self.reskey)
    self.ex:run()
    self.cmd:close()
    self.blk:close()
end

return M
