#!/usr/bin/env bash
# memory_finished.sh -- does a serving node's memory grow with the number of
# instances that have finished? A node in a temporary directory serving
# tests/bench/bench_api.lua (bench_node.sh) is driven by `caremesh bench api`
# in steps: each step starts new instances and sends each one `close`, which
# takes it to its final state. After each step the script prints the node's
# resident memory (VmRSS, and VmHWM, its peak, from /proc/PID/status), the
# finished instances the database holds, and the database's size (its own
# page cache is bounded: that size is not in the RSS). Then the node is
# stopped and removed.
# usage: memory_finished.sh CAREMESH [TOTAL...]   (default 10000 50000 100000:
#        cumulative finished instances after each step)
# With MAX_GROWTH_KB set, exit 1 when the RSS after the last step exceeds the
# RSS after the first by more than that (the test bench.memory_finished).
set -euo pipefail
bin=$(realpath "$1")
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(10000 50000 100000)
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
. "$src/tests/bench/bench_node.sh"
bench_node_start "$bin" "$src" || exit 1

kb() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$pid/status"; }
finished() { sqlite3 "file:$d/caremesh.db?mode=ro" "SELECT count(*) FROM instance WHERE status = 'done'"; }
dbkb() { du -k -c "$d"/caremesh.db* | tail -1 | cut -f1; }
row() { printf '%-9s %9s %9s %9s %9s\n' "$@"; }
row finished rss_kb hwm_kb db_kb events_s
row "$(finished)" "$(kb VmRSS)" "$(kb VmHWM)" "$(dbkb)" -
done_n=0
first=
for total in "${steps[@]}"; do
  n=$((total - done_n))
  [ "$n" -gt 0 ] || { echo "steps must grow: $total after $done_n" >&2; exit 2; }
  out=$("$bin" bench api --api "127.0.0.1:$port" --token "$token" --instances "$n" \
    --events 1 --event close) || { echo "$out" >&2; exit 1; }
  eps=$(tail -1 <<<"$out" | sed -n 's/.*"events_per_s":\([0-9]*\).*/\1/p')
  done_n=$total
  got=$(finished)
  [ "$got" -eq "$done_n" ] || { echo "expected $done_n finished instances, the database has $got" >&2; exit 1; }
  rss=$(kb VmRSS)
  row "$got" "$rss" "$(kb VmHWM)" "$(dbkb)" "$eps"
  [ -n "$first" ] || first=$rss
done
if [ -n "${MAX_GROWTH_KB:-}" ]; then
  growth=$((rss - first))
  [ "$growth" -le "$MAX_GROWTH_KB" ] ||
    { echo "FAIL: RSS grew $growth kB from ${steps[0]} to $done_n finished instances (at most $MAX_GROWTH_KB)"; exit 1; }
  echo "RSS grew $growth kB from ${steps[0]} to $done_n finished instances (at most $MAX_GROWTH_KB): ok"
fi
