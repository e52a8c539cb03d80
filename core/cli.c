/*
** cli.c -- subcommands: version, init, serve, lua, node info, peers, help.
** Uses every core unit and the Lua bindings; nothing else calls into here.
*/
#include "cli.h"

#include "backup.h"
#include "audit.h"
#include "bench.h"
#include "bench_api.h"
#include "cliapi.h"
#include "fed.h"
#include "config.h"
#include "fs.h"
#include "keys.h"
#include "lcheck.h"
#include "lconfig.h"
#include "lhost.h"
#include "lplugin.h"
#include "ltest.h"
#include "log.h"
#include "model.h"
#include "plugin.h"
#include "sandbox.h"
#include "serve.h"
#include "store.h"
#include "token.h"

#include <errno.h>
#include <getopt.h>
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#define CM_DB_FILE      "caremesh.db"
#define CM_PATH_MAX     4096
#define BENCH_COUNT_MAX 10000000L

typedef struct cli_cmd {
    const char *name;
    const char *brief; /* one line for the overview */
    const char *summary;
    const char *usage; /* full --help text after the "usage:" line */
    int (*run)(int argc, char **argv);
} cli_cmd;

static const cli_cmd *find_cmd(const char *name);

/* ---- shared pieces ---------------------------------------------------- */

static int fail(const char *cmd, const cm_err *err)
{
    fprintf(stderr, "caremesh %s: %s\n", cmd, err->msg);
    return CM_EXIT_FAIL;
}

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "caremesh %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'caremesh %s --help'.\n", cmd);
    return CM_EXIT_USAGE;
}

static int print_help(const cli_cmd *cmd)
{
    printf("usage: caremesh %s\n\n%s\n", cmd->usage, cmd->summary);
    return CM_EXIT_OK;
}

/* The data directory: *data as given, else CAREMESH_DATA. 0, or the usage
** error when there is none. */
static int data_dir(const char *cmd, const char **data)
{
    if (!*data)
        *data = getenv("CAREMESH_DATA");
    if (!*data || !**data)
        return usage_error(cmd, "%s", "--data DIR is required (or set CAREMESH_DATA)");
    return 0;
}

/* A count given to an option: a whole number from 1 to max. */
static bool parse_count(const char *text, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (!*text || *end || errno || v < 1 || v > max)
        return false;
    *out = v;
    return true;
}

/* Options every data-dir command takes. */
typedef struct data_opts {
    const char *data;
    const char *config;
    const char *node_id;
    const char *virtual_clock; /* serve: run on a virtual clock from this instant */
    bool help;
} data_opts;

/* Parse --data/--config/--node-id/--help; leaves optind at the first operand. */
static int parse_data_opts(const char *cmd, int argc, char **argv, bool want_node_id, data_opts *o)
{
    static const struct option longopts[] = {
        {"data", required_argument, NULL, 'd'},    {"config", required_argument, NULL, 'c'},
        {"node-id", required_argument, NULL, 'n'}, {"virtual-clock", required_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    int c;
    memset(o, 0, sizeof(*o));
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+d:c:n:v:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->data = optarg;
            break;
        case 'c':
            o->config = optarg;
            break;
        case 'n':
            if (!want_node_id)
                return usage_error(cmd, "unknown option '%s'", "--node-id");
            o->node_id = optarg;
            break;
        case 'v':
            if (strcmp(cmd, "serve") != 0)
                return usage_error(cmd, "unknown option '%s'", "--virtual-clock");
            int64_t ms;
            if (!cm_time_parse(optarg, &ms))
                return usage_error(cmd, "--virtual-clock: \"%s\" is not an ISO-8601 instant",
                                   optarg);
            o->virtual_clock = optarg;
            break;
        case 'h':
            o->help = true;
            return 0;
        default:
            return usage_error(cmd, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    return data_dir(cmd, &o->data);
}

/* An opened node: config, store, clock and model over one data dir. */
typedef struct cli_node {
    cm_config cfg;
    cm_store *store;
    cm_clock *clock;
    cm_model *model;
    char node_id[129];
    char db_path[CM_PATH_MAX];
} cli_node;

static void node_close(cli_node *n)
{
    cm_err err;
    cm_model_destroy(&n->model);
    if (cm_store_close_v2(&n->store, &err) != 0)
        cm_log(CM_LOG_WARN, "store.close", "%s", err.msg);
    cm_clock_destroy(&n->clock);
    cm_config_free(&n->cfg);
}

static int load_config(const data_opts *o, cm_config *cfg, cm_err *err)
{
    char path[CM_PATH_MAX];
    int rc;
    cm_config_defaults(cfg);
    if (o->config)
        snprintf(path, sizeof(path), "%s", o->config);
    else if ((rc = cm_fs_join(path, sizeof(path), o->data, CM_CONFIG_FILE, err)) != 0)
        return rc;
    if (!o->config && !cm_fs_exists(path))
        return 0; /* a data dir without a config file runs on the defaults */
    return cm_lconfig_load(path, cfg, err);
}

/* The key file must be there, private, and the one this database was made with. */
static int check_node_key(cli_node *n, const char *data, cm_err *err)
{
    char path[CM_PATH_MAX], *stored = NULL;
    cm_keypair kp;
    int rc;
    if ((rc = cm_fs_join(path, sizeof(path), data, CM_KEY_FILE, err)) != 0 ||
        (rc = cm_keys_load(&kp, path, err)) != 0)
        return rc;
    cm_keys_wipe(&kp);
    if ((stored = cm_store_meta_get(n->store, "public_key", err)) &&
        strcmp(stored, kp.public_key) != 0)
        rc = cm_err_set(err, CM_EINVAL,
                        "%s: this key pair is not the one node \"%s\" was initialised with "
                        "(public key %s expected)",
                        path, n->node_id, stored);
    free(stored);
    return rc;
}

static int node_open(const data_opts *o, cli_node *n, cm_err *err)
{
    cm_store_opts sopts;
    char *stored_id = NULL;
    int rc;
    memset(n, 0, sizeof(*n));
    if ((rc = load_config(o, &n->cfg, err)) != 0)
        return rc;
    cm_log_set_level(n->cfg.log_level);
    if ((rc = cm_fs_join(n->db_path, sizeof(n->db_path), o->data, CM_DB_FILE, err)) != 0)
        return rc;
    cm_store_opts_init(&sopts);
    sopts.path = n->db_path;
    sopts.synchronous = n->cfg.synchronous;
    sopts.busy_timeout_ms = n->cfg.busy_timeout_ms;
    if ((rc = cm_store_open(&n->store, &sopts, err)) != 0)
        goto done;
    if (!(stored_id = cm_store_meta_get(n->store, "node_id", err))) {
        rc = cm_err_prefix(err, "%s", n->db_path);
        goto done;
    }
    if (n->cfg.node_id[0] && strcmp(n->cfg.node_id, stored_id) != 0) {
        rc = cm_err_set(err, CM_ECONFIG,
                        "config says node_id \"%s\" but the database in %s belongs to node \"%s\"",
                        n->cfg.node_id, o->data, stored_id);
        goto done;
    }
    snprintf(n->node_id, sizeof(n->node_id), "%s", stored_id);
    if ((rc = check_node_key(n, o->data, err)) != 0)
        goto done;
    int64_t start_ms = 0;
    n->clock = o->virtual_clock && cm_time_parse(o->virtual_clock, &start_ms)
                   ? cm_clock_new_virtual(start_ms)
                   : cm_clock_new_system();
    n->model = n->clock ? cm_model_new(n->store, n->clock) : NULL;
    if (!n->model)
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
done:
    free(stored_id);
    if (rc != 0)
        node_close(n);
    return rc;
}

/* ---- version ---------------------------------------------------------- */

static int cmd_version(int argc, char **argv)
{
    int major, minor, patch;
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))
        return print_help(find_cmd("version"));
    if (argc > 1)
        return usage_error("version", "unexpected argument '%s'", argv[1]);
    zmq_version(&major, &minor, &patch);
    printf("caremesh %s (schema %d; %s, SQLite %s, libuv %s, libzmq %d.%d.%d)\n", CM_VERSION,
           CM_SCHEMA_VERSION, LUA_RELEASE, sqlite3_libversion(), uv_version_string(), major, minor,
           patch);
    return CM_EXIT_OK;
}

/* ---- init ------------------------------------------------------------- */

typedef struct init_paths {
    char db[CM_PATH_MAX], conf[CM_PATH_MAX], key[CM_PATH_MAX];
} init_paths;

static int init_write(const char *node_id, const init_paths *p, cm_keypair *kp, cm_err *err)
{
    cm_config cfg;
    cm_store_opts sopts;
    cm_store *store = NULL;
    char text[2048];
    int rc;
    if ((rc = cm_keys_generate(kp, err)) != 0 || (rc = cm_keys_save(kp, p->key, err)) != 0)
        return rc;
    cm_config_defaults(&cfg);
    snprintf(cfg.node_id, sizeof(cfg.node_id), "%s", node_id);
    if (cm_config_render(&cfg, text, sizeof(text)) != 0)
        return cm_err_set(err, CM_EINVAL, "config text too long");
    if ((rc = cm_fs_write_private(p->conf, text, strlen(text), err)) != 0)
        return rc;
    cm_store_opts_init(&sopts);
    sopts.path = p->db;
    sopts.create = true;
    if ((rc = cm_store_open(&store, &sopts, err)) != 0)
        return rc;
    if ((rc = cm_store_begin(store, err)) == 0 &&
        (rc = cm_store_meta_set(store, "node_id", node_id, err)) == 0 &&
        (rc = cm_store_meta_set(store, "public_key", kp->public_key, err)) == 0)
        rc = cm_store_commit(store, err);
    return cm_store_close_after(&store, rc, err);
}

static void init_undo(const char *data, bool created_dir, const init_paths *p)
{
    const char *suffixes[] = {"", "-wal", "-shm"};
    char path[CM_PATH_MAX + 8];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s%s", p->db, suffixes[i]);
        unlink(path);
    }
    unlink(p->conf);
    unlink(p->key);
    if (created_dir)
        rmdir(data);
}

static int cmd_init(int argc, char **argv)
{
    data_opts o;
    init_paths p;
    cm_keypair kp;
    cm_err err;
    bool created = false;
    int rc = parse_data_opts("init", argc, argv, true, &o);
    if (rc != 0 || o.help)
        return rc ? rc : print_help(find_cmd("init"));
    if (optind < argc)
        return usage_error("init", "unexpected argument '%s'", argv[optind]);
    if (!o.node_id)
        return usage_error("init", "%s", "--node-id ID is required");
    if (cm_config_check_id("--node-id", o.node_id, &err) != 0) {
        fprintf(stderr, "caremesh init: %s\n", err.msg);
        return CM_EXIT_USAGE;
    }
    if (cm_fs_join(p.db, sizeof(p.db), o.data, CM_DB_FILE, &err) != 0 ||
        cm_fs_join(p.conf, sizeof(p.conf), o.data, CM_CONFIG_FILE, &err) != 0 ||
        cm_fs_join(p.key, sizeof(p.key), o.data, CM_KEY_FILE, &err) != 0)
        return fail("init", &err);
    if (cm_fs_mkdir_private(o.data, &created, &err) != 0)
        return fail("init", &err);
    struct stat sb;
    if (!created && stat(o.data, &sb) == 0 && (sb.st_mode & 077)) {
        cm_err_set(&err, CM_EPERM,
                   "%s: mode %04o lets other users in; use a new directory or chmod 700 it "
                   "(nothing changed)",
                   o.data, (unsigned)(sb.st_mode & 0777));
        return fail("init", &err);
    }
    const char *existing = cm_fs_exists(p.db)     ? p.db
                           : cm_fs_exists(p.key)  ? p.key
                           : cm_fs_exists(p.conf) ? p.conf
                                                  : NULL;
    if (existing) {
        cm_err_set(&err, CM_EEXISTS,
                   "%s already exists: %s is already initialised (nothing "
                   "changed)",
                   existing, o.data);
        return fail("init", &err);
    }
    if ((rc = init_write(o.node_id, &p, &kp, &err)) != 0) {
        init_undo(o.data, created, &p);
        cm_keys_wipe(&kp);
        return fail("init", &err);
    }
    cm_keys_wipe(&kp);
    printf("initialised node \"%s\" in %s\n"
           "  database  %s\n"
           "  config    %s\n"
           "  key pair  %s (mode 0600)\n"
           "public key: %s\n",
           o.node_id, o.data, p.db, p.conf, p.key, kp.public_key);
    return CM_EXIT_OK;
}

/* ---- node info -------------------------------------------------------- */

static int cmd_node(int argc, char **argv)
{
    data_opts o;
    cli_node n;
    cm_keypair kp;
    cm_err err;
    char key_path[CM_PATH_MAX];
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return argc < 2 ? usage_error("node", "%s", "missing subcommand (info)")
                        : print_help(find_cmd("node"));
    if (strcmp(argv[1], "info") != 0)
        return usage_error("node", "unknown subcommand '%s' (known: info)", argv[1]);
    int rc = parse_data_opts("node info", argc - 1, argv + 1, false, &o);
    if (rc != 0 || o.help)
        return rc ? rc : print_help(find_cmd("node"));
    if (optind < argc - 1)
        return usage_error("node info", "unexpected argument '%s'", argv[1 + optind]);
    if (node_open(&o, &n, &err) != 0)
        return fail("node info", &err);
    rc = cm_fs_join(key_path, sizeof(key_path), o.data, CM_KEY_FILE, &err);
    if (rc == 0)
        rc = cm_keys_load(&kp, key_path, &err);
    if (rc == 0) {
        printf("node id:    %s\nendpoint:   %s\npublic key: %s\nschema:     %d\n", n.node_id,
               n.cfg.fed_listen, kp.public_key, cm_store_schema_version(n.store));
        cm_keys_wipe(&kp);
    }
    node_close(&n);
    return rc ? fail("node info", &err) : CM_EXIT_OK;
}

/* ---- peers ------------------------------------------------------------ */

/* The kept statement sql with ?1 bound to peer; NULL with err. */
static sqlite3_stmt *peer_query(cli_node *n, const char *sql, const char *peer, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(n->store, sql, err);
    if (st)
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
    return st;
}

/* Under a peer's line: the organizations and indicators it shared with us. */
static int peer_shared(cli_node *n, const char *peer, cm_err *err)
{
    sqlite3_stmt *st =
        peer_query(n,
                   "SELECT organization, json_extract(doc, '$.name'), json_extract(doc, '$.kind'), "
                   "(SELECT group_concat(value, ', ') FROM json_each(doc, '$.services')), "
                   "json_array_length(doc, '$.providers'), received FROM directory WHERE peer = ?1 "
                   "ORDER BY organization",
                   peer, err);
    if (!st)
        return err->code;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *services = (const char *)sqlite3_column_text(st, 3);
        printf("    org %s: %s (%s), %d provider(s)%s%s\n", sqlite3_column_text(st, 0),
               sqlite3_column_text(st, 1), sqlite3_column_text(st, 2), sqlite3_column_int(st, 4),
               services ? ", offers " : "", services ? services : "");
    }
    sqlite3_reset(st);
    st = peer_query(n,
                    "SELECT partnership, name, json_extract(doc, '$.count'), "
                    "json_extract(doc, '$.median'), json_extract(doc, '$.mean') "
                    "FROM indicator WHERE peer = ?1 ORDER BY partnership, name",
                    peer, err);
    if (!st)
        return err->code;
    while (sqlite3_step(st) == SQLITE_ROW) {
        printf("    indicator %s/%s: count %lld", sqlite3_column_text(st, 0),
               sqlite3_column_text(st, 1), (long long)sqlite3_column_int64(st, 2));
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            printf(", median %g, mean %g", sqlite3_column_double(st, 3),
                   sqlite3_column_double(st, 4));
        printf("\n");
    }
    sqlite3_reset(st);
    return 0;
}

/* The peers from the database, with the node up or down (cliapi.h). */
static int peers_db(const char *data, const char *config, bool json)
{
    data_opts o = {.data = data, .config = config};
    cli_node n;
    cm_err err;
    int rc = 0;
    if (json) {
        fprintf(stderr, "caremesh peers: --json needs the node's API\n");
        return CM_EXIT_FAIL;
    }
    if (node_open(&o, &n, &err) != 0)
        return fail("peers", &err);
    if (!n.cfg.fed_enabled)
        printf("federation is not configured (see docs/federation.md)\n");
    else
        printf("listen %s, %d peer(s)\n%-24s %-32s %8s %12s  %s\n", n.cfg.fed_listen,
               n.cfg.fed_npeers, "PEER", "ENDPOINT", "PENDING", "OLDEST_S", "PUBLIC KEY");
    for (int i = 0; i < n.cfg.fed_npeers && rc == 0; i++) {
        const cm_peer_config *p = &n.cfg.fed_peers[i];
        long depth = 0;
        double age = -1;
        if ((rc = cm_fed_outbox_depth(n.store, p->id, cm_clock_now_ms(n.clock), &depth, &age,
                                      &err)) != 0)
            break;
        char agebuf[32] = "-";
        if (age >= 0)
            snprintf(agebuf, sizeof(agebuf), "%.1f", age);
        printf("%-24s %-32s %8ld %12s  %s\n", p->id, p->endpoint, depth, agebuf, p->public_key);
        rc = peer_shared(&n, p->id, &err);
    }
    node_close(&n);
    return rc ? fail("peers", &err) : CM_EXIT_OK;
}

static int cmd_peers(int argc, char **argv)
{
    int rc = cm_cliapi_peers(argc, argv, peers_db);
    return rc == CM_CLIAPI_HELP ? print_help(find_cmd("peers")) : rc;
}

/* ---- audit ------------------------------------------------------------ */

/* Verify the audit chain in the database, with the node up or down. */
static int audit_db(const char *data, const char *config, bool json)
{
    data_opts o = {.data = data, .config = config};
    cli_node n;
    cm_err err;
    long entries = 0;
    if (node_open(&o, &n, &err) != 0)
        return fail("audit verify", &err);
    int rc = cm_audit_verify(n.store, &entries, &err);
    node_close(&n);
    if (json) {
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddBoolToObject(doc, "ok", rc == 0);
        cJSON_AddNumberToObject(doc, "entries", (double)entries);
        if (rc != 0)
            cJSON_AddStringToObject(doc, "problem", err.msg);
        char *text = cJSON_PrintUnformatted(doc);
        if (text)
            printf("%s\n", text);
        free(text);
        cJSON_Delete(doc);
    }
    if (rc != 0)
        return fail("audit verify", &err);
    if (!json)
        printf("audit trail intact: %ld entr%s\n", entries, entries == 1 ? "y" : "ies");
    return CM_EXIT_OK;
}

static int cmd_audit(int argc, char **argv)
{
    int rc = cm_cliapi_audit(argc, argv, audit_db);
    return rc == CM_CLIAPI_HELP ? print_help(find_cmd("audit")) : rc;
}

/* ---- lua -------------------------------------------------------------- */

/* Run the script at argv[0] with argv[1..] as its `...`, in one transaction. */
typedef struct script_args {
    int argc;
    char **argv;
} script_args;

/* Call the chunk (argument 2) with the script's arguments, inside the
** protected call: many or large arguments are a clean error, never a crash. */
static int call_with_args(lua_State *L)
{
    const script_args *a = lua_touserdata(L, 1);
    luaL_checkstack(L, a->argc, "too many script arguments");
    for (int i = 0; i < a->argc; i++)
        lua_pushstring(L, a->argv[i]);
    lua_call(L, a->argc, 0);
    return 0;
}

/* The script failed and its transaction was rolled back, with the entries
** of what it read and wrote of patients (audited: cm_audit_collect's). It
** may have printed what it read: write them again, in one transaction, with
** outcome "error" (as the engine does for a failed step). err keeps the
** script's error; one that cannot be written is added to it. */
static void audit_script_again(cli_node *n, const cJSON *audited, cm_err *err)
{
    cm_err aerr;
    int rc = cm_store_begin(n->store, &aerr);
    if (rc == 0 && (rc = cm_audit_append_again(n->store, n->clock, audited, 0, "the script failed",
                                               &aerr)) != 0)
        cm_store_rollback(n->store);
    else if (rc == 0)
        rc = cm_store_commit(n->store, &aerr);
    if (rc != 0) {
        char msg[sizeof(err->msg)];
        snprintf(msg, sizeof(msg), "%s", err->msg);
        cm_err_set(err, err->code, "%s (and its audit entries could not be written again: %s)", msg,
                   aerr.msg);
    }
}

static int run_script(cli_node *n, int argc, char **argv, cm_err *err)
{
    cm_sandbox_limits limits = {n->cfg.lua_instructions, n->cfg.lua_memory_bytes};
    cJSON *audited = NULL; /* the script's entries, to write again if it is rolled back */
    cm_lua_host host = {n->store, n->model, n->clock, n->node_id, "cli", &audited, NULL, NULL};
    cm_sandbox *sb = cm_sandbox_new(&limits, err);
    cm_plugin_host *plugins = NULL;
    script_args args = {argc - 1, argv + 1};
    char *text = NULL;
    size_t len = 0;
    char chunkname[CM_PATH_MAX + 1];
    int rc;
    if (!sb)
        return err->code;
    lua_State *L = cm_sandbox_state(sb);
    if ((rc = cm_lua_host_set(L, &host, err)) != 0)
        goto done;
    cm_sandbox_preload(sb, "caremesh", cm_lua_open_caremesh);
    if (cJSON_GetArraySize(n->cfg.plugins) > 0 && /* their Lua functions, for the script */
        (!(plugins = cm_plugin_host_new(n->model, err)) ||
         (rc = cm_lua_plugins_enable(plugins, &limits, err)) != 0 ||
         (rc = cm_plugin_host_load_list(plugins, n->cfg.plugins, NULL, err)) != 0 ||
         (rc = cm_lua_plugins_attach(sb, plugins, err)) != 0)) {
        rc = err->code;
        goto done;
    }
    if ((rc = cm_fs_read(argv[0], (size_t)16 << 20, &text, &len, err)) != 0)
        goto done;
    if (len >= 2 && text[0] == '#' && text[1] == '!')
        text[0] = text[1] = '-'; /* a #! line becomes a comment; line numbers stay */
    snprintf(chunkname, sizeof(chunkname), "@%s", argv[0]);
    if ((rc = cm_sandbox_load(sb, chunkname, text, len, err)) != 0)
        goto done;
    /* stack: chunk */
    lua_pushcfunction(L, call_with_args);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, &args);
    lua_insert(L, -2);
    /* stack: call_with_args, args, chunk */
    if ((rc = cm_store_begin(n->store, err)) != 0)
        goto done;
    rc = cm_sandbox_pcall(sb, 2, 0, err);
    if (rc == 0)
        rc = cm_store_commit(n->store, err); /* rolls back itself on failure */
    else
        cm_store_rollback(n->store);
    if (rc != 0 && audited)
        audit_script_again(n, audited, err);
done:
    cJSON_Delete(audited);
    free(text);
    cm_sandbox_destroy(&sb);
    cm_plugin_host_destroy(&plugins);
    return rc;
}

static int cmd_lua(int argc, char **argv)
{
    data_opts o;
    cli_node n;
    cm_err err;
    int rc = parse_data_opts("lua", argc, argv, false, &o);
    if (rc != 0 || o.help)
        return rc ? rc : print_help(find_cmd("lua"));
    if (optind >= argc)
        return usage_error("lua", "%s", "missing FILE");
    if (node_open(&o, &n, &err) != 0)
        return fail("lua", &err);
    rc = run_script(&n, argc - optind, argv + optind, &err);
    node_close(&n);
    return rc ? fail("lua", &err) : CM_EXIT_OK;
}

/* ---- bench ------------------------------------------------------------ */

/* One option of a benchmark: a count (1..max) into an int or a long, or a
** text kept as given; exactly one of the three places is set. */
typedef struct bench_opt {
    const char *name; /* the long option, without -- */
    int *count;
    long *lcount;
    const char **text;
    long max; /* counts */
} bench_opt;

#define BENCH_OPTS_MAX 12
#define BENCH_GO       -1 /* bench_parse: the options are good, run */

/* Parse argv (argv[0] names the benchmark) against opts: BENCH_GO, or the
** exit code of --help or of a usage error naming the option at fault. */
static int bench_parse(const char *cmd, const bench_opt *opts, int nopts, int argc, char **argv)
{
    struct option longopts[BENCH_OPTS_MAX + 2];
    int c, i;
    for (i = 0; i < nopts && i < BENCH_OPTS_MAX; i++)
        longopts[i] = (struct option){opts[i].name, required_argument, NULL, 256 + i};
    longopts[i] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[i + 1] = (struct option){NULL, 0, NULL, 0};
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (c == 'h')
            return print_help(find_cmd("bench"));
        if (c < 256 || c >= 256 + nopts)
            return usage_error(cmd, "bad option or missing value: '%s'", argv[optind - 1]);
        const bench_opt *b = &opts[c - 256];
        long v;
        if (b->text) {
            *b->text = optarg;
            continue;
        }
        if (!parse_count(optarg, b->max, &v))
            return usage_error(cmd, "--%s: must be a count from 1 to %ld, got '%s'", b->name,
                               b->max, optarg);
        if (b->lcount)
            *b->lcount = v;
        else
            *b->count = (int)v;
    }
    if (optind < argc)
        return usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    return BENCH_GO;
}

static int bench_federation(int argc, char **argv)
{
    cm_bench_fed_opts o = {200000, CM_FED_WINDOW_DEFAULT, 256, 4000, 100, NULL, 0};
    const char *proto = NULL;
    const bench_opt opts[] = {
        {"messages", NULL, &o.messages, NULL, BENCH_COUNT_MAX},
        {"window", &o.window, NULL, NULL, CM_FED_WINDOW_MAX},
        {"batch", &o.batch, NULL, NULL, BENCH_COUNT_MAX},
        {"backlog", &o.backlog, NULL, NULL, BENCH_COUNT_MAX},
        {"size", &o.size, NULL, NULL, 64 * 1024},
        {"receiver-proto", NULL, NULL, &proto, 0},
    };
    cm_err err;
    int rc =
        bench_parse("bench federation", opts, (int)(sizeof(opts) / sizeof(opts[0])), argc, argv);
    if (rc != BENCH_GO)
        return rc;
    if (proto && strcmp(proto, "1.1") != 0 && strcmp(proto, "1.2") != 0)
        return usage_error("bench federation",
                           "--receiver-proto: '%s' is not a version this build speaks "
                           "(1.1 or 1.2)",
                           proto);
    if (proto)
        o.proto = proto[2] - '0';
    if (cm_bench_federation(&o, &err) != 0)
        return fail("bench federation", &err);
    return CM_EXIT_OK;
}

/* bench api: the daemon's HTTP API (bench_api.h) */
static int bench_api(int argc, char **argv)
{
    char host[64] = "127.0.0.1";
    const char *api = NULL;
    cm_bench_api_opts o = {host, 7600, getenv("CAREMESH_TOKEN"), "bench_api", "step", 1000, 20, 4,
                           64,   NULL};
    const bench_opt opts[] = {
        {"api", NULL, NULL, &api, 0},
        {"token", NULL, NULL, &o.token, 0},
        {"workflow", NULL, NULL, &o.workflow, 0},
        {"event", NULL, NULL, &o.event, 0},
        {"instances", &o.instances, NULL, NULL, BENCH_COUNT_MAX},
        {"events", &o.events, NULL, NULL, BENCH_COUNT_MAX},
        {"connections", &o.connections, NULL, NULL, BENCH_COUNT_MAX},
        {"pipeline", &o.pipeline, NULL, NULL, BENCH_COUNT_MAX},
        {"payload", NULL, NULL, &o.payload, 0},
    };
    cm_err err;
    int rc = bench_parse("bench api", opts, (int)(sizeof(opts) / sizeof(opts[0])), argc, argv);
    if (rc != BENCH_GO)
        return rc;
    if (api && cm_config_parse_listen(api, host, sizeof(host), &o.port) != 0)
        return usage_error("bench api", "--api: must be ADDRESS:PORT, got '%s'", api);
    if (cm_bench_api(&o, &err) != 0)
        return fail("bench api", &err);
    return CM_EXIT_OK;
}

static int cmd_bench(int argc, char **argv)
{
    cm_bench_opts o = {2000, 25, 256, NULL, 0, false, 0, 0, 0};
    const char *mode = NULL;
    const bench_opt opts[] = {
        {"instances", &o.instances, NULL, NULL, BENCH_COUNT_MAX},
        {"events", &o.rounds, NULL, NULL, BENCH_COUNT_MAX},
        {"batch", &o.batch, NULL, NULL, BENCH_COUNT_MAX},
        {"batch-ms", &o.batch_ms, NULL, NULL, BENCH_COUNT_MAX},
        {"mode", NULL, NULL, &mode, 0},
        {"outstanding", &o.outstanding, NULL, NULL, BENCH_COUNT_MAX},
        {"cache", &o.cache, NULL, NULL, BENCH_COUNT_MAX},
        {"ctx-bytes", &o.ctx_bytes, NULL, NULL, BENCH_COUNT_MAX},
    };
    cm_err err;
    if (argc >= 2 && strcmp(argv[1], "federation") == 0)
        return bench_federation(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "api") == 0)
        return bench_api(argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "engine") != 0)
        return argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
                   ? print_help(find_cmd("bench"))
                   : usage_error("bench", "%s",
                                 "missing or unknown benchmark (known: engine, federation, "
                                 "api)");
    int rc = bench_parse("bench engine", opts, (int)(sizeof(opts) / sizeof(opts[0])), argc - 1,
                         argv + 1);
    if (rc != BENCH_GO)
        return rc;
    if (mode && strcmp(mode, "loop") != 0 && strcmp(mode, "run") != 0)
        return usage_error("bench engine", "--mode: must be loop or run, got '%s'", mode);
    o.run_mode = mode && strcmp(mode, "run") == 0;
    if (cm_bench_engine(&o, &err) != 0)
        return fail("bench engine", &err);
    return CM_EXIT_OK;
}

/* ---- workflow --------------------------------------------------------- */

/* The plugins of a config file (workflow test --config), loaded with no records:
** each test lends them its own store. NULL with err on failure. */
static cm_plugin_host *test_plugins(const char *config, cm_config *cfg, cm_err *err)
{
    data_opts o = {.config = config};
    cm_plugin_host *host = NULL;
    cm_sandbox_limits limits = {0, 0};
    if (load_config(&o, cfg, err) != 0 || !(host = cm_plugin_host_new(NULL, err)))
        return NULL;
    limits = (cm_sandbox_limits){cfg->lua_instructions, cfg->lua_memory_bytes};
    if (cm_lua_plugins_enable(host, &limits, err) != 0) {
        cm_plugin_host_destroy(&host);
        return NULL;
    }
    if (cm_plugin_host_load_list(host, cfg->plugins, NULL, err) != 0)
        cm_plugin_host_destroy(&host);
    return host;
}

/* test [--config FILE] [--max-attempts N] FILE...: the engine parks a failing
** event after as many runs as the node's would: --max-attempts, else FILE's
** engine.max_attempts, else the default. */
static int workflow_test(int argc, char **argv)
{
    cm_test_counts counts = {0, 0};
    cm_plugin_host *plugins = NULL;
    cm_config cfg;
    cm_err err;
    const char *config = NULL;
    long attempts = 0;
    int first = 0, rc = CM_EXIT_OK;
    cm_config_defaults(&cfg);
    for (; first + 1 < argc; first += 2) {
        if (strcmp(argv[first], "--config") == 0)
            config = argv[first + 1];
        else if (strcmp(argv[first], "--max-attempts") == 0) {
            if (!parse_count(argv[first + 1], 100, &attempts)) {
                rc = usage_error("workflow test",
                                 "--max-attempts: must be a count from 1 to 100, got '%s'",
                                 argv[first + 1]);
                goto done;
            }
        } else
            break;
    }
    if (first < argc && (strcmp(argv[first], "--help") == 0 || strcmp(argv[first], "-h") == 0)) {
        rc = print_help(find_cmd("workflow"));
        goto done;
    }
    if (first < argc && argv[first][0] == '-' && argv[first][1]) {
        rc = usage_error("workflow test", "unknown option or missing value: '%s'", argv[first]);
        goto done;
    }
    if (argc - first < 1) {
        rc = usage_error("workflow test", "%s", "missing FILE");
        goto done;
    }
    if (config && !(plugins = test_plugins(config, &cfg, &err))) {
        rc = fail("workflow test", &err);
        goto done;
    }
    if (attempts == 0)
        attempts = cfg.engine_max_attempts;
    for (int i = first; i < argc; i++)
        cm_lua_test_file(argv[i], plugins, (int)attempts, &counts, &err);
    printf("%d passed, %d failed\n", counts.passed, counts.failed);
    rc = counts.failed || counts.passed == 0 ? CM_EXIT_FAIL : CM_EXIT_OK;
done:
    cm_plugin_host_destroy(&plugins);
    cm_config_free(&cfg);
    return rc;
}

/* check FILE...: every problem of every file, "path:line: message". */
static int workflow_check(int argc, char **argv)
{
    int problems = 0;
    if (argc < 1)
        return usage_error("workflow check", "%s", "missing FILE");
    for (int i = 0; i < argc; i++) {
        char *report = NULL;
        cm_err err;
        int n = cm_lua_workflow_check(argv[i], &report, &err);
        if (n < 0) {
            fprintf(stderr, "caremesh workflow check: %s\n", err.msg);
            problems++;
        } else {
            fputs(report, stdout);
            problems += n;
        }
        free(report);
    }
    if (problems == 0)
        printf("%d file(s) checked: no problems\n", argc);
    return problems ? CM_EXIT_FAIL : CM_EXIT_OK;
}

/* graph FILE [--mermaid] */
static int workflow_graph(int argc, char **argv)
{
    const char *file = NULL;
    bool mermaid = false;
    char *out = NULL;
    cm_err err;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--mermaid") == 0)
            mermaid = true;
        else if (argv[i][0] == '-' || file)
            return usage_error("workflow graph", "unexpected argument '%s'", argv[i]);
        else
            file = argv[i];
    }
    if (!file)
        return usage_error("workflow graph", "%s", "missing FILE");
    if (cm_lua_workflow_graph(file, mermaid, &out, &err) != 0)
        return fail("workflow graph", &err);
    fputs(out, stdout);
    free(out);
    return CM_EXIT_OK;
}

static int cmd_workflow(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return argc < 2 ? usage_error("workflow", "%s", "missing subcommand (check, graph, test)")
                        : print_help(find_cmd("workflow"));
    if (strcmp(argv[1], "check") == 0)
        return workflow_check(argc - 2, argv + 2);
    if (strcmp(argv[1], "graph") == 0)
        return workflow_graph(argc - 2, argv + 2);
    if (strcmp(argv[1], "test") == 0)
        return workflow_test(argc - 2, argv + 2);
    return usage_error("workflow", "unknown subcommand '%s' (known: check, graph, test)", argv[1]);
}

/* ---- serve ------------------------------------------------------------ */

/* serve without --data (nor CAREMESH_DATA) serves CM_DEFAULT_DATA, made on
** first start: its node id is the host name when that is a valid id. */
#define CM_DEFAULT_DATA "./caremesh-data"

static bool has_data_option(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--data", 6) == 0 || strncmp(argv[i], "-d", 2) == 0)
            return true;
    return getenv("CAREMESH_DATA") && *getenv("CAREMESH_DATA");
}

static int init_default_node(const char *data, cm_err *err)
{
    init_paths p;
    cm_keypair kp;
    char node_id[129] = "caremesh";
    bool created = false;
    int rc;
    if (gethostname(node_id, sizeof(node_id) - 1) != 0 ||
        cm_config_check_id("host name", node_id, NULL) != 0)
        snprintf(node_id, sizeof(node_id), "%s", "caremesh");
    if ((rc = cm_fs_join(p.db, sizeof(p.db), data, CM_DB_FILE, err)) != 0 ||
        (rc = cm_fs_join(p.conf, sizeof(p.conf), data, CM_CONFIG_FILE, err)) != 0 ||
        (rc = cm_fs_join(p.key, sizeof(p.key), data, CM_KEY_FILE, err)) != 0 ||
        (rc = cm_fs_mkdir_private(data, &created, err)) != 0)
        return rc;
    if ((rc = init_write(node_id, &p, &kp, err)) != 0)
        init_undo(data, created, &p);
    else
        cm_log(CM_LOG_INFO, "serve.init", "initialised node %s in %s (public key %s)", node_id,
               data, kp.public_key);
    cm_keys_wipe(&kp);
    return rc;
}

static int cmd_serve(int argc, char **argv)
{
    data_opts o;
    cli_node n;
    cm_err err;
    char *args[256], dflt[] = "--data=" CM_DEFAULT_DATA, conf[CM_PATH_MAX];
    const char *listen = NULL;
    int nargs = 0, rc;
    for (int i = 0; i < argc && nargs < 254; i++) { /* --listen is serve's own */
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen = argv[++i];
        else
            args[nargs++] = argv[i];
    }
    if (!has_data_option(argc, argv))
        args[nargs++] = dflt;
    args[nargs] = NULL;
    if ((rc = parse_data_opts("serve", nargs, args, false, &o)) != 0 || o.help)
        return rc ? rc : print_help(find_cmd("serve"));
    if (optind < nargs)
        return usage_error("serve", "unexpected argument '%s'", args[optind]);
    if (strcmp(o.data, CM_DEFAULT_DATA) == 0 && !cm_fs_exists(o.data) &&
        init_default_node(o.data, &err) != 0) {
        cm_log(CM_LOG_ERROR, "serve.fail", "%s", err.msg);
        return CM_EXIT_FAIL;
    }
    if (node_open(&o, &n, &err) != 0) {
        cm_log(CM_LOG_ERROR, "serve.fail", "%s", err.msg);
        return CM_EXIT_FAIL;
    }
    if (listen && cm_config_parse_listen(listen, n.cfg.api.host, sizeof(n.cfg.api.host),
                                         &n.cfg.api.port) != 0) {
        node_close(&n);
        return usage_error("serve", "--listen %s: must be ADDRESS:PORT with an IP address", listen);
    }
    char workflows[CM_PATH_MAX];
    if (n.cfg.workflows[0])
        snprintf(workflows, sizeof(workflows), "%s", n.cfg.workflows);
    else
        snprintf(workflows, sizeof(workflows), "%s/workflows", o.data);
    if (o.config)
        snprintf(conf, sizeof(conf), "%s", o.config);
    else if (cm_fs_join(conf, sizeof(conf), o.data, CM_CONFIG_FILE, &err) != 0 ||
             !cm_fs_exists(conf))
        conf[0] = '\0';
    cm_serve_opts so = {.data = o.data,
                        .workflows = workflows,
                        .cfg = &n.cfg,
                        .config_path = conf[0] ? conf : NULL,
                        .api_listen_fixed = listen != NULL,
                        .store = n.store,
                        .model = n.model,
                        .clock = n.clock,
                        .node_id = n.node_id};
    rc = cm_serve_run(&so, &err);
    node_close(&n);
    if (rc != 0) {
        cm_log(CM_LOG_ERROR, "serve.fail", "%s", err.msg);
        return CM_EXIT_FAIL;
    }
    return CM_EXIT_OK;
}

/* ---- config check ----------------------------------------------------- */

static int cmd_config(int argc, char **argv)
{
    cm_config cfg;
    cm_err err;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return argc < 2 ? usage_error("config", "%s", "missing subcommand (check)")
                        : print_help(find_cmd("config"));
    if (strcmp(argv[1], "check") != 0)
        return usage_error("config", "unknown subcommand '%s' (known: check)", argv[1]);
    if (argc != 3)
        return usage_error("config check", "%s", argc < 3 ? "missing FILE" : "one FILE only");
    int rc = cm_lconfig_load(argv[2], &cfg, &err);
    cm_config_free(&cfg);
    if (rc != 0)
        return fail("config check", &err);
    printf("%s: ok\n", argv[2]);
    return CM_EXIT_OK;
}

/* ---- backup (backup.h) ------------------------------------------------ */

typedef struct backup_progress {
    bool shown;
    int last_pct;
} backup_progress;

/* Progress on stderr for databases that take more than one step. */
static void show_backup_progress(void *ud, int64_t copied, int64_t total)
{
    backup_progress *p = ud;
    int pct = total > 0 ? (int)(copied * 100 / total) : 100;
    if (total <= CM_BACKUP_STEP_PAGES || (pct < 100 && pct - p->last_pct < 5))
        return;
    fprintf(stderr, "backup: %lld of %lld pages (%d%%)\n", (long long)copied, (long long)total,
            pct);
    p->shown = true;
    p->last_pct = pct;
}

static int cmd_backup(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"data", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *data = NULL;
    char db[CM_PATH_MAX];
    backup_progress progress = {false, 0};
    cm_backup_info info;
    cm_err err;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "d:h", longopts, NULL)) != -1) {
        if (c == 'd')
            data = optarg;
        else if (c == 'h')
            return print_help(find_cmd("backup"));
        else
            return usage_error("backup", "unknown option or missing value: '%s'", argv[optind - 1]);
    }
    if (data_dir("backup", &data) != 0)
        return CM_EXIT_USAGE;
    if (optind >= argc)
        return usage_error("backup", "%s", "missing FILE (where to write the backup)");
    if (optind + 1 < argc)
        return usage_error("backup", "unexpected argument '%s'", argv[optind + 1]);
    if (cm_fs_join(db, sizeof(db), data, CM_DB_FILE, &err) != 0 ||
        cm_backup_run(db, argv[optind], show_backup_progress, &progress, &info, &err) != 0)
        return fail("backup", &err);
    printf("backup of node \"%s\" (schema %d, %lld pages, %lld bytes) written to %s: "
           "integrity ok\n",
           info.node_id, info.schema_version, (long long)info.pages, (long long)info.bytes,
           argv[optind]);
    return CM_EXIT_OK;
}

/* ---- token: API bearer tokens (token.h) ------------------------------- */

static int token_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"data", required_argument, NULL, 'd'},
        {"config", required_argument, NULL, 'c'},
        {"scope", required_argument, NULL, 's'},
        {"name", required_argument, NULL, 'n'},
        {"save", no_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    data_opts o = {0};
    const char *scope = NULL, *name = NULL;
    bool save = false;
    char text[CM_TOKEN_TEXT_LEN + 1];
    cm_token_info info;
    cli_node n;
    cm_err err;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+d:c:s:n:h", longopts, NULL)) != -1) {
        if (c == 'd')
            o.data = optarg;
        else if (c == 'c')
            o.config = optarg;
        else if (c == 's')
            scope = optarg;
        else if (c == 'n')
            name = optarg;
        else if (c == 'S')
            save = true;
        else if (c == 'h')
            return print_help(find_cmd("token"));
        else
            return usage_error("token create", "unknown option or missing value: '%s'",
                               argv[optind - 1]);
    }
    if (data_dir("token create", &o.data) != 0)
        return CM_EXIT_USAGE;
    if (optind < argc)
        return usage_error("token create", "unexpected argument '%s'", argv[optind]);
    if (!scope || cm_scope_parse(scope) < 0)
        return usage_error("token create", "%s", "--scope must be read, write or admin");
    if (node_open(&o, &n, &err) != 0)
        return fail("token create", &err);
    char path[CM_PATH_MAX];
    int rc = save ? cm_fs_join(path, sizeof(path), o.data, CM_CLI_TOKEN_FILE, &err) : 0;
    if (rc == 0)
        rc = cm_token_create(n.store, n.clock, (cm_scope)cm_scope_parse(scope), name, text, &info,
                             &err);
    if (rc == 0 && save) {
        /* the CLI's token for this node (cliapi.h): 0600, replacing the one there */
        char line[CM_TOKEN_TEXT_LEN + 2];
        snprintf(line, sizeof(line), "%s\n", text);
        rc = cm_fs_write_private(path, line, strlen(line), &err);
        memset(line, 0, sizeof(line));
        cm_err err2;
        char first[CM_ERR_MSG_MAX];
        if (rc != 0 && cm_token_revoke(n.store, n.clock, info.id, &err2) != 0) {
            snprintf(first, sizeof(first), "%s", err.msg);
            cm_err_set(&err, rc, "%.600s; revoking the unsaved token %s failed too: %.300s", first,
                       info.id, err2.msg);
        }
    }
    node_close(&n);
    if (rc != 0)
        return fail("token create", &err);
    if (save)
        fprintf(stderr, "token %s (scope %s%s%s) created and saved to %s (mode 0600)\n", info.id,
                cm_scope_name(info.scope), info.name[0] ? ", name " : "", info.name, path);
    else
        printf("%s\n", text);
    if (!save)
        fprintf(stderr, "token %s (scope %s%s%s) created; it is shown only now: keep it secret\n",
                info.id, cm_scope_name(info.scope), info.name[0] ? ", name " : "", info.name);
    memset(text, 0, sizeof(text));
    return CM_EXIT_OK;
}

static int token_list(cli_node *n, cm_err *err)
{
    cJSON *list = NULL, *t;
    int rc = cm_token_list(n->store, &list, err);
    if (rc != 0)
        return rc;
    printf("%-16s %-24s %-6s %-24s %s\n", "ID", "NAME", "SCOPE", "CREATED", "REVOKED");
    cJSON_ArrayForEach(t, list)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(t, "name"));
        const char *revoked = cJSON_GetStringValue(cJSON_GetObjectItem(t, "revoked"));
        printf("%-16s %-24s %-6s %-24s %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(t, "id")),
               name ? name : "-", cJSON_GetStringValue(cJSON_GetObjectItem(t, "scope")),
               cJSON_GetStringValue(cJSON_GetObjectItem(t, "created")), revoked ? revoked : "-");
    }
    cJSON_Delete(list);
    return 0;
}

static int cmd_token(int argc, char **argv)
{
    data_opts o;
    cli_node n;
    cm_err err;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return argc < 2 ? usage_error("token", "%s", "missing subcommand (create, list, revoke)")
                        : print_help(find_cmd("token"));
    if (strcmp(argv[1], "create") == 0)
        return token_create(argc - 1, argv + 1);
    bool list = strcmp(argv[1], "list") == 0;
    if (!list && strcmp(argv[1], "revoke") != 0)
        return usage_error("token", "unknown subcommand '%s' (known: create, list, revoke)",
                           argv[1]);
    const char *sub = list ? "token list" : "token revoke", *which = NULL;
    char *args[64];
    int nargs = 0;
    /* the operand (revoke's ID|NAME) may come before or after the options */
    for (int i = 1; i < argc && nargs < 63; i++) {
        bool takes_value = strcmp(argv[i], "--data") == 0 || strcmp(argv[i], "--config") == 0 ||
                           strcmp(argv[i], "-d") == 0 || strcmp(argv[i], "-c") == 0;
        if (i > 1 && argv[i][0] != '-' && !which) {
            which = argv[i];
            continue;
        }
        args[nargs++] = argv[i];
        if (takes_value && i + 1 < argc && nargs < 63)
            args[nargs++] = argv[++i];
    }
    args[nargs] = NULL;
    int rc = parse_data_opts(sub, nargs, args, false, &o);
    if (rc != 0 || o.help)
        return rc ? rc : print_help(find_cmd("token"));
    if (optind < nargs)
        return usage_error(sub, "unexpected argument '%s'", args[optind]);
    if (list ? which != NULL : which == NULL)
        return usage_error(sub, "%s", list ? "unexpected argument" : "give one token ID or NAME");
    if (node_open(&o, &n, &err) != 0)
        return fail(sub, &err);
    rc = list ? token_list(&n, &err) : cm_token_revoke(n.store, n.clock, which, &err);
    node_close(&n);
    if (rc != 0)
        return fail(sub, &err);
    if (!list)
        printf("token %s revoked\n", which);
    return CM_EXIT_OK;
}

/* ---- dispatch --------------------------------------------------------- */

static int cmd_help(int argc, char **argv);

static const cli_cmd commands[] = {
    {"version", "print the versions of caremesh and its libraries",
     "Print the version of caremesh and of the libraries it runs on.", "version", cmd_version},
    {"init", "create a node: data directory, database, configuration, key pair",
     "Create a node's data directory (mode 0700) with its database (0600), its configuration\n"
     "file and its CURVE key pair (0600), and print the public key for partners. Refuses a\n"
     "directory that is already initialised.\n\n"
     "  --data DIR      data directory (or CAREMESH_DATA)\n"
     "  --node-id ID    this node's id: letters, digits, . _ : - (at most 128)",
     "init --data DIR --node-id ID", cmd_init},
    {"serve", "run the node: engine, workflows, plugins, federation",
     "Run the node in the foreground: the workflow engine with its durable timers, the\n"
     "workflow files of the workflows directory (config 'workflows', default DIR/workflows;\n"
     "without one, the shipped workflows built into caremesh), the HTTP API (config 'api',\n"
     "default 127.0.0.1:7600, docs/api.md), JSON-lines log on stderr. SIGHUP re-reads the\n"
     "configuration file (applies what can change while serving, logs what needs a\n"
     "restart, keeps the running one if the file is broken) and reloads plugins and\n"
     "workflows. SIGINT or SIGTERM stop accepting API requests, answer those read, and\n"
     "stop cleanly (exit 0). One serving process per data directory.\n\n"
     "  --data DIR      data directory (or CAREMESH_DATA; default ./caremesh-data, made\n"
     "                  on first start with the host name as node id)\n"
     "  --config FILE   configuration file (default DIR/caremesh.conf)\n"
     "  --listen A:P    the API's address, over api.listen (\"127.0.0.1:0\": a free port)\n"
     "  --virtual-clock TIME  for demos and rehearsals: run on a virtual clock that starts\n"
     "                  at TIME (ISO-8601) and moves only when advanced through the API\n"
     "                  (POST /v1/clock)",
     "serve [--data DIR] [--config FILE] [--listen ADDRESS:PORT] [--virtual-clock TIME]",
     cmd_serve},
    {"lua", "run an administrative Lua script against the store",
     "Run an administrative Lua script in the sandbox against the node's store. The script\n"
     "gets the `caremesh` module through require and ARGs as `...`; it runs in one\n"
     "transaction: if it raises, nothing it wrote is kept.\n\n"
     "  --data DIR      data directory (or CAREMESH_DATA)\n"
     "  --config FILE   configuration file (default DIR/caremesh.conf)",
     "lua --data DIR [--config FILE] FILE [ARG...]", cmd_lua},
    {"node", "print this node's id, endpoint and public key",
     "Print this node's id, federation endpoint and CURVE public key (for a partner's\n"
     "configuration).\n\n"
     "  --data DIR      data directory (or CAREMESH_DATA)",
     "node info --data DIR", cmd_node},
    {"peers", "list federation peers with what is pending for them",
     "List the configured federation peers with their endpoint, whether the link is up, the\n"
     "outbox depth (messages pending for them), the age in seconds of the oldest pending one\n"
     "and the public key. Asks the running node's API; when no API address was given and the\n"
     "node of the data directory cannot be reached (or no token is saved there), reads its\n"
     "database instead and says so on stderr: no UP column then, but under each peer the\n"
     "organizations (with their services) and the indicators it shared with this node.\n\n"
     "  --data DIR       data directory (or CAREMESH_DATA)\n"
     "  --config FILE    configuration file (default DIR/caremesh.conf)\n"
     "  --offline        read the database, not the API\n"
     "  --api HOST:PORT  the node's API (or CAREMESH_API); no database fallback then\n"
     "  --token TOKEN    bearer token (or CAREMESH_TOKEN; default DIR/cli.token)\n"
     "  --timeout S      seconds to wait for the answer (default 30)\n"
     "  --json           the API's JSON (needs the API)",
     "peers [--data DIR] [--config FILE] [--offline] [--api HOST:PORT] [--token TOKEN] [--json]",
     cmd_peers},
    {"audit", "verify the hash-chained audit trail",
     "Walk the audit trail and name the first entry that was altered, deleted or reordered\n"
     "(exit 1 then). Asks the running node's API (scope admin); when no API address was given\n"
     "and the node of the data directory cannot be reached (or no token is saved there),\n"
     "reads its database instead and says so on stderr.\n\n"
     "  --data DIR       data directory (or CAREMESH_DATA)\n"
     "  --config FILE    configuration file (default DIR/caremesh.conf)\n"
     "  --offline        read the database, not the API\n"
     "  --api HOST:PORT  the node's API (or CAREMESH_API); no database fallback then\n"
     "  --token TOKEN    bearer token (or CAREMESH_TOKEN; default DIR/cli.token)\n"
     "  --timeout S      seconds to wait for the answer (default 30)\n"
     "  --json           {\"ok\", \"entries\", \"problem\"?}",
     "audit verify [--data DIR] [--config FILE] [--offline] [--api HOST:PORT] [--token TOKEN] "
     "[--json]",
     cmd_audit},
    {"workflow", "check, graph and test workflow files",
     "Tools for workflow authors (docs/workflow-tools.md).\n\n"
     "  check FILE...           every problem as file:line: message (undefined or\n"
     "                          unreachable states, no final state, unknown effects, bad\n"
     "                          durations); exit 0 only when clean\n"
     "  graph FILE [--mermaid]  the state machine as Graphviz DOT, or Mermaid\n"
     "  test [--config FILE] [--max-attempts N] FILE...\n"
     "                          run Lua workflow tests (caremesh.test); a closing line\n"
     "                          'N passed, N failed'; exit 1 if any failed. --config loads\n"
     "                          the plugins of FILE: their Lua modules and listeners\n"
     "                          take part in each test, and its engine.max_attempts holds;\n"
     "                          --max-attempts N (1 to 100) parks a failing event after N\n"
     "                          runs (default: the config's, else 5)",
     "workflow check FILE... | graph FILE [--mermaid] | test [--config FILE] [--max-attempts N] "
     "FILE...",
     cmd_workflow},
    {"bench", "measure the engine, federation or the HTTP API",
     "Measure: 'engine' drives instances of a small referral-like workflow through the\n"
     "in-process engine at synchronous=FULL and prints events/s, submit-to-ack p50/p99\n"
     "and the raw SQLite batched-insert rate; the last line is one JSON object.\n\n"
     "  --instances N   instances (default 2000)\n"
     "  --events N      events per instance (default 25)\n"
     "  --batch N       events per commit (default 256)\n"
     "  --batch-ms N    a batch takes no more events after N ms of work (default 10)\n"
     "  --mode loop|run loop (default): the engine on a loop with group commit pipelined\n"
     "                  (the next batch runs during the previous one's fsync; acks after\n"
     "                  it); run: submit a batch, run it, wait for its fsync, repeat\n"
     "  --outstanding N loop mode: events submitted and not yet acknowledged\n"
     "                  (default 2 x batch, at most the instances)\n"
     "  --cache N       running instances kept in memory between steps (default: the\n"
     "                  engine's, engine.instance_cache)\n"
     "  --ctx-bytes N   each instance's context carries a string of N bytes (default 0)\n\n"
     "'federation' runs two nodes in one process (a thread and a loop each), linked over\n"
     "loopback with CURVE and ZAP, synchronous=FULL on both; rows are queued in the\n"
     "sender's outbox as an engine batch writes them and recorded in the receiver's inbox\n"
     "(inbox only, no engine). Prints delivered-and-acknowledged messages/s and the p50/p99\n"
     "of queued-to-acknowledged latency, checks that every message arrived once and in\n"
     "order (exit 1 otherwise); the last line is one JSON object. Data in a temporary\n"
     "directory, removed after.\n\n"
     "  --messages N    messages measured (default 200000)\n"
     "  --window N      messages in flight (default 1000)\n"
     "  --batch N       outbox rows queued per commit (default 256)\n"
     "  --backlog N     most rows queued and not yet acknowledged (default 4000)\n"
     "  --size N        payload bytes (default 100)\n"
     "  --receiver-proto 1.1|1.2   the protocol the receiver speaks (default 1.2; the\n"
     "                  sender sends batches of delivers to a 1.2 node, one at a time to 1.1)\n\n"
     "'api' drives a running daemon over HTTP keep-alive with pipelined requests: starts\n"
     "instances of --workflow, sends each --events events, and prints durable events/s\n"
     "(each answered after its commit) and request-to-answer p50/p99; last line JSON.\n"
     "The daemon needs the workflow loaded (tests/bench/bench_api.lua) and a write token.\n\n"
     "  --api ADDR:PORT   the daemon's API (default 127.0.0.1:7600)\n"
     "  --token TOKEN     a write token (or CAREMESH_TOKEN)\n"
     "  --workflow NAME   default bench_api; --event NAME: default step\n"
     "  --payload JSON    an object every event carries as its payload (default none)\n"
     "  --instances N --events N --connections N --pipeline N   (1000, 20, 4, 64)",
     "bench engine [--instances N] [--events N] [--batch N] [--batch-ms N] [--mode loop|run]"
     " [--outstanding N] [--cache N] [--ctx-bytes N]\n"
     "       caremesh bench federation [--messages N] [--window N] [--batch N] [--backlog N]"
     " [--size N] [--receiver-proto 1.1|1.2]\n"
     "       caremesh bench api [--api ADDR:PORT] [--token TOKEN] [OPTIONS]",
     cmd_bench},
    {"config", "check a configuration file",
     "Read a configuration file as 'caremesh serve' does (docs/configuration.md) and say\n"
     "whether it is good: 'FILE: ok', or the first problem with its file, line and key\n"
     "(exit 1). Use it before sending a serving node SIGHUP.",
     "config check FILE", cmd_config},
    {"backup", "take a consistent online backup of the node's database",
     "Copy the node's database to FILE through SQLite's online backup API: one consistent\n"
     "snapshot, taken while the node serves and writes (from a connection of its own;\n"
     "nothing waits on it). The copy is written to a temp file beside FILE (mode 0600),\n"
     "checked (integrity, schema version, node id), fsynced and renamed to FILE; an\n"
     "existing FILE is never replaced. Progress goes to stderr for large databases.\n"
     "The key pair (node.key) and the configuration are not in it: keep copies of them\n"
     "once. Restoring: docs/operations.md.\n\n"
     "  --data DIR      data directory (or CAREMESH_DATA)",
     "backup FILE --data DIR", cmd_backup},
    {"token", "create, list and revoke API bearer tokens",
     "Bearer tokens for the HTTP API (docs/api.md). 'create' prints the token once on\n"
     "stdout; only a hash of it is kept. Scopes are ordered: read < write < admin.\n"
     "Works while the node serves; a revoked token is refused at its next request.\n\n"
     "  create --scope read|write|admin [--name NAME] [--save]\n"
     "                  make a token; --save writes it to DIR/cli.token (mode 0600, replacing\n"
     "                  the one there) for the API commands, instead of printing it\n"
     "  list                                          id, name, scope, created, revoked\n"
     "  revoke ID|NAME                                revoke a token\n"
     "  --data DIR      data directory (or CAREMESH_DATA)\n"
     "  --config FILE   configuration file (default DIR/caremesh.conf)",
     "token create --scope SCOPE [--name NAME] [--save] | list | revoke ID|NAME  --data DIR",
     cmd_token},
    {"help", "show the commands, or one command's help",
     "Show the commands, or one command's help.", "help [COMMAND]", cmd_help},
};

#define CM_NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static const cli_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < CM_NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void print_overview(FILE *out)
{
    fprintf(out, "usage: caremesh COMMAND [OPTIONS]\n\n"
                 "caremesh runs a site's partnership workflows and links it to partner sites.\n\n"
                 "commands:\n");
    for (size_t i = 0; i < CM_NCOMMANDS; i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].brief);
    cm_cliapi_overview(out);
    fprintf(out, "\n'caremesh COMMAND --help' shows a command's options; plugins of a node may\n"
                 "add commands ('caremesh NAME --data DIR').\n");
}

static int cmd_help(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))
        return print_help(find_cmd("help"));
    if (argc < 2) {
        print_overview(stdout);
        return CM_EXIT_OK;
    }
    const cli_cmd *cmd = find_cmd(argv[1]);
    const cm_cliapi_cmd *acmd = cmd ? NULL : cm_cliapi_find(argv[1]);
    if (acmd)
        return cm_cliapi_help(acmd);
    if (!cmd)
        return usage_error("help", "unknown command '%s'", argv[1]);
    return print_help(cmd);
}

/* A command a plugin of the node registered: `caremesh NAME [--data DIR] ARGS...`.
** The node's configured plugins are loaded, the command runs, they are unloaded. */
static int plugin_command(int argc, char **argv)
{
    data_opts o = {0};
    cli_node n;
    cm_err err;
    cm_plugin_host *host = NULL;
    char *args[256];
    int nargs = 0, rc = CM_EXIT_USAGE;
    bool found = false;
    for (int i = 0; i < argc && nargs < 255; i++) { /* take --data DIR out of the arguments */
        if (strcmp(argv[i], "--data") == 0 && i + 1 < argc)
            o.data = argv[++i];
        else
            args[nargs++] = argv[i];
    }
    args[nargs] = NULL;
    if (!o.data)
        o.data = getenv("CAREMESH_DATA");
    if (!o.data || !*o.data) {
        fprintf(stderr, "caremesh: unknown command '%s'\nTry 'caremesh --help'.\n", argv[0]);
        return CM_EXIT_USAGE;
    }
    cm_config cfg;
    bool plugged = load_config(&o, &cfg, &err) == 0 && cJSON_GetArraySize(cfg.plugins) > 0;
    cm_config_free(&cfg);
    if (!plugged) { /* a typo, most likely: no plugin could have added it */
        fprintf(stderr, "caremesh: unknown command '%s'\nTry 'caremesh --help'.\n", argv[0]);
        return CM_EXIT_USAGE;
    }
    if (node_open(&o, &n, &err) != 0)
        return fail(argv[0], &err);
    cm_sandbox_limits limits = {n.cfg.lua_instructions, n.cfg.lua_memory_bytes};
    if (!(host = cm_plugin_host_new(n.model, &err)) ||
        cm_lua_plugins_enable(host, &limits, &err) != 0 ||
        cm_plugin_host_load_list(host, n.cfg.plugins, NULL, &err) != 0) {
        rc = fail(argv[0], &err);
        goto done;
    }
    rc = cm_plugin_host_command(host, nargs, args, &found);
    if (!found) {
        fprintf(stderr,
                "caremesh: unknown command '%s' (neither built in nor added by a plugin of %s)\n"
                "Try 'caremesh --help'.\n",
                argv[0], o.data);
        rc = CM_EXIT_USAGE;
    }
done:
    cm_plugin_host_destroy(&host);
    node_close(&n);
    return rc;
}

int cm_cli_main(int argc, char **argv)
{
    if (argc < 2) {
        print_overview(stderr);
        return CM_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cmd_help(1, argv);
    if (strcmp(argv[1], "--version") == 0)
        return cmd_version(1, argv);
    const cli_cmd *cmd = find_cmd(argv[1]);
    const cm_cliapi_cmd *acmd = cmd ? NULL : cm_cliapi_find(argv[1]);
    if (acmd)
        return acmd->run(argc - 1, argv + 1);
    if (!cmd)
        return plugin_command(argc - 1, argv + 1);
    return cmd->run(argc - 1, argv + 1);
}
