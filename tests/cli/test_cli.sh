#!/usr/bin/env bash
# test_cli.sh -- drive build/caremesh as an operator would: help and exit
# codes, init (modes, keys, refusals), lua scripts (all-or-nothing), bad
# databases and configs, serve with clean shutdown on signals.
# usage: test_cli.sh CAREMESH TEMPLATE_PLUGIN.so NOTIFY_SPOOL.so
set -uo pipefail
bin=$1
template_so=$2
spool_so=$3
. "$(dirname "$0")/../lib/check.sh"
mode() { stat -c %a "$1"; }

# ---- help and usage ----
expect 0 version -- "$bin" version;               has version "caremesh 0."
expect 0 --version -- "$bin" --version;           has --version "SQLite"
expect 0 help -- "$bin" --help;                   has help "commands:"
expect 2 "no command" -- "$bin"
expect 2 "unknown command" -- "$bin" frobnicate;  has "unknown command" "unknown command 'frobnicate'"
for c in version init serve lua node peers help; do
  expect 0 "$c --help" -- "$bin" "$c" --help;     has "$c --help" "usage: caremesh $c"
done
expect 0 "help init" -- "$bin" help init;         has "help init" "--node-id"
expect 2 "init without node id" -- "$bin" init --data "$tmp/x"; has "init without node id" "--node-id ID is required"
expect 2 "init bad option" -- "$bin" init --data "$tmp/x" --node-id a --colour;  has "init bad option" "--colour"
expect 2 "init bad node id" -- "$bin" init --data "$tmp/x" --node-id "a b"; has "init bad node id" "character 2"
[ ! -e "$tmp/x" ] && ok || bad "a refused init created $tmp/x"
expect 2 "lua without data" -- env -u CAREMESH_DATA "$bin" lua script.lua; has "lua without data" "--data DIR is required"
# benchmark options: one parser; each bad option or value is named, nothing runs
expect 0 "bench --help" -- "$bin" bench --help;   has "bench --help" "usage: caremesh bench engine"
expect 2 "bench unknown" -- "$bin" bench disks;   has "bench unknown" "known: engine, federation, api"
expect 2 "bench engine zero" -- "$bin" bench engine --instances 0; has "bench engine zero" "--instances: must be a count from 1 to 10000000, got '0'"
expect 2 "bench engine no value" -- "$bin" bench engine --batch; has "bench engine no value" "missing value: '--batch'"
expect 2 "bench engine extra" -- "$bin" bench engine surplus; has "bench engine extra" "unexpected argument 'surplus'"
expect 2 "bench engine mode" -- "$bin" bench engine --mode fast; has "bench engine mode" "--mode: must be loop or run, got 'fast'"
expect 2 "bench federation window" -- "$bin" bench federation --window 99999999; has "bench federation window" "--window: must be a count from 1 to 100000"
expect 2 "bench federation proto" -- "$bin" bench federation --receiver-proto 2.0; has "bench federation proto" "'2.0' is not a version this build speaks"
expect 2 "bench federation option" -- "$bin" bench federation --colour 3; has "bench federation option" "bad option or missing value: '--colour'"
expect 2 "bench api count" -- "$bin" bench api --pipeline 4x; has "bench api count" "--pipeline: must be a count from 1 to 10000000, got '4x'"
expect 2 "bench api address" -- "$bin" bench api --api nowhere; has "bench api address" "--api: must be ADDRESS:PORT, got 'nowhere'"

# ---- init ----
d=$tmp/clinic
expect 0 init -- "$bin" init --data "$d" --node-id clinic-a
# the API on a port of its own: tests run side by side (docs/api.md)
api_port0() { sed -i 's/^}$/  api = { listen = "127.0.0.1:0" },\n}/' "$1/caremesh.conf"; }
has init 'initialised node "clinic-a"'
pub=$(sed -n 's/^public key: //p' <<<"$out")
same "public key length" "${#pub}" 40
same "data dir mode" "$(mode "$d")" 700
same "database mode" "$(mode "$d/caremesh.db")" 600
same "key file mode" "$(mode "$d/node.key")" 600
same "config mode" "$(mode "$d/caremesh.conf")" 600
expect 0 "node info" -- "$bin" node info --data "$d"
has "node info" "public key: $pub"; has "node info" "node id:    clinic-a"; has "node info" "endpoint:   tcp://127.0.0.1:7601"
expect 0 "peers without federation" -- "$bin" peers --data "$d"; has "peers without federation" "federation is not configured"
keysum=$(sha256sum "$d/node.key")
expect 1 "init twice" -- "$bin" init --data "$d" --node-id clinic-a
has "init twice" "already initialised"
same "init twice keeps the key" "$(sha256sum "$d/node.key")" "$keysum"
expect 0 "init via CAREMESH_DATA" -- env CAREMESH_DATA="$tmp/envnode" "$bin" init --node-id env-node
[ -f "$tmp/envnode/caremesh.db" ] && ok || bad "CAREMESH_DATA was not used"
touch "$tmp/plainfile"
expect 1 "init under a file" -- "$bin" init --data "$tmp/plainfile/node" --node-id a
has "init under a file" "$tmp/plainfile"
chmod 0500 "$tmp" 2>/dev/null
if [ "$(id -u)" -ne 0 ]; then
  expect 1 "init in unwritable dir" -- "$bin" init --data "$tmp/ro/node" --node-id a
fi
chmod 0700 "$tmp"

# ---- lua scripts ----
cat >"$tmp/ok.lua" <<'LUA'
local cm = require "caremesh"
local who = ...
cm.organization.create { id = "clinic-a", name = "Riverside Family Clinic", kind = "clinic" }
print("created for " .. who .. " on " .. cm.node_id)
LUA
expect 0 "lua script" -- "$bin" lua --data "$d" "$tmp/ok.lua" admin
has "lua script" "created for admin on clinic-a"
cat >"$tmp/count.lua" <<'LUA'
local cm = require "caremesh"
print("organizations=" .. cm.organization.count())
LUA
cat >"$tmp/syntax.lua" <<'LUA'
local cm = require "caremesh"
cm.organization.create { id = "o2", name = "x" kind = "clinic" }
LUA
expect 1 "lua syntax error" -- "$bin" lua --data "$d" "$tmp/syntax.lua"
has "lua syntax error" "syntax.lua:2:"
cat >"$tmp/half.lua" <<'LUA'
local cm = require "caremesh"
cm.organization.create { id = "o3", name = "Half Written", kind = "clinic" }
cm.organization.create { id = "o4", name = "Bad Kind", kind = "castle" }
LUA
expect 1 "lua runtime error" -- "$bin" lua --data "$d" "$tmp/half.lua"
has "lua runtime error" "half.lua:3:"; has "lua runtime error" "organization.kind"
expect 0 "count after refusals" -- "$bin" lua --data "$d" "$tmp/count.lua"
has "nothing half-written" "organizations=1"
# a script's reads and writes of patient data are audited as the CLI's, in
# the script's transaction; one that fails is rolled back, but what it read
# reached it (it may have printed it), so its entries are written again with
# outcome error, and the chain holds
audit_rows() {
  sqlite3 "$d/caremesh.db" "SELECT group_concat(actor || ' ' || action || ' ' || patient || ' ' || outcome || ' ' || detail, '; ') FROM audit WHERE seq $1"
}
cat >"$tmp/pat.lua" <<'LUA'
local cm = require "caremesh"
cm.patient.create { id = "pa1", name = { family = "Audit" }, birthDate = "1950-01-01", gender = "female" }
assert(cm.patient.get("pa1"))
assert(#cm.organization.list() == 1)
if ... == "fail" then error("after the reads") end
LUA
expect 1 "lua patient script that fails" -- "$bin" lua --data "$d" "$tmp/pat.lua" fail
has "lua patient script that fails" "after the reads"
same "a failed script's entries are written again as error" "$(audit_rows "> 0")" \
  "cli patient.create pa1 error lua cm.patient.create pa1 (rolled back: the script failed); cli patient.read pa1 error lua cm.patient.get pa1 (rolled back: the script failed)"
same "a failed script changes no record" "$(sqlite3 "$d/caremesh.db" "SELECT count(*) FROM record WHERE id = 'pa1'")" 0
expect 0 "lua patient script" -- "$bin" lua --data "$d" "$tmp/pat.lua"
same "a script's patient access is audited as cli" "$(audit_rows "> 2")" \
  "cli patient.create pa1 ok lua cm.patient.create pa1; cli patient.read pa1 ok lua cm.patient.get pa1"
cat >"$tmp/peek.lua" <<'LUA'
local cm = require "caremesh"
print("family=" .. cm.patient.get("pa1").name.family)
error("after printing a patient")
LUA
expect 1 "lua script that prints a patient, then fails" -- "$bin" lua --data "$d" "$tmp/peek.lua"
has "lua script that prints a patient, then fails" "family=Audit"
same "its read is kept as error" "$(audit_rows "> 4")" \
  "cli patient.read pa1 error lua cm.patient.get pa1 (rolled back: the script failed)"
expect 0 "audit verify after failed scripts" -- "$bin" audit verify --data "$d"
has "audit verify after failed scripts" "audit trail intact: 5 entries"
printf 'while true do end\n' >"$tmp/spin.lua"
expect 1 "runaway script" -- "$bin" lua --data "$d" "$tmp/spin.lua"; has "runaway script" "instruction budget"
printf 'local io = io\nio.open("/etc/passwd")\n' >"$tmp/io.lua"
expect 1 "io is absent" -- "$bin" lua --data "$d" "$tmp/io.lua"; has "io is absent" "io.lua:2:"
expect 1 "missing script" -- "$bin" lua --data "$d" "$tmp/none.lua"; has "missing script" "$tmp/none.lua"

printf 'local n = select("#", ...)\nprint("args=" .. n)\n' >"$tmp/args.lua"
expect 0 "many script arguments" -- "$bin" lua --data "$d" "$tmp/args.lua" $(seq 1 300)
has "many script arguments" "args=300"
printf '#!/usr/bin/env caremesh\nprint("shebang ok")\n' >"$tmp/shebang.lua"
expect 0 "#! line" -- "$bin" lua --data "$d" "$tmp/shebang.lua"; has "#! line" "shebang ok"
mkfifo "$tmp/fifo.lua"
expect 1 "script is a FIFO" -- timeout 10 "$bin" lua --data "$d" "$tmp/fifo.lua"
has "script is a FIFO" "not a regular file"
expect 1 "config is a FIFO" -- timeout 10 "$bin" lua --data "$d" --config "$tmp/fifo.lua" "$tmp/count.lua"
has "config is a FIFO" "not a regular file"
expect 2 "node info extra operand" -- "$bin" node info --data "$d" extra
has "node info extra operand" "unexpected argument 'extra'"

# ---- node identity ----
mkdir -m 755 "$tmp/open"
expect 1 "init into a shared directory" -- "$bin" init --data "$tmp/open" --node-id a
has "init into a shared directory" "mode 0755 lets other users in"
[ -z "$(ls -A "$tmp/open")" ] && ok || bad "a refused init wrote into $tmp/open"
"$bin" init --data "$tmp/other" --node-id other >/dev/null
cp "$d/node.key" "$tmp/clinic.key"
cp "$tmp/other/node.key" "$d/node.key"
expect 1 "foreign key pair" -- "$bin" lua --data "$d" "$tmp/count.lua"
has "foreign key pair" "not the one node \"clinic-a\" was initialised with"
rm "$d/node.key"
expect 1 "missing key pair" -- "$bin" lua --data "$d" "$tmp/count.lua"; has "missing key pair" "no key file"
cp "$tmp/clinic.key" "$d/node.key"; chmod 600 "$d/node.key"

# ---- workflow tools ----
cat >"$tmp/wf-bad.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow { name = "w", version = 1, start = "a",
  states = {
    a = { on = { go = "nowhere" } },
    lonely = { final = true },
  } }
LUA
expect 1 "workflow check finds problems" -- "$bin" workflow check "$tmp/wf-bad.lua"
has "workflow check finds problems" "wf-bad.lua:4:"
has "workflow check finds problems" "nowhere"
cat >"$tmp/wf-good.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow { name = "w", version = 1, start = "a",
  states = { a = { on = { done = "b" } }, b = { final = true } } }
LUA
expect 0 "workflow check clean file" -- "$bin" workflow check "$tmp/wf-good.lua"; has "workflow check clean file" "no problems"
expect 0 "workflow graph" -- "$bin" workflow graph "$tmp/wf-good.lua"; has "workflow graph" '"a" -> "b"'
expect 0 "workflow graph mermaid" -- "$bin" workflow graph "$tmp/wf-good.lua" --mermaid; has "workflow graph mermaid" "a --> b : done"
cat >"$tmp/wf-purpose.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow { name = "wp", version = 1,
  purpose = "treatment", start = "a", states = { a = { final = true } } }
LUA
expect 1 "workflow check of an unknown purpose" -- "$bin" workflow check "$tmp/wf-purpose.lua"
has "workflow check of an unknown purpose" "wf-purpose.lua:3: purpose: must be one of referral, outreach, immunization, care_coordination"
expect 1 "workflow graph of a broken file" -- "$bin" workflow graph "$tmp/wf-bad.lua"
expect 2 "workflow without subcommand" -- "$bin" workflow
expect 1 "workflow test of a missing file" -- "$bin" workflow test "$tmp/none.lua"; has "workflow test of a missing file" "0 passed, 1 failed"
# a start refused (input missing) and then asserted on: the failure says why
cat >"$tmp/wf-in.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow { name = "win", version = 1, input = { reason = "string" }, start = "a",
  states = { a = { on = { done = "b" } }, b = { final = true } } }
LUA
cat >"$tmp/test_win.lua" <<'LUA'
local t = require "caremesh.test"
t.load("wf-in.lua")
t.test("a refused start", function()
  local id = t.start("win", {})
  t.expect_state(id, "a")
end)
LUA
expect 1 "expect_state of a refused start" -- "$bin" workflow test "$tmp/test_win.lua"
has "expect_state of a refused start" "test_win.lua:5: expect_state: the instance id is nil (t.start returns nil and the reason when it refuses)"
# engine.max_attempts: a failing event is parked after as many runs as the
# node would make (--max-attempts, else the config's, else 5)
cat >"$tmp/wf-boom.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow { name = "boom", version = 1, start = "a",
  states = { a = { on = { go = function() error("always") end, done = "b" } }, b = { final = true } } }
LUA
attempts_test() { # attempts_test N: the file asserting that the event parks after N runs
  cat >"$tmp/test_boom.lua" <<LUA
local t = require "caremesh.test"
t.load("wf-boom.lua")
t.test("parked after $1", function()
  local id = t.start("boom", {})
  t.signal(id, "go")
  t.advance("60d")
  local f = t.failed()
  t.eq(#f, 1, "kept events")
  t.eq({ f[1].attempts, f[1].status }, { $1, "failed" }, "the failing event")
end)
LUA
}
attempts_test 5
expect 0 "workflow test parks after 5 by default" -- "$bin" workflow test "$tmp/test_boom.lua"
has "workflow test parks after 5 by default" "1 passed, 0 failed"
attempts_test 2
expect 0 "workflow test --max-attempts 2" -- "$bin" workflow test --max-attempts 2 "$tmp/test_boom.lua"
has "workflow test --max-attempts 2" "1 passed, 0 failed"
expect 1 "workflow test --max-attempts 2 is not the default" -- "$bin" workflow test "$tmp/test_boom.lua"
printf 'return { node_id = "wf", engine = { max_attempts = 3 } }\n' >"$tmp/three.conf"
attempts_test 3
expect 0 "workflow test reads engine.max_attempts" -- "$bin" workflow test --config "$tmp/three.conf" "$tmp/test_boom.lua"
has "workflow test reads engine.max_attempts" "1 passed, 0 failed"
attempts_test 1
expect 0 "--max-attempts over the config's" -- "$bin" workflow test --config "$tmp/three.conf" --max-attempts 1 "$tmp/test_boom.lua"
has "--max-attempts over the config's" "1 passed, 0 failed"
expect 2 "workflow test --max-attempts 0" -- "$bin" workflow test --max-attempts 0 "$tmp/test_boom.lua"
has "workflow test --max-attempts 0" "--max-attempts: must be a count from 1 to 100, got '0'"
expect 2 "workflow test --max-attempts without value" -- "$bin" workflow test --max-attempts
has "workflow test --max-attempts without value" "missing value: '--max-attempts'"
expect 2 "workflow test unknown option" -- "$bin" workflow test --attempts 2 "$tmp/test_boom.lua"
has "workflow test unknown option" "unknown option or missing value: '--attempts'"
expect 0 "workflow test --help" -- "$bin" workflow test --help; has "workflow test --help" "--max-attempts N"

# ---- plugins ----
p=$tmp/plugged
"$bin" init --data "$p" --node-id plugged >/dev/null
api_port0 "$p"
sed -i "s|^}|  plugins = { { name = \"template\", path = \"$template_so\", config = { site = \"north\" } } },\n}|" "$p/caremesh.conf"
expect 0 "plugin command" -- "$bin" template-hello --data "$p" a b
has "plugin command" "hello from the template plugin (2 argument(s))"
expect 0 "plugin command via CAREMESH_DATA" -- env CAREMESH_DATA="$p" "$bin" template-hello
expect 2 "unknown command with a node" -- "$bin" frobnicate --data "$p"
has "unknown command with a node" "neither built in nor added by a plugin"
cp "$p/caremesh.conf" "$tmp/plugged.conf"
sed -i "s|$template_so|/nonexistent/template.so|" "$p/caremesh.conf"
expect 1 "required plugin missing" -- "$bin" template-hello --data "$p"
has "required plugin missing" "plugin template: no file at /nonexistent/template.so"
sed -i 's|config = {|optional = true, config = {|' "$p/caremesh.conf"
expect 2 "optional plugin missing" -- "$bin" template-hello --data "$p"
cp "$tmp/plugged.conf" "$p/caremesh.conf"
log=$tmp/serve-plugin.log
"$bin" serve --data "$p" 2>"$log" &
pid=$!
if wait_for "$log" '"event":"serve.ready"'; then ok; else bad "serve with a plugin did not get ready: $(cat "$log")"; fi
if grep -qF 'configured with {\"site\":\"north\"}' "$log"; then ok; else bad "plugin did not get its config: $(cat "$log")"; fi
kill -TERM "$pid"; wait "$pid"; same "serve with a plugin exit" "$?" 0
if grep -qF '"event":"plugin.unloaded"' "$log"; then ok; else bad "plugin not unloaded at shutdown: $(cat "$log")"; fi

# a serving node hands notifications to the spool channel: durable files appear
mkdir -m 700 "$tmp/spool"
api_port0 "$d"
cp "$d/caremesh.conf" "$tmp/pre-spool.conf"
sed -i "s|^}|  plugins = { { name = \"notify_spool\", path = \"$spool_so\", config = { dir = \"$tmp/spool\", channels = { \"sms\" } } } },\n}|" "$d/caremesh.conf"
log=$tmp/serve-spool.log
"$bin" serve --data "$d" 2>"$log" &
pid=$!
if wait_for "$log" '"event":"serve.ready"'; then ok; else bad "serve with the spool did not get ready: $(cat "$log")"; fi
sqlite3 -cmd ".timeout 5000" "$d/caremesh.db" "INSERT INTO notification(channel, recipient, message, data, created) VALUES ('sms', 'pat-1', 'Time for your flu shot', '{}', 'now');"
for _ in $(seq 1 200); do ls "$tmp/spool"/*-sms.json >/dev/null 2>&1 && break; sleep 0.05; done
if jq -e '.message == "Time for your flu shot" and .to == "pat-1"' "$tmp"/spool/*-sms.json >/dev/null 2>&1; then ok; else bad "no spool file: $(ls -la "$tmp/spool") $(cat "$log")"; fi
for _ in $(seq 1 200); do [ "$(sqlite3 -cmd ".timeout 5000" "$d/caremesh.db" "SELECT status FROM notification")" = sent ] && break; sleep 0.05; done
same "notification marked sent" "$(sqlite3 -cmd ".timeout 5000" "$d/caremesh.db" "SELECT status FROM notification")" sent
kill -TERM "$pid"; wait "$pid"; same "serve with the spool exit" "$?" 0
cp "$tmp/pre-spool.conf" "$d/caremesh.conf"

# ---- bad configuration ----
cp "$d/caremesh.conf" "$tmp/good.conf"
printf 'return { node_id = "clinic-a", stroe = {} }\n' >"$d/caremesh.conf"
expect 1 "unknown config key" -- "$bin" lua --data "$d" "$tmp/count.lua"
has "unknown config key" "caremesh.conf:1: stroe: unknown key"
printf 'return {\n  node_id = "clinic-a",\n  lua = { memory_mb = },\n}\n' >"$d/caremesh.conf"
expect 1 "config syntax error" -- "$bin" lua --data "$d" "$tmp/count.lua"
has "config syntax error" "caremesh.conf:3:"
printf 'return { node_id = "someone-else" }\n' >"$d/caremesh.conf"
expect 1 "config for another node" -- "$bin" lua --data "$d" "$tmp/count.lua"
has "config for another node" 'belongs to node "clinic-a"'
cp "$tmp/good.conf" "$d/caremesh.conf"
printf 'return { lua = { instructions = 2000 } }\n' >"$tmp/tiny.conf"
printf 'local n = 0 for i = 1, 100000 do n = n + i end\n' >"$tmp/loop.lua"
expect 1 "budget from --config" -- "$bin" lua --data "$d" --config "$tmp/tiny.conf" "$tmp/loop.lua"
has "budget from --config" "instruction budget"
expect 0 "default budget" -- "$bin" lua --data "$d" "$tmp/loop.lua"

# ---- bad databases ----
bad_db() { # NAME FRAGMENT: the command refuses and names the problem
  expect 1 "$1" -- "$bin" lua --data "$b" "$tmp/count.lua"; has "$1" "$2"
}
b=$tmp/broken
"$bin" init --data "$b" --node-id broken >/dev/null
head -c 8192 /dev/urandom >"$b/caremesh.db"; rm -f "$b/caremesh.db-wal" "$b/caremesh.db-shm"
bad_db "corrupt database" "not a caremesh database"
rm -f "$b/caremesh.db"
sqlite3 "$b/caremesh.db" "CREATE TABLE invoices(id INTEGER);"
bad_db "foreign database" "another application"
same "foreign database untouched" "$(sqlite3 "$b/caremesh.db" 'SELECT count(*) FROM sqlite_schema')" 1
rm -f "$b/caremesh.db"
bad_db "missing database" "caremesh init"
: >"$b/caremesh.db"
bad_db "empty database" "an empty database"
same "empty database untouched" "$(stat -c %s "$b/caremesh.db")" 0
rm -rf "$b"; "$bin" init --data "$b" --node-id broken >/dev/null
sqlite3 "$b/caremesh.db" "INSERT INTO schema_version(version, description) VALUES (42, 'future');"
bad_db "newer database" "schema version 42 is newer"
rm -rf "$b"; "$bin" init --data "$b" --node-id broken >/dev/null
chmod 644 "$b/caremesh.db"
bad_db "database readable by others" "permissions 0644 let other users read patient data"

# ---- serve ----
serve_and_signal() { # SIGNAL
  local log=$tmp/serve-$1.log
  "$bin" serve --data "$d" 2>"$log" &
  local pid=$!
  if wait_for "$log" '"event":"serve.ready"'; then ok; else bad "serve did not get ready: $(cat "$log")"; fi
  kill "-$1" "$pid"
  wait "$pid"; local rc=$?
  same "serve exit on $1" "$rc" 0
  if grep -qF '"event":"serve.stop"' "$log"; then ok; else bad "no serve.stop line: $(cat "$log")"; fi
  if jq -e . "$log" >/dev/null 2>&1; then ok; else bad "serve log is not JSON lines: $(cat "$log")"; fi
}
serve_and_signal TERM
serve_and_signal INT

# serve loads the workflows directory, refuses a broken file, reloads on SIGHUP
mkdir -p "$d/workflows"
cat >"$d/workflows/intake.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow { name = "intake", version = 1, start = "open",
  states = { open = { on = { done = "closed" } }, closed = { final = true } } }
LUA
printf 'local cm = require "caremesh"\nreturn cm.workflow { name = "broken", version = 1,\n  start = "a", states = { a = { on = { x = "nowhere" } } } }\n' >"$d/workflows/broken.lua"
log=$tmp/serve-wf.log
"$bin" serve --data "$d" 2>"$log" &
pid=$!
if wait_for "$log" '"event":"serve.ready"'; then ok; else bad "serve with workflows did not get ready: $(cat "$log")"; fi
if grep -qF 'intake version 1 is revision 1' "$log"; then ok; else bad "intake.lua not loaded: $(cat "$log")"; fi
if grep -F '"event":"workflow.refused"' "$log" | grep -qF 'broken.lua:2: workflow: states.a.on[\"x\"]: transition to unknown state'; then ok; else bad "broken.lua not refused by line: $(cat "$log")"; fi
expect 1 "second serve on one node" -- "$bin" serve --data "$d"
has "second serve on one node" "another caremesh serve is running"
sed -i 's/version = 1/version = 2/' "$d/workflows/intake.lua"
kill -HUP "$pid"
if wait_for "$log" 'intake version 2 is revision 2'; then ok; else bad "SIGHUP did not reload: $(cat "$log")"; fi
kill -TERM "$pid"; wait "$pid"; same "serve with workflows exit" "$?" 0
rm -rf "$d/workflows"
"$bin" serve --data "$tmp/nowhere" 2>"$tmp/serve-fail.log"; rc=$?
same "serve without a node" "$rc" 1
if jq -e 'select(.level == "error") | .msg | test("caremesh init")' "$tmp/serve-fail.log" >/dev/null; then ok; else bad "serve failure not logged as JSON error: $(cat "$tmp/serve-fail.log")"; fi

check_done
