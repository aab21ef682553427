--- tide.exec: run a subprocess from a task body (and kind = "exec").
--
--   local res, err = tide.exec { "curl", "-sf", url, timeout = 4, env = { A = "1" },
--                                cwd = "/tmp", stdin = "text" }
--
-- Waits without blocking the loop. Returns { code, signal, stdout, stderr,
-- log_stdout, log_stderr } (stdout/stderr: the last 4 KiB; the logs hold
-- everything) when the command exits with 0; otherwise nil and an error
-- record whose code is ENOENT (command not found), ETIMEDOUT (the time
-- limit, default 300 s, killed the process group: SIGTERM, SIGKILL 2 s
-- later) or ETASK (non-zero exit or a signal, with the stderr tail in the
-- message). A body abandoned by a task timeout or a cancel stops the group
-- the same way; closing the executor ends every group still running
-- (SIGTERM, one 0.5 s grace for all, SIGKILL) and reaps it (src/lua/lexec.c).
--
-- Two values on failure, not three: LuaJIT's assert raises its *last*
-- argument when the message is not a string, so `assert(tide.exec{...})`
-- must not see a third value (it would raise the bare code string).
local core = require "tide.core"
local errors = require "tide.errors"

local type, tostring, pairs, ipairs = type, tostring, pairs, ipairs
local format = string.format

local M = {}

local OPTS = { env = true, cwd = true, stdin = true, timeout = true }

-- Log files go to M.log_dir (tide run sets --output DIR/logs), or to a
-- directory of this process under TMPDIR.
M.log_dir = nil
local counter = 0


local function log_paths(name)
    local dir = M.log_dir
    if not dir then
        dir = (os.getenv("TMPDIR") or "/tmp") .. "/tide-logs-" .. tostring(core.getpid())
        M.log_dir = dir
    end
    if not M._made or M._made ~= dir then
        assert(core.mkdir_p(dir))
        M._made = dir
    end
    counter = counter + 1
    local base = format("%s/%d-%s", dir, counter, (name:gsub("[^%w%.%-_]", "_")):sub(1, 40))
    return base .. ".stdout", base .. ".stderr"
end


local function tail(s, n)
    if #s <= n then return s end
    return "..." .. s:sub(-n)
end


--- Runs a command; see above.
-- @raise on a malformed spec or outside a task body
function M.exec(spec)
    if type(spec) ~= "table" then
        error("tide.exec: expected a table { cmd, args..., env=, cwd=, stdin=, timeout= }, got "
              .. type(spec), 2)
    end
    local argv = {}
    for i, a in ipairs(spec) do
        if type(a) ~= "string" and type(a) ~= "number" then
            error("tide.exec: argument " .. i .. " must be a string, got " .. type(a), 2)
        end
        argv[i] = tostring(a)
    end
    if #argv == 0 then error("tide.exec: no command given", 2) end
    for k in pairs(spec) do
        if type(k) ~= "number" and not OPTS[k] then
            error("tide.exec: unknown option '" .. tostring(k) .. "'", 2)
        end
    end
    local env
    if spec.env ~= nil then
        if type(spec.env) ~= "table" then error("tide.exec: env must be a table", 2) end
        env = {}
        local given = {}
        for k, v in pairs(spec.env) do
            if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
                error("tide.exec: env must map names to strings", 2)
            end
            given[k] = true
            env[#env + 1] = k .. "=" .. tostring(v)
        end
        -- The rest of the environment is inherited.
        for _, kv in ipairs(core.environ()) do
            local k = kv:match("^([^=]*)=")
            if k and not given[k] then env[#env + 1] = kv end
        end
    end
    if spec.cwd ~= nil and type(spec.cwd) ~= "string" then error("tide.exec: cwd must be a string", 2) end
    if spec.stdin ~= nil and type(spec.stdin) ~= "string" then error("tide.exec: stdin must be a string", 2) end
    local timeout = spec.timeout or 300
    if type(timeout) ~= "number" or not (timeout > 0) then
        error("tide.exec: timeout must be a number of seconds > 0", 2)
    end
    local out_path, err_path = log_paths(argv[1]:match("[^/]*$"))
    local h, msg, code = core.exec_start(argv, env, spec.cwd, spec.stdin, timeout, out_path, err_path)
    if not h then
        return nil, errors.new(code == "ENOENT" and "ENOENT" or "ETASK", msg)
    end
    core.exec_wait(h)
    local res = core.exec_result(h)
    if res.timed_out then
        return nil, errors.new("ETIMEDOUT", format("command '%s' ran over its %g s time limit and was killed",
                                                  argv[1], timeout))
    end
    if res.code ~= 0 or res.signal ~= 0 then
        local why = res.signal ~= 0 and ("was killed by signal " .. res.signal)
            or ("exited with code " .. res.code)
        local rec = errors.new("ETASK", format("command '%s' %s: %s", argv[1], why,
                                               tail(res.stderr, 500)))
        rec.result = res
        return nil, rec
    end
    res.timed_out = nil
    return res
end

return M
