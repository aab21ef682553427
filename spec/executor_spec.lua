-- Specs of running pipelines: tide.run, the executor API, retries,
-- timeouts, map/gather, error records, deadlocks and cleanup.
local tide = require "tide"
local json = tide.json

-- The engine's counters must all be back at zero once it is idle: no
-- slot, attempt record or timer left behind.
local function assert_clean(ex)
    local s = ex:stats()
    assert.equal(0, s.live)
    assert.equal(0, s.active)
    assert.equal(0, s.queued)
    assert.equal(0, s.timers)
    assert.equal(0, s.slots)
    assert.equal(0, s.attempts)
end

local function chain(n)
    local p = tide.pipeline("chain" .. n)
    p:task("t1", function(x) return x + 1 end)
    for i = 2, n do
        p:task("t" .. i, { after = "t" .. (i - 1) }, function(x) return x + 1 end)
    end
    return p
end

describe("tide.run", function()
    it("runs a chain for every input and indexes outputs like inputs", function()
        local inputs = {}
        for i = 1, 1000 do inputs[i] = i end
        local outs, errs = tide.run(chain(4), inputs)
        for i = 1, 1000 do assert.equal(i + 4, outs[i]) end
        assert.is_nil(next(errs))
    end)

    it("gives a join a table keyed by predecessor name", function()
        local p = tide.pipeline "diamond"
        p:task("a", function(v) return v + 1 end)
        p:task("b", { after = "a" }, function(v) return v + 1 end)
        p:task("c", { after = "a" }, function(v) return v + 2 end)
        p:task("d", { after = { "b", "c" } }, function(i) return { b = i.b, c = i.c } end)
        local outs = tide.run(p, { 0, 10 })
        assert.same({ { b = 2, c = 3 }, { b = 12, c = 13 } }, outs)
    end)

    it("returns a table keyed by sink name when there are several sinks", function()
        local p = tide.pipeline "two-sinks"
        p:task("a", function(v) return v end)
        p:task("x", { after = "a" }, function(v) return v * 2 end)
        p:task("y", { after = "a" }, function(v) return v * 3 end)
        local outs = tide.run(p, { 5 })
        assert.same({ x = 10, y = 15 }, outs[1])
    end)

    it("raises on misuse", function()
        assert.has_error(function() tide.run("p", {}) end, "tide.run: argument 1 must be a pipeline, got string")
        assert.has_error(function() tide.run(chain(1), 5) end,
            "tide.run: argument 2 must be an array of inputs, got number")
    end)
end)

describe("tide.run's executor", function()
    local hub = require "tide.hub"
    local hrtime = require("tide.core").hrtime

    -- The executor running the calling body (outputs must be JSON
    -- values, so the bodies below leave it in `seen`).
    local seen
    local running = require("tide.executor").current
    -- A closed executor refuses to run (an open one has nothing to run).
    local function closed(ex) return not pcall(ex.turn, ex, 0) end

    -- A pipeline whose one task notes the executor running it; run
    -- returns that executor.
    local function whose(name)
        local p = tide.pipeline(name)
        p:task("which", function() seen = running() return 1 end)
        return p
    end
    local function run_on(p, opts)
        seen = nil
        tide.run(p, { 1 }, opts)
        return seen
    end

    it("is kept from one call to the next, and out of the hub between calls", function()
        local p = whose "kept1"
        local a = run_on(p)
        local b = run_on(p)
        assert.is_not_nil(a)
        assert.equal(a, b)
        assert.is_false(closed(a))
        for ex in hub.each() do assert.are_not.equal(a, ex) end
        -- tide.run() (every open executor) has nothing to wait for.
        assert.is_true(tide.run())
        assert.is_nil(tide.timeout())
        -- Options other than the defaults get an executor of their own,
        -- closed after the call.
        local c = run_on(p, { concurrency = 5 })
        assert.are_not.equal(a, c)
        assert.is_true(closed(c))
    end)

    it("is replaced after MAX_DEFAULT_PIPELINES pipelines, the old one closed", function()
        local first = run_on(whose "kept-first")
        local last = first
        for i = 1, require("tide.executor").MAX_DEFAULT_PIPELINES + 1 do
            last = run_on(whose("kept-" .. i))
        end
        assert.are_not.equal(first, last)
        assert.is_true(closed(first))
        assert.is_false(closed(last))
    end)

    it("lets a body call tide.run, which then gets an executor of its own", function()
        local inner = whose "kept-inner"
        local inners = {}
        local p = tide.pipeline "kept-outer"
        p:task("outer", function(x)
            local me = running()
            local outs = tide.run(inner, { x })
            inners[x] = seen
            return me == running() and outs[1] or -1
        end)
        local me = run_on(whose "kept-outer2")
        local outs, errs = tide.run(p, { 1, 2 })
        assert.is_nil(next(errs))
        for i = 1, 2 do
            assert.equal(1, outs[i])
            assert.are_not.equal(me, inners[i])
            assert.is_true(closed(inners[i]))
        end
        -- The outer run still kept its executor for the next call.
        assert.equal(me, run_on(whose "kept-outer2"))
    end)

    it("gives its worker threads back after each call", function()
        local p = tide.pipeline "kept-sync"
        local workers
        p:task("s", { kind = "sync" }, function(x) return x + 1 end)
        p:task("which", { after = "s" }, function(x)
            seen = running()
            workers = seen:stats().workers
            return x
        end)
        local outs, errs = tide.run(p, { 1 })
        assert.is_nil(next(errs))
        assert.equal(2, outs[1])
        assert.is_true(workers >= 1)
        assert.is_false(closed(seen))
        assert.equal(0, seen:stats().workers)
    end)

    it("times sleeps from the slice they start in, never more than 2 ms short", function()
        local p = tide.pipeline "kept-sleep"
        p:task("nap", function()
            local t0 = hrtime()
            tide.sleep(0.03)
            return hrtime() - t0
        end)
        local inputs = {}
        for i = 1, 200 do inputs[i] = i end
        local outs = tide.run(p, inputs)
        for i = 1, 200 do
            assert.is_true(outs[i] >= 0.03 - 0.0025, "slept " .. outs[i])
        end
    end)
end)

describe("error records", function()
    it("have code, task, message, traceback and attempts", function()
        local p = tide.pipeline "boom"
        p:task("ok", function(x) return x end)
        p:task("bad", { after = "ok" }, function() error("kaput") end)
        local outs, errs = tide.run(p, { 1 })
        assert.is_nil(outs[1])
        local rec = errs[1]
        assert.equal("ETASK", rec.code)
        assert.equal("bad", rec.task)
        assert.equal(1, rec.attempts)
        assert.matches("kaput", rec.message)
        assert.matches("stack traceback", rec.traceback)
        assert.matches("^ETASK bad: .*kaput$", tostring(rec))
        assert.is_true(tide.is_error(rec))
    end)

    it("are what tide.json returns on bad input: exactly nil, rec", function()
        local v, rec, extra = tide.json.decode("{")
        assert.is_nil(v)
        assert.is_nil(extra)
        assert.is_true(tide.is_error(rec))
        assert.equal("EVALUE", rec.code)
        assert.matches("^EVALUE: ", tostring(rec))
        local s, rec2 = tide.json.encode({ f = print })
        assert.is_nil(s)
        assert.equal("EVALUE", rec2.code)
        assert.matches("function", rec2.message)
        assert.equal(tide.json.null, tide.json.decode("null")) -- not a failure
        assert.equal('{"a":1}', tide.json.encode({ a = 1 }))
    end)

    it("come from a body that returns nil, err", function()
        local p = tide.pipeline "nil-err"
        p:task("a", function() return nil, "not today" end)
        local _, errs = tide.run(p, { 1 })
        assert.equal("ETASK", errs[1].code)
        assert.equal("not today", errs[1].message)
    end)

    it("treat a plain nil output as a value", function()
        local p = tide.pipeline "nil-out"
        p:task("a", function() return nil end)
        local outs, errs = tide.run(p, { 1 })
        assert.is_nil(outs[1])
        assert.is_nil(errs[1])
    end)

    it("fail an attempt whose output JSON cannot carry with EVALUE", function()
        local cyclic = {}
        cyclic.self = cyclic
        local cases = { function() end, cyclic, 0 / 0, math.huge, coroutine.create(print),
                        "caf\233", { name = "caf\233" } }
        for _, v in ipairs(cases) do
            local p = tide.pipeline "bad-out"
            p:task("a", function() return v end)
            local _, errs = tide.run(p, { 1 })
            assert.equal("EVALUE", errs[1].code, tostring(v))
            assert.matches("task 'a' returned a value JSON cannot carry", errs[1].message)
            assert.equal("a", errs[1].task)
            assert.equal(1, errs[1].attempts)
        end
    end)

    it("decide an output's validity when the attempt ends: the job fails, retried by policy", function()
        local p = tide.pipeline "bad-out-retry"
        local calls = 0
        p:task("a", { retry = 2 }, function()
            calls = calls + 1
            if calls < 3 then return "caf\233" end
            return "cafe"
        end)
        p:task("b", { after = "a" }, function(x) return x .. "!" end)
        local ex = tide.executor()
        local id = ex:submit(p, 1)
        assert.equal("cafe!", ex:result(id, 5))
        assert.equal(3, calls)
        local p2 = tide.pipeline "bad-out-fails"
        p2:task("a", function() return print end)
        local id2 = ex:submit(p2, 1)
        ex:run()
        assert.equal("failed", ex:status(id2))
        ex:close()
    end)
end)

describe("retries", function()
    it("times = 3 allows 4 attempts, with ctx.attempt counting from 1", function()
        local seen = {}
        local p = tide.pipeline "flaky"
        p:task("a", { retry = 3 }, function(_, ctx)
            seen[#seen + 1] = ctx.attempt
            error("no")
        end)
        local _, errs = tide.run(p, { 1 })
        assert.same({ 1, 2, 3, 4 }, seen)
        assert.equal(4, errs[1].attempts)
    end)

    it("calls interval(ctx, attempt, err) and waits that long, off the queue", function()
        local calls = {}
        local p = tide.pipeline "backoff"
        p:task("a", { retry = { times = 2, interval = function(ctx, attempt, err)
            calls[#calls + 1] = { ctx.id, attempt, err.code }
            return 0.05
        end } }, function(_, ctx)
            if ctx.attempt < 3 then error("again") end
            return ctx.attempt
        end)
        local t0 = require("tide.core").hrtime()
        local outs = tide.run(p, { 1 })
        local took = require("tide.core").hrtime() - t0
        assert.equal(3, outs[1])
        assert.same({ { "1", 1, "ETASK" }, { "1", 2, "ETASK" } }, calls)
        -- Timers count from the loop's time, to the millisecond (as
        -- tide.sleep): each wait may end up to 2 ms early.
        assert.is_true(took >= 0.1 - 2 * 0.002, "waited " .. took)
    end)

    it("retries only when on(err) says so", function()
        local n = 0
        local p = tide.pipeline "on"
        p:task("a", { retry = { times = 5, on = function(err) return err.message:match("transient") end } },
            function()
                n = n + 1
                if n == 1 then error("transient glitch") end
                error("fatal")
            end)
        local _, errs = tide.run(p, { 1 })
        assert.equal(2, n)
        assert.matches("fatal", errs[1].message)
    end)

    it("reports a broken interval function in the record instead of hanging", function()
        local p = tide.pipeline "bad-interval"
        p:task("a", { retry = { times = 2, interval = function() return "soon" end } },
            function() error("x") end)
        local _, errs = tide.run(p, { 1 })
        assert.matches("retry.interval returned soon", errs[1].message)
        assert.equal(1, errs[1].attempts)
    end)
end)

describe("timeouts", function()
    it("abandon a sleeping attempt with ETIMEDOUT and retry it", function()
        local n = 0
        local p = tide.pipeline "slow"
        p:task("a", { timeout = 0.05, retry = 1 }, function()
            n = n + 1
            tide.sleep(5)
            return "never"
        end)
        local t0 = require("tide.core").hrtime()
        local ex = tide.executor()
        local id = ex:submit(p, 1)
        ex:run()
        local out, rec, extra = ex:result(id)
        assert.is_nil(out)
        assert.is_nil(extra) -- two values: nil, rec
        assert.equal("ETIMEDOUT", rec.code)
        assert.equal(2, rec.attempts)
        assert.equal(2, n)
        assert.is_true(require("tide.core").hrtime() - t0 < 1)
        assert_clean(ex)
    end)

    it("do not keep the loop alive once the attempt finished", function()
        local hr = require("tide.core").hrtime
        local p = tide.pipeline "fast-with-timeout"
        p:task("a", { timeout = 30 }, function(x) return x end)
        local t0 = hr()
        local outs = tide.run(p, { 1, 2 })
        assert.same({ 1, 2 }, outs)
        assert.is_true(hr() - t0 < 1, "run took " .. (hr() - t0) .. " s")
        -- Nor once a sleeping job was cancelled.
        local ex = tide.executor()
        local q = tide.pipeline "sleeps-long"
        q:task("a", function() tide.sleep(30) end)
        local id = ex:submit(q, 1)
        ex:result(id, 0.01)
        ex:cancel(id)
        t0 = hr()
        ex:run()
        assert.is_true(hr() - t0 < 1, "run took " .. (hr() - t0) .. " s")
        assert_clean(ex)
    end)

    it("apply the executor's task_timeout to tasks without one", function()
        local p = tide.pipeline "default-timeout"
        p:task("a", function() tide.sleep(5) end)
        local _, errs = tide.run(p, { 1 }, { task_timeout = 0.02 })
        assert.equal("ETIMEDOUT", errs[1].code)
    end)
end)

describe("tide.sleep", function()
    it("lets 1000 bodies sleep at once #timing", function()
        local p = tide.pipeline "sleepers"
        p:task("a", function(x) tide.sleep(0.02) return x end)
        local inputs = {}
        for i = 1, 1000 do inputs[i] = i end
        local t0 = require("tide.core").hrtime()
        local outs = tide.run(p, inputs)
        local took = require("tide.core").hrtime() - t0
        assert.equal(1000, #outs)
        assert.is_true(took < 0.5, "took " .. took)
    end)

    it("raises outside a task body and in a nested coroutine", function()
        assert.has_error(function() tide.sleep(0.01) end, "tide.sleep: not called from a task body")
        assert.has_error(function() tide.sleep(-1) end)
        local p = tide.pipeline "nested"
        p:task("a", function()
            local co = coroutine.create(function() tide.sleep(0.01) end)
            local ok, err = coroutine.resume(co)
            return { ok = ok, err = err }
        end)
        local outs = tide.run(p, { 1 })
        assert.is_false(outs[1].ok)
        assert.matches("nested coroutine", outs[1].err)
    end)
end)

describe("map and gather", function()
    it("fan out, keep map_index order and gather", function()
        local p = tide.pipeline "fan"
        p:task("split", { map = true }, function(n)
            local t = {}
            for i = 1, n do t[i] = i end
            return t
        end)
        p:task("slow", { after = "split" }, function(x, ctx)
            assert(ctx.map_index == x)
            tide.sleep((10 - x % 10) * 0.001) -- finish out of order
            return x * x
        end)
        p:task("sum", { after = "slow", gather = true }, function(xs)
            return xs
        end)
        local outs = tide.run(p, { 25, 0 })
        local want = {}
        for i = 1, 25 do want[i] = i * i end
        assert.same(want, outs[1])
        assert.same({}, outs[2])
        assert.equal(json.array_mt, getmetatable(outs[2]))
    end)

    it("nest", function()
        local p = tide.pipeline "nested-map"
        p:task("rows", { map = true }, function(m) return m end)
        p:task("cells", { after = "rows", map = true }, function(row) return row end)
        p:task("double", { after = "cells" }, function(x) return 2 * x end)
        p:task("row_sum", { after = "double", gather = true }, function(xs)
            local s = 0
            for _, x in ipairs(xs) do s = s + x end
            return s
        end)
        p:task("all", { after = "row_sum", gather = true }, function(sums) return sums end)
        local outs = tide.run(p, { { { 1, 2 }, { 3 }, {} } })
        assert.same({ 6, 6, 0 }, outs[1])
    end)

    it("collect an ungathered map sink as an array", function()
        local p = tide.pipeline "no-gather"
        p:task("split", { map = true }, function(t) return t end)
        p:task("up", { after = "split" }, function(s) return s:upper() end)
        local outs = tide.run(p, { { "a", "b" } })
        assert.same({ "A", "B" }, outs[1])
    end)

    it("fail the parent with the child's error by default", function()
        local p = tide.pipeline "child-fails"
        p:task("split", { map = true }, function() return { 1, 2, 3 } end)
        p:task("check", { after = "split" }, function(x)
            if x == 2 then error("two is bad") end
            tide.sleep(0.01)
            return x
        end)
        p:task("sum", { after = "check", gather = true }, function(xs) return #xs end)
        local ex = tide.executor()
        local id = ex:submit(p, 0)
        ex:run()
        local out, rec = ex:result(id)
        assert.is_nil(out)
        assert.equal("check", rec.task)
        assert.equal(2, rec.map_index)
        assert.matches("two is bad", rec.message)
        assert_clean(ex)
        -- Nothing is left in the executor's per-slot tables either.
        assert.equal(0, ex:stats().held)
    end)

    it("hand failed children to the gather with errors = 'collect'", function()
        local p = tide.pipeline "collect"
        p:task("split", { map = true }, function() return { 1, 2, 3 } end)
        p:task("check", { after = "split" }, function(x)
            if x == 2 then error("two is bad") end
            return x
        end)
        p:task("sum", { after = "check", gather = true, errors = "collect" }, function(xs)
            local ok, bad = 0, {}
            for i, x in ipairs(xs) do
                if tide.is_error(x) then bad[#bad + 1] = i .. ":" .. x.code else ok = ok + x end
            end
            return { ok = ok, bad = bad }
        end)
        local outs = tide.run(p, { 0 })
        assert.same({ ok = 4, bad = { "2:ETASK" } }, outs[1])
    end)

    it("fails a map over an object, null or a scalar with EVALUE naming what it got", function()
        for _, case in ipairs({
            { json.decode('{"a":1}'), "got an object" },
            { { a = 1 }, "got a table with the key 'a'" },
            { { 1, 2, x = 3 }, "got a table with the key 'x'" },
            { json.null, "got null" },
            { "abc", "got a string" },
            { true, "got a boolean" },
        }) do
            local p = tide.pipeline "map-what"
            p:task("split", { map = true }, function() return case[1] end)
            p:task("x", { after = "split" }, function(v) return v end)
            local outs, errs = tide.run(p, { 0 })
            assert.is_nil(outs[1])
            assert.equal("EVALUE", errs[1].code)
            assert.matches("map task 'split' must return an array, " .. case[2], errs[1].message, 1, true)
        end
        -- An empty array, marked or plain, fans out to nothing.
        for _, v in ipairs({ json.decode("[]"), {} }) do
            local p = tide.pipeline "map-empty"
            p:task("split", { map = true }, function() return v end)
            p:task("x", { after = "split" }, function(i) return i end)
            p:task("all", { after = "x", gather = true }, function(vs) return #vs end)
            assert.same({ 0 }, (tide.run(p, { 0 })))
        end
    end)

    it("rejects a map task that does not return a table", function()
        local p = tide.pipeline "bad-map"
        p:task("split", { map = true }, function() return 5 end)
        p:task("x", { after = "split" }, function(v) return v end)
        local _, errs = tide.run(p, { 0 })
        assert.equal("EVALUE", errs[1].code)
        assert.matches("must return an array, got a number", errs[1].message)
    end)
end)

describe("ctx", function()
    it("carries id, attempt, data shared by the context's tasks, and log", function()
        local p = tide.pipeline "ctx"
        p:task("a", function(_, ctx)
            ctx.data.seen = "a"
            ctx.log("hello from a")
            return { id = ctx.id, attempt = ctx.attempt, map_index = ctx.map_index }
        end)
        p:task("b", { after = "a" }, function(v, ctx) v.data = ctx.data.seen return v end)
        local ex = tide.executor()
        local id = ex:submit(p, 1, { id = "job-7" })
        ex:run()
        assert.same({ id = "job-7", attempt = 1, data = "a" }, ex:result(id))
    end)
end)

describe("executor", function()
    local p
    before_each(function()
        p = tide.pipeline "e"
        p:task("a", function(x) tide.sleep(0.01) return x * 2 end)
    end)

    it("ex:run raises when a result subscriber fails, instead of returning as if all went well", function()
        -- A subscriber that fails may have lost a result (tide run writes
        -- its lines from one), so run() must not return quietly.
        local ex = tide.executor()
        local seen = {}
        ex:subscribe(function(id)
            if id == "2" then error("subscriber failed on purpose") end
            seen[#seen + 1] = id
        end)
        for i = 1, 3 do ex:submit(p, i, { id = tostring(i) }) end
        local ok, err = pcall(ex.run, ex)
        assert.is_false(ok)
        assert.matches("1 result subscriber or watcher call%(s%) failed", err)
        table.sort(seen)
        assert.same({ "1", "3" }, seen) -- the other jobs were not held up
        assert.equal(4, ex:result("2")) -- the store kept it anyway
        ex:close()
    end)


    it("submits, reports status, runs and returns results", function()
        local ex = tide.executor { concurrency = 10 }
        local id = ex:submit(p, 21, { id = "x" })
        assert.equal("x", id)
        assert.equal("running", ex:status(id))
        local gen = ex:submit(p, 1)
        assert.is_string(gen)
        ex:run()
        assert.equal("done", ex:status(id))
        assert.equal(42, ex:result(id))
        assert.equal(42, ex:result(id)) -- reading does not consume
        assert_clean(ex)
    end)

    it("raises on a duplicate id and on bad options", function()
        local ex = tide.executor()
        ex:submit(p, 1, { id = "dup" })
        assert.has_error(function() ex:submit(p, 1, { id = "dup" }) end, "ex:submit: duplicate id 'dup'")
        assert.has_error(function() ex:submit(p, 1, { priority = "urgent" }) end)
        assert.has_error(function() ex:submit(p, 1, { colour = 1 }) end, "ex:submit: unknown option 'colour'")
        -- A number id keeps every digit; a non-finite one is refused.
        assert.equal("123456789012345678", ex:submit(p, 1, { id = 123456789012345678LL }))
        assert.equal("100000000000001", ex:submit(p, 1, { id = 100000000000001 }))
        assert.has_error(function() ex:submit(p, 1, { id = 0 / 0 }) end,
                         "ex:submit: id must be a non-empty string or a finite number")
        assert.has_error(function() ex:submit("p", 1) end)
        assert.has_error(function() ex.submit(p, 1) end)
        assert.has_error(function() tide.executor { concurrency = 0 } end)
        assert.has_error(function() tide.executor { concurrency = 1e12 } end,
                         "tide.executor: concurrency must be a whole number from 1 to 100000000")
        assert.has_error(function() tide.executor { threads = 1e6 } end,
                         "tide.executor: threads must be a whole number from 1 to 1024")
        assert.has_error(function() tide.executor { threads = 1.5 } end,
                         "tide.executor: threads must be a whole number from 1 to 1024")
        assert.has_error(function() tide.executor { bogus = 1 } end, "tide.executor: unknown option 'bogus'")
        ex:run()
    end)

    it("answers ENOENT for an unknown id and EAGAIN when a wait expires", function()
        local ex = tide.executor()
        local out, rec = ex:result("nope")
        assert.is_nil(out)
        assert.equal("ENOENT", rec.code)
        assert.equal("ENOENT: no job with id 'nope'", tostring(rec))
        local _, srec = ex:status("nope")
        assert.equal("ENOENT", srec.code)
        local q = tide.pipeline "slowq"
        q:task("a", function() tide.sleep(0.3) return 1 end)
        local id = ex:submit(q, 1)
        local o2, r2 = ex:result(id, 0.01)
        assert.is_nil(o2)
        assert.equal("EAGAIN", r2.code)
        assert.equal(1, ex:result(id, 5)) -- the job kept running
        assert_clean(ex)
    end)

    it("never waits forever on a failed job", function()
        local ex = tide.executor()
        local q = tide.pipeline "fails"
        q:task("a", function() tide.sleep(0.01) error("down") end)
        local id = ex:submit(q, 1)
        local out, rec = ex:result(id)
        assert.is_nil(out)
        assert.equal("ETASK", rec.code)
        assert.matches("down", rec.message)
    end)

    it("cancels a running job: ECANCELED, timers and slots freed", function()
        local ex = tide.executor()
        local q = tide.pipeline "long"
        q:task("a", { retry = { times = 5, interval = 10 } }, function() error("x") end)
        q:task("b", function() tide.sleep(10) end)
        local id = ex:submit(q, 1)
        ex:result(id, 0.05) -- let it start and wait for its retry
        assert.equal("running", ex:status(id) == "waiting" and "running" or ex:status(id))
        assert.is_true(ex:cancel(id))
        assert.equal("cancelled", ex:status(id))
        local out, rec = ex:result(id)
        assert.is_nil(out)
        assert.equal("ECANCELED", rec.code)
        local ok, crec, extra = ex:cancel(id)
        assert.is_nil(ok)
        assert.is_nil(extra)
        assert.equal("EINVAL", crec.code)
        assert.matches("already finished", crec.message)
        local ok2, crec2 = ex:cancel("ghost")
        local name2 = crec2.code
        assert.is_nil(ok2)
        assert.equal("ENOENT", name2)
        ex:run()
        assert_clean(ex)
    end)

    it("cancels a job's running children and their sleeps", function()
        local ex = tide.executor()
        local q = tide.pipeline "fan-cancel"
        q:task("split", { map = true }, function() return { 1, 2, 3, 4 } end)
        q:task("slow", { after = "split" }, function() tide.sleep(30) end)
        q:task("all", { after = "slow", gather = true }, function(v) return v end)
        local id = ex:submit(q, 0)
        ex:result(id, 0.02)
        assert.equal(5, ex:stats().slots) -- the parent and its 4 children
        assert.is_true(ex:cancel(id))
        local t0 = require("tide.core").hrtime()
        ex:run()
        assert.is_true(require("tide.core").hrtime() - t0 < 1)
        assert_clean(ex)
        assert.equal(0, ex:stats().held)
    end)

    it("lets a task wait for another job's result without blocking", function()
        local ex = tide.executor { concurrency = 1 }
        local worker = tide.pipeline "worker"
        worker:task("w", function(x) tide.sleep(0.01) return x + 1 end)
        local boss = tide.pipeline "boss"
        boss:task("b", function(x)
            -- concurrency = 1: waiting gives the slot back so the
            -- worker job can run.
            local id = ex:submit(worker, x)
            return ex:result(id, 5) * 10
        end)
        local id = ex:submit(boss, 1)
        ex:run()
        assert.equal(20, ex:result(id))
        assert_clean(ex)
    end)

    it("fails jobs that wait on each other with EDEADLK instead of hanging", function()
        local ex = tide.executor()
        local q = tide.pipeline "wait-other"
        q:task("a", function(other)
            tide.sleep(0.01)
            local out, err = ex:result(other)
            if out == nil then error(err) end
            return out
        end)
        ex:submit(q, "y", { id = "x" })
        ex:submit(q, "x", { id = "y" })
        ex:run()
        local _, rx = ex:result("x")
        local _, ry = ex:result("y")
        local cx, cy = rx.code, ry.code
        assert.equal("EDEADLK", cx)
        assert.equal("EDEADLK", cy)
        assert.matches("waits for job 'y'", rx.message)
        assert.matches("waits for job 'x'", ry.message)
        assert_clean(ex)
    end)

    it("runs nearest-to-sink first, high before low, newest lifo first", function()
        local order = {}
        local ex = tide.executor { concurrency = 100 }
        local q = tide.pipeline "order"
        q:task("a", function(x) order[#order + 1] = x .. ".a" return x end)
        q:task("b", { after = "a" }, function(x) order[#order + 1] = x .. ".b" return x end)
        ex:submit(q, "L1", { priority = "low" })
        ex:submit(q, "L2", { priority = "low" })
        ex:submit(q, "H1", { priority = "high" })
        ex:submit(q, "F1", { priority = "lifo" })
        ex:submit(q, "F2", { priority = "lifo" })
        ex:run()
        assert.same({ "H1.a", "H1.b", "L1.a", "L1.b", "L2.a", "L2.b",
                      "F2.a", "F2.b", "F1.a", "F1.b" }, order)
    end)

    it("keeps at most `concurrency` contexts in flight", function()
        local running, peak = 0, 0
        local q = tide.pipeline "conc"
        q:task("a", function()
            running = running + 1
            if running > peak then peak = running end
            tide.sleep(0.005)
            running = running - 1
        end)
        local inputs = {}
        for i = 1, 50 do inputs[i] = i end
        tide.run(q, inputs, { concurrency = 4 })
        assert.equal(4, peak)
    end)

    it("stays clean after many failing and timing-out attempts", function()
        local ex = tide.executor()
        local q = tide.pipeline "churn"
        q:task("a", { timeout = 0.002, retry = 2 }, function(x)
            if x % 2 == 0 then tide.sleep(1) end
            error("odd")
        end)
        for i = 1, 300 do ex:submit(q, i) end
        ex:run()
        for i = 1, 300 do
            local _, rec = ex:result(tostring(i))
            assert.equal(i % 2 == 0 and "ETIMEDOUT" or "ETASK", rec.code)
        end
        assert_clean(ex)
    end)
end)

describe("ex:task_stats", function()
    local function by_task(list)
        local m = {}
        for _, s in ipairs(list) do m[s.task] = s end
        return m
    end

    it("counts attempts, successes, failures and retries per task", function()
        local p = tide.pipeline "stats_counts"
        p:task("a", function(x) return x + 1 end)
        p:task("b", { after = "a", retry = { times = 2, interval = 0 } }, function(x)
            if x % 2 == 0 then error("even") end
            return x
        end)
        local ex = tide.executor()
        assert.is_nil(ex:task_stats(p)) -- never ran here
        for i = 1, 10 do ex:submit(p, i) end
        ex:run()
        local s = by_task(ex:task_stats(p))
        assert.same({ 10, 10, 0, 0 }, { s.a.attempts, s.a.done, s.a.failures, s.a.retries })
        -- Five inputs fail three times each (two retries), five succeed.
        assert.same({ 20, 5, 15, 10 }, { s.b.attempts, s.b.done, s.b.failures, s.b.retries })
        assert.same({ 0, 0 }, { s.b.running, s.b.retrying })
        ex:close()
    end)

    it("shows attempts running and waiting for a retry while they do #timing", function()
        local p = tide.pipeline "stats_gauges"
        p:task("slow", function(x) tide.sleep(0.2) return x end)
        p:task("flaky", { retry = { times = 1, interval = 0.3 } }, function() error("no") end)
        local ex = tide.executor()
        ex:submit(p, 1)
        ex:submit(p, 2)
        local hrtime = require("tide.core").hrtime
        local t0 = hrtime()
        while hrtime() - t0 < 0.1 do tide.step() end
        local s = by_task(ex:task_stats(p))
        assert.equal(2, s.slow.running)
        assert.equal(2, s.flaky.retrying)
        assert.equal(0, s.flaky.running)
        ex:run()
        s = by_task(ex:task_stats(p))
        assert.same({ 0, 0, 0, 0 }, { s.slow.running, s.flaky.retrying, s.flaky.running, s.slow.retrying })
        assert.same({ 4, 4, 2 }, { s.flaky.attempts, s.flaky.failures, s.flaky.retries })
        ex:close()
    end)

    it("drops cancelled attempts from the running count", function()
        local p = tide.pipeline "stats_cancel"
        p:task("wait", function() tide.sleep(10) end)
        local ex = tide.executor()
        local id = ex:submit(p, 1)
        tide.step()
        assert.equal(1, ex:task_stats(p)[1].running)
        assert.is_true(ex:cancel(id))
        ex:run()
        local s = ex:task_stats(p)[1]
        assert.same({ 0, 1, 0, 0 }, { s.running, s.attempts, s.done, s.failures })
        ex:close()
    end)

    it("files durations into histogram buckets only once timing is on #timing", function()
        local p = tide.pipeline "stats_timing"
        p:task("nap", function(x) tide.sleep(0.02) return x end)
        local ex = tide.executor()
        ex:submit(p, 0)
        ex:run()
        local s = ex:task_stats(p)[1]
        assert.equal(0, s.sum)
        ex:timing(true)
        for i = 1, 3 do ex:submit(p, i) end
        ex:run()
        s = ex:task_stats(p)[1]
        local bounds = ex:hist_bounds()
        assert.equal(#bounds + 1, #s.hist)
        -- 20 ms naps land in the bucket whose bound is 0.05 s.
        local k50
        for k, b in ipairs(bounds) do if b == 0.05 then k50 = k end end
        assert.equal(3, s.hist[k50])
        -- A 20 ms sleep can measure a little under 20 ms: libuv times it
        -- from the loop's cached clock, read before the attempt started.
        assert.is_true(s.sum >= 0.057 and s.sum < 1, "sum " .. s.sum)
        ex:close()
    end)

    it("rejects a call without the colon", function()
        local ex = tide.executor()
        assert.has_error(function() ex.task_stats(nil) end,
                         "ex:task_stats: call it as ex:task_stats(...), with a colon")
        ex:close()
    end)
end)

describe("an executor dropped without close()", function()
    it("does not break tide.step, tide.timeout or tide.fd once the GC closed it", function()
        local p = chain(1)
        do
            local ex = tide.executor()
            ex:submit(p, 1)
        end
        collectgarbage()
        collectgarbage()
        local ok, err = pcall(function()
            tide.step()
            tide.timeout()
            tide.fd()
        end)
        assert.is_true(ok, tostring(err))
    end)
end)

describe("runner threads", function()
    -- The counts below need every body parked before the first wakes up:
    -- with a 1 ms nap, a loaded machine (or ASan) started the last bodies
    -- after the first had woken, on their freed runners, and fewer runners
    -- were made than the specs expect.
    local function sleepers(name)
        local p = tide.pipeline(name)
        p:task("nap", function(x) tide.sleep(0.05) return x * 2 end)
        return p
    end
    local function cache() return debug.getregistry()["tide.runner_cache"] or {} end
    local function range(n)
        local t = {}
        for i = 1, n do t[i] = i end
        return t
    end

    it("are kept when an executor closes and serve the next one #timing", function()
        -- An executor of its own: tide.run keeps its executor open.
        local ex0 = tide.executor()
        local p0 = sleepers("reuse1")
        for i = 1, 200 do ex0:submit(p0, i, { id = "n" .. i }) end
        ex0:run()
        for i = 1, 200 do assert.equal(2 * i, (ex0:result("n" .. i))) end
        ex0:close()
        local kept = #cache()
        assert.is_true(kept >= 200, "kept " .. kept)
        -- The next executor takes them instead of making new ones, and
        -- its results are right.
        local ex = tide.executor()
        local p = sleepers("reuse2")
        local ids = {}
        for i = 1, 150 do ids[i] = ex:submit(p, i) end
        ex:run()
        for i = 1, 150 do assert.equal(2 * i, (ex:result(ids[i]))) end
        assert.is_true(#cache() <= kept - 150, "cache " .. #cache() .. " of " .. kept)
        ex:close()
        assert.is_true(#cache() >= kept)
    end)

    it("are kept up to a bound", function()
        tide.run(sleepers("reuse3"), range(3000))
        assert.is_true(#cache() <= 1024)
    end)

    it("survive bodies that failed, retried and were cancelled", function()
        local p = tide.pipeline "reuse4"
        p:task("mixed", { retry = { times = 1, interval = 0 } }, function(x)
            tide.sleep(0.001)
            if x % 3 == 0 then error("three") end
            return x
        end)
        for _ = 1, 3 do
            local outs, errs = tide.run(p, range(30))
            for i = 1, 30 do
                if i % 3 == 0 then
                    assert.equal("ETASK", errs[i].code)
                    assert.equal(2, errs[i].attempts)
                else
                    assert.equal(i, outs[i])
                end
            end
        end
        local ex = tide.executor()
        local id = ex:submit(sleepers("reuse5"), 1)
        ex:cancel(id)
        ex:close() -- with nothing to run: its idle runners are kept
        assert.equal(2, tide.run(sleepers("reuse6"), { 1 })[1])
    end)
end)

describe("ex:finished", function()
    it("tells the status and value of a finished job without waiting or consuming", function()
        local p = tide.pipeline "finished"
        p:task("half", function(x)
            if x == 0 then error("zero") end
            tide.sleep(0.01)
            return x / 2
        end)
        local ex = tide.executor()
        local a, b = ex:submit(p, 8), ex:submit(p, 0)
        assert.is_nil(ex:finished(a)) -- still running
        assert.is_nil(ex:finished("no-such-job"))
        ex:run()
        assert.same({ "done", 4 }, { ex:finished(a) })
        local status, rec = ex:finished(b)
        assert.equal("failed", status)
        assert.equal("ETASK", rec.code)
        assert.same({ "done", 4 }, { ex:finished(a) }) -- still there
        assert.equal(4, (ex:result(a)))
        ex:close()
    end)

    it("finished_json: the JSON text a json store keeps, undecoded; else the value", function()
        local p = tide.pipeline "finished_json"
        p:task("shape", function(x)
            if x == "fail" then error("no") end
            if x == "str" then return "a string" end
            if x == "num" then return 0.1 end
            if x == "bool" then return false end
            return { b = { 1, 2 }, a = "x", e = tide.json.array() }
        end)
        local ex = tide.executor { results = "json" }
        local t, n, b, s, f = ex:submit(p, "table"), ex:submit(p, "num"), ex:submit(p, "bool"),
            ex:submit(p, "str"), ex:submit(p, "fail")
        assert.is_nil(ex:finished_json(t)) -- still running
        ex:run()
        assert.same({ "done", '{"a":"x","b":[1,2],"e":[]}' }, { ex:finished_json(t) })
        -- Kept, but not as JSON text: the status and the value.
        assert.same({ "done", nil, 0.1 }, { ex:finished_json(n) })
        assert.same({ "done", nil, false }, { ex:finished_json(b) })
        assert.same({ "done", nil, "a string" }, { ex:finished_json(s) })
        local status, text, rec = ex:finished_json(f)
        assert.same({ "failed", nil, "ETASK" }, { status, text, rec.code })
        assert.is_nil(ex:finished_json("no-such-job"))
        -- The values read back decoded are the same.
        assert.same({ "done", 0.1 }, { ex:finished(n) })
        assert.same({ "done", false }, { ex:finished(b) })
        assert.same({ "done", "a string" }, { ex:finished(s) })
        ex:close()
        -- An executor keeping values as they are has no text to give.
        local ex2 = tide.executor()
        local id = ex2:submit(p, "table")
        ex2:run()
        local st2, text2, value2 = ex2:finished_json(id)
        assert.same({ "done", nil, { b = { 1, 2 }, a = "x", e = {} } }, { st2, text2, value2 })
        ex2:close()
        assert.has_error(function() ex2.finished_json({}, id) end)
    end)
end)


describe("ex:drain_now", function()
    it("runs ready jobs from a loop callback, and does nothing elsewhere", function()
        local ex = tide.executor()
        local p = tide.pipeline "drain-now"
        p:task("inc", function(x)
            -- The first job keeps the loop running until the timer fired.
            if x == 1 then tide.sleep(0.2) end
            return x + 1
        end)
        local id = ex:submit(p, 1)
        -- Outside the loop: nothing runs.
        assert.is_false(ex:drain_now())
        assert.is_nil(ex:finished(id))
        local seen
        local t
        t = ex:timer(0.01, function()
            t:close()
            local id2 = ex:submit(p, 41)
            local ran = ex:drain_now()
            local status, value = ex:finished(id2)
            seen = { ran, status, value }
        end)
        ex:run()
        assert.same({ true, "done", 42 }, seen)
        assert.equal("done", (ex:finished(id)))
        -- Inside a task: nothing, the engine is draining already.
        local q = tide.pipeline "drain-in-task"
        q:task("t", function() return ex:drain_now() end)
        local id3 = ex:submit(q, 0)
        ex:run()
        assert.same({ "done", false }, { ex:finished(id3) })
        assert.has_error(function() ex.drain_now(nil) end)
        ex:close()
    end)
end)
