--- `tide serve PIPELINE.lua --redis URL` (lua/tide/rserve.lua) with a real
-- redis-server and a real `tide worker`: the HTTP API of docs/http.md in
-- front of the queue, idempotency keys (the job id or Idempotency-Key,
-- also two clients racing), status, result and cancel from a second
-- server, garbage requests, and Redis going away (503, not a hang).
local proc = require "helpers.proc"
local rs = require "helpers.redis"
local serve = require "helpers.serve"
local socket = require "socket"
local core = require "tide.core"

local json = core.json
local q = proc.shquote

local PIPE = "spec/fixtures/pipelines/distributed.lua"

local function start_worker(url, dir, args)
    local cmd = ("%s worker %s --redis %s %s 2>%s & echo $!"):format(
        q(proc.bin), q(PIPE), q(url), args or "", q(dir .. "/w.err"))
    local h = io.popen("sh -c " .. q(cmd))
    local pid = tonumber(h:read("*l"))
    h:close()
    return pid
end

local function stop_worker(pid)
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    for _ = 1, 200 do
        if os.execute("kill -0 " .. pid .. " 2>/dev/null") ~= 0 then return end
        socket.sleep(0.05)
    end
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
end

describe("tide serve --redis", function()
    local server, dir, w, s

    before_each(function()
        server = rs.start()
        dir = proc.tmpdir()
        w = start_worker(server.url, dir, "--lease 1")
        s = serve.start("--redis " .. server.url, PIPE)
    end)
    after_each(function()
        if s then serve.stop(s) end
        stop_worker(w)
        server:stop()
        proc.rmrf(dir)
    end)

    local function req(method, path, body, headers)
        headers = headers or {}
        headers[#headers + 1] = "Content-Type: application/json"
        local status, text = serve.http(s, method, path, body, headers)
        return status, text and text ~= "" and json.decode(text) or nil, text
    end

    it("submits (201 after the XADD), waits, answers status and result", function()
        local st, b = req("POST", "/v1/jobs", '{"input":{"n":3}}')
        assert.equal(201, st)
        assert.is_string(b.id)
        assert.equal(32, #b.version)
        local id = b.id
        st, b = req("GET", "/v1/jobs/" .. id .. "/result?wait=20")
        assert.equal(200, st)
        assert.same({ id = id, status = "done", output = { n = 3, twice = 6 } }, b)
        st, b = req("GET", "/v1/jobs/" .. id)
        assert.equal(200, st)
        assert.equal("done", b.status)
        -- ?wait= on the POST itself.
        st, b = req("POST", "/v1/jobs?wait=20", '{"input":{"n":1,"fail":true}}')
        assert.equal(200, st)
        assert.equal("failed", b.status)
        assert.equal("ETASK", b.error.code)
        -- Stats and metrics read the queue from Redis.
        st, b = req("GET", "/v1/stats")
        assert.equal(200, st)
        assert.equal(2, b.jobs.submitted)
        assert.equal(0, b.queue.length)
        local mst, mtext = serve.http(s, "GET", "/metrics")
        assert.equal(200, mst)
        assert.matches("\ntide_redis_up 1\n", mtext)
        assert.matches("\ntide_jobs_total 2\n", mtext)
        assert.matches("\ntide_dead_letter_length 0\n", mtext)
    end)

    it("an id or Idempotency-Key given twice is the first job: one execution, one result", function()
        local st, b = req("POST", "/v1/jobs?wait=20", '{"input":{"n":4}}', { "Idempotency-Key: order-7" })
        assert.equal(200, st)
        assert.same({ id = "order-7", status = "done", output = { n = 4, twice = 8 } }, b)
        st, b = req("POST", "/v1/jobs", '{"input":{"n":5}}', { "Idempotency-Key: order-7" })
        assert.equal(200, st)
        assert.equal("order-7", b.id)
        assert.is_true(b.existing)
        st, b = req("POST", "/v1/jobs", '{"id":"order-7","input":{"n":6}}')
        assert.equal(200, st)
        assert.is_true(b.existing)
        st, b = req("GET", "/v1/jobs/order-7/result")
        assert.equal(200, st)
        assert.same({ n = 4, twice = 8 }, b.output)
        assert.equal("2", server:cli("XLEN", "tide:{distributed}:res:job:order-7"))
        -- Two clients racing: one job per key.
        local cmd = {}
        for i = 1, 20 do
            for _ = 1, 2 do
                cmd[#cmd + 1] = ("env -u LD_PRELOAD curl -s -o /dev/null -w '%%{http_code}\\n' "
                              .. "-H 'Content-Type: application/json' -H %s -d %s %s &")
                    :format(q("Idempotency-Key: r" .. i), q('{"input":{"n":' .. i .. '}}'), q(s.url .. "/v1/jobs"))
            end
        end
        local h = io.popen("sh -c " .. q(table.concat(cmd, "\n") .. "\nwait"))
        local codes = h:read("*a")
        h:close()
        local _, created = codes:gsub("201", "")
        local _, again = codes:gsub("200", "")
        assert.same({ 20, 20 }, { created, again })
        for i = 1, 20 do
            st, b = req("GET", "/v1/jobs/r" .. i .. "/result?wait=20")
            assert.equal(200, st)
            assert.same({ n = i, twice = 2 * i }, b.output)
        end
    end)

    it("answers many long-polls that start at once as their jobs end, none left to the read's BLOCK time",
       function()
        local cmd = {}
        for i = 1, 30 do
            cmd[#cmd + 1] = ("env -u LD_PRELOAD curl -s -m 60 -H 'Content-Type: application/json' -d %s %s &")
                :format(q('{"input":{"n":' .. i .. ',"secs":0.5}}'), q(s.url .. "/v1/jobs?wait=30"))
        end
        local t0 = socket.gettime()
        local h = io.popen("sh -c " .. q(table.concat(cmd, "\n") .. "\nwait"))
        local out = h:read("*a")
        h:close()
        local took = socket.gettime() - t0
        local _, n = out:gsub('"status":"done"', "")
        assert.equal(30, n, out)
        -- A wait missed by the blocking read would be answered only when
        -- that read's 10 s BLOCK ends.
        assert.is_true(took < 8, "took " .. took .. " s")
    end)

    it("cancels from another server; the job a worker runs ends with one cancelled result", function()
        local st = req("POST", "/v1/jobs", '{"id":"long","input":{"n":1,"secs":30}}')
        assert.equal(201, st)
        local b
        local other = serve.start("--redis " .. server.url, PIPE)
        local deadline = socket.gettime() + 10
        repeat
            local text
            st, text = serve.http(other, "GET", "/v1/jobs/long")
            assert.equal(200, st)
            b = json.decode(text)
        until b.status == "running" or socket.gettime() > deadline
        assert.equal("running", b.status)
        st = serve.http(other, "DELETE", "/v1/jobs/long")
        assert.equal(200, st)
        st = serve.http(other, "DELETE", "/v1/jobs/long")
        assert.equal(409, st)
        serve.stop(other)
        st, b = req("GET", "/v1/jobs/long/result")
        assert.equal(200, st)
        assert.equal("cancelled", b.status)
        assert.equal("ECANCELED", b.error.code)
        -- The worker dropped it (told by the cancels stream): it drains at once.
        socket.sleep(1)
        local t0 = socket.gettime()
        stop_worker(w)
        assert.is_true(socket.gettime() - t0 < 5)
        assert.matches("stopped: 0 done", proc.slurp(dir .. "/w.err"))
    end)

    it("answers garbage with clear 4xx errors", function()
        local function check(code, want, method, path, body, headers)
            local st, b, text = req(method, path, body, headers)
            assert.equal(code, st, text)
            assert.equal(want, b.error.code)
            return b.error.message
        end
        check(400, "EVALUE", "POST", "/v1/jobs", "{nope")
        check(400, "EINVAL", "POST", "/v1/jobs", "[1]")
        check(400, "EINVAL", "POST", "/v1/jobs", '{"x":1}')
        check(400, "EINVAL", "POST", "/v1/jobs", '{"id":"","input":1}')
        check(400, "EINVAL", "POST", "/v1/jobs", '{"id":7,"input":1}')
        check(400, "EINVAL", "POST", "/v1/jobs", '{"id":"' .. ("x"):rep(513) .. '","input":1}')
        assert.matches("control characters",
                       check(400, "EINVAL", "POST", "/v1/jobs", '{"id":"a\\u0001b","input":1}'))
        assert.matches("Idempotency%-Key", check(400, "EINVAL", "POST", "/v1/jobs", '{"input":1}',
                                                 { "Idempotency-Key: " .. ("k"):rep(600) }))
        assert.matches("differ", check(400, "EINVAL", "POST", "/v1/jobs", '{"id":"a","input":1}',
                                       { "Idempotency-Key: b" }))
        check(400, "EINVAL", "POST", "/v1/jobs?wait=x", '{"input":1}')
        check(400, "EINVAL", "POST", "/v1/jobs", '{"input":1,"priority":"high"}')
        check(404, "ENOENT", "GET", "/v1/jobs/nope")
        check(404, "ENOENT", "GET", "/v1/jobs/nope/result")
        check(404, "ENOENT", "DELETE", "/v1/jobs/nope")
        check(404, "ENOENT", "GET", "/v1/jobs/nope/logs")
        check(404, "ENOENT", "POST", "/v1/admin/reload")
        check(405, "EINVAL", "PUT", "/v1/jobs/x")
        check(405, "EINVAL", "GET", "/v1/jobs")
        local st, _, text = serve.http(s, "POST", "/v1/jobs", '{"input":1}', { "Content-Type: text/plain" })
        assert.equal(415, st, text)
        -- Nothing was submitted by any of them.
        assert.equal("0", server:cli("XLEN", "tide:{distributed}:jobs"))
    end)

    it("Redis away: 503 with a JSON error at once, and back to work when it returns", function()
        server:kill("KILL")
        local t0 = socket.gettime()
        local st, b = req("POST", "/v1/jobs", '{"input":{"n":1}}')
        assert.equal(503, st)
        assert.equal("ECONN", b.error.code)
        assert.matches("Redis at", b.error.message)
        st, b = req("GET", "/v1/jobs/x")
        assert.equal(503, st)
        assert.equal("ECONN", b.error.code)
        st = req("GET", "/healthz")
        assert.equal(503, st)
        local mst, mtext = serve.http(s, "GET", "/metrics")
        assert.equal(200, mst)
        assert.matches("\ntide_redis_up 0\n", mtext)
        assert.is_true(socket.gettime() - t0 < 5)
        server:spawn()
        -- The server's client reconnects (backoff up to 2 s). The worker is
        -- started again: its own behaviour across a Redis restart is the
        -- subject of redis_spec.
        stop_worker(w)
        w = start_worker(server.url, dir, "--lease 1")
        local deadline = socket.gettime() + 20
        repeat
            socket.sleep(0.2)
            st, b = req("POST", "/v1/jobs?wait=5", '{"input":{"n":9}}')
        until st == 200 or socket.gettime() > deadline
        assert.equal(200, st)
        assert.same({ n = 9, twice = 18 }, b.output)
    end)
end)


describe("tide serve --redis refuses", function()
    it("a bad URL, --journal, --result-ttl without --redis, and an unreachable Redis", function()
        local function run(...)
            return proc.tide({ "serve", PIPE, "--listen", "127.0.0.1:0", ... })
        end
        assert.equal(2, run("--redis", "redis://").code)
        assert.equal(2, run("--redis", "redis://h:99999").code)
        assert.equal(2, run("--redis", "redis://127.0.0.1:1", "--journal", "j").code)
        assert.equal(2, run("--result-ttl", "5").code)
        assert.equal(2, run("--redis", "redis://127.0.0.1:1", "--result-ttl", "-1").code)
        local server = rs.start()
        local url = server.url
        server:stop()
        local t0 = socket.gettime()
        local r = run("--redis", url)
        assert.equal(3, r.code)
        assert.matches("cannot reach Redis", r.stderr)
        assert.is_true(socket.gettime() - t0 < 8)
    end)
end)
