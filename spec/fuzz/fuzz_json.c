/* libFuzzer target: the JSON codec (src/lua/ljson.c) and the UTF-8 checks
 * under it (src/utf8.c). For every input:
 *   - decoding it either fails with EVALUE or yields a value; a value
 *     encodes (unless it holds a number beyond the double range, which
 *     decodes to an infinity), its text is strict UTF-8, decodes again and
 *     encodes to the same text (a fixpoint after one round);
 *   - the input as a Lua string encodes exactly when it is strict UTF-8,
 *     and then decodes back to itself;
 *   - json.repair_utf8 of it is strict UTF-8, and the input itself when
 *     that already was.
 * Any broken rule aborts, so libFuzzer keeps the input. make fuzz builds
 * it with clang, libFuzzer, ASan and UBSan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lglue.h"
#include "ljson.h"

typedef struct {
    const char *data;
    size_t size;
} fuzz_input;

static void fuzz_fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_json: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

/* The checks, under lua_cpcall: the codec raises Lua memory errors only,
 * and none may end the process unseen. Every C buffer is freed before the
 * next call that can raise. */
static int fuzz_one(lua_State *L) {
    fuzz_input *in = lua_touserdata(L, 1);
    char err[TIDE_JSON_ERRLEN];
    char *out = NULL, *out2 = NULL;
    size_t n = 0, n2 = 0;
    lua_settop(L, 0);
    int valid = tide__utf8_check(in->data, in->size) == in->size;

    if (tide__json_decode_push(L, in->data, in->size, err, sizeof(err)) == 0) {
        if (!valid)
            fuzz_fail("decoded text that is not strict UTF-8", NULL);
        if (tide__json_encode_value(L, -1, &out, &n, err, sizeof(err)) != 0) {
            if (strstr(err, "cannot encode number inf") == NULL &&
                strstr(err, "cannot encode number -inf") == NULL)
                fuzz_fail("a decoded value does not encode", err);
        } else {
            if (tide__utf8_check(out, n) != n)
                fuzz_fail("encoded text is not strict UTF-8", out);
            lua_pushlstring(L, out, n); /* keeps the text while out goes */
            free(out);
            out = NULL;
            size_t tn;
            const char *t = lua_tolstring(L, -1, &tn);
            if (tide__json_decode_push(L, t, tn, err, sizeof(err)) != 0)
                fuzz_fail("encoded text does not decode", err);
            if (tide__json_encode_value(L, -1, &out2, &n2, err,
                                        sizeof(err)) != 0)
                fuzz_fail("a value decoded from encoded text does not encode",
                          err);
            int same = n2 == tn && memcmp(out2, t, tn) == 0;
            free(out2);
            if (!same)
                fuzz_fail("encode(decode(text)) is not a fixpoint", t);
        }
    }
    lua_settop(L, 0);

    lua_pushlstring(L, in->data, in->size);
    int rc = tide__json_encode_value(L, 1, &out, &n, err, sizeof(err));
    if ((rc == 0) != valid)
        fuzz_fail(valid ? "a UTF-8 string does not encode"
                        : "a string that is not UTF-8 encodes", err);
    if (rc == 0) {
        if (tide__utf8_check(out, n) != n)
            fuzz_fail("an encoded string is not strict UTF-8", NULL);
        lua_pushlstring(L, out, n);
        free(out);
        size_t tn;
        const char *t = lua_tolstring(L, -1, &tn);
        if (tide__json_decode_push(L, t, tn, err, sizeof(err)) != 0)
            fuzz_fail("an encoded string does not decode", err);
        size_t back;
        const char *b = lua_tolstring(L, -1, &back);
        if (b == NULL || back != in->size || memcmp(b, in->data, back) != 0)
            fuzz_fail("a string does not decode back to itself", NULL);
    }
    lua_settop(L, 0);

    /* repair_utf8, through the module table. */
    tide__json_open(L);
    lua_getfield(L, -1, "repair_utf8");
    lua_pushlstring(L, in->data, in->size);
    lua_call(L, 1, 1);
    size_t rn;
    const char *r = lua_tolstring(L, -1, &rn);
    if (tide__utf8_check(r, rn) != rn)
        fuzz_fail("repair_utf8 left bytes that are not UTF-8", NULL);
    if (valid && (rn != in->size || memcmp(r, in->data, rn) != 0))
        fuzz_fail("repair_utf8 changed a valid string", NULL);
    lua_settop(L, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    static lua_State *L;
    if (L == NULL) {
        /* LuaJIT's own allocator: LeakSanitizer neither scans its
         * memory nor reports it (a GC64 TValue tags its pointer, so
         * objects on malloc would look leaked); C buffers it reports. */
        L = luaL_newstate();
        luaL_openlibs(L);
    }
    fuzz_input in = {(const char *)data, size};
    if (lua_cpcall(L, fuzz_one, &in) != 0)
        fuzz_fail("Lua error", lua_tostring(L, -1));
    return 0;
}
