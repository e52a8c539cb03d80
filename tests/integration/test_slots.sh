#!/usr/bin/env bash
# test_slots.sh -- the vaccination drive's last place raced through the
# HTTP API: a real `caremesh serve` with the shipped workflows and the
# demo's pharmacy records, a drive offering one slot of one place, and
# every enrolled patient's `book` for it sent at once on separate
# connections. One is taken (200), every other is refused with the slot
# full (422, nothing kept), and the drive's context holds one booking.
# usage: test_slots.sh CAREMESH   (CM_WRAP: a command to run serve under)
set -uo pipefail
bin=$(realpath "$1")
wrap=${CM_WRAP:-}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/check.sh"
wait_limit_s=60

d=$tmp/node
"$bin" init --data "$d" --node-id pharmacy-node >/dev/null || { echo "FAIL: init"; exit 1; }
sed -i "s|^}\$|  workflows = \"$here/../../workflows\",\n  api = { listen = \"127.0.0.1:0\" },\n}|" "$d/caremesh.conf"
"$bin" lua --data "$d" "$here/../../workflows/demo/seed.lua" pharmacy >/dev/null || { echo "FAIL: seed"; exit 1; }
token=$("$bin" token create --scope write --name desk --data "$d" 2>/dev/null | tail -1)
serve_start "$tmp/serve.log" --virtual-clock 2026-12-07T09:00:00Z

# post PATH BODY OUT: the status, then the body, in OUT
post() {
  curl -sS -o "$3.body" -w '%{http_code}' -X POST -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' --data "$2" "$base$1" >"$3"
  cat "$3.body" >>"$3"
}
post /v1/instances '{"workflow":"vaccination","input":{"pharmacy":"main-st-pharmacy","vaccine":{"code":"208"},"schedule":{"doses":2,"min_interval":"21d"},"target":{"min_age":65},"slots":{"main-st-pharmacy":[{"at":"2026-12-08T10:00:00Z","capacity":1}]}}}' "$tmp/start"
drive=$(tail -c +4 "$tmp/start" | jq -r .instance)
same "drive started" "$(head -c 3 "$tmp/start")" 201
patients=$(curl -sS -H "Authorization: Bearer $token" "$base/v1/instances/$drive" | jq -r '.context.courses | keys[]')
n=$(wc -w <<<"$patients")
[ "$n" -ge 3 ] && ok || bad "want at least 3 patients enrolled, got $n"

i=0 racers=()
for p in $patients; do
  post "/v1/instances/$drive/events" \
    "{\"event\":\"book\",\"payload\":{\"patient\":\"$p\",\"site\":\"main-st-pharmacy\",\"at\":\"2026-12-08T10:00:00Z\"}}" \
    "$tmp/book.$i" &
  racers+=($!)
  i=$((i + 1))
done
for r in "${racers[@]}"; do wait "$r"; done
codes=$(for f in "$tmp"/book.?; do head -c 3 "$f"; echo; done | sort | uniq -c | awk '{ printf "%s:%s ", $2, $1 }')
same "answers" "$codes" "200:1 422:$((n - 1)) "
full=$(grep -l 'is full (1 of 1 places taken)' "$tmp"/book.? | wc -l)
same "refusals name the full slot" "$full" $((n - 1))
ctx=$(curl -sS -H "Authorization: Bearer $token" "$base/v1/instances/$drive" | jq -c .context)
same "places taken" "$(jq '.slots["main-st-pharmacy@2026-12-08T10:00:00.000Z"].booked' <<<"$ctx")" 1
same "bookings held" "$(jq '.bookings | length' <<<"$ctx")" 1
same "bookings made" "$(jq .booked <<<"$ctx")" 1
serve_stop || bad "serve exit status $?"
check_done
