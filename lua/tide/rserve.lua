--- `tide serve PIPELINE.lua --redis URL`: the HTTP job API (docs/http.md)
-- in front of the Redis queue. Jobs run on `tide worker` processes; this
-- server only submits (lua/tide/rexec.lua's SUBMIT: an id given twice is
-- the first job), asks status, waits for results (a blocking read, see
-- rexec.waiter) and cancels. Every answer about a job comes from Redis,
-- so any number of these servers can front one queue.
--
-- An answer that needs Redis waits for its reply: 201 means the XADD
-- happened. Redis that is down, or too slow for the command's time limit,
-- is a 503 with a JSON error and Retry-After, never a hang.
local core = require "tide.core"
local errors = require "tide.errors"
local redis = require "tide.redis"
local record = require "tide.record"
local distributed = require "tide.distributed"
local rexec = require "tide.rexec"
local pipeline = require "tide.pipeline"
local http = require("tide.serve").http

local json = core.json
local format, tostring, type = string.format, tostring, type
local hrtime = core.hrtime
local jerr, query_param, unescape = http.jerr, http.query_param, http.unescape

local M = {}

-- Seconds a command of the server may take before its request is
-- answered 503 (Redis stalled or away).
M.COMMAND_TIMEOUT = 2


local function enc(v) return json.encode(v) end


--- Serves pipeline p (loaded from a file, pinned) over Redis at opts.url.
-- opts: listen, token, allow_host (a list), result_ttl (seconds a
-- cancelled job's result is kept), request_timeout, log(msg).
-- @return the server { port, close(), drain() }, or nil and an error
--   record (Redis cannot be reached: ECONN; the address: EIO)
function M.serve(p, opts)
    local version = pipeline.version(p)
    if not version then
        error("tide serve --redis: the pipeline must come from a file (workers run the same file)", 2)
    end
    local host, port = tostring(opts.listen):match("^%[?([^%]]*)%]?:(%d+)$")
    local allowed = {}
    for _, h in ipairs(opts.allow_host or {}) do allowed[h:lower()] = true end
    local token = opts.token
    local ttl = opts.result_ttl or rexec.DEFAULT_RESULT_TTL
    local log = opts.log or function(msg) io.stderr:write("tide: ", msg, "\n") end
    local name = p.name
    local keys = distributed.keys(name)
    local shown = redis.redact(opts.url) -- the URL without its password

    local ex = require("tide.executor").new { results = false, cache = false, concurrency = 1, threads = 1 }
    local cmd, cerr = distributed.connect_checked(ex, opts.url, M.COMMAND_TIMEOUT)
    if not cmd then
        ex:close()
        return nil, errors.new("ECONN", cerr)
    end
    cmd.timeout = M.COMMAND_TIMEOUT
    local blk = redis.connect(ex, opts.url, { timeout = 5 })
    local waiter = rexec.waiter(ex, cmd, blk)
    local started = hrtime()
    local counts = { submitted = 0, existing = 0, redis_errors = 0, cancelled = 0 }
    local polls, npolls = {}, 0 -- conn -> the function that ends its long-poll
    local poll_ids = {}         -- conn -> the job it waits for
    local srv

    local function respond(conn, status, body, why)
        if body == nil then
            status = 500
            body = jerr("EVALUE", "the answer cannot be encoded as JSON: " .. tostring(why))
        end
        srv:respond(conn, status, body)
    end

    -- Redis failed under a request: 503, with what failed.
    local function unavailable(conn, rec)
        counts.redis_errors = counts.redis_errors + 1
        srv:respond(conn, 503, jerr(rec and rec.code or "ECONN", "Redis at " .. shown .. ": "
                                    .. (rec and rec.message or "not connected") .. "; retry later"),
                    "application/json", "Retry-After: " .. http.RETRY_AFTER .. "\r\n")
    end

    -- Runs fn when Redis is connected; else answers 503 at once (a request
    -- must not wait for a reconnect that may never come).
    local function with_redis(conn, fn)
        if not cmd:stats().up then return unavailable(conn, nil) end
        fn()
    end

    local function status_body(id, st)
        return enc(json.object({ id = id, status = st.status, version = st.hash }))
    end

    local function result_record(id, status, value)
        local body = record.encode(id, status, value, true)
        return body
    end

    -- Answers id's result now if it has one, else when it comes, or 202
    -- after `wait` seconds, whichever is first (the client hanging up ends
    -- the wait too).
    local function long_poll(conn, id, wait, st)
        if st.finished then return respond(conn, 200, result_record(id, st.status, st.value)) end
        if wait <= 0 then return respond(conn, 202, status_body(id, st)) end
        local timer, wtoken, abandon
        wtoken = waiter:add(rexec.record_key(name, id), id, st.last, function(res)
            polls[conn], poll_ids[conn] = nil, nil
            npolls = npolls - 1
            timer:close()
            respond(conn, 200, result_record(id, res.status, res.value))
        end)
        timer = ex:timer(wait, function()
            abandon()
            -- The status now (it may have started running meanwhile).
            rexec.status(cmd, name, id, function(now)
                respond(conn, 202, status_body(id, now or st))
            end)
        end)
        npolls = npolls + 1
        abandon = function()
            polls[conn], poll_ids[conn] = nil, nil
            timer:close()
            if waiter:remove(wtoken) then npolls = npolls - 1 end
        end
        polls[conn] = abandon
        poll_ids[conn] = id
    end

    local function wait_of(query, conn)
        local w, why = http.wait_param(query)
        if not w then respond(conn, 400, jerr("EINVAL", why)) end
        return w
    end

    local function submit(conn, query, headers, body)
        local ctype = headers["content-type"] or ""
        if not ctype:lower():match("^application/json") then
            return respond(conn, 415, jerr("EINVAL", "Content-Type must be application/json"))
        end
        local req, err = json.decode(body)
        if req == nil then return respond(conn, 400, jerr("EVALUE", "malformed JSON: " .. tostring(err))) end
        if type(req) ~= "table" or getmetatable(req) ~= json.object_mt then
            return respond(conn, 400, jerr("EINVAL", "the body must be an object {\"input\": ...}"))
        end
        if req.input == nil then return respond(conn, 400, jerr("EINVAL", "the body has no \"input\"")) end
        local id = req.id
        local key = headers["idempotency-key"]
        if id ~= nil then
            local bad = rexec.check_id(id)
            if bad then return respond(conn, 400, jerr("EINVAL", bad)) end
        end
        if key ~= nil then
            local bad = rexec.check_id(key)
            if bad then return respond(conn, 400, jerr("EINVAL", "Idempotency-Key: " .. bad:gsub("^id ", "it "))) end
            if id ~= nil and id ~= key then
                return respond(conn, 400, jerr("EINVAL", "the id and the Idempotency-Key header differ"))
            end
            id = key
        end
        if req.priority ~= nil then
            return respond(conn, 400, jerr("EINVAL", "priority is not supported with --redis (one queue per "
                                                  .. "pipeline, in order)"))
        end
        local wait = wait_of(query, conn)
        if not wait then return end
        local input = req.input
        local text = enc(input) or "null"
        id = id or rexec.new_id()
        with_redis(conn, function()
            rexec.submit(cmd, name, version, id, text, function(res, rec)
                if not res then return unavailable(conn, rec) end
                if res.new then counts.submitted = counts.submitted + 1 else counts.existing = counts.existing + 1 end
                if query_param(query, "wait") then
                    -- The job as it is now, then its result.
                    return rexec.status(cmd, name, id, function(st, srec)
                        if not st then return unavailable(conn, srec) end
                        long_poll(conn, id, wait, st)
                    end)
                end
                -- 201: made now; 200: the id was given before, and this is
                -- that first job.
                respond(conn, res.new and 201 or 200,
                        enc(json.object({ id = id, version = res.hash, existing = not res.new or nil })))
            end)
        end)
    end

    -- /v1/stats and /metrics read the queue's lengths from Redis.
    local function queue_state(fn)
        local got, out = 0, {}
        local function one(k)
            return function(v) out[k] = v; got = got + 1; if got == 3 then fn(out) end end
        end
        cmd:send(one("length"), "XLEN", keys.jobs)
        cmd:send(function(v) one("pending")(type(v) == "table" and v[1] or 0) end,
                 "XPENDING", keys.jobs, distributed.GROUP)
        cmd:send(one("dlq"), "XLEN", keys.dlq)
    end

    local function stats(conn)
        with_redis(conn, function()
            queue_state(function(q)
                respond(conn, 200, enc(json.object({
                    pipeline = name, version = version, redis = shown,
                    uptime = hrtime() - started,
                    jobs = json.object({ submitted = counts.submitted, existing = counts.existing,
                                         cancelled = counts.cancelled }),
                    queue = json.object({ length = q.length or 0, pending = q.pending or 0,
                                          dead_letter = q.dlq or 0 }),
                    result_waiters = npolls, redis_errors = counts.redis_errors,
                })))
            end)
        end)
    end

    local function metrics(conn)
        local function text(q)
            local lines = {}
            local function metric(mname, kind, help, value)
                lines[#lines + 1] = "# HELP " .. mname .. " " .. help
                lines[#lines + 1] = "# TYPE " .. mname .. " " .. kind
                lines[#lines + 1] = mname .. " " .. tostring(value)
            end
            local up = cmd:stats().up
            metric("tide_redis_up", "gauge", "1 when the server's Redis connection is up.", up and 1 or 0)
            metric("tide_jobs_total", "counter", "Jobs submitted through this server (new ones).",
                   counts.submitted)
            metric("tide_jobs_existing_total", "counter",
                   "Submissions whose id named a job already in Redis (answered with that job).", counts.existing)
            metric("tide_jobs_cancelled_total", "counter", "Jobs cancelled through this server.", counts.cancelled)
            metric("tide_redis_errors_total", "counter", "Requests answered 503 because Redis failed.",
                   counts.redis_errors)
            metric("tide_result_waiters", "gauge", "Long-polls waiting for a job's result.", npolls)
            if q then
                metric("tide_queue_length", "gauge", "Entries in the jobs stream (not finished).", q.length or 0)
                metric("tide_queue_pending", "gauge", "Jobs taken by workers and not finished.", q.pending or 0)
                metric("tide_dead_letter_length", "gauge", "Jobs in the dead-letter stream.", q.dlq or 0)
            end
            metric("tide_http_requests_total", "counter", "HTTP requests parsed.", srv:stats().requests)
            metric("tide_uptime_seconds", "gauge", "Seconds since the server started.",
                   format("%.3f", hrtime() - started))
            return table.concat(lines, "\n") .. "\n"
        end
        -- Metrics answer even when Redis is down (tide_redis_up says so).
        if not cmd:stats().up then return srv:respond(conn, 200, text(nil), "text/plain; version=0.0.4") end
        queue_state(function(q) srv:respond(conn, 200, text(q), "text/plain; version=0.0.4") end)
    end

    local function route(conn, method, path, query, headers, body)
        if path == "/healthz" then
            if method ~= "GET" then return respond(conn, 405, jerr("EINVAL", "use GET")) end
            if not cmd:stats().up then return unavailable(conn, nil) end
            return respond(conn, 200, '{"ok":true}')
        end
        if not token then
            local origin = headers["origin"]
            if not http.host_allowed(headers["host"], allowed)
                or (origin and not http.host_allowed(origin:lower():match("^https?://([^/]+)$"), allowed)) then
                return respond(conn, 403, jerr("EPERM", "Host '" .. (headers["host"] or "")
                    .. "' is not allowed: without a token only localhost, 127.0.0.1 and [::1] are served"
                    .. " (add names with --allow-host)"))
            end
        else
            local auth = headers["authorization"] or ""
            local scheme, given = auth:match("^(%a+) +(.+)$")
            if not scheme or scheme:lower() ~= "bearer" then given = nil end
            if not http.same_token(given, token) then
                return respond(conn, 401, jerr("EAUTH", "missing or wrong bearer token"))
            end
        end
        if path == "/v1/stats" or path == "/metrics" then
            if method ~= "GET" then return respond(conn, 405, jerr("EINVAL", "use GET")) end
            if path == "/metrics" then return metrics(conn) end
            return stats(conn)
        end
        if path == "/v1/jobs" then
            if method ~= "POST" then return respond(conn, 405, jerr("EINVAL", "use POST")) end
            return submit(conn, query, headers, body)
        end
        if path == "/v1/admin/reload" or path == "/" then
            return respond(conn, 404, jerr("ENOENT", "not served with --redis: restart the server (and the "
                                                   .. "workers) on the new file"))
        end
        local id, rest = path:match("^/v1/jobs/([^/]+)(.*)$")
        if not id then return respond(conn, 404, jerr("ENOENT", "no such endpoint")) end
        id = unescape(id)
        local bad = rexec.check_id(id)
        if bad then return respond(conn, 400, jerr("EINVAL", bad)) end
        local wait
        if rest == "/logs" and method == "GET" then
            wait = false
        elseif rest == "/result" and method == "GET" then
            wait = wait_of(query, conn)
            if not wait then return end
        elseif not (rest == "" and (method == "GET" or method == "DELETE")) then
            return respond(conn, 405, jerr("EINVAL", "method not allowed here"))
        end
        with_redis(conn, function()
            if method == "DELETE" then
                return rexec.cancel(cmd, name, id, ttl, function(ok, rec)
                    if ok then
                        counts.cancelled = counts.cancelled + 1
                        return respond(conn, 200, enc(json.object({ id = id, status = "cancelled" })))
                    end
                    if rec.code == "ENOENT" then return respond(conn, 404, jerr("ENOENT", rec.message)) end
                    if rec.code == "EINVAL" then return respond(conn, 409, jerr("EINVAL", rec.message)) end
                    unavailable(conn, rec)
                end)
            end
            rexec.status(cmd, name, id, function(st, rec)
                if not st then return unavailable(conn, rec) end
                if st.status == "unknown" then
                    return respond(conn, 404, jerr("ENOENT", "no job with id '" .. id .. "' (or its result "
                                                         .. "expired)"))
                end
                if rest == "" then return respond(conn, 200, status_body(id, st)) end
                if rest == "/logs" then
                    -- The lines come with the result (the worker commits
                    -- them together): none before the job ends.
                    local l = st.logs or { lines = {}, dropped = 0 }
                    return respond(conn, 200, enc(json.object({
                        id = id, lines = json.array(l.lines), dropped = l.dropped })))
                end
                long_poll(conn, id, wait, st)
            end)
        end)
    end

    local err
    srv, err = core.http_listen(ex:loop(), host, tonumber(port), {
        max_body = opts.max_body or 1048576,
        request_timeout = opts.request_timeout or 10,
        idle_timeout = 60,
        on_hangup = function(conn)
            local abandon = polls[conn]
            if abandon then abandon() end
        end,
    }, route)
    if not srv then
        waiter:close()
        cmd:close()
        blk:close()
        ex:close()
        return nil, errors.new("EIO", tostring(err))
    end
    -- Say when Redis goes away or comes back (once per change).
    local was_up = true
    local watch = ex:timer(1, function()
        local up = cmd:stats().up
        if up ~= was_up then
            was_up = up
            log(up and ("Redis at " .. shown .. " is back") or ("Redis at " .. shown
                .. " cannot be reached: requests are answered 503 until it is back"))
        end
    end)

    local server = { port = srv:port(), executor = ex }
    local closed = false
    function server.close()
        if closed then return end
        closed = true
        for _, abandon in pairs(polls) do abandon() end
        watch:close()
        waiter:close()
        srv:close()
        cmd:close()
        blk:close()
    end
    -- Stops accepting; long-polls are answered 202 (their jobs go on on
    -- the workers) and the server closes.
    function server.drain()
        srv:close(true)
        local conns = {}
        for conn in pairs(polls) do conns[#conns + 1] = conn end
        for _, conn in ipairs(conns) do
            local id = poll_ids[conn]
            polls[conn]()
            -- Not finished yet: it goes on on the workers.
            respond(conn, 202, enc(json.object({ id = id, status = "running" })))
        end
        local t
        t = ex:timer(0.05, function()
            t:close()
            server.close()
        end)
    end
    return server
end

return M
