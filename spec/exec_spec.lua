-- Specs of tide.exec and kind = "exec": real subprocesses through libuv.
local tide = require "tide"
local hrtime = require("tide.core").hrtime

-- busted replaces assert with luassert's, which turns the error into a
-- string: task bodies here use Lua's own semantics instead.
local function must(v, err)
    if not v then error(err, 0) end
    return v
end

local function run1(fn, opts)
    local p = tide.pipeline "exec"
    p:task("t", opts or {}, fn)
    local outs, errs = tide.run(p, { 1 })
    return outs[1], errs[1]
end

-- Whether a process still runs: it exists and is not a zombie (a killed
-- grandchild waits for init to reap it).
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

local slurp = require("helpers.proc").slurp

-- Whether a process is gone for good: no /proc entry, not even a zombie.
-- For this process's own children, whose reaping is tide's job.
local function gone(pid)
    for _ = 1, 50 do
        local f = io.open("/proc/" .. pid .. "/stat")
        if not f then return true end
        f:close()
        os.execute("sleep 0.02")
    end
    return false
end

-- What a reaping test leaves behind, undone by one finally (busted keeps
-- only the last function given to finally): pid files, an executor, and
-- the process groups it started, killed so that a failing test leaves
-- nothing running.
local function leftovers()
    local l = { files = {}, groups = {} }
    finally(function()
        if l.ex then l.ex:close() end
        for _, g in ipairs(l.groups) do os.execute("kill -9 -" .. g .. " 2>/dev/null") end
        for _, f in ipairs(l.files) do os.remove(f) end
    end)
    function l.file()
        local f = os.tmpname()
        l.files[#l.files + 1] = f
        return f
    end
    -- Waits (bounded) until a pid file has n lines; returns the pids. The
    -- first is a group's leader, noted for the clean-up.
    function l.pids(path, n)
        for _ = 1, 250 do
            local pids = {}
            for pid in (slurp(path) or ""):gmatch("%d+") do pids[#pids + 1] = pid end
            if #pids >= n then
                l.groups[#l.groups + 1] = pids[1]
                return pids
            end
            os.execute("sleep 0.02")
        end
        error("no " .. n .. " pids in " .. path)
    end
    return l
end

-- A pipeline whose task runs `script` through sh with $1 the pid file.
local function exec_pipeline(script)
    local q = tide.pipeline "reap"
    q:task("t", function(pidfile) return tide.exec { "sh", "-c", script, "sh", pidfile } end)
    return q
end

-- Ignores SIGTERM, and so does its child (ignored signals are inherited):
-- only SIGKILL ends them. Writes the leader's pid, then the child's.
local STUBBORN = "trap '' TERM; echo $$ > $1; sleep 100 & echo $! >> $1; wait"

describe("tide.exec", function()
    it("runs a command with stdin, env and cwd, and returns its output", function()
        local out = run1(function()
            return must(tide.exec { "sh", "-c", 'read l; echo "$l $GREETING $(pwd)"; echo warn >&2',
                                      stdin = "hello\n", env = { GREETING = "hi" }, cwd = "/tmp" })
        end)
        assert.equal(0, out.code)
        assert.equal(0, out.signal)
        assert.equal("hello hi /tmp\n", out.stdout)
        assert.equal("warn\n", out.stderr)
        assert.equal("hello hi /tmp\n", slurp(out.log_stdout))
        assert.equal("warn\n", slurp(out.log_stderr))
    end)

    it("keeps the last 4 KiB in the result and everything in the log", function()
        local out = run1(function()
            return must(tide.exec { "sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done" })
        end)
        assert.equal(4096, #out.stdout)
        assert.matches("line1999\n$", out.stdout)
        local log = slurp(out.log_stdout)
        assert.matches("^line0\nline1\n", log)
        assert.matches("line1999\n$", log)
    end)

    it("fails with the stderr tail when the command exits non-zero", function()
        local _, err = run1(function()
            return must(tide.exec { "sh", "-c", "echo bad thing >&2; exit 3" })
        end)
        assert.equal("ETASK", err.code)
        assert.equal("command 'sh' exited with code 3: bad thing\n", err.message)
    end)

    it("says clearly when the command does not exist", function()
        local _, err = run1(function() return must(tide.exec { "no-such-command-for-tide" }) end)
        assert.equal("ENOENT", err.code)
        assert.equal("command not found: 'no-such-command-for-tide'", err.message)
    end)

    it("kills the whole process group at its time limit", function()
        local pidfile = os.tmpname()
        finally(function() os.remove(pidfile) end)
        local t0 = hrtime()
        local _, err = run1(function()
            return must(tide.exec { "sh", "-c", "echo $$ > " .. pidfile .. "; sleep 30 & echo $! >> "
                                      .. pidfile .. "; wait", timeout = 0.2 })
        end)
        assert.equal("ETIMEDOUT", err.code)
        assert.is_true(hrtime() - t0 < 1.5)
        for pid in slurp(pidfile):gmatch("%d+") do
            assert.is_false(alive(pid), "process " .. pid .. " still runs")
        end
    end)

    it("sends SIGKILL when SIGTERM is ignored", function()
        local t0 = hrtime()
        local _, err = run1(function()
            return must(tide.exec { "sh", "-c", "trap '' TERM; sleep 30", timeout = 0.1 })
        end)
        assert.equal("ETIMEDOUT", err.code)
        local took = hrtime() - t0
        assert.is_true(took >= 2 and took < 4, "took " .. took)
    end)

    it("stops the process when the task's own timeout abandons it, or it is cancelled", function()
        local pidfile = os.tmpname()
        finally(function() os.remove(pidfile) end)
        local _, err = run1(function()
            return must(tide.exec { "sh", "-c", "echo $$ > " .. pidfile .. "; exec sleep 30" })
        end, { timeout = 0.3 })
        assert.equal("ETIMEDOUT", err.code)
        assert.matches("task 't' timed out", err.message)
        tide.run(tide.pipeline("wait"):task("w", function() tide.sleep(0.1) end), { 1 })
        assert.is_false(alive(slurp(pidfile):match("%d+")))

        local ex = tide.executor()
        local q = tide.pipeline "cancel-exec"
        q:task("t", function() return tide.exec { "sh", "-c", "echo $$ > " .. pidfile .. "; exec sleep 30" } end)
        local id = ex:submit(q, 1)
        ex:result(id, 0.3)
        assert.is_true(ex:cancel(id))
        ex:result("none", 0.1)
        assert.is_false(alive(slurp(pidfile):match("%d+")))
        ex:close()
    end)

    it("ends and reaps a child that ignores SIGTERM when its job is cancelled and the executor closed", function()
        local l = leftovers()
        local pidfile = l.file()
        local ex = tide.executor()
        l.ex = ex
        local id = ex:submit(exec_pipeline(STUBBORN), pidfile)
        ex:result(id, 0.2)
        local pids = l.pids(pidfile, 2)
        assert.is_true(ex:cancel(id))
        local t0 = hrtime()
        ex:close()
        local took = hrtime() - t0
        assert.is_true(took < 1.5, "ex:close() took " .. took .. " s")
        assert.is_true(gone(pids[1]), "the leader " .. pids[1] .. " is still there (running or a zombie)")
        assert.is_false(alive(pids[2]), "its child " .. pids[2] .. " still runs")
    end)

    it("does not keep ex:run() going for a cancelled job's process", function()
        local l = leftovers()
        local pidfile = l.file()
        local ex = tide.executor()
        l.ex = ex
        local id = ex:submit(exec_pipeline(STUBBORN), pidfile)
        ex:result(id, 0.2)
        l.pids(pidfile, 2)
        assert.is_true(ex:cancel(id))
        local t0 = hrtime()
        ex:run()
        local took = hrtime() - t0
        assert.is_true(took < 1, "ex:run() took " .. took .. " s after the cancel")
    end)

    it("ends every running child together when the executor closes, within one short grace", function()
        local l = leftovers()
        local ex = tide.executor()
        l.ex = ex
        local files, ids = {}, {}
        local q = exec_pipeline(STUBBORN)
        for i = 1, 3 do
            files[i] = l.file()
            ids[i] = ex:submit(q, files[i])
        end
        ex:result(ids[1], 0.2)
        local leaders = {}
        for i = 1, 3 do leaders[i] = l.pids(files[i], 2)[1] end
        local t0 = hrtime()
        ex:close()
        local took = hrtime() - t0
        -- One grace (0.5 s) for all three, not one each, nor the 2 s of
        -- the time-limit kill.
        assert.is_true(took >= 0.4 and took < 1.3, "ex:close() took " .. took .. " s")
        for i = 1, 3 do
            assert.is_true(gone(leaders[i]), "leader " .. leaders[i] .. " is still there (running or a zombie)")
        end
    end)

    it("kills group members that outlive a cancelled job's leader while the loop runs", function()
        local l = leftovers()
        local pidfile = l.file()
        local ex = tide.executor()
        l.ex = ex
        -- The leader dies of SIGTERM; the member it leaves ignores SIGTERM
        -- and holds none of tide's pipes.
        local id = ex:submit(exec_pipeline("echo $$ > $1; (trap '' TERM; exec sleep 100) >/dev/null 2>&1 & "
                                               .. "echo $! >> $1; wait"), pidfile)
        ex:result(id, 0.2)
        local pids = l.pids(pidfile, 2)
        assert.is_true(ex:cancel(id))
        -- The loop runs past the 2 s grace of the cancel's kill.
        local nap = tide.pipeline("nap"):task("n", function() tide.sleep(2.5) end)
        ex:result(ex:submit(nap, 1), 5)
        assert.is_true(gone(pids[1]), "the leader " .. pids[1] .. " was not reaped while the loop ran")
        assert.is_false(alive(pids[2]), "the member " .. pids[2] .. " still runs")
    end)

    it("raises on misuse", function()
        assert.has_error(function() tide.exec { "true" } end, "tide.exec: not called from a task body")
        local _, err = run1(function() return tide.exec("ls") end)
        assert.matches("tide.exec: expected a table", err.message)
        _, err = run1(function() return tide.exec {} end)
        assert.matches("tide.exec: no command given", err.message)
        _, err = run1(function() return tide.exec { "ls", colour = 1 } end)
        assert.matches("unknown option 'colour'", err.message)
        _, err = run1(function() return tide.exec { "ls", timeout = -1 } end)
        assert.matches("timeout must be a number of seconds > 0", err.message)
    end)
end)

describe('kind = "exec"', function()
    it("runs the command the body returns; the output is the result", function()
        local tries = 0
        local p = tide.pipeline "exec-kind"
        p:task("count", { kind = "exec", retry = 1 }, function(text)
            tries = tries + 1
            return { "sh", "-c", "wc -w | tr -d ' '", stdin = text }
        end)
        p:task("parse", { after = "count" }, function(res) return tonumber(res.stdout) end)
        local outs, errs = tide.run(p, { "one two three", "x" })
        assert.is_nil(next(errs))
        assert.same({ 3, 1 }, outs)
        assert.equal(2, tries)
    end)

    it("fails (and retries) on a non-zero exit", function()
        local tries = 0
        local p = tide.pipeline "exec-fails"
        p:task("bad", { kind = "exec", retry = 2 }, function()
            tries = tries + 1
            return { "sh", "-c", "echo nope >&2; exit 1" }
        end)
        local _, errs = tide.run(p, { 1 })
        assert.equal(3, tries)
        assert.equal("ETASK", errs[1].code)
        assert.equal(3, errs[1].attempts)
        assert.matches("exited with code 1: nope", errs[1].message)
    end)
end)
