#!/bin/sh
# scripts/bench.sh: `make bench` (docs/benchmarks.md). Workloads W1, W2, W3
# and W5, tide against its floors, alternated so that both see the same
# machine; then W4, the memory line, the serve lines (next to nginx, then
# with a journal), the JSONL line (tide run against jq), the retained
# results line and the journal lines of tide run.
#
# Assumes `make` was already run (tide.run needs build/lib/tide/core.so).
# For each of W1 W2 W3 it runs BENCH_PAIRS pairs of processes, the
# luajit-queue floor (bench/floor.lua) then tide (bench/tide.lua), each
# process doing its own warm-up and timed runs; for W5 the same with the
# luajit-luv floor (bench/floor_luv.lua, skipped when lua-luv is not
# installed). Every result line is printed as it comes, then per workload:
#
#   ratio workload=W1 tide_med_us=... floor_med_us=... ratio_med=X tide_min_us=... floor_min_us=... ratio_min=Y target=1.5 ok=1|0
#   spread workload=W1 impl=tide med_us=... best_us=... spread=Z floor_spread=... target=1.3 ok=1|0
#
# *_med_us is the median over the pairs of each process's seconds (its own
# lower median), *_min_us the smallest min_s, both per task; ratio_med and
# ratio_min are tide's over the floor's. ok=1 on a ratio line when
# ratio_med meets the target (1.5 for W1-W3, 1.05 for W5) and every run of
# both verified its result. spread is tide's median over its best
# (floor_spread the same for the floor): how far a typical run is from the
# best one.
#
# Environment: BENCH_PAIRS (default 5), BENCH_N (N for W1-W3, default
# 100000), BENCH_N_W5 (N for W5, default 1000), BENCH_MEM_N (inputs of the
# large memory run, default 10000000), BENCH_SERVE_S and BENCH_SERVE_C
# (bench/serve.sh), BENCH_JSONL_N (bench/jsonl.sh), BENCH_RETAIN_N
# (bench/retain.lua), BENCH_JOURNAL_N (bench/journal.sh), LUAJIT (default
# luajit).
# Exit status: 0 when every run completed and verified its result, 1 when
# one failed. A missed target is reported on its line only: timings on a
# shared machine are noise, so they never fail the script.
set -eu

cd "$(dirname "$0")/.."

LUAJIT=${LUAJIT:-luajit}
N=${BENCH_N:-100000}
N5=${BENCH_N_W5:-1000}
PAIRS=${BENCH_PAIRS:-5}
TARGET_RATIO=1.5
TARGET_W5=1.05
TARGET_SPREAD=1.3

status=0
lines=$(mktemp)
trap 'rm -f "$lines"' EXIT

# run CMD...: runs one benchmark, prints its line and keeps it for the
# summary lines.
run() {
    if line=$("$@"); then
        rc=0
    else
        rc=$?
    fi
    if [ -n "$line" ]; then
        printf '%s\n' "$line"
        printf '%s\n' "$line" >>"$lines"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "bench.sh: '$*' failed (exit $rc)" >&2
        status=1
    fi
}

# pairs WORKLOAD N FLOOR_SCRIPT: PAIRS alternated runs of the floor and tide.
pairs() {
    i=0
    while [ "$i" -lt "$PAIRS" ]; do
        if [ -n "$3" ]; then
            run "$LUAJIT" "$3" "$1" "$2"
        fi
        run "$LUAJIT" bench/tide.lua "$1" "$2"
        i=$((i + 1))
    done
}

# summary WORKLOAD FLOOR_IMPL TARGET: the ratio and spread lines of a
# workload, from the result lines kept so far.
summary() {
    awk -v w="workload=$1" -v wname="$1" -v fimpl="impl=$2" -v target="$3" \
        -v starget="$TARGET_SPREAD" '
        # Lower median of a[1..n] (sorted in place).
        function lmed(a, n,    i, j, x) {
            for (i = 2; i <= n; i++) {
                x = a[i]
                for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]
                a[j + 1] = x
            }
            return a[int((n + 1) / 2)]
        }
        $1 == w && ($2 == "impl=tide" || $2 == fimpl) {
            k = ($2 == "impl=tide") ? "t" : "f"
            split("", v)
            for (f = 3; f <= NF; f++) {
                e = index($f, "=")
                v[substr($f, 1, e - 1)] = substr($f, e + 1)
            }
            if (v["tasks"] + 0 <= 0) next
            n[k]++
            if (k == "t") tmed[n[k]] = v["seconds"] / v["tasks"] * 1e6
            else fmed[n[k]] = v["seconds"] / v["tasks"] * 1e6
            m = v["min_s"] / v["tasks"] * 1e6
            if (!(k in best) || m < best[k]) best[k] = m
            if (v["ok"] != "1") bad = 1
        }
        END {
            if (!n["t"]) {
                printf "ratio workload=%s tide_med_us=NA floor_med_us=NA ratio_med=NA tide_min_us=NA floor_min_us=NA ratio_min=NA target=%s ok=0\n", wname, target
                printf "spread workload=%s impl=tide med_us=NA best_us=NA spread=NA floor_spread=NA target=%s ok=0\n", wname, starget
                exit
            }
            tm = lmed(tmed, n["t"])
            spread = (best["t"] > 0) ? tm / best["t"] : 0
            if (n["f"]) {
                fm = lmed(fmed, n["f"])
                rmed = tm / fm
                rmin = best["t"] / best["f"]
                ok = (rmed <= target + 0 && !bad) ? 1 : 0
                printf "ratio workload=%s tide_med_us=%.3f floor_med_us=%.3f ratio_med=%.2f tide_min_us=%.3f floor_min_us=%.3f ratio_min=%.2f target=%s ok=%d\n",
                    wname, tm, fm, rmed, best["t"], best["f"], rmin, target, ok
                fspread = sprintf("%.2f", (best["f"] > 0) ? fm / best["f"] : 0)
            } else {
                printf "ratio workload=%s tide_med_us=%.3f floor_med_us=NA ratio_med=NA tide_min_us=%.3f floor_min_us=NA ratio_min=NA target=%s ok=0\n",
                    wname, tm, best["t"], target
                fspread = "NA"
            }
            printf "spread workload=%s impl=tide med_us=%.3f best_us=%.3f spread=%.2f floor_spread=%s target=%s ok=%d\n",
                wname, tm, best["t"], spread, fspread, starget, (spread <= starget + 0 && !bad) ? 1 : 0
        }' "$lines"
}

for w in W1 W2 W3; do
    pairs "$w" "$N" bench/floor.lua
done

luv_floor=bench/floor_luv.lua
if ! "$LUAJIT" -e 'require "luv"' >/dev/null 2>&1; then
    echo "bench.sh: luajit cannot load luv (apt-get install lua-luv): no luajit-luv W5 floor" >&2
    luv_floor=
fi
pairs W5 "$N5" "$luv_floor"

for w in W1 W2 W3; do
    summary "$w" luajit-queue "$TARGET_RATIO"
done
summary W5 luajit-luv "$TARGET_W5"

# W4 (parallel CPU) and the cost of a trivial sync task.
"$LUAJIT" bench/w4.lua || status=1

# Memory: `tide run` over generated inputs from stdin through a 3-task
# pipeline (bench/mem.lua), peak RSS at 100k and at BENCH_MEM_N (10M)
# inputs, read from tide's own summary line (getrusage).
MEM_N=${BENCH_MEM_N:-10000000}
mem_run() {
    seq 1 "$1" | build/tide run bench/mem.lua 2>&1 >/dev/null |
        sed -n 's/.*tide: \([0-9]*\) done.* \([0-9.]*\)\/s, \([0-9.]*\) s, peak RSS \([0-9.]*\) MiB.*/\1 \2 \3 \4/p'
}
small=$(mem_run 100000)
large=$(mem_run "$MEM_N")
echo "$small" "$large" | awk -v n1=100000 -v n2="$MEM_N" '
    NF == 8 {
        growth = ($8 - $4) / $4 * 100
        ok = ($1 == n1 && $5 == n2 && $8 < 64 && growth < 10) ? 1 : 0
        printf "memory workload=tide-run impl=tide n_small=%d rss_small_mib=%.1f n_large=%d rss_large_mib=%.1f growth_pct=%.1f lines_per_s=%.0f seconds=%.1f target_mib=64 target_growth_pct=10 ok=%d\n",
            n1, $4, n2, $8, growth, $6, $7, ok
        exit
    }
    { print "memory workload=tide-run ok=0 (no summary line from tide run)"; exit }'

# Serve: submit-and-wait round trips through tide serve, driven by wrk,
# next to nginx answering a fixed body (alternated rounds), then with a
# journal.
sh bench/serve.sh || status=1
sh bench/serve.sh --journal || status=1

# JSONL: tide run of an identity pipeline against jq -c . over the same
# generated file, alternated (bench/jsonl.sh).
LUAJIT=$LUAJIT sh bench/jsonl.sh || status=1

# Retained results: RSS per finished result an executor keeps, as tide
# serve keeps them (bench/retain.lua).
"$LUAJIT" bench/retain.lua || status=1

# What a journal costs tide run (bench/journal.sh).
sh bench/journal.sh || status=1

# tide run --redis with 1 and 2 tide workers on a redis-server of its own,
# and redis-benchmark's XADD ceiling (bench/redis.sh; skipped with a
# message when redis-server is not installed).
sh bench/redis.sh || status=1

# Host latency: a lua-luv echo server runs 10 000 tasks through
# tide.luv while a client measures its round trips (docs/benchmarks.md,
# "Hosts"); the target is a p99 under 5 ms.
if "$LUAJIT" -e 'require "luv"; require "socket"' >/dev/null 2>&1; then
    portf=$(mktemp)
    "$LUAJIT" bench/luv_echo.lua adapter 10000 >"$portf" 2>/dev/null &
    spid=$!
    for _ in $(seq 50); do grep -q port "$portf" && break; sleep 0.1; done
    line=$(timeout 90 "$LUAJIT" bench/echo_client.lua "$(awk '{print $2}' "$portf")")
    wait "$spid"
    rm -f "$portf"
    echo "$line" | awk '{ split($3, a, "="); printf "host workload=luv-echo impl=tide.luv tasks=10000 %s target_p99_ms=5 ok=%d\n", $0, (a[2] < 5) }'
else
    echo "bench.sh: luajit cannot load luv and socket: no host latency line" >&2
fi

exit "$status"
