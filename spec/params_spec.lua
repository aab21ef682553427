--- Specs of p:param in a plain Lua program (tide as a library): misuse
-- raises at the caller's line; values come from tide.params, which the
-- host fills, or from tide.pipeline_file's options; sync tasks on worker
-- threads see the same values. The command line is in
-- spec/e2e/params_spec.lua.
local tide = require "tide"

local THIS = "spec/params_spec.lua"


-- Runs fn and returns the message it raised (it must raise).
local function raised(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    return err
end


describe("p:param misuse", function()
    local p
    before_each(function()
        tide.params = {}
        p = tide.pipeline "t"
    end)

    it("raises at the caller's line for a bad name", function()
        assert.matches(THIS .. ":%d+: p:param: name must be a string", raised(function() p:param(1) end))
        assert.matches("p:param: name must be", raised(function() p:param("", { default = 1 }) end))
        assert.matches("got \"1x\"", raised(function() p:param("1x", { default = 1 }) end))
        assert.matches("p:param: name must be", raised(function() p:param("a b", { default = 1 }) end))
    end)

    it("raises for bad options", function()
        assert.matches(THIS .. ":%d+: p:param: options for parameter 'a' must be a table, got number",
                       raised(function() p:param("a", 5) end))
        assert.matches("unknown option 'defualt' %(default, doc and type%)",
                       raised(function() p:param("a", { defualt = 1 }) end))
        assert.matches("doc must be a string, got number",
                       raised(function() p:param("a", { default = 1, doc = 2 }) end))
        assert.matches("type must be \"string\", \"number\", \"boolean\" or \"table\", got \"int\"",
                       raised(function() p:param("a", { type = "int" }) end))
        assert.matches("a default must be a string, number, boolean or table, got function",
                       raised(function() p:param("a", { default = print }) end))
        assert.matches("the default is a number, not a string",
                       raised(function() p:param("a", { default = 1, type = "string" }) end))
    end)

    it("raises when called with a dot, twice for a name, or after compiling", function()
        assert.matches("call it as p:param%(...%), with a colon", raised(function() p.param("a", {}) end))
        p:param("a", { default = 1 })
        assert.matches(THIS .. ":%d+: p:param: parameter 'a' is declared twice %(first at " .. THIS .. ":%d+%)",
                       raised(function() p:param("a", { default = 2 }) end))
        p:task("x", function(v) return v end):compile()
        assert.matches("already compiled", raised(function() p:param("b", { default = 1 }) end))
    end)

    it("raises for a required parameter the host did not set, and for a value of the wrong type", function()
        assert.matches(THIS .. ":%d+: p:param: parameter 'need' is required", raised(function() p:param("need") end))
        tide.params = { n = "five" }
        assert.matches("p:param: tide.params.n: expected a number, got \"five\"",
                       raised(function() p:param("n", { default = 1 }) end))
    end)
end)


describe("p:param in a plain Lua program", function()
    after_each(function() tide.params = {} end)

    it("gives the default, or the value the host put in tide.params, and records it there", function()
        tide.params = { limit = 5 }
        local p = tide.pipeline "lib"
        assert.equal(5, p:param("limit", { default = 100 }))
        assert.equal("x", p:param("label", { default = "x" }))
        assert.same({ limit = 5, label = "x" }, tide.params)
        assert.same({ limit = 5, label = "x" }, p.params)
    end)

    it("is an empty table before anything is declared or loaded", function()
        assert.same({}, tide.params)
        assert.is_table(tide.args)
    end)
end)


describe("tide.pipeline_file with params and args", function()
    local old_params, old_args
    before_each(function() old_params, old_args = tide.params, tide.args end)
    after_each(function() tide.params, tide.args = old_params, old_args end)

    it("gives them to the file as it loads, and to sync tasks on worker threads", function()
        local p = assert(tide.pipeline_file("spec/fixtures/params/p.lua", {
            params = { region = "lib", limit = 3, stages = 2 }, args = { "z" } }))
        assert.equal(3, tide.params.limit)
        assert.same({ "z" }, tide.args)
        -- stages = 2 made two add tasks.
        assert.truthy(p.byname.add2)
        local outs, errs = tide.run(p, { 1 })
        assert.same({}, errs)
        assert.equal("lib", outs[1].region)
        assert.equal(3, outs[1].limit)
        assert.equal(3, outs[1].x)
        assert.same({ "z" }, outs[1].args)
    end)

    it("returns nil and a message for a value of the wrong type, an unknown name or a missing one", function()
        local p, err = tide.pipeline_file("spec/fixtures/params/p.lua", { params = { region = 1 } })
        assert.is_nil(p)
        assert.equal("parameter 'region' from tide.pipeline_file's params: expected a string, got 1", err)
        p, err = tide.pipeline_file("spec/fixtures/params/p.lua", { params = { region = "r", what = 1 } })
        assert.is_nil(p)
        assert.matches("unknown parameter 'what'", err, 1, true)
        p, err = tide.pipeline_file("spec/fixtures/params/p.lua")
        assert.is_nil(p)
        assert.matches("missing required parameter: region", err, 1, true)
    end)

    it("raises for bad options", function()
        assert.matches(THIS .. ":%d+: tide.pipeline_file: unknown option 'param'",
                       raised(function() tide.pipeline_file("x.lua", { param = {} }) end))
        assert.matches("args%[2%] must be a string, got number",
                       raised(function() tide.pipeline_file("x.lua", { args = { "a", 2 } }) end))
        assert.matches("params must be a table", raised(function() tide.pipeline_file("x.lua", { params = 1 }) end))
    end)
end)
