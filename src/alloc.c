/* Allocation wrappers: running out of memory is fatal (tmux's xmalloc).
 * And the blocks an engine keeps for the next one (tide__keep_alloc).
 *
 * Why keep blocks: a run of 100 000 inputs through `tide.run` makes 100 000
 * contexts and rings of as many entries, some 25 MB, and frees them when
 * its engine closes. glibc gives most of that back to the system (it trims
 * the top of the heap and unmaps blocks over its mmap threshold), so the
 * next engine of the process takes a page fault for every 4 KiB it touches
 * again. On the VMs tide is measured on a fault costs 5-20 us: in W1 they
 * were more than half of the run (0.24 s against 0.10 s with glibc told
 * never to trim, GLIBC_TUNABLES=glibc.malloc.trim_threshold=...). A
 * process that runs pipelines again and again (a REPL, a host calling
 * tide.run, the benchmarks) pays that each time. Kept blocks are bounded
 * (TIDE__KEEP_MAX in all), so a process holds at most that much memory it
 * does not use; blocks beyond it are freed. */
#include <pthread.h>
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

/* Power-of-two classes from 64 KiB (2^16) to 2^(16 + KEEP_CLASSES - 1);
 * larger blocks are plain malloc. A kept block's first word links it. */
#define KEEP_MIN_SHIFT 16
#define KEEP_CLASSES 16

static pthread_mutex_t keep_lock = PTHREAD_MUTEX_INITIALIZER;
static void *keep_head[KEEP_CLASSES];
static size_t keep_total;

/* The class of a block of `cap` bytes, or -1 for one that is not kept
 * (too small or too large: plain malloc/free). */
static int keep_class(size_t cap) {
    if (cap < ((size_t)1 << KEEP_MIN_SHIFT))
        return -1;
    int c = 0;
    while (((size_t)1 << (KEEP_MIN_SHIFT + c)) < cap)
        c++;
    return c < KEEP_CLASSES ? c : -1;
}

void *tide__keep_alloc(size_t *cap) {
    int c = keep_class(*cap);
    if (c < 0)
        return tide__xmalloc(*cap);
    size_t size = (size_t)1 << (KEEP_MIN_SHIFT + c);
    *cap = size;
    pthread_mutex_lock(&keep_lock);
    void *p = keep_head[c];
    if (p) {
        memcpy(&keep_head[c], p, sizeof(void *));
        keep_total -= size;
    }
    pthread_mutex_unlock(&keep_lock);
    return p ? p : tide__xmalloc(size);
}

void tide__keep_free(void *p, size_t cap) {
    if (p == NULL)
        return;
    int c = keep_class(cap);
    if (c >= 0) {
        size_t size = (size_t)1 << (KEEP_MIN_SHIFT + c);
        TIDE_ASSERT(size == cap);
        pthread_mutex_lock(&keep_lock);
        int keep = keep_total + size <= TIDE__KEEP_MAX;
        if (keep) {
            memcpy(p, &keep_head[c], sizeof(void *));
            keep_head[c] = p;
            keep_total += size;
        }
        pthread_mutex_unlock(&keep_lock);
        if (keep)
            return;
    }
    free(p);
}

size_t tide__keep_held(void) {
    pthread_mutex_lock(&keep_lock);
    size_t n = keep_total;
    pthread_mutex_unlock(&keep_lock);
    return n;
}
