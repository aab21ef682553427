/* tide.core's result cache object (src/cache.c).
 *
 * The userdata holds the cache pointer; close() or the garbage collector
 * releases it (the writer commits what is queued and is joined), and a
 * closed object raises on use. Every method runs on the thread that owns
 * the Lua state: the loop thread of the executor that made it. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

#define LC_MT "tide.cache"

typedef struct {
    tide__cache *c;
} lcache;

static tide__cache *lc_check(lua_State *L) {
    lcache *u = luaL_checkudata(L, 1, LC_MT);
    if (u->c == NULL)
        luaL_error(L, "the cache is closed");
    return u->c;
}

/* cache_open(path) -> cache | nil, message, code: EIO (the place cannot
 * hold a cache) or EINVAL (the file is not a cache tide can use) */
static int l_cache_open(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    lcache *u = lua_newuserdata(L, sizeof(*u));
    u->c = NULL;
    luaL_getmetatable(L, LC_MT);
    lua_setmetatable(L, -2);
    char err[512];
    int rc = tide__cache_open(path, &u->c, err, sizeof err);
    if (rc != 0)
        return tide__lua_fail(L, rc, "%s", err);
    return 1;
}

/* c:get(key, ttl|nil) -> value | false (no entry, or older than ttl)
 *                     | nil, message, code (EAGAIN: locked; EIO) */
static int l_get(lua_State *L) {
    tide__cache *c = lc_check(L);
    size_t klen, vlen;
    const char *key = luaL_checklstring(L, 2, &klen);
    double ttl = luaL_optnumber(L, 3, 0);
    const char *val;
    char err[256];
    int rc = tide__cache_get(c, key, klen, ttl, &val, &vlen, err, sizeof err);
    if (rc == 1) {
        lua_pushlstring(L, val, vlen);
        tide__cache_get_end(c);
        return 1;
    }
    if (rc == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return tide__lua_fail(L, rc, "%s", err);
}

/* c:put(key, task, value) -> whether it was queued */
static int l_put(lua_State *L) {
    tide__cache *c = lc_check(L);
    size_t klen, tlen, vlen;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *task = luaL_checklstring(L, 3, &tlen);
    const char *val = luaL_checklstring(L, 4, &vlen);
    lua_pushboolean(L, tide__cache_put(c, key, klen, task, tlen, val, vlen) == 0);
    return 1;
}

/* c:hit(key) -> whether it was queued */
static int l_hit(lua_State *L) {
    tide__cache *c = lc_check(L);
    size_t klen;
    const char *key = luaL_checklstring(L, 2, &klen);
    lua_pushboolean(L, tide__cache_hit(c, key, klen) == 0);
    return 1;
}

/* c:clear(older_than|nil) -> whether it was queued: removes the entries
 * made more than older_than seconds ago, or all of them */
static int l_clear(lua_State *L) {
    tide__cache *c = lc_check(L);
    double older = lua_isnoneornil(L, 2) ? -1 : luaL_checknumber(L, 2);
    lua_pushboolean(L, tide__cache_clear(c, older) == 0);
    return 1;
}

/* c:stats(older_than|nil) -> { entries, bytes, hits, oldest, newest,
 * older, dropped } | nil, message */
static int l_stats(lua_State *L) {
    tide__cache *c = lc_check(L);
    double older = luaL_optnumber(L, 2, 0);
    tide__cache_stats_t s;
    char err[256];
    if (tide__cache_stats(c, older, &s, err, sizeof err) != 0)
        return tide__lua_fail(L, 0, "%s", err);
    lua_createtable(L, 0, 7);
    lua_pushnumber(L, (double)s.entries);
    lua_setfield(L, -2, "entries");
    lua_pushnumber(L, (double)s.bytes);
    lua_setfield(L, -2, "bytes");
    lua_pushnumber(L, (double)s.hits);
    lua_setfield(L, -2, "hits");
    lua_pushnumber(L, (double)s.older);
    lua_setfield(L, -2, "older");
    lua_pushnumber(L, (double)s.dropped);
    lua_setfield(L, -2, "dropped");
    if (s.entries > 0) {
        lua_pushnumber(L, s.oldest);
        lua_setfield(L, -2, "oldest");
        lua_pushnumber(L, s.newest);
        lua_setfield(L, -2, "newest");
    }
    return 1;
}

/* c:error() -> message | nil: why the writer stopped */
static int l_error(lua_State *L) {
    tide__cache *c = lc_check(L);
    char err[256];
    if (!tide__cache_error(c, err, sizeof err))
        return 0;
    lua_pushstring(L, err);
    return 1;
}

/* c:close() -> true | nil, message: commits what is queued and stops the
 * writer; a second close is harmless. */
static int l_close(lua_State *L) {
    lcache *u = luaL_checkudata(L, 1, LC_MT);
    tide__cache *c = u->c;
    u->c = NULL;
    char err[256];
    if (c && tide__cache_close(c, err, sizeof err) != 0)
        return tide__lua_fail(L, 0, "%s", err);
    lua_pushboolean(L, 1);
    return 1;
}

/* A cache dropped without close() is closed by the GC, keeping what was
 * queued, as close() would. */
static int l_gc(lua_State *L) {
    lcache *u = luaL_checkudata(L, 1, LC_MT);
    tide__cache *c = u->c;
    u->c = NULL;
    char err[256];
    if (c && tide__cache_close(c, err, sizeof err) != 0)
        fprintf(stderr, "tide: cache: %s\n", err);
    return 0;
}

/* writable(path) -> true | nil, message: whether this process may write
 * path (a file, or a directory to create files in) */
static int l_writable(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    if (access(path, W_OK) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    return tide__lua_fail(L, 0, "%s: %s", path, strerror(errno));
}

/* cache_now() -> the wall clock in seconds (what entries are dated by) */
static int l_cache_now(lua_State *L) {
    lua_pushnumber(L, tide__cache_now());
    return 1;
}

void tide__lua_open_cache(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"get", l_get},     {"put", l_put},     {"hit", l_hit},
        {"clear", l_clear}, {"stats", l_stats}, {"error", l_error},
        {"close", l_close}, {NULL, NULL}};
    tide__lua_newclass(L, LC_MT, methods, l_gc);
    static const luaL_Reg funcs[] = {{"cache_open", l_cache_open},
                                     {"cache_now", l_cache_now},
                                     {"writable", l_writable},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
