#!/bin/sh
# make fuzz: runs each libFuzzer target of spec/fuzz/ for FUZZ_SECONDS
# seconds, starting from its seed corpus spec/fuzz/corpus/<target>/ (which
# holds every crash found so far as a regression input: libFuzzer runs all
# of them first). New inputs go to a scratch directory, not the
# repository. Prints one TAP line per target ("ok N - fuzz TARGET: R runs
# ..." or "not ok N - ..."), which .ci/run counts, and exits 1 when any
# target failed; a crashing input is kept in $FUZZ_DIR/<target>/ (copy it
# into the corpus with the fix).
#   usage: sh scripts/fuzz.sh BUILD_DIR SECONDS TARGET...
set -u
build=$1
secs=$2
shift 2
dir=${FUZZ_DIR:-$(mktemp -d /tmp/tide-fuzz.XXXXXX)}
n=0
failed=0
echo "1..$#"
for t in "$@"; do
    n=$((n + 1))
    mkdir -p "$dir/$t/new"
    log="$dir/$t/log"
    # -rss_limit_mb: LuaJIT's heap and ASan's shadow share the budget.
    # -timeout: one input that runs for seconds is a bug (a hang).
    # LeakSanitizer cannot follow the http target's C records through Lua
    # values (see spec/fuzz/fuzz_http.c).
    leaks=1
    [ "$t" = http ] && leaks=0
    ASAN_OPTIONS=detect_leaks=$leaks:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        timeout $((secs + 120)) "$build/fuzz/fuzz_$t" -max_total_time="$secs" \
        -print_final_stats=1 -rss_limit_mb=4096 -timeout=10 -max_len=65536 \
        -artifact_prefix="$dir/$t/" "$dir/$t/new" "spec/fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        echo "ok $n - fuzz $t: ${runs:-?} runs in $secs s, $cov, corpus $(ls "spec/fuzz/corpus/$t" | wc -l) seeds"
    else
        failed=1
        echo "not ok $n - fuzz $t: exit $rc after ${runs:-?} runs; log and input in $dir/$t/"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz_|artifact_prefix|Test unit written)' "$log" | head -20 | sed 's/^/# /'
    fi
done
exit $failed
