#!/usr/bin/env bash
# api_syscalls.sh -- the loop thread's system calls per API request: a bench
# node (bench_node.sh) whose main thread (the loop: HTTP, API, engine) runs
# under `strace -c` during one `caremesh bench api` run (default 200
# instances x 25 events, 4 x 64 in flight), then strace's table and the
# calls per request of each. The sync and checkpoint threads are not traced.
# strace slows each call, so read the counts, not the times.
# usage: api_syscalls.sh CAREMESH [bench api options...]
set -euo pipefail
bin=$(realpath "$1")
shift
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
pid=
spid=
trap '[ -n "$spid" ] && kill -INT "$spid" 2>/dev/null || true; [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
command -v strace >/dev/null || { echo "api_syscalls.sh: needs strace" >&2; exit 1; }
. "$src/tests/bench/bench_node.sh"
bench_node_start "$bin" "$src" || exit 1
[ $# -gt 0 ] || set -- --instances 200 --events 25
strace -c -o "$tmp/calls" -p "$pid" 2>"$tmp/strace.err" &
spid=$!
for _ in $(seq 1 200); do grep -q attached "$tmp/strace.err" && break; sleep 0.05; done
grep -q attached "$tmp/strace.err" || { echo "api_syscalls.sh: strace did not attach: $(cat "$tmp/strace.err")" >&2; exit 1; }
json=$("$bin" bench api --api "127.0.0.1:$port" --token "$token" "$@" | tail -1)
kill -INT "$spid"
wait "$spid" || true
spid=
n=$(sed -n 's/.*"events":\([0-9]*\),"instances":\([0-9]*\).*/\1 + \2/p' <<<"$json")
cat "$tmp/calls"
# per request: the calls column (the fourth; errors, when any, come after it)
awk -v n="$((n))" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { printf "%-14s %.4f per request\n", $NF, $4 / n }' "$tmp/calls"
echo "$((n)) requests"
