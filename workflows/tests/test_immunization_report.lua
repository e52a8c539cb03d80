-- test_immunization_report.lua -- a dose reported by a partner pharmacy
-- arrives at primary care as the message "immunization.given" and is
-- recorded there (workflows/immunization_report.lua); and what the host
-- refuses on arrival: a sender on the wrong node, a purpose or data class
-- the partnership does not cover, a patient who denied consent, an unknown
-- patient, a kind no workflow takes, a reply to an unlinked instance.
-- Messages are handed to the engine as federation does (t.receive).
-- Run: caremesh workflow test workflows/tests/test_immunization_report.lua
local t = require "caremesh.test"
local cm = require "caremesh"
local world = require "lib.seed"
t.load("../immunization_report.lua")

local function seed()
  world.create {
    organizations = { "riverside-clinic", "main-st-pharmacy" },
    patients = { "pat-rivera", "pat-okafor" },
    partnerships = { "flu-drive" },
  }
end

local n = 0
-- The message main-st-pharmacy's node sends for dose `dose` of 2; over
-- replaces envelope fields (false removes one).
local function given(patient, dose, over)
  n = n + 1
  local m = {
    peer = "pharmacy-node", id = "pharmacy-node:" .. n, kind = "immunization.given",
    from = "main-st-pharmacy", to = "riverside-clinic", purpose = "immunization",
    classes = { "immunizations" }, patient = patient, instance = "course-" .. patient,
    payload = { patient = patient, vaccine = "208", system = "http://hl7.org/fhir/sid/cvx",
                display = "COVID-19 mRNA", dose = dose, doses = 2,
                date = "2026-01-05T10:00:00Z", site = "main-st-pharmacy",
                immunization = "imm.course-" .. patient .. "." .. dose, lot = "LOT-9" },
  }
  for k, v in pairs(over or {}) do m[k] = v or nil end
  return m
end

local function refused(m, fragment)
  local before = #cm.immunization.find { patient = m.patient or "pat-rivera" }
  local result, instance, reason = t.receive(m)
  t.eq(result, "refused", "result")
  t.eq(instance, nil, "no instance for a refused message")
  t.ok(reason and reason:find(fragment, 1, true), tostring(reason) .. " lacks " .. fragment)
  t.eq(#cm.immunization.find { patient = m.patient or "pat-rivera" }, before, "nothing recorded")
end

t.test("a reported dose is recorded at primary care, once", function()
  seed()
  local m = given("pat-rivera", 1)
  local result, id = t.receive(m)
  t.eq(result, "received")
  t.expect_state(id, "recorded", "done")
  local imm = cm.immunization.get("main-st-pharmacy.imm.course-pat-rivera.1")
  t.ok(imm, "immunization recorded")
  t.eq(imm.patient, "pat-rivera")
  t.eq(imm.performer, "main-st-pharmacy")
  t.eq(imm.vaccineCode.code, "208")
  t.eq(imm.doseNumber, 1)
  t.eq(imm.seriesDoses, 2)
  t.eq(imm.lotNumber, "LOT-9")
  local kpis = t.kpis()
  t.eq(#kpis, 1)
  t.eq(kpis[1].name, "immunization_reported")
  -- the same message again (a resend after a lost ack): acknowledged, not applied
  local again, same = t.receive(m)
  t.eq(again, "duplicate")
  t.eq(same, id, "a duplicate names the instance the first one started")
  t.eq(#cm.immunization.find { patient = "pat-rivera" }, 1)
  t.eq(#t.kpis(), 1)
end)

t.test("the last dose of the series: a task to update the care plan", function()
  seed()
  t.eq((t.receive(given("pat-rivera", 1))), "received")
  t.eq(#cm.task.find { organization = "riverside-clinic" }, 0)
  t.eq((t.receive(given("pat-rivera", 2))), "received")
  local tasks = cm.task.find { organization = "riverside-clinic" }
  t.eq(#tasks, 1)
  t.ok(tasks[1].title:find("series complete", 1, true), tasks[1].title)
  t.eq(tasks[1].patient, "pat-rivera")
end)

t.test("a sender organization on another node than the peer is refused", function()
  seed()
  refused(given("pat-rivera", 1, { peer = "somebody-else" }),
          'organization "main-st-pharmacy" is hosted on node pharmacy-node, not on somebody-else')
end)

t.test("a purpose or a data class the partnership does not cover is refused", function()
  seed()
  refused(given("pat-rivera", 1, { purpose = "referral" }),
          'partnership flu-drive has no term letting riverside-clinic receive data for the purpose "referral"')
  refused(given("pat-rivera", 1, { classes = { "immunizations", "notes" } }),
          "partnership flu-drive does not let riverside-clinic receive notes")
  refused(given("pat-rivera", 1, { patient_record = { id = "pat-rivera", phone = "+1 555 0111 001" } }),
          "the shared patient record carries contact, which the message does not declare")
  refused(given("pat-rivera", 1, { purpose = false }), "its purpose")
end)

t.test("without a partnership nothing is taken", function()
  world.create { organizations = { "riverside-clinic", "main-st-pharmacy" }, patients = { "pat-rivera" } }
  refused(given("pat-rivera", 1),
          "no active partnership has both main-st-pharmacy and riverside-clinic as members")
end)

t.test("a patient who denied consent for immunization to this partner: refused", function()
  seed()
  cm.consent.create { id = "c-okafor", patient = "pat-okafor", purpose = "immunization",
                      organization = "riverside-clinic", decision = "deny",
                      recorded = "2025-11-01T09:00:00Z" }
  refused(given("pat-okafor", 1), "patient pat-okafor denied consent")
  t.eq((t.receive(given("pat-rivera", 1))), "received", "other patients are not affected")
end)

t.test("an unknown patient, a bad dose: the workflow does not start, the message is refused", function()
  seed()
  refused(given("pat-nobody", 1), "immunization_report could not start")
  refused(given("pat-rivera", 3), "input.dose: 3 is not a dose of a series of 2")
end)

t.test("a kind no workflow takes, a reply to an instance never linked: refused", function()
  seed()
  refused(given("pat-rivera", 1, { kind = "immunization.recalled" }),
          'no workflow on this node is started by "immunization.recalled"')
  local _, id = t.receive(given("pat-rivera", 1))
  refused(given("pat-rivera", 2, { peer = "pharmacy-node", reply_to = "no-such-instance" }),
          "instance no-such-instance has not exchanged messages with node pharmacy-node")
  t.ok(id, "the first dose started an instance")
end)
