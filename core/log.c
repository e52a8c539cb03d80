/*
** log.c -- JSON-lines logger. The only process-wide state in core: the level
** and the stream, set by main before anything logs.
*/
#include "log.h"

#include "clock.h"
#include "text.h"

#include <stdarg.h>
#include <string.h>

static cm_log_level log_level = CM_LOG_INFO;
static FILE *log_stream;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int cm_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void cm_log_set_level(cm_log_level level)
{
    log_level = level;
}

void cm_log_set_stream(FILE *stream)
{
    log_stream = stream;
}

/* 1 for a byte cm_json_escape_byte writes as itself (not a control byte,
** quote, backslash or DEL; NUL ends the text), 0 for the others. */
#define ONE16 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
static const unsigned char json_plain[256] = {
    [0x20] = 1, 1,     0 /* " */, 1,     1,         1,     1,     1,
    1,          1,     1,         1,     1,         1,     1,     1, /* 0x20 */
    ONE16,      ONE16,                                               /* 0x30, 0x40 */
    1,          1,     1,         1,     1,         1,     1,     1,
    1,          1,     1,         1,     0 /* \ */, 1,     1,     1, /* 0x50 */
    ONE16,                                                           /* 0x60 */
    1,          1,     1,         1,     1,         1,     1,     1,
    1,          1,     1,         1,     1,         1,     1,     0 /* DEL */, /* 0x70 */
    ONE16,      ONE16, ONE16,     ONE16, ONE16,     ONE16, ONE16, ONE16};      /* UTF-8 */

size_t cm_json_escape(const char *s, char *out, size_t outsz)
{
    size_t n = 0;
    if (outsz == 0)
        return 0;
    while (s && *s) {
        size_t run = 0; /* most text: runs of bytes as they are, one memcpy each */
        while (json_plain[(unsigned char)s[run]])
            run++;
        if (run) {
            if (run > outsz - 1 - n)
                run = outsz - 1 - n;
            memcpy(out + n, s, run);
            n += run;
            s += run;
            if (n + 1 >= outsz)
                break;
            continue;
        }
        char esc[6];
        size_t len = cm_json_escape_byte((unsigned char)*s, esc);
        if (n + len >= outsz)
            break;
        memcpy(out + n, esc, len);
        n += len;
        s++;
    }
    out[n] = '\0';
    return n;
}

void cm_log(cm_log_level level, const char *event, const char *fmt, ...)
{
    char msg[2048], emsg[4096], eevent[128], ts[CM_TIME_BUFSZ];
    FILE *out = log_stream ? log_stream : stderr;
    va_list ap;
    if (level < log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cm_json_escape(msg, emsg, sizeof(emsg));
    cm_json_escape(event, eevent, sizeof(eevent));
    cm_time_format(cm_clock_now_ms(NULL), ts, sizeof(ts));
    fprintf(out, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":\"%s\",\"msg\":\"%s\"}\n", ts,
            level_names[level], eevent, emsg);
    fflush(out);
}
