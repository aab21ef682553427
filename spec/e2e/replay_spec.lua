-- End-to-end specs of replay and tracing with the real binary: failure
-- records that keep their input (failed.jsonl, stdout, the HTTP result,
-- the serve journal), `tide replay`, `tide run --trace` (JSONL and text,
-- text also on a real terminal) and `:replay` in `tide repl` on a pty.
local proc = require "helpers.proc"
local serve = require "helpers.serve"
local core = require "tide.core"

local json = core.json
local q = proc.shquote

local PIPE = "spec/fixtures/replay/orders.lua"
local ORDERS = '{"id":"a","n":1}\n{"id":"b","n":2,"qty":3}\n{"id":"c","n":3}\n'


-- Decodes JSONL text; every line must be JSON.
local function jsonl(text)
    local t = {}
    for line in text:gmatch("([^\n]*)\n") do
        local v, err = json.decode(line)
        assert(v ~= nil, "not JSON: " .. line .. " (" .. tostring(err) .. ")")
        t[#t + 1] = v
    end
    return t
end


-- A directory with the orders as input, a "bad" file refusing orders 2
-- and 3, and the environment that points the pipeline at it.
local function setup()
    local dir = proc.tmpdir()
    proc.write(dir .. "/in.jsonl", ORDERS)
    proc.write(dir .. "/bad", "2\n3\n")
    return dir, { REPLAY_BAD = dir .. "/bad" }
end


-- Runs the orders into DIR/out; returns the run's result.
local function run_orders(dir, env, extra)
    local args = { "run", PIPE, "--input", dir .. "/in.jsonl", "--output", dir .. "/out" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return proc.tide(args, nil, env)
end


-- The events of one id, in order.
local function events_of(evs, id)
    local t = {}
    for _, e in ipairs(evs) do
        if e.id == id then t[#t + 1] = e end
    end
    return t
end


describe("failure records keep the input", function()
    it("in failed.jsonl and on stdout of tide run", function()
        local dir, env = setup()
        local r = run_orders(dir, env)
        assert.equal(1, r.code)
        local failed = jsonl(proc.slurp(dir .. "/out/failed.jsonl"))
        assert.equal(2, #failed)
        table.sort(failed, function(x, y) return x.id < y.id end)
        assert.same({ id = "b", n = 2, qty = 3 }, failed[1].input)
        assert.same({ id = "c", n = 3 }, failed[2].input)
        assert.equal("check", failed[1].error.task)
        r = proc.tide({ "run", PIPE, "--input", dir .. "/in.jsonl" }, nil, env)
        assert.equal(1, r.code)
        for _, rec in ipairs(jsonl(r.stdout)) do
            if rec.status == "failed" then
                assert.same(rec.id == "b" and { id = "b", n = 2, qty = 3 } or { id = "c", n = 3 }, rec.input)
            else
                assert.equal("a", rec.id)
                assert.is_nil(rec.input)
            end
        end
        proc.rmrf(dir)
    end)

    it("in the HTTP result, also when it comes back from the journal after a restart", function()
        local dir, env = setup()
        local s = serve.start("--journal " .. q(dir .. "/j.db"), PIPE, env)
        -- With wait, the answer is the result once the job finished.
        local status, body = serve.http(s, "POST", "/v1/jobs?wait=5", '{"id":"h1","input":{"n":3,"why":"http"}}')
        assert.equal(200, status)
        local rec = json.decode(body)
        assert.equal("failed", rec.status)
        assert.same({ n = 3, why = "http" }, rec.input)
        status, body = serve.http(s, "GET", "/v1/jobs/h1/result")
        assert.equal(200, status)
        rec = json.decode(body)
        assert.equal("failed", rec.status)
        assert.same({ n = 3, why = "http" }, rec.input)
        serve.stop(s)
        s = serve.start("--journal " .. q(dir .. "/j.db"), PIPE, env)
        status, body = serve.http(s, "GET", "/v1/jobs/h1/result")
        serve.stop(s)
        assert.equal(200, status)
        rec = json.decode(body)
        assert.equal("failed", rec.status)
        assert.same({ n = 3, why = "http" }, rec.input)
        proc.rmrf(dir)
    end)
end)


describe("tide replay", function()
    it("re-runs every failure with a JSONL trace, exit 1 while they still fail and 0 after a fix", function()
        local dir, env = setup()
        assert.equal(1, run_orders(dir, env).code)
        local failed = dir .. "/out/failed.jsonl"
        local r = proc.tide({ "replay", PIPE, failed }, nil, env)
        assert.equal(1, r.code)
        local evs = jsonl(r.stdout)
        for _, id in ipairs({ "b", "c" }) do
            local e = events_of(evs, id)
            assert.equal("context_start", e[1].event)
            assert.equal("context_end", e[#e].event)
            assert.equal("failed", e[#e].status)
            assert.equal("check", e[#e].error.task)
        end
        assert.same({}, events_of(evs, "a")) -- a did not fail: not replayed
        assert.matches("tide: replay b: failed: ETASK check: [^\n]*order 2 is refused\n", r.stderr)
        assert.matches("tide: replayed 2: 0 now succeed, 2 still fail\n", r.stderr)

        proc.write(dir .. "/bad", "3\n") -- the "fix" for order 2
        r = proc.tide({ "replay", PIPE, failed }, nil, env)
        assert.equal(1, r.code)
        assert.matches("tide: replay b: done\n", r.stderr)
        assert.matches("tide: replayed 2: 1 now succeed, 1 still fail\n", r.stderr)

        proc.write(dir .. "/bad", "")
        r = proc.tide({ "replay", PIPE, failed }, nil, env)
        assert.equal(0, r.code)
        assert.matches("tide: replayed 2: 2 now succeed, 0 still fail\n", r.stderr)
        local e = events_of(jsonl(r.stdout), "b")
        assert.equal("done", e[#e].status)
        assert.equal(6, e[#e].output) -- n * qty
        proc.rmrf(dir)
    end)

    it("replays only the failures chosen with --id, and reads stdout records of tide run too", function()
        local dir, env = setup()
        local run = proc.tide({ "run", PIPE, "--input", dir .. "/in.jsonl" }, nil, env)
        proc.write(dir .. "/stdout.jsonl", run.stdout:gsub('[^\n]*"status":"done"[^\n]*\n', ""))
        local r = proc.tide({ "replay", PIPE, dir .. "/stdout.jsonl", "--id", "c" }, nil, env)
        assert.equal(1, r.code)
        local evs = jsonl(r.stdout)
        assert.same({}, events_of(evs, "b"))
        assert.equal("context_start", evs[1].event)
        assert.same({ id = "c", n = 3 }, evs[1].input)
        assert.matches("tide: replayed 1: 0 now succeed, 1 still fail\n", r.stderr)
        r = proc.tide({ "replay", PIPE, dir .. "/stdout.jsonl", "--id", "b", "--id", "c" }, nil, {})
        assert.equal(0, r.code) -- without REPLAY_BAD nothing is refused
        assert.matches("tide: replayed 2: 2 now succeed, 0 still fail\n", r.stderr)
        proc.rmrf(dir)
    end)

    it("refuses files that are not failure records, unknown ids and missing files (2), unreadable ones (3)",
       function()
        local dir, env = setup()
        assert.equal(1, run_orders(dir, env).code)
        local failed = dir .. "/out/failed.jsonl"
        proc.write(dir .. "/garbage", "this is not JSON\n")
        proc.write(dir .. "/other", '{"id":"x","status":"done","output":1}\n')
        proc.write(dir .. "/empty", "\n")
        local cases = {
            { { dir .. "/garbage" }, 2, "garbage:1: not JSON" },
            { { dir .. "/other" }, 2, "other:1: not a failure record" },
            { { dir .. "/empty" }, 2, "holds no failure records" },
            { { failed, "--id", "zz" }, 2, "no failure with id 'zz' in .* %(ids there: [bc], [bc]%)" },
            { { dir .. "/missing.jsonl" }, 2, "No such file" },
            { { dir }, 3, "Is a directory" },
            { {}, 2, "replay needs a file of failure records" },
            { { failed, "--id" }, 2, "%-%-id needs the id of a failure" },
            { { failed, "--trace-format", "xml" }, 2, "%-%-trace%-format must be text or jsonl" },
        }
        for _, c in ipairs(cases) do
            local args = { "replay", PIPE }
            for _, a in ipairs(c[1]) do args[#args + 1] = a end
            local r = proc.tide(args, nil, env)
            assert.equal(c[2], r.code, table.concat(args, " ") .. ": " .. r.stderr)
            assert.matches(c[3], r.stderr)
            assert.equal("", r.stdout)
        end
        proc.rmrf(dir)
    end)
end)


describe("tide run --trace", function()
    it("traces the chosen input as JSONL on stderr, field by field", function()
        local dir, env = setup()
        local r = run_orders(dir, env, { "--trace", "b" })
        assert.equal(1, r.code)
        local evs = {}
        for line in r.stderr:gmatch("([^\n]*)\n") do
            if line:sub(1, 1) == "{" then evs[#evs + 1] = json.decode(line) end
        end
        local want = {
            { "context_start" }, { "task_start", "parse", 1 }, { "task_end", "parse", 1, "done" },
            { "task_start", "flaky", 1 }, { "task_end", "flaky", 1, "failed" }, { "retry", "flaky", 1 },
            { "task_start", "flaky", 2 }, { "task_end", "flaky", 2, "done" },
            { "task_start", "check", 1 }, { "task_end", "check", 1, "failed" }, { "context_end", nil, nil, "failed" },
        }
        assert.equal(#want, #evs)
        for i, w in ipairs(want) do
            local e = evs[i]
            assert.equal("b", e.id)
            assert.equal(w[1], e.event)
            assert.equal(w[2], e.task)
            assert.equal(w[3], e.attempt)
            assert.equal(w[4], e.status)
            assert.is_number(e.at_ms)
        end
        assert.same({ id = "b", n = 2, qty = 3 }, evs[1].input)
        assert.same({ id = "b", n = 2, qty = 3 }, evs[2].input)
        assert.same({ n = 2, qty = 3 }, evs[3].output)
        assert.is_number(evs[3].ms)
        assert.same({ n = 2, qty = 3 }, evs[4].input)
        assert.equal("ETASK", evs[5].error.code)
        assert.matches("first attempts always fail", evs[5].error.message)
        assert.equal(0, evs[6].delay)
        assert.equal("ETASK", evs[6].error.code)
        assert.same({ n = 2, qty = 3 }, evs[9].input)
        assert.equal("check", evs[10].error.task)
        assert.matches("order 2 is refused", evs[10].error.message)
        assert.matches("order 2 is refused\nstack traceback:", evs[10].error.traceback)
        assert.equal("failed", evs[11].status)
        assert.equal("check", evs[11].error.task)
        assert.is_true(evs[11].ms >= evs[10].at_ms - 0.001)
        proc.rmrf(dir)
    end)

    it("writes text when forced with --trace-format text, and on a terminal", function()
        local dir, env = setup()
        local r = run_orders(dir, env, { "--trace", "c", "--trace-format", "text" })
        assert.equal(1, r.code)
        assert.matches("%[c %+0%.000 ms%] context start, input {\"id\":\"c\",\"n\":3}\n", r.stderr)
        assert.matches("%[c %+[%d.]+ ms%] flaky #1 failed in [%d.]+ ms: ETASK flaky: ", r.stderr)
        assert.matches("%[c %+[%d.]+ ms%] flaky #1 will be retried in 0 s\n", r.stderr)
        assert.matches("%[c %+[%d.]+ ms%] check #1 failed in [%d.]+ ms: ETASK check: [^\n]*order 3 is refused",
                       r.stderr)
        assert.matches("%[c %+[%d.]+ ms%] context failed in [%d.]+ ms: ETASK check: ", r.stderr)
        assert.not_matches("%[b ", r.stderr)
        -- On a pty (util-linux script), without --trace-format.
        local cmd = "REPLAY_BAD=" .. q(dir .. "/bad") .. " script -qfec "
            .. q(proc.bin .. " run " .. PIPE .. " --input " .. dir .. "/in.jsonl --trace a") .. " /dev/null"
        local h = io.popen(cmd .. " </dev/null")
        local out = h:read("*a"):gsub("\r", ""):gsub("\27%[[%d;]*%a", "")
        h:close()
        assert.matches("%[a %+[%d.]+ ms%] check #1 done in [%d.]+ ms, output 1\n", out)
        assert.matches("%[a %+[%d.]+ ms%] context done in [%d.]+ ms, output 1\n", out)
        assert.not_matches('"event"', out)
        proc.rmrf(dir)
    end)

    it("refuses --trace-format without --trace and --trace with --redis", function()
        local r = proc.tide({ "run", PIPE, "--trace-format", "text" }, "")
        assert.equal(2, r.code)
        assert.matches("--trace-format needs --trace ID", r.stderr, 1, true)
        r = proc.tide({ "run", PIPE, "--trace", "x", "--redis", "redis://127.0.0.1:1" }, "")
        assert.equal(2, r.code)
        assert.matches("--trace cannot be given with --redis", r.stderr, 1, true)
    end)
end)


describe("tide repl :replay", function()
    local function session(env, steps)
        return (require("helpers.pty").session(PIPE, steps, { REPLAY_BAD = env.REPLAY_BAD }))
    end

    it("traces a failed job again, and after a fix it succeeds; FILE#N replays the N-th line", function()
        local dir, env = setup()
        assert.equal(1, run_orders(dir, env).code)
        -- Record lines 1 and 2 (a blank line between does not count), then
        -- a line that is no failure record: FILE#N looks at line N only.
        local recs = {}
        for line in proc.slurp(dir .. "/out/failed.jsonl"):gmatch("[^\n]+") do
            local t = json.decode(line)
            recs[t.id] = line
        end
        local mixed = dir .. "/mixed.jsonl"
        proc.write(mixed, recs.b .. "\n\n" .. recs.c .. "\n" .. '{"id":"x","status":"done"}\n')
        local out = session(env, {
            { 0.4, "=ex:result(ex:submit(p, { n = 2 }, { id = 'j' }), 5)\n" },
            { 0.5, ":replay j\n" },
            { 0.3, "io.open(os.getenv('REPLAY_BAD'), 'w'):close()\n" },
            { 0.5, ":replay j\n" },
            { 0.5, ":replay " .. mixed .. "#2\n" },
            { 0.3, ":replay " .. mixed .. "#3\n" },
            { 0.3, ":replay " .. mixed .. "#4\n" },
            { 0.3, ":replay " .. mixed .. "#c\n" },
            { 0.3, ":replay nope\n" },
            { 0.3, "\4" },
        })
        assert.matches("nil\terror ETASK check: [^\n]*order 2 is refused", out)
        -- The first replay: a text trace (a terminal), then its verdict.
        assert.matches("%[j#replay1 %+0%.000 ms%] context start, input {\"n\":2}\n", out)
        assert.matches("%[j#replay1 %+[%d.]+ ms%] check #1 failed in [%d.]+ ms: ETASK check: ", out)
        assert.matches("replay j#replay1: failed: ETASK check: [^\n]*order 2 is refused\n", out)
        -- After the fix, the same input passes.
        assert.matches("%[j#replay2 %+[%d.]+ ms%] check #1 done in [%d.]+ ms, output 2\n", out)
        assert.matches("replay j#replay2: done\n", out)
        assert.matches("%[c %+[%d.]+ ms%] context start, input {\"id\":\"c\",\"n\":3}\n", out)
        assert.matches("replay c: done\n", out)
        assert.not_matches("replay b", out)
        assert.matches("error: " .. mixed .. ":4: not a failure record", out, 1, true)
        assert.matches("error: " .. mixed .. "#4 is out of range: the file has 3 non-blank lines", out, 1, true)
        assert.matches("what follows '#' must be a line number >= 1", out, 1, true)
        assert.matches("error: 'nope' is neither a failed job of ex nor a file of failures", out)
        proc.rmrf(dir)
    end)
end)
