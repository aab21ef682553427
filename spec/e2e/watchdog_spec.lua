-- End-to-end specs of the watchdog and of the stop signals: a task body
-- that never yields, in the real `tide run` and `tide serve`.
--
-- Two kinds of body spin forever here. An interpreted one makes a closure
-- on each turn: LuaJIT never compiles a loop that creates closures, so
-- the interpreter runs it and the watchdog's hook can stop it. A compiled
-- one is a plain numeric for loop, which LuaJIT turns into machine code
-- within microseconds; no hook runs there, and only a second signal ends
-- the process.
local proc = require "helpers.proc"
local server = require "helpers.serve"
local core = require "tide.core"
local json, hrtime = core.json, core.hrtime

local q = proc.shquote

local INTERPRETED = "while true do local _ = function() end end"
local COMPILED = "local x = 0; for i = 1, 1e18 do x = x + i end; return x"

-- A pipeline file: task 'spin' with `opts` (Lua text) spins the
-- interpreted way on the input "spin", the compiled way on "compiled",
-- and returns any other input. (Those do not sleep: an attempt parked
-- while the loop is stuck may see its own timeout pass meanwhile.)
local function pipeline(dir, opts)
    local path = dir .. "/spin.lua"
    proc.write(path, table.concat({
        'local tide = require "tide"',
        'local p = tide.pipeline "spin"',
        "p:task('spin', " .. (opts or "{}") .. ", function(x, ctx)",
        "    if x == 'spin' or (x == 'once' and ctx.attempt == 1) then " .. INTERPRETED .. " end",
        "    if x == 'compiled' then " .. COMPILED .. " end",
        "    return x",
        "end)",
        "return p",
    }, "\n"))
    return path
end

-- Runs `tide run PIPELINE --input FILE ARGS...` with the inputs (JSONL
-- text), killed after 20 s at most; then, if `signals` is given,
-- after `wait` seconds sends each of its signals 0.3 s apart. Returns
-- { code, stdout, stderr, seconds (from the start, or from the first
-- signal), alive (whether it still ran just before the first signal) }.
local function run(dir, path, inputs, args, signals, wait)
    local function f(name) return q(dir .. "/" .. name) end
    proc.write(dir .. "/in.jsonl", inputs)
    local cmd = { proc.bin, "run", path, "--input", dir .. "/in.jsonl" }
    for _, a in ipairs(args or {}) do cmd[#cmd + 1] = a end
    for i, a in ipairs(cmd) do cmd[i] = q(a) end
    local lines = {
        "t0=$(date +%s%N)",
        ("timeout -k 1 20 %s >%s 2>%s & p=$!"):format(table.concat(cmd, " "), f("out"), f("err")),
    }
    if signals then
        -- The signals go to tide itself, not to timeout (which would
        -- pass the first on and kill it on the second).
        lines[#lines + 1] = "sleep " .. wait
        lines[#lines + 1] = "t=$(pgrep -P $p)"
        lines[#lines + 1] = "kill -0 $t 2>/dev/null && echo yes >" .. f("alive")
        lines[#lines + 1] = "t0=$(date +%s%N)"
        for i, sig in ipairs(signals) do
            if i > 1 then lines[#lines + 1] = "sleep 0.3" end
            lines[#lines + 1] = "kill -" .. sig .. " $t"
        end
    end
    lines[#lines + 1] = "wait $p; echo $? >" .. f("rc")
    lines[#lines + 1] = "echo $(( ($(date +%s%N) - t0) / 1000000 )) >" .. f("ms")
    -- Without the sanitizer preload of make check: pgrep and timeout hang
    -- under it (build-asan/tide carries its own sanitizer runtime).
    os.execute("env -u LD_PRELOAD sh -c " .. q(table.concat(lines, "\n")) .. " >/dev/null 2>&1")
    return {
        code = tonumber(proc.slurp(dir .. "/rc")),
        stdout = proc.slurp(dir .. "/out") or "",
        stderr = proc.slurp(dir .. "/err") or "",
        seconds = (tonumber(proc.slurp(dir .. "/ms")) or 1e6) / 1000,
        alive = proc.slurp(dir .. "/alive") ~= nil,
    }
end

-- The result lines of a run, by id.
local function results(r)
    local t = {}
    for _, line in ipairs(proc.lines(r.stdout)) do
        local v = json.decode(line)
        t[v.id] = v
    end
    return t
end

-- One request to a server, given up after `max` seconds (curl's -m): a
-- stuck server must fail the spec, not hang it. Returns status, body.
local function http(s, method, path, body, max)
    local cmd = { "env -u LD_PRELOAD curl -s -m", tostring(max), "-o - -w '\\n%{http_code}' -X", method,
                  "-H 'Content-Type: application/json'" }
    if body then cmd[#cmd + 1] = "--data-binary " .. q(body) end
    cmd[#cmd + 1] = q(s.url .. path)
    local h = io.popen(table.concat(cmd, " "))
    local out = h:read("*a")
    h:close()
    local text, status = out:match("^(.*)\n(%d+)$")
    return tonumber(status), text
end

local function count(s, pattern)
    local n = 0
    for _ in s:gmatch(pattern) do n = n + 1 end
    return n
end

describe("the watchdog under tide run", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    it("stops a body that runs its timeout without yielding; the other inputs finish", function()
        local path = pipeline(dir, "{ timeout = 0.5 }")
        local r = run(dir, path, '1\n"spin"\n3\n4\n')
        assert.equal(1, r.code, r.stderr)
        local got = results(r)
        assert.equal("done", got["1"].status)
        assert.equal("done", got["3"].status)
        assert.equal(4, got["4"].output)
        assert.equal("failed", got["2"].status)
        assert.equal("ETIMEDOUT", got["2"].error.code)
        assert.equal("spin", got["2"].error.task)
        assert.equal(1, got["2"].error.attempts)
        assert.matches("timed out after 0.5 s without yielding", got["2"].error.message, 1, true)
        assert.matches("tide: watchdog: task 'spin' of context '2' has run 0.%d s without yielding; stopping it",
                       r.stderr)
        assert.is_true(r.seconds < 5, ("took %.1f s"):format(r.seconds))
    end)

    it("stops it after 5 s when the task has no timeout", function()
        local path = pipeline(dir)
        local r = run(dir, path, '"spin"\n2\n')
        assert.equal(1, r.code, r.stderr)
        local got = results(r)
        assert.equal("ETIMEDOUT", got["1"].error.code)
        assert.matches("timed out after 5 s", got["1"].error.message, 1, true)
        assert.equal(2, got["2"].output)
        assert.matches("task 'spin' of context '1' has run 5.%d s without yielding", r.stderr)
        assert.is_true(r.seconds >= 4.9 and r.seconds < 10, ("took %.1f s"):format(r.seconds))
    end)

    it("uses --task-timeout as the limit of tasks without their own", function()
        local path = pipeline(dir)
        local r = run(dir, path, '"spin"\n', { "--task-timeout", "0.3" })
        assert.equal(1, r.code, r.stderr)
        assert.equal("ETIMEDOUT", results(r)["1"].error.code)
        assert.is_true(r.seconds < 3, ("took %.1f s"):format(r.seconds))
    end)

    it("re-runs a stopped attempt by the task's retry policy", function()
        local path = pipeline(dir, "{ timeout = 0.3, retry = 1 }")
        local r = run(dir, path, '"spin"\n"once"\n')
        assert.equal(1, r.code, r.stderr)
        local got = results(r)
        assert.equal("failed", got["1"].status)
        assert.equal("ETIMEDOUT", got["1"].error.code)
        assert.equal(2, got["1"].error.attempts)
        -- "once" spins on its first attempt only: the retry succeeds.
        assert.equal("done", got["2"].status)
        assert.equal("once", got["2"].output)
        assert.equal(2, count(r.stderr, "task 'spin' of context '1' has run"))
        assert.equal(1, count(r.stderr, "task 'spin' of context '2' has run"))
        assert.is_true(r.seconds < 5, ("took %.1f s"):format(r.seconds))
    end)

    it("stops a stuck body at once on SIGTERM, so the graceful stop goes on (exit 143)", function()
        local path = pipeline(dir) -- no timeout: 5 s
        local r = run(dir, path, '1\n"spin"\n', nil, { "TERM" }, 0.5)
        assert.is_true(r.alive)
        assert.equal(143, r.code, r.stderr)
        assert.is_true(r.seconds < 2, ("took %.1f s after the signal"):format(r.seconds))
        local got = results(r)
        assert.equal("ECANCELED", got["2"].error.code)
        assert.matches("stopped on signal 15", got["2"].error.message, 1, true)
        assert.matches("tide: watchdog: task 'spin' of context '2' has run", r.stderr, 1, true)
        assert.matches("tide: signal 15: cancelling", r.stderr, 1, true)
    end)

    describe("a body in a compiled loop, which no hook stops", function()
        it("is reported, and a second SIGTERM exits 143 at once", function()
            local path = pipeline(dir, "{ timeout = 0.2 }")
            local r = run(dir, path, '"compiled"\n', nil, { "TERM", "TERM" }, 2)
            -- Still running 2 s into a 0.2 s limit: the hook did not stop it
            -- (the watchdog says so when it asks again, a second later).
            assert.is_true(r.alive)
            assert.matches("task 'spin' has run [%d.]+ s without yielding and could not be stopped", r.stderr)
            assert.equal(143, r.code, r.stderr)
            assert.matches("tide: second signal: exiting at once", r.stderr, 1, true)
            assert.is_true(r.seconds < 1.5, ("took %.1f s after the first signal"):format(r.seconds))
        end)

        it("a second SIGINT exits 130 at once", function()
            local path = pipeline(dir, "{ timeout = 0.2 }")
            local r = run(dir, path, '"compiled"\n', nil, { "INT", "INT" }, 0.5)
            assert.is_true(r.alive)
            assert.equal(130, r.code, r.stderr)
            assert.is_true(r.seconds < 1.5, ("took %.1f s after the first signal"):format(r.seconds))
        end)
    end)
end)

describe("the watchdog under tide serve", function()
    it("lets /healthz answer again while a body spins, and fails the job with ETIMEDOUT", function()
        local dir = proc.tmpdir()
        finally(function() proc.rmrf(dir) end)
        local s = server.start(nil, pipeline(dir, "{ timeout = 1 }"))
        local stopped = false
        finally(function()
            if not stopped then server.stop(s) end
            os.execute("kill -KILL " .. s.pid .. " 2>/dev/null")
        end)
        local t0 = hrtime()
        local st, body = http(s, "POST", "/v1/jobs", '{"id":"s","input":"spin"}', 5)
        assert.equal(201, st, body)
        st = http(s, "GET", "/healthz", nil, 10)
        local took = hrtime() - t0
        assert.equal(200, st)
        -- The loop was stuck for the task's 1 s timeout at most, plus the
        -- watchdog's tick and a shared machine's delays.
        assert.is_true(took < 3.5, ("took %.1f s"):format(took))
        st, body = http(s, "GET", "/v1/jobs/s/result?wait=5", nil, 10)
        assert.equal(200, st)
        local res = json.decode(body)
        assert.equal("failed", res.status)
        assert.equal("ETIMEDOUT", res.error.code)
        -- Other jobs run as before.
        st, body = http(s, "POST", "/v1/jobs?wait=5", '{"input":7}', 10)
        assert.equal(200, st)
        assert.equal(7, json.decode(body).output)
        stopped = true
        local err = server.stop(s)
        assert.matches("tide: watchdog: task 'spin' of context 's' has run 1.%d s without yielding", err)
    end)
end)
