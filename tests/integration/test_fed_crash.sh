#!/usr/bin/env bash
# test_fed_crash.sh -- issue 4: kill -9 either side of a federation link in the
# middle of a stream of 10,000 messages, several times, restarting the killed
# node each time; every message must end up applied exactly once and in the
# order sent, and the sender's outbox must drain with every row acknowledged.
# Two real `caremesh serve` processes on free loopback ports, configured as in
# test_fed.sh. Kill moments are conditions (B's inbox count passing a
# threshold), never blind sleeps; every wait is a bounded poll.
# The inbox is a WITHOUT ROWID table keyed by (peer, msg_id), so it has no
# arrival sequence of its own: the order of application is read from B's
# logs (fed.received / fed.duplicate lines, appended in the order commits
# happened, one log file per process run) and cross-checked with the
# inbox's `received` timestamps.
# usage: test_fed_crash.sh CAREMESH
set -uo pipefail
bin=$1
total=10000
. "$(dirname "$0")/../lib/check.sh"
. "$(dirname "$0")/fed_world.sh"
apid="" bpid=""
cleanup() {
  for p in $apid $bpid; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
runs_a=0 runs_b=0
# serve NAME: start node NAME (a or b) with a fresh log file for this run and
# wait (bounded, 20 s) until it is serving; a start that fails (e.g. the port
# not yet free after a kill) is retried. Sets apid or bpid.
serve() {
  local dir=$tmp/$1 n log pid
  for _ in $(seq 1 20); do
    if [ "$1" = a ]; then runs_a=$((runs_a + 1)); n=$runs_a; else runs_b=$((runs_b + 1)); n=$runs_b; fi
    log=$tmp/$1.$(printf %02d "$n").log
    "$bin" serve --data "$dir" 2>"$log" &
    pid=$!
    for _ in $(seq 1 400); do
      grep -qF '"event":"serve.ready"' "$log" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if grep -qF '"event":"serve.ready"' "$log" && kill -0 "$pid" 2>/dev/null; then
      if [ "$1" = a ]; then apid=$pid; else bpid=$pid; fi
      return 0
    fi
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    sleep 0.2
  done
  bad "node $1 does not start: $(tail -3 "$log")"
  return 1
}
inbox_count() { sql "$tmp/b/caremesh.db" "SELECT count(*) FROM inbox"; }
pending() { sql "$tmp/a/caremesh.db" "SELECT count(*) FROM outbox_state WHERE status = 'pending'"; }

a=$tmp/a b=$tmp/b
fed_pair "$a" "$b"
fed_world "$bin" "$a" node-a "$b" node-b || bad "creating organizations and the sink workflow"

serve a || exit 1
serve b || exit 1

# 10,000 rows in one transaction (one statement), as wf:send writes them; the
# payload carries the sequence number, which is also the outbox seq (a fresh
# database), so message id node-a:N carries payload {"n":N}. On B each one
# starts one instance of the sink workflow (fed_world.sh).
sql "$a/caremesh.db" "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $total)
  INSERT INTO outbox(receiver, kind, payload, created, sender, purpose, classes)
  SELECT 'cardio', 'test.note', json_object('n', i), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
         'clinic', 'care_coordination', 'notes' FROM c"
same "queued" "$(sql "$a/caremesh.db" "SELECT count(*), min(seq), max(seq) FROM outbox")" "$total|1|$total"

# Kill A and B alternately when B's inbox passes each threshold. Some
# thresholds follow the previous one closely, so that the kill lands soon
# after the other side has reconnected and resumed.
kills_a=0 kills_b=0 victim=a
for threshold in 400 450 1500 1560 3000 3020 5000 6500 8000 9200; do
  reached=""
  for _ in $(seq 1 1200); do # 60 s
    n=$(inbox_count)
    if [ "${n:-0}" -ge "$threshold" ]; then reached=$n; break; fi
    sleep 0.05
  done
  if [ -z "$reached" ]; then
    bad "B's inbox stuck at ${n:-?} below $threshold (before killing $victim)"
    break
  fi
  if [ "$victim" = a ]; then pid=$apid; else pid=$bpid; fi
  if kill -KILL "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null
    if [ "$victim" = a ]; then kills_a=$((kills_a + 1)); else kills_b=$((kills_b + 1)); fi
    echo "killed $victim at inbox $reached (threshold $threshold)"
  else
    bad "node $victim was not running when it was to be killed"
  fi
  serve "$victim" || break
  if [ "$victim" = a ]; then victim=b; else victim=a; fi
done
if [ "$kills_a" -ge 3 ] && [ "$kills_b" -ge 3 ]; then ok; else bad "kills: a $kills_a, b $kills_b (want >= 3 each)"; fi

# The outbox drains (bounded: 180 s).
left=""
for _ in $(seq 1 1800); do
  left=$(pending)
  [ "$left" = 0 ] && break
  sleep 0.1
done
same "A's outbox has nothing pending" "$left" 0

# ---- exactly once ----
same "inbox rows, distinct ids" \
  "$(sql "$b/caremesh.db" "SELECT count(*), count(DISTINCT msg_id) FROM inbox")" "$total|$total"
same "all from node-a, all received" \
  "$(sql "$b/caremesh.db" "SELECT count(*) FROM inbox WHERE peer = 'node-a' AND status = 'received'")" "$total"
same "each id carries its own payload, 1..$total" \
  "$(sql "$b/caremesh.db" "SELECT count(DISTINCT json_extract(payload, '\$.n')), min(json_extract(payload, '\$.n')), max(json_extract(payload, '\$.n')) FROM inbox WHERE msg_id = 'node-a:' || json_extract(payload, '\$.n')")" \
  "$total|1|$total"

same "applied once each: one sink instance per message, n = 1..$total" \
  "$(sql "$b/caremesh.db" "SELECT count(*), count(DISTINCT json_extract(input, '\$.n')), min(json_extract(input, '\$.n')), max(json_extract(input, '\$.n')) FROM instance WHERE workflow = 'sink' AND status = 'done'")" \
  "$total|$total|1|$total"
same "each inbox row names the instance it started, with its own n" \
  "$(sql "$b/caremesh.db" "SELECT count(*) FROM inbox x JOIN instance i ON i.id = x.instance WHERE json_extract(i.input, '\$.n') = json_extract(x.payload, '\$.n')")" "$total"

# ---- in order ----
# B's logs in run order: the first fed.received or fed.duplicate line of each
# id (a kill between commit and log line leaves a duplicate line on resend)
# must come in the order 1, 2, ..., total.
order=$(cat "$tmp"/b.*.log | grep -E '"event":"fed\.(received|duplicate)"' |
  sed -nE 's/.*"(received|duplicate) node-a:([0-9]+) .*/\2/p' |
  awk -v total="$total" '!seen[$1]++ { if ($1 != ++want) { bad++; if (!first) first = "position " want " got " $1 } }
    END { if (want != total) print "saw " want " of " total; else if (bad) print bad " out of order, first at " first; else print "in order" }')
same "applied in the order sent (B's logs)" "$order" "in order"
same "received timestamps never go back in send order" \
  "$(sql "$b/caremesh.db" "SELECT count(*) FROM (SELECT received, lag(received) OVER (ORDER BY CAST(json_extract(payload, '\$.n') AS INTEGER)) AS prev FROM inbox) WHERE received < prev")" 0

# ---- the sender's side ----
same "outbox: all delivered, none refused" \
  "$(sql "$a/caremesh.db" "SELECT count(*) FILTER (WHERE status = 'delivered' AND peer = 'node-b'), count(*) FILTER (WHERE status = 'refused') FROM outbox_state")" \
  "$total|0"
if cat "$tmp"/a.*.log | grep -qF '"event":"fed.refused_send"'; then bad "a refused a send"; else ok; fi

dups=$(cat "$tmp"/b.*.log | grep -cF '"event":"fed.duplicate"')
echo "kills: a $kills_a, b $kills_b; runs: a $runs_a, b $runs_b; duplicates acknowledged: $dups"

# ---- both stop cleanly at the end ----
for v in a b; do
  if [ "$v" = a ]; then pid=$apid; else pid=$bpid; fi
  kill -TERM "$pid"
  wait "$pid"
  same "node $v exits cleanly" "$?" 0
done
apid="" bpid=""
for f in "$tmp"/a.*.log "$tmp"/b.*.log; do
  # a kill -9 can cut a run's last line short; everything before it is JSON
  if head -n -1 "$f" | jq -e . >/dev/null 2>&1; then ok; else bad "$f is not JSON lines"; fi
done
check_done
