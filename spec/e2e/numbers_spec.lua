--- End-to-end specs: `tide run` passes numbers through exactly, 64-bit
-- integers included, on the loop and through sync tasks on worker threads.
-- Run from the repository root:
--   busted --lua=luajit -o TAP --helper=spec/helpers/init.lua spec/e2e/numbers_spec.lua
local proc = require "helpers.proc"

-- The pipelines, written to a temporary directory: each returns its input,
-- one on the loop, one on a worker thread; "next" adds 1 on a worker.
local PIPELINES = {
    identity = [[
local tide = require "tide"
local p = tide.pipeline "id"
p:task("t", function(x) return x end)
return p
]],
    sync = [[
local tide = require "tide"
local p = tide.pipeline "id-sync"
p:task("t", { kind = "sync" }, function(x) return x end)
return p
]],
    next = [[
local tide = require "tide"
local p = tide.pipeline "next"
p:task("t", { kind = "sync" }, function(x) return { n = x.n, next = x.n + 1 } end)
return p
]],
}

-- { input line, the output it must come out as (the text after "output":) }
local LINES = {
    { '{"id":1,"n":9007199254740993}', '{"id":1,"n":9007199254740993}' },
    { '{"n":-9223372036854775808}', '{"n":-9223372036854775808}' },
    { '{"n":9223372036854775807}', '{"n":9223372036854775807}' },
    { '{"n":18446744073709551615}', '{"n":18446744073709551615}' },
    { '{"n":12345678901234567890}', '{"n":12345678901234567890}' },
    -- Beyond uint64: a double, as before.
    { '{"n":18446744073709551616}', '{"n":1.8446744073709552e+19}' },
    { '{"n":[9007199254740993,{"k":-9007199254740995}],"x":0.1}',
      '{"n":[9007199254740993,{"k":-9007199254740995}],"x":0.1}' },
    { '{"n":9007199254740992,"m":1e400}', nil }, -- inf cannot be encoded
}


describe("tide run keeps numbers exact", function()
    local dir

    setup(function()
        dir = proc.tmpdir()
        for name, text in pairs(PIPELINES) do
            proc.write(dir .. "/" .. name .. ".lua", text)
        end
    end)

    teardown(function()
        if dir then proc.rmrf(dir) end
    end)

    -- Runs PIPELINE on one line of input; returns the output line.
    local function run(pipeline, line)
        local r = proc.tide({ "run", dir .. "/" .. pipeline .. ".lua" }, line .. "\n")
        local out = proc.lines(r.stdout)
        assert.equal(1, #out, r.stdout .. r.stderr)
        return out[1], r
    end

    for _, pipeline in ipairs({ "identity", "sync" }) do
        for _, row in ipairs(LINES) do
            local what = row[2] and "prints " .. row[1] .. " exactly"
                or "fails on " .. row[1] .. " with EVALUE"
            it(what .. " (" .. pipeline .. ")", function()
                local line, r = run(pipeline, row[1])
                if row[2] then
                    assert.equal(0, r.code, r.stderr)
                    assert.equal(row[2], line:match('"output":(.*)}$'))
                    assert.matches('"status":"done"', line, 1, true)
                else
                    assert.equal(1, r.code)
                    assert.matches('"status":"failed"', line, 1, true)
                    assert.matches('"code":"EVALUE"', line, 1, true)
                end
            end)
        end
    end

    it("prints the line the issue shows, whole", function()
        local line = run("identity", '{"id":1,"n":9007199254740993}')
        assert.equal('{"id":"1","status":"done","output":{"id":1,"n":9007199254740993}}', line)
    end)

    -- { input line, the id it is reported under }: ids keep every digit.
    local IDS = {
        { '{"id":9007199254740993}', '"9007199254740993"' },
        { '{"id":-9223372036854775808}', '"-9223372036854775808"' },
        { '{"id":1234567890123456}', '"1234567890123456"' },
        { '{"id":100000000000000}', '"100000000000000"' },
        { '{"id":40}', '"40"' },
    }

    for _, row in ipairs(IDS) do
        it("reports the id of " .. row[1] .. " as " .. row[2], function()
            local line = run("identity", row[1])
            assert.equal(row[2], line:match('^{"id":(.-),'))
        end)
    end

    it("computes with a 64-bit integer on a worker thread", function()
        local line = run("next", '{"n":9007199254740993}')
        assert.equal('{"n":9007199254740993,"next":9007199254740994}', line:match('"output":(.*)}$'))
        line = run("next", '{"n":18446744073709551614}')
        assert.equal('{"n":18446744073709551614,"next":18446744073709551615}', line:match('"output":(.*)}$'))
    end)
end)
