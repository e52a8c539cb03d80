#!/usr/bin/env bash
# test_plugin_lua.sh -- plugin functions reach the Lua of `caremesh lua` and of
# `caremesh workflow test --config` (a workflow step writing through a plugin,
# all or nothing with the step), with errors at the caller's file and line.
# usage: test_plugin_lua.sh CAREMESH RECORDS_PLUGIN.so
set -uo pipefail
bin=$1
records_so=$2
. "$(dirname "$0")/../lib/check.sh"

d=$tmp/node
expect 0 init -- "$bin" init --data "$d" --node-id clinic-a
sed -i "s|^}|  plugins = { { name = \"records\", path = \"$records_so\" } },\n}|" "$d/caremesh.conf"

# ---- caremesh lua ----
cat >"$tmp/put.lua" <<'LUA'
local records = require "records"
assert(records.put("patient", { id = "pat-1", name = { family = "Ngata" },
                                birthDate = "1971-04-02", gender = "female" }))
LUA
cat >"$tmp/bad.lua" <<'LUA'
local records = require "records"
records.put("patient", { id = "pat-2", name = { family = "Moana" }, birthDate = "1980-02-30",
                         gender = "male" })
LUA
cat >"$tmp/find.lua" <<'LUA'
for _, p in ipairs(require "records".find("patient", {})) do print(p.id) end
LUA
expect 0 "lua: put through a plugin" -- "$bin" lua --data "$d" "$tmp/put.lua"
expect 1 "lua: a refused put" -- "$bin" lua --data "$d" "$tmp/bad.lua"
has "lua: a refused put" "bad.lua:2: records.put: patient.birthDate:"
expect 0 "lua: find through a plugin" -- "$bin" lua --data "$d" "$tmp/find.lua"
has "lua: find through a plugin" "pat-1"
lacks "lua: find through a plugin" "pat-2"
# a script that fails after a plugin read it: the read stays in the trail, as error
printf 'print(require "records".find("patient", {})[1].id)\nerror("after a plugin read")\n' >"$tmp/findfail.lua"
expect 1 "lua: a failing script's plugin read" -- "$bin" lua --data "$d" "$tmp/findfail.lua"
has "lua: a failing script's plugin read" "pat-1"
same "lua: the plugin's read is written again as error" \
  "$(sqlite3 "$d/caremesh.db" "SELECT actor || ' ' || action || ' ' || outcome || ' ' || detail FROM audit ORDER BY seq DESC LIMIT 1")" \
  "plugin:records patient.read error patient pat-1 (rolled back: the script failed)"
expect 0 "lua: audit verify" -- "$bin" audit verify --data "$d"

# ---- workflow test --config ----
cat >"$tmp/enrol.lua" <<'LUA'
local cm = require "caremesh"
local records = require "records"
return cm.workflow {
  name = "enrol", version = 1,
  input = { patient = "string", birthDate = "string" },
  start = "enrolling",
  states = {
    enrolling = {
      on = {
        confirm = function(wf)
          records.put("patient", { id = wf.input.patient, name = { family = "Tane" },
                                   birthDate = wf.input.birthDate, gender = "other" })
          return "enrolled"
        end,
      },
    },
    enrolled = { final = true },
  },
}
LUA
cat >"$tmp/test_enrol.lua" <<'LUA'
local t = require "caremesh.test"
local records = require "records"
t.load("enrol.lua")
t.test("a step writes a patient through the plugin", function()
  local id = t.start("enrol", { patient = "pat-7", birthDate = "1990-01-15" })
  t.eq(t.signal(id, "confirm"), "enrolled")
  t.eq(records.find("patient", {})[1].id, "pat-7")
end)
t.test("a failing step writes nothing", function()
  local id = t.start("enrol", { patient = "pat-8", birthDate = "someday" })
  local state, err = t.signal(id, "confirm")
  t.eq(state, nil)
  assert(err:find("records.put: patient.birthDate", 1, true), err)
  t.eq(#records.find("patient", {}), 0)
  t.expect_state(id, "enrolling")
end)
LUA
expect 0 "workflow test with plugins" -- "$bin" workflow test --config "$d/caremesh.conf" "$tmp/test_enrol.lua"
has "workflow test with plugins" "2 passed, 0 failed"
expect 1 "workflow test without plugins" -- "$bin" workflow test "$tmp/test_enrol.lua"
has "workflow test without plugins" "module 'records' not found"
expect 1 "workflow test with a missing config" -- "$bin" workflow test --config "$tmp/none.conf" "$tmp/test_enrol.lua"
has "workflow test with a missing config" "none.conf"

check_done
