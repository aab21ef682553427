/* The journal: a SQLite file that makes runs durable, written by a thread
 * of its own in group commits.
 *
 * DESIGN
 *
 * The loop thread never waits for the disk. It appends operations (an
 * item: a finished job's record, a rejected line, an accepted job; a
 * checkpoint; the files' committed lengths; a meta value) to a queue under
 * a mutex and goes on. The writer thread wakes when the queue has work,
 * waits up to the commit interval (1 ms) for more to gather, takes the
 * whole queue, and applies it in one transaction: BEGIN IMMEDIATE, the
 * statements in queue order, COMMIT. With WAL and synchronous=FULL the
 * COMMIT returns only after the WAL is on the device, so everything queued
 * before it is durable; the writer then publishes the sequence number of
 * the last operation it committed and wakes the loop (uv_async_send). One
 * fsync per group, not per job: a thousand jobs a millisecond cost one
 * device flush, and a lone job waits at most about 1 ms plus the flush.
 *
 * Operations carry a sequence number the loop thread gives them in the
 * order it queues them; items keep theirs as their row id, so their order
 * in the file is the order they were queued in. A resume finds in one
 * place everything it needs: the items (what finished, what was
 * rejected, what was accepted), the files' lengths and the number of the
 * last item whose lines those lengths include.
 *
 * Threads: the writer thread owns the write connection; the loop thread
 * owns a second, read-only connection (WAL lets it read while the writer
 * writes) for lookups at startup and for results no longer in memory.
 * Lock rule: `mu` guards the queue, `stop`, `err` and `committed`; the
 * writer never holds it while it talks to SQLite, and the loop never
 * holds it while it calls into SQLite either.
 *
 * Errors: a failure to write (disk full, read-only file, I/O error) is
 * sticky: the writer stops applying operations, keeps the first message,
 * and wakes the loop, which reports it and stops the run. Nothing queued
 * after a failure is ever reported as committed.
 *
 * Ownership: the journal is made by tide__journal_open and freed by
 * tide__journal_close, which lets the writer commit what is queued, joins
 * it and closes both connections. Queued operations own their bytes
 * (copied when queued) and are freed by the writer after they are
 * applied, or by close. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "internal.h"

#define JOURNAL_FORMAT 1
#define JOURNAL_INTERVAL_NS 1000000 /* the longest a commit waits to gather */

/* One queued operation, in one allocation: a, b and c point into the
 * bytes that follow the struct (b and c may be NULL). */
typedef struct journal_op {
    struct journal_op *next;
    int kind;
    int64_t seq, n;
    uint64_t queued; /* uv_hrtime when it was queued */
    char *a, *b, *c;
    size_t alen, blen, clen;
    char bytes[];
} journal_op;

struct tide__journal {
    sqlite3 *wdb; /* the writer thread's */
    sqlite3 *rdb; /* the loop thread's, read-only */
    sqlite3_stmt *st[TIDE__J_NKINDS];
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    journal_op *head, *tail; /* the queue, oldest first */
    int stop;
    char err[256];
    _Atomic int64_t committed; /* the seq of the last committed operation */
    /* Writer-thread figures, read by tide__journal_stats under mu:
     * commits, operations, and how long the oldest operation of each
     * group waited from being queued to being on the device. */
    uint64_t ncommits, nops, wait_sum_ns, wait_max_ns;
    int64_t next_seq;          /* loop thread only */
    uv_async_t *notify;        /* woken after each commit; may be NULL */
};

/* The statements, one per operation kind, run by the writer. */
static const char *const journal_sql[TIDE__J_NKINDS] = {
    [TIDE__J_ITEM] = "INSERT INTO items(seq, key, kind, status, data) "
                     "VALUES(?1, ?2, ?3, ?4, ?5)",
    [TIDE__J_META] = "INSERT OR REPLACE INTO meta(key, value) VALUES(?2, ?3)",
    [TIDE__J_FILE] = "INSERT OR REPLACE INTO files(name, length) "
                     "VALUES(?2, ?1)",
    [TIDE__J_CHECKPOINT] = "INSERT OR REPLACE INTO checkpoints(key, task, "
                           "output) VALUES(?2, ?3, ?5)",
    [TIDE__J_FORGET] = "DELETE FROM checkpoints WHERE key = ?2",
    [TIDE__J_FLUSH] = "INSERT OR REPLACE INTO meta(key, value) "
                      "VALUES('flushed', ?1)",
};

static const char journal_schema[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);"
    "CREATE TABLE IF NOT EXISTS items(seq INTEGER PRIMARY KEY, key TEXT NOT "
    "NULL, kind TEXT NOT NULL, status TEXT, data BLOB);"
    "CREATE INDEX IF NOT EXISTS items_key ON items(key);"
    "CREATE TABLE IF NOT EXISTS files(name TEXT PRIMARY KEY, length INTEGER "
    "NOT NULL);"
    "CREATE TABLE IF NOT EXISTS checkpoints(key TEXT NOT NULL, task TEXT NOT "
    "NULL, output BLOB, PRIMARY KEY(key, task));";

static void journal_op_free(journal_op *op) {
    free(op);
}

static void journal_seterr(tide__journal *j, const char *what, sqlite3 *db) {
    uv_mutex_lock(&j->mu);
    if (j->err[0] == '\0')
        snprintf(j->err, sizeof j->err, "%s: %s", what,
                 db ? sqlite3_errmsg(db) : "failed");
    uv_mutex_unlock(&j->mu);
}

/* Binds b as text to ?3 and the data (c after its first n bytes) as a
 * blob to ?5. */
static int journal_bind_b_data(sqlite3_stmt *st, const journal_op *op) {
    int rc = sqlite3_bind_text(st, 3, op->b, (int)op->blen, SQLITE_STATIC);
    if (rc == SQLITE_OK && op->c != NULL)
        rc = sqlite3_bind_blob(st, 5, op->c + op->n,
                               (int)(op->clen - (size_t)op->n), SQLITE_STATIC);
    return rc;
}

/* A flush mark's lengths, "name\tlength\n" each, into the files table
 * (inside the mark's transaction, so a resume sees all of them with the
 * mark or none). */
static int journal_apply_files(tide__journal *j, const journal_op *op) {
    sqlite3_stmt *st = j->st[TIDE__J_FILE];
    const char *p = op->a, *end = op->a + op->alen;
    while (p < end) {
        const char *tab = memchr(p, '\t', (size_t)(end - p));
        const char *nl = tab ? memchr(tab, '\n', (size_t)(end - tab)) : NULL;
        if (tab == NULL || nl == NULL)
            return SQLITE_MISUSE;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        int rc = sqlite3_bind_int64(st, 1, strtoll(tab + 1, NULL, 10));
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(st, 2, p, (int)(tab - p), SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            return rc == SQLITE_OK ? SQLITE_ERROR : rc;
        p = nl + 1;
    }
    return SQLITE_OK;
}

/* Runs one operation's statement with its values bound; returns an
 * SQLite result code. Parameters: ?1 a number (the seq, or a length), ?2
 * and ?3 text (a, b), ?4 text (the status: c's first n bytes), ?5 a blob
 * (the data: the rest of c). Each statement names only those it uses. */
static int journal_apply(tide__journal *j, journal_op *op) {
    sqlite3_stmt *st = j->st[op->kind];
    int rc = SQLITE_OK;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    switch (op->kind) {
    case TIDE__J_FLUSH:
        rc = journal_apply_files(j, op);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 1, op->n);
        if (rc != SQLITE_OK)
            return rc;
        rc = sqlite3_step(st);
        return rc == SQLITE_DONE ? SQLITE_OK : rc;
    case TIDE__J_ITEM:
        rc = sqlite3_bind_int64(st, 1, op->seq);
        if (rc == SQLITE_OK && op->n > 0)
            rc = sqlite3_bind_text(st, 4, op->c, (int)op->n, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = journal_bind_b_data(st, op);
        break;
    case TIDE__J_CHECKPOINT:
        rc = journal_bind_b_data(st, op);
        break;
    case TIDE__J_META:
        if (op->b != NULL)
            rc = sqlite3_bind_text(st, 3, op->b, (int)op->blen, SQLITE_STATIC);
        break;
    case TIDE__J_FILE:
        rc = sqlite3_bind_int64(st, 1, op->n);
        break;
    default: /* TIDE__J_FORGET: the key only */
        break;
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, op->a, (int)op->alen, SQLITE_STATIC);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void journal_writer(void *arg) {
    tide__journal *j = arg;
    for (;;) {
        uv_mutex_lock(&j->mu);
        while (j->head == NULL && !j->stop)
            uv_cond_wait(&j->cond, &j->mu);
        int stopping = j->stop;
        uint64_t age = j->head ? uv_hrtime() - j->head->queued : 0;
        uv_mutex_unlock(&j->mu);
        if (!stopping && age < JOURNAL_INTERVAL_NS) {
            /* Let a group gather until its oldest operation is one
             * interval old: the rest of that millisecond's work rides on
             * the same device flush. Operations that queued while the last
             * commit was on the device waited already, and go at once. */
            struct timespec ts = {0, (long)(JOURNAL_INTERVAL_NS - age)};
            nanosleep(&ts, NULL);
        }
        uv_mutex_lock(&j->mu);
        journal_op *ops = j->head;
        j->head = j->tail = NULL;
        int failed = j->err[0] != '\0';
        stopping = j->stop;
        uv_mutex_unlock(&j->mu);
        if (ops != NULL && !failed) {
            int64_t last = 0;
            int rc = sqlite3_exec(j->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
            for (journal_op *op = ops; op && rc == SQLITE_OK; op = op->next) {
                rc = journal_apply(j, op);
                last = op->seq;
            }
            if (rc == SQLITE_OK)
                rc = sqlite3_exec(j->wdb, "COMMIT", NULL, NULL, NULL);
            if (rc == SQLITE_OK) {
                atomic_store(&j->committed, last);
                uint64_t waited = uv_hrtime() - ops->queued, n = 0;
                for (journal_op *op = ops; op; op = op->next)
                    n++;
                uv_mutex_lock(&j->mu);
                j->ncommits++;
                j->nops += n;
                j->wait_sum_ns += waited;
                if (waited > j->wait_max_ns)
                    j->wait_max_ns = waited;
                uv_mutex_unlock(&j->mu);
            } else {
                journal_seterr(j, "writing the journal", j->wdb);
                sqlite3_exec(j->wdb, "ROLLBACK", NULL, NULL, NULL);
            }
            if (j->notify)
                uv_async_send(j->notify);
        }
        while (ops) {
            journal_op *next = ops->next;
            journal_op_free(ops);
            ops = next;
        }
        if (stopping) {
            uv_mutex_lock(&j->mu);
            int empty = j->head == NULL;
            uv_mutex_unlock(&j->mu);
            if (empty)
                return;
        }
    }
}

static int journal_fail(char *err, size_t errlen, const char *path,
                        const char *what, sqlite3 *db) {
    snprintf(err, errlen, "%s: %s: %s", path, what,
             db ? sqlite3_errmsg(db) : "cannot open");
    return TIDE_EIO;
}

int tide__journal_open(const char *path, tide__journal **out, char *err,
                       size_t errlen) {
    tide__journal *j = tide__xcalloc(1, sizeof(*j));
    int rc = TIDE_EIO;
    *out = NULL;
    if (sqlite3_open_v2(path, &j->wdb,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                            SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = journal_fail(err, errlen, path, "cannot open", j->wdb);
        goto fail;
    }
    sqlite3_busy_timeout(j->wdb, 5000);
    /* WAL: readers (the loop's lookups) never wait for the writer.
     * FULL: a commit is on the device before it counts. */
    if (sqlite3_exec(j->wdb, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(j->wdb, "PRAGMA synchronous=FULL", NULL, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(j->wdb, journal_schema, NULL, NULL, NULL) != SQLITE_OK) {
        rc = journal_fail(err, errlen, path, "not a journal tide can use",
                          j->wdb);
        goto fail;
    }
    for (int k = 0; k < TIDE__J_NKINDS; k++) {
        if (sqlite3_prepare_v2(j->wdb, journal_sql[k], -1, &j->st[k],
                               NULL) != SQLITE_OK) {
            rc = journal_fail(err, errlen, path, "preparing", j->wdb);
            goto fail;
        }
    }
    if (sqlite3_open_v2(path, &j->rdb,
                        SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = journal_fail(err, errlen, path, "cannot open for reading",
                          j->rdb);
        goto fail;
    }
    sqlite3_busy_timeout(j->rdb, 5000);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(j->rdb, "SELECT max(seq) FROM items", -1, &st,
                           NULL) != SQLITE_OK) {
        rc = journal_fail(err, errlen, path, "reading", j->rdb);
        goto fail;
    }
    if (sqlite3_step(st) == SQLITE_ROW)
        j->next_seq = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    atomic_store(&j->committed, j->next_seq);
    uv_mutex_init(&j->mu);
    uv_cond_init(&j->cond);
    /* Signals blocked: none is meant for the writer. */
    if (tide__thread_start(&j->thread, journal_writer, j) != 0) {
        uv_cond_destroy(&j->cond);
        uv_mutex_destroy(&j->mu);
        snprintf(err, errlen, "%s: cannot start the journal's writer", path);
        rc = TIDE_EIO;
        goto fail;
    }
    *out = j;
    return 0;
fail:
    for (int k = 0; k < TIDE__J_NKINDS; k++)
        sqlite3_finalize(j->st[k]);
    sqlite3_close(j->rdb);
    sqlite3_close(j->wdb);
    free(j);
    return rc;
}

int64_t tide__journal_put(tide__journal *j, int kind, const char *a,
                          size_t alen, const char *b, size_t blen,
                          const char *status, const char *data, size_t dlen,
                          int64_t n) {
    TIDE_ASSERT(kind >= 0 && kind < TIDE__J_NKINDS);
    int numeric = kind == TIDE__J_FILE || kind == TIDE__J_FLUSH;
    size_t slen = !numeric && status ? strlen(status) : 0;
    if (numeric)
        dlen = 0;
    journal_op *op = tide__xmalloc(sizeof(*op) + alen + blen + slen + dlen + 3);
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    int64_t seq = op->seq = ++j->next_seq;
    op->queued = uv_hrtime();
    char *p = op->bytes;
    if (a) {
        op->a = p;
        memcpy(p, a, alen);
        op->alen = alen;
        p += alen + 1;
    }
    if (b) {
        op->b = p;
        memcpy(p, b, blen);
        op->blen = blen;
        p += blen + 1;
    }
    if (numeric) {
        op->n = n;
    } else if (status || data) {
        /* c holds the status followed by the data. */
        op->c = p;
        if (slen)
            memcpy(p, status, slen);
        if (dlen)
            memcpy(p + slen, data, dlen);
        op->clen = slen + dlen;
        op->n = (int64_t)slen;
    }
    uv_mutex_lock(&j->mu);
    if (j->tail)
        j->tail->next = op;
    else
        j->head = op;
    j->tail = op;
    uv_cond_signal(&j->cond);
    uv_mutex_unlock(&j->mu);
    /* Not op->seq: once unlocked, the writer may have committed and freed
     * op. */
    return seq;
}

void tide__journal_stats(tide__journal *j, uint64_t *commits, uint64_t *ops,
                         uint64_t *wait_sum_ns, uint64_t *wait_max_ns) {
    uv_mutex_lock(&j->mu);
    *commits = j->ncommits;
    *ops = j->nops;
    *wait_sum_ns = j->wait_sum_ns;
    *wait_max_ns = j->wait_max_ns;
    uv_mutex_unlock(&j->mu);
}

int64_t tide__journal_committed(tide__journal *j) {
    return atomic_load(&j->committed);
}

int64_t tide__journal_last(tide__journal *j) {
    return j->next_seq;
}

int tide__journal_error(tide__journal *j, char *buf, size_t len) {
    uv_mutex_lock(&j->mu);
    int failed = j->err[0] != '\0';
    if (failed)
        snprintf(buf, len, "%s", j->err);
    uv_mutex_unlock(&j->mu);
    return failed;
}

void tide__journal_set_notify(tide__journal *j, uv_async_t *notify) {
    j->notify = notify;
}

sqlite3 *tide__journal_reader(tide__journal *j) {
    return j->rdb;
}

int tide__journal_close(tide__journal *j, char *err, size_t errlen) {
    if (j == NULL)
        return 0;
    uv_mutex_lock(&j->mu);
    j->stop = 1;
    uv_cond_signal(&j->cond);
    uv_mutex_unlock(&j->mu);
    uv_thread_join(&j->thread);
    int failed = err ? tide__journal_error(j, err, errlen) : 0;
    for (int k = 0; k < TIDE__J_NKINDS; k++)
        sqlite3_finalize(j->st[k]);
    sqlite3_close(j->rdb);
    sqlite3_close(j->wdb);
    uv_cond_destroy(&j->cond);
    uv_mutex_destroy(&j->mu);
    free(j);
    return failed ? TIDE_EIO : 0;
}

int tide__journal_format(void) {
    return JOURNAL_FORMAT;
}
