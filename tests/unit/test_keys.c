/*
** test_keys.c -- the node's CURVE key pair: private file, checks on load.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "keys.h"
#include "support.h"

static void test_saved_pair_is_private_and_loads_back(void **state)
{
    char *dir = cm_test_tmpdir();
    const char *path = cm_test_path(dir, CM_KEY_FILE);
    cm_keypair kp, back;
    cm_err err;
    assert_int_equal(cm_keys_generate(&kp, &err), 0);
    assert_int_equal(strlen(kp.public_key), CM_KEY_Z85_LEN);
    assert_int_equal(cm_keys_save(&kp, path, &err), 0);
    assert_int_equal(cm_test_mode(path), 0600);
    assert_int_equal(cm_keys_load(&back, path, &err), 0);
    assert_string_equal(back.public_key, kp.public_key);
    assert_string_equal(back.secret_key, kp.secret_key);
    cm_keys_wipe(&back);
    assert_int_equal(back.secret_key[0], 0);
    cm_test_rmtree(dir);
    free(dir);
}

static void test_open_permissions_are_refused(void **state)
{
    char *dir = cm_test_tmpdir();
    const char *path = cm_test_path(dir, CM_KEY_FILE);
    cm_keypair kp;
    cm_err err;
    assert_int_equal(cm_keys_generate(&kp, &err), 0);
    assert_int_equal(cm_keys_save(&kp, path, &err), 0);
    chmod(path, 0644);
    assert_int_equal(cm_keys_load(&kp, path, &err), CM_EPERM);
    assert_non_null(strstr(err.msg, "permissions 0644 are too open"));
    cm_test_rmtree(dir);
    free(dir);
}

static void test_mismatched_or_malformed_keys_are_refused(void **state)
{
    char *dir = cm_test_tmpdir();
    const char *path = cm_test_path(dir, CM_KEY_FILE);
    cm_keypair a, b, out;
    cm_err err;
    char text[256];
    assert_int_equal(cm_keys_generate(&a, &err), 0);
    assert_int_equal(cm_keys_generate(&b, &err), 0);
    snprintf(text, sizeof(text), "public-key = %s\nsecret-key = %s\n", a.public_key, b.secret_key);
    cm_test_write(path, text, strlen(text));
    chmod(path, 0600);
    assert_int_equal(cm_keys_load(&out, path, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "does not belong"));
    cm_test_write(path, "public-key = short\n", 19);
    assert_int_equal(cm_keys_load(&out, path, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "must be 40 Z85 characters"));
    unlink(path);
    assert_int_equal(cm_keys_load(&out, path, &err), CM_ENOTFOUND);
    cm_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_saved_pair_is_private_and_loads_back),
        cmocka_unit_test(test_open_permissions_are_refused),
        cmocka_unit_test(test_mismatched_or_malformed_keys_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
