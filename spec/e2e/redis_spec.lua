--- End-to-end specs of the distributed mode: `tide run --redis` and
-- `tide worker` processes against a real redis-server started here. The
-- same inputs give the same files and exit code as a local run; a worker
-- killed with SIGKILL loses no job (its jobs come back within lease + 1
-- s, measured); a job that kills every worker that takes it ends in the
-- dead-letter stream; a Redis that cannot be reached is exit 3.
local proc = require "helpers.proc"
local rs = require "helpers.redis"
local socket = require "socket"
local core = require "tide.core"

local json = core.json
local q = proc.shquote

local PIPE = "spec/fixtures/pipelines/distributed.lua"

local function sorted_lines(path)
    local t = {}
    for l in (proc.slurp(path) or ""):gmatch("([^\n]*)\n") do t[#t + 1] = l end
    table.sort(t)
    return t
end

local function write_inputs(path, n, extra)
    local f = assert(io.open(path, "wb"))
    for i = 1, n do f:write('{"n":', i, extra or "", '}\n') end
    f:close()
end

-- Starts `tide worker` in the background; returns its pid.
local function start_worker(url, dir, name, args, pipe)
    return rs.start_worker(url, pipe or PIPE, dir .. "/" .. name .. ".err", args)
end

local wait_exit, stop_workers = rs.wait_exit, rs.stop_workers

-- Runs `tide run --redis` in the background; returns a function that
-- waits for it and gives its exit code and stderr.
local function start_run(url, dir, extra, pipe)
    local cmd = ("%s run %s --redis %s --input %s --output %s %s 2>%s; echo $? >%s"):format(
        q(proc.bin), q(pipe or PIPE), q(url), q(dir .. "/in.jsonl"), q(dir .. "/out"), extra or "",
        q(dir .. "/run.err"), q(dir .. "/run.rc"))
    os.execute("sh -c " .. q(cmd) .. " &")
    return function(secs)
        local deadline = socket.gettime() + secs
        while socket.gettime() < deadline do
            local rc = proc.slurp(dir .. "/run.rc")
            if rc and rc:match("%d") then return tonumber(rc), proc.slurp(dir .. "/run.err") end
            socket.sleep(0.05)
        end
        error("tide run --redis did not end in " .. secs .. " s: " .. (proc.slurp(dir .. "/run.err") or ""))
    end
end



-- dir/out/double.jsonl holds exactly one result for each of inputs 1..n.
local function one_result_each(dir, n)
    local ids = {}
    for _, l in ipairs(sorted_lines(dir .. "/out/double.jsonl")) do
        local id = json.decode(l).id
        assert.is_nil(ids[id], "two results for " .. id)
        ids[id] = true
    end
    for i = 1, n do assert.truthy(ids[tostring(i)], "no result for " .. i) end
end

describe("tide run --redis with tide worker", function()
    local server, dir

    before_each(function()
        server = rs.start()
        dir = proc.tmpdir()
    end)
    after_each(function()
        server:stop()
        proc.rmrf(dir)
    end)

    it("2000 jobs on 3 workers: the files and exit code of a local run, one result per input", function()
        write_inputs(dir .. "/in.jsonl", 2000)
        local f = assert(io.open(dir .. "/in.jsonl", "ab"))
        f:write('{"n":0,"fail":true}\n', "not json\n")
        f:close()
        local pids = {}
        for i = 1, 3 do pids[i] = start_worker(server.url, dir, "w" .. i, "--concurrency 50") end
        local wait = start_run(server.url, dir)
        local rc, err = wait(60)
        stop_workers(pids)
        assert.equal(1, rc, err)
        local rate = tonumber(err:match("(%d+)/s"))
        print(("# 2000 jobs, 3 workers: %d jobs/s end to end (tide run --redis summary)"):format(rate))
        local local_run = proc.tide({ "run", PIPE, "--input", dir .. "/in.jsonl", "--output", dir .. "/local" })
        assert.equal(1, local_run.code)
        assert.same(sorted_lines(dir .. "/local/double.jsonl"), sorted_lines(dir .. "/out/double.jsonl"))
        assert.same(sorted_lines(dir .. "/local/rejects.jsonl"), sorted_lines(dir .. "/out/rejects.jsonl"))
        local failed = sorted_lines(dir .. "/out/failed.jsonl")
        assert.equal(1, #failed)
        local rec = json.decode(failed[1])
        assert.equal("2001", rec.id)
        assert.equal("ETASK", rec.error.code)
        assert.same({ fail = true, n = 0 }, rec.input)
        -- Finished jobs leave the stream; the run's result stream is gone.
        assert.equal("0", server:cli("XLEN", "tide:{distributed}:jobs"))
        assert.equal("tide:{distributed}:jobs", server:cli("KEYS", "*"))
        local done = 0
        for i = 1, 3 do
            done = done + tonumber(proc.slurp(dir .. "/w" .. i .. ".err"):match("stopped: (%d+) done"))
        end
        assert.equal(2000, done)
    end)

    it("a worker killed with SIGKILL mid-run: its jobs run elsewhere within lease + 1 s, each once", function()
        write_inputs(dir .. "/in.jsonl", 300, ',"secs":0.1')
        local lease = 1
        local args = "--concurrency 20 --lease " .. lease
        local a = start_worker(server.url, dir, "a", args)
        local b = start_worker(server.url, dir, "b", args)
        local wait = start_run(server.url, dir)
        socket.sleep(0.5)
        os.execute("kill -KILL " .. a)
        local killed = socket.gettime()
        -- The survivor says when it takes over jobs whose lease ran out.
        local took
        while socket.gettime() - killed < lease + 5 do
            if (proc.slurp(dir .. "/b.err") or ""):find("took over") then
                took = socket.gettime() - killed
                break
            end
            socket.sleep(0.01)
        end
        local rc, err = wait(60)
        stop_workers({ b })
        assert.equal(0, rc, err)
        assert.truthy(took, "no takeover: " .. (proc.slurp(dir .. "/b.err") or ""))
        print(("# redelivery after SIGKILL: %.2f s (lease %d s)"):format(took, lease))
        assert.is_true(took <= lease + 1, "redelivered after " .. took .. " s")
        one_result_each(dir, 300)
        assert.equal("", proc.slurp(dir .. "/out/failed.jsonl"))
    end)

    it("a job that kills every worker that takes it goes to the dead-letter stream, alone", function()
        -- Thirty jobs, the second one poison, all read at once by the
        -- first worker (--concurrency 100). Workers are started again as
        -- they die, as a service manager would. Jobs taken over run
        -- alone, so only the poison job's deliveries grow: with
        -- --max-deliveries 2 every other job still gets its result.
        local f = assert(io.open(dir .. "/in.jsonl", "wb"))
        for i = 1, 30 do f:write(i == 2 and '{"n":2,"poison":true}\n' or ('{"n":' .. i .. '}\n')) end
        f:close()
        local loop = ("while [ ! -e %s ]; do %s worker %s --redis %s --lease 0.5 --max-deliveries 2 --concurrency 100 "
                      .. "2>>%s & echo $! >%s; wait $!; done"):format(
            q(dir .. "/stop"), q(proc.bin), q(PIPE), q(server.url), q(dir .. "/w.err"), q(dir .. "/w.pid"))
        local h = io.popen("sh -c " .. q(loop .. " >/dev/null 2>&1 & echo $!"))
        local loop_pid = tonumber(h:read("*l"))
        h:close()
        local wait = start_run(server.url, dir)
        local rc, err = wait(60)
        proc.write(dir .. "/stop", "")
        os.execute("kill -TERM " .. loop_pid .. " 2>/dev/null")
        local wpid = tonumber(proc.slurp(dir .. "/w.pid") or "")
        if wpid then stop_workers({ wpid }) end
        assert.equal(1, rc, err)
        assert.equal(29, #sorted_lines(dir .. "/out/double.jsonl"), proc.slurp(dir .. "/w.err"))
        local failed = sorted_lines(dir .. "/out/failed.jsonl")
        assert.equal(1, #failed)
        local rec = json.decode(failed[1])
        assert.equal("2", rec.id)
        assert.equal("EDELIVERY", rec.error.code)
        assert.equal("1", server:cli("XLEN", "tide:{distributed}:dlq"))
        assert.matches("run alone, one at a time", proc.slurp(dir .. "/w.err"))
    end)

    it("a worker stopped with SIGSTOP past its lease: its late results are refused, one result each", function()
        write_inputs(dir .. "/in.jsonl", 60, ',"secs":0.3')
        local args = "--concurrency 10 --lease 1"
        local a = start_worker(server.url, dir, "a", args)
        local b = start_worker(server.url, dir, "b", args)
        local wait = start_run(server.url, dir)
        socket.sleep(0.5)
        os.execute("kill -STOP " .. a)
        socket.sleep(2.5)
        os.execute("kill -CONT " .. a)
        local rc, err = wait(60)
        stop_workers({ a, b })
        assert.equal(0, rc, err)
        one_result_each(dir, 60)
        assert.matches("took over", proc.slurp(dir .. "/b.err"))
    end)

    it("SIGTERM drains a worker: running jobs finish and are committed, then it exits 0", function()
        write_inputs(dir .. "/in.jsonl", 10, ',"secs":1')
        local a = start_worker(server.url, dir, "a", "--concurrency 10")
        local wait = start_run(server.url, dir)
        socket.sleep(0.5)
        local t0 = socket.gettime()
        os.execute("kill -TERM " .. a)
        assert.is_true(wait_exit(a, 5))
        -- The jobs take 1 s: far less than the 30 s of --drain-timeout.
        assert.is_true(socket.gettime() - t0 < 4)
        local rc, err = wait(10)
        assert.equal(0, rc, err)
        assert.equal(10, #sorted_lines(dir .. "/out/double.jsonl"))
        assert.matches("stopped: 10 done", proc.slurp(dir .. "/a.err"))
    end)

    it("a worker with a changed pipeline file runs none of the jobs; a version no worker runs is reported", function()
        -- b runs a copy of the pipeline with one more line: the same
        -- name, another hash. Every job goes to a, and b says why.
        local changed = dir .. "/changed.lua"
        proc.write(changed, proc.slurp(PIPE) .. "-- changed\n")
        write_inputs(dir .. "/in.jsonl", 300)
        local args = "--concurrency 50 --lease 0.5 --max-deliveries 2"
        local b = start_worker(server.url, dir, "b", args, changed)
        local a = start_worker(server.url, dir, "a", args)
        local wait = start_run(server.url, dir)
        local rc, err = wait(60)
        assert.equal(0, rc, err)
        one_result_each(dir, 300)
        -- Jobs submitted with a third version: no worker runs it. They end
        -- in the dead-letter stream with a record naming the hash, and
        -- the run reports them as failures.
        local third = dir .. "/third.lua"
        proc.write(third, proc.slurp(PIPE) .. "-- third\n")
        local hash = core.xxh128(proc.slurp(third))
        write_inputs(dir .. "/in.jsonl", 3)
        proc.rmrf(dir .. "/out")
        os.remove(dir .. "/run.rc")
        wait = start_run(server.url, dir, nil, third)
        rc, err = wait(60)
        stop_workers({ a, b })
        assert.equal(1, rc, err)
        assert.matches("stopped: 0 done", proc.slurp(dir .. "/b.err"))
        assert.matches("another version of the pipeline", proc.slurp(dir .. "/b.err"))
        assert.matches("stopped: 300 done", proc.slurp(dir .. "/a.err"))
        local failed = sorted_lines(dir .. "/out/failed.jsonl")
        assert.equal(3, #failed)
        for _, l in ipairs(failed) do
            local rec = json.decode(l)
            assert.equal("EVERSION", rec.error.code)
            assert.matches("no worker with pipeline hash " .. hash, rec.error.message)
        end
        assert.equal("3", server:cli("XLEN", "tide:{distributed}:dlq"))
        local dlq = server:cli("XRANGE", "tide:{distributed}:dlq", "-", "+")
        assert.matches("no worker with pipeline hash " .. hash, dlq)
        assert.matches("no worker with that hash took it", proc.slurp(dir .. "/a.err") .. proc.slurp(dir .. "/b.err"))
    end)

    it("Redis killed and restarted mid-run with appendonly yes: everyone reconnects, one result each", function()
        server:stop()
        server = rs.start({ appendonly = true })
        write_inputs(dir .. "/in.jsonl", 2000, ',"secs":0.1')
        local args = "--concurrency 50 --lease 1"
        local a = start_worker(server.url, dir, "a", args)
        local b = start_worker(server.url, dir, "b", args)
        local wait = start_run(server.url, dir)
        socket.sleep(0.8)
        -- The run is in the middle: some results are in, not all.
        local before = #(proc.lines(proc.slurp(dir .. "/out/double.jsonl") or ""))
        -- SIGKILL: Redis writes its append-only file before it answers,
        -- so whatever it acknowledged is in the file it reads back.
        server:restart("KILL")
        local rc, err = wait(120)
        stop_workers({ a, b })
        assert.equal(0, rc, err)
        one_result_each(dir, 2000)
        assert.equal(2000, #sorted_lines(dir .. "/out/double.jsonl"))
        assert.is_true(before < 2000, before .. " results before the restart")
        assert.equal("0", server:cli("XLEN", "tide:{distributed}:jobs"))
    end)

    it("Redis that cannot be reached: tide run --redis and tide worker exit 3 at once", function()
        local url = server.url
        server:kill("KILL")
        local t0 = socket.gettime()
        local r = proc.tide({ "run", PIPE, "--redis", url }, '{"n":1}\n')
        assert.equal(3, r.code)
        assert.matches("cannot reach Redis at " .. url:gsub("%p", "%%%0"), r.stderr)
        local w = proc.tide({ "worker", PIPE, "--redis", url })
        assert.equal(3, w.code)
        assert.matches("cannot reach Redis", w.stderr)
        assert.is_true(socket.gettime() - t0 < 8)
        server:spawn() -- for after_each
    end)

    it("refuses a bad URL or a worker without --redis (exit 2)", function()
        assert.equal(2, proc.tide({ "worker", PIPE }).code)
        assert.equal(2, proc.tide({ "worker", PIPE, "--redis", "redis://h:0" }).code)
        assert.equal(2, proc.tide({ "run", PIPE, "--redis", "redis://" }, "").code)
    end)
end)
