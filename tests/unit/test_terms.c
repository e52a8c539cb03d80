/*
** test_terms.c -- partnership terms and consent: who may send which data
** classes to whom, for which purpose; the reasons given when refused; the
** patient record cut down to the classes allowed.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "node.h"
#include "terms.h"

typedef cm_test_node fixture;

static void create(fixture *f, cm_kind kind, const char *json)
{
    cm_test_node_create(f, kind, json);
}

static int setup(void **state)
{
    fixture *f = cm_test_node_new();
    if (!f)
        return -1;
    create(f, CM_KIND_ORGANIZATION,
           "{\"id\":\"clinic\",\"name\":\"Main St Clinic\",\"kind\":\"clinic\"}");
    create(f, CM_KIND_ORGANIZATION,
           "{\"id\":\"cardio\",\"name\":\"Heart Partners\",\"kind\":\"clinic\",\"node\":\"b\"}");
    create(f, CM_KIND_ORGANIZATION,
           "{\"id\":\"pharm\",\"name\":\"Corner "
           "Pharmacy\",\"kind\":\"community_pharmacy\",\"node\":\"c\"}");
    create(f, CM_KIND_PATIENT,
           "{\"id\":\"pat-1\",\"name\":{\"family\":\"Rivera\",\"given\":[\"Ana\"]},"
           "\"birthDate\":\"1958-04-02\",\"gender\":\"female\",\"phone\":\"+15555550101\","
           "\"preferredChannel\":\"sms\",\"conditions\":[{\"code\":\"I48\"}]}");
    create(f, CM_KIND_PATIENT,
           "{\"id\":\"pat-2\",\"name\":{\"family\":\"Okafor\"},\"birthDate\":\"1970-01-01\","
           "\"gender\":\"male\"}");
    create(f, CM_KIND_PARTNERSHIP,
           "{\"id\":\"heart\",\"name\":\"Cardiology referrals\",\"purpose\":\"closed-loop "
           "referrals\",\"reviewCadence\":\"quarterly\",\"members\":[{\"organization\":\"clinic\"},"
           "{\"organization\":\"cardio\"}],\"terms\":[{\"receiver\":\"cardio\",\"classes\":["
           "\"demographics\",\"conditions\",\"notes\"],\"purposes\":[\"referral\"]},"
           "{\"receiver\":\"clinic\",\"classes\":[\"notes\"],\"purposes\":[\"referral\"]}]}");
    *state = f;
    return 0;
}

static int check(fixture *f, const char *from, const char *to, const char *purpose,
                 const char *patient, unsigned need, unsigned want, unsigned *allowed, cm_err *err)
{
    cm_terms_req r = {.from = from,
                      .to = to,
                      .purpose = purpose,
                      .patient = patient,
                      .need = need,
                      .want = want,
                      .today = "2026-01-01"};
    return cm_terms_check(f->model, &r, allowed, NULL, err);
}

static void test_allowed_classes_only(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed = 0;
    unsigned want = CM_CLASS_DEMOGRAPHICS | CM_CLASS_CONTACT | CM_CLASS_CONDITIONS;
    assert_int_equal(
        check(f, "clinic", "cardio", "referral", "pat-1", CM_CLASS_NOTES, want, &allowed, &err), 0);
    /* contact is wanted but not allowed: left out, not refused */
    assert_int_equal(allowed, CM_CLASS_NOTES | CM_CLASS_DEMOGRAPHICS | CM_CLASS_CONDITIONS);
}

static void test_needed_class_not_allowed_refused(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed = 1;
    assert_int_equal(check(f, "cardio", "clinic", "referral", "pat-1",
                           CM_CLASS_NOTES | CM_CLASS_CONDITIONS, 0, &allowed, &err),
                     CM_EPERM);
    assert_int_equal(allowed, 0);
    assert_non_null(strstr(err.msg, "partnership heart does not let clinic receive conditions"));
}

static void test_no_partnership_refused(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed;
    assert_int_equal(check(f, "clinic", "pharm", "immunization", NULL, 0, 0, &allowed, &err),
                     CM_EPERM);
    assert_non_null(strstr(err.msg, "no active partnership has both clinic and pharm"));
}

static void test_wrong_purpose_refused(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed;
    assert_int_equal(check(f, "clinic", "cardio", "outreach", NULL, 0, 0, &allowed, &err),
                     CM_EPERM);
    assert_non_null(strstr(err.msg, "no term letting cardio receive data for the purpose"));
}

static void test_missing_names_refused(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed;
    assert_int_equal(check(f, NULL, "cardio", "referral", NULL, 0, 0, &allowed, &err), CM_EPERM);
    assert_non_null(strstr(err.msg, "sending organization"));
}

static void test_partnership_out_of_force(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed;
    cJSON *patch = cJSON_Parse("{\"status\":\"suspended\"}");
    assert_int_equal(cm_model_update(f->model, CM_KIND_PARTNERSHIP, "heart", patch, NULL, &err), 0);
    cJSON_Delete(patch);
    assert_int_equal(check(f, "clinic", "cardio", "referral", NULL, 0, 0, &allowed, &err),
                     CM_EPERM);
    patch = cJSON_Parse("{\"status\":\"active\",\"start\":\"2025-01-01\",\"end\":\"2025-12-31\"}");
    assert_int_equal(cm_model_update(f->model, CM_KIND_PARTNERSHIP, "heart", patch, NULL, &err), 0);
    cJSON_Delete(patch);
    assert_int_equal(check(f, "clinic", "cardio", "referral", NULL, 0, 0, &allowed, &err),
                     CM_EPERM);
}

static void test_consent_deny_and_specific_permit(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed;
    create(f, CM_KIND_CONSENT,
           "{\"id\":\"c-1\",\"patient\":\"pat-2\",\"purpose\":\"referral\",\"decision\":\"deny\","
           "\"recorded\":\"2025-06-01T10:00:00Z\"}");
    assert_int_equal(
        check(f, "clinic", "cardio", "referral", "pat-2", 0, CM_CLASS_DEMOGRAPHICS, &allowed, &err),
        CM_EPERM);
    assert_non_null(strstr(err.msg, "patient pat-2 denied consent"));
    assert_non_null(strstr(err.msg, "c-1"));
    /* pat-1 is not affected */
    assert_int_equal(check(f, "clinic", "cardio", "referral", "pat-1", 0, 0, &allowed, &err), 0);
    /* a permit for this partner outranks the general deny, even when older */
    create(f, CM_KIND_CONSENT,
           "{\"id\":\"c-2\",\"patient\":\"pat-2\",\"purpose\":\"referral\",\"decision\":\"permit\","
           "\"organization\":\"cardio\",\"recorded\":\"2025-01-01T10:00:00Z\"}");
    assert_int_equal(check(f, "clinic", "cardio", "referral", "pat-2", 0, 0, &allowed, &err), 0);
    /* a later deny for this partner wins over the older permit */
    create(f, CM_KIND_CONSENT,
           "{\"id\":\"c-3\",\"patient\":\"pat-2\",\"purpose\":\"referral\",\"decision\":\"deny\","
           "\"organization\":\"cardio\",\"recorded\":\"2025-09-01T10:00:00Z\"}");
    assert_int_equal(check(f, "clinic", "cardio", "referral", "pat-2", 0, 0, &allowed, &err),
                     CM_EPERM);
    assert_non_null(strstr(err.msg, "c-3"));
}

static void test_expired_consent_ignored(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    unsigned allowed;
    create(f, CM_KIND_CONSENT,
           "{\"id\":\"c-9\",\"patient\":\"pat-1\",\"purpose\":\"referral\",\"decision\":\"deny\","
           "\"period\":{\"start\":\"2024-01-01\",\"end\":\"2024-12-31\"}}");
    assert_int_equal(check(f, "clinic", "cardio", "referral", "pat-1", 0, 0, &allowed, &err), 0);
}

static void test_filter_patient(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    cJSON *rec = NULL;
    assert_int_equal(cm_model_get(f->model, CM_KIND_PATIENT, "pat-1", &rec, &err), 0);
    cJSON *out = cm_terms_filter_patient(rec, CM_CLASS_DEMOGRAPHICS | CM_CLASS_CONDITIONS);
    assert_non_null(out);
    assert_non_null(cJSON_GetObjectItem(out, "id"));
    assert_non_null(cJSON_GetObjectItem(out, "name"));
    assert_non_null(cJSON_GetObjectItem(out, "conditions"));
    assert_null(cJSON_GetObjectItem(out, "phone"));
    assert_null(cJSON_GetObjectItem(out, "preferredChannel"));
    assert_null(cJSON_GetObjectItem(out, "meta"));
    assert_int_equal(cm_terms_patient_classes(out), CM_CLASS_DEMOGRAPHICS | CM_CLASS_CONDITIONS);
    cJSON_AddStringToObject(out, "secret", "x");
    assert_true(cm_terms_patient_classes(out) & CM_CLASS_NOTES);
    cJSON_Delete(out);
    cJSON_Delete(rec);
}

static void test_class_parse(void **state)
{
    cm_err err = {0};
    unsigned mask;
    cJSON *a = cJSON_Parse("[\"notes\",\"contact\"]");
    assert_int_equal(cm_class_parse(a, "send.classes", &mask, &err), 0);
    assert_int_equal(mask, CM_CLASS_NOTES | CM_CLASS_CONTACT);
    cJSON_Delete(a);
    a = cJSON_Parse("[\"notes\",\"genome\"]");
    assert_int_equal(cm_class_parse(a, "send.classes", &mask, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "send.classes[2]"));
    cJSON_Delete(a);
    char buf[64];
    assert_string_equal(cm_class_list(CM_CLASS_CONTACT | CM_CLASS_NOTES, buf, sizeof(buf)),
                        "contact,notes");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allowed_classes_only, setup, cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_needed_class_not_allowed_refused, setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_no_partnership_refused, setup, cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_purpose_refused, setup, cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_missing_names_refused, setup, cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_partnership_out_of_force, setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_consent_deny_and_specific_permit, setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_expired_consent_ignored, setup, cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_filter_patient, setup, cm_test_node_teardown),
        cmocka_unit_test(test_class_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
