/* Runs each C test in a child process, with a timeout, like libuv's
 * test/runner.c. Prints a closing line "N passed, M failed". */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "task.h"
#include "test-list.h"

#define XX(name) TEST_DECLARE(name)
TEST_LIST(XX)
#undef XX

static const struct {
    const char *name;
    int (*fn)(void);
} tests[] = {
#define XX(name) {#name, run_test_##name},
    TEST_LIST(XX)
#undef XX
    {NULL, NULL}};

int main(int argc, char **argv) {
    int passed = 0, failed = 0;
    for (int i = 0; tests[i].name; i++) {
        if (argc > 1 && strcmp(argv[1], tests[i].name) != 0)
            continue;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10);
            _exit(tests[i].fn() == 0 ? 0 : 1);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        printf("%s %d - c.%s%s\n", ok ? "ok" : "not ok", i + 1, tests[i].name,
               WIFSIGNALED(st) ? " (killed by a signal)" : "");
        if (ok)
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
