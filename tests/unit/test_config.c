/*
** test_config.c -- configuration checking: defaults, every key, and the
** errors that name the file and the key; the rendered default file reads back.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config.h"
#include "lconfig.h"
#include "support.h"

static int apply_text(cm_config *cfg, const char *json, cm_err *err)
{
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    int rc = cm_config_apply(cfg, root, "test.conf", err);
    cJSON_Delete(root);
    return rc;
}

static void test_defaults_are_durable_and_bounded(void **state)
{
    cm_config cfg;
    cm_config_defaults(&cfg);
    assert_int_equal(cfg.synchronous, CM_SYNC_FULL);
    assert_int_equal(cfg.busy_timeout_ms, 5000);
    assert_int_equal(cfg.lua_instructions, 10000000);
    assert_int_equal(cfg.lua_memory_bytes, 64u << 20);
    assert_int_equal(cfg.engine_max_attempts, 5);
    assert_int_equal(cfg.engine_instance_cache, 65536);
    assert_int_equal(cfg.log_level, CM_LOG_INFO);
}

static void test_every_key_applies(void **state)
{
    cm_config cfg;
    cm_err err;
    cm_config_defaults(&cfg);
    assert_int_equal(apply_text(&cfg,
                                "{\"node_id\":\"pharm-1\",\"store\":{\"synchronous\":\"extra\","
                                "\"busy_timeout_ms\":250},\"lua\":{\"instructions\":5000,"
                                "\"memory_mb\":8},\"engine\":{\"max_attempts\":2,"
                                "\"instance_cache\":20000},\"log\":{\"level\":\"debug\"}}",
                                &err),
                     0);
    assert_string_equal(cfg.node_id, "pharm-1");
    assert_int_equal(cfg.synchronous, CM_SYNC_EXTRA);
    assert_int_equal(cfg.busy_timeout_ms, 250);
    assert_int_equal(cfg.lua_instructions, 5000);
    assert_int_equal(cfg.lua_memory_bytes, 8u << 20);
    assert_int_equal(cfg.engine_max_attempts, 2);
    assert_int_equal(cfg.engine_instance_cache, 20000);
    assert_int_equal(cfg.log_level, CM_LOG_DEBUG);
}

/* engine.instance_cache takes 0 (keep none) up to 1,048,576 and nothing
** else: a negative, fractional, too large or non-number value is refused
** naming the key and the range, and changes nothing. */
static void test_instance_cache_bounds(void **state)
{
    cm_config cfg;
    cm_err err;
    cm_config_defaults(&cfg);
    assert_int_equal(apply_text(&cfg, "{\"engine\":{\"instance_cache\":0}}", &err), 0);
    assert_int_equal(cfg.engine_instance_cache, 0);
    assert_int_equal(apply_text(&cfg, "{\"engine\":{\"instance_cache\":1048576}}", &err), 0);
    assert_int_equal(cfg.engine_instance_cache, 1048576);
    assert_int_equal(cfg.engine_max_attempts, 5); /* the section's other key as it was */
    assert_int_equal(apply_text(&cfg, "{\"engine\":{\"instance_cache\":1048577}}", &err),
                     CM_ECONFIG);
    assert_string_equal(err.msg, "test.conf: engine.instance_cache: must be a whole number from "
                                 "0 to 1048576");
    assert_int_equal(cfg.engine_instance_cache, 1048576);
}

static void expect_refusal(const char *json, const char *fragment)
{
    cm_config cfg, before;
    cm_err err;
    cm_config_defaults(&cfg);
    before = cfg;
    assert_int_equal(apply_text(&cfg, json, &err), CM_ECONFIG);
    if (!strstr(err.msg, fragment))
        fail_msg("message '%s' lacks '%s'", err.msg, fragment);
    assert_memory_equal(&cfg, &before, sizeof(cfg)); /* unchanged */
}

#define KEY_A "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define KEY_B "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"

static void test_federation_peers_apply(void **state)
{
    cm_config cfg;
    cm_err err;
    cm_config_defaults(&cfg);
    assert_false(cfg.fed_enabled);
    assert_string_equal(cfg.fed_listen, "tcp://127.0.0.1:7601");
    assert_int_equal(apply_text(&cfg,
                                "{\"federation\":{\"listen\":\"tcp://0.0.0.0:9000\",\"peers\":["
                                "{\"id\":\"cardio-node\",\"endpoint\":\"tcp://10.0.0.7:7601\","
                                "\"public_key\":\"" KEY_A "\"},{\"id\":\"pharm\",\"endpoint\":"
                                "\"tcp://h:1\",\"public_key\":\"" KEY_B "\"}]}}",
                                &err),
                     0);
    assert_true(cfg.fed_enabled);
    assert_string_equal(cfg.fed_listen, "tcp://0.0.0.0:9000");
    assert_int_equal(cfg.fed_npeers, 2);
    assert_string_equal(cfg.fed_peers[0].id, "cardio-node");
    assert_string_equal(cfg.fed_peers[0].endpoint, "tcp://10.0.0.7:7601");
    assert_string_equal(cfg.fed_peers[1].public_key, KEY_B);
}

static void test_federation_mistakes_are_refused_by_name(void **state)
{
    expect_refusal("{\"federation\":{\"listne\":1}}", "federation.listne: unknown key");
    expect_refusal("{\"federation\":{\"listen\":\"udp://x:1\"}}",
                   "federation.listen: must be a tcp://HOST:PORT endpoint");
    expect_refusal("{\"federation\":{\"listen\":\"tcp://0.0.0.0\"}}",
                   "federation.listen: must be a tcp://HOST:PORT endpoint");
    expect_refusal("{\"federation\":{\"listen\":\"tcp://:7601\"}}",
                   "federation.listen: must be a tcp://HOST:PORT endpoint");
    expect_refusal("{\"federation\":{\"peers\":[{\"id\":\"a\",\"endpoint\":\"tcp://h:70000\","
                   "\"public_key\":\"" KEY_A "\"}]}}",
                   "federation.peers[1].endpoint: must be a tcp://HOST:PORT endpoint");
    expect_refusal("{\"federation\":{\"peers\":[{\"id\":\"a\",\"endpoint\":\"tcp://h:1\","
                   "\"public_key\":\"short\"}]}}",
                   "federation.peers[1].public_key: must be a CURVE public key");
    expect_refusal("{\"federation\":{\"peers\":[{\"id\":\"a b\",\"endpoint\":\"tcp://h:1\","
                   "\"public_key\":\"" KEY_A "\"}]}}",
                   "federation.peers[1].id: character 2");
    expect_refusal("{\"federation\":{\"peers\":[{\"id\":\"a\"}]}}",
                   "federation.peers[1]: id, endpoint and public_key are required");
    expect_refusal("{\"federation\":{\"peers\":[{\"id\":\"a\",\"endpoint\":\"tcp://h:1\","
                   "\"public_key\":\"" KEY_A "\"},{\"id\":\"b\",\"endpoint\":\"tcp://h:2\","
                   "\"public_key\":\"" KEY_A "\"}]}}",
                   "federation.peers[2]: same id or public key as federation.peers[1]");
    expect_refusal("{\"federation\":{\"peers\":\"all\"}}",
                   "federation.peers: must be a list of tables");
}

static void test_bad_values_are_refused_by_name(void **state)
{
    expect_refusal("{\"stroe\":{}}", "test.conf: stroe: unknown key (known: node_id, store");
    expect_refusal("{\"store\":{\"synchronous\":\"fast\"}}",
                   "test.conf: store.synchronous: must be one of off, normal, full, extra");
    expect_refusal("{\"store\":{\"busy_timeout_ms\":-1}}", "store.busy_timeout_ms: must be a");
    expect_refusal("{\"store\":{\"busy_timeout_ms\":1.5}}", "store.busy_timeout_ms: must be a");
    expect_refusal("{\"lua\":{\"instructions\":\"lots\"}}", "lua.instructions: must be a whole");
    expect_refusal("{\"lua\":{\"memory_mb\":0}}", "lua.memory_mb: must be a whole number");
    expect_refusal("{\"lua\":{\"memroy_mb\":1}}", "lua.memroy_mb: unknown key");
    expect_refusal("{\"engine\":{\"max_attempts\":0}}",
                   "engine.max_attempts: must be a whole number from 1 to 100");
    expect_refusal("{\"engine\":{\"max_attempts\":2.5}}", "engine.max_attempts: must be a");
    expect_refusal("{\"engine\":{\"attempts\":3}}", "engine.attempts: unknown key");
    expect_refusal("{\"engine\":{\"instance_cache\":-1}}",
                   "test.conf: engine.instance_cache: must be a whole number from 0 to 1048576");
    expect_refusal("{\"engine\":{\"instance_cache\":1e9}}",
                   "engine.instance_cache: must be a whole number from 0 to 1048576");
    expect_refusal("{\"engine\":{\"instance_cache\":100.5}}", "engine.instance_cache: must be");
    expect_refusal("{\"engine\":{\"instance_cache\":\"64k\"}}",
                   "engine.instance_cache: must be a whole number");
    expect_refusal("{\"engine\":{\"instance_cache\":true}}", "engine.instance_cache: must be");
    expect_refusal("{\"engine\":{\"cache\":100}}",
                   "engine.cache: unknown key (known: max_attempts, instance_cache)");
    expect_refusal("{\"log\":{\"level\":\"loud\"}}", "log.level: must be one of debug");
    expect_refusal("{\"node_id\":\"has space\"}", "node_id: character 4 (' ') is not allowed");
    expect_refusal("{\"node_id\":7}", "node_id: must be a string");
    expect_refusal("{\"store\":5}", "test.conf: store: must be a table");
    expect_refusal("{\"plugins\":5}", "plugins: must be a list");
    expect_refusal("{\"plugins\":[{\"path\":\"/x.so\"}]}", "plugins[1].name: required");
    expect_refusal("{\"plugins\":[{\"name\":\"x\"}]}", "plugins[1].path: required");
    expect_refusal("{\"plugins\":[{\"name\":\"x\",\"path\":\"libm.so.6\"}]}",
                   "plugins[1].path: required, the absolute path");
    expect_refusal("{\"plugins\":[{\"name\":\"x\",\"path\":\"/x.so\",\"optinal\":true}]}",
                   "plugins[1].optinal: unknown key");
    expect_refusal("{\"plugins\":[{\"name\":\"x\",\"path\":\"/x.so\",\"config\":3}]}",
                   "plugins[1].config: must be a table");
}

static void test_plugins_list_is_kept(void **state)
{
    cm_config cfg;
    cm_err err;
    cm_config_defaults(&cfg);
    assert_int_equal(apply_text(&cfg,
                                "{\"plugins\":[{\"name\":\"fhir\",\"path\":\"/p/fhir.so\","
                                "\"optional\":true,\"config\":{\"base\":\"x\"}}]}",
                                &err),
                     0);
    assert_int_equal(cJSON_GetArraySize(cfg.plugins), 1);
    /* applying again replaces the list, no leak */
    assert_int_equal(apply_text(&cfg, "{\"plugins\":[]}", &err), 0);
    assert_int_equal(cJSON_GetArraySize(cfg.plugins), 0);
    cm_config_free(&cfg);
    assert_null(cfg.plugins);
}

static void test_rendered_default_reads_back(void **state)
{
    char *dir = cm_test_tmpdir();
    char text[4096];
    cm_config cfg, back;
    cm_err err;
    cJSON *root = NULL;
    cm_config_defaults(&cfg);
    strcpy(cfg.node_id, "clinic-a");
    cfg.engine_instance_cache = 4096; /* not the default: the text must carry it */
    assert_int_equal(cm_config_render(&cfg, text, sizeof(text)), 0);
    const char *path = cm_test_path(dir, "caremesh.conf");
    cm_test_write(path, text, strlen(text));
    assert_int_equal(cm_lconfig_read(path, &root, &err), 0);
    cm_config_defaults(&back);
    assert_int_equal(cm_config_apply(&back, root, path, &err), 0);
    assert_memory_equal(&cfg, &back, sizeof(cfg));
    cJSON_Delete(root);
    cm_test_rmtree(dir);
    free(dir);
}

static void expect_file_refusal(const char *text, int code, const char *fragment)
{
    char *dir = cm_test_tmpdir();
    const char *path = cm_test_path(dir, "bad.conf");
    cJSON *root = NULL;
    cm_err err;
    cm_test_write(path, text, strlen(text));
    assert_int_equal(cm_lconfig_read(path, &root, &err), code);
    assert_null(root);
    if (!strstr(err.msg, fragment))
        fail_msg("message '%s' lacks '%s'", err.msg, fragment);
    cm_test_rmtree(dir);
    free(dir);
}

static void test_bad_config_files_are_refused_with_place(void **state)
{
    expect_file_refusal("return {\n  node_id = \"a\",\n  store = {,\n}\n", CM_ECONFIG,
                        "bad.conf:3:");
    expect_file_refusal("return 42\n", CM_ECONFIG, "must return a table");
    expect_file_refusal("return { store = { synchronous = print } }\n", CM_ECONFIG,
                        "config.store.synchronous: a function cannot be carried");
    expect_file_refusal("while true do end\n", CM_ECONFIG, "instruction budget");
    expect_file_refusal("os.execute('true') return {}\n", CM_ECONFIG, "bad.conf:1:");
}

/* ---- reload: what changes live, what needs a restart ---- */

static void test_reload_diff_sorts_live_from_restart(void **state)
{
    cm_config run, next;
    cm_config_diff d;
    cm_err err;
    cm_config_defaults(&run);
    cm_config_defaults(&next);
    cm_config_diff_of(&run, &next, &d);
    assert_string_equal(d.live, "");
    assert_string_equal(d.restart, "");
    assert_false(d.log || d.workflows || d.plugins || d.api);
    assert_int_equal(apply_text(&next,
                                "{\"log\":{\"level\":\"debug\"},\"api\":{\"timeout_ms\":500,"
                                "\"open_loopback\":true,\"listen\":\"127.0.0.1:9\"},"
                                "\"lua\":{\"memory_mb\":8},\"engine\":{\"max_attempts\":9,"
                                "\"instance_cache\":4096},"
                                "\"workflows\":\"/srv/wf\","
                                "\"plugins\":[{\"name\":\"p\",\"path\":\"/p.so\"}]}",
                                &err),
                     0);
    cm_config_diff_of(&run, &next, &d);
    assert_string_equal(d.live, "log.level, workflows, plugins, api.timeout_ms, api.open_loopback");
    assert_string_equal(d.restart,
                        "api.listen, lua.memory_mb, engine.max_attempts, engine.instance_cache");
    assert_true(d.log && d.workflows && d.plugins && d.api);
    cm_config_take_live(&run, &next);
    assert_int_equal(run.log_level, CM_LOG_DEBUG);
    assert_int_equal(run.api.timeout_ms, 500);
    assert_true(run.api.open_loopback);
    assert_string_equal(run.workflows, "/srv/wf");
    assert_int_equal(cJSON_GetArraySize(run.plugins), 1);
    assert_null(next.plugins);                           /* moved */
    assert_int_equal(run.api.port, CM_API_DEFAULT_PORT); /* restart keys keep running values */
    assert_int_equal(run.lua_memory_bytes, 64u << 20);
    cm_config_diff_of(&run, &next, &d); /* next lost its plugins: that is a change again */
    assert_string_equal(d.live, "plugins");
    cm_config_free(&run);
    cm_config_free(&next);
}

static void expect_load_refusal(const char *text, const char *fragment)
{
    char *dir = cm_test_tmpdir();
    const char *path = cm_test_path(dir, "c.conf");
    cm_config cfg;
    cm_err err;
    cm_test_write(path, text, strlen(text));
    assert_int_equal(cm_lconfig_load(path, &cfg, &err), CM_ECONFIG);
    cm_config_free(&cfg);
    if (!strstr(err.msg, fragment))
        fail_msg("message '%s' lacks '%s'", err.msg, fragment);
    cm_test_rmtree(dir);
    free(dir);
}

static void test_semantic_errors_name_the_line_that_sets_the_key(void **state)
{
    expect_load_refusal("return {\n  store = {\n    synchronous = \"fast\",\n  },\n}\n",
                        "c.conf:3: store.synchronous: must be one of");
    expect_load_refusal("return {\n  -- level = \"x\"\n  log = { level = \"loud\" },\n}\n",
                        "c.conf:3: log.level:");
    expect_load_refusal("return {\n  stroe = {},\n}\n", "c.conf:2: stroe: unknown key");
    /* two lines set a key of that name: the one in the key's own table */
    expect_load_refusal("return {\n  api = { timeout_ms = 100 },\n  timeout_ms = 2,\n}\n",
                        "c.conf:3: timeout_ms: unknown key");
    expect_load_refusal("return {\n  federation = {\n    listen = \"tcp://127.0.0.1:7601\",\n"
                        "  },\n  api = {\n    -- listen = \"x\", a comment\n"
                        "    listen = \"127.0.0.1:76000\",\n  },\n}\n",
                        "c.conf:7: api.listen: must be");
    /* a list's tables counted from 1, as Lua does; strings and comments skipped */
    expect_load_refusal("return {\n  federation = { peers = {\n"
                        "    { id = \"a\", endpoint = \"tcp://h:1\", "
                        "public_key = \"" KEY_A "\" },\n"
                        "    --[[ { endpont = 1 }, ]]\n"
                        "    { id = \"b\", endpont = \"tcp://h:2\" },\n  } },\n}\n",
                        "c.conf:5: federation.peers[2].endpont: unknown key");
    expect_load_refusal("return { plugins = {\n  { name = \"a\", path = \"/a.so\" },\n"
                        "  { name = \"b\", path = \"/b.so\", optinal = true },\n} }\n",
                        "c.conf:3: plugins[2].optinal: unknown key");
    /* lines counted as Lua counts them: "\r\n" once, a lone "\r" as well,
    ** and those inside a long comment too */
    expect_load_refusal("return {\r\n  --[==[\r\n  log = { level = \"x\" },\r\n  ]==]\r\n"
                        "  log = { level = \"loud\" },\r\n}\r\n",
                        "c.conf:5: log.level:");
    expect_load_refusal("return {\r  --[[ a\r  ]]\r  log = { level = \"loud\" },\r}\r",
                        "c.conf:4: log.level:");
    /* the same key twice in one table: no line is claimed */
    expect_load_refusal("return {\n  log = { level = \"info\",\n    level = \"loud\" },\n}\n",
                        "c.conf: log.level:");
}

static void test_missing_config_file_is_named(void **state)
{
    cJSON *root = NULL;
    cm_err err;
    assert_int_not_equal(cm_lconfig_read("/nonexistent/caremesh.conf", &root, &err), 0);
    assert_non_null(strstr(err.msg, "/nonexistent/caremesh.conf"));
}

static void test_ids_are_checked(void **state)
{
    cm_err err;
    assert_int_equal(cm_config_check_id("id", "clinic-a.north:1_x", &err), 0);
    assert_int_equal(cm_config_check_id("id", "", &err), CM_EINVAL);
    assert_int_equal(cm_config_check_id("id", "a/b", &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "id: character 2 ('/')"));
    char longid[200];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    assert_int_equal(cm_config_check_id("id", longid, &err), CM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_durable_and_bounded),
        cmocka_unit_test(test_every_key_applies),
        cmocka_unit_test(test_instance_cache_bounds),
        cmocka_unit_test(test_bad_values_are_refused_by_name),
        cmocka_unit_test(test_rendered_default_reads_back),
        cmocka_unit_test(test_plugins_list_is_kept),
        cmocka_unit_test(test_bad_config_files_are_refused_with_place),
        cmocka_unit_test(test_missing_config_file_is_named),
        cmocka_unit_test(test_ids_are_checked),
        cmocka_unit_test(test_reload_diff_sorts_live_from_restart),
        cmocka_unit_test(test_semantic_errors_name_the_line_that_sets_the_key),
        cmocka_unit_test(test_federation_peers_apply),
        cmocka_unit_test(test_federation_mistakes_are_refused_by_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
