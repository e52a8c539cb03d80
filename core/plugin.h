/*
** plugin.h -- the plugin host: loads C plugins (include/caremesh/plugin.h)
** with dlopen, checks their ABI, gives them the host's function table, and
** keeps what they register (event subscriptions, CLI commands, channels, Lua
** functions) until they are unloaded. A plugin whose file, symbol, ABI or
** init fails is refused with a message naming it, and everything it
** registered is undone. Plugins read and write records through the model
** (every access to patient data audited as "plugin:NAME"), in transactions
** of their own that the host rolls back when a call returns with one open.
** Depends on: model, audit, engine (events), log, dlfcn. Loop thread.
*/
#ifndef CM_PLUGIN_H
#define CM_PLUGIN_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "caremesh/plugin.h"
#include "engine.h"
#include "error.h"
#include "model.h"

typedef struct cm_plugin_host cm_plugin_host;

typedef struct cm_plugin_spec {
    const char *name;    /* as the config names it (must match the plugin's own name) */
    const char *path;    /* the shared object */
    bool optional;       /* a failure is logged and the host goes on */
    const cJSON *config; /* its config section (may be NULL) */
} cm_plugin_spec;

/* Loads plugins that are not shared objects (bindings/lua/lplugin.h has the
** one for Lua plugins): when claims(path) is true, desc->init runs in place of
** dlopen's descriptor, with the ABI and name checks left out (the loader is
** the host's own), and desc->fini when the plugin is unloaded. */
typedef struct cm_plugin_loader {
    bool (*claims)(void *ud, const char *path);
    const cm_plugin_desc *desc;
    void (*destroy)(void *ud); /* frees ud with the host (may be NULL) */
} cm_plugin_loader;

/* A host whose plugins read records through model (borrowed, may be NULL). */
cm_plugin_host *cm_plugin_host_new(cm_model *model, cm_err *err);
/* Unload every plugin (fini, registrations removed, dlclose), then free. */
void cm_plugin_host_destroy(cm_plugin_host **host_p);

/* Load one plugin. On failure nothing of it stays, and the message names the
** plugin and the problem: CM_ENOTFOUND (no file), CM_EINVAL (not loadable, no
** descriptor, another plugin's file, init failed), CM_ECONFIG (ABI),
** CM_EEXISTS (already loaded). */
int cm_plugin_host_load(cm_plugin_host *host, const cm_plugin_spec *spec, cm_err *err);

/* Load the config's `plugins` list (an array, may be NULL): a failing
** optional plugin is logged and skipped; a failing required one stops the
** loading with its error. *loaded counts the plugins now loaded. */
int cm_plugin_host_load_list(cm_plugin_host *host, const cJSON *plugins, int *loaded, cm_err *err);

/* Load every plugin of the list, going past failures (each logged, required
** or not): for a reload of a serving node. Returns the number that failed. */
int cm_plugin_host_load_each(cm_plugin_host *host, const cJSON *plugins);

/* Unload every plugin (for a reload). */
void cm_plugin_host_unload_all(cm_plugin_host *host);

/* An engine observer (cm_engine_observe) that tells subscribed plugins. */
void cm_plugin_host_on_engine_event(void *host, const cm_engine_event *ev);

/* For federation (cm_fed_opts.on_received): tell subscribed plugins that a
** message from peer was recorded. */
void cm_plugin_host_on_message(void *host, const char *peer, const char *id, const char *kind,
                               const char *receiver);

/* Run plugin command argv[0]; *found false when no plugin registered it. */
int cm_plugin_host_command(cm_plugin_host *host, int argc, char **argv, bool *found);

/* Deliver up to max pending notifications whose channel a plugin serves,
** oldest first, each marked sent only after its channel said it is durable;
** a failure is kept with its error and retried with backoff. *delivered
** counts the ones sent. Uses store and clock (borrowed). */
int cm_plugin_host_deliver(cm_plugin_host *host, cm_store *store, const cm_clock *clock, int max,
                           int *delivered, cm_err *err);
/* The same for a store with deferred commits (the daemon's): only the
** notifications of commits known durable are handed on (the output-commit
** rule), told by mark (the caller's, zeroed once, kept across calls: see
** cm_store_rowmark); rows of later commits wait for a later call. Never
** waits for a sync; inside an open transaction it hands on nothing. */
int cm_plugin_host_deliver_durable(cm_plugin_host *host, cm_store *store, const cm_clock *clock,
                                   int max, cm_store_rowmark *mark, int *delivered, cm_err *err);

/* Use loader (static, borrowed) with ud (owned from now: loader->destroy frees it). */
void cm_plugin_host_set_loader(cm_plugin_host *host, const cm_plugin_loader *loader, void *ud);
/* For a loader's plugins: the path from the config, the loader's ud, and a
** slot of the loader's own for the plugin's state (set in init). */
const char *cm_plugin_ctx_path(cm_plugin_ctx *ctx);
const char *cm_plugin_ctx_name(cm_plugin_ctx *ctx);
void *cm_plugin_ctx_loader_ud(cm_plugin_ctx *ctx);
void cm_plugin_ctx_set_data(cm_plugin_ctx *ctx, void *data);
void *cm_plugin_ctx_data(cm_plugin_ctx *ctx);

/* Records for plugins now go through model (borrowed, may be NULL: records
** unavailable), e.g. one fresh store per workflow test. */
void cm_plugin_host_set_model(cm_plugin_host *host, cm_model *model);

/* Lua modules plugins registered (register_lua): fn(ud, module) once per module. */
void cm_plugin_host_lua_modules(cm_plugin_host *host, void (*fn)(void *ud, const char *module),
                                void *ud);
/* The functions of module: fn(ud, name) for each. */
void cm_plugin_host_lua_names(cm_plugin_host *host, const char *module,
                              void (*fn)(void *ud, const char *name), void *ud);
/* Call MODULE.NAME with its arguments as a JSON array text. 0 with *result the
** JSON text of its result (malloc'd, the caller frees; NULL: no result), or
** CM_ENOTFOUND (no plugin has it now) / CM_EINVAL (the function failed) with
** err "MODULE.NAME: message". A transaction the plugin left open is undone.
** audited (borrowed, may be NULL: that of the call this one is inside, if
** any): where the patient reads the plugins audit during the call in the
** caller's transaction, and that stay in it, are also collected
** (cm_audit_collect), to be written again should the caller roll back. */
int cm_plugin_host_lua_call(cm_plugin_host *host, const char *module, const char *name,
                            const char *args_json, cJSON **audited, char **result, cm_err *err);

/* Commands plugins registered, for --help: calls fn(ud, name, summary) for each. */
void cm_plugin_host_commands(cm_plugin_host *host,
                             void (*fn)(void *ud, const char *name, const char *summary), void *ud);

#endif
