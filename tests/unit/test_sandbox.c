/*
** test_sandbox.c -- escape and exhaustion attempts against the Lua sandbox:
** each must be refused with its exact error, and the sandbox must still run
** a normal chunk afterwards.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "sandbox.h"

#define SMALL_BUDGET 100000u
#define SMALL_MEMORY ((size_t)8 * 1024 * 1024)

/* A binary chunk header (what string.dump would produce, crafted by hand),
** as a Lua string literal and as C bytes. */
#define BINARY_CHUNK_LUA "'\\27LuaT\\0\\25\\147\\r\\n\\26\\n\\4\\8\\8xV\\0\\0'"
static const char binary_chunk[] = "\x1bLuaT\x00\x19\x93\r\n\x1a\n\x04\x08\x08xV\x00\x00";

#define TEST_TIME_LIMIT_MS (10 * 60 * 1000)

static cm_sandbox *new_sandbox(uint64_t instructions, size_t memory)
{
    cm_sandbox_limits limits = {.instructions = instructions, .memory_bytes = memory};
    cm_err err = {0};
    cm_sandbox *sb = cm_sandbox_new(&limits, &err);

    if (!sb)
        fail_msg("cm_sandbox_new: %s", err.msg);
    /* The budget, not the machine's speed, must stop what these tests run:
    ** under valgrind on a loaded machine 10M instructions take longer than
    ** the default wall-time backstop. Tests of the backstop set their own. */
    cm_sandbox_set_time_limit(sb, TEST_TIME_LIMIT_MS);
    return sb;
}

static int setup_default(void **state)
{
    *state = new_sandbox(0, 0);
    return 0;
}

static int setup_small(void **state)
{
    *state = new_sandbox(SMALL_BUDGET, SMALL_MEMORY);
    return 0;
}

static int setup_small_memory(void **state)
{
    *state = new_sandbox(0, SMALL_MEMORY);
    return 0;
}

static int teardown(void **state)
{
    cm_sandbox *sb = *state;

    cm_sandbox_destroy(&sb);
    assert_null(sb);
    return 0;
}

/* Load code as chunk "=test" and call it for one result. */
static int run(cm_sandbox *sb, const char *code, cm_err *err)
{
    int rc = cm_sandbox_load(sb, "=test", code, strlen(code), err);

    if (rc == 0)
        rc = cm_sandbox_pcall(sb, 0, 1, err);
    return rc;
}

/* code must succeed and return the string want. */
static void expect_result(cm_sandbox *sb, const char *code, const char *want)
{
    lua_State *L = cm_sandbox_state(sb);
    int top = lua_gettop(L);
    cm_err err = {0};
    int rc = run(sb, code, &err);

    if (rc != 0)
        fail_msg("%s\n  failed with %s: %s", code, cm_err_name(rc), err.msg);
    assert_int_equal(lua_type(L, -1), LUA_TSTRING);
    assert_string_equal(lua_tostring(L, -1), want);
    lua_pop(L, 1);
    assert_int_equal(lua_gettop(L), top);
}

/* The sandbox still runs an ordinary chunk correctly. */
static void expect_healthy(cm_sandbox *sb)
{
    expect_result(sb,
                  "local t = {} for i = 1, 100 do t[i] = ('x'):rep(2) end\n"
                  "local co = coroutine.wrap(function(a) return a * 2 end)\n"
                  "return #t .. t[100] .. co(21) .. string.format('%d', 7)",
                  "100xx427");
}

/* code must fail with code want_rc and a message containing want_msg; the
** stack is left as it was and the sandbox stays usable. */
static void expect_refusal(cm_sandbox *sb, const char *code, int want_rc, const char *want_msg)
{
    lua_State *L = cm_sandbox_state(sb);
    int top = lua_gettop(L);
    cm_err err = {0};
    int rc = run(sb, code, &err);

    if (rc != want_rc || !strstr(err.msg, want_msg))
        fail_msg("%s\n  wanted %s containing \"%s\"\n  got %s: %s", code, cm_err_name(want_rc),
                 want_msg, cm_err_name(rc), err.msg);
    assert_int_equal(lua_gettop(L), top);
    expect_healthy(sb);
}

/* ---------------------------------------------------------------------------
** Bytecode
*/

static void test_load_refuses_binary_chunks(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb,
                  "local chunk = " BINARY_CHUNK_LUA "\n"
                  "assert(chunk:byte(1) == 27 and chunk:sub(2, 4) == 'Lua')\n"
                  "local f, e = load(chunk)\n"
                  "assert(f == nil)\n"
                  "local g, e2 = load(chunk, 'x', 'b')\n"
                  "local h, e3 = load(chunk, 'x', 'bt', {})\n"
                  "assert(g == nil and h == nil and e2 == e3)\n"
                  "return e .. '|' .. e2",
                  "attempt to load a binary chunk (mode is 't')|"
                  "attempt to load a binary chunk (mode is 't')");
    expect_refusal(sb, "return load(function() return nil end)", CM_ELUA,
                   "bad argument #1 to 'load' (string expected, got function)");
}

static void test_cm_sandbox_load_refuses_binary_chunks(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);
    cm_err err = {0};
    int top = lua_gettop(L);

    assert_int_equal(
        cm_sandbox_load(sb, "@evil.luac", binary_chunk, sizeof(binary_chunk) - 1, &err), CM_ELUA);
    assert_string_equal(err.msg, "evil.luac: attempt to load a binary chunk (mode is 't')");
    assert_int_equal(lua_gettop(L), top);
    expect_healthy(sb);
}

static void test_string_dump_is_absent(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb, "return tostring(string.dump) .. tostring(('').dump)", "nilnil");
    expect_refusal(sb, "return string.dump(print)", CM_ELUA,
                   "test:1: attempt to call a nil value (field 'dump')");
}

static void test_load_runs_text_in_the_read_only_environment(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb, "return load('return string.rep(\"a\", 2)')()", "aa");
    expect_result(sb, "local ok, e = pcall(load('leak = 1', '=inner')) return e",
                  "inner:1: attempt to assign to global 'leak' (the sandbox's globals are "
                  "read-only; use local)");
    expect_result(sb, "local env = {} load('x = 5', 'c', 't', env)() return tostring(env.x)", "5");
    expect_result(sb, "return tostring(leak) .. tostring(x)", "nilnil");
}

/* ---------------------------------------------------------------------------
** What is absent
*/

static void test_dangerous_libraries_are_absent(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb,
                  "return tostring(package) .. tostring(debug) .. tostring(io) ..\n"
                  "  tostring(dofile) .. tostring(loadfile) .. tostring(loadstring) ..\n"
                  "  tostring(unpack) .. tostring(warn) .. tostring(math.randomseed) ..\n"
                  "  tostring(_G.package) .. tostring(rawget(_G, 'print'))",
                  "nilnilnilnilnilnilnilnilnilnilnil");
    expect_refusal(sb, "package.loadlib('libc.so.6', 'system')", CM_ELUA,
                   "test:1: attempt to index a nil value (global 'package')");
    expect_refusal(sb, "return debug.getregistry()", CM_ELUA,
                   "attempt to index a nil value (global 'debug')");
    expect_refusal(sb, "return io.open('/etc/passwd')", CM_ELUA,
                   "attempt to index a nil value (global 'io')");
    expect_refusal(sb, "return dofile('/etc/passwd')", CM_ELUA,
                   "attempt to call a nil value (global 'dofile')");
}

static void test_os_offers_only_time_functions(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb,
                  "return tostring(os.execute) .. tostring(os.getenv) .. tostring(os.exit) ..\n"
                  "  tostring(os.remove) .. tostring(os.rename) .. tostring(os.tmpname) ..\n"
                  "  tostring(os.setlocale)",
                  "nilnilnilnilnilnilnil");
    expect_result(sb,
                  "assert(math.type(os.time()) == 'integer' and type(os.clock()) == 'number')\n"
                  "return os.date('!%Y-%m-%d', 0) .. ' ' .. os.difftime(10, 4)",
                  "1970-01-01 6.0");
    expect_refusal(sb, "os.execute('id')", CM_ELUA,
                   "attempt to call a nil value (field 'execute')");
}

static void test_require_refuses_standard_libraries(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "return require 'os'", CM_ELUA,
                   "test:1: module 'os' not found (the sandbox offers no modules)");
    expect_refusal(sb, "return require 'io'", CM_ELUA, "module 'io' not found");
    expect_refusal(sb, "return require 'debug'", CM_ELUA, "module 'debug' not found");
    expect_refusal(sb, "return require 'package'", CM_ELUA, "module 'package' not found");
}

static void test_collectgarbage_offers_only_count(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb, "return tostring(collectgarbage('count') > 0)", "true");
    expect_refusal(sb, "collectgarbage('stop')", CM_ELUA,
                   "test:1: collectgarbage('stop') is not allowed in the sandbox (only 'count')");
    expect_refusal(sb, "collectgarbage()", CM_ELUA,
                   "collectgarbage('collect') is not allowed in the sandbox");
    expect_refusal(sb, "collectgarbage('generational')", CM_ELUA, "is not allowed in the sandbox");
}

/* ---------------------------------------------------------------------------
** Read-only globals and libraries
*/

static void test_assigning_a_global_is_refused(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "x = 1", CM_ELUA,
                   "test:1: attempt to assign to global 'x' (the sandbox's globals are "
                   "read-only; use local)");
    expect_refusal(sb, "_G.print = nil", CM_ELUA, "attempt to assign to global 'print'");
    expect_refusal(sb, "_ENV[1] = true", CM_ELUA,
                   "attempt to assign to the sandbox's read-only globals (number key)");
    expect_refusal(sb, "function helper() end", CM_ELUA, "attempt to assign to global 'helper'");
    expect_result(sb, "local y = 2 return tostring(undefined_global) .. y", "nil2");
}

static void test_rawset_on_globals_is_refused(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "rawset(_G, 'leak', 1)", CM_ELUA,
                   "test:1: bad argument #1 to 'rawset' (the table's metatable is protected)");
    expect_refusal(sb, "rawset(_ENV, 'leak', 1)", CM_ELUA, "the table's metatable is protected");
    expect_refusal(sb, "rawset(string, 'rep', print)", CM_ELUA,
                   "the table's metatable is protected");
    expect_refusal(sb, "table.insert(_G, 'leak')", CM_ELUA,
                   "attempt to assign to the sandbox's read-only globals");
    expect_result(sb, "return tostring(leak) .. tostring(rawget(_G, 'leak')) .. #_G", "nilnil0");
    /* rawset still works on the script's own tables */
    expect_result(sb, "local t = rawset({}, 'k', 'v') return t.k", "v");
}

static void test_replacing_env_affects_only_that_chunk(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb, "local print = print _ENV = {x = 'own'} return x", "own");
    expect_result(sb, "return type(print) .. tostring(x)", "functionnil");
}

static void test_library_tables_are_read_only(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "string.rep = nil", CM_ELUA,
                   "test:1: attempt to modify read-only table 'string' (field 'rep')");
    expect_refusal(sb, "math.floor = function() return 0 end", CM_ELUA,
                   "attempt to modify read-only table 'math' (field 'floor')");
    expect_refusal(sb, "table.insert = nil", CM_ELUA, "read-only table 'table'");
    expect_refusal(sb, "coroutine.create = nil", CM_ELUA, "read-only table 'coroutine'");
    expect_refusal(sb, "os.time = nil", CM_ELUA, "read-only table 'os'");
    expect_refusal(sb, "utf8.char = nil", CM_ELUA, "read-only table 'utf8'");
    expect_refusal(sb, "setmetatable(string, {})", CM_ELUA, "cannot change a protected metatable");
    /* still intact, in a new chunk, through the library and the string methods */
    expect_result(sb, "return ('x'):rep(3) .. string.rep('y', 2) .. math.floor(2.5)", "xxxyy2");
    expect_result(sb, "return tostring(getmetatable(string)) .. tostring(getmetatable(_G))",
                  "falsefalse");
    /* pairs lists a library without handing out its backing table */
    expect_result(sb,
                  "local n, seen = 0, {} for k, v in pairs(string) do n = n + 1 seen[k] = v end\n"
                  "local g = {} for k in pairs(_G) do g[k] = true end\n"
                  "return tostring(n > 10 and seen.rep == string.rep and g.print and g.string)",
                  "true");
}

static void test_string_metatable_cannot_be_poisoned(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb, "return tostring(getmetatable(''))", "false");
    expect_refusal(sb, "getmetatable('').__index = {rep = function() return 'pwned' end}", CM_ELUA,
                   "test:1: attempt to index a boolean value");
    expect_refusal(sb, "getmetatable('').__index.rep = nil", CM_ELUA,
                   "attempt to index a boolean value");
    expect_refusal(sb, "setmetatable('', {})", CM_ELUA,
                   "bad argument #1 to 'setmetatable' (table expected, got string)");
    expect_result(sb, "return ('x'):rep(3) .. ('%d'):format(5) .. ('10' + 1)", "xxx511");
}

static void test_gc_metamethods_are_refused(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "setmetatable({}, {__gc = function() while true do end end})", CM_ELUA,
                   "bad argument #2 to 'setmetatable' (__gc metamethods are not allowed in the "
                   "sandbox)");
    expect_refusal(sb,
                   "local mt = {} setmetatable({}, mt)\n"
                   "mt.__gc = function() end setmetatable({}, mt)",
                   CM_ELUA, "__gc metamethods are not allowed");
    expect_result(
        sb, "local t = setmetatable({}, {__index = function() return 'v' end}) return t.k", "v");
}

/* ---------------------------------------------------------------------------
** Instruction budget
*/

static void test_infinite_loop_exhausts_the_budget(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "while true do end", CM_EBUDGET,
                   "test:1: instruction budget of 10000000 exhausted");
}

static void test_pcall_cannot_swallow_the_budget(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "while true do pcall(function() while true do end end) end", CM_EBUDGET,
                   "instruction budget of 100000 exhausted");
    expect_refusal(sb, "pcall(function() while true do end end) return 'escaped'", CM_EBUDGET,
                   "instruction budget of 100000 exhausted");
    expect_refusal(sb,
                   "local function f() while true do end end\n"
                   "for i = 1, 10 do pcall(pcall, pcall, f) end return 'escaped'",
                   CM_EBUDGET, "instruction budget");
    expect_refusal(sb, "local ok = pcall(table.move, {}, 1, 1 << 40, 1) return 'escaped'",
                   CM_EBUDGET, "instruction budget");
}

static void test_xpcall_handlers_cannot_swallow_the_budget(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb,
                   "xpcall(function() while true do end end, function(m) return m end)\n"
                   "return 'escaped'",
                   CM_EBUDGET, "instruction budget of 100000 exhausted");
    expect_refusal(sb,
                   "xpcall(function() while true do end end, function() while true do end end)\n"
                   "return 'escaped'",
                   CM_EBUDGET, "instruction budget");
    expect_refusal(sb,
                   "while true do xpcall(function() while true do end end,\n"
                   "  function() return pcall(function() while true do end end) end) end",
                   CM_EBUDGET, "instruction budget");
    expect_refusal(sb,
                   "do local guard <close> = setmetatable({}, {__close = function()\n"
                   "  while true do end end}) while true do end end",
                   CM_EBUDGET, "instruction budget");
}

static void test_coroutines_cannot_escape_the_budget(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "coroutine.wrap(function() while true do end end)()", CM_EBUDGET,
                   "instruction budget of 100000 exhausted");
    expect_refusal(sb, "pcall(coroutine.wrap(function() while true do end end)) return 'escaped'",
                   CM_EBUDGET, "instruction budget");
    expect_refusal(sb,
                   "local co = coroutine.create(function() while true do end end)\n"
                   "while true do coroutine.resume(co) end",
                   CM_EBUDGET, "instruction budget");
    expect_refusal(sb,
                   "local co = coroutine.create(function() while true do end end)\n"
                   "local ok, e = coroutine.resume(co) return 'escaped'",
                   CM_EBUDGET, "instruction budget");
    expect_refusal(sb,
                   "local co = coroutine.wrap(function() coroutine.wrap(function()\n"
                   "  while true do end end)() end) pcall(co) return 'escaped'",
                   CM_EBUDGET, "instruction budget");
}

static void test_budget_counts_instructions_inside_coroutines(void **state)
{
    cm_sandbox *sb = *state;

    /* the main thread runs ~10k instructions, the coroutine ~2M */
    expect_refusal(sb,
                   "local co = coroutine.wrap(function()\n"
                   "  while true do for i = 1, 900 do end coroutine.yield() end end)\n"
                   "for i = 1, 1000 do co() end return 'escaped'",
                   CM_EBUDGET, "instruction budget");
}

/* Load code and call it with the value on top of the stack (popped) as its
** argument, for one result. */
static int run_with(cm_sandbox *sb, const char *code, cm_err *err)
{
    lua_State *L = cm_sandbox_state(sb);
    int rc = cm_sandbox_load(sb, "=test", code, strlen(code), err);

    if (rc) {
        lua_pop(L, 1);
        return rc;
    }
    lua_insert(L, -2); /* stack: chunk, argument */
    return cm_sandbox_pcall(sb, 1, 1, err);
}

static void test_coroutine_kept_across_calls_is_metered(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);
    cm_err err = {0};

    /* the host keeps a suspended coroutine from one call to the next */
    assert_int_equal(run(sb,
                         "return coroutine.create(function()\n"
                         "  local x <close> = setmetatable({}, {__close = function()\n"
                         "    while true do end end})\n"
                         "  coroutine.yield() while true do end end)",
                         &err),
                     0);
    assert_int_equal(lua_type(L, -1), LUA_TTHREAD);
    lua_pushvalue(L, -1);
    assert_int_equal(run_with(sb, "local co = ... coroutine.resume(co) coroutine.resume(co)", &err),
                     CM_EBUDGET);
    assert_non_null(strstr(err.msg, "instruction budget of 100000 exhausted"));
    /* it died of the kill: closing it later must not run its __close unmetered */
    lua_pushvalue(L, -1);
    assert_int_equal(run_with(sb, "local ok, e = coroutine.close(...) return e", &err), 0);
    assert_string_equal(lua_tostring(L, -1),
                        "cannot close a coroutine killed by the sandbox's limits");
    lua_pop(L, 2);

    /* the same with the function coroutine.wrap returns */
    assert_int_equal(run(sb,
                         "local f = coroutine.wrap(function()\n"
                         "  local x <close> = setmetatable({}, {__close = function()\n"
                         "    while true do end end})\n"
                         "  coroutine.yield() while true do end end)\n"
                         "f() return f",
                         &err),
                     0);
    lua_pushvalue(L, -1);
    assert_int_equal(run_with(sb, "local f = ... f()", &err), CM_EBUDGET);
    lua_pushvalue(L, -1);
    assert_int_equal(run_with(sb, "local f = ... return select(2, pcall(f))", &err), 0);
    assert_string_equal(lua_tostring(L, -1), "cannot resume dead coroutine");
    lua_pop(L, 2);
    assert_int_equal(lua_gettop(L), 0);
    expect_healthy(sb);
}

static void test_killed_coroutines_do_not_run_close_handlers(void **state)
{
    cm_sandbox *sb = *state;

    /* an error raised by the count hook leaves hooks off in a coroutine that
    ** dies of it: its __close handlers must not run */
    expect_refusal(sb,
                   "local co = coroutine.wrap(function()\n"
                   "  local x <close> = setmetatable({}, {__close = function()\n"
                   "    while true do end end})\n"
                   "  while true do end end)\n"
                   "co()",
                   CM_EBUDGET, "instruction budget of 100000 exhausted");
    expect_refusal(sb,
                   "local co = coroutine.create(function()\n"
                   "  local x <close> = setmetatable({}, {__close = function()\n"
                   "    while true do end end})\n"
                   "  while true do end end)\n"
                   "pcall(coroutine.resume, co) coroutine.close(co)",
                   CM_EBUDGET, "instruction budget");
    /* a suspended coroutine's __close handlers run metered */
    expect_refusal(sb,
                   "local co = coroutine.create(function()\n"
                   "  local x <close> = setmetatable({}, {__close = function()\n"
                   "    while true do end end})\n"
                   "  coroutine.yield() end)\n"
                   "coroutine.resume(co) pcall(coroutine.close, co) return 'escaped'",
                   CM_EBUDGET, "instruction budget");
    expect_result(sb,
                  "local log = {} local co = coroutine.create(function()\n"
                  "  local x <close> = setmetatable({}, {__close = function()\n"
                  "    log[#log + 1] = 'closed' end})\n"
                  "  coroutine.yield() end)\n"
                  "coroutine.resume(co) assert(coroutine.close(co)) return log[1]",
                  "closed");
    expect_refusal(sb, "coroutine.close(coroutine.running())", CM_ELUA,
                   "test:1: cannot close a running coroutine");
}

static void test_costly_instructions_are_stopped_by_time(void **state)
{
    cm_sandbox *sb = *state;

    /* few instructions, each copying ever more arguments */
    cm_sandbox_set_time_limit(sb, 200);
    expect_refusal(sb, "local function f(...) return f(1, ...) end f()", CM_EBUDGET,
                   "test:1: instruction budget of 10000000 exhausted (ran for more than 200 ms)");
    cm_sandbox_set_time_limit(sb, TEST_TIME_LIMIT_MS);
    expect_refusal(sb, "while true do end", CM_EBUDGET,
                   "instruction budget of 10000000 exhausted\n");
}

static void test_budget_is_configurable(void **state)
{
    cm_sandbox *small = *state;
    cm_sandbox *dflt = new_sandbox(0, 0);
    static const char loop[] = "local n = 0 for i = 1, 1e6 do n = n + 1 end return tostring(n)";

    expect_refusal(small, loop, CM_EBUDGET, "instruction budget of 100000 exhausted");
    expect_result(dflt, loop, "1000000");
    /* the budget is per call: many calls of a cheap chunk are fine */
    for (int i = 0; i < 50; i++)
        expect_result(small, "local n = 0 for i = 1, 1e4 do n = n + 1 end return tostring(n)",
                      "10000");
    cm_sandbox_destroy(&dflt);
}

static void test_table_move_is_charged_per_element(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "table.move({}, 1, 1 << 40, 1)", CM_EBUDGET,
                   "test:1: instruction budget of 100000 exhausted");
    expect_refusal(sb, "table.move({}, 1, math.maxinteger - 1, 2)", CM_EBUDGET,
                   "instruction budget");
    expect_result(sb, "return table.concat(table.move({1, 2, 3}, 1, 3, 2), ',')", "1,1,2,3");
}

static void test_empty_string_rep_returns_at_once(void **state)
{
    cm_sandbox *sb = *state;

    expect_result(sb, "return '[' .. string.rep('', 1e18) .. ('').rep('', 1 << 62, '') .. ']'",
                  "[]");
    expect_result(sb,
                  "return string.rep('ab', 3, '-') .. string.rep('a', 0) .. string.rep('', 1, ',')",
                  "ab-ab-ab");
}

/* ---------------------------------------------------------------------------
** Memory cap
*/

static void test_string_rep_bomb_hits_the_memory_cap(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "return string.rep('x', 1 << 30)", CM_EMEMCAP,
                   "memory cap of 67108864 bytes exceeded");
    expect_refusal(sb, "return ('x'):rep(1 << 28, ',')", CM_EMEMCAP, "memory cap");
    /* past 2 GiB Lua refuses by itself */
    expect_refusal(sb, "return ('x'):rep(1 << 62, ',')", CM_ELUA,
                   "test:1: resulting string too large");
}

static void test_doubling_bomb_hits_the_memory_cap(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "local s = 'x' while true do s = s .. s end", CM_EMEMCAP,
                   "memory cap of 8388608 bytes exceeded");
    expect_refusal(sb, "local t = {'x'} while true do t[#t + 1] = table.concat(t) end", CM_EMEMCAP,
                   "memory cap of 8388608 bytes exceeded");
}

static void test_table_bomb_hits_the_memory_cap(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "local t = {} for i = 1, math.huge do t[i] = i end", CM_EMEMCAP,
                   "memory cap of 8388608 bytes exceeded");
    expect_refusal(sb, "local t = {} for i = 1, math.huge do t[i] = {} end", CM_EMEMCAP,
                   "memory cap");
}

static void test_pcall_cannot_swallow_the_memory_cap(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "local ok = pcall(string.rep, 'x', 1 << 30) return 'escaped'", CM_EMEMCAP,
                   "memory cap of 8388608 bytes exceeded");
    expect_refusal(sb,
                   "local ok = pcall(function() local t = {} for i = 1, math.huge do\n"
                   "  t[i] = {} end end) return 'escaped'",
                   CM_EMEMCAP, "memory cap");
    expect_refusal(sb,
                   "local co = coroutine.wrap(function() local s = 'x'\n"
                   "  while true do s = s .. s end end)\n"
                   "local ok = pcall(co) return 'escaped'",
                   CM_EMEMCAP, "memory cap");
    expect_refusal(sb, "local f, e = load(('x = 1 '):rep(1e6)) return 'escaped'", CM_EMEMCAP,
                   "memory cap");
}

static void test_memory_returns_to_baseline_after_a_bomb(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);
    size_t baseline, after;

    expect_healthy(sb);
    lua_gc(L, LUA_GCCOLLECT);
    baseline = cm_sandbox_memory(sb);
    assert_true(baseline > 0);
    expect_refusal(sb, "local t = {} for i = 1, math.huge do t[i] = ('x'):rep(64) .. i end",
                   CM_EMEMCAP, "memory cap");
    /* each full collection halves Lua's string table at most once */
    for (int i = 0; i < 8; i++)
        lua_gc(L, LUA_GCCOLLECT);
    after = cm_sandbox_memory(sb);
    if (after > baseline + 16 * 1024)
        fail_msg("memory after the bomb: %zu bytes, baseline %zu", after, baseline);
}

/* Freed small blocks are handed out again (sandbox.c, the size-class
** lists): tables that grow through every class and past the largest, and
** shrink, keep what they hold, also when their blocks come from the lists;
** what Lua uses goes back to its baseline once they are collected. */
static void test_reused_blocks_keep_what_they_hold(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);
    static const char *code =
        "local ts, want, sum = {}, 0, 0\n"
        "for n = 1, 80 do\n"
        "  local t = {}\n"
        "  for i = 1, n do t[i] = i * 3 end\n"
        "  for i = 1, n, 2 do t['k' .. i] = ('v'):rep(i) end\n"
        "  ts[n] = t\n"
        "end\n"
        "for n = 1, 80, 3 do ts[n] = nil end\n"
        "for n = 1, 80 do\n"
        "  local t = ts[n]\n"
        "  if t then\n"
        "    for i = n, 1, -1 do sum = sum + t[i]; t[i] = nil end\n"
        "    for i = 1, n, 2 do sum = sum + #t['k' .. i] end\n"
        "    for i = 1, 40 do t['z' .. i] = i end\n"
        "    for i = 1, 40 do sum = sum + t['z' .. i] end\n"
        "    for i = 1, n do want = want + i * 3 end\n"
        "    for i = 1, n, 2 do want = want + i end\n"
        "    want = want + 820\n"
        "  end\n"
        "end\n"
        "return sum == want and 'same' or ('sum ' .. sum .. ' want ' .. want)";
    lua_gc(L, LUA_GCCOLLECT);
    size_t baseline = cm_sandbox_memory(sb);
    for (int round = 0; round < 3; round++) {
        expect_result(sb, code, "same");
        lua_gc(L, LUA_GCCOLLECT);
    }
    lua_gc(L, LUA_GCCOLLECT);
    size_t after = cm_sandbox_memory(sb);
    if (after > baseline + 16 * 1024)
        fail_msg("memory after the rounds: %zu bytes, baseline %zu", after, baseline);
}

static void test_memory_cap_too_small_for_a_state(void **state)
{
    cm_sandbox_limits limits = {.memory_bytes = 2048};
    cm_err err = {0};

    (void)state;
    assert_null(cm_sandbox_new(&limits, &err));
    assert_int_equal(err.code, CM_EMEMCAP);
    assert_non_null(strstr(err.msg, "memory cap of 2048 bytes is too small"));
}

/* ---------------------------------------------------------------------------
** Lua's own limits
*/

static void test_deep_recursion_is_a_stack_overflow(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "local function f() return 1 + f() end return f()", CM_ELUA,
                   "test:1: stack overflow (more than 10000 nested calls)");
    expect_refusal(sb, "local function f() return 1 + f() end pcall(f) return 'escaped'", CM_ELUA,
                   "stack overflow");
    expect_refusal(sb,
                   "local t = setmetatable({}, {__index = function(t, k) return t[k] end})\n"
                   "return t.x",
                   CM_ELUA, "test:1: C stack overflow");
    expect_result(sb, "local function f() return tostring(select(2, pcall(f))) end return f()",
                  "C stack overflow");
    /* large frames reach Lua's own limit on stack slots first */
    expect_refusal(sb,
                   "local function f(...) local t = {...} return 1 + f(table.unpack(t, 1, 200))"
                   " end return f()",
                   CM_ELUA, "stack overflow");
}

static void test_huge_unpack_is_refused(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "return table.unpack({}, 1, 1e8)", CM_ELUA,
                   "test:1: too many results to unpack");
}

static void test_huge_format_width_is_refused(void **state)
{
    cm_sandbox *sb = *state;

    expect_refusal(sb, "return string.format('%99999d', 1)", CM_ELUA,
                   "test:1: invalid conversion specification: '%99999d'");
}

/* ---------------------------------------------------------------------------
** Errors
*/

static void test_syntax_error_names_chunk_and_line(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);
    static const char code[] = "local a = 1\nlocal = 2\n";
    cm_err err = {0};

    assert_int_equal(cm_sandbox_load(sb, "@workflows/referral.lua", code, strlen(code), &err),
                     CM_ELUA);
    assert_string_equal(err.msg, "workflows/referral.lua:2: <name> expected near '='");
    assert_int_equal(lua_gettop(L), 0);
    expect_result(sb, "local f, e = load('x = = 1', '=inner') return e",
                  "inner:1: unexpected symbol near '='");
}

static void test_runtime_error_has_location_and_traceback(void **state)
{
    cm_sandbox *sb = *state;
    cm_err err = {0};

    assert_int_equal(run(sb, "local function boom() error('boom') end\nboom()", &err), CM_ELUA);
    assert_true(strncmp(err.msg, "test:1: boom\nstack traceback:", 29) == 0);
    assert_non_null(strstr(err.msg, "in local 'boom'"));
    expect_refusal(sb, "error({})", CM_ELUA, "(error object is a table value)");
    expect_refusal(sb, "error(setmetatable({}, {__tostring = function() return 'custom' end}))",
                   CM_ELUA, "custom\nstack traceback:");
}

/* Load code as chunk "=test" above the handler, push the integer args
** 2, 3, ..., and call it through cm_sandbox_pcall_msgh. */
static int run_msgh(cm_sandbox *sb, const char *code, int nargs, int nresults, cm_err *err)
{
    lua_State *L = cm_sandbox_state(sb);
    cm_sandbox_push_msgh(sb);
    int rc = cm_sandbox_load(sb, "=test", code, strlen(code), err);
    if (rc != 0)
        return rc;
    for (int i = 0; i < nargs; i++)
        lua_pushinteger(L, i + 2);
    return cm_sandbox_pcall_msgh(sb, nargs, nresults, err);
}

/* The handler pushed by the caller stays under the results on success and
** goes with everything above it on failure; errors keep their traceback,
** and neither the budget nor a script's pcall changes that. */
static void test_pcall_msgh_leaves_its_handler_under_the_results(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);
    int top = lua_gettop(L);
    cm_err err = {0};

    assert_int_equal(run_msgh(sb, "local a, b = ... return a + b, 'two'", 2, 2, &err), 0);
    assert_int_equal(lua_gettop(L), top + 3);
    assert_int_equal(lua_type(L, top + 1), LUA_TFUNCTION);
    assert_int_equal(lua_tointeger(L, top + 2), 5);
    assert_string_equal(lua_tostring(L, top + 3), "two");
    lua_settop(L, top);
    assert_int_equal(run_msgh(sb, "local function boom() error('boom') end\nboom()", 0, 0, &err),
                     CM_ELUA);
    assert_true(strncmp(err.msg, "test:1: boom\nstack traceback:", 29) == 0);
    assert_int_equal(lua_gettop(L), top);
    assert_int_equal(run_msgh(sb, "while true do end", 0, 1, &err), CM_EBUDGET);
    assert_int_equal(lua_gettop(L), top);
    assert_int_equal(
        run_msgh(sb, "pcall(function() while true do end end) return 'kept'", 0, 1, &err),
        CM_EBUDGET);
    assert_int_equal(lua_gettop(L), top);
    assert_int_equal(run_msgh(sb, "return 'again'", 0, 1, &err), 0); /* the budget is rearmed */
    assert_string_equal(lua_tostring(L, -1), "again");
    lua_settop(L, top);
}

/* ---------------------------------------------------------------------------
** Modules, host globals, print, files
*/

static int module_opens;

static int open_testmod(lua_State *L)
{
    module_opens++;
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, 42);
    lua_setfield(L, -2, "answer");
    return 1;
}

static int open_flag(lua_State *L)
{
    (void)L;
    return 0; /* a module with no value: require gives true */
}

static void test_require_returns_preloaded_modules(void **state)
{
    cm_sandbox *sb = *state;

    module_opens = 0;
    cm_sandbox_preload(sb, "testmod", open_testmod);
    cm_sandbox_preload(sb, "flag", open_flag);
    assert_int_equal(module_opens, 0); /* lazily */
    expect_result(sb, "return tostring(require('testmod').answer)", "42");
    expect_result(sb, "return tostring(rawequal(require 'testmod', require 'testmod'))", "true");
    expect_result(sb, "return tostring(require 'flag')", "true");
    assert_int_equal(module_opens, 1);
    expect_refusal(sb, "require('testmod').answer = 0", CM_ELUA,
                   "attempt to modify read-only table 'testmod' (field 'answer')");
    expect_refusal(sb, "rawset(require('testmod'), 'answer', 0)", CM_ELUA,
                   "the table's metatable is protected");
    expect_result(sb, "return tostring(require('testmod').answer)", "42");
    expect_refusal(sb, "return require 'nope'", CM_ELUA,
                   "test:1: module 'nope' not found (the sandbox offers: testmod, flag)");
}

static void test_host_globals_are_read_only_for_scripts(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);

    lua_pushstring(L, "from host");
    lua_setglobal(L, "host_value");
    expect_result(sb, "return host_value", "from host");
    expect_refusal(sb, "host_value = 1", CM_ELUA, "attempt to assign to global 'host_value'");
    expect_result(sb, "return host_value", "from host");
}

static int push_view(lua_State *L)
{
    lua_createtable(L, 0, 2);
    lua_pushstring(L, "referral");
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, 3);
    lua_setfield(L, -2, "steps");
    cm_sandbox_push_readonly(L, -1, "workflow");
    lua_setglobal(L, "workflow");
    return 0;
}

static void test_read_only_views_for_bindings(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);

    lua_pushcfunction(L, push_view);
    assert_int_equal(lua_pcall(L, 0, 0, 0), LUA_OK);
    expect_result(
        sb,
        "local keys = {} for k, v in pairs(workflow) do keys[#keys + 1] = k .. '=' .. v end\n"
        "table.sort(keys) return table.concat(keys, ' ') .. ' ' .. workflow.name\n"
        "  .. tostring(getmetatable(workflow))",
        "name=referral steps=3 referralfalse");
    expect_refusal(sb, "workflow.steps = 0", CM_ELUA,
                   "test:1: attempt to modify read-only table 'workflow' (field 'steps')");
    expect_refusal(sb, "rawset(workflow, 'steps', 0)", CM_ELUA,
                   "the table's metatable is protected");
    /* the iterator hands out keys and values, never the table behind the view */
    expect_result(sb,
                  "local f, t, k = pairs(workflow)\n"
                  "return tostring(rawequal(t, workflow)) .. tostring(k) .. workflow.steps",
                  "truenil3");
}

static void test_print_writes_to_stdout(void **state)
{
    cm_sandbox *sb = *state;
    FILE *tmp = tmpfile();
    char out[128] = {0};
    int saved;

    assert_non_null(tmp);
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDOUT_FILENO) >= 0);
    expect_result(sb,
                  "print('a', 1, nil, true, setmetatable({}, {__tostring = function()\n"
                  "  return 'T' end})) return 'ok'",
                  "ok");
    fflush(stdout);
    assert_true(dup2(saved, STDOUT_FILENO) >= 0);
    close(saved);
    rewind(tmp);
    assert_true(fread(out, 1, sizeof(out) - 1, tmp) > 0);
    fclose(tmp);
    assert_string_equal(out, "a\t1\tnil\ttrue\tT\n");
}

static void test_dofile_of_a_missing_file_names_it(void **state)
{
    cm_sandbox *sb = *state;
    cm_err err = {0};

    assert_int_equal(cm_sandbox_dofile(sb, "/nonexistent/admin.lua", 0, &err), CM_EIO);
    assert_string_equal(err.msg, "/nonexistent/admin.lua: No such file or directory");
    assert_int_equal(cm_sandbox_dofile(sb, "/", 0, &err), CM_EIO);
    assert_string_equal(err.msg, "/: not a regular file");
    /* a FIFO would block a reader forever: refused without waiting */
    char fifo[] = "/tmp/caremesh-fifo-XXXXXX";
    int fd = mkstemp(fifo);
    assert_true(fd >= 0);
    close(fd);
    unlink(fifo);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(cm_sandbox_dofile(sb, fifo, 0, &err), CM_EIO);
    assert_non_null(strstr(err.msg, "not a regular file"));
    unlink(fifo);
    expect_healthy(sb);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_require_finds_modules_in_module_dirs(void **state)
{
    cm_sandbox *sb = *state;
    cm_err err = {0};
    char dir[] = "/tmp/caremesh-mods-XXXXXX", path[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/lib", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/lib/greet.lua", dir);
    write_text(path, "local M = {}\nfunction M.hello(n) return 'hello ' .. n end\nreturn M\n");
    snprintf(path, sizeof(path), "%s/lib/broken.lua", dir);
    write_text(path, "local M = {\nreturn M\n");
    assert_int_equal(cm_sandbox_add_module_dir(sb, dir, &err), 0);
    assert_int_equal(cm_sandbox_add_module_dir(sb, dir, &err), 0); /* once is enough */
    expect_result(sb, "return require('lib.greet').hello('ana')", "hello ana");
    /* cached, and read-only for every script */
    expect_result(sb, "return tostring(require('lib.greet') == require('lib.greet'))", "true");
    assert_int_equal(run(sb, "require('lib.greet').hello = nil", &err), CM_ELUA);
    assert_non_null(strstr(err.msg, "read-only"));
    /* a module with a syntax error names its file and line */
    assert_int_equal(run(sb, "require('lib.broken')", &err), CM_ELUA);
    assert_non_null(strstr(err.msg, "lib/broken.lua:2:"));
    /* names that could leave the directory are not even looked up */
    assert_int_equal(run(sb, "require('..lib.greet')", &err), CM_ELUA);
    assert_non_null(strstr(err.msg, "not found"));
    assert_int_equal(run(sb, "require('lib/greet')", &err), CM_ELUA);
    assert_non_null(strstr(err.msg, "not found"));
    assert_int_equal(run(sb, "require('lib.absent')", &err), CM_ELUA);
    assert_non_null(strstr(err.msg, "module 'lib.absent' not found"));
    snprintf(path, sizeof(path), "%s/lib/greet.lua", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lib/broken.lua", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lib", dir);
    rmdir(path);
    rmdir(dir);
    expect_healthy(sb);
}

static void test_dofile_runs_a_file_and_names_it_in_errors(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);
    char path[] = "/tmp/test_sandbox_XXXXXX";
    static const char good[] = "#!/usr/bin/env caremesh\nlocal x = 20\nreturn x + 1\n";
    static const char bad[] = "#!/usr/bin/env caremesh\nlocal x = 20\nerror('bad ' .. x)\n";
    cm_err err = {0};
    int fd = mkstemp(path);
    FILE *f;

    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(good, 1, strlen(good), f), strlen(good));
    fclose(f);
    assert_int_equal(cm_sandbox_dofile(sb, path, 1, &err), 0);
    assert_int_equal(lua_tointeger(L, -1), 21);
    lua_pop(L, 1);

    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(bad, 1, strlen(bad), f), strlen(bad));
    fclose(f);
    assert_int_equal(cm_sandbox_dofile(sb, path, 0, &err), CM_ELUA);
    unlink(path);
    {
        char want[128];
        snprintf(want, sizeof(want), "%s:3: bad 20\nstack traceback:", path);
        assert_true(strncmp(err.msg, want, strlen(want)) == 0);
    }
    assert_int_equal(lua_gettop(L), 0);
}

/* A host function that calls back into the sandbox: the nested call shares
** the outer call's budget. */
static cm_sandbox *nested_sb;

static int host_callback(lua_State *L)
{
    cm_err err = {0};

    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    if (cm_sandbox_pcall(nested_sb, 0, 1, &err) != 0)
        return luaL_error(L, "callback failed: %s", err.msg);
    return 1;
}

static void test_nested_calls_share_the_budget(void **state)
{
    cm_sandbox *sb = *state;
    lua_State *L = cm_sandbox_state(sb);

    nested_sb = sb;
    lua_register(L, "callback", host_callback);
    expect_result(sb, "return callback(function() return 'inner' end)", "inner");
    expect_refusal(sb, "pcall(callback, function() while true do end end) return 'escaped'",
                   CM_EBUDGET, "instruction budget of 100000 exhausted");
    expect_refusal(sb, "for i = 1, 1000 do callback(function() for j = 1, 1000 do end end) end",
                   CM_EBUDGET, "instruction budget");
}

int main(void)
{
#define DEFAULT_TEST(t)      cmocka_unit_test_setup_teardown(t, setup_default, teardown)
#define SMALL_TEST(t)        cmocka_unit_test_setup_teardown(t, setup_small, teardown)
#define SMALL_MEMORY_TEST(t) cmocka_unit_test_setup_teardown(t, setup_small_memory, teardown)
    const struct CMUnitTest tests[] = {
        DEFAULT_TEST(test_load_refuses_binary_chunks),
        DEFAULT_TEST(test_cm_sandbox_load_refuses_binary_chunks),
        DEFAULT_TEST(test_string_dump_is_absent),
        DEFAULT_TEST(test_load_runs_text_in_the_read_only_environment),
        DEFAULT_TEST(test_dangerous_libraries_are_absent),
        DEFAULT_TEST(test_os_offers_only_time_functions),
        DEFAULT_TEST(test_require_refuses_standard_libraries),
        DEFAULT_TEST(test_collectgarbage_offers_only_count),
        DEFAULT_TEST(test_assigning_a_global_is_refused),
        DEFAULT_TEST(test_rawset_on_globals_is_refused),
        DEFAULT_TEST(test_replacing_env_affects_only_that_chunk),
        DEFAULT_TEST(test_library_tables_are_read_only),
        DEFAULT_TEST(test_string_metatable_cannot_be_poisoned),
        SMALL_TEST(test_gc_metamethods_are_refused),
        DEFAULT_TEST(test_infinite_loop_exhausts_the_budget),
        SMALL_TEST(test_pcall_cannot_swallow_the_budget),
        SMALL_TEST(test_pcall_msgh_leaves_its_handler_under_the_results),
        SMALL_TEST(test_xpcall_handlers_cannot_swallow_the_budget),
        SMALL_TEST(test_coroutines_cannot_escape_the_budget),
        SMALL_TEST(test_budget_counts_instructions_inside_coroutines),
        SMALL_TEST(test_coroutine_kept_across_calls_is_metered),
        SMALL_TEST(test_killed_coroutines_do_not_run_close_handlers),
        DEFAULT_TEST(test_costly_instructions_are_stopped_by_time),
        SMALL_TEST(test_budget_is_configurable),
        SMALL_TEST(test_table_move_is_charged_per_element),
        SMALL_TEST(test_empty_string_rep_returns_at_once),
        DEFAULT_TEST(test_string_rep_bomb_hits_the_memory_cap),
        SMALL_MEMORY_TEST(test_doubling_bomb_hits_the_memory_cap),
        SMALL_MEMORY_TEST(test_table_bomb_hits_the_memory_cap),
        SMALL_MEMORY_TEST(test_pcall_cannot_swallow_the_memory_cap),
        SMALL_MEMORY_TEST(test_memory_returns_to_baseline_after_a_bomb),
        SMALL_MEMORY_TEST(test_reused_blocks_keep_what_they_hold),
        cmocka_unit_test(test_memory_cap_too_small_for_a_state),
        DEFAULT_TEST(test_deep_recursion_is_a_stack_overflow),
        DEFAULT_TEST(test_huge_unpack_is_refused),
        DEFAULT_TEST(test_huge_format_width_is_refused),
        DEFAULT_TEST(test_syntax_error_names_chunk_and_line),
        DEFAULT_TEST(test_runtime_error_has_location_and_traceback),
        DEFAULT_TEST(test_require_returns_preloaded_modules),
        DEFAULT_TEST(test_host_globals_are_read_only_for_scripts),
        DEFAULT_TEST(test_read_only_views_for_bindings),
        DEFAULT_TEST(test_print_writes_to_stdout),
        DEFAULT_TEST(test_dofile_of_a_missing_file_names_it),
        DEFAULT_TEST(test_dofile_runs_a_file_and_names_it_in_errors),
        DEFAULT_TEST(test_require_finds_modules_in_module_dirs),
        SMALL_TEST(test_nested_calls_share_the_budget),
    };
#undef DEFAULT_TEST
#undef SMALL_TEST
#undef SMALL_MEMORY_TEST
    return cmocka_run_group_tests(tests, NULL, NULL);
}
