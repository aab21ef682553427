--- A raw HTTP/1.1 client over luasocket for the serve specs: exact bytes
-- out (malformed, pipelined, half-closed, reset), responses parsed back.
-- Every read has a time limit, so a server that never answers fails the
-- spec instead of hanging it.
local socket = require "socket"

local M = {}
local Conn = {}
Conn.__index = Conn

M.TIMEOUT = 5

--- Connects to 127.0.0.1:port.
function M.connect(port, timeout)
    local sock = assert(socket.tcp())
    timeout = timeout or M.TIMEOUT
    sock:settimeout(timeout)
    assert(sock:connect("127.0.0.1", tonumber(port)))
    return setmetatable({ sock = sock, buf = "", closed = false, timeout = timeout }, Conn)
end

function Conn:send(bytes)
    return self.sock:send(bytes)
end

-- Reads what has arrived into the buffer, waiting up to the time limit
-- for something; false once the peer closed or the limit passed
-- (self.closed tells which).
function Conn:_fill()
    if self.closed then return false end
    local ready = socket.select({ self.sock }, nil, self.timeout)
    if #ready == 0 then return false end
    self.sock:settimeout(0) -- take what is there, no more
    local data, err, part = self.sock:receive(65536)
    self.sock:settimeout(self.timeout)
    data = data or part
    if data and #data > 0 then self.buf = self.buf .. data end
    if err == "closed" then self.closed = true end
    return data ~= nil and #data > 0
end

--- The next response: { status, reason, headers (lower-case names),
-- body }, or nil and "closed" / "timeout" when none arrives whole.
function Conn:response()
    local head_end
    while true do
        head_end = self.buf:find("\r\n\r\n", 1, true)
        if head_end then break end
        if not self:_fill() then return nil, self.closed and "closed" or "timeout" end
    end
    local head = self.buf:sub(1, head_end - 1)
    local status, reason = head:match("^HTTP/1%.1 (%d%d%d) ([^\r]*)")
    local headers = {}
    for name, value in head:gmatch("\r\n([^:\r]+):%s*([^\r]*)") do headers[name:lower()] = value end
    local len = tonumber(headers["content-length"] or "0")
    while #self.buf < head_end + 3 + len do
        if not self:_fill() then return nil, self.closed and "closed" or "timeout" end
    end
    local body = self.buf:sub(head_end + 4, head_end + 3 + len)
    self.buf = self.buf:sub(head_end + 4 + len)
    return { status = tonumber(status), reason = reason, headers = headers, body = body }
end

--- True when the server closes the connection within the time limit
-- with no further bytes; false and what came or "timeout" otherwise.
function Conn:closes()
    while self:_fill() do end
    if self.buf ~= "" then return false, self.buf end
    return self.closed, self.closed and nil or "timeout"
end

--- Ends the sending side (the client half-closes; it can still read).
function Conn:shutdown()
    self.sock:shutdown("send")
end

--- Closes with a reset (RST) instead of a FIN: a client that vanished.
function Conn:reset()
    self.sock:setoption("linger", { on = true, timeout = 0 })
    self.sock:close()
end

function Conn:close()
    self.sock:close()
end

--- Sends bytes on a fresh connection and reads one response.
function M.request(port, bytes)
    local c = M.connect(port)
    c:send(bytes)
    local r, err = c:response()
    c:close()
    return r, err
end

--- A GET with a loopback Host on a fresh connection.
function M.get(port, path, headers)
    return M.request(port, "GET " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        .. (headers or "") .. "\r\n")
end

--- A POST of a JSON body with a loopback Host on a fresh connection.
function M.post(port, path, body, headers)
    return M.request(port, M.post_bytes(path, body, headers))
end

function M.post_bytes(path, body, headers)
    return "POST " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        .. (headers or "") .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end

return M
