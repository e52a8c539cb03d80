-- lib/slots.lua -- appointment slots at the sites of a vaccination drive:
-- the input that gives each site its slots, checked and spelled out one
-- slot at a time, and the inventory kept in the drive's wf.ctx (places
-- taken and freed, use per site). Pure functions over the tables they are
-- given: no records, no effects; the drive (vaccination.lua) owns the
-- inventory, so the instance's one-event-at-a-time steps serialize it.
--
-- Input: { [site] = { slot, ... } }, a slot being
--   { at = "2026-01-27T10:00:00Z", capacity = 4, length = "15m" }
--       one slot (length default "15m": when it ends)
--   { day = "2026-01-27", from = "09:00", to = "12:00", length = "15m",
--     capacity = 2, zone = "-05:00" }
--       from..to on day (times of day at zone, default "Z") split into
--       slots of length (default "15m"); a last piece shorter than length
--       is no slot
-- capacity: people per slot. At most MAX slots in all.
--
-- A slot's id is "<site>@<start, UTC>", e.g.
-- "county-health@2026-01-27T10:00:00.000Z"; inventory[id] =
-- { site, at, ends (UTC ISO-8601), capacity, booked (places taken) }.
local series = require "lib.series"

local M = {}

M.MAX = 500

local FIELDS = { at = true, day = true, from = true, to = true, length = true, capacity = true,
                 zone = true }

-- The id of the slot of site starting at ms.
function M.id(site, ms) return site .. "@" .. series.format_time(ms) end

-- "HH:MM" on day at zone -> ms, nil when bad.
local function time_of_day(day, hhmm, zone)
  if type(hhmm) ~= "string" or not hhmm:match("^%d%d:%d%d$") then return nil end
  return series.parse_time(day .. "T" .. hhmm .. ":00" .. zone)
end

-- The start times (ms) slot spec s gives; check raises naming where.
local function starts(s, where, check, len)
  if s.at ~= nil then
    check(s.day == nil and s.from == nil and s.to == nil and s.zone == nil,
          where .. ": give at, or day with from and to, not both")
    local t = type(s.at) == "string" and s.at:find("T", 1, true) and series.parse_time(s.at)
    check(t, where .. ".at: expected an ISO-8601 date-time with a zone, got " .. tostring(s.at))
    return { t }
  end
  check(type(s.day) == "string" and #s.day == 10 and series.parse_time(s.day),
        where .. ".day: expected a date (YYYY-MM-DD), got " .. tostring(s.day))
  local zone = s.zone or "Z"
  check(type(zone) == "string" and (zone == "Z" or zone:match("^[+-]%d%d:%d%d$")),
        where .. ".zone: expected Z or an offset like -05:00, got " .. tostring(s.zone))
  local from, to = time_of_day(s.day, s.from, zone), time_of_day(s.day, s.to, zone)
  check(from, where .. ".from: expected a time of day HH:MM, got " .. tostring(s.from))
  check(to, where .. ".to: expected a time of day HH:MM, got " .. tostring(s.to))
  check(to - from >= len, where .. ".to: must leave at least one slot of its length after from")
  local list = {}
  for t = from, to - len, len do
    check(#list < M.MAX, where .. ": more than " .. M.MAX .. " slots")
    list[#list + 1] = t
  end
  return list
end

-- The inventory the input spec gives (nil: none): a table id -> slot.
-- allowed(site) says whether site takes part in the drive; check(ok, msg)
-- raises msg (naming the field) unless ok.
function M.build(spec, allowed, check)
  local inventory, n = {}, 0
  if spec == nil then return inventory end
  for site, list in pairs(spec) do
    local where = "slots." .. tostring(site)
    check(type(site) == "string" and allowed(site),
          where .. ": not a site of this drive (the pharmacy or one of sites)")
    check(type(list) == "table" and list[1] ~= nil, where .. ": expected a list of slots")
    for i, s in ipairs(list) do
      local at = where .. "[" .. i .. "]"
      check(type(s) == "table", at .. ": expected { at =, capacity = } or { day =, from =, to =, capacity = }")
      for k in pairs(s) do
        check(FIELDS[k], at .. "." .. tostring(k) ..
              ": unknown field (use at, or day, from, to, zone; length, capacity)")
      end
      check(math.type(s.capacity) == "integer" and s.capacity >= 1,
            at .. ".capacity: expected a whole number of people from 1, got " .. tostring(s.capacity))
      local len = series.duration_ms(s.length or "15m")
      check(len and len > 0, at .. ".length: bad duration " .. tostring(s.length))
      for _, t in ipairs(starts(s, at, check, len)) do
        local id = M.id(site, t)
        check(inventory[id] == nil, at .. ": slot " .. id .. " given twice")
        n = n + 1
        check(n <= M.MAX, "slots: at most " .. M.MAX .. " slots in a drive")
        inventory[id] = { site = site, at = series.format_time(t), ends = series.format_time(t + len),
                          capacity = s.capacity, booked = 0 }
      end
    end
  end
  return inventory
end

-- Places taken and offered at site: booked, capacity.
function M.use(inventory, site)
  local booked, capacity = 0, 0
  for _, slot in pairs(inventory) do
    if slot.site == site then booked, capacity = booked + slot.booked, capacity + slot.capacity end
  end
  return booked, capacity
end

return M
