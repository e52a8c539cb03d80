#!/usr/bin/env bash
# bench_api.sh -- `make bench`'s API figures: a node in a temporary directory
# serving tests/bench/bench_api.lua on a free loopback port, driven by
# `caremesh bench api` with the given options (defaults: the figures of
# docs/PERFORMANCE.md), then stopped and removed. The node's CPU per request
# (read from /proc around the run) and the client's (bash's time) are
# printed per request and added to the JSON line. BENCH_SYNCS=1: the node's
# fsync and fdatasync calls during the run counted and timed under strace
# (tests/bench/sync_trace.sh; the figures then are not the comparison's).
# usage: bench_api.sh CAREMESH [bench api options...]
set -euo pipefail
bin=$(realpath "$1")
shift
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
pid=
. "$src/tests/bench/sync_trace.sh"
trap 'sync_trace_stop; [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
. "$src/tests/bench/bench_node.sh"
bench_node_start "$bin" "$src" || exit 1
# the node's CPU (all its threads, user and system) around the run, per
# request (the starts and the events): added to the JSON line; and its loop
# thread's (the main thread, which runs the loop: HTTP, API, engine), with
# the share of the run's wall time it was busy, which says whether the loop
# thread bounds the run
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "$1"; }
before=$(cpu "/proc/$pid/stat")
lbefore=$(cpu "/proc/$pid/task/$pid/stat")
# the client's CPU too (user and system, bash's time): it shares the cores
[ "${BENCH_SYNCS:-}" = 1 ] && { sync_trace_start "$pid" "$tmp" fsync,fdatasync || exit 1; }
TIMEFORMAT='%3U %3S %3R'
{ time "$bin" bench api --api "127.0.0.1:$port" --token "$token" "$@" >"$tmp/out" 2>&4; } 4>&2 2>"$tmp/time" ||
  { cat "$tmp/out"; exit 1; }
after=$(cpu "/proc/$pid/stat")
sync_trace_stop
lafter=$(cpu "/proc/$pid/task/$pid/stat")
out=$(cat "$tmp/out")
head -n -1 <<<"$out"
json=$(tail -1 <<<"$out")
n=$(sed -n 's/.*"events":\([0-9]*\),"instances":\([0-9]*\).*/\1 + \2/p' <<<"$json")
dcpu=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }')
us=$(awk -v c="$dcpu" -v n="$((n))" 'BEGIN { printf "%.1f", c * 1e6 / n }')
ccpu=$(awk '{ printf "%.3f", $1 + $2 }' "$tmp/time")
cus=$(awk -v c="$ccpu" -v n="$((n))" 'BEGIN { printf "%.1f", c * 1e6 / n }')
lcpu=$(awk -v a="$lafter" -v b="$lbefore" 'BEGIN { printf "%.2f", a - b }')
[ "${BENCH_SYNCS:-}" = 1 ] && sync_trace_report "$tmp/syncs" "$((n))"
lus=$(awk -v c="$lcpu" -v n="$((n))" 'BEGIN { printf "%.1f", c * 1e6 / n }')
busy=$(awk -v c="$lcpu" '{ printf "%.2f", ($3 > 0 ? c / $3 : 0) }' "$tmp/time")
echo "daemon CPU: $dcpu s for $((n)) requests: $us us per request (loop thread $lus us, busy $busy of the run); client CPU: $ccpu s, $cus us per request"
echo "${json%\}},\"daemon_cpu_s\":$dcpu,\"daemon_cpu_us_per_request\":$us,\"loop_cpu_us_per_request\":$lus,\"loop_busy\":$busy,\"client_cpu_s\":$ccpu,\"client_cpu_us_per_request\":$cus}"
