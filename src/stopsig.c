/* SIGINT and SIGTERM: the first one asks for a graceful stop, the second
 * ends the process at once.
 *
 * DESIGN
 * ------
 * libuv's uv_signal delivers a signal only when the loop turns, so a loop
 * stuck in a task body never hears it. tide installs its own handler
 * (sigaction) for these two signals while anything watches them. The
 * handler is async-signal-safe: it counts; on the second signal it writes
 * one line and calls _exit(128 + signum); on the first it tells the
 * watchdog (which stops a body that keeps the loop from turning) and
 * wakes each watcher's loop with uv_async_send (async-signal-safe by
 * libuv's documentation), whose callback hands the signal to the caller
 * on that loop, as uv_signal did.
 *
 * The handler may run on any thread while a loop thread adds or removes a
 * watcher. Watchers sit in a fixed array of atomic pointers; the handler
 * counts itself in ss_active before it reads the array, and removal waits
 * until no handler runs after it cleared the slot, so a handler never
 * touches a watcher after tide__stopsig_unwatch returned.
 *
 * Lock rule: ss_mu serializes watch and unwatch (the slots, the per
 * signal counts and the saved dispositions); the handler never takes it.
 * The count of signals starts again at zero when the last watcher goes,
 * with the dispositions that were there before. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define SS_MAX 64

static uv_once_t ss_once = UV_ONCE_INIT;
static uv_mutex_t ss_mu;
static tide__stopsig *_Atomic ss_slots[SS_MAX];
static _Atomic int ss_active; /* handlers running now */
static _Atomic int ss_count;  /* stop signals while watched */
static int ss_nwatch[2];      /* under ss_mu: watchers of SIGINT, SIGTERM */
static struct sigaction ss_old[2];
/* Holds a slot while its watcher's handle is being opened: it matches no
 * signal. */
static tide__stopsig ss_reserved = {.signum = -1};

static void ss_init(void) {
    if (uv_mutex_init(&ss_mu) != 0)
        abort();
}

static int ss_index(int signum) { return signum == SIGINT ? 0 : 1; }

int tide__stopsig_handles(int signum) {
    return signum == SIGINT || signum == SIGTERM;
}

static void ss_handler(int signum) {
    int saved = errno;
    if (atomic_fetch_add(&ss_count, 1) >= 1) {
        static const char msg[] = "tide: second signal: exiting at once\n";
        ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
        TIDE_UNUSED(n);
        _exit(128 + signum);
    }
    tide__wd_note_signal(signum);
    atomic_fetch_add(&ss_active, 1);
    for (int i = 0; i < SS_MAX; i++) {
        tide__stopsig *w = atomic_load(&ss_slots[i]);
        if (w && w->signum == signum) {
            atomic_fetch_add(&w->pending, 1);
            uv_async_send(&w->async);
        }
    }
    atomic_fetch_sub(&ss_active, 1);
    errno = saved;
}

int tide__stopsig_watch(tide__stopsig *w, uv_loop_t *loop, int signum,
                        uv_async_cb cb) {
    TIDE_ASSERT(tide__stopsig_handles(signum));
    uv_once(&ss_once, ss_init);
    w->signum = signum;
    atomic_store(&w->pending, 0);
    w->watching = 0;
    uv_mutex_lock(&ss_mu);
    int slot = -1;
    for (int i = 0; i < SS_MAX && slot < 0; i++)
        if (atomic_load(&ss_slots[i]) == NULL)
            slot = i;
    if (slot < 0) {
        uv_mutex_unlock(&ss_mu);
        return UV_ENOSPC;
    }
    int k = ss_index(signum);
    if (ss_nwatch[k] == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = ss_handler;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(signum, &sa, &ss_old[k]) != 0) {
            int rc = -errno;
            uv_mutex_unlock(&ss_mu);
            return rc;
        }
    }
    ss_nwatch[k]++;
    atomic_store(&ss_slots[slot], &ss_reserved);
    uv_mutex_unlock(&ss_mu);
    int rc = uv_async_init(loop, &w->async, cb);
    uv_mutex_lock(&ss_mu);
    if (rc == 0) {
        atomic_store(&ss_slots[slot], w);
        w->watching = 1;
    } else {
        atomic_store(&ss_slots[slot], NULL);
        if (--ss_nwatch[k] == 0)
            sigaction(signum, &ss_old[k], NULL);
    }
    uv_mutex_unlock(&ss_mu);
    return rc;
}

void tide__stopsig_unwatch(tide__stopsig *w) {
    if (!w->watching)
        return;
    uv_mutex_lock(&ss_mu);
    for (int i = 0; i < SS_MAX; i++)
        if (atomic_load(&ss_slots[i]) == w)
            atomic_store(&ss_slots[i], NULL);
    int k = ss_index(w->signum);
    if (--ss_nwatch[k] == 0)
        sigaction(w->signum, &ss_old[k], NULL);
    if (ss_nwatch[0] + ss_nwatch[1] == 0)
        atomic_store(&ss_count, 0);
    uv_mutex_unlock(&ss_mu);
    /* A handler on another thread may have read the slot before it was
     * cleared; it is done with w once no handler runs. */
    while (atomic_load(&ss_active) > 0)
        sched_yield();
    w->watching = 0;
}

int tide__stopsig_take(tide__stopsig *w) {
    return atomic_exchange(&w->pending, 0);
}

int tide__thread_start(uv_thread_t *t, void (*fn)(void *), void *arg) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = uv_thread_create(t, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}
