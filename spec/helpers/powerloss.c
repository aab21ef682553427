/* A power-loss simulator for the journal specs, loaded with LD_PRELOAD.
 *
 * For every file opened under $TIDE_POWERLOSS_DIR, it keeps a shadow copy
 * (the file's name with ".durable" added) that holds only what a power
 * loss would leave: the file's content at its last fsync/fdatasync. Writes
 * reach the real file at once (the process reads them back) and are noted
 * as dirty ranges; a sync copies the dirty ranges, and a truncation, into
 * the shadow. After the process is killed, the spec puts each shadow in
 * place of its file: what was written but never synced is gone, as after
 * a power cut. Directory entries are taken as durable (a file created and
 * never synced comes back empty, not missing; one unlinked or renamed is
 * gone or renamed for good, its copy too), and mmap'd files (SQLite's -shm
 * index, rebuilt on recovery) are not followed.
 *
 * Not part of tide: built by spec/e2e/journal_spec.lua with cc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAXFD 1024
#define MAXRANGES 4096

typedef struct {
    int on;
    int rfd; /* the same file opened for reading: fd may be write-only */
    char shadow[PATH_MAX + 16];
    off_t lo[MAXRANGES], hi[MAXRANGES];
    int n;
    off_t truncated; /* -1, or the length a truncation set */
} tracked;

static tracked fds[MAXFD];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_close)(int);
static int (*real_open)(const char *, int, ...);

static void init(void) {
    if (real_write)
        return;
    real_open = dlsym(RTLD_NEXT, "open");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_close = dlsym(RTLD_NEXT, "close");
}

/* Copies n bytes at off from fd to the shadow file. */
static void copy_range(int fd, int sfd, off_t off, off_t n) {
    char buf[65536];
    while (n > 0) {
        ssize_t k = pread(fd, buf, n > (off_t)sizeof buf ? sizeof buf : (size_t)n, off);
        if (k <= 0)
            break;
        if (real_pwrite64(sfd, buf, (size_t)k, off) != k)
            break;
        off += k;
        n -= k;
    }
}

/* Starts following fd when its path is under the directory. */
static void track(int fd) {
    const char *dir = getenv("TIDE_POWERLOSS_DIR");
    char link[64], path[PATH_MAX];
    if (dir == NULL || fd < 0 || fd >= MAXFD)
        return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 16);
    if (n <= 0)
        return;
    path[n] = '\0';
    size_t dl = strlen(dir);
    if (strncmp(path, dir, dl) != 0 || strstr(path, ".durable") ||
        strstr(path, "-shm"))
        return;
    pthread_mutex_lock(&mu);
    tracked *t = &fds[fd];
    memset(t, 0, sizeof *t);
    t->on = 1;
    t->truncated = -1;
    t->rfd = real_open(link, O_RDONLY);
    snprintf(t->shadow, sizeof t->shadow, "%s.durable", path);
    if (access(t->shadow, F_OK) != 0) {
        /* First sight: what is on disk now counts as durable. */
        int sfd = real_open(t->shadow, O_WRONLY | O_CREAT, 0644);
        struct stat st;
        if (sfd >= 0 && fstat(fd, &st) == 0)
            copy_range(t->rfd, sfd, 0, st.st_size);
        if (sfd >= 0)
            real_close(sfd);
    }
    pthread_mutex_unlock(&mu);
}

static void dirty(int fd, off_t off, ssize_t n) {
    if (fd < 0 || fd >= MAXFD || n <= 0)
        return;
    pthread_mutex_lock(&mu);
    tracked *t = &fds[fd];
    if (t->on) {
        if (t->n == MAXRANGES) { /* merge everything into one range */
            off_t lo = t->lo[0], hi = t->hi[0];
            for (int i = 1; i < t->n; i++) {
                if (t->lo[i] < lo)
                    lo = t->lo[i];
                if (t->hi[i] > hi)
                    hi = t->hi[i];
            }
            t->lo[0] = lo;
            t->hi[0] = hi;
            t->n = 1;
        }
        t->lo[t->n] = off;
        t->hi[t->n] = off + n;
        t->n++;
    }
    pthread_mutex_unlock(&mu);
}

static void synced(int fd) {
    if (fd < 0 || fd >= MAXFD)
        return;
    pthread_mutex_lock(&mu);
    tracked *t = &fds[fd];
    if (t->on) {
        int sfd = real_open(t->shadow, O_WRONLY | O_CREAT, 0644);
        if (sfd >= 0) {
            if (t->truncated >= 0)
                real_ftruncate64(sfd, t->truncated);
            for (int i = 0; i < t->n; i++)
                copy_range(t->rfd, sfd, t->lo[i], t->hi[i] - t->lo[i]);
            struct stat st;
            if (fstat(fd, &st) == 0)
                real_ftruncate64(sfd, st.st_size);
            real_close(sfd);
        }
        t->n = 0;
        t->truncated = -1;
    }
    pthread_mutex_unlock(&mu);
}

int open(const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    int fd = real_open(path, flags, mode);
    track(fd);
    return fd;
}

int open64(const char *path, int flags, ...) {
    init();
    static int (*real_open64)(const char *, int, ...);
    if (!real_open64)
        real_open64 = dlsym(RTLD_NEXT, "open64");
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    int fd = real_open64(path, flags, mode);
    track(fd);
    return fd;
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    off_t off = lseek(fd, 0, SEEK_CUR);
    int append = fd >= 0 && (fcntl(fd, F_GETFL) & O_APPEND);
    if (append)
        off = lseek(fd, 0, SEEK_END);
    ssize_t k = real_write(fd, buf, n);
    if (off >= 0)
        dirty(fd, off, k);
    return k;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    init();
    ssize_t k = real_pwrite64(fd, buf, n, off);
    dirty(fd, off, k);
    return k;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    return pwrite64(fd, buf, n, off);
}

int ftruncate64(int fd, off64_t len) {
    init();
    int rc = real_ftruncate64(fd, len);
    if (rc == 0 && fd >= 0 && fd < MAXFD) {
        pthread_mutex_lock(&mu);
        if (fds[fd].on)
            fds[fd].truncated = len;
        pthread_mutex_unlock(&mu);
    }
    return rc;
}

int ftruncate(int fd, off_t len) {
    return ftruncate64(fd, len);
}

int fsync(int fd) {
    init();
    int rc = real_fsync(fd);
    if (rc == 0)
        synced(fd);
    return rc;
}

int fdatasync(int fd) {
    init();
    int rc = real_fdatasync(fd);
    if (rc == 0)
        synced(fd);
    return rc;
}

/* The copy of a file under the directory, or NULL. */
static const char *shadow_of(const char *path, char *out, size_t len) {
    const char *dir = getenv("TIDE_POWERLOSS_DIR");
    char abs[PATH_MAX];
    if (dir == NULL || path == NULL)
        return NULL;
    if (path[0] != '/') {
        if (getcwd(abs, sizeof abs) == NULL)
            return NULL;
        snprintf(abs + strlen(abs), sizeof abs - strlen(abs), "/%s", path);
        path = abs;
    }
    if (strncmp(path, dir, strlen(dir)) != 0)
        return NULL;
    snprintf(out, len, "%s.durable", path);
    return out;
}

int unlink(const char *path) {
    static int (*real_unlink)(const char *);
    if (!real_unlink)
        real_unlink = dlsym(RTLD_NEXT, "unlink");
    char sh[PATH_MAX + 16];
    if (shadow_of(path, sh, sizeof sh))
        real_unlink(sh);
    return real_unlink(path);
}

int rename(const char *from, const char *to) {
    static int (*real_rename)(const char *, const char *);
    if (!real_rename)
        real_rename = dlsym(RTLD_NEXT, "rename");
    char a[PATH_MAX + 16], b[PATH_MAX + 16];
    if (shadow_of(from, a, sizeof a) && shadow_of(to, b, sizeof b))
        real_rename(a, b);
    return real_rename(from, to);
}

int close(int fd) {
    init();
    if (fd >= 0 && fd < MAXFD) {
        pthread_mutex_lock(&mu);
        if (fds[fd].on && fds[fd].rfd >= 0)
            real_close(fds[fd].rfd);
        fds[fd].on = 0;
        pthread_mutex_unlock(&mu);
    }
    return real_close(fd);
}
