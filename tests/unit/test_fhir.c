/*
** test_fhir.c -- the fhir plugin's mapping and bundle planning as pure
** functions (plugins/fhir/fhir_map.c, fhir_bundle.c): no host, no store.
** Each record kind goes out as FHIR and comes back unchanged; bad bundles
** give every problem with its path; ids that FHIR cannot carry survive.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "fhir_bundle.h"
#include "fhir_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- values ---- */

static void test_dates_are_calendar_dates(void **state)
{
    (void)state;
    assert_true(fhir_date_ok("2024-02-29"));
    assert_false(fhir_date_ok("2023-02-29"));
    assert_false(fhir_date_ok("1970-13-01"));
    assert_false(fhir_date_ok("1970-01"));
    assert_false(fhir_date_ok("1970-01-01T00:00:00Z"));
    assert_true(fhir_datetime_ok("1970-01-01"));
    assert_true(fhir_datetime_ok("2024-10-15T10:20:00-07:00"));
    assert_true(fhir_datetime_ok("2024-10-15T10:20:00.123Z"));
    assert_false(fhir_datetime_ok("2024-10-15T10:20:00"));
    assert_false(fhir_datetime_ok("2024-10-15T25:20:00Z"));
    assert_false(fhir_datetime_ok("2024-10-15 10:20:00Z"));
}

static void test_ids_fhir_cannot_carry_get_a_stable_fhir_id(void **state)
{
    char a[FHIR_ID_BUFSZ], b[FHIR_ID_BUFSZ], c[FHIR_ID_BUFSZ];
    char long_id[129];
    (void)state;
    assert_string_equal(fhir_id_for("pat-1.x", a), "pat-1.x");
    fhir_id_for("vaccination_course-3.t1.0", a);
    fhir_id_for("vaccination-course-3.t1.0", b);
    assert_true(fhir_id_ok(a));
    assert_string_not_equal(a, b); /* never meet the id that looks the same */
    assert_string_equal(fhir_id_for("vaccination_course-3.t1.0", c), a);
    memset(long_id, 'x', 128);
    long_id[128] = '\0';
    assert_true(fhir_id_ok(fhir_id_for(long_id, a)));
    assert_int_equal(strlen(a), FHIR_ID_MAX);
}

/* ---- records out and back ---- */

/* "Type/id" -> (Type, id); anything else is unknown. */
static int resolve_plain(void *ud, const char *ref, fhir_target *out, char *why, size_t whylen)
{
    static char type[64], id[FHIR_CM_ID_MAX + 1];
    const char *slash = strchr(ref, '/');
    (void)ud;
    if (!slash || (size_t)(slash - ref) >= sizeof(type)) {
        snprintf(why, whylen, "unknown");
        return -1;
    }
    snprintf(type, sizeof(type), "%.*s", (int)(slash - ref), ref);
    snprintf(id, sizeof(id), "%s", slash + 1);
    out->type = type;
    out->id = id;
    return 0;
}

typedef cJSON *(*export_fn)(const cJSON *rec);
typedef size_t (*import_fn)(fhir_in *in, const cJSON *res, cJSON *doc);

/* rec -> FHIR -> record: the same record, no problems. */
static void assert_round_trip(const char *json, export_fn out, import_fn in)
{
    fhir_problems problems = {0};
    fhir_in ctx = {.problems = &problems, .resolve = resolve_plain};
    cJSON *rec = cJSON_Parse(json), *res, *back;
    assert_non_null(rec);
    res = out(rec);
    assert_non_null(res);
    back = cJSON_CreateObject();
    cJSON_AddStringToObject(back, "id", fhir_resource_cm_id(res));
    fhir_path_push(&ctx.path, "entry[0].resource");
    size_t bad = in(&ctx, res, back);
    if (bad || !cJSON_Compare(rec, back, true)) {
        char *a = cJSON_PrintUnformatted(rec), *b = cJSON_PrintUnformatted(back);
        print_error("want %s\n got %s\n problem: %s\n", a, b, problems.n ? problems.msgs[0] : "-");
        free(a);
        free(b);
    }
    assert_int_equal(bad, 0);
    assert_true(cJSON_Compare(rec, back, true));
    fhir_problems_free(&problems);
    cJSON_Delete(rec);
    cJSON_Delete(res);
    cJSON_Delete(back);
}

static void test_organization_round_trips(void **state)
{
    (void)state;
    assert_round_trip(
        "{\"id\":\"org_1\",\"name\":\"Riverside\",\"kind\":\"public_health\","
        "\"node\":\"n1\",\"active\":false,\"phone\":\"+1 503 555 0100\","
        "\"email\":\"a@b.example\",\"address\":{\"line\":[\"1 A St\",\"Unit 2\"],"
        "\"city\":\"P\",\"state\":\"OR\",\"postalCode\":\"97201\",\"country\":\"US\"}}",
        fhir_export_organization, fhir_import_organization);
}

static void test_patient_round_trips(void **state)
{
    (void)state;
    assert_round_trip(
        "{\"id\":\"pat:1\",\"name\":{\"family\":\"Garcia\",\"given\":[\"Maria\",\"Luisa\"],"
        "\"prefix\":[\"Ms\"],\"text\":\"Maria Garcia\"},\"birthDate\":\"1958-04-17\","
        "\"gender\":\"female\",\"phone\":\"+1 503 555 0142\",\"email\":\"m@g.example\","
        "\"address\":{\"city\":\"Portland\"},\"language\":\"es-MX\",\"preferredChannel\":\"sms\","
        "\"identifiers\":[{\"system\":\"urn:oid:1.2\",\"value\":\"MRN-1\"},{\"value\":\"X\"}],"
        "\"generalPractitioner\":\"org-1\",\"active\":true}",
        fhir_export_patient, fhir_import_patient);
}

static void test_consent_round_trips(void **state)
{
    (void)state;
    assert_round_trip("{\"id\":\"c1\",\"patient\":\"pat-1\",\"purpose\":\"care_coordination\","
                      "\"organization\":\"org-2\",\"decision\":\"deny\",\"period\":{\"start\":"
                      "\"2024-01-01\",\"end\":\"2025-01-01\"},\"status\":\"inactive\","
                      "\"recorded\":\"2024-01-01T09:00:00Z\",\"note\":\"By phone.\"}",
                      fhir_export_consent, fhir_import_consent);
}

static void test_immunization_round_trips(void **state)
{
    (void)state;
    assert_round_trip(
        "{\"id\":\"i1\",\"status\":\"completed\",\"patient\":\"pat-1\","
        "\"vaccineCode\":{\"code\":\"208\",\"system\":\"http://hl7.org/fhir/sid/cvx\","
        "\"display\":\"COVID-19\"},\"occurrenceDateTime\":\"2021-03-02\","
        "\"performer\":\"org-1\",\"practitioner\":\"prov-1\",\"doseNumber\":2,"
        "\"seriesDoses\":2,\"series\":\"Primary\",\"lotNumber\":\"L1\","
        "\"note\":\"Left arm.\"}",
        fhir_export_immunization, fhir_import_immunization);
    /* a dose number FHIR's positiveInt cannot hold travels as a string */
    assert_round_trip("{\"id\":\"i2\",\"status\":\"not-done\",\"patient\":\"pat-1\","
                      "\"vaccineCode\":{\"code\":\"115\"},\"occurrenceDateTime\":\"2021-03-02\","
                      "\"performer\":\"org-1\",\"doseNumber\":1.5,\"seriesDoses\":0}",
                      fhir_export_immunization, fhir_import_immunization);
}

static void test_task_round_trips(void **state)
{
    (void)state;
    assert_round_trip("{\"id\":\"referral_x-1.t2.0\",\"title\":\"Call the office\","
                      "\"description\":\"Twice.\",\"status\":\"in-progress\",\"priority\":"
                      "\"urgent\",\"organization\":\"org-1\",\"patient\":\"pat-1\",\"owner\":"
                      "\"prov-1\",\"ownerRole\":\"care_coordinator\",\"due\":\"2030-01-01\","
                      "\"note\":\"n\"}",
                      fhir_export_task, fhir_import_task);
    assert_round_trip("{\"id\":\"t2\",\"title\":\"Review\",\"status\":\"requested\",\"priority\":"
                      "\"routine\",\"organization\":\"org-1\",\"ownerRole\":\"physician\"}",
                      fhir_export_task, fhir_import_task);
}

/* A provider leaves as a Practitioner and a PractitionerRole and comes back whole. */
static void test_provider_round_trips(void **state)
{
    const char *json = "{\"id\":\"prov-1\",\"name\":{\"family\":\"Okafor\",\"given\":[\"A\"]},"
                       "\"active\":true,\"role\":\"nurse_practitioner\",\"organization\":"
                       "\"org-1\",\"specialty\":\"Cardiology\",\"phone\":\"+1 503 555 0111\","
                       "\"email\":\"o@r.example\"}";
    fhir_problems problems = {0};
    fhir_in ctx = {.problems = &problems, .resolve = resolve_plain};
    cJSON *rec = cJSON_Parse(json), *back = cJSON_CreateObject();
    cJSON *prac = fhir_export_practitioner(rec), *role = fhir_export_practitioner_role(rec);
    (void)state;
    cJSON_AddStringToObject(back, "id", "prov-1");
    assert_int_equal(fhir_import_practitioner(&ctx, prac, back), 0);
    assert_int_equal(fhir_import_practitioner_role(&ctx, role, back), 0);
    assert_true(cJSON_Compare(rec, back, true));
    fhir_problems_free(&problems);
    cJSON_Delete(rec);
    cJSON_Delete(back);
    cJSON_Delete(prac);
    cJSON_Delete(role);
}

static void test_referral_states_map_on_task_statuses(void **state)
{
    (void)state;
    assert_string_equal(fhir_referral_task_status("requested"), "requested");
    assert_string_equal(fhir_referral_task_status("scheduled"), "in-progress");
    assert_string_equal(fhir_referral_task_status("declined"), "rejected");
    assert_string_equal(fhir_referral_task_status("closed"), "completed");
    assert_string_equal(fhir_referral_task_status("cancelled"), "cancelled");
    assert_string_equal(fhir_referral_task_status("not_sent"), "failed");
}

/* ---- bundles ---- */

static const char *stored_ids[] = {"organization/org-x", NULL};

static cJSON *store_get(void *ud, const char *kind, const char *id)
{
    char key[256];
    (void)ud;
    snprintf(key, sizeof(key), "%s/%s", kind, id);
    for (size_t i = 0; stored_ids[i]; i++)
        if (strcmp(stored_ids[i], key) == 0)
            return cJSON_Parse("{\"id\":\"org-x\",\"name\":\"X\",\"kind\":\"clinic\"}");
    return NULL;
}

static size_t plan(const char *text, fhir_plan *p)
{
    fhir_store store = {store_get, NULL};
    memset(p, 0, sizeof(*p));
    return fhir_plan_build(text, strlen(text), &store, p);
}

static bool has_problem(const fhir_plan *p, const char *text)
{
    for (size_t i = 0; i < p->problems.n; i++)
        if (strstr(p->problems.msgs[i], text))
            return true;
    for (size_t i = 0; i < p->problems.n; i++)
        print_error("problem: %s\n", p->problems.msgs[i]);
    return false;
}

#define PAT(id)                                                                                    \
    "{\"resource\":{\"resourceType\":\"Patient\",\"id\":\"" id                                     \
    "\",\"name\":[{\"family\":\"R\"}],\"gender\":\"male\",\"birthDate\":\"1980-01-01\"}}"

static void test_bundle_writes_in_reference_order(void **state)
{
    fhir_plan p;
    (void)state;
    assert_int_equal(
        plan(
            "{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":["
            "{\"resource\":{\"resourceType\":\"Immunization\",\"id\":\"i1\",\"status\":"
            "\"completed\",\"vaccineCode\":{\"coding\":[{\"code\":\"208\"}]},\"patient\":"
            "{\"reference\":\"urn:uuid:p\"},\"occurrenceDateTime\":\"2021-01-01\",\"performer\":"
            "[{\"actor\":{\"reference\":\"Organization/org-x\"}}]}},"
            "{\"fullUrl\":\"urn:uuid:p\",\"resource\":{\"resourceType\":\"Patient\",\"identifier\":"
            "[{\"system\":\"urn:caremesh:id\",\"value\":\"pat_1\"}],\"id\":\"pat-1-x\",\"name\":"
            "[{\"family\":\"R\"}],\"gender\":\"male\",\"birthDate\":\"1980-01-01\"}}]}",
            &p),
        0);
    assert_int_equal(p.n, 2);
    assert_string_equal(p.writes[0].kind, "patient"); /* before what refers to it */
    assert_string_equal(cJSON_GetObjectItem(p.writes[0].doc, "id")->valuestring, "pat_1");
    assert_string_equal(p.writes[1].kind, "immunization");
    assert_string_equal(cJSON_GetObjectItem(p.writes[1].doc, "patient")->valuestring, "pat_1");
    assert_string_equal(cJSON_GetObjectItem(p.writes[1].doc, "performer")->valuestring, "org-x");
    fhir_plan_free(&p);
}

static void test_bundle_reports_every_problem_with_its_path(void **state)
{
    fhir_plan p;
    (void)state;
    assert_int_equal(plan("{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"entry\":[" PAT(
                              "a") ",3,"
                                   "{\"resource\":{\"id\":\"x\"},\"request\":{\"method\":\"POST\","
                                   "\"url\":\"X\"}},"
                                   "{\"resource\":{\"resourceType\":\"Patient\",\"id\":\"b\","
                                   "\"birthDate\":\"1970-13-01\","
                                   "\"gender\":\"woman\",\"name\":[{\"given\":[\"A\"]}]},"
                                   "\"request\":{\"method\":\"PUT\","
                                   "\"url\":\"Patient/b\"}}]}",
                          &p),
                     6);
    assert_true(has_problem(&p, "entry[0].request: required in a transaction or batch bundle"));
    assert_true(has_problem(&p, "entry[1]: expected an object"));
    assert_true(has_problem(&p, "entry[2].resource.resourceType: required"));
    assert_true(has_problem(&p, "entry[3].resource.birthDate: \"1970-13-01\" is not a date"));
    assert_true(has_problem(&p, "entry[3].resource.gender: \"woman\" is not one of"));
    assert_true(has_problem(&p, "entry[3].resource.name[0].family: required"));
    assert_int_equal(p.n, 1); /* planned; the command writes nothing while there are problems */
    fhir_plan_free(&p);
}

static void test_bundle_refuses_what_is_not_a_bundle(void **state)
{
    static const struct {
        const char *text, *problem;
    } cases[] = {
        {"", "not JSON: the file is empty"},
        {"{\"a\":", "not JSON: syntax error at line 1"},
        {"[]", "the document is not an object"},
        {"{\"resourceType\":\"Patient\"}", "resourceType: not a FHIR Bundle"},
        {"{\"resourceType\":\"Bundle\",\"type\":\"searchset\"}", "type: \"searchset\": expected"},
        {"{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":7}",
         "entry: expected an array"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fhir_plan p;
        assert_int_equal(plan(cases[i].text, &p), 1);
        assert_true(has_problem(&p, cases[i].problem));
        fhir_plan_free(&p);
    }
}

static void test_bundle_skips_other_types_with_a_note(void **state)
{
    fhir_plan p;
    (void)state;
    assert_int_equal(plan("{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":[" PAT(
                              "a") ",{\"resource\":{\"resourceType\":\"Observation\"}}]}",
                          &p),
                     0);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.skipped, 1);
    assert_non_null(strstr(p.notes.msgs[0], "entry[1]: Observation is not imported"));
    fhir_plan_free(&p);
}

static void test_problems_stop_growing_at_the_cap(void **state)
{
    fhir_problems p = {0};
    (void)state;
    for (int i = 0; i < FHIR_PROBLEMS_MAX + 5; i++)
        fhir_problem(&p, NULL, "problem %d", i);
    assert_int_equal(p.n, FHIR_PROBLEMS_MAX);
    assert_int_equal(fhir_problems_count(&p), FHIR_PROBLEMS_MAX + 5);
    fhir_problems_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dates_are_calendar_dates),
        cmocka_unit_test(test_ids_fhir_cannot_carry_get_a_stable_fhir_id),
        cmocka_unit_test(test_organization_round_trips),
        cmocka_unit_test(test_patient_round_trips),
        cmocka_unit_test(test_consent_round_trips),
        cmocka_unit_test(test_immunization_round_trips),
        cmocka_unit_test(test_task_round_trips),
        cmocka_unit_test(test_provider_round_trips),
        cmocka_unit_test(test_referral_states_map_on_task_statuses),
        cmocka_unit_test(test_bundle_writes_in_reference_order),
        cmocka_unit_test(test_bundle_reports_every_problem_with_its_path),
        cmocka_unit_test(test_bundle_refuses_what_is_not_a_bundle),
        cmocka_unit_test(test_bundle_skips_other_types_with_a_note),
        cmocka_unit_test(test_problems_stop_growing_at_the_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
