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
        -- The JSON text is in the arena: no Lua value kept for it.
        assert.is_nil(next(server.vals))
        assert.equal(out, plain.vals[1])
    end)

    it("agrees with a plain model over many puts, replacements and evictions", function()
        -- Ids from a small pool (so that results replace each other and
        -- the id map deletes and shifts entries), of lengths 1 to 40,
        -- values of every kind the store keeps apart.
        local long = string.rep("x", results.INLINE_MAX + 1)
        local function value_of(r)
            local v = r % 5
            if v == 0 then return "s" .. r end
            if v == 1 then return r end
            if v == 2 then return { r = r } end
            if v == 3 then return long .. r end
            return ""
        end
        local seed = 12345
        local function rand(n)
            seed = (seed * 1103515245 + 12345) % 2147483648
            return seed % n
        end
        for _, as_json in ipairs { false, true } do
            local max = 50
            local s = results.new(max, 3600, as_json)
            -- The model: each id's latest put. The ring holds the slots of
            -- the last max puts, so an id is kept exactly when its latest
            -- put is one of them.
            local latest, gone = {}, {}
            s:on_evict(function(id) gone[#gone + 1] = id end)
            for r = 1, 20000 do
                local id = "i" .. rand(80) .. string.rep("-", rand(40))
                local v = value_of(r)
                local status = r % 7 == 0 and "failed" or "done"
                s:put(id, status, v)
                latest[id] = { status, v, r }
                if r % 97 == 0 or r > 19900 then
                    for id2, want in pairs(latest) do
                        local st, got = s:get(id2)
                        if want[3] > r - max then
                            assert.equal(want[1], st)
                            if as_json and type(want[2]) == "table" then
                                assert.same(want[2], got)
                            else
                                assert.equal(want[2], got)
                            end
                        else
                            assert.is_nil(st, id2)
                        end
                    end
                end
            end
            -- Everything each() lists is right; nothing evicted is found.
            local n = 0
            for id, status, v in s:each() do
                n = n + 1
                assert.is_not_nil(latest[id], id)
                assert.equal(latest[id][1], status)
                if not (as_json and type(v) == "table") then assert.equal(latest[id][2], v) end
            end
            assert.is_true(n > 0 and n <= max)
            local kept = {}
            for id in s:each() do kept[id] = true end
            for _, id in ipairs(gone) do
                if not kept[id] then assert.is_nil(s:get(id)) end
            end
            -- The arena's chunks go with their last result.
            local chunks = 0
            for _ in pairs(s.chunks) do chunks = chunks + 1 end
            assert.is_true(chunks <= 4 + max, "chunks " .. chunks)
        end
    end)

    it("keeps empty ids and values, and ids and values longer than a chunk", function()
        local s = results.new(5, 3600)
        s:put("", "done", "")
        assert.same({ "done", "" }, { s:get("") })
        local big = string.rep("y", 70000)
        s:put("a", "done", big)
        s:put(big, "done", "v")
        assert.equal(big, select(2, s:get("a")))
        assert.equal("v", select(2, s:get(big)))
        for i = 1, 10 do s:put("k" .. i, "done", i) end
        assert.is_nil(s:get(big))
        assert.equal(10, select(2, s:get("k10")))
        local chunks = 0
        for _ in pairs(s.chunks) do chunks = chunks + 1 end
        assert.equal(1, chunks)
    end)

    it("keeps ids that are not strings", function()
        local s = results.new(3, 3600, true)
        s:put(7, "done", { a = 1 })
        s:put(true, "done", "x")
        assert.same({ a = 1 }, select(2, s:get(7)))
        assert.equal("x", select(2, s:get(true)))
        s:put(7, "done", 2)
        s:put("a", "done", 3)
        s:put("b", "done", 4)
        assert.is_nil(s:get(true))
        assert.equal(2, select(2, s:get(7)))
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
