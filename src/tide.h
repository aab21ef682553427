/* tide: a workflow engine whose pipelines are Lua scripts (public header).
 *
 * Ownership rule for the whole API: arguments are borrowed, and returned
 * pointers are owned by the caller, except for functions named *_get or
 * *_peek (borrowed) and *_take (consume their argument). */
#ifndef TIDE_H
#define TIDE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIDE_VERSION_MAJOR 0
#define TIDE_VERSION_MINOR 1
#define TIDE_VERSION_PATCH 0
#define TIDE_VERSION_STRING "0.1.0"

/* Error codes live in a range that does not overlap libuv's (-errno and
 * -3000..-4095); functions return 0 or one of these, negative. The names
 * are the codes of error records ("ETASK", ...). */
#define TIDE_ERRNO_MAP(XX)                                           \
    XX(ETASK, -6001, "task failed")                                  \
    XX(ETIMEDOUT, -6002, "attempt timed out")                        \
    XX(ECANCELED, -6003, "cancelled")                                \
    XX(EDEADLK, -6004, "deadlock: waits for work that cannot finish") \
    XX(EVALUE, -6005, "value cannot be carried")                     \
    XX(EAGAIN, -6006, "not finished yet")                            \
    XX(ENOENT, -6007, "no such job")                                 \
    XX(EPIPELINE, -6008, "invalid pipeline")                         \
    XX(EINVAL, -6009, "invalid argument")                            \
    XX(EEXIST, -6010, "already exists")                              \
    XX(EIO, -6011, "input/output error")

typedef enum {
#define XX(name, val, msg) TIDE_##name = val,
    TIDE_ERRNO_MAP(XX)
#undef XX
} tide_errno_t;

/* ===== EMBEDDING =====
 *
 * A host program runs pipelines through an engine:
 *
 *     tide_engine_t *eng = tide_engine_new(NULL);
 *     char *err = NULL, *id = NULL, *out = NULL;
 *     if (tide_engine_load_file(eng, "pipeline.lua", &err) != 0) { ... }
 *     tide_engine_submit(eng, NULL, "{\"n\": 3}", &id, &err);
 *     while (tide_engine_step(eng) > 0)
 *         ;                       (or tide_engine_run(eng) to block)
 *     int rc = tide_engine_result(eng, id, &out);   (0: out is the output)
 *     tide_free(out); tide_free(id); tide_engine_free(eng);
 *
 * Inputs and outputs are JSON text. Every char * an engine function hands
 * back through an out-parameter is the caller's, released with tide_free.
 * An engine is not thread-safe: use it from one thread. The pipeline file
 * may `require` modules next to it, as under `tide run`. */

typedef struct tide_engine tide_engine_t;

typedef struct {
    int concurrency;   /* root jobs in flight; 0: 10000 */
    double task_timeout; /* default per-attempt timeout in s; 0: none */
} tide_options_t;

/* Creates an engine (its own Lua state and event loop). opts may be NULL.
 * Returns NULL when out of memory or the event loop cannot start. */
tide_engine_t *tide_engine_new(const tide_options_t *opts);
/* Cancels what still runs and frees the engine. Accepts NULL. */
void tide_engine_free(tide_engine_t *eng);

/* Loads the pipeline a Lua file returns (or, for load_string, a chunk of
 * Lua source) and makes it the one jobs are submitted to. Returns 0, or
 * TIDE_EPIPELINE with a message in *err (file:line of the problem). */
int tide_engine_load_file(tide_engine_t *eng, const char *path, char **err);
int tide_engine_load_string(tide_engine_t *eng, const char *source,
                            const char *chunkname, char **err);

/* Submits one JSON input. id may be NULL (one is generated); *out_id gets
 * the job's id. Returns 0, TIDE_EVALUE (input is not JSON), TIDE_EEXIST
 * (duplicate id) or TIDE_EINVAL (no pipeline loaded), with *err set. */
int tide_engine_submit(tide_engine_t *eng, const char *id,
                       const char *json_input, char **out_id, char **err);

/* The job's status ("pending", "running", "waiting", "done", "failed",
 * "cancelled") in *status. Returns 0 or TIDE_ENOENT. */
int tide_engine_status(tide_engine_t *eng, const char *id, char **status);

/* The job's result as JSON in *json: its output when it returns 0, its
 * error record ({"code", "task", "message", "attempts", ...}) when it
 * returns the record's (negative) code, e.g. TIDE_ETASK. Returns
 * TIDE_EAGAIN while the job runs and TIDE_ENOENT for an unknown id
 * (then *json is NULL). Never waits. */
int tide_engine_result(tide_engine_t *eng, const char *id, char **json);

/* Cancels a job. Returns 0, TIDE_ENOENT or TIDE_EINVAL (finished). */
int tide_engine_cancel(tide_engine_t *eng, const char *id);

/* Runs what is ready without blocking. Returns the number of jobs not
 * finished yet (0: idle), or a negative code on an internal error. */
int tide_engine_step(tide_engine_t *eng);
/* Runs until every submitted job finished. Returns 0 or a negative code. */
int tide_engine_run(tide_engine_t *eng);

/* For a host that waits in its own poll(2)/epoll/select: a file
 * descriptor that becomes readable when the engine has something to do
 * (I/O, a timer due, a finished sync job, a submit or cancel). The engine
 * owns it: never read or close it. Returns the fd (>= 0), or a negative
 * code (TIDE_EINVAL: the engine is closed). */
int tide_engine_fd(tide_engine_t *eng);
/* How long the host may wait on tide_engine_fd before the next
 * tide_engine_step, in milliseconds for poll(2): 0 when work is ready, -1
 * when only the fd can wake the engine, else the time to the next timer
 * (rounded up). The same contract as the Lua tide.timeout(), whose nil is
 * -1 here.
 *
 *     struct pollfd p = { tide_engine_fd(eng), POLLIN, 0 };
 *     while (tide_engine_step(eng) > 0)
 *         poll(&p, 1, tide_engine_timeout(eng));
 */
int tide_engine_timeout(tide_engine_t *eng);

/* Frees a string an engine function handed back. Accepts NULL. */
void tide_free(void *p);

/* ===== NATIVE TASKS =====
 *
 * A task declared with kind = "native", native = "path/libx.so:symbol"
 * runs `int symbol(tide_call *c)` from that library on a worker thread:
 *
 *     #include "tide.h"
 *     TIDE_EXPORT_ABI;                       (once per library)
 *     int score(tide_call *c) {
 *         size_t n;
 *         const char *in = tide_call_input_json(c, &n);
 *         ...
 *         if (bad) return tide_call_error(c, "bad input");
 *         return tide_call_output_json(c, text, len);
 *     }
 *
 * The input comes as JSON text (or as tide's binary value encoding, which
 * keeps exactly what JSON would lose); the output is set the same way. A
 * non-zero return fails the attempt with the message given to
 * tide_call_error. Strings passed in are copied; the input stays valid
 * during the call. The function may run on several threads at once. */

#define TIDE_ABI_VERSION 1

typedef struct tide_call tide_call;
typedef int (*tide_native_fn)(tide_call *c);

/* Exported by a native library; tide refuses one built for another ABI. */
#define TIDE_EXPORT_ABI const int tide_abi_version = TIDE_ABI_VERSION

/* A native library links no tide symbol: it reaches tide through the
 * function table of the call (so it loads under the tide binary, libtide
 * and the Lua module alike). Use the wrappers below. */
struct tide_call_api {
    const char *(*input_json)(tide_call *c, size_t *len);
    const void *(*input_value)(tide_call *c, size_t *len);
    int (*output_json)(tide_call *c, const char *json, size_t len);
    int (*output_value)(tide_call *c, const void *bytes, size_t len);
    int (*error)(tide_call *c, const char *message);
};

struct tide_call {
    const struct tide_call_api *api; /* the rest is tide's */
};

/* The input as JSON text (NUL-terminated; *len its length), or NULL when
 * it cannot be written as JSON (then use tide_call_input_value). */
static inline const char *tide_call_input_json(tide_call *c, size_t *len) {
    return c->api->input_json(c, len);
}
/* The input in tide's binary value encoding. */
static inline const void *tide_call_input_value(tide_call *c, size_t *len) {
    return c->api->input_value(c, len);
}
/* Sets the output from JSON text (copied). Returns 0, or -1 with the
 * failure set when the text is not JSON. */
static inline int tide_call_output_json(tide_call *c, const char *json,
                                        size_t len) {
    return c->api->output_json(c, json, len);
}
static inline int tide_call_output_value(tide_call *c, const void *bytes,
                                         size_t len) {
    return c->api->output_value(c, bytes, len);
}
/* Fails the attempt with message (copied); returns -1 for `return`. */
static inline int tide_call_error(tide_call *c, const char *message) {
    return c->api->error(c, message);
}

/* Returns the code's name ("ETASK"), or NULL for a code tide does not know.
 * The string is static. */
const char *tide_err_name(int code);
/* Returns a static description of the code. */
const char *tide_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif
