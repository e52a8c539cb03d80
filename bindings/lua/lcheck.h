/*
** lcheck.h -- the workflow author's static tools behind `caremesh workflow
** check` and `caremesh workflow graph`: a workflow file runs in a sandbox of
** its own with a check-mode `caremesh` module (no store, cm.workflow returns
** its argument unchecked), then the definition is walked and every problem
** reported with its line; handlers are never called, their source text is
** scanned for the state names they return or go to, the effects they ask
** for and their literal durations. What is checked: docs/workflow-tools.md.
** Depends on: sandbox.h, lworkflow.h, clock.h, model.h, text.h, fs.h. Any
** thread (each call makes and closes its own Lua state).
*/
#ifndef CM_LCHECK_H
#define CM_LCHECK_H

#include <stdbool.h>

#include "error.h"

/* Check the workflow file at path without a store. *report receives a
** malloc'd text (the caller frees), one problem per line, each
** "path:line: message\n" (line 0 if unknown), sorted by line; "" when clean.
** Returns the number of problems (>= 0), or a negative CM_E* code when the
** file cannot be read at all (CM_ENOTFOUND, CM_EIO, CM_EINVAL when too large;
** err names the path) or memory runs out; *report is NULL then. A syntax
** error is one problem with its line. Never runs handlers. */
int cm_lua_workflow_check(const char *path, char **report, cm_err *err);

/* The state machine of the workflow at path as Graphviz DOT (mermaid false)
** or a Mermaid stateDiagram-v2 (mermaid true), in a malloc'd *out (the caller
** frees; NULL on error). Refuses a file that check finds problems in
** (CM_EINVAL, err names the first); other errors as cm_lua_workflow_check. */
int cm_lua_workflow_graph(const char *path, bool mermaid, char **out, cm_err *err);

#endif
