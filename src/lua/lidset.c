/* A set of strings outside the Lua heap: the ids a `tide run` has handed
 * out (lua/tide/jsonl.lua), kept for the whole run to make every id
 * unique.
 *
 * As a Lua table, a million ids cost about 150 bytes each and, worse,
 * every GC cycle walked them all and LuaJIT's string table held them all:
 * a run over 300 000 lines with ids took 60 % more CPU than the same run
 * without. Here an id costs its bytes plus a 24-byte slot at most twice
 * over (the table doubles at half full), and the collector never sees it.
 *
 * Open addressing with linear probing on the XXH3 hash of the bytes; the
 * bytes themselves live in one growing arena.
 *
 * Ids that are whole numbers written plainly ("0", "42": no sign, no
 * leading zero, at most 18 digits) and come in increasing order, as the
 * ids of most inputs do, are kept apart as runs of consecutive numbers
 * instead (one run for 1, 2, 3, ...): no hash, no bytes, and no slot of a
 * table that outgrows the caches (at a million ids, the hash table's
 * cache misses were a tenth of a `tide run`). Such an id goes to the runs
 * when it is larger than every number in them (`top`), and to the hash
 * table otherwise (when the runs do not hold it), so a number in the
 * hash table is never larger than `top`, and one larger than `top` is in
 * neither. Ownership: the userdata owns the three arrays; __gc frees
 * them. */
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "lglue.h"

#define LIDSET_MT "tide.idset"

typedef struct {
    uint64_t hash;
    size_t off; /* into the arena; the slot is empty when len == SIZE_MAX */
    size_t len;
} lidset_slot;

typedef struct {
    uint64_t lo, hi; /* lo..hi, both included */
} lidset_run;

typedef struct {
    lidset_slot *slots;
    size_t mask;   /* slots - 1 (a power of two minus one), 0: none yet */
    size_t hcount; /* ids in the hash table */
    size_t count;  /* ids in all */
    char *arena;
    size_t alen, acap;
    lidset_run *runs; /* increasing, disjoint, not adjacent */
    size_t nruns, runcap;
    uint64_t top;     /* runs[nruns - 1].hi when nruns > 0 */
} lidset;

/* Whether s (n bytes) is a plain whole number (see the top), and then its
 * value in *v. */
static int lidset_number(const char *s, size_t n, uint64_t *v) {
    uint64_t x = 0;

    if (n == 0 || n > 18 || (s[0] == '0' && n > 1))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (d > 9)
            return 0;
        x = x * 10 + d;
    }
    *v = x;
    return 1;
}

/* Whether the runs hold v. */
static int lidset_in_runs(const lidset *set, uint64_t v) {
    size_t a = 0, b = set->nruns;

    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (v < set->runs[m].lo)
            b = m;
        else if (v > set->runs[m].hi)
            a = m + 1;
        else
            return 1;
    }
    return 0;
}

/* Adds v, larger than every number in the runs, to them. */
static void lidset_run_add(lidset *set, uint64_t v) {
    if (set->nruns > 0 && v == set->top + 1) {
        set->runs[set->nruns - 1].hi = v;
    } else {
        if (set->nruns == set->runcap) {
            set->runcap = set->runcap ? set->runcap * 2 : 16;
            set->runs = tide__xrealloc(set->runs,
                                       set->runcap * sizeof(*set->runs));
        }
        set->runs[set->nruns].lo = set->runs[set->nruns].hi = v;
        set->nruns++;
    }
    set->top = v;
    set->count++;
}

/* The slot of (s, n, h): its own, or the empty one where it would go. */
static lidset_slot *lidset_find(const lidset *set, const char *s, size_t n,
                                uint64_t h) {
    size_t i = (size_t)h & set->mask;
    for (;;) {
        lidset_slot *sl = &set->slots[i];
        if (sl->len == SIZE_MAX)
            return sl;
        if (sl->hash == h && sl->len == n &&
            memcmp(set->arena + sl->off, s, n) == 0)
            return sl;
        i = (i + 1) & set->mask;
    }
}

/* Doubles the slots (or makes the first 1024), placing every id again. */
static void lidset_grow(lidset *set) {
    size_t cap = set->mask ? (set->mask + 1) * 2 : 1024;
    lidset_slot *old = set->slots;
    size_t oldcap = set->mask ? set->mask + 1 : 0;
    set->slots = tide__xmalloc(cap * sizeof(*set->slots));
    for (size_t i = 0; i < cap; i++)
        set->slots[i].len = SIZE_MAX;
    set->mask = cap - 1;
    for (size_t i = 0; i < oldcap; i++) {
        if (old[i].len == SIZE_MAX)
            continue;
        size_t j = (size_t)old[i].hash & set->mask;
        while (set->slots[j].len != SIZE_MAX)
            j = (j + 1) & set->mask;
        set->slots[j] = old[i];
    }
    free(old);
}

static lidset *lidset_check(lua_State *L) {
    return luaL_checkudata(L, 1, LIDSET_MT);
}

/* idset() -> an empty set */
static int l_idset(lua_State *L) {
    lidset *set = lua_newuserdata(L, sizeof(*set));
    memset(set, 0, sizeof(*set));
    luaL_getmetatable(L, LIDSET_MT);
    lua_setmetatable(L, -2);
    return 1;
}

/* set:has(s) -> whether s is in the set */
static int l_idset_has(lua_State *L) {
    lidset *set = lidset_check(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    uint64_t v;
    if (lidset_number(s, n, &v) && set->nruns > 0) {
        if (v > set->top || lidset_in_runs(set, v)) {
            lua_pushboolean(L, v <= set->top);
            return 1;
        }
    }
    if (set->hcount == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lidset_slot *sl = lidset_find(set, s, n, XXH3_64bits(s, n));
    lua_pushboolean(L, sl->len != SIZE_MAX);
    return 1;
}

/* set:add(s) -> true when s was added, false when it was there already */
static int l_idset_add(lua_State *L) {
    lidset *set = lidset_check(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    uint64_t v;
    if (lidset_number(s, n, &v)) {
        if (set->nruns == 0 || v > set->top) {
            lidset_run_add(set, v);
            lua_pushboolean(L, 1);
            return 1;
        }
        if (lidset_in_runs(set, v)) {
            lua_pushboolean(L, 0);
            return 1;
        }
    }
    uint64_t h = XXH3_64bits(s, n);
    if (set->mask == 0 || (set->hcount + 1) * 2 > set->mask + 1)
        lidset_grow(set);
    lidset_slot *sl = lidset_find(set, s, n, h);
    if (sl->len != SIZE_MAX) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (set->acap - set->alen < n) {
        size_t cap = set->acap ? set->acap : 65536;
        while (cap - set->alen < n)
            cap *= 2;
        set->arena = tide__xrealloc(set->arena, cap);
        set->acap = cap;
    }
    memcpy(set->arena + set->alen, s, n);
    sl->hash = h;
    sl->off = set->alen;
    sl->len = n;
    set->alen += n;
    set->hcount++;
    set->count++;
    lua_pushboolean(L, 1);
    return 1;
}

/* #set -> the number of strings in it */
static int l_idset_len(lua_State *L) {
    lua_pushnumber(L, (double)lidset_check(L)->count);
    return 1;
}

static int l_idset_gc(lua_State *L) {
    lidset *set = lidset_check(L);
    free(set->slots);
    free(set->arena);
    free(set->runs);
    memset(set, 0, sizeof(*set));
    return 0;
}

void tide__lua_open_idset(lua_State *L) {
    static const luaL_Reg methods[] = {{"has", l_idset_has},
                                       {"add", l_idset_add},
                                       {NULL, NULL}};
    tide__lua_newclass(L, LIDSET_MT, methods, l_idset_gc);
    luaL_getmetatable(L, LIDSET_MT);
    lua_pushcfunction(L, l_idset_len);
    lua_setfield(L, -2, "__len");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_idset);
    lua_setfield(L, -2, "idset");
}
