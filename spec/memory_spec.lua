-- Specs of memory limits (issue 18, item 4): a Lua state that reaches its
-- limit fails the attempt that asked for the memory with ENOMEM, and the
-- engine and every other job carry on. A limit belongs to a whole Lua
-- state, so each case runs in a luajit process of its own (the busted
-- process keeps no limit).
local proc = require "helpers.proc"
local tide = require "tide"

local shquote = proc.shquote

-- Runs a Lua script with this checkout's modules in a stock luajit,
-- bounded to 120 s. Returns the exit code and stdout + stderr.
local function luajit(script)
    local dir = proc.tmpdir()
    proc.write(dir .. "/main.lua", 'package.path = "lua/?.lua;lua/?/init.lua;" .. package.path\n'
        .. 'package.cpath = ' .. ("%q"):format(proc.build .. "/lib/?.so;") .. ' .. package.cpath\n'
        .. script)
    local h = io.popen("timeout 120 luajit " .. shquote(dir .. "/main.lua") .. " 2>&1; echo \"rc=$?\"")
    local out = h:read("*a")
    h:close()
    proc.rmrf(dir)
    local rc = tonumber(out:match("rc=(%d+)\n$"))
    return rc, out
end

describe("memory_limit", function()
    it("fails the attempt that reaches the loop state's limit with ENOMEM; the rest carry on", function()
        local rc, out = luajit([[
local tide = require "tide"
local core = require "tide.core"
local p = tide.pipeline "hog"
p:task("t", function(x)
    if x == "hog" then
        local t = {}
        for i = 1, 1e9 do t[i] = ("x"):rep(64) .. i end
    end
    return x
end)
local ex = tide.executor { memory_limit = "48M" }
local ids = {}
for i = 1, 40 do ids[i] = ex:submit(p, i == 7 and "hog" or i) end
ex:run()
for i = 1, 40 do
    local v, rec = ex:result(ids[i])
    if i == 7 then
        assert(v == nil and rec.code == "ENOMEM", tostring(rec))
        assert(rec.task == "t" and rec.attempts == 1)
        assert(rec.message:match("memory_limit %(48 MiB%)"), rec.message)
    else
        assert(v == i, tostring(rec))
    end
end
-- The engine goes on: a second hog fails the same way, more jobs pass.
local hog2 = ex:submit(p, "hog")
for i = 1, 100 do ex:submit(p, 1000 + i) end
ex:run()
local _, rec2 = ex:result(hog2)
assert(rec2.code == "ENOMEM", tostring(rec2))
local s = ex:stats()
assert(s.live == 0 and s.held == 0 and s.internal_errors == 0)
local used, limit, trips = core.mem_stats()
assert(limit == 48 * 1048576 and trips == 2, tostring(trips))
assert(used < limit, used)
ex:close()
print("ok")
]])
        assert.equal(0, rc, out)
        assert.matches("ok\n", out, 1, true)
    end)

    it("paces the collector near the limit: garbage alone never fails a job", function()
        -- 36 MiB live of a 64 MiB limit, and jobs that make 2 MB of
        -- garbage each: LuaJIT's default pace lets the heap reach twice
        -- what is live, past the limit, so some of them used to fail.
        local rc, out = luajit([[
local tide = require "tide"
local core = require "tide.core"
local keep = {}
for i = 1, 36 * 1024 do keep[i] = ("k"):rep(1000) .. i end
local p = tide.pipeline "garbage"
p:task("churn", function(x)
    local t = {}
    for i = 1, 2000 do t[i % 50 + 1] = ("g"):rep(1000) .. i .. x end
    return x
end)
local ex = tide.executor { memory_limit = "64M" }
local ids = {}
for i = 1, 400 do ids[i] = ex:submit(p, i) end
ex:run()
for i = 1, 400 do
    local v, rec = ex:result(ids[i])
    assert(v == i, tostring(rec))
end
local _, _, trips = core.mem_stats()
assert(trips == 0, trips)
assert(#keep == 36 * 1024)
print("ok")
]])
        assert.equal(0, rc, out)
        assert.matches("ok\n", out, 1, true)
    end)

    it("limits each worker state: a sync body fails with ENOMEM, its worker runs the next job", function()
        local rc, out = luajit([[
local tide = require "tide"
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir)
local f = assert(io.open(dir .. "/p.lua", "w"))
f:write([=[
local tide = require "tide"
local p = tide.pipeline "synchog"
p:task("s", { kind = "sync" }, function(x)
    if x == "hog" then
        local t = {}
        for i = 1, 1e9 do t[i] = ("y"):rep(64) .. i end
    end
    return x
end)
return p
]=])
f:close()
local p = assert(tide.pipeline_file(dir .. "/p.lua"))
local ex = tide.executor { memory_limit = "32M", threads = 1 }
local ids = {}
for i = 1, 10 do ids[i] = ex:submit(p, (i == 3 or i == 8) and "hog" or i) end
ex:run()
for i = 1, 10 do
    local v, rec = ex:result(ids[i])
    if i == 3 or i == 8 then
        assert(v == nil and rec.code == "ENOMEM", tostring(rec))
        assert(rec.message:match("memory_limit %(32 MiB%)"), rec.message)
    else
        assert(v == i, tostring(rec))
    end
end
assert(ex:stats().workers == 1)
ex:close()
os.execute("rm -rf " .. dir) -- each worker loaded the file again
print("ok")
]])
        assert.equal(0, rc, out)
        assert.matches("ok\n", out, 1, true)
    end)

    it("a journal read that runs out of memory finalizes its statement: the journal lets go of its files", function()
        -- An unfinalized statement keeps sqlite3_close from closing the
        -- journal's read connection (its file descriptors stay open).
        local rc, out = luajit([[
local tide = require "tide"
local core = require "tide.core"
local path = os.tmpname()
local ex = tide.executor {}
local j = assert(core.journal_open(ex:loop(), path))
for i = 1, 20000 do j:item("k" .. i, "result", "done", ("x"):rep(1000) .. i) end
assert(j:close())
j = assert(core.journal_open(ex:loop(), path))
collectgarbage()
core.mem_limit(collectgarbage("count") * 1024 + 4 * 1048576)
local ok, err = pcall(j.rows, j, "SELECT key, data FROM items")
assert(not ok and tostring(err):match("not enough memory"), tostring(err))
core.mem_limit(0)
assert(j:close())
local open = 0
local ls = io.popen("ls -l /proc/" .. core.getpid() .. "/fd")
for line in ls:lines() do
    if line:find(path, 1, true) then open = open + 1 end
end
ls:close()
assert(open == 0, open .. " descriptors of the journal still open")
ex:close()
for _, suffix in ipairs({ "", "-wal", "-shm" }) do os.remove(path .. suffix) end
print("ok")
]])
        assert.equal(0, rc, out)
        assert.matches("ok\n", out, 1, true)
    end)

    it("tide run --memory-limit: the job that ran out gets its failure line, every other job its output", function()
        local dir = proc.tmpdir()
        local lines = {}
        for i = 1, 30 do
            lines[i] = i == 5 and '{"id":"5","hog":"async"}' or i == 12 and '{"id":"12","hog":"sync"}'
                or ('{"id":"%d","n":%d}'):format(i, i)
        end
        proc.write(dir .. "/in.jsonl", table.concat(lines, "\n") .. "\n")
        local h = io.popen(("timeout 120 %s run spec/fixtures/pipelines/hog.lua --memory-limit 64M --threads 2 "
                            .. "--input %s 2>%s; echo \"rc=$?\""):format(shquote(proc.bin),
                            shquote(dir .. "/in.jsonl"), shquote(dir .. "/err")))
        local out = h:read("*a")
        h:close()
        local err = proc.slurp(dir .. "/err")
        proc.rmrf(dir)
        assert.matches("rc=1\n$", out, nil, false, err)
        local got = {}
        for line in out:gmatch("([^\n]*)\n") do
            if line:sub(1, 1) == "{" then
                local v = assert(tide.json.decode(line))
                got[v.id] = v
            end
        end
        for i = 1, 30 do
            local v = got[tostring(i)]
            assert(v, "no line for input " .. i)
            if i == 5 or i == 12 then
                assert.equal("failed", v.status)
                assert.equal("ENOMEM", v.error.code)
                assert.equal(i == 5 and "async" or "sync", v.error.task)
            else
                assert.same({ id = tostring(i), status = "done", output = i }, v)
            end
        end
        assert.matches("28 done, 2 failed", err, 1, true)
        -- Neither process nor workers grew past their limits (64 MiB each,
        -- plus headroom, plus what is not Lua's). A sanitizer's shadow
        -- memory multiplies RSS: then only the lines are judged.
        if (os.getenv("TIDE_SAN_FLAGS") or "") == "" then
            local rss = tonumber(err:match("peak RSS ([%d.]+) MiB"))
            assert.is_true(rss ~= nil and rss < 400, err)
        end
    end)

    it("takes bytes or K/M/G and refuses anything else at the call", function()
        local executor = require "tide.executor"
        assert.equal(1024 ^ 3, executor.parse_bytes("1G"))
        assert.equal(512 * 1024 ^ 2, executor.parse_bytes("512m"))
        assert.equal(4096 * 1024, executor.parse_bytes("4096K"))
        assert.equal(2 ^ 21, executor.parse_bytes(2 ^ 21))
        for _, bad in ipairs({ "1.5G", "1T", "-1G", "G", "", 1.5e6 + 0.5, 1000, "1K", true, {} }) do
            assert.is_nil(executor.parse_bytes(bad), tostring(bad))
            local ok, err = pcall(tide.executor, { memory_limit = bad })
            assert.is_false(ok)
            assert.matches("memory_limit must be bytes >= 1M", err, 1, true)
        end
        for _, cmd in ipairs({ "run", "serve" }) do
            local r = proc.tide({ cmd, "spec/fixtures/pipelines/hog.lua", "--memory-limit", "1T" })
            assert.equal(2, r.code)
            assert.matches("--memory-limit needs bytes >= 1M", r.stderr, 1, true)
        end
    end)
end)
