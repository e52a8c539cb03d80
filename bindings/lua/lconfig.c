/*
** lconfig.c -- evaluate a Lua configuration file in a throwaway sandbox.
*/
#include "lconfig.h"

#include "ljson.h"
#include "sandbox.h"

#include <ctype.h>
#include <lua.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

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

/* Does line (up to its "--" comment) assign key: `key =`, not `key ==`? */
static bool line_sets(const char *line, size_t len, const char *key, size_t keylen)
{
    for (size_t i = 0; i + keylen <= len; i++) {
        if (line[i] == '-' && i + 1 < len && line[i + 1] == '-')
            return false;
        bool start = i == 0 || !(isalnum((unsigned char)line[i - 1]) || line[i - 1] == '_');
        if (!start || memcmp(line + i, key, keylen) != 0)
            continue;
        size_t j = i + keylen;
        while (j < len && (line[j] == ' ' || line[j] == '\t'))
            j++;
        if (j < len && line[j] == '=' && (j + 1 >= len || line[j + 1] != '='))
            return true;
    }
    return false;
}

/* "PATH: a.b[2].key: message" -> "PATH:LINE: a.b[2].key: message" when
** exactly one line of the file sets `key`; otherwise the message stays. */
static void add_line(const char *path, cm_err *err)
{
    size_t plen = strlen(path), keylen;
    char key[64], *text = NULL;
    size_t len = 0;
    int line = 0, found = 0, at = 0;
    if (strncmp(err->msg, path, plen) != 0 || strncmp(err->msg + plen, ": ", 2) != 0)
        return;
    const char *kp = err->msg + plen + 2, *end = strstr(kp, ": "), *leaf = kp;
    if (!end)
        return;
    for (const char *c = kp; c < end; c++)
        if (*c == '.' || *c == ' ')
            leaf = c + 1;
    keylen = (size_t)(end - leaf);
    const char *br = memchr(leaf, '[', keylen);
    if (br)
        keylen = (size_t)(br - leaf);
    if (keylen == 0 || keylen >= sizeof(key) || cm_fs_read(path, 1 << 20, &text, &len, NULL) != 0)
        return;
    memcpy(key, leaf, keylen);
    key[keylen] = '\0';
    for (const char *l = text; l < text + len; line++) {
        const char *nl = memchr(l, '\n', (size_t)(text + len - l));
        size_t ll = nl ? (size_t)(nl - l) : (size_t)(text + len - l);
        if (line_sets(l, ll, key, keylen) && found++ == 0)
            at = line + 1;
        l += ll + 1;
    }
    free(text);
    if (found == 1) {
        char rest[CM_ERR_MSG_MAX];
        snprintf(rest, sizeof(rest), "%s", kp);
        cm_err_set(err, err->code, "%s:%d: %.900s", path, at, rest);
    }
}

int cm_lconfig_load(const char *path, cm_config *cfg, cm_err *err)
{
    cJSON *root = NULL;
    int rc;
    cm_config_defaults(cfg);
    if ((rc = cm_lconfig_read(path, &root, err)) != 0)
        return rc;
    if ((rc = cm_config_apply(cfg, root, path, err)) != 0 && err)
        add_line(path, err);
    cJSON_Delete(root);
    return rc;
}
