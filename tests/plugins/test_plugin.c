/*
** test_plugin.c -- a real plugin that exercises the ABI, built in variants
** that the host must refuse: another ABI major (PLUGIN_BAD_MAJOR), a newer
** minor (PLUGIN_NEW_MINOR), no `caremesh_plugin` symbol (PLUGIN_NO_SYMBOL), an init that
** fails after registering (PLUGIN_FAIL_INIT); and one that says it was built
** for ABI 1.0 (PLUGIN_OLD_MINOR), which a 1.1 host must still load.
*/
#include <caremesh/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cm_plugin_api *api;
static cm_plugin_ctx *self;
static char seen[4096];
static int lua_clash = 1; /* what register_lua said to module "records" (another plugin's) */

static void on_event(void *ud, const cm_plugin_event *ev)
{
    size_t len = strlen(seen);
    snprintf(seen + len, sizeof(seen) - len, "%d:%s:%s>%s;", ev->kind, ev->instance, ev->from,
             ev->to);
}

/* `caremesh probe KIND ID`: prints the events seen so far and a record read through the api. */
static int probe(void *ud, int argc, char **argv)
{
    char err[256];
    printf("events=%s\n", seen);
    printf("config=%s\n", api->config(self));
    printf("records_module=%d\n", lua_clash);
    if (argc >= 3) {
        char *rec = api->record_get(self, argv[1], argv[2], err, sizeof(err));
        printf("record=%s\n", rec ? rec : err);
        api->free(rec);
    }
    return argc >= 3 ? 0 : 3;
}

#ifndef PLUGIN_OLD_MINOR
static int lua_fn(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    (void)ud;
    (void)args;
    (void)result;
    snprintf(err, errlen, "the probe's function should never be reached");
    return -1;
}
#endif

static int probe_init(cm_plugin_ctx *ctx, const cm_plugin_api *host, char *err, size_t errlen)
{
    api = host;
    self = ctx;
    seen[0] = '\0';
    if (host->size < sizeof(cm_plugin_api)) {
        snprintf(err, errlen, "host api table too small");
        return -1;
    }
    for (int kind = CM_PLUGIN_EVENT_INSTANCE_STARTED; kind <= CM_PLUGIN_EVENT_MESSAGE_RECEIVED;
         kind++)
        if (api->subscribe(ctx, kind, on_event, NULL) != 0)
            return snprintf(err, errlen, "subscribe %d refused", kind), -1;
    if (api->subscribe(ctx, 99, on_event, NULL) == 0)
        return snprintf(err, errlen, "an unknown event kind was accepted"), -1;
    if (api->register_command(ctx, "probe", "print what the probe plugin saw", probe, NULL) != 0)
        return snprintf(err, errlen, "register_command refused"), -1;
    if (api->register_command(ctx, "Bad Name", "x", probe, NULL) == 0)
        return snprintf(err, errlen, "a bad command name was accepted"), -1;
#ifndef PLUGIN_OLD_MINOR
    lua_clash = api->register_lua(ctx, "records", "clash", lua_fn, NULL);
#endif
    api->log(ctx, CM_PLUGIN_LOG_INFO, "probe ready");
#ifdef PLUGIN_FAIL_INIT
    snprintf(err, errlen, "the database it needs is not configured");
    return -1;
#else
    return 0;
#endif
}

static void probe_fini(cm_plugin_ctx *ctx)
{
    api->log(ctx, CM_PLUGIN_LOG_INFO, "probe unloading");
}

#if defined(PLUGIN_NO_SYMBOL) /* exported, but under a name the host does not look for */
#define caremesh_plugin caremesh_plugin_misspelt
#endif
#if defined(PLUGIN_BAD_MAJOR)
#define MAJOR (CM_PLUGIN_ABI_MAJOR + 1)
#else
#define MAJOR CM_PLUGIN_ABI_MAJOR
#endif
#if defined(PLUGIN_NEW_MINOR)
#define MINOR (CM_PLUGIN_ABI_MINOR + 1)
#elif defined(PLUGIN_OLD_MINOR) /* built against ABI 1.0: uses only the 1.0 functions */
#define MINOR 0
#else
#define MINOR CM_PLUGIN_ABI_MINOR
#endif
CM_PLUGIN_EXPORT const cm_plugin_desc caremesh_plugin = {
    sizeof(cm_plugin_desc), MAJOR, MINOR, "probe", "1.0.0", probe_init, probe_fini,
};
