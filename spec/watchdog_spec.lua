-- Specs of the watchdog in-process (also run under ThreadSanitizer): a task
-- body that runs its limit without yielding is stopped by a hook the
-- watchdog thread has the loop thread set. spec/e2e/watchdog_spec.lua runs
-- the same through the tide binary, with signals and the server.
--
-- The spinning bodies make a closure on each turn: LuaJIT never compiles a
-- loop that creates closures, so the interpreter runs it and the hook can
-- stop it (a compiled loop calls no hook; see the e2e specs). They give up
-- after SPIN seconds, so that a watchdog that fails them fails the spec
-- instead of hanging it.
local tide = require "tide"
local core = require "tide.core"

local hrtime = core.hrtime
local SPIN = 3

-- Interpreted work for `secs` seconds (default SPIN).
local function spin(secs)
    local t0 = hrtime()
    secs = secs or SPIN
    while hrtime() - t0 < secs do local _ = function() end end
    return "spun"
end

describe("the watchdog", function()
    it("stops a body that runs its timeout without yielding, with ETIMEDOUT", function()
        local p = tide.pipeline "wd-spin"
        p:task("spin", { timeout = 0.2 }, function(x)
            if x == 2 then return spin() end
            return x
        end)
        local t0 = hrtime()
        local outs, errs = tide.run(p, { 1, 2, 3 })
        assert.is_true(hrtime() - t0 < 2, "took " .. (hrtime() - t0))
        assert.equal(1, outs[1])
        assert.equal(3, outs[3])
        assert.is_nil(outs[2])
        assert.equal("ETIMEDOUT", errs[2].code)
        assert.equal("spin", errs[2].task)
        assert.equal(1, errs[2].attempts)
        assert.matches("stopped by the watchdog", errs[2].message, 1, true)
        assert.matches("watchdog_spec.lua:%d+: in function", errs[2].traceback) -- where it spun
    end)

    it("uses the executor's task_timeout when the task has none", function()
        local p = tide.pipeline "wd-default"
        p:task("spin", function() return spin() end)
        local _, errs = tide.run(p, { 1 }, { task_timeout = 0.2 })
        assert.equal("ETIMEDOUT", errs[1].code)
        assert.matches("after 0.2 s", errs[1].message, 1, true)
    end)

    it("stops a body that catches the error, at its first instruction outside the catch", function()
        local p = tide.pipeline "wd-stubborn"
        local caught = 0
        p:task("spin", { timeout = 0.2 }, function()
            local t0 = hrtime()
            while hrtime() - t0 < SPIN do
                pcall(spin)
                caught = caught + 1
            end
            return "spun"
        end)
        local _, errs = tide.run(p, { 1 })
        assert.equal("ETIMEDOUT", errs[1].code)
        assert.equal(0, caught)
    end)

    it("stops a body spinning inside a coroutine it made", function()
        local p = tide.pipeline "wd-nested"
        p:task("spin", { timeout = 0.2 }, function()
            return coroutine.wrap(spin)()
        end)
        local _, errs = tide.run(p, { 1 })
        assert.equal("ETIMEDOUT", errs[1].code)
    end)

    it("measures each stretch between yields, not the whole attempt", function()
        -- Input 1: two stretches of 0.2 s under a 0.35 s timeout. The
        -- attempt takes 0.4 s, but it yields in between, so the watchdog
        -- leaves it alone (and its deadline only acts at a yield point).
        -- Input 2: one stretch, stopped.
        local p = tide.pipeline "wd-stretches"
        p:task("work", { timeout = 0.35 }, function(x)
            if x == 2 then return spin() end
            spin(0.2)
            tide.sleep(0)
            spin(0.2)
            return x
        end)
        local outs, errs = tide.run(p, { 1, 2 }, { concurrency = 1 })
        assert.is_nil(errs[1], errs[1] and errs[1].message)
        assert.equal(1, outs[1])
        assert.equal("ETIMEDOUT", errs[2].code)
    end)

    it("retries a stopped attempt by the task's policy", function()
        local p = tide.pipeline "wd-retry"
        local attempts = 0
        p:task("spin", { timeout = 0.2, retry = 2 }, function(x, ctx)
            attempts = ctx.attempt
            if ctx.attempt < 3 then spin() end
            return x * 10
        end)
        local outs, errs = tide.run(p, { 4 })
        assert.is_nil(next(errs))
        assert.equal(40, outs[1])
        assert.equal(3, attempts)
    end)

    it("puts back a debug hook it replaced", function()
        local calls = 0
        local function counter() calls = calls + 1 end
        debug.sethook(counter, "", 1e8)
        finally(function() debug.sethook() end)
        local p = tide.pipeline "wd-debug-hook"
        p:task("spin", { timeout = 0.2 }, function() return spin() end)
        local _, errs = tide.run(p, { 1 })
        assert.equal("ETIMEDOUT", errs[1].code)
        local fn, mask, count = debug.gethook()
        assert.equal(counter, fn)
        assert.equal("", mask)
        assert.equal(1e8, count)
    end)

    it("leaves bodies that yield in time alone, however long the run", function()
        -- Stretches of 0.05 s under a 0.5 s limit, one attempt at a time
        -- (so that each attempt's own deadline is not at stake): the run
        -- is several limits long, and only the input that does not yield
        -- is stopped.
        local p = tide.pipeline "wd-busy"
        p:task("work", { timeout = 0.5 }, function(x)
            if x == 9 then return spin() end
            for _ = 1, 3 do
                spin(0.05)
                tide.sleep(0)
            end
            return x
        end)
        local inputs = {}
        for i = 1, 9 do inputs[i] = i end
        local outs, errs = tide.run(p, inputs, { concurrency = 1 })
        for i = 1, 8 do
            assert.is_nil(errs[i], errs[i] and errs[i].message)
            assert.equal(i, outs[i])
        end
        assert.equal("ETIMEDOUT", errs[9].code)
    end)
end)
