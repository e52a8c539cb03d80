#!/usr/bin/env bash
# test_crash.sh -- kill -9 the engine at arbitrary moments, restart it, and
# check that nothing acknowledged is lost and nothing is applied twice; then
# the same with the engine on a loop and group commit pipelined (acks after
# the sync thread's fsync).
# usage: test_crash.sh CRASHEE
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
total=800 # the last kill lands near 521: the final run has work left, as a rule
cat >"$tmp/counter.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow { name = "counter", version = 1, start = "counting",
  states = {
    counting = { on = { inc = function(wf, ev)
      if ev.n ~= (wf.ctx.last or 0) + 1 then error("out of order: " .. ev.n) end
      wf.ctx.last = ev.n
      wf.ctx.count = (wf.ctx.count or 0) + 1
    end } },
    done = { final = true },
  } }
LUA
passed=0 failed=0
check() { if [ "$2" = "$3" ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $1: got '$2', want '$3'"; fi; }
for mode in run pipeline; do
extra=()
[ "$mode" = pipeline ] && extra=(pipeline)
rm -f "$tmp/node.db" "$tmp/node.db-wal" "$tmp/node.db-shm"
acks=$tmp/acks
: >"$acks"
kills=0 lost=0
for target in 40 130 210 333 450 521; do
  "$bin" "$tmp/node.db" "$tmp/counter.lua" "$acks" "$total" "${extra[@]}" 2>"$tmp/err" &
  pid=$!
  # kill -9 as soon as at least $target events are acknowledged (bounded wait)
  for _ in $(seq 1 400); do
    [ "$(wc -l <"$acks")" -ge "$target" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  kill -9 "$pid" 2>/dev/null && kills=$((kills + 1))
  wait "$pid" 2>/dev/null
  # everything acknowledged before the kill is in the database
  durable=$(sqlite3 "$tmp/node.db" "SELECT coalesce(json_extract(ctx,'$.last'), 0) FROM instance WHERE id='c-1'")
  acked=$(sort -n "$acks" | tail -1)
  if [ "${acked:-0}" -gt "${durable:-0}" ]; then lost=$((lost + 1)); echo "FAIL ($mode): acknowledged $acked but only $durable is durable"; fi
done
before=$(sqlite3 "$tmp/node.db" "SELECT coalesce(json_extract(ctx,'$.last'), 0) FROM instance WHERE id='c-1'")
"$bin" "$tmp/node.db" "$tmp/counter.lua" "$acks" "$total" "${extra[@]}" || { echo "FAIL: final run ($mode): $(cat "$tmp/err")"; exit 1; }
ctx=$(sqlite3 "$tmp/node.db" "SELECT json_extract(ctx,'$.last') || ' ' || json_extract(ctx,'$.count') FROM instance WHERE id='c-1'")
hist=$(sqlite3 "$tmp/node.db" "SELECT count(*) FROM history WHERE instance='c-1' AND event='inc'")
maxack=$(sort -n "$acks" | tail -1)
dups=$(sort -n "$acks" | uniq -d | wc -l)
check "kills that landed" "$([ "$kills" -ge 3 ] && echo yes)" yes
check "crashes that lost an acknowledged event" "$lost" 0
check "last and count (each event applied once)" "$ctx" "$total $total"
check "history rows" "$hist" "$total"
if [ "${before:-0}" -lt "$total" ]; then
  check "highest acknowledged (by the final run)" "$maxack" "$total"
else # a killed run committed the last event but died before acknowledging it
  check "the last event is durable, acknowledged or not" "$before" "$total"
fi
check "events acknowledged twice" "$dups" 0
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
