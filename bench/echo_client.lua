-- bench/echo_client.lua: measures round trips to bench/luv_echo.lua while
-- the server's tide jobs run. Prints "samples=... p50_ms=... p99_ms=...
-- max_ms=..." over the round trips from "go" to the first one answered
-- after tide finished its jobs.
--
--   luajit bench/echo_client.lua PORT [idle N]
--
-- With "idle N" it sends N lines without "go" first: the same round trips
-- while tide has nothing to do, the machine's own noise to compare with.
local socket = require "socket"

local port = assert(tonumber(arg[1]), "usage: echo_client.lua PORT [idle N]")
local idle_n = arg[2] == "idle" and (tonumber(arg[3]) or 300) or nil
local c = assert(socket.connect("127.0.0.1", port))
c:settimeout(30)
c:setoption("tcp-nodelay", true)
if not idle_n then
    c:send("go\n")
    assert(c:receive("*l") == "started")
end
local rtts, deadline = {}, socket.gettime() + 60
local i = 0
while socket.gettime() < deadline and (not idle_n or i < idle_n) do
    i = i + 1
    local t0 = socket.gettime()
    c:send("ping " .. i .. "\n")
    local line = assert(c:receive("*l"))
    local rtt = socket.gettime() - t0
    -- Every round trip from "go" on counts, up to and with the first one
    -- answered after tide finished (a starved host answers that one late).
    rtts[#rtts + 1] = rtt * 1000
    if not idle_n and not line:match("^busy") then break end
    socket.sleep(0.002)
end
c:send("quit\n")
c:receive("*l")
c:close()
table.sort(rtts)
local function q(f) return rtts[math.max(1, math.ceil(#rtts * f))] or 0 end
print(string.format("samples=%d p50_ms=%.3f p99_ms=%.3f max_ms=%.3f", #rtts, q(0.5), q(0.99),
                    rtts[#rtts] or 0))
