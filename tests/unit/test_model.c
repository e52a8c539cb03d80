/*
** test_model.c -- the care primitives: create/get/update/find per kind, defaults
** and meta versioning, and a matrix of refused writes that must change nothing.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "clock.h"
#include "model.h"
#include "store.h"
#include "node.h"

typedef struct fx {
    char *dir; /* private temp directory, removed by teardown */
    cm_store *store;
    cm_clock *clock;
    cm_model *model;
} fx;

/* Test JSON is written with single quotes; they become double quotes. */
static cJSON *J(const char *text)
{
    size_t n = strlen(text);
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    for (size_t i = 0; i <= n; i++)
        buf[i] = text[i] == '\'' ? '"' : text[i];
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    if (!j)
        fail_msg("bad test JSON: %s", text);
    return j;
}

static void create_ok(fx *f, cm_kind kind, const char *json)
{
    cJSON *doc = J(json);
    cm_err err = {0};
    int rc = cm_model_create(f->model, kind, doc, NULL, &err);
    cJSON_Delete(doc);
    if (rc != 0)
        fail_msg("create %s: %s %s", json, cm_err_name(rc), err.msg);
}

static cJSON *get_ok(fx *f, cm_kind kind, const char *id)
{
    cJSON *out = NULL;
    cm_err err = {0};
    int rc = cm_model_get(f->model, kind, id, &out, &err);
    if (rc != 0)
        fail_msg("get %s: %s %s", id, cm_err_name(rc), err.msg);
    return out;
}

static cJSON *update_ok(fx *f, cm_kind kind, const char *id, const char *patch_json)
{
    cJSON *patch = J(patch_json), *out = NULL;
    cm_err err = {0};
    int rc = cm_model_update(f->model, kind, id, patch, &out, &err);
    cJSON_Delete(patch);
    if (rc != 0)
        fail_msg("update %s %s: %s %s", id, patch_json, cm_err_name(rc), err.msg);
    return out;
}

static const char *str_at(const cJSON *obj, const char *name)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, name));
    if (!s)
        fail_msg("no string member %s", name);
    return s;
}

static const char *meta_at(const cJSON *rec, const char *name)
{
    return str_at(cJSON_GetObjectItemCaseSensitive(rec, "meta"), name);
}

static long count_rows(fx *f, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
    return cm_test_count(f->store, sql);
}

/* Rows in the three record tables, to prove a refused write changed nothing. */
typedef struct counts {
    long record, ref, index;
} counts;

static counts row_counts(fx *f)
{
    counts c = {count_rows(f, "record"), count_rows(f, "record_ref"),
                count_rows(f, "record_index")};
    return c;
}

static void assert_same_counts(counts before, counts after)
{
    assert_int_equal(before.record, after.record);
    assert_int_equal(before.ref, after.ref);
    assert_int_equal(before.index, after.index);
}

static void check_refusal(const char *what, int rc, const cm_err *err, int code, const char *msg)
{
    if (rc != code || strcmp(err->msg, msg) != 0)
        fail_msg("%s\n   got %s: %s\n  want %s: %s", what, cm_err_name(rc), err->msg,
                 cm_err_name(code), msg);
}

static void refuse_create(fx *f, cm_kind kind, const char *json, int code, const char *msg)
{
    counts before = row_counts(f);
    cJSON *doc = J(json), *out = NULL;
    cm_err err = {0};
    int rc = cm_model_create(f->model, kind, doc, &out, &err);
    cJSON_Delete(doc);
    assert_null(out);
    check_refusal(json, rc, &err, code, msg);
    assert_same_counts(before, row_counts(f));
}

static void refuse_update(fx *f, cm_kind kind, const char *id, const char *patch_json, int code,
                          const char *msg)
{
    counts before = row_counts(f);
    cJSON *old = get_ok(f, kind, id), *patch = J(patch_json), *out = NULL, *now;
    cm_err err = {0};
    int rc = cm_model_update(f->model, kind, id, patch, &out, &err);
    cJSON_Delete(patch);
    assert_null(out);
    check_refusal(patch_json, rc, &err, code, msg);
    assert_same_counts(before, row_counts(f));
    now = get_ok(f, kind, id);
    assert_true(cJSON_Compare(old, now, true));
    cJSON_Delete(old);
    cJSON_Delete(now);
}

/* Ids found, joined with ','. */
static void find_ids(fx *f, cm_kind kind, const char *filter_json, const char *after, int limit,
                     char *buf, size_t bufsz)
{
    cJSON *filter = filter_json ? J(filter_json) : NULL, *out = NULL, *rec;
    cm_err err = {0};
    size_t len = 0;
    int rc = cm_model_find(f->model, kind, filter, after, limit, &out, &err);
    cJSON_Delete(filter);
    if (rc != 0)
        fail_msg("find %s: %s %s", filter_json, cm_err_name(rc), err.msg);
    buf[0] = '\0';
    cJSON_ArrayForEach(rec, out)
    {
        int n = snprintf(buf + len, bufsz - len, "%s%s", len ? "," : "", str_at(rec, "id"));
        assert_true(n > 0 && (size_t)n < bufsz - len);
        len += (size_t)n;
        assert_non_null(cJSON_GetObjectItemCaseSensitive(rec, "meta"));
    }
    cJSON_Delete(out);
}

#define assert_found(f, kind, filter, after, limit, expected)                                      \
    do {                                                                                           \
        char ids_[512];                                                                            \
        find_ids(f, kind, filter, after, limit, ids_, sizeof(ids_));                               \
        assert_string_equal(ids_, expected);                                                       \
    } while (0)

static void refuse_find(fx *f, cm_kind kind, const char *filter_json, int limit, int code,
                        const char *msg)
{
    cJSON *filter = filter_json ? J(filter_json) : NULL, *out = NULL;
    cm_err err = {0};
    int rc = cm_model_find(f->model, kind, filter, NULL, limit, &out, &err);
    cJSON_Delete(filter);
    assert_null(out);
    check_refusal(filter_json ? filter_json : "(no filter)", rc, &err, code, msg);
}

/* The stored text of a record, straight from the table. */
static char *stored_doc(fx *f, const char *kind, const char *id)
{
    sqlite3_stmt *st = NULL;
    char *doc = NULL;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(f->store),
                                        "SELECT doc FROM record WHERE kind = ?1 AND id = ?2", -1,
                                        &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        doc = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    assert_non_null(doc);
    return doc;
}

/* ---- fixture ---- */

static void seed(fx *f)
{
    create_ok(f, CM_KIND_ORGANIZATION,
              "{'id':'org-clinic','name':'Riverside Family Clinic','kind':'clinic',"
              "'node':'node-a'}");
    create_ok(f, CM_KIND_ORGANIZATION,
              "{'id':'org-pharm','name':'Main Street Pharmacy','kind':'community_pharmacy',"
              "'node':'node-b'}");
    create_ok(f, CM_KIND_ORGANIZATION,
              "{'id':'org-ph','name':'County Health Department','kind':'public_health',"
              "'node':'node-c'}");
    create_ok(f, CM_KIND_ORGANIZATION,
              "{'id':'org-hosp','name':'General Hospital','kind':'hospital','node':'node-a'}");
    create_ok(f, CM_KIND_PROVIDER,
              "{'id':'p-doc','name':{'family':'Okafor','given':['Ada']},'role':'physician',"
              "'organization':'org-clinic'}");
    create_ok(
        f, CM_KIND_PROVIDER,
        "{'id':'p-nurse','name':{'family':'Lind'},'role':'nurse','organization':'org-clinic'}");
    create_ok(
        f, CM_KIND_PROVIDER,
        "{'id':'p-rx','name':{'family':'Silva'},'role':'pharmacist','organization':'org-pharm'}");
    create_ok(
        f, CM_KIND_PROVIDER,
        "{'id':'p-rx2','name':{'family':'Chen'},'role':'pharmacist','organization':'org-pharm'}");
    create_ok(f, CM_KIND_PROVIDER,
              "{'id':'p-ph','name':{'family':'Diaz'},'role':'community_health_worker',"
              "'organization':'org-ph'}");
    create_ok(f, CM_KIND_PROVIDER,
              "{'id':'p-ph2','name':{'family':'Novak'},'role':'care_coordinator',"
              "'organization':'org-ph'}");
    create_ok(f, CM_KIND_PATIENT,
              "{'id':'pat-1','name':{'family':'Alvarez','given':['Rosa']},'birthDate':'1962-03-14',"
              "'gender':'female','language':'es-MX','preferredChannel':'sms',"
              "'phone':'+1 (555) 010-1000','email':'rosa@example.org',"
              "'conditions':[{'code':'E11','system':'http://hl7.org/fhir/sid/icd-10'},"
              "{'code':'I10'}],'identifiers':[{'system':'urn:mrn','value':'MRN-001'}],"
              "'generalPractitioner':'org-clinic'}");
    create_ok(f, CM_KIND_PATIENT,
              "{'id':'pat-2','name':{'family':'Brown'},'birthDate':'1950-01-01','gender':'male',"
              "'conditions':[{'code':'I10'}]}");
    create_ok(f, CM_KIND_PATIENT,
              "{'id':'pat-3','name':{'family':'Chu'},'birthDate':'1971-07-30','gender':'female',"
              "'conditions':[{'code':'E11'}]}");
    create_ok(
        f, CM_KIND_PATIENT,
        "{'id':'pat-4','name':{'family':'Dubois'},'birthDate':'1988-12-01','gender':'other'}");
    create_ok(f, CM_KIND_PATIENT,
              "{'id':'pat-5','name':{'family':'Eze'},'birthDate':'1940-05-05','gender':'male',"
              "'conditions':[{'code':'E11','system':'a'},{'code':'E11','system':'b'}]}");
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    cm_store_opts opts;
    cm_err err = {0};
    int64_t start = 0;
    assert_non_null(f);
    assert_non_null(f->dir = cm_test_tmpdir());
    cm_store_opts_init(&opts);
    opts.path = cm_test_path(f->dir, "caremesh.db");
    opts.create = true;
    opts.synchronous = CM_SYNC_OFF;
    if (cm_store_open(&f->store, &opts, &err) != 0)
        fail_msg("store: %s", err.msg);
    assert_true(cm_time_parse("2024-06-01T12:00:00Z", &start));
    assert_non_null(f->clock = cm_clock_new_virtual(start));
    assert_non_null(f->model = cm_model_new(f->store, f->clock));
    seed(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    cm_model_destroy(&f->model);
    cm_test_store_close(&f->store);
    cm_clock_destroy(&f->clock);
    cm_test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* ---- names ---- */

static void test_kind_names_round_trip(void **state)
{
    (void)state;
    for (int k = 0; k < CM_KIND__COUNT; k++)
        assert_int_equal(cm_kind_parse(cm_kind_name((cm_kind)k)), k);
    assert_string_equal(cm_kind_name(CM_KIND_CARE_TEAM), "care_team");
    assert_int_equal(cm_kind_parse("careteam"), -1);
    assert_int_equal(cm_kind_parse(NULL), -1);
    assert_null(cm_kind_name(CM_KIND__COUNT));
    const char *const *keys = cm_model_find_keys(CM_KIND_PARTNERSHIP);
    assert_string_equal(keys[0], "member");
    assert_string_equal(keys[1], "status");
    assert_null(keys[2]);
    assert_null(cm_model_find_keys(CM_KIND__COUNT)[0]);
}

/* ---- happy paths ---- */

static void test_create_fills_defaults_and_meta(void **state)
{
    fx *f = *state;
    cJSON *doc = J("{'id':'org-cbo','name':'Food Bank','kind':'community_org',"
                   "'address':{'line':['1 Elm St'],'city':'Springfield','postalCode':'12345'}}");
    cJSON *out = NULL, *got;
    cm_err err = {0};
    assert_int_equal(cm_model_create(f->model, CM_KIND_ORGANIZATION, doc, &out, &err), 0);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(out, "active")));
    assert_string_equal(meta_at(out, "versionId"), "1");
    assert_string_equal(meta_at(out, "created"), "2024-06-01T12:00:00.000Z");
    assert_string_equal(meta_at(out, "lastUpdated"), "2024-06-01T12:00:00.000Z");
    got = get_ok(f, CM_KIND_ORGANIZATION, "org-cbo");
    assert_true(cJSON_Compare(out, got, true));
    char *text = stored_doc(f, "organization", "org-cbo");
    assert_null(strstr(text, "meta"));
    assert_non_null(strstr(text, "\"active\":true"));
    free(text);
    cJSON_Delete(doc);
    cJSON_Delete(out);
    cJSON_Delete(got);
}

static void test_update_merges_patch_and_bumps_version(void **state)
{
    fx *f = *state;
    cJSON *out;
    assert_int_equal(cm_clock_advance(f->clock, 60000), 0);
    out = update_ok(f, CM_KIND_ORGANIZATION, "org-clinic",
                    "{'phone':'+1 555 010 2000','node':null,'address':{'city':'Springfield'},"
                    "'meta':{'versionId':'99'}}");
    assert_string_equal(meta_at(out, "versionId"), "2");
    assert_string_equal(meta_at(out, "created"), "2024-06-01T12:00:00.000Z");
    assert_string_equal(meta_at(out, "lastUpdated"), "2024-06-01T12:01:00.000Z");
    assert_null(cJSON_GetObjectItemCaseSensitive(out, "node"));
    assert_string_equal(str_at(out, "name"), "Riverside Family Clinic");
    cJSON_Delete(out);
    assert_found(f, CM_KIND_ORGANIZATION, "{'node':'node-a'}", NULL, 10, "org-hosp");

    out = update_ok(f, CM_KIND_ORGANIZATION, "org-clinic",
                    "{'id':'org-clinic','address':{'state':'IL'},'active':false}");
    cJSON *addr = cJSON_GetObjectItemCaseSensitive(out, "address");
    assert_string_equal(str_at(addr, "city"), "Springfield");
    assert_string_equal(str_at(addr, "state"), "IL");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(out, "active")));
    assert_string_equal(meta_at(out, "versionId"), "3");
    cJSON_Delete(out);

    /* null resets a defaulted field to its default */
    out = update_ok(f, CM_KIND_ORGANIZATION, "org-clinic", "{'active':null}");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(out, "active")));
    cJSON_Delete(out);
}

static void test_update_and_get_refuse_what_is_not_there(void **state)
{
    fx *f = *state;
    cJSON *patch = J("{'name':'x'}"), *out = NULL;
    cm_err err = {0};
    int rc = cm_model_update(f->model, CM_KIND_ORGANIZATION, "nope", patch, &out, &err);
    check_refusal("update", rc, &err, CM_ENOTFOUND, "organization \"nope\" not found");
    rc = cm_model_get(f->model, CM_KIND_PATIENT, "p-doc", &out, &err);
    check_refusal("get", rc, &err, CM_ENOTFOUND, "patient \"p-doc\" not found");
    assert_null(out);
    cJSON_Delete(patch);
    refuse_update(f, CM_KIND_ORGANIZATION, "org-clinic", "{'id':'org-other'}", CM_EINVAL,
                  "organization.id: cannot be changed (the record is \"org-clinic\")");
    refuse_update(f, CM_KIND_ORGANIZATION, "org-clinic", "{'id':null}", CM_EINVAL,
                  "organization.id: cannot be changed (the record is \"org-clinic\")");
    refuse_update(f, CM_KIND_ORGANIZATION, "org-clinic", "[1]", CM_EINVAL,
                  "organization: the patch must be a JSON object, got an array");
}

static void test_provider_find_by_role_and_organization(void **state)
{
    fx *f = *state;
    cJSON *p = get_ok(f, CM_KIND_PROVIDER, "p-doc");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "active")));
    cJSON_Delete(p);
    assert_found(f, CM_KIND_PROVIDER, "{'role':'pharmacist'}", NULL, 10, "p-rx,p-rx2");
    assert_found(f, CM_KIND_PROVIDER, "{'organization':'org-clinic'}", NULL, 10, "p-doc,p-nurse");
    assert_found(f, CM_KIND_PROVIDER, "{'organization':'org-clinic','role':'nurse'}", NULL, 10,
                 "p-nurse");
    assert_found(f, CM_KIND_PROVIDER, "{'organization':'org-clinic','role':'pharmacist'}", NULL, 10,
                 "");
    assert_found(f, CM_KIND_ORGANIZATION, "{'kind':'hospital'}", NULL, 10, "org-hosp");
    assert_found(f, CM_KIND_ORGANIZATION, "{'node':'node-a'}", NULL, 10, "org-clinic,org-hosp");
}

static void test_patient_find_by_condition_returns_exactly_the_right_patients(void **state)
{
    fx *f = *state;
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E11'}", NULL, 100, "pat-1,pat-3,pat-5");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'I10'}", NULL, 100, "pat-1,pat-2");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E11','gender':'male'}", NULL, 100, "pat-5");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E1'}", NULL, 100, "");
    assert_found(f, CM_KIND_PATIENT, "{'identifier':'MRN-001'}", NULL, 100, "pat-1");
    assert_found(f, CM_KIND_PATIENT, "{'language':'es-MX','preferredChannel':'sms'}", NULL, 100,
                 "pat-1");
    assert_found(f, CM_KIND_PATIENT, "{'generalPractitioner':'org-clinic'}", NULL, 100, "pat-1");
    assert_found(f, CM_KIND_PATIENT, "{'birthDate':'1950-01-01'}", NULL, 100, "pat-2");
    /* a code given twice is indexed once */
    assert_int_equal(count_rows(f, "record_index WHERE id = 'pat-5' AND key = 'condition'"), 1);

    /* the index follows updates */
    cJSON_Delete(update_ok(f, CM_KIND_PATIENT, "pat-3", "{'conditions':[{'code':'J45'}]}"));
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E11'}", NULL, 100, "pat-1,pat-5");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'J45'}", NULL, 100, "pat-3");
}

static void test_find_pages_with_after_and_limit(void **state)
{
    fx *f = *state;
    assert_found(f, CM_KIND_PATIENT, NULL, NULL, 2, "pat-1,pat-2");
    assert_found(f, CM_KIND_PATIENT, NULL, "pat-2", 2, "pat-3,pat-4");
    assert_found(f, CM_KIND_PATIENT, "{}", "pat-4", 2, "pat-5");
    assert_found(f, CM_KIND_PATIENT, "[]", "pat-5", 2, "");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E11'}", NULL, 1, "pat-1");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E11'}", "pat-1", 1, "pat-3");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E11'}", "pat-3", 1, "pat-5");
    assert_found(f, CM_KIND_PATIENT, "{'condition':'E11'}", "pat-5", 1, "");
    assert_found(f, CM_KIND_PATIENT, NULL, "", 1000, "pat-1,pat-2,pat-3,pat-4,pat-5");
}

static const char *partnership_json =
    "{'id':'ps-vax','name':'Flu vaccination drive',"
    "'purpose':'Community pharmacy gives flu shots for the health department',"
    "'members':[{'organization':'org-ph','offers':['vaccine supply'],'requests':['dose records']},"
    "{'organization':'org-pharm','offers':['vaccination'],'requests':['outreach lists']}],"
    "'terms':[{'receiver':'org-ph','classes':['demographics','immunizations'],"
    "'purposes':['immunization']}],"
    "'champions':[{'organization':'org-pharm','champion':'p-rx','backup':'p-rx2'},"
    "{'champion':'p-ph','backup':'p-ph2'}],"
    "'kpis':[{'name':'doses_given','description':'Doses given','target':500,'unit':'doses'}],"
    "'reviewCadence':'quarterly','start':'2024-01-01','end':'2024-12-31'}";

static void test_partnership_create_fills_defaults_refs_and_index(void **state)
{
    fx *f = *state;
    cJSON *p;
    create_ok(f, CM_KIND_PARTNERSHIP, partnership_json);
    p = get_ok(f, CM_KIND_PARTNERSHIP, "ps-vax");
    assert_string_equal(str_at(p, "status"), "active");
    cJSON *second = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(p, "champions"), 1);
    assert_string_equal(str_at(second, "organization"), "org-ph");
    cJSON_Delete(p);
    /* 2 members + 1 term receiver + 2 champions x (organization, champion, backup) */
    assert_int_equal(count_rows(f, "record_ref WHERE kind = 'partnership' AND id = 'ps-vax'"), 9);
    assert_int_equal(count_rows(f, "record_ref WHERE id = 'ps-vax' AND "
                                   "field = 'members[1].organization' AND to_id = 'org-pharm'"),
                     1);
    assert_int_equal(count_rows(f, "record_ref WHERE id = 'ps-vax' AND "
                                   "field = 'champions[1].organization' AND to_id = 'org-ph'"),
                     1);
    assert_found(f, CM_KIND_PARTNERSHIP, "{'member':'org-pharm'}", NULL, 10, "ps-vax");
    assert_found(f, CM_KIND_PARTNERSHIP, "{'member':'org-clinic'}", NULL, 10, "");
    assert_found(f, CM_KIND_PARTNERSHIP, "{'member':'org-ph','status':'active'}", NULL, 10,
                 "ps-vax");
    p = update_ok(f, CM_KIND_PARTNERSHIP, "ps-vax", "{'status':'suspended'}");
    cJSON_Delete(p);
    assert_found(f, CM_KIND_PARTNERSHIP, "{'status':'active'}", NULL, 10, "");
    assert_found(f, CM_KIND_PARTNERSHIP, "{'status':'suspended'}", NULL, 10, "ps-vax");
}

static void test_consent_create_and_find(void **state)
{
    fx *f = *state;
    cJSON *c;
    create_ok(f, CM_KIND_CONSENT,
              "{'id':'c-1','patient':'pat-1','purpose':'outreach','organization':'org-pharm',"
              "'decision':'permit','period':{'start':'2024-01-01','end':'2024-12-31'},"
              "'recorded':'2024-01-02T09:30:00-05:00'}");
    create_ok(f, CM_KIND_CONSENT,
              "{'id':'c-2','patient':'pat-1','purpose':'referral','decision':'deny',"
              "'period':{'start':'2024-03-01','end':'2024-03-01'},'note':'Call first.\\nThanks'}");
    c = get_ok(f, CM_KIND_CONSENT, "c-2");
    assert_string_equal(str_at(c, "status"), "active");
    cJSON_Delete(c);
    assert_found(f, CM_KIND_CONSENT, "{'patient':'pat-1'}", NULL, 10, "c-1,c-2");
    assert_found(f, CM_KIND_CONSENT, "{'patient':'pat-1','purpose':'outreach'}", NULL, 10, "c-1");
    assert_found(f, CM_KIND_CONSENT, "{'decision':'deny'}", NULL, 10, "c-2");
    assert_found(f, CM_KIND_CONSENT, "{'organization':'org-pharm'}", NULL, 10, "c-1");
}

static void test_care_team_fills_on_behalf_of(void **state)
{
    fx *f = *state;
    cJSON *t, *parts;
    create_ok(f, CM_KIND_CARE_TEAM,
              "{'id':'ct-1','patient':'pat-1','name':'Diabetes team','participants':["
              "{'member':'p-doc','role':'primary_care_physician'},"
              "{'member':'p-rx','role':'clinical_pharmacist','onBehalfOf':'org-clinic'}]}");
    t = get_ok(f, CM_KIND_CARE_TEAM, "ct-1");
    parts = cJSON_GetObjectItemCaseSensitive(t, "participants");
    assert_string_equal(str_at(t, "status"), "active");
    assert_string_equal(str_at(cJSON_GetArrayItem(parts, 0), "onBehalfOf"), "org-clinic");
    assert_string_equal(str_at(cJSON_GetArrayItem(parts, 1), "onBehalfOf"), "org-clinic");
    cJSON_Delete(t);
    assert_found(f, CM_KIND_CARE_TEAM, "{'member':'p-rx'}", NULL, 10, "ct-1");
    assert_found(f, CM_KIND_CARE_TEAM, "{'patient':'pat-1','member':'p-nurse'}", NULL, 10, "");
    assert_int_equal(count_rows(f, "record_ref WHERE id = 'ct-1' AND "
                                   "field = 'participants[0].onBehalfOf'"),
                     1);
}

static void test_task_defaults_and_find(void **state)
{
    fx *f = *state;
    cJSON *t;
    create_ok(f, CM_KIND_TASK,
              "{'id':'t-1','title':'Call the specialist office','organization':'org-clinic',"
              "'patient':'pat-1','ownerRole':'care_coordinator','due':'2024-06-04'}");
    create_ok(f, CM_KIND_TASK,
              "{'id':'t-2','title':'Review medications','organization':'org-pharm',"
              "'patient':'pat-1','owner':'p-rx','status':'in-progress','priority':'urgent',"
              "'due':'2024-06-03T17:00:00Z'}");
    t = get_ok(f, CM_KIND_TASK, "t-1");
    assert_string_equal(str_at(t, "status"), "requested");
    assert_string_equal(str_at(t, "priority"), "routine");
    cJSON_Delete(t);
    assert_found(f, CM_KIND_TASK, "{'status':'requested'}", NULL, 10, "t-1");
    assert_found(f, CM_KIND_TASK, "{'patient':'pat-1'}", NULL, 10, "t-1,t-2");
    assert_found(f, CM_KIND_TASK, "{'owner':'p-rx'}", NULL, 10, "t-2");
    assert_found(f, CM_KIND_TASK, "{'ownerRole':'care_coordinator'}", NULL, 10, "t-1");
    assert_found(f, CM_KIND_TASK, "{'organization':'org-pharm'}", NULL, 10, "t-2");
    t = update_ok(f, CM_KIND_TASK, "t-1", "{'status':'completed'}");
    cJSON_Delete(t);
    assert_found(f, CM_KIND_TASK, "{'status':'completed'}", NULL, 10, "t-1");
}

static void test_empty_object_counts_as_empty_array(void **state)
{
    fx *f = *state;
    cJSON *p;
    create_ok(f, CM_KIND_PATIENT,
              "{'id':'pat-6','name':{'family':'Fox','given':{}},'birthDate':'2000-02-29',"
              "'gender':'unknown','conditions':{},'address':[]}");
    p = get_ok(f, CM_KIND_PATIENT, "pat-6");
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(p, "conditions")));
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(p, "address")));
    cJSON_Delete(p);
    char *text = stored_doc(f, "patient", "pat-6");
    assert_non_null(strstr(text, "\"given\":[]"));
    assert_non_null(strstr(text, "\"conditions\":[]"));
    free(text);
}

static void test_count(void **state)
{
    fx *f = *state;
    long n = -1;
    cm_err err = {0};
    assert_int_equal(cm_model_count(f->model, CM_KIND_PATIENT, &n, &err), 0);
    assert_int_equal(n, 5);
    assert_int_equal(cm_model_count(f->model, CM_KIND_TASK, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(cm_model_count(f->model, CM_KIND__COUNT, &n, &err), CM_EINVAL);
}

/* ---- refused writes: exact code and message, nothing changed ---- */

static void test_refuses_missing_and_unknown_fields(void **state)
{
    fx *f = *state;
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org-x','kind':'clinic'}", CM_EINVAL,
                  "organization.name: required");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'name':'X','kind':'clinic'}", CM_EINVAL,
                  "organization.id: required");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X'},'birthDate':'1990-01-01',"
                  "'gender':'female','foo':1}",
                  CM_EINVAL, "patient.foo: unknown field");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X'},'birthdate':'1990-01-01',"
                  "'gender':'female'}",
                  CM_EINVAL, "patient.birthdate: unknown field (did you mean \"birthDate\"?)");
    refuse_create(
        f, CM_KIND_PATIENT,
        "{'id':'pat-x','name':{'given':['X']},'birthDate':'1990-01-01','gender':'female'}",
        CM_EINVAL, "patient.name.family: required");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org-x','name':'A','name':'B','kind':'clinic'}",
                  CM_EINVAL, "organization.name: given twice");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org-x','name':'   ','kind':'clinic'}", CM_EINVAL,
                  "organization.name: must not be empty");
    refuse_create(f, CM_KIND_ORGANIZATION, "[]", CM_EINVAL,
                  "organization: the record must be a JSON object, got an array");
}

static void test_refuses_unknown_enum_values(void **state)
{
    fx *f = *state;
    refuse_create(
        f, CM_KIND_PROVIDER,
        "{'id':'p-x','name':{'family':'X'},'role':'surgeonx','organization':'org-clinic'}",
        CM_EINVAL,
        "provider.role: unknown value \"surgeonx\" (expected one of: physician, "
        "pharmacist, nurse, nurse_practitioner, physician_assistant, dietitian, "
        "social_worker, care_coordinator, community_health_worker, pharmacy_technician, "
        "medical_assistant, other)");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X'},'birthDate':'1990-01-01','gender':'F'}",
                  CM_EINVAL,
                  "patient.gender: unknown value \"F\" (expected one of: male, female, other, "
                  "unknown)");
}

static void test_refuses_bad_dates(void **state)
{
    fx *f = *state;
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X'},'birthDate':'2023-02-30','gender':'male'}",
                  CM_EINVAL, "patient.birthDate: \"2023-02-30\" is not a valid date (YYYY-MM-DD)");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X'},'birthDate':'yesterday','gender':'male'}",
                  CM_EINVAL, "patient.birthDate: \"yesterday\" is not a valid date (YYYY-MM-DD)");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X'},'birthDate':'2024-06-02','gender':'male'}",
                  CM_EINVAL,
                  "patient.birthDate: \"2024-06-02\" is in the future (today is 2024-06-01)");
    create_ok(f, CM_KIND_PATIENT,
              "{'id':'pat-new','name':{'family':'X'},'birthDate':'2024-06-01','gender':'male'}");
    refuse_create(f, CM_KIND_TASK,
                  "{'id':'t-x','title':'x','organization':'org-clinic','ownerRole':'nurse',"
                  "'due':'2024-06-03T25:00:00Z'}",
                  CM_EINVAL,
                  "task.due: \"2024-06-03T25:00:00Z\" is not a valid date or date-time "
                  "(YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with Z or an offset)");
    refuse_update(f, CM_KIND_PATIENT, "pat-1", "{'birthDate':'1962-02-30'}", CM_EINVAL,
                  "patient.birthDate: \"1962-02-30\" is not a valid date (YYYY-MM-DD)");
}

static void test_refuses_dangling_references(void **state)
{
    fx *f = *state;
    refuse_create(f, CM_KIND_PROVIDER,
                  "{'id':'p-x','name':{'family':'X'},'role':'nurse','organization':'org-x'}",
                  CM_EREF, "provider.organization: no organization with id \"org-x\"");
    refuse_create(f, CM_KIND_PARTNERSHIP,
                  "{'id':'ps-x','name':'X','purpose':'Y','reviewCadence':'annual',"
                  "'members':[{'organization':'org-ph'},{'organization':'org-x'}]}",
                  CM_EREF,
                  "partnership.members[1].organization: no organization with id \"org-x\"");
    refuse_create(f, CM_KIND_CARE_TEAM,
                  "{'id':'ct-x','patient':'pat-1','participants':[{'member':'org-clinic',"
                  "'role':'x'}]}",
                  CM_EREF, "care_team.participants[0].member: no provider with id \"org-clinic\"");
    refuse_update(f, CM_KIND_PROVIDER, "p-doc", "{'organization':'org-gone'}", CM_EREF,
                  "provider.organization: no organization with id \"org-gone\"");
}

static void test_refuses_duplicate_id(void **state)
{
    fx *f = *state;
    refuse_create(f, CM_KIND_ORGANIZATION,
                  "{'id':'org-clinic','name':'Another clinic','kind':'clinic'}", CM_EEXISTS,
                  "organization \"org-clinic\" already exists");
    /* the same id in another kind is a different record */
    create_ok(f, CM_KIND_TASK,
              "{'id':'org-clinic','title':'x','organization':'org-clinic','ownerRole':'nurse'}");
}

static void test_refuses_bad_ids(void **state)
{
    fx *f = *state;
    char json[512], longid[130];
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org a','name':'X','kind':'clinic'}", CM_EINVAL,
                  "organization.id: \"org a\" has a character not allowed in ids: ' ' at position "
                  "4 (allowed: A-Z a-z 0-9 . _ : -)");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org/1','name':'X','kind':'clinic'}", CM_EINVAL,
                  "organization.id: \"org/1\" has a character not allowed in ids: '/' at position "
                  "4 (allowed: A-Z a-z 0-9 . _ : -)");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'caf\\u00e9','name':'X','kind':'clinic'}",
                  CM_EINVAL,
                  "organization.id: \"caf\xc3\xa9\" has a character not allowed in ids: byte 0xc3 "
                  "at position 4 (allowed: A-Z a-z 0-9 . _ : -)");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'','name':'X','kind':'clinic'}", CM_EINVAL,
                  "organization.id: must not be empty");
    memset(longid, 'a', 129);
    longid[129] = '\0';
    snprintf(json, sizeof(json), "{'id':'%s','name':'X','kind':'clinic'}", longid);
    refuse_create(f, CM_KIND_ORGANIZATION, json, CM_EINVAL,
                  "organization.id: too long (129 bytes, at most 128)");
    longid[128] = '\0';
    snprintf(json, sizeof(json), "{'id':'%s','name':'X','kind':'clinic'}", longid);
    create_ok(f, CM_KIND_ORGANIZATION, json);
    create_ok(f, CM_KIND_ORGANIZATION, "{'id':'urn:org.A_b-9','name':'X','kind':'clinic'}");
    refuse_create(f, CM_KIND_PROVIDER,
                  "{'id':'p-x','name':{'family':'X'},'role':'nurse','organization':'org x'}",
                  CM_EINVAL,
                  "provider.organization: \"org x\" has a character not allowed in ids: ' ' at "
                  "position 4 (allowed: A-Z a-z 0-9 . _ : -)");
}

static void test_refuses_wrong_types(void **state)
{
    fx *f = *state;
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org-x','name':42,'kind':'clinic'}", CM_EINVAL,
                  "organization.name: expected a string, got a number");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':7,'name':'X','kind':'clinic'}", CM_EINVAL,
                  "organization.id: expected a string, got a number");
    refuse_create(f, CM_KIND_ORGANIZATION,
                  "{'id':'org-x','name':'X','kind':'clinic','active':'yes'}", CM_EINVAL,
                  "organization.active: expected true or false, got a string");
    refuse_create(f, CM_KIND_ORGANIZATION,
                  "{'id':'org-x','name':'X','kind':'clinic','address':'1 Elm St'}", CM_EINVAL,
                  "organization.address: expected an object, got a string");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org-x','name':null,'kind':'clinic'}", CM_EINVAL,
                  "organization.name: expected a string, got null");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X','given':'Ann'},'birthDate':'1990-01-01',"
                  "'gender':'female'}",
                  CM_EINVAL, "patient.name.given: expected an array, got a string");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X','given':['Ann',3]},'birthDate':'1990-01-01',"
                  "'gender':'female'}",
                  CM_EINVAL, "patient.name.given[1]: expected a string, got a number");
    refuse_create(f, CM_KIND_PATIENT,
                  "{'id':'pat-x','name':{'family':'X'},'birthDate':'1990-01-01',"
                  "'gender':'female','conditions':[{'system':'icd10'}]}",
                  CM_EINVAL, "patient.conditions[0].code: required");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org-x','name':'Line\\nbreak','kind':'clinic'}",
                  CM_EINVAL, "organization.name: contains a control character (0x0a at byte 5)");
    refuse_create(f, CM_KIND_ORGANIZATION, "{'id':'org-x','name':'caf\xe9','kind':'clinic'}",
                  CM_EINVAL, "organization.name: not valid UTF-8");
    char json[1200], name[1026];
    memset(name, 'n', 1025);
    name[1025] = '\0';
    snprintf(json, sizeof(json), "{'id':'org-x','name':'%s','kind':'clinic'}", name);
    refuse_create(f, CM_KIND_ORGANIZATION, json, CM_EINVAL,
                  "organization.name: too long (1025 bytes, at most 1024)");
    create_ok(f, CM_KIND_ORGANIZATION,
              "{'id':'org-u','name':'Cl\\u00ednica Jos\\u00e9 Mart\\u00ed','kind':'clinic'}");
}

static void test_refuses_bad_contact_formats(void **state)
{
    fx *f = *state;
    static const char *base = "{'id':'pat-x','name':{'family':'X'},'birthDate':'1990-01-01',"
                              "'gender':'female',";
    static const struct {
        const char *member, *msg;
    } cases[] = {
        {"'email':'rosa.example.org'",
         "patient.email: \"rosa.example.org\" is not an email address (expected name@domain)"},
        {"'email':'rosa@@example.org'",
         "patient.email: \"rosa@@example.org\" is not an email address (expected name@domain)"},
        {"'email':'rosa @example.org'",
         "patient.email: \"rosa @example.org\" is not an email address (expected name@domain)"},
        {"'phone':'555-12'", "patient.phone: \"555-12\" is not a phone number (digits, spaces and "
                             "+ - ( ) . with at least 7 digits)"},
        {"'phone':'call me'", "patient.phone: \"call me\" is not a phone number (digits, spaces "
                              "and + - ( ) . with at least 7 digits)"},
        {"'language':'en_US'", "patient.language: \"en_US\" is not a language tag (BCP 47, like "
                               "\"en\" or \"es-MX\")"},
        {"'language':'e'", "patient.language: \"e\" is not a language tag (BCP 47, like \"en\" "
                           "or \"es-MX\")"},
        {"'preferredChannel':'fax'", "patient.preferredChannel: unknown value \"fax\" (expected "
                                     "one of: phone, sms, email, mail, portal)"},
    };
    char json[512];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(json, sizeof(json), "%s%s}", base, cases[i].member);
        refuse_create(f, CM_KIND_PATIENT, json, CM_EINVAL, cases[i].msg);
    }
    create_ok(f, CM_KIND_PATIENT,
              "{'id':'pat-ok','name':{'family':'X'},'birthDate':'1990-01-01','gender':'female',"
              "'email':'a.b+c@example.org','phone':'(555) 010.1234','language':'zh-Hant-TW'}");
}

/* A partnership document with members/terms/champions/kpis replaced by the given JSON text. */
static void refuse_partnership(fx *f, const char *parts, int code, const char *msg)
{
    char json[2048];
    snprintf(json, sizeof(json),
             "{'id':'ps-x','name':'X','purpose':'Y','reviewCadence':'annual',%s}", parts);
    refuse_create(f, CM_KIND_PARTNERSHIP, json, code, msg);
}

#define TWO_MEMBERS "'members':[{'organization':'org-ph'},{'organization':'org-pharm'}]"

static void test_refuses_broken_partnerships(void **state)
{
    fx *f = *state;
    refuse_partnership(f, "'members':[{'organization':'org-ph'}]", CM_EINVAL,
                       "partnership.members: needs at least 2 items, got 1");
    refuse_partnership(f, "'members':{}", CM_EINVAL,
                       "partnership.members: needs at least 2 items, got 0");
    refuse_partnership(f,
                       "'members':[{'organization':'org-ph'},{'organization':'org-pharm'},"
                       "{'organization':'org-ph'}]",
                       CM_EINVAL,
                       "partnership.members[2].organization: \"org-ph\" is listed twice (also at "
                       "members[0])");
    refuse_partnership(f,
                       TWO_MEMBERS ",'terms':[{'receiver':'org-hosp','classes':['contact'],"
                                   "'purposes':['outreach']}]",
                       CM_EINVAL,
                       "partnership.terms[0].receiver: \"org-hosp\" is not a member of this "
                       "partnership");
    refuse_partnership(f,
                       TWO_MEMBERS ",'terms':[{'receiver':'org-ph','classes':[],"
                                   "'purposes':['outreach']}]",
                       CM_EINVAL, "partnership.terms[0].classes: needs at least 1 item, got 0");
    refuse_partnership(f,
                       TWO_MEMBERS ",'terms':[{'receiver':'org-ph','classes':['contact','labs'],"
                                   "'purposes':['outreach']}]",
                       CM_EINVAL,
                       "partnership.terms[0].classes[1]: unknown value \"labs\" (expected one of: "
                       "demographics, contact, conditions, medications, immunizations, notes)");
    refuse_partnership(f,
                       TWO_MEMBERS ",'terms':[{'receiver':'org-ph','classes':['contact',"
                                   "'contact'],'purposes':['outreach']}]",
                       CM_EINVAL,
                       "partnership.terms[0].classes[1]: \"contact\" is listed twice (also at "
                       "classes[0])");
    refuse_partnership(f, TWO_MEMBERS ",'champions':[{'champion':'p-rx'}]", CM_EINVAL,
                       "partnership.champions[0].backup: required");
    refuse_partnership(f, TWO_MEMBERS ",'champions':[{'champion':'p-rx','backup':'p-rx'}]",
                       CM_EINVAL,
                       "partnership.champions[0].backup: must be a different provider from the "
                       "champion (both are \"p-rx\")");
    refuse_partnership(f,
                       TWO_MEMBERS ",'champions':[{'organization':'org-pharm','champion':'p-rx',"
                                   "'backup':'p-doc'}]",
                       CM_EINVAL,
                       "partnership.champions[0].backup: provider \"p-doc\" belongs to "
                       "organization \"org-clinic\", not \"org-pharm\"");
    refuse_partnership(f,
                       TWO_MEMBERS ",'champions':[{'organization':'org-pharm','champion':'p-ph',"
                                   "'backup':'p-rx'}]",
                       CM_EINVAL,
                       "partnership.champions[0].champion: provider \"p-ph\" belongs to "
                       "organization \"org-ph\", not \"org-pharm\"");
    refuse_partnership(f, TWO_MEMBERS ",'champions':[{'champion':'p-doc','backup':'p-nurse'}]",
                       CM_EINVAL,
                       "partnership.champions[0].champion: provider \"p-doc\" belongs to "
                       "organization \"org-clinic\", which is not a member of this partnership");
    refuse_partnership(f, TWO_MEMBERS ",'start':'2024-05-01','end':'2024-04-30'", CM_EINVAL,
                       "partnership.end: \"2024-04-30\" is before start \"2024-05-01\"");
    refuse_partnership(f, TWO_MEMBERS ",'kpis':[{'name':'doses given'}]", CM_EINVAL,
                       "partnership.kpis[0].name: \"doses given\" is not a name (letters, digits, "
                       "'_', '.', '-', starting with a letter or '_')");
    refuse_partnership(f, TWO_MEMBERS ",'kpis':[{'name':'doses'},{'name':'doses'}]", CM_EINVAL,
                       "partnership.kpis[1].name: \"doses\" is listed twice (also at kpis[0])");
    refuse_partnership(f, TWO_MEMBERS ",'kpis':[{'name':'doses','target':'ten'}]", CM_EINVAL,
                       "partnership.kpis[0].target: expected a number, got a string");
    refuse_partnership(f, TWO_MEMBERS ",'reviewCadence':'weekly'", CM_EINVAL,
                       "partnership.reviewCadence: given twice");
    refuse_create(f, CM_KIND_PARTNERSHIP, "{'id':'ps-x','name':'X','purpose':'Y'," TWO_MEMBERS "}",
                  CM_EINVAL, "partnership.reviewCadence: required");
    /* an update that would leave one member is refused as a whole */
    create_ok(f, CM_KIND_PARTNERSHIP, partnership_json);
    refuse_update(f, CM_KIND_PARTNERSHIP, "ps-vax", "{'members':[{'organization':'org-ph'}]}",
                  CM_EINVAL, "partnership.members: needs at least 2 items, got 1");
}

static void test_refuses_consent_ending_before_it_starts(void **state)
{
    fx *f = *state;
    refuse_create(f, CM_KIND_CONSENT,
                  "{'id':'c-x','patient':'pat-1','purpose':'outreach','decision':'permit',"
                  "'period':{'start':'2024-02-01','end':'2024-01-01'}}",
                  CM_EINVAL, "consent.period.end: \"2024-01-01\" is before start \"2024-02-01\"");
    refuse_create(f, CM_KIND_CONSENT,
                  "{'id':'c-x','patient':'pat-1','purpose':'marketing','decision':'permit'}",
                  CM_EINVAL,
                  "consent.purpose: unknown value \"marketing\" (expected one of: referral, "
                  "outreach, immunization, care_coordination)");
    refuse_create(f, CM_KIND_CONSENT,
                  "{'id':'c-x','patient':'pat-1','purpose':'outreach','decision':'permit',"
                  "'period':{'end':'2024-01-01'}}",
                  CM_EINVAL, "consent.period.start: required");
}

static void test_refuses_task_without_owner_or_role(void **state)
{
    fx *f = *state;
    refuse_create(f, CM_KIND_TASK, "{'id':'t-x','title':'x','organization':'org-clinic'}",
                  CM_EINVAL,
                  "task.owner: required when there is no ownerRole (a task needs an owner, an "
                  "ownerRole or both)");
    create_ok(f, CM_KIND_TASK,
              "{'id':'t-1','title':'x','organization':'org-clinic','owner':'p-doc'}");
    refuse_update(f, CM_KIND_TASK, "t-1", "{'owner':null}", CM_EINVAL,
                  "task.owner: required when there is no ownerRole (a task needs an owner, an "
                  "ownerRole or both)");
    refuse_update(f, CM_KIND_TASK, "t-1", "{'status':'done'}", CM_EINVAL,
                  "task.status: unknown value \"done\" (expected one of: draft, requested, "
                  "received, accepted, rejected, ready, cancelled, in-progress, on-hold, failed, "
                  "completed, entered-in-error)");
}

static void test_refused_write_inside_caller_transaction_keeps_caller_work(void **state)
{
    fx *f = *state;
    cm_err err = {0};
    assert_int_equal(cm_store_begin(f->store, &err), 0);
    create_ok(f, CM_KIND_ORGANIZATION, "{'id':'org-new','name':'New','kind':'payer'}");
    refuse_create(f, CM_KIND_PROVIDER,
                  "{'id':'p-x','name':{'family':'X'},'role':'nurse','organization':'org-x'}",
                  CM_EREF, "provider.organization: no organization with id \"org-x\"");
    assert_true(cm_store_in_tx(f->store));
    assert_int_equal(cm_store_commit(f->store, &err), 0);
    cJSON_Delete(get_ok(f, CM_KIND_ORGANIZATION, "org-new"));
    assert_int_equal(count_rows(f, "record WHERE id = 'p-x'"), 0);
}

static void test_find_refuses_bad_filters_and_limits(void **state)
{
    fx *f = *state;
    refuse_find(f, CM_KIND_PATIENT, "{'foo':'x'}", 10, CM_EINVAL,
                "find patient: unknown key \"foo\" (expected one of: condition, identifier, "
                "gender, language, preferredChannel, generalPractitioner, birthDate)");
    refuse_find(f, CM_KIND_PATIENT, "{'name':'Alvarez'}", 10, CM_EINVAL,
                "find patient: unknown key \"name\" (expected one of: condition, identifier, "
                "gender, language, preferredChannel, generalPractitioner, birthDate)");
    refuse_find(f, CM_KIND_PATIENT, "{'gender':1}", 10, CM_EINVAL,
                "find patient: the value of \"gender\" must be a string, got a number");
    refuse_find(f, CM_KIND_TASK, "{'status':true}", 10, CM_EINVAL,
                "find task: the value of \"status\" must be a string, got a boolean");
    refuse_find(f, CM_KIND_TASK, "{'status':'open'}", 10, CM_EINVAL,
                "find task: status: unknown value \"open\" (expected one of: draft, requested, "
                "received, accepted, rejected, ready, cancelled, in-progress, on-hold, failed, "
                "completed, entered-in-error)");
    refuse_find(f, CM_KIND_CONSENT, "{'patient':'p1','decision':'Permit'}", 10, CM_EINVAL,
                "find consent: decision: unknown value \"Permit\" (expected one of: permit, "
                "deny)");
    refuse_find(f, CM_KIND_PATIENT, "{'gender':'male','gender':'female'}", 10, CM_EINVAL,
                "find patient: key \"gender\" given twice");
    refuse_find(f, CM_KIND_PATIENT, "'E11'", 10, CM_EINVAL,
                "find patient: the filter must be an object, got a string");
    refuse_find(f, CM_KIND_PATIENT, NULL, 0, CM_EINVAL,
                "find patient: limit 0 out of range (1..1000)");
    refuse_find(f, CM_KIND_PATIENT, NULL, 1001, CM_EINVAL,
                "find patient: limit 1001 out of range (1..1000)");
}

static void test_find_binds_values_instead_of_pasting_them(void **state)
{
    fx *f = *state;
    cJSON *filter = cJSON_CreateObject(), *out = NULL;
    cm_err err = {0};
    assert_non_null(cJSON_AddStringToObject(filter, "identifier", "x' OR '1'='1"));
    assert_int_equal(cm_model_find(f->model, CM_KIND_PATIENT, filter, NULL, 10, &out, &err), 0);
    assert_int_equal(cJSON_GetArraySize(out), 0);
    cJSON_Delete(out);
    cJSON_Delete(filter);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_names_round_trip),
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_create_fills_defaults_and_meta),
        T(test_update_merges_patch_and_bumps_version),
        T(test_update_and_get_refuse_what_is_not_there),
        T(test_provider_find_by_role_and_organization),
        T(test_patient_find_by_condition_returns_exactly_the_right_patients),
        T(test_find_pages_with_after_and_limit),
        T(test_partnership_create_fills_defaults_refs_and_index),
        T(test_consent_create_and_find),
        T(test_care_team_fills_on_behalf_of),
        T(test_task_defaults_and_find),
        T(test_empty_object_counts_as_empty_array),
        T(test_count),
        T(test_refuses_missing_and_unknown_fields),
        T(test_refuses_unknown_enum_values),
        T(test_refuses_bad_dates),
        T(test_refuses_dangling_references),
        T(test_refuses_duplicate_id),
        T(test_refuses_bad_ids),
        T(test_refuses_wrong_types),
        T(test_refuses_bad_contact_formats),
        T(test_refuses_broken_partnerships),
        T(test_refuses_consent_ending_before_it_starts),
        T(test_refuses_task_without_owner_or_role),
        T(test_refused_write_inside_caller_transaction_keeps_caller_work),
        T(test_find_refuses_bad_filters_and_limits),
        T(test_find_binds_values_instead_of_pasting_them),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
