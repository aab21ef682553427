/* Loop-driven I/O for the CLI: a chunked file/stdin reader with pause and
 * resume, signal watchers, repeating timers, and small helpers.
 *
 * Each object is a boxed pointer (the Lua userdata holds a pointer to a
 * malloc'd record) because libuv needs the memory until its close or
 * completion callback, which may come after Lua collected the box. The
 * record holds registry refs to its Lua callback and to a private thread
 * the callback is called on (with lua_pcall, never resumed), so a hook
 * never runs on a coroutine that may be suspended. Ownership: the record
 * is freed in its close callback (handles) or when its last request
 * completes after close (the reader). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

static int lio_traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = luaL_typename(L, 1);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* The registry key of lio_traceback, made once per state: a hook runs
 * from a loop callback, outside any protected call, where making a
 * closure could raise a memory error through the loop's C frames. */
static char lio_traceback_key;

int tide__lua_pcall_hook(lua_State *L, int nargs, const char *what) {
    int base = lua_gettop(L) - nargs;
    lua_pushlightuserdata(L, &lio_traceback_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        lua_pushcfunction(L, lio_traceback);
    }
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, 0, base);
    if (rc != 0) {
        fprintf(stderr, "tide: error in %s: %s\n", what,
                lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_remove(L, base);
    return rc;
}

/* A Lua callback with the thread it is called on. */
typedef struct {
    lua_State *T; /* private thread, anchored by thread_ref */
    int thread_ref, fn_ref;
} lio_hook;

static void lio_hook_init(lua_State *L, lio_hook *h, int fn_idx) {
    h->T = lua_newthread(L);
    h->thread_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, fn_idx);
    h->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static void lio_hook_free(lio_hook *h) {
    if (h->T == NULL)
        return;
    luaL_unref(h->T, LUA_REGISTRYINDEX, h->fn_ref);
    luaL_unref(h->T, LUA_REGISTRYINDEX, h->thread_ref);
    h->T = NULL;
}

/* Pushes the callback on the hook's thread; returns that thread. */
static lua_State *lio_hook_push(lio_hook *h) {
    lua_settop(h->T, 0);
    lua_rawgeti(h->T, LUA_REGISTRYINDEX, h->fn_ref);
    return h->T;
}

/* ===== READER ===== */

/* Pipes and terminals are watched with uv_poll and read with read(2) when
 * readable, so closing the reader (SIGINT) takes effect at once. Regular
 * files cannot be polled; they are read with uv_fs_read on libuv's pool,
 * where a read never blocks for long. */

#define LIO_CHUNK 65536

typedef struct {
    lio_base base;  /* first: the engine's close finds it through data */
    uv_poll_t poll; /* poll mode */
    uv_fs_t req;    /* file mode */
    uv_loop_t *loop;
    uv_file fd;
    int polled, own_fd, reading, paused, done, closed, handle_open;
    lio_hook hook;
    char buf[LIO_CHUNK];
} lio_reader;

static void lio_reader_start(lio_reader *r);

static void lio_reader_free(lio_reader *r) {
    if (r->own_fd) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, r->fd, NULL);
        uv_fs_req_cleanup(&req);
    }
    lio_hook_free(&r->hook);
    free(r);
}

static void lio_reader_poll_closed(uv_handle_t *h) {
    lio_reader *r = tide__container_of((uv_poll_t *)h, lio_reader, poll);
    r->handle_open = 0;
    r->done = 1; /* when the engine closed it first, the box frees it */
    if (r->closed)
        lio_reader_free(r);
}

/* Frees the record once it is closed and libuv holds nothing of it. */
static void lio_reader_maybe_free(lio_reader *r) {
    if (!r->closed || r->reading)
        return;
    if (r->handle_open) {
        if (!uv_is_closing((uv_handle_t *)&r->poll))
            uv_close((uv_handle_t *)&r->poll, lio_reader_poll_closed);
        return;
    }
    lio_reader_free(r);
}

/* Hands a chunk (n > 0), the end (n == 0) or an error (n < 0) to Lua. */
static void lio_reader_deliver(lio_reader *r, ssize_t n) {
    lua_State *T = lio_hook_push(&r->hook);
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

static void lio_reader_fs_cb(uv_fs_t *req) {
    lio_reader *r = tide__container_of(req, lio_reader, req);
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    r->reading = 0;
    if (!r->closed) {
        lio_reader_deliver(r, n);
        if (n > 0 && !r->paused && !r->closed)
            lio_reader_start(r);
    }
    lio_reader_maybe_free(r);
}

static void lio_reader_poll_cb(uv_poll_t *h, int status, int events) {
    lio_reader *r = tide__container_of(h, lio_reader, poll);
    TIDE_UNUSED(events);
    if (r->closed || r->done)
        return;
    if (status < 0) {
        lio_reader_deliver(r, status);
        return;
    }
    ssize_t n = read(r->fd, r->buf, LIO_CHUNK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    lio_reader_deliver(r, n < 0 ? -errno : n);
}

static void lio_reader_start(lio_reader *r) {
    if (r->done || r->closed)
        return;
    if (r->polled) {
        if (!r->handle_open)
            return;
        uv_poll_start(&r->poll, UV_READABLE, lio_reader_poll_cb);
        return;
    }
    if (r->reading)
        return;
    uv_buf_t b = uv_buf_init(r->buf, LIO_CHUNK);
    if (uv_fs_read(r->loop, &r->req, r->fd, &b, 1, -1, lio_reader_fs_cb) == 0)
        r->reading = 1;
}

static void lio_reader_close(lio_reader *r) {
    if (r->closed)
        return;
    r->closed = 1;
    lio_reader_maybe_free(r);
}

/* The engine closes a reader's poll handle when it closes its loop. */
static void lio_reader_engine_close(uv_handle_t *h) {
    lio_reader_poll_closed(h);
}

static lio_reader *lio_checkreader(lua_State *L) {
    lio_reader **box = luaL_checkudata(L, 1, "tide.reader");
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
        if (fd < 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "%s: %s", path, uv_strerror(fd));
            lua_pushstring(L, uv_err_name(fd));
            return 3;
        }
    }
    lio_reader **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.reader");
    lua_setmetatable(L, -2);
    lio_reader *r = tide__xcalloc(1, sizeof(*r));
    r->base.close_cb = lio_reader_engine_close;
    r->loop = loop;
    r->fd = fd;
    r->own_fd = path != NULL;
    if (uv_guess_handle(fd) != UV_FILE &&
        uv_poll_init(loop, &r->poll, fd) == 0) {
        r->polled = 1;
        r->handle_open = 1;
        r->poll.data = &r->base;
    }
    lio_hook_init(L, &r->hook, 3);
    *box = r;
    lio_reader_start(r);
    return 1;
}

static int l_reader_pause(lua_State *L) {
    lio_reader *r = lio_checkreader(L);
    r->paused = 1;
    if (r->polled && r->handle_open && !r->closed)
        uv_poll_stop(&r->poll);
    return 0;
}

static int l_reader_resume(lua_State *L) {
    lio_reader *r = lio_checkreader(L);
    r->paused = 0;
    lio_reader_start(r);
    return 0;
}

static int l_reader_close(lua_State *L) {
    lio_reader **box = luaL_checkudata(L, 1, "tide.reader");
    if (*box) {
        lio_reader_close(*box);
        *box = NULL;
    }
    return 0;
}

/* ===== HANDLES: signals and timers ===== */

typedef struct lio_handle {
    lio_base base; /* first: the engine's close finds it through data */
    union {
        uv_handle_t h;
        uv_signal_t sig;
        uv_timer_t tim;
        tide__stopsig stop; /* SIGINT, SIGTERM: its uv_async_t first */
    } u;
    lio_hook hook;
    struct lio_handle **box; /* the Lua box while it points here */
} lio_handle;

/* Frees a signal or timer record; also used by the engine's close, which
 * closes every handle left on its loop. */
static void lio_handle_close_cb(uv_handle_t *h) {
    lio_handle *x = tide__container_of(h, lio_handle, u.h);
    if (x->box)
        *x->box = NULL;
    lio_hook_free(&x->hook);
    free(x);
}

static void lio_signal_cb(uv_signal_t *s, int signum) {
    lio_handle *x = tide__container_of(s, lio_handle, u.sig);
    lua_State *T = lio_hook_push(&x->hook);
    lua_pushinteger(T, signum);
    tide__lua_pcall_hook(T, 1, "signal handler");
}

/* SIGINT or SIGTERM arrived (stopsig.c woke the loop): the callback runs
 * here, on the loop, as it would for uv_signal. */
static void lio_stopsig_cb(uv_async_t *a) {
    lio_handle *x = tide__container_of(a, lio_handle, u.stop.async);
    if (tide__stopsig_take(&x->u.stop) <= 0)
        return;
    lua_State *T = lio_hook_push(&x->hook);
    lua_pushinteger(T, x->u.stop.signum);
    tide__lua_pcall_hook(T, 1, "signal handler");
}

/* Before its handle closes, the signal handler must stop using it. */
static void lio_stopsig_unwatch(lio_base *b) {
    lio_handle *x = (lio_handle *)b;
    tide__stopsig_unwatch(&x->u.stop);
}

static void lio_timer_cb(uv_timer_t *t) {
    lio_handle *x = tide__container_of(t, lio_handle, u.tim);
    lua_State *T = lio_hook_push(&x->hook);
    tide__lua_pcall_hook(T, 0, "timer");
}

static lio_handle *lio_handle_new(lua_State *L, int fn_idx) {
    lio_handle **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.handle");
    lua_setmetatable(L, -2);
    lio_handle *x = tide__xcalloc(1, sizeof(*x));
    lio_hook_init(L, &x->hook, fn_idx);
    x->base.close_cb = lio_handle_close_cb;
    *box = x;
    x->box = box;
    return x;
}

/* signal(engine, signum, fn) -> handle; fn(signum) on each signal.
 * SIGINT and SIGTERM go through stopsig.c: fn gets the first one, the
 * second ends the process (exit 128 + signum), even while the loop is
 * stuck in a task body. */
static int l_signal(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    int signum = (int)luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lio_handle *x = lio_handle_new(L, 3);
    if (tide__stopsig_handles(signum)) {
        int rc = tide__stopsig_watch(&x->u.stop, loop, signum,
                                     lio_stopsig_cb);
        if (rc != 0) { /* nothing was opened: the record goes now */
            *x->box = NULL;
            lio_hook_free(&x->hook);
            free(x);
            return luaL_error(L, "signal %d: %s", signum, uv_strerror(rc));
        }
        x->base.before_close = lio_stopsig_unwatch;
        x->u.h.data = &x->base;
        uv_unref(&x->u.h); /* a watcher alone does not keep the loop alive */
        return 1;
    }
    uv_signal_init(loop, &x->u.sig);
    x->u.h.data = &x->base;
    int rc = uv_signal_start(&x->u.sig, lio_signal_cb, signum);
    if (rc != 0)
        return luaL_error(L, "signal %d: %s", signum, uv_strerror(rc));
    uv_unref(&x->u.h); /* a watcher alone does not keep the loop alive */
    return 1;
}

/* timer(engine, seconds, fn) -> handle; fn() every `seconds`. */
static int l_timer(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    double s = luaL_checknumber(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    uint64_t ms = s > 0.001 ? (uint64_t)(s * 1000) : 1;
    lio_handle *x = lio_handle_new(L, 3);
    uv_timer_init(loop, &x->u.tim);
    x->u.h.data = &x->base;
    uv_timer_start(&x->u.tim, lio_timer_cb, ms, ms);
    uv_unref(&x->u.h);
    return 1;
}

static int l_handle_close(lua_State *L) {
    lio_handle **box = luaL_checkudata(L, 1, "tide.handle");
    if (*box) {
        lio_handle *x = *box;
        x->box = NULL;
        *box = NULL;
        if (x->base.before_close)
            x->base.before_close(&x->base);
        if (!uv_is_closing(&x->u.h))
            uv_close(&x->u.h, lio_handle_close_cb);
    }
    return 0;
}

/* ===== HELPERS ===== */

static int l_hrtime(lua_State *L) {
    lua_pushnumber(L, (double)uv_hrtime() / 1e9);
    return 1;
}

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* mkdir_p(path) -> true | nil, msg, name: creates a directory and its
 * parents (an existing directory is fine). */
static int l_mkdir_p(lua_State *L) {
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    for (size_t i = 0; i <= len; i++) {
        if (i == len || (path[i] == '/' && i > 0)) {
            lua_pushlstring(L, path, i);
            uv_fs_t req;
            int rc = uv_fs_mkdir(NULL, &req, lua_tostring(L, -1), 0777, NULL);
            uv_fs_req_cleanup(&req);
            if (rc != 0 && rc != UV_EEXIST) {
                lua_pushnil(L);
                lua_pushfstring(L, "%s: %s", lua_tostring(L, -2),
                                uv_strerror(rc));
                lua_pushstring(L, uv_err_name(rc));
                return 3;
            }
            lua_pop(L, 1);
        }
    }
    uv_fs_t req;
    int rc = uv_fs_stat(NULL, &req, path, NULL);
    int isdir = rc == 0 && (req.statbuf.st_mode & S_IFMT) == S_IFDIR;
    uv_fs_req_cleanup(&req);
    if (!isdir) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: not a directory", path);
        lua_pushstring(L, "ENOTDIR");
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* maxrss() -> the process's peak resident set size, in bytes. */
static int l_maxrss(lua_State *L) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    lua_pushnumber(L, (double)ru.ru_maxrss * 1024.0); /* Linux: KiB */
    return 1;
}

/* epoll_create() -> fd | nil, msg: an epoll set that becomes readable when
 * any loop added to it has events (a host polls this one fd). */
static int l_epoll_create(lua_State *L) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushinteger(L, fd);
    return 1;
}

/* epoll_ctl(set, fd, add): adds (true) or removes (false) a loop's fd. */
static int l_epoll_ctl(lua_State *L) {
    int set = (int)luaL_checkinteger(L, 1), fd = (int)luaL_checkinteger(L, 2);
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    int rc = epoll_ctl(set, lua_toboolean(L, 3) ? EPOLL_CTL_ADD : EPOLL_CTL_DEL,
                       fd, &ev);
    lua_pushboolean(L, rc == 0);
    return 1;
}

/* poll(fd, timeout_ms) -> whether fd became readable (timeout -1: wait). */
static int l_poll(lua_State *L) {
    struct pollfd p = {(int)luaL_checkinteger(L, 1), POLLIN, 0};
    int rc;
    do
        rc = poll(&p, 1, (int)luaL_checkinteger(L, 2));
    while (rc < 0 && errno == EINTR);
    lua_pushboolean(L, rc > 0);
    return 1;
}

/* poll2(fd_a, fd_b, timeout_ms) -> a readable, b readable; a negative fd
 * is left out. Returns false, false on timeout or when interrupted by a
 * signal (the caller checks sigint_take). */
static int l_poll2(lua_State *L) {
    struct pollfd p[2] = {{(int)luaL_checkinteger(L, 1), POLLIN, 0},
                          {(int)luaL_checkinteger(L, 2), POLLIN, 0}};
    int rc = poll(p, 2, (int)luaL_checkinteger(L, 3));
    lua_pushboolean(L, rc > 0 && (p[0].revents & (POLLIN | POLLHUP)));
    lua_pushboolean(L, rc > 0 && (p[1].revents & (POLLIN | POLLHUP)));
    return 2;
}

/* read_fd(fd) -> up to 64 KiB read from fd, or nil at its end (or on an
 * error, with the message). Call when fd is readable. */
static int l_read_fd(lua_State *L) {
    char buf[65536];
    ssize_t n;
    do
        n = read((int)luaL_checkinteger(L, 1), buf, sizeof(buf));
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        lua_pushnil(L);
        if (n < 0)
            lua_pushstring(L, strerror(errno));
        return n < 0 ? 2 : 1;
    }
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

/* SIGINT as a flag, for the REPL's own loop: the handler only records it
 * (and interrupts poll); sigint_take() reads and clears it. */
static volatile sig_atomic_t lio_sigint;

static void lio_on_sigint(int sig) {
    TIDE_UNUSED(sig);
    lio_sigint = 1;
}

int tide__lua_sigint_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = lio_on_sigint; /* no SA_RESTART: poll returns EINTR */
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGINT, &sa, NULL);
}

static int l_sigint_install(lua_State *L) {
    lua_pushboolean(L, tide__lua_sigint_install() == 0);
    return 1;
}

static int l_sigint_take(lua_State *L) {
    lua_pushboolean(L, lio_sigint != 0);
    lio_sigint = 0;
    return 1;
}

static int l_getpid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

/* environ() -> { "NAME=value", ... } */
static int l_environ(lua_State *L) {
    extern char **environ;
    lua_newtable(L);
    for (int i = 0; environ && environ[i]; i++) {
        lua_pushstring(L, environ[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* exit(code): flushes stdio and ends the process at once. */
static int l_exit(lua_State *L) {
    int code = (int)luaL_optinteger(L, 1, 0);
    fflush(NULL);
    _exit(code);
    return 0;
}

void tide__lua_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                        lua_CFunction gc) {
    luaL_newmetatable(L, name);
    if (methods) {
        lua_newtable(L);
        for (const luaL_Reg *r = methods; r->name; r++) {
            lua_pushcfunction(L, r->func);
            lua_setfield(L, -2, r->name);
        }
        lua_setfield(L, -2, "__index");
    }
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}

void tide__lua_open_io(lua_State *L) {
    static const luaL_Reg reader_methods[] = {
        {"pause", l_reader_pause}, {"resume", l_reader_resume},
        {"close", l_reader_close}, {NULL, NULL}};
    static const luaL_Reg handle_methods[] = {{"close", l_handle_close},
                                              {NULL, NULL}};
    lua_pushlightuserdata(L, &lio_traceback_key);
    lua_pushcfunction(L, lio_traceback);
    lua_rawset(L, LUA_REGISTRYINDEX);
    tide__lua_newclass(L, "tide.reader", reader_methods, l_reader_close);
    tide__lua_newclass(L, "tide.handle", handle_methods, l_handle_close);
    static const luaL_Reg funcs[] = {
        {"reader", l_reader}, {"signal", l_signal}, {"timer", l_timer},
        {"hrtime", l_hrtime}, {"isatty", l_isatty}, {"exit", l_exit},
        {"mkdir_p", l_mkdir_p}, {"maxrss", l_maxrss},
        {"epoll_create", l_epoll_create}, {"epoll_ctl", l_epoll_ctl},
        {"poll", l_poll}, {"poll2", l_poll2}, {"read_fd", l_read_fd},
        {"getpid", l_getpid}, {"environ", l_environ},
        {"sigint_install", l_sigint_install}, {"sigint_take", l_sigint_take},
        {NULL, NULL}};
    for (const luaL_Reg *r = funcs; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
}
