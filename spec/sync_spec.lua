-- Specs of kind = "sync": bodies on tide's worker threads.
local tide = require "tide"
local core = require "tide.core"
local json = tide.json

-- A pipeline whose sync task spins n times in a loop LuaJIT compiles, so
-- no count hook can stop it: a body stuck for as long as a spec needs.
local function spinner(name, timeout)
    local p = tide.pipeline(name)
    p:task("spin", { kind = "sync", timeout = timeout }, function(n)
        local x = 0
        for i = 1, n do x = x + i % 3 end
        return x
    end)
    return p
end

describe('kind = "sync"', function()
    it("runs on worker threads and carries values across exactly", function()
        local p = tide.pipeline "sync-values"
        p:task("echo", { kind = "sync" }, function(v)
            return { v = v, worker = require("tide.core").is_worker() }
        end)
        p:task("back", { after = "echo" }, function(r) return r end)
        local inputs = { 2 ^ 53, -0.0, "s\0z", json.array({}), json.object({}), { 1, 2, x = { y = true } } }
        local outs, errs = tide.run(p, inputs)
        assert.is_nil(next(errs))
        for i, v in ipairs(inputs) do
            assert.is_true(outs[i].worker)
            assert.same(v, outs[i].v)
        end
        assert.equal(json.array_mt, getmetatable(outs[4].v))
        assert.equal(json.object_mt, getmetatable(outs[5].v))
        assert.equal(-math.huge, 1 / outs[2].v)
    end)

    it("carries 64-bit integers from JSON across exactly, both ways", function()
        local p = tide.pipeline "sync-int64"
        p:task("next", { kind = "sync" }, function(v)
            local ffi = require "ffi"
            return { v = v, next = v + 1, ctype = tostring(ffi.typeof(v)),
                     worker = require("tide.core").is_worker() }
        end)
        local inputs = json.decode("[9007199254740993,-9223372036854775808,12345678901234567890]")
        local outs, errs = tide.run(p, inputs)
        assert.is_nil(next(errs))
        local want = {
            { "9007199254740993", "9007199254740994", "ctype<int64_t>" },
            { "-9223372036854775808", "-9223372036854775807", "ctype<int64_t>" },
            { "12345678901234567890", "12345678901234567891", "ctype<uint64_t>" },
        }
        for i, w in ipairs(want) do
            assert.is_true(outs[i].worker)
            assert.equal(w[3], outs[i].ctype)
            assert.equal(w[1], json.encode(outs[i].v))
            assert.equal(w[2], json.encode(outs[i].next))
            assert.is_true(outs[i].v == inputs[i])
        end
    end)

    -- The two specs below judge overlap in time, not wall-clock totals: on
    -- a loaded machine every run takes longer, but what runs side by side
    -- still overlaps.
    it("never blocks the loop: async tasks and timers run meanwhile #timing", function()
        local ticks = {}
        local p = tide.pipeline "busy"
        p:task("busy", { kind = "sync" }, function(secs)
            local now = require("tide.core").hrtime
            local t0 = now()
            while now() - t0 < secs do end
            return { t0, now() }
        end)
        local q = tide.pipeline "ticker"
        q:task("tick", function()
            for i = 1, 8 do
                tide.sleep(0.02)
                ticks[i] = core.hrtime()
            end
        end)
        local ex = tide.executor { threads = 1 }
        finally(function() ex:close() end)
        local busy = ex:submit(p, 0.4)
        ex:submit(q, 0)
        ex:run()
        local span = ex:result(busy)
        assert.equal(8, #ticks)
        local during = 0
        for _, t in ipairs(ticks) do
            if t > span[1] and t < span[2] then during = during + 1 end
        end
        -- 8 ticks of 20 ms fit in the 400 ms the body runs.
        assert.is_true(during >= 4, during .. " ticks while the sync body ran")
    end)

    it("uses several threads at once", function()
        local p = tide.pipeline "spin"
        p:task("spin", { kind = "sync" }, function(secs)
            local now = require("tide.core").hrtime
            local t0 = now()
            while now() - t0 < secs do end
            return { t0, now() }
        end)
        local ex = tide.executor { threads = 2 }
        finally(function() ex:close() end)
        local a, b = ex:submit(p, 0.3), ex:submit(p, 0.3)
        ex:run()
        local sa, sb = ex:result(a), ex:result(b)
        -- Each started before the other ended: they ran side by side.
        assert.is_true(sa[1] < sb[2] and sb[1] < sa[2],
                       ("a %.3f..%.3f, b %.3f..%.3f"):format(sa[1], sa[2], sb[1], sb[2]))
    end)

    it("reports errors with the worker's traceback, and values that cannot cross", function()
        local p = tide.pipeline "sync-errors"
        p:task("boom", { kind = "sync" }, function(x)
            if x == "raise" then error("worker boom") end
            if x == "fn" then return print end
            return x
        end)
        local _, errs = tide.run(p, { "raise", "fn", print })
        assert.equal("ETASK", errs[1].code)
        assert.matches("worker boom", errs[1].message)
        assert.matches("stack traceback", errs[1].traceback)
        assert.equal("EVALUE", errs[2].code)
        assert.matches("returned a value that cannot cross threads: cannot carry a function", errs[2].message)
        assert.equal("EVALUE", errs[3].code)
        assert.matches("the input of sync task 'boom' cannot cross threads", errs[3].message)
    end)

    it("refuses bodies with upvalues when the pipeline has no file", function()
        local up = 1
        local p = tide.pipeline "sync-upvalues"
        p:task("u", { kind = "sync" }, function() return up end)
        local ok, err = pcall(tide.run, p, { 1 })
        assert.is_false(ok)
        assert.matches("sync task 'u' uses upvalues %(up%): declare its pipeline in a file", err)
        assert.has_error(function()
            tide.pipeline("x"):task("c", { kind = "sync" }, function(_, ctx) return ctx end)
        end)
        assert.has_error(function() tide.pipeline("x"):task("m", { kind = "sync", map = true }, print) end)
    end)

    it("loads the pipeline file in the workers, where upvalues and modules work", function()
        local p = assert(tide.pipeline_file("spec/fixtures/pipelines/sync_file.lua"))
        local outs, errs = tide.run(p, { 1, 6, 27 })
        assert.is_nil(next(errs))
        assert.same({ { scaled = 0, in_worker = true }, { scaled = 24, in_worker = true },
                      { scaled = 333, in_worker = true } }, outs)
    end)

    it("gives workers a flavour of tide that cannot make executors", function()
        local p = assert(tide.pipeline_file("spec/fixtures/pipelines/sync_executor.lua"))
        local outs = tide.run(p, { 1 })
        assert.same({ ok = false, err = "tide.executor is not available on a worker thread" }, outs[1])
    end)

    it("times out at the deadline and discards the late result", function()
        local p = tide.pipeline "sync-slow"
        p:task("slow", { kind = "sync", timeout = 0.1 }, function()
            local c0 = os.clock()
            while os.clock() - c0 < 0.5 do end
            return "late"
        end)
        local ex = tide.executor { threads = 1 }
        local t0 = core.hrtime()
        local id = ex:submit(p, 1)
        local out, rec = ex:result(id)
        assert.is_nil(out)
        assert.equal("ETIMEDOUT", rec.code)
        assert.is_true(core.hrtime() - t0 < 0.45, "waited for the late result")
        -- Closing waits for the body still running on the worker (sync
        -- bodies cannot be interrupted yet): its result is dropped.
        ex:close()
    end)
end)

describe("tide.worker_local", function()
    it("gives each worker thread and the loop thread its own value, kept across tasks", function()
        local p = assert(tide.pipeline_file("spec/fixtures/pipelines/worker_local.lua"))
        local ex = tide.executor { threads = 2 }
        local ids = {}
        for i = 1, 60 do ids[i] = ex:submit(p, i) end
        ex:run()
        local workers, loops, last_use = {}, {}, {}
        for i = 1, 60 do
            local r = assert(ex:result(ids[i]))
            workers[r.worker.id] = true
            loops[r.loop] = true
            -- Per worker, uses only grow: the value is kept.
            assert.is_true(r.worker.uses > (last_use[r.worker.id] or 0) or r.worker.uses == 1)
            last_use[r.worker.id] = math.max(last_use[r.worker.id] or 0, r.worker.uses)
        end
        local nworkers, nloops = 0, 0
        for _ in pairs(workers) do nworkers = nworkers + 1 end
        for _ in pairs(loops) do nloops = nloops + 1 end
        assert.equal(2, nworkers) -- one value per worker thread
        assert.equal(1, nloops)   -- and one for the loop thread
        local total = 0
        for _, n in pairs(last_use) do total = total + n end
        assert.equal(60, total)
        ex:close()
    end)

    it("raises on misuse", function()
        assert.has_error(function() tide.worker_local(5) end, "tide.worker_local: init must be a function, got number")
        assert.has_error(function() tide.worker_local(print, 5) end)
    end)
end)

describe("sync task time limits", function()
    it("stop interpreted code on the worker, which then takes the next job", function()
        local p = tide.pipeline "runaway"
        p:task("spin", { kind = "sync", timeout = 0.1 }, function(x)
            if x == "forever" then
                jit.off() -- interpreted: the count hook can stop it
                local n = 0
                while true do n = n + 1 end
            end
            return x
        end)
        -- The job after it has no time limit of its own.
        local q = tide.pipeline "after-runaway"
        q:task("echo", { kind = "sync" }, function(x) return x end)
        local ex = tide.executor { threads = 1 }
        finally(function() ex:close() end)
        local t0 = core.hrtime()
        local stuck = ex:submit(p, "forever")
        local next_one = ex:submit(q, "next")
        local out, rec = ex:result(stuck, 5)
        assert.is_nil(out)
        assert.equal("ETIMEDOUT", rec.code)
        -- The one worker was freed: the next job ran right after.
        assert.equal("next", ex:result(next_one, 5))
        assert.is_true(core.hrtime() - t0 < 1, "took " .. (core.hrtime() - t0))
    end)
end)

describe("sync task time limits count from when a worker takes the job", function()
    it("so jobs that waited in the queue are not timed out for it", function()
        local p = tide.pipeline "queued-sync"
        p:task("work", { kind = "sync", timeout = 0.5 }, function(s)
            local t = require("tide.core").hrtime()
            while require("tide.core").hrtime() - t < s do end -- busy, like real work
            return s
        end)
        local ex = tide.executor { threads = 1 }
        finally(function() ex:close() end)
        -- One thread, three jobs of 0.3 s each: the third waits 0.6 s in
        -- the queue, longer than its 0.5 s limit, and must still finish.
        local ids = {}
        for i = 1, 3 do ids[i] = ex:submit(p, 0.3) end
        for i = 1, 3 do
            local out, rec = ex:result(ids[i], 5)
            assert.equal(0.3, out, rec and tostring(rec))
        end
        -- A job that runs past its limit still times out, queued or not.
        -- (The first of the two keeps the worker busy 0.8 s in all.)
        local slow = {}
        for i = 1, 2 do slow[i] = ex:submit(p, 0.8) end
        for i = 1, 2 do
            local out, rec = ex:result(slow[i], 5)
            assert.is_nil(out)
            assert.equal("ETIMEDOUT", rec.code)
        end
    end)
end)

describe("a sync job that never gets a worker", function()
    it("fails after ten times its time limit instead of waiting forever #timing", function()
        local p = spinner("hog", 0.05)
        local ex = tide.executor { threads = 1 }
        finally(function() ex:close() end)
        local hog = ex:submit(p, 1.5e9) -- holds the one worker past the grace period
        local t0 = core.hrtime()
        local starved = ex:submit(p, 1)
        local out, rec = ex:result(starved, 5)
        local waited = core.hrtime() - t0
        assert.is_nil(out)
        assert.equal("ETIMEDOUT", rec.code)
        assert.is_true(waited >= 0.4 and waited < 1.5, "waited " .. waited)
        assert.equal("ETIMEDOUT", select(2, ex:result(hog, 5)).code)
    end)
end)

describe("closing an executor", function()
    it("does not wait for a body stuck in a compiled loop #timing", function()
        local p = spinner("stuck-at-close")
        local ex = tide.executor { threads = 1 }
        local id = ex:submit(p, 3e9) -- seconds
        local t0 = core.hrtime()
        while core.hrtime() - t0 < 0.2 do tide.step() end -- a worker has it
        assert.equal("running", ex:status(id))
        ex:cancel(id)
        ex:run() -- nobody waits for the stuck job: returns at once
        local t1 = core.hrtime()
        ex:close()
        assert.is_true(core.hrtime() - t1 < 0.5, "close took " .. (core.hrtime() - t1))
        -- The process goes on: a new executor runs sync tasks.
        local q = tide.pipeline "after-stuck-close"
        q:task("echo", { kind = "sync" }, function(x) return x end)
        local outs = tide.run(q, { "a", "b" }, { threads = 1 })
        assert.same({ "a", "b" }, outs)
    end)
end)

describe("closing an executor from inside one of its tasks", function()
    it("is refused before it touches the worker threads #timing", function()
        local p = spinner("close-inside-sync")
        local ex = tide.executor { threads = 1 }
        finally(function() ex:close() end)
        local q = tide.pipeline "close-inside"
        q:task("try", function()
            local ok, err = pcall(ex.close, ex)
            return ok and "closed" or tostring(err)
        end)
        local busy = ex:submit(p, 1e7) -- a worker runs it meanwhile
        local try = ex:submit(q, 1)
        assert.matches("close: the executor is running", (ex:result(try, 5)))
        assert.equal("number", type((ex:result(busy, 5))))
        -- The pool still works.
        assert.equal("number", type((ex:result(ex:submit(p, 10), 5))))
    end)
end)

describe("stuck workers", function()
    it("get a stand-in after a grace period, so the pool keeps working #timing", function()
        local p = spinner("compiled-runaway", 0.1)
        local q = tide.pipeline "meanwhile"
        q:task("echo", { kind = "sync" }, function(x) return x end)
        local ex = tide.executor { threads = 1 }
        local t0 = core.hrtime()
        local stuck = ex:submit(p, 3e9)
        local other = ex:submit(q, "ran")
        local _, rec = ex:result(stuck)
        assert.equal("ETIMEDOUT", rec.code)
        assert.equal("ran", ex:result(other, 10))
        local took = core.hrtime() - t0
        local s = ex:stats()
        assert.equal(1, s.workers_replaced)
        assert.is_true(took > 0.9 and took < 2.5, "the other job ran after " .. took .. " s")
        ex:close() -- does not wait for the compiled loop to end
    end)
end)
