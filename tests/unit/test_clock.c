/*
** test_clock.c -- virtual clock, ISO-8601 dates and instants.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "clock.h"
#include "error.h"

static void test_virtual_clock_moves_only_when_advanced(void **state)
{
    cm_clock *c = cm_clock_new_virtual(1000);
    assert_true(cm_clock_is_virtual(c));
    assert_int_equal(cm_clock_now_ms(c), 1000);
    assert_int_equal(cm_clock_advance(c, 21LL * 86400 * 1000), 0);
    assert_int_equal(cm_clock_now_ms(c), 1000 + 21LL * 86400 * 1000);
    assert_int_equal(cm_clock_advance(c, -1), CM_EINVAL);
    cm_clock_destroy(&c);
    assert_null(c);
    cm_clock *sys = cm_clock_new_system();
    assert_false(cm_clock_is_virtual(sys));
    assert_true(cm_clock_now_ms(sys) > 1700000000000LL);
    assert_int_equal(cm_clock_advance(sys, 1), CM_EINVAL);
    cm_clock_destroy(&sys);
}

static void test_dates_follow_the_calendar(void **state)
{
    assert_true(cm_date_valid("2024-02-29"));
    assert_false(cm_date_valid("2023-02-29"));
    assert_false(cm_date_valid("2023-02-30"));
    assert_true(cm_date_valid("2000-02-29"));
    assert_false(cm_date_valid("1900-02-29"));
    assert_false(cm_date_valid("2023-13-01"));
    assert_false(cm_date_valid("2023-1-01"));
    assert_false(cm_date_valid("2023-01-01T00:00:00Z"));
    assert_false(cm_date_valid("yesterday"));
    assert_false(cm_date_valid(""));
    assert_false(cm_date_valid(NULL));
}

static void test_instants_parse_with_zones(void **state)
{
    int64_t ms;
    assert_true(cm_time_parse("1970-01-01T00:00:00Z", &ms));
    assert_int_equal(ms, 0);
    assert_true(cm_time_parse("1970-01-02", &ms));
    assert_int_equal(ms, 86400000);
    assert_true(cm_time_parse("2026-11-29T10:00:00.250+02:00", &ms));
    int64_t utc;
    assert_true(cm_time_parse("2026-11-29T08:00:00.250Z", &utc));
    assert_int_equal(ms, utc);
    assert_true(cm_time_parse("2026-11-29T08:00Z", &ms));
    assert_false(cm_time_parse("2026-11-29T08:00:00", &ms)); /* no zone */
    assert_false(cm_time_parse("2026-11-29T24:00:00Z", &ms));
    assert_false(cm_time_parse("2026-11-29T08:00:00Zjunk", &ms));
    assert_false(cm_time_parse("2026-11-29 08:00:00Z", &ms));
}

static void test_format_roundtrips(void **state)
{
    char buf[CM_TIME_BUFSZ];
    int64_t ms;
    cm_time_format(1795950000123LL, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-29T11:00:00.123Z");
    assert_true(cm_time_parse(buf, &ms));
    assert_int_equal(ms, 1795950000123LL);
    cm_time_format(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_virtual_clock_moves_only_when_advanced),
        cmocka_unit_test(test_dates_follow_the_calendar),
        cmocka_unit_test(test_instants_parse_with_zones),
        cmocka_unit_test(test_format_roundtrips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
