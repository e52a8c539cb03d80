#!/usr/bin/env bash
# api_profile.sh -- instructions per API request, exact where wall-clock
# figures swing with the machine's load: a bench node (bench_node.sh) under
# valgrind's callgrind, driven by `caremesh bench api` (default 200
# instances x 25 events, 4 x 64 in flight), then the loop thread's
# instructions per request (starts and events), split into the engine's
# (cm_engine_run without the API's ack and audit hooks) and the API's
# (HTTP reading and parsing, routing, authentication, the body, the answer
# and the audit hook). Under valgrind the engine's batches are cut short by
# their time limit, so compare the API's share between builds, and the
# engine's only roughly. With --client first, the node runs as it is and
# the client (`caremesh bench api`) under callgrind instead: its
# instructions per request, the CPU it takes from the cores it shares with
# the node. With --cache first, callgrind also simulates the caches, and
# the first-level data cache's misses (reads and writes) per request are
# printed split the same way.
# usage: api_profile.sh [--client | --cache] CAREMESH [bench api options...]
set -euo pipefail
client=
cache=
[ "${1:-}" = --client ] && { client=1; shift; }
[ "${1:-}" = --cache ] && { cache=1; shift; }
bin=$(realpath "$1")
shift
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null ||
  { echo "api_profile.sh: needs valgrind and callgrind_annotate" >&2; exit 1; }
cg="valgrind --tool=callgrind ${cache:+--cache-sim=yes }--callgrind-out-file=$tmp/callgrind.out"
[ -n "$client" ] || BENCH_WRAP=$cg
. "$src/tests/bench/bench_node.sh"
bench_node_start "$bin" "$src" || exit 1
[ $# -gt 0 ] || set -- --instances 200 --events 25
if [ -n "$client" ]; then
  json=$($cg "$bin" bench api --api "127.0.0.1:$port" --token "$token" "$@" 2>/dev/null | tail -1)
  n=$(sed -n 's/.*"events":\([0-9]*\),"instances":\([0-9]*\).*/\1 + \2/p' <<<"$json")
  total=$(callgrind_annotate "$tmp/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t { gsub(",", "", $1); t = $1 } END { print t }')
  echo "$((n)) requests; client instructions per request (whole process): $((total / (n)))"
  exit 0
fi
json=$("$bin" bench api --api "127.0.0.1:$port" --token "$token" "$@" | tail -1)
kill -TERM "$pid"
wait "$pid" || { echo "api_profile.sh: the node did not stop cleanly" >&2; exit 1; }
pid=
n=$(sed -n 's/.*"events":\([0-9]*\),"instances":\([0-9]*\).*/\1 + \2/p' <<<"$json")
callgrind_annotate --inclusive=yes --tree=calling --auto=no --show=Ir "$tmp/callgrind.out" >"$tmp/tree" 2>/dev/null
# the inclusive count of a function's own entry ("* name [lib]"), or of the
# calls to it ("> name (Nx)"), first found
ir() { awk -v f="$2" -v m="$1" 'index($0, ")  " m " ") && index($0, f) { gsub(",", "", $1); print $1; exit }' "$tmp/tree"; }
loop=$(ir '*' '???:uv_run [')
engine=$(ir '*' 'core/engine.c:cm_engine_run [')
hooks=$(($(ir '>' 'core/api.c:on_engine_ack (') + $(ir '>' 'core/api.c:on_engine_work (')))
echo "$((n)) requests; instructions per request: loop $((loop / (n))), engine $(((engine - hooks) / (n))), API $(((loop - engine + hooks) / (n)))"
[ -n "$cache" ] || exit 0
# the same split of the first-level data cache's misses: D1mr + D1mw of an
# entry (its two counts once the percentages are dropped; "." is none)
callgrind_annotate --inclusive=yes --tree=calling --auto=no --show=D1mr,D1mw "$tmp/callgrind.out" >"$tmp/tree" 2>/dev/null
ir() {
  awk -v f="$2" -v m="$1" 'index($0, ")  " m " ") && index($0, f) {
    gsub(/\([^)]*\)/, ""); gsub(",", ""); printf "%d\n", ($1 == "." ? 0 : $1) + ($2 == "." ? 0 : $2); exit }' "$tmp/tree"
}
loop=$(ir '*' '???:uv_run [')
engine=$(ir '*' 'core/engine.c:cm_engine_run [')
hooks=$(($(ir '>' 'core/api.c:on_engine_ack (') + $(ir '>' 'core/api.c:on_engine_work (')))
echo "first-level data cache misses per request: loop $((loop / (n))), engine $(((engine - hooks) / (n))), API $(((loop - engine + hooks) / (n)))"
