/*
** log.h -- JSON-lines logging: one object per line on stderr (or a chosen
** stream): {"ts":..., "level":..., "event":..., "msg":...}. The level and the
** stream are process-wide settings made once by main before the loop starts;
** messages are escaped, never trusted. Secrets and patient data are never
** logged: callers pass ids, not records. Loop thread.
*/
#ifndef CM_LOG_H
#define CM_LOG_H

#include <stdio.h>

typedef enum { CM_LOG_DEBUG, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR } cm_log_level;

/* Parse "debug|info|warn|error"; -1 if unknown. */
int cm_log_level_parse(const char *s);
void cm_log_set_level(cm_log_level level);
/* Stream for log lines (borrowed; default stderr). */
void cm_log_set_stream(FILE *stream);

/* Write one line if level is enabled; event is a dotted name ("serve.start"). */
void cm_log(cm_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Write s to out (capacity outsz, always NUL-terminated) as a JSON string
** body, no quotes, escaped as cm_json_escape_byte says (text.h); a text too
** long for out is cut before the escape that would not fit whole. Returns
** the length written (strlen(out)). */
size_t cm_json_escape(const char *s, char *out, size_t outsz);

#endif
