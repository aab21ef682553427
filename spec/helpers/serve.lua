--- A `tide serve` process on a free loopback port for e2e specs, and curl
-- to talk to it.
local proc = require "helpers.proc"

local q = proc.shquote
local M = {}

--- Starts `tide serve PIPELINE` (default: the serve fixture) with extra
-- command-line text and environment (name -> value); returns { pid,
-- port, err, url }.
function M.start(extra, pipeline, env)
    local err = os.tmpname()
    local vars = {}
    for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. q(v) end
    local cmd = (#vars > 0 and ("env " .. table.concat(vars, " ") .. " ") or "")
        .. proc.bin .. " serve " .. (pipeline or "spec/fixtures/pipelines/serve.lua") .. " --listen 127.0.0.1:0 "
        .. (extra or "") .. " 2>" .. q(err) .. " & echo $!"
    local h = io.popen(cmd)
    local pid = h:read("*l")
    h:close()
    local port
    for _ = 1, 100 do
        local text = proc.slurp(err) or ""
        -- The line it prints once listening (its usage text, printed on
        -- a refusal, shows an address too).
        port = text:match("serving .- on http://127%.0%.0%.1:(%d+)")
        if port then break end
        os.execute("sleep 0.05")
    end
    assert(port, "tide serve did not start: " .. (proc.slurp(err) or ""))
    return { pid = pid, port = port, err = err, url = "http://127.0.0.1:" .. port }
end

--- Stops it with a signal (TERM); returns what it wrote on stderr.
function M.stop(s, sig)
    os.execute("kill -" .. (sig or "TERM") .. " " .. s.pid .. " 2>/dev/null")
    for _ = 1, 100 do
        if os.execute("kill -0 " .. s.pid .. " 2>/dev/null") ~= 0
            and os.execute("kill -0 " .. s.pid .. " 2>/dev/null") ~= true then break end
        os.execute("sleep 0.05")
    end
    local text = proc.slurp(s.err)
    os.remove(s.err)
    return text
end

--- One request with curl: returns status, body.
function M.http(s, method, path, body, headers)
    return proc.curl(method, s.url .. path, body, headers or { "Content-Type: application/json" })
end

return M
