-- lib/cohort.lua -- choosing patients for a campaign or a drive: a patient
-- query (find keys plus an age range) checked and split, the active
-- patients it selects with their age on a given day, and whether a "deny"
-- consent for a purpose keeps a patient out.
--
-- A query is a table of patient find keys (condition, gender, language,
-- generalPractitioner: strings) plus min_age / max_age (whole years on the
-- day of selection, from birthDate), e.g. { condition = "E11" } or
-- { min_age = 65 }, and roster: the name of a cohort imported with
-- `caremesh roster import FILE --cohort NAME` (the roster_csv plugin tags
-- each patient with the identifier { system = "urn:caremesh:roster",
-- value = NAME }), e.g. { roster = "flu-2026" }.
--
-- Used by outreach.lua and vaccination.lua.
local cm = require "caremesh"

local M = {}

local PAGE = 500
local FIND_KEYS = { condition = true, gender = true, language = true, generalPractitioner = true }
local ROSTER_SYSTEM = "urn:caremesh:roster"

-- Whole years from birthDate ("YYYY-MM-DD") to today ("YYYY-MM-DD").
function M.age_on(birth, today)
  local age = tonumber(today:sub(1, 4)) - tonumber(birth:sub(1, 4))
  if today:sub(6, 10) < birth:sub(6, 10) then age = age - 1 end
  return age
end

-- The find keys of query, checked with check(ok, msg): find keys and roster
-- must be strings, any other key min_age or max_age (with whole_years, a whole
-- number too). what names the query in the messages ("cohort.gender: ...").
-- The age range is left in query for the caller. A roster becomes the find
-- key identifier: only M.filter puts it there, and M.select keeps only the
-- patients whose identifier with that value is a roster's.
function M.filter(query, what, check, whole_years)
  local filter = {}
  for k, v in pairs(query) do
    if FIND_KEYS[k] or k == "roster" then
      check(type(v) == "string", what .. "." .. k .. ": expected a string")
      filter[k == "roster" and "identifier" or k] = v
    else
      check(k == "min_age" or k == "max_age", what .. "." .. tostring(k) .. ": unknown criterion"
            .. " (known: condition, gender, language, generalPractitioner, roster, min_age, max_age)")
      if whole_years then
        check(math.type(v) == "integer", what .. "." .. k .. ": expected whole years")
      end
    end
  end
  return filter
end

-- Is p in the roster cohort named name?
local function on_roster(p, name)
  for _, ident in ipairs(p.identifiers or {}) do
    if ident.system == ROSTER_SYSTEM and ident.value == name then return true end
  end
  return false
end

-- The ids of the active patients matching filter (find keys; identifier: a
-- roster's name, see M.filter), aged min_age..max_age on today (either bound
-- optional) and not in skip (a set of ids, optional), in id order.
function M.select(filter, min_age, max_age, today, skip)
  local ids, after = {}, nil
  skip = skip or {}
  repeat
    local page = cm.patient.find(filter, { after = after, limit = PAGE })
    for _, p in ipairs(page) do
      local age = M.age_on(p.birthDate, today)
      if p.active ~= false and not skip[p.id]
          and (not filter.identifier or on_roster(p, filter.identifier))
          and (not min_age or age >= min_age) and (not max_age or age <= max_age) then
        ids[#ids + 1] = p.id
      end
      after = p.id
    end
  until #page < PAGE
  return ids
end

-- Is a "deny" consent for purpose in effect on today (status active, period
-- covering it) for this patient and organization (the consent names it, or
-- no organization)?
function M.denied(patient, purpose, organization, today)
  for _, c in ipairs(cm.consent.find { patient = patient, purpose = purpose }) do
    if c.decision == "deny" and c.status == "active"
        and (c.organization == nil or c.organization == organization)
        and (c.period == nil or (c.period.start <= today
             and (c.period["end"] == nil or c.period["end"] >= today))) then
      return true
    end
  end
  return false
end

return M
