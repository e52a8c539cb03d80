# check.sh -- sourced by the shell tests: a private $tmp, removed on exit (a
# test with processes to stop sets its own EXIT trap, which removes it too),
# the pass/fail count and its checks, a bounded wait, and the closing line.

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
# check_done [NAME]: the closing line; the status is the test's (1 on a failure).
check_done() {
  echo "${1:+$1: }$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
