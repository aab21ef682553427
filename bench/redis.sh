#!/bin/sh
# bench/redis.sh: the Redis lines of `make bench` End-to-end
# jobs/s of `tide run --redis` (submit -> result, the wall time of the
# submitting process) for the trivial one-task pipeline of
# bench/serve_pipeline.lua, with 1 and then 2 `tide worker` processes, and
# the CPU the workers spent per job (utime + stime from /proc/PID/stat,
# read before and after the run). Then redis-benchmark's XADD rate on the
# same server, the ceiling: one command per job, pipelined 16 deep,
# without any of the reads, scripts and acknowledgements a job needs. The
# server is a redis-server of its own on a free loopback port with
# `appendonly yes` and `appendfsync everysec`. Prints
#
#   workload=redis impl=tide workers=1 jobs=... seconds=... jobs_per_s=... cpu_us_per_job=... ok=1|0
#   workload=redis impl=tide workers=2 ...
#   ceiling workload=redis impl=redis-benchmark command=XADD n=200000 pipeline=16 requests_per_s=...
#   target workload=redis jobs_per_s=... cpu_us_per_job=... target_jobs_per_s=20000 target_cpu_us_per_job=50 ok=1|0
#
# ok=1 on a workers line when the run exited 0 with one result per input.
# The target line takes the better of the two workers lines' rates and
# the 1-worker line's CPU. Without redis-server it prints a message and
# exits 0 (the other lines of `make bench` do not need it). Environment:
# BENCH_REDIS_N (jobs per run, default 50000), BENCH_REDIS_C (--concurrency
# of each worker, default 1000).
set -eu
cd "$(dirname "$0")/.."

N=${BENCH_REDIS_N:-50000}
CONC=${BENCH_REDIS_C:-1000}
TARGET_RATE=20000
TARGET_CPU=50
PIPE=bench/serve_pipeline.lua

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "bench/redis.sh: redis-server is not installed (apt-get install redis-server): no Redis lines" >&2
    exit 0
fi

tmp=$(mktemp -d)
rpid=
wpids=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    for p in $wpids; do kill -KILL "$p" 2>/dev/null || true; done
    if [ -n "$rpid" ]; then kill -KILL "$rpid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# A free loopback port: redis-server exits at once when its port is
# taken, so a few random ones are tried.
port=
for _ in 1 2 3 4 5 6 7 8 9 10; do
    p=$(awk 'BEGIN { srand(); printf "%d", 20000 + rand() * 40000 }')
    redis-server --port "$p" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly yes \
        --appendfsync everysec --daemonize no --logfile redis.log >/dev/null 2>&1 &
    rpid=$!
    for _ in $(seq 100); do
        if redis-cli -p "$p" ping 2>/dev/null | grep -q PONG; then port=$p; break; fi
        kill -0 "$rpid" 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$port" ] && break
    kill -KILL "$rpid" 2>/dev/null || true
    rpid=
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "workload=redis impl=tide ok=0 (redis-server did not start)"
    exit 1
fi
url=redis://127.0.0.1:$port

seq 1 "$N" >"$tmp/in.jsonl"
status=0
lines=$tmp/lines
: >"$lines"

# cpu_ticks PID...: utime + stime of the processes, in clock ticks.
cpu_ticks() {
    t=0
    for p in "$@"; do
        # Fields 14 and 15 after the command name, which may hold spaces.
        v=$(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')
        t=$((t + v))
    done
    echo "$t"
}

# one WORKERS: one run of N jobs with that many workers.
one() {
    redis-cli -p "$port" flushall >/dev/null
    wpids=
    i=0
    while [ "$i" -lt "$1" ]; do
        build/tide worker "$PIPE" --redis "$url" --concurrency "$CONC" 2>"$tmp/w$i.err" &
        wpids="$wpids $!"
        i=$((i + 1))
    done
    # Started once each has said so (it has connected and made the group).
    for _ in $(seq 200); do
        n=$(cat "$tmp"/w*.err 2>/dev/null | grep -c 'tide: worker .*: pipeline' || true)
        [ "$n" -ge "$1" ] && break
        sleep 0.05
    done
    # shellcheck disable=SC2086 # $wpids is a list of pids
    c0=$(cpu_ticks $wpids)
    rm -rf "$tmp/out"
    t0=$(date +%s.%N)
    rc=0
    build/tide run "$PIPE" --redis "$url" --input "$tmp/in.jsonl" --output "$tmp/out" 2>"$tmp/run.err" &
    spid=$!
    wait "$spid" || rc=$?
    t1=$(date +%s.%N)
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $wpids)
    for p in $wpids; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $wpids; do wait "$p" 2>/dev/null || true; done
    wpids=
    got=$(sort -u "$tmp/out/inc.jsonl" 2>/dev/null | wc -l)
    hz=$(getconf CLK_TCK)
    awk -v w="$1" -v n="$N" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v hz="$hz" -v rc="$rc" \
        -v got="$got" -v conc="$CONC" 'BEGIN {
            s = t1 - t0
            printf "workload=redis impl=tide workers=%d jobs=%d seconds=%.3f jobs_per_s=%.0f cpu_us_per_job=%.1f concurrency=%d ok=%d\n",
                w, n, s, n / s, (c1 - c0) / hz * 1e6 / n, conc, (rc == 0 && got == n) ? 1 : 0
        }' | tee -a "$lines"
    if [ "$rc" -ne 0 ] || [ "$got" -ne "$N" ]; then
        echo "bench/redis.sh: the run with $1 workers exited $rc with $got of $N results: $(tail -n 3 "$tmp/run.err")" >&2
        status=1
    fi
}

one 1
one 2

redis-cli -p "$port" flushall >/dev/null
BN=200000
rps=$(redis-benchmark -p "$port" -n "$BN" -P 16 -q XADD bench:s '*' f v 2>/dev/null |
    tr '\r' '\n' | sed -n 's/.*: *\([0-9.]*\) requests per second.*/\1/p' | tail -n 1)
echo "ceiling workload=redis impl=redis-benchmark command=XADD n=$BN pipeline=16 requests_per_s=${rps:-NA}"

awk -v trate="$TARGET_RATE" -v tcpu="$TARGET_CPU" '
    {
        split("", v)
        for (f = 1; f <= NF; f++) { e = index($f, "="); v[substr($f, 1, e - 1)] = substr($f, e + 1) }
        if (v["jobs_per_s"] + 0 > best) best = v["jobs_per_s"] + 0
        if (v["workers"] == "1") cpu = v["cpu_us_per_job"] + 0
        if (v["ok"] != "1") bad = 1
    }
    END {
        printf "target workload=redis jobs_per_s=%.0f cpu_us_per_job=%.1f target_jobs_per_s=%d target_cpu_us_per_job=%d ok=%d\n",
            best, cpu, trate, tcpu, (!bad && best >= trate && cpu <= tcpu) ? 1 : 0
    }' "$lines"
exit "$status"
