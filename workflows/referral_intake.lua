-- referral_intake.lua -- the receiving specialist's side of a closed-loop
-- referral.
--
-- Models the 360X referral recipient (ONC/IHE 360 Exchange) with FHIR R4 Task
-- statuses: a referral request arrives (requested), the practice's care
-- coordinator triages it and accepts or rejects (declined) it, books an
-- appointment (in-progress), reports a no-show, and sends the consult note
-- back (completed: closed). Either side may cancel. Every answer goes back to
-- the referring clinic as a message that its referral.lua instance receives
-- as an event of the same name.
--
-- Started by a `referral.request` from a partner, with
--   referral   string        the referring instance's id: every message back
--                            carries it as `referral`
--   from       organization  the referring clinic (a partner record here)
--   to         organization  this practice: owns the tasks
--   patient    string        the patient's id at the referring clinic; not
--                            checked, the patient may not be known here yet
--   reason     string        the clinical reason
--   priority   string?       "routine" (default) or "urgent"
--   patient_record table?    the patient's record as the clinic shared it
--                            (cut to the partnership's terms by both
--                            hosts); kept as a local patient record when
--                            the practice does not know the patient yet
-- A partner's `referral.request` starts it (started_by): the host passes
-- the message's payload as input, with from and to set to the sending and
-- receiving organizations.
--
-- States
--   triage     the care coordinator decides; reminder after 48h (urgent: 24h)
--   accepted   accepted; waiting for a booking
--   booked     an appointment is booked; the patient is reminded the day before
--   no_show    the patient missed it; a reminder to rebook after 7 days
--   closed     final: the consult note went back
--   declined   final: declined, with a reason
--   cancelled  final: cancelled here or by the referring clinic
--
-- Local events
--   accept        {}                   (triage)
--   decline       {reason}             (triage) reason required
--   book          {appointment, site?} (triage, accepted, booked, no_show)
--                                      an ISO-8601 date-time in the future;
--                                      booking again moves the appointment
--   no_show       {}                   (booked)
--   consult_note  {note, summary?}     (booked) note required
--   cancel        {reason}             (any open state) reason required
-- From the referring clinic
--   referral.cancelled  {referral, reason}  (any open state)
-- Timers
--   triage_due            (triage) remind the care coordinator
--   appointment_reminder  (booked) 24h before the appointment
--   rebook_due            (no_show) 7 days without a new booking
--
-- Effects
--   send    to `from`, purpose "referral", classes {notes}, each with
--           referral = input.referral:
--           referral.accepted {}, referral.declined {reason},
--           referral.scheduled {appointment, site?}, referral.no_show {},
--           referral.consult_note {note, summary?}, referral.cancelled {reason}
--           (not when the referring clinic cancelled).
--   tasks   at `to`, for the care coordinator: triage, triage reminder,
--           book the appointment, rebook after a no-show, call the patient
--           before the appointment when there is no channel to remind them by.
--   notify  the patient, when known here with a preferredChannel: the day
--           before the appointment.
--
-- wf.ctx: priority, appointment, site, decline_reason, cancel_reason,
-- cancelled_by, summary, no_shows, and milestones {received, accepted,
-- booked, rebooked, no_show, closed, declined, cancelled, triage_reminded,
-- patient_reminded}: the instant of each.
--
-- Uses lib/time.lua (ISO-8601 instants), lib/text.lua (clipping the
-- partner's text, organization names) and lib/checks.lua (the priority,
-- whether a message is about this referral).
local cm = require "caremesh"
local checks = require "lib.checks"
local text = require "lib.text"
local time = require "lib.time"

local TRIAGE_WITHIN = { routine = "48h", urgent = "24h" }
local REMIND_BEFORE = 24 * 3600 -- seconds before the appointment
local REBOOK_WITHIN = "7d"

-- ---- helpers ------------------------------------------------------------

local present, clip, org_name = text.present, text.clip, text.org_name
local epoch, iso = time.epoch, time.iso

local function mark(wf, milestone) wf.ctx.milestones[milestone] = wf:now() end

-- The patient's record here, if the practice already has one.
local function local_patient(wf) return (cm.patient.get(wf.input.patient)) end

-- A message back to the referring clinic about this referral.
local function reply(wf, kind, payload)
  payload = payload or {}
  payload.referral = wf.input.referral
  wf:send(wf.input.from, kind, payload, {
    from = wf.input.to, purpose = "referral", patient = wf.input.patient, classes = { "notes" },
  })
end

-- The patient's record as the referring clinic shared it, kept here when
-- the practice does not know the patient yet (and enough was shared).
local function keep_shared_patient(wf)
  local rec = wf.input.patient_record
  if type(rec) ~= "table" or local_patient(wf) then return end
  if not (rec.name and rec.birthDate and rec.gender) then return end
  local copy = {}
  for k, v in pairs(rec) do copy[k] = v end
  copy.id = wf.input.patient
  copy.generalPractitioner = nil -- an organization of the clinic's, maybe not known here
  cm.patient.create(copy)
  mark(wf, "patient_recorded")
end

-- A task for this practice's care coordinator about this referral. Text
-- from the partner is clipped to the task's limits (lib/text.lua).
local function task(wf, spec)
  wf:task {
    title = clip(spec.title, text.TITLE_MAX),
    description = spec.description and clip(spec.description, text.TEXT_MAX),
    organization = wf.input.to,
    role = "care_coordinator", patient = local_patient(wf) and wf.input.patient or nil,
    priority = wf.ctx.priority == "urgent" and "urgent" or "routine", due = spec.due or "1d",
    note = clip("Referral " .. wf.input.referral .. " from " .. org_name(wf.input.from) ..
                ", patient id " .. wf.input.patient, text.TEXT_MAX),
  }
end

local function with_reason(wf, ev) return present(ev.reason) end

local function future_appointment(wf, ev)
  local at = epoch(ev.appointment)
  return at ~= nil and at > epoch(wf:now())
end

local booking = {
  guard = future_appointment,
  to = function(wf, ev)
    mark(wf, wf.ctx.appointment and "rebooked" or "booked")
    wf.ctx.appointment, wf.ctx.site = ev.appointment, ev.site
    return "booked"
  end,
}

-- Transitions every open state takes: cancellation, here or by the referrer.
-- `own` adds the state's own transitions.
local function open(own)
  local on = {
    cancel = {
      guard = with_reason,
      to = function(wf, ev)
        wf.ctx.cancel_reason, wf.ctx.cancelled_by = ev.reason, "specialist"
        reply(wf, "referral.cancelled", { reason = ev.reason })
        return "cancelled"
      end,
    },
    ["referral.cancelled"] = {
      guard = function(wf, ev)
        return with_reason(wf, ev) and checks.about(ev, wf.input.referral)
      end,
      to = function(wf, ev)
        wf.ctx.cancel_reason, wf.ctx.cancelled_by = ev.reason, "referrer"
        return "cancelled"
      end,
    },
    -- the host refused an answer to the clinic (terms, consent, routing)
    ["send.refused"] = function(wf, ev)
      task(wf, { title = "Answer to " .. org_name(wf.input.from) .. " was not sent",
                 description = "The " .. ev.kind .. " message was refused: " ..
                               tostring(ev.reason) .. ". Call the referring clinic." })
    end,
  }
  for event, transition in pairs(own) do on[event] = transition end
  return on
end

-- ---- the workflow -------------------------------------------------------

return cm.workflow {
  name = "referral_intake", version = 1, purpose = "referral",
  description = "The specialist's side of a closed-loop referral: triage, booking, consult note",
  input = {
    referral = "string", from = "organization", to = "organization", patient = "string",
    reason = "string", priority = "string?", patient_record = "table?",
  },
  started_by = { "referral.request" },
  start = "triage",
  states = {
    triage = {
      description = "A referral came in; the care coordinator triages it",
      enter = function(wf)
        local input = wf.input
        local p = checks.priority(input.priority or "routine")
        if input.from == input.to then
          error("input.from: the referring clinic must be another organization than input.to", 0)
        end
        wf.ctx.priority = p
        wf.ctx.no_shows = 0
        wf.ctx.milestones = {}
        mark(wf, "received")
        keep_shared_patient(wf)
        task(wf, {
          title = "Triage a" .. (p == "urgent" and "n urgent" or "") .. " referral from " ..
                  org_name(input.from),
          description = "Reason: " .. input.reason .. ". Accept or decline (with a reason).",
          due = TRIAGE_WITHIN[p],
        })
        wf:after(TRIAGE_WITHIN[p], "triage_due")
      end,
      on = open {
        accept = "accepted",
        decline = {
          guard = with_reason,
          to = function(wf, ev) wf.ctx.decline_reason = ev.reason; return "declined" end,
        },
        book = booking, -- accepted and booked in one go
        triage_due = function(wf)
          mark(wf, "triage_reminded")
          task(wf, { title = "Referral from " .. org_name(wf.input.from) ..
                             " still waiting for triage",
                     description = "Received " .. wf.ctx.milestones.received:sub(1, 16) ..
                                   "Z. The referring clinic escalates when it hears nothing.",
                     due = "4h" })
        end,
      },
    },

    accepted = {
      description = "Accepted; waiting for a booking",
      enter = function(wf)
        mark(wf, "accepted")
        reply(wf, "referral.accepted")
        task(wf, { title = "Book the patient referred by " .. org_name(wf.input.from),
                   description = "Reason: " .. wf.input.reason, due = "2d" })
      end,
      on = open { book = booking },
    },

    booked = {
      description = "An appointment is booked",
      enter = function(wf)
        local ctx = wf.ctx
        reply(wf, "referral.scheduled", { appointment = ctx.appointment, site = ctx.site })
        wf:cancel("appointment_reminder")
        local remind = epoch(ctx.appointment) - REMIND_BEFORE
        if remind > epoch(wf:now()) then wf:at(iso(remind), "appointment_reminder") end
      end,
      on = open {
        book = booking, -- moved: the referrer is told again
        appointment_reminder = function(wf)
          mark(wf, "patient_reminded")
          local p = local_patient(wf)
          local where = wf.ctx.site and (" at " .. wf.ctx.site) or ""
          if p and p.preferredChannel then
            wf:notify { channel = p.preferredChannel, to = p.id,
                        message = "Reminder: your appointment with " .. org_name(wf.input.to) ..
                                  " is on " .. wf.ctx.appointment:sub(1, 10) .. " at " ..
                                  wf.ctx.appointment:sub(12, 16) .. where .. ".",
                        data = { referral = wf.input.referral, appointment = wf.ctx.appointment } }
          else
            task(wf, { title = "Call the patient about tomorrow's appointment",
                       description = "Appointment " .. wf.ctx.appointment .. where ..
                                     ". No contact channel on record here.",
                       due = "4h" })
          end
        end,
        no_show = "no_show",
        consult_note = {
          guard = function(wf, ev) return present(ev.note) end,
          to = function(wf, ev)
            wf.ctx.summary = present(ev.summary) and clip(ev.summary, text.SUMMARY_MAX) or nil
            reply(wf, "referral.consult_note", { note = ev.note, summary = wf.ctx.summary })
            return "closed"
          end,
        },
      },
    },

    no_show = {
      description = "The patient missed the appointment",
      enter = function(wf)
        wf.ctx.no_shows = wf.ctx.no_shows + 1
        mark(wf, "no_show")
        reply(wf, "referral.no_show")
        wf:after(REBOOK_WITHIN, "rebook_due")
      end,
      on = open {
        book = booking,
        rebook_due = function(wf)
          task(wf, { title = "Patient referred by " .. org_name(wf.input.from) ..
                             " not rebooked after a no-show",
                     description = "Missed appointment " .. wf.ctx.appointment ..
                                   ". Rebook, or cancel with a reason." })
        end,
      },
    },

    closed = {
      final = true, description = "The consult note went back to the referring clinic",
      enter = function(wf) mark(wf, "closed") end,
    },

    declined = {
      final = true, description = "Declined, with a reason",
      enter = function(wf)
        mark(wf, "declined")
        reply(wf, "referral.declined", { reason = wf.ctx.decline_reason })
      end,
    },

    cancelled = {
      final = true, description = "Cancelled by this practice or by the referring clinic",
      enter = function(wf) mark(wf, "cancelled") end,
    },
  },
}
