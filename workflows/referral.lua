-- referral.lua -- the referring side of a closed-loop referral.
--
-- Models the 360X closed-loop referral (ONC/IHE 360 Exchange) from the
-- referral initiator's point of view, with the specialist's answers mapped on
-- FHIR R4 Task statuses: requested -> accepted | rejected (declined) ->
-- in-progress (scheduled) -> completed (consult note back), or cancelled by
-- either side. The loop is closed when the referring clinician has the
-- consult note and has reviewed it. A primary-care clinic (`from`) refers a
-- patient to a specialist practice (`to`); the specialist's side runs
-- referral_intake.lua and answers with messages that arrive here as events.
--
-- Input
--   patient        patient       the referred patient (a local record)
--   from           organization  the referring clinic: owns the tasks
--   to             organization  the specialist practice
--   reason         string        the clinical reason for the referral
--   priority       string?       "routine" (default) or "urgent"
--   referral_id    string?       the clinic's own id for it (e.g. its EHR's
--                                ServiceRequest id); kept in ctx, never sent
--   answer_within  string?       how long the specialist has to answer,
--                                default "72h"; urgent: a third of it (24h)
--   close_within   string?       how long the whole loop may take, "30d"
--
-- States
--   requested         the request is sent; waiting for an answer
--   accepted          the specialist took the referral; waiting for a date
--   scheduled         an appointment is booked (the specialist may move it)
--   no_show           the patient missed it: outreach to book again, with
--                     reminders, until the specialist sends a new date
--   consult_received  the consult note is in; a physician reviews it
--   closed            final: the loop is closed
--   declined          final: the specialist declined, with a reason
--   cancelled         final: cancelled by the clinic or by the specialist
--   not_sent          final: the host refused the request (no partnership
--                     covers it, or the patient denied consent)
--
-- Events from the specialist (each may carry `referral` = this instance's id;
-- a message for another referral is refused). Cancellation, by either side,
-- is taken in every state before the consult note.
--   referral.accepted      {}
--   referral.declined      {reason}             reason required
--   referral.scheduled     {appointment, site?} appointment: ISO-8601 date-time
--   referral.no_show       {}
--   referral.consult_note  {note, summary?}     note required
--   referral.cancelled     {reason}             reason required
-- From the host
--   send.refused           {to, kind, purpose, reason}  a message was not
--                          sent: a task for the care coordinator; the
--                          request itself refused ends in not_sent
-- Local events
--   cancel                 {reason}             the clinic withdraws the referral
--   close                  {note?}              the consult note is reviewed:
--                                               the loop is closed
-- Timers
--   answer_due      (in requested) no answer in the window: escalate
--   loop_due        (kept across states) the loop is still open: escalate
--   outreach_retry  (in no_show) remind the patient again, then escalate
--
-- Effects
--   send    to `to`, purpose "referral", classes {notes}:
--           referral.request {referral = wf.id, patient, reason, priority}
--           on start, sharing the patient's demographics, contact and
--           conditions as far as the partnership's terms allow;
--           referral.cancelled {referral, reason} on a local cancel.
--           Nothing else about the patient leaves the clinic.
--   tasks   at `from`, for the care coordinator: specialist silent, loop
--           overdue, referral declined or cancelled by the specialist,
--           patient to phone after a no-show (no channel, or unreachable);
--           for a physician: review the consult note.
--   notify  the patient, on their preferredChannel, to reschedule a missed
--           appointment (up to 3 messages, 48h apart).
--   KPIs    referral_loop_closed (1) and referral_days_to_close on close;
--           referral_declined, referral_no_show, referral_escalated
--           (labels: reason = no_answer | loop_open | patient_unreachable).
--           Every KPI has the label partner = `to`.
--
-- wf.ctx: priority, answer_by, close_by, appointment, site, decline_reason,
-- cancel_reason, cancelled_by, summary, review_note, no_shows, outreach
-- {channel, attempts}, escalations (list of reasons), days_to_close, and
-- milestones {requested, accepted, scheduled, rescheduled, no_show,
-- consult_received, closed, declined, cancelled, escalated_<reason>}: the
-- instant of each.
--
-- Uses lib/time.lua (ISO-8601 instants, durations), lib/text.lua (clipping
-- the partner's text, organization names) and lib/checks.lua (the priority,
-- whether a message is about this referral).

local cm = require "caremesh"
local checks = require "lib.checks"
local text = require "lib.text"
local time = require "lib.time"

local ANSWER_WITHIN = "72h"
local CLOSE_WITHIN = "30d"
local URGENT_DIVISOR = 3 -- urgent: a third of the answer window
local OUTREACH_EVERY = "48h"
local OUTREACH_MAX = 3 -- messages to the patient before a person phones

-- ---- helpers ------------------------------------------------------------

local present, clip, org_name = text.present, text.clip, text.org_name
local epoch, iso = time.epoch, time.iso

-- "72h", "1d12h" -> seconds; nil when malformed or zero.
local function seconds(dur)
  local secs = time.seconds(dur)
  if not secs or secs <= 0 then return nil end
  return secs
end

local function priority(wf) return wf.input.priority or "routine" end

local function mark(wf, milestone) wf.ctx.milestones[milestone] = wf:now() end

local function kpi(wf, name, value, labels)
  labels = labels or {}
  labels.partner = wf.input.to
  wf:kpi(name, value, labels)
end

-- A human task at the referring clinic about this referral's patient. Text
-- from the partner is clipped to the task's limits (lib/text.lua).
local function task(wf, spec)
  wf:task {
    title = clip(spec.title, text.TITLE_MAX),
    description = spec.description and clip(spec.description, text.TEXT_MAX),
    organization = wf.input.from,
    role = spec.role or "care_coordinator", patient = wf.input.patient,
    priority = priority(wf) == "urgent" and "urgent" or "routine", due = spec.due or "1d",
  }
end

-- A message to the specialist under the partnership's terms, for the
-- purpose "referral": the reason and notes are clinical text (class notes);
-- `share` names the classes of the patient's record to attach, which the
-- host cuts to what the terms let the specialist receive.
local function send(wf, kind, payload, share)
  payload.referral = wf.id
  wf:send(wf.input.to, kind, payload, {
    from = wf.input.from, purpose = "referral", patient = wf.input.patient,
    classes = { "notes" }, share = share,
  })
end

local function escalate(wf, why, title, description)
  wf.ctx.escalations[#wf.ctx.escalations + 1] = why
  mark(wf, "escalated_" .. why)
  task(wf, { title = title, description = description })
  kpi(wf, "referral_escalated", 1, { reason = why })
end

-- A message from the specialist is about this referral (or does not say).
local function mine(wf, ev) return checks.about(ev, wf.id) end

local function with_reason(wf, ev) return mine(wf, ev) and present(ev.reason) end

-- Reach the patient about a missed appointment: their preferred channel, or
-- (none on record) a care coordinator phones them.
local function contact_patient(wf)
  local p = cm.patient.get(wf.input.patient)
  local channel = p and p.preferredChannel
  local o = wf.ctx.outreach
  o.attempts = o.attempts + 1
  if not channel then
    o.channel = "phone"
    task(wf, { title = "Phone the patient to reschedule the missed appointment with " ..
                       org_name(wf.input.to),
               description = "No preferred contact channel on record. Referral reason: " ..
                             wf.input.reason })
    return
  end
  o.channel = channel
  local phone = (cm.organization.get(wf.input.to) or {}).phone
  wf:notify {
    channel = channel, to = wf.input.patient,
    message = "You missed your appointment with " .. org_name(wf.input.to) ..
              ". Please " .. (phone and ("call " .. phone) or "contact them") ..
              " to book a new one.",
    data = { referral = wf.id, purpose = "reschedule", attempt = o.attempts },
  }
  wf:after(OUTREACH_EVERY, "outreach_retry")
end

local function record_appointment(wf, ev)
  local first = wf.ctx.appointment == nil
  wf.ctx.appointment = ev.appointment
  wf.ctx.site = ev.site
  mark(wf, first and "scheduled" or "rescheduled")
end

local function valid_appointment(wf, ev) return mine(wf, ev) and epoch(ev.appointment) ~= nil end

-- The loop deadline passed and the loop is still open.
local function loop_overdue(wf)
  local what = wf.state == "consult_received"
    and "The consult note is in but not reviewed"
    or "No consult note"
  escalate(wf, "loop_open", "Referral to " .. org_name(wf.input.to) .. " not closed in time",
           what .. " by " .. wf.ctx.close_by:sub(1, 10) .. " (state: " .. wf.state .. ").")
end

-- Transitions every state before the consult note takes: cancellation by
-- either side and the loop deadline. `own` adds the state's own transitions.
local function open(own)
  local on = {
    cancel = {
      guard = function(wf, ev) return present(ev.reason) end,
      to = function(wf, ev)
        wf.ctx.cancel_reason, wf.ctx.cancelled_by = ev.reason, "clinic"
        send(wf, "referral.cancelled", { reason = ev.reason })
        return "cancelled"
      end,
    },
    ["referral.cancelled"] = {
      guard = with_reason,
      to = function(wf, ev)
        wf.ctx.cancel_reason, wf.ctx.cancelled_by = ev.reason, "specialist"
        task(wf, { title = org_name(wf.input.to) .. " cancelled the referral",
                   description = "Reason given: " .. ev.reason ..
                                 ". Follow up with the patient; refer again if still needed." })
        return "cancelled"
      end,
    },
    loop_due = loop_overdue,
    -- the host refused a message (partnership terms, consent, routing)
    ["send.refused"] = function(wf, ev)
      wf.ctx.refused = wf.ctx.refused or {}
      wf.ctx.refused[#wf.ctx.refused + 1] = ev.kind .. ": " .. tostring(ev.reason)
      task(wf, { title = "Referral message to " .. org_name(wf.input.to) .. " was not sent",
                 description = "The " .. ev.kind .. " message was refused: " ..
                               tostring(ev.reason) .. ". Check the partnership and the " ..
                               "patient's consent, then refer again or call the practice." })
      kpi(wf, "referral_not_sent", 1, { kind = ev.kind })
      if ev.kind == "referral.request" then return "not_sent" end
    end,
  }
  for event, transition in pairs(own) do on[event] = transition end
  return on
end

local scheduled_by_specialist = {
  guard = valid_appointment,
  to = function(wf, ev) record_appointment(wf, ev); return "scheduled" end,
}

-- ---- the workflow -------------------------------------------------------

return cm.workflow {
  name = "referral", version = 1, purpose = "referral",
  description = "The referring side of a closed-loop referral (360X, FHIR R4 Task statuses)",
  input = {
    patient = "patient", from = "organization", to = "organization", reason = "string",
    priority = "string?", referral_id = "string?", answer_within = "string?",
    close_within = "string?",
  },
  start = "requested",
  states = {
    requested = {
      description = "The request is with the specialist; waiting for an answer",
      enter = function(wf)
        local input = wf.input
        local p = checks.priority(priority(wf))
        if input.from == input.to then
          error("input.to: the specialist must be another organization than input.from", 0)
        end
        local answer = seconds(input.answer_within or ANSWER_WITHIN)
        local close = seconds(input.close_within or CLOSE_WITHIN)
        if not answer then error("input.answer_within: bad duration (e.g. \"72h\", \"3d\")", 0) end
        if not close then error("input.close_within: bad duration (e.g. \"30d\", \"6w\")", 0) end
        if p == "urgent" then answer = math.max(answer // URGENT_DIVISOR, 1) end
        local now = epoch(wf:now())
        local ctx = wf.ctx
        ctx.priority = p
        ctx.referral_id = input.referral_id
        ctx.answer_by = iso(now + answer)
        ctx.close_by = iso(now + close)
        ctx.no_shows = 0
        ctx.escalations = {}
        ctx.milestones = {}
        mark(wf, "requested")
        send(wf, "referral.request", { patient = input.patient, reason = input.reason, priority = p },
             { "demographics", "contact", "conditions" })
        wf:after(time.duration(answer), "answer_due")
        wf:after(time.duration(close), "loop_due", nil, { keep = true })
      end,
      on = open {
        ["referral.accepted"] = { guard = mine, to = "accepted" },
        ["referral.declined"] = {
          guard = with_reason,
          to = function(wf, ev) wf.ctx.decline_reason = ev.reason; return "declined" end,
        },
        ["referral.scheduled"] = scheduled_by_specialist, -- accepted and booked at once
        answer_due = function(wf)
          escalate(wf, "no_answer", "No answer from " .. org_name(wf.input.to) .. " on a referral",
                   "Sent " .. wf.ctx.milestones.requested:sub(1, 16) .. "Z, answer was due " ..
                   wf.ctx.answer_by:sub(1, 16) .. "Z. Call the specialist's office. Reason: " ..
                   wf.input.reason)
        end,
      },
    },

    accepted = {
      description = "The specialist accepted; waiting for an appointment",
      enter = function(wf) mark(wf, "accepted") end,
      on = open { ["referral.scheduled"] = scheduled_by_specialist },
    },

    scheduled = {
      description = "An appointment is booked",
      on = open {
        ["referral.scheduled"] = scheduled_by_specialist, -- moved by the specialist
        ["referral.no_show"] = { guard = mine, to = "no_show" },
        ["referral.consult_note"] = {
          guard = function(wf, ev) return mine(wf, ev) and present(ev.note) end,
          to = function(wf, ev)
            wf.ctx.summary = present(ev.summary) and clip(ev.summary, text.SUMMARY_MAX)
                             or clip(ev.note, text.SUMMARY_MAX)
            task(wf, { title = "Review the consult note from " .. org_name(wf.input.to),
                       role = "physician", due = "3d", description = clip(ev.note, text.TEXT_MAX) })
            return "consult_received"
          end,
        },
      },
    },

    no_show = {
      description = "The patient missed the appointment: outreach to book a new one",
      enter = function(wf)
        wf.ctx.no_shows = wf.ctx.no_shows + 1
        mark(wf, "no_show")
        kpi(wf, "referral_no_show", 1)
        wf.ctx.outreach = { attempts = 0 }
        contact_patient(wf)
      end,
      on = open {
        ["referral.scheduled"] = scheduled_by_specialist,
        outreach_retry = function(wf)
          if wf.ctx.outreach.attempts < OUTREACH_MAX then
            contact_patient(wf)
          else
            escalate(wf, "patient_unreachable",
                     "Phone the patient to reschedule with " .. org_name(wf.input.to),
                     wf.ctx.outreach.attempts .. " messages by " .. wf.ctx.outreach.channel ..
                     " had no effect.")
          end
        end,
      },
    },

    consult_received = {
      description = "The consult note is back; a physician reviews it",
      enter = function(wf) mark(wf, "consult_received") end,
      on = {
        close = function(wf, ev)
          if present(ev.note) then wf.ctx.review_note = clip(ev.note, text.SUMMARY_MAX) end
          return "closed"
        end,
        loop_due = loop_overdue,
      },
    },

    closed = {
      final = true, description = "The loop is closed",
      enter = function(wf)
        mark(wf, "closed")
        local days = (epoch(wf:now()) - epoch(wf.ctx.milestones.requested)) / 86400
        days = math.floor(days * 10 + 0.5) / 10
        wf.ctx.days_to_close = days
        kpi(wf, "referral_loop_closed", 1)
        kpi(wf, "referral_days_to_close", days)
      end,
    },

    declined = {
      final = true, description = "The specialist declined",
      enter = function(wf)
        mark(wf, "declined")
        kpi(wf, "referral_declined", 1)
        task(wf, { title = org_name(wf.input.to) .. " declined a referral",
                   description = "Reason given: " .. wf.ctx.decline_reason ..
                                 ". Find another specialist or manage in primary care." })
      end,
    },

    not_sent = {
      final = true, description = "The request could not be sent within the partnership's terms",
    },
    cancelled = {
      final = true, description = "Cancelled by the clinic or the specialist",
      enter = function(wf) mark(wf, "cancelled") end,
    },
  },
}
