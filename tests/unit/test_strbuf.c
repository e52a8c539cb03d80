/*
** test_strbuf.c -- the growing text buffer: appends grow it and keep it
** NUL-terminated, printf past the first allocation, JSON string escapes
** (and the log's fixed-buffer escaper agreeing with them),
** reset keeps the memory.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "log.h"
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
    cm_buf_json_str(&b, "a\"b\\c\n\x01 é\x7f\t");
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\n\\u0001 é\\u007f\\t\"");
    cm_buf_free(&b);
}

/* The fixed-buffer escaper of the log writes the same escapes, and cuts a
** long text before an escape that would not fit whole. */
static void test_fixed_buffer_escapes_match_and_cut_whole(void **state)
{
    char out[64];
    cm_json_escape("a\"b\\c\n\x01 é\x7f\t", out, sizeof(out));
    assert_string_equal(out, "a\\\"b\\\\c\\n\\u0001 é\\u007f\\t");
    char small[6];
    cm_json_escape("ab\x01", small, sizeof(small)); /* \u0001 needs 6 more: cut */
    assert_string_equal(small, "ab");
    cm_json_escape("abcdefgh", small, sizeof(small));
    assert_string_equal(small, "abcde");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_appends_grow_and_stay_terminated),
        cmocka_unit_test(test_json_strings_are_escaped),
        cmocka_unit_test(test_fixed_buffer_escapes_match_and_cut_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
