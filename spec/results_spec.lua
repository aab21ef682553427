-- Specs of the in-memory result store (lua/tide/results.lua): its ring of
-- parallel arrays, eviction by count and age, ids given twice, and the
-- JSON form a server's store keeps.
local results = require "tide.results"
local tide = require "tide"
local json = require("tide.core").json

describe("the result store", function()
    it("keeps the newest max results, oldest evicted first, through growth of its ring", function()
        local s = results.new(100, 3600)
        local gone = {}
        s:on_evict(function(id) gone[#gone + 1] = id end)
        for i = 1, 250 do s:put("j" .. i, "done", i) end
        assert.equal(150, #gone)
        for i = 1, 150 do assert.equal("j" .. i, gone[i]) end
        assert.is_nil(s:get("j150"))
        for i = 151, 250 do
            local status, v = s:get("j" .. i)
            assert.equal("done", status)
            assert.equal(i, v)
        end
        local n, first = 0, nil
        for id, status, v in s:each() do
            n = n + 1
            first = first or id
            assert.equal("done", status)
            assert.equal(tonumber(id:sub(2)), v)
        end
        assert.equal(100, n)
        assert.equal("j151", first)
    end)

    it("evicts results older than the retention", function()
        local s = results.new(1000, 0) -- every result is already too old
        local gone = 0
        s:on_evict(function() gone = gone + 1 end)
        s:put("a", "done", 1)
        s:put("b", "done", 2)
        assert.is_nil(s:get("a"))
        assert.equal(2, gone)
    end)

    it("keeps statuses, error records and log lines, and a later result of the same id replaces the earlier", function()
        local s = results.new(10, 3600)
        local rec = setmetatable({ code = "EIO", message = "x" }, { __index = {} })
        s:put("a", "failed", rec, { lines = { "l1" }, dropped = 0 })
        s:put("b", "cancelled", nil)
        s:put("a", "done", 7)
        assert.same({ "done", 7 }, { s:get("a") })
        assert.equal("done", s:status("a"))
        assert.equal("cancelled", s:status("b"))
        assert.is_nil(s:logs("a"))
        local gone = {}
        s:on_evict(function(id) gone[#gone + 1] = id end)
        for i = 1, 10 do s:put("x" .. i, "done", i) end
        -- The replaced entry of "a" goes without a hook; "b" and the live
        -- "a" go with one each.
        assert.same({ "b", "a" }, gone)
        local s2 = results.new(10, 3600)
        s2:put("f", "failed", rec, { lines = { "l1" }, dropped = 0 })
        local status, v = s2:get("f")
        assert.equal("failed", status)
        assert.equal(rec, v)
        assert.same({ "l1" }, s2:logs("f").lines)
        assert.has_error(function() s2:put("z", "bogus", 1) end)
    end)

    it("keeps a server's table outputs as JSON text and hands them back decoded", function()
        local plain, server = results.new(10, 3600), results.new(10, 3600, true)
        local out = { n = 1, list = json.array { 1, 2 }, name = "é" }
        plain:put("a", "done", out)
        server:put("a", "done", out)
        assert.equal(out, select(2, plain:get("a"))) -- the same table
        local _, back = server:get("a")
        assert.are_not.equal(out, back)
        assert.same(json.decode(json.encode(out)), back)
        assert.equal("string", type(server.vals[server.index.a]))
    end)

    it("backs ex:status, ex:finished and ex:result of an executor", function()
        local ex = tide.executor { results = "json" }
        local p = tide.pipeline "store"
        p:task("a", function(x) return { v = x } end)
        local id = ex:submit(p, 5)
        ex:run()
        assert.equal("done", ex:status(id))
        assert.same({ v = 5 }, (select(2, ex:finished(id))))
        assert.same({ v = 5 }, (ex:result(id)))
        ex:close()
        assert.has_error(function() tide.executor { results = "yaml" } end,
                         'tide.executor: results must be true, false or "json"')
    end)
end)
