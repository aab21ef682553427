/* The glue's helpers, one of each kind, for every file in src/lua/.
 *
 * They are the one traceback handler, protected calls with it, Lua
 * callbacks called from libuv callbacks, the failure return of a
 * lua_CFunction, and metatables for classes.
 *
 * Like luv's src/util.c, each shape of glue code that recurs is written
 * once here, so that its quirks (which message a non-string error gets,
 * what a hook does with an error no Lua code can catch) are decided in
 * one place. Nothing here keeps state. */
#include <stdarg.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

/* Pushes what tostring() makes of the value at idx and returns it. A
 * __tostring that raises or returns something else than a string gives
 * "(error object is a <type> value)": this runs inside message handlers,
 * where a second error would hide the first. */
static const char *lutil_tostring(lua_State *L, int idx) {
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
    case LUA_TNUMBER:
        lua_pushvalue(L, idx); /* lua_tostring converts the copy in place */
        return lua_tostring(L, -1);
    case LUA_TNIL:
        lua_pushliteral(L, "nil");
        return lua_tostring(L, -1);
    case LUA_TBOOLEAN:
        lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
        return lua_tostring(L, -1);
    default:
        break;
    }
    if (luaL_getmetafield(L, idx, "__tostring")) {
        lua_pushvalue(L, idx);
        if (lua_pcall(L, 1, 1, 0) == 0 && lua_type(L, -1) == LUA_TSTRING)
            return lua_tostring(L, -1);
        lua_pop(L, 1);
        return lua_pushfstring(L, "(error object is a %s value)",
                               luaL_typename(L, idx));
    }
    return lua_pushfstring(L, "%s: %p", luaL_typename(L, idx),
                           lua_topointer(L, idx));
}

void tide__lua_traceback(lua_State *L, lua_State *co, int level) {
    int err = lua_gettop(L);
    const char *msg = lutil_tostring(L, err);
    luaL_traceback(L, co, msg, level);
    lua_replace(L, err);
    lua_settop(L, err);
}

int tide__lua_msgh(lua_State *L) {
    lua_settop(L, 1);
    /* Level 1: the function that raised (level 0 is this handler). */
    tide__lua_traceback(L, L, 1);
    return 1;
}

/* The registry key of tide__lua_msgh, stored once per state by
 * tide__lua_open_util: a hook runs from a loop callback, outside any
 * protected call, where making the handler's closure could raise a memory
 * error (a state at its memory limit) through the loop's C frames. */
static char lutil_msgh_key;

/* Pushes the message handler: the stored one, or a new closure in a
 * state tide.core was not opened in. */
static void lutil_push_msgh(lua_State *L) {
    lua_pushlightuserdata(L, &lutil_msgh_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        lua_pushcfunction(L, tide__lua_msgh);
    }
}

void tide__lua_open_util(lua_State *L) {
    lua_pushlightuserdata(L, &lutil_msgh_key);
    lua_pushcfunction(L, tide__lua_msgh);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

int tide__lua_pcall(lua_State *L, int nargs, int nres) {
    int fn = lua_gettop(L) - nargs;
    lutil_push_msgh(L);
    lua_insert(L, fn);
    int rc = lua_pcall(L, nargs, nres, fn);
    lua_remove(L, fn);
    return rc;
}

int tide__lua_pcall_hook(lua_State *L, int nargs, const char *what) {
    int rc = tide__lua_pcall(L, nargs, 0);
    if (rc != 0) {
        fprintf(stderr, "tide: error in %s: %s\n", what,
                lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    return rc;
}

void tide__lua_hook_init(lua_State *L, tide__lua_hook *h, int fn_idx) {
    /* The function rides on the thread's stack (its first slot), so one
     * reference anchors both, and h changes only once nothing more can
     * raise: a memory error in between leaves garbage, not a half-set
     * hook. */
    if (fn_idx < 0 && fn_idx > LUA_REGISTRYINDEX)
        fn_idx = lua_gettop(L) + fn_idx + 1;
    lua_State *T = lua_newthread(L);
    lua_pushvalue(L, fn_idx);
    lua_xmove(L, T, 1);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    h->T = T;
    h->thread_ref = ref;
}

void tide__lua_hook_free(tide__lua_hook *h) {
    if (h->T == NULL)
        return;
    luaL_unref(h->T, LUA_REGISTRYINDEX, h->thread_ref);
    h->T = NULL;
}

lua_State *tide__lua_hook_push(tide__lua_hook *h) {
    lua_settop(h->T, 1);
    lua_pushvalue(h->T, 1);
    return h->T;
}

int tide__lua_fail(lua_State *L, int err, const char *fmt, ...) {
    const char *name = NULL;
    if (err > 0)
        name = uv_err_name(uv_translate_sys_error(err));
    else if (err < 0 && (name = tide_err_name(err)) == NULL)
        name = uv_err_name(err);
    va_list ap;
    va_start(ap, fmt);
    lua_pushnil(L);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    if (name == NULL)
        return 2;
    lua_pushstring(L, name);
    return 3;
}

void tide__lua_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                        lua_CFunction gc) {
    luaL_newmetatable(L, name);
    if (methods) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}
