/*
** serve.h -- the daemon: one libuv loop that owns the node while it serves.
** It holds the data directory's lock (one serving process per node), runs
** the workflow engine on the loop (batches, timers), loads the workflow
** files, reloads them on SIGHUP, and stops cleanly on SIGINT/SIGTERM after
** the batch in flight. SIGHUP also re-reads the configuration file and
** applies what can change while serving (cm_config_take_live), logging what
** needs a restart; a broken file is refused and the running one stays.
** Logs JSON lines. Depends on: engine, the Lua runtime
** (bindings/lua), config, log. Main thread.
*/
#ifndef CM_SERVE_H
#define CM_SERVE_H

#include "clock.h"
#include "config.h"
#include "error.h"
#include "model.h"
#include "store.h"

typedef struct cm_serve_opts {
    const char *data;        /* data directory (the lock file lives here) */
    const char *workflows;   /* directory of *.lua workflow files; may not exist: then,
                             ** unless cfg names it, the shipped workflows embedded in
                             ** the binary serve (embedded.h) */
    cm_config *cfg;          /* borrowed; a SIGHUP changes its live keys in place */
    const char *config_path; /* the file cfg was read from, re-read on SIGHUP; NULL: none */
    bool api_listen_fixed;   /* api.listen came from the command line: a reload keeps it */
    cm_store *store;         /* borrowed */
    cm_model *model;         /* borrowed */
    cm_clock *clock;         /* borrowed */
    const char *node_id;
} cm_serve_opts;

/* Serve until SIGINT or SIGTERM. CM_EPERM when another process serves the
** node; other errors when the loop or the engine cannot start. */
int cm_serve_run(const cm_serve_opts *o, cm_err *err);

#endif
