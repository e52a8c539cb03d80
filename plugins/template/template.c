/*
** template.c -- the smallest useful caremesh plugin: copy it to start yours.
** It logs its configuration, counts instances that end, and adds the command
** `caremesh template-hello`. See docs/plugins.md.
*/
#include <caremesh/plugin.h>

#include <stdio.h>

static const cm_plugin_api *api;
static cm_plugin_ctx *self;
static long ended;

static void on_ended(void *ud, const cm_plugin_event *ev)
{
    ended++;
    api->log(self, CM_PLUGIN_LOG_INFO, "instance %s of %s ended in %s (%ld so far)", ev->instance,
             ev->workflow, ev->to, ended);
}

static int hello(void *ud, int argc, char **argv)
{
    printf("hello from the template plugin (%d argument(s))\n", argc - 1);
    return 0;
}

static int template_init(cm_plugin_ctx *ctx, const cm_plugin_api *host, char *err, size_t errlen)
{
    api = host;
    self = ctx;
    api->log(ctx, CM_PLUGIN_LOG_INFO, "configured with %s", api->config(ctx));
    if (api->subscribe(ctx, CM_PLUGIN_EVENT_INSTANCE_ENDED, on_ended, NULL) != 0 ||
        api->register_command(ctx, "template-hello", "say hello from the template plugin", hello,
                              NULL) != 0) {
        snprintf(err, errlen, "cannot register with the host");
        return -1;
    }
    return 0;
}

CM_PLUGIN_EXPORT const cm_plugin_desc caremesh_plugin = {
    sizeof(cm_plugin_desc),
    CM_PLUGIN_ABI_MAJOR,
    CM_PLUGIN_ABI_MINOR,
    "template",
    "0.1.0",
    template_init,
    NULL,
};
