--- `tide repl [PIPELINE.lua]`: a Lua prompt on a running engine.
--
-- DESIGN
-- ------
-- The REPL owns the loop: it waits in poll(2) on stdin and tide.fd() (at
-- most tide.timeout() seconds), feeds stdin to libedit in callback mode
-- (tide.editline) and calls tide.step(), so submitted jobs, timers and
-- sleeps keep running while the user types. A line runs as an ordinary
-- Lua chunk; `ex:result(id, t)` in it runs the loop itself while it waits
-- (Ctrl-C ends the wait). Output printed while the user types (task
-- prints, job completions) goes above the prompt.
--
-- When stdin is not a terminal (a script piped in) lines are read without
-- editing; the rest is the same.
local core = require "tide.core"
local tide = require "tide"
local executor = require "tide.executor"
local pipeline = require "tide.pipeline"
local trace = require "tide.trace"
local replay = require "tide.replay"

local format, concat = string.format, table.concat
local io_stdout = io.stdout

local M = {}

local function pack(...) return { n = select("#", ...), ... } end

local HELP = [[
tide repl: Lua with a running engine. Jobs keep running while you type.
  ex                 the executor (tide.executor())
  p                  the pipeline loaded with `tide repl FILE` or :load
  id = ex:submit(p, input)   ex:status(id)   ex:result(id, seconds)
  =expr or expr      prints the value (tables up to 3 levels deep)
  :load FILE         (re)load a pipeline file into p
  :jobs              jobs of ex: running ones and recent results
  :jobs ID           one job: its status, result and kept log lines
  :replay ID         run the input of failed job ID again through p, traced
  :replay FILE[#N]   the same for the failures of a failed.jsonl (or its line N)
  :help              this text
  Ctrl-C             cancels the line being typed (or a wait in progress);
                     twice on an empty line cancels the jobs and exits
  Ctrl-D             exits
]]


-- A readable rendering of a value, tables cut at `depth` levels.
local function show(v, depth, seen)
    local tv = type(v)
    if tv == "string" then return format("%q", v) end
    if tv ~= "table" then return tostring(v) end
    if tide.is_error(v) then return "error " .. tostring(v) end
    local mt = getmetatable(v)
    if mt and mt.__tostring then return tostring(v) end
    seen = seen or {}
    if seen[v] then return "<cycle>" end
    if depth <= 0 then return "{...}" end
    seen[v] = true
    local parts, n = {}, #v
    for i = 1, n do parts[#parts + 1] = show(v[i], depth - 1, seen) end
    local keys = {}
    for k in pairs(v) do
        if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
        local ks = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. show(k, 0) .. "]")
        parts[#parts + 1] = ks .. " = " .. show(v[k], depth - 1, seen)
        if #parts > 50 then parts[#parts + 1] = "..." break end
    end
    seen[v] = nil
    return "{ " .. concat(parts, ", ") .. " }"
end
M.show = show


function M.main(path)
    local tty = core.isatty(0) and core.isatty(1)
    local edit = tty and require "tide.editline" or nil
    local out -- writes output without breaking the prompt
    local busy = true -- a line is running (or start-up): no prompt to keep
    if edit then
        out = function(s)
            if busy then
                io_stdout:write(s, s:sub(-1) == "\n" and "" or "\n")
                io_stdout:flush()
            else
                edit.print_above(s)
            end
        end
    else
        out = function(s)
            io_stdout:write(s, s:sub(-1) == "\n" and "" or "\n")
            io_stdout:flush()
        end
    end
    -- A trace line ends with its own newline.
    local function out_raw(s) out((s:gsub("\n$", ""))) end
    local env = setmetatable({ tide = tide, __repl_pack = pack }, { __index = _G })
    env.ex = tide.executor()
    -- A print inside a task also goes to its job's kept lines (:jobs ID).
    _G.print = function(...)
        local parts = {}
        for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
        local text = concat(parts, "\t")
        executor.keep_print(text)
        out(text)
    end
    env.print = _G.print

    local function load_into_env(file)
        local p, err = pipeline.load(file)
        if not p then
            out("error: " .. err)
            return false
        end
        env.p = p
        out(format("loaded pipeline '%s' (%d tasks) as p", p.name, #p.tasks))
        return true
    end
    if path then load_into_env(path) end

    local history = os.getenv("HOME") and (os.getenv("HOME") .. "/.tide_history")
    local PROMPT, MORE = "tide> ", "  >> "
    busy = false
    if edit then
        if history then edit.read_history(history) end
        edit.install(PROMPT)
    else
        out("tide " .. tide.version .. " repl (:help for help)")
        io_stdout:write(PROMPT)
        io_stdout:flush()
    end
    core.sigint_install()
    executor.interrupted = core.sigint_take

    local chunk_lines = {}
    local last_ctrl_c = false

    local function prompt(more)
        if edit then
            edit.set_prompt(more and MORE or PROMPT)
        else
            io_stdout:write(more and MORE or PROMPT)
            io_stdout:flush()
        end
    end

    -- :jobs ID: one job's status, its output or error, and its kept lines.
    local function one_job(id)
        local ex = env.ex
        local status = ex:status(id)
        if not status then return out("error: no job with id '" .. id .. "' (:jobs lists them)") end
        local lines = { format("  %s %s", id, status) }
        local fstatus, value = ex:finished(id)
        if fstatus then
            lines[#lines + 1] = "  " .. (fstatus == "done" and show(value, 2) or tostring(value))
        end
        local l = ex:logs(id)
        if l.dropped > 0 then
            lines[#lines + 1] = format("  (%d earlier lines were dropped)", l.dropped)
        end
        for _, x in ipairs(l.lines) do
            lines[#lines + 1] = format("  %s [%s #%d] %s", os.date("%H:%M:%S", math.floor(x.time)),
                                       x.task, x.attempt, x.line)
        end
        if #l.lines == 0 then lines[#lines + 1] = "  (no log lines)" end
        out(concat(lines, "\n"))
    end

    local function jobs(arg)
        if arg ~= "" then return one_job(arg) end
        local ex = env.ex
        local lines = {}
        for _, job in ipairs(ex:jobs()) do
            lines[#lines + 1] = format("  %-20s %s", tostring(job.id), job.status)
        end
        for id, status, value in ex:each_result() do
            local what = status == "done" and show(value, 2) or tostring(value)
            lines[#lines + 1] = format("  %-20s %-9s %s", tostring(id), status, what:sub(1, 60))
        end
        if #lines == 0 then lines[1] = "  (no jobs)" end
        out(concat(lines, "\n"))
    end

    -- :replay ARG: runs failed inputs again through the current p (so a
    -- pipeline fixed with :load is what runs), one at a time, traced.
    -- ARG is the id of a failed job of ex, or FILE (every failure record
    -- in it), or FILE#N (its N-th record line; a file name may hold '#',
    -- so FILE is the longest prefix before a '#' that names a file).
    local function replay_cmd(arg)
        if arg == "" then return out("usage: :replay ID | FILE | FILE#N (the N-th line of FILE)") end
        if not env.p then return out("error: no pipeline: give one to tide repl, or :load FILE") end
        local ex = env.ex
        local inputs -- { { id =, input = }, ... }
        local status, value = ex:finished(arg)
        if status == "failed" or status == "cancelled" then
            if type(value) ~= "table" or value.input == nil then
                return out("error: job '" .. arg .. "' failed without an input to replay")
            end
            local input = value.input
            if input == tide.json.null then input = nil end
            inputs = { { id = arg, input = input } }
        elseif status then
            return out("error: job '" .. arg .. "' did not fail (" .. status .. ")")
        else
            local file, nth = arg, nil
            if not core.stat(arg) then
                for i = #arg, 1, -1 do
                    if arg:sub(i, i) == "#" and core.stat(arg:sub(1, i - 1)) then
                        file, nth = arg:sub(1, i - 1), arg:sub(i + 1)
                        break
                    end
                end
            end
            if not core.stat(file) then
                return out("error: '" .. arg .. "' is neither a failed job of ex nor a file of failures")
            end
            if nth then
                local n = nth:match("^%d+$") and tonumber(nth)
                if not n or n < 1 then
                    return out(format("error: in %s#%s, what follows '#' must be a line number >= 1 "
                                      .. "(to choose a record by id: tide replay --id ID)", file, nth))
                end
                local r, err = replay.read_nth(file, n)
                if not r then return out("error: " .. err) end
                inputs = { r }
            else
                local recs, err = replay.read(file)
                if not recs then return out("error: " .. err) end
                inputs = recs
            end
        end
        local fmt = trace.format_for(1)
        local tracer = trace.new({ format = fmt, write = out_raw }):attach(ex)
        for _, r in ipairs(inputs) do
            local st, v, jid = replay.run_one(ex, env.p, r.input, replay.free_id(ex, r.id), tracer)
            out(replay.verdict(jid, st, v))
            if st == "cancelled" then break end
        end
        tracer:detach()
    end

    -- Runs one complete chunk; returns false when it is incomplete.
    local function run_chunk(src)
        local code = src:gsub("^%s*=", "")
        -- An expression is wrapped in a call (not returned directly) so
        -- that calls in it are no tail calls: their callers stay on the
        -- stack (error positions, task declarations' file:line).
        local fn, err = loadstring("return __repl_pack(" .. code .. "\n)", "=stdin")
        local packed = fn ~= nil
        local incomplete = false
        if not fn then
            -- An unfinished expression ("1 +") ends at <eof> only without
            -- the wrapper around it.
            local _, experr = loadstring("return " .. code, "=stdin")
            incomplete = experr and experr:match("<eof>") ~= nil
            fn, err = loadstring(code, "=stdin")
        end
        if not fn then
            if incomplete or err:match("<eof>") then return false end
            out("error: " .. err)
            return true
        end
        setfenv(fn, env)
        local res = pack(xpcall(fn, function(e)
            -- The traceback of the line itself, without the REPL's frames.
            local tb = debug.traceback(tostring(e), 2)
            return (tb:gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
        end))
        if packed and res[1] then res = pack(true, unpack(res[2], 1, res[2].n)) end
        if not res[1] then
            out("error: " .. tostring(res[2]))
        elseif res.n > 1 then
            local parts = {}
            for i = 2, res.n do parts[#parts + 1] = show(res[i], 3) end
            out(concat(parts, "\t"))
        end
        return true
    end

    local function handle(line)
        if #chunk_lines == 0 then
            local cmd, arg = line:match("^%s*:(%a+)%s*(.-)%s*$")
            if cmd then
                if cmd == "help" then out(HELP)
                elseif cmd == "jobs" then jobs(arg)
                elseif cmd == "load" then
                    if arg == "" then out("usage: :load FILE") else load_into_env(arg) end
                elseif cmd == "replay" then replay_cmd(arg)
                elseif cmd == "quit" or cmd == "q" then return "quit"
                else out("unknown command :" .. cmd .. " (:help)") end
                return
            end
            if line:match("^%s*$") then return end
        end
        chunk_lines[#chunk_lines + 1] = line
        if edit and line ~= "" then edit.add_history(line) end
        if run_chunk(concat(chunk_lines, "\n")) then
            chunk_lines = {}
            return
        end
        return "more"
    end

    local fd = assert(tide.fd())
    local partial = ""
    local done = false
    while not done do
        local t = tide.timeout()
        local a = core.poll2(0, fd, t and math.ceil(t * 1000) or -1)
        if core.sigint_take() then
            if not (edit and edit.typed()) and #chunk_lines == 0 and last_ctrl_c then
                done = true
            else
                last_ctrl_c = not (edit and edit.typed()) and #chunk_lines == 0
                chunk_lines = {}
                if last_ctrl_c then out("(Ctrl-C again to cancel the jobs and exit)") end
                if edit then edit.clear_line(PROMPT) else out("^C") prompt(false) end
            end
        end
        if a and not done then
            local lines = {}
            if edit then
                local line = edit.read_char()
                if line == nil then done = true
                elseif line then lines[1] = line end
            else
                local chunk = core.read_fd(0)
                if chunk == nil then
                    done = true
                    if partial ~= "" then lines[1] = partial end
                else
                    local s = partial .. chunk
                    for l in s:gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
                    partial = s:match("([^\n]*)$")
                end
            end
            for _, line in ipairs(lines) do
                last_ctrl_c = false
                busy = true
                local r = handle(line)
                busy = false
                if r == "quit" then done = true break end
                if not done then prompt(r == "more") end
            end
        end
        tide.step()
    end
    -- Leaving: cancel what still runs, restore the terminal.
    local n = env.ex:cancel_all()
    if edit then
        edit.remove()
        if history then edit.write_history(history) end
    end
    io_stdout:write("\n", n > 0 and format("cancelled %d job%s\n", n, n == 1 and "" or "s") or "")
    io_stdout:flush()
    env.ex:close()
    executor.interrupted = nil
    return 0
end

return M
