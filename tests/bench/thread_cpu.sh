#!/bin/bash
# thread_cpu.sh CMD [ARGS...]: run CMD, sample the CPU time (user + system)
# of each of its threads from /proc every 20 ms until it exits, then print
# CMD's last output line and, per thread, its name and CPU seconds, the
# busiest first. For telling which thread bounds a benchmark, e.g.
#   bash tests/bench/thread_cpu.sh build/caremesh bench federation --messages 100000
# (a thread's last sample is taken up to 20 ms before it ends).
set -u
[ $# -ge 1 ] || { echo "usage: thread_cpu.sh CMD [ARGS...]" >&2; exit 2; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$@" >"$out" 2>&1 &
pid=$!
tck=$(getconf CLK_TCK)
declare -A cpu name
while kill -0 "$pid" 2>/dev/null; do
  for st in /proc/"$pid"/task/*/stat; do
    line=$(cat "$st" 2>/dev/null) || continue
    tid=${st#/proc/"$pid"/task/}; tid=${tid%/stat}
    comm=${line#*(}; comm=${comm%)*}
    rest=${line##*) }
    read -r -a f <<<"$rest"
    cpu[$tid]=$((f[11] + f[12]))
    name[$tid]=$comm
  done
  sleep 0.02
done
wait "$pid"; rc=$?
tail -1 "$out"
for tid in "${!cpu[@]}"; do
  printf '%s %s %d.%02d\n' "$tid" "${name[$tid]}" $((cpu[$tid] / tck)) $((cpu[$tid] * 100 / tck % 100))
done | sort -k3 -n -r | awk '{ printf "  thread %s (%s): %s s\n", $1, $2, $3 }'
exit "$rc"
