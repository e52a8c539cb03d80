/*
** test_http.c -- the HTTP server's pure pieces (query strings, escapes, path
** segments) and the server on a real loop: pipelined requests answered in
** order whatever order the handler answers them in, limits answered with
** their status, and a stop that waits for the answers of what was read; an
** answer (a patient's record) leaves nothing of itself in freed memory.
** Linked with -Wl,--wrap=free (freescan.h).
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "freescan.h"
#include "http.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- pure pieces ---- */

static void test_query_decodes_names_and_values(void **state)
{
    cm_http_query q;
    cm_err err;
    assert_int_equal(cm_http_query_parse("a=1&name=Ann+Doe&x=%C3%A9%2F&flag&&b=", &q, &err), 0);
    assert_int_equal(q.n, 5);
    assert_string_equal(cm_http_query_get(&q, "a"), "1");
    assert_string_equal(cm_http_query_get(&q, "name"), "Ann Doe");
    assert_string_equal(cm_http_query_get(&q, "x"), "\xc3\xa9/");
    assert_string_equal(cm_http_query_get(&q, "flag"), "");
    assert_string_equal(cm_http_query_get(&q, "b"), "");
    assert_null(cm_http_query_get(&q, "missing"));
    cm_http_query_free(&q);
    assert_int_equal(cm_http_query_parse("", &q, &err), 0);
    assert_int_equal(q.n, 0);
}

static void test_query_refuses_what_it_cannot_read(void **state)
{
    static const char *const bad[] = {"a=%zz", "a=%4", "a=%00", "a=1&a=2", "=v", "a=%ff%fe"};
    cm_http_query q;
    cm_err err;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(cm_http_query_parse(bad[i], &q, &err), CM_EINVAL);
        assert_int_equal(q.n, 0);
        assert_non_null(strstr(err.msg, "query parameter"));
    }
    char many[512] = "";
    for (int i = 0; i <= CM_HTTP_MAX_PARAMS; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "p%d=1&", i);
    assert_int_equal(cm_http_query_parse(many, &q, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "more than"));
}

static void test_unescape_bounds(void **state)
{
    char out[4];
    assert_true(cm_http_unescape("a%20b", 5, false, out, sizeof(out)));
    assert_string_equal(out, "a b");
    assert_true(cm_http_unescape("a+b", 3, false, out, sizeof(out)));
    assert_string_equal(out, "a+b");
    assert_false(cm_http_unescape("abcd", 4, false, out, sizeof(out))); /* no room for NUL */
    assert_false(cm_http_unescape("%", 1, false, out, sizeof(out)));
    assert_false(cm_http_unescape("%2", 2, false, out, sizeof(out)));
}

static void test_split_path_segments(void **state)
{
    cm_http_path pa;
    assert_int_equal(cm_http_split_path("/v1/patients/p%201", &pa, CM_HTTP_MAX_SEGMENTS), 3);
    assert_string_equal(pa.seg[0], "v1");
    assert_string_equal(pa.seg[2], "p 1");
    assert_int_equal(pa.n, 3);
    assert_int_equal(pa.len[0], 2);
    assert_int_equal(pa.len[1], 8);
    assert_int_equal(pa.len[2], 3);             /* the decoded length */
    assert_ptr_equal(pa.seg[1], pa.seg[0] + 3); /* packed, each after the last's NUL */
    assert_ptr_equal(pa.seg[2], pa.seg[1] + 9);
    assert_int_equal(cm_http_split_path("/v1/patients/", &pa, CM_HTTP_MAX_SEGMENTS), 2);
    assert_int_equal(cm_http_split_path("/", &pa, CM_HTTP_MAX_SEGMENTS), 0);
    assert_int_equal(cm_http_split_path("v1", &pa, CM_HTTP_MAX_SEGMENTS), -1);
    assert_int_equal(cm_http_split_path("/v1//x", &pa, CM_HTTP_MAX_SEGMENTS), -1);
    assert_int_equal(cm_http_split_path("/a%zz", &pa, CM_HTTP_MAX_SEGMENTS), -1);
    assert_int_equal(cm_http_split_path("/a/b/c", &pa, 2), -1);
    assert_int_equal(cm_http_split_path("/a+b/\xc3\xa9t\xc3\xa9", &pa, CM_HTTP_MAX_SEGMENTS), 2);
    assert_string_equal(pa.seg[0], "a+b"); /* '+' is a space only in queries */
    assert_string_equal(pa.seg[1], "\xc3\xa9t\xc3\xa9");
    assert_int_equal(cm_http_split_path("/a/\xff", &pa, CM_HTTP_MAX_SEGMENTS), -1);
    /* the longest segment, plain and escaped, and one past it */
    char path[2 * CM_HTTP_SEGMENT_MAX + 8];
    path[0] = '/';
    memset(path + 1, 'x', CM_HTTP_SEGMENT_MAX - 1);
    path[CM_HTTP_SEGMENT_MAX] = '\0';
    assert_int_equal(cm_http_split_path(path, &pa, CM_HTTP_MAX_SEGMENTS), 1);
    assert_int_equal(strlen(pa.seg[0]), CM_HTTP_SEGMENT_MAX - 1);
    memcpy(path + CM_HTTP_SEGMENT_MAX, "x", 2);
    assert_int_equal(cm_http_split_path(path, &pa, CM_HTTP_MAX_SEGMENTS), -1);
    memcpy(path + CM_HTTP_SEGMENT_MAX - 1, "%41", 4);
    assert_int_equal(cm_http_split_path(path, &pa, CM_HTTP_MAX_SEGMENTS), 1);
    assert_int_equal(pa.seg[0][CM_HTTP_SEGMENT_MAX - 2], 'A');
    memcpy(path + CM_HTTP_SEGMENT_MAX - 1, "x%41", 5);
    assert_int_equal(cm_http_split_path(path, &pa, CM_HTTP_MAX_SEGMENTS), -1);
    assert_int_equal(pa.n, 0); /* a refused path leaves no segments */
    /* the most segments, each the longest, fit the packed text; one more does not */
    char full[CM_HTTP_MAX_SEGMENTS * (CM_HTTP_SEGMENT_MAX + 3) + 4], *f = full;
    for (int i = 0; i < CM_HTTP_MAX_SEGMENTS; i++) {
        *f++ = '/';
        memset(f, 'a' + i, CM_HTTP_SEGMENT_MAX - 2);
        f += CM_HTTP_SEGMENT_MAX - 2;
        memcpy(f, "%41", 3); /* decoded: CM_HTTP_SEGMENT_MAX - 1 bytes */
        f += 3;
    }
    *f = '\0';
    assert_int_equal(cm_http_split_path(full, &pa, CM_HTTP_MAX_SEGMENTS), CM_HTTP_MAX_SEGMENTS);
    for (int i = 0; i < CM_HTTP_MAX_SEGMENTS; i++) {
        assert_int_equal(pa.len[i], CM_HTTP_SEGMENT_MAX - 1);
        assert_int_equal(pa.seg[i][0], 'a' + i);
        assert_int_equal(pa.seg[i][CM_HTTP_SEGMENT_MAX - 2], 'A');
        assert_int_equal(pa.seg[i][CM_HTTP_SEGMENT_MAX - 1], '\0');
    }
    memcpy(f, "/z", 3);
    assert_int_equal(cm_http_split_path(full, &pa, CM_HTTP_MAX_SEGMENTS), -1);
}

/* ---- the server on a loop ---- */

typedef struct later {
    uv_timer_t t;
    cm_http_req *req;
} later;

typedef struct env {
    uv_loop_t loop;
    cm_http_server *srv;
    uv_tcp_t client;
    uv_connect_t connect;
    uv_write_t write;
    const char *send;
    const char *send2, *send2_after; /* sent once got holds send2_after */
    int send2_delay_ms;              /* that long after it, when > 0 */
    uv_timer_t delay;
    uv_write_t write2;
    uint64_t passes[8];
    char got[8192];
    size_t got_len;
    bool eof, stopped;
    uint64_t t_start, t_eof; /* uv_now at the connect and at the end */
    int handled;
    later deferred;
    /* the output gate (cm_http_gate): the commit counter and the watermark */
    bool gated;
    bool lose; /* the watermark never moves: the sync is lost once a refusal came */
    uint64_t made, durable;
    size_t got_at_release; /* bytes the client had when the watermark moved */
    uv_timer_t release;
} env;

static uint64_t gate_made(void *ud)
{
    return ((env *)ud)->made;
}

static uint64_t gate_durable(void *ud)
{
    return ((env *)ud)->durable;
}

/* The watermark reaches the commit the answers were made at. */
static void release_answers(uv_timer_t *t)
{
    env *e = t->data;
    e->got_at_release = e->got_len;
    e->durable = e->made;
    cm_http_server_durable(e->srv);
    uv_close((uv_handle_t *)t, NULL);
}

static void answer_later(uv_timer_t *t)
{
    later *l = t->data;
    cm_http_respond(l->req, 200, "text/plain", "later", 5);
    uv_close((uv_handle_t *)t, NULL);
}

/* /later answers after a timer; anything else answers at once with its path. */
#define RECORD_MARK "Rivera-Ana-1958-04-12"

#define HUGE_ANSWER (4u << 20) /* /huge's body: 'z' bytes */

static void on_stopped(void *ud);

static void handler(void *ud, cm_http_req *req)
{
    env *e = ud;
    const char *path = cm_http_req_path(req);
    if (e->handled < 8)
        e->passes[e->handled] = cm_http_req_pass(req);
    e->handled++;
    if (strcmp(path, "/echo") == 0) { /* what the request carries */
        char text[512];
        size_t len;
        const char *body = cm_http_req_body(req, &len), *tag = cm_http_req_header(req, "X-Tag");
        /* a name given by its length: the bytes after it are no part of it */
        assert_ptr_equal(cm_http_req_header_n(req, "x-tAgged", 5), tag);
        int n = snprintf(text, sizeof(text), "[%s ?%s tag=%s body=%zu:%s]", cm_http_req_method(req),
                         cm_http_req_query(req), tag ? tag : "-", len, body);
        cm_http_respond(req, 200, "text/plain", text, (size_t)n);
        return;
    }
    if (strcmp(path, "/memo") == 0) { /* the connection's memo: its first byte, then one more */
        cm_http_memo *m = cm_http_req_memo(req);
        char text[32];
        int n = snprintf(text, sizeof(text), "[memo %d]", m ? m->bytes[0] : -1);
        if (m)
            m->bytes[0]++;
        cm_http_respond(req, 200, "text/plain", text, (size_t)n);
        return;
    }
    if (strcmp(path, "/gated") == 0 && e->made == 0) {
        /* answered now, after commit 5 while only 3 is durable; the
        ** watermark moves 30 ms later */
        e->made = 5;
        e->durable = 3;
        uv_timer_init(&e->loop, &e->release);
        e->release.data = e;
        uv_timer_start(&e->release, release_answers, 30, 0);
    }
    if (strcmp(path, "/refused") == 0) { /* shows nothing: not held by the gate */
        static const char text[] = "{\"error\":{\"code\":\"refused\"}}";
        cm_http_refuse(req, 503, text, sizeof(text) - 1);
        return;
    }
    if (strcmp(path, "/wrote") == 0) { /* a write told it succeeded */
        cm_http_respond(req, 201, NULL, "{}", 2);
        return;
    }
    if (strcmp(path, "/record") == 0 || strcmp(path, "/large") == 0) {
        /* a record with the marker; a larger answer without it */
        char text[3000];
        size_t n = path[1] == 'r' ? 300 : sizeof(text);
        memset(text, 'x', n);
        if (path[1] == 'r')
            memcpy(text + 100, RECORD_MARK, strlen(RECORD_MARK));
        cm_http_respond(req, 200, NULL, text, n);
        return;
    }
    if (strcmp(path, "/huge") == 0) { /* more than the socket's buffers take at once */
        char *text = malloc(HUGE_ANSWER);
        assert_non_null(text);
        memset(text, 'z', HUGE_ANSWER);
        cm_http_respond(req, 200, NULL, text, HUGE_ANSWER);
        free(text);
        return;
    }
    if (strcmp(path, "/stop") == 0) { /* the server stops while this request is with it */
        cm_http_server_stop(e->srv, on_stopped, e);
        cm_http_respond(req, 200, "text/plain", "stopping", 8);
        return;
    }
    if (strcmp(path, "/later") == 0) {
        e->deferred.req = req;
        uv_timer_init(&e->loop, &e->deferred.t);
        e->deferred.t.data = &e->deferred;
        uv_timer_start(&e->deferred.t, answer_later, 20, 0);
        return;
    }
    cm_http_respond(req, 200, "text/plain", path + 1, strlen(path + 1));
}

static void on_written(uv_write_t *w, int status)
{
    assert_int_equal(status, 0);
}

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *b)
{
    env *e = h->data;
    *b = uv_buf_init(e->got + e->got_len, (unsigned)(sizeof(e->got) - e->got_len - 1));
}

static void send_second(env *e)
{
    uv_buf_t b2 = uv_buf_init((char *)e->send2, (unsigned)strlen(e->send2));
    e->send2 = NULL;
    uv_write(&e->write2, (uv_stream_t *)&e->client, &b2, 1, on_written);
}

static void on_delay(uv_timer_t *t)
{
    send_second(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    env *e = s->data;
    if (n > 0) {
        e->got_len += (size_t)n;
        e->got[e->got_len] = '\0';
        if (e->lose && !e->got_at_release && strstr(e->got, "\"refused\"")) {
            e->got_at_release = e->got_len;
            cm_http_server_sync_lost(e->srv);
        }
        if (e->send2 && e->send2_delay_ms > 0 && strstr(e->got, e->send2_after)) {
            uv_timer_init(&e->loop, &e->delay);
            e->delay.data = e;
            uv_timer_start(&e->delay, on_delay, (uint64_t)e->send2_delay_ms, 0);
            e->send2_delay_ms = 0;
        } else if (e->send2 && e->send2_delay_ms == 0 && strstr(e->got, e->send2_after)) {
            send_second(e);
        }
    } else if (n < 0) {
        e->eof = true;
        uv_close((uv_handle_t *)s, NULL);
    }
}

static void on_connected(uv_connect_t *c, int status)
{
    env *e = c->data;
    assert_int_equal(status, 0);
    uv_buf_t b = uv_buf_init((char *)e->send, (unsigned)strlen(e->send));
    uv_write(&e->write, (uv_stream_t *)&e->client, &b, 1, on_written);
    uv_read_start((uv_stream_t *)&e->client, on_alloc, on_read);
}

static void on_stopped(void *ud)
{
    ((env *)ud)->stopped = true;
}

/* Send text on a fresh connection to a fresh server; run until the server
** closes it. e->send2 (set before, with send2_after) goes once an answer
** holding send2_after arrived. */
static void exchange(env *e, const cm_http_limits *lim, const char *text)
{
    cm_err err;
    struct sockaddr_in addr;
    const char *send2 = e->send2, *send2_after = e->send2_after;
    int send2_delay_ms = e->send2_delay_ms;
    bool gated = e->gated, lose = e->lose;
    memset(e, 0, sizeof(*e));
    e->gated = gated;
    e->lose = lose;
    if (lose) { /* every gated answer shows commit 5; 3 is durable, and stays */
        e->made = 5;
        e->durable = 3;
    }
    e->send2 = send2;
    e->send2_after = send2_after;
    e->send2_delay_ms = send2_delay_ms;
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(cm_http_server_start(&e->loop, "127.0.0.1", 0, lim, handler, e, &e->srv, &err),
                     0);
    assert_true(cm_http_server_port(e->srv) > 0);
    if (e->gated) {
        cm_http_gate g = {gate_made, gate_durable, e};
        cm_http_server_set_gate(e->srv, &g);
    }
    uv_ip4_addr("127.0.0.1", cm_http_server_port(e->srv), &addr);
    uv_tcp_init(&e->loop, &e->client);
    e->client.data = e->connect.data = e;
    e->send = text;
    uv_tcp_connect(&e->connect, &e->client, (const struct sockaddr *)&addr, on_connected);
    e->t_start = uv_now(&e->loop);
    while (!e->eof && uv_run(&e->loop, UV_RUN_ONCE))
        ;
    assert_true(e->eof);
    e->t_eof = uv_now(&e->loop);
    cm_http_server_stop(e->srv, on_stopped, e);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_true(e->stopped);
    cm_http_server_destroy(&e->srv);
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

static void test_pipelined_answers_keep_request_order(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    exchange(e, &lim,
             "GET /later HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /now HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(e->handled, 3);
    const char *a = strstr(e->got, "later"), *b = strstr(e->got, "now"),
               *c = strstr(e->got, "last");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_true(a < b && b < c);
    assert_non_null(strstr(e->got, "Connection: close\r\n\r\nlast"));
    free(e);
}

/* With an output gate, answers made after a commit that is not durable yet
** are not written, nor those after them on the connection; once the
** watermark reaches it they go, in order. */
static void test_answers_wait_for_the_commit_they_may_show(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    e->gated = true;
    exchange(e, &lim,
             "GET /gated HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(e->handled, 2);
    assert_int_equal(e->got_at_release, 0); /* nothing written while held */
    const char *a = strstr(e->got, "gated"), *b = strstr(e->got, "next");
    assert_non_null(a);
    assert_non_null(b);
    assert_true(a < b);
    free(e);
}

/* A refusal (cm_http_refuse) waits for no sync, only for the answers before
** it. When the sync is lost (cm_http_server_sync_lost), every held answer
** becomes a 503 in its turn: outcome_unknown for a write told it succeeded,
** unavailable for a read; a refusal stays as it was. */
static void test_a_lost_sync_answers_every_held_request_in_order(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    e->gated = e->lose = true;
    exchange(e, &lim,
             "POST /refused HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
             "GET /gated HTTP/1.1\r\nHost: t\r\n\r\n"
             "POST /wrote HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
             "POST /refused HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
             "GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(e->handled, 5);
    /* only the first refusal left before the loss: the rest waited behind /gated */
    assert_true(e->got_at_release > 0);
    char before[8192];
    memcpy(before, e->got, e->got_at_release);
    before[e->got_at_release] = '\0';
    assert_non_null(strstr(before, "\"refused\""));
    assert_null(strstr(strstr(before, "\"refused\"") + 1, "HTTP/1.1"));
    /* then, in request order: unavailable (the read), outcome_unknown (the
    ** write), the second refusal, unavailable (the last read) */
    const char *p = e->got + e->got_at_release;
    const char *want[] = {
        "503 Service Unavailable", "\"unavailable\"",         "503 Service Unavailable",
        "\"outcome_unknown\"",     "503 Service Unavailable", "\"refused\"",
        "503 Service Unavailable", "Connection: close",       "\"unavailable\""};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const char *q = strstr(p, want[i]);
        if (!q)
            fail_msg("missing %s after %s in %s", want[i], p, e->got);
        p = q + strlen(want[i]);
    }
    assert_null(strstr(e->got, "201 Created"));
    assert_null(strstr(e->got, "gated"));
    free(e);
}

/* Requests read but waiting behind max_pipeline when the server stops are
** answered 503 unavailable in their turn, after the answer of the one the
** handler had, the last with "Connection: close"; a request read only in
** part is dropped; the handler never sees the refused ones. */
static void test_a_stop_answers_requests_read_but_not_taken_up(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    lim.max_pipeline = 1;
    exchange(e, &lim,
             "GET /stop HTTP/1.1\r\nHost: t\r\n\r\n"
             "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
             "GET /b HTTP/1.1\r\nHost: t\r\n\r\n"
             "POST /partial HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{\"a\"");
    assert_int_equal(e->handled, 1);
    const char *p = e->got;
    const char *want[] = {"HTTP/1.1 200 OK",
                          "stopping",
                          "HTTP/1.1 503 Service Unavailable",
                          "\"unavailable\"",
                          "HTTP/1.1 503 Service Unavailable",
                          "Connection: close",
                          "\"unavailable\""};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const char *q = strstr(p, want[i]);
        if (!q)
            fail_msg("missing %s after %s in %s", want[i], p, e->got);
        p = q + strlen(want[i]);
    }
    assert_null(strstr(p, "HTTP/1.1")); /* nothing for the partial request */
    /* only the last answer closes */
    const char *close = strstr(e->got, "Connection: close");
    assert_null(strstr(close + 1, "Connection: close"));
    free(e);
}

/* A client that sends far more than the server reads, and reads nothing
** until the server is done with it: first (the server stops on /stop, or
** refuses a body too large), then pipelined requests of about 1 KiB up to
** `bytes`. Runs the server until it stopped, then reads what the socket
** holds into e->got; returns the errno of the read that ended it (0: a
** clean end of stream) and the loop time the stop took in *stop_ms. */
static int lingering_exchange(env *e, const cm_http_limits *lim, const char *first, size_t bytes,
                              uint64_t *stop_ms)
{
    cm_err err;
    memset(e, 0, sizeof(*e));
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(cm_http_server_start(&e->loop, "127.0.0.1", 0, lim, handler, e, &e->srv, &err),
                     0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", cm_http_server_port(e->srv), &addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    char *text = malloc(bytes + 1);
    assert_non_null(text);
    size_t len = strlen(first);
    memcpy(text, first, len);
    while (len + 1100 < bytes) {
        char pad[900];
        memset(pad, 'p', sizeof(pad) - 1);
        pad[sizeof(pad) - 1] = '\0';
        len += (size_t)snprintf(text + len, bytes + 1 - len,
                                "GET /b HTTP/1.1\r\nHost: t\r\nX-Pad: %s\r\n\r\n", pad);
    }
    /* the kernel's buffers take it all: nobody reads yet */
    assert_int_equal(send(fd, text, len, 0), (ssize_t)len);
    free(text);
    uint64_t t0 = uv_now(&e->loop);
    if (strncmp(first, "GET /stop", 9) != 0) { /* the connection closes on its own: stop after */
        bool seen = false;
        while (!(seen && cm_http_server_connections(e->srv) == 0) && uv_run(&e->loop, UV_RUN_ONCE))
            seen = seen || cm_http_server_connections(e->srv) > 0;
    } else
        while (!e->stopped && uv_run(&e->loop, UV_RUN_ONCE))
            ;
    *stop_ms = uv_now(&e->loop) - t0;
    cm_http_server_stop(e->srv, on_stopped, e);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_true(e->stopped);
    cm_http_server_destroy(&e->srv);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    int rc = 0;
    for (;;) {
        ssize_t n = recv(fd, e->got + e->got_len, sizeof(e->got) - 1 - e->got_len, 0);
        if (n <= 0) {
            rc = n < 0 ? errno : 0;
            break;
        }
        e->got_len += (size_t)n;
        e->got[e->got_len] = '\0';
    }
    close(fd);
    return rc;
}

static int count_of(const char *text, const char *what)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, what)) != NULL; p += strlen(what))
        n++;
    return n;
}

/* The server closes a connection with unread input (a stop, a 413) without
** a reset: it sends its FIN, drops what still comes until the client
** closes or a bound passes, then closes. The client, reading only then,
** gets every answer and a clean end of stream, and the bound holds the
** stop no longer than the server's timeout. */
static void test_a_closing_connection_lingers_so_answers_survive(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    lim.max_pipeline = 1;
    lim.timeout_ms = 300; /* the client never closes: the bound ends the linger */
    uint64_t ms;
    /* 16 KiB read at a time: 14 or so requests are read behind /stop, 48 KiB not */
    assert_int_equal(
        lingering_exchange(e, &lim, "GET /stop HTTP/1.1\r\nHost: t\r\n\r\n", 64 * 1024, &ms), 0);
    assert_int_equal(e->handled, 1);
    assert_non_null(strstr(e->got, "stopping"));
    int refused = count_of(e->got, "HTTP/1.1 503 ");
    assert_true(refused >= 10);
    assert_int_equal(count_of(e->got, "\"unavailable\""), refused);
    assert_int_equal(count_of(e->got, "Connection: close"), 1);
    assert_true(ms < 300 + 200);
    /* a body too large: answered 413, the rest of what was sent dropped */
    lim.max_body_bytes = 10;
    assert_int_equal(lingering_exchange(e, &lim,
                                        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n",
                                        64 * 1024, &ms),
                     0);
    assert_int_equal(e->handled, 0);
    assert_int_equal(count_of(e->got, "HTTP/1.1 413 "), 1);
    assert_int_equal(count_of(e->got, "HTTP/1.1 "), 1);
    assert_true(ms < 300 + 200);
    free(e);
}

/* A client reading what comes until the end, counting the 'z's. */
typedef struct counter {
    uv_tcp_t tcp;
    char buf[65536];
    size_t zs;
    bool eof;
} counter;

static void on_count_alloc(uv_handle_t *h, size_t n, uv_buf_t *b)
{
    counter *k = h->data;
    *b = uv_buf_init(k->buf, sizeof(k->buf));
}

static void on_count_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    counter *k = s->data;
    for (ssize_t i = 0; i < n; i++)
        k->zs += b->base[i] == 'z';
    if (n < 0) {
        k->eof = true;
        uv_close((uv_handle_t *)s, NULL);
    }
}

/* A client that sends more requests than one write answers, the last one
** asking for an answer larger than the socket takes at once, and closes its
** side: the server reads the requests and the end together, so the last
** answer is written after the others while the connection closes. Every
** byte of it arrives before the end of the stream. */
static void test_a_half_closed_client_gets_its_last_large_answer_whole(void **state)
{
    env *e = calloc(1, sizeof(*e));
    counter *k = calloc(1, sizeof(*k));
    cm_http_limits lim;
    cm_err err;
    cm_http_limits_default(&lim);
    lim.max_pipeline = 128; /* all taken up at once: answered together */
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(
        cm_http_server_start(&e->loop, "127.0.0.1", 0, &lim, handler, e, &e->srv, &err), 0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", cm_http_server_port(e->srv), &addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    char text[8192];
    size_t len = 0;
    for (int i = 0; i < 70; i++) /* more than one write's 64 answers */
        len +=
            (size_t)snprintf(text + len, sizeof(text) - len, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
    len +=
        (size_t)snprintf(text + len, sizeof(text) - len, "GET /huge HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(len < sizeof(text));
    assert_int_equal(send(fd, text, len, 0), (ssize_t)len);
    assert_int_equal(shutdown(fd, SHUT_WR), 0); /* both wait in the kernel for the server */
    assert_int_equal(uv_tcp_init(&e->loop, &k->tcp), 0);
    k->tcp.data = k;
    assert_int_equal(uv_tcp_open(&k->tcp, fd), 0);
    assert_int_equal(uv_read_start((uv_stream_t *)&k->tcp, on_count_alloc, on_count_read), 0);
    while (!k->eof && uv_run(&e->loop, UV_RUN_ONCE))
        ;
    assert_true(k->eof);
    assert_int_equal(e->handled, 71);
    assert_int_equal(k->zs, HUGE_ANSWER);
    cm_http_server_stop(e->srv, on_stopped, e);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_true(e->stopped);
    cm_http_server_destroy(&e->srv);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    free(k);
    free(e);
}

/* An answer's buffer holds a patient's record: the block it leaves when a
** reused request's next answer needs more room, and the blocks freed when
** the server goes, hold nothing of it. */
static void test_an_answer_leaves_no_record_in_freed_memory(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    e->send2 = "GET /large HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    e->send2_after = RECORD_MARK;
    freescan_start(RECORD_MARK);
    exchange(e, &lim, "GET /record HTTP/1.1\r\nHost: t\r\n\r\n");
    long frees = freescan_frees, dirty = freescan_dirty;
    freescan_start(NULL);
    assert_int_equal(e->handled, 2);
    assert_non_null(strstr(e->got, RECORD_MARK)); /* the record went out, */
    assert_non_null(strstr(e->got, "Content-Length: 3000"));
    assert_true(frees > 0);     /* its request's buffers were freed (grown, then destroyed), */
    assert_int_equal(dirty, 0); /* none holding it */
    free(e);
}

/* A request read after an earlier one was answered (its memory reused)
** carries only its own method, query, headers and body; and it was parsed
** in a later pass. */
static void test_a_later_request_carries_nothing_of_an_earlier_one(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    e->send2 = "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"
               "GET /echo?b=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    e->send2_after = "[POST";
    exchange(e, &lim,
             "POST /echo?a=1 HTTP/1.1\r\nHost: t\r\nX-Tag: first\r\n"
             "Content-Length: 5\r\n\r\nhello");
    assert_int_equal(e->handled, 3);
    const char *a = strstr(e->got, "[POST ?a=1 tag=first body=5:hello]"),
               *b = strstr(e->got, "[GET ? tag=- body=0:]"),
               *c = strstr(e->got, "[GET ?b=2 tag=- body=0:]");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_true(a < b && b < c);
    assert_true(e->passes[1] > e->passes[0]);
    assert_true(e->passes[2] >= e->passes[1]);
    free(e);
}

/* A connection's memo starts all zero and keeps what the handler wrote in
** it for the connection's later requests, pipelined or read later. */
static void test_a_connection_memo_lasts_across_its_requests(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    e->send2 = "GET /memo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    e->send2_after = "[memo 1]";
    exchange(e, &lim,
             "GET /memo HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /memo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(e->handled, 3);
    const char *a = strstr(e->got, "[memo 0]"), *b = strstr(e->got, "[memo 1]"),
               *c = strstr(e->got, "[memo 2]");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_true(a < b && b < c);
    free(e);
}

/* A header is found by its whole name in any case, not by a name of the
** same length or one that begins with it. */
static void test_a_header_is_found_by_its_whole_name(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    exchange(e, &lim,
             "GET /echo HTTP/1.1\r\nHost: t\r\nX-Tax: no\r\nX-Tagged: no\r\nX-Ta: no\r\n"
             "x-tAG: yes\r\nConnection: close\r\n\r\n");
    assert_int_equal(e->handled, 1);
    assert_non_null(strstr(e->got, "[GET ? tag=yes body=0:]"));
    free(e);
}

/* A header name that arrives in two reads is found by its whole name. */
static void test_a_header_split_across_reads_is_found(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    e->send2 = "ag: split\r\nConnection: close\r\n\r\n";
    e->send2_after = "first";
    exchange(e, &lim, "GET /first HTTP/1.1\r\nHost: t\r\n\r\nGET /echo HTTP/1.1\r\nHost: t\r\nX-T");
    assert_int_equal(e->handled, 2);
    assert_non_null(strstr(e->got, "[GET ? tag=split body=0:]"));
    free(e);
}

static void test_limits_are_answered_with_their_status(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    lim.max_body_bytes = 10;
    lim.max_header_bytes = 100;
    exchange(e, &lim, "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    assert_int_equal(e->handled, 0);
    assert_non_null(strstr(e->got, "HTTP/1.1 413 "));
    assert_non_null(strstr(e->got, "\"code\":\"payload_too_large\""));
    exchange(e, &lim,
             "GET /x HTTP/1.1\r\nHost: t\r\nX-Long: "
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaa\r\n\r\n");
    assert_int_equal(e->handled, 0);
    assert_non_null(strstr(e->got, "HTTP/1.1 431 "));
    /* an answered request before the bad one keeps its answer, in order */
    exchange(e, &lim, "GET /first HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\r\n\r\n");
    assert_int_equal(e->handled, 1);
    const char *first = strstr(e->got, "first"), *bad = strstr(e->got, "HTTP/1.1 400 ");
    assert_non_null(first);
    assert_non_null(bad);
    assert_true(first < bad);
    free(e);
}

static void test_chunked_body_counts_against_the_limit(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    lim.max_body_bytes = 8;
    exchange(e, &lim,
             "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n");
    assert_int_equal(e->handled, 0);
    assert_non_null(strstr(e->got, "HTTP/1.1 413 "));
    free(e);
}

static void test_timeout_answers_a_half_sent_request(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    lim.timeout_ms = 100;
    exchange(e, &lim, "GET /x HTTP/1.1\r\nHost: t\r\n");
    assert_int_equal(e->handled, 0);
    assert_non_null(strstr(e->got, "HTTP/1.1 408 "));
    free(e);
}

/* The timeout of a request runs from its own first byte: a half-sent request
** that begins after the connection idled a while still gets all of it. */
static void test_timeout_runs_from_the_request_that_began_last(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    lim.timeout_ms = 150;
    e->send2 = "GET /half HTTP/1.1\r\nHost: t\r\n";
    e->send2_after = "first";
    e->send2_delay_ms = 100;
    exchange(e, &lim, "GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(e->handled, 1);
    assert_non_null(strstr(e->got, "HTTP/1.1 408 "));
    assert_true(e->t_eof - e->t_start >= 250);
    free(e);
}

/* While the handler holds every request of a connection no timeout runs:
** an answer slower than the timeout still arrives. */
static void test_no_timeout_while_the_handler_holds_the_requests(void **state)
{
    env *e = calloc(1, sizeof(*e));
    cm_http_limits lim;
    cm_http_limits_default(&lim);
    lim.timeout_ms = 5; /* /later answers after 20 ms */
    exchange(e, &lim, "GET /later HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(e->handled, 1);
    assert_non_null(strstr(e->got, "HTTP/1.1 200 OK"));
    assert_non_null(strstr(e->got, "\r\n\r\nlater"));
    free(e);
}

static void test_bad_address_is_refused(void **state)
{
    uv_loop_t loop;
    cm_http_server *srv = NULL;
    cm_http_limits lim;
    cm_err err;
    cm_http_limits_default(&lim);
    uv_loop_init(&loop);
    assert_int_equal(cm_http_server_start(&loop, "localhost", 0, &lim, handler, NULL, &srv, &err),
                     CM_EINVAL);
    assert_null(srv);
    assert_non_null(strstr(err.msg, "localhost"));
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_decodes_names_and_values),
        cmocka_unit_test(test_query_refuses_what_it_cannot_read),
        cmocka_unit_test(test_unescape_bounds),
        cmocka_unit_test(test_split_path_segments),
        cmocka_unit_test(test_pipelined_answers_keep_request_order),
        cmocka_unit_test(test_answers_wait_for_the_commit_they_may_show),
        cmocka_unit_test(test_a_lost_sync_answers_every_held_request_in_order),
        cmocka_unit_test(test_a_later_request_carries_nothing_of_an_earlier_one),
        cmocka_unit_test(test_an_answer_leaves_no_record_in_freed_memory),
        cmocka_unit_test(test_a_stop_answers_requests_read_but_not_taken_up),
        cmocka_unit_test(test_a_closing_connection_lingers_so_answers_survive),
        cmocka_unit_test(test_a_half_closed_client_gets_its_last_large_answer_whole),
        cmocka_unit_test(test_a_header_is_found_by_its_whole_name),
        cmocka_unit_test(test_a_header_split_across_reads_is_found),
        cmocka_unit_test(test_a_connection_memo_lasts_across_its_requests),
        cmocka_unit_test(test_limits_are_answered_with_their_status),
        cmocka_unit_test(test_chunked_body_counts_against_the_limit),
        cmocka_unit_test(test_timeout_answers_a_half_sent_request),
        cmocka_unit_test(test_timeout_runs_from_the_request_that_began_last),
        cmocka_unit_test(test_no_timeout_while_the_handler_holds_the_requests),
        cmocka_unit_test(test_bad_address_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
