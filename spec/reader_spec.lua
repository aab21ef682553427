-- Specs of the core reader's line mode (ex:reader with max_line: lines cut
-- and decoded in C, as `tide run` reads JSONL) and of w:json_line (a
-- result encoded straight into a writer's buffer).
local tide = require "tide"
local core = require "tide.core"
local json = tide.json

local function tmpfile(content)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(content)
    f:close()
    return path
end

local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

-- Reads path in line mode; returns the events in order: {no, value} for
-- a line, {no, "bad", err, text} for a malformed one, {no, "long", bytes}
-- for one longer than max_line, and "end" (with the read error, if any).
local function read_lines(path, max_line)
    local ex = tide.executor()
    local events, r = {}, nil
    local function drain()
        while true do
            local no, v, err, text = r:take()
            if not no then break end
            if v == nil and err then
                events[#events + 1] = { no, "bad", err, text }
            else
                events[#events + 1] = { no, v }
            end
        end
    end
    local function longs(t)
        for i = 1, t and #t or 0, 2 do events[#events + 1] = { t[i], "long", t[i + 1] } end
    end
    r = assert(ex:reader(path, function(more, err, l)
        if more == nil then
            longs(l)
            drain()
            events[#events + 1] = { "end", err }
        else
            longs(err)
            drain()
        end
    end, max_line))
    ex:run()
    r:close()
    ex:close()
    return events
end

describe("ex:reader in line mode", function()
    it("numbers lines, drops one \\r, skips blank lines and decodes the rest", function()
        local big = string.rep("é", 50000) -- 100 000 bytes: spans chunks
        local path = tmpfile('{"a":1}\r\n\n  \t\r\n[1,2]\n{"b" oops\n"' .. big .. '"\n'
                             .. string.rep("x", 300) .. '\nnull\n{"last":true}')
        local ev = read_lines(path, 200000)
        os.remove(path)
        assert.same({ 1, { a = 1 } }, { ev[1][1], { a = ev[1][2].a } })
        assert.equal(json.object_mt, getmetatable(ev[1][2]))
        assert.equal(4, ev[2][1])
        assert.same({ 1, 2 }, { ev[2][2][1], ev[2][2][2] })
        assert.equal(5, ev[3][1])
        assert.equal("bad", ev[3][2])
        assert.matches("^EVALUE: invalid JSON at byte", ev[3][3])
        assert.equal('{"b" oops', ev[3][4])
        assert.same({ 6, big }, ev[4])
        assert.equal(7, ev[5][1])
        assert.equal("bad", ev[5][2])
        assert.equal(string.rep("x", 300), ev[5][4])
        assert.same({ 8, json.null }, ev[6])
        assert.equal(9, ev[7][1])
        assert.equal(true, ev[7][2].last)
        assert.same({ "end" }, ev[8])
        assert.equal(8, #ev)
    end)

    it("reports a line longer than max_line by number and size, without keeping it", function()
        local path = tmpfile('1\n' .. string.rep("x", 150000) .. '\r\n2\n' .. string.rep("y", 70000))
        local ev = read_lines(path, 1000)
        os.remove(path)
        assert.same({ 1, 1 }, ev[1])
        assert.same({ 2, "long", 150001 }, ev[2])
        assert.same({ 3, 2 }, ev[3])
        assert.same({ 4, "long", 70000 }, ev[4])
        assert.same({ "end" }, ev[5])
    end)

    it("hands a waiting line out as it is with take_raw", function()
        local path = tmpfile('{"a": 1}\r\nnot json\n')
        local ex = tide.executor()
        local got = {}
        local r
        r = assert(ex:reader(path, function(more)
            if more then
                while true do
                    local no, line = r:take_raw()
                    if not no then break end
                    got[#got + 1] = no .. ":" .. line
                end
            end
        end, 100))
        ex:run()
        assert.is_false(r:waiting())
        r:close()
        assert.is_nil(r:take()) -- closed: nothing waits
        ex:close()
        os.remove(path)
        assert.same({ '1:{"a": 1}', "2:not json" }, got)
    end)

    it("refuses a max_line that is not a number of bytes, and line calls in chunk mode", function()
        local ex = tide.executor()
        local path = tmpfile("1\n")
        assert.has_error(function() ex:reader(path, function() end, -1) end)
        assert.has_error(function() ex:reader(path, function() end, "big") end)
        local r = assert(ex:reader(path, function() end))
        local ok, err = pcall(r.take, r)
        assert.is_false(ok)
        assert.matches("not a line reader", err)
        r:close()
        ex:run()
        ex:close()
        os.remove(path)
    end)
end)

describe("w:json_line", function()
    it("writes the strings, the value as JSON and the tail as one line", function()
        local path = os.tmpname()
        local w = assert(core.file_open(path, "truncate"))
        assert.is_true(w:json_line('{"id":', '"a"', ',"output":', { b = { 1, 2.5, "é\n" }, a = json.null }, "}"))
        assert.is_true(w:json_line("", 3, ""))
        -- A value JSON cannot carry: nothing is written, and the code says why.
        local ok, err, code = w:json_line('{"x":', { f = print }, "}")
        assert.is_nil(ok)
        assert.equal("EVALUE: cannot encode function at $.f", err)
        assert.equal("EVALUE", code)
        assert.is_true(w:close())
        assert.equal('{"id":"a","output":{"a":null,"b":[1,2.5,"é\\n"]}}\n3\n', slurp(path))
        os.remove(path)
    end)

    it("refuses a call without the value and the tail", function()
        local path = os.tmpname()
        local w = assert(core.file_open(path, "truncate"))
        assert.has_error(function() w:json_line("x") end)
        assert.has_error(function() w:json_line({}, 1, {}) end)
        w:close()
        os.remove(path)
    end)
end)

describe("core.idset", function()
    it("adds each string once, keeps them across growth and tells which it holds", function()
        local set = core.idset()
        assert.is_false(set:has("1"))
        for i = 1, 5000 do assert.is_true(set:add(tostring(i))) end
        assert.is_false(set:add("17"))
        assert.is_true(set:add("")) -- the empty string is a string too
        assert.is_false(set:add(""))
        assert.is_true(set:add("a\0b"))
        assert.is_false(set:has("a"))
        assert.equal(5002, #set)
        for i = 1, 5000 do assert.is_true(set:has(tostring(i))) end
        assert.is_false(set:has("5001"))
    end)

    it("keeps whole numbers as runs and agrees with a Lua table in any order", function()
        -- Plain whole numbers that come in increasing order go to runs,
        -- the others to the hash table: the set must not tell them apart.
        local set, ref, n = core.idset(), {}, 0
        local state = 7
        local function rand(m)
            state = (state * 1103515245 + 12345) % 2147483648
            return state % m
        end
        local function try(s)
            local fresh = ref[s] == nil
            assert.equal(not fresh, set:has(s), s)
            assert.equal(fresh, set:add(s), s)
            if fresh then ref[s], n = true, n + 1 end
            assert.is_true(set:has(s), s)
        end
        for i = 1, 3000 do
            local k = rand(8)
            if k < 3 then try(tostring(i)) -- increasing, with gaps
            elseif k == 3 then try(tostring(rand(4000))) -- anywhere
            elseif k == 4 then try("0" .. rand(50)) -- leading zeros: not plain
            elseif k == 5 then try("-" .. rand(50))
            elseif k == 6 then try(tostring(rand(50)) .. "x")
            else try(string.format("%.0f", 1e17 + rand(1000))) end
        end
        try("0"); try("0"); try("999999999999999999"); try("9999999999999999999"); try("18446744073709551616")
        try("1000000000000000000"); try("12345678901234567890123")
        for s in pairs(ref) do assert.is_true(set:has(s), s) end
        for i = 0, 4100 do
            local s = tostring(i)
            assert.equal(ref[s] == true, set:has(s), s)
        end
        assert.equal(n, #set)
    end)

    it("refuses what is not a string, and keeps no values: get, put and remove are a map's", function()
        local set = core.idset()
        assert.has_error(function() set:add({}) end)
        assert.has_error(function() set:has(nil) end)
        assert.has_error(function() set.add({}, "x") end)
        assert.is_true(set:add("7"))
        assert.has_error(function() set:get("7") end,
            "calling 'get' on bad self (a core.idmap expected (a core.idset keeps no values and removes nothing))")
        assert.has_error(function() set:put("7", 1) end)
        assert.has_error(function() set:remove("7") end)
        assert.is_true(set:has("7"))
    end)
end)

describe("core.idmap", function()
    it("keeps a number with each string: get, put, and add leaves a present one as it was", function()
        local set = core.idmap()
        assert.is_nil(set:get("a"))
        assert.is_true(set:add("a", 7))
        assert.is_false(set:add("a", 9))
        assert.equal(7, set:get("a"))
        set:put("a", 4294967295)
        assert.equal(4294967295, set:get("a"))
        set:put("b", 2)
        assert.equal(2, set:get("b"))
        assert.is_true(set:add("c"))
        assert.equal(0, set:get("c"))
        assert.equal(3, #set)
    end)

    it("removes strings, while growing too, and agrees with a table under random churn", function()
        -- (Whole numbers too: a map keeps no runs.)
        local set = core.idmap()
        assert.is_false(set:remove("x"))
        -- A model: every operation on the set and on a Lua table must agree,
        -- over growth (incremental, with two tables), removals from either
        -- table and the arena's compaction.
        math.randomseed(7)
        local m, n = {}, 0
        for i = 1, 60000 do
            local id = (i % 3 == 0 and "" or "k") .. math.random(i < 30000 and 40000 or 3000)
                .. ("x"):rep(i % 3 == 0 and 0 or i % 17)
            local op = math.random(5)
            if op <= 2 then
                local added = set:add(id, i % 5)
                assert.equal(m[id] == nil, added)
                if added then m[id], n = i % 5, n + 1 end
            elseif op == 3 then
                local gone = set:remove(id)
                assert.equal(m[id] ~= nil, gone)
                if gone then m[id], n = nil, n - 1 end
            elseif op == 4 then
                if m[id] == nil then n = n + 1 end
                set:put(id, i)
                m[id] = i
            else
                assert.equal(m[id], set:get(id))
                assert.equal(m[id] ~= nil, set:has(id))
            end
            assert.equal(n, #set)
        end
        for id, v in pairs(m) do assert.equal(v, set:get(id)) end
    end)

    it("refuses what is not a string, and a value that is not a 32-bit count", function()
        local set = core.idmap()
        assert.has_error(function() set:add("a", -1) end)
        assert.has_error(function() set:put("a", 1.5) end)
        assert.has_error(function() set:put("a", 2 ^ 32) end)
        assert.has_error(function() set:put("a", 0 / 0) end)
        assert.has_error(function() set:put("a", "x") end)
        assert.has_error(function() set:remove({}) end)
        assert.equal(0, #set)
        assert.has_error(function() set:add({}) end)
        assert.has_error(function() set:has(nil) end)
        assert.has_error(function() set.add({}, "x") end)
    end)
end)
