#!/usr/bin/env bash
# test_failsync.sh -- a real `caremesh serve` on 127.0.0.1 (a port it picks)
# whose WAL fsync fails (the LD_PRELOAD shim failsync.c, armed by a file):
# an engine event whose batch waits for its sync and a record write whose
# own commit's sync fails are both answered 503 outcome_unknown; the writes
# after them on the same connection 503 (unavailable), in request order; a
# read is not answered 200; /readyz 503; the node exits non-zero; after a
# restart every write answered 2xx is there and every refused one is not.
# usage: test_failsync.sh CAREMESH FAILSYNC_SO
set -uo pipefail
bin=$1
shim=$2
. "$(dirname "$0")/../lib/check.sh"
wait_limit_s=30
# an ASan build: the shim comes before the sanitizer's runtime
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

d=$tmp/node
"$bin" init --data "$d" --node-id failsync-node >/dev/null || { echo "FAIL: init"; exit 1; }
mkdir -p "$d/workflows"
cat >"$d/workflows/intake.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow {
  name = "intake", version = 1,
  input = { patient = "patient" },
  start = "open",
  states = {
    open = { on = { seen = "seen" } },
    seen = { on = { close = "closed" } },
    closed = { final = true },
  },
}
LUA
sed -i "s/^}\$/  api = { listen = \"127.0.0.1:0\" },\n}/" "$d/caremesh.conf"
admin=$("$bin" token create --scope admin --name ops --data "$d" 2>/dev/null)

# start [ENV=VALUE...]: serve in the background with ENV (no spaces in
# the values); $pid, $port, $base
start() { wrap="env $*" serve_start "$tmp/log"; }
# req METHOD PATH [BODY]: $status and $body
req() {
  local args=(-s -m "$wait_limit_s" -o "$tmp/body" -w '%{http_code}' -X "$1" -H 'Expect:' -H "Authorization: Bearer $admin")
  [ -n "${3-}" ] && args+=(-H "Content-Type: application/json" --data-binary "$3")
  status=$(curl "${args[@]}" "$base$2")
  body=$(cat "$tmp/body")
}
code() { jq -r .error.code <<<"$1" 2>/dev/null; }
# gone: poll (bounded) until the node $pid has exited; else kill it (-9), 1
gone() {
  for _ in $(seq 1 $((wait_limit_s * 20))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null
  return 1
}
# wait_file FILE: poll (bounded) until FILE exists
wait_file() {
  for _ in $(seq 1 $((wait_limit_s * 20))); do [ -e "$1" ] && return 0; sleep 0.05; done
  return 1
}

start CM_FAILSYNC="$tmp/arm" LD_PRELOAD="$shim"
req POST /v1/organizations '{"id":"org1","name":"Riverside Clinic","kind":"clinic"}'; same "org before" "$status" 201
req POST /v1/patients '{"id":"p1","name":{"family":"Doe"},"birthDate":"1970-01-01","gender":"female"}'
same "patient before" "$status" 201
req POST /v1/instances '{"workflow":"intake","input":{"patient":"p1"},"id":"i1"}'; same "start before" "$status" 201

# Armed: every sync of the WAL fails; the sync thread's first is held.
touch "$tmp/arm.hold" "$tmp/arm"
# An engine event: its batch commits and waits for the held sync.
curl -s -m "$wait_limit_s" -o "$tmp/event.body" -w '%{http_code}' -X POST -H 'Expect:' -H "Authorization: Bearer $admin" \
  -H "Content-Type: application/json" --data-binary '{"event":"seen"}' "$base/v1/instances/i1/events" \
  >"$tmp/event.status" &
event_curl=$!
wait_file "$tmp/arm.held" || bad "the event's batch never reached its sync"

# One connection, pipelined: a record write whose own commit's sync fails,
# a write after it, a read, /readyz.
w() { printf 'POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' "$1" "$admin" "${#2}" "$2"; }
g() { printf 'GET %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n%s\r\n' "$1" "$admin" "${2-}"; }
{
  w /v1/patients '{"id":"p2","name":{"family":"Roe"},"birthDate":"1980-02-02","gender":"male"}'
  w /v1/patients '{"id":"p3","name":{"family":"Poe"},"birthDate":"1990-03-03","gender":"male"}'
  g /v1/patients/p1
  g /readyz $'Connection: close\r\n'
} >"$tmp/pipeline"
exec 3<>"/dev/tcp/127.0.0.1/$port"
cat "$tmp/pipeline" >&3
timeout "$wait_limit_s" cat <&3 >"$tmp/answers"
exec 3<&- 3>&-
statuses=$(grep -ao 'HTTP/1.1 [0-9]*' "$tmp/answers" | cut -d' ' -f2 | tr '\n' ' ')
same "pipelined statuses, in order" "$statuses" "503 503 503 503 "
codes=$(grep -ao '"code":"[a-z_]*"' "$tmp/answers" | cut -d'"' -f4 | tr '\n' ' ')
first=${codes%% *}
same "the record write whose sync failed" "$first" outcome_unknown
same "the write after it" "$(cut -d' ' -f2 <<<"$codes")" unavailable
same "the read" "$(cut -d' ' -f3 <<<"$codes")" unavailable
same "readyz" "$(cut -d' ' -f4 <<<"$codes")" not_ready

# The event's batch waited for the failed sync: its outcome is unknown.
wait "$event_curl"
same "event status" "$(cat "$tmp/event.status")" 503
same "event code" "$(code "$(cat "$tmp/event.body")")" outcome_unknown

# The held sync goes on (and fails); the node stops, not with 0.
rm -f "$tmp/arm.hold"
gone || bad "the node did not stop after the failed fsync"
wait "$pid"; rc=$?; pid=
if [ "$rc" -ne 0 ]; then ok; else bad "the node exited 0 after a failed fsync"; fi
has "sync failure logged" '"store.sync_failed"' "$(cat "$tmp/log")"
# its exit status is not 0 either way: a sanitizer's report must not hide in it
if grep -qE 'Sanitizer|runtime error:' "$tmp/log"; then bad "sanitizer report: $(cat "$tmp/log")"; else ok; fi

# A restart without the shim: what was answered 2xx is there, what was
# refused is not; the outcome-unknown ones may be either.
start
req GET /v1/patients/p1; same "p1 after restart" "$status" 200
req GET /v1/organizations/org1; same "org1 after restart" "$status" 200
req GET /v1/instances/i1; same "i1 after restart" "$status" 200
req GET /v1/patients/p3; same "the refused write is not there" "$status" 404
req GET /v1/patients/p2
case $status in 200 | 404) ok ;; *) bad "p2 after restart: $status" ;; esac
req GET /readyz; same "ready after restart" "$status" 200
kill -TERM "$pid"
gone || bad "the node did not stop on SIGTERM"
wait "$pid"; same "serve stopped" $? 0; pid=
expect 0 "audit verify" -- "$bin" audit verify --data "$d"
check_done test_failsync
