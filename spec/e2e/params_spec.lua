--- End-to-end specs of pipeline parameters (docs/cli.md#parameters): the
-- real binary, with --param, --param-file and `-- args`, their types,
-- their precedence, every refusal (exit 2 with a message naming what is
-- wrong), --help, worker threads, tide serve, --output and --journal.
local proc = require "helpers.proc"
local serve = require "helpers.serve"
local core = require "tide.core"

local json = core.json
local P = "spec/fixtures/params/p.lua"


-- Runs P on one input `1` with extra arguments; returns the process result
-- and, when it printed one, the output record's value.
local function run(args, pipeline)
    local full = { "run", pipeline or P }
    for _, a in ipairs(args) do full[#full + 1] = a end
    local r = proc.tide(full, "1\n")
    local line = r.stdout:match("^([^\n]*)\n")
    local rec = line and json.decode(line)
    return r, rec and rec.output
end


local function write_tmp(text)
    local path = os.tmpname()
    proc.write(path, text)
    return path
end


describe("tide run --param", function()
    it("parses numbers and booleans, keeps strings, and reaches the file while it loads", function()
        local r, out = run({ "--param", "region=eu", "--param", "limit=5", "--param", "stages=3",
                             "--param", "verbose=true", "--param", "label=007" })
        assert.equal(0, r.code, r.stderr)
        assert.equal(5, out.limit)
        assert.equal(true, out.verbose)
        -- The label's default is a string: the text stays text.
        assert.equal("007", out.label)
        assert.equal("eu", out.region)
        -- stages=3 made three add tasks: 1 + 3.
        assert.equal(4, out.x)
    end)

    it("gives the defaults when nothing is given but the required parameter", function()
        local r, out = run({ "--param", "region=eu" })
        assert.equal(0, r.code, r.stderr)
        assert.equal(100, out.limit)
        assert.equal(false, out.verbose)
        assert.equal("x", out.label)
        assert.equal(1, out.depth)
        assert.equal(2, out.x)
    end)

    it("reaches sync tasks on worker threads with the same values", function()
        local r, out = run({ "--param", "region=us", "--param", "limit=7", "--param", "verbose=true",
                             "--threads", "2" })
        assert.equal(0, r.code, r.stderr)
        -- t.params is read on the worker thread; up_* are the upvalues of
        -- the worker's own load of the file: both must match.
        assert.equal(7, out.limit)
        assert.equal(7, out.up_limit)
        assert.equal("us", out.region)
        assert.equal(true, out.verbose)
        assert.equal(true, out.up_verbose)
    end)

    it("passes the arguments after -- as tide.args, also to worker threads", function()
        local r, out = run({ "--param", "region=eu", "--", "a b", "--param", "-x" })
        assert.equal(0, r.code, r.stderr)
        assert.same({ "a b", "--param", "-x" }, out.args)
        local r2, out2 = run({ "--", "one", "two" }, "spec/fixtures/params/plain.lua")
        assert.equal(0, r2.code, r2.stderr)
        assert.same({ "one", "two" }, out2.args)
    end)

    it("lets the last --param of a name win", function()
        local r, out = run({ "--param", "region=eu", "--param", "limit=1", "--param", "limit=2" })
        assert.equal(0, r.code, r.stderr)
        assert.equal(2, out.limit)
    end)

    it("refuses a value of the wrong type, naming the parameter (exit 2)", function()
        for _, case in ipairs({ { "limit=abc", "--param limit=abc: expected a number" },
                                { "limit=0x10", "--param limit=0x10: expected a number" },
                                { "limit=inf", "--param limit=inf: expected a number" },
                                { "verbose=yes", "--param verbose=yes: expected a boolean" },
                                { "opts=[1,", "--param opts=[1,: expected a JSON object or array" } }) do
            local r = run({ "--param", "region=eu", "--param", case[1] })
            assert.equal(2, r.code, case[1])
            assert.matches(case[2], r.stderr, 1, true)
            assert.equal("", r.stdout)
        end
    end)

    it("refuses an unknown parameter, listing the declared ones (exit 2)", function()
        local r = run({ "--param", "region=eu", "--param", "limt=3" })
        assert.equal(2, r.code)
        assert.matches("unknown parameter 'limt': pipeline 'params' declares limit, stages, verbose, "
                       .. "label, opts, region", r.stderr, 1, true)
        local r2 = run({ "--param", "x=1" }, "spec/fixtures/params/plain.lua")
        assert.equal(2, r2.code)
        assert.matches("unknown parameter 'x': pipeline 'plain' declares no parameters", r2.stderr, 1, true)
    end)

    it("refuses a missing required parameter, naming it with its doc (exit 2)", function()
        local r = run({})
        assert.equal(2, r.code)
        assert.matches("missing required parameter: region (where to run (required))", r.stderr, 1, true)
        -- A file that fails because it used the nil lists every missing one.
        local r2 = run({}, "spec/fixtures/params/crash.lua")
        assert.equal(2, r2.code)
        assert.matches("missing required parameters: n (how many tasks), m", r2.stderr, 1, true)
    end)

    it("refuses --param without '=' or without a name (exit 2)", function()
        local r = run({ "--param", "region" })
        assert.equal(2, r.code)
        assert.matches("--param needs NAME=VALUE, got 'region' (no '=')", r.stderr, 1, true)
        local r2 = run({ "--param", "=eu" })
        assert.equal(2, r2.code)
        assert.matches("--param needs NAME=VALUE, got '=eu' (no name)", r2.stderr, 1, true)
        local r3 = run({ "--param" })
        assert.equal(2, r3.code)
        assert.matches("--param needs NAME=VALUE", r3.stderr, 1, true)
    end)
end)


describe("tide run --param-file", function()
    it("gives structured values, and --param wins over it, and it over the defaults", function()
        local f = write_tmp('{"opts": {"depth": 4}, "limit": 7, "region": "us", "verbose": true}')
        local r, out = run({ "--param-file", f, "--param", "limit=9" })
        os.remove(f)
        assert.equal(0, r.code, r.stderr)
        assert.equal(4, out.depth)
        assert.equal(9, out.limit)
        assert.equal(true, out.verbose)
        assert.equal("us", out.region)
        assert.equal("x", out.label)
    end)

    it("refuses a value of the wrong type, naming the parameter and the file (exit 2)", function()
        local f = write_tmp('{"region": "eu", "limit": "many"}')
        local r = run({ "--param-file", f })
        os.remove(f)
        assert.equal(2, r.code)
        assert.matches("parameter 'limit' from --param-file " .. f .. ": expected a number, got \"many\"",
                       r.stderr, 1, true)
    end)

    it("refuses an unknown name in the file (exit 2)", function()
        local f = write_tmp('{"region": "eu", "nope": 1}')
        local r = run({ "--param-file", f })
        os.remove(f)
        assert.equal(2, r.code)
        assert.matches("unknown parameter 'nope'", r.stderr, 1, true)
    end)

    it("refuses garbage JSON with the file and the position (exit 2)", function()
        local f = write_tmp('{"region": "eu", "limit": 7,')
        local r = run({ "--param-file", f })
        assert.equal(2, r.code)
        assert.matches("--param-file " .. f .. ": invalid JSON at byte ", r.stderr, 1, true)
        assert.matches("at byte 28: ", r.stderr, 1, true)
        proc.write(f, "\255\254 not json")
        r = run({ "--param-file", f })
        assert.equal(2, r.code)
        assert.matches("--param-file " .. f .. ": invalid", r.stderr, 1, true)
        proc.write(f, '[1, 2]')
        r = run({ "--param-file", f })
        assert.equal(2, r.code)
        assert.matches("must hold a JSON object", r.stderr, 1, true)
        os.remove(f)
    end)

    it("refuses a missing file (exit 2)", function()
        local r = run({ "--param-file", "/nonexistent/params.json" })
        assert.equal(2, r.code)
        assert.matches("--param-file /nonexistent/params.json: No such file", r.stderr, 1, true)
    end)
end)


describe("tide run P --help", function()
    it("lists the parameters with their types, defaults and docs, and exits 0", function()
        local r = proc.tide({ "run", P, "--help" })
        assert.equal(0, r.code, r.stderr)
        assert.matches("parameters of pipeline 'params':", r.stdout, 1, true)
        assert.matches("limit%s+number, default 100\n%s+the most items to keep\n", r.stdout)
        assert.matches("verbose%s+boolean, default false\n", r.stdout)
        assert.matches("label%s+string, default \"x\"\n", r.stdout)
        assert.matches("opts%s+table, default {\"depth\":1}\n%s+structured options\n", r.stdout)
        assert.matches("region%s+string, required\n%s+where to run %(required%)\n", r.stdout)
    end)

    it("says so for a pipeline without parameters, and fails for a file that does not load", function()
        local r = proc.tide({ "run", "spec/fixtures/params/plain.lua", "--help" })
        assert.equal(0, r.code)
        assert.matches("pipeline 'plain' declares no parameters", r.stdout, 1, true)
        local r2 = proc.tide({ "run", "/nonexistent/p.lua", "-h" })
        assert.equal(2, r2.code)
        assert.matches("/nonexistent/p.lua", r2.stderr, 1, true)
    end)

    it("lists what was declared before a file failed for want of a value", function()
        local r = proc.tide({ "serve", "spec/fixtures/params/crash.lua", "--help" })
        assert.equal(0, r.code)
        assert.matches("n%s+number, required\n%s+how many tasks", r.stdout)
        assert.matches("m%s+number, required", r.stdout)
    end)
end)


describe("tide run with parameters and --output, --journal", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("writes the results under --output", function()
        local r = run({ "--param", "region=eu", "--param", "stages=2", "--output", dir })
        assert.equal(0, r.code, r.stderr)
        local rec = json.decode(proc.lines(proc.slurp(dir .. "/seen.jsonl"))[1])
        assert.equal(3, rec.output.x)
        assert.equal("eu", rec.output.region)
    end)

    it("refuses to resume a journal with other parameters or args, and resumes with the same", function()
        local base = { "--param", "region=eu", "--output", dir, "--journal", dir .. "/j.db", "--", "a" }
        local r = run(base)
        assert.equal(0, r.code, r.stderr)
        local other = { "--param", "limit=5" }
        for _, a in ipairs(base) do other[#other + 1] = a end
        r = run(other)
        assert.equal(2, r.code)
        assert.matches("was written by a run with other parameters", r.stderr, 1, true)
        assert.matches('"limit":100', r.stderr, 1, true)
        assert.matches('"limit":5', r.stderr, 1, true)
        -- Other args are another run too.
        local args2 = { "--param", "region=eu", "--output", dir, "--journal", dir .. "/j.db", "--", "b" }
        r = run(args2)
        assert.equal(2, r.code)
        assert.matches("other parameters", r.stderr, 1, true)
        -- The same ones resume (here: a finished run, nothing to do).
        r = run(base)
        assert.equal(0, r.code, r.stderr)
        assert.matches("nothing to do", r.stderr, 1, true)
        -- --journal-reset starts over with the new ones.
        table.insert(other, 1, "--journal-reset")
        r = run(other)
        assert.equal(0, r.code, r.stderr)
        local rec = json.decode(proc.lines(proc.slurp(dir .. "/seen.jsonl"))[1])
        assert.equal(5, rec.output.limit)
    end)
end)


describe("tide serve with parameters", function()
    it("takes them at start, and jobs see them", function()
        local s = serve.start("--param region=ap --param limit=3 --param stages=2 -- srv", P)
        local status, body = serve.http(s, "POST", "/v1/jobs?wait=5", "{\"input\": 1}")
        local text = serve.stop(s)
        assert.equal(200, status, body .. text)
        local rec = json.decode(body)
        assert.equal("ap", rec.output.region)
        assert.equal(3, rec.output.limit)
        assert.equal(3, rec.output.x)
        assert.same({ "srv" }, rec.output.args)
    end)

    it("refuses a bad one at start (exit 2)", function()
        local r = proc.tide({ "serve", P, "--listen", "127.0.0.1:0", "--param", "region=eu",
                              "--param", "stages=two" })
        assert.equal(2, r.code)
        assert.matches("--param stages=two: expected a number", r.stderr, 1, true)
    end)
end)


describe("tide replay --param", function()
    it("needs the parameters of the run, and replays with the ones given", function()
        local dir = proc.tmpdir()
        proc.write(dir .. "/in.jsonl", '{"id":"a","n":1}\n{"id":"b","n":5}\n')
        local pipe = "spec/fixtures/params/limit.lua"
        local r = proc.tide({ "run", pipe, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                              "--param", "limit=3" })
        assert.equal(1, r.code, r.stderr)
        local failed = dir .. "/out/failed.jsonl"
        r = proc.tide({ "replay", pipe, failed, "--trace-format", "jsonl" })
        assert.equal(2, r.code)
        assert.matches("missing required parameter: limit", r.stderr, 1, true)
        r = proc.tide({ "replay", pipe, failed, "--param", "limit=3", "--trace-format", "jsonl" })
        assert.equal(1, r.code, r.stderr)
        r = proc.tide({ "replay", pipe, failed, "--param", "limit=10", "--trace-format", "jsonl" })
        assert.equal(0, r.code, r.stderr)
        assert.matches("replayed 1: 1 now succeed, 0 still fail", r.stderr, 1, true)
        proc.rmrf(dir)
    end)
end)
