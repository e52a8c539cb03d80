#!/usr/bin/env bash
# Run one Lua test file through `caremesh lua` against a fresh node.
# usage: run.sh CAREMESH TEST.lua
set -euo pipefail
bin=$1 file=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" init --data "$dir/node" --node-id lua-test-node >/dev/null
# CM_WRAP runs the script under a checker (valgrind) when set.
${CM_WRAP:-} "$bin" lua --data "$dir/node" "$file"
