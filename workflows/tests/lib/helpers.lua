-- tests/lib/helpers.lua -- helpers the workflow tests share: reading the
-- effect rows (a small JSON reader, messages sent, notifications, KPIs),
-- tasks at one organization, an instance's context, starting with
-- defaults, and refusals that must change nothing. Test files get it with
-- `local h = require "lib.helpers"` (the test's own directory is searched
-- first; no workflow module may be called lib.helpers).
--
-- Used by test_referral.lua, test_referral_intake.lua, test_outreach.lua and
-- test_vaccination.lua.
local t = require "caremesh.test"
local cm = require "caremesh"

local M = {}

-- A small JSON reader for the effect rows (payload, labels, data are JSON text).
function M.decode(s)
  local pos = 1
  local value
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local function str()
    local out, i = {}, pos + 1
    while true do
      local c = s:sub(i, i)
      if c == '"' then pos = i + 1; return table.concat(out) end
      if c == "\\" then
        local e = s:sub(i + 1, i + 1)
        if e == "u" then
          out[#out + 1] = utf8.char(tonumber(s:sub(i + 2, i + 5), 16)); i = i + 6
        else
          out[#out + 1] = ({ b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" })[e] or e; i = i + 2
        end
      else
        out[#out + 1] = c; i = i + 1
      end
    end
  end
  local function list(close, item)
    local r = {}
    pos = pos + 1; ws()
    if s:sub(pos, pos) == close then pos = pos + 1; return r end
    repeat
      item(r); ws()
      local c = s:sub(pos, pos); pos = pos + 1
    until c == close
    return r
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      return list("}", function(r) ws(); local k = str(); ws(); pos = pos + 1; r[k] = value() end)
    elseif c == "[" then
      return list("]", function(r) r[#r + 1] = value() end)
    elseif c == '"' then
      return str()
    end
    for word, v in pairs { ["true"] = true, ["false"] = false, null = cm.null } do
      if s:find("^" .. word, pos) then pos = pos + #word; return v end
    end
    local num = s:match("^-?[%d.eE+-]+", pos)
    pos = pos + #num
    return tonumber(num)
  end
  return value()
end

-- A copy of base with the fields of over (optional) on top; a field set to
-- false in over is left out.
function M.with(base, over)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(over or {}) do out[k] = v or nil end
  return out
end

-- The context of instance id.
function M.ctx(id) return t.instance(id).context end

-- The keys of tbl, sorted (e.g. the patients of a running campaign).
function M.sorted_keys(tbl)
  local keys = {}
  for k in pairs(tbl) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- Start workflow with input; it must start, in state.
function M.start(workflow, input, state)
  local id, got = t.start(workflow, input)
  t.ok(id, "start refused: " .. tostring(got))
  t.eq(got, state, "state after start")
  return id
end

-- Starting workflow with input (without its field drop, when given) is
-- refused, with a message containing fragment.
function M.refused_start(workflow, input, fragment, drop)
  if drop then input[drop] = nil end
  local id, msg = t.start(workflow, input)
  t.eq(id, nil, "started with " .. fragment)
  t.ok(msg and msg:find(fragment, 1, true), tostring(msg) .. " lacks " .. fragment)
end

-- The event is refused, with a message containing fragment, and nothing moves.
function M.refused(id, event, payload, fragment)
  local before, status = t.state(id)
  local steps = #t.instance(id).history
  local state, msg = t.signal(id, event, payload)
  t.eq(state, nil, event .. " accepted in " .. before)
  -- no transition, or every guard said no: either way the message names the event
  fragment = fragment or ('event "' .. event .. '"')
  t.ok(msg and msg:find(fragment, 1, true),
       event .. ": message " .. tostring(msg) .. " lacks " .. tostring(fragment))
  t.expect_state(id, before, status)
  t.eq(#t.instance(id).history, steps, event .. ": history grew")
end

-- The messages sent so far (of kind, when given), payloads decoded.
function M.sent(kind)
  local out = {}
  for _, s in ipairs(t.sent()) do
    if not kind or s.kind == kind then
      out[#out + 1] = { to = s.to, kind = s.kind, payload = M.decode(s.payload), instance = s.instance }
    end
  end
  return out
end

-- The notifications to patient so far (whose data has kind = kind, when given).
function M.sent_to(patient, kind)
  local out = {}
  for _, n in ipairs(t.notifications()) do
    if n.to == patient and (not kind or n.data:find('"kind":"' .. kind .. '"', 1, true)) then
      out[#out + 1] = n
    end
  end
  return out
end

-- The KPI rows named name so far (whose labels hold fragment, when given).
function M.kpis(name, fragment)
  local out = {}
  for _, k in ipairs(t.kpis()) do
    if k.name == name and (not fragment or (k.labels or ""):find(fragment, 1, true)) then
      out[#out + 1] = k
    end
  end
  return out
end

-- A task finder for one organization: tasks(filter) is cm.task.find(filter)
-- with filter.organization defaulting to organization.
function M.tasks_at(organization)
  return function(filter)
    filter = filter or {}
    filter.organization = filter.organization or organization
    return cm.task.find(filter)
  end
end

-- got is want, give or take rounding.
function M.near(got, want, what)
  t.ok(math.abs(got - want) < 1e-9, (what or "value") .. ": got " .. tostring(got) .. ", want " .. want)
end

return M
