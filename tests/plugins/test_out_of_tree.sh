#!/usr/bin/env bash
# test_out_of_tree.sh -- a plugin built outside this tree, as docs/plugins.md
# tells an author to, loads and runs in a node.
# usage: test_out_of_tree.sh CAREMESH SOURCE_DIR
set -uo pipefail
bin=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/my_plugin"
cp "$src/plugins/template/template.c" "$tmp/my_plugin/template.c"
cat >"$tmp/my_plugin/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.18)
project(my_plugin C)
set(CAREMESH_INCLUDE_DIR $src/core/include)
include($src/plugins/CaremeshPlugin.cmake)
caremesh_add_plugin(template template.c)
CMAKE
if ! cmake -S "$tmp/my_plugin" -B "$tmp/build" >"$tmp/cmake.log" 2>&1 ||
   ! cmake --build "$tmp/build" >>"$tmp/cmake.log" 2>&1; then
  echo "FAIL: the out-of-tree build failed:"; cat "$tmp/cmake.log"; echo "0 passed, 1 failed"; exit 1
fi
"$bin" init --data "$tmp/node" --node-id oot >/dev/null
sed -i "s|^}|  plugins = { { name = \"template\", path = \"$tmp/build/template.so\" } },\n}|" "$tmp/node/caremesh.conf"
out=$("$bin" template-hello --data "$tmp/node" x 2>&1)
if grep -qF "hello from the template plugin (1 argument(s))" <<<"$out"; then
  echo "1 passed, 0 failed"
else
  echo "FAIL: the plugin did not run: $out"; echo "0 passed, 1 failed"; exit 1
fi
