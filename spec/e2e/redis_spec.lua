--- End-to-end specs of the distributed mode: `tide run --redis` and
-- `tide worker` processes against a real redis-server started here. The
-- same inputs give the same files and exit code as a local run; fault
-- (a): a worker killed with SIGKILL twice loses no job and adds no second
-- result (its jobs are taken over within lease + 1 s and run together,
-- measured); fault (b): a job that kills every worker that takes it ends
-- in the dead-letter stream, and the jobs that ran with it do not; a
-- Redis that cannot be reached is exit 3.
local proc = require "helpers.proc"
local rs = require "helpers.redis"
local socket = require "socket"
local core = require "tide.core"
local tide = require "tide"
local redis = require "tide.redis"
local rexec = require "tide.rexec"
local distributed = require "tide.distributed"

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

local eventually = rs.eventually

-- The length of a stream (0 when it does not exist).
local function call_len(server, key)
    return tonumber(server:cli("XLEN", key))
end

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



-- dir/out/double.jsonl holds exactly one result for each of inputs 1..n
-- (but `except`, if given).
local function one_result_each(dir, n, except)
    local ids = {}
    for _, l in ipairs(sorted_lines(dir .. "/out/double.jsonl")) do
        local id = json.decode(l).id
        assert.is_nil(ids[id], "two results for " .. id)
        ids[id] = true
    end
    for i = 1, n do
        if i ~= except then assert.truthy(ids[tostring(i)], "no result for " .. i) end
    end
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

    it("fault (a): 2000 jobs, 3 workers, one killed with SIGKILL twice: one result each, none lost, "
       .. "its jobs run elsewhere within lease + 1 s, together", function()
        -- Jobs of 0.5 s at --concurrency 50: the run lasts several
        -- seconds, so that both kills land mid-run, and a dead worker
        -- holds 50 to 75 jobs (running, and read ahead), so that running
        -- them again one at a time (as jobs taken over once ran) would
        -- take 50 x 0.5 s / 3 workers = 8 s or more, where together they
        -- take one job's time. The jobs are submitted by id, so that the
        -- result records in Redis show each job's results, not only the
        -- first one a submitting run would keep.
        local n, secs, conc, lease = 2000, 0.5, 50, 1
        local args = ("--concurrency %d --lease %g"):format(conc, lease)
        local ex = tide.executor()
        local c = redis.connect(ex, server.url)
        local function wait_reply(send)
            local v, rec
            send(function(a, b) v, rec = a, b end)
            ex:run()
            assert.is_nil(rec, rec and tostring(rec))
            return v
        end
        local function eval(script, keys, argv)
            return wait_reply(function(cb) c:eval(script, keys, argv, cb) end)
        end
        local jobs_key = "tide:{distributed}:jobs"
        -- The entries a consumer holds; how many of some entries are not
        -- finished (still in the stream); the jobs with a result, and the
        -- records that are not exactly one correct result.
        local HELD = redis.script([==[
local t = {}
for _, e in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000, ARGV[2])) do t[#t + 1] = e[1] end
return t]==])
        local LEFT = redis.script([==[
local left = 0
for i = 1, #ARGV do if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then left = left + 1 end end
return left]==])
        local RESULTS = redis.script([==[
local done, bad = 0, {}
for i = 1, tonumber(ARGV[2]) do
  local k = ARGV[1] .. i
  local len = redis.call('XLEN', k)
  if len >= 2 then done = done + 1 end
  if ARGV[3] == '1' and len ~= 2 then
    bad[#bad + 1] = 'f' .. i .. ': ' .. len .. ' record entries'
  elseif ARGV[3] == '1' then
    local f, r = {}, redis.call('XREVRANGE', k, '+', '-', 'COUNT', 1)[1][2]
    for j = 1, #r, 2 do f[r[j]] = r[j + 1] end
    local v = f.status == 'done' and cjson.decode(f.value)
    if not v or v.twice ~= 2 * i then
      bad[#bad + 1] = 'f' .. i .. ': ' .. tostring(f.status) .. ' ' .. tostring(f.value)
    end
  end
end
return { done, bad }]==])
        local prefix = rexec.record_key("distributed", "f")
        local function results(final) return eval(RESULTS, {}, { prefix, n, final and "1" or "0" }) end

        local function consumer_of(name)
            local who
            assert.is_true(eventually(10, function()
                who = (proc.slurp(dir .. "/" .. name .. ".err") or ""):match("tide: worker (%S+): pipeline")
                return who
            end), "worker " .. name .. " did not start")
            return who
        end
        local slots = { a = start_worker(server.url, dir, "a", args), b = start_worker(server.url, dir, "b", args),
                        c = start_worker(server.url, dir, "c", args) }
        finally(function() stop_workers({ slots.a, slots.b, slots.c }) end)
        local who_a = consumer_of("a")
        consumer_of("b")
        consumer_of("c")

        local hash = assert(distributed.pipeline_hash(PIPE))
        local t0 = socket.gettime()
        local left = n
        for i = 1, n do
            rexec.submit(c, "distributed", hash, "f" .. i, json.encode({ n = i, secs = secs }), function(r, rec)
                assert(r and r.new, rec and tostring(rec))
                left = left - 1
            end)
        end
        ex:run()
        assert.equal(0, left)

        -- Kills the worker `pid` (consumer `who`) once it holds at least a
        -- read's worth of jobs, mid-run; measures the time until all the
        -- jobs it held are taken over by live workers (its pending list
        -- is empty) and until they are all finished (committed).
        local function kill(pid, who, restart)
            assert.is_true(eventually(20, function() return #eval(HELD, { jobs_key }, { "workers", who }) >= conc end),
                           "the worker never held " .. conc .. " jobs")
            assert.is_true(results()[1] < n - 3 * conc, "the run is nearly over: the kill would not be mid-run")
            os.execute("kill -KILL " .. pid)
            local killed = socket.gettime()
            -- (What it sent before it died has reached Redis by now.)
            socket.sleep(0.05)
            local held = eval(HELD, { jobs_key }, { "workers", who })
            if restart then slots.a = start_worker(server.url, dir, restart, args) end
            assert.is_true(#held >= conc / 2, "the dead worker held " .. #held .. " jobs")
            local took, finished
            while socket.gettime() - killed < 30 and not finished do
                local now = socket.gettime()
                if not took and #eval(HELD, { jobs_key }, { "workers", who }) == 0 then took = now - killed end
                if eval(LEFT, { jobs_key }, held) == 0 then
                    finished = now - killed
                    took = took or finished
                end
                socket.sleep(0.02)
            end
            assert.truthy(finished, "the dead worker's jobs were not finished 30 s after the kill")
            io.stderr:write(("\n# fault (a): kill %s: %d jobs held, taken over in %.2f s, finished in %.2f s "
                             .. "(lease %g s, jobs of %g s)"):format(who, #held, took, finished, lease, secs))
            -- The redelivery target: lease + 1 s. Finished within a few
            -- more seconds: the jobs ran together (one at a time they
            -- would need 8 s or more).
            assert.is_true(took <= lease + 1, "taken over after " .. took .. " s")
            assert.is_true(finished <= lease + 1 + 4, "the dead worker's jobs finished " .. finished
                           .. " s after the kill")
        end

        kill(slots.a, who_a, "a2")
        kill(slots.a, consumer_of("a2"))
        assert.is_true(eventually(60, function() return results()[1] == n end),
                       "not every job has its result: " .. results()[1] .. " of " .. n)
        local total = socket.gettime() - t0
        stop_workers({ slots.b, slots.c })
        -- A late commit of a delivery taken over would come within a
        -- lease: after one more, each record still holds one result.
        socket.sleep(lease + 0.5)
        local r = results(true)
        assert.equal(n, r[1])
        assert.same({}, r[2])
        assert.equal(0, call_len(server, jobs_key))
        assert.equal(0, call_len(server, "tide:{distributed}:dlq"))
        c:close()
        ex:close()
        io.stderr:write(("\n# fault (a): %d jobs in %.1f s, one result each\n"):format(n, total))
        assert.is_true(total < 60, "the run took " .. total .. " s")
    end)

    -- Fault (b). Thirty jobs of 0.2 s, the fifteenth one poison, all
    -- read by the first worker (--concurrency 100), which starts them
    -- together: when the poison job kills it, the jobs before it are
    -- running and those after it read ahead. Workers are started again as
    -- they die, as a service manager would. With the default
    -- --max-deliveries 5 the jobs taken over run together again at their
    -- second delivery (the poison job kills that worker too, with every
    -- other job in it), and alone from their third, so that only the
    -- poison job's deliveries grow from then on and every other job gets
    -- its result at delivery 3 at most. With --max-deliveries 2 they run
    -- alone from their second delivery.
    for _, maxd in ipairs({ 5, 2 }) do
        it("fault (b): a job that kills every worker that takes it goes to the dead-letter stream after "
           .. maxd .. " deliveries; the jobs that ran with it do not", function()
            local f = assert(io.open(dir .. "/in.jsonl", "wb"))
            for i = 1, 30 do
                f:write(i == 15 and '{"n":15,"poison":true}\n' or ('{"n":' .. i .. ',"secs":0.2}\n'))
            end
            f:close()
            local opt = maxd == distributed.DEFAULT_MAX_DELIVERIES and "" or ("--max-deliveries " .. maxd)
            local loop = ("while [ ! -e %s ]; do %s worker %s --redis %s --lease 0.5 %s --concurrency 100 "
                          .. "2>>%s & echo $! >%s; wait $!; done"):format(
                q(dir .. "/stop"), q(proc.bin), q(PIPE), q(server.url), opt, q(dir .. "/w.err"), q(dir .. "/w.pid"))
            local h = io.popen("sh -c " .. q(loop .. " >/dev/null 2>&1 & echo $!"))
            local loop_pid = tonumber(h:read("*l"))
            h:close()
            local wait = start_run(server.url, dir)
            local rc, err = wait(90)
            proc.write(dir .. "/stop", "")
            os.execute("kill -TERM " .. loop_pid .. " 2>/dev/null")
            local wpid = tonumber(proc.slurp(dir .. "/w.pid") or "")
            if wpid then stop_workers({ wpid }) end
            local log = proc.slurp(dir .. "/w.err") or ""
            assert.equal(1, rc, err)
            assert.equal(29, #sorted_lines(dir .. "/out/double.jsonl"), log)
            one_result_each(dir, 30, 15)
            local failed = sorted_lines(dir .. "/out/failed.jsonl")
            assert.equal(1, #failed)
            local rec = json.decode(failed[1])
            assert.equal("15", rec.id)
            assert.equal("EDELIVERY", rec.error.code)
            assert.matches("delivered " .. (maxd + 1) .. " times", rec.error.message)
            assert.equal("1", server:cli("XLEN", "tide:{distributed}:dlq"))
            -- The poison job killed a worker at each delivery; the jobs
            -- that ran with it at the first (and second) were taken over
            -- with it, then ran alone.
            local _, starts = log:gsub("tide: worker [^\n]*: pipeline", "")
            assert.equal(maxd + 1, starts)
            assert.matches(("jobs delivered %d times or more run alone"):format(distributed.alone_from(maxd)), log)
            if maxd == 2 then
                assert.matches("%-%-max%-deliveries 2: a dead worker's jobs run again one at a time", log)
            end
        end)
    end

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
        for _, bad in ipairs({ "0", "-1", "2.5", "x" }) do
            local r = proc.tide({ "worker", PIPE, "--redis", server.url, "--max-deliveries", bad })
            assert.equal(2, r.code)
            assert.matches("%-%-max%-deliveries needs a whole number >= 1", r.stderr)
        end
    end)

    it("a worker with --max-deliveries 1 says at start what a crash costs", function()
        local w = start_worker(server.url, dir, "w", "--max-deliveries 1")
        assert.is_true(eventually(10, function()
            return (proc.slurp(dir .. "/w.err") or ""):find("max%-deliveries 1: every job a dead worker held")
        end), proc.slurp(dir .. "/w.err"))
        stop_workers({ w })
    end)
end)
