/* Standard fds: makes sure 0, 1 and 2 are open before anything else opens
 * a file.
 *
 * A program started with one of them closed (daemons, cron, some service
 * units) hands that number to the next open(): libuv's epoll fd became fd
 * 1, results were written into it, and closing the loop then aborted. Each
 * closed one is opened on /dev/null instead, and remembered, so that
 * `tide run` can refuse to write its results to a stdout that was closed
 * rather than lose them. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "internal.h"

static int stdfd_closed; /* bit n: fd n was closed at start */

int tide__stdfd_reserve(void) {
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        int nfd = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (nfd < 0)
            continue;
        if (nfd != fd) { /* a lower fd was closed too and is taken now */
            dup2(nfd, fd);
            close(nfd);
        }
        stdfd_closed |= 1 << fd;
    }
    return stdfd_closed;
}

int tide__stdfd_closed(void) {
    return stdfd_closed;
}
