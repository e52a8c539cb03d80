/*
** bench.h -- `caremesh bench engine`: durable events per second through the
** in-process engine (Lua handlers, synchronous=FULL), submit-to-commit
** latency percentiles, and the same machine's raw SQLite batched-insert rate
** measured in the same run for comparison. Not part of the tests.
*/
#ifndef CM_BENCH_H
#define CM_BENCH_H

#include "error.h"

typedef struct cm_bench_opts {
    int instances;   /* instances driven through the workflow */
    int rounds;      /* events sent to each instance */
    int batch;       /* events per commit (engine batch size) */
    const char *dir; /* where the throwaway database goes (NULL: $TMPDIR or /tmp) */
} cm_bench_opts;

/* Run the engine benchmark, printing a report whose last line is one JSON
** object: events_per_s, p50_us, p99_us, sqlite_rows_per_s, ... */
int cm_bench_engine(const cm_bench_opts *opts, cm_err *err);

#endif
