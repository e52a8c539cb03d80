/*
** test_log.c -- the log's JSON string escaping (cm_json_escape): plain text
** as it is, quotes, backslashes and control characters escaped, and text cut
** before an escape that would not fit, never inside one.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "log.h"

static void test_escapes_what_json_needs(void **state)
{
    char out[128];
    cm_json_escape("bench-1-2 état", out, sizeof(out));
    assert_string_equal(out, "bench-1-2 état");
    cm_json_escape("a\"b\\c\nd\te\x01\x1f\x7f!", out, sizeof(out));
    assert_string_equal(out, "a\\\"b\\\\c\\nd\\te\\u0001\\u001f\\u007f!");
    cm_json_escape(NULL, out, sizeof(out));
    assert_string_equal(out, "");
}

static void test_cuts_before_what_does_not_fit(void **state)
{
    char out[8];
    cm_json_escape("abcdefghij", out, sizeof(out));
    assert_string_equal(out, "abcdefg");
    cm_json_escape("abcde\x01", out, sizeof(out)); /* \u0001 needs 6 bytes: left out */
    assert_string_equal(out, "abcde");
    cm_json_escape("abcde\"", out, sizeof(out));
    assert_string_equal(out, "abcde\\\"");
    cm_json_escape("abcdef\"", out, sizeof(out));
    assert_string_equal(out, "abcdef");
    cm_json_escape("x", out, 1);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes_what_json_needs),
        cmocka_unit_test(test_cuts_before_what_does_not_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
