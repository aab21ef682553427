--- End-to-end specs for `tide run`: the real binary (TIDE_BUILD/tide) as a
-- process, on the examples and on the fixtures in spec/fixtures/. Run from
-- the repository root:
--   busted --lua=luajit -o TAP --helper=spec/helpers/init.lua spec/e2e/
local proc = require "helpers.proc"
local core = require "tide.core"

local json = core.json
local hrtime = core.hrtime
local shquote = proc.shquote

local PIPE = "spec/fixtures/pipelines/"
local DATA = "spec/fixtures/cli/"


--- Decodes tide's JSONL output strictly: every line (each ended by "\n")
-- must be one JSON value. Returns the values in order.
local function jsonl(text, what)
    what = what or "stdout"
    local recs = {}
    if text == "" then return recs end
    assert.equal("\n", text:sub(-1), what .. " does not end with a newline")
    local n = 0
    for line in text:gmatch("([^\n]*)\n") do
        n = n + 1
        local v, err = json.decode(line)
        assert(v ~= nil, ("%s line %d is not JSON: %q (%s)"):format(what, n, line, tostring(err)))
        recs[n] = v
    end
    return recs
end


--- Indexes records by their (string) id; an id may appear only once.
local function by_id(recs)
    local t = {}
    for _, r in ipairs(recs) do
        assert.is_string(r.id)
        assert.is_nil(t[r.id], "id '" .. tostring(r.id) .. "' appears twice")
        t[r.id] = r
    end
    return t
end


local function keys(t)
    local ks = {}
    for k in pairs(t) do ks[#ks + 1] = k end
    table.sort(ks)
    return ks
end


local function read_jsonl(path)
    local text = proc.slurp(path)
    assert(text, "missing file " .. path)
    return jsonl(text, path)
end


-- tide(args, stdin_text, env) -> { code, stdout, stderr }
local tide = proc.tide


describe("tide run", function()

    describe("examples/quickstart.lua", function()
        local r

        lazy_setup(function()
            r = tide({ "run", "examples/quickstart.lua", "--input", "examples/data/quickstart.jsonl" })
        end)

        it("exits 1 because order-5 fails, with one line per order", function()
            assert.equal(1, r.code)
            local recs = jsonl(r.stdout)
            assert.equal(8, #recs)
            assert.matches("tide: 7 done, 1 failed, 0 rejected", r.stderr, 1, true)
        end)

        it("prints the exact receipts of the successful orders", function()
            local got = by_id(jsonl(r.stdout))
            local want = {
                ["order-1"] = { order = "order-1", lines = 2, units = 3, total = 19.25, retries = 1 },
                ["order-2"] = { order = "order-2", lines = 1, units = 3, total = 2.97, retries = 0 },
                ["order-3"] = { order = "order-3", lines = 3, units = 6, total = 32.9, retries = 3 },
                ["order-4"] = { order = "order-4", lines = 1, units = 10, total = 3.5, retries = 0 },
                ["order-6"] = { order = "order-6", lines = 2, units = 3, total = 25.49, retries = 1 },
                ["order-7"] = { order = "order-7", lines = 0, units = 0, total = 0, retries = 0 },
                ["order-8"] = { order = "order-8", lines = 2, units = 8, total = 71, retries = 0 },
            }
            for id, out in pairs(want) do
                assert.same({ id = id, status = "done", output = out }, got[id])
            end
        end)

        it("prints the error record of the failed order", function()
            local rec = by_id(jsonl(r.stdout))["order-5"]
            assert.equal("failed", rec.status)
            -- The input rides along, so that the failure can be replayed.
            assert.same({ "error", "id", "input", "status" }, keys(rec))
            assert.equal("order-5", rec.input.id)
            local e = rec.error
            assert.equal("ETASK", e.code)
            assert.equal("price", e.task)
            assert.equal(1, e.attempts) -- retry.on refuses to retry invalid items
            assert.equal(2, e.map_index)
            assert.matches("^examples/quickstart%.lua:%d+: invalid item H: quantity must be at least 1, got %-2$",
                           e.message)
            assert.is_nil(e.traceback) -- tracebacks go to failed.jsonl only
        end)

        it("logs every retry on stderr through the interval function", function()
            for _, s in ipairs({
                "[order-1 price] attempt 1 failed (",
                "price service timed out for B (attempt 1)); retrying in 0.01 s",
                "[order-3 price] attempt 2 failed (",
                "price service timed out for D (attempt 2)); retrying in 0.02 s",
                "[order-6 price] attempt 1 failed (",
            }) do
                assert.matches(s, r.stderr, 1, true)
            end
            local n = select(2, r.stderr:gsub("retrying in", ""))
            assert.equal(5, n) -- B, D twice, E, B
        end)
    end)

    describe("examples/routing.lua", function()
        it("routes every log line down one branch and respects the lookup limiter", function()
            local t0 = hrtime()
            local r = tide({ "run", "examples/routing.lua", "--input", "examples/data/dpkg.log.jsonl" })
            local elapsed = hrtime() - t0
            assert.equal(0, r.code)
            local got = by_id(jsonl(r.stdout))
            local PACKAGE = { install = true, upgrade = true, configure = true, trigproc = true }
            local REMOVAL = { remove = true, purge = true }
            local npackage_events = 0
            local f = assert(io.open("examples/data/dpkg.log.jsonl"))
            for line in f:lines() do
                local day = json.decode(line)
                local want = { package = 0, removal = 0, other = 0 }
                local pkgs, npkgs = {}, 0
                for _, l in ipairs(day.lines) do
                    local action, rest = l:match("^%S+ %S+ (%S+) ?(.*)$")
                    local pkg = rest and rest:match("^([^:%s]+):")
                    local kind = (PACKAGE[action] and pkg) and "package" or REMOVAL[action] and "removal" or "other"
                    want[kind] = want[kind] + 1
                    if kind ~= "other" and pkg and not pkgs[pkg] then
                        pkgs[pkg] = true
                        npkgs = npkgs + 1
                    end
                end
                npackage_events = npackage_events + want.package
                local out = got[day.id].output
                assert.same(want, out.by_kind)
                assert.equal(#day.lines, out.events)
                assert.equal(npkgs, out.packages)
            end
            f:close()
            -- 2000 lookups a second with bursts of 50: the run cannot be faster.
            assert.is_true(elapsed >= (npackage_events - 50) / 2000,
                ("%d lookups in %.3f s"):format(npackage_events, elapsed))
        end)
    end)

    describe("examples/logs.lua", function()
        local DATAFILE = "examples/data/dpkg.log.jsonl"

        -- The summaries, recomputed from the data file with plain string
        -- matching (independently of examples/logs.lua).
        local function expected_summaries()
            local want, nlines = {}, 0
            for text in io.lines(DATAFILE) do
                local id = text:match('^{"id":"([^"]+)"')
                assert(id, "unexpected record in " .. DATAFILE)
                local s = {
                    lines = 0, actions = {}, by_hour = {}, by_arch = {}, packages = 0,
                    top = {}, upgrades = {}, removed = {}, unparsed = {},
                }
                local events = {}
                -- The log lines contain no quotes or backslashes.
                for line in text:match('"lines":%[(.*)%]}$'):gmatch('"([^"]*)"') do
                    s.lines = s.lines + 1
                    local f = {}
                    for w in line:gmatch("%S+") do f[#f + 1] = w end
                    local stamp = f[1] .. " " .. f[2]
                    s.first = s.first or stamp
                    s.last = stamp
                    local action = f[3]
                    s.actions[action] = (s.actions[action] or 0) + 1
                    local hour = f[2]:sub(1, 2)
                    s.by_hour[hour] = (s.by_hour[hour] or 0) + 1
                    if action ~= "startup" then
                        local pkg, arch = f[4]:match("^(.-):(.*)$")
                        if not pkg then pkg = f[4] end
                        if arch then s.by_arch[arch] = (s.by_arch[arch] or 0) + 1 end
                        if not events[pkg] then s.packages = s.packages + 1 end
                        events[pkg] = (events[pkg] or 0) + 1
                        if action == "upgrade" then
                            s.upgrades[#s.upgrades + 1] = { package = pkg, from = f[5], to = f[6] }
                        elseif action == "remove" or action == "purge" then
                            s.removed[#s.removed + 1] = pkg
                        end
                    end
                end
                local ranked = {}
                for pkg, n in pairs(events) do ranked[#ranked + 1] = { package = pkg, events = n } end
                table.sort(ranked, function(a, b)
                    return a.events > b.events or (a.events == b.events and a.package < b.package)
                end)
                for i = 1, math.min(5, #ranked) do s.top[i] = ranked[i] end
                want[id] = s
                nlines = nlines + s.lines
            end
            return want, nlines
        end

        it("exits 0 with per-day summaries equal to those recomputed from the data", function()
            local want, nlines = expected_summaries()
            assert.is_true(nlines >= 300, "the data file should hold at least 300 log lines")
            local r = tide({ "run", "examples/logs.lua", "--input", DATAFILE })
            assert.equal(0, r.code)
            local got = by_id(jsonl(r.stdout))
            assert.same(keys(want), keys(got))
            for id, s in pairs(want) do
                assert.equal("done", got[id].status)
                assert.same(s, got[id].output)
            end
        end)

        it("collects unparsable lines with their line number instead of failing the chunk", function()
            local input = '{"id":"mixed","lines":['
                .. '"2026-01-02 03:04:05 install foo:amd64 <none> 1.0",'
                .. '"garbage here",'
                .. '"2026-01-02 03:04:06 remove foo:amd64 1.0 <none>",'
                .. '"2026-01-02 23:59:59 startup packages configure"]}\n'
            local r = tide({ "run", "examples/logs.lua" }, input)
            assert.equal(0, r.code)
            local recs = jsonl(r.stdout)
            assert.equal(1, #recs)
            assert.same({
                first = "2026-01-02 03:04:05", last = "2026-01-02 23:59:59", lines = 4,
                actions = { install = 1, remove = 1, startup = 1 },
                by_hour = { ["03"] = 2, ["23"] = 1 }, by_arch = { amd64 = 2 }, packages = 1,
                top = { { package = "foo", events = 2 } },
                upgrades = {}, removed = { "foo" },
                unparsed = { { line = 2, error = "line 2: not a dpkg log line: garbage here" } },
            }, recs[1].output)
        end)
    end)

    describe("output", function()
        it("is valid JSONL, one line per input, ids from `id` or the 1-based line number", function()
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "ids.jsonl" })
            assert.equal(0, r.code)
            local recs = jsonl(r.stdout)
            assert.equal(7, #recs) -- 9 lines, 2 of them blank
            for _, rec in ipairs(recs) do
                assert.same({ "id", "output", "status" }, keys(rec))
                assert.equal("done", rec.status)
            end
            local got = by_id(recs)
            local want = {
                a = { id = "a", v = 1 },
                ["3"] = { v = 2 },
                ["40"] = { id = 40, v = 3 }, -- a number id becomes a string
                ["6"] = "text",
                ["7"] = { 1, 2 },
                ["8"] = { id = { x = 1 }, v = 4 }, -- not a string: the line number
                last = { id = "last", v = 5 }, -- last line without a newline
            }
            assert.same(keys(want), keys(got))
            for id, v in pairs(want) do assert.same(v, got[id].output) end
        end)

        it("with --output DIR goes to DIR/<sink>.jsonl, DIR/failed.jsonl and DIR/rejects.jsonl", function()
            local tmp = proc.tmpdir()
            finally(function() proc.rmrf(tmp) end)
            local dir = tmp .. "/nested/out" -- created
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "failures.jsonl", "--output", dir })
            assert.equal(1, r.code)
            assert.equal("", r.stdout)
            assert.matches("tide: line 3: malformed JSON", r.stderr, 1, true)

            local done = by_id(read_jsonl(dir .. "/echo.jsonl"))
            assert.same({
                ["good-1"] = { id = "good-1", output = { id = "good-1", v = 1 } },
                ["4"] = { id = "4", output = { v = 2 } },
            }, done)

            local failed = by_id(read_jsonl(dir .. "/failed.jsonl"))
            assert.same({ "5", "bad-1" }, keys(failed))
            for id, want in pairs({
                ["bad-1"] = { input = { id = "bad-1", fail = "first" }, msg = "asked to fail: first" },
                ["5"] = { input = { fail = "second", v = 3 }, msg = "asked to fail: second" },
            }) do
                local f = failed[id]
                assert.same({ "error", "id", "input", "status" }, keys(f))
                assert.equal("failed", f.status)
                assert.same(want.input, f.input)
                assert.equal("ETASK", f.error.code)
                assert.equal("echo", f.error.task)
                assert.equal(1, f.error.attempts)
                assert.matches("echo%.lua:%d+: " .. want.msg .. "$", f.error.message)
                assert.matches("stack traceback:", f.error.traceback, 1, true)
            end

            local rejects = read_jsonl(dir .. "/rejects.jsonl")
            assert.equal(1, #rejects)
            assert.equal(3, rejects[1].line)
            assert.equal("oops", rejects[1].text)
            assert.matches("^malformed JSON", rejects[1].error)
        end)

        it("--input DIR/failed.jsonl re-runs exactly the failed inputs", function()
            local dir = proc.tmpdir()
            finally(function() proc.rmrf(dir) end)
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "failures.jsonl", "--output", dir })
            assert.equal(1, r.code)
            -- "After the fix" (the fixture stops failing), only the two
            -- failures run again, under their ids, with their inputs.
            local again = tide({ "run", PIPE .. "echo.lua", "--input", dir .. "/failed.jsonl" }, nil,
                               { TIDE_SPEC_FIXED = "1" })
            assert.equal(0, again.code)
            assert.same({
                ["bad-1"] = { id = "bad-1", status = "done", output = { id = "bad-1", fail = "first" } },
                ["5"] = { id = "5", status = "done", output = { fail = "second", v = 3 } },
            }, by_id(jsonl(again.stdout)))
        end)

        it("keeps `print` inside tasks on stderr; stdout stays JSONL", function()
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "print.jsonl" })
            assert.equal(0, r.code)
            local got = by_id(jsonl(r.stdout))
            assert.same({ "loud", "loud-2", "quiet" }, keys(got))
            assert.same({ id = "loud", print = "hello" }, got.loud.output)
            assert.matches("printed by a task:\thello\t42\n", r.stderr, 1, true)
            assert.matches("printed by a task:\tagain\t42\n", r.stderr, 1, true)
            assert.is_nil(r.stdout:find("printed by", 1, true))
        end)
    end)

    describe("malformed input", function()
        it("reports each bad line with its number, skips blank lines, runs the rest, exits 1", function()
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "malformed.jsonl" })
            assert.equal(1, r.code)
            local got = by_id(jsonl(r.stdout))
            assert.same({ "ok-1", "ok-2", "ok-3" }, keys(got)) -- ok-2 ends with \r\n
            for _, n in ipairs({ 2, 5, 8 }) do
                assert.matches("tide: line " .. n .. ": malformed JSON", r.stderr, 1, true)
            end
            for _, n in ipairs({ 1, 3, 4, 6, 7 }) do
                assert.is_nil(r.stderr:find("line " .. n .. ":", 1, true))
            end
            assert.matches("tide: 3 done, 0 failed, 3 rejected", r.stderr, 1, true)
        end)

        it("with --output saves the rejected lines with their numbers and text", function()
            local dir = proc.tmpdir()
            finally(function() proc.rmrf(dir) end)
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "malformed.jsonl", "--output", dir })
            assert.equal(1, r.code)
            local rejects = read_jsonl(dir .. "/rejects.jsonl")
            local got = {}
            for i, rec in ipairs(rejects) do got[i] = { rec.line, rec.text } end
            assert.same({ { 2, "{not json" }, { 5, "[1,2" }, { 8, '{"id":"ok-4"}}' } }, got)
            assert.equal("", proc.slurp(dir .. "/failed.jsonl"))
            assert.equal(3, #read_jsonl(dir .. "/echo.jsonl"))
        end)
        it("with --output keeps the text of a line that is not UTF-8 in rejects.jsonl", function()
            -- The text cannot be a JSON string as it is: rejects.jsonl
            -- shows it with U+FFFD and keeps the exact bytes in base64.
            local dir = proc.tmpdir()
            finally(function() proc.rmrf(dir) end)
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "bad_utf8.jsonl", "--output", dir })
            assert.equal(1, r.code)
            assert.matches("tide: line 2: malformed JSON", r.stderr, 1, true)
            assert.same({ "ok-1", "ok-2" }, keys(by_id(read_jsonl(dir .. "/echo.jsonl"))))
            local rejects = read_jsonl(dir .. "/rejects.jsonl")
            assert.equal(1, #rejects)
            assert.equal(2, rejects[1].line)
            assert.matches('{"id":"caf', rejects[1].text, 1, true)
            -- The exact bytes are kept too, as base64.
            local f = assert(io.open(DATA .. "bad_utf8.jsonl", "rb"))
            local second = select(2, f:read("*l"), f:read("*l"))
            f:close()
            local b64 = assert(io.popen("printf '%s' " .. shquote(rejects[1].base64) .. " | base64 -d"))
            assert.equal(second, b64:read("*a"))
            b64:close()
        end)
    end)

    describe("bad pipelines exit 2 naming file:line", function()
        local function load_error(file)
            local r = tide({ "run", PIPE .. file }, '{"id":"never"}\n')
            assert.equal(2, r.code)
            assert.equal("", r.stdout)
            return r.stderr
        end

        it("a cycle", function()
            local err = load_error("cycle.lua")
            assert.matches("^tide: spec/fixtures/pipelines/cycle%.lua:[678]: pipeline 'cyclic': cycle: ", err)
            assert.matches("cycle: [%a >-]+\n$", err)
            for _, name in ipairs({ "alpha", "beta", "gamma" }) do
                assert.matches(name, err:match("cycle: (.*)$"), 1, true)
            end
            assert.is_nil(err:match("cycle: (.*)$"):find("ingest", 1, true))
        end)

        it("an unknown `after`", function()
            assert.equal("tide: spec/fixtures/pipelines/unknown_after.lua:6: pipeline 'unknown-after': "
                         .. "task 'store': 'after' names unknown task 'laod'\n", load_error("unknown_after.lua"))
        end)

        it("a duplicate task name, naming both lines", function()
            local err = load_error("duplicate.lua")
            assert.matches("^tide: spec/fixtures/pipelines/duplicate%.lua:7: ", err)
            assert.matches("duplicate task name 'load'", err, 1, true)
            assert.matches("spec/fixtures/pipelines/duplicate.lua:5", err, 1, true)
        end)

        it("an option of the wrong type, at the p:task call", function()
            assert.equal("tide: spec/fixtures/pipelines/bad_option.lua:6: p:task: task 'store': "
                         .. "timeout must be a number of seconds > 0\n", load_error("bad_option.lua"))
        end)

        it("a file that does not return a pipeline", function()
            assert.equal("tide: spec/fixtures/pipelines/no_return.lua: the chunk must return a pipeline "
                         .. "(return p), got nil\n", load_error("no_return.lua"))
        end)

        it("a syntax error", function()
            assert.matches("^tide: spec/fixtures/pipelines/syntax_error%.lua%.txt:7: '%)' expected "
                           .. "%(to close '%(' at line 6%)", load_error("syntax_error.lua.txt"))
        end)

        it("a missing file", function()
            assert.matches("^tide: cannot open spec/fixtures/pipelines/does_not_exist%.lua",
                           load_error("does_not_exist.lua"))
        end)
    end)

    describe("the command line", function()
        local CONC = "--concurrency needs a whole number from 1 to 100000000"
        local usage_errors = {
            { { "run", PIPE .. "echo.lua", "--bogus" }, "unknown option '--bogus'" },
            { { "run" }, "run needs a pipeline file" },
            { { "run", "--input", DATA .. "ids.jsonl" }, "run needs a pipeline file" },
            { { "run", PIPE .. "echo.lua", "--concurrency", "0" }, CONC },
            { { "run", PIPE .. "echo.lua", "--concurrency", "2.5" }, CONC },
            { { "run", PIPE .. "echo.lua", "--concurrency", "many" }, CONC },
            { { "run", PIPE .. "echo.lua", "--concurrency" }, CONC },
            { { "run", PIPE .. "echo.lua", "--concurrency", "1e12" }, CONC },
            { { "run", PIPE .. "echo.lua", "--concurrency", "inf" }, CONC },
            { { "run", PIPE .. "echo.lua", "--threads", "1e6" }, "--threads needs a whole number from 1 to 1024" },
            { { "run", PIPE .. "echo.lua", "--task-timeout", "inf" }, "--task-timeout needs a number of seconds > 0" },
            { { "run", PIPE .. "echo.lua", "--input" }, "--input needs a file name" },
            { { "run", PIPE .. "echo.lua", "--task-timeout", "0" }, "--task-timeout needs a number of seconds > 0" },
        }
        for _, case in ipairs(usage_errors) do
            it("exits 2 on `tide " .. table.concat(case[1], " ") .. "`", function()
                local r = tide(case[1], '{"id":"never"}\n')
                assert.equal(2, r.code)
                assert.equal("", r.stdout)
                assert.matches("^tide: " .. case[2]:gsub("%p", "%%%0"), r.stderr)
                assert.matches("usage: tide", r.stderr, 1, true)
            end)
        end

        it("`tide version` exits 0", function()
            local r = tide({ "version" })
            assert.equal(0, r.code)
            assert.matches("^tide %d+%.%d+%.%d+ %(", r.stdout)
        end)

        it("`tide --help` exits 0 with the usage on stdout", function()
            local r = tide({ "--help" })
            assert.equal(0, r.code)
            assert.matches("^usage: tide <command>", r.stdout)
            assert.matches("run PIPELINE.lua", r.stdout, 1, true)
        end)

        it("an unknown command exits 2", function()
            local r = tide({ "frobnicate" })
            assert.equal(2, r.code)
            assert.equal("", r.stdout)
            assert.matches("^tide: unknown command 'frobnicate'", r.stderr)
        end)

        it("an unreadable --input exits 3", function()
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "does_not_exist.jsonl" })
            assert.equal(3, r.code)
            assert.equal("", r.stdout)
            assert.equal("tide: --input: spec/fixtures/cli/does_not_exist.jsonl: no such file or directory\n",
                         r.stderr)
        end)
    end)

    describe("task failures", function()
        it("--task-timeout fails a sleeping task with ETIMEDOUT", function()
            local t0 = hrtime()
            local r = tide({ "run", PIPE .. "sleepy.lua", "--input", DATA .. "timeout.jsonl", "--task-timeout", "0.2" })
            local elapsed = hrtime() - t0
            assert.equal(1, r.code)
            local got = by_id(jsonl(r.stdout))
            assert.same({ id = "quick", status = "done", output = { slept = 0.01, peak = 2 } }, got.quick)
            assert.same({ id = "stuck", status = "failed", error = {
                code = "ETIMEDOUT", task = "nap", attempts = 1, message = "task 'nap' timed out after 0.2 s",
            }, input = { id = "stuck", secs = 5 } }, got.stuck)
            assert.is_true(elapsed < 3, "took " .. elapsed .. " s")
        end)

        it("a task returning a function or a cyclic table fails with EVALUE", function()
            local r = tide({ "run", PIPE .. "evalue.lua", "--input", DATA .. "evalue.jsonl" })
            assert.equal(1, r.code)
            local got = by_id(jsonl(r.stdout))
            assert.same({ id = "fine", status = "done", output = { kind = "plain" } }, got.fine)
            for id, text in pairs({ ["function"] = "function", bare = "function", cycle = "cycl" }) do
                local e = got[id].error
                assert.equal("failed", got[id].status)
                assert.equal("EVALUE", e.code)
                assert.equal("make", e.task)
                assert.equal(1, e.attempts)
                assert.matches("^task 'make' returned a value JSON cannot carry: ", e.message)
                assert.matches(text, e.message, 1, true)
            end
        end)
    end)

    describe("input from stdin", function()
        local text = proc.slurp(DATA .. "ids.jsonl")

        it("with --input -", function()
            local r = tide({ "run", PIPE .. "echo.lua", "--input", "-" }, text)
            assert.equal(0, r.code)
            assert.same({ "3", "40", "6", "7", "8", "a", "last" }, keys(by_id(jsonl(r.stdout))))
        end)

        it("without --input", function()
            local r = tide({ "run", PIPE .. "echo.lua" }, text)
            assert.equal(0, r.code)
            local got = by_id(jsonl(r.stdout))
            assert.same({ "3", "40", "6", "7", "8", "a", "last" }, keys(got))
            assert.same({ 1, 2 }, got["7"].output)
        end)

        it("is processed as it arrives, not when stdin closes", function()
            -- A line read from a pipe that stays open must run at once,
            -- not when the next line arrives 2 s later.
            local tmp = os.tmpname()
            finally(function() os.remove(tmp) end)
            local writer = [[(echo '{"id":"early"}'; sleep 2; echo '{"id":"late"}')]]
            local cmd = ("%s | %s run %s >%s 2>/dev/null")
                :format(writer, shquote(proc.bin), shquote(PIPE .. "stamp.lua"), shquote(tmp))
            os.execute(cmd)
            local got = by_id(jsonl(proc.slurp(tmp)))
            assert.same({ "early", "late" }, keys(got))
            local gap = got.late.output.at - got.early.output.at
            assert.is_true(gap > 1.5, ("'early' ran only %.3f s before 'late'"):format(gap))
        end)
    end)

    it("--concurrency 2 with 50 sleeping inputs gives 50 outputs, at most 2 running", function()
        local r = tide({ "run", PIPE .. "sleepy.lua", "--input", DATA .. "fifty.jsonl", "--concurrency", "2" })
        assert.equal(0, r.code)
        local got = by_id(jsonl(r.stdout))
        local peak = 0
        for i = 1, 50 do
            local rec = got[tostring(i)]
            assert.equal("done", rec.status)
            assert.equal(i, rec.output.n)
            peak = math.max(peak, rec.output.peak)
        end
        assert.equal(50, #keys(got))
        assert.equal(2, peak)
    end)

    it("--priority lifo runs the newest input first, low (the default) the oldest", function()
        local function order(args)
            local r = tide(args, "1\n2\n3\n4\n5\n")
            assert.equal(0, r.code)
            local ids = {}
            for i, rec in ipairs(jsonl(r.stdout)) do ids[i] = rec.id end
            return table.concat(ids, " ")
        end
        assert.equal("5 4 3 2 1", order({ "run", PIPE .. "echo.lua", "--priority", "lifo" }))
        assert.equal("1 2 3 4 5", order({ "run", PIPE .. "echo.lua" }))
        assert.equal("1 2 3 4 5", order({ "run", PIPE .. "echo.lua", "--priority", "high" }))
        assert.equal(2, tide({ "run", PIPE .. "echo.lua", "--priority", "urgent" }, "1\n").code)
    end)

    describe("tide graph", function()
        it("prints DOT that graphviz parses, and Mermaid", function()
            local r = tide({ "graph", "examples/routing.lua" })
            assert.equal(0, r.code)
            assert.matches('^digraph "routing"', r.stdout)
            local tmp = os.tmpname()
            finally(function() os.remove(tmp) end)
            proc.write(tmp, r.stdout)
            -- graphviz comes with scripts/deps.sh; it must accept the text.
            local ok = os.execute("dot -Tsvg " .. shquote(tmp) .. " >/dev/null 2>&1")
            assert.is_true(ok == true or ok == 0, "dot rejected the output")
            local m = tide({ "graph", "examples/quickstart.lua", "--format", "mermaid" })
            assert.equal(0, m.code)
            assert.matches("^flowchart LR\n", m.stdout)
            local h = tide({ "graph", "examples/routing.lua", "--format", "html" })
            assert.equal(0, h.code)
            assert.matches("^<!DOCTYPE html>", h.stdout)
            assert.is_truthy(h.stdout:find('data-task="kind"', 1, true))
        end)

        it("exits 2 on a bad pipeline, a bad format or no file", function()
            local r = tide({ "graph", PIPE .. "cycle.lua" })
            assert.equal(2, r.code)
            assert.matches("cycle: ", r.stderr)
            assert.equal(2, tide({ "graph", "examples/routing.lua", "--format", "svg" }).code)
            assert.matches("must be dot, mermaid or html",
                tide({ "graph", "examples/routing.lua", "--format", "svg" }).stderr)
            assert.equal(2, tide({ "graph" }).code)
        end)
    end)

    it("exec tasks write their logs under --output DIR/logs", function()
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local r = tide({ "run", PIPE .. "exec.lua", "--output", dir }, "\"a\"\n\"fail\"\n")
        assert.equal(1, r.code)
        local done = read_jsonl(dir .. "/echo.jsonl")
        assert.equal(1, #done)
        assert.equal("got a\n", done[1].output.stdout)
        assert.equal("got a\n", proc.slurp(done[1].output.log_stdout))
        assert.equal(dir .. "/logs/", done[1].output.log_stdout:sub(1, #dir + 6))
        local failed = read_jsonl(dir .. "/failed.jsonl")
        assert.matches("exited with code 4", failed[1].error.message)
    end)

    it("runs sync tasks on --threads workers and closes their worker_local values at the end", function()
        local log = os.tmpname()
        finally(function() os.remove(log) end)
        local lines = {}
        for i = 1, 40 do lines[i] = tostring(i) end
        local r = tide({ "run", PIPE .. "worker_local.lua", "--threads", "2" },
            table.concat(lines, "\n") .. "\n", { TIDE_SPEC_CLOSE_LOG = log })
        assert.equal(0, r.code, r.stderr)
        local recs = jsonl(r.stdout)
        assert.equal(40, #recs)
        -- close(value) ran for each worker thread's value and the loop's,
        -- each having counted its own uses.
        local closed, uses = 0, 0
        for line in io.lines(log) do
            closed = closed + 1
            uses = uses + tonumber(line:match(" (%d+)$"))
        end
        assert.equal(3, closed)
        assert.equal(80, uses) -- 40 on the workers, 40 on the loop thread
    end)

    it("runs examples/native/dedup.lua: keys from C, duplicates marked", function()
        local r = tide({ "run", "examples/native/dedup.lua", "--input", "examples/native/records.jsonl",
                         "--concurrency", "1" })
        assert.equal(1, r.code) -- the empty record fails in the C function
        local got = by_id(jsonl(r.stdout))
        assert.equal(got.a.output.key, got.c.output.key)
        assert.equal("a", got.c.output.duplicate_of)
        assert.is_nil(got.a.output.duplicate_of)
        assert.are_not.equal(got.a.output.key, got.b.output.key)
        assert.equal("empty record", got.d.error.message)
        assert.equal("key", got.d.error.task)
    end)

    describe("duplicate ids", function()
        -- A valid line is never refused for another line's id: the later
        -- one runs as "<id>#<line>" and stderr says so.
        it("run the later line under '<id>#<line>'", function()
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "duplicate_ids.jsonl" })
            assert.equal(0, r.code)
            assert.same({
                x = { id = "x", status = "done", output = { id = "x", v = 1 } },
                ["x#2"] = { id = "x#2", status = "done", output = { id = "x", v = 2 } },
            }, by_id(jsonl(r.stdout)))
            assert.matches("tide: line 2: id 'x' is already taken by an earlier line; this input runs as 'x#2'",
                           r.stderr, 1, true)
        end)

        it("do not depend on timing (--concurrency 1: the first one already finished)", function()
            local r = tide({ "run", PIPE .. "echo.lua", "--input", DATA .. "duplicate_ids.jsonl",
                             "--concurrency", "1" })
            assert.equal(0, r.code)
            assert.same({ "x", "x#2" }, keys(by_id(jsonl(r.stdout))))
        end)
    end)

    it("--output refuses a sink name that is not a plain file name", function()
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local r = tide({ "run", PIPE .. "path_sink.lua", "--output", dir .. "/out" }, "1\n")
        assert.equal(2, r.code)
        assert.matches("sink task name '../escape' cannot be used as a file name", r.stderr, 1, true)
        assert.is_nil(io.open(dir .. "/escape.jsonl"))
    end)

    it("--output keeps both a sink named 'failed' and the failed inputs", function()
        -- A sink named 'failed' would share DIR/failed.jsonl with the
        -- failures: tide refuses it up front (or keeps both records).
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local r = tide({ "run", PIPE .. "failed_sink.lua", "--input", DATA .. "failed_sink.jsonl", "--output", dir })
        if r.code ~= 2 then -- refusing the name up front is fine too
            assert.equal(1, r.code)
            -- Wherever tide puts them, both records must be in DIR.
            local all = {}
            local ls = assert(io.popen("ls " .. shquote(dir)))
            for name in ls:lines() do all[#all + 1] = proc.slurp(dir .. "/" .. name) or "" end
            ls:close()
            local text = table.concat(all)
            assert.matches('"id":"kept"', text, 1, true)
            assert.matches('"id":"broken"', text, 1, true)
        end
    end)

    it("exits 143 on SIGTERM even while a sync task is stuck in a compiled loop", function()
        local tmp = proc.tmpdir()
        finally(function() proc.rmrf(tmp) end)
        local f = function(name) return shquote(tmp .. "/" .. name) end
        local script = table.concat({
            -- 3e10 iterations: tens of seconds, far past the test's patience.
            ("echo 3e10 | timeout -k 1 10 %s run %s >%s 2>%s & p=$!"):format(
                shquote(proc.bin), shquote(PIPE .. "stuck_sync.lua"), f("out"), f("err")),
            "sleep 1",
            "t0=$(date +%s%N)",
            "pkill -TERM -P $p 2>/dev/null || kill -TERM $p",
            "wait $p; echo $? >" .. f("rc"),
            "echo $(( ($(date +%s%N) - t0) / 1000000 )) >" .. f("ms"),
        }, "\n")
        -- Without the sanitizer preload of make check: pkill hangs under it
        -- (build-asan/tide carries its own sanitizer runtime).
        os.execute("env -u LD_PRELOAD sh -c " .. shquote(script) .. " >/dev/null 2>&1")
        local err = proc.slurp(tmp .. "/err") or ""
        assert.equal(143, tonumber(proc.slurp(tmp .. "/rc")), err)
        assert.is_true(tonumber(proc.slurp(tmp .. "/ms")) < 3000, "took " .. proc.slurp(tmp .. "/ms") .. " ms")
        assert.matches("ECANCELED", proc.slurp(tmp .. "/out"))
    end)

    describe("SIGINT and SIGTERM", function()
        -- Four runs on inputs that sleep 0.01 s, 0.02 s or 10 s, signalled
        -- once the short ones are written: (1) to stdout and (2) to --output with SIGINT, (3) to
        -- stdout with SIGTERM, (4) reading a stdin pipe that stays open
        -- for 6 s, with SIGINT. The script notes when each run ended.
        local tmp, res

        lazy_setup(function()
            tmp = proc.tmpdir()
            local bin, pipe, data = shquote(proc.bin), shquote(PIPE .. "sleepy.lua"), shquote(DATA .. "sigint.jsonl")
            local function f(name) return shquote(tmp .. "/" .. name) end
            local lines = {
                ("%s run %s --input %s >%s 2>%s & p1=$!"):format(bin, pipe, data, f("out1"), f("err1")),
                ("%s run %s --input %s --output %s >%s 2>%s & p2=$!"):format(bin, pipe, data, f("dir"), f("out2"),
                                                                             f("err2")),
                ("%s run %s --input %s >%s 2>%s & p3=$!"):format(bin, pipe, data, f("out3"), f("err3")),
                -- The writer keeps stdin open after the data (until it is
                -- killed below): tide itself must stop at once.
                ("sh -c 'echo $$ >%s; cat %s; exec sleep 60' | sh -c 'echo $$ >%s; exec %s run %s >%s 2>%s' & p4=$!")
                    :format(f("pidw"), data, f("pid4"), bin, pipe, f("out4"), f("err4")),
                -- Signal once every run wrote its fast results (at most
                -- 30 s: a sanitizer build on a loaded machine starts
                -- slowly), and time each exit from the signal.
                "i=0; while [ $i -lt 600 ]; do",
                ("  grep -q fast-2 %s 2>/dev/null && grep -q fast-2 %s 2>/dev/null && grep -q fast-2 %s 2>/dev/null &&")
                    :format(f("out1"), f("dir") .. "/nap.jsonl", f("out3")),
                ("  grep -q fast-2 %s 2>/dev/null && [ -s %s ] && break"):format(f("out4"), f("pid4")),
                "  sleep 0.05; i=$((i + 1))",
                "done",
                "t0=$(date +%s%N)",
                "pid4=$(cat " .. f("pid4") .. ")",
                "kill -INT $p1 $p2 $pid4",
                "kill -TERM $p3",
                -- Time tide's own exit: waiting for the job would also wait
                -- for the writer, which keeps stdin open until killed.
                "while kill -0 $pid4 2>/dev/null; do sleep 0.02; done",
                "echo $(( ($(date +%s%N) - t0) / 1000000 )) >" .. f("ms4"),
                "kill $(cat " .. f("pidw") .. ")",
            }
            for i = 1, 3 do
                lines[#lines + 1] = ("wait $p%d; echo $? >%s; echo $(( ($(date +%%s%%N) - t0) / 1000000 )) >%s")
                    :format(i, f("rc" .. i), f("ms" .. i))
            end
            -- Last, so that the writer's life does not count in the times
            -- of runs 1 to 3.
            lines[#lines + 1] = "wait $p4; echo $? >" .. f("rc4")
            lines[#lines + 1] = "wait"
            os.execute("sh -c " .. shquote(table.concat(lines, "\n")) .. " >/dev/null 2>&1")
            res = {}
            for i = 1, 4 do
                res[i] = {
                    code = tonumber(proc.slurp(tmp .. "/rc" .. i)),
                    stdout = proc.slurp(tmp .. "/out" .. i) or "",
                    stderr = proc.slurp(tmp .. "/err" .. i) or "",
                    seconds = (tonumber(proc.slurp(tmp .. "/ms" .. i)) or 1e6) / 1000,
                }
            end
        end)

        lazy_teardown(function() proc.rmrf(tmp) end)

        local function check_stdout(r)
            local got = by_id(jsonl(r.stdout))
            assert.same({ "fast-1", "fast-2", "slow-1", "slow-2", "slow-3" }, keys(got))
            assert.same({ slept = 0.01, peak = 5 }, got["fast-1"].output)
            assert.same({ slept = 0.02, peak = 5 }, got["fast-2"].output)
            for _, id in ipairs({ "slow-1", "slow-2", "slow-3" }) do
                assert.equal("failed", got[id].status)
                assert.equal("ECANCELED", got[id].error.code)
            end
        end

        it("SIGINT exits 130 after writing the finished results to stdout", function()
            assert.equal(130, res[1].code)
            check_stdout(res[1])
            assert.matches("tide: 2 done, 3 failed", res[1].stderr, 1, true)
        end)

        it("SIGINT exits 130 after writing the finished results to --output", function()
            assert.equal(130, res[2].code)
            assert.equal("", res[2].stdout)
            local done = by_id(read_jsonl(tmp .. "/dir/nap.jsonl"))
            assert.same({ "fast-1", "fast-2" }, keys(done))
            assert.same({ slept = 0.02, peak = 5 }, done["fast-2"].output)
            local failed = by_id(read_jsonl(tmp .. "/dir/failed.jsonl"))
            assert.same({ "slow-1", "slow-2", "slow-3" }, keys(failed))
            assert.same({ id = "slow-2", secs = 10 }, failed["slow-2"].input)
            assert.equal("ECANCELED", failed["slow-2"].error.code)
        end)

        it("SIGTERM exits 143 after writing the finished results", function()
            assert.equal(143, res[3].code)
            check_stdout(res[3])
        end)

        it("stops promptly instead of waiting for the cancelled tasks' sleeps", function()
            for i = 1, 3 do
                assert.is_true(res[i].seconds < 4, ("run %d took %.1f s"):format(i, res[i].seconds))
            end
        end)

        it("SIGINT stops promptly while stdin is still open", function()
            -- A pipe on stdin is watched with uv_poll, so closing the
            -- reader on SIGINT does not wait for the writer.
            assert.equal(130, res[4].code)
            assert.is_true(res[4].seconds < 4, ("took %.1f s"):format(res[4].seconds))
        end)
    end)
end)
