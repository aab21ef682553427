/* Result files: a line writer that never tears a line.
 *
 * DESIGN
 *
 * `tide run` promises that every result is one whole line in one file.
 * stdio cannot keep that promise: it writes its buffer whenever the buffer
 * fills, so a process killed between two write(2) calls leaves half a line
 * behind, and errors such as ENOSPC surface at some later fwrite or never.
 * A writer here gathers whole lines in its own buffer and hands them to
 * the kernel with one write(2) call per flush, so a crash can only lose
 * whole lines that were never written, and every failure of write, flush
 * or close is returned to the caller with the file's name.
 *
 * A short write (a full disk) can still leave part of a line in a regular
 * file: the writer then cuts the file back to the end of its last whole
 * line, so what stays on disk is whole lines only. Opening in "append"
 * mode cuts a torn tail left by an earlier crash the same way, before the
 * first line is added. The writer knows how many bytes of whole lines the
 * file holds (`committed`), which is what a journal records and a resume
 * truncates back to.
 *
 * A writer on an fd it did not open (stdout) never closes or truncates
 * it. Such an fd may be non-blocking (shared with a stdin that libuv
 * polls), so EAGAIN waits in poll(2) for room: results are never dropped
 * for want of it.
 *
 * Ownership: the writer is a full userdata; its buffer and name are
 * malloc'd and freed by close() or __gc, whichever comes first. Nothing
 * malloc'd is live across a call that can raise: arguments are checked
 * before the buffer grows. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"
#include "ljson.h"

#define LFILE_MT "tide.writer"

/* A flush is forced once this many bytes wait, which bounds the memory
 * of a writer between two ticks of the caller's flush timer. */
#define LFILE_AUTOFLUSH (256 * 1024)

typedef struct {
    int fd;
    int own;    /* opened here: closed by close() and __gc */
    int closed; /* close() ran: the fd and buffer are gone */
    int err;    /* the first errno that stopped writing, or 0 */
    char *name; /* for messages */
    char *buf;
    size_t len, cap;
    uint64_t committed; /* bytes of whole lines in the file */
    uint64_t lines;     /* lines this writer wrote */
} lfile_writer;

static lfile_writer *lfile_check(lua_State *L) {
    lfile_writer *w = luaL_checkudata(L, 1, LFILE_MT);
    if (w->closed)
        luaL_error(L, "writer %s: already closed", w->name ? w->name : "?");
    return w;
}

/* Pushes nil and "name: strerror(err)"; returns 2. */
static int lfile_fail(lua_State *L, const lfile_writer *w, int err) {
    return tide__lua_fail(L, 0, "%s: %s", w->name, strerror(err));
}

/* Waits until fd can take more bytes; for non-blocking fds. */
static void lfile_wait_writable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
}

/* Writes the buffer with as few write(2) calls as the kernel allows.
 * Returns 0, or an errno; on error the buffer is dropped and, for a file
 * of its own, the writer cuts the file back to its last whole line. */
static int lfile_flush(lfile_writer *w) {
    /* Nothing waits: return before the count below, which would hand
     * memchr the NULL buffer of a writer that never had a line. */
    if (w->len == 0)
        return w->err;
    size_t off = 0;
    while (off < w->len) {
        ssize_t n = write(w->fd, w->buf + off, w->len - off);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            lfile_wait_writable(w->fd);
            continue;
        }
        w->err = n < 0 ? errno : EIO;
        break;
    }
    /* Count what reached the file, up to its last newline. */
    size_t whole = 0;
    for (const char *p = w->buf, *end = w->buf + off;
         (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++) {
        w->lines++;
        whole = (size_t)(p - w->buf) + 1;
    }
    if (w->err && off > whole && w->own)
        (void)!ftruncate(w->fd, (off_t)(w->committed + whole));
    w->committed += whole;
    w->len = 0;
    return w->err;
}

/* Cuts a torn tail (bytes after the file's last newline) off an fd opened
 * for appending. Returns the number of bytes cut, or -errno. */
static int64_t lfile_cut_torn(int fd, uint64_t *size) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size == 0) {
        *size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
        return 0;
    }
    char block[65536];
    off_t end = st.st_size;
    while (end > 0) {
        off_t start = end > (off_t)sizeof(block) ? end - (off_t)sizeof(block) : 0;
        ssize_t n = pread(fd, block, (size_t)(end - start), start);
        if (n < 0)
            return -errno;
        for (ssize_t i = n - 1; i >= 0; i--) {
            if (block[i] == '\n') {
                off_t keep = start + i + 1;
                if (keep != st.st_size && ftruncate(fd, keep) != 0)
                    return -errno;
                *size = (uint64_t)keep;
                return (int64_t)(st.st_size - keep);
            }
        }
        end = start;
    }
    if (ftruncate(fd, 0) != 0)
        return -errno;
    *size = 0;
    return (int64_t)st.st_size;
}

static lfile_writer *lfile_new(lua_State *L, int fd, int own, const char *name) {
    lfile_writer *w = lua_newuserdata(L, sizeof(*w));
    memset(w, 0, sizeof(*w));
    w->fd = fd;
    w->own = own;
    luaL_getmetatable(L, LFILE_MT);
    lua_setmetatable(L, -2);
    w->name = tide__xstrdup(name);
    return w;
}

/* open(path, mode) -> writer, cut | nil, msg, name
 * mode "truncate" empties the file; "append" keeps it and cuts a torn tail
 * first (`cut` is the number of bytes removed). The file is created when
 * missing. */
static int l_open(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    const char *mode = luaL_checkstring(L, 2);
    int flags = O_CREAT | O_CLOEXEC;
    if (strcmp(mode, "truncate") == 0)
        flags |= O_WRONLY | O_TRUNC;
    else if (strcmp(mode, "append") == 0)
        flags |= O_RDWR | O_APPEND; /* the tail is read to find a torn line */
    else
        return luaL_argerror(L, 2, "mode must be 'truncate' or 'append'");
    int fd = open(path, flags, 0666);
    if (fd < 0) {
        int e = errno;
        return tide__lua_fail(L, e, "%s: %s", path, strerror(e));
    }
    uint64_t size = 0;
    int64_t cut = 0;
    if (flags & O_APPEND)
        cut = lfile_cut_torn(fd, &size);
    if (cut < 0) {
        close(fd);
        return tide__lua_fail(L, (int)-cut, "%s: %s", path,
                              strerror((int)-cut));
    }
    lfile_writer *w = lfile_new(L, fd, 1, path);
    w->committed = size;
    lua_pushnumber(L, (double)cut);
    return 2;
}

/* writer_fd(fd, name) -> writer on an fd tide did not open (stdout): it
 * is flushed but never closed or truncated. */
static int l_writer_fd(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    const char *name = luaL_checkstring(L, 2);
    lfile_new(L, fd, 0, name);
    return 1;
}

/* w:line(s1, s2, ...) -> true | nil, msg: adds s1..sn and a newline as one
 * line. The strings must not hold a newline (the caller's encoder never
 * emits one). Flushes once enough bytes wait; a failure of that flush, or
 * of an earlier one, is returned. */
static int l_line(lua_State *L) {
    lfile_writer *w = lfile_check(L);
    int n = lua_gettop(L);
    size_t total = 1;
    for (int i = 2; i <= n; i++) {
        size_t len;
        luaL_checklstring(L, i, &len);
        total += len;
    }
    if (w->err)
        return lfile_fail(L, w, w->err);
    if (w->len + total > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + total)
            cap *= 2;
        w->buf = tide__xrealloc(w->buf, cap);
        w->cap = cap;
    }
    for (int i = 2; i <= n; i++) {
        size_t len;
        const char *s = lua_tolstring(L, i, &len);
        memcpy(w->buf + w->len, s, len);
        w->len += len;
    }
    w->buf[w->len++] = '\n';
    if (w->len >= LFILE_AUTOFLUSH && lfile_flush(w) != 0)
        return lfile_fail(L, w, w->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* w:json_line(s1, ..., sk, value, tail) -> true | nil, msg[, "EVALUE"]:
 * adds s1..sk, value encoded as JSON (ljson.c), tail and a newline as one
 * line. The value is encoded straight into the write buffer: a result
 * line never becomes a Lua string (LuaJIT interns every string, which
 * costs a long run dearly: see lreader.c). When the value cannot be
 * encoded nothing is added and the third result is "EVALUE" (the message
 * is "EVALUE: ..." as json.encode gives it); a failure of the flush, or
 * of an earlier one, is returned as by line(). */
static int l_json_line(lua_State *L) {
    lfile_writer *w = lfile_check(L);
    int n = lua_gettop(L);
    if (n < 3)
        return luaL_error(L, "json_line: expected the value and the tail");
    size_t pre = 0, taillen;
    for (int i = 2; i < n - 1; i++) {
        size_t len;
        luaL_checklstring(L, i, &len);
        pre += len;
    }
    const char *tail = luaL_checklstring(L, n, &taillen);
    /* The line grows in len; w->len moves only once it is whole, so a
     * failure (or a memory error raised by the encoder) adds nothing. */
    size_t len = w->len;
    if (w->cap - len < pre) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap - len < pre)
            cap *= 2;
        w->buf = tide__xrealloc(w->buf, cap);
        w->cap = cap;
    }
    for (int i = 2; i < n - 1; i++) {
        size_t l;
        const char *s = lua_tolstring(L, i, &l);
        memcpy(w->buf + len, s, l);
        len += l;
    }
    char err[TIDE_JSON_ERRLEN];
    int rc = tide__json_encode_append(L, n - 1, &w->buf, &len, &w->cap, err,
                                      sizeof err);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", tide_err_name(rc), err);
        lua_pushstring(L, tide_err_name(rc));
        return 3;
    }
    if (w->err)
        return lfile_fail(L, w, w->err);
    if (w->cap - len < taillen + 1) {
        size_t cap = w->cap;
        while (cap - len < taillen + 1)
            cap *= 2;
        w->buf = tide__xrealloc(w->buf, cap);
        w->cap = cap;
    }
    memcpy(w->buf + len, tail, taillen);
    len += taillen;
    w->buf[len++] = '\n';
    w->len = len;
    if (w->len >= LFILE_AUTOFLUSH && lfile_flush(w) != 0)
        return lfile_fail(L, w, w->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* w:flush() -> true | nil, msg */
static int l_flush(lua_State *L) {
    lfile_writer *w = lfile_check(L);
    if (w->err || lfile_flush(w) != 0)
        return lfile_fail(L, w, w->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* Releases the buffer and, for its own fd, closes it. Returns 0 or the
 * errno of close(2). */
static int lfile_release(lfile_writer *w) {
    int rc = 0;
    if (w->own && close(w->fd) != 0)
        rc = errno;
    free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
    w->closed = 1;
    return rc;
}

/* w:close() -> true | nil, msg: flushes, then closes a file of its own.
 * A second close is harmless. */
static int l_close(lua_State *L) {
    lfile_writer *w = luaL_checkudata(L, 1, LFILE_MT);
    if (w->closed) {
        lua_pushboolean(L, 1);
        return 1;
    }
    int err = w->err ? w->err : lfile_flush(w);
    int cerr = lfile_release(w);
    if (err == 0 && cerr != 0)
        w->err = err = cerr;
    if (err)
        return lfile_fail(L, w, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* w:sync() -> true | nil, msg: what was written is on the device
 * (fdatasync) before a journal records the file's length: after a power
 * loss the file then holds at least what the journal says. */
static int l_sync(lua_State *L) {
    lfile_writer *w = lfile_check(L);
    if (w->own && fdatasync(w->fd) != 0)
        return lfile_fail(L, w, errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* w:truncate(length) -> true | nil, msg: cuts a file of its own back to
 * `length` bytes (a resume returns it to what a journal recorded); lines
 * waiting in the buffer are dropped. */
static int l_truncate(lua_State *L) {
    lfile_writer *w = lfile_check(L);
    double len = luaL_checknumber(L, 2);
    if (!w->own || len < 0)
        return luaL_error(L, "writer %s: cannot truncate it", w->name);
    w->len = 0;
    if (ftruncate(w->fd, (off_t)len) != 0)
        return lfile_fail(L, w, errno);
    w->committed = (uint64_t)len;
    lua_pushboolean(L, 1);
    return 1;
}

/* w:stats() -> committed bytes, lines written, bytes waiting */
static int l_stats(lua_State *L) {
    lfile_writer *w = luaL_checkudata(L, 1, LFILE_MT);
    lua_pushnumber(L, (double)w->committed);
    lua_pushnumber(L, (double)w->lines);
    lua_pushnumber(L, (double)w->len);
    return 3;
}

/* w:name() -> the path or name it was opened with */
static int l_name(lua_State *L) {
    lfile_writer *w = luaL_checkudata(L, 1, LFILE_MT);
    lua_pushstring(L, w->name ? w->name : "?");
    return 1;
}

static int l_gc(lua_State *L) {
    lfile_writer *w = luaL_checkudata(L, 1, LFILE_MT);
    if (!w->closed)
        lfile_release(w); /* unflushed lines go: close() is the way to keep them */
    free(w->name);
    w->name = NULL;
    return 0;
}

void tide__lua_open_file(lua_State *L) {
    static const luaL_Reg methods[] = {{"line", l_line},   {"flush", l_flush},
                                       {"json_line", l_json_line},
                                       {"close", l_close}, {"stats", l_stats},
                                       {"name", l_name},
                                       {"truncate", l_truncate},
                                       {"sync", l_sync},
                                       {NULL, NULL}};
    tide__lua_newclass(L, LFILE_MT, methods, l_gc);
    static const luaL_Reg funcs[] = {{"file_open", l_open},
                                     {"writer_fd", l_writer_fd},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
