# fed_world.sh -- sourced by the federation tests: the records and the
# workflow two test nodes need so that messages between them are applied.
# Node A hosts organization "clinic", node B "cardio"; a partnership lets
# cardio receive notes from clinic for care coordination. On B a workflow
# "sink" is started by every "test.note" message (one instance each) and
# counts it as the KPI notes_received, which the partnership lists: B shares
# its directory (cardio, its provider, its service) and that indicator with A.
# Also what both tests use to set up their nodes (the caremesh binary in $bin).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pubkey() { "$bin" node info --data "$1" | sed -n 's/^public key: //p'; }
sql() { sqlite3 "$1" ".timeout 10000" "$2"; }
# configure DIR PORT PEER_ID PEER_PORT PEER_KEY
configure() {
  sed -i '$d' "$1/caremesh.conf"
  cat >>"$1/caremesh.conf" <<CONF
  federation = {
    listen = "tcp://127.0.0.1:$2",
    peers = { { id = "$3", endpoint = "tcp://127.0.0.1:$4", public_key = "$5" } },
  },
  api = { listen = "127.0.0.1:0" }, -- a port of its own: tests run side by side
}
CONF
}
# fed_pair DIR_A DIR_B: nodes node-a and node-b, each the other's peer on a
# free loopback port; sets ka kb (their public keys) and pa pb (their ports).
fed_pair() {
  "$bin" init --data "$1" --node-id node-a >/dev/null
  "$bin" init --data "$2" --node-id node-b >/dev/null
  ka=$(pubkey "$1") kb=$(pubkey "$2")
  pa=$(free_port) pb=$(free_port)
  configure "$1" "$pa" node-b "$pb" "$kb"
  configure "$2" "$pb" node-a "$pa" "$ka"
}

# fed_world BIN DIR_A NODE_A DIR_B NODE_B
fed_world() {
  local bin=$1 a=$2 na=$3 b=$4 nb=$5 dir
  for dir in "$a" "$b"; do
    cat >"$dir/world.lua" <<LUA
local cm = require "caremesh"
cm.organization.create { id = "clinic", name = "Main St Clinic", kind = "clinic", node = "$na" }
cm.organization.create { id = "cardio", name = "Heart Partners", kind = "specialist_practice",
                         node = "$nb" }
cm.organization.create { id = "faraway", name = "Far Away Clinic", kind = "clinic", node = "node-z" }
cm.provider.create { id = "dr-osei", name = { family = "Osei", given = { "Kwame" } },
                     role = "physician", specialty = "cardiology", organization = "cardio" }
cm.partnership.create {
  id = "notes", name = "Clinic - cardiology notes", purpose = "care coordination",
  reviewCadence = "annual", kpis = { { name = "notes_received" } },
  members = { { organization = "clinic" },
              { organization = "cardio", offers = { "cardiology consult" } } },
  terms = { { receiver = "cardio", classes = { "notes" }, purposes = { "care_coordination" } } },
}
LUA
    "$bin" lua --data "$dir" "$dir/world.lua" >/dev/null || return 1
  done
  mkdir -p "$b/workflows"
  cat >"$b/workflows/sink.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow {
  name = "sink", version = 1,
  started_by = { "test.note" },
  input = { from = "organization", to = "organization", n = "integer?", x = "string?" },
  start = "got",
  states = {
    got = { final = true,
            enter = function(wf) wf:kpi("notes_received", 1, { partner = wf.input.from }) end },
  },
}
LUA
}

# fed_queue DB ORG N [KIND]: N outbox rows from clinic to ORG, as wf:send
# writes them (purpose care_coordination, class notes), payload {"n": i}.
fed_queue() {
  local values="" i
  for i in $(seq 1 "$3"); do
    values+="${values:+,}('$2', '${4:-test.note}', '{\"n\":$i}', strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'clinic', 'care_coordination', 'notes')"
  done
  sqlite3 "$1" ".timeout 10000" \
    "INSERT INTO outbox(receiver, kind, payload, created, sender, purpose, classes) VALUES $values"
}
