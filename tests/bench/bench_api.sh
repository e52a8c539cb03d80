#!/usr/bin/env bash
# bench_api.sh -- `make bench`'s API figures: a node in a temporary directory
# serving tests/bench/bench_api.lua on a free loopback port, driven by
# `caremesh bench api` with the given options (defaults: the figures of
# docs/PERFORMANCE.md), then stopped and removed.
# usage: bench_api.sh CAREMESH [bench api options...]
set -euo pipefail
bin=$(realpath "$1")
shift
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
d=$tmp/node
"$bin" init --data "$d" --node-id bench >/dev/null
mkdir "$d/workflows" && cp "$src/tests/bench/bench_api.lua" "$d/workflows/"
sed -i 's/^}$/  api = { listen = "127.0.0.1:0" },\n}/' "$d/caremesh.conf"
token=$("$bin" token create --scope write --data "$d" 2>/dev/null)
"$bin" serve --data "$d" 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 400); do grep -qF '"serve.ready"' "$tmp/log" && break; sleep 0.05; done
port=$(sed -n 's/.*HTTP API on 127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/log")
[ -n "$port" ] || { echo "bench_api.sh: the node did not start: $(tail -3 "$tmp/log")" >&2; exit 1; }
"$bin" bench api --api "127.0.0.1:$port" --token "$token" "$@"
