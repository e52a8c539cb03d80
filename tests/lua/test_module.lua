-- test_module.lua -- the `caremesh` Lua module as a workflow author or admin
-- script sees it: records as plain tables, errors that name the field,
-- expected failures as nil, message, code. Run by tests/lua/run.sh through
-- `caremesh lua` against a fresh node.
local cm = require "caremesh"

local passed, failed = 0, 0
local function test(name, fn)
  local ok, err = pcall(fn)
  if ok then
    passed = passed + 1
  else
    failed = failed + 1
    print("FAIL " .. name .. ": " .. tostring(err))
  end
end
local function eq(got, want, what)
  if got ~= want then
    error((what or "value") .. ": got " .. tostring(got) .. ", want " .. tostring(want), 2)
  end
end
-- fn must raise an error whose message contains every fragment (plain text).
local function raises(fn, ...)
  local ok, err = pcall(fn)
  if ok then error("expected an error, got none", 2) end
  for _, frag in ipairs({ ... }) do
    if not string.find(tostring(err), frag, 1, true) then
      error("error '" .. tostring(err) .. "' lacks '" .. frag .. "'", 2)
    end
  end
end

test("module exposes the record kinds and helpers", function()
  for _, kind in ipairs { "organization", "provider", "patient", "partnership",
                          "consent", "care_team", "task", "immunization" } do
    eq(type(cm[kind].create), "function", kind .. ".create")
    eq(cm[kind].kind, kind)
  end
  eq(type(cm.node_id), "string")
  eq(cm.node_id, "lua-test-node")
  assert(cm.now():match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), cm.now())
end)

test("the module cannot be rewired by a script", function()
  raises(function() cm.patient = nil end, "read-only")
  raises(function() cm.patient.create = print end, "read-only")
  local n = 0
  for _ in pairs(cm) do n = n + 1 end
  assert(n >= 12, "pairs walks the module")
  -- pairs must not hand out the table behind a read-only view
  for _, v in pairs(cm.patient) do assert(type(v) ~= "table" or v == cm.patient) end
  local _, state = pairs(cm.patient)
  raises(function() rawset(state, "injected", true) end)
  eq(cm.patient.injected, nil, "nothing injected")
end)

test("organization create/get/update/find", function()
  local org = cm.organization.create {
    id = "clinic-a", name = "Riverside Family Clinic", kind = "clinic", node = "lua-test-node",
  }
  eq(org.id, "clinic-a")
  eq(org.meta.versionId, "1")
  eq(org.active, true, "default active")
  cm.organization.create { id = "cardio-b", name = "Heart Partners", kind = "specialist_practice" }
  cm.organization.create { id = "pharm-c", name = "Main St Pharmacy", kind = "community_pharmacy" }
  local got = cm.organization.get("clinic-a")
  eq(got.name, "Riverside Family Clinic")
  local upd = cm.organization.update("clinic-a", { phone = "+1 555 010 2000" })
  eq(upd.phone, "+1 555 010 2000")
  eq(upd.meta.versionId, "2")
  eq(cm.organization.get("clinic-a").name, "Riverside Family Clinic", "update keeps fields")
  local found = cm.organization.find { kind = "community_pharmacy" }
  eq(#found, 1)
  eq(found[1].id, "pharm-c")
  eq(cm.organization.count(), 3)
end)

test("get of a missing record is nil, message, code", function()
  local rec, msg, code = cm.patient.get("nobody")
  eq(rec, nil)
  eq(code, "not_found")
  assert(msg:find("nobody", 1, true), msg)
  local r2, _, c2 = cm.patient.update("nobody", { gender = "female" })
  eq(r2, nil)
  eq(c2, "not_found")
end)

test("invalid records raise naming the field and change nothing", function()
  local before = cm.provider.count()
  raises(function() cm.provider.create { id = "dr-x", role = "physician", organization = "clinic-a" } end,
         "provider.name")
  raises(function()
    cm.provider.create { id = "dr-x", name = { family = "Ngata" }, role = "wizard", organization = "clinic-a" }
  end, "provider.role", "wizard")
  raises(function()
    cm.provider.create { id = "dr-x", name = { family = "Ngata" }, role = "physician", organization = "nowhere" }
  end, "provider.organization", "nowhere")
  raises(function() cm.provider.create "not a table" end, "cm.provider.create: the record must be a table, got string")
  raises(function() cm.provider.find({}, { after = {} }) end, "cm.provider.find: after: must be an id")
  raises(function() cm.provider.update("dr-x") end, "cm.provider.update: the patch must be a table, got nil")
  raises(function()
    cm.provider.create { id = "dr-x", name = { family = "Ngata" }, role = "physician",
                         organization = "clinic-a", extra = print }
  end, "provider.extra", "function cannot be carried")
  eq(cm.provider.count(), before, "nothing written")
end)

test("errors point at the script line that called", function()
  local ok, err = pcall(cm.organization.create, { id = "x" })
  eq(ok, false)
  assert(tostring(err):find("organization.name: required", 1, true), err)
  local ok2, err2 = pcall(function() cm.organization.create { id = "x" } end)
  eq(ok2, false)
  assert(tostring(err2):match("test_module%.lua:%d+: organization%.name: required"), err2)
end)

test("patients, conditions and find by condition", function()
  cm.provider.create { id = "dr-ng", name = { family = "Ngata", given = { "Aroha" } },
                       role = "physician", organization = "clinic-a" }
  local p = cm.patient.create {
    id = "pat-1", name = { family = "Rivera", given = { "Ana", "Maria" } },
    birthDate = "1961-04-12", gender = "female", phone = "+1 555 0100 111",
    language = "es", preferredChannel = "sms",
    conditions = { { code = "E11", system = "http://hl7.org/fhir/sid/icd-10-cm",
                     display = "Type 2 diabetes mellitus" } },
    identifiers = { { system = "urn:clinic-a:mrn", value = "MRN-0001" } },
  }
  eq(p.name.given[2], "Maria")
  eq(p.conditions[1].display, "Type 2 diabetes mellitus")
  cm.patient.create { id = "pat-2", name = { family = "Okafor", given = { "Chidi" } },
                      birthDate = "1950-09-30", gender = "male",
                      conditions = { { code = "I10" }, { code = "E11" } } }
  cm.patient.create { id = "pat-3", name = { family = "Lee", given = { "Min" } },
                      birthDate = "1990-01-05", gender = "female", conditions = {} }
  local e11 = cm.patient.find { condition = "E11" }
  eq(#e11, 2)
  eq(e11[1].id, "pat-1")
  eq(e11[2].id, "pat-2")
  eq(#cm.patient.find { condition = "E11", gender = "male" }, 1)
  eq(#cm.patient.find { identifier = "MRN-0001" }, 1)
  local page = cm.patient.list { limit = 2 }
  eq(#page, 2)
  local rest = cm.patient.list { after = page[2].id }
  eq(#rest, 1)
  eq(rest[1].id, "pat-3")
  raises(function() cm.patient.find { colour = "blue" } end, "colour")
end)

test("bad dates are refused", function()
  raises(function()
    cm.patient.create { id = "pat-9", name = { family = "X", given = { "Y" } },
                        birthDate = "2023-02-30", gender = "female" }
  end, "patient.birthDate", "2023-02-30")
  eq(cm.patient.get("pat-9"), nil)
end)

test("duplicate ids are refused", function()
  raises(function()
    cm.organization.create { id = "clinic-a", name = "Again", kind = "clinic" }
  end, "clinic-a", "already exists")
end)

test("update with cm.null removes a field", function()
  local p = cm.patient.update("pat-1", { phone = cm.null })
  eq(p.phone, nil)
  eq(p.meta.versionId, "2")
end)

test("partnership with terms, champions, kpis", function()
  cm.provider.create { id = "dr-heart", name = { family = "Osei", given = { "Kwame" } },
                       role = "physician", specialty = "cardiology", organization = "cardio-b" }
  cm.provider.create { id = "cc-heart", name = { family = "Moreau", given = { "Lea" } },
                       role = "care_coordinator", organization = "cardio-b" }
  cm.provider.create { id = "cc-clinic", name = { family = "Haddad", given = { "Sami" } },
                       role = "care_coordinator", organization = "clinic-a" }
  local ps = cm.partnership.create {
    id = "heart-loop", name = "Riverside cardiology referral loop",
    purpose = "Close every cardiology referral loop within 30 days",
    members = {
      { organization = "clinic-a", offers = { "primary_care" }, requests = { "cardiology_consult" } },
      { organization = "cardio-b", offers = { "cardiology_consult" }, requests = {} },
    },
    terms = {
      { receiver = "cardio-b", classes = { "demographics", "conditions" }, purposes = { "referral" } },
    },
    champions = {
      { organization = "clinic-a", champion = "dr-ng", backup = "cc-clinic" },
      { organization = "cardio-b", champion = "dr-heart", backup = "cc-heart" },
    },
    kpis = { { name = "loop_closure_rate", target = 0.9 } },
    reviewCadence = "quarterly",
  }
  eq(ps.status, "active")
  eq(#cm.partnership.find { member = "cardio-b" }, 1)
  raises(function()
    cm.partnership.create {
      id = "bad-terms", name = "x", purpose = "x", reviewCadence = "annual",
      members = { { organization = "clinic-a" }, { organization = "cardio-b" } },
      terms = { { receiver = "pharm-c", classes = { "demographics" }, purposes = { "referral" } } },
    }
  end, "terms[0].receiver", "pharm-c")
end)

test("consent, care team and task", function()
  local c = cm.consent.create { id = "c-1", patient = "pat-2", purpose = "outreach",
                                decision = "deny", period = { start = "2026-01-01" } }
  eq(c.decision, "deny")
  eq(#cm.consent.find { patient = "pat-2", purpose = "outreach" }, 1)
  local team = cm.care_team.create { id = "team-1", patient = "pat-1",
    participants = { { member = "dr-ng", role = "primary_care_physician" },
                     { member = "dr-heart", role = "cardiologist" } } }
  eq(team.participants[2].onBehalfOf, "cardio-b", "organization filled from the provider")
  eq(#cm.care_team.find { member = "dr-heart" }, 1)
  local t = cm.task.create { id = "task-1", title = "Call the cardiology office",
                             organization = "clinic-a", patient = "pat-1",
                             ownerRole = "care_coordinator", due = "2026-12-02" }
  eq(t.status, "requested")
  raises(function() cm.task.update("task-1", { status = "done" }) end, "task.status", "done")
  eq(cm.task.update("task-1", { status = "completed" }).status, "completed")
  -- a completed task takes no more changes: an expected failure, nothing written
  local again, msg, code = cm.task.update("task-1", { status = "in-progress" })
  eq(again, nil)
  eq(code, "wrong_state")
  eq(msg:find('task "task-1" is already completed', 1, true) ~= nil, true, msg)
  eq(cm.task.get("task-1").meta.versionId, "2")
  eq(#cm.task.find { status = "completed" }, 1)
end)

test("immunizations are records of given doses", function()
  local imm = cm.immunization.create {
    id = "imm-1", patient = "pat-2", performer = "pharm-c",
    vaccineCode = { system = "http://hl7.org/fhir/sid/cvx", code = "208", display = "COVID-19, mRNA" },
    occurrenceDateTime = "2026-10-02T10:30:00Z", doseNumber = 1, seriesDoses = 2, lotNumber = "EW0182",
  }
  eq(imm.status, "completed")
  eq(#cm.immunization.find { vaccine = "208", patient = "pat-2" }, 1)
  raises(function()
    cm.immunization.create { id = "imm-2", patient = "pat-2", performer = "pharm-c",
                             vaccineCode = { code = "208" } }
  end, "immunization.occurrenceDateTime")
end)

print(string.format("%d passed, %d failed", passed, failed))
if failed > 0 then error(failed .. " Lua module test(s) failed", 0) end
