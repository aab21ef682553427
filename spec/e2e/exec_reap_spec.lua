--- End-to-end specs: `tide run` ends and reaps the subprocesses of its
-- tasks when it stops on SIGTERM, also those that ignore SIGTERM.
local proc = require "helpers.proc"

local shquote = proc.shquote
local PIPE = "spec/fixtures/pipelines/"

-- Whether a process still runs (a zombie does not: once tide exited, its
-- reaping is init's).
local function alive(pid)
    for _ = 1, 50 do -- a killed process needs a moment to go
        local f = io.open("/proc/" .. pid .. "/stat")
        if not f then return false end
        local stat = f:read("*a")
        f:close()
        if stat:match("^%d+ %b() (%a)") == "Z" then return false end
        os.execute("sleep 0.02")
    end
    return true
end

-- Runs `tide run` on one input of exec_reap.lua, sends SIGTERM once the
-- subprocess wrote its pids, and waits for tide. A watchdog SIGKILLs tide
-- after 20 s, and the subprocesses are killed at the end whatever
-- happened, so that a failing run leaves nothing behind. Returns
-- { code, ms (SIGTERM to exit), pids, stderr }.
local function run_and_term(leftover)
    local tmp = proc.tmpdir()
    local function f(name) return shquote(tmp .. "/" .. name) end
    local pidfile = tmp .. "/pids"
    proc.write(tmp .. "/in.jsonl", ('{"id":"a","pidfile":"%s","leftover":%s}\n')
        :format(pidfile, leftover and "true" or "false"))
    local script = table.concat({
        ("%s run %s --input %s >%s 2>%s & p=$!"):format(shquote(proc.bin), shquote(PIPE .. "exec_reap.lua"),
                                                    f("in.jsonl"), f("out"), f("err")),
        "(sleep 20; kill -KILL $p) 2>/dev/null & w=$!",
        "i=0; while [ $(wc -l <" .. f("pids") .. " 2>/dev/null || echo 0) -lt 2 ] && [ $i -lt 200 ]; do",
        "  sleep 0.05; i=$((i+1)); done",
        "t0=$(date +%s%N)",
        "kill -TERM $p",
        "wait $p; echo $? >" .. f("rc"),
        "echo $(( ($(date +%s%N) - t0) / 1000000 )) >" .. f("ms"),
        "kill $w 2>/dev/null",
    }, "\n")
    os.execute("sh -c " .. shquote(script) .. " >/dev/null 2>&1")
    local r = {
        code = tonumber(proc.slurp(tmp .. "/rc")),
        ms = tonumber(proc.slurp(tmp .. "/ms")),
        stderr = proc.slurp(tmp .. "/err") or "",
        pids = {},
    }
    for pid in (proc.slurp(pidfile) or ""):gmatch("%d+") do r.pids[#r.pids + 1] = pid end
    r.alive = {}
    for i, pid in ipairs(r.pids) do r.alive[i] = alive(pid) end
    -- Clean up after a failure: each subprocess is its group's leader or
    -- a member of the leader's group.
    if r.pids[1] then os.execute("kill -9 -" .. r.pids[1] .. " 2>/dev/null") end
    proc.rmrf(tmp)
    return r
end

describe("tide run stopped by SIGTERM", function()
    it("ends a subprocess group that ignores SIGTERM within a short grace, and exits 143", function()
        local r = run_and_term(false)
        assert.equal(2, #r.pids, r.stderr)
        assert.equal(143, r.code, r.stderr)
        assert.is_false(r.alive[1], "the leader " .. r.pids[1] .. " outlived tide")
        assert.is_false(r.alive[2], "its child " .. r.pids[2] .. " outlived tide")
        -- The close grace (0.5 s), not the 2 s of the time-limit kill
        -- (slow sanitizer builds on a loaded machine took 1.7 s).
        assert.is_true(r.ms < 1950, "tide took " .. tostring(r.ms) .. " ms to exit")
    end)

    it("ends a member that outlives its group's leader", function()
        local r = run_and_term(true)
        assert.equal(2, #r.pids, r.stderr)
        assert.equal(143, r.code, r.stderr)
        assert.is_false(r.alive[2], "the member " .. r.pids[2] .. " outlived tide")
    end)
end)
