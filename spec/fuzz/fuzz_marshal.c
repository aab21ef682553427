/* libFuzzer target: the decoder of the binary encoding values cross
 * threads in (src/lua/lmarshal.c). For every input: decoding never reads
 * past the end and either fails with EVALUE or yields a value; such a
 * value encodes or is refused with EVALUE (a table key, nesting at the
 * encoder's limit, a sparse array of holes); an encoding decodes again and
 * encodes to the same bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lglue.h"

typedef struct {
    const char *data;
    size_t size;
} fuzz_input;

static void fuzz_fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_marshal: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

static int fuzz_one(lua_State *L) {
    fuzz_input *in = lua_touserdata(L, 1);
    char err[256];
    char *out = NULL, *out2 = NULL;
    size_t n = 0, n2 = 0;
    lua_settop(L, 0);
    /* A copy of exactly size bytes: ASan sees any read past its end. */
    char *copy = malloc(in->size ? in->size : 1);
    memcpy(copy, in->data, in->size);
    int rc = tide__marshal_decode(L, copy, in->size, err, sizeof(err));
    free(copy); /* decoded values never point into the input */
    if (rc != 0) {
        if (strncmp(err, "malformed value: ", 17) != 0)
            fuzz_fail("a refusal that is not 'malformed value'", err);
        return 0;
    }
    if (tide__marshal_encode(L, 1, &out, &n, err, sizeof(err)) != 0)
        return 0; /* refused with EVALUE: a value the encoder never makes */
    lua_pushlstring(L, out, n);
    free(out);
    size_t tn;
    const char *t = lua_tolstring(L, -1, &tn);
    if (tide__marshal_decode(L, t, tn, err, sizeof(err)) != 0)
        fuzz_fail("an encoding does not decode", err);
    if (tide__marshal_encode(L, -1, &out2, &n2, err, sizeof(err)) != 0)
        fuzz_fail("a value decoded from an encoding does not encode", err);
    lua_pushlstring(L, out2, n2);
    free(out2);
    /* Pairs follow the table's own order, and a plain table's sequence
     * part its border, which depends on the table's layout: the bytes may
     * differ, the decoded values may not. */
    size_t t2n;
    const char *t2 = lua_tolstring(L, -1, &t2n);
    if (tide__marshal_decode(L, t2, t2n, err, sizeof(err)) != 0)
        fuzz_fail("a second encoding does not decode", err);
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.same");
    lua_pushvalue(L, 3); /* decode(first encoding) */
    lua_pushvalue(L, -3); /* decode(second encoding) */
    lua_call(L, 2, 1);
    if (!lua_toboolean(L, -1))
        fuzz_fail("encode(decode(bytes)) does not decode to the same value",
                  NULL);
    lua_settop(L, 0);
    return 0;
}

/* Deep equality of decoded values: metatables, cdata types, NaN. */
static const char *FUZZ_SAME =
    "local ffi = require 'ffi'\n"
    "local function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then return a == b or (a ~= a and b ~= b) end\n"
    "  if type(a) == 'cdata' then\n"
    "    return tostring(ffi.typeof(a)) == tostring(ffi.typeof(b)) and a == b\n"
    "  end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
    "  for k, v in pairs(a) do if not same(v, rawget(b, k)) then return false end end\n"
    "  for k in pairs(b) do if rawget(a, k) == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "return same\n";

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    static lua_State *L;
    if (L == NULL) {
        /* LuaJIT's own allocator: LeakSanitizer neither scans its
         * memory nor reports it (a GC64 TValue tags its pointer, so
         * objects on malloc would look leaked); C buffers it reports. */
        L = luaL_newstate();
        luaL_openlibs(L);
        if (luaL_loadstring(L, FUZZ_SAME) != 0 || lua_pcall(L, 0, 1, 0) != 0)
            fuzz_fail("cannot load the comparison", lua_tostring(L, -1));
        lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.same");
    }
    fuzz_input in = {(const char *)data, size};
    if (lua_cpcall(L, fuzz_one, &in) != 0)
        fuzz_fail("Lua error", lua_tostring(L, -1));
    return 0;
}
