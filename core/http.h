/*
** http.h -- an HTTP/1.1 server on the libuv loop, parsed with libhttp-parser.
** Keep-alive and pipelining: requests of one connection are handed to the
** handler in order and their responses written in that order, whatever order
** the handler answers them in (an answer may come later, from a callback).
** Limits on header bytes, body bytes, connections, requests queued per
** connection, and time: a connection that is idle, or sends a request or
** reads its responses more slowly than the timeout allows, is closed (408 for
** a half-sent request), so a slow client never holds the loop or memory.
** Also the pure pieces the API routes with: query strings and path segments.
** Depends on libuv, http_parser, log. Loop thread only.
*/
#ifndef CM_HTTP_H
#define CM_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

#include "error.h"

typedef struct cm_http_limits {
    size_t max_header_bytes; /* request line and headers together; 431 past it */
    size_t max_body_bytes;   /* 413 past it (declared or chunked) */
    int max_connections;     /* more are answered 503 and closed */
    int max_pipeline;        /* requests read ahead per connection before reading pauses */
    int timeout_ms;          /* idle keep-alive, one request's arrival, one response's write */
} cm_http_limits;

/* Defaults: 16 KiB headers, 1 MiB body, 256 connections, 64 pipelined, 10 s. */
void cm_http_limits_default(cm_http_limits *l);

typedef struct cm_http_server cm_http_server;
typedef struct cm_http_req cm_http_req;

/* Called once per complete request, in the connection's order. The handler
** must answer every request exactly once with cm_http_respond, now or later. */
typedef void (*cm_http_handler)(void *ud, cm_http_req *req);

/* Listen on host:port (an IPv4 or IPv6 literal; port 0 picks one, see
** cm_http_server_port). CM_EIO with the address and the reason on failure. */
int cm_http_server_start(uv_loop_t *loop, const char *host, int port, const cm_http_limits *limits,
                         cm_http_handler handler, void *ud, cm_http_server **out, cm_err *err);

/* The bound port. */
int cm_http_server_port(const cm_http_server *s);

/* Change the limits of a running server (a configuration reload): they hold
** from the next check on; connections beyond a lowered max_connections are
** not closed; new ones are answered 503 until the count is below it. */
void cm_http_server_set_limits(cm_http_server *s, const cm_http_limits *limits);

/* Connections open now. */
int cm_http_server_connections(const cm_http_server *s);

/* Graceful stop: close the listener, read no more requests, answer those
** already read (with "Connection: close"), close each connection once its
** answers are written. done(ud) runs once when every connection is closed.
** Calling it again only forces the remaining connections closed. */
void cm_http_server_stop(cm_http_server *s, void (*done)(void *ud), void *ud);

/* Free after stop's done ran (or after the loop ran the closes); NULLs *s_p. */
void cm_http_server_destroy(cm_http_server **s_p);

/* ---- a request (borrowed until it is answered) ---- */

const char *cm_http_req_method(const cm_http_req *r); /* "GET", "POST", ... */
const char *cm_http_req_path(const cm_http_req *r);   /* raw path, without the query */
const char *cm_http_req_query(const cm_http_req *r);  /* raw query after '?', or "" */
/* The value of the header named name[0..len) (case-insensitive), or NULL. */
const char *cm_http_req_header_n(const cm_http_req *r, const char *name, size_t len);
/* The value of header name (case-insensitive), or NULL. Inline: a literal
** name's length is known when compiled. */
static inline const char *cm_http_req_header(const cm_http_req *r, const char *name)
{
    return cm_http_req_header_n(r, name, strlen(name));
}
const char *cm_http_req_body(const cm_http_req *r, size_t *len); /* NUL-terminated */
/* The peer connected from a loopback address. */
bool cm_http_req_loopback(const cm_http_req *r);
/* The parse pass the request was read in: the requests parsed from one read
** (or from the rest of one, resumed once answers drained) share it, and each
** pass of any connection has a larger number than every earlier one. So a
** check made at the first request of each pass (the API's look for revoked
** tokens) holds for every request whose bytes arrived after what it saw. */
uint64_t cm_http_req_pass(const cm_http_req *r);

/* A connection's memo for the handler: what it learned from one request
** and may reuse for the next ones of the same connection (the API: the
** token it last verified there). All zero when the connection opens, kept
** across its requests, wiped when it closes. */
#define CM_HTTP_MEMO_BYTES 128
typedef union cm_http_memo {
    unsigned char bytes[CM_HTTP_MEMO_BYTES];
    uint64_t align;
} cm_http_memo;
/* r's connection's memo, or NULL once the connection is gone. */
cm_http_memo *cm_http_req_memo(cm_http_req *r);

/* Answer r with status and body (copied; content_type NULL means
** application/json). r is invalid afterwards. If the client went away
** meanwhile the answer is dropped. */
void cm_http_respond(cm_http_req *r, int status, const char *content_type, const char *body,
                     size_t len);

/* Answer r with a JSON error that shows no state of the store (a 503: a
** refusal that changed nothing, or a write whose outcome is unknown): the
** gate does not hold it, only the answers before it on its connection do.
** r is invalid afterwards. */
void cm_http_refuse(cm_http_req *r, int status, const char *body, size_t len);

/* The output-commit rule for answers (store.h, deferred commits): with a
** gate, an answer is written only once the watermark reaches the commit
** counter as it was when the answer was made, so no answer, a read's
** included, shows a state an OS crash can still take back. A connection's
** answers keep their order: one held holds those after it. */
typedef struct cm_http_gate {
    uint64_t (*made)(void *ud);    /* the commit counter now (cm_store_commit_seq) */
    uint64_t (*durable)(void *ud); /* the watermark (cm_store_synced_seq) */
    void *ud;
} cm_http_gate;
/* Set (gate NULL: remove) the server's gate; answers made before keep theirs. */
void cm_http_server_set_gate(cm_http_server *s, const cm_http_gate *gate);
/* The watermark moved: write the answers it releases. */
void cm_http_server_durable(cm_http_server *s);
/* A sync failed: the watermark will never move again. Every answer held for
** a commit above it, now or made later, is replaced by a 503 that shows
** nothing and written in its turn: outcome_unknown for a 2xx to a method
** other than GET or HEAD (a write told it succeeded), unavailable for the
** rest (a read, a refusal: nothing was changed). */
void cm_http_server_sync_lost(cm_http_server *s);

/* Reason phrase of a status ("Not Found"); "Unknown" for others. */
const char *cm_http_status_text(int status);

/* ---- pure pieces (unit-tested) ---- */

#define CM_HTTP_MAX_PARAMS 32

typedef struct cm_http_param {
    char *name, *value; /* percent-decoded, owned by the cm_http_query */
} cm_http_param;

typedef struct cm_http_query {
    int n;
    cm_http_param p[CM_HTTP_MAX_PARAMS];
} cm_http_query;

/* Parse "a=1&b=x%20y" (+ is a space). CM_EINVAL naming the parameter when
** an escape is malformed, the text is not UTF-8, a name repeats, or there
** are more than CM_HTTP_MAX_PARAMS. q holds nothing to free on error. */
int cm_http_query_parse(const char *qs, cm_http_query *q, cm_err *err);
const char *cm_http_query_get(const cm_http_query *q, const char *name);
void cm_http_query_free(cm_http_query *q);

/* Percent-decode src[0..len) into out (capacity outsz, NUL-terminated);
** plus_space turns '+' into ' '. false when malformed, a NUL is encoded or
** it does not fit. */
bool cm_http_unescape(const char *src, size_t len, bool plus_space, char *out, size_t outsz);

#define CM_HTTP_MAX_SEGMENTS 8
#define CM_HTTP_SEGMENT_MAX  256

/* A path's decoded segments, packed one after the other in text (each
** NUL-terminated, at most CM_HTTP_SEGMENT_MAX - 1 bytes): a short path
** touches one or two cache lines. seg[i] points into text: not to be copied. */
typedef struct cm_http_path {
    int n;
    const char *seg[CM_HTTP_MAX_SEGMENTS];
    size_t len[CM_HTTP_MAX_SEGMENTS]; /* strlen(seg[i]) */
    char text[CM_HTTP_MAX_SEGMENTS * CM_HTTP_SEGMENT_MAX];
} cm_http_path;

/* What a path byte is to cm_http_split_path: 0 plain, 1 the end of a
** segment ('/' or NUL), 2 to be decoded ('%' or not ASCII). */
extern const unsigned char cm__http_path_byte[256];

/* The count of plain bytes at p (cm__http_path_byte 0): a segment's text
** as it stands up to p[n], when that ends it ('/' or NUL). */
static inline size_t cm_http_plain_run(const char *p)
{
    size_t n = 0;
    while (cm__http_path_byte[(unsigned char)p[n]] == 0)
        n++;
    return n;
}

/* Split path "/v1/patients/p%201" into decoded segments {"v1","patients","p 1"}
** in out (out->n of them, at most max). A trailing slash is ignored. Returns
** the count, or -1 when the path does not start with '/', has an empty or
** malformed segment, or too many. */
int cm_http_split_path(const char *path, cm_http_path *out, int max);

#endif
