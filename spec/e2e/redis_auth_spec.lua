--- A Redis that asks for a password (requirepass, and an ACL user):
-- `tide worker`, `tide run --redis`, `tide serve --redis` and `tide dlq`
-- with redis://[USER]:PASSWORD@HOST:PORT, %XX escapes in the password,
-- a wrong or missing password (exit 3 with the server's answer), bad
-- URLs (exit 2), and the password never shown in a message, a log line
-- or an HTTP answer.
local proc = require "helpers.proc"
local rs = require "helpers.redis"
local serve = require "helpers.serve"
local core = require "tide.core"

local json = core.json

local PIPE = "spec/fixtures/pipelines/distributed.lua"
-- ':', '@', '/' and '%' must be escaped in a URL.
local PASSWORD = "p@ss:w/rd%9"
local ESCAPED = "p%40ss%3Aw%2Frd%259"

describe("Redis with a password", function()
    local server, dir, base

    before_each(function()
        server = rs.start { password = PASSWORD }
        dir = proc.tmpdir()
        base = "127.0.0.1:" .. server.port
    end)
    after_each(function()
        server:stop()
        proc.rmrf(dir)
    end)

    local function no_secret(text)
        assert.is_nil(text:find("p@ss", 1, true), text)
        assert.is_nil(text:find(ESCAPED, 1, true), text)
        assert.is_nil(text:find("rd%", 1, true), text)
    end

    it("runs jobs with the password in the URL, and never shows it", function()
        local url = "redis://:" .. ESCAPED .. "@" .. base
        local w = rs.start_worker(url, PIPE, dir .. "/w.err", "--lease 2")
        local r = proc.tide({ "run", PIPE, "--redis", url, "--output", dir .. "/out" },
                            '{"n":1}\n{"n":2}\n{"n":3}\n')
        rs.stop_workers({ w })
        assert.equal(0, r.code, r.stderr)
        local out = proc.slurp(dir .. "/out/double.jsonl")
        assert.equal(3, select(2, out:gsub("\n", "")))
        assert.matches('"twice":6', out)
        local werr = proc.slurp(dir .. "/w.err")
        assert.matches("from redis://:%*%*%*@" .. base:gsub("%p", "%%%0"), werr)
        no_secret(werr)
        no_secret(r.stderr)
        -- The queue is really behind the password.
        assert.equal("0", server:cli("XLEN", "tide:{distributed}:jobs"))
    end)

    it("an ACL user and password; tide serve --redis keeps the password out of /v1/stats", function()
        assert.equal("OK", server:cli("ACL", "SETUSER", "alice", "on", ">pw2", "~*", "&*", "+@all"))
        local url = "redis://alice:pw2@" .. base
        local w = rs.start_worker(url, PIPE, dir .. "/w.err", "--lease 2")
        local s = serve.start("--redis " .. url, PIPE)
        local st, text = serve.http(s, "POST", "/v1/jobs?wait=20", '{"input":{"n":4}}',
                                    { "Content-Type: application/json" })
        local sst, stext = serve.http(s, "GET", "/v1/stats")
        serve.stop(s)
        rs.stop_workers({ w })
        assert.equal(200, st, text)
        assert.same({ n = 4, twice = 8 }, json.decode(text).output)
        assert.equal(200, sst)
        assert.equal("redis://alice:***@" .. base, json.decode(stext).redis)
        assert.is_nil(stext:find("pw2", 1, true))
        local d = proc.tide({ "dlq", "list", "--redis", url })
        assert.equal(0, d.code, d.stderr)
    end)

    it("a wrong or missing password: exit 3 with Redis's answer, the password not shown", function()
        local r = proc.tide({ "run", PIPE, "--redis", "redis://:wrong%40secret@" .. base }, '{"n":1}\n')
        assert.equal(3, r.code)
        assert.matches("refused the user and password of the URL: WRONGPASS", r.stderr)
        assert.is_nil(r.stderr:find("secret", 1, true), r.stderr)
        local w = proc.tide({ "worker", PIPE, "--redis", "redis://nobody:x@" .. base })
        assert.equal(3, w.code)
        assert.matches("WRONGPASS", w.stderr)
        assert.matches("redis://nobody:%*%*%*@", w.stderr)
        local n = proc.tide({ "run", PIPE, "--redis", "redis://" .. base }, '{"n":1}\n')
        assert.equal(3, n.code)
        assert.matches("NOAUTH", n.stderr)
        local d = proc.tide({ "dlq", "list", "--redis", "redis://:bad@" .. base })
        assert.equal(3, d.code)
        assert.matches("WRONGPASS", d.stderr)
        -- From Lua: the executor cannot be made, with the same message.
        local tide = require "tide"
        local ex, rec = tide.executor { redis = "redis://:bad@" .. base }
        assert.is_nil(ex)
        assert.matches("WRONGPASS", rec.message)
    end)

    it("bad URLs: exit 2 with the form, the password not shown", function()
        local cases = {
            { "redis://secretword@" .. base, "the password follows a colon" },
            { "redis://:" .. "sec%zzret@" .. base, "malformed %%XX escape" },
            { "redis://:sec%4@" .. base, "malformed %%XX escape" },
            { "redis://user:@" .. base, "an empty password" },
            { "rediss://:secret@" .. base, "only plain TCP" },
        }
        for _, c in ipairs(cases) do
            local r = proc.tide({ "run", PIPE, "--redis", c[1] }, '{"n":1}\n')
            assert.equal(2, r.code, c[1])
            assert.matches(c[2], r.stderr)
            assert.is_nil(r.stderr:find("sec", 1, true), r.stderr)
        end
    end)
end)
