/* A host program embedding tide through tide.h only: it loads a pipeline,
 * submits JSON inputs given on the command line, drives the engine from
 * its own loop with tide_engine_step, and prints each result.
 *
 *   build/examples/embed-host examples/embed/wordcount.lua '"a b a"' '42'
 *
 * It builds on its own with any C11 compiler (see docs/embedding.md):
 *   cc -std=c11 -o host host.c $(pkg-config --cflags --libs tide)
 */
/* nanosleep is POSIX, not C11: ask for it. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tide.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PIPELINE.lua [JSON-INPUT ...]\n", argv[0]);
        return 2;
    }
    tide_engine_t *eng = tide_engine_new(NULL);
    if (eng == NULL) {
        fprintf(stderr, "host: cannot start tide\n");
        return 3;
    }
    char *err = NULL;
    if (tide_engine_load_file(eng, argv[1], &err) != 0) {
        fprintf(stderr, "host: %s\n", err);
        tide_free(err);
        tide_engine_free(eng);
        return 2;
    }
    int n = argc - 2, status = 0;
    char **ids = calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    for (int i = 0; i < n; i++) {
        int rc = tide_engine_submit(eng, NULL, argv[i + 2], &ids[i], &err);
        if (rc != 0) {
            printf("input %d: rejected: %s: %s\n", i + 1, tide_err_name(rc), err);
            tide_free(err);
            status = 1;
        }
    }
    /* The host's own loop: it does its work and lets tide run what is
     * ready, without blocking, until every job finished. */
    int steps = 0;
    while (tide_engine_step(eng) > 0) {
        steps++;
        struct timespec ts = {0, 1000000}; /* the host's other work */
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] == NULL)
            continue;
        char *json = NULL, *st = NULL;
        int rc = tide_engine_result(eng, ids[i], &json);
        tide_engine_status(eng, ids[i], &st);
        printf("%s %s %s %s\n", ids[i], st ? st : "?",
               rc == 0 ? "OK" : tide_err_name(rc), json ? json : "null");
        if (rc != 0)
            status = 1;
        tide_free(json);
        tide_free(st);
        tide_free(ids[i]);
    }
    char *json = NULL;
    printf("unknown %s\n", tide_err_name(tide_engine_result(eng, "nope", &json)));
    fprintf(stderr, "host: %d steps\n", steps);
    free(ids);
    tide_engine_free(eng);
    return status;
}
