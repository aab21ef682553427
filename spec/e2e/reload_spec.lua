-- Hot reload in tide serve: POST /v1/admin/reload and SIGHUP load the
-- pipeline's file again (docs/http.md#hot-reload). Each spec writes its
-- pipeline files in a directory of its own and rewrites them in place.
local proc = require "helpers.proc"
local serve = require "helpers.serve"
local json = require("tide.core").json

local q = proc.shquote

-- A pipeline whose one async task answers its version tag (and the
-- parameter k): { n, sleep } -> { v, n * k }. The schedule is optional.
local function tagged(tag, schedule)
    return ([[
local tide = require "tide"
local p = tide.pipeline "reload"
local k = p:param("k", { default = 1 })
p:task("tag", function(x)
    tide.sleep(x.sleep or 0)
    return { v = %q, n = x.n * k }
end)
%s
return p
]]):format(tag, schedule and ('p:schedule("* * * * * *", { name = %q }, function() return nil end)'):format(schedule)
               or "")
end

-- Two sync tasks in a row, each answering the version tag: a job whose
-- first task runs while the file changes must run its second on the
-- version it started with, on a worker that had not loaded it yet.
local function sync_pair(tag)
    return ([[
local tide = require "tide"
local p = tide.pipeline "reload-sync"
p:task("first", { kind = "sync" }, function(x)
    os.execute("sleep " .. (x.sleep or 0))
    return %q
end)
p:task("second", { kind = "sync", after = "first" }, function(first)
    return first .. "+" .. %q
end)
return p
]]):format(tag, tag)
end

local function post(s, path, body, headers)
    local status, text = serve.http(s, "POST", path, body, headers)
    return status, text and json.decode(text)
end

local function get(s, path, headers)
    local status, text = serve.http(s, "GET", path, nil, headers)
    return status, text
end

describe("tide serve hot reload", function()
    local dir, s
    before_each(function() dir = proc.tmpdir() end)
    after_each(function()
        if s then serve.stop(s) end
        s = nil
        proc.rmrf(dir)
    end)

    it("POST /v1/admin/reload: new jobs run the new version, a running job finishes on its own", function()
        local file = dir .. "/p.lua"
        proc.write(file, tagged("v1"))
        s = serve.start("--param k=3", q(file))
        local _, first = post(s, "/v1/jobs", '{"id":"old","input":{"n":1,"sleep":0.8}}')
        local v1 = first.version
        assert.matches("^%x+$", v1)
        proc.write(file, tagged("v2"))
        local status, res = post(s, "/v1/admin/reload", "")
        assert.equal(200, status)
        assert.equal(v1, res.previous)
        assert.is_true(res.changed)
        assert.not_equal(v1, res.version)
        local _, new = post(s, "/v1/jobs?wait=5", '{"id":"new","input":{"n":2}}')
        -- The parameter keeps its value across the reload (k = 3).
        assert.same({ v = "v2", n = 6 }, new.output)
        assert.equal(res.version, new.version)
        local _, old = get(s, "/v1/jobs/old/result?wait=5")
        old = json.decode(old)
        assert.same({ v = "v1", n = 3 }, old.output)
        assert.equal(v1, old.version)
        local _, st = get(s, "/v1/jobs/old")
        assert.equal(v1, json.decode(st).version)
        local _, stats = get(s, "/v1/stats")
        stats = json.decode(stats)
        assert.equal(res.version, stats.version)
        assert.equal(2, #stats.versions)
        assert.same({ res.version, true, 1 }, { stats.versions[1].version, stats.versions[1].current,
                                                 stats.versions[1].done })
        assert.same({ v1, false, 1 }, { stats.versions[2].version, stats.versions[2].current,
                                         stats.versions[2].done })
        local _, metrics = get(s, "/metrics")
        assert.matches('tide_pipeline_version_info{pipeline="reload",version="' .. res.version .. '"} 1',
                       metrics, 1, true)
        assert.matches('tide_version_jobs_total{version="' .. v1 .. '"} 1', metrics, 1, true)
        assert.matches('tide_reloads_total{result="ok"} 1', metrics, 1, true)
    end)

    it("a file that fails to load leaves the old version serving and answers 422 with the error", function()
        local file = dir .. "/p.lua"
        proc.write(file, tagged("v1"))
        s = serve.start("", q(file))
        proc.write(file, tagged("v2") .. "\nthis is not lua(\n")
        local status, res = post(s, "/v1/admin/reload", "")
        assert.equal(422, status)
        assert.equal("ELOAD", res.error.code)
        assert.matches("p%.lua:%d+:", res.error.message)
        -- A file that loads but does not compile (a cycle) is refused too.
        proc.write(file, [[
local tide = require "tide"
local p = tide.pipeline "reload"
p:task("a", { after = "b" }, function(x) return x end)
p:task("b", { after = "a" }, function(x) return x end)
return p
]])
        status, res = post(s, "/v1/admin/reload", "")
        assert.equal(422, status)
        assert.matches("cycle", res.error.message)
        local _, job = post(s, "/v1/jobs?wait=5", '{"input":{"n":1}}')
        assert.same({ v = "v1", n = 1 }, job.output)
        local _, metrics = get(s, "/metrics")
        assert.matches('tide_reloads_total{result="failed"} 2', metrics, 1, true)
    end)

    it("SIGHUP reloads (a line on stderr for each outcome) and does not drain", function()
        local file = dir .. "/p.lua"
        proc.write(file, tagged("v1"))
        s = serve.start("", q(file))
        post(s, "/v1/jobs", '{"id":"h","input":{"n":5,"sleep":0.6}}')
        proc.write(file, tagged("v2"))
        os.execute("kill -HUP " .. s.pid)
        os.execute("sleep 0.3")
        local _, job = post(s, "/v1/jobs?wait=5", '{"input":{"n":1}}')
        assert.same({ v = "v2", n = 1 }, job.output)
        local _, old = get(s, "/v1/jobs/h/result?wait=5")
        assert.same({ v = "v1", n = 5 }, json.decode(old).output)
        proc.write(file, "error('broken on purpose')\n")
        os.execute("kill -HUP " .. s.pid)
        os.execute("sleep 0.3")
        _, job = post(s, "/v1/jobs?wait=5", '{"input":{"n":2}}')
        assert.same({ v = "v2", n = 2 }, job.output)
        local text = serve.stop(s)
        s = nil
        assert.matches("tide: reloaded 'reload': version %x+ %(was %x+%)", text)
        assert.matches("tide: reload failed, the old version serves on: [^\n]*broken on purpose", text)
        assert.not_matches("draining %(signal 1%)", text)
    end)

    it("a sync job running during a reload finishes on its version; new sync jobs use the new one", function()
        local file = dir .. "/p.lua"
        proc.write(file, sync_pair("v1"))
        s = serve.start("--threads 2", q(file))
        post(s, "/v1/jobs", '{"id":"during","input":{"sleep":0.8}}')
        os.execute("sleep 0.2")
        proc.write(file, sync_pair("v2"))
        assert.equal(200, (post(s, "/v1/admin/reload", "")))
        local _, new = post(s, "/v1/jobs?wait=5", '{"id":"after","input":{}}')
        assert.equal("v2+v2", new.output)
        local _, old = get(s, "/v1/jobs/during/result?wait=5")
        assert.equal("v1+v1", json.decode(old).output)
    end)

    it("the new file's schedules replace the old ones", function()
        local file = dir .. "/p.lua"
        proc.write(file, tagged("v1", "first"))
        s = serve.start("", q(file))
        local _, stats = get(s, "/v1/stats")
        assert.equal("first", json.decode(stats).schedules[1].name)
        proc.write(file, tagged("v2", "second"))
        assert.equal(200, (post(s, "/v1/admin/reload", "")))
        _, stats = get(s, "/v1/stats")
        local names = {}
        for i, sc in ipairs(json.decode(stats).schedules) do names[i] = sc.name end
        assert.same({ "second" }, names)
    end)

    it("is refused under --journal (409, and a line on SIGHUP): the journal holds one version", function()
        local file = dir .. "/p.lua"
        proc.write(file, tagged("v1"))
        s = serve.start("--journal " .. q(dir .. "/j.db"), q(file))
        proc.write(file, tagged("v2"))
        local status, res = post(s, "/v1/admin/reload", "")
        assert.equal(409, status)
        assert.matches("refused under %-%-journal", res.error.message)
        os.execute("kill -HUP " .. s.pid)
        os.execute("sleep 0.3")
        local _, job = post(s, "/v1/jobs?wait=5", '{"input":{"n":1}}')
        assert.same({ v = "v1", n = 1 }, job.output)
        local text = serve.stop(s)
        s = nil
        assert.matches("reload failed, the old version serves on: reload is refused under %-%-journal", text)
    end)

    it("needs the token when one is set, and a loopback Host without one", function()
        local file = dir .. "/p.lua"
        proc.write(file, tagged("v1"))
        proc.write(dir .. "/token", "sekrit\n")
        s = serve.start("--token-file " .. q(dir .. "/token"), q(file))
        local status, res = post(s, "/v1/admin/reload", "", { "Content-Type: application/json" })
        assert.equal(401, status)
        assert.equal("EAUTH", res.error.code)
        status = post(s, "/v1/admin/reload", "", { "Authorization: Bearer sekrit" })
        assert.equal(200, status)
        status = serve.http(s, "GET", "/v1/admin/reload", nil, { "Authorization: Bearer sekrit" })
        assert.equal(405, status)
        serve.stop(s)
        s = serve.start("", q(file))
        status, res = post(s, "/v1/admin/reload", "", { "Host: evil.example" })
        assert.equal(403, status)
        assert.equal("EPERM", res.error.code)
    end)

    it("under wrk load during ten reloads no request fails and every accepted job has a result", function()
        local a, b = dir .. "/a.lua", dir .. "/p.lua"
        proc.write(a, tagged("A"))
        proc.write(dir .. "/b.lua", tagged("B"))
        proc.write(b, tagged("A"))
        proc.write(dir .. "/wrk.lua", [[
wrk.method = "POST"
wrk.body = '{"input":{"n":1}}'
wrk.headers["Content-Type"] = "application/json"
]])
        s = serve.start("", q(b))
        -- wrk runs 5 s; meanwhile ten reloads alternate the two files.
        local h = io.popen(("env -u LD_PRELOAD wrk -t2 -c16 -d5s -s %s %s 2>&1")
            :format(q(dir .. "/wrk.lua"), q(s.url .. "/v1/jobs?wait=5")))
        local oks = 0
        for i = 1, 10 do
            os.execute("sleep 0.35")
            os.execute(("cp %s %s"):format(q(dir .. (i % 2 == 1 and "/b.lua" or "/a.lua")), q(b)))
            if post(s, "/v1/admin/reload", "") == 200 then oks = oks + 1 end
        end
        local out = h:read("*a")
        h:close()
        assert.equal(10, oks)
        local requests = tonumber(out:match("(%d+) requests in"))
        assert.is_true(requests ~= nil and requests > 0, out)
        assert.not_matches("Non%-2xx", out)
        assert.not_matches("Socket errors", out)
        local _, stats = get(s, "/v1/stats")
        stats = json.decode(stats)
        assert.equal(10, stats.reloads.ok)
        -- Every job wrk's requests submitted finished, and done.
        assert.is_true(stats.jobs.submitted >= requests)
        assert.same({ stats.jobs.submitted, 0, 0, 0 },
                    { stats.jobs.done, stats.jobs.failed, stats.jobs.cancelled, stats.jobs.in_flight })
        local total = 0
        for _, v in ipairs(stats.versions) do total = total + v.submitted end
        assert.equal(stats.jobs.submitted, total)
    end)
end)
