/* A C host that waits in poll(2) and runs tide inside its own loop: a
 * line-oriented stdin service. Each input line is one JSON input, submitted
 * as it arrives; the host waits on two descriptors, stdin and
 * tide_engine_fd(), for at most tide_engine_timeout() milliseconds, then
 * steps the engine and prints each result as soon as its job finished:
 *
 *   <line number> <status> <OK or error code> <output or error record>
 *
 *   (echo '"a b a"'; sleep 1; echo '"c"') |
 *       build/examples/poll-host examples/embed/wordcount.lua
 *
 * It never sleeps on its own and never spins: between two events it is
 * blocked in poll(2). It prints the number of times it woke up on stderr
 * ("poll-host: N wake-ups"). Built standalone with:
 *   cc -std=c11 -o poll-host poll-host.c $(pkg-config --cflags --libs tide)
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tide.h"

#define MAX_JOBS 1024

static char *ids[MAX_JOBS]; /* by line number - 1, until printed */

/* Prints every finished job among those still waiting. */
static int print_finished(tide_engine_t *eng, int njobs) {
    int failed = 0;
    for (int i = 0; i < njobs; i++) {
        if (ids[i] == NULL)
            continue;
        char *json = NULL, *status = NULL;
        int rc = tide_engine_result(eng, ids[i], &json);
        if (rc == TIDE_EAGAIN)
            continue; /* still running */
        tide_engine_status(eng, ids[i], &status);
        printf("%d %s %s %s\n", i + 1, status ? status : "?",
               rc == 0 ? "OK" : tide_err_name(rc), json ? json : "null");
        fflush(stdout);
        failed |= rc != 0;
        tide_free(json);
        tide_free(status);
        tide_free(ids[i]);
        ids[i] = NULL;
    }
    return failed;
}

/* Submits each complete line of buf[0..*len) and keeps the rest. */
static void submit_lines(tide_engine_t *eng, char *buf, size_t *len,
                         int *njobs, int at_end) {
    size_t start = 0;
    for (size_t i = 0; i < *len; i++) {
        if (buf[i] != '\n' && !(at_end && i + 1 == *len))
            continue;
        size_t end = buf[i] == '\n' ? i : i + 1;
        buf[end] = '\0';
        if (end > start && *njobs < MAX_JOBS) {
            char *err = NULL;
            int rc = tide_engine_submit(eng, NULL, buf + start,
                                        &ids[*njobs], &err);
            if (rc != 0) {
                printf("%d rejected %s: %s\n", *njobs + 1, tide_err_name(rc),
                       err);
                tide_free(err);
            }
            (*njobs)++;
        }
        start = i + 1;
    }
    memmove(buf, buf + start, *len - start);
    *len -= start;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PIPELINE.lua < inputs.jsonl\n", argv[0]);
        return 2;
    }
    tide_engine_t *eng = tide_engine_new(NULL);
    if (eng == NULL) {
        fprintf(stderr, "poll-host: cannot start tide\n");
        return 3;
    }
    char *err = NULL;
    if (tide_engine_load_file(eng, argv[1], &err) != 0) {
        fprintf(stderr, "poll-host: %s\n", err);
        tide_free(err);
        tide_engine_free(eng);
        return 2;
    }
    struct pollfd fds[2] = {{0, POLLIN, 0}, {tide_engine_fd(eng), POLLIN, 0}};
    char buf[65536];
    size_t len = 0;
    int njobs = 0, stdin_open = 1, live = 0, failed = 0;
    long wakeups = 0;
    while (stdin_open || live > 0) {
        /* Wait for input or for tide, never longer than tide allows. */
        int n = poll(stdin_open ? fds : fds + 1, stdin_open ? 2 : 1,
                     tide_engine_timeout(eng));
        if (n < 0 && errno != EINTR)
            break;
        wakeups++;
        if (stdin_open && (fds[0].revents & (POLLIN | POLLHUP))) {
            ssize_t got = read(0, buf + len, sizeof(buf) - 1 - len);
            if (got <= 0) {
                stdin_open = 0;
                submit_lines(eng, buf, &len, &njobs, 1);
            } else {
                len += (size_t)got;
                submit_lines(eng, buf, &len, &njobs, 0);
            }
        }
        live = tide_engine_step(eng);
        if (live < 0)
            break;
        failed |= print_finished(eng, njobs);
    }
    fprintf(stderr, "poll-host: %ld wake-ups\n", wakeups);
    tide_engine_free(eng);
    return failed ? 1 : 0;
}
