/*
** test_records.c -- a real plugin that drives the ABI 1.1 record functions:
** record_put, record_find, tx_begin/tx_commit/tx_rollback and instances, each
** through `caremesh records OP ...`, printing what the host answered. Its
** init checks that register_lua refuses what it must, then adds Lua functions
** records.echo, .fail, .nothing, .garbage, .huge, .put, .find and .txfind.
*/
#include <caremesh/plugin.h>

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cm_plugin_api *api;
static cm_plugin_ctx *self;

/* "-" stands for NULL on the command line. */
static const char *arg(int argc, char **argv, int i)
{
    return i < argc && strcmp(argv[i], "-") != 0 ? argv[i] : NULL;
}

static int print_text(char *text, const char *err)
{
    if (!text) {
        printf("error: %s\n", err);
        return 1;
    }
    printf("%s\n", text);
    api->free(text);
    return 0;
}

static int print_rc(int rc, const char *err)
{
    if (rc != 0) {
        printf("error: %s\n", err);
        return 1;
    }
    printf("ok\n");
    return 0;
}

/* records batch KIND JSON...: all in one transaction; the first failure rolls back. */
static int batch(int argc, char **argv, char *err, size_t errlen)
{
    if (api->tx_begin(self, err, errlen) != 0)
        return print_rc(-1, err);
    for (int i = 3; i < argc; i++)
        if (api->record_put(self, argv[2], argv[i], err, errlen) != 0) {
            api->tx_rollback(self);
            return print_rc(-1, err);
        }
    return print_rc(api->tx_commit(self, err, errlen), err);
}

static int records(void *ud, int argc, char **argv)
{
    char err[512] = "";
    const char *op = argc > 1 ? argv[1] : "";
    (void)ud;
    if (strcmp(op, "put") == 0 && argc == 4)
        return print_rc(api->record_put(self, argv[2], argv[3], err, sizeof(err)), err);
    if (strcmp(op, "get") == 0 && argc == 4)
        return print_text(api->record_get(self, argv[2], argv[3], err, sizeof(err)), err);
    if (strcmp(op, "find") == 0 && argc == 6)
        return print_text(api->record_find(self, argv[2], arg(argc, argv, 3), arg(argc, argv, 4),
                                           atoi(argv[5]), err, sizeof(err)),
                          err);
    if (strcmp(op, "instances") == 0 && argc == 5)
        return print_text(api->instances(self, arg(argc, argv, 2), arg(argc, argv, 3),
                                         atoi(argv[4]), err, sizeof(err)),
                          err);
    if (strcmp(op, "batch") == 0 && argc >= 4)
        return batch(argc, argv, err, sizeof(err));
    if (strcmp(op, "nested") == 0) { /* a second begin is refused; the first stays usable */
        int rc = api->tx_begin(self, err, sizeof(err));
        if (rc == 0 && api->tx_begin(self, err, sizeof(err)) == 0)
            return printf("error: nested begin accepted\n"), 1;
        printf("refused: %s\n", err);
        return print_rc(api->tx_commit(self, err, sizeof(err)), err);
    }
    if (strcmp(op, "commit-none") == 0)
        return print_rc(api->tx_commit(self, err, sizeof(err)), err);
    if (strcmp(op, "rollback") == 0 && argc == 4) { /* put, then roll back */
        api->tx_rollback(self);                     /* safe with none open */
        if (api->tx_begin(self, err, sizeof(err)) != 0 ||
            api->record_put(self, argv[2], argv[3], err, sizeof(err)) != 0)
            return print_rc(-1, err);
        api->tx_rollback(self);
        return print_rc(0, err);
    }
    if (strcmp(op, "leave-open") == 0 && argc == 4) { /* the host rolls back when we return */
        if (api->tx_begin(self, err, sizeof(err)) != 0 ||
            api->record_put(self, argv[2], argv[3], err, sizeof(err)) != 0)
            return print_rc(-1, err);
        return print_rc(0, err);
    }
    if (strcmp(op, "read-rollback") == 0 && argc == 4) { /* a read in an undone transaction */
        char *rec = NULL;
        if (api->tx_begin(self, err, sizeof(err)) != 0 ||
            !(rec = api->record_get(self, argv[2], argv[3], err, sizeof(err))))
            return print_rc(-1, err);
        api->free(rec);
        api->tx_rollback(self);
        return print_rc(0, err);
    }
    printf("usage: records put|get|find|instances|batch|nested|commit-none|rollback|"
           "leave-open|read-rollback ...\n");
    return 2;
}

static int echo(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    (void)ud;
    (void)err;
    (void)errlen;
    *result = strdup(args);
    return *result ? 0 : -1;
}

static int fail(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    (void)ud;
    (void)result;
    snprintf(err, errlen, "no cohort %s", args);
    return -1;
}

static int nothing(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    (void)ud;
    (void)args;
    (void)err;
    (void)errlen;
    *result = NULL;
    return 0;
}

static int garbage(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    (void)ud;
    (void)args;
    (void)err;
    (void)errlen;
    *result = strdup("{not json");
    return *result ? 0 : -1;
}

/* records.put(kind, record): true */
/* A number that cJSON reads as infinity. */
static int huge(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    (void)ud;
    (void)args;
    (void)err;
    (void)errlen;
    *result = strdup("{\"n\":[1,-1e999]}");
    return *result ? 0 : -1;
}

static int put(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    cJSON *a = cJSON_Parse(args);
    const cJSON *kind = cJSON_GetArrayItem(a, 0);
    char *rec = cJSON_PrintUnformatted(cJSON_GetArrayItem(a, 1));
    int rc = -1;
    (void)ud;
    if (!cJSON_IsString(kind) || !rec)
        snprintf(err, errlen, "usage: records.put(kind, record)");
    else
        rc = api->record_put(self, kind->valuestring, rec, err, errlen);
    free(rec);
    cJSON_Delete(a);
    if (rc == 0 && !(*result = strdup("true")))
        rc = -1;
    return rc;
}

/* records.find(kind, query): the records */
static int find(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    cJSON *a = cJSON_Parse(args);
    const cJSON *kind = cJSON_GetArrayItem(a, 0);
    char *query = cJSON_PrintUnformatted(cJSON_GetArrayItem(a, 1));
    (void)ud;
    *result = cJSON_IsString(kind) && query
                  ? api->record_find(self, kind->valuestring, query, NULL, 100, err, errlen)
                  : NULL;
    if (!cJSON_IsString(kind) || !query)
        snprintf(err, errlen, "usage: records.find(kind, query)");
    free(query);
    cJSON_Delete(a);
    return *result ? 0 : -1;
}

/* records.txfind(kind, query, keep): find in a transaction of its own,
** then commit it (keep) or roll it back; the records */
static int txfind(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    cJSON *a = cJSON_Parse(args);
    bool keep = cJSON_IsTrue(cJSON_GetArrayItem(a, 2));
    int rc = api->tx_begin(self, err, errlen);
    cJSON_DeleteItemFromArray(a, 2);
    char *rest = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    if (rc == 0 && rest && find(ud, rest, result, err, errlen) == 0) {
        if (keep)
            rc = api->tx_commit(self, err, errlen);
        else
            api->tx_rollback(self);
    } else
        rc = -1;
    if (rc != 0) {
        api->tx_rollback(self); /* safe with none open */
        free(*result);
        *result = NULL;
    }
    free(rest);
    return rc;
}

static int records_init(cm_plugin_ctx *ctx, const cm_plugin_api *host, char *err, size_t errlen)
{
    static const char *const bad_modules[] = {"caremesh", "string", "Records", "1x",
                                              "a.b",      "",       NULL};
    api = host;
    self = ctx;
    if (host->abi_minor < 1 || host->size < sizeof(cm_plugin_api))
        return snprintf(err, errlen, "needs plugin ABI 1.1"), -1;
    for (int i = 0; bad_modules[i]; i++)
        if (api->register_lua(ctx, bad_modules[i], "echo", echo, NULL) == 0)
            return snprintf(err, errlen, "register_lua accepted module \"%s\"", bad_modules[i]), -1;
    if (api->register_lua(ctx, "records", "Echo", echo, NULL) == 0 ||
        api->register_lua(ctx, "records", "echo", NULL, NULL) == 0)
        return snprintf(err, errlen, "register_lua accepted a bad name or no function"), -1;
    if (api->register_lua(ctx, "records", "echo", echo, NULL) != 0 ||
        api->register_lua(ctx, "records", "echo", echo, NULL) == 0)
        return snprintf(err, errlen, "register_lua: first accepted, second refused expected"), -1;
    if (api->register_lua(ctx, "records", "fail", fail, NULL) != 0 ||
        api->register_lua(ctx, "records", "nothing", nothing, NULL) != 0 ||
        api->register_lua(ctx, "records", "garbage", garbage, NULL) != 0 ||
        api->register_lua(ctx, "records", "huge", huge, NULL) != 0 ||
        api->register_lua(ctx, "records", "put", put, NULL) != 0 ||
        api->register_lua(ctx, "records", "find", find, NULL) != 0 ||
        api->register_lua(ctx, "records", "txfind", txfind, NULL) != 0)
        return snprintf(err, errlen, "register_lua refused a good name"), -1;
    if (api->register_command(ctx, "records", "drive the record functions of plugin ABI 1.1",
                              records, NULL) != 0)
        return snprintf(err, errlen, "register_command refused"), -1;
    return 0;
}

CM_PLUGIN_EXPORT const cm_plugin_desc caremesh_plugin = {
    sizeof(cm_plugin_desc),
    CM_PLUGIN_ABI_MAJOR,
    CM_PLUGIN_ABI_MINOR,
    "records",
    "1.0.0",
    records_init,
    NULL,
};
