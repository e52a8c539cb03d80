-- immunization_report.lua -- a dose given at a partner site, recorded at
-- the patient's primary-care practice.
--
-- When a community pharmacy gives a dose in a vaccination drive
-- (vaccination_course.lua), it reports it to the patient's primary-care
-- organization with the message "immunization.given". On the primary-care
-- node that message starts this workflow (started_by): the host has already
-- checked that a partnership lets this practice receive immunizations from
-- the pharmacy for the purpose "immunization", and the patient's consent.
-- It records the dose as the practice's own Immunization record (FHIR R4
-- Immunization: vaccineCode, occurrenceDateTime, performer = the pharmacy,
-- doseNumber, seriesDoses, lotNumber), counts it as a KPI, and, when the
-- dose completes the series, creates a task for the practice to update the
-- patient's care plan.
--
-- Input (the message's payload, plus from and to set by the host)
--   from          organization  the pharmacy that gave the dose
--   to            organization  this practice
--   patient       patient       the patient (must be known here)
--   immunization  string        the pharmacy's id of the dose
--   vaccine       string        vaccine code (e.g. CVX "141")
--   system        string?       code system
--   display       string?       vaccine name
--   dose          integer       dose number in the series (from 1)
--   doses         integer       doses in the series
--   date          string        when it was given (ISO-8601)
--   site          string?       where (an organization id of the pharmacy's)
--   lot           string?       lot number
--
-- States
--   recorded  final: the dose is recorded here
--
-- Effects
--   record  immunization "<from>.<immunization>" (idempotent per dose: the
--           same dose reported twice is refused, not recorded twice)
--   KPI     immunization_reported (labels: partner = from, vaccine, dose)
--   task    at `to`, for a nurse, when dose == doses: the series is complete
local cm = require "caremesh"
local text = require "lib.text"

local function record(wf)
  local input = wf.input
  if input.dose < 1 or input.dose > input.doses then
    error("input.dose: " .. input.dose .. " is not a dose of a series of " .. input.doses, 0)
  end
  local id = input.from .. "." .. input.immunization
  cm.immunization.create {
    id = id, status = "completed", patient = input.patient,
    vaccineCode = { code = input.vaccine, system = input.system, display = input.display },
    occurrenceDateTime = input.date, performer = input.from,
    doseNumber = input.dose, seriesDoses = input.doses, lotNumber = input.lot,
    note = "Reported by " .. text.org_name(input.from),
  }
  wf.ctx.immunization = id
  wf:kpi("immunization_reported", 1,
         { partner = input.from, vaccine = input.vaccine, dose = input.dose })
  if input.dose == input.doses then
    wf:task {
      title = "Vaccine series complete: update the care plan",
      description = text.clip((input.display or input.vaccine) .. " series (" .. input.doses ..
                              " doses) completed at " .. text.org_name(input.from) .. " on " ..
                              input.date:sub(1, 10) .. ".", text.TEXT_MAX),
      organization = input.to, role = "nurse", patient = input.patient, due = "7d",
    }
  end
end

return cm.workflow {
  name = "immunization_report", version = 1, purpose = "immunization",
  description = "A dose given at a partner pharmacy, recorded at primary care",
  started_by = { "immunization.given" },
  input = {
    from = "organization", to = "organization", patient = "patient", immunization = "string",
    vaccine = "string", system = "string?", display = "string?", dose = "integer",
    doses = "integer", date = "string", site = "string?", lot = "string?",
  },
  start = "recorded",
  states = {
    recorded = { final = true, description = "The dose is recorded here", enter = record },
  },
}
