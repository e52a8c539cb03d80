/*
** lconfig.c -- evaluate a Lua configuration file in a throwaway sandbox.
*/
#include "lconfig.h"

#include "ljson.h"
#include "sandbox.h"

#include <lua.h>

/* A config file is data: a small budget is plenty and stops a runaway loop. */
#define LCONFIG_INSTRUCTIONS 1000000
#define LCONFIG_MEMORY       (8u << 20)

int cm_lconfig_read(const char *path, cJSON **out, cm_err *err)
{
    cm_sandbox_limits limits = {LCONFIG_INSTRUCTIONS, LCONFIG_MEMORY};
    cm_sandbox *sb = cm_sandbox_new(&limits, err);
    int rc;
    *out = NULL;
    if (!sb)
        return err ? err->code : CM_ENOMEM;
    lua_State *L = cm_sandbox_state(sb);
    if ((rc = cm_sandbox_dofile(sb, path, 1, err)) != 0) {
        if (rc == CM_ELUA || rc == CM_EBUDGET || rc == CM_EMEMCAP)
            rc = cm_err_recode(err, CM_ECONFIG);
        goto done;
    }
    /* stack: result */
    if (!lua_istable(L, -1)) {
        rc = cm_err_set(err, CM_ECONFIG,
                        "%s: the file must return a table (return { ... }), "
                        "not a %s",
                        path, lua_typename(L, lua_type(L, -1)));
        goto done;
    }
    if ((rc = cm_ljson_from_lua(L, -1, "config", out, err)) != 0) {
        cm_err_prefix(err, "%s", path);
        rc = cm_err_recode(err, CM_ECONFIG);
        goto done;
    }
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        rc = cm_err_set(err, CM_ECONFIG, "%s: the returned table must have named keys", path);
    }
done:
    cm_sandbox_destroy(&sb);
    return rc;
}
