-- Specs of batch = { size, wait }: ready inputs run together.
local tide = require "tide"
local hrtime = require("tide.core").hrtime

describe("batch", function()
    it("passes up to size inputs together and splits the outputs back", function()
        local sizes = {}
        local p = tide.pipeline "batched"
        p:task("prep", function(x) return x * 10 end)
        p:task("bulk", { after = "prep", batch = { size = 4, wait = 0.01 } }, function(xs)
            sizes[#sizes + 1] = #xs
            local out = {}
            for i, x in ipairs(xs) do out[i] = x + 1 end
            return out
        end)
        p:task("post", { after = "bulk" }, function(x) return -x end)
        local inputs = {}
        for i = 1, 10 do inputs[i] = i end
        local outs, errs = tide.run(p, inputs)
        assert.is_nil(next(errs))
        for i = 1, 10 do assert.equal(-(i * 10 + 1), outs[i]) end
        table.sort(sizes)
        assert.same({ 2, 4, 4 }, sizes)
    end)

    it("runs a partial batch once `wait` has passed", function()
        local p = tide.pipeline "partial"
        local t_run
        p:task("bulk", { batch = { size = 100, wait = 0.05 } }, function(xs)
            t_run = hrtime()
            return xs
        end)
        local t0 = hrtime()
        local outs = tide.run(p, { "a", "b", "c" })
        assert.same({ "a", "b", "c" }, outs)
        local waited = t_run - t0
        assert.is_true(waited >= 0.045 and waited < 0.5, "ran after " .. waited .. " s")
    end)

    it("fails every member when the output count is wrong, and retries them", function()
        local calls = 0
        local p = tide.pipeline "mismatch"
        p:task("bulk", { batch = { size = 3 }, retry = 1 }, function(xs)
            calls = calls + 1
            return { xs[1] } -- one output for several inputs
        end)
        local outs, errs = tide.run(p, { 1, 2, 3 })
        assert.is_nil(next(outs))
        assert.equal(2, calls) -- the whole batch, then its retry
        for i = 1, 3 do
            assert.equal("EVALUE", errs[i].code)
            assert.matches("batch task 'bulk' got 3 inputs and must return as many outputs, returned 1 outputs",
                errs[i].message)
            assert.equal(2, errs[i].attempts)
        end
    end)

    it("fails every member when the body raises", function()
        local p = tide.pipeline "raises"
        p:task("bulk", { batch = { size = 2 } }, function() error("bulk failed") end)
        local _, errs = tide.run(p, { 1, 2 })
        assert.equal("ETASK", errs[1].code)
        assert.matches("bulk failed", errs[2].message)
    end)

    it("cannot wait inside a batch body", function()
        local p = tide.pipeline "no-wait"
        p:task("bulk", { batch = { size = 1 } }, function(xs) tide.sleep(0.01) return xs end)
        local _, errs = tide.run(p, { 1 })
        assert.matches("tide.sleep: not available here", errs[1].message)
    end)

    it("rejects bad options", function()
        local function bad(opts, msg)
            local ok, err = pcall(tide.pipeline("x").task, tide.pipeline("x"), "t", opts, print)
            assert.is_false(ok)
            assert.matches(msg, err)
        end
        bad({ batch = 5 }, "batch must be a table")
        bad({ batch = { size = 0 } }, "batch.size must be a whole number >= 1")
        bad({ batch = { size = 2, wait = -1 } }, "batch.wait must be a number of seconds >= 0")
        bad({ batch = { size = 2, every = 1 } }, "unknown batch option 'every'")
        bad({ batch = { size = 2 }, timeout = 1 }, "batch cannot be combined with timeout")
        bad({ batch = { size = 2 }, map = true }, "batch cannot be combined with map")
    end)

    it("leaves nothing behind when a member is cancelled while it waits", function()
        local ex = tide.executor()
        local p = tide.pipeline "cancel-member"
        p:task("bulk", { batch = { size = 10, wait = 0.05 } }, function(xs) return xs end)
        local a = ex:submit(p, 1)
        local b = ex:submit(p, 2)
        ex:result(a, 0.01)
        assert.is_true(ex:cancel(a))
        ex:run()
        assert.equal(2, ex:result(b))
        local s = ex:stats()
        assert.equal(0, s.slots)
        assert.equal(0, s.timers)
    end)
end)
