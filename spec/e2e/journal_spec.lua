--- End-to-end specs of `tide run --journal`: a run killed with SIGKILL or
-- stopped with SIGINT, then run again with the same command, ends with
-- exactly the files an uninterrupted run writes, each input once, and
-- without redoing work that ended; a finished journal only says so; a
-- journal of another pipeline version, of a newer tide, unreadable or
-- corrupt is refused with a clear message.
local proc = require "helpers.proc"
local core = require "tide.core"

local json = core.json
local q = proc.shquote
local tide = proc.tide

local PIPE = "spec/fixtures/pipelines/journaled.lua"


local function lines_sorted(path)
    local t = {}
    local text = proc.slurp(path) or ""
    if text ~= "" then assert.equal("\n", text:sub(-1), path .. " ends with a torn line") end
    for l in text:gmatch("([^\n]*)\n") do
        assert(json.decode(l), path .. ": not JSON: " .. l)
        t[#t + 1] = l
    end
    table.sort(t)
    return t
end


-- The lines of failed.jsonl without their tracebacks and messages, which
-- name the run's own coroutines: id, code and input.
local function failures(path)
    local t = {}
    for _, l in ipairs(lines_sorted(path)) do
        local r = json.decode(l)
        t[#t + 1] = r.id .. " " .. r.error.code .. " " .. json.encode(r.input)
    end
    table.sort(t)
    return t
end


local function write_inputs(path, n, secs)
    local f = assert(io.open(path, "wb"))
    for i = 1, n do f:write('{"n":', i, secs and (',"secs":' .. secs) or "", '}\n') end
    f:write("{not json\n")
    f:close()
end


-- Starts `tide run ... --journal`, lets it run `after` seconds, sends sig.
-- Returns the exit code.
local function run_and_signal(dir, sig, after, extra)
    local cmd = ("TIDE_SPEC_COUNTS=%s %s run %s --input %s --output %s --journal %s --concurrency 100 %s"
                 .. " >/dev/null 2>>%s & p=$!; sleep %s; kill -%s $p; wait $p; echo $? >%s")
        :format(q(dir .. "/counts"), q(proc.bin), q(PIPE), q(dir .. "/in.jsonl"), q(dir .. "/out"),
                q(dir .. "/j.db"), extra or "", q(dir .. "/err"), after, sig, q(dir .. "/rc"))
    os.execute("sh -c " .. q(cmd))
    return tonumber(proc.slurp(dir .. "/rc"))
end


local function resume(dir)
    return tide({ "run", PIPE, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                  "--journal", dir .. "/j.db", "--concurrency", "100" }, nil,
                { TIDE_SPEC_COUNTS = dir .. "/counts" })
end


-- The run of the same input with no journal and no interruption.
local function clean_run(dir)
    local r = tide({ "run", PIPE, "--input", dir .. "/in.jsonl", "--output", dir .. "/clean",
                     "--concurrency", "100" })
    assert.equal(1, r.code, r.stderr)
end


-- Two sorted lists of lines are equal. On a difference it names the count
-- and the first line that differs: luassert's own message for lists of
-- 100 000 lines takes longer to format than the run it reports on.
local function same_lines(want, got, what)
    local n = math.max(#want, #got)
    for i = 1, n do
        if want[i] ~= got[i] then
            error(("%s: %d lines where a clean run has %d; first difference at %d: %s (clean) vs %s")
                  :format(what, #got, #want, i, tostring(want[i]), tostring(got[i])), 2)
        end
    end
end


local function same_files(dir)
    same_lines(lines_sorted(dir .. "/clean/check.jsonl"), lines_sorted(dir .. "/out/check.jsonl"), "check.jsonl")
    same_lines(failures(dir .. "/clean/failed.jsonl"), failures(dir .. "/out/failed.jsonl"), "failed.jsonl")
    same_lines(lines_sorted(dir .. "/clean/rejects.jsonl"), lines_sorted(dir .. "/out/rejects.jsonl"),
               "rejects.jsonl")
end


-- n -> how many times the side-effecting task ran for it.
local function executions(dir)
    local c = {}
    for l in (proc.slurp(dir .. "/counts") or ""):gmatch("(%d+)\n") do
        local n = tonumber(l)
        c[n] = (c[n] or 0) + 1
    end
    return c
end


describe("tide run --journal", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("resumes after kill -9 at three points: files as a clean run, finished work not redone", function()
        local N = 100000
        write_inputs(dir .. "/in.jsonl", N)
        clean_run(dir)
        math.randomseed(os.time())
        -- After each kill: which inputs had their result committed, and
        -- how far the side-effect log had come.
        local committed, logged = {}, {}
        for k = 1, 3 do
            run_and_signal(dir, "KILL", ("%.2f"):format(0.3 + math.random() * 0.6))
            lines_sorted(dir .. "/out/check.jsonl") -- nothing torn, whatever the moment
            local h = io.popen("sqlite3 " .. q(dir .. "/j.db") .. " \"SELECT key FROM items WHERE kind = 'result'\"")
            local set = {}
            for key in h:lines() do set[key] = true end
            h:close()
            committed[k], logged[k] = set, #(proc.slurp(dir .. "/counts") or "")
        end
        local r = resume(dir)
        assert.equal(1, r.code, r.stderr) -- some inputs fail, one is rejected
        assert.matches("resuming from the journal", r.stderr, 1, true)
        -- The closing summary says how many operations reached the device, in how many commits.
        local ops, commits = r.stderr:match("journal: (%d+) operations in (%d+) commits, on the device within")
        assert.is_truthy(ops, r.stderr)
        assert.is_true(tonumber(ops) > 0 and tonumber(commits) > 0 and tonumber(commits) <= tonumber(ops))
        same_files(dir)
        -- Each input once in the outputs.
        assert.equal(N - math.floor(N / 7), #lines_sorted(dir .. "/out/check.jsonl"))
        assert.equal(math.floor(N / 7), #lines_sorted(dir .. "/out/failed.jsonl"))
        assert.equal(1, #lines_sorted(dir .. "/out/rejects.jsonl"))
        -- Every input ran; no input whose result was committed before a
        -- kill ran again after it (the ids are the line numbers, n).
        local log = proc.slurp(dir .. "/counts")
        local ran, pos, redone = {}, 1, 0
        for line, stop in log:gmatch("(%d+)\n()") do
            local n = tonumber(line)
            if ran[n] then redone = redone + 1 end
            ran[n] = true
            for k = 1, 3 do
                if pos > logged[k] then
                    assert.is_nil(committed[k][line], "input " .. line .. " ran again after kill " .. k
                                  .. " although its result was committed")
                end
            end
            pos = stop
        end
        for n = 1, N do assert.is_true(ran[n], "input " .. n .. " never ran") end
        -- What ran twice had not ended on the device when its run was
        -- killed: a fraction of the 100 000.
        assert.is_true(redone < N / 10, redone .. " executions redone")
    end)

    it("a resume killed before any input of its own ended leaves a journal the next resume trusts", function()
        -- 50 inputs end at once, 5 take 4 s: the first run is killed once
        -- the 50 are in the files and the journal, the second (a resume)
        -- while only the 5 run, so that it journals no item of its own.
        -- The flush marks of that second run must still count the items
        -- of the first: the third run cuts the files back to the lengths
        -- they record and writes again only the items after the mark.
        local f = assert(io.open(dir .. "/in.jsonl", "wb"))
        for i = 1, 55 do f:write('{"n":', i, i > 50 and ',"secs":4' or "", '}\n') end
        f:close()
        clean_run(dir)
        local function run_until(wait, n)
            local cmd = ("TIDE_SPEC_COUNTS=%s %s run %s --input %s --output %s --journal %s --concurrency 100"
                         .. " >/dev/null 2>%s & p=$!; n=0; while ! %s && [ $n -lt 600 ]; do sleep 0.05;"
                         .. " n=$((n+1)); done; sleep 0.5; kill -9 $p; { wait $p; } 2>/dev/null")
                :format(q(dir .. "/counts"), q(proc.bin), q(PIPE), q(dir .. "/in.jsonl"), q(dir .. "/out"),
                        q(dir .. "/j.db"), q(dir .. "/err" .. n), wait)
            os.execute("sh -c " .. q(cmd))
        end
        -- The 43 lines of the fast inputs that pass check are in the file.
        run_until(("[ \"$(cat %s 2>/dev/null | wc -l)\" -ge 43 ]"):format(q(dir .. "/out/check.jsonl")), 1)
        assert.equal(43, #lines_sorted(dir .. "/out/check.jsonl"))
        run_until(("grep -q 'resuming from the journal' %s"):format(q(dir .. "/err2")), 2)
        assert.matches("50 inputs ended before", proc.slurp(dir .. "/err2"), 1, true)
        local r = resume(dir)
        assert.equal(1, r.code, r.stderr)
        assert.matches("50 inputs ended before", r.stderr, 1, true)
        same_files(dir)
        assert.equal(48, #lines_sorted(dir .. "/out/check.jsonl"))
    end)

    it("resumes after SIGINT, and a second run of a finished journal does nothing", function()
        write_inputs(dir .. "/in.jsonl", 3000, 0.05)
        clean_run(dir)
        assert.equal(130, run_and_signal(dir, "INT", "0.4"))
        assert.matches("the same command resumes the run", proc.slurp(dir .. "/err"), 1, true)
        local r = resume(dir)
        assert.equal(1, r.code, r.stderr)
        same_files(dir)
        local ex = executions(dir)
        local extra = 0
        for n = 1, 3000 do extra = extra + (ex[n] or 0) - 1 end
        assert.is_true(extra <= 100, extra .. " executions redone") -- the 100 in flight at most
        local before = proc.slurp(dir .. "/out/check.jsonl")
        local r2 = resume(dir)
        assert.equal(1, r2.code) -- the finished run's exit code
        assert.matches("holds a finished run of 'journaled' %(2572 done, 428 failed, 1 rejected%): nothing to do",
                       r2.stderr)
        assert.equal(before, proc.slurp(dir .. "/out/check.jsonl"))
    end)

    it("refuses a journal of another version of the pipeline, unless --journal-reset", function()
        write_inputs(dir .. "/in.jsonl", 20)
        local copy = dir .. "/p.lua"
        proc.write(copy, proc.slurp(PIPE))
        local args = { "run", copy, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                       "--journal", dir .. "/j.db" }
        assert.equal(1, tide(args).code)
        proc.write(copy, proc.slurp(PIPE) .. "\n-- changed\n")
        local r = tide(args)
        assert.equal(2, r.code)
        assert.matches("belongs to another version of the pipeline: " .. copy .. " changed", r.stderr, 1, true)
        args[#args + 1] = "--journal-reset"
        local r2 = tide(args)
        assert.equal(1, r2.code, r2.stderr)
        assert.equal(20 - 2, #lines_sorted(dir .. "/out/check.jsonl"))
    end)

    it("refuses journals it cannot use, each with a clear message", function()
        write_inputs(dir .. "/in.jsonl", 5)
        local function run(journal, extra)
            local args = { "run", PIPE, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                           "--journal", journal }
            for _, a in ipairs(extra or {}) do args[#args + 1] = a end
            return tide(args)
        end
        -- A place it cannot be written.
        local r = run("/proc/self/tide-journal.db")
        assert.equal(3, r.code)
        assert.matches("--journal: /proc/self/tide-journal.db", r.stderr, 1, true)
        -- Not a database.
        proc.write(dir .. "/junk.db", string.rep("not a database ", 200))
        local r2 = run(dir .. "/junk.db")
        assert.equal(3, r2.code)
        assert.matches(dir .. "/junk.db", r2.stderr, 1, true)
        -- Written by a newer tide.
        assert.equal(1, run(dir .. "/j.db").code)
        os.execute("sqlite3 " .. q(dir .. "/j.db") .. " \"UPDATE meta SET value='99' WHERE key='format'\"")
        local r3 = run(dir .. "/j.db")
        assert.equal(2, r3.code)
        assert.matches("was written by a newer tide (format 99", r3.stderr, 1, true)
        -- No --output: a resume could not cut stdout back.
        local r4 = tide({ "run", PIPE, "--input", dir .. "/in.jsonl", "--journal", dir .. "/k.db" })
        assert.equal(2, r4.code)
        assert.matches("--journal needs --output DIR", r4.stderr, 1, true)
        local r5 = tide({ "run", PIPE, "--journal-reset" }, "")
        assert.equal(2, r5.code)
    end)

    it("refuses to resume into files that lost what the journal recorded", function()
        write_inputs(dir .. "/in.jsonl", 3000, 0.05)
        assert.equal(130, run_and_signal(dir, "INT", "0.3"))
        proc.write(dir .. "/out/check.jsonl", "")
        local r = resume(dir)
        assert.equal(3, r.code)
        assert.matches("fewer than the", r.stderr, 1, true)
    end)
end)


describe("tide serve --journal", function()
    local serve = require "helpers.serve"
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("answers 2xx only for jobs on the device: after kill -9 every one has its result", function()
        local s = serve.start("--journal " .. q(dir .. "/j.db"))
        -- 8 clients submit 50 jobs each (0.3 s apiece) and note the
        -- answers; the server is killed while they do.
        local client = [[
for i in $(seq 1 50); do
  id="c$1-$i"
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data "{\"id\":\"$id\",\"input\":{\"n\":$i,\"sleep\":0.3}}" "$2/v1/jobs")
  echo "$id $code"
done]]
        proc.write(dir .. "/client.sh", client)
        -- The kill comes once 40 answers are in (at most 20 s on).
        local cmd = ("for c in 1 2 3 4 5 6 7 8; do env -u LD_PRELOAD sh %s $c %s >%s/answers.$c 2>/dev/null & done; "
                     .. "n=0; while [ $(cat %s/answers.* | wc -l) -lt 40 ] && [ $n -lt 400 ]; do "
                     .. "sleep 0.05; n=$((n+1)); done; kill -9 %s; wait")
            :format(q(dir .. "/client.sh"), q(s.url), q(dir), q(dir), s.pid)
        os.execute("sh -c " .. q(cmd))
        serve.stop(s, "KILL")
        local acked = {}
        for c = 1, 8 do
            for id, code in (proc.slurp(dir .. "/answers." .. c) or ""):gmatch("(%S+) (%d+)\n") do
                if code == "201" then acked[#acked + 1] = id end
            end
        end
        assert.is_true(#acked >= 10, #acked .. " jobs were acknowledged before the kill: "
                       .. (proc.slurp(dir .. "/answers.1") or ""):sub(1, 300))
        assert.is_true(#acked < 400, "the kill came after every job was in")
        local s2 = serve.start("--journal " .. q(dir .. "/j.db"))
        finally(function() serve.stop(s2) end)
        for _, id in ipairs(acked) do
            local st, body = serve.http(s2, "GET", "/v1/jobs/" .. id .. "/result?wait=30")
            assert.equal(200, st, id .. ": " .. tostring(body))
            local rec = json.decode(body)
            assert.equal("done", rec.status, id)
            assert.equal(2 * tonumber(id:match("%-(%d+)$")), rec.output)
        end
        -- A job id the journal knows is still taken.
        assert.equal(409, (serve.http(s2, "POST", "/v1/jobs", '{"id":"' .. acked[1] .. '","input":1}')))
    end)

    it("reads results from the journal once memory let them go", function()
        local s = serve.start("--max-results 1 --journal " .. q(dir .. "/j.db"))
        finally(function() serve.stop(s) end)
        for i = 1, 3 do
            local st = serve.http(s, "POST", "/v1/jobs?wait=5", '{"id":"r' .. i .. '","input":' .. i .. '}')
            assert.equal(200, st)
        end
        -- r1 and r2 were evicted from memory (max-results 1).
        local st, body = serve.http(s, "GET", "/v1/jobs/r1/result")
        assert.equal(200, st)
        assert.same({ id = "r1", status = "done", output = 2 }, json.decode(body))
        assert.same({ id = "r2", status = "done" }, json.decode(select(2, serve.http(s, "GET", "/v1/jobs/r2"))))
    end)
end)


describe("tide run --journal and checkpoints", function()
    it("gives a resumed input its checkpointed outputs instead of running those tasks", function()
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local f = assert(io.open(dir .. "/in.jsonl", "wb"))
        for i = 1, 50 do f:write('{"n":', i, '}\n') end
        f:close()
        -- fetch is fast, then every input waits 3 s in `slow`: the kill
        -- comes after every fetch and before any input ends.
        os.execute("sed -i 's/}$/,\"secs\":3}/' " .. q(dir .. "/in.jsonl"))
        local pipe = "spec/fixtures/pipelines/checkpointed.lua"
        local cmd = ("TIDE_SPEC_COUNTS=%s %s run %s --input %s --output %s --journal %s >/dev/null 2>&1 & p=$!; "
                     .. "sleep 1; kill -9 $p; wait $p")
            :format(q(dir .. "/counts"), q(proc.bin), q(pipe), q(dir .. "/in.jsonl"), q(dir .. "/out"),
                    q(dir .. "/j.db"))
        os.execute("sh -c " .. q(cmd))
        local before = select(2, (proc.slurp(dir .. "/counts") or ""):gsub("\n", ""))
        assert.equal(50, before) -- every fetch ran before the kill
        local r = tide({ "run", pipe, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                         "--journal", dir .. "/j.db" }, nil, { TIDE_SPEC_COUNTS = dir .. "/counts" })
        assert.equal(0, r.code, r.stderr)
        local after = select(2, (proc.slurp(dir .. "/counts") or ""):gsub("\n", ""))
        assert.equal(50, after) -- no fetch ran again
        local out = lines_sorted(dir .. "/out/slow.jsonl")
        assert.equal(50, #out)
        assert.same({ id = "7", output = "page 7" }, json.decode((function()
            for _, l in ipairs(out) do if l:find('"id":"7"', 1, true) then return l end end
        end)()))
        -- The journal keeps no checkpoints of inputs that ended.
        local h = io.popen("sqlite3 " .. q(dir .. "/j.db") .. " 'SELECT count(*) FROM checkpoints'")
        local n = tonumber(h:read("*a"))
        h:close()
        assert.equal(0, n)
    end)
end)


describe("tide run --journal around slow steps", function()
    -- spec/fixtures/pipelines/slow_step.lua: a -> slow -> b; none asks
    -- for a checkpoint, so only the slow sweep can keep what they made.
    local PIPE_SLOW = "spec/fixtures/pipelines/slow_step.lua"
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    local function env()
        return ("TIDE_SPEC_COUNTS=%s TIDE_SPEC_SLOW=%s TIDE_SPEC_MARK=%s"):format(
            q(dir .. "/counts"), q(dir .. "/slow"), q(dir .. "/mark"))
    end

    local function count(name)
        return select(2, (proc.slurp(dir .. "/" .. name) or ""):gsub("\n", ""))
    end

    -- Runs the journaled command in the background (and, beside it, a
    -- clean run of the same input without journal into dir/clean), waits
    -- for a line of the mark file that starts with `mark` (a step began;
    -- at most 30 s), then `after` seconds, and kills the run with -9.
    local function run_and_kill(mark, after, extra)
        local cmd = ("%s %s run %s --input %s --output %s --journal %s %s >/dev/null 2>&1 & p=$!; "
                     .. "%s run %s --input %s --output %s >/dev/null 2>&1 & c=$!; "
                     .. "n=0; while ! grep -q '^%s' %s 2>/dev/null && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; "
                     .. "sleep %s; kill -9 $p; { wait $p; } 2>/dev/null; wait $c")
            :format(env(), q(proc.bin), q(PIPE_SLOW), q(dir .. "/in.jsonl"), q(dir .. "/out"), q(dir .. "/j.db"),
                    extra or "", q(proc.bin), q(PIPE_SLOW), q(dir .. "/in.jsonl"), q(dir .. "/clean"), mark,
                    q(dir .. "/mark"), after)
        os.execute("sh -c " .. q(cmd))
    end

    local function resume_slow()
        local r = tide({ "run", PIPE_SLOW, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                         "--journal", dir .. "/j.db" }, nil,
                       { TIDE_SPEC_COUNTS = dir .. "/counts", TIDE_SPEC_SLOW = dir .. "/slow" })
        assert.equal(0, r.code, r.stderr)
        assert.matches("resuming from the journal", r.stderr, 1, true)
        same_lines(lines_sorted(dir .. "/clean/b.jsonl"), lines_sorted(dir .. "/out/b.jsonl"), "b.jsonl")
        assert.equal(5, #lines_sorted(dir .. "/out/b.jsonl"))
    end

    local function inputs(slow, b)
        local f = assert(io.open(dir .. "/in.jsonl", "wb"))
        for i = 1, 5 do f:write(('{"n":%d,"slow":%s,"b":%s}\n'):format(i, slow, b)) end
        f:close()
    end

    it("a kill -9 while a step runs past --checkpoint-after resumes at it: its predecessor ran once", function()
        -- slow takes 5 s; the kill comes 2.5 s in, after the mark (1 s,
        -- the default) and the sweep (every 0.25 s), well before its end.
        inputs(5, 0)
        run_and_kill("slow", 2.5)
        assert.equal(5, count("counts")) -- a ran for each input
        assert.equal(5, count("slow"))
        resume_slow()
        assert.equal(5, count("counts")) -- and not again: its outputs were checkpointed
        assert.equal(10, count("slow")) -- slow had not ended: it ran again
    end)

    it("with --checkpoint-after 0 the same kill runs the predecessor again", function()
        inputs(5, 0)
        run_and_kill("slow", 2.5, "--checkpoint-after 0")
        assert.equal(5, count("counts"))
        resume_slow()
        assert.equal(10, count("counts"))
    end)

    it("a step that ran past the mark has its output checkpointed as it ends", function()
        -- slow takes 1.5 s (past the 1 s mark); the kill comes 0.3 s into
        -- b, before b itself could pass the mark.
        inputs(1.5, 3)
        run_and_kill("b", 0.3, "--checkpoint-after 1")
        assert.equal(5, count("slow"))
        resume_slow()
        assert.equal(5, count("slow")) -- slow did not run again
        assert.equal(5, count("counts"))
    end)

    it("tide serve --journal: a job killed during a slow step resumes at it after the restart", function()
        local serve = require "helpers.serve"
        local vars = { TIDE_SPEC_COUNTS = dir .. "/counts", TIDE_SPEC_SLOW = dir .. "/slow",
                       TIDE_SPEC_MARK = dir .. "/mark" }
        local s = serve.start("--journal " .. q(dir .. "/j.db"), PIPE_SLOW, vars)
        for i = 1, 3 do
            local st = serve.http(s, "POST", "/v1/jobs", ('{"id":"j%d","input":{"n":%d,"slow":5}}'):format(i, i))
            assert.equal(201, st)
        end
        -- The kill comes 2.5 s into the slow step: past the mark (1 s) and
        -- the sweep, well before its end.
        os.execute("n=0; while ! grep -q '^slow' " .. q(dir .. "/mark") .. " 2>/dev/null && [ $n -lt 600 ]; "
                   .. "do sleep 0.05; n=$((n+1)); done; sleep 2.5")
        serve.stop(s, "KILL")
        assert.equal(3, count("counts"))
        local s2 = serve.start("--journal " .. q(dir .. "/j.db"), PIPE_SLOW, vars)
        finally(function() serve.stop(s2) end)
        for i = 1, 3 do
            local st, body = serve.http(s2, "GET", "/v1/jobs/j" .. i .. "/result?wait=30")
            assert.equal(200, st, tostring(body))
            local rec = json.decode(body)
            assert.same({ "j" .. i, "done", i * 10 + 1 }, { rec.id, rec.status, rec.output })
        end
        assert.equal(3, count("counts")) -- a did not run again
        assert.equal(6, count("slow"))
        -- The journal keeps no checkpoints of jobs that ended.
        local h = io.popen("sqlite3 " .. q(dir .. "/j.db") .. " 'SELECT count(*) FROM checkpoints'")
        local n = tonumber(h:read("*a"))
        h:close()
        assert.equal(0, n)
    end)

    it("refuses a bad --checkpoint-after, and one without --journal", function()
        inputs(0, 0)
        for _, bad in ipairs({ "-1", "soon", "inf" }) do
            local r = tide({ "run", PIPE_SLOW, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                             "--journal", dir .. "/j.db", "--checkpoint-after", bad })
            assert.equal(2, r.code, bad)
            assert.matches("--checkpoint-after needs a number of seconds >= 0 (0: never)", r.stderr, 1, true)
        end
        local r = tide({ "run", PIPE_SLOW, "--input", dir .. "/in.jsonl", "--checkpoint-after", "2" })
        assert.equal(2, r.code)
        assert.matches("--checkpoint-after needs --journal FILE", r.stderr, 1, true)
        local r2 = tide({ "serve", PIPE_SLOW, "--listen", "127.0.0.1:0", "--checkpoint-after", "2" })
        assert.equal(2, r2.code)
        assert.matches("--checkpoint-after needs --journal FILE", r2.stderr, 1, true)
        local r3 = tide({ "serve", PIPE_SLOW, "--listen", "127.0.0.1:0", "--journal", dir .. "/s.db",
                          "--checkpoint-after", "x" })
        assert.equal(2, r3.code)
        assert.matches("--checkpoint-after needs a number of seconds >= 0", r3.stderr, 1, true)
    end)
end)


describe("a journal after a simulated power loss", function()
    -- spec/helpers/powerloss.c, loaded with LD_PRELOAD, keeps beside each
    -- file under the directory what a power cut would leave of it (its
    -- content at its last fsync); after kill -9 those copies replace the
    -- files.
    local dir, shim
    before_each(function()
        dir = proc.tmpdir()
        shim = dir .. "/powerloss.so"
        local rc = os.execute("cc -shared -fPIC -O1 -o " .. q(shim) .. " spec/helpers/powerloss.c -ldl -lpthread")
        assert.is_true(rc == 0 or rc == true, "cannot build the power-loss shim")
    end)
    after_each(function() proc.rmrf(dir) end)

    local function preload()
        local p = os.getenv("LD_PRELOAD")
        return (p and p ~= "" and (p .. ":") or "") .. shim
    end

    -- Puts each file's durable copy in its place, as after the power cut.
    local function power_cut()
        local h = io.popen("find " .. q(dir) .. " -name '*.durable'")
        local n = 0
        for f in h:lines() do
            os.rename(f, f:sub(1, -9))
            n = n + 1
        end
        h:close()
        os.execute("find " .. q(dir) .. " -name '*-shm' -delete")
        return n
    end

    it("tide run resumes to the files of a clean run: nothing that was synced is lost", function()
        write_inputs(dir .. "/in.jsonl", 20000)
        clean_run(dir)
        local cmd = ("TIDE_POWERLOSS_DIR=%s LD_PRELOAD=%s TIDE_SPEC_COUNTS=%s %s run %s --input %s --output %s "
                     .. "--journal %s --concurrency 100 >/dev/null 2>%s & p=$!; sleep 0.8; kill -9 $p; wait $p")
            :format(q(dir .. "/out"), q(preload()), q(dir .. "/counts"), q(proc.bin), q(PIPE),
                    q(dir .. "/in.jsonl"), q(dir .. "/out"), q(dir .. "/out/j.db"), q(dir .. "/err"))
        os.execute("mkdir -p " .. q(dir .. "/out") .. " && sh -c " .. q(cmd))
        assert.is_true(power_cut() >= 3, "the shim followed no files: " .. (proc.slurp(dir .. "/err") or ""))
        local r = tide({ "run", PIPE, "--input", dir .. "/in.jsonl", "--output", dir .. "/out",
                         "--journal", dir .. "/out/j.db", "--concurrency", "100" }, nil,
                       { TIDE_SPEC_COUNTS = dir .. "/counts" })
        assert.equal(1, r.code, r.stderr)
        same_files(dir)
    end)

    it("tide serve keeps every job it acknowledged", function()
        local serve = require "helpers.serve"
        local jdir = dir .. "/sj"
        os.execute("mkdir -p " .. q(jdir))
        local s = serve.start("--journal " .. q(jdir .. "/j.db"), nil,
                              { TIDE_POWERLOSS_DIR = jdir, LD_PRELOAD = preload() })
        local acked = {}
        for i = 1, 60 do
            local st = serve.http(s, "POST", "/v1/jobs", '{"id":"p' .. i .. '","input":{"n":' .. i
                                  .. ',"sleep":' .. (i % 2 == 0 and 0 or 30) .. '}}')
            if st == 201 then acked[#acked + 1] = i end
        end
        os.execute("sleep 0.3")
        serve.stop(s, "KILL")
        assert.equal(60, #acked)
        assert.is_true(power_cut() >= 1)
        local s2 = serve.start("--journal " .. q(jdir .. "/j.db"))
        finally(function() serve.stop(s2) end)
        for _, i in ipairs(acked) do
            local st, body = serve.http(s2, "GET", "/v1/jobs/p" .. i)
            assert.equal(200, st, "p" .. i .. ": " .. tostring(body))
            if i % 2 == 0 then
                local st2, rbody = serve.http(s2, "GET", "/v1/jobs/p" .. i .. "/result?wait=10")
                assert.equal(200, st2)
                assert.equal(2 * i, json.decode(rbody).output)
            end
        end
    end)
end)
