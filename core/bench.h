/*
** bench.h -- `caremesh bench engine`: durable events per second through the
** in-process engine (Lua handlers, synchronous=FULL), submit-to-acknowledgement
** latency percentiles (an ack comes after the sync that covers its commit), and the same machine's
*raw SQLite batched-insert rate
** measured in the same run for comparison. `caremesh bench federation`:
** durable messages per second from one node's outbox to another node's
** inbox over loopback (CURVE, ZAP, synchronous=FULL on both), each node on
** its own thread and loop, with queued-to-acknowledged latency percentiles.
*/
#ifndef CM_BENCH_H
#define CM_BENCH_H

#include <stdbool.h>

#include "error.h"

typedef struct cm_bench_opts {
    int instances;   /* instances driven through the workflow */
    int rounds;      /* events sent to each instance */
    int batch;       /* events per commit (engine batch size) */
    const char *dir; /* where the throwaway database goes (NULL: $TMPDIR or /tmp) */
    int batch_ms;    /* cm_engine_opts.batch_ms (0: the engine's default) */
    /* false (the default, "loop"): the engine pipelined on a uv loop, the
    ** driver keeping at most `outstanding` events unacknowledged and
    ** submitting more as acks come; true ("run"): submit a batch, call
    ** cm_engine_run, repeat (nothing overlaps the fsync) */
    bool run_mode;
    int outstanding; /* loop mode: events submitted and not yet acknowledged (0: 2 x batch) */
    int cache;       /* cm_engine_opts.cache_max (0: the engine's default) */
    int ctx_bytes;   /* each instance's context carries a string of this many bytes (0: none) */
} cm_bench_opts;

/* Run the engine benchmark, printing a report whose last line is one JSON
** object: events_per_s, p50_us, p99_us, sqlite_rows_per_s, ... */
int cm_bench_engine(const cm_bench_opts *opts, cm_err *err);

typedef struct cm_bench_fed_opts {
    long messages;   /* messages measured (one more brings the link up first) */
    int window;      /* messages in flight per peer (cm_fed_opts.window) */
    int batch;       /* outbox rows per producer commit (as an engine batch writes them) */
    int backlog;     /* most rows queued and not yet acknowledged */
    int size;        /* payload bytes */
    const char *dir; /* where the throwaway nodes go (NULL: $TMPDIR or /tmp) */
    int proto;       /* the receiver speaks protocol 1.proto (0: the latest; 1: no batches) */
} cm_bench_fed_opts;

/* Run the federation benchmark: the receiver records into its inbox only
** (no engine). The last line printed is one JSON object: msgs_per_s,
** p50_us, p99_us, messages, received, in_order, ... Fails (CM_EIO) when a
** message is missing, doubled or out of order. */
int cm_bench_federation(const cm_bench_fed_opts *opts, cm_err *err);

#endif
