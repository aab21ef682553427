/* luaopen_tide_core: the C half of require "tide". */
#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"
#include "ljson.h"

int luaopen_tide_core(lua_State *L) {
    lua_newtable(L);
    tide__lua_open_engine(L);
    tide__lua_open_graph(L);
    tide__lua_open_io(L);
    tide__lua_open_exec(L);
    tide__lua_open_marshal(L);
    tide__lua_open_pool(L);
    tide__lua_open_native(L);
    tide__lua_open_http(L);
    tide__json_open(L);
    lua_setfield(L, -2, "json");
    lua_pushstring(L, TIDE_VERSION_STRING);
    lua_setfield(L, -2, "version");
    return 1;
}
