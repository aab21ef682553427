-- Specs for the fast path of tide.json's decoder (src/lua/ljson.c,
-- json_fast_decode) and the encoder's shortcuts: every text must decode
-- to the value the yajl path gives, and every text the yajl path refuses
-- must be refused with the same message.
--
-- The yajl path alone is reached through an internal test hook that
-- ljson.c leaves in the Lua registry (JSON_SLOW_HOOK): it is no part of
-- tide.json, and nothing but this spec uses it.
--
-- Run from the repository root: busted --lua=luajit spec/json_fast_spec.lua

local json = require("tide.core").json
local ffi = require "ffi"

local slow = debug.getregistry()["tide.json.decode_slow (internal test hook)"]

local int64_t, uint64_t = ffi.typeof("int64_t"), ffi.typeof("uint64_t")


-- Compares two decoded values: same types, numbers to the bit (the sign of
-- zero included), 64-bit integers of the same C type and value, same
-- strings, same null sentinels, and for tables the same metatable and the
-- same keys. Returns true, or false and where they differ.
local function same(a, b, path)
    path = path or "$"
    if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " vs " .. type(b) end
    if type(a) == "number" then
        if a ~= a and b ~= b then return true end
        if a == 0 and b == 0 and 1 / a ~= 1 / b then return false, path .. ": signs of zero differ" end
        return a == b, path .. ": " .. tostring(a) .. " vs " .. tostring(b)
    elseif type(a) == "cdata" then
        if ffi.istype(int64_t, a) ~= ffi.istype(int64_t, b) or ffi.istype(uint64_t, a) ~= ffi.istype(uint64_t, b) then
            return false, path .. ": cdata types differ"
        end
        return tostring(a) == tostring(b), path .. ": " .. tostring(a) .. " vs " .. tostring(b)
    elseif type(a) == "table" then
        if getmetatable(a) ~= getmetatable(b) then return false, path .. ": metatables differ" end
        for k, v in pairs(a) do
            local ok, where = same(v, b[k], path .. "[" .. tostring(k) .. "]")
            if not ok then return false, where end
        end
        for k in pairs(b) do
            if a[k] == nil then return false, path .. ": key " .. tostring(k) .. " only in the yajl value" end
        end
        return true
    end
    return a == b, path .. ": " .. tostring(a) .. " vs " .. tostring(b)
end


-- Decodes s both ways and checks that they agree.
local function agree(s)
    local v1, e1, c1 = json.decode(s)
    local v2, e2, c2 = slow(s)
    local shown = #s > 80 and s:sub(1, 80) .. "..." or s
    if v2 == nil and e2 ~= nil then
        assert.is_nil(v1, shown)
        assert.equal(e2, e1, shown)
        assert.equal(c2, c1, shown)
        return false
    end
    assert.is_nil(e1, shown)
    local ok, where = same(v1, v2)
    assert(ok, shown .. ": " .. tostring(where))
    assert.equal(json.encode(v2), json.encode(v1), shown)
    return true
end


-- A deterministic generator (a 31-bit LCG), so that every run tries the
-- same texts.
local function lcg(seed)
    local state = seed
    return function(m)
        state = (state * 1103515245 + 12345) % 2147483648
        return state % m
    end
end


local NUMBERS = {
    "0", "-0", "1", "-1", "0.1", "1.0", "1e5", "1E+5", "1e-7", "1e400", "-1e400", "12345678901234567890",
    "9007199254740992", "9007199254740993", "-9007199254740993", "9223372036854775807", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
    "0.30000000000000004", "123456789012345.6789", "1.5", "-0.0", "0.000001", "3.141592653589793",
    "100000000000000", "999999999999999", "1000000000000000", "123456789012345", "1234567890123456",
    "1.25e2", "-12.5", "4.000", "0.5", "01", "-01", "1.", ".5", "+1", "-", "--1", "1e", "1e+", "0x10",
    "Infinity", "NaN", "1.7976931348623157e308", "5e-324", "0.1234567890123456789", "00", "-00.0", "1.0e0",
}

local STRINGS = {
    [[a]], [[\"]], [[\\]], [[\/]], [[\b]], [[\f]], [[\n]], [[\r]], [[\t]], [[\u0000]], [[\u001f]], [[\u00e9]],
    [[\u20AC]], [[\uD83D\uDE00]], [[\ud800]], [[\udc00]], [[\ud800\u0041]], [[\ud800x]], [[a?b\n]],
    [[\uDBFF\uDFFF]], [[\ud800\ud800]], [[\udc00\ud800]], "é", "日本", "😀", "\127", "\255", "\192\175",
    "\237\160\128", "\244\144\128\128", "\226\130", "a\tb", "a\nb", "\1", "\0", [[\x]], [[\u12]], [[\u12G4]],
    [[\U0041]], [[\']], "é\\n", "😀\\u0041", "\\u00e9é", string.rep("x", 300) .. "\\n", string.rep("é\\n", 200),
    [[\uFFFF]], [[\uFEFF]], [[\u0080]], [[\u07FF]], [[\u0800]], "\239\187\191", "?", "a?", [[\u003F]],
}

local GOOD = '{"id":7,"name":"Zoë Kowalski","email":"zoe1@example.org","active":true,"score":62.80,'
    .. '"plan":"team","address":{"city":"Lyon","zip":"56236"},"counts":[358,816,169],"ratio":2.987,'
    .. '"manager":null,"e":"a\\n\\u00e9\\"","f":-0.5,"g":[[],{}]}'


describe("tide.json fast path", function()
    it("is reached through the internal hook", function()
        assert.is_function(slow)
        assert.is_nil(json.decode_slow) -- not part of the module
        for k in pairs(json) do assert.is_nil(k:find("slow"), k) end
    end)

    it("agrees with yajl on numbers of every form", function()
        for _, n in ipairs(NUMBERS) do
            agree(n)
            agree("[" .. n .. "]")
            agree('{"v":' .. n .. '}')
            agree('{"v":[' .. n .. "," .. n .. "]}")
            agree(" " .. n .. " ")
        end
    end)

    it("agrees with yajl on strings, escapes and bytes of every kind", function()
        for _, s in ipairs(STRINGS) do
            agree('"' .. s .. '"')
            agree('{"s":"' .. s .. '"}')
            agree('{"' .. s .. '":1}')
            agree('["' .. s .. '","' .. s .. '"]')
        end
        -- Every byte alone in a string, and every escape letter.
        for b = 0, 255 do
            agree('"' .. string.char(b) .. '"')
            agree('["\\' .. string.char(b) .. '"]')
        end
    end)

    it("agrees with yajl on shapes, whitespace and bad texts", function()
        local texts = {
            '{"a":1,"a":2}', '{"a":{"x":1},"a":[1]}', '{}', '[]', '{"a":{}}', '{"a":[]}', '[{}]', '[[]]',
            '[{},[],{"b":[{}]}]', '{ }', '[ ]', ' { "a" : 1 , "b" : [ 1 , 2 ] } ', '\t{"a":1}\t', '{"a":1}\r',
            '\r\n{"a":1}\r\n', '{"a":null}', '[null,null]', '[true,false,null]', 'true', 'false', 'null',
            '"x"', '1', '', ' ', '{"":1}', '{"a":1,}', '[1,]', '[,1]', '{,}', '{"a"}', '{"a":}', '{:1}',
            '{"a" 1}', '{"a":1 "b":2}', '[1 2]', '{"a":1}}', '[1]]', '{"a":1} x', '{"a":1}{"b":2}',
            '{"a":1} "', '{"a":1} "x', '{"a":1', '{"a"', '{"a', '{', '[', '[1,', '"abc', 'tru', 'nul', 'fals',
            'truex', 'nullx', 'true false', '{"a":tru}', '{"a":nulll}', 'garbage', '\1\2\3', '\255\254',
            '{"a":1}\v', '\v{"a":1}', '{"a":\f1}', '{"a":1}\0', '{"a":"\0"}', '{"a":1}/*c*/', '//c',
            "{'a':1}", '{a:1}', '{"a":[1,{"b":[2,{"c":3}]}]}', '[1,2]\n', '{"a":1}\n\n', GOOD,
        }
        for _, t in ipairs(texts) do agree(t) end
    end)

    it("agrees with yajl on deep nesting and on many tokens", function()
        for _, d in ipairs({ 1, 2, 31, 32, 33, 34, 64, 200, 999, 1000, 1001 }) do
            agree(string.rep("[", d) .. string.rep("]", d))
            agree(string.rep('{"a":', d) .. "1" .. string.rep("}", d))
            agree('{"deep":' .. string.rep("[", d) .. '"x"' .. string.rep("]", d) .. "}")
            agree(string.rep("[", d) .. string.rep("]", d - 1))
        end
        for _, n in ipairs({ 1, 126, 127, 128, 253, 254, 255, 256, 257, 1000 }) do
            local a, o = {}, {}
            for i = 1, n do
                a[i] = tostring(i)
                o[i] = '"k' .. i .. '":' .. i
            end
            agree("[" .. table.concat(a, ",") .. "]")
            agree('{"a":[' .. table.concat(a, ",") .. "]}")
            agree("{" .. table.concat(o, ",") .. "}")
        end
        for _, n in ipairs({ 255, 256, 257, 100000 }) do
            agree('{"s":"' .. string.rep("x", n) .. '\\n"}')
            agree('{"s":"' .. string.rep("é", n) .. '"}')
        end
    end)

    it("agrees with yajl on thousands of mangled lines", function()
        local rand = lcg(12345)
        local alphabet = '{}[]:,"\\ \t\r\n\v\f0123456789-+.eEtrufalsn\0\127\128\195\169\237\160\255ux'
        local decoded = 0
        for _ = 1, 3000 do
            local s = GOOD
            for _ = 1, 1 + rand(3) do
                local pos = 1 + rand(#s)
                local k = 1 + rand(#alphabet)
                local c = alphabet:sub(k, k)
                local op = rand(3)
                if op == 0 then s = s:sub(1, pos - 1) .. s:sub(pos + 1)
                elseif op == 1 then s = s:sub(1, pos - 1) .. c .. s:sub(pos)
                else s = s:sub(1, pos - 1) .. c .. s:sub(pos + 1) end
            end
            if agree(s) then decoded = decoded + 1 end
        end
        for i = 1, #GOOD do agree(GOOD:sub(1, i)) end
        -- Both kinds of outcome were tried.
        assert.is_true(decoded > 100)
        assert.is_true(decoded < 2900)
    end)

    it("leaves the messages for bad lines as they were", function()
        local cases = {
            ['{"a":1,}'] = "invalid JSON at byte 8: parse error: invalid object key (must be a string)",
            ["[1,]"] = "invalid JSON at byte 4: parse error: unallowed token at this point in JSON text",
            ['{"a"}'] = "invalid JSON at byte 5: parse error: object key and value must be separated by a colon (':')",
            ['{"a":1 "b":2}'] = "invalid JSON at byte 9: parse error: after key and value, inside map, "
                .. "I expect ',' or '}'",
            ["[1 2]"] = "invalid JSON at byte 4: parse error: after array element, I expect ',' or ']'",
            ['{"a":1} x'] = "invalid JSON at byte 9: parse error: trailing garbage",
            ['{"a":1} "'] = "invalid JSON at byte 8: parse error: trailing garbage",
            ['{"a":1'] = "invalid JSON at byte 6: parse error: premature EOF",
            ['"abc'] = "invalid JSON at byte 4: parse error: premature EOF",
            ['{"a":1}\v'] = "invalid JSON at byte 7: lexical error: invalid char in json text",
            ['{"a":"\255"}'] = "invalid JSON at byte 7: lexical error: invalid bytes in UTF8 string",
            ['{"a":"\237\160\128"}'] = "invalid JSON at byte 6: lexical error: invalid bytes in UTF8 string",
            [string.rep("[", 1001) .. string.rep("]", 1001)] = "JSON nested deeper than 1000 at byte 1001",
        }
        for text, msg in pairs(cases) do
            local v, err, code = json.decode(text)
            assert.is_nil(v)
            assert.equal("EVALUE: " .. msg, err)
            assert.equal("EVALUE", code)
        end
    end)
end)


describe("tide.json encoder shortcuts", function()
    -- The text the encoder must give for an object of string keys and
    -- plain values, built here the slow way.
    local function reference(t)
        local keys = {}
        for k in pairs(t) do keys[#keys + 1] = k end
        table.sort(keys)
        local parts = {}
        for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ":" .. json.encode(t[k]) end
        return "{" .. table.concat(parts, ",") .. "}"
    end

    it("sorts the keys of small and large objects alike", function()
        local rand = lcg(99)
        for _, n in ipairs({ 0, 1, 2, 3, 31, 32, 33, 100, 3000, 5000 }) do
            local t = json.object()
            for i = 1, n do t["k" .. rand(100000) .. "_" .. i] = i end
            assert.equal(reference(t), json.encode(t))
        end
    end)

    it("encodes objects too large to keep on the Lua stack, nested too", function()
        local big = {}
        for i = 1, 5000 do big["k" .. i] = { i, "v" .. i } end
        local text = assert(json.encode(big))
        local back = json.decode(text)
        for i = 1, 5000 do assert.equal(i, back["k" .. i][1]) end
        local nest = { a = big, b = { c = big } }
        assert.equal('{"a":' .. text .. ',"b":{"c":' .. text .. "}}", json.encode(nest))
    end)

    it("keeps the errors and their order inside large objects", function()
        local t = {}
        for i = 1, 5000 do t["k" .. i] = i end
        t.k4000 = function() end
        local v, err = json.encode(t)
        assert.is_nil(v)
        assert.equal("EVALUE: cannot encode function at $.k4000", err)
        t.k4000, t[1], t["1"] = 1, 1, 2
        v, err = json.encode(t)
        assert.is_nil(v)
        assert.equal('EVALUE: cannot encode table with both a number and a string key "1" at $', err)
    end)

    it("writes integers as json_format_number does", function()
        for _, n in ipairs({ 1, 9, 10, 99, 100, 12345, 999999999999999, 1e15, 1e15 + 1, 2 ^ 53, -1, -0.0, 0,
                             0.5, 1e16, 123456789012345 }) do
            assert.equal(json.encode(n), json.encode({ n }):sub(2, -2))
        end
        assert.equal("[1,10,999999999999999,1000000000000000]", json.encode({ 1, 10, 999999999999999, 1e15 }))
    end)
end)
