/* Internal declarations shared by tide's C core and glue (never installed). */
#ifndef TIDE_INTERNAL_H
#define TIDE_INTERNAL_H

#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <uv.h>

#include "tide.h"

#define TIDE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define TIDE_UNUSED(x) ((void)(x))
#define tide__container_of(ptr, type, field) \
    ((type *)((char *)(ptr) - offsetof(type, field)))

#if defined(__GNUC__)
#define tide__likely(x) __builtin_expect(!!(x), 1)
#define tide__unlikely(x) __builtin_expect(!!(x), 0)
#else
#define tide__likely(x) (x)
#define tide__unlikely(x) (x)
#endif

/* Assertions always run: a broken invariant in a scheduler is worth a crash
 * with a location, not silent corruption. */
#define TIDE_ASSERT(e)                                                     \
    (tide__likely(e) ? (void)0 : tide__assert_fail(#e, __FILE__, __LINE__))
void tide__assert_fail(const char *expr, const char *file, int line);

/* ===== ALLOCATION ===== */

/* Out of memory is fatal: these print a message and abort instead of
 * returning NULL, so callers never check. */
void *tide__xmalloc(size_t n);
void *tide__xcalloc(size_t n, size_t size);
void *tide__xrealloc(void *p, size_t n);
char *tide__xstrdup(const char *s);

/* ===== UTF-8 (utf8.c) ===== */

/* Returns the offset of the first byte of s (n bytes) that does not
 * belong to a well-formed UTF-8 sequence (strict: no overlongs, no
 * surrogates, nothing above U+10FFFF), or n when all of s is UTF-8. */
size_t tide__utf8_check(const void *s, size_t n);

/* Returns how many bytes at s (n available) one U+FFFD replaces: the
 * maximal subpart of the ill-formed sequence that starts there (1 to 3),
 * or 0 when a well-formed sequence starts at s or n is 0. */
size_t tide__utf8_bad(const void *s, size_t n);

/* The most bytes tide__utf8_repair writes for n bytes of input: each byte
 * may become a 3-byte U+FFFD. */
#define TIDE_UTF8_REPAIR_MAX(n) (3 * (n))

/* Writes s (n bytes) into out with each maximal subpart of an ill-formed
 * sequence replaced by U+FFFD, and returns the length written. out has
 * room for TIDE_UTF8_REPAIR_MAX(n) bytes and does not overlap s. */
size_t tide__utf8_repair(char *out, const void *s, size_t n);

/* Writes the Unicode scalar value cp (at most 0x10FFFF, not a surrogate)
 * as 1 to 4 bytes of UTF-8 into out and returns how many. */
size_t tide__utf8_put(char *out, uint32_t cp);

/* ===== GRAPH (graph.c) ===== */

enum {
    TIDE__T_MAP = 1,    /* output array fans out into child contexts */
    TIDE__T_GATHER = 2, /* waits for the children of one map */
};

typedef struct {
    uint32_t npreds, nsuccs;
    uint32_t *preds;        /* local indices of predecessors */
    uint32_t *succs;        /* local indices of successors */
    uint32_t depth;         /* longest distance to a sink */
    uint32_t region;        /* map task whose children run this task; 0 = root */
    uint32_t flags;         /* TIDE__T_* */
    uint32_t init_pending;  /* predecessor counter at context start */
    uint32_t gather_of;     /* for a gather: the map it waits on */
} tide__gtask;

/* A compiled pipeline: immutable once tide__graph_compile returned 0.
 * Tasks are numbered 1..n in declaration order; index 0 stands for the
 * context's input. */
typedef struct {
    uint32_t n;
    tide__gtask *t;      /* n + 1 entries; t[0] is unused */
    uint32_t *region_size; /* n + 1 entries: tasks per region (0 = root) */
    uint32_t *roots;     /* per region, a list: see tide__graph_roots */
    uint32_t *roots_off; /* n + 2 offsets into roots, per region */
    uint32_t nsinks;
    uint32_t maxdepth;
    char **names;        /* n + 1 entries, names[0] is unused */
} tide__graph;

/* Describes one task to tide__graph_compile. */
typedef struct {
    const char *name;
    const char **after;  /* names of predecessors, nafter entries */
    uint32_t nafter;
    uint32_t flags;
} tide__gspec;

/* Compiles n task specs into *out. Returns 0, or a negative TIDE_E* code
 * with a message in err (errlen bytes) and the 1-based index of the task
 * that the message is about in *bad (0 when it is about no single task).
 * The specs are borrowed; *out owns copies of everything it needs and is
 * released with tide__graph_free. */
int tide__graph_compile(const tide__gspec *specs, uint32_t n,
                        tide__graph *out, char *err, size_t errlen,
                        uint32_t *bad);
void tide__graph_free(tide__graph *g);

/* ===== READY QUEUE (rq.c) ===== */

enum { TIDE__PRIO_HIGH = 0, TIDE__PRIO_LOW = 1, TIDE__PRIO_LIFO = 2,
       TIDE__NPRIO = 3 };

#define TIDE__RQ_DEPTHS 64

typedef struct {
    uint64_t *buf;
    uint32_t cap;  /* power of two */
    uint32_t head; /* index of the first entry */
    uint32_t len;
} tide__ring;

/* Ready (context, task) pairs, popped by priority class first (high, low,
 * lifo), then by distance to a sink (nearest first), then in the order
 * they became ready (FIFO; the lifo class pops the newest). */
typedef struct {
    tide__ring b[TIDE__NPRIO][TIDE__RQ_DEPTHS];
    uint64_t nonempty[TIDE__NPRIO]; /* bit d set: bucket d has entries */
    size_t len;
} tide__rq;

void tide__rq_init(tide__rq *q);
void tide__rq_free(tide__rq *q);
void tide__rq_push(tide__rq *q, int prio, uint32_t depth, uint64_t v);
/* Pops the first entry into *v; returns 0, or -1 when the queue is empty. */
int tide__rq_pop(tide__rq *q, uint64_t *v);

void tide__ring_push(tide__ring *r, uint64_t v);
int tide__ring_shift(tide__ring *r, uint64_t *v);
int tide__ring_pop(tide__ring *r, uint64_t *v);
void tide__ring_free(tide__ring *r);

/* ===== TIMER HEAP (heap.c) ===== */

typedef struct tide__tentry {
    uint64_t due;   /* uv_now() milliseconds */
    uint64_t seq;   /* ties break in insertion order */
    uint32_t pos;   /* index in the heap, UINT32_MAX when not in it */
    int kind;
    void *data;
} tide__tentry;

/* A binary min-heap of borrowed entries, ordered by (due, seq). Entries
 * record their own position so removal is O(log n). */
typedef struct {
    tide__tentry **h;
    uint32_t len, cap;
    uint64_t seq;
} tide__heap;

void tide__heap_init(tide__heap *hp);
void tide__heap_free(tide__heap *hp);
void tide__heap_insert(tide__heap *hp, tide__tentry *e);
void tide__heap_remove(tide__heap *hp, tide__tentry *e);
tide__tentry *tide__heap_peek(const tide__heap *hp);
static inline int tide__tentry_armed(const tide__tentry *e) {
    return e->pos != UINT32_MAX;
}

/* ===== SCHEDULER (sched.c) ===== */

#define TIDE__CTX_STATUS_MAP(XX) \
    XX(PENDING, "pending")       \
    XX(RUNNING, "running")       \
    XX(WAITING, "waiting")       \
    XX(DONE, "done")             \
    XX(FAILED, "failed")         \
    XX(CANCELLED, "cancelled")

enum {
#define XX(name, str) TIDE__CTX_##name,
    TIDE__CTX_STATUS_MAP(XX)
#undef XX
};
const char *tide__ctx_status_name(int status);

/* What tide__eng_next hands to the Lua runner. */
enum {
    TIDE__OP_NONE = 0,
    TIDE__OP_RUN = 1,    /* run task `task` of context `slot`, `attempt` */
    TIDE__OP_FINISH = 2, /* root context `slot` completed all its tasks */
    TIDE__OP_CHILD = 3,  /* child `slot` of `parent` (map `task`) completed */
    TIDE__OP_FAIL = 4,   /* attempt (`slot`, `task`) failed with `code` */
    TIDE__OP_BATCH = 5,  /* the batch of task `task` waited long enough */
    TIDE__OP_QUIT = 6,   /* (to an idle runner) the engine closes: return */
};

typedef struct {
    int op;
    uint32_t slot, task, attempt, parent, map_index;
    int code;
} tide__op;

enum {
    TIDE__ATT_RUNNING = 1, /* started (with a deadline) or being resumed */
    TIDE__ATT_PARKED,      /* its coroutine yielded to the engine */
    TIDE__ATT_READY,       /* in the resume queue */
    TIDE__ATT_RETRY,       /* waiting for its next attempt; no coroutine */
};

enum { TIDE__TM_DEADLINE = 1, TIDE__TM_WAKE, TIDE__TM_RETRY, TIDE__TM_NOOP,
       TIDE__TM_LIMIT, TIDE__TM_BATCH };

/* An attempt record. Plain attempts of tasks without a timeout have none:
 * one is made when the attempt has a deadline, yields, or waits for a
 * retry. The engine owns it; it is found by index + generation ("handle")
 * so late wake-ups of a recycled record are recognised. */
typedef struct tide__att {
    uint32_t idx, gen;
    uint32_t slot, task, attempt; /* task is the global index */
    int state;
    int result;                   /* what a resume passes: see lrun.c */
    uint32_t gave;                /* root slot whose concurrency slot it gave back, or 0 */
    void *co;                     /* the parked coroutine (glue-owned) */
    void *op;                     /* what it waits on (glue-owned): */
    void (*op_cancel)(void *op);  /* called when the coroutine is dropped */
    /* When op began to run (uv_hrtime ns; 0: not yet), for operations
     * that queue first (sync jobs): the attempt's time limit counts from
     * then. NULL: it counts from the attempt's start. */
    uint64_t (*op_started)(void *op);
    uint32_t unstarted;           /* deadlines passed with op not started */
    int co_ref;                   /* its anchor, managed by the glue */
    uint64_t t0;                  /* uv_hrtime() at its start, if timing */
    tide__tentry deadline;        /* per-attempt timeout */
    tide__tentry wake;            /* sleep/park timer, or the retry time */
    struct tide__att *next_in_ctx, *prev_in_ctx;
    uint32_t next_free;
} tide__att;

typedef struct {
    uint32_t slot;
    uint32_t parent;     /* slot of the parent context, 0 for a root */
    uint32_t map_task;   /* local index of the map that made this child */
    uint32_t map_index;  /* 1-based position in the map's output */
    uint32_t graph;      /* index into eng->graphs */
    uint32_t gbase;      /* global index of task 0 */
    uint8_t status, prio, admitted, released;
    uint32_t given;      /* parked waiters that gave its concurrency slot back */
    uint32_t remaining;  /* tasks of its region not done yet */
    uint32_t maps_out;   /* maps whose children have not all finished */
    uint32_t nqueued;    /* its entries in the ready queue */
    uint32_t nrunning;   /* attempts started and not finished */
    uint32_t nretry;     /* attempts waiting for a retry timer */
    uint32_t first_child, next_sibling, prev_sibling;
    uint32_t *pending;   /* per task: predecessors not done */
    uint32_t *kids;      /* per task: a map's unfinished children */
    uint32_t *taken;     /* per task: predecessors that ran (not bypassed) */
    uint16_t *attempt;   /* per task: current attempt number - 1 */
    uint8_t *tstate;     /* per task: TIDE__TS_* */
    tide__att *atts;     /* attempt records of this context */
} tide__ctx;

/* What became of a task in a context. */
enum { TIDE__TS_WAITING = 0, TIDE__TS_DONE = 1, TIDE__TS_BYPASSED = 2 };

/* A limiter: a token bucket and a concurrency cap shared by the tasks that
 * name it. Attempts that cannot start wait in its queue, not in the ready
 * queue, and do not count as running. */
typedef struct {
    double rate;           /* tokens per second; <= 0: no rate limit */
    double burst;          /* bucket size */
    double tokens;
    uint64_t last_ns;      /* uv_hrtime() of the last refill */
    uint32_t concurrency;  /* 0: no cap */
    uint32_t inflight;
    uint64_t started;      /* attempts admitted so far (for tests) */
    tide__ring waitq;      /* (slot << 32 | local task) */
    tide__tentry refill;   /* wakes the queue when a token is due */
} tide__limiter;

/* Per-task counters for metrics and the dashboard, kept for every global
 * task. The counts cost one increment each on the hot path; durations are
 * taken only while eng->timing is set (a server turns it on), since they
 * need two clock reads per attempt. Bucket k of `hist` counts attempts
 * that took at most tide__hist_bounds[k] seconds (and more than the bound
 * before); the last bucket has no bound (+Inf). */
#define TIDE__NHIST 14
extern const double tide__hist_bounds[TIDE__NHIST - 1];
typedef struct {
    uint64_t attempts; /* attempts started (retries included) */
    uint64_t done;     /* attempts that succeeded */
    uint64_t failures; /* attempts that failed, retried or not */
    uint64_t retries;  /* retries scheduled */
    uint32_t running;  /* attempts running or parked now */
    uint32_t retrying; /* attempts waiting for their retry time now */
    uint64_t hist[TIDE__NHIST];
    double sum;        /* seconds, over the attempts in hist */
} tide__tstat;

typedef struct tide__eng tide__eng;

struct tide__eng {
    uv_loop_t *loop;
    uv_timer_t timer;     /* armed for the heap's first entry */
    uv_idle_t idle;       /* active while there is work to drain */
    tide__rq rq;
    tide__heap heap;
    tide__graph **graphs; /* borrowed: owned by the Lua pipeline objects */
    uint32_t *gbase;      /* global index of each graph's task 0 */
    uint32_t ngraphs;
    uint32_t ntasks;      /* global task indices in use (0 is unused) */
    double *timeout_ms;   /* per global task; 0 = none */
    uint32_t *gtask_graph;/* per global task: its graph */
    uint32_t *gtask_lim;  /* per global task: limiter index + 1, or 0 */
    tide__limiter **lims;
    uint32_t nlims;
    uint32_t route[64];   /* successors chosen by a router, for the next */
    int nroute;           /* tide__eng_complete; -1: no router */
    tide__ctx **ctx;      /* by slot; ctx[0] is unused */
    uint32_t nslots, ctx_cap, *free_slots, nfree;
    tide__ring admit[TIDE__NPRIO];
    uint32_t concurrency, nactive, nlive;
    tide__att **atts;     /* by index; atts[0] is unused */
    uint32_t natts, att_free;
    tide__ring resumeq;   /* att indices ready to resume */
    tide__ring doneq;     /* contexts that completed: slots */
    tide__ring failq;     /* att indices whose attempt the engine failed */
    tide__ring batchq;    /* global tasks whose batch should run now */
    tide__tentry **batch_t;/* per global task: its batch timer, or NULL */
    uint32_t nbatch_t;
    tide__att *cur;       /* attempt record of the running body, if any */
    uint32_t cur_slot, cur_task;
    uint64_t cur_t0;      /* uv_hrtime() when it started, if timing */
    tide__tstat *tstat;   /* per global task */
    int timing;           /* measure attempt durations into tstat */
    uint64_t slice_end;   /* uv_hrtime() at which a drain should stop */
    uint32_t slice_count;
    int draining, closing;
    /* The glue drops an abandoned coroutine's anchor here. */
    void (*drop_co)(tide__eng *eng, tide__att *att);
    void (*kick)(tide__eng *eng); /* work became ready: start draining */
};

int tide__eng_init(tide__eng *eng, uv_loop_t *loop, uint32_t concurrency);
/* Frees everything the engine owns; the loop's handles must already be
 * closed by the glue (the engine embeds them). */
void tide__eng_free(tide__eng *eng);
uint32_t tide__eng_attach(tide__eng *eng, tide__graph *g,
                          const double *timeout_ms, const uint32_t *lims);
uint32_t tide__eng_limiter(tide__eng *eng, double rate, double burst,
                           uint32_t concurrency);
int tide__eng_bypassed(tide__eng *eng, uint32_t slot, uint32_t local);
void tide__eng_batch_timer(tide__eng *eng, uint32_t gtask, double ms);
void tide__eng_detach(tide__eng *eng);
uint32_t tide__eng_submit(tide__eng *eng, uint32_t graph, int prio);
uint32_t tide__eng_spawn(tide__eng *eng, uint32_t parent, uint32_t gtask,
                         uint32_t map_index);
void tide__eng_next(tide__eng *eng, tide__op *op);
void tide__eng_complete(tide__eng *eng, uint32_t slot, uint32_t gtask);
void tide__eng_retry(tide__eng *eng, uint32_t slot, uint32_t gtask,
                     double delay_ms);
void tide__eng_finalize(tide__eng *eng, uint32_t slot, int status);
void tide__eng_release(tide__eng *eng, uint32_t slot);
void tide__eng_fail(tide__eng *eng, uint32_t slot, uint32_t gtask,
                    int status);
int tide__eng_status(tide__eng *eng, uint32_t slot);
tide__att *tide__eng_current_att(tide__eng *eng);
tide__att *tide__eng_att_get(tide__eng *eng, double handle);
double tide__eng_att_handle(const tide__att *att);
void tide__eng_park(tide__eng *eng, tide__att *att, double timeout_ms,
                    int give_slot);
void tide__eng_wake(tide__eng *eng, tide__att *att, int result);
void tide__eng_abandon(tide__eng *eng, tide__att *att, int code);
void tide__eng_yielded(tide__eng *eng, tide__att *att);
int tide__eng_break_deadlocks(tide__eng *eng);
void tide__eng_noop_timer(tide__eng *eng, tide__tentry *e, double ms);
void tide__eng_arm(tide__eng *eng);
int tide__eng_has_work(const tide__eng *eng);

/* ===== WORKER THREADS (pool.c) ===== */

typedef struct tide__job {
    struct tide__job *next;
    void *in;          /* input bytes (owned by the job) */
    size_t inlen;
    char *key, *task;  /* which function to run (owned) */
    char *code;        /* its bytecode when it has no file (owned) */
    size_t codelen;
    double timeout_ms; /* per attempt; 0: none (the worker's count hook) */
    _Atomic uint64_t started; /* uv_hrtime when a worker took it, or 0 */
    int status;        /* set by the worker: 0 ok, else failed */
    char *out;         /* result bytes or error text (owned, malloc'd) */
    size_t outlen;
    char *trace;       /* traceback of a failure (owned) */
    int refs;          /* loop side: the pool's and the Lua box's */
    int cancelled;     /* loop side: nobody waits for the result */
    int done;          /* loop side: taken back from the done queue */
    int stood_in;      /* loop side: a stand-in thread replaced its worker */
    int uncounted;     /* loop side: no longer keeps the loop alive */
    int orphaned;      /* loop side: its pool stopped while it ran */
    uint64_t cancelled_at; /* loop side: uv_now when its attempt gave up */
    double att;        /* loop side: attempt to wake */
    void *owner;       /* loop side: the glue's pool record */
} tide__job;

typedef struct tide__pool tide__pool;

typedef struct {
    tide__pool *pool;
    int index;
    uv_thread_t thread;
    void *ctx;         /* from worker_init, on the worker thread */
    tide__job *job;    /* the job it runs (under the mutex), or NULL */
    int orphan;        /* the pool stopped while it ran: it frees itself */
} tide__pool_worker;

struct tide__pool {
    uv_mutex_t mu;
    uv_cond_t cv;
    tide__job *qhead, *qtail; /* waiting for a worker */
    tide__job *dhead, *dtail; /* finished, for the loop */
    int stopping, running;
    uint64_t queued;
    tide__pool_worker **workers; /* every thread ever started */
    int nworkers;
    int target;        /* threads wanted */
    int alive;         /* threads not retired */
    uint64_t replaced; /* threads started to stand in for stuck ones */
    uv_async_t *async;
    int orphans;       /* threads still running jobs after tide__pool_stop */
    int owner_gone;    /* tide__pool_leave was called */
    void (*release)(tide__pool *pool); /* frees the pool's memory */
    void *(*worker_init)(tide__pool *pool, int index);
    void (*worker_free)(void *ctx);
    void (*run)(void *ctx, tide__job *j);
    void *udata;
};

int tide__pool_start(tide__pool *pool, int n);
int tide__pool_replace(tide__pool *pool);
void tide__pool_unreplace(tide__pool *pool);
void tide__pool_submit(tide__pool *pool, tide__job *j);
int tide__pool_unqueue(tide__pool *pool, tide__job *j);
tide__job *tide__pool_take_done(tide__pool *pool);
tide__job *tide__pool_stop(tide__pool *pool);
int tide__pool_leave(tide__pool *pool);

#endif
