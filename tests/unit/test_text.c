/*
** test_text.c -- UTF-8 validity and id shape.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "text.h"

static bool valid(const char *s)
{
    return cm_utf8_valid(s, strlen(s));
}

static void test_utf8_accepts_every_plane(void **state)
{
    assert_true(valid("plain ascii"));
    assert_true(valid("Jos\xc3\xa9"));      /* U+00E9 */
    assert_true(valid("\xe2\x82\xac"));     /* U+20AC */
    assert_true(valid("\xf0\x9f\x98\x80")); /* U+1F600 */
    assert_true(valid("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
    assert_true(cm_utf8_valid("a\0b", 3));  /* length, not NUL, ends the text */
}

static void test_utf8_refuses_malformed_sequences(void **state)
{
    assert_false(valid("\xff"));
    assert_false(valid("\xc3"));                    /* truncated */
    assert_false(valid("\xc0\xaf"));                /* overlong '/' */
    assert_false(valid("\xe0\x80\xaf"));            /* overlong */
    assert_false(valid("\xed\xa0\x80"));            /* surrogate U+D800 */
    assert_false(valid("\xf4\x90\x80\x80"));        /* past U+10FFFF */
    assert_false(valid("\xe2\x28\xa1"));            /* bad continuation */
    assert_false(cm_utf8_valid("\xe2\x82\xac", 2)); /* cut by the length */
}

static void test_ids(void **state)
{
    assert_int_equal(cm_id_check("riverside-clinic.north:2_a"), 0);
    assert_int_equal(cm_id_check("a b"), 2);
    assert_int_equal(cm_id_check("caf\xc3\xa9"), 4);
    assert_int_equal(cm_id_check(""), -1);
    assert_int_equal(cm_id_check(NULL), -1);
    char longid[CM_ID_MAX + 2];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[CM_ID_MAX] = '\0';
    assert_int_equal(cm_id_check(longid), 0);
    longid[CM_ID_MAX] = 'x';
    longid[CM_ID_MAX + 1] = '\0';
    assert_int_equal(cm_id_check(longid), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_accepts_every_plane),
        cmocka_unit_test(test_utf8_refuses_malformed_sequences),
        cmocka_unit_test(test_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
