-- Specs of lifecycle events (p:on, tide.executor{ on }, ex:on), pipeline
-- setup/teardown, and checkpoints (checkpoint = true, restore).
local tide = require "tide"


local function chain(name)
    local p = tide.pipeline(name)
    local calls = 0
    p:task("a", function(x) return x + 1 end)
    p:task("b", { after = "a", retry = { times = 1, interval = 0 } }, function(x)
        calls = calls + 1
        if calls == 1 then error("first try fails") end
        return x * 10
    end)
    return p
end


describe("lifecycle events", function()
    it("come in order: context, tasks, the retry, the end", function()
        local seen = {}
        -- Each call as one line: the event, then its arguments, a record
        -- shown as "rec" with its code at the end.
        local function note(event)
            return function(...)
                local n, parts, code = select("#", ...), {}, nil
                for i = 1, n do
                    local v = select(i, ...)
                    if tide.is_error(v) then
                        code, v = v.code, "rec"
                    end
                    parts[i] = tostring(v)
                end
                seen[#seen + 1] = event .. " " .. table.concat(parts, " ", 1, n) .. (code and (" " .. code) or "")
            end
        end
        local on = {}
        for _, e in ipairs({ "context_start", "task_start", "task_end", "retry", "context_end" }) do
            on[e] = note(e)
        end
        local ex = tide.executor { on = on }
        local p = chain "events"
        ex:submit(p, 1, { id = "j" })
        ex:run()
        ex:close()
        assert.same({
            "context_start j 1",
            "task_start j a 1 nil 1",
            "task_end j a 1 2 nil nil nil",
            "task_start j b 1 nil 2",
            "task_end j b 1 nil rec nil nil ETASK",
            "retry j b 1 rec 0 ETASK",
            "task_start j b 2 nil 2",
            "task_end j b 2 20 nil nil nil",
            "context_end j done 20",
        }, seen)
    end)

    it("give task_start the input of the attempt, also in a map child", function()
        local starts = {}
        local p = tide.pipeline "inputs"
        p:task("split", { map = true }, function(x) return { x, x + 1 } end)
        p:task("sq", { after = "split" }, function(x) return x * x end)
        p:on("task_start", function(id, task, attempt, map_index, input)
            starts[#starts + 1] = table.concat({ id, task, attempt, tostring(map_index), tostring(input) }, " ")
        end)
        local ex = tide.executor()
        ex:submit(p, 3, { id = "m" })
        ex:run()
        ex:close()
        table.sort(starts)
        assert.same({ "m split 1 nil 3", "m sq 1 1 3", "m sq 1 2 4" }, starts)
    end)

    it("of a pipeline (p:on) fire for its own contexts only", function()
        local ends = {}
        local p, q = chain "mine", chain "other"
        p:on("context_end", function(id, status) ends[#ends + 1] = id .. ":" .. status end)
        local ex = tide.executor()
        ex:submit(p, 1, { id = "p1" })
        ex:submit(q, 1, { id = "q1" })
        ex:run()
        ex:close()
        assert.same({ "p1:done" }, ends)
    end)

    it("never fail the job when a hook raises, and can be removed", function()
        local calls = 0
        local ex = tide.executor()
        local hook = ex:on("task_end", function()
            calls = calls + 1
            error("hook failed on purpose")
        end)
        local p = tide.pipeline "hooked"
        p:task("a", function(x) return x end)
        local id = ex:submit(p, 5)
        assert.equal(5, ex:result(id, 5))
        assert.equal(1, calls)
        assert.is_true(ex:off("task_end", hook))
        local id2 = ex:submit(p, 6)
        assert.equal(6, ex:result(id2, 5))
        assert.equal(1, calls)
        ex:close()
    end)

    it("of a pipeline added after it started running reach plain tasks too", function()
        local p = tide.pipeline "late"
        p:task("a", function(x) return x + 1 end)
        local ex = tide.executor()
        assert.equal(2, ex:result(ex:submit(p, 1), 5))
        local ends = {}
        p:on("task_end", function(id, task, _, out) ends[#ends + 1] = id .. " " .. task .. " " .. out end)
        ex:submit(p, 5, { id = "late" })
        ex:run()
        ex:close()
        assert.same({ "late a 6" }, ends)
    end)

    it("refuse unknown events and non-functions", function()
        local p = tide.pipeline "bad-hooks"
        assert.has_error(function() p:on("task_begin", print) end)
        assert.has_error(function() p:on("task_end", 5) end)
        assert.has_error(function() tide.executor { on = { nope = print } } end,
                         "tide.executor: on: unknown event 'nope'")
        local ex = tide.executor()
        assert.has_error(function() ex:on("retry", "x") end, "ex:on: the hook must be a function")
        ex:close()
    end)
end)


describe("setup and teardown", function()
    it("run once per Lua state, before its first job, and at its close", function()
        local log = {}
        local p = tide.pipeline "setup"
        p:setup(function() log[#log + 1] = "setup" end, function() log[#log + 1] = "teardown" end)
        p:task("a", function(x)
            log[#log + 1] = "task " .. x
            return x
        end)
        local ex = tide.executor()
        ex:submit(p, 1)
        ex:submit(p, 2)
        ex:run()
        ex:close()
        local ex2 = tide.executor()
        ex2:submit(p, 3)
        ex2:run()
        ex2:close()
        assert.same({ "setup", "task 1", "task 2", "task 3" }, log)
        assert.has_error(function() p:setup("no") end, "p:setup: setup must be a function, got string")
    end)

    it("a failing setup is an error naming the pipeline, tried again on the next submit", function()
        local p = tide.pipeline "broken-setup"
        local up = false
        p:setup(function() if not up then error("no database") end end)
        p:task("a", function(x) return x end)
        local ex = tide.executor()
        local ok, err = pcall(ex.submit, ex, p, 1)
        assert.is_false(ok)
        assert.matches("pipeline 'broken%-setup': setup failed: .*no database", err)
        up = true -- the database is back
        assert.equal(1, ex:result(ex:submit(p, 1), 5))
        ex:close()
    end)
end)


describe("checkpoints", function()
    it("keep a task's output, and the inputs of a failing step", function()
        local kept = {}
        local p = tide.pipeline "cp"
        p:task("load", { checkpoint = true }, function(x) return { rows = x } end)
        p:task("parse", { after = "load" }, function(t) return t.rows * 2 end)
        p:task("store", { after = "parse", retry = { times = 1, interval = 0 } }, function(n)
            if n < 100 then error("store is down") end
            return n
        end)
        local ex = tide.executor { on = { checkpoint = function(id, task, out)
            kept[#kept + 1] = id .. " " .. task .. " " .. tide.json.encode(out)
        end } }
        ex:submit(p, 7, { id = "x" })
        ex:run()
        ex:close()
        table.sort(kept)
        -- load (checkpoint = true), and parse: the input of the failing
        -- store step, once although store failed twice.
        assert.same({ 'x load {"rows":7}', "x parse 14" }, kept)
    end)

    it("given back with restore, skip the bodies of those tasks", function()
        local runs = {}
        local p = tide.pipeline "restored"
        p:task("load", { checkpoint = true }, function(x) runs[#runs + 1] = "load"; return x + 1 end)
        p:task("parse", { after = "load" }, function(x) runs[#runs + 1] = "parse"; return x * 2 end)
        p:task("each", { after = "parse", map = true }, function(n)
            runs[#runs + 1] = "each"
            local t = {}
            for i = 1, n do t[i] = i end
            return t
        end)
        p:task("sq", { after = "each" }, function(i) return i * i end)
        p:task("sum", { after = "sq", gather = true }, function(v)
            local s = 0
            for _, x in ipairs(v) do s = s + x end
            return s
        end)
        local ex = tide.executor()
        local id = ex:submit(p, 1, { restore = { load = 2, each = { 1, 2, 3 } } })
        assert.equal(14, ex:result(id, 5)) -- 1 + 4 + 9: the restored array fanned out
        -- load and each returned their checkpoints; parse ran (no checkpoint).
        assert.same({ "parse" }, runs)
        assert.has_error(function() ex:submit(p, 1, { restore = 5 }) end,
                         "ex:submit: restore must be a table { task = output }")
        assert.equal(0, ex:stats().held)
        ex:close()
        assert.has_error(function()
            tide.pipeline("x"):task("r", { route = true, checkpoint = true }, print)
        end)
    end)
end)


describe("checkpoints around slow steps (checkpoint_after)", function()
    -- a -> slow (sleeps `secs`) -> b, with every checkpoint and the end of
    -- each body noted in order.
    local function run(secs, opts)
        local log = {}
        local p = tide.pipeline "slowstep"
        p:task("a", function(x) return x + 1 end)
        p:task("slow", { after = "a" }, function(x)
            tide.sleep(secs)
            log[#log + 1] = "slow returns"
            return x * 10
        end)
        p:task("b", { after = "slow" }, function(x)
            log[#log + 1] = "b runs"
            return x + 1
        end)
        opts.on = { checkpoint = function(id, task, out)
            log[#log + 1] = "checkpoint " .. id .. " " .. task .. " " .. tide.json.encode(out)
        end }
        local ex = tide.executor(opts)
        ex:submit(p, 1, { id = "s" })
        ex:run()
        assert.equal(0, ex:stats().held)
        ex:close()
        return log
    end

    it("keep what the context needs while the step runs, and the step's output as it ends", function()
        assert.same({ "checkpoint s a 2", "slow returns", "checkpoint s slow 20", "b runs" },
                    run(0.8, { checkpoint_after = 0.2 }))
    end)

    it("leave fast steps alone, and are off with checkpoint_after = 0", function()
        assert.same({ "slow returns", "b runs" }, run(0.05, { checkpoint_after = 1 }))
        assert.same({ "slow returns", "b runs" }, run(0.6, { checkpoint_after = 0 }))
    end)

    it("never keep a router's output (a restored router could not choose again), but what fed it", function()
        local kept, tries = {}, 0
        local p = tide.pipeline "routed"
        p:task("a", function(x) return x + 1 end)
        p:task("r", { after = "a", route = true }, function() return "x" end)
        p:task("x", { after = "r", retry = { times = 1, interval = 0 } }, function(v)
            tide.sleep(0.5)
            tries = tries + 1
            if tries == 1 then error("x fails once") end
            return v * 2
        end)
        p:task("y", { after = "r" }, function(v) return v end)
        local ex = tide.executor { checkpoint_after = 0.1, on = { checkpoint = function(id, task, out)
            kept[#kept + 1] = id .. " " .. task .. " " .. tide.json.encode(out)
        end } }
        ex:submit(p, 1, { id = "q" })
        ex:run()
        ex:close()
        -- x was slow (the sweep) and failed once (its inputs): r fed it,
        -- and a, which fed r, was kept instead; x's own output was kept as
        -- it ended.
        assert.same({ "q a 2", "q x 4" }, kept)
    end)

    it("refuse a checkpoint_after that is not seconds >= 0", function()
        for _, bad in ipairs({ -1, "1", 0 / 0, math.huge }) do
            assert.has_error(function() tide.executor { checkpoint_after = bad } end,
                             "tide.executor: checkpoint_after must be a number of seconds >= 0 (0: never), got "
                             .. tostring(bad))
        end
    end)
end)


describe("setup and teardown in tide run", function()
    local proc = require "helpers.proc"
    it("run in the loop's state and in each worker state that ran a sync task", function()
        local log = os.tmpname()
        finally(function() os.remove(log) end)
        local input = {}
        for i = 1, 40 do input[i] = tostring(i) end
        local r = proc.tide({ "run", "spec/fixtures/pipelines/setup.lua", "--threads", "2" },
                            table.concat(input, "\n") .. "\n", { TIDE_SPEC_LOG = log })
        assert.equal(0, r.code, r.stderr)
        local count = {}
        for line in (proc.slurp(log) or ""):gmatch("[^\n]+") do count[line] = (count[line] or 0) + 1 end
        assert.equal(1, count["setup loop"])
        assert.equal(1, count["teardown loop"])
        assert.is_true((count["setup worker"] or 0) >= 1 and count["setup worker"] <= 2,
                       tostring(count["setup worker"]) .. " worker setups")
        assert.equal(count["setup worker"], count["teardown worker"])
    end)
end)
