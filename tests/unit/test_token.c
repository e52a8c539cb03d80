/*
** test_token.c -- API bearer tokens: shown once, kept only as a hash, checked
** by id and hash, ordered scopes, revocation; and the config's api section
** (listen address, limits) with its refusals.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config.h"
#include "node.h"
#include "token.h"

typedef cm_test_node fixture;

static void test_token_checks_and_is_stored_as_a_hash(void **state)
{
    fixture *f = *state;
    char text[CM_TOKEN_TEXT_LEN + 1], other[CM_TOKEN_TEXT_LEN + 1];
    cm_token_info info, got;
    cm_err err;
    long n;
    assert_int_equal(cm_token_create(f->store, f->clock, CM_SCOPE_WRITE, "desk", text, &info, &err),
                     0);
    assert_int_equal(strlen(text), CM_TOKEN_TEXT_LEN);
    assert_string_equal(info.actor, "token:desk");
    assert_int_equal(cm_token_check(f->store, text, &got, &err), 0);
    assert_int_equal(got.scope, CM_SCOPE_WRITE);
    assert_string_equal(got.id, info.id);
    /* the secret is nowhere in the table */
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(cm_store_db(f->store),
                       "SELECT count(*) FROM api_token WHERE instr(hex(hash), upper(?1)) > 0 OR "
                       "instr(id || name, ?1) > 0",
                       -1, &st, NULL);
    sqlite3_bind_text(st, 1, text + 21, 16, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    /* one changed character of the secret, of the id, or of the form: refused */
    memcpy(other, text, sizeof(other));
    other[CM_TOKEN_TEXT_LEN - 1] = other[CM_TOKEN_TEXT_LEN - 1] == 'a' ? 'b' : 'a';
    assert_int_equal(cm_token_check(f->store, other, &got, &err), CM_EPERM);
    memcpy(other, text, sizeof(other));
    other[5] = other[5] == 'a' ? 'b' : 'a';
    assert_int_equal(cm_token_check(f->store, other, &got, &err), CM_EPERM);
    assert_int_equal(cm_token_check(f->store, "Bearer", &got, &err), CM_EPERM);
    assert_null(strstr(err.msg, "Bearer"));
    assert_int_equal(cm_token_check(f->store, NULL, &got, &err), CM_EPERM);
    /* revocation, by name; a second revoke finds nothing active */
    assert_int_equal(cm_token_count_active(f->store, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(cm_token_revoke(f->store, f->clock, "desk", &err), 0);
    assert_int_equal(cm_token_check(f->store, text, &got, &err), CM_EPERM);
    assert_non_null(strstr(err.msg, "revoked"));
    assert_int_equal(cm_token_revoke(f->store, f->clock, "desk", &err), CM_ENOTFOUND);
    assert_int_equal(cm_token_count_active(f->store, &n, &err), 0);
    assert_int_equal(n, 0);
}

static void test_token_names_and_scopes(void **state)
{
    fixture *f = *state;
    char text[CM_TOKEN_TEXT_LEN + 1];
    cm_token_info info;
    cm_err err;
    assert_int_equal(cm_scope_parse("read"), CM_SCOPE_READ);
    assert_int_equal(cm_scope_parse("admin"), CM_SCOPE_ADMIN);
    assert_int_equal(cm_scope_parse("root"), -1);
    assert_true(CM_SCOPE_READ < CM_SCOPE_WRITE && CM_SCOPE_WRITE < CM_SCOPE_ADMIN);
    assert_int_equal(cm_token_create(f->store, f->clock, CM_SCOPE_READ, "a b", text, &info, &err),
                     CM_EINVAL);
    assert_int_equal(cm_token_create(f->store, f->clock, (cm_scope)9, NULL, text, &info, &err),
                     CM_EINVAL);
    assert_int_equal(cm_token_create(f->store, f->clock, CM_SCOPE_READ, NULL, text, &info, &err),
                     0);
    assert_string_equal(info.name, "");
    assert_int_equal(strncmp(info.actor, "token:", 6), 0);
    assert_string_equal(info.actor + 6, info.id);
    assert_int_equal(cm_token_create(f->store, f->clock, CM_SCOPE_READ, "ops", text, &info, &err),
                     0);
    assert_int_equal(cm_token_create(f->store, f->clock, CM_SCOPE_ADMIN, "ops", text, &info, &err),
                     CM_EEXISTS);
    cJSON *list = NULL;
    assert_int_equal(cm_token_list(f->store, &list, &err), 0);
    assert_int_equal(cJSON_GetArraySize(list), 2);
    assert_null(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "hash"));
    cJSON_Delete(list);
}

static int apply(cm_config *cfg, const char *json, cm_err *err)
{
    cJSON *root = cJSON_Parse(json);
    int rc = cm_config_apply(cfg, root, "caremesh.conf", err);
    cJSON_Delete(root);
    return rc;
}

static void test_config_api_section(void **state)
{
    cm_config cfg;
    cm_err err;
    char host[64];
    int port;
    cm_config_defaults(&cfg);
    assert_true(cfg.api.enabled);
    assert_string_equal(cfg.api.host, "127.0.0.1");
    assert_int_equal(cfg.api.port, 7600);
    assert_false(cfg.api.open_loopback);
    assert_int_equal(apply(&cfg,
                           "{\"api\":{\"listen\":\"[::1]:8080\",\"timeout_ms\":500,"
                           "\"max_body_bytes\":4096,\"open_loopback\":true}}",
                           &err),
                     0);
    assert_string_equal(cfg.api.host, "::1");
    assert_int_equal(cfg.api.port, 8080);
    assert_int_equal(cfg.api.timeout_ms, 500);
    assert_int_equal(cfg.api.max_body_bytes, 4096);
    assert_true(cfg.api.open_loopback);
    static const char *const bad[][2] = {
        {"{\"api\":{\"listen\":\"localhost:80\"}}", "api.listen"},
        {"{\"api\":{\"listen\":\"127.0.0.1\"}}", "api.listen"},
        {"{\"api\":{\"listen\":\"127.0.0.1:70000\"}}", "api.listen"},
        {"{\"api\":{\"timeout_ms\":5}}", "api.timeout_ms"},
        {"{\"api\":{\"max_connections\":1.5}}", "api.max_connections"},
        {"{\"api\":{\"open_loopback\":\"yes\"}}", "api.open_loopback"},
        {"{\"api\":{\"port\":1}}", "api.port: unknown key"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(apply(&cfg, bad[i][0], &err), CM_ECONFIG);
        assert_non_null(strstr(err.msg, bad[i][1]));
        assert_int_equal(cfg.api.port, 8080); /* unchanged */
    }
    assert_int_equal(cm_config_parse_listen("0.0.0.0:0", host, sizeof(host), &port), 0);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(port, 0);
    assert_int_equal(cm_config_parse_listen("[::1:80", host, sizeof(host), &port), CM_EINVAL);
    assert_int_equal(cm_config_parse_listen("1.2.3.4:", host, sizeof(host), &port), CM_EINVAL);
    cm_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_token_checks_and_is_stored_as_a_hash,
                                        cm_test_node_setup, cm_test_node_teardown),
        cmocka_unit_test_setup_teardown(test_token_names_and_scopes, cm_test_node_setup,
                                        cm_test_node_teardown),
        cmocka_unit_test(test_config_api_section),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
