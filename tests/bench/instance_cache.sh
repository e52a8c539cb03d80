#!/bin/bash
# instance_cache.sh BIN [RUNS]: what the engine's instance cache
# (engine.instance_cache) costs and saves, from `BIN bench engine` runs at
# 2,000 and 20,000 instances (25 events each, stepped in turn) with the cache
# at 4,096, 32,768 and 65,536 entries, and contexts of their usual size and
# of 4 KiB (--ctx-bytes 4096). One row per setting, the median of RUNS runs
# (default 3) by the loop thread's CPU per event:
#   rss_kb        the process's peak resident memory (max_rss_kb)
#   lua_kb        the Lua state's peak (lua_peak_kb): the contexts kept as
#                 tables live there, and count against lua.memory_mb
#   cached        the most entries the cache held (cache_peak)
#   misses        steps that read their instance's row (cache_misses)
#   ctx_reads     steps whose context Lua read from its text: a miss, or a
#                 hit whose table was not kept (past a quarter of the cap)
#   cpu_us_ev     the loop thread's CPU per event (loop_cpu_us_per_event)
#   events_s      durable events per second (events_per_s)
# e.g. bash tests/bench/instance_cache.sh build/caremesh 3
set -u
[ $# -ge 1 ] || { echo "usage: instance_cache.sh BIN [RUNS]" >&2; exit 2; }
bin=$1 runs=${2:-3}
[ -x "$bin" ] || { echo "instance_cache.sh: $bin is not an executable" >&2; exit 2; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "instance_cache.sh: RUNS must be a positive number, not '$runs'" >&2; exit 2; }
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
printf '%9s %7s %9s %8s %7s %7s %8s %9s %9s %9s\n' instances cache ctx_bytes rss_kb lua_kb \
  cached misses ctx_reads cpu_us_ev events_s
for pad in 0 4096; do
  for n in 2000 20000; do
    for cache in 4096 32768 65536; do
      rows=()
      for ((r = 1; r <= runs; r++)); do
        args=(--instances "$n" --events 25 --cache "$cache")
        [ "$pad" -eq 0 ] || args+=(--ctx-bytes "$pad")
        j=$("$bin" bench engine "${args[@]}" | tail -1)
        [ -n "$(field events_per_s "$j")" ] || { echo "instance_cache.sh: no JSON line from the run" >&2; exit 1; }
        rows+=("$(field loop_cpu_us_per_event "$j") $(field max_rss_kb "$j") $(field lua_peak_kb "$j") $(field cache_peak "$j") $(field cache_misses "$j") $(field ctx_reads "$j") $(field events_per_s "$j")")
      done
      read -r cpu rss lua cached misses reads eps < <(printf '%s\n' "${rows[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p")
      printf '%9s %7s %9s %8s %7s %7s %8s %9s %9s %9s\n' "$n" "$cache" "$pad" "$rss" "$lua" \
        "$cached" "$misses" "$reads" "$cpu" "$eps"
    done
  done
done
