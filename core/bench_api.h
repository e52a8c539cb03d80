/*
** bench_api.h -- `caremesh bench api`: durable events per second through a
** running daemon's HTTP API. Starts instances of a workflow the daemon has
** loaded, then sends them events over keep-alive connections with requests
** pipelined, each answered after its commit; reports events/s and the
** request-to-answer latency percentiles. Depends on libuv, http_parser.
*/
#ifndef CM_BENCH_API_H
#define CM_BENCH_API_H

#include "error.h"

typedef struct cm_bench_api_opts {
    const char *host;     /* the daemon's API address (an IP literal) */
    int port;             /* its port */
    const char *token;    /* a write token */
    const char *workflow; /* a loaded workflow whose start state takes `event` repeatedly */
    const char *event;    /* the event sent */
    int instances;        /* instances started, then each sent `events` events */
    int events;
    int connections; /* keep-alive connections */
    int pipeline;    /* requests in flight per connection */
} cm_bench_api_opts;

/* Run; print a report whose last line is one JSON object with events_per_s,
** p50_us, p99_us. CM_EIO when the daemon cannot be reached or answers an
** error (the message gives the status and body). */
int cm_bench_api(const cm_bench_api_opts *o, cm_err *err);

#endif
