-- test_referral_intake.lua -- the specialist's side of a closed-loop referral
-- (workflows/referral_intake.lua): triage, accept/decline, booking and the
-- reminder before it, no-show, consult note back, cancellation by either
-- side, refusals; and both sides together, messages relayed as federation
-- would relay them.
-- Seed data and helpers shared with the other workflow tests: lib/seed.lua,
-- lib/helpers.lua.
-- Run: caremesh workflow test workflows/tests/test_referral_intake.lua
local t = require "caremesh.test"
local cm = require "caremesh"
local h = require "lib.helpers"
local world = require "lib.seed"
t.load("../referral_intake.lua")
t.load("../referral.lua")

-- ---- helpers ------------------------------------------------------------

local decode, ctx, sent = h.decode, h.ctx, h.sent
local tasks = h.tasks_at("heart-partners")

-- Both practices in one store (one node standing in for two), their people,
-- and the patients: Okafor is already known to the cardiology practice,
-- Rivera is not (only the clinic has her record).
local function seed()
  world.create {
    organizations = { "heart-partners", "riverside-clinic" },
    providers = { "dr-osei", "cc-moreau", "cc-haddad" },
    patients = { "pat-okafor" },
    partnerships = { "cardiology-referrals" },
  }
end

-- For the two-sided test: the referring clinic's patient.
local function seed_clinic_patient() world.create { patients = { "pat-rivera" } } end

local REASON = "Palpitations with syncope; Holter and cardiology evaluation"

local function input(over)
  return h.with({ referral = "referral-17", from = "riverside-clinic", to = "heart-partners",
                  patient = "pat-rivera", reason = REASON }, over)
end

local function start(over) return h.start("referral_intake", input(over), "triage") end

local function last_sent() local all = sent(); return all[#all] end

-- The event is refused, with a message containing fragment, nothing moves
-- and nothing is sent.
local function refused(id, event, payload, fragment)
  local sends = #t.sent()
  h.refused(id, event, payload, fragment)
  t.eq(#t.sent(), sends, event .. ": something was sent")
end

local APPT = "2026-01-12T15:30:00Z"

local function book(id, appointment, site)
  t.eq(t.signal(id, "book", { appointment = appointment or APPT, site = site }), "booked")
end

-- ---- the specialist's side ----------------------------------------------

t.test("a referral comes in: triage, accept, book, consult note back, closed", function()
  seed()
  local id = start()
  local triage = tasks { ownerRole = "care_coordinator" }
  t.eq(#triage, 1, "triage tasks")
  t.eq(triage[1].title, "Triage a referral from Riverside Family Clinic")
  t.eq(triage[1].patient, nil, "a patient not known here is not referenced")
  t.ok(triage[1].description:find(REASON, 1, true), "the reason is in the triage task")
  t.ok(triage[1].note:find("pat-rivera", 1, true), "the referring clinic's patient id is noted")
  t.eq(triage[1].due, "2026-01-07T09:00:00.000Z")
  t.eq(#t.sent(), 0, "nothing sent before triage")

  t.advance("3h")
  t.eq(t.signal(id, "accept"), "accepted")
  t.eq(sent(), { { to = "riverside-clinic", kind = "referral.accepted", instance = id,
                   payload = { referral = "referral-17" } } })
  t.eq(#tasks { ownerRole = "care_coordinator" }, 2, "a booking task")

  t.advance("1d")
  book(id, APPT, "Heart Partners, 3rd floor")
  t.eq(last_sent(), { to = "riverside-clinic", kind = "referral.scheduled", instance = id,
                      payload = { referral = "referral-17", appointment = APPT,
                                  site = "Heart Partners, 3rd floor" } })
  t.advance("7d")
  t.eq(t.signal(id, "consult_note", { note = "Holter: paroxysmal AF, 3% burden. Apixaban started.",
                                      summary = "Paroxysmal AF; anticoagulated" }), "closed")
  t.expect_state(id, "closed", "done")
  t.eq(last_sent(), { to = "riverside-clinic", kind = "referral.consult_note", instance = id,
                      payload = { referral = "referral-17",
                                  note = "Holter: paroxysmal AF, 3% burden. Apixaban started.",
                                  summary = "Paroxysmal AF; anticoagulated" } })
  t.eq(#sent(), 3, "messages back")
  local c = ctx(id)
  t.eq(c.summary, "Paroxysmal AF; anticoagulated")
  t.eq(c.appointment, APPT)
  t.eq(c.milestones, { received = "2026-01-05T09:00:00.000Z", accepted = "2026-01-05T12:00:00.000Z",
                       booked = "2026-01-06T12:00:00.000Z", patient_reminded = "2026-01-11T15:30:00.000Z",
                       closed = "2026-01-13T12:00:00.000Z" }, "milestones")
  t.eq(#(t.instance(id).timers or {}), 0, "timers left")
end)

t.test("the triage task for a patient known here references the record", function()
  seed()
  start { patient = "pat-okafor" }
  t.eq(tasks { patient = "pat-okafor" }[1].title, "Triage a referral from Riverside Family Clinic")
end)

t.test("triage not done in 48h: a reminder task", function()
  seed()
  local id = start()
  t.advance("47h")
  t.eq(#tasks(), 1, "only the triage task before 48h")
  t.advance("2h")
  local all = tasks { ownerRole = "care_coordinator" }
  t.eq(#all, 2, "tasks after 48h")
  local titles = { all[1].title, all[2].title }
  table.sort(titles)
  t.eq(titles[1], "Referral from Riverside Family Clinic still waiting for triage")
  t.eq(ctx(id).milestones.triage_reminded, "2026-01-07T09:00:00.000Z")
  t.expect_state(id, "triage")
  t.eq(t.signal(id, "accept"), "accepted", "triage still possible")
end)

t.test("urgent referral: urgent triage task, reminder after 24h", function()
  seed()
  start { priority = "urgent" }
  local first = tasks()
  t.eq(first[1].priority, "urgent")
  t.eq(first[1].title, "Triage an urgent referral from Riverside Family Clinic")
  t.advance("23h")
  t.eq(#tasks(), 1)
  t.advance("2h")
  t.eq(#tasks(), 2)
end)

t.test("accepting stops the triage reminder", function()
  seed()
  local id = start()
  t.signal(id, "accept")
  t.advance("5d")
  for _, task in ipairs(tasks()) do
    t.ok(not task.title:find("still waiting", 1, true), "reminder after accept")
  end
end)

t.test("decline with a reason goes back; without a reason it is refused", function()
  seed()
  local id = start()
  refused(id, "decline")
  refused(id, "decline", { reason = "" })
  refused(id, "decline", { reason = "  \t" })
  t.eq(t.signal(id, "decline", { reason = "Needs electrophysiology: refer to a tertiary centre" }),
       "declined")
  t.expect_state(id, "declined", "done")
  t.eq(sent(), { { to = "riverside-clinic", kind = "referral.declined", instance = id,
                   payload = { referral = "referral-17",
                               reason = "Needs electrophysiology: refer to a tertiary centre" } } })
  t.eq(ctx(id).decline_reason, "Needs electrophysiology: refer to a tertiary centre")
end)

t.test("booked straight from triage", function()
  seed()
  local id = start()
  book(id)
  t.eq(#sent("referral.accepted"), 0)
  t.eq(#sent("referral.scheduled"), 1)
end)

t.test("the day before the appointment a known patient is reminded on their channel", function()
  seed()
  local id = start { patient = "pat-okafor" }
  t.signal(id, "accept")
  book(id, "2026-01-12T15:30:00-08:00", "Heart Partners, 3rd floor")
  t.advance("6d") -- 2026-01-11T09:00Z; the reminder is due at 2026-01-11T23:30Z
  t.eq(#t.notifications(), 0, "reminded too early")
  t.advance("15h")
  local n = t.notifications()
  t.eq(#n, 1, "reminders")
  t.eq(n[1].channel, "email")
  t.eq(n[1].to, "pat-okafor")
  t.eq(n[1].message, "Reminder: your appointment with Heart Partners Cardiology is on 2026-01-12 " ..
                     "at 15:30 at Heart Partners, 3rd floor.")
  t.eq(decode(n[1].data), { referral = "referral-17", appointment = "2026-01-12T15:30:00-08:00" })
end)

t.test("a patient not known here: a task to call them instead", function()
  seed()
  local id = start()
  book(id)
  t.advance("6d12h") -- past 2026-01-11T15:30Z
  t.eq(#t.notifications(), 0)
  local calls = {}
  for _, task in ipairs(tasks()) do
    if task.title == "Call the patient about tomorrow's appointment" then calls[#calls + 1] = task end
  end
  t.eq(#calls, 1, "call tasks")
  t.ok(calls[1].description:find(APPT, 1, true), calls[1].description)
end)

t.test("moving the appointment moves the reminder and tells the referrer", function()
  seed()
  local id = start { patient = "pat-okafor" }
  book(id, "2026-01-08T10:00:00Z")
  t.advance("1d")
  book(id, "2026-01-15T10:00:00Z", "Annex")
  t.eq(ctx(id).milestones.rebooked, "2026-01-06T09:00:00.000Z")
  t.eq(#sent("referral.scheduled"), 2)
  t.eq(last_sent().payload, { referral = "referral-17", appointment = "2026-01-15T10:00:00Z", site = "Annex" })
  t.advance("3d") -- past the old reminder (01-07T10:00)
  t.eq(#t.notifications(), 0, "the old reminder fired")
  t.advance("6d") -- past the new one (01-14T10:00)
  t.eq(#t.notifications(), 1, "the new reminder")
end)

t.test("an appointment less than a day away gets no reminder", function()
  seed()
  local id = start { patient = "pat-okafor" }
  book(id, "2026-01-05T16:00:00Z")
  t.eq(#(t.instance(id).timers or {}), 0, "timers")
  t.advance("1d")
  t.eq(#t.notifications(), 0)
end)

t.test("moved to less than a day away: the old reminder is dropped", function()
  seed()
  local id = start { patient = "pat-okafor" }
  book(id, "2026-01-09T10:00:00Z")
  t.eq(#(t.instance(id).timers or {}), 1, "a reminder armed")
  book(id, "2026-01-05T17:00:00Z")
  t.eq(#(t.instance(id).timers or {}), 0, "the old reminder is still armed")
  t.advance("5d")
  t.eq(#t.notifications(), 0)
end)

t.test("no-show: reported back, a rebook reminder after 7 days, rebooked", function()
  seed()
  local id = start()
  book(id)
  t.advance("8d")
  t.eq(t.signal(id, "no_show"), "no_show")
  t.eq(last_sent(), { to = "riverside-clinic", kind = "referral.no_show", instance = id,
                      payload = { referral = "referral-17" } })
  t.eq(ctx(id).no_shows, 1)
  local before = #tasks()
  t.advance("6d")
  t.eq(#tasks(), before, "rebook reminder too early")
  t.advance("2d")
  t.eq(#tasks(), before + 1, "rebook reminder")
  book(id, "2026-01-29T09:00:00Z")
  t.eq(last_sent().kind, "referral.scheduled")
  t.eq(t.signal(id, "consult_note", { note = "Normal Holter." }), "closed")
  t.eq(last_sent().payload, { referral = "referral-17", note = "Normal Holter." })
end)

t.test("the practice cancels from every open state and tells the referrer", function()
  seed()
  local steps = {
    triage = function() end,
    accepted = function(id) t.signal(id, "accept") end,
    booked = function(id) book(id) end,
    no_show = function(id) book(id); t.signal(id, "no_show") end,
  }
  local n = 0
  for _, state in ipairs { "triage", "accepted", "booked", "no_show" } do
    n = n + 1
    local id = start { referral = "referral-" .. n }
    steps[state](id)
    t.expect_state(id, state)
    t.eq(t.signal(id, "cancel", { reason = "Cardiologist on leave; no capacity this quarter" }),
         "cancelled", "cancel from " .. state)
    t.eq(last_sent(), { to = "riverside-clinic", kind = "referral.cancelled", instance = id,
                        payload = { referral = "referral-" .. n,
                                    reason = "Cardiologist on leave; no capacity this quarter" } })
    t.eq(ctx(id).cancelled_by, "specialist")
  end
end)

t.test("the referring clinic cancels: nothing goes back", function()
  seed()
  for _, state in ipairs { "triage", "booked", "no_show" } do
    local id = start()
    if state ~= "triage" then book(id) end
    if state == "no_show" then t.signal(id, "no_show") end
    local sends = #t.sent()
    t.eq(t.signal(id, "referral.cancelled", { referral = "referral-17", reason = "Symptoms resolved" }),
         "cancelled", "cancelled from " .. state)
    t.eq(#t.sent(), sends, "sent back from " .. state)
    t.eq(ctx(id).cancelled_by, "referrer")
    t.eq(ctx(id).cancel_reason, "Symptoms resolved")
  end
end)

t.test("cancel without a reason, or for another referral, is refused", function()
  seed()
  local id = start()
  refused(id, "cancel")
  refused(id, "cancel", { reason = "" })
  refused(id, "referral.cancelled", { referral = "referral-17" })
  refused(id, "referral.cancelled", { referral = "referral-99", reason = "wrong one" })
end)

t.test("events in the wrong state are refused and change nothing", function()
  seed()
  local id = start()
  refused(id, "consult_note", { note = "too early" })
  refused(id, "no_show")
  refused(id, "appointment_reminder")
  t.signal(id, "accept")
  refused(id, "accept")
  refused(id, "decline", { reason = "changed our mind" })
  refused(id, "no_show")
  book(id)
  refused(id, "accept")
  refused(id, "decline", { reason = "changed our mind" })
  t.signal(id, "no_show")
  refused(id, "no_show")
  refused(id, "consult_note", { note = "not seen" })
  book(id, "2026-01-20T09:00:00Z")
  t.eq(t.signal(id, "consult_note", { note = "Seen." }), "closed")
  local state, msg = t.signal(id, "cancel", { reason = "late" })
  t.eq(state, nil)
  t.ok(msg:find("done", 1, true), msg)
end)

t.test("a booking without a time, or in the past, is refused; a note must have text", function()
  seed()
  local id = start()
  refused(id, "book")
  refused(id, "book", { appointment = "2026-01-12" })
  refused(id, "book", { appointment = "2026-01-12T25:00:00Z" })
  refused(id, "book", { appointment = "2026-01-04T10:00:00Z" })
  refused(id, "book", { appointment = "2026-01-05T10:00:00+02:00" }) -- 08:00Z, an hour ago
  book(id)
  refused(id, "consult_note", {})
  refused(id, "consult_note", { note = "" })
  refused(id, "consult_note", { summary = "only a summary" })
end)

t.test("bad input is refused; a patient not known here is fine", function()
  seed()
  local function refuse(over, fragment, drop) h.refused_start("referral_intake", input(over), fragment, drop) end
  refuse({}, "input.referral: required", "referral")
  refuse({}, "input.patient: required", "patient")
  refuse({}, "input.reason: required", "reason")
  refuse({ from = "lakeside-clinic" }, "input.from")
  refuse({ to = "nowhere-cardiology" }, "input.to")
  refuse({ from = "heart-partners" }, "input.from")
  refuse({ priority = "asap" }, "input.priority")
  refuse({ patient = 42 }, "input.patient: expected string")
  refuse({ name = "Ana Rivera" }, "input.name: unknown field")
  t.eq(#cm.task.find {}, 0, "no task from a refused start")
  start { patient = "pat-somebody-else" }
end)

-- ---- both sides ---------------------------------------------------------

-- Carry every message not yet carried to the other side, as federation would:
-- a referral.request starts an intake; the intake's messages go to the
-- referral instance they name; the clinic's cancel goes to the intake.
local function federation()
  local carried, intake_of = 0, {}
  return function()
    local rows = t.sent()
    for i = carried + 1, #rows do
      local m = rows[i]
      local payload = decode(m.payload)
      local sender = t.instance(m.instance)
      if m.kind == "referral.request" then
        local id, state = t.start("referral_intake", {
          referral = payload.referral, from = sender.input.from, to = m.to, patient = payload.patient,
          reason = payload.reason, priority = payload.priority })
        t.ok(id, "intake refused: " .. tostring(state))
        intake_of[payload.referral] = id
      elseif sender.workflow == "referral_intake" then
        t.ok(t.signal(payload.referral, m.kind, payload), "referral refused " .. m.kind)
      else
        t.ok(t.signal(intake_of[payload.referral], m.kind, payload), "intake refused " .. m.kind)
      end
      carried = i
    end
    return intake_of
  end
end

t.test("both sides: referral, no-show, outreach, rebooked, consult note, loop closed", function()
  seed()
  seed_clinic_patient()
  local relay = federation()
  local ref = t.start("referral", { patient = "pat-rivera", from = "riverside-clinic", to = "heart-partners",
                                    reason = REASON, priority = "urgent" })
  local intake = relay()[ref]
  t.ok(intake, "an intake started")
  t.eq(t.instance(intake).input, { referral = ref, from = "riverside-clinic", to = "heart-partners",
                                   patient = "pat-rivera", reason = REASON, priority = "urgent" })
  t.eq(tasks()[1].priority, "urgent")

  t.advance("4h")
  t.signal(intake, "accept"); relay()
  t.expect_state(ref, "accepted")
  book(intake, APPT); relay()
  t.expect_state(ref, "scheduled")
  t.eq(ctx(ref).appointment, APPT)

  t.advance("8d")
  t.signal(intake, "no_show"); relay()
  t.expect_state(ref, "no_show")
  t.eq(t.notifications()[#t.notifications()].channel, "sms", "the clinic reaches Ana by SMS")
  t.advance("1d")
  book(intake, "2026-01-20T10:00:00Z"); relay()
  t.expect_state(ref, "scheduled")
  t.advance("9d")
  t.signal(intake, "consult_note", { note = "Holter: paroxysmal AF. Apixaban started.", summary = "PAF" })
  relay()
  t.expect_state(intake, "closed", "done")
  t.expect_state(ref, "consult_received")
  t.eq(ctx(ref).summary, "PAF")
  t.eq(t.signal(ref, "close"), "closed")
  t.expect_state(ref, "closed", "done")

  local names = {}
  for _, k in ipairs(t.kpis()) do names[#names + 1] = k.name .. "=" .. string.format("%g", k.value) end
  t.eq(names, { "referral_no_show=1", "referral_loop_closed=1", "referral_days_to_close=18.2" })
end)

t.test("both sides: the clinic cancels, the practice hears it", function()
  seed()
  seed_clinic_patient()
  local relay = federation()
  local ref = t.start("referral", { patient = "pat-rivera", from = "riverside-clinic", to = "heart-partners",
                                    reason = REASON })
  local intake = relay()[ref]
  t.signal(intake, "accept"); relay()
  t.eq(t.signal(ref, "cancel", { reason = "Patient chose a closer practice" }), "cancelled")
  relay()
  t.expect_state(intake, "cancelled", "done")
  t.eq(ctx(intake).cancelled_by, "referrer")
  t.eq(ctx(intake).cancel_reason, "Patient chose a closer practice")
end)

t.test("both sides: the practice declines, the clinic is told and tasked", function()
  seed()
  seed_clinic_patient()
  local relay = federation()
  local ref = t.start("referral", { patient = "pat-rivera", from = "riverside-clinic", to = "heart-partners",
                                    reason = REASON })
  local intake = relay()[ref]
  t.signal(intake, "decline", { reason = "Outside our catchment area" }); relay()
  t.expect_state(ref, "declined", "done")
  t.eq(ctx(ref).decline_reason, "Outside our catchment area")
  t.eq(#tasks { organization = "riverside-clinic" }, 1, "a task at the clinic")
end)

-- ---- across nodes: the request arrives as a partner's message ------------

-- The referral.request the clinic's node sends (as referral.lua writes it),
-- with Rivera's record cut to the partnership's terms.
local function request_message(id)
  return {
    peer = "riverside-node", id = "riverside-node:" .. id, kind = "referral.request",
    from = "riverside-clinic", to = "heart-partners", purpose = "referral",
    classes = { "notes", "demographics", "contact", "conditions" }, patient = "pat-rivera",
    instance = "referral-" .. id,
    patient_record = { id = "pat-rivera", name = world.person("Rivera", "Ana"),
                       birthDate = "1958-04-12", gender = "female", phone = "+1 555 0111 001",
                       conditions = { world.condition("E11") } },
    payload = { referral = "referral-" .. id, patient = "pat-rivera", reason = REASON,
                priority = "routine" },
  }
end

t.test("a partner's referral.request starts the intake; the shared record becomes a patient here", function()
  seed()
  t.eq(cm.patient.get("pat-rivera"), nil, "not known here before")
  local result, id = t.receive(request_message(1))
  t.eq(result, "received")
  t.expect_state(id, "triage", "running")
  local p = cm.patient.get("pat-rivera")
  t.ok(p, "the shared record is kept as a local patient")
  t.eq(p.birthDate, "1958-04-12")
  t.eq(p.conditions[1].code, "E11")
  t.eq(t.instance(id).input.from, "riverside-clinic", "from is the sending organization")
  -- the answer goes back to the clinic's instance (reply_to), under the terms
  t.eq(t.signal(id, "accept"), "accepted")
  local answer = t.sent()[#t.sent()]
  t.eq(answer.kind, "referral.accepted")
  t.eq(answer.to, "riverside-clinic")
  t.eq(answer.reply_to, "referral-1", "the answer continues the clinic's instance")
  t.eq(answer.purpose, "referral")
  t.eq(answer["from"], "heart-partners")
  -- the clinic cancels: its message continues this intake (reply_to)
  local cancel = request_message(1)
  cancel.id, cancel.kind, cancel.reply_to, cancel.patient_record = "riverside-node:2",
    "referral.cancelled", id, nil
  cancel.classes = { "notes" }
  cancel.payload = { referral = "referral-1", reason = "Patient moved away" }
  t.eq((t.receive(cancel)), "received")
  t.expect_state(id, "cancelled", "done")
end)

t.test("a request the terms do not cover is refused on arrival; an unlinked node cannot reach an intake", function()
  seed()
  -- no partnership between the practices here: refused, nothing starts
  cm.partnership.update("cardiology-referrals", { status = "suspended" })
  local result, id, reason = t.receive(request_message(1))
  t.eq(result, "refused")
  t.eq(id, nil)
  t.ok(reason:find("no active partnership", 1, true), reason)
  t.eq(cm.patient.get("pat-rivera"), nil, "nothing of the patient kept")
  cm.partnership.update("cardiology-referrals", { status = "active" })
  local ok_result, intake = t.receive(request_message(2))
  t.eq(ok_result, "received")
  -- another node may not signal that intake, even naming it
  world.create { organizations = { "main-st-pharmacy" } }
  local intruder = request_message(3)
  intruder.peer, intruder.reply_to, intruder.kind = "pharmacy-node", intake, "referral.cancelled"
  intruder.from, intruder.patient_record, intruder.classes = "main-st-pharmacy", nil, { "notes" }
  intruder.payload = { referral = "referral-2", reason = "not yours" }
  local r2, _, why = t.receive(intruder)
  t.eq(r2, "refused")
  t.ok(why, "a reason")
  t.expect_state(intake, "triage", "running")
end)
