/*
** lconfig.c -- evaluate a Lua configuration file in a throwaway sandbox.
*/
#include "lconfig.h"

#include "ljson.h"
#include "lscan.h"
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

/* The only line of text that sets the leaf of key (any table), or 0. */
static int leaf_line(const char *text, size_t len, const char *key, size_t keylen)
{
    int line = 0, found = 0, at = 0;
    for (const char *l = text; l < text + len; line++) {
        const char *nl = memchr(l, '\n', (size_t)(text + len - l));
        size_t ll = nl ? (size_t)(nl - l) : (size_t)(text + len - l);
        if (line_sets(l, ll, key, keylen) && found++ == 0)
            at = line + 1;
        l += ll + 1;
    }
    return found == 1 ? at : 0;
}

/* ---- the line of a key path ("federation.peers[2].endpoint") ---- */

#define KEYPATH_DEPTH 16

typedef struct keypart {
    char name[64]; /* "" for a table in a list */
    int index;     /* that table's place in the list, from 1 */
} keypart;

/* Split "a.b[2].c" into a, b, [2], c. Returns the count, or -1 when the
** text is not such a path. */
static int keypath_split(const char *s, size_t len, keypart *parts, int max)
{
    int n = 0;
    size_t i = 0;
    while (i < len) {
        if (n == max)
            return -1;
        keypart *p = &parts[n++];
        memset(p, 0, sizeof(*p));
        if (s[i] == '[') {
            char *end;
            long v = strtol(s + i + 1, &end, 10);
            if (end == s + i + 1 || (size_t)(end - s) >= len || *end != ']' || v < 1 || v > 1000000)
                return -1;
            p->index = (int)v;
            i = (size_t)(end - s) + 1;
        } else {
            size_t j = i;
            while (j < len && (isalnum((unsigned char)s[j]) || s[j] == '_'))
                j++;
            if (j == i || j - i >= sizeof(p->name) || isdigit((unsigned char)s[i]))
                return -1;
            memcpy(p->name, s + i, j - i);
            i = j;
        }
        if (i < len && s[i] == '.')
            i++;
        else if (i < len && s[i] != '[')
            return -1;
    }
    return n;
}

/* Are the tables open below the file's own (stack[1..depth-1]) the path's
** first depth-1 parts? */
static bool within(const keypart *stack, int depth, const keypart *want)
{
    for (int i = 1; i < depth; i++)
        if (strcmp(stack[i].name, want[i - 1].name) != 0 || stack[i].index != want[i - 1].index)
            return false;
    return true;
}

/* Walk the tables of a config file's text and return the one line that sets
** the key path `want` (n parts; a table's `key =`, or the opening brace of the
** index-th table of a list), or 0 when none or several do. */
static int keypath_line(const char *text, size_t len, const keypart *want, int n)
{
    keypart stack[KEYPATH_DEPTH];
    int count[KEYPATH_DEPTH] = {0}; /* tables of a list opened so far, by depth */
    int depth = 0, line = 1, found = 0, at = 0;
    char pending[64] = ""; /* `key =` just read: a `{` next is that key's table */
    const char *p = text, *end = text + len;
    while (p < end) {
        char c = *p;
        if (c == '\n' || c == '\r') {
            p = text + cm_lscan_line_break(text, len, (size_t)(p - text));
            line++;
            continue;
        }
        if (c == ' ' || c == '\t') {
            p++;
            continue;
        }
        if (c == '-' && p + 1 < end && p[1] == '-') {
            p = text + cm_lscan_skip_comment(text, len, (size_t)(p - text) + 2, &line);
            continue;
        }
        if (c == '"' || c == '\'') {
            for (p++; p < end && *p != c && *p != '\n'; p++)
                if (*p == '\\' && p + 1 < end && p[1] != '\n')
                    p++;
            p += p < end && *p == c;
            pending[0] = '\0';
            continue;
        }
        if (c == '[') {
            size_t i = (size_t)(p - text), close;
            int lvl = cm_lscan_long_level(text, len, i);
            if (lvl < 0) {
                p++;
            } else {
                close = cm_lscan_long_close(text, len, i + (size_t)lvl + 2, lvl, &line);
                p = close < len ? text + close + lvl + 2 : end;
            }
            pending[0] = '\0';
            continue;
        }
        if (c == '{') {
            if (depth == KEYPATH_DEPTH)
                return 0;
            keypart *k = &stack[depth];
            memset(k, 0, sizeof(*k));
            if (pending[0]) {
                snprintf(k->name, sizeof(k->name), "%s", pending);
            } else if (depth > 0) {
                k->index = ++count[depth - 1];
                if (depth == n && within(stack, depth, want) && !want[n - 1].name[0] &&
                    want[n - 1].index == k->index && found++ == 0)
                    at = line;
            }
            count[depth] = 0;
            depth++, p++;
            pending[0] = '\0';
            continue;
        }
        if (c == '}') {
            depth -= depth > 0;
            p++;
            pending[0] = '\0';
            continue;
        }
        if (isalpha((unsigned char)c) || c == '_') {
            const char *s = p;
            while (p < end && (isalnum((unsigned char)*p) || *p == '_'))
                p++;
            size_t klen = (size_t)(p - s);
            const char *q = p;
            while (q < end && (*q == ' ' || *q == '\t'))
                q++;
            pending[0] = '\0';
            if (q < end && *q == '=' && (q + 1 >= end || q[1] != '=') && klen < sizeof(pending)) {
                memcpy(pending, s, klen);
                pending[klen] = '\0';
                if (depth == n && depth > 0 && within(stack, depth, want) &&
                    strcmp(want[n - 1].name, pending) == 0 && found++ == 0)
                    at = line;
                p = q + 1;
            }
            continue;
        }
        if (isdigit((unsigned char)c)) {
            while (p < end && (isalnum((unsigned char)*p) || *p == '.' || *p == '_'))
                p++;
            pending[0] = '\0';
            continue;
        }
        p++;
        pending[0] = '\0';
    }
    return found == 1 ? at : 0;
}

/* "PATH: a.b[2].key: message" -> "PATH:LINE: a.b[2].key: message" when one
** line of the file sets that key in those tables (or, for a file whose
** tables the text does not show, when exactly one line sets `key`);
** otherwise the message stays. */
static void add_line(const char *path, cm_err *err)
{
    size_t plen = strlen(path), keylen;
    char key[64], *text = NULL;
    size_t len = 0;
    keypart want[KEYPATH_DEPTH];
    int at = 0, n;
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
    if (keylen >= sizeof(key) || cm_fs_read(path, 1 << 20, &text, &len, NULL) != 0)
        return;
    memcpy(key, leaf, keylen);
    key[keylen] = '\0';
    n = keypath_split(kp, (size_t)(end - kp), want, KEYPATH_DEPTH - 1);
    if (n > 0)
        at = keypath_line(text, len, want, n);
    if (at == 0 && keylen > 0)
        at = leaf_line(text, len, key, keylen);
    free(text);
    if (at > 0) {
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
