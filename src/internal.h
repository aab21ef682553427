/* Internal declarations shared by tide's C core and glue (never installed). */
#ifndef TIDE_INTERNAL_H
#define TIDE_INTERNAL_H

#include <signal.h>
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

/* Blocks an engine grows by doubling and drops all at once when it closes
 * (its ready-queue rings, its slot table, the slabs of its contexts).
 * Those of 64 KiB and more come in power-of-two classes, and a freed one
 * is kept for the next engine of the process instead of going back to the
 * system (up to TIDE__KEEP_MAX bytes in all; see alloc.c for why). `*cap`
 * is the size wanted on entry and the size got on return; free with that
 * size. Thread-safe. */
#define TIDE__KEEP_MAX ((size_t)64 << 20)
void *tide__keep_alloc(size_t *cap);
void tide__keep_free(void *p, size_t cap);
/* Bytes kept for reuse now (for the specs). */
size_t tide__keep_held(void);

/* Opens /dev/null on whichever of fds 0, 1 and 2 is closed (src/stdfd.c);
 * returns, and stdfd_closed() tells later, which were (bit n: fd n). */
int tide__stdfd_reserve(void);
int tide__stdfd_closed(void);

/* ===== JOURNAL (journal.c) ===== */

/* The operations a journal applies, each one statement. */
enum {
    TIDE__J_ITEM = 0,   /* a: key, b: kind, status, data: the item */
    TIDE__J_META,       /* a: key, b: value */
    TIDE__J_FILE,       /* a: file name, n: its committed length */
    TIDE__J_CHECKPOINT, /* a: key, b: task, data: its output */
    TIDE__J_FORGET,     /* a: key: its checkpoints go */
    TIDE__J_FLUSH,      /* a: "name\tlength\n" lines, n: items up to n are
                           in those lengths; applied as one */
    TIDE__J_NKINDS
};

typedef struct tide__journal tide__journal;

/* Opens (creating it when missing) the journal at path and starts its
 * writer thread; on failure returns TIDE_EIO with a message in err. */
int tide__journal_open(const char *path, tide__journal **out, char *err,
                       size_t errlen);
/* Queues one operation (copying every argument) and returns its sequence
 * number; loop thread only. */
int64_t tide__journal_put(tide__journal *j, int kind, const char *a,
                          size_t alen, const char *b, size_t blen,
                          const char *status, const char *data, size_t dlen,
                          int64_t n);
/* The sequence number of the last operation on the device, and of the
 * last one queued. */
int64_t tide__journal_committed(tide__journal *j);
/* Commits so far, operations they held, and the sum and maximum of the
 * time from queueing an operation to its commit (the oldest of each). */
void tide__journal_stats(tide__journal *j, uint64_t *commits, uint64_t *ops,
                         uint64_t *wait_sum_ns, uint64_t *wait_max_ns);
int64_t tide__journal_last(tide__journal *j);
/* 1 and the message when writing failed (sticky), else 0. */
int tide__journal_error(tide__journal *j, char *buf, size_t len);
/* The async handle the writer sends after each commit (NULL: none). */
void tide__journal_set_notify(tide__journal *j, uv_async_t *notify);
/* The read-only connection, for the loop thread (a sqlite3 *). */
struct sqlite3 *tide__journal_reader(tide__journal *j);
/* Commits what is queued, stops the writer and frees the journal;
 * returns TIDE_EIO with the message when writing had failed. */
int tide__journal_close(tide__journal *j, char *err, size_t errlen);
int tide__journal_format(void);

/* ===== RESULT CACHE (cache.c) ===== */

typedef struct tide__cache tide__cache;

typedef struct {
    int64_t entries, bytes, hits;
    int64_t older;   /* entries made before the cutoff given to stats */
    int64_t dropped; /* entries this process dropped (queue full) */
    double oldest, newest; /* when entries were made (Unix time; 0: none) */
} tide__cache_stats_t;

/* Opens (creating it when missing) the cache at path and starts its
 * writer thread. Returns 0; TIDE_EIO when the place cannot hold a cache
 * (cannot be opened, created or written); TIDE_EINVAL when the file is not
 * a cache this tide can use (not SQLite, corrupt, another SQLite file, a
 * newer format); with a message in err. */
int tide__cache_open(const char *path, tide__cache **out, char *err,
                     size_t errlen);
/* Looks key up (loop thread). Returns 1 with the value in *val, *vlen
 * (valid until tide__cache_get_end, which must follow); 0 when there is no
 * entry or it is older than ttl seconds (ttl <= 0: no limit); TIDE_EAGAIN
 * when the file stayed locked, TIDE_EIO on another failure (message in
 * err). */
int tide__cache_get(tide__cache *c, const char *key, size_t klen, double ttl,
                    const char **val, size_t *vlen, char *err, size_t errlen);
void tide__cache_get_end(tide__cache *c);
/* Queue an entry (made now), a hit to count, or the removal of the
 * entries made more than older_than seconds ago (< 0: all); each copies
 * its arguments. Return 0, or -1 when nothing was queued: the writer
 * failed (tide__cache_error says why) or, for a put, the queue is full. */
int tide__cache_put(tide__cache *c, const char *key, size_t klen,
                    const char *task, size_t tlen, const char *val,
                    size_t vlen);
int tide__cache_hit(tide__cache *c, const char *key, size_t klen);
int tide__cache_clear(tide__cache *c, double older_than);
/* What the file holds (committed entries), with `older` counting those
 * made more than older_than seconds ago. Returns 0 or TIDE_EIO. */
int tide__cache_stats(tide__cache *c, double older_than,
                      tide__cache_stats_t *s, char *err, size_t errlen);
/* 1 and the message when the writer failed (sticky), else 0. */
int tide__cache_error(tide__cache *c, char *buf, size_t len);
/* Commits what is queued, stops the writer and frees the cache; returns
 * TIDE_EIO with the message when writing had failed. */
int tide__cache_close(tide__cache *c, char *err, size_t errlen);
/* The wall clock, in seconds since the Epoch: entries outlive processes. */
double tide__cache_now(void);

/* ===== REDIS CLIENT (redis.c) ===== */

/* One connection to a Redis server on a uv loop, through hiredis's async
 * API and its libuv adapter. Commands may be sent at any time: while the
 * connection is down they wait (in order) for it to come back. Every
 * command has a deadline; a failed or lost connection is made again with
 * a growing delay. Loop thread only. */
typedef struct tide__redis tide__redis;
struct redisReply;

/* Why a command ended without a reply. */
enum {
    TIDE__REDIS_OK = 0,
    TIDE__REDIS_ETIMEDOUT, /* no reply within its time limit */
    TIDE__REDIS_ECONN,     /* the connection was lost after it was sent */
    TIDE__REDIS_ECLOSED,   /* the client was closed */
    TIDE__REDIS_EAUTH      /* the server refused the user and password */
};

/* Called once per command: with the reply (err 0; an error reply is a
 * reply) or with err and a message (reply NULL). The reply is valid only
 * during the call. */
typedef void (*tide__redis_fn)(void *ud, struct redisReply *reply, int err,
                               const char *msg);
/* Told when the connection comes up (up 1) or fails or goes down (up 0,
 * with the reason). */
typedef void (*tide__redis_state_fn)(void *ud, int up, const char *msg);

typedef struct {
    double connect_timeout_ms; /* one connection attempt, at most */
    double backoff_min_ms, backoff_max_ms; /* delay before a new attempt */
    int db;                                /* SELECT db after connecting */
    /* AUTH [user] password after connecting, when password is not NULL;
     * both are copied by tide__redis_open. */
    const char *user, *password;
} tide__redis_opts;

tide__redis *tide__redis_open(uv_loop_t *loop, const char *host, int port,
                              const tide__redis_opts *opts,
                              tide__redis_state_fn on_state, void *state_ud);
/* Sends (or queues) a command; fn(ud, ...) is called exactly once, never
 * from inside this call. Returns 0, or -1 when the client is closed (fn
 * is then not called). */
int tide__redis_send(tide__redis *r, int argc, const char **argv,
                     const size_t *lens, double timeout_ms, tide__redis_fn fn,
                     void *ud);
/* Ends every command still waiting with TIDE__REDIS_ECLOSED (fn is called
 * from inside this call), closes the connection and frees the client
 * once libuv has closed its handles. */
void tide__redis_close(tide__redis *r);
/* Counters: commands sent, replies, timeouts, connections made, attempts
 * that failed, commands waiting now. */
typedef struct {
    uint64_t sent, replies, timeouts, connects, failures;
    uint32_t waiting;
    int up;
} tide__redis_stats;
void tide__redis_get_stats(tide__redis *r, tide__redis_stats *out);

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

/* ===== WATCHDOG (watchdog.c) ===== */

/* A task body runs on the loop thread until it returns or yields; one that
 * does neither freezes the loop. One watchdog thread per process watches
 * every engine through the record below, which each engine embeds.
 *
 * The loop thread publishes which segment of body it runs: `seq` is odd
 * while a body runs and goes up by one when a body starts, resumes,
 * returns or yields (tide__wd_enter / tide__wd_leave, two stores per
 * task, no lock, no clock). `limit_ms` is the running segment's limit,
 * stored before seq (release), so a reader that acquired seq and reads
 * seq again unchanged holds the limit of that segment. The watchdog notes
 * when it first saw an odd seq; if seq has not changed `limit_ms` later,
 * the body has run that long without yielding. It then asks the glue to
 * stop that segment: it stores `target` (the seq to stop) with `why` and
 * `ran_ms`, sets `req` and sends TIDE__WD_SIGNO to the loop thread (`tid`)
 * whose handler calls the glue's arm function there. The glue's hook,
 * also on the loop thread, stops the body only while seq still equals
 * target, so a body that yielded or returned in the meantime is never
 * hit; it stores `fired` when it did stop it. */
typedef struct tide__wd {
    /* Written by the loop thread. */
    _Atomic uint64_t seq;
    _Atomic uint32_t limit_ms;
    _Atomic uint32_t task;      /* global task index of the running body */
    _Atomic int tid;            /* kernel id of the thread that drains */
    /* Written by the watchdog thread, read on the loop thread. */
    _Atomic uint64_t target;
    _Atomic int why;            /* TIDE__WD_TIMEOUT, or the signal number */
    _Atomic uint32_t ran_ms;
    _Atomic int req;            /* arm the hook at the next TIDE__WD_SIGNO */
    /* Written on the loop thread by the glue's hook. */
    _Atomic uint64_t fired;
    /* The watchdog thread's own, under its lock (watchdog.c). */
    uint64_t seen_seq, seen_at, sig_seq, sig_at, asked_at;
    int warned, registered;
    char **names;               /* per global task, copies (for warnings) */
    uint32_t nnames;
    struct tide__wd *next, *prev;
} tide__wd;

#define TIDE__WD_TIMEOUT 0
#define TIDE__WD_DEFAULT_MS 5000 /* the limit of a task without a timeout */
/* The signal the watchdog sends a loop thread. SIGURG's default action is
 * to ignore it (a stray one harms nothing), and nothing else in a tide
 * process uses out-of-band socket data, its only other use. */
#define TIDE__WD_SIGNO SIGURG

/* A body of global task `task` starts or resumes with this limit (ms;
 * <= 0: the default). */
static inline void tide__wd_enter(tide__wd *wd, uint32_t task,
                                  double limit_ms) {
    uint32_t ms = TIDE__WD_DEFAULT_MS;
    if (limit_ms > 0 && limit_ms < 4e9) {
        ms = (uint32_t)limit_ms;
        ms += (double)ms < limit_ms; /* never earlier than the limit */
    } else if (limit_ms > 0) {
        ms = UINT32_MAX;
    }
    uint64_t s = atomic_load_explicit(&wd->seq, memory_order_relaxed);
    atomic_store_explicit(&wd->limit_ms, ms, memory_order_relaxed);
    atomic_store_explicit(&wd->task, task, memory_order_relaxed);
    atomic_store_explicit(&wd->seq, (s | 1) + (s & 1 ? 2 : 0),
                          memory_order_release);
}

/* The running body returned or yielded (harmless when none runs). */
static inline void tide__wd_leave(tide__wd *wd) {
    uint64_t s = atomic_load_explicit(&wd->seq, memory_order_relaxed);
    if (s & 1)
        atomic_store_explicit(&wd->seq, s + 1, memory_order_release);
}

/* Starts watching wd (the watchdog thread starts with the first). `arm`
 * is called in a signal handler on a loop thread that got TIDE__WD_SIGNO:
 * it must be async-signal-safe, and find its engine itself. Returns 0 or
 * a negative libuv error. */
int tide__wd_register(tide__wd *wd, void (*arm)(void));
void tide__wd_unregister(tide__wd *wd);
/* Gives the watchdog the name of global task i for i < n (copied), for
 * the warning about a body it could not stop. */
void tide__wd_names(tide__wd *wd, const char *const *names, uint32_t n);
/* Records the calling thread as the one that drains wd's engine. */
void tide__wd_here(tide__wd *wd);
/* Tells the watchdog that SIGINT or SIGTERM arrived: a body running since
 * before it is stopped after a short grace. Async-signal-safe. */
void tide__wd_note_signal(int signum);

/* ===== FORK =====
 *
 * Threads do not cross fork(2): a child has only the thread that forked,
 * while the memory of the parent's engines, pools and locks comes along.
 * The fork generation counts the forks this process has gone through
 * since its first engine (a child's handler adds one), so that an object
 * can tell it was made in an ancestor (its generation differs) and refuse
 * to be used rather than wait for threads that do not exist here. */
unsigned tide__fork_gen(void);
/* Makes sure the fork handlers are installed (idempotent). */
void tide__fork_watch(void);

/* ===== STOP SIGNALS (stopsig.c) ===== */

/* SIGINT and SIGTERM through sigaction, not libuv: the first one wakes
 * the loops that watch it (through the watcher's uv_async, whose callback
 * the caller gives) and the watchdog; the second ends the process at once
 * with 128 + its number, even while a loop is stuck. */
typedef struct tide__stopsig {
    uv_async_t async;    /* first: the handle; its data is the caller's */
    int signum;
    _Atomic int pending; /* signals not yet taken by tide__stopsig_take */
    int watching;
} tide__stopsig;

/* Whether tide handles signum this way (SIGINT, SIGTERM). */
int tide__stopsig_handles(int signum);
/* Initializes w->async on loop with cb and starts watching signum.
 * Returns 0 or a negative libuv error (w->async is then not open). */
int tide__stopsig_watch(tide__stopsig *w, uv_loop_t *loop, int signum,
                        uv_async_cb cb);
/* Stops watching (idempotent); the caller then closes w->async. */
void tide__stopsig_unwatch(tide__stopsig *w);
/* How many signals arrived for w since the last call. */
int tide__stopsig_take(tide__stopsig *w);
/* uv_thread_create for every thread tide starts (workers, the journal's
 * and the cache's writers): the thread starts with every signal blocked
 * and keeps them so, so that a signal meant for the host (nginx's SIGIO, a
 * SIGCHLD, a SIGINT) is delivered to one of the host's own threads, whose
 * handler expects to run there. Returns uv_thread_create's result. */
int tide__thread_start(uv_thread_t *t, void (*fn)(void *), void *arg);

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
    TIDE__OP_SLOW = 7,   /* task `task` of context `slot`, which ran past the
                          * slow mark (tide__eng_sweep), just completed */
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
 * so late wake-ups of a recycled record are recognised.
 *
 * co, op, op_cancel and op_started belong to the glue, yet live here and
 * not in a glue record that embeds this one: the engine allocates and
 * recycles attempt records itself, so nothing can embed them, and it
 * reads these fields: a held coroutine is what makes it call
 * eng->drop_co when it abandons the attempt, and op_started moves the
 * deadline of an operation that queues first. They are opaque pointers:
 * no Lua type reaches the core. */
typedef struct tide__att {
    uint32_t idx, gen;
    uint32_t slot, task, attempt; /* task is the global index */
    int state;
    /* What the parked body's wait returns when it is resumed (1: woken,
     * 0: its timer ran out; see leng_drain in src/lua/lengine.c), or the
     * code of an attempt the engine failed (TIDE__OP_FAIL). */
    int result;
    uint32_t gave;                /* root slot whose concurrency slot it gave back, or 0 */
    void *co;                     /* the parked coroutine (glue-owned) */
    void *op;                     /* what it waits on (glue-owned): */
    void (*op_cancel)(void *op);  /* called when the coroutine is dropped */
    /* When op began to run (uv_hrtime ns; 0: not yet), for operations
     * that queue first (sync jobs): the attempt's time limit counts from
     * then. NULL: it counts from the attempt's start. */
    uint64_t (*op_started)(void *op);
    uint32_t unstarted;           /* deadlines passed with op not started */
    uint64_t t0;                  /* uv_hrtime() at its start, if timing */
    /* uv_now() (ms) when the record was made: at the attempt's start when
     * it has a deadline, else when its body first parked. The slow sweep
     * (tide__eng_sweep) reads it; nothing on a task's path does. */
    uint64_t born;
    int slow; /* the sweep reported it: its completion is reported too */
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

/* ===== TOKEN BUCKET (bucket.c) ===== */

/* Holds up to `burst` tokens and gains `rate` per second; a start takes
 * one. Times are nanoseconds on the caller's clock, passed in, so the
 * arithmetic can be tested with a simulated one. */
typedef struct {
    double rate;      /* tokens per second; <= 0: no limit, takes succeed */
    double burst;     /* capacity, at least 1 */
    double tokens;    /* as of last_ns, the last take or full bucket */
    uint64_t last_ns;
} tide__bucket;

/* A bucket that starts full. */
void tide__bucket_init(tide__bucket *b, double rate, double burst,
                       uint64_t now_ns);
/* Tokens at now_ns, fractional, at most burst; changes nothing. */
double tide__bucket_tokens(const tide__bucket *b, uint64_t now_ns);
/* Brings a bucket that is full by now_ns up to date. Counts never need
 * it (they are computed from the last take); it keeps the time they are
 * computed over short. */
void tide__bucket_refill(tide__bucket *b, uint64_t now_ns);
/* Takes a token if there is one at now_ns; returns whether it did. */
int tide__bucket_take(tide__bucket *b, uint64_t now_ns);
/* Whole tokens at now_ns (UINT32_MAX without a rate). */
uint32_t tide__bucket_avail(tide__bucket *b, uint64_t now_ns);
/* Nanoseconds from now_ns until a take succeeds (0: it would now). */
uint64_t tide__bucket_wait_ns(const tide__bucket *b, uint64_t now_ns);

/* A limiter: a token bucket and a concurrency cap shared by the tasks that
 * name it. Attempts that cannot start wait in its queue, not in the ready
 * queue, and do not count as running. */
typedef struct {
    tide__bucket bucket;   /* on uv_hrtime(); rate <= 0: no rate limit */
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
    uint32_t nslots, ctx_cap, *free_slots, nfree, free_cap;
    /* Context blocks (sched.c, ctx_block): carved from slabs the engine
     * owns (linked through their first word), a freed block kept on the
     * spare list of its size class. */
    void *slabs;
    char *slab_pos, *slab_end;
    void *ctx_spare[64];
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
    /* What the watchdog thread reads (watchdog.c). The glue's hook fills
     * part of it (fired), but it stays in the core record: the watchdog
     * thread reaches every engine through it, with no glue in between. */
    tide__wd wd;
    uint32_t slice_count;
    int draining, closing;
    /* The engine's calls out to the glue stay here, as a uv handle holds
     * its callbacks, because the engine calls them. Everything else of the
     * glue's (its Lua state, runners, idle list, subprocess list) is in the
     * record that embeds this one (src/lua/lengine.c: leng, reached with
     * tide__container_of). drop_co drops an abandoned coroutine's anchor. */
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
/* Calls fn(ud, slot, gtask) once for each attempt that has been running
 * or parked for at least min_ms and was not reported before; such an
 * attempt is marked slow, and its successful completion is handed to the
 * runner as TIDE__OP_SLOW (before anything that completion causes).
 * Returns how many it reported. The attempts without a record (plain
 * bodies that never yielded) are not seen: they hold the loop, so no
 * sweep runs while they do. */
uint32_t tide__eng_sweep(tide__eng *eng, uint64_t min_ms,
                         void (*fn)(void *ud, uint32_t slot, uint32_t gtask),
                         void *ud);
/* Writes to out (at most cap) the local indices of the tasks of context
 * slot that are done and feed a task that is not (neither done nor
 * bypassed; a map's inner tasks, which run in its children, count as not
 * done): what a resume needs to go on from where the context is. Returns how many there are (may exceed cap). */
uint32_t tide__eng_frontier(tide__eng *eng, uint32_t slot, uint32_t *out,
                            uint32_t cap);
/* The slot, global task and attempt number of the running body, without
 * making an attempt record; returns 0 when no body runs. */
int tide__eng_current(tide__eng *eng, uint32_t *slot, uint32_t *task,
                      uint32_t *attempt);
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

/* What the pool knows of a job. The caller embeds it in its own job
 * record (src/lua/lpool.c: lpool_job), which holds what to run, the
 * result and who waits, and finds that record with tide__container_of in
 * pool->run and in the lists the pool hands back. */
typedef struct tide__job {
    struct tide__job *next;   /* the pool's queues, under its mutex */
    _Atomic uint64_t started; /* uv_hrtime when a worker took it, or 0 */
    int orphaned;      /* set by tide__pool_stop: its pool stopped while a
                        * worker ran it, and the job is never handed back */
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

/* The caller embeds the pool in its own record and reaches that record
 * from the callbacks (the pool's calls out) with tide__container_of. */
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
    /* Drops the pool's reference to a job that an orphan thread finished
     * (called on that thread). */
    void (*job_release)(tide__job *j);
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
