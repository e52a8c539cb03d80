-- tests/lib/seed.lua -- the organizations, providers and patients the
-- workflow tests share: one record each, and create{} to put the ones a test
-- file needs into the (fresh) store of a test. Consents, and anything a test
-- is about, stay in the test file. Test files get it with
-- `local world = require "lib.seed"`.
--
-- Ages on 2026-01-05, the first day of the test clock: Rivera 67, Okafor 76,
-- Kaur 58, Lee 35, Nguyen 70, Schmidt 81, Johnson 47, Walker 65 (that day),
-- Garcia 64 (65 the day after), Brooks 88 (inactive). Kaur and Walker have
-- no preferredChannel. Every patient's generalPractitioner is
-- riverside-clinic.
--
-- Used by test_referral.lua, test_referral_intake.lua, test_outreach.lua and
-- test_vaccination.lua.
local cm = require "caremesh"

local M = {}

function M.person(family, given) return { family = family, given = { given } } end

local ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
local CONDITIONS = {
  E11 = { code = "E11", system = ICD10, display = "Type 2 diabetes mellitus" },
  I10 = { code = "I10", system = ICD10, display = "Essential hypertension" },
  I50 = { code = "I50.9", system = ICD10, display = "Heart failure, unspecified" },
  J44 = { code = "J44", system = ICD10, display = "COPD" },
  J45 = { code = "J45", system = ICD10, display = "Asthma" },
}

-- A condition coding, e.g. condition("J44"): a fresh table each time.
function M.condition(name)
  local c = assert(CONDITIONS[name], "seed: no condition " .. tostring(name))
  return { code = c.code, system = c.system, display = c.display }
end

local function conditions(...)
  local list = {}
  for i, name in ipairs { ... } do list[i] = M.condition(name) end
  return list
end

local person = M.person

-- Each builds a fresh record, so no test sees what another changed.
local ORGANIZATIONS = {
  ["riverside-clinic"] = function()
    return { id = "riverside-clinic", name = "Riverside Family Clinic", kind = "clinic",
             node = "riverside-node", phone = "+1 555 0100 200" }
  end,
  ["heart-partners"] = function()
    return { id = "heart-partners", name = "Heart Partners Cardiology", kind = "specialist_practice",
             node = "cardiology-node", phone = "+1 555 0100 300" }
  end,
  ["main-st-pharmacy"] = function()
    return { id = "main-st-pharmacy", name = "Main Street Pharmacy", kind = "community_pharmacy",
             node = "pharmacy-node" }
  end,
  ["county-health"] = function()
    return { id = "county-health", name = "Millbrook County Health Department", kind = "public_health" }
  end,
}

local PROVIDERS = {
  ["dr-ngata"] = function()
    return { id = "dr-ngata", name = person("Ngata", "Aroha"), role = "physician",
             organization = "riverside-clinic" }
  end,
  ["cc-haddad"] = function()
    return { id = "cc-haddad", name = person("Haddad", "Sami"), role = "care_coordinator",
             organization = "riverside-clinic" }
  end,
  ["dr-osei"] = function()
    return { id = "dr-osei", name = person("Osei", "Kwame"), role = "physician", specialty = "cardiology",
             organization = "heart-partners" }
  end,
  ["cc-moreau"] = function()
    return { id = "cc-moreau", name = person("Moreau", "Lea"), role = "care_coordinator",
             organization = "heart-partners" }
  end,
  ["rph-tanaka"] = function()
    return { id = "rph-tanaka", name = person("Tanaka", "Ken"), role = "pharmacist",
             organization = "main-st-pharmacy" }
  end,
  ["rn-kowalski"] = function()
    return { id = "rn-kowalski", name = person("Kowalski", "Ewa"), role = "nurse",
             organization = "county-health" }
  end,
}

local PATIENTS = {
  ["pat-rivera"] = function()
    return { id = "pat-rivera", name = person("Rivera", "Ana"), birthDate = "1958-04-12", gender = "female",
             phone = "+1 555 0111 001", language = "es", preferredChannel = "sms",
             conditions = conditions("E11", "I10") }
  end,
  ["pat-okafor"] = function()
    return { id = "pat-okafor", name = person("Okafor", "Chidi"), birthDate = "1949-09-30", gender = "male",
             email = "chidi.okafor@example.org", language = "en", preferredChannel = "email",
             conditions = conditions("I50", "I10") }
  end,
  ["pat-kaur"] = function()
    return { id = "pat-kaur", name = person("Kaur", "Harpreet"), birthDate = "1967-11-03", gender = "female",
             address = { line = { "88 Mill St" }, city = "Millbrook", postalCode = "97001" } }
  end,
  ["pat-lee"] = function()
    return { id = "pat-lee", name = person("Lee", "Min"), birthDate = "1991-01-05", gender = "female",
             phone = "+1 555 0111 003", preferredChannel = "phone", conditions = conditions("J45") }
  end,
  ["pat-nguyen"] = function()
    return { id = "pat-nguyen", name = person("Nguyen", "Bao"), birthDate = "1955-07-21", gender = "male",
             phone = "+1 555 0111 004", preferredChannel = "sms", conditions = conditions("E11") }
  end,
  ["pat-schmidt"] = function()
    return { id = "pat-schmidt", name = person("Schmidt", "Greta"), birthDate = "1944-12-02", gender = "female",
             address = { line = { "4 Elm St" }, city = "Millbrook", postalCode = "97001" },
             preferredChannel = "mail", conditions = conditions("E11", "I50") }
  end,
  ["pat-johnson"] = function()
    return { id = "pat-johnson", name = person("Johnson", "Dwayne"), birthDate = "1978-03-14", gender = "male",
             email = "dj@example.org", preferredChannel = "portal", conditions = {} }
  end,
  ["pat-walker"] = function()
    return { id = "pat-walker", name = person("Walker", "June"), birthDate = "1961-01-05", gender = "female",
             phone = "+1 555 0111 007", conditions = conditions("E11") }
  end,
  ["pat-garcia"] = function()
    return { id = "pat-garcia", name = person("Garcia", "Luis"), birthDate = "1961-01-06", gender = "male",
             phone = "+1 555 0111 008", preferredChannel = "sms", conditions = conditions("E11") }
  end,
  ["pat-brooks"] = function()
    return { id = "pat-brooks", name = person("Brooks", "Ida"), birthDate = "1937-05-19", gender = "female",
             preferredChannel = "phone", conditions = conditions("E11"), active = false }
  end,
}

-- The partnerships between the organizations above, with the terms the
-- hosts enforce on every message (who may receive which data classes for
-- which purpose). Each needs its member organizations.
local PARTNERSHIPS = {
  ["cardiology-referrals"] = function()
    return {
      id = "cardiology-referrals", name = "Riverside - Heart Partners referrals",
      purpose = "Closed-loop cardiology referrals", reviewCadence = "quarterly",
      members = { { organization = "riverside-clinic", requests = { "cardiology consult" } },
                  { organization = "heart-partners", offers = { "cardiology consult" } } },
      terms = {
        { receiver = "heart-partners", purposes = { "referral" },
          classes = { "demographics", "contact", "conditions", "notes" } },
        { receiver = "riverside-clinic", purposes = { "referral" }, classes = { "notes" } },
      },
    }
  end,
  ["flu-drive"] = function()
    return {
      id = "flu-drive", name = "Main Street flu drive", purpose = "Seasonal flu vaccination",
      reviewCadence = "monthly",
      members = { { organization = "main-st-pharmacy", offers = { "flu vaccination" } },
                  { organization = "riverside-clinic", requests = { "flu vaccination" } } },
      terms = {
        { receiver = "riverside-clinic", purposes = { "immunization" }, classes = { "immunizations" } },
        { receiver = "main-st-pharmacy", purposes = { "immunization" },
          classes = { "demographics", "contact" } },
      },
    }
  end,
}

local function create(kind, catalogue, ids)
  for _, id in ipairs(ids or {}) do
    local make = assert(catalogue[id], "seed: no " .. kind .. " " .. tostring(id))
    local record = make()
    if kind == "patient" then record.generalPractitioner = "riverside-clinic" end
    cm[kind].create(record)
  end
end

-- Create the records named, in this order: organizations, then providers
-- (they belong to one), then patients, then partnerships. E.g.
--   world.create { organizations = { "riverside-clinic" }, patients = { "pat-kaur" } }
function M.create(names)
  create("organization", ORGANIZATIONS, names.organizations)
  create("provider", PROVIDERS, names.providers)
  create("patient", PATIENTS, names.patients)
  create("partnership", PARTNERSHIPS, names.partnerships)
end

return M
