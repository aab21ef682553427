/* Tests of the ready queue (src/rq.c). */
#include "../../src/internal.h"
#include "task.h"

#define V(slot, task) (((uint64_t)(slot) << 32) | (task))

TEST_IMPL(rq_priority_then_depth) {
    tide__rq q;
    uint64_t v;
    tide__rq_init(&q);
    tide__rq_push(&q, TIDE__PRIO_LOW, 3, V(1, 1));
    tide__rq_push(&q, TIDE__PRIO_LOW, 0, V(2, 4));
    tide__rq_push(&q, TIDE__PRIO_LIFO, 0, V(5, 1));
    tide__rq_push(&q, TIDE__PRIO_HIGH, 7, V(3, 1));
    tide__rq_push(&q, TIDE__PRIO_HIGH, 2, V(4, 2));
    ASSERT_EQ(q.len, 5);
    ASSERT_OK(tide__rq_pop(&q, &v));
    ASSERT_EQ(v, V(4, 2)); /* high, nearest to a sink */
    ASSERT_OK(tide__rq_pop(&q, &v));
    ASSERT_EQ(v, V(3, 1));
    ASSERT_OK(tide__rq_pop(&q, &v));
    ASSERT_EQ(v, V(2, 4)); /* low, depth 0 before depth 3 */
    ASSERT_OK(tide__rq_pop(&q, &v));
    ASSERT_EQ(v, V(1, 1));
    ASSERT_OK(tide__rq_pop(&q, &v));
    ASSERT_EQ(v, V(5, 1));
    ASSERT_EQ(tide__rq_pop(&q, &v), -1);
    tide__rq_free(&q);
    return 0;
}

TEST_IMPL(rq_fifo_and_lifo) {
    tide__rq q;
    uint64_t v;
    tide__rq_init(&q);
    for (uint32_t i = 1; i <= 3; i++) {
        tide__rq_push(&q, TIDE__PRIO_LOW, 1, V(i, 0));
        tide__rq_push(&q, TIDE__PRIO_LIFO, 1, V(10 + i, 0));
    }
    for (uint32_t i = 1; i <= 3; i++) {
        ASSERT_OK(tide__rq_pop(&q, &v));
        ASSERT_EQ(v >> 32, i); /* FIFO */
    }
    for (uint32_t i = 3; i >= 1; i--) {
        ASSERT_OK(tide__rq_pop(&q, &v));
        ASSERT_EQ(v >> 32, 10 + i); /* LIFO */
    }
    tide__rq_free(&q);
    return 0;
}

TEST_IMPL(rq_many_entries_grow) {
    tide__rq q;
    uint64_t v;
    tide__rq_init(&q);
    /* Interleave pushes and pops so the ring wraps while it grows, and
     * use a depth beyond the last bucket. */
    uint32_t next_in = 0, next_out = 0;
    for (int round = 0; round < 100; round++) {
        for (int k = 0; k < 50; k++)
            tide__rq_push(&q, TIDE__PRIO_LOW, 1000, V(next_in++, 0));
        for (int k = 0; k < 30; k++) {
            ASSERT_OK(tide__rq_pop(&q, &v));
            ASSERT_EQ(v >> 32, next_out++);
        }
    }
    while (tide__rq_pop(&q, &v) == 0)
        ASSERT_EQ(v >> 32, next_out++);
    ASSERT_EQ(next_out, next_in);
    ASSERT_EQ(q.len, 0);
    tide__rq_free(&q);
    return 0;
}
