/* The watchdog: one thread per process that notices a loop stuck in a task
 * body (a body that has run its attempt's time limit without yielding) and
 * has the body stopped, so that the loop turns again.
 *
 * DESIGN
 * ------
 * One thread for the process, not one per engine: engines are cheap and
 * many programs make one per tide.run call, which would then pay a thread
 * start and join each time; and what starts a graceful stop (SIGINT,
 * SIGTERM) arrives per process anyway. The thread starts with the first
 * engine and lives as long as the process (it is never joined: it only
 * sleeps while no engine is registered); it blocks every signal.
 *
 * Each engine embeds a tide__wd (internal.h) that its loop thread updates
 * with relaxed atomics on the hot path. The watchdog thread makes a pass
 * over the registered records every WD_TICK_MS (sooner when a limit falls
 * due, at once when a stop signal arrived) and measures how long each one
 * has stayed in the same body segment from when it first saw it: no clock
 * is read on the hot path, and a stop comes at most one tick late, never
 * early.
 *
 * How a body is stopped: the watchdog does not call lua_sethook itself (it
 * could not: the core has no Lua). LuaJIT documents lua_sethook as
 * callable asynchronously, e.g. in a signal handler, on the thread that
 * runs the Lua state; luajit's own Ctrl-C handler and its SIGPROF profiler
 * do exactly that. Called from another thread it races with the dispatch
 * table updates that the VM makes itself whenever it starts or stops
 * recording a trace (upstream LuaJIT fixed that race for its own profiler
 * thread, commit 75abb0d "Avoid race condition with profiler thread during
 * dispatch table update", with a lock the C API does not expose; the
 * Debian 12 LuaJIT predates it). So the watchdog
 * sends TIDE__WD_SIGNO to the loop thread (tgkill, by the kernel thread id
 * the engine recorded when it last started draining) and the glue's `arm`
 * function runs in that thread's signal handler, where it sets the hook.
 *
 * Lock rule: wd_mu guards the list of records and the watchdog's own
 * fields of each record (seen_*, sig_*, asked_at, warned, names).
 * tide__wd_register, _unregister and _names take it on the loop thread
 * (when an engine is made, attached or closed), the watchdog thread for
 * each pass. It is never taken on the hot path, in a signal handler or in
 * the hook, and nothing that may block (stderr) runs under it. Because a
 * pass holds it while it signals a loop thread, an engine cannot be freed
 * under the watchdog. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define WD_TICK_MS 100      /* how often the watchdog looks at idle engines */
/* A body running since before SIGINT/SIGTERM that is still running this
 * long after it is stopped: the signal cannot reach the loop otherwise. A
 * body that merely happened to run at that moment is long done by then. */
#define WD_GRACE_MS 100
/* When a stop was asked for and the body still runs (the hook cannot run
 * in compiled code, and a signal to the loop thread may come while it
 * has no engine draining), ask again this often, and warn once. */
#define WD_ASK_AGAIN_MS 1000

static uv_once_t wd_once = UV_ONCE_INIT;
static uv_mutex_t wd_mu;
static tide__wd *wd_list;          /* under wd_mu */
static int wd_started;             /* under wd_mu */
static void (*wd_arm)(void);       /* under wd_mu; read by the handler */
static struct sigaction wd_old_sa; /* what TIDE__WD_SIGNO did before */
/* Read by signal handlers, hence atomics. */
static _Atomic int wd_efd = -1;    /* wakes the watchdog thread */
static _Atomic unsigned wd_sig_gen;/* stop signals so far */
static _Atomic int wd_sig_num;     /* the last one */
static void (*_Atomic wd_arm_fn)(void);

static _Thread_local int wd_tid;   /* this thread's kernel id, once known */
static int wd_sa_installed;        /* under wd_mu: our TIDE__WD_SIGNO handler */
static _Atomic unsigned wd_fork_gen;

/* Fork handlers. The lock is taken around fork(2), so that the child never
 * inherits it held by the watchdog thread (which the child does not have).
 * In the child the engines of the parent are not watched any more (their
 * loops are the parent's), the thread is started again by the next engine
 * with an eventfd of its own (the inherited one is shared with the
 * parent's watchdog, which would lose its wake-ups to the child), and the
 * forking thread's kernel id, which differs in the child, is read again. */
static void wd_prefork(void) {
    uv_mutex_lock(&wd_mu);
}

static void wd_postfork_parent(void) {
    uv_mutex_unlock(&wd_mu);
}

static void wd_postfork_child(void) {
    atomic_fetch_add(&wd_fork_gen, 1);
    wd_list = NULL;
    wd_started = 0;
    int efd = atomic_exchange(&wd_efd, -1);
    if (efd >= 0)
        close(efd);
    wd_tid = 0;
    uv_mutex_unlock(&wd_mu);
}

static void wd_init(void) {
    if (uv_mutex_init(&wd_mu) != 0)
        abort();
    if (pthread_atfork(wd_prefork, wd_postfork_parent, wd_postfork_child) != 0)
        abort();
}

void tide__fork_watch(void) {
    uv_once(&wd_once, wd_init);
}

unsigned tide__fork_gen(void) {
    return atomic_load_explicit(&wd_fork_gen, memory_order_relaxed);
}

static uint64_t wd_ms(uint64_t ns) { return ns / 1000000; }

/* TIDE__WD_SIGNO on a loop thread: the glue arms its hook there. Other
 * uses of the signal (a handler installed before tide's) still run. */
static void wd_on_signal(int signo, siginfo_t *info, void *uctx) {
    int saved = errno;
    void (*arm)(void) = atomic_load(&wd_arm_fn);
    if (arm)
        arm();
    if (wd_old_sa.sa_flags & SA_SIGINFO) {
        if (wd_old_sa.sa_sigaction)
            wd_old_sa.sa_sigaction(signo, info, uctx);
    } else if (wd_old_sa.sa_handler != SIG_DFL &&
               wd_old_sa.sa_handler != SIG_IGN) {
        wd_old_sa.sa_handler(signo);
    }
    errno = saved;
}

/* Asks the loop thread of w to stop body segment s: the hook it arms
 * checks target against the live seq before it does anything. */
static void wd_ask(tide__wd *w, uint64_t s, int why, uint64_t ran_ns) {
    atomic_store_explicit(&w->why, why, memory_order_relaxed);
    atomic_store_explicit(&w->ran_ms, (uint32_t)wd_ms(ran_ns),
                          memory_order_relaxed);
    atomic_store_explicit(&w->target, s, memory_order_release);
    atomic_store_explicit(&w->req, 1, memory_order_release);
    int tid = atomic_load_explicit(&w->tid, memory_order_relaxed);
    if (tid > 0)
        syscall(SYS_tgkill, (long)getpid(), (long)tid, (long)TIDE__WD_SIGNO);
}

/* One look at every engine; returns how long to sleep (ms, -1: until
 * woken). Holds wd_mu. A warning to print goes to `warn` (at most one per
 * pass), printed once the lock is released: stderr may block. */
static int wd_pass(unsigned *sig_seen, char *warn, size_t warnlen) {
    uint64_t now = uv_hrtime();
    unsigned gen = atomic_load(&wd_sig_gen);
    int signalled = gen != *sig_seen;
    int signum = atomic_load(&wd_sig_num);
    *sig_seen = gen;
    uint64_t next = wd_list ? (uint64_t)WD_TICK_MS * 1000000 : UINT64_MAX;
    for (tide__wd *w = wd_list; w; w = w->next) {
        /* Acquire loads, so that the second load of seq comes after the
         * others (TSan does not take atomic_thread_fence). */
        uint64_t s = atomic_load_explicit(&w->seq, memory_order_acquire);
        uint64_t limit = atomic_load_explicit(&w->limit_ms,
                                              memory_order_acquire);
        uint32_t task = atomic_load_explicit(&w->task, memory_order_acquire);
        /* A segment that changed while we read is not stuck. (A torn read
         * can at worst ask about a segment that just ended, which the
         * hook ignores: it checks seq on the loop thread.) */
        if (atomic_load_explicit(&w->seq, memory_order_relaxed) != s)
            continue;
        if (!(s & 1)) {
            w->seen_seq = s;
            continue;
        }
        if (s != w->seen_seq) {
            w->seen_seq = s;
            w->seen_at = now;
            w->sig_seq = w->asked_at = 0;
            w->warned = 0;
        }
        if (signalled && w->sig_seq != s) {
            w->sig_seq = s;
            w->sig_at = now;
        }
        uint64_t due = w->seen_at + limit * 1000000;
        int why = TIDE__WD_TIMEOUT;
        if (w->sig_seq == s &&
            w->sig_at + (uint64_t)WD_GRACE_MS * 1000000 < due) {
            due = w->sig_at + (uint64_t)WD_GRACE_MS * 1000000;
            why = signum;
        }
        if (now < due) {
            if (due - now < next)
                next = due - now;
            continue;
        }
        if (atomic_load_explicit(&w->fired, memory_order_relaxed) == s)
            continue; /* stopped: the body is unwinding */
        uint64_t again = (uint64_t)WD_ASK_AGAIN_MS * 1000000;
        if (w->asked_at == 0 || now - w->asked_at >= again) {
            if (w->asked_at && !w->warned && warn[0] == '\0') {
                w->warned = 1;
                const char *name = task < w->nnames && w->names[task]
                                       ? w->names[task] : "?";
                snprintf(warn, warnlen,
                         "tide: watchdog: task '%s' has run %.1f s without "
                         "yielding and could not be stopped (LuaJIT runs no "
                         "hooks in compiled loops or C calls; CPU-bound work "
                         "belongs in kind = \"sync\"); under tide run or "
                         "serve a second SIGINT or SIGTERM ends the process\n",
                         name, (double)(now - w->seen_at) / 1e9);
            }
            wd_ask(w, s, why, now - w->seen_at);
            w->asked_at = now;
        }
        if (w->asked_at + again - now < next)
            next = w->asked_at + again - now;
    }
    if (next == UINT64_MAX)
        return -1;
    return (int)(next / 1000000) + 1;
}

static void *wd_main(void *arg) {
    TIDE_UNUSED(arg);
    int efd = atomic_load(&wd_efd);
    unsigned sig_seen = atomic_load(&wd_sig_gen);
    for (;;) {
        char warn[512] = "";
        uv_mutex_lock(&wd_mu);
        int ms = wd_pass(&sig_seen, warn, sizeof(warn));
        uv_mutex_unlock(&wd_mu);
        if (warn[0])
            fputs(warn, stderr);
        struct pollfd p = {efd, POLLIN, 0};
        if (poll(&p, 1, ms) > 0) {
            uint64_t v;
            while (read(efd, &v, sizeof(v)) > 0)
                ;
        }
    }
    return NULL;
}

/* Starts the thread; under wd_mu. */
static int wd_start(void) {
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0)
        return -errno;
    /* Installed once per process: a child keeps the handler across
     * fork, and installing it again would make it its own "old" one. */
    if (!wd_sa_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = wd_on_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigfillset(&sa.sa_mask);
        if (sigaction(TIDE__WD_SIGNO, &sa, &wd_old_sa) != 0) {
            int rc = -errno;
            close(efd);
            return rc;
        }
        wd_sa_installed = 1;
    }
    atomic_store(&wd_efd, efd);
    /* The thread starts with every signal blocked: none is meant for it. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, wd_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -rc; /* the handler and the eventfd stay: harmless */
    wd_started = 1;
    return 0;
}

int tide__wd_register(tide__wd *wd, void (*arm)(void)) {
    uv_once(&wd_once, wd_init);
    uv_mutex_lock(&wd_mu);
    int rc = 0;
    if (wd_arm == NULL) {
        wd_arm = arm;
        atomic_store(&wd_arm_fn, arm);
    }
    TIDE_ASSERT(wd_arm == arm);
    if (!wd_started)
        rc = wd_start();
    int was_empty = wd_list == NULL;
    if (rc == 0) {
        wd->seen_seq = 0;
        wd->prev = NULL;
        wd->next = wd_list;
        if (wd_list)
            wd_list->prev = wd;
        wd_list = wd;
        wd->registered = 1;
    }
    uv_mutex_unlock(&wd_mu);
    if (rc == 0 && was_empty) {
        /* Wake the thread: it sleeps while it has no engine to watch. */
        uint64_t one = 1;
        ssize_t n = write(atomic_load(&wd_efd), &one, sizeof(one));
        TIDE_UNUSED(n);
    }
    return rc;
}

static void wd_free_names(tide__wd *wd) {
    for (uint32_t i = 0; i < wd->nnames; i++)
        free(wd->names[i]);
    free(wd->names);
    wd->names = NULL;
    wd->nnames = 0;
}

void tide__wd_unregister(tide__wd *wd) {
    if (!wd->registered)
        return;
    uv_mutex_lock(&wd_mu);
    if (wd->prev)
        wd->prev->next = wd->next;
    else
        wd_list = wd->next;
    if (wd->next)
        wd->next->prev = wd->prev;
    wd->next = wd->prev = NULL;
    wd->registered = 0;
    wd_free_names(wd);
    uv_mutex_unlock(&wd_mu);
}

void tide__wd_names(tide__wd *wd, const char *const *names, uint32_t n) {
    char **copy = tide__xcalloc(n ? n : 1, sizeof(*copy));
    for (uint32_t i = 0; i < n; i++)
        copy[i] = names[i] ? tide__xstrdup(names[i]) : NULL;
    if (!wd->registered) {
        for (uint32_t i = 0; i < n; i++)
            free(copy[i]);
        free(copy);
        return;
    }
    uv_mutex_lock(&wd_mu);
    wd_free_names(wd);
    wd->names = copy;
    wd->nnames = n;
    uv_mutex_unlock(&wd_mu);
}

void tide__wd_here(tide__wd *wd) {
    if (wd_tid == 0)
        wd_tid = (int)syscall(SYS_gettid);
    atomic_store_explicit(&wd->tid, wd_tid, memory_order_relaxed);
}

void tide__wd_note_signal(int signum) {
    atomic_store(&wd_sig_num, signum);
    atomic_fetch_add(&wd_sig_gen, 1);
    int efd = atomic_load(&wd_efd);
    if (efd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(efd, &one, sizeof(one));
        TIDE_UNUSED(n);
    }
}
