-- bench/jsonl_gen.lua: the input of the JSONL line of `make bench`
-- (bench/jsonl.sh). Writes N lines of realistic JSON objects (150 to 250
-- bytes each: integer ids, names with some non-ASCII UTF-8, an email, a
-- nested object, an array of numbers, booleans, null, floats) to stdout.
--
--   luajit bench/jsonl_gen.lua N > FILE
--
-- The output depends only on N: the values come from a 32-bit linear
-- congruential generator of its own (not math.random, whose sequence a
-- LuaJIT version may change), so every run, and jq and tide within one,
-- read the same bytes.
local floor, fmt, concat = math.floor, string.format, table.concat

local n = tonumber(arg[1] or "")
if not n or n < 1 or n % 1 ~= 0 then
    io.stderr:write("usage: luajit bench/jsonl_gen.lua N > FILE\n")
    os.exit(2)
end

local state = 20261202

-- A whole number in [0, m), from the generator's high bits.
local function rand(m)
    state = (state * 1103515245 + 12345) % 4294967296
    return floor(state / 65536) % m
end

local first = { "Anna", "José", "Zoë", "Łukasz", "Mei", "Olav", "Søren", "Chloé", "Ahmed", "Ирина",
    "Kenji", "Björn", "Noah", "Ana", "François", "Dmitri", "Ngozi", "Yuki", "Marta", "Élodie" }
local last = { "Smith", "Müller", "García", "Kowalski", "田中", "Nguyen", "Ødegaard", "Rossi",
    "Dubois", "Петров", "Silva", "Öztürk", "Jones", "Novák", "Brown", "Hernández" }
local ascii = { "Anna", "Jose", "Zoe", "Lukasz", "Mei", "Olav", "Soren", "Chloe", "Ahmed", "Irina",
    "Kenji", "Bjorn", "Noah", "Ana", "Francois", "Dmitri", "Ngozi", "Yuki", "Marta", "Elodie" }
local cities = { "Kraków", "Zürich", "Lyon", "Oslo", "São Paulo", "Austin", "Tōkyō", "Berlin",
    "Málaga", "Nairobi" }
local plans = { "free", "pro", "team", "enterprise" }

local out, k = {}, 0
for i = 1, n do
    local f, l, c = rand(#first) + 1, rand(#last) + 1, rand(#cities) + 1
    local nums = {}
    for j = 1, 2 + rand(4) do
        nums[j] = rand(1000)
    end
    k = k + 1
    out[k] = fmt('{"id":%d,"name":"%s %s","email":"%s%d@example.org","active":%s,"score":%d.%02d,'
        .. '"plan":"%s","address":{"city":"%s","zip":"%05d"},"counts":[%s],'
        .. '"ratio":%d.%03d,"manager":null}',
        i, first[f], last[l], ascii[f]:lower(), rand(10000), rand(2) == 1 and "true" or "false",
        rand(100), rand(100), plans[rand(#plans) + 1], cities[c], rand(100000),
        concat(nums, ","), rand(10), rand(1000))
    if k == 1000 or i == n then
        out[k + 1] = ""
        io.write(concat(out, "\n", 1, k + 1))
        out, k = {}, 0
    end
end
