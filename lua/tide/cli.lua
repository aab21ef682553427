--- The tide command line: argument parsing, the commands and their exit
-- codes. The work is done by the modules each command names.
local core = require "tide.core"
local tide = require "tide"
local executor = require "tide.executor"
local jsonl = require "tide.jsonl"
local outputs = require "tide.outputs"
local drive = require "tide.drive"
local journal = require "tide.journal"
local cache = require "tide.cache"
local distributed = require "tide.distributed"
local schedule_redis = require "tide.schedule_redis"
local redis = require "tide.redis"
local rexec = require "tide.rexec"
local trace = require "tide.trace"
local replay = require "tide.replay"

local io_stderr, io_stdout = io.stderr, io.stdout
local format, tostring = string.format, tostring
local hrtime = core.hrtime

local M = {}

local USAGE = [==[
usage: tide <command> [options]

commands:
  run PIPELINE.lua [--input FILE|-] [--output DIR [--append|--overwrite]]
                   [--concurrency N] [--threads N] [--task-timeout S]
                   [--priority high|low|lifo] [--max-line-bytes N]
                   [--memory-limit BYTES]
                   [--journal FILE [--journal-reset] [--checkpoint-after S]]
                   [--cache FILE] [--redis URL]
                   [--trace ID]... [--trace-format text|jsonl]
                   [--log-lines N] [--keep-logs]
                   [--param NAME=VALUE]... [--param-file FILE.json] [-- ARGS...]
      Run every JSONL input line through the pipeline the file returns.
      Results go to stdout as JSONL, or with --output to DIR/<sink>.jsonl,
      DIR/failed.jsonl, DIR/rejects.jsonl (and DIR/dropped.jsonl when
      routers choose no sink). A DIR that holds results needs --append or
      --overwrite, except to re-run --input DIR/failed.jsonl into DIR.
      --journal FILE makes the run resumable: the same command after a
      crash or Ctrl-C goes on where it stopped; a step that runs longer
      than --checkpoint-after S (default 1; 0: never) has what its input
      needs, and then its own output, checkpointed. Tasks declared with cache
      keep their outputs in --cache FILE (default
      $XDG_CACHE_HOME/tide/cache.db or ~/.cache/tide/cache.db).
      --redis URL hands the jobs to `tide worker` processes through Redis
      and writes their results the same way.
      --trace ID (repeatable) traces that input on stderr: each task's
      input, output or error, attempt and time (text on a terminal, else
      JSONL; --trace-format forces one).
      ctx.log and print in tasks go to stderr, and each job keeps its last
      --log-lines N of them (default 100; 0 keeps none): with --output,
      a failed job's go to DIR/logs/<id>.log (every job's with
      --keep-logs; ids are %XX-encoded as file names, see docs/cli.md).
      --param and --param-file give the parameters the pipeline declares
      (p:param); what follows -- is tide.args. `tide run PIPELINE.lua
      --help` lists the parameters (serve and worker take them too).
  replay PIPELINE.lua FAILED.jsonl [--id ID]... [--trace-format text|jsonl]
                   [--threads N] [--task-timeout S] [--memory-limit BYTES]
                   [--cache FILE] [--param NAME=VALUE]... [--param-file FILE.json]
      Run the inputs of failure records (DIR/failed.jsonl, or the failed
      lines of `tide run`'s stdout) again, one at a time, and trace each:
      every task's input, output or error, attempt and time, on stdout
      (text on a terminal, else JSONL). Exit 0 when all now succeed, 1
      when some still fail.
  worker PIPELINE.lua --redis URL [--concurrency N] [--threads N] [--lease S]
                      [--drain-timeout S] [--max-deliveries N] [--task-timeout S]
                      [--result-ttl S] [--log-lines N]
      Run the jobs that `tide run --redis` submits for this pipeline.
      SIGTERM or SIGINT stops taking jobs and lets running ones finish.
      Results are kept in Redis --result-ttl seconds (86400), with the
      last --log-lines N lines each job logged (100; 0 keeps none).
  dlq list|show ID|retry ID|retry --all|drop ID|drop --all --redis URL
      [--pipeline NAME]
      The dead-letter streams: list their jobs with their last error (JSON
      lines), show one with its input, queue it again (its deliveries
      start from zero) or drop it. ID is a job id or a dead-letter entry.
  serve PIPELINE.lua [--listen 127.0.0.1:8080] [--token-file F] [--threads N]
                     [--memory-limit BYTES]
                     [--drain-timeout S] [--request-timeout S] [--max-results N]
                     [--max-pending N] [--max-pending-bytes N] [--allow-host NAME]...
                     [--journal FILE [--journal-reset] [--checkpoint-after S]]
                     [--cache FILE] [--log-lines N] [--redis URL [--result-ttl S]]
      The HTTP/JSON job API (POST /v1/jobs, GET /v1/jobs/ID[/result|/logs],
      DELETE /v1/jobs/ID, /healthz, /metrics). Port 0 picks a free port.
      With --journal, a job is answered 201 once it is on the device, and
      a restart runs again the accepted jobs that have no result (from
      their checkpoints, as tide run does).
      Past --max-pending unfinished jobs (100000) or --max-pending-bytes of
      their request bodies (268435456), POST answers 503 with Retry-After.
      Without --token-file only Host localhost, 127.0.0.1 and [::1] are
      served; --allow-host adds a name (repeatable). SIGHUP or POST
      /v1/admin/reload loads the file again (not under --journal);
      SIGTERM or SIGINT drains. With --redis URL the jobs go to the Redis
      queue that `tide worker` processes run (an id given twice is the
      first job); Redis that cannot be reached answers 503.
  cache stats|clear [--cache FILE] [--older-than S]
      What the result cache holds (entries, bytes, oldest and newest, hits
      recorded), or remove its entries (all, or those made more than S
      seconds ago).
  graph PIPELINE.lua [--format dot|mermaid|html]
      Print the pipeline's DAG (tasks, edges, maps, gathers, routers,
      limiters) as Graphviz DOT (the default) or Mermaid.
  repl [PIPELINE.lua]
      A Lua prompt on a running engine: jobs keep running while you type
      (:help inside). The pipeline, if given, is loaded as p.
  version          Print the version.
  help             Print this help.

exit codes: 0 all done; 1 some inputs failed or were rejected; 2 usage
error or bad pipeline; 3 I/O or internal error; 130/143 on SIGINT/SIGTERM.
]==]

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_IO = 0, 1, 2, 3


local function die(code, msg)
    io_stderr:write("tide: ", msg, "\n")
    return code
end


-- The options of tide run and tide serve that name stores: nil when they
-- are usable, else the exit code (after the message).
local function check_stores(o)
    if o.journal_reset and not o.journal then
        return die(EXIT_USAGE, "--journal-reset needs --journal FILE")
    end
    if o.checkpoint_after and not o.journal then
        return die(EXIT_USAGE, "--checkpoint-after needs --journal FILE (checkpoints are kept in the journal)")
    end
    if o.cache then
        local ok, why = cache.check_place(o.cache)
        if not ok then return die(EXIT_IO, "--cache: " .. why) end
    end
end


-- Option values: each reader returns the value, or nil when it is bad.
local function as_text(v) return v end
local function whole(v)
    v = tonumber(v)
    return v and v >= 1 and v == math.floor(v) and v < math.huge and v or nil
end
local function whole_upto(max)
    return function(v)
        v = whole(v)
        return v and v <= max and v or nil
    end
end
-- A whole number from 0 to max (0 turning something off).
local function count_upto(max)
    return function(v)
        v = tonumber(v)
        return v and v >= 0 and v == math.floor(v) and v <= max and v or nil
    end
end
local function positive(v)
    v = tonumber(v)
    return v and v > 0 and v < math.huge and v or nil
end
local function nonnegative(v)
    v = tonumber(v)
    return v and v >= 0 and v or nil
end
local function finite_nonnegative(v)
    v = nonnegative(v)
    return v and v < math.huge and v or nil
end
local function host_port(v)
    local port = v:match("^%[?[^%]]*%]?:(%d+)$")
    return port and tonumber(port) <= 65535 and v or nil
end
local function one_of(set)
    return function(v) return set[v] and v or nil end
end
local function host_name(v)
    return (v:match("^[%w][%w%.%-]*$") or v:match("^%[[%x:.]+%]$")) and v or nil
end


-- Parses the arguments after the command by `options` (flag -> { key,
-- reader, message for a missing or bad value, repeatable }) into `o`; the one plain
-- argument is o.pipeline (`what` names it when missing: a pipeline
-- file), and a second one, when the command takes it, o[second]. Returns
-- o, or nil and a message.
local function parse_args(cmd, args, options, o, what, second)
    local i = 2
    while i <= #args do
        local a = args[i]
        local opt = options[a]
        if a == "--" and options["--param"] then
            -- The rest reaches the pipeline as tide.args, untouched.
            o.args = { unpack(args, i + 1) }
            break
        elseif (a == "--help" or a == "-h") and options["--param"] then
            o.help = true
        elseif opt and opt[2] == nil then -- a flag
            o[opt[1]] = true
        elseif opt then
            i = i + 1
            local v = args[i] ~= nil and opt[2](args[i]) or nil
            if v == nil then return nil, opt[3] end
            if opt[4] then -- a repeatable option: its values in a list
                local list = o[opt[1]] or {}
                list[#list + 1] = v
                v = list
            end
            o[opt[1]] = v
        elseif a:sub(1, 1) == "-" and a ~= "-" then
            return nil, "unknown option '" .. a .. "'"
        elseif not o.pipeline then
            o.pipeline = a
        elseif second and o[second] == nil then
            o[second] = a
        else
            return nil, "unexpected argument '" .. a .. "'"
        end
        i = i + 1
    end
    if not o.pipeline and not o.help then return nil, cmd .. " needs " .. (what or "a pipeline file") end
    return o
end


local RUN_OPTIONS = {
    ["--input"] = { "input", as_text, "--input needs a file name (or -)" },
    ["--output"] = { "output", as_text, "--output needs a directory" },
    ["--append"] = { "append" },
    ["--overwrite"] = { "overwrite" },
    ["--max-line-bytes"] = { "max_line_bytes", whole, "--max-line-bytes needs a whole number >= 1" },
    ["--journal"] = { "journal", as_text, "--journal needs a file name" },
    ["--journal-reset"] = { "journal_reset" },
    ["--checkpoint-after"] = { "checkpoint_after", finite_nonnegative,
                               "--checkpoint-after needs a number of seconds >= 0 (0: never)" },
    ["--cache"] = { "cache", as_text, "--cache needs a file name" },
    ["--concurrency"] = { "concurrency", whole_upto(executor.MAX_CONCURRENCY),
                          "--concurrency needs a whole number from 1 to " .. executor.MAX_CONCURRENCY },
    ["--threads"] = { "threads", whole_upto(executor.MAX_THREADS),
                      "--threads needs a whole number from 1 to " .. executor.MAX_THREADS },
    ["--task-timeout"] = { "task_timeout", positive, "--task-timeout needs a number of seconds > 0" },
    ["--priority"] = { "priority", one_of(executor.PRIO), "--priority must be high, low or lifo" },
    ["--redis"] = { "redis", as_text, "--redis needs a URL (redis://HOST:PORT[/DB])" },
    ["--memory-limit"] = { "memory_limit", executor.parse_bytes,
                           "--memory-limit needs bytes >= 1M: a whole number, or one with K, M or G (512M, 1G)" },
    ["--trace"] = { "trace", as_text, "--trace needs the id of an input", true },
    ["--trace-format"] = { "trace_format", one_of({ text = true, jsonl = true }),
                           "--trace-format must be text or jsonl" },
    ["--log-lines"] = { "log_lines", count_upto(executor.MAX_LOG_LINES),
                        "--log-lines needs a whole number from 0 to " .. executor.MAX_LOG_LINES },
    ["--keep-logs"] = { "keep_logs" },
}
-- Parameters of the pipeline (tide run, serve and worker): checked once
-- the pipeline declared them (load_params).
local PARAM_OPTIONS = {
    ["--param"] = { "param", as_text, "--param needs NAME=VALUE", true },
    ["--param-file"] = { "param_file", as_text, "--param-file needs a JSON file" },
}
for k, v in pairs(PARAM_OPTIONS) do RUN_OPTIONS[k] = v end
RUN_OPTIONS["-i"], RUN_OPTIONS["-o"], RUN_OPTIONS["-c"] =
    RUN_OPTIONS["--input"], RUN_OPTIONS["--output"], RUN_OPTIONS["--concurrency"]

local SERVE_OPTIONS = {
    ["--listen"] = { "listen", host_port, "--listen needs HOST:PORT (port 0 to 65535; 0: any free one)" },
    ["--token-file"] = { "token_file", as_text, "--token-file needs a file" },
    ["--threads"] = RUN_OPTIONS["--threads"],
    ["--memory-limit"] = RUN_OPTIONS["--memory-limit"],
    ["--request-timeout"] = { "request_timeout", positive, "--request-timeout needs seconds > 0" },
    ["--max-results"] = { "max_results", whole, "--max-results needs a whole number >= 1" },
    ["--drain-timeout"] = { "drain", nonnegative, "--drain-timeout needs seconds >= 0" },
    ["--journal"] = { "journal", as_text, "--journal needs a file name" },
    ["--journal-reset"] = { "journal_reset" },
    ["--checkpoint-after"] = RUN_OPTIONS["--checkpoint-after"],
    ["--cache"] = RUN_OPTIONS["--cache"],
    ["--max-pending"] = { "max_pending", whole, "--max-pending needs a whole number >= 1" },
    ["--max-pending-bytes"] = { "max_pending_bytes", whole,
                                "--max-pending-bytes needs a whole number of bytes >= 1" },
    ["--allow-host"] = { "allow_host", host_name,
                         "--allow-host needs a host name (letters, digits, '.', '-'; or [IPv6]), no port", true },
    ["--log-lines"] = RUN_OPTIONS["--log-lines"],
    ["--redis"] = RUN_OPTIONS["--redis"],
    ["--result-ttl"] = { "result_ttl", positive, "--result-ttl needs a number of seconds > 0" },
}

for k, v in pairs(PARAM_OPTIONS) do SERVE_OPTIONS[k] = v end

local CACHE_OPTIONS = {
    ["--cache"] = RUN_OPTIONS["--cache"],
    ["--older-than"] = { "older_than", nonnegative, "--older-than needs a number of seconds >= 0" },
}

local WORKER_OPTIONS = {
    ["--redis"] = RUN_OPTIONS["--redis"],
    ["--concurrency"] = RUN_OPTIONS["--concurrency"],
    ["-c"] = RUN_OPTIONS["--concurrency"],
    ["--threads"] = RUN_OPTIONS["--threads"],
    ["--task-timeout"] = RUN_OPTIONS["--task-timeout"],
    ["--lease"] = { "lease", positive, "--lease needs a number of seconds > 0" },
    ["--drain-timeout"] = { "drain", nonnegative, "--drain-timeout needs seconds >= 0" },
    ["--max-deliveries"] = { "max_deliveries", whole, "--max-deliveries needs a whole number >= 1" },
    ["--result-ttl"] = { "result_ttl", positive, "--result-ttl needs a number of seconds > 0" },
    ["--log-lines"] = RUN_OPTIONS["--log-lines"],
}

local DLQ_OPTIONS = {
    ["--redis"] = RUN_OPTIONS["--redis"],
    ["--pipeline"] = { "pipeline_name", function(v) return v ~= "" and v or nil end,
                       "--pipeline needs the name of a pipeline" },
    ["--all"] = { "all" },
}

local REPLAY_OPTIONS = {
    ["--id"] = { "ids", as_text, "--id needs the id of a failure", true },
    ["--trace-format"] = RUN_OPTIONS["--trace-format"],
    ["--threads"] = RUN_OPTIONS["--threads"],
    ["--task-timeout"] = RUN_OPTIONS["--task-timeout"],
    ["--memory-limit"] = RUN_OPTIONS["--memory-limit"],
    ["--cache"] = RUN_OPTIONS["--cache"],
}
for k, v in pairs(PARAM_OPTIONS) do WORKER_OPTIONS[k] = v; REPLAY_OPTIONS[k] = v end

local GRAPH_OPTIONS = {
    ["--format"] = { "format", one_of({ dot = true, mermaid = true, html = true }),
                     "--format must be dot, mermaid or html" },
}
GRAPH_OPTIONS["-f"] = GRAPH_OPTIONS["--format"]


local load_pipeline = require("tide.pipeline").load


-- The settings of a pipeline load from --param, --param-file and `--
-- args`, or nil, message.
local function param_settings(o)
    local texts, params = {}, {}
    for _, kv in ipairs(o.param or {}) do
        local name, text = kv:match("^([^=]*)=(.*)$")
        if not name then return nil, "--param needs NAME=VALUE, got '" .. kv .. "' (no '=')" end
        if name == "" then return nil, "--param needs NAME=VALUE, got '" .. kv .. "' (no name)" end
        -- The last --param of a name wins, as a later option overrides an
        -- earlier one elsewhere on the command line.
        texts[name] = text
    end
    if o.param_file then
        local f, ferr = io.open(o.param_file, "rb")
        if not f then return nil, "--param-file " .. tostring(ferr) end
        local text, rerr = f:read("*a")
        f:close()
        if not text then return nil, "--param-file " .. o.param_file .. ": " .. tostring(rerr) end
        local v, jerr = core.json.decode(text)
        if v == nil then
            return nil, "--param-file " .. o.param_file .. ": " .. tostring(jerr):gsub("^EVALUE: ", "")
        end
        if type(v) ~= "table" or (next(v) ~= nil and v[1] ~= nil) then
            return nil, "--param-file " .. o.param_file .. ": must hold a JSON object of NAME: value"
        end
        params = v
    end
    return { texts = texts, params = params, args = o.args or {},
             from = o.param_file and ("--param-file " .. o.param_file) or nil }
end


-- How a default is shown in --help: as JSON, which is how it is given.
local function shown(v)
    local text = core.json.encode(v)
    return text or tostring(v)
end


-- `tide CMD PIPELINE.lua --help`: the command's usage and the pipeline's
-- parameters, with their types, defaults and docs.
local function param_help(cmd, o)
    if not o.pipeline then
        io_stdout:write(USAGE)
        return EXIT_OK
    end
    local p, err, decls = load_pipeline(o.pipeline, nil, { help = true })
    if not p and #decls == 0 then return die(EXIT_USAGE, err) end
    local out = { format("usage: tide %s %s [options] [--param NAME=VALUE]... [--param-file FILE.json] "
                         .. "[-- ARGS...]\n", cmd, o.pipeline) }
    if #decls == 0 then
        out[#out + 1] = format("\npipeline '%s' declares no parameters.\n", p and p.name or o.pipeline)
    else
        out[#out + 1] = format("\nparameters of pipeline '%s':\n", p and p.name or o.pipeline)
        for _, d in ipairs(decls) do
            local what = (d.type or "any")
                .. (d.required and ", required" or (", default " .. shown(d.default)))
            out[#out + 1] = format("  %-20s %s\n", d.name, what)
            if d.doc then out[#out + 1] = format("  %-20s %s\n", "", d.doc) end
        end
    end
    out[#out + 1] = "\nSee `tide help` for the options of every command.\n"
    io_stdout:write(table.concat(out))
    if not p then io_stderr:write("tide: ", err, "\n") end
    return EXIT_OK
end


-- Loads o.pipeline with its parameters: the pipeline, or nil and the exit
-- code (after the message).
local function load_params(o, pin)
    local settings, serr = param_settings(o)
    if not settings then return nil, die(EXIT_USAGE, serr) end
    settings.pin = pin
    local p, err = load_pipeline(o.pipeline, nil, settings)
    if not p then return nil, die(EXIT_USAGE, err) end
    return p
end


-- The exit code of a run from its report, printing why when it is not 0
-- or 1.
local function run_exit_code(report, sink)
    if report.write_error or sink.error then
        io_stderr:write("tide: the run stopped at the write error; written: ", sink:written(), "\n")
        return EXIT_IO
    end
    if report.internal then return die(EXIT_IO, report.internal) end
    if report.signal then
        if not sink.rerun and not report.complete then
            io_stderr:write(format("tide: stopped: input lines after line %d were not run\n", report.last_line))
        end
        return 128 + report.signal
    end
    if report.read_error then return die(EXIT_IO, report.read_error) end
    if report.inflight > 0 then
        -- The loop ended with jobs out: nothing was waiting for their
        -- results any more (a bug), so the run is not complete.
        return die(EXIT_IO, format("the run ended with %d jobs still running", report.inflight))
    end
    local c = sink.counts
    if c.failed > 0 or c.rejected > 0 then return EXIT_FAILED end
    return EXIT_OK
end


local function run(args)
    local o, perr = parse_args("run", args, RUN_OPTIONS, {
        concurrency = 1000, priority = "low", max_line_bytes = jsonl.DEFAULT_MAX_LINE_BYTES,
    })
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    if o.help then return param_help("run", o) end
    if o.append and o.overwrite then
        return die(EXIT_USAGE, "--append and --overwrite cannot be given together")
    end
    if (o.append or o.overwrite) and not o.output then
        return die(EXIT_USAGE, (o.append and "--append" or "--overwrite") .. " needs --output DIR")
    end
    if not o.output and select(2, core.stdfd_closed()) then
        return die(EXIT_IO, "stdout was closed when tide started, so results have nowhere to go: "
                   .. "give --output DIR or start tide with stdout open")
    end
    if o.keep_logs and not o.output then
        return die(EXIT_USAGE, "--keep-logs needs --output DIR (the logs go to DIR/logs)")
    end
    -- print inside tasks must not corrupt the JSONL on stdout; the job
    -- whose task prints keeps the line too.
    _G.print = executor.print
    local p, lcode = load_params(o)
    if not p then return lcode end

    local path = o.input
    if path == "-" then path = nil end
    if o.journal and not o.output then
        return die(EXIT_USAGE, "--journal needs --output DIR (a resume cuts the files back to what "
                   .. "the journal recorded, which stdout cannot do)")
    end
    local bad = check_stores(o)
    if bad then return bad end
    if o.redis and o.journal then
        return die(EXIT_USAGE, "--redis and --journal cannot be given together (Redis keeps the jobs)")
    end
    if o.redis and not redis.parse_url(o.redis) then
        return die(EXIT_USAGE, select(2, redis.parse_url(o.redis)))
    end
    if o.redis and o.trace then
        return die(EXIT_USAGE, "--trace cannot be given with --redis (the tasks run on the workers)")
    end
    if o.trace_format and not o.trace then
        return die(EXIT_USAGE, "--trace-format needs --trace ID")
    end
    local ex = executor.new {
        concurrency = o.concurrency, task_timeout = o.task_timeout, threads = o.threads,
        memory_limit = o.memory_limit, results = false, cache = o.cache, log_lines = o.log_lines,
        checkpoint_after = o.checkpoint_after,
    }
    if o.trace then
        -- The trace goes to stderr, since stdout may carry the results. On a
        -- terminal the progress line is cleared first, so that the two do
        -- not run into each other.
        local fmt = o.trace_format or trace.format_for(2)
        local clear = fmt == "text" and core.isatty(2) and "\r\27[K" or ""
        trace.new({ format = fmt, ids = o.trace,
                    write = function(line) io_stderr:write(clear, line) end }):attach(ex)
    end
    local function cached()
        local s = ex:stats()
        return { hits = s.cache_hits, misses = s.cache_misses }
    end
    -- With --redis the jobs run on workers: drive.run gets a stand-in for
    -- the executor that submits to Redis and reads the results back.
    local runner_ex, remote = ex, nil
    if o.redis then
        local rerr
        remote, rerr = distributed.open_remote(ex, o.redis, p, o.pipeline)
        if not remote then
            ex:close()
            return die(EXIT_IO, rerr)
        end
        runner_ex = remote
    end
    local jr, sink
    if o.journal then
        local jerr, jcode
        jr, jerr, jcode = journal.open(ex, o.journal, p, o.pipeline, { reset = o.journal_reset })
        if not jr then
            ex:close()
            return die(jcode, jerr)
        end
        if jr.finished then
            io_stderr:write("tide: ", jr:finished_message(), "\n")
            local code = jr:exit_code()
            jr:close()
            ex:close()
            return code
        end
    end
    local oerr, ocode
    sink, oerr, ocode = outputs.open {
        dir = o.output, input = path, sinks = p.sink_names, routed = p.has_routes,
        mode = (o.append and "append") or ((o.overwrite or o.journal_reset) and "overwrite") or nil,
        resume = jr and jr.resume and jr:files() or nil,
    }
    if sink and sink.rerun and jr then
        sink, oerr, ocode = nil, "--journal cannot re-run DIR/failed.jsonl into DIR: run the failures "
            .. "with a journal of their own into another directory", EXIT_USAGE
    end
    if not sink then
        if jr then jr:close() end
        ex:close()
        return die(ocode, oerr)
    end
    local done -- keys a resumed run has finished already
    local restore -- their checkpoints: id -> { task = JSON text }
    if jr then
        sink.captured = {}
        if jr.resume then
            -- The files hold what the journal recorded; the results after
            -- that are in the journal: written again, not run again.
            local rerr = jr:unflushed(function(lines) return sink:rewrite(lines) end)
                or sink:flush() or sink:sync()
            if rerr then
                jr:close()
                ex:close()
                return die(EXIT_IO, tostring(rerr))
            end
            done = jr:done_keys()
            restore = jr:checkpoints()
            sink.counts = jr:counts()
            io_stderr:write(format("tide: resuming from the journal %s: %d inputs ended before\n",
                                   o.journal, sink.counts.done + sink.counts.failed + sink.counts.rejected
                                       + sink.counts.dropped))
        end
        local serr = sink:sync()
        if serr then
            jr:close()
            ex:close()
            return die(EXIT_IO, tostring(serr))
        end
        jr:flushed(sink:lengths())
    end
    if o.output then
        -- Subprocess logs of exec tasks and tide.exec.
        require("tide.exec").log_dir = o.output .. "/logs"
        -- The kept lines of failed jobs (all jobs with --keep-logs).
        sink.logs_dir, sink.keep_logs = o.output .. "/logs", o.keep_logs
    end

    local tty = core.isatty(2)
    local source = jsonl.source(ex, path, o.max_line_bytes, {
        reject = function(no, text, msg)
            if done and done["#" .. no] then return end
            local err = sink:reject(no, text, msg)
            if err then io_stderr:write("tide: cannot write results: ", tostring(err), "\n") end
            if jr then jr:reject(no, sink:take_lines()) end
        end,
        warn = function(msg) io_stderr:write("tide: ", msg, "\n") end,
        skip = done and function(id) return done[id] ~= nil end or nil,
    })
    local started = hrtime()
    local report = drive.run(runner_ex, p, source, sink, {
        concurrency = o.concurrency, priority = o.priority, tty = tty, journal = jr, restore = restore,
        tick = tty and function(inflight)
            io_stderr:write("\r\27[K", drive.summary(sink.counts, inflight, hrtime() - started, false, nil,
                                                     cached()))
        end or nil,
    })
    if report.open_error then
        if jr then jr:close() end
        ex:close()
        return die(EXIT_IO, "--input: " .. report.open_error)
    end
    if tty then io_stderr:write("\r\27[K") end
    io_stderr:write("tide: ", drive.summary(sink.counts, report.inflight, hrtime() - started, true,
                                            core.maxrss(), cached()), "\n")
    local code = run_exit_code(report, sink)
    if sink.logs_error and (code == EXIT_OK or code == EXIT_FAILED) then
        -- Every result was written; some failed job's log was not, which
        -- the user asked for: not a success.
        io_stderr:write("tide: the results are complete, but the job logs are not: ", sink.logs_error, "\n")
        code = EXIT_IO
    end
    if jr then
        if code == EXIT_OK or code == EXIT_FAILED then jr:finish(code) end
        local summary = jr:summary()
        local jerr = jr:close()
        io_stderr:write("tide: ", summary, "\n")
        if jerr then
            io_stderr:write("tide: --journal ", o.journal, ": ", jerr, "\n")
            code = EXIT_IO
        elseif report.signal then
            io_stderr:write(format("tide: the journal %s keeps what ended; the same command resumes the "
                                   .. "run\n", o.journal))
        end
    end
    if remote then remote:finish() end
    ex:close()
    return code
end


-- Prints in tasks go to stderr, so that stdout carries only what the
-- command writes (results, a JSONL trace).
local function print_to_stderr()
    _G.print = executor.print
end


-- tide replay PIPELINE.lua FAILED.jsonl [--id ID]...: runs the inputs of
-- failure records again, one at a time, each traced on stdout.
local function replay_command(args)
    local o, perr = parse_args("replay", args, REPLAY_OPTIONS, {}, nil, "failed")
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    if not o.failed then
        return die(EXIT_USAGE, "replay needs a file of failure records (DIR/failed.jsonl)\n" .. USAGE)
    end
    local bad = check_stores(o)
    if bad then return bad end
    print_to_stderr()
    local p, lcode = load_params(o)
    if not p then return lcode end
    local recs, rerr, rcode = replay.read(o.failed)
    if not recs then return die(rcode, rerr) end
    local chosen, serr = replay.select(recs, o.ids, o.failed)
    if not chosen then return die(EXIT_USAGE, serr) end
    local ex = executor.new {
        task_timeout = o.task_timeout, threads = o.threads, memory_limit = o.memory_limit, cache = o.cache,
    }
    local fmt = o.trace_format or trace.format_for(1)
    local tracer = trace.new({ format = fmt, write = function(line) io_stdout:write(line) end }):attach(ex)
    local ok_n, fail_n = 0, 0
    for _, r in ipairs(chosen) do
        local status, value, jid = replay.run_one(ex, p, r.input, replay.free_id(ex, r.id), tracer)
        io_stdout:flush()
        io_stderr:write("tide: ", replay.verdict(jid, status, value), "\n")
        if status == "done" then ok_n = ok_n + 1 else fail_n = fail_n + 1 end
    end
    local ferr = select(2, io_stdout:flush())
    tracer:detach()
    ex:close()
    io_stderr:write(format("tide: replayed %d: %d now succeed, %d still fail\n", ok_n + fail_n, ok_n, fail_n))
    if ferr then return die(EXIT_IO, "cannot write the trace: " .. tostring(ferr)) end
    return fail_n > 0 and EXIT_FAILED or EXIT_OK
end


local function worker(args)
    local o, perr = parse_args("worker", args, WORKER_OPTIONS, {
        concurrency = 100, lease = distributed.DEFAULT_LEASE, drain = 30,
        max_deliveries = distributed.DEFAULT_MAX_DELIVERIES,
    })
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    if o.help then return param_help("worker", o) end
    if not o.redis then return die(EXIT_USAGE, "tide worker needs --redis URL\n" .. USAGE) end
    local uok, uerr = redis.parse_url(o.redis)
    if not uok then return die(EXIT_USAGE, uerr) end
    -- A job's print lines go to stderr and are kept with it, as in tide
    -- run: they travel with its result (distributed.lua's COMMIT).
    print_to_stderr()
    local p, lcode = load_params(o)
    if not p then return lcode end
    local ex = executor.new {
        concurrency = o.concurrency, task_timeout = o.task_timeout, threads = o.threads,
        results = false, log_lines = o.log_lines,
    }
    -- The results this process commits expire after --result-ttl (the
    -- one setting of the process's worker).
    distributed.RESULT_TTL_MS = math.floor((o.result_ttl or rexec.DEFAULT_RESULT_TTL) * 1000)
    local w, werr = distributed.open_worker(ex, o.redis, p, o.pipeline, o)
    if not w then
        ex:close()
        return die(EXIT_IO, werr)
    end
    io_stderr:write(format("tide: worker %s: pipeline '%s' (%s) from %s, concurrency %d, lease %g s\n",
                           w.consumer, p.name, w.hash:sub(1, 12), redis.redact(o.redis), o.concurrency, o.lease))
    -- Below 3, a dead worker's jobs cannot run again together without
    -- risking an innocent job's last delivery (distributed.alone_from):
    -- said once at start, since it changes what a crash costs.
    if o.max_deliveries == 1 then
        io_stderr:write("tide: worker: --max-deliveries 1: every job a dead worker held (running or read "
                        .. "ahead) goes to the dead-letter stream\n")
    elseif o.max_deliveries == 2 then
        io_stderr:write("tide: worker: --max-deliveries 2: a dead worker's jobs run again one at a time "
                        .. "(3 or more lets them run together)\n")
    end
    -- p:schedule: every worker keeps the clock, and Redis makes each fire
    -- one job (schedule_redis.lua). The fires stop when the worker stops
    -- taking jobs (its source closes: a signal, a drain).
    local sched, serr = schedule_redis.start(ex, o.redis, p, w.hash, function(msg)
        io_stderr:write("tide: ", msg, "\n")
    end)
    if serr then
        w:close()
        ex:close()
        return die(EXIT_IO, serr)
    end
    if sched then
        local close_source = w.source.close
        w.source.close = function(src)
            sched.stop()
            return close_source(src)
        end
    end
    -- (After the schedules: their start runs the loop until Redis answers,
    -- and the listener's blocking read would hold that loop open.)
    -- The stream is trimmed by minimum id of unfinished work, now and then.
    local stop_trim = rexec.trimmer(ex, w.sink.cmd, p.name)
    -- A job cancelled elsewhere (ex:cancel, DELETE /v1/jobs/ID) stops here
    -- at once: its result is written already, and its commit would be
    -- refused.
    local stop_listen = rexec.cancel_listener(ex, o.redis, p.name, function(entry)
        local exid = w.sink.exids[entry]
        w.sink.held[entry] = nil
        if exid then ex:cancel(exid) end
    end)
    -- The listener's blocking read ends when the worker stops taking jobs
    -- (it would hold the loop of a drain open).
    local source_close = w.source.close
    w.source.close = function(src)
        stop_listen()
        return source_close(src)
    end
    local report = drive.run(ex, p, w.source, w.sink, { concurrency = o.concurrency, priority = "low",
                                                       drain = o.drain })
    if sched then sched.close() end
    stop_trim()
    stop_listen()
    w:close()
    local c = w.sink.counts
    io_stderr:write(format("tide: worker stopped: %d done, %d failed, %d results refused "
                           .. "(another delivery owned the job)\n", c.done, c.failed, w.sink.refused))
    ex:close()
    if report.internal then return die(EXIT_IO, report.internal) end
    return EXIT_OK
end


-- tide serve --redis: the HTTP API in front of the queue (tide.rserve).
local function serve_redis(o, p, token)
    local server, rec = require("tide.rserve").serve(p, {
        listen = o.listen, token = token, allow_host = o.allow_host, url = o.redis,
        result_ttl = o.result_ttl, request_timeout = o.request_timeout,
    })
    if not server then return die(EXIT_IO, rec.message) end
    local host = o.listen:match("^(.*):%d+$")
    io_stderr:write(format("tide: serving '%s' on http://%s:%d, jobs in Redis at %s\n", p.name, host,
                           server.port, redis.redact(o.redis)))
    local ex = server.executor
    local sigs = {}
    local function on_signal(signum)
        io_stderr:write("tide: stopping (signal ", signum, "): jobs in Redis go on on the workers\n")
        for _, s in ipairs(sigs) do s:close() end
        server.drain()
    end
    sigs[1] = ex:signal(2, on_signal)
    sigs[2] = ex:signal(15, on_signal)
    ex:run()
    ex:close()
    io_stderr:write("tide: stopped\n")
    return EXIT_OK
end


local function serve(args)
    local o, perr = parse_args("serve", args, SERVE_OPTIONS, { listen = "127.0.0.1:8080", drain = 30 })
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    if o.help then return param_help("serve", o) end
    local token
    if o.token_file then
        local f, err = io.open(o.token_file)
        if not f then return die(EXIT_USAGE, "--token-file: " .. tostring(err)) end
        token = (f:read("*a") or ""):match("^%s*(.-)%s*$")
        f:close()
        if token == "" then return die(EXIT_USAGE, "--token-file: the file is empty") end
    end
    if o.redis then
        local uok, uerr = redis.parse_url(o.redis)
        if not uok then return die(EXIT_USAGE, uerr) end
        if o.journal then
            return die(EXIT_USAGE, "--redis and --journal cannot be given together (Redis keeps the jobs)")
        end
    elseif o.result_ttl then
        return die(EXIT_USAGE, "--result-ttl goes with --redis URL")
    end
    -- Pinned: worker threads compile the text read now, so a reload
    -- (SIGHUP, POST /v1/admin/reload) never changes a running job's code.
    local p, lcode = load_params(o, true)
    if not p then return lcode end
    if o.redis then return serve_redis(o, p, token) end
    local bad = check_stores(o)
    if bad then return bad end
    -- Prints in tasks still go where they went (stdout), and the job
    -- keeps them too (GET /v1/jobs/ID/logs).
    local plain_print = print
    _G.print = function(...)
        local parts = {}
        for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
        executor.keep_print(table.concat(parts, "\t"))
        return plain_print(...)
    end
    local sex = executor.new {
        max_results = o.max_results or 100000, threads = o.threads, memory_limit = o.memory_limit,
        cache = o.cache, log_lines = o.log_lines, checkpoint_after = o.checkpoint_after,
        results = "json",
    }
    local jr
    if o.journal then
        local jerr, jcode
        jr, jerr, jcode = journal.open(sex, o.journal, p, o.pipeline,
                                       { reset = o.journal_reset, command = "serve" })
        if not jr then
            sex:close()
            return die(jcode, jerr)
        end
    end
    local server, serr = require("tide.serve").serve(p, {
        listen = o.listen, token = token, executor = sex, journal = jr,
        request_timeout = o.request_timeout,
        max_pending = o.max_pending, max_pending_bytes = o.max_pending_bytes, allow_host = o.allow_host,
    })
    if not server then
        if jr then jr:close() end
        sex:close()
        return die(EXIT_IO, serr.message)
    end
    if server.recovered > 0 then
        io_stderr:write(format("tide: the journal %s: %d accepted jobs had no result; they run again\n",
                               o.journal, server.recovered))
    end
    local host = o.listen:match("^(.*):%d+$")
    io_stderr:write(format("tide: serving '%s' on http://%s:%d\n", p.name, host, server.port))
    local ex = server.executor
    local draining
    local function on_signal(signum)
        if draining then return end
        draining = signum
        io_stderr:write("tide: draining (signal ", signum, ")\n")
        server.drain(o.drain)
    end
    local sigint = ex:signal(2, on_signal)
    local sigterm = ex:signal(15, on_signal)
    -- SIGHUP reloads the pipeline's file (docs/cli.md): the outcome is a
    -- line on stderr, and a file that fails leaves the old version serving.
    local sighup = ex:signal(1, function()
        if draining then return end
        local res, rec = server.reload()
        if not res then io_stderr:write("tide: reload failed, the old version serves on: ", rec.message, "\n") end
    end)
    ex:run()
    sigint:close()
    sigterm:close()
    sighup:close()
    if jr then
        local jerr = jr:close()
        if jerr then io_stderr:write("tide: --journal ", o.journal, ": ", jerr, "\n") end
    end
    ex:close()
    io_stderr:write("tide: stopped\n")
    return EXIT_OK
end


-- tide dlq list|show ID|retry ID|retry --all|drop ID|drop --all --redis
-- URL [--pipeline NAME]: the dead-letter streams.
local DLQ_ACTIONS = { list = "", show = "ID", retry = "ID or --all", drop = "ID or --all" }
local function dlq_command(args)
    local o, perr = parse_args("dlq", args, DLQ_OPTIONS, {}, "an action (list, show, retry or drop)", "id")
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    o.action = o.pipeline
    local needs = DLQ_ACTIONS[o.action]
    if not needs then
        return die(EXIT_USAGE, "dlq: unknown action '" .. o.action .. "' (list, show, retry or drop)")
    end
    if not o.redis then return die(EXIT_USAGE, "tide dlq needs --redis URL") end
    local uok, uerr = redis.parse_url(o.redis)
    if not uok then return die(EXIT_USAGE, uerr) end
    if o.action == "list" and (o.id or o.all) then
        return die(EXIT_USAGE, "dlq list takes no ID or --all")
    end
    if o.action == "show" and o.all then return die(EXIT_USAGE, "dlq show takes an ID, not --all") end
    if o.action ~= "list" and not o.id == not o.all then
        return die(EXIT_USAGE, "dlq " .. o.action .. " needs " .. needs .. " (one of them)")
    end
    return rexec.dlq_command(o, function(line) io_stdout:write(line, "\n") end,
                             function(msg) io_stderr:write("tide: ", msg, "\n") end)
end


local function when(t, now)
    return format("%s (%.0f s ago)", os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(t)), now - t)
end


-- tide cache stats|clear: what the result cache holds, or remove entries.
local function cache_command(args)
    local o, perr = parse_args("cache", args, CACHE_OPTIONS, {}, "stats or clear")
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    local action = o.pipeline
    if action ~= "stats" and action ~= "clear" then
        return die(EXIT_USAGE, "cache: unknown action '" .. action .. "' (stats or clear)\n" .. USAGE)
    end
    if o.older_than and action ~= "clear" then
        return die(EXIT_USAGE, "--older-than goes with tide cache clear")
    end
    local path = o.cache
    if not path then
        local why
        path, why = cache.default_path()
        if not path then return die(EXIT_USAGE, why) end
    end
    local c, err, code = cache.open_file(path)
    if not c then
        if code ~= "ENOENT" then return die(EXIT_IO, "cache: " .. err) end
        if action == "stats" then
            io_stdout:write("cache: ", path, "\nentries: 0 (no file yet)\n")
        else
            io_stdout:write("cache ", path, ": no file, nothing to clear\n")
        end
        return EXIT_OK
    end
    local s, serr = c:stats(o.older_than or 0)
    if not s then
        c:close()
        return die(EXIT_IO, "cache: " .. path .. ": " .. serr)
    end
    if action == "clear" then
        local n = o.older_than and s.older or s.entries
        c:clear(o.older_than)
        local ok, cerr = c:close()
        if not ok then return die(EXIT_IO, "cache: " .. tostring(cerr)) end
        io_stdout:write(format("cache %s: removed %d entries, %d left\n", path, n, s.entries - n))
        return EXIT_OK
    end
    c:close()
    local now = core.cache_now()
    local disk = 0
    for _, suffix in ipairs({ "", "-wal" }) do
        local st = core.stat(path .. suffix)
        if st then disk = disk + st.size end
    end
    io_stdout:write(format("cache: %s\nentries: %d\nbytes: %d (keys and values; %d on disk)\n",
                           path, s.entries, s.bytes, disk),
                    "oldest: ", s.oldest and when(s.oldest, now) or "-", "\n",
                    "newest: ", s.newest and when(s.newest, now) or "-", "\n",
                    format("hits recorded: %d\n", s.hits))
    return EXIT_OK
end


local function graph(args)
    local o, perr = parse_args("graph", args, GRAPH_OPTIONS, { format = "dot" })
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    local fmt, path = o.format, o.pipeline
    local p, err = load_pipeline(path)
    if not p then return die(EXIT_USAGE, err) end
    io_stdout:write(require("tide.graph")[fmt](p))
    return EXIT_OK
end


function M.main(args)
    local cmd = args[1]
    if cmd == nil then
        return die(EXIT_USAGE, "no command given\n" .. USAGE)
    elseif cmd == "help" or cmd == "--help" or cmd == "-h" then
        io_stdout:write(USAGE)
        return EXIT_OK
    elseif cmd == "version" or cmd == "--version" then
        io_stdout:write("tide ", tide.version, " (", jit and jit.version or _VERSION, ")\n")
        return EXIT_OK
    elseif cmd == "run" then
        return run(args)
    elseif cmd == "graph" then
        return graph(args)
    elseif cmd == "repl" then
        if #args > 2 or (args[2] and args[2]:sub(1, 1) == "-") then
            return die(EXIT_USAGE, "usage: tide repl [PIPELINE.lua]")
        end
        return require("tide.repl").main(args[2])
    elseif cmd == "serve" then
        return serve(args)
    elseif cmd == "cache" then
        return cache_command(args)
    elseif cmd == "worker" then
        return worker(args)
    elseif cmd == "replay" then
        return replay_command(args)
    elseif cmd == "dlq" then
        return dlq_command(args)
    end
    return die(EXIT_USAGE, "unknown command '" .. tostring(cmd) .. "'\n" .. USAGE)
end

return M
