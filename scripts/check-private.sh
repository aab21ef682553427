#!/bin/sh
# Private fields stay private: a field or method whose name starts with an
# underscore belongs to the module whose objects carry it. Outside the
# executor's own modules (executor, runner, results, hub, bridge), Lua code
# may use such names only on `self`, on its own module table `M`, in the
# definition of its own methods, and (pipeline.lua) on the pipelines it
# makes; `ex._live` or `ex:_submit(...)` anywhere else fails `make lint`.
set -eu
cd "$(dirname "$0")/.."
own='^lua/tide/(executor|runner|results|hub|bridge)\.lua:'
hits=$(grep -rnE '[]A-Za-z0-9_)]+[.:]_[A-Za-z][A-Za-z0-9_]*' lua spec bench examples --include='*.lua' \
    | grep -vE "$own" \
    | grep -vE '^[^:]+:[0-9]+: *(local )?function [A-Za-z0-9_.]+[.:]_' \
    | grep -vE '(^|[^A-Za-z0-9_])(self|M)[.:]_[A-Za-z]' \
    | grep -vE '^lua/tide/pipeline\.lua:[0-9]+:.*[^A-Za-z0-9_]p\._[a-z]' \
    | grep -vE '(^|[^A-Za-z0-9_])_G\.|\._VERSION' || true)
if [ -n "$hits" ]; then
    echo "check-private: underscore fields used outside their module:" >&2
    echo "$hits" >&2
    exit 1
fi
echo "check-private: ok"
