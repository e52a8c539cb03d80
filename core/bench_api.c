/*
** bench_api.c -- the API benchmark (see bench_api.h): a libuv client with
** keep-alive connections and pipelined requests; answers parsed with
** http_parser; each event's latency from its request's write to its answer.
*/
#include "bench_api.h"

#include <http_parser.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define PIPE_MAX 256
#define REQ_MAX  1024

typedef struct bench bench;

typedef struct bconn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    bench *b;
    http_parser parser;
    uint64_t sent[PIPE_MAX]; /* write time of the requests in flight, a ring */
    int head, inflight;
    char rbuf[65536];
    char body[512];
    size_t blen;
} bconn;

struct bench {
    const cm_bench_api_opts *o;
    uv_loop_t loop;
    bconn *conns;
    bool events_phase, failed, finished;
    long next, total, done;
    unsigned long run; /* makes this run's instance ids unique */
    uint64_t t0, t1;
    int64_t *lat;
    long nlat;
    char fail[CM_ERR_MSG_MAX];
    /* an event's request around its instance number, made once (event_parts) */
    char ev_head[REQ_MAX], ev_tail[REQ_MAX];
    size_t ev_head_len, ev_tail_len;
};

static void stop_all(bench *b)
{
    for (int i = 0; i < b->o->connections; i++)
        if (!uv_is_closing((uv_handle_t *)&b->conns[i].tcp))
            uv_close((uv_handle_t *)&b->conns[i].tcp, NULL);
}

static void fail(bench *b, const char *msg)
{
    if (!b->failed)
        snprintf(b->fail, sizeof(b->fail), "%s", msg);
    b->failed = true;
    stop_all(b);
}

static void on_written(uv_write_t *w, int status)
{
    bconn *c = w->data;
    free(w);
    if (status < 0)
        fail(c->b, uv_strerror(status));
}

/* The event request of every instance but its number: "POST
** /v1/instances/bench-RUN-" before it, the rest of the request after it. */
static int event_parts(bench *b)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"event\":\"%s\"}", b->o->event);
    int h = snprintf(b->ev_head, sizeof(b->ev_head), "POST /v1/instances/bench-%lu-", b->run);
    int t = snprintf(b->ev_tail, sizeof(b->ev_tail),
                     "/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     b->o->token, n, body);
    if (n < 0 || (size_t)n >= sizeof(body) || h < 0 || (size_t)h >= sizeof(b->ev_head) || t < 0 ||
        (size_t)t >= sizeof(b->ev_tail) || (size_t)h + (size_t)t + 24 > REQ_MAX)
        return -1;
    b->ev_head_len = (size_t)h;
    b->ev_tail_len = (size_t)t;
    return 0;
}

/* One request (the next of the phase) written at buf (REQ_MAX bytes); its
** length, or -1 when it does not fit. */
static int build(bench *b, char *buf, size_t cap)
{
    long i = b->next++;
    if (b->events_phase) { /* the parts, with the instance's number between */
        char digits[24], *d = digits + sizeof(digits);
        unsigned long v = (unsigned long)(i % b->o->instances);
        do {
            *--d = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        size_t dlen = (size_t)(digits + sizeof(digits) - d);
        memcpy(buf, b->ev_head, b->ev_head_len);
        memcpy(buf + b->ev_head_len, d, dlen);
        memcpy(buf + b->ev_head_len + dlen, b->ev_tail, b->ev_tail_len);
        return (int)(b->ev_head_len + dlen + b->ev_tail_len);
    }
    char body[256];
    snprintf(body, sizeof(body), "{\"workflow\":\"%s\",\"id\":\"bench-%lu-%ld\"}", b->o->workflow,
             b->run, i);
    int n = snprintf(buf, cap,
                     "POST /v1/instances HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     b->o->token, strlen(body), body);
    return n > 0 && (size_t)n < cap ? n : -1;
}

static void send_more(bconn *c)
{
    bench *b = c->b;
    int room = b->o->pipeline - c->inflight, n = 0;
    if (b->failed || room <= 0 || b->next >= b->total)
        return;
    uv_write_t *w = malloc(sizeof(*w) + (size_t)room * REQ_MAX);
    if (!w) {
        fail(b, "out of memory");
        return;
    }
    char *buf = (char *)(w + 1);
    size_t len = 0;
    uint64_t now = uv_hrtime();
    while (n < room && b->next < b->total) {
        int k = build(b, buf + len, REQ_MAX);
        if (k < 0) {
            free(w);
            fail(b, "request too long (workflow or token)");
            return;
        }
        len += (size_t)k;
        c->sent[(c->head + c->inflight) % PIPE_MAX] = now;
        c->inflight++;
        n++;
    }
    uv_buf_t ub = uv_buf_init(buf, (unsigned)len);
    w->data = c;
    if (uv_write(w, (uv_stream_t *)&c->tcp, &ub, 1, on_written) != 0) {
        free(w);
        fail(b, "write failed");
    }
}

static void start_events(bench *b)
{
    b->events_phase = true;
    b->next = b->done = 0;
    if (event_parts(b) != 0) {
        fail(b, "request too long (event or token)");
        return;
    }
    b->total = (long)b->o->instances * b->o->events;
    b->t0 = uv_hrtime();
    for (int i = 0; i < b->o->connections; i++)
        send_more(&b->conns[i]);
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    bconn *c = p->data;
    size_t room = sizeof(c->body) - 1 - c->blen;
    if (len > room)
        len = room;
    memcpy(c->body + c->blen, at, len);
    c->blen += len;
    c->body[c->blen] = '\0';
    return 0;
}

static int on_complete(http_parser *p)
{
    bconn *c = p->data;
    bench *b = c->b;
    uint64_t sent = c->sent[c->head];
    c->head = (c->head + 1) % PIPE_MAX;
    c->inflight--;
    if (p->status_code != 200 && p->status_code != 201) {
        char msg[CM_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "the daemon answered %u: %s", p->status_code, c->body);
        fail(b, msg);
        return -1;
    }
    c->blen = 0;
    c->body[0] = '\0';
    if (b->events_phase)
        b->lat[b->nlat++] = (int64_t)((uv_hrtime() - sent) / 1000);
    if (++b->done == b->total) {
        if (!b->events_phase) {
            start_events(b);
        } else {
            b->t1 = uv_hrtime();
            b->finished = true;
            stop_all(b);
        }
    }
    return 0;
}

static http_parser_settings settings = {.on_body = on_body, .on_message_complete = on_complete};

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf)
{
    bconn *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    bconn *c = s->data;
    if (n < 0) {
        if (!c->b->finished)
            fail(c->b, "the daemon closed the connection");
        return;
    }
    size_t done = http_parser_execute(&c->parser, &settings, buf->base, (size_t)n);
    if (c->b->failed || c->b->finished)
        return;
    if (done != (size_t)n || HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
        fail(c->b, "malformed answer from the daemon");
        return;
    }
    send_more(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    bconn *c = req->data;
    if (status < 0) {
        char msg[256];
        snprintf(msg, sizeof(msg), "cannot connect to %s:%d: %s", c->b->o->host, c->b->o->port,
                 uv_strerror(status));
        fail(c->b, msg);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    send_more(c);
}

static int by_value(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int check_opts(const cm_bench_api_opts *o, cm_err *err)
{
    if (!o->token || !*o->token)
        return cm_err_set(err, CM_EINVAL, "bench api: --token is required (a write token)");
    if (o->instances < 1 || o->events < 1 || o->connections < 1 || o->connections > 1024 ||
        o->pipeline < 1 || o->pipeline > PIPE_MAX)
        return cm_err_set(err, CM_EINVAL,
                          "bench api: instances and events >= 1, connections 1..1024, "
                          "pipeline 1..%d",
                          PIPE_MAX);
    if ((long long)o->instances * o->events > 100000000LL)
        return cm_err_set(err, CM_EINVAL, "bench api: at most 100,000,000 events");
    return 0;
}

int cm_bench_api(const cm_bench_api_opts *o, cm_err *err)
{
    struct sockaddr_storage addr;
    bench b;
    int rc;
    if ((rc = check_opts(o, err)) != 0)
        return rc;
    if ((strchr(o->host, ':') ? uv_ip6_addr(o->host, o->port, (struct sockaddr_in6 *)&addr)
                              : uv_ip4_addr(o->host, o->port, (struct sockaddr_in *)&addr)) != 0)
        return cm_err_set(err, CM_EINVAL, "bench api: \"%s\" is not an IP address", o->host);
    memset(&b, 0, sizeof(b));
    b.o = o;
    b.run = (unsigned long)(uv_hrtime() / 1000) % 1000000000UL;
    b.total = o->instances;
    b.conns = calloc((size_t)o->connections, sizeof(*b.conns));
    b.lat = malloc((size_t)o->instances * (size_t)o->events * sizeof(*b.lat));
    if (!b.conns || !b.lat || uv_loop_init(&b.loop) != 0) {
        free(b.conns);
        free(b.lat);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    printf("bench api: %d instances of %s, %d \"%s\" events each, %d connection(s), %d "
           "pipelined, against %s:%d\n",
           o->instances, o->workflow, o->events, o->event, o->connections, o->pipeline, o->host,
           o->port);
    for (int i = 0; i < o->connections; i++) {
        bconn *c = &b.conns[i];
        c->b = &b;
        uv_tcp_init(&b.loop, &c->tcp);
        uv_tcp_nodelay(&c->tcp, 1);
        c->tcp.data = c->connect.data = c;
        http_parser_init(&c->parser, HTTP_RESPONSE);
        c->parser.data = c;
        if (uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&addr, on_connect) != 0)
            fail(&b, "cannot connect");
    }
    uv_run(&b.loop, UV_RUN_DEFAULT);
    uv_loop_close(&b.loop);
    if (b.failed || !b.finished) {
        rc = cm_err_set(err, CM_EIO, "bench api: %s", b.failed ? b.fail : "stopped early");
    } else {
        double secs = (double)(b.t1 - b.t0) / 1e9;
        qsort(b.lat, (size_t)b.nlat, sizeof(*b.lat), by_value);
        long long p50 = b.lat[b.nlat / 2], p99 = b.lat[(b.nlat * 99) / 100];
        printf("%ld durable events in %.2f s: %.0f events/s; latency p50 %lld us, p99 %lld us\n",
               b.nlat, secs, (double)b.nlat / secs, p50, p99);
        printf("{\"events_per_s\":%.0f,\"p50_us\":%lld,\"p99_us\":%lld,\"events\":%ld,"
               "\"instances\":%d,\"connections\":%d,\"pipeline\":%d}\n",
               (double)b.nlat / secs, p50, p99, b.nlat, o->instances, o->connections, o->pipeline);
    }
    free(b.conns);
    free(b.lat);
    return rc;
}
