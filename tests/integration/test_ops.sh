#!/usr/bin/env bash
# test_ops.sh -- the daemon as an operator runs it, on 127.0.0.1 ports it
# picks: an online backup taken while the API writes, restored into a fresh
# data directory (opens, audit verifies, a consistent prefix of the writes);
# SIGHUP reloading the configuration under load (every event committed
# exactly once, a broken file refused with its line); SIGTERM under load
# (nothing acknowledged lost); `caremesh serve` from an empty directory.
# usage: test_ops.sh CAREMESH   (CM_WRAP: a command to run serve under)
set -uo pipefail
bin=$(realpath "$1")
wrap=${CM_WRAP:-}
. "$(dirname "$0")/../lib/check.sh"
wait_limit_s=60
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
# wait_lines FILE N: poll (bounded, 60 s) until FILE has N lines.
wait_lines() {
  for _ in $(seq 1 1200); do [ "$(wc -l <"$1" 2>/dev/null || echo 0)" -ge "$2" ] && return 0; sleep 0.05; done
  return 1
}
# wait_count FILE TEXT N: poll (bounded, 60 s) until TEXT is on N lines of FILE.
wait_count() {
  for _ in $(seq 1 1200); do [ "$(grep -cF -- "$2" "$1")" -ge "$3" ] && return 0; sleep 0.05; done
  return 1
}
mode() { stat -c %a "$1"; }

# start DIR LOG: serve DIR on a port it picks; sets pid and base
start() {
  : >"$2"
  $wrap "$bin" serve --data "$1" --listen 127.0.0.1:0 2>"$2" &
  pid=$!
  pids+=("$pid")
  wait_for "$2" '"serve.ready"' || { bad "serve did not start: $(cat "$2")"; exit 1; }
  base="http://127.0.0.1:$(serve_port "$2")"
}
req() { # METHOD PATH [BODY]: prints the status, body in $tmp/body
  curl -s -o "$tmp/body" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' ${3:+--data-binary "$3"} "$base$2"
}
# writer_config FILE URL N BODY-PREFIX: a curl config of N requests on one
# keep-alive connection; each line of output is one answer's status.
writer_config() {
  local f=$1 url=$2 n=$3 kind=$4
  : >"$f"
  for i in $(seq 1 "$n"); do
    if [ "$kind" = patient ]; then
      body="{\"id\":\"w$i\",\"name\":{\"family\":\"W$i\"},\"birthDate\":\"1970-01-01\",\"gender\":\"other\"}"
    else
      body='{"event":"tick"}'
    fi
    printf 'url = "%s"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "%s"\nwrite-out = "%%{stderr}%%{http_code}\\n"\noutput = "/dev/null"\nnext\n' \
      "$url" "$token" "${body//\"/\\\"}" >>"$f"
  done
}

# ---- a node with a counter workflow and a writer token ----
d=$tmp/node
"$bin" init --data "$d" --node-id ops-node >/dev/null || { echo "FAIL: init"; exit 1; }
mkdir -p "$d/workflows"
cat >"$d/workflows/counter.lua" <<'LUA'
local cm = require "caremesh"
return cm.workflow {
  name = "counter", version = 1, input = {}, start = "open",
  states = {
    open = { on = { tick = function(wf) wf.ctx.n = (wf.ctx.n or 0) + 1 end, close = "closed" } },
    closed = { final = true },
  },
}
LUA
token=$("$bin" token create --scope admin --name ops --data "$d" 2>/dev/null)
# a database of several backup steps (4 MiB each)
cat >"$tmp/seed.lua" <<'LUA'
local cm = require "caremesh"
local from, to = ...
for i = tonumber(from), tonumber(to) do
  cm.patient.create { id = "s" .. i, name = { family = "Seed" .. i }, birthDate = "1980-01-01", gender = "female" }
end
LUA
# (in runs of 2000: a script run has a time limit of 10 s, and a busy machine
# running the sanitizer build took longer than that for 5000)
for i in $(seq 0 19); do
  "$bin" lua --data "$d" "$tmp/seed.lua" $((i * 2000 + 1)) $((i * 2000 + 2000)) || bad "seed $i"
done

# ---- backup while the API writes; restore into a fresh data directory ----
start "$d" "$tmp/log"
writer_config "$tmp/w.conf" "$base/v1/patients" 1500 patient
curl -s -K "$tmp/w.conf" 2>"$tmp/w.out" >/dev/null &
writer=$!
wait_lines "$tmp/w.out" 50 || bad "writer did not start"
before=$(grep -c '^201$' "$tmp/w.out")
"$bin" backup "$tmp/b1.db" --data "$d" >"$tmp/backup.out" 2>"$tmp/backup.err"; rc=$?
after=$(grep -c '^201$' "$tmp/w.out")
same "backup exit" "$rc" 0
has "backup report" 'backup of node "ops-node" (schema' "$(cat "$tmp/backup.out")"
has "backup progress" "pages (100%)" "$(cat "$tmp/backup.err")"
same "backup mode" "$(mode "$tmp/b1.db")" 600
if [ "$after" -gt "$before" ]; then ok; else bad "no write was acknowledged while the backup ran ($before, $after)"; fi
ls "$tmp"/b1.db.tmp* >/dev/null 2>&1 && bad "a temp file is left" || ok
"$bin" backup "$tmp/b1.db" --data "$d" >/dev/null 2>"$tmp/err"; same "backup over a file exit" $? 1
has "backup over a file" "already exists" "$(cat "$tmp/err")"
"$bin" backup "$d/caremesh.db" --data "$d" >/dev/null 2>&1; same "backup onto the database exit" $? 1
"$bin" backup --data "$d" >/dev/null 2>&1; same "backup without FILE exit" $? 2
"$bin" backup "$tmp/x.db" --data "$tmp/nowhere" >/dev/null 2>&1; same "backup of no node exit" $? 1
[ -e "$tmp/x.db" ] && bad "a failed backup left a file" || ok
wait "$writer"
same "every write acknowledged" "$(grep -c '^201$' "$tmp/w.out")" 1500
kill -TERM "$pid"; wait "$pid"; same "serve exit after backup" $? 0

# the backup holds w1..wk for one k between what was acknowledged before and after
k=$(sqlite3 "$tmp/b1.db" "SELECT count(*) FROM record WHERE kind='patient' AND id LIKE 'w%'")
max=$(sqlite3 "$tmp/b1.db" "SELECT coalesce(max(CAST(substr(id, 2) AS INTEGER)), 0) FROM record WHERE kind='patient' AND id LIKE 'w%'")
same "a prefix of the writes" "$k" "$max"
if [ "$k" -ge "$before" ] && [ "$k" -le $((after + 1)) ]; then ok; else bad "backup holds $k writes, acknowledged $before before and $after after"; fi
same "an audit entry per write in the backup" \
  "$(sqlite3 "$tmp/b1.db" "SELECT count(*) FROM audit WHERE action='patient.create' AND patient LIKE 'w%'")" "$k"
same "seed records in the backup" "$(sqlite3 "$tmp/b1.db" "SELECT count(*) FROM record WHERE kind='patient' AND id LIKE 's%'")" 40000

# restore as docs/operations.md says: key pair, configuration, the backup as caremesh.db
r=$tmp/restored
mkdir -m 700 "$r"
cp -p "$d/node.key" "$d/caremesh.conf" "$r/"
cp "$tmp/b1.db" "$r/caremesh.db"; chmod 600 "$r/caremesh.db"
cp -r "$d/workflows" "$r/"
start "$r" "$tmp/log2"
same "restored audit verify" "$(req GET /v1/audit/verify)" 200
same "restored audit ok" "$(jq -r .ok "$tmp/body")" true
same "restored patient" "$(req GET /v1/patients/w1)" 200
same "restored write" "$(req POST /v1/patients '{"id":"after","name":{"family":"After"},"birthDate":"1990-01-01","gender":"male"}')" 201
kill -TERM "$pid"; wait "$pid"; same "restored serve exit" $? 0
out=$("$bin" node info --data "$r"); has "restored node id" "ops-node" "$out"
out=$("$bin" audit verify --data "$r" 2>&1); same "restored audit verify (CLI) exit" $? 0

# a damaged backup is caught by the check a backup passes
cp "$tmp/b1.db" "$tmp/bad.db"; chmod 600 "$tmp/bad.db"
printf 'garbage' | dd of="$tmp/bad.db" bs=1 seek=4096 conv=notrunc 2>/dev/null
b=$tmp/fromdamaged; mkdir -m 700 "$b"; cp -p "$d/node.key" "$b/"; cp "$tmp/bad.db" "$b/caremesh.db"
"$bin" backup "$tmp/b2.db" --data "$b" >/dev/null 2>"$tmp/err"; same "backup of a damaged database exit" $? 1
has "damaged database named" "malformed" "$(cat "$tmp/err")"
[ -e "$tmp/b2.db" ] && bad "a damaged copy was kept" || ok

echo "backup and restore done at $SECONDS s"
# ---- SIGHUP under load: configuration, plugins, workflows reloaded; nothing lost ----
start "$d" "$tmp/log"
for c in c1 c2 c3; do
  same "start $c" "$(req POST /v1/instances "{\"workflow\":\"counter\",\"input\":{},\"id\":\"$c\"}")" 201
done
for c in c1 c2 c3; do
  writer_config "$tmp/$c.conf" "$base/v1/instances/$c/events" 600 tick
  curl -s -K "$tmp/$c.conf" 2>"$tmp/$c.out" >/dev/null &
  eval "w_$c=$!"
done
cp "$d/caremesh.conf" "$tmp/good.conf"
hups=0
for i in $(seq 1 12); do
  wait_lines "$tmp/c1.out" $((i * 40)) || break
  hups=$((hups + 1))
  case $((i % 3)) in
    0) sed 's/level = "info"/level = "debug"/' "$tmp/good.conf" >"$d/caremesh.conf" ;;
    1) sed 's/^}$/  api = { timeout_ms = 20000, max_pipeline = 32 },\n  lua = { instructions = 20000000 },\n}/' "$tmp/good.conf" >"$d/caremesh.conf" ;;
    2) printf 'return {\n  log = { level = "info" },\n  api = { timeout_ms = 2 },\n}\n' >"$d/caremesh.conf" ;;
  esac
  kill -HUP "$pid"
done
for c in c1 c2 c3; do eval "wait \$w_$c"; done
same "reloads sent while the writers ran" "$hups" 12
wait_count "$tmp/log" '"serve.reload"' 12 || bad "not every SIGHUP was handled"
for c in c1 c2 c3; do
  same "$c: every event answered 200 across reloads" "$(grep -c '^200$' "$tmp/$c.out")" 600
  same "$c: every event applied exactly once" "$(sqlite3 "$d/caremesh.db" "SELECT json_extract(ctx, '\$.n') FROM instance WHERE id='$c'")" 600
  same "$c: one history step per event" "$(sqlite3 "$d/caremesh.db" "SELECT count(*) FROM history WHERE instance='$c' AND event='tick'")" 600
done
log=$(cat "$tmp/log")
has "reload applied" '"config.reloaded"' "$log"
has "reload applied api" 'applied api.max_pipeline, api.timeout_ms' "$log"
has "reload restart needed" 'lua.instructions changed: takes effect at the next start' "$log"
has "broken config refused with its line" 'caremesh.conf:3: api.timeout_ms: must be a whole number from 100 to 3600000 (the running configuration stays)' "$log"
has "workflows reloaded" '"serve.reload"' "$log"
# the log level applies live: a debug line appears only after the reload to debug
reloads=$(grep -c '"serve.reload"' "$tmp/log")
cp "$tmp/good.conf" "$d/caremesh.conf"; kill -HUP "$pid"
wait_count "$tmp/log" '"serve.reload"' $((reloads + 1)) || bad "reload to info"
sed 's/level = "info"/level = "debug"/' "$tmp/good.conf" >"$d/caremesh.conf"
n_before=$(grep -c '"level":"debug"' "$tmp/log")
kill -HUP "$pid"
# (bounded wait for a debug line beyond those before: the reload is asynchronous)
if wait_count "$tmp/log" '"level":"debug"' $((n_before + 1)); then ok; else bad "log level not applied: no debug line after reloading log.level = debug"; fi
cp "$tmp/good.conf" "$d/caremesh.conf"
# a config for another node is refused
sed 's/node_id = "ops-node"/node_id = "other"/' "$tmp/good.conf" >"$d/caremesh.conf"; kill -HUP "$pid"
wait_for "$tmp/log" 'is not this node (' || bad "a config of another node was not refused"
cp "$tmp/good.conf" "$d/caremesh.conf"
same "still serving after reloads" "$(req GET /readyz)" 200

echo "reload done at $SECONDS s"
# ---- SIGTERM under load: exit 0, every acknowledged event kept, none twice ----
for c in c1 c2 c3; do
  writer_config "$tmp/$c.conf" "$base/v1/instances/$c/events" 3000 tick
  curl -s -K "$tmp/$c.conf" 2>"$tmp/$c.out" >/dev/null &
  eval "w_$c=$!"
done
wait_lines "$tmp/c1.out" 100 || bad "writers did not start"
kill -TERM "$pid"; wait "$pid"; same "SIGTERM under load exit" $? 0
for c in c1 c2 c3; do eval "wait \$w_$c"; done
for c in c1 c2 c3; do
  acked=$(grep -c '^200$' "$tmp/$c.out")
  n=$(sqlite3 "$d/caremesh.db" "SELECT json_extract(ctx, '\$.n') FROM instance WHERE id='$c'")
  same "$c: committed = 600 + acknowledged" "$n" $((600 + acked))
  if [ "$acked" -lt 3000 ]; then ok; else bad "$c: the stop came after all writes"; fi
done
has "drained" '"api.stopped"' "$(cat "$tmp/log")"

echo "SIGTERM done at $SECONDS s"
# ---- serve with no configuration, from an empty directory ----
e=$tmp/empty; mkdir "$e"
(cd "$e" && exec $wrap "$bin" serve --listen 127.0.0.1:0) 2>"$tmp/log3" &
pid=$!; pids+=("$pid")
wait_for "$tmp/log3" '"serve.ready"' || bad "serve from an empty directory: $(cat "$tmp/log3")"
base="http://127.0.0.1:$(serve_port "$tmp/log3")"
same "data dir mode" "$(mode "$e/caremesh-data")" 700
same "database mode" "$(mode "$e/caremesh-data/caremesh.db")" 600
same "key pair mode" "$(mode "$e/caremesh-data/node.key")" 600
log=$(cat "$tmp/log3")
has "initialised on first start" '"serve.init"' "$log"
for w in referral referral_intake outreach outreach_contact vaccination vaccination_course; do
  has "embedded $w" "(embedded:$w.lua)" "$log"
done
has "nothing refused" "0 workflow file(s) refused" "$log"
token=$("$bin" token create --scope read --data "$e/caremesh-data" 2>/dev/null)
same "workflows over the API" "$(req GET /v1/workflows/referral)" 200
same "embedded origin" "$(jq -r '.revisions[0].origin' "$tmp/body")" "embedded:referral.lua"
kill -TERM "$pid"; wait "$pid"; same "empty-dir serve exit" $? 0
(cd "$e" && exec "$bin" serve --listen 127.0.0.1:0) 2>"$tmp/log4" &
pid=$!; pids+=("$pid")
wait_for "$tmp/log4" '"serve.ready"' || bad "second start: $(cat "$tmp/log4")"
if grep -qF '"serve.init"' "$tmp/log4"; then bad "initialised twice"; else ok; fi
has "same workflows, no new revision" "referral version 1 is revision 1" "$(cat "$tmp/log4")"
kill -TERM "$pid"; wait "$pid"
# a workflows directory the configuration names but that is missing: no
# built-in workflows instead, and a warning that says so
printf 'return { workflows = "%s" }\n' "$e/nosuch" >"$tmp/nowf.conf"
(cd "$e" && exec "$bin" serve --config "$tmp/nowf.conf" --listen 127.0.0.1:0) 2>"$tmp/log5" &
pid=$!; pids+=("$pid")
wait_for "$tmp/log5" '"serve.ready"' || bad "start with a missing workflows dir: $(cat "$tmp/log5")"
has "missing workflows dir warned" \
  "\"level\":\"warn\",\"event\":\"workflow.none\",\"msg\":\"cannot open the workflows directory $e/nosuch: No such file or directory" \
  "$(cat "$tmp/log5")"
if grep -qF 'embedded:' "$tmp/log5"; then bad "embedded workflows for a named directory"; else ok; fi
kill -TERM "$pid"; wait "$pid"
"$bin" serve --data "$tmp/typo" --listen 127.0.0.1:0 2>"$tmp/err"; same "an explicit missing --data is not made" $? 1
[ -e "$tmp/typo" ] && bad "serve made an explicit --data directory" || ok

check_done test_ops
