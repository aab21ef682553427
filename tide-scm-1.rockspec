-- LuaRocks spec: builds tide's Lua module (tide.core, the C engine, and
-- the tide.* Lua modules) from this source tree with its Makefile.
--   luarocks make --tree /some/tree tide-scm-1.rockspec
-- Needs Debian's libluajit-5.1-dev, libuv1-dev, libyajl-dev, libsqlite3-dev
-- and libxxhash-dev; the module
-- runs under LuaJIT 2.1 (it uses the LuaJIT C API).
rockspec_format = "3.0"
package = "tide"
version = "scm-1"
source = {
    url = "git+file://./tide",
}
description = {
    summary = "A workflow engine whose pipelines are Lua scripts",
    -- The project has not chosen a license yet; this says so rather than
    -- guessing one.
    license = "none chosen yet",
    detailed = [[
tide runs DAG pipelines written in Lua on a C core (libuv loop, ready
queue, timers) embedded in LuaJIT: retries, timeouts, map/gather,
routers, limiters and batching, with per-task overhead within 2x of a
plain LuaJIT scheduler.]],
}
dependencies = {
    "lua == 5.1",
}
external_dependencies = {
    LIBUV = { header = "uv.h" },
    YAJL = { header = "yajl/yajl_parse.h" },
    SQLITE3 = { header = "sqlite3.h" },
    XXHASH = { header = "xxhash.h" },
}
build = {
    type = "make",
    build_target = "build/lib/tide/core.so",
    install_target = "install-lua",
    install_variables = {
        CMODDIR = "$(LIBDIR)",
        LUADIR = "$(LUADIR)",
    },
}
