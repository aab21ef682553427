/* Pipeline graphs as Lua objects: compile task specs from a Lua table. */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

tide__graph *tide__lua_checkgraph(lua_State *L, int idx) {
    tide__graph *g = luaL_checkudata(L, idx, "tide.graph");
    if (g->t == NULL)
        luaL_argerror(L, idx, "graph was freed");
    return g;
}

/* compile(specs) -> graph | nil, message, index of the task at fault
 * specs = { {name = "a", after = {"x", ...}, map = bool, gather = bool},
 * ... }. The strings stay anchored by specs for the whole call. */
static int l_compile(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    uint32_t n = (uint32_t)lua_objlen(L, 1);
    /* Collect everything from Lua before allocating, so that nothing
     * malloc'd is live across a call that can raise. Use Lua userdata as
     * scratch memory: it is collected if anything below raises. */
    tide__gspec *specs = lua_newuserdata(L, (n + 1) * sizeof(*specs));
    int scratch = lua_gettop(L);
    lua_newtable(L); /* userdata for after arrays, anchored here */
    int anchors = lua_gettop(L);
    for (uint32_t i = 0; i < n; i++) {
        lua_rawgeti(L, 1, (int)i + 1);
        if (!lua_istable(L, -1))
            return luaL_error(L, "compile: spec %d is not a table", i + 1);
        lua_getfield(L, -1, "name");
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "compile: spec %d has no name", i + 1);
        specs[i].name = lua_tostring(L, -1);
        lua_pop(L, 1);
        specs[i].flags = 0;
        lua_getfield(L, -1, "map");
        if (lua_toboolean(L, -1))
            specs[i].flags |= TIDE__T_MAP;
        lua_pop(L, 1);
        lua_getfield(L, -1, "gather");
        if (lua_toboolean(L, -1))
            specs[i].flags |= TIDE__T_GATHER;
        lua_pop(L, 1);
        lua_getfield(L, -1, "after");
        uint32_t na = lua_istable(L, -1) ? (uint32_t)lua_objlen(L, -1) : 0;
        const char **after = lua_newuserdata(L, (na + 1) * sizeof(char *));
        lua_rawseti(L, anchors, (int)i + 1);
        for (uint32_t k = 0; k < na; k++) {
            lua_rawgeti(L, -1, (int)k + 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "compile: spec %d: after[%d] is not a "
                                     "string", i + 1, k + 1);
            after[k] = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
        specs[i].after = after;
        specs[i].nafter = na;
        lua_pop(L, 2);
    }
    tide__graph tmp;
    char err[512];
    uint32_t bad = 0;
    int rc = tide__graph_compile(specs, n, &tmp, err, sizeof(err), &bad);
    lua_settop(L, scratch - 1);
    if (rc != 0) {
        /* The third value is the task at fault, not an error name. */
        tide__lua_fail(L, 0, "%s", err);
        lua_pushinteger(L, bad);
        return 3;
    }
    tide__graph *g = lua_newuserdata(L, sizeof(*g));
    *g = tmp;
    luaL_getmetatable(L, "tide.graph");
    lua_setmetatable(L, -2);
    return 1;
}

/* info(graph) -> { {depth=, region=, succs={...}, preds={...}, ...}, ... } */
static int l_graph_info(lua_State *L) {
    tide__graph *g = tide__lua_checkgraph(L, 1);
    lua_createtable(L, (int)g->n, 0);
    for (uint32_t i = 1; i <= g->n; i++) {
        const tide__gtask *t = &g->t[i];
        lua_createtable(L, 0, 6);
        lua_pushinteger(L, t->depth);
        lua_setfield(L, -2, "depth");
        lua_pushinteger(L, t->region);
        lua_setfield(L, -2, "region");
        lua_pushinteger(L, t->gather_of);
        lua_setfield(L, -2, "gather_of");
        lua_createtable(L, (int)t->npreds, 0);
        for (uint32_t k = 0; k < t->npreds; k++) {
            lua_pushinteger(L, t->preds[k]);
            lua_rawseti(L, -2, (int)k + 1);
        }
        lua_setfield(L, -2, "preds");
        lua_createtable(L, (int)t->nsuccs, 0);
        for (uint32_t k = 0; k < t->nsuccs; k++) {
            lua_pushinteger(L, t->succs[k]);
            lua_rawseti(L, -2, (int)k + 1);
        }
        lua_setfield(L, -2, "succs");
        lua_rawseti(L, -2, (int)i);
    }
    return 1;
}

static int l_graph_gc(lua_State *L) {
    tide__graph *g = luaL_checkudata(L, 1, "tide.graph");
    tide__graph_free(g);
    return 0;
}

void tide__lua_open_graph(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"compile", l_compile}, {"graph_info", l_graph_info}, {NULL, NULL}};
    tide__lua_newclass(L, "tide.graph", NULL, l_graph_gc);
    luaL_setfuncs(L, funcs, 0);
}
