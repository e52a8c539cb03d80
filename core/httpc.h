/*
** httpc.h -- a small blocking HTTP/1.1 client over one TCP connection, for
** the CLI: keep-alive (a connection is reused while the server keeps it
** open), a deadline on connect and on each exchange, responses parsed with
** libhttp-parser (Content-Length, chunked, or up to close). Request headers
** are never logged nor put in an error message, so a bearer token given in
** them stays out of sight. Depends on POSIX sockets, http_parser. Any one
** thread per client.
*/
#ifndef CM_HTTPC_H
#define CM_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* Largest response body accepted (an error past it). */
#define CM_HTTPC_MAX_BODY ((size_t)256 << 20)

typedef struct cm_httpc cm_httpc;

/* A client for host (IPv4/IPv6 literal or name) and port; connects on the
** first request. connect_ms bounds each connection attempt, io_ms each
** exchange (send the request, read the whole answer). NULL when out of memory. */
cm_httpc *cm_httpc_new(const char *host, int port, int connect_ms, int io_ms);

/* Close the connection and free; NULLs *c_p. */
void cm_httpc_destroy(cm_httpc **c_p);

typedef struct cm_httpc_resp {
    int status;
    char *body; /* NUL-terminated, owned; free with cm_httpc_resp_free */
    size_t len;
    char content_type[128];
} cm_httpc_resp;

void cm_httpc_resp_free(cm_httpc_resp *r);

/* Why an exchange failed: the node could not be reached at all (nothing was
** sent: connection refused, no route, connect timeout, unknown host), or the
** exchange broke after the request went out (a timeout or a cut connection:
** the request may or may not have been carried out). */
typedef enum { CM_HTTPC_OK = 0, CM_HTTPC_UNREACHABLE, CM_HTTPC_BROKEN } cm_httpc_fail;

/* Send method target (path and query) with headers (each "Name: value\r\n",
** may be NULL) and body (len bytes, may be NULL), and read the whole answer
** into *resp. A reused connection the server had closed is reopened once,
** before anything of the request went out. CM_EIO on failure with the
** address and the reason in err (never the headers), and *fail says which
** kind; resp then holds nothing to free. */
int cm_httpc_request(cm_httpc *c, const char *method, const char *target, const char *headers,
                     const char *body, size_t len, cm_httpc_resp *resp, cm_httpc_fail *fail,
                     cm_err *err);

/* "host:port" as given (IPv6 in brackets), for messages. */
const char *cm_httpc_address(const cm_httpc *c);

#endif
