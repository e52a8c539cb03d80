/*
** lconfig.h -- read a configuration file: Lua, data only, run in its own
** small sandbox, returning one table, converted to JSON for core/config.c.
** Depends on: sandbox.h, ljson.h. Loop thread (before the loop starts).
*/
#ifndef CM_LCONFIG_H
#define CM_LCONFIG_H

#include <cjson/cJSON.h>

#include "error.h"

/* *out receives the file's table as a JSON object (caller deletes). Errors
** name the file: syntax errors with their line, a missing file CM_ENOTFOUND,
** anything but a table returned CM_ECONFIG. */
int cm_lconfig_read(const char *path, cJSON **out, cm_err *err);

#endif
