#!/bin/sh
# make soak MINUTES=N: tide serve under steady wrk load for N minutes
# (default 10), mixing successes, failures, retries, timeouts, cancels,
# long-polls and clients that hang up (scripts/soak/). Every 10 s it
# samples the server's RSS and open fds into $SOAK_DIR/samples.tsv; after
# the warm-up (a quarter of the run, at least 2 minutes) it compares the
# first and second halves of the rest and fails on growth beyond noise:
# RSS by more than max(16 MiB, 10 %), fds by more than 16. Only loopback
# is used, and everything it starts ends with it. Not part of CI.
set -u
BUILD=${BUILD:-build}
MINUTES=${MINUTES:-10}
DIR=${SOAK_DIR:-$(mktemp -d /tmp/tide-soak.XXXXXX)}
mkdir -p "$DIR"
secs=$((MINUTES * 60))
warm=$((secs / 4))
[ "$warm" -lt 120 ] && warm=120
# For a smoke test of the soak itself: SOAK_SECONDS=60 SOAK_WARM=20.
secs=${SOAK_SECONDS:-$secs}
warm=${SOAK_WARM:-$warm}
if [ "$secs" -le "$((warm + 30))" ]; then
    echo "soak: MINUTES=$MINUTES leaves no time after the warm-up ($warm s); use 4 or more" >&2
    exit 2
fi
for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is missing (scripts/deps.sh)" >&2; exit 2; }
done

"$BUILD/tide" serve scripts/soak/pipeline.lua --listen 127.0.0.1:0 --max-results 20000 \
    --threads 2 --memory-limit 512M 2>"$DIR/serve.err" &
pid=$!
wrk_pids=""
cleanup() {
    for p in $wrk_pids; do kill "$p" 2>/dev/null; done
    kill "$pid" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT INT TERM
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's/^tide: serving .* on http:\/\/127\.0\.0\.1:\([0-9]*\)$/\1/p' "$DIR/serve.err")
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "soak: tide serve did not start" >&2; cat "$DIR/serve.err" >&2; exit 1; }
url="http://127.0.0.1:$port"
echo "soak: tide serve (pid $pid) on $url for $MINUTES min, warm-up $warm s; files in $DIR"

tag="soak$$"
SOAK_TAG=$tag wrk -t 2 -c 16 -d "${secs}s" --timeout 5s -s scripts/soak/mix.lua "$url" \
    >"$DIR/wrk-mix.txt" 2>&1 &
wrk_pids="$!"
# wrk never closes a connection whose answer is late: the clients that
# hang up are a script of their own.
${LUAJIT:-luajit} scripts/soak/hangup.lua "$port" "$secs" "$tag" >"$DIR/hangup.txt" 2>&1 &
wrk_pids="$wrk_pids $!"

printf 't_s\trss_kib\tfds\n' >"$DIR/samples.tsv"
start=$(date +%s)
while :; do
    now=$(($(date +%s) - start))
    [ "$now" -ge "$secs" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "soak: tide serve died after $now s" >&2
        tail -20 "$DIR/serve.err" >&2
        exit 1
    fi
    rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB$/\1/p' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    printf '%d\t%s\t%s\n' "$now" "$rss" "$fds" >>"$DIR/samples.tsv"
    sleep 10
done
for p in $wrk_pids; do wait "$p"; done
wrk_pids=""
health=$(curl -s -m 5 "$url/healthz")
metrics=$(curl -s -m 5 "$url/metrics" | grep -E '^tide_jobs_(total|refused_total)|^tide_http_requests_total' || true)
kill "$pid"
wait "$pid" 2>/dev/null

echo "soak: wrk, the mix:"
sed -n '/requests in/p;/Non-2xx/p;/Socket errors/p;/Requests\/sec/p' "$DIR/wrk-mix.txt"
echo "soak: $(cat "$DIR/hangup.txt")"
echo "soak: the server's counters at the end:"
echo "$metrics"
echo "soak: stderr of the server: $(wc -l <"$DIR/serve.err") lines"
awk -v warm="$warm" -v health="$health" '
    NR == 1 { next }
    { t[++n] = $1; r[n] = $2; f[n] = $3 }
    END {
        printf "soak: samples (t s, RSS MiB, fds):"
        for (i = 1; i <= n; i++) printf " %d:%.1f:%d", t[i], r[i] / 1024, f[i]
        printf "\n"
        m = 0
        for (i = 1; i <= n; i++) if (t[i] >= warm) k[++m] = i
        if (m < 4) { print "soak: FAIL: too few samples after the warm-up"; exit 1 }
        h = int(m / 2)
        r1 = 0; f1 = 0; r2 = 0; f2 = 0
        for (j = 1; j <= h; j++) { if (r[k[j]] > r1) r1 = r[k[j]]; if (f[k[j]] > f1) f1 = f[k[j]] }
        for (j = h + 1; j <= m; j++) { if (r[k[j]] > r2) r2 = r[k[j]]; if (f[k[j]] > f2) f2 = f[k[j]] }
        rmin = r[1]; rmax = r[1]
        for (i = 1; i <= n; i++) { if (r[i] < rmin) rmin = r[i]; if (r[i] > rmax) rmax = r[i] }
        printf "soak: RSS first sample %.1f MiB, max %.1f MiB; after warm-up: first half max %.1f MiB, second half max %.1f MiB (%+.1f MiB)\n", r[1] / 1024, rmax / 1024, r1 / 1024, r2 / 1024, (r2 - r1) / 1024
        printf "soak: fds after warm-up: first half max %d, second half max %d (%+d)\n", f1, f2, f2 - f1
        limit = r1 / 10; if (limit < 16384) limit = 16384
        bad = 0
        if (r2 - r1 > limit) { printf "soak: FAIL: RSS grew %.1f MiB after the warm-up (noise: %.1f MiB)\n", (r2 - r1) / 1024, limit / 1024; bad = 1 }
        if (f2 - f1 > 16) { printf "soak: FAIL: open fds grew by %d after the warm-up\n", f2 - f1; bad = 1 }
        if (health !~ /"ok":true/) { printf "soak: FAIL: /healthz at the end answered %s\n", health; bad = 1 }
        if (!bad) print "soak: passed"
        exit bad
    }' "$DIR/samples.tsv"
