--- Specs of the cron parser of p:schedule (lua/tide/cron.lua): next fire
-- times against a table of known answers (checked with date(1) for the
-- weekdays), and garbage refused with a message that says what is wrong.
local cron = require "tide.cron"

-- Unix time of an ISO 8601 UTC time such as "2026-12-02T07:00:00Z".
local function at(iso)
    local y, m, d, h, mi, s = iso:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
    return cron.days_from_civil(tonumber(y), tonumber(m), tonumber(d)) * 86400 + h * 3600 + mi * 60 + s
end

-- { expression, after, the next fire after it [, tz] }
local NEXT = {
    { "*/5 * * * *", "2026-12-02T07:01:00Z", "2026-12-02T07:05:00Z" },
    { "*/5 * * * *", "2026-12-02T07:05:00Z", "2026-12-02T07:10:00Z" },   -- strictly after
    { "* * * * *", "2026-12-02T07:01:30Z", "2026-12-02T07:02:00Z" },
    { "0 * * * *", "2026-12-31T23:00:00Z", "2027-01-01T00:00:00Z" },     -- year end
    -- Month ends: the 31st skips the months without one.
    { "0 0 31 * *", "2026-04-15T00:00:00Z", "2026-05-31T00:00:00Z" },
    { "0 0 31 * *", "2026-05-31T00:00:00Z", "2026-07-31T00:00:00Z" },
    { "0 0 30 * *", "2026-01-30T00:00:00Z", "2026-03-30T00:00:00Z" },
    -- Leap years: 29 February waits for one (2100 is not one, 2000 was).
    { "0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z" },
    { "0 0 29 2 *", "2096-03-01T00:00:00Z", "2104-02-29T00:00:00Z" },
    { "0 0 29 2 *", "1999-03-01T00:00:00Z", "2000-02-29T00:00:00Z" },
    { "59 23 28-29 FEB *", "2027-02-28T23:59:00Z", "2028-02-28T23:59:00Z" },
    -- Day-of-month and day-of-week both restricted: either matches.
    { "0 0 29 2 MON", "2026-03-01T00:00:00Z", "2027-02-01T00:00:00Z" },
    { "0 0 1,15 * WED", "2026-12-02T07:00:00Z", "2026-12-09T00:00:00Z" },
    { "0 0 13 * FRI", "2026-12-01T00:00:00Z", "2026-12-04T00:00:00Z" },
    -- One of them `*` (even `*/2`): both must match.
    { "0 0 * * MON-FRI", "2026-12-05T10:00:00Z", "2026-12-07T00:00:00Z" },
    { "0 0 13 * *", "2026-12-01T00:00:00Z", "2026-12-13T00:00:00Z" },
    { "0 0 */2 * FRI", "2026-12-01T00:00:00Z", "2026-12-11T00:00:00Z" },
    -- Weekday 7 and SUN are Sunday, as 0 is.
    { "0 0 * * 7", "2026-12-02T00:00:00Z", "2026-12-06T00:00:00Z" },
    { "0 0 * * sun", "2026-12-02T00:00:00Z", "2026-12-06T00:00:00Z" },
    { "0 0 * * 5-7", "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z" },
    -- Lists, ranges, steps and names.
    { "15,45 9-17/4 * * *", "2026-12-02T09:45:00Z", "2026-12-02T13:15:00Z" },
    { "0 0 1 JAN,jul *", "2026-01-01T00:00:00Z", "2026-07-01T00:00:00Z" },
    { "0 0 1 mar-may/2 *", "2026-03-01T00:00:00Z", "2026-05-01T00:00:00Z" },
    { "10/20 * * * *", "2026-12-02T07:30:00Z", "2026-12-02T07:50:00Z" },
    -- Six fields: seconds first.
    { "*/10 * * * * *", "2026-12-31T23:59:55Z", "2027-01-01T00:00:00Z" },
    { "* * * * * *", "2026-12-02T07:00:00Z", "2026-12-02T07:00:01Z" },
    { "30 0 12 * * *", "2026-12-02T12:00:30Z", "2026-12-03T12:00:30Z" },
    -- Macros.
    { "@hourly", "2026-12-02T07:00:00Z", "2026-12-02T08:00:00Z" },
    { "@yearly", "2026-12-02T07:00:00Z", "2027-01-01T00:00:00Z" },
    { "@weekly", "2026-12-02T07:00:00Z", "2026-12-06T00:00:00Z" },
    -- Fixed offsets: the fields are read in the zone's wall time.
    { "30 2 * * *", "2026-12-02T07:00:00Z", "2026-12-03T00:30:00Z", "+02:00" },
    { "0 0 1 * *", "2026-12-02T07:00:00Z", "2026-12-31T19:00:00Z", "+05:00" },
    { "0 22 * * *", "2026-12-02T07:00:00Z", "2026-12-03T03:30:00Z", "-05:30" },
}

describe("cron next fire times", function()
    for _, case in ipairs(NEXT) do
        local expr, after, want, tz = case[1], case[2], case[3], case[4]
        it(("'%s' after %s%s is %s"):format(expr, after, tz and (" in " .. tz) or "", want), function()
            local c = assert(cron.parse(expr))
            local off = assert(cron.offset(tz))
            assert.equals(want, cron.iso(cron.next(c, at(after), off)))
        end)
    end
end)

describe("cron latest fire", function()
    it("is the last fire in (after, upto]", function()
        local c = assert(cron.parse("0 * * * *"))
        assert.equals("2026-03-05T10:00:00Z",
                      cron.iso(cron.latest(c, at("2026-01-01T00:00:00Z"), at("2026-03-05T10:30:00Z"))))
        assert.equals("2026-03-05T10:00:00Z",
                      cron.iso(cron.latest(c, at("2026-01-01T00:00:00Z"), at("2026-03-05T10:00:00Z"))))
        local s = assert(cron.parse("* * * * * *"))
        assert.equals("2026-03-05T10:30:00Z",
                      cron.iso(cron.latest(s, at("2026-01-01T00:00:00Z"), at("2026-03-05T10:30:00Z"))))
    end)

    it("is nil when no fire falls in the interval", function()
        local c = assert(cron.parse("0 0 * * *"))
        assert.is_nil(cron.latest(c, at("2026-03-05T00:00:00Z"), at("2026-03-05T23:59:59Z")))
    end)
end)

-- { expression, a pattern its message must match }
local BAD = {
    { "", "has 0 fields" },
    { "* * * *", "has 4 fields; a cron expression has 5" },
    { "* * * * * * *", "has 7 fields" },
    { "60 * * * *", "minute: 60 is out of range 0%-59" },
    { "* 24 * * *", "hour: 24 is out of range 0%-23" },
    { "* * 0 * *", "day%-of%-month: 0 is out of range 1%-31" },
    { "* * 32 * *", "day%-of%-month: 32 is out of range" },
    { "* * * 13 *", "month: 13 is out of range 1%-12" },
    { "* * * * 8", "day%-of%-week: 8 is out of range 0%-7" },
    { "61 * * * * *", "second: 61 is out of range" },
    { "* * * FOO *", "month: 'FOO' is not a number or a month name" },
    { "* * * * FUNDAY", "day%-of%-week: 'FUNDAY' is not a number or a weekday name" },
    { "x * * * *", "minute: 'x' is not a number" },
    { "5-1 * * * *", "minute: the range 5%-1 runs backwards" },
    { "*/0 * * * *", "minute: the step in '%*/0' must be a whole number >= 1" },
    { "*/x * * * *", "the step in '%*/x'" },
    { "1,,2 * * * *", "minute: '1,,2' has an empty list item" },
    { "1- * * * *", "minute: '1%-' is not a range" },
    { "0 12 L * *", "day%-of%-month: 'L' is not a number" },
    { "0 0 30 2 *", "never fires: no chosen day of the month occurs in February" },
    { "0 0 31 4,6 *", "never fires: .*April, June" },
    { "@fortnightly", "unknown macro '@fortnightly'" },
}

describe("cron garbage", function()
    for _, case in ipairs(BAD) do
        it(("refuses '%s'"):format(case[1]), function()
            local c, err = cron.parse(case[1])
            assert.is_nil(c)
            assert.matches(case[2], err)
        end)
    end

    it("refuses what is not a string", function()
        local c, err = cron.parse(5)
        assert.is_nil(c)
        assert.matches("must be a string, got number", err)
    end)

    it("accepts UTC and fixed offsets and refuses named zones", function()
        assert.equals(0, cron.offset(nil))
        assert.equals(0, cron.offset("UTC"))
        assert.equals(7200, cron.offset("+02:00"))
        assert.equals(-19800, cron.offset("-05:30"))
        assert.equals(3600, cron.offset("+01"))
        local off, err = cron.offset("Europe/Paris")
        assert.is_nil(off)
        assert.matches("named zones are not supported", err)
        off, err = cron.offset("+15:00")
        assert.is_nil(off)
        assert.matches("out of range", err)
    end)
end)
