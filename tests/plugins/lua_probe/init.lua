-- lua_probe -- a Lua plugin that uses every hook of caremesh.plugin, for
-- tests/unit/test_lplugin.c: events, a channel that succeeds, refuses, raises
-- or spins, functions for workflows (luaprobe.*), records, its config, a
-- module of its own directory, and the refusals it must meet.
local plugin = require "caremesh.plugin"
local helper = require "helper"

local seen = {}

plugin.log("info", "lua probe " .. plugin.name .. " says " .. tostring(plugin.config.greeting))

for _, e in ipairs { "instance_started", "state_changed", "instance_ended", "task_created",
                     "message_sent", "message_received" } do
  plugin.on(e, function(ev)
    seen[#seen + 1] = ev.event .. ":" .. ev.instance .. ":" .. ev.from .. ">" .. ev.to
  end)
end

plugin.channel("pager", function(n)
  if n.data.fail then return nil, "pager offline" end
  if n.data.raise then error("pager exploded") end
  if n.data.spin then while true do end end
  seen[#seen + 1] = "paged:" .. n.id .. ":" .. n.recipient .. ":" .. n.message
  return true
end)

plugin.export("luaprobe", "seen", function() return seen end)
plugin.export("luaprobe", "add", function(a, b) return helper.add(a, b) end)
plugin.export("luaprobe", "family", function(id)
  local p, err = plugin.get("patient", id)
  if not p then error(err, 0) end
  return p.name.family
end)
plugin.export("luaprobe", "put", function(kind, rec) return assert(plugin.put(kind, rec)) end)
plugin.export("luaprobe", "find", function(kind, query, opts)
  local found, err = plugin.find(kind, query, opts)
  if not found then error(err, 0) end
  return found
end)
plugin.export("luaprobe", "instances", function(filter)
  local list, err = plugin.instances(filter)
  if not list then error(err, 0) end
  return list
end)
plugin.export("luaprobe", "late", function()
  plugin.on("state_changed", function() end)
end)

-- what the host must refuse
local ok, err = pcall(plugin.export, "caremesh", "x", function() end)
assert(not ok and err:find("refused", 1, true), "exporting into caremesh was accepted")
ok, err = pcall(plugin.on, "sunrise", function() end)
assert(not ok and err:find("sunrise", 1, true), "an unknown event was accepted")
ok, err = pcall(plugin.channel, "Bad Name", function() end)
assert(not ok and err:find("refused", 1, true), "a bad channel name was accepted")
ok = pcall(plugin.put, "patient", { id = "x", colour = function() end })
assert(not ok, "a function went into a record")
