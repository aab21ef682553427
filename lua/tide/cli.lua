--- The tide command line: `tide run`, `tide version`, `tide --help`.
local core = require "tide.core"
local tide = require "tide"
local executor = require "tide.executor"
local errors = require "tide.errors"

local json = core.json
local io_stderr, io_stdout = io.stderr, io.stdout
local format, tostring, type, pairs, ipairs = string.format, tostring, type, pairs, ipairs
local hrtime = core.hrtime

local M = {}

local USAGE = [[
usage: tide <command> [options]

commands:
  run PIPELINE.lua [--input FILE|-] [--output DIR] [--concurrency N]
                   [--task-timeout S] [--priority high|low|lifo] [--threads N]
      Run every JSONL input line through the pipeline the file returns.
      Results go to stdout as JSONL (or to DIR/<sink>.jsonl,
      DIR/failed.jsonl and DIR/rejects.jsonl with --output).
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
]]

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
        if opt then
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


-- Replaces bytes that are not valid UTF-8 with U+FFFD, so a rejected
-- line can be shown as JSON text.
local function lossy_utf8(s)
    local out, i, n = {}, 1, #s
    local byte, sub = string.byte, string.sub
    while i <= n do
        local c = byte(s, i)
        local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2
            or (c >= 0xE0 and c <= 0xEF) and 3 or (c >= 0xF0 and c <= 0xF4) and 4 or 0
        local ok = len > 0 and i + len - 1 <= n
        for k = i + 1, i + len - 1 do
            if not ok then break end
            local cc = byte(s, k)
            ok = cc >= 0x80 and cc <= 0xBF
        end
        if ok then
            out[#out + 1] = sub(s, i, i + len - 1)
            i = i + len
        else
            out[#out + 1] = "\239\191\189"
            i = i + 1
        end
    end
    return table.concat(out)
end


local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Base64 of s (RFC 4648), for the exact bytes of a rejected line.
local function base64(s)
    local out, byte, sub = {}, string.byte, string.sub
    for i = 1, #s, 3 do
        local a, b, c = byte(s, i, i + 2)
        local v = a * 65536 + (b or 0) * 256 + (c or 0)
        local q = {}
        for k = 3, 0, -1 do
            local d = math.floor(v / 64 ^ k) % 64
            q[#q + 1] = sub(B64, d + 1, d + 1)
        end
        if not b then q[3], q[4] = "=", "=" elseif not c then q[4] = "=" end
        out[#out + 1] = table.concat(q)
    end
    return table.concat(out)
end


-- Under --output each sink writes DIR/<name>.jsonl: the name must be a
-- plain file name that is not one of tide's own files.
local function check_sink_names(p)
    for _, name in ipairs(p.sink_names) do
        if name == "failed" or name == "rejects" then
            return nil, ("--output: sink task '%s' would write %s.jsonl, where tide writes its %s; "
                         .. "rename the task"):format(name, name, name == "failed" and "failures" or "rejected lines")
        end
        if not name:match("^[%w_%-][%w_%.%-]*$") then
            return nil, ("--output: sink task name '%s' cannot be used as a file name "
                         .. "(letters, digits, '.', '_' and '-' only)"):format(name)
        end
    end
    return true
end


local function mkdir_p(dir)
    local ok, err, name = core.mkdir_p(dir)
    if not ok then return nil, err, name end
    return true
end


local function run(args)
    local o, perr = parse_args("run", args, RUN_OPTIONS, { concurrency = 1000, priority = "low" })
    if not o then return die(EXIT_USAGE, perr .. "\n" .. USAGE) end
    -- print inside tasks must not corrupt the JSONL on stdout.
    _G.print = function(...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do parts[i] = tostring((select(i, ...))) end
        io_stderr:write(table.concat(parts, "\t"), "\n")
    end
    local p, lerr = load_pipeline(o.pipeline)
    if not p then return die(EXIT_USAGE, lerr) end

    -- Outputs.
    local out_sink, out_failed, out_rejects
    local sink_files = {}
    if o.output then
        local nok, nerr = check_sink_names(p)
        if not nok then return die(EXIT_USAGE, nerr) end
        local ok, err = mkdir_p(o.output)
        -- Subprocess logs of exec tasks and tide.exec.
        require("tide.exec").log_dir = o.output .. "/logs"
        if not ok then return die(EXIT_IO, "--output: " .. tostring(err)) end
        local function open(name)
            local f, ferr = io.open(o.output .. "/" .. name, "w")
            if not f then error({ io = ferr }) end
            return f
        end
        local ok2, e2 = pcall(function()
            for _, name in ipairs(p.sink_names) do sink_files[name] = open(name .. ".jsonl") end
            out_failed = open("failed.jsonl")
            out_rejects = open("rejects.jsonl")
        end)
        if not ok2 then return die(EXIT_IO, tostring(type(e2) == "table" and e2.io or e2)) end
        out_sink = true
    end

    local ndone, nfailed, nrejected, lineno, inflight = 0, 0, 0, 0, 0
    local inputs = {} -- id -> original input, while in flight (for failed.jsonl)
    local quoted = {} -- id -> the id as a JSON string, while in flight
    local pend_no, pend_line, phead, ptail = {}, {}, 1, 0 -- lines waiting for capacity
    local pump -- defined below
    local eof, reader, io_error = false, nil, nil
    local started = hrtime()
    local enc = json.encode
    local concurrency = o.concurrency
    local write_errors = 0

    local function write(f, s)
        local ok, err = f:write(s, "\n")
        if not ok then
            write_errors = write_errors + 1
            io_error = io_error or err
        end
    end

    local function error_json(rec, with_tb)
        local plain = errors.plain(rec, with_tb)
        local s = enc(json.object(plain))
        return s or '{"code":"EVALUE","message":"error record cannot be encoded"}'
    end

    local function on_done(id, status, value)
        inflight = inflight - 1
        local input, sid = inputs[id], quoted[id]
        inputs[id], quoted[id] = nil, nil
        if status == "done" then
            local s, err = enc(value)
            if s == nil then
                status, value = "failed", errors.new("EVALUE", "output cannot be encoded: " .. tostring(err))
            else
                ndone = ndone + 1
                if out_sink then
                    if #p.sink_names == 1 then
                        write(sink_files[p.sink_names[1]], '{"id":' .. sid .. ',"output":' .. s .. '}')
                    else
                        for name, f in pairs(sink_files) do
                            local v = enc(value[name])
                            if v then write(f, '{"id":' .. sid .. ',"output":' .. v .. '}') end
                        end
                    end
                else
                    write(io_stdout, '{"id":' .. sid .. ',"status":"done","output":' .. s .. '}')
                end
            end
        end
        if status ~= "done" then
            nfailed = nfailed + 1
            if not errors.is(value) then value = errors.new("ETASK", tostring(value)) end
            if out_sink then
                local si = enc(input)
                write(out_failed, '{"id":' .. sid .. ',"error":' .. error_json(value, true)
                      .. ',"input":' .. (si or "null") .. '}')
            else
                write(io_stdout, '{"id":' .. sid .. ',"status":"failed","error":'
                      .. error_json(value, false) .. '}')
            end
        end
        pump()
    end

    local ex = executor.new {
        concurrency = concurrency, task_timeout = o.task_timeout,
        threads = o.threads, on_done = on_done,
    }
    local prio = executor.PRIO[o.priority]

    local function reject(n, line, msg)
        nrejected = nrejected + 1
        io_stderr:write(format("tide: line %d: %s\n", n, msg))
        if out_rejects then
            local text = enc(line)
            local extra = ""
            if not text then
                -- Not UTF-8: show it lossily, and keep the exact bytes.
                text = enc(lossy_utf8(line)) or '""'
                extra = ',"base64":"' .. base64(line) .. '"'
            end
            write(out_rejects, '{"line":' .. n .. ',"error":' .. (enc(msg) or '""')
                  .. ',"text":' .. text .. extra .. '}')
        end
    end

    local live = ex._live
    local seen = {}
    local function submit_line(n, line)
        local v, err = json.decode(line)
        if v == nil and err then
            reject(n, line, "malformed JSON: " .. tostring(err))
            return
        end
        local id
        if type(v) == "table" and getmetatable(v) == json.object_mt then
            -- A record of failed.jsonl re-runs its original input.
            if v.error ~= nil and v.input ~= nil and v.id ~= nil then
                id, v = v.id, v.input
            else
                id = v.id
            end
            if type(id) == "number" then id = tostring(id) end
            if type(id) ~= "string" then id = nil end
        end
        -- Ids given by the input are remembered for the whole run (a
        -- duplicate is rejected even after the first finished); ids made
        -- from line numbers are unique by construction, so memory grows
        -- only with inputs that carry ids.
        local sid
        if id == nil then
            id = tostring(n)
            sid = '"' .. id .. '"' -- digits need no escaping
        else
            sid = enc(id)
        end
        if live[id] or inputs[id] or seen[id] then
            reject(n, line, "duplicate id '" .. id .. "'")
            return
        end
        if sid ~= '"' .. id .. '"' or id ~= tostring(n) then seen[id] = true end
        inflight = inflight + 1
        inputs[id], quoted[id] = v, sid
        ex:_submit(p, v, id, prio)
    end

    -- Submits pending lines while there is capacity; pauses the reader
    -- when there is not (backpressure: memory stays bounded by one chunk).
    -- The reader is told only when that changes.
    local paused = false
    function pump()
        while phead <= ptail and inflight < concurrency do
            local no, line = pend_no[phead], pend_line[phead]
            pend_no[phead], pend_line[phead] = nil, nil
            phead = phead + 1
            submit_line(no, line)
        end
        if reader then
            local want = phead <= ptail
            if want ~= paused then
                paused = want
                if want then reader:pause() elseif not eof then reader:resume() end
            end
        end
    end

    local partial = ""
    local byte, sub, find = string.byte, string.sub, string.find
    local function on_chunk(chunk, err)
        if chunk == nil then
            eof = true
            if err then io_error = "reading input: " .. err end
            if partial ~= "" and find(partial, "%S") then
                lineno = lineno + 1
                ptail = ptail + 1
                pend_no[ptail], pend_line[ptail] = lineno, partial
            elseif partial ~= "" then
                lineno = lineno + 1
            end
            partial = ""
            pump()
            return
        end
        local s = partial .. chunk
        local pos = 1
        while true do
            local nl = find(s, "\n", pos, true)
            if not nl then break end
            local line = sub(s, pos, nl - 1)
            pos = nl + 1
            lineno = lineno + 1
            if byte(line, -1) == 13 then line = sub(line, 1, -2) end
            local b = byte(line, 1)
            if b and (b > 32 or find(line, "%S")) then -- blank lines are skipped
                ptail = ptail + 1
                pend_no[ptail], pend_line[ptail] = lineno, line
            end
        end
        partial = sub(s, pos)
        pump()
    end

    local path = o.input
    if path == "-" then path = nil end
    local rerr
    reader, rerr = core.reader(ex._ud, path, on_chunk)
    if not reader then return die(EXIT_IO, "--input: " .. tostring(rerr)) end

    local tty = core.isatty(2)
    local function progress(final)
        local el = hrtime() - started
        local rate = el > 0 and (ndone + nfailed) / el or 0
        local s = format("%d done, %d failed, %d rejected, %d running, %.0f/s, %.1f s",
                         ndone, nfailed, nrejected, inflight, rate, el)
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
    -- Results reach a pipe within 0.2 s even while the run goes on (stdio
    -- buffers them otherwise); on a terminal the progress line refreshes.
    local ticker = core.timer(ex._ud, 0.2, function()
        io_stdout:flush()
        if tty then progress(false) end
    end)

    local signalled
    local function on_signal(signum)
        if signalled then return end
        signalled = signum
        io_stderr:write("\ntide: signal ", signum, ": cancelling ", inflight, " running inputs\n")
        eof = true
        if reader then reader:close() reader = nil end
        phead = ptail + 1
        for id in pairs(live) do ex:cancel(id) end
    end
    local sigint = core.signal(ex._ud, 2, on_signal)
    local sigterm = core.signal(ex._ud, 15, on_signal)

    ex:run()
    ticker:close()
    sigint:close()
    sigterm:close()
    if reader then reader:close() end
    for _, f in pairs(sink_files) do f:close() end
    if out_failed then out_failed:close() end
    if out_rejects then out_rejects:close() end
    io_stdout:flush()
    progress(true)
    ex:close()
    if signalled then return 128 + signalled end
    if io_error then return die(EXIT_IO, tostring(io_error)) end
    if nfailed > 0 or nrejected > 0 then return EXIT_FAILED end
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
    ex._E.run()
    sigint:close()
    sigterm:close()
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
