--- Named time zones for p:schedule, read from the system's tz database
-- (Debian's tzdata: /usr/share/zoneinfo, or $TZDIR as glibc has it).
--
-- A zone file is TZif (RFC 8536). Only version 2 and later is read: its
-- second, 64-bit data block gives the transitions (UTC instants) and the
-- UTC offset in force from each one; the footer, a POSIX TZ string such
-- as "CET-1CEST,M3.5.0,M10.5.0/3", gives the rule for every instant after
-- the last transition (Debian's files stop their table at 2037, or
-- earlier for "slim" files). No table of zones is kept here: a zone is
-- whatever file the database has under its name.
--
-- The one question cron.lua asks is zone:segment(x): the span of UTC
-- time [from, to) around instant x in which the offset stays the same,
-- that offset, and the offset just before the span.
local floor, format, byte, tonumber = math.floor, string.format, string.byte, tonumber

local M = {}

M.DIR = "/usr/share/zoneinfo"

local cache = {} -- name -> zone, per Lua state

local Zone = {}
Zone.__index = Zone


-- The calendar arithmetic is cron.lua's (cron.lua loads this module only
-- when a schedule names a zone, so the two do not load each other).
local cron = require "tide.cron"
local days_from_civil, is_leap = cron.days_from_civil, cron.is_leap

local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }


-- Big-endian integers of the file's text at byte position i (1-based).
local function u32(s, i)
    local a, b, c, d = byte(s, i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + d
end

local function i32(s, i)
    local v = u32(s, i)
    return v >= 2147483648 and v - 4294967296 or v
end

-- A 64-bit time: exact as a double for every time a zone file holds
-- (the earliest, -2^59, included).
local function i64(s, i)
    return i32(s, i) * 4294967296 + u32(s, i + 4)
end


-- ===== THE POSIX TZ STRING OF THE FOOTER =====

-- Parses "[+-]hh[:mm[:ss]]" at position i of s; returns seconds and the
-- next position, or nil. Hours may reach 167 (RFC 8536's extension, for
-- the transition times).
local function hms(s, i)
    local sign, h, rest, j = s:match("^([+-]?)(%d%d?%d?)([:%d]*)()", i)
    if not sign then return nil end
    local secs = tonumber(h) * 3600
    local m, sec = rest:match("^:(%d%d)(.*)$")
    if rest ~= "" then
        if not m then return nil end
        secs = secs + tonumber(m) * 60
        if sec ~= "" then
            local ss = sec:match("^:(%d%d)$")
            if not ss then return nil end
            secs = secs + tonumber(ss)
        end
    end
    if tonumber(h) > 167 then return nil end
    return sign == "-" and -secs or secs, j
end


-- A zone abbreviation: letters, or anything but '>' inside <...>.
local function abbr(s, i)
    local q = s:match("^<[^>]*>()", i)
    if q then return q end
    local j = s:match("^%a%a%a+()", i)
    return j
end


-- A rule date: Jn, n or Mm.w.d, with an optional /time (default 02:00).
local function rule_date(s, i)
    local d = {}
    local m, w, wd, j = s:match("^M(%d%d?)%.(%d)%.(%d)()", i)
    if m then
        d.kind, d.m, d.w, d.d = "M", tonumber(m), tonumber(w), tonumber(wd)
        if d.m < 1 or d.m > 12 or d.w < 1 or d.w > 5 or d.d > 6 then return nil end
    else
        local n
        n, j = s:match("^J(%d+)()", i)
        if n then
            d.kind, d.n = "J", tonumber(n)
            if d.n < 1 or d.n > 365 then return nil end
        else
            n, j = s:match("^(%d+)()", i)
            if not n then return nil end
            d.kind, d.n = "n", tonumber(n)
            if d.n > 365 then return nil end
        end
    end
    d.time = 7200
    if s:sub(j, j) == "/" then
        d.time, j = hms(s, j + 1)
        if not d.time then return nil end
    end
    return d, j
end


--- Parses a POSIX TZ string. Returns { std = offset east of UTC, dst =
-- offset or nil, start, stop (rule dates) }, or nil.
function M.parse_posix(s)
    local j = abbr(s, 1)
    if not j then return nil end
    local off
    off, j = hms(s, j)
    if not off then return nil end
    local r = { std = -off }
    if j > #s then return r end
    j = abbr(s, j)
    if not j then return nil end
    r.dst = r.std + 3600
    if j <= #s and s:sub(j, j) ~= "," then
        off, j = hms(s, j)
        if not off then return nil end
        r.dst = -off
    end
    if s:sub(j, j) ~= "," then
        -- A DST name without a rule: POSIX leaves the dates to the
        -- implementation; zone files never write one.
        return nil
    end
    r.start, j = rule_date(s, j + 1)
    if not r.start or s:sub(j, j) ~= "," then return nil end
    r.stop, j = rule_date(s, j + 1)
    if not r.stop or j <= #s then return nil end
    return r
end


-- Seconds from the start of year y (local midnight, 1 January) to rule
-- date d at its time.
local function rule_secs(d, y)
    local yday -- 0-based day of the year
    if d.kind == "J" then
        -- 1..365, 29 February never counted.
        yday = d.n - 1
        if is_leap(y) and d.n >= 60 then yday = yday + 1 end
    elseif d.kind == "n" then
        yday = d.n
    else
        -- The d-th weekday of week w of month m (w = 5: the last one).
        local first = days_from_civil(y, d.m, 1)
        local wd1 = (first + 4) % 7 -- 1970-01-01 was a Thursday
        local day = 1 + (d.d - wd1) % 7 + (d.w - 1) * 7
        local len = MDAYS[d.m] + ((d.m == 2 and is_leap(y)) and 1 or 0)
        while day > len do day = day - 7 end
        yday = first - days_from_civil(y, 1, 1) + day - 1
    end
    return yday * 86400 + d.time
end


-- The transitions of rule r in year y: two { at (UTC), offset after },
-- in time order. DST starts at a time given in standard local time and
-- ends at one given in daylight local time.
local function rule_transitions(r, y)
    local y0 = days_from_civil(y, 1, 1) * 86400
    local a = { at = y0 + rule_secs(r.start, y) - r.std, off = r.dst }
    local b = { at = y0 + rule_secs(r.stop, y) - r.dst, off = r.std }
    if a.at > b.at then a, b = b, a end
    return a, b
end


-- ===== ZONES =====

--- Reads a TZif file's text. Returns the zone, or nil and why.
function M.parse(text, name)
    local function bad(why) return nil, format("tz '%s': %s", name, why) end
    if #text < 44 or text:sub(1, 4) ~= "TZif" then return bad("not a TZif file") end
    local version = text:sub(5, 5)
    if version == "\0" then return bad("a version 1 TZif file (no 64-bit data) is not supported") end
    local function counts(at)
        return u32(text, at + 20), u32(text, at + 24), u32(text, at + 28), u32(text, at + 32),
               u32(text, at + 36), u32(text, at + 40)
    end
    local isut, isstd, leap, timecnt, typecnt, charcnt = counts(1)
    local v1 = timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut
    local h2 = 45 + v1
    if #text < h2 + 43 or text:sub(h2, h2 + 3) ~= "TZif" then return bad("its 64-bit header is missing") end
    isut, isstd, leap, timecnt, typecnt, charcnt = counts(h2)
    if leap > 0 then return bad("zones with leap seconds (right/...) are not supported") end
    if typecnt == 0 then return bad("it has no local time types") end
    local p = h2 + 44
    local need = timecnt * 9 + typecnt * 6 + charcnt + isstd + isut
    if #text < p + need - 1 then return bad("the file is cut short") end
    local times, idx, offs = {}, {}, {}
    for i = 1, timecnt do times[i] = i64(text, p + (i - 1) * 8) end
    p = p + timecnt * 8
    for i = 1, timecnt do idx[i] = byte(text, p + i - 1) end
    p = p + timecnt
    for i = 0, typecnt - 1 do offs[i] = i32(text, p + i * 6) end
    p = p + typecnt * 6 + charcnt + isstd + isut
    local z = setmetatable({ name = name, times = times, offs = {}, first = offs[0] }, Zone)
    for i = 1, timecnt do
        local off = offs[idx[i]]
        if off == nil then return bad("a transition names a local time type that does not exist") end
        if i > 1 and times[i] <= times[i - 1] then return bad("its transitions are out of order") end
        z.offs[i] = off
    end
    local footer = text:match("^\n([^\n]*)\n", p)
    if footer and footer ~= "" then
        z.rule = M.parse_posix(footer)
        if not z.rule then return bad("its TZ string '" .. footer .. "' cannot be read") end
    end
    return z
end


--- The zone of a tz database name ("Europe/Berlin"), read once per Lua
-- state. Returns the zone, or nil and a message that says what is wrong.
function M.load(name)
    local z = cache[name]
    if z then return z end
    if type(name) ~= "string" or not name:match("^[%w_+%-]+[%w_+%-/]*$") or name:find("..", 1, true)
       or name:find("//", 1, true) or name:sub(-1) == "/" then
        return nil, format("tz '%s' is not a time zone name (such as \"Europe/Berlin\") or a fixed offset "
                           .. "(such as \"+02:00\")", tostring(name))
    end
    local dir = os.getenv("TZDIR") or M.DIR
    local f = io.open(dir .. "/" .. name, "rb")
    if not f then
        local d = io.open(dir .. "/UTC", "rb")
        if d then d:close() end
        if not d then
            return nil, format("tz '%s' needs the tz database in %s, which is missing (Debian package "
                               .. "tzdata); or give a fixed offset such as \"+02:00\"", name, dir)
        end
        return nil, format("tz '%s' is not a known time zone (no file %s/%s); give a name of the tz "
                           .. "database such as \"Europe/Berlin\", or a fixed offset such as \"+02:00\"",
                           name, dir, name)
    end
    local text = f:read("*a")
    f:close()
    if not text then return nil, format("tz '%s': %s/%s cannot be read", name, dir, name) end
    local err
    z, err = M.parse(text, name)
    if not z then return nil, err end
    cache[name] = z
    return z
end


-- The transitions of the footer rule around year y, after instant after:
-- a list of { at, off } in time order.
local function rule_around(r, y, after)
    local out = {}
    for yy = y - 1, y + 1 do
        local a, b = rule_transitions(r, yy)
        if a.at > after then out[#out + 1] = a end
        if b.at > after then out[#out + 1] = b end
    end
    return out
end


--- The span around UTC instant x in which the offset stays the same.
-- Returns from (nil: since always), to (nil: for ever), the offset in the
-- span (seconds east of UTC) and the offset before it (nil when from is
-- nil).
function Zone:segment(x)
    local times, offs = self.times, self.offs
    local n = #times
    -- The last transition at or before x (binary search).
    local lo, hi = 0, n
    while lo < hi do
        local mid = floor((lo + hi + 1) / 2)
        if times[mid] <= x then lo = mid else hi = mid - 1 end
    end
    local i = lo
    if i < n then
        if i == 0 then return nil, times[1], self.first, nil end
        return times[i], times[i + 1], offs[i], i > 1 and offs[i - 1] or self.first
    end
    -- After the table: the footer's rule (or the last offset for ever).
    local r = self.rule
    local last_at = times[n]
    local last_off = n > 0 and offs[n] or self.first
    local prev_off = n > 1 and offs[n - 1] or (n == 1 and self.first or nil)
    if not r then return last_at, nil, last_off, prev_off end
    if not r.start then
        -- A zone without daylight time from its last transition on.
        return last_at, nil, r.std, prev_off
    end
    local y = 1970 + floor(x / 31556952)
    local list = rule_around(r, y, last_at or -math.huge)
    local from, off, prev = last_at, last_off, prev_off
    for _, t in ipairs(list) do
        if t.at > x then
            if t.off ~= off then return from, t.at, off, prev end
        elseif t.off ~= off then
            from, prev, off = t.at, off, t.off
        end
    end
    -- No change of offset within a year after x (cannot happen with a
    -- rule that has two dates; kept for safety): the span is open.
    return from, nil, off, prev
end


--- The offset (seconds east of UTC) in force at UTC instant x.
function Zone:offset_at(x)
    return select(3, self:segment(x))
end

return M
