/*
** test_httpc.c -- the CLI's HTTP client against a scripted server thread on
** 127.0.0.1: the request it sends, answers with a length, chunked or up to
** close, a kept-alive connection reused, a stale one reopened, malformed and
** cut answers, a server that never answers (the read deadline), and a port
** nobody listens on (unreachable, nothing sent).
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "httpc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct step {
    const char *answer; /* NULL: never answer, wait for the client to go */
    bool close_after;   /* close the connection after answering */
} step;

typedef struct server {
    int lfd, port, accepted;
    const step *steps;
    int nsteps;
    char request[8192]; /* the last request read */
    pthread_t th;
} server;

/* Read one request: the head, then Content-Length bytes. false on EOF. */
static bool read_request(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    char *end = NULL;
    while (!(end = strstr(buf, "\r\n\r\n"))) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
    }
    const char *cl = strstr(buf, "Content-Length: ");
    size_t want = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 16, NULL, 10) : 0);
    while (len < want) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
    }
    return true;
}

static void *serve(void *arg)
{
    server *s = arg;
    int fd = -1;
    for (int i = 0; i < s->nsteps; i++) {
        if (fd < 0) {
            fd = accept(s->lfd, NULL, NULL);
            s->accepted++;
        }
        memset(s->request, 0, sizeof(s->request));
        if (!read_request(fd, s->request, sizeof(s->request))) {
            close(fd);
            fd = -1;
            i--; /* the client went away before asking: the step waits for the next connection */
            continue;
        }
        if (!s->steps[i].answer) {
            char b[64];
            while (read(fd, b, sizeof(b)) > 0) /* until the client gives up */
                ;
            close(fd);
            fd = -1;
            continue;
        }
        ssize_t n = write(fd, s->steps[i].answer, strlen(s->steps[i].answer));
        (void)n;
        if (s->steps[i].close_after) {
            close(fd);
            fd = -1;
        }
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

static void server_start(server *s, const step *steps, int nsteps)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    memset(s, 0, sizeof(*s));
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->lfd, 8), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    s->steps = steps;
    s->nsteps = nsteps;
    assert_int_equal(pthread_create(&s->th, NULL, serve, s), 0);
}

static void server_join(server *s)
{
    pthread_join(s->th, NULL);
    close(s->lfd);
}

#define OK_JSON(body)                                                                              \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " #body "\r\n\r\n"

static void test_request_and_length_answer(void **state)
{
    static const step steps[] = {
        {"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
         "{\"id\":\"x\"}\n",
         false},
    };
    server s;
    cm_httpc_resp r;
    cm_httpc_fail fail;
    cm_err err = {0};
    server_start(&s, steps, 1);
    cm_httpc *c = cm_httpc_new("127.0.0.1", s.port, 2000, 2000);
    assert_int_equal(cm_httpc_request(c, "POST", "/v1/things?a=1", "Authorization: Bearer T\r\n",
                                      "{\"a\":1}", 7, &r, &fail, &err),
                     0);
    assert_int_equal(fail, CM_HTTPC_OK);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "{\"id\":\"x\"}\n");
    assert_int_equal(r.len, 11);
    assert_string_equal(r.content_type, "application/json");
    cm_httpc_destroy(&c);
    server_join(&s);
    assert_non_null(strstr(s.request, "POST /v1/things?a=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "\r\nAuthorization: Bearer T\r\n"));
    assert_non_null(strstr(s.request, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(s.request, "\r\nContent-Length: 7\r\n\r\n{\"a\":1}"));
    assert_null(c);
    cm_httpc_resp_free(&r);
}

static void test_chunked_and_close_answers(void **state)
{
    static const step steps[] = {
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: "
         "chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
         false},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", true},
    };
    server s;
    cm_httpc_resp r;
    cm_httpc_fail fail;
    cm_err err = {0};
    server_start(&s, steps, 2);
    cm_httpc *c = cm_httpc_new("127.0.0.1", s.port, 2000, 2000);
    assert_int_equal(cm_httpc_request(c, "GET", "/a", NULL, NULL, 0, &r, &fail, &err), 0);
    assert_string_equal(r.body, "{\"a\":1}");
    cm_httpc_resp_free(&r);
    assert_int_equal(cm_httpc_request(c, "GET", "/b", NULL, NULL, 0, &r, &fail, &err), 0);
    assert_string_equal(r.body, "until the end");
    assert_int_equal(r.status, 200);
    cm_httpc_resp_free(&r);
    cm_httpc_destroy(&c);
    server_join(&s);
    assert_int_equal(s.accepted, 1); /* the chunked answer kept the connection */
}

static void test_stale_connection_reopened(void **state)
{
    /* the server says keep-alive, then closes: the next request reconnects */
    static const step steps[] = {
        {OK_JSON(2) "{}", true},
        {OK_JSON(4) "[42]", false},
    };
    server s;
    cm_httpc_resp r;
    cm_httpc_fail fail;
    cm_err err = {0};
    server_start(&s, steps, 2);
    cm_httpc *c = cm_httpc_new("127.0.0.1", s.port, 2000, 2000);
    assert_int_equal(cm_httpc_request(c, "GET", "/a", NULL, NULL, 0, &r, &fail, &err), 0);
    cm_httpc_resp_free(&r);
    /* whether the close arrived before the request went out or after, the
    ** request is sent again on a new connection */
    assert_int_equal(cm_httpc_request(c, "POST", "/b", NULL, NULL, 0, &r, &fail, &err), 0);
    assert_string_equal(r.body, "[42]");
    cm_httpc_resp_free(&r);
    cm_httpc_destroy(&c);
    server_join(&s);
    assert_int_equal(s.accepted, 2);
    assert_non_null(strstr(s.request, "POST /b HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "\r\nContent-Length: 0\r\n")); /* a POST without a body */
}

static void test_malformed_and_cut_answers(void **state)
{
    static const step steps[] = {
        {"SPDY/9 what\r\n\r\n", true},
        {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", true},
    };
    server s;
    cm_httpc_resp r;
    cm_httpc_fail fail;
    cm_err err = {0};
    server_start(&s, steps, 2);
    cm_httpc *c = cm_httpc_new("127.0.0.1", s.port, 2000, 2000);
    assert_int_equal(cm_httpc_request(c, "GET", "/a", NULL, NULL, 0, &r, &fail, &err), CM_EIO);
    assert_int_equal(fail, CM_HTTPC_BROKEN);
    assert_non_null(strstr(err.msg, "malformed HTTP answer"));
    assert_null(r.body);
    assert_int_equal(cm_httpc_request(c, "GET", "/b", NULL, NULL, 0, &r, &fail, &err), CM_EIO);
    assert_int_equal(fail, CM_HTTPC_BROKEN);
    assert_non_null(strstr(err.msg, "closed before the answer was whole"));
    assert_null(r.body);
    cm_httpc_destroy(&c);
    server_join(&s);
}

static void test_read_deadline(void **state)
{
    static const step steps[] = {{NULL, true}};
    server s;
    cm_httpc_resp r;
    cm_httpc_fail fail;
    cm_err err = {0};
    struct timespec t0, t1;
    server_start(&s, steps, 1);
    cm_httpc *c = cm_httpc_new("127.0.0.1", s.port, 2000, 200);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(cm_httpc_request(c, "GET", "/slow", NULL, NULL, 0, &r, &fail, &err), CM_EIO);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_int_equal(fail, CM_HTTPC_BROKEN);
    assert_non_null(strstr(err.msg, "no answer within 200 ms"));
    assert_true(ms >= 150 && ms < 5000);
    cm_httpc_destroy(&c); /* closes: the server's read ends */
    server_join(&s);
}

static void test_unreachable(void **state)
{
    server s;
    cm_httpc_resp r;
    cm_httpc_fail fail;
    cm_err err = {0};
    server_start(&s, NULL, 0); /* a port that was just free... */
    int port = s.port;
    server_join(&s); /* ...and is closed again */
    cm_httpc *c = cm_httpc_new("127.0.0.1", port, 2000, 2000);
    assert_int_equal(cm_httpc_request(c, "GET", "/", NULL, NULL, 0, &r, &fail, &err), CM_EIO);
    assert_int_equal(fail, CM_HTTPC_UNREACHABLE);
    char want[64];
    snprintf(want, sizeof(want), "cannot connect to 127.0.0.1:%d", port);
    assert_non_null(strstr(err.msg, want));
    assert_string_equal(cm_httpc_address(c), want + strlen("cannot connect to "));
    cm_httpc_destroy(&c);
    c = cm_httpc_new("::1", port, 2000, 2000);
    snprintf(want, sizeof(want), "[::1]:%d", port);
    assert_string_equal(cm_httpc_address(c), want);
    cm_httpc_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_and_length_answer),
        cmocka_unit_test(test_chunked_and_close_answers),
        cmocka_unit_test(test_stale_connection_reopened),
        cmocka_unit_test(test_malformed_and_cut_answers),
        cmocka_unit_test(test_read_deadline),
        cmocka_unit_test(test_unreachable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
