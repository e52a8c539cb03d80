/*
** share.c -- the directory and indicators shared with partner nodes (see
** share.h).
*/
#include "share.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

/* Active partnerships with a member organization hosted on node ?2 and one
** hosted here (?1): (partnership id, its doc, the local member object,
** the local organization's id and doc). */
#define PARTNER_ROWS                                                                               \
    "SELECT p.id, p.doc, m.value, o.id, o.doc FROM record p, json_each(p.doc, '$.members') m "     \
    "JOIN record o ON o.kind = 'organization' AND o.id = json_extract(m.value, '$.organization') " \
    "WHERE p.kind = 'partnership' AND coalesce(json_extract(p.doc, '$.status'), 'active') = "      \
    "'active' AND json_extract(o.doc, '$.node') = ?1 AND EXISTS (SELECT 1 FROM "                   \
    "json_each(p.doc, '$.members') m2 JOIN record o2 ON o2.kind = 'organization' AND o2.id = "     \
    "json_extract(m2.value, '$.organization') WHERE json_extract(o2.doc, '$.node') = ?2) "         \
    "ORDER BY o.id, p.id"

static int fail_db(cm_store *store, sqlite3_stmt *st, cm_err *err, const char *what)
{
    int rc = cm_store_error(store, err, what);
    if (st)
        sqlite3_reset(st);
    return rc;
}

static cJSON *parse_col(sqlite3_stmt *st, int col)
{
    const char *t = (const char *)sqlite3_column_text(st, col);
    return t ? cJSON_Parse(t) : NULL;
}

/* Add string s to array arr unless it is there. */
static void add_unique(cJSON *arr, const char *s)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if (cJSON_IsString(it) && strcmp(it->valuestring, s) == 0) return;
    cJSON_AddItemToArray(arr, cJSON_CreateString(s));
}

/* Copy the fields named in keys from src to dst. */
static void copy_fields(cJSON *dst, const cJSON *src, const char *const *keys)
{
    for (int i = 0; keys[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(src, keys[i]);
        if (v)
            cJSON_AddItemToObject(dst, keys[i], cJSON_Duplicate(v, true));
    }
}

static int add_providers(cm_store *store, cJSON *org, const char *org_id, cm_err *err)
{
    static const char *const keys[] = {"id", "name", "role", "specialty", NULL};
    sqlite3_stmt *st = cm_store_prepare(store,
                                        "SELECT doc FROM record WHERE kind = 'provider' AND "
                                        "json_extract(doc, '$.organization') = ?1 ORDER BY id",
                                        err);
    if (!st)
        return err->code;
    cJSON *list = cJSON_AddArrayToObject(org, "providers");
    sqlite3_bind_text(st, 1, org_id, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *doc = parse_col(st, 0), *p = cJSON_CreateObject();
        if (doc && p)
            copy_fields(p, doc, keys);
        cJSON_AddItemToArray(list, p);
        cJSON_Delete(doc);
    }
    if (rc != SQLITE_DONE)
        return fail_db(store, st, err, "directory providers");
    sqlite3_reset(st);
    return 0;
}

int cm_share_directory(cm_store *store, const char *node_id, const char *peer, cJSON **out,
                       cm_err *err)
{
    static const char *const keys[] = {"id",    "name",  "kind",    "node",
                                       "phone", "email", "address", NULL};
    cJSON *orgs = cJSON_CreateArray(), *cur = NULL;
    sqlite3_stmt *st = cm_store_prepare(store, PARTNER_ROWS, err);
    int rc = 0;
    *out = NULL;
    if (!st || !orgs) {
        cJSON_Delete(orgs);
        return st ? cm_err_set(err, CM_ENOMEM, "out of memory") : err->code;
    }
    sqlite3_bind_text(st, 1, node_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, peer, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *org_id = (const char *)sqlite3_column_text(st, 3);
        const cJSON *id = cur ? cJSON_GetObjectItemCaseSensitive(cur, "id") : NULL;
        if (!cur || !cJSON_IsString(id) || strcmp(id->valuestring, org_id) != 0) {
            cJSON *doc = parse_col(st, 4);
            cur = cJSON_CreateObject();
            if (doc)
                copy_fields(cur, doc, keys);
            cJSON_Delete(doc);
            cJSON_AddArrayToObject(cur, "services");
            cJSON_AddArrayToObject(cur, "partnerships");
            cJSON_AddItemToArray(orgs, cur);
        }
        cJSON *member = parse_col(st, 2);
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(member, "offers"))
        {
            if (cJSON_IsString(s))
                add_unique(cJSON_GetObjectItemCaseSensitive(cur, "services"), s->valuestring);
        }
        cJSON_Delete(member);
        add_unique(cJSON_GetObjectItemCaseSensitive(cur, "partnerships"),
                   (const char *)sqlite3_column_text(st, 0));
    }
    if (rc != SQLITE_DONE) {
        cJSON_Delete(orgs);
        return fail_db(store, st, err, "directory");
    }
    sqlite3_reset(st);
    cJSON_ArrayForEach(cur, orgs)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(cur, "id");
        if (cJSON_IsString(id) && (rc = add_providers(store, cur, id->valuestring, err)) != 0) {
            cJSON_Delete(orgs);
            return rc;
        }
    }
    *out = orgs;
    return 0;
}

static int run_in_tx(cm_store *store, bool *began, cm_err *err)
{
    *began = !cm_store_in_tx(store);
    return *began ? cm_store_begin(store, err) : 0;
}

static int end_tx(cm_store *store, bool began, int rc, cm_err *err)
{
    if (!began)
        return rc;
    if (rc == 0)
        return cm_store_commit(store, err);
    cm_store_rollback(store);
    return rc;
}

static int exec_delete(cm_store *store, const char *sql, const char *peer, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(store, sql, err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : cm_store_error(store, err, "share");
}

int cm_share_directory_keep(cm_store *store, const cm_clock *clock, const char *peer,
                            const cJSON *orgs, int *kept, int *dropped, char *dropped_why,
                            size_t whysz, cm_err *err)
{
    char now[CM_TIME_BUFSZ];
    const cJSON *o;
    int i = 0, rc;
    bool began;
    *kept = *dropped = 0;
    if (whysz)
        dropped_why[0] = '\0';
    if (!cJSON_IsArray(orgs))
        return cm_err_set(err, CM_EINVAL, "organizations: must be an array");
    cJSON_ArrayForEach(o, orgs)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
        if (!cJSON_IsObject(o) || !cJSON_IsString(id) || cm_id_check(id->valuestring) != 0 ||
            !cJSON_IsString(name))
            return cm_err_set(err, CM_EINVAL,
                              "organizations[%d]: must be an object with an id and a name", i);
        i++;
    }
    cm_time_format(cm_clock_now_ms(clock), now, sizeof(now));
    if ((rc = run_in_tx(store, &began, err)) != 0)
        return rc;
    rc = exec_delete(store, "DELETE FROM directory WHERE peer = ?1", peer, err);
    sqlite3_stmt *st =
        rc ? NULL
           : cm_store_prepare(store,
                              "INSERT OR REPLACE INTO directory(peer, organization, doc, received) "
                              "VALUES (?1, ?2, ?3, ?4)",
                              err);
    if (!rc && !st)
        rc = err->code;
    cJSON_ArrayForEach(o, orgs)
    {
        if (rc != 0)
            break;
        const cJSON *node = cJSON_GetObjectItemCaseSensitive(o, "node");
        const char *id = cJSON_GetObjectItemCaseSensitive(o, "id")->valuestring;
        if (!cJSON_IsString(node) || strcmp(node->valuestring, peer) != 0) {
            if (*dropped == 0 && whysz)
                snprintf(dropped_why, whysz, "organization \"%s\" claims node \"%.128s\", not %s",
                         id, cJSON_IsString(node) ? node->valuestring : "", peer);
            (*dropped)++;
            continue;
        }
        char *text = cJSON_PrintUnformatted(o);
        if (!text) {
            rc = cm_err_set(err, CM_ENOMEM, "out of memory");
            break;
        }
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, text, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
        int step = sqlite3_step(st);
        sqlite3_reset(st);
        free(text);
        if (step != SQLITE_DONE)
            rc = cm_store_error(store, err, "directory");
        else
            (*kept)++;
    }
    return end_tx(store, began, rc, err);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The statistics of KPI name over [since, ...) for the partners of p. */
static int kpi_stats(cm_store *store, const char *name, const char *pid, const char *since,
                     cJSON *ind, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        store,
        "SELECT k.value FROM kpi_observation k WHERE k.name = ?1 AND k.at >= ?3 AND "
        "(json_extract(k.labels, '$.partner') IS NULL OR json_extract(k.labels, '$.partner') IN "
        "(SELECT json_extract(m.value, '$.organization') FROM record p, "
        "json_each(p.doc, '$.members') m WHERE p.kind = 'partnership' AND p.id = ?2))",
        err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, pid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, since, -1, SQLITE_STATIC);
    double *v = NULL, sum = 0;
    size_t n = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            double *grown = realloc(v, (cap = cap ? cap * 2 : 64) * sizeof(*v));
            if (!grown) {
                free(v);
                sqlite3_reset(st);
                return cm_err_set(err, CM_ENOMEM, "out of memory");
            }
            v = grown;
        }
        v[n] = sqlite3_column_double(st, 0);
        sum += v[n++];
    }
    if (rc != SQLITE_DONE) {
        free(v);
        return fail_db(store, st, err, "indicators");
    }
    sqlite3_reset(st);
    cJSON_AddNumberToObject(ind, "count", (double)n);
    cJSON_AddNumberToObject(ind, "sum", sum);
    if (n > 0) {
        qsort(v, n, sizeof(*v), cmp_double);
        cJSON_AddNumberToObject(ind, "mean", sum / (double)n);
        cJSON_AddNumberToObject(ind, "median", n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0);
        cJSON_AddNumberToObject(ind, "min", v[0]);
        cJSON_AddNumberToObject(ind, "max", v[n - 1]);
    }
    free(v);
    return 0;
}

int cm_share_indicators(cm_store *store, const cm_clock *clock, const char *node_id,
                        const char *peer, cJSON **out, cm_err *err)
{
    char now[CM_TIME_BUFSZ], since[CM_TIME_BUFSZ], last_pid[256] = "";
    int64_t now_ms = cm_clock_now_ms(clock);
    cJSON *list = cJSON_CreateArray();
    int rc = 0;
    *out = NULL;
    cm_time_format(now_ms, now, sizeof(now));
    cm_time_format(now_ms - (int64_t)CM_SHARE_INDICATOR_DAYS * 86400000, since, sizeof(since));
    sqlite3_stmt *st = cm_store_prepare(store, PARTNER_ROWS, err);
    if (!st || !list) {
        cJSON_Delete(list);
        return st ? cm_err_set(err, CM_ENOMEM, "out of memory") : err->code;
    }
    /* the partnerships, once each (a row per local member) */
    cJSON *ships = cJSON_CreateObject();
    sqlite3_bind_text(st, 1, node_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, peer, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *pid = (const char *)sqlite3_column_text(st, 0);
        if (!cJSON_GetObjectItemCaseSensitive(ships, pid))
            cJSON_AddItemToObject(ships, pid, parse_col(st, 1));
    }
    if (rc != SQLITE_DONE) {
        cJSON_Delete(ships);
        cJSON_Delete(list);
        return fail_db(store, st, err, "indicators");
    }
    sqlite3_reset(st);
    rc = 0;
    const cJSON *p, *k;
    cJSON_ArrayForEach(p, ships)
    {
        snprintf(last_pid, sizeof(last_pid), "%s", p->string);
        cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(p, "kpis"))
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(k, "name");
            if (!cJSON_IsString(name) || rc != 0)
                continue;
            cJSON *ind = cJSON_CreateObject();
            cJSON_AddStringToObject(ind, "partnership", last_pid);
            cJSON_AddStringToObject(ind, "name", name->valuestring);
            cJSON_AddStringToObject(ind, "from", since);
            cJSON_AddStringToObject(ind, "to", now);
            cJSON_AddItemToArray(list, ind);
            rc = kpi_stats(store, name->valuestring, last_pid, since, ind, err);
        }
    }
    cJSON_Delete(ships);
    if (rc != 0) {
        cJSON_Delete(list);
        return rc;
    }
    *out = list;
    return 0;
}

int cm_share_indicators_keep(cm_store *store, const cm_clock *clock, const char *peer,
                             const cJSON *list, int *kept, cm_err *err)
{
    static const char *const nums[] = {"count", "sum", "mean", "median", "min", "max", NULL};
    char now[CM_TIME_BUFSZ];
    const cJSON *it;
    int i = 0, rc;
    bool began;
    *kept = 0;
    if (!cJSON_IsArray(list))
        return cm_err_set(err, CM_EINVAL, "indicators: must be an array");
    cJSON_ArrayForEach(it, list)
    {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(it, "partnership");
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name");
        if (!cJSON_IsObject(it) || !cJSON_IsString(p) || cm_id_check(p->valuestring) != 0 ||
            !cJSON_IsString(n) || !n->valuestring[0] || strlen(n->valuestring) > 128)
            return cm_err_set(err, CM_EINVAL,
                              "indicators[%d]: must be an object with a partnership and a name", i);
        for (int j = 0; nums[j]; j++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, nums[j]);
            if (v && !cJSON_IsNumber(v))
                return cm_err_set(err, CM_EINVAL, "indicators[%d].%s: must be a number", i,
                                  nums[j]);
        }
        const cJSON *c;
        cJSON_ArrayForEach(c, it)
        {
            bool known = strcmp(c->string, "partnership") == 0 || strcmp(c->string, "name") == 0 ||
                         strcmp(c->string, "from") == 0 || strcmp(c->string, "to") == 0;
            for (int j = 0; nums[j] && !known; j++)
                known = strcmp(c->string, nums[j]) == 0;
            if (!known) /* aggregates only: nothing else may ride along */
                return cm_err_set(err, CM_EINVAL,
                                  "indicators[%d].%s: not an aggregate field (partnership, name, "
                                  "from, to, count, sum, mean, median, min, max)",
                                  i, c->string);
        }
        i++;
    }
    cm_time_format(cm_clock_now_ms(clock), now, sizeof(now));
    if ((rc = run_in_tx(store, &began, err)) != 0)
        return rc;
    rc = exec_delete(store, "DELETE FROM indicator WHERE peer = ?1", peer, err);
    sqlite3_stmt *st =
        rc ? NULL
           : cm_store_prepare(store,
                              "INSERT OR REPLACE INTO indicator(peer, partnership, name, doc, "
                              "received) VALUES (?1, ?2, ?3, ?4, ?5)",
                              err);
    if (!rc && !st)
        rc = err->code;
    cJSON_ArrayForEach(it, list)
    {
        if (rc != 0)
            break;
        char *text = cJSON_PrintUnformatted(it);
        if (!text) {
            rc = cm_err_set(err, CM_ENOMEM, "out of memory");
            break;
        }
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, cJSON_GetObjectItemCaseSensitive(it, "partnership")->valuestring,
                          -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, cJSON_GetObjectItemCaseSensitive(it, "name")->valuestring, -1,
                          SQLITE_STATIC);
        sqlite3_bind_text(st, 4, text, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, now, -1, SQLITE_STATIC);
        int step = sqlite3_step(st);
        sqlite3_reset(st);
        free(text);
        if (step != SQLITE_DONE)
            rc = cm_store_error(store, err, "indicator");
        else
            (*kept)++;
    }
    return end_tx(store, began, rc, err);
}
