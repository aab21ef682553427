/* tide.json: a JSON codec for LuaJIT on yajl 2.1 that keeps value and shape.
 *
 * DESIGN
 *
 * Decoding first tries a fast path of its own (json_fast_decode, see
 * FAST DECODING below) that reads the common text (objects and arrays of
 * plain strings, short numbers, literals) in two passes over C-stack
 * tokens and makes each table at its final size; it answers only when
 * sure of the value, and on anything else (every malformed text
 * included) gives up having pushed nothing, so the rest of this
 * paragraph decides values and error messages. The general path runs
 * yajl's streaming parser over the whole text at once, with
 * comments, trailing garbage, multiple values and partial values off and
 * UTF-8 validation on, and builds the value on the Lua stack from its
 * callbacks. Objects get the shared object metatable and arrays the shared
 * array metatable, so {} and [] stay distinct; null becomes the sentinel
 * lightuserdata NULL, so [1,null,3] keeps three entries and {"a":null}
 * keeps its key. Numbers arrive through the raw yajl_number callback: the
 * integer/double callbacks would reject 1e400 as an overflow. An integer
 * (no fraction, no exponent) up to 2^53 in magnitude is read here as a
 * plain number. One beyond 2^53 that fits int64_t or uint64_t becomes a
 * LuaJIT 64-bit integer cdata (int64_t for negatives and values up to
 * 2^63 - 1, uint64_t above), which keeps every digit, computes exactly and
 * encodes back to the same text, as jq 1.7 keeps integer literals; a
 * double would round 9007199254740993 to ...992 and corrupt 64-bit ids.
 * Every integer beyond 2^53 is a cdata, even one a double happens to hold
 * (2^53 + 2, -2^63), so the type never depends on the last bits of an id.
 * Other numbers go through strtod: a fraction or an exponent, or an
 * integer beyond both ranges, is a double as before, and one beyond the
 * double range decodes to +-inf, as strtod, cjson and Python do; such a
 * value cannot be encoded again (an i_ case of JSONTestSuite, so either
 * answer would be allowed). Making a cdata costs a call into a cached ffi
 * constructor (see json_push_ffi), paid only by such integers. Duplicate
 * keys: the last one wins. Nesting deeper than TIDE_JSON_MAX_DEPTH stops
 * the parse from a callback. yajl's lexer also takes \v and \f for
 * whitespace, so a text it accepted is refused when it holds either byte
 * (see json_bad_space).
 *
 * Strings and keys must be strict UTF-8 (utf8.c): yajl's lexer checks only
 * the shape of each sequence, so every string token is checked again in
 * its callback, which refuses overlong forms, surrogates written in UTF-8
 * and code points above U+10FFFF. yajl_string_decode mishandles surrogate
 * escapes (a lone high one and the character after it become "?", a lone
 * low one becomes ED B0 80), so tokens whose decoding shows a trace of
 * those are decoded again here from the input (json_dec_text): a high-low
 * pair is one code point, any other surrogate escape U+FFFD, as in jq 1.7.
 *
 * Encoding walks the Lua value itself and writes everything into its own
 * buffer. An object's keys are collected with lua_next, each value left
 * on the Lua stack behind its key (up to JSON_ENC_STACK_BUDGET slots;
 * past it, values are looked up again by key), then sorted through an
 * index array by insertion (qsort for more than JSON_SORT_SMALL keys),
 * and written in that order; small non-negative integers are written
 * straight into the output. The buffer holds the structure ({, [, :, ,),
 * because yajl_gen keeps a fixed state array and fails past 128 levels
 * (YAJL_MAX_DEPTH in yajl_gen.c),
 * and the scalars too, because going through yajl_gen for each one (a
 * reset, a call, a print callback per piece) cost more than the rest of
 * the encoder when `tide run` writes a million lines. Strings and keys
 * are checked as strict UTF-8 and escaped exactly as yajl_gen_string
 * escapes them (json_gen_string: '"', '\\', \b \f \n \r \t by name, the
 * other bytes below 0x20 as \u00XX with upper-case hex, '/' and
 * everything else as it is), so the text is the one yajl made before.
 * Numbers are formatted here (yajl_gen_double prints %.20g, so 0.1
 * would become 0.10000000000000000555). Integral doubles up to 2^53 print
 * as integers, -0.0 as -0, other doubles as the shortest of %.15g, %.16g
 * and %.17g that strtod reads back to the same double. int64_t and
 * uint64_t cdata (boxed, with any qualifiers) print all their digits,
 * without LuaJIT's LL/ULL suffix; any other cdata is an error, like a
 * function.
 *
 * Which tables are arrays: a table with the array metatable is an array of
 * length its largest integer key (holes become null) and may have no other
 * keys; one with the object metatable is an object; any other table is an
 * array when it is a non-empty sequence 1..n with no other keys, else an
 * object ({} for an empty one). Object keys are strings or numbers (numbers
 * are written as encoded numbers, so [1] becomes "1") and are sorted
 * bytewise, so the output is deterministic; a number key and a string key
 * that print the same ("1") are an error rather than a duplicate key. A
 * marked array whose largest index exceeds both 1000 and twice its number
 * of entries is refused as too sparse (cjson's guard against {[1e9] = 1}).
 * Tables with other metatables are plain tables: no metamethod ever runs.
 *
 * check() walks a value as the encoder would (see CHECKING). Its first
 * walk, which only says yes or no, takes a shortcut for tables marked as
 * decoded ones are (json_chk_marked: no index bookkeeping for objects,
 * no string keys for arrays); a value that fails is walked again the
 * general way, which names the fault, so messages do not change.
 *
 * Errors: malformed input, invalid UTF-8, non-finite numbers, cycles, depth
 * and non-data values return TIDE_EVALUE with a message that says what and
 * where: a byte offset for decoding, a path such as $.a[2] for encoding
 * (indices are Lua's, 1-based; non-ASCII bytes of keys show as \xNN).
 *
 * Memory: both directions run under lua_pcall, and every C buffer hangs off
 * a context on the caller's C stack, so the caller frees them all after the
 * pcall returns, whatever happened, and only then re-raises a Lua error
 * (which can only be a memory error: no metamethod and no Lua code runs
 * inside but the ffi helpers of json_push_ffi). The re-raise goes through
 * lua_error, so a LUA_ERRMEM arrives as LUA_ERRRUN with the message "not
 * enough memory", as in cjson's safe functions. The decoder's fast path
 * holds no C buffer (its tokens are on the C stack) and runs unprotected:
 * a memory error there arrives as it is, LUA_ERRMEM with the same
 * message. C allocations go through
 * tide__xmalloc (out of memory aborts), yajl's included. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nl_langinfo, memrchr */
#endif

#include <inttypes.h>
#include <langinfo.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <yajl/yajl_parse.h>

#include "lglue.h"
#include "ljson.h"

/* Room for any number this file prints: "-1.7976931348623157e+308" is 24
 * characters. */
#define JSON_NUMLEN 32

/* Frames kept inline before the context switches to the heap. */
#define JSON_INLINE_LEVELS 32

/* 2^53: integral doubles up to this magnitude print as integers. */
#define JSON_MAX_EXACT 9007199254740992.0

/* ===== SHARED ===== */

/* Registry keys (their addresses) of the two shared metatables. */
static char json_array_key;
static char json_object_key;

static void *json_yajl_malloc(void *ctx, size_t n) {
    TIDE_UNUSED(ctx);
    return tide__xmalloc(n);
}

static void *json_yajl_realloc(void *ctx, void *p, size_t n) {
    TIDE_UNUSED(ctx);
    return tide__xrealloc(p, n);
}

static void json_yajl_free(void *ctx, void *p) {
    TIDE_UNUSED(ctx);
    free(p);
}

/* yajl copies this struct into each handle, so sharing it is safe. */
static yajl_alloc_funcs json_yajl_alloc = {
    json_yajl_malloc, json_yajl_realloc, json_yajl_free, NULL,
};

/* Pushes the shared metatable registered under key, creating it (with
 * __name set to name) on first use in this lua_State. May raise on a Lua
 * memory error, so no C buffer may be live across it. */
static void json_push_mt(lua_State *L, char *key, const char *name) {
    lua_pushlightuserdata(L, key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_istable(L, -1))
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pushlightuserdata(L, key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

static void json_push_array_mt(lua_State *L) {
    json_push_mt(L, &json_array_key, "tide.json.array");
}

static void json_push_object_mt(lua_State *L) {
    json_push_mt(L, &json_object_key, "tide.json.object");
}

/* For other glue (lmarshal.c): push the shared array/object metatables. */
void tide__json_push_array_mt(lua_State *L) {
    json_push_array_mt(L);
}

void tide__json_push_object_mt(lua_State *L) {
    json_push_object_mt(L);
}

/* Registry key (its address) of the table json_push_ffi caches. */
static char json_ffi_key;

/* The ffi half of 64-bit integers. LuaJIT's C API can neither make cdata
 * nor tell their type, so this chunk, compiled once per lua_State,
 * returns the int64_t and uint64_t ctypes (calling one from C makes a new
 * boxed zero, whose 8 bytes are then written through lua_topointer) and a
 * function that says which of the two a value is (ffi.istype ignores
 * qualifiers), and a probe whose bytes json_push_ffi checks. */
static const char json_ffi_chunk[] =
    "local ffi = require('ffi')\n"
    "local istype = ffi.istype\n"
    "local i64, u64 = ffi.typeof('int64_t'), ffi.typeof('uint64_t')\n"
    "return { i64, u64, function(v)\n"
    "    if istype(i64, v) then return 1 end\n"
    "    if istype(u64, v) then return 2 end\n"
    "    return 0\n"
    "end }, 0x0123456789ABCDEFULL\n";

/* Pushes the table { int64_t ctype, uint64_t ctype, kind function },
 * building it on first use in this lua_State. May raise. */
static void json_push_ffi(lua_State *L) {
    uint64_t probe;

    luaL_checkstack(L, 4, "tide.json");
    lua_pushlightuserdata(L, &json_ffi_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_istable(L, -1))
        return;
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, json_ffi_chunk, sizeof json_ffi_chunk - 1,
                        "=tide.json") != 0)
        lua_error(L);
    lua_call(L, 0, 2);
    /* lua_topointer on a cdata gives its payload (lj_obj_ptr); writing
     * int64 values relies on that, so a LuaJIT that did otherwise must
     * stop here rather than corrupt numbers. */
    memcpy(&probe, lua_topointer(L, -1), sizeof probe);
    TIDE_ASSERT(probe == 0x0123456789ABCDEFULL);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, &json_ffi_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

int tide__json_int64_get(lua_State *L, int idx, uint64_t *bits) {
    int kind;

    if (lua_type(L, idx) != TIDE_LUA_TCDATA)
        return 0;
    if (idx < 0 && idx > LUA_REGISTRYINDEX)
        idx = lua_gettop(L) + idx + 1;
    json_push_ffi(L);
    lua_rawgeti(L, -1, 3);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    kind = (int)lua_tointeger(L, -1);
    lua_pop(L, 2);
    if (kind != 0)
        memcpy(bits, lua_topointer(L, idx), sizeof *bits);
    return kind;
}

void tide__json_int64_push(lua_State *L, uint64_t bits, int is_unsigned) {
    json_push_ffi(L);
    lua_rawgeti(L, -1, is_unsigned ? 2 : 1);
    lua_call(L, 0, 1);
    memcpy((void *)lua_topointer(L, -1), &bits, sizeof bits);
    lua_remove(L, -2);
}

/* Returns the decimal point of the current C locale: '.' unless a program
 * called setlocale (or os.setlocale) with another LC_NUMERIC. printf and
 * strtod follow it; JSON does not. */
static char json_radix(void) {
    const char *r = nl_langinfo(RADIXCHAR);
    return (r != NULL && r[0] != '\0') ? r[0] : '.';
}

/* strtod on JSON number text s (NUL-terminated, writable), whatever the
 * locale: swaps '.' for the locale's decimal point first. */
static double json_strtod(char *s, char radix) {
    if (radix != '.') {
        char *dot = strchr(s, '.');
        if (dot != NULL)
            *dot = radix;
    }
    return strtod(s, NULL);
}

/* A message being written into a caller's fixed buffer: it keeps what
 * fits and ends with "..." when something was cut. */
typedef struct {
    char *p;
    size_t cap; /* bytes at p, including the terminating NUL */
    size_t len;
} json_msg;

static void json_msg_put(json_msg *m, const char *s, size_t n) {
    size_t room;

    if (m->cap == 0)
        return;
    room = m->cap - 1 - m->len;
    if (n <= room) {
        memcpy(m->p + m->len, s, n);
        m->len += n;
    } else {
        memcpy(m->p + m->len, s, room);
        m->len += room;
        if (m->cap >= 4)
            memcpy(m->p + m->cap - 4, "...", 3);
    }
    m->p[m->len] = '\0';
}

static void json_msg_puts(json_msg *m, const char *s) {
    json_msg_put(m, s, strlen(s));
}

static void json_msg_vputf(json_msg *m, const char *fmt, va_list ap) {
    char tmp[TIDE_JSON_ERRLEN];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);

    if (n > 0)
        json_msg_put(m, tmp, (size_t)n < sizeof tmp ? (size_t)n
                                                    : sizeof tmp - 1);
}

static void json_msg_putf(json_msg *m, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    json_msg_vputf(m, fmt, ap);
    va_end(ap);
}

/* Appends s (n bytes) quoted, with '"', '\' and every byte outside
 * printable ASCII escaped, and cut after 64 bytes: for keys in messages. */
static void json_msg_quoted(json_msg *m, const char *s, size_t n) {
    size_t i, shown = n > 64 ? 64 : n;

    json_msg_put(m, "\"", 1);
    for (i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = { '\\', (char)c };
            json_msg_put(m, esc, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            json_msg_putf(m, "\\x%02x", c);
        } else {
            json_msg_put(m, (const char *)&s[i], 1);
        }
    }
    if (shown < n)
        json_msg_put(m, "...", 3);
    json_msg_put(m, "\"", 1);
}

/* ===== NUMBERS ===== */

/* Writes v as JSON number text into out (JSON_NUMLEN bytes, NUL-terminated)
 * and returns its length, or returns 0 when v is inf or nan, which JSON
 * cannot carry. Integral values with |v| <= 2^53 print as integers, -0.0
 * as "-0", anything else as the shortest of %.15g/%.16g/%.17g that reads
 * back to v. */
/* Powers of ten that doubles hold exactly (all up to 1e22 do). */
static const double json_p10[] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,
                                  1e6, 1e7, 1e8,  1e9,  1e10, 1e11,
                                  1e12, 1e13, 1e14, 1e15};

/* Writes the digits of u into out (NUL-terminated); returns their count. */
static size_t json_format_u64(uint64_t u, char *out) {
    char tmp[24];
    size_t n = 0, i;

    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    for (i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

/* The fast path of json_format_number for a value with a short decimal
 * form: 1e-4 <= |v| < 1e15 and v == r / 10^d for an integer r of at most
 * 15 digits (found with the smallest d). Both r and 10^d are exact, so
 * the division, like strtod on the text "r / 10^d", is correctly rounded:
 * the text reads back to v, and it is what "%.15g" prints (v lies within
 * half an ulp of it, far closer than half a unit in its 15th digit, and
 * %g strips the trailing zeros the smallest d has none of). Returns the
 * length written, or 0 when v has no such form. */
static size_t json_format_short(double v, char *out) {
    double a = fabs(v);
    char digits[24];
    size_t n = 0, len, d;

    if (!(a >= 1e-4 && a < 1e15))
        return 0;
    for (d = 1; d <= 15; d++) {
        double m = a * json_p10[d], r;
        if (m >= 1e15)
            return 0;
        r = floor(m + 0.5);
        if (r >= 1e15 || r / json_p10[d] != a)
            continue;
        len = json_format_u64((uint64_t)r, digits);
        if (v < 0)
            out[n++] = '-';
        if (len <= d) {
            out[n++] = '0';
            out[n++] = '.';
            memset(out + n, '0', d - len);
            n += d - len;
            memcpy(out + n, digits, len);
            n += len;
        } else {
            memcpy(out + n, digits, len - d);
            n += len - d;
            out[n++] = '.';
            memcpy(out + n, digits + len - d, d);
            n += d;
        }
        out[n] = '\0';
        return n;
    }
    return 0;
}

/* Writes v as JSON number text into out (JSON_NUMLEN bytes, NUL-terminated)
 * and returns its length, or returns 0 for NaN and infinities, which JSON
 * cannot carry. Integral values with |v| <= 2^53 print as integers, -0.0
 * as "-0", anything else as the shortest of %.15g/%.16g/%.17g that reads
 * back to v (json_format_short finds the common case without printf). */
static size_t json_format_number(double v, char *out) {
    char radix;
    int n = 0, prec;

    if (!isfinite(v))
        return 0;
    if (v == 0) {
        strcpy(out, signbit(v) ? "-0" : "0");
        return strlen(out);
    }
    if (floor(v) == v && fabs(v) <= JSON_MAX_EXACT) {
        if (v < 0) {
            out[0] = '-';
            return 1 + json_format_u64((uint64_t)-v, out + 1);
        }
        return json_format_u64((uint64_t)v, out);
    }
    size_t fast = json_format_short(v, out);
    if (fast > 0)
        return fast;
    radix = json_radix();
    for (prec = 15; prec <= 17; prec++) {
        char back[JSON_NUMLEN];
        n = snprintf(out, JSON_NUMLEN, "%.*g", prec, v);
        if (radix != '.') {
            char *r = strchr(out, radix);
            if (r != NULL)
                *r = '.';
        }
        memcpy(back, out, (size_t)n + 1);
        if (prec == 17 || json_strtod(back, radix) == v)
            break;
    }
    return (size_t)n;
}

/* Writes the 64-bit integer held in bits (kind 1: int64_t, 2: uint64_t,
 * as tide__json_int64_get says) as JSON number text into out (JSON_NUMLEN
 * bytes) and returns its length: all its digits, with no LL suffix. */
static size_t json_format_int64(uint64_t bits, int kind, char *out) {
    int64_t v;

    if (kind == 2)
        return (size_t)snprintf(out, JSON_NUMLEN, "%" PRIu64, bits);
    memcpy(&v, &bits, sizeof v);
    return (size_t)snprintf(out, JSON_NUMLEN, "%" PRId64, v);
}

/* ===== ENCODING ===== */

enum { JSON_SEG_ROOT, JSON_SEG_INDEX, JSON_SEG_KEY, JSON_SEG_NUMKEY };

/* One level of the path from the root to the value being encoded. */
typedef struct {
    const void *table; /* the table encoded at this level, for cycles */
    int kind;          /* JSON_SEG_*: how this level was reached */
    const char *key;   /* JSON_SEG_KEY: the key's bytes (a Lua string
                          anchored by the parent table) */
    size_t keylen;
    double num;        /* JSON_SEG_INDEX / JSON_SEG_NUMKEY */
} json_frame;

/* One key of an object, collected so keys can be sorted. */
typedef struct {
    const char *s;  /* string key: its bytes, anchored by the table */
    size_t len;     /* length of the key text (s or text) */
    double num;     /* number key */
    int isnum;
    int slot;       /* the stack index of the value, or 0: look it up */
    char text[JSON_NUMLEN]; /* number key as JSON text */
} json_key;

/* Keys kept inline before the context switches to the heap. */
#define JSON_INLINE_KEYS 32

/* An object's keys and values wait on the Lua stack while its keys are
 * sorted (json_enc_object) as long as the stack stays below this many
 * slots; past it, each value is looked up again by its key, which needs
 * no stack, so deep nests of large objects still encode. */
#define JSON_ENC_STACK_BUDGET 4096

typedef struct {
    lua_State *L;
    int arr_mt, obj_mt; /* absolute stack indices of the metatables */
    int push;           /* push the result as a Lua string */
    int append;         /* buf is the caller's: never freed here */
    /* The output, owned here until handed to the caller (with append,
     * borrowed from it; a failure cuts it back to base bytes). */
    char *buf;
    size_t len, cap, base;
    /* With append: where the buffer goes back to the caller, before
     * json_encode_run returns or raises (it may have moved). */
    char **out_buf;
    size_t *out_len, *out_cap;
    /* Keys of the objects being encoded, a stack shared by all levels
     * (inline_keys, then the heap). */
    json_key *keys;
    size_t nkeys, keycap;
    json_key inline_keys[JSON_INLINE_KEYS];
    /* frames[0..depth] describe the path to the current value. */
    json_frame *frames;
    int framecap;
    json_frame inline_frames[JSON_INLINE_LEVELS];
    int rc;
    json_msg err;
} json_enc;

/* Appends n bytes to the output. Never raises (OOM aborts). */
static void json_put(json_enc *e, const char *s, size_t n) {
    if (e->cap - e->len < n + 1) {
        size_t cap = e->cap ? e->cap : 256;
        while (cap - e->len < n + 1)
            cap *= 2;
        e->buf = tide__xrealloc(e->buf, cap);
        e->cap = cap;
    }
    memcpy(e->buf + e->len, s, n);
    e->len += n;
}

static void json_putc(json_enc *e, char c) {
    if (e->cap - e->len >= 2) { /* room for c and json_put's spare byte */
        e->buf[e->len++] = c;
        return;
    }
    json_put(e, &c, 1);
}

/* Makes room for n more bytes (and json_put's spare byte). */
static void json_reserve(json_enc *e, size_t n) {
    if (e->cap - e->len < n + 1) {
        size_t cap = e->cap ? e->cap : 256;
        while (cap - e->len < n + 1)
            cap *= 2;
        e->buf = tide__xrealloc(e->buf, cap);
        e->cap = cap;
    }
}

/* Adds a key to e->keys and returns it. */
static json_key *json_key_new(json_enc *e) {
    if (e->nkeys == e->keycap) {
        size_t cap = e->keycap * 2;
        if (e->keys == e->inline_keys) {
            e->keys = tide__xmalloc(cap * sizeof(json_key));
            memcpy(e->keys, e->inline_keys, sizeof e->inline_keys);
        } else {
            e->keys = tide__xrealloc(e->keys, cap * sizeof(json_key));
        }
        e->keycap = cap;
    }
    return &e->keys[e->nkeys++];
}

/* Makes room for frames[0..depth]. */
static void json_frames_reserve(json_enc *e, int depth) {
    int cap;

    if (depth < e->framecap)
        return;
    cap = e->framecap * 2;
    while (cap <= depth)
        cap *= 2;
    if (e->frames == e->inline_frames) {
        e->frames = tide__xmalloc((size_t)cap * sizeof(json_frame));
        memcpy(e->frames, e->inline_frames, sizeof e->inline_frames);
    } else {
        e->frames = tide__xrealloc(e->frames,
                                   (size_t)cap * sizeof(json_frame));
    }
    e->framecap = cap;
}

/* Writes the path of frames[1..depth] ("$", "$.a[2]", "$[\"a b\"]"). */
static void json_msg_path(json_msg *m, const json_frame *frames, int depth) {
    int i;

    json_msg_put(m, "$", 1);
    for (i = 1; i <= depth; i++) {
        const json_frame *f = &frames[i];
        char num[JSON_NUMLEN];
        size_t j;
        int ident;

        switch (f->kind) {
        case JSON_SEG_INDEX:
            json_msg_putf(m, "[%.0f]", f->num);
            break;
        case JSON_SEG_NUMKEY:
            json_format_number(f->num, num);
            json_msg_putf(m, "[%s]", num);
            break;
        case JSON_SEG_KEY:
            ident = f->keylen > 0 && f->keylen <= 64 &&
                    !(f->key[0] >= '0' && f->key[0] <= '9');
            for (j = 0; ident && j < f->keylen; j++) {
                char c = f->key[j];
                ident = c == '_' || (c >= 'a' && c <= 'z') ||
                        (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
            }
            if (ident) {
                json_msg_put(m, ".", 1);
                json_msg_put(m, f->key, f->keylen);
            } else {
                json_msg_put(m, "[", 1);
                json_msg_quoted(m, f->key, f->keylen);
                json_msg_put(m, "]", 1);
            }
            break;
        default:
            break;
        }
    }
}

/* Records "<what> at <path of depth>" as the error and returns
 * TIDE_EVALUE. */
static int json_enc_fail(json_enc *e, int depth, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    json_msg_vputf(&e->err, fmt, ap);
    va_end(ap);
    json_msg_puts(&e->err, " at ");
    json_msg_path(&e->err, e->frames, depth);
    return TIDE_EVALUE;
}

/* Emits s (n bytes) as a JSON string, escaped as yajl_gen_string
 * escapes (see the top of this file). Returns 0, or -1 when s is not
 * strict UTF-8. */
static int json_gen_string(json_enc *e, const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *u = (const unsigned char *)s;
    size_t beg = 0, i = 0;

    /* Most strings are printable ASCII with nothing to escape: one scan
     * and one copy. */
    while (i < n && u[i] >= 0x20 && u[i] < 0x80 && u[i] != '"' &&
           u[i] != '\\')
        i++;
    if (i == n) {
        json_reserve(e, n + 2);
        e->buf[e->len++] = '"';
        memcpy(e->buf + e->len, s, n);
        e->len += n;
        e->buf[e->len++] = '"';
        return 0;
    }
    /* The bytes before i are ASCII, so a sequence cannot start there. */
    if (tide__utf8_check(s + i, n - i) != n - i)
        return -1;
    json_putc(e, '"');
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t elen = 2;

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        json_put(e, s + beg, i - beg);
        json_put(e, esc, elen);
        beg = i + 1;
    }
    json_put(e, s + beg, n - beg);
    json_putc(e, '"');
    return 0;
}

/* Emits number text (never yajl_gen_double: see the top of this file). */
static void json_gen_number(json_enc *e, const char *s, size_t n) {
    json_put(e, s, n);
}

static void json_gen_literal(json_enc *e, int which) {
    if (which < 0)
        json_put(e, "null", 4);
    else if (which)
        json_put(e, "true", 4);
    else
        json_put(e, "false", 5);
}

static int json_enc_value(json_enc *e, int depth);

/* Returns 1 when the number at index i is an integer in 1..2^53. */
static int json_is_index(lua_State *L, int i, double *out) {
    double n;

    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    n = lua_tonumber(L, i);
    *out = n;
    return n >= 1 && n <= JSON_MAX_EXACT && floor(n) == n;
}

/* Appends a description of the key at index i to m: key "a", key 1.5,
 * key of type boolean. */
static void json_describe_key(lua_State *L, int i, json_msg *m) {
    char num[JSON_NUMLEN];
    size_t n;
    const char *s;

    switch (lua_type(L, i)) {
    case LUA_TSTRING:
        s = lua_tolstring(L, i, &n);
        json_msg_puts(m, "key ");
        json_msg_quoted(m, s, n);
        break;
    case LUA_TNUMBER:
        if (json_format_number(lua_tonumber(L, i), num) == 0)
            snprintf(num, sizeof num, "%g", (double)lua_tonumber(L, i));
        json_msg_putf(m, "key %s", num);
        break;
    default:
        json_msg_putf(m, "key of type %s", luaL_typename(L, i));
        break;
    }
}

/* Encodes the table on top of the stack (at depth depth, frames[depth]
 * already filled) as an array of n entries: t[1..n], holes as null. */
static int json_enc_array(json_enc *e, int depth, double n) {
    lua_State *L = e->L;
    int i, rc;

    json_putc(e, '[');
    for (i = 1; i <= (int)n; i++) {
        json_frame *f;
        if (i > 1)
            json_putc(e, ',');
        lua_rawgeti(L, -1, i);
        f = &e->frames[depth + 1];
        f->kind = JSON_SEG_INDEX;
        f->num = i;
        rc = json_enc_value(e, depth + 1);
        lua_pop(L, 1);
        if (rc != 0)
            return rc;
    }
    json_putc(e, ']');
    return 0;
}

static inline int json_key_order(const json_key *x, const json_key *y) {
    const char *xs = x->isnum ? x->text : x->s;
    const char *ys = y->isnum ? y->text : y->s;
    size_t n = x->len < y->len ? x->len : y->len;
    int c;

    /* Most keys of an object differ in their first byte. */
    if (n > 0 && xs[0] != ys[0])
        return (unsigned char)xs[0] - (unsigned char)ys[0];
    c = memcmp(xs, ys, n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static int json_key_cmp(const void *a, const void *b) {
    return json_key_order(a, b);
}

/* Objects with at most this many keys are sorted through an index array
 * (json_sort_keys); larger ones with qsort. */
#define JSON_SORT_SMALL 32

/* Sorts the n keys at keys (n <= JSON_SORT_SMALL) into idx, an array of
 * their indices in key order: an insertion sort that moves indices, not
 * keys, since most objects have a few keys (qsort's merge sort costs a
 * call per comparison). */
static void json_sort_keys(const json_key *keys, size_t n,
                           unsigned char *idx) {
    size_t i, j;

    for (i = 0; i < n; i++)
        idx[i] = (unsigned char)i;
    for (i = 1; i < n; i++) {
        unsigned char k = idx[i];
        if (json_key_order(&keys[idx[i - 1]], &keys[k]) <= 0)
            continue;
        j = i;
        do {
            idx[j] = idx[j - 1];
            j--;
        } while (j > 0 && json_key_order(&keys[idx[j - 1]], &keys[k]) > 0);
        idx[j] = k;
    }
}

/* Fills k from the key at index -2 of the stack (its value at -1).
 * Returns 0, or TIDE_EVALUE (with the message) for a key that is
 * neither a string nor a finite number. */
static int json_enc_key(json_enc *e, int depth, json_key *k) {
    lua_State *L = e->L;
    int t = lua_type(L, -2);

    if (t == LUA_TSTRING) {
        k->isnum = 0;
        k->s = lua_tolstring(L, -2, &k->len);
        return 0;
    }
    if (t != LUA_TNUMBER)
        return json_enc_fail(e, depth, "cannot encode table key of type %s",
                             luaL_typename(L, -2));
    k->isnum = 1;
    k->s = NULL;
    k->num = lua_tonumber(L, -2);
    k->len = json_format_number(k->num, k->text);
    if (k->len == 0) { /* inf or -inf */
        json_msg_puts(&e->err, "cannot encode table ");
        json_describe_key(L, -2, &e->err);
        json_msg_puts(&e->err, " at ");
        json_msg_path(&e->err, e->frames, depth);
        return TIDE_EVALUE;
    }
    return 0;
}

/* Encodes the table on top of the stack as an object with sorted keys.
 * Keys must be strings or finite numbers.
 *
 * The keys are collected first (lua_next's order is the table's), with
 * each value left on the stack behind its key, so that no value needs to
 * be looked up again by a key made into a Lua string once more. Past
 * JSON_ENC_STACK_BUDGET slots the values stay in the table and are
 * looked up (slot 0). The faults are found in the same order either way:
 * key types as lua_next meets them, then a number key that prints as a
 * string key does, then in key order invalid UTF-8 in a key or a value
 * that cannot be encoded. */
static int json_enc_object(json_enc *e, int depth) {
    lua_State *L = e->L;
    int tab = lua_gettop(L), stacked = 1, rc;
    size_t base = e->nkeys, i, n;
    unsigned char idx[JSON_SORT_SMALL];

    lua_pushnil(L);
    while (lua_next(L, tab) != 0) {
        json_key *k = json_key_new(e);
        rc = json_enc_key(e, depth, k);
        if (rc != 0) {
            lua_settop(L, tab);
            e->nkeys = base;
            return rc;
        }
        k->slot = 0;
        if (stacked && lua_gettop(L) + 2 <= JSON_ENC_STACK_BUDGET &&
            lua_checkstack(L, 2)) {
            /* Keep the key and the value; a copy of the key goes on. */
            k->slot = lua_gettop(L);
            lua_pushvalue(L, -2);
        } else {
            /* From here on the values are looked up: the pairs kept so
             * far go (each key's bytes stay anchored by the table), and
             * the key lua_next goes on from moves down to tab + 1. */
            size_t j;
            lua_pop(L, 1);
            if (stacked) {
                for (j = base; j < e->nkeys; j++)
                    e->keys[j].slot = 0;
                if (lua_gettop(L) > tab + 1) {
                    lua_replace(L, tab + 1);
                    lua_settop(L, tab + 1);
                }
                stacked = 0;
            }
        }
    }
    n = e->nkeys - base;
    /* KEY(i): the i-th key in order (idx holds the order of small
     * objects; large ones are sorted in place). */
#define KEY(i) (&e->keys[base + (n <= JSON_SORT_SMALL ? idx[i] : (i))])
    if (n <= JSON_SORT_SMALL)
        json_sort_keys(e->keys + base, n, idx);
    else
        qsort(e->keys + base, n, sizeof(json_key), json_key_cmp);
    for (i = 1; i < n; i++) {
        if (json_key_cmp(KEY(i - 1), KEY(i)) == 0) {
            const json_key *k = KEY(i);
            json_msg_puts(&e->err, "cannot encode table with both a number "
                          "and a string key ");
            json_msg_quoted(&e->err, k->isnum ? k->text : k->s, k->len);
            json_msg_puts(&e->err, " at ");
            json_msg_path(&e->err, e->frames, depth);
            lua_settop(L, tab);
            e->nkeys = base;
            return TIDE_EVALUE;
        }
    }

    json_putc(e, '{');
    for (i = 0; i < n; i++) {
        /* e->keys may move while a value is encoded: copy what is needed. */
        json_key k = *KEY(i);
        json_frame *f;

        if (i > 0)
            json_putc(e, ',');
        if (json_gen_string(e, k.isnum ? k.text : k.s, k.len) != 0) {
            json_msg_puts(&e->err, "cannot encode ");
            json_msg_quoted(&e->err, k.s, k.len);
            json_msg_puts(&e->err, " (invalid UTF-8 key) at ");
            json_msg_path(&e->err, e->frames, depth);
            lua_settop(L, tab);
            e->nkeys = base;
            return TIDE_EVALUE;
        }
        json_putc(e, ':');
        f = &e->frames[depth + 1];
        if (k.isnum) {
            f->kind = JSON_SEG_NUMKEY;
            f->num = k.num;
        } else {
            f->kind = JSON_SEG_KEY;
            f->key = k.s;
            f->keylen = k.len;
        }
        if (k.slot != 0) {
            lua_pushvalue(L, k.slot);
        } else {
            if (k.isnum)
                lua_pushnumber(L, k.num);
            else
                lua_pushlstring(L, k.s, k.len);
            lua_rawget(L, tab);
        }
        rc = json_enc_value(e, depth + 1);
        lua_pop(L, 1);
        if (rc != 0) {
            lua_settop(L, tab);
            e->nkeys = base;
            return rc;
        }
    }
#undef KEY
    json_putc(e, '}');
    lua_settop(L, tab);
    e->nkeys = base;
    return 0;
}

/* Encodes the table on top of the stack, found at depth depth. Checks
 * depth and cycles, then picks array or object (see DESIGN). */
static int json_enc_table(json_enc *e, int depth) {
    lua_State *L = e->L;
    const void *t = lua_topointer(L, -1);
    int i, marked = 0;
    double count = 0, max = 0, n;
    int all_index = 1;

    if (depth >= TIDE_JSON_MAX_DEPTH)
        return json_enc_fail(e, depth, "cannot encode tables nested deeper "
                             "than %d", TIDE_JSON_MAX_DEPTH);
    for (i = 0; i < depth; i++) {
        if (e->frames[i].table == t) {
            json_msg_puts(&e->err, "cannot encode cyclic table at ");
            json_msg_path(&e->err, e->frames, depth);
            json_msg_puts(&e->err, " (the same table as ");
            json_msg_path(&e->err, e->frames, i);
            json_msg_puts(&e->err, ")");
            return TIDE_EVALUE;
        }
    }
    if (!lua_checkstack(L, 4))
        return json_enc_fail(e, depth, "cannot encode: Lua stack exhausted");
    e->frames[depth].table = t;
    json_frames_reserve(e, depth + 1);

    if (lua_getmetatable(L, -1)) {
        if (lua_rawequal(L, -1, e->arr_mt))
            marked = 'a';
        else if (lua_rawequal(L, -1, e->obj_mt))
            marked = 'o';
        lua_pop(L, 1);
    }
    if (marked == 'o')
        return json_enc_object(e, depth);

    /* Count the keys, find the largest index and check the key types. */
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_pop(L, 1);
        count++;
        if (json_is_index(L, -1, &n)) {
            if (n > max)
                max = n;
        } else {
            all_index = 0;
            if (marked == 'a') {
                json_msg_puts(&e->err, "cannot encode array with ");
                json_describe_key(L, -1, &e->err);
                lua_pop(L, 1);
                json_msg_puts(&e->err, " at ");
                json_msg_path(&e->err, e->frames, depth);
                return TIDE_EVALUE;
            }
        }
    }
    if (marked == 'a') {
        if (max > INT_MAX || (max > 1000 && max > 2 * count))
            return json_enc_fail(e, depth, "cannot encode sparse array "
                                 "(largest index %.0f, %.0f entries)",
                                 max, count);
        return json_enc_array(e, depth, max);
    }
    if (count > 0 && all_index && max == count)
        return json_enc_array(e, depth, max);
    return json_enc_object(e, depth);
}

/* Encodes the value on top of the stack, found at depth depth (the path to
 * it is frames[1..depth]). Leaves the stack as it found it. Returns 0 or
 * TIDE_EVALUE with the message in e->err. */
static int json_enc_value(json_enc *e, int depth) {
    lua_State *L = e->L;
    char num[JSON_NUMLEN];
    const char *s;
    size_t n;
    double v;

    switch (lua_type(L, -1)) {
    case LUA_TNIL:
        json_gen_literal(e, -1);
        return 0;
    case LUA_TBOOLEAN:
        json_gen_literal(e, lua_toboolean(L, -1));
        return 0;
    case LUA_TNUMBER:
        v = lua_tonumber(L, -1);
        /* Small non-negative integers, the most common numbers, are
         * written straight into the output (json_format_number would
         * print the same digits). */
        if (v >= 1 && v < 1e15 && floor(v) == v) {
            uint64_t u = (uint64_t)v;
            char *o;
            json_reserve(e, 16);
            o = e->buf + e->len + 16;
            n = 0;
            do {
                *--o = (char)('0' + u % 10);
                u /= 10;
                n++;
            } while (u != 0);
            memmove(e->buf + e->len, o, n);
            e->len += n;
            return 0;
        }
        n = json_format_number(v, num);
        if (n == 0)
            return json_enc_fail(e, depth, "cannot encode number %s",
                                 isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
        json_gen_number(e, num, n);
        return 0;
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &n);
        if (json_gen_string(e, s, n) != 0)
            return json_enc_fail(e, depth, "cannot encode invalid UTF-8 "
                                 "string");
        return 0;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, -1) == NULL) {
            json_gen_literal(e, -1);
            return 0;
        }
        break;
    case LUA_TTABLE:
        return json_enc_table(e, depth);
    case TIDE_LUA_TCDATA: {
        uint64_t bits;
        int kind = tide__json_int64_get(L, -1, &bits);
        if (kind != 0) {
            n = json_format_int64(bits, kind, num);
            json_gen_number(e, num, n);
            return 0;
        }
        break;
    }
    default:
        break;
    }
    return json_enc_fail(e, depth, "cannot encode %s", luaL_typename(L, -1));
}

/* The protected half of encoding: arguments are the value and the context
 * (lightuserdata). Pushes the metatables, encodes, and with e->push returns
 * the JSON text as a string. */
static int json_enc_protected(lua_State *L) {
    json_enc *e = lua_touserdata(L, 2);

    json_push_array_mt(L);
    e->arr_mt = lua_gettop(L);
    json_push_object_mt(L);
    e->obj_mt = lua_gettop(L);
    lua_pushvalue(L, 1);
    e->rc = json_enc_value(e, 0);
    if (e->rc == 0 && e->push) {
        lua_pushlstring(L, e->buf, e->len);
        return 1;
    }
    return 0;
}

/* Runs the encoder on the value at idx. Returns 0 (with e->buf owned by
 * the caller, and with e->push the string pushed) or TIDE_EVALUE (nothing
 * pushed, e->buf freed). Frees everything else before returning, and
 * re-raises a Lua error after freeing e->buf too. */
static int json_encode_run(lua_State *L, int idx, json_enc *e) {
    int status;

    if (idx < 0 && idx > LUA_REGISTRYINDEX)
        idx = lua_gettop(L) + idx + 1;
    /* These may raise; nothing is allocated yet. */
    lua_pushcfunction(L, json_enc_protected);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, e);

    e->L = L;
    e->keys = e->inline_keys;
    e->keycap = JSON_INLINE_KEYS;
    e->frames = e->inline_frames;
    e->framecap = JSON_INLINE_LEVELS;
    e->frames[0].kind = JSON_SEG_ROOT;

    status = lua_pcall(L, 2, e->push ? 1 : 0, 0);

    if (e->keys != e->inline_keys)
        free(e->keys);
    if (e->frames != e->inline_frames)
        free(e->frames);
    if (e->append) {
        if (status != 0 || e->rc != 0)
            e->len = e->base;
        *e->out_buf = e->buf;
        *e->out_len = e->len;
        *e->out_cap = e->cap;
    } else if (status != 0 || e->rc != 0 || e->push) {
        free(e->buf);
        e->buf = NULL;
        e->len = 0;
    }
    if (status != 0)
        lua_error(L);
    if (e->rc != 0 && e->push)
        lua_pop(L, 1);
    return e->rc;
}

int tide__json_encode_value(lua_State *L, int idx, char **out,
                            size_t *outlen, char *err, size_t errlen) {
    json_enc e;
    int rc;

    memset(&e, 0, sizeof e);
    e.err.p = err;
    e.err.cap = errlen;
    if (errlen > 0)
        err[0] = '\0';
    rc = json_encode_run(L, idx, &e);
    if (rc == 0) {
        json_put(&e, "", 1);
        e.len--;
    }
    *out = e.buf;
    *outlen = e.len;
    return rc;
}

int tide__json_encode_append(lua_State *L, int idx, char **buf, size_t *len,
                             size_t *cap, char *err, size_t errlen) {
    json_enc e;
    int rc;

    memset(&e, 0, sizeof e);
    e.append = 1;
    e.buf = *buf;
    e.len = e.base = *len;
    e.cap = *cap;
    e.err.p = err;
    e.err.cap = errlen;
    if (errlen > 0)
        err[0] = '\0';
    e.out_buf = buf;
    e.out_len = len;
    e.out_cap = cap;
    rc = json_encode_run(L, idx, &e);
    return rc;
}

int tide__json_encode_push(lua_State *L, int idx, char *err, size_t errlen) {
    json_enc e;

    memset(&e, 0, sizeof e);
    e.push = 1;
    e.err.p = err;
    e.err.cap = errlen;
    if (errlen > 0)
        err[0] = '\0';
    return json_encode_run(L, idx, &e);
}

/* ===== DECODING ===== */

typedef struct {
    int is_array;
    int n; /* entries so far, for arrays */
} json_level;

typedef struct {
    lua_State *L;
    yajl_handle h;
    const char *s;
    size_t len;
    int arr_mt, obj_mt; /* absolute stack indices of the metatables */
    int depth;          /* open containers; levels[1..depth] */
    json_level *levels;
    int levelcap;
    json_level inline_levels[JSON_INLINE_LEVELS];
    int too_deep;       /* a callback stopped the parse: too deep */
    int no_stack;       /* a callback stopped the parse: Lua stack full */
    int bad_utf8;       /* a callback stopped the parse: not strict UTF-8 */
    size_t bad_at;      /* with bad_utf8: the offending byte's offset */
    /* Where the document's value ended: yajl_complete_parse drops an
     * unterminated string after a complete value ('{"a":1} "') instead of
     * calling it trailing garbage, so the bytes after `end` are checked
     * here. `finishing`: inside yajl_complete_parse, whose callbacks come
     * from its own one-byte buffer (a number at the very end). */
    size_t end;
    int finishing;
    /* Strings with surrogate escapes are decoded here (json_dec_text),
     * into this buffer, owned here and freed after the parse. */
    char *sbuf;
    size_t sbufcap;
    char radix;
    int rc;
    json_msg err;
} json_dec;

/* Stores the value on top of the stack into the open container, if any.
 * At depth 0 it is the document and stays on the stack. */
static int json_dec_add(json_dec *d) {
    json_level *lv;

    if (d->depth == 0) {
        d->end = d->finishing ? d->len : yajl_get_bytes_consumed(d->h);
        return 1;
    }
    lv = &d->levels[d->depth];
    if (lv->is_array)
        lua_rawseti(d->L, -2, ++lv->n);
    else
        lua_rawset(d->L, -3); /* key at -2 */
    return 1;
}

static int json_dec_null(void *ctx) {
    json_dec *d = ctx;

    lua_pushlightuserdata(d->L, NULL);
    return json_dec_add(d);
}

static int json_dec_boolean(void *ctx, int b) {
    json_dec *d = ctx;

    lua_pushboolean(d->L, b);
    return json_dec_add(d);
}

/* Reads the n bytes at s as an unsigned decimal integer into *u. Returns
 * 1, or 0 when they are not all digits or the value exceeds UINT64_MAX. */
static int json_parse_u64(const char *s, size_t n, uint64_t *u) {
    uint64_t v = 0;
    size_t i;

    if (n == 0 || n > 20)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned dg = (unsigned)(s[i] - '0');
        if (dg > 9 || v > (UINT64_MAX - dg) / 10)
            return 0;
        v = v * 10 + dg;
    }
    *u = v;
    return 1;
}

/* Reads a number of the form [-]digits.digits (no exponent) with at most
 * 15 digits in all as m / 10^f, m and 10^f exact: the division is
 * correctly rounded, so the result is strtod's (Clinger's fast path),
 * without copying the text or going through the locale. Returns 0 for
 * any other form. */
static int json_parse_short(const char *s, size_t n, double *out) {
    size_t i = s[0] == '-';
    uint64_t m = 0;
    int digits = 0, frac = -1;

    for (; i < n; i++) {
        unsigned dg = (unsigned)(s[i] - '0');
        if (s[i] == '.' && frac < 0) {
            frac = 0;
            continue;
        }
        if (dg > 9 || ++digits > 15)
            return 0;
        m = m * 10 + dg;
        if (frac >= 0)
            frac++;
    }
    if (frac <= 0)
        return 0;
    *out = (double)m / json_p10[frac];
    if (s[0] == '-')
        *out = -*out;
    return 1;
}

/* Numbers arrive as text that yajl's lexer already checked. An integer
 * (no fraction, no exponent) of magnitude up to 2^53 is a plain number,
 * read here without strtod. One beyond 2^53 that fits int64_t (every
 * negative one down to -2^63, positive ones up to 2^63 - 1) becomes an
 * int64_t cdata, one up to 2^64 - 1 a uint64_t cdata, so it keeps every
 * digit. Anything else goes through strtod. */
static int json_dec_number(void *ctx, const char *s, size_t n) {
    json_dec *d = ctx;
    char tmp[64];
    char *p;
    double v;
    uint64_t u;
    int neg = s[0] == '-';

    if (json_parse_u64(s + neg, n - (size_t)neg, &u)) {
        if (u <= (UINT64_C(1) << 53)) {
            v = (double)u;
            lua_pushnumber(d->L, neg ? -v : v);
            return json_dec_add(d);
        }
        if (!neg || u <= (UINT64_C(1) << 63)) {
            tide__json_int64_push(d->L, neg ? 0 - u : u,
                                  !neg && u > (uint64_t)INT64_MAX);
            return json_dec_add(d);
        }
    }
    if (json_parse_short(s, n, &v)) {
        lua_pushnumber(d->L, v);
        return json_dec_add(d);
    }
    p = n < sizeof tmp ? tmp : tide__xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    v = json_strtod(p, d->radix);
    if (p != tmp)
        free(p); /* before lua_pushnumber, which may raise */
    lua_pushnumber(d->L, v);
    return json_dec_add(d);
}

/* Returns the value of the hex digit c, which yajl's lexer checked. */
static unsigned json_hexval(char c) {
    if (c >= '0' && c <= '9')
        return (unsigned)(c - '0');
    return (unsigned)((c | 0x20) - 'a' + 10);
}

static unsigned json_hex4(const char *s) {
    return json_hexval(s[0]) << 12 | json_hexval(s[1]) << 8 |
           json_hexval(s[2]) << 4 | json_hexval(s[3]);
}

/* Decodes the n bytes between the quotes of a string token, whose escapes
 * yajl's lexer has checked, into out (room for n bytes: no escape grows
 * when decoded) and returns the length. A \u escape of a high surrogate
 * followed by one of a low surrogate is one code point; any other
 * surrogate escape becomes U+FFFD and what follows it is decoded on its
 * own, as jq 1.7 does ("\ud800x" is U+FFFD then x). */
static size_t json_unescape(char *out, const char *s, size_t n) {
    size_t i = 0, len = 0;

    while (i < n) {
        const char *bs = memchr(s + i, '\\', n - i);
        size_t run = bs != NULL ? (size_t)(bs - (s + i)) : n - i;
        unsigned cp, lo;

        memcpy(out + len, s + i, run);
        len += run;
        i += run;
        if (i == n)
            break;
        i += 2;
        switch (s[i - 1]) {
        case 'b': out[len++] = '\b'; break;
        case 'f': out[len++] = '\f'; break;
        case 'n': out[len++] = '\n'; break;
        case 'r': out[len++] = '\r'; break;
        case 't': out[len++] = '\t'; break;
        case 'u':
            cp = json_hex4(s + i);
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && n - i >= 6 &&
                s[i] == '\\' && s[i + 1] == 'u') {
                lo = json_hex4(s + i + 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp = 0xFFFD;
            len += tide__utf8_put(out + len, cp);
            break;
        default: /* '"', '\\' and '/' stand for themselves */
            out[len++] = s[i - 1];
            break;
        }
    }
    return len;
}

/* Returns 1 when the text yajl_string_decode made of a token with escapes
 * may be wrong: it gets every escape right except those of surrogates, and
 * what it makes of those always shows as a '?' (a lone high surrogate), a
 * byte ED (a lone low one, as ED B0..BF xx) or a byte F0..F4 (any high
 * surrogate followed by a \u escape, low or not, as one code point). */
static int json_yajl_suspect(const unsigned char *s, size_t n) {
    size_t i;

    if (memchr(s, '?', n) != NULL)
        return 1;
    for (i = 0; i < n; i++)
        if (s[i] >= 0xED && s[i] <= 0xF4)
            return 1;
    return 0;
}

/* Checks the string or key that yajl handed to a callback (*s, *n) and,
 * where yajl's decoding may be wrong, decodes it again into d->sbuf and
 * points *s and *n there.
 *
 * A token without escapes arrives as its bytes in the input; yajl's lexer
 * checked only their shape, so they are checked here as strict UTF-8. A
 * token with escapes arrives decoded by yajl_string_decode, which turns a
 * lone high surrogate and the character after it into "?", a lone low
 * surrogate into the bytes ED B0 80, and a high surrogate followed by any
 * \u escape into a pair. Text that shows none of that (json_yajl_suspect)
 * is right and only checked. Otherwise, or to name the offending byte of
 * text that is not UTF-8, the token is found again in the input and
 * decoded by json_unescape. Its end is known: the parse consumed the input
 * up to its closing quote. Its opening quote is the nearest '"' before
 * that which is not escaped: inside a string every '"' is written \",
 * behind an odd run of backslashes, and before the opening quote there is
 * never a backslash.
 *
 * Returns 1, or 0 (stopping the parse) with d->bad_utf8 and d->bad_at set
 * when the text is not strict UTF-8. Raises nothing. */
static int json_dec_text(json_dec *d, const unsigned char **s, size_t *n) {
    uintptr_t p = (uintptr_t)*s, base = (uintptr_t)d->s;
    size_t start, end, bad, len;

    if (p >= base && p <= base + d->len) {
        bad = tide__utf8_check(*s, *n);
        if (bad == *n)
            return 1;
        d->bad_utf8 = 1;
        d->bad_at = (size_t)(p - base) + bad;
        return 0;
    }
    if (!json_yajl_suspect(*s, *n) && tide__utf8_check(*s, *n) == *n)
        return 1;
    end = yajl_get_bytes_consumed(d->h) - 1;
    TIDE_ASSERT(end < d->len && d->s[end] == '"');
    start = end;
    for (;;) {
        const char *q = memrchr(d->s, '"', start);
        size_t k;
        TIDE_ASSERT(q != NULL);
        start = (size_t)(q - d->s);
        for (k = start; k > 0 && d->s[k - 1] == '\\'; k--)
            ;
        if ((start - k) % 2 == 0)
            break;
    }
    start++; /* the first byte after the opening quote */
    len = end - start;
    bad = tide__utf8_check(d->s + start, len);
    if (bad != len) {
        d->bad_utf8 = 1;
        d->bad_at = start + bad;
        return 0;
    }
    if (d->sbufcap < len) {
        d->sbufcap = len;
        d->sbuf = tide__xrealloc(d->sbuf, len);
    }
    *n = json_unescape(d->sbuf, d->s + start, len);
    *s = (const unsigned char *)d->sbuf;
    return 1;
}

static int json_dec_string(void *ctx, const unsigned char *s, size_t n) {
    json_dec *d = ctx;

    if (!json_dec_text(d, &s, &n))
        return 0;
    lua_pushlstring(d->L, (const char *)s, n);
    return json_dec_add(d);
}

/* Opens a container: a new table with the array or object metatable.
 * Returns 0 (stopping the parse) past the depth limit. */
static int json_dec_open(json_dec *d, int is_array) {
    lua_State *L = d->L;

    if (d->depth >= TIDE_JSON_MAX_DEPTH) {
        d->too_deep = 1;
        return 0;
    }
    if (!lua_checkstack(L, 4)) {
        d->no_stack = 1;
        return 0;
    }
    if (d->depth + 1 >= d->levelcap) {
        int cap = d->levelcap * 2;
        if (d->levels == d->inline_levels) {
            d->levels = tide__xmalloc((size_t)cap * sizeof(json_level));
            memcpy(d->levels, d->inline_levels, sizeof d->inline_levels);
        } else {
            d->levels = tide__xrealloc(d->levels,
                                       (size_t)cap * sizeof(json_level));
        }
        d->levelcap = cap;
    }
    d->depth++;
    d->levels[d->depth].is_array = is_array;
    d->levels[d->depth].n = 0;
    lua_createtable(L, 0, 0);
    lua_pushvalue(L, is_array ? d->arr_mt : d->obj_mt);
    lua_setmetatable(L, -2);
    return 1;
}

static int json_dec_start_map(void *ctx) {
    return json_dec_open(ctx, 0);
}

static int json_dec_start_array(void *ctx) {
    return json_dec_open(ctx, 1);
}

static int json_dec_map_key(void *ctx, const unsigned char *s, size_t n) {
    json_dec *d = ctx;

    if (!json_dec_text(d, &s, &n))
        return 0;
    lua_pushlstring(d->L, (const char *)s, n);
    return 1;
}

static int json_dec_close(void *ctx) {
    json_dec *d = ctx;

    d->depth--;
    return json_dec_add(d);
}

static const yajl_callbacks json_callbacks = {
    .yajl_null = json_dec_null,
    .yajl_boolean = json_dec_boolean,
    .yajl_integer = NULL,
    .yajl_double = NULL,
    .yajl_number = json_dec_number,
    .yajl_string = json_dec_string,
    .yajl_start_map = json_dec_start_map,
    .yajl_map_key = json_dec_map_key,
    .yajl_end_map = json_dec_close,
    .yajl_start_array = json_dec_start_array,
    .yajl_end_array = json_dec_close,
};

/* Records the parse error as the message, with its byte offset. */
static void json_dec_fail(json_dec *d, int at_end) {
    size_t off = at_end ? d->len : yajl_get_bytes_consumed(d->h);
    unsigned char *ye;
    size_t n;

    d->rc = TIDE_EVALUE;
    if (d->too_deep) {
        json_msg_putf(&d->err, "JSON nested deeper than %d at byte %zu",
                      TIDE_JSON_MAX_DEPTH, off);
        return;
    }
    if (d->no_stack) {
        json_msg_putf(&d->err, "JSON too deep for the Lua stack at byte %zu",
                      off);
        return;
    }
    if (d->bad_utf8) {
        /* The words of yajl's own message for the bytes it refuses. */
        json_msg_putf(&d->err, "invalid JSON at byte %zu: lexical error: "
                      "invalid bytes in UTF8 string", d->bad_at);
        return;
    }
    /* yajl's text looks like "parse error: trailing garbage\n". */
    ye = yajl_get_error(d->h, 0, (const unsigned char *)d->s, d->len);
    TIDE_ASSERT(ye != NULL);
    n = strlen((char *)ye);
    while (n > 0 && (ye[n - 1] == '\n' || ye[n - 1] == ' ' ||
                     ye[n - 1] == '.'))
        n--;
    json_msg_putf(&d->err, "invalid JSON at byte %zu: ", off);
    json_msg_put(&d->err, (const char *)ye, n);
    yajl_free_error(d->h, ye);
}

/* Returns the offset of the first \v or \f in s, or len when there is none.
 * yajl's lexer skips both as whitespace, which JSON does not allow (only
 * space, \t, \n and \r; JSONTestSuite n_structure_whitespace_formfeed).
 * It rejects every raw control byte inside strings, so after yajl accepted
 * a text, any \v or \f in it lies between tokens and is an error. */
static size_t json_bad_space(const char *s, size_t len) {
    const char *v, *f;

    if (len == 0)
        return len;
    v = memchr(s, '\v', len);
    f = memchr(s, '\f', len);
    if (v == NULL && f == NULL)
        return len;
    if (v == NULL || (f != NULL && f < v))
        v = f;
    return (size_t)(v - s);
}

/* The protected half of decoding: the argument is the context. Returns
 * the value, or nothing with d->rc set. */
static int json_dec_protected(lua_State *L) {
    json_dec *d = lua_touserdata(L, 1);
    yajl_status st;
    int at_end = 0;
    size_t bad;

    json_push_array_mt(L);
    d->arr_mt = lua_gettop(L);
    json_push_object_mt(L);
    d->obj_mt = lua_gettop(L);
    st = yajl_parse(d->h, (const unsigned char *)d->s, d->len);
    if (st == yajl_status_ok) {
        at_end = 1;
        d->finishing = 1;
        st = yajl_complete_parse(d->h);
    }
    if (st != yajl_status_ok) {
        json_dec_fail(d, at_end);
        return 0;
    }
    bad = json_bad_space(d->s, d->len);
    if (bad < d->len) {
        d->rc = TIDE_EVALUE;
        json_msg_putf(&d->err, "invalid JSON at byte %zu: lexical error: "
                      "invalid char in json text", bad);
        return 0;
    }
    for (bad = d->end; bad < d->len; bad++) {
        char c = d->s[bad];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            d->rc = TIDE_EVALUE;
            json_msg_putf(&d->err, "invalid JSON at byte %zu: parse error: "
                          "trailing garbage", bad);
            return 0;
        }
    }
    TIDE_ASSERT(d->depth == 0 && lua_gettop(L) == d->obj_mt + 1);
    return 1;
}

/* ===== FAST DECODING ===== */

/* Most texts a run decodes are small objects with short plain strings and
 * plain numbers, one per input line. For those, going through yajl costs
 * a handle (three allocations), a callback per token, a lua_pcall, and
 * tables that grow by rehashing as their keys arrive. json_fast_decode
 * handles that common case by itself, in two passes:
 *
 *   1. json_fast_scan reads the text into a fixed array of tokens on the
 *      C stack, checking everything: the grammar, strict UTF-8, escapes,
 *      and each number's value. It touches no Lua state.
 *   2. json_fast_build makes the value from the tokens, each table at its
 *      final size (the scan counted the members of each container).
 *
 * The fast path only ever answers for texts whose value it is sure of;
 * it gives up (returns 0, having pushed nothing) on ANYTHING else, and
 * the caller decodes the text again with yajl, which gives the value or
 * the error message as before. It gives up on: any malformed text (so
 * every message comes from yajl), \v, \f or any other byte between tokens
 * but space, \t, \n and \r, control bytes or invalid UTF-8 in a string,
 * surrogate escapes (\ud800: yajl's path repairs them, see json_dec_text),
 * exponents and numbers that need strtod or a 64-bit cdata (the yajl
 * path's json_dec_number reads the rest with the same json_parse_u64 and
 * json_parse_short used here, so the values agree bit for bit), nesting
 * deeper than JSON_FAST_DEPTH, more than JSON_FAST_TOKENS tokens, a text
 * of 4 GiB or more, and a Lua stack that cannot grow. What it accepts
 * decodes to the value the yajl path gives (spec/json_fast_spec.lua
 * compares the two on a table of odd inputs through the internal hook
 * JSON_SLOW_HOOK). Tables are made at their final size rather than grown
 * key by key, so the order in which pairs() visits a decoded object may
 * differ from the yajl path's; Lua never promised one, and the encoder
 * sorts keys.
 *
 * Memory: the tokens live on the C stack and pass 2 allocates only Lua
 * objects (an escaped string longer than a small stack buffer is decoded
 * into a Lua userdata), so a Lua memory error raised in pass 2 leaks
 * nothing. It is raised as it is (LUA_ERRMEM), not re-raised through
 * lua_error as the yajl path does; either way a Lua caller's pcall gets
 * "not enough memory". */

#define JSON_FAST_TOKENS 256
#define JSON_FAST_DEPTH 32

enum {
    JSON_T_OBJECT, JSON_T_ARRAY, JSON_T_STRING, JSON_T_NUMBER,
    JSON_T_TRUE, JSON_T_FALSE, JSON_T_NULL,
};

/* One token of a text being decoded: a value, or an object's key (a
 * string). An object's tokens are its own, then key, value, key, value;
 * an array's its own, then its elements. */
typedef struct {
    unsigned char kind;  /* JSON_T_* */
    unsigned char esc;   /* a string with escapes */
    uint32_t off;        /* a string: its first byte after the quote */
    union {
        double num;      /* a number's value */
        uint32_t len;    /* a string's bytes between the quotes */
        uint32_t count;  /* a container's members */
    } u;
} json_tok;

typedef struct {
    const unsigned char *s, *end;
    json_tok toks[JSON_FAST_TOKENS];
    int ntok;
    int maxdepth;        /* the deepest nesting seen */
} json_fast;

static const unsigned char *json_fast_ws(const unsigned char *p,
                                         const unsigned char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* The end of the literal w (n bytes) at p, or NULL when p holds another
 * text. */
static const unsigned char *json_fast_word(const unsigned char *p,
                                           const unsigned char *end,
                                           const char *w, size_t n) {
    return (size_t)(end - p) >= n && memcmp(p, w, n) == 0 ? p + n : NULL;
}

static int json_fast_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* Scans the string whose opening quote is at p[-1] into t. Returns the
 * byte after its closing quote, or NULL to give up. */
static const unsigned char *json_fast_string(json_fast *f,
                                             const unsigned char *p,
                                             json_tok *t) {
    const unsigned char *q = p, *end = f->end;
    unsigned high = 0, esc = 0;

    for (;;) {
        unsigned c;
        if (q == end)
            return NULL;
        c = *q;
        if (c == '"')
            break;
        if (c == '\\') {
            if (end - q < 2)
                return NULL;
            switch (q[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n':
            case 'r': case 't':
                q += 2;
                break;
            case 'u':
                if (end - q < 6 || !json_fast_hex(q[2]) ||
                    !json_fast_hex(q[3]) || !json_fast_hex(q[4]) ||
                    !json_fast_hex(q[5]))
                    return NULL;
                c = json_hex4((const char *)q + 2);
                if (c >= 0xD800 && c <= 0xDFFF)
                    return NULL;
                q += 6;
                break;
            default:
                return NULL;
            }
            esc = 1;
            continue;
        }
        if (c < 0x20)
            return NULL;
        high |= c;
        q++;
    }
    if ((size_t)(q - p) > UINT32_MAX)
        return NULL;
    if ((high & 0x80) &&
        tide__utf8_check(p, (size_t)(q - p)) != (size_t)(q - p))
        return NULL;
    t->kind = JSON_T_STRING;
    t->esc = (unsigned char)esc;
    t->off = (uint32_t)(p - f->s);
    t->u.len = (uint32_t)(q - p);
    return q + 1;
}

/* Scans the number that starts at p into t: -?(0|[1-9][0-9]*)(.[0-9]+)?,
 * read as json_dec_number reads it. Returns the byte after it, or NULL to
 * give up (an exponent, or a value that needs strtod or a cdata). */
static const unsigned char *json_fast_number(json_fast *f,
                                             const unsigned char *p,
                                             json_tok *t) {
    const unsigned char *q = p, *end = f->end;
    int neg = 0, frac = 0;
    uint64_t u;
    double v;

    if (*q == '-') {
        neg = 1;
        q++;
    }
    if (q == end)
        return NULL;
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        while (q < end && *q >= '0' && *q <= '9')
            q++;
    } else {
        return NULL;
    }
    if (q < end && *q == '.') {
        q++;
        if (q == end || !(*q >= '0' && *q <= '9'))
            return NULL;
        while (q < end && *q >= '0' && *q <= '9')
            q++;
        frac = 1;
    }
    if (q < end && (*q == 'e' || *q == 'E'))
        return NULL;
    if (!frac) {
        if (!json_parse_u64((const char *)p + neg, (size_t)(q - p) - neg,
                            &u) ||
            u > (UINT64_C(1) << 53))
            return NULL;
        v = (double)u;
        t->u.num = neg ? -v : v;
    } else {
        if (!json_parse_short((const char *)p, (size_t)(q - p), &v))
            return NULL;
        t->u.num = v;
    }
    t->kind = JSON_T_NUMBER;
    return q;
}

/* Pass 1: scans the whole text into f->toks. Returns 1 when it is one
 * value the fast path can decode, 0 to give up. */
static int json_fast_scan(json_fast *f) {
    const unsigned char *p = f->s, *end = f->end;
    int open[JSON_FAST_DEPTH]; /* token indices of the open containers */
    int depth = 0;
    json_tok *t, *c;

    p = json_fast_ws(p, end);
    for (;;) {
        /* A value starts at p. */
        if (p == end || f->ntok == JSON_FAST_TOKENS)
            return 0;
        t = &f->toks[f->ntok];
        switch (*p) {
        case '{':
        case '[':
            if (depth == JSON_FAST_DEPTH)
                return 0;
            t->kind = *p == '{' ? JSON_T_OBJECT : JSON_T_ARRAY;
            t->u.count = 0;
            open[depth++] = f->ntok++;
            if (depth > f->maxdepth)
                f->maxdepth = depth;
            p = json_fast_ws(p + 1, end);
            if (p < end && *p == (t->kind == JSON_T_OBJECT ? '}' : ']')) {
                p++;
                depth--;
                goto after_value;
            }
            if (t->kind == JSON_T_OBJECT)
                goto key;
            continue;
        case '"':
            p = json_fast_string(f, p + 1, t);
            break;
        case 't':
            t->kind = JSON_T_TRUE;
            p = json_fast_word(p, end, "true", 4);
            break;
        case 'f':
            t->kind = JSON_T_FALSE;
            p = json_fast_word(p, end, "false", 5);
            break;
        case 'n':
            t->kind = JSON_T_NULL;
            p = json_fast_word(p, end, "null", 4);
            break;
        default:
            p = json_fast_number(f, p, t);
            break;
        }
        if (p == NULL)
            return 0;
        f->ntok++;
    after_value:
        /* A value ended before p: what may follow depends on where. */
        p = json_fast_ws(p, end);
        if (depth == 0)
            return p == end;
        c = &f->toks[open[depth - 1]];
        c->u.count++;
        if (p == end)
            return 0;
        if (*p == ',') {
            p = json_fast_ws(p + 1, end);
            if (c->kind == JSON_T_OBJECT)
                goto key;
            continue;
        }
        if (*p != (c->kind == JSON_T_OBJECT ? '}' : ']'))
            return 0;
        p++;
        depth--;
        goto after_value;
    key:
        /* An object's key starts at p, then ':' and its value. */
        if (p == end || *p != '"' || f->ntok == JSON_FAST_TOKENS)
            return 0;
        p = json_fast_string(f, p + 1, &f->toks[f->ntok]);
        if (p == NULL)
            return 0;
        f->ntok++;
        p = json_fast_ws(p, end);
        if (p == end || *p != ':')
            return 0;
        p = json_fast_ws(p + 1, end);
    }
}

/* Pushes the string of token t. */
static void json_fast_push_string(lua_State *L, const json_fast *f,
                                  const json_tok *t) {
    const char *s = (const char *)f->s + t->off;
    char tmp[256];
    char *out;
    size_t n;

    if (!t->esc) {
        lua_pushlstring(L, s, t->u.len);
        return;
    }
    /* Decoding never makes the text longer. */
    if (t->u.len <= sizeof tmp) {
        n = json_unescape(tmp, s, t->u.len);
        lua_pushlstring(L, tmp, n);
        return;
    }
    out = lua_newuserdata(L, t->u.len);
    n = json_unescape(out, s, t->u.len);
    lua_pushlstring(L, out, n);
    lua_remove(L, -2);
}

/* Pass 2: pushes the value of token i and returns the index of the token
 * after it (and after all of its members). arr_mt and obj_mt are the
 * stack indices of the metatables. */
static int json_fast_build(lua_State *L, const json_fast *f, int i,
                           int arr_mt, int obj_mt) {
    const json_tok *t = &f->toks[i++];
    uint32_t k;

    switch (t->kind) {
    case JSON_T_OBJECT:
        lua_createtable(L, 0, (int)t->u.count);
        lua_pushvalue(L, obj_mt);
        lua_setmetatable(L, -2);
        for (k = 0; k < t->u.count; k++) {
            json_fast_push_string(L, f, &f->toks[i++]);
            i = json_fast_build(L, f, i, arr_mt, obj_mt);
            lua_rawset(L, -3);
        }
        break;
    case JSON_T_ARRAY:
        lua_createtable(L, (int)t->u.count, 0);
        lua_pushvalue(L, arr_mt);
        lua_setmetatable(L, -2);
        for (k = 0; k < t->u.count; k++) {
            i = json_fast_build(L, f, i, arr_mt, obj_mt);
            lua_rawseti(L, -2, (int)k + 1);
        }
        break;
    case JSON_T_STRING:
        json_fast_push_string(L, f, t);
        break;
    case JSON_T_NUMBER:
        lua_pushnumber(L, t->u.num);
        break;
    case JSON_T_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_T_FALSE:
        lua_pushboolean(L, 0);
        break;
    default:
        lua_pushlightuserdata(L, NULL);
        break;
    }
    return i;
}

/* Decodes the len bytes at s and pushes the value, returning 1, when the
 * fast path can (see above); else pushes nothing and returns 0. */
static int json_fast_decode(lua_State *L, const char *s, size_t len) {
    json_fast f;
    int base;

    if (len > UINT32_MAX)
        return 0;
    f.s = (const unsigned char *)s;
    f.end = f.s + len;
    f.ntok = 0;
    f.maxdepth = 0;
    if (!json_fast_scan(&f))
        return 0;
    /* Each open level holds a table and a key; the metatables, a string
     * being decoded and its userdata take a few more. */
    if (!lua_checkstack(L, 2 * f.maxdepth + 8))
        return 0;
    json_push_array_mt(L);
    json_push_object_mt(L);
    base = lua_gettop(L);
    json_fast_build(L, &f, 0, base - 1, base);
    lua_replace(L, base - 1);
    lua_settop(L, base - 1);
    return 1;
}

/* tide__json_decode_push, with the fast path (fast 1) or yajl's only
 * (fast 0: the internal test hook JSON_SLOW_HOOK). */
static int json_decode_run(lua_State *L, const char *s, size_t len,
                           char *err, size_t errlen, int fast) {
    json_dec d;
    int status;

    if (fast && json_fast_decode(L, s, len)) {
        if (errlen > 0)
            err[0] = '\0';
        return 0;
    }
    memset(&d, 0, sizeof d);
    d.err.p = err;
    d.err.cap = errlen;
    if (errlen > 0)
        err[0] = '\0';
    /* These may raise; nothing is allocated yet. */
    lua_pushcfunction(L, json_dec_protected);
    lua_pushlightuserdata(L, &d);

    d.L = L;
    d.s = s;
    d.len = len;
    d.levels = d.inline_levels;
    d.levelcap = JSON_INLINE_LEVELS;
    d.radix = json_radix();
    d.h = yajl_alloc(&json_callbacks, &json_yajl_alloc, &d);
    TIDE_ASSERT(d.h != NULL);
    yajl_config(d.h, yajl_allow_comments, 0);
    yajl_config(d.h, yajl_dont_validate_strings, 0);
    yajl_config(d.h, yajl_allow_trailing_garbage, 0);
    yajl_config(d.h, yajl_allow_multiple_values, 0);
    yajl_config(d.h, yajl_allow_partial_values, 0);

    status = lua_pcall(L, 1, 1, 0);

    yajl_free(d.h);
    free(d.sbuf);
    if (d.levels != d.inline_levels)
        free(d.levels);
    if (status != 0)
        lua_error(L);
    if (d.rc != 0)
        lua_pop(L, 1);
    return d.rc;
}

int tide__json_decode_push(lua_State *L, const char *s, size_t len,
                           char *err, size_t errlen) {
    return json_decode_run(L, s, len, err, errlen, 1);
}

/* ===== LUA API ===== */

/* Returns nil, "EVALUE: msg", "EVALUE" for rc (a TIDE_E* code). */
static int json_fail(lua_State *L, int rc, const char *msg) {
    return tide__lua_fail(L, rc, "%s: %s", tide_err_name(rc), msg);
}

/* decode(str) -> value | nil, msg, "EVALUE". Raises on a non-string.
 * With an upvalue (the internal test hook, see JSON_SLOW_HOOK), decodes
 * through yajl only, without the fast path. */
static int json_l_decode(lua_State *L) {
    char err[TIDE_JSON_ERRLEN];
    const char *s;
    size_t len;
    int rc;

    luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_argerror(L, 1, lua_pushfstring(L, "string expected, "
                             "got %s", luaL_typename(L, 1)));
    s = lua_tolstring(L, 1, &len);
    rc = json_decode_run(L, s, len, err, sizeof err,
                         lua_isnone(L, lua_upvalueindex(1)));
    if (rc != 0)
        return json_fail(L, rc, err);
    return 1;
}

/* encode(value) -> string | nil, msg, "EVALUE". */
static int json_l_encode(lua_State *L) {
    char err[TIDE_JSON_ERRLEN];
    int rc;

    luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
    /* Scalars that need no escaping skip yajl: tide run encodes one id and
     * one output per input line, most of them numbers or short strings. */
    if (lua_type(L, 1) == LUA_TNUMBER) {
        char num[JSON_NUMLEN];
        size_t n = json_format_number(lua_tonumber(L, 1), num);
        if (n > 0) {
            lua_pushlstring(L, num, n);
            return 1;
        }
    } else if (lua_type(L, 1) == LUA_TSTRING) {
        size_t len, i;
        const char *str = lua_tolstring(L, 1, &len);
        for (i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)str[i];
            if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
                break;
        }
        if (i == len && len < 256) {
            char buf[260];
            buf[0] = '"';
            memcpy(buf + 1, str, len);
            buf[len + 1] = '"';
            lua_pushlstring(L, buf, len + 2);
            return 1;
        }
    }
    rc = tide__json_encode_push(L, 1, err, sizeof err);
    if (rc != 0)
        return json_fail(L, rc, err);
    return 1;
}

/* Sets the shared metatable (pushed by push_mt) on argument 1, or on a new
 * table when there is no argument or it is nil, and returns the table.
 * Raises when argument 1 is not a table or has a foreign metatable. */
static int json_mark(lua_State *L, void (*push_mt)(lua_State *)) {
    int top = lua_gettop(L);

    luaL_argcheck(L, top <= 1, 2, "expected at most 1 argument");
    if (top == 0 || lua_isnil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        if (lua_getmetatable(L, 1)) {
            int ours;
            json_push_array_mt(L);
            json_push_object_mt(L);
            ours = lua_rawequal(L, -3, -2) || lua_rawequal(L, -3, -1);
            lua_pop(L, 3);
            luaL_argcheck(L, ours, 1, "table already has a metatable");
        }
    }
    push_mt(L);
    lua_setmetatable(L, 1);
    return 1;
}

/* array([t]) -> t, marked to encode as a JSON array. */
static int json_l_array(lua_State *L) {
    return json_mark(L, json_push_array_mt);
}

/* object([t]) -> t, marked to encode as a JSON object. */
static int json_l_object(lua_State *L) {
    return json_mark(L, json_push_object_mt);
}

/* ===== CHECKING ===== */

/* check() walks a value the way the encoder would, without writing
 * anything, and agrees with encode() on what it refuses. A first walk
 * records nothing and finds a cycle only as nesting past
 * TIDE_JSON_MAX_DEPTH, so a value that passes costs no allocation and no
 * bookkeeping. A value that fails is walked again with frames (a Lua
 * userdata, so nothing needs freeing when something raises) to name the
 * first fault and its path. */
typedef struct {
    lua_State *L;
    int arr_mt, obj_mt;  /* absolute stack indices of the metatables */
    json_frame *frames;  /* NULL in the first walk */
    json_msg err;
    int top;             /* 'a' or 'o': how a table at the root encodes */
} json_chk;

static const char *json_nonfinite(double v) {
    return isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
}

/* In the second walk, appends " at <path>" to the message unless the
 * fault is in the value itself at the root and with_path is 0. */
static int json_chk_at(json_chk *c, int depth, int with_path) {
    if (c->frames != NULL && (with_path || depth > 0)) {
        json_msg_puts(&c->err, " at ");
        json_msg_path(&c->err, c->frames, depth);
    }
    return -1;
}

/* Records the message (second walk only); see json_chk_at. Returns -1. */
static int json_chk_fail(json_chk *c, int depth, int with_path,
                         const char *fmt, ...) {
    va_list ap;

    if (c->frames == NULL)
        return -1;
    va_start(ap, fmt);
    json_msg_vputf(&c->err, fmt, ap);
    va_end(ap);
    return json_chk_at(c, depth, with_path);
}

static int json_chk_value(json_chk *c, int depth);

/* Checks the key at index -2 of a table found at depth (its value is at
 * -1): a string must be strict UTF-8, a number finite, nothing else will
 * do. In the second walk it fills frames[depth + 1] for the value. */
static int json_chk_key(json_chk *c, int depth) {
    lua_State *L = c->L;
    json_frame *f = c->frames != NULL ? &c->frames[depth + 1] : NULL;
    const char *ks;
    size_t kl, bad;
    double num;

    switch (lua_type(L, -2)) {
    case LUA_TSTRING:
        ks = lua_tolstring(L, -2, &kl);
        bad = tide__utf8_check(ks, kl);
        if (bad != kl) {
            if (c->frames == NULL)
                return -1;
            json_msg_putf(&c->err, "invalid UTF-8 at byte %zu of the key ",
                          bad + 1);
            json_msg_quoted(&c->err, ks, kl);
            return json_chk_at(c, depth, 1);
        }
        if (f != NULL) {
            f->kind = JSON_SEG_KEY;
            f->key = ks;
            f->keylen = kl;
        }
        return 0;
    case LUA_TNUMBER:
        num = lua_tonumber(L, -2);
        if (!isfinite(num))
            return json_chk_fail(c, depth, 1, "a non-finite table key (%s)",
                                 json_nonfinite(num));
        if (f != NULL) {
            f->kind = JSON_SEG_NUMKEY;
            f->num = num;
        }
        return 0;
    default:
        return json_chk_fail(c, depth, 1, "a table key of type %s",
                             luaL_typename(L, -2));
    }
}

/* Checks that no number key of the object on top of the stack prints the
 * same as one of its string keys ([1] and ["1"]). */
static int json_chk_clash(json_chk *c, int depth) {
    lua_State *L = c->L;
    char num[JSON_NUMLEN];
    size_t n;

    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            continue;
        n = json_format_number(lua_tonumber(L, -1), num);
        lua_pushlstring(L, num, n);
        lua_rawget(L, -3);
        if (!lua_isnil(L, -1)) {
            lua_pop(L, 2);
            if (c->frames == NULL)
                return -1;
            json_msg_puts(&c->err, "a table with both a number and a string "
                          "key ");
            json_msg_quoted(&c->err, num, n);
            return json_chk_at(c, depth, 1);
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* The first walk over a table with the array or object metatable (marked
 * 'a' or 'o'), as decoded tables are: the rules of json_chk_table for
 * such a table, with fewer calls into Lua, and no message (the second
 * walk, with frames, names the fault). An object's keys must be strict
 * UTF-8 strings or finite numbers, and none of those numbers may print
 * as one of the strings; an array's keys must be indices 1..2^53 and not
 * too sparse. Returns 0 or -1. */
static int json_chk_marked(json_chk *c, int depth, int marked) {
    lua_State *L = c->L;
    double count = 0, max = 0, n;
    int numkeys = 0, rc;
    const char *ks;
    size_t kl;

    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        int kt = lua_type(L, -2);
        if (marked == 'o') {
            if (kt == LUA_TSTRING) {
                ks = lua_tolstring(L, -2, &kl);
                rc = tide__utf8_check(ks, kl) == kl ? 0 : -1;
            } else if (kt == LUA_TNUMBER) {
                numkeys++;
                rc = isfinite(lua_tonumber(L, -2)) ? 0 : -1;
            } else {
                rc = -1;
            }
        } else {
            rc = -1;
            if (kt == LUA_TNUMBER) {
                n = lua_tonumber(L, -2);
                if (n >= 1 && n <= JSON_MAX_EXACT && floor(n) == n) {
                    rc = 0;
                    count++;
                    if (n > max)
                        max = n;
                }
            }
        }
        if (rc == 0)
            rc = json_chk_value(c, depth + 1);
        lua_pop(L, 1);
        if (rc != 0) {
            lua_pop(L, 1);
            return rc;
        }
    }
    if (marked == 'a') {
        if (max > INT_MAX || (max > 1000 && max > 2 * count))
            return -1;
        if (depth == 0)
            c->top = 'a';
        return 0;
    }
    if (depth == 0)
        c->top = 'o';
    return numkeys > 0 ? json_chk_clash(c, depth) : 0;
}

/* Checks the table on top of the stack, found at depth, with the rules of
 * json_enc_table: its keys, its values, and as an array its sparseness or
 * as an object its keys that clash. */
static int json_chk_table(json_chk *c, int depth) {
    lua_State *L = c->L;
    const void *t = lua_topointer(L, -1);
    int i, rc, marked = 0, all_index = 1;
    double count = 0, max = 0, numkeys = 0, n;

    if (depth >= TIDE_JSON_MAX_DEPTH)
        return json_chk_fail(c, depth, 1, "tables nested deeper than %d",
                             TIDE_JSON_MAX_DEPTH);
    if (c->frames != NULL) {
        for (i = 0; i < depth; i++)
            if (c->frames[i].table == t)
                return json_chk_fail(c, depth, 1, "a cycle");
        c->frames[depth].table = t;
    }
    if (!lua_checkstack(L, 4))
        return json_chk_fail(c, depth, 1, "tables nested too deep for the "
                             "Lua stack");
    if (lua_getmetatable(L, -1)) {
        if (lua_rawequal(L, -1, c->arr_mt))
            marked = 'a';
        else if (lua_rawequal(L, -1, c->obj_mt))
            marked = 'o';
        lua_pop(L, 1);
    }
    if (marked != 0 && c->frames == NULL)
        return json_chk_marked(c, depth, marked);
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        count++;
        if (lua_type(L, -2) == LUA_TNUMBER)
            numkeys++;
        if (json_is_index(L, -2, &n)) {
            if (n > max)
                max = n;
        } else {
            all_index = 0;
            if (marked == 'a') {
                if (c->frames != NULL) {
                    json_msg_puts(&c->err, "an array with ");
                    json_describe_key(L, -2, &c->err);
                    json_chk_at(c, depth, 1);
                }
                lua_pop(L, 2);
                return -1;
            }
        }
        rc = json_chk_key(c, depth);
        if (rc == 0)
            rc = json_chk_value(c, depth + 1);
        lua_pop(L, 1);
        if (rc != 0) {
            lua_pop(L, 1);
            return rc;
        }
    }
    if (marked == 'a') {
        if (max > INT_MAX || (max > 1000 && max > 2 * count))
            return json_chk_fail(c, depth, 1, "a sparse array (largest "
                                 "index %.0f, %.0f entries)", max, count);
        if (depth == 0)
            c->top = 'a';
        return 0;
    }
    if (marked != 'o' && count > 0 && all_index && max == count) {
        if (depth == 0)
            c->top = 'a';
        return 0; /* an array */
    }
    if (depth == 0)
        c->top = 'o';
    return numkeys > 0 ? json_chk_clash(c, depth) : 0;
}

/* Checks the value on top of the stack, found at depth. Returns 0, or -1
 * (with the message in the second walk). Leaves the stack as it was. */
static int json_chk_value(json_chk *c, int depth) {
    lua_State *L = c->L;
    const char *s;
    size_t n, bad;
    double v;
    uint64_t bits;

    switch (lua_type(L, -1)) {
    case LUA_TNIL:
    case LUA_TBOOLEAN:
        return 0;
    case LUA_TNUMBER:
        v = lua_tonumber(L, -1);
        if (isfinite(v))
            return 0;
        return json_chk_fail(c, depth, 0, "a non-finite number (%s)",
                             json_nonfinite(v));
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &n);
        bad = tide__utf8_check(s, n);
        if (bad == n)
            return 0;
        return json_chk_fail(c, depth, 0, depth > 0 ? "invalid UTF-8 at byte "
                             "%zu of the string" : "invalid UTF-8 at byte %zu",
                             bad + 1);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, -1) == NULL)
            return 0;
        break;
    case TIDE_LUA_TCDATA:
        if (tide__json_int64_get(L, -1, &bits) != 0)
            return 0;
        break;
    case LUA_TTABLE:
        return json_chk_table(c, depth);
    default:
        break;
    }
    return json_chk_fail(c, depth, 0, "a %s", luaL_typename(L, -1));
}

/* check(value) -> true | false, msg: whether encode(value) would succeed,
 * without producing the text; for a table, true is followed by "array" or
 * "object", how it would encode. msg says what stands in the way and where:
 * "a function", "invalid UTF-8 at byte 3" (bytes count from 1, as in
 * string.sub), "a non-finite number (inf) at $.x", "a cycle at $.a". A
 * string is only checked for UTF-8, with no allocation, since this runs
 * on every task output. */
static int json_l_check(lua_State *L) {
    char err[TIDE_JSON_ERRLEN];
    json_chk c;
    int rc;

    luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
    if (lua_type(L, 1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, 1, &n);
        if (tide__utf8_check(s, n) == n) {
            lua_pushboolean(L, 1);
            return 1;
        }
    }
    memset(&c, 0, sizeof c);
    c.L = L;
    json_push_array_mt(L);
    c.arr_mt = lua_gettop(L);
    json_push_object_mt(L);
    c.obj_mt = lua_gettop(L);
    lua_pushvalue(L, 1);
    if (json_chk_value(&c, 0) == 0) {
        lua_pushboolean(L, 1);
        if (c.top == 0)
            return 1;
        lua_pushstring(L, c.top == 'a' ? "array" : "object");
        return 2;
    }
    lua_settop(L, c.obj_mt);
    c.frames = lua_newuserdata(L, (TIDE_JSON_MAX_DEPTH + 2) *
                                  sizeof(json_frame));
    c.frames[0].kind = JSON_SEG_ROOT;
    c.err.p = err;
    c.err.cap = sizeof err;
    err[0] = '\0';
    lua_pushvalue(L, 1);
    /* The second walk meets the same fault, or a cycle before it. */
    rc = json_chk_value(&c, 0);
    TIDE_ASSERT(rc != 0);
    lua_pushboolean(L, 0);
    lua_pushstring(L, err);
    return 2;
}

/* repair_utf8(s) -> s itself when it is strict UTF-8, else a copy with
 * each maximal subpart of an ill-formed sequence replaced by U+FFFD (see
 * utf8.c). Raises when s is not a string. The copy is built in a
 * luaL_Buffer, so no C memory is live when it raises. */
static int json_l_repair_utf8(lua_State *L) {
    luaL_Buffer b;
    const char *s;
    size_t n, i, ok;

    luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_argerror(L, 1, lua_pushfstring(L, "string expected, "
                             "got %s", luaL_typename(L, 1)));
    s = lua_tolstring(L, 1, &n);
    ok = tide__utf8_check(s, n);
    if (ok == n)
        return 1;
    luaL_buffinit(L, &b);
    i = 0;
    while (i < n) {
        luaL_addlstring(&b, s + i, ok);
        i += ok;
        if (i == n)
            break;
        luaL_addlstring(&b, "\xEF\xBF\xBD", 3);
        i += tide__utf8_bad(s + i, n - i);
        ok = tide__utf8_check(s + i, n - i);
    }
    luaL_pushresult(&b);
    return 1;
}

/* ===== INITIALISATION ===== */

static const luaL_Reg json_funcs[] = {
    { "decode", json_l_decode },
    { "encode", json_l_encode },
    { "check", json_l_check },
    { "array", json_l_array },
    { "object", json_l_object },
    { "repair_utf8", json_l_repair_utf8 },
    { NULL, NULL },
};

/* The registry key of the internal test hook: decode without the fast
 * path (json_fast_decode), for spec/json_fast_spec.lua, which compares the
 * two paths through debug.getregistry()[JSON_SLOW_HOOK]. It is not part of
 * the module and not documented for users. */
#define JSON_SLOW_HOOK "tide.json.decode_slow (internal test hook)"

int tide__json_open(lua_State *L) {
    lua_pushboolean(L, 1);
    lua_pushcclosure(L, json_l_decode, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, JSON_SLOW_HOOK);
    lua_createtable(L, 0, 9);
    luaL_setfuncs(L, json_funcs, 0);
    json_push_array_mt(L);
    lua_setfield(L, -2, "array_mt");
    json_push_object_mt(L);
    lua_setfield(L, -2, "object_mt");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
