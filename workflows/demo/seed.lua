-- seed.lua -- sample data for the demo: a primary-care clinic, a cardiology
-- practice, a community pharmacy and the county health department; their
-- people, a handful of patients, two partnerships (a closed-loop cardiology
-- referral agreement and an immunization drive), consents, a care team and
-- open tasks. Loaded through the Lua API, as a site's admin would.
--
-- Each node of the demo runs it with its site (`caremesh lua --data DIR
-- seed.lua SITE`): every site keeps the organizations, their people and the
-- partnerships (each node checks the terms itself); the clinic
-- (riverside-node) has its patients, consents and care team; the pharmacy
-- (pharmacy-node) has its own records of the clinic's patients aged 65 and
-- over, the drive's target; the cardiology practice (cardiology-node)
-- starts with no patients: a referral brings what the terms let it see.
local cm = require "caremesh"
local site = ... or "clinic"
assert(site == "clinic" or site == "cardiology" or site == "pharmacy",
       "seed.lua: site must be clinic, cardiology or pharmacy")

local orgs = {
  { id = "riverside-clinic", name = "Riverside Family Clinic", kind = "clinic",
    node = "riverside-node", phone = "+1 555 0100 200",
    address = { line = { "12 River Rd" }, city = "Millbrook", state = "OR", postalCode = "97001" } },
  { id = "heart-partners", name = "Heart Partners Cardiology", kind = "specialist_practice",
    node = "cardiology-node", phone = "+1 555 0100 300" },
  { id = "main-st-pharmacy", name = "Main Street Pharmacy", kind = "community_pharmacy",
    node = "pharmacy-node" },
  { id = "county-health", name = "Millbrook County Health Department", kind = "public_health" },
}
for _, o in ipairs(orgs) do cm.organization.create(o) end

local function person(family, given) return { family = family, given = { given } } end
local providers = {
  { id = "dr-ngata", name = person("Ngata", "Aroha"), role = "physician", organization = "riverside-clinic" },
  { id = "np-silva", name = person("Silva", "Joana"), role = "nurse_practitioner", organization = "riverside-clinic" },
  { id = "cc-haddad", name = person("Haddad", "Sami"), role = "care_coordinator", organization = "riverside-clinic" },
  { id = "dr-osei", name = person("Osei", "Kwame"), role = "physician", specialty = "cardiology", organization = "heart-partners" },
  { id = "cc-moreau", name = person("Moreau", "Lea"), role = "care_coordinator", organization = "heart-partners" },
  { id = "rph-tanaka", name = person("Tanaka", "Ken"), role = "pharmacist", organization = "main-st-pharmacy" },
  { id = "rph-adeyemi", name = person("Adeyemi", "Bola"), role = "pharmacist", organization = "main-st-pharmacy" },
  { id = "rn-kowalski", name = person("Kowalski", "Ewa"), role = "nurse", organization = "county-health" },
  { id = "rn-begay", name = person("Begay", "Tom"), role = "nurse", organization = "county-health" },
}
for _, p in ipairs(providers) do cm.provider.create(p) end

local E11 = { code = "E11", system = "http://hl7.org/fhir/sid/icd-10-cm", display = "Type 2 diabetes mellitus" }
local I10 = { code = "I10", system = "http://hl7.org/fhir/sid/icd-10-cm", display = "Essential hypertension" }
local I50 = { code = "I50.9", system = "http://hl7.org/fhir/sid/icd-10-cm", display = "Heart failure, unspecified" }
local J45 = { code = "J45", system = "http://hl7.org/fhir/sid/icd-10-cm", display = "Asthma" }
local patients = {
  { id = "pat-rivera", name = person("Rivera", "Ana"), birthDate = "1958-04-12", gender = "female",
    phone = "+1 555 0111 001", language = "es", preferredChannel = "sms", conditions = { E11, I10 } },
  { id = "pat-okafor", name = person("Okafor", "Chidi"), birthDate = "1949-09-30", gender = "male",
    email = "chidi.okafor@example.org", language = "en", preferredChannel = "email", conditions = { I50, I10 } },
  { id = "pat-lee", name = person("Lee", "Min"), birthDate = "1991-01-05", gender = "female",
    phone = "+1 555 0111 003", language = "ko", preferredChannel = "phone", conditions = { J45 } },
  { id = "pat-nguyen", name = person("Nguyen", "Bao"), birthDate = "1955-07-21", gender = "male",
    phone = "+1 555 0111 004", language = "vi", preferredChannel = "sms", conditions = { E11 } },
  { id = "pat-schmidt", name = person("Schmidt", "Greta"), birthDate = "1944-12-02", gender = "female",
    address = { line = { "4 Elm St" }, city = "Millbrook", postalCode = "97001" },
    language = "de", preferredChannel = "mail", conditions = { E11, I50 } },
  { id = "pat-johnson", name = person("Johnson", "Dwayne"), birthDate = "1978-03-14", gender = "male",
    email = "dj@example.org", language = "en", preferredChannel = "portal", conditions = {} },
}
for _, p in ipairs(patients) do
  p.generalPractitioner = "riverside-clinic"
  if site == "clinic" then
    p.identifiers = { { system = "urn:riverside-clinic:mrn", value = "MRN-" .. p.id:sub(5) } }
    cm.patient.create(p)
  elseif site == "pharmacy" and p.birthDate < "1961-12-01" then
    p.conditions = nil -- the pharmacy keeps what it needs to vaccinate
    cm.patient.create(p)
  end
end

cm.partnership.create {
  id = "riverside-heart-loop",
  name = "Riverside cardiology referral loop",
  purpose = "Refer cardiac patients to Heart Partners and close every loop within 30 days",
  members = {
    { organization = "riverside-clinic", offers = { "primary_care", "care_coordination" },
      requests = { "cardiology_consult" } },
    { organization = "heart-partners", offers = { "cardiology_consult", "echocardiography" },
      requests = { "referral_packet" } },
  },
  terms = {
    { receiver = "heart-partners", classes = { "demographics", "contact", "conditions", "medications", "notes" },
      purposes = { "referral" } },
    { receiver = "riverside-clinic", classes = { "notes" }, purposes = { "referral", "care_coordination" } },
  },
  champions = {
    { organization = "riverside-clinic", champion = "dr-ngata", backup = "cc-haddad" },
    { organization = "heart-partners", champion = "dr-osei", backup = "cc-moreau" },
  },
  kpis = {
    { name = "referral_loop_closed", description = "referrals closed with the consult note reviewed", target = 0.9 },
    { name = "referral_days_to_close", description = "request to loop closed (median)", target = 21, unit = "d" },
  },
  reviewCadence = "quarterly", start = "2026-01-01", nextReview = "2027-01-15",
}

cm.partnership.create {
  id = "millbrook-flu-drive",
  name = "Millbrook adult immunization drive",
  purpose = "Vaccinate adults 65 and over through the pharmacy, reported back to primary care",
  members = {
    { organization = "main-st-pharmacy", offers = { "immunization" }, requests = { "eligible_patients" } },
    { organization = "riverside-clinic", offers = { "outreach" }, requests = { "immunization" } },
    { organization = "county-health", offers = { "vaccine_supply", "registry_reporting" }, requests = { "dose_counts" } },
  },
  terms = {
    { receiver = "main-st-pharmacy", classes = { "demographics", "contact", "immunizations" },
      purposes = { "immunization", "outreach" } },
    { receiver = "riverside-clinic", classes = { "immunizations" }, purposes = { "immunization" } },
  },
  champions = {
    { organization = "main-st-pharmacy", champion = "rph-tanaka", backup = "rph-adeyemi" },
    { organization = "county-health", champion = "rn-kowalski", backup = "rn-begay" },
  },
  kpis = {
    { name = "vaccination_coverage", description = "share of 65+ patients fully vaccinated", target = 0.75 },
    { name = "vaccination_dose_given", description = "doses given at the drive's sites" },
    { name = "immunization_reported", description = "doses recorded at primary care" },
  },
  reviewCadence = "monthly", start = "2026-10-01", ["end"] = "2027-03-31",
}

if site == "clinic" then
  cm.consent.create { id = "consent-okafor-referral", patient = "pat-okafor", purpose = "referral",
                      organization = "heart-partners", decision = "permit",
                      period = { start = "2026-11-01", ["end"] = "2027-11-01" } }
  cm.consent.create { id = "consent-johnson-outreach", patient = "pat-johnson", purpose = "outreach",
                      decision = "deny", period = { start = "2026-06-01" },
                      note = "Asked not to be contacted for campaigns" }

  cm.care_team.create { id = "team-okafor", patient = "pat-okafor", name = "Heart failure team",
    participants = {
      { member = "dr-ngata", role = "primary_care_physician" },
      { member = "dr-osei", role = "cardiologist" },
      { member = "cc-haddad", role = "care_coordinator" },
    } }

  cm.task.create { id = "task-okafor-records", title = "Send the latest echo report to Heart Partners",
                   organization = "riverside-clinic", patient = "pat-okafor", owner = "cc-haddad",
                   priority = "urgent", due = "2026-12-03" }
  cm.task.create { id = "task-a1c-list", title = "Review diabetic patients overdue for an A1c",
                   organization = "riverside-clinic", ownerRole = "nurse_practitioner", due = "2026-12-10" }
end

print(site .. ": seeded " .. cm.organization.count() .. " organizations, " .. cm.provider.count() ..
      " providers, " .. cm.patient.count() .. " patients")
