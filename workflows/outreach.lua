-- outreach.lua -- an outreach campaign run by one organization: pick a cohort
-- of patients by a query, contact each one (one `outreach_contact` child per
-- patient) in waves capped per hour, respect opt-outs, count what came back
-- and record reach and response rates as KPIs.
--
-- Input
--   organization   the organization running the campaign (its name on the
--                  messages; its consents are the ones that count)
--   message        what the patient is told
--   cohort         a patient query: any patient find keys (condition, gender,
--                  language, generalPractitioner: strings) plus min_age /
--                  max_age (whole years on the campaign's start date, from
--                  birthDate) and roster (a cohort loaded with `caremesh
--                  roster import FILE --cohort NAME`, docs/roster_csv.md);
--                  e.g. { condition = "E11" }, { min_age = 65 },
--                  { roster = "flu-2026" }
--   min_age, max_age   the same as cohort.min_age / cohort.max_age
--   exclude        patient ids the caller already knows are done. Lab results
--                  are not records yet, so "E11 with no A1c in the last 180
--                  days" is the E11 cohort with the recent-A1c patients listed
--                  here by the caller (e.g. from the lab system).
--   purpose        the consent purpose checked and recorded (default
--                  "outreach")
--   per_hour       children started per hour, at most (default 50)
--   attempts       contact attempts per patient (default 3)
--   retry_after    time between attempts (default "2d")
--   respond_within time given to answer after the last attempt (default "7d")
--
-- Who is contacted: active patients matching the cohort, not excluded, and
-- without a consent in effect (status active, period covering today) with
-- this purpose, decision "deny", and organization = this organization or
-- none. Consents are checked when the patient's wave comes, so an opt-out
-- recorded meanwhile (e.g. by another campaign) counts. A skipped patient is
-- counted as opted out.
--
-- States
--   running   waves: at most per_hour children now, then a kept "wave" timer
--             every 1h until the queue (wf.ctx.queue) is empty
--   draining  after `stop`: no more waves; waits for the children already
--             contacting patients to end (an operator may cancel them)
--   finished  every child has ended
--
-- Events
--   child.done  from a child: counted (responded / opted_out / unreached;
--               a cancelled child counts as contacted, not reached)
--   stop        drop the rest of the queue; finished once the running
--               children have ended (at once if none)
--   wave          its own timer: the next wave
--
-- wf.ctx: queue (patient ids still to start), active (patient -> child),
-- cohort (patients selected), spawned, running, contacted (children ended),
-- reached, responded, opted_out, unreached, cancelled, stopped (dropped by
-- `stop`).
--
-- Effects: one `outreach_contact` child per patient (wf.ctx.active maps a
-- patient id to its child, so a response can be routed to it); KPIs, labels
-- { campaign = id, organization = ... }: per child `outreach_reached` (1 when
-- the patient answered or opted out), `outreach_responded` (1, with the
-- answer), `outreach_opted_out` (1, source "response" or "consent"); at the
-- end `outreach_reach_rate` and `outreach_response_rate` (0..1, over the
-- patients contacted; not recorded when nobody was contacted).
--
-- Uses lib/cohort.lua (the cohort query, ages, the consent check),
-- lib/checks.lua (input checks) and lib/time.lua (durations).
local cm = require "caremesh"
local checks = require "lib.checks"
local cohort = require "lib.cohort"
local time = require "lib.time"

local PURPOSES = { referral = true, outreach = true, immunization = true, care_coordination = true }

local check = checks.checker("outreach")

local function is_duration(s) return time.seconds(s) ~= nil end

-- The patient ids matching the query, in id order.
local function select_cohort(query, min_age, max_age, exclude, today)
  local filter, skip = cohort.filter(query, "cohort", check), {}
  min_age, max_age = min_age or query.min_age, max_age or query.max_age
  check(min_age == nil or math.type(min_age) == "integer", "min_age: expected whole years")
  check(max_age == nil or math.type(max_age) == "integer", "max_age: expected whole years")
  check(next(filter) or min_age or max_age, "cohort: give at least one criterion")
  for _, id in ipairs(exclude or {}) do skip[id] = true end
  return cohort.select(filter, min_age, max_age, today, skip)
end

local function labels(wf, extra)
  local l = { campaign = wf.id, organization = wf.input.organization }
  for k, v in pairs(extra or {}) do l[k] = v end
  return l
end

-- Start up to per_hour children from the queue; re-arm the wave timer while
-- the queue is not empty.
local function wave(wf)
  local ctx, input = wf.ctx, wf.input
  local today, started, rest = wf:now():sub(1, 10), 0, {}
  for _, patient in ipairs(ctx.queue) do
    if started >= ctx.per_hour then
      rest[#rest + 1] = patient
    elseif cohort.denied(patient, ctx.purpose, input.organization, today) then
      ctx.opted_out = ctx.opted_out + 1
      wf:kpi("outreach_opted_out", 1, labels(wf, { source = "consent" }))
    else
      ctx.active[patient] = wf:spawn("outreach_contact", {
        patient = patient, campaign = wf.id, organization = input.organization,
        purpose = ctx.purpose, message = input.message, attempts = ctx.attempts,
        retry_after = input.retry_after or "2d", respond_within = input.respond_within or "7d",
      })
      ctx.spawned = ctx.spawned + 1
      ctx.running = ctx.running + 1
      started = started + 1
    end
  end
  ctx.queue = rest
  if #rest > 0 then wf:after("1h", "wave", nil, { keep = true }) end
end

local function all_done(wf)
  return #wf.ctx.queue == 0 and wf.ctx.running == 0
end

local function count_child(wf, ev)
  local ctx = wf.ctx
  local patient = ev.context and ev.context.patient
  if patient then ctx.active[patient] = nil end
  ctx.running = ctx.running - 1
  ctx.contacted = ctx.contacted + 1
  if ev.status == "cancelled" then
    ctx.cancelled = ctx.cancelled + 1
    return
  end
  local reached = ev.state == "responded" or ev.state == "opted_out"
  if reached then
    ctx.reached = ctx.reached + 1
    wf:kpi("outreach_reached", 1, labels(wf))
  end
  if ev.state == "responded" then
    ctx.responded = ctx.responded + 1
    wf:kpi("outreach_responded", 1, labels(wf, { answer = ev.context.answer }))
  elseif ev.state == "opted_out" then
    ctx.opted_out = ctx.opted_out + 1
    wf:kpi("outreach_opted_out", 1, labels(wf, { source = "response" }))
  else
    ctx.unreached = ctx.unreached + 1
  end
end

local function on_child_done(wf, ev)
  count_child(wf, ev)
  if all_done(wf) then return "finished" end
end

return cm.workflow {
  name = "outreach", version = 1, purpose = "outreach",
  description = "An outreach campaign: a patient cohort contacted in capped waves, with opt-outs and rates",
  input = {
    organization = "organization", message = "string", cohort = "table?",
    min_age = "integer?", max_age = "integer?", exclude = "table?", purpose = "string?",
    per_hour = "integer?", attempts = "integer?", retry_after = "string?",
    respond_within = "string?",
  },
  start = "running",
  states = {
    running = {
      description = "contacting the cohort in waves of at most per_hour children an hour",
      enter = function(wf)
        local input, ctx = wf.input, wf.ctx
        ctx.purpose = input.purpose or "outreach"
        ctx.per_hour = input.per_hour or 50
        ctx.attempts = input.attempts or 3
        check(PURPOSES[ctx.purpose], "purpose: unknown consent purpose " .. ctx.purpose)
        check(ctx.per_hour >= 1, "per_hour: at least 1")
        check(ctx.attempts >= 1, "attempts: at least 1")
        check(input.retry_after == nil or is_duration(input.retry_after), "retry_after: bad duration")
        check(input.respond_within == nil or is_duration(input.respond_within),
              "respond_within: bad duration")
        ctx.queue = select_cohort(input.cohort or {}, input.min_age, input.max_age, input.exclude,
                                  wf:now():sub(1, 10))
        ctx.cohort = #ctx.queue
        ctx.active = {}
        ctx.spawned, ctx.running, ctx.contacted, ctx.cancelled = 0, 0, 0, 0
        ctx.reached, ctx.responded, ctx.opted_out, ctx.unreached = 0, 0, 0, 0
        wave(wf)
        -- Nobody to contact: finish at once.
        if all_done(wf) then wf:go("finished") end
      end,
      on = {
        wave = wave,
        ["child.done"] = on_child_done,
        stop = function(wf)
          wf:cancel("wave")
          wf.ctx.stopped = #wf.ctx.queue
          wf.ctx.queue = {}
          return all_done(wf) and "finished" or "draining"
        end,
      },
    },
    draining = {
      description = "stopped: no more waves; waiting for the running children to end",
      on = { ["child.done"] = on_child_done },
    },
    finished = {
      final = true,
      description = "every child has ended (or the campaign was stopped)",
      enter = function(wf)
        local ctx = wf.ctx
        if ctx.contacted > 0 then
          wf:kpi("outreach_reach_rate", ctx.reached / ctx.contacted, labels(wf))
          wf:kpi("outreach_response_rate", ctx.responded / ctx.contacted, labels(wf))
        end
      end,
    },
  },
}
