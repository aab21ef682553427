-- Specs of the binary encoding values cross threads in (core.marshal_*).
local core = require "tide.core"
local json = core.json

local enc, dec = core.marshal_encode, core.marshal_decode

-- Deep equality that also compares metatables and the sign of zero.
local function same(a, b, seen)
    if type(a) ~= type(b) then return false end
    if type(a) == "number" then
        if a ~= a then return b ~= b end
        return a == b and (a ~= 0 or 1 / a == 1 / b)
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
}
local N = 34 -- VALUES has holes (nil): count explicitly

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
