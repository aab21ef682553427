--- The log lines of jobs run by `tide worker` (ctx.log and print) travel
-- with their results through Redis: `tide run --redis --output DIR`
-- writes DIR/logs/ as a local run does, `GET /v1/jobs/ID/logs` of `tide
-- serve --redis` and `ex:logs(id)` of `tide.executor{ redis = URL }`
-- answer them, `--log-lines` bounds them, and a result whose logs field
-- is garbage loses nothing else.
local proc = require "helpers.proc"
local rs = require "helpers.redis"
local serve = require "helpers.serve"
local core = require "tide.core"
local rexec = require "tide.rexec"

local json = core.json

local PIPE = "spec/fixtures/pipelines/distributed.lua"

-- The lines of a log file without their timestamps.
local function lines_of(path)
    local text = proc.slurp(path)
    if not text then return nil end
    local out = {}
    for l in text:gmatch("[^\n]+") do out[#out + 1] = (l:gsub("^%S+ ", "")) end
    return out
end

local files_in = proc.ls

describe("job logs through Redis", function()
    local server, dir

    before_each(function()
        server = rs.start()
        dir = proc.tmpdir()
    end)
    after_each(function()
        server:stop()
        proc.rmrf(dir)
    end)

    local INPUT = '{"n":1,"say":"one"}\n{"n":2,"say":"two","fail":true}\n{"n":3}\n'

    it("tide run --redis --output writes DIR/logs as a local run does", function()
        local w = rs.start_worker(server.url, PIPE, dir .. "/w.err", "--lease 2")
        local r = proc.tide({ "run", PIPE, "--redis", server.url, "--output", dir .. "/remote" }, INPUT)
        local k = proc.tide({ "run", PIPE, "--redis", server.url, "--output", dir .. "/kept", "--keep-logs" },
                            INPUT)
        rs.stop_workers({ w })
        local l = proc.tide({ "run", PIPE, "--output", dir .. "/local" }, INPUT)
        assert.equal(1, r.code, r.stderr)
        assert.equal(1, l.code, l.stderr)
        assert.equal(1, k.code, k.stderr)
        -- Only the failed job's log, with the same lines as locally.
        assert.same({ "2.log" }, files_in(dir .. "/remote/logs"))
        assert.same({ "2.log" }, files_in(dir .. "/local/logs"))
        assert.same({ "[double #1] said\ttwo", "[double #1] logged two" }, lines_of(dir .. "/remote/logs/2.log"))
        assert.same(lines_of(dir .. "/local/logs/2.log"), lines_of(dir .. "/remote/logs/2.log"))
        -- --keep-logs: every job that kept lines (job 3 kept none).
        assert.same({ "1.log", "2.log" }, files_in(dir .. "/kept/logs"))
        assert.same({ "[double #1] said\tone", "[double #1] logged one" }, lines_of(dir .. "/kept/logs/1.log"))
        -- The worker also printed them on its stderr as they came.
        assert.matches("said\tone", proc.slurp(dir .. "/w.err"))
    end)

    it("--log-lines bounds what a worker commits; 0 commits none; garbage is exit 2", function()
        local w = rs.start_worker(server.url, PIPE, dir .. "/w.err", "--lease 2 --log-lines 1")
        local r = proc.tide({ "run", PIPE, "--redis", server.url, "--output", dir .. "/one" }, INPUT)
        rs.stop_workers({ w })
        assert.equal(1, r.code, r.stderr)
        local text = proc.slurp(dir .. "/one/logs/2.log")
        assert.matches("^%(1 earlier lines were dropped: a job keeps its last 1%)\n", text)
        assert.matches("logged two\n$", text)
        w = rs.start_worker(server.url, PIPE, dir .. "/w0.err", "--lease 2 --log-lines 0")
        r = proc.tide({ "run", PIPE, "--redis", server.url, "--output", dir .. "/none" }, INPUT)
        rs.stop_workers({ w })
        assert.equal(1, r.code, r.stderr)
        assert.same({}, files_in(dir .. "/none/logs"))
        assert.matches("failed", proc.slurp(dir .. "/none/failed.jsonl"))
        for _, bad in ipairs { "-1", "x", "1.5" } do
            local b = proc.tide({ "worker", PIPE, "--redis", server.url, "--log-lines", bad })
            assert.equal(2, b.code, bad)
            assert.matches("%-%-log%-lines needs a whole number", b.stderr)
        end
    end)

    it("GET /v1/jobs/ID/logs of tide serve --redis and ex:logs(id)", function()
        local w = rs.start_worker(server.url, PIPE, dir .. "/w.err", "--lease 2")
        local s = serve.start("--redis " .. server.url, PIPE)
        local hdr = { "Content-Type: application/json" }
        local st, text = serve.http(s, "POST", "/v1/jobs?wait=20", '{"id":"L1","input":{"n":5,"say":"five"}}', hdr)
        assert.equal(200, st, text)
        local lst, ltext = serve.http(s, "GET", "/v1/jobs/L1/logs")
        assert.equal(200, lst, ltext)
        local body = json.decode(ltext)
        assert.equal("L1", body.id)
        assert.equal(0, body.dropped)
        assert.equal(2, #body.lines)
        assert.equal("said\tfive", body.lines[1].line)
        assert.equal("double", body.lines[1].task)
        assert.equal(1, body.lines[1].attempt)
        assert.is_number(body.lines[1].time)
        assert.equal("logged five", body.lines[2].line)
        -- A job that logged nothing: no lines; an unknown one: 404.
        st = serve.http(s, "POST", "/v1/jobs?wait=20", '{"id":"L2","input":{"n":6}}', hdr)
        assert.equal(200, st)
        lst, ltext = serve.http(s, "GET", "/v1/jobs/L2/logs")
        assert.equal(200, lst)
        assert.same({}, json.decode(ltext).lines)
        assert.equal(404, (serve.http(s, "GET", "/v1/jobs/nope/logs")))
        serve.stop(s)

        local tide = require "tide"
        local p = assert(tide.pipeline_file(PIPE))
        local ex = assert(tide.executor { redis = server.url, pipeline = p })
        local l = assert(ex:logs("L1"))
        assert.equal("L1", l.id)
        assert.equal("logged five", l.lines[2].line)
        local none, rec = ex:logs("nope")
        assert.is_nil(none)
        assert.equal("ENOENT", rec.code)
        assert.has_error(function() ex:logs({}) end)
        -- A result whose logs field is not what a worker writes: no
        -- lines, and the result itself is still answered.
        server:cli("XADD", rexec.record_key("distributed", "G1"), "*", "state", "queued")
        server:cli("XADD", rexec.record_key("distributed", "G1"), "*", "id", "G1", "status", "done",
                   "value", '{"n":1}', "ran", "", "logs", "{not json")
        assert.same({}, assert(ex:logs("G1")).lines)
        assert.same({ n = 1 }, ex:result("G1", 5))
        server:cli("XADD", rexec.record_key("distributed", "G2"), "*", "state", "queued")
        server:cli("XADD", rexec.record_key("distributed", "G2"), "*", "id", "G2", "status", "done",
                   "value", '{"n":2}', "ran", "", "logs", '{"lines":[{"time":"x"}],"dropped":0}')
        assert.same({}, assert(ex:logs("G2")).lines)
        ex:close()
        rs.stop_workers({ w })
    end)
end)
