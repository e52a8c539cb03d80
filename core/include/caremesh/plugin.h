/*
** caremesh/plugin.h -- the C plugin ABI of caremesh: the one public header.
**
** A plugin is a shared object that exports one symbol, CM_PLUGIN_SYMBOL, a
** cm_plugin_desc. The host loads it (dlopen RTLD_NOW|RTLD_LOCAL), checks the
** ABI it was built for, and calls init with a context and the host's table
** of functions (cm_plugin_api). Everything the plugin registers during init
** is undone when init fails or the plugin is unloaded.
**
** Versioning: the ABI major changes only when something is removed or
** changed; the host refuses a plugin built for another major. The minor
** grows when functions are appended to cm_plugin_api (never inserted,
** never reordered); the host refuses a plugin built for a newer minor than
** it has. Every struct that crosses the ABI starts with its size.
**
** Threads: the host calls a plugin only on its loop thread; a plugin calls
** the api only from inside a call the host made to it (init, a callback).
*/
#ifndef CAREMESH_PLUGIN_H
#define CAREMESH_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CM_PLUGIN_ABI_MAJOR 1
#define CM_PLUGIN_ABI_MINOR 1
#define CM_PLUGIN_SYMBOL    "caremesh_plugin"

/* The host's handle for one loaded plugin (opaque). */
typedef struct cm_plugin_ctx cm_plugin_ctx;

enum { CM_PLUGIN_LOG_DEBUG, CM_PLUGIN_LOG_INFO, CM_PLUGIN_LOG_WARN, CM_PLUGIN_LOG_ERROR };

/* Instance events a plugin may subscribe to (told after they are durable). */
enum {
    CM_PLUGIN_EVENT_INSTANCE_STARTED = 1,
    CM_PLUGIN_EVENT_STATE_CHANGED = 2,
    CM_PLUGIN_EVENT_INSTANCE_ENDED = 3,
    CM_PLUGIN_EVENT_TASK_CREATED = 4,
    CM_PLUGIN_EVENT_MESSAGE_SENT = 5,     /* queued for a partner */
    CM_PLUGIN_EVENT_MESSAGE_RECEIVED = 6, /* recorded from a partner: instance = message id,
                                          ** from = sending node, to = receiving organization,
                                          ** detail = the message's kind */
};

typedef struct cm_plugin_event {
    size_t size;          /* sizeof(cm_plugin_event) as the host built it */
    int kind;             /* CM_PLUGIN_EVENT_* */
    const char *instance; /* the instance's id */
    const char *workflow; /* its workflow */
    const char *from;     /* state before ("" if none) */
    const char *to;       /* state after */
    const char *detail;   /* task id, receiver, end status ("" if none) */
} cm_plugin_event;

/* Called for each event of a subscribed kind; strings are borrowed for the call. */
typedef void (*cm_plugin_event_fn)(void *ud, const cm_plugin_event *ev);

/* A plugin command: `caremesh NAME ARGS...`. argv[0] is NAME. Returns the exit code. */
typedef int (*cm_plugin_command_fn)(void *ud, int argc, char **argv);

/* A notification to deliver through a channel. */
typedef struct cm_plugin_notification {
    size_t size;           /* sizeof(cm_plugin_notification) as the host built it */
    int64_t id;            /* the host's id of this notification: the same on a redelivery */
    const char *channel;   /* the channel's name ("sms", "email", ...) */
    const char *recipient; /* a patient or provider id */
    const char *message;   /* the text */
    const char *data;      /* extra data as JSON text ("{}" when none) */
    const char *instance;  /* the workflow instance that asked for it ("" when none) */
} cm_plugin_notification;

/* Deliver n. Return 0 only once the notification is durable on the channel's
** side (the host then marks it sent); non-zero with a reason in err to have the
** host retry later. A notification may be delivered again (after a crash, or
** when the host could not record the success): downstream, deduplicate by n->id. */
typedef int (*cm_plugin_channel_fn)(void *ud, const cm_plugin_notification *n, char *err,
                                    size_t errlen);

/* A function a plugin adds to the Lua of workflows and Lua plugins
** (`require "MODULE"`, then MODULE.NAME(...)). The Lua arguments arrive as
** one JSON array text (args_json, e.g. "[\"pat-1\",{\"dry_run\":true}]"); the
** result is JSON text the plugin allocates with malloc and the host frees
** (*result NULL means no results); Lua receives it decoded. Return 0, or
** non-zero with a message in err: Lua raises "MODULE.NAME: message". Runs on
** the loop thread inside the caller's step: the instruction budget meters Lua
** only, not the time spent in C, so the function must be quick and must not
** block (no network, no waiting). */
typedef int (*cm_plugin_lua_fn)(void *ud, const char *args_json, char **result, char *err,
                                size_t errlen);

typedef struct cm_plugin_api {
    size_t size;   /* sizeof(cm_plugin_api) as the host built it */
    int abi_major; /* the host's CM_PLUGIN_ABI_MAJOR */
    int abi_minor; /* the host's CM_PLUGIN_ABI_MINOR */

    /* ---- 1.0 ---- */

    /* Write one line to the host's JSON-lines log, as event "plugin.NAME". */
    void (*log)(cm_plugin_ctx *ctx, int level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /* The plugin's own section of the host configuration, as JSON text
    ** (plugins = { { name = ..., config = { ... } } }): "{}" when it has none.
    ** Borrowed: valid until the plugin is unloaded. */
    const char *(*config)(cm_plugin_ctx *ctx);

    /* Call fn for every event of kind. 0, or -1 for an unknown kind or past
    ** 64 subscriptions. */
    int (*subscribe)(cm_plugin_ctx *ctx, int kind, cm_plugin_event_fn fn, void *ud);

    /* Add `caremesh NAME` (summary: one line saying what it does). 0, or -1
    ** when the name is taken, does not start with a letter or is not made of
    ** [a-z0-9-], or the plugin already has 32 commands. A built-in command's
    ** name can never be reached. */
    int (*register_command)(cm_plugin_ctx *ctx, const char *name, const char *summary,
                            cm_plugin_command_fn fn, void *ud);

    /* A record as JSON text ("patient", "pat-1"), in a buffer the caller frees
    ** with api->free; NULL when there is none (errbuf says why). Reads of
    ** patient data are audited (since 1.1 hosts). */
    char *(*record_get)(cm_plugin_ctx *ctx, const char *kind, const char *id, char *errbuf,
                        size_t errlen);

    /* Free what the host allocated for the plugin. */
    void (*free)(void *p);

    /* Deliver notifications of channel name (`wf:notify{channel = name, ...}`).
    ** 0, or -1 when another plugin has the channel, the name is not [a-z0-9_-]
    ** (at most 63), or the plugin already has 16 channels. */
    int (*register_channel)(cm_plugin_ctx *ctx, const char *name, cm_plugin_channel_fn fn,
                            void *ud);

    /* ---- 1.1 ---- */
    /* Create the record (kind, its "id") from JSON text, or, when one with that
    ** id exists, replace it with this one as its next version. 0, or -1 with
    ** errbuf naming kind.field (e.g. "patient.birthDate: not a date"); a
    ** refused put writes nothing. "meta" (as record_get gives it) is ignored.
    ** A write of patient data (a patient, or a record whose "patient" names
    ** one) is audited with the plugin as actor. Inside tx_begin/tx_commit it
    ** is part of that transaction; otherwise it commits on its own (or, when
    ** the host called the plugin inside a transaction of its own, as in a Lua
    ** function run by a workflow step, it is part of that one). */
    int (*record_put)(cm_plugin_ctx *ctx, const char *kind, const char *json, char *errbuf,
                      size_t errlen);
    /* Records of kind matching query, JSON text of find keys to strings
    ** ({"condition":"E11"}; NULL or "{}" for all), ordered by id, ids after
    ** `after` (NULL from the start), at most limit (1..1000): a JSON array text
    ** the caller frees with api->free; NULL with errbuf on error (an unknown
    ** key is named, with the keys allowed). Patient reads are audited. */
    char *(*record_find)(cm_plugin_ctx *ctx, const char *kind, const char *query, const char *after,
                         int limit, char *errbuf, size_t errlen);
    /* One transaction around many record_put calls: all or nothing. begin
    ** refuses a nested begin; commit with none open is -1; rollback is safe to
    ** call when none is open. A transaction left open when the plugin's call
    ** returns is rolled back (and logged). Inside a transaction of the host
    ** it is a savepoint in it. Reads audited inside a transaction that is
    ** rolled back are audited again: the plugin saw the data. */
    int (*tx_begin)(cm_plugin_ctx *ctx, char *errbuf, size_t errlen);
    int (*tx_commit)(cm_plugin_ctx *ctx, char *errbuf, size_t errlen);
    void (*tx_rollback)(cm_plugin_ctx *ctx);
    /* Workflow instances as a JSON array text (each {id, workflow, version,
    ** state, status, input, ctx, created, updated}), filtered by filter JSON
    ** text {"workflow": W, "state": S, "status": "running"|"done"|...} (NULL
    ** for all), ordered by id after `after`, at most limit (1..1000). The
    ** caller frees with api->free; NULL with errbuf on error. */
    char *(*instances)(cm_plugin_ctx *ctx, const char *filter, const char *after, int limit,
                       char *errbuf, size_t errlen);
    /* Add MODULE.NAME to Lua (see cm_plugin_lua_fn). MODULE and NAME are
    ** [a-z][a-z0-9_]* (at most 63); MODULE may not be a built-in module or
    ** one of another plugin. 0, or -1 when taken, malformed, or past 64. */
    int (*register_lua)(cm_plugin_ctx *ctx, const char *module, const char *name,
                        cm_plugin_lua_fn fn, void *ud);
} cm_plugin_api;

typedef struct cm_plugin_desc {
    size_t size;         /* sizeof(cm_plugin_desc) */
    int abi_major;       /* CM_PLUGIN_ABI_MAJOR the plugin was built with */
    int abi_minor;       /* CM_PLUGIN_ABI_MINOR the plugin was built with */
    const char *name;    /* the plugin's name */
    const char *version; /* its own version */
    /* Set up: subscribe, register. Return 0, or non-zero with a message in err. */
    int (*init)(cm_plugin_ctx *ctx, const cm_plugin_api *api, char *err, size_t errlen);
    /* Tear down (may be NULL). Registrations are removed by the host. */
    void (*fini)(cm_plugin_ctx *ctx);
} cm_plugin_desc;

/* In the plugin: CM_PLUGIN_EXPORT const cm_plugin_desc caremesh_plugin = { ... }; */
#define CM_PLUGIN_EXPORT __attribute__((visibility("default")))

#ifdef __cplusplus
}
#endif

#endif
