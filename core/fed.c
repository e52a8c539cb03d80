/*
** fed.c -- federation links (ROUTER, DEALERs, ZAP, monitors on uv_poll_t)
** and outbox/inbox delivery. See fed.h and docs/federation.md.
*/
#include "fed.h"

#include "share.h"

#include "log.h"
#include "model.h"
#include "strbuf.h"
#include "text.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93 /* draft option in libzmq 4.3 */
#endif

#define FED_MAX_PARTS    8
#define FED_RTO_MIN_MS   1000
#define FED_RTO_MAX_MS   30000
#define FED_HELLO_MIN_MS 500
#define FED_HELLO_MAX_MS 30000
#define FED_ROUTE_BATCH  1024 /* outbox rows routed per transaction */
#define FED_ROUTE_REFUSE 16   /* unroutable rows refused per pass (each its own transaction) */
#define FED_ROUTE_ORGS   16   /* receiving organizations looked up per routing pass */
#define FED_HELLO_LINKS  4
#define FED_BUSY_MIN_MS  100     /* a second busy for the same message: wait, doubling */
#define FED_FILL_CHUNK   256     /* outbox rows read per query when filling a window */
#define FED_PUMP_ROUNDS  16      /* flush-and-send rounds per turn before yielding the loop */
#define FED_INBOX_BATCH  1024    /* the inbox-only receiver stops reading at this many waiting */
#define FED_SWEEP_CHUNK  256     /* rows under a peer's mark written delivered per transaction */
#define FED_SWEEP_IDLE   4       /* sweep transactions per tick for a peer with nothing in flight */
#define FED_SWEEP_LAG    1048576 /* seqs under the mark unswept: sweep even while sending */
/* ... and records up to this many per transaction: a batch read below the
** mark fits whole, so none of its entries is turned away busy */
#define FED_INBOX_CAP     (FED_INBOX_BATCH + CM_FED_BATCH_MAX)
#define FED_ROUTER_RCVHWM 1024 /* messages a link may queue unread at the ROUTER */
/* apply mode: delivers read past CM_FED_APPLY_MAX wait parked in memory,
** at most this many from one peer and this many bytes from all; past
** either, the ROUTER stops reading (router_full) */
#define FED_PARK_PEER_MAX 8192
#define FED_PARK_BYTES    (64u * 1024 * 1024)
#define FED_SHARE_MS      5000 /* directory and indicators: checked (and resent) this often */
#define FED_BATCH_SEND    256  /* delivers per batch sent (1.2) */
#define FED_BATCH_BYTES                                                                            \
    (512 * 1024) /* a batch is sent before it grows past this; a larger                            \
                  * deliver goes alone */
/* Characters of a number in a message. Upstream cJSON up to 1.7.15 read at
** most 63 (a fixed buffer), and this refused longer numbers rather than let
** cJSON fail on them afterwards. Debian's cJSON, the one we build with, reads
** any length, so no parser needs the limit now; it is kept only so that what
** a node accepts from its peers does not change unannounced. */
#define FED_NUMBER_MAX 63

/* the ZMTP heartbeat: a PING on every link this often (cm_fed_opts.heartbeat_ms) */
#define FED_HEARTBEAT_MS     1000
#define FED_HEARTBEAT_MAX_MS 30000
/* TCP keepalive on every federation connection: the kernel probes a link
** idle this long, this often, this many times, and answers the other end's
** probes itself, read or not */
#define FED_KEEPALIVE_IDLE_S  30
#define FED_KEEPALIVE_INTVL_S 10
#define FED_KEEPALIVE_CNT     3
/* the listener's links: data left unacknowledged this long drops the link */
#define FED_LISTENER_MAXRT_MS                                                                      \
    ((FED_KEEPALIVE_IDLE_S + FED_KEEPALIVE_INTVL_S * FED_KEEPALIVE_CNT) * 1000)

/* ---- messages ------------------------------------------------------------ */

static const char *const type_names[] = {"hello",     "deliver",    "ack",  "error",
                                         "directory", "indicators", "batch"};

/* "node:seq" as a JSON string. */
static void buf_id(cm_buf *b, const char *node, int64_t seq)
{
    char num[32], *d = num + sizeof(num);
    uint64_t v = seq < 0 ? 0 - (uint64_t)seq : (uint64_t)seq;
    cm_buf_json_str(b, node);
    if (b->oom)
        return;
    b->len--; /* the closing quote: the seq goes on */
    *--d = '"';
    do
        *--d = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    if (seq < 0)
        *--d = '-';
    *--d = ':';
    cm_buf_put(b, d, (size_t)(num + sizeof(num) - d));
}

/* ,"key":"value" (nothing when value is empty and optional). */
static void buf_field(cm_buf *b, const char *key, const char *value, bool optional)
{
    if (optional && (!value || !*value))
        return;
    cm_buf_put(b, ",\"", 2);
    cm_buf_puts(b, key);
    cm_buf_put(b, "\":", 2);
    cm_buf_json_str(b, value ? value : "");
}

/* An answer to message id: ack with result (and reason when refused), or
** error busy when result is NULL. */
static void buf_answer(cm_buf *b, const char *id, const char *result, const char *reason)
{
    if (result) {
        cm_buf_puts(b, "{\"type\":\"ack\"");
        buf_field(b, "id", id, false);
        buf_field(b, "result", result, false);
        buf_field(b, "reason", reason, true);
    } else {
        cm_buf_puts(b, "{\"type\":\"error\",\"code\":\"busy\",\"message\":\"not recorded; resend "
                       "later\"");
        buf_field(b, "ref", id, false);
    }
    cm_buf_put(b, "}", 1);
}

void cm_fed_msg_clear(cm_fed_msg *m)
{
    cJSON_Delete(m->payload);
    cJSON_Delete(m->classes);
    cJSON_Delete(m->record);
    memset(m, 0, sizeof(*m));
}

/* ---- reading messages: one pass over the text, no tree ---------------------
** The envelope (type, ids, names) is read straight from the text; the
** payload, classes and record are checked as JSON and kept as the text
** they came as (cm_fed_text, borrowed from the buffer). Trees are built
** only for whoever asks (msg_trees): the inbox-only receiver stores the
** payload's text as it came. */

/* The keys a message may carry; any other is skipped. */
enum {
    K_TYPE = 0,
    K_ID,
    K_KIND,
    K_TO,
    K_FROM,
    K_PURPOSE,
    K_PATIENT,
    K_INSTANCE,
    K_REPLY_TO,
    K_PREV,
    K_PAYLOAD,
    K_CLASSES,
    K_RECORD,
    K_PROTO,
    K_NODE,
    K_CAPS,
    K_RESULT,
    K_REASON,
    K_CODE,
    K_REF,
    K_MESSAGE,
    K_ORGS,
    K_INDICATORS,
    K_MESSAGES,
    K_N
};
#define KEY(name)                                                                                  \
    {                                                                                              \
        name, sizeof(name) - 1                                                                     \
    }
static const struct {
    const char *name;
    size_t len;
} keys[K_N] = {KEY("type"),           KEY("id"),
               KEY("kind"),           KEY("to"),
               KEY("from"),           KEY("purpose"),
               KEY("patient"),        KEY("instance"),
               KEY("reply_to"),       KEY("prev"),
               KEY("payload"),        KEY("classes"),
               KEY("patient_record"), KEY("proto"),
               KEY("node"),           KEY("caps"),
               KEY("result"),         KEY("reason"),
               KEY("code"),           KEY("ref"),
               KEY("message"),        KEY("organizations"),
               KEY("indicators"),     KEY("messages")};
#undef KEY

/* Each known key's value in one message object (the first of its name);
** p is NULL for a key that is absent. */
typedef struct msg_fields {
    cm_fed_text v[K_N];
} msg_fields;

/* The JSON string t (quotes included, checked by a scan) decoded into out;
** -1 when it does not fit in outsz bytes with its NUL, -2 when it holds
** \u0000. */
static int text_str(cm_fed_text t, char *out, size_t outsz)
{
    const char *p = t.p + 1, *end = t.p + t.len - 1;
    size_t n = 0;
    while (p < end) {
        const char *run = p;
        while (p < end && *p != '\\')
            p++;
        if ((size_t)(p - run) >= outsz - n)
            return -1;
        memcpy(out + n, run, (size_t)(p - run));
        n += (size_t)(p - run);
        if (p >= end)
            break;
        char u[4];
        size_t ulen = 1;
        unsigned cp;
        const char *next = p + 2;
        int e = cm_json_unescape_short(p[1]);
        if (e >= 0) {
            u[0] = (char)e;
        } else {
            if (cm_json_uescape(p, end, &cp, &next) != 0)
                return -1; /* cannot happen: t was checked */
            if (cp == 0)
                return -2;
            ulen = cm_utf8_put(cp, u);
        }
        if (ulen >= outsz - n)
            return -1;
        memcpy(out + n, u, ulen);
        n += ulen;
        p = next;
    }
    out[n] = '\0';
    return 0;
}

/* Which known key the member name t (a checked JSON string) is; -1: none. */
static int key_of(cm_fed_text t)
{
    char name[24];
    const char *k = t.p + 1;
    size_t n = t.len - 2;
    if (memchr(k, '\\', n)) { /* spelled with escapes: compare it decoded */
        if (text_str(t, name, sizeof(name)) != 0)
            return -1;
        k = name;
        n = strlen(name);
    }
    for (int i = 0; i < K_N; i++)
        if (keys[i].len == n && memcmp(keys[i].name, k, n) == 0)
            return i;
    return -1;
}

/* The text of s as one JSON object (space around it allowed), every value
** checked (unless s.checked); the known keys' values into f. -1 when it is
** not. */
static int scan_object(cm_json_scan s, msg_fields *f)
{
    memset(f, 0, sizeof(*f));
    cm_json_scan_space(&s);
    if (s.p >= s.end || *s.p != '{')
        return -1;
    s.p++;
    cm_json_scan_space(&s);
    if (s.p < s.end && *s.p == '}')
        s.p++;
    else
        for (;;) {
            const char *k = s.p, *v;
            if (s.p >= s.end || *s.p != '"' || cm_json_scan_string(&s) != 0)
                return -1;
            int key = key_of((cm_fed_text){k, (size_t)(s.p - k)});
            cm_json_scan_space(&s);
            if (s.p >= s.end || *s.p != ':')
                return -1;
            s.p++;
            cm_json_scan_space(&s);
            v = s.p;
            if (cm_json_scan_value(&s, 1) != 0)
                return -1;
            if (key >= 0 && !f->v[key].p)
                f->v[key] = (cm_fed_text){v, (size_t)(s.p - v)};
            cm_json_scan_space(&s);
            if (s.p < s.end && *s.p == '}') {
                s.p++;
                break;
            }
            if (s.p >= s.end || *s.p != ',')
                return -1;
            s.p++;
            cm_json_scan_space(&s);
        }
    cm_json_scan_space(&s);
    return s.p == s.end ? 0 : -1;
}

/* The elements of the checked array t, one per call: 1 and *e, or 0 at
** the end. *at starts at 0. */
static int array_next(cm_fed_text t, size_t *at, cm_fed_text *e)
{
    cm_json_scan s = {.p = t.p + (*at ? *at : 1),
                      .end = t.p + t.len,
                      .checked = true,
                      .number_max = FED_NUMBER_MAX};
    cm_json_scan_space(&s);
    if (s.p < s.end && *s.p == ',')
        s.p++, cm_json_scan_space(&s);
    if (s.p >= s.end || *s.p == ']')
        return 0;
    const char *v = s.p;
    if (cm_json_scan_value(&s, 1) != 0)
        return 0; /* cannot happen: t was checked */
    *e = (cm_fed_text){v, (size_t)(s.p - v)};
    *at = (size_t)(s.p - t.p);
    return 1;
}

/* String field key into out; required or optional; length-checked. */
static int field_str(const msg_fields *f, int key, bool required, char *out, size_t outsz,
                     cm_err *err)
{
    cm_fed_text v = f->v[key];
    if (!v.p && !required)
        return 0;
    if (!v.p || *v.p != '"' || (required && v.len == 2))
        return cm_err_set(err, CM_EINVAL, "%s: must be a non-empty string", keys[key].name);
    int rc = text_str(v, out, outsz);
    if (rc != 0) {
        out[0] = '\0';
        return rc == -2 ? cm_err_set(err, CM_EINVAL, "%s: must not hold \\u0000", keys[key].name)
                        : cm_err_set(err, CM_EINVAL, "%s: longer than %zu characters",
                                     keys[key].name, outsz - 1);
    }
    return 0;
}

static int parse_proto(const char *s, int *major, int *minor)
{
    char *end;
    long a = strtol(s, &end, 10), b;
    if (end == s || *end != '.' || a < 0 || a > 9999)
        return -1;
    s = end + 1;
    b = strtol(s, &end, 10);
    if (end == s || *end || b < 0 || b > 9999)
        return -1;
    *major = (int)a;
    *minor = (int)b;
    return 0;
}

/* Whether t is an array whose elements are all strings. */
static bool text_strings(cm_fed_text t)
{
    cm_fed_text e;
    size_t at = 0;
    if (!t.p || *t.p != '[')
        return false;
    while (array_next(t, &at, &e))
        if (*e.p != '"')
            return false;
    return true;
}

/* The fields of message type m->type from f; the payload, classes, record
** and shared lists left as their text (m->raw_*). */
static int decode_fields(const msg_fields *f, cm_fed_msg *m, cm_err *err)
{
    char proto[16] = "";
    int rc;
    switch (m->type) {
    case CM_FED_HELLO: {
        cm_fed_text caps = f->v[K_CAPS], e;
        size_t at = 0;
        if ((rc = field_str(f, K_PROTO, true, proto, sizeof(proto), err)) != 0 ||
            (rc = field_str(f, K_NODE, true, m->node, sizeof(m->node), err)) != 0)
            return rc;
        if (parse_proto(proto, &m->major, &m->minor) != 0)
            return cm_err_set(err, CM_EINVAL, "proto: must be \"MAJOR.MINOR\"");
        if (caps.p && !text_strings(caps))
            return cm_err_set(err, CM_EINVAL, "caps: must be an array of names");
        while (caps.p && array_next(caps, &at, &e))
            if (e.len == 7 && memcmp(e.p, "\"batch\"", 7) == 0)
                m->caps |= CM_FED_CAP_BATCH;
        return 0;
    }
    case CM_FED_DELIVER:
        if ((rc = field_str(f, K_ID, true, m->id, sizeof(m->id), err)) != 0 ||
            (rc = field_str(f, K_KIND, true, m->kind, sizeof(m->kind), err)) != 0 ||
            (rc = field_str(f, K_TO, true, m->to, sizeof(m->to), err)) != 0 ||
            (rc = field_str(f, K_FROM, false, m->from, sizeof(m->from), err)) != 0 ||
            (rc = field_str(f, K_PURPOSE, false, m->purpose, sizeof(m->purpose), err)) != 0 ||
            (rc = field_str(f, K_PATIENT, false, m->patient, sizeof(m->patient), err)) != 0 ||
            (rc = field_str(f, K_INSTANCE, false, m->instance, sizeof(m->instance), err)) != 0 ||
            (rc = field_str(f, K_REPLY_TO, false, m->reply_to, sizeof(m->reply_to), err)) != 0 ||
            (rc = field_str(f, K_PREV, false, m->prev, sizeof(m->prev), err)) != 0)
            return rc;
        if (!f->v[K_PAYLOAD].p)
            return cm_err_set(err, CM_EINVAL, "payload: missing (any JSON value)");
        if (f->v[K_CLASSES].p && !text_strings(f->v[K_CLASSES]))
            return cm_err_set(err, CM_EINVAL, "classes: must be an array of data class names");
        if (f->v[K_RECORD].p && *f->v[K_RECORD].p != '{')
            return cm_err_set(err, CM_EINVAL, "patient_record: must be an object");
        m->raw_payload = f->v[K_PAYLOAD];
        m->raw_classes = f->v[K_CLASSES];
        m->raw_record = f->v[K_RECORD];
        return 0;
    case CM_FED_ACK:
        if ((rc = field_str(f, K_ID, true, m->id, sizeof(m->id), err)) != 0 ||
            (rc = field_str(f, K_RESULT, true, m->result, sizeof(m->result), err)) != 0)
            return rc;
        if (strcmp(m->result, "received") != 0 && strcmp(m->result, "duplicate") != 0 &&
            strcmp(m->result, "refused") != 0)
            return cm_err_set(err, CM_EINVAL, "result: must be received, duplicate or refused");
        return field_str(f, K_REASON, false, m->message, sizeof(m->message), err);
    case CM_FED_ERROR:
        if ((rc = field_str(f, K_CODE, true, m->code, sizeof(m->code), err)) != 0 ||
            (rc = field_str(f, K_REF, false, m->id, sizeof(m->id), err)) != 0 ||
            (rc = field_str(f, K_MESSAGE, false, m->message, sizeof(m->message), err)) != 0)
            return rc;
        return 0;
    case CM_FED_DIRECTORY:
    case CM_FED_INDICATORS: {
        int key = m->type == CM_FED_DIRECTORY ? K_ORGS : K_INDICATORS;
        if ((rc = field_str(f, K_ID, true, m->id, sizeof(m->id), err)) != 0)
            return rc;
        if (!f->v[key].p || *f->v[key].p != '[')
            return cm_err_set(err, CM_EINVAL, "%s: must be an array", keys[key].name);
        m->raw_payload = f->v[key];
        return 0;
    }
    default:
        return 0;
    }
}

/* The message's type; CM_FED_BATCH included (the caller decides). */
static int decode_type(const msg_fields *f, cm_fed_msg *m, cm_err *err)
{
    char type[16] = "";
    int rc = field_str(f, K_TYPE, true, type, sizeof(type), err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (strcmp(type, type_names[i]) == 0) {
            m->type = (cm_fed_type)i;
            return 0;
        }
    return cm_err_set(err, CM_EINVAL, "type: unknown message type \"%s\"", type);
}

/* Parse m's raw texts into trees: payload (a deliver's, or a directory's
** or indicators' list), classes and record. */
static int msg_trees(cm_fed_msg *m, cm_err *err)
{
    const struct {
        cm_fed_text t;
        cJSON **out;
    } parts[] = {
        {m->raw_payload, &m->payload}, {m->raw_classes, &m->classes}, {m->raw_record, &m->record}};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (parts[i].t.p && !*parts[i].out &&
            !(*parts[i].out = cJSON_ParseWithLength(parts[i].t.p, parts[i].t.len)))
            return cm_err_set(err, CM_ENOMEM, "out of memory");
    return 0;
}

/* As cm_fed_decode_any, the payload, classes and record left as text. */
static int decode_scan(const void *buf, size_t len, cm_fed_msg *m, cm_fed_batch *b, cm_err *err)
{
    msg_fields f;
    cm_fed_text e;
    size_t at = 0;
    int rc = 0, n = 0, cap = 0;
    memset(m, 0, sizeof(*m));
    memset(b, 0, sizeof(*b));
    if (len == 0 || len > CM_FED_MAX_MSG)
        return cm_err_set(err, CM_EINVAL, "message of %zu bytes (1 to %d allowed)", len,
                          CM_FED_MAX_MSG);
    if (scan_object(
            (cm_json_scan){.p = buf, .end = (const char *)buf + len, .number_max = FED_NUMBER_MAX},
            &f) != 0)
        return (rc = cm_model_text_finite(buf, len, "", err)) != 0 /* 1e999: named */
                   ? rc
                   : cm_err_set(err, CM_EINVAL, "not a JSON object");
    if ((rc = decode_type(&f, m, err)) != 0)
        goto done;
    if (m->type != CM_FED_BATCH) {
        rc = decode_fields(&f, m, err);
        goto done;
    }
    cm_fed_text list = f.v[K_MESSAGES];
    if (!list.p || *list.p != '[') {
        rc = cm_err_set(err, CM_EINVAL, "messages: must be an array of messages");
        goto done;
    }
    while (array_next(list, &at, &e)) {
        if (n == cap) {
            int ncap = cap ? cap * 4 : 64;
            cm_fed_text *more =
                n < CM_FED_BATCH_MAX ? realloc(b->entries, (size_t)ncap * sizeof(*more)) : NULL;
            if (more)
                cap = ncap;
            else {
                n++; /* past the cap (or out of memory): counted, not kept */
                while (array_next(list, &at, &e))
                    n++;
                break;
            }
            b->entries = more;
        }
        b->entries[n++] = e;
    }
    if (n < 1 || n > CM_FED_BATCH_MAX)
        rc = cm_err_set(err, CM_EINVAL, "messages: %d messages (1 to %d allowed)", n,
                        CM_FED_BATCH_MAX);
    else if (n > cap)
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
    else
        b->n = n;
done:
    if (rc != 0) {
        cm_fed_batch_free(b);
        cm_fed_msg_clear(m);
    }
    return rc;
}

int cm_fed_decode_any(const void *buf, size_t len, cm_fed_msg *m, cm_fed_batch *b, cm_err *err)
{
    int rc = decode_scan(buf, len, m, b, err);
    if (rc == 0 && m->type != CM_FED_BATCH && (rc = msg_trees(m, err)) != 0)
        cm_fed_msg_clear(m);
    return rc;
}

int cm_fed_decode(const void *buf, size_t len, cm_fed_msg *m, cm_err *err)
{
    cm_fed_batch b;
    int rc = cm_fed_decode_any(buf, len, m, &b, err);
    cm_fed_batch_free(&b);
    return rc;
}

int cm_fed_batch_scan(const cm_fed_batch *b, int i, cm_fed_msg *m, char id[192], cm_err *err)
{
    msg_fields f;
    int rc;
    memset(m, 0, sizeof(*m));
    id[0] = '\0';
    if (i < 0 || i >= b->n)
        return cm_err_set(err, CM_EINVAL, "messages[%d]: no such entry (%d in the batch)", i, b->n);
    cm_fed_text e = b->entries[i];
    if (*e.p != '{' || scan_object((cm_json_scan){.p = e.p,
                                                  .end = e.p + e.len,
                                                  .checked = true,
                                                  .number_max = FED_NUMBER_MAX},
                                   &f) != 0)
        return cm_err_set(err, CM_EINVAL, "messages[%d]: not a JSON object", i);
    if (f.v[K_ID].p && *f.v[K_ID].p == '"' && text_str(f.v[K_ID], id, 192) != 0)
        id[0] = '\0';
    if ((rc = decode_type(&f, m, err)) == 0 && m->type == CM_FED_BATCH)
        rc = cm_err_set(err, CM_EINVAL, "type: a batch cannot hold a batch");
    if (rc == 0)
        rc = decode_fields(&f, m, err);
    if (rc != 0) {
        cm_fed_msg_clear(m);
        cm_err_prefix(err, "messages[%d]", i);
    }
    return rc;
}

int cm_fed_batch_entry(const cm_fed_batch *b, int i, cm_fed_msg *m, char id[192], cm_err *err)
{
    int rc = cm_fed_batch_scan(b, i, m, id, err);
    if (rc == 0 && (rc = msg_trees(m, err)) != 0) {
        cm_fed_msg_clear(m);
        cm_err_prefix(err, "messages[%d]", i);
    }
    return rc;
}

void cm_fed_batch_free(cm_fed_batch *b)
{
    free(b->entries);
    memset(b, 0, sizeof(*b));
}

char *cm_fed_encode(const cm_fed_msg *m)
{
    cJSON *o = cJSON_CreateObject(), *caps;
    char proto[32], *out = NULL;
    if (!o || !cJSON_AddStringToObject(o, "type", type_names[m->type]))
        goto done;
    switch (m->type) {
    case CM_FED_HELLO:
        snprintf(proto, sizeof(proto), "%d.%d", m->major, m->minor);
        if (!cJSON_AddStringToObject(o, "proto", proto) ||
            !cJSON_AddStringToObject(o, "node", m->node) ||
            !(caps = cJSON_AddArrayToObject(o, "caps")))
            goto done;
        cJSON_AddItemToArray(caps, cJSON_CreateString("deliver"));
        cJSON_AddItemToArray(caps, cJSON_CreateString("directory"));
        cJSON_AddItemToArray(caps, cJSON_CreateString("indicators"));
        if (m->caps & CM_FED_CAP_BATCH)
            cJSON_AddItemToArray(caps, cJSON_CreateString("batch"));
        break;
    case CM_FED_DELIVER:
        if (!cJSON_AddStringToObject(o, "id", m->id) ||
            !cJSON_AddStringToObject(o, "kind", m->kind) ||
            !cJSON_AddStringToObject(o, "to", m->to) ||
            (m->from[0] && !cJSON_AddStringToObject(o, "from", m->from)) ||
            (m->purpose[0] && !cJSON_AddStringToObject(o, "purpose", m->purpose)) ||
            (m->patient[0] && !cJSON_AddStringToObject(o, "patient", m->patient)) ||
            (m->instance[0] && !cJSON_AddStringToObject(o, "instance", m->instance)) ||
            (m->reply_to[0] && !cJSON_AddStringToObject(o, "reply_to", m->reply_to)) ||
            (m->prev[0] && !cJSON_AddStringToObject(o, "prev", m->prev)) ||
            (m->classes && !cJSON_AddItemReferenceToObject(o, "classes", m->classes)) ||
            (m->record && !cJSON_AddItemReferenceToObject(o, "patient_record", m->record)) ||
            !m->payload || !cJSON_AddItemReferenceToObject(o, "payload", m->payload))
            goto done;
        break;
    case CM_FED_ACK:
        if (!cJSON_AddStringToObject(o, "id", m->id) ||
            !cJSON_AddStringToObject(o, "result", m->result) ||
            (m->message[0] && !cJSON_AddStringToObject(o, "reason", m->message)))
            goto done;
        break;
    case CM_FED_ERROR:
        if (!cJSON_AddStringToObject(o, "code", m->code) ||
            !cJSON_AddStringToObject(o, "message", m->message) ||
            (m->id[0] && !cJSON_AddStringToObject(o, "ref", m->id)))
            goto done;
        break;
    case CM_FED_DIRECTORY:
    case CM_FED_INDICATORS:
        if (!cJSON_AddStringToObject(o, "id", m->id) || !m->payload ||
            !cJSON_AddItemReferenceToObject(
                o, m->type == CM_FED_DIRECTORY ? "organizations" : "indicators", m->payload))
            goto done;
        break;
    default:
        break;
    }
    out = cJSON_PrintUnformatted(o);
done:
    cJSON_Delete(o);
    return out;
}

int cm_fed_zap_decide(const cm_peer_config *peers, int npeers, const char *domain,
                      const char *mechanism, const uint8_t *key, size_t keylen, char *key_z85)
{
    if (!key || keylen != 32 || !zmq_z85_encode(key_z85, key, 32))
        key_z85[0] = '\0';
    if (!domain || strcmp(domain, CM_FED_ZAP_DOMAIN) != 0 || !mechanism ||
        strcmp(mechanism, "CURVE") != 0 || !key_z85[0])
        return -1;
    for (int i = 0; i < npeers; i++)
        if (strcmp(peers[i].public_key, key_z85) == 0)
            return i;
    return -1;
}

/* ---- the links ----------------------------------------------------------- */

typedef struct fed_sock fed_sock;
typedef void (*fed_reader)(fed_sock *s, zmq_msg_t *parts, int nparts);

struct fed_sock {
    cm_fed *fed;
    void *zs;
    uv_poll_t poll;
    bool polling, draining;
    int peer; /* DEALER and monitor: the peer's index; -1 otherwise */
    fed_reader read;
    void (*after)(fed_sock *s); /* after a drain that read something; may be NULL */
    bool (*full)(fed_sock *s);  /* true: stop reading for now (after reads on); may be NULL */
    const char *name;
};

/* A message sent to a peer whose outbox row is not settled yet. */
typedef enum { FLIGHT_OPEN = 0, FLIGHT_DELIVERED, FLIGHT_REFUSED, FLIGHT_GONE } flight_state;

typedef struct fed_flight {
    int64_t seq;
    int64_t prev;   /* seq of the message before it to this peer (its `prev`); 0: none */
    uint32_t round; /* the peer's round it was last sent in; another round: (re)send it */
    int sends;      /* sends not yet counted in outbox.attempts */
    flight_state state;
    char result[16]; /* the peer's answer, once settled */
    char *reason;    /* refused: the peer's reason (owned) */
} fed_flight;

typedef struct fed_peer {
    const cm_peer_config *cfg;
    fed_sock dealer, mon;
    bool up;               /* our DEALER got the peer's hello */
    bool shook;            /* the link's CURVE handshake succeeded (since the last disconnect) */
    bool handshake_warned; /* a failed handshake was logged; quiet until one succeeds */
    bool refused;          /* it refused our version: back off long */
    bool batch;            /* its hello announced batches (1.2): delivers go in batches */
    cm_buf out;            /* the batch being filled, and the window entries it holds */
    int *out_win, nout;
    uint64_t hello_due; /* loop time of the next hello while down */
    uint64_t hello_ivl;
    /* The window: messages sent and not yet settled in the outbox, in seq
    ** order. Answers settle entries in memory; a flush writes them, one
    ** transaction for all, and drops them from the window. */
    fed_flight *win;
    int nwin, nsettled;
    /* the largest outbox seq delivered to it (fed_delivered), once read */
    int64_t delivered;
    bool delivered_known;
    int64_t swept;       /* the rows of p up to it are written delivered (sweep_peer); 0: unknown */
    bool idle;           /* nothing was in flight to p at the last tick */
    int64_t sent_max;    /* the highest seq put in the window since start (route_late) */
    uint32_t round;      /* bumped to send the whole window again (a rewind) */
    bool reprev;         /* recompute the prevs before sending again */
    bool pumping, again; /* peer_pump is running / has more to do */
    uint64_t hold_until; /* no sends before this loop time (busy backoff) */
    uint64_t busy_ivl;
    int64_t busy_seq;    /* the oldest unsettled message at the last busy */
    uint64_t resend_due; /* the oldest still unanswered then: rewind */
    /* what we share with it (share.h): hash of the text last sent, and of
    ** the text it acknowledged; resent when they differ */
    uint64_t share_sent[2], share_acked[2];
    char share_id[2][192]; /* the id of the last sent, which its ack names */
    uint64_t share_due;
    uint64_t rto;
    int64_t rto_seq;      /* the oldest message resend_due was set for */
    uint64_t last_answer; /* loop time of the last answer: answers flowing, no timeout */
    /* ROUTER side: routing ids of the latest links that said hello (a
    ** reconnect makes a new one before the old one is noticed gone) */
    uint8_t rid[FED_HELLO_LINKS][256];
    size_t rid_len[FED_HELLO_LINKS];
    int rid_next;
    long parked;        /* apply mode: its delivers parked (batch entries count each) */
    size_t parked_size; /* and the bytes they hold (counted as in park_bytes) */
} fed_peer;

/* The answers to a batch (1.2): one per entry, gathered until each has one,
** then sent back in entry order as one batch (or more, when they would not
** fit in one message). */
typedef struct fed_group {
    cm_fed *fed; /* NULL once the federation is gone: answers are dropped */
    uint8_t rid[256];
    size_t rid_len;
    int n, pending; /* entries, and answers still to come (+1 while it is read) */
    char **answers; /* each entry's answer as JSON text (owned; NULL: none) */
} fed_group;

/* A delivered message the engine is applying: the ack goes when it answers. */
typedef struct fed_ticket {
    cm_fed *fed;      /* NULL once the federation is gone */
    fed_group *group; /* it came in a batch: its answer goes there, as entry index */
    int index;
    struct fed_ticket *prev, *next;
    char peer[129], id[192], kind[129], to[129];
    uint8_t rid[256];
    size_t rid_len;
} fed_ticket;

/* Apply mode: a deliver (or batch) read while the engine held all it may,
** kept as it came until the engine's answers make room (fed_unpark). */
typedef struct fed_parked {
    struct fed_parked *next;
    zmq_msg_t parts[2]; /* routing id, body */
    int peer;
    long delivers;
} fed_parked;

/* A deliver the inbox-only receiver records with the rest of its batch. */
typedef struct fed_inbound {
    int peer;
    fed_group *group; /* it came in a batch: its answer goes there, as entry index */
    int index;
    uint8_t rid[256];
    size_t rid_len;
    char id[192], prev[192], kind[129], to[129];
    size_t payload, payload_len; /* the payload's text as it came: where in inq_text */
} fed_inbound;

struct cm_fed {
    cm_fed_opts o;
    cm_store_rowmark mark; /* durable_only: the outbox rows known durable */
    int window;
    int minor;             /* the protocol minor version spoken (opts.proto_minor) */
    cm_buf text;           /* scratch: one deliver being encoded */
    cm_buf ans;            /* scratch: answers being encoded */
    long batches, batched; /* batches sent to peers, and the delivers they carried */
    long sent;             /* delivers sent to peers, alone or in batches (resends too) */
    uint64_t poll_ms;
    uint64_t rto_min;    /* the first ack timeout (cm_fed_opts.resend_ms) */
    fed_ticket *tickets; /* answers outstanding */
    /* apply mode: messages handed to the engine and not yet answered (the
    ** tickets), the most at once, the times delivers began to wait parked
    ** at the mark (router_park), and whether they wait now */
    long applying, applying_max, apply_pauses;
    bool apply_paused;
    /* apply mode: delivers read while the engine was full, oldest first,
    ** their bytes, whether one is being taken now (fed_unpark), and
    ** whether a bound was reached (FED_PARK_*: reading stops) */
    fed_parked *park_head, *park_tail;
    size_t park_bytes;
    bool unparking, park_full;
    /* inbox-only receiver: two batches, one filling while the other commits,
    ** and the payloads' text of each */
    fed_inbound *inq[2];
    cm_buf inq_text[2];
    int ninq, inq_cur;
    bool inbox_flushing, inbox_again;
    bool stopped;
    void *ctx;
    fed_sock router, zap;
    fed_peer peers[CM_FED_MAX_PEERS];
    int npeers;
    uv_timer_t tick;
    bool tick_init;
    bool woken;     /* cm_fed_wake since the last tick: rows were queued */
    bool route_now; /* rows wait to be refused: route on the next tick */
    /* pending rows may wait without a peer: the engine must not queue rows
    ** routed (past them) until a committed pass has routed or refused them
    ** all, so rows reach each peer's window in seq order */
    bool unrouted;
    uint64_t routed_at; /* loop time of the last routing pass of its own */
};

static void sock_drain(fed_sock *s);

/* Close the parts of a message read, each wiped first: a deliver carries a
** patient's record (libzmq frees the memory without looking). */
static void msgs_close(zmq_msg_t *parts, int n)
{
    for (int i = 0; i < n; i++) {
        sodium_memzero(zmq_msg_data(&parts[i]), zmq_msg_size(&parts[i]));
        zmq_msg_close(&parts[i]);
    }
}

/* Read one whole message (all parts) without blocking; hand it to s->read.
** Returns false when nothing was ready. Parts past FED_MAX_PARTS are dropped. */
static bool sock_read_one(fed_sock *s)
{
    zmq_msg_t parts[FED_MAX_PARTS];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t tmp;
        zmq_msg_init(&tmp);
        if (zmq_msg_recv(&tmp, s->zs, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&tmp);
            if (n == 0)
                return false;
            break; /* cannot happen: parts arrive together */
        }
        more = zmq_msg_more(&tmp);
        if (n < FED_MAX_PARTS)
            parts[n++] = tmp;
        else
            zmq_msg_close(&tmp);
    }
    s->read(s, parts, n);
    msgs_close(parts, n);
    return true;
}

/* ZMQ_FD is edge-triggered: read until ZMQ_EVENTS says nothing is left. Sends
** made while reading are covered because the loop re-checks ZMQ_EVENTS. */
static void sock_drain(fed_sock *s)
{
    if (s->draining || !s->zs)
        return;
    bool any = false;
    s->draining = true;
    for (;;) {
        int ev = 0;
        size_t sz = sizeof(ev);
        if (zmq_getsockopt(s->zs, ZMQ_EVENTS, &ev, &sz) != 0 || !(ev & ZMQ_POLLIN))
            break;
        if ((s->full && s->full(s)) || !sock_read_one(s))
            break;
        any = true;
    }
    s->draining = false;
    if (any && s->after)
        s->after(s);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_drain(h->data);
}

/* Send parts (the last one ends the message) without blocking; -1 when the
** socket would block. A run of sends must end with sock_drain: a send can
** consume the edge that announced pending input. sock_send does both. */
static int sock_put(fed_sock *s, const void *const *bufs, const size_t *lens, int n)
{
    for (int i = 0; i < n; i++)
        if (zmq_send(s->zs, bufs[i], lens[i], ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0)) < 0)
            return -1;
    return 0;
}

static int sock_send(fed_sock *s, const void *const *bufs, const size_t *lens, int n)
{
    int rc = sock_put(s, bufs, lens, n);
    sock_drain(s);
    return rc;
}

static int sock_watch(cm_fed *fed, fed_sock *s, const char *name, fed_reader read, int peer,
                      cm_err *err)
{
    int fd;
    size_t sz = sizeof(fd);
    s->fed = fed;
    s->name = name;
    s->read = read;
    s->peer = peer;
    if (zmq_getsockopt(s->zs, ZMQ_FD, &fd, &sz) != 0)
        return cm_err_set(err, CM_EIO, "%s: ZMQ_FD: %s", name, zmq_strerror(errno));
    int rc = uv_poll_init(fed->o.loop, &s->poll, fd);
    if (rc != 0)
        return cm_err_set(err, CM_EIO, "%s: poll: %s", name, uv_strerror(rc));
    s->polling = true;
    s->poll.data = s;
    if ((rc = uv_poll_start(&s->poll, UV_READABLE, on_poll)) != 0)
        return cm_err_set(err, CM_EIO, "%s: poll: %s", name, uv_strerror(rc));
    /* read to empty once: a pipe only signals the FD after a read found it empty */
    sock_drain(s);
    return 0;
}

static int set_int(void *zs, int opt, int v)
{
    return zmq_setsockopt(zs, opt, &v, sizeof(v));
}

/* The PING interval heartbeat_ms asked for (cm_fed_opts.heartbeat_ms). */
static int heartbeat_interval(int heartbeat_ms)
{
    if (heartbeat_ms <= 0)
        return FED_HEARTBEAT_MS;
    return heartbeat_ms < FED_HEARTBEAT_MAX_MS ? heartbeat_ms : FED_HEARTBEAT_MAX_MS;
}

/* Options every federation socket gets: a PING every heartbeat_ms (see
** heartbeat_interval), and no TTL in it. A TTL would have the ROUTER at
** the other end drop the link when it reads nothing from it for that long,
** and a ROUTER does that on purpose while its engine is behind
** (router_full): ZeroMQ then stops reading the connection, PINGs too. Who
** times out a link on its heartbeats is set by each side: the DEALER
** (open_peer), never the ROUTER (cm_fed_listener_setup). TCP keepalive
** is the kernel's: it probes and answers whether or not ZeroMQ reads. */
static int link_options(void *zs, int heartbeat_ms)
{
    int64_t maxmsg = CM_FED_MAX_MSG + 4096;
    int rc = set_int(zs, ZMQ_LINGER, 0) | set_int(zs, ZMQ_HANDSHAKE_IVL, 5000) |
             set_int(zs, ZMQ_HEARTBEAT_IVL, heartbeat_interval(heartbeat_ms)) |
             set_int(zs, ZMQ_HEARTBEAT_TTL, 0) | set_int(zs, ZMQ_RECONNECT_IVL, 100) |
             set_int(zs, ZMQ_RECONNECT_IVL_MAX, 5000) | set_int(zs, ZMQ_TCP_KEEPALIVE, 1) |
             set_int(zs, ZMQ_TCP_KEEPALIVE_IDLE, FED_KEEPALIVE_IDLE_S) |
             set_int(zs, ZMQ_TCP_KEEPALIVE_INTVL, FED_KEEPALIVE_INTVL_S) |
             set_int(zs, ZMQ_TCP_KEEPALIVE_CNT, FED_KEEPALIVE_CNT) |
             /* a ROUTER drops what it cannot queue: room for a whole window of answers */
             set_int(zs, ZMQ_SNDHWM, CM_FED_WINDOW_MAX + 1000) |
             set_int(zs, ZMQ_RCVHWM, CM_FED_WINDOW_MAX + 1000);
    return rc | zmq_setsockopt(zs, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
}

static fed_peer *peer_by_id(cm_fed *fed, const char *id)
{
    for (int i = 0; id && i < fed->npeers; i++)
        if (strcmp(fed->peers[i].cfg->id, id) == 0)
            return &fed->peers[i];
    return NULL;
}

static void reply(fed_sock *s, const zmq_msg_t *rid, const cm_fed_msg *m)
{
    char *text = cm_fed_encode(m);
    if (!text) {
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory encoding a %s", type_names[m->type]);
        return;
    }
    if (rid) {
        const void *bufs[] = {zmq_msg_data((zmq_msg_t *)rid), text};
        size_t lens[] = {zmq_msg_size((zmq_msg_t *)rid), strlen(text)};
        sock_send(s, bufs, lens, 2);
    } else {
        const void *bufs[] = {text};
        size_t lens[] = {strlen(text)};
        sock_send(s, bufs, lens, 1);
    }
    free(text);
}

static void reply_error(fed_sock *s, const zmq_msg_t *rid, const char *code, const char *ref,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void reply_error(fed_sock *s, const zmq_msg_t *rid, const char *code, const char *ref,
                        const char *fmt, ...)
{
    cm_fed_msg m;
    va_list ap;
    memset(&m, 0, sizeof(m));
    m.type = CM_FED_ERROR;
    snprintf(m.code, sizeof(m.code), "%s", code);
    snprintf(m.id, sizeof(m.id), "%s", ref ? ref : "");
    va_start(ap, fmt);
    vsnprintf(m.message, sizeof(m.message), fmt, ap);
    va_end(ap);
    reply(s, rid, &m);
}

static void hello_msg(cm_fed *fed, cm_fed_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->type = CM_FED_HELLO;
    m->major = CM_FED_PROTO_MAJOR;
    m->minor = fed->minor;
    m->caps = fed->minor >= 2 ? CM_FED_CAP_BATCH : 0;
    snprintf(m->node, sizeof(m->node), "%s", fed->o.node_id);
}

/* ---- ZAP ----------------------------------------------------------------- */

static void zap_read(fed_sock *s, zmq_msg_t *parts, int n)
{
    cm_fed *fed = s->fed;
    char domain[64] = "", mech[16] = "", addr[64] = "", key[CM_KEY_Z85_LEN + 1];
    const char *status = "400", *text = "not a configured peer", *user = "";
    if (n < 6)
        return; /* not a ZAP request: libzmq only sends well-formed ones */
    snprintf(domain, sizeof(domain), "%.*s", (int)zmq_msg_size(&parts[2]),
             (const char *)zmq_msg_data(&parts[2]));
    snprintf(addr, sizeof(addr), "%.*s", (int)zmq_msg_size(&parts[3]),
             (const char *)zmq_msg_data(&parts[3]));
    snprintf(mech, sizeof(mech), "%.*s", (int)zmq_msg_size(&parts[5]),
             (const char *)zmq_msg_data(&parts[5]));
    int i = cm_fed_zap_decide(fed->o.cfg->fed_peers, fed->npeers, domain, mech,
                              n > 6 ? zmq_msg_data(&parts[6]) : NULL,
                              n > 6 ? zmq_msg_size(&parts[6]) : 0, key);
    if (i >= 0) {
        status = "200";
        text = "OK";
        user = fed->peers[i].cfg->id;
        cm_log(CM_LOG_INFO, "fed.admitted", "admitted peer %s from %s (public key %s)", user, addr,
               key);
    } else {
        cm_log(CM_LOG_WARN, "fed.refused",
               "refused a connection from %s: public key %s is not a configured peer "
               "(mechanism %s, domain %s)",
               addr, key[0] ? key : "(none)", mech, domain);
    }
    const void *bufs[] = {"1.0", zmq_msg_data(&parts[1]), status, text, user, ""};
    size_t lens[] = {3, zmq_msg_size(&parts[1]), 3, strlen(text), strlen(user), 0};
    sock_send(s, bufs, lens, 6);
}

/* ---- store: outbox and inbox --------------------------------------------- */

static bool store_free(cm_fed *fed)
{
    return !cm_store_in_tx(fed->o.store);
}

static void now_text(cm_fed *fed, char *buf)
{
    cm_time_format(cm_clock_now_ms(fed->o.clock), buf, CM_TIME_BUFSZ);
}

static void group_release(fed_group *g);

/* A group for the n answers to a batch from the link rid; NULL when out of
** memory. It is held (pending n + 1) until group_release after the read. */
static fed_group *group_new(cm_fed *fed, const zmq_msg_t *rid, int n)
{
    size_t len = zmq_msg_size((zmq_msg_t *)rid);
    fed_group *g = len <= sizeof(g->rid) ? calloc(1, sizeof(*g)) : NULL;
    if (g && !(g->answers = calloc((size_t)n, sizeof(*g->answers)))) {
        free(g);
        g = NULL;
    }
    if (!g)
        return NULL;
    g->fed = fed;
    memcpy(g->rid, zmq_msg_data((zmq_msg_t *)rid), len);
    g->rid_len = len;
    g->n = n;
    g->pending = n + 1;
    return g;
}

/* An entry answered with nothing (out of memory, or the federation gone):
** counted as answered, sent as nothing. */
static char group_none[1];

/* Entry i's answer (text owned; NULL: none, out of memory). */
static void group_put(fed_group *g, int i, char *text)
{
    if (i < 0 || i >= g->n || g->answers[i]) {
        free(text);
        return; /* answered already: the first answer stands */
    }
    g->answers[i] = text ? text : group_none;
    group_release(g);
}

/* One answer fewer to wait for; at none, send them (in entry order, as
** batches of at most CM_FED_MAX_MSG bytes) and free the group. The caller
** drains the ROUTER after a run of sends. */
static void group_release(fed_group *g)
{
    if (--g->pending > 0)
        return;
    cm_fed *fed = g->fed && !g->fed->stopped ? g->fed : NULL;
    cm_buf *b = fed ? &fed->ans : NULL;
    for (int i = 0, first = 1; fed && i <= g->n; i++) {
        const char *a = i < g->n && g->answers[i] != group_none ? g->answers[i] : NULL;
        size_t alen = a ? strlen(a) : 0;
        if (!first && (i == g->n || b->len + alen + 3 > CM_FED_MAX_MSG)) {
            cm_buf_put(b, "]}", 2);
            if (!b->oom) {
                const void *bufs[] = {g->rid, b->p};
                size_t lens[] = {g->rid_len, b->len};
                sock_put(&fed->router, bufs, lens, 2);
            } else
                cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory answering a batch");
            first = 1;
        }
        if (!a)
            continue;
        if (first)
            cm_buf_reset(b), cm_buf_puts(b, "{\"type\":\"batch\",\"messages\":[");
        else
            cm_buf_put(b, ",", 1);
        cm_buf_put(b, a, alen);
        first = 0;
    }
    for (int i = 0; i < g->n; i++)
        if (g->answers[i] != group_none)
            free(g->answers[i]);
    free(g->answers);
    free(g);
}

/* The error answer (code, about ref, message text) for entry i of g. */
static void group_error(fed_group *g, int i, const char *code, const char *ref, const char *text)
{
    cm_buf b = {0};
    cm_buf_puts(&b, "{\"type\":\"error\"");
    buf_field(&b, "code", code, false);
    buf_field(&b, "ref", ref, true);
    buf_field(&b, "message", text, false);
    cm_buf_put(&b, "}", 1);
    if (b.oom) {
        free(b.p);
        b.p = NULL;
    }
    group_put(g, i, b.p);
}

/* Answer message id from the link rid: an ack (result, and reason when it
** was refused), or error busy when result is NULL. Into g's batch as entry
** index when g; else alone. The caller drains the ROUTER after a run. */
static void send_ack(cm_fed *fed, const uint8_t *rid, size_t rid_len, fed_group *g, int index,
                     const char *id, const char *result, const char *reason)
{
    cm_buf own = {0}, *b = g ? &own : &fed->ans;
    cm_buf_reset(b);
    buf_answer(b, id, result, reason);
    if (b->oom) {
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory answering %s", id);
        free(own.p);
        if (g)
            group_put(g, index, NULL);
        return;
    }
    if (g) {
        group_put(g, index, own.p);
        return;
    }
    const void *bufs[] = {rid, b->p};
    size_t lens[] = {rid_len, b->len};
    sock_put(&fed->router, bufs, lens, 2);
}

/* Is (peer, id) in the inbox (received or refused)? -1 on a store error. */
static int inbox_has(cm_fed *fed, const char *peer, const char *id, cm_err *err)
{
    sqlite3_stmt *st =
        cm_store_prepare(fed->o.store, "SELECT 1 FROM inbox WHERE peer = ?1 AND msg_id = ?2", err);
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        cm_store_error(fed->o.store, err, "inbox");
        return -1;
    }
    return rc == SQLITE_ROW;
}

typedef enum { IN_RECEIVED, IN_DUPLICATE, IN_BUSY } inbound_result;

/* Record one message of the open transaction: a duplicate is left alone, one
** whose prev has not been recorded waits (busy), any other is inserted.
** last: the id recorded just before in this batch from the same peer, or "". */
static int inbox_record(cm_fed *fed, const fed_inbound *in, const char *text, const char *last,
                        const char *now, inbound_result *res, cm_err *err)
{
    const char *peer = fed->peers[in->peer].cfg->id;
    int has = 1;
    /* the message before it: most often the one just recorded in this batch */
    if (in->prev[0] && strcmp(in->prev, last) != 0 &&
        (has = inbox_has(fed, peer, in->prev, err)) <= 0) {
        if (has == 0 && (has = inbox_has(fed, peer, in->id, err)) == 0) {
            *res = IN_BUSY;
            return 0;
        }
        *res = IN_DUPLICATE; /* recorded before: the first answer stands */
        return has < 0 ? err->code : 0;
    }
    sqlite3_stmt *st = cm_store_prepare(fed->o.store,
                                        "INSERT OR IGNORE INTO inbox(peer, msg_id, kind, receiver, "
                                        "payload, received) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                        err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, in->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, in->to, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, text + in->payload, (int)in->payload_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, now, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return cm_store_error(fed->o.store, err, "inbox");
    *res = sqlite3_changes(cm_store_db(fed->o.store)) ? IN_RECEIVED : IN_DUPLICATE;
    return 0;
}

/* One batch of delivers in one transaction, then their answers in arrival
** order: nothing is acknowledged before the commit. */
static void inbox_commit(cm_fed *fed, fed_inbound *batch, const char *text, int n)
{
    inbound_result res[FED_INBOX_CAP];
    char now[CM_TIME_BUFSZ];
    cm_err err;
    int rc = -1, busy = 0, first_busy = -1;
    cm_err_clear(&err);
    if (!store_free(fed))
        cm_err_set(&err, CM_EDB, "store busy");
    else if ((rc = cm_store_begin(fed->o.store, &err)) == 0) {
        now_text(fed, now);
        for (int i = 0; i < n && rc == 0; i++) {
            const fed_inbound *before = i > 0 && res[i - 1] == IN_RECEIVED ? &batch[i - 1] : NULL;
            rc = inbox_record(fed, &batch[i], text,
                              before && before->peer == batch[i].peer ? before->id : "", now,
                              &res[i], &err);
        }
        if (rc == 0)
            rc = cm_store_commit(fed->o.store, &err);
        else
            cm_store_rollback(fed->o.store);
    }
    for (int i = 0; i < n; i++) {
        fed_inbound *in = &batch[i];
        const char *peer = fed->peers[in->peer].cfg->id;
        if (rc != 0)
            res[i] = IN_BUSY; /* nothing of the batch is recorded */
        if (res[i] == IN_BUSY) {
            if (busy++ == 0)
                first_busy = i;
            send_ack(fed, in->rid, in->rid_len, in->group, in->index, in->id, NULL, NULL);
        } else {
            bool dup = res[i] == IN_DUPLICATE;
            cm_log(CM_LOG_INFO, dup ? "fed.duplicate" : "fed.received", "%s %s (%s for %s) from %s",
                   dup ? "duplicate" : "received", in->id, in->kind, in->to, peer);
            if (!dup && fed->o.on_received)
                fed->o.on_received(fed->o.on_received_ud, peer, in->id, in->kind, in->to);
            send_ack(fed, in->rid, in->rid_len, in->group, in->index, in->id,
                     dup ? "duplicate" : "received", NULL);
        }
        in->group = NULL;
    }
    sock_drain(&fed->router);
    if (busy)
        cm_log(CM_LOG_WARN, "fed.busy",
               "%d message(s) from %s not recorded (will be resent), the first %s: %s", busy,
               fed->peers[batch[first_busy].peer].cfg->id, batch[first_busy].id,
               rc != 0 ? err.msg : "the message sent before it has not arrived");
}

/* Commit the delivers gathered so far (after a drain of the ROUTER, or when
** a batch is full). Answers sent meanwhile may read more: they go to the
** other batch and are committed next. */
static void inbox_flush(cm_fed *fed)
{
    if (fed->inbox_flushing) {
        fed->inbox_again = true;
        return;
    }
    fed->inbox_flushing = true;
    do {
        fed->inbox_again = false;
        int n = fed->ninq, side = fed->inq_cur;
        fed->inq_cur ^= 1;
        fed->ninq = 0;
        if (n > 0)
            inbox_commit(fed, fed->inq[side], fed->inq_text[side].p, n);
        cm_buf_wipe(&fed->inq_text[side]); /* the payloads: patient data */
    } while ((fed->inbox_again || fed->ninq > 0) && !fed->stopped);
    fed->inbox_flushing = false;
}

/* Queue a deliver for the next inbox batch; false when it cannot wait (the
** batch is full while the other is still being answered, or no memory). */
static bool inbox_queue(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, const cm_fed_msg *m,
                        fed_group *g, int index)
{
    size_t n = zmq_msg_size((zmq_msg_t *)rid);
    if (fed->ninq >= FED_INBOX_CAP)
        inbox_flush(fed);
    if (fed->ninq >= FED_INBOX_CAP || n > sizeof(fed->inq[0][0].rid))
        return false;
    fed_inbound *in = &fed->inq[fed->inq_cur][fed->ninq];
    cm_buf *text = &fed->inq_text[fed->inq_cur];
    if (!cm_buf_room(text, m->raw_payload.len)) {
        text->oom = false; /* what the batch holds so far stays whole */
        return false;
    }
    in->payload = text->len;
    in->payload_len = m->raw_payload.len;                   /* at most a message: CM_FED_MAX_MSG */
    cm_buf_put(text, m->raw_payload.p, m->raw_payload.len); /* stored as it came */
    in->peer = (int)(p - fed->peers);
    in->group = g;
    in->index = index;
    memcpy(in->rid, zmq_msg_data((zmq_msg_t *)rid), n);
    in->rid_len = n;
    cm_copy_str(in->id, sizeof(in->id), m->id);
    cm_copy_str(in->prev, sizeof(in->prev), m->prev);
    cm_copy_str(in->kind, sizeof(in->kind), m->kind);
    cm_copy_str(in->to, sizeof(in->to), m->to);
    fed->ninq++;
    return true;
}

/* Apply mode: no room under CM_FED_APPLY_MAX for a whole batch more. */
static bool apply_full(const cm_fed *fed)
{
    return fed->applying > CM_FED_APPLY_MAX - CM_FED_BATCH_MAX;
}

/* The ROUTER's drain: a full batch stops it; the flush commits the batch,
** and its answers' drain reads on. */
static void fed_unpark(cm_fed *fed);

static void router_after(fed_sock *s)
{
    if (s->fed->ninq > 0)
        inbox_flush(s->fed);
    /* answers given during the drain made room for what it parked */
    if (s->fed->park_head && !apply_full(s->fed))
        fed_unpark(s->fed);
}

/* Whether the ROUTER stops reading for now. The inbox-only receiver: at a
** full batch. Apply mode: only when the delivers parked at the mark
** (router_park) reach a bound; what is not read waits in ZeroMQ's queue
** (and, past its HWM, the peer's TCP window). Answers read on
** (cm_fed_answer drains). */
static bool router_full(fed_sock *s)
{
    cm_fed *fed = s->fed;
    if (!fed->o.apply)
        return fed->ninq >= FED_INBOX_BATCH;
    return fed->park_full;
}

/* What a parked message counts against FED_PARK_BYTES. */
static size_t parked_bytes(fed_parked *k)
{
    return sizeof(*k) + zmq_msg_size(&k->parts[0]) + zmq_msg_size(&k->parts[1]);
}

/* Apply mode: park the deliver or batch just read (parts, its entries
** delivers) from p behind those parked before, when the engine holds all
** it may or others wait already: it goes to the engine in its turn
** (fed_unpark). Hellos, directories and indicators read meanwhile are
** answered at once. False: not parked (take it now). */
static bool router_park(cm_fed *fed, fed_peer *p, zmq_msg_t *parts, long delivers)
{
    if (!fed->o.apply || fed->unparking || (!fed->park_head && !apply_full(fed)))
        return false;
    fed_parked *k = calloc(1, sizeof(*k));
    if (!k) {
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory keeping a message from %s", p->cfg->id);
        reply_error(&fed->router, &parts[0], "busy", NULL, "not recorded; resend later");
        return true;
    }
    for (int i = 0; i < 2; i++) {
        zmq_msg_init(&k->parts[i]);
        zmq_msg_move(&k->parts[i], &parts[i]);
    }
    k->peer = (int)(p - fed->peers);
    k->delivers = delivers;
    if (fed->park_tail)
        fed->park_tail->next = k;
    else
        fed->park_head = k;
    fed->park_tail = k;
    size_t bytes = parked_bytes(k);
    fed->park_bytes += bytes;
    p->parked += delivers;
    p->parked_size += bytes;
    if (!fed->apply_paused) {
        fed->apply_pauses++;
        cm_log(CM_LOG_DEBUG, "fed.paused",
               "%ld messages with the engine: delivers from peers wait until it answers",
               fed->applying);
    }
    fed->apply_paused = true;
    if (!fed->park_full && (p->parked >= FED_PARK_PEER_MAX || fed->park_bytes >= FED_PARK_BYTES)) {
        fed->park_full = true;
        cm_log(CM_LOG_WARN, "fed.paused",
               "%ld delivers from %s (%zu bytes from all peers) wait for the engine: reading "
               "from peers paused until it answers",
               p->parked, p->cfg->id, fed->park_bytes);
    }
    return true;
}

static void router_read(fed_sock *s, zmq_msg_t *parts, int n);

/* Hand the parked delivers to the engine, oldest first, while it has room
** for a whole batch more; then read on from the ROUTER. Not while the
** ROUTER is being read (its drain ends by calling here). */
static void fed_unpark(cm_fed *fed)
{
    if (fed->router.draining || fed->stopped)
        return;
    fed->router.draining = true; /* what arrives meanwhile waits in ZeroMQ */
    while (fed->park_head && !apply_full(fed) && !fed->stopped) {
        fed_parked *k = fed->park_head;
        if (!(fed->park_head = k->next))
            fed->park_tail = NULL;
        size_t bytes = parked_bytes(k);
        fed->park_bytes -= bytes;
        fed->peers[k->peer].parked -= k->delivers;
        fed->peers[k->peer].parked_size -= bytes;
        fed->unparking = true;
        router_read(&fed->router, k->parts, 2);
        fed->unparking = false;
        msgs_close(k->parts, 2);
        free(k);
    }
    if (fed->park_full && fed->park_bytes < FED_PARK_BYTES) {
        fed->park_full = false;
        for (int i = 0; i < fed->npeers; i++)
            fed->park_full |= fed->peers[i].parked >= FED_PARK_PEER_MAX;
    }
    if (!fed->park_head && !apply_full(fed))
        fed->apply_paused = false;
    fed->router.draining = false;
    sock_drain(&fed->router); /* the edge came while reading was held */
}

void cm_fed_answer(void *ticket, const char *result, const char *reason)
{
    fed_ticket *t = ticket;
    cm_fed *fed = t->fed;
    if (fed) {
        if (t->prev)
            t->prev->next = t->next;
        else
            fed->tickets = t->next;
        if (t->next)
            t->next->prev = t->prev;
        fed->applying--;
    }
    if (fed && !fed->stopped) {
        if (!result)
            cm_log(CM_LOG_WARN, "fed.busy", "message %s from %s not recorded (will be resent): %s",
                   t->id, t->peer, reason ? reason : "");
        else if (strcmp(result, "refused") == 0)
            cm_log(CM_LOG_WARN, "fed.refused_receive", "refused %s (%s for %s) from %s: %s", t->id,
                   t->kind, t->to, t->peer, reason ? reason : "");
        else
            cm_log(CM_LOG_INFO, strcmp(result, "duplicate") == 0 ? "fed.duplicate" : "fed.received",
                   "%s %s (%s for %s) from %s", result, t->id, t->kind, t->to, t->peer);
        if (result && strcmp(result, "received") == 0 && fed->o.on_received)
            fed->o.on_received(fed->o.on_received_ud, t->peer, t->id, t->kind, t->to);
        send_ack(fed, t->rid, t->rid_len, t->group, t->index, t->id, result, reason);
        /* after the send, and to take what waits when this answer brought
        ** the engine under the mark, then read on: ZMQ_FD gave its edge
        ** while reading was paused */
        fed_unpark(fed);
    } else if (t->group)
        group_put(t->group, t->index, NULL); /* gone: nothing is sent */
    free(t);
}

/* Hand m to the engine; the ack goes from cm_fed_answer after its commit. */
static void router_apply(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, const cm_fed_msg *m,
                         fed_group *g, int index)
{
    fed_ticket *t = calloc(1, sizeof(*t));
    size_t n = zmq_msg_size((zmq_msg_t *)rid);
    if (!t || n > sizeof(t->rid)) {
        free(t);
        if (g)
            send_ack(fed, NULL, 0, g, index, m->id, NULL, NULL);
        else
            reply_error(&fed->router, rid, "busy", m->id, "not recorded; resend later");
        return;
    }
    t->fed = fed;
    t->group = g;
    t->index = index;
    memcpy(t->rid, zmq_msg_data((zmq_msg_t *)rid), n);
    t->rid_len = n;
    cm_copy_str(t->peer, sizeof(t->peer), p->cfg->id);
    cm_copy_str(t->id, sizeof(t->id), m->id);
    cm_copy_str(t->kind, sizeof(t->kind), m->kind);
    cm_copy_str(t->to, sizeof(t->to), m->to);
    t->next = fed->tickets;
    if (fed->tickets)
        fed->tickets->prev = t;
    fed->tickets = t;
    if (++fed->applying > fed->applying_max)
        fed->applying_max = fed->applying;
    if (fed->o.apply(fed->o.engine_ud, p->cfg->id, m, t) != 0)
        cm_fed_answer(t, NULL, "the engine could not take it");
}

/* A deliver (alone, or entry index of the batch g answers). */
static void router_deliver(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, cm_fed_msg *m,
                           fed_group *g, int index)
{
    if (fed->o.apply) {
        cm_err err;
        if (msg_trees(m, &err) == 0) {
            router_apply(fed, p, rid, m, g, index);
            return;
        }
    } else if (inbox_queue(fed, p, rid, m, g, index))
        return;
    cm_log(CM_LOG_WARN, "fed.busy", "message %s from %s not recorded (will be resent): %s", m->id,
           p->cfg->id, fed->o.apply ? "out of memory" : "too many waiting");
    if (g)
        send_ack(fed, NULL, 0, g, index, m->id, NULL, NULL);
    else
        reply_error(&fed->router, rid, "busy", m->id, "not recorded; resend later");
}

/* A batch (1.2): each entry is taken as if it came alone, in order; a bad
** entry gets its own error answer and its neighbours go on. The answers go
** back together once each entry has one (group_release). */
static void router_batch(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, cm_fed_batch *b)
{
    fed_group *g = group_new(fed, rid, b->n);
    cm_fed_msg m;
    cm_err err;
    char id[192], text[600];
    int bad = 0;
    if (!g) {
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory taking a batch of %d from %s", b->n,
               p->cfg->id);
        reply_error(&fed->router, rid, "busy", NULL, "not recorded; resend later");
        return;
    }
    for (int i = 0; i < b->n; i++) {
        if (cm_fed_batch_scan(b, i, &m, id, &err) != 0) {
            if (bad++ == 0)
                cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a bad message in a batch: %s",
                       p->cfg->id, err.msg);
            group_error(g, i, "malformed", id, err.msg);
            continue;
        }
        if (m.type == CM_FED_DELIVER)
            router_deliver(fed, p, rid, &m, g, i);
        else {
            snprintf(text, sizeof(text), "messages[%d]: %s cannot travel in a batch", i,
                     type_names[m.type]);
            cm_log(CM_LOG_WARN, "fed.unsupported", "peer %s sent %s", p->cfg->id, text);
            group_error(g, i, "unsupported", id, text);
        }
        cm_fed_msg_clear(&m);
    }
    if (bad > 1)
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent %d bad messages in a batch of %d",
               p->cfg->id, bad, b->n);
    group_release(g);
}

/* A partner's directory or indicators: kept (replacing the last), acked. */
static void router_share(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, const cm_fed_msg *m)
{
    char why[300];
    cm_err err;
    int kept = 0, dropped = 0, rc;
    bool dir = m->type == CM_FED_DIRECTORY;
    if (!store_free(fed)) {
        reply_error(&fed->router, rid, "busy", m->id, "not recorded; resend later");
        return;
    }
    rc = dir ? cm_share_directory_keep(fed->o.store, fed->o.clock, p->cfg->id, m->payload, &kept,
                                       &dropped, why, sizeof(why), &err)
             : cm_share_indicators_keep(fed->o.store, fed->o.clock, p->cfg->id, m->payload, &kept,
                                        &err);
    if (rc == CM_EINVAL) {
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a bad %s: %s", p->cfg->id,
               type_names[m->type], err.msg);
        reply_error(&fed->router, rid, "malformed", m->id, "%s", err.msg);
        return;
    }
    if (rc != 0) {
        cm_log(CM_LOG_WARN, "fed.busy", "%s from %s not recorded: %s", type_names[m->type],
               p->cfg->id, err.msg);
        reply_error(&fed->router, rid, "busy", m->id, "not recorded; resend later");
        return;
    }
    if (dropped)
        cm_log(CM_LOG_WARN, "fed.directory", "peer %s: %d organization(s) dropped: %s", p->cfg->id,
               dropped, why);
    cm_log(CM_LOG_INFO, dir ? "fed.directory" : "fed.indicators", "peer %s shared %d %s",
           p->cfg->id, kept, dir ? "organization(s)" : "indicator(s)");
    cm_fed_msg ack;
    memset(&ack, 0, sizeof(ack));
    ack.type = CM_FED_ACK;
    snprintf(ack.id, sizeof(ack.id), "%s", m->id);
    snprintf(ack.result, sizeof(ack.result), "received");
    reply(&fed->router, rid, &ack);
}

static bool said_hello(const fed_peer *p, const zmq_msg_t *rid)
{
    size_t n = zmq_msg_size((zmq_msg_t *)rid);
    for (int i = 0; i < FED_HELLO_LINKS; i++)
        if (p->rid_len[i] == n && memcmp(p->rid[i], zmq_msg_data((zmq_msg_t *)rid), n) == 0)
            return true;
    return false;
}

static void router_hello(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, const cm_fed_msg *m)
{
    cm_fed_msg h;
    if (m->major != CM_FED_PROTO_MAJOR) {
        cm_log(CM_LOG_ERROR, "fed.version",
               "peer %s speaks protocol %d.%d; this node speaks %d.%d: refused", p->cfg->id,
               m->major, m->minor, CM_FED_PROTO_MAJOR, fed->minor);
        reply_error(&fed->router, rid, "version", NULL,
                    "protocol %d.%d is not supported (this node speaks %d.%d)", m->major, m->minor,
                    CM_FED_PROTO_MAJOR, fed->minor);
        return;
    }
    if (strcmp(m->node, p->cfg->id) != 0)
        cm_log(CM_LOG_WARN, "fed.hello",
               "peer %s says it is node \"%s\"; attributing to %s (its key)", p->cfg->id, m->node,
               p->cfg->id);
    size_t n = zmq_msg_size((zmq_msg_t *)rid);
    if (n == 0 || n > sizeof(p->rid))
        return;
    if (!said_hello(p, rid)) {
        memcpy(p->rid[p->rid_next], zmq_msg_data((zmq_msg_t *)rid), n);
        p->rid_len[p->rid_next] = n;
        p->rid_next = (p->rid_next + 1) % FED_HELLO_LINKS;
    }
    cm_log(CM_LOG_INFO, "fed.hello", "peer %s said hello (protocol %d.%d)", p->cfg->id, m->major,
           m->minor);
    hello_msg(fed, &h);
    reply(&fed->router, rid, &h);
}

/* ROUTER: [routing id][body]. The sender is the ZAP user id of the body. */
static void router_read(fed_sock *s, zmq_msg_t *parts, int n)
{
    cm_fed *fed = s->fed;
    cm_fed_msg m;
    cm_err err;
    if (n != 2) {
        cm_log(CM_LOG_WARN, "fed.malformed", "dropped a message of %d frames (2 expected)", n);
        return;
    }
    fed_peer *p = peer_by_id(fed, zmq_msg_gets(&parts[1], "User-Id"));
    if (!p) {
        cm_log(CM_LOG_WARN, "fed.malformed", "dropped a message from an unauthenticated link");
        return;
    }
    cm_fed_batch b;
    int rc = decode_scan(zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), &m, &b, &err);
    if (rc == 0 && (m.type == CM_FED_DIRECTORY || m.type == CM_FED_INDICATORS))
        rc = msg_trees(&m, &err);
    if (rc == 0 && m.type == CM_FED_BATCH && fed->minor < 2) { /* as a 1.1 node answers */
        cm_fed_batch_free(&b);
        rc = cm_err_set(&err, CM_EINVAL, "type: unknown message type \"batch\"");
    }
    if (rc != 0) {
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a bad message: %s", p->cfg->id, err.msg);
        reply_error(s, &parts[0], "malformed", NULL, "%s", err.msg);
        return;
    }
    if ((m.type == CM_FED_BATCH || m.type == CM_FED_DELIVER) && said_hello(p, &parts[0]) &&
        router_park(fed, p, parts, m.type == CM_FED_BATCH ? b.n : 1)) {
        if (m.type == CM_FED_BATCH)
            cm_fed_batch_free(&b);
        else
            cm_fed_msg_clear(&m);
        return;
    }
    if (m.type == CM_FED_BATCH) {
        if (said_hello(p, &parts[0]))
            router_batch(fed, p, &parts[0], &b);
        else {
            cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a batch before hello", p->cfg->id);
            reply_error(s, &parts[0], "hello-required", NULL, "say hello first");
        }
        cm_fed_batch_free(&b);
        return;
    }
    if (m.type == CM_FED_HELLO) {
        router_hello(fed, p, &parts[0], &m);
    } else if (!said_hello(p, &parts[0])) {
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent %s before hello", p->cfg->id,
               type_names[m.type]);
        reply_error(s, &parts[0], "hello-required", m.id, "say hello first");
    } else if (m.type == CM_FED_DELIVER) {
        router_deliver(fed, p, &parts[0], &m, NULL, 0);
    } else if (m.type == CM_FED_DIRECTORY || m.type == CM_FED_INDICATORS) {
        router_share(fed, p, &parts[0], &m);
    } else {
        cm_log(CM_LOG_WARN, "fed.unsupported", "peer %s sent %s, which this node does not take",
               p->cfg->id, type_names[m.type]);
        reply_error(s, &parts[0], "unsupported", m.id, "%s is not supported", type_names[m.type]);
    }
    cm_fed_msg_clear(&m);
}

/* ---- sending ------------------------------------------------------------- */

static bool share_acked(cm_fed *fed, fed_peer *p, const cm_fed_msg *m);
static int route_in_tx(cm_fed *fed, cm_err *err);

static void peer_down(fed_peer *p, const char *why)
{
    if (p->up)
        cm_log(CM_LOG_WARN, "fed.peer_down", "peer %s is down (%s)", p->cfg->id, why);
    p->up = false;
    p->round++;                                /* what was in flight goes again once it is back */
    p->share_acked[0] = p->share_acked[1] = 0; /* share again once it is back */
    p->share_due = 0;
    p->hello_ivl = FED_HELLO_MIN_MS;
    p->hello_due = 0;
}

/* The event send.refused for the instance that queued outbox row seq, in
** the open transaction (nothing when the row has no instance). */
static int tell_refused(cm_fed *fed, int64_t seq, const char *reason, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        fed->o.store, "SELECT instance, receiver, kind, purpose FROM outbox WHERE seq = ?1", err);
    int rc = 0;
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, seq);
    /* the column texts stay valid until the reset, after the call */
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) && fed->o.refused)
        rc = fed->o.refused(fed->o.engine_ud, (const char *)sqlite3_column_text(st, 0),
                            (const char *)sqlite3_column_text(st, 1),
                            (const char *)sqlite3_column_text(st, 2),
                            (const char *)sqlite3_column_text(st, 3), reason, err);
    sqlite3_reset(st);
    return rc;
}

/* Mark one row refused with its reason, and tell the instance that sent it;
** one transaction. The reason goes to the log too. */
static void outbox_refuse(cm_fed *fed, int64_t seq, const char *reason)
{
    char now[CM_TIME_BUFSZ];
    cm_err err;
    sqlite3_stmt *st;
    if (cm_store_begin(fed->o.store, &err) != 0)
        goto fail;
    st = cm_store_prepare(
        fed->o.store,
        "UPDATE outbox SET status = 'refused', reason = ?2, done_at = ?3 WHERE seq = ?1", &err);
    if (!st)
        goto rollback;
    now_text(fed, now);
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, now, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        cm_store_error(fed->o.store, &err, "outbox");
        goto rollback;
    }
    if (tell_refused(fed, seq, reason, &err) != 0)
        goto rollback;
    if (cm_store_commit(fed->o.store, &err) != 0)
        goto fail;
    cm_log(CM_LOG_WARN, "fed.refused_send", "outbox %lld refused: %s", (long long)seq, reason);
    if (fed->o.after_refused)
        fed->o.after_refused(fed->o.engine_ud);
    return;
rollback:
    cm_store_rollback(fed->o.store);
fail:
    cm_log(CM_LOG_ERROR, "fed.store", "refusing outbox %lld: %s", (long long)seq, err.msg);
}

#define OUTBOX_COLUMNS                                                                             \
    "seq, receiver, kind, payload, sender, purpose, classes, patient, record, instance, "          \
    "reply_to, json_valid(payload), "                                                              \
    "CASE WHEN json_valid(record) THEN json_type(record) = 'object' ELSE 0 END"

/* Column col as text ("" when NULL). */
static const char *column_str(sqlite3_stmt *st, int col)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    return v ? (const char *)v : "";
}

/* The deliver for the outbox row st is on (columns OUTBOX_COLUMNS), with
** prev, as JSON text into out (reset first). The stored payload and record
** go as they are stored (JSON text, checked by SQLite's json_valid); a
** payload that is not JSON goes as a string, a record that is not a JSON
** object not at all. Reads out->oom for out of memory. */
static void row_encode(cm_fed *fed, sqlite3_stmt *st, int64_t prev, cm_buf *out)
{
    cm_buf_reset(out);
    cm_buf_puts(out, "{\"type\":\"deliver\",\"id\":");
    buf_id(out, fed->o.node_id, sqlite3_column_int64(st, 0));
    buf_field(out, "kind", column_str(st, 2), false);
    buf_field(out, "to", column_str(st, 1), false);
    buf_field(out, "from", column_str(st, 4), true);
    buf_field(out, "purpose", column_str(st, 5), true);
    buf_field(out, "patient", column_str(st, 7), true);
    buf_field(out, "instance", column_str(st, 9), true);
    buf_field(out, "reply_to", column_str(st, 10), true);
    if (prev > 0) {
        cm_buf_puts(out, ",\"prev\":");
        buf_id(out, fed->o.node_id, prev);
    }
    const char *classes = column_str(st, 6);
    if (*classes) { /* "demographics,notes" as an array */
        bool first = true;
        cm_buf_puts(out, ",\"classes\":[");
        for (const char *c = classes, *comma; *c; c = *comma ? comma + 1 : comma) {
            char name[64];
            comma = strchr(c, ',');
            if (!comma)
                comma = c + strlen(c);
            size_t n = (size_t)(comma - c) < sizeof(name) ? (size_t)(comma - c) : sizeof(name) - 1;
            if (n == 0)
                continue;
            memcpy(name, c, n);
            name[n] = '\0';
            if (!first)
                cm_buf_put(out, ",", 1);
            cm_buf_json_str(out, name);
            first = false;
        }
        cm_buf_put(out, "]", 1);
    }
    if (sqlite3_column_int(st, 12)) {
        cm_buf_puts(out, ",\"patient_record\":");
        cm_buf_put(out, (const char *)sqlite3_column_text(st, 8),
                   (size_t)sqlite3_column_bytes(st, 8));
    }
    cm_buf_puts(out, ",\"payload\":");
    if (sqlite3_column_int(st, 11))
        cm_buf_put(out, (const char *)sqlite3_column_text(st, 3),
                   (size_t)sqlite3_column_bytes(st, 3));
    else /* the engine keeps a string payload as is */
        cm_buf_json_str(out, column_str(st, 3));
    cm_buf_put(out, "}", 1);
    if (out->oom)
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory encoding outbox %lld",
               (long long)sqlite3_column_int64(st, 0));
}

/* Send p's batch (the entries put since the last send); false when the
** socket would block, and the entries in it count as not sent. */
static bool batch_send(cm_fed *fed, fed_peer *p)
{
    if (p->nout == 0)
        return true;
    cm_buf_put(&p->out, "]}", 2);
    const void *bufs[] = {p->out.p};
    size_t lens[] = {p->out.len};
    int n = p->nout;
    p->nout = 0;
    if (p->out.oom || sock_put(&p->dealer, bufs, lens, 1) != 0) {
        for (int i = 0; i < n; i++) {
            fed_flight *f = &p->win[p->out_win[i]];
            f->round = 0; /* another round sends it */
            f->sends--;
        }
        return false;
    }
    fed->batches++;
    fed->batched += n;
    fed->sent += n;
    return true;
}

/* Put window entry wi (its deliver is text, len bytes) on the wire: into
** p's batch when p takes batches (sent by batch_send when full, or by the
** caller after its run), else alone. False when the socket would block. */
static bool flight_send(cm_fed *fed, fed_peer *p, int wi, const char *text, size_t len)
{
    fed_flight *f = &p->win[wi];
    if (!p->batch || len > FED_BATCH_BYTES) {
        const void *bufs[] = {text};
        size_t lens[] = {len};
        if (!batch_send(fed, p) || sock_put(&p->dealer, bufs, lens, 1) != 0)
            return false;
        fed->sent++;
    } else {
        if (p->nout > 0 && (p->nout >= FED_BATCH_SEND || p->out.len + len + 3 > FED_BATCH_BYTES) &&
            !batch_send(fed, p))
            return false;
        if (p->nout == 0) {
            cm_buf_reset(&p->out);
            cm_buf_puts(&p->out, "{\"type\":\"batch\",\"messages\":[");
        } else
            cm_buf_put(&p->out, ",", 1);
        cm_buf_put(&p->out, text, len);
        p->out_win[p->nout++] = wi;
    }
    f->round = p->round;
    f->sends++;
    return true;
}

/* One int64 from sql with p's id as ?1 (if sql has it); 0 when no row, -1 on
** error. */
static int64_t peer_query(cm_fed *fed, fed_peer *p, const char *sql)
{
    cm_err err;
    sqlite3_stmt *st = cm_store_prepare(fed->o.store, sql, &err);
    int64_t v = -1;
    if (!st) {
        cm_log(CM_LOG_ERROR, "fed.store", "%s", err.msg);
        return -1;
    }
    sqlite3_bind_text(st, 1, p->cfg->id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else if (rc == SQLITE_DONE)
        v = 0;
    else
        cm_log(CM_LOG_ERROR, "fed.store", "%s", sqlite3_errmsg(cm_store_db(fed->o.store)));
    sqlite3_reset(st);
    return v;
}

/* The peer's mark (fed_delivered): every pending row of p up to it is
** delivered; the window fills after it, and its first message names it as
** prev (p has it in its inbox). Rows reach p in seq order (route_late), so
** it is the message before that one. 0 when none; -1 on error. */
static int64_t delivered_before(cm_fed *fed, fed_peer *p)
{
    if (!p->delivered_known) {
        int64_t d = peer_query(fed, p, "SELECT seq FROM fed_delivered WHERE peer = ?1");
        if (d < 0)
            return -1;
        p->delivered = d;
        p->delivered_known = true;
    }
    return p->delivered;
}

/* (Re)arm the resend timer when the oldest message in flight changed. */
static void peer_arm(cm_fed *fed, fed_peer *p)
{
    if (p->nwin == 0 || p->win[0].seq == p->rto_seq)
        return;
    p->rto_seq = p->win[0].seq;
    p->rto = fed->rto_min;
    p->resend_due = uv_now(fed->o.loop) + p->rto;
}

/* Send the whole window again from its oldest message. A busy answer
** resends at once the first time, then backs off while the same oldest
** message keeps coming back busy. */
static void peer_rewind(cm_fed *fed, fed_peer *p, bool busy)
{
    uint64_t now = uv_now(fed->o.loop);
    int64_t head = p->nwin ? p->win[0].seq : 0;
    p->round++;
    p->reprev = true;
    if (busy && head != p->busy_seq) {
        p->busy_seq = head;
        p->busy_ivl = FED_BUSY_MIN_MS;
        p->hold_until = now;
    } else if (busy) {
        p->hold_until = now + p->busy_ivl;
        if ((p->busy_ivl *= 2) > FED_RTO_MAX_MS)
            p->busy_ivl = FED_RTO_MAX_MS;
    }
    p->resend_due = (p->hold_until > now ? p->hold_until : now) + p->rto;
}

/* Send again what the window holds that was not sent in this round, oldest
** first, reading each row back. False when the socket would block. */
static bool peer_resend(cm_fed *fed, fed_peer *p)
{
    cm_err err;
    uint32_t round = p->round;
    int64_t prev = -1;
    for (int i = 0; i < p->nwin; i++) {
        fed_flight *f = &p->win[i];
        if (p->reprev) { /* after a rewind: the chain as it stands now */
            if (prev < 0 && (prev = delivered_before(fed, p)) < 0) {
                batch_send(fed, p); /* what was put in the batch goes (or is undone) */
                return false;
            }
            f->prev = prev;
            prev = f->seq;
        }
        if (f->round == round)
            continue;
        sqlite3_stmt *st = cm_store_prepare(
            fed->o.store,
            "SELECT " OUTBOX_COLUMNS " FROM outbox WHERE seq = ?1 AND status = 'pending'", &err);
        if (!st) {
            cm_log(CM_LOG_ERROR, "fed.store", "%s", err.msg);
            batch_send(fed, p);
            return false;
        }
        sqlite3_bind_int64(st, 1, f->seq);
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW)
            row_encode(fed, st, f->prev, &fed->text);
        sqlite3_reset(st);
        if (step == SQLITE_DONE) { /* settled by someone else meanwhile: nothing to send */
            f->state = FLIGHT_GONE;
            p->nsettled++;
            continue;
        }
        if (step != SQLITE_ROW || fed->text.oom ||
            !flight_send(fed, p, i, fed->text.p, fed->text.len) || p->round != round) {
            batch_send(fed, p);
            return false;
        }
    }
    if (!batch_send(fed, p))
        return false;
    p->reprev = false;
    return true;
}

/* Whether the outbox row st is on (OUTBOX_COLUMNS) has a field the protocol
** does not carry (docs/federation.md, deliver); why says which. */
static bool row_unfit(sqlite3_stmt *st, char *why, size_t whysz)
{
    static const struct {
        int col;
        const char *name;
        int max; /* bytes */
    } fields[] = {{1, "to", 128},       {2, "kind", 128},    {4, "from", 128},
                  {5, "purpose", 63},   {7, "patient", 128}, {9, "instance", 128},
                  {10, "reply_to", 128}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (sqlite3_column_bytes(st, fields[i].col) > fields[i].max) {
            snprintf(why, whysz, "%s is longer than the %d characters the protocol allows",
                     fields[i].name, fields[i].max);
            return true;
        }
    if (sqlite3_column_bytes(st, 2) == 0) {
        snprintf(why, whysz, "kind is empty");
        return true;
    }
    return false;
}

/* Fill the window with pending rows routed to p, in seq order, each sent as
** it is read. A row the protocol cannot carry (too large, a field too long)
** is refused with the reason and skipped. */
static void peer_fill(cm_fed *fed, fed_peer *p)
{
    cm_err err;
    uint32_t round = p->round;
    int64_t durable = INT64_MAX; /* rows above it wait for the sync of their commit */
    if (fed->o.durable_only) {
        if (cm_store_in_tx(fed->o.store)) /* rows of an open transaction are not even committed */
            return;
        int64_t top = peer_query(fed, p, "SELECT coalesce(max(seq), 0) FROM outbox");
        if (top < 0)
            return;
        durable = cm_store_rowmark_update(fed->o.store, &fed->mark, top);
    }
    for (;;) {
        int room = fed->window - p->nwin, got = 0;
        /* after the window, or (empty) after the last row delivered to p:
        ** the rows of p up to it are delivered (fed_delivered), the first
        ** message names it as prev */
        int64_t after = p->nwin ? p->win[p->nwin - 1].seq : delivered_before(fed, p), bad = 0;
        char why[128];
        int64_t prev = after;
        bool stop = false;
        if (room <= 0 || after < 0)
            return;
        sqlite3_stmt *st = cm_store_prepare(fed->o.store,
                                            "SELECT " OUTBOX_COLUMNS " FROM outbox "
                                            "WHERE status = 'pending' AND peer = ?1 AND seq > ?2 "
                                            "AND seq <= ?4 ORDER BY seq LIMIT ?3",
                                            &err);
        if (!st) {
            cm_log(CM_LOG_ERROR, "fed.store", "%s", err.msg);
            return;
        }
        sqlite3_bind_text(st, 1, p->cfg->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, after);
        sqlite3_bind_int(st, 3, room < FED_FILL_CHUNK ? room : FED_FILL_CHUNK);
        sqlite3_bind_int64(st, 4, durable);
        while (!stop && sqlite3_step(st) == SQLITE_ROW) {
            int64_t seq = sqlite3_column_int64(st, 0);
            got++;
            if (row_unfit(st, why, sizeof(why))) {
                bad = seq;
                break;
            }
            row_encode(fed, st, prev, &fed->text);
            if (fed->text.oom) {
                stop = true;
                break;
            }
            if (fed->text.len > CM_FED_MAX_MSG) {
                snprintf(why, sizeof(why), "message larger than the 1 MiB the protocol allows");
                bad = seq;
                break;
            }
            fed_flight *f = &p->win[p->nwin];
            memset(f, 0, sizeof(*f));
            f->seq = seq;
            f->prev = prev;
            if (seq > p->sent_max)
                p->sent_max = seq;
            prev = seq;
            stop = !flight_send(fed, p, p->nwin++, fed->text.p, fed->text.len) || p->round != round;
        }
        sqlite3_reset(st);
        if (!batch_send(fed, p)) /* this chunk goes while the next one is read */
            stop = true;
        peer_arm(fed, p);
        if (bad) /* the next fill chains the rows after it to the one before it */
            outbox_refuse(fed, bad, why);
        if (stop || (got == 0 && !bad))
            return;
    }
}

/* Keep seq as the last row delivered to p (fed_delivered) when it is
** past the one kept; in the open transaction. */
static int mark_delivered(cm_fed *fed, fed_peer *p, int64_t seq, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(fed->o.store,
                                        "INSERT INTO fed_delivered(peer, seq) VALUES (?1, ?2) "
                                        "ON CONFLICT(peer) DO UPDATE SET seq = excluded.seq "
                                        "WHERE excluded.seq > seq",
                                        err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, p->cfg->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : cm_store_error(fed->o.store, err, "fed_delivered");
}

/* Write the settled answers in one transaction, then tell who listens and
** drop them from the window. Left for the next try if the store is busy. */
static void peer_flush(cm_fed *fed, fed_peer *p)
{
    char now[CM_TIME_BUFSZ], reason[1024];
    cm_err err;
    int refused = 0, rc = 0, clean = 0;
    int64_t mark = 0; /* the last delivered row of the settled head of the window */
    int head = 0;     /* the settled entries before the first open one */
    if (p->nsettled == 0 || !store_free(fed))
        return;
    while (head < p->nwin && p->win[head].state != FLIGHT_OPEN)
        if (p->win[head++].state == FLIGHT_DELIVERED)
            mark = p->win[head - 1].seq;
    /* Delivered marks alone commit without waiting for their own fsync
    ** (docs/federation.md, "Durability of the sender's marks"): nothing is
    ** acknowledged on them, the next synced commit makes them durable, and
    ** one lost in an OS crash is a resend the peer answers as a duplicate.
    ** A refusal tells the instance that sent the row, and routing may
    ** renumber a row (route_late) and sends what it routes: both synced, so
    ** no OS crash gives a seq that went out to another row. */
    bool marks_only = !fed->unrouted;
    for (int i = 0; i < p->nwin && marks_only; i++)
        marks_only = p->win[i].state != FLIGHT_REFUSED;
    if ((marks_only ? cm_store_begin_nosync(fed->o.store, &err)
                    : cm_store_begin(fed->o.store, &err)) != 0)
        goto fail;
    now_text(fed, now);
    for (int i = 0, j; i < p->nwin && rc == 0; i = j) {
        fed_flight *f = &p->win[i];
        bool ok = f->state == FLIGHT_DELIVERED;
        /* a run of delivered neighbours sent as often: one statement (the
        ** window holds every pending row of p between them, in seq order) */
        for (j = i + 1; ok && j < p->nwin && p->win[j].state == FLIGHT_DELIVERED &&
                        p->win[j].sends == f->sends;
             j++)
            ;
        if (!ok && f->state != FLIGHT_REFUSED)
            continue;
        /* delivered before the first open entry: fed_delivered moving past
        ** it says so, the row is not written (docs/store.md, outbox) */
        if (ok && i < head)
            continue;
        sqlite3_stmt *st = cm_store_prepare(
            fed->o.store,
            /* by seq (the rows of the run are neighbours there), not through
            ** outbox_pending: one lookup a row fewer */
            ok ? "UPDATE outbox SET status = 'delivered', done_at = ?2, attempts = attempts + ?3 "
                 "WHERE seq BETWEEN ?1 AND ?4 AND +peer = ?5 AND +status = 'pending'"
               : "UPDATE outbox SET status = 'refused', done_at = ?2, "
                 "attempts = attempts + ?3, reason = ?4 WHERE seq = ?1 AND status = 'pending'",
            &err);
        if (!st) {
            rc = err.code;
            break;
        }
        snprintf(reason, sizeof(reason), "node %s refused it: %s", p->cfg->id,
                 f->reason && *f->reason ? f->reason : "no reason given");
        sqlite3_bind_int64(st, 1, f->seq);
        sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, f->sends);
        if (!ok)
            sqlite3_bind_text(st, 4, reason, -1, SQLITE_STATIC);
        else {
            sqlite3_bind_int64(st, 4, p->win[j - 1].seq);
            sqlite3_bind_text(st, 5, p->cfg->id, -1, SQLITE_STATIC);
        }
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        rc = rc == SQLITE_DONE ? 0 : cm_store_error(fed->o.store, &err, "outbox");
        if (rc == 0 && !ok)
            rc = tell_refused(fed, f->seq, reason, &err);
    }
    if (rc == 0 && mark > 0)
        rc = mark_delivered(fed, p, mark, &err);
    /* rows queued meanwhile get their peer in this commit too */
    if (rc == 0 && !marks_only && (clean = route_in_tx(fed, &err)) < 0)
        rc = clean;
    if (rc != 0) {
        cm_store_rollback(fed->o.store);
        goto fail;
    }
    if (cm_store_commit(fed->o.store, &err) != 0)
        goto fail;
    if (!marks_only)
        fed->unrouted = !clean;
    if (p->delivered_known && mark > p->delivered)
        p->delivered = mark;
    int kept = 0;
    for (int i = 0; i < p->nwin; i++) {
        fed_flight *f = &p->win[i];
        if (f->state == FLIGHT_OPEN) {
            p->win[kept++] = *f;
            continue;
        }
        if (f->state == FLIGHT_DELIVERED)
            cm_log(CM_LOG_INFO, "fed.delivered", "%s:%lld delivered to %s (%s)", fed->o.node_id,
                   (long long)f->seq, p->cfg->id, f->result);
        else if (f->state == FLIGHT_REFUSED && ++refused)
            cm_log(CM_LOG_WARN, "fed.refused_send", "outbox %lld refused: node %s refused it: %s",
                   (long long)f->seq, p->cfg->id,
                   f->reason && *f->reason ? f->reason : "no reason given");
        if (f->state != FLIGHT_GONE && fed->o.on_settled)
            fed->o.on_settled(fed->o.on_settled_ud, p->cfg->id, f->seq, f->result);
        free(f->reason);
    }
    p->nwin = kept;
    p->nsettled = 0;
    peer_arm(fed, p);
    if (refused && fed->o.after_refused)
        fed->o.after_refused(fed->o.engine_ud);
    return;
fail:
    cm_log(CM_LOG_ERROR, "fed.store", "recording answers from %s: %s", p->cfg->id, err.msg);
}

/* Record what was answered, then send: first what the window must send
** again, then new rows. Answers read while sending make another round; a
** call made meanwhile (from a drain inside a send) only asks for one. */
static void peer_pump(cm_fed *fed, fed_peer *p)
{
    if (p->pumping) {
        p->again = true;
        return;
    }
    p->pumping = true;
    int rounds = 0;
    do {
        p->again = false;
        peer_flush(fed, p);
        if (p->up && !fed->stopped && p->nsettled == 0 && store_free(fed) &&
            uv_now(fed->o.loop) >= p->hold_until) {
            if (peer_resend(fed, p))
                peer_fill(fed, p);
            sock_drain(&p->dealer); /* after the run of sends: answers set again */
        }
    } while (p->again && !fed->stopped && ++rounds < FED_PUMP_ROUNDS);
    p->pumping = false;
    if (p->again)
        cm_fed_wake(fed); /* more answers came: go on next turn, let the loop breathe */
}

/* The window entry for outbox seq, or NULL (binary search: seq order). */
static fed_flight *flight_find(cm_fed *fed, fed_peer *p, const char *id)
{
    size_t n = strlen(fed->o.node_id);
    char *end;
    if (strncmp(id, fed->o.node_id, n) != 0 || id[n] != ':')
        return NULL;
    long long seq = strtoll(id + n + 1, &end, 10);
    if (end == id + n + 1 || *end)
        return NULL;
    int lo = 0, hi = p->nwin - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (p->win[mid].seq == seq)
            return &p->win[mid];
        if (p->win[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

/* An ack settles its message in memory; the flush after the drain writes it. */
static void dealer_ack(cm_fed *fed, fed_peer *p, const cm_fed_msg *m)
{
    fed_flight *f = flight_find(fed, p, m->id);
    p->last_answer = uv_now(fed->o.loop);
    if (!f || f->state != FLIGHT_OPEN)
        return; /* an answer to a resend already settled */
    bool refused = strcmp(m->result, "refused") == 0;
    f->state = refused ? FLIGHT_REFUSED : FLIGHT_DELIVERED;
    cm_copy_str(f->result, sizeof(f->result), m->result);
    if (refused && !(f->reason = strdup(m->message)))
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory keeping the reason for %s", m->id);
    p->nsettled++;
    p->again = true;
}

/* busy: the peer did not record a message of this round (its store, or the
** message before it has not arrived): send the window again from its start. */
static void dealer_busy(cm_fed *fed, fed_peer *p, const cm_fed_msg *m)
{
    fed_flight *f = flight_find(fed, p, m->id);
    if (!f || f->state != FLIGHT_OPEN || f->round != p->round)
        return; /* the rest of a round already sent again */
    cm_log(CM_LOG_INFO, "fed.resend", "peer %s did not record %s (%s): sending %d message(s) again",
           p->cfg->id, m->id, m->message, p->nwin);
    peer_rewind(fed, p, true);
}

static void dealer_after(fed_sock *s)
{
    peer_pump(s->fed, &s->fed->peers[s->peer]);
}

/* One answer (or hello) from the peer, alone or from a batch. */
static void dealer_msg(cm_fed *fed, fed_peer *p, const cm_fed_msg *m)
{
    if (m->type == CM_FED_HELLO && m->major != CM_FED_PROTO_MAJOR) {
        cm_log(CM_LOG_ERROR, "fed.version",
               "peer %s speaks protocol %d.%d; this node speaks %d.%d: not sending to it",
               p->cfg->id, m->major, m->minor, CM_FED_PROTO_MAJOR, fed->minor);
        p->refused = true;
    } else if (m->type == CM_FED_HELLO) {
        bool batch = fed->minor >= 2 && (m->caps & CM_FED_CAP_BATCH);
        if (!p->up)
            cm_log(CM_LOG_INFO, "fed.peer_up", "peer %s is up (protocol %d.%d%s)", p->cfg->id,
                   m->major, m->minor, batch ? ", batches" : "");
        /* A new link: what was in flight goes again. An answer to a hello
        ** sent again before the first answer came (each is answered) finds
        ** the peer up on the same link: what is in flight was sent on it
        ** and is waiting for its acks, so it does not go again (a link
        ** that dropped was marked down, and its round moved, by the
        ** monitor). */
        if (!p->up) {
            p->round++;
            p->again = true;
        }
        p->up = true;
        p->batch = batch;
        p->refused = false;
    } else if (m->type == CM_FED_ACK) {
        if (!share_acked(fed, p, m))
            dealer_ack(fed, p, m);
    } else if (m->type == CM_FED_ERROR && strcmp(m->code, "busy") == 0) {
        dealer_busy(fed, p, m);
    } else if (m->type == CM_FED_ERROR) {
        cm_log(strcmp(m->code, "version") == 0 ? CM_LOG_ERROR : CM_LOG_WARN,
               strcmp(m->code, "version") == 0 ? "fed.version" : "fed.peer_error",
               "peer %s answered error %s%s%s: %s", p->cfg->id, m->code, m->id[0] ? " for " : "",
               m->id, m->message);
        if (strcmp(m->code, "version") == 0)
            p->refused = true;
        if (strcmp(m->code, "hello-required") == 0)
            peer_down(p, "it asked for hello");
    }
}

/* DEALER: [body], from the peer whose server key we connected with: one
** message, or a batch of answers (1.2), each taken as if it came alone. */
static void dealer_read(fed_sock *s, zmq_msg_t *parts, int n)
{
    cm_fed *fed = s->fed;
    fed_peer *p = &fed->peers[s->peer];
    cm_fed_msg m;
    cm_fed_batch b;
    cm_err err;
    char id[192];
    if (n != 1 ||
        decode_scan(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), &m, &b, &err) != 0) {
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a bad reply: %s", p->cfg->id,
               n != 1 ? "wrong number of frames" : err.msg);
        return;
    }
    if (m.type != CM_FED_BATCH) {
        dealer_msg(fed, p, &m);
        cm_fed_msg_clear(&m);
        return;
    }
    for (int i = 0; i < b.n; i++) {
        if (cm_fed_batch_scan(&b, i, &m, id, &err) != 0) {
            cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a bad reply in a batch: %s",
                   p->cfg->id, err.msg);
            continue;
        }
        dealer_msg(fed, p, &m);
        cm_fed_msg_clear(&m);
    }
    cm_fed_batch_free(&b);
}

/* Monitor of a DEALER: [event u16 + value u32][endpoint]. */
static void mon_read(fed_sock *s, zmq_msg_t *parts, int n)
{
    cm_fed *fed = s->fed;
    fed_peer *p = &fed->peers[s->peer];
    uint16_t ev;
    if (n < 1 || zmq_msg_size(&parts[0]) < 6)
        return;
    memcpy(&ev, zmq_msg_data(&parts[0]), sizeof(ev));
    cm_log(CM_LOG_DEBUG, "fed.monitor", "peer %s: event 0x%x", p->cfg->id, (unsigned)ev);
    if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
        p->shook = true;
        p->handshake_warned = false;
        p->hello_due = 0; /* say hello on the next turn */
        cm_fed_wake(fed);
    } else if (ev == ZMQ_EVENT_DISCONNECTED && (p->up || p->shook)) {
        p->shook = false;
        peer_down(p, "disconnected or heartbeat timed out");
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH || ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
               ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL || ev == ZMQ_EVENT_DISCONNECTED) {
        /* never got through the CURVE handshake: said once until it does */
        if (!p->handshake_warned)
            cm_log(CM_LOG_WARN, "fed.handshake",
                   "peer %s at %s refused the handshake or closed the connection during it "
                   "(check its public key in our config and ours in its config)",
                   p->cfg->id, p->cfg->endpoint);
        p->handshake_warned = true;
    }
}

/* Where organization org is hosted: *peer is the configured peer's index,
** or -1 with why saying why not. */
static int route_lookup(cm_fed *fed, const char *org, int16_t *peer, char *why, size_t whysz,
                        cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        fed->o.store,
        "SELECT json_extract(doc, '$.node') FROM record WHERE kind = 'organization' AND id = ?1",
        err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, org, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    const char *node = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    fed_peer *p = peer_by_id(fed, node);
    *peer = p ? (int16_t)(p - fed->peers) : -1;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        sqlite3_reset(st);
        return cm_store_error(fed->o.store, err, "record");
    }
    if (rc == SQLITE_DONE)
        snprintf(why, whysz, "no organization \"%s\"", org);
    else if (!node)
        snprintf(why, whysz, "organization \"%s\" has no node", org);
    else if (!p)
        snprintf(why, whysz,
                 "organization \"%s\" is on node \"%.128s\", which is not a configured peer", org,
                 node);
    sqlite3_reset(st);
    return 0;
}

/* The rows without a peer read by a routing pass: runs of rows in seq
** order with one receiver (each routed by one UPDATE), rows to refuse, and
** the receivers met, each looked up once. */
typedef struct route_plan {
    struct {
        int64_t first, last;
        int16_t peer, org;
    } runs[FED_ROUTE_BATCH];
    struct {
        int64_t seq;
        char reason[256];
    } bad[FED_ROUTE_REFUSE];
    struct {
        char id[129];
        int16_t peer; /* -1: not routable, why says why */
        char why[256];
    } orgs[FED_ROUTE_ORGS];
    int nruns, nbad, norgs, seen;
    bool blocked; /* stopped at a row to refuse past max_bad: it waits */
    bool more;    /* stopped for a receiver past FED_ROUTE_ORGS */
} route_plan;

/* Read up to FED_ROUTE_BATCH rows without a peer, in seq order, into pl:
** organization -> its node -> a configured peer. Up to max_bad rows that
** cannot be routed are noted to refuse; at the next one the read stops. */
static int route_read(cm_fed *fed, route_plan *pl, int max_bad, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(fed->o.store,
                                        "SELECT seq, receiver FROM outbox WHERE status = 'pending' "
                                        "AND peer IS NULL ORDER BY seq LIMIT ?1",
                                        err);
    pl->nruns = pl->nbad = pl->norgs = pl->seen = 0;
    pl->blocked = pl->more = false;
    if (!st)
        return err->code;
    sqlite3_bind_int(st, 1, FED_ROUTE_BATCH);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        const char *org = column_str(st, 1), *why = NULL;
        char toolong[256];
        int o = 0;
        while (o < pl->norgs && strcmp(pl->orgs[o].id, org) != 0)
            o++;
        if (strlen(org) >= sizeof(pl->orgs[0].id)) {
            snprintf(toolong, sizeof(toolong),
                     "no organization \"%.64s...\" (ids are at most 128 characters)", org);
            why = toolong;
        } else if (o == pl->norgs) {
            if (pl->norgs == FED_ROUTE_ORGS) {
                pl->more = true;
                break; /* the rest in the next pass */
            }
            cm_copy_str(pl->orgs[o].id, sizeof(pl->orgs[o].id), org);
            if (route_lookup(fed, org, &pl->orgs[o].peer, pl->orgs[o].why, sizeof(pl->orgs[o].why),
                             err) != 0) {
                sqlite3_reset(st);
                return err->code;
            }
            pl->norgs++;
        }
        if (!why && pl->orgs[o].peer < 0)
            why = pl->orgs[o].why;
        if (why && pl->nbad == max_bad) {
            pl->blocked = true; /* nothing routed past it */
            break;
        }
        pl->seen++;
        if (why) {
            pl->bad[pl->nbad].seq = seq;
            cm_copy_str(pl->bad[pl->nbad++].reason, sizeof(pl->bad[0].reason), why);
            continue;
        }
        int n = pl->nruns;
        if (n > 0 && pl->runs[n - 1].org == o &&
            !(pl->nbad && pl->bad[pl->nbad - 1].seq > pl->runs[n - 1].last))
            pl->runs[n - 1].last = seq;
        else {
            pl->runs[n].first = pl->runs[n].last = seq;
            pl->runs[n].org = (int16_t)o;
            pl->runs[n].peer = pl->orgs[o].peer;
            pl->nruns++;
        }
    }
    sqlite3_reset(st);
    return 0;
}

/* Rows of run i of pl at or below a row of its peer that was sent (or is
** delivered) take the next seqs, in order, as they are routed: the window
** fills after its last row and fed_delivered says every pending row of the
** peer up to it is delivered, so these would never go. A row without a peer
** was never sent, so its seq was never seen outside; the caller's commit is
** synced (peer_flush), so no crash gives the seq to another row. */
static int route_late(cm_fed *fed, const route_plan *pl, int i, cm_err *err)
{
    fed_peer *p = &fed->peers[pl->runs[i].peer];
    int64_t d = delivered_before(fed, p);
    if (d < 0)
        return cm_err_set(err, CM_EDB, "fed_delivered: cannot be read");
    if (p->sent_max > d) /* the window's rows, and those settled in this process */
        d = p->sent_max;
    while (pl->runs[i].first <= d) {
        sqlite3_stmt *st = cm_store_prepare(
            fed->o.store,
            "UPDATE outbox SET peer = ?3, seq = (SELECT max(seq) + 1 FROM outbox) "
            "WHERE seq = (SELECT min(seq) FROM outbox WHERE status = 'pending' AND peer IS NULL "
            "AND seq BETWEEN ?1 AND ?2 AND receiver = ?4)",
            err);
        if (!st)
            return err->code;
        sqlite3_bind_int64(st, 1, pl->runs[i].first);
        sqlite3_bind_int64(st, 2, pl->runs[i].last < d ? pl->runs[i].last : d);
        sqlite3_bind_text(st, 3, p->cfg->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, pl->orgs[pl->runs[i].org].id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return cm_store_error(fed->o.store, err, "outbox");
        if (sqlite3_changes(cm_store_db(fed->o.store)) == 0)
            break;
        cm_log(CM_LOG_INFO, "fed.routed_late",
               "a row for %s routed to %s after later rows were sent to it: queued as "
               "outbox %lld",
               pl->orgs[pl->runs[i].org].id, p->cfg->id,
               (long long)peer_query(fed, p, "SELECT max(seq) FROM outbox"));
    }
    return 0;
}

/* Give the runs of pl their peer, in the open transaction. */
static int route_write(cm_fed *fed, const route_plan *pl, cm_err *err)
{
    for (int i = 0; i < pl->nruns; i++) {
        int late = route_late(fed, pl, i, err);
        if (late != 0)
            return late;
        /* the receiver is in the condition: whatever else is in the range
        ** (rows settled, or routed already) is left alone */
        sqlite3_stmt *st =
            cm_store_prepare(fed->o.store,
                             "UPDATE outbox SET peer = ?3 WHERE status = 'pending' AND peer "
                             "IS NULL AND seq BETWEEN ?1 AND ?2 AND receiver = ?4",
                             err);
        if (!st)
            return err->code;
        sqlite3_bind_int64(st, 1, pl->runs[i].first);
        sqlite3_bind_int64(st, 2, pl->runs[i].last);
        sqlite3_bind_text(st, 3, fed->peers[pl->runs[i].peer].cfg->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, pl->orgs[pl->runs[i].org].id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return cm_store_error(fed->o.store, err, "outbox");
    }
    return 0;
}

/* Whether no row is left without a peer once pl's pass commits. */
static bool route_clean(const route_plan *pl)
{
    return !pl->more && !pl->blocked && pl->nbad == 0 && pl->seen < FED_ROUTE_BATCH;
}

/* Route rows queued meanwhile in the caller's open transaction (the one
** that records answers, so routing costs no commit of its own), up to the
** first row that cannot be routed: that one is left for a pass of its own
** (route_pass, on the next turn). 1 when no row is left without a peer
** once the caller commits, 0 when some are; a CM_E code on a store error
** (the caller rolls back). */
static int route_in_tx(cm_fed *fed, cm_err *err)
{
    route_plan pl;
    int rc = route_read(fed, &pl, 0, err);
    if (rc == 0)
        rc = route_write(fed, &pl, err);
    if (rc != 0)
        return rc;
    if (pl.blocked)
        fed->route_now = true;
    return route_clean(&pl) ? 1 : 0;
}

/* A routing pass of its own: routable rows get their peer in one
** transaction, then each row that cannot be routed is refused (its
** instance told) in its own. Returns the number of rows looked at
** (FED_ROUTE_BATCH: there may be more), or -1 on a store error. */
static int route_pass(cm_fed *fed)
{
    route_plan pl;
    cm_err err;
    if (route_read(fed, &pl, FED_ROUTE_REFUSE, &err) != 0)
        goto fail;
    if (pl.nruns > 0) {
        if (cm_store_begin(fed->o.store, &err) != 0)
            goto fail;
        if (route_write(fed, &pl, &err) != 0) {
            cm_store_rollback(fed->o.store);
            goto fail;
        }
        if (cm_store_commit(fed->o.store, &err) != 0)
            goto fail;
    }
    fed->unrouted = !route_clean(&pl);
    fed->routed_at = uv_now(fed->o.loop);
    for (int i = 0; i < pl.nbad; i++)
        outbox_refuse(fed, pl.bad[i].seq, pl.bad[i].reason);
    return pl.seen;
fail:
    cm_log(CM_LOG_ERROR, "fed.store", "routing the outbox: %s", err.msg);
    return -1;
}

/* Route what is new. After a wake, while answers are on their way from every
** peer that is up, the commit that records them routes it (one commit less
** per round); not for longer than a poll interval, nor when rows wait to be
** refused. */
static void route_pending(cm_fed *fed)
{
    uint64_t now = uv_now(fed->o.loop);
    bool defer = fed->woken && !fed->route_now && now < fed->routed_at + fed->poll_ms;
    for (int i = 0; defer && i < fed->npeers; i++)
        if (fed->peers[i].up && fed->peers[i].nwin == fed->peers[i].nsettled)
            defer = false; /* nothing open: no answer will come to route it */
    fed->woken = fed->route_now = false;
    if (defer)
        return;
    /* bounded, so a flood of new rows cannot hold the loop */
    for (int i = 0; i < 8 && store_free(fed) && route_pass(fed) == FED_ROUTE_BATCH; i++)
        ;
}

static uint64_t text_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h | 1; /* never 0, which means "nothing" */
}

/* Send p our directory (which 0) or indicators (1) when they changed since
** it last acknowledged them, or when the last send went unanswered. */
static void share_with(cm_fed *fed, fed_peer *p, int which, uint64_t now)
{
    cJSON *list = NULL;
    cm_err err;
    int rc = which == 0 ? cm_share_directory(fed->o.store, fed->o.node_id, p->cfg->id, &list, &err)
                        : cm_share_indicators(fed->o.store, fed->o.clock, fed->o.node_id,
                                              p->cfg->id, &list, &err);
    if (rc != 0) {
        cm_log(CM_LOG_ERROR, "fed.store", "sharing with %s: %s", p->cfg->id, err.msg);
        return;
    }
    cm_fed_msg m;
    memset(&m, 0, sizeof(m));
    m.type = which == 0 ? CM_FED_DIRECTORY : CM_FED_INDICATORS;
    m.payload = list;
    char *text = cm_fed_encode(&m); /* without the id: the content alone is hashed */
    uint64_t h = text ? text_hash(text) : 0;
    free(text);
    if (h && h != p->share_acked[which] && (h != p->share_sent[which] || now >= p->share_due)) {
        snprintf(m.id, sizeof(m.id), "%s:%s:%016llx", fed->o.node_id, type_names[m.type],
                 (unsigned long long)h);
        reply(&p->dealer, NULL, &m);
        p->share_sent[which] = h;
        cm_copy_str(p->share_id[which], sizeof(p->share_id[which]), m.id);
    }
    cm_fed_msg_clear(&m);
}

/* The ack of a directory or indicators we sent ("NODE:directory:HASH"). */
static bool share_acked(cm_fed *fed, fed_peer *p, const cm_fed_msg *m)
{
    for (int which = 0; which < 2; which++) {
        if (p->share_sent[which] && strcmp(p->share_id[which], m->id) == 0) {
            p->share_acked[which] = p->share_sent[which];
            cm_log(CM_LOG_INFO, "fed.shared", "peer %s has our %s", p->cfg->id,
                   type_names[which == 0 ? CM_FED_DIRECTORY : CM_FED_INDICATORS]);
            return true;
        }
    }
    return false;
}

/* Write the pending rows of p under its mark delivered (with done_at, the
** time of the sweep: no earlier than their delivery), the oldest first,
** FED_SWEEP_CHUNK a transaction, at most rounds transactions. Rows under
** the mark are delivered already (docs/store.md, outbox): this changes no
** row's state, only takes them out of outbox_pending, which otherwise would
** keep an entry for every message ever delivered under the mark. The mark
** is read in the same transaction, so no row above it is touched. Commits
** without waiting for its own fsync: a sweep lost in an OS crash leaves the
** rows pending under the mark, delivered as before, and the WAL keeps
** commits in order, so no sweep outlives the mark it read. */
static void sweep_peer(cm_fed *fed, fed_peer *p, int rounds)
{
    char now[CM_TIME_BUFSZ];
    cm_err err;
    int64_t mark = delivered_before(fed, p);
    for (int r = 0; r < rounds && mark > p->swept && store_free(fed); r++) {
        if (cm_store_begin_nosync(fed->o.store, &err) != 0)
            goto fail;
        /* through outbox_pending: the oldest rows of p still pending */
        sqlite3_stmt *last = cm_store_prepare(
            fed->o.store,
            "SELECT max(seq), count(*) FROM (SELECT seq FROM outbox WHERE peer = ?1 AND "
            "status = 'pending' AND seq <= (SELECT d.seq FROM fed_delivered d WHERE d.peer = ?1) "
            "ORDER BY seq LIMIT ?2)",
            &err);
        sqlite3_stmt *up =
            last ? cm_store_prepare(fed->o.store,
                                    "UPDATE outbox SET status = 'delivered', done_at = ?3 "
                                    "WHERE peer = ?1 AND status = 'pending' AND seq <= ?2",
                                    &err)
                 : NULL;
        if (!up) {
            cm_store_rollback(fed->o.store);
            goto fail;
        }
        sqlite3_bind_text(last, 1, p->cfg->id, -1, SQLITE_STATIC);
        sqlite3_bind_int(last, 2, FED_SWEEP_CHUNK);
        int rc = sqlite3_step(last);
        int64_t upto = rc == SQLITE_ROW ? sqlite3_column_int64(last, 0) : 0;
        int n = rc == SQLITE_ROW ? sqlite3_column_int(last, 1) : 0;
        sqlite3_reset(last);
        if (rc != SQLITE_ROW) {
            cm_store_error(fed->o.store, &err, "outbox");
            cm_store_rollback(fed->o.store);
            goto fail;
        }
        if (n > 0) {
            now_text(fed, now);
            sqlite3_bind_text(up, 1, p->cfg->id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(up, 2, upto);
            sqlite3_bind_text(up, 3, now, -1, SQLITE_STATIC);
            rc = sqlite3_step(up);
            sqlite3_reset(up);
            if (rc != SQLITE_DONE) {
                cm_store_error(fed->o.store, &err, "outbox");
                cm_store_rollback(fed->o.store);
                goto fail;
            }
        }
        if (cm_store_commit(fed->o.store, &err) != 0)
            goto fail;
        /* fewer than a chunk: every row of p up to the mark is written */
        p->swept = n < FED_SWEEP_CHUNK ? mark : upto;
    }
    return;
fail:
    cm_log(CM_LOG_ERROR, "fed.store", "sweeping the rows delivered to %s: %s", p->cfg->id, err.msg);
}

static void on_tick(uv_timer_t *t)
{
    cm_fed *fed = t->data;
    uint64_t now = uv_now(fed->o.loop);
    cm_fed_msg h;
    route_pending(fed);
    if (fed->park_head && !apply_full(fed))
        fed_unpark(fed);
    for (int i = 0; i < fed->npeers; i++) {
        fed_peer *p = &fed->peers[i];
        if (!p->up && now >= p->hello_due) {
            hello_msg(fed, &h);
            reply(&p->dealer, NULL, &h); /* EAGAIN while not connected: retried later */
            p->hello_due = now + (p->refused ? FED_HELLO_MAX_MS : p->hello_ivl);
            if ((p->hello_ivl *= 2) > FED_HELLO_MAX_MS)
                p->hello_ivl = FED_HELLO_MAX_MS;
        } else if (p->up) {
            if (p->nwin > 0 && p->nsettled == 0 && now >= p->resend_due &&
                now >= p->last_answer + p->rto &&
                p->win[0].round == p->round) { /* nothing answered for a while: again */
                if ((p->rto *= 2) > FED_RTO_MAX_MS)
                    p->rto = FED_RTO_MAX_MS;
                peer_rewind(fed, p, false);
            }
            peer_pump(fed, p);
        }
        if (p->up && now >= p->share_due && store_free(fed)) {
            share_with(fed, p, 0, now);
            share_with(fed, p, 1, now);
            p->share_due = now + FED_SHARE_MS;
        }
        /* off the hot path: while nothing has been in flight to p for a
        ** tick, or when the rows under its mark have run far ahead of the
        ** sweep */
        if (p->nwin == 0 && p->idle)
            sweep_peer(fed, p, FED_SWEEP_IDLE);
        else if (p->delivered_known && p->delivered - p->swept > FED_SWEEP_LAG)
            sweep_peer(fed, p, 1);
        p->idle = p->nwin == 0;
    }
}

bool cm_fed_route_at_insert(cm_fed *fed, const char *node)
{
    if (!fed)
        return false;
    if (!peer_by_id(fed, node)) {
        fed->unrouted = true; /* a row without a peer is being queued */
        return false;
    }
    return !fed->unrouted;
}

void cm_fed_wake(cm_fed *fed)
{
    if (fed && fed->tick_init && !fed->stopped) {
        fed->woken = true;
        uv_timer_start(&fed->tick, on_tick, 0, fed->poll_ms);
    }
}

/* ---- start and stop ------------------------------------------------------ */

static int open_zap(cm_fed *fed, cm_err *err)
{
    if (!(fed->zap.zs = zmq_socket(fed->ctx, ZMQ_REP)) || set_int(fed->zap.zs, ZMQ_LINGER, 0) ||
        zmq_bind(fed->zap.zs, "inproc://zeromq.zap.01") != 0)
        return cm_err_set(err, CM_EIO, "ZAP handler: %s", zmq_strerror(errno));
    return sock_watch(fed, &fed->zap, "zap", zap_read, -1, err);
}

int cm_fed_listener_setup(void *zs, const char *secret_key, int heartbeat_ms, cm_err *err)
{
    /* No heartbeat timeout here: while the reader holds back (router_full)
    ** ZeroMQ reads nothing from a link, the peer's PONGs included, and the
    ** timeout would drop a healthy link whose messages then wait for the
    ** peer's resend. The peer's DEALER times the link out instead (it gets
    ** this side's PINGs, which go on), and a link that closes is seen gone.
    ** A link whose peer's host vanished closes through TCP: keepalive probes
    ** it while it is idle, and ZMQ_TCP_MAXRT (TCP_USER_TIMEOUT on Linux)
    ** drops it once this side's PINGs have gone unacknowledged as long as
    ** keepalive would give up after -- where TCP alone retries for about 15
    ** minutes. Neither needs ZeroMQ to read: the peer's kernel acknowledges
    ** and answers while its node holds back, so neither drops a busy link. */
    if (link_options(zs, heartbeat_ms) != 0 || set_int(zs, ZMQ_HEARTBEAT_TIMEOUT, 0) != 0 ||
        set_int(zs, ZMQ_TCP_MAXRT, FED_LISTENER_MAXRT_MS) != 0 ||
        set_int(zs, ZMQ_CURVE_SERVER, 1) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_SECRETKEY, secret_key, CM_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(zs, ZMQ_ZAP_DOMAIN, CM_FED_ZAP_DOMAIN, strlen(CM_FED_ZAP_DOMAIN)) != 0)
        return cm_err_set(err, CM_EIO, "federation ROUTER: %s", zmq_strerror(errno));
    if (set_int(zs, ZMQ_ZAP_ENFORCE_DOMAIN, 1) != 0)
        cm_log(CM_LOG_WARN, "fed.zap",
               "libzmq lacks ZMQ_ZAP_ENFORCE_DOMAIN; admission relies on this node's own ZAP "
               "handler, bound before the listener");
    return 0;
}

static int open_router(cm_fed *fed, cm_err *err)
{
    void *zs = fed->router.zs = zmq_socket(fed->ctx, ZMQ_ROUTER);
    const char *listen = fed->o.cfg->fed_listen;
    int rc;
    if (!zs)
        return cm_err_set(err, CM_EIO, "federation ROUTER: %s", zmq_strerror(errno));
    if ((rc = cm_fed_listener_setup(zs, fed->o.keys->secret_key, fed->o.heartbeat_ms, err)) != 0)
        return rc;
    if (set_int(zs, ZMQ_RCVHWM, FED_ROUTER_RCVHWM) != 0)
        return cm_err_set(err, CM_EIO, "federation ROUTER: %s", zmq_strerror(errno));
    if (zmq_bind(zs, listen) != 0)
        return cm_err_set(err, CM_EIO, "federation.listen %s: %s", listen, zmq_strerror(errno));
    fed->router.after = router_after;
    fed->router.full = router_full;
    return sock_watch(fed, &fed->router, "router", router_read, -1, err);
}

static int open_peer(cm_fed *fed, int i, cm_err *err)
{
    fed_peer *p = &fed->peers[i];
    char mon[64];
    void *zs = p->dealer.zs = zmq_socket(fed->ctx, ZMQ_DEALER);
    int rc;
    p->hello_ivl = FED_HELLO_MIN_MS;
    p->round = 1;
    p->dealer.after = dealer_after;
    if (!(p->win = calloc((size_t)fed->window, sizeof(*p->win))) ||
        !(p->out_win = calloc(FED_BATCH_SEND, sizeof(*p->out_win))))
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    /* a peer that sends nothing, not even a PONG, for three PINGs is gone */
    int hb = heartbeat_interval(fed->o.heartbeat_ms);
    if (!zs || link_options(zs, hb) != 0 || set_int(zs, ZMQ_HEARTBEAT_TIMEOUT, 3 * hb) != 0 ||
        set_int(zs, ZMQ_IMMEDIATE, 1) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_SERVERKEY, p->cfg->public_key, CM_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_PUBLICKEY, fed->o.keys->public_key, CM_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_SECRETKEY, fed->o.keys->secret_key, CM_KEY_Z85_LEN) != 0)
        return cm_err_set(err, CM_EIO, "peer %s: %s", p->cfg->id, zmq_strerror(errno));
    snprintf(mon, sizeof(mon), "inproc://cm-fed-monitor-%d", i);
    if (zmq_socket_monitor(zs, mon,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0 ||
        !(p->mon.zs = zmq_socket(fed->ctx, ZMQ_PAIR)) || set_int(p->mon.zs, ZMQ_LINGER, 0) ||
        zmq_connect(p->mon.zs, mon) != 0)
        return cm_err_set(err, CM_EIO, "peer %s: monitor: %s", p->cfg->id, zmq_strerror(errno));
    if ((rc = sock_watch(fed, &p->mon, "monitor", mon_read, i, err)) != 0 ||
        (rc = sock_watch(fed, &p->dealer, "dealer", dealer_read, i, err)) != 0)
        return rc;
    if (zmq_connect(zs, p->cfg->endpoint) != 0)
        return cm_err_set(err, CM_EIO, "peer %s: endpoint %s: %s", p->cfg->id, p->cfg->endpoint,
                          zmq_strerror(errno));
    return 0;
}

int cm_fed_start(const cm_fed_opts *o, cm_fed **out, cm_err *err)
{
    cm_fed *fed = *out = calloc(1, sizeof(*fed));
    int rc = 0;
    if (!fed)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    fed->o = *o;
    /* delivers are encoded, batched and kept in these: patient data, wiped
    ** when they grow and when they go */
    fed->text.wipe = fed->inq_text[0].wipe = fed->inq_text[1].wipe = true;
    fed->unrouted = true; /* until a first pass has seen the outbox */
    fed->window = o->window > 0 ? o->window : CM_FED_WINDOW_DEFAULT;
    fed->minor = o->proto_minor > 0 && o->proto_minor < CM_FED_PROTO_MINOR ? o->proto_minor
                                                                           : CM_FED_PROTO_MINOR;
    if (fed->window > CM_FED_WINDOW_MAX)
        fed->window = CM_FED_WINDOW_MAX;
    fed->poll_ms = o->poll_ms > 0 ? (uint64_t)o->poll_ms : 200;
    fed->rto_min = o->resend_ms > 0 ? (uint64_t)o->resend_ms : FED_RTO_MIN_MS;
    if (fed->rto_min > FED_RTO_MAX_MS)
        fed->rto_min = FED_RTO_MAX_MS;
    fed->npeers = o->cfg->fed_npeers;
    for (int i = 0; i < fed->npeers; i++) {
        fed->peers[i].cfg = &o->cfg->fed_peers[i];
        fed->peers[i].out.wipe = true;
    }
    if (!(fed->ctx = zmq_ctx_new())) {
        rc = cm_err_set(err, CM_EIO, "zmq context: %s", zmq_strerror(errno));
        goto done;
    }
    if (!o->apply && (!(fed->inq[0] = calloc(FED_INBOX_CAP, sizeof(*fed->inq[0]))) ||
                      !(fed->inq[1] = calloc(FED_INBOX_CAP, sizeof(*fed->inq[1]))))) {
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        goto done;
    }
    if (!zmq_has("curve")) {
        rc = cm_err_set(err, CM_EIO, "libzmq was built without CURVE");
        goto done;
    }
    if ((rc = open_zap(fed, err)) != 0 || (rc = open_router(fed, err)) != 0)
        goto done;
    for (int i = 0; i < fed->npeers && rc == 0; i++)
        rc = open_peer(fed, i, err);
    if (rc != 0)
        goto done;
    if ((rc = uv_timer_init(o->loop, &fed->tick)) != 0) {
        rc = cm_err_set(err, CM_EIO, "timer: %s", uv_strerror(rc));
        goto done;
    }
    fed->tick_init = true;
    fed->tick.data = fed;
    uv_timer_start(&fed->tick, on_tick, 0, fed->poll_ms);
    cm_log(CM_LOG_INFO, "fed.ready", "federation listening on %s with %d peer(s), protocol %d.%d",
           o->cfg->fed_listen, fed->npeers, CM_FED_PROTO_MAJOR, fed->minor);
done:
    return rc;
}

static void close_sock(fed_sock *s)
{
    if (s->polling) {
        uv_close((uv_handle_t *)&s->poll, NULL);
        s->polling = false;
    }
}

void cm_fed_stop(cm_fed *fed)
{
    if (!fed)
        return;
    fed->stopped = true; /* answers still to come are not sent */
    if (fed->tick_init) {
        uv_close((uv_handle_t *)&fed->tick, NULL);
        fed->tick_init = false;
    }
    close_sock(&fed->router);
    close_sock(&fed->zap);
    for (int i = 0; i < fed->npeers; i++) {
        close_sock(&fed->peers[i].dealer);
        close_sock(&fed->peers[i].mon);
    }
}

void cm_fed_destroy(cm_fed **fed_p)
{
    cm_fed *fed = *fed_p;
    if (!fed)
        return;
    for (fed_ticket *t = fed->tickets; t; t = t->next) {
        t->fed = NULL; /* cm_fed_answer frees them when the engine answers */
        if (t->group)
            t->group->fed = NULL;
    }
    for (int i = 0; i < fed->npeers; i++) {
        if (fed->peers[i].dealer.zs) {
            zmq_socket_monitor(fed->peers[i].dealer.zs, NULL, 0);
            zmq_close(fed->peers[i].dealer.zs);
        }
        if (fed->peers[i].mon.zs)
            zmq_close(fed->peers[i].mon.zs);
        for (int j = 0; fed->peers[i].win && j < fed->peers[i].nwin; j++)
            free(fed->peers[i].win[j].reason);
        free(fed->peers[i].win);
        free(fed->peers[i].out_win);
        cm_buf_free(&fed->peers[i].out);
    }
    for (int b = 0; b < 2; b++) {
        for (int j = 0; fed->inq[b] && j < FED_INBOX_CAP; j++) {
            fed_inbound *in = &fed->inq[b][j];
            if (in->group) { /* never answered: the group goes once its last one is */
                in->group->fed = NULL;
                group_put(in->group, in->index, NULL);
            }
        }
        free(fed->inq[b]);
        cm_buf_free(&fed->inq_text[b]);
    }
    while (fed->park_head) {
        fed_parked *k = fed->park_head;
        fed->park_head = k->next;
        msgs_close(k->parts, 2);
        free(k);
    }
    cm_buf_free(&fed->text);
    free(fed->ans.p);
    if (fed->router.zs)
        zmq_close(fed->router.zs);
    if (fed->zap.zs)
        zmq_close(fed->zap.zs);
    if (fed->ctx)
        zmq_ctx_term(fed->ctx);
    free(fed);
    *fed_p = NULL;
}

/* ---- for the API and /metrics ---------------------------------------------- */

void cm_fed_batch_counts(const cm_fed *fed, long *batches, long *delivers)
{
    *batches = fed ? fed->batches : 0;
    *delivers = fed ? fed->batched : 0;
}

int cm_fed_outbox_depth(cm_store *store, const char *peer, int64_t now_ms, long *depth,
                        double *age_s, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        store,
        /* routed to it and past its mark (the rows up to it are delivered:
        ** docs/store.md), or not routed yet but for an organization on its
        ** node; both read through outbox_pending, a seek each */
        "SELECT count(*), min(created) FROM ("
        "SELECT o.created FROM outbox o WHERE o.status = 'pending' AND o.peer = ?1 "
        "AND o.seq > coalesce((SELECT d.seq FROM fed_delivered d WHERE d.peer = ?1), 0) "
        "UNION ALL SELECT o.created FROM outbox o "
        "JOIN record r ON r.kind = 'organization' AND r.id = o.receiver "
        "WHERE o.status = 'pending' AND o.peer IS NULL AND json_extract(r.doc, '$.node') = ?1)",
        err);
    int64_t ms;
    *depth = 0;
    *age_s = -1;
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : cm_store_error(store, err, "outbox");
    if (rc == 0) {
        *depth = (long)sqlite3_column_int64(st, 0);
        if (sqlite3_column_type(st, 1) == SQLITE_TEXT &&
            cm_time_parse((const char *)sqlite3_column_text(st, 1), &ms))
            *age_s = (double)(now_ms - ms) / 1000.0;
    }
    sqlite3_reset(st);
    return rc;
}

long cm_fed_sent(const cm_fed *fed)
{
    return fed ? fed->sent : 0;
}

void cm_fed_apply_stats_get(const cm_fed *fed, cm_fed_apply_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (!fed)
        return;
    st->applying = fed->applying;
    st->applying_max = fed->applying_max;
    st->pauses = fed->apply_pauses;
    st->paused = fed->apply_paused;
}

int cm_fed_listen_endpoint(const cm_fed *fed, char *buf, size_t size)
{
    if (!fed || !fed->router.zs || size == 0 ||
        zmq_getsockopt(fed->router.zs, ZMQ_LAST_ENDPOINT, buf, &size) != 0) {
        if (size)
            buf[0] = '\0';
        return -1;
    }
    return 0;
}

int cm_fed_peer_parked(const cm_fed *fed, const char *peer, long *delivers, size_t *bytes)
{
    *delivers = 0;
    *bytes = 0;
    for (int i = 0; fed && peer && i < fed->npeers; i++)
        if (strcmp(fed->peers[i].cfg->id, peer) == 0) {
            *delivers = fed->peers[i].parked;
            *bytes = fed->peers[i].parked_size;
            return 0;
        }
    return -1;
}

int cm_fed_peer_up(const cm_fed *fed, const char *peer)
{
    for (int i = 0; fed && peer && i < fed->npeers; i++)
        if (strcmp(fed->peers[i].cfg->id, peer) == 0)
            return fed->peers[i].up ? 1 : 0;
    return -1;
}
