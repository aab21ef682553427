#!/bin/sh
# Installs the Debian 12 packages tide needs to build, test and bench, if
# any are missing. Non-interactive. Without root and without sudo it
# prints the exact command to run and exits 2.
#   luajit2 libluajit2-5.1-dev  the Lua VM tide embeds: OpenResty's LuaJIT
#                             (2.1-20230119), which replaces Debian's luajit
#                             and libluajit-5.1-dev (the packages conflict):
#                             nginx's Lua module runs on it, and tide.core.so
#                             must load in the LuaJIT of its host; busted,
#                             lua-luv, wrk and neovim run on either
#                             (docs/embedding.md, "Which LuaJIT")
#   nginx libnginx-mod-http-lua the nginx host of spec/e2e/ngx_spec.lua;
#                             nginx alone (the binary nginx-light installs
#                             too) is the fixed-body reference of the serve
#                             line of make bench
#   neovim                    the Neovim host of spec/e2e/nvim_spec.lua
#   valgrind                  the C hosts' leak check with TIDE_VALGRIND=1
#                             (spec/e2e/embed_spec.lua); callgrind counts;
#                             make valgrind
#   libuv1-dev                the event loop
#   libyajl-dev               the JSON parser/generator under tide.json
#   lua-cjson                 available to task code (require "cjson")
#   lua-busted lua-check      specs and lint
#   lua-socket                the HTTP specs' raw client (exact bytes, half-close, reset)
#   lua-luv                   the W5 reference in make bench
#   graphviz                  the specs check that `tide graph` DOT parses
#   luarocks                  the specs build tide-scm-1.rockspec
#   libedit-dev               line editing in tide repl (BSD; not readline, GPL-3)
#   libhttp-parser-dev curl   tide serve's HTTP parser; the serve specs' client
#   chromium chromium-driver  the dashboard spec drives headless Chromium
#   wrk                       the serve line of make bench, and make soak
#   jq                        the reference of the JSONL line of make bench
#   libsqlite3-dev sqlite3    the journal (tide run --journal); the specs read it
#   libxxhash-dev             xxHash3-128, the hash of pipeline files
#   libhiredis-dev            the Redis client of tide worker (with its libuv adapter)
#   redis-server              the distributed specs start a real one
#   tzdata                    named time zones of p:schedule (tz = "Europe/Berlin")
#   clang libclang-rt-14-dev  make fuzz: libFuzzer targets (with ASan/UBSan)
#   pkg-config build-essential
set -eu
PKGS="luajit2 libluajit2-5.1-dev nginx libnginx-mod-http-lua neovim valgrind libuv1-dev libyajl-dev lua-cjson lua-busted lua-check lua-socket lua-luv graphviz luarocks libedit-dev libhttp-parser-dev curl chromium chromium-driver wrk jq libsqlite3-dev sqlite3 libxxhash-dev libhiredis-dev redis-server tzdata clang libclang-rt-14-dev pkg-config build-essential"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$missing"
if [ "$(id -u)" = 0 ]; then
    sh -c "$cmd"
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo sh -c "$cmd"
else
    echo "tide: missing packages:$missing" >&2
    echo "run as root: $cmd" >&2
    exit 2
fi
