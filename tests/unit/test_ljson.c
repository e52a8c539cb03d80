/*
** test_ljson.c -- Lua values <-> JSON: shapes, and every value that cannot be
** carried refused with its path.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ljson.h"
#include "text.h"

/* Evaluate expr (with `null` bound to the sentinel) and convert it. */
static int convert(const char *expr, char **json, cm_err *err)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    cm_ljson_init(L);
    cm_ljson_push_null(L);
    lua_setglobal(L, "null");
    char code[1024];
    snprintf(code, sizeof(code), "return %s", expr);
    assert_int_equal(luaL_dostring(L, code), 0);
    cJSON *doc = NULL;
    int rc = cm_ljson_from_lua(L, -1, "patient", &doc, err);
    *json = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    lua_close(L);
    return rc;
}

static void expect_json(const char *expr, const char *want)
{
    char *json = NULL;
    cm_err err;
    assert_int_equal(convert(expr, &json, &err), 0);
    /* compare as documents: Lua does not keep the order of named fields */
    cJSON *got = cJSON_Parse(json), *expected = cJSON_Parse(want);
    bool same = cJSON_Compare(got, expected, true);
    cJSON_Delete(got);
    cJSON_Delete(expected);
    if (!same)
        fail_msg("got %s, want %s", json, want);
    free(json);
}

static void expect_refusal(const char *expr, const char *want)
{
    char *json = NULL;
    cm_err err;
    assert_int_equal(convert(expr, &json, &err), CM_EINVAL);
    assert_null(json);
    if (!strstr(err.msg, want))
        fail_msg("message '%s' lacks '%s'", err.msg, want);
}

static void test_shapes(void **state)
{
    expect_json("{id='p1', given={'Ana','Maria'}}",
                "{\"id\":\"p1\",\"given\":[\"Ana\",\"Maria\"]}");
    expect_json("{}", "{}");
    expect_json("{n=3, x=1.5, ok=true, gone=null}",
                "{\"n\":3,\"x\":1.5,\"ok\":true,\"gone\":null}");
    expect_json("'text'", "\"text\"");
}

static void test_uncarriable_values_name_their_path(void **state)
{
    expect_refusal("{name={given={'a', print}}}", "patient.name.given[1]: a function cannot");
    expect_refusal("{1, 2, x=3}", "patient: table mixes array items and named fields");
    expect_refusal("{[1]='a', [3]='c'}", "patient: array has holes");
    expect_refusal("{[true]=1}", "patient: a key of type boolean");
    expect_refusal("{[2.5]=1}", "patient: a key of type number");
    /* a name met first, then a key of another kind (objects are written in one walk) */
    for (int i = 0; i < 8; i++) { /* hash order varies with the keys: several tables */
        char expr[160];
        snprintf(expr, sizeof(expr),
                 "(function() local t = {a%d = 1, b = 2}; t[%d] = 3 return t end)()", i, 10 + i);
        expect_refusal(expr, "patient: table mixes array items and named fields");
        snprintf(expr, sizeof(expr),
                 "(function() local t = {a%d = 1, b = 2}; t[%d.5] = 3 return t end)()", i, i);
        expect_refusal(expr, "patient: a key of type number");
        snprintf(expr, sizeof(expr), "{a%d = 1, b = {c = 1, [true] = 2}}", i);
        expect_refusal(expr, "patient.b: a key of type boolean");
    }
    expect_refusal("{x=0/0}", "patient.x: number is not finite");
    expect_refusal("{x=math.huge}", "patient.x: number is not finite");
    expect_refusal("{x=1<<60}", "patient.x: integer too large");
    expect_refusal("{x='a\\0b'}", "patient.x: string contains a NUL byte");
    expect_refusal("{x='\\xff\\xfe'}", "patient.x: string is not valid UTF-8");
    expect_refusal("{x='\\xed\\xa0\\x80'}", "patient.x: string is not valid UTF-8");
    expect_refusal("{x=io.stdout}", "patient.x: a userdata cannot be carried");
    expect_refusal("(function() local t = {} t.self = t return t end)()",
                   "nested more than 32 levels deep");
}

/* The path of an error is written only when there is one: fields and
** positions at every level, a name cut at its NUL, the whole cut to 511
** characters as before. */
static void test_error_paths_name_every_level(void **state)
{
    (void)state;
    expect_refusal("{a = {{b = {1, 2, {c = print}}}}}", "patient.a[0].b[2].c: a function cannot");
    expect_refusal("{list = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, print}}",
                   "patient.list[11]: a function cannot");
    expect_refusal("{a = {['x\\0y'] = 1}}", "patient.a.x: field name contains a NUL byte");
    expect_refusal("{a = {b = 1, c = {d = 1, [true] = 2}}}", "patient.a.c: a key of type boolean");
    /* a cycle of arrays: 32 positions, then the error */
    char want[200];
    size_t n = (size_t)snprintf(want, sizeof(want), "patient");
    for (int i = 0; i < 32; i++)
        n += (size_t)snprintf(want + n, sizeof(want) - n, "[0]");
    snprintf(want + n, sizeof(want) - n, ": nested more than 32 levels deep");
    expect_refusal("(function() local t = {} t[1] = t return t end)()", want);
    /* a path longer than 511 characters is cut there: no ".x" after the name */
    char *json = NULL;
    cm_err err;
    assert_int_equal(convert("{[string.rep('k', 600)] = {x = print}}", &json, &err), CM_EINVAL);
    char cut[600];
    n = (size_t)snprintf(cut, sizeof(cut), "patient.");
    memset(cut + n, 'k', 511 - n);
    snprintf(cut + 511, sizeof(cut) - 511, ": a function cannot");
    if (strncmp(err.msg, cut, strlen(cut)) != 0)
        fail_msg("message '%s' does not start with '%s'", err.msg, cut);
}

/* The exact text of the value expr returns (cm_ljson_encode). */
static void expect_text(const char *expr, const char *want)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    char code[1024], *text = NULL;
    size_t len = 0;
    cm_err err;
    snprintf(code, sizeof(code), "return %s", expr);
    assert_int_equal(luaL_dostring(L, code), 0);
    assert_int_equal(cm_ljson_encode(L, -1, "ctx", &text, &len, &err), 0);
    if (strcmp(text, want) != 0)
        fail_msg("got %s, want %s", text, want);
    assert_int_equal(len, strlen(want));
    free(text);
    lua_close(L);
}

/* Names and strings of plain ASCII are copied whole; any other byte takes
** the checked, escaped path, in a name as in a value, at any position. */
static void test_names_and_strings_written_exactly(void **state)
{
    (void)state;
    expect_text("{['a\"b\\\\c\\n'] = 'x\\1y'}", "{\"a\\\"b\\\\c\\n\":\"x\\u0001y\"}");
    expect_text("{['\\u{e9}t\\u{e9}'] = 'ok\\127'}", "{\"\xc3\xa9t\xc3\xa9\":\"ok\\u007f\"}");
    expect_text("{m = -(1 << 53)}", "{\"m\":-9007199254740992}");
    expect_text("{m = 1 << 53}", "{\"m\":9007199254740992}");
    expect_text("{m = 3.0}", "{\"m\":3}");
    /* a plain string longer than the text's first buffer, then one with a
    ** byte to escape at its end */
    char want[400];
    size_t n = 0;
    n += (size_t)snprintf(want + n, sizeof(want) - n, "{\"s\":\"");
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(want + n, sizeof(want) - n, "abcdefgh");
    snprintf(want + n, sizeof(want) - n, "\"}");
    expect_text("{s = string.rep('abcdefgh', 40)}", want);
    snprintf(want + n, sizeof(want) - n, "\\\"\"}");
    expect_text("{s = string.rep('abcdefgh', 40) .. '\"'}", want);
    expect_refusal("{['k\\0z'] = 1}", "patient.k: field name contains a NUL byte");
    expect_refusal("{['ok'] = 'plain' .. '\\0'}", "patient.ok: string contains a NUL byte");
    expect_refusal("{['ok'] = 'plain\\xe9'}", "patient.ok: string is not valid UTF-8");
}

/* Each byte that needs a check or an escape, at every position of strings
** up to 40 bytes long (the plain scan reads 16 bytes at a time with SSE2,
** the last 16 again when they overlap, 8 at a time without), between plain
** bytes of both edges of the plain range (' ' and '~'): the text is the
** string escaped byte by byte. */
static void test_every_byte_position_is_seen(void **state)
{
    (void)state;
    static const char *const specials[] = {"\"", "\\", "\x01", "\x1f", "\x7f", "\xc3\xa9", "\n"};
    lua_State *L = luaL_newstate();
    for (size_t k = 0; k < sizeof(specials) / sizeof(specials[0]); k++)
        for (size_t len = 1; len <= 40; len++) /* past two of SSE2's sixteen bytes */
            for (size_t at = 0; at + strlen(specials[k]) <= len; at++) {
                char str[48], want[320];
                size_t n = 0, w = 0;
                for (size_t i = 0; i < at; i++)
                    str[n++] = i % 2 ? '~' : ' ';
                memcpy(str + n, specials[k], strlen(specials[k]));
                n += strlen(specials[k]);
                for (; n < len; n++)
                    str[n] = n % 2 ? ' ' : '~';
                want[w++] = '"';
                for (size_t i = 0; i < n; i++) {
                    char esc[6];
                    size_t e = cm_json_escape_byte((unsigned char)str[i], esc);
                    if (e) {
                        memcpy(want + w, esc, e);
                        w += e;
                    } else {
                        want[w++] = str[i];
                    }
                }
                want[w++] = '"';
                want[w] = '\0';
                lua_pushlstring(L, str, n);
                char *text = NULL;
                size_t tlen = 0;
                cm_err err;
                assert_int_equal(cm_ljson_encode(L, -1, "s", &text, &tlen, &err), 0);
                if (strcmp(text, want) != 0)
                    fail_msg("special %zu at %zu of %zu: got %s, want %s", k, at, len, text, want);
                assert_int_equal(tlen, w);
                free(text);
                lua_pop(L, 1);
            }
    lua_close(L);
}

static void test_utf8_is_carried(void **state)
{
    expect_json("{name='Jos\\u{e9} \\u{1F600}'}", "{\"name\":\"Jos\xc3\xa9 \xf0\x9f\x98\x80\"}");
}

/* The text the encoder writes reads back (cJSON) as the same document, also
** for the characters JSON must escape (and DEL, as every escaper here does)
** and numbers that need every digit. */
static void test_encoded_text_reads_back(void **state)
{
    expect_json("{s='q\"b\\\\s\\n\\r\\t\\b\\f\\1\\31 /\\127'}",
                "{\"s\":\"q\\\"b\\\\s\\n\\r\\t\\b\\f\\u0001\\u001f /\\u007f\"}");
    expect_json("{a=0.1, b=1/3, c=-2.5e-300, d=3.0, e=-0.0, f=1e20, g=-(1<<53), h={{}, {1}}}",
                "{\"a\":0.1,\"b\":0.33333333333333331,\"c\":-2.5e-300,\"d\":3,\"e\":0,"
                "\"f\":1e20,\"g\":-9007199254740992,\"h\":[{},[1]]}");
    expect_json("{a=0, b=-1, c=1234567890123, d=1<<53, e=7.0e15, f={-10, 10, 99}}",
                "{\"a\":0,\"b\":-1,\"c\":1234567890123,\"d\":9007199254740992,"
                "\"e\":7000000000000000,\"f\":[-10,10,99]}");
    lua_State *L = luaL_newstate();
    cm_err err;
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(luaL_dostring(L, "return {list={1, 'two', false}}"), 0);
    assert_int_equal(cm_ljson_encode(L, -1, "ctx", &text, &len, &err), 0);
    assert_string_equal(text, "{\"list\":[1,\"two\",false]}");
    assert_int_equal(len, strlen(text));
    free(text);
    assert_int_equal(luaL_dostring(L, "return {x={y=function() end}}"), 0);
    assert_int_equal(cm_ljson_encode(L, -1, "ctx", &text, &len, &err), CM_EINVAL);
    assert_null(text);
    assert_non_null(strstr(err.msg, "ctx.x.y: a function cannot be carried"));
    lua_close(L);
}

static void test_push_roundtrip(void **state)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    cm_ljson_init(L);
    cJSON *doc = cJSON_Parse("{\"a\":[1,2.5,\"x\",true,null],\"b\":{\"c\":\"d\"}}");
    cJSON **box = cm_ljson_box(L);
    *box = doc;
    cm_ljson_push(L, doc);
    lua_setglobal(L, "v");
    assert_int_equal(luaL_dostring(L, "assert(v.a[1] == 1 and math.type(v.a[1]) == 'integer')\n"
                                      "assert(v.a[2] == 2.5 and v.a[3] == 'x' and v.a[4] == true)\n"
                                      "assert(v.a[5] ~= nil and type(v.a[5]) == 'userdata')\n"
                                      "assert(v.b.c == 'd')"),
                     0);
    lua_close(L); /* the box frees doc */
}

/* ---- object text read straight into Lua ---------------------------------- */

static int cjson_mallocs;
static void *counting_malloc(size_t n)
{
    cjson_mallocs++;
    return malloc(n);
}

/* The value cm_ljson_push_object_text pushes for the text (light userdata 1), or nil. */
static int l_read_text(lua_State *L)
{
    if (!cm_ljson_push_object_text(L, lua_touserdata(L, 1)))
        lua_pushnil(L);
    return 1;
}

/* The value of the old route: cJSON_Parse, then cm_ljson_push; nil if not an object. */
static int l_read_cjson(lua_State *L)
{
    cJSON **box = cm_ljson_box(L);
    *box = cJSON_Parse(lua_touserdata(L, 1));
    if (!cJSON_IsObject(*box))
        lua_pushnil(L);
    else
        cm_ljson_push(L, *box);
    return 1;
}

/* Same types (integer or float too), values and iteration order: the same tables. */
static const char SAME_LUA[] =
    "local function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then return math.type(a) == math.type(b) and a == b end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  local k1, v1 = next(a)\n"
    "  local k2, v2 = next(b)\n"
    "  while k1 ~= nil or k2 ~= nil do\n"
    "    if k1 ~= k2 or not same(v1, v2) then return false end\n"
    "    k1, v1 = next(a, k1)\n"
    "    k2, v2 = next(b, k2)\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "return same";

/* Read text both ways (each in a protected call) and check they agree. */
static void expect_same_read(lua_State *L, const char *text)
{
    int top = lua_gettop(L);
    int rc1 = (lua_pushcfunction(L, l_read_text), lua_pushlightuserdata(L, (void *)text),
               lua_pcall(L, 1, 1, 0));
    int rc2 = (lua_pushcfunction(L, l_read_cjson), lua_pushlightuserdata(L, (void *)text),
               lua_pcall(L, 1, 1, 0));
    /* stack: result or error of each */
    if (rc1 != rc2)
        fail_msg("%s: read %s, cJSON route %s", text, rc1 ? lua_tostring(L, -2) : "ok",
                 rc2 ? lua_tostring(L, -1) : "ok");
    if (rc1 != LUA_OK) {
        assert_string_equal(lua_tostring(L, -2), lua_tostring(L, -1));
    } else {
        lua_getglobal(L, "same");
        lua_pushvalue(L, -3);
        lua_pushvalue(L, -3);
        lua_call(L, 2, 1);
        if (!lua_toboolean(L, -1))
            fail_msg("%s: the two routes give different tables", text);
    }
    lua_settop(L, top);
}

static void test_object_text_reads_as_cjson_would(void **state)
{
    static const char *texts[] = {
        "{}",
        " {\"a\":1} ",
        "{\"n\":3,\"x\":1.5,\"s\":\"t\",\"b\":true,\"f\":false,\"z\":null}",
        "{\"a\":[1,2,[3,{\"b\":[]}]],\"c\":{\"d\":{\"e\":\"f\"}},\"g\":[]}",
        "{\"a\":1,\"a\":2,\"b\":[1],\"b\":{\"c\":3}}",
        "{\"s\":\"q\\\"b\\\\s\\/n\\nr\\rt\\tb\\bf\\f\",\"e\":\"\"}",
        "{\"s\":\"\\u00e9\\u4e2d\\u0041\\u007f\\u0080\\u07FF\\u0800\\uFFFF\",\"k\\u00e9\":1}",
        "{\"s\":\"\\ud83d\\ude00\",\"lone\":\"\\ud83d\",\"low\":\"\\ude00\"}",
        "{\"s\":\"\\u0000x\",\"t\":\"a\\u00zzb\",\"u\":\"a\\qb\"}",
        "{\"raw\":\"x\x01y\x7f\xc3\xa9\",\"k\":\"\xff\xfe\"}",
        "{\"a\":-0,\"b\":0.5,\"c\":1e3,\"d\":1E-2,\"e\":123456789012345,\"f\":1234567890123456,"
        "\"g\":12345678901234567890,\"h\":-9007199254740993,\"i\":1.0,\"j\":2.5e300,"
        "\"k\":-123456789012345,\"l\":1e400,\"m\":-1e-400,\"n\":0.1,\"o\":3.0e0,\"p\":9e15}",
        "{\"long\":1.00000000000000000000000000000000000000000000000000000000000001}",
        "{\"long\":100000000000000000000000000000000000000000000000000000000000000000000}",
        "{\"k\":01}",
        "{\"k\":+1}",
        "{\"k\":1.}",
        "{\"k\":.5}",
        "{\"k\":1e}",
        "{\"k\":0x10}",
        "{\"k\":-}",
        "{\"a\":1}x",
        "{\"a\":1}  \n",
        "\xef\xbb\xbf{\"a\":1}",
        "{\t\"a\"\n:\r1 ,\x01\"b\" : [ 1 , 2 ] }",
        "[1,2]",
        "\"s\"",
        "3",
        "",
        "   ",
        "{",
        "{\"a\":}",
        "{\"a\" 1}",
        "{a:1}",
        "{\"a\":1,}",
        "{\"a\":[1,]}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":fals}",
        "{\"a\":\"unterminated}",
        "{\"a\":[1,2}",
        "{\"a\":{\"b\":1]}",
    };
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    cm_ljson_init(L);
    assert_int_equal(luaL_dostring(L, SAME_LUA), 0);
    lua_setglobal(L, "same");
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        expect_same_read(L, texts[i]);
    /* nesting at cJSON's limit (the root and 999 below it) and past it:
    ** what cJSON reads is pushed, by either route */
    for (int levels = CM_JSON_DEPTH_MAX - 3; levels <= CM_JSON_DEPTH_MAX + 1; levels++) {
        char text[2 * CM_JSON_DEPTH_MAX + 16];
        int n = snprintf(text, sizeof(text), "{\"a\":");
        for (int k = 0; k < levels; k++)
            text[n++] = '[';
        for (int k = 0; k < levels; k++)
            text[n++] = ']';
        text[n++] = '}';
        text[n] = '\0';
        expect_same_read(L, text);
        lua_pushcfunction(L, l_read_text);
        lua_pushlightuserdata(L, text);
        assert_int_equal(lua_pcall(L, 1, 1, 0), LUA_OK);
        assert_int_equal(lua_type(L, -1), levels < CM_JSON_DEPTH_MAX ? LUA_TTABLE : LUA_TNIL);
        lua_pop(L, 1);
    }
    /* many fields and items */
    size_t cap = 64 * 1024, n = 0;
    char *big = malloc(cap);
    assert_non_null(big);
    n += (size_t)snprintf(big + n, cap - n, "{");
    for (int k = 0; k < 500; k++)
        n += (size_t)snprintf(big + n, cap - n, "\"f%d\":%d,", k, k * 7 - 1000);
    n += (size_t)snprintf(big + n, cap - n, "\"list\":[");
    for (int k = 0; k < 2000; k++)
        n += (size_t)snprintf(big + n, cap - n, "%s%d.25", k ? "," : "", k);
    snprintf(big + n, cap - n, "]}");
    expect_same_read(L, big);
    free(big);
    /* an ordinary context is read without a cJSON document */
    cJSON_Hooks hooks = {counting_malloc, free};
    cJSON_InitHooks(&hooks);
    cjson_mallocs = 0;
    assert_true(cm_ljson_push_object_text(
        L, "{\"n\":12,\"appointment\":\"2026-12-01T09:00:00Z\",\"tags\":[\"a\",\"b\"],\"x\":0.5}"));
    assert_int_equal(cjson_mallocs, 0);
    assert_false(cm_ljson_push_object_text(L, "[1]"));
    assert_true(cjson_mallocs > 0); /* what the reader does not take, cJSON reads */
    cJSON_InitHooks(NULL);
    lua_close(L);
}

/* Does expr's text read back as the same? (cm_ljson_encode_same) */
static bool reads_back_same(const char *expr)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    cm_ljson_init(L);
    cm_ljson_push_null(L);
    lua_setglobal(L, "null");
    char code[1024], *text = NULL;
    cm_err err;
    bool same = true;
    snprintf(code, sizeof(code), "return %s", expr);
    assert_int_equal(luaL_dostring(L, code), 0);
    assert_int_equal(cm_ljson_encode_same(L, -1, "wf.ctx", &text, NULL, &same, &err), 0);
    free(text);
    lua_close(L);
    return same;
}

/* What a kept context must not hold: what its text would read back as
** something else. */
static void test_encode_tells_what_reads_back_the_same(void **state)
{
    assert_true(reads_back_same("{}"));
    assert_true(reads_back_same("{n = 3, s = 'x', b = true, z = null, f = 1.5, big = 2^60}"));
    assert_true(reads_back_same("{list = {1, 2, {a = {}}}, sub = {deep = {deeper = {}}}}"));
    assert_false(reads_back_same("{f = 2.0}"));
    assert_false(reads_back_same("{f = -0.0}"));
    assert_false(reads_back_same("{list = {1, 2.0}}"));
    assert_false(reads_back_same("(function() local t = {} return {a = t, b = t} end)()"));
    assert_false(reads_back_same("(function() local t = {} return {a = {t}, b = {x = t}} end)()"));
    assert_false(reads_back_same("{m = setmetatable({}, {})}"));
    assert_false(reads_back_same("setmetatable({}, {})"));
    char many[900];
    size_t n = (size_t)snprintf(many, sizeof(many), "{");
    for (int i = 0; i < 70; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "{},");
    snprintf(many + n, sizeof(many) - n, "}");
    assert_false(reads_back_same(many)); /* more tables than it tells apart */
    n = (size_t)snprintf(many, sizeof(many), "{");
    for (int i = 0; i < 60; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "{},");
    snprintf(many + n, sizeof(many) - n, "}");
    assert_true(reads_back_same(many));
}

/* A Lua state for the copy's tests. */
static lua_State *copy_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    cm_ljson_init(L);
    return L;
}

/* Push what expr returns and cm_ljson_encode_copy it as "ctx" (buf fresh). */
static int copy_expr(lua_State *L, const char *expr, cm_ljson_buf *buf, bool *same, cm_err *err)
{
    char code[1024];
    snprintf(code, sizeof(code), "return %s", expr);
    assert_int_equal(luaL_dostring(L, code), 0);
    *buf = (cm_ljson_buf){0};
    return cm_ljson_encode_copy(L, lua_gettop(L), "ctx", buf, same, err);
}

/* expr is copied: the same text as cm_ljson_encode, the copy pushed above
** the value; then the two are the globals orig and copy, and check (Lua)
** must return true. The stack is emptied. */
static void expect_copy(lua_State *L, const char *expr, const char *check)
{
    cm_err err;
    cm_ljson_buf buf;
    bool same = false;
    char *plain = NULL;
    assert_int_equal(copy_expr(L, expr, &buf, &same, &err), 0);
    int top = lua_gettop(L);
    assert_true(same);
    assert_int_equal(cm_ljson_encode(L, top - 1, "ctx", &plain, NULL, &err), 0);
    assert_string_equal(buf.s, plain);
    assert_int_equal(buf.len, strlen(plain));
    free(buf.s);
    free(plain);
    lua_setglobal(L, "copy");
    lua_setglobal(L, "orig");
    assert_int_equal(luaL_dostring(L, check), 0);
    assert_true(lua_toboolean(L, -1));
    lua_settop(L, 0);
}

/* expr is not copied: it fails with rc, its message containing want, or
** (rc 0) its text, containing want, reads back as something else; nothing
** is left on the stack but the value. */
static void expect_no_copy(lua_State *L, const char *expr, int rc, const char *want)
{
    cm_err err;
    cm_ljson_buf buf;
    bool same = true;
    assert_int_equal(copy_expr(L, expr, &buf, &same, &err), rc);
    assert_false(same);
    assert_int_equal(lua_gettop(L), 1);
    const char *got = rc ? err.msg : buf.s;
    if (!strstr(got, want))
        fail_msg("'%s' lacks '%s'", got, want);
    free(buf.s);
    lua_settop(L, 0);
}

/* cm_ljson_encode_copy writes what cm_ljson_encode writes and pushes a copy
** that shares no table with the value; nothing is pushed when the text would
** not read back the same or the value cannot be carried, and the stack is
** as it was. */
static void test_encode_copy_is_a_private_copy(void **state)
{
    (void)state;
    lua_State *L = copy_state();
    expect_copy(L, "{n = 3, s = 'x', t = {w = 1, list = {1, 'two', {}}}, e = {}}",
                "orig.n = 4; orig.t.w = 2; orig.t.list[3].x = 1; orig.e.y = 1\n"
                "return copy ~= orig and copy.t ~= orig.t and copy.n == 3\n"
                "  and copy.s == 'x' and copy.t.w == 1 and #copy.t.list == 3\n"
                "  and copy.t.list[2] == 'two' and next(copy.t.list[3]) == nil\n"
                "  and next(copy.e) == nil and getmetatable(copy) == nil");
    /* would read back as something else: the text, no copy */
    expect_no_copy(L, "{f = 2.0}", 0, "{\"f\":2}");
    /* cannot be carried: the error, no copy, nothing left on the stack */
    expect_no_copy(L, "{a = {b = 1, c = {d = print}}}", CM_EINVAL,
                   "ctx.a.c.d: a function cannot be carried");
    lua_close(L);
}

/* The copy of values at the edges: floats and integers at 2^53, a float
** beyond it, names and strings needing escapes, arrays holding scalars and
** tables; -0.0 (written as 0, read back an integer) makes no copy, and an
** integer past 2^53 is refused with nothing left on the stack. */
static void test_encode_copy_of_edge_values(void **state)
{
    (void)state;
    lua_State *L = copy_state();
    expect_copy(L,
                "{big = 1e300, top = 1 << 53, low = -(1 << 53), half = 0.5, "
                "list = {1, 2.5, 's', true, {x = {}}}, ['a\"b\\\\c'] = 'e\\n', u = '\\u{e9}'}",
                "orig.list[5].x.y = 1; orig.list[1] = 9\n"
                "return copy.big == 1e300 and math.type(copy.big) == 'float'\n"
                "  and math.type(copy.top) == 'integer' and copy.top == 1 << 53\n"
                "  and copy.low == -(1 << 53) and copy.half == 0.5\n"
                "  and copy.list ~= orig.list and copy.list[1] == 1\n"
                "  and math.type(copy.list[2]) == 'float' and copy.list[3] == 's'\n"
                "  and copy.list[4] == true and copy.list[5].x.y == nil\n"
                "  and copy['a\"b\\\\c'] == 'e\\n' and copy.u == '\\u{e9}'");
    expect_no_copy(L, "{z = -0.0, list = {1, 2}}", 0, "\"z\":0");
    expect_no_copy(L, "{a = {1, (1 << 53) + 1}}", CM_EINVAL, "ctx.a[1]: integer too large");
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_encode_copy_is_a_private_copy),
        cmocka_unit_test(test_encode_copy_of_edge_values),
        cmocka_unit_test(test_uncarriable_values_name_their_path),
        cmocka_unit_test(test_error_paths_name_every_level),
        cmocka_unit_test(test_utf8_is_carried),
        cmocka_unit_test(test_names_and_strings_written_exactly),
        cmocka_unit_test(test_every_byte_position_is_seen),
        cmocka_unit_test(test_encoded_text_reads_back),
        cmocka_unit_test(test_push_roundtrip),
        cmocka_unit_test(test_object_text_reads_as_cjson_would),
        cmocka_unit_test(test_encode_tells_what_reads_back_the_same),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
