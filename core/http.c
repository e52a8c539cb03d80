/*
** http.c -- the HTTP/1.1 server (see http.h): connections on the loop, one
** http_parser each, a queue of requests answered in order, and the timers
** and limits that keep slow or oversized clients from holding anything.
*/
#include "http.h"

#include "log.h"
#include "strbuf.h"
#include "text.h"

#include <http_parser.h>
#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONN_RBUF       16384 /* bytes read at a time per connection */
#define MAX_HEADERS     64
#define MAX_WRITE_BATCH 64 /* answers written with one uv_write */
#define RESP_HEAD_MAX   256
#define RESP_ROUND      256          /* answer buffers are allocated in multiples of it */
#define SPARE_REQS      256          /* finished requests kept for reuse, with their buffers */
#define SPARE_BUF_MAX   8192         /* a kept request's buffer larger than this is freed */
#define HEAD_MEMO_SLOTS 8            /* answer heads kept, by status */
#define LINGER_MS       2000         /* a closing connection drops what comes at most this long */
#define LINGER_BYTES    (256 * 1024) /* or until this much came */

typedef struct conn conn;

typedef struct hdr {
    size_t name, value; /* offsets into the request's hbuf */
} hdr;

/* What a request keeps when it is reused for the next one (req_new): its
** buffers, emptied by req_free, and headers[], written before it is read.
** Every field of cm_http_req outside it, before or after, is cleared for
** each request. */
typedef struct req_mem {
    cm_buf url, hbuf, body;
    char *resp; /* the answer, head and body */
    size_t resp_cap;
    hdr headers[MAX_HEADERS];
} req_mem;

struct cm_http_req {
    req_mem mem; /* kept across requests; req_new clears the rest */
    conn *c;     /* NULL once the connection is gone (the answer is dropped) */
    cm_http_req *next;
    const char *method; /* http_parser's static name */
    uint64_t pass;      /* the parse pass it completed in */
    int nheaders;
    uint64_t names; /* name_bit of each header name: a lookup of an absent one is one test */
    bool in_value;  /* the last header fragment was a value */
    const char *path, *query;
    bool keep_alive, dispatched, answered, close_after;
    size_t resp_len;
    int status;     /* the answer's */
    uint64_t needs; /* the commit the answer may show: written once it is durable */
};

struct conn {
    uv_tcp_t tcp; /* first: the handle's address is the connection's */
    uv_timer_t timer;
    cm_http_server *srv;
    http_parser parser;
    cm_http_req *cur;         /* being parsed */
    cm_http_req *head, *tail; /* complete requests, in order */
    int nqueued;              /* requests in the queue */
    cm_http_req *ready;       /* just completed: dispatch after the parser paused */
    cm_http_req *wlist;       /* answers being written (moved off the queue) */
    uv_write_t wreq;
    uv_shutdown_t shut; /* the lingering close's (conn_linger) */
    size_t lingered;    /* bytes read and dropped while lingering */
    bool writing, reading, eof, closing, draining, failed, loopback, lingering;
    uint64_t deadline; /* uv_now by which the client must act, or 0 (conn_timer) */
    uint64_t armed;    /* when the timer is armed to fire, or 0 */
    bool flush_due;    /* answers are ready: written by the server's flusher */
    int fail_status;
    const char *fail_code;
    const char *fail_msg;
    char fail_buf[128]; /* fail_msg when it was made for the request (too_large) */
    char rbuf[CONN_RBUF];
    size_t rpos, rlen; /* unparsed bytes of rbuf */
    int open_handles;
    conn *prev, *next;
    cm_http_memo memo; /* the handler's (cm_http_req_memo) */
};

/* The head of a JSON answer up to the length's digits (build_response). */
typedef struct head_memo {
    int status; /* 0: empty */
    size_t len;
    char text[RESP_HEAD_MAX];
} head_memo;

struct cm_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t grace;  /* forces connections closed when a stop takes too long */
    uv_idle_t flusher; /* writes the answers made in one loop iteration together */
    cm_http_limits lim;
    cm_http_handler handler;
    void *ud;
    int port;
    conn *conns;
    int nconns;
    int open_handles;   /* listener, grace, flusher */
    uint64_t passes;    /* parse passes begun (cm_http_req_pass) */
    cm_http_req *spare; /* finished requests, their buffers kept for the next */
    int nspare;
    head_memo heads[HEAD_MEMO_SLOTS]; /* by status, direct-mapped */
    bool stopping;
    void (*done)(void *ud);
    void *done_ud;
    cm_http_gate gate; /* made NULL: none */
    bool sync_lost;    /* the watermark will not move again (cm_http_server_sync_lost) */
};

static http_parser_settings parser_settings;

void cm_http_limits_default(cm_http_limits *l)
{
    l->max_header_bytes = 16384;
    l->max_body_bytes = (size_t)1 << 20;
    l->max_connections = 256;
    l->max_pipeline = 64;
    l->timeout_ms = 10000;
}

const char *cm_http_status_text(int status)
{
    const char *s = http_status_str((enum http_status)status);
    return s && strcmp(s, "<unknown>") != 0 ? s : "Unknown";
}

/* ---- small pieces ------------------------------------------------------ */

/* The append of add_within once b must grow: out of line, so the path
** that does not grow keeps no registers across a call. */
static __attribute__((noinline)) int add_grow(cm_buf *b, size_t nul, const char *s, size_t n)
{
    if (!cm_buf_room(b, n + nul))
        return -1;
    b->p[b->len] = '\0';
    b->len += nul;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Append nul NUL bytes (0 or 1: one ends the text before, a header's name
** or value), then n bytes, unless the text would pass limit; -1 then, or
** when out of memory. Inlined: it runs for every fragment the parser hands
** over (eight for a request's four headers), and its call cost about as
** much as its work. Where the buffer has room (a reused request's, most
** often) the length and the NULs are set first and the copy comes last. */
static inline __attribute__((always_inline)) int add_within(cm_buf *b, size_t nul, const char *s,
                                                            size_t n, size_t limit)
{
    size_t more = n + nul;
    if (nul > 1 || more > limit || b->len > limit - more)
        return -1;
    if (b->oom || b->len + more >= b->cap)
        return add_grow(b, nul, s, n);
    char *to = b->p + b->len + nul;
    b->p[b->len] = '\0';
    b->len += more;
    to[n] = '\0';
    memcpy(to, s, n);
    return 0;
}

/* The headers (a bearer token), the body (patient data) and the answer (a
** patient's record) of a request done with: wiped before their memory is
** freed or kept for another. */
static void req_wipe(cm_http_req *r)
{
    if (r->mem.hbuf.p)
        sodium_memzero(r->mem.hbuf.p, r->mem.hbuf.len);
    if (r->mem.body.p)
        sodium_memzero(r->mem.body.p, r->mem.body.len);
    if (r->mem.resp)
        sodium_memzero(r->mem.resp, r->resp_len);
}

static void req_destroy(cm_http_req *r)
{
    req_wipe(r);
    free(r->mem.url.p);
    free(r->mem.hbuf.p);
    free(r->mem.body.p);
    free(r->mem.resp);
    free(r);
}

/* A buffer kept for the next request: emptied, or freed when it grew large. */
static void buf_keep(cm_buf *b)
{
    if (b->cap > SPARE_BUF_MAX)
        cm_buf_free(b);
    else
        cm_buf_reset(b);
}

/* Done with r: kept for the next request of s (its buffers too) while
** fewer than SPARE_REQS are kept, else freed. s NULL: freed. */
static void req_free(cm_http_server *s, cm_http_req *r)
{
    if (!r)
        return;
    if (!s || s->nspare >= SPARE_REQS) {
        req_destroy(r);
        return;
    }
    req_wipe(r);
    buf_keep(&r->mem.url);
    buf_keep(&r->mem.hbuf);
    buf_keep(&r->mem.body);
    if (r->mem.resp_cap > SPARE_BUF_MAX) {
        free(r->mem.resp);
        r->mem.resp = NULL;
        r->mem.resp_cap = 0;
    }
    r->next = s->spare;
    s->spare = r;
    s->nspare++;
}

/* A request in its initial state for c: a kept one, or a new one. */
static cm_http_req *req_new(conn *c)
{
    cm_http_server *s = c->srv;
    cm_http_req *r = s->spare;
    if (!r) {
        if ((r = calloc(1, sizeof(*r)))) {
            r->c = c;
            /* a bearer token, patient data: wiped when they grow, too */
            r->mem.hbuf.wipe = r->mem.body.wipe = true;
        }
        return r;
    }
    s->spare = r->next;
    s->nspare--;
    /* every field but mem, wherever it sits */
    size_t at = offsetof(cm_http_req, mem), after = at + sizeof(r->mem);
    memset(r, 0, at);
    memset((char *)r + after, 0, sizeof(*r) - after);
    r->c = c;
    return r;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        static const unsigned char lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const unsigned char v4[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return memcmp(&a->sin6_addr, lo, 16) == 0 ||
               (memcmp(&a->sin6_addr, v4, 12) == 0 && a->sin6_addr.s6_addr[12] == 127);
    }
    return false;
}

/* ---- the request accessors --------------------------------------------- */

const char *cm_http_req_method(const cm_http_req *r)
{
    return r->method;
}

const char *cm_http_req_path(const cm_http_req *r)
{
    return r->path;
}

const char *cm_http_req_query(const cm_http_req *r)
{
    return r->query;
}

/* A header name's bit in cm_http_req.names, by its first byte in any case
** and its length: names that differ in case share it. */
static uint64_t name_bit(unsigned char first, size_t len)
{
    return (uint64_t)1 << (((first | 0x20u) + len) & 63);
}

const char *cm_http_req_header_n(const cm_http_req *r, const char *name, size_t len)
{
    if (len == 0 || !(r->names & name_bit((unsigned char)name[0], len)))
        return NULL;                                 /* no header of that first letter and length */
    unsigned first = (unsigned char)name[0] | 0x20u; /* equal in any case: equal here */
    for (int i = 0; i < r->nheaders; i++) {
        const hdr *h = &r->mem.headers[i];
        const char *text = r->mem.hbuf.p + h->name;
        if (h->value - h->name - 1 == len && ((unsigned char)text[0] | 0x20u) == first &&
            strncasecmp(text, name, len) == 0)
            return r->mem.hbuf.p + h->value;
    }
    return NULL;
}

const char *cm_http_req_body(const cm_http_req *r, size_t *len)
{
    *len = r->mem.body.len;
    return r->mem.body.p ? r->mem.body.p : "";
}

bool cm_http_req_loopback(const cm_http_req *r)
{
    return r->c && r->c->loopback;
}

uint64_t cm_http_req_pass(const cm_http_req *r)
{
    return r->pass;
}

cm_http_memo *cm_http_req_memo(cm_http_req *r)
{
    return r->c ? &r->c->memo : NULL;
}

/* ---- connection life --------------------------------------------------- */

static void conn_flush(conn *c);
static void conn_parse(conn *c);
static void conn_close(conn *c);

static void on_server_handle_closed(uv_handle_t *h);

/* Stopping and no connection left: close the grace timer, then tell. */
static void server_maybe_done(cm_http_server *s)
{
    if (!s->stopping || s->nconns > 0)
        return;
    if (!uv_is_closing((uv_handle_t *)&s->flusher))
        uv_close((uv_handle_t *)&s->flusher, on_server_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&s->grace)) {
        uv_close((uv_handle_t *)&s->grace, on_server_handle_closed);
        return;
    }
    if (s->open_handles == 0 && s->done) {
        void (*done)(void *) = s->done;
        s->done = NULL;
        done(s->done_ud);
    }
}

static void on_conn_closed(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    cm_http_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    /* both may hold a bearer token, the read buffer patient data too */
    sodium_memzero(&c->memo, sizeof(c->memo));
    sodium_memzero(c->rbuf, sizeof(c->rbuf));
    free(c);
    server_maybe_done(s);
}

/* Close: drop what was not dispatched or is answered, orphan what the
** handler still holds (its answer will be dropped). */
static void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    req_free(c->srv, c->cur);
    c->cur = NULL;
    for (cm_http_req *r = c->head, *next; r; r = next) {
        next = r->next;
        r->next = NULL;
        if (r->dispatched && !r->answered)
            r->c = NULL;
        else
            req_free(c->srv, r);
    }
    c->head = c->tail = c->ready = NULL;
    c->nqueued = 0;
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_timeout(uv_timer_t *t);
static void conn_linger(conn *c);

/* A deadline while the client is expected to act (send a request, finish
** one, read what we wrote), none while every request is with the handler.
** restart: from now, even if one runs already (a new request begins). The
** libuv timer is moved only when the deadline comes earlier than it is
** armed for: on_timeout re-arms for a later one and ignores none, so a
** pipelined request costs no timer start or stop. */
static void conn_timer(conn *c, bool restart)
{
    if (c->closing || c->lingering)
        return;
    bool waiting = c->cur != NULL || c->writing || c->nqueued == 0;
    if (!waiting) {
        c->deadline = 0;
        return;
    }
    if (c->deadline && !restart)
        return;
    uint64_t ms = (uint64_t)c->srv->lim.timeout_ms;
    c->deadline = uv_now(c->srv->loop) + ms;
    if (!c->armed || c->armed > c->deadline) {
        uv_timer_start(&c->timer, on_timeout, ms, 0);
        c->armed = c->deadline;
    }
}

static char *error_json(const char *code, const char *message, size_t *len)
{
    char esc[512];
    cm_json_escape(message, esc, sizeof(esc));
    size_t cap = strlen(code) + strlen(esc) + 64;
    char *p = malloc(cap);
    if (p)
        *len =
            (size_t)snprintf(p, cap, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, esc);
    return p;
}

/* The decimal digits of v at the end of buf[0..cap); returns where they begin. */
static char *utoa_end(size_t v, char *buf, size_t cap)
{
    char *p = buf + cap;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p;
}

/* "HTTP/1.1 S REASON\r\nContent-Type: T\r\nContent-Length: " into out
** (RESP_HEAD_MAX); its length, or 0 when it does not fit. */
static size_t head_prefix(int status, const char *ctype, char *out)
{
    int n = snprintf(out, RESP_HEAD_MAX,
                     "HTTP/1.1 %03d %s\r\nContent-Type: %s\r\nContent-Length: ", status,
                     cm_http_status_text(status), ctype ? ctype : "application/json");
    return n > 0 && n < RESP_HEAD_MAX ? (size_t)n : 0;
}

/* The head prefix of a JSON answer of status, made once per status while it
** stays in its slot of the server's memo. */
static const head_memo *json_head(cm_http_server *s, int status)
{
    head_memo *m = &s->heads[status % HEAD_MEMO_SLOTS];
    if (m->status != status) {
        m->len = head_prefix(status, NULL, m->text);
        m->status = m->len ? status : 0;
    }
    return m;
}

static int build_response(cm_http_req *r, bool close, int status, const char *ctype,
                          const char *body, size_t len)
{
    static const char end_close[] = "\r\nConnection: close\r\n\r\n", end[] = "\r\n\r\n";
    char lenbuf[24], other[RESP_HEAD_MAX];
    const char *prefix = other;
    size_t plen;
    if (status < 100 || status > 999)
        return -1;
    if (!ctype && r->c) {
        const head_memo *m = json_head(r->c->srv, status);
        prefix = m->text;
        plen = m->len;
    } else {
        plen = head_prefix(status, ctype, other);
    }
    char *digits = utoa_end(len, lenbuf, sizeof(lenbuf));
    size_t dlen = (size_t)(lenbuf + sizeof(lenbuf) - digits);
    size_t elen = close ? sizeof(end_close) - 1 : sizeof(end) - 1;
    size_t head = plen + dlen + elen;
    if (plen == 0 || head > RESP_HEAD_MAX || len > SIZE_MAX - RESP_HEAD_MAX - RESP_ROUND)
        return -1;
    if (head + len > r->mem.resp_cap) {
        /* rounded up, so a reused request's next answer, a few bytes
        ** longer (a longer id), fits without another allocation */
        size_t cap = (head + len + RESP_ROUND - 1) / RESP_ROUND * RESP_ROUND;
        char *grown = malloc(cap);
        if (!grown)
            return -1;
        if (r->mem.resp) /* an answer built before (answer_lost rebuilds one) */
            sodium_memzero(r->mem.resp, r->resp_len);
        free(r->mem.resp);
        r->mem.resp = grown;
        r->mem.resp_cap = cap;
    }
    char *p = r->mem.resp;
    memcpy(p, prefix, plen);
    memcpy(p + plen, digits, dlen);
    memcpy(p + plen + dlen, close ? end_close : end, elen);
    if (len)
        memcpy(p + head, body, len);
    r->resp_len = head + len;
    return 0;
}

/* Queue r behind the requests c is answering, in order. */
static void conn_enqueue(conn *c, cm_http_req *r)
{
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->nqueued++;
}

/* Stop reading; answer status after what is queued, then close. */
static void conn_fail(conn *c, int status, const char *code, const char *message)
{
    cm_http_req *r;
    size_t len = 0;
    char *body;
    if (c->failed || c->closing)
        return;
    c->failed = true;
    c->rpos = c->rlen = 0;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    req_free(c->srv, c->cur);
    c->cur = NULL;
    r = req_new(c);
    body = r ? error_json(code, message, &len) : NULL;
    if (!body || build_response(r, true, status, NULL, body, len) != 0) {
        free(body);
        req_free(c->srv, r);
        conn_close(c);
        return;
    }
    free(body);
    cm_log(CM_LOG_INFO, "http.refused", "%d %s: %s", status, code, message);
    r->c = c;
    r->dispatched = r->answered = r->close_after = true;
    conn_enqueue(c, r);
    conn_flush(c);
}

static void on_timeout(uv_timer_t *t)
{
    conn *c = t->data;
    uint64_t now = uv_now(c->srv->loop);
    c->armed = 0;
    if (!c->deadline) /* the handler has every request: nothing is due */
        return;
    if (now < c->deadline) { /* moved later since the timer was armed */
        uv_timer_start(&c->timer, on_timeout, c->deadline - now, 0);
        c->armed = c->deadline;
        return;
    }
    c->deadline = 0;
    if (c->cur && !c->failed)
        conn_fail(c, 408, "request_timeout",
                  "the request did not arrive in time; the connection is closed");
    else
        conn_close(c); /* idle, or not reading what we wrote */
}

static void after_write(uv_write_t *w, int status)
{
    conn *c = w->data;
    bool close_after = false;
    c->writing = false;
    for (cm_http_req *r = c->wlist, *next; r; r = next) {
        next = r->next;
        close_after = close_after || r->close_after;
        req_free(c->srv, r);
    }
    c->wlist = NULL;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (close_after) {
        conn_linger(c);
        return;
    }
    conn_flush(c);
    if (c->closing)
        return;
    /* the last answers, once written: a write still going (conn_flush
    ** started it) is waited for, else a client that closed its side would
    ** lose what the socket has not taken yet */
    if (c->nqueued == 0 && !c->writing && (c->eof || c->draining)) {
        conn_linger(c);
        return;
    }
    conn_parse(c); /* go on with what was read ahead, or read again */
    conn_timer(c, c->nqueued == 0 && !c->writing && !c->cur);
}

/* After a lost sync (cm_http_server_sync_lost): r's answer, held for a
** commit that will never be known durable, replaced by a 503 that shows
** nothing: outcome_unknown for a write told it succeeded, unavailable for
** a read or a refusal (which changed nothing). -1 when out of memory. */
static int answer_lost(cm_http_req *r)
{
    static const char doubt[] =
        "{\"error\":{\"code\":\"outcome_unknown\",\"message\":\"an fsync of the store "
        "failed before this write was known durable: it may or may not be there when the "
        "node restarts; look before retrying\"}}";
    static const char gone[] =
        "{\"error\":{\"code\":\"unavailable\",\"message\":\"an fsync of the store failed "
        "before this answer could be given; nothing was changed by this request\"}}";
    bool ok = r->status >= 200 && r->status < 300;
    bool write = r->method && strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0;
    const char *body = ok && write ? doubt : gone;
    size_t len = ok && write ? sizeof(doubt) - 1 : sizeof(gone) - 1;
    if (build_response(r, r->close_after, 503, NULL, body, len) != 0)
        return -1;
    r->needs = 0;
    return 0;
}

/* Write the answered requests at the head of the queue, in order. */
static void conn_flush(conn *c)
{
    uv_buf_t bufs[MAX_WRITE_BATCH];
    int n = 0;
    if (c->writing || c->closing)
        return;
    cm_http_req *last = NULL;
    const cm_http_gate *g = &c->srv->gate;
    uint64_t durable = g->made ? g->durable(g->ud) : UINT64_MAX;
    if (c->srv->sync_lost)
        for (cm_http_req *r = c->head; r && r->answered; r = r->next)
            if (r->needs > durable && answer_lost(r) != 0) {
                conn_close(c); /* out of memory: the client sees the connection end */
                return;
            }
    for (cm_http_req *r = c->head; r && r->answered && r->needs <= durable && n < MAX_WRITE_BATCH;
         r = r->next) {
        bufs[n++] = uv_buf_init(r->mem.resp, (unsigned)r->resp_len);
        last = r;
        if (r->close_after)
            break;
    }
    if (n == 0)
        return;
    c->wlist = c->head;
    c->head = last->next;
    last->next = NULL;
    if (!c->head)
        c->tail = NULL;
    c->nqueued -= n;
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, (unsigned)n, after_write) != 0) {
        for (cm_http_req *r = c->wlist, *next; r; r = next) {
            next = r->next;
            req_free(c->srv, r);
        }
        c->wlist = NULL;
        conn_close(c);
        return;
    }
    c->writing = true;
    conn_timer(c, false);
}

static void on_flush(uv_idle_t *h)
{
    cm_http_server *s = h->data;
    uv_idle_stop(h);
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->flush_due) {
            c->flush_due = false;
            conn_flush(c);
        }
    }
}

/* Answer r; gated: held until the gate's watermark reaches the commit
** counter as it is now, else only behind the answers before it. */
static void answer(cm_http_req *r, int status, const char *content_type, const char *body,
                   size_t len, bool gated)
{
    conn *c = r->c;
    if (!c || c->closing || r->answered) {
        if (!c)
            req_free(NULL, r);
        return;
    }
    /* the last answer of a connection that reads no more says so */
    bool close = !r->keep_alive || ((c->draining || c->eof) && !r->next && !c->cur);
    if (build_response(r, close, status, content_type, body, len) != 0) {
        conn_close(c); /* out of memory: the client sees the connection end */
        return;
    }
    r->close_after = close;
    r->answered = true;
    r->status = status;
    r->needs = gated && c->srv->gate.made ? c->srv->gate.made(c->srv->gate.ud) : 0;
    /* Written by the flusher before the loop polls again: the answers a
    ** handler gives in one burst (an engine batch) leave in one write, and the
    ** client's next requests arrive together. */
    c->flush_due = true;
    if (!uv_is_closing((uv_handle_t *)&c->srv->flusher))
        uv_idle_start(&c->srv->flusher, on_flush);
    else
        conn_flush(c);
}

void cm_http_respond(cm_http_req *r, int status, const char *content_type, const char *body,
                     size_t len)
{
    answer(r, status, content_type, body, len, true);
}

void cm_http_refuse(cm_http_req *r, int status, const char *body, size_t len)
{
    answer(r, status, NULL, body, len, false);
}

void cm_http_server_set_gate(cm_http_server *s, const cm_http_gate *gate)
{
    if (gate)
        s->gate = *gate;
    else
        memset(&s->gate, 0, sizeof(s->gate));
    cm_http_server_durable(s); /* without a gate nothing is held */
}

void cm_http_server_sync_lost(cm_http_server *s)
{
    s->sync_lost = true;
    cm_http_server_durable(s);
}

void cm_http_server_durable(cm_http_server *s)
{
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next; /* a failed write closes c */
        if (c->head && c->head->answered)
            conn_flush(c);
    }
}

/* ---- parsing ----------------------------------------------------------- */

static __attribute__((cold, noinline)) int fail_cb(conn *c, int status, const char *code,
                                                   const char *msg)
{
    c->fail_status = status;
    c->fail_code = code;
    c->fail_msg = msg;
    return -1;
}

static int on_message_begin(http_parser *p)
{
    conn *c = p->data;
    if (!(c->cur = req_new(c)))
        return fail_cb(c, 503, "out_of_memory", "the server is out of memory");
    conn_timer(c, true); /* a request must arrive whole within the timeout */
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    conn *c = p->data;
    size_t lim = c->srv->lim.max_header_bytes;
    if (add_within(&c->cur->mem.url, 0, at, len, lim - c->cur->mem.hbuf.len) != 0)
        return fail_cb(c, 414, "uri_too_long",
                       "the request line is longer than the server accepts");
    return 0;
}

static int header_add(conn *c, const char *at, size_t len, bool value)
{
    cm_http_req *r = c->cur;
    size_t lim = c->srv->lim.max_header_bytes - r->mem.url.len;
    size_t nul = 0;
    if (value != r->in_value || (!value && r->nheaders == 0)) {
        /* a new name (or its value begins): a NUL ends what came before */
        nul = r->nheaders > 0 || value ? 1 : 0;
        size_t start = r->mem.hbuf.len + nul;
        if (!value) {
            if (r->nheaders == MAX_HEADERS)
                return fail_cb(c, 431, "headers_too_large", "too many header fields (most 64)");
            r->mem.headers[r->nheaders++].name = start;
        } else {
            hdr *h = &r->mem.headers[r->nheaders - 1];
            h->value = start;
            r->names |= name_bit((unsigned char)r->mem.hbuf.p[h->name], start - h->name - 1);
        }
        r->in_value = value;
    }
    if (add_within(&r->mem.hbuf, nul, at, len, lim) == 0)
        return 0;
    return fail_cb(c, 431, "headers_too_large",
                   "the request headers are larger than the server accepts");
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    return header_add(p->data, at, len, false);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    return header_add(p->data, at, len, true);
}

/* 413, stating the limit: a client learns how much it may send. */
static int too_large(conn *c)
{
    snprintf(c->fail_buf, sizeof(c->fail_buf),
             "the request body is larger than the server accepts (at most %zu bytes)",
             c->srv->lim.max_body_bytes);
    return fail_cb(c, 413, "payload_too_large", c->fail_buf);
}

static int on_headers_complete(http_parser *p)
{
    conn *c = p->data;
    cm_http_req *r = c->cur;
    if (r->nheaders > 0 && !r->in_value) /* a name with no value at all */
        return fail_cb(c, 400, "bad_request", "a header field has no value");
    if (add_within(&r->mem.hbuf, 1, "", 0, SIZE_MAX) != 0 ||
        add_within(&r->mem.url, 0, "", 0, SIZE_MAX) != 0)
        return fail_cb(c, 503, "out_of_memory", "the server is out of memory");
    if (!r->mem.url.p)
        return fail_cb(c, 400, "bad_request", "the request has no target");
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->lim.max_body_bytes)
        return too_large(c);
    r->method = http_method_str((enum http_method)p->method);
    r->keep_alive = http_should_keep_alive(p) != 0;
    const char *expect = cm_http_req_header(r, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && c->nqueued == 0 && !c->writing) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
        uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* if it does not go, the client waits */
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    conn *c = p->data;
    if (add_within(&c->cur->mem.body, 0, at, len, c->srv->lim.max_body_bytes) != 0)
        return too_large(c);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn *c = p->data;
    cm_http_req *r = c->cur;
    char *q = strchr(r->mem.url.p, '?');
    if (q)
        *q++ = '\0';
    char *frag = strchr(q ? q : r->mem.url.p, '#');
    if (frag)
        *frag = '\0';
    r->path = r->mem.url.p;
    r->query = q ? q : "";
    r->keep_alive = r->keep_alive && http_should_keep_alive(p) != 0;
    r->pass = c->srv->passes;
    conn_enqueue(c, r);
    c->cur = NULL;
    c->ready = r;
    http_parser_pause(p, 1); /* dispatch before parsing on */
    return 0;
}

static void read_stop(conn *c);

static void dispatch(conn *c, cm_http_req *r)
{
    r->dispatched = true;
    if (!r->keep_alive) { /* nothing after this request is read */
        c->rpos = c->rlen = 0;
        c->eof = true;
        read_stop(c);
    }
    c->srv->handler(c->srv->ud, r);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* ---- the lingering close ------------------------------------------------
** Closing a socket whose kernel buffer still holds unread bytes makes TCP
** send a reset, which can destroy answers the client has not read yet. So
** after its last answer a connection sends its FIN (uv_shutdown, once the
** writes are out), then reads and drops what comes until the client
** closes, LINGER_BYTES have come or LINGER_MS (at most the server's
** timeout) have passed; only then is the socket closed. A stop's grace
** timer closes it sooner if it runs out first. */

static void on_linger_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = st->data;
    if (nread < 0 || (c->lingered += (size_t)nread) > LINGER_BYTES)
        conn_close(c); /* the client closed (or reset), or sends too much */
}

static void on_linger_timeout(uv_timer_t *t)
{
    conn_close(t->data); /* the client did not close in time */
}

static void on_linger_shutdown(uv_shutdown_t *req, int status)
{
    if (status < 0)
        conn_close(req->data);
}

static void conn_linger(conn *c)
{
    if (c->closing || c->lingering)
        return;
    c->lingering = true;
    read_stop(c);
    c->rpos = c->rlen = 0;
    c->deadline = c->armed = 0;
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_linger_shutdown) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_linger_read) != 0) {
        conn_close(c);
        return;
    }
    c->reading = true;
    uint64_t ms = (uint64_t)c->srv->lim.timeout_ms;
    uv_timer_start(&c->timer, on_linger_timeout, ms < LINGER_MS ? ms : LINGER_MS, 0);
}

static void read_start(conn *c)
{
    if (!c->reading && !c->eof && !c->failed && !c->draining && !c->closing &&
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
}

static void read_stop(conn *c)
{
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

/* Parse the unparsed bytes of rbuf, dispatching each complete request. */
static void conn_parse(conn *c)
{
    if (c->rpos < c->rlen)
        c->srv->passes++;
    while (c->rpos < c->rlen && !c->closing && !c->failed && !c->eof && !c->draining) {
        if (c->nqueued >= c->srv->lim.max_pipeline) {
            read_stop(c); /* resumed when answers drain */
            return;
        }
        size_t n =
            http_parser_execute(&c->parser, &parser_settings, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rpos += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            cm_http_req *r = c->ready;
            c->ready = NULL;
            if (r)
                dispatch(c, r);
            continue;
        }
        if (e != HPE_OK) {
            char msg[160];
            if (c->fail_status) {
                conn_fail(c, c->fail_status, c->fail_code, c->fail_msg);
            } else {
                snprintf(msg, sizeof(msg), "malformed HTTP request: %s", http_errno_description(e));
                conn_fail(c, 400, "bad_request", msg);
            }
            return;
        }
    }
    if (c->rpos >= c->rlen) {
        c->rpos = c->rlen = 0;
        if (c->nqueued < c->srv->lim.max_pipeline)
            read_start(c);
    } else {
        read_stop(c);
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        read_stop(c);
        c->eof = true;
        if (nread != UV_EOF || (c->nqueued == 0 && !c->writing)) {
            conn_close(c); /* a half-sent request dies with its connection */
            return;
        }
        req_free(c->srv, c->cur); /* the client half-closed: answer what is queued, then close */
        c->cur = NULL;
        conn_timer(c, false);
        return;
    }
    c->rpos = 0;
    c->rlen = (size_t)nread;
    conn_parse(c); /* stops reading while rbuf holds unparsed bytes */
    conn_timer(c, false);
}

/* ---- the listener ------------------------------------------------------ */

static void on_connection(uv_stream_t *ls, int status)
{
    cm_http_server *s = ls->data;
    if (status < 0 || s->stopping)
        return;
    conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0)
        c->loopback = is_loopback(&ss);
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (s->nconns > s->lim.max_connections) {
        conn_fail(c, 503, "too_many_connections",
                  "the server has as many connections as it accepts; try again later");
        return;
    }
    read_start(c);
    conn_timer(c, true);
}

static void on_server_handle_closed(uv_handle_t *h)
{
    cm_http_server *s = h->data;
    s->open_handles--;
    server_maybe_done(s);
}

int cm_http_server_start(uv_loop_t *loop, const char *host, int port, const cm_http_limits *limits,
                         cm_http_handler handler, void *ud, cm_http_server **out, cm_err *err)
{
    struct sockaddr_storage addr;
    int rc;
    *out = NULL;
    memset(&parser_settings, 0, sizeof(parser_settings));
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
    if (port < 0 || port > 65535)
        return cm_err_set(err, CM_EINVAL, "http: port %d out of range", port);
    if (strchr(host, ':'))
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr);
    else
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
    if (rc != 0)
        return cm_err_set(err, CM_EINVAL, "http: \"%s\" is not an IPv4 or IPv6 address", host);
    cm_http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    s->loop = loop;
    s->lim = *limits;
    s->handler = handler;
    s->ud = ud;
    /* the parser's own cap sits above ours, which answers 431 first */
    http_parser_set_max_header_size((uint32_t)(limits->max_header_bytes + 1024));
    uv_tcp_init(loop, &s->listener);
    uv_timer_init(loop, &s->grace);
    uv_idle_init(loop, &s->flusher);
    s->listener.data = s->grace.data = s->flusher.data = s;
    s->open_handles = 3;
    *out = s;
    if ((rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection)) != 0)
        return cm_err_set(err, CM_EIO, "http: cannot listen on %s:%d: %s", host, port,
                          uv_strerror(rc));
    int len = sizeof(addr);
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&addr, &len) == 0)
        s->port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                                   : ((struct sockaddr_in *)&addr)->sin_port);
    return 0;
}

void cm_http_server_set_limits(cm_http_server *s, const cm_http_limits *limits)
{
    s->lim = *limits;
    http_parser_set_max_header_size((uint32_t)(limits->max_header_bytes + 1024));
}

int cm_http_server_port(const cm_http_server *s)
{
    return s->port;
}

int cm_http_server_connections(const cm_http_server *s)
{
    return s->nconns;
}

static void on_grace(uv_timer_t *t)
{
    cm_http_server *s = t->data;
    for (conn *c = s->conns; c; c = c->next)
        conn_close(c);
    if (!uv_is_closing((uv_handle_t *)&s->grace))
        uv_close((uv_handle_t *)&s->grace, on_server_handle_closed);
}

/* Stopping: the complete requests still in c's read buffer, read but never
** handed to the handler (they waited behind max_pipeline), are answered
** 503 unavailable in their turn after the answers before them, the last
** with "Connection: close"; a partly read request at the end is dropped. */
static void conn_refuse_unread(conn *c)
{
    static const char gone[] =
        "{\"error\":{\"code\":\"unavailable\",\"message\":\"the server is stopping: this "
        "request was read but not taken up, and nothing was changed by it; retry once the "
        "server is back\"}}";
    cm_http_req *first = NULL;
    int n = 0;
    while (c->rpos < c->rlen && !c->closing && !c->failed && !c->eof) {
        size_t used =
            http_parser_execute(&c->parser, &parser_settings, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rpos += used;
        if (HTTP_PARSER_ERRNO(&c->parser) != HPE_PAUSED)
            break; /* the end of what was read, mid-request, or bytes that are no request */
        http_parser_pause(&c->parser, 0);
        cm_http_req *r = c->ready;
        c->ready = NULL;
        r->dispatched = true; /* the handler never sees it */
        first = first ? first : r;
        n++;
        if (!r->keep_alive)
            break; /* nothing after it is read */
    }
    req_free(c->srv, c->cur); /* a partly read request */
    c->cur = NULL;
    if (n > 0)
        cm_log(CM_LOG_INFO, "http.refused",
               "503 unavailable: %d request(s) read on a connection but not taken up before the "
               "server stopped",
               n);
    for (cm_http_req *r = first, *next; r && !c->closing; r = next) {
        next = r->next;
        answer(r, 503, NULL, gone, sizeof(gone) - 1, false);
    }
}

void cm_http_server_stop(cm_http_server *s, void (*done)(void *ud), void *ud)
{
    if (!s)
        return;
    if (s->stopping) {
        if (!uv_is_closing((uv_handle_t *)&s->grace)) {
            uv_timer_stop(&s->grace);
            on_grace(&s->grace);
        }
        return;
    }
    s->stopping = true;
    s->done = done;
    s->done_ud = ud;
    uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->lingering || c->closing)
            continue; /* on its way out already */
        c->draining = true;
        read_stop(c);
        conn_refuse_unread(c);
        c->rpos = c->rlen = 0;
        if (c->nqueued == 0 && !c->writing)
            conn_linger(c);
    }
    uv_timer_start(&s->grace, on_grace, (uint64_t)s->lim.timeout_ms, 0);
    server_maybe_done(s);
}

void cm_http_server_destroy(cm_http_server **s_p)
{
    if (s_p && *s_p) {
        for (cm_http_req *r = (*s_p)->spare, *next; r; r = next) {
            next = r->next;
            req_destroy(r);
        }
        free(*s_p);
        *s_p = NULL;
    }
}

/* ---- pure pieces ------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool cm_http_unescape(const char *src, size_t len, bool plus_space, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = src[i];
        if (ch == '%') {
            if (i + 2 >= len)
                return false;
            int hi = hexval(src[i + 1]);
            int lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return false;
            ch = (char)(hi * 16 + lo);
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        } else if (ch == '\0') {
            return false;
        }
        if (o + 1 >= outsz)
            return false;
        out[o++] = ch;
    }
    if (o >= outsz)
        return false;
    out[o] = '\0';
    return true;
}

void cm_http_query_free(cm_http_query *q)
{
    for (int i = 0; i < q->n; i++) {
        free(q->p[i].name);
        free(q->p[i].value);
    }
    q->n = 0;
}

const char *cm_http_query_get(const cm_http_query *q, const char *name)
{
    for (int i = 0; i < q->n; i++)
        if (strcmp(q->p[i].name, name) == 0)
            return q->p[i].value;
    return NULL;
}

/* Decode s[0..len) into a malloc'd string; NULL when malformed or not UTF-8. */
static char *decode_part(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (out && cm_http_unescape(s, len, true, out, len + 1) && cm_utf8_valid(out, strlen(out)))
        return out;
    free(out);
    return NULL;
}

int cm_http_query_parse(const char *qs, cm_http_query *q, cm_err *err)
{
    q->n = 0;
    for (const char *p = qs ? qs : ""; *p;) {
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        size_t nlen = eq ? (size_t)(eq - p) : len;
        if (len == 0) {
            p++;
            continue;
        }
        char shown[48];
        snprintf(shown, sizeof(shown), "%.*s", (int)(nlen < 40 ? nlen : 40), p);
        if (q->n == CM_HTTP_MAX_PARAMS) {
            cm_http_query_free(q);
            return cm_err_set(err, CM_EINVAL, "query: more than %d parameters", CM_HTTP_MAX_PARAMS);
        }
        char *name = decode_part(p, nlen);
        char *value = eq ? decode_part(eq + 1, len - nlen - 1) : strdup("");
        if (!name || !value || !*name) {
            free(name);
            free(value);
            cm_http_query_free(q);
            return cm_err_set(err, CM_EINVAL,
                              "query parameter \"%s\": malformed (bad %%-escape, empty name or "
                              "not UTF-8)",
                              shown);
        }
        if (cm_http_query_get(q, name)) {
            free(name);
            free(value);
            cm_http_query_free(q);
            return cm_err_set(err, CM_EINVAL, "query parameter \"%s\": given twice", shown);
        }
        q->p[q->n].name = name;
        q->p[q->n++].value = value;
        p += len;
    }
    return 0;
}

#define PATH_2X16 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2
const unsigned char cm__http_path_byte[256] = {[0] = 1,   ['/'] = 1, ['%'] = 2, [0x80] = PATH_2X16,
                                               PATH_2X16, PATH_2X16, PATH_2X16, PATH_2X16,
                                               PATH_2X16, PATH_2X16, PATH_2X16};

int cm_http_split_path(const char *path, cm_http_path *out, int max)
{
    int n = 0;
    char *to = out->text;
    out->n = 0;
    if (!path || path[0] != '/' || max > CM_HTTP_MAX_SEGMENTS)
        return -1;
    const char *p = path + 1;
    while (*p) {
        /* one pass to the segment's end: plain ASCII without escapes is
        ** copied as it is, the rest decoded and checked for UTF-8 */
        size_t len = cm_http_plain_run(p);
        bool plain = cm__http_path_byte[(unsigned char)p[len]] == 1;
        for (char ch; (ch = p[len]) != '\0' && ch != '/';) /* an escape or UTF-8 */
            len++;
        if (len == 0)
            return -1; /* "//" */
        if (n == max)
            return -1;
        size_t dlen = len;
        if (plain && len < CM_HTTP_SEGMENT_MAX) {
            memcpy(to, p, len);
            to[len] = '\0';
        } else if (!cm_http_unescape(p, len, false, to, CM_HTTP_SEGMENT_MAX) ||
                   !cm_utf8_valid(to, dlen = strlen(to))) {
            return -1;
        }
        out->seg[n] = to;
        out->len[n] = dlen;
        to += dlen + 1;
        n++;
        p += len;
        if (*p == '/')
            p++;
    }
    out->n = n;
    return n;
}
