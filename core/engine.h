/*
** engine.h -- the durable workflow engine. Instances of Lua-defined state
** machines start with an input, receive named events with JSON payloads, and
** change state, context and effects in one transaction per event. Ready work
** (new instances, submitted events, due timers, retries) is processed in
** batches: one COMMIT per batch, and only then is each submitter told the
** outcome (group commit). A step's handler runs before anything of it is
** written; a step with effects, an end or a handler that writes is written
** in a SAVEPOINT of its own, the others (their own rows only) without one,
** so a database error in those fails the whole batch. A handler that fails
** leaves nothing; the event is kept with its error and retried with
** backoff, then parked as failed for an operator. Timers and retries live in
** the database, so nothing is lost across a crash.
**
** The engine knows nothing of Lua: it drives a cm_runtime (bindings/lua
** provides one) through the seam below. Depends on: store, model, clock,
** cJSON, libuv (optional). Loop thread only.
*/
#ifndef CM_ENGINE_H
#define CM_ENGINE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "clock.h"
#include "error.h"
#include "model.h"
#include "store.h"

#define CM_NAME_MAX        128
#define CM_WF_STARTERS_MAX 8

/* What compiling a workflow file tells the engine. */
typedef struct cm_wf_info {
    char name[CM_NAME_MAX];
    int version;             /* the version the file declares */
    char start[CM_NAME_MAX]; /* start state */
    /* message kinds from partners that start an instance (started_by) */
    char started_by[CM_WF_STARTERS_MAX][CM_NAME_MAX];
    int nstarted_by;
} cm_wf_info;

/* One step of one instance, handed to the runtime. */
typedef struct cm_step {
    /* in */
    const char *workflow; /* definition name */
    int rev;              /* definition revision the instance is pinned to */
    const char *instance; /* instance id */
    long seq;             /* this step's number in the instance's history (1 = start) */
    const char *state;    /* current state; NULL: start the instance */
    const cJSON *input;   /* the instance's input */
    const char *event;    /* event name; NULL when starting */
    const cJSON *payload; /* event payload: an object, or a cJSON_Raw item whose
                          ** valuestring is an object's JSON text (cm_engine_signal_text) */
    bool is_timer;        /* the event is a timer firing */
    int64_t now_ms;       /* the engine's clock */
    const char *ctx;      /* the context as stored: a JSON object's text */
    /* in and out: the runtime's own copy of ctx, kept from the instance's last
    ** step so that the next need not read the text again (0: none). The step
    ** takes over the one it is given; what it leaves here (0: none) equals the
    ** context after the step (ctx_out, or ctx when that is NULL) and is the
    ** caller's, to hand to the instance's next step or to release. */
    int64_t ctx_held;
    /* out */
    char *ctx_out;          /* the context after the step as JSON object text (engine
                            ** frees), or NULL when the step left it as it was */
    char next[CM_NAME_MAX]; /* the state after the step */
    bool final;             /* next is a final state */
    bool handled;           /* false: the state has no transition for event (nothing changed) */
    bool guarded;           /* with !handled: transitions exist but every guard refused */
    char refusal[160];      /* with guarded: the reason the last guard to refuse gave (its
                            ** second result), cut to fit; "" when it gave none */
    bool moved;             /* a transition ran (exit/enter), possibly back to the same state */
    int visit;              /* states entered in this step (0: none; next is the last of them) */
    cJSON *effects;         /* array of effect objects (see below), or NULL; engine frees */
    /* out, set on error too: the audit entries the step's handlers appended
    ** (in the savepoint cm_store_nested_write opened), as an array of objects
    ** {actor, action, patient, classes, purpose, detail}, or NULL; the engine
    ** takes it, to write them again (outcome "error") if it rolls the step
    ** back: what a handler read reached it all the same */
    cJSON *audited;
} cm_step;

/*
** Effects a step may ask for (objects in cm_step.effects, applied by the
** engine in the step's transaction, in order):
**   {"type":"timer","name":N,"due":MS,"payload":{},"scoped":STATE|null,"visit":V}
**                                 start/replace timer N; V: states entered before it in the step
**   {"type":"cancel","name":N}                                           cancel timer N
**   {"type":"task","task":{task record without id}}                      create a human task
**   {"type":"notify","channel":C,"to":ID,"message":TEXT,"data":{}}      queue a notification
**   {"type":"spawn","workflow":W,"input":{},"id":ID|null}              start a child instance
**   {"type":"kpi","name":N,"value":X,"labels":{}}                       record a KPI observation
**   {"type":"send","to":ORG,"kind":K,"payload":{},"from":ORG,"purpose":P,
**    "patient":ID|null,"share":[classes],"classes":[classes]}             queue a message to a
**    partner, after checking the partnership's terms and the patient's consent (terms.h):
**    "classes" the payload carries (all allowed, or refused), "share" the classes of the
**    patient's record to attach (cut to what is allowed). Refused: no message goes out;
**    the instance gets the event "send.refused" {to, kind, purpose, reason}.
** A timer with "scoped" set is cancelled when the instance leaves that state, also
** within the step that started it (its visit is not the step's last, save a handler's
** timer when the step re-enters the state it started in).
*/

/* The seam to the language runtime: a struct of function pointers with contracts. */
typedef struct cm_runtime {
    void *ud;
    /* Compile and check a definition (origin names it in messages: a file path).
    ** Fills info; keeps the compiled definition pending until install. CM_ELUA /
    ** CM_EINVAL with "origin:line: message" when it is broken. */
    int (*compile)(void *ud, const char *origin, const char *source, size_t len, cm_wf_info *info,
                   cm_err *err);
    /* Keep the definition last compiled under info->name as (name, rev). */
    int (*install)(void *ud, const char *name, int rev, cm_err *err);
    /* Is (name, rev) installed? */
    bool (*installed)(void *ud, const char *name, int rev);
    /* Run one step. CM_EINVAL: the request is wrong (bad input, unknown state)
    ** and changes nothing; CM_ELUA/CM_EBUDGET/CM_EMEMCAP: a handler failed. On
    ** error the step's outputs are unset but audited. A handler writes to the store only
    ** in a nested scope opened after cm_store_nested_write (model.c, plugin.c
    ** do); any other write fails the batch. */
    int (*step)(void *ud, cm_step *step, cm_err *err);
    /* Drop a copy of a context that a step left in cm_step.ctx_held (the
    ** caller's copy of the instance is gone or no longer equals its row).
    ** May be NULL when step never leaves one. */
    void (*release)(void *ud, int64_t held);
} cm_runtime;

/* The instance cache's bound by default and at most (engine.instance_cache).
** An entry costs about 1.4 KB with a context of tens of bytes, and grows with
** the context and input it holds (docs/PERFORMANCE.md, "The instance
** cache's size"); the Lua tables kept for them stay within a quarter of the
** state's memory cap whatever the bound (bindings/lua/lworkflow.c). */
#define CM_ENGINE_CACHE_DEFAULT 65536
#define CM_ENGINE_CACHE_LIMIT   1048576

typedef struct cm_engine_opts {
    cm_store *store;           /* borrowed */
    cm_model *model;           /* borrowed: tasks are records */
    cm_clock *clock;           /* borrowed */
    const cm_runtime *runtime; /* borrowed */
    int batch_max;             /* items per commit; 0 selects 256 */
    int max_attempts;          /* failed handler runs before an event is parked; 0 selects 5 */
    int64_t retry_base_ms;     /* first retry delay, doubled each attempt; 0 selects 1000 */
    const char *node_id;       /* this node: organizations hosted here receive messages */
    int batch_ms; /* a batch takes no more submissions after this much work (ms), so the
                  ** first acks wait for slow steps only so long; 0 selects 10, negative:
                  ** by count only */
    /* optional: whether a message to an organization on node may be queued
    ** routed (outbox.peer set at insert, so federation sends it without a
    ** routing pass of its own); NULL: every message waits for federation to
    ** route it. */
    bool (*route_at_insert)(void *ud, const char *node);
    void *route_ud;
    int cache_max; /* running instances kept in memory between steps (the one stepped
                   ** longest ago goes when full); 0 selects CM_ENGINE_CACHE_DEFAULT,
                   ** negative: none */
    /* Pipelined group commit, only while attached to a loop: a batch commits
    ** deferred (cm_store_begin_deferred: its fsync on the store's sync
    ** thread) and the loop goes on to the next batch; the batch's acks and
    ** observer events wait until the store's watermark covers its commit. A
    ** failed sync acknowledges nothing it did not cover: every submitter
    ** whose batch it left not known durable is told CM_EINDOUBT (the batch
    ** may or may not be there after a restart), work not yet run CM_EIO, and
    ** the engine stops (the store takes no more writes).
    ** Unattached, cm_engine_run commits synced as always. */
    bool pipeline;
} cm_engine_opts;

typedef struct cm_engine cm_engine;

/* What a submitter is told once the batch holding its work has committed. */
typedef struct cm_ack {
    int status;           /* 0, or the CM_E* code of a refusal or a failure */
    const char *instance; /* instance id */
    const char *state;    /* state after the step (NULL on error) */
    const char *message;  /* why it failed (NULL on success) */
    bool kept;            /* on failure: the event was kept for retry (true) or refused (false) */
    const char *result;   /* messages (cm_engine_receive): "received", "duplicate" or
                          ** "refused" (message says why); NULL otherwise */
} cm_ack;
typedef void (*cm_ack_cb)(void *ud, const cm_ack *ack);

/* What happened to an instance, told to the observer after it is durable. */
typedef enum {
    CM_ENGINE_STARTED = 1,    /* an instance started (to: its first state) */
    CM_ENGINE_STATE_CHANGED,  /* from -> to */
    CM_ENGINE_ENDED,          /* final state reached or cancelled (to: state, detail: status) */
    CM_ENGINE_TASK_CREATED,   /* detail: the task's id */
    CM_ENGINE_MESSAGE_QUEUED, /* a message to a partner was queued (detail: receiver) */
    CM_ENGINE_EVENT_PARKED    /* the instance ended with an event kept for it (held, queued or
                              ** waiting for a retry): parked as failed, never applied (to: the
                              ** state it ended in, detail: "NAME (seq N)") */
} cm_engine_event_kind;

typedef struct cm_engine_event {
    cm_engine_event_kind kind;
    const char *instance, *workflow;
    const char *from, *to; /* states; "" when not applicable */
    const char *detail;    /* see the kinds; "" when not applicable */
} cm_engine_event;

/* Called once per event, in order, after the batch (or operator action)
** holding it committed; never for work that was rolled back. Strings are
** borrowed for the call. */
typedef void (*cm_engine_observer)(void *ud, const cm_engine_event *ev);

/* A new engine on opts->store; NULL with *err on failure. At most one engine
** per store at a time (another after the first is destroyed is fine): the
** instance cache assumes it, and the step's kept statements stay bound to
** the engine's time buffer, so a second live engine's steps could write
** the other's time or, once that one is freed, read freed memory. */
cm_engine *cm_engine_new(const cm_engine_opts *opts, cm_err *err);
/* Detach, tell queued work it will not run, free the engine (when it was
** attached, in its handles' last close callback); NULL *engine_p. */
void cm_engine_destroy(cm_engine **engine_p);

/* Load a workflow file: compiled and checked first; a file whose text differs
** from the latest revision of its workflow becomes a new revision for new
** instances (running ones stay on theirs). A broken file is refused and the
** previous revision keeps serving. info (may be NULL) receives what loaded;
** *rev the revision now current. */
int cm_engine_load_file(cm_engine *e, const char *path, cm_wf_info *info, int *rev, cm_err *err);
/* The same for a source held in memory (text NUL-terminated at len); origin
** names it in messages and in workflow_def.origin ("embedded:referral.lua"). */
int cm_engine_load_source(cm_engine *e, const char *origin, const char *text, size_t len,
                          cm_wf_info *info, int *rev, cm_err *err);

/* Queue the start of an instance of workflow (its current revision) with
** input. id may be NULL to have one made. The workflow must be loaded
** (CM_ENOTFOUND). cb (may be NULL) is called after the commit. */
int cm_engine_start(cm_engine *e, const char *workflow, const cJSON *input, const char *id,
                    cm_ack_cb cb, void *ud, cm_err *err);

/* Queue event with payload (an object or NULL) for instance. A payload or
** input holding a number that is not finite (cJSON's reading of 1e999) is
** refused, CM_EINVAL naming its path (cm_model_doc_finite). */
int cm_engine_signal(cm_engine *e, const char *instance, const char *event, const cJSON *payload,
                     cm_ack_cb cb, void *ud, cm_err *err);

/* The same with the payload as the text of one JSON object, payload[0..len)
** (copied): the step reads it into Lua straight from the text, with no cJSON
** tree. Text that is not one, nested at most CM_JSON_PAYLOAD_DEPTH_MAX deep
** as the API's event route takes one (cm_json_object_check), is refused,
** CM_EINVAL: "payload: must be an object" when it does not open with '{' (as
** cm_engine_signal says of other JSON), "payload.PATH: number out of range"
** when its first fault is a number past a double's range (as
** cm_engine_signal and cm_engine_start say of a tree's), else "payload: not
** valid JSON (at byte N)". */
int cm_engine_signal_text(cm_engine *e, const char *instance, const char *event,
                          const char *payload, size_t len, cm_ack_cb cb, void *ud, cm_err *err);
/* The same for text the caller has already checked to be one JSON object
** (cm_json_object_check gave 0, or cm_json_object_len its length): queued
** without checking it again (the HTTP API's event route, whose body reader
** checks the payload as it finds it). Only the names are checked here. */
int cm_engine_signal_checked(cm_engine *e, const char *instance, const char *event,
                             const char *payload, size_t len, cm_ack_cb cb, void *ud, cm_err *err);

/* A message from a partner node (fed.h), applied once: recorded in the inbox
** under (peer, id) in the same transaction as its effect. Its effect: the
** event `kind` for the instance it continues (reply_to, which must have
** exchanged messages with this peer before), or a new instance of the
** workflow started_by `kind`, with the payload as input plus from, to and
** (when shared) patient_record. Both ends' terms are checked again here
** (terms.h); what they do not cover is refused, audited, and answered
** "refused". A duplicate is answered with the first answer. A message whose
** prev is not in the inbox yet is not applied: its ack has status CM_ENOTFOUND
** and no result (federation answers busy; the peer resends in order). */
typedef struct cm_engine_msg {
    const char *peer;      /* the authenticated sending node */
    const char *id;        /* the message id */
    const char *kind;      /* e.g. "referral.request" */
    const char *from, *to; /* sending and receiving organizations */
    const char *purpose;   /* "referral", "immunization", ... */
    const cJSON *classes;  /* data classes carried (array of names), or NULL */
    const char *patient;   /* whose data ("" or NULL when none) */
    const cJSON *record;   /* the shared patient record, or NULL */
    const char *instance;  /* the sender's instance ("" when none) */
    const char *reply_to;  /* this node's instance it continues ("" when none) */
    const cJSON *payload;  /* an object */
    const char *prev;      /* the message the peer sent before it ("" or NULL: none) */
} cm_engine_msg;

/* Queue m; cb is told (ack.result) after the commit. Strings are copied. */
int cm_engine_receive(cm_engine *e, const cm_engine_msg *m, cm_ack_cb cb, void *ud, cm_err *err);

/* Post send.refused {to, kind, purpose, reason} to instance, inside the
** caller's open transaction (federation: a route or a partner refused the
** message). The engine picks it up as a due event; call cm_engine_wake
** after the commit. */
int cm_engine_post_refused(cm_engine *e, const char *instance, const char *to, const char *kind,
                           const char *purpose, const char *reason, cm_err *err);
void cm_engine_wake(cm_engine *e);

/* Process queued work, due timers and due retries in batches until nothing
** is ready. *processed (may be NULL) counts items. Unless pipelined on a
** loop, every ack of what it committed is told before it returns. */
int cm_engine_run(cm_engine *e, long *processed, cm_err *err);

/* Earliest time (ms) at which a timer or retry falls due; INT64_MAX if none. */
int64_t cm_engine_next_due(cm_engine *e);

/* Operator actions, each its own transaction. Pause holds events and timers
** (kept, not lost) until resume; cancel ends the instance and drops its timers. */
int cm_engine_pause(cm_engine *e, const char *instance, cm_err *err);
int cm_engine_resume(cm_engine *e, const char *instance, cm_err *err);
int cm_engine_cancel(cm_engine *e, const char *instance, const char *reason, cm_err *err);

/* The same actions with what the caller must write in the action's
** transaction (an audit entry): also(ud, instance, input) runs after the
** change and before the commit, with the instance's id and input (borrowed
** for the call); a non-zero return rolls the action back and is returned.
** reason is for cancel only. */
typedef enum { CM_ENGINE_PAUSE, CM_ENGINE_RESUME, CM_ENGINE_CANCEL } cm_engine_action;
typedef int (*cm_engine_also_fn)(void *ud, const char *instance, const cJSON *input, cm_err *err);
int cm_engine_act(cm_engine *e, const char *instance, cm_engine_action action, const char *reason,
                  cm_engine_also_fn also, void *ud, cm_err *err);

/* How many events are kept for instance to run (held while it was paused,
** queued, waiting for a retry) in *n. After a resume these run in the
** batches that follow, not in the resume's transaction. */
int cm_engine_queued(cm_engine *e, const char *instance, long *n, cm_err *err);

/* Parked events: retry now (attempts reset) or discard. CM_ENOTFOUND when
** seq is not a parked event; a retry of one whose instance ended is refused
** (CM_ESTATE), nothing changed. */
int cm_engine_retry_event(cm_engine *e, long seq, cm_err *err);
int cm_engine_discard_event(cm_engine *e, long seq, cm_err *err);

/* The instance as JSON: id, workflow, rev, version, state, status, input,
** context, parent, timers, history. Caller deletes *out. */
int cm_engine_get(cm_engine *e, const char *instance, cJSON **out, cm_err *err);

/* Events kept with an error ({seq, instance, name, attempts, error, status, due}). */
int cm_engine_failed(cm_engine *e, cJSON **out, cm_err *err);

/* Set (or clear, with NULL) the one observer of instance events. */
void cm_engine_observe(cm_engine *e, cm_engine_observer fn, void *ud);

/* The commit an output made now may show (the output-commit rule, store.h):
** while the acks and observer events of a pipelined batch are told, that
** batch's commit; while acks in doubt (CM_EINDOUBT) or of work that never
** ran are told, the watermark (they show nothing, and must not wait for a
** sync that failed); otherwise the store's latest (cm_store_commit_seq). */
uint64_t cm_engine_output_seq(const cm_engine *e);
/* Inside the ack callback of an event in a pipelined batch: when (uv_hrtime
** ns) the event was submitted, its batch began and committed (read just
** after the commit returned: the sync may have begun a little before), the
** store's sync that covered the commit ran, and the batch's acks were
** released.
** 0, or -1 elsewhere (and when the store no longer knows that sync). For
** measurements: `caremesh bench engine` splits its latency with it. */
typedef struct cm_engine_ack_times {
    int64_t submitted, begun, committed, sync_start, sync_end, released;
} cm_engine_ack_times;
int cm_engine_ack_times_get(const cm_engine *e, cm_engine_ack_times *out);
/* fn(ud) runs on the loop each time a pipelined engine learns that the
** store's watermark moved or a sync failed, after it told what that
** released: others holding outputs for the watermark (HTTP answers,
** federation's sends) go on from there. NULL removes it. */
void cm_engine_on_durable(cm_engine *e, void (*fn)(void *ud), void *ud);

/* Run on loop: process work when it is queued and arm one uv timer for the
** earliest due item. Detach (or destroy) before closing the loop; detach
** waits for the sync of every pipelined batch and tells its acks. */
int cm_engine_attach(cm_engine *e, uv_loop_t *loop, cm_err *err);
void cm_engine_detach(cm_engine *e);

/* ---- for the API and /metrics ------------------------------------------ */

/* Cumulative since cm_engine_new. Latency: from cm_engine_start/signal to the
** submitter's acknowledgement (after the commit is durable), in seconds. */
#define CM_ENGINE_LATENCY_BUCKETS 12
extern const double cm_engine_latency_bounds[CM_ENGINE_LATENCY_BUCKETS];
typedef struct cm_engine_stats {
    uint64_t processed;    /* submissions, due timers and kept events run in committed batches */
    uint64_t failed;       /* runs that failed (refused, kept for retry, parked) */
    uint64_t lua_errors;   /* handler runs that raised */
    uint64_t budget_kills; /* handler runs stopped by the instruction budget or memory cap */
    uint64_t batches;      /* batches committed */
    uint64_t sync_waits;   /* pipelined batches whose acks waited for a sync thread */
    uint64_t latency_count;
    double latency_sum;
    uint64_t latency_le[CM_ENGINE_LATENCY_BUCKETS]; /* acks within bound i (cumulative) */
    uint64_t cache_hits;                            /* events whose instance was in memory */
    uint64_t cache_misses;    /* events whose instance was read from its row */
    uint64_t cache_evictions; /* entries dropped to make room (the cache was full) */
    uint64_t cache_entries;   /* running instances in memory now */
} cm_engine_stats;
void cm_engine_stats_get(const cm_engine *e, cm_engine_stats *out);

/* Called in the batch's transaction after each submission ran and before the
** commit, with what its submitter will be told and the cb and ud it gave to
** start/signal (a hook acts only on submissions whose cb it knows): for writes
** (an audit entry) that must commit with the change. A non-zero return rolls
** the whole batch back (every submitter is told). */
typedef int (*cm_engine_work_hook)(void *hook_ud, cm_ack_cb cb, void *submit_ud, const cm_ack *ack,
                                   cm_err *err);
void cm_engine_set_work_hook(cm_engine *e, cm_engine_work_hook fn, void *ud);

#endif
