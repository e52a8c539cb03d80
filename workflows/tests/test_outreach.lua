-- test_outreach.lua -- the outreach campaign (outreach.lua) and its
-- per-patient child (outreach_contact.lua): cohort selection, consents,
-- the per-hour cap, channels, retries, answers, opt-outs and the KPIs.
-- The test clock starts on 2026-01-05T09:00:00Z. Seed data and helpers
-- shared with the other workflow tests: lib/seed.lua, lib/helpers.lua.
local t = require "caremesh.test"
local cm = require "caremesh"
local h = require "lib.helpers"
local world = require "lib.seed"
t.load("../outreach_contact.lua")
t.load("../outreach.lua")

local person, ctx, sent_to, kpis, near = world.person, h.ctx, h.sent_to, h.kpis, h.near

-- A primary-care clinic running the campaigns, a cardiology practice, and
-- patients whose ages on 2026-01-05 are: Rivera 67, Okafor 76, Lee 35,
-- Nguyen 70, Schmidt 81, Johnson 47, Walker 65 (today), Garcia 64 (65
-- tomorrow), Brooks 88 (inactive).
local function seed()
  world.create {
    organizations = { "riverside-clinic", "heart-partners" },
    providers = { "dr-ngata", "cc-haddad" },
    patients = { "pat-rivera", "pat-okafor", "pat-lee", "pat-nguyen", "pat-schmidt", "pat-johnson",
                 "pat-walker", "pat-garcia", "pat-brooks" },
  }
  -- Nguyen asked not to be contacted by anyone; Schmidt only refused Heart
  -- Partners; Garcia's refusal ran out at the end of 2025; Rivera permits.
  cm.consent.create { id = "consent-nguyen", patient = "pat-nguyen", purpose = "outreach",
                      decision = "deny", period = { start = "2025-06-01" } }
  cm.consent.create { id = "consent-schmidt", patient = "pat-schmidt", purpose = "outreach",
                      organization = "heart-partners", decision = "deny", period = { start = "2025-01-01" } }
  cm.consent.create { id = "consent-garcia", patient = "pat-garcia", purpose = "outreach",
                      decision = "deny", period = { start = "2025-01-01", ["end"] = "2025-12-31" } }
  cm.consent.create { id = "consent-rivera", patient = "pat-rivera", purpose = "outreach",
                      organization = "riverside-clinic", decision = "permit",
                      period = { start = "2025-01-01" } }
end

local function campaign(id, extra)
  local input = h.with({ organization = "riverside-clinic",
                         message = "Riverside Family Clinic: you are due for a check-up. Reply or call to book." },
                       extra)
  local got, state = t.start("outreach", input, id)
  t.ok(got, "campaign started: " .. tostring(state))
  return got, state
end

-- The patient ids with a running child, sorted.
local function active(id) return h.sorted_keys(ctx(id).active) end

local function child(id, patient)
  return t.ok(ctx(id).active[patient], "a child for " .. patient)
end

local function kpi_value(name)
  local ks = kpis(name)
  t.eq(#ks, 1, name .. " observations")
  return ks[1].value
end

t.test("a condition cohort: E11 patients, minus the excluded, the inactive and the opted out", function()
  seed()
  -- Rivera had an A1c last month (known to the caller; lab results are not records)
  local id, state = campaign("camp-a1c", { cohort = { condition = "E11" }, exclude = { "pat-rivera" } })
  t.eq(state, "running")
  t.eq(active(id), { "pat-garcia", "pat-schmidt", "pat-walker" }, "contacted")
  local c = ctx(id)
  t.eq(c.cohort, 4, "cohort size (Garcia, Nguyen, Schmidt, Walker)")
  t.eq(c.spawned, 3, "children")
  t.eq(c.opted_out, 1, "Nguyen counted as opted out")
  t.eq(#sent_to("pat-nguyen"), 0, "Nguyen not contacted")
  t.eq(#sent_to("pat-rivera"), 0, "Rivera excluded")
  t.eq(#sent_to("pat-brooks"), 0, "inactive Brooks not contacted")
  local skipped = kpis("outreach_opted_out", '"source":"consent"')
  t.eq(#skipped, 1, "opted-out KPI for the consent skip")
  t.ok(skipped[1].labels:find('"campaign":"camp-a1c"', 1, true), "labelled with the campaign")
end)

t.test("consents that do not apply: another organization's, an expired one, a permit", function()
  seed()
  local id = campaign("camp-e11", { cohort = { condition = "E11" } })
  t.eq(active(id), { "pat-garcia", "pat-rivera", "pat-schmidt", "pat-walker" })
  t.eq(ctx(id).opted_out, 1, "only Nguyen")
end)

t.test("an age cohort: 65 and over on the start date", function()
  seed()
  local id = campaign("camp-flu", { min_age = 65 })
  -- Walker turns 65 today (in), Garcia tomorrow (out); Nguyen opted out; Brooks inactive
  t.eq(active(id), { "pat-okafor", "pat-rivera", "pat-schmidt", "pat-walker" })
  t.eq(ctx(id).cohort, 5)
  t.eq(ctx(id).opted_out, 1)
  local young = campaign("camp-young", { cohort = { max_age = 64, condition = "E11" } })
  t.eq(active(young), { "pat-garcia" }, "E11 and at most 64")
  local mid = campaign("camp-mid", { min_age = 18, max_age = 64 })
  t.eq(active(mid), { "pat-garcia", "pat-johnson", "pat-lee" })
end)

t.test("each patient is contacted through their preferred channel, phone when none", function()
  seed()
  local id = campaign("camp-flu", { min_age = 65 })
  local want = { ["pat-okafor"] = "email", ["pat-rivera"] = "sms", ["pat-schmidt"] = "mail",
                 ["pat-walker"] = "phone" }
  t.eq(#t.notifications(), 4)
  for patient, channel in pairs(want) do
    local ns = sent_to(patient)
    t.eq(#ns, 1, patient .. " notifications")
    t.eq(ns[1].channel, channel, patient .. " channel")
    t.ok(ns[1].message:find("check-up", 1, true), "the campaign's message")
    t.ok(ns[1].data:find('"campaign":"' .. id .. '"', 1, true), "data names the campaign")
    t.eq(t.instance(child(id, patient)).input.campaign, id)
  end
end)

t.test("the per-hour cap starts children in waves; consent skips take no slot", function()
  seed()
  for i = 1, 6 do
    cm.patient.create { id = "pat-w" .. i, name = person("Wave", "P" .. i), birthDate = "1950-02-0" .. i,
                        gender = "unknown", preferredChannel = "sms", conditions = { world.condition("J44") } }
  end
  cm.consent.create { id = "consent-w3", patient = "pat-w3", purpose = "outreach",
                      organization = "riverside-clinic", decision = "deny", period = { start = "2025-11-01" } }
  local id = campaign("camp-copd", { cohort = { condition = "J44" }, per_hour = 2 })
  local function spawned() return ctx(id).spawned end
  t.eq(spawned(), 2, "09:00")
  t.eq(active(id), { "pat-w1", "pat-w2" })
  t.eq(#t.instance(id).timers, 1, "the wave timer")
  t.advance("59m")
  t.eq(spawned(), 2, "09:59")
  t.advance("1m")
  t.eq(spawned(), 4, "10:00")
  t.eq(active(id), { "pat-w1", "pat-w2", "pat-w4", "pat-w5" })
  t.eq(ctx(id).opted_out, 1, "w3 skipped")
  t.advance("1h")
  t.eq(spawned(), 5, "11:00")
  t.eq(#ctx(id).queue, 0, "queue empty")
  t.advance("1h")
  t.eq(spawned(), 5, "12:00: no more waves")
  t.eq(#t.notifications(), 5, "one first attempt per child")
  t.expect_state(id, "running")
end)

t.test("no answer: retries retry_after apart, then unreached after respond_within", function()
  seed()
  local id = campaign("camp-asthma", { cohort = { condition = "J45" } })
  local kid = child(id, "pat-lee")
  t.eq(#sent_to("pat-lee"), 1)
  t.advance("47h")
  t.eq(#sent_to("pat-lee"), 1, "no retry before 2d")
  t.advance("1h")
  t.eq(#sent_to("pat-lee"), 2, "second attempt at 2d")
  t.advance("2d")
  local ns = sent_to("pat-lee")
  t.eq(#ns, 3, "third attempt at 4d")
  t.ok(ns[3].data:find('"attempt":3', 1, true), "attempt number in data")
  t.advance("6d23h")
  t.expect_state(kid, "contacting", "running")
  t.advance("1h")
  t.expect_state(kid, "unreached", "done")
  t.eq(#sent_to("pat-lee"), 3, "no fourth attempt")
  t.expect_state(id, "finished", "done")
  local c = ctx(id)
  t.eq({ c.contacted, c.reached, c.unreached, c.responded }, { 1, 0, 1, 0 })
  t.eq(kpi_value("outreach_reach_rate"), 0)
  t.eq(kpi_value("outreach_response_rate"), 0)
  t.eq(#kpis("outreach_reached"), 0)
end)

t.test("attempts, retry_after and respond_within are the caller's", function()
  seed()
  local id = campaign("camp-short", { cohort = { condition = "J45" }, attempts = 2, retry_after = "1d",
                                      respond_within = "3d" })
  local kid = child(id, "pat-lee")
  t.advance("1d")
  t.eq(#sent_to("pat-lee"), 2)
  t.advance("3d")
  t.expect_state(kid, "unreached", "done")
  t.eq(#sent_to("pat-lee"), 2)
end)

t.test("a response ends the child; a bad answer is refused", function()
  seed()
  local id = campaign("camp-flu", { min_age = 65 })
  local kid = child(id, "pat-okafor")
  t.advance("2d") -- one retry went out
  local st, msg = t.signal(kid, "response", { answer = "maybe" })
  t.eq(st, nil, "bad answer refused")
  t.ok(msg:find("response", 1, true), msg)
  t.expect_state(kid, "contacting", "running")
  t.eq(t.signal(kid, "response", { answer = "booked", note = "Thursday 10:30 with Dr Ngata" }), "responded")
  t.eq(t.instance(kid).context.answer, "booked")
  local c = ctx(id)
  t.eq({ c.responded, c.reached, c.running }, { 1, 1, 3 })
  t.eq(c.active["pat-okafor"], nil, "no longer active")
  t.eq(#kpis("outreach_responded", '"answer":"booked"'), 1)
  t.eq(#kpis("outreach_reached"), 1)
  local before = #sent_to("pat-okafor")
  t.advance("10d")
  t.eq(#sent_to("pat-okafor"), before, "no more attempts after the answer")
  t.expect_state(id, "finished", "done")
end)

t.test("an opt-out records a deny consent that the next campaign respects", function()
  seed()
  local id = campaign("camp-flu", { min_age = 65 })
  t.eq(t.signal(child(id, "pat-walker"), "opt_out", { note = "Please stop texting me" }), "opted_out")
  local denies = {}
  for _, c in ipairs(cm.consent.find { patient = "pat-walker", purpose = "outreach" }) do
    if c.decision == "deny" then denies[#denies + 1] = c end
  end
  t.eq(#denies, 1, "one deny consent")
  t.eq(denies[1].organization, "riverside-clinic")
  t.eq(denies[1].period.start, "2026-01-05")
  t.eq(denies[1].note, "Please stop texting me")
  t.eq(ctx(id).opted_out, 2, "Nguyen (consent) and Walker (reply)")
  t.eq(#kpis("outreach_opted_out", '"source":"response"'), 1)
  local again = campaign("camp-flu-2", { min_age = 65 })
  t.eq(active(again), { "pat-okafor", "pat-rivera", "pat-schmidt" }, "Walker skipped next time")
  t.eq(ctx(again).opted_out, 2)
end)

t.test("reach and response rates over the patients contacted", function()
  seed()
  local id = campaign("camp-flu", { min_age = 65 })
  t.signal(child(id, "pat-okafor"), "response", { answer = "booked" })
  t.signal(child(id, "pat-rivera"), "response", { answer = "declined" })
  t.advance("1d")
  t.signal(child(id, "pat-schmidt"), "opt_out")
  t.expect_state(id, "running")
  t.advance("11d") -- Walker never answers
  t.expect_state(id, "finished", "done")
  local c = ctx(id)
  t.eq({ c.contacted, c.reached, c.responded, c.opted_out, c.unreached }, { 4, 3, 2, 2, 1 })
  near(kpi_value("outreach_reach_rate"), 0.75, "reach rate")
  near(kpi_value("outreach_response_rate"), 0.5, "response rate")
  t.eq(#kpis("outreach_reached"), 3)
  t.eq(#kpis("outreach_responded"), 2)
  t.eq(#kpis("outreach_opted_out"), 2, "Nguyen by consent, Schmidt by reply")
end)

t.test("stop: no more waves; finished once the running children end", function()
  seed()
  local id = campaign("camp-flu", { min_age = 65, per_hour = 1 })
  t.eq(active(id), { "pat-okafor" })
  t.eq(t.signal(id, "stop"), "draining")
  t.eq(#t.instance(id).timers, 0, "wave timer cancelled")
  t.advance("3h")
  t.eq(ctx(id).spawned, 1, "no more children")
  t.eq(ctx(id).stopped, 3, "Rivera, Schmidt, Walker never queued for contact")
  local st, msg = t.signal(id, "stop")
  t.eq(st, nil, msg)
  t.signal(child(id, "pat-okafor"), "response", { answer = "other", note = "already had it" })
  t.expect_state(id, "finished", "done")
  t.eq(kpi_value("outreach_response_rate"), 1)
  t.eq(#t.notifications(), 1)
end)

t.test("stop with nobody contacted yet finishes at once; a cancelled child is not reached", function()
  seed()
  local id = campaign("camp-flu", { min_age = 65, per_hour = 1 })
  t.cancel(child(id, "pat-okafor"), "wrong cohort")
  t.eq(ctx(id).cancelled, 1)
  t.eq(t.signal(id, "stop"), "finished")
  t.eq(kpi_value("outreach_reach_rate"), 0)
  local empty = campaign("camp-none", { cohort = { condition = "Z99" } })
  t.expect_state(empty, "finished", "done")
  t.eq(#kpis("outreach_reach_rate"), 1, "no rate for an empty campaign")
end)

t.test("a roster cohort: the patients a roster import tagged, and no one else", function()
  seed()
  -- What `caremesh roster import FILE --cohort flu-2026` leaves on each
  -- patient of the file: an identifier of the roster system (the plugin's
  -- own tests cover the import; tests/plugins/test_roster_outreach.c the
  -- whole path).
  local ROSTER = "urn:caremesh:roster"
  local function tag(id, system, value)
    local p = cm.patient.get(id)
    local ids = p.identifiers or {}
    ids[#ids + 1] = { system = system, value = value }
    cm.patient.update(id, { identifiers = ids })
  end
  tag("pat-lee", ROSTER, "flu-2026")
  tag("pat-okafor", ROSTER, "flu-2026")
  tag("pat-nguyen", ROSTER, "flu-2026")          -- opted out: skipped
  tag("pat-brooks", ROSTER, "flu-2026")          -- inactive
  tag("pat-rivera", ROSTER, "diabetes-2026")     -- another roster
  tag("pat-johnson", "urn:oid:2.16.840.1.113883.19.5", "flu-2026") -- an MRN that reads the same
  local id = campaign("camp-roster", { cohort = { roster = "flu-2026" } })
  t.eq(active(id), { "pat-lee", "pat-okafor" }, "the roster's active patients who did not opt out")
  t.eq(ctx(id).cohort, 3, "Lee, Nguyen, Okafor")
  t.eq(ctx(id).opted_out, 1, "Nguyen")
  local old = campaign("camp-roster-65", { cohort = { roster = "flu-2026", min_age = 65 } })
  t.eq(active(old), { "pat-okafor" }, "the roster, 65 and over")
  local none = campaign("camp-roster-none", { cohort = { roster = "no-such-roster" } })
  t.expect_state(none, "finished", "done")
  local bad, msg = t.start("outreach", { organization = "riverside-clinic", message = "hi",
                                         cohort = { roster = 2026 } })
  t.eq(bad, nil, "a roster name must be a string")
  t.ok(msg:find("cohort.roster: expected a string", 1, true), msg)
end)

t.test("bad campaign input is refused and starts nothing", function()
  seed()
  local base = { organization = "riverside-clinic", message = "hello", cohort = { condition = "E11" } }
  local function refused(extra, fragment)
    local input = h.with(base, extra)
    local id, msg = t.start("outreach", input)
    t.eq(id, nil, fragment)
    t.ok(msg:find(fragment, 1, true), "message " .. tostring(msg) .. " lacks " .. fragment)
  end
  refused({ per_hour = 0 }, "per_hour")
  refused({ attempts = 0 }, "attempts")
  refused({ retry_after = "two days" }, "retry_after")
  refused({ cohort = { min_age = "65" } }, "min_age")
  refused({ cohort = { birthday = "1950" } }, "cohort.birthday")
  refused({ cohort = {} }, "at least one criterion")
  refused({ purpose = "marketing" }, "purpose")
  refused({ organization = "no-such-clinic" }, "organization")
  refused({ per_hour = 2.5 }, "per_hour")
  t.eq(#t.notifications(), 0)
  t.eq(cm.consent.count(), 4, "no records written")
end)
