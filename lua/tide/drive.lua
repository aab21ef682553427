--- Drives a run: jobs from a job source into an executor, results into a
-- result sink, with backpressure, signals, periodic flushes and the rule
-- that a failure to write stops the run. `tide run` is this with a JSONL
-- source and the stdout or --output sink (see docs/architecture.md for
-- the shapes of sources and sinks).
local json = require("tide.core").json
local runner = require "tide.runner"

local format, tostring, pairs, ipairs = string.format, tostring, pairs, ipairs
local io_stderr = io.stderr

local M = {}


--- Runs every job of `source` through pipeline p on executor ex (made
-- with results = false: results leave through the sink) and writes each
-- result to `sink`.
-- @param opts { concurrency = jobs in flight at most, priority = name,
--   tty = whether stderr is a terminal, tick = function() called after
--   each periodic flush (progress), journal = the run's journal or nil,
--   drain = seconds: on a signal, stop taking jobs and let those that
--   run finish for that long before cancelling them (a worker) }
-- @return a report { signal = number or nil, write_error = text or nil,
--   internal = text or nil, open_error = text or nil (nothing ran),
--   read_error = text or nil, complete = whether
--   the whole input was consumed, last_line = the last line taken,
--   inflight = jobs still running, interrupted = jobs a journaled run
--   stopped without a trace }
function M.run(ex, p, source, sink, opts)
    local concurrency = opts.concurrency
    local submit_opts = { id = nil, priority = opts.priority }
    local inflight = 0
    -- id -> its job while in flight: .input for failed.jsonl, .sid the id
    -- as JSON text. One table, not one per field, and replaced by a roomy
    -- copy every so many removals: a table of string keys that come and
    -- go falls into LuaJIT's rehash trap (see runner.churn_remove).
    local jobs, dels, every = {}, 0, 16
    local report = { inflight = 0, interrupted = 0 }
    local stopping -- a signal number, or true after a write error
    local pump -- defined below
    local jr = opts.journal
    -- Checkpoints: kept in the journal while their input runs, given back
    -- to a resumed input (opts.restore: id -> { task = JSON text }).
    local restore, has_checkpoints = opts.restore, {}

    -- Stops taking input and cancels what runs (a signal or a write
    -- error). A re-run of failed.jsonl keeps reading after a signal: its
    -- unread lines are copied on as failures still to run.
    local function cancel_all()
        -- Cancelling ends jobs, which takes them out of `jobs` (and may
        -- replace it): the ids are collected first.
        local ids = {}
        for id in pairs(jobs) do ids[#ids + 1] = id end
        for _, id in ipairs(ids) do ex:cancel(id) end
    end
    local drain_timer

    local function stop(why)
        if stopping then return end
        stopping = why
        if not sink.rerun or why == true then source:close() end
        if opts.drain and why ~= true then
            -- A worker's drain: what runs may finish (and be committed)
            -- for opts.drain seconds; what is left then is cancelled.
            drain_timer = ex:timer(opts.drain > 0 and opts.drain or 0.001, function()
                drain_timer:close()
                cancel_all()
            end)
        else
            cancel_all()
        end
        pump()
    end

    local function on_write_error(err)
        if report.write_error then return end
        report.write_error = err
        io_stderr:write(opts.tty and "\n" or "", "tide: cannot write results: ", tostring(err), "\n")
        stop(true)
    end

    local function pass_on(line)
        local err = sink:pass_through(line)
        if err then on_write_error(err) end
    end

    -- Submits waiting jobs while there is room (the source pauses its
    -- reading while jobs wait: memory stays bounded).
    function pump()
        if stopping then
            if stopping ~= true and sink.rerun then source:pass_rest(pass_on) end
            return
        end
        while inflight < concurrency do
            local job = source:take()
            if not job then break end
            local id = job.id
            inflight = inflight + 1
            job.sid = sink.id_json(id)
            jobs[id] = job
            submit_opts.id = id
            local saved = restore and restore[id]
            if saved then
                local outs = {}
                for task, text in pairs(saved) do outs[task] = json.decode(text) end
                submit_opts.restore = outs
                restore[id], has_checkpoints[id] = nil, true
            end
            ex:submit(p, job.input, submit_opts)
            submit_opts.restore = nil
        end
    end

    if jr then
        ex:on("checkpoint", function(id, task, output)
            local text = json.encode(output)
            if text then
                jr:checkpoint(id, task, text)
                has_checkpoints[id] = true
            end
        end)
    end
    ex:subscribe(function(id, status, value, ran, logs)
        inflight = inflight - 1
        local job = jobs[id]
        local input, sid = job.input, job.sid
        jobs, dels, every = runner.churn_remove(jobs, id, dels, every)
        if jr and stopping and status == "cancelled" then
            -- Stopped by a signal or a write error, not ended: a journaled
            -- run leaves no trace of it, and its resume runs it again.
            report.interrupted = report.interrupted + 1
            pump()
            return
        end
        local kind, err = sink:put(sid, status, value, ran, input, logs)
        if err then on_write_error(err) end
        -- After the result, so that a log that cannot be written never
        -- costs one: the run goes on and ends with exit 3 (cli.lua).
        if logs and sink.put_logs then
            local lerr = sink:put_logs(id, kind, logs)
            if lerr then
                io_stderr:write(opts.tty and "\n" or "", "tide: cannot write the log of a job: ", lerr,
                                "; the results go on, no further log files are written\n")
            end
        end
        if jr then
            jr:result(id, kind, sink:take_lines())
            if has_checkpoints[id] then
                has_checkpoints[id] = nil
                jr:forget(id)
            end
        end
        pump()
    end)

    -- After each flush the journal learns the files' lengths: they hold
    -- the lines of every item it has so far.
    local function flush()
        local err = sink:flush()
        if err then return err end
        if jr then
            -- On the device before the journal says so (power loss).
            err = sink:sync()
            if err then return err end
            jr:flushed(sink:lengths())
            local jerr = jr:error()
            if jerr then return "--journal " .. jr.path .. ": " .. jerr end
        end
        return nil
    end

    local ok, rec = source:start(pump)
    if not ok then
        report.open_error = rec.message
        sink:close(false)
        return report
    end

    -- Results reach their files within 0.2 s even while the run goes on.
    local ticker = ex:timer(0.2, function()
        local err = flush()
        if err then on_write_error(err) end
        if opts.tick then opts.tick(inflight) end
    end)

    local function on_signal(signum)
        if stopping then return end
        if opts.drain then
            io_stderr:write("tide: signal ", signum, ": draining: ", inflight, " running jobs get up to ",
                            opts.drain, " s to finish\n")
        else
            io_stderr:write(opts.tty and "\n" or "", "tide: signal ", signum, ": cancelling ", inflight,
                            " running inputs",
                            sink.rerun and "; the failures not run yet stay in failed.jsonl" or "", "\n")
        end
        report.signal = signum
        stop(signum)
    end
    local sigint = ex:signal(2, on_signal)
    local sigterm = ex:signal(15, on_signal)

    -- An internal error (a bug) ends the run after what finished is
    -- written.
    local rok, internal = pcall(ex.run, ex)
    ticker:close()
    if drain_timer then drain_timer:close() end
    sigint:close()
    sigterm:close()
    if not rok then report.internal = tostring(internal) end
    report.read_error = source.read_error
    report.complete = rok and source:done() and not report.read_error and not report.write_error
    report.last_line = source:last_line()
    report.inflight = inflight
    source:close()
    local ferr = flush()
    if ferr then on_write_error(ferr) end
    local cerr = sink:close(report.complete)
    if cerr then on_write_error(cerr) end
    return report
end


--- The summary line of a run: counts of the sink, what runs, rate, time,
-- and what the result cache answered (`cached`: { hits, misses }, shown
-- once a cached task ran).
function M.summary(counts, inflight, elapsed, final, peak_rss, cached)
    local rate = elapsed > 0 and (counts.done + counts.failed) / elapsed or 0
    local s = format("%d done, %d failed, %d rejected, ", counts.done, counts.failed, counts.rejected)
    if counts.dropped > 0 then s = s .. format("%d dropped, ", counts.dropped) end
    s = s .. format("%d running, %.0f/s, %.1f s", inflight, rate, elapsed)
    if cached and cached.hits + cached.misses > 0 then
        s = s .. format(", cache %d hit%s, %d miss%s", cached.hits, cached.hits == 1 and "" or "s",
                        cached.misses, cached.misses == 1 and "" or "es")
    end
    if final and peak_rss then s = s .. format(", peak RSS %.1f MiB", peak_rss / 1048576) end
    return s
end

return M
