/* Tests of the timer heap (src/heap.c). */
#include "../../src/internal.h"
#include "task.h"

static tide__tentry mk(uint64_t due) {
    tide__tentry e;
    memset(&e, 0, sizeof(e));
    e.due = due;
    e.pos = UINT32_MAX;
    return e;
}

TEST_IMPL(heap_orders_by_due_then_seq) {
    tide__heap hp;
    tide__heap_init(&hp);
    tide__tentry a = mk(30), b = mk(10), c = mk(20), d = mk(10);
    tide__heap_insert(&hp, &a);
    tide__heap_insert(&hp, &b);
    tide__heap_insert(&hp, &c);
    tide__heap_insert(&hp, &d);
    tide__tentry *order[] = {&b, &d, &c, &a};
    for (int i = 0; i < 4; i++) {
        tide__tentry *top = tide__heap_peek(&hp);
        ASSERT(top == order[i]);
        tide__heap_remove(&hp, top);
        ASSERT(!tide__tentry_armed(top));
    }
    ASSERT(tide__heap_peek(&hp) == NULL);
    tide__heap_free(&hp);
    return 0;
}

TEST_IMPL(heap_remove_middle) {
    tide__heap hp;
    tide__heap_init(&hp);
    tide__tentry e[10];
    for (int i = 0; i < 10; i++) {
        e[i] = mk((uint64_t)(100 - i * 7));
        tide__heap_insert(&hp, &e[i]);
    }
    tide__heap_remove(&hp, &e[4]);
    tide__heap_remove(&hp, &e[4]); /* a second remove is a no-op */
    tide__heap_remove(&hp, &e[9]);
    ASSERT_EQ(hp.len, 8);
    uint64_t last = 0;
    while (tide__heap_peek(&hp)) {
        tide__tentry *t = tide__heap_peek(&hp);
        ASSERT(t != &e[4] && t != &e[9]);
        ASSERT(t->due >= last);
        last = t->due;
        tide__heap_remove(&hp, t);
    }
    tide__heap_free(&hp);
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

TEST_IMPL(heap_random_against_sort) {
    enum { N = 2000 };
    static tide__tentry e[N];
    static uint64_t want[N];
    tide__heap hp;
    tide__heap_init(&hp);
    srand(42);
    int n = 0;
    for (int i = 0; i < N; i++) {
        e[i] = mk((uint64_t)(rand() % 500));
        tide__heap_insert(&hp, &e[i]);
    }
    /* Remove every third entry from the middle, keep the rest. */
    for (int i = 0; i < N; i++) {
        if (i % 3 == 0)
            tide__heap_remove(&hp, &e[i]);
        else
            want[n++] = e[i].due;
    }
    qsort(want, (size_t)n, sizeof(want[0]), cmp_u64);
    for (int i = 0; i < n; i++) {
        tide__tentry *t = tide__heap_peek(&hp);
        ASSERT(t != NULL);
        ASSERT_EQ(t->due, want[i]);
        tide__heap_remove(&hp, t);
    }
    ASSERT_EQ(hp.len, 0);
    tide__heap_free(&hp);
    return 0;
}
