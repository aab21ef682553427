/* Tests of the result cache's store (src/cache.c) on real files in a
 * temporary directory: entries outlive the process that made them, ttl
 * and clear go by the wall clock, and files that are not caches are told
 * apart from places that cannot hold one. */
#include <sqlite3.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../src/internal.h"
#include "task.h"

static char dir[64];
static char path[128];
static char err[512];

static int setup(void) {
    snprintf(dir, sizeof dir, "/tmp/tide-cache-test-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof path, "%s/c.db", dir);
    return 0;
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* 1 and the value's bytes in out when key is there (younger than ttl). */
static int lookup(tide__cache *c, const char *key, double ttl, char *out,
                  size_t outlen) {
    const char *v;
    size_t n;
    int rc = tide__cache_get(c, key, strlen(key), ttl, &v, &n, err, sizeof err);
    if (rc == 1) {
        snprintf(out, outlen, "%.*s", (int)n, v);
        tide__cache_get_end(c);
    }
    return rc;
}

TEST_IMPL(cache_entries_outlive_the_writer) {
    ASSERT_OK(setup());
    tide__cache *c;
    char v[64];
    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_EQ(lookup(c, "k1", 0, v, sizeof v), 0);
    ASSERT_OK(tide__cache_put(c, "k1", 2, "p/t", 3, "{\"a\":1}", 7));
    ASSERT_OK(tide__cache_put(c, "k2", 2, "p/t", 3, "", 0));
    ASSERT_OK(tide__cache_close(c, err, sizeof err));

    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_EQ(lookup(c, "k1", 0, v, sizeof v), 1);
    ASSERT(strcmp(v, "{\"a\":1}") == 0);
    ASSERT_EQ(lookup(c, "k2", 3600, v, sizeof v), 1);
    ASSERT(strcmp(v, "") == 0);
    ASSERT_OK(tide__cache_hit(c, "k1", 2));
    ASSERT_OK(tide__cache_hit(c, "k1", 2));
    /* A new entry under the same key replaces the old one. */
    ASSERT_OK(tide__cache_put(c, "k2", 2, "p/t", 3, "2", 1));
    ASSERT_OK(tide__cache_close(c, err, sizeof err));

    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_EQ(lookup(c, "k2", 0, v, sizeof v), 1);
    ASSERT(strcmp(v, "2") == 0);
    tide__cache_stats_t s;
    ASSERT_OK(tide__cache_stats(c, 0, &s, err, sizeof err));
    ASSERT_EQ(s.entries, 2);
    ASSERT_EQ(s.hits, 2);
    ASSERT_EQ(s.bytes, 2 + 7 + 2 + 1);
    ASSERT(s.oldest > 0 && s.oldest <= s.newest);
    ASSERT(s.newest <= tide__cache_now());
    ASSERT_OK(tide__cache_close(c, err, sizeof err));
    teardown();
    return 0;
}

TEST_IMPL(cache_ttl_and_clear_by_age) {
    ASSERT_OK(setup());
    tide__cache *c;
    char v[64];
    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_OK(tide__cache_put(c, "old", 3, "p/t", 3, "1", 1));
    ASSERT_OK(tide__cache_close(c, err, sizeof err));
    sleep_ms(300);
    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_OK(tide__cache_put(c, "new", 3, "p/t", 3, "2", 1));
    ASSERT_OK(tide__cache_close(c, err, sizeof err));

    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    /* Older than its ttl: a miss; within it: a hit. */
    ASSERT_EQ(lookup(c, "old", 0.2, v, sizeof v), 0);
    ASSERT_EQ(lookup(c, "old", 60, v, sizeof v), 1);
    ASSERT_EQ(lookup(c, "new", 0.2, v, sizeof v), 1);
    tide__cache_stats_t s;
    ASSERT_OK(tide__cache_stats(c, 0.2, &s, err, sizeof err));
    ASSERT_EQ(s.entries, 2);
    ASSERT_EQ(s.older, 1);
    ASSERT_OK(tide__cache_clear(c, 0.2));
    ASSERT_OK(tide__cache_close(c, err, sizeof err));

    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_EQ(lookup(c, "old", 0, v, sizeof v), 0);
    ASSERT_EQ(lookup(c, "new", 0, v, sizeof v), 1);
    ASSERT_OK(tide__cache_clear(c, -1));
    ASSERT_OK(tide__cache_close(c, err, sizeof err));

    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_OK(tide__cache_stats(c, 0, &s, err, sizeof err));
    ASSERT_EQ(s.entries, 0);
    ASSERT_OK(tide__cache_close(c, err, sizeof err));
    teardown();
    return 0;
}

TEST_IMPL(cache_tells_bad_files_from_bad_places) {
    ASSERT_OK(setup());
    tide__cache *c = NULL;
    /* Not SQLite at all. */
    FILE *f = fopen(path, "wb");
    ASSERT(f != NULL);
    for (int i = 0; i < 512; i++)
        fputs("not a database ", f);
    fclose(f);
    ASSERT_EQ(tide__cache_open(path, &c, err, sizeof err), TIDE_EINVAL);
    ASSERT(c == NULL);
    ASSERT_STR_CONTAINS(err, path);

    /* An SQLite file of something else. */
    snprintf(path, sizeof path, "%s/other.db", dir);
    sqlite3 *db;
    ASSERT_OK(sqlite3_open(path, &db));
    ASSERT_OK(sqlite3_exec(db, "CREATE TABLE meta(key, value);"
                               "INSERT INTO meta VALUES('format', 1)",
                           NULL, NULL, NULL));
    sqlite3_close(db);
    ASSERT_EQ(tide__cache_open(path, &c, err, sizeof err), TIDE_EINVAL);
    ASSERT_STR_CONTAINS(err, "not a tide cache");

    /* A cache of a newer format. */
    snprintf(path, sizeof path, "%s/newer.db", dir);
    ASSERT_OK(tide__cache_open(path, &c, err, sizeof err));
    ASSERT_OK(tide__cache_close(c, err, sizeof err));
    ASSERT_OK(sqlite3_open(path, &db));
    ASSERT_OK(sqlite3_exec(db, "UPDATE meta SET value = 99 WHERE key = "
                               "'format'", NULL, NULL, NULL));
    sqlite3_close(db);
    ASSERT_EQ(tide__cache_open(path, &c, err, sizeof err), TIDE_EINVAL);
    ASSERT_STR_CONTAINS(err, "newer tide");

    /* Places: a directory, and a path under a regular file. */
    ASSERT_EQ(tide__cache_open(dir, &c, err, sizeof err), TIDE_EIO);
    snprintf(path, sizeof path, "%s/newer.db/x.db", dir);
    ASSERT_EQ(tide__cache_open(path, &c, err, sizeof err), TIDE_EIO);
    ASSERT(c == NULL);
    teardown();
    return 0;
}
