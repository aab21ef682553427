/* Tests of the token bucket (src/bucket.c) on a simulated clock. */
#include <math.h>

#include "../../src/internal.h"
#include "task.h"

#define SEC 1000000000ull

/* A small deterministic generator (xorshift64*), so that a failure
 * replays. */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(uint64_t n) {
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return (rnd_state * 0x2545f4914f6cdd1dull >> 11) % n;
}

/* Rates and bursts the tests go through: below one per second,
 * fractional, and large. */
static const double rates[] = {0.01, 0.3, 1.0 / 3, 0.25, 1, 2.5, 7.3, 1000};
static const double bursts[] = {1, 2.5, 5};

TEST_IMPL(bucket_starts_full) {
    tide__bucket b;
    uint64_t t = 123 * SEC;
    tide__bucket_init(&b, 2, 5, t);
    ASSERT(tide__bucket_tokens(&b, t) == 5);
    ASSERT_EQ(tide__bucket_avail(&b, t), 5);
    for (int i = 0; i < 5; i++)
        ASSERT(tide__bucket_take(&b, t));
    ASSERT(!tide__bucket_take(&b, t));
    ASSERT_EQ(tide__bucket_avail(&b, t), 0);
    ASSERT_EQ(tide__bucket_wait_ns(&b, t), SEC / 2);

    /* A burst below one is one: a bucket that could never start anything
     * is not a limiter. A fractional burst keeps its fraction. */
    tide__bucket_init(&b, 2, 0.2, t);
    ASSERT(b.burst == 1);
    tide__bucket_init(&b, 1, 2.5, t);
    ASSERT(tide__bucket_take(&b, t) && tide__bucket_take(&b, t));
    ASSERT(!tide__bucket_take(&b, t));
    ASSERT_EQ(tide__bucket_wait_ns(&b, t), SEC / 2);

    /* No rate: no limit. */
    tide__bucket_init(&b, 0, 1, t);
    for (int i = 0; i < 1000; i++)
        ASSERT(tide__bucket_take(&b, t));
    ASSERT_EQ(tide__bucket_wait_ns(&b, t), 0);
    ASSERT_EQ(tide__bucket_avail(&b, t), UINT32_MAX);
    return 0;
}

/* A greedy taker on a clock that advances in random steps (some of them
 * zero) takes every token it may. Over any window between two of its
 * takes, [t_i, t_j], it took j - i + 1 <= burst + rate * (t_j - t_i).
 * Its steps never pass the moment the next token is due, so the bucket
 * never sits full between two looks at it (which would rightly drop
 * what it earns then): by the end it has taken every token earned, the
 * floor of burst + rate * elapsed, less at most what accrues in the
 * nanosecond it may look late for each. */
static int window_run(double rate, double burst, uint64_t max_step) {
    enum { MAXT = 1500 };
    static uint64_t at[MAXT];
    uint32_t n = 0;
    uint64_t t0 = 5 * SEC + rnd(SEC), now = t0;
    tide__bucket b;
    tide__bucket_init(&b, rate, burst, t0);
    while (n < MAXT) {
        while (n < MAXT && tide__bucket_take(&b, now))
            at[n++] = now;
        uint64_t w = tide__bucket_wait_ns(&b, now);
        uint64_t step = rnd(4) == 0 ? 0 : 1 + rnd(max_step);
        now += step < w ? step : w;
    }
    uint64_t end = at[n - 1];
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = i; j < n; j++) {
            double allowed = burst + rate * (double)(at[j] - at[i]) / 1e9;
            ASSERT_BASE(j - i + 1 <= allowed + 1e-9,
                        "rate %g burst %g: %u takes in %llu ns", rate, burst,
                        j - i + 1, (unsigned long long)(at[j] - at[i]));
        }
    double earned = burst + rate * (double)(end - t0) / 1e9;
    double late = n * rate * 1e-9;
    ASSERT_BASE(n >= floor(earned - late - 1e-9), "rate %g burst %g: %u "
                "takes, %.9f earned", rate, burst, n, earned);
    return 0;
}

TEST_IMPL(bucket_window_bound) {
    for (size_t r = 0; r < TIDE_ARRAY_SIZE(rates); r++)
        for (size_t k = 0; k < TIDE_ARRAY_SIZE(bursts); k++) {
            uint64_t step = (uint64_t)(1e9 / rates[r] / 50);
            if (window_run(rates[r], bursts[k], step) != 0)
                return 1;
        }
    return 0;
}

/* The wait is the first nanosecond at which a take succeeds: a take then
 * succeeds and one a nanosecond earlier fails. */
TEST_IMPL(bucket_wait_is_exact) {
    for (size_t r = 0; r < TIDE_ARRAY_SIZE(rates); r++)
        for (size_t k = 0; k < TIDE_ARRAY_SIZE(bursts); k++) {
            tide__bucket b;
            uint64_t now = rnd(1000) * SEC;
            tide__bucket_init(&b, rates[r], bursts[k], now);
            for (int i = 0; i < 300; i++) {
                now += rnd(3 * SEC / 2 / (uint64_t)ceil(rates[r]));
                uint64_t w = tide__bucket_wait_ns(&b, now);
                tide__bucket early = b, late = b;
                if (w == 0) {
                    ASSERT(tide__bucket_take(&late, now));
                } else {
                    ASSERT(!tide__bucket_take(&early, now + w - 1));
                    ASSERT(tide__bucket_take(&late, now + w));
                }
                /* Against the rate: the wait is (1 - tokens) / rate, up
                 * to the nanosecond it is rounded to. */
                double tok = tide__bucket_tokens(&b, now);
                double want = tok >= 1 ? 0 : (1 - tok) / rates[r] * 1e9;
                ASSERT_BASE(fabs((double)w - want) <= 1 + want * 1e-12,
                            "wait %llu ns, want %.3f",
                            (unsigned long long)w, want);
                tide__bucket_take(&b, now + w);
                now += w;
            }
        }
    /* A rate so low that the wait is years is still exact to the ns. */
    tide__bucket b;
    tide__bucket_init(&b, 1e-6, 1, 0);
    ASSERT(tide__bucket_take(&b, 0));
    ASSERT_EQ(tide__bucket_wait_ns(&b, 0), 1000000 * SEC);
    return 0;
}

/* However long the bucket is left alone, it holds at most burst tokens,
 * and at no time more. */
TEST_IMPL(bucket_refill_caps_at_burst) {
    for (size_t r = 0; r < TIDE_ARRAY_SIZE(rates); r++)
        for (size_t k = 0; k < TIDE_ARRAY_SIZE(bursts); k++) {
            double rate = rates[r], burst = bursts[k];
            tide__bucket b;
            uint64_t now = SEC;
            tide__bucket_init(&b, rate, burst, now);
            for (int i = 0; i < 2000; i++) {
                now += rnd(4 * SEC);
                if (rnd(2))
                    tide__bucket_take(&b, now);
                else
                    tide__bucket_refill(&b, now);
                ASSERT(tide__bucket_tokens(&b, now) <= burst);
                ASSERT(tide__bucket_tokens(&b, now) >= 0);
            }
            now += 3600 * SEC * 24 * 365; /* a year idle */
            ASSERT(tide__bucket_tokens(&b, now) == burst);
            uint32_t got = 0;
            while (tide__bucket_take(&b, now))
                got++;
            ASSERT_EQ(got, (uint32_t)floor(burst));
        }
    return 0;
}

/* Two buckets see the same takes at the same times; one of them is also
 * refilled at every step of a fine clock in between. Neither gains nor
 * loses a token by it: each take has the same outcome on both, at the
 * first nanosecond it may succeed and the one before, and leaves both in
 * the same state. Every fifth take comes late, after the bucket filled
 * up (which the fine one notices, the other not). */
TEST_IMPL(bucket_small_steps_match_one_big) {
    for (size_t r = 0; r < TIDE_ARRAY_SIZE(rates); r++) {
        double rate = rates[r];
        tide__bucket fine, coarse;
        uint64_t now = 7 * SEC;
        tide__bucket_init(&fine, rate, 1, now);
        tide__bucket_init(&coarse, rate, 1, now);
        ASSERT(tide__bucket_take(&fine, now));
        ASSERT(tide__bucket_take(&coarse, now));
        /* About 100 000 refills per token, in uneven steps. */
        uint64_t step = (uint64_t)(1e9 / rate / 100000);
        for (int k = 0; k < 20; k++) {
            uint64_t due = now + tide__bucket_wait_ns(&coarse, now);
            int late = k % 5 == 4;
            if (late)
                due += (uint64_t)(2e9 / rate);
            uint64_t t = now;
            while (t + 2 * step < due) {
                t += 1 + rnd(2 * step);
                tide__bucket_refill(&fine, t);
            }
            tide__bucket fe = fine, ce = coarse;
            int f_early = tide__bucket_take(&fe, due - 1);
            int c_early = tide__bucket_take(&ce, due - 1);
            ASSERT_EQ(c_early, late);
            ASSERT_BASE(f_early == c_early, "rate %g, token %d: the fine "
                        "bucket had a token before it was due", rate, k);
            ASSERT_BASE(tide__bucket_take(&fine, due),
                        "rate %g, token %d: the fine bucket lost the token "
                        "due at %llu ns (%.17g tokens)", rate, k,
                        (unsigned long long)due,
                        tide__bucket_tokens(&fine, due));
            ASSERT(tide__bucket_take(&coarse, due));
            ASSERT(fine.tokens == coarse.tokens);
            ASSERT_EQ(fine.last_ns, coarse.last_ns);
            now = due;
        }
    }
    return 0;
}

/* Long runs: a greedy taker on a fine clock and one that only looks when
 * a token is due see the same takes, any 101 consecutive takes span at
 * least (101 - burst) / rate, and left alone the bucket fills up again. */
static int long_run(double rate, double burst, uint32_t ntakes) {
    enum { LAG = 100 };
    uint64_t at[LAG + 1];
    tide__bucket fine, coarse;
    uint64_t t0 = 3 * SEC, now = t0;
    tide__bucket_init(&fine, rate, burst, t0);
    tide__bucket_init(&coarse, rate, burst, t0);
    for (uint32_t n = 0; n < ntakes; n++) {
        uint64_t due = now + tide__bucket_wait_ns(&coarse, now);
        for (uint64_t t = now; due - t > 2;) {
            t += 1 + rnd(due - t - 1);
            tide__bucket_refill(&fine, t);
        }
        ASSERT_BASE(tide__bucket_take(&fine, due) &&
                    tide__bucket_take(&coarse, due),
                    "rate %g: take %u at %llu ns", rate, n,
                    (unsigned long long)due);
        now = due;
        at[n % (LAG + 1)] = now;
        if (n >= LAG) {
            uint64_t span = now - at[(n - LAG) % (LAG + 1)];
            ASSERT_BASE(LAG + 1 <= burst + rate * (double)span / 1e9 + 1e-6,
                        "rate %g: %d takes in %llu ns", rate, LAG + 1,
                        (unsigned long long)span);
        }
    }
    double earned = burst + rate * (double)(now - t0) / 1e9;
    ASSERT_BASE(ntakes <= earned + 1e-6 && ntakes >= floor(earned) - 1,
                "rate %g: %u takes, %.6f earned", rate, ntakes, earned);
    now += (uint64_t)(burst / rate * 1e9) + 1;
    tide__bucket_refill(&fine, now);
    ASSERT(tide__bucket_tokens(&fine, now) == burst);
    ASSERT(tide__bucket_tokens(&coarse, now) == burst);
    return 0;
}

TEST_IMPL(bucket_long_runs) {
    if (long_run(1e6, 5, 1000000) != 0) /* a second of one per microsecond */
        return 1;
    return long_run(1e-3, 1, 3000); /* 35 days of one per 1000 s */
}

/* A clock that does not move: takes stop at the burst, and reading or
 * refilling changes nothing. One that goes back gains nothing either. */
TEST_IMPL(bucket_clock_standing_still) {
    tide__bucket b;
    uint64_t t = 50 * SEC;
    tide__bucket_init(&b, 0.5, 3, t);
    for (int i = 0; i < 3; i++)
        ASSERT(tide__bucket_take(&b, t));
    for (int i = 0; i < 1000; i++) {
        tide__bucket_refill(&b, t);
        ASSERT(!tide__bucket_take(&b, t));
        ASSERT_EQ(tide__bucket_avail(&b, t), 0);
        ASSERT_EQ(tide__bucket_wait_ns(&b, t), 2 * SEC);
        ASSERT(tide__bucket_tokens(&b, t) == 0);
    }
    /* Half-way to the next token, then an earlier time: still half. */
    ASSERT(!tide__bucket_take(&b, t + SEC));
    ASSERT(tide__bucket_tokens(&b, t + SEC) == 0.5);
    tide__bucket_refill(&b, t);
    ASSERT(!tide__bucket_take(&b, t));
    ASSERT_EQ(tide__bucket_wait_ns(&b, t + SEC), SEC);
    ASSERT(tide__bucket_take(&b, t + 2 * SEC));

    /* Full at T (it had long to fill), emptied there, then read a second
     * earlier: nothing comes back, and the next token is due as before. */
    uint64_t T = t + 100 * SEC;
    tide__bucket_refill(&b, T);
    ASSERT(tide__bucket_tokens(&b, T) == 3);
    for (int i = 0; i < 3; i++)
        ASSERT(tide__bucket_take(&b, T));
    tide__bucket_refill(&b, T - SEC);
    ASSERT(!tide__bucket_take(&b, T - SEC));
    ASSERT_EQ(tide__bucket_avail(&b, T - SEC), 0);
    ASSERT(!tide__bucket_take(&b, T + 2 * SEC - 1));
    ASSERT(tide__bucket_take(&b, T + 2 * SEC));

    /* A take stamped earlier than the last one does not earn the time
     * between them a second time. */
    T += 100 * SEC;
    tide__bucket_refill(&b, T);
    ASSERT(tide__bucket_take(&b, T));
    ASSERT(tide__bucket_take(&b, T - 4 * SEC));
    ASSERT(tide__bucket_tokens(&b, T) == 1);
    return 0;
}
