/* Sync tasks on tide's worker threads: each worker owns a LuaJIT state
 * that loads the task's function (from the pipeline's file, or from
 * bytecode when the pipeline has none) and runs it on a copy of the input
 * carried in the binary encoding of lmarshal.c.
 *
 * DESIGN
 * ------
 * Loop side, a task body calls pool_submit (input encoded, a job queued),
 * pool_wait (the attempt parks; op_cancel marks the job cancelled) and
 * pool_result (the output decoded). The pool's uv_async callback drains
 * finished jobs and wakes their attempts. A job has two references, the
 * pool's (dropped when the loop takes it back, or by the worker thread of
 * an orphan: a job still running when its pool stopped is never taken
 * back) and the Lua box's (dropped by its __gc), and a third while it is
 * on the stuck list; the last one frees it. Worker side, nothing but the
 * job's payload is touched. */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lglue.h"

_Thread_local int tide__lua_in_worker;

/* Weak here only: absent from core.so (see lglue.h). */
#pragma weak tide__lua_preload_bundle

#define LPOOL_GRACE_MS 1000 /* before a stuck worker gets a stand-in */
#define LPOOL_MAX_STUCK 64

typedef struct lpool lpool;

/* A sync job: the pool's record, embedded (the pool hands it back to
 * lpool_run and from its done queue; tide__container_of finds the rest),
 * the payload a worker reads and writes, and the loop side's bookkeeping.
 * Allocated by pool:submit, freed by lpool_job_unref. */
typedef struct {
    tide__job job;
    /* The payload: set on the loop before the job is queued, read by the
     * worker; status, out and trace are written by the worker and read on
     * the loop once the job is back. */
    void *in;          /* input bytes (owned) */
    size_t inlen;
    char *key, *task;  /* which function to run (owned) */
    char *code;        /* its bytecode when it has no file, or a native
                        * function's pointer (owned) */
    size_t codelen;
    double timeout_ms; /* per attempt; 0: none (the worker's count hook) */
    int status;        /* 0, or a TIDE_E* code or UV_ENOMEM (lpool_fail) */
    char *out;         /* result bytes or error text (owned, malloc'd) */
    size_t outlen;
    char *trace;       /* traceback of a failure (owned) */
    char *logs;        /* what the body printed, encoded (owned; NULL:
                        * nothing) */
    size_t logslen;
    /* The pool's, the Lua box's and the stuck list's. Atomic: the pool's
     * is dropped by the loop when it takes the job back, or by the worker
     * thread of an orphan (its pool stopped while it ran). */
    _Atomic int refs;
    /* Loop side only. */
    int cancelled;     /* nobody waits for the result */
    int done;          /* taken back from the done queue */
    int stood_in;      /* a stand-in thread replaced its worker */
    int uncounted;     /* no longer keeps the loop alive */
    uint64_t cancelled_at; /* uv_now when its attempt gave up */
    double att;        /* attempt to wake */
    lpool *owner;
} lpool_job;

static lpool_job *lpool_job_of(tide__job *j) {
    return tide__container_of(j, lpool_job, job);
}

struct lpool {
    tide__lua_base base;
    tide__pool pool;
    uv_async_t async;
    uv_timer_t stuck_timer; /* checks the jobs whose attempt gave up */
    lpool_job *stuck[LPOOL_MAX_STUCK];
    int nstuck;
    int nhandles;
    uv_loop_t *loop;
    char *path, *cpath;
    int nthreads;
    size_t mem_limit; /* of each worker's Lua state */
    int started, stopped, async_open;
    int boxed;
    int outstanding; /* jobs submitted and not taken back */
    unsigned fork_gen; /* tide__fork_gen() when made */
};

/* Drops one reference; the last one frees the job (any thread: an orphan's
 * worker drops the pool's). */
static void lpool_job_unref(lpool_job *j) {
    if (atomic_fetch_sub(&j->refs, 1) > 1)
        return;
    free(j->in);
    free(j->key);
    free(j->task);
    free(j->code);
    free(j->out);
    free(j->trace);
    free(j->logs);
    free(j);
}

/* pool->job_release: the worker thread of an orphan drops the pool's
 * reference to the job it finished (nobody takes it back). */
static void lpool_job_release(tide__job *job) {
    lpool_job_unref(lpool_job_of(job));
}

/* ===== WORKER THREADS ===== */

static const char *LPOOL_LOADER =
    "local path, name = ...\n"
    "local pl = require('tide.pipeline')\n"
    "local p, err = pl.load_cached(path)\n"
    "if not p then error(err, 0) end\n"
    "pl.ensure_setup(p)\n"
    "local i = p.byname[name]\n"
    "if not i then error(path .. ': no task ' .. name, 0) end\n"
    "return p.tasks[i].fn\n";

/* print in a worker state: stdout carries tide run's JSONL results, so a
 * sync task's print goes to stderr, as the loop state's does. The lines
 * are also kept for the job (the last KEEP of an attempt, each with its
 * time and its first CUT bytes, cut at a UTF-8 character boundary;
 * runner.lua clips them to its LOG_LINE_MAX, 4096, and says how long they
 * were), and
 * come back with its result so that the loop keeps them in the job's log
 * (bridge.lua). The chunk returns take() (the lines since the last call,
 * as { {time, text, length}, ..., dropped = n }, or nil) and reset(). */
static const char *LPOOL_PRINT =
    "local stderr, concat, select = io.stderr, table.concat, select\n"
    "local tostring, sub = tostring, string.sub\n"
    "local ok, core = pcall(require, 'tide.core')\n"
    "local now = ok and core.cache_now or os.time\n"
    "local KEEP, CUT = 1000, 4100\n"
    "local log, n = {}, 0\n"
    "print = function(...)\n"
    "  local t = {}\n"
    "  for i = 1, select('#', ...) do t[i] = tostring((select(i, ...))) end\n"
    "  local text = concat(t, '\\t')\n"
    "  stderr:write(text, '\\n')\n"
    "  n = n + 1\n"
    "  local cut = text\n"
    "  if #text > CUT then\n"
    "    cut = sub(text, 1, CUT):gsub('[\\192-\\255][\\128-\\191]*$', '')\n"
    "  end\n"
    "  log[(n - 1) % KEEP + 1] = { now(), cut, #text }\n"
    "end\n"
    "local function take()\n"
    "  if n == 0 then return nil end\n"
    "  local out, first = {}, n > KEEP and n - KEEP + 1 or 1\n"
    "  for k = first, n do out[#out + 1] = log[(k - 1) % KEEP + 1] end\n"
    "  out.dropped = first - 1\n"
    "  log, n = {}, 0\n"
    "  return out\n"
    "end\n"
    "return take, function() log, n = {}, 0 end\n";

static void *lpool_worker_init(tide__pool *pool, int index) {
    lpool *lp = tide__container_of(pool, lpool, pool);
    TIDE_UNUSED(index);
    tide__lua_in_worker = 1;
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return NULL;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, lp->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, lp->cpath);
    lua_setfield(L, -2, "cpath");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_tide_core);
    lua_setfield(L, -2, "tide.core");
    lua_pop(L, 2);
    if (tide__lua_preload_bundle)
        tide__lua_preload_bundle(L);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "tide.worker.fns");
    if (luaL_loadstring(L, LPOOL_PRINT) != 0 || lua_pcall(L, 0, 2, 0) != 0) {
        lua_pop(L, 1); /* keep the stock print rather than fail the worker */
    } else {
        lua_setfield(L, LUA_REGISTRYINDEX, "tide.worker.log_reset");
        lua_setfield(L, LUA_REGISTRYINDEX, "tide.worker.log_take");
    }
    tide__lua_mem_limit(L, lp->mem_limit);
    return L;
}

static void lpool_worker_free(void *ctx) {
    if (ctx)
        lua_close(ctx);
}

/* Fails the job with a TIDE_E* code (or UV_ENOMEM), its message and
 * traceback. */
static void lpool_fail(lpool_job *j, int status, const char *msg,
                       const char *trace) {
    j->status = status;
    j->out = tide__xstrdup(msg ? msg : "error");
    j->outlen = strlen(j->out);
    j->trace = trace ? tide__xstrdup(trace) : NULL;
}

/* Pushes the job's function, loading and caching it on first use. Returns
 * 0, or non-zero with the error message pushed. */
static int lpool_push_fn(lua_State *L, lpool_job *j) {
    lua_getfield(L, LUA_REGISTRYINDEX, "tide.worker.fns");
    lua_pushstring(L, j->key);
    lua_pushliteral(L, "\n");
    lua_pushstring(L, j->task);
    lua_concat(L, 3);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isfunction(L, -1)) {
        lua_replace(L, -3);
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1); /* fns, cachekey */
    int rc;
    if (j->code) {
        rc = luaL_loadbuffer(L, j->code, j->codelen, j->task);
    } else {
        rc = luaL_loadstring(L, LPOOL_LOADER);
        if (rc == 0) {
            lua_pushstring(L, j->key + 5); /* after "file:" */
            lua_pushstring(L, j->task);
            rc = lua_pcall(L, 2, 1, 0);
        }
    }
    if (rc != 0) {
        lua_replace(L, -3); /* keep the message only */
        lua_pop(L, 1);
        return rc;
    }
    lua_pushvalue(L, -2); /* cachekey */
    lua_pushvalue(L, -2); /* fn */
    lua_rawset(L, -5);
    lua_replace(L, -3);
    lua_pop(L, 1);
    return 0;
}

/* The deadline of the job this worker runs (uv_hrtime ns; 0: none). A
 * count hook stops interpreted Lua past it; compiled loops never call the
 * hook (LuaJIT), so a body stuck in one runs on. */
static _Thread_local uint64_t lpool_deadline;
static _Thread_local int lpool_stopped; /* the hook stopped the body */

static void lpool_hook(lua_State *L, lua_Debug *ar) {
    TIDE_UNUSED(ar);
    if (lpool_deadline && uv_hrtime() > lpool_deadline) {
        lua_sethook(L, NULL, 0, 0);
        lpool_stopped = 1;
        luaL_error(L, "sync task stopped: it ran over its time limit");
    }
}

static void lpool_oom(lua_State *L, lpool_job *j) {
    char msg[300];
    snprintf(msg, sizeof(msg), "out of memory: sync task '%s' reached its "
             "worker's memory_limit (%zu MiB)", j->task,
             tide__lua_mem_get(L) >> 20);
    free(j->out);
    j->out = NULL;
    lpool_fail(j, UV_ENOMEM, msg, NULL);
}

/* Encodes the lines the body printed into j->logs (nothing when it
 * printed none). Raises only a memory error (under lua_cpcall). */
static void lpool_take_logs(lua_State *L, lpool_job *j) {
    char err[256];
    lua_getfield(L, LUA_REGISTRYINDEX, "tide.worker.log_take");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_call(L, 0, 1);
    if (lua_istable(L, -1) &&
        tide__marshal_encode(L, -1, &j->logs, &j->logslen, err,
                             sizeof(err)) != 0)
        j->logs = NULL; /* cannot happen: strings and numbers only */
    lua_pop(L, 1);
}

/* Forgets lines printed outside a job (or by a job that ended before its
 * lines were taken). */
static void lpool_reset_logs(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, "tide.worker.log_reset");
    if (lua_isfunction(L, -1))
        lua_call(L, 0, 0);
    else
        lua_pop(L, 1);
}

/* The Lua half of lpool_run, under lua_cpcall: loading the function,
 * decoding the input and encoding the output allocate from the worker's
 * state and may raise a memory error when it is at its limit; an error
 * with no protected call around it would end the process. */
static int lpool_run_lua(lua_State *L) {
    lpool_job *j = lua_touserdata(L, 1);
    char err[256];
    lua_settop(L, 0);
    if (strncmp(j->key, "native:", 7) == 0) {
        /* code holds the function pointer: no Lua function involved. */
        tide_native_fn fn;
        memcpy(&fn, j->code, sizeof(fn));
        j->status = tide__native_run(L, fn, j->in, j->inlen, &j->out,
                                     &j->outlen);
        return 0;
    }
    if (lpool_push_fn(L, j) != 0) {
        lpool_fail(j, TIDE_ETASK, lua_tostring(L, -1), NULL);
        return 0;
    }
    if (tide__marshal_decode(L, j->in, j->inlen, err, sizeof(err)) != 0) {
        lpool_fail(j, TIDE_EVALUE, err, NULL);
        return 0;
    }
    lpool_reset_logs(L);
    lpool_stopped = 0;
    if (j->timeout_ms > 0) {
        lpool_deadline = uv_hrtime() + (uint64_t)(j->timeout_ms * 1e6);
        lua_sethook(L, lpool_hook, LUA_MASKCOUNT, 1000);
    }
    /* The message is the error's text (an error record's __tostring) and
     * the traceback. */
    int prc = tide__lua_pcall(L, 1, 1);
    if (j->timeout_ms > 0) {
        lua_sethook(L, NULL, 0, 0);
        lpool_deadline = 0;
    }
    if (prc == LUA_ERRMEM) {
        /* No message handler ran (LuaJIT calls none for memory errors). */
        lpool_oom(L, j);
        return 0;
    }
    lpool_take_logs(L, j);
    if (prc != 0) {
        const char *tb = lua_tostring(L, -1);
        /* The message is the traceback's first line. */
        const char *nl = tb ? strchr(tb, '\n') : NULL;
        char *msg = tide__xstrdup(tb ? tb : "error");
        if (nl)
            msg[nl - tb] = '\0';
        lpool_fail(j, lpool_stopped ? TIDE_ETIMEDOUT : TIDE_ETASK, msg, tb);
        free(msg);
        return 0;
    }
    /* The encoder frees its buffer itself when it raises. */
    if (tide__marshal_encode(L, -1, &j->out, &j->outlen, err,
                             sizeof(err)) != 0) {
        char msg[600];
        snprintf(msg, sizeof(msg), "sync task '%s' returned a value that "
                 "cannot cross threads: %s", j->task, err);
        lpool_fail(j, TIDE_EVALUE, msg, NULL);
    } else {
        j->status = 0;
    }
    return 0;
}

static void lpool_run(void *ctx, tide__job *pj) {
    lpool_job *j = lpool_job_of(pj);
    lua_State *L = ctx;
    if (L == NULL) {
        lpool_fail(j, TIDE_ETASK, "worker thread has no Lua state", NULL);
        return;
    }
    lua_settop(L, 0);
    int rc = lua_cpcall(L, lpool_run_lua, j);
    if (rc != 0) {
        /* A memory error while loading, decoding or encoding (the state
         * tripped its limit; a plain error is not raised there). The
         * message is written from C memory. */
        if (rc == LUA_ERRMEM || tide__lua_mem_tripped(L)) {
            lpool_oom(L, j);
        } else {
            char msg[300];
            snprintf(msg, sizeof(msg), "sync task '%s': %s", j->task,
                     lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
            free(j->out);
            j->out = NULL;
            lpool_fail(j, TIDE_ETASK, msg, NULL);
        }
    }
    lua_settop(L, 0);
    /* The garbage of a job that tripped the limit goes before the next;
     * near the limit, any job's. */
    tide__lua_mem_rearm(L);
    tide__lua_mem_relieve(L);
}

/* ===== LOOP SIDE ===== */

/* A job stops keeping the loop alive: it came back, or nobody waits for
 * it any more (its attempt gave up while a worker runs it). */
static void lpool_uncount(lpool *lp, lpool_job *j) {
    if (j->uncounted)
        return;
    j->uncounted = 1;
    if (--lp->outstanding == 0 && lp->async_open)
        uv_unref((uv_handle_t *)&lp->async);
}

/* A job came back from the pool (finished, or unqueued unstarted): the
 * pool's reference goes, and with no job left the loop may end. */
static void lpool_took_back(lpool *lp, lpool_job *j) {
    j->done = 1;
    lpool_uncount(lp, j);
    lpool_job_unref(j);
}

static void lpool_on_async(uv_async_t *a) {
    lpool *lp = tide__container_of(a, lpool, async);
    tide__job *pj = tide__pool_take_done(&lp->pool);
    while (pj) {
        lpool_job *j = lpool_job_of(pj);
        pj = pj->next;
        j->job.next = NULL;
        if (!j->cancelled && j->att != 0)
            tide__lua_wake(lp->loop, j->att);
        j->att = 0;
        if (j->stood_in)
            tide__pool_unreplace(&lp->pool);
        for (int i = 0; i < lp->nstuck; i++)
            if (lp->stuck[i] == j) {
                lp->stuck[i] = lp->stuck[--lp->nstuck];
                lpool_job_unref(j); /* the stuck list's reference */
                break;
            }
        lpool_took_back(lp, j);
    }
}

/* Every LPOOL_GRACE_MS while attempts gave up on running jobs: a job still
 * running past the grace period gets a stand-in thread (at most 2 x the
 * threads asked for are alive), so runaway bodies cannot take the pool. */
static void lpool_on_stuck_timer(uv_timer_t *t) {
    lpool *lp = tide__container_of(t, lpool, stuck_timer);
    uint64_t now = uv_now(lp->loop);
    for (int i = 0; i < lp->nstuck; i++) {
        lpool_job *j = lp->stuck[i];
        if (!j->done && !j->stood_in &&
            now - j->cancelled_at >= LPOOL_GRACE_MS &&
            tide__pool_replace(&lp->pool))
            j->stood_in = 1;
    }
    if (lp->nstuck == 0)
        uv_timer_stop(t);
}

static void lpool_release(tide__pool *pool) {
    lpool *lp = tide__container_of(pool, lpool, pool);
    free(lp->path);
    free(lp->cpath);
    free(lp);
}

/* The loop side is done with lp; its memory goes now, or with the last
 * orphan thread (a job still running when the pool stopped). */
static void lpool_free(lpool *lp) {
    if (lp->started && !tide__pool_leave(&lp->pool))
        return;
    lpool_release(&lp->pool);
}

static void lpool_handle_closed(uv_handle_t *h) {
    lpool *lp = tide__container_of((tide__lua_base *)h->data, lpool, base);
    if (--lp->nhandles == 0) {
        lp->async_open = 0;
        if (!lp->boxed)
            lpool_free(lp);
    }
}

/* Stops the threads: queued jobs are dropped, idle threads joined, and
 * threads still running a job left to finish it alone (nobody waits for
 * its result any more); hands back what finished. */
static void lpool_stop(lpool *lp) {
    if (lp->stopped)
        return;
    lp->stopped = 1;
    if (!lp->started)
        return;
    /* Drop the queue: cancelled, they never run. */
    uv_mutex_lock(&lp->pool.mu);
    tide__job *q = lp->pool.qhead;
    lp->pool.qhead = lp->pool.qtail = NULL;
    uv_mutex_unlock(&lp->pool.mu);
    while (q) {
        lpool_job *j = lpool_job_of(q);
        q = q->next;
        j->cancelled = 1;
        lpool_took_back(lp, j);
    }
    uv_timer_stop(&lp->stuck_timer);
    q = tide__pool_stop(&lp->pool);
    while (q) { /* finished meanwhile: nobody will wait for them now */
        lpool_job *j = lpool_job_of(q);
        q = q->next;
        j->job.next = NULL;
        j->cancelled = 1;
        j->att = 0;
        lpool_took_back(lp, j);
    }
    while (lp->nstuck > 0)
        lpool_job_unref(lp->stuck[--lp->nstuck]);
}

static void lpool_before_engine_close(tide__lua_base *b) {
    lpool_stop(tide__container_of(b, lpool, base));
}

static lpool *lpool_check(lua_State *L, int idx) {
    lpool **box = luaL_checkudata(L, idx, "tide.pool");
    if (*box == NULL || (*box)->stopped)
        luaL_argerror(L, idx, "pool is closed");
    if ((*box)->fork_gen != tide__fork_gen())
        luaL_error(L, "tide: this worker pool was made before a fork: its "
                      "threads run in the parent process only");
    return *box;
}

/* pool_new(engine, nthreads[, memory_limit]) -> pool. Workers start on
 * the first job; each worker's Lua state gets the memory limit (bytes; 0
 * or none: no limit). */
static int l_pool_new(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    lua_Integer n = luaL_checkinteger(L, 2);
    if (n < 1 || n > 1024)
        return luaL_argerror(L, 2, "threads must be 1..1024");
    lua_Number mem = luaL_optnumber(L, 3, 0);
    if (!(mem >= 0 && mem <= 9007199254740992.0))
        return luaL_argerror(L, 3, "memory limit must be bytes >= 0");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "cpath");
    lpool **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.pool");
    lua_setmetatable(L, -2);
    lpool *lp = tide__xcalloc(1, sizeof(*lp));
    tide__fork_watch();
    lp->fork_gen = tide__fork_gen();
    lp->path = tide__xstrdup(lua_tostring(L, -3) ? lua_tostring(L, -3) : "");
    lp->cpath = tide__xstrdup(lua_tostring(L, -2) ? lua_tostring(L, -2) : "");
    lp->loop = loop;
    lp->base.close_cb = lpool_handle_closed;
    lp->base.before_close = lpool_before_engine_close;
    lp->pool.worker_init = lpool_worker_init;
    lp->pool.worker_free = lpool_worker_free;
    lp->pool.run = lpool_run;
    lp->pool.release = lpool_release;
    lp->pool.job_release = lpool_job_release;
    lp->pool.async = &lp->async;
    lp->pool.nworkers = 0;
    uv_async_init(loop, &lp->async, lpool_on_async);
    lp->async.data = &lp->base;
    uv_unref((uv_handle_t *)&lp->async); /* jobs keep the loop alive */
    uv_timer_init(loop, &lp->stuck_timer);
    lp->stuck_timer.data = &lp->base;
    uv_unref((uv_handle_t *)&lp->stuck_timer);
    lp->nhandles = 2;
    lp->async_open = 1;
    lp->boxed = 1;
    lp->nthreads = (int)n; /* started on the first job */
    lp->mem_limit = (size_t)mem;
    *box = lp;
    return 1;
}

/* op_cancel of the parked attempt (timeout, cancel): nobody wants the
 * result; a job no worker started yet is taken out of the queue. */
static void lpool_cancel(void *op) {
    lpool_job *j = op;
    j->cancelled = 1;
    j->att = 0;
    if (j->done || j->job.orphaned)
        return; /* an orphan's pool may be freed already */
    lpool *lp = j->owner;
    if (lp->stopped)
        return;
    if (tide__pool_unqueue(&lp->pool, &j->job)) {
        lpool_took_back(lp, j);
        return;
    }
    /* A worker runs it: it no longer holds the loop (a body stuck for good
     * must not keep tide run from exiting); watch it, and give the worker
     * a stand-in if it does not come back within the grace period. */
    lpool_uncount(lp, j);
    if (lp->nstuck < LPOOL_MAX_STUCK) {
        j->cancelled_at = uv_now(lp->loop);
        atomic_fetch_add(&j->refs, 1);
        lp->stuck[lp->nstuck++] = j;
        if (!uv_is_active((uv_handle_t *)&lp->stuck_timer))
            uv_timer_start(&lp->stuck_timer, lpool_on_stuck_timer,
                           LPOOL_GRACE_MS / 4, LPOOL_GRACE_MS / 4);
    }
}

/* pool:submit(key, task, code|nil, input, timeout_s|nil)
 *   -> job | nil, msg, "EVALUE" */
static int l_pool_submit(lua_State *L) {
    lpool *lp = lpool_check(L, 1);
    const char *key = luaL_checkstring(L, 2);
    const char *task = luaL_checkstring(L, 3);
    size_t codelen = 0;
    const char *code = NULL;
    void *native = NULL;
    if (lua_type(L, 4) == LUA_TLIGHTUSERDATA) {
        /* A native function (from native_load): its pointer's bytes. */
        native = lua_touserdata(L, 4);
        code = (const char *)&native;
        codelen = sizeof(native);
    } else {
        code = luaL_optlstring(L, 4, NULL, &codelen);
    }
    luaL_checkany(L, 5);
    double timeout = luaL_optnumber(L, 6, 0);
    /* The box first (it may raise), then the encoded input (the encoder
     * frees it when it raises), then the job, which cannot raise. */
    lpool_job **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.job");
    lua_setmetatable(L, -2);
    char *in, err[256];
    size_t inlen;
    if (tide__marshal_encode(L, 5, &in, &inlen, err, sizeof(err)) != 0)
        return tide__lua_fail(L, TIDE_EVALUE, "the input of sync task '%s' "
                              "cannot cross threads: %s", task, err);
    lpool_job *j = tide__xcalloc(1, sizeof(*j));
    j->in = in;
    j->inlen = inlen;
    j->key = tide__xstrdup(key);
    j->task = tide__xstrdup(task);
    if (code) {
        j->code = tide__xmalloc(codelen);
        memcpy(j->code, code, codelen);
        j->codelen = codelen;
    }
    atomic_init(&j->refs, 2);
    j->owner = lp;
    j->timeout_ms = timeout > 0 ? timeout * 1000.0 : 0;
    *box = j;
    if (!lp->started) {
        int rc = tide__pool_start(&lp->pool, lp->nthreads);
        if (rc != 0) {
            atomic_store(&j->refs, 1); /* the box's: freed with it */
            return luaL_error(L, "cannot start worker threads: %s",
                              uv_strerror(rc));
        }
        lp->started = 1;
    }
    if (lp->outstanding++ == 0)
        uv_ref((uv_handle_t *)&lp->async); /* a job keeps the loop alive */
    tide__pool_submit(&lp->pool, &j->job);
    return 1;
}

static lpool_job *lpool_job_check(lua_State *L, int idx) {
    lpool_job **box = luaL_checkudata(L, idx, "tide.job");
    if (*box == NULL)
        luaL_argerror(L, idx, "job was released");
    return *box;
}

static uint64_t lpool_started(void *op) {
    lpool_job *j = op;
    return atomic_load_explicit(&j->job.started, memory_order_relaxed);
}

/* pool_wait(job): parks the task body until the job is done. Its time
 * limit counts from when a worker took the job, not from the queue. */
static int l_pool_wait(lua_State *L) {
    lpool_job *j = lpool_job_check(L, 1);
    if (j->done)
        return 0;
    return tide__lua_park_op(L, "sync task", j, lpool_cancel, lpool_started,
                             &j->att);
}

/* Pushes the lines a finished job printed (decoded); returns 0 and
 * pushes nothing when it printed none. */
static int lpool_push_logs(lua_State *L, lpool_job *j) {
    char err[256];
    if (j->logs == NULL)
        return 0;
    if (tide__marshal_decode(L, j->logs, j->logslen, err, sizeof(err)))
        return luaL_error(L, "sync task: cannot decode its log: %s", err);
    return 1;
}

/* pool_result(job) -> true, value, nil, nil, logs | false, message,
 * traceback, code, logs; logs: the lines the body printed, { {time, text,
 * length}, ..., dropped = n }, or nil. */
static int l_pool_result(lua_State *L) {
    lpool_job *j = lpool_job_check(L, 1);
    if (!j->done)
        return luaL_error(L, "sync task: the job has not finished");
    if (j->status == 0) {
        char err[256];
        lua_pushboolean(L, 1);
        if (tide__marshal_decode(L, j->out, j->outlen, err, sizeof(err)))
            return luaL_error(L, "sync task: cannot decode its output: %s",
                              err);
        lua_pushnil(L);
        lua_pushnil(L);
        if (!lpool_push_logs(L, j))
            lua_pushnil(L);
        return 5;
    }
    lua_pushboolean(L, 0);
    lua_pushlstring(L, j->out, j->outlen);
    if (j->trace)
        lua_pushstring(L, j->trace);
    else
        lua_pushnil(L);
    /* The status is the code: ETIMEDOUT when the worker's hook stopped
     * the body at its time limit (which may come before the loop's
     * deadline: both count from the job's start); ENOMEM (UV_ENOMEM, not
     * one of tide's codes) when the worker's state ran out of its memory
     * limit. */
    const char *name = tide_err_name(j->status);
    lua_pushstring(L, name ? name : uv_err_name(j->status));
    if (!lpool_push_logs(L, j))
        lua_pushnil(L);
    return 5;
}

static int l_job_gc(lua_State *L) {
    lpool_job **box = luaL_checkudata(L, 1, "tide.job");
    if (*box) {
        lpool_job *j = *box;
        *box = NULL;
        if (!j->done)
            j->cancelled = 1;
        lpool_job_unref(j);
    }
    return 0;
}

/* pool:close(): joins the threads. Safe to call twice. */
static int l_pool_close(lua_State *L) {
    lpool **box = luaL_checkudata(L, 1, "tide.pool");
    lpool *lp = *box;
    if (lp == NULL)
        return 0;
    *box = NULL;
    if (lp->fork_gen != tide__fork_gen()) {
        /* Made before a fork (a forked child closing its Lua state): the
         * threads, their lock and the loop are the parent's; joining or
         * destroying them here would wait forever. The memory is left. */
        return 0;
    }
    lpool_stop(lp);
    lp->boxed = 0;
    if (lp->async_open) {
        if (!uv_is_closing((uv_handle_t *)&lp->async))
            uv_close((uv_handle_t *)&lp->async, lpool_handle_closed);
        if (!uv_is_closing((uv_handle_t *)&lp->stuck_timer))
            uv_close((uv_handle_t *)&lp->stuck_timer, lpool_handle_closed);
    } else {
        lpool_free(lp);
    }
    return 0;
}

/* pool:stats() -> { threads = alive, replaced = stand-ins started } */
static int l_pool_stats(lua_State *L) {
    lpool *lp = lpool_check(L, 1);
    lua_createtable(L, 0, 2);
    if (lp->started)
        uv_mutex_lock(&lp->pool.mu);
    lua_pushinteger(L, lp->pool.alive);
    lua_setfield(L, -2, "threads");
    lua_pushnumber(L, (double)lp->pool.replaced);
    lua_setfield(L, -2, "replaced");
    if (lp->started)
        uv_mutex_unlock(&lp->pool.mu);
    return 1;
}

static int l_is_worker(lua_State *L) {
    lua_pushboolean(L, tide__lua_in_worker);
    return 1;
}

/* cores() -> the CPUs this process may run on (its affinity mask), one
 * system call: uv_cpu_info would read /proc/stat and /proc/cpuinfo, which
 * cost more than making an executor. */
static int l_cores(lua_State *L) {
    unsigned n = uv_available_parallelism();
    lua_pushinteger(L, n > 0 ? n : 1);
    return 1;
}

void tide__lua_open_pool(lua_State *L) {
    static const luaL_Reg pool_methods[] = {
        {"submit", l_pool_submit}, {"close", l_pool_close},
        {"stats", l_pool_stats},   {NULL, NULL}};
    tide__lua_newclass(L, "tide.pool", pool_methods, l_pool_close);
    tide__lua_newclass(L, "tide.job", NULL, l_job_gc);
    static const luaL_Reg funcs[] = {
        {"pool_new", l_pool_new},       {"pool_wait", l_pool_wait},
        {"pool_result", l_pool_result}, {"is_worker", l_is_worker},
        {"cores", l_cores},             {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
