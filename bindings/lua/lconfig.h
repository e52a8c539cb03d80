/*
** lconfig.h -- read a configuration file: Lua, data only, run in its own
** small sandbox, returning one table, converted to JSON for core/config.c.
** Depends on: sandbox.h, ljson.h. Loop thread (before the loop starts).
*/
#ifndef CM_LCONFIG_H
#define CM_LCONFIG_H

#include <cjson/cJSON.h>

#include "config.h"
#include "error.h"

/* *out receives the file's table as a JSON object (caller deletes). Errors
** name the file: syntax errors with their line, a missing file CM_ENOTFOUND,
** anything but a table returned CM_ECONFIG. */
int cm_lconfig_read(const char *path, cJSON **out, cm_err *err);

/* A whole configuration: cm_config_defaults, then the file's table checked
** and applied over them (cm_config_apply). On error cfg holds the defaults
** (free it either way with cm_config_free). */
int cm_lconfig_load(const char *path, cm_config *cfg, cm_err *err);

#endif
