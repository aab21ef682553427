/* A token bucket whose clock is an argument: refill, take, time to a token.
 *
 * The count at a time t is computed afresh from the last take,
 *   min(burst, tokens + rate * (t - last_ns)),
 * and only a take (or a full bucket) writes it back. Were every read to
 * write back what was earned since the read before, the sum would round
 * differently depending on how often the bucket is read: one read every
 * microsecond could lack a token at the instant one read only then has
 * it. The formula rises with t, so a full bucket stays full whatever the
 * anchor, and moving the anchor to "full now" changes no later count:
 * however often the bucket is read, every take sees the same count. */
#include <math.h>

#include "internal.h"

void tide__bucket_init(tide__bucket *b, double rate, double burst,
                       uint64_t now_ns) {
    b->rate = rate;
    b->burst = burst >= 1 ? burst : 1;
    b->tokens = b->burst;
    b->last_ns = now_ns;
}

/* Tokens at now_ns (fractional), without changing the bucket. A time
 * before the anchor counts as the anchor: a clock that goes back earns
 * nothing. */
double tide__bucket_tokens(const tide__bucket *b, uint64_t now_ns) {
    if (b->rate <= 0)
        return b->burst;
    double t = b->tokens;
    if (now_ns > b->last_ns)
        t += b->rate * (double)(now_ns - b->last_ns) / 1e9;
    return t > b->burst ? b->burst : t;
}

/* Sets the anchor to (t, now_ns), never moving it back in time. */
static void bucket_set(tide__bucket *b, double t, uint64_t now_ns) {
    b->tokens = t;
    if (now_ns > b->last_ns)
        b->last_ns = now_ns;
}

void tide__bucket_refill(tide__bucket *b, uint64_t now_ns) {
    if (b->rate > 0 && tide__bucket_tokens(b, now_ns) >= b->burst)
        bucket_set(b, b->burst, now_ns);
}

int tide__bucket_take(tide__bucket *b, uint64_t now_ns) {
    if (b->rate <= 0)
        return 1;
    double t = tide__bucket_tokens(b, now_ns);
    if (t < 1)
        return 0;
    bucket_set(b, t - 1, now_ns);
    return 1;
}

uint32_t tide__bucket_avail(tide__bucket *b, uint64_t now_ns) {
    if (b->rate <= 0)
        return UINT32_MAX;
    tide__bucket_refill(b, now_ns);
    double t = tide__bucket_tokens(b, now_ns);
    if (t < 1)
        return 0;
    return t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
}

/* A wait beyond this (about 146 years) is reported as it is, unrefined. */
#define BUCKET_FAR_NS 4.6e18

uint64_t tide__bucket_wait_ns(const tide__bucket *b, uint64_t now_ns) {
    double t = tide__bucket_tokens(b, now_ns);
    if (b->rate <= 0 || t >= 1)
        return 0;
    double est = ceil((1 - t) * 1e9 / b->rate);
    if (!(est < BUCKET_FAR_NS))
        return (uint64_t)BUCKET_FAR_NS;
    /* The estimate rounds twice; step it to the first nanosecond at which
     * the bucket itself has a token, so that a take then succeeds and one
     * a nanosecond earlier fails. */
    uint64_t w = est < 1 ? 1 : (uint64_t)est;
    while (tide__bucket_tokens(b, now_ns + w) < 1)
        w++;
    while (w > 1 && tide__bucket_tokens(b, now_ns + w - 1) >= 1)
        w--;
    return w;
}
