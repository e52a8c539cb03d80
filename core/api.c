/*
** api.c -- the HTTP/JSON API: the route table, authentication by scope, the
** audit of patient data, and one handler per route. See api.h, docs/api.md.
*/
#include "api.h"

#include "audit.h"
#include "http.h"
#include "log.h"
#include "strbuf.h"
#include "text.h"
#include "token.h"
#include "valuesets.h"

#include <assert.h>
#include <limits.h>
#include <stddef.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LIST_DEFAULT  100
#define LIST_MAX      1000
#define MAX_COUNTERS  256
#define PURPOSE_MAX   64
#define TOKEN_SLOTS   64   /* verified tokens kept, direct-mapped by hash */
#define PATIENT_SLOTS 4096 /* instances' patients kept, by hash of the id */
#define PATIENT_PROBE 8    /* slots an id may take, from the one its hash names */
#define SPARE_CALLS   256  /* finished calls kept for reuse */

#define METRICS_MAX_AGE_MS 1000 /* the store's gauges are read at most once a second */

enum { SCOPE_OPEN_LOOPBACK = 0 }; /* health routes: a token, unless open to loopback */

typedef struct call call;
typedef void (*route_fn)(call *c);

typedef struct route {
    const char *method;
    const char *pattern; /* "/v1/patients/{}": {} matches one segment */
    int scope;           /* cm_scope needed, or SCOPE_OPEN_LOOPBACK */
    route_fn fn;
    int kind; /* record routes: the cm_kind; -1 otherwise */
} route;

/* A route's pattern split into segments (compiled at start): where each
** lies in the pattern and how long it is; wild marks the {} segment. */
typedef struct route_key {
    int nseg, wild; /* wild: the {} segment's index, or -1 */
    unsigned char off[CM_HTTP_MAX_SEGMENTS], len[CM_HTTP_MAX_SEGMENTS];
} route_key;

typedef struct counter {
    const char *route; /* a pattern (static) or "unmatched" */
    int status;
    uint64_t n;
} counter;

/* A token that passed cm_token_check, known by a keyed hash of its whole
** text (the text itself is not kept): SipHash-2-4 with 128-bit output
** under a random key of this process, so without the key no other text of
** the token's length can be found that meets the same slot's hash. */
typedef struct token_slot {
    bool used;
    unsigned char hash[crypto_shorthash_siphashx24_BYTES];
    cm_token_info info;
} token_slot;

/* The patient an instance's input names ("" for none): inputs never change. */
typedef struct patient_slot {
    uint64_t tag; /* the instance id's hash (patient_hash), never 0; 0: empty */
    char instance[CM_NAME_MAX];
    char patient[CM_ID_MAX + 1];
} patient_slot;

struct cm_api {
    cm_api_opts o;
    cm_http_server *http;
    bool ready, stopping;
    /* Verified tokens. Valid while no other connection committed to the
    ** database (a revocation is made by `caremesh token revoke`, another
    ** process): PRAGMA data_version is read at every token check and any
    ** change empties it. */
    token_slot tokens[TOKEN_SLOTS];
    unsigned char token_key[crypto_shorthash_siphashx24_KEYBYTES]; /* random, for the slots */
    uint64_t token_gen; /* changes whenever a slot does: a connection's memo of it is stale */
    long long dv;
    uint64_t dv_pass;       /* the HTTP parse pass data_version was last read in, plus 1 */
    patient_slot *patients; /* PATIENT_SLOTS, or NULL (then always looked up) */
    /* the store's gauges for /metrics, read off the loop (see h_metrics) */
    cm_buf gauges;
    uint64_t gauges_at; /* uv_now when read */
    bool metrics_running;
    call *metrics_waiting;
    counter counters[MAX_COUNTERS];
    int ncounters;
    struct route_index *routing; /* routes[] compiled (routes_compile) */
    size_t route_last;           /* the last route found, when alone in it; else NROUTES */
    call *spare;                 /* finished calls, kept for the next requests */
    cm_buf out;                  /* an answer's text (a record: wiped once sent on) */
    int nspare;
    void (*done)(void *ud);
    void *done_ud;
};

/* What a call keeps when it is reused for the next request (call_new): the
** query, emptied by call_free, and the path's segments, written before they
** are read. Every field of call outside it, before or after, is cleared for
** each request. */
typedef struct call_mem {
    cm_http_path path; /* the request's path, split (its segments packed) */
    cm_http_query q;
} call_mem;

/* What a request submits to the engine: its acknowledgement's status on
** success (a start's 201 Created, a signal's 200) and where its audit
** entry's patient comes from (a start's input, a signal's instance). */
typedef enum { SUBMIT_NONE, SUBMIT_START, SUBMIT_SIGNAL } submit_kind;

/* One request being handled. */
struct call {
    call_mem mem; /* kept across requests; call_new clears the rest */
    cm_api *api;
    call *next; /* waiting for the store's gauges */
    cm_http_req *req;
    const route *rt;
    int nseg;
    const char *arg; /* the {} segment of the route, when it has one */
    cm_token_info tok;
    char purpose[PURPOSE_MAX + 1];
    cJSON *body;
    /* engine submissions */
    char patient[CM_ID_MAX + 1];
    const char *action;
    submit_kind submit; /* set where the route is chosen */
    /* patient is the instance's as the store has it (read in the batch, or
    ** the input of a start): kept once the batch commits */
    bool patient_keep;
};

/* ---- answers ------------------------------------------------------------ */

/* Append s at buf + n (the caller sized buf); the new length. */
static size_t text_put(char *buf, size_t n, const char *s)
{
    size_t len = strlen(s);
    memcpy(buf + n, s, len + 1);
    return n + len;
}

/* Append s escaped as a JSON string body at buf + n in at most room bytes
** (cm_json_escape: cut before an escape that would not fit); the new length. */
static size_t json_put(char *buf, size_t n, size_t room, const char *s)
{
    return n + cm_json_escape(s, buf + n, room);
}

static void count(cm_api *api, const char *pattern, int status)
{
    for (int i = 0; i < api->ncounters; i++)
        if (api->counters[i].route == pattern && api->counters[i].status == status) {
            api->counters[i].n++;
            return;
        }
    if (api->ncounters < MAX_COUNTERS)
        api->counters[api->ncounters++] = (counter){pattern, status, 1};
}

/* A call in its initial state: a kept one, or a new one. */
static call *call_new(cm_api *api, cm_http_req *req)
{
    call *c = api->spare;
    if (c) {
        api->spare = c->next;
        api->nspare--;
        /* every field but mem, wherever it sits */
        size_t at = offsetof(call, mem), after = at + sizeof(c->mem);
        memset(c, 0, at);
        memset((char *)c + after, 0, sizeof(*c) - after);
    } else if (!(c = calloc(1, sizeof(*c)))) {
        return NULL;
    }
    c->api = api;
    c->req = req;
    return c;
}

/* Done with c: kept for the next request while fewer than SPARE_CALLS are. */
static void call_free(call *c)
{
    cm_api *api = c->api;
    cm_http_query_free(&c->mem.q);
    if (c->body) /* none for an event without a payload (event_only) */
        cm_model_doc_free(c->body);
    if (api->nspare >= SPARE_CALLS) {
        free(c);
        return;
    }
    c->next = api->spare;
    api->spare = c;
    api->nspare++;
}

static void reply_text(call *c, int status, const char *ctype, const char *text, size_t len)
{
    count(c->api, c->rt ? c->rt->pattern : "unmatched", status);
    if (status == 503 && !ctype) /* shows nothing: not held behind a sync (http.h) */
        cm_http_refuse(c->req, status, text, len);
    else
        cm_http_respond(c->req, status, ctype, text, len);
    call_free(c);
}

/* Answer with doc (consumed). */
static void reply_json(call *c, int status, cJSON *doc)
{
    cm_buf *out = &c->api->out;
    int rc = cm_model_print(doc, out);
    cm_model_doc_free(doc);
    if (rc != 0) {
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"the server is out of memory\"}}";
        reply_text(c, 503, NULL, oom, sizeof(oom) - 1);
        return;
    }
    reply_text(c, status, NULL, out->p, out->len); /* copied: out is free again */
    cm_buf_wipe(out);
}

static void reply_error(call *c, int status, const char *code, const char *field, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));

static void reply_error(call *c, int status, const char *code, const char *field, const char *fmt,
                        ...)
{
    char msg[CM_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON *doc = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(doc, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", msg);
    if (field && *field)
        cJSON_AddStringToObject(e, "field", field);
    reply_json(c, status, doc);
}

/* The field a message names: "patient.birthDate: ..." -> "birthDate" (the
** record kind's prefix dropped), "input.from: ..." -> "input.from". */
static void field_of(const char *msg, const char *kind, char *out, size_t outsz)
{
    size_t klen = kind ? strlen(kind) : 0;
    const char *colon = strstr(msg, ": ");
    out[0] = '\0';
    if (!colon)
        return;
    if (kind && strncmp(msg, kind, klen) == 0 && msg[klen] == '.')
        msg += klen + 1;
    size_t n = colon > msg ? (size_t)(colon - msg) : 0;
    if (n == 0 || n >= outsz)
        return;
    for (size_t i = 0; i < n; i++)
        if (!cm_id_char(msg[i]) && msg[i] != '[' && msg[i] != ']')
            return;
    if (kind && n == klen && strncmp(msg, kind, klen) == 0)
        return; /* "patient: ..." names the record, not a field */
    memcpy(out, msg, n);
    out[n] = '\0';
}

/* Answer a cm_err: status and code by the error's kind. */
static void reply_err(call *c, const cm_err *err, const char *kind)
{
    char field[128];
    int status = 500;
    const char *code = "internal";
    field_of(err->msg, kind, field, sizeof(field));
    switch (err->code) {
    case CM_EINVAL:
        status = 422;
        code = strstr(err->msg, "unknown field") ? "unknown_field" : "invalid";
        break;
    case CM_ENOTFOUND:
        status = 404;
        code = "not_found";
        break;
    case CM_EEXISTS:
        status = 409;
        code = "exists";
        break;
    case CM_EREF:
        status = 422;
        code = "missing_reference";
        break;
    case CM_ESTATE:
        status = 409;
        code = "wrong_state";
        break;
    case CM_EPERM:
        status = 403;
        code = "forbidden";
        break;
    case CM_ELUA:
    case CM_EBUDGET:
    case CM_EMEMCAP:
        status = 422;
        code = "handler_failed";
        break;
    case CM_EDB:
    case CM_ENOMEM:
    case CM_EIO:
        status = 503;
        code = "unavailable";
        break;
    case CM_EINDOUBT: /* committed, but its fsync failed: the node is stopping */
        status = 503;
        code = "outcome_unknown";
        break;
    default:
        break;
    }
    if (status >= 500)
        cm_log(CM_LOG_ERROR, "api.error", "%s %s: %s", cm_http_req_method(c->req),
               c->rt ? c->rt->pattern : "-", err->msg);
    reply_error(c, status, code, field, "%s", err->msg);
}

/* ---- input -------------------------------------------------------------- */

/* Only the listed query parameters (NULL-terminated, plus extra if given). */
static bool check_params(call *c, const char *const *allowed, const char *const *extra)
{
    for (int i = 0; i < c->mem.q.n; i++) {
        bool ok = false;
        for (const char *const *a = allowed; a && *a && !ok; a++)
            ok = strcmp(*a, c->mem.q.p[i].name) == 0;
        for (const char *const *a = extra; a && *a && !ok; a++)
            ok = strcmp(*a, c->mem.q.p[i].name) == 0;
        if (!ok) {
            char list[512] = "";
            for (int pass = 0; pass < 2; pass++)
                for (const char *const *a = pass ? extra : allowed; a && *a; a++)
                    snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                             list[0] ? ", " : "", *a);
            reply_error(c, 400, "unknown_parameter", c->mem.q.p[i].name,
                        "unknown query parameter \"%.64s\" (allowed: %s)", c->mem.q.p[i].name,
                        list[0] ? list : "none");
            return false;
        }
    }
    return true;
}

/* The one answer to a malformed query parameter: 400 invalid_parameter,
** the field naming it (NULL: none to name), the message "NAME: why".
** Returns false, for the callers' checks. */
static bool bad_param(call *c, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool bad_param(call *c, const char *name, const char *fmt, ...)
{
    char why[CM_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (name)
        reply_error(c, 400, "invalid_parameter", name, "%s: %s", name, why);
    else
        reply_error(c, 400, "invalid_parameter", NULL, "%s", why);
    return false;
}

/* Parameter name's value v, when given (not NULL), is one of values (NULL:
** any value is). */
static bool param_in(call *c, const char *name, const char *v, const char *const *values)
{
    char list[512];
    if (!v || !values || cm_values_listed(values, v))
        return true;
    return bad_param(c, name, "unknown value \"%.64s\" (expected one of: %s)", v,
                     cm_values_join(values, list, sizeof(list)));
}

/* limit=1..1000 (default 100). */
static bool get_limit(call *c, int *limit)
{
    const char *v = cm_http_query_get(&c->mem.q, "limit");
    char *end;
    *limit = LIST_DEFAULT;
    if (!v)
        return true;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < 1 || n > LIST_MAX)
        return bad_param(c, "limit", "must be a whole number from 1 to %d", LIST_MAX);
    *limit = (int)n;
    return true;
}

/* The since parameter as a stored time stamp in buf (*since NULL when not
** given); false (answered 400) when it is not a date or date-time. */
static bool get_since(call *c, char buf[CM_TIME_BUFSZ], const char **since)
{
    const char *v = cm_http_query_get(&c->mem.q, "since");
    int64_t ms;
    *since = NULL;
    if (!v)
        return true;
    if (!cm_time_parse(v, &ms))
        return bad_param(c, "since",
                         "must be a date or date-time (YYYY-MM-DD or "
                         "YYYY-MM-DDThh:mm:ssZ)");
    cm_time_format(ms, buf, CM_TIME_BUFSZ);
    *since = buf;
    return true;
}

/* A cursor that is a sequence number (instances, audit, failed events). */
static bool get_seq_cursor(call *c, long long *after)
{
    const char *v = cm_http_query_get(&c->mem.q, "cursor");
    char *end;
    *after = 0;
    if (!v)
        return true;
    long long n = strtoll(v, &end, 10);
    if (!*v || *end || n < 0)
        return bad_param(c, "cursor",
                         "not a cursor this list gave (expected the next_cursor of a page)");
    *after = n;
    return true;
}

/* The body is there, sent as JSON, and UTF-8 text: *text and *len. */
static bool body_text(call *c, const char **text, size_t *len)
{
    const char *ctype = cm_http_req_header(c->req, "Content-Type");
    *text = cm_http_req_body(c->req, len);
    if (*len == 0) {
        reply_error(c, 400, "missing_body", NULL, "this request needs a JSON object as its body");
        return false;
    }
    if (!ctype || (strncasecmp(ctype, "application/json", 16) != 0 &&
                   strncasecmp(ctype, "application/merge-patch+json", 28) != 0)) {
        reply_error(c, 415, "unsupported_media_type", NULL,
                    "the body must be sent as Content-Type: application/json (got %.64s)",
                    ctype ? ctype : "none");
        return false;
    }
    if (!cm_utf8_valid(*text, *len) || strlen(*text) != *len) {
        reply_error(c, 400, "malformed_json", NULL, "the body is not UTF-8 text");
        return false;
    }
    return true;
}

/* The body (checked by body_text) as a JSON object in c->body. */
static bool parse_json(call *c, const char *text, size_t len)
{
    const char *end = NULL;
    c->body = cJSON_ParseWithLengthOpts(text, len, &end, false);
    while (c->body && end && end < text + len && strchr(" \t\r\n", *end))
        end++;
    if (c->body && end != text + len) {
        cm_model_doc_free(c->body);
        c->body = NULL;
    }
    if (!c->body) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        reply_error(c, 400, "malformed_json", NULL, "the body is not valid JSON (at byte %zu)", at);
        return false;
    }
    if (!cJSON_IsObject(c->body)) {
        reply_error(c, 422, "invalid", NULL, "the body must be a JSON object");
        return false;
    }
    cm_err err;
    if (cm_model_doc_finite(c->body, "", &err) != 0) { /* 1e999: read as inf, printed as null */
        char field[128];
        field_of(err.msg, NULL, field, sizeof(field));
        reply_error(c, 400, "number_out_of_range", field, "%s", err.msg);
        return false;
    }
    return true;
}

/* The body as a JSON object. */
static bool parse_body(call *c)
{
    const char *text;
    size_t len;
    return body_text(c, &text, &len) && parse_json(c, text, len);
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Is text[0..len) exactly {"event":"NAME"} or {"event":"NAME","payload":
** {...}} (the two members in either order, whitespace around the tokens
** allowed), NAME of id characters and shorter than outsz, the payload one
** JSON object (cm_json_object_len)? Then NAME is in out and the payload's
** text in *payload, *plen (NULL when there is none): an event read without
** a cJSON tree. Any other body (escapes in the names, other members, a
** mistake) is for parse_json and check_members, which say what is wrong. */
static bool event_body(const char *text, size_t len, char *out, size_t outsz, const char **payload,
                       size_t *plen)
{
    static const char ekey[] = "\"event\"", pkey[] = "\"payload\"";
    const char *p = text, *end = text + len, *name = NULL;
    size_t n = 0;
    *payload = NULL;
    *plen = 0;
    p = skip_ws(p, end);
    if (p == end || *p++ != '{')
        return false;
    for (int member = 0; member < 2; member++) {
        p = skip_ws(p, end);
        bool is_event = (size_t)(end - p) >= sizeof(ekey) - 1 &&
                        memcmp(p, ekey, sizeof(ekey) - 1) == 0 && !name;
        bool is_payload = !is_event && (size_t)(end - p) >= sizeof(pkey) - 1 &&
                          memcmp(p, pkey, sizeof(pkey) - 1) == 0 && !*payload;
        if (!is_event && !is_payload)
            return false;
        p = skip_ws(p + (is_event ? sizeof(ekey) : sizeof(pkey)) - 1, end);
        if (p == end || *p++ != ':')
            return false;
        p = skip_ws(p, end);
        if (is_event) {
            if (p == end || *p++ != '"')
                return false;
            for (name = p; p < end && cm_id_char(*p); p++)
                ;
            n = (size_t)(p - name);
            if (n == 0 || n >= outsz || p == end || *p++ != '"')
                return false;
        } else {
            /* the payload sits in the body's object: cJSON counts its
            ** nesting from the body's top (CM_JSON_PAYLOAD_DEPTH_MAX) */
            if ((*plen = cm_json_object_len(p, (size_t)(end - p), CM_JSON_PAYLOAD_DEPTH_MAX)) == 0)
                return false;
            *payload = p;
            p += *plen;
        }
        p = skip_ws(p, end);
        if (p == end)
            return false;
        if (*p == '}')
            break;
        if (*p++ != ',')
            return false;
    }
    if (!name || p == end || *p++ != '}' || skip_ws(p, end) != end)
        return false;
    memcpy(out, name, n);
    out[n] = '\0';
    return true;
}

/* The body has only these members, each of the JSON type asked for. */
typedef struct member {
    const char *name;
    int type; /* cJSON_String, cJSON_Object */
    bool required;
} member;

static bool check_members(call *c, const member *m)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, c->body)
    {
        const member *k = m;
        while (k->name && strcmp(k->name, it->string) != 0)
            k++;
        if (!k->name) {
            reply_error(c, 422, "unknown_field", it->string, "%.64s: unknown field", it->string);
            return false;
        }
        if ((it->type & 0xff) != k->type) {
            reply_error(c, 422, "invalid", k->name, "%s: must be %s", k->name,
                        k->type == cJSON_String ? "a string" : "an object");
            return false;
        }
    }
    for (; m->name; m++)
        if (m->required && !cJSON_GetObjectItemCaseSensitive(c->body, m->name)) {
            reply_error(c, 422, "invalid", m->name, "%s: required", m->name);
            return false;
        }
    return true;
}

static const char *body_str(call *c, const char *name)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c->body, name));
}

/* ---- the audit ------------------------------------------------------------ */

static int audit(call *c, const char *action, const char *patient, const char *classes,
                 const char *outcome, cm_err *err)
{
    char detail[CM_HTTP_SEGMENT_MAX + 32];
    snprintf(detail, sizeof(detail), "api %s %.200s", cm_http_req_method(c->req),
             cm_http_req_path(c->req));
    cm_audit_entry e = {c->tok.actor, action, patient, classes, c->purpose, outcome, detail};
    return cm_audit_append(c->api->o.store, c->api->o.clock, &e, err);
}

/* One read entry per record about a patient in docs (an array or one
** record), in one transaction. No entry, no answer. */
static int audit_reads(call *c, int kind, const cJSON *docs, const char *action, cm_err *err)
{
    cm_store *store = c->api->o.store;
    const cJSON *one = cJSON_IsArray(docs) ? docs->child : docs;
    bool any = false;
    for (const cJSON *d = one; d && !any; d = cJSON_IsArray(docs) ? d->next : NULL)
        any = kind < 0 ? cJSON_IsString(cJSON_GetObjectItemCaseSensitive(d, "patient"))
                       : cm_model_record_patient(kind, d) != NULL;
    if (!any)
        return 0;
    int rc = cm_store_begin(store, err);
    for (const cJSON *d = one; d && rc == 0; d = cJSON_IsArray(docs) ? d->next : NULL) {
        char classes[64];
        const char *p = kind < 0
                            ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "patient"))
                            : cm_model_record_patient(kind, d);
        if (p)
            rc = audit(c, action, p, cm_model_record_classes(kind, d, classes, sizeof(classes)),
                       "ok", err);
    }
    if (rc == 0)
        return cm_store_commit(store, err);
    cm_store_rollback(store);
    return rc;
}

/* ---- authentication ------------------------------------------------------ */

static void tokens_forget(cm_api *api)
{
    sodium_memzero(api->tokens, sizeof(api->tokens));
    api->token_gen++;
}

/* A connection's memo (cm_http_req_memo) of the token last verified on it:
** the generation of the verified tokens it was read in (0: none), the
** slot, and the token's text. While the generation holds, the same text
** presented again on that connection is the slot's token without a hash;
** any change of the slots (a revocation seen, a token verified into a slot)
** makes every connection's memo stale. The text is the connection's own
** (the client sent it on it) and is wiped with the connection. */
enum { MEMO_GEN = 0, MEMO_SLOT = 8, MEMO_TEXT = 16 };
_Static_assert(MEMO_TEXT + CM_TOKEN_TEXT_LEN <= CM_HTTP_MEMO_BYTES, "a token fits the memo");
_Static_assert(TOKEN_SLOTS <= 65536, "a slot's index fits the memo");

/* a and b (len bytes each) are equal, in a time that depends on len only:
** the XOR of each 8-byte word, ORed together (sodium_memcmp goes a byte at
** a time: ~700 instructions for a token's text, ~80 here). */
static bool same_secret(const unsigned char *a, const unsigned char *b, size_t len)
{
    uint64_t diff = 0, x, y;
    size_t i = 0;
    for (; i + sizeof(x) <= len; i += sizeof(x)) {
        memcpy(&x, a + i, sizeof(x));
        memcpy(&y, b + i, sizeof(y));
        diff |= x ^ y;
        __asm__("" : "+r"(diff)); /* no early exit on a difference */
    }
    for (; i < len; i++)
        diff |= (uint64_t)(a[i] ^ b[i]);
    return diff == 0;
}

static bool memo_token(const cm_api *api, const cm_http_memo *m, const char *text, size_t len,
                       cm_token_info *info)
{
    uint64_t gen;
    uint16_t slot;
    memcpy(&gen, m->bytes + MEMO_GEN, sizeof(gen));
    if (gen == 0 || gen != api->token_gen || len != CM_TOKEN_TEXT_LEN ||
        !same_secret(m->bytes + MEMO_TEXT, (const unsigned char *)text, len))
        return false;
    memcpy(&slot, m->bytes + MEMO_SLOT, sizeof(slot));
    *info = api->tokens[slot].info;
    return true;
}

static void memo_keep(const cm_api *api, cm_http_memo *m, const char *text, size_t slot)
{
    uint16_t s = (uint16_t)slot;
    memcpy(m->bytes + MEMO_GEN, &api->token_gen, sizeof(api->token_gen));
    memcpy(m->bytes + MEMO_SLOT, &s, sizeof(s));
    memcpy(m->bytes + MEMO_TEXT, text, CM_TOKEN_TEXT_LEN);
}

/* Forget every verified token when another connection committed since the
** last look. */
static int tokens_revalidate(cm_api *api, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(api->o.store, "PRAGMA data_version", err);
    if (!st)
        return err->code;
    int s = sqlite3_step(st);
    long long dv = s == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_reset(st);
    if (s != SQLITE_ROW)
        return cm_store_error(api->o.store, err, "data_version");
    if (dv != api->dv)
        tokens_forget(api);
    api->dv = dv;
    return 0;
}

/* cm_token_check, answered from the connection's memo or the verified
** tokens when it can be. The verified tokens are revalidated at the first
** check of each HTTP parse pass (see cm_http_req_pass): a revocation
** committed before a request's bytes were read holds for it. */
static int token_check(cm_api *api, cm_http_req *req, const char *text, cm_token_info *info,
                       cm_err *err)
{
    unsigned char hash[crypto_shorthash_siphashx24_BYTES];
    uint64_t pass = cm_http_req_pass(req);
    cm_http_memo *memo = cm_http_req_memo(req);
    int rc;
    if (api->dv_pass != pass + 1) {
        if ((rc = tokens_revalidate(api, err)) != 0)
            return rc;
        api->dv_pass = pass + 1;
    }
    size_t len = strlen(text);
    if (len != CM_TOKEN_TEXT_LEN) /* not a token: cm_token_check says why */
        return cm_token_check(api->o.store, text, info, err);
    if (memo && memo_token(api, memo, text, len, info))
        return 0;
    crypto_shorthash_siphashx24(hash, (const unsigned char *)text, len, api->token_key);
    size_t i = (hash[0] | (unsigned)hash[1] << 8) % TOKEN_SLOTS;
    token_slot *slot = &api->tokens[i];
    if (!slot->used || sodium_memcmp(slot->hash, hash, sizeof(hash)) != 0) {
        if ((rc = cm_token_check(api->o.store, text, info, err)) != 0)
            return rc;
        slot->used = true;
        memcpy(slot->hash, hash, sizeof(hash));
        slot->info = *info;
        api->token_gen++; /* the slot changed: memos of what it held are stale */
    }
    *info = slot->info;
    if (memo)
        memo_keep(api, memo, text, i);
    return 0;
}

static bool authenticate(call *c)
{
    const char *h = cm_http_req_header(c->req, "Authorization");
    cm_err err;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        reply_error(c, 401, "unauthorized", NULL,
                    "%s: send \"Authorization: Bearer TOKEN\" (caremesh token create)",
                    h ? "not a bearer token" : "no token");
        return false;
    }
    const char *t = h + 7;
    while (*t == ' ')
        t++;
    int rc = token_check(c->api, c->req, t, &c->tok, &err);
    if (rc == CM_EPERM) {
        reply_error(c, 401, "unauthorized", NULL, "%s", err.msg);
        return false;
    }
    if (rc != 0) {
        reply_err(c, &err, NULL);
        return false;
    }
    if ((int)c->tok.scope < c->rt->scope) {
        reply_error(c, 403, "forbidden", NULL, "this route needs a token of scope %s; %s is %s",
                    cm_scope_name((cm_scope)c->rt->scope), c->tok.actor,
                    cm_scope_name(c->tok.scope));
        return false;
    }
    const char *purpose = cm_http_req_header(c->req, "X-Purpose");
    if (purpose && (strlen(purpose) > PURPOSE_MAX || cm_id_check(purpose) != 0)) {
        reply_error(c, 400, "invalid_header", "X-Purpose",
                    "X-Purpose: use 1 to %d letters, digits, . _ : -", PURPOSE_MAX);
        return false;
    }
    cm_copy_str(c->purpose, sizeof(c->purpose), purpose ? purpose : "");
    return true;
}

/* ---- records ------------------------------------------------------------- */

static void h_record_list(call *c)
{
    static const char *const paging[] = {"limit", "cursor", NULL};
    int kind = c->rt->kind, limit;
    cJSON *filter = NULL, *items = NULL;
    cm_err err;
    if (!check_params(c, paging, cm_model_find_keys((cm_kind)kind)) || !get_limit(c, &limit))
        return;
    for (int i = 0; i < c->mem.q.n; i++) /* the filters given: within their values */
        if (!param_in(c, c->mem.q.p[i].name, c->mem.q.p[i].value,
                      cm_model_find_values((cm_kind)kind, c->mem.q.p[i].name)))
            return;
    if (!(filter = cJSON_CreateObject()))
        goto oom;
    for (int i = 0; i < c->mem.q.n; i++)
        if (strcmp(c->mem.q.p[i].name, "limit") != 0 && strcmp(c->mem.q.p[i].name, "cursor") != 0 &&
            !cJSON_AddStringToObject(filter, c->mem.q.p[i].name, c->mem.q.p[i].value))
            goto oom;
    int rc = cm_model_find(c->api->o.model, (cm_kind)kind, filter,
                           cm_http_query_get(&c->mem.q, "cursor"), limit, &items, &err);
    cm_model_doc_free(filter);
    filter = NULL;
    if (rc == 0) {
        char action[64];
        snprintf(action, sizeof(action), "%s.read", cm_kind_name((cm_kind)kind));
        rc = audit_reads(c, kind, items, action, &err);
    }
    if (rc != 0) {
        cm_model_doc_free(items);
        reply_err(c, &err, NULL);
        return;
    }
    int n = cJSON_GetArraySize(items);
    cJSON *doc = cJSON_CreateObject(), *last = n == limit ? cJSON_GetArrayItem(items, n - 1) : NULL;
    if (!doc) {
        cm_model_doc_free(items);
        goto oom;
    }
    cJSON_AddItemToObject(doc, "items", items);
    const char *next = last ? cJSON_GetStringValue(cJSON_GetObjectItem(last, "id")) : NULL;
    next ? cJSON_AddStringToObject(doc, "next_cursor", next)
         : cJSON_AddNullToObject(doc, "next_cursor");
    reply_json(c, 200, doc);
    return;
oom:
    cm_model_doc_free(filter);
    reply_error(c, 503, "out_of_memory", NULL, "the server is out of memory");
}

static void h_record_get(call *c)
{
    int kind = c->rt->kind;
    cJSON *doc = NULL;
    cm_err err;
    char action[64];
    if (!check_params(c, NULL, NULL))
        return;
    snprintf(action, sizeof(action), "%s.read", cm_kind_name((cm_kind)kind));
    int rc = cm_model_get(c->api->o.model, (cm_kind)kind, c->arg, &doc, &err);
    if (rc == 0)
        rc = audit_reads(c, kind, doc, action, &err);
    if (rc != 0) {
        cm_model_doc_free(doc);
        reply_err(c, &err, cm_kind_name((cm_kind)kind));
        return;
    }
    reply_json(c, 200, doc);
}

/* Create (id NULL) or merge-patch record id, with its audit entry in the
** same transaction; a refused change of patient data is audited as refused. */
static void record_write(call *c, int kind, const char *id, const cJSON *doc, const char *verb,
                         int ok_status)
{
    cm_store *store = c->api->o.store;
    cJSON *out = NULL;
    cm_err err;
    char action[64], classes[64];
    const char *kname = cm_kind_name((cm_kind)kind);
    const char *patient = kind == CM_KIND_PATIENT && id ? id : cm_model_record_patient(kind, doc);
    snprintf(action, sizeof(action), "%s.%s", kname, verb);
    int rc = cm_store_begin(store, &err);
    if (rc == 0)
        rc = id ? cm_model_update(c->api->o.model, (cm_kind)kind, id, doc, &out, &err)
                : cm_model_create(c->api->o.model, (cm_kind)kind, doc, &out, &err);
    if (rc == 0 && (patient = out ? cm_model_record_patient(kind, out) : patient))
        rc = audit(c, action, patient, cm_model_record_classes(kind, out, classes, sizeof(classes)),
                   "ok", &err);
    if (rc == 0)
        rc = cm_store_commit(store, &err);
    else
        cm_store_rollback(store);
    if (rc != 0) {
        cm_err aerr;
        if (patient && cm_id_check(patient) == 0 && rc != CM_EDB &&
            audit(c, action, patient, cm_model_record_classes(kind, doc, classes, sizeof(classes)),
                  "refused", &aerr) != 0)
            cm_log(CM_LOG_ERROR, "api.audit", "audit of a refused write: %s", aerr.msg);
        cm_model_doc_free(out);
        reply_err(c, &err, kname);
        return;
    }
    reply_json(c, ok_status, out);
}

static void h_record_create(call *c)
{
    if (check_params(c, NULL, NULL) && parse_body(c))
        record_write(c, c->rt->kind, NULL, c->body, "create", 201);
}

static void h_record_update(call *c)
{
    if (check_params(c, NULL, NULL) && parse_body(c))
        record_write(c, c->rt->kind, c->arg, c->body, "update", 200);
}

/* POST /v1/tasks/{id}/complete {"note": "..."}: status completed. */
static void h_task_complete(call *c)
{
    static const member m[] = {{"note", cJSON_String, false}, {NULL, 0, false}};
    size_t len;
    cm_http_req_body(c->req, &len);
    if (!check_params(c, NULL, NULL))
        return;
    if (len > 0 && (!parse_body(c) || !check_members(c, m)))
        return;
    cJSON *patch = cJSON_CreateObject();
    const char *note = c->body ? body_str(c, "note") : NULL;
    if (!patch || !cJSON_AddStringToObject(patch, "status", "completed") ||
        (note && !cJSON_AddStringToObject(patch, "note", note))) {
        cm_model_doc_free(patch);
        reply_error(c, 503, "out_of_memory", NULL, "the server is out of memory");
        return;
    }
    record_write(c, CM_KIND_TASK, c->arg, patch, "complete", 200);
    cm_model_doc_free(patch);
}

/* ---- workflows ----------------------------------------------------------- */

static void h_workflows(call *c)
{
    cm_store *store = c->api->o.store;
    cm_err err;
    if (!check_params(c, NULL, NULL))
        return;
    sqlite3_stmt *st = cm_store_prepare(store,
                                        "SELECT name, rev, version, origin, loaded_at FROM "
                                        "workflow_def WHERE ?1 IS NULL OR name = ?1 "
                                        "ORDER BY name, rev",
                                        &err);
    if (!st) {
        reply_err(c, &err, NULL);
        return;
    }
    if (c->arg)
        sqlite3_bind_text(st, 1, c->arg, -1, SQLITE_STATIC);
    cJSON *items = cJSON_CreateArray(), *wf = NULL, *revs = NULL;
    int s;
    while (items && (s = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (!wf || strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(wf, "name")), name) != 0) {
            wf = cJSON_CreateObject();
            cJSON_AddItemToArray(items, wf);
            cJSON_AddStringToObject(wf, "name", name);
            revs = cJSON_AddArrayToObject(wf, "revisions");
        }
        cJSON *r = cJSON_CreateObject();
        cJSON_AddItemToArray(revs, r);
        cJSON_AddNumberToObject(r, "rev", sqlite3_column_int(st, 1));
        cJSON_AddNumberToObject(r, "version", sqlite3_column_int(st, 2));
        cJSON_AddStringToObject(r, "origin", (const char *)sqlite3_column_text(st, 3));
        cJSON_AddStringToObject(r, "loaded_at", (const char *)sqlite3_column_text(st, 4));
        cJSON_DeleteItemFromObject(wf, "current_rev");
        cJSON_AddNumberToObject(wf, "current_rev", sqlite3_column_int(st, 1));
        cJSON_DeleteItemFromObject(wf, "version");
        cJSON_AddNumberToObject(wf, "version", sqlite3_column_int(st, 2));
    }
    sqlite3_reset(st);
    if (!items) {
        reply_error(c, 503, "out_of_memory", NULL, "the server is out of memory");
        return;
    }
    if (c->arg) {
        cJSON *one = cJSON_DetachItemFromArray(items, 0);
        cm_model_doc_free(items);
        if (!one)
            reply_error(c, 404, "not_found", NULL, "no workflow named \"%.128s\" is loaded",
                        c->arg);
        else
            reply_json(c, 200, one);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddItemToObject(doc, "items", items);
    reply_json(c, 200, doc);
}

/* ---- instances ----------------------------------------------------------- */

static void h_instance_list(call *c)
{
    static const char *const params[] = {"workflow", "state",  "status", "patient",
                                         "limit",    "cursor", NULL};
    static const char *const cols[] = {"workflow", "state", "status", "patient"};
    static const char *const names[] = {"id",     "workflow", "rev",     "state",
                                        "status", "patient",  "created", "updated"};
    long long after;
    int limit, s;
    cm_err err;
    if (!check_params(c, params, NULL) || !get_limit(c, &limit) || !get_seq_cursor(c, &after))
        return;
    if (!param_in(c, "status", cm_http_query_get(&c->mem.q, "status"), cm_values_instance_statuses))
        return;
    sqlite3_stmt *st = cm_store_prepare(
        c->api->o.store,
        "SELECT seq, id, workflow, rev, state, status, json_extract(input, '$.patient'), created, "
        "updated FROM instance WHERE seq > ?1 AND (?2 IS NULL OR workflow = ?2) AND "
        "(?3 IS NULL OR state = ?3) AND (?4 IS NULL OR status = ?4) AND "
        "(?5 IS NULL OR json_extract(input, '$.patient') = ?5) ORDER BY seq LIMIT ?6",
        &err);
    if (!st) {
        reply_err(c, &err, NULL);
        return;
    }
    sqlite3_bind_int64(st, 1, after);
    for (int i = 0; i < 4; i++) {
        const char *v = cm_http_query_get(&c->mem.q, cols[i]);
        if (v)
            sqlite3_bind_text(st, i + 2, v, -1, SQLITE_TRANSIENT);
    }
    sqlite3_bind_int(st, 6, limit);
    cJSON *items = cJSON_CreateArray();
    long long last = 0;
    int n = 0;
    while (items && (s = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *row = cJSON_CreateObject();
        cJSON_AddItemToArray(items, row);
        last = sqlite3_column_int64(st, 0);
        n++;
        for (int i = 0; i < 8; i++) {
            if (sqlite3_column_type(st, i + 1) == SQLITE_NULL)
                cJSON_AddNullToObject(row, names[i]);
            else if (i == 2)
                cJSON_AddNumberToObject(row, names[i], sqlite3_column_int(st, i + 1));
            else
                cJSON_AddStringToObject(row, names[i],
                                        (const char *)sqlite3_column_text(st, i + 1));
        }
    }
    sqlite3_reset(st);
    if (!items) {
        reply_error(c, 503, "out_of_memory", NULL, "the server is out of memory");
        return;
    }
    if (audit_reads(c, -1, items, "instance.read", &err) != 0) {
        cm_model_doc_free(items);
        reply_err(c, &err, NULL);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddItemToObject(doc, "items", items);
    if (n == limit) {
        char cur[32];
        snprintf(cur, sizeof(cur), "%lld", last);
        cJSON_AddStringToObject(doc, "next_cursor", cur);
    } else {
        cJSON_AddNullToObject(doc, "next_cursor");
    }
    reply_json(c, 200, doc);
}

/* The instance's patient, if its input names one (for the audit). */
static const char *instance_patient(const cJSON *inst)
{
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(inst, "input");
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(input, "patient"));
}

static void instance_view(call *c, bool history_only)
{
    cJSON *doc = NULL;
    cm_err err;
    if (!check_params(c, NULL, NULL))
        return;
    int rc = cm_engine_get(c->api->o.engine, c->arg, &doc, &err);
    const char *patient = rc == 0 ? instance_patient(doc) : NULL;
    if (rc == 0 && patient) {
        cJSON *one = cJSON_CreateObject();
        cJSON_AddStringToObject(one, "patient", patient);
        rc = one ? audit_reads(c, -1, one, "instance.read", &err) : CM_ENOMEM;
        cm_model_doc_free(one);
    }
    if (rc != 0) {
        cm_model_doc_free(doc);
        reply_err(c, &err, NULL);
        return;
    }
    if (history_only) {
        cJSON *h = cJSON_DetachItemFromObject(doc, "history"), *out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "instance", c->arg);
        cJSON_AddItemToObject(out, "items", h);
        cm_model_doc_free(doc);
        doc = out;
    }
    reply_json(c, 200, doc);
}

static void h_instance_get(call *c)
{
    instance_view(c, false);
}

static void h_instance_history(call *c)
{
    instance_view(c, true);
}

/* The hash of an instance's id, never 0: its bytes 8 at a time (a byte at
** a time cost ~150 instructions an event for ids of ~15 bytes). */
static uint64_t patient_hash(const char *instance)
{
    size_t len = strlen(instance), i = 0;
    uint64_t h = len, w;
    for (; i + sizeof(w) <= len; i += sizeof(w)) {
        memcpy(&w, instance + i, sizeof(w));
        h = (h ^ w) * 0x9e3779b97f4a7c15u;
        h ^= h >> 29;
    }
    w = 0;
    memcpy(&w, instance + i, len - i);
    h = (h ^ w) * 0x9e3779b97f4a7c15u;
    return (h ^ (h >> 32)) | 1;
}

/* The slot that keeps the instance's patient (tag: its id's patient_hash):
** the first of the PATIENT_PROBE slots from the one its hash names that
** holds it, or (keep) else the first empty one, else the first; NULL when
** none holds it (not keep) or there is no memo. Slots are never emptied, so
** an id is found before the first empty slot of its probe when it is kept
** at all; ids that share a slot (~5 pairs for 200 ids in 4096 slots) do not
** push each other out until eight do. */
static patient_slot *patient_slot_of(cm_api *api, const char *instance, uint64_t tag, bool keep)
{
    if (!api->patients)
        return NULL;
    size_t home = (size_t)(tag % PATIENT_SLOTS);
    for (size_t k = 0; k < PATIENT_PROBE; k++) {
        patient_slot *slot = &api->patients[(home + k) % PATIENT_SLOTS];
        if (!slot->tag)
            return keep ? slot : NULL;
        if (slot->tag == tag && strcmp(slot->instance, instance) == 0)
            return slot;
    }
    return keep ? &api->patients[home] : NULL;
}

/* The patient the instance's input names into out ("" for none), read once
** per instance: an input never changes after the start. *from_store: it was
** read from the store, not known (instance_patient_keep it after commit). */
static int instance_patient_of(cm_api *api, const char *instance, char *out, size_t outsz,
                               bool *from_store, cm_err *err)
{
    patient_slot *slot = patient_slot_of(api, instance, patient_hash(instance), false);
    out[0] = '\0';
    *from_store = false;
    if (slot) {
        cm_copy_str(out, outsz, slot->patient);
        return 0;
    }
    *from_store = true;
    sqlite3_stmt *st = cm_store_prepare(
        api->o.store, "SELECT json_extract(input, '$.patient') FROM instance_base WHERE id = ?1",
        err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT)
        snprintf(out, outsz, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
    return s == SQLITE_ROW || s == SQLITE_DONE ? 0 : cm_store_error(api->o.store, err, "instance");
}

/* Keep what instance_patient_of read, once the batch that read it committed
** (a batch rolled back may have started the instance it read). */
static void instance_patient_keep(cm_api *api, const char *instance, const char *patient)
{
    patient_slot *slot = NULL;
    size_t ilen = strlen(instance), plen = strlen(patient);
    uint64_t tag = patient_hash(instance);
    if (ilen < sizeof(slot->instance) && plen < sizeof(slot->patient) &&
        (slot = patient_slot_of(api, instance, tag, true))) {
        slot->tag = tag;
        memcpy(slot->instance, instance, ilen + 1);
        memcpy(slot->patient, patient, plen + 1);
    }
}

/* The engine acknowledged a submission: the batch holding it committed. */
static void on_engine_ack(void *ud, const cm_ack *ack)
{
    call *c = ud;
    cm_err err;
    if (ack->status != 0 && ack->kept) {
        cJSON *doc = cJSON_CreateObject(), *e;
        cJSON_AddStringToObject(doc, "instance", ack->instance ? ack->instance : "");
        ack->state ? cJSON_AddStringToObject(doc, "state", ack->state) : NULL;
        cJSON_AddFalseToObject(doc, "applied");
        cJSON_AddTrueToObject(doc, "kept");
        e = cJSON_AddObjectToObject(doc, "error");
        cJSON_AddStringToObject(e, "code", "handler_failed");
        cJSON_AddStringToObject(e, "message", ack->message ? ack->message : "");
        reply_json(c, 202, doc);
        return;
    }
    if (ack->status != 0) {
        cm_err_set(&err, ack->status, "%s", ack->message ? ack->message : "refused");
        reply_err(c, &err, NULL);
        return;
    }
    if (c->patient_keep && ack->instance)
        instance_patient_keep(c->api, ack->instance, c->patient);
    /* {"instance":I,"state":S} and "held":true when paused (kept until resume) */
    char text[2 * 6 * CM_NAME_MAX + 64];
    size_t n = text_put(text, 0, "{\"instance\":\"");
    n = json_put(text, n, 6 * CM_NAME_MAX + 1, ack->instance ? ack->instance : "");
    n = text_put(text, n, "\",\"state\":\"");
    n = json_put(text, n, 6 * CM_NAME_MAX + 1, ack->state ? ack->state : "");
    n = text_put(text, n, ack->kept ? "\",\"held\":true}" : "\"}");
    reply_text(c, ack->kept ? 202 : c->submit == SUBMIT_START ? 201 : 200, NULL, text, n);
}

/* In the batch's transaction: the audit entry of an API submission. */
static int on_engine_work(void *hook_ud, cm_ack_cb cb, void *submit_ud, const cm_ack *ack,
                          cm_err *err)
{
    call *c = submit_ud;
    int rc;
    if (cb != on_engine_ack)
        return 0;
    if (c->submit == SUBMIT_SIGNAL && ack->instance) { /* the instance's patient */
        if ((rc = instance_patient_of(c->api, ack->instance, c->patient, sizeof(c->patient),
                                      &c->patient_keep, err)) != 0)
            return rc;
    }
    if (!c->patient[0])
        return 0;
    return audit(c, c->action, c->patient, "workflow",
                 ack->status == 0 ? "ok"
                 : ack->kept      ? "error"
                                  : "refused",
                 err);
}

static void h_instance_start(call *c)
{
    static const member m[] = {{"workflow", cJSON_String, true},
                               {"input", cJSON_Object, false},
                               {"id", cJSON_String, false},
                               {NULL, 0, false}};
    cm_err err;
    if (!check_params(c, NULL, NULL) || !parse_body(c) || !check_members(c, m))
        return;
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(c->body, "input");
    const char *patient = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(input, "patient"));
    snprintf(c->patient, sizeof(c->patient), "%s",
             patient && cm_id_check(patient) == 0 ? patient : "");
    /* what instance_patient_of would read once it commits: the instance's
    ** first event then needs no lookup (not a patient that is no id) */
    c->patient_keep = !patient || c->patient[0];
    c->action = "instance.start";
    c->submit = SUBMIT_START;
    if (cm_engine_start(c->api->o.engine, body_str(c, "workflow"), input, body_str(c, "id"),
                        on_engine_ack, c, &err) != 0)
        reply_err(c, &err, NULL);
}

static void h_instance_signal(call *c)
{
    static const member m[] = {
        {"event", cJSON_String, true}, {"payload", cJSON_Object, false}, {NULL, 0, false}};
    cm_err err;
    char name[CM_NAME_MAX];
    const char *text, *event = name, *payload = NULL;
    size_t len, plen = 0;
    int rc;
    if (!check_params(c, NULL, NULL) || !body_text(c, &text, &len))
        return;
    if (!event_body(text, len, name, sizeof(name), &payload, &plen)) {
        if (!parse_json(c, text, len) || !check_members(c, m))
            return;
        event = body_str(c, "event");
    }
    c->action = "instance.signal";
    c->submit = SUBMIT_SIGNAL;
    if (payload) /* its text straight to the step, as read and checked (event_body) */
        rc = cm_engine_signal_checked(c->api->o.engine, c->arg, event, payload, plen, on_engine_ack,
                                      c, &err);
    else
        rc = cm_engine_signal(c->api->o.engine, c->arg, event,
                              cJSON_GetObjectItemCaseSensitive(c->body, "payload"), on_engine_ack,
                              c, &err);
    if (rc != 0)
        reply_err(c, &err, NULL);
}

/* In an operator action's transaction: its audit entry (when the instance's
** input names a patient), so the change never commits without it. */
static int audit_action(void *ud, const char *instance, const cJSON *input, cm_err *err)
{
    call *c = ud;
    const char *patient = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(input, "patient"));
    return patient ? audit(c, c->action, patient, "workflow", "ok", err) : 0;
}

/* pause, resume, cancel: operator actions, each its own transaction. */
static void instance_action(call *c, cm_engine_action what, const char *action)
{
    static const member m[] = {{"reason", cJSON_String, false}, {NULL, 0, false}};
    cm_engine *e = c->api->o.engine;
    cJSON *doc = NULL;
    cm_err err;
    size_t len;
    cm_http_req_body(c->req, &len);
    if (!check_params(c, NULL, NULL) || (len > 0 && (!parse_body(c) || !check_members(c, m))))
        return;
    c->action = action;
    int rc = cm_engine_act(e, c->arg, what, c->body ? body_str(c, "reason") : NULL, audit_action, c,
                           &err);
    if (rc == CM_EINVAL) {
        reply_error(c, 409, "wrong_state", NULL, "%s", err.msg);
        return;
    }
    long queued = 0;
    if (rc == 0)
        rc = cm_engine_get(e, c->arg, &doc, &err);
    /* the held events run in the batches after this answer: say how many */
    if (rc == 0 && what == CM_ENGINE_RESUME)
        rc = cm_engine_queued(e, c->arg, &queued, &err);
    if (rc != 0) {
        cm_model_doc_free(doc);
        reply_err(c, &err, NULL);
        return;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "instance", c->arg);
    cJSON_AddItemReferenceToObject(out, "state", cJSON_GetObjectItem(doc, "state"));
    cJSON_AddItemReferenceToObject(out, "status", cJSON_GetObjectItem(doc, "status"));
    if (what == CM_ENGINE_RESUME)
        cJSON_AddNumberToObject(out, "queued", (double)queued);
    reply_json(c, 200, out);
    cm_model_doc_free(doc);
}

static void h_instance_pause(call *c)
{
    instance_action(c, CM_ENGINE_PAUSE, "instance.pause");
}

static void h_instance_resume(call *c)
{
    instance_action(c, CM_ENGINE_RESUME, "instance.resume");
}

static void h_instance_cancel(call *c)
{
    instance_action(c, CM_ENGINE_CANCEL, "instance.cancel");
}

/* ---- failed events ------------------------------------------------------- */

static void h_failed_list(call *c)
{
    static const char *const params[] = {"limit", "cursor", NULL};
    long long after;
    int limit, n = 0;
    cJSON *all = NULL;
    cm_err err;
    if (!check_params(c, params, NULL) || !get_limit(c, &limit) || !get_seq_cursor(c, &after))
        return;
    if (cm_engine_failed(c->api->o.engine, &all, &err) != 0) {
        reply_err(c, &err, NULL);
        return;
    }
    cJSON *items = cJSON_CreateArray(), *it = all->child, *next;
    double last = 0;
    for (; it; it = next) {
        next = it->next;
        double seq = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "seq"));
        if (seq <= (double)after || n == limit)
            continue;
        cJSON_AddItemToArray(items, cJSON_DetachItemViaPointer(all, it));
        last = seq;
        n++;
    }
    cm_model_doc_free(all);
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddItemToObject(doc, "items", items);
    if (n == limit) {
        char cur[32];
        snprintf(cur, sizeof(cur), "%.0f", last);
        cJSON_AddStringToObject(doc, "next_cursor", cur);
    } else {
        cJSON_AddNullToObject(doc, "next_cursor");
    }
    reply_json(c, 200, doc);
}

static void failed_action(call *c, bool retry)
{
    char *end;
    cm_err err;
    long long seq = strtoll(c->arg, &end, 10);
    if (!check_params(c, NULL, NULL))
        return;
    if (!*c->arg || *end || seq < 1 || seq > LONG_MAX) {
        bad_param(c, "seq", "\"%.64s\" is not a failed event's seq (a positive whole number)",
                  c->arg);
        return;
    }
    int rc = retry ? cm_engine_retry_event(c->api->o.engine, (long)seq, &err)
                   : cm_engine_discard_event(c->api->o.engine, (long)seq, &err);
    if (rc != 0) {
        reply_err(c, &err, NULL);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddNumberToObject(doc, "seq", (double)seq);
    cJSON_AddStringToObject(doc, "result", retry ? "retrying" : "discarded");
    reply_json(c, 200, doc);
}

static void h_failed_retry(call *c)
{
    failed_action(c, true);
}

static void h_failed_discard(call *c)
{
    failed_action(c, false);
}

/* ---- peers, KPIs ------------------------------------------------------------ */

/* What peer shared with this node (share.h): its rows of table (directory or
** indicator) as an array of their documents under key of row. */
static int add_shared(call *c, cJSON *row, const char *key, sqlite3_stmt *st, const char *peer,
                      cm_err *err)
{
    cJSON *arr = cJSON_AddArrayToObject(row, key);
    int rc;
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *doc = cJSON_Parse((const char *)sqlite3_column_text(st, 0));
        if (doc)
            cJSON_AddItemToArray(arr, doc);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : cm_store_error(c->api->o.store, err, key);
}

static void h_peers(call *c)
{
    const cm_config *cfg = c->api->o.cfg;
    cm_err err;
    if (!check_params(c, NULL, NULL))
        return;
    cJSON *doc = cJSON_CreateObject(), *items = cJSON_AddArrayToObject(doc, "items");
    cJSON_AddBoolToObject(doc, "federation", cfg->fed_enabled);
    for (int i = 0; i < cfg->fed_npeers; i++) {
        const cm_peer_config *p = &cfg->fed_peers[i];
        long depth;
        double age;
        if (cm_fed_outbox_depth(c->api->o.store, p->id, cm_clock_now_ms(c->api->o.clock), &depth,
                                &age, &err) != 0) {
            cm_model_doc_free(doc);
            reply_err(c, &err, NULL);
            return;
        }
        cJSON *row = cJSON_CreateObject();
        cJSON_AddItemToArray(items, row);
        cJSON_AddStringToObject(row, "id", p->id);
        cJSON_AddStringToObject(row, "endpoint", p->endpoint);
        cJSON_AddStringToObject(row, "public_key", p->public_key);
        int up = cm_fed_peer_up(c->api->o.fed, p->id);
        up < 0 ? cJSON_AddNullToObject(row, "up") : cJSON_AddBoolToObject(row, "up", up == 1);
        cJSON_AddNumberToObject(row, "outbox_depth", (double)depth);
        long parked;
        size_t parked_bytes;
        if (cm_fed_peer_parked(c->api->o.fed, p->id, &parked, &parked_bytes) == 0) {
            cJSON_AddNumberToObject(row, "parked", (double)parked);
            cJSON_AddNumberToObject(row, "parked_bytes", (double)parked_bytes);
        } else {
            cJSON_AddNullToObject(row, "parked");
            cJSON_AddNullToObject(row, "parked_bytes");
        }
        age < 0 ? cJSON_AddNullToObject(row, "oldest_pending_s")
                : cJSON_AddNumberToObject(row, "oldest_pending_s", age);
        sqlite3_stmt *dir = cm_store_prepare(
            c->api->o.store, "SELECT doc FROM directory WHERE peer = ?1 ORDER BY organization",
            &err);
        sqlite3_stmt *ind = dir ? cm_store_prepare(c->api->o.store,
                                                   "SELECT doc FROM indicator WHERE peer = ?1 "
                                                   "ORDER BY partnership, name",
                                                   &err)
                                : NULL;
        if (!ind || add_shared(c, row, "organizations", dir, p->id, &err) != 0 ||
            add_shared(c, row, "indicators", ind, p->id, &err) != 0) {
            cm_model_doc_free(doc);
            reply_err(c, &err, NULL);
            return;
        }
    }
    reply_json(c, 200, doc);
}

static void h_kpis(call *c)
{
    static const char *const params[] = {"name", "workflow", "since", NULL};
    static const char *const names[] = {"name", "count", "sum", "min", "max", "last_at"};
    char sincebuf[CM_TIME_BUFSZ];
    const char *since;
    cm_err err;
    if (!check_params(c, params, NULL) || !get_since(c, sincebuf, &since))
        return;
    sqlite3_stmt *st = cm_store_prepare(
        c->api->o.store,
        "SELECT name, count(*), sum(value), min(value), max(value), max(at) FROM kpi_observation "
        "WHERE (?1 IS NULL OR name = ?1) AND (?2 IS NULL OR workflow = ?2) AND "
        "(?3 IS NULL OR at >= ?3) GROUP BY name ORDER BY name",
        &err);
    if (!st) {
        reply_err(c, &err, NULL);
        return;
    }
    if (since)
        sqlite3_bind_text(st, 3, since, -1, SQLITE_TRANSIENT);
    for (int i = 0; i < 2; i++) {
        const char *v = cm_http_query_get(&c->mem.q, params[i]);
        if (v)
            sqlite3_bind_text(st, i + 1, v, -1, SQLITE_TRANSIENT);
    }
    cJSON *doc = cJSON_CreateObject(), *items = cJSON_AddArrayToObject(doc, "items");
    while (sqlite3_step(st) == SQLITE_ROW) {
        cJSON *row = cJSON_CreateObject();
        cJSON_AddItemToArray(items, row);
        for (int i = 0; i < 6; i++)
            if (i == 0 || i == 5)
                cJSON_AddStringToObject(row, names[i], (const char *)sqlite3_column_text(st, i));
            else
                cJSON_AddNumberToObject(row, names[i], sqlite3_column_double(st, i));
    }
    sqlite3_reset(st);
    reply_json(c, 200, doc);
}

/* ---- the clock (virtual clocks only move through here) ------------------------ */

static cJSON *clock_doc(cm_api *api)
{
    char now[CM_TIME_BUFSZ];
    cJSON *doc = cJSON_CreateObject();
    cm_time_format(cm_clock_now_ms(api->o.clock), now, sizeof(now));
    cJSON_AddStringToObject(doc, "now", now);
    cJSON_AddNumberToObject(doc, "now_ms", (double)cm_clock_now_ms(api->o.clock));
    cJSON_AddBoolToObject(doc, "virtual", cm_clock_is_virtual(api->o.clock));
    return doc;
}

static void h_clock_get(call *c)
{
    if (check_params(c, NULL, NULL))
        reply_json(c, 200, clock_doc(c->api));
}

/* POST /v1/clock {"advance_ms": N}: move a virtual clock (serve --virtual-clock)
** forward; due timers then run. */
static void h_clock_advance(call *c)
{
    static const int64_t max_ms = 10LL * 366 * 24 * 3600 * 1000;
    const cJSON *v;
    if (!check_params(c, NULL, NULL) || !parse_body(c))
        return;
    cJSON_ArrayForEach(v, c->body)
    {
        if (strcmp(v->string, "advance_ms") != 0) {
            reply_error(c, 422, "unknown_field", v->string, "%.64s: unknown field (use advance_ms)",
                        v->string);
            return;
        }
    }
    v = cJSON_GetObjectItemCaseSensitive(c->body, "advance_ms");
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble ||
        v->valuedouble < 0 || v->valuedouble > (double)max_ms) {
        reply_error(c, 422, "invalid", "advance_ms",
                    "advance_ms: required, a whole number of milliseconds from 0 to %lld",
                    (long long)max_ms);
        return;
    }
    if (!cm_clock_is_virtual(c->api->o.clock)) {
        reply_error(c, 409, "not_virtual", NULL,
                    "the node runs on the system clock (serve --virtual-clock TIME for a "
                    "virtual one)");
        return;
    }
    cm_clock_advance(c->api->o.clock, (int64_t)v->valuedouble);
    cm_log(CM_LOG_INFO, "clock.advanced", "%s moved the virtual clock %.0f ms forward",
           c->tok.actor, v->valuedouble);
    cm_engine_wake(c->api->o.engine);
    reply_json(c, 200, clock_doc(c->api));
}

/* ---- the audit trail (admin) ------------------------------------------------ */

static void h_audit(call *c)
{
    static const char *const params[] = {"patient", "actor",  "action", "since",
                                         "limit",   "cursor", NULL};
    static const char *const names[] = {"seq",     "at",      "actor",   "action", "patient",
                                        "classes", "purpose", "outcome", "detail"};
    long long after;
    int limit, n = 0;
    cm_err err;
    char sincebuf[CM_TIME_BUFSZ];
    const char *since;
    if (!check_params(c, params, NULL) || !get_limit(c, &limit) || !get_seq_cursor(c, &after) ||
        !get_since(c, sincebuf, &since))
        return;
    sqlite3_stmt *st = cm_store_prepare(
        c->api->o.store,
        "SELECT seq, at, actor, action, patient, classes, purpose, outcome, detail FROM audit "
        "WHERE seq > ?1 AND (?2 IS NULL OR patient = ?2) AND (?3 IS NULL OR actor = ?3) AND "
        "(?4 IS NULL OR action = ?4) AND (?5 IS NULL OR at >= ?5) ORDER BY seq LIMIT ?6",
        &err);
    if (!st) {
        reply_err(c, &err, NULL);
        return;
    }
    sqlite3_bind_int64(st, 1, after);
    for (int i = 0; i < 3; i++) {
        const char *v = cm_http_query_get(&c->mem.q, params[i]);
        if (v)
            sqlite3_bind_text(st, i + 2, v, -1, SQLITE_TRANSIENT);
    }
    if (since)
        sqlite3_bind_text(st, 5, since, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 6, limit);
    cJSON *doc = cJSON_CreateObject(), *items = cJSON_AddArrayToObject(doc, "items");
    long long last = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        cJSON *row = cJSON_CreateObject();
        cJSON_AddItemToArray(items, row);
        last = sqlite3_column_int64(st, 0);
        n++;
        cJSON_AddNumberToObject(row, names[0], (double)last);
        for (int i = 1; i < 9; i++)
            cJSON_AddStringToObject(row, names[i], (const char *)sqlite3_column_text(st, i));
    }
    sqlite3_reset(st);
    if (n == limit) {
        char cur[32];
        snprintf(cur, sizeof(cur), "%lld", last);
        cJSON_AddStringToObject(doc, "next_cursor", cur);
    } else {
        cJSON_AddNullToObject(doc, "next_cursor");
    }
    reply_json(c, 200, doc);
}

/* ---- health and metrics ----------------------------------------------------- */

static void h_healthz(call *c)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    if (check_params(c, NULL, NULL))
        reply_text(c, 200, NULL, ok, sizeof(ok) - 1);
}

static void h_readyz(call *c)
{
    cm_err err;
    char *id;
    if (!check_params(c, NULL, NULL))
        return;
    if (!c->api->ready || c->api->stopping) {
        reply_error(c, 503, "not_ready", NULL, "%s",
                    c->api->stopping ? "the node is shutting down" : "the node is starting");
        return;
    }
    if (cm_store_sync_status(c->api->o.store, &err) != 0) { /* before the node hears of it */
        reply_error(c, 503, "not_ready", NULL, "%s", err.msg);
        return;
    }
    if (!(id = cm_store_meta_get(c->api->o.store, "node_id", &err))) {
        reply_err(c, &err, NULL);
        return;
    }
    free(id);
    static const char ok[] = "{\"status\":\"ready\"}";
    reply_text(c, 200, NULL, ok, sizeof(ok) - 1);
}

/* A label value, escaped for the exposition format. */
static const char *lv(const char *s, char *buf, size_t bufsz)
{
    size_t n = 0;
    for (; s && *s && n + 3 < bufsz; s++) {
        if (*s == '\\' || *s == '"' || *s == '\n') {
            buf[n++] = '\\';
            buf[n++] = *s == '\n' ? 'n' : *s;
        } else {
            buf[n++] = *s;
        }
    }
    buf[n] = '\0';
    return buf;
}

static void metric_head(cm_buf *b, const char *name, const char *type, const char *help)
{
    cm_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metrics_engine(cm_api *api, cm_buf *b)
{
    cm_engine_stats s;
    cm_engine_stats_get(api->o.engine, &s);
    metric_head(b, "caremesh_events_processed_total", "counter",
                "Submissions, due timers and kept events run in committed batches.");
    cm_buf_printf(b, "caremesh_events_processed_total %llu\n", (unsigned long long)s.processed);
    metric_head(b, "caremesh_events_failed_total", "counter",
                "Runs that failed (refused, kept for retry or parked).");
    cm_buf_printf(b, "caremesh_events_failed_total %llu\n", (unsigned long long)s.failed);
    metric_head(b, "caremesh_lua_errors_total", "counter", "Handler runs that raised an error.");
    cm_buf_printf(b, "caremesh_lua_errors_total %llu\n", (unsigned long long)s.lua_errors);
    metric_head(b, "caremesh_lua_budget_kills_total", "counter",
                "Handler runs stopped by the instruction budget or the memory cap.");
    cm_buf_printf(b, "caremesh_lua_budget_kills_total %llu\n", (unsigned long long)s.budget_kills);
    /* whether engine.instance_cache fits the running instances taking events */
    metric_head(b, "caremesh_instance_cache_hits_total", "counter",
                "Steps whose instance was kept in memory (engine.instance_cache).");
    cm_buf_printf(b, "caremesh_instance_cache_hits_total %llu\n", (unsigned long long)s.cache_hits);
    metric_head(b, "caremesh_instance_cache_misses_total", "counter",
                "Steps that read their instance's row.");
    cm_buf_printf(b, "caremesh_instance_cache_misses_total %llu\n",
                  (unsigned long long)s.cache_misses);
    metric_head(
        b, "caremesh_instance_cache_evictions_total", "counter",
        "Running instances dropped from memory to make room (the one stepped longest ago).");
    cm_buf_printf(b, "caremesh_instance_cache_evictions_total %llu\n",
                  (unsigned long long)s.cache_evictions);
    metric_head(b, "caremesh_instance_cache_entries", "gauge",
                "Running instances kept in memory now.");
    cm_buf_printf(b, "caremesh_instance_cache_entries %llu\n", (unsigned long long)s.cache_entries);
    metric_head(b, "caremesh_event_latency_seconds", "histogram",
                "From submission to acknowledgement after the commit.");
    for (int i = 0; i < CM_ENGINE_LATENCY_BUCKETS; i++)
        cm_buf_printf(b, "caremesh_event_latency_seconds_bucket{le=\"%g\"} %llu\n",
                      cm_engine_latency_bounds[i], (unsigned long long)s.latency_le[i]);
    cm_buf_printf(
        b,
        "caremesh_event_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
        "caremesh_event_latency_seconds_sum %.6f\ncaremesh_event_latency_seconds_count %llu\n",
        (unsigned long long)s.latency_count, s.latency_sum, (unsigned long long)s.latency_count);
}

/* ---- work off the loop: audit verify and the store's gauges -------------------
** Each runs on libuv's thread pool with a read connection of its own, in one
** read transaction (a consistent snapshot while the loop goes on writing). */

typedef struct job {
    uv_work_t w;
    cm_api *api;
    call *c;      /* verify: the request; metrics: NULL (the waiters are on the API) */
    bool metrics; /* else: verify */
    char *path;   /* the database */
    int64_t now_ms;
    int npeers;
    char (*peers)[CM_ID_MAX + 1];
    int rc;
    cm_err err;
    long entries; /* verify */
    cm_buf out;   /* metrics */
} job;

/* Instances, timers and outbox gauges, read through store (the job's). */
static int metrics_store(cm_store *store, job *j, cm_buf *b, cm_err *err)
{
    char l1[2 * CM_NAME_MAX], l2[2 * CM_NAME_MAX], l3[64];
    sqlite3_stmt *st = cm_store_prepare(store,
                                        "SELECT b.workflow, s.state, b.status, count(*) "
                                        "FROM instance_base b JOIN instance_step s ON s.seq = "
                                        "b.seq GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                                        err);
    if (!st)
        return err->code;
    metric_head(b, "caremesh_instances", "gauge", "Instances by workflow, state and status.");
    while (sqlite3_step(st) == SQLITE_ROW)
        cm_buf_printf(b, "caremesh_instances{workflow=\"%s\",state=\"%s\",status=\"%s\"} %lld\n",
                      lv((const char *)sqlite3_column_text(st, 0), l1, sizeof(l1)),
                      lv((const char *)sqlite3_column_text(st, 1), l2, sizeof(l2)),
                      lv((const char *)sqlite3_column_text(st, 2), l3, sizeof(l3)),
                      (long long)sqlite3_column_int64(st, 3));
    sqlite3_reset(st);
    if (!(st = cm_store_prepare(store, "SELECT count(*) FROM timer", err)))
        return err->code;
    metric_head(b, "caremesh_timers_pending", "gauge", "Durable timers not yet due or run.");
    if (sqlite3_step(st) == SQLITE_ROW)
        cm_buf_printf(b, "caremesh_timers_pending %lld\n", (long long)sqlite3_column_int64(st, 0));
    sqlite3_reset(st);
    long depth[CM_FED_MAX_PEERS];
    double age[CM_FED_MAX_PEERS];
    for (int i = 0; i < j->npeers; i++) {
        int rc = cm_fed_outbox_depth(store, j->peers[i], j->now_ms, &depth[i], &age[i], err);
        if (rc != 0)
            return rc;
    }
    metric_head(b, "caremesh_outbox_depth", "gauge", "Messages pending for a peer.");
    for (int i = 0; i < j->npeers; i++)
        cm_buf_printf(b, "caremesh_outbox_depth{peer=\"%s\"} %ld\n",
                      lv(j->peers[i], l1, sizeof(l1)), depth[i]);
    metric_head(b, "caremesh_outbox_oldest_age_seconds", "gauge",
                "Age of the oldest message pending for a peer (0 when none).");
    for (int i = 0; i < j->npeers; i++)
        cm_buf_printf(b, "caremesh_outbox_oldest_age_seconds{peer=\"%s\"} %.3f\n",
                      lv(j->peers[i], l1, sizeof(l1)), age[i] < 0 ? 0 : age[i]);
    return b->oom ? cm_err_set(err, CM_ENOMEM, "out of memory") : 0;
}

/* A verify about to read, in integration.api's own build of this file
** (tests/CMakeLists.txt, CM_TEST_VERIFY_HOLD): the test's hook, which can
** hold it there until the test had another request answered. */
#ifdef CM_TEST_VERIFY_HOLD
void cm__test_verify_hold(void);
#define verify_hold cm__test_verify_hold
#else
#define verify_hold() ((void)0)
#endif

static void job_run(uv_work_t *w)
{
    job *j = w->data;
    cm_store *store = NULL;
    cm_store_opts o;
    cm_store_opts_init(&o);
    o.path = j->path;
    o.read_only = true;
    if ((j->rc = cm_store_open(&store, &o, &j->err)) != 0)
        return;
    if (!j->metrics) { /* in chunks, each a short read: the WAL is checkpointed meanwhile */
        verify_hold();
        j->rc = cm_audit_verify(store, &j->entries, &j->err);
    } else if ((j->rc = cm_store_exec(store, "BEGIN", &j->err)) == 0) {
        j->rc = metrics_store(store, j, &j->out, &j->err);
        sqlite3_exec(cm_store_db(store), "COMMIT", NULL, NULL, NULL); /* read only */
    }
    j->rc = cm_store_close_after(&store, j->rc, &j->err);
}

static void job_free(job *j)
{
    free(j->path);
    free(j->peers);
    free(j->out.p);
    free(j);
}

/* Queue a job; on failure it is freed and the error returned. */
static int job_start(cm_api *api, job *j, void (*after)(uv_work_t *w, int status), cm_err *err)
{
    const char *path = sqlite3_db_filename(cm_store_db(api->o.store), "main");
    j->api = api;
    j->w.data = j;
    if (!path || !*path || !(j->path = strdup(path))) {
        job_free(j);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    int rc = uv_queue_work(api->o.loop, &j->w, job_run, after);
    if (rc != 0) {
        job_free(j);
        return cm_err_set(err, CM_EIO, "cannot queue work: %s", uv_strerror(rc));
    }
    return 0;
}

static void verify_done(uv_work_t *w, int status)
{
    job *j = w->data;
    call *c = j->c;
    if (status != 0)
        cm_err_set(&j->err, CM_EIO, "audit verify: %s", uv_strerror(status));
    if (status != 0 || (j->rc != 0 && j->rc != CM_EAUDIT)) {
        reply_err(c, &j->err, NULL);
        job_free(j);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddBoolToObject(doc, "ok", j->rc == 0);
    cJSON_AddNumberToObject(doc, "entries", (double)j->entries);
    if (j->rc != 0)
        cJSON_AddStringToObject(doc, "problem", j->err.msg);
    reply_json(c, 200, doc);
    job_free(j);
}

static void h_audit_verify(call *c)
{
    cm_err err;
    job *j;
    if (!check_params(c, NULL, NULL))
        return;
    if (!(j = calloc(1, sizeof(*j)))) {
        reply_error(c, 503, "out_of_memory", NULL, "the server is out of memory");
        return;
    }
    j->c = c;
    if (job_start(c->api, j, verify_done, &err) != 0)
        reply_err(c, &err, NULL);
}

/* Per peer: the delivers parked until the engine has room, and their bytes
** (each peer asked once, for both). */
static void metrics_parked(cm_api *api, cm_buf *b)
{
    const cm_config *cfg = api->o.cfg;
    static const char *const names[] = {"caremesh_peer_parked_messages",
                                        "caremesh_peer_parked_bytes"};
    static const char *const helps[] = {
        "Delivers from the peer parked in memory until the engine has room.",
        "Bytes of the delivers from the peer parked in memory."};
    long long v[2][CM_FED_MAX_PEERS];
    bool known[CM_FED_MAX_PEERS];
    for (int i = 0; i < cfg->fed_npeers; i++) {
        long n;
        size_t bytes;
        known[i] = cm_fed_peer_parked(api->o.fed, cfg->fed_peers[i].id, &n, &bytes) == 0;
        v[0][i] = known[i] ? (long long)n : 0;
        v[1][i] = known[i] ? (long long)bytes : 0;
    }
    for (int k = 0; k < 2; k++) {
        metric_head(b, names[k], "gauge", helps[k]);
        for (int i = 0; i < cfg->fed_npeers; i++) {
            char l1[2 * CM_NAME_MAX];
            if (known[i])
                cm_buf_printf(b, "%s{peer=\"%s\"} %lld\n", names[k],
                              lv(cfg->fed_peers[i].id, l1, sizeof(l1)), v[k][i]);
        }
    }
}

/* The answer: the engine's counters, the store's gauges (text), peers up,
** the HTTP counters. */
static void metrics_reply(call *c, const char *gauges, size_t glen)
{
    cm_buf b = {0};
    cm_api *api = c->api;
    const cm_config *cfg = api->o.cfg;
    metrics_engine(api, &b);
    if (glen)
        cm_buf_put(&b, gauges, glen);
    metric_head(&b, "caremesh_peer_up", "gauge", "1 when the link to the peer is up.");
    for (int i = 0; i < cfg->fed_npeers; i++) {
        char l1[2 * CM_NAME_MAX];
        int up = cm_fed_peer_up(api->o.fed, cfg->fed_peers[i].id);
        if (up >= 0)
            cm_buf_printf(&b, "caremesh_peer_up{peer=\"%s\"} %d\n",
                          lv(cfg->fed_peers[i].id, l1, sizeof(l1)), up);
    }
    if (api->o.fed) {
        cm_fed_apply_stats as;
        cm_fed_apply_stats_get(api->o.fed, &as);
        metric_head(&b, "caremesh_fed_applying", "gauge",
                    "Messages from peers with the engine, not yet answered.");
        cm_buf_printf(&b, "caremesh_fed_applying %ld\n", as.applying);
        metric_head(&b, "caremesh_fed_applying_max", "gauge",
                    "The most messages from peers with the engine at once since start.");
        cm_buf_printf(&b, "caremesh_fed_applying_max %ld\n", as.applying_max);
        metric_head(&b, "caremesh_fed_apply_pauses_total", "counter",
                    "Times delivers from peers began to wait until the engine answered.");
        cm_buf_printf(&b, "caremesh_fed_apply_pauses_total %ld\n", as.pauses);
        metrics_parked(api, &b);
    }
    count(api, c->rt->pattern, 200); /* this answer counts itself */
    metric_head(&b, "caremesh_http_requests_total", "counter",
                "HTTP requests by route and status.");
    for (int i = 0; i < api->ncounters; i++)
        cm_buf_printf(&b, "caremesh_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                      api->counters[i].route, api->counters[i].status,
                      (unsigned long long)api->counters[i].n);
    metric_head(&b, "caremesh_http_connections", "gauge", "Open HTTP connections.");
    cm_buf_printf(&b, "caremesh_http_connections %d\n", cm_http_server_connections(api->http));
    if (b.oom) {
        free(b.p);
        reply_error(c, 503, "out_of_memory", NULL, "the server is out of memory");
        return;
    }
    cm_http_respond(c->req, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len);
    free(b.p);
    call_free(c);
}

static void metrics_done(uv_work_t *w, int status)
{
    job *j = w->data;
    cm_api *api = j->api;
    call *waiting = api->metrics_waiting;
    api->metrics_waiting = NULL;
    api->metrics_running = false;
    if (status != 0)
        j->rc = cm_err_set(&j->err, CM_EIO, "metrics: %s", uv_strerror(status));
    if (j->rc == 0) {
        free(api->gauges.p);
        api->gauges = j->out;
        j->out = (cm_buf){0};
        api->gauges_at = uv_now(api->o.loop);
    }
    for (call *c = waiting, *next; c; c = next) {
        next = c->next;
        if (j->rc == 0)
            metrics_reply(c, api->gauges.p, api->gauges.len);
        else
            reply_err(c, &j->err, NULL);
    }
    job_free(j);
}

/* The store's gauges are read off the loop and kept for METRICS_MAX_AGE_MS:
** requests within that age are answered from them, the others wait for the
** one read that runs at a time. */
static void h_metrics(call *c)
{
    cm_api *api = c->api;
    const cm_config *cfg = api->o.cfg;
    cm_err err;
    if (!check_params(c, NULL, NULL))
        return;
    if (api->gauges.p && uv_now(api->o.loop) - api->gauges_at < METRICS_MAX_AGE_MS) {
        metrics_reply(c, api->gauges.p, api->gauges.len);
        return;
    }
    c->next = api->metrics_waiting;
    api->metrics_waiting = c;
    if (api->metrics_running)
        return;
    job *j = calloc(1, sizeof(*j));
    if (j && cfg->fed_npeers > 0 &&
        !(j->peers = calloc((size_t)cfg->fed_npeers, sizeof(*j->peers)))) {
        free(j);
        j = NULL;
    }
    if (!j) {
        api->metrics_waiting = c->next;
        reply_error(c, 503, "out_of_memory", NULL, "the server is out of memory");
        return;
    }
    j->metrics = true;
    j->now_ms = cm_clock_now_ms(api->o.clock);
    for (int i = 0; i < cfg->fed_npeers; i++)
        snprintf(j->peers[j->npeers++], sizeof(j->peers[0]), "%s", cfg->fed_peers[i].id);
    if (job_start(api, j, metrics_done, &err) != 0) {
        api->metrics_waiting = c->next;
        reply_err(c, &err, NULL);
        return;
    }
    api->metrics_running = true;
}

/* ---- the route table --------------------------------------------------------- */

#define RECORD_ROUTES(coll, kind)                                                                  \
    {"GET", "/v1/" coll, CM_SCOPE_READ, h_record_list, kind},                                      \
        {"POST", "/v1/" coll, CM_SCOPE_WRITE, h_record_create, kind},                              \
        {"GET", "/v1/" coll "/{}", CM_SCOPE_READ, h_record_get, kind},                             \
    {                                                                                              \
        "PATCH", "/v1/" coll "/{}", CM_SCOPE_WRITE, h_record_update, kind                          \
    }

static const route routes[] = {
    {"GET", "/healthz", SCOPE_OPEN_LOOPBACK, h_healthz, -1},
    {"GET", "/readyz", SCOPE_OPEN_LOOPBACK, h_readyz, -1},
    {"GET", "/metrics", SCOPE_OPEN_LOOPBACK, h_metrics, -1},
    RECORD_ROUTES("organizations", CM_KIND_ORGANIZATION),
    RECORD_ROUTES("providers", CM_KIND_PROVIDER),
    RECORD_ROUTES("patients", CM_KIND_PATIENT),
    RECORD_ROUTES("partnerships", CM_KIND_PARTNERSHIP),
    RECORD_ROUTES("consents", CM_KIND_CONSENT),
    RECORD_ROUTES("care-teams", CM_KIND_CARE_TEAM),
    RECORD_ROUTES("immunizations", CM_KIND_IMMUNIZATION),
    {"GET", "/v1/tasks", CM_SCOPE_READ, h_record_list, CM_KIND_TASK},
    {"GET", "/v1/tasks/{}", CM_SCOPE_READ, h_record_get, CM_KIND_TASK},
    {"PATCH", "/v1/tasks/{}", CM_SCOPE_WRITE, h_record_update, CM_KIND_TASK},
    {"POST", "/v1/tasks/{}/complete", CM_SCOPE_WRITE, h_task_complete, CM_KIND_TASK},
    {"GET", "/v1/workflows", CM_SCOPE_READ, h_workflows, -1},
    {"GET", "/v1/workflows/{}", CM_SCOPE_READ, h_workflows, -1},
    {"GET", "/v1/instances", CM_SCOPE_READ, h_instance_list, -1},
    {"POST", "/v1/instances", CM_SCOPE_WRITE, h_instance_start, -1},
    {"GET", "/v1/instances/{}", CM_SCOPE_READ, h_instance_get, -1},
    {"GET", "/v1/instances/{}/history", CM_SCOPE_READ, h_instance_history, -1},
    {"POST", "/v1/instances/{}/events", CM_SCOPE_WRITE, h_instance_signal, -1},
    {"POST", "/v1/instances/{}/pause", CM_SCOPE_WRITE, h_instance_pause, -1},
    {"POST", "/v1/instances/{}/resume", CM_SCOPE_WRITE, h_instance_resume, -1},
    {"POST", "/v1/instances/{}/cancel", CM_SCOPE_WRITE, h_instance_cancel, -1},
    {"GET", "/v1/failed-events", CM_SCOPE_READ, h_failed_list, -1},
    {"POST", "/v1/failed-events/{}/retry", CM_SCOPE_WRITE, h_failed_retry, -1},
    {"POST", "/v1/failed-events/{}/discard", CM_SCOPE_WRITE, h_failed_discard, -1},
    {"GET", "/v1/peers", CM_SCOPE_READ, h_peers, -1},
    {"GET", "/v1/kpis", CM_SCOPE_READ, h_kpis, -1},
    {"GET", "/v1/clock", CM_SCOPE_READ, h_clock_get, -1},
    {"POST", "/v1/clock", CM_SCOPE_ADMIN, h_clock_advance, -1},
    {"GET", "/v1/audit", CM_SCOPE_ADMIN, h_audit, -1},
    {"GET", "/v1/audit/verify", CM_SCOPE_ADMIN, h_audit_verify, -1},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

static const route unmatched = {"", "unmatched", CM_SCOPE_READ, NULL, -1};

/* routes[] compiled at start: each pattern's key, and the routes by their
** count of segments, in table order, so a path is matched only against the
** routes of its length. */
typedef struct route_index {
    route_key key[NROUTES];
    unsigned char order[NROUTES];
    unsigned char first[CM_HTTP_MAX_SEGMENTS + 2]; /* n segments: order[first[n]..first[n+1]) */
    /* no other route of its method matches a path it matches: when it
    ** matches, it is what the scan would find (route_memo) */
    bool alone[NROUTES];
} route_index;

_Static_assert(NROUTES < 256, "route_index counts routes in bytes");

/* Can a request match both route i and route j: the same method, as many
** segments, and each segment the same text or a {} in either? */
static bool routes_overlap(const route_index *ri, size_t i, size_t j)
{
    const route_key *a = &ri->key[i], *b = &ri->key[j];
    if (a->nseg != b->nseg || strcmp(routes[i].method, routes[j].method) != 0)
        return false;
    for (int s = 0; s < a->nseg; s++)
        if (s != a->wild && s != b->wild &&
            (a->len[s] != b->len[s] ||
             memcmp(routes[i].pattern + a->off[s], routes[j].pattern + b->off[s], a->len[s]) != 0))
            return false;
    return true;
}

/* Split each route's pattern ("/v1/tasks/{}/complete") into its key, then
** order the routes by their count of segments; mark the routes no other
** route of their method overlaps. */
static route_index *routes_compile(void)
{
    route_index *ri = calloc(1, sizeof(*ri));
    int count[CM_HTTP_MAX_SEGMENTS + 1] = {0};
    for (size_t i = 0; ri && i < NROUTES; i++) {
        const char *pat = routes[i].pattern, *p = pat + 1;
        route_key *k = &ri->key[i];
        k->wild = -1;
        while (*p) {
            size_t len = strcspn(p, "/");
            /* the table is ours: short patterns of few segments */
            assert(k->nseg < CM_HTTP_MAX_SEGMENTS && len < 256 && (size_t)(p - pat) < 256);
            if (len == 2 && p[0] == '{' && p[1] == '}')
                k->wild = k->nseg;
            k->off[k->nseg] = (unsigned char)(p - pat);
            k->len[k->nseg++] = (unsigned char)len;
            p += len;
            if (*p == '/')
                p++;
        }
        count[k->nseg]++;
    }
    if (!ri)
        return NULL;
    for (int n = 0; n <= CM_HTTP_MAX_SEGMENTS; n++)
        ri->first[n + 1] = (unsigned char)(ri->first[n] + count[n]);
    unsigned char next[CM_HTTP_MAX_SEGMENTS + 1];
    memcpy(next, ri->first, sizeof(next));
    for (size_t i = 0; i < NROUTES; i++)
        ri->order[next[ri->key[i].nseg]++] = (unsigned char)i;
    for (size_t i = 0; i < NROUTES; i++) {
        ri->alone[i] = true;
        for (size_t j = 0; j < NROUTES && ri->alone[i]; j++)
            ri->alone[i] = j == i || !routes_overlap(ri, i, j);
    }
    return ri;
}

/* Does route i match the call's path segments? c->arg
** gets the {} segment. */
static bool route_match(const cm_api *api, size_t i, call *c)
{
    const route_key *k = &api->routing->key[i];
    const cm_http_path *pa = &c->mem.path;
    if (k->nseg != c->nseg)
        return false;
    for (int j = 0; j < k->nseg; j++)
        if (j != k->wild && (k->len[j] != pa->len[j] ||
                             memcmp(routes[i].pattern + k->off[j], pa->seg[j], pa->len[j])))
            return false;
    c->arg = k->wild >= 0 ? pa->seg[k->wild] : NULL;
    return true;
}

/* Does path match route i as its text stands: the pattern's text before
** and after its {} the same bytes, the {} one segment of plain bytes
** (cm_http_plain_run: no escape, nothing past ASCII) shorter than a
** segment's most? Then c->arg is that segment, copied into the call: what
** cm_http_split_path and route_match would find, without the split. A path
** it does not take (escapes, a trailing slash, another route) is for them. */
static bool route_match_text(const cm_api *api, size_t i, call *c, const char *path)
{
    const route_key *k = &api->routing->key[i];
    const char *pat = routes[i].pattern;
    if (k->wild < 0)
        return strcmp(path, pat) == 0;
    size_t pre = k->off[k->wild], len;
    if (strncmp(path, pat, pre) != 0)
        return false;
    path += pre;
    len = cm_http_plain_run(path);
    /* the rest: "" or "/name...", which no escape or UTF-8 byte begins */
    if (len == 0 || len >= CM_HTTP_SEGMENT_MAX || strcmp(path + len, pat + pre + 2) != 0)
        return false;
    char *arg = c->mem.path.text;
    memcpy(arg, path, len);
    arg[len] = '\0';
    c->arg = arg;
    c->nseg = k->nseg;
    return true;
}

static void handle(void *ud, cm_http_req *req)
{
    cm_api *api = ud;
    cm_err err;
    call *c = call_new(api, req);
    if (!c) {
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"the server is out of memory\"}}";
        cm_http_refuse(req, 503, oom, sizeof(oom) - 1);
        return;
    }
    const char *method = cm_http_req_method(req), *path = cm_http_req_path(req);
    bool path_known = false;
    const route_index *ri = api->routing;
    size_t last = api->route_last;
    /* the route of the request before, when its text matches and no other
    ** route of the method could: what the split and the scan would find */
    if (last < NROUTES && strcmp(routes[last].method, method) == 0 &&
        route_match_text(api, last, c, path)) {
        path_known = true;
        c->rt = &routes[last];
    } else {
        c->nseg = cm_http_split_path(path, &c->mem.path, CM_HTTP_MAX_SEGMENTS);
    }
    int o = c->nseg >= 0 ? ri->first[c->nseg] : 0, end = c->nseg >= 0 ? ri->first[c->nseg + 1] : 0;
    for (; o < end && !c->rt; o++) {
        size_t i = ri->order[o];
        if (!route_match(api, i, c))
            continue;
        path_known = true;
        if (strcmp(routes[i].method, method) == 0) {
            c->rt = &routes[i];
            api->route_last = ri->alone[i] ? i : NROUTES;
        }
    }
    if (!c->rt)
        c->arg = NULL;
    bool open = c->rt && c->rt->scope == SCOPE_OPEN_LOOPBACK && api->o.cfg->api.open_loopback &&
                cm_http_req_loopback(req);
    const route *rt = c->rt;
    if (!rt) /* no route: any valid token learns that */
        c->rt = &unmatched;
    if (!open && !authenticate(c))
        return;
    if (!rt) {
        c->rt = NULL;
        if (path_known)
            reply_error(c, 405, "method_not_allowed", NULL, "%s is not allowed on %.200s", method,
                        cm_http_req_path(req));
        else
            reply_error(c, 404, "no_route", NULL, "no route %s %.200s (see docs/api.md)", method,
                        cm_http_req_path(req));
        return;
    }
    if (cm_http_query_parse(cm_http_req_query(req), &c->mem.q, &err) != 0) {
        bad_param(c, NULL, "%s", err.msg);
        return;
    }
    if (rt->kind >= 0 && c->arg && cm_id_check(c->arg) != 0) {
        reply_error(c, 404, "not_found", NULL, "no %s with id \"%.128s\" (not a valid id)",
                    cm_kind_name((cm_kind)rt->kind), c->arg);
        return;
    }
    rt->fn(c);
}

/* ---- life cycle -------------------------------------------------------------- */

static bool host_is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

static void limits_of(const cm_api_config *ac, cm_http_limits *lim)
{
    cm_http_limits_default(lim);
    lim->max_connections = ac->max_connections;
    lim->max_header_bytes = (size_t)ac->max_header_bytes;
    lim->max_body_bytes = (size_t)ac->max_body_bytes;
    lim->max_pipeline = ac->max_pipeline;
    lim->timeout_ms = ac->timeout_ms;
}

void cm_api_reconfigure(cm_api *api)
{
    cm_http_limits lim;
    if (!api || !api->http || api->stopping)
        return;
    limits_of(&api->o.cfg->api, &lim);
    cm_http_server_set_limits(api->http, &lim);
    tokens_forget(api);
}

int cm_api_start(const cm_api_opts *o, cm_api **out, cm_err *err)
{
    const cm_api_config *ac = &o->cfg->api;
    cm_http_limits lim;
    long tokens = 0;
    int rc;
    *out = NULL;
    if ((rc = cm_token_count_active(o->store, &tokens, err)) != 0)
        return rc;
    if (tokens == 0 && !host_is_loopback(ac->host))
        return cm_err_set(err, CM_EPERM,
                          "api.listen %s is not a loopback address and no API token exists: "
                          "create one first (caremesh token create --scope admin)",
                          ac->host);
    if (sodium_init() < 0)
        return cm_err_set(err, CM_EIO, "api: libsodium could not be initialized");
    cm_api *api = calloc(1, sizeof(*api));
    if (!api)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    api->o = *o;
    api->out.wipe = true;
    randombytes_buf(api->token_key, sizeof(api->token_key));
    api->route_last = NROUTES;
    if (!(api->routing = routes_compile())) {
        free(api);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    limits_of(ac, &lim);
    if ((rc = cm_http_server_start(o->loop, ac->host, ac->port, &lim, handle, api, &api->http,
                                   err)) != 0) {
        /* the server's handles are open: close them through a stop */
        api->stopping = true;
        cm_http_server_stop(api->http, NULL, NULL);
        *out = api;
        return rc;
    }
    api->patients = calloc(PATIENT_SLOTS, sizeof(*api->patients)); /* NULL: looked up each time */
    cm_engine_set_work_hook(o->engine, on_engine_work, api);
    cm_log(CM_LOG_INFO, "api.listen", "HTTP API on %s%s%s:%d (%ld active token(s))",
           strchr(ac->host, ':') ? "[" : "", ac->host, strchr(ac->host, ':') ? "]" : "",
           cm_http_server_port(api->http), tokens);
    *out = api;
    return 0;
}

int cm_api_port(const cm_api *api)
{
    return api && api->http ? cm_http_server_port(api->http) : 0;
}

void cm_api_set_ready(cm_api *api, bool ready)
{
    if (api)
        api->ready = ready;
}

void cm_api_set_gate(cm_api *api, const cm_http_gate *gate)
{
    if (api && api->http)
        cm_http_server_set_gate(api->http, gate);
}

void cm_api_durable(cm_api *api)
{
    if (api && api->http)
        cm_http_server_durable(api->http);
}

void cm_api_sync_lost(cm_api *api)
{
    if (api && api->http)
        cm_http_server_sync_lost(api->http);
}

static void on_http_stopped(void *ud)
{
    cm_api *api = ud;
    if (api->done) {
        void (*done)(void *) = api->done;
        api->done = NULL;
        done(api->done_ud);
    }
}

void cm_api_stop(cm_api *api, void (*done)(void *ud), void *ud)
{
    if (!api)
        return;
    if (!api->stopping) {
        api->done = done;
        api->done_ud = ud;
    }
    api->stopping = true;
    cm_http_server_stop(api->http, on_http_stopped, api);
}

void cm_api_destroy(cm_api **api_p)
{
    if (!api_p || !*api_p)
        return;
    cm_http_server_destroy(&(*api_p)->http);
    tokens_forget(*api_p);
    sodium_memzero((*api_p)->token_key, sizeof((*api_p)->token_key));
    for (call *c = (*api_p)->spare, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free((*api_p)->patients);
    free((*api_p)->routing);
    free((*api_p)->gauges.p);
    cm_buf_free(&(*api_p)->out);
    free(*api_p);
    *api_p = NULL;
}
