--- Cron expressions for p:schedule: parsing and next fire times.
--
-- Debian packages no maintained cron-expression parser for C or Lua (only
-- Go, Perl and .NET ones), so this is a small one. It follows Vixie cron
-- (cronie) as crontab(5) describes it, with an optional leading seconds
-- field:
--   [sec] min hour day-of-month month day-of-week
-- each field `*`, a number, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`
-- (a to the field's end), or a list of those separated by commas. Months
-- and weekdays take English names (JAN..DEC, SUN..SAT, any case); weekday
-- 7 is Sunday as 0 is. The macros @yearly, @annually, @monthly, @weekly,
-- @daily, @midnight and @hourly stand for their usual five fields.
--
-- Day-of-month and day-of-week combine as cron has it: when both are
-- restricted (neither starts with `*`), a day matches if either matches;
-- otherwise both must (and the one that starts with `*` matches any day).
--
-- Times are Unix seconds; fields are read in the zone given as a fixed
-- offset from UTC in seconds (0: UTC) or as a named zone of the tz
-- database (tz.lua; next_in_zone says what happens when its clocks
-- change). Calendar arithmetic is done here (proleptic Gregorian), not
-- with os.date, so the process's TZ does not change the answers.
local floor, format, tonumber = math.floor, string.format, tonumber

local M = {}

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
                 jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }
local DAYS = { sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6 }
local MACROS = {
    ["@yearly"] = "0 0 1 1 *", ["@annually"] = "0 0 1 1 *", ["@monthly"] = "0 0 1 * *",
    ["@weekly"] = "0 0 * * 0", ["@daily"] = "0 0 * * *", ["@midnight"] = "0 0 * * *",
    ["@hourly"] = "0 * * * *",
}
-- The fields in order, with their bounds and the names they accept.
local FIELDS = {
    { name = "second", lo = 0, hi = 59 },
    { name = "minute", lo = 0, hi = 59 },
    { name = "hour", lo = 0, hi = 23 },
    { name = "day-of-month", lo = 1, hi = 31 },
    { name = "month", lo = 1, hi = 12, names = MONTHS },
    { name = "day-of-week", lo = 0, hi = 7, names = DAYS },
}
local MONTH_NAMES = { "January", "February", "March", "April", "May", "June", "July",
                      "August", "September", "October", "November", "December" }
-- The longest each month can be (February in a leap year).
local MAX_DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
-- How many years next() looks ahead before it gives up: a 29 February
-- that must also be a given weekday recurs within 28 years, so 400 (the
-- Gregorian cycle) holds every expression that fires at all.
local HORIZON_YEARS = 400


local function is_leap(y)
    return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
end


local function days_in(y, m)
    if m == 2 then return is_leap(y) and 29 or 28 end
    return MAX_DAYS[m]
end


-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm,
-- exact for any year).
local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end


-- The civil date of a day count since 1970-01-01.
local function civil_from_days(z)
    z = z + 719468
    local era = floor(z / 146097)
    local doe = z - era * 146097
    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
    local mp = floor((5 * doy + 2) / 153)
    local d = doy - floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then y = y + 1 end
    return y, m, d
end


-- One value of a field: a number or (for months and weekdays) a name.
local function value(text, f)
    local v = tonumber(text:match("^%d+$") or "")
    if not v and f.names then v = f.names[text:lower()] end
    if not v then
        return nil, format("%s: '%s' is not a number%s", f.name, text,
                           f.names and (" or a " .. (f.names == MONTHS and "month" or "weekday")
                                        .. " name") or "")
    end
    if v < f.lo or v > f.hi then
        return nil, format("%s: %d is out of range %d-%d", f.name, v, f.lo, f.hi)
    end
    return v
end


-- The set of values one field allows ({ [v] = true }), or nil and why.
local function field(text, f)
    local set = {}
    if text == "" then return nil, f.name .. " is empty" end
    for part in (text .. ","):gmatch("([^,]*),") do
        if part == "" then return nil, format("%s: '%s' has an empty list item", f.name, text) end
        local range, step = part:match("^([^/]*)/(.*)$")
        if not range then range = part end
        local lo, hi
        if range == "*" then
            lo, hi = f.lo, f.hi
        else
            local a, b = range:match("^([^-]+)-([^-]+)$")
            if a then
                local err
                lo, err = value(a, f)
                if not lo then return nil, err end
                hi, err = value(b, f)
                if not hi then return nil, err end
                if lo > hi then
                    return nil, format("%s: the range %s runs backwards", f.name, range)
                end
            else
                local err
                lo, err = value(range, f)
                if not lo then
                    if range:find("-", 1, true) then
                        return nil, format("%s: '%s' is not a range a-b", f.name, range)
                    end
                    return nil, err
                end
                -- `a/n` steps from a to the end of the field.
                hi = step and f.hi or lo
            end
        end
        local n = 1
        if step then
            n = tonumber(step:match("^%d+$") or "")
            if not n or n < 1 then
                return nil, format("%s: the step in '%s' must be a whole number >= 1", f.name, part)
            end
        end
        for v = lo, hi, n do set[v] = true end
    end
    return set
end


--- Parses a cron expression. Returns the schedule (a table that next()
-- takes), or nil and a message saying what is wrong.
function M.parse(expr)
    if type(expr) ~= "string" then
        return nil, "a cron expression must be a string, got " .. type(expr)
    end
    local text = expr:match("^%s*(.-)%s*$")
    if text:sub(1, 1) == "@" then
        local macro = MACROS[text:lower()]
        if not macro then
            return nil, format("unknown macro '%s' (@yearly, @annually, @monthly, @weekly, @daily, "
                               .. "@midnight or @hourly)", text)
        end
        text = macro
    end
    local words = {}
    for w in text:gmatch("%S+") do words[#words + 1] = w end
    if #words ~= 5 and #words ~= 6 then
        return nil, format("'%s' has %d fields; a cron expression has 5 (minute hour day-of-month "
                           .. "month day-of-week) or 6 (second first)", expr, #words)
    end
    if #words == 5 then table.insert(words, 1, "0") end
    local sets = {}
    for k, f in ipairs(FIELDS) do
        local set, err = field(words[k], f)
        if not set then return nil, err end
        sets[k] = set
    end
    -- Weekday 7 is Sunday, as 0 is.
    if sets[6][7] then sets[6][0], sets[6][7] = true, nil end
    local c = {
        expr = expr, sec = sets[1], min = sets[2], hour = sets[3], dom = sets[4], mon = sets[5],
        dow = sets[6],
        dom_star = words[4]:sub(1, 1) == "*", dow_star = words[6]:sub(1, 1) == "*",
        -- A wildcard schedule (its minute or hour starts with `*`) keeps
        -- firing by the wall clock through a daylight-saving change; a
        -- fixed-time one fires once for a skipped or repeated wall time
        -- (see next_in_zone).
        wild = words[2]:sub(1, 1) == "*" or words[3]:sub(1, 1) == "*",
    }
    -- A day-of-month that no chosen month has never fires (30 February),
    -- unless a weekday can fire instead (the OR rule).
    if c.dow_star or c.dom_star then
        local possible = false
        for m = 1, 12 do
            for d = 1, MAX_DAYS[m] do
                if c.mon[m] and c.dom[d] then possible = true end
            end
        end
        if not possible then
            local months = {}
            for m = 1, 12 do
                if c.mon[m] then months[#months + 1] = MONTH_NAMES[m] end
            end
            return nil, format("'%s' never fires: no chosen day of the month occurs in %s",
                               expr, table.concat(months, ", "))
        end
    end
    return c
end


local function day_matches(c, y, m, d)
    local dom = c.dom[d] == true
    local dow = c.dow[(days_from_civil(y, m, d) + 4) % 7] == true -- 1970-01-01 was a Thursday
    if c.dom_star or c.dow_star then return dom and dow end
    return dom or dow
end


-- The first fire time of c strictly after t at a fixed offset.
local function next_fixed(c, t, offset)
    local l = floor(t) + 1 + offset
    local days = floor(l / 86400)
    local rem = l - days * 86400
    local y, mo, d = civil_from_days(days)
    local h, mi, s = floor(rem / 3600), floor(rem % 3600 / 60), rem % 60
    local last_year = y + HORIZON_YEARS
    while y <= last_year do
        -- Carry what a step pushed past its field's end.
        if s > 59 then s, mi = 0, mi + 1 end
        if mi > 59 then mi, h = 0, h + 1 end
        if h > 23 then h, d = 0, d + 1 end
        if d > days_in(y, mo) then d, mo = 1, mo + 1 end
        if mo > 12 then mo, y = 1, y + 1 end
        if not c.mon[mo] then
            mo, d, h, mi, s = mo + 1, 1, 0, 0, 0
            if mo > 12 then mo, y = 1, y + 1 end
        elseif not day_matches(c, y, mo, d) then
            d, h, mi, s = d + 1, 0, 0, 0
        elseif not c.hour[h] then
            h, mi, s = h + 1, 0, 0
        elseif not c.min[mi] then
            mi, s = mi + 1, 0
        elseif not c.sec[s] then
            s = s + 1
        else
            return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset
        end
    end
    return nil
end


-- The first fire time of c strictly after t in a named zone (tz.lua).
-- The zone's time is cut into spans of one offset each; in a span the
-- fields are read at its offset. Across a daylight-saving change the
-- rules of cron(8) (Vixie cron, cronie) apply:
-- * clocks jump forward (a gap of wall times that never happen): a
--   fixed-time schedule (minute and hour not starting with `*`) whose
--   wall time falls in the gap fires once, at the change (so a daily
--   02:30 still runs that day); a wildcard one just goes on by the new
--   wall clock.
-- * clocks go back (wall times that happen twice): a fixed-time schedule
--   fires at the first occurrence only; a wildcard one fires in both.
local function next_in_zone(c, t, z)
    local x = floor(t) + 1 -- the first instant allowed
    local fixed = not c.wild
    local stop = x + HORIZON_YEARS * 31556952
    while x <= stop do
        local from, to, off, prev = z:segment(x)
        if fixed and prev and off > prev and x == from then
            -- A gap: the wall times [from + prev, from + off) are skipped.
            local m = next_fixed(c, from - 1, prev)
            if m and m < from + (off - prev) then return from end
        end
        local after = x - 1
        if fixed and prev and off < prev then
            -- A repeat: the wall times read in [from, from + prev - off)
            -- were fired at their first occurrence already.
            after = math.max(after, from + (prev - off) - 1)
        end
        local f = next_fixed(c, after, off)
        if f and (not to or f < to) then return f end
        if not to then return nil end
        x = to
    end
    return nil
end


--- The first fire time of schedule c strictly after Unix time t, with the
-- fields read in `zone`: a fixed offset in seconds east of UTC (default
-- 0) or a named zone (M.zone), or nil if there is none within
-- HORIZON_YEARS.
function M.next(c, t, zone)
    if type(zone) == "table" then return next_in_zone(c, t, zone) end
    return next_fixed(c, t, zone or 0)
end


--- The last fire time of c in (after, upto], or nil when there is none.
-- It looks back from `upto` in windows that double until one holds a fire,
-- so it costs about as much as the fires in the last window, not as all
-- the fires since `after`.
function M.latest(c, after, upto, zone)
    local w = 60
    while true do
        local from = math.max(after, upto - w)
        local f = M.next(c, from, zone)
        if f and f <= upto then
            local last = f
            while true do
                f = M.next(c, f, zone)
                if not f or f > upto then return last end
                last = f
            end
        end
        if from <= after then return nil end
        w = w * 2
    end
end


--- A fixed time zone option: nil or "UTC" (0), or an offset "+HH:MM",
-- "-HH:MM", "+HHMM" or "+HH". Returns the offset in seconds east of UTC,
-- or nil and why (M.zone also takes names of the tz database).
function M.offset(tz)
    if tz == nil or tz == "UTC" or tz == "Z" then return 0 end
    if type(tz) ~= "string" then return nil, "tz must be a string, got " .. type(tz) end
    local sign, hh, mm = tz:match("^([+-])(%d%d):?(%d?%d?)$")
    if not sign or (#mm ~= 0 and #mm ~= 2) then
        return nil, format("tz '%s' is not a fixed offset such as \"+02:00\"", tz)
    end
    hh, mm = tonumber(hh), tonumber(mm) or 0
    if hh > 14 or mm > 59 then return nil, format("tz '%s' is out of range (-14:00 to +14:00)", tz) end
    local off = (hh * 3600 + mm * 60) * (sign == "-" and -1 or 1)
    return off
end


--- A time zone option as next() takes it: nil, "UTC" or a fixed offset
-- (a number of seconds), or a name of the tz database ("Europe/Berlin",
-- a zone read by tz.lua). Returns it, or nil and why.
function M.zone(tz)
    if type(tz) ~= "string" or tz == "UTC" or tz == "Z" or tz:match("^[+-]") then return M.offset(tz) end
    return require("tide.tz").load(tz)
end


--- Unix time t as ISO 8601 in UTC ("2026-12-02T07:00:05Z").
function M.iso(t)
    t = floor(t)
    local days = floor(t / 86400)
    local rem = t - days * 86400
    local y, m, d = civil_from_days(days)
    return format("%04d-%02d-%02dT%02d:%02d:%02dZ", y, m, d, floor(rem / 3600), floor(rem % 3600 / 60),
                  rem % 60)
end


M.days_from_civil = days_from_civil
M.is_leap = is_leap

return M
