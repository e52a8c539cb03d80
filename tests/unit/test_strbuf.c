/*
** test_strbuf.c -- the growing text buffer: appends grow it and keep it
** NUL-terminated, printf past the first allocation, JSON string escapes,
** reset keeps the memory; a buffer that may hold secrets wipes the block it
** leaves when it grows, and the one it frees. Linked with -Wl,--wrap=free
** (tests/CMakeLists.txt): the library's frees pass through __wrap_free,
** which looks at a watched block before it goes.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "strbuf.h"

void __real_free(void *p);
void __wrap_free(void *p);

static const unsigned char *watched; /* the block __wrap_free looks at */
static size_t watched_len;
static int watched_frees, watched_dirty; /* frees of it; nonzero bytes it held then */

void __wrap_free(void *p)
{
    if (p && p == watched) {
        watched_frees++;
        for (size_t i = 0; i < watched_len; i++)
            watched_dirty += watched[i] != 0;
    }
    __real_free(p);
}

static void watch(const char *p, size_t len)
{
    watched = (const unsigned char *)p;
    watched_len = len;
    watched_frees = watched_dirty = 0;
}

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

/* Growth of a wiping buffer frees its old block wiped (realloc would free
** it unseen, the text still in it), the text carried over; cm_buf_free
** wipes the last block; the wipe flag outlives the free. */
static void test_a_wiping_buffer_leaves_no_text_behind(void **state)
{
    cm_buf b = {.wipe = true};
    char secret[200];
    memset(secret, 'S', sizeof(secret));
    cm_buf_put(&b, secret, sizeof(secret));
    watch(b.p, b.cap);
    for (int i = 0; i < 10; i++)
        cm_buf_put(&b, secret, sizeof(secret));
    assert_false(b.oom);
    assert_int_equal(b.len, 11 * sizeof(secret));
    for (size_t i = 0; i < b.len; i++)
        assert_int_equal(b.p[i], 'S');
    assert_int_equal(b.p[b.len], '\0');
    assert_int_equal(watched_frees, 1); /* the first block went through free, */
    assert_int_equal(watched_dirty, 0); /* wiped */
    watch(b.p, b.cap);
    cm_buf_free(&b);
    assert_int_equal(watched_frees, 1);
    assert_int_equal(watched_dirty, 0);
    assert_null(b.p);
    assert_true(b.wipe);
    watched = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_appends_grow_and_stay_terminated),
        cmocka_unit_test(test_json_strings_are_escaped),
        cmocka_unit_test(test_a_wiping_buffer_leaves_no_text_behind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
