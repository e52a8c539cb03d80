/*
** fed.h -- federation: CURVE-authenticated ZeroMQ links to partner nodes on
** the libuv loop, and durable delivery of the outbox to them. One ROUTER
** bound at federation.listen takes partners' traffic; one DEALER per
** configured peer carries ours. A ZAP handler (a REP socket on the loop)
** admits only configured peers' keys; a message is attributed to the peer
** whose key authenticated the link, never to an id it carries. The wire
** format is docs/federation.md. Depends on libzmq, libuv, store, clock,
** config, keys. Loop thread only.
**
** Durable when: an outbox row is 'delivered' once the peer's ack arrived
** (the peer acks after its inbox commit); an inbox row is committed before
** its ack is sent. A window of messages is in flight per peer; each carries
** the id of the one sent before it (`prev`), and a receiver applies it only
** after that one, so order holds across resends, reconnects and crashes.
** Acks are recorded one transaction per drained batch, and so are messages
** recorded by the inbox-only receiver (no apply callback).
*/
#ifndef CM_FED_H
#define CM_FED_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "clock.h"
#include "config.h"
#include "error.h"
#include "keys.h"
#include "store.h"

/* Protocol version this node speaks: MAJOR.MINOR. */
#define CM_FED_PROTO_MAJOR 1
#define CM_FED_PROTO_MINOR 2
/* Largest number of messages in one batch (1.2). */
#define CM_FED_BATCH_MAX 1024
/* Capabilities a hello announces (caps), as bits. */
#define CM_FED_CAP_BATCH 1u /* takes "batch" (1.2) */
/* Largest message accepted (ZMQ_MAXMSGSIZE) and largest we send. */
#define CM_FED_MAX_MSG    (1024 * 1024)
#define CM_FED_ZAP_DOMAIN "caremesh"

/* ---- messages (pure; unit-tested) ---------------------------------------- */

typedef enum {
    CM_FED_HELLO = 0,
    CM_FED_DELIVER,
    CM_FED_ACK,
    CM_FED_ERROR,
    CM_FED_DIRECTORY,
    CM_FED_INDICATORS,
    CM_FED_BATCH, /* 1.2: many messages in one; decoded with cm_fed_batch_* */
} cm_fed_type;

/* A span of the text a message was decoded from (borrowed; not NUL-ended). */
typedef struct cm_fed_text {
    const char *p; /* NULL: absent */
    size_t len;
} cm_fed_text;

typedef struct cm_fed_msg {
    cm_fed_type type;
    int major, minor;   /* hello: proto */
    unsigned caps;      /* hello: CM_FED_CAP_* the sender announced (or announces) */
    char node[129];     /* hello: the sender's node id (informative only) */
    char id[192];       /* deliver, ack: "<node>:<seq>"; error: the id it refers to, or "" */
    char kind[129];     /* deliver: message kind, e.g. "referral.request" */
    char to[129];       /* deliver: receiving organization id */
    char result[16];    /* ack: "received" | "duplicate" | "refused" */
    char from[129];     /* deliver: sending organization ("" when not named) */
    char purpose[64];   /* deliver: the purpose under the partnership's terms */
    char patient[129];  /* deliver: whose data it carries ("" when none) */
    char instance[129]; /* deliver: the sender's workflow instance ("" when none) */
    char reply_to[129]; /* deliver: the receiver's instance it continues ("" when none) */
    char prev[192];     /* deliver: id of the message sent before it to this peer ("" when none) */
    cJSON *classes;     /* deliver: data classes carried (array of names); NULL when none */
    cJSON *record;      /* deliver: the shared patient record (object); NULL when none */
    char code[32];      /* error: version | malformed | hello-required | unsupported | busy */
    char message[512];  /* error: text for the operator; ack "refused": why */
    cJSON *payload;     /* deliver: owned JSON value; directory, indicators: the list */
    /* deliver: the payload, classes and record as the JSON text they came
    ** as (directory, indicators: the list as raw_payload), checked; borrowed
    ** from the buffer decoded, valid while it is */
    cm_fed_text raw_payload, raw_classes, raw_record;
} cm_fed_msg;

/* Parse one message body. The whole text must be one JSON object; every
** field is type- and length-checked; on error (CM_EINVAL, err names the
** field) *m holds nothing to free. The payload, classes and record come
** as trees (and as raw_* text, borrowed from buf). A batch decodes to type
** CM_FED_BATCH and nothing else: read it with cm_fed_decode_any. */
int cm_fed_decode(const void *buf, size_t len, cm_fed_msg *m, cm_err *err);

/* A batch (1.2): {"type":"batch","messages":[message, ...]}, each entry a
** whole message as it would travel alone. Read in one pass over the text,
** without a tree: the entries are spans of buf (borrowed: b is valid while
** buf is). */
typedef struct cm_fed_batch {
    cm_fed_text *entries; /* owned array; each entry's text */
    int n;
} cm_fed_batch;

/* Parse buf as a message. A batch: *b holds it (1 to CM_FED_BATCH_MAX
** entries, else CM_EINVAL naming what is wrong, and *b holds nothing) and
** *m is left with type CM_FED_BATCH; any other message is decoded into *m
** as by cm_fed_decode. */
int cm_fed_decode_any(const void *buf, size_t len, cm_fed_msg *m, cm_fed_batch *b, cm_err *err);

/* Decode entry i of b into *m, as cm_fed_decode would. A bad entry is
** CM_EINVAL with err naming it (messages[i]) and the field; id receives the
** entry's id when it has a usable one ("" otherwise), so the answer can
** name it. A batch inside a batch is refused. */
int cm_fed_batch_entry(const cm_fed_batch *b, int i, cm_fed_msg *m, char id[192], cm_err *err);

/* As cm_fed_batch_entry, without the trees: the payload, classes and
** record only as their checked text (m->raw_*), as a receiver that stores
** them needs them. */
int cm_fed_batch_scan(const cm_fed_batch *b, int i, cm_fed_msg *m, char id[192], cm_err *err);

/* Free what b owns and zero it. */
void cm_fed_batch_free(cm_fed_batch *b);

/* Encode m as JSON text; the caller frees. NULL when out of memory. */
char *cm_fed_encode(const cm_fed_msg *m);

/* Free what m owns and zero it. */
void cm_fed_msg_clear(cm_fed_msg *m);

/* The ZAP decision: admit a CURVE client whose 32-byte public key is one of
** peers' keys, in domain CM_FED_ZAP_DOMAIN. Returns the peer's index, or -1.
** key_z85 (41 bytes) receives the key as text for the log ("" if malformed). */
int cm_fed_zap_decide(const cm_peer_config *peers, int npeers, const char *domain,
                      const char *mechanism, const uint8_t *key, size_t keylen, char *key_z85);

/* ---- the links ----------------------------------------------------------- */

/* Set up ROUTER socket zs as this node's federation listener before it is
** bound: the link options (a PING every heartbeat_ms, as in cm_fed_opts; no
** heartbeat timeout; TCP keepalive after 30 s idle, every 10 s, 3 probes, as
** on the peers' DEALERs; unacknowledged data drops a link after 60 s), CURVE server with secret_key
*(Z85), and ZAP domain
** CM_FED_ZAP_DOMAIN with ZMQ_ZAP_ENFORCE_DOMAIN, so that with no ZAP handler
** in the process every CURVE client is refused (fail closed). */
int cm_fed_listener_setup(void *zs, const char *secret_key, int heartbeat_ms, cm_err *err);

typedef struct cm_fed cm_fed;

typedef struct cm_fed_opts {
    uv_loop_t *loop;        /* borrowed */
    cm_store *store;        /* borrowed; shared with the engine on this loop */
    cm_clock *clock;        /* borrowed; timestamps only (backoff uses the loop's clock) */
    const cm_config *cfg;   /* borrowed: federation.listen and .peers */
    const char *node_id;    /* this node */
    const cm_keypair *keys; /* borrowed; copied into the sockets, not kept */
    int poll_ms;            /* outbox poll interval; 0 selects 200 */
    /* Told once per message recorded in the inbox (not for duplicates), after
    ** its commit: the sending peer, the message id, its kind and receiver. May be NULL. */
    void (*on_received)(void *ud, const char *peer, const char *id, const char *kind,
                        const char *receiver);
    void *on_received_ud;
    /* The engine side (serve wires cm_engine_receive/post/wake here; NULL:
    ** messages are only recorded in the inbox). apply queues a delivered
    ** message and returns 0, or non-zero when it could not be queued (the
    ** peer is told "busy" and resends); once it is committed (or refused)
    ** the engine calls cm_fed_answer(ticket, ...). */
    int (*apply)(void *ud, const char *peer, const cm_fed_msg *m, void *ticket);
    /* Inside the transaction that marks an outbox row refused: tell the
    ** instance that sent it (event send.refused). after: the commit is done. */
    int (*refused)(void *ud, const char *instance, const char *to, const char *kind,
                   const char *purpose, const char *reason, cm_err *err);
    void (*after_refused)(void *ud);
    void *engine_ud;
    /* Messages in flight per peer (sent, not yet acknowledged); 0 selects
    ** CM_FED_WINDOW_DEFAULT, at most CM_FED_WINDOW_MAX. */
    int window;
    /* Told once per outbox row the peer answered, after the commit that
    ** marked it delivered or refused: its seq and the peer's result
    ** ("received", "duplicate" or "refused"). May be NULL. */
    void (*on_settled)(void *ud, const char *peer, int64_t seq, const char *result);
    void *on_settled_ud;
    /* The protocol minor version this node speaks: 0 selects
    ** CM_FED_PROTO_MINOR; 1 speaks 1.1 (no batches: neither announced, sent
    ** nor taken), as an older node does -- for tests and the benchmark. */
    int proto_minor;
    /* The output-commit rule (store.h): send only outbox rows of commits the
    ** store's watermark covers (a row written in a deferred commit waits for
    ** its sync); call cm_fed_wake when the watermark moves. false: every
    ** committed row may go (a store with no deferred commits). */
    bool durable_only;
    /* The first ack timeout: a window whose oldest message has had no
    ** answer this long, while no answer at all came, is sent again (the
    ** timeout doubling to 30 s). 0 selects 1000; at most 30000. */
    int resend_ms;
    /* The ZMTP heartbeat: every link sends a PING this often, and a DEALER
    ** whose peer sends nothing for three of them drops the link (the
    ** ROUTER never does: its reader may hold back longer). 0 selects 1000;
    ** at most 30000. */
    int heartbeat_ms;
} cm_fed_opts;

#define CM_FED_WINDOW_DEFAULT 1000
#define CM_FED_WINDOW_MAX     100000
/* Apply mode: the most delivered messages handed to the engine and not yet
** answered, from all peers together (eight engine batches of 256). The
** ROUTER reads a message only while a whole batch (CM_FED_BATCH_MAX) fits
** under it, and reads on as the engine's answers make room. */
#define CM_FED_APPLY_MAX 2048

/* Bind, connect to every peer and start polling the outbox. On error err
** says which endpoint or key; *out is set whenever memory was allocated, and
** is stopped and destroyed like a started one (handles may be open). */
int cm_fed_start(const cm_fed_opts *o, cm_fed **out, cm_err *err);

/* The answer to a message handed to apply: result "received", "duplicate"
** or "refused" (reason says why), or NULL when it could not be recorded (the
** peer is told "busy" and resends). Frees ticket; safe after cm_fed_destroy. */
void cm_fed_answer(void *ticket, const char *result, const char *reason);

/* Outbox rows were committed: route and send them on the next loop turn
** instead of at the next poll. Cheap; call after every commit that queued. */
void cm_fed_wake(cm_fed *fed);

/* Whether an outbox row to an organization on node may be queued routed
** (its peer set at insert): node is a configured peer and no pending row
** waits without a peer, so rows reach a peer in seq order. False when fed is
** NULL; when node is not a peer, the row that will wait is noted. */
bool cm_fed_route_at_insert(cm_fed *fed, const char *node);

/* Close the loop handles (call from the loop, e.g. on SIGTERM). */
void cm_fed_stop(cm_fed *fed);

/* After the loop has run the closes: close the sockets, free, NULL *fed_p. */
void cm_fed_destroy(cm_fed **fed_p);

/* For the API and /metrics: 1 when our link to peer said hello (up), 0 when
** it is down, -1 when fed is NULL or peer is not configured. */
int cm_fed_peer_up(const cm_fed *fed, const char *peer);

/* Apply mode: the delivers from peer parked in memory until the engine
** has room (batch entries count each; docs/federation.md, "Under load")
** and the bytes they hold. 0; -1 (zeros) when fed is NULL or peer is not
** configured. */
int cm_fed_peer_parked(const cm_fed *fed, const char *peer, long *delivers, size_t *bytes);

/* The apply path's load: messages handed to the engine and not answered
** yet (never past CM_FED_APPLY_MAX), the most at once since start, the
** times delivers from peers began to wait (parked) at the mark, and
** whether they wait now. */
typedef struct cm_fed_apply_stats {
    long applying, applying_max, pauses;
    bool paused;
} cm_fed_apply_stats;

/* Fill *st (zeros when fed is NULL). */
void cm_fed_apply_stats_get(const cm_fed *fed, cm_fed_apply_stats *st);

/* The endpoint the ROUTER is bound to (the port chosen when
** federation.listen asked for any, "tcp://127.0.0.1:*"). -1, buf "": none. */
int cm_fed_listen_endpoint(const cm_fed *fed, char *buf, size_t size);

/* Batches sent to peers so far and the delivers they carried (a peer
** speaking 1.1 gets none). */
void cm_fed_batch_counts(const cm_fed *fed, long *batches, long *delivers);

/* The outbox rows pending for peer (routed to it and past its mark, or not
** routed yet but for an organization on its node) and the age in seconds of
** the oldest at now_ms (-1 when none), read through store (any thread's
** own). The CLI's `peers`, the API's /v1/peers and its metrics. */
int cm_fed_outbox_depth(cm_store *store, const char *peer, int64_t now_ms, long *depth,
                        double *age_s, cm_err *err);

/* Delivers sent to peers so far, alone or in batches, resends included
** (outbox.attempts no longer counts the sends of a row delivered in order). */
long cm_fed_sent(const cm_fed *fed);

#endif
