/*
** plugin.c -- the plugin host: dlopen, ABI checks, the api table, and the
** registrations (subscriptions, commands) of each plugin, undone on unload.
*/
#include "plugin.h"

#include "caremesh/plugin.h"
#include "log.h"
#include "clock.h"
#include "text.h"

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
#define PLUGIN_RETRY_BASE_MS 5000
#define PLUGIN_RETRY_MAX_MS  (3600 * 1000LL)

typedef struct sub {
    int kind;
    cm_plugin_event_fn fn;
    void *ud;
} sub;

typedef struct command {
    char name[PLUGIN_NAME_MAX];
    char summary[160];
    cm_plugin_command_fn fn;
    void *ud;
} command;

typedef struct channel {
    char name[PLUGIN_NAME_MAX];
    cm_plugin_channel_fn fn;
    void *ud;
} channel;

struct cm_plugin_ctx {
    cm_plugin_host *host;
    void *dl;
    const cm_plugin_desc *desc;
    char name[PLUGIN_NAME_MAX];
    char *config; /* its config section as JSON text */
    bool loading; /* inside init: failures undo everything */
    sub subs[PLUGIN_MAX_SUBS];
    int nsubs;
    command commands[PLUGIN_MAX_COMMANDS];
    int ncommands;
    channel channels[PLUGIN_MAX_CHANNELS];
    int nchannels;
    struct cm_plugin_ctx *next;
};

struct cm_plugin_host {
    cm_model *model;
    cm_plugin_ctx *plugins; /* in load order */
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
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->fn = fn;
    c->ud = ud;
    return 0;
}

static char *api_record_get(cm_plugin_ctx *ctx, const char *kind, const char *id, char *errbuf,
                            size_t errlen)
{
    cm_err err;
    cJSON *rec = NULL;
    char *text = NULL;
    int k = kind ? cm_kind_parse(kind) : -1;
    if (!ctx->host->model) {
        snprintf(errbuf, errlen, "records are not available to plugins here");
        return NULL;
    }
    if (k < 0) {
        snprintf(errbuf, errlen, "unknown record kind \"%s\"", kind ? kind : "");
        return NULL;
    }
    if (cm_model_get(ctx->host->model, (cm_kind)k, id ? id : "", &rec, &err) != 0) {
        snprintf(errbuf, errlen, "%s", err.msg);
        return NULL;
    }
    text = cJSON_PrintUnformatted(rec);
    cJSON_Delete(rec);
    if (!text)
        snprintf(errbuf, errlen, "out of memory");
    return text;
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
};

/* ---- loading ---------------------------------------------------------- */

static void ctx_free(cm_plugin_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->dl)
        dlclose(ctx->dl);
    free(ctx->config);
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
    if (!(ctx->dl = dlopen(spec->path, RTLD_NOW | RTLD_LOCAL))) {
        rc = cm_err_set(err, CM_EINVAL, "plugin %s: cannot load %s: %s", spec->name, spec->path,
                        dlerror());
        goto done;
    }
    ctx->desc = dlsym(ctx->dl, CM_PLUGIN_SYMBOL);
    if (!ctx->desc) {
        rc = cm_err_set(err, CM_EINVAL, "plugin %s: %s exports no %s descriptor", spec->name,
                        spec->path, CM_PLUGIN_SYMBOL);
        goto done;
    }
    if ((rc = check_desc(spec, ctx->desc, err)) != 0)
        goto done;
    if (ctx->desc->init(ctx, &host_api, msg, sizeof(msg)) != 0) {
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

static const cJSON *field(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
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
        if (ctx->desc && ctx->desc->fini)
            ctx->desc->fini(ctx);
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

void cm_plugin_host_destroy(cm_plugin_host **host_p)
{
    cm_plugin_host *host = host_p ? *host_p : NULL;
    if (!host)
        return;
    cm_plugin_host_unload_all(host);
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
    }
    return 0;
}

static void tell_subscribers(cm_plugin_host *host, const cm_plugin_event *pe)
{
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nsubs; i++)
            if (p->subs[i].kind == pe->kind)
                p->subs[i].fn(p->subs[i].ud, pe);
}

void cm_plugin_host_on_engine_event(void *ud, const cm_engine_event *ev)
{
    cm_plugin_event pe = {
        sizeof(pe), plugin_kind(ev->kind), ev->instance, ev->workflow, ev->from, ev->to,
        ev->detail};
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
    *found = c != NULL;
    return c ? c->fn(c->ud, argc, argv) : 0;
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
static int due_notes(cm_store *store, const cm_clock *clock, const char *chan, pending_note *notes,
                     int max, int *n, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        store,
        "SELECT seq, channel, recipient, message, data, coalesce(instance, ''), attempts "
        "FROM notification WHERE status = 'pending' AND channel = ?3 AND next_ms <= ?1 "
        "ORDER BY seq LIMIT ?2",
        err);
    *n = 0;
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, cm_clock_now_ms(clock));
    sqlite3_bind_int(st, 2, max);
    sqlite3_bind_text(st, 3, chan, -1, SQLITE_STATIC);
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
static int deliver_channel(channel *c, cm_store *store, const cm_clock *clock, int max, int *sent,
                           cm_err *err)
{
    pending_note notes[64];
    int n = 0, rc = due_notes(store, clock, c->name, notes, max, &n, err);
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

int cm_plugin_host_deliver(cm_plugin_host *host, cm_store *store, const cm_clock *clock, int max,
                           int *delivered, cm_err *err)
{
    int sent = 0, rc = 0;
    if (max > 64)
        max = 64;
    /* channel by channel: rows of a channel nobody serves never hold the others up */
    for (cm_plugin_ctx *p = host->plugins; p && rc == 0; p = p->next)
        for (int i = 0; i < p->nchannels && rc == 0; i++)
            rc = deliver_channel(&p->channels[i], store, clock, max, &sent, err);
    if (delivered)
        *delivered = sent;
    return rc;
}
