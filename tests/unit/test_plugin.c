/*
** test_plugin.c -- the plugin host with real shared objects (tests/plugins):
** loading, every refusal (file, symbol, ABI major and minor, failing init,
** name), rollback of a failed init, events, commands, records, unloading.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "plugin.h"
#include "support.h"

#define PLUGIN(name) CM_TEST_PLUGIN_DIR "/" name ".so"

typedef struct fx {
    char *dir;
    cm_store *store;
    cm_clock *clock;
    cm_model *model;
    cm_plugin_host *host;
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
    cJSON *org = cJSON_Parse("{\"id\":\"clinic-a\",\"name\":\"Clinic A\",\"kind\":\"clinic\"}");
    cm_model_create(f->model, CM_KIND_ORGANIZATION, org, NULL, &err);
    cJSON_Delete(org);
    f->host = cm_plugin_host_new(f->model, &err);
    *state = f;
    return f->host ? 0 : -1;
}

static int teardown(void **state)
{
    fx *f = *state;
    cm_plugin_host_destroy(&f->host);
    cm_model_destroy(&f->model);
    cm_store_close(&f->store);
    cm_clock_destroy(&f->clock);
    cm_test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Run plugin command argv, capturing what it prints. Returns its exit code. */
static int run_command(fx *f, int argc, char **argv, char *out, size_t outsz, bool *found)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/out.txt", f->dir);
    fflush(stdout);
    int saved = dup(1), fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    dup2(fd, 1);
    int rc = cm_plugin_host_command(f->host, argc, argv, found);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(fd);
    FILE *in = fopen(path, "r");
    size_t n = in ? fread(out, 1, outsz - 1, in) : 0;
    out[n] = '\0';
    if (in)
        fclose(in);
    return rc;
}

static void expect_refused(fx *f, const char *name, const char *path, int code,
                           const char *fragment)
{
    cm_plugin_spec spec = {name, path, false, NULL};
    cm_err err;
    bool found = true;
    char out[64];
    char *argv[] = {"probe", NULL};
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), code);
    if (!strstr(err.msg, fragment))
        fail_msg("message '%s' lacks '%s'", err.msg, fragment);
    assert_non_null(strstr(err.msg, name)); /* the message names the plugin */
    run_command(f, 1, argv, out, sizeof(out), &found);
    assert_false(found); /* nothing of it stayed */
}

static void test_bad_plugins_are_refused_and_leave_nothing(void **state)
{
    fx *f = *state;
    expect_refused(f, "probe", "/nonexistent/probe.so", CM_ENOTFOUND, "no file at");
    expect_refused(f, "probe", PLUGIN("probe_no_symbol"), CM_EINVAL,
                   "exports no caremesh_plugin descriptor");
    expect_refused(f, "probe", PLUGIN("probe_bad_major"), CM_ECONFIG,
                   "built for plugin ABI 2.0, this caremesh has ABI 1.0");
    expect_refused(f, "probe", PLUGIN("probe_new_minor"), CM_ECONFIG,
                   "newer than this caremesh's 1.0");
    expect_refused(f, "probe", PLUGIN("probe_fail_init"), CM_EINVAL,
                   "init failed: the database it needs is not configured");
    expect_refused(f, "other", PLUGIN("probe"), CM_EINVAL, "the file is plugin \"probe\"");
    expect_refused(f, "bad name!", PLUGIN("probe"), CM_EINVAL, "plugin name");
    char notso[1024];
    snprintf(notso, sizeof(notso), "%s/fake.so", f->dir);
    cm_test_write(notso, "not an ELF file", 15);
    expect_refused(f, "probe", notso, CM_EINVAL, "cannot load");
}

static void test_a_plugin_hears_events_runs_commands_and_reads_records(void **state)
{
    fx *f = *state;
    cJSON *cfg = cJSON_Parse("{\"greeting\":\"kia ora\"}");
    cm_plugin_spec spec = {"probe", PLUGIN("probe"), false, cfg};
    cm_err err;
    bool found = false;
    char out[2048];
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), 0);
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), CM_EEXISTS);
    cm_engine_event ev = {
        CM_ENGINE_STATE_CHANGED, "ref-1", "referral", "requested", "accepted", ""};
    cm_plugin_host_on_engine_event(f->host, &ev);
    ev = (cm_engine_event){CM_ENGINE_ENDED, "ref-1", "referral", "", "closed", "done"};
    cm_plugin_host_on_engine_event(f->host, &ev);
    cm_plugin_host_on_message(f->host, "cardio-node", "cardio-node:7", "referral.accepted",
                              "clinic-a");
    char *argv[] = {"probe", "organization", "clinic-a", NULL};
    assert_int_equal(run_command(f, 3, argv, out, sizeof(out), &found), 0);
    assert_true(found);
    assert_non_null(strstr(out, "events=2:ref-1:requested>accepted;3:ref-1:>closed;"
                                "6:cardio-node:7:cardio-node>clinic-a;"));
    assert_non_null(strstr(out, "config={\"greeting\":\"kia ora\"}"));
    assert_non_null(strstr(out, "\"name\":\"Clinic A\""));
    char *missing[] = {"probe", "patient", "nobody", NULL};
    run_command(f, 3, missing, out, sizeof(out), &found);
    assert_non_null(strstr(out, "record=patient \"nobody\" not found"));
    char *other[] = {"frobnicate", NULL};
    run_command(f, 1, other, out, sizeof(out), &found);
    assert_false(found);
    cJSON_Delete(cfg);
    cm_plugin_host_unload_all(f->host);
    run_command(f, 3, argv, out, sizeof(out), &found);
    assert_false(found);
}

static void test_optional_plugins_do_not_stop_the_rest(void **state)
{
    fx *f = *state;
    char text[1024];
    cm_err err;
    int loaded = -1;
    snprintf(text, sizeof(text),
             "[{\"name\":\"probe\",\"path\":\"%s\",\"optional\":true},"
             "{\"name\":\"template\",\"path\":\"%s\"}]",
             PLUGIN("probe_bad_major"), CM_SHIPPED_PLUGIN_DIR "/template.so");
    cJSON *list = cJSON_Parse(text);
    assert_int_equal(cm_plugin_host_load_list(f->host, list, &loaded, &err), 0);
    assert_int_equal(loaded, 1);
    cJSON_Delete(list);
    snprintf(text, sizeof(text),
             "[{\"name\":\"probe\",\"path\":\"%s\"},{\"name\":\"other\",\"path\":\"%s\"}]",
             PLUGIN("probe_fail_init"), PLUGIN("probe"));
    list = cJSON_Parse(text);
    assert_int_equal(cm_plugin_host_load_list(f->host, list, &loaded, &err), CM_EINVAL);
    assert_int_equal(loaded, 0); /* a required failure stops the list */
    assert_non_null(strstr(err.msg, "init failed"));
    cJSON_Delete(list);
}

static long count_where(fx *f, const char *sql)
{
    sqlite3_stmt *st;
    long n = -1;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(f->store), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void test_notify_spool_writes_durable_files_and_retries(void **state)
{
    fx *f = *state;
    char spool[900], text[1100], file[1200];
    cm_err err;
    int sent = -1;
    snprintf(spool, sizeof(spool), "%s/spool", f->dir);
    snprintf(text, sizeof(text), "{\"dir\":\"%s\",\"channels\":[\"sms\",\"email\"]}", spool);
    cJSON *cfg = cJSON_Parse(text);
    cm_plugin_spec spec = {"notify_spool", CM_SHIPPED_PLUGIN_DIR "/notify_spool.so", false, cfg};
    /* no spool directory yet: init refuses, naming it */
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "is not a writable directory"));
    assert_int_equal(mkdir(spool, 0700), 0);
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), 0);
    assert_int_equal(
        cm_store_exec(f->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) VALUES"
                      " ('sms', 'pat-1', 'Your \"cardiology\" visit: call us', '{\"k\":1}', 'x'),"
                      " ('pager', 'dr-1', 'nobody serves this channel', '{}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->store, f->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 1);
    snprintf(file, sizeof(file), "%s/00000001-sms.json", spool);
    char *json = NULL;
    size_t len = 0;
    FILE *in = fopen(file, "r");
    assert_non_null(in);
    json = calloc(1, 4096);
    len = fread(json, 1, 4095, in);
    fclose(in);
    assert_true(len > 0);
    cJSON *doc = cJSON_Parse(json);
    assert_non_null(doc);
    assert_string_equal(cJSON_GetObjectItem(doc, "message")->valuestring,
                        "Your \"cardiology\" visit: call us");
    assert_string_equal(cJSON_GetObjectItem(doc, "to")->valuestring, "pat-1");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "data"), "k")->valueint, 1);
    cJSON_Delete(doc);
    free(json);
    assert_int_equal(count_where(f, "SELECT count(*) FROM notification WHERE status = 'sent'"), 1);
    /* the channel nobody serves waits, untouched */
    assert_int_equal(count_where(f, "SELECT attempts FROM notification WHERE channel = 'pager'"),
                     0);
    /* the spool goes away: the delivery fails, is kept and retried after a backoff */
    cm_test_rmtree(spool);
    assert_int_equal(
        cm_store_exec(f->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) "
                      "VALUES ('email', 'pat-2', 'Flu shots are here', '{}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->store, f->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 0);
    assert_int_equal(count_where(f, "SELECT attempts FROM notification WHERE channel = 'email' "
                                    "AND status = 'pending' AND error LIKE '%spool%'"),
                     1);
    assert_int_equal(mkdir(spool, 0700), 0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->store, f->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 0); /* not due yet */
    cm_clock_advance(f->clock, 6000);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->store, f->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 1);
    snprintf(file, sizeof(file), "%s/00000003-email.json", spool);
    assert_int_equal(access(file, R_OK), 0);
    /* rows of a channel nobody serves never hold the others up; a row written
    ** around the engine with data that is not JSON is parked, not handed on */
    for (int i = 0; i < 70; i++)
        cm_store_exec(f->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) "
                      "VALUES ('SMS', 'pat-9', 'typo channel', '{}', 'x')",
                      &err);
    assert_int_equal(
        cm_store_exec(f->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) VALUES"
                      " ('sms', 'pat-3', 'bad data', 'not json', 'x'),"
                      " ('sms', 'pat-4', 'after the typos', '{}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->store, f->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 1);
    assert_int_equal(count_where(f, "SELECT count(*) FROM notification WHERE recipient = 'pat-4' "
                                    "AND status = 'sent'"),
                     1);
    assert_int_equal(count_where(f, "SELECT count(*) FROM notification WHERE recipient = 'pat-3' "
                                    "AND status = 'failed' AND error LIKE '%not a JSON object%'"),
                     1);
    cJSON_Delete(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_plugins_are_refused_and_leave_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_plugin_hears_events_runs_commands_and_reads_records,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_optional_plugins_do_not_stop_the_rest, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_notify_spool_writes_durable_files_and_retries, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
