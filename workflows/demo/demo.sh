#!/usr/bin/env bash
# demo.sh -- what `make demo` shows: three caremesh nodes, each a
# separate `caremesh serve` process on loopback with CURVE links between
# them -- Riverside Family Clinic (primary care), Heart Partners Cardiology,
# Main Street Pharmacy -- running two partnerships on a virtual clock:
#   1. a closed-loop cardiology referral across sites, from the request to
#      the loop closed (referral.lua at the clinic, referral_intake.lua at the
#      cardiology practice, exchanging messages under the partnership's terms);
#   2. a two-dose vaccination drive at the pharmacy (vaccination.lua) with
#      appointment slots (booked, the last place refused, a no-show), each
#      dose reported back to primary care and recorded there
#      (immunization_report.lua);
# the clocks skipping the weeks between. It prints a timeline merged from
# the three nodes, the KPIs, what the partners shared (directory and
# indicators), the audit trail's check, and removes everything on exit.
# Everything is driven through each node's HTTP API with a token.
# usage: demo.sh CAREMESH
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
workflows=$(cd "$here/.." && pwd)
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

START="2026-12-07T09:00:00Z" # a Monday
sites=(clinic cardiology pharmacy)
declare -A node=([clinic]=riverside-node [cardiology]=cardiology-node [pharmacy]=pharmacy-node)
declare -A fed_port api_port token key

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# api SITE METHOD PATH [JSON]: the node's API with its admin token; prints the body
api() {
  local url="http://127.0.0.1:${api_port[$1]}$3"
  if [ $# -ge 4 ]; then
    curl -sS --fail-with-body -X "$2" -H "Authorization: Bearer ${token[$1]}" \
      -H 'Content-Type: application/json' --data "$4" "$url"
  else
    curl -sS --fail-with-body -X "$2" -H "Authorization: Bearer ${token[$1]}" "$url"
  fi
}
# until_true DESCRIPTION COMMAND...: poll (bounded: 30 s) until COMMAND succeeds
until_true() {
  local what=$1
  shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "demo: timed out waiting for $what" >&2
  return 1
}
# state_is SITE INSTANCE STATE
state_is() { [ "$(api "$1" GET "/v1/instances/$2" | jq -r .state)" = "$3" ]; }
# find_instance SITE WORKFLOW [PATIENT]: the id of the first instance
find_instance() {
  api "$1" GET "/v1/instances?workflow=$2${3:+&patient=$3}" | jq -er '.items[0].id'
}
# advance HOURS: every node's clock moves on together
advance() {
  local s
  for s in "${sites[@]}"; do api "$s" POST /v1/clock "{\"advance_ms\":$(($1 * 3600000))}" >/dev/null; done
  local later="$1 hours"
  [ "$1" -ge 24 ] && later="$(($1 / 24)) days"
  say "... $later later: $(api clinic GET /v1/clock | jq -r .now | cut -c1-16)Z"
}
signal() { # SITE INSTANCE EVENT [PAYLOAD]
  api "$1" POST "/v1/instances/$2/events" "{\"event\":\"$3\",\"payload\":${4:-{\}}}" | jq -r .state
}

step "1. Three nodes: a clinic, a cardiology practice and a community pharmacy"
for s in "${sites[@]}"; do
  "$bin" init --data "$tmp/$s" --node-id "${node[$s]}" >/dev/null
  key[$s]=$("$bin" node info --data "$tmp/$s" | sed -n 's/^public key: //p')
  fed_port[$s]=$(free_port)
  api_port[$s]=$(free_port)
  say "${node[$s]}: data $tmp/$s, federation tcp://127.0.0.1:${fed_port[$s]}, API 127.0.0.1:${api_port[$s]}"
done
for s in "${sites[@]}"; do
  peers=""
  for o in "${sites[@]}"; do
    [ "$o" = "$s" ] && continue
    peers+="      { id = \"${node[$o]}\", endpoint = \"tcp://127.0.0.1:${fed_port[$o]}\", public_key = \"${key[$o]}\" },
"
  done
  sed -i '$d' "$tmp/$s/caremesh.conf"
  cat >>"$tmp/$s/caremesh.conf" <<CONF
  workflows = "$workflows",
  api = { listen = "127.0.0.1:${api_port[$s]}" },
  federation = {
    listen = "tcp://127.0.0.1:${fed_port[$s]}",
    peers = {
$peers    },
  },
}
CONF
  "$bin" lua --data "$tmp/$s" "$here/seed.lua" "$s" | sed 's/^/   /'
  token[$s]=$("$bin" token create --scope admin --name demo --data "$tmp/$s" 2>/dev/null | tail -1)
done

step "2. Each node serves on a virtual clock starting $START; the links come up (CURVE)"
for s in "${sites[@]}"; do
  "$bin" serve --data "$tmp/$s" --virtual-clock "$START" 2>"$tmp/$s.log" &
  pids+=($!)
done
for s in "${sites[@]}"; do
  until_true "${node[$s]} ready" api "$s" GET /readyz
done
peers_up() { [ "$(api clinic GET /v1/peers | jq '[.items[] | select(.up)] | length')" = 2 ]; }
until_true "the clinic's links" peers_up
partners_known() { [ "$(sqlite3 "$tmp/clinic/caremesh.db" 'SELECT count(*) FROM directory')" -ge 2 ]; }
until_true "the partners' directories" partners_known
say "The clinic's node now knows its partners from what they shared (no patient data):"
"$bin" peers --offline --data "$tmp/clinic" | sed 's/^/   /'

step "3. A closed-loop referral across sites: Riverside refers Mr Okafor to Heart Partners"
ref=$(api clinic POST /v1/instances '{"workflow":"referral","input":{"patient":"pat-okafor","from":"riverside-clinic","to":"heart-partners","reason":"Worsening dyspnoea on exertion, BNP 900: cardiology review of heart failure","priority":"urgent"}}' | jq -r .instance)
say "clinic: referral $ref started (requested); the request leaves with what the terms allow"
intake_here() { find_instance cardiology referral_intake; }
until_true "the request at Heart Partners" intake_here
intake=$(intake_here)
say "cardiology: intake $intake started by the partner's message, in triage"
say "cardiology: the shared record is kept: $(api cardiology GET /v1/patients/pat-okafor | jq -c '{id, birthDate, conditions: [.conditions[].code], email}')"
advance 5
say "cardiology: triage accepts -> $(signal cardiology "$intake" accept)"
until_true "accepted at the clinic" state_is clinic "$ref" accepted
say "clinic: referral $ref is accepted"
say "cardiology: books 14 Dec 15:30 -> $(signal cardiology "$intake" book '{"appointment":"2026-12-14T15:30:00Z","site":"Heart Partners, 2 Oak Ave"}')"
until_true "scheduled at the clinic" state_is clinic "$ref" scheduled
say "clinic: referral $ref is scheduled"
advance 192
say "cardiology: the consult note goes back -> $(signal cardiology "$intake" consult_note '{"note":"Echo: EF 35%. Started sacubitril/valsartan; follow up in 6 weeks.","summary":"HFrEF, therapy optimised"}')"
until_true "the consult note at the clinic" state_is clinic "$ref" consult_received
advance 3
say "clinic: the consult note is in; Dr Ngata reviews it -> $(signal clinic "$ref" close '{"note":"Reviewed; plan agreed"}')"

step "4. A two-dose vaccination drive at Main Street Pharmacy with appointment slots, doses reported to Riverside"
# slots: two places every 20 minutes for two hours from 2 hours from now,
# and the same 21 days later, when dose 2 is due
iso_in() { # HOURS: the virtual clock plus HOURS, to the minute
  date -u -d "@$(($(date -u -d "$(api pharmacy GET /v1/clock | jq -r .now)" +%s) + $1 * 3600))" +%Y-%m-%dT%H:%M
}
dose1=$(iso_in 2) dose2=$(iso_in 506)
range() { echo "{\"day\":\"${1:0:10}\",\"from\":\"${1:11:5}\",\"to\":\"$(date -u -d "${1}Z + 2 hours" +%H:%M)\",\"length\":\"20m\",\"capacity\":2}"; }
drive=$(api pharmacy POST /v1/instances '{"workflow":"vaccination","input":{"pharmacy":"main-st-pharmacy","primary_care":"riverside-clinic","vaccine":{"code":"208","system":"http://hl7.org/fhir/sid/cvx","display":"COVID-19, mRNA"},"schedule":{"doses":2,"min_interval":"21d","max_interval":"42d"},"target":{"min_age":65},"slots":{"main-st-pharmacy":['"$(range "$dose1"),$(range "$dose2")"']}}}' | jq -r .instance)
say "pharmacy: drive $drive enrolls $(api pharmacy GET "/v1/instances/$drive" | jq '.context.enrolled') patients aged 65 and over, $(api pharmacy GET "/v1/instances/$drive" | jq '.context.slots | length') slots of 2 places"
book() { # PATIENT AT: the state after, or the refusal's reason
  api pharmacy POST "/v1/instances/$drive/events" "{\"event\":\"book\",\"payload\":{\"patient\":\"$1\",\"site\":\"main-st-pharmacy\",\"at\":\"$2:00Z\"}}" 2>/dev/null |
    jq -r '.state // .error.message' || true
}
for p in pat-okafor pat-rivera; do say "pharmacy: $p books ${dose1/T/ } UTC -> $(book "$p" "$dose1")"; done
say "pharmacy: pat-schmidt asks for the same slot -> $(book pat-schmidt "$dose1" | sed 's/.*guard: //')"
say "pharmacy: pat-schmidt books 20 minutes later -> $(book pat-schmidt "$(date -u -d "${dose1}Z + 20 minutes" +%Y-%m-%dT%H:%M)")"
advance 2
for p in pat-okafor pat-rivera; do
  course=$(api pharmacy GET "/v1/instances/$drive" | jq -r ".context.courses[\"$p\"]")
  say "pharmacy: $p dose 1 -> $(signal pharmacy "$course" dose_given '{"site":"main-st-pharmacy","practitioner":"rph-tanaka","lot":"FK1234"}')"
  say "pharmacy: $p books dose 2 on ${dose2/T/ } UTC -> $(book "$p" "$dose2")"
done
advance 1
say "pharmacy: pat-schmidt did not come: no-shows $(api pharmacy GET "/v1/instances/$drive" | jq '.context.no_shows'), the place freed and Ms Schmidt told"
doses_at_clinic() { [ "$(api clinic GET '/v1/immunizations' | jq '.items | length')" -ge "$1" ]; }
until_true "dose 1 at the clinic" doses_at_clinic 2
say "clinic: $(api clinic GET /v1/immunizations | jq '.items | length') doses recorded from the pharmacy's reports"
advance 503
for p in pat-okafor pat-rivera; do
  course=$(api pharmacy GET "/v1/instances/$drive" | jq -r ".context.courses[\"$p\"]")
  say "pharmacy: $p dose 2 -> $(signal pharmacy "$course" dose_given '{"site":"main-st-pharmacy","practitioner":"rph-adeyemi","lot":"FK2001"}')"
done
until_true "dose 2 at the clinic" doses_at_clinic 4
say "clinic: series complete for both; tasks for the nurse: $(api clinic GET '/v1/tasks?organization=riverside-clinic&ownerRole=nurse' | jq -r '[.items[].title] | unique | join("; ")')"

step "5. The timeline, merged from the three nodes (virtual time)"
for s in "${sites[@]}"; do
  sqlite3 -separator $'\t' "$tmp/$s/caremesh.db" ".timeout 5000" \
    "SELECT substr(h.at, 1, 16), '${node[$s]}', i.workflow, h.event, coalesce(h.from_state, '-'), h.to_state
     FROM history h JOIN instance i ON i.id = h.instance ORDER BY h.seq"
done | awk -F'\t' '{ # at one instant: local actions first, then what a partner message caused
    later = ($4 ~ /\./ || ($4 == "start" && ($3 == "referral_intake" || $3 == "immunization_report"))) ? 1 : 0
    printf "%s\t%d\t%06d\t%s\n", $1, later, NR, $0 }' | sort -t$'\t' -k1,1 -k2,2n -k3,3n | cut -f4- |
  awk -F'\t' '{ printf "   %s  %-16s %-20s %-22s %s -> %s\n", $1, $2, $3, $4, $5, $6 }'

step "6. KPIs"
for s in "${sites[@]}"; do
  api "$s" GET /v1/kpis | jq -r --arg n "${node[$s]}" '.items[] | "   \($n)  \(.name): count \(.count), sum \(.sum)"'
done
shared_with() { "$bin" peers --offline --data "$tmp/$1" | grep -q "$2"; }
until_true "the clinic's indicators at Heart Partners" shared_with cardiology 'referral_loop_closed: count 1'
until_true "the pharmacy's indicators at the clinic" shared_with clinic 'vaccination_dose_given: count 4'
say "What Riverside shared with Heart Partners, and the pharmacy with Riverside (aggregates only):"
"$bin" peers --offline --data "$tmp/cardiology" | grep -E 'indicator riverside-heart-loop' | sed 's/^ */   at cardiology-node: /'
"$bin" peers --offline --data "$tmp/clinic" | grep -E 'indicator millbrook-flu-drive' | sed 's/^ */   at riverside-node:  /'

step "7. Every access to patient data is in each node's hash-chained audit trail"
for s in "${sites[@]}"; do
  say "${node[$s]}: $("$bin" audit verify --offline --data "$tmp/$s")"
done

step "Done"
for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}"; wait "${pids[$i]}" || true; done
pids=()
echo "The three nodes stopped; their data directories are removed on exit."
