/* The scheduler: contexts, the ready queue, attempts, retries and timers.
 *
 * DESIGN
 * ------
 * A context is one input flowing through a pipeline; it lives in a slot
 * (a small integer the Lua side uses to index its own tables of values).
 * The engine keeps, per context, a predecessor counter and an attempt
 * number per task. tide__eng_next hands the Lua runner one operation at a
 * time: a finished context, an attempt the engine failed (timeout,
 * deadlock), or a (context, task) pair to run, taken from the ready queue.
 *
 * Slots and their lifetime: a slot is freed only when the Lua side has
 * released it (it took the result) and no queue entry or running attempt
 * refers to it any more, so a stale entry can never run a task of a
 * recycled slot. Attempt records carry a generation for the same reason:
 * the resume and fail queues hold handles, and a handle whose generation
 * changed is skipped.
 *
 * Nothing here calls Lua. The glue (src/lua/lengine.c) drains the queues
 * by resuming runner coroutines, and is told through eng->kick when work
 * became ready and through eng->drop_co when a parked coroutine is
 * abandoned. */
#include <math.h>
#include <string.h>

#include "internal.h"

const char *tide__ctx_status_name(int status) {
    switch (status) {
#define XX(name, str) case TIDE__CTX_##name: return str;
        TIDE__CTX_STATUS_MAP(XX)
#undef XX
    }
    return "unknown";
}

#define ENG_HANDLE(att) (((uint64_t)(att)->gen << 32) | (att)->idx)
#define ATT_GEN_LIMIT (1u << 21) /* 2^21 * 2^32 = 2^53 */
/* A doneq entry with this bit is not a context that completed but a slow
 * attempt that succeeded: (task << 32 | slot), see tide__eng_sweep. */
#define DONEQ_SLOW (1ull << 63)

static void eng_on_timer(uv_timer_t *t);
static void ctx_maybe_free(tide__eng *eng, tide__ctx *c);
static void ctx_enqueue(tide__eng *eng, tide__ctx *c, uint32_t i);
static void eng_timer_add(tide__eng *eng, tide__tentry *e, int kind,
                          double ms);

int tide__eng_init(tide__eng *eng, uv_loop_t *loop, uint32_t concurrency) {
    memset(eng, 0, sizeof(*eng));
    eng->loop = loop;
    eng->concurrency = concurrency ? concurrency : 1;
    tide__rq_init(&eng->rq);
    tide__heap_init(&eng->heap);
    eng->nslots = 1; /* slot 0 means "no context" */
    eng->nroute = -1;
    eng->natts = 1;
    int rc = uv_timer_init(loop, &eng->timer);
    if (rc == 0)
        rc = uv_idle_init(loop, &eng->idle);
    return rc;
}

/* ===== CONTEXT BLOCKS =====
 *
 * A context is one block: its record, then its per-task arrays. Blocks
 * come in classes of 64 bytes; those up to CTX_NCLASS classes are carved
 * from 256 KiB slabs (tide__keep_alloc: a later engine reuses them without
 * faulting their pages in again), larger ones are malloc'd. A slot keeps
 * its block for the next context it holds when the class matches;
 * otherwise the block goes to the spare list of its class. Everything is
 * released once, by tide__eng_free. */
#define CTX_ALIGN 64
#define CTX_NCLASS 64
#define CTX_SLAB ((size_t)256 << 10)

static size_t ctx_bytes(uint32_t ntask) {
    uint32_t n = ntask + 1;
    return sizeof(tide__ctx) +
           n * (3 * sizeof(uint32_t) + sizeof(uint16_t) + sizeof(uint8_t));
}

static uint32_t ctx_class(size_t bytes) {
    return (uint32_t)((bytes + CTX_ALIGN - 1) / CTX_ALIGN);
}

static tide__ctx *ctx_block(tide__eng *eng, uint32_t k) {
    if (k >= CTX_NCLASS)
        return tide__xmalloc((size_t)k * CTX_ALIGN);
    void *p = eng->ctx_spare[k];
    if (p) {
        memcpy(&eng->ctx_spare[k], p, sizeof(void *));
        return p;
    }
    size_t size = (size_t)k * CTX_ALIGN;
    if (eng->slab_pos == NULL || (size_t)(eng->slab_end - eng->slab_pos) < size) {
        size_t cap = CTX_SLAB;
        char *slab = tide__keep_alloc(&cap);
        memcpy(slab, &eng->slabs, sizeof(void *));
        eng->slabs = slab;
        eng->slab_pos = slab + CTX_ALIGN; /* after the link */
        eng->slab_end = slab + cap;
    }
    p = eng->slab_pos;
    eng->slab_pos += size;
    return p;
}

static void ctx_unblock(tide__eng *eng, tide__ctx *c, uint32_t k) {
    if (k >= CTX_NCLASS) {
        free(c);
        return;
    }
    memcpy(c, &eng->ctx_spare[k], sizeof(void *));
    eng->ctx_spare[k] = c;
}

static uint32_t ctx_class_of(const tide__eng *eng, const tide__ctx *c) {
    return ctx_class(ctx_bytes(eng->graphs[c->graph]->n));
}

void tide__eng_free(tide__eng *eng) {
    tide__wd_unregister(&eng->wd); /* the watchdog reads it until then */
    for (uint32_t s = 1; s < eng->nslots; s++) {
        tide__ctx *c = eng->ctx[s];
        if (c && ctx_class_of(eng, c) >= CTX_NCLASS)
            free(c);
    }
    while (eng->slabs) {
        void *next;
        memcpy(&next, eng->slabs, sizeof(void *));
        tide__keep_free(eng->slabs, CTX_SLAB);
        eng->slabs = next;
    }
    for (uint32_t a = 1; a < eng->natts; a++)
        free(eng->atts[a]);
    tide__keep_free(eng->ctx, (size_t)eng->ctx_cap * sizeof(void *));
    tide__keep_free(eng->free_slots, (size_t)eng->free_cap * sizeof(uint32_t));
    free(eng->atts);
    free(eng->graphs);
    free(eng->gbase);
    free(eng->timeout_ms);
    free(eng->gtask_graph);
    free(eng->gtask_lim);
    free(eng->tstat);
    for (uint32_t l = 0; l < eng->nlims; l++) {
        tide__ring_free(&eng->lims[l]->waitq);
        free(eng->lims[l]);
    }
    free(eng->lims);
    for (int p = 0; p < TIDE__NPRIO; p++)
        tide__ring_free(&eng->admit[p]);
    tide__ring_free(&eng->resumeq);
    tide__ring_free(&eng->doneq);
    tide__ring_free(&eng->failq);
    tide__ring_free(&eng->batchq);
    for (uint32_t b = 0; b < eng->nbatch_t; b++)
        free(eng->batch_t[b]);
    free(eng->batch_t);
    tide__rq_free(&eng->rq);
    tide__heap_free(&eng->heap);
}

/* Registers a compiled graph (borrowed: it must outlive the engine) and
 * its per-task timeouts (copied). Returns the graph's number. */
uint32_t tide__eng_attach(tide__eng *eng, tide__graph *g,
                          const double *timeout_ms, const uint32_t *lims) {
    uint32_t id = eng->ngraphs++;
    eng->graphs = tide__xrealloc(eng->graphs, eng->ngraphs * sizeof(void *));
    eng->gbase = tide__xrealloc(eng->gbase, eng->ngraphs * sizeof(uint32_t));
    eng->graphs[id] = g;
    /* Global indices: graph id's task i is gbase + i; base + 0 is unused. */
    uint32_t base = eng->ntasks + 1;
    eng->gbase[id] = base - 1;
    eng->ntasks += g->n + 1;
    eng->timeout_ms = tide__xrealloc(eng->timeout_ms,
                                     (eng->ntasks + 1) * sizeof(double));
    eng->gtask_graph = tide__xrealloc(eng->gtask_graph,
                                      (eng->ntasks + 1) * sizeof(uint32_t));
    eng->gtask_lim = tide__xrealloc(eng->gtask_lim,
                                    (eng->ntasks + 1) * sizeof(uint32_t));
    eng->tstat = tide__xrealloc(eng->tstat,
                                (eng->ntasks + 1) * sizeof(tide__tstat));
    memset(&eng->tstat[base - 1], 0, (g->n + 1) * sizeof(tide__tstat));
    for (uint32_t i = 0; i <= g->n; i++) {
        eng->timeout_ms[base - 1 + i] = i ? timeout_ms[i] : 0;
        eng->gtask_graph[base - 1 + i] = id;
        eng->gtask_lim[base - 1 + i] = i && lims ? lims[i] : 0;
    }
    /* The watchdog names the task of a body it could not stop. */
    const char **names = tide__xcalloc(eng->ntasks + 1, sizeof(*names));
    for (uint32_t k = 0; k < eng->ngraphs; k++)
        for (uint32_t i = 1; i <= eng->graphs[k]->n; i++)
            names[eng->gbase[k] + i] = eng->graphs[k]->names[i];
    tide__wd_names(&eng->wd, names, eng->ntasks + 1);
    free(names);
    return id;
}

int tide__eng_has_work(const tide__eng *eng) {
    return eng->rq.len || eng->resumeq.len || eng->doneq.len ||
           eng->failq.len || eng->batchq.len;
}

/* ===== TIMERS ===== */

/* Arms the uv timer for the first heap entry, or stops it. */
void tide__eng_arm(tide__eng *eng) {
    tide__tentry *e = tide__heap_peek(&eng->heap);
    if (e == NULL) {
        uv_timer_stop(&eng->timer);
        return;
    }
    uint64_t now = uv_now(eng->loop);
    uv_timer_start(&eng->timer, eng_on_timer, e->due > now ? e->due - now : 0,
                   0);
}

/* A timer started while the engine drains counts from the loop's time
 * read when the slice began, as libuv's own timers count from the time of
 * their loop turn, rather than from the clock read anew: so the timers
 * one slice starts with the same delay (a thousand sleeps begun together)
 * fall due in the same millisecond and wake the loop once, instead of
 * spreading over as many wake-ups as the slice lasted milliseconds. Once
 * the slice is over its 1 ms (a long body ran in it), and outside a
 * drain, the clock is read again: a due time is never more than about
 * 1 ms early, plus the loop time's truncation to the millisecond. */
static void eng_timer_add(tide__eng *eng, tide__tentry *e, int kind,
                          double ms) {
    if (!eng->draining || uv_hrtime() > eng->slice_end)
        uv_update_time(eng->loop);
    if (!(ms > 0))
        ms = 0;
    if (ms > 1e15)
        ms = 1e15;
    e->kind = kind;
    e->due = uv_now(eng->loop) + (uint64_t)ceil(ms);
    tide__heap_remove(&eng->heap, e);
    tide__heap_insert(&eng->heap, e);
    if (tide__heap_peek(&eng->heap) == e)
        tide__eng_arm(eng);
}

/* Removes an entry; when it was the first, the uv timer is re-armed for
 * the new first entry (or stopped), so a removed far-away deadline never
 * keeps the loop alive. */
static void eng_timer_del(tide__eng *eng, tide__tentry *e) {
    if (!tide__tentry_armed(e))
        return;
    int was_first = e->pos == 0;
    tide__heap_remove(&eng->heap, e);
    if (was_first)
        tide__eng_arm(eng);
}

/* Arms (ms >= 0) or disarms (ms < 0) the batch timer of gtask: when it
 * fires, the runner is handed TIDE__OP_BATCH for that task. */
void tide__eng_batch_timer(tide__eng *eng, uint32_t gtask, double ms) {
    if (gtask >= eng->nbatch_t) {
        uint32_t n = eng->ntasks + 1;
        eng->batch_t = tide__xrealloc(eng->batch_t, n * sizeof(void *));
        for (uint32_t i = eng->nbatch_t; i < n; i++)
            eng->batch_t[i] = NULL;
        eng->nbatch_t = n;
    }
    tide__tentry *e = eng->batch_t[gtask];
    if (e == NULL) {
        e = tide__xcalloc(1, sizeof(*e));
        e->pos = UINT32_MAX;
        e->data = (void *)(uintptr_t)gtask;
        eng->batch_t[gtask] = e;
    }
    if (ms < 0)
        eng_timer_del(eng, e);
    else
        eng_timer_add(eng, e, TIDE__TM_BATCH, ms);
}

/* Code that is not a task body runs next on the runner (a batch body): it
 * has no attempt to park or fail. */
void tide__eng_detach(tide__eng *eng) {
    eng->cur = NULL;
    eng->cur_slot = 0;
    tide__wd_leave(&eng->wd); /* batch bodies are not watched */
}

/* An entry that only wakes the loop at a time (a top-level wait's end). */
void tide__eng_noop_timer(tide__eng *eng, tide__tentry *e, double ms) {
    if (ms < 0) {
        eng_timer_del(eng, e);
        return;
    }
    eng_timer_add(eng, e, TIDE__TM_NOOP, ms);
}

/* ===== LIMITERS ===== */

/* Creates a limiter; returns its index + 1 (what tide__eng_attach takes).
 * rate <= 0 means no rate limit, concurrency 0 no cap. */
uint32_t tide__eng_limiter(tide__eng *eng, double rate, double burst,
                           uint32_t concurrency) {
    tide__limiter *l = tide__xcalloc(1, sizeof(*l));
    tide__bucket_init(&l->bucket, rate, burst, uv_hrtime());
    l->concurrency = concurrency;
    l->refill.pos = UINT32_MAX;
    l->refill.data = l;
    eng->lims = tide__xrealloc(eng->lims, (eng->nlims + 1) * sizeof(void *));
    eng->lims[eng->nlims++] = l;
    return eng->nlims;
}

/* Takes a concurrency slot and a token if both are free. */
static int lim_try(tide__limiter *l) {
    if (l->concurrency && l->inflight >= l->concurrency)
        return 0;
    if (l->bucket.rate > 0 && !tide__bucket_take(&l->bucket, uv_hrtime()))
        return 0;
    l->inflight++;
    l->started++;
    return 1;
}

/* Moves waiting attempts back to the ready queue, as many as could start
 * now; when the bucket is what holds them, arms a timer for the next
 * token. */
static void lim_pump(tide__eng *eng, tide__limiter *l) {
    uint32_t room = UINT32_MAX;
    if (l->concurrency)
        room = l->inflight < l->concurrency ? l->concurrency - l->inflight
                                            : 0;
    uint64_t now = uv_hrtime();
    if (l->bucket.rate > 0) {
        uint32_t t = tide__bucket_avail(&l->bucket, now);
        if (room > t)
            room = t;
    }
    uint64_t v;
    int moved = 0;
    while (room > 0 && tide__ring_shift(&l->waitq, &v) == 0) {
        tide__ctx *c = eng->ctx[(uint32_t)(v >> 32)];
        c->nqueued--;
        if (c->status >= TIDE__CTX_DONE) {
            ctx_maybe_free(eng, c);
            continue;
        }
        ctx_enqueue(eng, c, (uint32_t)v);
        room--;
        moved = 1;
    }
    if (moved)
        eng->kick(eng);
    if (l->waitq.len && l->bucket.rate > 0 &&
        (!l->concurrency || l->inflight < l->concurrency) &&
        !tide__tentry_armed(&l->refill))
        eng_timer_add(eng, &l->refill, TIDE__TM_LIMIT,
                      (double)tide__bucket_wait_ns(&l->bucket, now) / 1e6);
}

/* An attempt of gtask that held a limiter slot ended. */
static void lim_release_slow(tide__eng *eng, uint32_t li) {
    tide__limiter *l = eng->lims[li - 1];
    TIDE_ASSERT(l->inflight > 0);
    l->inflight--;
    if (l->waitq.len)
        lim_pump(eng, l);
}

static inline void lim_release(tide__eng *eng, uint32_t gtask) {
    uint32_t li = eng->gtask_lim[gtask];
    if (tide__unlikely(li != 0))
        lim_release_slow(eng, li);
}

/* ===== CONTEXTS ===== */

static tide__ctx *eng_ctx(tide__eng *eng, uint32_t slot) {
    TIDE_ASSERT(slot > 0 && slot < eng->nslots && eng->ctx[slot] != NULL);
    return eng->ctx[slot];
}

static tide__ctx *ctx_alloc(tide__eng *eng, uint32_t graph) {
    const tide__graph *g = eng->graphs[graph];
    uint32_t n = g->n + 1, slot;
    if (eng->nfree) {
        slot = eng->free_slots[--eng->nfree];
    } else {
        slot = eng->nslots++;
        if (eng->nslots > eng->ctx_cap) { /* grow geometrically */
            uint32_t ncap = eng->ctx_cap ? 2 * eng->ctx_cap : 64;
            size_t bytes = (size_t)ncap * sizeof(void *);
            tide__ctx **t = tide__keep_alloc(&bytes);
            if (eng->ctx_cap)
                memcpy(t, eng->ctx, eng->ctx_cap * sizeof(void *));
            tide__keep_free(eng->ctx, (size_t)eng->ctx_cap * sizeof(void *));
            eng->ctx = t;
            eng->ctx_cap = ncap;
        }
        eng->ctx[slot] = NULL;
    }
    /* One block: the record, then pending, kids, taken, attempt, tstate. A freed
     * slot keeps its block, reused when the next context's block is of
     * the same class. */
    tide__ctx *c = eng->ctx[slot];
    uint32_t k = ctx_class(ctx_bytes(g->n));
    if (c == NULL || ctx_class_of(eng, c) != k) {
        if (c)
            ctx_unblock(eng, c, ctx_class_of(eng, c));
        c = ctx_block(eng, k);
        eng->ctx[slot] = c;
    }
    memset(c, 0, sizeof(*c));
    c->slot = slot;
    c->graph = graph;
    c->gbase = eng->gbase[graph];
    c->pending = (uint32_t *)(c + 1);
    c->kids = c->pending + n;
    c->taken = c->kids + n;
    c->attempt = (uint16_t *)(c->taken + n);
    c->tstate = (uint8_t *)(c->attempt + n);
    /* kids, taken, attempt (counted from 0: attempt k is stored as k - 1)
     * and tstate (TIDE__TS_WAITING) all start at zero. */
    memset(c->kids, 0, n * (2 * sizeof(uint32_t) + sizeof(uint16_t) +
                            sizeof(uint8_t)));
    c->pending[0] = 0;
    for (uint32_t i = 1; i < n; i++)
        c->pending[i] = g->t[i].init_pending;
    eng->nlive++;
    return c;
}

static void ctx_maybe_free(tide__eng *eng, tide__ctx *c) {
    if (!c->released || c->nqueued || c->nrunning || c->atts)
        return;
    TIDE_ASSERT(c->status >= TIDE__CTX_DONE);
    c->status = 255; /* poison: a freed slot */
    if (eng->nfree == eng->free_cap) {
        uint32_t ncap = eng->free_cap ? 2 * eng->free_cap : 64;
        size_t bytes = (size_t)ncap * sizeof(uint32_t);
        uint32_t *t = tide__keep_alloc(&bytes);
        if (eng->nfree)
            memcpy(t, eng->free_slots, eng->nfree * sizeof(uint32_t));
        tide__keep_free(eng->free_slots, (size_t)eng->free_cap * sizeof(uint32_t));
        eng->free_slots = t;
        eng->free_cap = ncap;
    }
    eng->free_slots[eng->nfree++] = c->slot;
}

static void ctx_enqueue(tide__eng *eng, tide__ctx *c, uint32_t i) {
    const tide__graph *g = eng->graphs[c->graph];
    c->nqueued++;
    tide__rq_push(&eng->rq, c->prio, g->t[i].depth,
                  ((uint64_t)c->slot << 32) | i);
}

static void ctx_check_complete(tide__eng *eng, tide__ctx *c);

static void ctx_start(tide__eng *eng, tide__ctx *c) {
    const tide__graph *g = eng->graphs[c->graph];
    uint32_t region = c->parent ? c->map_task : 0;
    c->admitted = 1;
    if (c->parent == 0)
        eng->nactive++;
    c->remaining = g->region_size[region];
    for (uint32_t k = g->roots_off[region]; k < g->roots_off[region + 1]; k++)
        ctx_enqueue(eng, c, g->roots[k]);
    /* Work submitted from an I/O callback must run now, not when the loop
     * next wakes for another reason. */
    eng->kick(eng);
    ctx_check_complete(eng, c);
}

static void eng_admit(tide__eng *eng) {
    uint64_t v;
    while (eng->nactive < eng->concurrency) {
        int p, got = -1;
        for (p = 0; p < TIDE__NPRIO && got; p++)
            got = p == TIDE__PRIO_LIFO ? tide__ring_pop(&eng->admit[p], &v)
                                       : tide__ring_shift(&eng->admit[p], &v);
        if (got)
            return;
        tide__ctx *c = eng->ctx[(uint32_t)v];
        if (c->status >= TIDE__CTX_DONE)
            continue; /* cancelled while pending */
        ctx_start(eng, c);
    }
}

/* Marks a context final. Its queue entries are dropped lazily. */
static void ctx_final(tide__eng *eng, tide__ctx *c, int status) {
    c->status = (uint8_t)status;
    eng->nlive--;
    if (c->parent == 0 && c->admitted && c->given == 0) {
        eng->nactive--;
        eng_admit(eng);
    }
}

static void ctx_check_complete(tide__eng *eng, tide__ctx *c) {
    if (c->remaining == 0 && c->maps_out == 0 &&
        c->status < TIDE__CTX_DONE) {
        ctx_final(eng, c, TIDE__CTX_DONE);
        tide__ring_push(&eng->doneq, c->slot);
        eng->kick(eng);
    }
}

/* Submits a root context of graph `graph` with priority class `prio`. It
 * starts when fewer than `concurrency` root contexts are in flight.
 * Returns its slot. */
uint32_t tide__eng_submit(tide__eng *eng, uint32_t graph, int prio) {
    tide__ctx *c = ctx_alloc(eng, graph);
    c->prio = (uint8_t)prio;
    c->status = TIDE__CTX_PENDING;
    tide__ring_push(&eng->admit[prio], c->slot);
    eng_admit(eng);
    return c->slot;
}

/* Creates child `map_index` of the map task `gtask` of context `parent`
 * and starts it. Call before completing the map task. */
uint32_t tide__eng_spawn(tide__eng *eng, uint32_t parent, uint32_t gtask,
                         uint32_t map_index) {
    tide__ctx *p = eng_ctx(eng, parent);
    tide__ctx *c = ctx_alloc(eng, p->graph);
    p = eng_ctx(eng, parent); /* ctx_alloc may move the slot table */
    c->parent = parent;
    c->map_task = gtask - p->gbase;
    c->map_index = map_index;
    c->prio = p->prio;
    c->status = TIDE__CTX_RUNNING;
    c->next_sibling = p->first_child;
    if (p->first_child)
        eng->ctx[p->first_child]->prev_sibling = c->slot;
    p->first_child = c->slot;
    p->kids[c->map_task]++;
    ctx_start(eng, c);
    return c->slot;
}

static void ctx_bypass(tide__eng *eng, tide__ctx *c, uint32_t i);

/* One input of task s is settled; `ran` says whether the predecessor ran
 * (or was bypassed). When the last one settles, s is queued if any of its
 * predecessors ran, and bypassed itself otherwise. */
static void ctx_settle(tide__eng *eng, tide__ctx *c, uint32_t s, int ran) {
    if (ran)
        c->taken[s]++;
    if (--c->pending[s] == 0) {
        if (c->taken[s])
            ctx_enqueue(eng, c, s);
        else
            ctx_bypass(eng, c, s);
    }
}

/* The children of map `m` in context c all finished (ran = 1), or the map
 * was bypassed and has none (ran = 0): settle its gathers. */
static void ctx_map_done(tide__eng *eng, tide__ctx *c, uint32_t m, int ran) {
    const tide__graph *g = eng->graphs[c->graph];
    for (uint32_t i = 1; i <= g->n; i++)
        if (g->t[i].gather_of == m)
            ctx_settle(eng, c, i, ran);
}

/* Task i of c will not run: a router did not choose it, or none of its
 * predecessors ran. Its successors in the region settle as not run. */
static void ctx_bypass(tide__eng *eng, tide__ctx *c, uint32_t i) {
    const tide__graph *g = eng->graphs[c->graph];
    const tide__gtask *t = &g->t[i];
    c->tstate[i] = TIDE__TS_BYPASSED;
    c->remaining--;
    if (t->flags & TIDE__T_MAP)
        ctx_map_done(eng, c, i, 0);
    for (uint32_t k = 0; k < t->nsuccs; k++) {
        uint32_t s = t->succs[k];
        const tide__gtask *st = &g->t[s];
        if (st->region == t->region && !(st->flags & TIDE__T_GATHER))
            ctx_settle(eng, c, s, 0);
    }
}

/* Whether task `local` of context slot was bypassed. */
int tide__eng_bypassed(tide__eng *eng, uint32_t slot, uint32_t local) {
    tide__ctx *c = eng_ctx(eng, slot);
    const tide__graph *g = eng->graphs[c->graph];
    return local >= 1 && local <= g->n && c->tstate[local] == TIDE__TS_BYPASSED;
}

/* ===== ATTEMPT RECORDS ===== */

static tide__att *att_new(tide__eng *eng, tide__ctx *c, uint32_t gtask,
                          int state) {
    tide__att *a;
    if (eng->att_free) {
        a = eng->atts[eng->att_free];
        eng->att_free = a->next_free;
    } else {
        if ((eng->natts & (eng->natts - 1)) == 0) /* a power of two: grow */
            eng->atts = tide__xrealloc(eng->atts, 2 * (size_t)eng->natts *
                                                      sizeof(void *));
        a = tide__xcalloc(1, sizeof(*a));
        a->idx = eng->natts;
        eng->atts[eng->natts++] = a;
    }
    a->gen++;
    a->slot = c->slot;
    a->task = gtask;
    a->attempt = c->attempt[gtask - c->gbase] + 1u;
    a->state = state;
    a->result = 0;
    a->gave = 0;
    a->co = NULL;
    a->op = NULL;
    a->op_cancel = NULL;
    a->op_started = NULL;
    a->unstarted = 0;
    a->t0 = eng->cur_t0;
    a->born = uv_now(eng->loop);
    a->slow = 0;
    a->deadline.pos = a->wake.pos = UINT32_MAX;
    a->deadline.data = a->wake.data = a;
    a->prev_in_ctx = NULL;
    a->next_in_ctx = c->atts;
    if (c->atts)
        c->atts->prev_in_ctx = a;
    c->atts = a;
    return a;
}

/* A waiter that gave its root context's concurrency slot back takes it
 * again (it may briefly exceed the limit: it was admitted before). */
static void att_take_slot(tide__eng *eng, tide__att *a) {
    if (a->gave == 0)
        return;
    tide__ctx *root = eng_ctx(eng, a->gave);
    a->gave = 0;
    if (--root->given == 0 && root->status < TIDE__CTX_DONE)
        eng->nactive++;
}

/* Unlinks and recycles an attempt record; its coroutine must be gone. */
static void att_release(tide__eng *eng, tide__att *a) {
    tide__ctx *c = eng_ctx(eng, a->slot);
    TIDE_ASSERT(a->co == NULL);
    att_take_slot(eng, a);
    eng_timer_del(eng, &a->deadline);
    eng_timer_del(eng, &a->wake);
    if (a->prev_in_ctx)
        a->prev_in_ctx->next_in_ctx = a->next_in_ctx;
    else
        c->atts = a->next_in_ctx;
    if (a->next_in_ctx)
        a->next_in_ctx->prev_in_ctx = a->prev_in_ctx;
    a->next_in_ctx = a->prev_in_ctx = NULL;
    a->gen++; /* outstanding handles go stale */
    a->state = 0;
    if (eng->cur == a)
        eng->cur = NULL;
    /* Handles are doubles (idx + gen * 2^32), exact only below 2^53, and
     * records are reused last in, first out, so one record may serve
     * every attempt of a long run. One whose next generation would not
     * fit is retired (kept, never reused) rather than wrapped, so that no
     * handle is ever given out twice. */
    if (a->gen + 1 >= ATT_GEN_LIMIT)
        return;
    a->next_free = eng->att_free;
    eng->att_free = a->idx;
}

double tide__eng_att_handle(const tide__att *a) {
    return (double)a->idx + (double)a->gen * 4294967296.0;
}

/* Returns the attempt record a handle names, or NULL if it went stale. */
tide__att *tide__eng_att_get(tide__eng *eng, double handle) {
    if (!(handle >= 1) || handle > 9007199254740991.0)
        return NULL;
    uint64_t h = (uint64_t)handle;
    uint32_t idx = (uint32_t)(h & 0xffffffffu), gen = (uint32_t)(h >> 32);
    if (idx == 0 || idx >= eng->natts)
        return NULL;
    tide__att *a = eng->atts[idx];
    return a->gen == gen && a->state ? a : NULL;
}

static tide__att *eng_handle_att(tide__eng *eng, uint64_t h) {
    uint32_t idx = (uint32_t)(h & 0xffffffffu), gen = (uint32_t)(h >> 32);
    tide__att *a = eng->atts[idx];
    return a->gen == gen && a->state ? a : NULL;
}

/* The record of the attempt whose body is running, made on first need.
 * Returns NULL when no body is running. */
tide__att *tide__eng_current_att(tide__eng *eng) {
    if (eng->cur)
        return eng->cur;
    if (eng->cur_slot == 0)
        return NULL;
    tide__ctx *c = eng_ctx(eng, eng->cur_slot);
    eng->cur = att_new(eng, c, eng->cur_task, TIDE__ATT_RUNNING);
    return eng->cur;
}

/* Logging asks which body runs often enough that making an attempt
 * record for each question (as tide__eng_current_att does) would cost
 * memory for nothing: this reads the same facts without one. */
int tide__eng_current(tide__eng *eng, uint32_t *slot, uint32_t *task,
                      uint32_t *attempt) {
    if (eng->cur_slot == 0)
        return 0;
    *slot = eng->cur_slot;
    *task = eng->cur_task;
    if (eng->cur) {
        *attempt = eng->cur->attempt;
    } else {
        tide__ctx *c = eng_ctx(eng, eng->cur_slot);
        *attempt = c->attempt[eng->cur_task - c->gbase] + 1u;
    }
    return 1;
}

uint32_t tide__eng_sweep(tide__eng *eng, uint64_t min_ms,
                         void (*fn)(void *ud, uint32_t slot, uint32_t gtask),
                         void *ud) {
    uint64_t now = uv_now(eng->loop);
    uint32_t n = 0;
    for (uint32_t i = 1; i < eng->natts; i++) {
        tide__att *a = eng->atts[i];
        if (a->slow || a->state == 0 || a->state == TIDE__ATT_RETRY ||
            now - a->born < min_ms || a->born > now)
            continue;
        tide__ctx *c = eng_ctx(eng, a->slot);
        if (c->status >= TIDE__CTX_DONE)
            continue;
        a->slow = 1;
        fn(ud, a->slot, a->task);
        n++;
    }
    return n;
}

uint32_t tide__eng_frontier(tide__eng *eng, uint32_t slot, uint32_t *out,
                            uint32_t cap) {
    tide__ctx *c = eng_ctx(eng, slot);
    const tide__graph *g = eng->graphs[c->graph];
    uint32_t n = 0;
    for (uint32_t i = 1; i <= g->n; i++) {
        if (c->tstate[i] != TIDE__TS_DONE)
            continue;
        const tide__gtask *t = &g->t[i];
        for (uint32_t k = 0; k < t->nsuccs; k++) {
            uint32_t s = t->succs[k];
            /* A map's successors run in its children (their state here
             * stays waiting): the map counts while its context runs. */
            if (c->tstate[s] == TIDE__TS_WAITING) {
                if (n < cap)
                    out[n] = i;
                n++;
                break;
            }
        }
    }
    return n;
}

/* The running body parks: it will be resumed by tide__eng_wake, or with
 * result 0 after timeout_ms (< 0: no timer). */
void tide__eng_park(tide__eng *eng, tide__att *a, double timeout_ms,
                    int give_slot) {
    a->state = TIDE__ATT_PARKED;
    if (give_slot && a->gave == 0) {
        /* Waiting for other jobs must not hold a concurrency slot, or a
         * full engine waiting on queued jobs would never make progress. */
        tide__ctx *root = eng_ctx(eng, a->slot);
        while (root->parent)
            root = eng_ctx(eng, root->parent);
        a->gave = root->slot;
        if (root->given++ == 0 && root->status < TIDE__CTX_DONE &&
            root->admitted) {
            eng->nactive--;
            eng_admit(eng);
        }
    }
    if (timeout_ms >= 0)
        eng_timer_add(eng, &a->wake, TIDE__TM_WAKE, timeout_ms);
}

/* Makes a parked attempt ready to resume with `result`. */
void tide__eng_wake(tide__eng *eng, tide__att *a, int result) {
    if (a->state != TIDE__ATT_PARKED)
        return;
    eng_timer_del(eng, &a->wake);
    att_take_slot(eng, a);
    a->state = TIDE__ATT_READY;
    a->result = result;
    tide__ring_push(&eng->resumeq, ENG_HANDLE(a));
    eng->kick(eng);
}

/* The glue has taken a yielded coroutine into a->co. If its context was
 * finalized while the body ran, the coroutine is dropped at once. */
void tide__eng_yielded(tide__eng *eng, tide__att *a) {
    tide__ctx *c = eng_ctx(eng, a->slot);
    tide__wd_leave(&eng->wd);
    if (eng->cur == a)
        eng->cur = NULL;
    eng->cur_slot = 0;
    if (c->status >= TIDE__CTX_DONE) {
        uint32_t gtask = a->task;
        eng->drop_co(eng, a);
        c->nrunning--;
        eng->tstat[gtask].running--;
        att_release(eng, a);
        lim_release(eng, gtask);
        ctx_maybe_free(eng, c);
    }
}

/* Fails a parked attempt from outside (timeout, deadlock): its coroutine
 * is dropped and the runner is handed a TIDE__OP_FAIL with `code`. */
void tide__eng_abandon(tide__eng *eng, tide__att *a, int code) {
    eng_timer_del(eng, &a->deadline);
    eng_timer_del(eng, &a->wake);
    if (a->co)
        eng->drop_co(eng, a);
    att_take_slot(eng, a);
    a->state = TIDE__ATT_RUNNING;
    a->result = code;
    tide__ring_push(&eng->failq, ENG_HANDLE(a));
    eng->kick(eng);
}

/* Fails every attempt parked with no timer (waiting for other jobs) when
 * the loop has nothing else to do. Returns how many were failed. */
int tide__eng_break_deadlocks(tide__eng *eng) {
    int n = 0;
    for (uint32_t i = 1; i < eng->natts; i++) {
        tide__att *a = eng->atts[i];
        if (a->state == TIDE__ATT_PARKED && !tide__tentry_armed(&a->wake)) {
            tide__eng_abandon(eng, a, TIDE_EDEADLK);
            n++;
        }
    }
    return n;
}

/* ===== THE RUNNER'S INTERFACE ===== */

/* Seconds: the upper bounds of the duration histogram's buckets, from
 * 10 us (a trivial body) to 10 s (a slow call); the last bucket is +Inf. */
const double tide__hist_bounds[TIDE__NHIST - 1] = {
    1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10};

/* Files the duration of the attempt (slot, gtask) that is ending into its
 * task's histogram. Its start is on its record, or in cur_t0 when it has
 * none; batch members (run detached, cur_slot 0) are not timed. */
static void eng_time_attempt(tide__eng *eng, tide__tstat *ts,
                             const tide__att *a, uint32_t slot,
                             uint32_t gtask) {
    uint64_t t0;
    if (a && a->slot == slot && a->task == gtask)
        t0 = a->t0;
    else if (eng->cur_slot == slot && eng->cur_task == gtask)
        t0 = eng->cur_t0;
    else
        return;
    if (t0 == 0)
        return; /* it started before timing was turned on */
    double sec = (double)(uv_hrtime() - t0) / 1e9;
    int k = 0;
    while (k < TIDE__NHIST - 1 && sec > tide__hist_bounds[k])
        k++;
    ts->hist[k]++;
    ts->sum += sec;
}

/* Ends the attempt (slot, gtask) the runner just finished with: drops its
 * record, if any, and its running count. */
static tide__ctx *eng_end_attempt(tide__eng *eng, uint32_t slot,
                                  uint32_t gtask, int succeeded) {
    tide__ctx *c = eng_ctx(eng, slot);
    tide__att *a = eng->cur;
    tide__tstat *ts = &eng->tstat[gtask];
    tide__wd_leave(&eng->wd);
    if (tide__unlikely(eng->timing))
        eng_time_attempt(eng, ts, a, slot, gtask);
    if (a && a->slot == slot && a->task == gtask) {
        /* A slow attempt's success goes to the runner first, ahead of the
         * context's end that it may cause (doneq is first in, first
         * out), while the context's values are still there. Only
         * attempts with a record can be slow, so a plain task never
         * reads this. */
        if (tide__unlikely(a->slow) && succeeded &&
            c->status < TIDE__CTX_DONE)
            tide__ring_push(&eng->doneq, DONEQ_SLOW |
                                             (uint64_t)gtask << 32 | slot);
        att_release(eng, a);
    }
    ts->running--;
    eng->cur = NULL;
    eng->cur_slot = 0;
    TIDE_ASSERT(c->nrunning > 0);
    c->nrunning--;
    lim_release(eng, gtask);
    return c;
}

/* Task gtask of context slot succeeded: count it and release successors. */
void tide__eng_complete(tide__eng *eng, uint32_t slot, uint32_t gtask) {
    /* A router's choice applies to this completion only, whatever else
     * happens to it. */
    int nroute = eng->nroute;
    eng->nroute = -1;
    tide__ctx *c = eng_end_attempt(eng, slot, gtask, 1);
    eng->tstat[gtask].done++;
    if (c->status >= TIDE__CTX_DONE) {
        ctx_maybe_free(eng, c); /* cancelled while it ran */
        return;
    }
    const tide__graph *g = eng->graphs[c->graph];
    uint32_t i = gtask - c->gbase;
    const tide__gtask *t = &g->t[i];
    c->remaining--;
    c->tstate[i] = TIDE__TS_DONE;
    if (t->flags & TIDE__T_MAP) {
        if (c->kids[i] == 0)
            ctx_map_done(eng, c, i, 1);
        else
            c->maps_out++;
    }
    for (uint32_t k = 0; k < t->nsuccs; k++) {
        uint32_t s = t->succs[k];
        const tide__gtask *st = &g->t[s];
        if (st->region != t->region || (st->flags & TIDE__T_GATHER))
            continue;
        if (tide__likely(nroute < 0)) {
            /* This predecessor ran, so s runs once its inputs settle. */
            c->taken[s]++;
            if (--c->pending[s] == 0)
                ctx_enqueue(eng, c, s);
            continue;
        }
        int ran = 0; /* a router: only the successors it chose */
        for (int r = 0; r < nroute && !ran; r++)
            ran = eng->route[r] == s;
        ctx_settle(eng, c, s, ran);
    }
    ctx_check_complete(eng, c);
}

/* The attempt (slot, gtask) failed and will be retried after delay_ms. */
void tide__eng_retry(tide__eng *eng, uint32_t slot, uint32_t gtask,
                     double delay_ms) {
    tide__ctx *c = eng_end_attempt(eng, slot, gtask, 0);
    tide__tstat *ts = &eng->tstat[gtask];
    ts->failures++;
    if (c->status >= TIDE__CTX_DONE) {
        ctx_maybe_free(eng, c);
        return;
    }
    ts->retries++;
    uint32_t i = gtask - c->gbase;
    c->attempt[i]++;
    if (!(delay_ms > 0)) {
        ctx_enqueue(eng, c, i);
        return;
    }
    tide__att *a = att_new(eng, c, gtask, TIDE__ATT_RETRY);
    c->nretry++;
    ts->retrying++;
    eng_timer_add(eng, &a->wake, TIDE__TM_RETRY, delay_ms);
}

/* Ends a context as failed or cancelled (status), with every child: their
 * parked coroutines are dropped and their timers removed. If (slot, gtask)
 * names a running attempt (gtask > 0), that attempt ends too. */
static void eng_finalize_tree(tide__eng *eng, tide__ctx *c, int status) {
    if (c->status < TIDE__CTX_DONE)
        ctx_final(eng, c, status);
    tide__att *a = c->atts;
    while (a) {
        tide__att *next = a->next_in_ctx;
        if (a == eng->cur) {
            /* The body running right now: it ends when it returns or
             * yields (tide__eng_complete / tide__eng_yielded). */
        } else {
            if (a->co)
                eng->drop_co(eng, a);
            uint32_t gtask = a->task;
            int running = a->state != TIDE__ATT_RETRY;
            if (running) {
                c->nrunning--;
                eng->tstat[gtask].running--;
            } else {
                c->nretry--;
                eng->tstat[gtask].retrying--;
            }
            att_release(eng, a);
            if (running)
                lim_release(eng, gtask);
        }
        a = next;
    }
    uint32_t k = c->first_child;
    while (k) {
        tide__ctx *kid = eng->ctx[k];
        uint32_t next = kid->next_sibling;
        kid->released = 1; /* nobody will take its result */
        eng_finalize_tree(eng, kid, TIDE__CTX_CANCELLED);
        kid->parent = 0;
        ctx_maybe_free(eng, kid);
        k = next;
    }
    c->first_child = 0;
}

void tide__eng_finalize(tide__eng *eng, uint32_t slot, int status) {
    tide__ctx *c = eng_ctx(eng, slot);
    eng_finalize_tree(eng, c, status);
    ctx_maybe_free(eng, c);
}

/* The attempt (slot, gtask) failed for good: it ends, and so does its
 * context, with `status`. */
void tide__eng_fail(tide__eng *eng, uint32_t slot, uint32_t gtask,
                    int status) {
    tide__ctx *c = eng_end_attempt(eng, slot, gtask, 0);
    if (status == TIDE__CTX_FAILED)
        eng->tstat[gtask].failures++;
    eng_finalize_tree(eng, c, status);
    ctx_maybe_free(eng, c);
}

/* The Lua side took the result of a final context: its slot may be reused
 * once nothing refers to it. A child's release counts towards its
 * parent's map. */
void tide__eng_release(tide__eng *eng, uint32_t slot) {
    tide__ctx *c = eng_ctx(eng, slot);
    if (c->released)
        return;
    TIDE_ASSERT(c->status >= TIDE__CTX_DONE);
    c->released = 1;
    if (c->parent) {
        tide__ctx *p = eng_ctx(eng, c->parent);
        if (c->prev_sibling)
            eng->ctx[c->prev_sibling]->next_sibling = c->next_sibling;
        else
            p->first_child = c->next_sibling;
        if (c->next_sibling)
            eng->ctx[c->next_sibling]->prev_sibling = c->prev_sibling;
        c->parent = 0;
        if (p->status < TIDE__CTX_DONE && --p->kids[c->map_task] == 0) {
            p->maps_out--;
            ctx_map_done(eng, p, c->map_task, 1);
            ctx_check_complete(eng, p);
        }
    }
    ctx_maybe_free(eng, c);
}

int tide__eng_status(tide__eng *eng, uint32_t slot) {
    tide__ctx *c = eng_ctx(eng, slot);
    if (c->status >= TIDE__CTX_DONE || !c->admitted)
        return c->status;
    if (c->nrunning == 0 && c->nqueued == 0 && c->nretry > 0)
        return TIDE__CTX_WAITING;
    return TIDE__CTX_RUNNING;
}

/* Hands the runner its next operation (op->op == TIDE__OP_NONE: nothing
 * to do now, or the drain's time slice is over). */
void tide__eng_next(tide__eng *eng, tide__op *op) {
    uint64_t v;
    if (tide__unlikely(eng->doneq.len)) {
        tide__ring_shift(&eng->doneq, &v);
        if (v & DONEQ_SLOW) {
            op->op = TIDE__OP_SLOW;
            op->slot = (uint32_t)v;
            op->task = (uint32_t)(v >> 32) & 0x7fffffffu;
            return;
        }
        tide__ctx *c = eng_ctx(eng, (uint32_t)v);
        op->slot = c->slot;
        if (c->parent) {
            op->op = TIDE__OP_CHILD;
            op->parent = c->parent;
            op->task = c->gbase + c->map_task;
            op->map_index = c->map_index;
        } else {
            op->op = TIDE__OP_FINISH;
        }
        return;
    }
    while (tide__unlikely(eng->failq.len)) {
        tide__ring_shift(&eng->failq, &v);
        tide__att *a = eng_handle_att(eng, v);
        if (a == NULL)
            continue;
        op->op = TIDE__OP_FAIL;
        op->slot = a->slot;
        op->task = a->task;
        op->attempt = a->attempt;
        op->code = a->result;
        eng->cur = a;
        eng->cur_slot = a->slot;
        eng->cur_task = a->task;
        return;
    }
    if (tide__unlikely(eng->batchq.len)) {
        tide__ring_shift(&eng->batchq, &v);
        op->op = TIDE__OP_BATCH;
        op->task = (uint32_t)v;
        eng->cur = NULL;
        eng->cur_slot = 0;
        return;
    }
    if ((++eng->slice_count & 127) == 0 && uv_hrtime() > eng->slice_end) {
        op->op = TIDE__OP_NONE;
        return;
    }
    while (tide__rq_pop(&eng->rq, &v) == 0) {
        uint32_t slot = (uint32_t)(v >> 32), i = (uint32_t)v;
        tide__ctx *c = eng->ctx[slot];
        c->nqueued--;
        if (tide__unlikely(c->status >= TIDE__CTX_DONE)) {
            ctx_maybe_free(eng, c);
            continue;
        }
        uint32_t gtask = c->gbase + i;
        uint32_t li = eng->gtask_lim[gtask];
        if (li && !lim_try(eng->lims[li - 1])) {
            /* Wait in the limiter's queue; it still counts as queued. */
            tide__limiter *l = eng->lims[li - 1];
            c->nqueued++;
            tide__ring_push(&l->waitq, v);
            lim_pump(eng, l); /* arms the refill timer if tokens hold it */
            continue;
        }
        c->nrunning++;
        c->status = TIDE__CTX_RUNNING;
        tide__tstat *ts = &eng->tstat[gtask];
        ts->attempts++;
        ts->running++;
        if (tide__unlikely(eng->timing))
            eng->cur_t0 = uv_hrtime();
        op->op = TIDE__OP_RUN;
        op->slot = slot;
        op->task = gtask;
        op->attempt = c->attempt[i] + 1u;
        eng->cur_slot = slot;
        eng->cur_task = gtask;
        eng->cur = NULL;
        double tmo = eng->timeout_ms[gtask];
        tide__wd_enter(&eng->wd, gtask, tmo);
        if (tmo > 0) {
            eng->cur = att_new(eng, c, gtask, TIDE__ATT_RUNNING);
            eng_timer_add(eng, &eng->cur->deadline, TIDE__TM_DEADLINE, tmo);
        }
        return;
    }
    op->op = TIDE__OP_NONE;
}

/* Milliseconds the attempt still has when its deadline timer fires: 0,
 * unless it waits on an operation whose time limit counts from when it
 * began to run (a sync job still queued has its full limit left). The
 * wait for a start is bounded too (TIDE__MAX_UNSTARTED limits), so that
 * a job behind workers stuck for good still fails instead of waiting
 * forever. */
#define TIDE__MAX_UNSTARTED 10
static double eng_deadline_left(tide__eng *eng, tide__att *a) {
    if (a->op_started == NULL || a->op == NULL)
        return 0;
    double tmo = eng->timeout_ms[a->task];
    uint64_t started = a->op_started(a->op);
    if (started == 0)
        return ++a->unstarted < TIDE__MAX_UNSTARTED ? tmo : 0;
    double ran = (double)(uv_hrtime() - started) / 1e6;
    return ran < tmo ? tmo - ran : 0;
}

static void eng_on_timer(uv_timer_t *t) {
    tide__eng *eng = tide__container_of(t, tide__eng, timer);
    uint64_t now = uv_now(eng->loop);
    tide__tentry *e;
    while ((e = tide__heap_peek(&eng->heap)) != NULL && e->due <= now) {
        tide__heap_remove(&eng->heap, e);
        tide__att *a = e->data;
        switch (e->kind) {
        case TIDE__TM_DEADLINE: {
            double left = eng_deadline_left(eng, a);
            if (left > 0)
                eng_timer_add(eng, &a->deadline, TIDE__TM_DEADLINE, left);
            else
                tide__eng_abandon(eng, a, TIDE_ETIMEDOUT);
            break;
        }
        case TIDE__TM_WAKE:
            tide__eng_wake(eng, a, 0);
            break;
        case TIDE__TM_RETRY: {
            tide__ctx *c = eng_ctx(eng, a->slot);
            uint32_t i = a->task - c->gbase;
            c->nretry--;
            eng->tstat[a->task].retrying--;
            att_release(eng, a);
            ctx_enqueue(eng, c, i);
            eng->kick(eng);
            break;
        }
        case TIDE__TM_LIMIT:
            lim_pump(eng, e->data);
            break;
        case TIDE__TM_BATCH:
            tide__ring_push(&eng->batchq, (uint64_t)(uintptr_t)e->data);
            eng->kick(eng);
            break;
        default: /* TIDE__TM_NOOP: it only woke the loop */
            break;
        }
    }
    tide__eng_arm(eng);
}
