/*
** test_lplugin.c -- plugin functions in Lua (register_lua): require of a
** plugin module, arguments and results through JSON, errors as
** "MODULE.NAME: message" at the caller's line, read-only modules, a module
** name another plugin holds, reload, and record writes inside the caller's
** transaction (a workflow step). Lua plugins (tests/plugins/lua_*): every
** hook, channel outcomes, refusals naming file:line, the budget, and the
** shipped phone_tasks plugin.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>

#include "audit.h"
#include "engine.h"
#include "lhost.h"
#include "lplugin.h"
#include "lworkflow.h"
#include "plugin.h"
#include "sandbox.h"
#include "node.h"

#define PLUGIN(name) CM_TEST_PLUGIN_DIR "/" name ".so"
#define LUA_PLUGINS  CM_TEST_SOURCE_DIR "/plugins"

typedef struct fx {
    cm_test_node *n;
    cm_plugin_host *host;
    cm_sandbox *sb;
    cm_lua_host lh;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    cm_err err;
    if (!(f->n = cm_test_node_with_clinic()))
        return -1;
    cm_sandbox_limits limits = {200000, 16 << 20};
    f->host = cm_plugin_host_new(f->n->model, &err);
    cm_plugin_spec spec = {"records", PLUGIN("records"), false, NULL};
    if (!f->host || cm_lua_plugins_enable(f->host, &limits, &err) != 0 ||
        cm_plugin_host_load(f->host, &spec, &err) != 0)
        return -1;
    f->lh =
        (cm_lua_host){f->n->store, f->n->model, f->n->clock, "test-node", NULL, NULL, NULL, NULL};
    if (!(f->sb = cm_sandbox_new(NULL, &err)) ||
        cm_lua_host_set(cm_sandbox_state(f->sb), &f->lh, &err) != 0)
        return -1;
    cm_sandbox_preload(f->sb, "caremesh", cm_lua_open_caremesh);
    *state = f;
    return cm_lua_plugins_attach(f->sb, f->host, &err);
}

static int teardown(void **state)
{
    fx *f = *state;
    cm_sandbox_destroy(&f->sb);
    cm_plugin_host_destroy(&f->host);
    cm_test_node_free(f->n);
    free(f);
    return 0;
}

/* Run code as chunk "=test"; 0 or the error (err filled). */
static int run(fx *f, const char *code, cm_err *err)
{
    int rc = cm_sandbox_load(f->sb, "=test", code, strlen(code), err);
    return rc ? rc : cm_sandbox_pcall(f->sb, 0, 0, err);
}

static void run_ok(fx *f, const char *code)
{
    cm_err err;
    if (run(f, code, &err) != 0)
        fail_msg("%s", err.msg);
}

static void run_fails(fx *f, const char *code, const char *fragment)
{
    cm_err err;
    assert_int_equal(run(f, code, &err), CM_ELUA);
    if (!strstr(err.msg, fragment))
        fail_msg("error '%s' lacks '%s'", err.msg, fragment);
}

static void test_arguments_and_results_cross_as_json(void **state)
{
    fx *f = *state;
    run_ok(f, "local cm = require 'caremesh'\n"
              "local r = require 'records'\n"
              "local a = r.echo(1, 'two', { x = 3, list = { 'a', 'b' } }, nil, true, cm.null)\n"
              "assert(#a == 6, 'six arguments, got ' .. #a)\n"
              "assert(a[1] == 1 and a[2] == 'two' and a[3].x == 3 and a[3].list[2] == 'b')\n"
              "assert(a[4] == cm.null and a[5] == true and a[6] == cm.null)\n"
              "assert(#r.echo() == 0)\n"
              "assert(select('#', r.nothing()) == 0, 'no result, no values')\n");
}

static void test_errors_name_the_function_and_the_caller(void **state)
{
    fx *f = *state;
    run_fails(f, "local r = require 'records'\n\nr.fail('diabetes')",
              "test:3: records.fail: no cohort [\"diabetes\"]");
    run_fails(f, "local r = require 'records'\nr.garbage()",
              "test:2: records.garbage: the plugin's result is not JSON");
    run_fails(f, "local r = require 'records'\nr.huge()",
              "test:2: records.huge: result.n[1]: number out of range "
              "(beyond +-1.7976931348623157e308)");
    run_fails(f, "local r = require 'records'\nr.echo(1, print)", "records.echo: argument #2");
    run_fails(f, "local r = require 'records'\nr.echo = nil", "read-only");
    run_fails(f, "local r = require 'records'\nr.nosuch()", "nosuch");
    run_fails(f, "require 'probe'", "module 'probe' not found");
}

static void test_a_module_belongs_to_one_plugin(void **state)
{
    fx *f = *state;
    cm_plugin_spec spec = {"probe", PLUGIN("probe"), false, NULL};
    cm_err err;
    bool found = false;
    char path[1024], out[2048] = "";
    char *argv[] = {"probe", NULL};
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), 0);
    snprintf(path, sizeof(path), "%s/out.txt", f->n->dir);
    fflush(stdout);
    int saved = dup(1), fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    dup2(fd, 1);
    cm_plugin_host_command(f->host, 1, argv, &found);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(fd);
    FILE *in = fopen(path, "r");
    out[fread(out, 1, sizeof(out) - 1, in)] = '\0';
    fclose(in);
    assert_true(found);
    assert_non_null(strstr(out, "records_module=-1")); /* refused: records has it */
    run_fails(f, "require 'records'.clash()", "clash");
}

static void test_unloaded_functions_fail_and_a_reload_brings_them_back(void **state)
{
    fx *f = *state;
    cm_err err;
    cJSON *list =
        cJSON_Parse("[{\"name\":\"records\",\"path\":\"" CM_TEST_PLUGIN_DIR "/records.so\"}]");
    run_ok(f, "local r = require 'records'; assert(r.echo(1)[1] == 1)");
    cm_plugin_host_unload_all(f->host);
    run_fails(f, "require 'records'.echo(1)", "records.echo: no loaded plugin has this function");
    assert_int_equal(cm_plugin_host_load_each(f->host, list), 0);
    assert_int_equal(cm_lua_plugins_attach(f->sb, f->host, &err), 0);
    run_ok(f, "assert(require 'records'.echo(2)[1] == 2)");
    cJSON_Delete(list);
}

static long count(fx *f, const char *sql)
{
    return cm_test_count(f->n->store, sql);
}

#define PUT_PAT1                                                                                   \
    "require 'records'.put('patient', { id = 'pat-1', name = { family = 'Ngata' }, "               \
    "birthDate = '1971-04-02', gender = 'female' })"

static void test_writes_join_the_callers_transaction(void **state)
{
    fx *f = *state;
    cm_err err;
    /* a workflow step: the engine's transaction; the step fails, nothing stays */
    assert_int_equal(cm_store_begin(f->n->store, &err), 0);
    run_ok(f, PUT_PAT1);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE id = 'pat-1'"), 1);
    run_fails(f,
              "require 'records'.put('patient', { id = 'pat-2', name = { family = 'X' }, "
              "birthDate = 'soon', gender = 'male' })",
              "records.put: patient.birthDate:");
    cm_store_rollback(f->n->store);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE kind = 'patient'"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 0);
    /* on its own it commits, audited; a find reads it back, audited */
    run_ok(f, PUT_PAT1);
    assert_false(cm_store_in_tx(f->n->store));
    run_ok(f, "local found = require 'records'.find('patient', { gender = 'female' })\n"
              "assert(#found == 1 and found[1].id == 'pat-1')");
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE actor = 'plugin:records' AND "
                              "patient = 'pat-1'"),
                     2);
}

/* The status an engine call acknowledged. */
static void on_ack(void *ud, const cm_ack *ack)
{
    int *status = ud;
    *status = ack->status;
}

static void signal_and_run(cm_engine *e, const char *event, int expect)
{
    cm_err err;
    int status = -1;
    assert_int_equal(cm_engine_signal(e, "pl-1", event, NULL, on_ack, &status, &err), 0);
    if (cm_engine_run(e, NULL, &err) != 0)
        fail_msg("run: %s", err.msg);
    assert_int_equal(status, expect);
}

/* A handler calls a plugin that reads a patient, then raises: the step's
** rollback takes the plugin's read entries (written in the step's
** savepoint) with it, but the plugin saw the record; the engine writes
** each again once, outcome "error", whether the plugin read outside a
** transaction of its own, in one it committed (a savepoint in the step's)
** or in one it rolled back (whose reads it writes again itself). */
static const char *PLUGGED =
    "local cm = require 'caremesh'\n"
    "local r = require 'records'\n"
    "local female = { gender = 'female' }\n"
    "return cm.workflow { name = 'plugged', version = 1, start = 'a', states = {\n"
    "  a = { on = {\n"
    "    find = function(wf) error('read ' .. r.find('patient', female)[1].id) end,\n"
    "    kept = function(wf) r.txfind('patient', female, true); error('after a commit') end,\n"
    "    undone = function(wf) r.txfind('patient', female, false); error('after a rollback') end,\n"
    "    ok = function(wf) wf.ctx.n = #r.find('patient', female) end, done = 'z' } },\n"
    "  z = { final = true } } }\n";

static void test_a_failed_steps_plugin_reads_are_audited_again_once(void **state)
{
    fx *f = *state;
    cm_err err;
    cm_engine_opts eo = {0};
    cm_lua_runtime *rt = cm_lua_runtime_new(f->sb, &err);
    int status = -1;
    long entries = 0;
    run_ok(f, PUT_PAT1); /* seq 1: the plugin's write */
    assert_non_null(rt);
    eo.store = f->n->store;
    eo.model = f->n->model;
    eo.clock = f->n->clock;
    eo.runtime = cm_lua_runtime_seam(rt);
    eo.max_attempts = 1;
    eo.retry_base_ms = 1000;
    eo.batch_max = 16;
    eo.batch_ms = -1;
    cm_engine *e = cm_engine_new(&eo, &err);
    assert_non_null(e);
    const char *path = cm_test_path(f->n->dir, "plugged.lua");
    cm_test_write(path, PLUGGED, strlen(PLUGGED));
    if (cm_engine_load_file(e, path, NULL, NULL, &err) != 0)
        fail_msg("load: %s", err.msg);
    assert_int_equal(cm_engine_start(e, "plugged", NULL, "pl-1", on_ack, &status, &err), 0);
    assert_int_equal(cm_engine_run(e, NULL, &err), 0);
    assert_int_equal(status, 0);
    signal_and_run(e, "find", CM_ELUA);
    signal_and_run(e, "kept", CM_ELUA);
    signal_and_run(e, "undone", CM_ELUA);
    signal_and_run(e, "ok", 0);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE error LIKE '%read pat-1%'"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 5);
    assert_int_equal(
        count(f, "SELECT count(*) FROM audit WHERE seq IN (2, 3, 4) AND "
                 "actor = 'plugin:records' AND action = 'patient.read' AND patient = 'pat-1' "
                 "AND outcome = 'error' AND detail = 'patient pat-1 (rolled back: the step "
                 "failed)'"),
        3);
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE seq = 5 AND "
                              "action = 'patient.read' AND outcome = 'ok'"),
                     1);
    assert_int_equal(cm_audit_verify(f->n->store, &entries, &err), 0);
    assert_int_equal(entries, 5);
    cm_engine_destroy(&e);
    cm_lua_runtime_destroy(&rt);
}

/* ---- Lua plugins ---- */

static void load_lua(fx *f, const char *name, const char *path, const char *config)
{
    cJSON *cfg = config ? cJSON_Parse(config) : NULL;
    cm_plugin_spec spec = {name, path, false, cfg};
    cm_err err;
    int rc = cm_plugin_host_load(f->host, &spec, &err);
    cJSON_Delete(cfg);
    if (rc != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(cm_lua_plugins_attach(f->sb, f->host, &err), 0);
}

static void test_a_lua_plugin_hears_events_and_serves_workflows(void **state)
{
    fx *f = *state;
    load_lua(f, "luaprobe", LUA_PLUGINS "/lua_probe", "{\"greeting\":\"kia ora\"}");
    cm_engine_event ev = {
        CM_ENGINE_STATE_CHANGED, "ref-1", "referral", "requested", "accepted", ""};
    cm_plugin_host_on_engine_event(f->host, &ev);
    ev = (cm_engine_event){CM_ENGINE_ENDED, "ref-1", "referral", "", "closed", "done"};
    cm_plugin_host_on_engine_event(f->host, &ev);
    cm_plugin_host_on_message(f->host, "cardio-node", "cardio-node:7", "referral.accepted",
                              "clinic-a");
    run_ok(f, "local p = require 'luaprobe'\n"
              "local seen = table.concat(p.seen(), ' ')\n"
              "assert(seen == 'state_changed:ref-1:requested>accepted instance_ended:ref-1:>closed "
              "message_received:cardio-node:7:cardio-node>clinic-a', seen)\n"
              "assert(p.add(2, 3) == 5)\n");
    run_fails(f, "require 'luaprobe'.add(2)", "luaprobe.add: ");
    run_fails(f, "require 'luaprobe'.add(2)", "helper.lua:3:");
    run_fails(f, "require 'luaprobe'.late()", "plugin.on: only while init.lua runs");
    /* its records: audited as the plugin */
    run_ok(f, "local p = require 'luaprobe'\n"
              "assert(p.put('patient', { id = 'pat-1', name = { family = 'Ngata' },\n"
              "                          birthDate = '1971-04-02', gender = 'female' }))\n"
              "assert(p.family('pat-1') == 'Ngata')\n"
              "assert(#p.find('patient', { gender = 'female' }, { limit = 5 }) == 1)\n"
              "assert(#p.instances() == 0)\n");
    run_fails(f, "require 'luaprobe'.family('nobody')", "luaprobe.family: patient \"nobody\"");
    run_fails(f, "require 'luaprobe'.find('patient', { colour = 'red' })", "colour");
    run_fails(f, "require 'luaprobe'.instances({ status = 'asleep' })", "filter.status");
    run_fails(f,
              "require 'luaprobe'.put('patient', { id = 'pat-2', name = { family = 'X' },\n"
              "  birthDate = 'soon', gender = 'male' })",
              "patient.birthDate:");
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE actor = 'plugin:luaprobe' AND "
                              "patient = 'pat-1'"),
                     3); /* the write, the get, the find */
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE id = 'pat-2'"), 0);
}

static void test_a_lua_channel_delivers_refuses_raises_and_is_stopped(void **state)
{
    fx *f = *state;
    cm_err err;
    int sent = -1;
    load_lua(f, "luaprobe", LUA_PLUGINS "/lua_probe", NULL);
    assert_int_equal(
        cm_store_exec(f->n->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) VALUES"
                      " ('pager', 'dr-1', 'bed 4', '{}', 'x'),"
                      " ('pager', 'dr-2', 'bed 5', '{\"fail\":true}', 'x'),"
                      " ('pager', 'dr-3', 'bed 6', '{\"raise\":true}', 'x'),"
                      " ('pager', 'dr-4', 'bed 7', '{\"spin\":true}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 1);
    assert_int_equal(count(f, "SELECT count(*) FROM notification WHERE status = 'sent' AND "
                              "recipient = 'dr-1'"),
                     1);
    assert_int_equal(count(f,
                           "SELECT count(*) FROM notification WHERE status = 'pending' AND "
                           "attempts = 1 AND ((recipient = 'dr-2' AND error = 'pager offline') "
                           "OR (recipient = 'dr-3' AND error LIKE '%init.lua:21: pager exploded')"
                           " OR (recipient = 'dr-4' AND error LIKE '%instruction budget%'))"),
                     3);
    run_ok(f, "local seen = require 'luaprobe'.seen()\n"
              "assert(seen[#seen] == 'paged:1:dr-1:bed 4', seen[#seen])\n");
}

static void expect_lua_refused(fx *f, const char *name, const char *path, const char *fragment)
{
    cm_plugin_spec spec = {name, path, false, NULL};
    cm_err err;
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), CM_EINVAL);
    if (!strstr(err.msg, fragment))
        fail_msg("'%s' lacks '%s'", err.msg, fragment);
    assert_non_null(strstr(err.msg, name));
}

static void test_failing_lua_plugins_are_refused_naming_file_and_line(void **state)
{
    fx *f = *state;
    cm_err err;
    int loaded = -1;
    expect_lua_refused(f, "luabad", LUA_PLUGINS "/lua_bad", "lua_bad/init.lua:4: attempt to index");
    expect_lua_refused(f, "luaspin", LUA_PLUGINS "/lua_spin.lua", "instruction budget of 200000");
    expect_lua_refused(f, "luaempty", LUA_PLUGINS "/lua_empty", "lua_empty/init.lua");
    expect_lua_refused(f, "phone_tasks", CM_TEST_SOURCE_DIR "/../plugins/phone_tasks",
                       "phone_tasks/init.lua:20: config.organization: required");
    /* nothing of them stayed: no channel, no module */
    run_fails(f, "require 'luaprobe'", "module 'luaprobe' not found");
    cJSON *list = cJSON_Parse("[{\"name\":\"luabad\",\"path\":\"" LUA_PLUGINS "/lua_bad\","
                              "\"optional\":true},"
                              "{\"name\":\"luaprobe\",\"path\":\"" LUA_PLUGINS "/lua_probe\"}]");
    assert_int_equal(cm_plugin_host_load_list(f->host, list, &loaded, &err), 0);
    assert_int_equal(loaded, 1);
    cJSON_Delete(list);
}

static void test_phone_tasks_turns_notifications_into_calls_once(void **state)
{
    fx *f = *state;
    cm_err err;
    int sent = -1;
    load_lua(f, "phone_tasks", CM_TEST_SOURCE_DIR "/../plugins/phone_tasks",
             "{\"organization\":\"clinic-a\"}");
    run_ok(f, "require 'records'.put('patient', { id = 'pat-1', name = { family = 'Ngata' },\n"
              "  birthDate = '1971-04-02', gender = 'female' })");
    assert_int_equal(
        cm_store_exec(f->n->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) VALUES"
                      " ('phone', 'pat-1', 'Your referral is booked: 3 May, 10:00', "
                      "'{\"priority\":\"urgent\"}', 'x'),"
                      " ('phone', 'dr-osei', 'Please call the clinic about pat-1', '{}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 2);
    run_ok(f, "local cm = require 'caremesh'\n"
              "local t = cm.task.get('call-1')\n"
              "assert(t.patient == 'pat-1' and t.ownerRole == 'care_coordinator')\n"
              "assert(t.priority == 'urgent' and t.organization == 'clinic-a')\n"
              "assert(t.description == 'Your referral is booked: 3 May, 10:00')\n"
              "local t2 = cm.task.get('call-2')\n"
              "assert(t2.patient == nil and t2.title == 'Call dr-osei', t2.title)\n"
              "assert(require 'phone_tasks'.waiting('pat-1') == 1)\n");
    /* delivered again (the host could not record the success): still one task, untouched */
    assert_int_equal(cm_store_exec(f->n->store,
                                   "UPDATE notification SET status = 'pending' WHERE seq = 1",
                                   &err),
                     0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 1);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE kind = 'task'"), 2);
    assert_int_equal(count(f, "SELECT max(version) FROM record WHERE id = 'call-1'"), 1);
    run_fails(f, "require 'phone_tasks'.waiting(7)",
              "phone_tasks.waiting: a patient id is required");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_arguments_and_results_cross_as_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_name_the_function_and_the_caller, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_module_belongs_to_one_plugin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unloaded_functions_fail_and_a_reload_brings_them_back,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_writes_join_the_callers_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_failed_steps_plugin_reads_are_audited_again_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_lua_plugin_hears_events_and_serves_workflows, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_lua_channel_delivers_refuses_raises_and_is_stopped,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_lua_plugins_are_refused_naming_file_and_line,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_phone_tasks_turns_notifications_into_calls_once, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
