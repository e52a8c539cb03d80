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

static void test_utf8_is_carried(void **state)
{
    expect_json("{name='Jos\\u{e9} \\u{1F600}'}", "{\"name\":\"Jos\xc3\xa9 \xf0\x9f\x98\x80\"}");
}

/* The text the encoder writes reads back (cJSON) as the same document, also
** for the characters JSON must escape and numbers that need every digit. */
static void test_encoded_text_reads_back(void **state)
{
    expect_json("{s='q\"b\\\\s\\n\\r\\t\\b\\f\\1\\31 /'}",
                "{\"s\":\"q\\\"b\\\\s\\n\\r\\t\\b\\f\\u0001\\u001f /\"}");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_uncarriable_values_name_their_path),
        cmocka_unit_test(test_utf8_is_carried),
        cmocka_unit_test(test_encoded_text_reads_back),
        cmocka_unit_test(test_push_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
