--- Starts and stops a real redis-server for specs: a free loopback port,
-- its own temporary directory, no persistence unless asked for.
local proc = require "helpers.proc"
local socket = require "socket"

local q = proc.shquote

local M = {}

local Server = {}
Server.__index = Server


-- A port nothing listens on now (the kernel picks it; it is released at
-- once, so another process could take it, which is unlikely on a test
-- machine).
local function free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end


local function sleep(s) socket.sleep(s) end
M.sleep = sleep


--- Waits until fn() is true (at most secs); returns whether it became so.
function M.eventually(secs, fn)
    local deadline = socket.gettime() + secs
    while socket.gettime() < deadline do
        if fn() then return true end
        sleep(0.05)
    end
    return false
end


--- Starts redis-server. opts: { appendonly = true, port = n (default:
-- a free one), dir = a directory (default: a new temporary one),
-- password = the default user's password (requirepass) }.
function M.start(opts)
    opts = opts or {}
    local self = setmetatable({
        port = opts.port or free_port(),
        dir = opts.dir or proc.tmpdir(),
        appendonly = opts.appendonly,
        password = opts.password,
    }, Server)
    self.url = "redis://127.0.0.1:" .. self.port
    self:spawn()
    return self
end


--- Starts the process (again) on the same port and directory.
function Server:spawn()
    local args = {
        "redis-server", "--port", self.port, "--bind", "127.0.0.1", "--dir", self.dir,
        "--save", "''", "--appendonly", self.appendonly and "yes" or "no",
        "--appendfsync", "everysec", "--daemonize", "no", "--logfile", "redis.log",
    }
    if self.password then
        args[#args + 1] = "--requirepass"
        args[#args + 1] = q(self.password)
    end
    -- LD_PRELOAD (the sanitizer runtime under make check) is not for it.
    local cmd = "env -u LD_PRELOAD " .. table.concat(args, " ") .. " >/dev/null 2>&1 & echo $!"
    local h = io.popen("sh -c " .. q(cmd))
    self.pid = tonumber(h:read("*l"))
    h:close()
    local deadline = socket.gettime() + 10
    while socket.gettime() < deadline do
        if self:ping() then return end
        sleep(0.02)
    end
    error("redis-server did not start on port " .. self.port .. ": " .. (proc.slurp(self.dir .. "/redis.log") or ""))
end


--- Whether the server answers PING.
function Server:ping()
    local c = socket.tcp()
    c:settimeout(0.5)
    if not c:connect("127.0.0.1", self.port) then
        c:close()
        return false
    end
    if self.password then
        c:send("AUTH " .. self.password .. "\r\n")
        c:receive("*l")
    end
    c:send("PING\r\n")
    local line = c:receive("*l")
    c:close()
    return line == "+PONG"
end


--- Runs redis-cli with the arguments; returns its output.
function Server:cli(...)
    local parts = { "env -u LD_PRELOAD redis-cli -p", self.port }
    if self.password then
        parts[#parts + 1] = "--no-auth-warning -a " .. q(self.password)
    end
    for i = 1, select("#", ...) do parts[#parts + 1] = q(select(i, ...)) end
    local h = io.popen(table.concat(parts, " ") .. " 2>&1")
    local out = h:read("*a")
    h:close()
    return (out:gsub("\n$", ""))
end


--- Sends a signal and waits for the process to end (when it ends).
function Server:kill(sig)
    if not self.pid then return end
    os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", self.pid))
    local deadline = socket.gettime() + 10
    while socket.gettime() < deadline do
        if os.execute(("kill -0 %d 2>/dev/null"):format(self.pid)) ~= 0 then break end
        sleep(0.02)
    end
    self.pid = nil
end


--- Stops the server and starts it again on the same port and directory.
function Server:restart(sig)
    self:kill(sig)
    self:spawn()
end


--- Stops the server and removes its directory.
function Server:stop()
    self:kill("KILL")
    proc.rmrf(self.dir)
end

--- Starts `tide worker PIPE --redis URL ARGS` in the background, its
-- stderr to errfile (appended with opts.append; opts.env: "NAME=value ..."
-- before the command). Returns its pid.
function M.start_worker(url, pipe, errfile, args, opts)
    opts = opts or {}
    local cmd = ("%s%s worker %s --redis %s %s 2>%s%s & echo $!"):format(
        opts.env and (opts.env .. " ") or "", q(proc.bin), q(pipe), q(url), args or "",
        opts.append and ">" or "", q(errfile))
    local h = io.popen("sh -c " .. q(cmd))
    local pid = tonumber(h:read("*l"))
    h:close()
    return pid
end


function M.alive(pid)
    return os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0
end


--- Waits up to secs for pid to exit; true when it did.
function M.wait_exit(pid, secs)
    local deadline = socket.gettime() + secs
    while socket.gettime() < deadline do
        if not M.alive(pid) then return true end
        socket.sleep(0.05)
    end
    return false
end


--- SIGTERM to each worker, then SIGKILL to those still there after 10 s.
function M.stop_workers(pids)
    for _, pid in ipairs(pids) do os.execute("kill -TERM " .. pid .. " 2>/dev/null") end
    for _, pid in ipairs(pids) do
        if not M.wait_exit(pid, 10) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
    end
end


return M
