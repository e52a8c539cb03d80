-- test_referral.lua -- the referring side of a closed-loop referral
-- (workflows/referral.lua): the full loop, escalations on silence and on an
-- open loop, decline, no-show outreach, cancellation by either side, events
-- in the wrong state and bad input. test_referral_intake.lua runs both sides
-- together.
-- Seed data and helpers shared with the other workflow tests: lib/seed.lua,
-- lib/helpers.lua.
-- Run: caremesh workflow test workflows/tests/test_referral.lua
local t = require "caremesh.test"
local cm = require "caremesh"
local h = require "lib.helpers"
local world = require "lib.seed"
t.load("../referral.lua")

-- ---- helpers ------------------------------------------------------------

local decode, ctx, sent = h.decode, h.ctx, h.sent
local refused = h.refused
local tasks = h.tasks_at("riverside-clinic")

local function seed()
  world.create {
    organizations = { "riverside-clinic", "heart-partners" },
    providers = { "dr-ngata", "cc-haddad", "dr-osei" },
    patients = { "pat-okafor", "pat-rivera", "pat-kaur" },
    partnerships = { "cardiology-referrals" },
  }
end

local REASON = "Exertional chest pain, abnormal ECG: cardiology evaluation"

local function input(over)
  return h.with({ patient = "pat-okafor", from = "riverside-clinic", to = "heart-partners", reason = REASON },
                over)
end

-- Start a referral; it must be in requested.
local function start(over) return h.start("referral", input(over), "requested") end

-- The KPIs named name, labels decoded.
local function kpis(name)
  local out = {}
  for _, k in ipairs(h.kpis(name)) do
    out[#out + 1] = { value = k.value, labels = k.labels and decode(k.labels) }
  end
  return out
end

local function book(id, appointment)
  t.eq(t.signal(id, "referral.scheduled", { referral = id, appointment = appointment,
                                            site = "Heart Partners, 3rd floor" }), "scheduled")
end

-- ---- the loop -----------------------------------------------------------

t.test("full loop: request, accept, schedule, consult note, closed", function()
  seed()
  local id = start { referral_id = "SR-2026-0142" }
  t.eq(sent(), { { to = "heart-partners", kind = "referral.request", instance = id,
                   payload = { referral = id, patient = "pat-okafor", reason = REASON,
                               priority = "routine" } } })
  local c = ctx(id)
  t.eq(c.answer_by, "2026-01-08T09:00:00Z", "answer_by")
  t.eq(c.close_by, "2026-02-04T09:00:00Z", "close_by")
  t.eq(c.referral_id, "SR-2026-0142", "referral_id")

  t.advance("1d")
  t.eq(t.signal(id, "referral.accepted", { referral = id }), "accepted")
  t.advance("1d")
  book(id, "2026-01-20T14:30:00-08:00")
  t.advance("15d") -- well past the 72h answer window: no escalation once answered
  t.eq(#tasks(), 0, "tasks before the consult note")
  t.eq(t.signal(id, "referral.consult_note", {
    referral = id, note = "Echo: EF 35%. Started sacubitril/valsartan.\nFollow up in 3 months.",
    summary = "HFrEF, EF 35%; GDMT started" }), "consult_received")
  t.eq(#kpis("referral_loop_closed"), 0, "closed before the review")
  local review = tasks { ownerRole = "physician" }
  t.eq(#review, 1, "review task")
  t.eq(review[1].title, "Review the consult note from Heart Partners Cardiology")
  t.eq(review[1].patient, "pat-okafor")
  t.eq(review[1].due, "2026-01-25T09:00:00.000Z")
  t.ok(review[1].description:find("EF 35%", 1, true), "the note is in the review task")
  t.advance("1d")
  t.eq(t.signal(id, "close", { note = "Reviewed with patient; GDMT titration plan agreed" }), "closed")
  t.expect_state(id, "closed", "done")

  c = ctx(id)
  t.eq(c.appointment, "2026-01-20T14:30:00-08:00")
  t.eq(c.site, "Heart Partners, 3rd floor")
  t.eq(c.summary, "HFrEF, EF 35%; GDMT started")
  t.eq(c.review_note, "Reviewed with patient; GDMT titration plan agreed")
  t.eq(c.days_to_close, 18)
  t.eq(c.milestones, { requested = "2026-01-05T09:00:00.000Z", accepted = "2026-01-06T09:00:00.000Z",
                       scheduled = "2026-01-07T09:00:00.000Z", consult_received = "2026-01-22T09:00:00.000Z",
                       closed = "2026-01-23T09:00:00.000Z" }, "milestones")
  t.eq(kpis("referral_loop_closed"), { { value = 1, labels = { partner = "heart-partners" } } })
  t.eq(kpis("referral_days_to_close"), { { value = 18, labels = { partner = "heart-partners" } } })
  t.eq(#kpis("referral_escalated"), 0, "escalations")
  t.eq(#sent(), 1, "only the request was sent")

  -- final: its timers are gone, the loop deadline never fires
  t.eq(#(t.instance(id).timers or {}), 0, "timers left")
  t.advance("40d")
  t.eq(#kpis("referral_escalated"), 0, "escalations after close")
end)

t.test("the specialist may accept and book in one answer", function()
  seed()
  local id = start()
  book(id, "2026-01-12T10:00:00Z")
  t.eq(ctx(id).milestones.accepted, nil)
  t.eq(ctx(id).milestones.scheduled, "2026-01-05T09:00:00.000Z")
end)

t.test("the specialist moves the appointment", function()
  seed()
  local id = start()
  t.signal(id, "referral.accepted")
  book(id, "2026-01-12T10:00:00Z")
  t.advance("2d")
  book(id, "2026-01-14T15:00:00Z")
  t.eq(ctx(id).appointment, "2026-01-14T15:00:00Z")
  t.eq(ctx(id).milestones.rescheduled, "2026-01-07T09:00:00.000Z")
end)

-- ---- escalation ---------------------------------------------------------

t.test("no answer within 72h: a care-coordinator task, still requested", function()
  seed()
  local id = start()
  t.advance("71h")
  t.eq(#tasks(), 0, "a task before the window ends")
  t.advance("2h")
  t.expect_state(id, "requested", "running")
  local open = tasks { ownerRole = "care_coordinator" }
  t.eq(#open, 1, "escalation tasks")
  t.eq(open[1].title, "No answer from Heart Partners Cardiology on a referral")
  t.eq(open[1].patient, "pat-okafor")
  t.eq(open[1].priority, "routine")
  t.eq(open[1].due, "2026-01-09T09:00:00.000Z")
  t.eq(kpis("referral_escalated"), { { value = 1, labels = { partner = "heart-partners", reason = "no_answer" } } })
  t.eq(ctx(id).escalations, { "no_answer" })
  -- a late answer is still taken
  t.eq(t.signal(id, "referral.accepted"), "accepted")
end)

t.test("urgent priority shortens the answer window to a third", function()
  seed()
  local id = start { priority = "urgent" }
  t.eq(sent("referral.request")[1].payload.priority, "urgent")
  t.eq(ctx(id).answer_by, "2026-01-06T09:00:00Z")
  t.advance("23h")
  t.eq(#tasks(), 0, "a task before 24h")
  t.advance("2h")
  local open = tasks { ownerRole = "care_coordinator" }
  t.eq(#open, 1, "escalation tasks")
  t.eq(open[1].priority, "urgent")
end)

t.test("answer_within is configurable", function()
  seed()
  local id = start { answer_within = "12h" }
  t.advance("11h")
  t.eq(#kpis("referral_escalated"), 0)
  t.advance("2h")
  t.eq(#kpis("referral_escalated"), 1)
  t.expect_state(id, "requested")
end)

t.test("loop not closed in 30 days: escalation, the timer survives the states", function()
  seed()
  local id = start()
  t.advance("1d")
  t.signal(id, "referral.accepted")
  t.advance("1d")
  book(id, "2026-01-26T10:00:00Z")
  t.advance("27d") -- day 29
  t.eq(#kpis("referral_escalated"), 0, "escalated before day 30")
  t.advance("2d")
  t.expect_state(id, "scheduled", "running")
  t.eq(kpis("referral_escalated"), { { value = 1, labels = { partner = "heart-partners", reason = "loop_open" } } })
  local open = tasks { ownerRole = "care_coordinator" }
  t.eq(#open, 1)
  t.eq(open[1].title, "Referral to Heart Partners Cardiology not closed in time")
  t.ok(open[1].description:find("state: scheduled", 1, true), "the task says where the loop stands")
  t.eq(ctx(id).milestones.escalated_loop_open, "2026-02-04T09:00:00.000Z")
  -- it still closes, later
  t.eq(t.signal(id, "referral.consult_note", { note = "Normal stress echo." }), "consult_received")
  t.advance("12h")
  t.eq(t.signal(id, "close"), "closed")
  t.eq(kpis("referral_days_to_close")[1].value, 31.5)
end)

t.test("consult note in but not reviewed by the deadline: escalation says so", function()
  seed()
  local id = start { close_within = "14d" }
  book(id, "2026-01-12T10:00:00Z")
  t.advance("8d")
  t.eq(t.signal(id, "referral.consult_note", { note = "Normal stress echo." }), "consult_received")
  t.eq(ctx(id).summary, "Normal stress echo.", "the note stands in for a missing summary")
  t.advance("7d")
  local open = tasks { ownerRole = "care_coordinator" }
  t.eq(#open, 1)
  t.ok(open[1].description:find("in but not reviewed", 1, true), open[1].description)
  t.expect_state(id, "consult_received")
  -- the specialist's work is done: no cancelling now
  refused(id, "cancel", { reason = "too late" })
  refused(id, "referral.cancelled", { reason = "too late" })
end)

t.test("close_within is configurable", function()
  seed()
  local id = start { close_within = "10d" }
  t.signal(id, "referral.accepted")
  t.advance("9d")
  t.eq(#kpis("referral_escalated"), 0)
  t.advance("2d")
  t.eq(kpis("referral_escalated")[1].labels.reason, "loop_open")
  t.expect_state(id, "accepted")
end)

-- ---- decline ------------------------------------------------------------

t.test("decline with a reason: declined, KPI, a task to find another specialist", function()
  seed()
  local id = start()
  t.eq(t.signal(id, "referral.declined", { referral = id, reason = "Out of network for this payer" }),
       "declined")
  t.expect_state(id, "declined", "done")
  t.eq(ctx(id).decline_reason, "Out of network for this payer")
  t.eq(kpis("referral_declined"), { { value = 1, labels = { partner = "heart-partners" } } })
  local open = tasks { ownerRole = "care_coordinator" }
  t.eq(#open, 1)
  t.eq(open[1].title, "Heart Partners Cardiology declined a referral")
  t.ok(open[1].description:find("Out of network", 1, true), "the reason is in the task")
  t.advance("40d")
  t.eq(#kpis("referral_escalated"), 0, "no escalation after a decline")
end)

t.test("very long text from the partner is clipped into the tasks, nothing fails", function()
  seed()
  local id = start()
  local long = string.rep("Capacité insuffisante; ", 600) -- 14,400 bytes, multi-byte characters
  t.eq(t.signal(id, "referral.declined", { reason = long }), "declined")
  t.eq(#t.failed(), 0, "kept or parked events")
  local task = tasks()[1]
  t.ok(#task.description <= 8003, "description of " .. #task.description .. " bytes")
  t.ok(utf8.len(task.description), "the description is cut inside a character")
  local id2 = start()
  book(id2, "2026-01-12T10:00:00Z")
  t.eq(t.signal(id2, "referral.consult_note", { note = long, summary = long }), "consult_received")
  t.eq(#t.failed(), 0, "kept or parked events")
  t.ok(#ctx(id2).summary <= 283, "summary of " .. #ctx(id2).summary .. " bytes")
  t.ok(utf8.len(ctx(id2).summary), "the summary is cut inside a character")
end)

t.test("decline without a reason is refused by the guard", function()
  seed()
  local id = start()
  refused(id, "referral.declined", nil)
  refused(id, "referral.declined", { referral = id })
  refused(id, "referral.declined", { reason = "   " })
  refused(id, "referral.declined", { reason = 42 })
  t.eq(#kpis("referral_declined"), 0)
  t.eq(ctx(id).decline_reason, nil)
end)

-- ---- no-show and outreach -----------------------------------------------

t.test("no-show: SMS to reschedule, a reminder, rebooked, closed", function()
  seed()
  local id = start { patient = "pat-rivera" }
  t.signal(id, "referral.accepted")
  book(id, "2026-01-12T10:00:00Z")
  t.advance("7d")
  t.eq(t.signal(id, "referral.no_show", { referral = id }), "no_show")
  t.eq(kpis("referral_no_show"), { { value = 1, labels = { partner = "heart-partners" } } })
  local n = t.notifications()
  t.eq(#n, 1, "notifications")
  t.eq(n[1].channel, "sms")
  t.eq(n[1].to, "pat-rivera")
  t.ok(n[1].message:find("+1 555 0100 300", 1, true), "the message gives the practice's phone")
  t.eq(decode(n[1].data), { referral = id, purpose = "reschedule", attempt = 1 })
  t.eq(#tasks(), 0, "no task while messages may work")

  t.advance("47h")
  t.eq(#t.notifications(), 1, "reminder too early")
  t.advance("2h")
  t.eq(#t.notifications(), 2, "reminder after 48h")
  t.eq(decode(t.notifications()[2].data).attempt, 2)

  t.eq(t.signal(id, "referral.scheduled", { appointment = "2026-01-19T10:00:00Z" }), "scheduled")
  t.advance("3d")
  t.eq(#t.notifications(), 2, "reminders stop once rebooked")
  local c = ctx(id)
  t.eq(c.no_shows, 1)
  t.eq(c.outreach, { channel = "sms", attempts = 2 })
  t.eq(c.appointment, "2026-01-19T10:00:00Z")
  t.eq(c.milestones.no_show, "2026-01-12T09:00:00.000Z")
  t.eq(t.signal(id, "referral.consult_note", { note = "Holter normal.", summary = "Normal Holter" }),
       "consult_received")
  t.eq(t.signal(id, "close"), "closed")
  t.eq(#kpis("referral_loop_closed"), 1)
  t.eq(ctx(id).summary, "Normal Holter")
end)

t.test("no-show, patient with no channel on record: a phone task instead", function()
  seed()
  local id = start { patient = "pat-kaur" }
  t.signal(id, "referral.accepted")
  book(id, "2026-01-12T10:00:00Z")
  t.eq(t.signal(id, "referral.no_show"), "no_show")
  t.eq(#t.notifications(), 0, "notifications")
  local open = tasks { ownerRole = "care_coordinator", patient = "pat-kaur" }
  t.eq(#open, 1, "phone tasks")
  t.eq(open[1].title, "Phone the patient to reschedule the missed appointment with Heart Partners Cardiology")
  t.eq(ctx(id).outreach, { channel = "phone", attempts = 1 })
  t.advance("10d")
  t.eq(#tasks(), 1, "no retry loop on a task")
end)

t.test("no-show, patient never answers: three messages, then a person phones", function()
  seed()
  local id = start { patient = "pat-okafor" }
  t.signal(id, "referral.accepted")
  book(id, "2026-01-12T10:00:00Z")
  t.signal(id, "referral.no_show")
  t.advance("5d")
  local n = t.notifications()
  t.eq(#n, 3, "messages")
  for _, m in ipairs(n) do t.eq(m.channel, "email") end
  t.eq(#tasks(), 0, "a task before the third reminder is out")
  t.advance("2d")
  t.eq(#t.notifications(), 3, "no fourth message")
  local open = tasks { ownerRole = "care_coordinator" }
  t.eq(#open, 1)
  t.ok(open[1].description:find("3 messages by email", 1, true), open[1].description)
  t.eq(kpis("referral_escalated")[1].labels.reason, "patient_unreachable")
  t.expect_state(id, "no_show")
end)

t.test("two no-shows are counted", function()
  seed()
  local id = start { patient = "pat-rivera" }
  book(id, "2026-01-12T10:00:00Z")
  t.signal(id, "referral.no_show")
  book(id, "2026-01-19T10:00:00Z")
  t.eq(t.signal(id, "referral.no_show"), "no_show")
  t.eq(ctx(id).no_shows, 2)
  t.eq(#kpis("referral_no_show"), 2)
  t.eq(ctx(id).outreach.attempts, 1, "outreach starts over")
end)

-- ---- cancellation -------------------------------------------------------

-- Drive a fresh referral to state.
local function reach(state, over)
  local id = start(over)
  if state == "requested" then return id end
  t.signal(id, "referral.accepted")
  if state == "accepted" then return id end
  book(id, "2026-01-12T10:00:00Z")
  if state == "scheduled" then return id end
  t.signal(id, "referral.no_show")
  t.expect_state(id, "no_show")
  return id
end

t.test("the specialist cancels, from every open state", function()
  seed()
  for _, state in ipairs { "requested", "accepted", "scheduled", "no_show" } do
    local id = reach(state)
    local before = #sent()
    t.eq(t.signal(id, "referral.cancelled", { referral = id, reason = "Patient moved out of area" }),
         "cancelled", "cancel from " .. state)
    t.expect_state(id, "cancelled", "done")
    t.eq(ctx(id).cancelled_by, "specialist")
    t.eq(ctx(id).cancel_reason, "Patient moved out of area")
    t.eq(#sent(), before, "nothing sent back on a remote cancel from " .. state)
    t.eq(#tasks { patient = "pat-okafor", ownerRole = "care_coordinator" } > 0, true, "follow-up task")
  end
  t.eq(#tasks { ownerRole = "care_coordinator" }, 4, "one follow-up task per cancelled referral")
end)

t.test("the clinic cancels, from every open state, and tells the specialist", function()
  seed()
  for _, state in ipairs { "requested", "accepted", "scheduled", "no_show" } do
    local id = reach(state)
    t.eq(t.signal(id, "cancel", { reason = "Symptoms resolved" }), "cancelled", "cancel from " .. state)
    t.eq(ctx(id).cancelled_by, "clinic")
    local out = sent("referral.cancelled")
    t.eq(out[#out], { to = "heart-partners", kind = "referral.cancelled", instance = id,
                      payload = { referral = id, reason = "Symptoms resolved" } })
  end
  t.eq(#sent("referral.cancelled"), 4)
  t.eq(#tasks(), 0, "no task when the clinic cancels")
end)

t.test("cancel without a reason is refused", function()
  seed()
  local id = reach("scheduled")
  refused(id, "cancel", nil)
  refused(id, "cancel", { reason = "" })
  refused(id, "referral.cancelled", { referral = id })
  t.eq(#sent("referral.cancelled"), 0)
end)

-- ---- refusals -----------------------------------------------------------

t.test("events in the wrong state are refused and change nothing", function()
  seed()
  local id = start()
  refused(id, "referral.consult_note", { note = "too early" })
  refused(id, "referral.no_show")
  refused(id, "outreach_retry")
  t.signal(id, "referral.accepted")
  refused(id, "referral.accepted")
  refused(id, "referral.declined", { reason = "changed our mind" })
  refused(id, "referral.no_show")
  book(id, "2026-01-12T10:00:00Z")
  refused(id, "referral.accepted")
  refused(id, "no_such_event")
  refused(id, "close")
  t.eq(t.signal(id, "referral.consult_note", { note = "Normal." }), "consult_received")
  refused(id, "referral.consult_note", { note = "Normal, again." })
  refused(id, "referral.no_show")
  t.eq(t.signal(id, "close"), "closed")
  local state, msg = t.signal(id, "referral.no_show")
  t.eq(state, nil)
  t.ok(msg:find("done", 1, true), msg)
  t.expect_state(id, "closed", "done")
  t.eq(#kpis("referral_no_show"), 0)
end)

t.test("messages about another referral, bad appointments, empty notes are refused", function()
  seed()
  local id = start()
  refused(id, "referral.accepted", { referral = "referral-999" })
  refused(id, "referral.scheduled", { referral = id })
  refused(id, "referral.scheduled", { appointment = "next Tuesday" })
  refused(id, "referral.scheduled", { appointment = "2026-02-30T10:00:00Z" })
  refused(id, "referral.scheduled", { appointment = "2026-02-03T10:00:00" }) -- no zone
  book(id, "2026-02-03T10:00:00+01:00")
  refused(id, "referral.consult_note", {})
  refused(id, "referral.consult_note", { note = " " })
  refused(id, "referral.no_show", { referral = "referral-999" })
  t.expect_state(id, "scheduled")
end)

t.test("bad input is refused and nothing starts", function()
  seed()
  local function refuse(over, fragment, drop) h.refused_start("referral", input(over), fragment, drop) end
  refuse({}, "input.patient: required", "patient")
  refuse({}, "input.reason: required", "reason")
  refuse({ patient = "pat-nobody" }, "input.patient")
  refuse({ to = "nowhere-cardiology" }, "input.to")
  refuse({ from = "nowhere-clinic" }, "input.from")
  refuse({ priority = "stat" }, "input.priority")
  refuse({ answer_within = "3 days" }, "input.answer_within")
  refuse({ close_within = "0d" }, "input.close_within")
  refuse({ to = "riverside-clinic" }, "input.to")
  refuse({ urgent = true }, "input.urgent: unknown field")
  refuse({ reason = 12 }, "input.reason: expected string")
  t.eq(#sent(), 0, "nothing sent")
  t.eq(#t.kpis(), 0, "no KPIs")
end)

-- ---- the host's terms on what leaves the clinic ---------------------------

t.test("the request carries the patient's record cut to the terms, purpose referral", function()
  seed()
  local id = start()
  local req = t.sent()[1]
  t.eq(req.kind, "referral.request")
  t.eq(req["from"], "riverside-clinic")
  t.eq(req.purpose, "referral")
  t.eq(req.patient, "pat-okafor")
  t.eq(req.classes, "demographics,contact,conditions,notes")
  local rec = decode(req.record)
  t.eq(rec.id, "pat-okafor")
  t.eq(rec.birthDate, "1949-09-30")
  t.eq(rec.email, "chidi.okafor@example.org", "contact is allowed to the specialist")
  t.eq(rec.generalPractitioner, "riverside-clinic")
  t.eq(rec.meta, nil, "no store metadata leaves")
  t.eq(req.instance, id)
  local audit = t.audit()
  t.eq(#audit, 1, "the send is audited")
  t.eq({ audit[1].action, audit[1].patient, audit[1].classes, audit[1].outcome },
       { "message.send", "pat-okafor", "demographics,contact,conditions,notes", "ok" })
end)

t.test("terms that allow less: the fields of the other classes stay home", function()
  seed()
  cm.partnership.update("cardiology-referrals", { terms = {
    { receiver = "heart-partners", purposes = { "referral" }, classes = { "demographics", "notes" } },
    { receiver = "riverside-clinic", purposes = { "referral" }, classes = { "notes" } },
  } })
  start()
  local req = t.sent()[1]
  t.eq(req.classes, "demographics,notes")
  local rec = decode(req.record)
  t.eq(rec.email, nil, "contact left out")
  t.eq(rec.conditions, nil, "conditions left out")
  t.eq(rec.birthDate, "1949-09-30")
end)

t.test("a request no partnership covers is not sent: a task, a KPI, not_sent", function()
  world.create {
    organizations = { "riverside-clinic", "heart-partners" },
    providers = { "dr-ngata", "cc-haddad" },
    patients = { "pat-okafor" },
  }
  local id, state = t.start("referral", input())
  t.eq(state, "requested", "the start itself succeeds")
  t.expect_state(id, "not_sent", "done")
  t.eq(#t.sent(), 0, "nothing went out")
  local refusals = t.refused_sends()
  t.eq(#refusals, 1)
  t.ok(refusals[1].reason:find("no active partnership has both riverside-clinic and heart-partners",
                               1, true), refusals[1].reason)
  local open = tasks()
  t.eq(#open, 1)
  t.ok(open[1].title:find("was not sent", 1, true), open[1].title)
  t.eq(#h.kpis("referral_not_sent"), 1)
  local audit = t.audit()
  t.eq(#audit, 1, "the refusal is audited")
  t.eq({ audit[1].actor, audit[1].action, audit[1].patient, audit[1].purpose, audit[1].outcome },
       { "instance:" .. id, "message.send", "pat-okafor", "referral", "refused" })
end)

t.test("a patient who denied consent for referrals: not sent", function()
  seed()
  cm.consent.create { id = "c-okafor-ref", patient = "pat-okafor", purpose = "referral",
                      decision = "deny", recorded = "2025-12-01T09:00:00Z" }
  local id = t.start("referral", input())
  t.expect_state(id, "not_sent", "done")
  t.ok(t.refused_sends()[1].reason:find("denied consent", 1, true), t.refused_sends()[1].reason)
  -- another patient is referred as usual
  local other = t.start("referral", input { patient = "pat-rivera" })
  t.expect_state(other, "requested", "running")
end)
