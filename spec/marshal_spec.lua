-- Specs of the binary encoding values cross threads in (core.marshal_*).
local core = require "tide.core"
local ffi = require "ffi"
local json = core.json

local enc, dec = core.marshal_encode, core.marshal_decode

-- Deep equality that also compares metatables and the sign of zero.
local function same(a, b, seen)
    if type(a) ~= type(b) then return false end
    if type(a) == "number" then
        if a ~= a then return b ~= b end
        return a == b and (a ~= 0 or 1 / a == 1 / b)
    end
    if type(a) == "cdata" then
        -- 5LL == 5ULL in LuaJIT: the ctypes must match too.
        return tostring(ffi.typeof(a)) == tostring(ffi.typeof(b)) and a == b
    end
    if type(a) ~= "table" then return a == b end
    if getmetatable(a) ~= getmetatable(b) then return false end
    seen = seen or {}
    if seen[a] then return true end
    seen[a] = true
    for k, v in pairs(a) do
        if not same(v, b[k], seen) then return false end
    end
    for k in pairs(b) do
        if a[k] == nil then return false end
    end
    return true
end

local VALUES = {
    nil, true, false, 0, -0.0, 1, -1, 127, 128, -129, 2 ^ 31, -(2 ^ 53), 2 ^ 53, 2 ^ 53 + 2, 2 ^ 63,
    0.1, -1.5e-300, 1 / 0, -1 / 0, 0 / 0, "", "plain", "with\0zero", string.rep("x", 100000), json.null,
    {}, { 1, 2, 3 }, { 1, nil, 3 }, { a = 1, b = { c = { d = "deep" } } },
    { 1, 2, x = 3, [10] = 4, [true] = 5, [1.5] = 6 },
    json.array({}), json.object({}), json.array({ json.null, 1 }), json.object({ ["1"] = 1, a = json.array({}) }),
    -- 64-bit integers, as tide.json decodes them beyond 2^53, and small ones.
    9007199254740993LL, -9007199254740993LL, -9223372036854775807LL - 1, 9223372036854775807LL,
    9223372036854775808ULL, 18446744073709551615ULL, 0LL, -1LL, 5ULL,
    json.decode('{"id":12345678901234567890,"xs":[-9223372036854775808,9007199254740993]}'),
}
local N = 44 -- VALUES has holes (nil): count explicitly

describe("marshal", function()
    it("round-trips values exactly, with their shape", function()
        for i = 1, N do
            local v = VALUES[i]
            local s, err = enc(v)
            assert(s, err)
            local w = dec(s)
            assert.is_true(same(v, w), "value " .. i .. " changed")
        end
    end)

    it("keeps integers compact and doubles exact", function()
        assert.equal(2, #enc(1))
        assert.equal(9, #enc(0.1))
        assert.equal(9007199254740994, dec(enc(2 ^ 53 + 2)))
        assert.equal(-math.huge, dec(enc(-math.huge)))
    end)

    it("carries int64_t and uint64_t cdata as cdata of the same type", function()
        -- { value, ctype, its text }
        local cases = {
            { 9007199254740993LL, "int64_t", "9007199254740993LL" },
            { -9223372036854775807LL - 1, "int64_t", "-9223372036854775808LL" },
            { 18446744073709551615ULL, "uint64_t", "18446744073709551615ULL" },
            { ffi.new("const int64_t", -3), "int64_t", "-3LL" },
        }
        for _, c in ipairs(cases) do
            local s = assert(enc(c[1]))
            assert.is_true(#s <= 11, "size " .. #s)
            local v = dec(s)
            assert.is_true(ffi.istype(c[2], v))
            assert.equal(c[3], tostring(v))
            assert.is_true(v + 1 == c[1] + 1)
        end
        local t = dec(enc(json.decode('[9007199254740993,{"n":18446744073709551615}]')))
        assert.equal(json.array_mt, getmetatable(t))
        assert.equal("[9007199254740993,{\"n\":18446744073709551615}]", json.encode(t))
    end)

    it("refuses what cannot cross a thread", function()
        local cyc = {}
        cyc.me = cyc
        local deep = {}
        local t = deep
        for _ = 1, 250 do
            t.next = {}
            t = t.next
        end
        local cases = {
            { print, "cannot carry a function" },
            { coroutine.create(print), "cannot carry a thread" },
            { io.stdout, "cannot carry a userdata" },
            { ffi.new("int32_t", 1), "cannot carry a cdata" },
            { { x = ffi.new("int64_t[1]") }, "cannot carry a cdata" },
            { { [1LL] = true }, "table key that is not a string, number or boolean" },
            { cyc, "cannot carry a cyclic table" },
            { deep, "nested deeper than 200" },
            { { [print] = 1 }, "table key that is not a string, number or boolean" },
            { json.array({ a = 1 }), "an array has a key that is not a positive integer" },
        }
        for _, c in ipairs(cases) do
            local s, msg, code = enc(c[1])
            assert.is_nil(s)
            assert.equal("EVALUE", code)
            assert.matches(c[2], msg, 1, true)
        end
        local shared = { 1 }
        assert.is_truthy(enc({ shared, shared })) -- shared is not cyclic
    end)

    it("refuses sparse arrays as JSON does, at once (issue 18)", function()
        -- A marked array whose largest index exceeds both 1000 and twice
        -- its entries is refused, as tide.json.encode refuses it: the
        -- encoder used to write 1e8 nils (5.5 s, 860 MB) and 2^31 + 1
        -- ones took a minute and 2 GB.
        for _, n in ipairs({ 1e8, 2 ^ 31 + 1, 2 ^ 32 - 1, 1001 }) do
            local t0 = os.clock()
            local s, msg, code = enc(json.array({ [n] = true }))
            assert.is_true(s == nil, "encoded " .. (s and #s or 0) .. " bytes") -- not printed whole
            assert.equal("EVALUE", code)
            assert.matches("sparse array", msg, 1, true)
            assert.is_true(os.clock() - t0 < 0.5, "refused in " .. (os.clock() - t0) .. " s")
            assert.is_false((json.check(json.array({ [n] = true }))))
        end
        -- Nested, the same; what JSON takes still crosses.
        assert.is_true(enc({ a = { json.array({ [5000] = 1, 1 }) } }) == nil)
        local dense = json.array({ [1000] = true })
        assert.equal(1000, #dec(enc(dense)))
        local half = json.array({})
        for i = 1, 3000, 2 do half[i] = i end
        assert.same(half, dec(enc(half)))
        -- A plain table keeps every key: a sparse border is carried as
        -- pairs, not as a run of nils.
        local plain = { 1, 2, [1e8] = 3 }
        local s = enc(plain)
        assert.is_true(#s < 64, #s .. " bytes")
        assert.same(plain, dec(s))
    end)

    it("rejects every truncation and trailing byte of valid input", function()
        for i = 1, N do
            local s = enc(VALUES[i])
            for cut = 0, math.min(#s - 1, 200) do
                local v, msg, code = dec(s:sub(1, cut))
                assert.is_nil(v)
                assert.equal("EVALUE", code, msg)
            end
            local v, _, code = dec(s .. "\0")
            assert.is_nil(v)
            assert.equal("EVALUE", code)
        end
    end)

    it("never crashes on random bytes", function()
        math.randomseed(7)
        local ok_count = 0
        for _ = 1, 20000 do
            local n = math.random(0, 24)
            local b = {}
            for k = 1, n do b[k] = string.char(math.random(0, 12)) end
            local v, msg, code = dec(table.concat(b))
            if code then
                assert.equal("EVALUE", code)
                assert.matches("^EVALUE: malformed value", msg)
            else
                ok_count = ok_count + 1
                local _ = v
            end
        end
        assert.is_true(ok_count > 0)
        -- A huge count with no data behind it is refused, not allocated.
        local v, msg = dec("\9\255\255\255\255\15")
        assert.is_nil(v)
        assert.matches("truncated table", msg)
    end)

    it("raises on misuse", function()
        assert.has_error(function() enc() end)
        assert.has_error(function() dec({}) end)
    end)
end)
