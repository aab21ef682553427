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
    -- Named zones (the tz database). Europe/Berlin springs forward on
    -- 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST): a fixed-time
    -- schedule whose wall time is skipped fires once, at the change; a
    -- wildcard one goes on by the new wall clock.
    { "30 2 * * *", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z", "Europe/Berlin" },
    { "30 2 * * *", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "Europe/Berlin" },
    { "0 9 * * *", "2026-03-28T09:00:00Z", "2026-03-29T07:00:00Z", "Europe/Berlin" },
    { "*/30 * * * *", "2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "Europe/Berlin" },
    { "0 * * * *", "2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z", "Europe/Berlin" },
    -- It falls back on 2026-10-25 at 01:00 UTC (03:00 CEST -> 02:00 CET):
    -- a fixed-time schedule fires at the first 02:30 only, a wildcard
    -- one in both passes of the repeated hour.
    { "30 2 * * *", "2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z", "Europe/Berlin" },
    { "30 2 * * *", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "Europe/Berlin" },
    { "0 2 * * *", "2026-10-25T00:00:00Z", "2026-10-26T01:00:00Z", "Europe/Berlin" },
    { "*/30 * * * *", "2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z", "Europe/Berlin" },
    { "*/30 * * * *", "2026-10-25T01:00:00Z", "2026-10-25T01:30:00Z", "Europe/Berlin" },
    -- Past the zone file's table (2037): its TZ string's rule.
    { "30 2 * * SUN", "2099-03-20T00:00:00Z", "2099-03-22T01:30:00Z", "Europe/Berlin" },
    { "30 2 * * SUN", "2099-03-22T01:30:00Z", "2099-03-29T01:00:00Z", "Europe/Berlin" },
    -- America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC),
    -- 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC).
    { "30 2 * * *", "2026-03-07T12:00:00Z", "2026-03-08T07:00:00Z", "America/New_York" },
    { "30 1 * * *", "2026-10-31T12:00:00Z", "2026-11-01T05:30:00Z", "America/New_York" },
    { "30 1 * * *", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "America/New_York" },
    { "0 12 * * *", "2026-07-01T00:00:00Z", "2026-07-01T16:00:00Z", "America/New_York" },
    { "0 12 * * *", "2050-12-01T00:00:00Z", "2050-12-01T17:00:00Z", "America/New_York" },
    -- The southern hemisphere, a zone without daylight time, and a
    -- change at midnight (Santiago: 2026-09-06 00:00 -04 -> 01:00 -03).
    { "0 12 * * *", "2026-01-15T00:00:00Z", "2026-01-15T01:00:00Z", "Australia/Sydney" },
    { "0 12 * * *", "2026-07-15T00:00:00Z", "2026-07-15T02:00:00Z", "Australia/Sydney" },
    { "0 9 * * *", "2026-01-01T00:00:00Z", "2026-01-01T03:30:00Z", "Asia/Kolkata" },
    { "0 0 * * *", "2026-09-05T04:00:00Z", "2026-09-06T04:00:00Z", "America/Santiago" },
    { "0 0 * * *", "2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z", "America/Santiago" },
}

describe("cron next fire times", function()
    for _, case in ipairs(NEXT) do
        local expr, after, want, tz = case[1], case[2], case[3], case[4]
        it(("'%s' after %s%s is %s"):format(expr, after, tz and (" in " .. tz) or "", want), function()
            local c = assert(cron.parse(expr))
            local zone = assert(cron.zone(tz))
            assert.equals(want, cron.iso(cron.next(c, at(after), zone)))
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

    it("accepts UTC, fixed offsets and zones of the tz database, and refuses the rest", function()
        assert.equals(0, cron.zone(nil))
        assert.equals(0, cron.zone("UTC"))
        assert.equals(7200, cron.zone("+02:00"))
        assert.equals(-19800, cron.zone("-05:30"))
        assert.equals(3600, cron.zone("+01"))
        assert.equals("Europe/Paris", cron.zone("Europe/Paris").name)
        local off, err = cron.zone("+15:00")
        assert.is_nil(off)
        assert.matches("out of range", err)
        off, err = cron.zone("+2")
        assert.is_nil(off)
        assert.matches("tz '+2' is not a fixed offset such as \"+02:00\"", err, 1, true)
        off, err = cron.zone("Europe/Berln")
        assert.is_nil(off)
        assert.matches("tz 'Europe/Berln' is not a known time zone (no file /usr/share/zoneinfo/Europe/Berln); "
                       .. "give a name of the tz database such as \"Europe/Berlin\"", err, 1, true)
        for _, name in ipairs({ "../etc/passwd", "/etc/localtime", "Europe//Berlin", "Europe/", "a b", "" }) do
            off, err = cron.zone(name)
            assert.is_nil(off)
            assert.matches("is not a time zone name", err, 1, true)
        end
        off, err = cron.zone(5)
        assert.is_nil(off)
        assert.matches("tz must be a string, got number", err, 1, true)
    end)
end)


describe("tz zones", function()
    local tz = require "tide.tz"

    -- Unix times spread over 1902-2168, and the instants around every
    -- change of offset from 2030 to 2100 (past the files' tables, where the
    -- TZ string's rule applies): the offsets tz.lua reads must be those
    -- glibc's date(1) reads from the same files (seconds of old local mean
    -- times aside: %z shows whole minutes).
    it("gives the offsets date(1) gives, in zones with unusual rules too", function()
        local zones = { "Europe/Berlin", "America/New_York", "Australia/Sydney", "America/Santiago",
                        "America/Nuuk", "Australia/Lord_Howe", "Europe/Dublin", "Pacific/Chatham",
                        "Asia/Kolkata", "Asia/Tehran", "Africa/Casablanca", "Etc/GMT+5" }
        local rnd, n = 12345, 0
        local path = os.tmpname()
        for _, name in ipairs(zones) do
            local z = assert(tz.load(name))
            local ts = {}
            for _ = 1, 150 do
                rnd = (rnd * 1103515245 + 12345) % 2147483648
                ts[#ts + 1] = -2147483648 + rnd * 4
            end
            local x = at("2030-01-01T00:00:00Z")
            while x < at("2100-01-01T00:00:00Z") do
                local _, to = z:segment(x)
                if not to then break end
                ts[#ts + 1], ts[#ts + 2], ts[#ts + 3] = to - 1, to, to + 1
                x = to
            end
            local f = assert(io.open(path, "w"))
            for _, t in ipairs(ts) do f:write(string.format("@%d\n", t)) end
            f:close()
            local h = io.popen("TZ=" .. name .. " date -f " .. path .. " +%z")
            local i = 0
            for line in h:lines() do
                i = i + 1
                local sign, hh, mm = line:match("^([+-])(%d%d)(%d%d)$")
                local want = (tonumber(hh) * 3600 + tonumber(mm) * 60) * (sign == "-" and -1 or 1)
                local got = z:offset_at(ts[i])
                got = got >= 0 and got - got % 60 or -((-got) - (-got) % 60)
                assert.equals(want, got, name .. " at " .. ts[i])
            end
            h:close()
            assert.equals(#ts, i)
            n = n + i
        end
        os.remove(path)
        assert.is_true(n > 2000)
    end)

    it("reads POSIX TZ strings, and refuses files that are no TZif v2+", function()
        local r = tz.parse_posix("CET-1CEST,M3.5.0,M10.5.0/3")
        assert.same({ 3600, 7200, 7200, 10800 }, { r.std, r.dst, r.start.time, r.stop.time })
        -- Negative transition times (America/Nuuk's kind) and names in <>.
        r = tz.parse_posix("<-03>3<-02>,M3.5.0/-2,M10.5.0/-1")
        assert.same({ -10800, -7200, -7200, -3600 }, { r.std, r.dst, r.start.time, r.stop.time })
        r = tz.parse_posix("<+1030>-10:30<+11>-11,M10.1.0,M4.1.0")
        assert.same({ 37800, 39600 }, { r.std, r.dst })
        assert.equals(19800, tz.parse_posix("IST-5:30").std)
        assert.is_nil(tz.parse_posix("CET-1CEST"))
        assert.is_nil(tz.parse_posix("nonsense"))
        assert.is_nil(tz.parse_posix("CET-1CEST,M13.5.0,M10.5.0"))
        local z, err = tz.parse("TZif\0" .. string.rep("\0", 60), "X")
        assert.is_nil(z)
        assert.matches("version 1 TZif file", err, 1, true)
        z, err = tz.parse("not a zone", "X")
        assert.is_nil(z)
        assert.matches("tz 'X': not a TZif file", err, 1, true)
        local f = assert(io.open("/usr/share/zoneinfo/Europe/Berlin", "rb"))
        local text = f:read("*a")
        f:close()
        z, err = tz.parse(text:sub(1, 400), "cut")
        assert.is_nil(z)
        assert.matches("tz 'cut': ", err, 1, true)
    end)
end)
