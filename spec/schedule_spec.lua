--- Specs of p:schedule's declaration (lua/tide/pipeline.lua): misuse
-- raises at the caller's line with a message saying what is wrong; a good
-- declaration is kept on the pipeline. Firing under `tide serve` is in
-- spec/e2e/schedule_spec.lua.
local tide = require "tide"

local THIS = "spec/schedule_spec.lua"


-- Runs fn and returns the message it raised (it must raise).
local function raised(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    return err
end


describe("p:schedule", function()
    local p
    local function input() return {} end
    before_each(function()
        p = tide.pipeline "s"
        p:task("t", function(x) return x end)
    end)

    it("raises at the caller's line on a bad expression, saying what is wrong", function()
        assert.matches(THIS .. ":%d+: p:schedule: 'x %* %* %*' has 4 fields",
                       raised(function() p:schedule("x * * *", input) end))
        assert.matches(THIS .. ":%d+: p:schedule: hour: 25 is out of range 0%-23",
                       raised(function() p:schedule("0 25 * * *", input) end))
        assert.matches("p:schedule: a cron expression must be a string, got nil",
                       raised(function() p:schedule(nil, input) end))
    end)

    it("raises on a bad catchup, tz, name or option", function()
        assert.matches(THIS .. ":%d+: p:schedule: catchup must be \"none\", \"all\" or \"latest\", got some",
                       raised(function() p:schedule("* * * * *", { catchup = "some" }, input) end))
        assert.matches(THIS .. ":%d+: p:schedule: tz 'Europe/Pariss' is not a known time zone",
                       raised(function() p:schedule("* * * * *", { tz = "Europe/Pariss" }, input) end))
        assert.matches(THIS .. ":%d+: p:schedule: tz '%+2' is not a fixed offset",
                       raised(function() p:schedule("* * * * *", { tz = "+2" }, input) end))
        assert.matches("p:schedule: name must be a string of letters",
                       raised(function() p:schedule("* * * * *", { name = "a b" }, input) end))
        assert.matches("p:schedule: unknown option 'every'",
                       raised(function() p:schedule("* * * * *", { every = 5 }, input) end))
        assert.matches("p:schedule: options must be a table, got string",
                       raised(function() p:schedule("* * * * *", "x", input) end))
    end)

    it("raises when the function is missing", function()
        assert.matches(THIS .. ":%d+: p:schedule: the last argument must be a function%(now%) that returns "
                       .. "the input, got nil", raised(function() p:schedule("* * * * *") end))
        assert.matches("function%(now%) that returns the input, got number",
                       raised(function() p:schedule("* * * * *", {}, 5) end))
    end)

    it("raises on a name declared twice and when called with a dot", function()
        p:schedule("* * * * *", { name = "a" }, input)
        assert.matches(THIS .. ":%d+: p:schedule: schedule 'a' is declared twice %(first at " .. THIS,
                       raised(function() p:schedule("0 * * * *", { name = "a" }, input) end))
        assert.matches("call it as p:schedule%(...%), with a colon",
                       raised(function() p.schedule("* * * * *", input) end))
    end)

    it("keeps the declarations on the pipeline, with their defaults", function()
        p:schedule("*/5 * * * *", input)
        p:schedule("0 9 * * MON", { name = "weekly", tz = "+02:00", catchup = "latest" }, input)
        assert.equal(2, #p.schedules)
        local a, b = p.schedules[1], p.schedules[2]
        assert.same({ "schedule1", "*/5 * * * *", "UTC", 0, "none" }, { a.name, a.expr, a.tz, a.zone, a.catchup })
        assert.same({ "weekly", "+02:00", 7200, "latest" }, { b.name, b.tz, b.zone, b.catchup })
        p:schedule("0 9 * * *", { name = "berlin", tz = "Europe/Berlin" }, input)
        assert.equal("Europe/Berlin", p.schedules[3].zone.name)
        assert.equal(input, b.fn)
    end)
end)
