/*
** error.h -- caremesh error codes and the error out-parameter.
** Every fallible function returns 0 or a negative CM_E* code and, when given
** a cm_err, fills it with a message that names what is wrong and where.
** No dependencies; any thread.
*/
#ifndef CM_ERROR_H
#define CM_ERROR_H

#include <stddef.h>

/* XX(NAME, message): the one table of error codes. */
#define CM_ERRNO_MAP(XX)                                                                           \
    XX(INVAL, "invalid argument")                                                                  \
    XX(NOTFOUND, "not found")                                                                      \
    XX(EXISTS, "already exists")                                                                   \
    XX(REF, "reference to a missing record")                                                       \
    XX(NOMEM, "out of memory")                                                                     \
    XX(IO, "input/output error")                                                                   \
    XX(PERM, "permission denied")                                                                  \
    XX(DB, "database error")                                                                       \
    XX(NOTCM, "not a caremesh database")                                                           \
    XX(SCHEMA, "database schema is newer than this caremesh")                                      \
    XX(CONFIG, "invalid configuration")                                                            \
    XX(LUA, "Lua error")                                                                           \
    XX(BUDGET, "instruction budget exhausted")                                                     \
    XX(MEMCAP, "memory cap exceeded")                                                              \
    XX(USAGE, "bad command line")                                                                  \
    XX(AUDIT, "audit trail broken")                                                                \
    XX(INDOUBT, "outcome in doubt: the change may or may not be kept")                             \
    XX(STATE, "not in a state that allows it")

typedef enum {
    CM_OK = 0,
    CM__EBASE = -1000,
#define CM_ERR_ENUM(name, msg) CM_E##name,
    CM_ERRNO_MAP(CM_ERR_ENUM)
#undef CM_ERR_ENUM
        CM__ELAST
} cm_errno;

#define CM_ERR_MSG_MAX 1024

/* Error details: code plus a message naming what and where. */
typedef struct cm_err {
    int code;
    char msg[CM_ERR_MSG_MAX];
} cm_err;

/* Name ("CM_EINVAL") and generic message of an error code. */
const char *cm_err_name(int code);
const char *cm_strerror(int code);

/* Fill *err (if not NULL) and return code. The message is printf-formatted. */
int cm_err_set(cm_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefix err->msg with "prefix: " (for adding a location); returns err->code. */
int cm_err_prefix(cm_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Keep the message, change the code; returns code. */
int cm_err_recode(cm_err *err, int code);

void cm_err_clear(cm_err *err);

#endif
