/* Error names and assertion failure reporting. */
#include "internal.h"

const char *tide_err_name(int code) {
    switch (code) {
#define XX(name, val, msg) case val: return #name;
        TIDE_ERRNO_MAP(XX)
#undef XX
    }
    return NULL;
}

const char *tide_strerror(int code) {
    switch (code) {
#define XX(name, val, msg) case val: return msg;
        TIDE_ERRNO_MAP(XX)
#undef XX
    }
    return "unknown error";
}

void tide__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "tide: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}
