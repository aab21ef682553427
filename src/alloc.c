/* Allocation wrappers: running out of memory is fatal (tmux's xmalloc). */
#include <string.h>

#include "internal.h"

static void alloc_die(size_t n) {
    fprintf(stderr, "tide: out of memory (allocating %zu bytes)\n", n);
    fflush(stderr);
    abort();
}

void *tide__xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        alloc_die(n);
    return p;
}

void *tide__xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        alloc_die(n * size);
    return p;
}

void *tide__xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        alloc_die(n);
    return q;
}

char *tide__xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = tide__xmalloc(n);
    memcpy(p, s, n);
    return p;
}
