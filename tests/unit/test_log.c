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
#include "text.h"

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

/* Every byte alone and inside text: as cm_json_escape_byte says, and the
** length returned is the text's. */
static void test_each_byte_as_the_byte_escape_says(void **state)
{
    for (int c = 1; c < 256; c++) {
        char in[4] = {'a', (char)c, 'b', '\0'}, out[16], esc[6], want[16];
        size_t len = cm_json_escape_byte((unsigned char)c, esc);
        want[0] = 'a';
        if (len == 0) {
            want[1] = (char)c;
            len = 1;
        } else {
            memcpy(want + 1, esc, len);
        }
        memcpy(want + 1 + len, "b", 2);
        assert_int_equal(cm_json_escape(in, out, sizeof(out)), strlen(want));
        assert_string_equal(out, want);
    }
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
    assert_int_equal(cm_json_escape("abcdefghij", out, sizeof(out)), 7);
    assert_int_equal(cm_json_escape("ab\"cdefghij", out, sizeof(out)), 7); /* ab\"cde */
    assert_string_equal(out, "ab\\\"cde");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes_what_json_needs),
        cmocka_unit_test(test_each_byte_as_the_byte_escape_says),
        cmocka_unit_test(test_cuts_before_what_does_not_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
