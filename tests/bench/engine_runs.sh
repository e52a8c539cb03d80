#!/bin/bash
# engine_runs.sh BIN RUNS [BENCH ARGS...]: run `BIN bench engine ARGS` RUNS
# times and print, per run, what tells a slow run from a fast one:
#   events_per_s, p99_us        the run's figures (its JSON line)
#   cpu_us_ev, busy             the loop thread's CPU per event while the
#                               events were driven, and the share of that
#                               time it was on a core (loop_cpu_us_per_event,
#                               loop_busy in the JSON line)
#   calib_ms                    the CPU time a fixed single-threaded loop
#                               (awk, nothing of caremesh) takes just before
#                               and just after the run: the same
#                               instructions every time, so a slower
#                               machine shows there
#   steal_ticks                 CPU the hypervisor gave to others during
#                               the run (/proc/stat, both cores)
#   migrations, switches        CPU migrations and context switches (perf
#                               stat, when perf can count them)
# For the "two groups of runs" of docs/PERFORMANCE.md (engine round 9), e.g.
#   bash tests/bench/engine_runs.sh build/caremesh 8 --instances 2000 --events 25 --batch 256
set -u
[ $# -ge 2 ] || { echo "usage: engine_runs.sh BIN RUNS [BENCH ARGS...]" >&2; exit 2; }
bin=$1 runs=$2
shift 2
[ -x "$bin" ] || { echo "engine_runs.sh: $bin is not an executable" >&2; exit 2; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "engine_runs.sh: RUNS must be a positive number, not '$runs'" >&2; exit 2; }
out=$(mktemp)
ps=$(mktemp)
trap 'rm -f "$out" "$ps"' EXIT
steal() { awk '/^cpu /{ print $9 }' /proc/stat; }
calib() { # the loop's CPU time (user + system), in ms: not its wait for a core
  local TIMEFORMAT=%3U+%3S t
  t=$({ time awk 'BEGIN { s = 0; for (i = 0; i < 3000000; i++) s += i % 7; exit s < 0 }'; } 2>&1)
  awk -v t="$t" 'BEGIN { split(t, p, "+"); printf "%d", (p[1] + p[2]) * 1000 }'
}
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
perf_ok=false
perf stat -e cpu-migrations -x, -o "$ps" true >/dev/null 2>&1 && perf_ok=true
for ((r = 1; r <= runs; r++)); do
  c0=$(calib)
  st0=$(steal)
  load=$(cut -d' ' -f1 /proc/loadavg)
  if $perf_ok; then
    perf stat -e cpu-migrations,context-switches -x, -o "$ps" "$bin" bench engine "$@" >"$out" 2>&1
  else
    "$bin" bench engine "$@" >"$out" 2>&1
  fi || { echo "engine_runs.sh: run $r failed:" >&2; tail -3 "$out" >&2; exit 1; }
  st1=$(steal)
  c1=$(calib)
  line=$(tail -1 "$out")
  mig=- cs=-
  if $perf_ok; then
    mig=$(awk -F, '$3 == "cpu-migrations" { print $1 }' "$ps")
    cs=$(awk -F, '$3 == "context-switches" { print $1 }' "$ps")
  fi
  echo "run $r load $load events_per_s $(field events_per_s "$line") p99_us $(field p99_us "$line")" \
    "cpu_us_ev $(field loop_cpu_us_per_event "$line") sys_us_ev $(field loop_sys_us_per_event "$line") busy $(field loop_busy "$line")" \
    "calib_ms $c0/$c1 steal_ticks $((st1 - st0)) migrations $mig switches $cs"
done
