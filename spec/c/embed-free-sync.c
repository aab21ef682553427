/* Frees engines while their sync jobs run on worker threads, then waits
 * for those threads to finish the jobs alone, so that a leak checker
 * (AddressSanitizer in make check; valgrind in spec/e2e/embed_spec.lua
 * with TIDE_VALGRIND=1) sees everything such a job held released: the
 * thread that finishes an orphaned job drops the pool's reference to it.
 * Prints "freed N engines" and exits 0. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tide.h"

static const char *PIPE =
    "local tide = require 'tide'\n"
    "local p = tide.pipeline 'busy'\n"
    "p:task('spin', { kind = 'sync' }, function(x)\n"
    "  local t = os.clock()\n"
    "  while os.clock() - t < 0.2 do end\n"
    "  return x\n"
    "end)\n"
    "return p\n";

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 3;
    for (int k = 0; k < n; k++) {
        tide_engine_t *eng = tide_engine_new(NULL);
        char *err = NULL, *id = NULL;
        if (eng == NULL ||
            tide_engine_load_string(eng, PIPE, "busy.lua", &err) != 0) {
            fprintf(stderr, "embed-free-sync: %s\n", err ? err : "no engine");
            return 1;
        }
        if (tide_engine_submit(eng, NULL, "{\"n\": 1}", &id, &err) != 0) {
            fprintf(stderr, "embed-free-sync: %s\n", err);
            return 1;
        }
        tide_free(id);
        /* Until a worker has taken the job (it spins for 0.2 s). */
        for (int i = 0; i < 5; i++) {
            tide_engine_step(eng);
            sleep_ms(10);
        }
        tide_engine_free(eng); /* the job still runs */
    }
    /* The workers finish their jobs alone, then release what they held. */
    sleep_ms(1500);
    printf("freed %d engines\n", n);
    return 0;
}
