--- End-to-end specs of per-job logs with the real binary: tide run
-- --output writes the kept lines of failed jobs to DIR/logs/<id>.log
-- (every job's with --keep-logs), under %XX-encoded names; a log that
-- cannot be written ends the run with exit 3 and every result written;
-- tide serve answers GET /v1/jobs/ID/logs under its usual rules.
local proc = require "helpers.proc"
local serve = require "helpers.serve"
local core = require "tide.core"
local outputs = require "tide.outputs"

local json = core.json
local q = proc.shquote
local PIPE = "spec/fixtures/logs/logs.lua"

local function input(id, n, fail, extra)
    local t = { id = id, n = n, fail = fail or nil }
    for k, v in pairs(extra or {}) do t[k] = v end
    return json.encode(t) .. "\n"
end

local ls = proc.ls

describe("tide run --output and per-job logs", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("writes the log of failed jobs only, with time, task and attempt", function()
        local r = proc.tide({ "run", PIPE, "--output", dir .. "/out" },
                           input("good", 1) .. input("bad", 2, true))
        assert.equal(1, r.code, r.stderr)
        assert.same({ "bad.log" }, ls(dir .. "/out/logs"))
        local text = proc.slurp(dir .. "/out/logs/bad.log")
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ %[talk #1%] ctx%.log of\t2\n", text)
        assert.matches("Z %[talk #1%] print of\t2\n$", text)
        -- stderr still gets both, as before.
        assert.matches("%[bad talk%] ctx%.log of\t2", r.stderr)
        assert.matches("\nprint of\t2\n", r.stderr)
    end)

    it("writes every job's log with --keep-logs", function()
        local r = proc.tide({ "run", PIPE, "--output", dir .. "/out", "--keep-logs" },
                           input("good", 1) .. input("bad", 2, true))
        assert.equal(1, r.code, r.stderr)
        assert.same({ "bad.log", "good.log" }, ls(dir .. "/out/logs"))
        assert.matches("print of\t1\n$", proc.slurp(dir .. "/out/logs/good.log"))
    end)

    it("writes what a sync task printed on its worker thread to the job's log", function()
        local r = proc.tide({ "run", "spec/fixtures/pipelines/sync_print.lua", "--output", dir .. "/out",
                              "--keep-logs", "--threads", "2" }, "1\n2\n")
        assert.equal(0, r.code, r.stderr)
        assert.same({ "1.log", "2.log" }, ls(dir .. "/out/logs"))
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z %[say #1%] hello from\t2\n$",
                       proc.slurp(dir .. "/out/logs/2.log"))
        -- stderr still gets it, as it is printed.
        assert.matches("hello from\t1\n", r.stderr)
    end)

    it("refuses --keep-logs without --output", function()
        local r = proc.tide({ "run", PIPE, "--keep-logs" }, input("a", 1))
        assert.equal(2, r.code)
        assert.matches("%-%-keep%-logs needs %-%-output DIR", r.stderr)
    end)

    it("bounds the lines per job with --log-lines and says how many were dropped", function()
        local r = proc.tide({ "run", PIPE, "--output", dir .. "/out", "--log-lines", "1" },
                           input("bad", 2, true))
        assert.equal(1, r.code, r.stderr)
        local text = proc.slurp(dir .. "/out/logs/bad.log")
        assert.matches("^%(1 earlier lines were dropped: a job keeps its last 1%)\n", text)
        assert.matches("print of\t2\n$", text)
        assert.is_nil(text:find("ctx.log of", 1, true))
        r = proc.tide({ "run", PIPE, "--log-lines", "-1" }, "")
        assert.equal(2, r.code)
        assert.matches("%-%-log%-lines needs a whole number from 0", r.stderr)
    end)

    it("cuts a huge line at 4096 bytes with a marker", function()
        local r = proc.tide({ "run", PIPE, "--output", dir .. "/out" },
                           input("big", 1, true, { big = 100000 }))
        assert.equal(1, r.code, r.stderr)
        local text = proc.slurp(dir .. "/out/logs/big.log")
        local ys = text:match("(y+) %[truncated: 100000 bytes%]\n")
        assert.equal(4096, #ys)
    end)

    it("encodes ids with '/', '..', spaces, unicode and very long ids as safe file names", function()
        local long = ("long/"):rep(100)
        -- (The empty id is tide run's "no id": the line number stands in;
        -- spec/logs_spec.lua covers its name.)
        local ids = { "a/b", "..", "../../escape", "with space", "ünï/código", long }
        local text = ""
        for i, id in ipairs(ids) do text = text .. input(id, i, true) end
        local r = proc.tide({ "run", PIPE, "--output", dir .. "/out" }, text)
        assert.equal(1, r.code, r.stderr)
        local want = {}
        for _, id in ipairs(ids) do want[#want + 1] = outputs.log_name(id) end
        table.sort(want)
        assert.same(want, ls(dir .. "/out/logs"))
        -- Nothing escaped the logs directory, and each file is its job's.
        assert.same({ "failed.jsonl", "judge.jsonl", "logs", "rejects.jsonl" }, ls(dir .. "/out"))
        assert.same({ "out" }, ls(dir))
        for i, id in ipairs(ids) do
            local name = outputs.log_name(id)
            assert.is_true(#name <= 255)
            assert.is_nil(name:find("/", 1, true))
            assert.matches("print of\t" .. i .. "\n", proc.slurp(dir .. "/out/logs/" .. name))
        end
        assert.equal("a%2Fb.log", outputs.log_name("a/b"))
        assert.equal("%2E..log", outputs.log_name(".."))
        assert.equal("with%20space.log", outputs.log_name("with space"))
    end)

    it("exits 3 with a clear message when the logs cannot be written, and loses no result", function()
        os.execute("mkdir -p " .. q(dir .. "/out") .. " && touch " .. q(dir .. "/out/logs"))
        local text = ""
        for i = 1, 20 do text = text .. input("j" .. i, i, i % 2 == 0) end
        local r = proc.tide({ "run", PIPE, "--output", dir .. "/out" }, text)
        assert.equal(3, r.code, r.stderr)
        assert.matches("tide: cannot write the log of a job: .*logs", r.stderr)
        assert.matches("the results are complete, but the job logs are not", r.stderr)
        local done = proc.lines(proc.slurp(dir .. "/out/judge.jsonl"))
        local failed = proc.lines(proc.slurp(dir .. "/out/failed.jsonl"))
        assert.equal(10, #done)
        assert.equal(10, #failed)
    end)
end)

describe("GET /v1/jobs/ID/logs", function()
    it("answers a job's lines, 404 for unknown or garbage ids, 400 for too long ones", function()
        local s = serve.start("--log-lines 5", PIPE)
        local status, body = serve.http(s, "POST", "/v1/jobs?wait=5",
                                        '{"id":"x/y é","input":{"n":7,"fail":true}}')
        assert.equal(200, status, body)
        status, body = serve.http(s, "GET", "/v1/jobs/x%2Fy%20%C3%A9/logs")
        assert.equal(200, status, body)
        local l = json.decode(body)
        assert.equal("x/y é", l.id)
        assert.equal(0, l.dropped)
        assert.equal(2, #l.lines)
        assert.equal("ctx.log of\t7", l.lines[1].line)
        assert.equal("print of\t7", l.lines[2].line)
        assert.equal("talk", l.lines[1].task)
        assert.equal(1, l.lines[1].attempt)
        assert.is_true(math.abs(l.lines[1].time - os.time()) < 60)
        -- The dashboard's feed carries them in the failure entry.
        status, body = serve.http(s, "GET", "/v1/stats")
        assert.equal(200, status)
        local f = json.decode(body).failures[1]
        assert.equal("print of\t7", f.logs[2].line)
        assert.equal(404, (serve.http(s, "GET", "/v1/jobs/nope/logs")))
        assert.equal(404, (serve.http(s, "GET", "/v1/jobs/%00%ff%2e%2e/logs")))
        assert.equal(404, (serve.http(s, "GET", "/v1/jobs/..%2F..%2Fetc/logs")))
        assert.equal(400, (serve.http(s, "GET", "/v1/jobs/" .. ("z"):rep(5000) .. "/logs")))
        assert.equal(405, (serve.http(s, "POST", "/v1/jobs/x%2Fy%20%C3%A9/logs", "{}")))
        serve.stop(s)
    end)

    it("needs the bearer token with --token-file", function()
        local tok = os.tmpname()
        proc.write(tok, "s3cret\n")
        local s = serve.start("--token-file " .. q(tok), PIPE)
        local auth = { "Content-Type: application/json", "Authorization: Bearer s3cret" }
        local status = serve.http(s, "POST", "/v1/jobs?wait=5", '{"id":"t","input":{"n":1}}', auth)
        assert.equal(200, status)
        assert.equal(401, (serve.http(s, "GET", "/v1/jobs/t/logs")))
        assert.equal(401, (serve.http(s, "GET", "/v1/jobs/t/logs", nil, { "Authorization: Bearer wrong" })))
        local body
        status, body = serve.http(s, "GET", "/v1/jobs/t/logs", nil, auth)
        assert.equal(200, status)
        assert.equal("print of\t1", json.decode(body).lines[2].line)
        serve.stop(s)
        os.remove(tok)
    end)

    it("refuses a foreign Host without a token, as every endpoint does", function()
        local s = serve.start("", PIPE)
        assert.equal(201, (serve.http(s, "POST", "/v1/jobs", '{"id":"h","input":{"n":1}}')))
        assert.equal(403, (serve.http(s, "GET", "/v1/jobs/h/logs", nil, { "Host: evil.example" })))
        serve.stop(s)
    end)
end)
