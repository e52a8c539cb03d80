/*
** test_clock.c -- virtual clock, ISO-8601 dates and instants.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <cmocka.h>
#include <uv.h>

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

/* The hand-made digits agree with strftime-style formatting across the range. */
static void test_format_matches_gmtime(void **state)
{
    const int64_t samples[] = {0,
                               999,
                               1000,
                               -62135596800000LL, /* 0001-01-01 */
                               951782400000LL,    /* 2000-02-29 */
                               1795950000123LL,
                               253402300799999LL, /* 9999-12-31T23:59:59.999 */
                               253402300800000LL, /* 10000-01-01: longer than four digits */
                               4102444799001LL};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        char got[CM_TIME_BUFSZ], want[64];
        int64_t ms = samples[i], secs = ms / 1000, msec = ms % 1000;
        if (msec < 0) {
            msec += 1000;
            secs -= 1;
        }
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(want, sizeof(want), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)msec);
        cm_time_format(ms, got, sizeof(got));
        assert_string_equal(got, want);
    }
}

/* cm_mono_ns reads uv_hrtime's clock (CLOCK_MONOTONIC) in nanoseconds:
** between two reads of uv_hrtime, and never going back. */
static void test_mono_ns_is_uv_hrtime_clock(void **state)
{
    (void)state;
    int64_t last = 0;
    for (int i = 0; i < 1000; i++) {
        int64_t before = (int64_t)uv_hrtime(), now = cm_mono_ns(), after = (int64_t)uv_hrtime();
        assert_true(before <= now && now <= after);
        assert_true(now >= last);
        last = now;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_virtual_clock_moves_only_when_advanced),
        cmocka_unit_test(test_dates_follow_the_calendar),
        cmocka_unit_test(test_instants_parse_with_zones),
        cmocka_unit_test(test_format_roundtrips),
        cmocka_unit_test(test_format_matches_gmtime),
        cmocka_unit_test(test_mono_ns_is_uv_hrtime_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
