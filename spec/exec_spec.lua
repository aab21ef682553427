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
