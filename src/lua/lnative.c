/* Native tasks: C functions from shared libraries (tide.h, tide_call),
 * loaded once per process with dlopen and run on the worker threads.
 *
 * The worker converts between the job's binary value and JSON text with
 * its own Lua state (lmarshal.c, ljson.c) only when the function asks for
 * JSON. That Lua work runs under lua_cpcall: a memory error (the worker's
 * state at its memory limit) must not unwind through the library's C
 * frames; it fails the call instead, with ENOMEM. */
#include <dlfcn.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"
#include "ljson.h"

typedef struct {
    tide_call pub;            /* first: what the library sees */
    lua_State *L;             /* the worker's state */
    const char *in;           /* binary input (the job's) */
    size_t inlen;
    char *json_in;            /* the input as JSON, made on demand */
    size_t json_inlen;
    char *out;                /* binary output (malloc'd), or NULL */
    size_t outlen;
    char err[512];
    int failed;
    int oom;                  /* the worker's state ran out of memory */
    /* The arguments of the protected step running now. */
    const char *arg;
    size_t arglen;
    int rc;
} lnative_call;

#define LNATIVE(c) ((lnative_call *)(c))

static int lnative_error(tide_call *pub, const char *msg) {
    lnative_call *c = LNATIVE(pub);
    snprintf(c->err, sizeof(c->err), "%s", msg ? msg : "native task failed");
    c->failed = 1;
    return -1;
}

static const void *lnative_input_value(tide_call *pub, size_t *len) {
    lnative_call *c = LNATIVE(pub);
    *len = c->inlen;
    return c->in;
}

/* Runs step(c) under lua_cpcall; 0, or -1 after a memory error (noted in
 * c->oom). The steps below leave no C buffer behind when they raise. */
static int lnative_protect(lnative_call *c, lua_CFunction step) {
    int top = lua_gettop(c->L);
    int rc = lua_cpcall(c->L, step, c);
    lua_settop(c->L, top);
    if (rc != 0) {
        c->oom = 1;
        return -1;
    }
    return 0;
}

static int lnative_input_json_step(lua_State *L) {
    lnative_call *c = lua_touserdata(L, 1);
    char err[256];
    c->rc = tide__marshal_decode(L, c->in, c->inlen, err, sizeof(err));
    if (c->rc == 0)
        c->rc = tide__json_encode_value(L, -1, &c->json_in, &c->json_inlen,
                                        err, sizeof(err));
    return 0;
}

static const char *lnative_input_json(tide_call *pub, size_t *len) {
    lnative_call *c = LNATIVE(pub);
    if (c->json_in == NULL &&
        (lnative_protect(c, lnative_input_json_step) != 0 || c->rc != 0)) {
        *len = 0;
        return NULL;
    }
    *len = c->json_inlen;
    return c->json_in;
}

static int lnative_output_value_step(lua_State *L) {
    lnative_call *c = lua_touserdata(L, 1);
    char err[256];
    c->rc = tide__marshal_decode(L, c->arg, c->arglen, err, sizeof(err));
    if (c->rc != 0)
        snprintf(c->err, sizeof(c->err), "output is not a valid value: %s",
                 err);
    return 0;
}

static int lnative_output_value(tide_call *pub, const void *bytes,
                                size_t len) {
    lnative_call *c = LNATIVE(pub);
    /* Check it decodes before taking it. */
    c->arg = bytes;
    c->arglen = len;
    if (lnative_protect(c, lnative_output_value_step) != 0)
        return lnative_error(pub, "out of memory");
    if (c->rc != 0) {
        c->failed = 1;
        return -1;
    }
    free(c->out);
    c->out = tide__xmalloc(len ? len : 1);
    memcpy(c->out, bytes, len);
    c->outlen = len;
    return 0;
}

static int lnative_output_json_step(lua_State *L) {
    lnative_call *c = lua_touserdata(L, 1);
    char err[256];
    c->rc = tide__json_decode_push(L, c->arg, c->arglen, err, sizeof(err));
    if (c->rc != 0) {
        snprintf(c->err, sizeof(c->err), "output is not JSON: %s", err);
        return 0;
    }
    free(c->out);
    c->out = NULL;
    c->rc = tide__marshal_encode(L, -1, &c->out, &c->outlen, err,
                                 sizeof(err));
    if (c->rc != 0)
        snprintf(c->err, sizeof(c->err), "output cannot be carried: %s",
                 err);
    return 0;
}

static int lnative_output_json(tide_call *pub, const char *json, size_t len) {
    lnative_call *c = LNATIVE(pub);
    c->arg = json;
    c->arglen = len;
    if (lnative_protect(c, lnative_output_json_step) != 0)
        return lnative_error(pub, "out of memory");
    if (c->rc != 0) {
        c->failed = 1;
        return -1;
    }
    return 0;
}

static const struct tide_call_api lnative_api = {
    lnative_input_json, lnative_input_value, lnative_output_json,
    lnative_output_value, lnative_error,
};

int tide__native_run(lua_State *L, tide_native_fn fn, const void *in,
                     size_t inlen, char **out, size_t *outlen) {
    lnative_call c;
    memset(&c, 0, sizeof(c));
    c.pub.api = &lnative_api;
    c.L = L;
    c.in = in;
    c.inlen = inlen;
    int rc = fn(&c.pub);
    free(c.json_in);
    if (rc != 0 || c.failed) {
        free(c.out);
        *out = tide__xstrdup(c.err[0] ? c.err : "native task failed");
        *outlen = strlen(*out);
        return c.oom ? UV_ENOMEM : TIDE_ETASK;
    }
    if (c.out == NULL) { /* no output set: null */
        c.out = tide__xmalloc(1);
        c.out[0] = 8; /* the encoding's json null tag */
        c.outlen = 1;
    }
    *out = c.out;
    *outlen = c.outlen;
    return 0;
}

/* native_load(path, symbol) -> lightuserdata(fn) | nil, message
 * The library stays loaded for the life of the process. */
static int l_native_load(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    const char *sym = luaL_checkstring(L, 2);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        return tide__lua_fail(L, 0, "cannot load native library '%s': %s",
                              path, dlerror());
    const int *abi = dlsym(h, "tide_abi_version");
    if (abi == NULL)
        return tide__lua_fail(L, 0, "'%s' is not a tide native library (it "
                              "does not export tide_abi_version: add "
                              "TIDE_EXPORT_ABI;)", path);
    if (*abi != TIDE_ABI_VERSION)
        return tide__lua_fail(L, 0, "'%s' was built for tide ABI %d, this "
                              "tide has %d", path, *abi, TIDE_ABI_VERSION);
    void *fn = dlsym(h, sym);
    if (fn == NULL)
        return tide__lua_fail(L, 0, "native library '%s' has no symbol '%s'",
                              path, sym);
    lua_pushlightuserdata(L, fn);
    return 1;
}

void tide__lua_open_native(lua_State *L) {
    static const luaL_Reg funcs[] = {{"native_load", l_native_load},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
