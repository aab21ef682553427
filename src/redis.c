/* A Redis client on a uv loop: hiredis 0.14's async API with its libuv
 * adapter, plus what 0.14 lacks.
 *
 * DESIGN
 * ------
 * Commands are kept in one list, in the order they were sent, each with
 * a deadline. A command sent while the connection is down is formatted
 * at once and waits in the list (QUEUED); when the connection comes up,
 * the queued ones are handed to hiredis in order (SENT). hiredis appends
 * each to its output buffer and asks the adapter for a writable event,
 * so every command given in one loop turn leaves in one write on the next
 * turn: pipelining comes from the loop, with no timer and no batching
 * code here.
 *
 * Timeouts: hiredis 0.14 has no timeout for async commands, so one uv
 * timer per client is armed for the earliest deadline it knows of. When
 * it fires, every command past its deadline ends with ETIMEDOUT. A sent
 * command that timed out means the server or the path to it is not
 * answering (a half-open TCP connection looks like this forever), and
 * replies come back in order, so the connection is dropped and made
 * again: the commands sent after it end with ECONN rather than waiting
 * behind a reply that may never come. A sent command is never sent again
 * by this layer, because it may have run; the scripts above it are
 * written to be safe to retry.
 *
 * Reconnecting: a connection that fails or is lost is made again after a
 * delay that doubles from backoff_min to backoff_max and goes back to the
 * minimum once a connection is up.
 *
 * Ownership: the client record owns its two timers and the hiredis
 * context; hiredis owns the adapter's poll handle and frees it in its own
 * close callback. The record is freed once both timers are closed, after
 * tide__redis_close. The handles keep the loop alive only while commands
 * wait, so an idle client never keeps a run from ending. */
#include <errno.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libuv.h>

#include "internal.h"

enum { C_QUEUED = 1, C_SENT, C_DONE };
enum { S_DOWN = 0, S_CONNECTING, S_UP, S_CLOSED };

typedef struct rd_cmd {
    struct rd_cmd *next, *prev;
    tide__redis *r;
    tide__redis_fn fn;
    void *ud;
    uint64_t deadline; /* ms on r_now's clock */
    int state;
    char *buf; /* the formatted command while QUEUED */
    int len;
} rd_cmd;

struct tide__redis {
    uv_loop_t *loop;
    char *host;
    int port;
    tide__redis_opts opts;
    tide__redis_state_fn on_state;
    void *state_ud;
    redisAsyncContext *ac;
    int state;
    uint64_t connect_deadline;
    double backoff_ms;
    uv_timer_t timer;     /* deadlines of commands and of a connect */
    uv_timer_t retry;     /* the delay before a new connection attempt */
    uint64_t timer_due;   /* what timer is armed for, 0: not armed */
    int nhandles;         /* timers not closed yet */
    int refd;             /* handles count for the loop's liveness */
    rd_cmd head;            /* list sentinel: head.next is the oldest */
    uint32_t waiting;
    uint64_t sent, replies, timeouts, connects, failures;
    char *user, *password; /* copies of opts.user and opts.password */
    /* The server's answer to this connection's AUTH when it refused it,
     * else empty: the replies that follow (NOAUTH errors) end their
     * commands with EAUTH and this message instead. */
    char auth_err[200];
};

static void r_connect(tide__redis *r);
static void r_drop(tide__redis *r, const char *why);
static void r_on_timer(uv_timer_t *t);

static void r_link(tide__redis *r, rd_cmd *c) {
    c->prev = r->head.prev;
    c->next = &r->head;
    r->head.prev->next = c;
    r->head.prev = c;
    r->waiting++;
}

static void r_unlink(tide__redis *r, rd_cmd *c) {
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->next = c->prev = NULL;
    r->waiting--;
}

static uv_handle_t *r_poll_handle(tide__redis *r) {
    if (r->ac == NULL || r->ac->ev.data == NULL)
        return NULL;
    return (uv_handle_t *)&((redisLibuvEvents *)r->ac->ev.data)->handle;
}

static void r_set_ref(uv_handle_t *h, int on) {
    if (h == NULL || uv_is_closing(h))
        return;
    if (on)
        uv_ref(h);
    else
        uv_unref(h);
}

/* The loop stays alive while commands wait, and only then. */
static void r_update_ref(tide__redis *r) {
    int want = r->waiting > 0 && r->state != S_CLOSED;
    if (want == r->refd)
        return;
    r->refd = want;
    r_set_ref((uv_handle_t *)&r->timer, want);
    r_set_ref((uv_handle_t *)&r->retry, want);
    r_set_ref(r_poll_handle(r), want);
}

/* Ends command c: unlinks it and calls its function. A sent command
 * stays allocated (DONE) until hiredis calls back for it; one that never
 * left the queue is freed here. */
static void r_finish(rd_cmd *c, struct redisReply *reply, int err,
                     const char *msg) {
    tide__redis *r = c->r;
    tide__redis_fn fn = c->fn;
    void *ud = c->ud;
    int was_sent = c->state == C_SENT;
    r_unlink(r, c);
    c->state = C_DONE;
    c->fn = NULL;
    free(c->buf);
    c->buf = NULL;
    if (!was_sent)
        free(c);
    r_update_ref(r);
    fn(ud, reply, err, msg);
}

/* Milliseconds on the monotonic clock. Not uv_now: the loop's cached time
 * is stale when a command is sent between runs of the loop, and a
 * deadline taken from it would come early. */
static uint64_t r_now(void) {
    return uv_hrtime() / 1000000;
}

static void r_arm_at(tide__redis *r, uint64_t due) {
    if (r->state == S_CLOSED)
        return;
    if (r->timer_due != 0 && r->timer_due <= due)
        return;
    uint64_t now = r_now();
    uv_update_time(r->loop);
    r->timer_due = due;
    uv_timer_start(&r->timer, r_on_timer, due > now ? due - now : 0, 0);
}

/* Ends the commands past their deadline; drops the connection when one
 * of them was sent (see DESIGN), or when a connect takes too long. */
static void r_on_timer(uv_timer_t *t) {
    tide__redis *r = tide__container_of(t, tide__redis, timer);
    uint64_t now = r_now();
    r->timer_due = 0;
    int sent_expired = 0;
    rd_cmd *c = r->head.next;
    while (c != &r->head && r->state != S_CLOSED) {
        if (c->deadline > now) {
            c = c->next;
            continue;
        }
        sent_expired |= c->state == C_SENT;
        r->timeouts++;
        r_finish(c, NULL, TIDE__REDIS_ETIMEDOUT,
                 r->state == S_UP ? "no reply from Redis within the time limit"
                                  : "Redis could not be reached within the "
                                    "time limit");
        /* The function may have sent or ended other commands: the list
         * is walked again from its start. */
        c = r->head.next;
    }
    if (r->state == S_CLOSED)
        return;
    if (sent_expired && r->state == S_UP)
        r_drop(r, "a command got no reply in time");
    else if (r->state == S_CONNECTING && r->connect_deadline <= now)
        r_drop(r, "the connection was not made in time");
    uint64_t due = 0;
    for (c = r->head.next; c != &r->head; c = c->next)
        if (due == 0 || c->deadline < due)
            due = c->deadline;
    if (r->state == S_CONNECTING && (due == 0 || r->connect_deadline < due))
        due = r->connect_deadline;
    if (due)
        r_arm_at(r, due);
}

static void r_on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    TIDE_UNUSED(ac);
    rd_cmd *c = privdata;
    if (c->state == C_DONE) { /* it timed out, or the client closed */
        free(c);
        return;
    }
    tide__redis *r = c->r;
    if (reply == NULL) {
        r_finish(c, NULL, TIDE__REDIS_ECONN,
                 "the connection to Redis was lost before the reply came");
    } else if (r->auth_err[0] &&
               ((redisReply *)reply)->type == REDIS_REPLY_ERROR) {
        r->replies++;
        r_finish(c, NULL, TIDE__REDIS_EAUTH, r->auth_err);
    } else {
        r->replies++;
        r_finish(c, reply, TIDE__REDIS_OK, NULL);
    }
    free(c);
}

/* The reply to the AUTH sent on connecting. A refusal is kept for the
 * commands pipelined behind it (see auth_err); the connection stays, as
 * the credentials may be fixed on the server without a restart, and the
 * next connection (after a loss) tries again. */
static void r_on_auth(redisAsyncContext *ac, void *reply, void *privdata) {
    tide__redis *r = privdata;
    redisReply *rep = reply;
    if (r == NULL || r->ac != ac || rep == NULL)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(r->auth_err, sizeof r->auth_err,
                 "Redis at %s:%d refused the user and password of the URL: "
                 "%.*s", r->host, r->port, (int)rep->len, rep->str);
    }
}

/* Hands the queued commands (a suffix of the list) to hiredis, in
 * order. */
static void r_send_queued(tide__redis *r) {
    rd_cmd *c = r->head.prev;
    while (c != &r->head && c->state == C_QUEUED && c->prev != &r->head &&
           c->prev->state == C_QUEUED)
        c = c->prev;
    for (; c != &r->head && r->ac; c = c->next) {
        if (c->state != C_QUEUED)
            continue;
        if (redisAsyncFormattedCommand(r->ac, r_on_reply, c, c->buf,
                                       (size_t)c->len) != REDIS_OK)
            break; /* the context is going away: they wait for the next */
        free(c->buf);
        c->buf = NULL;
        c->state = C_SENT;
        r->sent++;
    }
}

static void r_on_retry(uv_timer_t *t) {
    tide__redis *r = tide__container_of(t, tide__redis, retry);
    if (r->state == S_DOWN)
        r_connect(r);
}

static void r_schedule_retry(tide__redis *r) {
    if (r->state == S_CLOSED)
        return;
    r->state = S_DOWN;
    double d = r->backoff_ms;
    r->backoff_ms = d * 2 > r->opts.backoff_max_ms ? r->opts.backoff_max_ms
                                                   : d * 2;
    uv_timer_start(&r->retry, r_on_retry, (uint64_t)d, 0);
}

static void r_tell(tide__redis *r, int up, const char *msg) {
    if (r->on_state)
        r->on_state(r->state_ud, up, msg);
}

/* The connection failed or went away: hiredis frees the context after
 * this callback (or has, when r_drop freed it). */
static void r_lost(tide__redis *r, const char *msg) {
    r->ac = NULL;
    r->failures++;
    r_schedule_retry(r);
    r_tell(r, 0, msg);
}

static void r_on_connect(const redisAsyncContext *ac, int status) {
    tide__redis *r = ac->data;
    if (r == NULL || r->ac != ac)
        return;
    if (status != REDIS_OK) {
        char msg[300];
        snprintf(msg, sizeof msg, "cannot connect to Redis at %s:%d: %s",
                 r->host, r->port, ac->errstr[0] ? ac->errstr : "error");
        r_lost(r, msg);
        return;
    }
    r->state = S_UP;
    r->connects++;
    r->backoff_ms = r->opts.backoff_min_ms;
    r->auth_err[0] = '\0';
    if (r->password) {
        /* First on the connection, pipelined with what follows: no round
         * trip is added. r_on_auth checks the answer. */
        if (r->user)
            redisAsyncCommand(r->ac, r_on_auth, r, "AUTH %s %s", r->user,
                              r->password);
        else
            redisAsyncCommand(r->ac, r_on_auth, r, "AUTH %s", r->password);
    }
    if (r->opts.db > 0) {
        /* Before every queued command; with no record, because its reply
         * only confirms the choice (an error shows in the next reply). */
        redisAsyncCommand(r->ac, NULL, NULL, "SELECT %d", r->opts.db);
    }
    r_send_queued(r);
    r_tell(r, 1, NULL);
}

static void r_on_disconnect(const redisAsyncContext *ac, int status) {
    tide__redis *r = ac->data;
    if (r == NULL || r->ac != ac)
        return; /* dropped or closed here: already handled */
    char msg[300];
    snprintf(msg, sizeof msg, "the connection to Redis at %s:%d was lost: %s",
             r->host, r->port,
             status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr
                                                            : "error"));
    r_lost(r, msg);
}

/* Drops the connection on purpose; its sent commands end with ECONN. */
static void r_drop(tide__redis *r, const char *why) {
    redisAsyncContext *ac = r->ac;
    char msg[300];
    snprintf(msg, sizeof msg, "dropped the connection to Redis at %s:%d: %s",
             r->host, r->port, why);
    if (ac) {
        /* Sent commands get their NULL replies inside redisAsyncFree and
         * end with ECONN; the disconnect callback it also calls must not
         * count the loss a second time, so the context forgets r. */
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    r_lost(r, msg);
}

/* The poll callback of Debian's hiredis 0.14 adapter returns at once
 * when libuv reports an error (POLLERR: a refused connect, a reset), and
 * libuv has stopped the handle by then, so the context would never learn
 * of it. This one does what later hiredis versions do: on an error it
 * lets hiredis read or write what it was waiting for, which finds the
 * socket's error and ends the context. */
static void r_poll_cb(uv_poll_t *h, int status, int events) {
    redisLibuvEvents *p = h->data;
    int ev = status ? p->events : events;
    if (p->context != NULL && (ev & UV_READABLE))
        redisAsyncHandleRead(p->context);
    if (p->context != NULL && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->context);
}

/* The adapter's event functions, with r_poll_cb as the callback. The
 * adapter's own restart the poll handle at every call, and hiredis asks
 * for writing once per command: each uv_poll_start is an epoll_ctl
 * (libuv removes the descriptor and adds it again), which made these
 * calls the largest system cost of a submitting run. These change the
 * handle only when the set of events changes: about twice a loop turn
 * with commands (writing on, then off once the buffer is out). */
static void r_poll_set(redisLibuvEvents *p, int events) {
    uv_handle_t *h = (uv_handle_t *)&p->handle;
    if (uv_is_closing(h))
        return;
    if (events == p->events && (events == 0) == !uv_is_active(h))
        return;
    p->events = events;
    if (events)
        uv_poll_start(&p->handle, events, r_poll_cb);
    else
        uv_poll_stop(&p->handle);
}

static void r_add_read(void *privdata) {
    redisLibuvEvents *p = privdata;
    r_poll_set(p, p->events | UV_READABLE);
}

static void r_del_read(void *privdata) {
    redisLibuvEvents *p = privdata;
    r_poll_set(p, p->events & ~UV_READABLE);
}

static void r_add_write(void *privdata) {
    redisLibuvEvents *p = privdata;
    r_poll_set(p, p->events | UV_WRITABLE);
}

static void r_del_write(void *privdata) {
    redisLibuvEvents *p = privdata;
    r_poll_set(p, p->events & ~UV_WRITABLE);
}

static void r_connect(tide__redis *r) {
    char msg[300];
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL || ac->err || redisLibuvAttach(ac, r->loop) != REDIS_OK) {
        snprintf(msg, sizeof msg, "cannot connect to Redis at %s:%d: %s",
                 r->host, r->port,
                 ac && ac->errstr[0] ? ac->errstr : strerror(ENOMEM));
        if (ac)
            redisAsyncFree(ac);
        r->failures++;
        r_schedule_retry(r);
        r_tell(r, 0, msg);
        return;
    }
    ac->ev.addRead = r_add_read;
    ac->ev.delRead = r_del_read;
    ac->ev.addWrite = r_add_write;
    ac->ev.delWrite = r_del_write;
    ac->data = r;
    r->ac = ac;
    r->state = S_CONNECTING;
    redisAsyncSetConnectCallback(ac, r_on_connect);
    redisAsyncSetDisconnectCallback(ac, r_on_disconnect);
    if (!r->refd)
        r_set_ref(r_poll_handle(r), 0);
    r->connect_deadline =
        r_now() + (uint64_t)r->opts.connect_timeout_ms;
    r_arm_at(r, r->connect_deadline);
}

tide__redis *tide__redis_open(uv_loop_t *loop, const char *host, int port,
                              const tide__redis_opts *opts,
                              tide__redis_state_fn on_state, void *state_ud) {
    tide__redis *r = tide__xcalloc(1, sizeof(*r));
    r->loop = loop;
    r->host = tide__xstrdup(host);
    r->port = port;
    r->opts = *opts;
    r->user = opts->user ? tide__xstrdup(opts->user) : NULL;
    r->password = opts->password ? tide__xstrdup(opts->password) : NULL;
    r->opts.user = r->opts.password = NULL;
    if (r->opts.connect_timeout_ms <= 0)
        r->opts.connect_timeout_ms = 2000;
    if (r->opts.backoff_min_ms <= 0)
        r->opts.backoff_min_ms = 50;
    if (r->opts.backoff_max_ms < r->opts.backoff_min_ms)
        r->opts.backoff_max_ms = r->opts.backoff_min_ms;
    r->backoff_ms = r->opts.backoff_min_ms;
    r->on_state = on_state;
    r->state_ud = state_ud;
    r->head.next = r->head.prev = &r->head;
    uv_timer_init(loop, &r->timer);
    uv_timer_init(loop, &r->retry);
    r->nhandles = 2;
    uv_unref((uv_handle_t *)&r->timer);
    uv_unref((uv_handle_t *)&r->retry);
    r_connect(r);
    return r;
}

int tide__redis_send(tide__redis *r, int argc, const char **argv,
                     const size_t *lens, double timeout_ms, tide__redis_fn fn,
                     void *ud) {
    if (r->state == S_CLOSED)
        return -1;
    rd_cmd *c = tide__xcalloc(1, sizeof(*c));
    c->len = redisFormatCommandArgv(&c->buf, argc, argv, lens);
    if (c->len < 0) {
        free(c);
        return -1;
    }
    c->r = r;
    c->fn = fn;
    c->ud = ud;
    c->state = C_QUEUED;
    c->deadline = r_now() + (timeout_ms < 1 ? 1 : (uint64_t)timeout_ms);
    r_link(r, c);
    if (r->state == S_UP && r->ac)
        r_send_queued(r);
    else if (r->state == S_DOWN && !uv_is_active((uv_handle_t *)&r->retry))
        r_connect(r);
    r_update_ref(r);
    r_arm_at(r, c->deadline);
    return 0;
}

static void r_handle_closed(uv_handle_t *h) {
    tide__redis *r = h->data;
    if (--r->nhandles == 0) {
        free(r->host);
        free(r->user);
        free(r->password);
        free(r);
    }
}

void tide__redis_close(tide__redis *r) {
    if (r->state == S_CLOSED)
        return;
    r->state = S_CLOSED;
    while (r->head.next != &r->head)
        r_finish(r->head.next, NULL, TIDE__REDIS_ECLOSED,
                 "the Redis client was closed");
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    r->timer.data = r->retry.data = r;
    uv_close((uv_handle_t *)&r->timer, r_handle_closed);
    uv_close((uv_handle_t *)&r->retry, r_handle_closed);
}

void tide__redis_get_stats(tide__redis *r, tide__redis_stats *out) {
    out->sent = r->sent;
    out->replies = r->replies;
    out->timeouts = r->timeouts;
    out->connects = r->connects;
    out->failures = r->failures;
    out->waiting = r->waiting;
    out->up = r->state == S_UP;
}
