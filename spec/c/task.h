/* A tiny test harness in the shape of libuv's test/task.h. */
#ifndef TIDE_TEST_TASK_H
#define TIDE_TEST_TASK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_IMPL(name)             \
    int run_test_##name(void);      \
    int run_test_##name(void)
#define TEST_DECLARE(name) int run_test_##name(void);

#define ASSERT_BASE(cond, fmt, ...)                                      \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "Assertion failed in %s on line %d: " fmt "\n", \
                    __FILE__, __LINE__, __VA_ARGS__);                    \
            return 1;                                                    \
        }                                                                \
    } while (0)

#define ASSERT(c) ASSERT_BASE((c), "%s", #c)
#define ASSERT_EQ(a, b)                                                  \
    ASSERT_BASE((long long)(a) == (long long)(b), "%s == %s (%lld != %lld)", \
                #a, #b, (long long)(a), (long long)(b))
#define ASSERT_OK(a) ASSERT_EQ((a), 0)
#define ASSERT_STR_CONTAINS(s, sub)                                      \
    ASSERT_BASE(strstr((s), (sub)) != NULL, "'%s' contains '%s'", (s), (sub))

#endif
