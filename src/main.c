/* The tide command: a Lua state with the engine, running lua/tide/cli.lua. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua/lglue.h"

/* With TIDE_LUA_PATH set, modules load from that source tree instead of
 * the bytecode bundled into the binary (for development). */
static void main_setup_path(lua_State *L) {
    const char *dir = getenv("TIDE_LUA_PATH");
    if (dir == NULL || *dir == '\0') {
        tide__lua_preload_bundle(L);
        return;
    }
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

int main(int argc, char **argv) {
    tide__stdfd_reserve(); /* before anything opens a file */
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "tide: cannot create a Lua state\n");
        return 3;
    }
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_tide_core);
    lua_setfield(L, -2, "tide.core");
    lua_pushcfunction(L, luaopen_tide_editline);
    lua_setfield(L, -2, "tide.editline");
    lua_pop(L, 2);
    main_setup_path(L);

    lua_getglobal(L, "require");
    lua_pushstring(L, "tide.cli");
    int rc = tide__lua_pcall(L, 1, 1);
    if (rc == 0) {
        lua_getfield(L, -1, "main");
        lua_createtable(L, argc, 0);
        for (int i = 1; i < argc; i++) {
            lua_pushstring(L, argv[i]);
            lua_rawseti(L, -2, i);
        }
        rc = tide__lua_pcall(L, 1, 1);
    }
    int code;
    if (rc != 0) {
        fprintf(stderr, "tide: internal error: %s\n", lua_tostring(L, -1));
        code = 3;
    } else {
        code = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
    }
    fflush(stdout);
    lua_close(L);
    return code;
}
