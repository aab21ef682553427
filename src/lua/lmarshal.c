/* The binary encoding values cross threads in (issue 5): compact, exact
 * and faithful to shape, unlike JSON.
 *
 * Format: one tag byte per value, then its payload.
 *   0 nil, 1 false, 2 true, 8 json null (lightuserdata NULL)
 *   3 integer: zigzag varint (integral doubles with |v| <= 2^53)
 *   4 double: 8 bytes, little endian
 *   5 string: varint length, bytes
 *   6 array (json.array_mt): varint n, n values (holes are nil)
 *   7 object (json.object_mt): varint n, n (key, value) pairs
 *   9 plain table: varint n (1..n), n values, varint m, m (key, value)
 *   10 int64_t cdata: zigzag varint; 11 uint64_t cdata: varint (the
 *      integers tide.json decodes beyond 2^53; they decode as cdata of
 *      the same type, so they stay exact on the other thread)
 * Table keys are strings, numbers or booleans. Functions, userdata other
 * than null, other cdata, threads, cycles and nesting deeper than
 * TIDE_MARSHAL_DEPTH are refused with EVALUE; so is any malformed or
 * truncated input to the decoder, which never reads past its end.
 *
 * Memory: encoding runs under lua_pcall, because telling an int64_t cdata
 * from others calls into Lua (tide__json_int64_get), which may raise; the
 * output buffer hangs off a context on the caller's C stack and is freed
 * after the pcall when anything failed. Decoding allocates no C memory. */
#include <limits.h>
#include <math.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"
#include "ljson.h"

#define TIDE_MARSHAL_DEPTH 200

enum { M_NIL = 0, M_FALSE, M_TRUE, M_INT, M_DBL, M_STR, M_ARR, M_OBJ,
       M_NULL, M_TAB, M_I64, M_U64 };

typedef struct {
    char *p;
    size_t len, cap;
} mbuf;

typedef struct {
    mbuf b;
    lua_State *L;
    int arr_mt, obj_mt;  /* stack indices of the json metatables */
    const void *stack[TIDE_MARSHAL_DEPTH + 1]; /* tables being encoded */
    char *err;
    size_t errlen;
    int rc;
} menc;

static void mbuf_need(mbuf *b, size_t n) {
    if (b->len + n <= b->cap)
        return;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n)
        cap *= 2;
    b->p = tide__xrealloc(b->p, cap);
    b->cap = cap;
}

static void mbuf_byte(mbuf *b, unsigned char c) {
    mbuf_need(b, 1);
    b->p[b->len++] = (char)c;
}

static void mbuf_varint(mbuf *b, uint64_t v) {
    mbuf_need(b, 10);
    while (v >= 0x80) {
        b->p[b->len++] = (char)(v | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (char)v;
}

static int menc_value(menc *e, int idx, int depth);

static int menc_fail(menc *e, const char *msg) {
    snprintf(e->err, e->errlen, "%s", msg);
    return TIDE_EVALUE;
}

static int menc_key_ok(lua_State *L, int idx) {
    int t = lua_type(L, idx);
    return t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN;
}

/* Encodes the table at the top of the stack. */
static int menc_table(menc *e, int depth) {
    lua_State *L = e->L;
    int t = lua_gettop(L);
    const void *ptr = lua_topointer(L, t);
    if (depth >= TIDE_MARSHAL_DEPTH)
        return menc_fail(e, "cannot carry tables nested deeper than 200");
    for (int i = 0; i < depth; i++)
        if (e->stack[i] == ptr)
            return menc_fail(e, "cannot carry a cyclic table");
    e->stack[depth] = ptr;
    if (!lua_checkstack(L, 6))
        return menc_fail(e, "cannot carry: Lua stack exhausted");
    int kind = M_TAB;
    if (lua_getmetatable(L, t)) {
        if (lua_rawequal(L, -1, e->arr_mt))
            kind = M_ARR;
        else if (lua_rawequal(L, -1, e->obj_mt))
            kind = M_OBJ;
        lua_pop(L, 1);
    }
    int rc;
    if (kind == M_ARR) {
        /* n = the largest positive integer key. Holes cross as nils, so an
         * array sparser than JSON takes (ljson.c's rule: the largest index
         * beyond both 1000 and twice the entries, or beyond INT_MAX) is
         * refused before a byte is written: {[1e8] = true} would cost
         * 100 MB of nils here and as much again on the other thread. */
        size_t n = 0, count = 0;
        lua_pushnil(L);
        while (lua_next(L, t)) {
            lua_pop(L, 1);
            double k = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
            if (!(k >= 1 && k == floor(k) && k < 4294967296.0)) {
                lua_pop(L, 1);
                return menc_fail(e, "an array has a key that is not a "
                                    "positive integer");
            }
            count++;
            if ((size_t)k > n)
                n = (size_t)k;
        }
        if (n > INT_MAX || (n > 1000 && n > 2 * count)) {
            snprintf(e->err, e->errlen, "cannot carry a sparse array "
                     "(largest index %zu, %zu entries)", n, count);
            return TIDE_EVALUE;
        }
        mbuf_byte(&e->b, M_ARR);
        mbuf_varint(&e->b, n);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, t, (int)i);
            if ((rc = menc_value(e, -1, depth + 1)) != 0)
                return rc;
            lua_pop(L, 1);
        }
        return 0;
    }
    /* Plain tables: the sequence 1..n, then the other keys. Objects: all
     * keys as pairs. */
    size_t n = 0, m = 0;
    if (kind == M_TAB) {
        n = lua_objlen(L, t);
        /* The length operator may return any border, one far beyond most
         * of the keys below it: then every key goes as a pair, and no run
         * of nils is written for the holes. */
        if (n > 1000) {
            size_t inseq = 0;
            lua_pushnil(L);
            while (lua_next(L, t)) {
                lua_pop(L, 1);
                if (lua_type(L, -1) == LUA_TNUMBER) {
                    double k = lua_tonumber(L, -1);
                    if (k >= 1 && k <= (double)n && k == floor(k))
                        inseq++;
                }
            }
            if (n > INT_MAX || n > 2 * inseq)
                n = 0;
        }
    }
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (!menc_key_ok(L, -1)) {
            lua_pop(L, 1);
            return menc_fail(e, "cannot carry a table key that is not a "
                                "string, number or boolean");
        }
        if (kind == M_TAB && lua_type(L, -1) == LUA_TNUMBER) {
            double k = lua_tonumber(L, -1);
            if (k >= 1 && k <= (double)n && k == floor(k))
                continue; /* in the sequence part */
        }
        m++;
    }
    mbuf_byte(&e->b, (unsigned char)kind);
    if (kind == M_TAB) {
        mbuf_varint(&e->b, n);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, t, (int)i);
            if ((rc = menc_value(e, -1, depth + 1)) != 0)
                return rc;
            lua_pop(L, 1);
        }
    }
    mbuf_varint(&e->b, m);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (kind == M_TAB && lua_type(L, -2) == LUA_TNUMBER) {
            double k = lua_tonumber(L, -2);
            if (k >= 1 && k <= (double)n && k == floor(k)) {
                lua_pop(L, 1);
                continue;
            }
        }
        if ((rc = menc_value(e, -2, depth + 1)) != 0 ||
            (rc = menc_value(e, -1, depth + 1)) != 0) {
            lua_pop(L, 2);
            return rc;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int menc_value(menc *e, int idx, int depth) {
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        mbuf_byte(&e->b, M_NIL);
        return 0;
    case LUA_TBOOLEAN:
        mbuf_byte(&e->b, lua_toboolean(L, idx) ? M_TRUE : M_FALSE);
        return 0;
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        if (d == floor(d) && fabs(d) <= 9007199254740992.0 &&
            !(d == 0 && signbit(d))) {
            int64_t i = (int64_t)d;
            mbuf_byte(&e->b, M_INT);
            mbuf_varint(&e->b, ((uint64_t)i << 1) ^ (uint64_t)(i >> 63));
        } else {
            mbuf_byte(&e->b, M_DBL);
            mbuf_need(&e->b, 8);
            uint64_t u;
            memcpy(&u, &d, 8);
            for (int k = 0; k < 8; k++)
                e->b.p[e->b.len++] = (char)(u >> (8 * k));
        }
        return 0;
    }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        mbuf_byte(&e->b, M_STR);
        mbuf_varint(&e->b, n);
        mbuf_need(&e->b, n);
        memcpy(e->b.p + e->b.len, s, n);
        e->b.len += n;
        return 0;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            mbuf_byte(&e->b, M_NULL);
            return 0;
        }
        return menc_fail(e, "cannot carry a light userdata");
    case LUA_TTABLE:
        lua_pushvalue(L, idx);
        {
            int rc = menc_table(e, depth);
            lua_pop(L, 1);
            return rc;
        }
    case TIDE_LUA_TCDATA: {
        uint64_t bits;
        int kind = tide__json_int64_get(L, idx, &bits);
        if (kind == 1) {
            /* Zigzag on the two's complement bits: no signed overflow. */
            mbuf_byte(&e->b, M_I64);
            mbuf_varint(&e->b, (bits << 1) ^ (0 - (bits >> 63)));
            return 0;
        }
        if (kind == 2) {
            mbuf_byte(&e->b, M_U64);
            mbuf_varint(&e->b, bits);
            return 0;
        }
        break; /* any other cdata */
    }
    default:
        break;
    }
    snprintf(e->err, e->errlen, "cannot carry a %s", luaL_typename(L, idx));
    return TIDE_EVALUE;
}

/* The protected half of tide__marshal_encode: the arguments are the value
 * and the context (lightuserdata). Sets e->rc. */
static int menc_protected(lua_State *L) {
    menc *e = lua_touserdata(L, 2);
    tide__json_push_array_mt(L);
    e->arr_mt = lua_gettop(L);
    tide__json_push_object_mt(L);
    e->obj_mt = lua_gettop(L);
    e->rc = menc_value(e, 1, 0);
    return 0;
}

/* Encodes the value at idx into a new malloc'd buffer (*out, *outlen; the
 * caller frees it). Returns 0, or TIDE_EVALUE with a message in err (and
 * *out NULL). Leaves the stack as it was. Raises only a Lua memory error,
 * after freeing the buffer (the same way as tide__json_encode_value). */
int tide__marshal_encode(lua_State *L, int idx, char **out, size_t *outlen,
                         char *err, size_t errlen) {
    menc e;
    memset(&e, 0, sizeof(e));
    e.L = L;
    e.err = err;
    e.errlen = errlen;
    if (idx < 0 && idx > LUA_REGISTRYINDEX)
        idx = lua_gettop(L) + idx + 1;
    /* These may raise; nothing is allocated yet. */
    lua_pushcfunction(L, menc_protected);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, &e);
    int status = lua_pcall(L, 2, 0, 0);
    if (status != 0 || e.rc != 0) {
        free(e.b.p);
        *out = NULL;
        *outlen = 0;
        if (status != 0)
            lua_error(L);
        return e.rc;
    }
    *out = e.b.p ? e.b.p : tide__xmalloc(1);
    *outlen = e.b.len;
    return 0;
}

/* ===== DECODING ===== */

typedef struct {
    const unsigned char *p, *end;
    lua_State *L;
    char *err;
    size_t errlen;
} mdec;

static int mdec_fail(mdec *d, const char *msg) {
    snprintf(d->err, d->errlen, "malformed value: %s", msg);
    return TIDE_EVALUE;
}

static int mdec_varint(mdec *d, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (d->p >= d->end)
            return mdec_fail(d, "truncated number");
        unsigned char c = *d->p++;
        r |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return mdec_fail(d, "overlong number");
}

static int mdec_value(mdec *d, int depth);

static void mdec_mark(mdec *d, void (*push_mt)(lua_State *)) {
    push_mt(d->L);
    lua_setmetatable(d->L, -2);
}

static int mdec_value(mdec *d, int depth) {
    lua_State *L = d->L;
    if (d->p >= d->end)
        return mdec_fail(d, "truncated");
    if (depth > TIDE_MARSHAL_DEPTH || !lua_checkstack(L, 4))
        return mdec_fail(d, "nested too deep");
    unsigned char tag = *d->p++;
    uint64_t n, m;
    int rc;
    switch (tag) {
    case M_NIL:
        lua_pushnil(L);
        return 0;
    case M_FALSE:
    case M_TRUE:
        lua_pushboolean(L, tag == M_TRUE);
        return 0;
    case M_NULL:
        lua_pushlightuserdata(L, NULL);
        return 0;
    case M_INT:
        if ((rc = mdec_varint(d, &n)) != 0)
            return rc;
        lua_pushnumber(L, (double)((int64_t)(n >> 1) ^ -(int64_t)(n & 1)));
        return 0;
    case M_I64:
    case M_U64:
        if ((rc = mdec_varint(d, &n)) != 0)
            return rc;
        if (tag == M_I64)
            n = (n >> 1) ^ (0 - (n & 1));
        tide__json_int64_push(L, n, tag == M_U64);
        return 0;
    case M_DBL: {
        if (d->end - d->p < 8)
            return mdec_fail(d, "truncated number");
        uint64_t u = 0;
        for (int k = 0; k < 8; k++)
            u |= (uint64_t)d->p[k] << (8 * k);
        d->p += 8;
        double v;
        memcpy(&v, &u, 8);
        lua_pushnumber(L, v);
        return 0;
    }
    case M_STR:
        if ((rc = mdec_varint(d, &n)) != 0)
            return rc;
        if ((uint64_t)(d->end - d->p) < n)
            return mdec_fail(d, "truncated string");
        lua_pushlstring(L, (const char *)d->p, (size_t)n);
        d->p += n;
        return 0;
    case M_ARR:
    case M_OBJ:
    case M_TAB: {
        n = 0;
        if (tag != M_OBJ && (rc = mdec_varint(d, &n)) != 0)
            return rc;
        /* Every element takes at least one byte: a count larger than what
         * is left is malformed (and would allocate too much). */
        if (n > (uint64_t)(d->end - d->p))
            return mdec_fail(d, "truncated table");
        if (n > INT_MAX) /* the encoder never writes one: rawseti takes an int */
            return mdec_fail(d, "table too long");
        lua_createtable(L, (int)n, 0);
        for (uint64_t i = 1; i <= n; i++) {
            if ((rc = mdec_value(d, depth + 1)) != 0)
                return rc;
            lua_rawseti(L, -2, (int)i);
        }
        if (tag != M_ARR) {
            if ((rc = mdec_varint(d, &m)) != 0)
                return rc;
            if (m > (uint64_t)(d->end - d->p))
                return mdec_fail(d, "truncated table");
            for (uint64_t i = 0; i < m; i++) {
                if ((rc = mdec_value(d, depth + 1)) != 0)
                    return rc;
                if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER &&
                                         isnan(lua_tonumber(L, -1))))
                    return mdec_fail(d, "table key is nil or nan");
                if ((rc = mdec_value(d, depth + 1)) != 0)
                    return rc;
                lua_rawset(L, -3);
            }
        }
        if (tag == M_ARR)
            mdec_mark(d, tide__json_push_array_mt);
        else if (tag == M_OBJ)
            mdec_mark(d, tide__json_push_object_mt);
        return 0;
    }
    default:
        return mdec_fail(d, "unknown tag");
    }
}

/* Pushes the value encoded in (p, n). Returns 0, or TIDE_EVALUE with a
 * message in err and nothing pushed. */
int tide__marshal_decode(lua_State *L, const char *p, size_t n, char *err,
                         size_t errlen) {
    mdec d = {(const unsigned char *)p, (const unsigned char *)p + n, L, err,
              errlen};
    int top = lua_gettop(L);
    int rc = mdec_value(&d, 0);
    if (rc == 0 && d.p != d.end)
        rc = mdec_fail(&d, "trailing bytes");
    if (rc != 0) {
        lua_settop(L, top);
        return rc;
    }
    return 0;
}

typedef struct {
    const char *p;
    size_t n;
} mpush;

static int mpush_protected(lua_State *L) {
    mpush *m = lua_touserdata(L, 1);
    lua_pushlstring(L, m->p, m->n);
    return 1;
}

/* marshal_encode(v) -> bytes | nil, msg, "EVALUE" */
static int l_marshal_encode(lua_State *L) {
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    char *out, err[256];
    size_t n;
    /* Both may raise; nothing is allocated yet. */
    lua_pushcfunction(L, mpush_protected);
    lua_pushnil(L);
    if (tide__marshal_encode(L, 1, &out, &n, err, sizeof(err)) != 0)
        return tide__lua_fail(L, TIDE_EVALUE, "EVALUE: %s", err);
    /* The string is made under a protected call: a memory error, or a
     * length LuaJIT cannot hold, must not leave out behind. */
    mpush m = {out, n};
    lua_pushlightuserdata(L, &m);
    lua_replace(L, 3);
    int rc = lua_pcall(L, 1, 1, 0);
    free(out);
    if (rc != 0)
        return lua_error(L);
    return 1;
}

/* marshal_decode(bytes) -> v | nil, msg, "EVALUE" */
static int l_marshal_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[256];
    if (tide__marshal_decode(L, s, n, err, sizeof(err)) != 0)
        return tide__lua_fail(L, TIDE_EVALUE, "EVALUE: %s", err);
    return 1;
}

void tide__lua_open_marshal(lua_State *L) {
    static const luaL_Reg funcs[] = {{"marshal_encode", l_marshal_encode},
                                     {"marshal_decode", l_marshal_decode},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
