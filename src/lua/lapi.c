/* The C embedding API of tide.h: an engine is a private Lua state running
 * lua/tide/embed.lua, which owns one executor and one pipeline.
 *
 * Every call enters Lua through lapi_call, a protected call with a
 * traceback (tide__lua_pcall), so a Lua error never escapes to the host:
 * it becomes an error code and message. Strings handed back are malloc'd
 * copies. */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lglue.h"

struct tide_engine {
    lua_State *L;
    int embed_ref; /* the tide.embed module table */
    int state_ref; /* its engine state (M.new's result) */
};

void tide_free(void *p) {
    free(p);
}

static char *lapi_strdup(const char *s) {
    return s ? tide__xstrdup(s) : NULL;
}

/* Calls embed[fname](state, args...) with nargs arguments already pushed
 * and leaves nres results on the stack. Returns 0, or TIDE_EIO with the
 * message as the only value left on the stack. */
static int lapi_call(tide_engine_t *eng, const char *fname, int nargs,
                     int nres) {
    lua_State *L = eng->L;
    int base = lua_gettop(L) - nargs; /* the arguments are base+1.. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->embed_ref);
    lua_getfield(L, -1, fname);
    lua_remove(L, -2);
    lua_insert(L, base + 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->state_ref);
    lua_insert(L, base + 2);
    /* The results (or the message) take the place of the call. */
    return tide__lua_pcall(L, nargs + 1, nres) ? TIDE_EIO : 0;
}

/* Maps a code name ("EVALUE") to its number. */
static int lapi_code(const char *name) {
#define XX(n, val, msg) if (name && strcmp(name, #n) == 0) return val;
    TIDE_ERRNO_MAP(XX)
#undef XX
    return TIDE_EIO;
}

/* Calls embed[fname] (nargs arguments pushed), which returns
 * value | nil, msg, code. Returns 0 with a copy of the value in *value
 * (when value is not NULL), or the code with a copy of the message in
 * *err (when err is not NULL). Leaves the stack as it was before the
 * arguments were pushed. */
static int lapi_call3(tide_engine_t *eng, const char *fname, int nargs,
                      char **value, char **err) {
    lua_State *L = eng->L;
    if (value)
        *value = NULL;
    if (err)
        *err = NULL;
    if (lapi_call(eng, fname, nargs, 3) != 0) {
        if (err)
            *err = lapi_strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        return TIDE_EIO;
    }
    int rc = 0;
    if (lua_isnil(L, -3)) {
        rc = lapi_code(lua_tostring(L, -1));
        if (err)
            *err = lapi_strdup(lua_tostring(L, -2));
    } else if (value) {
        *value = lapi_strdup(lua_tostring(L, -3));
    }
    lua_pop(L, 3);
    return rc;
}

tide_engine_t *tide_engine_new(const tide_options_t *opts) {
    tide_engine_t *eng = tide__xcalloc(1, sizeof(*eng));
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        free(eng);
        return NULL;
    }
    eng->L = L;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_tide_core);
    lua_setfield(L, -2, "tide.core");
    lua_pop(L, 2);
    tide__lua_preload_bundle(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "tide.embed");
    if (tide__lua_pcall(L, 1, 1) != 0) {
        fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
        lua_close(L);
        free(eng);
        return NULL;
    }
    eng->embed_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* embed.new(concurrency, task_timeout) */
    lua_rawgeti(L, LUA_REGISTRYINDEX, eng->embed_ref);
    lua_getfield(L, -1, "new");
    lua_remove(L, -2);
    if (opts && opts->concurrency > 0)
        lua_pushinteger(L, opts->concurrency);
    else
        lua_pushnil(L);
    if (opts && opts->task_timeout > 0)
        lua_pushnumber(L, opts->task_timeout);
    else
        lua_pushnil(L);
    if (tide__lua_pcall(L, 2, 1) != 0) {
        fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
        lua_close(L);
        free(eng);
        return NULL;
    }
    eng->state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return eng;
}

void tide_engine_free(tide_engine_t *eng) {
    if (eng == NULL)
        return;
    if (lapi_call(eng, "close", 0, 0) != 0) {
        fprintf(stderr, "tide: %s\n", lua_tostring(eng->L, -1));
        lua_pop(eng->L, 1);
    }
    lua_close(eng->L);
    free(eng);
}

static int lapi_load(tide_engine_t *eng, const char *path, const char *src,
                     char **err) {
    lua_State *L = eng->L;
    lua_pushstring(L, path);
    if (src)
        lua_pushstring(L, src);
    else
        lua_pushnil(L);
    return lapi_call3(eng, "load", 2, NULL, err);
}

int tide_engine_load_file(tide_engine_t *eng, const char *path, char **err) {
    return lapi_load(eng, path, NULL, err);
}

int tide_engine_load_string(tide_engine_t *eng, const char *source,
                            const char *chunkname, char **err) {
    return lapi_load(eng, chunkname ? chunkname : "pipeline", source, err);
}

int tide_engine_submit(tide_engine_t *eng, const char *id,
                       const char *json_input, char **out_id, char **err) {
    lua_State *L = eng->L;
    if (id)
        lua_pushstring(L, id);
    else
        lua_pushnil(L);
    lua_pushstring(L, json_input ? json_input : "");
    return lapi_call3(eng, "submit", 2, out_id, err);
}

int tide_engine_status(tide_engine_t *eng, const char *id, char **status) {
    lua_pushstring(eng->L, id ? id : "");
    return lapi_call3(eng, "status", 1, status, NULL);
}

int tide_engine_result(tide_engine_t *eng, const char *id, char **json) {
    lua_State *L = eng->L;
    *json = NULL;
    lua_pushstring(L, id ? id : "");
    if (lapi_call(eng, "result", 1, 2) != 0) {
        lua_pop(L, 1);
        return TIDE_EIO;
    }
    const char *code = lua_tostring(L, -2);
    int rc = code && strcmp(code, "OK") == 0 ? 0 : lapi_code(code);
    *json = lapi_strdup(lua_tostring(L, -1));
    lua_pop(L, 2);
    return rc;
}

int tide_engine_cancel(tide_engine_t *eng, const char *id) {
    lua_pushstring(eng->L, id ? id : "");
    return lapi_call3(eng, "cancel", 1, NULL, NULL);
}

int tide_engine_step(tide_engine_t *eng) {
    if (lapi_call(eng, "step", 0, 1) != 0) {
        fprintf(stderr, "tide: %s\n", lua_tostring(eng->L, -1));
        lua_pop(eng->L, 1);
        return TIDE_EIO;
    }
    int live = (int)lua_tointeger(eng->L, -1);
    lua_pop(eng->L, 1);
    return live;
}

int tide_engine_run(tide_engine_t *eng) {
    if (lapi_call(eng, "run", 0, 1) != 0) {
        fprintf(stderr, "tide: %s\n", lua_tostring(eng->L, -1));
        lua_pop(eng->L, 1);
        return TIDE_EIO;
    }
    lua_pop(eng->L, 1);
    return 0;
}

/* Calls embed[fname](state), which returns an integer (or nil: -1), and
 * returns it, or TIDE_EINVAL when the call raised (a closed engine). */
static int lapi_int(tide_engine_t *eng, const char *fname) {
    if (lapi_call(eng, fname, 0, 1) != 0) {
        lua_pop(eng->L, 1);
        return TIDE_EINVAL;
    }
    int v = lua_isnil(eng->L, -1) ? -1 : (int)lua_tointeger(eng->L, -1);
    lua_pop(eng->L, 1);
    return v;
}

int tide_engine_fd(tide_engine_t *eng) {
    return lapi_int(eng, "fd");
}

int tide_engine_timeout(tide_engine_t *eng) {
    return lapi_int(eng, "timeout");
}
