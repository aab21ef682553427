--- The worker's scripts of lua/tide/distributed.lua run on a real
-- redis-server: COMMIT fences each job of a batch by owner and delivery
-- count (a late or repeated result adds nothing), REAP claims a dead
-- worker's jobs together and a job at its third delivery alone, and
-- leaves a job of another pipeline version to the workers of that
-- version until it has waited two leases.
local tide = require "tide"
local redis = require "tide.redis"
local distributed = require "tide.distributed"
local rs = require "helpers.redis"

local G = distributed.GROUP

describe("tide.distributed scripts", function()
    local server, ex, c, keys

    -- Runs one command or script on the loop; returns its reply.
    local function call(...)
        local v, rec
        c:send(function(a, b) v, rec = a, b end, ...)
        ex:run()
        assert.is_nil(rec, rec and rec.message)
        return v
    end
    local function eval(script, k, args)
        local v, rec
        c:eval(script, k, args, function(a, b) v, rec = a, b end)
        ex:run()
        assert.is_nil(rec, rec and rec.message)
        return v
    end
    local function add(id, hash)
        return call("XADD", keys.jobs, "*", "id", id, "run", "r1", "hash", hash or "H", "input", "1")
    end
    local function read(consumer, n)
        local v = call("XREADGROUP", "GROUP", G, consumer, "COUNT", n or 10, "STREAMS", keys.jobs, ">")
        local out = {}
        for _, e in ipairs(v[1][2]) do out[#out + 1] = e[1] end
        return out
    end

    before_each(function()
        server = rs.start()
        ex = tide.executor()
        c = redis.connect(ex, server.url)
        keys = distributed.keys("spec")
        call("XGROUP", "CREATE", keys.jobs, G, "0", "MKSTREAM")
    end)
    after_each(function()
        c:close()
        ex:close()
        server:stop()
    end)

    it("COMMIT: one result per job, only from the delivery that owns it", function()
        add("a")
        add("b")
        add("c")
        local e = read("w1")
        local function job(entry, deliveries, id, logs)
            return { entry, deliveries, id, "r1", "done", '"' .. id .. '"', "", logs or "" }
        end
        local args = { G, "w1", 60000, keys.res }
        -- a: the wrong delivery count; b: twice in one batch; c: right.
        for _, t in ipairs({ job(e[1], 2, "a"), job(e[2], 1, "b"), job(e[2], 1, "b"),
                             job(e[3], 1, "c", '{"lines":[],"dropped":3}') }) do
            for _, v in ipairs(t) do args[#args + 1] = v end
        end
        assert.same({ -1, 1, 0, 1 }, eval(distributed.COMMIT, { keys.jobs }, args))
        assert.equal(2, call("XLEN", keys.res .. "r1"))
        -- A result carries a logs field only when the job kept lines.
        local res = call("XRANGE", keys.res .. "r1", "-", "+")
        assert.equal(8, #res[1][2])
        assert.same({ "logs", '{"lines":[],"dropped":3}' }, { res[2][2][9], res[2][2][10] })
        -- Another consumer's late result for a: refused; the owner's: kept.
        local late = { G, "w2", 60000, keys.res }
        for _, v in ipairs(job(e[1], 1, "a")) do late[#late + 1] = v end
        assert.same({ -1 }, eval(distributed.COMMIT, { keys.jobs }, late))
        late[2] = "w1"
        assert.same({ 1 }, eval(distributed.COMMIT, { keys.jobs }, late))
        -- Once committed, again: nothing more.
        assert.same({ 0 }, eval(distributed.COMMIT, { keys.jobs }, late))
        assert.equal(3, call("XLEN", keys.res .. "r1"))
        assert.equal(0, call("XLEN", keys.jobs))
        assert.equal(0, call("XPENDING", keys.jobs, G)[1])
    end)

    it("REAP: a dead worker's jobs together, at delivery 3 alone, another version only after two leases", function()
        local twice = add("twice")
        local once1, once2 = add("once1"), add("once2")
        local fresh1, fresh2 = add("fresh1"), add("fresh2")
        local other = add("other", "OTHER")
        read("dead")
        -- twice was held by a worker that died before (count 2); fresh1
        -- and fresh2 were passed on, never run (count 0).
        call("XCLAIM", keys.jobs, G, "dead", 0, twice, "JUSTID", "RETRYCOUNT", 2)
        for _, e in ipairs({ fresh1, fresh2 }) do
            call("XCLAIM", keys.jobs, G, "dead", 0, e, "IDLE", 100, "JUSTID", "RETRYCOUNT", 0)
        end
        rs.sleep(0.1)
        local function reap(pass_idle, count, maxd)
            return eval(distributed.REAP, { keys.jobs, keys.dlq },
                        { G, "w1", 50, 1000, maxd or 5, 60000, keys.res, "H", pass_idle, count or 100,
                          distributed.alone_from(maxd or 5) })
        end
        local function entries(got)
            local t = {}
            for i, j in ipairs(got[1]) do t[i] = { j[1], j[3] } end
            return t
        end
        -- twice comes first (the oldest) and alone, as its third delivery.
        local got = reap(60000)
        assert.same({ { twice, 3 } }, entries(got))
        assert.same({}, got[2])
        -- Then the others, together: once1 and once2 as second
        -- deliveries, the fresh ones as first deliveries; two a round
        -- with count 2.
        got = reap(60000, 2)
        assert.same({ { once1, 2 }, { once2, 2 } }, entries(got))
        got = reap(60000)
        assert.same({ { fresh1, 1 }, { fresh2, 1 } }, entries(got))
        -- A job at its third delivery is never claimed with others, and
        -- with count 0 (no room) none is claimed but it.
        call("XCLAIM", keys.jobs, G, "w1", 0, twice, "IDLE", 100, "JUSTID")
        call("XCLAIM", keys.jobs, G, "w1", 0, once1, "IDLE", 100, "JUSTID", "RETRYCOUNT", 0)
        got = reap(60000, 0)
        assert.same({ { twice, 4 } }, entries(got))
        got = reap(60000, 0)
        assert.same({}, got[1])
        got = reap(60000)
        assert.same({ { once1, 1 } }, entries(got))
        -- With max_deliveries 2, a second delivery already runs alone.
        call("XCLAIM", keys.jobs, G, "w1", 0, once1, "IDLE", 100, "JUSTID")
        call("XCLAIM", keys.jobs, G, "w1", 0, once2, "IDLE", 100, "JUSTID")
        got = reap(60000, 100, 2)
        assert.same({ { once1, 2 } }, entries(got))
        -- other is not this worker's version: left alone within pass_idle,
        -- then passed on (counted) and reported.
        got = reap(60000)
        assert.same({ { once2, 3 } }, entries(got))
        got = reap(60000)
        assert.same({ {}, {} }, got)
        got = reap(50)
        assert.same({}, got[1])
        assert.same({ { "other", "OTHER", 2, 0, 1 } }, got[2])
        assert.equal(2, call("XPENDING", keys.jobs, G, other, other, 1)[1][4])
    end)

    it("REAP: past max deliveries a job goes to the dead-letter stream even with no room", function()
        local e = add("p")
        read("dead")
        call("XCLAIM", keys.jobs, G, "dead", 0, e, "JUSTID", "RETRYCOUNT", 5)
        rs.sleep(0.1)
        local got = eval(distributed.REAP, { keys.jobs, keys.dlq },
                         { G, "w1", 50, 1000, 5, 60000, keys.res, "H", 60000, 0, 3 })
        assert.same({}, got[1])
        assert.same({ { "p", "H", 6, 1, 0 } }, got[2])
        local f = redis.pairs_to_table(call("XRANGE", keys.dlq, "-", "+")[1][2])
        assert.matches('"EDELIVERY"', f.error)
        assert.equal("6", f.deliveries)
        assert.equal(0, call("XLEN", keys.jobs))
    end)

    it("alone_from: delivery 3, or 2 when max_deliveries is below 3", function()
        assert.equal(3, distributed.alone_from(5))
        assert.equal(3, distributed.alone_from(3))
        assert.equal(2, distributed.alone_from(2))
        assert.equal(2, distributed.alone_from(1))
    end)

    it("REAP: a job of another version past max deliveries goes to the dead-letter stream as EVERSION", function()
        add("x", "OTHER")
        read("dead")
        rs.sleep(0.1)
        local got = eval(distributed.REAP, { keys.jobs, keys.dlq },
                         { G, "w1", 50, 1000, 1, 60000, keys.res, "H", 50, 100, 2 })
        assert.same({ { "x", "OTHER", 2, 1, 1 } }, got[2])
        local d = call("XRANGE", keys.dlq, "-", "+")
        local f = redis.pairs_to_table(d[1][2])
        assert.matches("no worker with pipeline hash OTHER", f.error)
        assert.matches('"EVERSION"', f.error)
        local r = redis.pairs_to_table(call("XRANGE", keys.res .. "r1", "-", "+")[1][2])
        assert.equal("failed", r.status)
        assert.equal(0, call("XLEN", keys.jobs))
    end)
end)
