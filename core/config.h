/*
** config.h -- the node's configuration. The file is Lua, data only, that
** returns one table (read in a sandbox by bindings/lua/lconfig.c); this unit
** checks the resulting JSON-shaped value, fills defaults and reports every
** problem with the key path and the file. Loop thread.
*/
#ifndef CM_CONFIG_H
#define CM_CONFIG_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "log.h"
#include "store.h"

#define CM_CONFIG_FILE "caremesh.conf"

#define CM_FED_DEFAULT_LISTEN "tcp://127.0.0.1:7601"
#define CM_FED_MAX_PEERS      32
#define CM_ENDPOINT_MAX       256

/* ---- api: the HTTP API (docs/api.md) ---- */
#define CM_API_DEFAULT_HOST "127.0.0.1"
#define CM_API_DEFAULT_PORT 7600

typedef struct cm_api_config {
    bool enabled;         /* api.enabled, default true */
    char host[64];        /* api.listen's address (an IP literal) */
    int port;             /* api.listen's port; 0 picks one (tests) */
    int max_connections;  /* api.max_connections, default 256 */
    int max_header_bytes; /* api.max_header_bytes, default 16384 */
    int max_body_bytes;   /* api.max_body_bytes, default 1 MiB */
    int max_pipeline;     /* api.max_pipeline, default 64 */
    int timeout_ms;       /* api.timeout_ms, default 10000 */
    bool open_loopback;   /* api.open_loopback: /healthz, /readyz, /metrics without a
                          ** token for loopback clients; default false */
} cm_api_config;

/* One partner node: federation.peers[i]. */
typedef struct cm_peer_config {
    char id[129];                   /* the partner's node id */
    char endpoint[CM_ENDPOINT_MAX]; /* tcp://host:port of its ROUTER */
    char public_key[41];            /* its CURVE public key, Z85 */
} cm_peer_config;

typedef struct cm_config {
    char node_id[129];
    cm_sync synchronous;       /* store.synchronous, default full */
    int busy_timeout_ms;       /* store.busy_timeout_ms, default 5000 */
    uint64_t lua_instructions; /* lua.instructions per handler call, default 10,000,000 */
    size_t lua_memory_bytes;   /* lua.memory_mb, default 64 MiB */
    int engine_max_attempts;   /* engine.max_attempts: failed runs before an event is parked, 5 */
    int engine_instance_cache; /* engine.instance_cache: running instances kept in memory
                               ** between steps, 0 .. CM_ENGINE_CACHE_LIMIT (0: none) */
    cm_log_level log_level;    /* log.level, default info */
    char workflows[1024];      /* workflows: directory of workflow files; "" = DATA/workflows */
    cJSON *plugins;            /* plugins: the checked list (owned; NULL when none) */
    bool fed_enabled;          /* a federation table is present */
    char fed_listen[CM_ENDPOINT_MAX]; /* federation.listen, default CM_FED_DEFAULT_LISTEN */
    int fed_npeers;
    cm_peer_config fed_peers[CM_FED_MAX_PEERS]; /* federation.peers */
    cm_api_config api;                          /* api */
} cm_config;

void cm_config_defaults(cm_config *cfg);
/* Free what cfg owns (the plugins list). */
void cm_config_free(cm_config *cfg);

/* Apply a parsed config (an object) over cfg. source names the file in
** messages ("caremesh.conf: store.synchronous: ..."). Unknown keys, wrong
** types and out-of-range values are CM_ECONFIG; cfg is unchanged on error. */
int cm_config_apply(cm_config *cfg, const cJSON *root, const char *source, cm_err *err);

/* Is s a valid node or record id (1..128 of [A-Za-z0-9._:-])? */
int cm_config_check_id(const char *what, const char *s, cm_err *err);

/* Parse "HOST:PORT" or "[V6]:PORT" (HOST an IP literal, PORT 0..65535). */
int cm_config_parse_listen(const char *s, char *host, size_t hostsz, int *port);

/* ---- reload (SIGHUP) ---- */

/* What a reload changes: the keys that apply while serving (live) and the
** keys that changed but take effect only at the next start (restart), each a
** comma-separated list of key names ("" when none). */
typedef struct cm_config_diff {
    char live[512];
    char restart[512];
    bool log, workflows, plugins, api; /* which live parts changed */
} cm_config_diff;

/* Compare the running configuration with a newly read one. */
void cm_config_diff_of(const cm_config *running, const cm_config *next, cm_config_diff *d);

/* Take next's live keys into running (log.level, workflows, plugins, the
** api limits and api.open_loopback); the others keep their running values.
** The plugins list moves: next->plugins is NULL afterwards, and running's old
** list is freed (unload the plugins loaded from it first). */
void cm_config_take_live(cm_config *running, cm_config *next);

/* The text `caremesh init` writes: every option with its default, commented. */
int cm_config_render(const cm_config *cfg, char *out, size_t outsz);

#endif
