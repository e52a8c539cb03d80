#!/usr/bin/env bash
# test_bench_api.sh -- `caremesh bench api` against a real serve on a port it
# picks: it runs, every event it sent is durable, and it ends with its JSON line.
# usage: test_bench_api.sh CAREMESH SOURCE_DIR
set -uo pipefail
bin=$1 src=$2
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
. "$src/tests/bench/bench_node.sh"
bench_node_start "$bin" "$src" || exit 1
out=$("$bin" bench api --api "127.0.0.1:$port" --token "$token" --instances 20 --events 5 --connections 2 --pipeline 4) || { echo "FAIL: bench api: $out"; exit 1; }
echo "$out"
n=$(sqlite3 "$d/caremesh.db" "SELECT sum(json_extract(ctx, '\$.n')) FROM instance WHERE workflow = 'bench_api'")
[ "$n" = 100 ] || { echo "FAIL: 100 events acknowledged, $n in the database"; exit 1; }
# with --payload every event carries it: 20 x 5 more events, all durable
"$bin" bench api --api "127.0.0.1:$port" --token "$token" --instances 20 --events 5 --connections 2 --pipeline 4 --payload '{"by":"dr1","n":3}' >"$tmp/out2" || { echo "FAIL: bench api --payload: $(cat "$tmp/out2")"; exit 1; }
n=$(sqlite3 "$d/caremesh.db" "SELECT sum(json_extract(ctx, '\$.n')) FROM instance WHERE workflow = 'bench_api'")
[ "$n" = 200 ] || { echo "FAIL: 200 events acknowledged, $n in the database"; exit 1; }
"$bin" bench api --api "127.0.0.1:$port" --token "$token" --instances 1 --events 1 --payload '[1]' >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "answered 422" "$tmp/err" || { echo "FAIL: a payload that is no object: $(cat "$tmp/err")"; exit 1; }
"$bin" bench api --api "127.0.0.1:$port" --token nope --instances 1 --events 1 >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "answered 401" "$tmp/err" || { echo "FAIL: a bad token: $(cat "$tmp/err")"; exit 1; }
kill -TERM "$pid"; wait "$pid" || { echo "FAIL: serve exit"; exit 1; }
pid=
tail -1 <<<"$out" | grep -q '^{"events_per_s":[0-9]*,"p50_us":[0-9]*,"p99_us":[0-9]*' || { echo "FAIL: no JSON line"; exit 1; }
echo "bench api smoke: ok"
