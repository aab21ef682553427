--- The in-memory result store behind ex:result, ex:finished and tide
-- serve: one of the result stores an executor hands finished jobs to.
-- Part of the executor.
--
-- A result is kept for `retention` seconds and among the last
-- `max_results`; the oldest go first. Eviction hooks learn which ids went
-- (a server answers 410 for them rather than 404).
--
-- DESIGN
-- ------
-- A server keeps up to a million results, so their bytes count: a kept
-- result of a small output costs about 60 bytes, not the ~300 it took as
-- Lua strings and tables (a string is 24 bytes of header before its
-- first byte, a hash entry 24, the string table 8 more, and the holes
-- that long-lived strings leave between garbage in the Lua heap cost as
-- much again in RSS).
--
-- * Results sit in a ring of C records (status code, time, the id's
--   hash, where its bytes are; 28 bytes), indexed by ring slot: no table
--   per result, and a ring rather than ever-growing positions. Results
--   go oldest first, by count and by age.
-- * A result's id and, for small outputs, its value are bytes in an
--   arena of 64 KiB chunks, written one after another. Results leave in
--   the order they came, so the chunks empty in that order too: each
--   counts its live results and is dropped (to the collector) when the
--   count falls to zero. Values kept there are strings and, in a
--   server's store (as_json), a successful job's table output as its
--   JSON text (decoded when read; what a server hands out anyway). An
--   executor's own store keeps other values as they are (a JSON round
--   trip changes tables: [1] = nil, 2, 3 comes back as an object with
--   keys "2" and "3"), in `vals`, a Lua table by ring slot, as it keeps
--   error records (few, and with metatables) and large outputs.
-- * The id -> slot map is an open-addressing table of int32 slots
--   (linear probing, at most half full, deletion by backward shift),
--   keyed by a 32-bit FNV-1a hash of the id's bytes, which the ring
--   keeps so that growing rehashes nothing.
-- * Kept log lines are rare: a table by slot, only for the jobs that
--   have some. Ids that are not strings (no front end makes them; the
--   store still takes them) are kept in Lua tables beside the rest.
local core = require "tide.core"
local errors = require "tide.errors"
local ffi = require "ffi"
local bit = require "bit"

local hrtime = core.hrtime
local json = core.json
local jencode, jdecode = json.encode, json.decode
local is_error = errors.is
local pcall, tostring, type, ipairs, error = pcall, tostring, type, ipairs, error
local byte = string.byte
local band, bxor, lshift, tobit = bit.band, bit.bxor, bit.lshift, bit.tobit
local ffi_copy, ffi_string = ffi.copy, ffi.string
local io_stderr = io.stderr

-- Declared once per Lua state: a host that reloads tide (package.loaded
-- cleared) runs this file again, and the FFI refuses a second definition.
-- The ring's record: one per slot (1-based, index 0 unused), so that a
-- lookup touches one cache line of the ring rather than one per field.
if not pcall(ffi.typeof, "struct tide_results_slot") then
    ffi.cdef [[
int tide_results_memcmp(const void *a, const void *b, size_t n) __asm__("memcmp");
void *tide_results_calloc(size_t n, size_t size) __asm__("calloc");
void tide_results_free(void *p) __asm__("free");
struct tide_results_slot {
    int32_t hash;   /* FNV-1a of the id */
    int32_t chunk;  /* the arena chunk of its bytes; -1: an id that is no string */
    uint32_t off, idlen, vlen; /* the id's bytes at off, the value's after them */
    float time;     /* seconds since the store was made */
    uint8_t st;     /* status code; 0: no result */
};
]]
end
local C = ffi.C
local memcmp = C.tide_results_memcmp

local M = {}

-- Status codes (0: a slot whose result went, or was replaced by a newer
-- one of the same id). DONE_JSON: done, the value kept as JSON text in
-- the arena; DONE_STR: done, a string value kept in the arena.
local DONE, DONE_JSON, DONE_STR = 1, 2, 5
local CODE = { done = DONE, failed = 3, cancelled = 4 }
local NAME = { "done", "done", "failed", "cancelled", "done" }

-- The arena's chunk size, and the longest value kept in it: larger ones
-- stay Lua values (the target is small outputs; a large one would leave
-- most of a chunk unused when it does not fit in the current one).
local CHUNK = 65536
M.INLINE_MAX = 4096

-- The arrays and chunks are C memory (calloc, freed by the collector
-- through ffi.gc), outside the Lua heap: the collector lets its heap grow
-- to twice what it holds before a cycle, and the pages of that garbage
-- stay resident, so bytes kept in the Lua heap cost twice their size in
-- RSS.
local function c_array(ptr_ct, size)
    return function(n)
        local p = C.tide_results_calloc(n, size)
        if p == nil then error("tide: results: out of memory", 0) end
        return ffi.gc(ffi.cast(ptr_ct, p), C.tide_results_free)
    end
end
local i32_ct, bytes_ct = c_array(ffi.typeof("int32_t *"), 4), c_array(ffi.typeof("uint8_t *"), 1)

local Store = {}
Store.__index = Store


-- FNV-1a, 32 bits, of a string's bytes (exact in doubles: h * 16777619
-- is h << 24 plus h * 403).
local function hash(s)
    local h = -2128831035 -- 2166136261 as an int32
    for i = 1, #s do
        h = bxor(h, byte(s, i))
        h = tobit(lshift(h, 24) + h * 403)
    end
    return h
end


local SLOT_SIZE = ffi.sizeof("struct tide_results_slot")
local new_ring = c_array(ffi.typeof("struct tide_results_slot *"), SLOT_SIZE)


--- A store keeping at most max_results results for retention seconds;
-- `as_json`: successful table outputs are kept as their JSON text (what a
-- server hands out anyway), and read back decoded.
function M.new(max_results, retention, as_json)
    local self = setmetatable({
        vals = {}, logs_of = {}, oids = {}, oindex = {}, t0 = hrtime(),
        head = 0, n = 0, cap = 0, -- ring: positions head .. head + n - 1 (mod cap), 1-based slots
        r = new_ring(1), -- the ring's records
        ix = i32_ct(1), mask = 0, -- the id -> slot map (0: empty)
        chunks = {}, live = {}, cur = 0, pos = CHUNK, -- the arena: chunk number -> bytes, live results
        max = max_results, retention = retention, hooks = {}, as_json = as_json or false,
    }, Store)
    return self
end


-- The ring slot of the i-th kept result (0 = the oldest).
local function slot_of(self, i)
    return (self.head + i) % self.cap + 1
end


-- ===== THE ARENA =====

-- Room for `size` bytes: chunk number and offset. An entry larger than a
-- chunk gets a chunk of its own.
local function alloc(self, size)
    if size > CHUNK then
        local c = self.cur
        if self.live[c] == 0 then self.chunks[c], self.live[c] = nil, nil end
        c = c + 1
        self.cur = c
        self.chunks[c], self.live[c] = bytes_ct(size), 0
        self.pos = CHUNK -- the next entry starts a new chunk
        return c, 0
    end
    if self.pos + size > CHUNK or not self.chunks[self.cur] then
        local c = self.cur
        -- The chunk left behind goes now if nothing in it is kept (its
        -- last result went while it was still the current one).
        if self.live[c] == 0 then self.chunks[c], self.live[c] = nil, nil end
        c = c + 1
        self.cur, self.pos = c, 0
        self.chunks[c], self.live[c] = bytes_ct(CHUNK), 0
    end
    local off = self.pos
    self.pos = off + size
    return self.cur, off
end


-- A result's bytes are no longer needed; its chunk goes with its last
-- one, unless more may still be written to it.
local function release(self, c)
    local left = self.live[c] - 1
    if left == 0 and (c ~= self.cur or self.pos == CHUNK) then
        self.chunks[c], self.live[c] = nil, nil
    else
        self.live[c] = left
    end
end


-- The id of slot k, as a Lua value.
local function id_at(self, k)
    local c = self.r[k].chunk
    if c < 0 then return self.oids[k] end
    return ffi_string(self.chunks[c] + self.r[k].off, self.r[k].idlen)
end


-- ===== THE ID -> SLOT MAP =====

-- The map's position of slot k (which it holds).
local function pos_of(self, k)
    local ix, mask = self.ix, self.mask
    local i = band(self.r[k].hash, mask)
    while ix[i] ~= k do i = band(i + 1, mask) end
    return i
end


-- The slot of string id (of hash h), or nil.
local function find(self, id, h)
    local ix, mask = self.ix, self.mask
    local i = band(h, mask)
    local len = #id
    while true do
        local k = ix[i]
        if k == 0 then return nil end
        if self.r[k].hash == h and self.r[k].idlen == len
            and memcmp(self.chunks[self.r[k].chunk] + self.r[k].off, id, len) == 0 then
            return k
        end
        i = band(i + 1, mask)
    end
end


local function map_insert(self, k)
    local ix, mask = self.ix, self.mask
    local i = band(self.r[k].hash, mask)
    while ix[i] ~= 0 do i = band(i + 1, mask) end
    ix[i] = k
end


-- Empties position i, moving back the entries after it that would no
-- longer be found (backward-shift deletion: no tombstones to pile up).
local function map_delete(self, i)
    local ix, mask, r = self.ix, self.mask, self.r
    ix[i] = 0
    local j = i
    while true do
        j = band(j + 1, mask)
        local k = ix[j]
        if k == 0 then return end
        -- Its home r is in (i, j] (cyclically): it stays where it is.
        local d = band(band(r[k].hash, mask) - i, mask)
        if d == 0 or d > band(j - i, mask) then
            ix[i], ix[j] = k, 0
            i = j
        end
    end
end


-- The slot of id, or nil.
local function slot_by_id(self, id)
    if type(id) == "string" then return find(self, id, hash(id)) end
    return self.oindex[id]
end


-- ===== THE RING =====

-- Forgets slot k's result: its map entry, bytes, value and lines.
local function clear(self, k)
    local c = self.r[k].chunk
    if c >= 0 then
        map_delete(self, pos_of(self, k))
        release(self, c)
    else
        self.oindex[self.oids[k]] = nil
        self.oids[k] = nil
    end
    self.r[k].st = 0
    self.vals[k], self.logs_of[k] = nil, nil
end


-- Doubles the ring (up to max), keeping the order: the oldest goes to
-- slot 1; the map is rebuilt, at most half full.
local function grow(self)
    local cap = self.cap == 0 and 64 or self.cap * 2
    if cap > self.max then cap = self.max end
    if cap < 1 then cap = 1 end
    local ring, vals, logs, oids, oindex = new_ring(cap + 1), {}, {}, {}, {}
    for i = 0, self.n - 1 do
        local k = slot_of(self, i)
        ffi_copy(ring + (i + 1), self.r + k, SLOT_SIZE)
        vals[i + 1], logs[i + 1] = self.vals[k], self.logs_of[k]
        local oid = self.oids[k]
        if oid ~= nil then
            oids[i + 1] = oid
            if self.r[k].st ~= 0 then oindex[oid] = i + 1 end
        end
    end
    self.r = ring
    self.vals, self.logs_of, self.oids, self.oindex = vals, logs, oids, oindex
    local size = 128
    while size < 2 * cap do size = size * 2 end
    self.ix, self.mask = i32_ct(size), size - 1
    for k = 1, self.n do
        if self.r[k].st ~= 0 and self.r[k].chunk >= 0 then map_insert(self, k) end
    end
    self.head, self.cap = 0, cap
end


-- Drops the oldest result (a slot whose result a newer one of the same id
-- replaced goes without a hook).
local function drop_oldest(self)
    local k = self.head % self.cap + 1
    local live = self.r[k].st ~= 0
    local id = live and #self.hooks > 0 and id_at(self, k)
    if live then clear(self, k) end
    self.head = (self.head + 1) % self.cap
    self.n = self.n - 1
    if not id then return end
    for _, fn in ipairs(self.hooks) do
        local ok, err = pcall(fn, id)
        if not ok then io_stderr:write("tide: eviction hook failed: ", tostring(err), "\n") end
    end
end


-- Drops the oldest results beyond max or older than retention.
function Store:evict()
    local now, retention = hrtime() - self.t0, self.retention
    while self.n > 0 do
        local k = self.head % self.cap + 1
        if self.r[k].st ~= 0 and self.n <= self.max and now - self.r[k].time < retention then break end
        drop_oldest(self)
    end
end


--- Keeps a finished job's result, and its kept log lines (nil: none),
-- which go when the result goes.
function Store:put(id, status, value, logs)
    local code = CODE[status] or error("results: unknown status " .. tostring(status), 2)
    local is_str = type(id) == "string"
    local h = is_str and hash(id) or 0
    local old
    if is_str then old = find(self, id, h) else old = self.oindex[id] end
    if old then clear(self, old) end -- its newer result replaces it
    -- Inline: the value's bytes follow the id's in the arena.
    local inline = false
    if code == DONE and is_str then
        local tv = type(value)
        if self.as_json and tv == "table" and not is_error(value) then
            local ok, text = pcall(jencode, value)
            if ok and text and #text <= M.INLINE_MAX then value, code, inline = text, DONE_JSON, true end
        elseif tv == "string" and #value <= M.INLINE_MAX then
            code, inline = DONE_STR, true
        end
    elseif code == DONE and self.as_json and type(value) == "table" and not is_error(value) then
        -- A server's store hands out what JSON carries, whatever the id.
        local ok, text = pcall(jencode, value)
        if ok then value = jdecode(text) end
    end
    if self.n == self.cap then
        if self.cap < self.max then grow(self) else drop_oldest(self) end
    end
    local k = slot_of(self, self.n)
    self.n = self.n + 1
    self.r[k].st, self.r[k].time = code, hrtime() - self.t0
    if is_str then
        local idlen, vlen = #id, inline and #value or 0
        local c, off = alloc(self, idlen + vlen)
        local base = self.chunks[c] + off
        ffi_copy(base, id, idlen)
        if inline then ffi_copy(base + idlen, value, vlen) end
        self.live[c] = self.live[c] + 1
        self.r[k].hash, self.r[k].chunk, self.r[k].off, self.r[k].idlen, self.r[k].vlen = h, c, off, idlen, vlen
        map_insert(self, k)
    else
        self.r[k].chunk = -1
        self.oids[k], self.oindex[id] = id, k
    end
    if not inline then self.vals[k] = value end
    if logs then self.logs_of[k] = logs end
    self:evict()
end


-- The value bytes slot k keeps in the arena (after its id's), as a string.
local function inline_text(self, k)
    return ffi_string(self.chunks[self.r[k].chunk] + self.r[k].off + self.r[k].idlen, self.r[k].vlen)
end


-- The value of slot k.
local function value_at(self, k, code)
    if code == DONE_JSON then return jdecode(inline_text(self, k)) end
    if code == DONE_STR then return inline_text(self, k) end
    return self.vals[k]
end


--- status, value of a kept result, or nil.
function Store:get(id)
    local k = slot_by_id(self, id)
    if not k then return nil end
    local code = self.r[k].st
    return NAME[code], value_at(self, k, code)
end


--- status, text of a kept result whose value the store keeps as JSON
-- text (a server's store: a successful job's table output), without
-- decoding it; status, nil, value for another kept result; nil for none.
function Store:get_json(id)
    local k = slot_by_id(self, id)
    if not k then return nil end
    local code = self.r[k].st
    if code ~= DONE_JSON then return NAME[code], nil, value_at(self, k, code) end
    return "done", inline_text(self, k)
end


--- The status of a kept result (without decoding its value), or nil.
function Store:status(id)
    local k = slot_by_id(self, id)
    if not k then return nil end
    return NAME[self.r[k].st]
end


--- The kept log lines of a kept result (runner.log_lines), or nil.
function Store:logs(id)
    local k = slot_by_id(self, id)
    return k and self.logs_of[k] or nil
end


--- Calls fn(id) for each id whose result is evicted from now on; returns
-- fn, the token for off_evict.
function Store:on_evict(fn)
    self.hooks[#self.hooks + 1] = fn
    return fn
end


function Store:off_evict(token)
    for i = #self.hooks, 1, -1 do
        if self.hooks[i] == token then
            table.remove(self.hooks, i)
            return true
        end
    end
    return false
end


--- Iterates over the kept ids, oldest first: for id, status, value in ...
function Store:each()
    local i = -1
    return function()
        while i < self.n - 1 do
            i = i + 1
            local k = slot_of(self, i)
            local code = self.r[k].st
            if code ~= 0 then return id_at(self, k), NAME[code], value_at(self, k, code) end
        end
        return nil
    end
end

return M
