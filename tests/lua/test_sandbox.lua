-- test_sandbox.lua -- the sandbox as a script sees it through `caremesh lua`:
-- what is absent, what is read-only, and that refusals leave the host serving.
-- (The exhaustive escape and exhaustion suite is tests/unit/test_sandbox.c,
-- which can also check kills that no script survives to report.)
local passed, failed = 0, 0
local function test(name, fn)
  local ok, err = pcall(fn)
  if ok then passed = passed + 1 else failed = failed + 1; print("FAIL " .. name .. ": " .. tostring(err)) end
end
local function raises(fn, frag)
  local ok, err = pcall(fn)
  if ok then error("expected an error", 2) end
  if not string.find(tostring(err), frag, 1, true) then
    error("error '" .. tostring(err) .. "' lacks '" .. frag .. "'", 2)
  end
end

test("no io, debug, package, dofile, loadfile, string.dump", function()
  assert(io == nil and debug == nil and package == nil)
  assert(dofile == nil and loadfile == nil and string.dump == nil)
end)

test("os offers time only", function()
  assert(type(os.time()) == "number" and type(os.clock()) == "number")
  assert(os.date("!%Y", 0) == "1970")
  assert(os.execute == nil and os.getenv == nil and os.exit == nil and os.remove == nil)
end)

test("require reaches only host modules", function()
  raises(function() require "io" end, "module 'io' not found")
  raises(function() require "os" end, "module 'os' not found")
  assert(require("caremesh").node_id == "lua-test-node")
end)

test("binary chunks are refused", function()
  local f, err = load("\27Lua\84\0garbage")
  assert(f == nil and err:find("binary chunk", 1, true), err)
end)

test("globals are read-only", function()
  raises(function() x = 1 end, "attempt to assign to global 'x'")
  raises(function() _G.print = nil end, "attempt to assign to global 'print'")
  raises(function() rawset(_G, "y", 1) end, "metatable is protected")
  assert(x == nil and y == nil)
end)

test("library tables are read-only", function()
  raises(function() string.rep = nil end, "read-only")
  raises(function() math.floor = function() return 0 end end, "read-only")
  assert(("ab"):rep(2) == "abab" and math.floor(2.5) == 2)
end)

test("the string metatable is out of reach", function()
  assert(getmetatable("") == false)
  raises(function() setmetatable("", {}) end, "table expected")
end)

test("collectgarbage is count only", function()
  assert(type(collectgarbage("count")) == "number")
  raises(function() collectgarbage("stop") end, "not allowed")
end)

test("errors inside pcall are ordinary errors", function()
  local ok, err = pcall(error, "boom")
  assert(not ok and err == "boom")
end)

print(string.format("%d passed, %d failed", passed, failed))
if failed > 0 then error(failed .. " sandbox test(s) failed", 0) end
