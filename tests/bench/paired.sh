#!/usr/bin/env bash
# paired.sh -- paired runs of one benchmark command on two builds, for the
# "before/now" figures of docs/PERFORMANCE.md. The runs alternate (A, B, B,
# A, A, B, ...) so that both see the same machine, in both orders; each
# prints the load, the figures of its JSON line (the command's last line)
# and, at the end, the median of each figure per build.
# usage: paired.sh A_BIN B_BIN PAIRS CMD [ARGS...]
#   CMD and ARGS may name @BIN@, replaced by the build's binary, e.g.
#   paired.sh /tmp/base/caremesh build/caremesh 6 @BIN@ bench engine --instances 2000
#   paired.sh /tmp/base/caremesh build/caremesh 4 bash tests/bench/bench_api.sh @BIN@
# Figures reported: events_per_s or msgs_per_s, p99_us, the engine bench's
# loop_cpu_us_per_event and loop_sys_us_per_event, and the API script's
# daemon_cpu_us_per_request, loop_cpu_us_per_request, loop_busy and
# client_cpu_us_per_request, whichever the JSON line has.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: paired.sh A_BIN B_BIN PAIRS CMD [ARGS...]" >&2; exit 2; }
a=$1 b=$2 pairs=$3
shift 3
[[ $pairs =~ ^[1-9][0-9]*$ ]] || { echo "paired.sh: PAIRS must be a positive number, not '$pairs'" >&2; exit 2; }
for bin in "$a" "$b"; do
  [ -x "$bin" ] || { echo "paired.sh: $bin is not an executable" >&2; exit 2; }
done
keys="events_per_s msgs_per_s p99_us loop_cpu_us_per_event loop_sys_us_per_event daemon_cpu_us_per_request loop_cpu_us_per_request loop_busy client_cpu_us_per_request"
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
declare -A got
run() { # run BIN LABEL PAIR
  local args=() line load
  for x in "${@:4}"; do args+=("${x//@BIN@/$1}"); done
  load=$(cut -d' ' -f1 /proc/loadavg)
  line=$("${args[@]}" 2>&1 | tail -1) || { echo "paired.sh: $2 run $3 failed: $line" >&2; exit 1; }
  local out="pair $3 $2 load $load"
  for k in $keys; do
    v=$(field "$k" "$line")
    [ -n "$v" ] || continue
    out+=" $k $v"
    got[$2.$k]+="$v "
  done
  echo "$out"
}
# The order alternates too (A B, then B A): on short runs the build that
# runs first in a pair gains a few per cent (the API's 0.1 s run,
# docs/PERFORMANCE.md), which a fixed order would credit to A.
for ((i = 1; i <= pairs; i++)); do
  if ((i % 2)); then
    run "$a" A "$i" "$@"
    run "$b" B "$i" "$@"
  else
    run "$b" B "$i" "$@"
    run "$a" A "$i" "$@"
  fi
done
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for label in A B; do
  out="median $label"
  for k in $keys; do
    [ -n "${got[$label.$k]:-}" ] && out+=" $k $(median "${got[$label.$k]}")"
  done
  echo "$out"
done
