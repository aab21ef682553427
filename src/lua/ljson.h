/* tide's JSON codec for Lua (yajl 2.1): the module table and a C API. */
#ifndef TIDE_LJSON_H
#define TIDE_LJSON_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

/* Containers may nest this deep, when decoding and when encoding; one more
 * level fails with TIDE_EVALUE. */
#define TIDE_JSON_MAX_DEPTH 1000

/* A size for the err buffers below that holds every message whole, except
 * for very long paths, which are cut with "...". */
#define TIDE_JSON_ERRLEN 256

/* Pushes ONE new table: the module that tide.core exposes as tide.json.
 * It registers no globals. Its fields are:
 *
 *   decode(str)    -> value | nil, "EVALUE: msg", "EVALUE"
 *   encode(value)  -> str   | nil, "EVALUE: msg", "EVALUE"
 *   check(value)   -> true | false, msg: whether encode(value) succeeds,
 *                     without producing the text; msg names the fault and
 *                     its path ("a function at $.a[2]", "a cycle at
 *                     $.self", "invalid UTF-8 at byte 3", counting bytes
 *                     from 1). Allocates nothing for a string that passes.
 *   array([t])     -> t marked as a JSON array (a new table when t is nil)
 *   object([t])    -> t marked as a JSON object
 *   repair_utf8(s) -> s itself when it is strict UTF-8, else a copy with
 *                     each ill-formed sequence (its maximal subpart)
 *                     replaced by U+FFFD
 *   array_mt, object_mt  the shared metatables that mark decoded tables
 *   null           the null sentinel, lightuserdata NULL (like cjson.null)
 *
 * Misuse (a non-string to decode or repair_utf8, a wrong argument count,
 * array/object on a table that already has a foreign metatable) raises
 * with luaL_argerror.
 * The metatables live in the registry, so every call in one lua_State
 * shares them; calling this twice pushes two tables that share them.
 * Returns 1, so it also serves as a lua_CFunction (package.preload). */
int tide__json_open(lua_State *L);

/* Encodes the value at stack index idx as compact JSON (see ljson.c for
 * the rules: sorted object keys, arrays by metatable or by shape, numbers
 * printed exactly).
 *
 * On success returns 0 and sets *out to a new buffer of *outlen bytes plus
 * a terminating NUL that is not counted; the caller owns it and releases
 * it with free(). On failure returns TIDE_EVALUE, sets *out to NULL and
 * *outlen to 0, and writes a NUL-terminated message without the code
 * prefix (for example "cannot encode function at $.a[2]") into err, cut
 * to errlen bytes; err may be NULL when errlen is 0.
 *
 * The value is borrowed and the stack is left as it was. The function runs
 * the encoder under lua_pcall and frees every C buffer before anything
 * propagates, so the only error it raises is a Lua memory error, re-raised
 * after the cleanup with lua_error (so with status LUA_ERRRUN and the
 * message "not enough memory"). Out of C memory aborts (tide__xmalloc). */
int tide__json_encode_value(lua_State *L, int idx, char **out,
                            size_t *outlen, char *err, size_t errlen);

/* Like tide__json_encode_value, but on success pushes the JSON text as a
 * Lua string (the only C buffer is freed before returning). On failure
 * returns TIDE_EVALUE, pushes nothing and fills err. */
int tide__json_encode_push(lua_State *L, int idx, char *err, size_t errlen);

/* Like tide__json_encode_value, but appends the JSON text to the caller's
 * malloc'd buffer *buf (*len bytes used of *cap; may be NULL, 0, 0),
 * which it may move (realloc): *buf, *len and *cap are updated before it
 * returns or raises. No NUL is added. On failure returns TIDE_EVALUE,
 * leaves *len as it was (nothing appended) and fills err. A result file
 * encodes each output straight into its write buffer this way, with no
 * Lua string in between. */
int tide__json_encode_append(lua_State *L, int idx, char **buf, size_t *len,
                             size_t *cap, char *err, size_t errlen);

/* Decodes the len bytes at s (borrowed; no NUL terminator needed, NUL
 * bytes inside are data) as exactly one JSON value of any type.
 *
 * On success returns 0 and pushes the value: objects become tables with
 * the shared object metatable, arrays tables with the shared array
 * metatable, null the sentinel lightuserdata NULL. On malformed JSON,
 * invalid UTF-8, trailing data or nesting deeper than TIDE_JSON_MAX_DEPTH
 * returns TIDE_EVALUE, pushes nothing and writes a message naming the byte
 * offset into err (as above). Raises only a Lua memory error, after
 * freeing every C buffer: re-raised through lua_error (LUA_ERRRUN) from
 * the yajl path, as it is (LUA_ERRMEM) from the fast path that decodes
 * common texts, which holds no C buffer; the message is "not enough
 * memory" either way. */
int tide__json_decode_push(lua_State *L, const char *s, size_t len,
                           char *err, size_t errlen);

/* What LuaJIT's lua_type() returns for a cdata (its lua.h has no name
 * for it). */
#define TIDE_LUA_TCDATA 10

/* When the value at idx is a boxed int64_t or uint64_t cdata, stores its
 * 8 bytes in *bits and returns 1 (int64_t) or 2 (uint64_t); returns 0 for
 * any other value. For a cdata it calls a small Lua function (ffi.istype),
 * compiled on first use in this lua_State, so it may raise, and needs no
 * more than LUA_MINSTACK free slots. */
int tide__json_int64_get(lua_State *L, int idx, uint64_t *bits);

/* Pushes a new int64_t cdata (is_unsigned 0) or uint64_t cdata (1)
 * holding bits. May raise, like tide__json_int64_get. */
void tide__json_int64_push(lua_State *L, uint64_t bits, int is_unsigned);

/* Push the shared metatables that mark decoded arrays and objects. */
void tide__json_push_array_mt(lua_State *L);
void tide__json_push_object_mt(lua_State *L);

#endif
