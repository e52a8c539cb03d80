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

void cm_json_escape(const char *s, char *out, size_t outsz)
{
    size_t n = 0;
    if (outsz == 0)
        return;
    for (; s && *s; s++) {
        char esc[6];
        size_t len = cm_json_escape_byte((unsigned char)*s, esc);
        const char *piece = len ? esc : s;
        if (len == 0)
            len = 1;
        if (n + len >= outsz)
            break;
        memcpy(out + n, piece, len);
        n += len;
    }
    out[n] = '\0';
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
