/*
** lplugin.c -- plugins and Lua. Plugin functions in Lua: require "MODULE"
** gives a read-only table of MODULE.NAME functions; a call marshals its
** arguments to one JSON array, runs the plugin's function and decodes its
** JSON result. Lua plugins: a loader for the plugin host that runs a
** directory's init.lua (or a .lua file) in a sandbox of its own, with the
** caremesh.plugin module over the same ABI table C plugins get.
*/
#include "lplugin.h"

#include "lhost.h"
#include "ljson.h"
#include "model.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LPLUGIN_NAMES_MAX 64 /* functions of one module: one plugin's at most */
#define LPLUGIN_NAME_MAX  64

static const char PLUGINS_KEY = 'P';

static cm_plugin_host *plugins_of(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PLUGINS_KEY);
    cm_plugin_host *host = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return host;
}

/* The arguments 1..n as a JSON array in *box; 0, or raises "MODULE.NAME: ...". */
static void args_to_json(lua_State *L, int n, cJSON **box, const char *fname)
{
    cm_err err;
    if (!(*box = cJSON_CreateArray()))
        luaL_error(L, "%s: out of memory", fname);
    for (int i = 1; i <= n; i++) {
        char root[32];
        cJSON *v = NULL;
        snprintf(root, sizeof(root), "argument #%d", i);
        if (lua_isnil(L, i))
            v = cJSON_CreateNull(); /* keeps the positions of the others */
        else if (cm_ljson_from_lua(L, i, root, &v, &err) != 0)
            luaL_error(L, "%s: %s", fname, err.msg);
        if (!v || !cJSON_AddItemToArray(*box, v)) {
            cJSON_Delete(v);
            luaL_error(L, "%s: out of memory", fname);
        }
    }
}

/* MODULE.NAME(...): upvalue 1 is "MODULE.NAME". */
static int call_export(lua_State *L)
{
    const char *fname = lua_tostring(L, lua_upvalueindex(1));
    const char *dot = strchr(fname, '.');
    char module[LPLUGIN_NAME_MAX];
    cm_plugin_host *host = plugins_of(L);
    int n = lua_gettop(L);
    char *text, *result = NULL;
    cm_err err;
    snprintf(module, sizeof(module), "%.*s", (int)(dot - fname), fname);
    cJSON **box = cm_ljson_box(L); /* stack: args..., box */
    args_to_json(L, n, box, fname);
    text = cJSON_PrintUnformatted(*box);
    cJSON_Delete(*box);
    *box = NULL;
    if (!text)
        return luaL_error(L, "%s: out of memory", fname);
    /* in a step or a script: the reads the plugin audits go with the caller's
    ** transaction, so they are collected with the caller's own entries */
    cm_lua_host *lh = cm_lua_host_peek(L);
    int rc = host ? cm_plugin_host_lua_call(host, module, dot + 1, text, lh ? lh->audited : NULL,
                                            &result, &err)
                  : cm_err_set(&err, CM_ENOTFOUND, "%s: no plugins here", fname);
    free(text);
    if (rc != 0)
        return luaL_error(L, "%s", err.msg); /* "file:line: MODULE.NAME: message" */
    if (!result)
        return 0;
    *box = cJSON_Parse(result);
    free(result);
    if (!*box)
        return luaL_error(L, "%s: the plugin's result is not JSON", fname);
    if (cm_model_doc_finite(*box, "result", &err) != 0) /* 1e999: inf, never a JSON value */
        return luaL_error(L, "%s: %s", fname, err.msg);
    cm_ljson_push(L, *box); /* the box frees the document if this raises */
    cJSON_Delete(*box);
    *box = NULL;
    return 1;
}

typedef struct names {
    char name[LPLUGIN_NAMES_MAX][LPLUGIN_NAME_MAX];
    int n;
} names;

static void add_name(void *ud, const char *name)
{
    names *ns = ud;
    if (ns->n < LPLUGIN_NAMES_MAX)
        snprintf(ns->name[ns->n++], LPLUGIN_NAME_MAX, "%s", name);
}

/* The opener of a plugin module (for cm_sandbox_preload): argument 1 is its name. */
static int open_module(lua_State *L)
{
    const char *module = luaL_checkstring(L, 1);
    cm_plugin_host *host = plugins_of(L);
    names *ns = lua_newuserdatauv(L, sizeof(names), 0); /* collected first: no Lua error */
    ns->n = 0;                                          /* unwinds through the host */
    if (host)
        cm_plugin_host_lua_names(host, module, add_name, ns);
    cm_ljson_init(L);
    lua_createtable(L, 0, ns->n);
    for (int i = 0; i < ns->n; i++) {
        lua_pushfstring(L, "%s.%s", module, ns->name[i]);
        lua_pushcclosure(L, call_export, 1);
        lua_setfield(L, -2, ns->name[i]);
    }
    return 1;
}

static int set_plugins(lua_State *L)
{
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PLUGINS_KEY);
    return 0;
}

static void preload(void *ud, const char *module)
{
    cm_sandbox_preload(ud, module, open_module);
}

int cm_lua_plugins_attach(cm_sandbox *sb, cm_plugin_host *host, cm_err *err)
{
    lua_State *L = cm_sandbox_state(sb);
    lua_pushcfunction(L, set_plugins);
    lua_pushlightuserdata(L, host);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return cm_err_set(err, CM_ENOMEM, "cannot attach the plugins to the Lua state");
    }
    cm_plugin_host_lua_modules(host, preload, sb);
    return 0;
}

/* ---- Lua plugins ------------------------------------------------------ */

#define LP_CALLBACKS 160 /* subscriptions + channels + exports the host allows */

typedef struct lua_plugin lua_plugin;

/* A Lua function a plugin registered with the host: the ud of the C callback. */
typedef struct lua_cb {
    lua_plugin *lp;
    int ref;        /* the function, in the plugin's registry */
    char what[160]; /* names it in messages: "channel sms", "kpi.count" */
} lua_cb;

struct lua_plugin {
    cm_plugin_ctx *ctx;
    const cm_plugin_api *api;
    cm_sandbox *sb;
    bool loading; /* init.lua runs: registrations allowed */
    lua_cb cbs[LP_CALLBACKS];
    int ncbs;
};

typedef struct lua_loader {
    cm_sandbox_limits limits;
    cm_plugin_host *host;
} lua_loader;

static const char LP_KEY = 'L';
static const char *const event_names[] = {"instance_started",
                                          "state_changed",
                                          "instance_ended",
                                          "task_created",
                                          "message_sent",
                                          "message_received",
                                          NULL};

static lua_plugin *lp_of(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LP_KEY);
    lua_plugin *lp = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return lp;
}

/* Push the JSON text (freed here) decoded; raises on bad JSON (nothing leaks). */
static void push_json_text(lua_State *L, char *text, const char *what)
{
    cJSON **box = cm_ljson_box(L);
    *box = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!*box)
        luaL_error(L, "%s: the host's answer is not JSON", what);
    cm_ljson_push(L, *box);
    cJSON_Delete(*box);
    *box = NULL;
    lua_remove(L, -2); /* the box */
}

/* The value at idx as JSON text (malloc'd), or NULL for nil; raises naming root. */
static char *json_text(lua_State *L, int idx, const char *root)
{
    cJSON *doc = NULL;
    cm_err err;
    if (lua_isnoneornil(L, idx))
        return NULL;
    if (cm_ljson_from_lua(L, idx, root, &doc, &err) != 0)
        luaL_error(L, "%s", err.msg);
    char *text = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    if (!text)
        luaL_error(L, "%s: out of memory", root);
    return text;
}

/* nil, message: an expected failure of the host (not found, refused). */
static int lp_fail(lua_State *L, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

/* A slot for fn (at idx) while init.lua runs; raises otherwise. */
static lua_cb *new_cb(lua_State *L, lua_plugin *lp, const char *fname, int idx, const char *what)
{
    luaL_checktype(L, idx, LUA_TFUNCTION);
    if (!lp->loading)
        luaL_error(L, "plugin.%s: only while init.lua runs", fname);
    if (lp->ncbs >= LP_CALLBACKS)
        luaL_error(L, "plugin.%s: too many registrations", fname);
    lua_cb *cb = &lp->cbs[lp->ncbs];
    lua_pushvalue(L, idx);
    cb->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    cb->lp = lp;
    snprintf(cb->what, sizeof(cb->what), "%s", what);
    lp->ncbs++;
    return cb;
}

static void drop_cb(lua_State *L, lua_plugin *lp)
{
    luaL_unref(L, LUA_REGISTRYINDEX, lp->cbs[--lp->ncbs].ref);
}

/* Run cb inside the plugin's sandbox: push(L, c) pushes its arguments, take(L, c)
** reads its nres results; all under the budget, errors in err. */
typedef struct cb_call cb_call;
struct cb_call {
    lua_cb *cb;
    int (*push)(lua_State *L, cb_call *c);
    void (*take)(lua_State *L, cb_call *c);
    int nres;
    const void *in;
    bool ok;       /* out: a channel's delivery */
    char msg[512]; /* out: a channel's reason */
    char *json;    /* out: an export's result */
};

static int cb_trampoline(lua_State *L)
{
    cb_call *c = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->cb->ref);
    int n = c->push(L, c);
    lua_call(L, n, c->nres);
    if (c->take)
        c->take(L, c);
    return 0;
}

static int run_cb(cb_call *c, cm_err *err)
{
    lua_State *L = cm_sandbox_state(c->cb->lp->sb);
    if (!lua_checkstack(L, 2))
        return cm_err_set(err, CM_ENOMEM, "%s: out of Lua stack", c->cb->what);
    lua_pushcfunction(L, cb_trampoline);
    lua_pushlightuserdata(L, c);
    return cm_sandbox_pcall(c->cb->lp->sb, 1, 0, err);
}

/* A callback's error without the traceback: the first line names file:line. */
static const char *short_msg(cm_err *err)
{
    char *trace = strstr(err->msg, "\nstack traceback:");
    if (trace)
        *trace = '\0';
    return err->msg;
}

static void set_str(lua_State *L, const char *key, const char *value)
{
    lua_pushstring(L, value ? value : "");
    lua_setfield(L, -2, key);
}

static int push_event(lua_State *L, cb_call *c)
{
    const cm_plugin_event *ev = c->in;
    lua_createtable(L, 0, 6);
    set_str(L, "event", event_names[ev->kind - 1]);
    set_str(L, "instance", ev->instance);
    set_str(L, "workflow", ev->workflow);
    set_str(L, "from", ev->from);
    set_str(L, "to", ev->to);
    set_str(L, "detail", ev->detail);
    return 1;
}

static void lua_event(void *ud, const cm_plugin_event *ev)
{
    cb_call c = {.cb = ud, .push = push_event, .in = ev};
    cm_err err;
    if (ev->kind < 1 || ev->kind > 6)
        return;
    if (run_cb(&c, &err) != 0)
        c.cb->lp->api->log(c.cb->lp->ctx, CM_PLUGIN_LOG_ERROR, "%s: %s", c.cb->what,
                           short_msg(&err));
}

static int push_note(lua_State *L, cb_call *c)
{
    const cm_plugin_notification *n = c->in;
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)n->id);
    lua_setfield(L, -2, "id");
    set_str(L, "channel", n->channel);
    set_str(L, "recipient", n->recipient);
    set_str(L, "message", n->message);
    set_str(L, "instance", n->instance);
    push_json_text(L, strdup(n->data ? n->data : "{}"), "notification data");
    lua_setfield(L, -2, "data");
    return 1;
}

static void take_delivery(lua_State *L, cb_call *c)
{
    c->ok = lua_toboolean(L, -2) != 0;
    snprintf(c->msg, sizeof(c->msg), "%s",
             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                            : "the channel did not return true");
}

static int lua_channel(void *ud, const cm_plugin_notification *n, char *err, size_t errlen)
{
    cb_call c = {.cb = ud, .push = push_note, .take = take_delivery, .nres = 2, .in = n};
    cm_err e;
    if (run_cb(&c, &e) != 0) {
        snprintf(err, errlen, "%s", short_msg(&e));
        return -1;
    }
    if (!c.ok)
        snprintf(err, errlen, "%s", c.msg);
    return c.ok ? 0 : -1;
}

static int push_args(lua_State *L, cb_call *c)
{
    cJSON **box = cm_ljson_box(L);
    int n;
    *box = cJSON_Parse(c->in);
    if (!cJSON_IsArray(*box))
        luaL_error(L, "%s: arguments are not a JSON array", c->cb->what);
    n = cJSON_GetArraySize(*box);
    luaL_checkstack(L, n, "too many arguments");
    for (const cJSON *a = (*box)->child; a; a = a->next)
        cm_ljson_push(L, a);
    cJSON_Delete(*box);
    *box = NULL;
    lua_remove(L, -n - 1); /* the box */
    return n;
}

static void take_result(lua_State *L, cb_call *c)
{
    c->json = json_text(L, -1, "result"); /* the last step: nothing raises after it */
}

static int lua_export(void *ud, const char *args, char **result, char *err, size_t errlen)
{
    cb_call c = {.cb = ud, .push = push_args, .take = take_result, .nres = 1, .in = args};
    cm_err e;
    if (run_cb(&c, &e) != 0) {
        free(c.json);
        snprintf(err, errlen, "%s", short_msg(&e));
        return -1;
    }
    *result = c.json;
    return 0;
}

/* ---- the caremesh.plugin module ---- */

/* plugin.log(level, message) */
static int lp_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    lua_plugin *lp = lp_of(L);
    int level = luaL_checkoption(L, 1, NULL, levels);
    lp->api->log(lp->ctx, level, "%s", luaL_checkstring(L, 2));
    return 0;
}

/* plugin.on(event, function(ev)) */
static int lp_on(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    int kind = luaL_checkoption(L, 1, NULL, event_names) + 1;
    char what[64];
    snprintf(what, sizeof(what), "on %s", event_names[kind - 1]);
    lua_cb *cb = new_cb(L, lp, "on", 2, what);
    if (lp->api->subscribe(lp->ctx, kind, lua_event, cb) != 0) {
        drop_cb(L, lp);
        return luaL_error(L, "plugin.on: refused (at most 64 subscriptions)");
    }
    return 0;
}

/* plugin.channel(name, function(notification) -> true | nil, reason) */
static int lp_channel(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    const char *name = luaL_checkstring(L, 1);
    char what[128];
    snprintf(what, sizeof(what), "channel %s", name);
    lua_cb *cb = new_cb(L, lp, "channel", 2, what);
    if (lp->api->register_channel(lp->ctx, name, lua_channel, cb) != 0) {
        drop_cb(L, lp);
        return luaL_error(L,
                          "plugin.channel: \"%s\" refused (another plugin has it, it is not "
                          "[a-z0-9_-] of at most 63, or past 16 channels)",
                          name);
    }
    return 0;
}

/* plugin.export(module, name, function(...) -> result) */
static int lp_export(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    const char *module = luaL_checkstring(L, 1), *name = luaL_checkstring(L, 2);
    char what[136];
    snprintf(what, sizeof(what), "%s.%s", module, name);
    lua_cb *cb = new_cb(L, lp, "export", 3, what);
    if (lp->api->register_lua(lp->ctx, module, name, lua_export, cb) != 0) {
        drop_cb(L, lp);
        return luaL_error(L,
                          "plugin.export: %s.%s refused (names are [a-z][a-z0-9_]*, at most 63; "
                          "the module may not be built in or another plugin's; at most 64)",
                          module, name);
    }
    return 0;
}

/* plugin.get(kind, id) -> record | nil, message */
static int lp_get(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    char err[512] = "";
    char *text = lp->api->record_get(lp->ctx, luaL_checkstring(L, 1), luaL_checkstring(L, 2), err,
                                     sizeof(err));
    if (!text)
        return lp_fail(L, err);
    push_json_text(L, text, "plugin.get");
    return 1;
}

/* opts.after, opts.limit (default 100) of the table at idx (may be nil). */
static void page_opts(lua_State *L, int idx, const char **after, int *limit)
{
    *after = NULL;
    *limit = 100;
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    if (lua_getfield(L, idx, "after") != LUA_TNIL)
        *after = luaL_checkstring(L, -1); /* stays on the stack: borrowed until return */
    if (lua_getfield(L, idx, "limit") != LUA_TNIL)
        *limit = (int)luaL_checkinteger(L, -1);
}

/* plugin.find(kind, query?, {after =, limit =}?) -> records | nil, message */
static int lp_find(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    const char *kind = luaL_checkstring(L, 1), *after;
    char err[512] = "";
    int limit;
    page_opts(L, 3, &after, &limit);
    char *query = json_text(L, 2, "query");
    char *text = lp->api->record_find(lp->ctx, kind, query, after, limit, err, sizeof(err));
    free(query);
    if (!text)
        return lp_fail(L, err);
    push_json_text(L, text, "plugin.find");
    return 1;
}

/* plugin.put(kind, record) -> true | nil, message */
static int lp_put(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    const char *kind = luaL_checkstring(L, 1);
    char err[512] = "";
    luaL_checktype(L, 2, LUA_TTABLE);
    char *rec = json_text(L, 2, kind);
    int rc = lp->api->record_put(lp->ctx, kind, rec, err, sizeof(err));
    free(rec);
    if (rc != 0)
        return lp_fail(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* plugin.instances(filter?, {after =, limit =}?) -> instances | nil, message */
static int lp_instances(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    const char *after;
    char err[512] = "";
    int limit;
    page_opts(L, 2, &after, &limit);
    char *filter = json_text(L, 1, "filter");
    char *text = lp->api->instances(lp->ctx, filter, after, limit, err, sizeof(err));
    free(filter);
    if (!text)
        return lp_fail(L, err);
    push_json_text(L, text, "plugin.instances");
    return 1;
}

static const luaL_Reg plugin_funcs[] = {
    {"log", lp_log}, {"on", lp_on},     {"channel", lp_channel}, {"export", lp_export},
    {"get", lp_get}, {"find", lp_find}, {"put", lp_put},         {"instances", lp_instances},
    {NULL, NULL},
};

static int open_plugin_api(lua_State *L)
{
    lua_plugin *lp = lp_of(L);
    cm_ljson_init(L);
    luaL_newlib(L, plugin_funcs);
    lua_pushstring(L, cm_plugin_ctx_name(lp->ctx));
    lua_setfield(L, -2, "name");
    cm_ljson_push_null(L);
    lua_setfield(L, -2, "null");
    push_json_text(L, strdup(lp->api->config(lp->ctx)), "plugin.config");
    lua_setfield(L, -2, "config");
    return 1;
}

/* ---- the loader ---- */

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool lua_claims(void *ud, const char *path)
{
    size_t len = strlen(path);
    (void)ud;
    return is_dir(path) || (len > 4 && strcmp(path + len - 4, ".lua") == 0);
}

static int set_lp(lua_State *L)
{
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LP_KEY);
    return 0;
}

static void lp_destroy(lua_plugin *lp)
{
    if (lp) {
        cm_sandbox_destroy(&lp->sb);
        free(lp);
    }
}

/* Set up lp's sandbox: the plugin api, its own directory's modules, the other plugins'. */
static int lp_sandbox(lua_plugin *lp, const lua_loader *ld, const char *dir, cm_err *err)
{
    if (!(lp->sb = cm_sandbox_new(&ld->limits, err)))
        return err->code;
    lua_State *L = cm_sandbox_state(lp->sb);
    lua_pushcfunction(L, set_lp);
    lua_pushlightuserdata(L, lp);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    cm_sandbox_preload(lp->sb, "caremesh.plugin", open_plugin_api);
    int rc = cm_sandbox_add_module_dir(lp->sb, dir, err);
    return rc ? rc : cm_lua_plugins_attach(lp->sb, ld->host, err);
}

static int lua_init(cm_plugin_ctx *ctx, const cm_plugin_api *api, char *err, size_t errlen)
{
    const lua_loader *ld = cm_plugin_ctx_loader_ud(ctx);
    const char *path = cm_plugin_ctx_path(ctx);
    char file[4096], dir[4096];
    lua_plugin *lp = calloc(1, sizeof(*lp));
    cm_err e;
    if (!lp)
        return snprintf(err, errlen, "out of memory"), -1;
    if (is_dir(path)) {
        snprintf(dir, sizeof(dir), "%s", path);
        snprintf(file, sizeof(file), "%s/init.lua", path);
    } else {
        const char *slash = strrchr(path, '/');
        snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
        snprintf(file, sizeof(file), "%s", path);
    }
    lp->ctx = ctx;
    lp->api = api;
    lp->loading = true;
    if (lp_sandbox(lp, ld, dir, &e) != 0 || cm_sandbox_dofile(lp->sb, file, 0, &e) != 0) {
        snprintf(err, errlen, "%s", short_msg(&e)); /* "FILE:LINE: message" */
        lp_destroy(lp);
        return -1;
    }
    lp->loading = false;
    cm_plugin_ctx_set_data(ctx, lp);
    return 0;
}

static void lua_fini(cm_plugin_ctx *ctx)
{
    lp_destroy(cm_plugin_ctx_data(ctx));
    cm_plugin_ctx_set_data(ctx, NULL);
}

static const cm_plugin_desc lua_desc = {
    sizeof(cm_plugin_desc),
    CM_PLUGIN_ABI_MAJOR,
    CM_PLUGIN_ABI_MINOR,
    "lua",
    "lua",
    lua_init,
    lua_fini,
};

static const cm_plugin_loader lua_loader_vt = {lua_claims, &lua_desc, free};

int cm_lua_plugins_enable(cm_plugin_host *host, const cm_sandbox_limits *limits, cm_err *err)
{
    lua_loader *ld = calloc(1, sizeof(*ld));
    if (!ld)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    if (limits)
        ld->limits = *limits;
    ld->host = host;
    cm_plugin_host_set_loader(host, &lua_loader_vt, ld);
    return 0;
}
