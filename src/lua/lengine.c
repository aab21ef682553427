/* The engine as a Lua object, and the one place that resumes coroutines.
 *
 * DESIGN
 * ------
 * An engine userdata embeds the scheduler (sched.c) and its own uv loop.
 * Its functions are closures with the userdata as upvalue 1, so the
 * runner's hot calls (nxt) need no argument checks. The userdata's
 * environment table anchors what it needs from Lua: [1] a set of every
 * runner coroutine (thread -> true), [2] the runner function, [3] the
 * graphs attached. Because these anchors hang off the userdata rather
 * than the registry, an engine nobody references is collected with its
 * coroutines; __gc then closes its loop.
 *
 * Runners: a runner coroutine loops calling nxt(), which yields (an
 * "idle" yield) when there is nothing to do. A task body that calls a
 * yielding engine function (tide.sleep, park) suspends the whole runner:
 * the attempt record keeps that coroutine and the drain takes another
 * runner (from the idle list, or a new one). When the attempt is woken,
 * the drain resumes its coroutine, which finishes the body and goes on as
 * an ordinary runner. Task bodies are resumed in one place, leng_resume.
 * The only other lua_resume in tide is in leng_retire_runners: it hands
 * OP_QUIT to idle runners (waiting inside nxt, with no body on their
 * stack) when the engine closes, so that they return. */
#include <dlfcn.h> /* dladdr, dlopen: _GNU_SOURCE from the Makefile */
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

enum { Y_NONE = 0, Y_IDLE, Y_BLOCKED };
enum { ENV_RUNNERS = 1, ENV_RUNNER_FN = 2, ENV_GRAPHS = 3, ENV_HOOK_L = 4,
       ENV_CALLER = 5, ENV_ON_STUCK = 6, ENV_FAIL_MSG = 7 };

typedef struct leng {
    tide__eng eng;
    uv_loop_t loop;
    lua_State *L;      /* the thread of the current entry call */
    int env;           /* stack index of the env table on L, or 0 */
    lua_State *running;/* the coroutine being resumed */
    int yield_kind;
    int in_run, closed, nclosing;
    int quitting;      /* idle runners are being told to return */
    /* Runners that ended in an error (a bug in tide or in a result
     * callback): the work they held is lost, so whoever runs the engine
     * must fail (stats().internal_errors). */
    uint32_t internal_errors;
    lua_State **idle;
    uint32_t nidle, idle_cap;
    tide__tentry waitt;/* wakes a top-level wait (turn) */
    lua_State *hook_L; /* a thread of this state for lua_sethook (env) */
    const char *own_src[4]; /* tide's chunk names (see leng_wd_hook) */
    struct lexec *execs;/* subprocesses with open handles (lexec.c) */
    /* A bare coroutine.yield() from a body: requeued (0) or failed as a
     * foreign yield (1: a host whose own functions yield, like nginx's
     * ngx.sleep, cannot be told apart from it). */
    int strict_yield;
    /* Made readable for a host that waits on the loop's fd, when work is
     * submitted or cancelled from outside the loop. */
    uv_async_t wakeup;
    unsigned fork_gen; /* tide__fork_gen() when made */
    long pid;          /* the process that made it, for the message */
    struct lredis *redis;/* Redis clients not closed yet (lredis.c) */
} leng;

/* The engine draining now on this thread. Atomic because the watchdog's
 * signal handler reads it on this thread (leng_wd_arm). */
static _Thread_local leng *_Atomic leng_current;

static leng *leng_now(void) {
    return atomic_load_explicit(&leng_current, memory_order_relaxed);
}

#define LENG_UP(L) ((leng *)lua_touserdata((L), lua_upvalueindex(1)))

/* Makes L the thread the glue may use for the rest of this call, with the
 * engine's env table pushed on it. Calls nest (a runner calls finalize
 * while run() drives the loop), so each entry restores what it replaced
 * with leng_leave before it returns. */
typedef struct {
    lua_State *L;
    int env;
} leng_saved;

static leng_saved leng_enter(lua_State *L, leng *e) {
    leng_saved prev = {e->L, e->env};
    e->L = L;
    lua_getfenv(L, lua_upvalueindex(1));
    e->env = lua_gettop(L);
    return prev;
}

static void leng_leave(leng *e, leng_saved prev) {
    e->L = prev.L;
    e->env = prev.env;
}

static int leng_forked(leng *e) {
    return e->fork_gen != tide__fork_gen();
}

/* Raises when the engine was made before a fork: its loop, its worker
 * threads and the watchdog's record are the parent's, and sync jobs would
 * wait for threads that this process does not have. */
static void leng_check_fork(lua_State *L, leng *e) {
    if (leng_forked(e))
        luaL_error(L, "tide: this executor was made in process %d before a "
                      "fork; it cannot be used in process %d (make "
                      "executors after forking: in nginx, in "
                      "init_worker_by_lua, e.g. with "
                      "require('tide.ngx').init_worker)",
                   (int)e->pid, (int)getpid());
}

static void leng_check_open(lua_State *L, leng *e) {
    leng_check_fork(L, e);
    if (e->closed)
        luaL_error(L, "tide: the executor was closed");
}

/* Work was submitted or cancelled from outside the loop: a host waiting on
 * the loop's fd (tide.fd, tide_engine_fd) must wake up and step. libuv
 * coalesces the sends (one write until the loop runs again). */
static void leng_wake_host(leng *e) {
    if (!e->in_run && !e->eng.draining && !e->closed)
        uv_async_send(&e->wakeup);
}

static void leng_on_wakeup(uv_async_t *h) {
    TIDE_UNUSED(h); /* the step that runs now does the work */
}

/* OpenResty's LuaJIT keeps a pointer per coroutine (exdata) that nginx's
 * Lua module reads as "the current request", and a new coroutine inherits
 * its creator's. A runner made while one request (or timer) stepped the
 * engine and resumed during another would hand a request nginx freed
 * meanwhile to every ngx.* call of the body. So each resume gives the
 * runner the exdata of the thread resuming it. The functions exist only in
 * OpenResty's LuaJIT; they are looked up in the library that provides
 * lua_resume, so the same core.so runs on either LuaJIT. */
typedef void *(*leng_getx_fn)(lua_State *L);
typedef void (*leng_setx_fn)(lua_State *L, void *p);
static leng_getx_fn leng_getx;
static leng_setx_fn leng_setx;
static uv_once_t leng_exdata_once = UV_ONCE_INIT;

static void leng_find_exdata(void) {
    Dl_info info;
    int (*resume)(lua_State *, int) = lua_resume;
    void *addr;
    memcpy(&addr, &resume, sizeof(addr));
    if (!dladdr(addr, &info) || info.dli_fname == NULL)
        return;
    void *lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
        return;
    void *g = dlsym(lib, "lua_getexdata"), *st = dlsym(lib, "lua_setexdata");
    if (g && st) {
        memcpy(&leng_getx, &g, sizeof(g));
        memcpy(&leng_setx, &st, sizeof(st));
    }
    dlclose(lib); /* still loaded: lua_resume is in it */
}

/* Removes a coroutine's anchor: it is never resumed again and the GC
 * takes it. Needs leng_enter. */
static void leng_unanchor(leng *e, lua_State *co) {
    lua_State *L = e->L;
    TIDE_ASSERT(e->env != 0);
    lua_rawgeti(L, e->env, ENV_RUNNERS);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

static void leng_drop_co(tide__eng *eng, tide__att *a) {
    leng *e = tide__container_of(eng, leng, eng);
    lua_State *co = a->co;
    a->co = NULL;
    if (a->op_cancel) {
        /* The abandoned body waited on an operation (a subprocess): stop
         * it; its completion will find no attempt to wake. */
        void (*cancel)(void *) = a->op_cancel;
        void *op = a->op;
        a->op_cancel = NULL;
        a->op_started = NULL;
        a->op = NULL;
        cancel(op);
    }
    if (co)
        leng_unanchor(e, co);
}

static void leng_on_idle(uv_idle_t *h);

static void leng_kick(tide__eng *eng) {
    if (!uv_is_active((uv_handle_t *)&eng->idle))
        uv_idle_start(&eng->idle, leng_on_idle);
}

/* Finished runner threads of closed engines, kept for the next engine of
 * this Lua state (a registry array): a body that parks keeps its runner,
 * so each engine makes as many runners as bodies wait at once, and a
 * program calling tide.run again and again would make and collect them
 * every time. A finished thread takes a new function like a new one. */
#define RUNNER_CACHE_KEY "tide.runner_cache"
#define RUNNER_CACHE_MAX 1024

static void leng_push_runner_cache(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, RUNNER_CACHE_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_createtable(L, 64, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, RUNNER_CACHE_KEY);
    }
}

static lua_State *leng_new_runner(leng *e) {
    lua_State *L = e->L;
    lua_rawgeti(L, e->env, ENV_RUNNERS);
    leng_push_runner_cache(L);
    lua_State *co = NULL;
    int n = (int)lua_objlen(L, -1);
    if (n > 0) {
        lua_rawgeti(L, -1, n);
        co = lua_tothread(L, -1);
        lua_pushnil(L);
        lua_rawseti(L, -3, n);
        lua_replace(L, -2); /* the thread where the cache was */
    } else {
        lua_pop(L, 1);
        co = lua_newthread(L);
    }
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_rawgeti(L, e->env, ENV_RUNNER_FN);
    lua_xmove(L, co, 1);
    return co;
}

/* Ends the idle runners of an engine being closed, and keeps their
 * threads for the next engine. An idle runner waits inside nxt(): resumed
 * with OP_QUIT it returns, and its thread is finished and empty. */
static void leng_retire_runners(lua_State *L, leng *e) {
    leng_push_runner_cache(L);
    int n = (int)lua_objlen(L, -1);
    e->quitting = 1;
    while (e->nidle > 0) {
        lua_State *co = e->idle[--e->nidle];
        lua_pushinteger(co, TIDE__OP_QUIT);
        if (lua_resume(co, 1) != 0 || lua_gettop(co) != 0) {
            lua_settop(co, 0); /* not a runner that returned: drop it */
            continue;
        }
        if (n >= RUNNER_CACHE_MAX)
            continue;
        lua_pushthread(co);
        lua_xmove(co, L, 1);
        lua_rawseti(L, -2, ++n);
    }
    e->quitting = 0;
    lua_pop(L, 1);
}

/* co died in an error: prints it with co's traceback. */
static void leng_report(leng *e, lua_State *co, const char *what) {
    e->internal_errors++;
    lua_xmove(co, e->L, 1);
    tide__lua_traceback(e->L, co, 0);
    fprintf(stderr, "tide: internal error %s: %s\n", what,
            lua_tostring(e->L, -1));
    lua_pop(e->L, 1);
}

/* Keeps the message of an attempt failed by a foreign yield for the
 * runner (fail_message), naming the function that yielded and the body's
 * line that called it, as far as the coroutine's stack tells. */
static void leng_note_foreign(leng *e, lua_State *co, tide__att *a,
                              int nvals) {
    lua_State *L = e->L;
    lua_Debug ar;
    const char *name = NULL;
    char where[300] = "";
    if (lua_getstack(co, 0, &ar) && lua_getinfo(co, "n", &ar))
        name = ar.name;
    for (int level = 0; lua_getstack(co, level, &ar); level++) {
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
            snprintf(where, sizeof(where), " at %s:%d", ar.short_src,
                     ar.currentline);
            break;
        }
    }
    lua_rawgeti(L, e->env, ENV_FAIL_MSG);
    lua_pushfstring(L, "%d:%d", (int)a->slot, (int)a->task);
    if (nvals > 0)
        lua_pushfstring(L, "foreign yield: '%s'%s yielded %d value(s) to "
                           "tide; a task body may suspend only through "
                           "tide (tide.sleep, ex:result, tide.exec, sync "
                           "tasks; a bare coroutine.yield() yields none)",
                        name ? name : "?", where, nvals);
    else
        lua_pushfstring(L, "foreign yield: '%s'%s suspended the task body "
                           "for its host, not for tide; in this host a "
                           "task body may wait only through tide "
                           "(tide.sleep, ex:result, tide.exec, sync tasks)",
                        name ? name : "?", where);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* The resume site of the drain (every task body runs through it).
 * Resumes co with nargs values already pushed on it and files it by why it
 * stopped. */
static void leng_resume(leng *e, lua_State *co, int nargs) {
    tide__eng *eng = &e->eng;
    e->running = co;
    e->yield_kind = Y_NONE;
    if (leng_setx)
        leng_setx(co, leng_getx(e->L));
    int rc = lua_resume(co, nargs);
    e->running = NULL;
    /* No body runs once the runner stopped, whatever stopped it. */
    tide__wd_leave(&eng->wd);
    if (rc == LUA_YIELD) {
        int nvals = lua_gettop(co);
        if (e->yield_kind == Y_IDLE) {
            lua_settop(co, 0);
            if (e->nidle == e->idle_cap) {
                e->idle_cap = e->idle_cap ? e->idle_cap * 2 : 16;
                e->idle = tide__xrealloc(e->idle,
                                         e->idle_cap * sizeof(*e->idle));
            }
            e->idle[e->nidle++] = co;
        } else if (e->yield_kind == Y_BLOCKED) {
            lua_settop(co, 0);
            tide__att *a = eng->cur;
            TIDE_ASSERT(a != NULL);
            a->co = co;
            tide__eng_yielded(eng, a);
        } else {
            /* The body yielded, but not through tide: a bare
             * coroutine.yield() is a cooperative yield, resumed with no
             * values on a later turn. A yield with values, or any yield
             * while the executor is strict about them, came from something
             * else (a host's own yielding function, like nginx's ngx.sleep
             * or a cosocket, or a library's coroutine scheduler), which
             * expects to resume the coroutine itself: tide must never
             * resume it, so the attempt fails and the coroutine is
             * dropped. */
            tide__att *a = tide__eng_current_att(eng);
            if (a == NULL) {
                lua_settop(co, 0);
                fprintf(stderr, "tide: coroutine.yield() outside a task "
                                "body; the runner is dropped\n");
                leng_unanchor(e, co);
                return;
            }
            int foreign = nvals > 0 || e->strict_yield;
            a->co = co;
            a->state = TIDE__ATT_PARKED;
            tide__eng_yielded(eng, a);
            if (a->co && foreign) {
                leng_note_foreign(e, co, a, nvals);
                lua_settop(co, 0);
                tide__eng_abandon(eng, a, TIDE_EVALUE);
            } else if (a->co) {
                lua_settop(co, 0);
                tide__eng_wake(eng, a, 1);
            }
        }
        return;
    }
    if (rc == 0) {
        e->internal_errors++;
        fprintf(stderr, "tide: internal error: a runner returned\n");
    } else
        leng_report(e, co, "in the runner");
    leng_unanchor(e, co);
}

/* Runs ready work until there is none or the time slice (1 ms) is over;
 * called from the idle handle, with e->L and e->env set by the entry call
 * that is running the loop. */
static void leng_drain(leng *e) {
    tide__eng *eng = &e->eng;
    leng *prev = leng_now();
    atomic_store_explicit(&leng_current, e, memory_order_relaxed);
    tide__wd_here(&eng->wd);
    eng->draining = 1;
    /* The timers this slice starts count from the loop's time (sched.c,
     * eng_timer_add): read it now, not at the start of a turn whose
     * callbacks may have run long. */
    uv_update_time(&e->loop);
    eng->slice_end = uv_hrtime() + 1000000;
    for (;;) {
        uint64_t h;
        while (tide__ring_shift(&eng->resumeq, &h) == 0) {
            tide__att *a = tide__eng_att_get(
                eng, (double)(uint32_t)h + (double)(h >> 32) * 4294967296.0);
            if (a == NULL || a->state != TIDE__ATT_READY || a->co == NULL)
                continue;
            lua_State *co = a->co;
            a->co = NULL;
            a->state = TIDE__ATT_RUNNING;
            eng->cur = a;
            eng->cur_slot = a->slot;
            eng->cur_task = a->task;
            lua_pushboolean(co, a->result);
            tide__wd_enter(&eng->wd, a->task, eng->timeout_ms[a->task]);
            leng_resume(e, co, 1);
            /* Thousands of sleeps may fall due at once: the slice holds
             * for them too, or a host's loop would wait for all of them. */
            if (uv_hrtime() > eng->slice_end)
                break;
        }
        if (uv_hrtime() > eng->slice_end)
            break;
        if (!eng->rq.len && !eng->doneq.len && !eng->failq.len &&
            !eng->batchq.len)
            break;
        lua_State *co = e->nidle ? e->idle[--e->nidle] : leng_new_runner(e);
        eng->cur = NULL;
        eng->cur_slot = 0;
        leng_resume(e, co, 0);
        if (uv_hrtime() > eng->slice_end)
            break;
    }
    eng->draining = 0;
    /* libuv computes the poll's timeout from the loop's time after the
     * idle handles ran: without reading the clock again, a slice's length
     * would be added to the wait for the next timer (a 10 ms sleep begun
     * in a 0.5 ms slice would wake 10.5 ms after the slice began). */
    uv_update_time(&e->loop);
    atomic_store_explicit(&leng_current, prev, memory_order_relaxed);
    /* Near a memory limit, garbage goes between slices (lmem.c). */
    tide__lua_mem_relieve(e->L);
    if (!tide__eng_has_work(eng))
        uv_idle_stop(&eng->idle);
}

static void leng_on_idle(uv_idle_t *h) {
    tide__eng *eng = tide__container_of(h, tide__eng, idle);
    leng *e = tide__container_of(eng, leng, eng);
    if (e->L == NULL || e->env == 0) {
        uv_idle_stop(h); /* nobody is running the loop from Lua */
        return;
    }
    leng_drain(e);
}

/* ===== THE WATCHDOG'S HOOK ===== */

/* The watchdog thread (watchdog.c) decides that the body running on an
 * engine's loop has run its limit without yielding, stores the body
 * segment to stop in wd.target and sends TIDE__WD_SIGNO to the loop
 * thread. leng_wd_arm runs in that signal handler and sets a count hook
 * with lua_sethook, which LuaJIT allows asynchronously on the thread that
 * runs the state (lj_dispatch.c: "This function can be called
 * asynchronously (e.g. during a signal)"); it only stores the hook fields
 * and patches the interpreter's dispatch table, which the interpreter
 * reads at its next instruction. The hook then runs on the loop thread
 * too, where it can look at everything: it raises inside the body only
 * while wd.seq still equals the target (the body neither yielded nor
 * returned since: seq moves at each start, return and yield), the body
 * is on its runner's stack, i.e. the executor's code called xpcall below
 * (not the runner's own code before or after the body: an error there
 * would end the runner; the body's own frame may be gone in a tail
 * call, so the hook looks for that xpcall), and the code that
 * runs is not tide's own Lua (the executor's bookkeeping must not stop
 * half-way: a body inside ex:submit is stopped once back in its own code;
 * nor may the runner's error handler, which calls the error record's
 * __tostring, be stopped: the body would fail with "error in error
 * handling").
 * Compiled code (JIT traces) never calls hooks: a body stuck in a compiled
 * loop runs on (docs/api.md, "The watchdog").
 *
 * Once it raised, the hook runs at every instruction while the target
 * stands, so a body that catches the error (pcall) is stopped again at
 * its first instruction outside the catch. It removes itself, and puts
 * back the hook it replaced (debug.sethook), as soon as the target is
 * gone. What it replaced is kept per thread: the handler and the hook run
 * on the same thread, and hooks are per Lua state, used by one thread at
 * a time. */
#define LENG_WD_COUNT 1000

typedef void (*leng_hook_fn)(lua_State *L, lua_Debug *ar);
static _Thread_local _Atomic(leng_hook_fn) leng_wd_prev;
static _Thread_local _Atomic int leng_wd_prev_mask, leng_wd_prev_count;

static void leng_wd_hook(lua_State *L, lua_Debug *ar);

/* In the TIDE__WD_SIGNO handler, on a loop thread: async-signal-safe. The
 * engine is the one draining on this thread; a request for another one
 * (a nested tide.run) waits for the watchdog to ask again. */
static void leng_wd_arm(void) {
    leng *e = leng_now();
    if (e == NULL || !atomic_exchange(&e->eng.wd.req, 0))
        return;
    lua_Hook h = lua_gethook(e->hook_L);
    if (h != leng_wd_hook) {
        atomic_store(&leng_wd_prev, h);
        atomic_store(&leng_wd_prev_mask, lua_gethookmask(e->hook_L));
        atomic_store(&leng_wd_prev_count, lua_gethookcount(e->hook_L));
    } else {
        /* Asked again: the hook did not fire. If this signal once came in
         * the middle of the VM's own dispatch-table update, part of the
         * table may have been left without the hook check while the mode
         * says it has it; taking the hook off and on rewrites the table
         * whole. */
        lua_sethook(e->hook_L, NULL, 0, 0);
    }
    lua_sethook(e->hook_L, leng_wd_hook, LUA_MASKCOUNT, LENG_WD_COUNT);
}

static void leng_wd_disarm(lua_State *L) {
    leng_hook_fn prev = atomic_exchange(&leng_wd_prev, NULL);
    lua_sethook(L, prev, prev ? atomic_load(&leng_wd_prev_mask) : 0,
                atomic_load(&leng_wd_prev_count));
}

/* Whether the running attempt's body is on the stack of the runner
 * coroutine the drain resumed (the hooked code may run in a coroutine the
 * body made): a call of `caller` (xpcall) made by the executor's code
 * (own_src[0]). Needs the drain's e->L and e->env. */
static int leng_in_body(leng *e) {
    lua_State *co = e->running, *S = e->L;
    if (co == NULL || S == NULL || e->env == 0 || e->eng.cur_slot == 0 ||
        e->own_src[0] == NULL)
        return 0;
    lua_rawgeti(S, e->env, ENV_CALLER);
    int found = 0, below_caller = 0;
    lua_Debug ar;
    for (int level = 0; !found && lua_getstack(co, level, &ar); level++) {
        if (!lua_getinfo(co, "fS", &ar))
            continue;
        lua_xmove(co, S, 1);
        found = below_caller && ar.source == e->own_src[0];
        below_caller = lua_rawequal(S, -1, -2);
        lua_pop(S, 1);
    }
    lua_pop(S, 1);
    return found;
}

static void leng_wd_hook(lua_State *L, lua_Debug *ar) {
    leng *e = leng_now();
    tide__wd *wd = e ? &e->eng.wd : NULL;
    uint64_t target =
        wd ? atomic_load_explicit(&wd->target, memory_order_acquire) : 0;
    if (target == 0 ||
        target != atomic_load_explicit(&wd->seq, memory_order_relaxed)) {
        leng_wd_disarm(L);
        return;
    }
    if (lua_getinfo(L, "S", ar))
        for (size_t i = 0; i < TIDE_ARRAY_SIZE(e->own_src); i++)
            if (ar->source == e->own_src[i])
                return; /* tide's own code: at the next count */
    if (!leng_in_body(e))
        return;
    int first = atomic_load(&wd->fired) != target;
    atomic_store(&wd->fired, target);
    int why = atomic_load(&wd->why);
    lua_rawgeti(e->L, e->env, ENV_ON_STUCK);
    lua_rawgeti(e->L, -1, 1);
    lua_xmove(e->L, L, 1);
    lua_pop(e->L, 1);
    lua_pushinteger(L, e->eng.cur_slot);
    lua_pushinteger(L, e->eng.cur_task);
    lua_pushnumber(L, atomic_load(&wd->ran_ms) / 1000.0);
    lua_pushnumber(L, atomic_load(&wd->limit_ms) / 1000.0);
    if (why != TIDE__WD_TIMEOUT)
        lua_pushinteger(L, why);
    else
        lua_pushnil(L);
    lua_pushboolean(L, first);
    /* on_stuck(slot, task, ran, limit, signum|nil, first) reports the
     * stop (first time only) and returns the error to raise. */
    lua_call(L, 6, 1);
    lua_sethook(L, leng_wd_hook, LUA_MASKCOUNT, 1);
    lua_error(L);
}

/* set_watchdog(caller, on_stuck, ...): the runner calls task bodies
 * through `caller` (xpcall), from the executor's code; on_stuck is called
 * by the hook, see leng_wd_hook. The hook leaves alone the code of
 * on_stuck's chunk (the executor) and of the chunks of the functions
 * after it (at most three). */
static int l_set_watchdog(lua_State *L) {
    leng *e = LENG_UP(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    int n = lua_gettop(L) - 1;
    if (n < 1 || n > (int)TIDE_ARRAY_SIZE(e->own_src))
        return luaL_error(L, "set_watchdog: one to four functions after the caller");
    for (int i = 0; i < n; i++)
        luaL_checktype(L, 2 + i, LUA_TFUNCTION);
    lua_getfenv(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, ENV_CALLER);
    /* Anchoring the functions anchors their chunk names. */
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushvalue(L, 2 + i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_rawseti(L, -2, ENV_ON_STUCK);
    for (int i = 0; i < (int)TIDE_ARRAY_SIZE(e->own_src); i++) {
        e->own_src[i] = NULL;
        if (i < n) {
            lua_Debug ar;
            lua_pushvalue(L, 2 + i);
            lua_getinfo(L, ">S", &ar);
            e->own_src[i] = ar.source;
        }
    }
    return 0;
}

/* ===== THE RUNNER'S FUNCTIONS (upvalue 1: the engine) ===== */

/* nxt(slot, task [, idle]): completes (slot, task) when slot > 0, then
 * returns the next operation: op, slot, task, attempt|parent,
 * map_index|code. Yields (idle) when there is nothing to do, or at once
 * when `idle` is true (the fast path found nothing, see leng_step). */
static int l_nxt(lua_State *L) {
    leng *e = LENG_UP(L);
    tide__eng *eng = &e->eng;
    if (e->quitting) /* a runner that ignored OP_QUIT: end it */
        return luaL_error(L, "the engine is closing");
    uint32_t slot = (uint32_t)lua_tointeger(L, 1);
    if (slot)
        tide__eng_complete(eng, slot, (uint32_t)lua_tointeger(L, 2));
    tide__op op;
    if (lua_toboolean(L, 3))
        op.op = TIDE__OP_NONE;
    else
        tide__eng_next(eng, &op);
    switch (op.op) {
    case TIDE__OP_RUN:
        lua_pushinteger(L, TIDE__OP_RUN);
        lua_pushinteger(L, op.slot);
        lua_pushinteger(L, op.task);
        lua_pushinteger(L, op.attempt);
        return 4;
    case TIDE__OP_FINISH:
        lua_pushinteger(L, TIDE__OP_FINISH);
        lua_pushinteger(L, op.slot);
        return 2;
    case TIDE__OP_CHILD:
        lua_pushinteger(L, TIDE__OP_CHILD);
        lua_pushinteger(L, op.slot);
        lua_pushinteger(L, op.task);
        lua_pushinteger(L, op.parent);
        lua_pushinteger(L, op.map_index);
        return 5;
    case TIDE__OP_BATCH:
        lua_pushinteger(L, TIDE__OP_BATCH);
        lua_pushinteger(L, 0);
        lua_pushinteger(L, op.task);
        return 3;
    case TIDE__OP_SLOW:
        lua_pushinteger(L, TIDE__OP_SLOW);
        lua_pushinteger(L, op.slot);
        lua_pushinteger(L, op.task);
        return 3;
    case TIDE__OP_FAIL:
        lua_pushinteger(L, TIDE__OP_FAIL);
        lua_pushinteger(L, op.slot);
        lua_pushinteger(L, op.task);
        lua_pushinteger(L, op.attempt);
        lua_pushstring(L, tide_err_name(op.code));
        return 5;
    default:
        if (L != e->running)
            return 0; /* called outside the drain: nothing to do */
        e->yield_kind = Y_IDLE;
        return lua_yield(L, 0);
    }
}

/* The runner's fast path: nxt without the Lua C API, for the FFI.
 *
 * A classic C function called from a compiled Lua loop ends the trace
 * there (LuaJIT stitches a new trace after the call), and its arguments
 * and results cross through the Lua stack: about a third of a trivial
 * task's instructions in W1. Called through an FFI function pointer, the
 * runner's loop compiles as one trace with a plain C call in it.
 *
 * leng_step(e, slot, task, out) completes (slot, task) when slot > 0 and
 * takes the next operation like nxt, writing its operands to out[0..3]
 * (slot, task, attempt | parent, map_index). It never touches a Lua state
 * (no callback into Lua may happen during an FFI call), so what needs one
 * goes back to nxt: it returns 0 when the runner must yield (nothing to
 * do, or the slice is over: nxt(0, 0, true) yields without looking for
 * work), and -1 when nxt must take the operation (an engine closing, or a
 * failure to report, whose code nxt turns into a name). */
static int32_t leng_step(void *ud, uint32_t slot, uint32_t task,
                         int32_t *out) {
    leng *e = ud;
    tide__eng *eng = &e->eng;
    if (tide__unlikely(e->quitting || e->closed))
        return -1;
    if (slot)
        tide__eng_complete(eng, slot, task);
    if (tide__unlikely(eng->failq.len))
        return -1;
    tide__op op;
    tide__eng_next(eng, &op);
    switch (op.op) {
    case TIDE__OP_RUN:
        out[0] = (int32_t)op.slot;
        out[1] = (int32_t)op.task;
        out[2] = (int32_t)op.attempt;
        return TIDE__OP_RUN;
    case TIDE__OP_FINISH:
        out[0] = (int32_t)op.slot;
        return TIDE__OP_FINISH;
    case TIDE__OP_CHILD:
        out[0] = (int32_t)op.slot;
        out[1] = (int32_t)op.task;
        out[2] = (int32_t)op.parent;
        out[3] = (int32_t)op.map_index;
        return TIDE__OP_CHILD;
    case TIDE__OP_BATCH:
        out[0] = 0;
        out[1] = (int32_t)op.task;
        return TIDE__OP_BATCH;
    case TIDE__OP_SLOW:
        out[0] = (int32_t)op.slot;
        out[1] = (int32_t)op.task;
        return TIDE__OP_SLOW;
    default:
        return 0;
    }
}

/* The same for what the runner and the executor call once per context:
 * submit, spawn and release. Each checks what its classic version checks
 * and returns 0 (-1 for release) instead of raising; the caller then calls
 * the classic version, which raises the error. */
static int leng_fast_slot(leng *e, uint32_t s) {
    return s > 0 && s < e->eng.nslots && e->eng.ctx[s] != NULL &&
           e->eng.ctx[s]->status != 255;
}

static uint32_t leng_fsubmit(void *ud, uint32_t g, int32_t prio) {
    leng *e = ud;
    if (e->closed || leng_forked(e) || g >= e->eng.ngraphs || prio < 0 ||
        prio >= TIDE__NPRIO)
        return 0;
    uint32_t slot = tide__eng_submit(&e->eng, g, (int)prio);
    leng_wake_host(e);
    return slot;
}

static uint32_t leng_fspawn(void *ud, uint32_t parent, uint32_t t,
                            uint32_t index) {
    leng *e = ud;
    if (!leng_fast_slot(e, parent) || t == 0 || t > e->eng.ntasks)
        return 0;
    return tide__eng_spawn(&e->eng, parent, t, index);
}

static int32_t leng_frelease(void *ud, uint32_t slot) {
    leng *e = ud;
    if (!leng_fast_slot(e, slot) || e->eng.ctx[slot]->status < TIDE__CTX_DONE)
        return -1;
    tide__eng_release(&e->eng, slot);
    return 0;
}

/* ISO C has no cast from a function pointer to void *; POSIX (dlsym)
 * guarantees they have the same representation. */
#define LENG_PUSH_FN(L, fn)                                                \
    do {                                                                   \
        void *p_;                                                          \
        memcpy(&p_, &(fn), sizeof(p_));                                    \
        lua_pushlightuserdata((L), p_);                                    \
    } while (0)

/* fast() -> engine, step, submit, spawn, release: the engine's address and
 * those functions', as light userdata for ffi.cast. Whoever casts them
 * holds the engine's functions, so the engine outlives every call. */
static int l_fast(lua_State *L) {
    leng *e = LENG_UP(L);
    int32_t (*step)(void *, uint32_t, uint32_t, int32_t *) = leng_step;
    uint32_t (*submit)(void *, uint32_t, int32_t) = leng_fsubmit;
    uint32_t (*spawn)(void *, uint32_t, uint32_t, uint32_t) = leng_fspawn;
    int32_t (*release)(void *, uint32_t) = leng_frelease;
    lua_pushlightuserdata(L, e);
    LENG_PUSH_FN(L, step);
    LENG_PUSH_FN(L, submit);
    LENG_PUSH_FN(L, spawn);
    LENG_PUSH_FN(L, release);
    return 5;
}

static uint32_t leng_slot(lua_State *L, leng *e, int idx) {
    lua_Integer s = luaL_checkinteger(L, idx);
    if (s <= 0 || (uint64_t)s >= e->eng.nslots || e->eng.ctx[s] == NULL ||
        e->eng.ctx[s]->status == 255)
        luaL_argerror(L, idx, "not a live context slot");
    return (uint32_t)s;
}

static uint32_t leng_gtask(lua_State *L, leng *e, int idx) {
    lua_Integer t = luaL_checkinteger(L, idx);
    if (t <= 0 || (uint64_t)t > e->eng.ntasks)
        luaL_argerror(L, idx, "not a task index");
    return (uint32_t)t;
}

/* spawn(parent, map_task, map_index) -> child slot */
static int l_spawn(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t parent = leng_slot(L, e, 1), t = leng_gtask(L, e, 2);
    lua_Integer idx = luaL_checkinteger(L, 3);
    lua_pushinteger(L, tide__eng_spawn(&e->eng, parent, t, (uint32_t)idx));
    return 1;
}

/* retry(slot, task, delay_seconds) */
static int l_retry(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t slot = leng_slot(L, e, 1), t = leng_gtask(L, e, 2);
    double d = luaL_checknumber(L, 3);
    tide__eng_retry(&e->eng, slot, t, d * 1000.0);
    return 0;
}

static int leng_status_arg(lua_State *L, int idx) {
    const char *s = luaL_checkstring(L, idx);
    if (strcmp(s, "failed") == 0)
        return TIDE__CTX_FAILED;
    if (strcmp(s, "cancelled") == 0)
        return TIDE__CTX_CANCELLED;
    return luaL_argerror(L, idx, "expected 'failed' or 'cancelled'");
}

/* finalize(slot, "failed"|"cancelled" [, task]): ends a context, and the
 * attempt (slot, task) the runner is handling when task is given. */
static int l_finalize(lua_State *L) {
    leng *e = LENG_UP(L);
    leng_check_fork(L, e);
    uint32_t slot = leng_slot(L, e, 1);
    int status = leng_status_arg(L, 2);
    uint32_t t = lua_isnoneornil(L, 3) ? 0 : leng_gtask(L, e, 3);
    leng_saved prev = leng_enter(L, e);
    if (t)
        tide__eng_fail(&e->eng, slot, t, status);
    else
        tide__eng_finalize(&e->eng, slot, status);
    leng_leave(e, prev);
    leng_wake_host(e);
    return 0;
}

static int l_release(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t slot = leng_slot(L, e, 1);
    if (e->eng.ctx[slot]->status < TIDE__CTX_DONE)
        return luaL_argerror(L, 1, "context is not finished");
    tide__eng_release(&e->eng, slot);
    return 0;
}

/* submit(graph_id, prio) -> slot */
static int l_submit(lua_State *L) {
    leng *e = LENG_UP(L);
    leng_check_open(L, e);
    lua_Integer g = luaL_checkinteger(L, 1);
    lua_Integer prio = luaL_checkinteger(L, 2);
    if (g < 0 || (uint64_t)g >= e->eng.ngraphs)
        return luaL_argerror(L, 1, "not an attached graph");
    if (prio < 0 || prio >= TIDE__NPRIO)
        return luaL_argerror(L, 2, "bad priority class");
    lua_pushinteger(L, tide__eng_submit(&e->eng, (uint32_t)g, (int)prio));
    leng_wake_host(e);
    return 1;
}

static int l_status(lua_State *L) {
    leng *e = LENG_UP(L);
    leng_check_fork(L, e);
    uint32_t slot = leng_slot(L, e, 1);
    lua_pushstring(L, tide__ctx_status_name(tide__eng_status(&e->eng, slot)));
    return 1;
}

/* attach(graph, timeouts, limiters) -> graph id, global index of task 0
 * timeouts[i] in seconds and limiters[i] (ids from limiter()) per task. */
static int l_attach(lua_State *L) {
    leng *e = LENG_UP(L);
    tide__graph *g = tide__lua_checkgraph(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    /* Scratch as userdata: collected if a check below raises. */
    double *tmo = lua_newuserdata(L, (g->n + 1) * sizeof(double));
    uint32_t *lims = lua_newuserdata(L, (g->n + 1) * sizeof(uint32_t));
    for (uint32_t i = 1; i <= g->n; i++) {
        lua_rawgeti(L, 2, (int)i);
        tmo[i] = lua_isnumber(L, -1) ? lua_tonumber(L, -1) * 1000.0 : 0;
        lua_rawgeti(L, 3, (int)i);
        lua_Integer li = lua_isnumber(L, -1) ? lua_tointeger(L, -1) : 0;
        if (li < 0 || (uint64_t)li > e->eng.nlims)
            return luaL_argerror(L, 3, "not a limiter id");
        lims[i] = (uint32_t)li;
        lua_pop(L, 2);
    }
    uint32_t id = tide__eng_attach(&e->eng, g, tmo, lims);
    lua_pop(L, 2);
    /* Anchor the graph: the engine borrows it. */
    lua_getfenv(L, lua_upvalueindex(1));
    lua_rawgeti(L, -1, ENV_GRAPHS);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, (int)id + 1);
    lua_pushinteger(L, id);
    lua_pushinteger(L, e->eng.gbase[id]);
    return 2;
}

/* limiter(rate, burst, concurrency) -> id; rate 0: none, concurrency 0:
 * no cap. */
static int l_limiter(lua_State *L) {
    leng *e = LENG_UP(L);
    double rate = luaL_checknumber(L, 1);
    double burst = luaL_checknumber(L, 2);
    lua_Integer conc = luaL_checkinteger(L, 3);
    if (conc < 0 || conc > UINT32_MAX)
        return luaL_argerror(L, 3, "bad concurrency");
    lua_pushinteger(L, tide__eng_limiter(&e->eng, rate, burst,
                                         (uint32_t)conc));
    return 1;
}

/* limiter_stats(id) -> running, waiting, started */
static int l_limiter_stats(lua_State *L) {
    leng *e = LENG_UP(L);
    lua_Integer id = luaL_checkinteger(L, 1);
    if (id < 1 || (uint64_t)id > e->eng.nlims)
        return luaL_argerror(L, 1, "not a limiter id");
    tide__limiter *l = e->eng.lims[id - 1];
    lua_pushinteger(L, l->inflight);
    lua_pushinteger(L, l->waitq.len);
    lua_pushnumber(L, (double)l->started);
    return 3;
}

/* route(local, ...): the successors (local task indices) the router that
 * runs now chose; applies to the next completion of its task. */
static int l_route(lua_State *L) {
    leng *e = LENG_UP(L);
    int n = lua_gettop(L);
    if (n > (int)TIDE_ARRAY_SIZE(e->eng.route))
        return luaL_error(L, "route: too many successors");
    for (int i = 0; i < n; i++)
        e->eng.route[i] = (uint32_t)luaL_checkinteger(L, i + 1);
    e->eng.nroute = n;
    return 0;
}

/* batch_timer(task, seconds | -1): arms or disarms a batch's flush. */
static int l_batch_timer(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t t = leng_gtask(L, e, 1);
    double sec = luaL_checknumber(L, 2);
    tide__eng_batch_timer(&e->eng, t, sec < 0 ? -1 : sec * 1000.0);
    return 0;
}

/* done(slot, task): completes an attempt the runner holds (a batch
 * member) without taking the next operation. */
static int l_done(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t slot = leng_slot(L, e, 1), t = leng_gtask(L, e, 2);
    tide__eng_complete(&e->eng, slot, t);
    return 0;
}

/* detach(): what runs next on this runner is not a task body. */
static int l_detach(lua_State *L) {
    tide__eng_detach(&LENG_UP(L)->eng);
    return 0;
}

/* bypassed(slot, local) -> whether that task of the context was bypassed */
static int l_bypassed(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t slot = leng_slot(L, e, 1);
    lua_pushboolean(L, tide__eng_bypassed(&e->eng, slot,
                                          (uint32_t)luaL_checkinteger(L, 2)));
    return 1;
}

static void leng_sweep_one(void *ud, uint32_t slot, uint32_t gtask) {
    lua_State *L = ud;
    int n = (int)lua_objlen(L, -1);
    lua_pushinteger(L, slot);
    lua_rawseti(L, -2, n + 1);
    lua_pushinteger(L, gtask);
    lua_rawseti(L, -2, n + 2);
}

/* sweep(seconds) -> { slot, task, slot, task, ... }: the attempts running
 * or parked for at least that long that no sweep reported before (see
 * tide__eng_sweep). Called by a periodic timer, never on a task's path. */
static int l_sweep(lua_State *L) {
    leng *e = LENG_UP(L);
    double s = luaL_checknumber(L, 1);
    lua_newtable(L);
    tide__eng_sweep(&e->eng, s > 0 ? (uint64_t)(s * 1000.0) : 0,
                    leng_sweep_one, L);
    return 1;
}

/* frontier(slot) -> { local, ... }: its done tasks that feed one that is
 * not (see tide__eng_frontier). */
static int l_frontier(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t slot = leng_slot(L, e, 1);
    uint32_t buf[64], *out = buf;
    uint32_t n = tide__eng_frontier(&e->eng, slot, buf, 64);
    if (n > 64) { /* a userdata, so that an error cannot leak it */
        out = lua_newuserdata(L, (size_t)n * sizeof(*out));
        tide__eng_frontier(&e->eng, slot, out, n);
    }
    lua_createtable(L, (int)n, 0);
    for (uint32_t i = 0; i < n; i++) {
        lua_pushinteger(L, out[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* task_done(slot, local) -> whether that task of the context is done */
static int l_task_done(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t slot = leng_slot(L, e, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    tide__ctx *c = e->eng.ctx[slot];
    const tide__graph *g = e->eng.graphs[c->graph];
    lua_pushboolean(L, i >= 1 && i <= (lua_Integer)g->n &&
                           c->tstate[i] == TIDE__TS_DONE);
    return 1;
}

static int l_set_runner(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_getfenv(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, ENV_RUNNER_FN);
    return 0;
}

/* Checks that L is the coroutine of a running task body. */
static leng *leng_check_body(lua_State *L, const char *fname) {
    leng *e = leng_now();
    if (e == NULL || e->running == NULL)
        luaL_error(L, "%s: not called from a task body", fname);
    if (e->running != L)
        luaL_error(L, "%s: called from a nested coroutine; engine calls "
                      "must run on the task's own coroutine", fname);
    if (e->eng.cur_slot == 0)
        luaL_error(L, "%s: not available here: batch bodies, retry and "
                      "when functions cannot wait", fname);
    return e;
}

/* Parks the running body; resumed with true (woken) or false (timeout). */
static int leng_park(lua_State *L, leng *e, double timeout_ms, int give) {
    tide__att *a = tide__eng_current_att(&e->eng);
    tide__eng_park(&e->eng, a, timeout_ms, give);
    e->yield_kind = Y_BLOCKED;
    return lua_yield(L, 0);
}

/* For other glue (lexec.c): checks that L runs a task body and returns
 * the loop of its engine. Raises otherwise. */
uv_loop_t *tide__lua_body_loop(lua_State *L, const char *fname) {
    return &leng_check_body(L, fname)->loop;
}

/* Parks the running body until tide__lua_wake(handle); op and cancel are
 * kept with the attempt so that dropping the body cancels the operation,
 * and `started` (or NULL) tells when op began to run, for its time limit.
 * Returns the attempt's handle through *handle before yielding. Use as
 * `return tide__lua_park_op(...)`. */
int tide__lua_park_op(lua_State *L, const char *fname, void *op,
                      void (*cancel)(void *), uint64_t (*started)(void *),
                      double *handle) {
    leng *e = leng_check_body(L, fname);
    tide__att *a = tide__eng_current_att(&e->eng);
    a->op = op;
    a->op_cancel = cancel;
    a->op_started = started;
    *handle = tide__eng_att_handle(a);
    return leng_park(L, e, -1, 0);
}

/* Wakes the attempt parked with that handle on the engine draining or
 * running now; returns 0 when it was gone (dropped or recycled). */
int tide__lua_wake(uv_loop_t *loop, double handle) {
    leng *e = tide__container_of(loop, leng, loop);
    tide__att *a = tide__eng_att_get(&e->eng, handle);
    if (a == NULL || a->state != TIDE__ATT_PARKED)
        return 0;
    a->op = NULL;
    a->op_cancel = NULL;
    a->op_started = NULL;
    tide__eng_wake(&e->eng, a, 1);
    return 1;
}

/* For lexec.c: the head of the loop's list of subprocess records. */
struct lexec **tide__lua_exec_list(uv_loop_t *loop) {
    return &tide__container_of(loop, leng, loop)->execs;
}

/* For lredis.c: the head of the loop's list of Redis clients. */
struct lredis **tide__lua_redis_list(uv_loop_t *loop) {
    return &tide__container_of(loop, leng, loop)->redis;
}

/* tide.sleep(seconds) */
static int l_sleep(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    if (!(s >= 0) || s > 1e9)
        return luaL_argerror(L, 1, "expected seconds >= 0");
    leng *e = leng_check_body(L, "tide.sleep");
    return leng_park(L, e, s * 1000.0, 0);
}

/* park([timeout_seconds]) -> true when woken, false on timeout. The body
 * gives its concurrency slot back while it waits. */
static int l_park(lua_State *L) {
    double t = luaL_optnumber(L, 1, -1);
    leng *e = leng_check_body(L, "park");
    if (e != LENG_UP(L))
        return luaL_error(L, "park: the task runs on another executor");
    return leng_park(L, e, t < 0 ? -1 : t * 1000.0, 1);
}

/* handle() -> the running attempt's handle and its context's slot, or
 * nothing outside a task body of this engine. */
static int l_handle(lua_State *L) {
    leng *e = LENG_UP(L);
    if (leng_now() != e || e->running != L || e->eng.cur_slot == 0)
        return 0;
    lua_pushnumber(L, tide__eng_att_handle(tide__eng_current_att(&e->eng)));
    lua_pushinteger(L, e->eng.cur_slot);
    return 2;
}

/* current() -> slot, global task, attempt of the body running now on this
 * engine (from any coroutine it runs, unlike handle()), or nothing: print
 * and ctx.log use it to know whose line they keep. */
static int l_current(lua_State *L) {
    leng *e = LENG_UP(L);
    uint32_t slot, task, attempt;
    if (leng_now() != e || e->running == NULL ||
        !tide__eng_current(&e->eng, &slot, &task, &attempt))
        return 0;
    lua_pushinteger(L, slot);
    lua_pushinteger(L, task);
    lua_pushinteger(L, attempt);
    return 3;
}

/* wallclock() -> seconds since the Unix epoch, to the microsecond: the
 * time of a kept log line. */
static int l_wallclock(lua_State *L) {
    uv_timeval64_t tv;
    if (uv_gettimeofday(&tv) != 0)
        return luaL_error(L, "wallclock: gettimeofday failed");
    lua_pushnumber(L, (double)tv.tv_sec + (double)tv.tv_usec / 1e6);
    return 1;
}

static int l_wake(lua_State *L) {
    leng *e = LENG_UP(L);
    tide__att *a = tide__eng_att_get(&e->eng, luaL_checknumber(L, 1));
    if (a == NULL || a->state != TIDE__ATT_PARKED) {
        lua_pushboolean(L, 0);
        return 1;
    }
    tide__eng_wake(&e->eng, a, 1);
    lua_pushboolean(L, 1);
    return 1;
}

static void leng_check_runnable(lua_State *L, leng *e, const char *fname) {
    leng_check_open(L, e);
    if (e->in_run || e->eng.draining)
        luaL_error(L, "%s: the executor is already running (called from "
                      "inside a task?)", fname);
}

/* run() -> number of contexts still unfinished (0 unless a bug). Runs the
 * loop until nothing is left; contexts that wait for each other with no
 * timer are failed with EDEADLK. */
static int l_run(lua_State *L) {
    leng *e = LENG_UP(L);
    leng_check_runnable(L, e, "run");
    leng_saved prev = leng_enter(L, e);
    e->in_run = 1;
    for (;;) {
        if (tide__eng_has_work(&e->eng))
            leng_kick(&e->eng);
        uv_run(&e->loop, UV_RUN_DEFAULT);
        if (e->eng.nlive == 0 && !tide__eng_has_work(&e->eng))
            break;
        if (!tide__eng_has_work(&e->eng) &&
            tide__eng_break_deadlocks(&e->eng) == 0)
            break;
    }
    e->in_run = 0;
    leng_leave(e, prev);
    lua_pushinteger(L, e->eng.nlive);
    return 1;
}

/* turn(timeout_seconds) -> true while anything is left to run: one loop
 * iteration, waiting at most timeout for something to happen. */
static int l_turn(lua_State *L) {
    leng *e = LENG_UP(L);
    double t = luaL_checknumber(L, 1);
    leng_check_runnable(L, e, "turn");
    leng_saved prev = leng_enter(L, e);
    e->in_run = 1;
    if (tide__eng_has_work(&e->eng))
        leng_kick(&e->eng);
    tide__eng_noop_timer(&e->eng, &e->waitt, t > 0 ? t * 1000.0 : 0);
    int alive = uv_run(&e->loop, UV_RUN_ONCE);
    tide__eng_noop_timer(&e->eng, &e->waitt, -1);
    tide__eng_arm(&e->eng);
    if (!alive || !uv_loop_alive(&e->loop)) {
        if (!tide__eng_has_work(&e->eng) && e->eng.nlive > 0)
            tide__eng_break_deadlocks(&e->eng);
        if (tide__eng_has_work(&e->eng)) {
            leng_kick(&e->eng);
            uv_run(&e->loop, UV_RUN_NOWAIT);
        }
    }
    e->in_run = 0;
    leng_leave(e, prev);
    lua_pushboolean(L, e->eng.nlive > 0 || tide__eng_has_work(&e->eng));
    return 1;
}

/* step() -> contexts not finished: runs what is ready without blocking
 * (one loop iteration that does not wait for I/O or timers). */
static int l_step(lua_State *L) {
    leng *e = LENG_UP(L);
    leng_check_runnable(L, e, "step");
    leng_saved prev = leng_enter(L, e);
    e->in_run = 1;
    if (tide__eng_has_work(&e->eng))
        leng_kick(&e->eng);
    int alive = uv_run(&e->loop, UV_RUN_NOWAIT);
    if (!alive && !tide__eng_has_work(&e->eng) && e->eng.nlive > 0 &&
        tide__eng_break_deadlocks(&e->eng) > 0)
        uv_run(&e->loop, UV_RUN_NOWAIT);
    e->in_run = 0;
    leng_leave(e, prev);
    lua_pushinteger(L, e->eng.nlive);
    return 1;
}

/* drain_now() -> ran: runs the ready work now, as the idle handle would at
 * the start of the next loop turn, when called from a callback of the
 * loop that ex:run/ex:step/ex:turn is running and not from inside the
 * engine's own drain (a task): a server answering from a read callback
 * (tide serve's `?wait`) has the job run and its answer written in the
 * same callback instead of a loop turn later. Anywhere else it does
 * nothing and returns false: the idle handle runs the work as usual. */
static int l_drain_now(lua_State *L) {
    leng *e = LENG_UP(L);
    int ok = e->in_run && !e->eng.draining && !e->closed && e->L != NULL &&
             e->env != 0 && tide__eng_has_work(&e->eng);
    if (ok)
        leng_drain(e);
    lua_pushboolean(L, ok);
    return 1;
}

/* backend() -> the loop's pollable fd and how long it may sleep (ms, -1:
 * until an fd is ready), for hosts that wait in their own poll. */
static int l_backend(lua_State *L) {
    leng *e = LENG_UP(L);
    leng_check_open(L, e);
    lua_pushinteger(L, uv_backend_fd(&e->loop));
    /* A loop with nothing active says 0 ("run me"), but running it does
     * nothing: report that only I/O could wake it. */
    if (tide__eng_has_work(&e->eng))
        lua_pushinteger(L, 0);
    else if (!uv_loop_alive(&e->loop))
        lua_pushinteger(L, -1);
    else
        lua_pushinteger(L, uv_backend_timeout(&e->loop));
    return 2;
}

static int l_stats(lua_State *L) {
    leng *e = LENG_UP(L);
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, e->eng.nlive);
    lua_setfield(L, -2, "live");
    lua_pushinteger(L, e->eng.nactive);
    lua_setfield(L, -2, "active");
    lua_pushinteger(L, (lua_Integer)e->eng.rq.len);
    lua_setfield(L, -2, "queued");
    lua_pushinteger(L, e->eng.heap.len);
    lua_setfield(L, -2, "timers");
    lua_pushinteger(L, e->eng.nslots - 1 - e->eng.nfree);
    lua_setfield(L, -2, "slots");
    uint32_t natt = 0;
    for (uint32_t i = 1; i < e->eng.natts; i++)
        natt += e->eng.atts[i]->state != 0;
    lua_pushinteger(L, natt);
    lua_setfield(L, -2, "attempts");
    lua_pushinteger(L, e->nidle);
    lua_setfield(L, -2, "idle_runners");
    lua_pushinteger(L, e->internal_errors);
    lua_setfield(L, -2, "internal_errors");
    lua_getfenv(L, lua_upvalueindex(1));
    lua_rawgeti(L, -1, ENV_RUNNERS);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        n++;
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "runners");
    return 1;
}

/* task_stats(task) -> { attempts, done, failures, retries, running,
 * retrying, sum, hist = { n1, ..., n14 } } for one global task. */
static int l_task_stats(lua_State *L) {
    leng *e = LENG_UP(L);
    const tide__tstat *ts = &e->eng.tstat[leng_gtask(L, e, 1)];
    lua_createtable(L, 0, 8);
#define TS_FIELD(name)                                                    \
    lua_pushnumber(L, (lua_Number)ts->name);                              \
    lua_setfield(L, -2, #name)
    TS_FIELD(attempts);
    TS_FIELD(done);
    TS_FIELD(failures);
    TS_FIELD(retries);
    TS_FIELD(running);
    TS_FIELD(retrying);
    TS_FIELD(sum);
#undef TS_FIELD
    lua_createtable(L, TIDE__NHIST, 0);
    for (int k = 0; k < TIDE__NHIST; k++) {
        lua_pushnumber(L, (lua_Number)ts->hist[k]);
        lua_rawseti(L, -2, k + 1);
    }
    lua_setfield(L, -2, "hist");
    return 1;
}

/* hist_bounds() -> { upper bound of each histogram bucket but the last } */
static int l_hist_bounds(lua_State *L) {
    lua_createtable(L, TIDE__NHIST - 1, 0);
    for (int k = 0; k < TIDE__NHIST - 1; k++) {
        lua_pushnumber(L, tide__hist_bounds[k]);
        lua_rawseti(L, -2, k + 1);
    }
    return 1;
}

/* timing(on): whether attempt durations are measured (two clock reads
 * per attempt; off by default). */
static int l_timing(lua_State *L) {
    LENG_UP(L)->eng.timing = lua_toboolean(L, 1);
    return 0;
}

/* The uv loop, for other glue (the input reader, signals). */
uv_loop_t *tide__lua_engine_loop(lua_State *L, int idx) {
    leng *e = luaL_checkudata(L, idx, "tide.engine");
    return &e->loop;
}

static void leng_close_cb(uv_handle_t *h) {
    leng *e = h->data;
    e->nclosing--;
}

static void leng_walk_close(uv_handle_t *h, void *arg) {
    leng *e = arg;
    if (uv_is_closing(h))
        return;
    if (h == (uv_handle_t *)&e->eng.timer || h == (uv_handle_t *)&e->eng.idle ||
        h == (uv_handle_t *)&e->wakeup) {
        h->data = e;
        e->nclosing++;
        uv_close(h, leng_close_cb);
    } else {
        /* A glue handle (signal, timer, reader, pool): its record says
         * how. */
        tide__lua_base *b = h->data;
        if (b->before_close)
            b->before_close(b);
        if (!uv_is_closing(h))
            uv_close(h, b->close_cb);
    }
}

/* Closes the loop and frees the scheduler. Safe to call twice. */
static void leng_close(leng *e) {
    if (e->closed)
        return;
    e->closed = 1;
    /* The watchdog stops reading the engine (in tide__eng_free), and a
     * hook it armed goes: nothing of this engine will run again. */
    if (e->hook_L && lua_gethook(e->hook_L) == leng_wd_hook)
        leng_wd_disarm(e->hook_L);
    /* Subprocess groups first: once their handles are closed nothing
     * would stop or reap them. */
    tide__lua_exec_end_all(e->execs);
    /* Redis clients next: hiredis's poll handle is not a glue record, so
     * the walk below must find it closing already. */
    tide__lua_redis_end_all(e->redis);
    e->redis = NULL;
    uv_walk(&e->loop, leng_walk_close, e);
    int tries = 0;
    while ((e->nclosing > 0 || uv_loop_close(&e->loop) == UV_EBUSY) &&
           tries++ < 1000)
        uv_run(&e->loop, UV_RUN_NOWAIT);
    if (tries >= 1000)
        fprintf(stderr, "tide: engine loop did not close cleanly\n");
    tide__eng_free(&e->eng);
    free(e->idle);
    e->idle = NULL;
}

static int l_close(lua_State *L) {
    leng *e = LENG_UP(L);
    leng_check_fork(L, e);
    if (e->in_run || e->eng.draining)
        return luaL_error(L, "close: the executor is running");
    if (!e->closed)
        leng_retire_runners(L, e);
    leng_close(e);
    return 0;
}

/* closed() -> whether the engine was closed (by close() or by __gc: an
 * executor dropped without close() is found by its runner's references,
 * so its table can outlive its engine for a GC cycle). */
static int l_closed(lua_State *L) {
    lua_pushboolean(L, LENG_UP(L)->closed);
    return 1;
}

/* forked() -> whether the engine was made before a fork of this process
 * (then it cannot be used here). */
static int l_forked(lua_State *L) {
    lua_pushboolean(L, leng_forked(LENG_UP(L)));
    return 1;
}

/* bare_yield(strict): whether a bare coroutine.yield() from a body fails
 * the attempt as a foreign yield (true) or is a cooperative yield. */
static int l_bare_yield(lua_State *L) {
    LENG_UP(L)->strict_yield = lua_toboolean(L, 1);
    return 0;
}

/* fail_message(slot, task) -> the message of an attempt the engine failed
 * with a reason of its own (a foreign yield), or nil; it is taken. */
static int l_fail_message(lua_State *L) {
    leng *e = LENG_UP(L);
    lua_getfenv(L, lua_upvalueindex(1));
    lua_rawgeti(L, -1, ENV_FAIL_MSG);
    lua_pushfstring(L, "%d:%d", (int)luaL_checkinteger(L, 1),
                    (int)luaL_checkinteger(L, 2));
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    lua_insert(L, -2);
    lua_pushnil(L);
    lua_rawset(L, -4);
    TIDE_UNUSED(e);
    return 1;
}

static int l_engine_gc(lua_State *L) {
    leng *e = luaL_checkudata(L, 1, "tide.engine");
    /* An engine made before a fork (a forked child closing its Lua state,
     * like an nginx worker at exit): its loop shares descriptors with the
     * parent and its threads are not here; closing it would wait for them
     * forever. Its memory is left to the process's end. */
    if (leng_forked(e))
        return 0;
    leng_close(e);
    return 0;
}

static const luaL_Reg engine_funcs[] = {
    {"nxt", l_nxt},         {"fast", l_fast},
    {"spawn", l_spawn},
    {"retry", l_retry},     {"finalize", l_finalize},
    {"release", l_release}, {"submit", l_submit},
    {"status", l_status},   {"attach", l_attach},
    {"set_runner", l_set_runner},
    {"limiter", l_limiter}, {"limiter_stats", l_limiter_stats},
    {"route", l_route},     {"bypassed", l_bypassed},
    {"sweep", l_sweep},     {"frontier", l_frontier},
    {"task_done", l_task_done},
    {"batch_timer", l_batch_timer}, {"done", l_done},
    {"detach", l_detach},
    {"park", l_park},       {"handle", l_handle},
    {"wake", l_wake},       {"run", l_run},
    {"turn", l_turn},       {"stats", l_stats},
    {"step", l_step},       {"backend", l_backend},
    {"drain_now", l_drain_now},
    {"task_stats", l_task_stats}, {"hist_bounds", l_hist_bounds},
    {"timing", l_timing},   {"closed", l_closed},
    {"close", l_close},     {"set_watchdog", l_set_watchdog},
    {"forked", l_forked},   {"bare_yield", l_bare_yield},
    {"fail_message", l_fail_message},
    {"current", l_current}, {"wallclock", l_wallclock},
    {NULL, NULL}};

/* engine(concurrency) -> userdata, table of functions bound to it */
static int l_engine(lua_State *L) {
    lua_Integer conc = luaL_optinteger(L, 1, 10000);
    if (conc < 1 || conc > 100000000)
        return luaL_argerror(L, 1, "concurrency must be 1..1e8");
    leng *e = lua_newuserdata(L, sizeof(*e));
    memset(e, 0, sizeof(*e));
    tide__fork_watch();
    uv_once(&leng_exdata_once, leng_find_exdata);
    e->fork_gen = tide__fork_gen();
    e->pid = (long)getpid();
    int rc = uv_loop_init(&e->loop);
    if (rc == 0)
        rc = tide__eng_init(&e->eng, &e->loop, (uint32_t)conc);
    if (rc == 0)
        rc = uv_async_init(&e->loop, &e->wakeup, leng_on_wakeup);
    if (rc != 0)
        return luaL_error(L, "tide: cannot start the event loop: %s",
                          uv_strerror(rc));
    /* libuv adds a handle's fd to the loop's epoll set at the loop's next
     * turn, not at init: one turn now (the handle keeps the loop alive for
     * it), so that a wake-up reaches a host waiting on the loop's fd even
     * before the loop has ever run. Then the handle stops counting. */
    uv_run(&e->loop, UV_RUN_NOWAIT);
    uv_unref((uv_handle_t *)&e->wakeup);
    e->eng.drop_co = leng_drop_co;
    e->eng.kick = leng_kick;
    e->waitt.pos = UINT32_MAX;
    luaL_getmetatable(L, "tide.engine");
    lua_setmetatable(L, -2);
    lua_createtable(L, 7, 0);
    lua_newtable(L);
    lua_rawseti(L, -2, ENV_FAIL_MSG);
    lua_newtable(L);
    lua_rawseti(L, -2, ENV_RUNNERS);
    lua_newtable(L);
    lua_rawseti(L, -2, ENV_GRAPHS);
    e->hook_L = lua_newthread(L);
    lua_rawseti(L, -2, ENV_HOOK_L);
    lua_setfenv(L, -2);
    rc = tide__wd_register(&e->eng.wd, leng_wd_arm);
    if (rc != 0)
        return luaL_error(L, "tide: cannot start the watchdog thread: %s",
                          uv_strerror(rc));
    lua_createtable(L, 0, (int)TIDE_ARRAY_SIZE(engine_funcs));
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, engine_funcs, 1); /* the userdata as upvalue 1 */
    return 2;
}

void tide__lua_open_engine(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"engine", l_engine}, {"sleep", l_sleep}, {NULL, NULL}};
    tide__lua_newclass(L, "tide.engine", NULL, l_engine_gc);
    luaL_setfuncs(L, funcs, 0);
}
