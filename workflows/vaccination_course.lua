-- vaccination_course.lua -- one patient's vaccine series in a vaccination
-- drive (vaccination.lua spawns one per target patient; it can also be
-- started on its own): when each dose is due and overdue, reminders to the
-- patient, each dose recorded as a FHIR Immunization and reported to primary
-- care.
--
-- Input
--   patient        the patient
--   pharmacy       the community pharmacy running the drive (always a site)
--   vaccine        { code = "208", system = "http://hl7.org/fhir/sid/cvx",
--                    display = "COVID-19 mRNA" }: code required
--   schedule       the series, in one of two shapes:
--                    { doses = 2, min_interval = "21d", max_interval = "42d" }
--                      every dose after the first is due min_interval after
--                      the one before and overdue max_interval after it
--                      (both optional);
--                    { {}, { min_interval = "21d", max_interval = "42d" },
--                      { min_interval = "6m" ... } }
--                      one entry per dose, each measured from the dose
--                      before; the first entry may only hold max_interval
--                      (dose 1 overdue that long after enrollment).
--                  Dose 1 is due at once. At most 10 doses; max_interval
--                  must be longer than min_interval.
--   sites          organization ids of the other participating sites
--   primary_care   an organization to report every dose to (optional)
--   drive          the drive's instance id (labels, notification data)
--   remind_before  how long before a due date the reminder goes (default "2d")
--
-- Timing: the next dose is due at (last dose + min_interval) and overdue at
-- (last dose + max_interval). Doses count by calendar day (UTC): a dose on
-- the due date is valid whatever the hour; one on an earlier day is refused.
-- The patient hears once when a dose is due (a reminder remind_before the
-- due date, or at the due date when that is sooner than remind_before away,
-- as for dose 1) and once when it becomes overdue. Notifications go through
-- the patient's preferredChannel ("phone" when none).
--
-- States
--   waiting    the next dose is not due yet (timers "remind" and "due")
--   due        the next dose is due (timer "overdue" when max_interval)
--   overdue    the next dose is past max_interval; it can still be given
--   completed  final: every dose given
--   declined   final: the patient declined the series
--
-- Events
--   dose_given { site, practitioner?, lot?, at? } -- site: the pharmacy or one
--              of sites; practitioner: a provider id; at: when, ISO-8601
--              date or date-time, default now, never in the future. Refused
--              (no transition: nothing recorded) when any of that is wrong
--              or the dose comes before its due date. Records an
--              immunization (id "imm.<course>.<dose>": vaccineCode,
--              occurrenceDateTime, performer = site, practitioner,
--              lotNumber, doseNumber, seriesDoses), the KPI
--              `vaccination_dose_given` (labels drive, dose, site) and, with
--              primary_care, sends it "immunization.given" { patient,
--              vaccine (code), system, display, dose, doses, date, site,
--              immunization, lot } (purpose immunization, class
--              immunizations; immunization_report.lua records it there).
--   declined   { reason? }
--   remind, due, overdue   its own timers
--
-- wf.ctx: patient, channel, doses (in the series), dose (the next one),
-- given, enrolled, last (the last dose's time), due_at, overdue_at,
-- reminded, reason.
--
-- Uses lib/series.lua (the schedule, dose windows, times) and
-- lib/checks.lua (input checks).
local cm = require "caremesh"
local checks = require "lib.checks"

local series = require "lib.series"

local check = checks.checker("vaccination_course")
local duration_ms, parse_time, format_time = series.duration_ms, series.parse_time, series.format_time

local function now_ms(wf) return parse_time(wf:now()) end

-- The schedule as one { min_interval?, max_interval? } per dose.
local function doses_of(s) return series.doses(s, check) end

local function vaccine_name(wf)
  return wf.input.vaccine.display or wf.input.vaccine.code
end

local function site_allowed(wf, site)
  if site == wf.input.pharmacy then return true end
  for _, s in ipairs(wf.input.sites or {}) do
    if s == site then return true end
  end
  return false
end

local function site_names(wf)
  local names = { cm.organization.get(wf.input.pharmacy).name }
  for _, s in ipairs(wf.input.sites or {}) do names[#names + 1] = cm.organization.get(s).name end
  return table.concat(names, ", ")
end

-- Tell the patient about the next dose: kind "due", "reminder" or "overdue".
local function tell(wf, kind)
  local ctx = wf.ctx
  local what = string.format("dose %d of %d of %s", ctx.dose, ctx.doses, vaccine_name(wf))
  local due = ctx.due_at:sub(1, 10)
  local text = kind == "due" and "Your " .. what .. " is due now."
      or kind == "reminder" and "Reminder: your " .. what .. " is due on " .. due .. "."
      or "Your " .. what .. " was due on " .. due .. ". It is not too late."
  wf:notify {
    channel = ctx.channel, to = wf.input.patient,
    message = text .. " Walk in at: " .. site_names(wf) .. ".",
    data = { drive = wf.input.drive, kind = kind, dose = ctx.dose, doses = ctx.doses,
             due = due, vaccine = wf.input.vaccine.code },
  }
end

-- Set the due and overdue times of dose ctx.dose; returns the state it is in now.
local function plan_next(wf)
  local ctx = wf.ctx
  local base = parse_time(ctx.dose == 1 and ctx.enrolled or ctx.last)
  local due, overdue = series.window(doses_of(wf.input.schedule), ctx.dose, base)
  ctx.due_at, ctx.overdue_at, ctx.reminded = format_time(due), overdue and format_time(overdue), false
  local now = now_ms(wf)
  if overdue and now >= overdue then return "overdue" end
  return now >= due and "due" or "waiting"
end

local function dose_ok(wf, ev)
  local at, now = parse_time(ev.at or wf:now()), now_ms(wf)
  if type(ev.site) ~= "string" or not site_allowed(wf, ev.site) then return false end
  if ev.practitioner ~= nil
      and (type(ev.practitioner) ~= "string" or not cm.provider.get(ev.practitioner)) then
    return false
  end
  if ev.lot ~= nil and type(ev.lot) ~= "string" then return false end
  if not at or at > now then return false end
  -- dose 1 has no lower bound; a later dose counts from its due date's day
  return wf.ctx.dose == 1 or at >= parse_time(wf.ctx.due_at:sub(1, 10))
end

local function give_dose(wf, ev)
  local ctx, input = wf.ctx, wf.input
  local at = ev.at or wf:now()
  local id = "imm." .. wf.id .. "." .. ctx.dose
  cm.immunization.create {
    id = id, status = "completed", patient = input.patient,
    vaccineCode = { code = input.vaccine.code, system = input.vaccine.system,
                    display = input.vaccine.display },
    occurrenceDateTime = at, performer = ev.site, practitioner = ev.practitioner,
    lotNumber = ev.lot, doseNumber = ctx.dose, seriesDoses = ctx.doses,
  }
  wf:kpi("vaccination_dose_given", 1, { drive = input.drive, dose = ctx.dose, site = ev.site })
  if input.primary_care then
    wf:send(input.primary_care, "immunization.given", {
      patient = input.patient, vaccine = input.vaccine.code, system = input.vaccine.system,
      display = input.vaccine.display, dose = ctx.dose, doses = ctx.doses, date = at,
      site = ev.site, immunization = id, lot = ev.lot,
    }, { from = input.pharmacy, purpose = "immunization", patient = input.patient,
         classes = { "immunizations" } })
  end
  ctx.given, ctx.last = ctx.dose, format_time(parse_time(at))
  wf:cancel("remind")
  wf:cancel("due")
  wf:cancel("overdue")
  if ctx.dose == ctx.doses then return "completed" end
  ctx.dose = ctx.dose + 1
  return plan_next(wf)
end

local dose_given = { to = give_dose, guard = dose_ok }

-- Timer events only count once their time has come.
local function past(field)
  return function(wf) return wf.ctx[field] ~= nil and now_ms(wf) >= parse_time(wf.ctx[field]) end
end

local function decline(wf, ev)
  wf.ctx.reason = type(ev.reason) == "string" and ev.reason or nil
  return "declined"
end

return cm.workflow {
  name = "vaccination_course", version = 1, purpose = "immunization",
  description = "One patient's vaccine series: due, overdue, reminders, doses recorded",
  input = {
    patient = "patient", pharmacy = "organization", vaccine = "table", schedule = "table",
    sites = "table?", primary_care = "organization?", drive = "string?", remind_before = "string?",
  },
  start = "due",
  states = {
    waiting = {
      description = "the next dose is not due yet",
      enter = function(wf)
        local due = parse_time(wf.ctx.due_at)
        local remind = due - duration_ms(wf.input.remind_before or "2d")
        if remind > now_ms(wf) then wf:at(format_time(remind), "remind") end
        wf:at(wf.ctx.due_at, "due")
      end,
      on = {
        remind = function(wf)
          wf.ctx.reminded = true
          tell(wf, "reminder")
        end,
        due = { to = "due", guard = past("due_at") },
        dose_given = dose_given,
        declined = decline,
      },
    },
    due = {
      description = "the next dose is due",
      enter = function(wf)
        local ctx, input = wf.ctx, wf.input
        if not ctx.dose then -- enrollment: check the input once, plan dose 1
          check(type(input.vaccine.code) == "string", "vaccine.code: required, a string")
          check(input.remind_before == nil or duration_ms(input.remind_before),
                "remind_before: bad duration")
          for _, s in ipairs(input.sites or {}) do
            check(type(s) == "string" and cm.organization.get(s), "sites: no organization " .. tostring(s))
          end
          ctx.patient = input.patient
          ctx.channel = cm.patient.get(input.patient).preferredChannel or "phone"
          ctx.doses, ctx.dose, ctx.given, ctx.enrolled = #doses_of(input.schedule), 1, 0, wf:now()
          plan_next(wf)
        end
        if not ctx.reminded then tell(wf, "due") end
        if ctx.overdue_at then wf:at(ctx.overdue_at, "overdue") end
      end,
      on = {
        overdue = { to = "overdue", guard = past("overdue_at") },
        dose_given = dose_given,
        declined = decline,
      },
    },
    overdue = {
      description = "the next dose is past its maximum interval",
      enter = function(wf) tell(wf, "overdue") end,
      on = { dose_given = dose_given, declined = decline },
    },
    completed = { final = true, description = "every dose of the series given" },
    declined = { final = true, description = "the patient declined the series" },
  },
}
