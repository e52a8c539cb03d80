/*
** bench_api.c -- the API benchmark (see bench_api.h): a libuv client with
** keep-alive connections and pipelined requests, written in one write per
** connection per turn; answers read with cm_bench_api_answer (status,
** length, body); each event's latency from its request's write to its
** answer.
*/
#include "bench_api.h"

#include <stdbool.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define PIPE_MAX 256
#define REQ_MAX  1024

typedef struct bench bench;

typedef struct bconn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    bench *b;
    uint64_t sent[PIPE_MAX]; /* write time of the requests in flight, a ring */
    int head, inflight;
    char rbuf[65536];
    size_t rlen; /* bytes of rbuf read and not yet an answer */
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
    char body[512];
    int n = b->o->payload ? snprintf(body, sizeof(body), "{\"event\":\"%s\",\"payload\":%s}",
                                     b->o->event, b->o->payload)
                          : snprintf(body, sizeof(body), "{\"event\":\"%s\"}", b->o->event);
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
        fail(b, "request too long (event, payload or token)");
        return;
    }
    b->total = (long)b->o->instances * b->o->events;
    b->t0 = uv_hrtime();
    for (int i = 0; i < b->o->connections; i++)
        send_more(&b->conns[i]);
}

/* A header line of p[0..len) named name (lower case, with its colon)? */
static bool header_is(const char *line, size_t len, const char *name, size_t nlen)
{
    return len > nlen && (line[0] | 0x20) == name[0] && strncasecmp(line, name, nlen) == 0;
}

/* The first "\r\n\r\n" in p[0..n), or NULL: each CR found by memchr, then
** the three bytes after it compared (glibc's memmem cost ~490 instructions
** an answer here, more than the rest of the reading). */
static const char *head_end(const char *p, size_t n)
{
    const char *q = p, *e = p + n;
    while (e - q >= 4 && (q = memchr(q, '\r', (size_t)(e - q) - 3)) != NULL) {
        if (memcmp(q, "\r\n\r\n", 4) == 0)
            return q;
        q++;
    }
    return NULL;
}

long cm_bench_api_answer(const char *p, size_t n, int *status, size_t *body, size_t *body_len)
{
    static const char cl[] = "content-length:", te[] = "transfer-encoding:";
    const char *end = head_end(p, n < CM_BENCH_API_HEAD_MAX ? n : CM_BENCH_API_HEAD_MAX);
    if (!end)
        return n >= CM_BENCH_API_HEAD_MAX ? -1 : 0;
    size_t head = (size_t)(end - p) + 4, clen = 0;
    bool have_len = false;
    if (head < 16 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' || p[9] < '1' || p[9] > '9' ||
        p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' || (p[12] != ' ' && p[12] != '\r'))
        return -1;
    *status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    const char *line = memchr(p, '\n', head) + 1, *stop = p + head - 2; /* the last CRLF */
    while (line < stop) {
        const char *eol = memchr(line, '\n', (size_t)(stop + 2 - line));
        size_t len = (size_t)(eol - line);
        if (header_is(line, len, cl, sizeof(cl) - 1)) {
            const char *d = line + sizeof(cl) - 1;
            while (*d == ' ' || *d == '\t')
                d++;
            if (have_len || *d < '0' || *d > '9')
                return -1;
            for (; *d >= '0' && *d <= '9'; d++) {
                if (clen > (SIZE_MAX - 9) / 10)
                    return -1;
                clen = clen * 10 + (size_t)(*d - '0');
            }
            while (*d == ' ' || *d == '\t')
                d++;
            if (*d != '\r')
                return -1;
            have_len = true;
        } else if (header_is(line, len, te, sizeof(te) - 1)) {
            return -1;
        }
        line = eol + 1;
    }
    if (!have_len || clen > (size_t)LONG_MAX - head)
        return -1;
    if (n - head < clen)
        return 0;
    *body = head;
    *body_len = clen;
    return (long)(head + clen);
}

/* The answer to c's oldest request in flight: status and body. -1 when
** the benchmark failed or ended. */
static int answered(bconn *c, int status, const char *body, size_t len)
{
    bench *b = c->b;
    uint64_t sent = c->sent[c->head];
    c->head = (c->head + 1) % PIPE_MAX;
    c->inflight--;
    if (c->inflight < 0 || (status != 200 && status != 201)) {
        char msg[CM_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "the daemon answered %d: %.*s", status,
                 (int)(len < 400 ? len : 400), body);
        fail(b, c->inflight < 0 ? "the daemon answered more than it was asked" : msg);
        return -1;
    }
    if (b->events_phase)
        b->lat[b->nlat++] = (int64_t)((uv_hrtime() - sent) / 1000);
    if (++b->done == b->total) {
        if (!b->events_phase) {
            start_events(b);
        } else {
            b->t1 = uv_hrtime();
            b->finished = true;
            stop_all(b);
            return -1;
        }
    }
    return b->failed ? -1 : 0;
}

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf)
{
    bconn *c = h->data;
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(sizeof(c->rbuf) - c->rlen));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    bconn *c = s->data;
    size_t pos = 0, body, blen;
    int status;
    if (n < 0) {
        if (!c->b->finished)
            fail(c->b, "the daemon closed the connection");
        return;
    }
    c->rlen += (size_t)n;
    for (;;) {
        long k = cm_bench_api_answer(c->rbuf + pos, c->rlen - pos, &status, &body, &blen);
        if (k < 0) {
            fail(c->b, "malformed answer from the daemon");
            return;
        }
        if (k == 0)
            break;
        if (answered(c, status, c->rbuf + pos + body, blen) != 0)
            return;
        pos += (size_t)k;
    }
    memmove(c->rbuf, c->rbuf + pos, c->rlen - pos); /* the start of the next answer */
    c->rlen -= pos;
    if (c->rlen == sizeof(c->rbuf)) {
        fail(c->b, "an answer from the daemon is larger than the client reads");
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
