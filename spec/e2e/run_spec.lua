-- End-to-end specs of `tide run`: the real binary, real files and signals.
local proc = require "helpers.proc"
local json = require("tide.core").json

local function results(stdout)
    local by = {}
    for _, l in ipairs(proc.lines(stdout)) do
        local r = assert(json.decode(l), "not JSON: " .. l)
        by[r.id] = r
    end
    return by
end

describe("tide run", function()
    it("runs the quickstart example: done orders, one failed with its record", function()
        local r = proc.tide({ "run", "examples/quickstart.lua", "--input", "examples/data/quickstart.jsonl" })
        assert.equal(1, r.code)
        local by = results(r.stdout)
        assert.equal(8, #proc.lines(r.stdout))
        assert.equal("done", by["order-1"].status)
        assert.equal(19.25, by["order-1"].output.total)
        assert.equal(1, by["order-1"].output.retries)
        assert.equal("failed", by["order-5"].status)
        assert.equal("ETASK", by["order-5"].error.code)
        assert.equal("price", by["order-5"].error.task)
        assert.matches("quantity must be at least 1", by["order-5"].error.message)
        assert.matches("7 done, 1 failed", r.stderr)
    end)

    it("runs the log example over the bundled dpkg log", function()
        local r = proc.tide({ "run", "examples/logs.lua", "--input", "examples/data/dpkg.log.jsonl" })
        assert.equal(0, r.code)
        -- Recount the log lines of each chunk independently.
        local want = {}
        for l in io.lines("examples/data/dpkg.log.jsonl") do
            local v = json.decode(l)
            want[v.id] = #v.lines
        end
        local by = results(r.stdout)
        local n = 0
        for id, count in pairs(want) do
            n = n + 1
            assert.equal("done", by[id].status)
            assert.equal(count, by[id].output.lines)
        end
        assert.equal(n, #proc.lines(r.stdout))
    end)

    it("reads stdin, keeps stdout valid JSONL and reports malformed lines", function()
        local r = proc.tide({ "run", "spec/fixtures/e2e/inc.lua" },
            '1\n{"id":"x","v":2}\n\nnot json\n99\n')
        assert.equal(1, r.code)
        local by = results(r.stdout)
        assert.equal(2, by["1"].output)
        assert.equal(3, by["x"].output)
        assert.equal("ETASK", by["5"].error.code)
        assert.is_nil(by["4"])
        assert.matches("line 4: malformed JSON", r.stderr)
        assert.matches("stdout must stay clean", r.stderr)
        local r2 = proc.tide({ "run", "spec/fixtures/e2e/inc.lua", "--input", "-" }, "5\n")
        assert.equal(0, r2.code)
        assert.equal('{"id":"1","status":"done","output":6}\n', r2.stdout)
    end)

    it("writes --output files and re-runs failed.jsonl", function()
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local r = proc.tide({ "run", "spec/fixtures/e2e/inc.lua", "--output", dir },
            '1\n99\n{"id":"y","v":99}\n[oops\n')
        assert.equal(1, r.code)
        assert.equal("", r.stdout)
        assert.equal('{"id":"1","output":2}\n', proc.slurp(dir .. "/inc.jsonl"))
        local failed = proc.lines(proc.slurp(dir .. "/failed.jsonl"))
        assert.equal(2, #failed)
        local rec = json.decode(failed[1])
        assert.equal("ETASK", rec.error.code)
        assert.matches("stack traceback", rec.error.traceback)
        local rej = json.decode(proc.slurp(dir .. "/rejects.jsonl"))
        assert.equal(4, rej.line)
        assert.equal("[oops", rej.text)
        -- Re-running the failures runs exactly their inputs, with their ids.
        local again = proc.tide({ "run", "spec/fixtures/e2e/inc.lua", "--input", dir .. "/failed.jsonl" })
        local by = results(again.stdout)
        assert.equal("failed", by["2"].status)
        assert.equal("failed", by["y"].status)
        assert.equal(2, #proc.lines(again.stdout))
    end)

    it("exits 2 on bad pipelines, naming file:line", function()
        local r = proc.tide({ "run", "spec/fixtures/e2e/cycle.lua" }, "")
        assert.equal(2, r.code)
        assert.matches("spec/fixtures/e2e/cycle.lua:%d: pipeline 'cycle': cycle: ", r.stderr)
        r = proc.tide({ "run", "spec/fixtures/e2e/badopt.lua" }, "")
        assert.equal(2, r.code)
        assert.matches("badopt.lua:3: p:task: task 'a': timeout must be", r.stderr)
        r = proc.tide({ "run", "spec/fixtures/e2e/notpipe.lua" }, "")
        assert.equal(2, r.code)
        assert.matches("must return a pipeline", r.stderr)
        r = proc.tide({ "run", "spec/fixtures/e2e/missing.lua" }, "")
        assert.equal(2, r.code)
        assert.matches("missing.lua", r.stderr)
    end)

    it("exits 2 on usage errors, 3 on an unreadable input, 0 for version and help", function()
        assert.equal(2, proc.tide({ "run" }).code)
        assert.equal(2, proc.tide({ "run", "x.lua", "--bogus" }).code)
        assert.equal(2, proc.tide({ "run", "spec/fixtures/e2e/inc.lua", "--concurrency", "zero" }).code)
        assert.equal(2, proc.tide({ "frobnicate" }).code)
        local r = proc.tide({ "run", "spec/fixtures/e2e/inc.lua", "--input", "/nonexistent/in.jsonl" })
        assert.equal(3, r.code)
        assert.matches("no such file", r.stderr)
        local v = proc.tide({ "version" })
        assert.equal(0, v.code)
        assert.matches("^tide %d+%.%d+%.%d+", v.stdout)
        assert.equal(0, proc.tide({ "--help" }).code)
    end)

    it("keeps going with --concurrency 2 over many inputs (backpressure)", function()
        local lines = {}
        for i = 1, 3000 do lines[i] = tostring(i % 50) end
        local r = proc.tide({ "run", "spec/fixtures/e2e/inc.lua", "--concurrency", "2" },
            table.concat(lines, "\n") .. "\n")
        assert.equal(0, r.code)
        assert.equal(3000, #proc.lines(r.stdout))
    end)

    it("fails a sleeping task with ETIMEDOUT under --task-timeout", function()
        local r = proc.tide({ "run", "spec/fixtures/e2e/sleepy.lua", "--task-timeout", "0.05" }, "1\n3\n")
        assert.equal(1, r.code)
        local by = results(r.stdout)
        assert.equal(1, by["1"].output)
        assert.equal("ETIMEDOUT", by["2"].error.code)
    end)

    it("on SIGINT cancels what runs, writes what finished and exits 130", function()
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        proc.write(dir .. "/in.jsonl", "1\n2\n3\n4\n")
        local q = proc.shquote
        local cmd = proc.bin .. " run spec/fixtures/e2e/sleepy.lua --input " .. q(dir .. "/in.jsonl")
            .. " --output " .. q(dir .. "/out") .. " 2>/dev/null & pid=$!; sleep 0.5; kill -INT $pid; "
            .. "wait $pid; echo $?"
        local t0 = os.time()
        local h = io.popen("sh -c " .. q(cmd))
        local code = tonumber(h:read("*a"))
        h:close()
        assert.equal(130, code)
        assert.is_true(os.time() - t0 < 5)
        local done = proc.lines(proc.slurp(dir .. "/out/s.jsonl"))
        assert.equal(2, #done)
        local failed = proc.lines(proc.slurp(dir .. "/out/failed.jsonl"))
        assert.equal(2, #failed)
        assert.equal("ECANCELED", json.decode(failed[1]).error.code)
    end)
end)
