/* Tests of the C embedding API (tide.h), linked against build/libtide.a.
 * Prints TAP lines and "N passed, M failed" like the other runner. */
#include <stdio.h>
#include <string.h>

#include "tide.h"

static int passed, failed, num;

#define CHECK(name, cond)                                                \
    do {                                                                 \
        num++;                                                           \
        if (cond) {                                                      \
            passed++;                                                    \
            printf("ok %d - embed.%s\n", num, name);                     \
        } else {                                                         \
            failed++;                                                    \
            printf("not ok %d - embed.%s (line %d)\n", num, name, __LINE__); \
        }                                                                \
    } while (0)

static const char *PIPE =
    "local tide = require 'tide'\n"
    "local p = tide.pipeline 'api'\n"
    "p:task('double', function(x)\n"
    "  if x == 'boom' then error('boom!') end\n"
    "  if x == 'slow' then tide.sleep(10) end\n"
    "  return x * 2 end)\n"
    "return p\n";

int main(void) {
    char *err = NULL, *id = NULL, *json = NULL, *st = NULL;
    tide_engine_t *eng = tide_engine_new(NULL);
    CHECK("new", eng != NULL);

    int rc = tide_engine_submit(eng, NULL, "1", &id, &err);
    CHECK("submit before load is EINVAL", rc == TIDE_EINVAL && err &&
                                              strstr(err, "no pipeline"));
    tide_free(err);
    err = NULL;

    rc = tide_engine_load_string(eng, "return 42", "bad.lua", &err);
    CHECK("load_string rejects a chunk without a pipeline",
          rc == TIDE_EPIPELINE && err && strstr(err, "bad.lua"));
    tide_free(err);
    err = NULL;
    rc = tide_engine_load_file(eng, "/nonexistent/p.lua", &err);
    CHECK("load_file of a missing file", rc == TIDE_EPIPELINE && err &&
                                             strstr(err, "/nonexistent/p.lua"));
    tide_free(err);
    err = NULL;
    rc = tide_engine_load_string(eng, "local p = require('tide').pipeline 'c'\n"
                                      "p:task('a', {after='b'}, print)\n"
                                      "p:task('b', {after='a'}, print)\n"
                                      "return p\n", "cyc.lua", &err);
    CHECK("load_string names a cycle", rc == TIDE_EPIPELINE && err &&
                                           strstr(err, "cycle: "));
    tide_free(err);
    err = NULL;

    rc = tide_engine_load_string(eng, PIPE, "api.lua", &err);
    CHECK("load_string", rc == 0 && err == NULL);

    rc = tide_engine_submit(eng, "j1", "21", &id, &err);
    CHECK("submit with an id", rc == 0 && id && strcmp(id, "j1") == 0);
    tide_free(id);
    rc = tide_engine_submit(eng, "j1", "1", &id, &err);
    CHECK("duplicate id is EEXIST", rc == TIDE_EEXIST && id == NULL && err);
    tide_free(err);
    err = NULL;
    rc = tide_engine_submit(eng, NULL, "{not json", &id, &err);
    CHECK("malformed input is EVALUE", rc == TIDE_EVALUE && err &&
                                           strstr(err, "not JSON"));
    tide_free(err);
    err = NULL;
    tide_engine_submit(eng, "boom", "\"boom\"", &id, &err);
    tide_free(id);
    tide_engine_submit(eng, "slow", "\"slow\"", &id, &err);
    tide_free(id);

    rc = tide_engine_result(eng, "j1", &json);
    CHECK("result before running is EAGAIN", rc == TIDE_EAGAIN && json == NULL);
    rc = tide_engine_status(eng, "j1", &st);
    CHECK("status while running", rc == 0 && st && strcmp(st, "running") == 0);
    tide_free(st);

    int live = tide_engine_step(eng);
    CHECK("step runs without blocking and leaves the slow job", live == 1);
    rc = tide_engine_result(eng, "j1", &json);
    CHECK("result of a done job", rc == 0 && json && strcmp(json, "42") == 0);
    tide_free(json);
    rc = tide_engine_result(eng, "boom", &json);
    CHECK("result of a failed job is its record", rc == TIDE_ETASK && json &&
          strstr(json, "\"code\":\"ETASK\"") && strstr(json, "boom!"));
    tide_free(json);
    rc = tide_engine_result(eng, "nope", &json);
    CHECK("unknown id is ENOENT", rc == TIDE_ENOENT && json == NULL);
    rc = tide_engine_status(eng, "nope", &st);
    CHECK("status of an unknown id is ENOENT", rc == TIDE_ENOENT && st == NULL);

    CHECK("cancel", tide_engine_cancel(eng, "slow") == 0);
    CHECK("cancel again is EINVAL", tide_engine_cancel(eng, "slow") == TIDE_EINVAL);
    CHECK("cancel unknown is ENOENT", tide_engine_cancel(eng, "zz") == TIDE_ENOENT);
    rc = tide_engine_result(eng, "slow", &json);
    CHECK("a cancelled job's result is ECANCELED", rc == TIDE_ECANCELED && json);
    tide_free(json);
    CHECK("run returns when nothing is left", tide_engine_run(eng) == 0);

    /* A job left running when the engine is freed is cancelled. */
    tide_engine_submit(eng, "left", "\"slow\"", &id, &err);
    tide_free(id);
    tide_engine_step(eng);
    tide_engine_free(eng);
    CHECK("free with a job still running", 1);
    tide_engine_free(NULL);

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
