-- Specs of what replay stands on, in one process: failure records carry
-- their job's input (ex:result, ex:finished, the result record), and the
-- tracer turns lifecycle events into one line per event for the ids it
-- traces only.
local tide = require "tide"
local trace = require "tide.trace"
local record = require "tide.record"
local json = tide.json


local function refusing(name)
    local p = tide.pipeline(name)
    p:task("double", function(x) return { n = x.n * 2 } end)
    p:task("check", { after = "double" }, function(x)
        if x.n > 4 then error("too big: " .. x.n) end
        return x.n
    end)
    return p
end


describe("a failure record", function()
    it("carries the job's input in ex:result and ex:finished", function()
        local ex = tide.executor()
        local p = refusing "r1"
        local input = { n = 3, note = "kept" }
        ex:submit(p, input, { id = "big" })
        ex:submit(p, { n = 1 }, { id = "small" })
        ex:run()
        local out, rec = ex:result("big")
        assert.is_nil(out)
        assert.equal("ETASK", rec.code)
        assert.equal("check", rec.task)
        assert.equal(input, rec.input) -- the very table submitted
        local status, value = ex:finished("big")
        assert.equal("failed", status)
        assert.equal(input, value.input)
        assert.equal(2, (ex:result("small")))
        ex:close()
    end)

    it("gives the input to the result record as JSON", function()
        local ex = tide.executor()
        ex:submit(refusing "r2", { n = 5 }, { id = "x" })
        ex:run()
        local status, value = ex:finished("x")
        local r = json.decode(record.encode("x", status, value, false))
        assert.equal("failed", r.status)
        assert.same({ n = 5 }, r.input)
        assert.equal("check", r.error.task)
        assert.is_nil(r.error.input) -- the input is beside the error, not in it
        ex:close()
    end)

    it("is copied, not changed, when a job fails with the record of another job", function()
        local ex = tide.executor()
        local p = refusing "r3"
        local q = tide.pipeline "waiter"
        q:task("wait", function()
            local _, rec = ex:result("first")
            return nil, rec
        end)
        ex:submit(p, { n = 9 }, { id = "first" })
        ex:submit(q, "second input", { id = "second" })
        ex:run()
        local _, r1 = ex:result("first")
        local _, r2 = ex:result("second")
        assert.same({ n = 9 }, r1.input)
        assert.equal("second input", r2.input)
        ex:close()
    end)
end)


describe("the tracer", function()
    local function traced(fmt, ids)
        local lines = {}
        local ex = tide.executor()
        local t = trace.new({ format = fmt, ids = ids, write = function(s) lines[#lines + 1] = s end })
        t:attach(ex)
        local p = refusing "traced"
        ex:submit(p, { n = 5 }, { id = "bad" })
        ex:submit(p, { n = 1 }, { id = "good" })
        ex:run()
        t:detach()
        ex:close()
        return lines
    end

    it("writes one JSON line per event of the traced ids only", function()
        local lines = traced("jsonl", { "bad" })
        local ev = {}
        for i, l in ipairs(lines) do
            assert.equal("\n", l:sub(-1))
            ev[i] = json.decode(l)
            assert.equal("bad", ev[i].id)
            assert.is_number(ev[i].at_ms)
        end
        assert.same({ "context_start", "task_start", "task_end", "task_start", "task_end", "context_end" },
                    { ev[1].event, ev[2].event, ev[3].event, ev[4].event, ev[5].event, ev[6].event })
        assert.same({ n = 5 }, ev[1].input)
        assert.equal("double", ev[2].task)
        assert.equal(1, ev[2].attempt)
        assert.same({ n = 5 }, ev[2].input)
        assert.equal("done", ev[3].status)
        assert.same({ n = 10 }, ev[3].output)
        assert.is_true(ev[3].ms >= 0)
        assert.same({ n = 10 }, ev[4].input)
        assert.equal("failed", ev[5].status)
        assert.equal("ETASK", ev[5].error.code)
        assert.equal("check", ev[5].error.task)
        assert.matches("too big: 10", ev[5].error.message)
        assert.equal("failed", ev[6].status)
        assert.equal("check", ev[6].error.task)
        assert.is_true(ev[6].ms >= ev[5].at_ms - 0.001)
    end)

    it("writes readable text lines", function()
        local lines = traced("text", { "bad" })
        local text = table.concat(lines)
        assert.matches("%[bad %+0%.000 ms%] context start, input {\"n\":5}\n", text)
        assert.matches("%] double #1 start, input {\"n\":5}\n", text)
        assert.matches("%] double #1 done in [%d.]+ ms, output {\"n\":10}\n", text)
        assert.matches("%] check #1 failed in [%d.]+ ms: ETASK check: [^\n]*too big: 10\n", text)
        assert.matches("%] context failed in [%d.]+ ms: ETASK check: ", text)
        assert.not_matches("good", text)
    end)

    it("writes nothing once detached, and refuses a second attach and a bad format", function()
        local ex = tide.executor()
        local n = 0
        local t = trace.new({ format = "jsonl", ids = { "x", "y" }, write = function() n = n + 1 end }):attach(ex)
        assert.has_error(function() t:attach(ex) end, "tracer:attach: already attached")
        local p = refusing "detached"
        ex:submit(p, { n = 1 }, { id = "x" })
        ex:run()
        assert.equal(6, n) -- context start and end, and the start and end of its two tasks
        t:detach()
        ex:submit(p, { n = 1 }, { id = "y" })
        ex:run()
        assert.equal(6, n)
        assert.has_error(function() trace.new({ format = "xml", write = print }) end,
                         'trace.new: opts.format must be "text" or "jsonl"')
        ex:close()
    end)
end)


describe("replay.read_nth", function()
    local replay = require "tide.replay"

    it("reads the N-th non-blank line only, and says what is wrong with N or the line", function()
        local path = os.tmpname()
        local f = assert(io.open(path, "w"))
        f:write('{"id":"a","error":{"code":"ETASK"},"input":1}\n\n',
                '{"id":7,"error":{"code":"ETASK"},"input":null}\n', 'not json\n')
        f:close()
        local r = assert(replay.read_nth(path, 2))
        assert.same({ "7", nil, 3 }, { r.id, r.input, r.line })
        assert.equal("a", replay.read_nth(path, 1).id)
        local _, err, code = replay.read_nth(path, 3)
        assert.matches(":4: not JSON", err, 1, true)
        assert.equal(replay.EXIT_USAGE, code)
        _, err, code = replay.read_nth(path, 4)
        assert.matches("#4 is out of range: the file has 3 non-blank lines", err, 1, true)
        assert.equal(replay.EXIT_USAGE, code)
        _, err = replay.read_nth(path, 0)
        assert.matches("must be a whole number >= 1", err, 1, true)
        _, err, code = replay.read_nth(path .. ".missing", 1)
        assert.equal(replay.EXIT_USAGE, code)
        assert.matches("No such file", err, 1, true)
        _, err, code = replay.read_nth("/", 1)
        assert.equal(replay.EXIT_IO, code)
        assert.matches("Is a directory", err, 1, true)
        os.remove(path)
    end)
end)
