#!/usr/bin/env bash
# test_fhir.sh -- the fhir plugin as an operator drives it: import of a
# realistic bundle (dry run, then for real, then again: updates, never
# duplicates), audit entries, export of patients, referrals (real instances
# of workflows/referral.lua), tasks, consents and immunizations, every
# exported resource checked by an independent FHIR R4 validator (npm `fhir`)
# that is shown to reject broken resources, a round trip into a second node
# compared record by record and field by field, and a matrix of bad bundles,
# each refused with the entry index and the FHIR path, writing nothing.
# usage: test_fhir.sh CAREMESH FHIR.so REFERRALS VALIDATOR_DIR
set -uo pipefail
bin=$1
fhir_so=$2
referrals=$3
validator=$4
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bundle=$here/clinic_bundle.json
. "$(dirname "$0")/../lib/check.sh"
sql()   { sqlite3 "$1/caremesh.db" "$2"; }
# A fingerprint of what a node's records hold and its audited writes: changes
# with any write (reads of patients the import resolved are audited, rightly).
state() { sql "$1" "SELECT count(*) || ':' || total(version) || ':' || (SELECT count(*) FROM audit WHERE action NOT LIKE '%.read') FROM record"; }

# mknode NAME: a fresh node with the fhir plugin configured.
mknode() {
  local d=$tmp/$1
  "$bin" init --data "$d" --node-id "$1" >/dev/null || bad "init $1"
  sed -i "s|^}|  plugins = { { name = \"fhir\", path = \"$fhir_so\" } },\n}|" "$d/caremesh.conf"
  echo "$d"
}

a=$(mknode clinic)

# ---- usage ----
expect 0 "fhir --help" -- "$bin" fhir --data "$a" --help;           has "fhir --help" "usage: caremesh fhir import"
expect 0 "import --help" -- "$bin" fhir import --data "$a" --help;  has "import --help" "--dry-run"
expect 0 "export --help" -- "$bin" fhir export --data "$a" --help;  has "export --help" "--kinds LIST"
expect 2 "no subcommand" -- "$bin" fhir --data "$a";                has "no subcommand" "which subcommand?"
expect 2 "bad subcommand" -- "$bin" fhir frob --data "$a";          has "bad subcommand" "unknown subcommand 'frob'"
expect 2 "import without a file" -- "$bin" fhir import --data "$a"; has "import without a file" "which bundle?"
expect 2 "import, bad option" -- "$bin" fhir import --data "$a" --frob x.json
expect 1 "import, missing file" -- "$bin" fhir import --data "$a" "$tmp/none.json"
has "import, missing file" "none.json: No such file or directory"
expect 2 "export without scope" -- "$bin" fhir export --data "$a";  has "export without scope" "give --patient ID or --all"
expect 2 "export, both scopes" -- "$bin" fhir export --data "$a" --all --patient x
expect 2 "export, bad kind" -- "$bin" fhir export --data "$a" --all --kinds patients,labs
has "export, bad kind" 'unknown kind "labs"'
expect 1 "export, unknown patient" -- "$bin" fhir export --data "$a" --patient nobody
has "export, unknown patient" 'no patient "nobody"'

# ---- import: dry run, real, again ----
expect 0 "dry run" -- "$bin" fhir import --data "$a" "$bundle" --dry-run
has "dry run" "dry run: 23 entries valid, 16 record(s) would be written (3 organization, 3 provider, 3 patient, 3 consent, 4 immunization), 1 skipped; nothing written"
has "dry run" "entry[22]: Observation is not imported"
same "dry run writes nothing" "$(sql "$a" "SELECT count(*) FROM record")" 0
expect 0 "import" -- "$bin" fhir import --data "$a" "$bundle"
has "import" "23 entries, 16 record(s) written (3 organization, 3 provider, 3 patient, 3 consent, 4 immunization), 1 skipped"
same "import: records" "$(sql "$a" "SELECT kind || ' ' || count(*) FROM record GROUP BY kind ORDER BY kind" | tr '\n' ,)" \
  "consent 3,immunization 4,organization 3,patient 3,provider 3,"
# the mapping, spot-checked in the store (the round trip below checks every field)
same "provider from Practitioner + PractitionerRole" "$(sql "$a" "SELECT doc FROM record WHERE kind='provider' AND id='prov-okafor'")" \
  '{"id":"prov-okafor","name":{"family":"Okafor","given":["Adaeze"],"prefix":["Dr"],"text":"Dr Adaeze Okafor"},"active":true,"role":"physician","organization":"org-riverside","specialty":"Family practice","phone":"+1 503 555 0111","email":"a.okafor@riverside.example"}'
same "patient: preferred language, conditions, gp by urn:uuid" \
  "$(sql "$a" "SELECT json_extract(doc, '$.language') || ' ' || json_extract(doc, '$.generalPractitioner') || ' ' || json_extract(doc, '$.conditions[1].code') || ' ' || json_extract(doc, '$.preferredChannel') FROM record WHERE kind='patient' AND id='pat-garcia'")" \
  "es-MX org-riverside E11.9 sms"
same "patient id from a urn:uuid fullUrl" "$(sql "$a" "SELECT count(*) FROM record WHERE kind='patient' AND id='3e5a1c84-0d2f-4b61-a9f7-5c2e8d4b9a12'")" 1
same "immunization: practitioner through its PractitionerRole, dose from a string" \
  "$(sql "$a" "SELECT json_extract(doc, '$.practitioner') FROM record WHERE id='imm-garcia-flu'") $(sql "$a" "SELECT json_extract(doc, '$.doseNumber') FROM record WHERE id='imm-tui-hpv'")" \
  "prov-nguyen 2"
same "audit: each write of patient data (3 patients, 3 consents, 4 immunizations)" \
  "$(sql "$a" "SELECT count(*) || ' ' || count(DISTINCT patient) FROM audit WHERE actor='plugin:fhir' AND action='patient.write'")" "10 3"
before=$(state "$a")
expect 0 "re-import" -- "$bin" fhir import --data "$a" "$bundle"
same "re-import updates, never duplicates" "$(sql "$a" "SELECT count(*) || ' ' || min(version) || ' ' || max(version) FROM record")" "16 2 2"

# ---- referrals and their tasks, from the real workflow ----
expect 0 "referral instances" -- "$referrals" "$a/caremesh.db" "$root/workflows/referral.lua"
has "referral instances" "referral-tui-cardio closed"
has "referral instances" "referral-chen-cardio declined"
ntasks=$(sql "$a" "SELECT count(*) FROM record WHERE kind='task'")
[ "$ntasks" -ge 2 ] && ok || bad "the referral workflow made no tasks ($ntasks)"

# ---- export ----
expect 0 "export --all" -- "$bin" fhir export --data "$a" --all -o "$tmp/a.json"
has "export --all" "4 ServiceRequest"
same "export file mode" "$(stat -c %a "$tmp/a.json")" 600
same "bundle type" "$(jq -r '.resourceType + " " + .type' "$tmp/a.json")" "Bundle collection"
same "export: what" "$(jq -r '[.entry[].resource.resourceType] | group_by(.) | map(.[0] + " " + (length | tostring)) | join(",")' "$tmp/a.json")" \
  "Condition 3,Consent 3,Immunization 4,Organization 3,Patient 3,Practitioner 3,PractitionerRole 3,ServiceRequest 4,Task $((ntasks + 4))"
same "referral as ServiceRequest" "$(jq -c '.entry[].resource | select(.resourceType == "ServiceRequest" and .id == "referral-garcia-cardio") | [.status, .priority, .subject.reference, .requester.reference, .performer[0].reference, .reasonCode[0].text, (.identifier | map(.value) | join(" "))]' "$tmp/a.json")" \
  '["active","urgent","Patient/pat-garcia","Organization/org-riverside","Organization/org-cardio","Worsening dyspnoea on exertion; echo requested","referral-garcia-cardio SR-88231"]'
same "referral states as Task statuses" "$(jq -r '[.entry[].resource | select(.resourceType == "Task" and .basedOn) | .id + "=" + .status + "/" + .businessStatus.text] | sort | join(" ")' "$tmp/a.json")" \
  "referral-chen-cardio=rejected/declined referral-garcia-2=requested/requested referral-garcia-cardio=in-progress/scheduled referral-tui-cardio=completed/closed"
"$bin" fhir export --data "$a" --patient pat-garcia --kinds patients,referrals,immunizations >"$tmp/g.json" 2>"$tmp/g.err"
same "export to stdout" "$?" 0
same "export --patient: only that patient" "$(jq -r '[.entry[].resource | if .resourceType == "Patient" then "Patient/" + .id else ((.subject // .patient // .for // {}).reference // empty) end] | unique | join(" ")' "$tmp/g.json" 2>&1)" \
  "Patient/pat-garcia"
same "export --patient: its referrals" "$(jq '[.entry[].resource | select(.resourceType == "ServiceRequest")] | length' "$tmp/g.json")" 2
same "export --patient: no consents unless asked" "$(jq '[.entry[].resource | select(.resourceType == "Consent")] | length' "$tmp/g.json")" 0
reads=$(sql "$a" "SELECT count(*) FROM audit WHERE actor='plugin:fhir' AND action='patient.read' AND patient='pat-garcia'")
[ "$reads" -ge 1 ] && ok || bad "export of a patient is not audited as a read"

# ---- the independent validator ----
expect 0 "validator: the export" -- node "$here/validate.js" "$validator" "$tmp/a.json"
has "validator: the export" ", 0 errors"
# it can fail: each of these breaks one resource the way a bug would
breaks=(
  '(.entry[] | select(.resource.resourceType == "Patient") | .resource.gender) |= "woman"|Patient.gender'
  '(.entry[] | select(.resource.resourceType == "Task") | .resource) |= del(.status)|Task.status'
  '(.entry[] | select(.resource.resourceType == "Immunization") | .resource.performer[0]) |= {who: .actor}|Immunization.performer'
  '(.entry[] | select(.resource.resourceType == "ServiceRequest") | .resource.intent) |= "wish"|ServiceRequest.intent'
)
for brk in "${breaks[@]}"; do
  jq "${brk%|*}" "$tmp/a.json" >"$tmp/broken.json"
  expect 1 "validator rejects ${brk##*|}" -- node "$here/validate.js" "$validator" "$tmp/broken.json"
  has "validator rejects ${brk##*|}" "${brk##*|}"
done

# ---- round trip: export -> import into another node -> export ----
b=$(mknode partner)
expect 0 "round trip: import the export" -- "$bin" fhir import --data "$b" "$tmp/a.json"
has "round trip: import the export" "entry["
has "round trip: import the export" "referrals are instances of the referral workflow"
# every record the export carried, field by field (the stored document is every field kept)
kept="kind IN ('organization','provider','patient','consent','immunization','task')"
sql "$a" "SELECT kind, id, doc FROM record WHERE $kept ORDER BY kind, id" >"$tmp/a.records"
sql "$b" "SELECT kind, id, doc FROM record WHERE $kept ORDER BY kind, id" >"$tmp/b.records"
same "round trip: records" "$(wc -l <"$tmp/b.records")" "$(wc -l <"$tmp/a.records")"
while IFS='|' read -r kind id doc; do
  other=$(sql "$b" "SELECT doc FROM record WHERE kind='$kind' AND id='$id'")
  if [ -z "$other" ]; then bad "round trip: $kind $id missing"; continue; fi
  for field in $(jq -r 'paths(scalars) | map(tostring) | join(".")' <<<"$doc"); do
    want=$(jq -c "getpath(\"$field\" | split(\".\") | map(tonumber? // .))" <<<"$doc")
    got=$(jq -c "getpath(\"$field\" | split(\".\") | map(tonumber? // .))" <<<"$other")
    [ "$want" = "$got" ] && ok || bad "round trip: $kind $id $field: $got, want $want"
  done
  [ "$(jq -cS . <<<"$doc")" = "$(jq -cS . <<<"$other")" ] && ok || bad "round trip: $kind $id has other fields: $other"
done <"$tmp/a.records"
expect 0 "round trip: export again" -- "$bin" fhir export --data "$b" --all -o "$tmp/b.json"
strip='[.entry[].resource | select(.resourceType != "ServiceRequest" and (.basedOn | not)) | del(.meta)] | sort_by(.resourceType, .id)'
same "round trip: the second export is the first" "$(jq -cS "$strip" "$tmp/b.json")" "$(jq -cS "$strip" "$tmp/a.json")"
before=$(state "$a")
expect 0 "re-import of the export" -- "$bin" fhir import --data "$a" "$tmp/a.json"
same "re-import of the export: no new records" "$(sql "$a" "SELECT count(*) FROM record")" "$(cut -d: -f1 <<<"$before")"

# ---- bad bundles: each refused with where and what, nothing written ----
# refuse NAME JSON EXPECTED...: import JSON (text) into node a; exit 1, each
# EXPECTED line in the output, and the store exactly as it was.
refuse() {
  local name=$1 json=$2; shift 2
  printf '%s' "$json" >"$tmp/bad.json"
  local was; was=$(state "$a")
  expect 1 "$name" -- "$bin" fhir import --data "$a" "$tmp/bad.json"
  for want in "$@"; do has "$name" "$want"; done
  has "$name" "nothing written"
  same "$name: nothing written" "$(state "$a")" "$was"
}
P='"resourceType":"Patient","name":[{"family":"Roe"}],"gender":"female","birthDate":"1980-01-01"'
col() { printf '{"resourceType":"Bundle","type":"collection","entry":[%s]}' "$1"; }

refuse "empty file" '' "not JSON: the file is empty"
refuse "not JSON" '{"resourceType": "Bundle",
  "entry": [ { "resource": } ]}' "not JSON: syntax error at line 2, column"
refuse "not an object" '[1,2]' "not a FHIR Bundle: the document is not an object"
refuse "not a Bundle" "{$P}" 'resourceType: not a FHIR Bundle: expected "Bundle", got "Patient"'
refuse "bundle type" '{"resourceType":"Bundle","type":"document","entry":[]}' 'type: "document": expected transaction, batch or collection'
refuse "entry not an array" '{"resourceType":"Bundle","type":"collection","entry":{}}' "entry: expected an array"
refuse "entry not an object" "$(col "{\"resource\":{$P,\"id\":\"p1\"}}, 7")" "entry[1]: expected an object"
refuse "no resource" "$(col '{"fullUrl":"urn:uuid:x"}')" "entry[0].resource: required"
refuse "missing resourceType" "$(col '{"resource":{"id":"x"}}')" "entry[0].resource.resourceType: required"
refuse "no id" "$(col "{\"resource\":{$P}}")" "entry[0].resource.id: required (or a fullUrl urn:uuid:"
refuse "bad id" "$(col "{\"resource\":{$P,\"id\":\"p 1!\"}}")" 'entry[0].resource.id: "p 1!" is not a caremesh id'
refuse "invalid date" "$(col '{"resource":{"resourceType":"Patient","id":"p1","name":[{"family":"Roe"}],"gender":"female","birthDate":"1970-13-01"}}')" \
  'entry[0].resource.birthDate: "1970-13-01" is not a date'
refuse "wrong types" "$(col '{"resource":{"resourceType":"Patient","id":"p1","name":{"family":"Roe"},"gender":"woman","birthDate":19700101,"active":"yes"}}')" \
  "entry[0].resource.name: expected an array, got an object" \
  'entry[0].resource.gender: "woman" is not one of male, female, other, unknown' \
  "entry[0].resource.birthDate: expected a string, got a number" \
  "entry[0].resource.active: expected true or false, got a string"
refuse "unknown reference" "$(col "{\"resource\":{$P,\"id\":\"p1\"}},{\"resource\":{\"resourceType\":\"Immunization\",\"id\":\"i1\",\"status\":\"completed\",\"vaccineCode\":{\"coding\":[{\"code\":\"208\"}]},\"patient\":{\"reference\":\"Patient/nobody\"},\"occurrenceDateTime\":\"2024-01-01\",\"performer\":[{\"actor\":{\"reference\":\"urn:uuid:0000\"}}]}}")" \
  'entry[1].resource.patient.reference: "Patient/nobody" matches no entry of the bundle and no patient in the store' \
  "entry[1].resource.performer[0].actor.reference: \"urn:uuid:0000\" matches no entry's fullUrl in the bundle"
refuse "reference of the wrong type" "$(col "{\"resource\":{$P,\"id\":\"p1\",\"generalPractitioner\":[{\"reference\":\"Patient/pat-chen\"}]}},{\"resource\":{\"resourceType\":\"Consent\",\"id\":\"c1\",\"status\":\"active\",\"patient\":{\"reference\":\"Organization/org-cardio\"},\"provision\":{\"type\":\"permit\",\"purpose\":[{\"system\":\"urn:caremesh:purpose\",\"code\":\"referral\"}]}}}")" \
  'entry[1].resource.patient.reference: "Organization/org-cardio" is a Organization, expected Patient'
refuse "duplicate ids" "$(col "{\"resource\":{$P,\"id\":\"p1\"}},{\"resource\":{$P,\"id\":\"p2\"}},{\"resource\":{$P,\"id\":\"p1\"}}")" \
  'entry[2].resource.id: Patient "p1" is also entry[0]'
refuse "duplicate fullUrl" "$(col "{\"fullUrl\":\"urn:uuid:1\",\"resource\":{$P,\"id\":\"p1\"}},{\"fullUrl\":\"urn:uuid:1\",\"resource\":{$P,\"id\":\"p2\"}}")" \
  "entry[1].fullUrl: \"urn:uuid:1\" is also entry[0]'s fullUrl"
refuse "every problem, not the first" "$(col "{\"resource\":{$P,\"id\":\"ok-1\"}},{\"resource\":{\"resourceType\":\"Patient\",\"id\":\"p2\",\"gender\":\"female\",\"birthDate\":\"1980-01-01\"}},{\"resource\":{$P,\"id\":\"ok-2\"}},{\"resource\":{\"resourceType\":\"Consent\",\"id\":\"c1\",\"status\":\"draft\",\"patient\":{\"reference\":\"Patient/ok-1\"},\"provision\":{\"type\":\"maybe\",\"purpose\":[{\"system\":\"urn:caremesh:purpose\",\"code\":\"marketing\"}],\"period\":{\"start\":\"2024-02-30\"}}}}")" \
  "entry[1].resource.name: required" \
  'entry[3].resource.status: "draft" is not one of active, inactive' \
  'entry[3].resource.provision.type: "maybe" is not one of permit, deny' \
  'entry[3].resource.provision.purpose[0].code: "marketing" is not one of referral' \
  'entry[3].resource.provision.period.start: "2024-02-30" is not a date' \
  "5 problem(s) in 4 entries"
refuse "refused by the model: the good entries are not written either" "$(col "{\"resource\":{$P,\"id\":\"fine-1\"}},{\"resource\":{$P,\"id\":\"p2\",\"telecom\":[{\"system\":\"phone\",\"value\":\"call me\"}]}}")" \
  'entry[1].resource: Patient "p2" refused by caremesh: patient.phone: "call me" is not a phone number'
refuse "transaction: request" '{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","id":"p1","name":[{"family":"Roe"}],"gender":"male","birthDate":"1980-01-01"},"request":{"method":"DELETE","url":"Patient/p1"}},{"resource":{"resourceType":"Patient","id":"p2","name":[{"family":"Roe"}],"gender":"male","birthDate":"1980-01-01"}},{"resource":{"resourceType":"Patient","id":"p3","name":[{"family":"Roe"}],"gender":"male","birthDate":"1980-01-01"},"request":{"method":"PUT","url":"Patient/p4"}}]}' \
  "entry[0].request: method: expected POST or PUT" "entry[1].request: required in a transaction or batch bundle" \
  'entry[2].request: url: "Patient/p4" does not name this resource (Patient/p3)'
refuse "practitioner without a role" "$(col '{"resource":{"resourceType":"Practitioner","id":"dr-x","name":[{"family":"X"}]}}')" \
  'entry[0].resource: no PractitionerRole in the bundle names this Practitioner and no provider "dr-x" is stored'
refuse "two roles for one practitioner" "$(col '{"resource":{"resourceType":"Practitioner","id":"dr-x","name":[{"family":"X"}]}},{"resource":{"resourceType":"PractitionerRole","id":"r1","practitioner":{"reference":"Practitioner/dr-x"},"organization":{"reference":"Organization/org-cardio"},"code":[{"coding":[{"system":"urn:caremesh:provider-role","code":"nurse"}]}]}},{"resource":{"resourceType":"PractitionerRole","id":"r2","practitioner":{"reference":"Practitioner/dr-x"},"organization":{"reference":"Organization/org-cardio"},"code":[{"coding":[{"system":"urn:caremesh:provider-role","code":"surgeon"}]}]}}')" \
  'entry[2].resource.practitioner: Practitioner "dr-x" already has a role in entry[1]' \
  'entry[2].resource.code[0].coding[0].code: "surgeon" is not one of physician'
refuse "condition without its patient" "$(col '{"resource":{"resourceType":"Condition","id":"c1","code":{"coding":[{"code":"E11"}]},"subject":{"reference":"Patient/pat-chen"}}}')" \
  'entry[0].resource.subject: Patient "pat-chen" is not in the bundle'
deep='"x"'; for _ in $(seq 1 100); do deep="{\"extension\":[$deep]}"; done
refuse "deep nesting" "$(col "{\"resource\":{$P,\"id\":\"p1\",\"extension\":[$deep]}}")" "entry[0].resource: nested deeper than 64 levels"
deeper=$(printf '%*s' 1200 '' | tr ' ' '[')
refuse "deeper than the parser takes" "$(col "{\"resource\":{$P,\"id\":\"p1\",\"x\":$deeper}}")" "nested deeper than 1000 levels (line 1, column"
truncate -s 65M "$tmp/huge.json"
was=$(state "$a")
expect 1 "file too big" -- "$bin" fhir import --data "$a" "$tmp/huge.json"
has "file too big" "more than the 64 MiB one import takes"
same "file too big: nothing written" "$(state "$a")" "$was"
rm -f "$tmp/huge.json"

# ---- a big bundle: progress on stderr, one transaction ----
jq -n '{resourceType: "Bundle", type: "batch", entry: [range(2500) | {fullUrl: "urn:uuid:bulk-\(.)",
  resource: {resourceType: "Patient", name: [{family: "Bulk", given: ["N\(.)"]}], gender: "unknown",
             birthDate: "1990-01-01", identifier: [{system: "urn:test", value: "B\(.)"}]},
  request: {method: "POST", url: "Patient"}}]}' >"$tmp/big.json"
before=$(sql "$a" "SELECT count(*) FROM record")
expect 0 "big bundle, dry run" -- "$bin" fhir import --data "$a" "$tmp/big.json" --dry-run
has "big bundle, dry run" "2000/2500 records checked"
same "big bundle, dry run: nothing written" "$(sql "$a" "SELECT count(*) FROM record")" "$before"
expect 0 "big bundle" -- "$bin" fhir import --data "$a" "$tmp/big.json"
has "big bundle" "1000/2500 records written"
has "big bundle" "2500 entries, 2500 record(s) written (2500 patient), 0 skipped"
same "big bundle: written" "$(sql "$a" "SELECT count(*) FROM record")" "$((before + 2500))"
jq '.entry[1700].resource.birthDate = "1990-02-31"' "$tmp/big.json" >"$tmp/big-bad.json"
refuse "big bundle with one bad entry" "$(cat "$tmp/big-bad.json")" 'entry[1700].resource.birthDate: "1990-02-31" is not a date'

check_done
