# check.sh -- sourced by the shell tests: a private $tmp, removed on exit
# with the node serve_start started, if it still runs (a test with other
# processes to stop sets its own EXIT trap, which removes $tmp too), the
# pass/fail count and its checks, a bounded wait, a node started and
# stopped, and the closing line.

tmp=$(mktemp -d)
pid= # the node serve_start started, until serve_stop (or the test) reaps it
trap '[ -n "$pid" ] && { kill -CONT "$pid"; kill -9 "$pid"; } 2>/dev/null; rm -rf "$tmp"' EXIT
passed=0 failed=0
wait_limit_s=10 # how long wait_for polls before it gives up

ok()  { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }
# same NAME GOT WANT
same() { if [ "$2" = "$3" ]; then ok; else bad "$1: got '$2', want '$3'"; fi; }
# expect CODE NAME -- CMD...: run CMD, check its exit code, keep stdout+stderr in $out.
expect() {
  local want=$1 name=$2; shift 3
  out=$("$@" 2>&1); local got=$?
  if [ "$got" -eq "$want" ]; then ok; else bad "$name: exit $got, want $want; output: $out"; fi
}
# has NAME TEXT [IN] / lacks NAME TEXT: IN (default $out) must (not) contain TEXT.
has() {
  if [ $# -ge 3 ]; then
    if grep -qF -- "$2" <<<"$3"; then ok; else bad "$1: lacks '$2' in: ${3:0:600}"; fi
  elif grep -qF -- "$2" <<<"$out"; then ok; else bad "$1: output lacks '$2': $out"; fi
}
lacks() { if grep -qF -- "$2" <<<"$out"; then bad "$1: output has '$2': $out"; else ok; fi; }
# wait_for FILE TEXT: poll (bounded by wait_limit_s) until FILE contains TEXT.
wait_for() {
  for _ in $(seq 1 $((wait_limit_s * 20))); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05
  done
  return 1
}
# serve_port LOG: the HTTP API's port in the log of a `caremesh serve` that
# listens on 127.0.0.1 (a port it picked: `listen = "127.0.0.1:0"`).
serve_port() { sed -n 's/.*HTTP API on 127.0.0.1:\([0-9]*\).*/\1/p' "$1"; }
# serve_start LOG [ARG...]: `$wrap $bin serve --data $d ARG...` in the
# background (wrap: a command to run it under, e.g. valgrind or env), its
# log in LOG; waits (bounded) until it is ready, else the test fails here.
# Sets pid, port and base (http://127.0.0.1:PORT).
serve_start() {
  local log=$1
  shift
  : >"$log"
  ${wrap:-} "$bin" serve --data "$d" "$@" 2>"$log" &
  pid=$!
  wait_for "$log" '"serve.ready"' || { bad "serve did not start: $(cat "$log")"; exit 1; }
  port=$(serve_port "$log")
  base="http://127.0.0.1:$port"
}
# serve_stop: SIGTERM to the node serve_start started, and its exit status.
serve_stop() {
  kill -TERM "$pid"
  wait "$pid"
  local rc=$?
  pid=
  return $rc
}
# check_done [NAME]: the closing line; the status is the test's (1 on a failure).
check_done() {
  echo "${1:+$1: }$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
