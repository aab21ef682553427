--- The tide command line: `tide run`, `tide version`, `tide --help`.
local core = require "tide.core"
local tide = require "tide"
local executor = require "tide.executor"
local jsonl = require "tide.jsonl"
local outputs = require "tide.outputs"

local json = core.json
local io_stderr, io_stdout = io.stderr, io.stdout
local format, tostring, type, pairs = string.format, tostring, type, pairs
local hrtime = core.hrtime

local M = {}

local USAGE = [==[
usage: tide <command> [options]

commands:
  run PIPELINE.lua [--input FILE|-] [--output DIR [--append|--overwrite]]
                   [--concurrency N] [--threads N] [--task-timeout S]
                   [--priority high|low|lifo] [--max-line-bytes N]
      Run every JSONL input line through the pipeline the file returns.
      Results go to stdout as JSONL, or with --output to DIR/<sink>.jsonl,
      DIR/failed.jsonl, DIR/rejects.jsonl (and DIR/dropped.jsonl when
      routers choose no sink). A DIR that holds results needs --append or
      --overwrite, except to re-run --input DIR/failed.jsonl into DIR.
  serve PIPELINE.lua [--listen 127.0.0.1:8080] [--token-file F] [--threads N]
                     [--drain-timeout S] [--request-timeout S] [--max-results N]
                     [--max-pending N] [--max-pending-bytes N] [--allow-host NAME]...
      The HTTP/JSON job API (POST /v1/jobs, GET /v1/jobs/ID[/result],
      DELETE /v1/jobs/ID, /healthz, /metrics). Port 0 picks a free port.
      Past --max-pending unfinished jobs (100000) or --max-pending-bytes of
      their request bodies (268435456), POST answers 503 with Retry-After.
      Without --token-file only Host localhost, 127.0.0.1 and [::1] are
      served; --allow-host adds a name (repeatable).
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
local function positive(v)
    v = tonumber(v)
    return v and v > 0 and v < math.huge and v or nil
end
local function nonnegative(v)
    v = tonumber(v)
    return v and v >= 0 and v or nil
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
-- argument is o.pipeline. Returns o, or nil and a message.
local function parse_args(cmd, args, options, o)
    local i = 2
    while i <= #args do
        local a = args[i]
        local opt = options[a]
        if opt and opt[2] == nil then -- a flag
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
        else
            return nil, "unexpected argument '" .. a .. "'"
        end
        i = i + 1
    end
    if not o.pipeline then return nil, cmd .. " needs a pipeline file" end
    return o
end


local RUN_OPTIONS = {
    ["--input"] = { "input", as_text, "--input needs a file name (or -)" },
    ["--output"] = { "output", as_text, "--output needs a directory" },
    ["--append"] = { "append" },
    ["--overwrite"] = { "overwrite" },
    ["--max-line-bytes"] = { "max_line_bytes", whole, "--max-line-bytes needs a whole number >= 1" },
    ["--concurrency"] = { "concurrency", whole_upto(executor.MAX_CONCURRENCY),
                          "--concurrency needs a whole number from 1 to " .. executor.MAX_CONCURRENCY },
    ["--threads"] = { "threads", whole_upto(executor.MAX_THREADS),
                      "--threads needs a whole number from 1 to " .. executor.MAX_THREADS },
    ["--task-timeout"] = { "task_timeout", positive, "--task-timeout needs a number of seconds > 0" },
    ["--priority"] = { "priority", one_of(executor.PRIO), "--priority must be high, low or lifo" },
}
RUN_OPTIONS["-i"], RUN_OPTIONS["-o"], RUN_OPTIONS["-c"] =
    RUN_OPTIONS["--input"], RUN_OPTIONS["--output"], RUN_OPTIONS["--concurrency"]

local SERVE_OPTIONS = {
    ["--listen"] = { "listen", host_port, "--listen needs HOST:PORT (port 0 to 65535; 0: any free one)" },
    ["--token-file"] = { "token_file", as_text, "--token-file needs a file" },
    ["--threads"] = RUN_OPTIONS["--threads"],
    ["--request-timeout"] = { "request_timeout", positive, "--request-timeout needs seconds > 0" },
    ["--max-results"] = { "max_results", whole, "--max-results needs a whole number >= 1" },
    ["--drain-timeout"] = { "drain", nonnegative, "--drain-timeout needs seconds >= 0" },
    ["--max-pending"] = { "max_pending", whole, "--max-pending needs a whole number >= 1" },
    ["--max-pending-bytes"] = { "max_pending_bytes", whole,
                                "--max-pending-bytes needs a whole number of bytes >= 1" },
    ["--allow-host"] = { "allow_host", host_name,
                         "--allow-host needs a host name (letters, digits, '.', '-'; or [IPv6]), no port", true },
}

local GRAPH_OPTIONS = {
    ["--format"] = { "format", one_of({ dot = true, mermaid = true, html = true }),
                     "--format must be dot, mermaid or html" },
}
GRAPH_OPTIONS["-f"] = GRAPH_OPTIONS["--format"]


local load_pipeline = require("tide.pipeline").load


-- The id of an input: its "id" field when that is a non-empty string or a
-- number (numbers keep every digit: their JSON text is the id), else nil.
-- The second value says why an "id" field that is present was not used.
local function input_id(v)
    local id = v.id
    local t = type(id)
    if t == "string" then
        if id ~= "" then return id end
        return nil, "an empty string"
    elseif t == "number" or t == "cdata" then
        local s = json.encode(id)
        if s then return s end
        return nil, "a number JSON cannot carry"
    elseif id ~= nil then
        return nil, id == json.null and "null" or ("a " .. t)
    end
    return nil
end


local function run(args)
    local o, perr = parse_args("run", args, RUN_OPTIONS, {
        concurrency = 1000, priority = "low", max_line_bytes = jsonl.DEFAULT_MAX_LINE_BYTES,
    })
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
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
    -- print inside tasks must not corrupt the JSONL on stdout.
    _G.print = function(...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do parts[i] = tostring((select(i, ...))) end
        io_stderr:write(table.concat(parts, "\t"), "\n")
    end
    local p, lerr = load_pipeline(o.pipeline)
    if not p then return die(EXIT_USAGE, lerr) end

    local path = o.input
    if path == "-" then path = nil end
    local out, oerr, ocode = outputs.open {
        dir = o.output, mode = o.append and "append" or o.overwrite and "overwrite" or nil,
        input = path, sinks = p.sink_names, routed = p.has_routes,
    }
    if not out then return die(ocode, oerr) end
    if o.output then
        -- Subprocess logs of exec tasks and tide.exec.
        require("tide.exec").log_dir = o.output .. "/logs"
    end

    local inflight = 0
    local inputs = {} -- id -> original input, while in flight (for failed.jsonl)
    local quoted = {} -- id -> the id as JSON text, while in flight
    local pend_no, pend_line, phead, ptail = {}, {}, 1, 0 -- lines waiting for capacity
    local pump -- defined below
    local eof, reader, read_error = false, nil, nil
    local write_error -- the first failure to write a result: the run stops
    local stopping -- a signal number, or true after a write error
    local started = hrtime()
    local concurrency = o.concurrency
    local ex
    local last_no = 0 -- the number of the last line submitted

    -- Stops taking input and cancels what runs (a signal or a write
    -- error). A re-run of failed.jsonl keeps reading after a signal: its
    -- unread lines are copied on as failures still to run.
    local function stop(why)
        if stopping then return end
        stopping = why
        if not out.rerun or why == true then
            eof = true
            if reader then reader:close() reader = nil end
            phead = ptail + 1
        end
        for id in pairs(inputs) do ex:cancel(id) end
    end

    local tty = core.isatty(2)
    local function on_write_error(err)
        if write_error then return end
        write_error = err
        io_stderr:write(tty and "\n" or "", "tide: cannot write results: ", tostring(err), "\n")
        stop(true)
    end

    local function on_done(id, status, value, ran)
        inflight = inflight - 1
        local input, sid = inputs[id], quoted[id]
        inputs[id], quoted[id] = nil, nil
        local _, err = out:result(sid, status, value, ran, input)
        if err then on_write_error(err) end
        pump()
    end

    ex = executor.new {
        concurrency = concurrency, task_timeout = o.task_timeout,
        threads = o.threads, on_done = on_done,
    }
    local prio = executor.PRIO[o.priority]

    local function reject(n, line, msg)
        local err = out:reject(n, line, msg)
        if err then on_write_error(err) end
    end

    local next_id = jsonl.ids()
    local function submit_line(n, line)
        local v, err = json.decode(line)
        if v == nil and err then
            reject(n, line, "malformed JSON: " .. tostring(err))
            return
        end
        local id, why
        if type(v) == "table" and getmetatable(v) == json.object_mt then
            id, why = input_id(v)
            -- A record of failed.jsonl re-runs its original input.
            if v.error ~= nil and v.input ~= nil and v.id ~= nil then v = v.input end
            if why then
                io_stderr:write(format("tide: line %d: the id is %s, not a string or a number; "
                                       .. "the line number is used instead\n", n, why))
            end
        end
        local given = id
        local taken
        id, taken = next_id(n, id)
        last_no = n
        if taken then
            io_stderr:write(format("tide: line %d: id '%s' is already taken by an earlier line; "
                                   .. "this input runs as '%s'\n", n, given or taken, id))
        end
        inflight = inflight + 1
        inputs[id], quoted[id] = v, json.encode(id)
        ex:_submit(p, v, id, prio)
    end

    -- Submits pending lines while there is capacity; pauses the reader
    -- when there is not (backpressure: memory stays bounded by one chunk).
    -- The reader is told only when that changes.
    local paused = false
    function pump()
        while phead <= ptail and (stopping or inflight < concurrency) do
            local no, line = pend_no[phead], pend_line[phead]
            pend_no[phead], pend_line[phead] = nil, nil
            phead = phead + 1
            if stopping then
                local err = out:pass_through(line)
                if err then on_write_error(err) end
            else
                submit_line(no, line)
            end
        end
        if reader then
            local want = phead <= ptail
            if want ~= paused then
                paused = want
                if want then reader:pause() elseif not eof then reader:resume() end
            end
        end
    end

    local max_line = o.max_line_bytes
    local framer = jsonl.framer(max_line, function(no, line, nbytes)
        if line == nil then
            reject(no, nil, format("the line is %d bytes long, more than --max-line-bytes (%d)",
                                   nbytes, max_line))
            return
        end
        ptail = ptail + 1
        pend_no[ptail], pend_line[ptail] = no, line
    end)
    local function on_chunk(chunk, err)
        if chunk == nil then
            eof = true
            if err then read_error = "reading input: " .. err end
            framer.finish()
        else
            framer.feed(chunk)
        end
        pump()
    end

    local rerr
    reader, rerr = core.reader(ex._ud, path, on_chunk)
    if not reader then
        out:close(false)
        return die(EXIT_IO, "--input: " .. tostring(rerr))
    end

    local function progress(final)
        local c = out.counts
        local el = hrtime() - started
        local rate = el > 0 and (c.done + c.failed) / el or 0
        local s = format("%d done, %d failed, %d rejected, ", c.done, c.failed, c.rejected)
        if c.dropped > 0 then s = s .. format("%d dropped, ", c.dropped) end
        s = s .. format("%d running, %.0f/s, %.1f s", inflight, rate, el)
        if final then
            s = s .. format(", peak RSS %.1f MiB", (core.maxrss() or 0) / 1048576)
        end
        if final then
            if tty then io_stderr:write("\r\27[K") end
            io_stderr:write("tide: ", s, "\n")
        else
            io_stderr:write("\r\27[K", s)
        end
    end
    -- Results reach their files within 0.2 s even while the run goes on;
    -- on a terminal the progress line refreshes.
    local ticker = core.timer(ex._ud, 0.2, function()
        local err = out:flush()
        if err then on_write_error(err) end
        if tty then progress(false) end
    end)

    local function on_signal(signum)
        if stopping then return end
        io_stderr:write(tty and "\n" or "", "tide: signal ", signum, ": cancelling ", inflight, " running inputs",
                        out.rerun and "; the failures not run yet stay in failed.jsonl" or "", "\n")
        stop(signum)
    end
    local sigint = core.signal(ex._ud, 2, on_signal)
    local sigterm = core.signal(ex._ud, 15, on_signal)

    -- An internal error (a bug) ends the run with exit 3 after what
    -- finished is written.
    local rok, internal = pcall(ex.run, ex)
    ticker:close()
    sigint:close()
    sigterm:close()
    if reader then reader:close() end
    -- The whole input was consumed (run, or copied on after a signal)
    -- unless reading failed or a write error stopped the run.
    local complete = rok and eof and not read_error and not write_error
    local cerr = out:close(complete)
    if cerr then on_write_error(cerr) end
    progress(true)
    ex:close()
    if write_error then
        io_stderr:write("tide: the run stopped at the write error; written: ", out:written(), "\n")
        return EXIT_IO
    end
    if not rok then return die(EXIT_IO, tostring(internal)) end
    if type(stopping) == "number" then
        if not out.rerun and not (eof and phead > ptail and last_no == framer.lineno()) then
            io_stderr:write(format("tide: stopped: input lines after line %d were not run\n", last_no))
        end
        return 128 + stopping
    end
    if read_error then return die(EXIT_IO, tostring(read_error)) end
    local c = out.counts
    if c.failed > 0 or c.rejected > 0 then return EXIT_FAILED end
    return EXIT_OK
end


local function serve(args)
    local o, perr = parse_args("serve", args, SERVE_OPTIONS, { listen = "127.0.0.1:8080", drain = 30 })
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    local token
    if o.token_file then
        local f, err = io.open(o.token_file)
        if not f then return die(EXIT_USAGE, "--token-file: " .. tostring(err)) end
        token = (f:read("*a") or ""):match("^%s*(.-)%s*$")
        f:close()
        if token == "" then return die(EXIT_USAGE, "--token-file: the file is empty") end
    end
    local p, err = load_pipeline(o.pipeline)
    if not p then return die(EXIT_USAGE, err) end
    local server, serr = require("tide.serve").serve(p, {
        listen = o.listen, token = token, threads = o.threads,
        request_timeout = o.request_timeout, max_results = o.max_results,
        max_pending = o.max_pending, max_pending_bytes = o.max_pending_bytes, allow_host = o.allow_host,
    })
    if not server then return die(EXIT_IO, serr) end
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
    local sigint = core.signal(ex._ud, 2, on_signal)
    local sigterm = core.signal(ex._ud, 15, on_signal)
    -- SIGHUP drains like SIGTERM (a terminal that goes away, or a service
    -- manager asking for a reload, must not drop accepted jobs).
    local sighup = core.signal(ex._ud, 1, on_signal)
    ex._E.run()
    sigint:close()
    sigterm:close()
    sighup:close()
    ex:close()
    io_stderr:write("tide: stopped\n")
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
    elseif cmd == "worker" then
        return die(EXIT_USAGE, "'" .. cmd .. "' is not available in this version of tide yet")
    end
    return die(EXIT_USAGE, "unknown command '" .. tostring(cmd) .. "'\n" .. USAGE)
end

return M
