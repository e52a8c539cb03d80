#!/usr/bin/env bash
# demo.sh -- what `make demo` shows: a node initialised in a temporary data
# directory, sample organizations, providers, patients and partnerships
# loaded through the Lua API, and a summary of what the node now holds.
# usage: demo.sh CAREMESH
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
data=$tmp/riverside

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Initialise a node for Riverside Family Clinic"
echo "\$ caremesh init --data $data --node-id riverside-node"
"$bin" init --data "$data" --node-id riverside-node
ls -l "$data" | sed 's/^/  /'

step "2. Load organizations, providers, patients and partnerships through the Lua API"
echo "\$ caremesh lua --data $data workflows/demo/seed.lua"
"$bin" lua --data "$data" "$here/seed.lua"

step "3. A record that breaks the rules is refused, naming the field, and nothing changes"
cat >"$tmp/bad.lua" <<'LUA'
local cm = require "caremesh"
cm.patient.create { id = "pat-new", name = { family = "Doe", given = { "Jo" } },
                    birthDate = "1980-02-30", gender = "female" }
LUA
echo "\$ caremesh lua --data $data bad.lua"
"$bin" lua --data "$data" "$tmp/bad.lua" || echo "  (exit $?: refused)"

step "4. What the node holds"
"$bin" lua --data "$data" "$here/summary.lua"

step "5. Three weeks of a closed-loop referral, in milliseconds, on a virtual clock"
echo "\$ caremesh workflow test workflows/tests/test_referral.lua"
"$bin" workflow test "$here/../tests/test_referral.lua" | sed 's/^/  /'

step "Done"
echo "The demo's data directory is removed on exit. Next: 'make test'."
