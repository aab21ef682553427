#!/bin/sh
# The core (src/*.c, src/*.h) must not include lua.h: all C <-> Lua glue
# lives in src/lua/, so that the core builds and is tested without a Lua
# state (docs/architecture.md).
set -eu
bad=$(grep -lE '#include *[<"](lua|lauxlib|lualib|luajit)\.h' src/*.c src/*.h 2>/dev/null | grep -v '^src/main.c$' || true)
if [ -n "$bad" ]; then
    echo "check-layering: core files include Lua headers: $bad" >&2
    exit 1
fi
echo "check-layering: ok"
