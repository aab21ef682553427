#!/bin/sh
# Converts a dpkg log (default /var/log/dpkg.log) into the input of
# examples/logs.lua: one JSONL record per day,
#   {"id":"2025-06-24","lines":["2025-06-24 14:36:25 upgrade libsystemd0:amd64 ...", ...]}
# keeping the log lines in their order. The per-package "status" lines
# (state transitions such as half-installed -> unpacked) are left out: they
# repeat what the action lines say and would triple the size.
#
#   sh examples/data/make-dpkg-jsonl.sh [/var/log/dpkg.log] > examples/data/dpkg.log.jsonl
set -eu
LC_ALL=C
export LC_ALL
log=${1:-/var/log/dpkg.log}
awk '
function esc(s) {
    gsub(/\\/, "\\\\", s)
    gsub(/"/, "\\\"", s)
    gsub(/\t/, "\\t", s)
    gsub(/\r/, "", s)
    return s
}
$3 == "status" || NF == 0 { next }
{
    if ($1 != day) {
        if (day != "") printf "]}\n"
        day = $1
        printf "{\"id\":\"%s\",\"lines\":[", esc(day)
        sep = ""
    }
    printf "%s\"%s\"", sep, esc($0)
    sep = ","
}
END { if (day != "") printf "]}\n" }
' "$log"
