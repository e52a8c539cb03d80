/*
** fed.c -- federation links (ROUTER, DEALERs, ZAP, monitors on uv_poll_t)
** and outbox/inbox delivery. See fed.h and docs/federation.md.
*/
#include "fed.h"

#include "share.h"

#include "log.h"

#include <errno.h>
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
#define FED_ROUTE_BATCH  100
#define FED_HELLO_LINKS  4
#define FED_SHARE_MS     5000 /* directory and indicators: checked (and resent) this often */

/* ---- messages ------------------------------------------------------------ */

static const char *const type_names[] = {"hello", "deliver",   "ack",
                                         "error", "directory", "indicators"};

void cm_fed_msg_clear(cm_fed_msg *m)
{
    cJSON_Delete(m->payload);
    cJSON_Delete(m->classes);
    cJSON_Delete(m->record);
    memset(m, 0, sizeof(*m));
}

/* Copy string field key of obj into out; required or optional; length-checked. */
static int get_str(const cJSON *obj, const char *key, bool required, char *out, size_t outsz,
                   cm_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v && !required)
        return 0;
    if (!cJSON_IsString(v) || (required && !v->valuestring[0]))
        return cm_err_set(err, CM_EINVAL, "%s: must be a non-empty string", key);
    if (strlen(v->valuestring) >= outsz)
        return cm_err_set(err, CM_EINVAL, "%s: longer than %zu characters", key, outsz - 1);
    snprintf(out, outsz, "%s", v->valuestring);
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

static int decode_fields(const cJSON *root, cm_fed_msg *m, cm_err *err)
{
    char proto[16] = "";
    int rc;
    switch (m->type) {
    case CM_FED_HELLO:
        if ((rc = get_str(root, "proto", true, proto, sizeof(proto), err)) != 0 ||
            (rc = get_str(root, "node", true, m->node, sizeof(m->node), err)) != 0)
            return rc;
        if (parse_proto(proto, &m->major, &m->minor) != 0)
            return cm_err_set(err, CM_EINVAL, "proto: must be \"MAJOR.MINOR\"");
        return 0;
    case CM_FED_DELIVER: {
        if ((rc = get_str(root, "id", true, m->id, sizeof(m->id), err)) != 0 ||
            (rc = get_str(root, "kind", true, m->kind, sizeof(m->kind), err)) != 0 ||
            (rc = get_str(root, "to", true, m->to, sizeof(m->to), err)) != 0)
            return rc;
        if ((rc = get_str(root, "from", false, m->from, sizeof(m->from), err)) != 0 ||
            (rc = get_str(root, "purpose", false, m->purpose, sizeof(m->purpose), err)) != 0 ||
            (rc = get_str(root, "patient", false, m->patient, sizeof(m->patient), err)) != 0 ||
            (rc = get_str(root, "instance", false, m->instance, sizeof(m->instance), err)) != 0 ||
            (rc = get_str(root, "reply_to", false, m->reply_to, sizeof(m->reply_to), err)) != 0)
            return rc;
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "payload");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "classes");
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "patient_record");
        const cJSON *it;
        if (!p)
            return cm_err_set(err, CM_EINVAL, "payload: missing (any JSON value)");
        if (c && !cJSON_IsArray(c))
            return cm_err_set(err, CM_EINVAL, "classes: must be an array of data class names");
        cJSON_ArrayForEach(it, c) if (!cJSON_IsString(it)) return cm_err_set(
            err, CM_EINVAL, "classes: must be an array of data class names");
        if (r && !cJSON_IsObject(r))
            return cm_err_set(err, CM_EINVAL, "patient_record: must be an object");
        if (!(m->payload = cJSON_Duplicate(p, true)) ||
            (c && !(m->classes = cJSON_Duplicate(c, true))) ||
            (r && !(m->record = cJSON_Duplicate(r, true))))
            return cm_err_set(err, CM_ENOMEM, "out of memory");
        return 0;
    }
    case CM_FED_ACK:
        if ((rc = get_str(root, "id", true, m->id, sizeof(m->id), err)) != 0 ||
            (rc = get_str(root, "result", true, m->result, sizeof(m->result), err)) != 0)
            return rc;
        if (strcmp(m->result, "received") != 0 && strcmp(m->result, "duplicate") != 0 &&
            strcmp(m->result, "refused") != 0)
            return cm_err_set(err, CM_EINVAL, "result: must be received, duplicate or refused");
        return get_str(root, "reason", false, m->message, sizeof(m->message), err);
    case CM_FED_ERROR:
        if ((rc = get_str(root, "code", true, m->code, sizeof(m->code), err)) != 0 ||
            (rc = get_str(root, "ref", false, m->id, sizeof(m->id), err)) != 0 ||
            (rc = get_str(root, "message", false, m->message, sizeof(m->message), err)) != 0)
            return rc;
        return 0;
    case CM_FED_DIRECTORY:
    case CM_FED_INDICATORS: {
        const char *key = m->type == CM_FED_DIRECTORY ? "organizations" : "indicators";
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, key);
        if ((rc = get_str(root, "id", true, m->id, sizeof(m->id), err)) != 0)
            return rc;
        if (!cJSON_IsArray(list))
            return cm_err_set(err, CM_EINVAL, "%s: must be an array", key);
        if (!(m->payload = cJSON_Duplicate(list, true)))
            return cm_err_set(err, CM_ENOMEM, "out of memory");
        return 0;
    }
    default:
        return 0;
    }
}

int cm_fed_decode(const void *buf, size_t len, cm_fed_msg *m, cm_err *err)
{
    char type[16] = "";
    cJSON *root = NULL;
    int rc = 0;
    memset(m, 0, sizeof(*m));
    if (len == 0 || len > CM_FED_MAX_MSG) {
        rc = cm_err_set(err, CM_EINVAL, "message of %zu bytes (1 to %d allowed)", len,
                        CM_FED_MAX_MSG);
        goto done;
    }
    if (!(root = cJSON_ParseWithLength(buf, len)) || !cJSON_IsObject(root)) {
        rc = cm_err_set(err, CM_EINVAL, "not a JSON object");
        goto done;
    }
    if ((rc = get_str(root, "type", true, type, sizeof(type), err)) != 0)
        goto done;
    rc = CM_EINVAL;
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (strcmp(type, type_names[i]) == 0) {
            m->type = (cm_fed_type)i;
            rc = 0;
        }
    if (rc != 0) {
        cm_err_set(err, rc, "type: unknown message type \"%s\"", type);
        goto done;
    }
    rc = decode_fields(root, m, err);
done:
    cJSON_Delete(root);
    if (rc != 0)
        cm_fed_msg_clear(m);
    return rc;
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
    const char *name;
};

typedef struct fed_peer {
    const cm_peer_config *cfg;
    fed_sock dealer, mon;
    bool up;            /* our DEALER got the peer's hello */
    bool refused;       /* it refused our version: back off long */
    uint64_t hello_due; /* loop time of the next hello while down */
    uint64_t hello_ivl;
    int64_t inflight; /* outbox seq awaiting ack, 0 = none */
    /* what we share with it (share.h): hash of the text last sent, and of
    ** the text it acknowledged; resent when they differ */
    uint64_t share_sent[2], share_acked[2];
    uint64_t share_due;
    uint64_t resend_due;
    uint64_t rto;
    /* ROUTER side: routing ids of the latest links that said hello (a
    ** reconnect makes a new one before the old one is noticed gone) */
    uint8_t rid[FED_HELLO_LINKS][256];
    size_t rid_len[FED_HELLO_LINKS];
    int rid_next;
} fed_peer;

/* A delivered message the engine is applying: the ack goes when it answers. */
typedef struct fed_ticket {
    cm_fed *fed; /* NULL once the federation is gone */
    struct fed_ticket *prev, *next;
    char peer[129], id[192], kind[129], to[129];
    uint8_t rid[256];
    size_t rid_len;
} fed_ticket;

struct cm_fed {
    cm_fed_opts o;
    fed_ticket *tickets; /* answers outstanding */
    bool stopped;
    void *ctx;
    fed_sock router, zap;
    fed_peer peers[CM_FED_MAX_PEERS];
    int npeers;
    uv_timer_t tick;
    bool tick_init;
};

static void sock_drain(fed_sock *s);

static void msgs_close(zmq_msg_t *parts, int n)
{
    for (int i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
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
    s->draining = true;
    for (;;) {
        int ev = 0;
        size_t sz = sizeof(ev);
        if (zmq_getsockopt(s->zs, ZMQ_EVENTS, &ev, &sz) != 0 || !(ev & ZMQ_POLLIN))
            break;
        if (!sock_read_one(s))
            break;
    }
    s->draining = false;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_drain(h->data);
}

/* Send parts (the last one ends the message); then drain, since a send can
** consume the edge that announced pending input. */
static int sock_send(fed_sock *s, const void *const *bufs, const size_t *lens, int n)
{
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if (zmq_send(s->zs, bufs[i], lens[i], ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0)) < 0)
            rc = -1;
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

/* Options every federation socket gets. */
static int link_options(void *zs)
{
    int64_t maxmsg = CM_FED_MAX_MSG + 4096;
    int rc = set_int(zs, ZMQ_LINGER, 0) | set_int(zs, ZMQ_HANDSHAKE_IVL, 5000) |
             set_int(zs, ZMQ_HEARTBEAT_IVL, 1000) | set_int(zs, ZMQ_HEARTBEAT_TIMEOUT, 3000) |
             set_int(zs, ZMQ_HEARTBEAT_TTL, 6000) | set_int(zs, ZMQ_RECONNECT_IVL, 100) |
             set_int(zs, ZMQ_RECONNECT_IVL_MAX, 5000);
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
    m->minor = CM_FED_PROTO_MINOR;
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

/* Record a delivered message once; *dup when it was already there. */
static int inbox_record(cm_fed *fed, fed_peer *p, const cm_fed_msg *m, bool *dup, cm_err *err)
{
    char now[CM_TIME_BUFSZ], *payload = NULL;
    int rc;
    sqlite3_stmt *st;
    if ((rc = cm_store_begin(fed->o.store, err)) != 0)
        return rc;
    st = cm_store_prepare(fed->o.store,
                          "INSERT OR IGNORE INTO inbox(peer, msg_id, kind, receiver, payload, "
                          "received) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                          err);
    if (!st || !(payload = cJSON_PrintUnformatted(m->payload))) {
        rc = st ? cm_err_set(err, CM_ENOMEM, "out of memory") : err->code;
        goto done;
    }
    now_text(fed, now);
    sqlite3_bind_text(st, 1, p->cfg->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, m->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, m->to, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, payload, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, now, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = cm_store_error(fed->o.store, err, "inbox");
        goto done;
    }
    *dup = sqlite3_changes(cm_store_db(fed->o.store)) == 0;
    rc = cm_store_commit(fed->o.store, err);
done:
    if (st)
        sqlite3_reset(st);
    free(payload);
    if (rc != 0 && cm_store_in_tx(fed->o.store))
        cm_store_rollback(fed->o.store);
    return rc;
}

/* Send an ack (or "busy") to the link with routing id rid. */
static void send_ack(cm_fed *fed, const uint8_t *rid, size_t rid_len, const char *id,
                     const char *result, const char *reason)
{
    cm_fed_msg m;
    memset(&m, 0, sizeof(m));
    if (result) {
        m.type = CM_FED_ACK;
        snprintf(m.result, sizeof(m.result), "%s", result);
        snprintf(m.message, sizeof(m.message), "%s", reason ? reason : "");
    } else {
        m.type = CM_FED_ERROR;
        snprintf(m.code, sizeof(m.code), "busy");
        snprintf(m.message, sizeof(m.message), "not recorded; resend later");
    }
    snprintf(m.id, sizeof(m.id), "%s", id);
    char *text = cm_fed_encode(&m);
    if (!text) {
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory answering %s", id);
        return;
    }
    const void *bufs[] = {rid, text};
    size_t lens[] = {rid_len, strlen(text)};
    sock_send(&fed->router, bufs, lens, 2);
    free(text);
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
        send_ack(fed, t->rid, t->rid_len, t->id, result, reason);
    }
    free(t);
}

/* Hand m to the engine; the ack goes from cm_fed_answer after its commit. */
static void router_apply(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, const cm_fed_msg *m)
{
    fed_ticket *t = calloc(1, sizeof(*t));
    size_t n = zmq_msg_size((zmq_msg_t *)rid);
    if (!t || n > sizeof(t->rid)) {
        free(t);
        reply_error(&fed->router, rid, "busy", m->id, "not recorded; resend later");
        return;
    }
    t->fed = fed;
    memcpy(t->rid, zmq_msg_data((zmq_msg_t *)rid), n);
    t->rid_len = n;
    snprintf(t->peer, sizeof(t->peer), "%s", p->cfg->id);
    snprintf(t->id, sizeof(t->id), "%s", m->id);
    snprintf(t->kind, sizeof(t->kind), "%s", m->kind);
    snprintf(t->to, sizeof(t->to), "%s", m->to);
    t->next = fed->tickets;
    if (fed->tickets)
        fed->tickets->prev = t;
    fed->tickets = t;
    if (fed->o.apply(fed->o.engine_ud, p->cfg->id, m, t) != 0)
        cm_fed_answer(t, NULL, "the engine could not take it");
}

static void router_deliver(cm_fed *fed, fed_peer *p, const zmq_msg_t *rid, const cm_fed_msg *m)
{
    cm_fed_msg ack;
    cm_err err;
    bool dup = false;
    if (fed->o.apply) {
        router_apply(fed, p, rid, m);
        return;
    }
    if (!store_free(fed) || inbox_record(fed, p, m, &dup, &err) != 0) {
        cm_log(CM_LOG_WARN, "fed.busy", "message %s from %s not recorded (will be resent): %s",
               m->id, p->cfg->id, store_free(fed) ? err.msg : "store busy");
        reply_error(&fed->router, rid, "busy", m->id, "not recorded; resend later");
        return;
    }
    cm_log(CM_LOG_INFO, dup ? "fed.duplicate" : "fed.received", "%s %s (%s for %s) from %s",
           dup ? "duplicate" : "received", m->id, m->kind, m->to, p->cfg->id);
    if (!dup && fed->o.on_received)
        fed->o.on_received(fed->o.on_received_ud, p->cfg->id, m->id, m->kind, m->to);
    memset(&ack, 0, sizeof(ack));
    ack.type = CM_FED_ACK;
    snprintf(ack.id, sizeof(ack.id), "%s", m->id);
    snprintf(ack.result, sizeof(ack.result), "%s", dup ? "duplicate" : "received");
    reply(&fed->router, rid, &ack);
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
               m->major, m->minor, CM_FED_PROTO_MAJOR, CM_FED_PROTO_MINOR);
        reply_error(&fed->router, rid, "version", NULL,
                    "protocol %d.%d is not supported (this node speaks %d.%d)", m->major, m->minor,
                    CM_FED_PROTO_MAJOR, CM_FED_PROTO_MINOR);
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
    if (cm_fed_decode(zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), &m, &err) != 0) {
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a bad message: %s", p->cfg->id, err.msg);
        reply_error(s, &parts[0], "malformed", NULL, "%s", err.msg);
        return;
    }
    if (m.type == CM_FED_HELLO) {
        router_hello(fed, p, &parts[0], &m);
    } else if (!said_hello(p, &parts[0])) {
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent %s before hello", p->cfg->id,
               type_names[m.type]);
        reply_error(s, &parts[0], "hello-required", m.id, "say hello first");
    } else if (m.type == CM_FED_DELIVER) {
        router_deliver(fed, p, &parts[0], &m);
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

static void peer_down(fed_peer *p, const char *why)
{
    if (p->up)
        cm_log(CM_LOG_WARN, "fed.peer_down", "peer %s is down (%s)", p->cfg->id, why);
    p->up = false;
    p->inflight = 0;
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
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) && fed->o.refused) {
        cJSON *ev = cJSON_CreateObject();
        const char *purpose = (const char *)sqlite3_column_text(st, 3);
        char instance[256];
        snprintf(instance, sizeof(instance), "%s", (const char *)sqlite3_column_text(st, 0));
        if (!ev || !cJSON_AddStringToObject(ev, "to", (const char *)sqlite3_column_text(st, 1)) ||
            !cJSON_AddStringToObject(ev, "kind", (const char *)sqlite3_column_text(st, 2)) ||
            !cJSON_AddStringToObject(ev, "purpose", purpose ? purpose : "") ||
            !cJSON_AddStringToObject(ev, "reason", reason))
            rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        sqlite3_reset(st);
        if (rc == 0)
            rc = fed->o.refused(fed->o.engine_ud, instance, ev, err);
        cJSON_Delete(ev);
        return rc;
    }
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

/* Column col as text into out ("" when NULL). */
static void column_text(sqlite3_stmt *st, int col, char *out, size_t outsz)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    snprintf(out, outsz, "%s", v ? (const char *)v : "");
}

/* "demographics,notes" as a JSON array; NULL when empty or NULL. */
static cJSON *class_array(const char *list)
{
    if (!list || !*list)
        return NULL;
    cJSON *arr = cJSON_CreateArray();
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); arr && tok;
         tok = strtok_r(NULL, ",", &save))
        cJSON_AddItemToArray(arr, cJSON_CreateString(tok));
    return arr;
}

/* Send the oldest pending row routed to p (one in flight keeps the order). */
static void send_next(cm_fed *fed, fed_peer *p, bool resend)
{
    cm_fed_msg m;
    cm_err err;
    sqlite3_stmt *st;
    char *text = NULL;
    if (!p->up || (p->inflight && !resend) || !store_free(fed))
        return;
    memset(&m, 0, sizeof(m));
    st = cm_store_prepare(fed->o.store,
                          "SELECT seq, receiver, kind, payload, sender, purpose, classes, "
                          "patient, record, instance, reply_to FROM outbox "
                          "WHERE status = 'pending' AND peer = ?1 ORDER BY seq LIMIT 1",
                          &err);
    if (!st)
        goto fail;
    sqlite3_bind_text(st, 1, p->cfg->id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        p->inflight = 0;
        sqlite3_reset(st);
        return;
    }
    int64_t seq = sqlite3_column_int64(st, 0);
    m.type = CM_FED_DELIVER;
    snprintf(m.id, sizeof(m.id), "%s:%lld", fed->o.node_id, (long long)seq);
    snprintf(m.to, sizeof(m.to), "%s", (const char *)sqlite3_column_text(st, 1));
    snprintf(m.kind, sizeof(m.kind), "%s", (const char *)sqlite3_column_text(st, 2));
    /* the engine keeps a JSON payload as JSON text and a string payload as is */
    const char *raw = (const char *)sqlite3_column_text(st, 3);
    if (!(m.payload = cJSON_Parse(raw)))
        m.payload = cJSON_CreateString(raw);
    column_text(st, 4, m.from, sizeof(m.from));
    column_text(st, 5, m.purpose, sizeof(m.purpose));
    column_text(st, 7, m.patient, sizeof(m.patient));
    column_text(st, 9, m.instance, sizeof(m.instance));
    column_text(st, 10, m.reply_to, sizeof(m.reply_to));
    m.classes = class_array((const char *)sqlite3_column_text(st, 6));
    if (sqlite3_column_text(st, 8))
        m.record = cJSON_Parse((const char *)sqlite3_column_text(st, 8));
    sqlite3_reset(st);
    if (!m.payload || !(text = cm_fed_encode(&m))) {
        cm_log(CM_LOG_ERROR, "fed.nomem", "out of memory encoding outbox %lld", (long long)seq);
        goto done;
    }
    if (strlen(text) > CM_FED_MAX_MSG) {
        outbox_refuse(fed, seq, "message larger than the 1 MiB the protocol allows");
        p->inflight = 0;
        goto done;
    }
    const void *bufs[] = {text};
    size_t lens[] = {strlen(text)};
    if (sock_send(&p->dealer, bufs, lens, 1) == 0) {
        uint64_t now = uv_now(fed->o.loop);
        if (p->inflight != seq)
            p->rto = FED_RTO_MIN_MS;
        else if ((p->rto *= 2) > FED_RTO_MAX_MS)
            p->rto = FED_RTO_MAX_MS;
        p->inflight = seq;
        p->resend_due = now + p->rto;
        st = cm_store_prepare(fed->o.store,
                              "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?1", &err);
        if (st) {
            sqlite3_bind_int64(st, 1, seq);
            sqlite3_step(st);
            sqlite3_reset(st);
        }
        cm_log(CM_LOG_DEBUG, "fed.sent", "sent %s to %s", m.id, p->cfg->id);
    }
    goto done;
fail:
    cm_log(CM_LOG_ERROR, "fed.store", "%s", err.msg);
done:
    free(text);
    cm_fed_msg_clear(&m);
}

static void dealer_ack(cm_fed *fed, fed_peer *p, const cm_fed_msg *m)
{
    char want[192], now[CM_TIME_BUFSZ];
    cm_err err;
    snprintf(want, sizeof(want), "%s:%lld", fed->o.node_id, (long long)p->inflight);
    if (!p->inflight || strcmp(want, m->id) != 0 || !store_free(fed))
        return; /* an ack for a resend already settled */
    if (strcmp(m->result, "refused") == 0) {
        char reason[1024];
        snprintf(reason, sizeof(reason), "node %s refused it: %s", p->cfg->id,
                 m->message[0] ? m->message : "no reason given");
        outbox_refuse(fed, p->inflight, reason);
        p->inflight = 0;
        send_next(fed, p, false);
        return;
    }
    sqlite3_stmt *st = cm_store_prepare(fed->o.store,
                                        "UPDATE outbox SET status = 'delivered', done_at = ?2 "
                                        "WHERE seq = ?1 AND status = 'pending'",
                                        &err);
    if (!st) {
        cm_log(CM_LOG_ERROR, "fed.store", "%s", err.msg);
        return;
    }
    now_text(fed, now);
    sqlite3_bind_int64(st, 1, p->inflight);
    sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        cm_store_error(fed->o.store, &err, "outbox");
        cm_log(CM_LOG_ERROR, "fed.store", "%s", err.msg);
        return;
    }
    cm_log(CM_LOG_INFO, "fed.delivered", "%s delivered to %s (%s)", m->id, p->cfg->id, m->result);
    p->inflight = 0;
    send_next(fed, p, false);
}

/* DEALER: [body], from the peer whose server key we connected with. */
static void dealer_read(fed_sock *s, zmq_msg_t *parts, int n)
{
    cm_fed *fed = s->fed;
    fed_peer *p = &fed->peers[s->peer];
    cm_fed_msg m;
    cm_err err;
    if (n != 1 || cm_fed_decode(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), &m, &err) != 0) {
        cm_log(CM_LOG_WARN, "fed.malformed", "peer %s sent a bad reply: %s", p->cfg->id,
               n != 1 ? "wrong number of frames" : err.msg);
        return;
    }
    if (m.type == CM_FED_HELLO && m.major != CM_FED_PROTO_MAJOR) {
        cm_log(CM_LOG_ERROR, "fed.version",
               "peer %s speaks protocol %d.%d; this node speaks %d.%d: not sending to it",
               p->cfg->id, m.major, m.minor, CM_FED_PROTO_MAJOR, CM_FED_PROTO_MINOR);
        p->refused = true;
    } else if (m.type == CM_FED_HELLO) {
        if (!p->up)
            cm_log(CM_LOG_INFO, "fed.peer_up", "peer %s is up (protocol %d.%d)", p->cfg->id,
                   m.major, m.minor);
        p->up = true;
        p->refused = false;
        p->inflight = 0;
        send_next(fed, p, false);
    } else if (m.type == CM_FED_ACK) {
        if (!share_acked(fed, p, &m))
            dealer_ack(fed, p, &m);
    } else if (m.type == CM_FED_ERROR) {
        cm_log(strcmp(m.code, "version") == 0 ? CM_LOG_ERROR : CM_LOG_WARN,
               strcmp(m.code, "version") == 0 ? "fed.version" : "fed.peer_error",
               "peer %s answered error %s%s%s: %s", p->cfg->id, m.code, m.id[0] ? " for " : "",
               m.id, m.message);
        if (strcmp(m.code, "version") == 0)
            p->refused = true;
        if (strcmp(m.code, "hello-required") == 0)
            peer_down(p, "it asked for hello");
    }
    cm_fed_msg_clear(&m);
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
        p->hello_due = 0; /* say hello on the next tick */
    } else if (ev == ZMQ_EVENT_DISCONNECTED) {
        peer_down(p, "disconnected or heartbeat timed out");
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH || ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        cm_log(CM_LOG_WARN, "fed.handshake",
               "peer %s at %s refused the handshake (check its public key in our config and ours "
               "in its config)",
               p->cfg->id, p->cfg->endpoint);
    }
}

/* Route rows not yet routed: organization -> its node -> a configured peer. */
static void route_pending(cm_fed *fed)
{
    cm_err err;
    char now[CM_TIME_BUFSZ];
    int64_t seqs[FED_ROUTE_BATCH];
    char reasons[FED_ROUTE_BATCH][256];
    const char *peers[FED_ROUTE_BATCH];
    int n = 0;
    if (!store_free(fed))
        return;
    sqlite3_stmt *st = cm_store_prepare(
        fed->o.store,
        "SELECT o.seq, o.receiver, r.id IS NOT NULL, json_extract(r.doc, '$.node') FROM outbox o "
        "LEFT JOIN record r ON r.kind = 'organization' AND r.id = o.receiver "
        "WHERE o.status = 'pending' AND o.peer IS NULL ORDER BY o.seq LIMIT 100",
        &err);
    if (!st)
        goto fail;
    while (n < FED_ROUTE_BATCH && sqlite3_step(st) == SQLITE_ROW) {
        const char *org = (const char *)sqlite3_column_text(st, 1);
        const char *node = (const char *)sqlite3_column_text(st, 3);
        fed_peer *p = peer_by_id(fed, node);
        seqs[n] = sqlite3_column_int64(st, 0);
        peers[n] = p ? p->cfg->id : NULL;
        reasons[n][0] = '\0';
        if (!sqlite3_column_int(st, 2))
            snprintf(reasons[n], sizeof(reasons[n]), "no organization \"%s\"", org);
        else if (!node)
            snprintf(reasons[n], sizeof(reasons[n]), "organization \"%s\" has no node", org);
        else if (!p)
            snprintf(reasons[n], sizeof(reasons[n]),
                     "organization \"%s\" is on node \"%.128s\", which is not a configured peer",
                     org, node);
        n++;
    }
    sqlite3_reset(st);
    if (n == 0)
        return;
    if (cm_store_begin(fed->o.store, &err) != 0)
        goto fail;
    now_text(fed, now);
    for (int i = 0; i < n; i++) {
        if (!peers[i])
            continue; /* refused below, each with its instance told */
        st = cm_store_prepare(fed->o.store, "UPDATE outbox SET peer = ?2 WHERE seq = ?1", &err);
        if (!st)
            goto rollback;
        sqlite3_bind_int64(st, 1, seqs[i]);
        sqlite3_bind_text(st, 2, peers[i], -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            cm_store_error(fed->o.store, &err, "outbox");
            goto rollback;
        }
    }
    if (cm_store_commit(fed->o.store, &err) != 0)
        goto fail;
    for (int i = 0; i < n; i++)
        if (!peers[i])
            outbox_refuse(fed, seqs[i], reasons[i]);
    return;
rollback:
    cm_store_rollback(fed->o.store);
fail:
    cm_log(CM_LOG_ERROR, "fed.store", "routing the outbox: %s", err.msg);
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
    }
    cm_fed_msg_clear(&m);
}

/* The ack of a directory or indicators we sent ("NODE:directory:HASH"). */
static bool share_acked(cm_fed *fed, fed_peer *p, const cm_fed_msg *m)
{
    for (int which = 0; which < 2; which++) {
        char want[192];
        snprintf(want, sizeof(want), "%s:%s:%016llx", fed->o.node_id,
                 type_names[which == 0 ? CM_FED_DIRECTORY : CM_FED_INDICATORS],
                 (unsigned long long)p->share_sent[which]);
        if (p->share_sent[which] && strcmp(want, m->id) == 0) {
            p->share_acked[which] = p->share_sent[which];
            cm_log(CM_LOG_INFO, "fed.shared", "peer %s has our %s", p->cfg->id,
                   type_names[which == 0 ? CM_FED_DIRECTORY : CM_FED_INDICATORS]);
            return true;
        }
    }
    return false;
}

static void on_tick(uv_timer_t *t)
{
    cm_fed *fed = t->data;
    uint64_t now = uv_now(fed->o.loop);
    cm_fed_msg h;
    route_pending(fed);
    for (int i = 0; i < fed->npeers; i++) {
        fed_peer *p = &fed->peers[i];
        if (!p->up && now >= p->hello_due) {
            hello_msg(fed, &h);
            reply(&p->dealer, NULL, &h); /* EAGAIN while not connected: retried later */
            p->hello_due = now + (p->refused ? FED_HELLO_MAX_MS : p->hello_ivl);
            if ((p->hello_ivl *= 2) > FED_HELLO_MAX_MS)
                p->hello_ivl = FED_HELLO_MAX_MS;
        } else if (p->up && p->inflight && now >= p->resend_due) {
            send_next(fed, p, true);
        } else if (p->up && !p->inflight) {
            send_next(fed, p, false);
        }
        if (p->up && now >= p->share_due && store_free(fed)) {
            share_with(fed, p, 0, now);
            share_with(fed, p, 1, now);
            p->share_due = now + FED_SHARE_MS;
        }
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

static int open_router(cm_fed *fed, cm_err *err)
{
    void *zs = fed->router.zs = zmq_socket(fed->ctx, ZMQ_ROUTER);
    const char *listen = fed->o.cfg->fed_listen;
    if (!zs || link_options(zs) != 0 || set_int(zs, ZMQ_CURVE_SERVER, 1) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_SECRETKEY, fed->o.keys->secret_key, CM_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(zs, ZMQ_ZAP_DOMAIN, CM_FED_ZAP_DOMAIN, strlen(CM_FED_ZAP_DOMAIN)) != 0)
        return cm_err_set(err, CM_EIO, "federation ROUTER: %s", zmq_strerror(errno));
    if (set_int(zs, ZMQ_ZAP_ENFORCE_DOMAIN, 1) != 0)
        cm_log(CM_LOG_WARN, "fed.zap",
               "libzmq lacks ZMQ_ZAP_ENFORCE_DOMAIN; admission relies on this node's own ZAP "
               "handler, bound before the listener");
    if (zmq_bind(zs, listen) != 0)
        return cm_err_set(err, CM_EIO, "federation.listen %s: %s", listen, zmq_strerror(errno));
    return sock_watch(fed, &fed->router, "router", router_read, -1, err);
}

static int open_peer(cm_fed *fed, int i, cm_err *err)
{
    fed_peer *p = &fed->peers[i];
    char mon[64];
    void *zs = p->dealer.zs = zmq_socket(fed->ctx, ZMQ_DEALER);
    int rc;
    p->hello_ivl = FED_HELLO_MIN_MS;
    if (!zs || link_options(zs) != 0 || set_int(zs, ZMQ_IMMEDIATE, 1) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_SERVERKEY, p->cfg->public_key, CM_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_PUBLICKEY, fed->o.keys->public_key, CM_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(zs, ZMQ_CURVE_SECRETKEY, fed->o.keys->secret_key, CM_KEY_Z85_LEN) != 0)
        return cm_err_set(err, CM_EIO, "peer %s: %s", p->cfg->id, zmq_strerror(errno));
    snprintf(mon, sizeof(mon), "inproc://cm-fed-monitor-%d", i);
    if (zmq_socket_monitor(zs, mon,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
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
    fed->npeers = o->cfg->fed_npeers;
    for (int i = 0; i < fed->npeers; i++)
        fed->peers[i].cfg = &o->cfg->fed_peers[i];
    if (!(fed->ctx = zmq_ctx_new())) {
        rc = cm_err_set(err, CM_EIO, "zmq context: %s", zmq_strerror(errno));
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
    uv_timer_start(&fed->tick, on_tick, 0, o->poll_ms > 0 ? (uint64_t)o->poll_ms : 200);
    cm_log(CM_LOG_INFO, "fed.ready", "federation listening on %s with %d peer(s), protocol %d.%d",
           o->cfg->fed_listen, fed->npeers, CM_FED_PROTO_MAJOR, CM_FED_PROTO_MINOR);
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
    for (fed_ticket *t = fed->tickets; t; t = t->next)
        t->fed = NULL; /* cm_fed_answer frees them when the engine answers */
    for (int i = 0; i < fed->npeers; i++) {
        if (fed->peers[i].dealer.zs) {
            zmq_socket_monitor(fed->peers[i].dealer.zs, NULL, 0);
            zmq_close(fed->peers[i].dealer.zs);
        }
        if (fed->peers[i].mon.zs)
            zmq_close(fed->peers[i].mon.zs);
    }
    if (fed->router.zs)
        zmq_close(fed->router.zs);
    if (fed->zap.zs)
        zmq_close(fed->zap.zs);
    if (fed->ctx)
        zmq_ctx_term(fed->ctx);
    free(fed);
    *fed_p = NULL;
}
