/* Declarations shared by the C <-> Lua glue files (src/lua/). */
#ifndef TIDE_LGLUE_H
#define TIDE_LGLUE_H

#include <lauxlib.h>
#include <lua.h>

#include "../internal.h"

/* Registers metatable `name` whose __index holds methods (NULL-terminated;
 * may be NULL) and whose __gc is gc (may be NULL). Leaves the stack as it
 * was. */
void tide__lua_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                        lua_CFunction gc);

/* Each adds its functions to the table on top of the stack. */
void tide__lua_open_engine(lua_State *L);
void tide__lua_open_graph(lua_State *L);
void tide__lua_open_io(lua_State *L);
void tide__lua_open_file(lua_State *L);
void tide__lua_open_journal(lua_State *L);

tide__graph *tide__lua_checkgraph(lua_State *L, int idx);
uv_loop_t *tide__lua_body_loop(lua_State *L, const char *fname);
int tide__lua_park_op(lua_State *L, const char *fname, void *op,
                      void (*cancel)(void *), uint64_t (*started)(void *),
                      double *handle);
int tide__lua_wake(uv_loop_t *loop, double handle);
void tide__lua_open_exec(lua_State *L);
/* Subprocess records (lexec.c) on an engine's loop: the engine keeps the
 * list head; closing the engine ends their process groups (SIGTERM, one
 * short grace for all, SIGKILL) and reaps them before closing handles. */
struct lexec;
struct lexec **tide__lua_exec_list(uv_loop_t *loop);
void tide__lua_exec_end_all(struct lexec *list);
void tide__lua_open_marshal(lua_State *L);
void tide__lua_open_pool(lua_State *L);
void tide__lua_open_native(lua_State *L);
void tide__lua_open_http(lua_State *L);
void tide__lua_open_mem(lua_State *L);
/* Per-state memory limits (lmem.c). */
void tide__lua_mem_limit(lua_State *L, size_t limit);
size_t tide__lua_mem_get(lua_State *L);
int tide__lua_mem_tripped(lua_State *L);
void tide__lua_mem_rearm(lua_State *L);
void tide__lua_mem_relieve(lua_State *L);
void tide__native_run(lua_State *L, tide__job *j, tide_native_fn fn);
/* The status a worker sets on a job (pool_result turns it into a code). */
enum { TIDE__JOB_OK = 0, TIDE__JOB_ETASK, TIDE__JOB_EVALUE,
       TIDE__JOB_ETIMEDOUT, TIDE__JOB_ENOMEM };
/* 1 on tide's worker threads (their Lua states run sync tasks). */
extern _Thread_local int tide__lua_in_worker;
int tide__marshal_encode(lua_State *L, int idx, char **out, size_t *outlen,
                         char *err, size_t errlen);
int tide__marshal_decode(lua_State *L, const char *p, size_t n, char *err,
                         size_t errlen);
uv_loop_t *tide__lua_engine_loop(lua_State *L, int idx);

/* Every uv handle the glue opens on an engine's loop points its data at
 * one of these, so the engine can close what is left when it closes. */
typedef struct lio_base {
    uv_close_cb close_cb;
    /* Optional: runs before the engine closes the handle (the pool joins
     * its threads, which may still signal the handle). */
    void (*before_close)(struct lio_base *base);
} lio_base;

/* Calls the function that sits on L's stack below its nargs arguments,
 * with a traceback handler, and pops both; on error prints "tide: error
 * in <what>: <message and traceback>" to stderr and returns non-zero.
 * Never raises: it is for hooks called from libuv callbacks, where an
 * error has no Lua caller to go to. */
int tide__lua_pcall_hook(lua_State *L, int nargs, const char *what);

/* The bundled Lua modules, for the CLI (lbundle.c). */
void tide__lua_preload_bundle(lua_State *L);

int luaopen_tide_core(lua_State *L);

/* Makes SIGINT set the flag core.sigint_take() reads (for the REPL). */
int tide__lua_sigint_install(void);

#endif
