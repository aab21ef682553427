/* Per-state memory limits (issue 18): a Lua state that runs out of its
 * limit fails the attempt that asked for the memory with ENOMEM, and the
 * engine carries on.
 *
 * DESIGN
 * ------
 * Debian's LuaJIT 2.1 on x86-64 is built with GC64, so it honours a
 * custom lua_Alloc; lua_getallocf/lua_setallocf work on any state, ours or
 * a stock luajit's (the Lua module). So the limit wraps the state's own
 * allocator (LuaJIT's fast one, kept underneath) with one that counts the
 * bytes the state holds. It is installed on a state the first time a
 * limit is set, and its record is a userdata anchored in the registry:
 * at lua_close its __gc puts the original allocator back before the
 * userdata itself is freed, so nothing is called through freed memory.
 *
 * Each state is only ever used by one thread at a time, so the counters
 * need no atomics.
 *
 * LuaJIT has no emergency collection: an allocation that fails raises a
 * memory error (its message, "not enough memory", is a string interned at
 * state creation: raising it allocates nothing). The failure path then has
 * to build an error record, emit it and write a result line, all of which
 * allocate. Hence the headroom: the first allocation that would take the
 * state past its limit fails and *trips* the limit; from then on,
 * allocations may use up to limit + headroom, so the record of the failed
 * attempt is built and written from memory kept for it. The limit is armed
 * again by tide__lua_mem_rearm (after the failed attempt was handled: a
 * full collection reclaims what the attempt left), or by itself once the
 * state holds less than limit - headroom (a trip outside a task body).
 * Past limit + headroom every allocation fails: a state that keeps that
 * much reachable is beyond saving. */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

#define LMEM_KEY "tide.mem"
#define LMEM_MIN_HEADROOM (1u << 20)

typedef struct {
    lua_Alloc orig;
    void *origud;
    size_t used;     /* bytes the state holds (LuaJIT's own count) */
    size_t limit;    /* 0: none */
    size_t headroom; /* kept for the failure path once tripped */
    int armed;       /* an allocation past the limit fails and trips it */
    int tripped;     /* tripped since the last rearm */
    double trips;    /* in total */
    size_t after_gc; /* what the state held after the last relief */
    int paced;       /* the collector was set to run harder */
} lmem;

static void *lmem_alloc(void *ud, void *p, size_t osize, size_t nsize) {
    lmem *m = ud;
    size_t old = p ? osize : 0;
    if (nsize == 0) {
        m->used -= old;
        if (!m->armed && m->used + m->headroom < m->limit)
            m->armed = 1; /* well below again: a trip outside a body */
        return m->orig(m->origud, p, osize, 0);
    }
    if (m->limit && nsize > old) {
        size_t grow = nsize - old;
        size_t cap = m->armed ? m->limit : m->limit + m->headroom;
        if (m->used > cap || grow > cap - m->used) {
            if (m->armed) {
                m->armed = 0;
                m->tripped = 1;
                m->trips++;
            }
            return NULL; /* LuaJIT raises "not enough memory" */
        }
    }
    void *q = m->orig(m->origud, p, osize, nsize);
    if (q)
        m->used = m->used - old + nsize;
    return q;
}

/* __gc of the record, run by lua_close (it is anchored in the registry):
 * the original allocator frees everything left, this userdata included. */
static int lmem_gc(lua_State *L) {
    lmem *m = lua_touserdata(L, 1);
    void *ud;
    if (m && lua_getallocf(L, &ud) == lmem_alloc && ud == m)
        lua_setallocf(L, m->orig, m->origud);
    return 0;
}

/* The state's record, or NULL when no limit was ever set on it. */
static lmem *lmem_get(lua_State *L) {
    void *ud;
    if (lua_getallocf(L, &ud) != lmem_alloc)
        return NULL;
    return ud;
}

/* Sets the limit of L's state (0: none), installing the counting
 * allocator on first use. The headroom is an eighth of the limit, at
 * least 1 MiB. May raise (a Lua memory error) before anything changes. */
void tide__lua_mem_limit(lua_State *L, size_t limit) {
    lmem *m = lmem_get(L);
    if (m == NULL) {
        if (limit == 0)
            return;
        m = lua_newuserdata(L, sizeof(*m));
        memset(m, 0, sizeof(*m));
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, lmem_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, LMEM_KEY);
        m->orig = lua_getallocf(L, &m->origud);
        /* What LuaJIT counts now (this userdata included): every later
         * free passes its size, so the count stays exact. */
        m->used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 +
                  (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
        lua_setallocf(L, lmem_alloc, m);
    }
    m->limit = limit;
    m->headroom = limit / 8 > LMEM_MIN_HEADROOM ? limit / 8 : LMEM_MIN_HEADROOM;
    m->armed = 1;
    m->tripped = 0;
    tide__lua_mem_relieve(L); /* paces the collector for what is there */
}

/* L's limit in bytes (0: none). */
size_t tide__lua_mem_get(lua_State *L) {
    lmem *m = lmem_get(L);
    return m ? m->limit : 0;
}

static int lmem_collect_protected(lua_State *L) {
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}

/* A full collection that never raises: a finalizer's error (or a memory
 * error in one) is dropped here, where no protected call may be around
 * (a worker's job loop, the engine's drain, the runner's own code). */
static void lmem_collect(lua_State *L) {
    int top = lua_gettop(L);
    lua_cpcall(L, lmem_collect_protected, NULL);
    lua_settop(L, top);
}

/* Whether L's limit tripped since the last rearm. */
int tide__lua_mem_tripped(lua_State *L) {
    lmem *m = lmem_get(L);
    return m && m->tripped;
}

/* After the attempt that tripped the limit was handled: a full collection
 * reclaims what it left, and the limit is armed again, so that the next
 * allocation past it fails its own attempt. */
void tide__lua_mem_rearm(lua_State *L) {
    lmem *m = lmem_get(L);
    if (m == NULL || !m->tripped)
        return;
    lmem_collect(L);
    m->tripped = 0;
    m->armed = 1;
    m->after_gc = m->used;
}

/* Between slices of work (the loop's drain, a worker's job): a state
 * past three quarters of its limit, having allocated a sixteenth of it
 * since the last time, is collected in full. LuaJIT's collector lets
 * garbage reach about the size of what is live before a cycle ends, so
 * without this a state full of garbage would trip its limit at some
 * allocation of the engine's own rather than in the body that made the
 * garbage. The cost stays bounded: one full collection per limit/16
 * bytes allocated, only near the limit. */
void tide__lua_mem_relieve(lua_State *L) {
    lmem *m = lmem_get(L);
    if (m == NULL || m->limit == 0)
        return;
    /* Past a third of the limit the collector starts each cycle as soon
     * as the last ended (pause 100, LuaJIT's default is 200: a new cycle
     * when the heap doubled) and works twice as fast (step multiplier
     * 400), so that garbage made inside one body is reclaimed before it
     * reaches the limit; below a sixth it goes back to its defaults. */
    int hard = m->paced ? m->used > m->limit / 6 : m->used > m->limit / 3;
    if (hard != m->paced) {
        m->paced = hard;
        lua_gc(L, LUA_GCSETPAUSE, hard ? 100 : 200);
        lua_gc(L, LUA_GCSETSTEPMUL, hard ? 400 : 200);
    }
    if (m->used <= m->limit / 4 * 3 || m->used < m->after_gc + m->limit / 16)
        return;
    lmem_collect(L);
    m->after_gc = m->used;
}

/* mem_limit(bytes) sets the calling state's limit (0: none). */
static int l_mem_limit(lua_State *L) {
    lua_Number n = luaL_checknumber(L, 1);
    if (!(n >= 0 && n <= 9007199254740992.0))
        return luaL_argerror(L, 1, "a number of bytes >= 0");
    tide__lua_mem_limit(L, (size_t)n);
    return 0;
}

/* mem_stats() -> used, limit, trips (used is nil without a limit) */
static int l_mem_stats(lua_State *L) {
    lmem *m = lmem_get(L);
    if (m == NULL) {
        lua_pushnil(L);
        lua_pushnumber(L, 0);
        lua_pushnumber(L, 0);
        return 3;
    }
    lua_pushnumber(L, (lua_Number)m->used);
    lua_pushnumber(L, (lua_Number)m->limit);
    lua_pushnumber(L, m->trips);
    return 3;
}

/* mem_tripped() -> the limit in bytes when it tripped since the last
 * rearm, else false */
static int l_mem_tripped(lua_State *L) {
    lmem *m = lmem_get(L);
    if (m && m->tripped)
        lua_pushnumber(L, (lua_Number)m->limit);
    else
        lua_pushboolean(L, 0);
    return 1;
}

static int l_mem_rearm(lua_State *L) {
    tide__lua_mem_rearm(L);
    return 0;
}

void tide__lua_open_mem(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"mem_limit", l_mem_limit},     {"mem_stats", l_mem_stats},
        {"mem_tripped", l_mem_tripped}, {"mem_rearm", l_mem_rearm},
        {NULL, NULL}};
    for (const luaL_Reg *r = funcs; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
}
