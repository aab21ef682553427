--- End-to-end specs of p:schedule under `tide serve`: a schedule firing
-- every second submits jobs with ids "<name>@<ISO time>" and their
-- results, a function returning nil skips its fire; after downtime with
-- --journal, catchup = "all" makes up each missed fire, "latest" one and
-- "none" none; /v1/stats and the dashboard show the next fire times (in
-- a named zone too); a bad schedule or time zone stops the server from
-- starting, naming the line.
local proc = require "helpers.proc"
local serve = require "helpers.serve"
local cron = require "tide.cron"
local core = require "tide.core"

local json = core.json

-- The pipeline of these specs: each second's fire submits { t = now,
-- late = fire.late }, except the seconds that SKIP_EVEN makes even; the
-- task doubles t. CATCHUP comes from the environment so that the file's
-- text (and the journal's hash of it) stays the same across restarts.
local PIPELINE = [[
local tide = require "tide"
local p = tide.pipeline "ticks"
p:task("double", function(x) return { t = x.t, twice = x.t * 2, late = x.late } end)
p:schedule("* * * * * *", { name = "tick", catchup = os.getenv("CATCHUP") or "none" },
    function(now, fire)
        if os.getenv("SKIP_EVEN") and now % 2 == 0 then return nil end
        return { t = now, late = fire.late }
    end)
p:schedule("0 0 1 1 *", { name = "new-year", tz = "+02:00" }, function() return {} end)
p:schedule("0 0 1 1 *", { name = "berlin", tz = "Europe/Berlin" }, function() return {} end)
return p
]]


local function stats(s)
    local code, body = serve.http(s, "GET", "/v1/stats")
    assert.equal(200, code, body)
    local st = json.decode(body)
    local by = {}
    for _, sc in ipairs(st.schedules) do by[sc.name] = sc end
    return st, by
end


local function unix(iso)
    local y, m, d, h, mi, s = iso:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
    return cron.days_from_civil(tonumber(y), tonumber(m), tonumber(d)) * 86400 + h * 3600 + mi * 60 + s
end


-- Polls /v1/stats until the tick schedule has dealt with `n` fires after
-- it started (at most 10 s); returns its entry.
local function wait_fires(s, n)
    local tick
    for _ = 1, 200 do
        tick = select(2, stats(s)).tick
        if tick.submitted + tick.skipped >= n then return tick end
        os.execute("sleep 0.05")
    end
    error("the schedule did not fire " .. n .. " times within 10 s: " .. json.encode(tick))
end


-- The status of job id (nil: 404).
local function status(s, id)
    local code, body = serve.http(s, "GET", "/v1/jobs/" .. id)
    if code == 404 then return nil end
    assert.equal(200, code, body)
    return json.decode(body).status
end


describe("tide serve with a schedule", function()
    local dir
    before_each(function()
        dir = proc.tmpdir()
        proc.write(dir .. "/ticks.lua", PIPELINE)
    end)
    after_each(function() proc.rmrf(dir) end)

    it("submits each fire as <name>@<ISO time> with its result, and skips a nil", function()
        local s = serve.start("", dir .. "/ticks.lua", { SKIP_EVEN = "1" })
        local ok, err = pcall(function()
            local tick = wait_fires(s, 4)
            local last = unix(tick.last)
            local seen_done, seen_skip = 0, 0
            for t = last - 3, last do
                local id = "tick@" .. cron.iso(t)
                if t % 2 == 0 then
                    assert.is_nil(status(s, id), id .. " was skipped by its nil")
                    seen_skip = seen_skip + 1
                else
                    local code, body = serve.http(s, "GET", "/v1/jobs/" .. id .. "/result?wait=5")
                    assert.equal(200, code, body)
                    local rec = json.decode(body)
                    assert.equal(id, rec.id)
                    assert.equal("done", rec.status)
                    assert.same({ t = t, twice = 2 * t, late = false }, rec.output)
                    seen_done = seen_done + 1
                end
            end
            assert.equal(2, seen_done)
            assert.equal(2, seen_skip)
            -- The fire's id is the job's: submitting it again is refused.
            local code = serve.http(s, "POST", "/v1/jobs",
                                    json.encode({ id = "tick@" .. cron.iso(last - (last % 2 == 0 and 1 or 0)),
                                                  input = { t = 1 } }))
            assert.equal(409, code)
        end)
        local text = serve.stop(s)
        assert(ok, tostring(err) .. "\n" .. tostring(text))
        assert.matches("schedule 'tick' %(%* %* %* %* %* %*, UTC, catchup none%): next fire at", text)
    end)

    it("shows each schedule's next fire time in /v1/stats and on the dashboard", function()
        local s = serve.start("", dir .. "/ticks.lua")
        local ok, err = pcall(function()
            local before = os.time()
            local _, by = stats(s)
            -- Every second: the next fire is at most a second away.
            assert.is_true(by.tick.next_in <= 1.01)
            assert.is_true(unix(by.tick.next) >= before)
            assert.equal("* * * * * *", by.tick.expr)
            assert.equal("UTC", by.tick.tz)
            -- New year at +02:00 is 22:00 UTC on 31 December.
            local ny = by["new-year"]
            assert.equal("+02:00", ny.tz)
            assert.matches("^%d%d%d%d%-12%-31T22:00:00Z$", ny.next)
            assert.near(unix(ny.next) - os.time(), ny.next_in, 2)
            assert.equal(json.null, ny.last)
            -- In Berlin (CET, +01:00 in winter) it is 23:00 UTC.
            assert.equal("Europe/Berlin", by.berlin.tz)
            assert.matches("^%d%d%d%d%-12%-31T23:00:00Z$", by.berlin.next)
            local code, page = serve.http(s, "GET", "/")
            assert.equal(200, code)
            assert.matches('id="schedules"', page, 1, true)
        end)
        local text = serve.stop(s)
        assert(ok, tostring(err) .. "\n" .. tostring(text))
    end)

    -- Runs the server with --journal until it made a fire, stops it for
    -- 3 s, and starts it again with the same journal. Returns the seconds
    -- between the first run's last fire and the second run's first regular
    -- one, split into those made up (their output says late) and those
    -- with no job, and the second run's log.
    local function downtime(catchup)
        local env = { CATCHUP = catchup }
        local extra = "--journal " .. proc.shquote(dir .. "/j.db")
        local s = serve.start(extra, dir .. "/ticks.lua", env)
        wait_fires(s, 1)
        serve.stop(s)
        os.execute("sleep 3")
        s = serve.start(extra, dir .. "/ticks.lua", env)
        local made_up, missing, text = {}, {}, ""
        local ok, err = pcall(function()
            text = proc.slurp(s.err) or ""
            local first = unix(assert(text:match("schedule 'tick' .-next fire at (%S+)")))
            -- Walk back from the first regular fire to the first run's last
            -- one (a job whose input was not late).
            for t = first - 1, first - 60, -1 do
                local id = "tick@" .. cron.iso(t)
                if not status(s, id) then
                    table.insert(missing, 1, t)
                else
                    local code, body = serve.http(s, "GET", "/v1/jobs/" .. id .. "/result?wait=5")
                    assert.equal(200, code, body)
                    local out = json.decode(body).output
                    assert.equal(t, out.t)
                    if not out.late then return end
                    table.insert(made_up, 1, t)
                end
            end
            error("no fire of the first run within 60 s")
        end)
        text = text .. (serve.stop(s) or "")
        assert(ok, tostring(err) .. "\n" .. text)
        return made_up, missing, text
    end

    it("makes up every missed fire with catchup = \"all\" and a journal", function()
        local made_up, missing, text = downtime("all")
        assert.same({}, missing)
        -- Three seconds down: at least two fires missed (the stop itself
        -- takes a moment), and each is made up once, in order.
        assert.is_true(#made_up >= 2, text)
    end)

    it("makes up only the last missed fire with catchup = \"latest\"", function()
        local made_up, missing, text = downtime("latest")
        assert.equal(1, #made_up, text)
        assert.is_true(#missing >= 1, text)
        -- The one made up is the latest: every missed second is before it.
        for _, t in ipairs(missing) do assert.is_true(t < made_up[1]) end
    end)

    it("makes up nothing with catchup = \"none\" and says so", function()
        local made_up, missing, text = downtime("none")
        assert.same({}, made_up)
        assert.is_true(#missing >= 2, text)
        assert.matches("schedule 'tick': the fires missed since %S+ are skipped %(catchup = \"none\"%)", text)
    end)

    it("says that catch-up needs a journal", function()
        local s = serve.start("", dir .. "/ticks.lua", { CATCHUP = "all" })
        local text = serve.stop(s)
        assert.matches("schedule 'tick': catchup = \"all\" needs %-%-journal", text)
    end)

    it("refuses to start with a bad schedule, naming its line", function()
        proc.write(dir .. "/bad.lua", 'local p = require("tide").pipeline "b"\n'
                   .. 'p:task("t", function(x) return x end)\n'
                   .. 'p:schedule("*/5 * * *", function() return 1 end)\nreturn p\n')
        local r = proc.tide({ "serve", dir .. "/bad.lua", "--listen", "127.0.0.1:0" })
        assert.equal(2, r.code, r.stderr)
        assert.matches("bad%.lua:3: p:schedule: '%*/5 %* %* %*' has 4 fields", r.stderr)
    end)

    it("refuses a time zone the tz database does not have, or no tz database", function()
        proc.write(dir .. "/zone.lua", 'local p = require("tide").pipeline "z"\n'
                   .. 'p:task("t", function(x) return x end)\n'
                   .. 'p:schedule("0 9 * * *", { tz = os.getenv("ZONE") }, function() return 1 end)\nreturn p\n')
        local r = proc.tide({ "serve", dir .. "/zone.lua", "--listen", "127.0.0.1:0" }, nil,
                            { ZONE = "Mars/Olympus_Mons" })
        assert.equal(2, r.code, r.stderr)
        assert.matches("zone.lua:3: p:schedule: tz 'Mars/Olympus_Mons' is not a known time zone (no file "
                       .. "/usr/share/zoneinfo/Mars/Olympus_Mons)", r.stderr, 1, true)
        r = proc.tide({ "serve", dir .. "/zone.lua", "--listen", "127.0.0.1:0" }, nil,
                      { ZONE = "Europe/Berlin", TZDIR = dir .. "/no-tzdata" })
        assert.equal(2, r.code, r.stderr)
        assert.matches("zone.lua:3: p:schedule: tz 'Europe/Berlin' needs the tz database in " .. dir
                       .. "/no-tzdata, which is missing (Debian package tzdata)", r.stderr, 1, true)
        r = proc.tide({ "serve", dir .. "/zone.lua", "--listen", "127.0.0.1:0" }, nil,
                      { ZONE = "../../etc/passwd" })
        assert.equal(2, r.code, r.stderr)
        assert.matches("tz '../../etc/passwd' is not a time zone name", r.stderr, 1, true)
    end)
end)
