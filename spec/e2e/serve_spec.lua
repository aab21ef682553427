-- End-to-end specs of `tide serve`: the real binary on a free loopback
-- port, spoken to with curl (and raw bytes through bash's /dev/tcp).
local proc = require "helpers.proc"
local server = require "helpers.serve"
local rawhttp = require "helpers.rawhttp"
local json = require("tide.core").json

local q = proc.shquote

local start, stop, http = server.start, server.stop, server.http
-- The version every job of the serve fixture runs: the hash of its text
-- (docs/http.md#hot-reload).
local V = require("tide.core").xxh128(proc.slurp("spec/fixtures/pipelines/serve.lua"))

-- Raw bytes on a fresh connection; returns the status line's code.
local function raw(s, bytes, wait)
    local cmd = "exec 3<>/dev/tcp/127.0.0.1/" .. s.port .. "; printf %s " .. q(bytes)
        .. " >&3; " .. (wait and ("sleep " .. wait .. "; ") or "") .. "timeout 5 head -c 12 <&3"
    local h = io.popen("env -u LD_PRELOAD bash -c " .. q(cmd))
    local out = h:read("*a")
    h:close()
    return tonumber(out:match("^HTTP/1%.1 (%d+)"))
end

describe("tide serve", function()
    local s
    setup(function() s = start("--request-timeout 0.5 --max-results 3") end)
    teardown(function() stop(s) end)

    it("submits, reports status and returns results", function()
        local st, body = http(s, "POST", "/v1/jobs", '{"id":"a","input":21}')
        assert.equal(201, st)
        assert.same({ id = "a", version = V }, json.decode(body))
        st, body = http(s, "GET", "/v1/jobs/a/result?wait=2")
        assert.equal(200, st)
        assert.same({ id = "a", status = "done", output = 42, version = V }, json.decode(body))
        st, body = http(s, "GET", "/v1/jobs/a")
        assert.equal(200, st)
        assert.same({ id = "a", status = "done", version = V }, json.decode(body))
        -- Reading a result does not consume it.
        st = http(s, "GET", "/v1/jobs/a/result")
        assert.equal(200, st)
    end)

    it("submits and waits in one request, and returns error records", function()
        local st, body = http(s, "POST", "/v1/jobs?wait=2", '{"input":{"n":4,"sleep":0.1}}')
        assert.equal(200, st)
        assert.equal(8, json.decode(body).output)
        st, body = http(s, "POST", "/v1/jobs?wait=2", '{"input":"boom"}')
        assert.equal(200, st)
        local r = json.decode(body)
        assert.equal("failed", r.status)
        assert.equal("ETASK", r.error.code)
        assert.matches("boom on purpose", r.error.message)
    end)

    it("answers 202 when a long-poll expires first, never later", function()
        http(s, "POST", "/v1/jobs", '{"id":"slow","input":{"n":1,"sleep":3}}')
        local t0 = os.time()
        local st, body = http(s, "GET", "/v1/jobs/slow/result?wait=0.3")
        assert.equal(202, st)
        assert.equal("running", json.decode(body).status)
        assert.is_true(os.time() - t0 <= 1)
        st = http(s, "DELETE", "/v1/jobs/slow")
        assert.equal(200, st)
        st, body = http(s, "GET", "/v1/jobs/slow/result")
        assert.equal(200, st)
        assert.equal("ECANCELED", json.decode(body).error.code)
        st, body = http(s, "DELETE", "/v1/jobs/slow")
        assert.equal(409, st)
        assert.same({ error = { code = "EINVAL", message = "job 'slow' has already finished" } },
                    json.decode(body))
    end)

    it("refuses bad requests with clear JSON errors and keeps serving", function()
        assert.equal(201, (http(s, "POST", "/v1/jobs", '{"id":"dup","input":1}')))
        assert.equal(409, (http(s, "POST", "/v1/jobs", '{"id":"dup","input":1}')))
        local st, body = http(s, "POST", "/v1/jobs", "{not json")
        assert.equal(400, st)
        assert.equal("EVALUE", json.decode(body).error.code)
        assert.equal(415, (http(s, "POST", "/v1/jobs", '{"input":1}', { "Content-Type: text/plain" })))
        assert.equal(400, (http(s, "POST", "/v1/jobs", '{"inputs":1}')))
        assert.equal(400, (http(s, "POST", "/v1/jobs?wait=soon", '{"input":1}')))
        assert.equal(404, (http(s, "GET", "/v1/jobs/never")))
        assert.equal(404, (http(s, "GET", "/elsewhere")))
        assert.equal(405, (http(s, "PUT", "/v1/jobs", "{}")))
        local big = '{"input":"' .. string.rep("x", 1100000) .. '"}'
        assert.equal(413, (http(s, "POST", "/v1/jobs", big)))
        local many = {}
        for i = 1, 70 do many[i] = "X-H" .. i .. ": v" end
        many[#many + 1] = "Content-Type: application/json"
        assert.equal(431, (http(s, "POST", "/v1/jobs", '{"input":1}', many)))
        assert.equal(400, raw(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n folded: yes\r\n\r\n"))
        assert.equal(400, raw(s, "GET /healthz HTTP/1.1\nHost: x\n\n"))
        assert.equal(400, raw(s, "GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n"))
        assert.equal(400, raw(s, "GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"))
        assert.equal(408, raw(s, "GET /healthz HTTP/1.1\r\nHost:", 0.9)) -- too slow
        -- Still serving.
        assert.equal(200, (http(s, "GET", "/healthz")))
    end)

    it("keeps serving when clients hang up during long-polls", function()
        for i = 1, 4 do
            -- curl gives up after 0.2 s; the job ends 0.4 s later.
            os.execute("env -u LD_PRELOAD curl -s -m 0.2 -X POST -H 'Content-Type: application/json' -d "
                .. q('{"id":"gone' .. i .. '","input":{"n":' .. i .. ',"sleep":0.6}}') .. " "
                .. q(s.url .. "/v1/jobs?wait=10") .. " >/dev/null 2>&1")
        end
        -- The jobs still finish and their results are there for the asking.
        local st, body = http(s, "GET", "/v1/jobs/gone4/result?wait=5")
        assert.equal(200, st)
        assert.same({ id = "gone4", status = "done", output = 8, version = V }, json.decode(body))
        assert.equal(200, (http(s, "GET", "/healthz")))
    end)

    it("answers 410 for results evicted by --max-results", function()
        for i = 1, 5 do http(s, "POST", "/v1/jobs?wait=2", '{"id":"e' .. i .. '","input":' .. i .. '}') end
        assert.equal(410, (http(s, "GET", "/v1/jobs/e1/result")))
        assert.equal(200, (http(s, "GET", "/v1/jobs/e5/result")))
    end)

    -- The value of one sample in a Prometheus text exposition.
    local function sample(body, series)
        local v = body:match("\n" .. series:gsub("[%%%-%+%.%[%]%(%)%*%?%^%$]", "%%%0") .. " (%S+)\n")
        return tonumber(v)
    end

    it("exposes Prometheus metrics: jobs, per-task attempts, durations, loop lag", function()
        local _, before = http(s, "GET", "/metrics")
        local a0 = sample(before, 'tide_task_attempts_total{task="double"}')
        local f0 = sample(before, 'tide_task_failures_total{task="double"}')
        local r0 = sample(before, 'tide_task_retries_total{task="double"}')
        local c0 = sample(before, 'tide_task_duration_seconds_count{task="double"}')
        local st0, flaky = http(s, "POST", "/v1/jobs?wait=2", '{"input":"flaky"}')
        assert.equal(200, st0)
        assert.equal(2, json.decode(flaky).error.attempts)
        http(s, "POST", "/v1/jobs?wait=2", '{"input":{"n":1,"sleep":0.03}}')
        local st, body = http(s, "GET", "/metrics")
        assert.equal(200, st)
        -- Every line is a comment or a sample "name{labels} value".
        for line in body:gmatch("[^\n]+") do
            assert.is_truthy(line:match("^# HELP %w") or line:match("^# TYPE [%w_]+ %a+$")
                or line:match('^[%a_][%w_]*{[^}]*} [%d.e+-]+$') or line:match("^[%a_][%w_]* [%d.e+-]+$")
                or line:match('le="%+Inf"} %d+$'), "bad line: " .. line)
        end
        assert.matches("\ntide_jobs_total %d+\n", body)
        assert.matches('tide_jobs_finished_total{status="done"} %d+', body)
        assert.matches("# TYPE tide_http_rejected_total counter", body)
        -- "flaky" fails twice (one retry), the nap succeeds once.
        assert.equal(a0 + 3, sample(body, 'tide_task_attempts_total{task="double"}'))
        assert.equal(f0 + 2, sample(body, 'tide_task_failures_total{task="double"}'))
        assert.equal(r0 + 1, sample(body, 'tide_task_retries_total{task="double"}'))
        assert.equal(0, sample(body, 'tide_task_running{task="double"}'))
        assert.equal(0, sample(body, 'tide_task_retrying{task="double"}'))
        assert.matches("# TYPE tide_task_duration_seconds histogram", body)
        local count = sample(body, 'tide_task_duration_seconds_count{task="double"}')
        assert.equal(c0 + 3, count)
        assert.equal(count, sample(body, 'tide_task_duration_seconds_bucket{task="double",le="+Inf"}'))
        -- The 30 ms nap is above 0.01 s: buckets are cumulative.
        assert.is_true(sample(body, 'tide_task_duration_seconds_bucket{task="double",le="0.01"}') < count)
        assert.is_true(sample(body, 'tide_task_duration_seconds_sum{task="double"}') >= 0.03)
        assert.matches("# TYPE tide_loop_lag_seconds histogram", body)
        assert.is_true(sample(body, "tide_loop_lag_seconds_count") >= 1)
    end)

    it("serves the dashboard page and its JSON feed", function()
        -- Before any job of a fresh server: zero counts, and an empty
        -- array (not an object) of failures.
        local fresh = start()
        local _, empty = http(fresh, "GET", "/v1/stats")
        stop(fresh)
        assert.matches('"failures":%[%]', empty)
        local t = json.decode(empty).tasks
        assert.equal(1, #t)
        assert.same({ "double", 0, 0, 0, 0 }, { t[1].task, t[1].running, t[1].done, t[1].failed, t[1].retrying })
        local st, page = http(s, "GET", "/")
        assert.equal(200, st)
        assert.matches("^<!DOCTYPE html>", page)
        assert.is_truthy(page:find('data-task="double"', 1, true))
        http(s, "POST", "/v1/jobs?wait=2", '{"id":"dash-boom","input":"boom"}')
        local st2, body = http(s, "GET", "/v1/stats")
        assert.equal(200, st2)
        local stats = json.decode(body)
        assert.equal("serve", stats.pipeline)
        assert.equal("double", stats.tasks[1].task)
        assert.is_true(stats.tasks[1].done >= 1)
        assert.is_true(stats.tasks[1].failed >= 1)
        assert.is_true(stats.jobs.failed >= 1)
        local f = stats.failures[1] -- the most recent first
        assert.equal("dash-boom", f.id)
        assert.equal("double", f.error.task)
        assert.matches("boom on purpose", f.error.message)
        assert.matches("traceback", f.error.traceback)
        assert.equal(405, (http(s, "POST", "/v1/stats", "{}")))
    end)
end)

-- The value of one sample in a Prometheus text exposition.
local function metric(s, series)
    local _, body = http(s, "GET", "/metrics")
    return tonumber(body:match("\n" .. series .. " (%S+)\n"))
end

describe("tide serve --max-pending and --max-pending-bytes", function()
    it("answers 503 with Retry-After past either bound and submits nothing", function()
        local s = start("--max-pending 5 --max-pending-bytes 300")
        finally(function() stop(s) end)
        local function job(id, pad)
            local extra = pad and (',"pad":"' .. pad .. '"') or ""
            return '{"id":"' .. id .. '","input":{"n":1,"sleep":30' .. extra .. '}}'
        end
        local bytes = 0
        for i = 1, 5 do
            assert.equal(201, (http(s, "POST", "/v1/jobs", job("p" .. i))))
            bytes = bytes + #job("p" .. i)
        end
        -- The sixth: refused, with a JSON error and a Retry-After.
        local r = rawhttp.post(s.port, "/v1/jobs", job("p6"))
        assert.equal(503, r.status)
        assert.equal("1", r.headers["retry-after"])
        local e = json.decode(r.body).error
        assert.equal("EAGAIN", e.code)
        assert.equal("too busy: 5 jobs are pending (max-pending 5); retry later", e.message)
        assert.equal(404, (http(s, "GET", "/v1/jobs/p6")))
        assert.equal(5, metric(s, "tide_pending_jobs"))
        assert.equal(bytes, metric(s, "tide_pending_bytes"))
        assert.equal(1, metric(s, "tide_jobs_refused_total"))
        assert.equal(5, metric(s, "tide_pending_jobs_limit"))
        assert.equal(300, metric(s, "tide_pending_bytes_limit"))
        -- A finished (here cancelled) job makes room.
        assert.equal(200, (http(s, "DELETE", "/v1/jobs/p1")))
        assert.equal(200, (http(s, "DELETE", "/v1/jobs/p2")))
        assert.equal(3, metric(s, "tide_pending_jobs"))
        assert.equal(201, (http(s, "POST", "/v1/jobs", job("p6"))))
        -- Past the byte bound: 4 jobs of 39 bytes and one of 150 > 300.
        local big = job("big", string.rep("x", 150 - #job("big", "")))
        assert.equal(150, #big)
        r = rawhttp.post(s.port, "/v1/jobs", big)
        assert.equal(503, r.status)
        assert.equal("1", r.headers["retry-after"])
        assert.matches("bytes of jobs are pending %(max%-pending%-bytes 300%)", json.decode(r.body).error.message)
        assert.equal(404, (http(s, "GET", "/v1/jobs/big")))
        assert.equal(2, metric(s, "tide_jobs_refused_total"))
        -- A body that could never fit is a 413, not a 503.
        local st, body = http(s, "POST", "/v1/jobs", job("huge", string.rep("x", 300)))
        assert.equal(413, st)
        assert.matches("larger than max%-pending%-bytes %(300%)", json.decode(body).error.message)
        for _, id in ipairs({ "p3", "p4", "p5", "p6" }) do http(s, "DELETE", "/v1/jobs/" .. id) end
        assert.equal(0, metric(s, "tide_pending_jobs"))
        assert.equal(0, metric(s, "tide_pending_bytes"))
    end)
end)

describe("tide serve long-polls", function()
    -- Under the sanitizers freed memory sits in quarantine (RSS says
    -- nothing) and each request is slower: fewer polls, no RSS check.
    local san = (os.getenv("TIDE_SAN_FLAGS") or "") ~= ""

    it("remove what they registered when they end: by their wait, or the client leaving", function()
        local s = start()
        finally(function() stop(s) end)
        assert.equal(201, (http(s, "POST", "/v1/jobs", '{"id":"long","input":{"n":1,"sleep":30}}')))
        local function rss()
            return tonumber(proc.slurp("/proc/" .. s.pid .. "/status"):match("VmRSS:%s*(%d+)")) * 1024
        end
        local c = rawhttp.connect(s.port)
        local function polls(n, wait)
            local req = "GET /v1/jobs/long/result?wait=" .. wait .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            for _ = 1, n do
                c:send(req)
                assert.equal(202, c:response().status)
            end
        end
        polls(2000, 0)
        local before = rss()
        polls(san and 2000 or 20000, 0)
        -- Before the fix each poll kept ~500 bytes until the job ended
        -- (20 000 polls: +10 MB).
        if not san then assert.is_true(rss() - before < 3 * 1048576, "RSS grew by " .. (rss() - before)) end
        polls(50, 0.01)
        c:close()
        assert.equal(0, metric(s, "tide_result_waiters"))
        -- Long waits that are still on count; clients that vanish (reset)
        -- take theirs away at once, waits that expire take theirs then.
        local gone, expiring = {}, {}
        for i = 1, 10 do
            gone[i] = rawhttp.connect(s.port)
            gone[i]:send("GET /v1/jobs/long/result?wait=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            expiring[i] = rawhttp.connect(s.port)
            expiring[i]:send("GET /v1/jobs/long/result?wait=3 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        end
        local function until_waiters(n)
            local got
            for _ = 1, 100 do
                got = metric(s, "tide_result_waiters")
                if got == n then return end
                os.execute("sleep 0.02")
            end
            assert.equal(n, got)
        end
        until_waiters(20)
        for i = 1, 10 do gone[i]:reset() end
        until_waiters(10)
        for i = 1, 10 do
            assert.equal(202, expiring[i]:response().status)
            expiring[i]:close()
        end
        until_waiters(0)
        -- The job is still there, and a wait still gets its end.
        local waiter = rawhttp.connect(s.port)
        waiter:send("GET /v1/jobs/long/result?wait=10 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        until_waiters(1)
        assert.equal(200, (http(s, "DELETE", "/v1/jobs/long")))
        local r = waiter:response()
        assert.equal(200, r.status)
        assert.equal("ECANCELED", json.decode(r.body).error.code)
        waiter:close()
        assert.equal(0, metric(s, "tide_result_waiters"))
    end)
end)

describe("tide serve with --token-file", function()
    it("needs the bearer token everywhere but /healthz", function()
        local tok = os.tmpname()
        finally(function() os.remove(tok) end)
        proc.write(tok, "s3cret\n")
        local s = start("--token-file " .. q(tok))
        finally(function() stop(s) end)
        assert.equal(401, (http(s, "POST", "/v1/jobs", '{"input":1}')))
        assert.equal(401, (http(s, "GET", "/metrics", nil, { "Authorization: Bearer wrong" })))
        assert.equal(200, (http(s, "GET", "/healthz", nil, {})))
        assert.equal(201, (http(s, "POST", "/v1/jobs", '{"input":1}',
            { "Content-Type: application/json", "Authorization: Bearer s3cret" })))
        -- The dashboard: the token in the query (a browser cannot send
        -- the header when it opens a page), on / only.
        assert.equal(401, (http(s, "GET", "/", nil, {})))
        assert.equal(401, (http(s, "GET", "/?token=wrong", nil, {})))
        assert.equal(200, (http(s, "GET", "/?token=s3cret", nil, {})))
        assert.equal(401, (http(s, "GET", "/v1/stats?token=s3cret", nil, {})))
        assert.equal(200, (http(s, "GET", "/v1/stats", nil, { "Authorization: Bearer s3cret" })))
    end)
end)

describe("tide serve drain", function()
    it("finishes jobs in flight and answers long-polls on SIGTERM, then exits 0", function()
        local s = start()
        http(s, "POST", "/v1/jobs", '{"id":"d","input":{"n":5,"sleep":0.6}}')
        local h = io.popen("env -u LD_PRELOAD curl -s " .. q(s.url .. "/v1/jobs/d/result?wait=5"))
        os.execute("sleep 0.2")
        local text = stop(s, "TERM")
        local body = h:read("*a")
        h:close()
        assert.same({ id = "d", status = "done", output = 10, version = V }, json.decode(body))
        assert.matches("draining", text)
        assert.matches("stopped", text)
    end)
end)

describe("tide.serve from Lua", function()
    local tide = require "tide"
    local core = require "tide.core"

    -- Runs curl in the background while this process drives the loop with
    -- tide.step (as an embedding host does); returns status, body.
    local function curl_while_stepping(args)
        local out = os.tmpname()
        os.execute("(env -u LD_PRELOAD curl -s -o " .. q(out) .. " -w '%{http_code}' " .. args
            .. " > " .. q(out .. ".code") .. "; touch " .. q(out .. ".done") .. ") &")
        local fd = tide.fd()
        local t0 = core.hrtime()
        while not proc.slurp(out .. ".done") and core.hrtime() - t0 < 10 do
            tide.step()
            core.poll(fd, 10)
        end
        local status, body = tonumber(proc.slurp(out .. ".code")), proc.slurp(out)
        for _, f in ipairs({ out, out .. ".code", out .. ".done" }) do os.remove(f) end
        return status, body
    end

    it("serves a pipeline on a running executor, with a token", function()
        local p = dofile("spec/fixtures/pipelines/serve.lua")
        local ex = tide.executor()
        local srv = assert(tide.serve(p, { listen = "127.0.0.1:0", token = "t0k", executor = ex }))
        finally(function()
            srv.close()
            ex:close()
        end)
        assert.is_true(srv.port > 0)
        assert.equal(ex, srv.executor)
        -- A job submitted from Lua is visible over HTTP.
        ex:submit(p, 4, { id = "from-lua" })
        local url = "http://127.0.0.1:" .. srv.port
        local st, body = curl_while_stepping("-H 'Authorization: Bearer t0k' "
            .. q(url .. "/v1/jobs/from-lua/result?wait=5"))
        assert.equal(200, st)
        assert.same({ id = "from-lua", status = "done", output = 8 }, json.decode(body))
        st, body = curl_while_stepping("-H 'Authorization: Bearer t0k' -H 'Content-Type: application/json' "
            .. "-d '{\"input\":21}' " .. q(url .. "/v1/jobs?wait=5"))
        assert.equal(200, st)
        assert.equal(42, json.decode(body).output)
        assert.equal(401, (curl_while_stepping(q(url .. "/v1/stats"))))
        -- And a job submitted over HTTP is visible from Lua.
        assert.equal("done", ex:status(json.decode(body).id))
    end)

    it("bounds pending jobs by max_pending", function()
        local p = dofile("spec/fixtures/pipelines/serve.lua")
        assert.has_error(function() tide.serve(p, { listen = "127.0.0.1:0", max_pending = 0 }) end,
                         "tide.serve: max_pending must be a whole number >= 1, got 0")
        assert.has_error(function() tide.serve(p, { listen = "127.0.0.1:0", max_pending_bytes = "lots" }) end,
                         "tide.serve: max_pending_bytes must be a whole number >= 1, got lots")
        assert.has_error(function() tide.serve(p, { listen = "127.0.0.1:0", allow_host = { "a:1" } }) end,
                         "tide.serve: allow_host must be a host name (no port) or a list of them, got a:1")
        local ex = tide.executor()
        local srv = assert(tide.serve(p, { listen = "127.0.0.1:0", executor = ex, max_pending = 1 }))
        finally(function()
            srv.close()
            ex:close()
        end)
        local post = "-H 'Content-Type: application/json' -d '{\"input\":{\"n\":1,\"sleep\":30}}' "
            .. q("http://127.0.0.1:" .. srv.port .. "/v1/jobs")
        assert.equal(201, (curl_while_stepping(post)))
        local st, body = curl_while_stepping(post)
        assert.equal(503, st)
        assert.equal("EAGAIN", json.decode(body).error.code)
        ex:cancel_all()
    end)

    it("rejects a bad listen address and reports a port in use", function()
        local p = dofile("spec/fixtures/pipelines/serve.lua")
        assert.has_error(function() tide.serve(p, { listen = "nonsense" }) end,
                         "tide.serve: listen must be HOST:PORT, got nonsense")
        assert.has_error(function() tide.serve(p, { listen = "127.0.0.1:70000" }) end,
                         "tide.serve: listen must be HOST:PORT, got 127.0.0.1:70000")
        local ex = tide.executor()
        local a = assert(tide.serve(p, { listen = "127.0.0.1:0", executor = ex }))
        local b, rec, extra = tide.serve(p, { listen = "127.0.0.1:" .. a.port, executor = ex })
        a.close()
        ex:close()
        assert.is_nil(b)
        assert.is_nil(extra)
        assert.equal("EIO", rec.code)
        assert.matches("cannot listen on 127.0.0.1:" .. a.port, rec.message)
    end)
end)

describe("tide serve usage errors", function()
    -- Each exits 2 with its message on stderr and serves nothing.
    local cases = {
        { "", "serve needs a pipeline file" },
        { "spec/fixtures/pipelines/serve.lua --bogus", "unknown option '--bogus'" },
        { "spec/fixtures/pipelines/serve.lua extra", "unexpected argument 'extra'" },
        { "spec/fixtures/pipelines/serve.lua --listen", "--listen needs HOST:PORT" },
        { "spec/fixtures/pipelines/serve.lua --listen localhost", "--listen needs HOST:PORT" },
        { "spec/fixtures/pipelines/serve.lua --listen 127.0.0.1:99999", "--listen needs HOST:PORT" },
        { "spec/fixtures/pipelines/serve.lua --threads 0", "--threads needs a whole number from 1 to 1024" },
        { "spec/fixtures/pipelines/serve.lua --threads x", "--threads needs a whole number from 1 to 1024" },
        { "spec/fixtures/pipelines/serve.lua --request-timeout 0", "--request-timeout needs seconds > 0" },
        { "spec/fixtures/pipelines/serve.lua --max-results 0", "--max-results needs a whole number >= 1" },
        { "spec/fixtures/pipelines/serve.lua --drain-timeout -1", "--drain-timeout needs seconds >= 0" },
        { "spec/fixtures/pipelines/serve.lua --token-file /nonexistent/tok", "--token-file: " },
        { "spec/fixtures/pipelines/serve.lua --max-pending 0", "--max-pending needs a whole number >= 1" },
        { "spec/fixtures/pipelines/serve.lua --max-pending-bytes 1.5",
          "--max-pending-bytes needs a whole number of bytes >= 1" },
        { "spec/fixtures/pipelines/serve.lua --allow-host", "--allow-host needs a host name" },
        { "spec/fixtures/pipelines/serve.lua --allow-host tide.example:80", "--allow-host needs a host name" },
        { "spec/fixtures/pipelines/nope.lua", "nope.lua" },
    }
    for _, c in ipairs(cases) do
        it("refuses 'tide serve " .. c[1] .. "'", function()
            local out = os.tmpname()
            finally(function() os.remove(out) end)
            -- timeout: a case that wrongly starts serving must not hang the suite.
            local h = io.popen("timeout 10 " .. proc.bin .. " serve " .. c[1] .. " --listen 127.0.0.1:0 2>" .. q(out)
                .. " </dev/null; echo $?")
            local code = tonumber(h:read("*a"))
            h:close()
            local err = proc.slurp(out)
            assert.equal(2, code, err)
            assert.is_truthy(err:find(c[2], 1, true), err)
            assert.is_nil(err:find("serving", 1, true))
        end)
    end

    it("refuses an empty token file", function()
        local tok = os.tmpname()
        finally(function() os.remove(tok) end)
        proc.write(tok, "  \n")
        local h = io.popen("timeout 10 " .. proc.bin
            .. " serve spec/fixtures/pipelines/serve.lua --listen 127.0.0.1:0 --token-file "
            .. q(tok) .. " 2>&1 </dev/null; echo \"rc=$?\"")
        local text = h:read("*a")
        h:close()
        assert.matches("the file is empty", text)
        assert.matches("rc=2", text)
    end)
end)

describe("tide serve with TIDE_SERVE_PHASES=1", function()
    it("prints per-phase percentiles on SIGTERM; garbage requests still get their errors", function()
        local s = start("", nil, { TIDE_SERVE_PHASES = "1" })
        local st, body = http(s, "POST", "/v1/jobs?wait=5", '{"input":21}')
        assert.equal(200, st)
        assert.equal(42, json.decode(body).output)
        st = http(s, "POST", "/v1/jobs?wait=5", '{"input":')
        assert.equal(400, st)
        assert.equal(400, raw(s, "GET / HTTP/1.1\nHost: localhost\n\n"))
        st, body = http(s, "GET", "/v1/jobs/1/result?wait=0.2")
        assert.equal(200, st)
        assert.equal(42, json.decode(body).output)
        local err = stop(s)
        for _, phase in ipairs({ "read_parse", "submit", "run", "encode", "write", "total", "loop_turn" }) do
            local n = err:match("phase=" .. phase .. " n=(%d+) mean_us=[%d.]+ p50_us=[%d.]+ p90_us=[%d.]+ "
                                .. "p99_us=[%d.]+ p999_us=[%d.]+ max_us=[%d.]+\n")
            assert(n, "no line for " .. phase .. " in: " .. err)
        end
        -- One submission reached a job; the malformed body and the GET
        -- passed through Lua; the bare-LF request never got there.
        assert.equal("1", err:match("phase=submit n=(%d+)"))
        assert.equal("1", err:match("phase=run n=(%d+)"))
        assert.equal("3", err:match("phase=read_parse n=(%d+)"))
        assert.matches("phases turns=%d+ gc_turns=%d+ requests=3 ", err)
    end)

    it("is off by default: no report", function()
        local s = start("")
        assert.equal(200, (http(s, "POST", "/v1/jobs?wait=5", '{"input":1}')))
        assert.is_nil(stop(s):match("phase="))
    end)
end)
