/*
** httpc.c -- a small blocking HTTP/1.1 client (see httpc.h): a non-blocking
** socket driven with poll() against deadlines, answers parsed by http_parser.
*/
#include "httpc.h"

#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct cm_httpc {
    char host[256];
    char port[16];
    char addr[300]; /* host:port for messages */
    int fd;         /* -1 when not connected */
    bool reused;    /* fd already carried an exchange */
    int connect_ms, io_ms;
};

cm_httpc *cm_httpc_new(const char *host, int port, int connect_ms, int io_ms)
{
    cm_httpc *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    snprintf(c->host, sizeof(c->host), "%s", host);
    snprintf(c->port, sizeof(c->port), "%d", port);
    snprintf(c->addr, sizeof(c->addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    c->fd = -1;
    c->connect_ms = connect_ms;
    c->io_ms = io_ms;
    return c;
}

static void disconnect(cm_httpc *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->reused = false;
}

void cm_httpc_destroy(cm_httpc **c_p)
{
    if (!*c_p)
        return;
    disconnect(*c_p);
    free(*c_p);
    *c_p = NULL;
}

const char *cm_httpc_address(const cm_httpc *c)
{
    return c->addr;
}

void cm_httpc_resp_free(cm_httpc_resp *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* ---- time and waiting ---------------------------------------------------- */

/* Wait until fd is ready for events or the deadline passes: 0, or -1 on
** timeout (errno ETIMEDOUT) or a poll error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - cm_mono_ns() / 1000000;
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

/* ---- connecting ---------------------------------------------------------- */

static int connect_one(const struct addrinfo *ai, int connect_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol), one = 1, soerr = 0;
    socklen_t len = sizeof(soerr);
    if (fd < 0)
        return -1;
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 || fcntl(fd, F_SETFL, O_NONBLOCK) != 0)
        goto fail;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS)
            goto fail;
        if (wait_fd(fd, POLLOUT, cm_mono_ns() / 1000000 + connect_ms) != 0)
            goto fail;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
            goto fail;
        if (soerr != 0) {
            errno = soerr;
            goto fail;
        }
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

static int open_conn(cm_httpc *c, cm_err *err)
{
    struct addrinfo hints, *res = NULL, *ai;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = getaddrinfo(c->host, c->port, &hints, &res);
    if (g != 0)
        return cm_err_set(err, CM_EIO, "cannot connect to %s: %s", c->addr, gai_strerror(g));
    int saved = ECONNREFUSED;
    for (ai = res; ai; ai = ai->ai_next) {
        if ((c->fd = connect_one(ai, c->connect_ms)) >= 0)
            break;
        saved = errno;
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        if (saved == ETIMEDOUT)
            return cm_err_set(err, CM_EIO, "cannot connect to %s: no answer within %d ms", c->addr,
                              c->connect_ms);
        return cm_err_set(err, CM_EIO, "cannot connect to %s: %s", c->addr, strerror(saved));
    }
    c->reused = false;
    return 0;
}

/* ---- one exchange -------------------------------------------------------- */

typedef struct reader {
    http_parser p;
    cm_httpc_resp *resp;
    size_t cap;
    bool done, too_big, in_ctype;
    int last_was_value;
    char field[32];
    size_t field_len;
} reader;

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    reader *r = p->data;
    if (r->last_was_value || r->field_len == 0) {
        r->field_len = 0;
        r->last_was_value = 0;
    }
    size_t room = sizeof(r->field) - 1 - r->field_len;
    size_t n = len < room ? len : room;
    memcpy(r->field + r->field_len, at, n);
    r->field_len += n;
    r->field[r->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    reader *r = p->data;
    if (!r->last_was_value)
        r->in_ctype = strlen("content-type") == r->field_len &&
                      strncasecmp(r->field, "content-type", r->field_len) == 0;
    r->last_was_value = 1;
    if (r->in_ctype) {
        char *ct = r->resp->content_type;
        size_t have = strlen(ct), room = sizeof(r->resp->content_type) - 1 - have;
        size_t n = len < room ? len : room;
        memcpy(ct + have, at, n);
        ct[have + n] = '\0';
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    reader *r = p->data;
    r->field_len = 0;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    reader *r = p->data;
    cm_httpc_resp *resp = r->resp;
    if (len > CM_HTTPC_MAX_BODY - resp->len) {
        r->too_big = true;
        return 1;
    }
    if (resp->len + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < resp->len + len + 1)
            cap *= 2;
        char *b = realloc(resp->body, cap);
        if (!b) {
            r->too_big = true;
            return 1;
        }
        resp->body = b;
        r->cap = cap;
    }
    memcpy(resp->body + resp->len, at, len);
    resp->len += len;
    resp->body[resp->len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    reader *r = p->data;
    r->done = true;
    r->resp->status = (int)p->status_code;
    http_parser_pause(p, 1); /* one answer per request: nothing after it is ours */
    return 0;
}

/* Send all of buf by the deadline; -1 with errno on failure. */
static int send_all(int fd, const char *buf, size_t len, int64_t deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline) != 0)
                return -1;
        } else if (n < 0 && errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

/* Read and parse until the answer is complete. *got tells whether any byte
** came. 0, or -1 with a message in err. */
static int read_answer(cm_httpc *c, reader *r, int64_t deadline, size_t *got, cm_err *err)
{
    static const http_parser_settings settings = {
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
    };
    char buf[16384];
    while (!r->done) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(c->fd, POLLIN, deadline) != 0) {
                if (errno == ETIMEDOUT)
                    return cm_err_set(err, CM_EIO, "%s: no answer within %d ms", c->addr, c->io_ms);
                return cm_err_set(err, CM_EIO, "%s: %s", c->addr, strerror(errno));
            }
            continue;
        }
        if (n < 0)
            return cm_err_set(err, CM_EIO, "%s: %s", c->addr, strerror(errno));
        *got += (size_t)n;
        size_t used = http_parser_execute(&r->p, &settings, buf, (size_t)n);
        enum http_errno e = HTTP_PARSER_ERRNO(&r->p);
        if (r->done)
            break;
        if (r->too_big)
            return cm_err_set(err, CM_EIO, "%s: the answer is larger than %zu bytes", c->addr,
                              CM_HTTPC_MAX_BODY);
        if (n == 0)
            return cm_err_set(err, CM_EIO, "%s: the connection closed before the answer was whole",
                              c->addr);
        if (e != HPE_OK || used != (size_t)n)
            return cm_err_set(err, CM_EIO, "%s: malformed HTTP answer: %s", c->addr,
                              http_errno_description(e));
    }
    return 0;
}

static char *build_request(const cm_httpc *c, const char *method, const char *target,
                           const char *headers, const char *body, size_t len, size_t *outlen)
{
    bool has_body = body != NULL, post = strcmp(method, "GET") != 0;
    size_t cap = strlen(method) + strlen(target) + strlen(c->addr) +
                 (headers ? strlen(headers) : 0) + 256 + (has_body ? len : 0);
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    int n = snprintf(buf, cap,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: caremesh/%s\r\n"
                     "Accept: application/json\r\n%s",
                     method, target, c->addr, CM_VERSION, headers ? headers : "");
    if (has_body)
        n += snprintf(buf + n, cap - (size_t)n,
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", len);
    else
        n += snprintf(buf + n, cap - (size_t)n, "%s\r\n", post ? "Content-Length: 0\r\n" : "");
    if (has_body)
        memcpy(buf + n, body, len);
    *outlen = (size_t)n + (has_body ? len : 0);
    return buf;
}

int cm_httpc_request(cm_httpc *c, const char *method, const char *target, const char *headers,
                     const char *body, size_t len, cm_httpc_resp *resp, cm_httpc_fail *fail,
                     cm_err *err)
{
    size_t reqlen = 0;
    char *req = build_request(c, method, target, headers, body, len, &reqlen);
    int rc = 0;
    memset(resp, 0, sizeof(*resp));
    *fail = CM_HTTPC_OK;
    if (!req) {
        *fail = CM_HTTPC_UNREACHABLE;
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = c->fd >= 0 && c->reused;
        if (c->fd < 0 && (rc = open_conn(c, err)) != 0) {
            *fail = CM_HTTPC_UNREACHABLE;
            break;
        }
        int64_t deadline = cm_mono_ns() / 1000000 + c->io_ms;
        reader r;
        size_t got = 0;
        memset(&r, 0, sizeof(r));
        r.resp = resp;
        http_parser_init(&r.p, HTTP_RESPONSE);
        r.p.data = &r;
        if (send_all(c->fd, req, reqlen, deadline) != 0) {
            int e = errno;
            disconnect(c);
            if (reused && (e == EPIPE || e == ECONNRESET))
                continue; /* the server had closed the idle connection: nothing was read */
            *fail = CM_HTTPC_BROKEN;
            rc = e == ETIMEDOUT ? cm_err_set(err, CM_EIO,
                                             "%s: the request could not be sent "
                                             "within %d ms",
                                             c->addr, c->io_ms)
                                : cm_err_set(err, CM_EIO, "%s: %s", c->addr, strerror(e));
            break;
        }
        rc = read_answer(c, &r, deadline, &got, err);
        if (rc != 0) {
            disconnect(c);
            cm_httpc_resp_free(resp);
            if (reused && got == 0 && attempt == 0)
                continue; /* closed under us before answering: reopen once */
            *fail = CM_HTTPC_BROKEN;
            break;
        }
        if (!resp->body && !(resp->body = calloc(1, 1))) {
            rc = cm_err_set(err, CM_ENOMEM, "out of memory");
            *fail = CM_HTTPC_BROKEN;
            disconnect(c);
            break;
        }
        if (!http_should_keep_alive(&r.p))
            disconnect(c);
        else
            c->reused = true;
        break;
    }
    sodium_memzero(req, reqlen); /* the headers may hold a bearer token */
    free(req);
    return rc;
}
