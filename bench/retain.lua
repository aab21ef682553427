-- bench/retain.lua: the retained-results line of `make bench` (issue 16):
-- what a finished result kept by an executor costs in memory, the way
-- `tide serve` keeps them (string ids, a small table as output, few jobs
-- live at once).
--
-- Run from the repo root with a stock luajit, after `make`:
--
--   luajit bench/retain.lua [N]       (N: BENCH_RETAIN_N, else 1000000)
--
-- An executor with max_results = N + 1000 and results = "json" (the store
-- tide serve uses: table outputs kept as their JSON text) keeps the
-- results of N jobs of
-- a one-task pipeline returning { n = x.n + 1, ok = true }. The jobs are
-- submitted with ids "job-%08d" in batches of 1000, each batch run to its
-- end with ex:run() before the next, as a server sees them. The process's
-- resident memory (VmRSS, after two full collections) is read before the
-- first job and after the last; the difference over N is the line's
-- bytes_per_result, lua_bytes_per_result the same for the Lua heap alone
-- (collectgarbage "count"). Prints one line:
--
--   memory workload=retained impl=tide n=... bytes_per_result=... lua_bytes_per_result=...
--       rss_before_mib=... rss_after_mib=... target_bytes=200 ok=1|0
--
-- ok=1 when every result is kept and right and bytes_per_result is at
-- most 200. Exit status 1 when a result is missing or wrong (a missed
-- target shows as ok=0 only), 2 on a usage error, 3 when tide cannot be
-- loaded.

package.path = "lua/?.lua;lua/?/init.lua;bench/?.lua;" .. package.path
package.cpath = "build/lib/?.so;" .. package.cpath

local loaded, tide = pcall(require, "tide")
if not loaded then
    io.stderr:write("bench/retain.lua: cannot load tide (run `make` first, from the repo root): ",
        tostring(tide), "\n")
    os.exit(3)
end

local fmt, min = string.format, math.min

local TARGET_BYTES = 200
local BATCH = 1000

local n = tonumber(arg[1] or os.getenv("BENCH_RETAIN_N") or "1000000")
if not n or n < 1 or n % 1 ~= 0 then
    io.stderr:write("usage: luajit bench/retain.lua [N]  (N: a whole number >= 1)\n")
    os.exit(2)
end


-- The process's resident set in bytes, after two full collections (the
-- second finishes what the first's finalizers left).
local function rss()
    collectgarbage()
    collectgarbage()
    local f = assert(io.open("/proc/self/status"))
    local text = f:read("*a")
    f:close()
    return assert(tonumber(text:match("VmRSS:%s*(%d+)")), "no VmRSS in /proc/self/status") * 1024
end


local p = tide.pipeline "retain"
p:task("inc", function(x) return { n = x.n + 1, ok = true } end)

local ex = tide.executor { max_results = n + 1000, results = "json" }
ex:prepare(p)

local before = rss()
local lua_before = collectgarbage("count") * 1024
for b = 0, n - 1, BATCH do
    for i = b, min(b + BATCH, n) - 1 do
        ex:submit(p, { n = i }, { id = fmt("job-%08d", i) })
    end
    ex:run()
end
local after = rss()
local lua_after = collectgarbage("count") * 1024

-- Every result kept and right: the first, the last and a sample between,
-- and the count of kept results.
local right = true
for _, i in ipairs { 0, n - 1, math.floor(n / 2), math.floor(n / 3) } do
    local status, out = ex:finished(fmt("job-%08d", i))
    if status ~= "done" or type(out) ~= "table" or out.n ~= i + 1 or out.ok ~= true then
        io.stderr:write(fmt("bench/retain.lua: job-%08d: %s %s\n", i, tostring(status), tostring(out)))
        right = false
    end
end
local kept = 0
for _ in ex:each_result() do
    kept = kept + 1
end
if kept ~= n then
    io.stderr:write(fmt("bench/retain.lua: %d results kept, not %d\n", kept, n))
    right = false
end
ex:close()

local per = (after - before) / n
io.write(fmt("memory workload=retained impl=tide n=%d bytes_per_result=%.0f lua_bytes_per_result=%.0f "
    .. "rss_before_mib=%.1f rss_after_mib=%.1f target_bytes=%d ok=%d\n",
    n, per, (lua_after - lua_before) / n, before / 1048576, after / 1048576, TARGET_BYTES,
    (right and per <= TARGET_BYTES) and 1 or 0))
os.exit(right and 0 or 1)
