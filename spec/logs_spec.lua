-- Specs of per-job logs: the ring each job keeps of its ctx.log and print
-- lines, its bounds (lines and bytes per line), ex:logs and how the lines
-- leave with the result (subscribers, the store, its eviction).
local tide = require "tide"
local executor = require "tide.executor"
local runner = require "tide.runner"
local outputs = require "tide.outputs"

-- Runs fn with _G.print replaced by executor.print, as tide run does
-- (the lines still go to stderr; these specs look at the ring).
local function with_print(fn)
    local saved_print = _G.print
    _G.print = executor.print
    local ok, err = pcall(fn)
    _G.print = saved_print
    assert(ok, err)
end

describe("per-job logs", function()
    it("keeps ctx.log lines with time, task and attempt, oldest first", function()
        local p = tide.pipeline("logs-basic")
        p:task("a", function(x, ctx) ctx.log("one", x); ctx.log("two"); return x end)
        local ex = executor.new()
        local before = os.time()
        ex:submit(p, 7, { id = "j" })
        with_print(function() ex:run() end)
        local l = assert(ex:logs("j"))
        assert.equal("j", l.id)
        assert.equal(0, l.dropped)
        assert.equal(2, #l.lines)
        assert.equal("one\t7", l.lines[1].line)
        assert.equal("two", l.lines[2].line)
        assert.equal("a", l.lines[1].task)
        assert.equal(1, l.lines[1].attempt)
        assert.is_true(l.lines[1].time >= before - 1 and l.lines[1].time <= os.time() + 1)
        ex:close()
    end)

    it("keeps print lines of plain (hot path) and ctx tasks, per job", function()
        local p = tide.pipeline("logs-print")
        p:task("a", function(x) print("plain", x); return x end)
        p:task("b", { after = "a" }, function(x, ctx) print("ctx", x, ctx.attempt); return x end)
        local ex = executor.new()
        for i = 1, 3 do ex:submit(p, i, { id = "j" .. i }) end
        with_print(function() ex:run() end)
        for i = 1, 3 do
            local l = assert(ex:logs("j" .. i))
            assert.same({ "plain\t" .. i, "ctx\t" .. i .. "\t1" }, { l.lines[1].line, l.lines[2].line })
            assert.same({ "a", "b" }, { l.lines[1].task, l.lines[2].task })
        end
        ex:close()
    end)

    it("attributes a print after a yield to the job that yielded", function()
        local p = tide.pipeline("logs-yield")
        p:task("a", function(x)
            tide.sleep(0.01 * (4 - x))
            print("after sleep", x)
            return x
        end)
        local ex = executor.new()
        for i = 1, 3 do ex:submit(p, i, { id = "j" .. i }) end
        with_print(function() ex:run() end)
        for i = 1, 3 do assert.equal("after sleep\t" .. i, ex:logs("j" .. i).lines[1].line) end
        ex:close()
    end)

    it("records the attempt of each line across retries", function()
        local p = tide.pipeline("logs-retry")
        p:task("a", { retry = { times = 2, interval = 0 } }, function(x, ctx)
            ctx.log("try")
            if ctx.attempt < 3 then error("again") end
            return x
        end)
        local ex = executor.new()
        ex:submit(p, 1, { id = "r" })
        with_print(function() ex:run() end)
        local l = ex:logs("r")
        assert.same({ 1, 2, 3 }, { l.lines[1].attempt, l.lines[2].attempt, l.lines[3].attempt })
    end)

    it("keeps map children's lines in their job's ring", function()
        local p = tide.pipeline("logs-map")
        p:task("split", { map = true }, function(x) return { x, x + 1 } end)
        p:task("each", { after = "split" }, function(v, ctx) ctx.log("item", v); return v end)
        p:task("sum", { after = "each", gather = true }, function(vs) return #vs end)
        local ex = executor.new()
        ex:submit(p, 10, { id = "m" })
        with_print(function() ex:run() end)
        local got = {}
        for _, l in ipairs(ex:logs("m").lines) do got[#got + 1] = l.line end
        table.sort(got)
        assert.same({ "item\t10", "item\t11" }, got)
    end)

    it("bounds the ring at log_lines, keeping the newest and counting the dropped", function()
        local p = tide.pipeline("logs-ring")
        p:task("a", function(x, ctx) for i = 1, 25 do ctx.log("line", i) end return x end)
        local ex = executor.new { log_lines = 10 }
        ex:submit(p, 1, { id = "big" })
        with_print(function() ex:run() end)
        local l = ex:logs("big")
        assert.equal(10, #l.lines)
        assert.equal(15, l.dropped)
        for k = 1, 10 do assert.equal("line\t" .. (15 + k), l.lines[k].line) end
        ex:close()
    end)

    it("keeps nothing with log_lines = 0, and still answers for the job", function()
        local p = tide.pipeline("logs-none")
        p:task("a", function(x, ctx) ctx.log("x"); return x end)
        local ex = executor.new { log_lines = 0 }
        ex:submit(p, 1, { id = "z" })
        with_print(function() ex:run() end)
        assert.same({ id = "z", lines = {}, dropped = 0 }, ex:logs("z"))
    end)

    it("truncates a huge line at LOG_LINE_MAX bytes with a marker, on a UTF-8 boundary", function()
        local p = tide.pipeline("logs-huge")
        p:task("a", function(x, ctx) ctx.log(("é"):rep(100000)); return x end)
        local ex = executor.new()
        ex:submit(p, 1, { id = "h" })
        with_print(function() ex:run() end)
        local line = ex:logs("h").lines[1].line
        local kept, marker = line:match("^(.-) (%[truncated: %d+ bytes%])$")
        assert.equal("[truncated: 200000 bytes]", marker)
        assert.is_true(#kept <= runner.LOG_LINE_MAX)
        assert.equal(("é"):rep(#kept / 2), kept)
    end)

    it("hands the lines to subscribers with the result, nil when none", function()
        local p = tide.pipeline("logs-sub")
        p:task("a", function(x, ctx) if x == 1 then ctx.log("one") end return x end)
        local ex = executor.new { results = false }
        local seen = {}
        ex:subscribe(function(id, _, _, _, logs) seen[id] = logs or false end)
        ex:submit(p, 1, { id = "with" })
        ex:submit(p, 2, { id = "without" })
        with_print(function() ex:run() end)
        assert.equal("one", seen.with.lines[1].line)
        assert.is_false(seen.without)
    end)

    it("answers a running job's lines so far", function()
        local p = tide.pipeline("logs-live")
        local ex = executor.new()
        local seen
        p:task("a", function(x, ctx)
            ctx.log("before")
            seen = ex:logs(ctx.id)
            return x
        end)
        ex:submit(p, 1, { id = "live" })
        with_print(function() ex:run() end)
        assert.equal(1, #seen.lines)
        assert.equal("before", seen.lines[1].line)
    end)

    it("drops a job's lines with its evicted result", function()
        local p = tide.pipeline("logs-evict")
        p:task("a", function(x, ctx) ctx.log("l", x); return x end)
        local ex = executor.new { max_results = 2 }
        for i = 1, 3 do ex:submit(p, i, { id = "e" .. i }) end
        with_print(function() ex:run() end)
        local l, rec = ex:logs("e1")
        assert.is_nil(l)
        assert.equal("ENOENT", rec.code)
        assert.equal("l\t3", ex:logs("e3").lines[1].line)
    end)

    it("answers nil, ENOENT for an unknown id and raises on a bad log_lines", function()
        local ex = executor.new()
        local l, rec = ex:logs("nope")
        assert.is_nil(l)
        assert.equal("ENOENT", rec.code)
        assert.has_error(function() executor.new { log_lines = -1 } end,
                         "tide.executor: log_lines must be a whole number from 0 to 1000000")
        assert.has_error(function() executor.new { log_lines = 1.5 } end)
        ex:close()
    end)

    it("keeps no line for print outside a task body", function()
        local ex = executor.new()
        with_print(function() print("top level") end)
        assert.is_false(executor.keep_print("top level"))
        ex:close()
    end)
end)

describe("outputs.log_name", function()
    it("encodes ids as safe, distinct file names", function()
        assert.equal("plain-id_1.2.log", outputs.log_name("plain-id_1.2"))
        assert.equal("a%2Fb.log", outputs.log_name("a/b"))
        assert.equal("%2E..log", outputs.log_name(".."))
        assert.equal("%2E.log", outputs.log_name("."))
        assert.equal("%2Ehidden.log", outputs.log_name(".hidden"))
        assert.equal("sp%20ace%20%C3%A9.log", outputs.log_name("sp ace é"))
        assert.equal("%23.log", outputs.log_name("#"))
        assert.equal("%.log", outputs.log_name(""))
        assert.equal("7.log", outputs.log_name(7))
    end)

    it("cuts a long id's name below 255 bytes, keeps %XX whole, and adds a hash", function()
        -- "x" first puts an escape across byte 180, where the cut falls.
        local a, b = "x" .. ("/"):rep(300) .. "a", "x" .. ("/"):rep(300) .. "b"
        local na, nb = outputs.log_name(a), outputs.log_name(b)
        assert.is_true(#na <= 255)
        assert.are_not.equal(na, nb)
        assert.truthy(na:match("^x[%%%x]+~%x%x%x%x%x%x%x%x%.log$"))
        -- Every kept escape is whole: after the "x", the part before '~'
        -- is nothing but %2F.
        local kept = na:match("^x(.-)~")
        assert.equal("", (kept:gsub("%%2F", "")))
        assert.is_true(#kept >= 170)
        local c = ("x"):rep(1000)
        assert.equal(outputs.log_name(c), outputs.log_name(c))
        assert.is_true(#outputs.log_name(c) <= 255)
    end)
end)


-- Sync tasks run on worker threads, in Lua states of their own: what they
-- print there comes back with the attempt's result and is kept in the
-- job's ring like the lines of the loop's tasks (and still goes to stderr
-- as it is printed). The bodies are self-contained: a body declared
-- without a file is carried as bytecode.
describe("per-job logs of sync tasks", function()
    it("keeps a sync body's print lines, with their time, task and attempt, failed attempts' too", function()
        local p = tide.pipeline("logs-sync")
        p:task("s", { kind = "sync", retry = { times = 1, interval = 0 } }, function(x)
            print("sync says", x)
            print("second line")
            if x == 2 and not _G.failed_once then
                _G.failed_once = true
                error("first attempt of 2 fails")
            end
            return x * 10
        end)
        p:task("after", { after = "s" }, function(x) print("loop side", x); return x end)
        local ex = executor.new({ threads = 1 })
        local before = os.time()
        ex:submit(p, 1, { id = "one" })
        ex:submit(p, 2, { id = "two" })
        with_print(function() ex:run() end)
        local l = assert(ex:logs("one"))
        assert.same({ "sync says\t1", "second line", "loop side\t10" },
                    { l.lines[1].line, l.lines[2].line, l.lines[3].line })
        assert.same({ "s", "s", "after" }, { l.lines[1].task, l.lines[2].task, l.lines[3].task })
        assert.is_true(l.lines[1].time >= before - 1 and l.lines[1].time <= os.time() + 1)
        -- The failed attempt's lines are kept too, under attempt 1.
        l = assert(ex:logs("two"))
        assert.equal(5, #l.lines)
        assert.same({ 1, 1, 2, 2 }, { l.lines[1].attempt, l.lines[2].attempt, l.lines[3].attempt,
                                      l.lines[4].attempt })
        assert.equal("sync says\t2", l.lines[3].line)
        ex:close()
    end)

    it("clips a sync body's huge line as the loop does, and says how many lines a flood lost", function()
        local p = tide.pipeline("logs-sync-big")
        p:task("s", { kind = "sync" }, function()
            print(string.rep("é", 5000)) -- 10000 bytes
            for i = 1, 1500 do print("line " .. i) end
            return 1
        end)
        local ex = executor.new({ threads = 1, log_lines = 2000 })
        ex:submit(p, 0, { id = "big" })
        with_print(function() ex:run() end)
        local l = assert(ex:logs("big"))
        -- The worker keeps the last 1000 lines of an attempt and says how
        -- many it did not keep, in one line before them.
        assert.equal(1001, #l.lines)
        assert.equal("[501 earlier lines of this attempt were not kept]", l.lines[1].line)
        assert.equal("line 501", l.lines[2].line)
        assert.equal("line 1500", l.lines[1001].line)
        ex:close()
        p = tide.pipeline("logs-sync-huge")
        p:task("s", { kind = "sync" }, function() print(string.rep("é", 5000)); return 1 end)
        ex = executor.new({ threads = 1 })
        ex:submit(p, 0, { id = "huge" })
        with_print(function() ex:run() end)
        local line = assert(ex:logs("huge")).lines[1].line
        assert.equal(string.rep("é", 2048) .. " [truncated: 10000 bytes]", line)
        ex:close()
    end)
end)
