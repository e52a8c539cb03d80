-- outreach_contact.lua -- one patient of an outreach campaign (outreach.lua
-- spawns one per patient): contact the patient through their preferred
-- channel, try again a few times, and end with what the patient said.
--
-- Input
--   patient         the patient
--   organization    the organization running the campaign
--   message         what the patient is told
--   campaign        the campaign instance's id (sent along in the
--                   notification's data, for the channel and the answer)
--   purpose         the consent purpose an opt-out is recorded for
--                   (default "outreach")
--   attempts        contact attempts (default 3)
--   retry_after     time between attempts (default "2d")
--   respond_within  time given to answer after the last attempt (default "7d")
--
-- The channel is the patient's preferredChannel (phone, sms, email, mail or
-- portal), "phone" when they have none. Attempt k is sent at
-- (k - 1) * retry_after; after the last one the patient has respond_within.
--
-- States
--   contacting  attempts under way (wf.ctx.attempts made so far)
--   responded   final: the patient answered (wf.ctx.answer, wf.ctx.note)
--   opted_out   final: the patient asked not to be contacted; a consent
--               record (purpose, decision "deny", this organization, from
--               today) is created so later campaigns skip them
--   unreached   final: no answer after every attempt
--
-- Events
--   response  { answer = "booked" | "declined" | "other", note? }
--             (any other answer is refused)
--   opt_out   { note? }
--   retry, expire   the attempt timers
--
-- Uses lib/text.lua (whether the opt-out came with a note).
local cm = require "caremesh"
local text = require "lib.text"

local ANSWERS = { booked = true, declined = true, other = true }

local function contact(wf)
  local ctx, input = wf.ctx, wf.input
  ctx.attempts = ctx.attempts + 1
  wf:notify {
    channel = ctx.channel, to = input.patient, message = input.message,
    data = { campaign = input.campaign, organization = input.organization,
             attempt = ctx.attempts, of = ctx.max_attempts },
  }
  if ctx.attempts < ctx.max_attempts then
    wf:after(input.retry_after or "2d", "retry")
  else
    wf:after(input.respond_within or "7d", "expire")
  end
end

local function valid_answer(_, ev)
  return ANSWERS[ev.answer] ~= nil and (ev.note == nil or type(ev.note) == "string")
end

return cm.workflow {
  name = "outreach_contact", version = 1, purpose = "outreach",
  description = "One patient of an outreach campaign: contact attempts and the answer",
  input = {
    patient = "patient", organization = "organization", message = "string",
    campaign = "string?", purpose = "string?", attempts = "integer?", retry_after = "string?",
    respond_within = "string?",
  },
  start = "contacting",
  states = {
    contacting = {
      description = "contacting the patient, up to attempts times, retry_after apart",
      enter = function(wf)
        local ctx = wf.ctx
        ctx.patient = wf.input.patient
        ctx.channel = cm.patient.get(wf.input.patient).preferredChannel or "phone"
        ctx.attempts, ctx.max_attempts = 0, wf.input.attempts or 3
        contact(wf)
      end,
      on = {
        retry = function(wf) contact(wf) end,
        expire = "unreached",
        response = {
          to = function(wf, ev)
            wf.ctx.answer, wf.ctx.note = ev.answer, ev.note
            return "responded"
          end,
          guard = valid_answer,
        },
        opt_out = function(wf, ev)
          local today = wf:now():sub(1, 10)
          cm.consent.create {
            id = "optout." .. wf.id, patient = wf.input.patient,
            purpose = wf.input.purpose or "outreach", organization = wf.input.organization,
            decision = "deny", period = { start = today }, recorded = wf:now(),
            note = text.present(ev.note) and ev.note
                   or "Opted out in reply to outreach " .. (wf.input.campaign or wf.id),
          }
          return "opted_out"
        end,
      },
    },
    responded = { final = true, description = "the patient answered" },
    opted_out = { final = true, description = "the patient opted out; a deny consent was recorded" },
    unreached = { final = true, description = "no answer after every attempt" },
  },
}
