/*
** clock.c -- system and virtual clocks; ISO-8601 dates and instants.
*/
#include "clock.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct cm_clock {
    bool is_virtual;
    int64_t virtual_ms;
};

cm_clock *cm_clock_new_system(void)
{
    return calloc(1, sizeof(cm_clock));
}

cm_clock *cm_clock_new_virtual(int64_t start_ms)
{
    cm_clock *clock = calloc(1, sizeof(*clock));
    if (clock) {
        clock->is_virtual = true;
        clock->virtual_ms = start_ms;
    }
    return clock;
}

void cm_clock_destroy(cm_clock **clock_p)
{
    if (clock_p && *clock_p) {
        free(*clock_p);
        *clock_p = NULL;
    }
}

int64_t cm_clock_now_ms(const cm_clock *clock)
{
    if (clock && clock->is_virtual)
        return clock->virtual_ms;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool cm_clock_is_virtual(const cm_clock *clock)
{
    return clock && clock->is_virtual;
}

int cm_clock_advance(cm_clock *clock, int64_t ms)
{
    if (!clock || !clock->is_virtual || ms < 0)
        return CM_EINVAL;
    clock->virtual_ms += ms;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void cm_time_format(int64_t ms, char *buf, size_t bufsz)
{
    int64_t secs = ms / 1000, msec = ms % 1000;
    if (msec < 0) {
        msec += 1000;
        secs -= 1;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    int year = tm.tm_year + 1900;
    if (year < 0 || year > 9999 || bufsz < 25) {
        snprintf(buf, bufsz, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", year, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, (int)msec);
        return;
    }
    /* the engine stamps every row it writes: digits by hand, not snprintf */
    const int parts[] = {year,      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                         tm.tm_min, tm.tm_sec,     (int)msec};
    const int width[] = {4, 2, 2, 2, 2, 2, 3};
    const char after[] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    char *p = buf;
    for (int i = 0; i < 7; i++) {
        for (int k = width[i] - 1, v = parts[i]; k >= 0; k--, v /= 10)
            p[k] = (char)('0' + v % 10);
        p += width[i];
        *p++ = after[i];
    }
    *p = '\0';
}

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static int days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

static bool parse_date(const char *s, int *y, int *m, int *d)
{
    if (!digits(s, 4, y) || s[4] != '-' || !digits(s + 5, 2, m) || s[7] != '-' ||
        !digits(s + 8, 2, d))
        return false;
    return *y >= 1000 && *m >= 1 && *m <= 12 && *d >= 1 && *d <= days_in_month(*y, *m);
}

bool cm_date_valid(const char *s)
{
    int y, m, d;
    return s && strlen(s) == 10 && parse_date(s, &y, &m, &d);
}

bool cm_time_parse(const char *s, int64_t *out_ms)
{
    int y, mo, d, hh = 0, mi = 0, ss = 0, frac = 0, tzh = 0, tzm = 0, sign = 0;
    if (!s || strlen(s) < 10 || !parse_date(s, &y, &mo, &d))
        return false;
    const char *p = s + 10;
    if (*p == '\0')
        goto compute;
    if (*p != 'T' || !digits(p + 1, 2, &hh) || p[3] != ':' || !digits(p + 4, 2, &mi))
        return false;
    p += 6;
    if (*p == ':') {
        if (!digits(p + 1, 2, &ss))
            return false;
        p += 3;
        if (*p == '.') {
            int n = 0, scale = 100;
            for (p++; *p >= '0' && *p <= '9'; p++, n++) {
                frac += (*p - '0') * scale;
                scale /= 10;
            }
            if (n == 0 || n > 9)
                return false;
        }
    }
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '+' ? 1 : -1;
        if (!digits(p + 1, 2, &tzh) || p[3] != ':' || !digits(p + 4, 2, &tzm) || tzh > 14 ||
            tzm > 59)
            return false;
        p += 6;
    } else {
        return false; /* a time without a zone is ambiguous */
    }
    if (*p != '\0' || hh > 23 || mi > 59 || ss > 60)
        return false;
compute:
    if (out_ms) {
        int64_t secs = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss;
        secs -= sign * (tzh * 3600 + tzm * 60);
        *out_ms = secs * 1000 + frac;
    }
    return true;
}
