-- End-to-end specs of require("tide.luv") in a real lua-luv host: a
-- plain luajit process with its own libuv loop (spec/fixtures/hosts/
-- luv_host.lua), and the echo server of bench/luv_echo.lua, whose round
-- trips must stay short while tide runs 10 000 async tasks in its loop.
local proc = require "helpers.proc"

local function sh(cmd)
    local h = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
    local out = h:read("*a")
    h:close()
    local rc = tonumber(out:match("rc=(%d+)%s*$"))
    return rc, (out:gsub("rc=%d+%s*$", ""))
end

local function have_luv()
    return sh("luajit -e 'require \"luv\"'") == 0
end

describe("tide.luv in a lua-luv host", function()
    it("runs jobs submitted from the host's timer and TCP callbacks, and lets the loop end once closed", function()
        if not have_luv() then
            pending("lua-luv is not installed (scripts/deps.sh installs it)")
            return
        end
        local rc, out = sh("timeout 30 luajit spec/fixtures/hosts/luv_host.lua")
        assert.equal(0, rc, out)
        local lines = proc.lines(out)
        local results = {}
        for _, l in ipairs(lines) do
            local id, status, value = l:match("^(%S+)\t(%S+)\t(.*)$")
            if id then results[id] = status .. " " .. value end
        end
        assert.same({ ["from-timer"] = "done 1", ["tcp-10"] = "done 100", ["tcp-20"] = "done 400" }, results)
        assert.matches("luv_host: loop ended after", out)
    end)

    it("keeps an echo server's round trips short while 10 000 async tasks run", function()
        if not have_luv() or sh("luajit -e 'require \"socket\"'") ~= 0 then
            pending("lua-luv or lua-socket is not installed (scripts/deps.sh installs them)")
            return
        end
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local q = proc.shquote
        local rc, out = sh("cd " .. q(".") .. " && (timeout 60 luajit bench/luv_echo.lua adapter 10000 >"
            .. q(dir .. "/port") .. " 2>" .. q(dir .. "/err") .. " &) && for i in $(seq 50); do "
            .. "grep -q port " .. q(dir .. "/port") .. " && break; sleep 0.1; done && "
            .. "env -u LD_PRELOAD timeout 60 luajit bench/echo_client.lua "
            .. "$(awk '{print $2}' " .. q(dir .. "/port") .. ")")
        assert.equal(0, rc, out)
        local samples, p50, p99, max = out:match("samples=(%d+) p50_ms=(%S+) p99_ms=(%S+) max_ms=(%S+)")
        assert.is_truthy(samples, out)
        samples, p50, p99, max = tonumber(samples), tonumber(p50), tonumber(p99), tonumber(max)
        io.stderr:write(("\n  luv echo under tide: %d round trips, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n")
            :format(samples, p50, p99, max))
        -- The host answered all along: a starved host (a 0 ms timer as the
        -- driver) answers one round trip, after tide finished (~1.4 s).
        assert.is_true(samples >= 50, samples .. " round trips only")
        -- The goal is a p99 under 5 ms; on a shared, loaded machine the
        -- scheduler alone adds tens of ms now and then (docs/benchmarks.md),
        -- so the spec holds the median to the goal and the tail to 100 ms.
        assert.is_true(p50 < 5, "p50 " .. p50 .. " ms")
        assert.is_true(p99 < 100, "p99 " .. p99 .. " ms")
        local log = proc.slurp(dir .. "/err") or ""
        assert.matches("luv_echo: 10000 tasks in", log)
    end)
end)
