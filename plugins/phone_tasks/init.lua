-- phone_tasks -- a notification channel for sites without a phone gateway:
-- each notification on the channel becomes a task for a person of the site
-- to make the call (FHIR Task, owner role care_coordinator by default).
--
-- config = {
--   organization = "riverside-clinic",  -- required: whose staff make the calls
--   channel = "phone",                 -- the channel served (default "phone")
--   role = "care_coordinator",         -- who picks the tasks up (default)
-- }
--
-- The task is "call-" .. the notification's id, so a notification delivered
-- again (after a crash) finds its task and is not called twice. Only the
-- message and the recipient's id go into the task: the caller looks the
-- number up in the record. Workflows may ask how many calls wait for a
-- patient: require "phone_tasks".waiting(patient_id).
local plugin = require "caremesh.plugin"

local cfg = plugin.config
if type(cfg.organization) ~= "string" then
  error("config.organization: required, the organization whose staff make the calls")
end
local channel = cfg.channel or "phone"
local role = cfg.role or "care_coordinator"

local PREFIX = "call-"

plugin.channel(channel, function(n)
  local id = PREFIX .. n.id
  local task, err = plugin.get("task", id)
  if task then return true end -- delivered before: the task is there, maybe being worked
  if not err:find("not found", 1, true) then return nil, err end
  local patient = plugin.get("patient", n.recipient) and n.recipient or nil
  local ok, perr = plugin.put("task", {
    id = id,
    title = "Call " .. (patient and "patient " or "") .. n.recipient,
    description = n.message,
    organization = cfg.organization,
    patient = patient,
    ownerRole = role,
    priority = n.data.priority == "urgent" and "urgent" or "routine",
    note = n.instance ~= "" and ("asked by workflow instance " .. n.instance) or nil,
  })
  if not ok then return nil, perr end
  plugin.log("info", "notification " .. n.id .. " is task " .. id)
  return true
end)

plugin.export("phone_tasks", "waiting", function(patient)
  if type(patient) ~= "string" then error("a patient id is required", 0) end
  local tasks, err = plugin.find("task", { patient = patient, status = "requested" })
  if not tasks then error(err, 0) end
  local n = 0
  for _, t in ipairs(tasks) do
    if t.id:sub(1, #PREFIX) == PREFIX then n = n + 1 end
  end
  return n
end)
