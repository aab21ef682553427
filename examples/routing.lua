--- Routing and rate limits: dpkg events sorted by kind, with a limited
-- "lookup" step for the package events.
--
--   build/tide run examples/routing.lua --input examples/data/dpkg.log.jsonl
--
-- The input is the same bundled dpkg log as examples/logs.lua, one day per
-- line: {"id":"2025-06-24","lines":[...]}. Each log line becomes a child
-- context; `kind` is a router that sends it down one of three branches:
--
--   package  install/upgrade/configure/trigproc events. It stands for a
--            call to a package service, which allows 2000 calls a second
--            (bursts of 50) and 8 at once: the `lookup` limiter enforces
--            that for every task that names it. The call itself is
--            simulated here by a 0.2 ms tide.sleep.
--   removal  remove/purge events.
--   other    everything else (startup, status lines).
--
-- `merge` joins the three branches: it runs once per line and receives only
-- the branch that was taken. `summary` gathers the day.
local tide = require "tide"

tide.limiter("lookup", { rate = 2000, burst = 50, concurrency = 8 })

local p = tide.pipeline "routing"

p:task("lines", { map = true }, function(day) return day.lines end)

p:task("parse", { after = "lines" }, function(line)
    local action, rest = line:match("^%S+ %S+ (%S+) ?(.*)$")
    return { action = action or "?", package = rest and rest:match("^([^:%s]+):") }
end)

local PACKAGE = { install = true, upgrade = true, configure = true, trigproc = true }
local REMOVAL = { remove = true, purge = true }

p:task("kind", { after = "parse", route = true }, function(ev)
    if PACKAGE[ev.action] and ev.package then return "package" end
    if REMOVAL[ev.action] then return "removal" end
    return "other"
end)

p:task("package", { after = "kind", limit = "lookup", retry = 2 }, function(ev)
    tide.sleep(0.0002) -- the simulated service call
    return { kind = "package", package = ev.package }
end)

p:task("removal", { after = "kind" }, function(ev)
    return { kind = "removal", package = ev.package }
end)

p:task("other", { after = "kind" }, function(ev)
    return { kind = "other", action = ev.action }
end)

p:task("merge", { after = { "package", "removal", "other" } }, function(input)
    -- Exactly one branch ran for this line.
    return input.package or input.removal or input.other
end)

p:task("summary", { after = "merge", gather = true }, function(events)
    local counts, packages, npackages = { package = 0, removal = 0, other = 0 }, {}, 0
    for _, ev in ipairs(events) do
        counts[ev.kind] = counts[ev.kind] + 1
        if ev.package and not packages[ev.package] then
            packages[ev.package] = true
            npackages = npackages + 1
        end
    end
    return { events = #events, by_kind = counts, packages = npackages }
end)

return p
