/* tide.core's journal object (src/journal.c) and the xxHash3-128 hash.
 *
 * The userdata is a boxed pointer to a record that embeds a uv_async_t on
 * the executor's loop: the journal's writer thread sends it after each
 * commit, and its callback calls the Lua function given to on_commit (on
 * a private thread, with a pcall, never by resuming anything). The
 * record is freed in the async handle's close callback; the journal
 * itself is closed (its queue committed, its thread joined) either by
 * j:close() or, when the executor closes first, just before the engine
 * closes the handle (before_close), so the writer never sends to a closed
 * handle. Reads use the journal's read-only connection, on the loop
 * thread. */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <sqlite3.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "lglue.h"

#define LJ_MT "tide.journal"

typedef struct ljournal {
    tide__lua_base base; /* first: the engine's close finds it through data */
    uv_async_t async;
    tide__journal *j;
    tide__lua_hook hook; /* on_commit's function; hook.T NULL: none */
    struct ljournal **box; /* the Lua box while it points here */
} ljournal;

static void lj_closed(uv_handle_t *h) {
    ljournal *r = tide__container_of(h, ljournal, async);
    if (r->box)
        *r->box = NULL;
    tide__lua_hook_free(&r->hook);
    free(r);
}

/* Closes the journal (commit, join); the message of a write failure, if
 * any, goes to err. */
static int lj_end(ljournal *r, char *err, size_t errlen) {
    tide__journal *j = r->j;
    r->j = NULL;
    return tide__journal_close(j, err, errlen);
}

static void lj_before_engine_close(tide__lua_base *b) {
    ljournal *r = tide__container_of(b, ljournal, base);
    char err[256];
    if (r->j && lj_end(r, err, sizeof err) != 0)
        fprintf(stderr, "tide: %s\n", err);
}

static void lj_on_async(uv_async_t *a) {
    ljournal *r = tide__container_of(a, ljournal, async);
    if (r->hook.T == NULL || r->j == NULL)
        return;
    lua_State *T = tide__lua_hook_push(&r->hook);
    lua_pushnumber(T, (double)tide__journal_committed(r->j));
    tide__lua_pcall_hook(T, 1, "journal commit hook");
}

static ljournal *lj_check(lua_State *L) {
    ljournal **box = luaL_checkudata(L, 1, LJ_MT);
    if (*box == NULL || (*box)->j == NULL)
        luaL_error(L, "the journal is closed");
    return *box;
}

/* journal_open(engine, path) -> journal | nil, message */
static int l_journal_open(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    const char *path = luaL_checkstring(L, 2);
    ljournal **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, LJ_MT);
    lua_setmetatable(L, -2);
    char err[512];
    tide__journal *j;
    if (tide__journal_open(path, &j, err, sizeof err) != 0)
        return tide__lua_fail(L, 0, "%s", err);
    ljournal *r = tide__xcalloc(1, sizeof(*r));
    r->j = j;
    r->base.close_cb = lj_closed;
    r->base.before_close = lj_before_engine_close;
    uv_async_init(loop, &r->async, lj_on_async);
    r->async.data = &r->base;
    uv_unref((uv_handle_t *)&r->async); /* it alone keeps no loop going */
    tide__journal_set_notify(j, &r->async);
    r->box = box;
    *box = r;
    return 1;
}

/* j:item(key, kind, status|nil, data|nil) -> seq */
static int l_item(lua_State *L) {
    ljournal *r = lj_check(L);
    size_t klen, kindlen, dlen = 0;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *kind = luaL_checklstring(L, 3, &kindlen);
    const char *status = luaL_optstring(L, 4, NULL);
    const char *data = luaL_optlstring(L, 5, NULL, &dlen);
    lua_pushnumber(L, (double)tide__journal_put(r->j, TIDE__J_ITEM, key, klen,
                                                kind, kindlen, status, data,
                                                dlen, 0));
    return 1;
}

/* j:meta_put(key, value|nil) -> seq */
static int l_meta_put(lua_State *L) {
    ljournal *r = lj_check(L);
    size_t klen, vlen = 0;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *v = luaL_optlstring(L, 3, NULL, &vlen);
    lua_pushnumber(L, (double)tide__journal_put(r->j, TIDE__J_META, key, klen,
                                                v, vlen, NULL, NULL, 0, 0));
    return 1;
}

/* j:file(name, length) -> seq */
static int l_file(lua_State *L) {
    ljournal *r = lj_check(L);
    size_t nlen;
    const char *name = luaL_checklstring(L, 2, &nlen);
    int64_t len = (int64_t)luaL_checknumber(L, 3);
    lua_pushnumber(L, (double)tide__journal_put(r->j, TIDE__J_FILE, name, nlen,
                                                NULL, 0, NULL, NULL, 0, len));
    return 1;
}

/* j:flush_mark(files, upto) -> seq: `files` is "name\tlength\n" per
 * file; the lengths hold every item up to seq `upto` (one operation: a
 * resume sees all of it or none). */
static int l_flush_mark(lua_State *L) {
    ljournal *r = lj_check(L);
    size_t flen;
    const char *files = luaL_checklstring(L, 2, &flen);
    int64_t upto = (int64_t)luaL_checknumber(L, 3);
    lua_pushnumber(L, (double)tide__journal_put(r->j, TIDE__J_FLUSH, files,
                                                flen, NULL, 0, NULL, NULL, 0,
                                                upto));
    return 1;
}

/* j:checkpoint(key, task, data) -> seq */
static int l_checkpoint(lua_State *L) {
    ljournal *r = lj_check(L);
    size_t klen, tlen, dlen;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *task = luaL_checklstring(L, 3, &tlen);
    const char *data = luaL_checklstring(L, 4, &dlen);
    lua_pushnumber(L, (double)tide__journal_put(r->j, TIDE__J_CHECKPOINT, key,
                                                klen, task, tlen, NULL, data,
                                                dlen, 0));
    return 1;
}

/* j:forget(key) -> seq: the key's checkpoints go */
static int l_forget(lua_State *L) {
    ljournal *r = lj_check(L);
    size_t klen;
    const char *key = luaL_checklstring(L, 2, &klen);
    lua_pushnumber(L, (double)tide__journal_put(r->j, TIDE__J_FORGET, key,
                                                klen, NULL, 0, NULL, NULL, 0,
                                                0));
    return 1;
}

/* j:committed() -> seq of the last operation on the device;
 * j:last() -> seq of the last one queued */
static int l_committed(lua_State *L) {
    ljournal *r = lj_check(L);
    lua_pushnumber(L, (double)tide__journal_committed(r->j));
    return 1;
}

static int l_last(lua_State *L) {
    ljournal *r = lj_check(L);
    lua_pushnumber(L, (double)tide__journal_last(r->j));
    return 1;
}

/* j:stats() -> { commits, operations, wait_mean, wait_max } (seconds: from
 * queueing to the device, for the oldest operation of each commit) */
static int l_stats(lua_State *L) {
    ljournal *r = lj_check(L);
    uint64_t commits, ops, sum, max;
    tide__journal_stats(r->j, &commits, &ops, &sum, &max);
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, (double)commits);
    lua_setfield(L, -2, "commits");
    lua_pushnumber(L, (double)ops);
    lua_setfield(L, -2, "operations");
    lua_pushnumber(L, commits ? (double)sum / (double)commits / 1e9 : 0);
    lua_setfield(L, -2, "wait_mean");
    lua_pushnumber(L, (double)max / 1e9);
    lua_setfield(L, -2, "wait_max");
    return 1;
}

/* j:error() -> message | nil: why writing stopped */
static int l_error(lua_State *L) {
    ljournal *r = lj_check(L);
    char err[256];
    if (!tide__journal_error(r->j, err, sizeof err))
        return 0;
    lua_pushstring(L, err);
    return 1;
}

/* j:on_commit(fn): fn(committed_seq) on the loop after each commit (and
 * after a failure, to be told by j:error()); nil stops it. */
static int l_on_commit(lua_State *L) {
    ljournal *r = lj_check(L);
    tide__lua_hook_free(&r->hook);
    if (lua_isnoneornil(L, 2))
        return 0;
    luaL_checktype(L, 2, LUA_TFUNCTION);
    /* The hook is set only once nothing more can raise (see
     * tide__lua_hook_init): a memory error leaves no half-set hook. */
    tide__lua_hook_init(L, &r->hook, 2);
    return 0;
}

/* Pushes column i of a row: integer, text or blob as a string, or nil. */
static void lj_push_column(lua_State *L, sqlite3_stmt *st, int i) {
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        lua_pushnumber(L, (double)sqlite3_column_int64(st, i));
        break;
    case SQLITE_NULL:
        lua_pushnil(L);
        break;
    default: {
        const void *p = sqlite3_column_blob(st, i);
        int n = sqlite3_column_bytes(st, i);
        lua_pushlstring(L, p ? p : "", (size_t)n);
    }
    }
}

typedef void (*lj_row_fn)(lua_State *, sqlite3_stmt *, void *);

/* The rows of a prepared statement, for lj_step_rows. */
typedef struct {
    sqlite3_stmt *st;
    lj_row_fn row;
    void *ud;
    int rc; /* sqlite3_step's last answer */
} lj_rows;

/* Under lua_pcall (the lj_rows at 1, the result table at 2): steps the
 * statement and calls row per row, with the table at the top. */
static int lj_step_rows(lua_State *L) {
    lj_rows *q = lua_touserdata(L, 1);
    lua_settop(L, 2);
    while ((q->rc = sqlite3_step(q->st)) == SQLITE_ROW)
        q->row(L, q->st, q->ud);
    return 0;
}

/* Runs a read query with text/number parameters from the Lua stack
 * (first..last) and calls row(st) per row, with the table at the top of
 * the stack. Raises on an SQLite error, after finalizing. The rows are
 * made under lua_pcall: a memory error (the state at its limit) finalizes
 * the statement before it goes on. */
static int lj_query(lua_State *L, ljournal *r, const char *sql, int first,
                    int last, lj_row_fn row, void *ud) {
    sqlite3 *db = tide__journal_reader(r->j);
    sqlite3_stmt *st;
    lj_rows q = {NULL, row, ud, SQLITE_DONE};
    int t = lua_gettop(L);
    /* What may raise comes before the statement exists. */
    lua_pushcfunction(L, lj_step_rows);
    lua_pushlightuserdata(L, &q);
    lua_pushvalue(L, t);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return luaL_error(L, "journal: %s", sqlite3_errmsg(db));
    for (int i = first; i <= last; i++) {
        if (lua_type(L, i) == LUA_TNUMBER)
            sqlite3_bind_int64(st, i - first + 1, (int64_t)lua_tonumber(L, i));
        else {
            size_t n;
            const char *s = lua_tolstring(L, i, &n);
            sqlite3_bind_text(st, i - first + 1, s, (int)n, SQLITE_TRANSIENT);
        }
    }
    q.st = st;
    int perr = lua_pcall(L, 2, 0, 0);
    sqlite3_finalize(st);
    if (perr != 0)
        return lua_error(L);
    if (q.rc != SQLITE_DONE)
        return luaL_error(L, "journal: %s", sqlite3_errmsg(db));
    return 0;
}

/* Row: appends { col0, col1, ... } to the table at the top. */
static void lj_row_array(lua_State *L, sqlite3_stmt *st, void *ud) {
    TIDE_UNUSED(ud);
    int n = sqlite3_column_count(st);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lj_push_column(L, st, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
}

/* Row: t[col0] = col1 in the table at the top. */
static void lj_row_map(lua_State *L, sqlite3_stmt *st, void *ud) {
    TIDE_UNUSED(ud);
    lj_push_column(L, st, 0);
    lj_push_column(L, st, 1);
    lua_rawset(L, -3);
}

/* j:rows(sql, params...) -> { { col, ... }, ... } (read-only) */
static int l_rows(lua_State *L) {
    ljournal *r = lj_check(L);
    const char *sql = luaL_checkstring(L, 2);
    int top = lua_gettop(L);
    lua_newtable(L);
    lj_query(L, r, sql, 3, top, lj_row_array, NULL);
    return 1;
}

/* j:map(sql, params...) -> { [col0] = col1, ... } (read-only) */
static int l_map(lua_State *L) {
    ljournal *r = lj_check(L);
    const char *sql = luaL_checkstring(L, 2);
    int top = lua_gettop(L);
    lua_newtable(L);
    lj_query(L, r, sql, 3, top, lj_row_map, NULL);
    return 1;
}

/* j:close() -> true | nil, message: commits what is queued and stops the
 * writer; the object is unusable after. A second close is harmless. */
static int l_close(lua_State *L) {
    ljournal **box = luaL_checkudata(L, 1, LJ_MT);
    ljournal *r = *box;
    if (r == NULL) {
        lua_pushboolean(L, 1);
        return 1;
    }
    char err[256];
    int rc = r->j ? lj_end(r, err, sizeof err) : 0;
    *box = NULL;
    r->box = NULL;
    if (!uv_is_closing((uv_handle_t *)&r->async))
        uv_close((uv_handle_t *)&r->async, lj_closed);
    if (rc != 0)
        return tide__lua_fail(L, 0, "%s", err);
    lua_pushboolean(L, 1);
    return 1;
}

/* A journal dropped without close() is closed by the GC: what was queued
 * is committed, as close() would. */
static int l_gc(lua_State *L) {
    ljournal **box = luaL_checkudata(L, 1, LJ_MT);
    ljournal *r = *box;
    if (r == NULL)
        return 0;
    char err[256];
    if (r->j && lj_end(r, err, sizeof err) != 0)
        fprintf(stderr, "tide: %s\n", err);
    *box = NULL;
    r->box = NULL;
    if (!uv_is_closing((uv_handle_t *)&r->async))
        uv_close((uv_handle_t *)&r->async, lj_closed);
    return 0;
}

/* xxh128(s) -> the XXH3 128-bit hash of s as 32 hex digits */
static int l_xxh128(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    XXH128_hash_t h = XXH3_128bits(s, n);
    char out[33];
    snprintf(out, sizeof out, "%016llx%016llx", (unsigned long long)h.high64,
             (unsigned long long)h.low64);
    lua_pushlstring(L, out, 32);
    return 1;
}

void tide__lua_open_journal(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"item", l_item},         {"meta_put", l_meta_put},
        {"file", l_file},         {"checkpoint", l_checkpoint},
        {"flush_mark", l_flush_mark},
        {"forget", l_forget},     {"committed", l_committed},
        {"last", l_last},         {"error", l_error},
        {"on_commit", l_on_commit}, {"rows", l_rows},
        {"map", l_map},           {"close", l_close},
        {"stats", l_stats},
        {NULL, NULL}};
    tide__lua_newclass(L, LJ_MT, methods, l_gc);
    static const luaL_Reg funcs[] = {{"journal_open", l_journal_open},
                                     {"xxh128", l_xxh128},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
    lua_pushinteger(L, tide__journal_format());
    lua_setfield(L, -2, "journal_format");
}
