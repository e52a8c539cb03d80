/*
** bench_api.h -- `caremesh bench api`: durable events per second through a
** running daemon's HTTP API. Starts instances of a workflow the daemon has
** loaded, then sends them events over keep-alive connections with requests
** pipelined, each answered after its commit; reports events/s and the
** request-to-answer latency percentiles. Depends on libuv. Its answers are
** read by cm_bench_api_answer, which reads only what the benchmark needs
** (status, length, body): the client shares the machine's cores with the
** daemon it measures.
*/
#ifndef CM_BENCH_API_H
#define CM_BENCH_API_H

#include <stddef.h>

#include "error.h"

typedef struct cm_bench_api_opts {
    const char *host;     /* the daemon's API address (an IP literal) */
    int port;             /* its port */
    const char *token;    /* a write token */
    const char *workflow; /* a loaded workflow whose start state takes `event` repeatedly */
    const char *event;    /* the event sent */
    int instances;        /* instances started, then each sent `events` events */
    int events;
    int connections;     /* keep-alive connections */
    int pipeline;        /* requests in flight per connection */
    const char *payload; /* the text of a JSON object sent as every event's payload, or NULL */
} cm_bench_api_opts;

/* Run; print a report whose last line is one JSON object with events_per_s,
** p50_us, p99_us. CM_EIO when the daemon cannot be reached or answers an
** error (the message gives the status and body). */
int cm_bench_api(const cm_bench_api_opts *o, cm_err *err);

#define CM_BENCH_API_HEAD_MAX 4096 /* an answer's head longer than this is refused */

/* The HTTP/1.x answer at the start of p[0..n): its status in *status, its
** body at p + *body, *body_len bytes long. Returns the answer's whole
** length; 0 when its end has not arrived yet; -1 when it is no answer this
** client reads (no "HTTP/1.x NNN" status line, no Content-Length or two of
** them, a Transfer-Encoding, or a head longer than CM_BENCH_API_HEAD_MAX). */
long cm_bench_api_answer(const char *p, size_t n, int *status, size_t *body, size_t *body_len);

#endif
