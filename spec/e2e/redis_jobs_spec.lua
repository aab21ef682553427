--- Jobs on Redis addressed by id (lua/tide/rexec.lua) against a real
-- redis-server and real `tide worker` processes: tide.executor{ redis =
-- URL } (submit, result, status, cancel, from any process), idempotency
-- keys (also two processes racing), results that expire, the trimming of
-- the jobs stream by minimum id, and `tide dlq`.
local proc = require "helpers.proc"
local rs = require "helpers.redis"
local socket = require "socket"
local tide = require "tide"
local core = require "tide.core"
local redis = require "tide.redis"
local rexec = require "tide.rexec"

local json = core.json
local q = proc.shquote

local PIPE = "spec/fixtures/pipelines/distributed.lua"
local LUAJIT = os.getenv("LUAJIT") or "luajit"

-- Starts `tide worker` in the background on pipeline file `pipe`;
-- returns its pid.
local function start_worker(url, dir, name, args, pipe)
    return rs.start_worker(url, pipe or PIPE, dir .. "/" .. name .. ".err", args)
end

local stop_workers = rs.stop_workers

local eventually = rs.eventually

local function record_key(id) return rexec.record_key("distributed", id) end

describe("tide.executor{ redis = URL }", function()
    local server, dir, p

    before_each(function()
        server = rs.start()
        dir = proc.tmpdir()
        p = assert(tide.pipeline_file(PIPE))
    end)
    after_each(function()
        server:stop()
        proc.rmrf(dir)
    end)

    it("submits, waits for the result and gives the status; a second process sees the same job", function()
        local w = start_worker(server.url, dir, "w")
        local ex = assert(tide.executor { redis = server.url })
        local id, new = ex:submit(p, { n = 21 })
        assert.is_true(new)
        assert.is_string(id)
        assert.same({ n = 21, twice = 42 }, ex:result(id, 20))
        assert.equal("done", ex:status(id))
        -- Another executor, as another process would: it knows the job by id.
        local other = assert(tide.executor { redis = server.url, pipeline = "distributed" })
        assert.equal("done", other:status(id))
        assert.same({ n = 21, twice = 42 }, other:result(id, 0))
        -- A failure is the job's error record.
        local fid = ex:submit(p, { n = 1, fail = true })
        local v, rec = ex:result(fid, 20)
        assert.is_nil(v)
        assert.equal("ETASK", rec.code)
        assert.matches("asked to fail", rec.message)
        assert.equal("failed", other:status(fid))
        ex:close()
        other:close()
        stop_workers({ w })
    end)

    it("wakes a waiter by a blocking read: a job submitted with no worker is answered once one starts", function()
        local ex = assert(tide.executor { redis = server.url })
        local id = ex:submit(p, { n = 2 })
        assert.equal("pending", ex:status(id))
        local v, rec = ex:result(id, 0.3)
        assert.is_nil(v)
        assert.equal("EAGAIN", rec.code)
        local w = start_worker(server.url, dir, "w")
        local t0 = socket.gettime()
        assert.same({ n = 2, twice = 4 }, ex:result(id, 30))
        print(("# result after a worker started: %.2f s"):format(socket.gettime() - t0))
        -- The waiter sent no command while it waited but the blocking read:
        -- the command connection carried the status check only.
        assert.is_true(ex:stats().redis.sent < 10, "commands sent: " .. ex:stats().redis.sent)
        ex:close()
        stop_workers({ w })
    end)

    it("an id given twice returns the first job: one execution, one result", function()
        local w = start_worker(server.url, dir, "w")
        local ex = assert(tide.executor { redis = server.url })
        local id1, new1 = ex:submit(p, { n = 5 }, { id = "k" })
        local id2, new2 = ex:submit(p, { n = 99 }, { id = "k" })
        assert.same({ "k", true, "k", false }, { id1, new1, id2, new2 })
        assert.same({ n = 5, twice = 10 }, ex:result("k", 20))
        -- Given again after it finished: still the first job and result.
        local id3, new3 = ex:submit(p, { n = 7 }, { id = "k" })
        assert.same({ "k", false }, { id3, new3 })
        assert.same({ n = 5, twice = 10 }, ex:result("k", 0))
        -- The record holds the submission and exactly one result.
        assert.equal("2", server:cli("XLEN", record_key("k")))
        ex:close()
        stop_workers({ w })
        assert.matches("stopped: 1 done", proc.slurp(dir .. "/w.err"))
    end)

    it("two processes racing with the same ids make one job per id", function()
        local n = 200
        local w = start_worker(server.url, dir, "w")
        local env = ("TIDE_BUILD=%s LUA_PATH=%s LUA_CPATH=%s"):format(
            q(proc.build), q("lua/?.lua;lua/?/init.lua;;"), q(proc.build .. "/lib/?.so;;"))
        for i = 1, 2 do
            os.execute(("%s %s spec/fixtures/redis/submit_race.lua %s %s %s %d >%s 2>&1 &"):format(
                env, LUAJIT, q(server.url), q(PIPE), q(dir .. "/go"), n, q(dir .. "/race" .. i)))
        end
        socket.sleep(0.5)
        proc.write(dir .. "/go", "")
        local a, b
        assert.is_true(eventually(60, function()
            a = tonumber((proc.slurp(dir .. "/race1") or ""):match("^(%d+)\n"))
            b = tonumber((proc.slurp(dir .. "/race2") or ""):match("^(%d+)\n"))
            return a and b
        end), (proc.slurp(dir .. "/race1") or "") .. (proc.slurp(dir .. "/race2") or ""))
        assert.equal(n, a + b)
        local ex = assert(tide.executor { redis = server.url, pipeline = "distributed" })
        for i = 1, n do assert.same({ n = i, twice = 2 * i }, ex:result("race-" .. i, 30)) end
        for i = 1, n, 37 do assert.equal("2", server:cli("XLEN", record_key("race-" .. i))) end
        ex:close()
        stop_workers({ w })
        assert.matches("stopped: " .. n .. " done", proc.slurp(dir .. "/w.err"))
    end)

    it("cancels a job a worker runs: one cancelled result, and the worker stops running it", function()
        local w = start_worker(server.url, dir, "w", "--lease 100")
        local ex = assert(tide.executor { redis = server.url })
        local id = ex:submit(p, { n = 1, secs = 20 })
        assert.is_true(eventually(10, function() return ex:status(id) == "running" end))
        assert.is_true(ex:cancel(id))
        local v, rec = ex:result(id, 0)
        assert.is_nil(v)
        assert.equal("ECANCELED", rec.code)
        assert.equal("cancelled", ex:status(id))
        -- From another executor too; a second cancel is refused.
        local other = assert(tide.executor { redis = server.url, pipeline = p })
        local ok, crec = other:cancel(id)
        assert.is_nil(ok)
        assert.equal("EINVAL", crec.code)
        -- The worker hears of it on the cancels stream and drops it (its
        -- lease of 100 s would renew for half a minute first): a drain
        -- then has nothing to wait for, far less than the 20 s job.
        socket.sleep(1)
        local t0 = socket.gettime()
        stop_workers({ w })
        assert.is_true(socket.gettime() - t0 < 5)
        assert.matches("stopped: 0 done", proc.slurp(dir .. "/w.err"))
        assert.equal("2", server:cli("XLEN", record_key(id)))
        assert.equal("0", server:cli("XLEN", "tide:{distributed}:jobs"))
        ex:close()
        other:close()
    end)

    it("cancels a job no worker took: it never runs", function()
        local ex = assert(tide.executor { redis = server.url })
        local id = ex:submit(p, { n = 3 })
        assert.is_true(ex:cancel(id))
        local w = start_worker(server.url, dir, "w")
        socket.sleep(1)
        stop_workers({ w })
        assert.matches("stopped: 0 done", proc.slurp(dir .. "/w.err"))
        assert.equal("cancelled", ex:status(id))
        ex:close()
    end)

    it("refuses garbage: bad URL, bad ids, unknown jobs, a pipeline without a file", function()
        assert.has_error(function() tide.executor { redis = "redis://h:99999" } end)
        assert.has_error(function() tide.executor { redis = 42 } end)
        assert.has_error(function() tide.executor { redis = server.url, threads = 2 } end)
        assert.has_error(function() tide.executor { redis = server.url, result_ttl = -1 } end)
        local ex = assert(tide.executor { redis = server.url })
        assert.has_error(function() ex:submit(p, {}, { id = "" }) end, "ex:submit: id must be a non-empty string")
        assert.has_error(function() ex:submit(p, {}, { id = ("x"):rep(513) }) end,
                         "ex:submit: id must be at most 512 bytes, got 513")
        assert.has_error(function() ex:submit(p, {}, { id = "a\nb" }) end,
                         "ex:submit: id must not hold control characters")
        assert.has_error(function() ex:submit(p, {}, { id = {} }) end)
        assert.has_error(function() ex:submit(p, {}, { priority = "high" }) end)
        assert.has_error(function() ex:submit(tide.pipeline "inline", {}) end)
        assert.has_error(function() ex:submit(p, function() end) end)
        -- A job of another process needs the executor's pipeline option.
        assert.has_error(function() ex:status("elsewhere") end)
        local other = assert(tide.executor { redis = server.url, pipeline = "distributed" })
        local v, rec = other:status("nope")
        assert.is_nil(v)
        assert.equal("ENOENT", rec.code)
        v, rec = other:result("nope", 0)
        assert.is_nil(v)
        assert.equal("ENOENT", rec.code)
        v, rec = other:cancel("nope")
        assert.is_nil(v)
        assert.equal("ENOENT", rec.code)
        ex:close()
        other:close()
        -- Redis that cannot be reached: nil, rec at once, not a hang.
        local url = server.url
        server:kill("KILL")
        local t0 = socket.gettime()
        local none, nrec = tide.executor { redis = url }
        assert.is_nil(none)
        assert.equal("ECONN", nrec.code)
        assert.matches("cannot reach Redis", nrec.message)
        assert.is_true(socket.gettime() - t0 < 5)
        server:spawn()
    end)

    it("results expire after --result-ttl", function()
        local w = start_worker(server.url, dir, "w", "--result-ttl 1.5")
        local ex = assert(tide.executor { redis = server.url })
        local id = ex:submit(p, { n = 4 })
        assert.same({ n = 4, twice = 8 }, ex:result(id, 20))
        local ttl = tonumber(server:cli("PTTL", record_key(id)))
        assert.is_true(ttl > 0 and ttl <= 1500, "PTTL " .. ttl)
        assert.is_true(eventually(10, function() return server:cli("EXISTS", record_key(id)) == "0" end))
        local v, rec = ex:result(id, 0)
        assert.is_nil(v)
        assert.equal("ENOENT", rec.code)
        ex:close()
        stop_workers({ w })
        assert.equal(2, proc.tide({ "worker", PIPE, "--redis", server.url, "--result-ttl", "0" }).code)
        assert.equal(2, proc.tide({ "worker", PIPE, "--redis", server.url, "--result-ttl", "x" }).code)
    end)
end)


describe("the jobs stream is trimmed by minimum id", function()
    local server

    setup(function() server = rs.start() end)
    teardown(function() server:stop() end)

    it("keeps every entry from the oldest not finished on, whatever the length", function()
        local k = "tide:{trim}:jobs"
        server:cli("XGROUP", "CREATE", k, "workers", "0", "MKSTREAM")
        local ids = {}
        for i = 1, 6 do ids[i] = server:cli("XADD", k, "*", "n", tostring(i)) end
        -- Entries 1-4 delivered; 1 and 3 finished (acknowledged, not
        -- deleted), 2 and 4 still pending; 5 and 6 not delivered.
        server:cli("XREADGROUP", "GROUP", "workers", "c", "COUNT", "4", "STREAMS", k, ">")
        server:cli("XACK", k, "workers", ids[1], ids[3])
        local ex = tide.executor()
        local c = redis.connect(ex, server.url)
        local n = rexec.sync(ex, function(cb) c:eval(rexec.TRIM, { k }, { "workers" }, cb) end)
        assert.equal(1, n) -- entry 1 only: 2 is pending
        assert.equal(ids[2], server:cli("XRANGE", k, "-", "+", "COUNT", "1"):match("^[%d%-]+"))
        server:cli("XACK", k, "workers", ids[2], ids[4])
        n = rexec.sync(ex, function(cb) c:eval(rexec.TRIM, { k }, { "workers" }, cb) end)
        assert.equal(3, n) -- 2, 3, 4: 5 was never delivered
        assert.equal("2", server:cli("XLEN", k))
        -- Everything delivered and finished: the stream is emptied.
        server:cli("XREADGROUP", "GROUP", "workers", "c", "COUNT", "4", "STREAMS", k, ">")
        server:cli("XACK", k, "workers", ids[5], ids[6])
        n = rexec.sync(ex, function(cb) c:eval(rexec.TRIM, { k }, { "workers" }, cb) end)
        assert.equal(2, n)
        assert.equal("0", server:cli("XLEN", k))
        -- No group, or no stream: nothing happens.
        n = rexec.sync(ex, function(cb) c:eval(rexec.TRIM, { "tide:{none}:jobs" }, { "workers" }, cb) end)
        assert.equal(0, n)
        c:close()
        ex:close()
    end)
end)


describe("tide worker trims its jobs stream", function()
    local server, dir

    before_each(function()
        server = rs.start()
        dir = proc.tmpdir()
    end)
    after_each(function()
        server:stop()
        proc.rmrf(dir)
    end)

    it("every 5 s, removing finished entries that are still in the stream", function()
        -- A finished entry that was acknowledged but not deleted (as a
        -- worker that only acknowledges would leave it).
        local k = "tide:{distributed}:jobs"
        server:cli("XGROUP", "CREATE", k, "workers", "0", "MKSTREAM")
        local e = server:cli("XADD", k, "*", "id", "old", "run", "r", "hash", "h", "input", "null")
        server:cli("XREADGROUP", "GROUP", "workers", "someone", "STREAMS", k, ">")
        server:cli("XACK", k, "workers", e)
        assert.equal("1", server:cli("XLEN", k))
        local w = start_worker(server.url, dir, "w")
        assert.is_true(eventually(20, function() return server:cli("XLEN", k) == "0" end))
        stop_workers({ w })
    end)
end)


describe("rexec.waiter", function()
    local server

    setup(function() server = rs.start() end)
    teardown(function() server:stop() end)

    it("a wait added while the blocking read is on its way is woken at once, not after the read's BLOCK", function()
        local ex = tide.executor()
        local cmd = redis.connect(ex, server.url)
        local blk = redis.connect(ex, server.url)
        local w = rexec.waiter(ex, cmd, blk)
        local got = {}
        -- Both in one loop turn: the second comes while the first read is
        -- sent but not blocking yet (and this connection's id unknown).
        w:add("spec:rec:a", "a", "0-0", function(r) got.a = r end)
        w:add("spec:rec:b", "b", "0-0", function(r) got.b = r end)
        local t0 = socket.gettime()
        local t = ex:timer(0.2, function() end)
        ex:turn(0.3)
        t:close()
        server:cli("XADD", "spec:rec:b", "*", "id", "b", "status", "done", "value", '{"x":1}', "ran", "")
        while not got.b and socket.gettime() - t0 < 15 do ex:turn(0.1) end
        local took = socket.gettime() - t0
        assert.is_truthy(got.b)
        assert.same({ x = 1 }, got.b.value)
        assert.is_nil(got.a)
        assert.is_true(took < 5, "woken after " .. took .. " s")
        assert.is_true(w:remove(next(w.keys["spec:rec:a"].fns)))
        assert.equal(0, w.n)
        -- ex:turn, which the waits above run on, refuses a bad time.
        assert.has_error(function() ex:turn(-1) end, "ex:turn: seconds must be a number >= 0")
        assert.has_error(function() ex:turn("1") end, "ex:turn: seconds must be a number >= 0")
        assert.has_error(function() ex.turn(0) end)
        w:close()
        cmd:close()
        blk:close()
        ex:close()
    end)
end)


describe("tide dlq", function()
    local server, dir

    before_each(function()
        server = rs.start()
        dir = proc.tmpdir()
    end)
    after_each(function()
        server:stop()
        proc.rmrf(dir)
    end)

    local function dlq(...)
        return proc.tide({ "dlq", ... })
    end

    it("lists, shows, queues again (deliveries from zero) and drops dead-letter jobs", function()
        -- Jobs of another version of the file: the worker running this
        -- version never takes them, and with no worker of theirs they
        -- reach the dead-letter stream as EVERSION.
        local v2 = dir .. "/distributed.lua"
        proc.write(v2, proc.slurp(PIPE) .. "-- version 2\n")
        local p2 = assert(tide.pipeline_file(v2))
        local w = start_worker(server.url, dir, "w", "--lease 0.3 --max-deliveries 2")
        local ex = assert(tide.executor { redis = server.url })
        ex:submit(p2, { n = 1 }, { id = "d1" })
        ex:submit(p2, { n = 2 }, { id = "d2" })
        local v, rec = ex:result("d1", 30)
        assert.is_nil(v)
        assert.equal("EVERSION", rec.code)
        assert.equal("EVERSION", select(2, ex:result("d2", 30)).code)
        stop_workers({ w })

        local r = dlq("list", "--redis", server.url)
        assert.equal(0, r.code, r.stderr)
        local lines = proc.lines(r.stdout)
        assert.equal(2, #lines)
        local rec1 = json.decode(lines[1])
        assert.equal("distributed", rec1.pipeline)
        assert.equal("EVERSION", rec1.error.code)
        assert.is_true(rec1.deliveries >= 1, tostring(rec1.deliveries))
        assert.matches("2 dead%-letter jobs", r.stderr)
        r = dlq("show", "d2", "--redis", server.url, "--pipeline", "distributed")
        assert.equal(0, r.code, r.stderr)
        local shown = json.decode(r.stdout)
        assert.same({ n = 2 }, shown.input)
        assert.equal("d2", shown.id)
        -- By entry id too.
        r = dlq("show", rec1.entry, "--redis", server.url)
        assert.equal(rec1.id, json.decode(r.stdout).id)

        -- A worker of version 2 runs d1 once it is queued again.
        local w2 = start_worker(server.url, dir, "w2", "--lease 0.3 --max-deliveries 2", v2)
        r = dlq("retry", "d1", "--redis", server.url)
        assert.equal(0, r.code, r.stderr)
        assert.equal("queued", json.decode(r.stdout).action)
        assert.same({ n = 1, twice = 2 }, ex:result("d1", 30))
        r = dlq("drop", "d2", "--redis", server.url)
        assert.equal(0, r.code, r.stderr)
        assert.equal("dropped", json.decode(r.stdout).action)
        assert.equal("", dlq("list", "--redis", server.url).stdout)
        assert.equal("failed", ex:status("d2"))
        stop_workers({ w2 })
        ex:close()
    end)

    it("retry --all queues every dead-letter job", function()
        local k = "tide:{distributed}"
        for i = 1, 3 do
            server:cli("XADD", k .. ":dlq", "*", "id", "x" .. i, "run", "r", "hash", "h", "input", '{"n":1}',
                       "deliveries", "6", "error", '{"code":"EDELIVERY","message":"m"}')
        end
        server:cli("XGROUP", "CREATE", k .. ":jobs", "workers", "0", "MKSTREAM")
        local r = dlq("retry", "--all", "--redis", server.url, "--pipeline", "distributed")
        assert.equal(0, r.code, r.stderr)
        assert.equal(3, #proc.lines(r.stdout))
        assert.equal("3", server:cli("XLEN", k .. ":jobs"))
        assert.equal("0", server:cli("XLEN", k .. ":dlq"))
    end)

    it("refuses unknown ids and actions, bad URLs and an unreachable Redis", function()
        local function check(code, pattern, ...)
            local r = dlq(...)
            assert.equal(code, r.code, r.stderr)
            if pattern then assert.matches(pattern, r.stderr) end
        end
        check(2, "no dead%-letter job 'nope'", "show", "nope", "--redis", server.url)
        check(2, "no dead%-letter job 'nope'", "retry", "nope", "--redis", server.url)
        check(2, "no dead%-letter job 'nope'", "drop", "nope", "--redis", server.url, "--pipeline", "p")
        check(2, "unknown action 'frob'", "frob", "--redis", server.url)
        check(2, "needs %-%-redis", "list")
        check(2, "bad Redis URL", "list", "--redis", "redis://")
        check(2, "needs ID or %-%-all", "retry", "--redis", server.url)
        check(2, "one of them", "drop", "x", "--all", "--redis", server.url)
        check(2, "takes no ID", "list", "x", "--redis", server.url)
        check(2, nil, "show", "--all", "--redis", server.url)
        check(2, nil, "list", "--redis", server.url, "--pipeline", "")
        check(2, "needs an action")
        check(0, "0 dead%-letter jobs", "list", "--redis", server.url)
        local url = server.url
        server:kill("KILL")
        check(3, "cannot reach Redis", "list", "--redis", url)
        server:spawn()
    end)
end)
