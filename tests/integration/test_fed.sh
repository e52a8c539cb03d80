#!/usr/bin/env bash
# test_fed.sh -- two (and a third, unknown) nodes on loopback, each a real
# `caremesh serve` process: CURVE links come up, an outbox row arrives in the
# peer's inbox exactly once and in order, an unroutable row is refused with a
# reason, an unknown key is refused and named, random bytes on the port do no
# harm, and a peer that was down gets what was queued once it is back.
# Waits are bounded polls on log lines; ports are picked free by the kernel.
# A probe client (fedprobe) speaks what a real node never would: another
# protocol version, messages before hello, garbage, oversized messages.
# CM_WRAP (e.g. "valgrind --error-exitcode=99 ...") wraps the serving
# processes: a leak or memory error makes their exit status fail the test.
# A listener set up by the node's own code but with no ZAP handler in its
# process (nozap) must refuse a real node rather than admit it.
# usage: test_fed.sh CAREMESH FEDPROBE NOZAP
set -uo pipefail
bin=$1 probe=$2 nozap=$3
. "$(dirname "$0")/../lib/check.sh"
. "$(dirname "$0")/fed_world.sh"
wait_limit_s=20
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
check() { if wait_for "$1" "$2"; then ok; else bad "$3: $1 lacks '$2': $(tail -5 "$1")"; fi; }
serve() { # DIR LOG: start serve in the background (under $CM_WRAP, e.g. valgrind); pid in $spid
  ${CM_WRAP:-} "$bin" serve --data "$1" 2>>"$2" &
  spid=$!; pids+=("$spid")
}
stop() { # PID NAME: SIGTERM, must exit 0
  kill -TERM "$1"; wait "$1"; same "$2 exits cleanly" "$?" 0
}
queue() { fed_queue "$1/caremesh.db" "$2" "$4" "$3"; } # DIR ORG KIND N

a=$tmp/a b=$tmp/b c=$tmp/c
fed_pair "$a" "$b"
"$bin" init --data "$c" --node-id node-c >/dev/null
kc=$(pubkey "$c") pc=$(free_port)
configure "$c" "$pc" node-b "$pb" "$kb" # node-b does not know node-c's key
same "node info prints the configured endpoint" \
  "$("$bin" node info --data "$a" | sed -n 's/^endpoint: *//p')" "tcp://127.0.0.1:$pa"
fed_world "$bin" "$a" node-a "$b" node-b || bad "creating organizations and the sink workflow"

# ---- links come up; one message arrives once ----
serve "$a" "$tmp/a.log"; apid=$spid
serve "$b" "$tmp/b.log"; bpid=$spid
check "$tmp/a.log" '"event":"serve.ready"' "node a serving"
check "$tmp/a.log" 'peer node-b is up (protocol 1.2, batches)' "a sees b up, taking batches"
check "$tmp/b.log" 'peer node-a is up' "b sees a up"
check "$tmp/b.log" "admitted peer node-a from 127.0.0.1 (public key $ka)" "b admits a by its key"
queue "$a" cardio test.note 1
check "$tmp/a.log" 'node-a:1 delivered to node-b (received)' "first message acknowledged"
same "inbox holds it once" "$(sql "$b/caremesh.db" "SELECT peer, msg_id, kind, receiver, payload, status FROM inbox")" \
  'node-a|node-a:1|test.note|cardio|{"n":1}|received'
same "outbox row delivered" "$(sql "$a/caremesh.db" "SELECT status, peer FROM outbox_state WHERE seq = 1")" "delivered|node-b"
same "applied: the sink workflow ran once for it" "$(sql "$b/caremesh.db" "SELECT count(*), min(status) FROM instance WHERE workflow = 'sink'")" "1|done"
same "inbox names the instance it started" "$(sql "$b/caremesh.db" "SELECT i.workflow FROM inbox x JOIN instance i ON i.id = x.instance WHERE x.msg_id = 'node-a:1'")" "sink"

# ---- the directory and indicators B shares with A ----
check "$tmp/a.log" 'peer node-b shared 1 organization(s)' "B's directory arrives"
check "$tmp/b.log" 'peer node-a has our directory' "A acknowledged it"
out=$("$bin" peers --data "$a")
if grep -qF "org cardio: Heart Partners (specialist_practice), 1 provider(s), offers cardiology consult" <<<"$out"; then ok; else bad "peers shows B's directory: $out"; fi
same "only organizations of B's node" "$(sql "$a/caremesh.db" "SELECT group_concat(organization) FROM directory WHERE peer = 'node-b'")" "cardio"
same "no patient data in the directory" "$(sql "$a/caremesh.db" "SELECT count(*) FROM directory WHERE doc LIKE '%pat%' OR doc LIKE '%birthDate%'")" "0"
cat >"$tmp/dir.lua" <<'LUA'
local cm = require "caremesh"
local found = cm.directory.find { service = "cardiology consult" }
assert(#found == 1 and found[1].id == "cardio" and found[1].peer == "node-b", "directory.find")
assert(cm.directory.get("cardio").providers[1].specialty == "cardiology", "directory.get")
assert(#cm.directory.find { service = "dermatology" } == 0, "no such service")
LUA
"$bin" lua --data "$a" "$tmp/dir.lua" && ok || bad "the Lua API looks partners up"
tok=$("$bin" token create --scope read --name fedtest --data "$a" 2>/dev/null)
port=$(serve_port "$tmp/a.log" | head -1)
peers_json=$(curl -sf -H "Authorization: Bearer $tok" "http://127.0.0.1:$port/v1/peers")
same "the API shows B's directory" "$(jq -r '.items[0] | .id + " " + .organizations[0].id + " " + .organizations[0].services[0]' <<<"$peers_json")" "node-b cardio cardiology consult"
metrics=$(curl -sf -H "Authorization: Bearer $tok" "http://127.0.0.1:$port/metrics")
same "metrics: nothing from peers waits in the engine, reading never paused" \
  "$(grep -E '^caremesh_fed_(applying|apply_pauses_total) ' <<<"$metrics" | tr '\n' ' ')" \
  "caremesh_fed_applying 0 caremesh_fed_apply_pauses_total 0 "
indicators_seen=""
for _ in $(seq 1 300); do
  if "$bin" peers --data "$a" | grep -qE 'indicator notes/notes_received: count [1-9]'; then indicators_seen=1; break; fi
  sleep 0.1
done
if [ -n "$indicators_seen" ]; then ok; else bad "B's indicator (notes received) reaches A: $("$bin" peers --data "$a")"; fi

# ---- no peer for the organization's node: refused with a reason ----
queue "$a" faraway test.note 1
check "$tmp/a.log" 'outbox 2 refused: organization \"faraway\" is on node \"node-z\"' "unroutable row refused"
same "refusal recorded" "$(sql "$a/caremesh.db" "SELECT status, reason FROM outbox WHERE seq = 2")" \
  'refused|organization "faraway" is on node "node-z", which is not a configured peer'

# ---- in order ----
queue "$a" cardio test.note 20
check "$tmp/a.log" 'node-a:22 delivered to node-b' "a stream of 20 acknowledged"
got=$(grep -F '"event":"fed.received"' "$tmp/b.log" | sed -n 's/.*received node-a:\([0-9]*\) .*/\1/p' | tr '\n' ' ')
same "applied in the order sent" "$got" "1 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 "
same "each exactly once" "$(sql "$b/caremesh.db" "SELECT count(*), count(DISTINCT msg_id) FROM inbox")" "21|21"

# ---- what a real node never sends (with node-a's key: admitted, attributed to node-a) ----
out=$("$probe" "tcp://127.0.0.1:$pb" "$kb" "$a/node.key" \
  '{"type":"deliver","id":"probe:1","kind":"k","to":"cardio","payload":{}}' \
  '{"type":"hello","proto":"2.0","node":"node-a"}' \
  'not json at all' \
  '{"type":"hello","proto":"1.0","node":"impostor"}' \
  '{"type":"directory","id":"probe:dir","organizations":[{"id":"evil","name":"Evil Org","node":"node-z"}]}' \
  '{"type":"deliver","id":"node-a:1","kind":"k","to":"cardio","payload":{}}' \
  '{"type":"deliver","id":"probe:2","kind":"test.note","to":"cardio","from":"clinic","purpose":"care_coordination","classes":["notes"],"payload":{"n":7}}' \
  '@big:2000000')
mapfile -t replies <<<"$out"
has_reply() { if grep -qF -- "$3" <<<"${replies[$1]:-}"; then ok; else bad "$2: reply '${replies[$1]:-}' lacks '$3'"; fi; }
has_reply 0 "deliver before hello" '"code":"hello-required"'
has_reply 1 "unknown major version" '"code":"version"'
check "$tmp/b.log" 'peer node-a speaks protocol 2.0; this node speaks 1.2: refused' "version refusal logged"
has_reply 2 "garbage" '"code":"malformed"'
check "$tmp/b.log" 'peer node-a sent a bad message: not a JSON object' "garbage logged"
has_reply 3 "hello" '"type":"hello","proto":"1.2","node":"node-b"'
check "$tmp/b.log" 'says it is node \"impostor\"; attributing to node-a' "attribution by key"
has_reply 4 "a directory with an organization of another node" '"result":"received"'
check "$tmp/b.log" 'peer node-a: 1 organization(s) dropped: organization \"evil\" claims node \"node-z\", not node-a' "foreign organization dropped"
has_reply 5 "duplicate id" '"result":"duplicate"'
has_reply 6 "a new id" '"result":"received"'
same "recorded under the key's peer" "$(sql "$b/caremesh.db" "SELECT peer FROM inbox WHERE msg_id = 'probe:2'")" "node-a"
has_reply 7 "oversized message" '(no reply)'
same "nothing else recorded" "$(sql "$b/caremesh.db" "SELECT count(*) FROM inbox")" "22"

# ---- batches (1.2): each entry is taken as if it came alone and gets its own
# answer; the answers come back together, in entry order; a bad entry does not
# stop its neighbours; a batch wrong as a whole is refused whole ----
note() { echo '{"type":"deliver","id":"'"$1"'","kind":"test.note","to":"cardio","from":"clinic","purpose":"care_coordination","classes":["notes"],"payload":{"n":'"$2"'}}'; }
out=$("$probe" "tcp://127.0.0.1:$pb" "$kb" "$a/node.key" \
  '{"type":"batch","messages":['"$(note probe:3 3)"']}' \
  '{"type":"hello","proto":"1.2","node":"node-a","caps":["deliver","batch"]}' \
  '{"type":"batch","messages":['"$(note probe:3 3)"',{"type":"deliver","id":"probe:4","to":"cardio","payload":{}},7,{"type":"hello","proto":"1.2","node":"x"},'"$(note probe:5 5)"']}' \
  '{"type":"batch","messages":['"$(note probe:3 3)"']}' \
  '{"type":"batch","messages":[]}' \
  '{"type":"batch","messages":"x"}')
mapfile -t replies <<<"$out"
has_reply 0 "a batch before hello" '"code":"hello-required"'
has_reply 1 "hello announces batches" '"caps":["deliver","directory","indicators","batch"]'
same "one answer per entry, in order" "$(jq -r '[.messages[] | .result // .code] | join(" ")' <<<"${replies[2]:-}")" \
  "received malformed malformed unsupported received"
same "the bad entry is named, by its id and index" "$(jq -r '.messages[1] | .ref + " " + .message' <<<"${replies[2]:-}")" \
  "probe:4 messages[1]: kind: must be a non-empty string"
same "an entry that is not an object is named by index" "$(jq -r '.messages[2].message' <<<"${replies[2]:-}")" \
  "messages[2]: not a JSON object"
same "a hello cannot ride in a batch" "$(jq -r '.messages[3].message' <<<"${replies[2]:-}")" \
  "messages[3]: hello cannot travel in a batch"
same "the answers name their messages" "$(jq -r '[.messages[] | .id // .ref // "-"] | join(" ")' <<<"${replies[2]:-}")" \
  "probe:3 probe:4 - - probe:5"
same "a resent entry is a duplicate" "$(jq -r '.messages[0].result' <<<"${replies[3]:-}")" "duplicate"
has_reply 4 "an empty batch is refused whole" '"message":"messages: 0 messages (1 to 1024 allowed)"'
has_reply 5 "a batch without a list is refused whole" '"message":"messages: must be an array of messages"'
same "the good entries recorded, the bad one not" \
  "$(sql "$b/caremesh.db" "SELECT group_concat(msg_id, ' ') FROM (SELECT msg_id FROM inbox WHERE msg_id LIKE 'probe:%' ORDER BY msg_id)")" \
  "probe:2 probe:3 probe:5"

# ---- a flood: a peer sends several times what B's engine may hold, at once ----
# B reads only while its engine holds few enough (docs/federation.md, "Under
# load"), the rest waits in ZeroMQ and TCP: each message is applied once, in
# order, and no more than 2,048 are ever with the engine unanswered. Under
# CM_WRAP (valgrind, far slower) a smaller flood in smaller batches,
# each answered whole, that runs the same path within the probe's patience
flood_n=${CM_WRAP:+600:100}
flood_n=${flood_n:-6144:1024}
out=$("$probe" "tcp://127.0.0.1:$pb" "$kb" "$a/node.key" \
  '{"type":"hello","proto":"1.2","node":"node-a","caps":["deliver","batch"]}' "@flood:$flood_n")
flood_n=${flood_n%%:*}
same "every flooded message received once" "$(sed -n 2p <<<"$out")" \
  "flood: $flood_n sent, $flood_n received, 0 duplicate, 0 busy, 0 other"
same "each started its sink, in the order sent" \
  "$(sql "$b/caremesh.db" "SELECT count(*), sum(p IS NOT NULL AND n <> p + 1) FROM (SELECT CAST(substr(x.msg_id, 7) AS INTEGER) AS n, lag(CAST(substr(x.msg_id, 7) AS INTEGER)) OVER (ORDER BY i.seq) AS p FROM inbox x JOIN instance i ON i.id = x.instance WHERE x.msg_id LIKE 'flood:%' AND i.workflow = 'sink')")" \
  "$flood_n|0"
btok=$("$bin" token create --scope read --name fedtest --data "$b" 2>/dev/null)
bport=$(serve_port "$tmp/b.log" | head -1)
bmetrics=$(curl -sf -H "Authorization: Bearer $btok" "http://127.0.0.1:$bport/metrics")
applying_max=$(sed -n 's/^caremesh_fed_applying_max //p' <<<"$bmetrics")
if [ "${applying_max:-0}" -gt 0 ] && [ "$applying_max" -le 2048 ]; then ok; else bad "B's engine held $applying_max messages at once (at most 2048)"; fi
same "nothing left with B's engine" "$(sed -n 's/^caremesh_fed_applying //p' <<<"$bmetrics")" 0
same "nothing of A's left parked at B" \
  "$(grep -E '^caremesh_peer_parked_(messages|bytes)[{]peer="node-a"[}] ' <<<"$bmetrics" | tr '\n' ' ')" \
  'caremesh_peer_parked_messages{peer="node-a"} 0 caremesh_peer_parked_bytes{peer="node-a"} 0 '
bpeers=$(curl -sf -H "Authorization: Bearer $btok" "http://127.0.0.1:$bport/v1/peers")
same "the API shows A's parked delivers at B" "$(jq -r '.items[0] | .id + " " + (.parked|tostring) + " " + (.parked_bytes|tostring)' <<<"$bpeers")" "node-a 0 0"
out=$("$bin" peers --api "127.0.0.1:$bport" --token "$btok")
if grep -qE '^PEER +ENDPOINT +UP +PENDING +OLDEST_S +PARKED +PUBLIC KEY' <<<"$out" && grep -qE '^node-a .* 0 +[^ ]+$' <<<"$out"; then ok; else bad "peers shows what is parked: $out"; fi
echo "flood of $flood_n: at most $applying_max with the engine, reading paused $(sed -n 's/^caremesh_fed_apply_pauses_total //p' <<<"$bmetrics") time(s)"

# ---- an unknown key is refused, named on the refusing side ----
serve "$c" "$tmp/c.log"; cpid=$spid
check "$tmp/b.log" "public key $kc is not a configured peer" "b refuses c's key by name"
if grep -qF 'peer node-b is up' "$tmp/c.log"; then bad "c got a link to b"; else ok; fi
stop "$cpid" "node c"

# ---- a wrong key: node d has node-b's endpoint with another key (node a's) ----
"$bin" init --data "$tmp/d" --node-id node-d >/dev/null
configure "$tmp/d" "$(free_port)" node-b "$pb" "$ka"
serve "$tmp/d" "$tmp/d.log"; dpid=$spid
check "$tmp/d.log" "peer node-b at tcp://127.0.0.1:$pb refused the handshake or closed the connection during it" "a wrong key for b is named on d's side"
if grep -qF 'peer node-b is up' "$tmp/d.log"; then bad "d got a link to b with a wrong key"; else ok; fi
stop "$dpid" "node d"

# ---- random bytes on the listen port do no harm ----
for _ in 1 2 3; do head -c 65536 /dev/urandom >"/dev/tcp/127.0.0.1/$pb" 2>/dev/null; done
printf 'GET / HTTP/1.0\r\n\r\n' >"/dev/tcp/127.0.0.1/$pb" 2>/dev/null
queue "$a" cardio test.note 1
check "$tmp/a.log" 'node-a:23 delivered to node-b' "b still serves after garbage"
kill -0 "$bpid" 2>/dev/null && ok || bad "node b died on random bytes"

# ---- a peer that is down gets the message once it is back ----
stop "$bpid" "node b"
check "$tmp/a.log" 'peer node-b is down' "a notices b is down"
queue "$a" cardio test.note 3
check "$tmp/a.log" '"event":"fed.ready"' "a still serving"
out=$("$bin" peers --data "$a")
if grep -qE '^node-b +tcp://127.0.0.1:[0-9]+ +3 ' <<<"$out"; then ok; else bad "peers shows 3 pending: $out"; fi
# /metrics says the same to a scraper: the link down, 3 pending, the oldest aged
metrics=$(curl -sf -H "Authorization: Bearer $tok" "http://127.0.0.1:$port/metrics")
same "metrics: b down, 3 pending for it" \
  "$(grep -E '^caremesh_(peer_up|outbox_depth)\{peer="node-b"\} ' <<<"$metrics" | sort | tr '\n' ' ')" \
  'caremesh_outbox_depth{peer="node-b"} 3 caremesh_peer_up{peer="node-b"} 0 '
age=$(sed -n 's/^caremesh_outbox_oldest_age_seconds{peer="node-b"} //p' <<<"$metrics")
if awk -v a="$age" 'BEGIN { exit !(a > 0) }'; then ok; else bad "metrics: the oldest pending message's age: '$age'"; fi
serve "$b" "$tmp/b2.log"; bpid=$spid
check "$tmp/a.log" 'node-a:26 delivered to node-b' "queued messages delivered after restart"
# (bounded wait: the link coming up queues this node's directory and
# indicators for b, acknowledged a moment later)
for _ in $(seq 1 200); do
  metrics=$(curl -sf -H "Authorization: Bearer $tok" "http://127.0.0.1:$port/metrics")
  grep -qxF 'caremesh_outbox_depth{peer="node-b"} 0' <<<"$metrics" && break
  sleep 0.05
done
same "metrics: b up, nothing pending" \
  "$(grep -E '^caremesh_(peer_up|outbox_depth|outbox_oldest_age_seconds)\{peer="node-b"\} ' <<<"$metrics" | sort | tr '\n' ' ')" \
  'caremesh_outbox_depth{peer="node-b"} 0 caremesh_outbox_oldest_age_seconds{peer="node-b"} 0.000 caremesh_peer_up{peer="node-b"} 1 '
same "nothing twice after restart" "$(sql "$b/caremesh.db" "SELECT count(*), count(DISTINCT msg_id) FROM inbox WHERE msg_id NOT LIKE 'flood:%'")" "28|28"
out=$("$bin" peers --data "$a")
if grep -qE '^node-b +tcp://127.0.0.1:[0-9]+ +0 +- ' <<<"$out"; then ok; else bad "peers shows nothing pending: $out"; fi

# ---- a row too large for the wire is refused with a reason; the queue moves on ----
sql "$a/caremesh.db" "INSERT INTO outbox(receiver, kind, payload, created) VALUES ('cardio', 'big', json_object('x', hex(randomblob(600000))), strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
queue "$a" cardio test.note 1
check "$tmp/a.log" 'outbox 27 refused: message larger than the 1 MiB' "oversized row refused"
check "$tmp/a.log" 'node-a:28 delivered to node-b' "queue moves on after a refusal"

# ---- outside the partnership's terms: refused on arrival and audited; the sender is told ----
sql "$a/caremesh.db" "INSERT INTO outbox(receiver, kind, payload, created, sender, purpose, classes) VALUES ('cardio', 'test.note', '{\"n\":1}', strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'clinic', 'referral', 'notes')"
check "$tmp/a.log" 'outbox 29 refused: node node-b refused it: partnership notes has no term letting cardio receive data for the purpose \"referral\"' "terms refused on arrival"
same "refusal audited on arrival" "$(sql "$b/caremesh.db" "SELECT actor, action, outcome FROM audit WHERE detail LIKE '%node-a:29%'")" "peer:node-a|message.receive|refused"
same "refused message recorded, not applied" "$(sql "$b/caremesh.db" "SELECT status, instance IS NULL FROM inbox WHERE msg_id = 'node-a:29'")" "refused|1"
queue "$a" cardio unknown.kind 1
check "$tmp/a.log" 'outbox 30 refused: node node-b refused it: no workflow on this node is started by \"unknown.kind\"' "a kind no workflow takes is refused"
queue "$a" cardio test.note 1
check "$tmp/a.log" 'node-a:31 delivered to node-b (received)' "the queue moves on after refusals"
sql "$a/caremesh.db" "INSERT INTO outbox(receiver, kind, payload, created) VALUES ('cardio', printf('%.200c', 'k'), '{}', strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
queue "$a" cardio test.note 1
check "$tmp/a.log" 'outbox 32 refused: kind is longer than the 128 characters the protocol allows' "a field the protocol cannot carry is refused by the sender"
check "$tmp/a.log" 'node-a:33 delivered to node-b (received)' "the queue moves on after it"
same "b's audit chain verifies" "$("$bin" audit verify --data "$b" >/dev/null 2>&1; echo $?)" "0"

# ---- delivered marks lost (as an OS crash before their commit reached the
# disk would lose them): the rows are sent again, acknowledged as duplicates ----
stop "$apid" "node a"
inbox_before=$(sql "$b/caremesh.db" "SELECT count(*) FROM inbox")
# (the sweep's writes of rows under the mark, committed after the mark they
# read, are lost with it: the WAL keeps commits in order)
sql "$a/caremesh.db" "UPDATE fed_delivered SET seq = 2 WHERE peer = 'node-b'; UPDATE outbox SET status = 'pending', done_at = NULL WHERE peer = 'node-b' AND status = 'delivered' AND attempts = 0 AND seq > 2"
same "a row after the mark reads as pending again" "$(sql "$a/caremesh.db" "SELECT status FROM outbox_state WHERE seq = 3")" pending
received_before=$(grep -cF '"event":"fed.received"' "$tmp/b2.log")
serve "$a" "$tmp/a2.log"; apid=$spid
check "$tmp/a2.log" 'node-a:3 delivered to node-b (duplicate)' "resent, acknowledged as a duplicate"
check "$tmp/a2.log" 'node-a:33 delivered to node-b (duplicate)' "the last one too"
same "duplicates not recorded" "$(sql "$b/caremesh.db" "SELECT count(*) FROM inbox")" "$inbox_before"
same "a's marks back at the last delivered" "$(sql "$a/caremesh.db" "SELECT seq FROM fed_delivered WHERE peer = 'node-b'")" 33
same "b applied none of them again" "$(grep -cF '"event":"fed.received"' "$tmp/b2.log")" "$received_before"

# ---- a row routed to the peer only after later rows were delivered to it
# (row 2, refused above for want of a peer, made a pending row for cardio):
# it takes the next seq and goes after them ----
sql "$a/caremesh.db" "UPDATE outbox SET status = 'pending', receiver = 'cardio', peer = NULL, reason = NULL, done_at = NULL WHERE seq = 2"
check "$tmp/a2.log" 'a row for cardio routed to node-b after later rows were sent to it: queued as outbox 34' "a row routed late is queued after them"
check "$tmp/a2.log" 'node-a:34 delivered to node-b (received)' "and delivered"
same "received once" "$(sql "$b/caremesh.db" "SELECT count(*), json_extract(payload, '\$.n') FROM inbox WHERE msg_id = 'node-a:34'")" "1|1"
same "nothing left pending" "$(sql "$a/caremesh.db" "SELECT count(*) FROM outbox_state WHERE status = 'pending'")" 0

# ---- a node with no ZAP handler refuses a real node, whose key it would know ----
"$bin" init --data "$tmp/z" --node-id node-z >/dev/null
"$bin" init --data "$tmp/f" --node-id node-f >/dev/null
pz=$(free_port)
"$nozap" "$tmp/z/node.key" "tcp://127.0.0.1:$pz" >"$tmp/z.out" 2>&1 &
zpid=$!; pids+=("$zpid")
check "$tmp/z.out" listening "the listener without a ZAP handler is up"
configure "$tmp/f" "$(free_port)" node-z "$pz" "$(pubkey "$tmp/z")"
serve "$tmp/f" "$tmp/f.log"; fpid=$spid
check "$tmp/f.log" "peer node-z at tcp://127.0.0.1:$pz refused the handshake" "no ZAP handler: the handshake is refused"
kill -TERM "$zpid"; wait "$zpid"; same "nothing got through without a ZAP handler" "$?" 0
same "the listener without a ZAP handler admitted nothing" "$(tail -1 "$tmp/z.out")" "0 admitted"
stop "$fpid" "node f"

# ---- a listen endpoint in use: serve refuses to start, naming it ----
"$bin" init --data "$tmp/e" --node-id node-e >/dev/null
configure "$tmp/e" "$pa" node-a "$pa" "$ka"
"$bin" serve --data "$tmp/e" 2>"$tmp/e.log"; same "serve on a taken port exits 1" "$?" 1
if grep -qF "federation.listen tcp://127.0.0.1:$pa: Address already in use" "$tmp/e.log"; then ok; else bad "port in use not named: $(cat "$tmp/e.log")"; fi

stop "$apid" "node a"
stop "$bpid" "node b (restarted)"
for f in "$tmp"/*.log; do
  if jq -e . "$f" >/dev/null 2>&1; then ok; else bad "$f is not JSON lines"; fi
  for k in "$a" "$b" "$c" "$tmp/d"; do
    sk=$(sed -n 's/^secret-key *= *//p' "$k/node.key" | tr -d '"')
    if [ ${#sk} -eq 40 ] && ! grep -qF -- "$sk" "$f"; then ok; else bad "secret key of $k in $f (or unreadable)"; fi
  done
done
check_done
