/* tide: a workflow engine whose pipelines are Lua scripts (public header).
 *
 * Ownership rule for the whole API: arguments are borrowed, and returned
 * pointers are owned by the caller, except for functions named *_get or
 * *_peek (borrowed) and *_take (consume their argument). */
#ifndef TIDE_H
#define TIDE_H

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

/* Returns the code's name ("ETASK"), or NULL for a code tide does not know.
 * The string is static. */
const char *tide_err_name(int code);
/* Returns a static description of the code. */
const char *tide_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif
