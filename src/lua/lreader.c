/* The input reader of `tide run`: a file or stdin read on an engine's loop.
 *
 * Two modes. In chunk mode chunks are handed to a Lua callback as they
 * come; the reader can pause and resume. In line mode (JSONL input) the
 * reader cuts what it reads into numbered lines itself and keeps the
 * lines in C; Lua takes them one at a time, decoded straight from the C
 * buffer (take), so no line ever becomes a Lua string. That matters:
 * LuaJIT interns every string, and its hash of a long string samples a
 * few bytes only, so a million similar lines of the same length pile up
 * in a few hash chains, and each new line is compared with every one of
 * them not collected yet (a run of 1 M lines spent 80 % of its time
 * there). Only a line that is rejected (malformed JSON) or copied on as
 * it is (take_raw) becomes a string.
 *
 * Line mode reads while no line waits and the reader is not paused: the
 * lines of one chunk wait in C until Lua took them all, so memory holds
 * about one chunk (plus one line that spans chunks, at most max_bytes).
 *
 * The Lua userdata holds a pointer to a malloc'd record (a boxed pointer)
 * because libuv needs the record until its last request completes, which
 * may come after Lua collected the box. Ownership: the box owns the
 * record until close() or __gc; after that the record frees itself when
 * nothing of libuv holds it any more (lreader_maybe_free): its poll
 * handle closed and no uv_fs_read pending. The engine's close closes the
 * poll handle of a reader still open; the box then frees the record. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"
#include "ljson.h"

/* Pipes and terminals are watched with uv_poll and read with read(2) when
 * readable, so closing the reader (SIGINT) takes effect at once. Regular
 * files cannot be polled; they are read with uv_fs_read on libuv's pool,
 * where a read never blocks for long. */

#define LREADER_CHUNK 65536

typedef struct {
    tide__lua_base base; /* first: the engine's close finds it through data */
    uv_poll_t poll;      /* poll mode */
    uv_fs_t req;         /* file mode */
    uv_loop_t *loop;
    uv_file fd;
    int polled, own_fd, reading, paused, done, closed, handle_open;
    tide__lua_hook hook;
    /* Line mode (lines != 0); the rules are those of a JSONL file: a
     * line ends at "\n", one trailing "\r" goes, blank lines are
     * counted but skipped, a line of more than max_line bytes (its
     * "\r" included) is reported by number and size and not kept. */
    int lines;
    size_t max_line;
    double lineno;                /* the number of the last line seen */
    char *part;                   /* the unfinished line */
    size_t partlen, partcap, plen; /* plen counts a dropped long line too */
    int toolong;                  /* the unfinished line is too long */
    char *q;                      /* bytes of the lines waiting */
    size_t qlen, qcap;
    struct lreader_line {
        double no;
        size_t off, len;
    } *recs;                      /* the lines waiting, recs[head..n) */
    size_t head, n, reccap;
    double *longs;                /* too long lines of this chunk: no, bytes */
    size_t nlongs, longcap;
    char buf[LREADER_CHUNK];
} lreader;

static void lreader_start(lreader *r);

static void lreader_free(lreader *r) {
    if (r->own_fd) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, r->fd, NULL);
        uv_fs_req_cleanup(&req);
    }
    tide__lua_hook_free(&r->hook);
    free(r->part);
    free(r->q);
    free(r->recs);
    free(r->longs);
    free(r);
}

/* ----- line mode ----- */

/* Makes room for n more bytes in *buf (of *cap bytes, *len used). */
static void lreader_reserve(char **buf, size_t *cap, size_t len, size_t n) {
    if (*cap - len >= n)
        return;
    size_t c = *cap ? *cap : 4096;
    while (c - len < n)
        c *= 2;
    *buf = tide__xrealloc(*buf, c);
    *cap = c;
}

/* Whether every byte of s is white space (Lua's %s: isspace in the C
 * locale), as the Lua framer decided which lines are blank. */
static int lreader_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\v' && c != '\f' &&
            c != '\r')
            return 0;
    }
    return 1;
}

/* One line ends: the unfinished line plus s (n bytes) is line number
 * ++lineno; it waits unless it is blank. */
static void lreader_emit(lreader *r, const char *s, size_t n) {
    r->lineno++;
    size_t total = r->partlen + n;
    char last = n ? s[n - 1] : (r->partlen ? r->part[r->partlen - 1] : 0);
    if (last == '\r')
        total--;
    size_t fromp = total < r->partlen ? total : r->partlen;
    size_t froms = total - fromp;
    int blank = lreader_blank(r->part, fromp) && lreader_blank(s, froms);
    if (!blank) {
        lreader_reserve(&r->q, &r->qcap, r->qlen, total);
        /* part is NULL until a line first spans two chunks, and
         * memcpy's pointers must be valid even for 0 bytes. */
        if (fromp)
            memcpy(r->q + r->qlen, r->part, fromp);
        if (froms)
            memcpy(r->q + r->qlen + fromp, s, froms);
        if (r->n == r->reccap) {
            r->reccap = r->reccap ? r->reccap * 2 : 256;
            r->recs = tide__xrealloc(r->recs, r->reccap * sizeof(*r->recs));
        }
        r->recs[r->n].no = r->lineno;
        r->recs[r->n].off = r->qlen;
        r->recs[r->n].len = total;
        r->n++;
        r->qlen += total;
    }
    r->partlen = r->plen = 0;
}

/* A line too long to keep ends: it is reported with its size. */
static void lreader_emit_long(lreader *r, size_t nbytes) {
    r->lineno++;
    if (r->nlongs + 2 > r->longcap) {
        r->longcap = r->longcap ? r->longcap * 2 : 8;
        r->longs = tide__xrealloc(r->longs, r->longcap * sizeof(*r->longs));
    }
    r->longs[r->nlongs++] = r->lineno;
    r->longs[r->nlongs++] = (double)nbytes;
    r->toolong = 0;
    r->partlen = r->plen = 0;
}

/* Cuts a chunk into lines. */
static void lreader_feed(lreader *r, const char *s, size_t n) {
    const char *end = s + n, *nl;
    while ((nl = memchr(s, '\n', (size_t)(end - s))) != NULL) {
        size_t seg = (size_t)(nl - s);
        if (r->toolong || r->plen + seg > r->max_line)
            lreader_emit_long(r, r->plen + seg);
        else
            lreader_emit(r, s, seg);
        s = nl + 1;
    }
    size_t rest = (size_t)(end - s);
    if (rest == 0)
        return;
    r->plen += rest;
    if (r->toolong)
        return;
    if (r->plen > r->max_line) {
        r->toolong = 1;
        r->partlen = 0;
        return;
    }
    lreader_reserve(&r->part, &r->partcap, r->partlen, rest);
    memcpy(r->part + r->partlen, s, rest);
    r->partlen += rest;
}

/* The end of the input: a last line without a newline counts. */
static void lreader_finish(lreader *r) {
    if (r->plen == 0)
        return;
    if (r->toolong)
        lreader_emit_long(r, r->plen);
    else
        lreader_emit(r, "", 0);
}

/* Pushes the too long lines reported since the last call as a table
 * {no, bytes, no, bytes, ...}, or nil when there were none. */
static void lreader_push_longs(lua_State *T, lreader *r) {
    if (r->nlongs == 0) {
        lua_pushnil(T);
        return;
    }
    lua_createtable(T, (int)r->nlongs, 0);
    for (size_t i = 0; i < r->nlongs; i++) {
        lua_pushnumber(T, r->longs[i]);
        lua_rawseti(T, -2, (int)i + 1);
    }
    r->nlongs = 0;
}

static void lreader_poll_closed(uv_handle_t *h) {
    lreader *r = tide__container_of((uv_poll_t *)h, lreader, poll);
    r->handle_open = 0;
    r->done = 1; /* when the engine closed it first, the box frees it */
    if (r->closed)
        lreader_free(r);
}

/* Frees the record once it is closed and libuv holds nothing of it. */
static void lreader_maybe_free(lreader *r) {
    if (!r->closed || r->reading)
        return;
    if (r->handle_open) {
        if (!uv_is_closing((uv_handle_t *)&r->poll))
            uv_close((uv_handle_t *)&r->poll, lreader_poll_closed);
        return;
    }
    lreader_free(r);
}

/* Hands a chunk (n > 0), the end (n == 0) or an error (n < 0) to Lua. */
static void lreader_deliver(lreader *r, ssize_t n) {
    if (r->lines) {
        if (n > 0)
            lreader_feed(r, r->buf, (size_t)n);
        else
            lreader_finish(r);
    }
    lua_State *T = tide__lua_hook_push(&r->hook);
    if (n > 0) {
        if (r->lines) {
            lua_pushboolean(T, 1);
            lreader_push_longs(T, r);
            tide__lua_pcall_hook(T, 2, "input reader");
            return;
        }
        lua_pushlstring(T, r->buf, (size_t)n);
        tide__lua_pcall_hook(T, 1, "input reader");
        return;
    }
    r->done = 1;
    if (r->polled)
        uv_poll_stop(&r->poll);
    lua_pushnil(T);
    if (n < 0)
        lua_pushstring(T, uv_strerror((int)n));
    else
        lua_pushnil(T);
    if (r->lines) {
        lreader_push_longs(T, r);
        tide__lua_pcall_hook(T, 3, "input reader");
        return;
    }
    tide__lua_pcall_hook(T, 2, "input reader");
}

/* Whether lines wait to be taken (line mode): reading waits for them. */
static int lreader_waiting(const lreader *r) {
    return r->lines && r->head < r->n;
}

static void lreader_fs_cb(uv_fs_t *req) {
    lreader *r = tide__container_of(req, lreader, req);
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    r->reading = 0;
    if (!r->closed) {
        lreader_deliver(r, n);
        if (n > 0 && !r->paused && !r->closed)
            lreader_start(r);
    }
    lreader_maybe_free(r);
}

static void lreader_poll_cb(uv_poll_t *h, int status, int events) {
    lreader *r = tide__container_of(h, lreader, poll);
    TIDE_UNUSED(events);
    if (r->closed || r->done)
        return;
    if (status < 0) {
        lreader_deliver(r, status);
        return;
    }
    ssize_t n = read(r->fd, r->buf, LREADER_CHUNK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    lreader_deliver(r, n < 0 ? -errno : n);
    if (lreader_waiting(r) && !r->closed && !r->done && r->handle_open)
        uv_poll_stop(&r->poll);
}

static void lreader_start(lreader *r) {
    if (r->done || r->closed || lreader_waiting(r))
        return;
    if (r->polled) {
        if (!r->handle_open)
            return;
        uv_poll_start(&r->poll, UV_READABLE, lreader_poll_cb);
        return;
    }
    if (r->reading)
        return;
    uv_buf_t b = uv_buf_init(r->buf, LREADER_CHUNK);
    if (uv_fs_read(r->loop, &r->req, r->fd, &b, 1, -1, lreader_fs_cb) == 0)
        r->reading = 1;
}

static void lreader_close(lreader *r) {
    if (r->closed)
        return;
    r->closed = 1;
    lreader_maybe_free(r);
}

/* The engine closes a reader's poll handle when it closes its loop. */
static void lreader_engine_close(uv_handle_t *h) {
    lreader_poll_closed(h);
}

static lreader *lreader_check(lua_State *L) {
    lreader **box = luaL_checkudata(L, 1, "tide.reader");
    if (*box == NULL)
        luaL_argerror(L, 1, "reader is closed");
    return *box;
}

/* reader(engine, path|nil, fn[, max_line]) -> reader | nil, msg, name
 * Chunk mode (no max_line): fn(chunk) is called per chunk read,
 * fn(nil, err|nil) at the end. Line mode (max_line, bytes): fn(true,
 * longs) when lines arrived, fn(nil, err|nil, longs) at the end, where
 * longs is nil or {lineno, bytes, ...}: the lines longer than max_line
 * met since the last call, which are not kept; take() hands out the
 * others. */
static int l_reader(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    const char *path = luaL_optstring(L, 2, NULL);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    double max_line = luaL_optnumber(L, 4, -1);
    if (!lua_isnoneornil(L, 4) && !(max_line >= 0))
        return luaL_argerror(L, 4, "max_line must be a number of bytes");
    uv_file fd = 0;
    if (path) {
        uv_fs_t req;
        fd = uv_fs_open(NULL, &req, path, O_RDONLY, 0, NULL);
        uv_fs_req_cleanup(&req);
        if (fd < 0)
            return tide__lua_fail(L, fd, "%s: %s", path, uv_strerror(fd));
    }
    lreader **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.reader");
    lua_setmetatable(L, -2);
    lreader *r = tide__xcalloc(1, sizeof(*r));
    r->base.close_cb = lreader_engine_close;
    r->loop = loop;
    r->fd = fd;
    r->own_fd = path != NULL;
    if (max_line >= 0) {
        r->lines = 1;
        r->max_line = max_line > (double)(SIZE_MAX / 2) ? SIZE_MAX / 2
                                                       : (size_t)max_line;
    }
    if (uv_guess_handle(fd) != UV_FILE &&
        uv_poll_init(loop, &r->poll, fd) == 0) {
        r->polled = 1;
        r->handle_open = 1;
        r->poll.data = &r->base;
    }
    tide__lua_hook_init(L, &r->hook, 3);
    *box = r;
    lreader_start(r);
    return 1;
}

static int l_reader_pause(lua_State *L) {
    lreader *r = lreader_check(L);
    r->paused = 1;
    if (r->polled && r->handle_open && !r->closed)
        uv_poll_stop(&r->poll);
    return 0;
}

static int l_reader_resume(lua_State *L) {
    lreader *r = lreader_check(L);
    r->paused = 0;
    lreader_start(r);
    return 0;
}

/* Called when Lua took the last waiting line: the buffers start over
 * and reading goes on. */
static void lreader_drained(lreader *r) {
    r->head = r->n = 0;
    r->qlen = 0;
    if (!r->paused)
        lreader_start(r);
}

/* The reader of a line mode method, or NULL when it is closed. */
static lreader *lreader_check_lines(lua_State *L) {
    lreader **box = luaL_checkudata(L, 1, "tide.reader");
    if (*box && !(*box)->lines)
        luaL_argerror(L, 1, "not a line reader");
    return *box;
}

/* r:take() -> lineno, value | lineno, nil, "EVALUE: msg", text | nil
 * The next waiting line, decoded as JSON (a malformed one comes with its
 * text); nil when no line waits (or the reader is closed). */
static int l_reader_take(lua_State *L) {
    lreader *r = lreader_check_lines(L);
    if (r == NULL || r->head == r->n)
        return 0;
    struct lreader_line ln = r->recs[r->head++];
    char err[TIDE_JSON_ERRLEN];
    lua_pushnumber(L, ln.no);
    int rc = tide__json_decode_push(L, r->q + ln.off, ln.len, err, sizeof err);
    int nres = 2;
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", tide_err_name(rc), err);
        lua_pushlstring(L, r->q + ln.off, ln.len);
        nres = 4;
    }
    if (r->head == r->n)
        lreader_drained(r);
    return nres;
}

/* r:take_raw() -> lineno, text | nil: the next waiting line as it is. */
static int l_reader_take_raw(lua_State *L) {
    lreader *r = lreader_check_lines(L);
    if (r == NULL || r->head == r->n)
        return 0;
    struct lreader_line ln = r->recs[r->head++];
    lua_pushnumber(L, ln.no);
    lua_pushlstring(L, r->q + ln.off, ln.len);
    if (r->head == r->n)
        lreader_drained(r);
    return 2;
}

/* r:waiting() -> whether lines wait to be taken */
static int l_reader_waiting(lua_State *L) {
    lreader *r = lreader_check_lines(L);
    lua_pushboolean(L, r != NULL && r->head < r->n);
    return 1;
}

static int l_reader_close(lua_State *L) {
    lreader **box = luaL_checkudata(L, 1, "tide.reader");
    if (*box) {
        lreader_close(*box);
        *box = NULL;
    }
    return 0;
}

void tide__lua_open_reader(lua_State *L) {
    static const luaL_Reg methods[] = {{"pause", l_reader_pause},
                                       {"resume", l_reader_resume},
                                       {"close", l_reader_close},
                                       {"take", l_reader_take},
                                       {"take_raw", l_reader_take_raw},
                                       {"waiting", l_reader_waiting},
                                       {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"reader", l_reader}, {NULL, NULL}};
    tide__lua_newclass(L, "tide.reader", methods, l_reader_close);
    luaL_setfuncs(L, funcs, 0);
}
