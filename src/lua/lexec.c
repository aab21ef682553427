/* Subprocesses for task bodies (tide.exec and kind = "exec"): spawned
 * through libuv in a process group of their own, stdout and stderr written
 * to log files with their last bytes kept, a time limit that kills the
 * group (SIGTERM, then SIGKILL after a grace period).
 *
 * DESIGN
 * ------
 * core.exec_start(spec) spawns and returns a handle (a boxed pointer);
 * core.exec_wait(h) parks the task body until the process exited and both
 * pipes reached their end; core.exec_result(h) returns the result table.
 * The record is freed when its libuv handles are closed and the Lua box
 * released it, whichever is last. A body dropped while it waits (attempt
 * timeout, cancel) kills the group through the attempt's op_cancel.
 *
 * ENDING PROCESS GROUPS
 * ---------------------
 * A group is stopped with SIGTERM, then SIGKILL after a grace period.
 * The SIGKILL goes to the group even when its leader already exited: a
 * member that ignores SIGTERM would otherwise outlive the leader. A
 * cancelled body's process no longer keeps the loop alive (its handles
 * are unreferenced): ex:run() returns, and the process is killed and
 * reaped while the loop runs, or when the engine closes.
 *
 * While a record has libuv handles open it is on its engine's list
 * (tide__lua_exec_list; the list does not own it, the last handle to
 * close unlinks it). Closing the engine calls tide__lua_exec_end_all
 * before it closes the handles: every group still running, or still
 * owed its SIGKILL, gets SIGTERM at once, the closing thread waits at
 * most LEXEC_CLOSE_GRACE_MS for all of them together, SIGKILLs what is
 * left and reaps the leaders itself (the loop does not run again). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

#define LEXEC_TAIL 4096
#define LEXEC_GRACE_MS 2000
/* Closing blocks its caller (tide run's exit, ex:close()), so it grants
 * one short grace to all groups together; a process that handles SIGTERM
 * is expected to be gone well within it. */
#define LEXEC_CLOSE_GRACE_MS 500
/* How long closing waits for SIGKILLed leaders to be reaped (only a
 * process stuck in the kernel takes longer). */
#define LEXEC_REAP_MS 1000

typedef struct {
    char buf[LEXEC_TAIL];
    size_t len;   /* bytes kept (at most LEXEC_TAIL) */
    size_t start; /* ring start */
    int fd;       /* log file, or -1 */
} lexec_stream;

typedef struct lexec {
    tide__lua_base base; /* first: the engine's close finds it through data */
    uv_loop_t *loop;
    uv_process_t proc;
    uv_pipe_t pout, perr, pin;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    int nhandles;     /* libuv handles not closed yet */
    int boxed;        /* the Lua box still points here */
    int exited, out_eof, err_eof, done;
    int64_t exit_status;
    int term_signal, timed_out;
    int killing;      /* SIGTERM was sent to the group */
    int killed;       /* SIGKILL was sent to the group */
    int ending, gone; /* tide__lua_exec_end_all's bookkeeping */
    int pid;          /* the leader, also the group id (setsid) */
    struct lexec *next, **pprev; /* the engine's list, while handles are open */
    double att;       /* handle of the parked attempt, 0 when none */
    char *stdin_buf;
    size_t stdin_len;
    lexec_stream out, err;
    char log_out[512], log_err[512];
} lexec;

static void lexec_maybe_free(lexec *x) {
    if (x->nhandles == 0 && !x->boxed) {
        if (x->out.fd >= 0)
            close(x->out.fd);
        if (x->err.fd >= 0)
            close(x->err.fd);
        free(x->stdin_buf);
        free(x);
    }
}

static void lexec_unlink(lexec *x) {
    if (x->pprev == NULL)
        return;
    *x->pprev = x->next;
    if (x->next)
        x->next->pprev = x->pprev;
    x->next = NULL;
    x->pprev = NULL;
}

static void lexec_closed(uv_handle_t *h) {
    lexec *x = tide__container_of((tide__lua_base *)h->data, lexec, base);
    x->nhandles--;
    if (x->nhandles == 0)
        lexec_unlink(x); /* nothing of it can run any more */
    lexec_maybe_free(x);
}

static void lexec_close(lexec *x, uv_handle_t *h) {
    TIDE_UNUSED(x); /* lexec_closed finds it through h->data */
    if (!uv_is_closing(h))
        uv_close(h, lexec_closed);
}

/* The process exited and both pipes are drained: wake the body. A group
 * being killed keeps its timer, unreferenced, for the SIGKILL that ends
 * members that outlived the leader. */
static void lexec_check_done(lexec *x) {
    if (x->done || !x->exited || !x->out_eof || !x->err_eof)
        return;
    x->done = 1;
    if (x->killing && !x->killed) {
        uv_unref((uv_handle_t *)&x->timer);
    } else {
        uv_timer_stop(&x->timer);
        lexec_close(x, (uv_handle_t *)&x->timer);
    }
    lexec_close(x, (uv_handle_t *)&x->proc);
    if (x->att != 0)
        tide__lua_wake(x->loop, x->att);
    x->att = 0;
}

static void lexec_keep(lexec_stream *s, const char *p, size_t n) {
    if (s->fd >= 0) {
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(s->fd, p + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break; /* a full disk loses log bytes, not the task */
            off += (size_t)w;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (s->len < LEXEC_TAIL) {
            s->buf[(s->start + s->len) % LEXEC_TAIL] = p[i];
            s->len++;
        } else {
            s->buf[s->start] = p[i];
            s->start = (s->start + 1) % LEXEC_TAIL;
        }
    }
}

static void lexec_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    static char scratch[65536]; /* one loop thread reads at a time */
    TIDE_UNUSED(h);
    TIDE_UNUSED(hint);
    *buf = uv_buf_init(scratch, sizeof(scratch));
}

static void lexec_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
    lexec *x = tide__container_of((tide__lua_base *)st->data, lexec, base);
    int is_out = st == (uv_stream_t *)&x->pout;
    if (n > 0) {
        lexec_keep(is_out ? &x->out : &x->err, buf->base, (size_t)n);
        return;
    }
    if (n == 0)
        return;
    /* UV_EOF or an error: this stream is finished. */
    if (is_out)
        x->out_eof = 1;
    else
        x->err_eof = 1;
    lexec_close(x, (uv_handle_t *)st);
    lexec_check_done(x);
}

static void lexec_exit(uv_process_t *p, int64_t status, int sig) {
    lexec *x = tide__container_of((tide__lua_base *)p->data, lexec, base);
    x->exited = 1;
    x->exit_status = status;
    x->term_signal = sig;
    lexec_check_done(x);
}

/* Signals the whole process group, whether or not its leader is still
 * there. The group id stays taken while any member lives, so it names
 * the same group; only when the group is empty and the number was
 * reused within the grace period (a full pid wrap-around) could this
 * reach a stranger, which we accept. ESRCH (nobody left) is expected. */
static void lexec_kill(lexec *x, int sig) {
    if (sig == SIGKILL)
        x->killed = 1;
    else
        x->killing = 1;
    kill(-(pid_t)x->pid, sig);
}

static void lexec_on_timer(uv_timer_t *t) {
    lexec *x = tide__container_of((tide__lua_base *)t->data, lexec, base);
    if (!x->killing) {
        x->timed_out = 1;
        lexec_kill(x, SIGTERM);
        uv_timer_start(&x->timer, lexec_on_timer, LEXEC_GRACE_MS, 0);
    } else {
        lexec_kill(x, SIGKILL);
        if (x->done) /* check_done left the timer for this SIGKILL */
            lexec_close(x, (uv_handle_t *)&x->timer);
    }
}

/* op_cancel of the parked attempt: the body is gone, stop the process.
 * Nobody waits for it any more, so it stops keeping the loop alive. */
static void lexec_cancel(void *op) {
    lexec *x = op;
    x->att = 0;
    uv_unref((uv_handle_t *)&x->proc);
    uv_unref((uv_handle_t *)&x->pout);
    uv_unref((uv_handle_t *)&x->perr);
    uv_unref((uv_handle_t *)&x->pin);
    uv_unref((uv_handle_t *)&x->timer);
    if (!x->killing) {
        lexec_kill(x, SIGTERM);
        uv_timer_start(&x->timer, lexec_on_timer, LEXEC_GRACE_MS, 0);
    }
}

/* Whether the group of x has ended: its leader is reaped (by libuv, or
 * here, since the loop no longer runs) and no member is left. */
static int lexec_group_gone(lexec *x) {
    if (!x->exited) {
        int st;
        pid_t r;
        do
            r = waitpid((pid_t)x->pid, &st, WNOHANG);
        while (r < 0 && errno == EINTR);
        /* ECHILD: a host's own waitpid(-1) took it first. */
        if (r == 0 || (r < 0 && errno != ECHILD))
            return 0;
        x->exited = 1;
    }
    return kill(-(pid_t)x->pid, 0) != 0 && errno == ESRCH;
}

/* Waits until no record marked `ending` is left running, or until the
 * deadline (uv_hrtime). With `leaders_only`, a reaped leader is enough:
 * members it left were SIGKILLed and are not ours to reap. Returns how
 * many are left. */
static int lexec_wait_ending(lexec *list, uint64_t deadline, int leaders_only) {
    long nap_ns = 1000000;
    for (;;) {
        int left = 0;
        for (lexec *x = list; x != NULL; x = x->next) {
            if (!x->ending || x->gone)
                continue;
            if (lexec_group_gone(x) || (leaders_only && x->exited))
                x->gone = 1;
            else
                left++;
        }
        if (left == 0 || uv_hrtime() >= deadline)
            return left;
        struct timespec ts = {0, nap_ns};
        nanosleep(&ts, NULL);
        if (nap_ns < 16000000)
            nap_ns *= 2;
    }
}

void tide__lua_exec_end_all(struct lexec *list) {
    int n = 0;
    for (lexec *x = list; x != NULL; x = x->next) {
        /* A finished record whose group already had its SIGKILL (or
         * never needed one) is left to close. */
        if (x->done && (!x->killing || x->killed))
            continue;
        x->ending = 1;
        n++;
        if (!x->killing)
            lexec_kill(x, SIGTERM);
    }
    if (n == 0)
        return;
    uint64_t ms = 1000000;
    if (lexec_wait_ending(list, uv_hrtime() + LEXEC_CLOSE_GRACE_MS * ms,
                          0) == 0)
        return;
    for (lexec *x = list; x != NULL; x = x->next)
        if (x->ending && !x->gone)
            lexec_kill(x, SIGKILL);
    if (lexec_wait_ending(list, uv_hrtime() + LEXEC_REAP_MS * ms, 1) > 0)
        fprintf(stderr, "tide: a subprocess did not exit after SIGKILL; "
                        "it is left unreaped\n");
}

static void lexec_written(uv_write_t *w, int status) {
    lexec *x = tide__container_of(w, lexec, wreq);
    TIDE_UNUSED(status); /* a process that does not read its stdin */
    lexec_close(x, (uv_handle_t *)&x->pin);
}

static void lexec_engine_close(uv_handle_t *h) {
    lexec_closed(h);
}

static int lexec_open_log(const char *path) {
    if (path == NULL || *path == '\0')
        return -1;
    return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
}

static lexec *lexec_check(lua_State *L, int idx) {
    lexec **box = luaL_checkudata(L, idx, "tide.exec");
    if (*box == NULL)
        luaL_argerror(L, idx, "exec handle was released");
    return *box;
}

/* exec_start(argv, env, cwd, stdin, timeout_s, log_out, log_err)
 *   -> handle | nil, msg, code
 * argv: array of strings; env: array of "K=V" (nil: inherit); the rest
 * may be nil. Must run in a task body. */
static int l_exec_start(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    int argc = (int)lua_objlen(L, 1);
    if (argc < 1)
        return luaL_argerror(L, 1, "empty command");
    uv_loop_t *loop = tide__lua_body_loop(L, "tide.exec");
    /* Arguments first, as userdata scratch collected on a raise. */
    char **args = lua_newuserdata(L, (size_t)(argc + 1) * sizeof(char *));
    for (int i = 0; i < argc; i++) {
        lua_rawgeti(L, 1, i + 1);
        if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
            return luaL_argerror(L, 1, "command arguments must be strings");
        if (lua_type(L, -1) == LUA_TNUMBER) {
            /* Make it a string in the table, so the table anchors it. */
            lua_tostring(L, -1);
            lua_pushvalue(L, -1);
            lua_rawseti(L, 1, i + 1);
        }
        args[i] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1); /* the string stays alive in the argv table */
    }
    args[argc] = NULL;
    char **env = NULL;
    if (lua_istable(L, 2)) {
        int n = (int)lua_objlen(L, 2);
        env = lua_newuserdata(L, (size_t)(n + 1) * sizeof(char *));
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, 2, i + 1);
            env[i] = (char *)lua_tostring(L, -1);
            lua_pop(L, 1);
            if (env[i] == NULL)
                return luaL_argerror(L, 2, "env entries must be strings");
        }
        env[n] = NULL;
    }
    const char *cwd = luaL_optstring(L, 3, NULL);
    size_t inlen = 0;
    const char *in = luaL_optlstring(L, 4, NULL, &inlen);
    double timeout = luaL_optnumber(L, 5, 300);
    const char *log_out = luaL_optstring(L, 6, NULL);
    const char *log_err = luaL_optstring(L, 7, NULL);

    lexec **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.exec");
    lua_setmetatable(L, -2);

    lexec *x = tide__xcalloc(1, sizeof(*x));
    x->loop = loop;
    x->base.close_cb = lexec_engine_close;
    x->out.fd = lexec_open_log(log_out);
    x->err.fd = lexec_open_log(log_err);
    snprintf(x->log_out, sizeof(x->log_out), "%s", log_out ? log_out : "");
    snprintf(x->log_err, sizeof(x->log_err), "%s", log_err ? log_err : "");
    uv_pipe_init(loop, &x->pout, 0);
    uv_pipe_init(loop, &x->perr, 0);
    uv_pipe_init(loop, &x->pin, 0);
    uv_timer_init(loop, &x->timer);
    x->pout.data = x->perr.data = x->pin.data = x->timer.data = &x->base;
    x->proc.data = &x->base;
    x->nhandles = 4; /* the process handle counts once spawned */

    uv_stdio_container_t stdio[3];
    stdio[0].flags = in ? (UV_CREATE_PIPE | UV_READABLE_PIPE) : UV_IGNORE;
    stdio[0].data.stream = (uv_stream_t *)&x->pin;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&x->pout;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&x->perr;
    uv_process_options_t opts;
    memset(&opts, 0, sizeof(opts));
    opts.file = args[0];
    opts.args = args;
    opts.env = env;
    opts.cwd = cwd;
    opts.flags = UV_PROCESS_DETACHED; /* setsid: its own process group */
    opts.stdio_count = 3;
    opts.stdio = stdio;
    opts.exit_cb = lexec_exit;
    int rc = uv_spawn(loop, &x->proc, &opts);
    if (rc != 0) {
        /* Nothing started: close the handles (the process handle too:
         * libuv initialised it); the record goes with them. */
        x->nhandles++;
        lexec_close(x, (uv_handle_t *)&x->proc);
        lexec_close(x, (uv_handle_t *)&x->pout);
        lexec_close(x, (uv_handle_t *)&x->perr);
        lexec_close(x, (uv_handle_t *)&x->pin);
        lexec_close(x, (uv_handle_t *)&x->timer);
        if (rc == UV_ENOENT)
            return tide__lua_fail(L, rc, "command not found: '%s'", args[0]);
        return tide__lua_fail(L, rc, "cannot run '%s': %s", args[0],
                              uv_strerror(rc));
    }
    x->nhandles++;
    x->boxed = 1;
    x->pid = x->proc.pid;
    *box = x;
    struct lexec **list = tide__lua_exec_list(loop);
    x->next = *list;
    if (x->next)
        x->next->pprev = &x->next;
    x->pprev = list;
    *list = x;
    uv_read_start((uv_stream_t *)&x->pout, lexec_alloc, lexec_read);
    uv_read_start((uv_stream_t *)&x->perr, lexec_alloc, lexec_read);
    if (in) {
        x->stdin_buf = tide__xmalloc(inlen ? inlen : 1);
        memcpy(x->stdin_buf, in, inlen);
        x->stdin_len = inlen;
        uv_buf_t b = uv_buf_init(x->stdin_buf, (unsigned)inlen);
        uv_write(&x->wreq, (uv_stream_t *)&x->pin, &b, 1, lexec_written);
    } else {
        lexec_close(x, (uv_handle_t *)&x->pin);
    }
    if (timeout > 0)
        uv_timer_start(&x->timer, lexec_on_timer, (uint64_t)(timeout * 1000), 0);
    return 1;
}

/* exec_wait(h): parks the body until the process is done. */
static int l_exec_wait(lua_State *L) {
    lexec *x = lexec_check(L, 1);
    if (x->done)
        return 0;
    return tide__lua_park_op(L, "tide.exec", x, lexec_cancel, NULL, &x->att);
}

static void lexec_push_tail(lua_State *L, const lexec_stream *s) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < s->len; i++)
        luaL_addchar(&b, s->buf[(s->start + i) % LEXEC_TAIL]);
    luaL_pushresult(&b);
}

/* exec_result(h) -> { code, signal, stdout, stderr, log_stdout,
 * log_stderr, timed_out }; releases the handle. */
static int l_exec_result(lua_State *L) {
    lexec *x = lexec_check(L, 1);
    if (!x->done)
        return luaL_error(L, "tide.exec: the process has not finished");
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, (lua_Integer)x->exit_status);
    lua_setfield(L, -2, "code");
    lua_pushinteger(L, x->term_signal);
    lua_setfield(L, -2, "signal");
    lexec_push_tail(L, &x->out);
    lua_setfield(L, -2, "stdout");
    lexec_push_tail(L, &x->err);
    lua_setfield(L, -2, "stderr");
    if (x->log_out[0]) {
        lua_pushstring(L, x->log_out);
        lua_setfield(L, -2, "log_stdout");
    }
    if (x->log_err[0]) {
        lua_pushstring(L, x->log_err);
        lua_setfield(L, -2, "log_stderr");
    }
    lua_pushboolean(L, x->timed_out);
    lua_setfield(L, -2, "timed_out");
    return 1;
}

static int l_exec_gc(lua_State *L) {
    lexec **box = luaL_checkudata(L, 1, "tide.exec");
    lexec *x = *box;
    if (x) {
        *box = NULL;
        x->boxed = 0;
        if (!x->done && !x->killing)
            lexec_cancel(x); /* nobody will read it: stop it */
        lexec_maybe_free(x);
    }
    return 0;
}

void tide__lua_open_exec(lua_State *L) {
    static const luaL_Reg funcs[] = {{"exec_start", l_exec_start},
                                     {"exec_wait", l_exec_wait},
                                     {"exec_result", l_exec_result},
                                     {NULL, NULL}};
    tide__lua_newclass(L, "tide.exec", NULL, l_exec_gc);
    luaL_setfuncs(L, funcs, 0);
}
