--- End-to-end specs: what `tide run` writes is strict UTF-8, whatever
-- text came in. Run from the repository root:
--   busted --lua=luajit -o TAP --helper=spec/helpers/init.lua spec/e2e/utf8_spec.lua
local proc = require "helpers.proc"
local json = require("tide.core").json

local PIPE = "spec/fixtures/pipelines/"
local R = "\xEF\xBF\xBD" -- U+FFFD


describe("tide run writes strict UTF-8", function()
    it("decodes lone surrogate escapes to U+FFFD", function()
        local r = proc.tide({ "run", PIPE .. "echo.lua" },
                            '{"id":"s","s":"\\ud800x","t":["\\udc00"],"u":"\\ud83d\\ude00"}\n')
        assert.equal(0, r.code, r.stderr)
        assert.equal('{"id":"s","status":"done","output":{"id":"s","s":"' .. R .. 'x","t":["' .. R
                     .. '"],"u":"\xF0\x9F\x98\x80"}}\n', r.stdout)
    end)

    -- { what, the bytes inside a JSON string on an input line }
    local BAD = {
        { "a surrogate in UTF-8", "\xED\xA0\x80", R .. R .. R },
        { "an overlong form", "\xC0\xAF", R .. R },
        { "a code point above U+10FFFF", "\xF4\x90\x80\x80", R .. R .. R .. R },
        { "a byte-cut character", "caf\xC3", "caf" .. R },
    }

    for _, row in ipairs(BAD) do
        it("rejects a line with " .. row[1] .. " and shows it with U+FFFD in rejects.jsonl", function()
            local dir = proc.tmpdir()
            finally(function() proc.rmrf(dir) end)
            local line = '{"id":"x' .. row[2] .. '"}'
            local r = proc.tide({ "run", PIPE .. "echo.lua", "--output", dir },
                                '{"id":"ok"}\n' .. line .. "\n")
            assert.equal(1, r.code, r.stderr)
            assert.matches("tide: line 2: malformed JSON", r.stderr, 1, true)
            local text = proc.slurp(dir .. "/rejects.jsonl")
            -- Every byte written is strict UTF-8, so strict readers take it.
            assert.equal(text, json.repair_utf8(text))
            local rec = assert(json.decode(proc.lines(text)[1]))
            assert.equal(2, rec.line)
            assert.equal('{"id":"x' .. row[3] .. '"}', rec.text)
            assert.is_string(rec.base64)
        end)
    end
end)
