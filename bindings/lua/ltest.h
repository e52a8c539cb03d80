/*
** ltest.h -- `caremesh workflow test`: Lua test files for workflows. Each
** t.test runs against a fresh store, engine and virtual clock, so a
** month-long workflow is tested in milliseconds. The `caremesh.test` module
** (docs/workflow-tools.md) starts instances, sends events, advances the
** clock and asserts states, effects, tasks and KPIs.
** Depends on: engine, model, store, sandbox, lworkflow. Loop thread.
*/
#ifndef CM_LTEST_H
#define CM_LTEST_H

#include "error.h"
#include "plugin.h"

typedef struct cm_test_counts {
    int passed;
    int failed;
} cm_test_counts;

/* Run the test file at path; results are printed as they come ("ok - name",
** "FAIL - name: message") and added to counts. A file that cannot be loaded
** or errors outside a test counts as one failure (err says why, return CM_ELUA).
** plugins (borrowed, may be NULL): their Lua modules are required by the
** tests and workflows, and each test lends them its store and tells them its
** engine's events. max_attempts: failed handler runs before an event is
** parked, as engine.max_attempts sets it for a node (0 selects the engine's 5). */
int cm_lua_test_file(const char *path, cm_plugin_host *plugins, int max_attempts,
                     cm_test_counts *counts, cm_err *err);

#endif
