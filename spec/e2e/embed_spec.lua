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

-- The prefix that runs a C host under valgrind, which must find no leak
-- (exit 9 otherwise): only with TIDE_VALGRIND=1, since valgrind costs
-- seconds that CI does not spend (make check runs the same hosts under
-- AddressSanitizer with leak detection). Otherwise "": the host runs bare.
local function valgrind()
    if os.getenv("TIDE_VALGRIND") ~= "1" or os.getenv("TIDE_SAN_FLAGS") then return "" end
    local r = os.execute("command -v valgrind >/dev/null")
    if not (r == 0 or r == true) then return "" end
    return "env -u LD_PRELOAD timeout 120 valgrind -q --leak-check=full "
        .. "--errors-for-leak-kinds=definite,indirect --error-exitcode=9 "
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

    it("examples/embed/poll-host.c waits in poll(2) on tide_engine_fd (TIDE_VALGRIND=1: under valgrind, no leak)",
    function()
        local tmp = os.tmpname()
        -- Lines arrive 0.5 s apart: the host must sleep in poll meanwhile,
        -- and wake for tide's timer (the 10 ms sleep of wordcount.lua).
        local cmd = [[(echo '"a b a"'; sleep 0.5; echo '"c d"'; echo '{bad'; echo '7') | ]]
            .. valgrind() .. proc.shquote(proc.build .. "/examples/poll-host")
            .. " examples/embed/wordcount.lua >" .. tmp .. " 2>" .. tmp .. ".err; echo $? >" .. tmp .. ".rc"
        os.execute(cmd)
        local out, err = proc.slurp(tmp) or "", proc.slurp(tmp .. ".err") or ""
        local rc = tonumber(proc.slurp(tmp .. ".rc"))
        for _, ext in ipairs({ "", ".err", ".rc" }) do os.remove(tmp .. ext) end
        assert.equal(1, rc, out .. err) -- input 4 fails: exit 1, and no valgrind error (9)
        -- Each result as its job finished (valgrind's start may let the
        -- lines arrive together): in some order.
        local lines = {}
        for _, l in ipairs(proc.lines(out)) do
            lines[#lines + 1] = l:match("^3 rejected EVALUE") or l:match("^4 failed ETASK") or l
        end
        table.sort(lines)
        assert.same({
            '1 done OK {"distinct":2,"words":3}',
            '2 done OK {"distinct":2,"words":2}',
            "3 rejected EVALUE",
            "4 failed ETASK",
        }, lines)
        -- It slept in poll(2): a handful of wake-ups, not a busy loop.
        local wakeups = tonumber(err:match("poll%-host: (%d+) wake%-ups"))
        assert.is_true(wakeups ~= nil and wakeups < 40, err)
    end)

    it("freeing an engine while its sync job runs (TIDE_VALGRIND=1: under valgrind, no leak)", function()
        local h = io.popen(valgrind() .. proc.shquote(proc.build .. "/embed-free-sync") .. " 3 2>&1; echo rc=$?")
        local out = h:read("*a")
        h:close()
        assert.matches("freed 3 engines", out)
        assert.matches("rc=0%s*$", out) -- 9: a block definitely or indirectly lost
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
            -- The host's clock starts once LuaJIT has started and loaded
            -- tide, after the shell's sleep began: on a loaded machine up
            -- to a tenth of a second later (0.54 s was seen).
            assert.is_true(tonumber(t) >= 0.4, "line read at 0.6 s finished at " .. t)
            later[#later + 1] = rest
        end
        table.sort(later)
        assert.same({ "2 2 2", "3 1 1" }, later)
    end)
end)
