/* Signal watchers and repeating timers on an engine's loop (tide.handle).
 *
 * Each calls a Lua callback; both are one class, "tide.handle", whose only
 * method is close().
 *
 * The Lua userdata holds a pointer to a malloc'd record (a boxed pointer)
 * because libuv needs the record until the handle's close callback, which
 * may come after Lua collected the box. Ownership: the record is freed in
 * that close callback (lhandle_close_cb), whoever closed the handle: the
 * box (close() or __gc) or the engine's close. The record points back at
 * the box while the box points at it, so that whichever goes first clears
 * the other's pointer. */
#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

typedef struct lhandle {
    tide__lua_base base; /* first: the engine's close finds it through data */
    union {
        uv_handle_t h;
        uv_signal_t sig;
        uv_timer_t tim;
        tide__stopsig stop; /* SIGINT, SIGTERM: its uv_async_t first */
    } u;
    tide__lua_hook hook;
    struct lhandle **box; /* the Lua box while it points here */
} lhandle;

/* Frees a signal or timer record; also used by the engine's close, which
 * closes every handle left on its loop. */
static void lhandle_close_cb(uv_handle_t *h) {
    lhandle *x = tide__container_of(h, lhandle, u.h);
    if (x->box)
        *x->box = NULL;
    tide__lua_hook_free(&x->hook);
    free(x);
}

static void lhandle_signal_cb(uv_signal_t *s, int signum) {
    lhandle *x = tide__container_of(s, lhandle, u.sig);
    lua_State *T = tide__lua_hook_push(&x->hook);
    lua_pushinteger(T, signum);
    tide__lua_pcall_hook(T, 1, "signal handler");
}

/* SIGINT or SIGTERM arrived (stopsig.c woke the loop): the callback runs
 * here, on the loop, as it would for uv_signal. */
static void lhandle_stopsig_cb(uv_async_t *a) {
    lhandle *x = tide__container_of(a, lhandle, u.stop.async);
    if (tide__stopsig_take(&x->u.stop) <= 0)
        return;
    lua_State *T = tide__lua_hook_push(&x->hook);
    lua_pushinteger(T, x->u.stop.signum);
    tide__lua_pcall_hook(T, 1, "signal handler");
}

/* Before its handle closes, the signal handler must stop using it. */
static void lhandle_stopsig_unwatch(tide__lua_base *b) {
    lhandle *x = tide__container_of(b, lhandle, base);
    tide__stopsig_unwatch(&x->u.stop);
}

static void lhandle_timer_cb(uv_timer_t *t) {
    lhandle *x = tide__container_of(t, lhandle, u.tim);
    lua_State *T = tide__lua_hook_push(&x->hook);
    tide__lua_pcall_hook(T, 0, "timer");
}

static lhandle *lhandle_new(lua_State *L, int fn_idx) {
    lhandle **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.handle");
    lua_setmetatable(L, -2);
    lhandle *x = tide__xcalloc(1, sizeof(*x));
    tide__lua_hook_init(L, &x->hook, fn_idx);
    x->base.close_cb = lhandle_close_cb;
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
    lhandle *x = lhandle_new(L, 3);
    if (tide__stopsig_handles(signum)) {
        int rc = tide__stopsig_watch(&x->u.stop, loop, signum,
                                     lhandle_stopsig_cb);
        if (rc != 0) { /* nothing was opened: the record goes now */
            *x->box = NULL;
            tide__lua_hook_free(&x->hook);
            free(x);
            return luaL_error(L, "signal %d: %s", signum, uv_strerror(rc));
        }
        x->base.before_close = lhandle_stopsig_unwatch;
        x->u.h.data = &x->base;
        uv_unref(&x->u.h); /* a watcher alone does not keep the loop alive */
        return 1;
    }
    uv_signal_init(loop, &x->u.sig);
    x->u.h.data = &x->base;
    int rc = uv_signal_start(&x->u.sig, lhandle_signal_cb, signum);
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
    lhandle *x = lhandle_new(L, 3);
    uv_timer_init(loop, &x->u.tim);
    x->u.h.data = &x->base;
    uv_timer_start(&x->u.tim, lhandle_timer_cb, ms, ms);
    uv_unref(&x->u.h);
    return 1;
}

static int l_handle_close(lua_State *L) {
    lhandle **box = luaL_checkudata(L, 1, "tide.handle");
    if (*box) {
        lhandle *x = *box;
        x->box = NULL;
        *box = NULL;
        if (x->base.before_close)
            x->base.before_close(&x->base);
        if (!uv_is_closing(&x->u.h))
            uv_close(&x->u.h, lhandle_close_cb);
    }
    return 0;
}

void tide__lua_open_handle(lua_State *L) {
    static const luaL_Reg methods[] = {{"close", l_handle_close},
                                       {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"signal", l_signal}, {"timer", l_timer}, {NULL, NULL}};
    tide__lua_newclass(L, "tide.handle", methods, l_handle_close);
    luaL_setfuncs(L, funcs, 0);
}
