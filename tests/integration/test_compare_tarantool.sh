#!/usr/bin/env bash
# test_compare_tarantool.sh -- tests/bench/compare_tarantool.sh without
# Tarantool (not a project dependency): with no tarantool on the PATH it
# says so and exits 2; a binary that says it is Tarantool gets its options
# checked, and a server that does not start is reported; given caremesh it
# runs the API benchmark with the same options.
# usage: test_compare_tarantool.sh CAREMESH SOURCE_DIR
set -uo pipefail
bin=$1 src=$2
script=$src/tests/bench/compare_tarantool.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
# the script's temporary files go under $tmp/scratch: each run, however it
# ends, leaves nothing there
mkdir "$tmp/scratch"
export TMPDIR=$tmp/scratch
left() {
  [ -z "$(ls -A "$tmp/scratch")" ] || fail "$1 left $(ls "$tmp/scratch") in its temporary directory"
}

# no tarantool on the PATH (only what the script needs before it looks)
mkdir "$tmp/path"
ln -s "$(command -v dirname)" "$tmp/path/dirname"
PATH=$tmp/path /bin/bash "$script" >"$tmp/out" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "tarantool is not installed" "$tmp/out" ||
  fail "no tarantool: exit $rc, $(cat "$tmp/out")"
left "no tarantool"

# a stand-in that answers --version as Tarantool and, run as the server,
# exits at once
cat >"$tmp/tarantool" <<'EOF'
#!/bin/sh
[ "$1" = --version ] && { echo "Tarantool 2.6.0-0-g47aa4e01e"; exit 0; }
echo "stand-in server: exiting" >&2
exit 1
EOF
chmod +x "$tmp/tarantool"
for bad in "--events 0" "--instances x" "--pipeline" "--wal-mode none" "--bogus 1"; do
  # shellcheck disable=SC2086 # the option and its value, split
  bash "$script" "$tmp/tarantool" $bad >"$tmp/out" 2>&1
  rc=$?
  [ $rc -eq 2 ] && grep -q "^compare_tarantool.sh: .*${bad%% *}" "$tmp/out" ||
    fail "option '$bad': exit $rc, $(cat "$tmp/out")"
  left "option '$bad'"
done
bash "$script" "$tmp/tarantool" --instances 1 --events 1 >"$tmp/out" 2>&1
rc=$?
[ $rc -eq 1 ] && grep -q "the Tarantool server did not start" "$tmp/out" &&
  grep -q "stand-in server: exiting" "$tmp/out" || fail "a server that exits: exit $rc, $(cat "$tmp/out")"
left "a server that exits"

# caremesh: bench_api.sh with the same options, its JSON line last
bash "$script" "$bin" --instances 10 --events 3 --connections 2 --pipeline 4 >"$tmp/out" 2>&1 ||
  fail "caremesh's side: $(cat "$tmp/out")"
tail -1 "$tmp/out" | grep -q '^{"events_per_s":[0-9]*,.*"events":30,"instances":10,"connections":2,"pipeline":4,.*"daemon_cpu_us_per_request":' ||
  fail "caremesh's side: no JSON line for 10 x 3 events: $(tail -3 "$tmp/out")"
left "caremesh's side"
echo "compare_tarantool.sh without Tarantool: ok"
