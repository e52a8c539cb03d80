/*
** test_strbuf.c -- the growing text buffer: appends grow it and keep it
** NUL-terminated, printf past the first allocation, JSON string escapes,
** reset keeps the memory.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "strbuf.h"

static void test_appends_grow_and_stay_terminated(void **state)
{
    cm_buf b = {0};
    cm_buf_put(&b, "", 0);
    assert_non_null(b.p);
    assert_string_equal(b.p, "");
    for (int i = 0; i < 1000; i++)
        cm_buf_puts(&b, "abc");
    assert_int_equal(b.len, 3000);
    assert_int_equal(strlen(b.p), 3000);
    cm_buf_printf(&b, "%0600d|%s", 7, "end");
    assert_int_equal(b.len, 3000 + 600 + 4);
    assert_string_equal(b.p + 3600, "|end");
    assert_false(b.oom);
    cm_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.p, "");
    assert_true(b.cap >= 3605); /* the memory is kept */
    cm_buf_free(&b);
    assert_null(b.p);
}

static void test_json_strings_are_escaped(void **state)
{
    cm_buf b = {0};
    cm_buf_json_str(&b, "a\"b\\c\n\x01 é\x7f\t\b");
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\n\\u0001 é\\u007f\\t\\b\"");
    cm_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_appends_grow_and_stay_terminated),
        cmocka_unit_test(test_json_strings_are_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
