#!/bin/sh
# bench/jsonl.sh: the JSONL line of `make bench` (issue 16): how fast
# `tide run` moves lines through an identity pipeline (bench/identity.lua:
# read, decode, schedule, encode, write) next to `jq -c .` (Debian's jq:
# read, parse, print) over the same file, in the same run. The file is
# BENCH_JSONL_N lines (default 1 000 000) of realistic objects of 190 to
# 230 bytes, made once per run by bench/jsonl_gen.lua. jq and tide run
# alternately (jq, tide, jq, tide, jq, tide), each run timed from outside
# (wall time of the whole process). Prints one line per run and then
#
#   ratio workload=jsonl tide_lines_per_s=... jq_lines_per_s=... ratio_med=X target=1.0 ok=1|0
#
# (lines per second are medians of the 3 runs; ratio_med is tide's rate
# over jq's). tide runs with --threads 1 (the identity task is async, so
# it runs on the loop's thread anyway) and --output, and a run is ok when
# it exits 0 and its output file has one line per input. jq writes to
# /dev/null and is ok when it exits 0. Environment: BENCH_JSONL_N,
# LUAJIT (default luajit). Exit status 1 when a run failed or jq is
# missing; a missed target shows as ok=0 only.
set -eu
cd "$(dirname "$0")/.."

N=${BENCH_JSONL_N:-1000000}
LUAJIT=${LUAJIT:-luajit}
ROUNDS=3
TARGET=1.0

if ! command -v jq >/dev/null 2>&1; then
    echo "workload=jsonl impl=jq ok=0 (jq is not installed: apt-get install jq)"
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! "$LUAJIT" bench/jsonl_gen.lua "$N" >"$tmp/in.jsonl"; then
    echo "workload=jsonl impl=tide ok=0 (bench/jsonl_gen.lua failed)"
    exit 1
fi

# Seconds since the epoch, with nanoseconds (GNU date).
now() { date +%s.%N; }

# one IMPL: one timed run, its result line.
one() {
    rm -rf "$tmp/out"
    t0=$(now)
    if [ "$1" = jq ]; then
        if jq -c . "$tmp/in.jsonl" >/dev/null 2>"$tmp/err"; then rc=0; else rc=$?; fi
    else
        if build/tide run bench/identity.lua --threads 1 --input "$tmp/in.jsonl" \
            --output "$tmp/out" 2>"$tmp/err"; then rc=0; else rc=$?; fi
    fi
    t1=$(now)
    if [ "$1" = jq ]; then
        out=$N
    else
        out=$(wc -l <"$tmp/out/identity.jsonl" 2>/dev/null || echo 0)
    fi
    awk -v impl="$1" -v n="$N" -v t0="$t0" -v t1="$t1" -v rc="$rc" -v out="$out" 'BEGIN {
        s = t1 - t0
        printf "workload=jsonl impl=%s lines=%d lines_per_s=%.0f seconds=%.2f ok=%d\n",
            impl, n, (s > 0 ? n / s : 0), s, (rc == 0 && out == n) ? 1 : 0
    }'
    if [ "$rc" -ne 0 ]; then
        echo "bench/jsonl.sh: $1 exited $rc: $(tail -n 3 "$tmp/err")" >&2
    fi
}

lines=$tmp/lines
i=0
while [ "$i" -lt "$ROUNDS" ]; do
    one jq | tee -a "$lines"
    one tide | tee -a "$lines"
    i=$((i + 1))
done

awk -v target="$TARGET" '
    function med(a, k,    i, j, x) {
        for (i = 2; i <= k; i++) {
            x = a[i]
            for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]
            a[j + 1] = x
        }
        return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    {
        split("", v)
        for (f = 1; f <= NF; f++) { e = index($f, "="); v[substr($f, 1, e - 1)] = substr($f, e + 1) }
        if (v["ok"] != "1") bad = 1
        if (v["impl"] == "jq") q[++nq] = v["lines_per_s"] + 0
        else if (v["impl"] == "tide") t[++nt] = v["lines_per_s"] + 0
    }
    END {
        if (!nq || !nt) { print "ratio workload=jsonl ok=0 (no runs)"; exit 1 }
        qm = med(q, nq); tm = med(t, nt); r = (qm > 0) ? tm / qm : 0
        printf "ratio workload=jsonl tide_lines_per_s=%.0f jq_lines_per_s=%.0f ratio_med=%.2f target=%s ok=%d\n",
            tm, qm, r, target, (r >= target && !bad) ? 1 : 0
        exit bad
    }' "$lines"
