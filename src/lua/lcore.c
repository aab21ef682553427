/* luaopen_tide_core: the C half of require "tide". */
#include <dlfcn.h> /* dladdr, RTLD_NODELETE: _GNU_SOURCE from the Makefile */

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"
#include "ljson.h"

/* Worker threads left running when their executor closed (a body stuck
 * in a compiled loop) return into this library's code when they end; Lua
 * unloads C modules when its state closes, so the library asks never to
 * be unloaded. In the tide binary this names the program: a no-op. */
static void lcore_pin(void) {
    Dl_info info;
    if (dladdr((void *)lcore_pin, &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

int luaopen_tide_core(lua_State *L) {
    lcore_pin();
    tide__stdfd_reserve(); /* before the first loop takes an fd */
    tide__lua_open_util(L);
    lua_newtable(L);
    tide__lua_open_engine(L);
    tide__lua_open_graph(L);
    tide__lua_open_reader(L);
    tide__lua_open_idset(L);
    tide__lua_open_handle(L);
    tide__lua_open_os(L);
    tide__lua_open_file(L);
    tide__lua_open_journal(L);
    tide__lua_open_cache(L);
    tide__lua_open_exec(L);
    tide__lua_open_marshal(L);
    tide__lua_open_pool(L);
    tide__lua_open_native(L);
    tide__lua_open_http(L);
    tide__lua_open_redis(L);
    tide__lua_open_mem(L);
    tide__json_open(L);
    lua_setfield(L, -2, "json");
    lua_pushstring(L, TIDE_VERSION_STRING);
    lua_setfield(L, -2, "version");
    return 1;
}
