/*
** clock.h -- the injectable clock. Everything that asks "what time is it"
** asks a cm_clock, so tests and the demo can run on a virtual clock and skip
** weeks in milliseconds. Also ISO-8601 formatting and parsing of instants,
** and the monotonic clock that measures durations. No dependencies; loop
** thread (cm_mono_ns: any thread).
*/
#ifndef CM_CLOCK_H
#define CM_CLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef struct cm_clock cm_clock;

/* The system wall clock (CLOCK_REALTIME). NULL on out of memory. */
cm_clock *cm_clock_new_system(void);
/* A virtual clock that starts at start_ms (ms since the Unix epoch) and only
** moves when advanced. */
cm_clock *cm_clock_new_virtual(int64_t start_ms);
void cm_clock_destroy(cm_clock **clock_p);

/* Milliseconds since the Unix epoch, UTC. */
int64_t cm_clock_now_ms(const cm_clock *clock);
bool cm_clock_is_virtual(const cm_clock *clock);
/* Move a virtual clock forward by ms (ignored for the system clock); returns 0
** or CM_EINVAL when the clock is not virtual or ms is negative. */
int cm_clock_advance(cm_clock *clock, int64_t ms);

/* Nanoseconds on CLOCK_MONOTONIC (uv_hrtime's clock): for durations,
** deadlines and timeouts, never for instants (cm_clock). Inline: the sandbox
** reads it in its count hook. Any thread. */
static inline int64_t cm_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define CM_TIME_BUFSZ 32
/* Format ms since epoch as "YYYY-MM-DDTHH:MM:SS.mmmZ" into buf (CM_TIME_BUFSZ). */
void cm_time_format(int64_t ms, char *buf, size_t bufsz);

/* Validate an ISO-8601 calendar date "YYYY-MM-DD" (real calendar, years 1000-9999). */
bool cm_date_valid(const char *s);
/* Parse an ISO-8601 date-time "YYYY-MM-DDTHH:MM[:SS[.fff]](Z|+HH:MM|-HH:MM)" or a
** date (midnight UTC) into ms since epoch; false when malformed or impossible. */
bool cm_time_parse(const char *s, int64_t *out_ms);

#endif
