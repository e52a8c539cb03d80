/*
** plugin.c -- the plugin host: dlopen, ABI checks, the api table, and the
** registrations (subscriptions, commands) of each plugin, undone on unload.
*/
#include "plugin.h"

#include "caremesh/plugin.h"
#include "log.h"
#include "text.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLUGIN_MAX_SUBS     64
#define PLUGIN_MAX_COMMANDS 32
#define PLUGIN_NAME_MAX     64

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
    if (kind < CM_PLUGIN_EVENT_INSTANCE_STARTED || kind > CM_PLUGIN_EVENT_MESSAGE_SENT || !fn ||
        ctx->nsubs >= PLUGIN_MAX_SUBS)
        return -1;
    ctx->subs[ctx->nsubs++] = (sub){kind, fn, ud};
    return 0;
}

static bool command_name_ok(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len >= PLUGIN_NAME_MAX)
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
    sizeof(cm_plugin_api), CM_PLUGIN_ABI_MAJOR,  CM_PLUGIN_ABI_MINOR, api_log,  api_config,
    api_subscribe,         api_register_command, api_record_get,      api_free,
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
    if (d->size < sizeof(cm_plugin_desc) || !d->name || !d->init)
        return cm_err_set(err, CM_EINVAL, "plugin %s (%s): the %s descriptor is incomplete",
                          spec->name, spec->path, CM_PLUGIN_SYMBOL);
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
    ctx->loading = true;
    if (ctx->desc->init(ctx, &host_api, msg, sizeof(msg)) != 0) {
        rc = cm_err_set(err, CM_EINVAL, "plugin %s: init failed: %s", spec->name,
                        msg[0] ? msg : "(no reason given)");
        goto done; /* its registrations go with ctx: none reached the host's lists */
    }
    ctx->loading = false;
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

void cm_plugin_host_on_engine_event(void *ud, const cm_engine_event *ev)
{
    cm_plugin_host *host = ud;
    cm_plugin_event pe = {
        sizeof(pe), plugin_kind(ev->kind), ev->instance, ev->workflow, ev->from, ev->to,
        ev->detail};
    for (cm_plugin_ctx *p = host->plugins; p; p = p->next)
        for (int i = 0; i < p->nsubs; i++)
            if (p->subs[i].kind == pe.kind)
                p->subs[i].fn(p->subs[i].ud, &pe);
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
