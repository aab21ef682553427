-- Specs of the pipeline DSL: argument checks at the call, graph checks at
-- compile, each naming file:line.
local tide = require "tide"

local THIS = "spec/pipeline_spec.lua"

describe("tide.pipeline", function()
    it("rejects a name that is not a non-empty string", function()
        local ok, err = pcall(function() tide.pipeline(42) end)
        assert.is_false(ok)
        assert.equal(THIS .. ":9: tide.pipeline: name must be a non-empty string, got number", err)
        assert.has_error(function() tide.pipeline("") end)
    end)
end)

describe("p:task()", function()
    local p
    before_each(function() p = tide.pipeline "t" end)

    it("accepts (name, fn) and (name, opts, fn) and chains", function()
        assert.equal(p, p:task("a", function() end))
        assert.equal(p, p:task("b", { after = "a" }, function() end))
        assert.equal(2, #p.tasks)
    end)

    it("raises at the caller's line on wrong types", function()
        local ok, err = pcall(function() p:task(1, function() end) end)
        assert.is_false(ok)
        assert.is_string(err)
        assert.matches(THIS .. ":%d+: p:task: task name must be a non%-empty string", err)
        local line = debug.getinfo(1, "l").currentline + 1
        ok, err = pcall(function() p:task("a", {}, "nope") end)
        assert.is_false(ok)
        assert.equal(THIS .. ":" .. line .. ": p:task: task 'a' needs a function body, got string", err)
        assert.has_error(function() p:task("a", 5, function() end) end,
            "p:task: options for task 'a' must be a table, got number")
    end)

    it("rejects unknown options and bad option values", function()
        local cases = {
            { { nope = 1 }, "unknown option 'nope'" },
            { { after = 3 }, "after must be a name or a list of names" },
            { { after = { "x", 2 } }, "after%[2%] must be a task name" },
            { { timeout = -1 }, "timeout must be a number of seconds > 0" },
            { { timeout = "5" }, "timeout must be a number of seconds > 0" },
            { { retry = -1 }, "retry must be a whole number from 0 to 10000" },
            { { retry = 1.5 }, "retry must be a whole number from 0 to 10000" },
            { { retry = 10001 }, "retry must be a whole number from 0 to 10000" },
            { { retry = "x" }, "retry must be a number or a table" },
            { { retry = { times = -2 } }, "retry.times must be a whole number" },
            { { retry = { interval = "x" } }, "retry.interval must be a number or a function" },
            { { retry = { on = 1 } }, "retry.on must be a function" },
            { { retry = { bogus = 1 } }, "unknown retry option 'bogus'" },
            { { map = "yes" }, "map must be a boolean" },
            { { errors = "collect" }, "errors applies to gather tasks only" },
            { { gather = true, errors = "x" }, "errors must be 'fail' or 'collect'" },
            { { kind = "native", native = "no-colon" }, "native must be \"path/lib.so:symbol\"" },
            { { kind = "sync", map = true }, "kind .sync. cannot be combined with map" },
            { { kind = "weird" }, "unknown kind 'weird'" },
        }
        for _, c in ipairs(cases) do
            local ok, err = pcall(p.task, p, "a", c[1], function() end)
            assert.is_false(ok)
            assert.matches(c[2], err)
        end
    end)

    it("reports a bad value inside a nested option table at the caller's line, naming the task", function()
        local cases = {
            { { retry = { intervall = 1 } }, "unknown retry option 'intervall' (retry takes times, interval and on)" },
            { { retry = { times = "3" } }, "retry.times must be a whole number from 0 to 10000, got string" },
            { { retry = { times = 2.5 } }, "retry.times must be a whole number from 0 to 10000, got 2.5" },
            { { retry = { interval = "1" } }, "retry.interval must be a number or a function, got string" },
            { { retry = { interval = -1 } }, "retry.interval must be >= 0, got -1" },
            { { retry = { on = "ETIMEDOUT" } }, "retry.on must be a function, got string" },
            { { retry = "3" }, "retry must be a number or a table, got string" },
            { { retry = 1.5 }, "retry must be a whole number from 0 to 10000, got 1.5" },
            { { batch = { sise = 10 } }, "unknown batch option 'sise' (batch takes size and wait)" },
            { { batch = { size = "10" } }, "batch.size must be a whole number >= 1, got string" },
            { { batch = { size = 10, wait = "1" } }, "batch.wait must be a number of seconds >= 0, got string" },
            { { batch = true }, "batch must be a table { size = n, wait = seconds }, got boolean" },
            { { after = { "x", 2 } }, "after[2] must be a task name, got number" },
            { { after = { "x", afer = "y" } }, "after must be a list of names, got key 'afer'" },
        }
        for _, c in ipairs(cases) do
            local line = debug.getinfo(1, "l").currentline + 1
            local ok, err = pcall(function() p:task("fetch", c[1], function() end) end)
            assert.is_false(ok)
            assert.equal(THIS .. ":" .. line .. ": p:task: task 'fetch': " .. c[2], err)
        end
    end)

    it("refuses new tasks once compiled", function()
        p:task("a", function() end):compile()
        assert.has_error(function() p:task("b", function() end) end)
    end)
end)

describe("p:compile()", function()
    local function compile_error(build)
        local p = tide.pipeline "bad"
        build(p)
        local ok, err = pcall(p.compile, p)
        assert.is_false(ok)
        return err
    end

    it("lets after name a task declared later", function()
        local p = tide.pipeline "fwd"
        p:task("b", { after = "a" }, function(x) return x * 2 end)
        p:task("a", function(x) return x + 1 end)
        local outs = tide.run(p, { 1, 2 })
        assert.same({ 4, 6 }, outs)
    end)

    it("names the tasks on a cycle and the declaring line", function()
        local err = compile_error(function(p)
            p:task("a", { after = "c" }, function() end)
            p:task("b", { after = "a" }, function() end)
            p:task("c", { after = "b" }, function() end)
        end)
        assert.matches(THIS .. ":%d+: pipeline 'bad': cycle: ", err)
        assert.matches("a %-> b", err)
        assert.matches("b %-> c", err)
        assert.matches("c %-> a", err)
    end)

    it("names an unknown after with its file:line", function()
        local line
        local err = compile_error(function(p)
            p:task("a", function() end)
            line = debug.getinfo(1, "l").currentline + 1
            p:task("b", { after = "nope" }, function() end)
        end)
        assert.equal(THIS .. ":" .. line .. ": pipeline 'bad': task 'b': 'after' names unknown task 'nope'", err)
    end)

    it("names both declarations of a duplicate", function()
        local line
        local err = compile_error(function(p)
            line = debug.getinfo(1, "l").currentline + 1
            p:task("a", function() end)
            p:task("a", function() end)
        end)
        assert.equal(THIS .. ":" .. (line + 1) .. ": pipeline 'bad': duplicate task name 'a' (first declared at "
            .. THIS .. ":" .. line .. ")", err)
    end)

    it("rejects a gather that is not downstream of a map", function()
        local err = compile_error(function(p)
            p:task("a", function() end)
            p:task("g", { after = "a", gather = true }, function() end)
        end)
        assert.matches("gather task 'g' is not downstream of a map", err)
    end)

    it("rejects a task mixing inputs from inside and outside a map", function()
        local err = compile_error(function(p)
            p:task("m", { map = true }, function() end)
            p:task("x", function() end)
            p:task("in", { after = "m" }, function() end)
            p:task("j", { after = { "in", "x" } }, function() end)
        end)
        assert.matches("task 'j' mixes inputs", err)
    end)

    it("rejects an empty pipeline", function()
        local err = compile_error(function() end)
        assert.matches("has no tasks", err)
    end)
end)
