-- Specs of a server made without a socket (tide.serve{ listen = false }):
-- the whole HTTP path on bytes fed to it, as the fuzz target drives it.
local tide = require "tide"

local function server()
    local p = tide.pipeline "feed"
    p:task("echo", function(x)
        if x == "slow" then tide.sleep(30) end
        return x
    end)
    return assert(tide.serve(p, { listen = false }))
end

describe("tide.serve{ listen = false }", function()
    it("answers requests fed to it, pipelined and cut anywhere", function()
        local s = server()
        local body = '{"id":"a","input":{"x":1}}'
        local req = "POST /v1/jobs?wait=1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
            .. "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        local out, closed = s.feed(req:sub(1, 30), true)
        assert.equal("", out)
        assert.is_false(closed)
        out = s.feed(req:sub(31))
        for _ = 1, 5 do s.executor:step() end
        out = out .. s.feed("")
        assert.matches('^HTTP/1%.1 200 OK\r\n.-\r\n\r\n{"id":"a","status":"done","output":{"x":1}}HTTP/1%.1 200 OK\r\n'
                       .. '.-\r\n\r\n{"ok":true}$', out)
        s.close()
        s.executor:close()
    end)

    it("refuses once, closes, and reads nothing after; a new connection starts afresh", function()
        local s = server()
        local out, closed = s.feed("GET /healthz HTTP/1.1\r\n Host: localhost\r\n\r\n", true)
        assert.matches("^HTTP/1%.1 400 Bad Request\r\n", out)
        assert.matches("obsolete line folding", out, 1, true)
        assert.is_true(closed)
        out, closed = s.feed("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert.equal("", out)
        assert.is_true(closed)
        out = s.feed("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", true)
        assert.matches("^HTTP/1%.1 200 OK\r\n", out)
        -- A long-poll owed an answer when the client leaves: its watcher goes.
        local body = '{"id":"s","input":"slow"}'
        out = s.feed("POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     .. "Content-Length: " .. #body .. "\r\n\r\n" .. body, true)
        assert.matches("^HTTP/1%.1 201 Created\r\n", out)
        out = s.feed("GET /v1/jobs/s/result?wait=30 HTTP/1.1\r\nHost: localhost\r\n\r\n", true)
        assert.equal("", out)
        assert.equal(1, s.executor:watchers())
        s.feed(nil) -- a half-close: the answer is still owed
        assert.equal(1, s.executor:watchers())
        s.feed("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", true) -- the old one closes
        assert.equal(0, s.executor:watchers())
        s.executor:cancel_all()
        s.close()
        s.executor:close()
        assert.has_error(function() tide.serve(tide.pipeline("x"):task("a", print), { listen = true }) end)
    end)

    it("answers 410 for at least the last evicted ids and 404 past them, across generations", function()
        local p = tide.pipeline "evict"
        p:task("echo", function(x) return x end)
        local ex = tide.executor { max_results = 3 }
        local s = assert(tide.serve(p, { listen = false, executor = ex, evicted_kept = 4 }))
        local function ask(method, path, body)
            local req = method .. " " .. path .. " HTTP/1.1\r\nHost: localhost\r\n"
            if body then
                req = req .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n"
            end
            local out = s.feed(req .. "\r\n" .. (body or ""), true)
            for _ = 1, 3 do ex:step() end
            out = out .. s.feed("")
            return tonumber(out:match("^HTTP/1%.1 (%d+)")), out:match("\r\n\r\n(.*)$")
        end
        for i = 1, 30 do
            local st, body = ask("POST", "/v1/jobs?wait=1", '{"id":"j' .. i .. '","input":' .. i .. '}')
            assert.equal(200, st)
            assert.equal('{"id":"j' .. i .. '","status":"done","output":' .. i .. '}', body)
        end
        -- Kept: the last 3. Evicted and remembered: at least the 4 before
        -- them (two generations of 4: up to 8). Forgotten: the oldest.
        for i = 28, 30 do assert.equal(200, (ask("GET", "/v1/jobs/j" .. i .. "/result"))) end
        for i = 24, 27 do
            local st, body = ask("GET", "/v1/jobs/j" .. i)
            assert.equal(410, st)
            assert.matches("EGONE", body)
        end
        for i = 1, 18 do assert.equal(404, (ask("GET", "/v1/jobs/j" .. i))) end
        -- An evicted id given again is a new job, kept, and evicted again.
        assert.equal(200, (ask("POST", "/v1/jobs?wait=1", '{"id":"j25","input":0}')))
        assert.equal(200, (ask("GET", "/v1/jobs/j25")))
        s.close()
        ex:close()
        assert.has_error(function() tide.serve(p, { listen = false, evicted_kept = 0 }) end)
        assert.has_error(function() tide.serve(p, { listen = false, evicted_kept = "many" }) end)
    end)
end)


describe("server.reload and pipeline.version", function()
    local pipeline = require "tide.pipeline"
    local proc = require "helpers.proc"
    -- A file of its own, made without a shell: make check SAN=thread runs
    -- this spec with ThreadSanitizer preloaded, under which sh does not run.
    local path
    before_each(function() path = os.tmpname() end)
    after_each(function() os.remove(path) end)

    local function file(tag)
        return ([[
local tide = require "tide"
local p = tide.pipeline "versions"
p:task("tag", function() return %q end)
return p
]]):format(tag)
    end

    it("raises at the caller's line on misuse", function()
        assert.has_error(function() pipeline.version("nope") end,
                         "pipeline.version: expects a pipeline, got string")
        local ok, err = pcall(function() pipeline.reload(tide.pipeline "inline") end)
        assert.is_false(ok)
        assert.matches("serve_feed_spec%.lua:%d+: pipeline%.reload: expects a pipeline loaded from a file", err)
    end)

    it("loads the file again: version is the hash of its text, nil without a file", function()
        proc.write(path, file("one"))
        local p = assert(tide.pipeline_file(path))
        assert.equal(require("tide.core").xxh128(file("one")), pipeline.version(p))
        local s = assert(tide.serve(p, { listen = false, log = function() end }))
        local res = assert(s.reload())
        assert.same({ false, res.previous }, { res.changed, res.version })
        proc.write(path, file("two"))
        res = assert(s.reload())
        assert.is_true(res.changed)
        assert.equal(require("tide.core").xxh128(file("two")), s.version())
        proc.write(path, "return 42\n")
        local none, rec = s.reload()
        assert.is_nil(none)
        assert.equal("ELOAD", rec.code)
        assert.matches("must return a pipeline", rec.message)
        s.close()
        s.executor:close()

        local inline = assert(tide.serve(tide.pipeline("inline"):task("t", function(x) return x end),
                                         { listen = false }))
        assert.is_nil(inline.version())
        none, rec = inline.reload()
        assert.is_nil(none)
        assert.equal("EINVAL", rec.code)
        inline.close()
        inline.executor:close()
    end)

    it("keeps no phase report unless asked; srv:phase refuses a phase it does not take", function()
        local core = require "tide.core"
        local ex = tide.executor()
        local srv = core.http_listen(ex:loop(), "127.0.0.1", 0, { phases = true }, function() end)
        local list, turns = srv:phase_report()
        assert.equal("read_parse", list[1].name)
        assert.equal(0, list[1].n)
        assert.equal(0, turns.requests)
        srv:phase(3, 0.001)
        assert.equal(1, (srv:phase_report())[3].n)
        assert.has_error(function() srv:phase(1, 0.001) end)
        assert.has_error(function() srv:phase(9, 0.001) end)
        assert.has_error(function() srv:phase(3, "soon") end)
        srv:close()
        local s = server()
        assert.is_nil(s.phases())
        s.close()
        s.executor:close()
        ex:close()
    end)
end)
