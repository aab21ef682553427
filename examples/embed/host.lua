--- A host program in plain LuaJIT that owns its event loop and runs tide
-- inside it: a line-oriented stdin service. Each input line is a text;
-- tide counts its words (as a job that also sleeps, like real I/O would)
-- while the host keeps reading. Results are printed as they finish:
--   <seconds since start> <line number> <words> <distinct words>
--
--   make && (echo "a b a"; sleep 1; echo "c") | luajit examples/embed/host.lua
--
-- The host waits in poll(2) on two fds, stdin and tide.fd(), for at most
-- tide.timeout() seconds, then calls tide.step(): tide never blocks it.
local dir = (arg and arg[0] or ""):match("^(.*)/examples/embed/[^/]*$") or "."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/build/lib/?.so;" .. package.cpath

local ffi = require "ffi"
local tide = require "tide"

ffi.cdef [[
struct pollfd { int fd; short events; short revents; };
int poll(struct pollfd *fds, unsigned long nfds, int timeout);
long read(int fd, void *buf, unsigned long count);
]]

local p = tide.pipeline "host-words"
p:task("split", function(text)
    local words = {}
    for w in text:gmatch("%S+") do words[#words + 1] = w end
    return words
end)
p:task("count", { after = "split" }, function(words)
    tide.sleep(0.05) -- stands for a call to another service
    local seen, distinct = {}, 0
    for _, w in ipairs(words) do
        if not seen[w] then seen[w], distinct = true, distinct + 1 end
    end
    return { words = #words, distinct = distinct }
end)

local ex = tide.executor()
local POLLIN = 1
local fds = ffi.new("struct pollfd[2]")
fds[0].fd, fds[0].events = 0, POLLIN
fds[1].fd, fds[1].events = assert(tide.fd()), POLLIN
local buf = ffi.new("char[4096]")
local t0 = require("tide.core").hrtime()
local stdin_open, partial, lineno = true, "", 0
local waiting = {} -- line number -> job id, until printed

local function submit(line)
    lineno = lineno + 1
    waiting[lineno] = ex:submit(p, line)
end

while stdin_open or next(waiting) do
    local t = tide.timeout()
    local ms = t and math.ceil(t * 1000) or -1
    if stdin_open then
        ffi.C.poll(fds, 2, ms)
    else
        ffi.C.poll(fds + 1, 1, ms)
    end
    if stdin_open and fds[0].revents ~= 0 then
        local n = tonumber(ffi.C.read(0, buf, 4096))
        if n <= 0 then
            stdin_open = false
            if partial ~= "" then submit(partial) end
        else
            local s = partial .. ffi.string(buf, n)
            for line in s:gmatch("([^\n]*)\n") do submit(line) end
            partial = s:match("([^\n]*)$")
        end
    end
    tide.step()
    for no, id in pairs(waiting) do
        local out, err = ex:result(id, 0) -- never waits
        if out then
            io.write(string.format("%.3f %d %d %d\n", require("tide.core").hrtime() - t0,
                                   no, out.words, out.distinct))
            io.flush()
            waiting[no] = nil
        elseif err.code ~= "EAGAIN" then
            io.write(string.format("error %d %s\n", no, tostring(err)))
            waiting[no] = nil
        end
    end
end
ex:close()
