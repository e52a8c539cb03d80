-- lib/series.lua -- a vaccine series' schedule and the instants it is
-- measured in: the schedule checked and spelled out one entry per dose, the
-- window of a dose (due, overdue) from the dose before, and ISO-8601 times
-- in milliseconds (dates too, zones kept) and back. Pure functions: no
-- records, no instance.
--
-- Used by vaccination_course.lua (when each dose is due and overdue) and
-- vaccination.lua (slots: whether an appointment falls in the dose's window).
local time = require "lib.time"

local M = {}

M.DAY = 86400000
M.MAX_DOSES = 10

local DAY = M.DAY
local days_from_civil, civil_from_days = time.days_from_civil, time.civil_from_days

-- "1d12h" -> milliseconds (the engine's duration grammar), nil when bad.
function M.duration_ms(s)
  local secs = time.seconds(s)
  return secs and secs * 1000
end

-- ISO-8601 date or date-time with a zone -> milliseconds, nil when bad.
function M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 then return nil end
  local ms = days_from_civil(y, mo, d) * DAY
  if select(2, civil_from_days(ms // DAY)) ~= mo then return nil end -- e.g. 02-30
  if rest == "" then return ms end
  local h, mi, tail = rest:match("^T(%d%d):(%d%d)(.*)$")
  if not h then return nil end
  local sec, frac, off = 0, 0, 0
  local ss, after_s = tail:match("^:(%d%d)(.*)$")
  if ss then
    sec, tail = tonumber(ss), after_s
    local f, after_f = tail:match("^%.(%d+)(.*)$")
    if f then frac, tail = tonumber((f .. "00"):sub(1, 3)), after_f end
  end
  if tail ~= "Z" then
    local sign, oh, om = tail:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    off = (tonumber(oh) * 60 + tonumber(om)) * 60000 * (sign == "-" and -1 or 1)
  end
  h, mi = tonumber(h), tonumber(mi)
  if h > 23 or mi > 59 or sec > 59 then return nil end
  return ms + ((h * 60 + mi) * 60 + sec) * 1000 + frac - off
end

-- Milliseconds -> "2026-01-26T09:00:00.000Z".
function M.format_time(ms)
  local y, m, d = civil_from_days(ms // DAY)
  local rem = ms % DAY
  return string.format("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", y, m, d, rem // 3600000,
                       rem // 60000 % 60, rem // 1000 % 60, rem % 1000)
end

-- The schedule s as one { min_interval?, max_interval? } per dose; check
-- (a lib/checks.lua checker) raises on what is wrong, naming the field.
function M.doses(s, check)
  local list = {}
  if s[1] ~= nil then
    for i, e in ipairs(s) do
      check(type(e) == "table", "schedule[" .. i .. "]: expected { min_interval?, max_interval? }")
      for k in pairs(e) do
        check(k == "min_interval" or k == "max_interval",
              "schedule[" .. i .. "]." .. tostring(k) .. ": unknown field")
      end
      list[i] = e
    end
  else
    for k in pairs(s) do
      check(k == "doses" or k == "min_interval" or k == "max_interval",
            "schedule." .. tostring(k) .. ": unknown field (use doses, min_interval, max_interval)")
    end
    check(math.type(s.doses) == "integer" and s.doses >= 1, "schedule.doses: a whole number from 1")
    list[1] = {}
    for i = 2, math.min(s.doses, M.MAX_DOSES + 1) do
      list[i] = { min_interval = s.min_interval, max_interval = s.max_interval }
    end
  end
  check(#list <= M.MAX_DOSES, "schedule: at most " .. M.MAX_DOSES .. " doses")
  for i, e in ipairs(list) do
    local where = "schedule[" .. i .. "]."
    check(i > 1 or e.min_interval == nil, where .. "min_interval: dose 1 is due at once")
    local min, max = M.duration_ms(e.min_interval or "0s"), M.duration_ms(e.max_interval or "0s")
    check(min, where .. "min_interval: bad duration " .. tostring(e.min_interval))
    check(max, where .. "max_interval: bad duration " .. tostring(e.max_interval))
    check(e.max_interval == nil or max > min, where .. "max_interval: must be longer than min_interval")
  end
  return list
end

-- The window of dose n of the series list (from M.doses), measured from
-- base (ms: enrollment for dose 1, the dose before for the others): due,
-- overdue (nil when the entry has no max_interval), in ms.
function M.window(list, n, base)
  local entry = list[n]
  local due = n == 1 and base or base + M.duration_ms(entry.min_interval or "0s")
  return due, entry.max_interval and base + M.duration_ms(entry.max_interval)
end

return M
