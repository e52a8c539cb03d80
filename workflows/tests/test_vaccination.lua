-- test_vaccination.lua -- the vaccination drive (vaccination.lua) and one
-- patient's series (vaccination_course.lua): the target, consents, due /
-- overdue / completed, reminders, doses refused and recorded, reports to
-- primary care and coverage; appointment slots (booked, refused with a
-- reason, cancelled, kept, missed; the last place; bad slot input). The test clock starts on 2026-01-05T09:00:00Z.
-- Seed data and helpers shared with the other workflow tests: lib/seed.lua,
-- lib/helpers.lua.
local t = require "caremesh.test"
local cm = require "caremesh"
local h = require "lib.helpers"
local world = require "lib.seed"
t.load("../vaccination_course.lua")
t.load("../vaccination.lua")

local ctx, sent_to, kpis, near = h.ctx, h.sent_to, h.kpis, h.near

local COVID = { code = "208", system = "http://hl7.org/fhir/sid/cvx",
                display = "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose" }
local TWO_DOSES = { doses = 2, min_interval = "21d", max_interval = "42d" }

-- Main Street Pharmacy runs the drive with the county health department as a
-- second site, reporting to Riverside Family Clinic. Ages on 2026-01-05:
-- Rivera 67, Okafor 76, Nguyen 70, Schmidt 81, Walker 65 (today), Garcia 64
-- (65 tomorrow), Johnson 47, Brooks 88 (inactive).
local function seed()
  world.create {
    organizations = { "main-st-pharmacy", "riverside-clinic", "county-health", "heart-partners" },
    providers = { "rph-tanaka", "rn-kowalski" },
    patients = { "pat-rivera", "pat-okafor", "pat-nguyen", "pat-schmidt", "pat-walker", "pat-garcia",
                 "pat-johnson", "pat-brooks" },
    partnerships = { "flu-drive" },
  }
  -- Nguyen refuses immunization by anyone; Schmidt only refused Heart
  -- Partners; Rivera refused outreach, not immunization.
  cm.consent.create { id = "consent-nguyen-imm", patient = "pat-nguyen", purpose = "immunization",
                      decision = "deny", period = { start = "2025-09-01" } }
  cm.consent.create { id = "consent-schmidt-imm", patient = "pat-schmidt", purpose = "immunization",
                      organization = "heart-partners", decision = "deny" }
  cm.consent.create { id = "consent-rivera-out", patient = "pat-rivera", purpose = "outreach",
                      decision = "deny", period = { start = "2025-01-01" } }
end

local function drive(id, extra)
  -- defaults: a two-dose COVID-19 series for everyone 65 and over
  local input = h.with({ pharmacy = "main-st-pharmacy", primary_care = "riverside-clinic", vaccine = COVID,
                         schedule = TWO_DOSES, target = { min_age = 65 }, sites = { "county-health" } },
                       extra) -- false: leave the field out
  local got, state = t.start("vaccination", input, id)
  t.ok(got, "drive started: " .. tostring(state))
  return got
end

local function course(id, patient)
  return t.ok(ctx(id).courses[patient], "a course for " .. patient)
end

local function enrolled(id) return h.sorted_keys(ctx(id).courses) end

local function doses_of(patient)
  return cm.immunization.find { patient = patient }
end

t.test("the target: 65 and over, minus immunization refusals; a condition target", function()
  seed()
  local id = drive("drive-65")
  t.eq(enrolled(id), { "pat-okafor", "pat-rivera", "pat-schmidt", "pat-walker" })
  local c = ctx(id)
  t.eq({ c.target, c.enrolled, c.opted_out }, { 5, 4, 1 }, "target, enrolled, opted out (Nguyen)")
  t.eq(#sent_to("pat-nguyen"), 0, "Nguyen not invited")
  local young = drive("drive-e11", { target = { condition = "E11", max_age = 64 } })
  t.eq(enrolled(young), { "pat-garcia" })
end)

t.test("the drive's reads of patients are audited for the purpose immunization", function()
  seed()
  local id = drive("drive-65")
  local reads, others = 0, {}
  for _, e in ipairs(t.audit()) do
    if e.actor == "instance:" .. id and e.action == "patient.read" then
      reads = reads + 1
      if e.purpose ~= "immunization" then others[#others + 1] = e.purpose end
    end
  end
  t.ok(reads > 0, "the drive read its cohort")
  t.eq(others, {}, "entries with another purpose")
end)

t.test("dose 1 is due at once: an invitation through each patient's channel", function()
  seed()
  local id = drive("drive-65")
  local want = { ["pat-okafor"] = "email", ["pat-rivera"] = "sms", ["pat-schmidt"] = "mail",
                 ["pat-walker"] = "phone" }
  for patient, channel in pairs(want) do
    t.expect_state(course(id, patient), "due", "running")
    local ns = sent_to(patient, "due")
    t.eq(#ns, 1, patient .. " invited")
    t.eq(ns[1].channel, channel, patient .. " channel")
    t.ok(ns[1].message:find("dose 1 of 2", 1, true), ns[1].message)
    t.ok(ns[1].message:find("Millbrook County Health Department", 1, true), "names the sites")
    t.ok(ns[1].data:find('"drive":"drive-65"', 1, true), "data names the drive")
  end
  t.eq(#t.notifications(), 4)
end)

t.test("a two-dose series: reminder before the due date, both doses recorded and reported", function()
  seed()
  local id = drive("drive-65", { target = { condition = "E11", min_age = 65, max_age = 65 } })
  local kid = course(id, "pat-walker")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy", practitioner = "rph-tanaka",
                                      lot = "FK1234" }), "waiting")
  local imms = doses_of("pat-walker")
  t.eq(#imms, 1)
  local d1 = imms[1]
  t.eq({ d1.status, d1.patient, d1.performer, d1.practitioner, d1.lotNumber, d1.doseNumber, d1.seriesDoses,
         d1.occurrenceDateTime },
       { "completed", "pat-walker", "main-st-pharmacy", "rph-tanaka", "FK1234", 1, 2,
         "2026-01-05T09:00:00.000Z" })
  t.eq(d1.vaccineCode, COVID)
  local sent = t.sent()
  t.eq(#sent, 1)
  t.eq({ sent[1].to, sent[1].kind }, { "riverside-clinic", "immunization.given" })
  for _, frag in ipairs({ '"patient":"pat-walker"', '"vaccine":"208"', '"dose":1', '"site":"main-st-pharmacy"',
                          '"date":"2026-01-05T09:00:00.000Z"', '"immunization":"' .. d1.id .. '"' }) do
    t.ok(sent[1].payload:find(frag, 1, true), "report has " .. frag)
  end
  t.eq(t.instance(kid).context.due_at, "2026-01-26T09:00:00.000Z")
  t.advance("18d23h")
  t.eq(#sent_to("pat-walker", "reminder"), 0, "no reminder yet")
  t.advance("1h")
  local rem = sent_to("pat-walker", "reminder")
  t.eq(#rem, 1, "reminder 2d before the due date")
  t.eq(rem[1].channel, "phone")
  t.ok(rem[1].message:find("dose 2 of 2", 1, true) and rem[1].message:find("2026-01-26", 1, true), rem[1].message)
  t.expect_state(kid, "waiting")
  t.advance("2d")
  t.expect_state(kid, "due")
  t.eq(#sent_to("pat-walker"), 2, "reminded already: nothing more at the due date")
  t.advance("3d")
  t.eq(t.signal(kid, "dose_given", { site = "county-health", practitioner = "rn-kowalski", lot = "FK2001" }),
       "completed")
  imms = doses_of("pat-walker")
  t.eq(#imms, 2)
  local d2 = imms[1].doseNumber == 2 and imms[1] or imms[2]
  t.eq({ d2.doseNumber, d2.performer, d2.practitioner, d2.occurrenceDateTime },
       { 2, "county-health", "rn-kowalski", "2026-01-29T09:00:00.000Z" })
  t.eq(#t.sent(), 2)
  t.ok(t.sent()[2].payload:find('"dose":2', 1, true), "dose 2 reported")
  t.eq(#kpis("vaccination_dose_given"), 2)
  t.ok(kpis("vaccination_dose_given")[2].labels:find('"site":"county-health"', 1, true), "site label")
  t.expect_state(id, "finished", "done")
  local cov = kpis("vaccination_coverage")
  t.eq(#cov, 1)
  t.eq(cov[1].value, 1, "1 of 1")
end)

t.test("a dose before its due date is refused and nothing is recorded", function()
  seed()
  local id = drive("drive-65")
  local kid = course(id, "pat-okafor")
  t.signal(kid, "dose_given", { site = "main-st-pharmacy" })
  t.advance("20d") -- 2026-01-25T09:00; dose 2 due 2026-01-26T09:00
  local st, msg = t.signal(kid, "dose_given", { site = "main-st-pharmacy" })
  t.eq(st, nil, "too early")
  t.ok(msg:find("dose_given", 1, true), msg)
  t.expect_state(kid, "waiting", "running")
  t.eq(#doses_of("pat-okafor"), 1, "no immunization recorded")
  t.eq(#t.sent(), 1, "no report sent")
  t.eq(#kpis("vaccination_dose_given"), 1, "no KPI")
  t.advance("23h") -- 2026-01-26T08:00: the due date, an hour before the due time
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy", at = "2026-01-25T23:59:00Z" }), nil,
       "backdated to the day before")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy", at = "2026-01-26T10:00:00Z" }), nil,
       "in the future")
  t.eq(t.signal(kid, "dose_given", { site = "heart-partners" }), nil, "not a participating site")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy", practitioner = "dr-nobody" }), nil,
       "unknown practitioner")
  t.eq(t.signal(kid, "dose_given", {}), nil, "no site")
  t.eq(#doses_of("pat-okafor"), 1, "still nothing recorded")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy", at = "2026-01-26" }), "completed",
       "the due date counts, whatever the hour")
  local imms = doses_of("pat-okafor")
  t.eq(#imms, 2)
  t.ok(imms[1].occurrenceDateTime == "2026-01-26" or imms[2].occurrenceDateTime == "2026-01-26", "date kept")
end)

t.test("overdue after the maximum interval, then the late dose completes the series", function()
  seed()
  local id = drive("drive-65")
  local kid = course(id, "pat-schmidt")
  t.signal(kid, "dose_given", { site = "county-health", at = "2026-01-05" })
  t.eq(t.instance(kid).context.overdue_at, "2026-02-16T00:00:00.000Z", "42 days after dose 1")
  t.advance("41d14h") -- 2026-02-15T23:00
  t.expect_state(kid, "due")
  t.eq(#sent_to("pat-schmidt", "overdue"), 0)
  t.advance("1h")
  t.expect_state(kid, "overdue")
  local late = sent_to("pat-schmidt", "overdue")
  t.eq(#late, 1, "overdue notice")
  t.eq(late[1].channel, "mail")
  t.ok(late[1].message:find("was due on 2026-01-26", 1, true), late[1].message)
  t.advance("8d")
  t.eq(#sent_to("pat-schmidt"), 3, "invitation, reminder, overdue: nothing more")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy", lot = "FK3100" }), "completed")
  t.eq(#doses_of("pat-schmidt"), 2)
  t.eq(ctx(id).completed, 1)
end)

t.test("a first dose recorded late, given elsewhere 8 weeks ago, leaves dose 2 overdue at once", function()
  seed()
  local id = drive("drive-65")
  local kid = course(id, "pat-rivera")
  t.eq(t.signal(kid, "dose_given", { site = "county-health", at = "2025-11-10T15:30:00-08:00" }), "overdue")
  local c = t.instance(kid).context
  t.eq({ c.last, c.due_at, c.overdue_at },
       { "2025-11-10T23:30:00.000Z", "2025-12-01T23:30:00.000Z", "2025-12-22T23:30:00.000Z" })
  t.eq(#sent_to("pat-rivera", "overdue"), 1)
  t.eq(#sent_to("pat-rivera"), 2, "the invitation, then only the overdue notice")
  t.eq(doses_of("pat-rivera")[1].occurrenceDateTime, "2025-11-10T15:30:00-08:00")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy" }), "completed")
end)

t.test("coverage is completed / target whenever a course ends; declines end courses", function()
  seed()
  -- E11 and 65+: Nguyen (refused), Rivera, Schmidt, Walker; no primary care
  local id = drive("drive-e11", { target = { condition = "E11", min_age = 65 }, primary_care = false })
  t.eq(ctx(id).target, 4)
  t.eq(enrolled(id), { "pat-rivera", "pat-schmidt", "pat-walker" })
  local rivera = course(id, "pat-rivera")
  t.signal(rivera, "dose_given", { site = "main-st-pharmacy" })
  t.advance("22d")
  t.eq(t.signal(rivera, "dose_given", { site = "main-st-pharmacy" }), "completed")
  near(kpis("vaccination_coverage")[1].value, 0.25, "1 of 4")
  local schmidt = course(id, "pat-schmidt")
  t.eq(t.signal(schmidt, "declined", { reason = "prefers to wait" }), "declined")
  t.eq(t.instance(schmidt).context.reason, "prefers to wait")
  t.eq(#kpis("vaccination_coverage"), 2)
  near(kpis("vaccination_coverage")[2].value, 0.25, "still 1 of 4")
  t.expect_state(id, "running")
  local walker = course(id, "pat-walker")
  t.signal(walker, "dose_given", { site = "county-health" })
  t.advance("21d")
  t.signal(walker, "dose_given", { site = "county-health" })
  t.expect_state(id, "finished", "done")
  local cov = kpis("vaccination_coverage")
  t.eq(#cov, 3)
  near(cov[3].value, 0.5, "2 of 4")
  t.ok(cov[3].labels:find('"drive":"drive-e11"', 1, true), "labelled with the drive")
  local c = ctx(id)
  t.eq({ c.completed, c.declined, c.ended, c.opted_out }, { 2, 1, 3, 1 })
  t.eq(#t.sent(), 0, "no primary care: no reports")
  t.eq(#kpis("vaccination_dose_given"), 4)
end)

t.test("a declined course sends nothing more", function()
  seed()
  local id = drive("drive-65")
  local kid = course(id, "pat-okafor")
  t.signal(kid, "dose_given", { site = "main-st-pharmacy" })
  t.eq(t.signal(kid, "declined"), "declined")
  t.expect_state(kid, "declined", "done")
  local before = #sent_to("pat-okafor")
  t.advance("60d")
  t.eq(#sent_to("pat-okafor"), before, "no reminder or overdue notice")
  t.eq(#doses_of("pat-okafor"), 1)
  t.eq(ctx(id).declined, 1)
end)

t.test("close ends the drive with the coverage so far; a started series can still finish", function()
  seed()
  local id = drive("drive-65")
  local kid = course(id, "pat-walker")
  t.signal(kid, "dose_given", { site = "main-st-pharmacy" })
  t.signal(course(id, "pat-rivera"), "declined")
  t.eq(t.signal(id, "close"), "finished")
  local cov = kpis("vaccination_coverage")
  t.eq(#cov, 2, "one when Rivera declined, one on close")
  t.eq(cov[2].value, 0)
  t.advance("21d")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy" }), "completed")
  t.eq(#doses_of("pat-walker"), 2)
end)

t.test("a per-dose schedule: dose 1 overdue after its window, then three doses", function()
  seed()
  local schedule = { { max_interval = "14d" }, { min_interval = "4w", max_interval = "8w" },
                     { min_interval = "16w" } }
  local id = drive("drive-3", { schedule = schedule, target = { condition = "E11", max_age = 64 } })
  local kid = course(id, "pat-garcia")
  t.eq(t.instance(kid).context.doses, 3)
  t.advance("14d")
  t.expect_state(kid, "overdue")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy" }), "waiting")
  t.eq(t.instance(kid).context.due_at, "2026-02-16T09:00:00.000Z", "dose 2: 4 weeks after 2026-01-19")
  t.advance("28d")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy" }), "waiting")
  t.advance("16w")
  t.expect_state(kid, "due")
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy" }), "completed")
  local numbers = {}
  for _, imm in ipairs(doses_of("pat-garcia")) do numbers[#numbers + 1] = imm.doseNumber .. "/" .. imm.seriesDoses end
  table.sort(numbers)
  t.eq(numbers, { "1/3", "2/3", "3/3" })
end)

t.test("a single-dose vaccine completes with its one dose", function()
  seed()
  local id = drive("drive-1", { schedule = { doses = 1 }, target = { condition = "E11", max_age = 64 } })
  local kid = course(id, "pat-garcia")
  t.eq(t.signal(kid, "dose_given", { site = "county-health", lot = "PF77" }), "completed")
  local imms = doses_of("pat-garcia")
  t.eq({ #imms, imms[1].doseNumber, imms[1].seriesDoses, imms[1].performer }, { 1, 1, 1, "county-health" })
  t.expect_state(id, "finished", "done")
  t.eq(kpis("vaccination_coverage")[1].value, 1)
end)

t.test("an empty target finishes at once", function()
  seed()
  local id = drive("drive-none", { target = { condition = "Z99" } })
  t.expect_state(id, "finished", "done")
  t.eq(#kpis("vaccination_coverage"), 0)
end)

t.test("bad drive input is refused and starts nothing", function()
  seed()
  local function refused(extra, fragment)
    local input = h.with({ pharmacy = "main-st-pharmacy", vaccine = COVID, schedule = TWO_DOSES,
                           target = { min_age = 65 }, sites = { "county-health" } }, extra)
    local id, msg = t.start("vaccination", input)
    t.eq(id, nil, fragment)
    t.ok(msg:find(fragment, 1, true), "message " .. tostring(msg) .. " lacks " .. fragment)
  end
  refused({ schedule = { doses = 2, min_interval = "3 weeks" } }, "min_interval")
  refused({ schedule = { doses = 2, min_interval = "42d", max_interval = "21d" } }, "max_interval")
  refused({ schedule = { doses = 0 } }, "schedule.doses")
  refused({ schedule = { { min_interval = "7d" }, {} } }, "dose 1 is due at once")
  refused({ schedule = { doses = 2, interval = "21d" } }, "schedule.interval")
  refused({ vaccine = { display = "flu" } }, "vaccine.code")
  refused({ sites = { "no-such-site" } }, "no-such-site")
  refused({ remind_before = "soon" }, "remind_before")
  refused({ target = {} }, "at least one criterion")
  refused({ target = { age = 65 } }, "target.age")
  refused({ primary_care = "no-such-clinic" }, "primary_care")
  t.eq(#t.notifications(), 0)
  t.eq(cm.immunization.count(), 0)
end)

-- Slots: Main Street Pharmacy opens 09:00-10:00 on 2026-01-29 in 20-minute
-- slots of two; County Health has one place at 10:00 on 2026-01-06, three
-- at 14:00 New York time (19:00 UTC) on 2026-01-07 for 30 minutes, and
-- two on 2026-02-20, after a dose 2 window opened on 2026-01-05 closes.
local SLOTS = {
  ["main-st-pharmacy"] = { { day = "2026-01-29", from = "09:00", to = "10:00", length = "20m", capacity = 2 } },
  ["county-health"] = { { at = "2026-01-06T10:00:00Z", capacity = 1 },
                        { at = "2026-01-07T14:00:00-05:00", capacity = 3, length = "30m" },
                        { at = "2026-02-20T10:00:00Z", capacity = 2 } },
}
local JAN6, JAN7 = "2026-01-06T10:00:00Z", "2026-01-07T19:00:00Z"

local function slot_drive(extra)
  return drive("drive-slots", h.with({ slots = SLOTS }, extra))
end

-- The last vaccination_slot_use value recorded for site.
local function use_of(site)
  local rows = kpis("vaccination_slot_use", '"site":"' .. site .. '"')
  return rows[#rows] and rows[#rows].value
end

t.test("slots: the input spelled out one slot at a time, in UTC, with places", function()
  seed()
  local id = slot_drive()
  local s = ctx(id).slots
  t.eq(h.sorted_keys(s), {
    "county-health@2026-01-06T10:00:00.000Z", "county-health@2026-01-07T19:00:00.000Z",
    "county-health@2026-02-20T10:00:00.000Z", "main-st-pharmacy@2026-01-29T09:00:00.000Z",
    "main-st-pharmacy@2026-01-29T09:20:00.000Z", "main-st-pharmacy@2026-01-29T09:40:00.000Z" })
  local ny = s["county-health@2026-01-07T19:00:00.000Z"]
  t.eq({ ny.site, ny.at, ny.ends, ny.capacity, ny.booked },
       { "county-health", "2026-01-07T19:00:00.000Z", "2026-01-07T19:30:00.000Z", 3, 0 })
  t.eq(s["county-health@2026-01-06T10:00:00.000Z"].ends, "2026-01-06T10:15:00.000Z", "15 minutes by default")
end)

t.test("slots: booked, reminded with the site and time, kept by the dose, then dose 2 booked", function()
  seed()
  local id = slot_drive { target = { condition = "E11", min_age = 65, max_age = 65 } } -- Walker
  local kid = course(id, "pat-walker")
  t.eq(t.signal(id, "book", { patient = "pat-walker", site = "county-health", at = "2026-01-07T14:00:00-05:00" }),
       "running")
  local b = ctx(id).bookings["pat-walker"]
  t.eq({ b.slot, b.dose, b.course }, { "county-health@2026-01-07T19:00:00.000Z", 1, kid })
  local booked = sent_to("pat-walker", "booked")
  t.eq(#booked, 1, "a confirmation")
  t.ok(booked[1].message:find("Millbrook County Health Department on 2026-01-07 19:00 UTC", 1, true),
       booked[1].message)
  t.eq(booked[1].channel, "phone")
  t.eq(ctx(id).slots[b.slot].booked, 1)
  near(use_of("county-health"), 1 / 6, "1 of 6 places at County Health")
  t.ok(kpis("vaccination_slot_use")[1].labels:find('"drive":"drive-slots"', 1, true), "labelled with the drive")
  t.advance("9h59m")
  t.eq(#sent_to("pat-walker", "appointment"), 0, "no reminder yet")
  t.advance("1m") -- 2026-01-05T19:00: two days before
  local rem = sent_to("pat-walker", "appointment")
  t.eq(#rem, 1, "the appointment reminder")
  t.ok(rem[1].message:find("dose 1 of 2", 1, true)
       and rem[1].message:find("Millbrook County Health Department on 2026-01-07 19:00 UTC", 1, true),
       rem[1].message)
  t.advance("2d5m") -- 19:05 on the day
  t.eq(t.signal(kid, "dose_given", { site = "county-health" }), "waiting")
  t.advance("1h")
  t.eq(ctx(id).bookings["pat-walker"], nil, "the booking closed")
  t.eq({ ctx(id).kept, ctx(id).no_shows }, { 1, 0 })
  t.eq(ctx(id).slots[b.slot].booked, 1, "a kept place stays taken")
  t.eq(#sent_to("pat-walker", "missed"), 0)
  -- dose 2 is due 2026-01-28T19:05
  t.eq(t.signal(id, "book", { patient = "pat-walker", site = "main-st-pharmacy", at = "2026-01-29T09:20:00Z" }),
       "running")
  t.eq(ctx(id).bookings["pat-walker"].dose, 2)
  near(use_of("main-st-pharmacy"), 1 / 6)
  t.advance("21d13h20m") -- 2026-01-29T09:20, the appointment
  t.eq(t.signal(kid, "dose_given", { site = "main-st-pharmacy" }), "completed")
  t.eq(#kpis("vaccination_no_show"), 0)
  t.expect_state(id, "finished", "done")
  t.eq(ctx(id).kept, 2, "the course's end closed the kept booking")
end)

t.test("slots: a booking is refused with its reason, and nothing changes", function()
  seed()
  local id = slot_drive()
  local function refused(payload, fragment) h.refused(id, "book", payload, fragment) end
  refused({ patient = "pat-walker", site = "county-health", at = "2026-01-06T11:00:00Z" },
          "no slot at county-health starting 2026-01-06T11:00:00.000Z")
  refused({ patient = "pat-walker", site = "heart-partners", at = JAN6 }, "site heart-partners is not in this drive")
  refused({ patient = "pat-walker", site = "county-health", at = "tomorrow" }, "at: expected")
  refused({ patient = "pat-nguyen", site = "county-health", at = JAN6 }, "pat-nguyen has no course")
  refused({ site = "county-health", at = JAN6 }, "patient: required")
  -- Rivera's dose 1 today: dose 2 is due 2026-01-26, overdue 2026-02-16T09:00
  t.signal(course(id, "pat-rivera"), "dose_given", { site = "main-st-pharmacy" })
  refused({ patient = "pat-rivera", site = "county-health", at = JAN7 },
          "is before dose 2's due date 2026-01-26")
  refused({ patient = "pat-rivera", site = "county-health", at = "2026-02-20T10:00:00Z" },
          "is after dose 2's window closed at 2026-02-16T09:00:00.000Z")
  t.eq(t.signal(id, "book", { patient = "pat-rivera", site = "main-st-pharmacy", at = "2026-01-29T09:00:00Z" }),
       "running", "inside the window")
  -- a second booking replaces nothing
  t.eq(t.signal(id, "book", { patient = "pat-okafor", site = "county-health", at = JAN6 }), "running")
  refused({ patient = "pat-okafor", site = "county-health", at = JAN7 },
          "pat-okafor already holds slot county-health@2026-01-06T10:00:00.000Z (cancel it first)")
  t.eq(ctx(id).bookings["pat-okafor"].slot, "county-health@2026-01-06T10:00:00.000Z", "still the first")
  t.advance("1d2h") -- 2026-01-06T11:00
  refused({ patient = "pat-walker", site = "county-health", at = JAN6 }, "has begun")
  t.eq(#sent_to("pat-walker"), 1, "only the invitation: no confirmation")
  t.eq(#sent_to("pat-okafor", "booked"), 1)
end)

t.test("slots: the last place, asked for by two patients: one gets it, the other is refused", function()
  seed()
  local id = slot_drive()
  local slot = "county-health@2026-01-06T10:00:00.000Z"
  t.eq(t.signal(id, "book", { patient = "pat-okafor", site = "county-health", at = JAN6 }), "running")
  h.refused(id, "book", { patient = "pat-walker", site = "county-health", at = JAN6 },
            "slot " .. slot .. " is full (1 of 1 places taken)")
  t.eq(ctx(id).slots[slot].booked, 1, "capacity not exceeded")
  t.eq(ctx(id).bookings["pat-walker"], nil)
  t.eq(#sent_to("pat-walker", "booked"), 0)
  -- two places left on the evening of 2026-01-07: three asking, the third refused
  t.signal(id, "book", { patient = "pat-walker", site = "county-health", at = JAN7 })
  t.signal(id, "book", { patient = "pat-rivera", site = "county-health", at = JAN7 })
  t.signal(id, "book", { patient = "pat-schmidt", site = "county-health", at = JAN7 })
  h.refused(id, "book", { patient = "pat-garcia", site = "county-health", at = JAN7 }, "pat-garcia has no course")
  t.eq(ctx(id).slots["county-health@2026-01-07T19:00:00.000Z"].booked, 3)
  near(use_of("county-health"), 4 / 6)
end)

t.test("slots: cancelling frees the place for someone else; nothing left to cancel is refused", function()
  seed()
  local id = slot_drive()
  local slot = "county-health@2026-01-06T10:00:00.000Z"
  t.signal(id, "book", { patient = "pat-okafor", site = "county-health", at = JAN6 })
  near(use_of("county-health"), 1 / 6)
  t.eq(t.signal(id, "cancel_booking", { patient = "pat-okafor" }), "running")
  t.eq({ ctx(id).slots[slot].booked, ctx(id).cancelled_bookings }, { 0, 1 })
  t.eq(ctx(id).bookings["pat-okafor"], nil)
  t.eq(use_of("county-health"), 0)
  local n = sent_to("pat-okafor", "cancelled")
  t.eq(#n, 1)
  t.ok(n[1].message:find("2026-01-06 10:00 UTC", 1, true), n[1].message)
  h.refused(id, "cancel_booking", { patient = "pat-okafor" }, "pat-okafor holds no slot")
  t.eq(t.signal(id, "book", { patient = "pat-walker", site = "county-health", at = JAN6 }), "running",
       "the freed place")
  -- a booking whose dose was recorded is kept, not cancelled
  t.signal(course(id, "pat-walker"), "dose_given", { site = "main-st-pharmacy" })
  h.refused(id, "cancel_booking", { patient = "pat-walker" }, "was booked for is recorded")
  t.eq(#t.instance(id).timers, 1, "the appointments timer")
end)

t.test("slots: a missed appointment frees the place, counts a no-show and tells the patient", function()
  seed()
  local id = slot_drive()
  local kid = course(id, "pat-okafor")
  local slot = "county-health@2026-01-06T10:00:00.000Z"
  t.signal(id, "book", { patient = "pat-okafor", site = "county-health", at = JAN6 })
  t.advance("1d1h14m") -- 10:14, the slot's last minute
  t.eq(ctx(id).slots[slot].booked, 1)
  t.advance("1m")
  local c = ctx(id)
  t.eq({ c.slots[slot].booked, c.no_shows, c.bookings["pat-okafor"] }, { 0, 1, nil })
  local ns = kpis("vaccination_no_show")
  t.eq(#ns, 1)
  t.ok(ns[1].labels:find('"site":"county-health"', 1, true) and ns[1].labels:find('"dose":1', 1, true), ns[1].labels)
  t.eq(use_of("county-health"), 0, "the place freed")
  local m = sent_to("pat-okafor", "missed")
  t.eq(#m, 1, "the patient told")
  t.eq(m[1].channel, "email")
  t.ok(m[1].message:find("You missed your appointment for dose 1 of 2", 1, true)
       and m[1].message:find("2026-01-06 10:00 UTC", 1, true)
       and m[1].message:find("Book another slot", 1, true), m[1].message)
  t.expect_state(kid, "due", "running")
  t.eq(t.signal(id, "book", { patient = "pat-okafor", site = "county-health", at = JAN7 }), "running",
       "a missed booking is no longer held")
end)

t.test("slots: a missed appointment at the end of the window says the dose is overdue", function()
  seed()
  local id = slot_drive { slots = { ["county-health"] = { { at = "2026-02-16T08:50:00Z", length = "20m", capacity = 1 } } } }
  local kid = course(id, "pat-schmidt")
  t.signal(kid, "dose_given", { site = "main-st-pharmacy" }) -- dose 2 overdue 2026-02-16T09:00
  t.eq(t.signal(id, "book", { patient = "pat-schmidt", site = "county-health", at = "2026-02-16T08:50:00Z" }),
       "running")
  t.advance("42d10m")
  t.expect_state(kid, "overdue")
  local m = sent_to("pat-schmidt", "missed")
  t.eq(#m, 1)
  t.ok(m[1].message:find("overdue", 1, true), m[1].message)
end)

t.test("slots: a course that ends frees the place it will not use", function()
  seed()
  local id = slot_drive()
  t.signal(id, "book", { patient = "pat-okafor", site = "county-health", at = JAN6 })
  t.eq(t.signal(course(id, "pat-okafor"), "declined"), "declined")
  t.eq(ctx(id).slots["county-health@2026-01-06T10:00:00.000Z"].booked, 0)
  t.eq(ctx(id).bookings["pat-okafor"], nil)
  t.eq(#t.instance(id).timers, 0, "no appointment left to watch")
end)

t.test("bad slot input is refused at start, naming the field", function()
  seed()
  local function refused(spec, fragment)
    local input = { pharmacy = "main-st-pharmacy", vaccine = COVID, schedule = TWO_DOSES,
                    target = { min_age = 65 }, sites = { "county-health" }, slots = spec }
    local id, msg = t.start("vaccination", input)
    t.eq(id, nil, fragment)
    t.ok(msg:find(fragment, 1, true), "message " .. tostring(msg) .. " lacks " .. fragment)
  end
  local function at(slot) return { ["county-health"] = { slot } } end
  refused({ ["heart-partners"] = { { at = JAN6, capacity = 1 } } }, "slots.heart-partners: not a site of this drive")
  refused({ ["county-health"] = {} }, "slots.county-health: expected a list of slots")
  refused(at { at = JAN6 }, "slots.county-health[1].capacity: expected a whole number")
  refused(at { at = JAN6, capacity = 0 }, "capacity")
  refused(at { at = JAN6, capacity = 1.5 }, "capacity")
  refused(at { at = "2026-01-06", capacity = 1 }, "slots.county-health[1].at: expected an ISO-8601 date-time")
  refused(at { at = "2026-01-06T25:00:00Z", capacity = 1 }, ".at:")
  refused(at { at = JAN6, capacity = 1, seats = 3 }, "slots.county-health[1].seats: unknown field")
  refused(at { at = JAN6, day = "2026-01-06", capacity = 1 }, "give at, or day with from and to")
  refused(at { day = "06/01/2026", from = "09:00", to = "10:00", capacity = 1 }, ".day: expected a date")
  refused(at { day = "2026-01-06", from = "9am", to = "10:00", capacity = 1 }, ".from: expected a time of day")
  refused(at { day = "2026-01-06", from = "09:00", capacity = 1 }, ".to: expected a time of day")
  refused(at { day = "2026-01-06", from = "10:00", to = "09:00", capacity = 1 }, ".to: must leave at least one slot")
  refused(at { day = "2026-01-06", from = "09:00", to = "10:00", length = "a while", capacity = 1 }, ".length: bad duration")
  refused(at { day = "2026-01-06", from = "09:00", to = "10:00", zone = "EST", capacity = 1 }, ".zone: expected Z")
  refused(at { day = "2026-01-06", from = "00:00", to = "23:59", length = "1m", capacity = 1 }, "more than 500 slots")
  refused({ ["county-health"] = { { at = JAN6, capacity = 1 }, { at = "2026-01-06T05:00:00-05:00", capacity = 2 } } },
          "slot county-health@2026-01-06T10:00:00.000Z given twice")
  t.eq(#t.notifications(), 0, "nobody invited")
end)
