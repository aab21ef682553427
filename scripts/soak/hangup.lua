--- make soak's clients that hang up (luajit + luasocket): for SECONDS, about
-- 50 connections a second each send a request the server cannot answer
-- at once (POST ?wait=5 of a slow job, a long-poll on it, or a body cut
-- short) and close some 160 ms later, while the answer is still owed.
-- What those requests registered must go with them.
-- usage: luajit scripts/soak/hangup.lua PORT SECONDS TAG
local socket = require "socket"

local port, secs, tag = tonumber(arg[1]), tonumber(arg[2]), arg[3] or "h"
local deadline = socket.gettime() + secs
local n, open = 0, {}
local HEAD = "Host: 127.0.0.1\r\nContent-Type: application/json\r\n"

local function request(k)
    n = n + 1
    if k == 0 then
        local body = ('{"id":"%s-h%d","input":{"op":"slow","n":%d}}'):format(tag, n, n)
        return "POST /v1/jobs?wait=5 HTTP/1.1\r\n" .. HEAD .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
    elseif k == 1 then
        return ("GET /v1/jobs/%s-h%d/result?wait=5 HTTP/1.1\r\n"):format(tag, n - 1) .. HEAD .. "\r\n"
    end
    return "POST /v1/jobs HTTP/1.1\r\n" .. HEAD .. "Content-Length: 100\r\n\r\n{\"input\":"
end

local made = 0
while socket.gettime() < deadline do
    local c = socket.tcp()
    c:settimeout(1)
    if c:connect("127.0.0.1", port) then
        c:send(request(made % 3))
        open[#open + 1] = c
        made = made + 1
    else
        c:close()
    end
    if #open >= 8 then
        for i = 1, #open do open[i]:close() end
        open = {}
    end
    socket.sleep(0.02)
end
for i = 1, #open do open[i]:close() end
print(("hangup: %d connections closed while an answer was owed"):format(made))
