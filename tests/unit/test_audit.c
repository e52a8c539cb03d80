/*
** test_audit.c -- the hash-chained audit trail: entries join the caller's
** transaction, and verify names the entry that was altered, deleted,
** reordered or added behind caremesh's back.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "audit.h"
#include "node.h"

typedef cm_test_node fixture;

static void append(fixture *f, const char *actor, const char *patient)
{
    cm_err err = {0};
    cm_audit_entry e = {.actor = actor,
                        .action = "patient.read",
                        .patient = patient,
                        .classes = "demographics",
                        .purpose = "referral",
                        .outcome = "ok"};
    assert_int_equal(cm_audit_append(f->store, f->clock, &e, &err), 0);
    cm_clock_advance(f->clock, 1000);
}

static void exec(fixture *f, const char *sql)
{
    cm_err err = {0};
    assert_int_equal(cm_store_exec(f->store, sql, &err), 0);
}

/* cm_audit_verify, checked against a verify that reads two entries per
** read transaction: both must say the same. */
static int verify(fixture *f, long *n, cm_err *err)
{
    cm_err e2 = {0};
    long n2 = -1;
    int rc = cm_audit_verify(f->store, n, err);
    assert_int_equal(cm_audit_verify_chunked(f->store, 2, &n2, &e2), rc);
    if (rc == 0)
        assert_int_equal(n2, *n);
    else
        assert_string_equal(e2.msg, err->msg);
    return rc;
}

static void test_intact_chain_verifies(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    long n = -1;
    assert_int_equal(verify(f, &n, &err), 0);
    assert_int_equal(n, 0);
    for (int i = 0; i < 5; i++)
        append(f, "cli", "pat-1");
    assert_int_equal(verify(f, &n, &err), 0);
    assert_int_equal(n, 5);
}

static void test_missing_fields_refused(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    cm_audit_entry e = {.actor = "cli", .action = "patient.read"};
    assert_int_equal(cm_audit_append(f->store, f->clock, &e, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "outcome"));
}

static void test_rolled_back_with_its_transaction(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    long n = -1;
    append(f, "cli", "pat-1");
    assert_int_equal(cm_store_begin(f->store, &err), 0);
    append(f, "cli", "pat-2");
    cm_store_rollback(f->store);
    assert_int_equal(verify(f, &n, &err), 0);
    assert_int_equal(n, 1);
    append(f, "cli", "pat-3");
    assert_int_equal(verify(f, &n, &err), 0);
    assert_int_equal(n, 2);
}

static void test_altered_entry_named(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    long n;
    for (int i = 0; i < 6; i++)
        append(f, "cli", "pat-1");
    exec(f, "UPDATE audit SET patient = 'pat-9' WHERE seq = 3");
    assert_int_equal(verify(f, &n, &err), CM_EAUDIT);
    assert_non_null(strstr(err.msg, "entry 3"));
    assert_non_null(strstr(err.msg, "altered"));
}

static void test_deleted_entry_named(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    long n;
    for (int i = 0; i < 4; i++)
        append(f, "cli", "pat-1");
    exec(f, "DELETE FROM audit WHERE seq = 2");
    assert_int_equal(verify(f, &n, &err), CM_EAUDIT);
    assert_non_null(strstr(err.msg, "entry 3"));
    assert_non_null(strstr(err.msg, "2..2 are missing"));
}

static void test_truncated_tail_named(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    long n;
    for (int i = 0; i < 4; i++)
        append(f, "cli", "pat-1");
    exec(f, "DELETE FROM audit WHERE seq >= 3");
    assert_int_equal(verify(f, &n, &err), CM_EAUDIT);
    assert_non_null(strstr(err.msg, "3..4 are missing"));
}

static void test_reordered_entries_named(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    long n;
    append(f, "cli", "pat-1");
    append(f, "instance:r-1", "pat-2");
    append(f, "peer:node-b", "pat-3");
    /* Swap the contents of entries 2 and 3, hashes and all. */
    exec(f, "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; "
            "UPDATE audit SET seq = 3 WHERE seq = -2");
    assert_int_equal(verify(f, &n, &err), CM_EAUDIT);
    assert_non_null(strstr(err.msg, "entry 2"));
}

static void test_added_entry_named(void **state)
{
    fixture *f = *state;
    cm_err err = {0};
    long n;
    append(f, "cli", "pat-1");
    exec(f, "INSERT INTO audit SELECT seq + 1, at, actor, action, patient, classes, purpose, "
            "outcome, detail, hash FROM audit WHERE seq = 1");
    assert_int_equal(verify(f, &n, &err), CM_EAUDIT);
    assert_non_null(strstr(err.msg, "entries 2..2 were not written by caremesh (added)"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_intact_chain_verifies, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_missing_fields_refused, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_rolled_back_with_its_transaction, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_altered_entry_named, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_deleted_entry_named, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_truncated_tail_named, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_reordered_entries_named, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_added_entry_named, cm_test_node_setup,
                                        cm_test_node_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
