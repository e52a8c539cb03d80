-- summary.lua -- print what a node holds, the way a partnership lead reads it.
local cm = require "caremesh"

local function name_of(n) return table.concat(n.given or {}, " ") .. " " .. n.family end
local function line(fmt, ...) print(string.format(fmt, ...)) end

line("Node %s (caremesh %s)", cm.node_id, cm.version)
line("")
line("Organizations")
for _, o in ipairs(cm.organization.list()) do
  line("  %-20s %-36s %-20s node %s", o.id, o.name, o.kind, o.node or "-")
end
line("")
line("Providers by role")
local by_role = {}
for _, p in ipairs(cm.provider.list()) do
  by_role[p.role] = (by_role[p.role] or 0) + 1
end
local roles = {}
for r in pairs(by_role) do roles[#roles + 1] = r end
table.sort(roles)
for _, r in ipairs(roles) do line("  %-20s %d", r, by_role[r]) end
line("")
line("Partnerships")
for _, ps in ipairs(cm.partnership.list()) do
  line("  %s: %s [%s, review %s]", ps.id, ps.name, ps.status, ps.reviewCadence)
  line("    purpose: %s", ps.purpose)
  for _, m in ipairs(ps.members) do
    line("    member %-18s offers %s; requests %s", m.organization,
         table.concat(m.offers or {}, ", "), table.concat(m.requests or {}, ", "))
  end
  for _, t in ipairs(ps.terms or {}) do
    line("    %-18s may receive %s for %s", t.receiver, table.concat(t.classes, ", "),
         table.concat(t.purposes, ", "))
  end
  for _, c in ipairs(ps.champions or {}) do
    local ch, bk = cm.provider.get(c.champion), cm.provider.get(c.backup)
    line("    champion at %-18s %s (backup %s)", c.organization, name_of(ch.name), name_of(bk.name))
  end
  for _, k in ipairs(ps.kpis or {}) do
    line("    KPI %-22s target %s%s", k.name, tostring(k.target or "-"), k.unit and (" " .. k.unit) or "")
  end
end
line("")
local e11 = cm.patient.find { condition = "E11" }
line("Patients with type 2 diabetes (E11): %d of %d", #e11, cm.patient.count())
for _, p in ipairs(e11) do
  line("  %-12s %-16s born %s, prefers %s in %s", p.id, name_of(p.name), p.birthDate,
       p.preferredChannel or "-", p.language or "-")
end
line("")
line("Consents")
for _, c in ipairs(cm.consent.list()) do
  line("  %-12s %-6s %-12s with %s", c.patient, c.decision, c.purpose, c.organization or "any partner")
end
line("")
line("Care teams")
for _, t in ipairs(cm.care_team.list()) do
  line("  %s for %s:", t.name or t.id, t.patient)
  for _, m in ipairs(t.participants) do
    line("    %-24s %-10s (%s)", m.role, m.member, m.onBehalfOf)
  end
end
line("")
line("Open tasks")
for _, t in ipairs(cm.task.find { status = "requested" }) do
  line("  [%s] %s, due %s, for %s", t.priority, t.title, t.due or "-", t.owner or t.ownerRole)
end
