/* The ready queue: buckets per (priority class, distance to sink). */
#include <string.h>

#include "internal.h"

void tide__ring_push(tide__ring *r, uint64_t v) {
    if (r->len == r->cap) {
        uint32_t ncap = r->cap ? r->cap * 2 : 64;
        size_t bytes = ncap * sizeof(uint64_t);
        uint64_t *nb = tide__keep_alloc(&bytes);
        for (uint32_t i = 0; i < r->len; i++)
            nb[i] = r->buf[(r->head + i) & (r->cap - 1)];
        tide__keep_free(r->buf, (size_t)r->cap * sizeof(uint64_t));
        r->buf = nb;
        r->cap = ncap;
        r->head = 0;
    }
    r->buf[(r->head + r->len) & (r->cap - 1)] = v;
    r->len++;
}

/* Takes the oldest entry. Returns 0, or -1 when empty. */
int tide__ring_shift(tide__ring *r, uint64_t *v) {
    if (r->len == 0)
        return -1;
    *v = r->buf[r->head];
    r->head = (r->head + 1) & (r->cap - 1);
    r->len--;
    return 0;
}

/* Takes the newest entry. Returns 0, or -1 when empty. */
int tide__ring_pop(tide__ring *r, uint64_t *v) {
    if (r->len == 0)
        return -1;
    r->len--;
    *v = r->buf[(r->head + r->len) & (r->cap - 1)];
    return 0;
}

void tide__ring_free(tide__ring *r) {
    tide__keep_free(r->buf, (size_t)r->cap * sizeof(uint64_t));
    memset(r, 0, sizeof(*r));
}

void tide__rq_init(tide__rq *q) {
    memset(q, 0, sizeof(*q));
}

void tide__rq_free(tide__rq *q) {
    for (int c = 0; c < TIDE__NPRIO; c++)
        for (int d = 0; d < TIDE__RQ_DEPTHS; d++)
            tide__ring_free(&q->b[c][d]);
    memset(q, 0, sizeof(*q));
}

/* Depths beyond the last bucket share it; they still run, in FIFO order. */
void tide__rq_push(tide__rq *q, int prio, uint32_t depth, uint64_t v) {
    if (depth >= TIDE__RQ_DEPTHS)
        depth = TIDE__RQ_DEPTHS - 1;
    tide__ring_push(&q->b[prio][depth], v);
    q->nonempty[prio] |= (uint64_t)1 << depth;
    q->len++;
}

int tide__rq_pop(tide__rq *q, uint64_t *v) {
    if (q->len == 0)
        return -1;
    for (int c = 0; c < TIDE__NPRIO; c++) {
        uint64_t m = q->nonempty[c];
        if (m == 0)
            continue;
        int d = __builtin_ctzll(m);
        tide__ring *r = &q->b[c][d];
        if (c == TIDE__PRIO_LIFO)
            tide__ring_pop(r, v);
        else
            tide__ring_shift(r, v);
        if (r->len == 0)
            q->nonempty[c] &= ~((uint64_t)1 << d);
        q->len--;
        return 0;
    }
    TIDE_ASSERT(0 && "ready queue length out of step with its buckets");
    return -1;
}
