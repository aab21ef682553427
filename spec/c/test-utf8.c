/* Tests of strict UTF-8 checking, repair and encoding (src/utf8.c). */
#include "../../src/internal.h"
#include "task.h"

/* One case: input bytes, the offset tide__utf8_check returns, and the
 * repaired text ("\xEF\xBF\xBD" is U+FFFD). */
static const struct {
    const char *in;
    size_t len;
    size_t bad_at;
    const char *repaired;
    size_t repaired_len;
} cases[] = {
#define C(in, at, out) {in, sizeof(in) - 1, at, out, sizeof(out) - 1}
    C("", 0, ""),
    C("plain ascii, longer than one word", 33,
      "plain ascii, longer than one word"),
    C("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80", 15,
      "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80"),
    C("\xEF\xBF\xBF\xF4\x8F\xBF\xBF", 7, "\xEF\xBF\xBF\xF4\x8F\xBF\xBF"),
    C("a\0b", 3, "a\0b"),
    /* A lone continuation byte and bytes that never start a sequence. */
    C("ab\x80", 2, "ab\xEF\xBF\xBD"),
    C("\xFF", 0, "\xEF\xBF\xBD"),
    C("\xF5\x80\x80\x80", 0,
      "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
    /* Overlong forms: each byte is its own maximal subpart. */
    C("\xC0\xAF", 0, "\xEF\xBF\xBD\xEF\xBF\xBD"),
    C("\xC1\xBF", 0, "\xEF\xBF\xBD\xEF\xBF\xBD"),
    C("\xE0\x80\xAF", 0, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
    C("\xF0\x8F\xBF\xBF", 0,
      "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
    /* A surrogate written in UTF-8 (CESU-8). */
    C("x\xED\xA0\x80", 1, "x\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
    C("\xED\x9F\xBF", 3, "\xED\x9F\xBF"), /* U+D7FF, just below */
    /* Beyond U+10FFFF. */
    C("\xF4\x90\x80\x80", 0,
      "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
    /* Truncated sequences: the valid prefix is one maximal subpart. */
    C("\xE2\x82", 0, "\xEF\xBF\xBD"),
    C("\xE2\x82x", 0, "\xEF\xBF\xBDx"),
    C("\xF0\x9F\x98", 0, "\xEF\xBF\xBD"),
    C("caf\xC3", 3, "caf\xEF\xBF\xBD"),
    /* A byte-cut "e acute" in the middle of a long ASCII run. */
    C("0123456789abcdef\xC3xyz0123456789", 16,
      "0123456789abcdef\xEF\xBF\xBDxyz0123456789"),
#undef C
};

TEST_IMPL(utf8_check_and_repair_table) {
    for (size_t i = 0; i < TIDE_ARRAY_SIZE(cases); i++) {
        char out[TIDE_UTF8_REPAIR_MAX(64)];
        size_t len = cases[i].len;
        size_t want = cases[i].repaired_len;
        ASSERT(len <= 64);
        ASSERT_EQ(tide__utf8_check(cases[i].in, len), cases[i].bad_at);
        size_t n = tide__utf8_repair(out, cases[i].in, len);
        ASSERT_EQ(n, want);
        ASSERT(memcmp(out, cases[i].repaired, n) == 0);
        /* Repaired text is strict UTF-8 and repairs to itself. */
        ASSERT_EQ(tide__utf8_check(out, n), n);
    }
    return 0;
}

TEST_IMPL(utf8_bad_lengths) {
    ASSERT_EQ(tide__utf8_bad("a", 1), 0);
    ASSERT_EQ(tide__utf8_bad("\xC3\xA9", 2), 0);
    ASSERT_EQ(tide__utf8_bad("", 0), 0);
    ASSERT_EQ(tide__utf8_bad("\x80", 1), 1);
    ASSERT_EQ(tide__utf8_bad("\xC3", 1), 1);
    ASSERT_EQ(tide__utf8_bad("\xE2\x82", 2), 2);
    ASSERT_EQ(tide__utf8_bad("\xF0\x9F\x98x", 4), 3);
    ASSERT_EQ(tide__utf8_bad("\xED\xA0\x80", 3), 1);
    return 0;
}

/* Every byte string of length 1 to 3 over a set of interesting bytes:
 * repair yields strict UTF-8, and leaves strict UTF-8 as it is. */
TEST_IMPL(utf8_repair_exhaustive_short) {
    static const unsigned char bytes[] = {
        0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1,
        0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5,
        0xFF,
    };
    size_t nb = sizeof(bytes);
    for (size_t a = 0; a < nb; a++)
        for (size_t b = 0; b <= nb; b++)
            for (size_t c = 0; c <= nb; c++) {
                unsigned char in[3];
                char out[TIDE_UTF8_REPAIR_MAX(3)];
                size_t len = 1;
                in[0] = bytes[a];
                if (b < nb) {
                    in[len++] = bytes[b];
                    if (c < nb)
                        in[len++] = bytes[c];
                } else if (c < nb) {
                    continue;
                }
                size_t n = tide__utf8_repair(out, in, len);
                ASSERT_EQ(tide__utf8_check(out, n), n);
                if (tide__utf8_check(in, len) == len) {
                    ASSERT_EQ(n, len);
                    ASSERT(memcmp(out, in, len) == 0);
                }
            }
    return 0;
}

TEST_IMPL(utf8_put_encodes_scalars) {
    char out[4];
    ASSERT_EQ(tide__utf8_put(out, 0x24), 1);
    ASSERT(memcmp(out, "\x24", 1) == 0);
    ASSERT_EQ(tide__utf8_put(out, 0xE9), 2);
    ASSERT(memcmp(out, "\xC3\xA9", 2) == 0);
    ASSERT_EQ(tide__utf8_put(out, 0xFFFD), 3);
    ASSERT(memcmp(out, "\xEF\xBF\xBD", 3) == 0);
    ASSERT_EQ(tide__utf8_put(out, 0x1F600), 4);
    ASSERT(memcmp(out, "\xF0\x9F\x98\x80", 4) == 0);
    ASSERT_EQ(tide__utf8_put(out, 0x10FFFF), 4);
    ASSERT(memcmp(out, "\xF4\x8F\xBF\xBF", 4) == 0);
    return 0;
}
