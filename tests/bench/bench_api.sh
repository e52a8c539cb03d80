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
. "$src/tests/bench/bench_node.sh"
bench_node_start "$bin" "$src" || exit 1
"$bin" bench api --api "127.0.0.1:$port" --token "$token" "$@"
