/*
** ltest.c -- the workflow test runner and its `caremesh.test` module.
** One sandbox per test file (the file's code, the definitions and their
** handlers share it); one store + model + engine per t.test, on a virtual
** clock that starts at a fixed instant and moves only with t.advance.
*/
#include "ltest.h"

#include "engine.h"
#include "fs.h"
#include "lhost.h"
#include "ljson.h"
#include "lplugin.h"
#include "lworkflow.h"
#include "sandbox.h"

#include <lauxlib.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_T0           1767603600000LL /* 2026-01-05T09:00:00Z, a Monday morning */
#define TEST_INSTRUCTIONS 2000000000ULL
#define TEST_FILES_MAX    32

typedef struct tctx {
    cm_sandbox *sb;
    cm_lua_runtime *rt;
    cm_lua_host host;
    char dir[1024];  /* private temp dir for the per-test stores */
    char base[1024]; /* the test file's directory: relative paths start here */
    char *files[TEST_FILES_MAX];
    int nfiles;
    int seq;          /* tests run so far (names the store files) */
    int max_attempts; /* the engine's, as a node's engine.max_attempts; 0: its default */
    /* the current test's world; NULL between tests */
    cm_clock *clock;
    cm_store *store;
    cm_model *model;
    cm_engine *engine;
    cm_test_counts *counts;
    cm_plugin_host *plugins; /* borrowed, may be NULL */
} tctx;

static const char CTX_KEY = 't';

static tctx *get_ctx(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &CTX_KEY);
    tctx *t = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return t;
}

static tctx *need_world(lua_State *L)
{
    tctx *t = get_ctx(L);
    if (!t->engine)
        luaL_error(L, "caremesh.test: only inside t.test(name, function() ... end)");
    return t;
}

static int raise_err(lua_State *L, const cm_err *err)
{
    return cm_lua_raise(L, err);
}

/* ---- the world of one test -------------------------------------------- */

/* Close the test's world: 0, or the store's close's error (err). */
static int world_close(tctx *t, cm_err *err)
{
    char path[1100];
    cm_engine_destroy(&t->engine);
    if (t->plugins)
        cm_plugin_host_set_model(t->plugins, NULL);
    cm_model_destroy(&t->model);
    int rc = cm_store_close_v2(&t->store, err);
    cm_clock_destroy(&t->clock);
    t->host.store = NULL;
    t->host.model = NULL;
    t->host.clock = NULL;
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/test-%d.db%s", t->dir, t->seq, suffix[i]);
        unlink(path);
    }
    return rc;
}

static int world_open(tctx *t, cm_err *err)
{
    cm_store_opts so;
    cm_engine_opts eo;
    char path[1100];
    int rc;
    t->seq++;
    snprintf(path, sizeof(path), "%s/test-%d.db", t->dir, t->seq);
    cm_store_opts_init(&so);
    so.path = path;
    so.create = true;
    so.synchronous = CM_SYNC_OFF; /* a throwaway store: durability is not under test here */
    if (!(t->clock = cm_clock_new_virtual(TEST_T0)))
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    if ((rc = cm_store_open(&t->store, &so, err)) != 0)
        return rc;
    if (!(t->model = cm_model_new(t->store, t->clock)))
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    memset(&eo, 0, sizeof(eo));
    eo.store = t->store;
    eo.model = t->model;
    eo.clock = t->clock;
    eo.runtime = cm_lua_runtime_seam(t->rt);
    eo.retry_base_ms = 60 * 1000;
    eo.max_attempts = t->max_attempts;
    if (!(t->engine = cm_engine_new(&eo, err)))
        return err->code;
    t->host.store = t->store;
    t->host.model = t->model;
    t->host.clock = t->clock;
    if (t->plugins) {
        cm_plugin_host_set_model(t->plugins, t->model);
        cm_engine_observe(t->engine, cm_plugin_host_on_engine_event, t->plugins);
    }
    for (int i = 0; i < t->nfiles; i++)
        if ((rc = cm_engine_load_file(t->engine, t->files[i], NULL, NULL, err)) != 0)
            return rc;
    return 0;
}

/* ---- t.load / t.test -------------------------------------------------- */

static int t_load(lua_State *L)
{
    tctx *t = get_ctx(L);
    const char *rel = luaL_checkstring(L, 1);
    char path[2048];
    if (rel[0] == '/' || access(rel, R_OK) == 0)
        snprintf(path, sizeof(path), "%s", rel);
    else
        snprintf(path, sizeof(path), "%s/%s", t->base, rel);
    if (access(path, R_OK) != 0)
        return luaL_error(L, "t.load: cannot read %s", rel);
    if (t->nfiles >= TEST_FILES_MAX)
        return luaL_error(L, "t.load: at most %d workflow files", TEST_FILES_MAX);
    char *copy = strdup(path);
    if (!copy)
        return luaL_error(L, "out of memory");
    t->files[t->nfiles++] = copy;
    /* modules shared by workflows live beside them */
    char dir[2048];
    cm_err derr;
    snprintf(dir, sizeof(dir), "%s", path);
    if (cm_sandbox_add_module_dir(t->sb, dirname(dir), &derr) != 0)
        return raise_err(L, &derr);
    if (t->engine) {
        cm_err err;
        if (cm_engine_load_file(t->engine, path, NULL, NULL, &err) != 0)
            return raise_err(L, &err);
    }
    return 0;
}

static int traceback(lua_State *L)
{
    luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
    return 1;
}

static int t_test(lua_State *L)
{
    tctx *t = get_ctx(L);
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    cm_err err;
    if (t->engine)
        return luaL_error(L, "t.test: tests do not nest (\"%s\")", name);
    const char *why = NULL;
    if (world_open(t, &err) == 0) {
        lua_pushcfunction(L, traceback);
        lua_pushvalue(L, 2);
        if (lua_pcall(L, 0, 0, -2) != LUA_OK)
            why = lua_tostring(L, -1); /* stack: name, fn, traceback */
    } else {
        why = err.msg;
    }
    cm_err cerr;
    if (world_close(t, &cerr) != 0 && !why)
        why = cerr.msg; /* the test left the store's statements unfinished */
    if (why) {
        printf("FAIL - %s: %s\n", name, why);
        t->counts->failed++;
    } else {
        printf("ok - %s\n", name);
        t->counts->passed++;
    }
    lua_settop(L, 2);
    fflush(stdout);
    return 0;
}

/* ---- driving the engine ----------------------------------------------- */

typedef struct ack_box {
    int status;
    bool kept;
    char instance[CM_NAME_MAX];
    char state[CM_NAME_MAX];
    char message[CM_ERR_MSG_MAX];
    char result[16]; /* messages: received | duplicate | refused */
    bool told;
} ack_box;

static void on_ack(void *ud, const cm_ack *a)
{
    ack_box *b = ud;
    b->told = true;
    b->status = a->status;
    b->kept = a->kept;
    snprintf(b->instance, sizeof(b->instance), "%s", a->instance ? a->instance : "");
    snprintf(b->state, sizeof(b->state), "%s", a->state ? a->state : "");
    snprintf(b->message, sizeof(b->message), "%s", a->message ? a->message : "");
    snprintf(b->result, sizeof(b->result), "%s", a->result ? a->result : "");
}

/* Convert optional table argument arg to JSON, kept in a box on top of the
** stack so an error cannot leak it. Call with a fixed stack (lua_settop). */
static cJSON *opt_json(lua_State *L, int arg, const char *what)
{
    cm_err err;
    if (lua_isnil(L, arg))
        return NULL;
    luaL_checktype(L, arg, LUA_TTABLE);
    cJSON **box = cm_ljson_box(L);
    if (cm_ljson_from_lua(L, arg, what, box, &err) != 0)
        raise_err(L, &err);
    return *box;
}

static void drop_json(lua_State *L, cJSON *doc)
{
    if (!doc)
        return;
    cJSON **box = lua_touserdata(L, -1); /* the box opt_json pushed */
    cJSON_Delete(doc);
    *box = NULL;
}

static int run_engine(lua_State *L, tctx *t)
{
    cm_err err;
    if (cm_engine_run(t->engine, NULL, &err) != 0)
        return raise_err(L, &err);
    return 0;
}

/* Push the outcome of one submission: state (or id, state for starts) or nil, message, kept. */
static int push_ack(lua_State *L, const ack_box *b, bool start)
{
    if (!b->told)
        return luaL_error(L, "caremesh.test: the engine did not answer");
    if (b->status != 0) {
        lua_pushnil(L);
        lua_pushstring(L, b->message);
        lua_pushboolean(L, b->kept);
        return 3;
    }
    if (start)
        lua_pushstring(L, b->instance);
    lua_pushstring(L, b->state);
    return start ? 2 : 1;
}

/* t.start(workflow, input [, id]) -> id, state | nil, message */
static int t_start(lua_State *L)
{
    tctx *t = need_world(L);
    lua_settop(L, 3);
    const char *workflow = luaL_checkstring(L, 1);
    const char *id = luaL_optstring(L, 3, NULL);
    ack_box b = {0};
    cm_err err;
    cJSON *input = opt_json(L, 2, "input");
    int rc = cm_engine_start(t->engine, workflow, input, id, on_ack, &b, &err);
    drop_json(L, input);
    if (rc != 0)
        return raise_err(L, &err);
    run_engine(L, t);
    return push_ack(L, &b, true);
}

/* t.signal(id, event [, payload]) -> state | nil, message, kept */
static int t_signal(lua_State *L)
{
    tctx *t = need_world(L);
    lua_settop(L, 3);
    const char *id = luaL_checkstring(L, 1), *event = luaL_checkstring(L, 2);
    ack_box b = {0};
    cm_err err;
    cJSON *payload = opt_json(L, 3, "payload");
    int rc = cm_engine_signal(t->engine, id, event, payload, on_ack, &b, &err);
    drop_json(L, payload);
    if (rc != 0)
        return raise_err(L, &err);
    run_engine(L, t);
    return push_ack(L, &b, false);
}

static const char *jfield(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* t.receive { peer =, id =, kind =, from =, to =, purpose =, patient =,
** classes = {}, patient_record = {}, instance =, reply_to =, payload = {} }
** -> result ("received" | "duplicate" | "refused"), instance, reason: a
** message from a partner node, as federation hands it to the engine. */
static int t_receive(lua_State *L)
{
    tctx *t = need_world(L);
    lua_settop(L, 1);
    luaL_checktype(L, 1, LUA_TTABLE);
    ack_box b = {0};
    cm_err err;
    cJSON *m = opt_json(L, 1, "message");
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(m, "payload");
    cm_engine_msg em = {.peer = jfield(m, "peer"),
                        .id = jfield(m, "id"),
                        .kind = jfield(m, "kind"),
                        .from = jfield(m, "from"),
                        .to = jfield(m, "to"),
                        .purpose = jfield(m, "purpose"),
                        .classes = cJSON_GetObjectItemCaseSensitive(m, "classes"),
                        .patient = jfield(m, "patient"),
                        .record = cJSON_GetObjectItemCaseSensitive(m, "patient_record"),
                        .instance = jfield(m, "instance"),
                        .reply_to = jfield(m, "reply_to"),
                        .payload = cJSON_IsObject(payload) ? payload : NULL};
    int rc = cm_engine_receive(t->engine, &em, on_ack, &b, &err);
    if (rc != 0)
        return raise_err(L, &err);
    run_engine(L, t);
    if (!b.told)
        return luaL_error(L, "caremesh.test: the engine did not answer");
    if (b.status != 0)
        return luaL_error(L, "caremesh.test: receive failed: %s", b.message);
    lua_pushstring(L, b.result);
    if (b.instance[0])
        lua_pushstring(L, b.instance);
    else
        lua_pushnil(L);
    if (b.message[0])
        lua_pushstring(L, b.message);
    else
        lua_pushnil(L);
    return 3;
}

/* t.advance("21d"): move the clock, fire what fell due, in order. */
static int t_advance(lua_State *L)
{
    tctx *t = need_world(L);
    int64_t ms, target;
    if (!cm_duration_parse(luaL_checkstring(L, 1), &ms))
        return luaL_argerror(L, 1, "bad duration (use e.g. \"30m\", \"72h\", \"21d\")");
    target = cm_clock_now_ms(t->clock) + ms;
    /* step through each due time so timers fire at their own instants */
    for (;;) {
        int64_t next = cm_engine_next_due(t->engine), now = cm_clock_now_ms(t->clock);
        if (next > target)
            break;
        if (next > now)
            cm_clock_advance(t->clock, next - now);
        run_engine(L, t);
        if (cm_engine_next_due(t->engine) == next && next <= now)
            break; /* nothing moved: the rest is parked or waits on something else */
    }
    cm_clock_advance(t->clock, target - cm_clock_now_ms(t->clock));
    run_engine(L, t);
    return 0;
}

static int t_now(lua_State *L)
{
    tctx *t = need_world(L);
    char buf[CM_TIME_BUFSZ];
    cm_time_format(cm_clock_now_ms(t->clock), buf, sizeof(buf));
    lua_pushstring(L, buf);
    return 1;
}

/* Push a JSON result held in a box, then free it. */
static int push_boxed(lua_State *L, cJSON **box)
{
    cm_ljson_push(L, *box);
    cJSON_Delete(*box);
    *box = NULL;
    return 1;
}

static int t_instance(lua_State *L)
{
    tctx *t = need_world(L);
    cm_err err;
    cJSON **box = cm_ljson_box(L);
    if (cm_engine_get(t->engine, luaL_checkstring(L, 1), box, &err) != 0)
        return raise_err(L, &err);
    return push_boxed(L, box);
}

static int t_state(lua_State *L)
{
    t_instance(L);
    lua_getfield(L, -1, "state");
    lua_getfield(L, -2, "status");
    return 2;
}

static int t_failed(lua_State *L)
{
    tctx *t = need_world(L);
    cm_err err;
    cJSON **box = cm_ljson_box(L);
    if (cm_engine_failed(t->engine, box, &err) != 0)
        return raise_err(L, &err);
    return push_boxed(L, box);
}

/* Rows of an effects table as a list of tables (upvalue 1: the query). */
static int t_rows(lua_State *L)
{
    tctx *t = need_world(L);
    sqlite3_stmt *st;
    const char *sql = lua_tostring(L, lua_upvalueindex(1));
    if (sqlite3_prepare_v2(cm_store_db(t->store), sql, -1, &st, NULL) != SQLITE_OK)
        return luaL_error(L, "%s", sqlite3_errmsg(cm_store_db(t->store)));
    lua_newtable(L);
    lua_Integer n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        lua_newtable(L);
        for (int c = 0; c < sqlite3_column_count(st); c++) {
            if (sqlite3_column_type(st, c) == SQLITE_NULL)
                continue;
            if (sqlite3_column_type(st, c) == SQLITE_FLOAT ||
                sqlite3_column_type(st, c) == SQLITE_INTEGER)
                lua_pushnumber(L, sqlite3_column_double(st, c));
            else
                lua_pushstring(L, (const char *)sqlite3_column_text(st, c));
            lua_setfield(L, -2, sqlite3_column_name(st, c));
        }
        lua_rawseti(L, -2, ++n);
    }
    sqlite3_finalize(st);
    return 1;
}

static int t_operator(lua_State *L)
{
    tctx *t = need_world(L);
    const char *op = lua_tostring(L, lua_upvalueindex(1)), *id = luaL_checkstring(L, 1);
    cm_err err;
    int rc = op[0] == 'p'   ? cm_engine_pause(t->engine, id, &err)
             : op[0] == 'r' ? cm_engine_resume(t->engine, id, &err)
                            : cm_engine_cancel(t->engine, id, luaL_optstring(L, 2, NULL), &err);
    if (rc != 0)
        return raise_err(L, &err);
    run_engine(L, t);
    return 0;
}

/* Assertions, in Lua: deep equality with the path of the first difference. */
static const char *ASSERTS =
    "local t = ...\n"
    "local function show(v) return type(v) == 'string' and string.format('%q', v) or tostring(v) "
    "end\n"
    "local function diff(a, b, path)\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then\n"
    "    if a ~= b then return path .. ': got ' .. show(a) .. ', want ' .. show(b) end\n"
    "    return nil\n"
    "  end\n"
    "  for k, v in pairs(b) do local d = diff(a[k], v, path .. '.' .. tostring(k)); if d then "
    "return d end end\n"
    "  for k, v in pairs(a) do if b[k] == nil then return path .. '.' .. tostring(k) .. ': "
    "unexpected ' .. show(v) end end\n"
    "end\n"
    "function t.eq(got, want, what)\n"
    "  local d = diff(got, want, what or 'value')\n"
    "  if d then error(d, 2) end\n"
    "end\n"
    "function t.ok(v, what) if not v then error((what or 'assertion') .. ' failed', 2) end return "
    "v end\n"
    "function t.raises(fn, fragment)\n"
    "  local ok, err = pcall(fn)\n"
    "  if ok then error('expected an error', 2) end\n"
    "  if fragment and not string.find(tostring(err), fragment, 1, true) then\n"
    "    error('error ' .. show(tostring(err)) .. ' lacks ' .. show(fragment), 2)\n"
    "  end\n"
    "  return err\n"
    "end\n"
    "function t.expect_state(id, state, status)\n"
    "  if type(id) ~= 'string' then\n"
    "    error('expect_state: the instance id is ' .. show(id) ..\n"
    "          ' (t.start returns nil and the reason when it refuses)', 2)\n"
    "  end\n"
    "  local s, st = t.state(id)\n"
    "  if s ~= state or (status and st ~= status) then\n"
    "    error(id .. ': in ' .. show(s) .. ' (' .. st .. '), want ' .. show(state) ..\n"
    "          (status and (' (' .. status .. ')') or ''), 2)\n"
    "  end\n"
    "end\n"
    "return t\n";

static const luaL_Reg test_funcs[] = {
    {"load", t_load},         {"test", t_test},       {"start", t_start},
    {"signal", t_signal},     {"advance", t_advance}, {"now", t_now},
    {"instance", t_instance}, {"state", t_state},     {"failed", t_failed},
    {"receive", t_receive},   {NULL, NULL},
};

static void add_closure(lua_State *L, const char *name, lua_CFunction fn, const char *arg)
{
    lua_pushstring(L, arg);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
}

static int open_test_module(lua_State *L)
{
    lua_newtable(L);
    luaL_setfuncs(L, test_funcs, 0);
    add_closure(L, "kpis", t_rows,
                "SELECT name, value, labels, instance, workflow, at FROM kpi_observation "
                "ORDER BY seq");
    add_closure(L, "notifications", t_rows,
                "SELECT channel, recipient AS \"to\", message, data, instance FROM notification "
                "ORDER BY seq");
    add_closure(L, "sent", t_rows,
                "SELECT receiver AS \"to\", kind, payload, instance, sender AS \"from\", "
                "purpose, classes, patient, record, reply_to FROM outbox WHERE status <> 'refused' "
                "ORDER BY seq");
    add_closure(L, "audit", t_rows,
                "SELECT actor, action, patient, classes, purpose, outcome, detail FROM audit "
                "ORDER BY seq");
    add_closure(L, "refused_sends", t_rows,
                "SELECT receiver AS \"to\", kind, instance, sender AS \"from\", purpose, "
                "patient, reason FROM outbox WHERE status = 'refused' ORDER BY seq");
    add_closure(L, "pause", t_operator, "pause");
    add_closure(L, "resume", t_operator, "resume");
    add_closure(L, "cancel", t_operator, "cancel");
    /* stack: t */
    if (luaL_loadbufferx(L, ASSERTS, strlen(ASSERTS), "=caremesh.test", "t") != LUA_OK)
        return lua_error(L);
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
    return 1;
}

/* ---- running a file --------------------------------------------------- */

int cm_lua_test_file(const char *path, cm_plugin_host *plugins, int max_attempts,
                     cm_test_counts *counts, cm_err *err)
{
    cm_sandbox_limits limits = {TEST_INSTRUCTIONS, 0};
    tctx t;
    int rc;
    char copy[1024];
    cm_err cerr;
    memset(&t, 0, sizeof(t));
    t.counts = counts;
    t.plugins = plugins;
    t.max_attempts = max_attempts;
    t.host.node_id = "test-node";
    snprintf(copy, sizeof(copy), "%s", path);
    snprintf(t.base, sizeof(t.base), "%s", dirname(copy));
    const char *tmp = getenv("TMPDIR");
    snprintf(t.dir, sizeof(t.dir), "%s/caremesh-wftest-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(t.dir))
        return cm_err_set(err, CM_EIO, "cannot make a temporary directory: %s", t.dir);
    if (!(t.sb = cm_sandbox_new(&limits, err))) {
        rc = err->code;
        goto done;
    }
    lua_State *L = cm_sandbox_state(t.sb);
    if ((rc = cm_lua_host_set(L, &t.host, err)) != 0)
        goto done;
    lua_pushlightuserdata(L, &t);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CTX_KEY);
    cm_sandbox_preload(t.sb, "caremesh", cm_lua_open_caremesh);
    if ((rc = cm_sandbox_add_module_dir(t.sb, t.base, err)) != 0) /* the tests' own helpers */
        goto done;
    cm_sandbox_preload(t.sb, "caremesh.test", open_test_module);
    if (plugins && (rc = cm_lua_plugins_attach(t.sb, plugins, err)) != 0)
        goto done;
    if (!(t.rt = cm_lua_runtime_new(t.sb, err))) {
        rc = err->code;
        goto done;
    }
    rc = cm_sandbox_dofile(t.sb, path, 0, err);
    if (rc != 0) {
        counts->failed++;
        printf("FAIL - %s: %s\n", path, err->msg);
        rc = cm_err_recode(err, CM_ELUA);
    }
done:
    if (world_close(&t, &cerr) != 0 && rc == 0) {
        counts->failed++;
        printf("FAIL - %s: %s\n", path, cerr.msg);
        rc = cm_err_set(err, cerr.code, "%s", cerr.msg);
    }
    cm_lua_runtime_destroy(&t.rt);
    cm_sandbox_destroy(&t.sb);
    for (int i = 0; i < t.nfiles; i++)
        free(t.files[i]);
    rmdir(t.dir);
    return rc;
}
