#!/bin/sh
# bench/serve.sh: the serve line of `make bench` (issue 6): submit-and-wait
# round trips, POST /v1/jobs?wait=5 for a trivial pipeline
# (bench/serve_pipeline.lua), driven by wrk on loopback. Prints
#
#   workload=serve impl=tide seconds=... jobs_per_s=... p50_ms=... p99_ms=... errors=0 rss_mib=... ok=1
#   ratio workload=serve jobs_per_s=... target_jobs_per_s=20000 ok=1|0
#
# ok=1 on the first line when the server answered the check request with
# the right output and wrk saw no error or non-2xx answer. One wrk thread
# and one server: two cores. With --journal, tide serve keeps a journal
# (each 2xx only once the job is on the device) and the lines say
# workload=serve-journal. Environment: BENCH_SERVE_S (seconds, default
# 5), BENCH_SERVE_C (connections, default 32).
set -eu
cd "$(dirname "$0")/.."

DUR=${BENCH_SERVE_S:-5}
CONNS=${BENCH_SERVE_C:-32}
TARGET=20000
workload=serve
if [ "${1:-}" = --journal ]; then
    workload=serve-journal
fi

if ! command -v wrk >/dev/null 2>&1; then
    echo "workload=$workload impl=tide ok=0 (wrk is not installed: apt-get install wrk)"
    exit 1
fi

tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
set -- bench/serve_pipeline.lua --listen 127.0.0.1:0 --max-results 10000
if [ "$workload" = serve-journal ]; then
    set -- "$@" --journal "$tmp/j.db"
fi
build/tide serve "$@" 2>"$tmp/err" &
pid=$!
port=
for _ in $(seq 100); do
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/err" | head -n 1)
    [ -n "$port" ] && break
    sleep 0.05
done
if [ -z "$port" ]; then
    echo "workload=$workload impl=tide ok=0 (tide serve did not start: $(cat "$tmp/err"))"
    exit 1
fi
url="http://127.0.0.1:$port/v1/jobs?wait=5"

check=$(curl -s -X POST -H 'Content-Type: application/json' -d '{"input":41}' "$url")
case "$check" in
    *'"output":42'*) ok=1 ;;
    *) ok=0 ;;
esac

# Warm-up, then the measured run.
wrk -t1 -c"$CONNS" -d1s -s bench/wrk_post.lua "$url" >/dev/null
wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s bench/wrk_post.lua "$url" >"$tmp/wrk"
rss=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")

awk -v workload="$workload" -v ok="$ok" -v dur="$DUR" -v conns="$CONNS" -v rss="$rss" -v target="$TARGET" '
    function ms(v) {
        if (v ~ /us$/) return v / 1000
        if (v ~ /ms$/) return v + 0
        if (v ~ /s$/) return v * 1000
        return v + 0
    }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /Requests\/sec:/ { rps = $2 }
    /requests in/ { n = $1 }
    /Socket errors:/ { errs += $4 + $6 + $8 + $10 } # "connect 0, read 0, ..."
    /Non-2xx or 3xx responses:/ { errs += $5 }
    END {
        if (rps == "") { print "workload=" workload " impl=tide ok=0 (no wrk summary)"; exit 1 }
        if (errs > 0) ok = 0
        printf "workload=%s impl=tide seconds=%s n=%d jobs_per_s=%.0f p50_ms=%.3f p99_ms=%.3f connections=%d errors=%d rss_mib=%s ok=%d client=wrk\n",
            workload, dur, n, rps, p50, p99, conns, errs, rss, ok
        printf "ratio workload=%s jobs_per_s=%.0f target_jobs_per_s=%d p99_ms=%.3f ok=%d\n",
            workload, rps, target, p99, (ok && rps >= target) ? 1 : 0
        exit (ok ? 0 : 1)
    }' "$tmp/wrk"
