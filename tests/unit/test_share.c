/*
** test_share.c -- what a node shares with a partner node: its directory
** (only the organizations in a partnership with that node, their providers
** and services) and indicators (aggregates of the KPIs a partnership lists);
** what it keeps of what partners send, and what it refuses.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "node.h"
#include "share.h"

typedef cm_test_node fixture;

static void create(fixture *f, cm_kind kind, const char *json)
{
    cm_test_node_create(f, kind, json);
}

static void exec(fixture *f, const char *sql)
{
    cm_err err = {0};
    if (cm_store_exec(f->store, sql, &err) != 0)
        fail_msg("%s: %s", sql, err.msg);
}

static int setup(void **state)
{
    fixture *f = cm_test_node_new();
    if (!f)
        return -1;
    create(f, CM_KIND_ORGANIZATION,
           "{\"id\":\"cardio\",\"name\":\"Heart Partners\",\"kind\":\"specialist_practice\","
           "\"node\":\"b\",\"phone\":\"+1 555 0100 300\"}");
    create(f, CM_KIND_ORGANIZATION,
           "{\"id\":\"derm\",\"name\":\"Skin Clinic\",\"kind\":\"clinic\",\"node\":\"b\"}");
    create(f, CM_KIND_ORGANIZATION,
           "{\"id\":\"clinic\",\"name\":\"Main St Clinic\",\"kind\":\"clinic\",\"node\":\"a\"}");
    create(f, CM_KIND_ORGANIZATION,
           "{\"id\":\"pharm\",\"name\":\"Corner Pharmacy\",\"kind\":\"community_pharmacy\","
           "\"node\":\"c\"}");
    create(f, CM_KIND_PROVIDER,
           "{\"id\":\"dr-osei\",\"name\":{\"family\":\"Osei\"},\"role\":\"physician\","
           "\"specialty\":\"cardiology\",\"organization\":\"cardio\",\"phone\":\"+1 555 0199 "
           "999\"}");
    create(f, CM_KIND_PARTNERSHIP,
           "{\"id\":\"heart\",\"name\":\"Referrals\",\"purpose\":\"referrals\",\"reviewCadence\":"
           "\"quarterly\",\"kpis\":[{\"name\":\"referral_days_to_close\"}],\"members\":[{"
           "\"organization\":\"clinic\"},{\"organization\":\"cardio\",\"offers\":[\"cardiology "
           "consult\",\"echocardiogram\"]}]}");
    *state = f;
    return 0;
}

static void test_directory_only_partnership_members(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    cJSON *dir = NULL;
    /* node b shares with a: cardio (in a partnership with clinic), not derm */
    assert_int_equal(cm_share_directory(f->store, "b", "a", &dir, &err), 0);
    assert_int_equal(cJSON_GetArraySize(dir), 1);
    cJSON *org = cJSON_GetArrayItem(dir, 0);
    assert_string_equal(cJSON_GetObjectItem(org, "id")->valuestring, "cardio");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(org, "services")), 2);
    cJSON *prov = cJSON_GetArrayItem(cJSON_GetObjectItem(org, "providers"), 0);
    assert_string_equal(cJSON_GetObjectItem(prov, "specialty")->valuestring, "cardiology");
    assert_null(cJSON_GetObjectItem(prov, "phone")); /* name, role, specialty only */
    cJSON_Delete(dir);
    /* nothing for a node with no partnership */
    assert_int_equal(cm_share_directory(f->store, "b", "c", &dir, &err), 0);
    assert_int_equal(cJSON_GetArraySize(dir), 0);
    cJSON_Delete(dir);
}

static void test_directory_keep_drops_foreign_orgs(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    char why[200];
    int kept, dropped;
    cJSON *orgs = cJSON_Parse("[{\"id\":\"x1\",\"name\":\"X\",\"node\":\"b\"},"
                              "{\"id\":\"x2\",\"name\":\"Y\",\"node\":\"z\"}]");
    assert_int_equal(cm_share_directory_keep(f->store, f->clock, "b", orgs, &kept, &dropped, why,
                                             sizeof(why), &err),
                     0);
    assert_int_equal(kept, 1);
    assert_int_equal(dropped, 1);
    assert_non_null(strstr(why, "organization \"x2\" claims node \"z\", not b"));
    cJSON_Delete(orgs);
    /* malformed: nothing changes */
    orgs = cJSON_Parse("[{\"id\":\"x3\",\"name\":\"Z\",\"node\":\"b\"},{\"name\":\"no id\"}]");
    assert_int_equal(cm_share_directory_keep(f->store, f->clock, "b", orgs, &kept, &dropped, why,
                                             sizeof(why), &err),
                     CM_EINVAL);
    assert_non_null(strstr(err.msg, "organizations[1]"));
    cJSON_Delete(orgs);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(cm_store_db(f->store), "SELECT group_concat(organization) FROM directory",
                       -1, &st, NULL);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "x1");
    sqlite3_finalize(st);
}

static void test_indicators_aggregate_the_listed_kpis(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    cJSON *list = NULL;
    exec(f, "INSERT INTO kpi_observation(name, value, labels, at) VALUES "
            "('referral_days_to_close', 4, '{\"partner\":\"cardio\"}', '2025-12-20T00:00:00Z'),"
            "('referral_days_to_close', 10, '{\"partner\":\"cardio\"}', '2025-12-21T00:00:00Z'),"
            "('referral_days_to_close', 6, '{\"partner\":\"cardio\"}', '2025-12-22T00:00:00Z'),"
            "('referral_days_to_close', 99, '{\"partner\":\"elsewhere\"}', '2025-12-22T00:00:00Z'),"
            "('referral_days_to_close', 50, '{\"partner\":\"cardio\"}', '2025-01-01T00:00:00Z'),"
            "('unlisted_kpi', 1, '{}', '2025-12-22T00:00:00Z')");
    assert_int_equal(cm_share_indicators(f->store, f->clock, "a", "b", &list, &err), 0);
    assert_int_equal(cJSON_GetArraySize(list), 1);
    cJSON *ind = cJSON_GetArrayItem(list, 0);
    assert_string_equal(cJSON_GetObjectItem(ind, "name")->valuestring, "referral_days_to_close");
    assert_int_equal((int)cJSON_GetObjectItem(ind, "count")->valuedouble, 3); /* 90 days, partner */
    assert_int_equal((int)cJSON_GetObjectItem(ind, "median")->valuedouble, 6);
    assert_int_equal((int)cJSON_GetObjectItem(ind, "max")->valuedouble, 10);
    int kept;
    assert_int_equal(cm_share_indicators_keep(f->store, f->clock, "a", list, &kept, &err), 0);
    assert_int_equal(kept, 1);
    cJSON_Delete(list);
}

static void test_indicators_keep_refuses_anything_but_aggregates(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    int kept;
    cJSON *list = cJSON_Parse("[{\"partnership\":\"heart\",\"name\":\"k\",\"count\":2,"
                              "\"patients\":[\"pat-1\"]}]");
    assert_int_equal(cm_share_indicators_keep(f->store, f->clock, "b", list, &kept, &err),
                     CM_EINVAL);
    assert_non_null(strstr(err.msg, "indicators[0].patients: not an aggregate field"));
    cJSON_Delete(list);
    list = cJSON_Parse("[{\"partnership\":\"heart\",\"name\":\"k\",\"count\":\"two\"}]");
    assert_int_equal(cm_share_indicators_keep(f->store, f->clock, "b", list, &kept, &err),
                     CM_EINVAL);
    assert_non_null(strstr(err.msg, "indicators[0].count: must be a number"));
    cJSON_Delete(list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_directory_only_partnership_members, setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_directory_keep_drops_foreign_orgs, setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_indicators_aggregate_the_listed_kpis, setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_indicators_keep_refuses_anything_but_aggregates, setup,
                                        cm_test_node_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
