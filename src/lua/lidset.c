/* A set of strings outside the Lua heap, each with a small number: the
 * ids a `tide run` has handed out (lua/tide/jsonl.lua), kept for the
 * whole run to make every id unique, and the jobs `tide serve` keeps
 * (lua/tide/serve.lua: the version each ran, and the ids whose results
 * were evicted).
 *
 * As a Lua table, a million ids cost about 150 bytes each and, worse,
 * every GC cycle walked them all and LuaJIT's string table held them all:
 * a run over 300 000 lines with ids took 60 % more CPU than the same run
 * without. A big table that keeps changing costs more still: the
 * collector traverses it again, whole, in the atomic step of every cycle
 * (the "gray again" list), so 100 000 ids in a changing table made pauses
 * of 10-25 ms in tide serve. Here an id costs its bytes plus a 24-byte
 * slot at most twice over (the table doubles at half full), and the
 * collector never sees it.
 *
 * Open addressing with linear probing on the XXH3 hash of the bytes; the
 * bytes themselves live in one growing arena. Removal shifts the probe
 * run back (no tombstones, so lookups never slow down with churn) and
 * leaves the bytes dead in the arena; the arena is compacted when its
 * dead bytes outweigh its live ones, so a set with churn stays bounded by
 * what it holds.
 *
 * A set (core.idset, not core.idmap) keeps ids that are whole numbers
 * written plainly ("0", "42": no sign, no leading zero, at most 18
 * digits) and come in increasing order, as the ids of most inputs do,
 * apart as runs of consecutive numbers (one run for 1, 2, 3, ...): no
 * hash, no bytes, and no slot of a table that outgrows the caches (at a
 * million ids, the hash table's cache misses were a tenth of a `tide
 * run`). Such an id goes to the runs when it is larger than every number
 * in them (`top`), and to the hash table otherwise (when the runs do not
 * hold it), so a number in the hash table is never larger than `top`, and
 * one larger than `top` is in neither. A map (core.idmap) keeps a value
 * with each id and can remove ids, so it has no runs.
 *
 * Growing is incremental, as Redis's dict rehashes: the doubled table
 * comes from calloc (an empty slot is all zero bytes, so its pages are
 * not touched until used) and each later add moves a few slots of the
 * old table into it. Placing 65 536 ids at once took 21 ms, most of it
 * first touches of the new table's pages (page faults are slow on a
 * virtual machine): a stall of a whole loop turn in tide serve. While
 * both tables exist, the old one keeps every slot as it was (so its
 * probe runs stay whole); the slots below `moved` are copies, ignored,
 * and a removal from above it leaves a tombstone.
 *
 * Ownership: the userdata owns the tables, the arena and the runs;
 * __gc frees them. */
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "lglue.h"

#define LIDSET_MT "tide.idset"
#define LIDSET_TOMB UINT32_MAX /* lenp1 of a slot removed from the old table */
#define LIDSET_MOVES 8         /* old slots moved per add while growing */

typedef struct {
    uint64_t hash;
    size_t off;     /* into the arena */
    uint32_t lenp1; /* the string's length plus one; 0: the slot is empty */
    uint32_t val;   /* the number kept with the string (0 unless given) */
} lidset_slot;

typedef struct {
    uint64_t lo, hi; /* lo..hi, both included */
} lidset_run;

typedef struct {
    lidset_slot *slots; /* the table new strings go to */
    size_t mask;        /* its slots - 1 (a power of two minus one), 0: none yet */
    lidset_slot *old;   /* while growing: the table before, else NULL */
    size_t omask;       /* its slots - 1 */
    size_t moved;       /* the old table's slots below this were moved */
    size_t hcount;      /* strings in the hash tables (either one) */
    size_t count;       /* strings in all (the hash tables and the runs) */
    char *arena;
    size_t alen, acap;
    size_t dead; /* bytes of removed strings still in the arena */
    int map;     /* a core.idmap: values, removal, and no runs */
    lidset_run *runs; /* increasing, disjoint, not adjacent */
    size_t nruns, runcap;
    uint64_t top; /* runs[nruns - 1].hi when nruns > 0 */
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

static int lidset_is(const lidset *set, const lidset_slot *sl, const char *s,
                     size_t n, uint64_t h) {
    /* (An empty string may be all the arena holds, and no arena.) */
    return sl->hash == h && sl->lenp1 == n + 1 &&
           (n == 0 || memcmp(set->arena + sl->off, s, n) == 0);
}

/* The slot of (s, n, h) in the new table: its own, or the empty one where
 * it would go. */
static lidset_slot *lidset_find(const lidset *set, const char *s, size_t n,
                                uint64_t h) {
    size_t i = (size_t)h & set->mask;
    for (;;) {
        lidset_slot *sl = &set->slots[i];
        if (sl->lenp1 == 0 || lidset_is(set, sl, s, n, h))
            return sl;
        i = (i + 1) & set->mask;
    }
}

/* The slot of (s, n, h) in the old table, not yet moved, or NULL. */
static lidset_slot *lidset_find_old(const lidset *set, const char *s, size_t n,
                                    uint64_t h) {
    if (set->old == NULL)
        return NULL;
    size_t i = (size_t)h & set->omask;
    for (;;) {
        lidset_slot *sl = &set->old[i];
        if (sl->lenp1 == 0)
            return NULL;
        if (i >= set->moved && sl->lenp1 != LIDSET_TOMB &&
            lidset_is(set, sl, s, n, h))
            return sl;
        i = (i + 1) & set->omask;
    }
}

/* Moves up to k slots of the old table to the new one; frees the old
 * table once all are moved. */
static void lidset_move(lidset *set, size_t k) {
    while (set->old && k-- > 0) {
        lidset_slot *sl = &set->old[set->moved];
        if (sl->lenp1 != 0 && sl->lenp1 != LIDSET_TOMB) {
            size_t j = (size_t)sl->hash & set->mask;
            while (set->slots[j].lenp1 != 0)
                j = (j + 1) & set->mask;
            set->slots[j] = *sl;
        }
        if (set->moved++ == set->omask) {
            free(set->old);
            set->old = NULL;
        }
    }
}

/* Makes room for one more string: the first table (1024 slots), or a
 * table twice the size to grow into. */
static void lidset_reserve(lidset *set) {
    if (set->mask == 0) {
        set->slots = tide__xcalloc(1024, sizeof(*set->slots));
        set->mask = 1023;
        return;
    }
    if ((set->hcount + 1) * 2 <= set->mask + 1)
        return;
    /* Still growing at half full: only when adds outran the moves, which
     * LIDSET_MOVES > 2 rules out; finish the move first all the same. */
    lidset_move(set, SIZE_MAX);
    set->old = set->slots;
    set->omask = set->mask;
    set->moved = 0;
    set->slots = tide__xcalloc(set->mask + 1, 2 * sizeof(*set->slots));
    set->mask = set->mask * 2 + 1;
}

/* Copies the live strings into a new arena, in slot order (only when the
 * set is not growing: the old table's slots would need it too). */
static void lidset_compact(lidset *set) {
    size_t live = set->alen - set->dead;
    size_t cap = 65536;
    while (cap < live)
        cap *= 2;
    char *arena = tide__xmalloc(cap);
    size_t at = 0;
    for (size_t i = 0; i <= set->mask; i++) {
        lidset_slot *sl = &set->slots[i];
        if (sl->lenp1 == 0)
            continue;
        memcpy(arena + at, set->arena + sl->off, sl->lenp1 - 1);
        sl->off = at;
        at += sl->lenp1 - 1;
    }
    free(set->arena);
    set->arena = arena;
    set->alen = at;
    set->acap = cap;
    set->dead = 0;
}

/* Removes the string of slot sl, in either table. From the new table it
 * moves later slots of the probe run back, so that every string stays
 * reachable from its home slot without a gap on the way; from the old
 * one it leaves a tombstone (that table is dropped when the move ends). */
static void lidset_unlink(lidset *set, lidset_slot *sl) {
    set->dead += sl->lenp1 - 1;
    set->hcount--;
    set->count--;
    uintptr_t at = (uintptr_t)sl, old = (uintptr_t)set->old;
    if (set->old && at >= old && at <= old + set->omask * sizeof(*sl)) {
        sl->lenp1 = LIDSET_TOMB;
        return;
    }
    size_t i = (size_t)(sl - set->slots), j = i;
    for (;;) {
        j = (j + 1) & set->mask;
        lidset_slot *next = &set->slots[j];
        if (next->lenp1 == 0)
            break;
        size_t home = (size_t)next->hash & set->mask;
        /* The string at j may move to i when its home is not in (i, j],
         * cyclically: then the gap at i lies on its probe path. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            set->slots[i] = *next;
            i = j;
        }
    }
    set->slots[i].lenp1 = 0;
    if (set->old == NULL && set->dead > 65536 && set->dead > set->alen - set->dead)
        lidset_compact(set);
}

static lidset *lidset_check(lua_State *L) {
    return luaL_checkudata(L, 1, LIDSET_MT);
}

static lidset *lidset_new(lua_State *L, int map) {
    lidset *set = lua_newuserdata(L, sizeof(*set));
    memset(set, 0, sizeof(*set));
    set->map = map;
    luaL_getmetatable(L, LIDSET_MT);
    lua_setmetatable(L, -2);
    return set;
}

/* idset() -> an empty set */
static int l_idset(lua_State *L) {
    lidset_new(L, 0);
    return 1;
}

/* idmap() -> an empty map (a set with a value for each id, and removal) */
static int l_idmap(lua_State *L) {
    lidset_new(L, 1);
    return 1;
}

/* The map at argument 1: a set made by idset() has no values to give. */
static lidset *lidset_checkmap(lua_State *L) {
    lidset *set = lidset_check(L);
    if (!set->map)
        luaL_argerror(L, 1, "a core.idmap expected (a core.idset keeps no values "
                            "and removes nothing)");
    return set;
}

/* The slot holding s (n bytes) in the hash tables, or NULL. */
static lidset_slot *lidset_lookup(const lidset *set, const char *s, size_t n) {
    if (set->hcount == 0)
        return NULL;
    uint64_t h = XXH3_64bits(s, n);
    lidset_slot *sl = lidset_find(set, s, n, h);
    return sl->lenp1 != 0 ? sl : lidset_find_old(set, s, n, h);
}

/* The number argument i as a slot value: an integer in [0, 2^32 - 1]. */
static uint32_t lidset_checkval(lua_State *L, int i) {
    lua_Number v = luaL_optnumber(L, i, 0);
    if (!(v >= 0 && v <= 4294967295.0) || v != (lua_Number)(uint32_t)v)
        luaL_argerror(L, i, "an integer from 0 to 2^32 - 1 expected");
    return (uint32_t)v;
}

/* The string argument 2 as an id to add: one short enough for a slot. */
static const char *lidset_checkid(lua_State *L, size_t *n) {
    const char *s = luaL_checklstring(L, 2, n);
    if (*n >= LIDSET_TOMB - 1)
        luaL_argerror(L, 2, "string too long for an id set");
    return s;
}

/* Adds s (n bytes) to the hash tables with value val, or finds it there:
 * its slot, and whether it is new. */
static lidset_slot *lidset_insert(lidset *set, const char *s, size_t n,
                                  uint32_t val, int *added) {
    uint64_t h = XXH3_64bits(s, n);
    *added = 0;
    if (set->hcount > 0) {
        lidset_slot *sl = lidset_find(set, s, n, h);
        if (sl->lenp1 != 0)
            return sl;
        if ((sl = lidset_find_old(set, s, n, h)) != NULL)
            return sl;
    }
    lidset_reserve(set);
    lidset_move(set, LIDSET_MOVES);
    if (set->acap - set->alen < n) {
        size_t cap = set->acap ? set->acap : 65536;
        while (cap - set->alen < n)
            cap *= 2;
        set->arena = tide__xrealloc(set->arena, cap);
        set->acap = cap;
    }
    if (n > 0) /* the arena may not exist yet (NULL is UB even for 0 bytes) */
        memcpy(set->arena + set->alen, s, n);
    lidset_slot *sl = lidset_find(set, s, n, h);
    sl->hash = h;
    sl->off = set->alen;
    sl->lenp1 = (uint32_t)n + 1;
    sl->val = val;
    set->alen += n;
    set->hcount++;
    set->count++;
    *added = 1;
    return sl;
}

/* set:has(s) -> whether s is in the set */
static int l_idset_has(lua_State *L) {
    lidset *set = lidset_check(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    uint64_t v;
    if (set->nruns > 0 && lidset_number(s, n, &v) &&
        (v > set->top || lidset_in_runs(set, v))) {
        lua_pushboolean(L, v <= set->top);
        return 1;
    }
    lua_pushboolean(L, lidset_lookup(set, s, n) != NULL);
    return 1;
}

/* set:add(s [, val]) -> true when s was added (with val, default 0, in a
 * map), false when it was there already (its value unchanged) */
static int l_idset_add(lua_State *L) {
    lidset *set = lidset_check(L);
    size_t n;
    const char *s = lidset_checkid(L, &n);
    uint32_t val = lidset_checkval(L, 3);
    if (!set->map) {
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
    }
    int added;
    lidset_insert(set, s, n, val, &added);
    lua_pushboolean(L, added);
    return 1;
}

/* set:put(s, val): adds s, or changes its value */
static int l_idset_put(lua_State *L) {
    lidset *set = lidset_checkmap(L);
    size_t n;
    const char *s = lidset_checkid(L, &n);
    uint32_t val = lidset_checkval(L, 3);
    int added;
    lidset_insert(set, s, n, val, &added)->val = val;
    return 0;
}

/* set:get(s) -> the value kept with s, or nil when s is not in the set */
static int l_idset_get(lua_State *L) {
    lidset *set = lidset_checkmap(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    lidset_slot *sl = lidset_lookup(set, s, n);
    if (sl)
        lua_pushnumber(L, sl->val);
    else
        lua_pushnil(L);
    return 1;
}

/* set:remove(s) -> true when s was in the set (and is no more) */
static int l_idset_remove(lua_State *L) {
    lidset *set = lidset_checkmap(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    lidset_slot *sl = lidset_lookup(set, s, n);
    if (sl)
        lidset_unlink(set, sl);
    lua_pushboolean(L, sl != NULL);
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
    free(set->old);
    free(set->arena);
    free(set->runs);
    memset(set, 0, sizeof(*set));
    return 0;
}

void tide__lua_open_idset(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"has", l_idset_has}, {"add", l_idset_add},       {"put", l_idset_put},
        {"get", l_idset_get}, {"remove", l_idset_remove}, {NULL, NULL}};
    tide__lua_newclass(L, LIDSET_MT, methods, l_idset_gc);
    luaL_getmetatable(L, LIDSET_MT);
    lua_pushcfunction(L, l_idset_len);
    lua_setfield(L, -2, "__len");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_idset);
    lua_setfield(L, -2, "idset");
    lua_pushcfunction(L, l_idmap);
    lua_setfield(L, -2, "idmap");
}
