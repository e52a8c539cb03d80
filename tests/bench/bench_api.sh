#!/usr/bin/env bash
# bench_api.sh -- `make bench`'s API figures: a node in a temporary directory
# serving tests/bench/bench_api.lua on a free loopback port, driven by
# `caremesh bench api` with the given options (defaults: the figures of
# docs/PERFORMANCE.md), then stopped and removed. The node's CPU per request
# (read from /proc around the run) is printed and added to the JSON line.
# usage: bench_api.sh CAREMESH [bench api options...]
set -euo pipefail
bin=$(realpath "$1")
shift
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
. "$src/tests/bench/bench_node.sh"
bench_node_start "$bin" "$src" || exit 1
# the node's CPU (all its threads, user and system) around the run, per
# request (the starts and the events): added to the JSON line
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat"; }
before=$(cpu)
out=$("$bin" bench api --api "127.0.0.1:$port" --token "$token" "$@") || { echo "$out"; exit 1; }
after=$(cpu)
head -n -1 <<<"$out"
json=$(tail -1 <<<"$out")
n=$(sed -n 's/.*"events":\([0-9]*\),"instances":\([0-9]*\).*/\1 + \2/p' <<<"$json")
us=$(awk -v a="$after" -v b="$before" -v n="$((n))" 'BEGIN { printf "%.1f", (a - b) * 1e6 / n }')
echo "daemon CPU: $(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }') s for $((n)) requests: $us us per request"
echo "${json%\}},\"daemon_cpu_s\":$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }'),\"daemon_cpu_us_per_request\":$us}"
