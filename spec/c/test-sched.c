/* Tests of the scheduler (src/sched.c), driven from C the way the Lua glue
 * drives it (src/lua/lengine.c), on a real uv loop. */
#include "../../src/internal.h"
#include "task.h"

/* One engine on its own loop, one compiled graph attached to it, and the
 * counts of the glue hooks the engine called. The engine is embedded so
 * that the hooks find the fixture from the engine pointer. */
typedef struct {
    uv_loop_t loop;
    tide__eng eng;
    tide__graph g;
    uint32_t gid, gbase;
    int kicks, drops;
    int co;      /* its address stands in for a parked coroutine */
} fx;

static void fx_kick(tide__eng *eng) {
    tide__container_of(eng, fx, eng)->kicks++;
}

/* What the glue does for a dropped body: the coroutine goes away. */
static void fx_drop_co(tide__eng *eng, tide__att *a) {
    TIDE_ASSERT(a->co != NULL);
    a->co = NULL;
    tide__container_of(eng, fx, eng)->drops++;
}

/* Task specs name their predecessors by name; these build them tersely. */
#define SPEC(name, flags, ...)                                           \
    {name, (const char *[]){NULL, __VA_ARGS__} + 1,                      \
     (uint32_t)(sizeof((const char *[]){NULL, __VA_ARGS__}) /            \
                    sizeof(const char *) - 1),                           \
     flags}

/* Opens the fixture: a loop, an engine admitting `concurrency` root
 * contexts, and the graph of n specs attached with per-task timeouts (ms,
 * indexed by local task; NULL: none) and limiters (NULL: none). */
static int fx_open(fx *f, uint32_t concurrency, const tide__gspec *s,
                   uint32_t n, const double *tmo, const uint32_t *lims) {
    char err[256];
    uint32_t bad;
    double none[16] = {0};
    memset(f, 0, sizeof(*f));
    ASSERT(n < TIDE_ARRAY_SIZE(none));
    ASSERT_OK(uv_loop_init(&f->loop));
    ASSERT_OK(tide__eng_init(&f->eng, &f->loop, concurrency));
    f->eng.kick = fx_kick;
    f->eng.drop_co = fx_drop_co;
    /* The glue's drain sets the end of its time slice before it calls
     * tide__eng_next; these tests never want the slice to end. */
    f->eng.slice_end = UINT64_MAX;
    ASSERT_OK(tide__graph_compile(s, n, &f->g, err, sizeof(err), &bad));
    f->gid = tide__eng_attach(&f->eng, &f->g, tmo ? tmo : none, lims);
    f->gbase = f->eng.gbase[f->gid];
    return 0;
}

/* Context slots that are not free: in use, or waiting for a stale queue
 * entry or a running attempt to let go of them. */
static uint32_t live_slots(const tide__eng *eng) {
    return eng->nslots - 1 - eng->nfree;
}

/* Attempt records in use (recycled ones have state 0). */
static uint32_t live_atts(const tide__eng *eng) {
    uint32_t n = 0;
    for (uint32_t i = 1; i < eng->natts; i++)
        n += eng->atts[i]->state != 0;
    return n;
}

/* Checks that the engine holds nothing any more, then closes every handle
 * and the loop (which must close cleanly) and frees the engine. */
static int fx_close(fx *f) {
    tide__op op;
    tide__eng_next(&f->eng, &op); /* drops stale queue entries */
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_EQ(live_slots(&f->eng), 0);
    ASSERT_EQ(live_atts(&f->eng), 0);
    ASSERT_EQ(f->eng.heap.len, 0);
    ASSERT(!uv_is_active((uv_handle_t *)&f->eng.timer));
    ASSERT_EQ(f->eng.nlive, 0);
    ASSERT_EQ(f->eng.nactive, 0);
    ASSERT_EQ(f->eng.rq.len, 0);
    ASSERT(!tide__eng_has_work(&f->eng));
    for (uint32_t i = 1; i <= f->g.n; i++) {
        ASSERT_EQ(f->eng.tstat[f->gbase + i].running, 0);
        ASSERT_EQ(f->eng.tstat[f->gbase + i].retrying, 0);
    }
    uv_close((uv_handle_t *)&f->eng.timer, NULL);
    uv_close((uv_handle_t *)&f->eng.idle, NULL);
    ASSERT_OK(uv_run(&f->loop, UV_RUN_DEFAULT));
    ASSERT_OK(uv_loop_close(&f->loop));
    tide__eng_free(&f->eng);
    tide__graph_free(&f->g);
    return 0;
}

static uint32_t gt(const fx *f, uint32_t local) { return f->gbase + local; }

static tide__ctx *ctx(fx *f, uint32_t slot) { return f->eng.ctx[slot]; }

/* The body that runs now parks, the way leng_park and leng_resume do it:
 * the attempt is parked, then the glue keeps its coroutine. */
static tide__att *park_body(fx *f, double timeout_ms, int give_slot) {
    tide__att *a = tide__eng_current_att(&f->eng);
    tide__eng_park(&f->eng, a, timeout_ms, give_slot);
    a->co = &f->co;
    tide__eng_yielded(&f->eng, a);
    return a;
}

/* Takes the next woken attempt off the resume queue and makes it the
 * running body, as leng_drain does; NULL when none is left. */
static tide__att *resume_next(fx *f) {
    uint64_t h;
    while (tide__ring_shift(&f->eng.resumeq, &h) == 0) {
        tide__att *a = tide__eng_att_get(
            &f->eng, (double)(uint32_t)h + (double)(h >> 32) * 4294967296.0);
        if (a == NULL || a->state != TIDE__ATT_READY || a->co == NULL)
            continue;
        a->co = NULL;
        a->state = TIDE__ATT_RUNNING;
        f->eng.cur = a;
        f->eng.cur_slot = a->slot;
        f->eng.cur_task = a->task;
        return a;
    }
    return NULL;
}

/* Runs everything that is ready the way the runner does when every body
 * succeeds at once: a RUN completes, a finished context or child is
 * released. Appends each RUN to runs[] as slot * 100 + local task. */
typedef struct {
    uint32_t runs[64], nruns;
    uint32_t finished[16], nfinished;
} trace;

static void drive(fx *f, trace *t) {
    tide__op op;
    for (;;) {
        tide__eng_next(&f->eng, &op);
        if (op.op == TIDE__OP_RUN) {
            uint32_t local = op.task - f->gbase;
            if (t->nruns < TIDE_ARRAY_SIZE(t->runs))
                t->runs[t->nruns++] = op.slot * 100 + local;
            tide__eng_complete(&f->eng, op.slot, op.task);
        } else if (op.op == TIDE__OP_FINISH || op.op == TIDE__OP_CHILD) {
            if (op.op == TIDE__OP_FINISH &&
                t->nfinished < TIDE_ARRAY_SIZE(t->finished))
                t->finished[t->nfinished++] = op.slot;
            tide__eng_release(&f->eng, op.slot);
        } else {
            TIDE_ASSERT(op.op == TIDE__OP_NONE);
            return;
        }
    }
}

TEST_IMPL(sched_chain_runs_in_order) {
    /* d <- c <- b <- a, declared out of order; two contexts on an engine
     * that admits one at a time. */
    tide__gspec s[] = {SPEC("c", 0, "b"), SPEC("a", 0), SPEC("d", 0, "c"),
                       SPEC("b", 0, "a")};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 1, s, 4, NULL, NULL));
    uint32_t c1 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    uint32_t c2 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    ASSERT(c1 != c2);
    ASSERT_EQ(tide__eng_status(&f.eng, c1), TIDE__CTX_RUNNING);
    ASSERT_EQ(tide__eng_status(&f.eng, c2), TIDE__CTX_PENDING);
    ASSERT(f.kicks > 0); /* the glue was told to drain */
    ASSERT_EQ(f.eng.nactive, 1);

    /* Only the root is ready; its successor waits for it. */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.slot, c1);
    ASSERT_EQ(op.task, gt(&f, 2)); /* "a" */
    ASSERT_EQ(op.attempt, 1);
    tide__op none;
    tide__eng_next(&f.eng, &none);
    ASSERT_EQ(none.op, TIDE__OP_NONE);
    tide__eng_complete(&f.eng, op.slot, op.task);

    trace t = {0};
    drive(&f, &t);
    /* a ran above; then b, c, d of c1, then all of c2 once c1 finished. */
    uint32_t want[] = {c1 * 100 + 4, c1 * 100 + 1, c1 * 100 + 3,
                       c2 * 100 + 2, c2 * 100 + 4, c2 * 100 + 1,
                       c2 * 100 + 3};
    ASSERT_EQ(t.nruns, TIDE_ARRAY_SIZE(want));
    for (uint32_t i = 0; i < t.nruns; i++)
        ASSERT_EQ(t.runs[i], want[i]);
    ASSERT_EQ(t.nfinished, 2);
    ASSERT_EQ(t.finished[0], c1);
    ASSERT_EQ(t.finished[1], c2);
    for (uint32_t i = 1; i <= 4; i++) {
        ASSERT_EQ(f.eng.tstat[gt(&f, i)].attempts, 2);
        ASSERT_EQ(f.eng.tstat[gt(&f, i)].done, 2);
    }
    return fx_close(&f);
}

TEST_IMPL(sched_join_waits_for_both) {
    /* a, b -> j -> z */
    tide__gspec s[] = {SPEC("a", 0), SPEC("b", 0), SPEC("j", 0, "a", "b"),
                       SPEC("z", 0, "j")};
    fx f;
    tide__op ra, rb, op;
    ASSERT_OK(fx_open(&f, 8, s, 4, NULL, NULL));
    uint32_t c = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_HIGH);
    tide__eng_next(&f.eng, &ra);
    tide__eng_next(&f.eng, &rb);
    ASSERT_EQ(ra.op, TIDE__OP_RUN);
    ASSERT_EQ(rb.op, TIDE__OP_RUN);
    ASSERT_EQ(ra.task, gt(&f, 1));
    ASSERT_EQ(rb.task, gt(&f, 2));
    ASSERT_EQ(ctx(&f, c)->nrunning, 2);
    ASSERT_EQ(ctx(&f, c)->pending[3], 2);

    /* One predecessor done: the join still waits. */
    tide__eng_complete(&f.eng, c, rb.task);
    ASSERT_EQ(ctx(&f, c)->pending[3], 1);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_EQ(tide__eng_status(&f.eng, c), TIDE__CTX_RUNNING);

    /* Both done: it runs, once, with both inputs taken. */
    tide__eng_complete(&f.eng, c, ra.task);
    ASSERT_EQ(ctx(&f, c)->taken[3], 2);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.task, gt(&f, 3));
    tide__eng_complete(&f.eng, c, op.task);

    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nruns, 1);
    ASSERT_EQ(t.runs[0], c * 100 + 4);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(f.eng.tstat[gt(&f, 3)].attempts, 1);
    return fx_close(&f);
}

TEST_IMPL(sched_fail_attempt_ends_context) {
    /* a -> b: a fails for good, so b never runs. */
    tide__gspec s[] = {SPEC("a", 0), SPEC("b", 0, "a")};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 1, s, 2, NULL, NULL));
    uint32_t c1 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    uint32_t c2 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.slot, c1);
    tide__eng_fail(&f.eng, c1, op.task, TIDE__CTX_FAILED);
    ASSERT_EQ(tide__eng_status(&f.eng, c1), TIDE__CTX_FAILED);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].failures, 1);
    ASSERT_EQ(ctx(&f, c1)->nrunning, 0);
    /* The failure freed c1's concurrency slot: c2 was admitted. */
    ASSERT_EQ(tide__eng_status(&f.eng, c2), TIDE__CTX_RUNNING);

    /* A failed context is not reported by the engine (the runner that
     * failed it hands its result out); it stays until released. */
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(t.finished[0], c2);
    ASSERT_EQ(t.nruns, 2);
    ASSERT_EQ(t.runs[0], c2 * 100 + 1);
    ASSERT_EQ(t.runs[1], c2 * 100 + 2);
    ASSERT_EQ(live_slots(&f.eng), 1);
    tide__eng_release(&f.eng, c1);
    ASSERT_EQ(f.eng.tstat[gt(&f, 2)].attempts, 1); /* c2's only */
    return fx_close(&f);
}

TEST_IMPL(sched_timeout_fails_attempt) {
    /* a has a 20 ms timeout; its first attempt parks past it. */
    tide__gspec s[] = {SPEC("a", 0)};
    double tmo[] = {0, 20};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 4, s, 1, tmo, NULL));
    uint32_t c = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    uint64_t t0 = uv_hrtime();
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT(f.eng.cur != NULL); /* a deadline needs a record */
    ASSERT_EQ(f.eng.heap.len, 1);
    tide__att *a = park_body(&f, -1, 0);
    ASSERT(a->co == &f.co);
    ASSERT_OK(uv_run(&f.loop, UV_RUN_DEFAULT)); /* until the deadline */
    ASSERT(uv_hrtime() - t0 >= 19 * 1000000ull);
    ASSERT_EQ(f.drops, 1); /* the parked body was dropped */
    ASSERT(a->co == NULL);

    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_FAIL);
    ASSERT_EQ(op.slot, c);
    ASSERT_EQ(op.task, gt(&f, 1));
    ASSERT_EQ(op.attempt, 1);
    ASSERT_EQ(op.code, TIDE_ETIMEDOUT);
    /* The runner's policy retries at once: attempt 2 is ready now. */
    tide__eng_retry(&f.eng, c, op.task, 0);
    ASSERT_EQ(live_atts(&f.eng), 0);
    ASSERT_EQ(f.eng.heap.len, 0);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.attempt, 2);
    tide__eng_complete(&f.eng, c, op.task);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].failures, 1);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].retries, 1);
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nfinished, 1);
    return fx_close(&f);
}

TEST_IMPL(sched_retry_waits_for_its_delay) {
    tide__gspec s[] = {SPEC("a", 0), SPEC("b", 0, "a")};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 4, s, 2, NULL, NULL));
    uint32_t c = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    uint64_t t0 = uv_hrtime();
    tide__eng_retry(&f.eng, c, op.task, 50);

    /* Waiting for its retry, the context holds a timer and a record but
     * is neither running nor queued. */
    ASSERT_EQ(tide__eng_status(&f.eng, c), TIDE__CTX_WAITING);
    ASSERT_EQ(ctx(&f, c)->nretry, 1);
    ASSERT_EQ(ctx(&f, c)->nrunning, 0);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].retrying, 1);
    ASSERT_EQ(f.eng.heap.len, 1);
    ASSERT_EQ(live_atts(&f.eng), 1);
    ASSERT(uv_is_active((uv_handle_t *)&f.eng.timer));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT(uv_run(&f.loop, UV_RUN_NOWAIT) != 0); /* the timer is pending */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);

    int kicks = f.kicks;
    ASSERT_OK(uv_run(&f.loop, UV_RUN_DEFAULT)); /* returns once it fired */
    uint64_t waited = uv_hrtime() - t0;
    /* uv timers count whole milliseconds from a truncated clock. */
    ASSERT(waited >= 49 * 1000000ull);
    ASSERT(f.kicks > kicks);
    ASSERT_EQ(f.eng.heap.len, 0);
    ASSERT_EQ(live_atts(&f.eng), 0);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].retrying, 0);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.task, gt(&f, 1));
    ASSERT_EQ(op.attempt, 2);
    tide__eng_complete(&f.eng, c, op.task);
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nruns, 1); /* b, once */
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].attempts, 2);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].retries, 1);
    return fx_close(&f);
}

TEST_IMPL(sched_cancel_frees_timers_and_children) {
    /* split (map) -> inc -> total (gather) */
    tide__gspec s[] = {SPEC("split", TIDE__T_MAP), SPEC("inc", 0, "split"),
                       SPEC("total", TIDE__T_GATHER, "inc")};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 4, s, 3, NULL, NULL));
    uint32_t p = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.task, gt(&f, 1));
    uint32_t kid[4];
    for (uint32_t i = 0; i < 4; i++)
        kid[i] = tide__eng_spawn(&f.eng, p, gt(&f, 1), i + 1);
    tide__eng_complete(&f.eng, p, gt(&f, 1));
    ASSERT_EQ(live_slots(&f.eng), 5);

    /* Child 0 waits for a retry; child 1's body sleeps (a parked
     * coroutine with a wake timer); child 2's body is the one running,
     * and cancels the job; child 3's "inc" is still queued. */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, kid[0]);
    tide__eng_retry(&f.eng, kid[0], op.task, 10000);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, kid[1]);
    park_body(&f, 10000, 0);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, kid[2]);
    ASSERT_EQ(f.eng.heap.len, 2);
    ASSERT_EQ(live_atts(&f.eng), 2);
    ASSERT_EQ(f.eng.tstat[gt(&f, 2)].running, 2);
    ASSERT_EQ(f.eng.tstat[gt(&f, 2)].retrying, 1);

    tide__eng_finalize(&f.eng, p, TIDE__CTX_CANCELLED);
    ASSERT_EQ(tide__eng_status(&f.eng, p), TIDE__CTX_CANCELLED);
    /* Children 0 and 1 are freed (a freed slot reads 255); 2 and 3 are
     * cancelled but held, see below. */
    ASSERT_EQ(tide__eng_status(&f.eng, kid[0]), 255);
    ASSERT_EQ(tide__eng_status(&f.eng, kid[1]), 255);
    ASSERT_EQ(tide__eng_status(&f.eng, kid[2]), TIDE__CTX_CANCELLED);
    ASSERT_EQ(tide__eng_status(&f.eng, kid[3]), TIDE__CTX_CANCELLED);
    ASSERT_EQ(f.drops, 1);
    ASSERT_EQ(f.eng.heap.len, 0);
    ASSERT(!uv_is_active((uv_handle_t *)&f.eng.timer));
    ASSERT_EQ(live_atts(&f.eng), 0);
    ASSERT_EQ(f.eng.tstat[gt(&f, 2)].retrying, 0);
    ASSERT_EQ(f.eng.nlive, 0);
    ASSERT_EQ(f.eng.nactive, 0);
    /* Freed now: children 0 and 1. Held: the parent (not released yet),
     * child 2 (its body runs) and child 3 (its queue entry). */
    ASSERT_EQ(live_slots(&f.eng), 3);

    /* The running body returns; the runner's completion ends it. */
    tide__eng_complete(&f.eng, kid[2], gt(&f, 2));
    ASSERT_EQ(f.eng.tstat[gt(&f, 2)].running, 0);
    ASSERT_EQ(live_slots(&f.eng), 2);
    tide__eng_release(&f.eng, p);
    /* Nothing of the cancelled job runs again; the stale entry is dropped. */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_EQ(f.eng.tstat[gt(&f, 3)].attempts, 0);
    ASSERT_OK(uv_run(&f.loop, UV_RUN_NOWAIT)); /* no timer left */
    return fx_close(&f);
}

TEST_IMPL(sched_slot_reuse_and_stale_handles) {
    tide__gspec s[] = {SPEC("a", 0)};
    fx f;
    tide__op op;
    trace t = {0};
    ASSERT_OK(fx_open(&f, 8, s, 1, NULL, NULL));

    /* A released slot is reused by the next context. */
    uint32_t c1 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    drive(&f, &t);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(live_slots(&f.eng), 0);
    uint32_t c2 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    ASSERT_EQ(c2, c1);

    /* A handle to an attempt record goes stale when the record is
     * recycled; the record's next user gets a new handle. */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, c2);
    tide__att *a = park_body(&f, -1, 0);
    double h1 = tide__eng_att_handle(a);
    ASSERT(tide__eng_att_get(&f.eng, h1) == a);
    tide__eng_finalize(&f.eng, c2, TIDE__CTX_CANCELLED);
    ASSERT_EQ(f.drops, 1);
    ASSERT(tide__eng_att_get(&f.eng, h1) == NULL);
    tide__eng_release(&f.eng, c2);
    uint32_t c3 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    ASSERT_EQ(c3, c1);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, c3);
    tide__att *b = park_body(&f, -1, 0);
    ASSERT(b == a); /* the same record, */
    double h2 = tide__eng_att_handle(b);
    ASSERT(h2 != h1); /* another generation */
    ASSERT(tide__eng_att_get(&f.eng, h1) == NULL);
    ASSERT(tide__eng_att_get(&f.eng, h2) == b);
    ASSERT(tide__eng_att_get(&f.eng, 0) == NULL);
    ASSERT(tide__eng_att_get(&f.eng, -1) == NULL);
    ASSERT(tide__eng_att_get(&f.eng, 1e300) == NULL);

    /* A failure the engine queued for an attempt whose context was then
     * cancelled is skipped, not handed to the runner. */
    tide__eng_abandon(&f.eng, b, TIDE_ETIMEDOUT);
    ASSERT_EQ(f.eng.failq.len, 1);
    tide__eng_finalize(&f.eng, c3, TIDE__CTX_CANCELLED);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_EQ(f.eng.failq.len, 0);
    tide__eng_release(&f.eng, c3);

    /* A woken attempt cancelled before it resumed is not resumed. */
    uint32_t c4 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    tide__att *w = park_body(&f, -1, 0);
    tide__eng_wake(&f.eng, w, 1);
    ASSERT_EQ(f.eng.resumeq.len, 1);
    tide__eng_finalize(&f.eng, c4, TIDE__CTX_CANCELLED);
    ASSERT(resume_next(&f) == NULL);
    tide__eng_release(&f.eng, c4);

    /* A context cancelled with an entry in the ready queue keeps its slot
     * until the entry is dropped, so the entry never runs a task of a
     * context that reused the slot. */
    uint32_t c5 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_finalize(&f.eng, c5, TIDE__CTX_CANCELLED);
    tide__eng_release(&f.eng, c5);
    ASSERT_EQ(live_slots(&f.eng), 1);
    uint32_t c6 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    ASSERT(c6 != c5);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.slot, c6);
    ASSERT_EQ(live_slots(&f.eng), 1); /* c5's slot is free again */
    tide__eng_complete(&f.eng, c6, op.task);
    memset(&t, 0, sizeof(t));
    drive(&f, &t);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(t.finished[0], c6);
    ASSERT_EQ(f.eng.tstat[gt(&f, 1)].attempts, 5);
    return fx_close(&f);
}

TEST_IMPL(sched_deadlock_is_detected) {
    /* Three jobs on an engine that admits one: two wait for each other
     * with no timer (each gave its concurrency slot back, which let the
     * next one in), the third sleeps with a timer. */
    tide__gspec s[] = {SPEC("a", 0)};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 1, s, 1, NULL, NULL));
    uint32_t j1 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    uint32_t j2 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    uint32_t j3 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    ASSERT_EQ(tide__eng_status(&f.eng, j2), TIDE__CTX_PENDING);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, j1);
    park_body(&f, -1, 1);
    ASSERT_EQ(tide__eng_status(&f.eng, j2), TIDE__CTX_RUNNING);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, j2);
    park_body(&f, -1, 1);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, j3);
    park_body(&f, 10000, 0);
    ASSERT_EQ(f.eng.nactive, 1); /* only the sleeper holds a slot */

    /* Nothing can progress but the sleeper's timer: the two waiters are
     * failed with EDEADLK, the sleeper is left alone. */
    ASSERT(!tide__eng_has_work(&f.eng));
    ASSERT_EQ(f.eng.nlive, 3);
    ASSERT_EQ(tide__eng_break_deadlocks(&f.eng), 2);
    ASSERT_EQ(f.drops, 2);
    ASSERT_EQ(f.eng.nactive, 3); /* the waiters took their slots back */
    uint32_t failed[2];
    for (int i = 0; i < 2; i++) {
        tide__eng_next(&f.eng, &op);
        ASSERT_EQ(op.op, TIDE__OP_FAIL);
        ASSERT_EQ(op.code, TIDE_EDEADLK);
        ASSERT_EQ(op.task, gt(&f, 1));
        failed[i] = op.slot;
        /* The runner does not retry EDEADLK: the job fails. */
        tide__eng_fail(&f.eng, op.slot, op.task, TIDE__CTX_FAILED);
        tide__eng_release(&f.eng, op.slot);
    }
    ASSERT((failed[0] == j1 && failed[1] == j2) ||
           (failed[0] == j2 && failed[1] == j1));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_EQ(tide__eng_break_deadlocks(&f.eng), 0);
    ASSERT_EQ(f.eng.nactive, 1);

    /* The sleeper wakes when its timer fires and finishes. */
    ASSERT_EQ(f.eng.heap.len, 1);
    tide__eng_wake(&f.eng, ctx(&f, j3)->atts, 0);
    tide__att *a = resume_next(&f);
    ASSERT(a != NULL && a->slot == j3);
    tide__eng_complete(&f.eng, j3, gt(&f, 1));
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(t.finished[0], j3);
    return fx_close(&f);
}

TEST_IMPL(sched_map_children_and_gather) {
    /* split (map) -> inc -> total (gather) -> out */
    tide__gspec s[] = {SPEC("split", TIDE__T_MAP), SPEC("inc", 0, "split"),
                       SPEC("total", TIDE__T_GATHER, "inc"),
                       SPEC("out", 0, "total")};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 4, s, 4, NULL, NULL));
    uint32_t p = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.task, gt(&f, 1));
    uint32_t kid[3];
    for (uint32_t i = 0; i < 3; i++)
        kid[i] = tide__eng_spawn(&f.eng, p, gt(&f, 1), i + 1);
    ASSERT_EQ(ctx(&f, p)->kids[1], 3);
    ASSERT_EQ(tide__eng_status(&f.eng, kid[0]), TIDE__CTX_RUNNING);
    tide__eng_complete(&f.eng, p, gt(&f, 1));
    ASSERT_EQ(ctx(&f, p)->maps_out, 1);
    ASSERT_EQ(ctx(&f, p)->pending[3], 1);

    /* Each child runs "inc" once and is reported done with its map index;
     * the gather waits until the last child's result was taken. */
    for (uint32_t i = 0; i < 3; i++) {
        tide__eng_next(&f.eng, &op);
        ASSERT_EQ(op.op, TIDE__OP_RUN);
        ASSERT_EQ(op.slot, kid[i]);
        ASSERT_EQ(op.task, gt(&f, 2));
        tide__eng_complete(&f.eng, kid[i], op.task);
        tide__eng_next(&f.eng, &op);
        ASSERT_EQ(op.op, TIDE__OP_CHILD);
        ASSERT_EQ(op.slot, kid[i]);
        ASSERT_EQ(op.parent, p);
        ASSERT_EQ(op.task, gt(&f, 1));
        ASSERT_EQ(op.map_index, i + 1);
        ASSERT_EQ(ctx(&f, p)->kids[1], 3 - i);
        tide__eng_release(&f.eng, kid[i]);
        ASSERT_EQ(ctx(&f, p)->kids[1], 2 - i);
        if (i < 2)
            ASSERT_EQ(ctx(&f, p)->pending[3], 1);
    }
    ASSERT_EQ(f.eng.tstat[gt(&f, 3)].attempts, 0);
    ASSERT_EQ(ctx(&f, p)->maps_out, 0);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.slot, p);
    ASSERT_EQ(op.task, gt(&f, 3));
    tide__eng_complete(&f.eng, p, op.task);
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nruns, 1);
    ASSERT_EQ(t.runs[0], p * 100 + 4);
    ASSERT_EQ(t.nfinished, 1);

    /* A map with no children settles its gather at once. */
    p = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    tide__eng_complete(&f.eng, p, op.task);
    memset(&t, 0, sizeof(t));
    drive(&f, &t);
    ASSERT_EQ(t.nruns, 2);
    ASSERT_EQ(t.runs[0], p * 100 + 3);
    ASSERT_EQ(t.runs[1], p * 100 + 4);
    ASSERT_EQ(f.eng.tstat[gt(&f, 2)].attempts, 3);
    return fx_close(&f);
}

TEST_IMPL(sched_router_bypasses) {
    /* r routes to x or y; j joins them; y2 follows y only. */
    tide__gspec s[] = {SPEC("r", 0), SPEC("x", 0, "r"), SPEC("y", 0, "r"),
                       SPEC("y2", 0, "y"), SPEC("j", 0, "x", "y2")};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 4, s, 5, NULL, NULL));
    uint32_t c = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    f.eng.route[0] = 2; /* x */
    f.eng.nroute = 1;
    tide__eng_complete(&f.eng, c, op.task);
    ASSERT_EQ(f.eng.nroute, -1); /* the choice served one completion */
    ASSERT(tide__eng_bypassed(&f.eng, c, 3));
    ASSERT(tide__eng_bypassed(&f.eng, c, 4));
    ASSERT(!tide__eng_bypassed(&f.eng, c, 2));
    ASSERT(!tide__eng_bypassed(&f.eng, c, 0));
    ASSERT(!tide__eng_bypassed(&f.eng, c, 6));
    ASSERT_EQ(ctx(&f, c)->pending[5], 1); /* y2 settled as not run */
    trace t = {0};
    drive(&f, &t);
    /* x, then the join, once, with one input taken. */
    ASSERT_EQ(t.nruns, 2);
    ASSERT_EQ(t.runs[0], c * 100 + 2);
    ASSERT_EQ(t.runs[1], c * 100 + 5);
    ASSERT_EQ(t.nfinished, 1);

    /* A router that chooses nothing bypasses everything after it. */
    c = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    f.eng.nroute = 0;
    tide__eng_complete(&f.eng, c, op.task);
    ASSERT(tide__eng_bypassed(&f.eng, c, 5));
    memset(&t, 0, sizeof(t));
    drive(&f, &t);
    ASSERT_EQ(t.nruns, 0);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(f.eng.tstat[gt(&f, 5)].attempts, 1);
    return fx_close(&f);
}

TEST_IMPL(sched_limiter_holds_attempts) {
    /* a -> b: "a" goes through limiter 1 (one attempt at a time), "b"
     * through limiter 2 (one start per 50 ms: rate 20, burst 1). */
    tide__gspec s[] = {SPEC("a", 0), SPEC("b", 0, "a")};
    uint32_t lims[] = {0, 1, 2};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 8, s, 2, NULL, lims));
    ASSERT_EQ(tide__eng_limiter(&f.eng, 0, 1, 1), 1);
    ASSERT_EQ(tide__eng_limiter(&f.eng, 20, 1, 0), 2);
    tide__limiter *conc = f.eng.lims[0], *rate = f.eng.lims[1];
    uint32_t c1 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    uint32_t c2 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);

    /* c2's "a" waits in the limiter's queue, not the ready queue, and
     * with no timer: only a finishing attempt frees the cap. */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, c1);
    ASSERT_EQ(op.task, gt(&f, 1));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_EQ(conc->inflight, 1);
    ASSERT_EQ(conc->waitq.len, 1);
    ASSERT_EQ(ctx(&f, c2)->nqueued, 1);
    ASSERT_EQ(tide__eng_status(&f.eng, c2), TIDE__CTX_RUNNING);
    ASSERT_EQ(f.eng.heap.len, 0);
    int kicks = f.kicks;
    tide__eng_complete(&f.eng, c1, gt(&f, 1));
    ASSERT_EQ(conc->waitq.len, 0);
    ASSERT(f.kicks > kicks);

    /* c1's "b" takes the only token; c2's "a" runs; c2's "b" must wait
     * for the next token, with a timer. */
    uint64_t t0 = uv_hrtime();
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, c1);
    ASSERT_EQ(op.task, gt(&f, 2));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.slot, c2);
    ASSERT_EQ(op.task, gt(&f, 1));
    tide__eng_complete(&f.eng, c2, gt(&f, 1));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_EQ(rate->waitq.len, 1);
    ASSERT_EQ(f.eng.heap.len, 1);
    tide__eng_complete(&f.eng, c1, gt(&f, 2));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_FINISH);
    tide__eng_release(&f.eng, op.slot);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_NONE);
    ASSERT_OK(uv_run(&f.loop, UV_RUN_DEFAULT));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.slot, c2);
    ASSERT_EQ(op.task, gt(&f, 2));
    /* Two starts need burst + rate * t >= 2, so t >= 50 ms from the first
     * (the bucket reads uv_hrtime, so this is exact, unlike the timer). */
    ASSERT(uv_hrtime() - t0 >= 50 * 1000000ull);
    ASSERT_EQ(conc->started, 2);
    ASSERT_EQ(rate->started, 2);
    tide__eng_complete(&f.eng, c2, op.task);
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(conc->inflight + rate->inflight, 0);
    ASSERT_EQ(conc->waitq.len + rate->waitq.len, 0);
    return fx_close(&f);
}

TEST_IMPL(sched_handles_after_many_reuses) {
    /* The glue and Lua hold attempt handles as doubles (index + generation
     * * 2^32), exact only below 2^53. Attempt records are recycled last
     * in, first out, so a sequential workload reuses one record for every
     * attempt that needs one; each use advances its generation by two.
     * Start from a record that has served about a million attempts (as it
     * would have after that many jobs) and keep using it: every parked
     * body must still be found by its handle and resumed. */
    tide__gspec s[] = {SPEC("a", 0)};
    fx f;
    tide__op op;
    ASSERT_OK(fx_open(&f, 8, s, 1, NULL, NULL));
    uint32_t c = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    tide__eng_next(&f.eng, &op);
    tide__att *first = tide__eng_current_att(&f.eng);
    tide__eng_complete(&f.eng, c, op.task);
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(first->state, 0);
    first->gen = (1u << 21) - 8;
    for (int i = 0; i < 8; i++) {
        c = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
        tide__eng_next(&f.eng, &op);
        ASSERT_EQ(op.op, TIDE__OP_RUN);
        tide__att *a = park_body(&f, -1, 0);
        double h = tide__eng_att_handle(a);
        ASSERT(h <= 9007199254740991.0);
        ASSERT(tide__eng_att_get(&f.eng, h) == a);
        tide__eng_wake(&f.eng, a, 1);
        ASSERT(resume_next(&f) == a);
        tide__eng_complete(&f.eng, c, op.task);
        memset(&t, 0, sizeof(t));
        drive(&f, &t);
        ASSERT_EQ(t.nfinished, 1);
    }
    return fx_close(&f);
}

static uint32_t count_slabs(const tide__eng *eng) {
    uint32_t n = 0;
    for (void *s = eng->slabs; s; memcpy(&s, s, sizeof(void *)))
        n++;
    return n;
}

TEST_IMPL(sched_context_memory_is_kept) {
    /* Contexts live in slabs that a closed engine leaves to the next one
     * (tide__keep_alloc), so that a process running pipelines again and
     * again does not fault their pages in each time; and a slot whose
     * next context is of another size gives its block to a spare list,
     * so alternating two pipelines does not grow the engine. */
    tide__gspec s[] = {SPEC("a", 0), SPEC("b", 0, "a")};
    fx f;
    trace t = {0};
    ASSERT_OK(fx_open(&f, 100000, s, 2, NULL, NULL));
    for (int i = 0; i < 5000; i++)
        tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    drive(&f, &t);
    ASSERT_EQ(f.eng.nlive, 0);
    uint32_t slabs = count_slabs(&f.eng);
    ASSERT(slabs >= 2); /* 5000 blocks of at least 128 bytes */
    size_t before = tide__keep_held();
    ASSERT_OK(fx_close(&f));
    size_t after = tide__keep_held();
    ASSERT(after >= before + slabs * ((size_t)256 << 10) ||
           after > TIDE__KEEP_MAX - ((size_t)256 << 10));
    ASSERT(after <= TIDE__KEEP_MAX);
    /* The next engine takes them back. */
    ASSERT_OK(fx_open(&f, 100000, s, 2, NULL, NULL));
    for (int i = 0; i < 5000; i++)
        tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    ASSERT(tide__keep_held() < after);
    memset(&t, 0, sizeof(t));
    drive(&f, &t);
    ASSERT_OK(fx_close(&f));

    /* Two graphs of different block classes take turns in one slot. */
    tide__gspec big[40];
    char names[40][16];
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof(names[i]), "t%d", i);
        big[i] = (tide__gspec){names[i], NULL, 0, 0};
    }
    tide__graph g2;
    char err[256];
    uint32_t bad;
    ASSERT_OK(fx_open(&f, 8, s, 2, NULL, NULL));
    ASSERT_OK(tide__graph_compile(big, 40, &g2, err, sizeof(err), &bad));
    double none[41] = {0}; /* per task, 1-based */
    uint32_t gid2 = tide__eng_attach(&f.eng, &g2, none, NULL);
    for (int i = 0; i < 2000; i++) {
        tide__eng_submit(&f.eng, i % 2 ? gid2 : f.gid, TIDE__PRIO_LOW);
        memset(&t, 0, sizeof(t));
        drive(&f, &t);
    }
    ASSERT_EQ(f.eng.nslots, 2); /* one slot, used 2000 times */
    ASSERT_EQ(count_slabs(&f.eng), 1);
    ASSERT_OK(fx_close(&f));
    tide__graph_free(&g2);
    return 0;
}

/* Sweep callback: records what it was given. */
typedef struct {
    uint32_t slot[8], task[8], n;
} swept;

static void on_swept(void *ud, uint32_t slot, uint32_t gtask) {
    swept *s = ud;
    if (s->n < TIDE_ARRAY_SIZE(s->slot)) {
        s->slot[s->n] = slot;
        s->task[s->n] = gtask;
    }
    s->n++;
}

TEST_IMPL(sched_sweep_reports_slow_attempts) {
    /* a -> b -> c: b parks (a slow step); the sweep reports it once, the
     * frontier is what feeds it, and its success comes back as
     * TIDE__OP_SLOW before its successor runs. */
    tide__gspec s[] = {SPEC("a", 0), SPEC("b", 0, "a"), SPEC("c", 0, "b")};
    fx f;
    tide__op op;
    uint32_t front[4];
    swept sw = {0};
    ASSERT_OK(fx_open(&f, 1, s, 3, NULL, NULL));
    uint32_t c1 = tide__eng_submit(&f.eng, f.gid, TIDE__PRIO_LOW);
    ASSERT_EQ(tide__eng_frontier(&f.eng, c1, front, 4), 0);
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.task, gt(&f, 1));
    tide__eng_complete(&f.eng, c1, op.task);
    /* A plain completion is not reported: the next op is b's run. */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.task, gt(&f, 2));
    tide__att *a = park_body(&f, -1, 0);
    ASSERT_EQ(tide__eng_frontier(&f.eng, c1, front, 4), 1);
    ASSERT_EQ(front[0], 1); /* a: done, feeds b */

    /* The loop's clock has not moved since b parked: not slow for a
     * 1000 ms mark, slow for a 0 ms one, and reported once only. */
    ASSERT_EQ(tide__eng_sweep(&f.eng, 1000, on_swept, &sw), 0);
    ASSERT_EQ(tide__eng_sweep(&f.eng, 0, on_swept, &sw), 1);
    ASSERT_EQ(sw.n, 1);
    ASSERT_EQ(sw.slot[0], c1);
    ASSERT_EQ(sw.task[0], gt(&f, 2));
    ASSERT_EQ(tide__eng_sweep(&f.eng, 0, on_swept, &sw), 0);

    /* b succeeds: the runner hears of it first, then c runs. */
    tide__eng_wake(&f.eng, a, 1);
    ASSERT(resume_next(&f) == a);
    tide__eng_complete(&f.eng, c1, gt(&f, 2));
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_SLOW);
    ASSERT_EQ(op.slot, c1);
    ASSERT_EQ(op.task, gt(&f, 2));
    ASSERT_EQ(tide__eng_frontier(&f.eng, c1, front, 4), 1);
    ASSERT_EQ(front[0], 2); /* b: done, feeds c */
    tide__eng_next(&f.eng, &op);
    ASSERT_EQ(op.op, TIDE__OP_RUN);
    ASSERT_EQ(op.task, gt(&f, 3));
    tide__eng_complete(&f.eng, c1, op.task);
    trace t = {0};
    drive(&f, &t);
    ASSERT_EQ(t.nfinished, 1);
    ASSERT_EQ(t.finished[0], c1);
    return fx_close(&f);
}
