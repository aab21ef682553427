-- End-to-end spec of the C embedding example: examples/embed/host.c,
-- built by make against build/libtide.a and tide.h only.
local proc = require "helpers.proc"
local json = require("tide.core").json

local host = proc.build .. "/examples/embed-host"

local function run(args)
    local tmp = os.tmpname()
    local cmd = { proc.shquote(host) }
    for _, a in ipairs(args) do cmd[#cmd + 1] = proc.shquote(a) end
    local ok = os.execute(table.concat(cmd, " ") .. " >" .. tmp .. " 2>" .. tmp .. ".err")
    local out, err = proc.slurp(tmp), proc.slurp(tmp .. ".err")
    os.remove(tmp)
    os.remove(tmp .. ".err")
    return ok == true or ok == 0, out, err
end

describe("examples/embed/host.c", function()
    it("loads a pipeline, submits JSON, steps the engine from its loop and prints results", function()
        local ok, out, err = run({ "examples/embed/wordcount.lua", '"to be or not to be"', "7", '"x"' })
        assert.is_false(ok) -- input 2 fails, so the host exits 1
        local lines = proc.lines(out)
        assert.equal(4, #lines)
        local id1, st1, code1, j1 = lines[1]:match("^(%S+) (%S+) (%S+) (.*)$")
        assert.same({ "1", "done", "OK" }, { id1, st1, code1 })
        assert.same({ words = 6, distinct = 4 }, json.decode(j1))
        local _, st2, code2, j2 = lines[2]:match("^(%S+) (%S+) (%S+) (.*)$")
        assert.same({ "failed", "ETASK" }, { st2, code2 })
        assert.equal("expected a text, got number", json.decode(j2).message:match("expected.*$"))
        assert.matches('^3 done OK {"distinct":1,"words":1}$', lines[3])
        assert.equal("unknown ENOENT", lines[4])
        -- The 10 ms sleep took several steps of the host's loop: step never blocks.
        local steps = tonumber(err:match("host: (%d+) steps"))
        assert.is_true(steps >= 5, "only " .. tostring(steps) .. " steps")
    end)

    it("reports a bad pipeline and a malformed input", function()
        local ok, _, err = run({ "spec/fixtures/pipelines/cycle.lua" })
        assert.is_false(ok)
        assert.matches("host: spec/fixtures/pipelines/cycle.lua:%d+: pipeline 'cyclic': cycle: ", err)
        local ok2, out2 = run({ "examples/embed/wordcount.lua", "{oops" })
        assert.is_false(ok2)
        assert.matches("input 1: rejected: EVALUE: input is not JSON", out2)
    end)

    it("examples/embed/host.lua: a plain LuaJIT host runs tide inside its own poll loop", function()
        local cmd = [[(echo "a b a"; sleep 0.6; echo "c d"; echo "x") | luajit examples/embed/host.lua]]
        local h = io.popen(cmd)
        local out = h:read("*a")
        h:close()
        local lines = proc.lines(out)
        assert.equal(3, #lines)
        local t1, n1, w1, d1 = lines[1]:match("^(%S+) (%d+) (%d+) (%d+)$")
        assert.same({ "1", "3", "2" }, { n1, w1, d1 })
        -- The first job finished while stdin was still open: the host was
        -- never blocked by tide, nor tide by the host.
        assert.is_true(tonumber(t1) < 0.5, "first result at " .. t1)
        local later = {}
        for i = 2, 3 do
            local t, rest = lines[i]:match("^(%S+) (.*)$")
            assert.is_true(tonumber(t) >= 0.6, "line read at 0.6 s finished at " .. t)
            later[#later + 1] = rest
        end
        table.sort(later)
        assert.same({ "2 2 2", "3 1 1" }, later)
    end)
end)
