#!/usr/bin/env bash
# compare_tarantool.sh -- the API's work beside Tarantool's (docs/PERFORMANCE.md,
# "The API beside Tarantool"): the same 1,000 starts and 20,000 "step" events
# of tests/bench/bench_api.lua, 4 connections with 64 calls in flight on
# each, every answer after its commit's fsync, against a Tarantool server
# (tests/bench/tarantool_server.lua: wal_mode = 'fsync') on a free loopback
# port in a temporary directory, driven by a second tarantool process
# (tests/bench/tarantool_client.lua: net.box). The server's CPU (all its
# threads, from /proc) and the client's (bash's time) per request are added
# to the last line, a JSON object with events_per_s and p99_us, as
# tests/bench/bench_api.sh does for caremesh.
# usage: compare_tarantool.sh [BIN] [--instances N] [--events N]
#                             [--connections N] [--pipeline N] [--wal-mode M]
#   --wal-mode write: Tarantool's WAL written without sync (not the
#   comparison: what the same work costs without the sync). With the
#   default, fsync, the script checks that the server's WAL file is open
#   with O_SYNC (how Tarantool 2.6's wal_mode = 'fsync' syncs every write)
#   and fails if it is not.
# BENCH_SYNCS=1 (either side): strace counts the server's synced writes
# during the run and how long they took (tests/bench/sync_trace.sh).
#   BIN: a tarantool binary (default: tarantool on the PATH), or a caremesh
#   binary, for which the script runs tests/bench/bench_api.sh BIN with the
#   same options instead, so that tests/bench/paired.sh can alternate them:
#   bash tests/bench/paired.sh build/caremesh "$(command -v tarantool)" 8 \
#     bash tests/bench/compare_tarantool.sh @BIN@
# Not part of `make test`: Tarantool is not one of the project's
# dependencies (Debian: apt-get install tarantool).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
bin=
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  bin=$1
  shift
fi
if [ -z "$bin" ]; then
  bin=$(command -v tarantool) || {
    echo "compare_tarantool.sh: tarantool is not installed (Debian: apt-get install tarantool)" >&2
    exit 2
  }
fi
[ -x "$bin" ] || { echo "compare_tarantool.sh: $bin is not an executable" >&2; exit 2; }
if ! "$bin" --version 2>/dev/null | head -1 | grep -q '^Tarantool '; then
  exec bash "$src/tests/bench/bench_api.sh" "$bin" "$@" # caremesh's side
fi

instances=1000 events=20 connections=4 pipeline=64 wal_mode=fsync
while [ $# -gt 0 ]; do
  case $1 in
  --wal-mode)
    [ "${2:-}" = fsync ] || [ "${2:-}" = write ] ||
      { echo "compare_tarantool.sh: --wal-mode must be fsync or write, got '${2:-}'" >&2; exit 2; }
    wal_mode=$2
    shift 2
    ;;
  --instances | --events | --connections | --pipeline)
    [ $# -ge 2 ] && [[ $2 =~ ^[1-9][0-9]*$ ]] ||
      { echo "compare_tarantool.sh: $1 needs a positive number, got '${2:-}'" >&2; exit 2; }
    declare "${1#--}=$2"
    shift 2
    ;;
  *)
    echo "compare_tarantool.sh: unknown option '$1' (--instances, --events, --connections, --pipeline, --wal-mode)" >&2
    exit 2
    ;;
  esac
done

. "$src/tests/bench/sync_trace.sh"
tmp=$(mktemp -d)
pid=
trap 'sync_trace_stop; [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir "$tmp/server"
"$bin" "$src/tests/bench/tarantool_server.lua" "$tmp/server" "$wal_mode" >"$tmp/server.out" 2>&1 &
pid=$!
for _ in $(seq 1 400); do
  [ -s "$tmp/server/port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
[ -s "$tmp/server/port" ] || {
  echo "compare_tarantool.sh: the Tarantool server did not start within 20 s:" >&2
  tail -n 5 "$tmp/server.out" "$tmp/server/tarantool.log" >&2 2>/dev/null || true
  exit 1
}
port=$(cat "$tmp/server/port")
# the server's open WAL file and its open flags (octal, from /proc): with
# wal_mode = 'fsync' they must hold O_SYNC (04010000: __O_SYNC | O_DSYNC)
xlog= flags=
for fd in /proc/$pid/fd/*; do
  case $(readlink "$fd") in
  *.xlog | *.xlog.inprogress)
    xlog=$(basename "$(readlink "$fd")") xlog_fd=${fd##*/}
    flags=$(sed -n 's/^flags:[[:space:]]*//p' "/proc/$pid/fdinfo/${fd##*/}")
    ;;
  esac
done
[ -n "$xlog" ] || { echo "compare_tarantool.sh: the server has no WAL file (.xlog) open" >&2; exit 1; }

cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "$1"; }
before=$(cpu "/proc/$pid/stat")
[ "${BENCH_SYNCS:-}" = 1 ] && { sync_trace_start "$pid" "$tmp" writev,fsync,fdatasync || exit 1; }
TIMEFORMAT='%3U %3S %3R'
{ time "$bin" "$src/tests/bench/tarantool_client.lua" "$port" "$instances" "$events" \
  "$connections" "$pipeline" >"$tmp/out" 2>&4; } 4>&2 2>"$tmp/time" ||
  { cat "$tmp/out"; exit 1; }
after=$(cpu "/proc/$pid/stat")
sync_trace_stop
out=$(cat "$tmp/out")
head -n -1 <<<"$out"
if [ "$wal_mode" = fsync ]; then
  (((8#$flags & 8#4010000) == 8#4010000)) || {
    echo "compare_tarantool.sh: the server's WAL $xlog is open without O_SYNC (flags $flags)" >&2
    exit 1
  }
  echo "the server's WAL $xlog is open with O_SYNC (flags $flags): each write is synced"
fi
json=$(tail -1 <<<"$out")
n=$((instances + instances * events))
if [ "${BENCH_SYNCS:-}" = 1 ]; then
  # the WAL's fds opened with O_SYNC: their writes are the synced ones
  sync_fds=
  [ "$wal_mode" = fsync ] && sync_fds=$xlog_fd
  sync_trace_report "$tmp/syncs" "$n" $sync_fds
fi
dcpu=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }')
us=$(awk -v c="$dcpu" -v n="$n" 'BEGIN { printf "%.1f", c * 1e6 / n }')
ccpu=$(awk '{ printf "%.3f", $1 + $2 }' "$tmp/time")
cus=$(awk -v c="$ccpu" -v n="$n" 'BEGIN { printf "%.1f", c * 1e6 / n }')
echo "server CPU: $dcpu s for $n requests: $us us per request; client CPU: $ccpu s, $cus us per request"
echo "${json%\}},\"daemon_cpu_s\":$dcpu,\"daemon_cpu_us_per_request\":$us,\"client_cpu_s\":$ccpu,\"client_cpu_us_per_request\":$cus,\"wal_mode\":\"$wal_mode\"}"
