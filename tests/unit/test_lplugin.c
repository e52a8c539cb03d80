/*
** test_lplugin.c -- plugin functions in Lua (register_lua): require of a
** plugin module, arguments and results through JSON, errors as
** "MODULE.NAME: message" at the caller's line, read-only modules, a module
** name another plugin holds, reload, and record writes inside the caller's
** transaction (a workflow step).
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>

#include "lhost.h"
#include "lplugin.h"
#include "plugin.h"
#include "sandbox.h"
#include "support.h"

#define PLUGIN(name) CM_TEST_PLUGIN_DIR "/" name ".so"

typedef struct fx {
    char *dir;
    cm_store *store;
    cm_clock *clock;
    cm_model *model;
    cm_plugin_host *host;
    cm_sandbox *sb;
    cm_lua_host lh;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    cm_store_opts so;
    cm_err err;
    f->dir = cm_test_tmpdir();
    cm_store_opts_init(&so);
    so.path = cm_test_path(f->dir, "caremesh.db");
    so.create = true;
    if (cm_store_open(&f->store, &so, &err) != 0)
        return -1;
    f->clock = cm_clock_new_virtual(1767603600000LL);
    f->model = cm_model_new(f->store, f->clock);
    f->host = cm_plugin_host_new(f->model, &err);
    cm_plugin_spec spec = {"records", PLUGIN("records"), false, NULL};
    if (!f->host || cm_plugin_host_load(f->host, &spec, &err) != 0)
        return -1;
    f->lh = (cm_lua_host){f->store, f->model, f->clock, "test-node"};
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
    cm_model_destroy(&f->model);
    cm_store_close(&f->store);
    cm_clock_destroy(&f->clock);
    cm_test_rmtree(f->dir);
    free(f->dir);
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
    snprintf(path, sizeof(path), "%s/out.txt", f->dir);
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
    sqlite3_stmt *st;
    long n = -1;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(f->store), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

#define PUT_PAT1                                                                                   \
    "require 'records'.put('patient', { id = 'pat-1', name = { family = 'Ngata' }, "               \
    "birthDate = '1971-04-02', gender = 'female' })"

static void test_writes_join_the_callers_transaction(void **state)
{
    fx *f = *state;
    cm_err err;
    /* a workflow step: the engine's transaction; the step fails, nothing stays */
    assert_int_equal(cm_store_begin(f->store, &err), 0);
    run_ok(f, PUT_PAT1);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE id = 'pat-1'"), 1);
    run_fails(f,
              "require 'records'.put('patient', { id = 'pat-2', name = { family = 'X' }, "
              "birthDate = 'soon', gender = 'male' })",
              "records.put: patient.birthDate:");
    cm_store_rollback(f->store);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE kind = 'patient'"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 0);
    /* on its own it commits, audited; a find reads it back, audited */
    run_ok(f, PUT_PAT1);
    assert_false(cm_store_in_tx(f->store));
    run_ok(f, "local found = require 'records'.find('patient', { gender = 'female' })\n"
              "assert(#found == 1 and found[1].id == 'pat-1')");
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE actor = 'plugin:records' AND "
                              "patient = 'pat-1'"),
                     2);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
