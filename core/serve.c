/*
** serve.c -- the serving loop: lock, engine on the loop, workflow files,
** signals. See serve.h.
*/
#include "serve.h"

#include "api.h"
#include "embedded.h"
#include "engine.h"
#include "fed.h"
#include "fs.h"
#include "keys.h"
#include "lconfig.h"
#include "lhost.h"
#include "log.h"
#include "lplugin.h"
#include "plugin.h"
#include "lworkflow.h"
#include "sandbox.h"

#include <dirent.h>
#include <lauxlib.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define SERVE_LOCK_FILE "caremesh.lock"
#define SERVE_MAX_FILES 256
#define SERVE_NOTIFY_MS 250 /* how often pending notifications go to their channels */

typedef struct serve {
    const cm_serve_opts *o;
    cm_engine *engine;
    cm_plugin_host *plugins;
    /* the engine's Lua: reaches the plugins' Lua functions */
    cm_sandbox *sb;
    cm_fed *fed;   /* NULL when federation is not configured */
    cm_api *api;   /* NULL when api.enabled is false */
    bool draining; /* stopping: the API answers what it has read */
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t notify;      /* hands pending notifications to channel plugins */
    cm_store_rowmark notes; /* the notifications known durable (on_notify_tick) */
    int signum;
    bool sync_failed; /* the store's WAL fsync failed: the node stops (store.h) */
    /* where workflows come from (workflow_source, serve_reload) */
    struct {
        char dir[4096]; /* the workflows directory now */
        bool embedded;  /* the shipped workflows compiled in serve (embedded.h) */
        cm_sandbox *sb; /* the engine's Lua: its module directories */
    } wf;
} serve;

/* Hold DATA/caremesh.lock for as long as fd stays open. */
static int take_lock(const char *data, int *fd_out, cm_err *err)
{
    char path[4096];
    int rc = cm_fs_join(path, sizeof(path), data, SERVE_LOCK_FILE, err);
    if (rc != 0)
        return rc;
    int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return cm_err_set(err, CM_EPERM, "%s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return cm_err_set(err, CM_EPERM, "%s: another caremesh serve is running on %s", path, data);
    }
    *fd_out = fd;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- the embedded default: the shipped workflows compiled in ---- */

static const cm_embedded_file *embedded_module(const char *name)
{
    char path[256];
    if (snprintf(path, sizeof(path), "%s.lua", name) >= (int)sizeof(path))
        return NULL;
    for (char *p = path; *p && strcmp(p, ".lua") != 0; p++)
        if (*p == '.')
            *p = '/';
    for (size_t i = 0; i < cm_embedded_workflows_count; i++)
        if (strcmp(cm_embedded_workflows[i].path, path) == 0)
            return &cm_embedded_workflows[i];
    return NULL;
}

/* require "lib.x" of an embedded workflow: compiled with the sandbox's own
** load (text only, the sandbox's environment), run once. */
static int open_embedded_module(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const cm_embedded_file *f = embedded_module(name);
    if (!f)
        return luaL_error(L, "module '%s' not found", name);
    lua_getglobal(L, "load");
    lua_pushlstring(L, f->text, f->len);
    lua_pushfstring(L, "@embedded:%s", f->path);
    lua_call(L, 2, 2); /* stack: name, fn | nil, message */
    if (lua_isnil(L, -2))
        return lua_error(L);
    lua_pop(L, 1);
    lua_call(L, 0, 1);
    return 1;
}

static void preload_embedded_modules(cm_sandbox *sb)
{
    char name[256];
    for (size_t i = 0; i < cm_embedded_workflows_count; i++) {
        const char *path = cm_embedded_workflows[i].path;
        size_t len = strlen(path);
        if (!strchr(path, '/') || len < 5 || len >= sizeof(name))
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(len - 4), path); /* lib/x.lua -> lib.x */
        for (char *p = name; *p; p++)
            if (*p == '/')
                *p = '.';
        cm_sandbox_preload(sb, name, open_embedded_module);
    }
}

static int load_embedded(serve *sv)
{
    int refused = 0;
    for (size_t i = 0; i < cm_embedded_workflows_count; i++) {
        const cm_embedded_file *f = &cm_embedded_workflows[i];
        char origin[300];
        cm_wf_info info;
        cm_err err;
        int rev = 0;
        if (strchr(f->path, '/'))
            continue; /* a shared module, not a workflow */
        snprintf(origin, sizeof(origin), "embedded:%s", f->path);
        if (cm_engine_load_source(sv->engine, origin, f->text, f->len, &info, &rev, &err) == 0) {
            cm_log(CM_LOG_INFO, "workflow.loaded", "%s version %d is revision %d (%s)", info.name,
                   info.version, rev, origin);
        } else {
            cm_log(CM_LOG_ERROR, "workflow.refused", "%s", err.msg);
            refused++;
        }
    }
    return refused;
}

/* The workflows directory, or the embedded default when the configuration
** names none and DATA/workflows does not exist (decided at start). */
static int workflow_source(serve *sv, cm_sandbox *sb, cm_err *err)
{
    struct stat st;
    const char *dir = sv->o->cfg->workflows[0] ? sv->o->cfg->workflows : sv->o->workflows;
    sv->wf.sb = sb;
    snprintf(sv->wf.dir, sizeof(sv->wf.dir), "%s", dir ? dir : "");
    sv->wf.embedded = !sv->o->cfg->workflows[0] && (!dir || stat(dir, &st) != 0);
    if (sv->wf.embedded) {
        preload_embedded_modules(sb);
        return 0;
    }
    /* workflows share Lua modules kept beside them: require "lib.x" is WORKFLOWS/lib/x.lua */
    return cm_sandbox_add_module_dir(sb, sv->wf.dir, err);
}

/* Load every *.lua in the workflows directory, in name order. A refused file
** is logged and the revision before it keeps serving. Returns files refused. */
static int load_workflows(serve *sv)
{
    const char *dir = sv->wf.dir;
    char *names[SERVE_MAX_FILES];
    int n = 0, refused = 0;
    DIR *d = sv->wf.embedded ? NULL : opendir(dir);
    struct dirent *e;
    if (sv->wf.embedded)
        return load_embedded(sv);
    if (!d) {
        /* only a directory the configuration names (or one gone since the
        ** start) is missing here: the node serves without its workflows */
        cm_log(CM_LOG_WARN, "workflow.none",
               "cannot open the workflows directory %s: %s; no workflow is loaded from it", dir,
               strerror(errno));
        return 0;
    }
    while ((e = readdir(d)) != NULL && n < SERVE_MAX_FILES) {
        size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".lua") == 0 && (names[n] = strdup(e->d_name)))
            n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(names[0]), by_name);
    for (int i = 0; i < n; i++) {
        char path[4096];
        cm_wf_info info;
        cm_err err;
        int rev = 0;
        if (cm_fs_join(path, sizeof(path), dir, names[i], &err) == 0 &&
            cm_engine_load_file(sv->engine, path, &info, &rev, &err) == 0) {
            cm_log(CM_LOG_INFO, "workflow.loaded", "%s version %d is revision %d (%s)", info.name,
                   info.version, rev, path);
        } else {
            cm_log(CM_LOG_ERROR, "workflow.refused", "%s", err.msg);
            refused++;
        }
        free(names[i]);
    }
    return refused;
}

static void on_notify_tick(uv_timer_t *h)
{
    serve *sv = h->data;
    cm_err err;
    int sent = 0;
    /* the output-commit rule: only notifications of commits already durable
    ** leave, without waiting on the loop; the rest go on a later tick */
    if (cm_store_sync_status(sv->o->store, &err) != 0)
        return; /* the node is stopping (serve_durable) */
    if (cm_plugin_host_deliver_durable(sv->plugins, sv->o->store, sv->o->clock, 64, &sv->notes,
                                       &sent, &err) != 0)
        cm_log(CM_LOG_ERROR, "notify.fail", "%s", err.msg);
    else if (sent > 0)
        cm_log(CM_LOG_DEBUG, "notify.sent", "%d notification(s) handed to their channels", sent);
}

static void serve_finish(serve *sv)
{
    uv_close((uv_handle_t *)&sv->sigint, NULL);
    uv_close((uv_handle_t *)&sv->sigterm, NULL);
    uv_close((uv_handle_t *)&sv->sighup, NULL);
    uv_close((uv_handle_t *)&sv->notify, NULL);
    cm_engine_detach(sv->engine); /* the batch in flight has committed: we are between batches */
    cm_fed_stop(sv->fed);
}

/* ---- the HTTP API (api.h) ---- */

static void on_api_drained(void *ud)
{
    serve *sv = ud;
    cm_log(CM_LOG_INFO, "api.stopped", "%s", "every API request taken up was answered");
    serve_finish(sv);
}

/* Stop: the API stops accepting and answers what it took up (the engine runs on
** meanwhile, so submissions are committed and acknowledged), then the rest
** stops. A second signal while draining closes the API's connections. */
static void serve_stop(serve *sv)
{
    if (!sv->api) {
        serve_finish(sv);
        return;
    }
    if (!sv->draining)
        cm_log(CM_LOG_INFO, "api.draining", "%s", "no more API requests are accepted");
    sv->draining = true;
    cm_api_stop(sv->api, on_api_drained, sv);
}

/* The output-commit rule for API answers: what an answer made now may show
** (inside a pipelined batch's acks, that batch), and what is durable. */
static uint64_t api_made(void *ud)
{
    serve *sv = ud;
    return cm_engine_output_seq(sv->engine);
}

static uint64_t api_durable(void *ud)
{
    serve *sv = ud;
    return cm_store_synced_seq(sv->o->store);
}

static int start_api(serve *sv, uv_loop_t *loop, cm_err *err)
{
    cm_api_opts ao = {loop,       sv->o->store, sv->o->model, sv->o->clock,
                      sv->engine, sv->fed,      sv->o->cfg,   sv->o->node_id};
    if (!sv->o->cfg->api.enabled) {
        cm_log(CM_LOG_INFO, "api.off", "%s", "the HTTP API is disabled (api.enabled = false)");
        return 0;
    }
    int rc = cm_api_start(&ao, &sv->api, err);
    if (rc == 0) {
        cm_http_gate gate = {api_made, api_durable, sv};
        cm_api_set_gate(sv->api, &gate);
    }
    return rc;
}

/* The engine learned that the store's watermark moved (or a sync failed):
** the API's answers and federation's sends waiting for it go on. A failed
** fsync is not retried (store.h): the node is not ready and stops; answers
** held for the lost syncs are replaced by 503s (outcome_unknown for a write
** told it succeeded) and written in their turn before it does. */
static void serve_durable(void *ud)
{
    serve *sv = ud;
    cm_err err;
    if (!sv->sync_failed && cm_store_sync_status(sv->o->store, &err) != 0) {
        sv->sync_failed = true;
        cm_log(CM_LOG_ERROR, "store.sync_failed", "%s; the node stops", err.msg);
        cm_api_set_ready(sv->api, false);
        cm_api_sync_lost(sv->api);
        serve_stop(sv);
        return;
    }
    cm_api_durable(sv->api);
    cm_fed_wake(sv->fed);
}

/* ---- end of the HTTP API ---- */

/* ---- SIGHUP: the configuration file again ---- */

/* Re-read the configuration file; take what may change while serving, log
** what needs a restart. A refused file changes nothing. The plugins and
** workflows are reloaded afterwards by the caller, from what is now current. */
static void reload_config(serve *sv)
{
    cm_config next, *run = sv->o->cfg;
    cm_config_diff d;
    cm_err err;
    if (!sv->o->config_path) {
        cm_log(CM_LOG_INFO, "config.none", "%s", "no configuration file: the defaults stay");
        return;
    }
    if (cm_lconfig_load(sv->o->config_path, &next, &err) != 0) {
        cm_log(CM_LOG_ERROR, "config.refused", "%s (the running configuration stays)", err.msg);
        cm_config_free(&next);
        return;
    }
    if (next.node_id[0] && strcmp(next.node_id, sv->o->node_id) != 0) {
        cm_log(CM_LOG_ERROR, "config.refused",
               "%s: node_id \"%s\" is not this node (\"%s\"); the running configuration stays",
               sv->o->config_path, next.node_id, sv->o->node_id);
        cm_config_free(&next);
        return;
    }
    if (sv->o->api_listen_fixed) {
        snprintf(next.api.host, sizeof(next.api.host), "%s", run->api.host);
        next.api.port = run->api.port;
    }
    cm_config_diff_of(run, &next, &d);
    if (d.workflows && sv->wf.embedded) {
        cm_log(CM_LOG_WARN, "config.restart_needed",
               "workflows: the node started on the embedded workflows; a directory takes a "
               "restart");
        snprintf(next.workflows, sizeof(next.workflows), "%s", run->workflows);
    }
    if (d.plugins)
        cm_plugin_host_unload_all(sv->plugins); /* before their config list is freed */
    cm_config_take_live(run, &next);
    cm_config_free(&next);
    if (d.log)
        cm_log_set_level(run->log_level);
    if (d.api)
        cm_api_reconfigure(sv->api);
    if (d.workflows && !sv->wf.embedded) {
        char dir[sizeof(sv->wf.dir)];
        snprintf(dir, sizeof(dir), "%s", run->workflows[0] ? run->workflows : sv->o->workflows);
        if (cm_sandbox_add_module_dir(sv->wf.sb, dir, &err) != 0)
            cm_log(CM_LOG_ERROR, "config.workflows", "%s", err.msg);
        snprintf(sv->wf.dir, sizeof(sv->wf.dir), "%s", dir);
    }
    cm_log(CM_LOG_INFO, "config.reloaded", "%s: %s%s", sv->o->config_path,
           d.live[0] ? "applied " : "no change that applies while serving", d.live);
    if (d.restart[0])
        cm_log(CM_LOG_WARN, "config.restart_needed", "%s changed: takes effect at the next start",
               d.restart);
    cm_log(CM_LOG_DEBUG, "config.current",
           "workflows %s; api max_connections %d, max_header_bytes %d, max_body_bytes %d, "
           "max_pipeline %d, timeout_ms %d, open_loopback %s; %d plugin(s)",
           sv->wf.embedded ? "embedded" : sv->wf.dir, run->api.max_connections,
           run->api.max_header_bytes, run->api.max_body_bytes, run->api.max_pipeline,
           run->api.timeout_ms, run->api.open_loopback ? "true" : "false",
           cJSON_GetArraySize(run->plugins));
}

static void on_signal(uv_signal_t *h, int signum)
{
    serve *sv = h->data;
    if (signum == SIGHUP) {
        reload_config(sv);
        cm_log(CM_LOG_INFO, "serve.reload", "reloading plugins and workflows from %s",
               sv->wf.embedded ? "the embedded default" : sv->wf.dir);
        cm_plugin_host_unload_all(sv->plugins);
        cm_plugin_host_load_each(sv->plugins, sv->o->cfg->plugins); /* failures logged */
        cm_err err;
        if (cm_lua_plugins_attach(sv->sb, sv->plugins, &err) != 0)
            cm_log(CM_LOG_ERROR, "plugin.lua", "%s", err.msg);
        load_workflows(sv);
        return;
    }
    sv->signum = signum;
    serve_stop(sv);
}

/* ---- federation <-> engine ---- */

static void fed_msg_acked(void *ticket, const cm_ack *ack)
{
    /* status != 0: the batch did not commit; the peer resends */
    cm_fed_answer(ticket, ack->status == 0 ? ack->result : NULL, ack->message);
}

static int fed_apply(void *ud, const char *peer, const cm_fed_msg *m, void *ticket)
{
    serve *sv = ud;
    cm_err err;
    cm_engine_msg em = {.peer = peer,
                        .id = m->id,
                        .kind = m->kind,
                        .from = m->from,
                        .to = m->to,
                        .purpose = m->purpose,
                        .classes = m->classes,
                        .patient = m->patient,
                        .record = m->record,
                        .instance = m->instance,
                        .reply_to = m->reply_to,
                        .prev = m->prev,
                        .payload = m->payload};
    if (!cJSON_IsObject(m->payload)) {
        cm_fed_answer(ticket, "refused", "payload: must be a JSON object");
        return 0;
    }
    return cm_engine_receive(sv->engine, &em, fed_msg_acked, ticket, &err);
}

/* The engine asks whether a message may be queued routed (federation says). */
static bool fed_route_at_insert(void *ud, const char *node)
{
    serve *sv = ud;
    return cm_fed_route_at_insert(sv->fed, node);
}

/* The engine's observer: a queued message wakes federation at once (not at
** its next poll); every event goes on to the plugins. */
static void engine_event(void *ud, const cm_engine_event *ev)
{
    serve *sv = ud;
    if (ev->kind == CM_ENGINE_MESSAGE_QUEUED)
        cm_fed_wake(sv->fed);
    if (ev->kind == CM_ENGINE_EVENT_PARKED) /* names only: payloads stay out of logs */
        cm_log(CM_LOG_WARN, "engine.event_parked",
               "instance %s (%s) ended in state %s before its event %s could apply: parked as "
               "failed (caremesh failed)",
               ev->instance, ev->workflow, ev->to, ev->detail);
    cm_plugin_host_on_engine_event(sv->plugins, ev);
}

static int fed_refused(void *ud, const char *instance, const char *to, const char *kind,
                       const char *purpose, const char *reason, cm_err *err)
{
    serve *sv = ud;
    return cm_engine_post_refused(sv->engine, instance, to, kind, purpose, reason, err);
}

static void fed_after_refused(void *ud)
{
    serve *sv = ud;
    cm_engine_wake(sv->engine);
}

/* Federation, when the config has a federation table: the node's key pair
** goes into the sockets and is wiped here. */
static int start_fed(serve *sv, uv_loop_t *loop, cm_err *err)
{
    char path[4096];
    cm_keypair kp;
    int rc;
    if (!sv->o->cfg->fed_enabled) {
        cm_log(CM_LOG_INFO, "fed.off", "federation is not configured");
        return 0;
    }
    if ((rc = cm_fs_join(path, sizeof(path), sv->o->data, CM_KEY_FILE, err)) != 0 ||
        (rc = cm_keys_load(&kp, path, err)) != 0)
        return rc;
    cm_fed_opts fo = {loop,
                      sv->o->store,
                      sv->o->clock,
                      sv->o->cfg,
                      sv->o->node_id,
                      &kp,
                      0,
                      cm_plugin_host_on_message,
                      sv->plugins,
                      fed_apply,
                      fed_refused,
                      fed_after_refused,
                      sv,
                      0,
                      NULL,
                      NULL,
                      0,
                      true, /* the engine's batches are pipelined: rows wait for their sync */
                      0,    /* the default ack timeout */
                      0};   /* and heartbeat */
    rc = cm_fed_start(&fo, &sv->fed, err);
    cm_keys_wipe(&kp);
    return rc;
}

static int start_signals(serve *sv, uv_loop_t *loop, cm_err *err)
{
    uv_signal_t *hs[] = {&sv->sigint, &sv->sigterm, &sv->sighup};
    int nums[] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        int rc = uv_signal_init(loop, hs[i]);
        if (rc == 0) {
            hs[i]->data = sv;
            rc = uv_signal_start(hs[i], on_signal, nums[i]);
        }
        if (rc != 0)
            return cm_err_set(err, CM_EIO, "signal %d: %s", nums[i], uv_strerror(rc));
    }
    return 0;
}

static int run_loop(serve *sv, cm_sandbox *sb, cm_err *err)
{
    uv_loop_t loop;
    int rc = uv_loop_init(&loop);
    if (rc != 0)
        return cm_err_set(err, CM_EIO, "event loop: %s", uv_strerror(rc));
    uv_timer_init(&loop, &sv->notify);
    sv->notify.data = sv;
    uv_timer_start(&sv->notify, on_notify_tick, SERVE_NOTIFY_MS, SERVE_NOTIFY_MS);
    if ((rc = start_signals(sv, &loop, err)) == 0 &&
        (rc = cm_engine_attach(sv->engine, &loop, err)) == 0 &&
        (rc = start_fed(sv, &loop, err)) == 0 && (rc = start_api(sv, &loop, err)) == 0) {
        int refused = load_workflows(sv);
        cm_api_set_ready(sv->api, true);
        cm_log(CM_LOG_INFO, "serve.ready",
               "node %s serving from %s (schema %d, pid %ld, %d workflow file(s) refused)",
               sv->o->node_id, sv->o->data, cm_store_schema_version(sv->o->store), (long)getpid(),
               refused);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (sv->sync_failed)
            rc = cm_store_sync_status(sv->o->store, err);
        else
            cm_log(CM_LOG_INFO, "serve.stop", "node %s stopped on %s", sv->o->node_id,
                   sv->signum == SIGINT ? "SIGINT" : "SIGTERM");
    } else {
        /* close what was opened, then let the loop finish the closes */
        uv_signal_t *hs[] = {&sv->sigint, &sv->sigterm, &sv->sighup};
        for (int i = 0; i < 3; i++)
            if (uv_is_active((uv_handle_t *)hs[i]) || hs[i]->loop == &loop)
                uv_close((uv_handle_t *)hs[i], NULL);
        uv_close((uv_handle_t *)&sv->notify, NULL);
        cm_engine_detach(sv->engine);
        cm_fed_stop(sv->fed);
        cm_api_stop(sv->api, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    cm_fed_destroy(&sv->fed);
    (void)sb;
    if (uv_loop_close(&loop) != 0 && rc == 0)
        rc = cm_err_set(err, CM_EIO, "event loop did not close cleanly");
    return rc;
}

int cm_serve_run(const cm_serve_opts *o, cm_err *err)
{
    cm_sandbox_limits limits = {o->cfg->lua_instructions, o->cfg->lua_memory_bytes};
    cm_lua_host host = {o->store, o->model, o->clock, o->node_id, NULL, NULL, NULL, NULL};
    cm_engine_opts eo;
    cm_sandbox *sb = NULL;
    cm_lua_runtime *rt = NULL;
    serve sv;
    int lock_fd = -1, rc;
    memset(&sv, 0, sizeof(sv));
    sv.o = o;
    if ((rc = take_lock(o->data, &lock_fd, err)) != 0)
        return rc;
    if (!(sb = cm_sandbox_new(&limits, err))) {
        rc = err->code;
        goto done;
    }
    if ((rc = cm_lua_host_set(cm_sandbox_state(sb), &host, err)) != 0)
        goto done;
    cm_sandbox_preload(sb, "caremesh", cm_lua_open_caremesh);
    if ((rc = workflow_source(&sv, sb, err)) != 0)
        goto done;
    if (!(rt = cm_lua_runtime_new(sb, err))) {
        rc = err->code;
        goto done;
    }
    memset(&eo, 0, sizeof(eo));
    eo.store = o->store;
    eo.model = o->model;
    eo.clock = o->clock;
    eo.runtime = cm_lua_runtime_seam(rt);
    eo.node_id = o->node_id;
    eo.route_at_insert = fed_route_at_insert;
    eo.route_ud = &sv;
    /* group commit pipelined: a batch's fsync overlaps the next batch; every
    ** output waits for the sync that covers it (api, fed, notifications) */
    eo.pipeline = true;
    eo.max_attempts = o->cfg->engine_max_attempts;
    eo.cache_max = o->cfg->engine_instance_cache > 0 ? o->cfg->engine_instance_cache : -1;
    if (!(sv.engine = cm_engine_new(&eo, err))) {
        rc = err->code;
        goto done;
    }
    if (!(sv.plugins = cm_plugin_host_new(o->model, err)) ||
        cm_lua_plugins_enable(sv.plugins, &limits, err) != 0) {
        rc = err->code;
        goto done;
    }
    if ((rc = cm_plugin_host_load_list(sv.plugins, o->cfg->plugins, NULL, err)) != 0 ||
        (rc = cm_lua_plugins_attach(sb, sv.plugins, err)) != 0)
        goto done;
    sv.sb = sb;
    cm_engine_observe(sv.engine, engine_event, &sv);
    cm_engine_on_durable(sv.engine, serve_durable, &sv);
    rc = run_loop(&sv, sb, err);
done:
    cm_engine_destroy(&sv.engine); /* before the API: it acks what never ran */
    cm_api_destroy(&sv.api);
    cm_plugin_host_destroy(&sv.plugins);
    cm_lua_runtime_destroy(&rt);
    cm_sandbox_destroy(&sb);
    if (lock_fd >= 0)
        close(lock_fd);
    return rc;
}
