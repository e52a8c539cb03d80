#!/usr/bin/env bash
# test_cliapi.sh -- the CLI commands that talk to a running node's API, against
# a real `caremesh serve` on 127.0.0.1 (a port it picks): every command's
# tables and --json, paging, where the address and token come from, and the
# error paths (bad JSON, unknown ids, wrong scope, bad token, node down, a
# node that does not answer) each with its exit code and message, changing
# nothing. peers and audit verify fall back to the database when the node is
# down.
# usage: test_cliapi.sh CAREMESH   (CM_WRAP: a command to run serve and the
# CLI under, e.g. valgrind)
set -uo pipefail
bin=$1
wrap=${CM_WRAP:-}
. "$(dirname "$0")/../lib/check.sh"
# cm WANT NAME -- ARGS...: run caremesh ARGS; check the exit code; $out (stdout), $err (stderr)
cm() {
  local want=$1 name=$2; shift 3
  $wrap "$bin" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  local got=$?
  out=$(cat "$tmp/out"); err=$(cat "$tmp/err")
  if [ "$got" -eq "$want" ]; then ok; else bad "$name: exit $got, want $want; stdout: ${out:0:400}; stderr: ${err:0:400}"; fi
}
# cme WANT NAME "VAR=VALUE..." -- ARGS...: the same with those environment variables
cme() {
  local want=$1 name=$2 vars=$3; shift 4
  env $vars $wrap "$bin" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  local got=$?
  out=$(cat "$tmp/out"); err=$(cat "$tmp/err")
  if [ "$got" -eq "$want" ]; then ok; else bad "$name: exit $got, want $want; stdout: ${out:0:400}; stderr: ${err:0:400}"; fi
}
# cm_in WANT NAME INPUT -- ARGS...: the same with INPUT on stdin
cm_in() {
  local want=$1 name=$2 input=$3; shift 4
  printf '%s' "$input" | $wrap "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  out=$(cat "$tmp/out"); err=$(cat "$tmp/err")
  if [ "$got" -eq "$want" ]; then ok; else bad "$name: exit $got, want $want; stdout: ${out:0:400}; stderr: ${err:0:400}"; fi
}
has()    { if grep -qF -- "$2" <<<"$3"; then ok; else bad "$1: lacks '$2' in: ${3:0:600}"; fi; }
hasnt()  { if grep -qF -- "$2" <<<"$3"; then bad "$1: has '$2' in: ${3:0:600}"; else ok; fi; }
count()  { sqlite3 "$d/caremesh.db" "$1"; }
# wait_for FILE TEXT: poll (bounded, 30 s) until FILE contains TEXT.
wait_for() {
  for _ in $(seq 1 600); do grep -qF -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

d=$tmp/node
"$bin" init --data "$d" --node-id cli-node >/dev/null || { echo "FAIL: init"; exit 1; }
mkdir -p "$d/workflows"
cat >"$d/workflows/intake.lua" <<'EOF'
local cm = require "caremesh"
return cm.workflow {
  name = "intake", version = 1,
  input = { patient = "patient", note = "string?" },
  start = "open",
  states = {
    open = {
      enter = function(wf)
        wf:task { title = "Call the patient", organization = "org1", patient = wf.input.patient, role = "nurse" }
        wf:after("2d", "remind")
      end,
      on = {
        seen = function(wf, payload)
          wf:kpi("calls_made", 2)
          wf.ctx.seen_by = payload and payload.by
          return "seen"
        end,
        remind = "open",
        boom = function(wf) error("boom") end,
      },
    },
    seen = { on = { close = "closed" } },
    closed = { final = true },
  },
}
EOF
# The API on a port the system picks; the CLI learns it from the config,
# which serve reads at start only.
set_listen() {
  sed -i '/^  api = /d' "$d/caremesh.conf"
  sed -i "s/^}\$/  api = { listen = \"127.0.0.1:$1\", timeout_ms = 3000 },\n}/" "$d/caremesh.conf"
}
start() {
  set_listen 0
  serve_start "$tmp/log"
  set_listen "$port"
}
stop() { serve_stop; }

# ---- tokens: --save writes DIR/cli.token 0600 and prints nothing secret ----
cm 0 "token create --save" -- token create --scope admin --name ops --save --data "$d"
same "saved token mode" "$(stat -c %a "$d/cli.token")" 600
same "nothing on stdout with --save" "$out" ""
has "save says where" "saved to $d/cli.token" "$err"
admin=$(cat "$d/cli.token")
same "saved token text" "${#admin}" 85
writer=$("$bin" token create --scope write --name frontdesk --data "$d" 2>/dev/null)
reader=$("$bin" token create --scope read --name reader --data "$d" 2>/dev/null)
gone=$("$bin" token create --scope admin --name gone --data "$d" 2>/dev/null)
"$bin" token revoke gone --data "$d" >/dev/null
cm 1 "--save into a missing dir" -- token create --scope read --name x1 --save --data "$tmp/nodir"
same "a refused --save left no token" "$(count "SELECT count(*) FROM api_token WHERE name='x1'")" 0

# ---- help ----
for c in status org provider patient partnership consent start signal instances show pause resume cancel tasks failed kpi peers audit; do
  cm 0 "$c --help" -- "$c" --help; has "$c --help" "usage: caremesh $c" "$out"
done
cm 0 "overview" -- --help; has "overview lists the API commands" "commands that talk to a running node's API" "$out"
has "overview lists instances" "instances" "$out"
cm 0 "help start" -- help start; has "help start" "--input" "$out"

# ---- node down: a clear line, exit 1; peers and audit read the database ----
set_listen 0
cm 1 "status, node down" -- status --data "$d"
has "status down message" "api.listen has port 0" "$err"
set_listen 1   # nothing listens on port 1
cm 1 "status, nothing listening" -- status --data "$d"
has "unreachable message" "node not reachable: cannot connect to 127.0.0.1:1" "$err"
has "unreachable hint" "is 'caremesh serve' running?" "$err"
same "one line" "$(wc -l <<<"$err")" 1
cm 0 "peers, node down: the database" -- peers --data "$d"
has "peers fallback note" "reading $d directly" "$err"
has "peers fallback output" "federation is not configured" "$out"
cm 0 "audit verify, node down: the database" -- audit verify --data "$d"
has "audit fallback output" "audit trail intact" "$out"
cm 0 "audit verify --offline --json" -- audit verify --offline --json --data "$d"
same "audit offline json" "$(jq -r .ok <<<"$out")" true
cm 1 "peers, explicit --api down: no fallback" -- peers --data "$d" --api 127.0.0.1:1
has "peers explicit api down" "node not reachable" "$err"

start

# ---- status ----
cm 0 status -- status --data "$d"
has "status node" "127.0.0.1:$port: healthy, ready" "$out"
has "status workflows" "intake (rev 1)" "$out"
cm 0 "status --json" -- status --data "$d" --json
same "status json ready" "$(jq -r .ready.status <<<"$out")" ready
same "status json workflows" "$(jq -r '.workflows.items[0].name' <<<"$out")" intake
# address and token from the environment, and from flags
cme 0 "status from the environment" "CAREMESH_API=127.0.0.1:$port CAREMESH_TOKEN=$reader" -- status
has "status env" "healthy, ready" "$out"
cm 0 "status from flags" -- status --api "http://127.0.0.1:$port" --token "$reader"
cme 0 "CAREMESH_DATA" "CAREMESH_DATA=$d" -- status

# ---- records: add (flags, file, stdin, inline), show, list ----
cm 0 "org add flags" -- org add --id org1 --name "Riverside Clinic" --kind clinic --data "$d"
same "org add says" "$out" "created organization org1 (version 1)"
printf '{"id":"org2","name":"Cardio Partners","kind":"specialist_practice"}' >"$tmp/org2.json"
cm 0 "org add file" -- org add "$tmp/org2.json" --data "$d" --json
same "org add --json is the API's" "$(jq -r .meta.versionId <<<"$out")" 1
cm_in 0 "org add stdin" '{"id":"org3","name":"Town Pharmacy","kind":"community_pharmacy"}' -- org add - --data "$d"
cm_in 0 "org add stdin without -" '{"id":"org4","name":"Health Dept","kind":"public_health"}' -- org add --data "$d"
cm 0 "org add inline, flags over it" -- org add '{"id":"org5","name":"Old","kind":"other"}' --name "Community Org" --data "$d"
same "flags set over the document" "$(count "SELECT json_extract(doc,'$.name') FROM record WHERE kind='organization' AND id='org5'")" "Community Org"
long_name=$(printf 'é%.0s' $(seq 1 70))
cm 0 "org add, a long UTF-8 name" -- org add --id org6 --name "$long_name" --kind other --data "$d"
cm 0 "org list cuts long cells on a character" -- org list --kind other --data "$d"
has "cut cell" "$(printf 'é%.0s' $(seq 1 57))..." "$out"
if iconv -f UTF-8 -t UTF-8 <<<"$out" >/dev/null 2>&1; then ok; else bad "a cut cell is not UTF-8: $out"; fi
cm 0 "org show" -- org show org1 --data "$d"
has "org show name" "Riverside Clinic" "$out"; has "org show kind" "clinic" "$out"
cm 0 "org show --json" -- org show org1 --data "$d" --json
same "org show json" "$(jq -r .name <<<"$out")" "Riverside Clinic"
cm 0 "org list" -- org list --data "$d"
if grep -qE '^ID +NAME +KIND +NODE$' <<<"$out"; then ok; else bad "org list header: $out"; fi
if grep -qE '^org2 +Cardio Partners +specialist_practice +-$' <<<"$out"; then ok; else bad "org list row: $out"; fi
cm 0 "org list --kind" -- org list --kind clinic --data "$d" --json
same "org filter" "$(jq -r '[.items[].id] | join(",")' <<<"$out")" org1
cm 0 "org list --limit" -- org list --limit 2 --data "$d" --json
same "org limit" "$(jq '.items | length' <<<"$out")" 2
same "org limit cursor" "$(jq -r .next_cursor <<<"$out")" org2
cm 0 "provider add" -- provider add --id dr1 --family Lee --given Ann --role physician --organization org1 --data "$d"
cm 0 "provider list" -- provider list --organization org1 --data "$d"
if grep -qE '^dr1 +Ann Lee +physician +org1$' <<<"$out"; then ok; else bad "provider row: $out"; fi
cm 0 "patient add" -- patient add --id p1 --family Rivera --given Maria --birth-date 1960-04-02 --gender female --gp org1 --data "$d"
cat >"$tmp/p2.json" <<'EOF'
{"id": "p2", "name": {"family": "Okafor", "given": ["Chidi"]}, "birthDate": "1971-11-30",
 "gender": "male", "conditions": [{"code": "E11"}]}
EOF
cm 0 "patient add file" -- patient add "$tmp/p2.json" --data "$d"
cm 0 "patient list --condition" -- patient list --condition E11 --data "$d"
if grep -qE '^p2 +Chidi Okafor +1971-11-30 +male +-$' <<<"$out"; then ok; else bad "patient row: $out"; fi
hasnt "patient filter" "Rivera" "$out"
cm 0 "patient show" -- patient show p1 --data "$d"
if grep -qE '^name +Maria Rivera$' <<<"$out"; then ok; else bad "patient show: $out"; fi
cat >"$tmp/ps.json" <<'EOF'
{"id": "ps1", "name": "Heart referrals", "purpose": "Referrals to cardiology",
 "members": [{"organization": "org1"}, {"organization": "org2"}], "reviewCadence": "quarterly"}
EOF
cm 0 "partnership add" -- partnership add "$tmp/ps.json" --data "$d"
cm 0 "partnership list" -- partnership list --data "$d"
if grep -qE '^ps1 +Heart referrals +active +org1,org2 +quarterly$' <<<"$out"; then ok; else bad "partnership row: $out"; fi
cm 0 "consent add" -- consent add --id c1 --patient p1 --purpose referral --decision permit --data "$d"
cm 0 "consent list" -- consent list --patient p1 --data "$d" --json
same "consent list" "$(jq -r '.items[0].decision' <<<"$out")" permit
cm 0 "consent show" -- consent show c1 --data "$d"; has "consent show" "referral" "$out"

# ---- record errors: each exit 1 (2 for the command line), nothing changed ----
records() { count "SELECT count(*) FROM record"; }
before=$(records)
printf '{"id":"org9",\n "name": "Bad",\n "kind": clinic}' >"$tmp/bad.json"
cm 1 "bad JSON file" -- org add "$tmp/bad.json" --data "$d"
has "bad JSON names file, line and column" "$tmp/bad.json:3:10: malformed JSON" "$err"
cm_in 1 "bad JSON on stdin" '{"id":' -- org add - --data "$d"
has "bad JSON stdin" "stdin:1:7: malformed JSON" "$err"
cm 1 "not an object" -- org add '[1,2]' --data "$d"; has "not an object" "expected a JSON object" "$err"
cm 1 "missing file" -- org add "$tmp/none.json" --data "$d"; has "missing file" "none.json" "$err"
cm 1 "invalid field" -- patient add --id p9 --family X --birth-date 2999-01-01 --gender female --data "$d"
has "invalid code and field" "invalid: patient.birthDate" "$err"; has "field named" "(field birthDate)" "$err"
cm 1 "unknown field" -- org add '{"id":"org9","name":"X","kind":"clinic","colour":"red"}' --data "$d"
has "unknown field" "unknown_field:" "$err"
cm 1 "duplicate" -- org add --id org1 --name Again --kind clinic --data "$d"; has "duplicate" "exists:" "$err"
cm 1 "missing reference" -- consent add --id c9 --patient nobody --purpose referral --decision permit --data "$d"
has "missing reference" "missing_reference:" "$err"
cm 1 "show unknown" -- org show nosuch --data "$d"; has "show unknown" "not_found:" "$err"
cm 2 "add without input" -- org add --data "$d"; has "add without input" "give the organization as a JSON file" "$err"
cm 2 "unknown option" -- org list --colour red --data "$d"; has "unknown option" "'--colour'" "$err"
cm 2 "unknown subcommand" -- org delete org1 --data "$d"; has "unknown subcommand" "unknown subcommand 'delete'" "$err"
cm 2 "show without id" -- patient show --data "$d"
cm 2 "bad --limit" -- org list --limit 0 --data "$d"
same "refused record commands changed nothing" "$(records)" "$before"

# ---- tokens and scopes ----
cm 1 "wrong scope" -- org add --id org8 --name X --kind clinic --data "$d" --token "$reader"
has "wrong scope message" "not allowed (forbidden): this route needs a token of scope write" "$err"
same "wrong scope changed nothing" "$(records)" "$before"
bogus="cmt_0123456789abcdef_$(printf '%064d' 7)"
cm 1 "unknown token" -- org list --data "$d" --token "$bogus"
has "bad token message" "refused the token from --token (unauthorized:" "$err"
hasnt "the token is never printed" "$bogus" "$out$err"
cme 1 "revoked token from the environment" "CAREMESH_TOKEN=$gone" -- org list --data "$d"
has "revoked token" "refused the token from CAREMESH_TOKEN" "$err"
hasnt "revoked token not printed" "${gone:21}" "$out$err"
cm 2 "not a token" -- org list --data "$d" --token "two words"; has "not a token" "is not a token" "$err"
cm 2 "bad --api" -- status --api "localhost" --token "$reader"; has "bad --api" "is not HOST:PORT" "$err"
e=$tmp/other
mkdir -m 700 "$e"
cp "$d/caremesh.conf" "$e/caremesh.conf"
cm 2 "no token anywhere" -- status --data "$e"; has "no token" "no API token" "$err"
printf '%s\n' "$admin" >"$e/cli.token"; chmod 644 "$e/cli.token"
cm 1 "token file readable by others" -- status --data "$e"; has "token file mode" "chmod 600" "$err"
chmod 600 "$e/cli.token"
cm 0 "token file of another dir" -- status --data "$e"

# ---- instances: start, signal, list, show ----
cm 0 start -- start intake --input '{"patient":"p1"}' --id i1 --data "$d" --token "$writer"
same "start says" "$out" "started intake instance i1: state open"
printf '{"patient":"p2","note":"walk-in"}' >"$tmp/in.json"
cm 0 "start --input @FILE --json" -- start intake --input "@$tmp/in.json" --id i2 --data "$d" --json
same "start json" "$(jq -r .state <<<"$out")" open
cm_in 0 "start --input -" '{"patient":"p2"}' -- start intake --input - --id i3 --data "$d"
inst() { count "SELECT count(*) FROM instance"; }
ninst=$(inst)
cm 1 "start bad input JSON" -- start intake --input '{"patient":' --data "$d"; has "start bad JSON" "--input:1:12: malformed JSON" "$err"
cm 1 "start unknown workflow" -- start nosuch --data "$d"; has "start unknown workflow" "not_found:" "$err"
cm 1 "start bad input" -- start intake --input '{"patient":"nobody"}' --data "$d"; has "start bad input" "invalid:" "$err"
cm 1 "start taken id" -- start intake --input '{"patient":"p1"}' --id i1 --data "$d"; has "start taken id" "exists:" "$err"
cm 1 "start taken id --json" -- start intake --input '{"patient":"p1"}' --id i1 --data "$d" --json
same "--json error: the API's on stdout" "$(jq -r .error.code <<<"$out")" exists
has "--json error: a line on stderr too" "exists:" "$err"
cm 2 "start without workflow" -- start --data "$d"
cm 1 "start with a read token" -- start intake --input '{"patient":"p1"}' --data "$d" --token "$reader"
has "start wrong scope" "forbidden" "$err"
same "refused starts changed nothing" "$(inst)" "$ninst"
cm 0 signal -- signal i1 seen '{"by":"nurse"}' --data "$d"
same "signal says" "$out" "instance i1: seen -> state seen"
same "signal committed" "$(count "SELECT state FROM instance WHERE id='i1'")" seen
cm 1 "signal unknown instance" -- signal nosuch seen --data "$d"; has "signal unknown" "not_found:" "$err"
cm 1 "signal no transition" -- signal i1 nonsense --data "$d"; has "signal no transition" "invalid:" "$err"
cm 1 "signal bad payload" -- signal i2 seen '{"by":' --data "$d"; has "signal bad payload" "the payload:1:7: malformed JSON" "$err"
same "bad payload sent nothing" "$(count "SELECT state FROM instance WHERE id='i2'")" open
cm 2 "signal without event" -- signal i2 --data "$d"
cm 1 "signal handler fails" -- signal i3 boom --data "$d"
has "handler failed kept" "handler_failed" "$err"; has "kept for retry" "kept for retry" "$err"
same "handler failure on one line" "$(wc -l <<<"$err")" 1
cm 0 instances -- instances --data "$d"
if grep -qE '^ID +WORKFLOW +REV +STATE +STATUS +PATIENT +UPDATED$' <<<"$out"; then ok; else bad "instances header: $out"; fi
if grep -qE '^i1 +intake +1 +seen +running +p1 ' <<<"$out"; then ok; else bad "instances row: $out"; fi
cm 0 "instances filters" -- instances --workflow intake --state open --patient p2 --data "$d" --json
same "instances filtered" "$(jq -r '[.items[].id] | join(",")' <<<"$out")" "i2,i3"
cm 0 "instances --status --limit" -- instances --status running --limit 1 --data "$d" --json
same "instances limit" "$(jq '.items | length' <<<"$out")" 1
cm 0 show -- show i2 --data "$d"
if grep -qE '^state +open$' <<<"$out"; then ok; else bad "show state: $out"; fi
has "show input" '"note": "walk-in"' "$out"
has "show timers" "remind" "$out"
if grep -qE '^1 +[0-9T:.Z-]+ +start ' <<<"$out"; then ok; else bad "show history: $out"; fi
cm 0 "show i1 context" -- show i1 --data "$d"
has "show context" '"seen_by": "nurse"' "$out"
cm 0 "show --json" -- show i1 --data "$d" --json
same "show json history" "$(jq -r '[.history[].event] | join(",")' <<<"$out")" "start,seen"
cm 1 "show unknown instance" -- show nosuch --data "$d"
has "show unknown message" 'not_found: no instance with id "nosuch"' "$err"
same "one error line" "$(wc -l <<<"$err")" 1

# ---- pause, resume, cancel ----
cm 0 pause -- pause i2 --data "$d"; same "pause says" "$out" "instance i2: state open, status paused"
cm 1 "pause twice" -- pause i2 --data "$d"; has "pause twice" "wrong_state:" "$err"
cm 0 "signal a paused instance" -- signal i2 seen --data "$d"
same "held" "$out" "instance i2 is paused: event seen held until it resumes"
cm 0 resume -- resume i2 --data "$d"
same "resume says the held events it queued" "$out" "instance i2: state open, status running
1 held event(s) queued to run now; 'caremesh show i2' shows the state after them"
for _ in $(seq 1 100); do [ "$(count "SELECT state FROM instance WHERE id='i2'")" = seen ] && break; sleep 0.05; done
same "held event ran after resume" "$(count "SELECT state FROM instance WHERE id='i2'")" seen
cm 0 "pause again" -- pause i2 --data "$d"
cm 0 "resume, nothing held" -- resume i2 --data "$d" --json; same "resume json" "$(jq -r .status <<<"$out")" running
same "resume json queued none" "$(jq -r .queued <<<"$out")" 0
cm 1 "cancel with a read token" -- cancel i2 --data "$d" --token "$reader"; has "cancel scope" "forbidden" "$err"
same "refused cancel changed nothing" "$(count "SELECT status FROM instance WHERE id='i2'")" running
cm 0 cancel -- cancel i2 --reason "duplicate referral" --data "$d"
same "cancel says" "$out" "instance i2: state seen, status cancelled"
same "cancel reason in history" "$(count "SELECT note FROM history WHERE instance='i2' ORDER BY step DESC LIMIT 1")" "duplicate referral"
cm 1 "resume unknown" -- resume nosuch --data "$d"; has "resume unknown" "not_found:" "$err"
cm 2 "pause without id" -- pause --data "$d"
cm 2 "pause --reason" -- pause i1 --reason x --data "$d"

# ---- tasks ----
cm 0 tasks -- tasks --patient p1 --data "$d"
task=$(awk 'NR == 2 {print $1}' <<<"$out")
same "task of the workflow" "${task:0:5}" "i1.t1"
has "task title" "Call the patient" "$out"
cm 0 "tasks complete" -- tasks complete "$task" --note "left a message" --data "$d"
same "complete says" "$out" "task $task completed"
cm 0 "tasks --status completed" -- tasks --status completed --data "$d" --json
same "completed task" "$(jq -r '.items[0].id' <<<"$out")" "$task"
cm 1 "complete a completed task" -- tasks complete "$task" --data "$d"
has "complete twice says why" "wrong_state: task.status: task \"$task\" is already completed" "$err"
cm 1 "complete unknown task" -- tasks complete nosuch --data "$d"; has "complete unknown" "not_found:" "$err"
cm 2 "complete without id" -- tasks complete --data "$d"
cm 1 "complete with a read token" -- tasks complete "$task" --data "$d" --token "$reader"

# ---- failed events ----
cm 0 failed -- failed --data "$d"
if grep -qE '^SEQ +INSTANCE +EVENT +ATTEMPTS +STATUS +ERROR$' <<<"$out"; then ok; else bad "failed header: $out"; fi
has "failed row" "boom" "$out"
seq=$(awk 'NR == 2 {print $1}' <<<"$out")
park() {
  for _ in $(seq 1 50); do sqlite3 "$d/caremesh.db" "UPDATE event SET status='failed' WHERE seq=$seq" 2>/dev/null && return; sleep 0.1; done
}
park
cm 0 "failed retry" -- failed retry "$seq" --data "$d"; has "retry says" "failed event $seq: due now" "$out"
park
cm 0 "failed --json" -- failed --data "$d" --json
same "failed parked" "$(jq -r '.items[0].status' <<<"$out")" failed
full=$(jq -r '.items[0].error' <<<"$out")
[ "${#full}" -gt 60 ] && ok || bad "the failed event's error is short ($full): the check below shows nothing"
cm 0 "failed, the error whole" -- failed --data "$d"
has "the table's last column is not cut (file:line kept)" "$full" "$out"
cm 0 "failed discard" -- failed discard "$seq" --data "$d"; has "discard says" "discarded" "$out"
same "discarded" "$(count "SELECT count(*) FROM event WHERE seq=$seq")" 0
cm 1 "discard unknown" -- failed discard 999999 --data "$d"; has "discard unknown" "not_found:" "$err"
cm 2 "retry not a seq" -- failed retry abc --data "$d"; has "not a seq" "is not a SEQ" "$err"
cm 0 "failed, none" -- failed --data "$d"; same "no failed events" "$out" "no failed events"

# ---- KPIs ----
cm 0 kpi -- kpi --data "$d"
if grep -qE '^calls_made +2 +4 +2 +2 ' <<<"$out"; then ok; else bad "kpi row: $out"; fi
cm 0 "kpi --json --name" -- kpi --name calls_made --data "$d" --json
same "kpi json" "$(jq -r '.items[0].sum' <<<"$out")" 4
cm 1 "kpi bad since" -- kpi --since soon --data "$d"; has "kpi bad since" "invalid_parameter:" "$err"

# ---- peers and audit through the API ----
cm 0 "peers via the API" -- peers --data "$d"
has "peers via API" "federation is not configured" "$out"; same "no fallback note" "$err" ""
cm 0 "peers --json" -- peers --data "$d" --json
same "peers json" "$(jq -r .federation <<<"$out")" false
cm 1 "peers --json offline" -- peers --offline --json --data "$d"; has "offline json" "needs the node's API" "$err"
cm 0 "audit verify via the API" -- audit verify --data "$d"
has "audit via API" "audit trail intact" "$out"; same "audit no fallback note" "$err" ""
cm 1 "audit verify with a read token: no fallback" -- audit verify --data "$d" --token "$reader"
has "audit needs admin" "forbidden" "$err"
cm 2 "audit without verify" -- audit --data "$d"

# ---- paging: more than one page is followed, with progress ----
cat >"$tmp/many.lua" <<'EOF'
local cm = require "caremesh"
for i = 1, 1005 do
  cm.organization.create { id = string.format("bulk%04d", i), name = "Bulk " .. i, kind = "other" }
end
EOF
for _ in $(seq 1 50); do "$bin" lua --data "$d" "$tmp/many.lua" 2>"$tmp/lua.err" && break; sleep 0.1; done
cm 0 "org list, every page" -- org list --data "$d" --json --progress
same "every page followed" "$(jq '.items | length' <<<"$out")" 1011
same "no cursor after the last page" "$(jq -r .next_cursor <<<"$out")" null
has "progress on stderr" "1011 in 2 pages" "$err"
cm 0 "org list --limit 1003" -- org list --data "$d" --limit 1003
same "limit across pages" "$(($(wc -l <<<"$out") - 1))" 1003
has "more said on stderr" "--limit stopped the list" "$err"

# ---- a node that does not answer: the read timeout ----
kill -STOP "$pid"
t0=$(date +%s)
cm 1 "no answer" -- status --data "$d" --timeout 1
has "timeout message" "no answer within 1000 ms" "$err"
if [ $(($(date +%s) - t0)) -lt 20 ]; then ok; else bad "timeout took too long"; fi
kill -CONT "$pid"
cm 0 "answers again" -- status --data "$d"

# ---- a tampered audit trail: named through the API and from the database ----
for _ in $(seq 1 50); do sqlite3 "$d/caremesh.db" "UPDATE audit SET action = 'patient.nothing' WHERE seq = 2" 2>/dev/null && break; sleep 0.1; done
cm 1 "audit verify, tampered, via the API" -- audit verify --data "$d"
has "tampered entry named" "audit entry 2" "$err"; same "tampered: no fallback" "$(grep -c directly <<<"$err")" 0
cm 1 "audit verify --json, tampered" -- audit verify --data "$d" --json
same "tampered json" "$(jq -r .ok <<<"$out")" false

stop; same "serve stopped" $? 0
cm 1 "audit verify, tampered, node down" -- audit verify --data "$d"
has "tampered entry named offline" "audit entry 2" "$err"; has "offline note" "reading $d directly" "$err"
cm 1 "org list, node down" -- org list --data "$d"; has "org list down" "node not reachable" "$err"
cm 0 "peers, node stopped: the database" -- peers --data "$d"; has "peers stopped fallback" "reading $d directly" "$err"
if grep -qF -- "${admin:21}" "$tmp/log"; then bad "a token is in the log"; else ok; fi

check_done test_cliapi
