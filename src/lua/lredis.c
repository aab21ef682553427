/* tide.core's Redis client (src/redis.c) on an executor's loop.
 *
 * The userdata is a boxed pointer to a record that holds the core client
 * and two Lua hooks, each called on a private thread with a pcall (never
 * resumed): on_reply(seq, value, code, message, abandoned) once per
 * command, and on_state(up, message) when the connection comes up or
 * goes down. Lua numbers its commands (seq) and keeps what waits for each
 * (lua/tide/redis.lua); C keeps only a small record per command.
 *
 * c:call() sends a command and parks the task body that called it with
 * tide__lua_park_op; the reply is handed to on_reply first, then the body
 * is woken through tide__lua_wake, so the engine's one resume site runs
 * it again. A body dropped while it waits (a timeout, a cancel) leaves
 * its command to finish on its own: on_reply then says it was abandoned.
 *
 * Replies become Lua values: a string or status is a string, an integer
 * a number, an array a table (a nil element is false, as in Redis's own
 * Lua, so that positions hold), a nil reply nil. An error reply is a
 * failure: value nil, code "EREDIS" and the server's message.
 *
 * Ownership: the engine keeps every open client in a list and closes them
 * before it closes its handles (hiredis's poll handle is not one of the
 * glue's records). A client closed by the engine or by the GC calls no
 * hook any more. The record is freed by close (c:close, the engine or
 * __gc) once no hook of it runs. */
#include <string.h>

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

#define LR_MT "tide.redis"
#define LR_MAX_ARGS 1024

struct lredis {
    tide__redis *c;
    uv_loop_t *loop;
    tide__lua_hook on_reply, on_state;
    struct lredis **box;            /* the Lua box while it points here */
    struct lredis *next, **pprev;   /* the engine's list */
    int closed, quiet, depth;
};
typedef struct lredis lredis;

typedef struct {
    lredis *r;
    double seq;
    double att;     /* the parked attempt, 0 when none */
    int abandoned;  /* the parked body was dropped */
} lr_cmd;

/* Frees the record once it is closed and none of its hooks runs (a hook
 * that closes the client is still on its thread). */
static void lr_maybe_free(lredis *r) {
    if (!r->closed || r->depth > 0)
        return;
    tide__lua_hook_free(&r->on_reply);
    tide__lua_hook_free(&r->on_state);
    free(r);
}

static void lr_unlink(lredis *r) {
    if (r->pprev == NULL)
        return;
    *r->pprev = r->next;
    if (r->next)
        r->next->pprev = r->pprev;
    r->next = NULL;
    r->pprev = NULL;
}

/* Closes the core client; quiet: no hook is called (the engine or the GC
 * closes it). */
static void lr_close(lredis *r, int quiet) {
    if (r->closed)
        return;
    r->quiet |= quiet;
    if (r->box) {
        *r->box = NULL;
        r->box = NULL;
    }
    lr_unlink(r);
    tide__redis *c = r->c;
    r->c = NULL;
    tide__redis_close(c); /* ends what waits: lr_on_reply for each */
    r->closed = 1;
    lr_maybe_free(r);
}

static void lr_push_reply(lua_State *L, redisReply *rep, int top) {
    switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, rep->str, rep->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (double)rep->integer);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)rep->elements, 0);
        for (size_t i = 0; i < rep->elements; i++) {
            lr_push_reply(L, rep->element[i], 0);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    case REDIS_REPLY_ERROR: /* inside an array (EXEC): { err = message } */
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, rep->str, rep->len);
        lua_setfield(L, -2, "err");
        break;
    default: /* REDIS_REPLY_NIL */
        if (top)
            lua_pushnil(L);
        else
            lua_pushboolean(L, 0);
    }
}

static const char *const lr_codes[] = {"EREDIS", "ETIMEDOUT", "ECONN",
                                       "ECLOSED", "EAUTH"};

static void lr_on_reply(void *ud, struct redisReply *rep, int err,
                        const char *msg) {
    lr_cmd *cmd = ud;
    lredis *r = cmd->r;
    uv_loop_t *loop = r->loop;
    double att = cmd->att;
    if (!r->quiet) {
        r->depth++;
        lua_State *T = tide__lua_hook_push(&r->on_reply);
        lua_pushnumber(T, cmd->seq);
        if (err) {
            lua_pushnil(T);
            lua_pushstring(T, lr_codes[err]);
            lua_pushstring(T, msg);
        } else if (rep->type == REDIS_REPLY_ERROR) {
            lua_pushnil(T);
            lua_pushstring(T, lr_codes[0]);
            lua_pushlstring(T, rep->str, rep->len);
        } else {
            lr_push_reply(T, rep, 1);
            lua_pushnil(T);
            lua_pushnil(T);
        }
        lua_pushboolean(T, cmd->abandoned);
        tide__lua_pcall_hook(T, 5, "the Redis reply hook");
        r->depth--;
    }
    free(cmd);
    /* The body resumes after the hook has put the reply where it looks. */
    if (att != 0)
        tide__lua_wake(loop, att);
    lr_maybe_free(r);
}

static void lr_on_state(void *ud, int up, const char *msg) {
    lredis *r = ud;
    if (r->quiet || r->on_state.T == NULL)
        return;
    r->depth++;
    lua_State *T = tide__lua_hook_push(&r->on_state);
    lua_pushboolean(T, up);
    if (msg)
        lua_pushstring(T, msg);
    else
        lua_pushnil(T);
    tide__lua_pcall_hook(T, 2, "the Redis connection hook");
    r->depth--;
    lr_maybe_free(r);
}

static lredis *lr_check(lua_State *L) {
    lredis **box = luaL_checkudata(L, 1, LR_MT);
    if (*box == NULL)
        luaL_error(L, "the Redis client is closed");
    return *box;
}

static double lr_optms(lua_State *L, int idx, const char *field,
                       double dflt) {
    lua_getfield(L, idx, field);
    double v = lua_isnil(L, -1) ? dflt : luaL_checknumber(L, -1) * 1000.0;
    lua_pop(L, 1);
    return v;
}

/* redis_open(engine, host, port, opts, on_reply, on_state) -> client
 * opts: { connect_timeout = s, backoff_min = s, backoff_max = s, db = n,
 *         user = s, password = s } */
static int l_redis_open(lua_State *L) {
    uv_loop_t *loop = tide__lua_engine_loop(L, 1);
    const char *host = luaL_checkstring(L, 2);
    int port = (int)luaL_checkinteger(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TFUNCTION);
    if (!lua_isnoneornil(L, 6))
        luaL_checktype(L, 6, LUA_TFUNCTION);
    tide__redis_opts o = {
        .connect_timeout_ms = lr_optms(L, 4, "connect_timeout", 2000),
        .backoff_min_ms = lr_optms(L, 4, "backoff_min", 50),
        .backoff_max_ms = lr_optms(L, 4, "backoff_max", 2000),
        .db = 0,
    };
    lua_getfield(L, 4, "db");
    o.db = (int)luaL_optinteger(L, -1, 0);
    lua_pop(L, 1);
    /* The strings stay on the stack (so alive) until tide__redis_open has
     * copied them. */
    lua_getfield(L, 4, "user");
    o.user = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 4, "password");
    o.password = luaL_optstring(L, -1, NULL);
    lredis **box = lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_getmetatable(L, LR_MT);
    lua_setmetatable(L, -2);
    lredis *r = tide__xcalloc(1, sizeof(*r));
    r->loop = loop;
    tide__lua_hook_init(L, &r->on_reply, 5);
    if (!lua_isnoneornil(L, 6))
        tide__lua_hook_init(L, &r->on_state, 6);
    struct lredis **list = tide__lua_redis_list(loop);
    r->next = *list;
    if (r->next)
        r->next->pprev = &r->next;
    r->pprev = list;
    *list = r;
    r->box = box;
    *box = r;
    r->c = tide__redis_open(loop, host, port, &o, lr_on_state, r);
    return 1;
}

/* Sends the command in L's arguments from `first` on. */
static lr_cmd *lr_send(lua_State *L, lredis *r, double seq, double timeout_s,
                       int first) {
    int argc = lua_gettop(L) - first + 1;
    if (argc < 1)
        luaL_error(L, "a Redis command needs at least its name");
    if (argc > LR_MAX_ARGS)
        luaL_error(L, "a Redis command of more than %d arguments",
                   LR_MAX_ARGS);
    const char *argv[LR_MAX_ARGS];
    size_t lens[LR_MAX_ARGS];
    for (int i = 0; i < argc; i++) {
        int t = lua_type(L, first + i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            luaL_error(L, "argument %d of a Redis command is a %s, not a "
                          "string or a number", i + 1, lua_typename(L, t));
        argv[i] = lua_tolstring(L, first + i, &lens[i]);
    }
    lr_cmd *cmd = tide__xcalloc(1, sizeof(*cmd));
    cmd->r = r;
    cmd->seq = seq;
    if (tide__redis_send(r->c, argc, argv, lens, timeout_s * 1000.0,
                         lr_on_reply, cmd) != 0) {
        free(cmd);
        luaL_error(L, "the Redis command could not be formatted");
    }
    return cmd;
}

static double lr_timeout(lua_State *L, int idx) {
    double t = luaL_checknumber(L, idx);
    if (!(t > 0) || t > 1e9)
        luaL_argerror(L, idx, "expected a time limit in seconds > 0");
    return t;
}

/* c:send(seq, timeout_s, name, args...): the reply goes to on_reply. */
static int l_send(lua_State *L) {
    lredis *r = lr_check(L);
    double seq = luaL_checknumber(L, 2);
    double t = lr_timeout(L, 3);
    lr_send(L, r, seq, t, 4);
    return 0;
}

static void lr_cancel(void *op) {
    lr_cmd *cmd = op;
    cmd->att = 0;
    cmd->abandoned = 1;
}

/* c:call(seq, timeout_s, name, args...): sends and parks the calling task
 * body until on_reply has had the reply. */
static int l_call(lua_State *L) {
    lredis *r = lr_check(L);
    double seq = luaL_checknumber(L, 2);
    double t = lr_timeout(L, 3);
    if (tide__lua_body_loop(L, "redis call") != r->loop)
        return luaL_error(L, "redis call: the client belongs to another "
                             "executor than the task");
    lr_cmd *cmd = lr_send(L, r, seq, t, 4);
    return tide__lua_park_op(L, "redis call", cmd, lr_cancel, NULL,
                             &cmd->att);
}

/* c:stats() -> { sent, replies, timeouts, connects, failures, waiting, up } */
static int l_stats(lua_State *L) {
    lredis *r = lr_check(L);
    tide__redis_stats s;
    tide__redis_get_stats(r->c, &s);
    lua_createtable(L, 0, 7);
    lua_pushnumber(L, (double)s.sent);
    lua_setfield(L, -2, "sent");
    lua_pushnumber(L, (double)s.replies);
    lua_setfield(L, -2, "replies");
    lua_pushnumber(L, (double)s.timeouts);
    lua_setfield(L, -2, "timeouts");
    lua_pushnumber(L, (double)s.connects);
    lua_setfield(L, -2, "connects");
    lua_pushnumber(L, (double)s.failures);
    lua_setfield(L, -2, "failures");
    lua_pushnumber(L, s.waiting);
    lua_setfield(L, -2, "waiting");
    lua_pushboolean(L, s.up);
    lua_setfield(L, -2, "up");
    return 1;
}

/* c:close(): every command still waiting ends with ECLOSED (on_reply is
 * called for each, inside this call). A second close does nothing. */
static int l_close(lua_State *L) {
    lredis **box = luaL_checkudata(L, 1, LR_MT);
    if (*box)
        lr_close(*box, 0);
    return 0;
}

/* A client dropped without close() is closed by the GC, without hooks:
 * nothing may run Lua from a finalizer. */
static int l_gc(lua_State *L) {
    lredis **box = luaL_checkudata(L, 1, LR_MT);
    if (*box)
        lr_close(*box, 1);
    return 0;
}

void tide__lua_redis_end_all(struct lredis *list) {
    while (list) {
        struct lredis *next = list->next;
        lr_close(list, 1);
        list = next;
    }
}

void tide__lua_open_redis(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"send", l_send},   {"call", l_call}, {"stats", l_stats},
        {"close", l_close}, {NULL, NULL}};
    tide__lua_newclass(L, LR_MT, methods, l_gc);
    static const luaL_Reg funcs[] = {{"redis_open", l_redis_open},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
