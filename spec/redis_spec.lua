--- The Redis client (lua/tide/redis.lua over src/redis.c) against a real
-- redis-server started for these specs: calls that park a task body,
-- callbacks, pipelining, time limits, and reconnecting after the server
-- restarts or while it cannot be reached.
local tide = require "tide"
local core = require "tide.core"
local redis = require "tide.redis"
local rs = require "helpers.redis"

local hrtime = core.hrtime

describe("tide.redis", function()
    local server

    setup(function() server = rs.start() end)
    teardown(function() server:stop() end)

    it("parses URLs", function()
        assert.same({ "127.0.0.1", 6380, 2 }, { redis.parse_url("redis://127.0.0.1:6380/2") })
        assert.same({ "h", 6379, 0 }, { redis.parse_url("h") })
        assert.same({ "::1", 7000, 0 }, { redis.parse_url("redis://[::1]:7000") })
        assert.is_nil((redis.parse_url("redis://h:99999")))
        assert.is_nil((redis.parse_url("redis://")))
        -- Users and passwords, with %XX escapes undone.
        assert.same({ "h", 1, 3, nil, "p@s:s" }, { redis.parse_url("redis://:p%40s%3As@h:1/3") })
        assert.same({ "h", 6379, 0, "bob", "pw" }, { redis.parse_url("redis://bob:pw@h") })
        assert.same({ "::1", 7000, 0, "u", "x" }, { redis.parse_url("redis://u:x@[::1]:7000") })
        for _, bad in ipairs { "redis://pw@h", "redis://:%4@h", "redis://:%g1@h", "redis://u:@h",
                               "rediss://:pw@h" } do
            local host, msg = redis.parse_url(bad)
            assert.is_nil(host, bad)
            assert.is_nil(msg:find("pw", 1, true), msg)
        end
        -- The last @ ends the password, as in other clients.
        assert.same({ "h", 6379, 0, nil, "a@b" }, { redis.parse_url("redis://:a@b@h") })
        assert.equal("redis://u:***@h:1/2", redis.redact("redis://u:secret@h:1/2"))
        assert.equal("redis://:***@h", redis.redact("redis://secret@h"))
        assert.equal("redis://h:1", redis.redact("redis://h:1"))
    end)

    it("parks a task body for each call and gives replies as Lua values", function()
        local ex = tide.executor()
        local c = redis.connect(ex, server.url)
        local p = tide.pipeline "redis-calls"
        p:task("a", function(k)
            local got = {}
            got.set = assert(c:call("SET", k, "v1"))
            got.get = assert(c:call("GET", k))
            got.missing = c:call("GET", k .. ":none")
            got.n = assert(c:call("RPUSH", k .. ":l", "x", 42))
            got.list = assert(c:call("LRANGE", k .. ":l", 0, -1))
            local v, rec = c:call("INCR", k)
            got.err = { v, rec.code, rec.message:match("^ERR") }
            return got
        end)
        local id = ex:submit(p, "spec:park")
        local out = assert(ex:result(id, 5))
        assert.equal("OK", out.set)
        assert.equal("v1", out.get)
        assert.is_nil(out.missing)
        assert.equal(2, out.n)
        assert.same({ "x", "42" }, out.list)
        assert.same({ nil, "EREDIS", "ERR" }, out.err)
        c:close()
        ex:close()
    end)

    it("calls back outside task bodies, and pipelines what one turn sends", function()
        local ex = tide.executor()
        local c = redis.connect(ex, server.url)
        local got, n = {}, 2000
        for i = 1, n do
            c:send(function(v, rec)
                assert.is_nil(rec)
                got[#got + 1] = v
            end, "INCR", "spec:pipelined")
        end
        assert.equal(0, #got) -- never from inside send
        ex:run() -- returns once no command waits
        assert.equal(n, #got)
        for i = 1, n do assert.equal(i, got[i]) end -- in order
        local s = c:stats()
        assert.equal(1, s.connects)
        assert.equal(n, s.replies)
        assert.equal(0, s.waiting)
        c:close()
        ex:close()
    end)

    it("ends a command with ETIMEDOUT at its time limit, then reconnects", function()
        local ex = tide.executor()
        local c = redis.connect(ex, server.url, { timeout = 0.2 })
        local first
        c:send(function(v) first = v end, "PING")
        ex:run()
        assert.equal("PONG", first)
        -- A server that stops answering (SIGSTOP): the connection stays
        -- open, and only the time limit ends the command.
        os.execute("kill -STOP " .. server.pid)
        local t0, rec, took = hrtime(), nil, nil
        c:send(function(_, r) rec, took = r, hrtime() - t0 end, "PING")
        ex:run()
        os.execute("kill -CONT " .. server.pid)
        assert.equal("ETIMEDOUT", rec.code)
        assert.is_true(took >= 0.19 and took < 0.6, "took " .. took)
        local again
        c:send_t(2, function(v, r) again = v or r end, "PING")
        ex:run()
        assert.equal("PONG", again)
        local s = c:stats()
        assert.equal(1, s.timeouts)
        assert.equal(2, s.connects) -- the timed-out connection was replaced
        c:close()
        ex:close()
    end)

    it("reconnects after redis-server restarts; commands sent meanwhile wait for it", function()
        local ex = tide.executor()
        local states = {}
        local c = redis.connect(ex, server.url, {
            on_state = function(up) states[#states + 1] = up end,
        })
        local p = tide.pipeline "redis-restart"
        p:task("a", function()
            assert(c:call("SET", "spec:restart", "1"))
            return true
        end)
        assert.is_true(ex:result(ex:submit(p, 1), 5))
        server:restart("KILL")
        -- The first command after the restart may find the old connection
        -- dead (ECONN: it may have run); the next ones go through.
        local results = {}
        local q = tide.pipeline "redis-after"
        q:task("a", function()
            local _, rec = c:call("PING")
            local v = c:call("PING")
            return { rec and rec.code or "ok", v }
        end)
        local out = assert(ex:result(ex:submit(q, 1), 10))
        results[1] = out
        assert.equal("PONG", results[1][2])
        -- While the server is down, a command waits until it is back: the
        -- first one finds the connection dead (ECONN), and one sent from
        -- its callback waits for the reconnect.
        server:kill("KILL")
        local first, got
        c:send_t(5, function(_, rec)
            first = rec and rec.code
            c:send_t(5, function(v, rec2) got = v or rec2.code end, "PING")
        end, "PING")
        local restarted = false
        local t = ex:timer(0.3, function()
            if not restarted then
                restarted = true
                server:spawn()
            end
        end)
        ex:run()
        t:close()
        assert.equal("ECONN", first)
        assert.equal("PONG", got)
        assert.is_true(c:stats().connects >= 3)
        assert.is_true(#states >= 4)
        c:close()
        ex:close()
    end)

    it("fails commands with ETIMEDOUT when Redis cannot be reached, and says why", function()
        local ex = tide.executor()
        local port = rs.start({ port = nil }) -- a server, stopped at once: its port is free
        port:stop()
        local why
        local c = redis.connect(ex, port.url, {
            timeout = 0.3, on_state = function(up, msg) if not up then why = msg end end,
        })
        local rec
        local t0 = hrtime()
        c:send(function(_, r) rec = r end, "PING")
        ex:run()
        assert.equal("ETIMEDOUT", rec.code)
        assert.is_true(hrtime() - t0 < 1)
        assert.matches("cannot connect to Redis at 127.0.0.1:%d+: Connection refused", why)
        c:close()
        ex:close()
    end)

    it("closing ends waiting commands with ECLOSED, and a closed executor closes its clients", function()
        local ex = tide.executor()
        local c = redis.connect(ex, server.url)
        local rec
        c:send(function(_, r) rec = r end, "BLPOP", "spec:nothing", 0)
        c:close()
        assert.equal("ECLOSED", rec.code)
        local ex2 = tide.executor()
        local c2 = redis.connect(ex2, server.url)
        c2:send(function() end, "BLPOP", "spec:nothing", 0)
        ex2:close() -- quietly: no callback runs from a closing engine
        ex:close()
    end)
end)
