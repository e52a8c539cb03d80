-- vaccination.lua -- a vaccination drive run by a community pharmacy with its
-- partners: a target population chosen by a query over patients, one
-- `vaccination_course` child per patient (the series: due / overdue /
-- completed, reminders, each dose recorded as a FHIR Immunization and
-- reported to primary care), and coverage as a KPI.
--
-- Input
--   pharmacy       the community pharmacy running the drive
--   primary_care   an organization every dose is reported to (optional)
--   vaccine        { code =, system =, display = } (code required), e.g.
--                  { code = "208", system = "http://hl7.org/fhir/sid/cvx",
--                    display = "COVID-19, mRNA, 30 mcg/0.3 mL" }
--   schedule       the series: { doses = 2, min_interval = "21d",
--                  max_interval = "42d" } or one entry per dose; see
--                  vaccination_course.lua, which checks it
--   target         a patient query: any patient find keys (condition,
--                  gender, language, generalPractitioner: strings) plus
--                  min_age / max_age (whole years on the start date), e.g.
--                  { min_age = 65 } or { condition = "E11" }
--   sites          organization ids of the other participating sites (the
--                  pharmacy always is one); a dose given elsewhere is refused
--   remind_before  how long before a due date patients are reminded
--                  (default "2d")
--
-- Who is enrolled: active patients matching the target, except those with a
-- consent in effect (status active, period covering today) for purpose
-- "immunization", decision "deny", organization = the pharmacy or none;
-- they stay in the target (the coverage denominator) and are counted in
-- wf.ctx.opted_out. wf.ctx.courses maps each enrolled patient to their
-- course while it runs: doses and declines are sent to the course.
--
-- States
--   running   courses under way
--   finished  every course has ended, or the drive was closed
--
-- Events
--   child.done  a course ended: counted (completed / declined / cancelled);
--               KPI `vaccination_coverage` = completed / target
--   close       end the drive now (coverage recorded); courses under way
--               are not stopped, a patient mid-series can still finish
--
-- wf.ctx: courses (patient -> course, while it runs), target, enrolled,
-- opted_out, ended, completed, declined, cancelled, closed.
--
-- KPIs (labels { drive = id, pharmacy = ... }): `vaccination_coverage`
-- whenever a course ends and on close; `vaccination_dose_given` per dose is
-- recorded by the course (labels drive, dose, site), which is where the dose
-- event arrives.
--
-- Uses lib/cohort.lua (the target query, ages, the consent check) and
-- lib/checks.lua (input checks).
local cm = require "caremesh"
local checks = require "lib.checks"
local cohort = require "lib.cohort"

local check = checks.checker("vaccination")

-- The ids of the active patients matching the target, in id order.
local function select_target(query, today)
  local filter = cohort.filter(query, "target", check, true) -- true: ages in whole years
  check(next(query) ~= nil, "target: give at least one criterion")
  return cohort.select(filter, query.min_age, query.max_age, today)
end

local function labels(wf)
  return { drive = wf.id, pharmacy = wf.input.pharmacy }
end

local function record_coverage(wf)
  local ctx = wf.ctx
  if ctx.target > 0 then wf:kpi("vaccination_coverage", ctx.completed / ctx.target, labels(wf)) end
end

return cm.workflow {
  name = "vaccination", version = 1,
  description = "A vaccination drive: a target population, one vaccine series per patient, coverage",
  input = {
    pharmacy = "organization", primary_care = "organization?", vaccine = "table",
    schedule = "table", target = "table", sites = "table?", remind_before = "string?",
  },
  start = "running",
  states = {
    running = {
      description = "courses under way",
      enter = function(wf)
        local input, ctx = wf.input, wf.ctx
        local today = wf:now():sub(1, 10)
        local ids = select_target(input.target, today)
        ctx.target, ctx.enrolled, ctx.opted_out = #ids, 0, 0
        ctx.ended, ctx.completed, ctx.declined, ctx.cancelled = 0, 0, 0, 0
        ctx.courses = {}
        for _, patient in ipairs(ids) do
          if cohort.denied(patient, "immunization", input.pharmacy, today) then
            ctx.opted_out = ctx.opted_out + 1
          else
            -- a bad schedule, vaccine or site list makes the course's start,
            -- and with it this start, fail with the course's message
            ctx.courses[patient] = wf:spawn("vaccination_course", {
              patient = patient, pharmacy = input.pharmacy, primary_care = input.primary_care,
              vaccine = input.vaccine, schedule = input.schedule, sites = input.sites,
              remind_before = input.remind_before, drive = wf.id,
            })
            ctx.enrolled = ctx.enrolled + 1
          end
        end
        -- Nobody to vaccinate: finish at once.
        if ctx.enrolled == 0 then wf:go("finished") end
      end,
      on = {
        ["child.done"] = function(wf, ev)
          local ctx = wf.ctx
          local patient = ev.context and ev.context.patient
          if patient then ctx.courses[patient] = nil end
          ctx.ended = ctx.ended + 1
          if ev.status == "cancelled" then
            ctx.cancelled = ctx.cancelled + 1
          elseif ev.state == "completed" then
            ctx.completed = ctx.completed + 1
          elseif ev.state == "declined" then
            ctx.declined = ctx.declined + 1
          end
          record_coverage(wf)
          if ctx.ended == ctx.enrolled then return "finished" end
        end,
        close = function(wf)
          wf.ctx.closed = true
          record_coverage(wf)
          return "finished"
        end,
      },
    },
    finished = { final = true, description = "every course ended, or the drive was closed" },
  },
}
