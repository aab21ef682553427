-- Specs of flow control: routers and bypass, `when`, and limiters.
local tide = require "tide"
local hrtime = require("tide.core").hrtime

local function assert_clean(ex)
    local s = ex:stats()
    assert.equal(0, s.live)
    assert.equal(0, s.slots)
    assert.equal(0, s.attempts)
    assert.equal(0, s.timers)
end

describe("routers", function()
    local ran
    local function diamond(choice)
        ran = {}
        local p = tide.pipeline "routed"
        p:task("pick", { route = true }, function(x) ran.pick = true return choice(x) end)
        p:task("b", { after = "pick" }, function(x) ran.b = (ran.b or 0) + 1 return x + 1 end)
        p:task("c", { after = "pick" }, function(x) ran.c = (ran.c or 0) + 1 return x + 2 end)
        p:task("c2", { after = "c" }, function(x) ran.c2 = true return x end)
        p:task("join", { after = { "b", "c2" } }, function(i)
            ran.join = (ran.join or 0) + 1
            return i
        end)
        return p
    end

    it("run only the chosen branch; a join fires once with the taken inputs", function()
        local outs = tide.run(diamond(function() return "b" end), { 10 })
        assert.same({ b = 11 }, outs[1])
        assert.equal(1, ran.b)
        assert.is_nil(ran.c)
        assert.is_nil(ran.c2) -- bypassed because its only input was
        assert.equal(1, ran.join)
    end)

    it("accept a list of names", function()
        local outs = tide.run(diamond(function() return { "b", "c" } end), { 10 })
        assert.same({ b = 11, c2 = 12 }, outs[1])
        assert.equal(1, ran.join)
    end)

    it("bypass everything downstream when they choose nothing", function()
        local outs, errs = tide.run(diamond(function() return {} end), { 1 })
        assert.is_nil(errs[1])
        assert.same({}, outs[1])
        assert.is_nil(ran.join)
    end)

    it("fail the attempt when they name an unknown successor", function()
        local _, errs = tide.run(diamond(function() return "zzz" end), { 1 })
        assert.equal("EVALUE", errs[1].code)
        assert.matches("router 'pick' chose 'zzz', which is not one of its successors %(b, c%)", errs[1].message)
        local _, errs2 = tide.run(diamond(function() return 5 end), { 1 })
        assert.matches("must return a successor name or a list of names, got number", errs2[1].message)
    end)

    it("give the value of the one sink that ran", function()
        local p = tide.pipeline "two-ways"
        p:task("pick", { route = true }, function(x) return x > 0 and "pos" or "neg" end)
        p:task("pos", { after = "pick" }, function(x) return "positive " .. x end)
        p:task("neg", { after = "pick" }, function(x) return "negative " .. x end)
        local outs = tide.run(p, { 3, -2 })
        assert.same({ "positive 3", "negative -2" }, outs)
    end)

    it("bypass a map and its gather", function()
        local p = tide.pipeline "skip-map"
        p:task("pick", { route = true }, function(x) return x.fan and { "split", "plain" } or "plain" end)
        p:task("split", { after = "pick", map = true }, function(x) return x.items end)
        p:task("inc", { after = "split" }, function(v) return v + 1 end)
        p:task("sum", { after = "inc", gather = true }, function(vs)
            local s = 0
            for _, v in ipairs(vs) do s = s + v end
            return s
        end)
        p:task("plain", { after = "pick" }, function() return "plain" end)
        local outs = tide.run(p, { { fan = true, items = { 1, 2 } }, { fan = false } })
        assert.same({ sum = 5, plain = "plain" }, outs[1])
        assert.same("plain", outs[2])
    end)

    it("work inside map children", function()
        local p = tide.pipeline "route-in-map"
        p:task("split", { map = true }, function(xs) return xs end)
        p:task("kind", { after = "split", route = true }, function(x)
            return x % 2 == 0 and "even" or "odd"
        end)
        p:task("even", { after = "kind" }, function(x) return x * 10 end)
        p:task("odd", { after = "kind" }, function(x) return -x end)
        p:task("merge", { after = { "even", "odd" } }, function(i) return i.even or i.odd end)
        p:task("all", { after = "merge", gather = true }, function(v) return v end)
        local outs = tide.run(p, { { 1, 2, 3, 4 } })
        assert.same({ -1, 20, -3, 40 }, outs[1])
    end)

    it("must have successors (compile error)", function()
        local p = tide.pipeline "lonely"
        p:task("pick", { route = true }, function() return "x" end)
        local ok, err = pcall(p.compile, p)
        assert.is_false(ok)
        assert.matches("router 'pick' has no successors", err)
        assert.has_error(function() tide.pipeline("x"):task("a", { route = "yes" }, print) end)
    end)
end)

describe("when", function()
    it("skips a task whose predicate is false and passes its input through", function()
        local seen = {}
        local p = tide.pipeline "when"
        p:task("double", { when = function(x, ctx)
            seen[#seen + 1] = ctx.id
            return x > 5
        end }, function(x) return x * 2 end)
        p:task("inc", { after = "double" }, function(x) return x + 1 end)
        local outs = tide.run(p, { 1, 10 })
        assert.same({ 2, 21 }, outs)
        assert.same({ "1", "2" }, seen)
    end)

    it("fails the attempt when the predicate raises", function()
        local p = tide.pipeline "when-raises"
        p:task("a", { when = function() error("bad predicate") end }, function(x) return x end)
        local _, errs = tide.run(p, { 1 })
        assert.equal("ETASK", errs[1].code)
        assert.matches("when: .*bad predicate", errs[1].message)
        assert.has_error(function() tide.pipeline("y"):task("a", { when = 1 }, print) end)
    end)
end)

describe("tide.limiter", function()
    it("rejects bad declarations", function()
        assert.has_error(function() tide.limiter(1, { rate = 1 }) end)
        assert.has_error(function() tide.limiter("x", {}) end, "tide.limiter: give a rate, a concurrency or both")
        assert.has_error(function() tide.limiter("x", { rate = -1 }) end)
        assert.has_error(function() tide.limiter("x", { rate = 1, burst = 0 }) end)
        assert.has_error(function() tide.limiter("x", { burst = 2 }) end, "tide.limiter: burst needs a rate")
        assert.has_error(function() tide.limiter("x", { concurrency = 1.5 }) end)
        assert.has_error(function() tide.limiter("x", { speed = 1 }) end, "tide.limiter: unknown option 'speed'")
        assert.has_error(function() tide.pipeline("z"):task("a", { limit = 3 }, print) end)
    end)

    it("reports an unknown limiter at compile, naming file:line; a later declaration is fine", function()
        local p = tide.pipeline "unknown-limit"
        local line = debug.getinfo(1, "l").currentline + 1
        p:task("a", { limit = "nowhere-declared" }, function(x) return x end)
        local ok, err = pcall(p.compile, p)
        assert.is_false(ok)
        assert.equal("spec/flow_spec.lua:" .. line .. ": pipeline 'unknown-limit': task 'a' names unknown limiter "
            .. "'nowhere-declared' (declare it with tide.limiter)", err)
        local q = tide.pipeline "later"
        q:task("a", { limit = "declared-later" }, function(x) return x end)
        tide.limiter("declared-later", { concurrency = 1 })
        assert.same({ 7 }, (tide.run(q, { 7 })))
    end)

    it("caps attempts of every task naming it", function()
        tide.limiter("pair", { concurrency = 2 })
        local running, peak = 0, 0
        local function body(x)
            running = running + 1
            if running > peak then peak = running end
            tide.sleep(0.002)
            running = running - 1
            return x
        end
        local p = tide.pipeline "capped"
        p:task("a", { limit = "pair" }, body)
        p:task("b", { after = "a", limit = "pair" }, body)
        local inputs = {}
        for i = 1, 40 do inputs[i] = i end
        local outs = tide.run(p, inputs)
        assert.equal(40, #outs)
        assert.equal(2, peak)
    end)

    it("gets its slots back after 1000 failing and timing-out attempts #timing", function()
        tide.limiter("leaky", { concurrency = 2 })
        local p = tide.pipeline "churn-limited"
        p:task("a", { limit = "leaky", timeout = 0.001, retry = 1 }, function(x)
            if x % 2 == 0 then tide.sleep(1) end -- times out
            error("odd fails")
        end)
        local ex = tide.executor()
        for i = 1, 500 do ex:submit(p, i) end -- 500 inputs x 2 attempts
        ex:run()
        local st = ex:limiter_stats("leaky")
        assert.same({ running = 0, waiting = 0, started = 1000 }, st)
        for i = 1, 500 do
            local _, rec = ex:result(tostring(i))
            assert.equal(i % 2 == 0 and "ETIMEDOUT" or "ETASK", rec.code)
            assert.equal(2, rec.attempts)
        end
        -- Both slots are free: two sleepers now run side by side.
        local q = tide.pipeline "after-churn"
        local t0
        q:task("s", { limit = "leaky" }, function() tide.sleep(0.05) return hrtime() - t0 end)
        t0 = hrtime()
        local id1, id2 = ex:submit(q, 1), ex:submit(q, 2)
        ex:run()
        assert.is_true(ex:result(id1) < 0.09 and ex:result(id2) < 0.09)
        assert_clean(ex)
    end)

    it("frees the slot of a cancelled job and of a job waiting for a retry", function()
        tide.limiter("one", { concurrency = 1 })
        local p = tide.pipeline "holds"
        p:task("a", { limit = "one", retry = { times = 3, interval = 5 } }, function(x)
            if x == "retry" then error("later") end
            tide.sleep(5)
        end)
        local ex = tide.executor()
        local sleeper = ex:submit(p, "sleep")
        local waiter = ex:submit(p, "retry")
        ex:result(sleeper, 0.02)
        assert.equal(1, ex:limiter_stats("one").running)
        assert.is_true(ex:cancel(sleeper))
        ex:result(waiter, 0.05) -- it ran, failed and waits 5 s for a retry
        assert.equal("waiting", ex:status(waiter))
        assert.same({ running = 0, waiting = 0, started = 2 }, ex:limiter_stats("one"))
        ex:cancel(waiter)
        ex:run()
        assert_clean(ex)
    end)

    it("never exceeds burst + rate*t starts in any window, and nearly reaches the rate #timing", function()
        local rate, burst = 40, 4
        tide.limiter("paced", { rate = rate, burst = burst })
        local starts = {}
        local p = tide.pipeline "paced"
        p:task("a", { limit = "paced" }, function(x)
            starts[#starts + 1] = hrtime()
            return x
        end)
        local ex = tide.executor()
        for i = 1, 200 do ex:submit(p, i) end
        local t0 = hrtime()
        ex:result("200", 2.0) -- run the loop for 2 s
        local elapsed = hrtime() - t0
        local n = #starts
        for i = 1, n do
            for j = i, n do
                local allowed = burst + rate * (starts[j] - starts[i] + 0.001)
                assert(j - i + 1 <= allowed, ("%d starts in %.4f s"):format(j - i + 1, starts[j] - starts[i]))
            end
        end
        -- Nearly reached: at least 70 % of what the rate allows.
        assert.is_true(n >= 0.7 * (burst + rate * elapsed), ("only %d starts in %.2f s"):format(n, elapsed))
        for _, id in ipairs({ "150", "199" }) do ex:cancel(id) end
        ex:close()
    end)
end)
