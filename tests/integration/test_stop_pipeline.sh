#!/usr/bin/env bash
# test_stop_pipeline.sh -- SIGTERM while a connection has pipelined more
# requests than `api.max_pipeline`: every complete request read is answered
# in order (those the API took up as usual, those still in the read buffer
# 503 `unavailable`, the last with `Connection: close`); each start answered
# 201 is in the store after the node exits, none answered 503 is. /readyz
# while stopping: pipelined last, it is answered 503 `unavailable`; a probe
# on a new connection after SIGTERM is refused (the listener is closed).
# usage: test_stop_pipeline.sh CAREMESH   (CM_WRAP: a command to run serve under)
set -uo pipefail
bin=$1
wrap=${CM_WRAP:-}
. "$(dirname "$0")/../lib/check.sh"
wait_limit_s=60

d=$tmp/node
"$bin" init --data "$d" --node-id stop-node >/dev/null || { echo "FAIL: init"; exit 1; }
mkdir -p "$d/workflows"
# each start takes a while (a loop in its first handler), so SIGTERM comes
# while most of the pipelined starts still wait in the read buffer
cat >"$d/workflows/slow.lua" <<'EOF'
local cm = require "caremesh"
return cm.workflow {
  name = "slow", version = 1,
  input = { patient = "patient" },
  start = "open",
  states = {
    open = {
      enter = function(wf)
        local x = 0
        for i = 1, 2000000 do x = x + i end
      end,
      on = { close = "closed" },
    },
    closed = { final = true },
  },
}
EOF
sed -i 's/^}$/  api = { listen = "127.0.0.1:0", max_pipeline = 2, timeout_ms = 20000 },\n  lua = { instructions = 100000000 },\n}/' "$d/caremesh.conf"
writer=$("$bin" token create --scope write --name w --data "$d" 2>/dev/null)

serve_start "$tmp/log"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $writer" \
  -H 'Content-Type: application/json' \
  --data-binary '{"id":"p1","name":{"family":"One"},"birthDate":"1970-01-01","gender":"other"}' \
  "http://127.0.0.1:$port/v1/patients")
same "patient made" "$code" 201

# 40 starts in one write (well under the 16 KiB read buffer, so the node
# reads them all at once), 2 taken up at a time
n=40
reqs=
for i in $(seq 1 $n); do
  body="{\"workflow\":\"slow\",\"input\":{\"patient\":\"p1\"},\"id\":\"pipe-$i\"}"
  reqs+="POST /v1/instances HTTP/1.1"$'\r\n'"Host: t"$'\r\n'"Authorization: Bearer $writer"$'\r\n'
  reqs+="Content-Type: application/json"$'\r\n'"Content-Length: ${#body}"$'\r\n\r\n'"$body"
done
reqs+="GET /readyz HTTP/1.1"$'\r\n'"Host: t"$'\r\n\r\n' # a probe behind the starts
exec 3<>"/dev/tcp/127.0.0.1/$port"
(timeout 120 cat <&3 >"$tmp/answers") &
reader=$!
printf '%s' "$reqs" >"$tmp/reqs"
cat "$tmp/reqs" >&3 # one write
wait_for "$tmp/answers" 'HTTP/1.1 201' || bad "no start was answered"
kill -TERM "$pid"
wait_for "$tmp/log" '"api.draining"' || bad "the node did not start draining"
probe=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")
same "a /readyz probe after SIGTERM is refused" "$probe" 000
serve_stop; same "serve exits 0 after SIGTERM" $? 0
wait "$reader"; same "the connection was closed by the node" $? 0
exec 3>&-

statuses=$(grep -ao 'HTTP/1.1 [0-9]*' "$tmp/answers" | cut -d' ' -f2)
same "every request answered" "$(wc -l <<<"$statuses")" "$((n + 1))"
same "the /readyz behind them is answered 503 while stopping" "$(tail -n 1 <<<"$statuses")" 503
has "the /readyz says unavailable" '"code":"unavailable"' "$(tail -c 400 "$tmp/answers")"
statuses=$(head -n "$n" <<<"$statuses") # the starts
n201=$(grep -c '^201$' <<<"$statuses")
n503=$(grep -c '^503$' <<<"$statuses")
echo "stop_pipeline: $n201 answered 201, $n503 answered 503"
same "each answered 201 or 503" "$((n201 + n503))" "$n"
if [ "$n503" -ge 1 ]; then ok; else bad "no request was still waiting when the node stopped"; fi
same "201s first, then the 503s in their turn" "$(uniq <<<"$statuses" | tr '\n' ' ')" "201 503 "
same "each 503 says unavailable" "$(grep -o '"code":"unavailable"' "$tmp/answers" | wc -l)" "$((n503 + 1))"
same "only the last answer closes" "$(grep -c 'Connection: close' "$tmp/answers")" 1
has "the last answer closes" "Connection: close" "$(tail -c 400 "$tmp/answers")"
has "the log tells of the refusals" '"http.refused"' "$(cat "$tmp/log")"

# in request order: the first n201 were started, the rest were not
started=$(sqlite3 "$d/caremesh.db" "SELECT id FROM instance WHERE id LIKE 'pipe-%'" | sort)
want=$(for i in $(seq 1 "$n201"); do echo "pipe-$i"; done | sort)
same "each start answered 201 is in the store, none answered 503" "$started" "$want"

# the node starts again on the same store and shows the same
serve_start "$tmp/log2"
for i in 1 "$n201" "$((n201 + 1))" "$n"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $writer" \
    "http://127.0.0.1:$port/v1/instances/pipe-$i")
  if [ "$i" -le "$n201" ]; then same "pipe-$i there after restart" "$code" 200
  else same "pipe-$i not there after restart" "$code" 404; fi
done
serve_stop; same "restarted serve exits 0" $? 0
check_done test_stop_pipeline
