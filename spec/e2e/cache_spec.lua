--- End-to-end specs of the result cache: `tide run` processes one after
-- the other on the same --cache file (a body's side effects are counted
-- in a file: a hit must not run it), ttl, a pipeline file edited between
-- runs, the default file under XDG_CACHE_HOME or HOME, the counts in the
-- summary line and in serve's /metrics, `tide cache stats|clear`, a
-- corrupt cache file, a --cache that cannot be a file, bad options, and
-- a journaled run killed with -9 and resumed with its cache.
local proc = require "helpers.proc"
local server = require "helpers.serve"
local core = require "tide.core"

local json = core.json
local tide = proc.tide

-- The pipeline every test starts from: `sq` is cached and notes each run
-- of its body in $COUNTS; `fmt` is not cached. OPTS is replaced by the
-- test's cache option.
local PIPELINE = [[
local tide = require "tide"
local p = tide.pipeline "sq"
p:task("sq", { cache = OPTS }, function(x)
    local f = assert(io.open(os.getenv("COUNTS"), "a"))
    f:write(x.n, "\n")
    f:close()
    return { n = x.n, sq = x.n * x.n, big = 9007199254740993LL * x.n, none = {}, list = tide.json.array {} }
end)
p:task("fmt", { after = "sq" }, function(r) return r end)
return p
]]


-- The pipeline's text with `opts` as the cached task's cache option.
local function with_opts(opts)
    return (PIPELINE:gsub("OPTS", function() return opts end))
end


local function inputs(from, to)
    local t = {}
    for i = from, to do t[#t + 1] = '{"n":' .. i .. '}' end
    return table.concat(t, "\n") .. "\n"
end


-- stdout's result lines, sorted (results come in the order they end).
local function sorted_lines(text)
    local t = proc.lines(text)
    table.sort(t)
    return t
end


describe("tide run with cached tasks", function()
    local dir, pipe, counts, cfile
    before_each(function()
        dir = proc.tmpdir()
        pipe, counts, cfile = dir .. "/p.lua", dir .. "/counts", dir .. "/cache.db"
        proc.write(pipe, with_opts("true"))
    end)
    after_each(function() proc.rmrf(dir) end)

    -- Runs the pipeline on `input` with `args` added; returns the result
    -- and how many times the cached body ran so far in all.
    local function run(input, args, env)
        local a = { "run", pipe }
        for _, v in ipairs(args or { "--cache", cfile }) do a[#a + 1] = v end
        local e = { COUNTS = counts }
        for k, v in pairs(env or {}) do e[k] = v end
        local r = tide(a, input, e)
        return r, #proc.lines(proc.slurp(counts) or "")
    end

    it("skips the body on a hit in the next process, with the same results", function()
        local r1, n1 = run(inputs(1, 50))
        assert.equal(0, r1.code, r1.stderr)
        assert.equal(50, n1)
        assert.matches("cache 0 hits, 50 misses", r1.stderr, 1, true)
        local r2, n2 = run(inputs(1, 50))
        assert.equal(0, r2.code, r2.stderr)
        assert.equal(50, n2, "a hit ran the body")
        assert.matches("cache 50 hits, 0 misses", r2.stderr, 1, true)
        assert.same(sorted_lines(r1.stdout), sorted_lines(r2.stdout))
        -- 64-bit integers and {} against [] come back as they were.
        assert.matches('{"id":"2","status":"done","output":{"big":18014398509481986,"list":[],"n":2,'
                       .. '"none":{},"sq":4}}', r2.stdout, 1, true)
        -- New inputs miss, known ones hit.
        local r3, n3 = run(inputs(45, 55))
        assert.matches("cache 6 hits, 5 misses", r3.stderr, 1, true)
        assert.equal(55, n3)
    end)

    it("runs the body again once an entry is older than ttl", function()
        proc.write(pipe, with_opts("{ ttl = 1 }"))
        run(inputs(1, 3))
        local r, n = run(inputs(1, 3))
        assert.matches("cache 3 hits, 0 misses", r.stderr, 1, true)
        assert.equal(3, n)
        os.execute("sleep 1.3")
        r, n = run(inputs(1, 3))
        assert.matches("cache 0 hits, 3 misses", r.stderr, 1, true)
        assert.equal(6, n)
        -- The new entries replaced the old ones.
        r, n = run(inputs(1, 3))
        assert.matches("cache 3 hits, 0 misses", r.stderr, 1, true)
        assert.equal(6, n)
    end)

    it("misses when the task's body is edited, not when comments or lines move", function()
        run(inputs(1, 4))
        proc.write(pipe, "-- a comment on top\n\n" .. with_opts("true"):gsub("f:close%(%)", "\n\n    f:close()"))
        local r, n = run(inputs(1, 4))
        assert.matches("cache 4 hits, 0 misses", r.stderr, 1, true)
        assert.equal(4, n)
        proc.write(pipe, (with_opts("true"):gsub("sq = x.n %* x.n", "sq = x.n * x.n + 1")))
        r, n = run(inputs(1, 4))
        assert.matches("cache 0 hits, 4 misses", r.stderr, 1, true)
        assert.equal(8, n)
        assert.matches('"sq":17', r.stdout, 1, true)
    end)

    it("keys by what cache.key returns", function()
        proc.write(pipe, with_opts("{ key = function(x) return x.n % 3 end }"))
        local _, n = run(inputs(1, 3))
        assert.equal(3, n)
        local r
        r, n = run(inputs(4, 6)) -- the same keys: 1, 2, 0
        assert.matches("cache 3 hits, 0 misses", r.stderr, 1, true)
        assert.equal(3, n)
        assert.matches('"output":{"big":9007199254740993,"list":[],"n":1,"none":{},"sq":1}', r.stdout, 1, true)
    end)

    it("caches sync tasks, asked on the loop before a worker gets them", function()
        proc.write(pipe, with_opts('true, kind = "sync"'))
        local r, n = run(inputs(1, 20))
        assert.equal(0, r.code, r.stderr)
        assert.equal(20, n)
        r, n = run(inputs(1, 20))
        assert.equal(0, r.code, r.stderr)
        assert.matches("cache 20 hits, 0 misses", r.stderr, 1, true)
        assert.equal(20, n)
    end)

    it("uses $XDG_CACHE_HOME/tide/cache.db, else ~/.cache/tide/cache.db, only for tasks with cache", function()
        local env = { XDG_CACHE_HOME = dir .. "/xdg", HOME = dir .. "/home" }
        run(inputs(1, 2), {}, env)
        assert.is_truthy(core.stat(dir .. "/xdg/tide/cache.db"))
        local r = run(inputs(1, 2), {}, env)
        assert.matches("cache 2 hits, 0 misses", r.stderr, 1, true)
        -- A relative XDG_CACHE_HOME is not used (the XDG rule).
        env.XDG_CACHE_HOME = "relative"
        run(inputs(1, 2), {}, env)
        assert.is_truthy(core.stat(dir .. "/home/.cache/tide/cache.db"))
        -- A pipeline without cache never makes the file.
        proc.write(pipe, with_opts("false"))
        r = run(inputs(1, 2), {}, { XDG_CACHE_HOME = dir .. "/other" })
        assert.equal(0, r.code, r.stderr)
        assert.is_nil(core.stat(dir .. "/other"))
        assert.not_matches("cache", r.stderr)
    end)

    it("tide cache stats and clear --older-than report and remove by age", function()
        local r = tide({ "cache", "stats", "--cache", cfile })
        assert.equal(0, r.code, r.stderr)
        assert.matches("entries: 0 (no file yet)", r.stdout, 1, true)
        run(inputs(1, 3))
        -- Entries 1-3 are then 3 s old, 4-5 younger than the 2 s cut even
        -- when the three runs and the stats between take a loaded second.
        os.execute("sleep 3")
        run(inputs(4, 5))
        run(inputs(1, 5)) -- five hits recorded
        r = tide({ "cache", "stats", "--cache", cfile })
        assert.equal(0, r.code, r.stderr)
        assert.matches("cache: " .. cfile, r.stdout, 1, true)
        assert.matches("\nentries: 5\n", r.stdout, 1, true)
        assert.matches("\nbytes: %d+ %(keys and values; %d+ on disk%)\n", r.stdout)
        assert.matches("\noldest: %d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d UTC %(%d+ s ago%)\n", r.stdout)
        assert.matches("\nnewest: .* %(%d+ s ago%)\n", r.stdout)
        assert.matches("\nhits recorded: 5\n", r.stdout, 1, true)
        r = tide({ "cache", "clear", "--cache", cfile, "--older-than", "2" })
        assert.equal(0, r.code, r.stderr)
        assert.matches("removed 3 entries, 2 left", r.stdout, 1, true)
        local n
        r, n = run(inputs(1, 5))
        assert.matches("cache 2 hits, 3 misses", r.stderr, 1, true)
        assert.equal(8, n)
        r = tide({ "cache", "clear", "--cache", cfile })
        assert.matches("removed 5 entries, 0 left", r.stdout, 1, true)
        r = run(inputs(1, 5))
        assert.matches("cache 0 hits, 5 misses", r.stderr, 1, true)
    end)

    it("tide cache refuses bad arguments (2) and files that are not caches (3)", function()
        local cases = {
            { { "cache" }, 2, "cache needs stats or clear" },
            { { "cache", "purge" }, 2, "unknown action 'purge'" },
            { { "cache", "stats", "--older-than", "5" }, 2, "--older-than goes with tide cache clear" },
            { { "cache", "clear", "--older-than", "-1" }, 2, "--older-than needs a number of seconds >= 0" },
            { { "cache", "stats", "--cache", dir }, 3, dir .. " is a directory" },
            { { "cache", "stats", "--cache", pipe }, 3, "file is not a database" },
        }
        for _, c in ipairs(cases) do
            local r = tide(c[1])
            assert.equal(c[2], r.code, table.concat(c[1], " "))
            assert.matches(c[3], r.stderr, 1, true)
        end
    end)

    it("runs uncached with one warning when the cache file is corrupt", function()
        local junk = ("this is not a cache\n"):rep(300)
        proc.write(cfile, junk)
        for _ = 1, 2 do
            local r, _ = run(inputs(1, 10))
            assert.equal(0, r.code, r.stderr)
            assert.equal(10, #proc.lines(r.stdout))
            local _, warnings = r.stderr:gsub("tide: cache: " .. cfile:gsub("%p", "%%%0")
                                              .. ": file is not a database; tasks with cache run without it\n", "")
            assert.equal(1, warnings, r.stderr)
            assert.matches('"output":{"big":27021597764222979,"list":[],"n":3,"none":{},"sq":9}', r.stdout, 1, true)
        end
        assert.equal(20, #proc.lines(proc.slurp(counts)))
        assert.equal(junk, proc.slurp(cfile), "the file was left alone")
        -- A cache whose pages were damaged after it was made: the same.
        proc.rmrf(cfile)
        run(inputs(1, 10))
        local f = assert(io.open(cfile, "r+b"))
        local size = f:seek("end")
        f:seek("set", 4096)
        f:write(("\255"):rep(size - 4096))
        f:close()
        local r = run(inputs(1, 10))
        assert.equal(0, r.code, r.stderr)
        assert.equal(10, #proc.lines(r.stdout))
        local _, warnings = r.stderr:gsub("tide: cache: ", "")
        assert.equal(1, warnings, r.stderr)
    end)

    it("refuses a --cache that is a directory or cannot be made, before anything runs (exit 3)", function()
        for _, bad in ipairs({ dir, pipe .. "/cache.db" }) do
            local r, n = run(inputs(1, 2), { "--cache", bad })
            assert.equal(3, r.code, r.stderr)
            assert.matches("^tide: %-%-cache: ", r.stderr)
            assert.equal("", r.stdout)
            assert.equal(0, n)
            r = tide({ "serve", pipe, "--listen", "127.0.0.1:0", "--cache", bad })
            assert.equal(3, r.code, r.stderr)
            assert.matches("^tide: %-%-cache: ", r.stderr)
        end
    end)

    it("refuses bad cache options with the pipeline's file:line (exit 2)", function()
        local cases = {
            { '"yes"', "cache must be true or a table" },
            { "{ ttl = -1 }", "cache.ttl must be a number of seconds > 0, got %-1" },
            { "{ key = 5 }", "cache.key must be a function%(input, ctx%) returning the key, got 5" },
        }
        for _, c in ipairs(cases) do
            proc.write(pipe, with_opts(c[1]))
            local r = tide({ "run", pipe }, inputs(1, 1))
            assert.equal(2, r.code, r.stderr)
            assert.matches(pipe:gsub("%p", "%%%0") .. ":3: p:task: task 'sq': " .. c[2], r.stderr)
        end
    end)
end)


describe("tide serve --cache", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    local function metric(text, name)
        return tonumber(text:match("\n" .. name .. " (%d+)\n"))
    end

    it("counts hits and misses in /metrics, across a restart", function()
        local cfile = dir .. "/cache.db"
        local pipe = dir .. "/p.lua"
        proc.write(pipe, [[
local tide = require "tide"
local p = tide.pipeline "double"
p:task("double", { cache = true }, function(x) return x * 2 end)
return p
]])
        local s = server.start("--cache " .. proc.shquote(cfile), pipe)
        local st, body = server.http(s, "POST", "/v1/jobs?wait=5", '{"input":21}')
        assert.equal(200, st)
        assert.equal(42, json.decode(body).output)
        local _, m = server.http(s, "GET", "/metrics")
        assert.equal(0, metric(m, "tide_cache_hits_total"))
        assert.equal(1, metric(m, "tide_cache_misses_total"))
        server.stop(s)
        s = server.start("--cache " .. proc.shquote(cfile), pipe)
        st, body = server.http(s, "POST", "/v1/jobs?wait=5", '{"input":21}')
        assert.equal(200, st)
        assert.equal(42, json.decode(body).output)
        _, m = server.http(s, "GET", "/metrics")
        assert.equal(1, metric(m, "tide_cache_hits_total"))
        assert.equal(0, metric(m, "tide_cache_misses_total"))
        assert.matches("# TYPE tide_cache_hits_total counter", m, 1, true)
        server.stop(s)
    end)
end)


describe("tide run --journal with cached tasks", function()
    local dir
    before_each(function() dir = proc.tmpdir() end)
    after_each(function() proc.rmrf(dir) end)

    -- `fetch` is cached, `parse` cached and checkpointed (both note each
    -- run of their body in $COUNTS); `slow` holds inputs above 10 for
    -- $SLOW seconds, so that a kill finds 10 inputs ended and 40 waiting
    -- after both cached steps.
    local PIPE = [[
local tide = require "tide"
local function note(what)
    local f = assert(io.open(os.getenv("COUNTS"), "a"))
    f:write(what, "\n")
    f:close()
end
local p = tide.pipeline "resumed"
p:task("fetch", { cache = true }, function(x)
    note("fetch " .. x.n)
    return { n = x.n, page = "page " .. x.n }
end)
p:task("parse", { after = "fetch", cache = true, checkpoint = true }, function(doc)
    note("parse " .. doc.n)
    return { n = doc.n, words = #doc.page }
end)
p:task("slow", { after = "parse" }, function(r)
    if r.n > 10 then tide.sleep(tonumber(os.getenv("SLOW") or "0")) end
    return r
end)
return p
]]

    local function sql(db, query)
        local h = io.popen("sqlite3 " .. proc.shquote(db) .. " " .. proc.shquote(query) .. " 2>/dev/null")
        local out = h:read("*a")
        h:close()
        return tonumber(out)
    end

    local function sorted_file(path)
        local t = proc.lines(proc.slurp(path) or "")
        table.sort(t)
        return t
    end

    it("resumes after kill -9: ended inputs stay done, the rest hit the cache or their checkpoints", function()
        local pipe, counts = dir .. "/p.lua", dir .. "/counts"
        proc.write(pipe, PIPE)
        proc.write(dir .. "/in.jsonl", inputs(1, 50))
        local function args(out, cfile, journal)
            local a = { "run", pipe, "--input", dir .. "/in.jsonl", "--output", dir .. "/" .. out,
                        "--cache", dir .. "/" .. cfile }
            if journal then a[#a + 1], a[#a + 2] = "--journal", dir .. "/j.db" end
            return a
        end
        -- The first run, killed once both cached steps ran for every input
        -- and the 10 quick inputs' results are in the journal.
        local a = args("out", "cache.db", true)
        for i = 1, #a do a[i] = proc.shquote(a[i]) end
        local h = io.popen(("COUNTS=%s SLOW=60 %s %s >/dev/null 2>%s & echo $!")
            :format(proc.shquote(counts), proc.shquote(proc.bin), table.concat(a, " "),
                    proc.shquote(dir .. "/err1")))
        local pid = assert(tonumber(h:read("*l")))
        h:close()
        local ready = false
        for _ = 1, 600 do
            if #proc.lines(proc.slurp(counts) or "") == 100
                and sql(dir .. "/j.db", "SELECT count(*) FROM items WHERE kind = 'result'") == 10 then
                ready = true
                break
            end
            os.execute("sleep 0.05")
        end
        -- Entries and checkpoints are committed within milliseconds.
        os.execute("sleep 0.3")
        os.execute("kill -9 " .. pid)
        -- Gone before the resume opens its files.
        os.execute("i=0; while kill -0 " .. pid .. " 2>/dev/null && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done")
        assert.is_true(ready, proc.slurp(dir .. "/err1"))
        assert.equal(40, sql(dir .. "/j.db", "SELECT count(*) FROM checkpoints WHERE task = 'parse'"))

        -- The resume: no body of a cached step runs again; the 40 inputs
        -- that had not ended take fetch from the cache and parse from its
        -- checkpoint (not looked up: 40 hits, not 80).
        local r = tide(args("out", "cache.db", true), nil, { COUNTS = counts, SLOW = "0" })
        assert.equal(0, r.code, r.stderr)
        assert.matches("resuming from the journal .*: 10 inputs ended before", r.stderr)
        assert.matches("cache 40 hits, 0 misses", r.stderr, 1, true)
        assert.equal(100, #proc.lines(proc.slurp(counts)))
        -- The files of an uninterrupted run without journal or cache entries.
        local clean = tide(args("clean", "fresh.db", false), nil, { COUNTS = dir .. "/counts-clean" })
        assert.equal(0, clean.code, clean.stderr)
        assert.matches("cache 0 hits, 100 misses", clean.stderr, 1, true)
        local out = sorted_file(dir .. "/out/slow.jsonl")
        assert.equal(50, #out)
        assert.same(sorted_file(dir .. "/clean/slow.jsonl"), out)
        assert.matches('{"id":"7","output":{"n":7,"words":6}}', table.concat(out, "\n"), 1, true)
    end)
end)
