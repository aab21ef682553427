/* libFuzzer target: tide serve's HTTP layer without a socket. A server
 * made with tide.serve(p, { listen = false }) runs the whole request path
 * (src/lua/lhttp.c's pre-scan of header blocks and trailer sections, the
 * http-parser callbacks and their limits, the dispatch, and serve.lua's
 * routes, JSON bodies, ids and long-polls) on bytes fed to it.
 *
 * An input is cut into pieces (its first byte says where), each fed in
 * turn on one connection with an engine step between them, then the
 * client half-closes. Whatever the server wrote must be a sequence of
 * whole HTTP/1.1 responses whose Content-Length is right and whose JSON
 * bodies are strict UTF-8 JSON; nothing may follow a response that says
 * Connection: close. A broken rule aborts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lglue.h"

static const char *FUZZ_SETUP =
    "local tide = require 'tide'\n"
    "local json = tide.json\n"
    "local p = tide.pipeline 'fuzz'\n"
    "p:task('work', { retry = 1 }, function(x)\n"
    "  if type(x) == 'table' and x.fail then error('failing on purpose') end\n"
    "  if type(x) == 'table' and x.sleep then tide.sleep(0.001) end\n"
    "  return x\n"
    "end)\n"
    "local server = assert(tide.serve(p, { listen = false, max_body = 65536,\n"
    "  max_results = 1000, max_pending = 200, request_timeout = 1 }))\n"
    "local ex = server.executor\n"
    "-- Checks what the server wrote: whole responses, right lengths, JSON.\n"
    "local function check(out)\n"
    "  local i, closed = 1, false\n"
    "  while i <= #out do\n"
    "    if closed then return 'bytes after a response that closes' end\n"
    "    local hend = out:find('\\r\\n\\r\\n', i, true)\n"
    "    if not hend then return 'a response without its header end' end\n"
    "    local head = out:sub(i, hend - 1)\n"
    "    local status = head:match('^HTTP/1%.1 (%d%d%d) [^\\r\\n]+\\r\\n')\n"
    "    if not status then return 'a bad status line: ' .. head:sub(1, 80) end\n"
    "    local len = tonumber(head:match('\\r\\nContent%-Length: (%d+)'))\n"
    "    if not len then return 'no Content-Length' end\n"
    "    local body = out:sub(hend + 4, hend + 3 + len)\n"
    "    if #body ~= len then return 'a body shorter than its Content-Length' end\n"
    "    local ctype = head:match('\\r\\nContent%-Type: ([^\\r]+)')\n"
    "    if ctype == 'application/json' then\n"
    "      local v, err = json.decode(body)\n"
    "      if v == nil and err then return 'a JSON body that is not JSON: ' .. body:sub(1, 200) end\n"
    "    end\n"
    "    if head:find('\\r\\nConnection: close', 1, true) then closed = true end\n"
    "    i = hend + 4 + len\n"
    "  end\n"
    "end\n"
    "return function(pieces)\n"
    "  local out, closed = server.feed(pieces[1], true)\n"
    "  local all = { out }\n"
    "  for k = 2, #pieces do\n"
    "    ex:step()\n"
    "    out, closed = server.feed(pieces[k])\n"
    "    all[#all + 1] = out\n"
    "  end\n"
    "  for _ = 1, 3 do ex:step() end\n"
    "  all[#all + 1] = (server.feed(nil))\n"
    "  local why = check(table.concat(all))\n"
    "  if why then return why end\n"
    "  if ex:stats().live > 100 then ex:cancel_all(); ex:step() end\n"
    "end\n";

typedef struct {
    const unsigned char *data;
    size_t size;
} fuzz_input;

static void fuzz_fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_http: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

/* Pushes the pieces (the first byte: how many, 1 to 4; cut evenly) and
 * calls the check. */
static int fuzz_one(lua_State *L) {
    fuzz_input *in = lua_touserdata(L, 1);
    lua_settop(L, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.http");
    size_t npieces = in->size ? (size_t)(in->data[0] % 4) + 1 : 1;
    const char *p = in->size ? (const char *)in->data + 1 : "";
    size_t n = in->size ? in->size - 1 : 0;
    lua_createtable(L, (int)npieces, 0);
    for (size_t k = 0; k < npieces; k++) {
        size_t from = n * k / npieces, to = n * (k + 1) / npieces;
        lua_pushlstring(L, p + from, to - from);
        lua_rawseti(L, -2, (int)k + 1);
    }
    lua_call(L, 1, 1);
    if (!lua_isnil(L, -1))
        fuzz_fail("a broken response", lua_tostring(L, -1));
    lua_settop(L, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
/* A state on malloc (LuaJIT's GC64 build takes custom allocators), so
 * that ASan sees Lua's memory too. LeakSanitizer is off for this target
 * (scripts/fuzz.sh): the engine's and the server's C records are held by
 * Lua userdata, and a GC64 TValue tags its pointer, which LeakSanitizer
 * cannot follow; leaks on this path are the soak's and valgrind's. */
static void *fuzz_alloc(void *ud, void *p, size_t osize, size_t nsize) {
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(p);
        return NULL;
    }
    return realloc(p, nsize);
}

static lua_State *fuzz_newstate(void) {
    lua_State *L = lua_newstate(fuzz_alloc, NULL);
    if (L == NULL) {
        fprintf(stderr, "fuzz: this LuaJIT refuses a custom allocator\n");
        abort();
    }
    return L;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    static lua_State *L;
    if (L == NULL) {
        L = fuzz_newstate();
        luaL_openlibs(L);
        lua_getglobal(L, "package");
        lua_getfield(L, -1, "preload");
        lua_pushcfunction(L, luaopen_tide_core);
        lua_setfield(L, -2, "tide.core");
        lua_pop(L, 2);
        tide__lua_preload_bundle(L);
        if (luaL_loadstring(L, FUZZ_SETUP) != 0 || lua_pcall(L, 0, 1, 0) != 0)
            fuzz_fail("setup", lua_tostring(L, -1));
        lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.http");
    }
    fuzz_input in = {data, size};
    if (lua_cpcall(L, fuzz_one, &in) != 0)
        fuzz_fail("Lua error", lua_tostring(L, -1));
    return 0;
}
