/* The process and its OS as the Lua side needs them, one wrapper each.
 *
 * Clocks, terminals, files and directories (stat, mkdir_p), fds the REPL
 * and hosts poll themselves (epoll, poll, read_fd), the environment,
 * SIGINT as a flag for the REPL, and exit.
 *
 * Thin wrappers: each calls the system once or a few times and keeps
 * nothing. The one piece of state is the SIGINT flag, a sig_atomic_t the
 * signal handler sets and sigint_take() clears. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

static int l_hrtime(lua_State *L) {
    lua_pushnumber(L, (double)uv_hrtime() / 1e9);
    return 1;
}

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* mkdir_p(path) -> true | nil, msg, name: creates a directory and its
 * parents (an existing directory is fine). */
static int l_mkdir_p(lua_State *L) {
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    for (size_t i = 0; i <= len; i++) {
        if (i == len || (path[i] == '/' && i > 0)) {
            lua_pushlstring(L, path, i);
            uv_fs_t req;
            int rc = uv_fs_mkdir(NULL, &req, lua_tostring(L, -1), 0777, NULL);
            uv_fs_req_cleanup(&req);
            if (rc != 0 && rc != UV_EEXIST)
                return tide__lua_fail(L, rc, "%s: %s", lua_tostring(L, -1),
                                      uv_strerror(rc));
            lua_pop(L, 1);
        }
    }
    uv_fs_t req;
    int rc = uv_fs_stat(NULL, &req, path, NULL);
    int isdir = rc == 0 && (req.statbuf.st_mode & S_IFMT) == S_IFDIR;
    uv_fs_req_cleanup(&req);
    if (!isdir)
        return tide__lua_fail(L, ENOTDIR, "%s: not a directory", path);
    lua_pushboolean(L, 1);
    return 1;
}

/* maxrss() -> the process's peak resident set size, in bytes. */
static int l_maxrss(lua_State *L) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    lua_pushnumber(L, (double)ru.ru_maxrss * 1024.0); /* Linux: KiB */
    return 1;
}

/* epoll_create() -> fd | nil, msg: an epoll set that becomes readable when
 * any loop added to it has events (a host polls this one fd). */
static int l_epoll_create(lua_State *L) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0)
        return tide__lua_fail(L, 0, "%s", strerror(errno));
    lua_pushinteger(L, fd);
    return 1;
}

/* epoll_ctl(set, fd, add): adds (true) or removes (false) a loop's fd. */
static int l_epoll_ctl(lua_State *L) {
    int set = (int)luaL_checkinteger(L, 1), fd = (int)luaL_checkinteger(L, 2);
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    int rc = epoll_ctl(set, lua_toboolean(L, 3) ? EPOLL_CTL_ADD : EPOLL_CTL_DEL,
                       fd, &ev);
    lua_pushboolean(L, rc == 0);
    return 1;
}

/* close_fd(fd): closes a descriptor tide made (the hub's epoll set). */
static int l_close_fd(lua_State *L) {
    close((int)luaL_checkinteger(L, 1));
    return 0;
}

/* fork_gen() -> the forks this process has gone through (internal.h). */
static int l_fork_gen(lua_State *L) {
    tide__fork_watch();
    lua_pushinteger(L, (lua_Integer)tide__fork_gen());
    return 1;
}

/* hub_state() -> the host-loop hub's state of this Lua state: a table
 * anchored in the registry, made on first use with `open`, a weak-keyed
 * set of the open executors. It lives here rather than in hub.lua so that
 * a reloaded Lua layer (package.loaded cleared, require "tide" again)
 * finds the executors made before, and the fd it made. */
static int l_hub_state(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, "tide.hub");
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_newtable(L); /* open */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "open");
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "tide.hub");
    return 1;
}

/* poll(fd, timeout_ms) -> whether fd became readable (timeout -1: wait). */
static int l_poll(lua_State *L) {
    struct pollfd p = {(int)luaL_checkinteger(L, 1), POLLIN, 0};
    int rc;
    do
        rc = poll(&p, 1, (int)luaL_checkinteger(L, 2));
    while (rc < 0 && errno == EINTR);
    lua_pushboolean(L, rc > 0);
    return 1;
}

/* poll2(fd_a, fd_b, timeout_ms) -> a readable, b readable; a negative fd
 * is left out. Returns false, false on timeout or when interrupted by a
 * signal (the caller checks sigint_take). */
static int l_poll2(lua_State *L) {
    struct pollfd p[2] = {{(int)luaL_checkinteger(L, 1), POLLIN, 0},
                          {(int)luaL_checkinteger(L, 2), POLLIN, 0}};
    int rc = poll(p, 2, (int)luaL_checkinteger(L, 3));
    lua_pushboolean(L, rc > 0 && (p[0].revents & (POLLIN | POLLHUP)));
    lua_pushboolean(L, rc > 0 && (p[1].revents & (POLLIN | POLLHUP)));
    return 2;
}

/* read_fd(fd) -> up to 64 KiB read from fd, or nil at its end (or on an
 * error, with the message). Call when fd is readable. */
static int l_read_fd(lua_State *L) {
    char buf[65536];
    ssize_t n;
    do
        n = read((int)luaL_checkinteger(L, 1), buf, sizeof(buf));
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return tide__lua_fail(L, 0, "%s", strerror(errno));
    if (n == 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

/* SIGINT as a flag, for the REPL's own loop: the handler only records it
 * (and interrupts poll); sigint_take() reads and clears it. */
static volatile sig_atomic_t los_sigint;

static void los_on_sigint(int sig) {
    TIDE_UNUSED(sig);
    los_sigint = 1;
}

int tide__lua_sigint_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = los_on_sigint; /* no SA_RESTART: poll returns EINTR */
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGINT, &sa, NULL);
}

static int l_sigint_install(lua_State *L) {
    lua_pushboolean(L, tide__lua_sigint_install() == 0);
    return 1;
}

static int l_sigint_take(lua_State *L) {
    lua_pushboolean(L, los_sigint != 0);
    los_sigint = 0;
    return 1;
}

static int l_getpid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

/* environ() -> { "NAME=value", ... } */
static int l_environ(lua_State *L) {
    extern char **environ;
    lua_newtable(L);
    for (int i = 0; environ && environ[i]; i++) {
        lua_pushstring(L, environ[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* exit(code): flushes stdio and ends the process at once. */
static int l_exit(lua_State *L) {
    int code = (int)luaL_optinteger(L, 1, 0);
    fflush(NULL);
    _exit(code);
    return 0;
}

/* stat(path) -> { kind = "file"|"dir"|"other", size, dev, ino }
 *             | nil, msg, name */
static int l_stat(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        return tide__lua_fail(L, e, "%s: %s", path, strerror(e));
    }
    lua_createtable(L, 0, 4);
    lua_pushstring(L, S_ISREG(st.st_mode)   ? "file"
                      : S_ISDIR(st.st_mode) ? "dir"
                                            : "other");
    lua_setfield(L, -2, "kind");
    lua_pushnumber(L, (double)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (double)st.st_dev);
    lua_setfield(L, -2, "dev");
    lua_pushnumber(L, (double)st.st_ino);
    lua_setfield(L, -2, "ino");
    return 1;
}

/* stdfd_closed() -> stdin, stdout, stderr: whether each was closed when
 * the process started (it is on /dev/null now). */
static int l_stdfd_closed(lua_State *L) {
    int m = tide__stdfd_closed();
    lua_pushboolean(L, m & 1);
    lua_pushboolean(L, m & 2);
    lua_pushboolean(L, m & 4);
    return 3;
}

void tide__lua_open_os(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"hrtime", l_hrtime}, {"isatty", l_isatty}, {"exit", l_exit},
        {"mkdir_p", l_mkdir_p}, {"stat", l_stat}, {"maxrss", l_maxrss},
        {"epoll_create", l_epoll_create}, {"epoll_ctl", l_epoll_ctl},
        {"poll", l_poll}, {"poll2", l_poll2}, {"read_fd", l_read_fd},
        {"close_fd", l_close_fd}, {"fork_gen", l_fork_gen},
        {"hub_state", l_hub_state},
        {"getpid", l_getpid}, {"environ", l_environ},
        {"stdfd_closed", l_stdfd_closed},
        {"sigint_install", l_sigint_install}, {"sigint_take", l_sigint_take},
        {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
