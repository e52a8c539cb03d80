/*
** plugin.c -- the plugin host: dlopen, ABI checks, the api table (records,
** transactions and instances for 1.1, audited), and the registrations
** (subscriptions, commands, channels, Lua functions) of each plugin, undone
** on unload.
*/
#include "plugin.h"

#include "audit.h"
#include "caremesh/plugin.h"
#include "clock.h"
#include "log.h"
#include "text.h"
#include "valuesets.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLUGIN_MAX_SUBS      64
#define PLUGIN_MAX_COMMANDS  32
#define PLUGIN_NAME_MAX      64
#define PLUGIN_MAX_CHANNELS  16
#define PLUGIN_MAX_EXPORTS   64
#define PLUGIN_RETRY_BASE_MS 5000
#define PLUGIN_RETRY_MAX_MS  (3600 * 1000LL)

typedef struct sub {
    int kind;
    cm_plugin_event_fn fn;
    void *ud;
} sub;

typedef struct command {
    struct cm_plugin_ctx *owner;
    char name[PLUGIN_NAME_MAX];
    char summary[160];
    cm_plugin_command_fn fn;
    void *ud;
} command;

typedef struct channel {
    struct cm_plugin_ctx *owner;
    char name[PLUGIN_NAME_MAX];
    cm_plugin_channel_fn fn;
    void *ud;
} channel;

/* A function for Lua: MODULE.NAME. */
typedef struct lua_export {
    char module[PLUGIN_NAME_MAX];
    char name[PLUGIN_NAME_MAX];
    cm_plugin_lua_fn fn;
    void *ud;
} lua_export;

/* A write scope: a transaction of our own, or a savepoint inside the open one. */
enum { TX_NONE, TX_OWN, TX_SAVEPOINT };
typedef struct tx_scope {
    int mode;
    char savepoint[32];
} tx_scope;

struct cm_plugin_ctx {
    cm_plugin_host *host;
    void *dl;
    const cm_plugin_desc *desc;
    char name[PLUGIN_NAME_MAX];
    char *config; /* its config section as JSON text */
    char *path;   /* as the config gave it */
    void *data;   /* a loader's state for the plugin */
    bool loading; /* inside init: failures undo everything */
    sub subs[PLUGIN_MAX_SUBS];
    int nsubs;
    command commands[PLUGIN_MAX_COMMANDS];
    int ncommands;
    channel channels[PLUGIN_MAX_CHANNELS];
    int nchannels;
    lua_export exports[PLUGIN_MAX_EXPORTS];
    int nexports;
    tx_scope tx;  /* the plugin's transaction (tx_begin), if open */
    cJSON *reads; /* [patient, detail] read inside it: audited again if it is undone */
    struct cm_plugin_ctx *next;
};

struct cm_plugin_host {
    cm_model *model;
    cm_plugin_ctx *plugins; /* in load order */
    const cm_plugin_loader *loader;
    void *loader_ud;
    cJSON **audited; /* borrowed: cm_plugin_host_lua_call's, during the call */
};

/* ---- the api table ---------------------------------------------------- */

static void api_log(cm_plugin_ctx *ctx, int level, const char *fmt, ...)
{
    char msg[1024], event[PLUGIN_NAME_MAX + 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(event, sizeof(event), "plugin.%s", ctx->name);
    if (level < CM_PLUGIN_LOG_DEBUG || level > CM_PLUGIN_LOG_ERROR)
        level = CM_PLUGIN_LOG_INFO;
    cm_log((cm_log_level)level, event, "%s", msg);
}

static const char *api_config(cm_plugin_ctx *ctx)
{
    return ctx->config ? ctx->config : "{}";
}

static int api_subscribe(cm_plugin_ctx *ctx, int kind, cm_plugin_event_fn fn, void *ud)
{
    if (kind < CM_PLUGIN_EVENT_INSTANCE_STARTED || kind > CM_PLUGIN_EVENT_MESSAGE_RECEIVED || !fn ||
        ctx->nsubs >= PLUGIN_MAX_SUBS)
        return -1;
    ctx->subs[ctx->nsubs++] = (sub){kind, fn, ud};
    return 0;
}

static bool command_name_ok(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len >= PLUGIN_NAME_MAX || name[0] < 'a' || name[0] > 'z')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '-'))
            return false;
    return true;
}

static command *find_command(cm_plugin_host *host, const char *name)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->ncommands; i++)
            if (strcmp(p->commands[i].name, name) == 0)
                return &p->commands[i];
    return NULL;
}

static int api_register_command(cm_plugin_ctx *ctx, const char *name, const char *summary,
                                cm_plugin_command_fn fn, void *ud)
{
    if (!command_name_ok(name) || !fn || ctx->ncommands >= PLUGIN_MAX_COMMANDS ||
        find_command(ctx->host, name))
        return -1;
    for (int i = 0; i < ctx->ncommands; i++)
        if (strcmp(ctx->commands[i].name, name) == 0)
            return -1;
    command *c = &ctx->commands[ctx->ncommands++];
    c->owner = ctx;
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->summary, sizeof(c->summary), "%s", summary ? summary : "");
    c->fn = fn;
    c->ud = ud;
    return 0;
}

static channel *find_channel(cm_plugin_host *host, const char *name)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nchannels; i++)
            if (strcmp(p->channels[i].name, name) == 0)
                return &p->channels[i];
    return NULL;
}

static int api_register_channel(cm_plugin_ctx *ctx, const char *name, cm_plugin_channel_fn fn,
                                void *ud)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len >= PLUGIN_NAME_MAX || !fn || ctx->nchannels >= PLUGIN_MAX_CHANNELS ||
        find_channel(ctx->host, name))
        return -1;
    for (size_t i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '_' || name[i] == '-'))
            return -1;
    for (int i = 0; i < ctx->nchannels; i++) /* ctx is not in the host's list while loading */
        if (strcmp(ctx->channels[i].name, name) == 0)
            return -1;
    channel *c = &ctx->channels[ctx->nchannels++];
    c->owner = ctx;
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->fn = fn;
    c->ud = ud;
    return 0;
}

static const cJSON *field(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

static void forget_reads(cm_plugin_ctx *ctx)
{
    cJSON_Delete(ctx->reads);
    ctx->reads = NULL;
}

/* ---- 1.1: records, transactions, instances ---------------------------- */

/* Write errbuf when the plugin gave one. */
static void say(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!errbuf || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

static cm_store *records_store(cm_plugin_ctx *ctx, char *errbuf, size_t errlen)
{
    if (!ctx->host->model) {
        say(errbuf, errlen, "records are not available to plugins here");
        return NULL;
    }
    return cm_model_store(ctx->host->model);
}

/* The kind named, or -1 with errbuf listing the kinds. */
static int parse_kind(const char *kind, char *errbuf, size_t errlen)
{
    int k = kind ? cm_kind_parse(kind) : -1;
    if (k < 0) {
        char list[256] = "";
        for (int i = 0; i < CM_KIND__COUNT; i++)
            snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                     cm_kind_name((cm_kind)i));
        say(errbuf, errlen, "unknown record kind \"%s\" (kinds: %s)", kind ? kind : "", list);
    }
    return k;
}

/* Parse text as one JSON value; NULL with errbuf naming what (and the byte) on error. */
static cJSON *parse_json(const char *what, const char *text, char *errbuf, size_t errlen)
{
    const char *end = NULL;
    cJSON *v = text ? cJSON_ParseWithOpts(text, &end, true) : NULL;
    if (!v)
        say(errbuf, errlen, "%s: not valid JSON (at byte %ld)", what,
            text && end ? (long)(end - text) : 0L);
    return v;
}

/* Begin a write scope: our own transaction, or a savepoint inside the open one. */
static int scope_begin(cm_store *store, tx_scope *s, const char *savepoint, cm_err *err)
{
    char sql[64];
    int rc;
    s->mode = TX_NONE;
    if (cm_store_tx_lost(store))
        return cm_err_set(err, CM_EDB,
                          "the enclosing transaction was rolled back by an earlier error; "
                          "nothing more can be written in it");
    if (!cm_store_in_tx(store)) {
        if ((rc = cm_store_begin(store, err)) == 0)
            s->mode = TX_OWN;
        return rc;
    }
    if ((rc = cm_store_nested_write(store, err)) != 0)
        return rc;
    snprintf(s->savepoint, sizeof(s->savepoint), "%s", savepoint);
    snprintf(sql, sizeof(sql), "SAVEPOINT %s", s->savepoint);
    if ((rc = cm_store_exec(store, sql, err)) == 0)
        s->mode = TX_SAVEPOINT;
    return rc;
}

/* End a write scope: keep (commit/release) or undo it. A failed keep undoes. */
static int scope_end(cm_store *store, tx_scope *s, bool keep, cm_err *err)
{
    char sql[64];
    int rc = 0, mode = s->mode;
    s->mode = TX_NONE;
    if (mode == TX_OWN) {
        if (keep)
            return cm_store_commit(store, err); /* rolls back itself on failure */
        cm_store_rollback(store);
        return 0;
    }
    if (mode != TX_SAVEPOINT)
        return 0;
    if (keep) {
        snprintf(sql, sizeof(sql), "RELEASE %s", s->savepoint);
        if ((rc = cm_store_exec(store, sql, err)) == 0)
            return 0;
    }
    snprintf(sql, sizeof(sql), "ROLLBACK TO %s", s->savepoint);
    sqlite3_exec(cm_store_db(store), sql, NULL, NULL, NULL);
    snprintf(sql, sizeof(sql), "RELEASE %s", s->savepoint);
    sqlite3_exec(cm_store_db(store), sql, NULL, NULL, NULL);
    return rc;
}

/* The patient whose data rec is (the patient itself, or its "patient" reference). */
static const char *record_patient(int kind, const cJSON *rec)
{
    const cJSON *v = field(rec, kind == CM_KIND_PATIENT ? "id" : "patient");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Hand a read to the caller of cm_plugin_host_lua_call, whose rollback
** would undo its entry: the plugin saw the data all the same. A read in the
** plugin's own transaction waits for its end (api_tx_commit hands it on, a
** rollback writes it again: see replay_reads), so that it is handed once. */
static int collect_read(cm_plugin_ctx *ctx, const cm_audit_entry *e, cm_err *err)
{
    if (!ctx->host->audited || ctx->tx.mode != TX_NONE || strcmp(e->action, "patient.read") != 0)
        return 0;
    return cm_audit_collect(ctx->host->audited, e, err);
}

static int audit(cm_plugin_ctx *ctx, const char *action, const char *patient, const char *detail,
                 cm_err *err)
{
    char actor[PLUGIN_NAME_MAX + 8];
    snprintf(actor, sizeof(actor), "plugin:%s", ctx->name);
    cm_audit_entry e = {actor, action, patient, "", "", "ok", detail};
    int rc = cm_audit_append(cm_model_store(ctx->host->model), cm_model_clock(ctx->host->model), &e,
                             err);
    return rc ? rc : collect_read(ctx, &e, err);
}

/* Audit the reads of recs (an array of records of kind, or one record) in one
** scope. Inside the plugin's transaction they are also remembered, to be
** written again should that transaction be rolled back: the plugin saw them. */
static int audit_reads(cm_plugin_ctx *ctx, int kind, const char *what, const cJSON *recs,
                       cm_err *err)
{
    cm_store *store = cm_model_store(ctx->host->model);
    tx_scope s;
    const cJSON *rec;
    int rc;
    if ((rc = scope_begin(store, &s, "cm_plugin_audit", err)) != 0)
        return rc;
    for (rec = cJSON_IsArray(recs) ? recs->child : recs; rec && rc == 0;
         rec = cJSON_IsArray(recs) ? rec->next : NULL) {
        const char *patient = record_patient(kind, rec);
        const cJSON *id = field(rec, "id");
        char detail[300];
        if (!patient)
            continue;
        snprintf(detail, sizeof(detail), "%s %s", what ? what : cm_kind_name((cm_kind)kind),
                 cJSON_IsString(id) ? id->valuestring : "");
        rc = audit(ctx, "patient.read", patient, detail, err);
        if (rc == 0 && ctx->tx.mode != TX_NONE) {
            cJSON *pair = cJSON_CreateArray();
            if (!ctx->reads)
                ctx->reads = cJSON_CreateArray();
            if (!pair || !cJSON_AddItemToArray(ctx->reads, pair) ||
                !cJSON_AddItemToArray(pair, cJSON_CreateString(patient)) ||
                !cJSON_AddItemToArray(pair, cJSON_CreateString(detail)))
                rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        }
    }
    return rc == 0 ? scope_end(store, &s, true, err) : (scope_end(store, &s, false, NULL), rc);
}

/* The plugin's transaction was undone: the reads made in it happened all the same. */
static void replay_reads(cm_plugin_ctx *ctx)
{
    const cJSON *pair;
    cJSON_ArrayForEach(pair, ctx->reads)
    {
        cm_err err;
        if (audit(ctx, "patient.read", cJSON_GetArrayItem(pair, 0)->valuestring,
                  cJSON_GetArrayItem(pair, 1)->valuestring, &err) != 0)
            cm_log(CM_LOG_ERROR, "audit.fail", "plugin %s: a read in a rolled back transaction: %s",
                   ctx->name, err.msg);
    }
    forget_reads(ctx);
}

/* The plugin's transaction was kept: in the caller's transaction (a
** savepoint in it), its reads are the caller's to write again should it
** roll back (collect_read). */
static void handover_reads(cm_plugin_ctx *ctx)
{
    const cJSON *pair;
    char actor[PLUGIN_NAME_MAX + 8];
    snprintf(actor, sizeof(actor), "plugin:%s", ctx->name);
    cJSON_ArrayForEach(pair, ctx->reads)
    {
        cm_audit_entry e = {actor, "patient.read", cJSON_GetArrayItem(pair, 0)->valuestring, "",
                            "",    "ok",           cJSON_GetArrayItem(pair, 1)->valuestring};
        cm_err err;
        if (collect_read(ctx, &e, &err) != 0)
            cm_log(CM_LOG_ERROR, "audit.fail", "plugin %s: a read kept for its caller: %s",
                   ctx->name, err.msg);
    }
    forget_reads(ctx);
}

static void api_tx_rollback(cm_plugin_ctx *ctx)
{
    if (ctx->tx.mode == TX_NONE)
        return;
    scope_end(cm_model_store(ctx->host->model), &ctx->tx, false, NULL);
    replay_reads(ctx);
}

static int api_tx_begin(cm_plugin_ctx *ctx, char *errbuf, size_t errlen)
{
    cm_store *store = records_store(ctx, errbuf, errlen);
    cm_err err;
    if (!store)
        return -1;
    if (ctx->tx.mode != TX_NONE) {
        say(errbuf, errlen,
            "a transaction is already open: tx_begin does not nest (commit or roll back first)");
        return -1;
    }
    if (scope_begin(store, &ctx->tx, "cm_plugin_tx", &err) != 0) {
        say(errbuf, errlen, "tx_begin: %s", err.msg);
        return -1;
    }
    forget_reads(ctx);
    return 0;
}

static int api_tx_commit(cm_plugin_ctx *ctx, char *errbuf, size_t errlen)
{
    cm_err err;
    if (ctx->tx.mode == TX_NONE) {
        say(errbuf, errlen, "tx_commit: no transaction is open (tx_begin first)");
        return -1;
    }
    if (scope_end(cm_model_store(ctx->host->model), &ctx->tx, true, &err) != 0) {
        say(errbuf, errlen, "tx_commit: %s (nothing of the transaction was kept)", err.msg);
        replay_reads(ctx);
        return -1;
    }
    handover_reads(ctx);
    return 0;
}

/* A call into the plugin returned: a transaction it left open is undone. */
static void call_returned(cm_plugin_ctx *ctx)
{
    if (ctx->tx.mode == TX_NONE)
        return;
    cm_log(CM_LOG_WARN, "plugin.tx_open",
           "plugin %s returned with its transaction open: rolled back", ctx->name);
    api_tx_rollback(ctx);
}

/* A JSON merge patch (RFC 7386) that turns old into new: removed fields null. */
static cJSON *replace_patch(const cJSON *old, const cJSON *new)
{
    cJSON *patch = cJSON_CreateObject();
    const cJSON *item;
    bool ok = patch != NULL;
    cJSON_ArrayForEach(item, old)
    {
        if (ok && !cJSON_GetObjectItemCaseSensitive(new, item->string))
            ok = cJSON_AddNullToObject(patch, item->string) != NULL;
    }
    cJSON_ArrayForEach(item, new)
    {
        const cJSON *was = cJSON_GetObjectItemCaseSensitive(old, item->string);
        cJSON *v = !ok                                           ? NULL
                   : cJSON_IsObject(item) && cJSON_IsObject(was) ? replace_patch(was, item)
                                                                 : cJSON_Duplicate(item, true);
        ok = v && cJSON_AddItemToObject(patch, item->string, v);
        if (!ok)
            cJSON_Delete(v);
    }
    if (!ok) {
        cJSON_Delete(patch);
        return NULL;
    }
    return patch;
}

/* Create doc, or replace the record with its id as the next version; audit the patient's. */
static int put_record(cm_plugin_ctx *ctx, int k, cJSON *doc, cm_err *err)
{
    cm_model *model = ctx->host->model;
    const char *id = field(doc, "id")->valuestring, *patient;
    cJSON *old = NULL, *patch = NULL, *out = NULL;
    char detail[320];
    int rc = cm_model_get(model, (cm_kind)k, id, &old, err);
    if (rc == CM_ENOTFOUND)
        rc = cm_model_create(model, (cm_kind)k, doc, &out, err);
    else if (rc == 0 && !(patch = replace_patch(old, doc)))
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
    else if (rc == 0)
        rc = cm_model_update(model, (cm_kind)k, id, patch, &out, err);
    if (rc == 0 && (patient = record_patient(k, out))) {
        const cJSON *meta = field(out, "meta"), *ver = field(meta, "versionId");
        snprintf(detail, sizeof(detail), "%s %s version %s", cm_kind_name((cm_kind)k), id,
                 cJSON_IsString(ver) ? ver->valuestring : "?");
        rc = audit(ctx, "patient.write", patient, detail, err);
        const char *was = old ? record_patient(k, old) : NULL;
        if (rc == 0 && was && strcmp(was, patient) != 0) /* moved from another patient */
            rc = audit(ctx, "patient.write", was, detail, err);
    }
    cJSON_Delete(old);
    cJSON_Delete(patch);
    cJSON_Delete(out);
    return rc;
}

static int api_record_put(cm_plugin_ctx *ctx, const char *kind, const char *json, char *errbuf,
                          size_t errlen)
{
    cm_store *store = records_store(ctx, errbuf, errlen);
    int k = store ? parse_kind(kind, errbuf, errlen) : -1;
    cJSON *doc = k >= 0 ? parse_json(kind, json, errbuf, errlen) : NULL;
    tx_scope s;
    cm_err err;
    int rc = -1;
    if (!doc)
        return -1;
    if (!cJSON_IsObject(doc)) {
        say(errbuf, errlen, "%s: the record must be a JSON object", kind);
        goto done;
    }
    while (cJSON_GetObjectItemCaseSensitive(doc, "meta")) /* as record_get gave it: the host's */
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "meta");
    if (!cJSON_IsString(field(doc, "id"))) {
        say(errbuf, errlen, "%s.id: required, a string", kind);
        goto done;
    }
    if (scope_begin(store, &s, "cm_plugin_put", &err) != 0) {
        say(errbuf, errlen, "%s", err.msg);
        goto done;
    }
    if (put_record(ctx, k, doc, &err) != 0) {
        scope_end(store, &s, false, NULL);
        say(errbuf, errlen, "%s", err.msg);
    } else if (scope_end(store, &s, true, &err) != 0) {
        say(errbuf, errlen, "%s", err.msg);
    } else {
        rc = 0;
    }
done:
    cJSON_Delete(doc);
    return rc;
}

/* Print v for the plugin (freed with api->free), or NULL with errbuf. */
static char *hand_over(cJSON *v, char *errbuf, size_t errlen)
{
    char *text = v ? cJSON_PrintUnformatted(v) : NULL;
    if (v && !text)
        say(errbuf, errlen, "out of memory");
    cJSON_Delete(v);
    return text;
}

static char *api_record_find(cm_plugin_ctx *ctx, const char *kind, const char *query,
                             const char *after, int limit, char *errbuf, size_t errlen)
{
    cm_store *store = records_store(ctx, errbuf, errlen);
    int k = store ? parse_kind(kind, errbuf, errlen) : -1;
    cJSON *filter = NULL, *found = NULL;
    cm_err err;
    if (k < 0)
        return NULL;
    if (query && !(filter = parse_json("query", query, errbuf, errlen)))
        return NULL;
    if (filter && !cJSON_IsObject(filter)) {
        say(errbuf, errlen, "query: must be a JSON object of find keys to strings");
    } else if (cm_model_find(ctx->host->model, (cm_kind)k, filter, after, limit, &found, &err) !=
                   0 ||
               audit_reads(ctx, k, NULL, found, &err) != 0) {
        say(errbuf, errlen, "%s", err.msg);
        cJSON_Delete(found); /* nothing unaudited leaves */
        found = NULL;
    }
    cJSON_Delete(filter);
    return hand_over(found, errbuf, errlen);
}

/* The filter's values by column (workflow, state, status), checked. */
static int instance_filter(const cJSON *filter, const char *vals[3], char *errbuf, size_t errlen)
{
    static const char *const keys[] = {"workflow", "state", "status"};
    const cJSON *item;
    if (filter && !cJSON_IsObject(filter)) {
        say(errbuf, errlen, "filter: must be a JSON object");
        return -1;
    }
    cJSON_ArrayForEach(item, filter)
    {
        int i = 0;
        while (i < 3 && strcmp(item->string, keys[i]) != 0)
            i++;
        if (i == 3) {
            say(errbuf, errlen, "filter.%s: unknown key (keys: workflow, state, status)",
                item->string);
            return -1;
        }
        if (!cJSON_IsString(item)) {
            say(errbuf, errlen, "filter.%s: must be a string", item->string);
            return -1;
        }
        vals[i] = item->valuestring;
    }
    if (!vals[2] || cm_values_listed(cm_values_instance_statuses, vals[2]))
        return 0;
    say(errbuf, errlen, "filter.status: \"%s\" is not running, paused, done or cancelled", vals[2]);
    return -1;
}

static int audit_instances(cm_plugin_ctx *ctx, const cJSON *list, cm_err *err);

/* One instance row as {id, workflow, version, state, status, input, ctx, created, updated}. */
static cJSON *instance_row(sqlite3_stmt *st)
{
    static const char *const names[] = {"id",    "workflow", "version", "state",  "status",
                                        "input", "ctx",      "created", "updated"};
    cJSON *obj = cJSON_CreateObject();
    for (int c = 0; obj && c < 9; c++) {
        const char *t = (const char *)sqlite3_column_text(st, c);
        cJSON *v = c == 2               ? cJSON_CreateNumber(sqlite3_column_int(st, c))
                   : (c == 5 || c == 6) ? cJSON_Parse(t ? t : "{}")
                                        : cJSON_CreateString(t ? t : "");
        if (!v || !cJSON_AddItemToObject(obj, names[c], v)) {
            cJSON_Delete(v);
            cJSON_Delete(obj);
            obj = NULL;
        }
    }
    return obj;
}

static char *api_instances(cm_plugin_ctx *ctx, const char *filter, const char *after, int limit,
                           char *errbuf, size_t errlen)
{
    cm_store *store = records_store(ctx, errbuf, errlen);
    const char *vals[3] = {NULL, NULL, NULL};
    cJSON *f = NULL, *list = NULL;
    sqlite3_stmt *st = NULL;
    cm_err err;
    int s;
    if (!store || (filter && !(f = parse_json("filter", filter, errbuf, errlen))))
        return NULL;
    if (instance_filter(f, vals, errbuf, errlen) != 0)
        goto done;
    if (limit < 1 || limit > 1000) {
        say(errbuf, errlen, "instances: limit %d out of range (1..1000)", limit);
        goto done;
    }
    st = cm_store_prepare(
        store,
        "SELECT i.id, i.workflow, d.version, i.state, i.status, i.input, i.ctx, i.created, "
        "i.updated FROM instance i JOIN workflow_def d ON d.name = i.workflow AND d.rev = i.rev "
        "WHERE i.id > ?1 AND (?2 IS NULL OR i.workflow = ?2) AND (?3 IS NULL OR i.state = ?3) "
        "AND (?4 IS NULL OR i.status = ?4) ORDER BY i.id LIMIT ?5",
        &err);
    if (!st || !(list = cJSON_CreateArray())) {
        say(errbuf, errlen, "instances: %s", st ? "out of memory" : err.msg);
        goto done;
    }
    sqlite3_bind_text(st, 1, after ? after : "", -1, SQLITE_STATIC);
    for (int i = 0; i < 3; i++)
        if (vals[i])
            sqlite3_bind_text(st, 2 + i, vals[i], -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, limit);
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *row = instance_row(st);
        if (!row || !cJSON_AddItemToArray(list, row)) {
            cJSON_Delete(row);
            s = SQLITE_NOMEM;
            break;
        }
    }
    if (s != SQLITE_DONE) {
        cm_store_error(store, &err, "instances");
        say(errbuf, errlen, "%s", err.msg);
        cJSON_Delete(list);
        list = NULL;
    }
    sqlite3_reset(st);
    if (list && audit_instances(ctx, list, &err) != 0) {
        say(errbuf, errlen, "instances: %s", err.msg);
        cJSON_Delete(list);
        list = NULL;
    }
done:
    cJSON_Delete(f);
    return hand_over(list, errbuf, errlen);
}

/* An instance whose input names a patient is that patient's data: audit its
** read like a record's. */
static int audit_instances(cm_plugin_ctx *ctx, const cJSON *list, cm_err *err)
{
    cJSON *reads = cJSON_CreateArray();
    const cJSON *row;
    int rc = 0;
    if (!reads)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    cJSON_ArrayForEach(row, list)
    {
        const cJSON *p = field(field(row, "input"), "patient"), *id = field(row, "id");
        cJSON *r = cJSON_CreateObject();
        if (!r || !cJSON_AddItemToArray(reads, r) ||
            (cJSON_IsString(p) && !cJSON_AddStringToObject(r, "patient", p->valuestring)) ||
            (cJSON_IsString(id) && !cJSON_AddStringToObject(r, "id", id->valuestring))) {
            rc = cm_err_set(err, CM_ENOMEM, "out of memory");
            break;
        }
    }
    if (rc == 0)
        rc = audit_reads(ctx, CM_KIND_TASK, "instance", reads, err);
    cJSON_Delete(reads);
    return rc;
}

/* ---- 1.1: Lua functions ----------------------------------------------- */

/* Modules of the host that a plugin module may not shadow. */
static const char *const builtin_modules[] = {"caremesh", "string",    "table", "math",
                                              "utf8",     "coroutine", "os",    "io",
                                              "debug",    "package",   "_G",    NULL};

static bool lua_name_ok(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len >= PLUGIN_NAME_MAX || name[0] < 'a' || name[0] > 'z')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '_'))
            return false;
    return true;
}

/* The plugin that has module (NULL if none), among the loaded ones and ctx. */
static cm_plugin_ctx *module_owner(cm_plugin_host *host, cm_plugin_ctx *ctx, const char *module)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nexports; i++)
            if (strcmp(p->exports[i].module, module) == 0)
                return p;
    for (int i = 0; i < ctx->nexports; i++)
        if (strcmp(ctx->exports[i].module, module) == 0)
            return ctx;
    return NULL;
}

static int api_register_lua(cm_plugin_ctx *ctx, const char *module, const char *name,
                            cm_plugin_lua_fn fn, void *ud)
{
    cm_plugin_ctx *owner;
    if (!lua_name_ok(module) || !lua_name_ok(name) || !fn || ctx->nexports >= PLUGIN_MAX_EXPORTS)
        return -1;
    for (int i = 0; builtin_modules[i]; i++)
        if (strcmp(module, builtin_modules[i]) == 0)
            return -1;
    if ((owner = module_owner(ctx->host, ctx, module)) && owner != ctx)
        return -1;
    for (int i = 0; i < ctx->nexports; i++)
        if (strcmp(ctx->exports[i].module, module) == 0 && strcmp(ctx->exports[i].name, name) == 0)
            return -1;
    lua_export *x = &ctx->exports[ctx->nexports++];
    snprintf(x->module, sizeof(x->module), "%s", module);
    snprintf(x->name, sizeof(x->name), "%s", name);
    x->fn = fn;
    x->ud = ud;
    return 0;
}

/* ---- 1.0: records ----------------------------------------------------- */

static char *api_record_get(cm_plugin_ctx *ctx, const char *kind, const char *id, char *errbuf,
                            size_t errlen)
{
    cm_store *store = records_store(ctx, errbuf, errlen);
    int k = store ? parse_kind(kind, errbuf, errlen) : -1;
    cJSON *rec = NULL;
    cm_err err;
    if (k < 0)
        return NULL;
    if (cm_model_get(ctx->host->model, (cm_kind)k, id ? id : "", &rec, &err) != 0 ||
        audit_reads(ctx, k, NULL, rec, &err) != 0) {
        say(errbuf, errlen, "%s", err.msg);
        cJSON_Delete(rec);
        return NULL;
    }
    return hand_over(rec, errbuf, errlen);
}

static void api_free(void *p)
{
    free(p); /* cJSON's default allocator is malloc */
}

static const cm_plugin_api host_api = {
    .size = sizeof(cm_plugin_api),
    .abi_major = CM_PLUGIN_ABI_MAJOR,
    .abi_minor = CM_PLUGIN_ABI_MINOR,
    /* 1.0 */
    .log = api_log,
    .config = api_config,
    .subscribe = api_subscribe,
    .register_command = api_register_command,
    .record_get = api_record_get,
    .free = api_free,
    .register_channel = api_register_channel,
    /* 1.1 */
    .record_put = api_record_put,
    .record_find = api_record_find,
    .tx_begin = api_tx_begin,
    .tx_commit = api_tx_commit,
    .tx_rollback = api_tx_rollback,
    .instances = api_instances,
    .register_lua = api_register_lua,
};

/* ---- loading ---------------------------------------------------------- */

static void ctx_free(cm_plugin_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->dl)
        dlclose(ctx->dl);
    forget_reads(ctx);
    free(ctx->config);
    free(ctx->path);
    free(ctx);
}

/* Check what the shared object says it is. */
static int check_desc(const cm_plugin_spec *spec, const cm_plugin_desc *d, cm_err *err)
{
    if (d->abi_major != CM_PLUGIN_ABI_MAJOR)
        return cm_err_set(err, CM_ECONFIG,
                          "plugin %s (%s): built for plugin ABI %d.%d, this caremesh has ABI "
                          "%d.%d (the major must match; rebuild the plugin)",
                          spec->name, spec->path, d->abi_major, d->abi_minor, CM_PLUGIN_ABI_MAJOR,
                          CM_PLUGIN_ABI_MINOR);
    if (d->abi_minor > CM_PLUGIN_ABI_MINOR)
        return cm_err_set(err, CM_ECONFIG,
                          "plugin %s (%s): built for plugin ABI %d.%d, newer than this "
                          "caremesh's %d.%d (upgrade caremesh)",
                          spec->name, spec->path, d->abi_major, d->abi_minor, CM_PLUGIN_ABI_MAJOR,
                          CM_PLUGIN_ABI_MINOR);
    if (d->size < sizeof(cm_plugin_desc) || !d->name || !d->init)
        return cm_err_set(err, CM_EINVAL, "plugin %s (%s): the %s descriptor is incomplete",
                          spec->name, spec->path, CM_PLUGIN_SYMBOL);
    if (strcmp(d->name, spec->name) != 0)
        return cm_err_set(err, CM_EINVAL, "plugin %s (%s): the file is plugin \"%s\"", spec->name,
                          spec->path, d->name);
    return 0;
}

int cm_plugin_host_load(cm_plugin_host *host, const cm_plugin_spec *spec, cm_err *err)
{
    cm_plugin_ctx *ctx = NULL;
    char msg[512] = "";
    int rc = 0;
    if (!spec->name || cm_id_check(spec->name) != 0 || strlen(spec->name) >= PLUGIN_NAME_MAX)
        return cm_err_set(err, CM_EINVAL, "plugin name \"%s\": letters, digits, . _ : -",
                          spec->name ? spec->name : "");
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        if (strcmp(p->name, spec->name) == 0)
            return cm_err_set(err, CM_EEXISTS, "plugin %s is already loaded", spec->name);
    if (spec->path && spec->path[0] != '/')
        return cm_err_set(err, CM_EINVAL,
                          "plugin %s: path %s must be absolute (dlopen would search the "
                          "library path for it)",
                          spec->name, spec->path);
    if (!spec->path || access(spec->path, R_OK) != 0)
        return cm_err_set(err, CM_ENOTFOUND, "plugin %s: no file at %s", spec->name,
                          spec->path ? spec->path : "(no path)");
    if (!(ctx = calloc(1, sizeof(*ctx))))
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    ctx->host = host;
    snprintf(ctx->name, sizeof(ctx->name), "%s", spec->name);
    ctx->config = spec->config ? cJSON_PrintUnformatted(spec->config) : strdup("{}");
    if (!ctx->config) {
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        goto done;
    }
    if (!(ctx->path = strdup(spec->path))) {
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        goto done;
    }
    if (host->loader && host->loader->claims(host->loader_ud, spec->path)) {
        ctx->desc = host->loader->desc; /* the host's own: no ABI or name to check */
    } else if (!(ctx->dl = dlopen(spec->path, RTLD_NOW | RTLD_LOCAL))) {
        rc = cm_err_set(err, CM_EINVAL, "plugin %s: cannot load %s: %s", spec->name, spec->path,
                        dlerror());
        goto done;
    }
    if (ctx->dl && !(ctx->desc = dlsym(ctx->dl, CM_PLUGIN_SYMBOL))) {
        rc = cm_err_set(err, CM_EINVAL, "plugin %s: %s exports no %s descriptor", spec->name,
                        spec->path, CM_PLUGIN_SYMBOL);
        goto done;
    }
    if (ctx->dl && (rc = check_desc(spec, ctx->desc, err)) != 0)
        goto done;
    int init_rc = ctx->desc->init(ctx, &host_api, msg, sizeof(msg));
    call_returned(ctx);
    if (init_rc != 0) {
        rc = cm_err_set(err, CM_EINVAL, "plugin %s: init failed: %s", spec->name,
                        msg[0] ? msg : "(no reason given)");
        goto done; /* its registrations go with ctx: none reached the host's lists */
    }
    /* append, keeping load order */
    cm_plugin_ctx **tail = &host->plugins;
    while (*tail)
        tail = &(*tail)->next;
    *tail = ctx;
    cm_log(CM_LOG_INFO, "plugin.loaded", "plugin %s %s (ABI %d.%d) from %s", ctx->name,
           ctx->desc->version ? ctx->desc->version : "", ctx->desc->abi_major, ctx->desc->abi_minor,
           spec->path);
    ctx = NULL;
done:
    ctx_free(ctx);
    return rc;
}

int cm_plugin_host_load_list(cm_plugin_host *host, const cJSON *plugins, int *loaded, cm_err *err)
{
    const cJSON *item;
    int n = 0, rc = 0;
    cJSON_ArrayForEach(item, plugins)
    {
        cm_plugin_spec spec = {
            cJSON_IsString(field(item, "name")) ? field(item, "name")->valuestring : NULL,
            cJSON_IsString(field(item, "path")) ? field(item, "path")->valuestring : NULL,
            cJSON_IsTrue(field(item, "optional")), field(item, "config")};
        cm_err perr;
        if (cm_plugin_host_load(host, &spec, &perr) == 0) {
            n++;
        } else if (spec.optional) {
            cm_log(CM_LOG_WARN, "plugin.skipped", "%s (optional: the node goes on without it)",
                   perr.msg);
        } else {
            rc = cm_err_set(err, perr.code, "%s", perr.msg);
            break;
        }
    }
    if (loaded)
        *loaded = n;
    return rc;
}

int cm_plugin_host_load_each(cm_plugin_host *host, const cJSON *plugins)
{
    const cJSON *item;
    int failed = 0;
    cJSON_ArrayForEach(item, plugins)
    {
        cJSON *one = cJSON_CreateArray();
        cm_err err;
        if (!one || !cJSON_AddItemReferenceToArray(one, (cJSON *)item) ||
            cm_plugin_host_load_list(host, one, NULL, &err) != 0) {
            cm_log(CM_LOG_ERROR, "plugin.refused", "%s (the node serves without it)",
                   one ? err.msg : "out of memory");
            failed++;
        }
        cJSON_Delete(one);
    }
    return failed;
}

void cm_plugin_host_unload_all(cm_plugin_host *host)
{
    while (host->plugins) {
        cm_plugin_ctx *ctx = host->plugins;
        host->plugins = ctx->next;
        if (ctx->desc && ctx->desc->fini) {
            ctx->desc->fini(ctx);
            call_returned(ctx);
        }
        cm_log(CM_LOG_INFO, "plugin.unloaded", "plugin %s", ctx->name);
        ctx_free(ctx);
    }
}

cm_plugin_host *cm_plugin_host_new(cm_model *model, cm_err *err)
{
    cm_plugin_host *host = calloc(1, sizeof(*host));
    if (!host)
        cm_err_set(err, CM_ENOMEM, "out of memory");
    else
        host->model = model;
    return host;
}

void cm_plugin_host_set_loader(cm_plugin_host *host, const cm_plugin_loader *loader, void *ud)
{
    if (host->loader && host->loader->destroy)
        host->loader->destroy(host->loader_ud);
    host->loader = loader;
    host->loader_ud = ud;
}

const char *cm_plugin_ctx_path(cm_plugin_ctx *ctx)
{
    return ctx->path;
}

const char *cm_plugin_ctx_name(cm_plugin_ctx *ctx)
{
    return ctx->name;
}

void *cm_plugin_ctx_loader_ud(cm_plugin_ctx *ctx)
{
    return ctx->host->loader_ud;
}

void cm_plugin_ctx_set_data(cm_plugin_ctx *ctx, void *data)
{
    ctx->data = data;
}

void *cm_plugin_ctx_data(cm_plugin_ctx *ctx)
{
    return ctx->data;
}

void cm_plugin_host_destroy(cm_plugin_host **host_p)
{
    cm_plugin_host *host = host_p ? *host_p : NULL;
    if (!host)
        return;
    cm_plugin_host_unload_all(host);
    cm_plugin_host_set_loader(host, NULL, NULL);
    free(host);
    *host_p = NULL;
}

/* ---- dispatch --------------------------------------------------------- */

static int plugin_kind(cm_engine_event_kind kind)
{
    switch (kind) {
    case CM_ENGINE_STARTED:
        return CM_PLUGIN_EVENT_INSTANCE_STARTED;
    case CM_ENGINE_STATE_CHANGED:
        return CM_PLUGIN_EVENT_STATE_CHANGED;
    case CM_ENGINE_ENDED:
        return CM_PLUGIN_EVENT_INSTANCE_ENDED;
    case CM_ENGINE_TASK_CREATED:
        return CM_PLUGIN_EVENT_TASK_CREATED;
    case CM_ENGINE_MESSAGE_QUEUED:
        return CM_PLUGIN_EVENT_MESSAGE_SENT;
    case CM_ENGINE_EVENT_PARKED:
        break;
    }
    return 0;
}

static void tell_subscribers(cm_plugin_host *host, const cm_plugin_event *pe)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nsubs; i++)
            if (p->subs[i].kind == pe->kind) {
                p->subs[i].fn(p->subs[i].ud, pe);
                call_returned(p);
            }
}

void cm_plugin_host_on_engine_event(void *ud, const cm_engine_event *ev)
{
    cm_plugin_event pe = {
        sizeof(pe), plugin_kind(ev->kind), ev->instance, ev->workflow, ev->from, ev->to,
        ev->detail};
    if (pe.kind != 0) /* a kind the plugin ABI does not have */
        tell_subscribers(ud, &pe);
}

void cm_plugin_host_on_message(void *ud, const char *peer, const char *id, const char *kind,
                               const char *receiver)
{
    cm_plugin_event pe = {sizeof(pe), CM_PLUGIN_EVENT_MESSAGE_RECEIVED, id, "", peer, receiver,
                          kind};
    tell_subscribers(ud, &pe);
}

int cm_plugin_host_command(cm_plugin_host *host, int argc, char **argv, bool *found)
{
    command *c = argc > 0 ? find_command(host, argv[0]) : NULL;
    int rc = 0;
    *found = c != NULL;
    if (c) {
        rc = c->fn(c->ud, argc, argv);
        call_returned(c->owner);
    }
    return rc;
}

void cm_plugin_host_commands(cm_plugin_host *host,
                             void (*fn)(void *ud, const char *name, const char *summary), void *ud)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->ncommands; i++)
            fn(ud, p->commands[i].name, p->commands[i].summary);
}

/* ---- notifications ---------------------------------------------------- */

typedef struct pending_note {
    long id;
    int attempts;
    char channel[PLUGIN_NAME_MAX];
    char *recipient, *message, *data, *instance;
} pending_note;

static void note_clear(pending_note *n)
{
    free(n->recipient);
    free(n->message);
    free(n->data);
    free(n->instance);
}

static char *col_dup(sqlite3_stmt *st, int c)
{
    const char *t = (const char *)sqlite3_column_text(st, c);
    return strdup(t ? t : "");
}

/* Mark n sent, or keep its failure for a later attempt with backoff. */
static int settle(cm_store *store, const cm_clock *clock, const pending_note *n, bool ok,
                  const char *why, cm_err *err)
{
    char now[CM_TIME_BUFSZ];
    int64_t delay = PLUGIN_RETRY_BASE_MS;
    for (int i = 0; i < n->attempts && delay < PLUGIN_RETRY_MAX_MS; i++)
        delay *= 2;
    if (delay > PLUGIN_RETRY_MAX_MS)
        delay = PLUGIN_RETRY_MAX_MS;
    cm_time_format(cm_clock_now_ms(clock), now, sizeof(now));
    sqlite3_stmt *st =
        ok ? cm_store_prepare(store,
                              "UPDATE notification SET status = 'sent', sent_at = ?2, "
                              "attempts = attempts + 1, error = NULL WHERE seq = ?1",
                              err)
           : cm_store_prepare(store,
                              "UPDATE notification SET attempts = attempts + 1, error = ?2, "
                              "next_ms = ?3 WHERE seq = ?1",
                              err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, n->id);
    sqlite3_bind_text(st, 2, ok ? now : why, -1, SQLITE_TRANSIENT);
    if (!ok)
        sqlite3_bind_int64(st, 3, cm_clock_now_ms(clock) + delay);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : cm_store_error(store, err, "notification");
    sqlite3_reset(st);
    return rc;
}

/* Up to max due notifications of channel (exact name), their text copied:
** channels run with no statement open. */
static int due_notes(cm_store *store, const cm_clock *clock, const char *chan, int64_t upto,
                     pending_note *notes, int max, int *n, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        store,
        "SELECT seq, channel, recipient, message, data, coalesce(instance, ''), attempts "
        "FROM notification WHERE status = 'pending' AND channel = ?3 AND next_ms <= ?1 "
        "AND seq <= ?4 ORDER BY seq LIMIT ?2",
        err);
    *n = 0;
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, cm_clock_now_ms(clock));
    sqlite3_bind_int(st, 2, max);
    sqlite3_bind_text(st, 3, chan, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, upto);
    while (*n < max && sqlite3_step(st) == SQLITE_ROW) {
        pending_note *p = &notes[(*n)++];
        p->id = (long)sqlite3_column_int64(st, 0);
        snprintf(p->channel, sizeof(p->channel), "%s", sqlite3_column_text(st, 1));
        p->recipient = col_dup(st, 2);
        p->message = col_dup(st, 3);
        p->data = col_dup(st, 4);
        p->instance = col_dup(st, 5);
        p->attempts = sqlite3_column_int(st, 6);
    }
    sqlite3_reset(st);
    return 0;
}

/* A row no channel should be handed (written around the engine): parked with why. */
static const char *unfit(const pending_note *p)
{
    if (!p->recipient || !p->message || !p->data || !p->instance)
        return "out of memory reading it";
    if (!cm_utf8_valid(p->recipient, strlen(p->recipient)) ||
        !cm_utf8_valid(p->message, strlen(p->message)))
        return "recipient or message is not valid UTF-8";
    cJSON *data = cJSON_Parse(p->data);
    bool ok = cJSON_IsObject(data);
    cJSON_Delete(data);
    return ok ? NULL : "data is not a JSON object";
}

static int park(cm_store *store, const pending_note *p, const char *why, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        store, "UPDATE notification SET status = 'failed', error = ?2 WHERE seq = ?1", err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, p->id);
    sqlite3_bind_text(st, 2, why, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : cm_store_error(store, err, "notification");
    sqlite3_reset(st);
    return rc;
}

/* Hand one channel's due notifications to it; stop at the first row whose
** outcome cannot be recorded (handing on would send it again next time). */
static int deliver_channel(channel *c, cm_store *store, const cm_clock *clock, int64_t upto,
                           int max, int *sent, cm_err *err)
{
    pending_note notes[64];
    int n = 0, rc = due_notes(store, clock, c->name, upto, notes, max, &n, err);
    for (int i = 0; i < n; i++) {
        pending_note *p = &notes[i];
        char why[512] = "";
        const char *bad = rc == 0 ? unfit(p) : NULL;
        if (rc == 0 && bad) {
            cm_log(CM_LOG_ERROR, "notify.parked", "notification %ld on channel %s: %s", p->id,
                   p->channel, bad);
            rc = park(store, p, bad, err);
        } else if (rc == 0) {
            cm_plugin_notification pn = {sizeof(pn), p->id,   p->channel, p->recipient,
                                         p->message, p->data, p->instance};
            bool ok = c->fn(c->ud, &pn, why, sizeof(why)) == 0;
            call_returned(c->owner);
            if (!ok)
                cm_log(CM_LOG_WARN, "notify.retry", "notification %ld on channel %s: %s", p->id,
                       p->channel, why[0] ? why : "refused by the channel");
            rc = settle(store, clock, p, ok, why[0] ? why : "refused by the channel", err);
            if (rc == 0 && ok)
                (*sent)++;
        }
        note_clear(p);
    }
    return rc;
}

/* The largest notification seq whose commit is known durable (the
** output-commit rule, store.h), or -1 when none can be told now. */
static int64_t durable_notes(cm_store *store, cm_store_rowmark *mark, cm_err *err)
{
    if (cm_store_in_tx(store)) /* rows of an open transaction are not even committed */
        return -1;
    sqlite3_stmt *st =
        cm_store_prepare(store, "SELECT coalesce(max(seq), 0) FROM notification", err);
    if (!st)
        return -1;
    int64_t top = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    if (top < 0)
        cm_store_error(store, err, "notification");
    sqlite3_reset(st);
    return top < 0 ? -1 : cm_store_rowmark_update(store, mark, top);
}

int cm_plugin_host_deliver_durable(cm_plugin_host *host, cm_store *store, const cm_clock *clock,
                                   int max, cm_store_rowmark *mark, int *delivered, cm_err *err)
{
    int sent = 0, rc = 0;
    int64_t upto = INT64_MAX;
    if (max > 64)
        max = 64;
    if (delivered)
        *delivered = 0;
    if (mark && (upto = durable_notes(store, mark, err)) < 0)
        return cm_store_in_tx(store) ? 0 : err->code;
    /* channel by channel: rows of a channel nobody serves never hold the others up */
    for (cm_plugin_ctx *p = host->plugins; p && rc == 0; p = p->next)
        for (int i = 0; i < p->nchannels && rc == 0; i++)
            rc = deliver_channel(&p->channels[i], store, clock, upto, max, &sent, err);
    if (delivered)
        *delivered = sent;
    return rc;
}

int cm_plugin_host_deliver(cm_plugin_host *host, cm_store *store, const cm_clock *clock, int max,
                           int *delivered, cm_err *err)
{
    return cm_plugin_host_deliver_durable(host, store, clock, max, NULL, delivered, err);
}

/* ---- Lua functions ---------------------------------------------------- */

void cm_plugin_host_set_model(cm_plugin_host *host, cm_model *model)
{
    host->model = model;
}

void cm_plugin_host_lua_modules(cm_plugin_host *host, void (*fn)(void *ud, const char *module),
                                void *ud)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nexports; i++) {
            int j = 0; /* once per module: its first function names it */
            while (j < i && strcmp(p->exports[j].module, p->exports[i].module) != 0)
                j++;
            if (j == i)
                fn(ud, p->exports[i].module);
        }
}

void cm_plugin_host_lua_names(cm_plugin_host *host, const char *module,
                              void (*fn)(void *ud, const char *name), void *ud)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nexports; i++)
            if (strcmp(p->exports[i].module, module) == 0)
                fn(ud, p->exports[i].name);
}

int cm_plugin_host_lua_call(cm_plugin_host *host, const char *module, const char *name,
                            const char *args_json, cJSON **audited, char **result, cm_err *err)
{
    char msg[512] = "";
    *result = NULL;
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nexports; i++) {
            lua_export *x = &p->exports[i];
            if (strcmp(x->module, module) != 0 || strcmp(x->name, name) != 0)
                continue;
            cJSON **outer = host->audited;
            if (audited)
                host->audited = audited;
            int rc = x->fn(x->ud, args_json, result, msg, sizeof(msg));
            call_returned(p); /* its reads, written again, are collected too */
            host->audited = outer;
            if (rc == 0)
                return 0;
            free(*result);
            *result = NULL;
            return cm_err_set(err, CM_EINVAL, "%s.%s: %s", module, name,
                              msg[0] ? msg : "failed (no reason given)");
        }
    return cm_err_set(err, CM_ENOTFOUND, "%s.%s: no loaded plugin has this function", module, name);
}
