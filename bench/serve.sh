#!/bin/sh
# bench/serve.sh: the serve lines of `make bench` (issues 6 and 16):
# submit-and-wait round trips, POST /v1/jobs?wait=5 for a trivial pipeline
# (bench/serve_pipeline.lua), driven by wrk on loopback, next to Debian's
# nginx answering the same requests with a fixed JSON body of the same
# shape (`return 200`), in the same run. Prints
#
#   workload=serve impl=nginx-static seconds=... rounds=2 n=... jobs_per_s=... p50_ms=... p99_ms=... errors=0 ok=1 client=wrk
#   workload=serve impl=tide seconds=... rounds=2 n=... jobs_per_s=... p50_ms=... p99_ms=... errors=0 rss_mib=... ok=1 client=wrk
#   ratio workload=serve jobs_per_s=... target_jobs_per_s=20000 p99_ms=... ok=1|0
#   ratio workload=serve tide_jobs_per_s=... nginx_jobs_per_s=... ratio=X target_ratio=0.6 p99_ms=... target_p99_ms=2 ok=1|0
#
# nginx and tide are measured alternately (nginx, tide, nginx, tide: 2
# rounds of BENCH_SERVE_S seconds each, after a 1 s warm-up of each), so
# that both see the same machine. jobs_per_s is the mean of the rounds'
# rates, p50_ms and p99_ms the worse of the rounds' percentiles (wrk's
# own, per round). ok=1 on a result line when the server answered the
# check request with the right output and wrk saw no error or non-2xx
# answer; the last ratio line has ok=1 when tide makes at least 0.6 x
# nginx's requests/s and its p99 is at most 2 ms. One wrk thread and one
# server process (nginx: one worker): two cores.
#
# With --journal, tide serve keeps a journal (each 2xx only once the job
# is on the device), nginx is not started, tide runs one round and the
# lines say workload=serve-journal (no nginx ratio line). Environment:
# BENCH_SERVE_S (seconds of a round, default 5), BENCH_SERVE_C
# (connections, default 32), NGINX (default nginx, else /usr/sbin/nginx).
# Exit status 1 when a server did not start or answered wrongly, or a tool
# is missing; a missed target shows as ok=0 only.
set -eu
cd "$(dirname "$0")/.."

DUR=${BENCH_SERVE_S:-5}
CONNS=${BENCH_SERVE_C:-32}
TARGET=20000
TARGET_RATIO=0.6
TARGET_P99=2
workload=serve
rounds=2
if [ "${1:-}" = --journal ]; then
    workload=serve-journal
    rounds=1
fi

if ! command -v wrk >/dev/null 2>&1; then
    echo "workload=$workload impl=tide ok=0 (wrk is not installed: apt-get install wrk)"
    exit 1
fi
if [ -z "${NGINX:-}" ]; then
    # Debian installs it under /usr/sbin, which a user's PATH may lack.
    NGINX=nginx
    if ! command -v nginx >/dev/null 2>&1 && [ -x /usr/sbin/nginx ]; then
        NGINX=/usr/sbin/nginx
    fi
fi
if [ "$workload" = serve ] && ! command -v "$NGINX" >/dev/null 2>&1; then
    echo "workload=serve impl=nginx-static ok=0 (nginx is not installed: apt-get install nginx-light)"
    exit 1
fi

tmp=$(mktemp -d)
pid=
npid=
trap 'kill $pid $npid 2>/dev/null; rm -rf "$tmp"' EXIT
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

# check URL: 1 when a submit through URL answers the right output.
check() {
    case "$(curl -s -X POST -H 'Content-Type: application/json' -d '{"input":41}' "$1")" in
        *'"output":42'*) echo 1 ;;
        *) echo 0 ;;
    esac
}
ok=$(check "$url")

# nginx with its own prefix, config, temporary directories and error log
# under $tmp/nginx, so it needs no root and touches nothing of the
# system's. nginx cannot listen on port 0 and tell which port it got, so
# it tries ports from one derived from this shell's pid until a bind
# succeeds.
nginx_start() {
    d=$tmp/nginx
    mkdir -p "$d"
    nport=$((20000 + $$ % 20000))
    for _ in $(seq 20); do
        cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    # tide keeps a connection for as long as the client does: so does
    # nginx here (its default closes one every 1000 requests).
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$nport;
        location = /v1/jobs {
            default_type application/json;
            return 200 '{"id":"1","status":"done","output":42}';
        }
    }
}
EOF
        rm -f "$d/error.log" "$d/stderr" "$d/nginx.pid"
        "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" 2>"$d/stderr" &
        npid=$!
        for _ in $(seq 100); do
            if ! kill -0 "$npid" 2>/dev/null; then
                break
            fi
            # nginx writes its pid file once it holds its sockets: then the
            # port is its own, not another server's.
            if [ "$(cat "$d/nginx.pid" 2>/dev/null)" = "$npid" ] &&
                curl -s -o /dev/null "http://127.0.0.1:$nport/" 2>/dev/null; then
                nurl="http://127.0.0.1:$nport/v1/jobs?wait=5"
                return 0
            fi
            sleep 0.05
        done
        kill "$npid" 2>/dev/null || true
        wait "$npid" 2>/dev/null || true
        npid=
        grep -qs "Address already in use" "$d/error.log" "$d/stderr" || return 1
        nport=$((nport + 1))
    done
    return 1
}

if [ "$workload" = serve ]; then
    if ! nginx_start; then
        echo "workload=serve impl=nginx-static ok=0 ($NGINX did not start: $(cat "$tmp/nginx/error.log" "$tmp/nginx/stderr" 2>/dev/null | tr "\n" " "))"
        exit 1
    fi
    nok=$(check "$nurl")
fi

# bench IMPL URL ROUND: one wrk run into $tmp/wrk.IMPL.ROUND.
bench() {
    wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s bench/wrk_post.lua "$2" >"$tmp/wrk.$1.$3"
}

# Warm-up, then the measured rounds, alternated.
if [ "$workload" = serve ]; then
    wrk -t1 -c"$CONNS" -d1s -s bench/wrk_post.lua "$nurl" >/dev/null
fi
wrk -t1 -c"$CONNS" -d1s -s bench/wrk_post.lua "$url" >/dev/null
r=1
while [ "$r" -le "$rounds" ]; do
    if [ "$workload" = serve ]; then
        bench nginx-static "$nurl" "$r"
    fi
    bench tide "$url" "$r"
    r=$((r + 1))
done
rss=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")

# summarize IMPL OK RSS: the result line of IMPL from its rounds' wrk
# outputs, then "IMPL JOBS_PER_S P99_MS OK" on the last line for the
# ratio lines.
summarize() {
    for f in "$tmp"/wrk."$1".*; do
        printf '=== %s\n' "$f"
        cat "$f"
    done | awk -v workload="$workload" -v impl="$1" -v ok="$2" -v rss="$3" \
        -v dur="$DUR" -v conns="$CONNS" '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /^===/ { k++ }
        /^ +50%/ { v = ms($2); if (v > p50) p50 = v }
        /^ +99%/ { v = ms($2); if (v > p99) p99 = v }
        /Requests\/sec:/ { rps += $2; nrps++ }
        /requests in/ { n += $1 }
        /Socket errors:/ { errs += $4 + $6 + $8 + $10 } # "connect 0, read 0, ..."
        /Non-2xx or 3xx responses:/ { errs += $5 }
        END {
            if (nrps < k || !k) {
                print "workload=" workload " impl=" impl " ok=0 (no wrk summary)"
                print impl " 0 0 0"
                exit 1
            }
            if (errs > 0) ok = 0
            rps = rps / nrps
            printf "workload=%s impl=%s seconds=%s rounds=%d n=%d jobs_per_s=%.0f p50_ms=%.3f p99_ms=%.3f connections=%d errors=%d%s ok=%d client=wrk\n",
                workload, impl, dur, nrps, n, rps, p50, p99, conns, errs,
                (rss == "" ? "" : " rss_mib=" rss), ok
            printf "%s %.0f %.3f %d\n", impl, rps, p99, ok
        }'
}

status=0
if [ "$workload" = serve ]; then
    summarize nginx-static "$nok" "" >"$tmp/nginx.sum" || status=1
    sed '$d' "$tmp/nginx.sum"
fi
summarize tide "$ok" "$rss" >"$tmp/tide.sum" || status=1
sed '$d' "$tmp/tide.sum"
# shellcheck disable=SC2046 # the summary is three words
set -- $(tail -n 1 "$tmp/tide.sum")
t_rps=$2 t_p99=$3 t_ok=$4
[ "$t_ok" = 1 ] || status=1
printf 'ratio workload=%s jobs_per_s=%s target_jobs_per_s=%d p99_ms=%s ok=%d\n' \
    "$workload" "$t_rps" "$TARGET" "$t_p99" "$(awk -v r="$t_rps" -v t="$TARGET" -v ok="$t_ok" 'BEGIN { print (ok && r >= t) ? 1 : 0 }')"
if [ "$workload" = serve ]; then
    # shellcheck disable=SC2046 # the summary is three words
    set -- $(tail -n 1 "$tmp/nginx.sum")
    n_rps=$2 n_ok=$4
    [ "$n_ok" = 1 ] || status=1
    awk -v t="$t_rps" -v nx="$n_rps" -v p99="$t_p99" -v ok="$t_ok$n_ok" \
        -v tr="$TARGET_RATIO" -v tp="$TARGET_P99" 'BEGIN {
        r = (nx > 0) ? t / nx : 0
        printf "ratio workload=serve tide_jobs_per_s=%.0f nginx_jobs_per_s=%.0f ratio=%.2f target_ratio=%s p99_ms=%.3f target_p99_ms=%s ok=%d\n",
            t, nx, r, tr, p99, tp, (ok == "11" && r >= tr + 0 && p99 <= tp + 0) ? 1 : 0
    }'
fi
exit "$status"
