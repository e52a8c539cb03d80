/*
** error.c -- names and messages of caremesh error codes; the cm_err helpers.
*/
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *cm_err_name(int code)
{
    switch (code) {
    case CM_OK:
        return "CM_OK";
#define CM_ERR_NAME(name, msg)                                                                     \
    case CM_E##name:                                                                               \
        return "CM_E" #name;
        CM_ERRNO_MAP(CM_ERR_NAME)
#undef CM_ERR_NAME
    default:
        return "CM_EUNKNOWN";
    }
}

const char *cm_strerror(int code)
{
    switch (code) {
    case CM_OK:
        return "success";
#define CM_ERR_STR(name, msg)                                                                      \
    case CM_E##name:                                                                               \
        return msg;
        CM_ERRNO_MAP(CM_ERR_STR)
#undef CM_ERR_STR
    default:
        return "unknown error";
    }
}

int cm_err_set(cm_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

int cm_err_prefix(cm_err *err, const char *fmt, ...)
{
    char buf[CM_ERR_MSG_MAX + 256];
    va_list ap;
    if (!err)
        return CM_EINVAL;
    va_start(ap, fmt);
    int n = vsnprintf(buf, 256, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < 256 ? (size_t)n : 255;
    snprintf(buf + len, sizeof(buf) - len, ": %s", err->msg);
    len = strlen(buf);
    if (len >= sizeof(err->msg))
        len = sizeof(err->msg) - 1; /* the message is cut, never overrun */
    memcpy(err->msg, buf, len);
    err->msg[len] = '\0';
    return err->code;
}

int cm_err_recode(cm_err *err, int code)
{
    if (err)
        err->code = code;
    return code;
}

void cm_err_clear(cm_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
