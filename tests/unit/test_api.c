/*
** test_api.c -- the HTTP API on a real loop over a fresh node: /metrics asks
** federation for each peer's parked delivers once per peer, and a patient's
** record written and read through the API leaves nothing of itself in the
** memory the API frees (its request body, its answer). Linked with
** -Wl,--wrap=free (freescan.h; cJSON's blocks are routed through it too)
** and with federation's per-peer gauges wrapped: the API is given no
** federation of its own, only the answers of those wraps.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "api.h"
#include "config.h"
#include "engine.h"
#include "fed.h"
#include "freescan.h"
#include "lhost.h"
#include "lworkflow.h"
#include "node.h"
#include "sandbox.h"
#include "token.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- federation's gauges, as the API sees them ---- */

static int parked_calls[2]; /* cm_fed_peer_parked calls, by peer */

int __wrap_cm_fed_peer_parked(const cm_fed *fed, const char *peer, long *delivers, size_t *bytes);
int __wrap_cm_fed_peer_up(const cm_fed *fed, const char *peer);
void __wrap_cm_fed_apply_stats_get(const cm_fed *fed, cm_fed_apply_stats *st);

int __wrap_cm_fed_peer_parked(const cm_fed *fed, const char *peer, long *delivers, size_t *bytes)
{
    int i = strcmp(peer, "node-b") == 0 ? 0 : 1;
    parked_calls[i]++;
    *delivers = i == 0 ? 7 : 0;
    *bytes = i == 0 ? 4096 : 0;
    return 0;
}

int __wrap_cm_fed_peer_up(const cm_fed *fed, const char *peer)
{
    return 1;
}

void __wrap_cm_fed_apply_stats_get(const cm_fed *fed, cm_fed_apply_stats *st)
{
    memset(st, 0, sizeof(*st));
}

/* cJSON's blocks pass through the scanner as well. */
static void *json_malloc(size_t n)
{
    return malloc(n);
}

static void json_free(void *p)
{
    free(p); /* __wrap_free */
}

/* ---- a node with the API ---- */

typedef struct world {
    cm_test_node *n;
    cm_sandbox *sb;
    cm_lua_host host;
    cm_lua_runtime *rt;
    cm_engine *engine;
    cm_config cfg;
    uv_loop_t loop;
    cm_api *api;
    char token[CM_TOKEN_TEXT_LEN + 1];
    bool stopped;
} world;

static char fake_fed; /* the API only hands it to the wraps above */

static world *world_new(void)
{
    world *w = calloc(1, sizeof(*w));
    cm_err err;
    cm_token_info info;
    assert_non_null(w);
    assert_non_null(w->n = cm_test_node_new());
    cm_sandbox_limits limits = {0, 0};
    assert_non_null(w->sb = cm_sandbox_new(&limits, &err));
    w->host =
        (cm_lua_host){w->n->store, w->n->model, w->n->clock, "node-a", NULL, NULL, NULL, NULL};
    assert_int_equal(cm_lua_host_set(cm_sandbox_state(w->sb), &w->host, &err), 0);
    cm_sandbox_preload(w->sb, "caremesh", cm_lua_open_caremesh);
    assert_non_null(w->rt = cm_lua_runtime_new(w->sb, &err));
    cm_engine_opts eo;
    memset(&eo, 0, sizeof(eo));
    eo.store = w->n->store;
    eo.model = w->n->model;
    eo.clock = w->n->clock;
    eo.runtime = cm_lua_runtime_seam(w->rt);
    eo.node_id = "node-a";
    assert_non_null(w->engine = cm_engine_new(&eo, &err));
    assert_int_equal(uv_loop_init(&w->loop), 0);
    assert_int_equal(cm_engine_attach(w->engine, &w->loop, &err), 0);
    assert_int_equal(
        cm_token_create(w->n->store, w->n->clock, CM_SCOPE_ADMIN, "t", w->token, &info, &err), 0);
    cm_config_defaults(&w->cfg);
    snprintf(w->cfg.api.host, sizeof(w->cfg.api.host), "127.0.0.1");
    w->cfg.api.port = 0;
    w->cfg.fed_npeers = 2;
    snprintf(w->cfg.fed_peers[0].id, sizeof(w->cfg.fed_peers[0].id), "node-b");
    snprintf(w->cfg.fed_peers[1].id, sizeof(w->cfg.fed_peers[1].id), "node-c");
    cm_api_opts ao = {&w->loop,    w->n->store, w->n->model,
                      w->n->clock, w->engine,   (cm_fed *)(void *)&fake_fed,
                      &w->cfg,     "node-a"};
    if (cm_api_start(&ao, &w->api, &err) != 0)
        fail_msg("api: %s", err.msg);
    cm_api_set_ready(w->api, true);
    return w;
}

static void on_api_stopped(void *ud)
{
    ((world *)ud)->stopped = true;
}

static void world_free(world *w)
{
    cm_api_stop(w->api, on_api_stopped, w);
    while (!w->stopped && uv_run(&w->loop, UV_RUN_ONCE))
        ;
    assert_true(w->stopped);
    cm_engine_destroy(&w->engine);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    cm_api_destroy(&w->api);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    cm_lua_runtime_destroy(&w->rt);
    cm_sandbox_destroy(&w->sb);
    cm_config_free(&w->cfg);
    cm_test_node_free(w->n);
    free(w);
}

/* ---- a client on the same loop ---- */

typedef struct client {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    char send[4096];
    char got[65536];
    size_t got_len;
    bool eof;
} client;

static void cl_alloc(uv_handle_t *h, size_t n, uv_buf_t *b)
{
    client *c = h->data;
    *b = uv_buf_init(c->got + c->got_len, (unsigned)(sizeof(c->got) - c->got_len - 1));
}

static void cl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client *c = s->data;
    if (n > 0) {
        c->got_len += (size_t)n;
        c->got[c->got_len] = '\0';
    } else if (n < 0) {
        c->eof = true;
        uv_close((uv_handle_t *)s, NULL);
    }
}

static void cl_written(uv_write_t *w, int status)
{
    assert_int_equal(status, 0);
}

static void cl_connected(uv_connect_t *req, int status)
{
    client *c = req->data;
    assert_int_equal(status, 0);
    uv_buf_t b = uv_buf_init(c->send, (unsigned)strlen(c->send));
    uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, cl_written);
    uv_read_start((uv_stream_t *)&c->tcp, cl_alloc, cl_read);
}

/* Send text (its last request asks to close) and run the loop until the
** API closes the connection; what came back, for the caller to free. */
static client *exchange(world *w, const char *text)
{
    client *c = calloc(1, sizeof(*c));
    struct sockaddr_in addr;
    assert_non_null(c);
    assert_true(strlen(text) < sizeof(c->send));
    memcpy(c->send, text, strlen(text) + 1);
    uv_ip4_addr("127.0.0.1", cm_api_port(w->api), &addr);
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c->connect.data = c;
    uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&addr, cl_connected);
    while (!c->eof && uv_run(&w->loop, UV_RUN_ONCE))
        ;
    assert_true(c->eof);
    return c;
}

/* /metrics shows each peer's parked delivers and bytes from one question
** per peer. */
static void test_metrics_ask_each_peer_once_for_what_is_parked(void **state)
{
    world *w = world_new();
    char req[512];
    snprintf(req, sizeof(req),
             "GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
             "Connection: close\r\n\r\n",
             w->token);
    parked_calls[0] = parked_calls[1] = 0;
    client *c = exchange(w, req);
    if (!strstr(c->got, "HTTP/1.1 200 "))
        fail_msg("metrics: %s", c->got);
    assert_non_null(strstr(c->got, "caremesh_peer_parked_messages{peer=\"node-b\"} 7\n"));
    assert_non_null(strstr(c->got, "caremesh_peer_parked_bytes{peer=\"node-b\"} 4096\n"));
    assert_non_null(strstr(c->got, "caremesh_peer_parked_messages{peer=\"node-c\"} 0\n"));
    assert_non_null(strstr(c->got, "caremesh_peer_parked_bytes{peer=\"node-c\"} 0\n"));
    assert_int_equal(parked_calls[0], 1);
    assert_int_equal(parked_calls[1], 1);
    free(c);
    world_free(w);
}

#define RECORD_MARK "Quintanilla-Ximena"

/* A patient's record created through the API (the request's body, the
** answer) and read back (the answer): no block the API or the HTTP server
** frees holds it. */
static void test_a_record_leaves_nothing_in_memory_the_api_frees(void **state)
{
    world *w = world_new();
    static const char body[] =
        "{\"id\":\"pat-9\",\"name\":{\"family\":\"" RECORD_MARK
        "\",\"given\":[\"Ana\"]},\"birthDate\":\"1958-04-12\",\"gender\":\"female\"}";
    char req[2048];
    snprintf(req, sizeof(req),
             "POST /v1/patients HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s"
             "GET /v1/patients/pat-9 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
             "Connection: close\r\n\r\n",
             w->token, sizeof(body) - 1, body, w->token);
    cJSON_Hooks hooks = {json_malloc, json_free};
    cJSON_InitHooks(&hooks);
    freescan_start(RECORD_MARK);
    client *c = exchange(w, req);
    long frees = freescan_frees, dirty = freescan_dirty;
    freescan_start(NULL);
    cJSON_InitHooks(NULL);
    if (!strstr(c->got, "HTTP/1.1 201 ") || !strstr(c->got, "HTTP/1.1 200 "))
        fail_msg("answers: %s", c->got);
    const char *second = strstr(c->got, "HTTP/1.1 200 ");
    assert_non_null(strstr(second, RECORD_MARK)); /* the record was read back */
    assert_true(frees > 0);
    if (dirty != 0)
        fail_msg("%ld of %ld freed blocks held the record", dirty, frees);
    free(c);
    world_free(w);
}

/* The codes of the answers in got, in order ("404 no_route", "200 -" for
** an answer without an error), joined by spaces into out. */
static void answer_codes(const char *got, char *out, size_t outsz)
{
    size_t n = 0;
    out[0] = '\0';
    for (const char *p = strstr(got, "HTTP/1.1 "); p; p = strstr(p + 1, "HTTP/1.1 ")) {
        const char *body = strstr(p, "\r\n\r\n"), *next = strstr(p + 1, "HTTP/1.1 ");
        const char *code = body ? strstr(body, "\"code\":\"") : NULL;
        int len = 1;
        if (code && (!next || code < next)) {
            code += 8;
            len = (int)strcspn(code, "\"");
        } else {
            code = "-";
        }
        n += (size_t)snprintf(out + n, outsz - n, "%s%.3s %.*s", n ? " " : "", p + 9, len, code);
        assert_true(n < outsz);
    }
}

/* Requests of one connection whose paths have as many segments, each
** after a request of another route: each is routed as on its own (the
** route found for the request before is tried first). */
static void test_a_route_is_found_whatever_the_route_before(void **state)
{
    static const char *const lines[] = {
        "GET /v1/patients/p1",
        "GET /v1/patients/p1",
        "PATCH /v1/patients/p1",
        "DELETE /v1/patients/p1",
        "GET /v1/tasks/t1",
        "GET /v1/patients/p1",
        "GET /v1/instances/i1/history",
        "GET /v1/instances/i1/events",
        "POST /v1/instances/i1/pause",
        "GET /v1/instances/i1/history",
        "GET /v1/nothing/p1",
        "GET /v1/patients",
    };
    static const char want[] =
        "404 not_found 404 not_found 400 missing_body 405 method_not_allowed "
        "404 not_found 404 not_found 404 not_found 405 method_not_allowed "
        "404 not_found 404 not_found 404 no_route 200 -";
    world *w = world_new();
    char req[4000], codes[512];
    size_t n = 0, count = sizeof(lines) / sizeof(lines[0]);
    for (size_t i = 0; i < count; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n,
                              "%s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n%s\r\n",
                              lines[i], w->token, i + 1 == count ? "Connection: close\r\n" : "");
    assert_true(n < sizeof(req));
    client *c = exchange(w, req);
    answer_codes(c->got, codes, sizeof(codes));
    if (strcmp(codes, want) != 0)
        fail_msg("answers: %s\nwanted:  %s\n%s", codes, want, c->got);
    assert_non_null(strstr(c->got, "task \\\"t1\\\" not found"));    /* by the task route */
    assert_non_null(strstr(c->got, "patient \\\"p1\\\" not found")); /* by the patient route */
    free(c);
    world_free(w);
}

/* Requests of one connection to a route found before, whose path's text
** is matched as it stands when it can be (route_match_text): each answered
** as the split and the scan answer it, with its {} segment as the split
** decodes it; escapes, a trailing slash, an empty or long segment, other
** text around the segment and another method are left to the split. */
static void test_a_path_matched_by_its_text_is_answered_as_split(void **state)
{
    static const char *const lines[] = {
        "GET /v1/patients/p1",      "GET /v1/patients/p2",        "GET /v1/patients/p%33",
        "GET /v1/patients/p4/",     "GET /v1/patients/",          "GET /v1/patients/p5",
        "GET /v1/patientsx/p6",     "GET /v1/patients/p7/x",      "GET /v1/patients//p8",
        "GET /v1/patients/p%C3%A9", "POST /v1/patients/p9",       "GET /v1/patients/p10",
        "GET /v1/patients/@LONG@",  "GET /v1/patients/@LONGEST@",
    };
    static const char want[] =
        "404 not_found 404 not_found 404 not_found 404 not_found 200 - 404 not_found "
        "404 no_route 404 no_route 404 no_route 404 not_found 405 method_not_allowed "
        "404 not_found 404 not_found 404 no_route";
    static const char *const found[] = {"p1", "p2", "p3", "p4", "p5", "p10"};
    world *w = world_new();
    char req[8000], codes[512], longest[CM_HTTP_SEGMENT_MAX + 1], seen[64];
    size_t n = 0, count = sizeof(lines) / sizeof(lines[0]);
    /* a segment of the most bytes a segment takes (not a valid id: 404
    ** not_found), and one byte more (refused by the split: 404 no_route) */
    memset(longest, 'q', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    for (size_t i = 0; i < count; i++) {
        const char *line = lines[i], *at = strchr(line, '@');
        int seg =
            at ? (strstr(line, "@LONGEST@") ? CM_HTTP_SEGMENT_MAX : CM_HTTP_SEGMENT_MAX - 1) : 0;
        n += (size_t)snprintf(req + n, sizeof(req) - n,
                              "%.*s%.*s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n%s\r\n",
                              at ? (int)(at - line) : (int)strlen(line), line, seg, longest,
                              w->token, i + 1 == count ? "Connection: close\r\n" : "");
    }
    assert_true(n < sizeof(req));
    client *c = exchange(w, req);
    answer_codes(c->got, codes, sizeof(codes));
    if (strcmp(codes, want) != 0)
        fail_msg("answers: %s\nwanted:  %s\n%s", codes, want, c->got);
    for (size_t i = 0; i < sizeof(found) / sizeof(found[0]); i++) {
        snprintf(seen, sizeof(seen), "patient \\\"%s\\\" not found", found[i]);
        if (!strstr(c->got, seen))
            fail_msg("no answer says %s:\n%s", seen, c->got);
    }
    assert_non_null(strstr(c->got, "(not a valid id)")); /* p\u00e9, decoded */
    free(c);
    world_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_ask_each_peer_once_for_what_is_parked),
        cmocka_unit_test(test_a_record_leaves_nothing_in_memory_the_api_frees),
        cmocka_unit_test(test_a_route_is_found_whatever_the_route_before),
        cmocka_unit_test(test_a_path_matched_by_its_text_is_answered_as_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
