-- lua_bad -- a Lua plugin whose init fails at line 4: the host must refuse it,
-- naming it and this file's line.
local plugin = require "caremesh.plugin"
plugin.log("info", "about to fail " .. plugin.config.missing.field)
