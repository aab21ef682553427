--- A Redis client on an executor's loop (internal: `tide worker` and
-- `tide run --redis` are built on it).
--
-- One client is one connection (src/redis.c through src/lua/lredis.c):
-- commands given in one loop turn leave in one write, every command has
-- a time limit, and a lost connection is made again with a growing
-- delay. A command sent while the connection is down waits for it until
-- its time limit.
--
--   local c = redis.connect(ex, "redis://127.0.0.1:6379/0", { timeout = 5 })
--   -- in a task body of ex: parks the body until the reply
--   local v, rec = c:call("GET", "k")
--   -- anywhere: fn(value, rec) on a later loop turn
--   c:send(function(v, rec) ... end, "SET", "k", "v")
--
-- Replies: strings and statuses are strings, integers numbers, arrays
-- tables (a nil element is false), a nil reply nil. Failures are `nil,
-- rec` with rec.code EREDIS (an error reply; rec.message is the
-- server's), ETIMEDOUT, ECONN (the connection was lost after the command
-- left: it may have run) or ECLOSED.
local core = require "tide.core"
local errors = require "tide.errors"

local type, tonumber, setmetatable, unpack = type, tonumber, setmetatable, unpack
local find = string.find

local M = {}

local Client = {}
Client.__index = Client

M.DEFAULT_TIMEOUT = 5


local URL_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"

-- Undoes the %XX escapes a user or password needs for ':', '@', '/' or
-- '%' itself; nil when an escape is malformed.
local function unescape(s)
    if find(s, "%%") and (find(s, "%%%X") or find(s, "%%.%X") or find(s, "%%.?$")) then
        return nil
    end
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end


--- Parses redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (or HOST[:PORT]).
-- Returns host, port, db, user, password (user and password nil when the
-- URL has none; %XX escapes undone), or nil and a message, which never
-- holds the password.
function M.parse_url(url)
    if type(url) ~= "string" then return nil, "a Redis URL must be a string" end
    if find(url, "^rediss://") or find(url, "^unix:") or find(url, "^redis%+unix:") then
        return nil, "Redis URL '" .. M.redact(url) .. "': only plain TCP (redis://) is supported"
            .. " (the hiredis of this system has no TLS; put stunnel or an SSH tunnel in front)"
    end
    local rest = url:match("^redis://(.*)$") or url
    local user, password
    local userinfo, after = rest:match("^([^/]*)@([^@]*)$")
    if userinfo then
        local u, pw = userinfo:match("^([^:]*):(.*)$")
        if not u then
            return nil, "bad Redis URL '" .. M.redact(url) .. "': the password follows a colon ("
                .. URL_FORM .. ")"
        end
        user, password = unescape(u), unescape(pw)
        if not user or not password then
            return nil, "bad Redis URL '" .. M.redact(url) .. "': a malformed %XX escape in the user or password"
        end
        if password == "" then
            return nil, "bad Redis URL '" .. M.redact(url) .. "': an empty password (" .. URL_FORM .. ")"
        end
        if user == "" then user = nil end
        rest = after
    end
    local hostport, db = rest:match("^([^/]*)/?(%d*)$")
    if not hostport or hostport == "" then
        return nil, "bad Redis URL '" .. M.redact(url) .. "' (" .. URL_FORM .. ")"
    end
    local host, port = hostport:match("^%[([^%]]+)%]:?(%d*)$")
    if not host then host, port = hostport:match("^([^:@]+):?(%d*)$") end
    if not host then return nil, "bad Redis URL '" .. M.redact(url) .. "' (" .. URL_FORM .. ")" end
    port = tonumber(port ~= "" and port or "6379")
    if port < 1 or port > 65535 then return nil, "bad port in Redis URL '" .. M.redact(url) .. "'" end
    return host, port, tonumber(db ~= "" and db or "0"), user, password
end


--- The URL with its password replaced by ***, for messages and logs.
function M.redact(url)
    if type(url) ~= "string" then return tostring(url) end
    local scheme, rest = url:match("^(%a[%w+.-]*://)(.*)$")
    if not scheme then scheme, rest = "", url end
    local userinfo, after = rest:match("^([^/]*)@(.*)$")
    if not userinfo then return url end
    local u = userinfo:match("^([^:]*):") or ""
    return scheme .. u .. ":***@" .. after
end


local function fail(code, msg)
    return nil, errors.new(code, msg)
end


--- Opens a client on executor ex's loop.
-- @param opts { timeout = seconds per command (5), connect_timeout =
--   seconds per attempt (2), on_state = function(up, message) }
-- @return the client, or nil, rec (a bad URL)
function M.connect(ex, url, opts)
    opts = opts or {}
    if type(ex) ~= "table" or not ex.loop then error("redis.connect: the first argument must be an executor", 2) end
    local timeout = opts.timeout or M.DEFAULT_TIMEOUT
    if type(timeout) ~= "number" or not (timeout > 0) then
        error("redis.connect: timeout must be a number of seconds > 0", 2)
    end
    local host, port, db, user, password = M.parse_url(url)
    if not host then return fail("EINVAL", port) end
    local self = setmetatable({
        url = M.redact(url), timeout = timeout, _seq = 0,
        _cbs = {}, _parked = {}, _vals = {}, _codes = {}, _msgs = {},
        _shas = {}, _loading = {},
    }, Client)
    local cbs, parked, vals, codes, msgs = self._cbs, self._parked, self._vals, self._codes, self._msgs
    local function on_reply(seq, v, code, msg, abandoned)
        local fn = cbs[seq]
        if fn then
            cbs[seq] = nil
            if code then fn(nil, errors.new(code, msg)) else fn(v) end
        elseif abandoned then
            parked[seq] = nil
        elseif parked[seq] then
            vals[seq], codes[seq], msgs[seq] = v, code, msg
        end
    end
    local on_state = opts.on_state
    self._c = core.redis_open(ex:loop(), host, port, {
        connect_timeout = opts.connect_timeout, db = db,
        user = user, password = password,
    }, on_reply, on_state and function(up, msg) on_state(up, msg) end or nil)
    return self
end


function Client:_next()
    local seq = self._seq + 1
    self._seq = seq
    return seq
end


--- Sends a command and parks the calling task body until its reply.
-- Only from a task body of the client's executor.
-- @return the reply, or nil, rec
function Client:call(...)
    return self:call_t(self.timeout, ...)
end


--- Client:call with its own time limit (seconds).
function Client:call_t(timeout, ...)
    local seq = self:_next()
    self._parked[seq] = true
    self._c:call(seq, timeout, ...)
    self._parked[seq] = nil
    local v, code, msg = self._vals[seq], self._codes[seq], self._msgs[seq]
    self._vals[seq], self._codes[seq], self._msgs[seq] = nil, nil, nil
    if code then return fail(code, msg) end
    return v
end


--- Sends a command; fn(value) or fn(nil, rec) is called on a later loop
-- turn, never from inside send.
function Client:send(fn, ...)
    return self:send_t(self.timeout, fn, ...)
end


--- Client:send with its own time limit (seconds), for blocking commands.
function Client:send_t(timeout, fn, ...)
    if type(fn) ~= "function" then error("redis send: the first argument must be a function", 2) end
    local seq = self:_next()
    self._cbs[seq] = fn
    self._c:send(seq, timeout, ...)
end


--- A Lua script for Client:eval: its source, run with EVALSHA once the
-- server knows it.
function M.script(src)
    return { src = src }
end


--- Runs a script (M.script) with EVALSHA, falling back to EVAL when the
-- server does not know it (the first call, or after a restart); fn(value)
-- or fn(nil, rec). keys and args are arrays.
function Client:eval(script, keys, args, fn)
    local sha = self._shas[script]
    local n = #keys
    local function run_eval()
        self:send(function(v, rec)
            if rec then return fn(nil, rec) end
            fn(v)
        end, "EVAL", script.src, n, M.unpack_all(keys, args))
        if not self._loading[script] then
            -- Learn its SHA1 once, for EVALSHA from then on.
            self._loading[script] = true
            self:send(function(v)
                self._loading[script] = nil
                if type(v) == "string" then self._shas[script] = v end
            end, "SCRIPT", "LOAD", script.src)
        end
    end
    if not sha then return run_eval() end
    self:send(function(v, rec)
        if rec and rec.code == "EREDIS" and find(rec.message, "^NOSCRIPT") then
            self._shas[script] = nil
            return run_eval()
        end
        if rec then return fn(nil, rec) end
        fn(v)
    end, "EVALSHA", sha, n, M.unpack_all(keys, args))
end


--- The elements of a and then of b, as values.
function M.unpack_all(a, b)
    local t, n = {}, 0
    for i = 1, #a do n = n + 1; t[n] = a[i] end
    for i = 1, #b do n = n + 1; t[n] = b[i] end
    return unpack(t, 1, n)
end


--- Counters of the connection: { sent, replies, timeouts, connects,
-- failures, waiting, up }.
function Client:stats()
    return self._c:stats()
end


--- Closes the client: commands still waiting end with ECLOSED.
function Client:close()
    self._c:close()
end


--- A reply of HGETALL or of XRANGE's field list as a table.
function M.pairs_to_table(list)
    local t = {}
    if type(list) ~= "table" then return t end
    for i = 1, #list - 1, 2 do t[list[i]] = list[i + 1] end
    return t
end

return M
