/*
** config.c -- check a parsed configuration and fill defaults.
*/
#include "config.h"

#include "engine.h"
#include "text.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <uv.h>
#include <zmq.h>
#include <stdio.h>
#include <string.h>

void cm_config_defaults(cm_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->synchronous = CM_SYNC_FULL;
    cfg->busy_timeout_ms = 5000;
    cfg->lua_instructions = 10000000;
    cfg->lua_memory_bytes = (size_t)64 << 20;
    cfg->engine_max_attempts = 5;
    cfg->engine_instance_cache = CM_ENGINE_CACHE_DEFAULT;
    cfg->log_level = CM_LOG_INFO;
    snprintf(cfg->fed_listen, sizeof(cfg->fed_listen), "%s", CM_FED_DEFAULT_LISTEN);
    /* api */
    cfg->api.enabled = true;
    snprintf(cfg->api.host, sizeof(cfg->api.host), "%s", CM_API_DEFAULT_HOST);
    cfg->api.port = CM_API_DEFAULT_PORT;
    cfg->api.max_connections = 256;
    cfg->api.max_header_bytes = 16384;
    cfg->api.max_body_bytes = 1 << 20;
    cfg->api.max_pipeline = 64;
    cfg->api.timeout_ms = 10000;
}

void cm_config_free(cm_config *cfg)
{
    cJSON_Delete(cfg->plugins);
    cfg->plugins = NULL;
}

int cm_config_check_id(const char *what, const char *s, cm_err *err)
{
    long bad = cm_id_check(s);
    if (bad < 0)
        return cm_err_set(err, CM_EINVAL, "%s: must be 1 to %d characters", what, CM_ID_MAX);
    if (bad > 0) {
        char c = s[bad - 1];
        return cm_err_set(err, CM_EINVAL,
                          "%s: character %ld ('%c') is not allowed (use letters, digits, . _ : -)",
                          what, bad, (c >= 0x20 && c < 0x7f) ? c : '?');
    }
    return 0;
}

typedef struct cfg_ctx {
    const char *source;
    cm_err *err;
} cfg_ctx;

/* Check that obj has only the listed keys (NULL-terminated). */
static int only_keys(cfg_ctx *cx, const cJSON *obj, const char *section, const char *const *keys)
{
    char known[256] = "";
    const cJSON *item;
    if (!cJSON_IsObject(obj))
        return cm_err_set(cx->err, CM_ECONFIG, "%s: %s: must be a table", cx->source,
                          section ? section : "the file");
    cJSON_ArrayForEach(item, obj)
    {
        bool ok = false;
        for (const char *const *k = keys; *k; k++)
            ok = ok || strcmp(item->string, *k) == 0;
        if (ok)
            continue;
        for (const char *const *k = keys; *k; k++)
            snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s",
                     k == keys ? "" : ", ", *k);
        return cm_err_set(cx->err, CM_ECONFIG, "%s: %s%s%s: unknown key (known: %s)", cx->source,
                          section ? section : "", section ? "." : "", item->string, known);
    }
    return 0;
}

static int get_int(cfg_ctx *cx, const cJSON *obj, const char *section, const char *key, double lo,
                   double hi, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return cm_err_set(cx->err, CM_ECONFIG,
                          "%s: %s.%s: must be a whole number from %.0f to %.0f", cx->source,
                          section, key, lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int get_choice(cfg_ctx *cx, const cJSON *obj, const char *section, const char *key,
                      int (*parse)(const char *), const char *choices, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return 0;
    int c = cJSON_IsString(v) ? parse(v->valuestring) : -1;
    if (c < 0)
        return cm_err_set(cx->err, CM_ECONFIG, "%s: %s.%s: must be one of %s", cx->source, section,
                          key, choices);
    *out = c;
    return 0;
}

/* Does s end in ":PORT", PORT 1..65535 or "*" (any, for a listener), after a host? */
static bool endpoint_port_ok(const char *s)
{
    const char *colon = strrchr(s, ':');
    char *end;
    if (!colon || colon == s)
        return false;
    if (strcmp(colon + 1, "*") == 0)
        return true;
    long port = strtol(colon + 1, &end, 10);
    return colon[1] >= '0' && colon[1] <= '9' && !*end && port >= 1 && port <= 65535;
}

/* A tcp://HOST:PORT endpoint that fits. */
static int get_endpoint(cfg_ctx *cx, const cJSON *v, const char *what, char *out, size_t outsz)
{
    if (!cJSON_IsString(v) || strncmp(v->valuestring, "tcp://", 6) != 0 ||
        !endpoint_port_ok(v->valuestring + 6) || strlen(v->valuestring) >= outsz)
        return cm_err_set(cx->err, CM_ECONFIG,
                          "%s: %s: must be a tcp://HOST:PORT endpoint (under %zu characters)",
                          cx->source, what, outsz);
    snprintf(out, outsz, "%s", v->valuestring);
    return 0;
}

static int get_peer(cfg_ctx *cx, const cJSON *p, int i, cm_peer_config *out)
{
    static const char *const peer_keys[] = {"id", "endpoint", "public_key", NULL};
    char what[96];
    uint8_t raw[32];
    int rc;
    snprintf(what, sizeof(what), "federation.peers[%d]", i + 1);
    if ((rc = only_keys(cx, p, what, peer_keys)) != 0)
        return rc;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(p, "id");
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(p, "endpoint");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(p, "public_key");
    if (!cJSON_IsString(id) || !ep || !cJSON_IsString(key))
        return cm_err_set(cx->err, CM_ECONFIG,
                          "%s: %s: id, endpoint and public_key are required strings", cx->source,
                          what);
    char idwhat[160];
    snprintf(idwhat, sizeof(idwhat), "%s: %s.id", cx->source, what);
    if (cm_config_check_id(idwhat, id->valuestring, cx->err) != 0)
        return cm_err_recode(cx->err, CM_ECONFIG);
    snprintf(idwhat, sizeof(idwhat), "%s.endpoint", what);
    if ((rc = get_endpoint(cx, ep, idwhat, out->endpoint, sizeof(out->endpoint))) != 0)
        return rc;
    if (strlen(key->valuestring) != 40 || !zmq_z85_decode(raw, key->valuestring))
        return cm_err_set(cx->err, CM_ECONFIG,
                          "%s: %s.public_key: must be a CURVE public key, 40 Z85 characters "
                          "(as `caremesh node info` prints it)",
                          cx->source, what);
    snprintf(out->id, sizeof(out->id), "%s", id->valuestring);
    snprintf(out->public_key, sizeof(out->public_key), "%s", key->valuestring);
    return 0;
}

static int get_federation(cfg_ctx *cx, const cJSON *sec, cm_config *next)
{
    static const char *const fed_keys[] = {"listen", "peers", NULL};
    const cJSON *v, *p;
    int rc, n = 0;
    if ((rc = only_keys(cx, sec, "federation", fed_keys)) != 0)
        return rc;
    if ((v = cJSON_GetObjectItemCaseSensitive(sec, "listen")) &&
        (rc = get_endpoint(cx, v, "federation.listen", next->fed_listen,
                           sizeof(next->fed_listen))) != 0)
        return rc;
    v = cJSON_GetObjectItemCaseSensitive(sec, "peers");
    if (v && !cJSON_IsArray(v) && !(cJSON_IsObject(v) && !v->child))
        return cm_err_set(cx->err, CM_ECONFIG, "%s: federation.peers: must be a list of tables",
                          cx->source);
    cJSON_ArrayForEach(p, v)
    {
        if (n >= CM_FED_MAX_PEERS)
            return cm_err_set(cx->err, CM_ECONFIG, "%s: federation.peers: at most %d peers",
                              cx->source, CM_FED_MAX_PEERS);
        if ((rc = get_peer(cx, p, n, &next->fed_peers[n])) != 0)
            return rc;
        for (int j = 0; j < n; j++)
            if (strcmp(next->fed_peers[j].id, next->fed_peers[n].id) == 0 ||
                strcmp(next->fed_peers[j].public_key, next->fed_peers[n].public_key) == 0)
                return cm_err_set(cx->err, CM_ECONFIG,
                                  "%s: federation.peers[%d]: same id or public key as "
                                  "federation.peers[%d]",
                                  cx->source, n + 1, j + 1);
        n++;
    }
    next->fed_npeers = n;
    next->fed_enabled = true;
    return 0;
}

/* ---- api ---------------------------------------------------------------- */

int cm_config_parse_listen(const char *s, char *host, size_t hostsz, int *port)
{
    const char *colon, *h = s;
    size_t hlen;
    unsigned char buf[16];
    if (!s)
        return CM_EINVAL;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return CM_EINVAL;
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        if (!(colon = strrchr(s, ':')) || memchr(s, ':', (size_t)(colon - s)))
            return CM_EINVAL;
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= hostsz)
        return CM_EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535)
        return CM_EINVAL;
    if (uv_inet_pton(s[0] == '[' ? AF_INET6 : AF_INET, host, buf) != 0)
        return CM_EINVAL;
    *port = (int)p;
    return 0;
}

static int get_api(cfg_ctx *cx, const cJSON *sec, cm_config *next)
{
    static const char *const keys[] = {"enabled",          "listen",         "max_connections",
                                       "max_header_bytes", "max_body_bytes", "max_pipeline",
                                       "timeout_ms",       "open_loopback",  NULL};
    static const struct {
        const char *key;
        double lo, hi;
        size_t off;
    } nums[] = {
        {"max_connections", 1, 65536, offsetof(cm_api_config, max_connections)},
        {"max_header_bytes", 1024, 1 << 20, offsetof(cm_api_config, max_header_bytes)},
        {"max_body_bytes", 1024, 256 << 20, offsetof(cm_api_config, max_body_bytes)},
        {"max_pipeline", 1, 1024, offsetof(cm_api_config, max_pipeline)},
        {"timeout_ms", 100, 3600000, offsetof(cm_api_config, timeout_ms)},
    };
    cm_api_config api = next->api;
    const cJSON *v;
    int rc;
    if ((rc = only_keys(cx, sec, "api", keys)) != 0)
        return rc;
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        int *field = (int *)((char *)&api + nums[i].off);
        double num = *field;
        if ((rc = get_int(cx, sec, "api", nums[i].key, nums[i].lo, nums[i].hi, &num)) != 0)
            return rc;
        *field = (int)num;
    }
    const char *bools[] = {"enabled", "open_loopback"};
    bool *bfields[] = {&api.enabled, &api.open_loopback};
    for (int i = 0; i < 2; i++) {
        if (!(v = cJSON_GetObjectItemCaseSensitive(sec, bools[i])))
            continue;
        if (!cJSON_IsBool(v))
            return cm_err_set(cx->err, CM_ECONFIG, "%s: api.%s: must be true or false", cx->source,
                              bools[i]);
        *bfields[i] = cJSON_IsTrue(v);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(sec, "listen")) &&
        (!cJSON_IsString(v) ||
         cm_config_parse_listen(v->valuestring, api.host, sizeof(api.host), &api.port) != 0))
        return cm_err_set(cx->err, CM_ECONFIG,
                          "%s: api.listen: must be \"ADDRESS:PORT\" with an IP address "
                          "(\"127.0.0.1:7600\", \"[::1]:7600\"), port 0 to 65535",
                          cx->source);
    next->api = api;
    return 0;
}

/* plugins = { { name = "fhir", path = "/usr/lib/caremesh/fhir.so", optional = true,
** config = { ... } }, ... } */
static int check_plugins(cfg_ctx *cx, const cJSON *plugins)
{
    static const char *const keys[] = {"name", "path", "optional", "config", NULL};
    const cJSON *p;
    int i = 0;
    if (!cJSON_IsArray(plugins) && !(cJSON_IsObject(plugins) && !plugins->child))
        return cm_err_set(cx->err, CM_ECONFIG, "%s: plugins: must be a list of { name =, path = }",
                          cx->source);
    cJSON_ArrayForEach(p, plugins)
    {
        char section[32];
        int rc;
        snprintf(section, sizeof(section), "plugins[%d]", ++i);
        if ((rc = only_keys(cx, p, section, keys)) != 0)
            return rc;
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(p, "name");
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(p, "path");
        const cJSON *opt = cJSON_GetObjectItemCaseSensitive(p, "optional");
        const cJSON *conf = cJSON_GetObjectItemCaseSensitive(p, "config");
        if (!cJSON_IsString(name) || cm_id_check(name->valuestring) != 0)
            return cm_err_set(cx->err, CM_ECONFIG, "%s: %s.name: required, an id", cx->source,
                              section);
        if (!cJSON_IsString(path) || path->valuestring[0] != '/')
            return cm_err_set(cx->err, CM_ECONFIG,
                              "%s: %s.path: required, the absolute path of the plugin's .so "
                              "file, or of a Lua plugin's directory (or .lua file)",
                              cx->source, section);
        if (opt && !cJSON_IsBool(opt))
            return cm_err_set(cx->err, CM_ECONFIG, "%s: %s.optional: must be true or false",
                              cx->source, section);
        if (conf && !cJSON_IsObject(conf))
            return cm_err_set(cx->err, CM_ECONFIG, "%s: %s.config: must be a table", cx->source,
                              section);
    }
    return 0;
}

int cm_config_apply(cm_config *cfg, const cJSON *root, const char *source, cm_err *err)
{
    static const char *const top[] = {"node_id",   "store",      "lua",     "engine", "log",
                                      "workflows", "federation", "plugins", "api",    NULL};
    static const char *const store_keys[] = {"synchronous", "busy_timeout_ms", NULL};
    static const char *const lua_keys[] = {"instructions", "memory_mb", NULL};
    static const char *const log_keys[] = {"level", NULL};
    static const char *const engine_keys[] = {"max_attempts", "instance_cache", NULL};
    cfg_ctx cx = {source, err};
    cm_config next = *cfg;
    const cJSON *sec;
    int rc, choice;
    double num;

    if ((rc = only_keys(&cx, root, NULL, top)) != 0)
        return rc;
    const cJSON *node = cJSON_GetObjectItemCaseSensitive(root, "node_id");
    if (node) {
        char what[160];
        snprintf(what, sizeof(what), "%s: node_id", source);
        if (!cJSON_IsString(node))
            return cm_err_set(err, CM_ECONFIG, "%s: must be a string", what);
        if (cm_config_check_id(what, node->valuestring, err) != 0)
            return cm_err_recode(err, CM_ECONFIG);
        snprintf(next.node_id, sizeof(next.node_id), "%s", node->valuestring);
    }
    const cJSON *wf = cJSON_GetObjectItemCaseSensitive(root, "workflows");
    if (wf) {
        if (!cJSON_IsString(wf) || !wf->valuestring[0] ||
            strlen(wf->valuestring) >= sizeof(next.workflows))
            return cm_err_set(err, CM_ECONFIG, "%s: workflows: must be a directory path", source);
        snprintf(next.workflows, sizeof(next.workflows), "%s", wf->valuestring);
    }
    if ((sec = cJSON_GetObjectItemCaseSensitive(root, "store"))) {
        if ((rc = only_keys(&cx, sec, "store", store_keys)) != 0)
            return rc;
        choice = (int)next.synchronous;
        if ((rc = get_choice(&cx, sec, "store", "synchronous", cm_sync_parse,
                             "off, normal, full, extra", &choice)) != 0)
            return rc;
        next.synchronous = (cm_sync)choice;
        num = next.busy_timeout_ms;
        if ((rc = get_int(&cx, sec, "store", "busy_timeout_ms", 1, 600000, &num)) != 0)
            return rc;
        next.busy_timeout_ms = (int)num;
    }
    if ((sec = cJSON_GetObjectItemCaseSensitive(root, "lua"))) {
        if ((rc = only_keys(&cx, sec, "lua", lua_keys)) != 0)
            return rc;
        num = (double)next.lua_instructions;
        if ((rc = get_int(&cx, sec, "lua", "instructions", 1000, 1e11, &num)) != 0)
            return rc;
        next.lua_instructions = (uint64_t)num;
        num = (double)(next.lua_memory_bytes >> 20);
        if ((rc = get_int(&cx, sec, "lua", "memory_mb", 1, 16384, &num)) != 0)
            return rc;
        next.lua_memory_bytes = (size_t)num << 20;
    }
    if ((sec = cJSON_GetObjectItemCaseSensitive(root, "engine"))) {
        if ((rc = only_keys(&cx, sec, "engine", engine_keys)) != 0)
            return rc;
        num = next.engine_max_attempts;
        if ((rc = get_int(&cx, sec, "engine", "max_attempts", 1, 100, &num)) != 0)
            return rc;
        next.engine_max_attempts = (int)num;
        num = next.engine_instance_cache;
        rc = get_int(&cx, sec, "engine", "instance_cache", 0, CM_ENGINE_CACHE_LIMIT, &num);
        if (rc != 0)
            return rc;
        next.engine_instance_cache = (int)num;
    }
    if ((sec = cJSON_GetObjectItemCaseSensitive(root, "log"))) {
        if ((rc = only_keys(&cx, sec, "log", log_keys)) != 0)
            return rc;
        choice = (int)next.log_level;
        if ((rc = get_choice(&cx, sec, "log", "level", cm_log_level_parse,
                             "debug, info, warn, error", &choice)) != 0)
            return rc;
        next.log_level = (cm_log_level)choice;
    }
    if ((sec = cJSON_GetObjectItemCaseSensitive(root, "federation")) &&
        (rc = get_federation(&cx, sec, &next)) != 0)
        return rc;
    if ((sec = cJSON_GetObjectItemCaseSensitive(root, "api")) &&
        (rc = get_api(&cx, sec, &next)) != 0)
        return rc;
    /* last: the only step that allocates, so nothing can fail after it */
    const cJSON *plugins = cJSON_GetObjectItemCaseSensitive(root, "plugins");
    if (plugins && (rc = check_plugins(&cx, plugins)) != 0)
        return rc;
    if (plugins && !(next.plugins = cJSON_Duplicate(plugins, true)))
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    if (plugins)
        cJSON_Delete(cfg->plugins);
    *cfg = next;
    return 0;
}

/* ---- reload ----------------------------------------------------------------- */

static void diff_add(char *list, size_t listsz, const char *key)
{
    size_t n = strlen(list);
    snprintf(list + n, listsz - n, "%s%s", n ? ", " : "", key);
}

static bool same_plugins(const cJSON *a, const cJSON *b)
{
    if (!a || !b)
        return cJSON_GetArraySize(a) == 0 && cJSON_GetArraySize(b) == 0;
    return cJSON_Compare(a, b, true);
}

static bool same_peers(const cm_config *a, const cm_config *b)
{
    if (a->fed_npeers != b->fed_npeers)
        return false;
    for (int i = 0; i < a->fed_npeers; i++)
        if (strcmp(a->fed_peers[i].id, b->fed_peers[i].id) != 0 ||
            strcmp(a->fed_peers[i].endpoint, b->fed_peers[i].endpoint) != 0 ||
            strcmp(a->fed_peers[i].public_key, b->fed_peers[i].public_key) != 0)
            return false;
    return true;
}

void cm_config_diff_of(const cm_config *run, const cm_config *next, cm_config_diff *d)
{
    const cm_api_config *ra = &run->api, *na = &next->api;
    struct {
        bool changed, live;
        const char *key;
    } keys[] = {
        {run->log_level != next->log_level, true, "log.level"},
        {strcmp(run->workflows, next->workflows) != 0, true, "workflows"},
        {!same_plugins(run->plugins, next->plugins), true, "plugins"},
        {ra->max_connections != na->max_connections, true, "api.max_connections"},
        {ra->max_header_bytes != na->max_header_bytes, true, "api.max_header_bytes"},
        {ra->max_body_bytes != na->max_body_bytes, true, "api.max_body_bytes"},
        {ra->max_pipeline != na->max_pipeline, true, "api.max_pipeline"},
        {ra->timeout_ms != na->timeout_ms, true, "api.timeout_ms"},
        {ra->open_loopback != na->open_loopback, true, "api.open_loopback"},
        {ra->enabled != na->enabled, false, "api.enabled"},
        {strcmp(ra->host, na->host) != 0 || ra->port != na->port, false, "api.listen"},
        {run->synchronous != next->synchronous, false, "store.synchronous"},
        {run->busy_timeout_ms != next->busy_timeout_ms, false, "store.busy_timeout_ms"},
        {run->lua_instructions != next->lua_instructions, false, "lua.instructions"},
        {run->lua_memory_bytes != next->lua_memory_bytes, false, "lua.memory_mb"},
        {run->engine_max_attempts != next->engine_max_attempts, false, "engine.max_attempts"},
        {run->engine_instance_cache != next->engine_instance_cache, false, "engine.instance_cache"},
        {run->fed_enabled != next->fed_enabled, false, "federation"},
        {strcmp(run->fed_listen, next->fed_listen) != 0, false, "federation.listen"},
        {!same_peers(run, next), false, "federation.peers"},
    };
    memset(d, 0, sizeof(*d));
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (keys[i].changed)
            diff_add(keys[i].live ? d->live : d->restart,
                     keys[i].live ? sizeof(d->live) : sizeof(d->restart), keys[i].key);
    d->log = keys[0].changed;
    d->workflows = keys[1].changed;
    d->plugins = keys[2].changed;
    d->api = ra->max_connections != na->max_connections ||
             ra->max_header_bytes != na->max_header_bytes ||
             ra->max_body_bytes != na->max_body_bytes || ra->max_pipeline != na->max_pipeline ||
             ra->timeout_ms != na->timeout_ms || ra->open_loopback != na->open_loopback;
}

void cm_config_take_live(cm_config *run, cm_config *next)
{
    run->log_level = next->log_level;
    snprintf(run->workflows, sizeof(run->workflows), "%s", next->workflows);
    cJSON_Delete(run->plugins);
    run->plugins = next->plugins;
    next->plugins = NULL;
    run->api.max_connections = next->api.max_connections;
    run->api.max_header_bytes = next->api.max_header_bytes;
    run->api.max_body_bytes = next->api.max_body_bytes;
    run->api.max_pipeline = next->api.max_pipeline;
    run->api.timeout_ms = next->api.timeout_ms;
    run->api.open_loopback = next->api.open_loopback;
}

int cm_config_render(const cm_config *cfg, char *out, size_t outsz)
{
    static const char *sync_names[] = {"off", "normal", "full", "extra"};
    static const char *level_names[] = {"debug", "info", "warn", "error"};
    int n =
        snprintf(out, outsz,
                 "-- caremesh node configuration: Lua, data only; the file returns one table.\n"
                 "-- Reference: docs/configuration.md\n"
                 "return {\n"
                 "  node_id = \"%s\",\n"
                 "  store = {\n"
                 "    -- off | normal | full | extra; full fsyncs every commit\n"
                 "    synchronous = \"%s\",\n"
                 "    busy_timeout_ms = %d,\n"
                 "  },\n"
                 "  lua = {\n"
                 "    -- budget for one handler call or script run, in Lua VM instructions\n"
                 "    instructions = %llu,\n"
                 "    -- memory cap of one Lua state, in MiB\n"
                 "    memory_mb = %zu,\n"
                 "  },\n"
                 "  engine = {\n"
                 "    -- runs of a failing event (retried with backoff) before it is parked\n"
                 "    max_attempts = %d,\n"
                 "    -- running instances kept in memory between steps (0: none)\n"
                 "    instance_cache = %d,\n"
                 "  },\n"
                 "  log = { level = \"%s\" }, -- debug | info | warn | error\n"
                 "  -- workflows = \"/path/to/workflows\", -- default: DATA/workflows\n"
                 "  -- plugins = { { name = \"template\", path = \"/path/template.so\",\n"
                 "  --               optional = true, config = { } } },\n"
                 "  -- federation = { -- docs/federation.md\n"
                 "  --   listen = \"tcp://127.0.0.1:7601\",\n"
                 "  --   peers = { { id = \"NODE\", endpoint = \"tcp://HOST:PORT\", "
                 "public_key = \"Z85\" } },\n"
                 "  -- },\n"
                 "  -- api = { -- docs/api.md\n"
                 "  --   listen = \"127.0.0.1:7600\", max_connections = 256,\n"
                 "  --   max_header_bytes = 16384, max_body_bytes = 1048576,\n"
                 "  --   max_pipeline = 64, timeout_ms = 10000, open_loopback = false,\n"
                 "  -- },\n"
                 "}\n",
                 cfg->node_id, sync_names[cfg->synchronous], cfg->busy_timeout_ms,
                 (unsigned long long)cfg->lua_instructions, cfg->lua_memory_bytes >> 20,
                 cfg->engine_max_attempts, cfg->engine_instance_cache, level_names[cfg->log_level]);
    return n < 0 || (size_t)n >= outsz ? CM_EINVAL : 0;
}
