-- helper.lua -- a module of lua_probe's own directory (require "helper").
return {
  add = function(a, b) return a + b end,
}
