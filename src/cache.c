/* The result cache: a SQLite file of task outputs keyed by a hash of the
 * task's code and its input, shared by every run and process that names
 * the same file.
 *
 * DESIGN
 *
 * Lookups are point reads on the loop thread, through a read-only
 * connection of its own with the lookup statement prepared once: the
 * caller asked for a cached task, so it pays one indexed read (tens of
 * microseconds) before the body, and nothing else in tide pays anything.
 * Writes (a new entry, a hit to count, a clear) are queued under a mutex
 * and applied by a writer thread in group commits, like the journal's
 * (src/journal.c), so the loop never waits for the disk. Unlike the
 * journal, a cache needs no durability: a lost entry only costs a
 * recompute, so the file runs with synchronous=NORMAL (no device flush per
 * commit), the writer lets a group gather for a few milliseconds, and a
 * queue that grew past its bound (a writer that cannot keep up, a full
 * disk) drops new entries instead of holding memory.
 *
 * An entry becomes visible to lookups when its group is committed: inputs
 * that run at the same time each run their body, and the one that ends
 * last replaces the others' entry.
 *
 * Threads: the writer thread owns the write connection; the loop thread
 * owns the read connection (WAL lets it read while any process writes).
 * Lock rule: `mu` guards the queue, its byte count, `stop`, `err` and
 * `dropped`; neither thread holds it while it talks to SQLite.
 *
 * Errors: opening tells a place that cannot hold a cache (TIDE_EIO: a
 * directory, no permission, a read-only file system) from a file that is
 * not a cache tide can use (TIDE_EINVAL: not SQLite, corrupt, some other
 * SQLite file, a newer format). A failure of the writer is sticky: it
 * stops applying operations and keeps the first message, which the loop
 * reads with tide__cache_error; nothing fails a job.
 *
 * Ownership: tide__cache_open makes the cache and tide__cache_close frees
 * it, after letting the writer commit what is queued and joining it.
 * Queued operations own their bytes (copied when queued) and are freed by
 * the writer once applied, or by close. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "internal.h"

#define CACHE_FORMAT 1
#define CACHE_KIND "tide-cache"
#define CACHE_GATHER_NS 2000000       /* how long a group gathers */
#define CACHE_QUEUE_MAX (64u << 20)   /* bytes queued before puts drop */
#define CACHE_READ_BUSY_MS 100        /* the most a lookup waits for a lock */

enum { OP_PUT, OP_HIT, OP_CLEAR, OP_NKINDS };

/* One queued operation in one allocation: key, task and value point into
 * the bytes after the struct. */
typedef struct cache_op {
    struct cache_op *next;
    int kind;
    double t; /* OP_PUT: when it was made; OP_CLEAR: the cutoff (< 0: all) */
    const char *key, *task, *val;
    size_t klen, tlen, vlen;
    char bytes[];
} cache_op;

struct tide__cache {
    sqlite3 *wdb;                 /* the writer thread's */
    sqlite3 *rdb;                 /* the loop thread's, read-only */
    sqlite3_stmt *st[OP_NKINDS];  /* the writer's statements */
    sqlite3_stmt *get;            /* the loop's lookup */
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    cache_op *head, *tail;
    size_t queued; /* bytes of the queue */
    int stop;
    int64_t dropped;
    char err[256];
};

static const char *const cache_sql[OP_NKINDS] = {
    /* Parenthesized: one string (clang's -Wstring-concatenation). */
    [OP_PUT] = ("INSERT OR REPLACE INTO entries(key, task, value, created, "
                "hits) VALUES(?1, ?2, ?3, ?4, 0)"),
    [OP_HIT] = "UPDATE entries SET hits = hits + 1 WHERE key = ?1",
    [OP_CLEAR] = "DELETE FROM entries WHERE ?4 < 0 OR created < ?4",
};

static const char cache_schema[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value);"
    "CREATE TABLE entries(key TEXT PRIMARY KEY, task TEXT NOT NULL, "
    "value BLOB NOT NULL, created REAL NOT NULL, hits INTEGER NOT NULL "
    "DEFAULT 0) WITHOUT ROWID;"
    "CREATE INDEX entries_created ON entries(created);";

double tide__cache_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void cache_seterr(tide__cache *c, const char *what) {
    uv_mutex_lock(&c->mu);
    if (c->err[0] == '\0')
        snprintf(c->err, sizeof c->err, "%s: %s", what, sqlite3_errmsg(c->wdb));
    uv_mutex_unlock(&c->mu);
}

static int cache_apply(tide__cache *c, const cache_op *op) {
    sqlite3_stmt *st = c->st[op->kind];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    int rc = SQLITE_OK;
    if (op->key)
        rc = sqlite3_bind_text(st, 1, op->key, (int)op->klen, SQLITE_STATIC);
    if (rc == SQLITE_OK && op->kind == OP_PUT) {
        rc = sqlite3_bind_text(st, 2, op->task, (int)op->tlen, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_blob(st, 3, op->val, (int)op->vlen,
                                   SQLITE_STATIC);
    }
    if (rc == SQLITE_OK && op->kind != OP_HIT)
        rc = sqlite3_bind_double(st, 4, op->t);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void cache_writer(void *arg) {
    tide__cache *c = arg;
    for (;;) {
        uv_mutex_lock(&c->mu);
        while (c->head == NULL && !c->stop)
            uv_cond_wait(&c->cond, &c->mu);
        int stopping = c->stop;
        uv_mutex_unlock(&c->mu);
        if (!stopping) {
            /* Let a group gather: one commit for the work of a few
             * milliseconds. */
            struct timespec ts = {0, CACHE_GATHER_NS};
            nanosleep(&ts, NULL);
        }
        uv_mutex_lock(&c->mu);
        cache_op *ops = c->head;
        c->head = c->tail = NULL;
        c->queued = 0;
        int failed = c->err[0] != '\0';
        stopping = c->stop;
        uv_mutex_unlock(&c->mu);
        int cleared = 0;
        if (ops != NULL && !failed) {
            int rc = sqlite3_exec(c->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
            for (cache_op *op = ops; op && rc == SQLITE_OK; op = op->next) {
                rc = cache_apply(c, op);
                cleared |= op->kind == OP_CLEAR;
            }
            if (rc == SQLITE_OK)
                rc = sqlite3_exec(c->wdb, "COMMIT", NULL, NULL, NULL);
            if (rc != SQLITE_OK) {
                cache_seterr(c, "writing the cache");
                sqlite3_exec(c->wdb, "ROLLBACK", NULL, NULL, NULL);
                cleared = 0;
            }
        }
        while (ops) {
            cache_op *next = ops->next;
            free(ops);
            ops = next;
        }
        if (cleared) {
            /* Give the space back (a clear is a command of its own, not
             * part of a run); a failure leaves a larger file, no more. */
            sqlite3_exec(c->wdb, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL,
                         NULL);
            sqlite3_exec(c->wdb, "VACUUM", NULL, NULL, NULL);
        }
        if (stopping) {
            uv_mutex_lock(&c->mu);
            int empty = c->head == NULL;
            uv_mutex_unlock(&c->mu);
            if (empty)
                return;
        }
    }
}

/* Whether an SQLite failure says the file is not a database tide can use
 * (rather than a place it cannot use). */
static int cache_bad_content(int rc) {
    rc &= 0xff;
    return rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT || rc == SQLITE_FORMAT ||
           rc == SQLITE_SCHEMA || rc == SQLITE_ERROR;
}

static int cache_fail(char *err, size_t errlen, const char *path,
                      sqlite3 *db, int rc) {
    snprintf(err, errlen, "%s: %s", path,
             db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    return cache_bad_content(rc) ? TIDE_EINVAL : TIDE_EIO;
}

/* Makes the schema of a new (empty) file, or checks that an existing one
 * is a cache of a format this tide reads; inside one write transaction,
 * so two processes that open a new file at once make it once. */
static int cache_prepare_file(sqlite3 *db, const char *path, char *err,
                              size_t errlen) {
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return cache_fail(err, errlen, path, db, rc);
    sqlite3_stmt *st = NULL;
    int ntables = -1;
    rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st,
                            NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        ntables = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    st = NULL;
    int res = 0;
    if (rc != SQLITE_OK) {
        res = cache_fail(err, errlen, path, db, rc);
    } else if (ntables == 0) {
        char sql[512];
        snprintf(sql, sizeof sql,
                 "%s INSERT INTO meta VALUES('kind', '%s'), ('format', %d), "
                 "('created', %.3f);",
                 cache_schema, CACHE_KIND, CACHE_FORMAT, tide__cache_now());
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            res = cache_fail(err, errlen, path, db, rc);
    } else {
        const char *kind = NULL;
        int format = 0;
        rc = sqlite3_prepare_v2(db,
                                "SELECT (SELECT value FROM meta WHERE key = "
                                "'kind'), (SELECT value FROM meta WHERE key = "
                                "'format')",
                                -1, &st, NULL);
        if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
            kind = (const char *)sqlite3_column_text(st, 0);
            format = sqlite3_column_int(st, 1);
        }
        if (kind == NULL || strcmp(kind, CACHE_KIND) != 0) {
            snprintf(err, errlen, "%s: not a tide cache (an SQLite file of "
                     "something else)", path);
            res = TIDE_EINVAL;
        } else if (format > CACHE_FORMAT) {
            snprintf(err, errlen, "%s: written by a newer tide (cache format "
                     "%d; this tide reads format %d and older)",
                     path, format, CACHE_FORMAT);
            res = TIDE_EINVAL;
        }
        sqlite3_finalize(st);
    }
    if (res == 0) {
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            res = cache_fail(err, errlen, path, db, rc);
    }
    if (res != 0)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return res;
}

int tide__cache_open(const char *path, tide__cache **out, char *err,
                     size_t errlen) {
    tide__cache *c = tide__xcalloc(1, sizeof(*c));
    int res;
    *out = NULL;
    int rc = sqlite3_open_v2(path, &c->wdb,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                 SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        res = cache_fail(err, errlen, path, c->wdb, rc);
        if (res == TIDE_EINVAL) /* cannot open is about the place */
            res = TIDE_EIO;
        goto fail;
    }
    sqlite3_busy_timeout(c->wdb, 5000);
    /* WAL: lookups read while any process writes. NORMAL: no device flush
     * per commit; a crash may lose the last entries, which only run again
     * (see DESIGN). */
    if ((rc = sqlite3_exec(c->wdb, "PRAGMA journal_mode=WAL", NULL, NULL,
                           NULL)) != SQLITE_OK ||
        (rc = sqlite3_exec(c->wdb, "PRAGMA synchronous=NORMAL", NULL, NULL,
                           NULL)) != SQLITE_OK) {
        res = cache_fail(err, errlen, path, c->wdb, rc);
        goto fail;
    }
    if ((res = cache_prepare_file(c->wdb, path, err, errlen)) != 0)
        goto fail;
    for (int k = 0; k < OP_NKINDS; k++) {
        rc = sqlite3_prepare_v2(c->wdb, cache_sql[k], -1, &c->st[k], NULL);
        if (rc != SQLITE_OK) {
            res = cache_fail(err, errlen, path, c->wdb, rc);
            goto fail;
        }
    }
    rc = sqlite3_open_v2(path, &c->rdb,
                         SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->rdb,
                                "SELECT value, created FROM entries WHERE "
                                "key = ?1",
                                -1, &c->get, NULL);
    if (rc != SQLITE_OK) {
        res = cache_fail(err, errlen, path, c->rdb, rc);
        goto fail;
    }
    /* A lookup is on the loop thread: it waits briefly for a lock (WAL
     * recovery by another process) and then counts as a miss. */
    sqlite3_busy_timeout(c->rdb, CACHE_READ_BUSY_MS);
    uv_mutex_init(&c->mu);
    uv_cond_init(&c->cond);
    /* Signals blocked: none is meant for the writer. */
    int trc = tide__thread_start(&c->thread, cache_writer, c);
    if (trc != 0) {
        uv_cond_destroy(&c->cond);
        uv_mutex_destroy(&c->mu);
        snprintf(err, errlen, "%s: cannot start the cache's writer", path);
        res = TIDE_EIO;
        goto fail;
    }
    *out = c;
    return 0;
fail:
    for (int k = 0; k < OP_NKINDS; k++)
        sqlite3_finalize(c->st[k]);
    sqlite3_finalize(c->get);
    sqlite3_close(c->rdb);
    sqlite3_close(c->wdb);
    free(c);
    return res;
}

int tide__cache_get(tide__cache *c, const char *key, size_t klen, double ttl,
                    const char **val, size_t *vlen, char *err, size_t errlen) {
    sqlite3_stmt *st = c->get;
    sqlite3_reset(st);
    int rc = sqlite3_bind_text(st, 1, key, (int)klen, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return 0;
    }
    if (rc != SQLITE_ROW) {
        int busy = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
        snprintf(err, errlen, "reading the cache: %s", sqlite3_errmsg(c->rdb));
        sqlite3_reset(st);
        return busy ? TIDE_EAGAIN : TIDE_EIO;
    }
    double created = sqlite3_column_double(st, 1);
    if (ttl > 0 && tide__cache_now() - created > ttl) {
        sqlite3_reset(st);
        return 0;
    }
    const void *p = sqlite3_column_blob(st, 0);
    *vlen = (size_t)sqlite3_column_bytes(st, 0);
    *val = p ? p : "";
    return 1;
}

void tide__cache_get_end(tide__cache *c) {
    sqlite3_reset(c->get);
}

/* Queues an operation; returns 0, or -1 when the writer failed or the
 * queue is full (then nothing was queued). */
static int cache_queue(tide__cache *c, int kind, double t, const char *key,
                       size_t klen, const char *task, size_t tlen,
                       const char *val, size_t vlen) {
    size_t size = sizeof(cache_op) + klen + tlen + vlen + 3;
    uv_mutex_lock(&c->mu);
    int refuse = c->err[0] != '\0' ||
                 (kind == OP_PUT && c->queued + size > CACHE_QUEUE_MAX);
    if (refuse && kind == OP_PUT)
        c->dropped++;
    uv_mutex_unlock(&c->mu);
    if (refuse)
        return -1;
    /* Built outside the lock: the copy of a large value must not hold up
     * the writer. */
    cache_op *op = tide__xmalloc(size);
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    op->t = t;
    char *p = op->bytes;
    if (key) {
        memcpy(p, key, klen);
        op->key = p;
        op->klen = klen;
        p += klen + 1;
    }
    if (task) {
        memcpy(p, task, tlen);
        op->task = p;
        op->tlen = tlen;
        p += tlen + 1;
    }
    if (val) {
        memcpy(p, val, vlen);
        op->val = p;
        op->vlen = vlen;
    }
    uv_mutex_lock(&c->mu);
    if (c->tail)
        c->tail->next = op;
    else
        c->head = op;
    c->tail = op;
    c->queued += size;
    uv_cond_signal(&c->cond);
    uv_mutex_unlock(&c->mu);
    return 0;
}

int tide__cache_put(tide__cache *c, const char *key, size_t klen,
                    const char *task, size_t tlen, const char *val,
                    size_t vlen) {
    return cache_queue(c, OP_PUT, tide__cache_now(), key, klen, task, tlen,
                       val, vlen);
}

int tide__cache_hit(tide__cache *c, const char *key, size_t klen) {
    return cache_queue(c, OP_HIT, 0, key, klen, NULL, 0, NULL, 0);
}

int tide__cache_clear(tide__cache *c, double older_than) {
    double cutoff = older_than < 0 ? -1 : tide__cache_now() - older_than;
    return cache_queue(c, OP_CLEAR, cutoff, NULL, 0, NULL, 0, NULL, 0);
}

int tide__cache_stats(tide__cache *c, double older_than,
                      tide__cache_stats_t *s, char *err, size_t errlen) {
    memset(s, 0, sizeof(*s));
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        c->rdb,
        "SELECT count(*), coalesce(sum(length(key) + length(value)), 0), "
        "min(created), max(created), coalesce(sum(hits), 0), "
        "coalesce(sum(created < ?1), 0) FROM entries",
        -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_double(st, 1, tide__cache_now() - older_than);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s->entries = sqlite3_column_int64(st, 0);
        s->bytes = sqlite3_column_int64(st, 1);
        s->oldest = sqlite3_column_double(st, 2);
        s->newest = sqlite3_column_double(st, 3);
        s->hits = sqlite3_column_int64(st, 4);
        s->older = sqlite3_column_int64(st, 5);
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK)
        snprintf(err, errlen, "reading the cache: %s", sqlite3_errmsg(c->rdb));
    sqlite3_finalize(st);
    uv_mutex_lock(&c->mu);
    s->dropped = c->dropped;
    uv_mutex_unlock(&c->mu);
    return rc == SQLITE_OK ? 0 : TIDE_EIO;
}

int tide__cache_error(tide__cache *c, char *buf, size_t len) {
    uv_mutex_lock(&c->mu);
    int failed = c->err[0] != '\0';
    if (failed)
        snprintf(buf, len, "%s", c->err);
    uv_mutex_unlock(&c->mu);
    return failed;
}

int tide__cache_close(tide__cache *c, char *err, size_t errlen) {
    if (c == NULL)
        return 0;
    uv_mutex_lock(&c->mu);
    c->stop = 1;
    uv_cond_signal(&c->cond);
    uv_mutex_unlock(&c->mu);
    uv_thread_join(&c->thread);
    int failed = err ? tide__cache_error(c, err, errlen) : 0;
    for (int k = 0; k < OP_NKINDS; k++)
        sqlite3_finalize(c->st[k]);
    sqlite3_finalize(c->get);
    sqlite3_close(c->rdb);
    sqlite3_close(c->wdb);
    uv_cond_destroy(&c->cond);
    uv_mutex_destroy(&c->mu);
    free(c);
    return failed ? TIDE_EIO : 0;
}
