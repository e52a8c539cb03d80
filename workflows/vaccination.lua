-- vaccination.lua -- a vaccination drive run by a community pharmacy with its
-- partners: a target population chosen by a query over patients, one
-- `vaccination_course` child per patient (the series: due / overdue /
-- completed, reminders, each dose recorded as a FHIR Immunization and
-- reported to primary care), appointment slots at the participating sites
-- (booked, cancelled, reminded, kept or missed), and coverage, slot use and
-- no-shows as KPIs.
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
--   slots          appointment slots per site (optional): { [site] = { slot,
--                  ... } }, site the pharmacy or one of sites, a slot either
--                    { at = "2026-01-27T10:00:00-05:00", capacity = 4,
--                      length = "15m" }
--                    { day = "2026-01-27", from = "09:00", to = "12:00",
--                      zone = "-05:00", length = "15m", capacity = 2 }
--                  (from..to at zone, default "Z", split into slots of
--                  length, default "15m"); capacity: people per slot; at most
--                  500 slots. Checked at start: a bad one refuses the start,
--                  naming the field (slots.<site>[i].<field>). See
--                  lib/slots.lua.
--   remind_before  how long before a due date, and before a booked
--                  appointment, patients are reminded (default "2d")
--
-- Who is enrolled: active patients matching the target, except those with a
-- consent in effect (status active, period covering today) for purpose
-- "immunization", decision "deny", organization = the pharmacy or none;
-- they stay in the target (the coverage denominator) and are counted in
-- wf.ctx.opted_out. wf.ctx.courses maps each enrolled patient to their
-- course while it runs: doses and declines are sent to the course.
--
-- Appointments: the drive holds the slot inventory in wf.ctx, so its
-- one-event-at-a-time steps serialize every booking: capacity is never
-- exceeded (of two bookings for the last place, the second is refused). A
-- booking is for the patient's next dose, whose window the drive reads from
-- the doses the course recorded (immunizations "imm.<course>.<n>") and the
-- schedule (lib/series.lua, the course's own rules): the slot must start on
-- or after the dose's due date (its day, as for the dose itself) and not
-- after its max_interval. The drive arms one durable timer, "appointments",
-- at the next reminder or slot end. When a booked slot ends, the booking is
-- kept if the dose was recorded (the place stays taken), else missed: the
-- place is freed, a no-show counted and the patient told (that the dose is
-- overdue, once past its max_interval; the course's own due / overdue
-- timers and notices go on as before). A dose recorded early closes the
-- booking too (the patient may book the next dose). A course that ends
-- (declined, cancelled) frees its place. The course is not told of the
-- booking: the engine carries no event from a parent to a running child.
--
-- States
--   running   courses under way
--   finished  every course has ended, or the drive was closed (bookings
--             left are not watched any more)
--
-- Events
--   child.done  a course ended: counted (completed / declined / cancelled);
--               KPI `vaccination_coverage` = completed / target; its
--               booking closed (kept, or its place freed)
--   close       end the drive now (coverage recorded); courses under way
--               are not stopped, a patient mid-series can still finish
--   book        { patient, site, at }: the patient (or staff on their
--               behalf) takes a place in the slot of site starting at `at`
--               (any ISO-8601 zone) for the next dose. Refused, with the
--               reason in the message and nothing changed, when: patient
--               has no course under way; site is not in the drive; no such
--               slot; the slot has begun; the patient holds a booking not
--               kept yet (cancel it first: a booking replaces nothing);
--               every dose was given; the slot is before the dose's due
--               date or after its max_interval; the slot is full. The
--               patient is told ("booked", naming site and time).
--   cancel_booking  { patient }: frees the place; refused when the patient
--               holds none or its dose was recorded. The patient is told.
--   appointments  its own timer: reminders ("appointment", naming site and
--               time, remind_before the slot), slots ended (kept / missed)
--
-- Notifications (through the patient's preferredChannel, "phone" when
-- none) have data { drive, kind, dose, site, at, vaccine }, kind "booked",
-- "appointment", "cancelled" or "missed".
--
-- wf.ctx: courses (patient -> course, while it runs), target, enrolled,
-- opted_out, ended, completed, declined, cancelled, closed; started (the
-- drive's start, dose 1's window), doses (in the series); slots (id ->
-- { site, at, ends, capacity, booked }, id "<site>@<UTC start>"), bookings
-- (patient -> { slot, dose, course, channel, remind_at, reminded }: each
-- patient's one booking not closed yet), booked (bookings made), kept,
-- cancelled_bookings, no_shows.
--
-- KPIs (labels { drive = id, pharmacy = ... }): `vaccination_coverage`
-- whenever a course ends and on close; `vaccination_slot_use` (labels
-- also site) = places taken / places offered at the site, whenever a
-- booking there is made or frees its place; `vaccination_no_show` 1 per
-- missed appointment (labels also site, dose). `vaccination_dose_given` per
-- dose is recorded by the course (labels drive, dose, site), which is where
-- the dose event arrives.
--
-- Uses lib/cohort.lua (the target query, ages, the consent check),
-- lib/checks.lua (input checks), lib/series.lua (the schedule, dose
-- windows, times) and lib/slots.lua (the slot input and inventory).
local cm = require "caremesh"
local checks = require "lib.checks"
local cohort = require "lib.cohort"
local series = require "lib.series"
local slots = require "lib.slots"

local check = checks.checker("vaccination")
local parse_time, format_time = series.parse_time, series.format_time

-- The ids of the active patients matching the target, in id order.
local function select_target(query, today)
  local filter = cohort.filter(query, "target", check, true) -- true: ages in whole years
  check(next(query) ~= nil, "target: give at least one criterion")
  return cohort.select(filter, query.min_age, query.max_age, today)
end

local function labels(wf, extra)
  local l = { drive = wf.id, pharmacy = wf.input.pharmacy }
  for k, v in pairs(extra or {}) do l[k] = v end
  return l
end

local function record_coverage(wf)
  local ctx = wf.ctx
  if ctx.target > 0 then wf:kpi("vaccination_coverage", ctx.completed / ctx.target, labels(wf)) end
end

local function site_allowed(input, site)
  if site == input.pharmacy then return true end
  for _, s in ipairs(input.sites or {}) do
    if s == site then return true end
  end
  return false
end

local function now_ms(wf) return parse_time(wf:now()) end

-- "2026-01-27T10:00:00.000Z" -> "2026-01-27 10:00 UTC"
local function show_time(iso) return iso:sub(1, 10) .. " " .. iso:sub(12, 16) .. " UTC" end

-- The next dose of the course of a patient: its number and window (due,
-- overdue or nil, in ms), from the doses the course recorded (immunization
-- "imm.<course>.<n>") and the drive's start (dose 1); nil when every dose
-- was given.
local function next_dose(wf, course)
  local list = series.doses(wf.input.schedule, check)
  local n, last = 1, nil
  while n <= #list do
    local imm = cm.immunization.get("imm." .. course .. "." .. n)
    if not imm then break end
    last, n = imm.occurrenceDateTime, n + 1
  end
  if n > #list then return nil end
  return n, series.window(list, n, parse_time(n == 1 and wf.ctx.started or last))
end

-- Was the dose a booking is for recorded?
local function attended(b) return cm.immunization.get("imm." .. b.course .. "." .. b.dose) ~= nil end

-- The booking the patient holds and has not kept yet (its dose not
-- recorded), or nil.
local function open_booking(wf, patient)
  local b = wf.ctx.bookings[patient]
  if b and not attended(b) then return b end
  return nil
end

-- Why patient cannot book the slot ev asks for (nil: they can), plus the
-- slot's id and the dose when they can.
local function booking_problem(wf, ev)
  local ctx = wf.ctx
  if type(ev.patient) ~= "string" then return "book: patient: required, a patient id" end
  local course = ctx.courses[ev.patient]
  if not course then return "book: " .. ev.patient .. " has no course under way in this drive" end
  if type(ev.site) ~= "string" then return "book: site: required, an organization id" end
  if not site_allowed(wf.input, ev.site) then return "book: site " .. ev.site .. " is not in this drive" end
  local at = parse_time(ev.at)
  if not at then return "book: at: expected the slot's ISO-8601 date-time, got " .. tostring(ev.at) end
  local id = slots.id(ev.site, at)
  local slot = ctx.slots[id]
  if not slot then return "book: no slot at " .. ev.site .. " starting " .. format_time(at) end
  if at <= now_ms(wf) then return "book: slot " .. id .. " has begun" end
  local held = open_booking(wf, ev.patient)
  if held then
    return "book: " .. ev.patient .. " already holds slot " .. held.slot .. " (cancel it first)"
  end
  local n, due, overdue = next_dose(wf, course)
  if not n then return "book: " .. ev.patient .. " has had every dose" end
  local due_day = due // series.DAY * series.DAY -- the due date counts, whatever the hour
  if at < due_day then
    return string.format("book: slot %s is before dose %d's due date %s", id, n, format_time(due):sub(1, 10))
  end
  if overdue and at > overdue then
    return string.format("book: slot %s is after dose %d's window closed at %s", id, n, format_time(overdue))
  end
  if slot.booked >= slot.capacity then
    return string.format("book: slot %s is full (%d of %d places taken)", id, slot.booked, slot.capacity)
  end
  return nil, id, n
end

local function site_name(site) return cm.organization.get(site).name end

local function vaccine_name(wf) return wf.input.vaccine.display or wf.input.vaccine.code end

-- Tell the patient of booking b: kind "booked", "appointment" (the reminder),
-- "cancelled" or "missed"; extra: a sentence to add.
local function tell(wf, patient, b, kind, extra)
  local slot = wf.ctx.slots[b.slot]
  local what = string.format("your appointment for dose %d of %d of %s at %s on %s", b.dose,
                             wf.ctx.doses, vaccine_name(wf), site_name(slot.site), show_time(slot.at))
  local text = kind == "booked" and "Booked: " .. what .. "."
      or kind == "appointment" and "Reminder: " .. what .. "."
      or kind == "cancelled" and "Cancelled: " .. what .. "."
      or "You missed " .. what .. "."
  wf:notify {
    channel = b.channel, to = patient, message = text .. (extra and " " .. extra or ""),
    data = { drive = wf.id, kind = kind, dose = b.dose, site = slot.site, at = slot.at,
             vaccine = wf.input.vaccine.code },
  }
end

-- The site's slot use (places taken / offered) as a KPI.
local function record_use(wf, site)
  local booked, capacity = slots.use(wf.ctx.slots, site)
  wf:kpi("vaccination_slot_use", booked / capacity, labels(wf, { site = site }))
end

-- Arm the one "appointments" timer at the earliest reminder or slot end
-- still to come, or cancel it when no booking waits.
local function arm(wf)
  local ctx, first = wf.ctx, nil
  for _, b in pairs(ctx.bookings) do
    local t = b.reminded and parse_time(ctx.slots[b.slot].ends) or parse_time(b.remind_at)
    if not first or t < first then first = t end
  end
  if first then wf:at(format_time(first), "appointments") else wf:cancel("appointments") end
end

-- Drop patient's booking: its place is freed unless its dose was recorded.
-- Returns whether the place was freed.
local function close_booking(wf, patient)
  local ctx = wf.ctx
  local b = ctx.bookings[patient]
  ctx.bookings[patient] = nil
  if attended(b) then
    ctx.kept = ctx.kept + 1
    return false
  end
  local slot = ctx.slots[b.slot]
  slot.booked = slot.booked - 1
  record_use(wf, slot.site)
  return true
end

local function book(wf, ev)
  local ctx = wf.ctx
  local _, id, n = booking_problem(wf, ev)
  if ctx.bookings[ev.patient] then close_booking(wf, ev.patient) end -- kept: its dose was recorded
  local slot = ctx.slots[id]
  slot.booked = slot.booked + 1
  ctx.booked = ctx.booked + 1
  local remind_at = parse_time(slot.at) - series.duration_ms(wf.input.remind_before or "2d")
  local b = { slot = id, dose = n, course = ctx.courses[ev.patient],
              channel = cm.patient.get(ev.patient).preferredChannel or "phone",
              remind_at = format_time(remind_at), reminded = remind_at <= now_ms(wf) }
  ctx.bookings[ev.patient] = b
  tell(wf, ev.patient, b, "booked")
  record_use(wf, slot.site)
  arm(wf)
end

local function can_book(wf, ev)
  local why = booking_problem(wf, ev)
  return why == nil, why
end

local function can_cancel(wf, ev)
  if type(ev.patient) ~= "string" then return false, "cancel_booking: patient: required, a patient id" end
  if not wf.ctx.bookings[ev.patient] then return false, "cancel_booking: " .. ev.patient .. " holds no slot" end
  if not open_booking(wf, ev.patient) then
    return false, "cancel_booking: the dose " .. ev.patient .. " was booked for is recorded"
  end
  return true
end

local function cancel_booking(wf, ev)
  local b = wf.ctx.bookings[ev.patient]
  close_booking(wf, ev.patient)
  wf.ctx.cancelled_bookings = wf.ctx.cancelled_bookings + 1
  tell(wf, ev.patient, b, "cancelled")
  arm(wf)
end

-- A booked slot ended with no dose recorded: the place is freed, counted
-- and the patient told where the dose stands.
local function missed(wf, patient, b)
  local ctx = wf.ctx
  local site = ctx.slots[b.slot].site
  close_booking(wf, patient)
  ctx.no_shows = ctx.no_shows + 1
  wf:kpi("vaccination_no_show", 1, labels(wf, { site = site, dose = b.dose }))
  local n, _, overdue = next_dose(wf, b.course)
  local late = n and overdue and now_ms(wf) >= overdue
  tell(wf, patient, b, "missed", late and "The dose is overdue; it is not too late: book another slot."
       or "Book another slot.")
end

-- The "appointments" timer: reminders due, slots ended (kept or missed).
local function appointments(wf)
  local ctx, now = wf.ctx, now_ms(wf)
  local patients = {}
  for p in pairs(ctx.bookings) do patients[#patients + 1] = p end
  table.sort(patients)
  for _, p in ipairs(patients) do
    local b = ctx.bookings[p]
    if parse_time(ctx.slots[b.slot].ends) <= now then
      if attended(b) then close_booking(wf, p) else missed(wf, p, b) end
    elseif not b.reminded and parse_time(b.remind_at) <= now then
      b.reminded = true
      tell(wf, p, b, "appointment")
    end
  end
  arm(wf)
end

return cm.workflow {
  name = "vaccination", version = 1, purpose = "immunization",
  description = "A vaccination drive: a target population, one vaccine series per patient, coverage",
  input = {
    pharmacy = "organization", primary_care = "organization?", vaccine = "table",
    schedule = "table", target = "table", sites = "table?", slots = "table?", remind_before = "string?",
  },
  start = "running",
  states = {
    running = {
      description = "courses under way",
      enter = function(wf)
        local input, ctx = wf.input, wf.ctx
        local today = wf:now():sub(1, 10)
        ctx.slots = slots.build(input.slots, function(site) return site_allowed(input, site) end, check)
        ctx.bookings, ctx.booked, ctx.kept, ctx.cancelled_bookings, ctx.no_shows = {}, 0, 0, 0, 0
        ctx.started, ctx.doses = wf:now(), #series.doses(input.schedule, check)
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
          if patient then
            ctx.courses[patient] = nil
            -- a course that ended (declined, cancelled, completed early)
            -- keeps no place it will not use
            if ctx.bookings[patient] then
              close_booking(wf, patient)
              arm(wf)
            end
          end
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
        book = { to = book, guard = can_book },
        cancel_booking = { to = cancel_booking, guard = can_cancel },
        appointments = appointments,
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
