/* tide's own worker threads (not libuv's shared pool): a job queue, N
 * threads, and completions handed back to the loop through one uv_async.
 *
 * DESIGN
 * ------
 * Lock rule: one mutex guards both queues; a worker never holds it while
 * running a job. Jobs are owned by the loop thread except between
 * tide__pool_submit and the moment the loop takes them back from the done
 * queue; while a worker runs a job it may only touch the job's payload
 * fields (in, out, status), never its links. uv_async_send coalesces, so
 * the loop drains the whole done queue per wake-up.
 *
 * Stopping never waits for a job that is running: a body stuck in a
 * compiled loop would hold the process forever (tide run on SIGTERM).
 * Its thread is detached as an orphan; when the job returns, the thread
 * drops it (the job stays allocated: its references belong to the loop
 * thread) and frees itself. The pool's memory has two kinds of holder,
 * the owner (until tide__pool_leave) and the orphans; the last to go
 * destroys the lock and calls pool->release. */
#include <pthread.h>
#include <string.h>

#include "internal.h"

/* The last holder of a stopped pool (owner or orphan) destroys its lock;
 * nobody else can reach it any more. */
static void pool_destroy_lock(tide__pool *pool) {
    uv_cond_destroy(&pool->cv);
    uv_mutex_destroy(&pool->mu);
}

static void pool_thread(void *arg) {
    tide__pool_worker *w = arg;
    tide__pool *pool = w->pool;
    w->ctx = pool->worker_init ? pool->worker_init(pool, w->index) : NULL;
    for (;;) {
        uv_mutex_lock(&pool->mu);
        if (pool->alive > pool->target) {
            /* A stand-in was started while this thread was stuck: one of
             * the surplus retires, so the pool shrinks back. */
            pool->alive--;
            uv_mutex_unlock(&pool->mu);
            break;
        }
        while (pool->qhead == NULL && !pool->stopping &&
               pool->alive <= pool->target)
            uv_cond_wait(&pool->cv, &pool->mu);
        if (pool->alive > pool->target && !pool->stopping) {
            pool->alive--;
            uv_mutex_unlock(&pool->mu);
            break;
        }
        tide__job *j = pool->qhead;
        if (j == NULL) { /* stopping and nothing left */
            uv_mutex_unlock(&pool->mu);
            break;
        }
        pool->qhead = j->next;
        if (pool->qhead == NULL)
            pool->qtail = NULL;
        j->next = NULL;
        pool->running++;
        w->job = j;
        uv_mutex_unlock(&pool->mu);

        /* Read by the loop when the attempt's deadline passes: the time
         * limit counts from here, not from the wait in the queue. */
        atomic_store_explicit(&j->started, uv_hrtime(), memory_order_relaxed);
        pool->run(w->ctx, j);

        uv_mutex_lock(&pool->mu);
        pool->running--;
        w->job = NULL;
        if (w->orphan) {
            /* Once unlocked, the pool may be gone (the owner left and
             * freed it) unless this thread is the last holder: read what
             * is needed first. */
            int last = --pool->orphans == 0 && pool->owner_gone;
            void (*worker_free)(void *) = pool->worker_free;
            void (*orphan_done)(tide__job *) = pool->orphan_done;
            uv_mutex_unlock(&pool->mu);
            if (orphan_done)
                orphan_done(j);
            if (worker_free)
                worker_free(w->ctx);
            free(w);
            if (last) {
                pool_destroy_lock(pool);
                pool->release(pool);
            }
            return;
        }
        if (pool->dtail)
            pool->dtail->next = j;
        else
            pool->dhead = j;
        pool->dtail = j;
        uv_mutex_unlock(&pool->mu);
        uv_async_send(pool->async);
    }
    if (pool->worker_free)
        pool->worker_free(w->ctx);
}

static int pool_add(tide__pool *pool);

/* Starts n threads. async must be initialised on the loop by the caller
 * (its callback calls tide__pool_take_done). Returns 0 or a libuv error. */
int tide__pool_start(tide__pool *pool, int n) {
    int rc = uv_mutex_init(&pool->mu);
    if (rc == 0)
        rc = uv_cond_init(&pool->cv);
    if (rc != 0)
        return rc;
    pool->target = n;
    for (int i = 0; i < n; i++) {
        rc = pool_add(pool);
        if (rc != 0)
            break;
    }
    return pool->nworkers > 0 ? 0 : rc;
}

/* Starts one more thread (the caller holds no lock). */
static int pool_add(tide__pool *pool) {
    tide__pool_worker *w = tide__xcalloc(1, sizeof(*w));
    w->pool = pool;
    uv_mutex_lock(&pool->mu);
    w->index = pool->nworkers;
    pool->workers = tide__xrealloc(pool->workers, (size_t)(pool->nworkers + 1) *
                                                      sizeof(*pool->workers));
    pool->workers[pool->nworkers] = w;
    int rc = uv_thread_create(&w->thread, pool_thread, w);
    if (rc == 0) {
        pool->nworkers++;
        pool->alive++;
    } else {
        free(w);
    }
    uv_mutex_unlock(&pool->mu);
    return rc;
}

/* A worker is stuck in a job whose attempt timed out: start a stand-in,
 * unless 2 x target threads are alive already. Returns 1 when one was
 * started. */
int tide__pool_replace(tide__pool *pool) {
    uv_mutex_lock(&pool->mu);
    int room = pool->alive < 2 * pool->target && !pool->stopping;
    uv_mutex_unlock(&pool->mu);
    if (!room || pool_add(pool) != 0)
        return 0;
    uv_mutex_lock(&pool->mu);
    pool->replaced++;
    pool->target++; /* the stuck one retires when it comes back */
    uv_mutex_unlock(&pool->mu);
    return 1;
}

/* Queues j; a worker runs pool->run(ctx, j) on it. */
void tide__pool_submit(tide__pool *pool, tide__job *j) {
    j->next = NULL;
    uv_mutex_lock(&pool->mu);
    if (pool->qtail)
        pool->qtail->next = j;
    else
        pool->qhead = j;
    pool->qtail = j;
    pool->queued++;
    uv_cond_signal(&pool->cv);
    uv_mutex_unlock(&pool->mu);
}

/* Takes a job back that no worker started yet. Returns 1 when it was
 * still queued (the caller owns it again), 0 when a worker has it. */
int tide__pool_unqueue(tide__pool *pool, tide__job *j) {
    int found = 0;
    uv_mutex_lock(&pool->mu);
    tide__job **pp = &pool->qhead, *prev = NULL;
    while (*pp) {
        if (*pp == j) {
            *pp = j->next;
            if (pool->qtail == j)
                pool->qtail = prev;
            found = 1;
            break;
        }
        prev = *pp;
        pp = &(*pp)->next;
    }
    uv_mutex_unlock(&pool->mu);
    return found;
}

/* Detaches the list of finished jobs (oldest first) for the loop. */
tide__job *tide__pool_take_done(tide__pool *pool) {
    uv_mutex_lock(&pool->mu);
    tide__job *j = pool->dhead;
    pool->dhead = pool->dtail = NULL;
    uv_mutex_unlock(&pool->mu);
    return j;
}

/* The job a stand-in was started for came back: the pool shrinks back by
 * one (a thread retires when it next looks for work). */
void tide__pool_unreplace(tide__pool *pool) {
    uv_mutex_lock(&pool->mu);
    pool->target--;
    uv_cond_broadcast(&pool->cv);
    uv_mutex_unlock(&pool->mu);
}

/* Asks the threads to finish the queue and exit, joins those not running
 * a job, leaves the others to finish alone (orphans), and returns the jobs
 * that finished and were not taken back yet (the caller owns them). The
 * pool cannot be used after; its memory is released through
 * tide__pool_leave. */
tide__job *tide__pool_stop(tide__pool *pool) {
    if (pool->workers == NULL)
        return NULL;
    int n = pool->nworkers;
    uv_thread_t *orphaned = tide__xcalloc((size_t)n + 1, sizeof(*orphaned));
    int norphans = 0;
    uv_mutex_lock(&pool->mu);
    pool->stopping = 1;
    for (int i = 0; i < n; i++) {
        tide__pool_worker *w = pool->workers[i];
        if (w->job) {
            /* From here on the thread owns w and frees it; the job is
             * never taken back (the loop must not look at its pool). */
            w->orphan = 1;
            w->job->orphaned = 1;
            pool->orphans++;
            orphaned[norphans++] = w->thread;
            pool->workers[i] = NULL;
        }
    }
    uv_cond_broadcast(&pool->cv);
    uv_mutex_unlock(&pool->mu);
    for (int i = 0; i < norphans; i++)
        pthread_detach(orphaned[i]);
    free(orphaned);
    for (int i = 0; i < n; i++) {
        if (pool->workers[i] == NULL)
            continue;
        uv_thread_join(&pool->workers[i]->thread);
        free(pool->workers[i]);
    }
    free(pool->workers);
    pool->workers = NULL;
    uv_mutex_lock(&pool->mu);
    tide__job *done = pool->dhead; /* orphans never add to it */
    pool->dhead = pool->dtail = NULL;
    uv_mutex_unlock(&pool->mu);
    return done;
}

/* The owner is done with a stopped (or never started: then call nothing)
 * pool. Returns 1 when the owner may free its memory now, 0 when orphans
 * still run: the last of them calls pool->release. */
int tide__pool_leave(tide__pool *pool) {
    uv_mutex_lock(&pool->mu);
    pool->owner_gone = 1;
    int last = pool->orphans == 0;
    uv_mutex_unlock(&pool->mu);
    if (last)
        pool_destroy_lock(pool);
    return last;
}
