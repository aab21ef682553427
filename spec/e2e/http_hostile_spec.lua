-- Hostile and odd HTTP clients against a real `tide serve`: raw bytes over
-- a socket (spec/helpers/rawhttp.lua), one answer per request, JSON error
-- bodies, and after every case the server still answers /healthz.
local server = require "helpers.serve"
local raw = require "helpers.rawhttp"
local proc = require "helpers.proc"
local json = require("tide.core").json

local q = proc.shquote
-- The version every job of the serve fixture runs: the hash of its text
-- (docs/http.md#hot-reload).
local V = require("tide.core").xxh128(proc.slurp("spec/fixtures/pipelines/serve.lua"))

-- The error record of a JSON error body (fails when the body is not one).
local function err_of(r)
    local v = json.decode(r.body)
    assert(type(v) == "table" and type(v.error) == "table", "not a JSON error body: " .. r.body)
    return v.error
end

local function healthy(s)
    local r = raw.get(s.port, "/healthz")
    assert(r, "the server stopped answering /healthz")
    assert.equal(200, r.status)
end

local SLOW = '{"input":{"n":1,"sleep":0.4}}'

describe("tide serve against hostile clients", function()
    local s
    setup(function() s = server.start("--request-timeout 2") end)
    teardown(function() server.stop(s) end)
    after_each(function() healthy(s) end)

    it("answers a malformed request pipelined behind a good one once, then closes", function()
        local c = raw.connect(s.port)
        c:send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nBLAH BLAH\r\n\r\n")
        assert.equal(200, c:response().status)
        local r = c:response()
        assert.equal(400, r.status)
        assert.equal("EHTTP", err_of(r).code)
        assert.equal("close", r.headers["connection"])
        assert.is_true(c:closes()) -- no second 400
        -- Two malformed requests in one packet: one answer.
        c = raw.connect(s.port)
        c:send("BAD\r\n\r\nBAD\r\n\r\n")
        assert.equal(400, c:response().status)
        assert.is_true(c:closes())
    end)

    it("never lets trailer fields change the request's headers", function()
        local function chunked(ctype, trailer)
            return "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " .. ctype
                .. "\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{\"input\":1}\r\n0\r\n" .. trailer .. "\r\n"
        end
        -- A trailer Content-Type does not turn a 415 into a 201.
        local r = raw.request(s.port, chunked("text/plain", "Content-Type: application/json\r\n"))
        assert.equal(415, r.status)
        -- Trailers pass the header pre-scan: obs-fold, bare LF and space
        -- before a colon are refused there too.
        r = raw.request(s.port, chunked("application/json", "X-A: b\r\n folded\r\n"))
        assert.equal(400, r.status)
        assert.matches("obsolete line folding in the trailer section", err_of(r).message)
        r = raw.request(s.port, chunked("application/json", "X-A: b\n"))
        assert.equal(400, r.status)
        r = raw.request(s.port, chunked("application/json", "X-A : b\r\n"))
        assert.equal(400, r.status)
        -- Well-formed trailers are read and ignored; none at all is fine.
        assert.equal(201, raw.request(s.port, chunked("application/json", "X-Sum: 1\r\n")).status)
        assert.equal(201, raw.request(s.port, chunked("application/json", "")).status)
        -- A trailer section split across packets is checked once whole.
        local c = raw.connect(s.port)
        c:send(chunked("application/json", ""):sub(1, -3))
        os.execute("sleep 0.1")
        c:send("\r\n")
        assert.equal(201, c:response().status)
        c:close()
    end)

    it("checks the header block behind empty lines before the request line", function()
        local r = raw.request(s.port, "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n folded: y\r\n\r\n")
        assert.equal(400, r.status)
        assert.matches("obsolete line folding in the header block", err_of(r).message)
        assert.equal(200, raw.request(s.port, "\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status)
    end)

    it("reads back an id with a colon (the request line is no header)", function()
        assert.equal(201, raw.post(s.port, "/v1/jobs", '{"id":"order:7","input":1}').status)
        local r = raw.get(s.port, "/v1/jobs/order:7/result?wait=5")
        assert.equal(200, r.status)
        assert.equal(2, json.decode(r.body).output)
    end)

    it("answers a client that half-closes after POST ?wait, then closes", function()
        local c = raw.connect(s.port)
        c:send(raw.post_bytes("/v1/jobs?wait=5", SLOW))
        c:shutdown()
        local r = c:response()
        assert.is_truthy(r, "no answer after a half-close")
        assert.equal(200, r.status)
        assert.same({ id = json.decode(r.body).id, status = "done", output = 2, version = V }, json.decode(r.body))
        assert.equal("close", r.headers["connection"])
        assert.is_true(c:closes())
        -- Two requests pipelined before the half-close: both answered.
        c = raw.connect(s.port)
        c:send(raw.post_bytes("/v1/jobs?wait=5", SLOW) .. "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        c:shutdown()
        assert.equal(200, c:response().status)
        assert.equal(200, c:response().status)
        assert.is_true(c:closes())
        -- A half-close in the middle of a request: no answer, closed.
        c = raw.connect(s.port)
        c:send("GET /healthz HTTP/1.1\r\nHo")
        c:shutdown()
        assert.is_true(c:closes())
    end)

    it("answers an id that is not UTF-8 with a JSON error body", function()
        local r = raw.get(s.port, "/v1/jobs/%ff")
        assert.equal(404, r.status)
        local e = err_of(r)
        assert.equal("ENOENT", e.code)
        assert.equal("no job with id '\\xFF'", e.message)
        r = raw.get(s.port, "/v1/jobs/%ff%fe/result")
        assert.equal(404, r.status)
        assert.equal("ENOENT", err_of(r).code)
    end)

    it("bounds job ids at 512 bytes", function()
        local long = string.rep("i", 20000)
        local r = raw.post(s.port, "/v1/jobs", '{"id":"' .. long .. '","input":1}')
        assert.equal(400, r.status)
        assert.equal("id must be at most 512 bytes, got 20000", err_of(r).message)
        r = raw.get(s.port, "/v1/jobs/" .. string.rep("i", 513))
        assert.equal(400, r.status)
        assert.equal("job ids are at most 512 bytes, got 513", err_of(r).message)
        -- 512 bytes is fine and reachable, with a colon in it too.
        local id = "a:b" .. string.rep("x", 509)
        assert.equal(201, raw.post(s.port, "/v1/jobs", '{"id":"' .. id .. '","input":1}').status)
        r = raw.get(s.port, "/v1/jobs/" .. id .. "/result?wait=5")
        assert.equal(200, r.status)
        assert.equal(2, json.decode(r.body).output)
    end)

    it("answers HTTP versions other than 1.x with 505", function()
        for _, v in ipairs({ "HTTP/9.9", "HTTP/2.0", "HTTP/0.9" }) do
            local r = raw.request(s.port, "GET /healthz " .. v .. "\r\nHost: 127.0.0.1\r\n\r\n")
            assert.equal(505, r.status, v)
            assert.equal("EHTTP", err_of(r).code)
        end
        assert.equal(200, raw.request(s.port, "GET /healthz HTTP/1.0\r\n\r\n").status)
    end)

    it("serves only loopback Host names without a token", function()
        local function status(headers, path)
            return raw.request(s.port, "GET " .. (path or "/v1/stats") .. " HTTP/1.1\r\n" .. headers .. "\r\n").status
        end
        for _, host in ipairs({ "localhost", "localhost:" .. s.port, "127.0.0.1", "127.0.0.1:" .. s.port,
                                "[::1]", "[::1]:" .. s.port, "LocalHost" }) do
            assert.equal(200, status("Host: " .. host .. "\r\n"), host)
        end
        for _, host in ipairs({ "evil.example", "evil.example:" .. s.port, "localhost.evil.example",
                                "127.0.0.1.nip.io", "127.0.0.1:80:80" }) do
            assert.equal(403, status("Host: " .. host .. "\r\n"), host)
        end
        assert.equal(403, status("")) -- no Host at all
        -- A page from elsewhere (its Origin) is refused even with a good Host.
        assert.equal(403, status("Host: 127.0.0.1\r\nOrigin: http://evil.example\r\n"))
        assert.equal(200, status("Host: 127.0.0.1\r\nOrigin: http://127.0.0.1:" .. s.port .. "\r\n"))
        local r = raw.request(s.port, (raw.post_bytes("/v1/jobs", '{"id":"rebound","input":1}')
            :gsub("Host: 127.0.0.1", "Host: evil.example")))
        assert.equal(403, r.status)
        assert.equal("EPERM", err_of(r).code)
        assert.matches("Host 'evil.example' is not allowed", err_of(r).message)
        assert.equal(404, raw.get(s.port, "/v1/jobs/rebound").status) -- nothing submitted
        -- /healthz stays open.
        assert.equal(200, status("Host: evil.example\r\n", "/healthz"))
    end)
end)

describe("tide serve --allow-host", function()
    it("adds host names to the loopback ones", function()
        local s = server.start("--allow-host tide.internal --allow-host Other.Example")
        finally(function() server.stop(s) end)
        local function status(host)
            return raw.request(s.port, "GET /v1/stats HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n").status
        end
        assert.equal(200, status("tide.internal:8080"))
        assert.equal(200, status("other.example"))
        assert.equal(200, status("localhost"))
        assert.equal(403, status("evil.example"))
        healthy(s)
    end)
end)

describe("tide serve with a token, against hostile clients", function()
    it("takes the Bearer scheme in any case, and any Host", function()
        local tok = os.tmpname()
        finally(function() os.remove(tok) end)
        proc.write(tok, "s3cret\n")
        local s = server.start("--token-file " .. q(tok))
        finally(function() server.stop(s) end)
        for _, scheme in ipairs({ "Bearer", "bearer", "BEARER", "bEaReR" }) do
            local r = raw.get(s.port, "/v1/stats", "Authorization: " .. scheme .. " s3cret\r\n")
            assert.equal(200, r.status, scheme)
        end
        assert.equal(401, raw.get(s.port, "/v1/stats", "Authorization: Basic s3cret\r\n").status)
        assert.equal(401, raw.get(s.port, "/v1/stats", "Authorization: Bearers3cret\r\n").status)
        -- With a token the Host is not checked: the token is the guard.
        local r = raw.request(s.port, "GET /v1/stats HTTP/1.1\r\nHost: tide.example\r\n"
            .. "Authorization: bearer s3cret\r\n\r\n")
        assert.equal(200, r.status)
        healthy(s)
    end)
end)
