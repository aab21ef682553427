--- `tide serve` and tide.serve(p, opts): the HTTP/JSON job API on the
-- executor's loop (DESIGN.md 3). Routes:
--   POST   /v1/jobs[?wait=S]        submit {"id"?, "input", "priority"?}
--   GET    /v1/jobs/{id}            status
--   GET    /v1/jobs/{id}/result[?wait=S]   long-poll for the result
--   DELETE /v1/jobs/{id}            cancel
--   GET    /healthz, GET /metrics
local core = require "tide.core"
local executor = require "tide.executor"
local errors = require "tide.errors"

local json = core.json
local format, tostring, type, pairs = string.format, tostring, type, pairs
local hrtime = core.hrtime

local M = {}

local MAX_WAIT = 300


local function enc(v) return (json.encode(v)) end


local function jerr(code, message)
    return enc(json.object({ error = json.object({ code = code, message = message }) }))
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


local function query_param(query, name)
    for k, v in query:gmatch("([^&=]+)=([^&]*)") do
        if k == name then return v end
    end
    return nil
end


local function unescape(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end


--- Starts serving pipeline p. opts: listen ("127.0.0.1:8080"; port 0:
-- any), token (Bearer token, nil: no auth), executor (default: a new one),
-- max_body (bytes, 1 MiB), retention/max_results (evictions give 410).
-- Returns the server: server.port, server:close(), server:drain(t, done).
function M.serve(p, opts)
    opts = opts or {}
    local listen = opts.listen or "127.0.0.1:8080"
    local host, port = listen:match("^%[?([^%]]*)%]?:(%d+)$")
    if not host then error("tide.serve: listen must be HOST:PORT, got " .. tostring(listen), 2) end
    p:compile()
    local ex = opts.executor or executor.new {
        retention = opts.retention, max_results = opts.max_results, threads = opts.threads,
    }
    local token = opts.token
    local started = hrtime()
    local evicted = {} -- ids whose results were evicted: 410, not 404
    local counts = { submitted = 0, done = 0, failed = 0, cancelled = 0 }
    local srv

    local function respond(conn, status, body, ctype)
        srv:respond(conn, status, body, ctype)
    end

    local function result_body(id)
        local r = ex._results[id]
        if r.status == "done" then
            return enc(json.object({ id = id, status = "done", output = r.value == nil and json.null or r.value }))
        end
        local rec = r.value
        return enc(json.object({ id = id, status = r.status,
                                 error = json.object(errors.plain(rec, true)) }))
    end

    -- Answers conn with id's result now, or when it finishes, or with 202
    -- after `wait` seconds, whichever is first.
    local function long_poll(conn, id, wait, status_when_done)
        if ex._results[id] then
            respond(conn, status_when_done, result_body(id))
            return
        end
        local answered = false
        local timer
        if wait > 0 then
            timer = core.timer(ex._ud, wait, function()
                if answered then return end
                answered = true
                timer:close()
                respond(conn, 202, enc(json.object({ id = id, status = ex:status(id) or "unknown" })))
            end)
        end
        ex:watch(id, function()
            if answered then return end
            answered = true
            if timer then timer:close() end
            respond(conn, status_when_done, result_body(id))
        end)
        if wait <= 0 and not answered then
            answered = true
            respond(conn, 202, enc(json.object({ id = id, status = ex:status(id) or "unknown" })))
        end
    end

    local function wait_of(query, conn)
        local w = query_param(query, "wait")
        if w == nil then return 0 end
        local n = tonumber(w)
        if not n or n < 0 then
            respond(conn, 400, jerr("EINVAL", "wait must be a number of seconds >= 0"))
            return nil
        end
        return math.min(n, MAX_WAIT)
    end

    local function metrics()
        local s = ex:stats()
        local hs = srv:stats()
        local lines = {}
        -- One metric: its HELP and TYPE lines, then "name value" samples
        -- (pairs of label set and value).
        local function metric(name, kind, help, ...)
            lines[#lines + 1] = "# HELP " .. name .. " " .. help
            lines[#lines + 1] = "# TYPE " .. name .. " " .. kind
            local samples = { ... }
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
        metric("tide_workers_replaced_total", "counter", "Stand-ins for stuck worker threads.",
               "", s.workers_replaced)
        metric("tide_http_requests_total", "counter", "HTTP requests parsed.", "", hs.requests)
        metric("tide_http_rejected_total", "counter", "HTTP requests refused (4xx before routing).",
               "", hs.rejected)
        metric("tide_uptime_seconds", "gauge", "Seconds since the server started.",
               "", format("%.3f", hrtime() - started))
        return table.concat(lines, "\n") .. "\n"
    end

    local function submit(conn, query, headers, body)
        local ctype = headers["content-type"] or ""
        if not ctype:lower():match("^application/json") then
            return respond(conn, 415, jerr("EINVAL", "Content-Type must be application/json"))
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
        local prio = req.priority
        if prio ~= nil and not executor.PRIO[prio] then
            return respond(conn, 400, jerr("EINVAL", "priority must be high, low or lifo"))
        end
        local wait = wait_of(query, conn)
        if not wait then return end
        if id and (ex._live[id] or ex._results[id]) then
            return respond(conn, 409, jerr("EEXIST", "duplicate id '" .. id .. "'"))
        end
        local input = req.input
        if input == json.null then input = nil end
        local ok, res = pcall(ex.submit, ex, p, input, { id = id, priority = prio })
        if not ok then
            return respond(conn, 400, jerr("EINVAL", tostring(res)))
        end
        counts.submitted = counts.submitted + 1
        ex:watch(res, function(jid)
            local r = ex._results[jid]
            if r then counts[r.status] = (counts[r.status] or 0) + 1 end
        end)
        if query_param(query, "wait") then
            return long_poll(conn, res, wait, 200)
        end
        respond(conn, 201, enc(json.object({ id = res })))
    end

    local function route(conn, method, path, query, headers, body)
        if path == "/healthz" then
            if method ~= "GET" then return respond(conn, 405, jerr("EINVAL", "use GET")) end
            return respond(conn, 200, '{"ok":true}')
        end
        if token then
            local auth = headers["authorization"] or ""
            local given = auth:match("^Bearer%s+(.+)$")
            if not same_token(given, token) then
                return respond(conn, 401, jerr("EAUTH", "missing or wrong bearer token"))
            end
        end
        if path == "/metrics" and method == "GET" then
            return srv:respond(conn, 200, metrics(), "text/plain; version=0.0.4")
        end
        if path == "/v1/jobs" then
            if method ~= "POST" then return respond(conn, 405, jerr("EINVAL", "use POST")) end
            return submit(conn, query, headers, body)
        end
        local id, rest = path:match("^/v1/jobs/([^/]+)(.*)$")
        if not id then return respond(conn, 404, jerr("ENOENT", "no such endpoint")) end
        id = unescape(id)
        local known = ex._live[id] or ex._results[id]
        if not known then
            if evicted[id] then
                return respond(conn, 410, jerr("EGONE", "the result of job '" .. id .. "' was evicted"))
            end
            return respond(conn, 404, jerr("ENOENT", "no job with id '" .. id .. "'"))
        end
        if rest == "" and method == "GET" then
            return respond(conn, 200, enc(json.object({ id = id, status = ex:status(id) })))
        elseif rest == "" and method == "DELETE" then
            local ok, msg, code = ex:cancel(id)
            if not ok then return respond(conn, 409, jerr(code, msg)) end
            return respond(conn, 200, enc(json.object({ id = id, status = "cancelled" })))
        elseif rest == "/result" and method == "GET" then
            local wait = wait_of(query, conn)
            if not wait then return end
            return long_poll(conn, id, wait, 200)
        end
        return respond(conn, 405, jerr("EINVAL", "method not allowed here"))
    end

    -- Remember evicted ids (bounded) to answer 410 instead of 404.
    local old_evict = ex._evict
    local nevicted, evict_order = 0, {}
    ex._evict = function(self)
        local before = {}
        for i = self._rhead, self._rtail do before[i] = self._rorder[i] end
        old_evict(self)
        for i, id in pairs(before) do
            if i < self._rhead and not self._results[id] then
                evicted[id] = true
                nevicted = nevicted + 1
                evict_order[nevicted] = id
                if nevicted > 100000 then evicted[evict_order[nevicted - 100000]] = nil end
            end
        end
    end

    local err
    srv, err = core.http_listen(ex._ud, host, tonumber(port), {
        max_body = opts.max_body or 1048576,
        request_timeout = opts.request_timeout or 10,
        idle_timeout = opts.idle_timeout or 60,
    }, function(conn, method, path, query, headers, body)
        route(conn, method, path, query, headers, body)
    end)
    if not srv then return nil, err, "EIO" end

    local server = { executor = ex, port = srv:port(), _srv = srv }
    function server.close() srv:close() end
    -- Stops accepting, lets jobs in flight finish (at most `timeout` s),
    -- answers what waits, then calls done().
    function server.drain(timeout, done)
        srv:close(true)
        local deadline = hrtime() + (timeout or 30)
        local ticker
        ticker = core.timer(ex._ud, 0.05, function()
            if ex:stats().live == 0 or hrtime() > deadline then
                ticker:close()
                for id in pairs(ex._live) do ex:cancel(id) end
                srv:close()
                if done then done() end
            end
        end)
    end
    return server
end

return M
