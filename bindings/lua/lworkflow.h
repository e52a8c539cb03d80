/*
** lworkflow.h -- workflows in Lua: `cm.workflow{...}` checks a definition,
** and a cm_runtime (engine.h) runs definitions' handlers in a sandbox. A
** handler sees its instance as `wf` (a "caremesh.Instance"): wf.id,
** wf.state, wf.input (read-only), wf.ctx (its context, kept), and methods
** that ask for effects: go, after, at, cancel, task, notify, spawn, kpi, send.
** Depends on: engine.h, sandbox.h, lhost.h, ljson.h. Loop thread.
*/
#ifndef CM_LWORKFLOW_H
#define CM_LWORKFLOW_H

#include <lua.h>

#include "engine.h"
#include "lhost.h"
#include "sandbox.h"

typedef struct cm_lua_runtime cm_lua_runtime;

/* A runtime over sb (borrowed; the `caremesh` module must be preloaded and the
** host attached). NULL on out of memory. */
cm_lua_runtime *cm_lua_runtime_new(cm_sandbox *sb, cm_err *err);
void cm_lua_runtime_destroy(cm_lua_runtime **rt_p);
/* The engine seam (borrowed; valid while rt lives). A step keeps the
** instance's wf.ctx as a table for its next step (cm_step.ctx_held) when its
** text reads back as the same, while the state holds less than a quarter of
** its memory cap; a memory kill drops them all. */
const cm_runtime *cm_lua_runtime_seam(cm_lua_runtime *rt);

/* Contexts read from their JSON text so far (steps that found none kept). */
unsigned long cm_lua_runtime_ctx_reads(const cm_lua_runtime *rt);
/* Contexts kept now (for tests: never more than the engine's cache holds). */
size_t cm_lua_runtime_ctx_kept(cm_lua_runtime *rt);

/* Add cm.workflow to the module table on top of the stack. */
void cm__lworkflow_register(lua_State *L);

/* Is t[0..len) an input schema type: string, number, integer, boolean, table,
** date, datetime or a record kind, optionally ending in '?'. */
bool cm_workflow_input_type_known(const char *t, size_t len);

/* A definition's `purpose`, the purpose of use its handlers' audit entries
** carry: the consents' and partnership terms' purposes (valuesets.h). The
** entry of that list s names (static), or NULL when it names none. */
const char *cm_workflow_purpose(const char *s);
/* The message a `purpose` outside that list gets ("purpose: must be one of
** referral, outreach, ..."), written from the list into buf; returns buf. */
const char *cm_workflow_purpose_rule(char *buf, size_t n);

/* Parse a duration ("90s", "15m", "72h", "21d", "2w", "1d12h") into ms; false if malformed. */
bool cm_duration_parse(const char *s, int64_t *ms);

#endif
