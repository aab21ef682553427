-- Specs of the result cache through the Lua API: `cache` on p:task (its
-- checks at the call), what a hit skips and returns, what keys cover
-- (the code, the input or cache.key), ttl, and the counters of
-- ex:stats(). Each executor writes a cache file of its own in a fresh
-- directory; two executors in a row stand for two runs (ex:close()
-- commits what the first one stored).
local tide = require "tide"
local proc = require "helpers.proc"

local json = tide.json
local THIS = "spec/cache_spec.lua"


-- Runs inputs through p on a new executor with the cache file `file`
-- (then closes it): returns the outputs by input index, the errors, and
-- ex:stats().
local function run(p, inputs, file, opts)
    local ex = tide.executor { cache = file, threads = opts and opts.threads or 2 }
    local ids = {}
    for i, v in ipairs(inputs) do ids[i] = ex:submit(p, v) end
    ex:run()
    local outs, errs = {}, {}
    for i, id in ipairs(ids) do
        local status, value = ex:finished(id)
        if status == "done" then outs[i] = value else errs[i] = value end
    end
    local stats = ex:stats()
    ex:close()
    return outs, errs, stats
end


-- A pipeline from source text, as a file would make it.
local function from_text(text)
    return assert(loadstring(text, "=pipeline.lua"))()
end


describe("cache on p:task", function()
    local p
    before_each(function() p = tide.pipeline "c" end)

    it("raises at the caller's line on bad values", function()
        local cases = {
            { { cache = "yes" },
              "cache must be true or a table { ttl = seconds, key = function%(input, ctx%) }, got string" },
            { { cache = 5 }, "cache must be true or a table .*, got 5" },
            { { cache = { ttl = -1 } }, "cache.ttl must be a number of seconds > 0, got %-1" },
            { { cache = { ttl = 0 } }, "cache.ttl must be a number of seconds > 0, got 0" },
            { { cache = { ttl = "60" } }, "cache.ttl must be a number of seconds > 0, got string" },
            { { cache = { key = 5 } }, "cache.key must be a function%(input, ctx%) returning the key, got 5" },
            { { cache = { tll = 5 } }, "unknown cache option 'tll' %(cache takes ttl and key%)" },
            { { cache = true, batch = { size = 2 } }, "cache cannot be combined with batch" },
        }
        for _, c in ipairs(cases) do
            local line = debug.getinfo(1, "l").currentline + 1
            local ok, err = pcall(function() p:task("a", c[1], function(x) return x end) end)
            assert.is_false(ok)
            assert.matches("^" .. THIS .. ":" .. line .. ": p:task: task 'a': " .. c[2], err)
        end
    end)

    it("takes true, false and the table form", function()
        p:task("a", { cache = true }, function(x) return x end)
        p:task("b", { cache = false, after = "a" }, function(x) return x end)
        p:task("c", { cache = { ttl = 60, key = function(x) return x end }, after = "b" }, function(x) return x end)
        assert.same({}, p.tasks[1].cache)
        assert.is_nil(p.tasks[2].cache)
        assert.equal(60, p.tasks[3].cache.ttl)
    end)

    it("tide.executor refuses a cache option that is not a file, true or false", function()
        local line = debug.getinfo(1, "l").currentline + 1
        local ok, err = pcall(function() tide.executor { cache = 5 } end)
        assert.is_false(ok)
        assert.matches("^" .. THIS .. ":" .. line .. ": tide.executor: cache must be a file name", err)
        assert.has_error(function() tide.executor { cache = "" } end)
    end)
end)


describe("the result cache", function()
    local dir, file
    before_each(function()
        dir = proc.tmpdir()
        file = dir .. "/sub/cache.db"
    end)
    after_each(function() proc.rmrf(dir) end)

    it("skips the body on a hit and returns the value as JSON keeps it", function()
        local calls = 0
        local p = tide.pipeline "values"
        p:task("make", { cache = true }, function(x)
            calls = calls + 1
            if x == 1 then return { big = 9007199254740993LL, arr = json.array {}, obj = {}, s = "é" } end
            if x == 2 then return nil end
            if x == 3 then return json.null end
            return "text " .. x
        end)
        p:task("after", { after = "make" }, function(v)
            if v == nil then return "nil" end
            return v
        end)
        local inputs = { 1, 2, 3, 4 }
        local first, errs1, s1 = run(p, inputs, file)
        assert.same({}, errs1)
        assert.equal(4, calls)
        assert.equal(0, s1.cache_hits)
        assert.equal(4, s1.cache_misses)
        local second, errs2, s2 = run(p, inputs, file)
        assert.same({}, errs2)
        assert.equal(4, calls, "a hit must not run the body")
        assert.equal(4, s2.cache_hits)
        assert.equal(0, s2.cache_misses)
        for i = 1, 4 do assert.equal(json.encode(first[i]), json.encode(second[i])) end
        assert.equal('{"arr":[],"big":9007199254740993,"obj":{},"s":"é"}', json.encode(second[1]))
        assert.equal("cdata", type(second[1].big))
        assert.equal("nil", second[2]) -- a nil output is nil again
        assert.equal(json.null, second[3])
        assert.equal("text 4", second[4])
    end)

    it("keys by the input: another input misses", function()
        local calls = 0
        local p = tide.pipeline "inputs"
        p:task("sq", { cache = true }, function(x)
            calls = calls + 1
            return x.n * x.n
        end)
        run(p, { { n = 1 }, { n = 2 } }, file)
        local outs, _, s = run(p, { { n = 2 }, { n = 3 }, { n = 1, extra = true } }, file)
        assert.same({ 4, 9, 1 }, outs)
        assert.equal(1, s.cache_hits)
        assert.equal(2, s.cache_misses)
        assert.equal(4, calls)
    end)

    it("uses cache.key instead of the input; nil means not cached", function()
        local calls = 0
        local seen_ctx
        local p = tide.pipeline "keyed"
        p:task("fetch", { cache = { key = function(x, ctx)
            seen_ctx = ctx
            if x.url == "skip" then return nil end
            return x.url
        end } }, function(x)
            calls = calls + 1
            return x.url .. "@" .. x.at
        end)
        run(p, { { url = "a", at = 1 }, { url = "skip", at = 1 } }, file)
        assert.equal("fetch", seen_ctx.task)
        assert.equal(1, seen_ctx.attempt)
        local outs, _, s = run(p, { { url = "a", at = 2 }, { url = "skip", at = 2 } }, file)
        -- Same key, other input: the stored output.
        assert.same({ "a@1", "skip@2" }, outs)
        assert.equal(1, s.cache_hits)
        assert.equal(0, s.cache_misses) -- the nil key was not looked up
        assert.equal(3, calls)
    end)

    it("fails the attempt when cache.key raises or returns what JSON cannot carry", function()
        local p = tide.pipeline "badkey"
        p:task("a", { cache = { key = function(x)
            if x == 1 then error("no key for you") end
            return function() end
        end } }, function(x) return x end)
        local _, errs = run(p, { 1, 2 }, file)
        assert.equal("ETASK", errs[1].code)
        assert.matches("cache.key: .*no key for you", errs[1].message)
        assert.equal("EVALUE", errs[2].code)
        assert.matches("cache.key of task 'a' returned a value JSON cannot carry: a function", errs[2].message)
    end)

    it("expires entries older than ttl", function()
        local calls = 0
        local p = tide.pipeline "ttl"
        p:task("a", { cache = { ttl = 0.3 } }, function(x)
            calls = calls + 1
            return x
        end)
        run(p, { 1 }, file)
        local _, _, s = run(p, { 1 }, file)
        assert.equal(1, s.cache_hits)
        os.execute("sleep 0.5")
        _, _, s = run(p, { 1 }, file)
        assert.equal(0, s.cache_hits)
        assert.equal(1, s.cache_misses)
        assert.equal(2, calls)
        -- The new entry replaced the expired one.
        _, _, s = run(p, { 1 }, file)
        assert.equal(1, s.cache_hits)
    end)

    it("keys by the code: an edited body or helper misses, comments and moved lines do not", function()
        local base = [[
            local tide = require "tide"
            local RATE = 2
            local function helper(x) return x * RATE end
            local p = tide.pipeline "code"
            p:task("a", { cache = true }, function(x) return helper(x) + 1 end)
            return p
        ]]
        local function hits(text)
            local _, _, s = run(from_text(text), { 5 }, file)
            return s.cache_hits
        end
        assert.equal(0, hits(base))
        assert.equal(1, hits(base))
        assert.equal(1, hits("-- a comment\n\n" .. base:gsub("return helper", "\n\n  return helper")))
        assert.equal(0, hits((base:gsub("%+ 1 end", "+ 2 end"))))
        assert.equal(0, hits((base:gsub("return x %* RATE", "return x * RATE * 1"))))
        assert.equal(0, hits((base:gsub("RATE = 2", "RATE = 3"))))
        -- Another task name is another task.
        assert.equal(0, hits((base:gsub('p:task%("a"', 'p:task("b"'))))
    end)

    it("does not store failed attempts", function()
        local calls = 0
        local p = tide.pipeline "fails"
        p:task("a", { cache = true, retry = 1 }, function(x)
            calls = calls + 1
            if calls == 1 then error("first attempt fails") end
            return x
        end)
        local outs, _, s = run(p, { 7 }, file)
        assert.same({ 7 }, outs)
        assert.equal(0, s.cache_hits)
        assert.equal(2, s.cache_misses) -- each attempt asks
        outs, _, s = run(p, { 7 }, file)
        assert.same({ 7 }, outs)
        assert.equal(1, s.cache_hits)
        assert.equal(2, calls)
    end)

    it("replays maps and routers from the stored output", function()
        local calls = 0
        local p = tide.pipeline "flow"
        p:task("split", { cache = true, map = true }, function(n)
            calls = calls + 1
            local t = {}
            for i = 1, n do t[i] = i end
            return t
        end)
        p:task("sq", { after = "split" }, function(x) return x * x end)
        p:task("sum", { after = "sq", gather = true }, function(xs)
            local s = 0
            for _, v in ipairs(xs) do s = s + v end
            return s
        end)
        p:task("route", { after = "sum", route = true, cache = true }, function(s)
            calls = calls + 1
            return s > 10 and "big" or "small"
        end)
        p:task("big", { after = "route" }, function(s) return "big " .. s end)
        p:task("small", { after = "route" }, function(s) return "small " .. s end)
        local first = run(p, { 2, 3 }, file)
        local second, _, s = run(p, { 2, 3 }, file)
        assert.equal(4, calls)
        assert.equal(4, s.cache_hits)
        assert.same(first, second)
        assert.same({ "small 5", "big 14" }, second)
    end)

    it("answers sync tasks on the loop: a hit ships nothing to a worker", function()
        local p = tide.pipeline "sync"
        p:task("a", { kind = "sync", cache = true }, function(x) return { x = x, sq = x * x } end)
        local first, _, s1 = run(p, { 1, 2, 3 }, file)
        assert.is_true(s1.workers > 0)
        local second, _, s2 = run(p, { 1, 2, 3 }, file)
        assert.same(first, second)
        assert.equal(3, s2.cache_hits)
        assert.equal(0, s2.workers, "no worker thread was started")
    end)

    it("keys native tasks by their library's bytes, not its path", function()
        -- The example library (built by make), relative to this file.
        local lib = "../examples/native/libdedup.so"
        local bytes = assert(proc.slurp("examples/native/libdedup.so"))
        local function native(path)
            local p = tide.pipeline "native"
            p:task("key", { kind = "native", native = path .. ":dedup_key", cache = true })
            return p
        end
        local inputs = { { a = 1 }, { b = 2 } }
        local first, errs, s1 = run(native(lib), inputs, file)
        assert.same({}, errs)
        assert.equal(2, s1.cache_misses)
        proc.write(dir .. "/moved.so", bytes)
        local second, _, s2 = run(native(dir .. "/moved.so"), inputs, file)
        assert.same(first, second)
        assert.equal(2, s2.cache_hits)
        assert.equal(0, s2.workers)
        -- A rebuilt library (other bytes) misses.
        proc.write(dir .. "/rebuilt.so", bytes .. "\0")
        local _, _, s3 = run(native(dir .. "/rebuilt.so"), inputs, file)
        assert.equal(0, s3.cache_hits)
        assert.equal(2, s3.cache_misses)
    end)

    it("runs without a file with cache = false, and tide.run takes cache", function()
        local calls = 0
        local p = tide.pipeline "off"
        p:task("a", { cache = true }, function(x)
            calls = calls + 1
            return x
        end)
        local _, _, s = run(p, { 1 }, false)
        assert.equal(0, s.cache_hits + s.cache_misses)
        assert.is_nil(proc.slurp(file))
        local outs = tide.run(p, { 1, 2 }, { cache = file })
        assert.same({ 1, 2 }, outs)
        outs = tide.run(p, { 1, 2 }, { cache = file })
        assert.same({ 1, 2 }, outs)
        assert.equal(3, calls)
    end)

    it("runs the tasks without the cache when the file is not a cache", function()
        proc.write(dir .. "/bad.db", ("not a database "):rep(400))
        local calls = 0
        local p = tide.pipeline "corrupt"
        p:task("a", { cache = true }, function(x)
            calls = calls + 1
            return x + 1
        end)
        for _ = 1, 2 do
            local outs, errs = run(p, { 1, 2 }, dir .. "/bad.db")
            assert.same({ 2, 3 }, outs)
            assert.same({}, errs)
        end
        assert.equal(4, calls)
        assert.equal(("not a database "):rep(400), proc.slurp(dir .. "/bad.db"), "the file was left alone")
    end)
end)


describe("the result cache with events, checkpoints and setup", function()
    local dir, file
    before_each(function()
        dir = proc.tmpdir()
        file = dir .. "/cache.db"
    end)
    after_each(function() proc.rmrf(dir) end)

    -- Runs input 5 through p on a new executor with hooks on task_start,
    -- task_end and checkpoint, and `restore`; returns the output, what the
    -- hooks saw (one line per call) and ex:stats().
    local function observed(p, restore)
        local seen = {}
        local ex = tide.executor { cache = file, on = {
            task_start = function(_, task, attempt) seen[#seen + 1] = "start " .. task .. " " .. attempt end,
            task_end = function(_, task, _, out, rec, _, from)
                seen[#seen + 1] = "end " .. task .. " " .. (rec and rec.code or json.encode(out))
                    .. " " .. tostring(from)
            end,
            checkpoint = function(_, task, out) seen[#seen + 1] = "checkpoint " .. task .. " " .. json.encode(out) end,
        } }
        local id = ex:submit(p, 5, { restore = restore })
        local out = ex:result(id, 10)
        local stats = ex:stats()
        ex:close()
        return out, seen, stats
    end

    it("fires task_start and task_end for a hit, from = 'cache', and checkpoints its output", function()
        local calls = 0
        local p = tide.pipeline "hooked"
        p:task("a", { cache = true, checkpoint = true }, function(x)
            calls = calls + 1
            return { v = x * 2 }
        end)
        p:task("b", { after = "a" }, function(t) return t.v + 1 end)
        local out, seen = observed(p)
        assert.equal(11, out)
        assert.same({ "start a 1", 'end a {"v":10} nil', 'checkpoint a {"v":10}', "start b 1", "end b 11 nil" },
                    seen)
        local out2, seen2, s = observed(p)
        assert.equal(11, out2)
        assert.equal(1, calls)
        assert.equal(1, s.cache_hits)
        assert.same({ "start a 1", 'end a {"v":10} cache', 'checkpoint a {"v":10}', "start b 1", "end b 11 nil" },
                    seen2)
    end)

    it("gives a restored checkpoint before asking the cache: neither looked up nor stored", function()
        local calls = 0
        local p = tide.pipeline "restored"
        p:task("a", { cache = true, checkpoint = true }, function(x)
            calls = calls + 1
            return x * 3
        end)
        p:task("b", { after = "a" }, function(v) return v + 1 end)
        local out, seen, s = observed(p, { a = 100 })
        assert.equal(101, out)
        assert.equal(0, calls)
        assert.equal(0, s.cache_hits + s.cache_misses)
        assert.same({ "start a 1", "end a 100 restore", "checkpoint a 100", "start b 1", "end b 101 nil" }, seen)
        -- Nothing was stored: the next run without restore runs the body.
        local out2, _, s2 = observed(p)
        assert.equal(16, out2)
        assert.equal(1, calls)
        assert.equal(1, s2.cache_misses)
    end)

    it("reads the upvalues for keys after p:setup ran", function()
        local text = [[
            local tide = require "tide"
            local VERSION
            local p = tide.pipeline "setup-key"
            p:setup(function() VERSION = "V" end)
            p:task("a", { cache = true }, function(x) return VERSION .. x end)
            return p
        ]]
        local function stats(t)
            local _, _, s = run(from_text(t), { 1 }, file)
            return s
        end
        assert.equal(1, stats(text).cache_misses)
        assert.equal(1, stats(text).cache_hits)
        -- Another value set by the setup is another key.
        local s = stats((text:gsub('VERSION = "V"', 'VERSION = "W"')))
        assert.equal(0, s.cache_hits)
        assert.equal(1, s.cache_misses)
    end)
end)
