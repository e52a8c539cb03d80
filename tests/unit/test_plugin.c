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

#include "audit.h"
#include "caremesh/plugin.h"
#include "plugin.h"
#include "node.h"
#include "syncgate.h"

#define PLUGIN(name) CM_TEST_PLUGIN_DIR "/" name ".so"

typedef struct fx {
    cm_test_node *n;
    cm_plugin_host *host;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    cm_err err;
    if (!(f->n = cm_test_node_with_clinic()))
        return -1;
    f->host = cm_plugin_host_new(f->n->model, &err);
    *state = f;
    return f->host ? 0 : -1;
}

static int teardown(void **state)
{
    fx *f = *state;
    cm_plugin_host_destroy(&f->host);
    cm_test_node_free(f->n);
    free(f);
    return 0;
}

/* Run plugin command argv, capturing what it prints. Returns its exit code. */
static int run_command(fx *f, int argc, char **argv, char *out, size_t outsz, bool *found)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/out.txt", f->n->dir);
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
    char want[128];
    expect_refused(f, "probe", "/nonexistent/probe.so", CM_ENOTFOUND, "no file at");
    expect_refused(f, "probe", PLUGIN("probe_no_symbol"), CM_EINVAL,
                   "exports no caremesh_plugin descriptor");
    snprintf(want, sizeof(want), "built for plugin ABI 2.%d, this caremesh has ABI 1.%d",
             CM_PLUGIN_ABI_MINOR, CM_PLUGIN_ABI_MINOR);
    expect_refused(f, "probe", PLUGIN("probe_bad_major"), CM_ECONFIG, want);
    snprintf(want, sizeof(want), "built for plugin ABI 1.%d, newer than this caremesh's 1.%d",
             CM_PLUGIN_ABI_MINOR + 1, CM_PLUGIN_ABI_MINOR);
    expect_refused(f, "probe", PLUGIN("probe_new_minor"), CM_ECONFIG, want);
    expect_refused(f, "probe", PLUGIN("probe_fail_init"), CM_EINVAL,
                   "init failed: the database it needs is not configured");
    expect_refused(f, "other", PLUGIN("probe"), CM_EINVAL, "the file is plugin \"probe\"");
    expect_refused(f, "bad name!", PLUGIN("probe"), CM_EINVAL, "plugin name");
    char notso[1024];
    snprintf(notso, sizeof(notso), "%s/fake.so", f->n->dir);
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
    return cm_test_count(f->n->store, sql);
}

static void test_notify_spool_writes_durable_files_and_retries(void **state)
{
    fx *f = *state;
    char spool[900], text[1100], file[1200];
    cm_err err;
    int sent = -1;
    snprintf(spool, sizeof(spool), "%s/spool", f->n->dir);
    snprintf(text, sizeof(text), "{\"dir\":\"%s\",\"channels\":[\"sms\",\"email\"]}", spool);
    cJSON *cfg = cJSON_Parse(text);
    cm_plugin_spec spec = {"notify_spool", CM_SHIPPED_PLUGIN_DIR "/notify_spool.so", false, cfg};
    /* no spool directory yet: init refuses, naming it */
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "is not a writable directory"));
    assert_int_equal(mkdir(spool, 0700), 0);
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), 0);
    assert_int_equal(
        cm_store_exec(f->n->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) VALUES"
                      " ('sms', 'pat-1', 'Your \"cardiology\" visit: call us', '{\"k\":1}', 'x'),"
                      " ('pager', 'dr-1', 'nobody serves this channel', '{}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
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
        cm_store_exec(f->n->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) "
                      "VALUES ('email', 'pat-2', 'Flu shots are here', '{}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 0);
    assert_int_equal(count_where(f, "SELECT attempts FROM notification WHERE channel = 'email' "
                                    "AND status = 'pending' AND error LIKE '%spool%'"),
                     1);
    assert_int_equal(mkdir(spool, 0700), 0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 0); /* not due yet */
    cm_clock_advance(f->n->clock, 6000);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 1);
    snprintf(file, sizeof(file), "%s/00000003-email.json", spool);
    assert_int_equal(access(file, R_OK), 0);
    /* rows of a channel nobody serves never hold the others up; a row written
    ** around the engine with data that is not JSON is parked, not handed on */
    for (int i = 0; i < 70; i++)
        cm_store_exec(f->n->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) "
                      "VALUES ('SMS', 'pat-9', 'typo channel', '{}', 'x')",
                      &err);
    assert_int_equal(
        cm_store_exec(f->n->store,
                      "INSERT INTO notification(channel, recipient, message, data, created) VALUES"
                      " ('sms', 'pat-3', 'bad data', 'not json', 'x'),"
                      " ('sms', 'pat-4', 'after the typos', '{}', 'x')",
                      &err),
        0);
    assert_int_equal(cm_plugin_host_deliver(f->host, f->n->store, f->n->clock, 10, &sent, &err), 0);
    assert_int_equal(sent, 1);
    assert_int_equal(count_where(f, "SELECT count(*) FROM notification WHERE recipient = 'pat-4' "
                                    "AND status = 'sent'"),
                     1);
    assert_int_equal(count_where(f, "SELECT count(*) FROM notification WHERE recipient = 'pat-3' "
                                    "AND status = 'failed' AND error LIKE '%not a JSON object%'"),
                     1);
    cJSON_Delete(cfg);
}

/* The daemon's notifications (cm_plugin_host_deliver_durable): a
** notification written by a deferred commit whose sync is held is not handed
** to its channel, and the call returns at once (it never waits for the
** sync: the loop goes on); once the sync ends it is handed on, once. */
static void test_notifications_of_a_commit_not_yet_durable_wait_without_blocking(void **state)
{
    fx *f = *state;
    char spool[900], text[1100], file[1200];
    cm_test_gate g;
    cm_store_opts o;
    cm_store *s = NULL;
    cm_store_rowmark mark;
    cm_err err;
    int sent = -1;
    memset(&mark, 0, sizeof(mark));
    cm_test_gate_init(&g);
    snprintf(spool, sizeof(spool), "%s/spool", f->n->dir);
    assert_int_equal(mkdir(spool, 0700), 0);
    snprintf(text, sizeof(text), "{\"dir\":\"%s\",\"channels\":[\"sms\"]}", spool);
    cJSON *cfg = cJSON_Parse(text);
    cm_plugin_spec spec = {"notify_spool", CM_SHIPPED_PLUGIN_DIR "/notify_spool.so", false, cfg};
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), 0);
    cm_store_opts_init(&o);
    o.path = cm_test_path(f->n->dir, "gated.db");
    o.create = true;
    o.sync_fn = cm_test_gate_sync;
    o.sync_ud = &g;
    assert_int_equal(cm_store_open(&s, &o, &err), 0);
    /* no assertion while the sync is held: a failed one would leave the
    ** store's sync thread waiting on this stack's gate */
    cm_test_gate_hold(&g, true);
    int wrote = cm_store_begin_deferred(s, &err);
    if (wrote == 0)
        wrote = cm_store_exec(s,
                              "INSERT INTO notification(channel, recipient, message, data, "
                              "created) VALUES ('sms', 'pat-1', 'Your visit is booked', '{}', 'x')",
                              &err);
    if (wrote == 0)
        wrote = cm_store_commit(s, &err);
    bool held = wrote == 0 && cm_test_gate_wait_held(&g, 1);
    int rc = cm_plugin_host_deliver_durable(f->host, s, f->n->clock, 10, &mark, &sent, &err);
    int sent_while_held = sent;
    snprintf(file, sizeof(file), "%s/00000001-sms.json", spool);
    int spooled_while_held = access(file, F_OK) == 0;
    cm_test_gate_hold(&g, false);
    assert_int_equal(wrote, 0);
    assert_true(held);
    assert_int_equal(rc, 0);
    assert_int_equal(sent_while_held, 0);
    assert_false(spooled_while_held);
    assert_int_equal(cm_test_count(s, "SELECT count(*) FROM notification WHERE status = 'pending'"),
                     1);
    assert_int_equal(cm_store_sync_wait(s, cm_store_commit_seq(s), &err), 0);
    assert_int_equal(
        cm_plugin_host_deliver_durable(f->host, s, f->n->clock, 10, &mark, &sent, &err), 0);
    assert_int_equal(sent, 1);
    assert_int_equal(access(file, F_OK), 0);
    assert_int_equal(
        cm_plugin_host_deliver_durable(f->host, s, f->n->clock, 10, &mark, &sent, &err), 0);
    assert_int_equal(sent, 0);
    assert_int_equal(cm_test_count(s, "SELECT count(*) FROM notification WHERE status = 'sent'"),
                     1);
    cm_plugin_host_unload_all(f->host);
    cm_test_store_close(&s);
    cm_test_gate_destroy(&g);
    cJSON_Delete(cfg);
}

/* ---- ABI 1.1: records, transactions, instances (tests/plugins/test_records.c) ---- */

#define PAT1                                                                                       \
    "{\"id\":\"pat-1\",\"name\":{\"family\":\"Ngata\"},\"birthDate\":\"1971-04-02\","              \
    "\"gender\":\"female\",\"phone\":\"+64 21 555 0101\",\"conditions\":[{\"code\":\"E11\"}]}"
#define PAT2                                                                                       \
    "{\"id\":\"pat-2\",\"name\":{\"family\":\"Moana\"},\"birthDate\":\"1980-11-30\","              \
    "\"gender\":\"male\",\"conditions\":[{\"code\":\"E11\"}]}"
#define PAT3                                                                                       \
    "{\"id\":\"pat-3\",\"name\":{\"family\":\"Tane\"},\"birthDate\":\"1990-01-15\","               \
    "\"gender\":\"other\"}"

static void load_records(fx *f)
{
    cm_plugin_spec spec = {"records", PLUGIN("records"), false, NULL};
    cm_err err;
    if (cm_plugin_host_load(f->host, &spec, &err) != 0)
        fail_msg("records plugin: %s", err.msg);
}

/* Run `records ARGS...` (NULL-terminated), its output in out; returns the exit code. */
static int records(fx *f, char *out, size_t outsz, ...)
{
    char *argv[16] = {"records"};
    int argc = 1;
    bool found = false;
    va_list ap;
    va_start(ap, outsz);
    while (argc < 15 && (argv[argc] = va_arg(ap, char *)) != NULL)
        argc++;
    va_end(ap);
    argv[argc] = NULL;
    int rc = run_command(f, argc, argv, out, outsz, &found);
    assert_true(found);
    return rc;
}

static void expect_output(const char *out, const char *fragment)
{
    if (!strstr(out, fragment))
        fail_msg("output '%s' lacks '%s'", out, fragment);
}

static long audits(fx *f, const char *action, const char *patient)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM audit WHERE actor = 'plugin:records' AND action = '%s' AND "
             "patient = '%s'",
             action, patient);
    return count_where(f, sql);
}

static void test_record_put_creates_replaces_and_audits(void **state)
{
    fx *f = *state;
    char out[4096];
    cm_err err;
    cJSON *rec = NULL;
    long entries = 0;
    load_records(f);
    assert_int_equal(records(f, out, sizeof(out), "put", "patient", PAT1, NULL), 0);
    assert_int_equal(audits(f, "patient.write", "pat-1"), 1);
    /* the same id again: replaced as version 2, not merged (phone and conditions go) */
    assert_int_equal(
        records(f, out, sizeof(out), "put", "patient",
                "{\"id\":\"pat-1\",\"name\":{\"family\":\"Ngata\",\"given\":[\"Aroha\"]},"
                "\"birthDate\":\"1971-04-02\",\"gender\":\"female\"}",
                NULL),
        0);
    assert_int_equal(cm_model_get(f->n->model, CM_KIND_PATIENT, "pat-1", &rec, &err), 0);
    assert_null(cJSON_GetObjectItem(rec, "phone"));
    assert_null(cJSON_GetObjectItem(rec, "conditions"));
    assert_string_equal(
        cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(rec, "name"), "given"), 0)
            ->valuestring,
        "Aroha");
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(rec, "meta"), "versionId")->valuestring, "2");
    cJSON_Delete(rec);
    assert_int_equal(audits(f, "patient.write", "pat-1"), 2);
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit WHERE detail = "
                                    "'patient pat-1 version 2'"),
                     1);
    /* a record that is not a patient's is written without a patient audit entry;
    ** one that refers to a patient is audited under that patient */
    assert_int_equal(
        records(f, out, sizeof(out), "put", "organization",
                "{\"id\":\"pharm-b\",\"name\":\"Pharmacy B\",\"kind\":\"community_pharmacy\"}",
                NULL),
        0);
    assert_int_equal(records(f, out, sizeof(out), "put", "consent",
                             "{\"id\":\"cons-1\",\"patient\":\"pat-1\",\"purpose\":\"referral\","
                             "\"decision\":\"permit\"}",
                             NULL),
                     0);
    assert_int_equal(audits(f, "patient.write", "pat-1"), 3);
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit"), 3);
    assert_int_equal(cm_audit_verify(f->n->store, &entries, &err), 0);
    assert_int_equal(entries, 3);
}

static void test_record_put_refuses_bad_input_and_writes_nothing(void **state)
{
    fx *f = *state;
    char out[4096];
    static const struct {
        const char *kind, *json, *fragment;
    } bad[] = {
        {"patients", PAT1,
         "unknown record kind \"patients\" (kinds: organization, provider, "
         "patient,"},
        {"patient", "{\"id\":\"pat-9\",", "patient: not valid JSON (at byte 14)"},
        {"patient", "[1,2]", "patient: the record must be a JSON object"},
        {"patient", "{\"name\":{\"family\":\"X\"}}", "patient.id: required, a string"},
        {"patient",
         "{\"id\":\"pat-9\",\"name\":{\"family\":\"X\"},\"birthDate\":\"not-a-date\","
         "\"gender\":\"female\"}",
         "patient.birthDate:"},
        {"consent",
         "{\"id\":\"cons-9\",\"patient\":\"nobody\",\"purpose\":\"referral\","
         "\"decision\":\"permit\"}",
         "consent.patient:"},
    };
    load_records(f);
    assert_int_equal(records(f, out, sizeof(out), "put", "patient", PAT1, NULL), 0);
    long before = count_where(f, "SELECT count(*) FROM record");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(records(f, out, sizeof(out), "put", bad[i].kind, bad[i].json, NULL), 1);
        expect_output(out, bad[i].fragment);
    }
    /* replacing pat-1 with a bad version keeps version 1 */
    assert_int_equal(records(f, out, sizeof(out), "put", "patient",
                             "{\"id\":\"pat-1\",\"name\":{\"family\":\"Ngata\"},"
                             "\"birthDate\":\"1971-04-02\",\"gender\":\"robot\"}",
                             NULL),
                     1);
    expect_output(out, "patient.gender:");
    assert_int_equal(count_where(f, "SELECT count(*) FROM record"), before);
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit"), 1);
    assert_int_equal(count_where(f, "SELECT max(version) FROM record WHERE id = 'pat-1'"), 1);
}

static void test_record_find_pages_filters_and_audits_reads(void **state)
{
    fx *f = *state;
    char out[8192];
    load_records(f);
    assert_int_equal(records(f, out, sizeof(out), "batch", "patient", PAT3, PAT2, PAT1, NULL), 0);
    long writes = count_where(f, "SELECT count(*) FROM audit");
    assert_int_equal(writes, 3);
    assert_int_equal(
        records(f, out, sizeof(out), "find", "patient", "{\"condition\":\"E11\"}", "-", "10", NULL),
        0);
    cJSON *list = cJSON_Parse(out);
    assert_int_equal(cJSON_GetArraySize(list), 2);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "id")->valuestring,
                        "pat-1");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 1), "id")->valuestring,
                        "pat-2");
    cJSON_Delete(list);
    assert_int_equal(audits(f, "patient.read", "pat-1"), 1);
    assert_int_equal(audits(f, "patient.read", "pat-2"), 1);
    assert_int_equal(audits(f, "patient.read", "pat-3"), 0);
    /* paging: after pat-1, one at a time */
    assert_int_equal(records(f, out, sizeof(out), "find", "patient", "{}", "pat-1", "1", NULL), 0);
    list = cJSON_Parse(out);
    assert_int_equal(cJSON_GetArraySize(list), 1);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "id")->valuestring,
                        "pat-2");
    cJSON_Delete(list);
    /* get audits too */
    assert_int_equal(records(f, out, sizeof(out), "get", "patient", "pat-3", NULL), 0);
    assert_int_equal(audits(f, "patient.read", "pat-3"), 1);
    long reads = count_where(f, "SELECT count(*) FROM audit WHERE action = 'patient.read'");
    assert_int_equal(reads, 4);
    /* bad queries: named, and nothing is read or audited */
    assert_int_equal(
        records(f, out, sizeof(out), "find", "patient", "{\"colour\":\"red\"}", "-", "10", NULL),
        1);
    expect_output(out, "colour");
    expect_output(out, "condition"); /* the keys allowed */
    assert_int_equal(
        records(f, out, sizeof(out), "find", "patient", "{\"condition\":", "-", "10", NULL), 1);
    expect_output(out, "query: not valid JSON");
    assert_int_equal(records(f, out, sizeof(out), "find", "patient", "[]", "-", "10", NULL), 1);
    expect_output(out, "query: must be a JSON object");
    assert_int_equal(records(f, out, sizeof(out), "find", "patient", "-", "-", "0", NULL), 1);
    expect_output(out, "limit 0 out of range (1..1000)");
    assert_int_equal(records(f, out, sizeof(out), "find", "people", "-", "-", "10", NULL), 1);
    expect_output(out, "unknown record kind \"people\"");
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit WHERE action = 'patient.read'"),
                     reads);
}

static void test_transactions_are_all_or_nothing(void **state)
{
    fx *f = *state;
    char out[4096];
    load_records(f);
    long recs = count_where(f, "SELECT count(*) FROM record");
    /* a bad record in the batch: neither is written, the error names kind.field */
    assert_int_equal(records(f, out, sizeof(out), "batch", "patient", PAT1,
                             "{\"id\":\"pat-2\",\"name\":{\"family\":\"Moana\"},"
                             "\"birthDate\":\"1980-13-40\",\"gender\":\"male\"}",
                             NULL),
                     1);
    expect_output(out, "patient.birthDate:");
    assert_int_equal(count_where(f, "SELECT count(*) FROM record"), recs);
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit"), 0);
    /* rolled back on purpose */
    assert_int_equal(records(f, out, sizeof(out), "rollback", "patient", PAT1, NULL), 0);
    assert_int_equal(count_where(f, "SELECT count(*) FROM record"), recs);
    /* left open when the call returns: the host rolls it back */
    assert_int_equal(records(f, out, sizeof(out), "leave-open", "patient", PAT1, NULL), 0);
    assert_false(cm_store_in_tx(f->n->store));
    assert_int_equal(count_where(f, "SELECT count(*) FROM record"), recs);
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit"), 0);
    /* nested begin refused; commit with none open refused */
    assert_int_equal(records(f, out, sizeof(out), "nested", NULL), 0);
    expect_output(out, "refused: a transaction is already open: tx_begin does not nest");
    assert_int_equal(records(f, out, sizeof(out), "commit-none", NULL), 1);
    expect_output(out, "tx_commit: no transaction is open");
    assert_false(cm_store_in_tx(f->n->store));
    /* a good batch commits every record */
    assert_int_equal(records(f, out, sizeof(out), "batch", "patient", PAT1, PAT2, NULL), 0);
    assert_int_equal(count_where(f, "SELECT count(*) FROM record"), recs + 2);
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit WHERE action = 'patient.write'"),
                     2);
    /* inside a transaction the caller holds (a workflow step calling a plugin's
    ** Lua function): the plugin's transaction is a savepoint, undone alone */
    cm_err err;
    assert_int_equal(cm_store_begin(f->n->store, &err), 0);
    assert_int_equal(records(f, out, sizeof(out), "put", "patient", PAT3, NULL), 0);
    assert_int_equal(records(f, out, sizeof(out), "batch", "patient", PAT1, "{\"id\":7}", NULL), 1);
    assert_int_equal(records(f, out, sizeof(out), "leave-open", "patient", PAT1, NULL), 0);
    assert_true(cm_store_in_tx(f->n->store));
    assert_int_equal(cm_store_commit(f->n->store, &err), 0);
    assert_int_equal(count_where(f, "SELECT count(*) FROM record"), recs + 3);
    assert_int_equal(
        count_where(f, "SELECT count(*) FROM record WHERE id = 'pat-1' AND version = 2"), 0);
}

static void test_reads_in_an_undone_transaction_stay_audited(void **state)
{
    fx *f = *state;
    char out[4096];
    cm_err err;
    long entries = 0;
    load_records(f);
    assert_int_equal(records(f, out, sizeof(out), "put", "patient", PAT1, NULL), 0);
    assert_int_equal(records(f, out, sizeof(out), "read-rollback", "patient", "pat-1", NULL), 0);
    assert_int_equal(audits(f, "patient.read", "pat-1"), 1);
    assert_int_equal(cm_audit_verify(f->n->store, &entries, &err), 0);
    assert_int_equal(entries, 2);
}

static void test_instances_filter_and_page(void **state)
{
    fx *f = *state;
    char out[8192];
    cm_err err;
    load_records(f);
    assert_int_equal(
        cm_store_exec(
            f->n->store,
            "INSERT INTO workflow_def(name, rev, version, origin, source, loaded_at) VALUES"
            " ('referral', 1, 3, 'referral.lua', '', 'x'), ('outreach', 1, 7, 'o.lua', '', 'x');"
            "INSERT INTO instance_base(seq, id, workflow, rev, status, input, created)"
            " VALUES (1, 'ref-1', 'referral', 1, 'running', '{\"patient\":\"pat-1\"}', 'c1'),"
            " (2, 'ref-2', 'referral', 1, 'done', '{}', 'c2'),"
            " (3, 'out-1', 'outreach', 1, 'running', '{}', 'c3');"
            "INSERT INTO history(seq, instance, step, at, event, to_state) VALUES"
            " (1, 'ref-1', 1, 'u1', 'start', 'requested');"
            "INSERT INTO instance_step(seq, state, ctx, hist) VALUES"
            " (1, 'requested', '{\"n\":1}', 1), (2, 'closed', '{}', NULL),"
            " (3, 'calling', '{}', NULL)",
            &err),
        0);
    long before = audits(f, "patient.read", "pat-1");
    assert_int_equal(records(f, out, sizeof(out), "instances", "-", "-", "10", NULL), 0);
    /* ref-1's input names pat-1: reading it is a read of pat-1's data */
    assert_int_equal(audits(f, "patient.read", "pat-1"), before + 1);
    assert_int_equal(count_where(f, "SELECT count(*) FROM audit WHERE detail = 'instance ref-1'"),
                     1);
    cJSON *list = cJSON_Parse(out);
    assert_int_equal(cJSON_GetArraySize(list), 3);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "id")->valuestring,
                        "out-1"); /* by id */
    cJSON_Delete(list);
    assert_int_equal(records(f, out, sizeof(out), "instances",
                             "{\"workflow\":\"referral\",\"status\":\"running\"}", "-", "10", NULL),
                     0);
    list = cJSON_Parse(out);
    assert_int_equal(cJSON_GetArraySize(list), 1);
    cJSON *one = cJSON_GetArrayItem(list, 0);
    assert_string_equal(cJSON_GetObjectItem(one, "id")->valuestring, "ref-1");
    assert_int_equal(cJSON_GetObjectItem(one, "version")->valueint, 3);
    assert_string_equal(cJSON_GetObjectItem(one, "state")->valuestring, "requested");
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(one, "input"), "patient")->valuestring, "pat-1");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(one, "ctx"), "n")->valueint, 1);
    assert_string_equal(cJSON_GetObjectItem(one, "updated")->valuestring, "u1");
    cJSON_Delete(list);
    assert_int_equal(
        records(f, out, sizeof(out), "instances", "{\"state\":\"closed\"}", "-", "10", NULL), 0);
    expect_output(out, "\"id\":\"ref-2\"");
    assert_int_equal(records(f, out, sizeof(out), "instances", "-", "out-1", "1", NULL), 0);
    list = cJSON_Parse(out);
    assert_int_equal(cJSON_GetArraySize(list), 1);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "id")->valuestring,
                        "ref-1");
    cJSON_Delete(list);
    static const struct {
        const char *filter, *limit, *fragment;
    } bad[] = {
        {"{\"patient\":\"pat-1\"}", "10",
         "filter.patient: unknown key (keys: workflow, state, "
         "status)"},
        {"{\"status\":\"asleep\"}", "10", "filter.status: \"asleep\" is not running, paused"},
        {"{\"state\":3}", "10", "filter.state: must be a string"},
        {"\"referral\"", "10", "filter: must be a JSON object"},
        {"{\"state\":", "10", "filter: not valid JSON"},
        {"-", "1001", "limit 1001 out of range (1..1000)"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(
            records(f, out, sizeof(out), "instances", bad[i].filter, "-", bad[i].limit, NULL), 1);
        expect_output(out, bad[i].fragment);
    }
}

static void test_a_plugin_built_for_abi_1_0_still_loads(void **state)
{
    fx *f = *state;
    cm_plugin_spec spec = {"probe", PLUGIN("probe_old_minor"), false, NULL};
    cm_err err;
    assert_int_equal(cm_plugin_host_load(f->host, &spec, &err), 0);
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
        cmocka_unit_test_setup_teardown(
            test_notifications_of_a_commit_not_yet_durable_wait_without_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_spool_writes_durable_files_and_retries, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_record_put_creates_replaces_and_audits, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_record_put_refuses_bad_input_and_writes_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_record_find_pages_filters_and_audits_reads, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_transactions_are_all_or_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_in_an_undone_transaction_stay_audited, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_instances_filter_and_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_plugin_built_for_abi_1_0_still_loads, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
