--- End-to-end specs of the output promise of `tide run`: every input ends
-- as whole lines in exactly one place (its sinks' files, failed.jsonl,
-- rejects.jsonl or dropped.jsonl; stdout without --output), values come
-- out as they went in, and anything else is a non-zero exit with a
-- message. The real binary (TIDE_BUILD/tide) runs as a process.
local proc = require "helpers.proc"
local core = require "tide.core"

local json = core.json
local shquote = proc.shquote
local tide = proc.tide

local PIPE = "spec/fixtures/pipelines/"


--- Every line of text (each ended by "\n") decoded; fails on a torn or
-- malformed line.
local function jsonl(text, what)
    local recs = {}
    if text == nil or text == "" then return recs end
    assert.equal("\n", text:sub(-1), (what or "text") .. " does not end with a newline")
    local n = 0
    for line in text:gmatch("([^\n]*)\n") do
        n = n + 1
        local v, err = json.decode(line)
        assert(v ~= nil, ("%s line %d is not JSON: %q (%s)"):format(what or "text", n, line, tostring(err)))
        recs[n] = v
    end
    return recs
end


local function file(dir, name)
    return jsonl(proc.slurp(dir .. "/" .. name) or "", name)
end


-- id -> record; an id may appear only once.
local function by_id(recs)
    local t = {}
    for _, r in ipairs(recs) do
        assert.is_nil(t[r.id], "id '" .. tostring(r.id) .. "' appears twice")
        t[r.id] = r
    end
    return t
end


-- id -> output of a sink file's records.
local function outputs_of(dir, name)
    local t = {}
    for id, r in pairs(by_id(file(dir, name))) do t[id] = r.output end
    return t
end


local function sorted_ids(recs)
    local ids = {}
    for _, r in ipairs(recs) do ids[#ids + 1] = r.id end
    table.sort(ids)
    return ids
end


local function lines_of(tbl)
    local out = {}
    for _, v in ipairs(tbl) do out[#out + 1] = json.encode(v) end
    return table.concat(out, "\n") .. "\n"
end


local function exists(path)
    return proc.slurp(path) ~= nil
end


describe("tide run --output with routers", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("writes each result to the file of the sink that produced it (numbers and tables)", function()
        local inputs = {}
        for i = 1, 40 do inputs[i] = { n = i } end
        local r = tide({ "run", PIPE .. "route_two.lua", "--output", dir, "--concurrency", "3" },
                       lines_of(inputs))
        assert.equal(0, r.code, r.stderr)
        assert.not_matches("internal error", r.stderr)
        local even, odd = outputs_of(dir, "even.jsonl"), outputs_of(dir, "odd.jsonl")
        for i = 1, 40 do
            local id = tostring(i)
            if i % 2 == 0 then
                assert.same({ half = i / 2 }, even[id])
                assert.is_nil(odd[id])
            else
                assert.equal(i, odd[id])
                assert.is_nil(even[id])
            end
        end
        assert.same({}, file(dir, "failed.jsonl"))
        assert.same({}, file(dir, "dropped.jsonl"))
        assert.matches("tide: 40 done, 0 failed, 0 rejected", r.stderr, 1, true)
    end)

    it("handles three sinks, a router behind a router, `when`, several and no branches", function()
        local r = tide({ "run", PIPE .. "route_three.lua", "--output", dir }, lines_of({
            { n = 1, to = "a" },
            { n = 20, to = { "a", "inner" } },
            { n = 3, to = "inner" },
            { n = 4, to = json.array({}) },
            { n = 5, to = "c" },
            { n = 6, to = "c", skip = true },
            { n = 7, to = { "a", "inner", "c" } },
        }))
        assert.equal(0, r.code, r.stderr)
        assert.same({ ["1"] = "a1", ["2"] = "a20", ["7"] = "a7" }, outputs_of(dir, "a.jsonl"))
        assert.same({ ["2"] = { b = 20 } }, outputs_of(dir, "b.jsonl"))
        assert.same({ ["3"] = -3, ["7"] = -7 }, outputs_of(dir, "b_small.jsonl"))
        assert.same({ ["5"] = 500, ["6"] = { n = 6, skip = true, to = "c" }, ["7"] = 700 },
                    outputs_of(dir, "c.jsonl"))
        -- Routers that choose nothing: the input is kept, not lost.
        assert.same({ { id = "4", input = { n = 4, to = {} } } }, file(dir, "dropped.jsonl"))
        assert.matches("6 done, 0 failed, 0 rejected, 1 dropped", r.stderr, 1, true)
    end)

    it("handles maps below a router, with and without a gather", function()
        local r = tide({ "run", PIPE .. "route_map.lua", "--output", dir }, lines_of({
            { to = "split", items = { 1, 2, 3 } },
            { to = "fan", items = { 1, 2 } },
            { to = "plain", items = { 1 } },
            { to = { "split", "fan", "plain" }, items = { 2 } },
            { to = "fan", items = json.array({}) },
        }))
        assert.equal(0, r.code, r.stderr)
        assert.same({ ["1"] = 14, ["4"] = 4 }, outputs_of(dir, "sum.jsonl"))
        assert.same({ ["2"] = { { v = 1 }, { v = 2 } }, ["4"] = { { v = 2 } }, ["5"] = {} },
                    outputs_of(dir, "each.jsonl"))
        assert.same({ ["3"] = 1, ["4"] = 1 }, outputs_of(dir, "plain.jsonl"))
    end)

    it("gives the value of the one sink that ran on stdout, also with a map behind the router", function()
        local r = tide({ "run", PIPE .. "route_map.lua" }, lines_of({
            { to = "plain", items = { 1, 2 } },
            { to = "fan", items = { 3 } },
        }))
        assert.equal(0, r.code, r.stderr)
        local got = by_id(jsonl(r.stdout))
        assert.equal(2, got["1"].output)
        assert.same({ { v = 3 } }, got["2"].output)
    end)
end)


describe("tide run --output into a directory that holds results", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    local INPUTS = lines_of({
        { id = "a", v = 1 }, { id = "b", v = 2, fail = "b" }, { id = "c", v = 3 },
        { id = "d", v = 4, fail = "d" }, { id = "e", v = 5, fail = "e" },
    })

    local function first_run()
        local r = tide({ "run", PIPE .. "echo.lua", "--output", dir }, INPUTS)
        assert.equal(1, r.code, r.stderr)
        assert.same({ "a", "c" }, sorted_ids(file(dir, "echo.jsonl")))
        assert.same({ "b", "d", "e" }, sorted_ids(file(dir, "failed.jsonl")))
    end

    it("re-running DIR/failed.jsonl into DIR keeps the earlier results and adds the new ones", function()
        first_run()
        local r = tide({ "run", PIPE .. "echo.lua", "--input", dir .. "/failed.jsonl", "--output", dir },
                       nil, { TIDE_SPEC_FIXED = "1" })
        assert.equal(0, r.code, r.stderr)
        assert.matches("tide: 3 done, 0 failed, 0 rejected", r.stderr, 1, true)
        local out = by_id(file(dir, "echo.jsonl"))
        assert.same({ "a", "b", "c", "d", "e" }, sorted_ids(file(dir, "echo.jsonl")))
        assert.same({ id = "d", v = 4, fail = "d" }, out.d.output)
        assert.same({}, file(dir, "failed.jsonl"))
        assert.is_false(exists(dir .. "/failed.jsonl.next"))
    end)

    it("leaves in failed.jsonl exactly what still fails", function()
        first_run()
        -- "Fix" b and e only: d still fails.
        local f = assert(io.open(dir .. "/failed.jsonl"))
        local text = f:read("*a")
        f:close()
        text = text:gsub('"fail":"b"', '"fixed":"b"'):gsub('"fail":"e"', '"fixed":"e"')
        proc.write(dir .. "/failed.jsonl", text)
        local r = tide({ "run", PIPE .. "echo.lua", "--input", dir .. "/failed.jsonl", "--output", dir })
        assert.equal(1, r.code, r.stderr)
        assert.same({ "a", "b", "c", "e" }, sorted_ids(file(dir, "echo.jsonl")))
        local failed = file(dir, "failed.jsonl")
        assert.same({ "d" }, sorted_ids(failed))
        assert.same({ id = "d", v = 4, fail = "d" }, failed[1].input)
        -- And again: still only d.
        local r2 = tide({ "run", PIPE .. "echo.lua", "--input", dir .. "/failed.jsonl", "--output", dir })
        assert.equal(1, r2.code)
        assert.same({ "d" }, sorted_ids(file(dir, "failed.jsonl")))
        assert.same({ "a", "b", "c", "e" }, sorted_ids(file(dir, "echo.jsonl")))
    end)

    it("refuses (exit 2) to write over results without --append or --overwrite, and changes nothing", function()
        first_run()
        local before = proc.slurp(dir .. "/echo.jsonl") .. proc.slurp(dir .. "/failed.jsonl")
        local r = tide({ "run", PIPE .. "echo.lua", "--output", dir }, INPUTS)
        assert.equal(2, r.code)
        assert.matches("already holds results (echo.jsonl, failed.jsonl): add --append to add to them, "
                       .. "--overwrite to replace them", r.stderr, 1, true)
        assert.equal(before, proc.slurp(dir .. "/echo.jsonl") .. proc.slurp(dir .. "/failed.jsonl"))
    end)

    it("--append adds to the files, --overwrite replaces them", function()
        first_run()
        local r = tide({ "run", PIPE .. "echo.lua", "--output", dir, "--append" },
                       lines_of({ { id = "f", v = 6 }, { id = "g", fail = "g" } }))
        assert.equal(1, r.code, r.stderr)
        assert.same({ "a", "c", "f" }, sorted_ids(file(dir, "echo.jsonl")))
        assert.same({ "b", "d", "e", "g" }, sorted_ids(file(dir, "failed.jsonl")))
        local r2 = tide({ "run", PIPE .. "echo.lua", "--output", dir, "--overwrite" },
                        lines_of({ { id = "h", v = 8 } }))
        assert.equal(0, r2.code, r2.stderr)
        assert.same({ "h" }, sorted_ids(file(dir, "echo.jsonl")))
        assert.same({}, file(dir, "failed.jsonl"))
    end)

    it("refuses option mistakes that would lose results, with exit 2", function()
        first_run()
        local before = proc.slurp(dir .. "/echo.jsonl") .. proc.slurp(dir .. "/failed.jsonl")
        for _, case in ipairs({
            { { "--input", dir .. "/failed.jsonl", "--output", dir, "--overwrite" }, "would erase" },
            { { "--input", dir .. "/echo.jsonl", "--output", dir, "--append" },
              "which this run writes its results to" },
            { { "--output", dir, "--append", "--overwrite" }, "cannot be given together" },
            { { "--append" }, "--append needs --output DIR" },
        }) do
            local args = { "run", PIPE .. "echo.lua" }
            for _, a in ipairs(case[1]) do args[#args + 1] = a end
            local r = tide(args, "")
            assert.equal(2, r.code, table.concat(case[1], " "))
            assert.matches(case[2], r.stderr, 1, true)
        end
        assert.equal(before, proc.slurp(dir .. "/echo.jsonl") .. proc.slurp(dir .. "/failed.jsonl"))
    end)

    it("an interrupted re-run keeps every failure not run yet in failed.jsonl", function()
        -- 30 failures that sleep 0.3 s each, two at a time: SIGINT after
        -- 1 s stops the re-run with most of them unread.
        local recs = {}
        for i = 1, 30 do
            recs[i] = { id = "s" .. i, error = { code = "ETASK", message = "earlier" },
                        input = { n = i, secs = 0.3 } }
        end
        proc.write(dir .. "/failed.jsonl", lines_of(recs))
        local script = ("%s run %s --input %s --output %s --concurrency 2 >/dev/null 2>%s & p=$!; "
                        .. "sleep 1; kill -INT $p; wait $p; echo $? >%s")
            :format(shquote(proc.bin), shquote(PIPE .. "sleepy.lua"), shquote(dir .. "/failed.jsonl"),
                    shquote(dir), shquote(dir .. "/err"), shquote(dir .. "/rc"))
        os.execute("sh -c " .. shquote(script))
        assert.equal(130, tonumber(proc.slurp(dir .. "/rc")), proc.slurp(dir .. "/err"))
        local done, failed = file(dir, "nap.jsonl"), file(dir, "failed.jsonl")
        assert.is_true(#done >= 2 and #done < 30, #done .. " done")
        -- Every input is in exactly one of the two files.
        local seen = {}
        for _, rec in ipairs(done) do seen[rec.id] = (seen[rec.id] or 0) + 1 end
        for _, rec in ipairs(failed) do
            seen[rec.id] = (seen[rec.id] or 0) + 1
            assert.is_table(rec.input) -- still re-runnable
        end
        for i = 1, 30 do assert.equal(1, seen["s" .. i], "s" .. i) end
        assert.is_false(exists(dir .. "/failed.jsonl.next"))
    end)
end)


describe("tide run writes whole lines only", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("--append cuts a torn last line before writing, and says so", function()
        proc.write(dir .. "/echo.jsonl", '{"id":"x","output":1}\n{"id":"y","outp')
        local r = tide({ "run", PIPE .. "echo.lua", "--output", dir, "--append" },
                       lines_of({ { id = "z", v = 3 } }))
        assert.equal(0, r.code, r.stderr)
        assert.matches("echo.jsonl: cut a torn last line (15 bytes)", r.stderr, 1, true)
        assert.same({ { id = "x", output = 1 }, { id = "z", output = { id = "z", v = 3 } } },
                    file(dir, "echo.jsonl"))
    end)

    it("leaves no torn line when killed with SIGKILL mid-run", function()
        local recs = {}
        -- About 2 s of work (50 000 sleeps of 2 ms, 50 at a time).
        for i = 1, 50000 do recs[i] = { n = i, secs = 0.002 } end
        proc.write(dir .. "/in.jsonl", lines_of(recs))
        local script = ("%s run %s --input %s --output %s/out --concurrency 50 >/dev/null 2>&1 & p=$!; "
                        .. "sleep 0.7; kill -KILL $p; wait $p")
            :format(shquote(proc.bin), shquote(PIPE .. "sleepy.lua"), shquote(dir .. "/in.jsonl"), shquote(dir))
        os.execute("sh -c " .. shquote(script))
        local done = file(dir .. "/out", "nap.jsonl") -- fails on a torn line
        assert.is_true(#done > 0 and #done < 50000, #done .. " lines")
    end)
end)


describe("tide run reads long lines in linear time", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("a 30 MiB line takes seconds, not a minute", function()
        local f = assert(io.open(dir .. "/in.jsonl", "wb"))
        f:write('{"id":"big","s":"', string.rep("a", 30 * 1024 * 1024), '"}\n{"id":"small"}\n')
        f:close()
        local t0 = core.hrtime()
        local r = tide({ "run", PIPE .. "echo.lua", "--input", dir .. "/in.jsonl", "--output", dir .. "/o" })
        local secs = core.hrtime() - t0
        assert.equal(0, r.code, r.stderr)
        assert.is_true(secs < 15, ("%.1f s"):format(secs)) -- 58 s when it was quadratic
        local out = outputs_of(dir .. "/o", "echo.jsonl")
        assert.equal(30 * 1024 * 1024, #out.big.s)
    end)

    it("rejects a line over --max-line-bytes with its number, and carries on", function()
        local text = '{"id":"a"}\n{"id":"long","s":"' .. string.rep("x", 5000) .. '"}\n{"id":"c"}\n'
        local r = tide({ "run", PIPE .. "echo.lua", "--output", dir, "--max-line-bytes", "1000" }, text)
        assert.equal(1, r.code)
        assert.same({ "a", "c" }, sorted_ids(file(dir, "echo.jsonl")))
        local rej = file(dir, "rejects.jsonl")
        assert.equal(1, #rej)
        assert.equal(2, rej[1].line)
        assert.matches("5020 bytes long, more than %-%-max%-line%-bytes %(1000%)", rej[1].error)
        assert.matches("tide: line 2: the line is 5020 bytes long", r.stderr, 1, true)
    end)

    it("--max-line-bytes needs a whole number", function()
        for _, v in ipairs({ "0", "-5", "x", "1.5" }) do
            local r = tide({ "run", PIPE .. "echo.lua", "--max-line-bytes", v }, "")
            assert.equal(2, r.code, v)
            assert.matches("--max-line-bytes needs a whole number", r.stderr, 1, true)
        end
    end)
end)


describe("outputs JSON cannot carry", function()
    local function check_rec(e)
        assert.equal("EVALUE", e.code)
        assert.equal("emit", e.task)
        assert.equal(2, e.attempts) -- retried per its policy, then failed
    end

    it("fail the attempt with EVALUE and a full error record in tide run", function()
        local r = tide({ "run", PIPE .. "bad_output.lua" }, lines_of({
            { id = "u", bad = "utf8" }, { id = "f", bad = "function" }, { id = "c", bad = "cycle" },
            { id = "ok", v = 1 },
        }))
        assert.equal(1, r.code)
        local got = by_id(jsonl(r.stdout))
        assert.equal("done", got.ok.status)
        for _, id in ipairs({ "u", "f", "c" }) do
            assert.equal("failed", got[id].status, id)
            check_rec(got[id].error)
        end
        assert.matches("a function", got.f.error.message)
        assert.matches("tide: 1 done, 3 failed", r.stderr, 1, true)
    end)

    it("fail the job in tide serve too", function()
        local serve = require "helpers.serve"
        local s = serve.start(nil, PIPE .. "bad_output.lua")
        finally(function() serve.stop(s) end)
        for _, bad in ipairs({ "utf8", "function", "cycle" }) do
            local status, body = serve.http(s, "POST", "/v1/jobs?wait=5",
                                            json.encode({ id = bad, input = { bad = bad } }))
            assert.equal(200, status, body)
            local rec = json.decode(body)
            assert.equal("failed", rec.status)
            check_rec(rec.error)
        end
    end)
end)


describe("ids", function()
    it("a line without an id never collides with an id given on another line", function()
        -- Line 2 has no id (its line number, "2", was taken by line 1);
        -- line 4 gives the id "3", which line 3 runs as already.
        local r = tide({ "run", PIPE .. "echo.lua" }, lines_of({
            { id = "2", v = 1 }, { v = 2 }, { v = 3 }, { id = "3", v = 4 },
        }))
        assert.equal(0, r.code, r.stderr)
        local got = by_id(jsonl(r.stdout))
        assert.equal(1, got["2"].output.v)
        assert.equal(2, got["2#2"].output.v)
        assert.equal(3, got["3"].output.v)
        assert.equal(4, got["3#4"].output.v)
        assert.matches("line 4: id '3' is already taken by an earlier line; this input runs as '3#4'",
                       r.stderr, 1, true)
    end)

    it("numeric ids keep every digit", function()
        local r = tide({ "run", PIPE .. "echo.lua" },
            '{"id":123456789012345,"v":1}\n{"id":123456789012346,"v":2}\n'
            .. '{"id":12345678901234567,"v":3}\n{"id":12345678901234568,"v":4}\n{"id":1.5,"v":5}\n')
        assert.equal(0, r.code, r.stderr)
        local got = by_id(jsonl(r.stdout))
        assert.equal(1, got["123456789012345"].output.v)
        assert.equal(2, got["123456789012346"].output.v)
        assert.equal(3, got["12345678901234567"].output.v)
        assert.equal(4, got["12345678901234568"].output.v)
        assert.equal(5, got["1.5"].output.v)
    end)

    it("an id that is not a string or a number gives way to the line number, with a warning", function()
        local r = tide({ "run", PIPE .. "echo.lua" }, '{"id":{"x":1}}\n{"id":null}\n{"id":""}\n')
        assert.equal(0, r.code)
        assert.same({ "1", "2", "3" }, sorted_ids(jsonl(r.stdout)))
        assert.matches("line 1: the id is a table", r.stderr, 1, true)
        assert.matches("line 2: the id is null", r.stderr, 1, true)
        assert.matches("line 3: the id is an empty string", r.stderr, 1, true)
    end)
end)


describe("write errors", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("stdout that cannot be written exits 3 with the error", function()
        local r = proc.tide({ "run", PIPE .. "echo.lua", "--output", "/dev/full/x" }, '{"v":1}\n')
        assert.equal(3, r.code)
        local err = dir .. "/err"
        local rc = os.execute(("%s run %s </dev/null >/dev/full 2>%s; exit $?")
            :format(shquote(proc.bin), shquote(PIPE .. "echo.lua"), shquote(err)))
        -- No input: nothing to write, so nothing fails.
        assert.is_true(rc == 0 or rc == true)
        local code = os.execute(("printf '{\"v\":1}\\n' | %s run %s >/dev/full 2>%s")
            :format(shquote(proc.bin), shquote(PIPE .. "echo.lua"), shquote(err)))
        assert.is_true(code == 3 * 256 or code == 3, tostring(code))
        local text = proc.slurp(err)
        assert.matches("cannot write results: stdout: No space left on device", text, 1, true)
        assert.matches("tide: 0 done", text, 1, true)
    end)

    it("a file that reaches its size limit stops the run with exit 3, whole lines only", function()
        local recs = {}
        for i = 1, 3000 do recs[i] = { v = i, pad = string.rep("p", 40) } end
        proc.write(dir .. "/in.jsonl", lines_of(recs))
        -- 64 KiB per file (ulimit -f counts 512-byte blocks): EFBIG.
        local script = ("trap '' XFSZ; ulimit -f 128; %s run %s --input %s --output %s/o 2>%s; echo $? >%s")
            :format(shquote(proc.bin), shquote(PIPE .. "echo.lua"), shquote(dir .. "/in.jsonl"),
                    shquote(dir), shquote(dir .. "/err"), shquote(dir .. "/rc"))
        os.execute("sh -c " .. shquote(script))
        local err = proc.slurp(dir .. "/err")
        assert.equal(3, tonumber(proc.slurp(dir .. "/rc")), err)
        assert.matches("cannot write results: " .. dir .. "/o/echo.jsonl: File too large", err, 1, true)
        local written = file(dir .. "/o", "echo.jsonl") -- whole lines only
        assert.is_true(#written > 100 and #written < 3000, #written .. " lines")
        assert.matches("echo.jsonl: " .. #written .. " lines", err, 1, true)
        local done = tonumber(err:match("tide: (%d+) done"))
        assert.is_true(done <= #written, "counted " .. done .. " done, wrote " .. #written)
    end)
end)


describe("flushing", function()
    it("finished results reach the sink file within a second while other inputs run", function()
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        proc.write(dir .. "/in.jsonl", lines_of({
            { n = 1, secs = 0 }, { n = 2, secs = 0 }, { n = 3, secs = 0 }, { n = 4, secs = 0 },
            { n = 5, secs = 0 }, { n = 6, secs = 4 },
        }))
        local script = ("%s run %s --input %s --output %s/o >/dev/null 2>&1 & p=$!; "
                        .. "sleep 1; cp %s/o/nap.jsonl %s/early; wait $p")
            :format(shquote(proc.bin), shquote(PIPE .. "sleepy.lua"), shquote(dir .. "/in.jsonl"),
                    shquote(dir), shquote(dir), shquote(dir))
        os.execute("sh -c " .. shquote(script))
        assert.equal(5, #jsonl(proc.slurp(dir .. "/early"), "early"))
        assert.equal(6, #file(dir .. "/o", "nap.jsonl"))
    end)
end)


describe("tide serve and SIGHUP", function()
    -- SIGHUP used to drain like SIGTERM; it reloads the pipeline's file
    -- now (spec/e2e/reload_spec.lua), and only SIGTERM and SIGINT drain.
    it("reloads instead of draining: the job in flight finishes and the server goes on", function()
        local serve = require "helpers.serve"
        local s = serve.start()
        serve.http(s, "POST", "/v1/jobs", '{"id":"h","input":{"n":5,"sleep":0.6}}')
        local h = io.popen("env -u LD_PRELOAD curl -s " .. shquote(s.url .. "/v1/jobs/h/result?wait=5"))
        os.execute("sleep 0.2")
        os.execute("kill -HUP " .. s.pid)
        local body = h:read("*a")
        h:close()
        assert.same({ id = "h", status = "done", output = 10 }, { id = json.decode(body).id,
            status = json.decode(body).status, output = json.decode(body).output })
        local status = serve.http(s, "POST", "/v1/jobs", '{"input":1}')
        assert.equal(201, status)
        local text = serve.stop(s, "TERM")
        assert.matches("reloaded 'serve'", text)
        assert.not_matches("draining %(signal 1%)", text)
        assert.matches("draining %(signal 15%)", text)
    end)
end)


describe("standard fds closed at start", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    -- Runs a shell line that closes some fds and starts tide; returns the
    -- exit code, stdout and stderr files' text.
    local function run(close, args, input)
        proc.write(dir .. "/in.jsonl", input or '{"id":"a","v":1}\n')
        local cmd = ("%s run %s %s %s"):format(shquote(proc.bin), shquote(PIPE .. "echo.lua"), args or "", close)
        os.execute(("sh -c %s >%s 2>%s; echo $? >%s"):format(
            shquote(cmd), shquote(dir .. "/out"), shquote(dir .. "/err"), shquote(dir .. "/rc")))
        return tonumber(proc.slurp(dir .. "/rc")), proc.slurp(dir .. "/out"), proc.slurp(dir .. "/err")
    end

    it("stdin closed: the input file is read and the run ends normally", function()
        local rc, out, err = run("<&-", "--input " .. shquote(dir .. "/in.jsonl"))
        assert.equal(0, rc, err)
        assert.same({ { id = "a", status = "done", output = { id = "a", v = 1 } } }, jsonl(out))
    end)

    it("stderr closed: results still go to stdout", function()
        local rc, out = run("2>&-", "--input " .. shquote(dir .. "/in.jsonl"))
        assert.equal(0, rc)
        assert.equal(1, #jsonl(out))
    end)

    it("stdout closed: exit 3 saying so, or the results go to --output", function()
        local rc, _, err = run(">&-", "--input " .. shquote(dir .. "/in.jsonl"))
        assert.equal(3, rc)
        assert.matches("stdout was closed when tide started", err, 1, true)
        local rc2, _, err2 = run(">&- 0<&-", "--input " .. shquote(dir .. "/in.jsonl")
                                 .. " --output " .. shquote(dir .. "/o"))
        assert.equal(0, rc2, err2)
        assert.same({ "a" }, sorted_ids(file(dir .. "/o", "echo.jsonl")))
    end)
end)


describe("print inside a sync task", function()
    it("goes to stderr: stdout holds only the JSONL results", function()
        local r = tide({ "run", PIPE .. "sync_print.lua" }, "1\n2\n3\n")
        assert.equal(0, r.code, r.stderr)
        local recs = jsonl(r.stdout, "stdout")
        assert.equal(3, #recs)
        for n = 1, 3 do assert.matches("hello from\t" .. n .. "\n", r.stderr, 1, true) end
    end)
end)
