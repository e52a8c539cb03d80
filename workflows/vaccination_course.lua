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
-- Uses lib/time.lua (the calendar's day count, durations) and
-- lib/checks.lua (input checks).
local cm = require "caremesh"
local checks = require "lib.checks"
local time = require "lib.time"

local DAY = 86400000
local MAX_DOSES = 10

local check = checks.checker("vaccination_course")
local days_from_civil, civil_from_days = time.days_from_civil, time.civil_from_days

-- "1d12h" -> milliseconds (the engine's duration grammar), nil when bad.
local function duration_ms(s)
  local secs = time.seconds(s)
  return secs and secs * 1000
end

-- ISO-8601 date or date-time with a zone -> milliseconds, nil when bad.
local function parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 then return nil end
  local ms = days_from_civil(y, mo, d) * DAY
  if select(2, civil_from_days(ms // DAY)) ~= mo then return nil end -- e.g. 02-30
  if rest == "" then return ms end
  local h, mi, tail = rest:match("^T(%d%d):(%d%d)(.*)$")
  if not h then return nil end
  local sec, frac, off = 0, 0, 0
  local ss, after_s = tail:match("^:(%d%d)(.*)$")
  if ss then
    sec, tail = tonumber(ss), after_s
    local f, after_f = tail:match("^%.(%d+)(.*)$")
    if f then frac, tail = tonumber((f .. "00"):sub(1, 3)), after_f end
  end
  if tail ~= "Z" then
    local sign, oh, om = tail:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    off = (tonumber(oh) * 60 + tonumber(om)) * 60000 * (sign == "-" and -1 or 1)
  end
  h, mi = tonumber(h), tonumber(mi)
  if h > 23 or mi > 59 or sec > 59 then return nil end
  return ms + ((h * 60 + mi) * 60 + sec) * 1000 + frac - off
end

local function format_time(ms)
  local y, m, d = civil_from_days(ms // DAY)
  local rem = ms % DAY
  return string.format("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", y, m, d, rem // 3600000,
                       rem // 60000 % 60, rem // 1000 % 60, rem % 1000)
end

local function now_ms(wf) return parse_time(wf:now()) end

-- The schedule as one { min_interval?, max_interval? } per dose.
local function doses_of(s)
  local list = {}
  if s[1] ~= nil then
    for i, e in ipairs(s) do
      check(type(e) == "table", "schedule[" .. i .. "]: expected { min_interval?, max_interval? }")
      for k in pairs(e) do
        check(k == "min_interval" or k == "max_interval",
              "schedule[" .. i .. "]." .. tostring(k) .. ": unknown field")
      end
      list[i] = e
    end
  else
    for k in pairs(s) do
      check(k == "doses" or k == "min_interval" or k == "max_interval",
            "schedule." .. tostring(k) .. ": unknown field (use doses, min_interval, max_interval)")
    end
    check(math.type(s.doses) == "integer" and s.doses >= 1, "schedule.doses: a whole number from 1")
    list[1] = {}
    for i = 2, math.min(s.doses, MAX_DOSES + 1) do
      list[i] = { min_interval = s.min_interval, max_interval = s.max_interval }
    end
  end
  check(#list <= MAX_DOSES, "schedule: at most " .. MAX_DOSES .. " doses")
  for i, e in ipairs(list) do
    local where = "schedule[" .. i .. "]."
    check(i > 1 or e.min_interval == nil, where .. "min_interval: dose 1 is due at once")
    local min, max = duration_ms(e.min_interval or "0s"), duration_ms(e.max_interval or "0s")
    check(min, where .. "min_interval: bad duration " .. tostring(e.min_interval))
    check(max, where .. "max_interval: bad duration " .. tostring(e.max_interval))
    check(e.max_interval == nil or max > min, where .. "max_interval: must be longer than min_interval")
  end
  return list
end

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
  local entry = doses_of(wf.input.schedule)[ctx.dose]
  local base = parse_time(ctx.dose == 1 and ctx.enrolled or ctx.last)
  local due = ctx.dose == 1 and base or base + duration_ms(entry.min_interval or "0s")
  local overdue = entry.max_interval and base + duration_ms(entry.max_interval)
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
  name = "vaccination_course", version = 1,
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
