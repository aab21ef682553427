-- Hostile and odd HTTP clients against a real `tide serve`: raw bytes over
-- a socket (spec/helpers/rawhttp.lua), one answer per request, JSON error
-- bodies, and after every case the server still answers /healthz.
local server = require "helpers.serve"
local raw = require "helpers.rawhttp"
local json = require("tide.core").json

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
        assert.same({ id = json.decode(r.body).id, status = "done", output = 2 }, json.decode(r.body))
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

    it("answers HTTP versions other than 1.x with 505", function()
        for _, v in ipairs({ "HTTP/9.9", "HTTP/2.0", "HTTP/0.9" }) do
            local r = raw.request(s.port, "GET /healthz " .. v .. "\r\nHost: 127.0.0.1\r\n\r\n")
            assert.equal(505, r.status, v)
            assert.equal("EHTTP", err_of(r).code)
        end
        assert.equal(200, raw.request(s.port, "GET /healthz HTTP/1.0\r\n\r\n").status)
    end)
end)
