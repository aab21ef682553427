--- Jobs on Redis addressed by id: `tide.executor{ redis = URL }`, the
-- queue behind `tide serve --redis`, `tide dlq`, and the trimming of the
-- jobs stream. The worker side (taking, renewing, committing) is in
-- tide.distributed; this module adds what any process does with a job
-- it knows by id: submit it once (an idempotency key), ask its status,
-- wait for its result, cancel it.
--
-- A job submitted by id has a stream of its own, its record:
--   tide:{NAME}:res:job:ID  first entry: state=queued, entry (the job's id
--                           in the jobs stream), hash; then exactly one
--                           result entry: id, status, value, ran
-- The job's `run` field in the jobs stream is "job:ID", so that the
-- worker's COMMIT (and the reaper's dead-letter move) appends the result
-- to this stream, fenced as for any run. The record expires `result_ttl`
-- after its result; until then the id is taken, which is what makes a
-- second submission of it return the first job.
local core = require "tide.core"
local errors = require "tide.errors"
local redis = require "tide.redis"
local distributed = require "tide.distributed"
local pipeline = require "tide.pipeline"

local json = core.json
local encode, decode = json.encode, json.decode
local format, tostring, type, setmetatable, pairs, ipairs = string.format, tostring, type, setmetatable, pairs, ipairs
local hrtime = core.hrtime

local M = {}

M.DEFAULT_RESULT_TTL = 24 * 3600 -- seconds
M.MAX_ID = 512                   -- bytes, as for `tide serve`
M.TRIM_EVERY = 5                 -- seconds between trims of the jobs stream

local GROUP = distributed.GROUP

-- Stream-entry fields as a table, inside scripts.
local FIELDS = [==[
local function fields(list)
  local t = {}
  for i = 1, #list, 2 do t[list[i]] = list[i + 1] end
  return t
end
]==]

-- KEYS: jobs, record. ARGV: id, run, hash, input (JSON), group. Adds
-- the job unless its id has a record: the check and the XADD are one
-- script, so two processes racing with one id make one job. The consumer
-- group is made with the stream when there is none yet (no worker ran).
-- Returns { 1 (new) or 0 (the first job), entry, last record entry id,
-- hash }.
M.SUBMIT = redis.script(FIELDS .. [==[
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if first then
  local f = fields(first[2])
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  return { 0, f.entry or '', last[1], f.hash or '' }
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[5], '0', 'MKSTREAM')
end
local e = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'run', ARGV[2], 'hash', ARGV[3], 'input', ARGV[4])
local m = redis.call('XADD', KEYS[2], '*', 'state', 'queued', 'entry', e, 'hash', ARGV[3])
return { 1, e, m, ARGV[3] }
]==])

-- KEYS: jobs, record. ARGV: group. Returns { status, value, ran, last
-- record entry id, hash, owner, logs }: status "unknown" (no record), "pending"
-- (in the stream, not taken), "running" (taken by worker `owner`), or
-- the result's "done", "failed", "cancelled".
M.STATUS = redis.script(FIELDS .. [==[
local all = redis.call('XRANGE', KEYS[2], '-', '+')
if #all == 0 then return { 'unknown' } end
local first = fields(all[1][2])
for i = #all, 1, -1 do
  local f = fields(all[i][2])
  if f.status then
    return { f.status, f.value or 'null', f.ran or '', all[i][1], first.hash or '', '', f.logs or '' }
  end
end
local last = all[#all][1]
local e = first.entry
local ok, pl = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], e or '0-0', e or '0-0', 1)
local p = ok and pl[1]
if p then return { 'running', '', '', last, first.hash or '', p[2] } end
return { 'pending', '', '', last, first.hash or '', '' }
]==])

-- KEYS: jobs, record, cancels. ARGV: group, id, error record (JSON),
-- ttl_ms. Writes the job's one result as cancelled and takes it out of
-- the jobs stream (acknowledged and deleted), so that a worker running
-- it finds it gone: its COMMIT is refused, and its renewal reports the
-- job lost (the worker cancels it then, if the cancels stream did not
-- tell it first). A job taken by a worker is announced on the cancels
-- stream, which keeps the last minute of them. Returns { "OK" },
-- { "ENOENT" } or { "EINVAL", status } for a job already finished.
M.CANCEL = redis.script(FIELDS .. [==[
local all = redis.call('XRANGE', KEYS[2], '-', '+')
if #all == 0 then return { 'ENOENT' } end
for i = #all, 1, -1 do
  local f = fields(all[i][2])
  if f.status then return { 'EINVAL', f.status } end
end
local e = fields(all[1][2]).entry
redis.call('XADD', KEYS[2], '*', 'id', ARGV[2], 'status', 'cancelled', 'value', ARGV[3], 'ran', '')
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if e then
  local ok, pl = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], e, e, 1)
  if ok and pl[1] then
    local now = redis.call('TIME')
    redis.call('XADD', KEYS[3], 'MINID', '~', (tonumber(now[1]) - 60) * 1000, '*', 'entry', e)
  end
  redis.call('XACK', KEYS[1], ARGV[1], e)
  redis.call('XDEL', KEYS[1], e)
end
return { 'OK' }
]==])

-- KEYS: jobs. ARGV: group. Trims the jobs stream by minimum id: every
-- entry older than the oldest one not finished (the oldest pending one,
-- or the first not yet delivered) goes. Entries are added with '*' and
-- delivered in order, so everything up to the group's last delivered id
-- that is not pending is finished. Never by length: a long queue is not
-- cut. Returns the number of entries removed.
M.TRIM = redis.script([==[
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local last
for _, g in ipairs(groups) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  if t.name == ARGV[1] then last = t['last-delivered-id'] end
end
if not last or last == '0-0' then return 0 end
-- The oldest pending entry is older than any not delivered (those come
-- after the last delivered one); with none pending, the first not
-- delivered, or else the id just after the last delivered.
local minid
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
if p[1] > 0 then
  minid = p[2]
else
  local nxt = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)[1]
  if nxt then
    minid = nxt[1]
  else
    local ms, sq = last:match('^(%d+)-(%d+)$')
    minid = ms .. '-' .. string.format('%d', tonumber(sq) + 1)
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
]==])

-- KEYS: dlq, jobs. ARGV: dead-letter entry, results key prefix. Queues a
-- dead-letter job again as a new entry (so its delivery count starts
-- from zero) and removes it from the dead-letter stream. A job known by
-- id gets a fresh record (its dead-letter failure goes). Returns the new
-- entry, or false when there is no such dead-letter entry.
M.DLQ_RETRY = redis.script(FIELDS .. [==[
local ent = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not ent then return false end
local f = fields(ent[2])
local e = redis.call('XADD', KEYS[2], '*', 'id', f.id or '', 'run', f.run or '', 'hash', f.hash or '',
                     'input', f.input or 'null')
redis.call('XDEL', KEYS[1], ARGV[1])
if f.run and f.run:sub(1, 4) == 'job:' then
  local k = ARGV[2] .. f.run
  redis.call('DEL', k)
  redis.call('XADD', k, '*', 'state', 'queued', 'entry', e, 'hash', f.hash or '')
end
return e
]==])


--- Checks a job id given by a caller (an idempotency key): nil when it
-- is good, else a message.
function M.check_id(id)
    if type(id) ~= "string" or id == "" then return "id must be a non-empty string" end
    if #id > M.MAX_ID then return format("id must be at most %d bytes, got %d", M.MAX_ID, #id) end
    if id:find("[%z\1-\31\127]") then return "id must not hold control characters" end
    return nil
end


-- A fresh job id: unique across processes (the wall clock, the pid, the
-- monotonic clock and a counter), readable in a URL.
local seq = 0
local function new_id()
    seq = seq + 1
    return format("%x-%x-%x-%x", os.time(), core.getpid(), math.floor(hrtime() * 1e6) % 0x7fffffff, seq)
end
M.new_id = new_id


--- The stream that tells workers which running jobs were cancelled.
function M.cancels_key(name)
    return "tide:{" .. name .. "}:cancels"
end


--- The record key of job id of pipeline name.
function M.record_key(name, id)
    return distributed.keys(name).res .. "job:" .. id
end


-- Decodes a result entry's value: the output, or an error record.
local function result_value(id, status, vtext)
    local v = decode(vtext or "null")
    if status == "done" then return v end
    if type(v) ~= "table" then v = { code = "ETASK", message = tostring(v) } end
    v.id = v.id or id
    return setmetatable(v, errors.mt)
end
M.result_value = result_value


-- ===== ASYNCHRONOUS OPERATIONS (callbacks on the client's loop) =====

--- Submits a job of pipeline name (hash: its file's) under id; fn(res) or
-- fn(nil, rec), res = { id, new = bool, entry, last, hash }.
function M.submit(cmd, name, hash, id, input_json, fn)
    local keys = distributed.keys(name)
    cmd:eval(M.SUBMIT, { keys.jobs, M.record_key(name, id) }, { id, "job:" .. id, hash, input_json, GROUP },
             function(v, rec)
        if rec then return fn(nil, rec) end
        fn({ id = id, new = v[1] == 1, entry = v[2], last = v[3], hash = v[4] })
    end)
end


--- fn(st) or fn(nil, rec): st = { status, value (decoded, for a finished
-- job), ran, last, hash, owner, logs (the lines a finished job kept, as
-- ex:logs gives them, or nil) }.
function M.status(cmd, name, id, fn)
    cmd:eval(M.STATUS, { distributed.keys(name).jobs, M.record_key(name, id) }, { GROUP }, function(v, rec)
        if rec then return fn(nil, rec) end
        local st = { status = v[1], last = v[4], hash = v[5] ~= "" and v[5] or nil, owner = v[6] }
        if v[1] == "done" or v[1] == "failed" or v[1] == "cancelled" then
            st.finished = true
            st.value_json = v[2]
            st.value = result_value(id, v[1], v[2])
            if v[3] and v[3] ~= "" then st.ran = decode(v[3]) end
            st.logs = distributed.logs_value(v[7])
        end
        fn(st)
    end)
end


--- fn(true) or fn(nil, rec): ENOENT (no such job), EINVAL (finished).
function M.cancel(cmd, name, id, ttl, fn)
    local err = errors.json(errors.new("ECANCELED", "job '" .. id .. "' was cancelled"), false)
    cmd:eval(M.CANCEL, { distributed.keys(name).jobs, M.record_key(name, id), M.cancels_key(name) },
             { GROUP, id, err, math.floor(ttl * 1000) }, function(v, rec)
        if rec then return fn(nil, rec) end
        if v[1] == "OK" then return fn(true) end
        if v[1] == "ENOENT" then return fn(nil, errors.new("ENOENT", "no job with id '" .. id .. "'")) end
        fn(nil, errors.new("EINVAL", "job '" .. id .. "' has already finished (" .. tostring(v[2]) .. ")"))
    end)
end


--- Trims pipeline name's jobs stream every `every` seconds on ex's loop
-- (see TRIM). Returns a function that stops it.
function M.trimmer(ex, cmd, name, every)
    local keys = distributed.keys(name)
    local busy = false
    local t = ex:timer(every or M.TRIM_EVERY, function()
        if busy then return end
        busy = true
        cmd:eval(M.TRIM, { keys.jobs }, { GROUP }, function() busy = false end)
    end)
    return function() t:close() end
end


-- ===== WAITING FOR RESULTS =====

local Waiter = {}
Waiter.__index = Waiter


--- What wakes those who wait for results: one blocking XREAD over the
-- records of every job waited for, on the connection blk (its own: the
-- read blocks it). A wait added while a read blocks ends that read
-- (CLIENT UNBLOCK, sent on cmd), so that the next read includes it: no
-- polling, and no wait for the read's BLOCK time.
function M.waiter(ex, cmd, blk)
    return setmetatable({ ex = ex, cmd = cmd, blk = blk, keys = {}, n = 0, reading = nil, blkid = nil },
                        Waiter)
end


--- Calls fn({ status, value, ran }) once job id's result is in its
-- record `key` after entry `last`. Returns a token for remove.
function Waiter:add(key, id, last, fn)
    local k = self.keys[key]
    if not k then
        k = { id = id, last = last, fns = {} }
        self.keys[key] = k
    end
    local token = { key = key, fn = fn }
    k.fns[token] = true
    self.n = self.n + 1
    if self.reading and not self.reading[key] and self.unblocking ~= self.reading then
        self.unblocking = self.reading
        self:_unblock(self.reading, 0)
    end
    self:_read()
    return token
end


-- Ends the blocking read `reading`, so that the next read covers a new
-- record. CLIENT UNBLOCK goes on the other connection and can reach Redis
-- before the read it is meant for (or before this connection's id is
-- known): when it ended nothing and that read still stands, it is sent
-- again 10 ms later, for at most a second (after that, the read's BLOCK
-- time ends it).
function Waiter:_unblock(reading, tries)
    if self.reading ~= reading or self.closed or tries > 100 then return end
    local function again()
        local t
        t = self.ex:timer(0.01, function()
            t:close()
            self:_unblock(reading, tries + 1)
        end)
    end
    if not self.blkid then return again() end
    self.cmd:send(function(v) if v == 0 then again() end end, "CLIENT", "UNBLOCK", self.blkid)
end


--- Stops a wait (the caller gave up). Returns whether it was waiting.
function Waiter:remove(token)
    local k = self.keys[token.key]
    if not k or not k.fns[token] then return false end
    k.fns[token] = nil
    self.n = self.n - 1
    if next(k.fns) == nil then self.keys[token.key] = nil end
    return true
end


function Waiter:close()
    self.closed = true
end


function Waiter:_read()
    if self.reading or self.n == 0 or self.closed then return end
    local args, keys, ids = { "XREAD", "COUNT", 16, "BLOCK", 10000, "STREAMS" }, {}, {}
    local reading = {}
    for key, k in pairs(self.keys) do
        keys[#keys + 1] = key
        ids[#ids + 1] = k.last
        reading[key] = true
    end
    for _, key in ipairs(keys) do args[#args + 1] = key end
    for _, i in ipairs(ids) do args[#args + 1] = i end
    self.reading = reading
    self.blk:send(function(v) self.blkid = v end, "CLIENT", "ID")
    self.blk:send_t(13, function(v, rec)
        self.reading = nil
        if self.closed then return end
        if rec then
            -- Redis away: again shortly (the client reconnects meanwhile).
            local t
            t = self.ex:timer(0.2, function()
                t:close()
                self:_read()
            end)
            return
        end
        for _, st in ipairs(v or {}) do
            local k = self.keys[st[1]]
            for _, ent in ipairs(st[2]) do
                if k then
                    k.last = ent[1]
                    local f = redis.pairs_to_table(ent[2])
                    if f.status then
                        local res = { status = f.status, value = result_value(k.id, f.status, f.value),
                                      value_json = f.value,
                                      ran = f.ran and f.ran ~= "" and decode(f.ran) or nil }
                        self.keys[st[1]] = nil
                        for token in pairs(k.fns) do
                            self.n = self.n - 1
                            token.fn(res)
                        end
                        k = nil
                    end
                end
            end
        end
        self:_read()
    end, unpack(args))
end


-- ===== THE DEAD-LETTER STREAMS: tide dlq =====

-- Runs ex's loop until fn_async calls back; returns what it gave.
local function sync(ex, fn_async)
    local got, a, b = false, nil, nil
    fn_async(function(x, y) got, a, b = true, x, y end)
    while not got do ex:turn(1) end
    return a, b
end
M.sync = sync


-- The pipeline names that have a dead-letter stream (SCAN, not KEYS:
-- it does not stop the server on a large keyspace), or nil, rec.
local function dlq_names(ex, cmd)
    local names, cursor = {}, "0"
    repeat
        local v, rec = sync(ex, function(cb) cmd:send(cb, "SCAN", cursor, "MATCH", "tide:{*}:dlq", "COUNT", 1000) end)
        if not v then return nil, rec end
        cursor = v[1]
        for _, k in ipairs(v[2]) do
            local n = k:match("^tide:{(.*)}:dlq$")
            if n then names[#names + 1] = n end
        end
    until cursor == "0"
    table.sort(names)
    return names
end


-- One dead-letter entry as a JSON line's fields.
local function dlq_record(name, ent, with_input)
    local f = redis.pairs_to_table(ent[2])
    local o = json.object({
        pipeline = name, entry = ent[1], id = f.id, deliveries = tonumber(f.deliveries),
        error = decode(f.error or "null"),
    })
    if f.run and f.run:sub(1, 4) == "job:" then o.submitted_by = "id" else o.run = f.run end
    if with_input then
        o.hash = f.hash
        o.input = decode(f.input or "null")
    end
    return o
end


--- tide dlq ACTION [ID] [--all] --redis URL [--pipeline NAME]: lists,
-- shows, queues again or drops dead-letter jobs. out(line) prints a
-- result line, say(text) a message for stderr. Returns an exit code
-- (0; 2 for an unknown id or a usage error; 3 when Redis fails).
function M.dlq_command(o, out, say)
    local ex = require("tide.executor").new { results = false, cache = false, concurrency = 1, threads = 1 }
    local cmd, cerr = distributed.connect_checked(ex, o.redis, 2)
    if not cmd then
        ex:close()
        say(cerr)
        return 3
    end
    local function finish(code)
        cmd:close()
        ex:close()
        return code
    end
    local names
    if o.pipeline_name then
        names = { o.pipeline_name }
    else
        local rec
        names, rec = dlq_names(ex, cmd)
        if not names then
            say("listing the dead-letter streams: " .. tostring(rec))
            return finish(3)
        end
    end
    -- Every dead-letter entry of those pipelines: { name, entry }.
    local all = {}
    for _, name in ipairs(names) do
        local v, rec = sync(ex, function(cb) cmd:send(cb, "XRANGE", distributed.keys(name).dlq, "-", "+") end)
        if not v then
            say("reading " .. distributed.keys(name).dlq .. ": " .. tostring(rec))
            return finish(3)
        end
        for _, ent in ipairs(v) do all[#all + 1] = { name, ent } end
    end
    local action = o.action
    if action == "list" then
        for _, x in ipairs(all) do out(encode(dlq_record(x[1], x[2], false))) end
        say(format("%d dead-letter jobs", #all))
        return finish(0)
    end
    -- The entries an ID names: a dead-letter entry id, or a job id (every
    -- entry of it: a line number of `tide run` may name several runs' jobs).
    local chosen = {}
    if o.all then
        chosen = all
    else
        for _, x in ipairs(all) do
            local f = redis.pairs_to_table(x[2][2])
            if x[2][1] == o.id or f.id == o.id then chosen[#chosen + 1] = x end
        end
        if #chosen == 0 then
            say(format("dlq %s: no dead-letter job '%s'%s (tide dlq list shows them)", action, o.id,
                       o.pipeline_name and (" in pipeline '" .. o.pipeline_name .. "'") or ""))
            return finish(2)
        end
    end
    if action == "show" then
        for _, x in ipairs(chosen) do out(encode(dlq_record(x[1], x[2], true))) end
        return finish(0)
    end
    local n = 0
    for _, x in ipairs(chosen) do
        local keys = distributed.keys(x[1])
        local v, rec
        if action == "retry" then
            v, rec = sync(ex, function(cb)
                cmd:eval(M.DLQ_RETRY, { keys.dlq, keys.jobs }, { x[2][1], keys.res }, cb)
            end)
        else
            v, rec = sync(ex, function(cb) cmd:send(cb, "XDEL", keys.dlq, x[2][1]) end)
        end
        if rec then
            say(format("dlq %s %s: %s", action, x[2][1], tostring(rec)))
            return finish(3)
        end
        if v and v ~= 0 then
            n = n + 1
            local f = redis.pairs_to_table(x[2][2])
            out(encode(json.object({ pipeline = x[1], entry = x[2][1], id = f.id,
                                     action = action == "retry" and "queued" or "dropped",
                                     queued_as = action == "retry" and v or nil })))
        end
    end
    say(format("%s %d dead-letter jobs", action == "retry" and "queued again" or "dropped", n))
    return finish(0)
end


--- A worker's ear for cancels: a blocking read of pipeline name's
-- cancels stream on a connection of its own; on_cancel(entry) for each
-- job cancelled from now on. Returns a function that stops it. An entry
-- missed (Redis away) is still noticed by the worker's lease renewal.
function M.cancel_listener(ex, url, name, on_cancel)
    local c = redis.connect(ex, url, { timeout = 15 })
    local key = M.cancels_key(name)
    local last, closed = "$", false
    local function read()
        if closed then return end
        c:send_t(13, function(v, rec)
            if closed then return end
            if rec and rec.code == "EREDIS" then
                -- An error reply (not a stream?): again in a while, not in
                -- a tight loop.
                local t
                t = ex:timer(0.5, function()
                    t:close()
                    read()
                end)
                return
            end
            -- A lost connection: read again at once; the command waits for
            -- the reconnect (and, pending, keeps the loop alive meanwhile).
            if rec then return read() end
            for _, st in ipairs(v or {}) do
                for _, ent in ipairs(st[2]) do
                    last = ent[1]
                    local f = redis.pairs_to_table(ent[2])
                    if f.entry then on_cancel(f.entry) end
                end
            end
            read()
        end, "XREAD", "BLOCK", 10000, "STREAMS", key, last)
    end
    read()
    return function()
        if closed then return end
        closed = true
        c:close()
    end
end


-- ===== THE EXECUTOR ON REDIS: tide.executor{ redis = URL } =====

local RExecutor = {}
RExecutor.__index = RExecutor
M.RExecutor = RExecutor

local OPTS = { redis = true, pipeline = true, result_ttl = true, timeout = true }


local function check_self(self, fname)
    if getmetatable(self) ~= RExecutor then
        error(fname .. ": call it as ex:" .. fname:match("[%w_]+$") .. "(...), with a colon", 3)
    end
    if self._closed then error(fname .. ": the executor is closed", 3) end
end


--- Makes an executor whose jobs run on `tide worker` processes.
-- opts: { redis = URL, pipeline = a pipeline or its name (for jobs this
-- executor did not submit), result_ttl = seconds results are kept (24 h),
-- timeout = seconds per Redis command (5) }.
-- @return the executor, or nil, rec when Redis cannot be reached
-- @raise on bad options or a bad URL
function M.new(opts)
    for k in pairs(opts) do
        if not OPTS[k] then
            error("tide.executor: unknown option '" .. tostring(k) .. "' with redis (redis, pipeline, "
                  .. "result_ttl, timeout)", 3)
        end
    end
    local ok, why = redis.parse_url(opts.redis)
    if not ok then error("tide.executor: redis: " .. why, 3) end
    local ttl = opts.result_ttl or M.DEFAULT_RESULT_TTL
    if type(ttl) ~= "number" or not (ttl > 0) or ttl == math.huge then
        error("tide.executor: result_ttl must be a number of seconds > 0", 3)
    end
    local timeout = opts.timeout or redis.DEFAULT_TIMEOUT
    if type(timeout) ~= "number" or not (timeout > 0) then
        error("tide.executor: timeout must be a number of seconds > 0", 3)
    end
    local pname = opts.pipeline
    if pipeline.is(pname) then pname = pname.name end
    if pname ~= nil and (type(pname) ~= "string" or pname == "") then
        error("tide.executor: pipeline must be a pipeline or its name", 3)
    end
    local executor = require "tide.executor"
    local ex = executor.new { results = false, cache = false, concurrency = 1, threads = 1 }
    local cmd, err = distributed.connect_checked(ex, opts.redis, math.min(timeout, 2))
    if not cmd then
        ex:close()
        return nil, errors.new("ECONN", err)
    end
    local blk = redis.connect(ex, opts.redis, { timeout = timeout })
    local self = setmetatable({
        _ex = ex, _cmd = cmd, _blk = blk, url = redis.redact(opts.redis), _ttl = ttl, _pname = pname,
        _names = {},   -- id -> pipeline name, for the jobs submitted here
    }, RExecutor)
    self._waiter = M.waiter(ex, cmd, blk)
    return self
end


-- Runs the loop until done() or the deadline (hrtime; nil: none).
function RExecutor:_until(done, deadline)
    local ex = self._ex
    while not done() do
        local left = deadline and (deadline - hrtime()) or 1
        if left <= 0 then return false end
        ex:turn(math.min(left, 1))
    end
    return true
end


-- Sends one command and runs the loop until its reply: value or nil, rec.
function RExecutor:_sync(fn_async)
    local got, v, r = false, nil, nil
    fn_async(function(a, b)
        got, v, r = true, a, b
    end)
    self:_until(function() return got end)
    return v, r
end


function RExecutor:_name(id, fname)
    local n = self._names[id] or self._pname
    if not n then
        error(fname .. ": job '" .. tostring(id) .. "' was not submitted by this executor: give the "
              .. "executor's pipeline option to reach jobs of other processes", 3)
    end
    return n
end


local function check_id_arg(fname, id)
    if type(id) == "number" then id = json.encode(id) end
    if type(id) ~= "string" or id == "" then error(fname .. ": id must be a non-empty string", 3) end
    return id
end


--- Submits input to pipeline p (loaded from a file: workers run the same
-- file, compared by its hash). opts.id is an idempotency key: a job with
-- that id already in Redis (its result kept for result_ttl) is returned
-- instead of a new one.
-- @return the id and true when the job is new (false: the first job's),
--   or nil, rec when Redis failed
-- @raise on a bad pipeline, id or option
function RExecutor:submit(p, input, opts)
    check_self(self, "ex:submit")
    if not pipeline.is(p) then
        error("ex:submit: argument 1 must be a pipeline (tide.pipeline), got " .. type(p), 2)
    end
    local hash = pipeline.version(p)
    if not hash then
        error("ex:submit: with redis, the pipeline must come from a file (tide.pipeline_file): workers "
              .. "run the same file", 2)
    end
    local id
    if opts ~= nil then
        if type(opts) ~= "table" then error("ex:submit: options must be a table, got " .. type(opts), 2) end
        for k in pairs(opts) do
            if k ~= "id" then error("ex:submit: unknown option '" .. tostring(k) .. "' with redis (id)", 2) end
        end
        id = opts.id
        if type(id) == "number" then id = json.encode(id) end
        if id ~= nil then
            local bad = M.check_id(id)
            if bad then error("ex:submit: " .. bad, 2) end
        end
    end
    id = id or new_id()
    local text, eerr = encode(input == nil and json.null or input)
    if not text then error("ex:submit: the input cannot be encoded as JSON: " .. tostring(eerr), 2) end
    local res, rec = self:_sync(function(cb) M.submit(self._cmd, p.name, hash, id, text, cb) end)
    if not res then return nil, rec end
    self._names[id] = p.name
    return id, res.new
end


-- The state of job id of pipeline `name` (M.status's st), or nil, rec:
-- ENOENT for an id Redis does not know, or Redis's failure.
function RExecutor:_known(name, id)
    local st, rec = self:_sync(function(cb) M.status(self._cmd, name, id, cb) end)
    if not st then return nil, rec end
    if st.status == "unknown" then return errors.fail("ENOENT", "no job with id '" .. id .. "'") end
    return st
end


--- The status of a job: "pending", "running", "done", "failed" or
-- "cancelled"; nil, rec (ENOENT for an unknown id, or Redis's failure).
function RExecutor:status(id)
    check_self(self, "ex:status")
    id = check_id_arg("ex:status", id)
    local name = self:_name(id, "ex:status")
    local st, rec = self:_known(name, id)
    if not st then return nil, rec end
    return st.status
end


--- The log lines a finished job kept (committed with its result by the
-- worker that ran it, up to its --log-lines): { id, lines, dropped },
-- as the local ex:logs. A job not finished yet has no lines here (they
-- stay on its worker until its result); nil, rec (ENOENT) for an
-- unknown id.
function RExecutor:logs(id)
    check_self(self, "ex:logs")
    id = check_id_arg("ex:logs", id)
    local name = self:_name(id, "ex:logs")
    local st, rec = self:_known(name, id)
    if not st then return nil, rec end
    local l = st.logs or { lines = {}, dropped = 0 }
    return { id = id, lines = l.lines, dropped = l.dropped }
end


--- Cancels a job, wherever it is: true, or nil, rec (ENOENT, EINVAL for
-- a finished job, or Redis's failure). A worker running it stops it at
-- its next renewal (within a third of its lease).
function RExecutor:cancel(id)
    check_self(self, "ex:cancel")
    id = check_id_arg("ex:cancel", id)
    local name = self:_name(id, "ex:cancel")
    local ok, rec = self:_sync(function(cb) M.cancel(self._cmd, name, id, self._ttl, cb) end)
    if not ok then return nil, rec end
    return true
end


--- The output of a job, waiting up to `timeout` seconds (nil: no limit)
-- for it; the loop runs meanwhile. Woken by a blocking read of the job's
-- record, not by polling.
-- @return output | nil, rec (EAGAIN when the wait expired, ENOENT for
--   an unknown id, the job's own error, or Redis's failure)
function RExecutor:result(id, timeout)
    check_self(self, "ex:result")
    id = check_id_arg("ex:result", id)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
        error("ex:result: timeout must be a number of seconds >= 0", 2)
    end
    local name = self:_name(id, "ex:result")
    local deadline = timeout and hrtime() + timeout
    local st, rec = self:_known(name, id)
    if not st then return nil, rec end
    if st.finished then
        if st.status == "done" then return st.value end
        return nil, st.value
    end
    local r
    local token = self._waiter:add(M.record_key(name, id), id, st.last, function(res) r = res end)
    self:_until(function() return r ~= nil end, deadline)
    if not r then
        self._waiter:remove(token)
        return errors.fail("EAGAIN", "job '" .. id .. "' has not finished yet")
    end
    if r.status == "done" then return r.value end
    return nil, r.value
end


--- Counters: { waits (results waited for), redis = the command client's }.
function RExecutor:stats()
    check_self(self, "ex:stats")
    return { waits = self._waiter.n, redis = self._cmd:stats() }
end


--- The loop's timer and run, as on a local executor.
function RExecutor:timer(s, fn) return self._ex:timer(s, fn) end
function RExecutor:loop() return self._ex:loop() end


--- Closes the clients and the executor's loop.
function RExecutor:close()
    if self._closed then return end
    self._closed = true
    self._waiter:close()
    self._cmd:close()
    self._blk:close()
    self._ex:close()
end

return M
