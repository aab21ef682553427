--- Log analysis: what dpkg did, day by day.
--
--   build/tide run examples/logs.lua --input examples/data/dpkg.log.jsonl
--
-- Each input line is one chunk of a dpkg log (here: one day, made by
-- examples/data/make-dpkg-jsonl.sh from this machine's /var/log/dpkg.log):
--   {"id":"2025-06-24","lines":["2025-06-24 14:36:25 upgrade libudev1:amd64 252.36-1~deb12u1 252.38-1~deb12u1", ...]}
-- `lines` fans the chunk out into one child context per log line, `parse`
-- turns a line into a record, and `summary` gathers the records of the
-- chunk (in line order) into one summary per chunk:
--   { first, last, lines, actions = { install = n, ... }, packages,
--     top = [{ package, events }] (5 busiest, ties by name),
--     by_hour = { ["14"] = n, ... }, by_arch = { amd64 = n, all = n },
--     upgrades = [{ package, from, to }],
--     removed = [package], unparsed = [{ line, error }] }
-- A line that is not a dpkg log line fails its `parse` attempt; the gather
-- collects that error (`errors = "collect"`) instead of failing the chunk,
-- so it shows up in `unparsed` with its line number within the chunk.
local tide = require "tide"

local json = tide.json
local sort, tonumber = table.sort, tonumber

local p = tide.pipeline "dpkg-log"

-- Actions followed by "package:arch version version".
local PACKAGE_ACTIONS = {
    install = true, upgrade = true, remove = true, purge = true,
    configure = true, trigproc = true,
}

p:task("lines", { map = true }, function(chunk)
    return chunk.lines
end)

-- "2025-06-24 14:36:29 install libgdbm6:amd64 <none> 1.23-3"
--   -> { time = "2025-06-24 14:36:29", hour = 14, action = "install",
--        package = "libgdbm6", arch = "amd64", from = "<none>", version = "1.23-3" }
-- "2025-06-24 14:36:25 startup archives unpack"
--   -> { time = ..., hour = 14, action = "startup", phase = "archives unpack" }
p:task("parse", { after = "lines" }, function(line, ctx)
    local time, hour, action, rest
    if type(line) == "string" then
        time, hour, action, rest = line:match("^(%d%d%d%d%-%d%d%-%d%d (%d%d):%d%d:%d%d) (%S+) ?(.*)$")
    end
    if not time then
        error(("line %d: not a dpkg log line: %s"):format(ctx.map_index, tostring(line)), 0)
    end
    local rec = { time = time, hour = tonumber(hour), action = action }
    if PACKAGE_ACTIONS[action] then
        local pkg, arch, v1, v2 = rest:match("^([^:%s]+):?(%S*) (%S+) (%S+)$")
        if not pkg then
            error(("line %d: bad %s line: %s"):format(ctx.map_index, action, line), 0)
        end
        rec.package = pkg
        if arch ~= "" then rec.arch = arch end
        -- install and upgrade log "old new"; the others "version <none>".
        if v2 == "<none>" then
            rec.version = v1
        else
            rec.from, rec.version = v1, v2
        end
    else
        rec.phase = rest
    end
    return rec
end)

p:task("summary", { after = "parse", gather = true, errors = "collect" }, function(records)
    local actions, by_hour, by_arch = json.object({}), json.object({}), json.object({})
    local events = {}
    local upgrades, removed, unparsed = json.array({}), json.array({}), json.array({})
    local first, last, npackages = nil, nil, 0
    for i, r in ipairs(records) do
        if tide.is_error(r) then
            unparsed[#unparsed + 1] = { line = i, error = r.message }
        else
            first = first or r.time
            last = r.time
            actions[r.action] = (actions[r.action] or 0) + 1
            local h = ("%02d"):format(r.hour)
            by_hour[h] = (by_hour[h] or 0) + 1
            if r.package then
                if r.arch then by_arch[r.arch] = (by_arch[r.arch] or 0) + 1 end
                if not events[r.package] then npackages = npackages + 1 end
                events[r.package] = (events[r.package] or 0) + 1
            end
            if r.action == "upgrade" then
                upgrades[#upgrades + 1] = { package = r.package, from = r.from, to = r.version }
            elseif r.action == "remove" or r.action == "purge" then
                removed[#removed + 1] = r.package
            end
        end
    end
    local ranked = {}
    for name, n in pairs(events) do ranked[#ranked + 1] = { package = name, events = n } end
    sort(ranked, function(a, b)
        if a.events ~= b.events then return a.events > b.events end
        return a.package < b.package
    end)
    local top = json.array({})
    for i = 1, math.min(5, #ranked) do top[i] = ranked[i] end
    return {
        first = first, last = last, lines = #records, actions = actions,
        packages = npackages, top = top, by_hour = by_hour, by_arch = by_arch,
        upgrades = upgrades, removed = removed, unparsed = unparsed,
    }
end)

return p
