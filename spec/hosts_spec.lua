-- Specs of tide inside hosts (issue 15): yields that are not tide's,
-- fork, signals on worker threads, waking a host that waits on tide.fd(),
-- reloading the module, and the luv adapter in plain LuaJIT with lua-luv.
local tide = require "tide"
local core = require "tide.core"
local proc = require "helpers.proc"

-- Runs a fixture script with the luajit of the specs, bounded in time.
local function run_fixture(path)
    local tmp = os.tmpname()
    local cmd = "timeout 30 luajit " .. proc.shquote(path) .. " >" .. tmp .. " 2>" .. tmp .. ".err; "
        .. "echo $? >" .. tmp .. ".rc"
    os.execute(cmd)
    local out, err, rc = proc.slurp(tmp) or "", proc.slurp(tmp .. ".err") or "", tonumber(proc.slurp(tmp .. ".rc"))
    for _, ext in ipairs({ "", ".err", ".rc" }) do os.remove(tmp .. ext) end
    return rc, out, err
end

describe("foreign yields", function()
    local ex
    after_each(function() if ex then ex:close() ex = nil end end)

    it("fail the attempt with EVALUE when the yield carries values, naming the function", function()
        local p = tide.pipeline "foreign-values"
        p:task("a", function(x)
            coroutine.yield("a host's marker", x) -- not tide's: tide cannot resume it
            return x
        end)
        ex = tide.executor()
        local id = ex:submit(p, 1)
        local out, rec = ex:result(id, 5)
        assert.is_nil(out)
        assert.equal("EVALUE", rec.code)
        assert.matches("foreign yield: 'yield' at spec/hosts_spec.lua:%d+ yielded 2 value%(s%)", rec.message)
        -- The executor goes on: the next job runs.
        p = tide.pipeline "after"
        p:task("b", function(x) tide.sleep(0.001) return x + 1 end)
        assert.equal(3, ex:result(ex:submit(p, 2), 5))
    end)

    it("with bare_yield = 'fail', fail a bare coroutine.yield() (a host's yield without values)", function()
        local p = tide.pipeline "foreign-bare"
        local host_sleep = coroutine.yield -- stands for nginx's ngx.sleep: yields nothing
        p:task("a", function(x) host_sleep() return x end)
        ex = tide.executor { bare_yield = "fail" }
        local out, rec = ex:result(ex:submit(p, 1), 5)
        assert.is_nil(out)
        assert.equal("EVALUE", rec.code)
        assert.matches("foreign yield: 'host_sleep' at spec/hosts_spec.lua:%d+ suspended the task body for its host",
            rec.message)
        assert.equal(0, ex:stats().live)
    end)

    it("leave a bare coroutine.yield() cooperative by default", function()
        local p = tide.pipeline "cooperative"
        p:task("a", function(x) coroutine.yield() coroutine.yield() return x + 1 end)
        ex = tide.executor()
        assert.equal(2, ex:result(ex:submit(p, 1), 5))
    end)

    it("refuse a bad bare_yield option", function()
        assert.has_error(function() tide.executor { bare_yield = "maybe" } end,
            "tide.executor: bare_yield must be 'requeue' or 'fail', got maybe")
    end)
end)

describe("fork", function()
    it("an executor made before fork raises in the child, which exits without hanging", function()
        local rc, out, err = run_fixture("spec/fixtures/hosts/fork.lua")
        assert.equal(0, rc, out .. err)
        local lines = proc.lines(out)
        assert.same({
            "child submit\tfalse\tbefore a fork",
            "child result\tfalse\tmade before",
            "child step\tfalse\t0",
            "child new executor\t42",
            "child exit\t0",
            "parent after fork\t2",
        }, lines)
    end)
end)

describe("worker threads", function()
    it("block every signal, so that a host's signals reach the host's threads", function()
        local p = tide.pipeline_file("spec/fixtures/hosts/sync_pipeline.lua")
        local ex = tide.executor { threads = 2 }
        finally(function() ex:close() end)
        assert.equal(6, ex:result(ex:submit(p, 5), 10))
        local pid = core.getpid()
        local h = io.popen("ls /proc/" .. pid .. "/task")
        local workers = 0
        for tid in h:lines() do
            local comm = proc.slurp("/proc/" .. pid .. "/task/" .. tid .. "/comm") or ""
            if comm:match("^tide%-worker") then
                workers = workers + 1
                local status = proc.slurp("/proc/" .. pid .. "/task/" .. tid .. "/status") or ""
                -- The low 32 bits (a double holds them exactly).
                local blk = tonumber(status:match("SigBlk:%s*%x*(%x%x%x%x%x%x%x%x)\n"), 16)
                -- SIGINT 2, SIGUSR1 10, SIGCHLD 17, SIGURG 23, SIGIO 29,
                -- SIGTERM 15 (bit n-1 of the mask).
                for _, sig in ipairs({ 2, 10, 15, 17, 23, 29 }) do
                    local bit = 2 ^ (sig - 1)
                    assert.is_true(math.floor(blk / bit) % 2 == 1,
                        "thread " .. tid .. " does not block signal " .. sig)
                end
            end
        end
        h:close()
        assert.equal(2, workers)
    end)
end)

describe("tide.fd()", function()
    it("becomes readable when a job is submitted or cancelled from outside the loop", function()
        local p = tide.pipeline "wake"
        p:task("a", function(x) tide.sleep(x) return x end)
        local ex = tide.executor()
        finally(function() ex:close() end)
        -- This executor's own fd (other specs may leave executors with
        -- work of their own in tide.fd()), then tide.fd() too.
        local fd, hub = ex:fd(), tide.fd()
        ex:step()
        assert.is_false(core.poll(fd, 0)) -- nothing to do
        -- A host callback submits, then the host goes back to its wait.
        local id = ex:submit(p, 10)
        local t0 = core.hrtime()
        assert.is_true(core.poll(fd, 2000), "submit did not wake the host")
        assert.is_true(core.poll(hub, 0), "submit did not make tide.fd() readable")
        assert.is_true(core.hrtime() - t0 < 0.5)
        ex:step() -- the body starts and sleeps 10 s
        assert.is_false(core.poll(fd, 0))
        assert.is_true(ex:cancel(id))
        assert.is_true(core.poll(fd, 2000), "cancel did not wake the host")
        ex:step()
        assert.equal("cancelled", ex:status(id))
    end)

    it("ex:fd() and ex:timeout() are one executor's own", function()
        local p = tide.pipeline "own"
        p:task("a", function(x) tide.sleep(0.05) return x end)
        local ex = tide.executor()
        finally(function() ex:close() end)
        assert.is_number(ex:fd())
        assert.is_nil(ex:timeout())
        ex:submit(p, 1)
        assert.equal(0, ex:timeout())
        ex:step()
        local t = ex:timeout()
        assert.is_true(t ~= nil and t > 0 and t <= 0.051, "timeout " .. tostring(t))
        -- A timer does not make the fd readable: the host waits at most t.
        while ex:step() > 0 do core.poll(ex:fd(), math.ceil((ex:timeout() or 1) * 1000)) end
        assert.is_nil(ex:timeout())
    end)
end)

describe("reloading the module", function()
    it("finds the executors made before and keeps the one fd", function()
        local rc, out, err = run_fixture("spec/fixtures/hosts/reload.lua")
        assert.equal(0, rc, out .. err)
        assert.same({ "new module\ttrue", "same fd\ttrue", "result\t42", "after close\tfalse\t0" },
            proc.lines(out))
    end)
end)
