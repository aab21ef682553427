/* Declarations shared by the C <-> Lua glue files (src/lua/). */
#ifndef TIDE_LGLUE_H
#define TIDE_LGLUE_H

#include <lauxlib.h>
#include <lua.h>

#include "../internal.h"

/* A glue file reaches another only through what is declared here: no
 * glue file declares another's functions or types itself. Sections go by
 * the file that defines them. */

/* ===== HELPERS (lutil.c): every glue file uses these, never its own ===== */

/* Replaces the error value on top of L with its text (what tostring()
 * makes of it, __tostring included) followed by the traceback of co from
 * `level` on. co may be L itself (a message handler) or a coroutine that
 * died in an error (L is then the thread that resumed it). */
void tide__lua_traceback(lua_State *L, lua_State *co, int level);

/* The message handler of every protected call that wants a traceback:
 * tide__lua_traceback of the caller, from the function that raised. */
int tide__lua_msgh(lua_State *L);

/* Calls the function that sits on L's stack below its nargs arguments
 * with tide__lua_msgh as the message handler. Function and arguments are
 * replaced by nres results, or by the message with its traceback; returns
 * lua_pcall's code. */
int tide__lua_pcall(lua_State *L, int nargs, int nres);

/* tide__lua_pcall with no results for hooks called from libuv callbacks,
 * where an error has no Lua caller to go to: on error prints "tide: error
 * in <what>: <message and traceback>" to stderr, pops it and returns
 * non-zero. Never raises: the message handler is the one stored in the
 * registry (tide__lua_open_util), not a closure made here. */
int tide__lua_pcall_hook(lua_State *L, int nargs, const char *what);

/* Stores the message handler in L's registry for the two above
 * (luaopen_tide_core calls it first). */
void tide__lua_open_util(lua_State *L);

/* A Lua callback that libuv callbacks call, with a private thread to call
 * it on (with tide__lua_pcall_hook, never resumed), so that it never runs
 * on a coroutine that may be suspended. The record that embeds it owns
 * the registry reference: tide__lua_hook_init takes it, and
 * tide__lua_hook_free (idempotent) drops it. */
typedef struct {
    /* The private thread, anchored by thread_ref; NULL: freed. The
     * callback is its stack's first slot (one reference for both). */
    lua_State *T;
    int thread_ref;
} tide__lua_hook;

/* Makes the function at fn_idx of L the hook's callback. May raise (a
 * memory error) before h is set, never after. */
void tide__lua_hook_init(lua_State *L, tide__lua_hook *h, int fn_idx);
void tide__lua_hook_free(tide__lua_hook *h);
/* Empties the hook's thread but for the callback, pushes a copy of the
 * callback and returns the thread: push the arguments, then
 * tide__lua_pcall_hook. */
lua_State *tide__lua_hook_push(tide__lua_hook *h);

/* Pushes the failure return of a lua_CFunction and returns its count:
 * nil, the message (fmt and its arguments as for lua_pushfstring) and the
 * name of err: for an errno (> 0) or a libuv error (< 0) its libuv name
 * ("ENOENT"), for a TIDE_E* code its name ("EVALUE"). With err 0 the name
 * is left out (nil, message: 2 values). Use as `return tide__lua_fail(...)`. */
int tide__lua_fail(lua_State *L, int err, const char *fmt, ...);

/* Registers metatable `name` whose __index holds methods (NULL-terminated;
 * may be NULL) and whose __gc is gc (may be NULL). Leaves the stack as it
 * was. */
void tide__lua_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                        lua_CFunction gc);

/* ===== OPENERS (lcore.c calls each): each adds its functions to the
 * table on top of the stack ===== */

/* Every opener registers its functions the same way: a static luaL_Reg
 * array handed to luaL_setfuncs (LuaJIT 2.1 has it), and its classes
 * through tide__lua_newclass, which does the same for the methods. */
void tide__lua_open_engine(lua_State *L);  /* lengine.c */
void tide__lua_open_graph(lua_State *L);   /* lgraph.c */
void tide__lua_open_reader(lua_State *L);  /* lreader.c */
void tide__lua_open_idset(lua_State *L);   /* lidset.c */
void tide__lua_open_handle(lua_State *L);  /* lhandle.c */
void tide__lua_open_os(lua_State *L);      /* los.c */
void tide__lua_open_file(lua_State *L);    /* lfile.c */
void tide__lua_open_journal(lua_State *L); /* ljournal.c */
void tide__lua_open_cache(lua_State *L);   /* lcache.c */
void tide__lua_open_redis(lua_State *L);   /* lredis.c */
void tide__lua_open_exec(lua_State *L);    /* lexec.c */
void tide__lua_open_marshal(lua_State *L); /* lmarshal.c */
void tide__lua_open_pool(lua_State *L);    /* lpool.c */
void tide__lua_open_native(lua_State *L);  /* lnative.c */
void tide__lua_open_http(lua_State *L);    /* lhttp.c */
void tide__lua_open_mem(lua_State *L);     /* lmem.c */

int luaopen_tide_core(lua_State *L); /* lcore.c */
/* Line editing for the REPL (ledit.c): linked into the tide binary only. */
int luaopen_tide_editline(lua_State *L);

/* ===== THE ENGINE (lengine.c) ===== */

/* Every uv handle the glue opens on an engine's loop points its data at
 * one of these, embedded in the handle's record, so that the engine can
 * close what is left when it closes. */
typedef struct tide__lua_base {
    uv_close_cb close_cb;
    /* Optional: runs before the engine closes the handle (the pool joins
     * its threads, which may still signal the handle). */
    void (*before_close)(struct tide__lua_base *base);
} tide__lua_base;

/* The loop of the engine userdata at idx (raises if it is none). */
uv_loop_t *tide__lua_engine_loop(lua_State *L, int idx);
/* Checks that L runs a task body and returns the loop of its engine.
 * Raises otherwise. */
uv_loop_t *tide__lua_body_loop(lua_State *L, const char *fname);
/* Parks the running body until tide__lua_wake(handle); see lengine.c. */
int tide__lua_park_op(lua_State *L, const char *fname, void *op,
                      void (*cancel)(void *), uint64_t (*started)(void *),
                      double *handle);
int tide__lua_wake(uv_loop_t *loop, double handle);

/* ===== GRAPHS (lgraph.c) ===== */

tide__graph *tide__lua_checkgraph(lua_State *L, int idx);

/* ===== SUBPROCESSES (lexec.c) ===== */

/* Subprocess records on an engine's loop: the engine keeps the list head
 * (tide__lua_exec_list, in lengine.c); closing the engine ends their
 * process groups (SIGTERM, one short grace for all, SIGKILL) and reaps
 * them before closing handles. */
struct lexec;
struct lexec **tide__lua_exec_list(uv_loop_t *loop);
void tide__lua_exec_end_all(struct lexec *list);

/* Redis clients (lredis.c) on an engine's loop: the engine keeps the list
 * head and closes them (quietly: no hook runs) before it closes the
 * loop's handles, because hiredis owns a poll handle that is none of the
 * glue's records. */
struct lredis;
struct lredis **tide__lua_redis_list(uv_loop_t *loop);
void tide__lua_redis_end_all(struct lredis *list);

/* ===== WORKER THREADS (lpool.c, lnative.c, lmarshal.c) ===== */

/* Per-state memory limits (lmem.c). */
void tide__lua_mem_limit(lua_State *L, size_t limit);
size_t tide__lua_mem_get(lua_State *L);
int tide__lua_mem_tripped(lua_State *L);
void tide__lua_mem_rearm(lua_State *L);
void tide__lua_mem_relieve(lua_State *L);
/* 1 on tide's worker threads (their Lua states run sync tasks). */
extern _Thread_local int tide__lua_in_worker;
/* Runs a native function on a worker (L: the worker's state) on the
 * binary input in[inlen]. Returns 0 with the binary output in *out, or
 * TIDE_ETASK (UV_ENOMEM when the worker's state ran out of its memory
 * limit) with the error text there; *out (*outlen bytes) is malloc'd and
 * the caller's either way. */
int tide__native_run(lua_State *L, tide_native_fn fn, const void *in,
                     size_t inlen, char **out, size_t *outlen);
/* The binary encoding values cross threads in. */
int tide__marshal_encode(lua_State *L, int idx, char **out, size_t *outlen,
                         char *err, size_t errlen);
int tide__marshal_decode(lua_State *L, const char *p, size_t n, char *err,
                         size_t errlen);

/* ===== THE PROCESS (los.c) ===== */

/* Makes SIGINT set the flag core.sigint_take() reads (for the REPL). */
int tide__lua_sigint_install(void);

/* ===== THE BUNDLE (build/obj/bundle.c, from scripts/gen-bundle.sh) ===== */

/* Preloads the bundled Lua modules (bytecode) into L. The tide binary
 * and libtide link it; core.so has none (its worker states find the
 * modules through package.path), so lpool.c, which is in all three, makes
 * its own reference weak and checks it for NULL. The declaration here
 * stays strong: a weak reference would not pull the bundle out of
 * libtide.a into a host that links the archive. */
void tide__lua_preload_bundle(lua_State *L);

#endif
