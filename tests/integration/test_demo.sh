#!/usr/bin/env bash
# test_demo.sh -- `make demo` works as shown: three nodes as separate
# processes, the cross-site referral closes, appointment slots are booked
# (the last place refused, a no-show counted), both doses of both patients
# are recorded at primary care, the partners' indicators arrive, every node's
# audit trail verifies, and nothing is left behind.
# usage: test_demo.sh CAREMESH
set -uo pipefail
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
out=$(bash "$here/../../workflows/demo/demo.sh" "$bin" 2>&1)
rc=$?
passed=0 failed=0
has() { if grep -qF -- "$1" <<<"$out"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: output lacks: $1"; fi; }
[ "$rc" -eq 0 ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: demo exited $rc"; }
has "cardiology: intake referral_intake-1 started by the partner's message, in triage"
has "clinic: referral referral-1 is scheduled"
has "clinic: the consult note is in; Dr Ngata reviews it -> closed"
has "pharmacy: pat-schmidt asks for the same slot -> book: slot main-st-pharmacy@"
has "is full (2 of 2 places taken)"
has "pharmacy: pat-schmidt books 20 minutes later -> running"
has "pharmacy: pat-rivera books dose 2 on"
has "pharmacy: pat-schmidt did not come: no-shows 1"
has "pharmacy-node  vaccination_no_show: count 1, sum 1"
has "pharmacy: pat-okafor dose 2 -> completed"
has "pharmacy: pat-rivera dose 2 -> completed"
has "riverside-node  immunization_reported: count 4, sum 4"
has "riverside-node  referral_loop_closed: count 1, sum 1"
has "at cardiology-node: indicator riverside-heart-loop/referral_loop_closed: count 1"
has "at riverside-node:  indicator millbrook-flu-drive/vaccination_dose_given: count 4"
for n in riverside-node cardiology-node pharmacy-node; do has "$n: audit trail intact"; done
dir=$(sed -n 's/.*riverside-node: data \(.*\)\/clinic,.*/\1/p' <<<"$out" | head -1)
if [ -n "$dir" ] && [ ! -e "$dir" ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: the demo left '$dir' behind"; fi
if [ "$failed" -ne 0 ]; then echo "$out" | tail -40; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
