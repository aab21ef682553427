--- End-to-end specs of p:schedule under `tide worker`: two workers of
-- one pipeline, against a real redis-server, submit each fire time once
-- between them, and a fleet stopped and started again makes up the fires
-- it missed by each schedule's catchup policy, from the last fire kept in
-- Redis.
local proc = require "helpers.proc"
local rs = require "helpers.redis"
local socket = require "socket"

local q = proc.shquote

local PIPE = "spec/fixtures/pipelines/ticks.lua"

-- Starts `tide worker` in the background; returns its pid.
local function start_worker(url, dir, name)
    return rs.start_worker(url, PIPE, dir .. "/" .. name .. ".err", "--lease 2",
                           { env = "TICKS_OUT=" .. q(dir .. "/ticks"), append = true })
end

local stop_workers = rs.stop_workers

-- The runs of one schedule in the ticks file: a list of { t, late } in
-- file order.
local function runs(dir, name)
    local out = {}
    for line in (proc.slurp(dir .. "/ticks") or ""):gmatch("([^\n]*)\n") do
        local s, t, late = line:match("^(%a+) (%d+) (%a+)$")
        assert(s, "a garbled line: " .. line)
        if s == name then out[#out + 1] = { t = tonumber(t), late = late == "true" } end
    end
    return out
end

-- The fire times of one schedule still in the jobs stream (submitted,
-- not run: the workers stopped before taking them).
local function waiting(server, name)
    local out = {}
    for id in server:cli("XRANGE", "tide:{ticks}:jobs", "-", "+"):gmatch(name .. "@(%S+)") do
        out[#out + 1] = id
    end
    return out
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end


describe("p:schedule under tide worker with Redis", function()
    local server, dir

    before_each(function()
        server = rs.start()
        dir = proc.tmpdir()
    end)
    after_each(function()
        server:stop()
        proc.rmrf(dir)
    end)

    it("two workers submit and run each fire once; a fleet started again makes up what it missed", function()
        local pids = { start_worker(server.url, dir, "a"), start_worker(server.url, dir, "b") }
        socket.sleep(4)
        stop_workers(pids)
        local first = runs(dir, "every")
        local stopped_at = server:cli("GET", "tide:{ticks}:schedule:every")
        assert.truthy(tonumber(stopped_at), "no last fire kept in Redis: " .. stopped_at)
        socket.sleep(2.5) -- downtime: at least two fires are missed
        pids = { start_worker(server.url, dir, "c"), start_worker(server.url, dir, "d") }
        socket.sleep(3)
        stop_workers(pids)

        -- "every" (catchup = "all"): the fire times run plus those still
        -- waiting in the stream are every second from the first to the
        -- last fire kept in Redis, each exactly once, across the downtime.
        local all, seen, late = runs(dir, "every"), {}, 0
        assert.is_true(#first >= 2, "the first fleet ran " .. #first .. " fires in 4 s")
        local lo, hi = math.huge, tonumber(server:cli("GET", "tide:{ticks}:schedule:every"))
        for _, r in ipairs(all) do
            assert.is_nil(seen[iso(r.t)], "fire " .. iso(r.t) .. " ran twice")
            seen[iso(r.t)] = true
            lo = math.min(lo, r.t)
            if r.late then late = late + 1 end
        end
        for _, id in ipairs(waiting(server, "every")) do
            assert.is_nil(seen[id], "fire " .. id .. " ran and is still waiting")
            seen[id] = true
        end
        for t = lo, hi do assert.truthy(seen[iso(t)], "fire " .. iso(t) .. " was never submitted") end
        local n = 0
        for _ in pairs(seen) do n = n + 1 end
        assert.equal(hi - lo + 1, n)
        assert.is_true(hi - lo >= 8, "fires from " .. iso(lo) .. " to " .. iso(hi))
        assert.is_true(late >= 2, late .. " fires were made up after the downtime")

        -- "latest": each fire once; of the missed ones only the latest
        -- (made up by each worker that started at a different second: at
        -- most two), so the downtime leaves a gap.
        local lseen, llate, gap = {}, 0, false
        local lat = runs(dir, "latest")
        table.sort(lat, function(x, y) return x.t < y.t end)
        for i, r in ipairs(lat) do
            assert.is_nil(lseen[r.t], "fire " .. iso(r.t) .. " of 'latest' ran twice")
            lseen[r.t] = true
            if r.late then llate = llate + 1 end
            if i > 1 and r.t - lat[i - 1].t > 1 then gap = true end
        end
        assert.is_true(llate >= 1 and llate <= 2, llate .. " late fires of 'latest'")
        assert.is_true(gap, "'latest' made up every missed fire")

        -- Each result went once to the schedule's result stream.
        local ids = {}
        for id in server:cli("XRANGE", "tide:{ticks}:res:schedule:every", "-", "+"):gmatch("every@(%S+)") do
            assert.is_nil(ids[id], "two results for " .. id)
            ids[id] = true
        end
        assert.truthy(next(ids))
        local err = proc.slurp(dir .. "/a.err")
        assert.matches("schedule 'every' (* * * * * *, UTC, catchup all): next fire at ", err, 1, true)
        assert.matches("tide: schedule 'broken': the fire at %d+%-%d+%-%d+T[%d:]+Z is skipped: its function "
                       .. "failed: [^\n]*no input today", err)
        assert.equal("", server:cli("XRANGE", "tide:{ticks}:res:schedule:broken", "-", "+"))
    end)
end)
