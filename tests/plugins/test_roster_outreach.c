/*
** test_roster_outreach.c -- the whole path of a roster-driven campaign:
** the roster_csv plugin loaded by the plugin host imports two rosters
** (cohorts flu-2026 and copd-2026, one patient in both) into a node's store;
** the shipped outreach workflow started with cohort = { roster = "flu-2026" }
** spawns one outreach_contact child for each patient of that roster, and for
** no one else. Every patient written is in the audit trail.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine.h"
#include "lhost.h"
#include "lworkflow.h"
#include "model.h"
#include "plugin.h"
#include "sandbox.h"
#include "store.h"

#include "../unit/node.h"

#define T0 1767603600000LL /* 2026-01-05T09:00:00Z */

typedef struct world {
    char *dir;
    cm_clock *clock;
    cm_store *store;
    cm_model *model;
    cm_sandbox *sb;
    cm_lua_runtime *rt;
    cm_lua_host host;
    cm_engine *engine;
    cm_plugin_host *plugins;
} world;

static int setup(void **state)
{
    world *w = calloc(1, sizeof(*w));
    cm_store_opts so;
    cm_engine_opts eo;
    cm_sandbox_limits limits = {0, 0};
    cm_err err;
    assert_non_null(w);
    assert_non_null(w->dir = cm_test_tmpdir());
    cm_store_opts_init(&so);
    so.path = cm_test_path(w->dir, "node.db");
    so.create = true;
    assert_non_null(w->clock = cm_clock_new_virtual(T0));
    assert_int_equal(cm_store_open(&w->store, &so, &err), 0);
    assert_non_null(w->model = cm_model_new(w->store, w->clock));
    assert_non_null(w->sb = cm_sandbox_new(&limits, &err));
    w->host = (cm_lua_host){w->store, w->model, w->clock, "riverside-node", NULL, NULL, NULL, NULL};
    assert_int_equal(cm_lua_host_set(cm_sandbox_state(w->sb), &w->host, &err), 0);
    cm_sandbox_preload(w->sb, "caremesh", cm_lua_open_caremesh);
    assert_int_equal(cm_sandbox_add_module_dir(w->sb, CM_WORKFLOW_DIR, &err), 0);
    assert_non_null(w->rt = cm_lua_runtime_new(w->sb, &err));
    memset(&eo, 0, sizeof(eo));
    eo.store = w->store;
    eo.model = w->model;
    eo.clock = w->clock;
    eo.runtime = cm_lua_runtime_seam(w->rt);
    assert_non_null(w->engine = cm_engine_new(&eo, &err));
    assert_int_equal(
        cm_engine_load_file(w->engine, CM_WORKFLOW_DIR "/outreach_contact.lua", NULL, NULL, &err),
        0);
    assert_int_equal(
        cm_engine_load_file(w->engine, CM_WORKFLOW_DIR "/outreach.lua", NULL, NULL, &err), 0);
    assert_non_null(w->plugins = cm_plugin_host_new(w->model, &err));
    cm_plugin_spec spec = {"roster_csv", CM_SHIPPED_PLUGIN_DIR "/roster_csv.so", false, NULL};
    if (cm_plugin_host_load(w->plugins, &spec, &err) != 0)
        fail_msg("%s", err.msg);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    cm_plugin_host_destroy(&w->plugins);
    cm_engine_destroy(&w->engine);
    cm_lua_runtime_destroy(&w->rt);
    cm_sandbox_destroy(&w->sb);
    cm_model_destroy(&w->model);
    cm_test_store_close(&w->store);
    cm_clock_destroy(&w->clock);
    cm_test_rmtree(w->dir);
    free(w->dir);
    free(w);
    return 0;
}

/* `caremesh roster import FILE --cohort COHORT` through the plugin host. */
static int import(world *w, const char *name, const char *csv, const char *cohort)
{
    char *path = cm_test_path(w->dir, name);
    char *argv[] = {"roster", "import", path, "--cohort", (char *)cohort, NULL};
    bool found = false;
    cm_test_write(path, csv, strlen(csv));
    int rc = cm_plugin_host_command(w->plugins, 5, argv, &found);
    assert_true(found);
    return rc;
}

static void on_ack(void *ud, const cm_ack *a)
{
    *(int *)ud = a->status == 0 ? 1 : -1;
}

static cJSON *instance(world *w, const char *id)
{
    cJSON *out = NULL;
    cm_err err;
    if (cm_engine_get(w->engine, id, &out, &err) != 0)
        fail_msg("%s: %s", id, err.msg);
    return out;
}

static const char *str(const cJSON *obj, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

static long audited_writes(world *w)
{
    sqlite3_stmt *st = NULL;
    long n = -1;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(w->store),
                                        "SELECT count(*) FROM audit WHERE actor = "
                                        "'plugin:roster_csv' AND action = 'patient.write'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void an_imported_roster_is_a_campaign_cohort(void **state)
{
    world *w = *state;
    cm_err err;
    cJSON *org = cJSON_Parse("{\"id\":\"riverside-clinic\",\"name\":\"Riverside Family Clinic\","
                             "\"kind\":\"clinic\"}");
    assert_int_equal(cm_model_create(w->model, CM_KIND_ORGANIZATION, org, NULL, &err), 0);
    cJSON_Delete(org);

    assert_int_equal(
        import(w, "flu.csv",
               "\xef\xbb\xbfMRN,Last Name,First Name,DOB,Sex,Mobile,Contact Preference\r\n"
               "1001,\"Rivera, Jr.\",Ana,1958-04-12,F,555-010-0201,Text\r\n"
               "1002,Okafor,Chidi,1949-07-04,M,555-010-0202,Phone\r\n"
               "1003,Lee,Kim,1990-03-03,F,555-010-0203,Text\r\n",
               "flu-2026"),
        0);
    assert_int_equal(import(w, "copd.csv",
                            "MRN,Last Name,First Name,DOB,Sex,Mobile\n"
                            "1003,Lee,Kim,1990-03-03,F,555-010-0203\n"
                            "1004,Schmidt,Hans,1944-09-09,M,555-010-0204\n",
                            "copd-2026"),
                     0);
    assert_int_equal(audited_writes(w), 5); /* 1003 twice: created, then tagged */

    int acked = 0;
    cJSON *input = cJSON_Parse("{\"organization\":\"riverside-clinic\",\"message\":\"Flu shots "
                               "are in: reply to book.\",\"cohort\":{\"roster\":\"flu-2026\"}}");
    assert_int_equal(
        cm_engine_start(w->engine, "outreach", input, "camp-flu", on_ack, &acked, &err), 0);
    cJSON_Delete(input);
    assert_int_equal(cm_engine_run(w->engine, NULL, &err), 0);
    assert_int_equal(acked, 1);

    cJSON *camp = instance(w, "camp-flu");
    const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(camp, "context");
    assert_string_equal(str(camp, "state"), "running");
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(ctx, "cohort")->valueint, 3);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(ctx, "spawned")->valueint, 3);
    const cJSON *active = cJSON_GetObjectItemCaseSensitive(ctx, "active"), *child;
    static const char *const want[] = {"pat-1001", "pat-1002", "pat-1003"};
    bool seen[3] = {false, false, false};
    int n = 0;
    cJSON_ArrayForEach(child, active) /* patient -> child, in no particular order */
    {
        int k = 0;
        while (k < 3 && strcmp(child->string, want[k]) != 0)
            k++;
        assert_true(k < 3); /* the roster's patients, and not pat-1004 */
        assert_false(seen[k]);
        seen[k] = true;
        cJSON *kid = instance(w, child->valuestring);
        bool ok =
            strcmp(str(kid, "workflow"), "outreach_contact") == 0 &&
            strcmp(str(kid, "status"), "running") == 0 &&
            strcmp(str(cJSON_GetObjectItemCaseSensitive(kid, "input"), "patient"), want[k]) == 0;
        cJSON_Delete(kid);
        assert_true(ok);
        n++;
    }
    assert_int_equal(n, 3);
    cJSON_Delete(camp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(an_imported_roster_is_a_campaign_cohort, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
