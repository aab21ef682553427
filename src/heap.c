/* A binary min-heap of timer entries ordered by due time, then insertion. */
#include "internal.h"

void tide__heap_init(tide__heap *hp) {
    hp->h = NULL;
    hp->len = hp->cap = 0;
    hp->seq = 0;
}

void tide__heap_free(tide__heap *hp) {
    free(hp->h);
    hp->h = NULL;
    hp->len = hp->cap = 0;
}

static int heap_less(const tide__tentry *a, const tide__tentry *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_set(tide__heap *hp, uint32_t i, tide__tentry *e) {
    hp->h[i] = e;
    e->pos = i;
}

static void heap_up(tide__heap *hp, uint32_t i) {
    tide__tentry *e = hp->h[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!heap_less(e, hp->h[parent]))
            break;
        heap_set(hp, i, hp->h[parent]);
        i = parent;
    }
    heap_set(hp, i, e);
}

static void heap_down(tide__heap *hp, uint32_t i) {
    tide__tentry *e = hp->h[i];
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        const tide__tentry *best = e;
        if (l < hp->len && heap_less(hp->h[l], best)) {
            m = l;
            best = hp->h[l];
        }
        if (r < hp->len && heap_less(hp->h[r], best))
            m = r;
        if (m == i)
            break;
        heap_set(hp, i, hp->h[m]);
        i = m;
    }
    heap_set(hp, i, e);
}

/* Inserts e, which must not be in a heap; the heap borrows it until it is
 * removed. */
void tide__heap_insert(tide__heap *hp, tide__tentry *e) {
    TIDE_ASSERT(!tide__tentry_armed(e) || hp->len == 0 ||
                e->pos >= hp->len || hp->h[e->pos] != e);
    if (hp->len == hp->cap) {
        hp->cap = hp->cap ? hp->cap * 2 : 16;
        hp->h = tide__xrealloc(hp->h, hp->cap * sizeof(*hp->h));
    }
    e->seq = hp->seq++;
    hp->h[hp->len] = e;
    e->pos = hp->len++;
    heap_up(hp, e->pos);
}

/* Removes e if it is in the heap; a no-op otherwise. */
void tide__heap_remove(tide__heap *hp, tide__tentry *e) {
    uint32_t i = e->pos;
    if (i == UINT32_MAX)
        return;
    TIDE_ASSERT(i < hp->len && hp->h[i] == e);
    e->pos = UINT32_MAX;
    hp->len--;
    if (i == hp->len)
        return;
    heap_set(hp, i, hp->h[hp->len]);
    if (i > 0 && heap_less(hp->h[i], hp->h[(i - 1) / 2]))
        heap_up(hp, i);
    else
        heap_down(hp, i);
}

tide__tentry *tide__heap_peek(const tide__heap *hp) {
    return hp->len ? hp->h[0] : NULL;
}
