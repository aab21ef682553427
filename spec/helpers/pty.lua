--- `tide repl` on a real pseudo-terminal (util-linux `script`), with
-- keystrokes sent at set times: what the REPL specs type and read.
local proc = require "helpers.proc"

local q = proc.shquote

local M = {}

--- Starts `tide repl ARGS` on a pty with env (a table of variables, may be
-- nil) and sends each step's text {delay_s, text} after waiting its delay;
-- returns what the terminal showed, without \r and escape sequences, and
-- how many seconds it took.
function M.session(args, steps, env)
    local parts = { "sleep 0.4" }
    for _, s in ipairs(steps) do
        parts[#parts + 1] = "printf " .. q(s[2])
        parts[#parts + 1] = "sleep " .. s[1]
    end
    local home = proc.tmpdir()
    local vars = { "TERM=dumb", "HOME=" .. q(home) }
    for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. q(v) end
    local cmd = "(" .. table.concat(parts, "; ") .. ") | " .. table.concat(vars, " ")
        .. " script -qfec " .. q("exec " .. proc.bin .. " repl " .. args) .. " /dev/null"
    local t0 = os.time()
    local h = io.popen(cmd)
    local out = h:read("*a")
    h:close()
    proc.rmrf(home)
    out = out:gsub("\r", ""):gsub("\27%[[%d;]*%a", "")
    return out, os.time() - t0
end

return M
