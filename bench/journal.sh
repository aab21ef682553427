#!/bin/sh
# bench/journal.sh: the journal lines of `make bench`. What a journal costs
# a run: `tide run` over N generated inputs through W1 (bench/w1.lua: the
# 4-task chain t0 -> t3 of `x + 1` that bench/tide.lua times in process)
# with --output, without and with --journal (SQLite, WAL,
# synchronous=FULL, group commits), alternated BENCH_PAIRS times so that
# both see the same machine. Prints one line per run and then
#
#   ratio workload=journal-run n=... plain_lines_per_s=... journal_lines_per_s=... ratio_med=X target=0.5 ok=1|0
#
# (lines per second are medians over the pairs; ratio_med is the journaled
# rate over the plain one: 1 would be free). A journaled run's line also
# has wait_mean_ms and wait_max_ms: how long a result waited from being
# queued to being on the device (the journal's closing line). Environment: BENCH_PAIRS
# (default 5), BENCH_JOURNAL_N (inputs, default 200000).
set -eu
cd "$(dirname "$0")/.."

N=${BENCH_JOURNAL_N:-200000}
PAIRS=${BENCH_PAIRS:-5}
TARGET=0.5

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seq 1 "$N" >"$tmp/in.jsonl"

# one IMPL: one run, its line from tide's summary ("N done ... R/s, S s").
one() {
    rm -rf "$tmp/out" "$tmp/j.db" "$tmp/j.db-wal" "$tmp/j.db-shm"
    set -- "$1"
    if [ "$1" = journal ]; then
        extra="--journal $tmp/j.db"
    else
        extra=
    fi
    # shellcheck disable=SC2086 # $extra is two words or none
    build/tide run bench/w1.lua --input "$tmp/in.jsonl" --output "$tmp/out" $extra 2>"$tmp/err" || true
    # The journal's own line: how long a result waited to be on the device.
    wait=$(sed -n 's/.*on the device within \([0-9.]*\) ms on average (at worst \([0-9.]*\) ms).*/ wait_mean_ms=\1 wait_max_ms=\2/p' "$tmp/err")
    sed -n 's/.*tide: \([0-9]*\) done.* \([0-9.]*\)\/s, \([0-9.]*\) s, .*/\1 \2 \3/p' "$tmp/err" |
        awk -v impl="$1" -v n="$N" -v wait="$wait" -v lines="$(wc -l <"$tmp/out/t3.jsonl" 2>/dev/null || echo 0)" '
            { printf "workload=journal-run impl=%s n=%d done=%d lines_per_s=%.0f seconds=%.2f%s ok=%d\n",
                     impl, n, $1, $2, $3, wait, ($1 == n && lines == n) ? 1 : 0; found = 1 }
            END { if (!found) printf "workload=journal-run impl=%s ok=0 (no summary line)\n", impl }'
}

lines=$tmp/lines
i=0
while [ "$i" -lt "$PAIRS" ]; do
    one plain | tee -a "$lines"
    one journal | tee -a "$lines"
    i=$((i + 1))
done

awk -v target="$TARGET" -v n="$N" '
    function lmed(a, k,    i, j, x) {
        for (i = 2; i <= k; i++) {
            x = a[i]
            for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]
            a[j + 1] = x
        }
        return a[int((k + 1) / 2)]
    }
    {
        split("", v)
        for (f = 1; f <= NF; f++) { e = index($f, "="); v[substr($f, 1, e - 1)] = substr($f, e + 1) }
        if (v["ok"] != "1") bad = 1
        if (v["impl"] == "plain") p[++np] = v["lines_per_s"] + 0
        else if (v["impl"] == "journal") j[++nj] = v["lines_per_s"] + 0
    }
    END {
        if (!np || !nj) { print "ratio workload=journal-run ok=0 (no runs)"; exit 1 }
        pm = lmed(p, np); jm = lmed(j, nj); r = jm / pm
        printf "ratio workload=journal-run n=%d plain_lines_per_s=%.0f journal_lines_per_s=%.0f ratio_med=%.2f target=%s ok=%d\n",
            n, pm, jm, r, target, (r >= target && !bad) ? 1 : 0
        exit bad
    }' "$lines"
