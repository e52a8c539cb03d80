-- lib/checks.lua -- checking what a workflow is given: input fields when an
-- instance starts, and the events partners send. A failed input check
-- raises a message without a position (error level 0), so the refusal reads
-- the same whichever file raised it.
--
-- Used by referral.lua, referral_intake.lua, outreach.lua, vaccination.lua and
-- vaccination_course.lua.
local M = {}

-- A check function for a workflow's input: check(ok, msg) raises
-- "<prefix>: <msg>" unless ok. E.g. local check = checks.checker("outreach").
function M.checker(prefix)
  return function(ok, msg)
    if not ok then error(prefix .. ": " .. msg, 0) end
  end
end

-- A referral's priority: "routine" or "urgent"; raises otherwise.
function M.priority(p)
  if p ~= "routine" and p ~= "urgent" then
    error(string.format("input.priority: expected \"routine\" or \"urgent\", got %q", tostring(p)), 0)
  end
  return p
end

-- A partner's message is about the referral `referral`: it names that one,
-- or none (then it is taken as about this one).
function M.about(ev, referral) return ev.referral == nil or ev.referral == referral end

return M
