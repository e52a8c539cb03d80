# sync_trace.sh -- sourced by tests/bench/bench_api.sh and
# tests/bench/compare_tarantool.sh when BENCH_SYNCS=1: strace attached to
# the server (all its threads) for the client's run, counting the system
# calls that make its writes durable, and how long each took. strace slows
# the calls it stops, so such a run's events/s and CPU are not the
# comparison's; read the counts, and the times against each other.
# sync_trace_start PID DIR CALLS: traces PID's CALLS (strace's -e trace=
#   list) into DIR/syncs; returns 1 (with strace's words on stderr) if it
#   did not attach within 10 s.
# sync_trace_stop: detaches strace.
# sync_trace_report FILE REQUESTS [FD...]: prints one line: the synced
#   writes in FILE, requests per synced write, the median, p90 and total
#   time in them. A synced write is an fsync or fdatasync, or a write
#   (writev, write, pwrite64) to one of the FDs (files opened with O_SYNC).
sync_strace=
sync_trace_start() {
  local pid=$1 dir=$2 calls=$3
  command -v strace >/dev/null || { echo "sync_trace.sh: BENCH_SYNCS needs strace" >&2; return 1; }
  strace -f -T -e trace="$calls" -o "$dir/syncs" -p "$pid" 2>"$dir/strace.err" &
  sync_strace=$!
  # attached once every thread of pid has a tracer
  local t ok
  for _ in $(seq 1 200); do
    ok=1
    for t in /proc/"$pid"/task/*; do
      [ "$(awk '/^TracerPid:/ { print $2 }' "$t/status")" != 0 ] || ok=
    done
    [ -n "$ok" ] && return 0
    sleep 0.05
  done
  echo "sync_trace.sh: strace did not attach to $pid: $(cat "$dir/strace.err")" >&2
  return 1
}
sync_trace_stop() {
  [ -n "$sync_strace" ] || return 0
  # the EXIT traps of scripts under set -e call this: a tracer already gone
  # must not stop the cleanup after it
  kill -INT "$sync_strace" 2>/dev/null || true
  wait "$sync_strace" || true
  sync_strace=
}
sync_trace_report() {
  local file=$1 n=$2
  shift 2
  # strace -f splits a call that another thread's interrupts as
  # "TID call(FD, ... <unfinished ...>" and "TID <... call resumed> ...
  # = RET <SECONDS>": the pending call and its fd are kept per thread
  awk -v fds=" $* " '
    function keep(call, fd) {
      return call == "fsync" || call == "fdatasync" || index(fds, " " fd " ") > 0
    }
    function secs(line) { sub(/.*</, "", line); sub(/>.*/, "", line); return line + 0 }
    $2 ~ /^[a-z0-9_]+\(/ {
      call = $2; sub(/\(.*/, "", call)
      fd = $2; sub(/^[a-z0-9_]+\(/, "", fd); sub(/[,)].*/, "", fd)
      if (/<unfinished \.\.\.>$/) { pcall[$1] = call; pfd[$1] = fd; next }
      if (/ = -?[0-9]+ <[0-9.]+>$/ && keep(call, fd)) print secs($0)
      next
    }
    $2 == "<..." && ($1 in pcall) {
      if (/ = -?[0-9]+ <[0-9.]+>$/ && keep(pcall[$1], pfd[$1])) print secs($0)
      delete pcall[$1]
    }' "$file" | sort -g | awk -v n="$n" '
    { v[NR] = $1; s += $1 }
    END {
      if (NR == 0) { print "synced writes: none"; exit }
      printf "synced writes: %d, %.1f requests each; time in one: median %.0f us, p90 %.0f us; in all %.3f s\n",
             NR, n / NR, v[int((NR + 1) / 2)] * 1e6, v[int((NR * 9 + 9) / 10)] * 1e6, s
    }'
}
