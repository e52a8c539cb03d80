-- lib/text.lua -- free text in workflows: is there any, clipping what a
-- partner or a person wrote to the limits of the records it goes into, and
-- the name shown for an organization.
--
-- The limits leave room for the "..." that clip() appends: a task's title
-- is a string of at most 1024 bytes, its description and note text of at
-- most 8192 (docs/records.md).
--
-- Used by referral.lua, referral_intake.lua and outreach_contact.lua.
local cm = require "caremesh"

local M = {}

M.TITLE_MAX = 1000   -- bytes, for task titles
M.TEXT_MAX = 8000    -- bytes, for task descriptions and notes
M.SUMMARY_MAX = 280  -- bytes, for a summary or note kept in an instance's context

-- A string with something other than white space in it.
function M.present(s) return type(s) == "string" and s:find("%S") ~= nil end

-- At most max bytes of s, cut on a UTF-8 character boundary, then "..."
-- when anything was cut.
function M.clip(s, max)
  if #s <= max then return s end
  local cut = max
  while cut > 0 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return s:sub(1, cut) .. "..."
end

-- The organization's name, or its id when there is no such record.
function M.org_name(id)
  local org = cm.organization.get(id)
  return org and org.name or id
end

return M
