--- `tide serve` and tide.serve(p, opts): the HTTP/JSON job API on the
-- executor's loop (docs/http.md; the design: docs/architecture.md). Routes:
--   POST   /v1/jobs[?wait=S]        submit {"id"?, "input", "priority"?}
--   GET    /v1/jobs/{id}            status
--   GET    /v1/jobs/{id}/result[?wait=S]   long-poll for the result
--   GET    /v1/jobs/{id}/logs       the job's kept ctx.log and print lines
--   DELETE /v1/jobs/{id}            cancel
--   GET    /healthz, GET /metrics
--   GET    /                        the dashboard (tide.graph.html)
--   GET    /v1/stats                what the dashboard shows, as JSON
--   POST   /v1/admin/reload         load the pipeline's file again
local core = require "tide.core"
local pipeline = require "tide.pipeline"
local executor = require "tide.executor"
local errors = require "tide.errors"
local record = require "tide.record"
local cron = require "tide.cron"
local schedule = require "tide.schedule"

local json = core.json
local format, tostring, type, ipairs = string.format, tostring, type, ipairs
local find, sub = string.find, string.sub
local hrtime = core.hrtime

local M = {}

local MAX_WAIT = 300
local MAX_ID = 512       -- bytes: a longer id would not fit in a request line
local MAX_PENDING = 100000
local MAX_PENDING_BYTES = 256 * 1048576
local RETRY_AFTER = "1"  -- seconds a client refused with 503 should wait
-- Host names a server without a token answers (with any port): a page
-- from elsewhere that rebinds its own name to 127.0.0.1 sends its name.
local LOOPBACK = { ["localhost"] = true, ["127.0.0.1"] = true, ["[::1]"] = true }
local NFAILURES = 20     -- recent failures kept for the dashboard
-- The last log lines a failure entry of /v1/stats carries: the page polls
-- it every second, so all of a job's lines stay at /v1/jobs/ID/logs.
local FAILURE_LOG_LINES = 10
local EVICTED_KEPT = 100000 -- evicted ids remembered (410 rather than 404), at least
local LAG_EVERY = 0.25   -- seconds between loop-lag samples
-- Seconds between the checks of long-poll deadlines: a poll whose wait
-- ends is answered 202 within this much before its end.
local POLL_TICK = 0.01
-- Versions whose jobs /v1/stats and /metrics list one by one: the current
-- one and the last ones before it that still have counts (a server that
-- reloads every minute must not grow its metrics without bound).
local MAX_VERSIONS = 20
-- Paths answered to GET only, and what answers them.
local GET_ONLY = { ["/metrics"] = "metrics", ["/"] = "page", ["/v1/stats"] = "stats" }


-- JSON text of v, or nil and why (a string that is not UTF-8, a function
-- in an output): respond() turns that into a 500 with a JSON error.
local function enc(v) return json.encode(v) end


-- A Prometheus label value: backslash, quote and newline escaped.
local function label(v)
    return (tostring(v):gsub('[\\"]', "\\%0"):gsub("\n", "\\n"))
end


-- Appends the samples of one histogram series to `out` (label set and
-- value pairs): cumulative _bucket lines for every bound and +Inf, then
-- _sum and _count. `open` is the label set's start ('{' or '{k="v",').
local function histogram(out, open, hist, sum, bounds)
    local total = 0
    for k = 1, #hist do
        total = total + hist[k]
        local le = k < #hist and format("%g", bounds[k]) or "+Inf"
        out[#out + 1] = "_bucket" .. open .. 'le="' .. le .. '"}'
        out[#out + 1] = format("%d", total)
    end
    local plain = open == "{" and "" or (open:sub(1, -2) .. "}")
    out[#out + 1] = "_sum" .. plain
    out[#out + 1] = format("%.9g", sum)
    out[#out + 1] = "_count" .. plain
    out[#out + 1] = format("%d", total)
end


local function jerr(code, message)
    local body = enc(json.object({ error = json.object({ code = code, message = message }) }))
    if body then return body end
    -- The message quotes bytes that are not UTF-8 (an id such as %ff in a
    -- URL): they are shown as \xHH so that the error is still JSON.
    message = message:gsub("[\128-\255]", function(c) return format("\\x%02X", c:byte()) end)
    return (enc(json.object({ error = json.object({ code = code, message = message }) })))
end


-- Constant-time comparison of the token (no early exit on a mismatch).
local function same_token(a, b)
    if type(a) ~= "string" or type(b) ~= "string" then return false end
    local diff = #a == #b and 0 or 1
    for i = 1, #b do
        local x = a:byte((i - 1) % math.max(#a, 1) + 1) or 0
        diff = bit.bor(diff, bit.bxor(x, b:byte(i)))
    end
    return diff == 0
end


-- The value of the first `name=value` pair of a query string (nil when
-- there is none): pairs split at '&', a pair at its first '='. A pair
-- whose key is `name` starts right after an '&' (or at the start) with
-- `name=`: plain finds, no pattern iterator and no loop (a loop that
-- returns from its first turn makes the JIT give up on the function), on
-- every request. A `=name=` (a pair with an empty key before it) takes
-- the pattern's reading, as it always did.
local function query_param(query, name)
    if query == "" then return nil end
    if find(query, "=" .. name .. "=", 1, true) then
        -- An empty key before it ("a&=wait=3"): the pattern's reading.
        for k, v in query:gmatch("([^&=]+)=([^&]*)") do
            if k == name then return v end
        end
        return nil
    end
    local at = find(query, name .. "=", 1, true)
    if at ~= 1 then
        at = find("&" .. query, "&" .. name .. "=", 1, true)
        if not at then return nil end
    end
    local from = at + #name + 1
    local amp = find(query, "&", from, true)
    return sub(query, from, amp and amp - 1 or -1)
end


-- The seconds a request's ?wait= asks for: 0 without one, at most
-- MAX_WAIT; nil, message when it is not a number >= 0.
local function wait_param(query)
    local w = query_param(query, "wait")
    if w == nil then return 0 end
    local n = tonumber(w)
    if not n or n < 0 then return nil, "wait must be a number of seconds >= 0" end
    return math.min(n, MAX_WAIT)
end


local function unescape(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end


-- True when a Host header (or an Origin's host) names this server: a
-- loopback name or one of `allowed`, with or without a port.
local function host_allowed(value, allowed)
    if type(value) ~= "string" then return false end
    local name = value:lower():match("^(%[[%x:.]+%])%:?%d*$") or value:lower():match("^([^:]+):?%d*$")
    return name ~= nil and (LOOPBACK[name] or allowed[name]) == true
end


-- Checks a whole-number option of tide.serve (nil: the default).
local function check_count(opts, key, default)
    local v = opts[key]
    if v == nil then return default end
    if type(v) ~= "number" or v < 1 or v ~= math.floor(v) then
        error("tide.serve: " .. key .. " must be a whole number >= 1, got " .. tostring(v), 3)
    end
    return v
end


--- Starts serving pipeline p. opts: listen ("127.0.0.1:8080"; port 0:
-- any), token (Bearer token, nil: no auth), executor (default: a new one),
-- max_body (bytes, 1 MiB), retention (s, 3600), max_results (100000) and
-- cache (the result cache's file) for the executor it makes (evictions
-- give 410). A server keeps results
-- for clients to fetch, and each costs some 400 bytes of RSS (measured:
-- 390 MB with a million kept), so its default count is lower than an
-- executor's. max_pending (100000) and max_pending_bytes (256 MiB of
-- request bodies) bound the jobs submitted through the server and not
-- finished: past either, POST /v1/jobs answers 503 with Retry-After and
-- submits nothing (838 000 queued jobs had taken 972 MB). Without a token
-- only loopback Host names are answered, and allow_host (a name or a
-- list) adds others. listen = false makes a server without a socket,
-- fed through server.feed (for the fuzz target and specs).
-- Returns the server: server.port, server:close(), server:drain(t, done).
function M.serve(p, opts)
    opts = opts or {}
    local listen = opts.listen
    if listen == nil then listen = "127.0.0.1:8080" end
    local host, port
    if listen ~= false then
        host, port = tostring(listen):match("^%[?([^%]]*)%]?:(%d+)$")
        if not host or tonumber(port) > 65535 then
            error("tide.serve: listen must be HOST:PORT, got " .. tostring(listen), 2)
        end
    end
    local max_pending = check_count(opts, "max_pending", MAX_PENDING)
    local max_pending_bytes = check_count(opts, "max_pending_bytes", MAX_PENDING_BYTES)
    local evicted_kept = check_count(opts, "evicted_kept", EVICTED_KEPT)
    local allowed = {}
    local hosts = opts.allow_host
    if type(hosts) == "string" then hosts = { hosts } end
    if hosts ~= nil and type(hosts) ~= "table" then
        error("tide.serve: allow_host must be a host name or a list of them", 2)
    end
    for _, h in ipairs(hosts or {}) do
        if type(h) ~= "string" or not (h:match("^[%w][%w%.%-]*$") or h:match("^%[[%x:.]+%]$")) then
            error("tide.serve: allow_host must be a host name (no port) or a list of them, got "
                  .. tostring(h), 2)
        end
        allowed[h:lower()] = true
    end
    p:compile()
    -- The version of the pipeline new jobs run (the hash of its file's
    -- text; nil for a pipeline not loaded from a file). A reload replaces
    -- p and version; each job keeps the pipeline it was submitted with.
    local version = pipeline.version(p)
    local ex = opts.executor or executor.new {
        retention = opts.retention, max_results = opts.max_results or 100000, threads = opts.threads,
        cache = opts.cache, memory_limit = opts.memory_limit, results = "json",
    }
    local token = opts.token
    local started = hrtime()
    -- The ids whose results were evicted, to answer 410 rather than 404:
    -- at least the last EVICTED_KEPT, in two generations (a full one is
    -- dropped whole, so nothing is removed id by id). Like jobver below,
    -- they live outside the Lua heap: see there.
    local evicted_new, evicted_old = core.idset(), core.idset()
    local counts = { submitted = 0, done = 0, failed = 0, cancelled = 0 }
    -- Jobs submitted here and not finished, the bytes of their requests,
    -- and the submissions refused because either was at its bound.
    local pending, pending_bytes, refused = 0, 0, 0
    local mine = {} -- id -> request bytes, for the jobs submitted here and not finished
    -- Long-polls (see long_poll): the job each waiting connection waits
    -- for, the status its answer takes when the job ends, the connection
    -- (or list of them) waiting for each job, and how many wait.
    local poll_id, poll_status, poll_seq, pollers, nwatchers = {}, {}, {}, {}, 0
    -- Per-request phase times (TIDE_SERVE_PHASES=1, docs/benchmarks.md):
    -- off, nothing below reads the clock for them.
    local phases = opts.phases
    if phases == nil then phases = os.getenv("TIDE_SERVE_PHASES") == "1" end
    local t_submitted = phases and {} or nil -- id -> when it was submitted
    local failures, nfail = {}, 0 -- ring of the last NFAILURES failed jobs
    -- id -> version, for the jobs submitted here whose results are kept
    -- (an eviction drops the entry), and the counts of each version. The
    -- ids live in a C map (core.idmap) with the index of their version
    -- in vnames: as a Lua table, this map of up to --max-results ids,
    -- changed by every job, was traversed whole in the atomic step of
    -- each collector cycle, and with the evicted ids made pauses of
    -- 10-25 ms (docs/benchmarks.md). A job enters it when it finishes:
    -- until then its version is in livever, a Lua table as small as the
    -- jobs in flight. The job that finished last is remembered apart
    -- (done_id, done_ver): its answer, which follows at once for a
    -- ?wait, needs no call into C.
    local jobvers, vnames, vindex = core.idmap(), {}, {}
    local livever = {}
    local done_id, done_ver
    local function jobver(id)
        local v = livever[id]
        if v then return v end
        if id == done_id then return done_ver end
        local k = jobvers:get(id)
        return k and vnames[k]
    end
    -- A finished job of this server: its version goes to the kept ones.
    local function keep_version(id)
        local v = livever[id]
        if v == nil then return nil end
        livever[id] = nil
        local k = vindex[v]
        if not k then
            k = #vnames + 1
            vnames[k], vindex[v] = v, k
        end
        jobvers:put(id, k)
        done_id, done_ver = id, v
        return v
    end
    local versions, vorder = {}, {}
    local reloads = { ok = 0, failed = 0 }
    local function version_counts(v)
        local c = versions[v]
        if not c then
            c = { version = v, submitted = 0, done = 0, failed = 0, cancelled = 0, in_flight = 0,
                  loaded = os.time() }
            versions[v] = c
            vorder[#vorder + 1] = v
            -- Forget the oldest versions with nothing in flight.
            local k = 1
            while #vorder > MAX_VERSIONS and k <= #vorder do
                local old = versions[vorder[k]]
                if old.in_flight == 0 and vorder[k] ~= v then
                    versions[vorder[k]] = nil
                    table.remove(vorder, k)
                else
                    k = k + 1
                end
            end
        end
        return c
    end
    local VKEY = version or "none" -- the counts key of a pipeline without a file
    version_counts(VKEY)
    -- Books a job submitted here under the current version.
    local function book(id)
        livever[id] = VKEY
        local c = version_counts(VKEY)
        c.submitted, c.in_flight = c.submitted + 1, c.in_flight + 1
    end
    local srv
    ex:timing(true)
    ex:prepare(p) -- so that its per-task counts exist before the first job
    local bounds = ex:hist_bounds()

    -- Loop lag: how late a repeating timer fires. A sample per LAG_EVERY
    -- seconds, kept as a histogram over the same buckets as durations.
    local lag = { hist = {}, sum = 0, last = 0 }
    for k = 1, #bounds + 1 do lag.hist[k] = 0 end
    local lag_prev = hrtime()
    local lag_timer = ex:timer(LAG_EVERY, function()
        local now = hrtime()
        local late = math.max(0, now - lag_prev - LAG_EVERY)
        lag_prev = now
        local k = 1
        while bounds[k] and late > bounds[k] do k = k + 1 end
        lag.hist[k] = lag.hist[k] + 1
        lag.sum, lag.last = lag.sum + late, late
    end)

    -- Answers with a JSON body; a body that could not be encoded (why
    -- says what) gives a 500 with a JSON error, never an empty body.
    local function respond(conn, status, body, why)
        if body == nil then
            status = 500
            body = jerr("EVALUE", "the answer cannot be encoded as JSON: " .. tostring(why))
        end
        srv:respond(conn, status, body)
    end

    local jr = opts.journal
    local schedules_json -- defined with the schedules, below; used by stats_body

    -- A job's result record: from memory, or from the journal once the
    -- memory store let it go (or the server restarted).
    local function finished_body(id)
        -- A table output comes as the JSON text the store keeps (not
        -- decoded to be encoded again), another as its value.
        local status, out, value = ex:finished_json(id)
        if status then
            local v = jobver(id)
            if status == "done" and v and v ~= "none" then
                -- The common answer, built in one concatenation.
                out = out or json.encode(value)
                if out then
                    return '{"id":' .. record.id(id) .. ',"status":"done","output":' .. out
                        .. ',"version":"' .. v .. '"}'
                end
            end
            if out then value = json.decode(out) end
            local body = record.encode(id, status, value, true)
            -- The record is a JSON object: the version goes in as its last
            -- field (a job of a pipeline without a file has none).
            if body and v and v ~= "none" then body = body:sub(1, -2) .. ',"version":"' .. v .. '"}' end
            return body
        end
        if jr then
            local kind, _, rec = jr:lookup(id)
            if kind == "result" then return rec end
        end
        return nil
    end
    local function result_body(id)
        return finished_body(id)
    end

    -- The kept log lines of a job this server knows. A job known only to
    -- the journal (its result evicted from memory, or run before a
    -- restart) has none left: the journal does not keep log lines.
    local function logs_body(id)
        local l = ex:logs(id)
        local lines = {}
        for i, x in ipairs(l and l.lines or lines) do
            lines[i] = json.object({ time = x.time, task = x.task, attempt = x.attempt, line = x.line })
        end
        return enc(json.object({ id = id, lines = setmetatable(lines, json.array_mt),
                                 dropped = l and l.dropped or 0 }))
    end

    -- The status of a job this server knows, in memory or in the journal.
    local function status_of(id)
        local st = ex:status(id)
        if st then return st end
        if jr then
            local kind, status = jr:lookup(id)
            if kind == "result" then return status end
            if kind == "job" then return "pending" end
        end
        return "unknown"
    end

    -- Whether this server knows job id (running, kept, or journaled).
    local function known(id)
        return ex:has(id) or (jr ~= nil and jr:lookup(id) ~= nil)
    end

    -- Answers that wait for the journal: { seq, fn } in seq order; run
    -- once the journal's group commit has reached seq.
    local acks, ahead, atail = {}, 1, 0
    local function after_commit(seq, fn)
        atail = atail + 1
        acks[atail] = { seq, fn }
    end
    if jr then
        jr:on_commit(function(committed)
            local failed = jr:error()
            while ahead <= atail and (failed or acks[ahead][1] <= committed) do
                local a = acks[ahead]
                acks[ahead], ahead = nil, ahead + 1
                a[2](failed)
            end
        end)
    end

    -- Long-polls cost no handle, closure or timer of their own: a
    -- waiting connection is a few table entries, one watcher function
    -- (poll_done) serves every job, and the deadlines sit in one FIFO per
    -- wait length (FIFO order is deadline order within one), checked by
    -- one timer every POLL_TICK while any is queued. Whichever comes
    -- first (the job ends, the wait expires, the client hangs up) ends the
    -- poll; the others then find it gone (poll_seq tells a connection's
    -- new poll from the one a queued deadline was for).
    local deadlines, ndeadlines, poll_timer, next_seq = {}, 0, nil, 0
    local poll_done -- the executor's watcher of polled jobs, below

    -- Removes conn's poll (it ended), and the executor's watcher with the
    -- last poll of its job.
    local function end_poll(conn)
        local id = poll_id[conn]
        if id == nil then return nil end
        poll_id[conn], poll_seq[conn] = nil, nil
        local status = poll_status[conn]
        poll_status[conn] = nil
        nwatchers = nwatchers - 1
        local w = pollers[id]
        if w == conn then
            pollers[id] = nil
            ex:unwatch(id, poll_done)
        elseif type(w) == "table" then
            for i = #w, 1, -1 do
                if w[i] == conn then table.remove(w, i) end
            end
            if #w == 0 then
                pollers[id] = nil
                ex:unwatch(id, poll_done)
            end
        end
        return id, status
    end

    -- Answers conn's poll with body (its job ended).
    local function poll_answer(conn, body)
        local status = poll_status[conn]
        poll_id[conn], poll_seq[conn], poll_status[conn] = nil, nil, nil
        nwatchers = nwatchers - 1
        respond(conn, status, body)
    end

    -- The executor's watcher: job id ended, its polls are answered.
    function poll_done(id)
        local w = pollers[id]
        pollers[id] = nil
        if w == nil then return end
        local t0 = phases and hrtime()
        local body = result_body(id)
        if phases then srv:phase(4, hrtime() - t0) end
        if type(w) == "table" then
            for i = 1, #w do poll_answer(w[i], body) end
        else
            poll_answer(w, body)
        end
    end

    local function poll_tick()
        local now, left = hrtime(), 0
        for wait, q in pairs(deadlines) do
            -- Expired deadlines go, and so do those of polls that ended
            -- already (most end within a loop turn): the queue holds the
            -- polls that wait, not every request of the last `wait` s.
            local h, cs, ss, at = q.head, q.conn, q.seq, q.at
            while h <= q.tail and (at[h] <= now or poll_seq[cs[h]] ~= ss[h]) do
                local conn, seq = cs[h], ss[h]
                cs[h], ss[h], at[h] = nil, nil, nil
                h = h + 1
                if poll_seq[conn] == seq then
                    local id = end_poll(conn)
                    respond(conn, 202, enc(json.object({ id = id, status = status_of(id) })))
                end
            end
            q.head = h
            if h > q.tail then
                deadlines[wait] = nil
                ndeadlines = ndeadlines - 1
            else
                left = left + 1
            end
        end
        if left == 0 and poll_timer then
            poll_timer:close()
            poll_timer = nil
        end
    end

    -- Answers conn with id's result now, or when it finishes, or with 202
    -- after `wait` seconds, whichever is first.
    local function long_poll(conn, id, wait, status_when_done)
        if not ex:has(id) or ex:finished(id) then
            local t0 = phases and hrtime()
            local body = finished_body(id)
            if body then
                if phases then srv:phase(4, hrtime() - t0) end
                return respond(conn, status_when_done, body)
            end
        end
        if wait <= 0 then
            return respond(conn, 202, enc(json.object({ id = id, status = status_of(id) })))
        end
        next_seq = next_seq + 1
        poll_id[conn], poll_status[conn], poll_seq[conn] = id, status_when_done, next_seq
        nwatchers = nwatchers + 1
        local w = pollers[id]
        if w == nil then
            pollers[id] = conn
            ex:watch(id, poll_done)
        elseif type(w) == "table" then
            w[#w + 1] = conn
        else
            pollers[id] = { w, conn }
        end
        local q = deadlines[wait]
        if not q then
            q = { head = 1, tail = 0, conn = {}, seq = {}, at = {} }
            deadlines[wait] = q
            ndeadlines = ndeadlines + 1
        end
        local t = q.tail + 1
        q.tail = t
        -- Deadlines are checked every POLL_TICK: a poll is due one tick
        -- early, so that its 202 never comes later than its wait.
        q.conn[t], q.seq[t], q.at[t] = conn, next_seq, hrtime() + math.max(0, wait - POLL_TICK)
        if not poll_timer then poll_timer = ex:timer(POLL_TICK, poll_tick) end
    end

    local function wait_of(query, conn)
        local w, why = wait_param(query)
        if not w then respond(conn, 400, jerr("EINVAL", why)) end
        return w
    end

    local function metrics()
        local s = ex:stats()
        local hs = srv:stats()
        local lines = {}
        -- One metric: its HELP and TYPE lines, then "name value" samples
        -- (pairs of label set and value, as arguments or in one table).
        local function metric(name, kind, help, ...)
            lines[#lines + 1] = "# HELP " .. name .. " " .. help
            lines[#lines + 1] = "# TYPE " .. name .. " " .. kind
            local samples = ...
            if type(samples) ~= "table" then samples = { ... } end
            for i = 1, #samples, 2 do
                lines[#lines + 1] = name .. samples[i] .. " " .. samples[i + 1]
            end
        end
        metric("tide_jobs_total", "counter", "Jobs submitted through this server.", "", counts.submitted)
        metric("tide_jobs_finished_total", "counter", "Jobs finished, by status.",
               '{status="done"}', counts.done, '{status="failed"}', counts.failed,
               '{status="cancelled"}', counts.cancelled)
        metric("tide_jobs_in_flight", "gauge", "Jobs not finished.", "", s.live)
        metric("tide_queue_depth", "gauge", "Tasks ready to run.", "", s.queued)
        metric("tide_pending_jobs", "gauge", "Jobs submitted through this server and not finished.",
               "", pending)
        metric("tide_pending_jobs_limit", "gauge", "The bound on tide_pending_jobs (--max-pending).",
               "", format("%d", max_pending))
        metric("tide_pending_bytes", "gauge", "Request bytes of the jobs not finished.", "", pending_bytes)
        metric("tide_pending_bytes_limit", "gauge",
               "The bound on tide_pending_bytes (--max-pending-bytes).", "", format("%d", max_pending_bytes))
        metric("tide_jobs_refused_total", "counter",
               "Submissions refused with 503 because a pending bound was reached.", "", refused)
        metric("tide_result_waiters", "gauge", "Long-polls waiting for a job's result.", "", nwatchers)
        metric("tide_workers_replaced_total", "counter", "Stand-ins for stuck worker threads.",
               "", s.workers_replaced)
        metric("tide_cache_hits_total", "counter",
               "Attempts of tasks with cache answered by the result cache.", "", s.cache_hits)
        metric("tide_cache_misses_total", "counter",
               "Attempts of tasks with cache that found no entry and ran.", "", s.cache_misses)
        metric("tide_http_requests_total", "counter", "HTTP requests parsed.", "", hs.requests)
        metric("tide_http_rejected_total", "counter", "HTTP requests refused (4xx before routing).",
               "", hs.rejected)
        metric("tide_uptime_seconds", "gauge", "Seconds since the server started.",
               "", format("%.3f", hrtime() - started))
        metric("tide_pipeline_version_info", "gauge",
               "The version (hash of the file) new jobs run: always 1, the version is the label.",
               '{pipeline="' .. label(p.name) .. '",version="' .. label(VKEY) .. '"}', 1)
        metric("tide_reloads_total", "counter", "Reloads of the pipeline's file, by result.",
               '{result="ok"}', reloads.ok, '{result="failed"}', reloads.failed)
        local vjobs, vflight = {}, {}
        for _, v in ipairs(vorder) do
            local c = versions[v]
            local open = '{version="' .. label(v) .. '"'
            vjobs[#vjobs + 1] = open .. '}'
            vjobs[#vjobs + 1] = c.submitted
            vflight[#vflight + 1] = open .. '}'
            vflight[#vflight + 1] = c.in_flight
        end
        metric("tide_version_jobs_total", "counter", "Jobs submitted here, by pipeline version.", vjobs)
        metric("tide_version_jobs_in_flight", "gauge", "Jobs submitted here and not finished, by pipeline "
               .. "version.", vflight)

        local ts = ex:task_stats(p) or {}
        local function per_task(name, kind, help, field)
            local samples = {}
            for _, t in ipairs(ts) do
                samples[#samples + 1] = '{task="' .. label(t.task) .. '"}'
                samples[#samples + 1] = format("%d", t[field])
            end
            metric(name, kind, help, samples)
        end
        per_task("tide_task_attempts_total", "counter", "Attempts started, retries included.", "attempts")
        per_task("tide_task_done_total", "counter", "Attempts that succeeded.", "done")
        per_task("tide_task_failures_total", "counter", "Attempts that failed, retried or not.", "failures")
        per_task("tide_task_retries_total", "counter", "Retries scheduled.", "retries")
        per_task("tide_task_running", "gauge", "Attempts running or waiting inside their body.", "running")
        per_task("tide_task_retrying", "gauge", "Attempts waiting for their retry time.", "retrying")
        local dur = {}
        for _, t in ipairs(ts) do
            histogram(dur, '{task="' .. label(t.task) .. '",', t.hist, t.sum, bounds)
        end
        metric("tide_task_duration_seconds", "histogram", "Attempt durations.", dur)
        local lagged = {}
        histogram(lagged, "{", lag.hist, lag.sum, bounds)
        metric("tide_loop_lag_seconds", "histogram",
               "How late a timer due every " .. LAG_EVERY .. " s fired: event-loop lag.", lagged)
        return table.concat(lines, "\n") .. "\n"
    end

    -- Schedules (p:schedule). schedule.lua keeps the clock: one timer per
    -- schedule, armed for its next fire, and the catchup policy after
    -- downtime. A fire calls the schedule's function on the loop and
    -- submits what it returns under "<name>@<ISO time>", journaled like a
    -- POSTed job, so that the same fire made twice (after a restart) runs
    -- once.
    local log = opts.log or function(msg) io.stderr:write("tide: ", msg, "\n") end
    local clock -- the running schedules (schedule.start), or nil

    local function fire(st, t, late)
        local s = st.s
        local iso = cron.iso(t)
        local id = s.name .. "@" .. iso
        if not known(id) then
            local ok, input = pcall(s.fn, t, { name = s.name, time = t, iso = iso, late = late })
            local input_json, why
            if not ok then
                why = "its function failed: " .. tostring(input)
            elseif input == nil then
                st.skipped = st.skipped + 1
            else
                input_json = json.encode(input)
                if not input_json then
                    why = "its input cannot be encoded as JSON"
                elseif pending >= max_pending then
                    refused = refused + 1
                    why = format("%d jobs are pending (max-pending %d)", pending, max_pending)
                end
            end
            if why then
                st.failed = st.failed + 1
                log(format("schedule '%s': the fire at %s is skipped: %s", s.name, iso, why))
            elseif input ~= nil then
                local sok, res = pcall(ex.submit, ex, p, input, { id = id })
                if not sok then
                    st.failed = st.failed + 1
                    log(format("schedule '%s': the fire at %s is skipped: %s", s.name, iso, tostring(res)))
                else
                    st.submitted = st.submitted + 1
                    counts.submitted = counts.submitted + 1
                    pending, pending_bytes = pending + 1, pending_bytes + #input_json
                    mine[res] = #input_json
                    book(res)
                    if jr then jr:job(res, input_json, nil) end
                end
            end
        end
        -- After the job: a crash between the two makes the fire again on
        -- restart, and its id (known by then) keeps it from running twice.
        if jr then jr:schedule_mark(s.name, t) end
    end

    local function start_schedules()
        local last = {}
        for _, s in ipairs(rawget(p, "schedules") or {}) do
            last[s.name] = jr and jr:schedule_last(s.name)
            if not jr and s.catchup ~= "none" then
                log(format("schedule '%s': catchup = \"%s\" needs --journal (the journal keeps the "
                           .. "last fire); without one no missed fire is made up", s.name, s.catchup))
            end
        end
        clock = schedule.start(ex, p, { fire = fire, last = last, log = log })
    end

    local function stop_schedules()
        if clock then clock:stop() end
        clock = nil
    end

    -- The schedules as /v1/stats shows them.
    function schedules_json()
        local out, now = {}, core.cache_now()
        for i, st in ipairs(clock and clock.list or {}) do
            local s = st.s
            out[i] = json.object({
                name = s.name, expr = s.expr, tz = s.tz, catchup = s.catchup,
                next = st.next and cron.iso(st.next) or json.null,
                next_in = st.next and math.max(0, st.next - now) or json.null,
                last = st.last and cron.iso(st.last) or json.null,
                submitted = st.submitted, skipped = st.skipped, failed = st.failed,
            })
        end
        return json.array(out)
    end

    -- What the dashboard shows: jobs, per-task counts, recent failures.
    local function stats_body()
        local s = ex:stats()
        local tasks = {}
        for i, t in ipairs(ex:task_stats(p) or {}) do
            tasks[i] = json.object({ task = t.task, running = t.running, done = t.done,
                                     failed = t.failures - t.retries, retrying = t.retrying,
                                     attempts = t.attempts })
        end
        local recent = {}
        for k = nfail, math.max(1, nfail - NFAILURES + 1), -1 do
            recent[#recent + 1] = failures[(k - 1) % NFAILURES + 1]
        end
        local vs = {}
        for i = #vorder, 1, -1 do
            local c = versions[vorder[i]]
            vs[#vs + 1] = json.object({ version = c.version, current = c.version == VKEY, loaded = c.loaded,
                                        submitted = c.submitted, done = c.done, failed = c.failed,
                                        cancelled = c.cancelled, in_flight = c.in_flight })
        end
        return enc(json.object({
            pipeline = p.name,
            version = version or json.null, versions = json.array(vs),
            reloads = json.object({ ok = reloads.ok, failed = reloads.failed }),
            uptime = hrtime() - started,
            jobs = json.object({ submitted = counts.submitted, done = counts.done,
                                 failed = counts.failed, cancelled = counts.cancelled,
                                 in_flight = s.live, queued = s.queued }),
            tasks = json.array(tasks), failures = json.array(recent),
            loop_lag = lag.last, schedules = schedules_json(),
        }))
    end

    local t_route -- with phases: when the request being routed reached Lua
    local host_ok, ctype_ok -- the last Host and Content-Type values that passed
    local function submit(conn, query, headers, body)
        local ctype = headers["content-type"] or ""
        if ctype ~= ctype_ok then
            if not ctype:lower():match("^application/json") then
                return respond(conn, 415, jerr("EINVAL", "Content-Type must be application/json"))
            end
            ctype_ok = ctype -- the last one that passed: one compare next time
        end
        -- The bounds are checked before the body is decoded: a full queue
        -- sheds load cheaply. A body that could never fit is a 413.
        local nbytes = #body
        if nbytes > max_pending_bytes then
            return respond(conn, 413, jerr("EINVAL", format(
                "the body (%d bytes) is larger than max-pending-bytes (%d)", nbytes, max_pending_bytes)))
        end
        if pending >= max_pending or pending_bytes + nbytes > max_pending_bytes then
            refused = refused + 1
            local what = pending >= max_pending
                and format("%d jobs are pending (max-pending %d)", pending, max_pending)
                or format("%d bytes of jobs are pending (max-pending-bytes %d)", pending_bytes, max_pending_bytes)
            return srv:respond(conn, 503, jerr("EAGAIN", "too busy: " .. what .. "; retry later"),
                               "application/json", "Retry-After: " .. RETRY_AFTER .. "\r\n")
        end
        local req, err = json.decode(body)
        if req == nil then
            return respond(conn, 400, jerr("EVALUE", "malformed JSON: " .. tostring(err)))
        end
        if type(req) ~= "table" or getmetatable(req) ~= json.object_mt then
            return respond(conn, 400, jerr("EINVAL", "the body must be an object {\"input\": ...}"))
        end
        if req.input == nil then
            return respond(conn, 400, jerr("EINVAL", "the body has no \"input\""))
        end
        local id = req.id
        if id ~= nil and (type(id) ~= "string" or id == "") then
            return respond(conn, 400, jerr("EINVAL", "id must be a non-empty string"))
        end
        if id and #id > MAX_ID then
            return respond(conn, 400, jerr("EINVAL", format("id must be at most %d bytes, got %d", MAX_ID, #id)))
        end
        local prio = req.priority
        if prio ~= nil and not executor.PRIO[prio] then
            return respond(conn, 400, jerr("EINVAL", "priority must be high, low or lifo"))
        end
        local wait = wait_of(query, conn)
        if not wait then return end
        if id and known(id) then
            return respond(conn, 409, jerr("EEXIST", "duplicate id '" .. id .. "'"))
        end
        local input = req.input
        if input == json.null then input = nil end
        local sopts = nil -- no table for the common submission without either
        if id ~= nil or prio ~= nil then sopts = { id = id, priority = prio } end
        local ok, res = pcall(ex.submit, ex, p, input, sopts)
        if not ok then
            return respond(conn, 400, jerr("EINVAL", tostring(res)))
        end
        if phases then
            local now = hrtime()
            srv:phase(2, now - t_route)
            t_submitted[res] = now
        end
        counts.submitted = counts.submitted + 1
        pending, pending_bytes = pending + 1, pending_bytes + nbytes
        mine[res] = nbytes
        book(res)
        local waits = query_param(query, "wait") ~= nil
        if not jr then
            if waits then
                -- The job runs now rather than at the next loop turn: a
                -- job that ends at once (most) is answered here, with no
                -- watcher or deadline registered, and a loop turn's
                -- answers do not wait for the turn's other requests.
                ex:drain_now()
                return long_poll(conn, res, wait, 200)
            end
            return respond(conn, 201, enc(json.object({ id = res, version = version })))
        end
        -- (A closure only here: making one stops the JIT on this path.)
        local function answer()
            if waits then return long_poll(conn, res, wait, 200) end
            respond(conn, 201, enc(json.object({ id = res, version = version })))
        end
        -- Accepted means on the device: the answer waits for the group
        -- commit that holds the job.
        local seq = jr:job(res, json.encode(input == nil and json.null or input) or "null", prio)
        after_commit(seq, function(failed)
            if failed then
                ex:cancel(res)
                return respond(conn, 503, jerr("EIO", "the job could not be journaled: " .. failed))
            end
            answer()
        end)
    end

    local page -- the dashboard's HTML, made on first request
    local server_reload -- defined with the server, below
    local function route(conn, method, path, query, headers, body)
        if phases then t_route = hrtime() end
        if path == "/healthz" then
            if method ~= "GET" then return respond(conn, 405, jerr("EINVAL", "use GET")) end
            return respond(conn, 200, '{"ok":true}')
        end
        if not token then
            -- Without a token anything that reaches the port is trusted,
            -- so the request must name this machine: a page from another
            -- site that rebinds its own name to 127.0.0.1 (DNS rebinding)
            -- sends that name, and its Origin.
            local origin, named = headers["origin"], headers["host"]
            -- The last Host found allowed passes with one compare (equal
            -- strings are one object in Lua): clients send the same one.
            local fine = named ~= nil and named == host_ok
            if not fine and host_allowed(named, allowed) then host_ok, fine = named, true end
            if not fine
                or (origin and not host_allowed(origin:lower():match("^https?://([^/]+)$"), allowed)) then
                return respond(conn, 403, jerr("EPERM", "Host '" .. (headers["host"] or "")
                    .. "' is not allowed: without a token only localhost, 127.0.0.1 and [::1] are served"
                    .. " (add names with --allow-host)"
                    .. (origin and ("; the Origin ('" .. origin .. "') must name one of them") or "")))
            end
        end
        if token then
            local auth = headers["authorization"] or ""
            -- The scheme is case-insensitive (RFC 7235 2.1).
            local scheme, given = auth:match("^(%a+) +(.+)$")
            if not scheme or scheme:lower() ~= "bearer" then given = nil end
            if path == "/" and not given then
                -- A browser cannot send a header when it opens the page:
                -- the dashboard takes the token once in the query string
                -- and sends it as a header from then on.
                given = query_param(query, "token")
                given = given and unescape(given)
            end
            if not same_token(given, token) then
                return respond(conn, 401, jerr("EAUTH", "missing or wrong bearer token"))
            end
        end
        local page_fn = GET_ONLY[path]
        if page_fn then
            if method ~= "GET" then return respond(conn, 405, jerr("EINVAL", "use GET")) end
            if page_fn == "metrics" then
                return srv:respond(conn, 200, metrics(), "text/plain; version=0.0.4")
            elseif page_fn == "page" then
                page = page or require("tide.graph").html(p, { live = true })
                return srv:respond(conn, 200, page, "text/html; charset=utf-8")
            end
            return respond(conn, 200, stats_body())
        end
        if path == "/v1/jobs" then
            if method ~= "POST" then return respond(conn, 405, jerr("EINVAL", "use POST")) end
            return submit(conn, query, headers, body)
        end
        if path == "/v1/admin/reload" then
            if method ~= "POST" then return respond(conn, 405, jerr("EINVAL", "use POST")) end
            local res, rec, status = server_reload()
            if not res then return respond(conn, status, jerr(rec.code, rec.message)) end
            return respond(conn, 200, enc(json.object(res)))
        end
        local id, rest = path:match("^/v1/jobs/([^/]+)(.*)$")
        if not id then return respond(conn, 404, jerr("ENOENT", "no such endpoint")) end
        id = unescape(id)
        if #id > MAX_ID then
            return respond(conn, 400, jerr("EINVAL", format("job ids are at most %d bytes, got %d", MAX_ID, #id)))
        end
        if not known(id) then
            if evicted_new:has(id) or evicted_old:has(id) then
                return respond(conn, 410, jerr("EGONE", "the result of job '" .. id .. "' was evicted"))
            end
            return respond(conn, 404, jerr("ENOENT", "no job with id '" .. id .. "'"))
        end
        if rest == "" and method == "GET" then
            local v = jobver(id)
            return respond(conn, 200, enc(json.object({ id = id, status = status_of(id),
                                                        version = v ~= "none" and v or nil })))
        elseif rest == "" and method == "DELETE" then
            if not ex:has(id) then
                return respond(conn, 409, jerr("EINVAL", "job '" .. id .. "' has already finished"))
            end
            local ok, rec = ex:cancel(id)
            if not ok then return respond(conn, 409, jerr(rec.code, rec.message)) end
            return respond(conn, 200, enc(json.object({ id = id, status = "cancelled" })))
        elseif rest == "/logs" and method == "GET" then
            return respond(conn, 200, logs_body(id))
        elseif rest == "/result" and method == "GET" then
            local wait = wait_of(query, conn)
            if not wait then return end
            return long_poll(conn, id, wait, 200)
        end
        return respond(conn, 405, jerr("EINVAL", "method not allowed here"))
    end

    -- Remember evicted ids (bounded) to answer 410 instead of 404.
    local nevicted = 0 -- in evicted_new
    local evict_token = ex:on_evict(function(id)
        jobvers:remove(id)
        if id == done_id then done_id, done_ver = nil, nil end
        if evicted_new:add(id) then
            nevicted = nevicted + 1
            if nevicted >= evicted_kept then
                evicted_old, evicted_new, nevicted = evicted_new, core.idset(), 0
            end
        end
    end)

    -- Checkpoints (docs/journal.md): what a job's resume needs, journaled
    -- while the job runs and dropped with its result. Only this server's
    -- jobs: a Lua host may share the executor.
    local checkpointed = {} -- id -> true while the journal holds some
    local on_checkpoint
    if jr then
        on_checkpoint = ex:on("checkpoint", function(id, task, output)
            if not mine[id] then return end
            local text = json.encode(output)
            if text then
                jr:checkpoint(id, task, text)
                checkpointed[id] = true
            end
        end)
    end

    -- Every finished job of this executor passes here; the server counts
    -- its own (a Lua host may share the executor).
    local sub_token = ex:subscribe(function(jid, status, value, _, logs)
        local nbytes = mine[jid]
        if not nbytes then return end
        mine[jid] = nil
        if phases then
            local ts = t_submitted[jid]
            if ts then
                srv:phase(3, hrtime() - ts)
                t_submitted[jid] = nil
            end
        end
        local c = versions[keep_version(jid)]
        if c then
            c.in_flight = c.in_flight - 1
            c[status] = (c[status] or 0) + 1
        end
        if jr then
            jr:job_result(jid, status, record.encode(jid, status, value, true))
            if checkpointed[jid] then
                checkpointed[jid] = nil
                jr:forget(jid)
            end
        end
        pending, pending_bytes = pending - 1, pending_bytes - nbytes
        counts[status] = (counts[status] or 0) + 1
        if status == "failed" then
            nfail = nfail + 1
            local last = {}
            if logs then
                local n = #logs.lines
                for k = math.max(1, n - FAILURE_LOG_LINES + 1), n do
                    local x = logs.lines[k]
                    last[#last + 1] = json.object({ time = x.time, task = x.task, attempt = x.attempt,
                                                    line = x.line })
                end
            end
            failures[(nfail - 1) % NFAILURES + 1] = json.object({
                id = jid, at = os.time(), error = json.object(errors.plain(value, true)),
                logs = json.array(last) })
        end
    end)

    -- A restart: the jobs the journal accepted and holds no result for
    -- run again, under their ids, with the checkpoints they had.
    local recovered = 0
    if jr then
        local saved = jr:checkpoints()
        for _, row in ipairs(jr:unfinished_jobs()) do
            local id, prio, input_json = row[1], row[2], row[3] or "null"
            local input = json.decode(input_json)
            if input == json.null then input = nil end
            if not ex:has(id) then
                local restore
                if saved[id] then
                    restore = {}
                    for task, text in pairs(saved[id]) do restore[task] = json.decode(text) end
                    checkpointed[id] = true
                end
                ex:submit(p, input, { id = id, priority = prio, restore = restore })
                counts.submitted = counts.submitted + 1
                pending, pending_bytes = pending + 1, pending_bytes + #input_json
                mine[id] = #input_json
                book(id)
                recovered = recovered + 1
            end
        end
    end

    local err
    srv, err = core.http_listen(ex:loop(), host, tonumber(port or 0), {
        max_body = opts.max_body or 1048576,
        request_timeout = opts.request_timeout or 10,
        idle_timeout = opts.idle_timeout or 60,
        on_hangup = function(conn) end_poll(conn) end,
        phases = phases,
    }, function(conn, method, path, query, headers, body)
        route(conn, method, path, query, headers, body)
    end)
    -- What the server registered with the executor goes when it stops.
    -- The phase report goes to stderr once, when the server stops or
    -- starts draining (SIGTERM): what was measured under load.
    local reported = false
    local function report_phases()
        if phases and srv and not reported then
            reported = true
            for _, line in ipairs(M.phase_lines(srv)) do io.stderr:write("tide: ", line, "\n") end
        end
    end
    local function release()
        report_phases()
        if poll_timer then
            poll_timer:close()
            poll_timer = nil
        end
        stop_schedules()
        lag_timer:close()
        ex:unsubscribe(sub_token)
        ex:off_evict(evict_token)
        if on_checkpoint then ex:off("checkpoint", on_checkpoint) end
    end
    if not srv then
        release()
        return nil, errors.new("EIO", tostring(err))
    end

    local server = { executor = ex, port = srv:port(), recovered = recovered }

    -- Loads the pipeline's file again (the same parameters and args): new
    -- jobs and schedules use the new version; jobs already submitted keep
    -- the pipeline they were submitted with. A file that does not load or
    -- compile leaves the old version serving. Returns { pipeline, version,
    -- previous, changed }, or nil, an error record and the HTTP status.
    function server_reload()
        local function refuse(status, code, message)
            reloads.failed = reloads.failed + 1
            return nil, errors.new(code, message), status
        end
        if not version then
            return refuse(409, "EINVAL", "pipeline '" .. p.name .. "' was not loaded from a file: "
                          .. "there is nothing to reload")
        end
        if jr then
            -- The journal holds one version (its hash is checked at start):
            -- a job accepted under another could not be run again, by the
            -- version it was accepted for, after a crash.
            return refuse(409, "EINVAL", "reload is refused under --journal: the journal holds jobs of "
                          .. "one version of the pipeline; stop the server (it drains), then start it on "
                          .. "the new file (with --journal-reset once no job is pending)")
        end
        local np, lerr = pipeline.reload(p)
        if not np then return refuse(422, "ELOAD", tostring(lerr)) end
        local ok, perr = pcall(ex.prepare, ex, np)
        if not ok then return refuse(422, "ELOAD", tostring(perr)) end
        local previous = version
        stop_schedules()
        p, version = np, pipeline.version(np)
        VKEY = version or "none"
        version_counts(VKEY)
        page = nil
        reloads.ok = reloads.ok + 1
        start_schedules()
        log(format("reloaded '%s': version %s (was %s)", p.name, tostring(version), tostring(previous)))
        return { pipeline = p.name, version = version, previous = previous, changed = version ~= previous }
    end
    --- See server_reload: { pipeline, version, previous, changed } or
    -- nil and an error record.
    function server.reload()
        local res, rec = server_reload()
        return res, rec
    end
    function server.version() return version end
    --- The phase report (TIDE_SERVE_PHASES=1 or opts.phases): lines of
    -- text, as the server prints them when it stops; nil when off.
    function server.phases() return phases and M.phase_lines(srv) or nil end
    -- Schedules start once the server listens: their jobs can be asked for.
    start_schedules()
    if listen == false then
        -- Bytes arrive on the server's one connection (a new one when
        -- `new` is true or there is none; nil: the client half-closes;
        -- bytes for a closed connection go nowhere); returns what the
        -- server wrote meanwhile and whether the connection is closed.
        function server.feed(bytes, new) return srv:feed(bytes, new) end
    end
    function server.close()
        release()
        srv:close()
    end
    -- Stops accepting, lets jobs in flight finish (at most `timeout` s),
    -- answers what waits, then calls done().
    function server.drain(timeout, done)
        report_phases()
        srv:close(true)
        stop_schedules()
        local deadline = hrtime() + (timeout or 30)
        local ticker
        ticker = ex:timer(0.05, function()
            if ex:stats().live == 0 or hrtime() > deadline then
                ticker:close()
                ex:cancel_all()
                release()
                srv:close()
                if done then done() end
            end
        end)
    end
    return server
end

--- The lines of a server's phase report: per phase, the count and the
-- mean and percentiles in microseconds, then the loop turns, how many
-- held a GC sweep, and the Lua heap growth per request.
function M.phase_lines(srv)
    local list, turns = srv:phase_report()
    if not list then return {} end
    local out = {}
    for i, h in ipairs(list) do
        out[i] = format("phase=%s n=%d mean_us=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f",
                        h.name, h.n, h.mean, h.p50, h.p90, h.p99, h.p999, h.max)
    end
    out[#out + 1] = format("phases turns=%d gc_turns=%d requests=%d requests_per_turn=%.1f "
                           .. "heap_growth_kb_per_request=%.2f",
                           turns.turns, turns.gc_turns, turns.requests,
                           turns.turns > 0 and turns.requests / turns.turns or 0,
                           turns.requests > 0 and turns.alloc_kb / turns.requests or 0)
    return out
end

-- What the HTTP front of `tide serve --redis` (tide.rserve) shares with
-- this server: the error body, the token and Host checks, query strings
-- and ?wait=.
M.http = {
    jerr = jerr, same_token = same_token, query_param = query_param, wait_param = wait_param,
    unescape = unescape,
    host_allowed = host_allowed, label = label, MAX_WAIT = MAX_WAIT, MAX_ID = MAX_ID,
    RETRY_AFTER = RETRY_AFTER,
}

return M
