-- lua_spin.lua -- a Lua plugin (a single file) that never finishes loading:
-- the instruction budget stops it.
while true do end
