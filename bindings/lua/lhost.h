/*
** lhost.h -- what the host lends to Lua code, and the `caremesh` module.
** The host context lives in the registry (never in globals) and is borrowed:
** the host keeps it alive for as long as the state runs. Loop thread.
*/
#ifndef CM_LHOST_H
#define CM_LHOST_H

#include <lua.h>

#include "clock.h"
#include "error.h"
#include "model.h"
#include "store.h"

typedef struct cm_lua_host {
    cm_store *store;     /* borrowed */
    cm_model *model;     /* borrowed */
    cm_clock *clock;     /* borrowed */
    const char *node_id; /* borrowed */
    /* borrowed: who the records Lua reads and writes about a patient are
    ** audited as ("instance:ID" while a workflow step runs, "cli" for
    ** `caremesh lua`); NULL: not audited (a workflow test's own set-up) */
    const char *actor;
    /* borrowed: while a workflow step or a `caremesh lua` script runs, where
    ** the entries audited for actor, and the reads of the plugins it calls
    ** (cm_plugin_host_lua_call), are also collected (cm_audit_collect), to be
    ** written again should the step or script be rolled back; NULL: not
    ** collected */
    cJSON **audited;
    /* borrowed: the workflow file whose top level runs as it loads, or NULL.
    ** There records about patients are refused: a load has no instance to
    ** audit them as, and runs again at every start and reload */
    const char *loading;
    /* borrowed: the purpose of use actor's entries carry (a workflow's
    ** declared `purpose` while its step runs); NULL: none ("") */
    const char *purpose;
} cm_lua_host;

/* Attach host to L (stored in the registry; borrowed). Once per state: CM_EINVAL
** when another host is attached already; CM_ENOMEM if Lua cannot. */
int cm_lua_host_set(lua_State *L, cm_lua_host *host, cm_err *err);
/* The host attached to L; raises a Lua error when there is none. */
cm_lua_host *cm_lua_host_get(lua_State *L);
/* The host attached to L, or NULL; never raises. */
cm_lua_host *cm_lua_host_peek(lua_State *L);

/* Raise err as a Lua error located at the calling Lua code ("file:line: msg"). */
int cm_lua_raise(lua_State *L, const cm_err *err);
/* Push nil, message, code-name (the expected-failure triple); returns 3. */
int cm_lua_fail(lua_State *L, const cm_err *err);

/* lua_CFunction that builds the `caremesh` module table (for cm_sandbox_preload). */
int cm_lua_open_caremesh(lua_State *L);

/* Add the record kinds (cm.organization, cm.patient, ...) to the table on top. */
void cm__lmodel_register(lua_State *L);
/* cm.directory and cm.indicators (lshare.c). */
void cm__lshare_register(lua_State *L);

#endif
