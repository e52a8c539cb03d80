# bench_node.sh -- sourced by tests/bench/bench_api.sh and
# tests/integration/test_bench_api.sh: a node in $tmp/node serving
# tests/bench/bench_api.lua on a free loopback port, with a write token.
# bench_node_start BIN SRC: sets d (data dir), token, pid and port; logs to
# $tmp/log; returns 1 (with the log's tail on stderr) if the node did not
# start within 20 s. BENCH_WRAP, if set, is a command the node runs under
# (tests/bench/api_profile.sh: callgrind); it is then given 120 s to start.
bench_node_start() {
  local bin=$1 src=$2
  d=$tmp/node
  "$bin" init --data "$d" --node-id bench >/dev/null || return 1
  mkdir "$d/workflows" && cp "$src/tests/bench/bench_api.lua" "$d/workflows/"
  sed -i 's/^}$/  api = { listen = "127.0.0.1:0" },\n}/' "$d/caremesh.conf"
  token=$("$bin" token create --scope write --data "$d" 2>/dev/null)
  local wait=400
  [ -n "${BENCH_WRAP:-}" ] && wait=2400
  ${BENCH_WRAP:-} "$bin" serve --data "$d" 2>"$tmp/log" &
  pid=$!
  for _ in $(seq 1 $wait); do grep -qsF '"serve.ready"' "$tmp/log" && break; sleep 0.05; done
  port=$(sed -n 's/.*HTTP API on 127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/log")
  [ -n "$port" ] || { echo "the bench node did not start: $(tail -3 "$tmp/log")" >&2; return 1; }
}
