/*
** api.h -- the HTTP/JSON API (docs/api.md) on the daemon's loop: /v1 routes
** over the records, the engine's instances, tasks, workflows, failed events,
** peers, KPIs and the audit trail; /healthz, /readyz and /metrics. Every
** route takes a bearer token (token.h) of the scope it needs; every read or
** change of patient data appends an audit entry (audit.h), in the change's
** transaction. A write is answered only after it committed (an engine
** submission after the batch holding it). Errors are
** {"error":{"code","message","field"}} with a 4xx/5xx status.
** Depends on http, engine, model, store, audit, token, fed, config. Loop thread.
*/
#ifndef CM_API_H
#define CM_API_H

#include <stdbool.h>
#include <uv.h>

#include "clock.h"
#include "config.h"
#include "engine.h"
#include "error.h"
#include "fed.h"
#include "http.h"
#include "model.h"
#include "store.h"

typedef struct cm_api cm_api;

typedef struct cm_api_opts {
    uv_loop_t *loop;      /* borrowed */
    cm_store *store;      /* borrowed */
    cm_model *model;      /* borrowed */
    cm_clock *clock;      /* borrowed */
    cm_engine *engine;    /* borrowed; must be destroyed before the API */
    cm_fed *fed;          /* borrowed; NULL without federation */
    const cm_config *cfg; /* borrowed: api.* and federation.peers */
    const char *node_id;
} cm_api_opts;

/* Listen at cfg->api. Refuses (CM_EPERM) a non-loopback address while no
** token exists; CM_EIO when the address cannot be bound. *out is set
** whenever memory was allocated (handles may be open): stop and destroy it
** like a started one. */
int cm_api_start(const cm_api_opts *o, cm_api **out, cm_err *err);

/* The bound port (api.listen may ask for port 0). */
int cm_api_port(const cm_api *api);

/* /readyz answers 200 once ready is set (workflows loaded) and until stop. */
void cm_api_set_ready(cm_api *api, bool ready);

/* The output-commit rule for every answer (http.h, cm_http_gate; NULL: none)
** and the call that writes what a moved watermark releases. */
void cm_api_set_gate(cm_api *api, const cm_http_gate *gate);
void cm_api_durable(cm_api *api);
/* A sync failed (store.h): the answers held for commits it left in doubt
** are replaced by 503s and written (cm_http_server_sync_lost). */
void cm_api_sync_lost(cm_api *api);

/* The configuration's api limits changed (a reload): apply them. The API
** reads api.open_loopback at each request. NULL or stopping: nothing. */
void cm_api_reconfigure(cm_api *api);

/* Stop accepting, answer what was read, then done(ud). Again: force-close. */
void cm_api_stop(cm_api *api, void (*done)(void *ud), void *ud);

/* Free (after stop's done, or after the loop ran the closes). */
void cm_api_destroy(cm_api **api_p);

#endif
