/* Strict UTF-8: checking, repairing and encoding text.
 *
 * DESIGN
 *
 * "Strict" is the Unicode definition (Unicode 15, table 3-7, the same as
 * RFC 3629): no overlong forms (C0, C1, E0 80..9F, F0 80..8F), no
 * surrogates (ED A0..BF), nothing above U+10FFFF (F4 90..BF, F5..FF), no
 * stray continuation bytes and no truncated sequences. yajl 2.1 checks
 * only the shape of each sequence (its lexer and yajl_gen_validate_utf8
 * take C0 AF, ED A0 80 and F4 90 80 80), and strict readers such as
 * Python's json refuse what it lets through, so the JSON codec checks
 * text here.
 *
 * Repair replaces each maximal subpart of an ill-formed sequence by one
 * U+FFFD, the practice Unicode recommends (chapter 3, "U+FFFD
 * Substitution of Maximal Subparts") and WHATWG's decoder follows: a
 * truncated E2 82 becomes one U+FFFD, C0 AF two, ED A0 80 three.
 *
 * Nothing here allocates: callers bring the output buffer. */
#include <string.h>

#include "internal.h"

/* Returns the length of the well-formed sequence that starts at s (n > 0
 * bytes available), or 0 when none does; then *bad is the length of its
 * maximal subpart: the lead byte and the continuation bytes that fit
 * before the sequence went wrong (at least 1). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad) {
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t need, i;

    if (c < 0x80)
        return 1;
    if (c < 0xC2 || c > 0xF4) {
        *bad = 1;
        return 0;
    }
    if (c < 0xE0) {
        need = 1;
    } else if (c < 0xF0) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0; /* below is overlong */
        else if (c == 0xED)
            hi = 0x9F; /* above are the surrogates */
    } else {
        need = 3;
        if (c == 0xF0)
            lo = 0x90; /* below is overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above is beyond U+10FFFF */
    }
    for (i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

size_t tide__utf8_check(const void *p, size_t n) {
    const unsigned char *s = p;
    size_t i = 0, bad;

    while (i < n) {
        if (s[i] < 0x80) {
            /* Most text is ASCII: skip it a word at a time. */
            while (n - i >= 8) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            while (i < n && s[i] < 0x80)
                i++;
            continue;
        }
        size_t k = utf8_seq(s + i, n - i, &bad);
        if (k == 0)
            return i;
        i += k;
    }
    return n;
}

size_t tide__utf8_bad(const void *p, size_t n) {
    size_t bad = 0;

    if (n == 0 || utf8_seq(p, n, &bad) != 0)
        return 0;
    return bad;
}

size_t tide__utf8_repair(char *out, const void *p, size_t n) {
    const char *s = p;
    size_t i = 0, len = 0;

    while (i < n) {
        size_t ok = tide__utf8_check(s + i, n - i);
        memcpy(out + len, s + i, ok);
        len += ok;
        i += ok;
        if (i < n) {
            memcpy(out + len, "\xEF\xBF\xBD", 3);
            len += 3;
            i += tide__utf8_bad(s + i, n - i);
        }
    }
    return len;
}

size_t tide__utf8_put(char *out, uint32_t cp) {
    unsigned char *o = (unsigned char *)out;

    TIDE_ASSERT(cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF));
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
