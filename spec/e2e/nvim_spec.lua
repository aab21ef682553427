-- End-to-end spec of require("tide.nvim") in a real Neovim (Debian's
-- neovim, `nvim --headless`): spec/fixtures/hosts/nvim_host.lua runs
-- there and writes what it sees to a file.
local proc = require "helpers.proc"

-- Whether a shell command succeeds (os.execute returns a number in LuaJIT,
-- true in its 5.2 mode).
local function ok(cmd)
    local r = os.execute(cmd)
    return r == 0 or r == true
end

describe("tide.nvim in nvim --headless", function()
    it("runs bodies that call the vim API, lists jobs, and on quit ends tide.exec children", function()
        if not ok("command -v nvim >/dev/null 2>&1") then
            pending("nvim is not installed (scripts/deps.sh installs neovim)")
            return
        end
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local q = proc.shquote
        local outf, pidf = dir .. "/out", dir .. "/pid"
        local ran = ok("TIDE_NVIM_OUT=" .. q(outf) .. " TIDE_NVIM_PIDFILE=" .. q(pidf)
            .. " timeout 60 nvim --headless -u NONE -i NONE -n "
            .. "-c 'luafile spec/fixtures/hosts/nvim_host.lua' </dev/null >" .. q(dir .. "/log") .. " 2>&1")
        local log = proc.slurp(dir .. "/log") or ""
        assert.is_true(ran, "nvim failed or hung: " .. log)
        assert.same({
            "same executor true",
            "result a done A (no vim here)",
            "result b done B (no vim here)",
            "buffer ,line a,line b",
            "jobs sub running|tide: 1 job(s) not finished",
        }, proc.lines(proc.slurp(outf) or ""))
        -- The subprocess of the job running when the editor quit is gone.
        local pid = tonumber(proc.slurp(pidf))
        assert.is_number(pid)
        assert.is_false(ok("kill -0 " .. pid .. " 2>/dev/null"), "sleep " .. pid .. " outlived nvim")
    end)
end)
