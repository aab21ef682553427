/* The input reader of `tide run`: a file or stdin read on an engine's loop.
 *
 * Chunks are handed to a Lua callback as they come; the reader can pause
 * and resume.
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
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

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
    free(r);
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
    lua_State *T = tide__lua_hook_push(&r->hook);
    if (n > 0) {
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
    tide__lua_pcall_hook(T, 2, "input reader");
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
}

static void lreader_start(lreader *r) {
    if (r->done || r->closed)
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

/* reader(engine, path|nil, fn) -> reader | nil, msg, name
 * fn(chunk) is called per chunk read, fn(nil, err|nil) at the end. */
static int l_reader(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    const char *path = luaL_optstring(L, 2, NULL);
    luaL_checktype(L, 3, LUA_TFUNCTION);
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
                                       {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"reader", l_reader}, {NULL, NULL}};
    tide__lua_newclass(L, "tide.reader", methods, l_reader_close);
    luaL_setfuncs(L, funcs, 0);
}
