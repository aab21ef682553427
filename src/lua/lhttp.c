/* HTTP/1.1 for `tide serve`: libuv TCP, Debian's http-parser 2.9 for the
 * grammar, and the strictness it lacks (a pre-scan of the header block and
 * of a chunked body's trailer section: obs-fold, bare LF, whitespace before
 * a colon; HTTP versions other than 1.x: 505) plus tide's own limits
 * (header block size and count: 431; body: 413; a request must arrive
 * within a time limit: 408; idle keep-alive connections are closed).
 *
 * DESIGN
 * ------
 * A connection reads until its header block is complete, checks it, then
 * feeds the parser; a complete request is handed to Lua (on_request(conn,
 * method, path, query, headers, body)) and reading pauses until Lua calls
 * respond(conn, ...), possibly much later (long-polls). One request at a
 * time per connection; pipelined bytes wait in the buffer. A connection
 * record is freed in its close callback; Lua refers to it by number, so a
 * late respond() for a closed connection is a no-op, and a connection that
 * closes while Lua holds its request is reported (on_hangup(conn)) so that
 * Lua can drop what it registered for the answer.
 *
 * A request gets at most one answer: a refusal (a response that closes the
 * connection) ends the connection's parsing, and nothing is sent after it.
 * Trailer fields are checked like header fields but never join the
 * request's headers. A client that half-closes (EOF) after a complete
 * request still gets its answer; the connection closes after it.
 *
 * A server made without a socket (http_listen with host nil) takes its
 * bytes from srv:feed(bytes) on one connection at a time and hands back
 * what it would have written: the same parsing, checks and dispatch, for
 * the fuzz target (spec/fuzz/fuzz_http.c) and specs. Such a connection has
 * no libuv handles; its record goes when the next one is made or the
 * server is freed. */
#include <ctype.h>
#include <string.h>
#include <time.h>

#include <http_parser.h>
#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

#define LHTTP_MAX_HEADER_BYTES 16384
#define LHTTP_MAX_HEADERS 64

typedef struct lhttp_server lhttp_server;

/* ===== PHASE HISTOGRAMS =====
 * With phases on (http_listen's opts.phases, `tide serve` under
 * TIDE_SERVE_PHASES=1) each request's time is cut into phases, each kept
 * as a log-linear histogram of nanoseconds: 8 buckets per power of two
 * (an eighth, 12.5 %, of resolution), 512 counters, no allocation per
 * sample. Off, nothing reads the clock on a request's path. C records
 * the phases it sees (reading and parsing, writing, the whole request,
 * loop turns); Lua adds its own through srv:phase(k, seconds). */
enum {
    LHTTP_PH_READ,      /* first bytes read -> request parsed, handed to Lua */
    LHTTP_PH_SUBMIT,    /* handed to Lua -> job submitted (Lua) */
    LHTTP_PH_RUN,       /* job submitted -> job finished (Lua) */
    LHTTP_PH_ENCODE,    /* job finished -> response body encoded (Lua) */
    LHTTP_PH_WRITE,     /* response given to respond() -> write syscall done */
    LHTTP_PH_TOTAL,     /* first bytes read -> write syscall done */
    LHTTP_PH_TURN,      /* a loop turn's work (its time not blocked in poll) */
    LHTTP_PH_TURN_GC,   /* the same, for turns in which the Lua heap shrank */
    LHTTP_PH_TURN_CPU,  /* the CPU time of the thread in a turn: a turn far
                           longer than its CPU time was preempted */
    LHTTP_PH_N
};
static const char *const lhttp_phase_names[LHTTP_PH_N] = {
    "read_parse", "submit", "run", "encode", "write", "total",
    "loop_turn", "loop_turn_gc", "loop_turn_cpu"};
#define LHTTP_HIST_BUCKETS 512

typedef struct {
    uint64_t n, max, sum;
    uint64_t count[LHTTP_HIST_BUCKETS];
} lhttp_hist;

static int lhttp_hist_bucket(uint64_t v) {
    if (v < 8)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    return (msb - 2) * 8 + (int)((v >> (msb - 3)) & 7);
}

/* The smallest value of bucket k (inverse of lhttp_hist_bucket). */
static uint64_t lhttp_hist_low(int k) {
    if (k < 16)
        return (uint64_t)k;
    int msb = k / 8 + 2;
    return ((uint64_t)8 + (uint64_t)(k % 8)) << (msb - 3);
}

static void lhttp_hist_add(lhttp_hist *h, uint64_t v) {
    int k = lhttp_hist_bucket(v);
    if (k >= LHTTP_HIST_BUCKETS)
        k = LHTTP_HIST_BUCKETS - 1;
    h->count[k]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

/* The value under which a fraction q of the samples fall: the middle of
 * its bucket (the maximum for the last one). */
static double lhttp_hist_quantile(const lhttp_hist *h, double q) {
    if (h->n == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->n + 0.5), seen = 0;
    if (want < 1)
        want = 1;
    for (int k = 0; k < LHTTP_HIST_BUCKETS; k++) {
        seen += h->count[k];
        if (seen >= want) {
            double lo = (double)lhttp_hist_low(k);
            double hi = (double)lhttp_hist_low(k + 1);
            double mid = (lo + hi) / 2;
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}

typedef struct {
    lhttp_hist hist[LHTTP_PH_N];
    uv_prepare_t prepare;   /* a loop turn ends where the next one starts */
    uint64_t turn_start, idle_start; /* hrtime and uv_metrics_idle_time */
    uint64_t cpu_start;     /* the thread's CPU time at the turn's start */
    double heap_kb;         /* the Lua heap at the last turn's start */
    double alloc_kb;        /* heap growth summed over the turns */
    uint64_t turns, gc_turns;
} lhttp_phases;

typedef struct lhttp_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    int nhandles;
    lhttp_server *srv;
    uint32_t id;
    struct lhttp_conn *next, *prev;
    http_parser parser;
    char *buf;          /* bytes received, not yet parsed */
    size_t len, cap;
    int headers_ok;     /* the header block of this request passed */
    int in_request;     /* a request is being parsed or answered */
    int waiting;        /* handed to Lua, no response yet */
    int writes;         /* responses queued and not yet written */
    int closing;
    int done;           /* a response that closes the connection is queued */
    int eof;            /* the client will send nothing more (half-close) */
    int dispatching;    /* inside the Lua handler, called from the parse loop */
    int keep_alive;
    int socketless;     /* fed by srv:feed; what is sent goes to out */
    char *out;
    size_t outlen;
    /* The request being built: its URL, header names and values and body
     * are pieces (offset, length) of one buffer, req, kept from one
     * request to the next (a malloc and a free for each piece were 5 % of
     * a request's instructions). A piece's bytes come in one run (a field
     * split across reads continues at the end), so each grows at the
     * buffer's tail. */
    char *req;
    size_t reqlen, reqcap;
    int has_url;
    size_t urloff, urllen;
    size_t bodyoff, bodylen;
    size_t hnameoff[LHTTP_MAX_HEADERS], hvalueoff[LHTTP_MAX_HEADERS];
    size_t hnamelen[LHTTP_MAX_HEADERS], hvaluelen[LHTTP_MAX_HEADERS];
    int nheaders, last_was_value;
    int trailers;       /* header callbacks now bring trailer fields */
    int trailer_check;  /* paused before a trailer section not yet checked */
    int complete;
    int error_status;   /* set by callbacks: respond with it and close */
    uint64_t t_read;    /* with phases: when the request's first bytes came */
    uint64_t deadline;  /* loop time (ms) the current time limit ends */
    uint64_t timer_due; /* loop time the timer was last started for */
} lhttp_conn;

struct lhttp_server {
    tide__lua_base base;
    uv_tcp_t tcp;
    uv_loop_t *loop;
    tide__lua_hook hook; /* on_request, on a thread on_hangup runs on too */
    int hangup_ref;      /* on_hangup, or LUA_NOREF */
    int closed, handle_open, boxed;
    uint32_t next_id;
    lhttp_conn *conns;
    lhttp_conn *fed;    /* a socketless server's connection */
    int socketless;
    size_t max_body;
    uint64_t request_ms, idle_ms;
    uint64_t requests, rejected;
    lhttp_phases *phases; /* NULL unless opts.phases */
    lhttp_conn *current;  /* the connection whose request Lua is handed */
};

static const http_parser_settings lhttp_settings;

static void lhttp_conn_close(lhttp_conn *c);
static void lhttp_try_parse(lhttp_conn *c);
static void lhttp_received(lhttp_conn *c);

static void lhttp_append(char **p, size_t *len, const char *at, size_t n) {
    *p = tide__xrealloc(*p, *len + n + 1);
    memcpy(*p + *len, at, n);
    *len += n;
    (*p)[*len] = '\0';
}

/* Appends n bytes to the piece (*off, *len) of the request buffer: at
 * its tail, where the piece is (or is moved to, if another came after). */
static void lhttp_piece(lhttp_conn *c, size_t *off, size_t *len, const char *at,
                        size_t n) {
    if (n == 0) /* nothing to add (and the buffer may not exist yet) */
        return;
    int moved = *len > 0 && *off + *len != c->reqlen;
    size_t need = c->reqlen + n + (moved ? *len : 0);
    if (need > c->reqcap) {
        size_t cap = c->reqcap ? c->reqcap : 1024;
        while (cap < need)
            cap *= 2;
        c->req = tide__xrealloc(c->req, cap);
        c->reqcap = cap;
    }
    if (moved) {
        memcpy(c->req + c->reqlen, c->req + *off, *len);
        *off = c->reqlen;
        c->reqlen += *len;
    } else if (*len == 0) {
        *off = c->reqlen;
    }
    memcpy(c->req + c->reqlen, at, n);
    c->reqlen += n;
    *len += n;
}

/* The bytes of a piece ("" for an empty one: the buffer may not exist). */
static const char *lhttp_at(const lhttp_conn *c, size_t off, size_t len) {
    return len ? c->req + off : "";
}

static void lhttp_reset_request(lhttp_conn *c) {
    /* The buffer is kept for the next request unless a big body made it
     * big: an idle connection holds a few KiB at most. */
    if (c->reqcap > 65536) {
        free(c->req);
        c->req = NULL;
        c->reqcap = 0;
    }
    c->reqlen = 0;
    c->has_url = 0;
    c->urllen = c->bodylen = 0;
    c->nheaders = 0;
    c->last_was_value = 0;
    c->trailers = 0;
    c->trailer_check = 0;
    c->complete = 0;
    c->headers_ok = 0;
    c->error_status = 0;
}

/* ===== PARSER CALLBACKS ===== */

static int lhttp_on_url(http_parser *p, const char *at, size_t n) {
    lhttp_conn *c = p->data;
    c->has_url = 1;
    lhttp_piece(c, &c->urloff, &c->urllen, at, n);
    return 0;
}

static int lhttp_on_header_field(http_parser *p, const char *at, size_t n) {
    lhttp_conn *c = p->data;
    /* A trailer field passed the pre-scan but is dropped: a sender could
     * otherwise change headers (Content-Type, Authorization) after they
     * were checked, and nothing in the API needs trailers. */
    if (c->trailers)
        return 0;
    if (c->nheaders == 0 || c->last_was_value) {
        if (c->nheaders == LHTTP_MAX_HEADERS) {
            c->error_status = 431;
            return 1;
        }
        c->hnamelen[c->nheaders] = 0;
        c->hvaluelen[c->nheaders] = 0;
        c->nheaders++;
    }
    c->last_was_value = 0;
    int i = c->nheaders - 1;
    lhttp_piece(c, &c->hnameoff[i], &c->hnamelen[i], at, n);
    return 0;
}

static int lhttp_on_header_value(http_parser *p, const char *at, size_t n) {
    lhttp_conn *c = p->data;
    if (c->trailers)
        return 0;
    int i = c->nheaders - 1;
    c->last_was_value = 1;
    lhttp_piece(c, &c->hvalueoff[i], &c->hvaluelen[i], at, n);
    return 0;
}

static int lhttp_on_headers_complete(http_parser *p) {
    lhttp_conn *c = p->data;
    /* http-parser reads any one-digit version; only HTTP/1.x is spoken
     * here (HTTP/1.2 would be answered as 1.1, as RFC 9110 allows). */
    if (p->http_major != 1) {
        c->error_status = 505;
        return 1;
    }
    if (p->content_length != ULLONG_MAX &&
        p->content_length > c->srv->max_body) {
        c->error_status = 413;
        return 1;
    }
    return 0;
}

static int lhttp_on_body(http_parser *p, const char *at, size_t n) {
    lhttp_conn *c = p->data;
    if (c->bodylen + n > c->srv->max_body) {
        c->error_status = 413;
        return 1;
    }
    lhttp_piece(c, &c->bodyoff, &c->bodylen, at, n);
    return 0;
}

/* The last chunk's header: a trailer section follows. The parser stops
 * here so that the section passes the same pre-scan as the header block
 * before http-parser reads it (it would accept obs-fold there). */
static int lhttp_on_chunk_header(http_parser *p) {
    lhttp_conn *c = p->data;
    if (p->content_length == 0) {
        c->trailers = 1;
        c->trailer_check = 1;
        http_parser_pause(p, 1);
    }
    return 0;
}

static int lhttp_on_message_complete(http_parser *p) {
    lhttp_conn *c = p->data;
    c->complete = 1;
    http_parser_pause(p, 1); /* one request at a time */
    return 0;
}

/* ===== WRITING ===== */

typedef struct {
    uv_write_t req;
    char *data;
    lhttp_conn *conn;
    int close_after;
} lhttp_write;

static void lhttp_written(uv_write_t *w, int status) {
    lhttp_write *lw = (lhttp_write *)w;
    lhttp_conn *c = lw->conn;
    free(lw->data);
    int close_after = lw->close_after;
    free(lw);
    c->writes--;
    if (status < 0 || close_after || (c->eof && c->writes == 0 && !c->waiting))
        lhttp_conn_close(c);
}

static const char *lhttp_reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
    }
}

/* Appends the n bytes of p at *at in head (of cap bytes); 0 when they do
 * not fit. */
static int lhttp_put(char *head, size_t cap, size_t *at, const char *p,
                     size_t n) {
    if (cap - *at < n)
        return 0;
    memcpy(head + *at, p, n);
    *at += n;
    return 1;
}

/* The status line and headers of a response, in head: their length, or
 * 0 when they do not fit. Put together by hand: snprintf was 3 % of a
 * serve request's instructions. */
static int lhttp_head(char *head, size_t cap, int status, const char *ctype,
                      size_t bodylen, int close_after, const char *extra) {
    char num[24];
    size_t at = 0, k = sizeof(num);
    if (status < 100 || status > 999)
        return 0;
    num[0] = (char)('0' + status / 100);
    num[1] = (char)('0' + status / 10 % 10);
    num[2] = (char)('0' + status % 10);
    num[3] = ' ';
    const char *reason = lhttp_reason(status);
    int ok = lhttp_put(head, cap, &at, "HTTP/1.1 ", 9) &&
             lhttp_put(head, cap, &at, num, 4) &&
             lhttp_put(head, cap, &at, reason, strlen(reason)) &&
             lhttp_put(head, cap, &at, "\r\nContent-Type: ", 16) &&
             lhttp_put(head, cap, &at, ctype, strlen(ctype)) &&
             lhttp_put(head, cap, &at, "\r\nContent-Length: ", 18);
    do {
        num[--k] = (char)('0' + bodylen % 10);
        bodylen /= 10;
    } while (bodylen);
    ok = ok && lhttp_put(head, cap, &at, num + k, sizeof(num) - k) &&
         lhttp_put(head, cap, &at, "\r\n", 2);
    if (close_after)
        ok = ok && lhttp_put(head, cap, &at, "Connection: close\r\n", 19);
    if (extra)
        ok = ok && lhttp_put(head, cap, &at, extra, strlen(extra));
    ok = ok && lhttp_put(head, cap, &at, "\r\n", 2);
    return ok ? (int)at : 0;
}

/* Writes a response; closes the connection after it when close_after.
 * Nothing is sent after a response that closes: each request gets one
 * answer even when a refusal and Lua's answer cross. */
static void lhttp_send(lhttp_conn *c, int status, const char *ctype,
                       const char *extra_headers, const char *body,
                       size_t bodylen, int close_after) {
    if (c->closing || c->done)
        return;
    if (close_after)
        c->done = 1;
    char head[1024];
    int n = lhttp_head(head, sizeof(head), status, ctype, bodylen,
                       close_after, extra_headers);
    if (c->socketless) {
        /* Written at once: what lhttp_written does, in place. */
        lhttp_append(&c->out, &c->outlen, head, (size_t)n);
        if (bodylen)
            lhttp_append(&c->out, &c->outlen, body, bodylen);
        if (close_after || (c->eof && !c->waiting))
            lhttp_conn_close(c);
        return;
    }
    /* Nothing queued before it: the response goes out now, from the
     * caller's buffers (one writev, no copy, no request to free, no
     * callback a loop turn later); only what the socket did not take is
     * copied and queued. When it all went, what lhttp_written would do is
     * done here: the close after a refusal (a half-closed connection is
     * closed by the parse loop once nothing is left to answer). */
    size_t total = (size_t)n + bodylen, sent = 0;
    if (c->writes == 0) {
        uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)n),
                            uv_buf_init((char *)body, (unsigned)bodylen)};
        int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, bodylen ? 2 : 1);
        if (r >= 0) {
            sent = (size_t)r;
        } else if (r != UV_EAGAIN) {
            lhttp_conn_close(c);
            return;
        }
        if (sent == total) {
            if (close_after)
                lhttp_conn_close(c);
            return;
        }
    }
    lhttp_write *lw = tide__xcalloc(1, sizeof(*lw));
    lw->data = tide__xmalloc(total - sent + 1);
    size_t at = 0;
    if (sent < (size_t)n) {
        memcpy(lw->data, head + sent, (size_t)n - sent);
        at = (size_t)n - sent;
    }
    size_t body_from = sent > (size_t)n ? sent - (size_t)n : 0;
    if (bodylen > body_from)
        memcpy(lw->data + at, body + body_from, bodylen - body_from);
    lw->conn = c;
    lw->close_after = close_after;
    uv_buf_t b = uv_buf_init(lw->data, (unsigned)(total - sent));
    if (uv_write(&lw->req, (uv_stream_t *)&c->tcp, &b, 1, lhttp_written)) {
        free(lw->data);
        free(lw);
        lhttp_conn_close(c);
        return;
    }
    c->writes++;
}

/* A protocol error: a JSON error body, then the connection is closed. */
static void lhttp_reject(lhttp_conn *c, int status, const char *msg) {
    char body[512];
    int n = snprintf(body, sizeof(body),
                     "{\"error\":{\"code\":\"EHTTP\",\"message\":\"%s\"}}", msg);
    c->srv->rejected++;
    if (!c->socketless)
        uv_read_stop((uv_stream_t *)&c->tcp);
    lhttp_send(c, status, "application/json", NULL, body, (size_t)n, 1);
}

/* ===== CONNECTIONS ===== */

static void lhttp_conn_closed(uv_handle_t *h) {
    lhttp_conn *c = h->data;
    if (--c->nhandles > 0)
        return;
    lhttp_reset_request(c);
    free(c->req);
    free(c->buf);
    free(c);
}

static void lhttp_conn_close(lhttp_conn *c) {
    if (c->closing)
        return;
    c->closing = 1;
    lhttp_server *s = c->srv;
    /* Lua holds this request (a long-poll): it is told, so that what it
     * registered for the answer goes now rather than when the job ends.
     * A stopped server has dropped its hook; its jobs are cancelled. */
    if (c->waiting && !s->closed && s->hangup_ref != LUA_NOREF) {
        lua_State *T = s->hook.T;
        lua_rawgeti(T, LUA_REGISTRYINDEX, s->hangup_ref);
        lua_pushinteger(T, c->id);
        tide__lua_pcall_hook(T, 1, "HTTP hang-up handler");
    }
    if (s->current == c)
        s->current = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else if (s->conns == c)
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    if (c->socketless)
        return; /* no handles: freed with the server's next one */
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, lhttp_conn_closed);
    uv_close((uv_handle_t *)&c->timer, lhttp_conn_closed);
}

static void lhttp_on_timer(uv_timer_t *t) {
    lhttp_conn *c = t->data;
    uint64_t now = uv_now(c->srv->loop);
    if (now < c->deadline) {
        /* Armed for an earlier limit that was moved on since. */
        c->timer_due = c->deadline;
        uv_timer_start(&c->timer, lhttp_on_timer, c->deadline - now, 0);
        return;
    }
    if (c->waiting)
        return; /* Lua holds the request (a long-poll): its business */
    if (c->in_request || c->len > 0)
        lhttp_reject(c, 408, "request took too long");
    else
        lhttp_conn_close(c); /* idle keep-alive connection */
}

/* Sets the connection's time limit to ms from now. The timer is restarted
 * only when the limit comes earlier than it is due (or it is not running):
 * a limit that moves later, as each answer's does, is found by the timer
 * when it fires and re-arms, so that a request costs no timer-heap work. */
static void lhttp_arm(lhttp_conn *c, uint64_t ms) {
    if (c->socketless)
        return;
    uint64_t due = uv_now(c->srv->loop) + ms;
    c->deadline = due;
    if (!uv_is_active((uv_handle_t *)&c->timer) || due < c->timer_due) {
        c->timer_due = due;
        uv_timer_start(&c->timer, lhttp_on_timer, ms, 0);
    }
}

/* The length of the block that ends at its first empty line (CRLF, or a
 * bare LF that the pre-scan refuses), 0 while it is incomplete. A trailer
 * section may be the empty line alone. */
static size_t lhttp_block_end(const char *b, size_t len, int trailer) {
    if (trailer && len >= 1 && b[0] == '\n')
        return 1;
    if (trailer && len >= 2 && b[0] == '\r' && b[1] == '\n')
        return 2;
    /* Line by line with memchr: a byte loop here was 4 % of a serve
     * request's instructions. */
    const char *p = b, *end = b + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || nl + 1 >= end)
            return 0;
        size_t i = (size_t)(nl - b);
        if (nl[1] == '\n')
            return i + 2;
        if (i + 2 < len && nl[1] == '\r' && nl[2] == '\n')
            return i + 3;
        p = nl + 1;
    }
    return 0;
}

/* Checks a complete header block or trailer section (up to and including
 * its empty line) for what http-parser lets through. Returns NULL or the
 * fault. A header block starts with the request line, whose spaces and
 * colons belong to the method, URL and version: only its line ending is
 * checked (a job id with a colon is a fine URL). */
static const char *lhttp_prescan(const char *p, size_t n, int request_line) {
    const char *q = p, *end = p + n;
    if (request_line) {
        const char *nl = memchr(p, '\n', n);
        if (nl == NULL || nl == p || nl[-1] != '\r')
            return "bare LF";
        q = nl + 1;
    }
    /* A line at a time (memchr finds its end); only a field's name, up to
     * its colon, is read byte by byte. */
    while (q < end) {
        const char *nl = memchr(q, '\n', (size_t)(end - q));
        const char *stop = nl ? nl : end;
        if (nl && (nl == p || nl[-1] != '\r'))
            return "bare LF";
        if (q < stop && (*q == ' ' || *q == '\t'))
            return "obsolete line folding";
        int space = 0;
        for (const char *r = q; r < stop; r++) {
            if (*r == ':') {
                if (space)
                    return "whitespace before a header colon";
                break;
            }
            if (*r == ' ' || *r == '\t')
                space = 1;
        }
        if (nl == NULL)
            break;
        q = nl + 1;
    }
    return NULL;
}

/* The message of a refusal decided in a parser callback. */
static const char *lhttp_refusal(int status) {
    switch (status) {
    case 413: return "request body too large";
    case 505: return "HTTP version not supported: use HTTP/1.1";
    default: return "too many header fields";
    }
}

static void lhttp_dispatch(lhttp_conn *c) {
    lhttp_server *s = c->srv;
    struct http_parser_url u;
    const char *url = lhttp_at(c, c->urloff, c->urllen);
    const char *path = c->has_url ? url : "/";
    size_t pathlen = c->has_url ? c->urllen : 1;
    const char *query = "";
    size_t querylen = 0;
    http_parser_url_init(&u);
    if (c->has_url && http_parser_parse_url(url, c->urllen, 0, &u) == 0) {
        if (u.field_set & (1 << UF_PATH)) {
            path = url + u.field_data[UF_PATH].off;
            pathlen = u.field_data[UF_PATH].len;
        }
        if (u.field_set & (1 << UF_QUERY)) {
            query = url + u.field_data[UF_QUERY].off;
            querylen = u.field_data[UF_QUERY].len;
        }
    }
    s->requests++;
    if (s->phases)
        lhttp_hist_add(&s->phases->hist[LHTTP_PH_READ], uv_hrtime() - c->t_read);
    c->waiting = 1;
    c->keep_alive = http_should_keep_alive(&c->parser);
    lua_State *T = tide__lua_hook_push(&s->hook);
    lua_pushinteger(T, c->id);
    lua_pushstring(T, http_method_str((enum http_method)c->parser.method));
    lua_pushlstring(T, path, pathlen);
    lua_pushlstring(T, query, querylen);
    lua_createtable(T, 0, c->nheaders);
    for (int i = 0; i < c->nheaders; i++) {
        /* Lower-case names; a repeated header keeps its last value. */
        for (size_t k = c->hnameoff[i]; k < c->hnameoff[i] + c->hnamelen[i]; k++)
            c->req[k] = (char)tolower((unsigned char)c->req[k]);
        lua_pushlstring(T, lhttp_at(c, c->hnameoff[i], c->hnamelen[i]), c->hnamelen[i]);
        lua_pushlstring(T, lhttp_at(c, c->hvalueoff[i], c->hvaluelen[i]), c->hvaluelen[i]);
        lua_rawset(T, -3);
    }
    lua_pushlstring(T, lhttp_at(c, c->bodyoff, c->bodylen), c->bodylen);
    c->dispatching = 1;
    lhttp_conn *outer = s->current;
    s->current = c;
    int rc = tide__lua_pcall_hook(T, 6, "HTTP request handler");
    s->current = outer;
    c->dispatching = 0;
    if (rc != 0 && c->waiting && !c->closing)
        lhttp_send(c, 500, "application/json", NULL,
                   "{\"error\":{\"code\":\"EIO\",\"message\":\"internal "
                   "error\"}}", 51, 1);
}

/* The parser's callbacks, set once at compile time: every Lua state that
 * opens tide.core (worker threads too) shares this table read-only. */
static const http_parser_settings lhttp_settings = {
    .on_url = lhttp_on_url,
    .on_header_field = lhttp_on_header_field,
    .on_header_value = lhttp_on_header_value,
    .on_headers_complete = lhttp_on_headers_complete,
    .on_body = lhttp_on_body,
    .on_chunk_header = lhttp_on_chunk_header,
    .on_message_complete = lhttp_on_message_complete,
};

/* Checks the block at the start of the buffer (the header block, or the
 * trailer section the parser paused before) once it is complete. Returns
 * 1 when it passed, 0 to wait for more, -1 when the request was refused. */
static int lhttp_check_block(lhttp_conn *c, int trailer) {
    const char *what = trailer ? "trailer section" : "header block";
    char msg[96];
    size_t end = lhttp_block_end(c->buf, c->len, trailer);
    if (end == 0 ? c->len > LHTTP_MAX_HEADER_BYTES
                 : end > LHTTP_MAX_HEADER_BYTES) {
        snprintf(msg, sizeof(msg), "%s too large", what);
        lhttp_reject(c, 431, msg);
        return -1;
    }
    if (end == 0)
        return 0;
    const char *why = lhttp_prescan(c->buf, end, !trailer);
    if (why) {
        snprintf(msg, sizeof(msg), "%s in the %s", why, what);
        lhttp_reject(c, 400, msg);
        return -1;
    }
    return 1;
}

/* Parses what is buffered: the header block first (checked), then the
 * rest, until one request is complete; a chunked body's trailer section
 * is checked before the parser goes on into it. */
static void lhttp_try_parse(lhttp_conn *c) {
    while (!c->closing && !c->done && !c->waiting && c->len > 0) {
        if (!c->headers_ok) {
            /* Empty lines before a request line are ignored (RFC 9112
             * 2.2); they go here so that the pre-scan's block is the
             * request's own and not an empty one the parser reads past. */
            size_t skip = 0;
            while (skip + 1 < c->len && c->buf[skip] == '\r' &&
                   c->buf[skip + 1] == '\n')
                skip += 2;
            memmove(c->buf, c->buf + skip, c->len - skip);
            c->len -= skip;
            int ok = lhttp_check_block(c, 0);
            if (ok <= 0)
                return;
            c->headers_ok = 1;
            c->in_request = 1;
            http_parser_init(&c->parser, HTTP_REQUEST);
            c->parser.data = c;
        } else if (c->trailer_check) {
            int ok = lhttp_check_block(c, 1);
            if (ok <= 0)
                return;
            c->trailer_check = 0;
            http_parser_pause(&c->parser, 0);
        }
        size_t used = http_parser_execute(&c->parser, &lhttp_settings, c->buf,
                                          c->len);
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (c->error_status) {
            lhttp_reject(c, c->error_status, lhttp_refusal(c->error_status));
            return;
        }
        if (err != HPE_OK && err != HPE_PAUSED) {
            lhttp_reject(c, 400, http_errno_description(err));
            return;
        }
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
        if (!c->complete) {
            if (c->trailer_check)
                continue; /* the trailer section, when it is there */
            return;       /* the body is still coming */
        }
        http_parser_pause(&c->parser, 0);
        lhttp_dispatch(c);
    }
    /* After a half-close what is left cannot complete: the connection
     * closes once the answers written so far are out. */
    if (c->eof && !c->waiting && !c->closing && c->writes == 0)
        lhttp_conn_close(c);
}

static void lhttp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    lhttp_conn *c = h->data;
    TIDE_UNUSED(hint);
    if (c->cap - c->len < 16384) {
        c->cap = c->cap ? c->cap * 2 : 16384;
        c->buf = tide__xrealloc(c->buf, c->cap);
    }
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void lhttp_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
    lhttp_conn *c = st->data;
    TIDE_UNUSED(buf);
    if (n == UV_EOF) {
        /* The client will send nothing more, but may still read (a
         * half-close after `POST ?wait`): an answer it is owed, or one
         * being written, goes out before the connection closes. */
        c->eof = 1;
        uv_read_stop(st);
        if (!c->waiting && c->writes == 0)
            lhttp_conn_close(c);
        return;
    }
    if (n < 0) {
        lhttp_conn_close(c);
        return;
    }
    c->len += (size_t)n;
    lhttp_received(c);
}

static void lhttp_on_connection(uv_stream_t *server, int status) {
    lhttp_server *s = tide__container_of((uv_tcp_t *)server, lhttp_server,
                                         tcp);
    if (status < 0 || s->closed)
        return;
    lhttp_conn *c = tide__xcalloc(1, sizeof(*c));
    c->srv = s;
    c->id = ++s->next_id;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->nhandles = 2;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->closing = 1;
        uv_close((uv_handle_t *)&c->tcp, lhttp_conn_closed);
        uv_close((uv_handle_t *)&c->timer, lhttp_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    lhttp_arm(c, s->idle_ms);
    uv_read_start((uv_stream_t *)&c->tcp, lhttp_alloc, lhttp_read);
}

/* The connection of a socketless server goes: closed (Lua is told when it
 * held its request), then freed. */
static void lhttp_fed_free(lhttp_server *s) {
    lhttp_conn *c = s->fed;
    if (c == NULL)
        return;
    lhttp_conn_close(c);
    s->fed = NULL;
    lhttp_reset_request(c);
    free(c->req);
    free(c->buf);
    free(c->out);
    free(c);
}

/* Bytes that arrived on connection c (what lhttp_read does with them). */
static void lhttp_received(lhttp_conn *c) {
    if (!c->in_request) {
        lhttp_arm(c, c->srv->request_ms); /* the request's time limit */
        if (c->srv->phases)
            c->t_read = uv_hrtime();
    }
    c->in_request = 1;
    /* A body larger than the limit is refused before it is all read. */
    if (c->len > c->srv->max_body + LHTTP_MAX_HEADER_BYTES + 1024) {
        lhttp_reject(c, 413, "request body too large");
        return;
    }
    lhttp_try_parse(c);
}

static lhttp_conn *lhttp_find(lhttp_server *s, uint32_t id) {
    /* Most answers are to the request being dispatched (a job that ended
     * at once): no walk of the list for those. */
    if (s->current && s->current->id == id && !s->current->closing)
        return s->current;
    for (lhttp_conn *c = s->conns; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* ===== LOOP TURNS (phases) ===== */

/* Runs once per loop turn, before the loop blocks for I/O: the turn that
 * ends here took its time minus what it spent blocked (libuv's idle-time
 * metric). A turn in which the Lua heap shrank held a GC step that freed
 * memory (a sweep): those turns get their own histogram, so that GC's
 * share of the tail shows. */
static void lhttp_on_prepare(uv_prepare_t *h) {
    lhttp_server *s = h->data;
    lhttp_phases *ph = s->phases;
    if (ph == NULL)
        return;
    uint64_t now = uv_hrtime(), idle = uv_metrics_idle_time(s->loop);
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    uint64_t cpu = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    lua_State *T = s->hook.T;
    double kb = T ? lua_gc(T, LUA_GCCOUNT, 0) + lua_gc(T, LUA_GCCOUNTB, 0) / 1024.0
                  : 0;
    if (ph->turn_start) {
        uint64_t blocked = idle - ph->idle_start, all = now - ph->turn_start;
        uint64_t work = all > blocked ? all - blocked : 0;
        ph->turns++;
        if (kb < ph->heap_kb) {
            ph->gc_turns++;
            lhttp_hist_add(&ph->hist[LHTTP_PH_TURN_GC], work);
        } else {
            ph->alloc_kb += kb - ph->heap_kb;
        }
        lhttp_hist_add(&ph->hist[LHTTP_PH_TURN], work);
        lhttp_hist_add(&ph->hist[LHTTP_PH_TURN_CPU], cpu - ph->cpu_start);
    }
    ph->cpu_start = cpu;
    ph->turn_start = now;
    ph->idle_start = idle;
    ph->heap_kb = kb;
}

static void lhttp_phases_closed(uv_handle_t *h) {
    free(tide__container_of((uv_prepare_t *)h, lhttp_phases, prepare));
}

/* ===== LUA ===== */

/* The server of a box; a draining server (closed to new connections)
 * still answers the requests it holds. */
static lhttp_server *lhttp_check(lua_State *L) {
    lhttp_server **box = luaL_checkudata(L, 1, "tide.http");
    if (*box == NULL)
        luaL_argerror(L, 1, "server is closed");
    return *box;
}

/* respond(conn, status, body, content_type, extra_headers) -> sent
 * Returns false when the connection is gone. */
static int l_http_respond(lua_State *L) {
    lhttp_server *s = lhttp_check(L);
    uint32_t id = (uint32_t)luaL_checkinteger(L, 2);
    int status = (int)luaL_checkinteger(L, 3);
    luaL_argcheck(L, status >= 100 && status <= 999, 3, "an HTTP status expected");
    size_t n;
    const char *body = luaL_optlstring(L, 4, "", &n);
    const char *ctype = luaL_optstring(L, 5, "application/json");
    const char *extra = luaL_optstring(L, 6, NULL);
    lhttp_conn *c = lhttp_find(s, id);
    if (c == NULL || !c->waiting || c->closing) {
        lua_pushboolean(L, 0);
        return 1;
    }
    c->waiting = 0;
    c->in_request = 0;
    /* After a half-close, the answer to the last request closes. */
    int close_after = !c->keep_alive || s->closed || (c->eof && c->len == 0);
    uint64_t t0 = s->phases ? uv_hrtime() : 0;
    lhttp_send(c, status, ctype, extra, body, n, close_after);
    if (s->phases) {
        uint64_t t1 = uv_hrtime();
        lhttp_hist_add(&s->phases->hist[LHTTP_PH_WRITE], t1 - t0);
        if (c->t_read)
            lhttp_hist_add(&s->phases->hist[LHTTP_PH_TOTAL], t1 - c->t_read);
    }
    lhttp_reset_request(c);
    /* A pipelined request waits; an answer given inside the handler leaves
     * it to the parse loop that called the handler. */
    if (!close_after) {
        lhttp_arm(c, s->idle_ms);
        if (c->len > 0 && !c->dispatching)
            lhttp_try_parse(c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* srv:feed(bytes | nil [, new]) -> written, closed
 * For a server made without a socket: bytes arrive on its connection (a
 * new one first when new is true or there is none; nil: the client
 * half-closes; bytes for a closed connection go nowhere). Returns what the
 * server wrote since the last call and whether the connection is closed. */
static int l_http_feed(lua_State *L) {
    lhttp_server *s = lhttp_check(L);
    luaL_argcheck(L, s->socketless, 1, "feed needs a server made without "
                  "a socket");
    size_t n = 0;
    const char *bytes = luaL_optlstring(L, 2, NULL, &n);
    int fresh = lua_toboolean(L, 3);
    lua_settop(L, 3);
    if (s->closed)
        return luaL_argerror(L, 1, "server is closed");
    if (fresh || s->fed == NULL) {
        lhttp_fed_free(s);
        lhttp_conn *c = tide__xcalloc(1, sizeof(*c));
        c->srv = s;
        c->id = ++s->next_id;
        c->socketless = 1;
        c->next = s->conns;
        if (s->conns)
            s->conns->prev = c;
        s->conns = c;
        s->fed = c;
    }
    lhttp_conn *c = s->fed;
    /* Nothing is read after a refusal or a half-close (read stopped). */
    if (!c->closing && !c->done && !c->eof) {
        if (bytes == NULL) {
            c->eof = 1;
            if (!c->waiting && c->writes == 0)
                lhttp_conn_close(c);
        } else if (n > 0) {
            if (c->cap - c->len < n) {
                c->cap = c->len + n + 16384;
                c->buf = tide__xrealloc(c->buf, c->cap);
            }
            memcpy(c->buf + c->len, bytes, n);
            c->len += n;
            lhttp_received(c);
        }
    }
    /* The connection (hence its out buffer) belongs to the server: a
     * memory error here leaks nothing. */
    lua_pushlstring(L, c->out ? c->out : "", c->outlen);
    free(c->out);
    c->out = NULL;
    c->outlen = 0;
    lua_pushboolean(L, c->closing);
    return 2;
}

/* srv:phase(k, seconds): a sample of the phase a Lua handler measures
 * (2 submit, 3 run, 4 encode); nothing when phases are off. */
static int l_http_phase(lua_State *L) {
    lhttp_server *s = lhttp_check(L);
    int k = (int)luaL_checkinteger(L, 2) - 1;
    double v = luaL_checknumber(L, 3);
    luaL_argcheck(L, k >= LHTTP_PH_SUBMIT && k <= LHTTP_PH_ENCODE, 2,
                  "not a phase Lua measures");
    if (s->phases)
        lhttp_hist_add(&s->phases->hist[k], v > 0 ? (uint64_t)(v * 1e9) : 0);
    return 0;
}

/* srv:phase_report() -> { {name, n, mean, p50, p90, p99, p999, max} (us)
 * ... }, { turns, gc_turns, alloc_kb, requests } | nil when phases are
 * off. */
static int l_http_phase_report(lua_State *L) {
    lhttp_server *s = lhttp_check(L);
    lhttp_phases *ph = s->phases;
    if (ph == NULL)
        return 0;
    static const struct { const char *name; double q; } qs[] = {
        {"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}, {"p999", 0.999}};
    lua_createtable(L, LHTTP_PH_N, 0);
    for (int k = 0; k < LHTTP_PH_N; k++) {
        const lhttp_hist *h = &ph->hist[k];
        lua_createtable(L, 0, 8);
        lua_pushstring(L, lhttp_phase_names[k]);
        lua_setfield(L, -2, "name");
        lua_pushnumber(L, (double)h->n);
        lua_setfield(L, -2, "n");
        lua_pushnumber(L, h->n ? (double)h->sum / (double)h->n / 1e3 : 0);
        lua_setfield(L, -2, "mean");
        for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
            lua_pushnumber(L, lhttp_hist_quantile(h, qs[i].q) / 1e3);
            lua_setfield(L, -2, qs[i].name);
        }
        lua_pushnumber(L, (double)h->max / 1e3);
        lua_setfield(L, -2, "max");
        lua_rawseti(L, -2, k + 1);
    }
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, (double)ph->turns);
    lua_setfield(L, -2, "turns");
    lua_pushnumber(L, (double)ph->gc_turns);
    lua_setfield(L, -2, "gc_turns");
    lua_pushnumber(L, ph->alloc_kb);
    lua_setfield(L, -2, "alloc_kb");
    lua_pushnumber(L, (double)s->requests);
    lua_setfield(L, -2, "requests");
    return 2;
}

static int l_http_port(lua_State *L) {
    lhttp_server *s = lhttp_check(L);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (s->handle_open)
        uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&ss, &len);
    int port = ss.ss_family == AF_INET6
                   ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                   : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    lua_pushinteger(L, port);
    return 1;
}

static int l_http_stats(lua_State *L) {
    lhttp_server *s = lhttp_check(L);
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (double)s->requests);
    lua_setfield(L, -2, "requests");
    lua_pushnumber(L, (double)s->rejected);
    lua_setfield(L, -2, "rejected");
    int open = 0;
    for (lhttp_conn *c = s->conns; c; c = c->next)
        open++;
    lua_pushinteger(L, open);
    lua_setfield(L, -2, "connections");
    return 1;
}

static void lhttp_server_closed(uv_handle_t *h) {
    lhttp_server *s = tide__container_of((uv_tcp_t *)h, lhttp_server, tcp);
    s->handle_open = 0;
    if (!s->boxed)
        free(s);
}

/* Stops accepting; open connections finish their request (when drain) or
 * are closed now. */
static void lhttp_stop(lhttp_server *s, int drain) {
    if (!s->closed) {
        s->closed = 1;
        if (s->handle_open && !uv_is_closing((uv_handle_t *)&s->tcp))
            uv_close((uv_handle_t *)&s->tcp, lhttp_server_closed);
        /* on_hangup first: its reference is dropped through the thread. */
        luaL_unref(s->hook.T, LUA_REGISTRYINDEX, s->hangup_ref);
        s->hangup_ref = LUA_NOREF;
        tide__lua_hook_free(&s->hook);
    }
    /* The phase histograms outlive a drain: they are read at its end. */
    if (!drain && s->phases) {
        uv_close((uv_handle_t *)&s->phases->prepare, lhttp_phases_closed);
        s->phases = NULL;
    }
    lhttp_conn *c = s->conns;
    while (c) {
        lhttp_conn *next = c->next;
        if (!drain || !c->waiting)
            lhttp_conn_close(c);
        c = next;
    }
}

/* server:close([drain]) */
static int l_http_close(lua_State *L) {
    lhttp_server **box = luaL_checkudata(L, 1, "tide.http");
    lhttp_server *s = *box;
    if (s == NULL)
        return 0;
    int drain = lua_toboolean(L, 2);
    lhttp_stop(s, drain);
    if (!drain) {
        *box = NULL;
        s->boxed = 0;
        lhttp_fed_free(s);
        if (!s->handle_open)
            free(s);
    }
    return 0;
}

static void lhttp_before_engine_close(tide__lua_base *b) {
    lhttp_server *s = tide__container_of(b, lhttp_server, base);
    lhttp_stop(s, 0);
}

static void lhttp_engine_closed(uv_handle_t *h) {
    lhttp_server_closed(h);
}

/* http_listen(engine, host, port, opts, on_request) -> server | nil, msg
 * opts: max_body (bytes), request_timeout and idle_timeout (s), on_hangup
 * (called with the connection of a request Lua holds when it closes). */
static int l_http_listen(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    int socketless = lua_isnil(L, 2);
    const char *host = socketless ? "" : luaL_checkstring(L, 2);
    int port = socketless ? 0 : (int)luaL_checkinteger(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TFUNCTION);
    lua_getfield(L, 4, "max_body");
    size_t max_body = (size_t)luaL_optnumber(L, -1, 1 << 20);
    lua_getfield(L, 4, "request_timeout");
    double req_s = luaL_optnumber(L, -1, 10);
    lua_getfield(L, 4, "idle_timeout");
    double idle_s = luaL_optnumber(L, -1, 60);
    lua_getfield(L, 4, "on_hangup");
    int has_hangup = !lua_isnil(L, -1);
    luaL_argcheck(L, !has_hangup || lua_isfunction(L, -1), 4,
                  "on_hangup must be a function");
    lua_getfield(L, 4, "phases");
    int phases = lua_toboolean(L, -1);
    lua_pop(L, 5);
    struct sockaddr_storage addr;
    int rc = 0;
    if (!socketless) {
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
        if (rc != 0)
            rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr);
    }
    if (rc != 0)
        return tide__lua_fail(L, 0, "bad listen address '%s'", host);
    lhttp_server **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, "tide.http");
    lua_setmetatable(L, -2);
    lhttp_server *s = tide__xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->max_body = max_body;
    s->request_ms = (uint64_t)(req_s * 1000);
    s->idle_ms = (uint64_t)(idle_s * 1000);
    s->base.close_cb = lhttp_engine_closed;
    s->base.before_close = lhttp_before_engine_close;
    s->boxed = 1;
    s->socketless = socketless;
    *box = s;
    if (!socketless) {
        uv_tcp_init(loop, &s->tcp);
        s->tcp.data = &s->base;
        s->handle_open = 1;
    }
    tide__lua_hook_init(L, &s->hook, 5);
    s->hangup_ref = LUA_NOREF;
    if (has_hangup) {
        lua_getfield(L, 4, "on_hangup");
        s->hangup_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    if (socketless)
        return 1;
    if (phases) {
        /* The turn metric needs libuv to count the time blocked in poll;
         * the flag only adds two clock reads per turn. */
        uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
        s->phases = tide__xcalloc(1, sizeof(*s->phases));
        uv_prepare_init(loop, &s->phases->prepare);
        s->phases->prepare.data = s;
        uv_prepare_start(&s->phases->prepare, lhttp_on_prepare);
        uv_unref((uv_handle_t *)&s->phases->prepare);
    }
    rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->tcp, 512, lhttp_on_connection);
    if (rc != 0) {
        lhttp_stop(s, 0);
        return tide__lua_fail(L, 0, "cannot listen on %s:%d: %s", host, port,
                              uv_strerror(rc));
    }
    return 1;
}

void tide__lua_open_http(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"respond", l_http_respond}, {"port", l_http_port},
        {"stats", l_http_stats},     {"close", l_http_close},
        {"feed", l_http_feed},       {"phase", l_http_phase},
        {"phase_report", l_http_phase_report}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"http_listen", l_http_listen},
                                     {NULL, NULL}};
    tide__lua_newclass(L, "tide.http", methods, l_http_close);
    luaL_setfuncs(L, funcs, 0);
}
