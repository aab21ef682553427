-- End-to-end specs of `tide repl`, driven through a real pseudo-terminal
-- (util-linux `script`), with keystrokes sent at set times.
local proc = require "helpers.proc"

local q = proc.shquote

local session = require("helpers.pty").session

describe("tide repl", function()
    it("keeps jobs running while the prompt is open", function()
        local out = session("spec/fixtures/repl/slow.lua", {
            { 0.8, "id = ex:submit(p, 21)\n" },   -- then nothing is typed for 0.8 s
            { 0.3, "=ex:status(id)\n" },
            { 0.3, "=ex:result(id)\n" },
            { 0.3, "\4" },
        })
        assert.matches("loaded pipeline 'slow' %(2 tasks%) as p", out)
        -- The job finished with the prompt open and nothing typed: the
        -- REPL's loop ran it.
        assert.matches('tide> =ex:status%(id%)\n"done"\n', out)
        assert.matches("tide> =ex:result%(id%)\n42\n", out)
        assert.matches("double ran for 21", out) -- task output shown too
    end)

    it("waits in ex:result while the loop runs, continues multi-line input and survives errors", function()
        local out = session("spec/fixtures/repl/slow.lua", {
            { 0.6, "=ex:result(ex:submit(p, 5), 5)\n" },
            { 0.2, "t = {\n" },
            { 0.1, "n = 3 }\n" },
            { 0.2, "=t.n * 2\n" },
            { 0.2, "error('on purpose')\n" },
            { 0.2, "=1 +\n" },
            { 0.1, "1\n" },
            { 0.2, ":help\n" },
            { 0.2, ":nope\n" },
            { 0.2, "\4" },
        })
        assert.matches("tide> =ex:result%(ex:submit%(p, 5%), 5%)\ndouble ran for 5\n10\n", out)
        assert.matches("  >> n = 3 }\n", out)
        assert.matches("tide> =t.n %* 2\n6\n", out)
        assert.matches("error: stdin:1: on purpose\nstack traceback:", out)
        assert.matches("  >> 1\n2\n", out)
        assert.matches(":load FILE", out)
        assert.matches("unknown command :nope", out)
    end)

    it("Ctrl-C clears the line; twice on an empty line cancels the jobs and exits", function()
        local out = session("spec/fixtures/repl/slow.lua", {
            { 0.2, "id = ex:submit(p, 1)\n" },
            { 0.1, "=12" },
            { 0.2, "\3" },                -- drops "=12"
            { 0.2, "=7\n" },
            { 0.2, ":jobs\n" },
            { 0.2, "slow = ex:submit(tide.pipeline('z'):task('s', function() tide.sleep(30) end), 0)\n" },
            { 0.2, "\3" },
            { 0.2, "\3" },
            { 0.5, "=99\n" },           -- never read: the REPL has exited
        })
        assert.matches("tide> =12%^C\n", out)
        assert.not_matches("\n12\n", out)
        assert.matches("tide> =7\n7\n", out)
        assert.matches("\n  1%s+done%s+2\n", out)   -- :jobs lists the finished job
        assert.matches("%(Ctrl%-C again to cancel the jobs and exit%)", out)
        assert.matches("cancelled 1 job\n$", out) -- the 30 s sleeper, and nothing after
    end)

    it("shows a job's kept log lines with :jobs ID", function()
        local out = session("spec/fixtures/logs/logs.lua", {
            { 0.6, "id = ex:submit(p, { n = 3, fail = true }, { id = 'job/1' })\n" },
            { 0.6, ":jobs job/1\n" },
            { 0.3, ":jobs nope\n" },
            { 0.3, "\4" },
        })
        assert.matches("tide> :jobs job/1\n  job/1 failed\n  ETASK judge: ", out)
        assert.matches("\n  %d%d:%d%d:%d%d %[talk #1%] ctx%.log of\t3\n", out)
        assert.matches("\n  %d%d:%d%d:%d%d %[talk #1%] print of\t3\n", out)
        assert.matches("tide> :jobs nope\nerror: no job with id 'nope'", out)
    end)

    it("reads a script from a pipe without line editing", function()
        local tmp = os.tmpname()
        finally(function() os.remove(tmp) end)
        proc.write(tmp, "id = ex:submit(p, 4)\n=ex:result(id, 5)\nx = 1 +\n2\n=x\n")
        local h = io.popen(q(proc.bin) .. " repl spec/fixtures/repl/slow.lua <" .. q(tmp))
        local out = h:read("*a")
        h:close()
        assert.matches("\n8\n", out)
        assert.matches("3\n", out)
    end)

    it("rejects bad usage", function()
        local r = proc.tide({ "repl", "a.lua", "b.lua" })
        assert.equal(2, r.code)
        assert.matches("usage: tide repl", r.stderr)
    end)
end)
