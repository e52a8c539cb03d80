-- lib/time.lua -- instants and durations for workflows: ISO-8601 date-times
-- to seconds since the epoch and back, the engine's duration grammar
-- ("90s", "15m", "72h", "21d", "2w", "1d12h") to seconds and back, and the
-- proleptic Gregorian day count these rest on. Pure functions: no records,
-- no instance.
--
-- Used by referral.lua, referral_intake.lua, outreach.lua and lib/series.lua
-- (vaccination_course.lua, vaccination.lua).
local M = {}

local UNIT = { s = 1, m = 60, h = 3600, d = 86400, w = 604800 }

-- Days since 1970-01-01 of the date y-m-d (proleptic Gregorian calendar).
function M.days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

-- The date (y, m, d) of a day count since 1970-01-01: days_from_civil back.
function M.civil_from_days(z)
  z = z + 719468
  local era = z // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m, doy - (153 * mp + 2) // 5 + 1
end

function M.days_in_month(y, m)
  if m == 2 then return (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28 end
  return ({ 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 })[m]
end

-- ISO-8601 date-time with a zone ("2026-01-20T14:30:00Z", "...-08:00";
-- seconds and their fraction optional, the fraction dropped) -> seconds
-- since the epoch; nil when malformed (a date alone, no zone, 02-30, 25:00).
function M.epoch(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, tail = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  y, mo, d, h, mi = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi)
  local sec = 0
  local ss, rest = tail:match("^:(%d%d)(.*)$")
  if ss then
    sec, tail = tonumber(ss), rest
    tail = tail:gsub("^%.%d+", "", 1)
  end
  local off = 0
  if tail ~= "Z" then
    local sign, oh, om = tail:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    off = (tonumber(oh) * 60 + tonumber(om)) * 60 * (sign == "-" and -1 or 1)
  end
  if mo < 1 or mo > 12 or d < 1 or d > M.days_in_month(y, mo) or h > 23 or mi > 59 or sec > 59 then
    return nil
  end
  return M.days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - off
end

-- Seconds since the epoch -> "2026-01-20T22:30:00Z" (UTC, whole seconds).
function M.iso(secs) return os.date("!%Y-%m-%dT%H:%M:%SZ", secs) end

-- A duration in the engine's grammar ("72h", "1d12h", "0s") -> seconds; nil
-- when s is not one (not a string, empty, "3 days").
function M.seconds(s)
  if type(s) ~= "string" or s == "" then return nil end
  local total = 0
  local rest = s:gsub("(%d+)([smhdw])", function(n, u)
    total = total + tonumber(n) * UNIT[u]
    return ""
  end)
  if rest ~= "" then return nil end
  return total
end

-- Seconds -> a duration in the largest whole unit: 86400 -> "1d", 5400 -> "90m".
function M.duration(secs)
  for _, u in ipairs { "d", "h", "m" } do
    if secs % UNIT[u] == 0 then return (secs // UNIT[u]) .. u end
  end
  return secs .. "s"
end

return M
