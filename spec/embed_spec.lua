-- Specs of driving tide from a host's own loop: tide.fd, tide.timeout,
-- tide.step and tide.run() without arguments.
local tide = require "tide"
local core = require "tide.core"

describe("host loop API", function()
    local p
    before_each(function()
        p = tide.pipeline "hosted"
        p:task("a", function(x) tide.sleep(0.03) return x + 1 end)
    end)

    it("steps without blocking and tells how long the host may wait #timing", function()
        local ex = tide.executor()
        finally(function() ex:close() end)
        local fd = tide.fd()
        assert.is_number(fd)
        assert.equal(fd, tide.fd()) -- one fd for every executor
        local id = ex:submit(p, 1)
        assert.equal(0, tide.timeout()) -- work is ready
        assert.same({ true, 1 }, { tide.step() }) -- runs the body up to its sleep
        -- A step that blocked would have slept the 30 ms out and ended it.
        assert.equal("running", ex:status(id))
        local t = tide.timeout()
        assert.is_true(t > 0 and t <= 0.031, "timeout " .. tostring(t))
        local steps = 0
        while tide.step() do
            steps = steps + 1
            core.poll(fd, math.ceil(tide.timeout() * 1000))
        end
        assert.is_true(steps >= 1 and steps < 20, steps .. " steps")
        assert.equal(2, ex:result(id))
    end)

    it("runs several executors with tide.run()", function()
        local a, b = tide.executor(), tide.executor()
        finally(function() a:close() b:close() end)
        local ia, ib = a:submit(p, 1), b:submit(p, 10)
        local t0 = core.hrtime()
        assert.is_true(tide.run())
        assert.is_true(core.hrtime() - t0 < 0.2)
        assert.equal(2, a:result(ia))
        assert.equal(11, b:result(ib))
        assert.same({ false, 0 }, { tide.step() })
        assert.is_nil(tide.timeout()) -- nothing but I/O could wake tide now
    end)
end)
