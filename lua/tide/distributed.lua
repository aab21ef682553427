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
-- has taken over). A reaper in every worker runs REAP: XAUTOCLAIM (not
-- JUSTID, so that deliveries are counted) of jobs idle longer than the
-- lease; a job delivered more than max_deliveries times goes to the
-- dead-letter stream with a failure result instead. COMMIT writes the
-- result and acknowledges the job in one script, only while the
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

-- The keys of a pipeline.
function M.keys(name)
    local base = "tide:{" .. name .. "}:"
    return { jobs = base .. "jobs", dlq = base .. "dlq", res = base .. "res:" }
end


-- KEYS: jobs, results. ARGV: group, consumer, entry, deliveries, id,
-- status, value, ran, ttl_ms. Returns 1 (committed), 0 (not pending any
-- more: committed or given up already) or -1 (another delivery owns it).
M.COMMIT = redis.script([==[
local e = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not e then return 0 end
if e[2] ~= ARGV[2] or e[4] ~= tonumber(ARGV[4]) then return -1 end
redis.call('XADD', KEYS[2], '*', 'id', ARGV[5], 'status', ARGV[6], 'value', ARGV[7], 'ran', ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
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

-- KEYS: jobs, dlq. ARGV: group, consumer, min_idle_ms, count,
-- max_deliveries, ttl_ms, results key prefix. Claims jobs idle past their
-- lease; returns { entry, fields, deliveries } of each one to run, after
-- moving those delivered too often to the dead-letter stream (with a
-- failure result for the run that submitted them).
M.REAP = redis.script([==[
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, ent in ipairs(r[2]) do
  local id, fields = ent[1], ent[2]
  local e = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  local n = e and e[4] or 0
  if n > tonumber(ARGV[5]) then
    local f = {}
    for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
    local err = cjson.encode({ code = 'EDELIVERY', message = 'the job was delivered ' .. n ..
      ' times and no worker finished it (each one stopped while running it); it is in the dead-letter stream' })
    redis.call('XADD', KEYS[2], '*', 'id', f.id or '', 'run', f.run or '', 'hash', f.hash or '',
               'input', f.input or 'null', 'deliveries', n, 'error', err)
    if f.run then
      local rk = ARGV[7] .. f.run
      redis.call('XADD', rk, '*', 'id', f.id or '', 'status', 'failed', 'value', err, 'ran', '')
      redis.call('PEXPIRE', rk, ARGV[6])
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
  else
    out[#out + 1] = { id, fields, n }
  end
end
return out
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
        return nil, format("cannot reach Redis at %s: %s", url, why and why.message or "no answer")
    end
    return c
end


-- ===== THE WORKER'S SOURCE AND SINK =====

local Source = {}
Source.__index = Source

local Sink = {}
Sink.__index = Sink


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
    local batch = math.min(opts.concurrency, 100)
    local src = setmetatable({
        queue = {}, head = 1, tail = 0, reading = false, closed = false, held = held,
        hash = opts.hash, warned = {}, last = 0,
    }, Source)
    local sink = setmetatable({
        jobs = {}, counts = { done = 0, failed = 0, rejected = 0, dropped = 0 },
        refused = 0, commit_errors = 0, held = held, exids = exids,
    }, Sink)
    sink.id_json = function(id) return id end

    local function push(entry, fields, deliveries)
        if held[entry] then return end -- already here (a reap of our own job)
        held[entry] = deliveries
        local t = src.tail + 1
        src.tail = t
        src.queue[t] = { entry = entry, fields = fields, deliveries = deliveries }
    end

    -- One blocking read of new jobs; another follows while the driver
    -- has room (see Source:take).
    function src.read()
        if src.reading or src.closed then return end
        src.reading = true
        blk:send_t(3, function(v, rec)
            src.reading = false
            if src.closed then return end
            if rec then
                if not src.down then
                    io_stderr:write("tide: worker: reading jobs: ", tostring(rec), "\n")
                    src.down = true
                end
                -- The client reconnects; the next read waits for it.
                return src.read_later()
            end
            src.down = false
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

    -- After a failed read: again in 0.2 s (a one-shot from a repeating
    -- timer).
    function src.read_later()
        local t
        t = ex:timer(0.2, function()
            t:close()
            src.read()
        end)
    end

    -- The reaper: jobs whose lease ran out come to this worker.
    local reaping = false
    local function reap()
        if reaping or src.closed then return end
        reaping = true
        cmd:eval(M.REAP, { keys.jobs, keys.dlq },
                 { M.GROUP, opts.consumer, lease_ms, batch, opts.max_deliveries, M.RESULT_TTL_MS, keys.res },
                 function(v, rec)
            reaping = false
            if rec then return end -- Redis is away: the next round tries again
            if #v == 0 or src.closed then return end
            io_stderr:write(format("tide: worker: took over %d jobs whose lease ran out\n", #v))
            for _, ent in ipairs(v) do push(ent[1], ent[2], ent[3]) end
            src.on_ready()
        end)
    end

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
            end
        end)
    end

    local reaper = ex:timer(math.min(0.5, opts.lease / 2), reap)
    local renewer = ex:timer(opts.lease / 3, renew)
    local function stop_timers()
        reaper:close()
        renewer:close()
    end

    src.ex, src.sink, src.exids, src.blk = ex, sink, exids, blk
    sink.cmd, sink.keys, sink.opts = cmd, keys, opts
    return src, sink, stop_timers
end


function Source:start(on_ready)
    self.on_ready = on_ready
    self.read()
    return true
end


--- The next job to run, or nil (then a read of new jobs starts: the
-- driver calls take only while it has room).
function Source:take()
    while true do
        local h = self.head
        if h > self.tail then
            self.read()
            return nil
        end
        local j = self.queue[h]
        self.queue[h] = nil
        self.head = h + 1
        local f = fields_table(j.fields)
        if f.hash ~= self.hash then
            -- Another version of the pipeline: never run here. Left
            -- unrenewed, it goes to another worker when its lease ends.
            self.held[j.entry] = nil
            if not self.warned[f.hash or ""] then
                self.warned[f.hash or ""] = true
                io_stderr:write(format("tide: worker: job %s was submitted with another version of the "
                                       .. "pipeline (hash %s, this worker runs %s): left for a worker that "
                                       .. "runs it\n", tostring(f.id), tostring(f.hash), self.hash))
            end
        elseif self.held[j.entry] == j.deliveries then
            local input = decode(f.input or "null")
            local exid = j.entry .. "/" .. j.deliveries
            self.sink.jobs[exid] = { entry = j.entry, deliveries = j.deliveries, id = f.id or "", run = f.run or "" }
            self.exids[j.entry] = exid
            self.last = self.last + 1
            return { id = exid, input = input, line = self.last }
        end
    end
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
end


--- Commits one result with COMMIT (the reply comes later: the client
-- keeps the loop running until it does). A cancelled job (a drain that
-- ran out of time, a lease lost) is not committed: it stays pending and
-- another delivery runs it.
function Sink:put(exid, status, value, ran)
    local job = self.jobs[exid]
    self.jobs[exid] = nil
    if not job then return "failed", nil end
    if self.exids[job.entry] == exid then self.exids[job.entry] = nil end
    if status == "cancelled" then
        self.held[job.entry] = nil
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
    local counts = self.counts
    self.cmd:eval(M.COMMIT, { self.keys.jobs, self.keys.res .. job.run },
                  { M.GROUP, self.opts.consumer, job.entry, job.deliveries, job.id, status, vtext,
                    rtext or "", M.RESULT_TTL_MS },
                  function(v, rec)
        if self.held[job.entry] == job.deliveries then self.held[job.entry] = nil end
        if rec then
            -- Not committed (Redis away or too slow): the job stays
            -- pending and runs again elsewhere when its lease ends.
            self.commit_errors = self.commit_errors + 1
            io_stderr:write("tide: worker: committing ", tostring(job.id), ": ", tostring(rec), "\n")
        elseif v == 1 then
            if status == "done" then counts.done = counts.done + 1 else counts.failed = counts.failed + 1 end
        else
            self.refused = self.refused + 1
        end
    end)
    return status, nil
end


function Sink:flush() return nil end
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


function Remote:_emit(id, status, value, ran)
    if not self.live[id] then
        self.duplicates = self.duplicates + 1
        return
    end
    self.live[id] = nil
    self.nlive = self.nlive - 1
    for _, fn in ipairs(self.subs) do fn(id, status, value, ran) end
end


-- Reads results while jobs are out (a blocking XREAD on its own
-- connection: no polling).
function Remote:_read()
    if self.reading or self.nlive == 0 then return end
    self.reading = true
    self.blk:send_t(3, function(v, rec)
        self.reading = false
        if rec then
            -- Redis away: the client reconnects, and the read is tried
            -- again after a short pause.
            local t
            t = self.ex:timer(0.2, function()
                t:close()
                self:_read()
            end)
            return
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
                self:_emit(f.id, status, value, ran)
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
    self.cmd:send(function(_, rec)
        if rec then self:_emit(id, "failed", rec) end
    end, "XADD", self.keys.jobs, "*", "id", id, "run", self.run_id, "hash", self.hash, "input", text)
    self:_read()
    return id
end


--- A job that is out cannot be taken back from the workers: it is
-- reported cancelled here, and its result, if one comes, is ignored.
function Remote:cancel(id)
    if self.live[id] then self:_emit(id, "cancelled", errors.new("ECANCELED", "the run was stopped")) end
end


function Remote:subscribe(fn) self.subs[#self.subs + 1] = fn end
function Remote:timer(s, fn) return self.ex:timer(s, fn) end
function Remote:signal(n, fn) return self.ex:signal(n, fn) end
function Remote:reader(path, fn) return self.ex:reader(path, fn) end
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
