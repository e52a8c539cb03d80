/*
** engine.c -- durable workflow instances: queue, batches with one savepoint
** per item and one commit per batch, effects, timers, retries, operator
** actions. Uses store, model, clock, cJSON, libuv; the runtime seam runs the
** handlers. See engine.h.
*/
#include "engine.h"

#include "audit.h"
#include "terms.h"

#include "fs.h"
#include "text.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_BATCH_DEFAULT      256
#define ENGINE_BATCH_MS_DEFAULT   10
#define ENGINE_DUE_AFTER_TIME     8 /* due items a batch still takes once its time is up */
#define ENGINE_ATTEMPTS_DEFAULT   5
#define ENGINE_RETRY_BASE_DEFAULT 1000
#define ENGINE_RETRY_MAX_MS       (3600 * 1000LL)
#define ENGINE_SPAWN_DEPTH        8
/* savepoints open at once: an event's, and per level of spawned children
** the start's and the one a writing handler opens (open_step_sp) */
#define ENGINE_SP_MAX      (2 * ENGINE_SPAWN_DEPTH + 4)
#define ENGINE_RUN_BATCHES 1000
/* A signal's work item, told, is kept for the next signal (at most this
** many: two default batches in flight), with room for names of at least
** ENGINE_WORK_NAMES bytes, so that most items fit any pair of names; an
** item with room for more than ENGINE_WORK_KEEP (a long payload's text) is
** freed. */
#define ENGINE_WORK_SPARE 512
#define ENGINE_WORK_NAMES 64
#define ENGINE_WORK_KEEP  1024
#define ENGINE_SOURCE_MAX ((size_t)4 << 20)
#define ENGINE_CACHE_MIN  64 /* the cache's first bucket array */

typedef enum { WORK_START, WORK_SIGNAL, WORK_MESSAGE } work_kind;

typedef struct msg_in msg_in;

/* A submission waiting for the next batch. */
typedef struct work {
    work_kind kind;
    char *workflow; /* WORK_START */
    char *instance; /* given id (start, may be NULL) or target (signal) */
    char *event;    /* WORK_SIGNAL */
    cJSON *data;    /* start input or event payload (an object) */
    msg_in *msg;    /* WORK_MESSAGE: the envelope (data is the payload) */
    cm_ack_cb cb;
    void *ud;
    uint64_t submitted_ns; /* uv_hrtime() at submission, for the latency histogram */
    struct work *next;
    bool names_inline; /* instance and event lie in w's own allocation (cm_engine_signal) */
    size_t names_cap;  /* bytes for them there */
    bool data_shared;  /* data is the engine's empty object (a signal without payload)
                       ** or raw, not to be freed */
    cJSON raw;         /* cm_engine_signal_text: data, its text after the names */
} work;

/* The outcome of one work item, told after the commit. */
typedef struct outcome {
    work *w;
    int status;
    bool kept;
    const char *result; /* messages: received | duplicate | refused */
    char instance[CM_NAME_MAX];
    char state[CM_NAME_MAX];
    char message[CM_ERR_MSG_MAX];
} outcome;

/* An instance event waiting for its transaction to commit. */
typedef struct pending_event {
    cm_engine_event_kind kind;
    char instance[CM_NAME_MAX], workflow[CM_NAME_MAX];
    char from[CM_NAME_MAX], to[CM_NAME_MAX], detail[CM_NAME_MAX];
} pending_event;

/* What is known of the scopes of an instance's timers: when known, every
** timer it has with a scope has the scope `one` (and none when !any); when
** not, any may have any scope. Leaving a state deletes its timers only when
** some may have its scope (see apply_step). */
typedef struct scopes {
    bool known, any;
    char one[CM_NAME_MAX];
} scopes;

/* A pipelined batch: committed, its acks and observer events waiting for the
** store's watermark to reach its commit (see cm_engine_opts.pipeline). */
typedef struct synced_wait {
    uint64_t seq; /* the batch's commit number (cm_store_commit_seq) */
    outcome *ocs;
    int n;
    pending_event *events;
    int nevents;
    bool failed; /* rolled back: its outcomes hold its own error, told as they are */
    int64_t begun_ns, committed_ns; /* uv_hrtime at its begin and after its commit */
    struct synced_wait *next;
} synced_wait;

/* A loaded instance row. */
typedef struct inst {
    int64_t seq; /* the row's key: the step's UPDATE finds it without the id index */
    char id[CM_NAME_MAX];
    char workflow[CM_NAME_MAX];
    int rev;
    char state[CM_NAME_MAX];
    char status[16];
    char parent[CM_NAME_MAX]; /* "" when none */
    long steps;
    int64_t hist;        /* seq of its latest history row; 0 when none */
    bool status_changed; /* status differs from the row's (see set_inst_status) */
    scopes scoped;       /* of its timers */
    cJSON *input;
    char *ctx;        /* the context as stored: a JSON object's text */
    int64_t ctx_held; /* the runtime's own copy of ctx (cm_step.ctx_held); 0: none */
    bool installed;   /* its definition is installed in the runtime (never undone) */
} inst;

/* A running instance kept in memory (see the instance cache). */
typedef struct cache_ent {
    inst in;
    uint32_t hash;                   /* of in.id */
    struct cache_ent *next;          /* in its bucket */
    struct cache_ent *newer, *older; /* in the order they were last stepped */
} cache_ent;

/* Running instances as last written (see cache_take): chained buckets by
** hash of the id, at most max entries; when full, the one stepped longest
** ago makes room. */
typedef struct inst_cache {
    cache_ent **buckets;
    size_t nbuckets; /* a power of two, grown with n up to about max; 0 before the first */
    int n, max;
    cache_ent *newest, *oldest;
    cache_ent *spare; /* the last entry taken, its memory kept for the next put */
} inst_cache;

/* A text parameter of a kept statement bound SQLITE_STATIC to a buffer of
** the engine's (bind_kept_at): which statement it is bound in, and the
** length it was bound with. SQLite reads the buffer when the statement
** steps, so a text of the same length is written into the buffer and
** needs no bind. */
typedef struct kept_bind {
    sqlite3_stmt *st; /* NULL: not bound (yet, or something else was) */
    size_t len;
} kept_bind;

/* The step's short texts that way (ids, event and state names, a small
** context): longer ones are bound where they are. */
#define KEPT_TEXT_MAX 192
typedef struct kept_text {
    kept_bind b;
    char buf[KEPT_TEXT_MAX];
} kept_text;

/* Which text each kept_text slot holds, one parameter of one statement. */
enum {
    KEPT_HIST_INSTANCE,
    KEPT_HIST_EVENT,
    KEPT_HIST_FROM,
    KEPT_HIST_TO,
    KEPT_STEP_STATE,
    KEPT_STEP_CTX,
    KEPT_NTEXTS
};

struct cm_engine {
    cm_engine_opts o;
    work *head, *tail;
    work *spare; /* told signal items kept for the next signals (ENGINE_WORK_SPARE) */
    int nspare;
    cJSON *empty; /* {}: the payload of every signal without one (steps only read it) */
    uv_loop_t *loop;
    uv_idle_t idle;                     /* keeps the loop from blocking while work is queued */
    uv_check_t check;                   /* runs batches after each loop iteration's I/O */
    uv_timer_t timer;                   /* armed for the earliest due timer or retry */
    uv_async_t synced;                  /* the store's sync thread: the watermark moved */
    synced_wait *wait_head, *wait_tail; /* pipelined batches, in commit order */
    uint64_t telling;                   /* the commit of the batch being told, or 0 */
    cm_engine_ack_times times;          /* of the ack being told (cm_engine_ack_times_get) */
    bool times_set;
    int64_t begun_ns;             /* uv_hrtime at the open batch's begin (pipelined) */
    bool telling_none;            /* telling answers that show no commit (in doubt, never run) */
    void (*durable_fn)(void *ud); /* cm_engine_on_durable */
    void *durable_ud;
    bool attached;
    int closing; /* handles still closing after detach */
    bool doomed; /* destroyed while handles close: the last close frees */
    bool in_run; /* a batch is running: no re-entry from callbacks */
    /* events of the open transaction, told to the observer after commit */
    cm_engine_observer observe;
    void *observe_ud;
    pending_event *events;
    int nevents, events_cap;
    int sp_marks[ENGINE_SP_MAX], nsp; /* where each open savepoint's events began */
    /* The audit entries handlers appended in the open savepoints (objects
    ** from cm_step.audited, the outermost's first), and where each open
    ** savepoint's began: a savepoint rolled back writes its own again (see
    ** sp_end). Emptied when an outermost savepoint opens. */
    cJSON *audited;
    int audit_marks[ENGINE_SP_MAX];
    /* the clock's time last formatted: every row of a step carries it */
    bool now_set;
    int64_t now_ms;
    char now_buf[CM_TIME_BUFSZ];
    size_t now_len; /* of now_buf's text */
    /* the step's history INSERT with its row time bound to now_buf: bound
    ** once, read by SQLite at each step (one engine per store, as the
    ** instance cache already assumes) */
    kept_bind now_bound;
    /* the step's other short texts, bound the same way (bind_kept) */
    kept_text kept[KEPT_NTEXTS];
    /* what cm_engine_next_due read at the end of this run's last batch, for
    ** arm_loop right after it (nothing runs in between) */
    bool due_read;
    int64_t due_next;
    /* Running instances as last written in a batch (see cache_take): a step
    ** neither re-reads nor re-parses them. */
    inst_cache cache;
    /* message kinds that start a workflow (started_by), from loaded files */
    struct starter {
        char kind[CM_NAME_MAX], workflow[CM_NAME_MAX];
    } * starters;
    int nstarters;
    /* for the API and /metrics */
    cm_engine_stats stats;
    uint64_t latency_in[CM_ENGINE_LATENCY_BUCKETS]; /* acks above bound i-1, within bound i */
    cm_engine_work_hook hook;
    void *hook_ud;
    /* A write outside a savepoint failed (see deliver): the batch cannot
    ** commit; every submitter of it hears this error, unless rerun: the
    ** store is sound and the batch runs again with every step in a
    ** savepoint of its own (every_sp), the failing step alone kept. */
    int broken;
    cm_err broken_err;
    bool rerun, every_sp;
    bool step_sp; /* a handler wrote (a plugin): the step's savepoint opened before it */
};

static void arm_loop(cm_engine *e);

static int sp_begin(cm_engine *e, cm_err *err);
static void sp_end(cm_engine *e, bool keep);

/* The open batch cannot commit (the first cause is kept). */
static void break_batch(cm_engine *e, const cm_err *err)
{
    if (!e->broken) {
        e->broken = err->code ? err->code : CM_EDB;
        e->broken_err = *err;
    }
}

/* The idle handle only keeps uv_run from blocking in poll while work is queued. */
static void noop_idle(uv_idle_t *h) {}

/* ---- small helpers ---------------------------------------------------- */

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Remember an event of the open transaction (only when someone observes). */
static void note_event(cm_engine *e, cm_engine_event_kind kind, const char *instance,
                       const char *workflow, const char *from, const char *to, const char *detail)
{
    if (!e->observe)
        return;
    if (e->nevents == e->events_cap) {
        int cap = e->events_cap ? e->events_cap * 2 : 64;
        pending_event *grown = realloc(e->events, (size_t)cap * sizeof(*grown));
        if (!grown)
            return; /* observers are told what memory allows; the work itself is durable */
        e->events = grown;
        e->events_cap = cap;
    }
    pending_event *pe = &e->events[e->nevents++];
    pe->kind = kind;
    cm_copy_str(pe->instance, sizeof(pe->instance), instance);
    cm_copy_str(pe->workflow, sizeof(pe->workflow), workflow);
    cm_copy_str(pe->from, sizeof(pe->from), from);
    cm_copy_str(pe->to, sizeof(pe->to), to);
    cm_copy_str(pe->detail, sizeof(pe->detail), detail);
}

/* Tell the observer events of a durable transaction, in order. */
static void tell_list(cm_engine *e, const pending_event *events, int n)
{
    for (int i = 0; i < n && e->observe; i++) {
        const pending_event *pe = &events[i];
        cm_engine_event ev = {pe->kind, pe->instance, pe->workflow, pe->from, pe->to, pe->detail};
        e->observe(e->observe_ud, &ev);
    }
}

/* The transaction committed: tell the observer, in order. */
static void tell_events(cm_engine *e)
{
    /* detach the list first: an observer may act on the engine (a cancel),
    ** whose own events must not be mixed with these or told twice */
    pending_event *events = e->events;
    int n = e->nevents, cap = e->events_cap;
    e->events = NULL;
    e->nevents = e->events_cap = 0;
    tell_list(e, events, n);
    if (!e->events) { /* keep the buffer for the next batch */
        e->events = events;
        e->events_cap = cap;
    } else {
        free(events);
    }
}

void cm_engine_observe(cm_engine *e, cm_engine_observer fn, void *ud)
{
    e->observe = fn;
    e->observe_ud = ud;
}

/* Bring e->now_buf to the clock's time (formatted again only when the
** second changes). */
static void now_update(cm_engine *e)
{
    int64_t ms = cm_clock_now_ms(e->o.clock);
    if (!e->now_set || ms != e->now_ms) {
        char *b = e->now_buf;
        if (e->now_set && ms >= 0 && e->now_ms >= 0 && ms / 1000 == e->now_ms / 1000 &&
            b[19] == '.' && b[23] == 'Z' && b[24] == '\0') {
            /* the same second ("YYYY-MM-DDTHH:MM:SS.mmmZ"): only the
            ** milliseconds change, without gmtime for the rest */
            int m = (int)(ms % 1000);
            b[20] = (char)('0' + m / 100);
            b[21] = (char)('0' + m / 10 % 10);
            b[22] = (char)('0' + m % 10);
        } else {
            cm_time_format(ms, b, sizeof(e->now_buf));
            e->now_len = strlen(b);
        }
        e->now_ms = ms;
        e->now_set = true;
    }
}

static void now_text(cm_engine *e, char *buf)
{
    now_update(e);
    memcpy(buf, e->now_buf, sizeof(e->now_buf));
}

/* Parameter i of st is buf's len bytes, which the caller has just written:
** the text stays bound to buf, which SQLite reads when the statement steps,
** so it is bound again only in a statement not seen before (by kb) or with
** another length. The statement is kept for the store's life and its
** bindings are never cleared (cm_store_prepare_bound); one kb per
** parameter of one statement. */
static void bind_kept_at(kept_bind *kb, sqlite3_stmt *st, int i, const char *buf, size_t len)
{
    if (kb->st != st || kb->len != len) {
        sqlite3_bind_text(st, i, buf, (int)len, SQLITE_STATIC);
        kb->st = st;
        kb->len = len;
    }
}

/* Parameter i of st (the history INSERT) is the clock's time now. */
static void bind_now(cm_engine *e, sqlite3_stmt *st, int i)
{
    now_update(e);
    bind_kept_at(&e->now_bound, st, i, e->now_buf, e->now_len);
}

static void msg_free(msg_in *m);

static void work_free(work *w)
{
    if (!w)
        return;
    msg_free(w->msg);
    free(w->workflow);
    if (!w->names_inline) {
        free(w->instance);
        free(w->event);
    }
    if (!w->data_shared)
        cJSON_Delete(w->data);
    free(w);
}

/* A told item: a signal's is kept for the next signal while there are
** fewer than ENGINE_WORK_SPARE (its payload freed now) if its room for
** names and payload text is at most ENGINE_WORK_KEEP; any other freed. */
static void work_done(cm_engine *e, work *w)
{
    if (!w)
        return;
    if (!w->names_inline || w->msg || w->workflow || e->nspare >= ENGINE_WORK_SPARE ||
        w->names_cap > ENGINE_WORK_KEEP) {
        work_free(w);
        return;
    }
    if (!w->data_shared)
        cJSON_Delete(w->data);
    w->data = NULL;
    w->next = e->spare;
    e->spare = w;
    e->nspare++;
}

/* The runtime's copy of a context goes with the text it equals. */
static void held_release(cm_engine *e, int64_t *held)
{
    if (*held && e->o.runtime->release)
        e->o.runtime->release(e->o.runtime->ud, *held);
    *held = 0;
}

static void inst_clear(cm_engine *e, inst *in)
{
    cJSON_Delete(in->input);
    free(in->ctx);
    in->input = NULL;
    in->ctx = NULL;
    held_release(e, &in->ctx_held);
}

/* ---- the instance cache ---------------------------------------------- */

/* Invariant: an entry equals its row as of the end of the last step that
** touched it. Whoever changes a row otherwise drops the entry; a batch that
** fails to commit clears them all. A step takes its instance's entry out
** (cache_take) and puts it back only when the step succeeded, so a failed
** step leaves none behind.
**
** Bounded: at most cache.max entries (cm_engine_opts.cache_max), only
** running instances (an ended or paused one is read from its row). When full,
** the entry stepped longest ago goes: the instance likeliest to take its next
** event soon is one that took one recently (a reply, the next message of an
** exchange), while one idle longest is likeliest to wait on a timer of hours
** or days. */

static uint32_t cache_hash(const char *id)
{
    uint32_t h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h;
}

/* Where the entry for id (hash h) is linked in its bucket, or where it would
** be (*link NULL). */
static cache_ent **cache_find(inst_cache *c, const char *id, uint32_t h)
{
    cache_ent **link = &c->buckets[h & (c->nbuckets - 1)];
    while (*link && ((*link)->hash != h || strcmp((*link)->in.id, id) != 0))
        link = &(*link)->next;
    return link;
}

/* Unlink the entry at *link from its bucket and the order of use. */
static cache_ent *cache_unlink(inst_cache *c, cache_ent **link)
{
    cache_ent *ent = *link;
    *link = ent->next;
    if (ent->newer)
        ent->newer->older = ent->older;
    else
        c->newest = ent->older;
    if (ent->older)
        ent->older->newer = ent->newer;
    else
        c->oldest = ent->newer;
    c->n--;
    return ent;
}

static void cache_ent_free(cm_engine *e, cache_ent *ent)
{
    inst_clear(e, &ent->in);
    free(ent);
}

/* Move the entry for id into *out (the caller owns it now); false if none. */
static bool cache_take(cm_engine *e, const char *id, inst *out)
{
    inst_cache *c = &e->cache;
    cache_ent **link = c->n ? cache_find(c, id, cache_hash(id)) : NULL;
    if (!link || !*link) {
        e->stats.cache_misses++;
        return false;
    }
    cache_ent *ent = cache_unlink(c, link);
    *out = ent->in;
    if (c->spare)
        free(ent);
    else
        c->spare = ent; /* nothing in it is owned any more */
    e->stats.cache_hits++;
    return true;
}

/* Twice the buckets (rehashed), while there are fewer than about max; a
** failed allocation only leaves the chains longer. */
static void cache_grow(inst_cache *c)
{
    size_t nb = c->nbuckets ? c->nbuckets * 2 : ENGINE_CACHE_MIN;
    if (c->nbuckets && c->nbuckets >= (size_t)c->max)
        return;
    cache_ent **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (cache_ent *ent = c->buckets[i], *next; ent; ent = next) {
            next = ent->next;
            ent->next = b[ent->hash & (nb - 1)];
            b[ent->hash & (nb - 1)] = ent;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

static void cache_drop(cm_engine *e, const char *id)
{
    inst_cache *c = &e->cache;
    cache_ent **link = c->n ? cache_find(c, id, cache_hash(id)) : NULL;
    if (link && *link)
        cache_ent_free(e, cache_unlink(c, link));
}

/* Keep in (moved: its input and ctx become the cache's) if it is running. */
static void cache_put(cm_engine *e, inst *in)
{
    inst_cache *c = &e->cache;
    if (strcmp(in->status, "running") != 0 || c->max <= 0)
        return; /* ended or paused: read back from the row when needed */
    uint32_t h = cache_hash(in->id);
    cache_ent **link = c->n ? cache_find(c, in->id, h) : NULL;
    if (link && *link) /* not expected: a step takes its entry out first */
        cache_ent_free(e, cache_unlink(c, link));
    if (c->n >= c->max) {
        cache_ent *old = c->oldest;
        cache_ent_free(e, cache_unlink(c, cache_find(c, old->in.id, old->hash)));
        e->stats.cache_evictions++;
    }
    if ((size_t)c->n >= c->nbuckets)
        cache_grow(c);
    cache_ent *ent = NULL;
    if (c->nbuckets && (ent = c->spare) != NULL)
        c->spare = NULL;
    else if (c->nbuckets)
        ent = malloc(sizeof(*ent));
    if (!ent)
        return; /* not kept: the row is the truth */
    ent->in = *in;
    in->input = NULL;
    in->ctx = NULL;
    in->ctx_held = 0;
    ent->hash = h;
    cache_ent **head = &c->buckets[ent->hash & (c->nbuckets - 1)];
    ent->next = *head;
    *head = ent;
    ent->newer = NULL;
    ent->older = c->newest;
    if (c->newest)
        c->newest->newer = ent;
    else
        c->oldest = ent;
    c->newest = ent;
    c->n++;
}

static void cache_clear(cm_engine *e)
{
    inst_cache *c = &e->cache;
    for (cache_ent *ent = c->oldest, *newer; ent; ent = newer) {
        newer = ent->newer;
        cache_ent_free(e, ent);
    }
    if (c->buckets)
        memset(c->buckets, 0, c->nbuckets * sizeof(*c->buckets));
    c->n = 0;
    c->newest = c->oldest = NULL;
    free(c->spare);
    c->spare = NULL;
}

static int db_fail(cm_engine *e, cm_err *err, const char *what)
{
    return cm_store_error(e->o.store, err, what);
}

/* Bind text or NULL. */
static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

/* Bind a JSON document as compact text ("{}" for NULL). A raw node (a
** payload's text from cm_engine_signal_text, checked) is parsed and printed
** again: kept, it is stored as the same text as a payload given as cJSON,
** never with the client's spacing or spelling of numbers and escapes. */
static int bind_json(sqlite3_stmt *st, int i, const cJSON *j)
{
    char *text;
    if (cJSON_IsRaw(j)) {
        cJSON *doc = cJSON_Parse(j->valuestring);
        text = doc ? cJSON_PrintUnformatted(doc) : NULL;
        cJSON_Delete(doc);
    } else {
        text = j ? cJSON_PrintUnformatted(j) : strdup("{}");
    }
    if (!text)
        return CM_ENOMEM;
    sqlite3_bind_text(st, i, text, -1, free);
    return 0;
}

/* Step a kept write statement to completion. A statement that is done is
** left as it is: its cursors are closed and its changes counted when it
** halts, and the next cm_store_prepare of it resets it (a second reset
** here cost ~70 instructions a statement); one that failed is reset now. */
static int exec_kept(cm_engine *e, sqlite3_stmt *st, const char *what, cm_err *err)
{
    if (sqlite3_step(st) == SQLITE_DONE)
        return 0;
    int rc = db_fail(e, err, what);
    sqlite3_reset(st);
    return rc;
}

#define PREPARE(e, sql, err)                                                                       \
    sqlite3_stmt *st = cm_store_prepare((e)->o.store, sql, err);                                   \
    if (!st)                                                                                       \
        return (err) ? (err)->code : CM_EDB;

/* The same for a statement whose caller binds every parameter, NULLs
** included, before each step (its last bindings are not cleared). */
#define PREPARE_BOUND(e, sql, err)                                                                 \
    sqlite3_stmt *st = cm_store_prepare_bound((e)->o.store, sql, err);                             \
    if (!st)                                                                                       \
        return (err) ? (err)->code : CM_EDB;

/* Bind text (NULL: SQL NULL) that outlives the statement's step, with its
** length (given -1, SQLite counts the bytes one at a time). */
static void bind_static(sqlite3_stmt *st, int i, const char *s)
{
    if (s) {
        size_t len = strlen(s);
        sqlite3_bind_text(st, i, s, len > INT_MAX ? -1 : (int)len, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, i);
    }
}

/* Parameter i of st is s (NULL: SQL NULL), which outlives the statement's
** step: a short text is copied into the engine's slot k and bound there
** once (bind_kept_at); a longer one or NULL is bound as it is
** (bind_static), and the slot binds again next time. */
static void bind_kept(cm_engine *e, int k, sqlite3_stmt *st, int i, const char *s)
{
    kept_text *kt = &e->kept[k];
    size_t len = s ? strlen(s) : 0;
    if (!s || len > sizeof(kt->buf)) {
        kt->b.st = NULL;
        bind_static(st, i, s);
        return;
    }
    memcpy(kt->buf, s, len);
    bind_kept_at(&kt->b, st, i, kt->buf, len);
}

/* Bind an id of a row, 0 (none) as NULL. */
static void bind_id(sqlite3_stmt *st, int i, int64_t id)
{
    if (id > 0)
        sqlite3_bind_int64(st, i, id);
    else
        sqlite3_bind_null(st, i);
}

/* ---- definitions ------------------------------------------------------ */

static int latest_rev(cm_engine *e, const char *name, int *rev, char **source, cm_err *err)
{
    PREPARE(e, "SELECT rev, source FROM workflow_def WHERE name = ?1 ORDER BY rev DESC LIMIT 1",
            err);
    int rc = 0;
    *rev = 0;
    if (source)
        *source = NULL;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        *rev = sqlite3_column_int(st, 0);
        if (source && !(*source = dup_str((const char *)sqlite3_column_text(st, 1))))
            rc = cm_err_set(err, CM_ENOMEM, "out of memory");
    } else if (s != SQLITE_DONE) {
        rc = db_fail(e, err, "workflow_def");
    }
    sqlite3_reset(st);
    return rc;
}

/* May wi claim its started_by kinds? Another workflow's kind is refused. */
static int starters_check(cm_engine *e, const cm_wf_info *wi, cm_err *err)
{
    for (int k = 0; k < wi->nstarted_by; k++)
        for (int i = 0; i < e->nstarters; i++)
            if (strcmp(e->starters[i].kind, wi->started_by[k]) == 0 &&
                strcmp(e->starters[i].workflow, wi->name) != 0)
                return cm_err_set(err, CM_EINVAL,
                                  "workflow %s: started_by \"%s\": workflow %s is already "
                                  "started by that message",
                                  wi->name, wi->started_by[k], e->starters[i].workflow);
    return 0;
}

/* Make wi's started_by kinds the ones that start it (replacing its old ones). */
static int starters_set(cm_engine *e, const cm_wf_info *wi, cm_err *err)
{
    int n = 0;
    for (int i = 0; i < e->nstarters; i++)
        if (strcmp(e->starters[i].workflow, wi->name) != 0)
            e->starters[n++] = e->starters[i];
    struct starter *grown =
        realloc(e->starters, (size_t)(n + wi->nstarted_by + 1) * sizeof(*e->starters));
    if (!grown)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    e->starters = grown;
    for (int k = 0; k < wi->nstarted_by; k++, n++) {
        cm_copy_str(e->starters[n].kind, CM_NAME_MAX, wi->started_by[k]);
        cm_copy_str(e->starters[n].workflow, CM_NAME_MAX, wi->name);
    }
    e->nstarters = n;
    return 0;
}

/* path names the source in messages and in workflow_def.origin. */
int cm_engine_load_source(cm_engine *e, const char *path, const char *text, size_t len,
                          cm_wf_info *info, int *rev_out, cm_err *err)
{
    char *latest = NULL, now[CM_TIME_BUFSZ];
    cm_wf_info wi;
    int rev = 0, rc;
    if ((rc = e->o.runtime->compile(e->o.runtime->ud, path, text, len, &wi, err)) != 0)
        goto done;
    if ((rc = latest_rev(e, wi.name, &rev, &latest, err)) != 0)
        goto done;
    if (!latest || strcmp(latest, text) != 0) {
        sqlite3_stmt *st = cm_store_prepare(e->o.store,
                                            "INSERT INTO workflow_def(name, rev, version, origin, "
                                            "source, loaded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                            err);
        if (!st) {
            rc = err->code;
            goto done;
        }
        rev++;
        now_text(e, now);
        sqlite3_bind_text(st, 1, wi.name, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, rev);
        sqlite3_bind_int(st, 3, wi.version);
        sqlite3_bind_text(st, 4, path, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, text, (int)len, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, now, -1, SQLITE_STATIC);
        if ((rc = exec_kept(e, st, "workflow_def", err)) != 0)
            goto done;
    }
    if ((rc = starters_check(e, &wi, err)) != 0)
        goto done;
    if ((rc = e->o.runtime->install(e->o.runtime->ud, wi.name, rev, err)) != 0)
        goto done;
    if ((rc = starters_set(e, &wi, err)) != 0)
        goto done;
    if (info)
        *info = wi;
    if (rev_out)
        *rev_out = rev;
done:
    free(latest);
    return rc;
}

int cm_engine_load_file(cm_engine *e, const char *path, cm_wf_info *info, int *rev_out, cm_err *err)
{
    char *text = NULL;
    size_t len = 0;
    int rc = cm_fs_read(path, ENGINE_SOURCE_MAX, &text, &len, err);
    if (rc == 0)
        rc = cm_engine_load_source(e, path, text, len, info, rev_out, err);
    free(text);
    return rc;
}

/* Make sure (name, rev) is compiled in the runtime: after a restart, running
** instances need the revision they started on, kept in workflow_def. */
static int ensure_installed(cm_engine *e, const char *name, int rev, cm_err *err)
{
    const cm_runtime *rt = e->o.runtime;
    cm_wf_info wi;
    int rc = 0;
    if (rt->installed(rt->ud, name, rev))
        return 0;
    PREPARE(e, "SELECT origin, source FROM workflow_def WHERE name = ?1 AND rev = ?2", err);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, rev);
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = cm_err_set(err, CM_ENOTFOUND, "workflow %s revision %d is not stored", name, rev);
    } else {
        const char *origin = (const char *)sqlite3_column_text(st, 0);
        const char *source = (const char *)sqlite3_column_text(st, 1);
        rc = rt->compile(rt->ud, origin, source, (size_t)sqlite3_column_bytes(st, 1), &wi, err);
        if (rc == 0)
            rc = rt->install(rt->ud, name, rev, err);
    }
    sqlite3_reset(st);
    return rc;
}

/* ---- instances -------------------------------------------------------- */

static cJSON *parse_column(sqlite3_stmt *st, int col)
{
    const char *text = (const char *)sqlite3_column_text(st, col);
    return text ? cJSON_Parse(text) : cJSON_CreateObject();
}

/* A stored context as text (copied), if it is a JSON object; NULL if not. */
static char *ctx_column(sqlite3_stmt *st, int col)
{
    const char *text = (const char *)sqlite3_column_text(st, col);
    cJSON *doc = text ? cJSON_Parse(text) : NULL;
    bool ok = cJSON_IsObject(doc);
    cJSON_Delete(doc);
    return ok ? dup_str(text) : NULL;
}

/* ---- what is known of scoped timers ---------------------------------- */

/* s gains scope (NULL: a timer without one). */
static void scopes_add(scopes *s, const char *scope)
{
    if (!s->known || !scope || (s->any && strcmp(s->one, scope) == 0))
        return;
    if (!s->any && strlen(scope) < sizeof(s->one)) {
        s->any = true;
        cm_copy_str(s->one, sizeof(s->one), scope);
    } else {
        s->known = false; /* two scopes (or a name too long to hold) */
    }
}

/* May a timer of s have scope? */
static bool scopes_may_have(const scopes *s, const char *scope)
{
    return !s->known || (s->any && strcmp(s->one, scope) == 0);
}

/* The timers of scope are gone. */
static void scopes_drop(scopes *s, const char *scope)
{
    if (s->known && s->any && strcmp(s->one, scope) == 0)
        s->any = false;
}

/* s gains what t holds. */
static void scopes_union(scopes *s, const scopes *t)
{
    if (!t->known)
        s->known = false;
    else if (t->any)
        scopes_add(s, t->one);
}

/* Read what scopes the instance's timers have (see inst.scoped). */
static int scoped_load(cm_engine *e, inst *in, cm_err *err)
{
    PREPARE(e, "SELECT min(scope), max(scope) FROM timer WHERE instance = ?1", err);
    int rc = 0;
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *lo = (const char *)sqlite3_column_text(st, 0);
        const char *hi = (const char *)sqlite3_column_text(st, 1);
        /* none, or one scope that fits: known */
        in->scoped.known = !hi || (strcmp(lo, hi) == 0 && strlen(hi) < CM_NAME_MAX);
        in->scoped.any = hi != NULL;
        cm_copy_str(in->scoped.one, sizeof(in->scoped.one), hi);
    } else {
        rc = db_fail(e, err, "timer");
    }
    sqlite3_reset(st);
    return rc;
}

static int inst_load(cm_engine *e, const char *id, inst *in, cm_err *err)
{
    PREPARE(e,
            "SELECT id, workflow, rev, state, status, coalesce(parent, ''), steps, input, ctx, "
            "coalesce(hist, 0), seq FROM instance WHERE id = ?1",
            err);
    int rc = 0;
    memset(in, 0, sizeof(*in));
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        cm_copy_str(in->id, sizeof(in->id), (const char *)sqlite3_column_text(st, 0));
        cm_copy_str(in->workflow, sizeof(in->workflow), (const char *)sqlite3_column_text(st, 1));
        in->rev = sqlite3_column_int(st, 2);
        cm_copy_str(in->state, sizeof(in->state), (const char *)sqlite3_column_text(st, 3));
        cm_copy_str(in->status, sizeof(in->status), (const char *)sqlite3_column_text(st, 4));
        cm_copy_str(in->parent, sizeof(in->parent), (const char *)sqlite3_column_text(st, 5));
        in->steps = sqlite3_column_int64(st, 6);
        in->input = parse_column(st, 7);
        in->ctx = ctx_column(st, 8);
        in->hist = sqlite3_column_int64(st, 9);
        in->seq = sqlite3_column_int64(st, 10);
        if (!in->input || !in->ctx) {
            inst_clear(e, in);
            rc = cm_err_set(err, CM_EDB, "instance %s: stored input or context is not JSON", id);
        }
    } else if (s == SQLITE_DONE) {
        rc = cm_err_set(err, CM_ENOTFOUND, "no instance with id \"%s\"", id);
    } else {
        rc = db_fail(e, err, "instance");
    }
    sqlite3_reset(st);
    if (rc == 0 && (rc = scoped_load(e, in, err)) != 0)
        inst_clear(e, in);
    return rc;
}

/* Append a history row chained to the instance's previous one; in->hist
** names it (saved with the instance row, which every caller writes next). */
static int insert_history(cm_engine *e, inst *in, const char *event, const char *from,
                          const char *to, const char *note, cm_err *err)
{
    int rc;
    PREPARE_BOUND(e,
                  "INSERT INTO history(instance, step, at, event, from_state, to_state, note, "
                  "prev) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                  err);
    bind_kept(e, KEPT_HIST_INSTANCE, st, 1, in->id);
    sqlite3_bind_int64(st, 2, in->steps + 1);
    bind_now(e, st, 3);
    bind_kept(e, KEPT_HIST_EVENT, st, 4, event);
    bind_kept(e, KEPT_HIST_FROM, st, 5, from);
    bind_kept(e, KEPT_HIST_TO, st, 6, to);
    bind_static(st, 7, note);
    bind_id(st, 8, in->hist);
    if ((rc = exec_kept(e, st, "history", err)) == 0)
        in->hist = sqlite3_last_insert_rowid(cm_store_db(e->o.store));
    return rc;
}

static void set_inst_status(inst *in, const char *status)
{
    cm_copy_str(in->status, sizeof(in->status), status);
    in->status_changed = true;
}

static int save_status(cm_engine *e, const inst *in, cm_err *err)
{
    PREPARE(e, "UPDATE instance_base SET status = ?2 WHERE seq = ?1", err);
    sqlite3_bind_int64(st, 1, in->seq);
    sqlite3_bind_text(st, 2, in->status, -1, SQLITE_STATIC);
    return exec_kept(e, st, "instance", err);
}

/* Write what the step changed: the instance_step row (its count and time
** are the history row's, which hist names), and status (in instance_base)
** only when it changed, which also rewrites its instance_by_workflow entry. */
static int save_instance(cm_engine *e, inst *in, cm_err *err)
{
    int rc;
    if (in->status_changed && (rc = save_status(e, in, err)) != 0)
        return rc;
    PREPARE_BOUND(e, "UPDATE instance_step SET state = ?2, ctx = ?3, hist = ?4 WHERE seq = ?1",
                  err);
    sqlite3_bind_int64(st, 1, in->seq);
    bind_kept(e, KEPT_STEP_STATE, st, 2, in->state);
    bind_kept(e, KEPT_STEP_CTX, st, 3, in->ctx);
    bind_id(st, 4, in->hist);
    if ((rc = exec_kept(e, st, "instance", err)) == 0 &&
        sqlite3_changes(cm_store_db(e->o.store)) != 1)
        rc = cm_err_set(err, CM_EDB, "instance %s: its row (%lld) is gone", in->id,
                        (long long)in->seq);
    if (rc == 0)
        in->status_changed = false;
    return rc;
}

static int insert_instance_step(cm_engine *e, const inst *in, cm_err *err)
{
    PREPARE(e, "INSERT INTO instance_step(seq, state, ctx) VALUES (?1, ?2, ?3)", err);
    sqlite3_bind_int64(st, 1, in->seq);
    sqlite3_bind_text(st, 2, in->state, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, in->ctx, -1, SQLITE_STATIC);
    return exec_kept(e, st, "instance", err);
}

/* The instance's two rows (instance_base, instance_step); in->seq names them. */
static int insert_instance(cm_engine *e, inst *in, cm_err *err)
{
    char now[CM_TIME_BUFSZ];
    PREPARE(e,
            "INSERT INTO instance_base(id, workflow, rev, status, input, parent, created) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            err);
    now_text(e, now);
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->workflow, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, in->rev);
    sqlite3_bind_text(st, 4, in->status, -1, SQLITE_STATIC);
    if (bind_json(st, 5, in->input) != 0) {
        sqlite3_reset(st);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    bind_text(st, 6, in->parent[0] ? in->parent : NULL);
    sqlite3_bind_text(st, 7, now, -1, SQLITE_STATIC);
    int rc = exec_kept(e, st, "instance", err);
    if (rc == CM_EEXISTS)
        return cm_err_set(err, CM_EEXISTS, "an instance with id \"%s\" already exists", in->id);
    if (rc != 0)
        return rc;
    in->seq = sqlite3_last_insert_rowid(cm_store_db(e->o.store));
    return insert_instance_step(e, in, err);
}

/* "<workflow>-<n>", n one past the highest instance number so far. */
static int make_instance_id(cm_engine *e, const char *workflow, char *out, size_t outsz,
                            cm_err *err)
{
    PREPARE(e, "SELECT coalesce(max(seq), 0) + 1 FROM instance_base", err);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(out, outsz, "%s-%lld", workflow, (long long)sqlite3_column_int64(st, 0));
    else
        rc = db_fail(e, err, "instance");
    sqlite3_reset(st);
    return rc;
}

/* ---- effects ---------------------------------------------------------- */

static const char *jstr(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int effect_timer(cm_engine *e, inst *in, const cJSON *fx, cm_err *err)
{
    const char *scope = jstr(fx, "scoped");
    int rc;
    PREPARE(e,
            "INSERT INTO timer(instance, name, due_ms, payload, scope) VALUES (?1, ?2, ?3, ?4, ?5) "
            "ON CONFLICT(instance, name) DO UPDATE SET due_ms = excluded.due_ms, "
            "payload = excluded.payload, scope = excluded.scope",
            err);
    const cJSON *due = cJSON_GetObjectItemCaseSensitive(fx, "due");
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, jstr(fx, "name"), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, cJSON_IsNumber(due) ? (sqlite3_int64)due->valuedouble : 0);
    if (bind_json(st, 4, cJSON_GetObjectItemCaseSensitive(fx, "payload")) != 0) {
        sqlite3_reset(st);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    bind_text(st, 5, scope);
    if ((rc = exec_kept(e, st, "timer", err)) == 0)
        scopes_add(&in->scoped, scope);
    return rc;
}

static int delete_timer(cm_engine *e, const char *instance, const char *name, cm_err *err)
{
    PREPARE(e, "DELETE FROM timer WHERE instance = ?1 AND name = ?2", err);
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    return exec_kept(e, st, "timer", err);
}

static int effect_task(cm_engine *e, const inst *in, const cJSON *fx, int index, cm_err *err)
{
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(fx, "task");
    char id[CM_NAME_MAX + 64];
    int rc;
    cJSON *doc = cJSON_Duplicate(task, true);
    if (!doc)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "id"))) {
        snprintf(id, sizeof(id), "%s.t%ld.%d", in->id, in->steps + 1, index);
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "id");
        cJSON_AddStringToObject(doc, "id", id);
    }
    rc = cm_model_create(e->o.model, CM_KIND_TASK, doc, NULL, err);
    if (rc == 0)
        note_event(e, CM_ENGINE_TASK_CREATED, in->id, in->workflow, "", in->state,
                   cJSON_GetObjectItemCaseSensitive(doc, "id")->valuestring);
    cJSON_Delete(doc);
    return rc ? cm_err_prefix(err, "task effect") : 0;
}

/* Bind instance, a, b, c (text, or JSON), then d (JSON) when the statement has a
** column for it, and the time last: the rows of notify and send. */
static int effect_row(cm_engine *e, sqlite3_stmt *st, const inst *in, const char *a, const char *b,
                      const cJSON *c, const cJSON *d, const char *what, cm_err *err)
{
    char now[CM_TIME_BUFSZ];
    int last = sqlite3_bind_parameter_count(st);
    now_text(e, now);
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, b, -1, SQLITE_TRANSIENT);
    if (cJSON_IsString(c))
        sqlite3_bind_text(st, 4, c->valuestring, -1, SQLITE_TRANSIENT);
    else if (bind_json(st, 4, c) != 0)
        goto nomem;
    if (last == 6 && bind_json(st, 5, d) != 0)
        goto nomem;
    sqlite3_bind_text(st, last, now, -1, SQLITE_STATIC);
    return exec_kept(e, st, what, err);
nomem:
    sqlite3_reset(st);
    return cm_err_set(err, CM_ENOMEM, "out of memory");
}

static int effect_notify(cm_engine *e, const inst *in, const cJSON *fx, cm_err *err)
{
    PREPARE(e,
            "INSERT INTO notification(instance, channel, recipient, message, data, created) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            err);
    return effect_row(e, st, in, jstr(fx, "channel"), jstr(fx, "to"),
                      cJSON_GetObjectItemCaseSensitive(fx, "message"),
                      cJSON_GetObjectItemCaseSensitive(fx, "data"), "notification", err);
}

/* ---- messages to partners (the send effect) ---- */

static int insert_event(cm_engine *e, const char *instance, const char *name, const cJSON *payload,
                        bool timer, int64_t due, cm_err *err);

/* "instance:ID" as an audit actor. */
static const char *actor_of(const char *instance, char *buf, size_t bufsz)
{
    snprintf(buf, bufsz, "instance:%s", instance);
    return buf;
}

/* The event send.refused {to, kind, purpose, reason} for instance, due now:
** how a workflow hears of a message that did not go, whoever refused it. */
static int post_refused(cm_engine *e, const char *instance, const char *to, const char *kind,
                        const char *purpose, const char *reason, cm_err *err)
{
    cJSON *ev = cJSON_CreateObject();
    int rc = 0;
    if (!ev || !cJSON_AddStringToObject(ev, "to", to) ||
        !cJSON_AddStringToObject(ev, "kind", kind) ||
        !cJSON_AddStringToObject(ev, "purpose", purpose ? purpose : "") ||
        !cJSON_AddStringToObject(ev, "reason", reason))
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
    if (rc == 0)
        rc = insert_event(e, instance, "send.refused", ev, false, cm_clock_now_ms(e->o.clock), err);
    cJSON_Delete(ev);
    return rc;
}

/* A send the terms refuse: an outbox row kept as refused (for the operator),
** the audit entry, and the event send.refused for the instance. */
static int send_refused(cm_engine *e, const inst *in, const cJSON *fx, const char *reason,
                        cm_err *err)
{
    char now[CM_TIME_BUFSZ], actor[CM_NAME_MAX + 16], detail[512];
    const char *to = jstr(fx, "to"), *kind = jstr(fx, "kind"), *purpose = jstr(fx, "purpose");
    now_text(e, now);
    PREPARE(e,
            "INSERT INTO outbox(instance, receiver, kind, payload, created, status, reason, "
            "done_at, sender, purpose, patient) "
            "VALUES (?1, ?2, ?3, '{}', ?4, 'refused', ?5, ?4, ?6, ?7, ?8)",
            err);
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, to, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, reason, -1, SQLITE_TRANSIENT);
    bind_text(st, 6, jstr(fx, "from"));
    bind_text(st, 7, purpose);
    bind_text(st, 8, jstr(fx, "patient"));
    int rc = exec_kept(e, st, "outbox", err);
    snprintf(detail, sizeof(detail), "%s to %s refused: %s", kind, to, reason);
    cm_audit_entry a = {.actor = actor_of(in->id, actor, sizeof(actor)),
                        .action = "message.send",
                        .patient = jstr(fx, "patient"),
                        .purpose = purpose,
                        .outcome = "refused",
                        .detail = detail};
    if (rc == 0)
        rc = cm_audit_append(e->o.store, e->o.clock, &a, err);
    if (rc == 0)
        rc = post_refused(e, in->id, to, kind, purpose, reason, err);
    return rc;
}

#define NODE_BUFSZ (CM_ID_MAX + 1) /* a node id, whole */

/* The node hosting organization org, into node (NODE_BUFSZ; "" when its
** record names none); why says so when no such organization is known here. */
static int org_node(cm_engine *e, const char *org, char *node, char *why, size_t whysz, cm_err *err)
{
    cJSON *rec = NULL;
    cm_err gerr;
    node[0] = '\0';
    int rc = cm_model_get(e->o.model, CM_KIND_ORGANIZATION, org, &rec, &gerr);
    if (rc == CM_ENOTFOUND) {
        snprintf(why, whysz, "no organization \"%s\" is known here", org);
        return 0;
    }
    if (rc != 0)
        return cm_err_set(err, rc, "%s", gerr.msg);
    cm_copy_str(node, NODE_BUFSZ, jstr(rec, "node"));
    cJSON_Delete(rec);
    return 0;
}

/* The node of a partner's organization: one known here, with a node that is
** not this one; "" with why otherwise. */
static int partner_node(cm_engine *e, const char *org, char *node, char *why, size_t whysz,
                        cm_err *err)
{
    int rc = org_node(e, org, node, why, whysz, err);
    if (rc != 0 || why[0])
        return rc;
    if (!node[0])
        snprintf(why, whysz, "organization \"%s\" has no node", org);
    else if (e->o.node_id && strcmp(node, e->o.node_id) == 0)
        snprintf(why, whysz, "organization \"%s\" is hosted on this node, not a partner's", org);
    if (why[0])
        node[0] = '\0';
    return 0;
}

/* The patient's record cut to mask, for the wire; *out NULL when the patient
** is not known here (why says so). */
static int shared_record(cm_engine *e, const char *patient, unsigned mask, cJSON **out, char *why,
                         size_t whysz, cm_err *err)
{
    cJSON *rec = NULL;
    cm_err gerr;
    *out = NULL;
    int rc = cm_model_get(e->o.model, CM_KIND_PATIENT, patient, &rec, &gerr);
    if (rc == CM_ENOTFOUND) {
        snprintf(why, whysz, "no patient \"%s\" is known here", patient);
        return 0;
    }
    if (rc != 0)
        return cm_err_set(err, rc, "%s", gerr.msg);
    *out = cm_terms_filter_patient(rec, mask);
    cJSON_Delete(rec);
    return *out ? 0 : cm_err_set(err, CM_ENOMEM, "out of memory");
}

/* The partner's instance this one talks to on node (NULL when it has not
** answered yet), remembering that this instance talks to that node. */
static int link_node(cm_engine *e, const char *instance, const char *node, char *remote,
                     cm_err *err)
{
    remote[0] = '\0';
    PREPARE(e, "INSERT OR IGNORE INTO instance_link(instance, node) VALUES (?1, ?2)", err);
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, node, -1, SQLITE_STATIC);
    int rc = exec_kept(e, st, "instance_link", err);
    if (rc != 0)
        return rc;
    st = cm_store_prepare(
        e->o.store, "SELECT remote FROM instance_link WHERE instance = ?1 AND node = ?2", err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, node, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        cm_copy_str(remote, CM_NAME_MAX, (const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
    return 0;
}

static int effect_send(cm_engine *e, const inst *in, const cJSON *fx, cm_err *err)
{
    const char *to = jstr(fx, "to"), *kind = jstr(fx, "kind"), *patient = jstr(fx, "patient");
    char node[NODE_BUFSZ], remote[CM_NAME_MAX], why[512] = "", today[CM_TIME_BUFSZ];
    char cls[128], actor[CM_NAME_MAX + 16], detail[512], partnership[129];
    unsigned need = 0, want = 0, allowed = 0;
    cJSON *record = NULL;
    cm_err terr;
    int rc;
    if ((rc = cm_class_parse(cJSON_GetObjectItemCaseSensitive(fx, "classes"), "send: classes",
                             &need, err)) != 0 ||
        (rc = cm_class_parse(cJSON_GetObjectItemCaseSensitive(fx, "share"), "send: share", &want,
                             err)) != 0)
        return rc;
    if (want && !patient)
        return cm_err_set(err, CM_EINVAL, "send: share needs the patient whose record it is");
    if ((rc = partner_node(e, to, node, why, sizeof(why), err)) != 0)
        return rc;
    if (why[0])
        return send_refused(e, in, fx, why, err);
    now_text(e, today);
    today[10] = '\0';
    cm_terms_req req = {.from = jstr(fx, "from"),
                        .to = to,
                        .purpose = jstr(fx, "purpose"),
                        .patient = patient,
                        .need = need,
                        .want = want,
                        .today = today};
    rc = cm_terms_check(e->o.model, &req, &allowed, partnership, &terr);
    if (rc == CM_EPERM)
        return send_refused(e, in, fx, terr.msg, err);
    if (rc != 0)
        return cm_err_set(err, rc, "%s", terr.msg);
    if (want && (rc = shared_record(e, patient, allowed & want, &record, why, sizeof(why), err)))
        return rc;
    if (want && !record)
        return send_refused(e, in, fx, why, err);
    unsigned carried = need | (record ? cm_terms_patient_classes(record) : 0);
    if ((rc = link_node(e, in->id, node, remote, err)) != 0)
        goto done;
    sqlite3_stmt *st = cm_store_prepare(
        e->o.store,
        "INSERT INTO outbox(instance, receiver, kind, payload, created, sender, purpose, "
        "classes, patient, record, reply_to, peer) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        err);
    if (!st) {
        rc = err->code;
        goto done;
    }
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, to, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_TRANSIENT);
    now_text(e, today);
    sqlite3_bind_text(st, 5, today, -1, SQLITE_STATIC);
    bind_text(st, 6, req.from);
    bind_text(st, 7, req.purpose);
    sqlite3_bind_text(st, 8, cm_class_list(carried, cls, sizeof(cls)), -1, SQLITE_STATIC);
    bind_text(st, 9, patient);
    bind_text(st, 11, remote[0] ? remote : NULL);
    bind_text(st, 12,
              e->o.route_at_insert && e->o.route_at_insert(e->o.route_ud, node) ? node : NULL);
    if (bind_json(st, 4, cJSON_GetObjectItemCaseSensitive(fx, "payload")) != 0 ||
        (record && bind_json(st, 10, record) != 0)) {
        sqlite3_reset(st);
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = exec_kept(e, st, "outbox", err)) != 0)
        goto done;
    if (patient || carried) {
        snprintf(detail, sizeof(detail), "%s to %s (node %s) under partnership %s", kind, to, node,
                 partnership);
        cm_audit_entry a = {.actor = actor_of(in->id, actor, sizeof(actor)),
                            .action = "message.send",
                            .patient = patient,
                            .classes = cls,
                            .purpose = req.purpose,
                            .outcome = "ok",
                            .detail = detail};
        if ((rc = cm_audit_append(e->o.store, e->o.clock, &a, err)) != 0)
            goto done;
    }
    note_event(e, CM_ENGINE_MESSAGE_QUEUED, in->id, in->workflow, "", in->state, to);
done:
    cJSON_Delete(record);
    return rc;
}

static int effect_kpi(cm_engine *e, const inst *in, const cJSON *fx, cm_err *err)
{
    char now[CM_TIME_BUFSZ];
    PREPARE(e,
            "INSERT INTO kpi_observation(name, value, labels, instance, workflow, at) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            err);
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(fx, "value");
    now_text(e, now);
    sqlite3_bind_text(st, 1, jstr(fx, "name"), -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 2, cJSON_IsNumber(value) ? value->valuedouble : 0);
    if (bind_json(st, 3, cJSON_GetObjectItemCaseSensitive(fx, "labels")) != 0) {
        sqlite3_reset(st);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    sqlite3_bind_text(st, 4, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, in->workflow, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, now, -1, SQLITE_STATIC);
    return exec_kept(e, st, "kpi_observation", err);
}

static int start_instance(cm_engine *e, const char *workflow, const cJSON *input, const char *id,
                          const char *parent, int depth, char *out_id, char *out_state,
                          inst *started, cm_err *err);

/* Was the timer effect fx started in a state that the step then left (a
** visit before its last, or the state it left)? Such a timer is started and
** cancelled within the step. A handler's timer (visit 0) in a state the step
** re-enters belongs to the new visit. */
static bool timer_passed(const cm_step *sp, const cJSON *fx)
{
    const char *scope = jstr(fx, "scoped");
    const cJSON *visit = cJSON_GetObjectItemCaseSensitive(fx, "visit");
    if (!scope)
        return false;
    if (strcmp(scope, sp->next) != 0)
        return true;
    return cJSON_IsNumber(visit) && visit->valueint != 0 && visit->valueint != sp->visit;
}

static int apply_effects(cm_engine *e, inst *in, const cm_step *sp, int depth, cm_err *err)
{
    const cJSON *fx;
    int rc = 0, index = 0;
    cJSON_ArrayForEach(fx, sp->effects)
    {
        const char *type = jstr(fx, "type");
        char child[CM_NAME_MAX], child_state[CM_NAME_MAX];
        index++;
        if (!type)
            rc = cm_err_set(err, CM_EINVAL, "effect %d has no type", index);
        else if (strcmp(type, "timer") == 0 && timer_passed(sp, fx))
            rc = delete_timer(e, in->id, jstr(fx, "name"), err); /* as if started, then left */
        else if (strcmp(type, "timer") == 0)
            rc = effect_timer(e, in, fx, err);
        else if (strcmp(type, "cancel") == 0)
            rc = delete_timer(e, in->id, jstr(fx, "name"), err);
        else if (strcmp(type, "task") == 0)
            rc = effect_task(e, in, fx, index, err);
        else if (strcmp(type, "notify") == 0)
            rc = effect_notify(e, in, fx, err);
        else if (strcmp(type, "send") == 0)
            rc = effect_send(e, in, fx, err);
        else if (strcmp(type, "kpi") == 0)
            rc = effect_kpi(e, in, fx, err);
        else if (strcmp(type, "spawn") == 0)
            rc = start_instance(e, jstr(fx, "workflow"),
                                cJSON_GetObjectItemCaseSensitive(fx, "input"), jstr(fx, "id"),
                                in->id, depth + 1, child, child_state, NULL, err);
        else
            rc = cm_err_set(err, CM_EINVAL, "effect %d: unknown type \"%s\"", index, type);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Queue a durable event for instance (child.done to a parent, held events). */
static int insert_event(cm_engine *e, const char *instance, const char *name, const cJSON *payload,
                        bool timer, int64_t due, cm_err *err)
{
    char now[CM_TIME_BUFSZ];
    PREPARE(e,
            "INSERT INTO event(instance, name, payload, timer, status, due_ms, created) "
            "VALUES (?1, ?2, ?3, ?4, 'ready', ?5, ?6)",
            err);
    now_text(e, now);
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    if (bind_json(st, 3, payload) != 0) {
        sqlite3_reset(st);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    sqlite3_bind_int(st, 4, timer);
    sqlite3_bind_int64(st, 5, due);
    sqlite3_bind_text(st, 6, now, -1, SQLITE_STATIC);
    return exec_kept(e, st, "event", err);
}

static bool parent_listens(cm_engine *e, const char *parent)
{
    sqlite3_stmt *st = cm_store_prepare(e->o.store,
                                        "SELECT status IN ('running','paused') FROM instance_base "
                                        "WHERE id = ?1",
                                        NULL);
    bool yes = false;
    if (st) {
        sqlite3_bind_text(st, 1, parent, -1, SQLITE_STATIC);
        yes = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
        sqlite3_reset(st);
    }
    return yes;
}

/* An instance ended: the events still kept for it (waiting for a retry,
** held while it was paused, queued) can no longer apply. None is dropped
** unseen: each is parked as failed, its error saying why, for the operator
** to see and discard (a retry of it is refused: cm_engine_retry_event), and
** noted to the observer (CM_ENGINE_EVENT_PARKED). The step's own kept event
** is gone by then (write_step). */
static int park_unapplied(cm_engine *e, const inst *in, cm_err *err)
{
    char detail[CM_ERR_MSG_MAX];
    int s, n = 0, rc;
    /* Most instances end with nothing kept: a plain read answers that for
    ** ~1/10 of what the UPDATE's RETURNING cost when it had no row. */
    {
        PREPARE(e, "SELECT seq, name FROM event WHERE instance = ?1 AND status = 'ready'", err);
        sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
        while ((s = sqlite3_step(st)) == SQLITE_ROW) {
            snprintf(detail, sizeof(detail), "%s (seq %lld)",
                     (const char *)sqlite3_column_text(st, 1),
                     (long long)sqlite3_column_int64(st, 0));
            note_event(e, CM_ENGINE_EVENT_PARKED, in->id, in->workflow, "", in->state, detail);
            n++;
        }
        rc = s == SQLITE_DONE ? 0 : db_fail(e, err, "event");
        sqlite3_reset(st);
        if (rc != 0 || n == 0)
            return rc;
    }
    PREPARE(e,
            "UPDATE event SET status = 'failed', error = 'instance ' || instance || ' ended (' || "
            "?2 || ', in state ' || ?3 || ') before ' || CASE WHEN attempts > 0 THEN "
            "'the retry of this event; it had failed: ' || coalesce(error, '') ELSE "
            "'this event ran' END || '; it was not applied' "
            "WHERE instance = ?1 AND status = 'ready'",
            err);
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, in->state, -1, SQLITE_STATIC);
    return exec_kept(e, st, "event", err);
}

/* An instance ended (final state or cancelled): drop its timers, park its
** pending events (park_unapplied), and tell its parent. */
static int finish_instance(cm_engine *e, const inst *in, cm_err *err)
{
    int rc;
    note_event(e, CM_ENGINE_ENDED, in->id, in->workflow, "", in->state, in->status);
    {
        PREPARE(e, "DELETE FROM timer WHERE instance = ?1", err);
        sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
        if ((rc = exec_kept(e, st, "timer", err)) != 0)
            return rc;
    }
    if ((rc = park_unapplied(e, in, err)) != 0)
        return rc;
    if (!in->parent[0] || !parent_listens(e, in->parent))
        return 0; /* an ended parent hears nothing more */
    cJSON *payload = cJSON_CreateObject(), *ctx = cJSON_Parse(in->ctx);
    if (!payload || !ctx || !cJSON_AddStringToObject(payload, "child", in->id) ||
        !cJSON_AddStringToObject(payload, "workflow", in->workflow) ||
        !cJSON_AddStringToObject(payload, "state", in->state) ||
        !cJSON_AddStringToObject(payload, "status", in->status) ||
        !cJSON_AddItemToObject(payload, "context", ctx)) {
        cJSON_Delete(payload);
        cJSON_Delete(ctx);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    rc =
        insert_event(e, in->parent, "child.done", payload, false, cm_clock_now_ms(e->o.clock), err);
    cJSON_Delete(payload);
    return rc;
}

/* Cancel the instance's timers scoped to state (had: what is known of the
** timers it had before this step, in->scoped: of those this step added);
** no DELETE when neither may have that scope. */
static int cancel_scoped(cm_engine *e, inst *in, scopes *had, const char *state, cm_err *err)
{
    int rc = 0;
    if (scopes_may_have(had, state) || scopes_may_have(&in->scoped, state)) {
        PREPARE(e, "DELETE FROM timer WHERE instance = ?1 AND scope = ?2", err);
        sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
        rc = exec_kept(e, st, "timer", err);
    }
    scopes_drop(had, state);
    scopes_drop(&in->scoped, state);
    return rc;
}

/* Leaving states cancels their timers: the state the step left (left, or
** NULL), and the states it passed through (an enter handler's wf:go), whose
** timers started in this step were never written (timer_passed). */
static int cancel_left(cm_engine *e, inst *in, scopes *had, const cm_step *sp, const char *left,
                       cm_err *err)
{
    const cJSON *fx = sp->effects ? sp->effects->child : NULL;
    const char *scope = left;
    int rc = 0;
    for (;;) {
        if (scope && (rc = cancel_scoped(e, in, had, scope, err)) != 0)
            return rc;
        for (scope = NULL; fx && !scope; fx = fx->next) {
            const char *type = jstr(fx, "type"), *s = jstr(fx, "scoped");
            if (type && strcmp(type, "timer") == 0 && s && strcmp(s, sp->next) != 0 &&
                (!left || strcmp(s, left) != 0))
                scope = s;
        }
        if (!scope)
            return 0;
    }
}

/* Record a step's outcome: instance row, history, scoped timers, effects, end. */
static int apply_step(cm_engine *e, inst *in, cm_step *sp, const char *event, int depth,
                      cm_err *err)
{
    char from[CM_NAME_MAX];
    int rc;
    cm_copy_str(from, sizeof(from), sp->state);
    if ((rc = insert_history(e, in, event, sp->state, sp->next, NULL, err)) != 0)
        return rc;
    in->steps++;
    cm_copy_str(in->state, sizeof(in->state), sp->next);
    if (sp->final)
        set_inst_status(in, "done");
    if (sp->ctx_out) { /* the step changed the context */
        free(in->ctx);
        in->ctx = sp->ctx_out;
        sp->ctx_out = NULL;
    }
    /* Leaving a state cancels the timers it started, also those its handlers
    ** started in this very step (so after the effects); re-entering the same
    ** state cancels the old visit's timers before the new visit starts its own. */
    bool left = sp->state && sp->moved && strcmp(from, sp->next) != 0;
    bool reentered = sp->state && sp->moved && !left;
    scopes had = in->scoped;
    in->scoped = (scopes){true, false, ""}; /* the effects note what they add */
    if (reentered && (rc = cancel_scoped(e, in, &had, from, err)) != 0)
        return rc;
    if ((rc = save_instance(e, in, err)) != 0)
        return rc;
    if ((rc = apply_effects(e, in, sp, depth, err)) != 0)
        return rc;
    if (sp->moved && (rc = cancel_left(e, in, &had, sp, left ? from : NULL, err)) != 0)
        return rc;
    scopes_union(&in->scoped, &had);
    if (!sp->state)
        note_event(e, CM_ENGINE_STARTED, in->id, in->workflow, "", sp->next, "");
    else if (sp->moved)
        note_event(e, CM_ENGINE_STATE_CHANGED, in->id, in->workflow, from, sp->next, "");
    return sp->final ? finish_instance(e, in, err) : 0;
}

/* What a step did with its event. */
enum { STEP_UNHANDLED, STEP_GUARDED, STEP_HANDLED };

static void step_clear(cm_step *sp)
{
    free(sp->ctx_out);
    cJSON_Delete(sp->effects);
    sp->ctx_out = NULL;
    sp->effects = NULL;
}

/* A handler is about to write (a plugin's savepoint): the step's own
** savepoint opens first, so that a failing step keeps none of it. */
static int open_step_sp(void *ud, cm_err *err)
{
    cm_engine *e = ud;
    int rc = sp_begin(e, err);
    e->step_sp = rc == 0;
    return rc;
}

/* Run the runtime on in for event (NULL: start): *sp receives what the step
** did (the caller clears it). Nothing is written: a handler that fails
** leaves nothing to roll back. A runtime that wrote to the store anyway
** breaks the batch (see cm_engine.broken). */
static int step_run(cm_engine *e, inst *in, const char *event, const cJSON *payload, bool is_timer,
                    cm_step *sp, cm_err *err)
{
    int rc;
    memset(sp, 0, sizeof(*sp));
    e->step_sp = false;
    if (!in->installed && (rc = ensure_installed(e, in->workflow, in->rev, err)) != 0)
        return rc;
    in->installed = true; /* a kept instance's next step asks no more */
    sp->workflow = in->workflow;
    sp->rev = in->rev;
    sp->instance = in->id;
    sp->seq = in->steps + 1;
    sp->state = event ? in->state : NULL;
    sp->input = in->input;
    sp->event = event;
    sp->payload = payload;
    sp->is_timer = is_timer;
    sp->now_ms = cm_clock_now_ms(e->o.clock);
    sp->ctx = in->ctx;
    sp->ctx_held = in->ctx_held; /* the step's now; what it hands back equals the ctx the
                                 ** instance has once the step is applied */
    in->ctx_held = 0;
    sqlite3 *db = cm_store_db(e->o.store);
    sqlite3_int64 changes = sqlite3_total_changes64(db);
    /* in a re-run (every_sp) a savepoint already holds the step and what
    ** its handler writes */
    if (!e->every_sp)
        cm_store_on_nested_write(e->o.store, open_step_sp, e);
    rc = e->o.runtime->step(e->o.runtime->ud, sp, err);
    cm_store_on_nested_write(e->o.store, NULL, NULL);
    if (sp->audited) { /* in the savepoint the first of them opened (open_step_sp) */
        cJSON *a;
        while ((a = cJSON_DetachItemFromArray(sp->audited, 0)))
            cJSON_AddItemToArray(e->audited, a);
        cJSON_Delete(sp->audited);
        sp->audited = NULL;
    }
    if (rc == CM_ELUA)
        e->stats.lua_errors++;
    else if (rc == CM_EBUDGET || rc == CM_EMEMCAP)
        e->stats.budget_kills++;
    in->ctx_held = sp->ctx_held;
    sp->ctx_held = 0;
    if (!e->step_sp && !e->every_sp && sqlite3_total_changes64(db) != changes) {
        step_clear(sp);
        held_release(e, &in->ctx_held);
        rc = cm_err_set(err, CM_EDB, "instance %s: the runtime wrote to the store during a step",
                        in->id);
        break_batch(e, err);
    }
    return rc;
}

/* Run the start step of a new instance and apply it (in the caller's savepoint). */
static int run_start(cm_engine *e, inst *in, int depth, cm_err *err)
{
    cm_step sp;
    int rc = step_run(e, in, NULL, NULL, false, &sp, err);
    bool nested = e->step_sp;
    if (rc == 0 && sp.handled)
        rc = apply_step(e, in, &sp, "start", depth, err);
    step_clear(&sp);
    if (nested)
        sp_end(e, rc == 0);
    return rc;
}

/* Start an instance of workflow (its latest revision). On success *started
** (may be NULL) is the instance as written, which the caller clears. */
static int start_instance(cm_engine *e, const char *workflow, const cJSON *input, const char *id,
                          const char *parent, int depth, char *out_id, char *out_state,
                          inst *started, cm_err *err)
{
    inst in;
    int rc;
    if (depth > ENGINE_SPAWN_DEPTH)
        return cm_err_set(err, CM_EINVAL, "spawn: more than %d nested child instances",
                          ENGINE_SPAWN_DEPTH);
    if (!workflow)
        return cm_err_set(err, CM_EINVAL, "spawn: no workflow named");
    memset(&in, 0, sizeof(in));
    cm_copy_str(in.workflow, sizeof(in.workflow), workflow);
    cm_copy_str(in.parent, sizeof(in.parent), parent);
    cm_copy_str(in.status, sizeof(in.status), "running");
    in.scoped.known = true; /* a new instance has no timers */
    if ((rc = latest_rev(e, workflow, &in.rev, NULL, err)) != 0)
        return rc;
    if (in.rev == 0)
        return cm_err_set(err, CM_ENOTFOUND, "no workflow named \"%s\" is loaded", workflow);
    if (id)
        cm_copy_str(in.id, sizeof(in.id), id);
    else if ((rc = make_instance_id(e, workflow, in.id, sizeof(in.id), err)) != 0)
        return rc;
    in.input = input ? cJSON_Duplicate(input, true) : cJSON_CreateObject();
    in.ctx = dup_str("{}");
    if (!in.input || !in.ctx) {
        inst_clear(e, &in);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    cm_copy_str(in.state, sizeof(in.state), "");
    /* The row first (effects reference it), then the start step fills it in. */
    rc = insert_instance(e, &in, err);
    if (rc == 0)
        rc = run_start(e, &in, depth, err);
    if (rc == 0) {
        cm_copy_str(out_id, CM_NAME_MAX, in.id);
        cm_copy_str(out_state, CM_NAME_MAX, in.state);
        if (started) {
            *started = in; /* moved: its input and ctx are the caller's now */
            return 0;
        }
    }
    inst_clear(e, &in);
    return rc;
}

/* ---- savepoints ------------------------------------------------------- */

/* Savepoints nest (a spawned child's start inside its parent's step): each
** keeps where its events began, so a rollback drops only its own. */
static int sp_begin(cm_engine *e, cm_err *err)
{
    if (e->nsp == ENGINE_SP_MAX)
        return cm_err_set(err, CM_EINVAL, "more than %d savepoints open at once", ENGINE_SP_MAX);
    PREPARE(e, "SAVEPOINT step", err);
    int rc = exec_kept(e, st, "savepoint", err);
    if (rc != 0)
        return rc;
    if (e->nsp == 0) /* the savepoints that held these ended: nothing to write again */
        while (cJSON_GetArraySize(e->audited) > 0)
            cJSON_DeleteItemFromArray(e->audited, 0);
    e->audit_marks[e->nsp] = cJSON_GetArraySize(e->audited);
    e->sp_marks[e->nsp++] = e->nevents;
    return 0;
}

/* A savepoint was rolled back, and with it the audit entries its handlers
** appended from index mark on: what they read still reached them, and what
** a failed step read can leave the node in its error, which is kept with
** the event. So each is written again, in the transaction that encloses
** the savepoint, with outcome "error": the read happened in a step that
** failed. Writes (create, update) are written again too, as attempts that
** did not stay: their call handed the record as written to the handler
** (an update returns the whole record, not the change), and a reader of
** the trail asking who touched a patient's record must find the instance
** that tried. An entry that cannot be written fails the batch: no entry,
** no kept error. */
static void audit_rolled_back(cm_engine *e, int mark)
{
    cm_err err;
    if (!e->broken && cm_audit_append_again(e->o.store, e->o.clock, e->audited, mark,
                                            "the step failed", &err) != 0)
        break_batch(e, &err);
}

static void sp_end(cm_engine *e, bool keep)
{
    sqlite3_stmt *st;
    int mark = e->sp_marks[--e->nsp];
    if (!keep)
        e->nevents = mark; /* rolled back: those events never happened */
    if (!keep && (st = cm_store_prepare(e->o.store, "ROLLBACK TO step", NULL)))
        exec_kept(e, st, "rollback", NULL);
    if ((st = cm_store_prepare(e->o.store, "RELEASE step", NULL)))
        exec_kept(e, st, "release", NULL);
    if (!keep)
        audit_rolled_back(e, e->audit_marks[e->nsp]);
}

/* ---- the work of one batch -------------------------------------------- */

static bool failure_is_kept(int rc)
{
    return rc == CM_ELUA || rc == CM_EBUDGET || rc == CM_EMEMCAP || rc == CM_EREF ||
           rc == CM_EEXISTS;
}

/* Keep a failed event: a new row (first failure) or the next attempt of a kept one. */
static int keep_failure(cm_engine *e, long seq, const char *instance, const char *name,
                        const cJSON *payload, bool timer, int attempts, const char *msg,
                        bool *parked, cm_err *err)
{
    int64_t delay = e->o.retry_base_ms;
    for (int i = 1; i < attempts && delay < ENGINE_RETRY_MAX_MS; i++)
        delay *= 2;
    if (delay > ENGINE_RETRY_MAX_MS)
        delay = ENGINE_RETRY_MAX_MS;
    *parked = attempts >= e->o.max_attempts;
    int rc;
    if (seq == 0 && (rc = insert_event(e, instance, name, payload, timer, 0, err)) != 0)
        return rc;
    PREPARE(e,
            "UPDATE event SET attempts = ?2, error = ?3, due_ms = ?4, status = ?5 "
            "WHERE seq = ?1",
            err);
    sqlite3_bind_int64(st, 1, seq ? seq : sqlite3_last_insert_rowid(cm_store_db(e->o.store)));
    sqlite3_bind_int(st, 2, attempts);
    sqlite3_bind_text(st, 3, msg, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, cm_clock_now_ms(e->o.clock) + delay);
    sqlite3_bind_text(st, 5, *parked ? "failed" : "ready", -1, SQLITE_STATIC);
    return exec_kept(e, st, "event", err);
}

/* Park kept event seq as failed at once, with msg. */
static int park_event(cm_engine *e, long seq, const char *msg, cm_err *err)
{
    PREPARE(e, "UPDATE event SET status = 'failed', error = ?2 WHERE seq = ?1", err);
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_text(st, 2, msg, -1, SQLITE_TRANSIENT);
    return exec_kept(e, st, "event", err);
}

/* Hold event for a paused instance: kept as a ready event that the due
** query skips until resume. */
static int hold_event(cm_engine *e, long seq, const inst *in, const char *name,
                      const cJSON *payload, bool is_timer, outcome *oc, cm_err *err)
{
    int rc = sp_begin(e, err);
    if (rc != 0)
        return rc;
    rc = seq ? 0 : insert_event(e, in->id, name, payload, is_timer, 0, err);
    if (rc == 0 && oc) {
        oc->kept = true;
        cm_copy_str(oc->state, sizeof(oc->state), in->state);
    }
    sp_end(e, rc == 0);
    return rc;
}

/* Does the step write only its own rows (history, instance, the timers of
** a state left, its kept event row)? Those fail only when the database does. */
static bool own_rows_only(const cm_step *sp)
{
    return !(sp->handled && (sp->effects || sp->final));
}

/* Write what a step did with event (handled: apply it; a timer nobody
** listens for: note it) and drop its kept row (seq > 0). The handler has
** already run, so a step that writes only its own rows goes without a
** savepoint (*bare) unless one is open already (a handler that wrote, a
** re-run): its failure breaks the batch, which runs again with a savepoint
** per step (see run_batch). Effects may fail for the event alone: a
** savepoint holds them (*open). */
static int write_step(cm_engine *e, long seq, inst *in, cm_step *sp, const char *name, bool *open,
                      bool *bare, cm_err *err)
{
    int rc = 0;
    if (*open) {
        /* already in the savepoint the handler's writes opened */
    } else if (!own_rows_only(sp)) {
        if ((rc = sp_begin(e, err)) != 0)
            return rc;
        *open = true;
    } else {
        *bare = true;
    }
    if (seq > 0) { /* first: a step that ends the instance parks what is left kept */
        PREPARE(e, "DELETE FROM event WHERE seq = ?1", err);
        sqlite3_bind_int64(st, 1, seq);
        rc = exec_kept(e, st, "event", err);
    }
    if (rc == 0 && sp->handled) {
        rc = apply_step(e, in, sp, name, 0, err);
    } else if (rc == 0) { /* a timer nobody listens for in this state: noted, not an error */
        rc = insert_history(e, in, name, in->state, in->state, "timer ignored: no transition", err);
        if (rc == 0) {
            in->steps++;
            rc = save_instance(e, in, err);
        }
    }
    return rc;
}

/* Why an event was not handled (the state has no transition for it, or every
** guard refused). */
static int unhandled(const inst *in, const cm_step *sp, const char *name, cm_err *err)
{
    if (sp->guarded)
        return cm_err_set(err, CM_EINVAL,
                          "instance %s: in state \"%s\" of workflow %s every transition for "
                          "event \"%s\" was refused by its guard%s%s",
                          in->id, in->state, in->workflow, name, sp->refusal[0] ? ": " : "",
                          sp->refusal);
    return cm_err_set(err, CM_EINVAL,
                      "instance %s: state \"%s\" of workflow %s has no transition for "
                      "event \"%s\"",
                      in->id, in->state, in->workflow, name);
}

/* Is the store itself failing after a write of the open transaction
** returned rc: its sync failed, it is corrupt or read-only, or SQLite
** rolled the whole transaction back (SQLITE_FULL, an I/O error or
** RAISE(ROLLBACK) may)? Then no step can be kept apart from its batch. */
static bool store_failing(cm_engine *e, int rc)
{
    return rc == CM_EINDOUBT || rc == CM_ENOTCM || rc == CM_EPERM || !cm_store_in_tx(e->o.store) ||
           cm_store_sync_status(e->o.store, NULL) != 0;
}

/* After a failed delivery: keep the event for retry (a failure that may
** pass: a handler's, or the database refusing the step's own rows, kept),
** or park a kept one that can never apply (instance gone or ended).
** Returns whether the event is kept. */
static bool keep_or_park(cm_engine *e, long seq, const inst *in, const char *name,
                         const cJSON *payload, bool is_timer, int attempts, int rc, bool db_step,
                         outcome *oc, const cm_err *err)
{
    cm_err kerr;
    char msg[CM_ERR_MSG_MAX];
    bool kept = false;
    cm_copy_str(msg, sizeof(msg), err->msg);
    if ((db_step || failure_is_kept(rc)) && in->id[0]) {
        bool parked = false;
        /* in a savepoint: an event half kept would be retried, its
        ** submitter told it was not */
        if (sp_begin(e, &kerr) == 0) {
            kept = keep_failure(e, seq, in->id, name, payload, is_timer, attempts + 1, msg, &parked,
                                &kerr) == 0;
            sp_end(e, kept);
        }
        if (kept && oc)
            oc->kept = true;
    } else if (seq > 0 && rc != CM_EDB) {
        park_event(e, seq, msg, &kerr);
    }
    return kept;
}

/* Deliver event to instance. seq > 0: a kept event row. The handler runs
** before anything is written; what it did is written in a savepoint when it
** may fail for the event alone (write_step), or, in a re-run (every_sp),
** always: then a step whose own rows the database refuses is rolled back
** alone and kept with its error like a handler's failure. */
static int deliver(cm_engine *e, long seq, const char *instance, const char *name,
                   const cJSON *payload, bool is_timer, int attempts, outcome *oc, cm_err *err)
{
    inst in;
    cm_step sp;
    bool open = false, bare = false, own_failed = false;
    memset(&in, 0, sizeof(in));
    memset(&sp, 0, sizeof(sp));
    int rc = cache_take(e, instance, &in) ? 0 : inst_load(e, instance, &in, err);
    if (rc == 0 && strcmp(in.status, "paused") == 0) {
        rc = hold_event(e, seq, &in, name, payload, is_timer, oc, err);
        inst_clear(e, &in);
        return rc;
    }
    if (rc == 0 && strcmp(in.status, "running") != 0)
        rc = cm_err_set(err, CM_EINVAL, "instance %s is %s; it takes no more events", in.id,
                        in.status);
    if (oc) /* a step that fails leaves the instance in this state (apply_step moves in.state) */
        cm_copy_str(oc->state, sizeof(oc->state), in.state);
    if (rc == 0 && e->every_sp && (rc = sp_begin(e, err)) == 0)
        open = true;
    if (rc == 0) {
        rc = step_run(e, &in, name, payload, is_timer, &sp, err);
        open = open || e->step_sp; /* the handler wrote: its savepoint holds the step */
    }
    if (rc == 0 && !sp.handled && !is_timer)
        rc = unhandled(&in, &sp, name, err);
    if (rc == 0) {
        rc = write_step(e, seq, &in, &sp, name, &open, &bare, err);
        own_failed = rc != 0 && own_rows_only(&sp);
    }
    step_clear(&sp);
    if (oc && rc == 0)
        cm_copy_str(oc->state, sizeof(oc->state), in.state);
    if (open)
        sp_end(e, rc == 0);
    if (own_failed && store_failing(e, rc)) {
        break_batch(e, err); /* the store fails: nothing of the batch commits */
    } else if (rc != 0 && bare) {
        /* part of the step may be written: this run of the batch cannot
        ** commit, but the store is sound: it runs again (run_batch) */
        e->rerun = true;
        break_batch(e, err);
    } else if (rc != 0 &&
               !keep_or_park(e, seq, &in, name, payload, is_timer, attempts, rc, own_failed, oc,
                             err) &&
               own_failed) {
        break_batch(e, err); /* the refused step cannot even be kept: the batch fails */
    }
    if (rc == 0)
        cache_put(e, &in); /* a failed step's changes were rolled back: not kept */
    else
        e->stats.failed++;
    inst_clear(e, &in);
    return rc;
}

/* ---- messages from partners ------------------------------------------- */

struct msg_in {
    char *peer, *id, *kind, *from, *to, *purpose, *patient, *instance, *reply_to, *prev;
    cJSON *classes, *record; /* owned; NULL when absent */
};

static void msg_free(msg_in *m)
{
    if (!m)
        return;
    char **strs[] = {&m->peer,    &m->id,      &m->kind,     &m->from,     &m->to,
                     &m->purpose, &m->patient, &m->instance, &m->reply_to, &m->prev};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        free(*strs[i]);
    cJSON_Delete(m->classes);
    cJSON_Delete(m->record);
    free(m);
}

static const char *or_empty(const char *s)
{
    return s ? s : "";
}

/* The workflow started by message kind, or NULL. */
static const char *starter_of(cm_engine *e, const char *kind)
{
    for (int i = 0; i < e->nstarters; i++)
        if (strcmp(e->starters[i].kind, kind) == 0)
            return e->starters[i].workflow;
    return NULL;
}

/* Are the organizations where they should be, and do this node's terms
** cover the message? A refusal leaves its reason in why. */
static int msg_check(cm_engine *e, const msg_in *m, char *why, size_t whysz, cm_err *err)
{
    char node[NODE_BUFSZ], today[CM_TIME_BUFSZ], cls[128], partnership[129];
    unsigned need = 0, allowed = 0;
    cm_err terr;
    int rc;
    if (!*m->from || !*m->to || !*m->purpose) {
        snprintf(why, whysz,
                 "the message does not name its sending organization, its receiving "
                 "organization and its purpose");
        return 0;
    }
    /* the sender's organization must be one the authenticated peer hosts */
    if ((rc = partner_node(e, m->from, node, why, whysz, err)) != 0 || why[0])
        return rc;
    if (strcmp(node, m->peer) != 0) {
        snprintf(why, whysz, "organization \"%s\" is hosted on node %s, not on %s", m->from, node,
                 m->peer);
        return 0;
    }
    if ((rc = org_node(e, m->to, node, why, whysz, err)) != 0 || why[0])
        return rc;
    if (e->o.node_id && strcmp(node, e->o.node_id) != 0) {
        snprintf(why, whysz, "organization \"%s\" is not hosted on this node", m->to);
        return 0;
    }
    if (cm_class_parse(m->classes, "classes", &need, &terr) != 0) {
        cm_copy_str(why, whysz, terr.msg);
        return 0;
    }
    unsigned shared = m->record ? cm_terms_patient_classes(m->record) : 0;
    if (shared & ~need) {
        snprintf(why, whysz,
                 "the shared patient record carries %s, which the message does not "
                 "declare",
                 cm_class_list(shared & ~need, cls, sizeof(cls)));
        return 0;
    }
    if (m->record && (!*m->patient || strcmp(or_empty(jstr(m->record, "id")), m->patient) != 0)) {
        snprintf(why, whysz, "the shared patient record is not the message's patient");
        return 0;
    }
    now_text(e, today);
    today[10] = '\0';
    cm_terms_req req = {.from = m->from,
                        .to = m->to,
                        .purpose = m->purpose,
                        .patient = *m->patient ? m->patient : NULL,
                        .need = need,
                        .today = today};
    rc = cm_terms_check(e->o.model, &req, &allowed, partnership, &terr);
    if (rc == CM_EPERM) {
        cm_copy_str(why, whysz, terr.msg);
        return 0;
    }
    return rc ? cm_err_set(err, rc, "%s", terr.msg) : 0;
}

/* Record the message in the inbox: received (with the instance it went
** to) or refused (with why), and audit it when it carried patient data or
** was refused. */
static int msg_record(cm_engine *e, const msg_in *m, const cJSON *payload, const char *instance,
                      const char *why, cm_err *err)
{
    char now[CM_TIME_BUFSZ], actor[CM_NAME_MAX + 8], detail[700], cls[128] = "";
    unsigned need = 0;
    cm_err perr;
    now_text(e, now);
    PREPARE(e,
            "INSERT INTO inbox(peer, msg_id, kind, receiver, payload, status, received, sender, "
            "purpose, classes, patient, instance, reason) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            err);
    if (cm_class_parse(m->classes, "classes", &need, &perr) == 0)
        cm_class_list(need, cls, sizeof(cls));
    sqlite3_bind_text(st, 1, m->peer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, m->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, m->to, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, why ? "refused" : "received", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, now, -1, SQLITE_STATIC);
    bind_text(st, 8, m->from);
    bind_text(st, 9, m->purpose);
    sqlite3_bind_text(st, 10, cls, -1, SQLITE_STATIC);
    bind_text(st, 11, *m->patient ? m->patient : NULL);
    bind_text(st, 12, instance);
    bind_text(st, 13, why);
    if (bind_json(st, 5, payload) != 0) {
        sqlite3_reset(st);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    int rc = exec_kept(e, st, "inbox", err);
    if (rc != 0 || (!why && !*m->patient && !need))
        return rc;
    snprintf(detail, sizeof(detail), "%s %s from %s%s%s", m->kind, m->id, m->from,
             why ? " refused: " : "", why ? why : "");
    snprintf(actor, sizeof(actor), "peer:%s", m->peer);
    cm_audit_entry a = {.actor = actor,
                        .action = "message.receive",
                        .patient = m->patient,
                        .classes = cls,
                        .purpose = m->purpose,
                        .outcome = why ? "refused" : "ok",
                        .detail = detail};
    return cm_audit_append(e->o.store, e->o.clock, &a, err);
}

/* Mark message m refused after the fact (its event could not apply). */
static int msg_refuse_late(cm_engine *e, const msg_in *m, const char *why, cm_err *err)
{
    PREPARE(e, "UPDATE inbox SET status = 'refused', reason = ?3 WHERE peer = ?1 AND msg_id = ?2",
            err);
    sqlite3_bind_text(st, 1, m->peer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, why, -1, SQLITE_TRANSIENT);
    return exec_kept(e, st, "inbox", err);
}

/* The first answer to a message seen before: true when it was. */
static bool msg_seen(cm_engine *e, const msg_in *m, outcome *oc, int *rc, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        e->o.store, "SELECT status, reason, instance FROM inbox WHERE peer = ?1 AND msg_id = ?2",
        err);
    *rc = st ? 0 : err->code;
    if (!st)
        return false;
    sqlite3_bind_text(st, 1, m->peer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->id, -1, SQLITE_STATIC);
    bool seen = sqlite3_step(st) == SQLITE_ROW;
    if (seen) {
        const char *status = (const char *)sqlite3_column_text(st, 0);
        bool refused = status && strcmp(status, "refused") == 0;
        oc->result = refused ? "refused" : "duplicate";
        cm_copy_str(oc->message, sizeof(oc->message),
                    refused ? or_empty((const char *)sqlite3_column_text(st, 1)) : "");
        cm_copy_str(oc->instance, sizeof(oc->instance),
                    or_empty((const char *)sqlite3_column_text(st, 2)));
    }
    sqlite3_reset(st);
    return seen;
}

/* The payload an instance sees: the message's, plus the shared record. */
static cJSON *msg_payload(const msg_in *m, const cJSON *payload, bool start)
{
    cJSON *p = cJSON_Duplicate(payload, true);
    if (!p)
        return NULL;
    if (start) {
        cJSON_DeleteItemFromObjectCaseSensitive(p, "from");
        cJSON_DeleteItemFromObjectCaseSensitive(p, "to");
        if (!cJSON_AddStringToObject(p, "from", m->from) ||
            !cJSON_AddStringToObject(p, "to", m->to))
            goto nomem;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(p, "patient_record");
    cJSON *rec = m->record ? cJSON_Duplicate(m->record, true) : NULL;
    if (m->record && (!rec || !cJSON_AddItemToObject(p, "patient_record", rec))) {
        cJSON_Delete(rec);
        goto nomem;
    }
    return p;
nomem:
    cJSON_Delete(p);
    return NULL;
}

/* Link instance with the peer's instance remote (both may talk from now on). */
static int msg_link(cm_engine *e, const char *instance, const msg_in *m, cm_err *err)
{
    PREPARE(e,
            "INSERT INTO instance_link(instance, node, remote) VALUES (?1, ?2, ?3) "
            "ON CONFLICT(instance, node) DO UPDATE SET remote = coalesce(remote, excluded.remote)",
            err);
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, m->peer, -1, SQLITE_STATIC);
    bind_text(st, 3, *m->instance ? m->instance : NULL);
    return exec_kept(e, st, "instance_link", err);
}

/* Does instance talk with node (it sent there, or was started from there)? */
static int msg_linked(cm_engine *e, const char *instance, const char *node, bool *linked,
                      cm_err *err)
{
    PREPARE(e, "SELECT 1 FROM instance_link WHERE instance = ?1 AND node = ?2", err);
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, node, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *linked = rc == SQLITE_ROW;
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_fail(e, err, "instance_link");
}

/* A refusal: recorded in the inbox (in a savepoint of its own). */
static int msg_refused(cm_engine *e, const msg_in *m, const cJSON *payload, const char *why,
                       outcome *oc, cm_err *err)
{
    int rc = sp_begin(e, err);
    if (rc == 0) {
        rc = msg_record(e, m, payload, NULL, why, err);
        sp_end(e, rc == 0);
    }
    oc->result = "refused";
    cm_copy_str(oc->message, sizeof(oc->message), why);
    return rc;
}

/* Applied in the order sent: the message before it (prev) must be in the
** inbox, committed or earlier in this batch. CM_ENOTFOUND when it is not. */
static int msg_follows(cm_engine *e, const msg_in *m, cm_err *err)
{
    if (!*m->prev)
        return 0;
    PREPARE(e, "SELECT 1 FROM inbox WHERE peer = ?1 AND msg_id = ?2", err);
    sqlite3_bind_text(st, 1, m->peer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->prev, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc != SQLITE_DONE)
        return db_fail(e, err, "inbox");
    return cm_err_set(err, CM_ENOTFOUND, "message %s follows %s, which has not arrived", m->id,
                      m->prev);
}

static int process_message(cm_engine *e, work *w, outcome *oc, cm_err *err)
{
    msg_in *m = w->msg;
    char why[600] = "";
    const char *wf = NULL;
    bool linked = false;
    int rc;
    if (msg_seen(e, m, oc, &rc, err) || rc != 0)
        return rc;
    if ((rc = msg_follows(e, m, err)) != 0)
        return rc;
    if ((rc = msg_check(e, m, why, sizeof(why), err)) != 0)
        return rc;
    if (!why[0] && *m->reply_to) {
        if ((rc = msg_linked(e, m->reply_to, m->peer, &linked, err)) != 0)
            return rc;
        if (!linked)
            snprintf(why, sizeof(why), "instance %s has not exchanged messages with node %s",
                     m->reply_to, m->peer);
    } else if (!why[0] && !(wf = starter_of(e, m->kind))) {
        snprintf(why, sizeof(why), "no workflow on this node is started by \"%s\"", m->kind);
    }
    if (why[0])
        return msg_refused(e, m, w->data, why, oc, err);
    cJSON *payload = msg_payload(m, w->data, wf != NULL);
    if (!payload)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    oc->result = "received";
    if (wf) { /* a new instance: the start, its link and the inbox row, all or nothing */
        if ((rc = sp_begin(e, err)) != 0)
            goto out;
        rc = start_instance(e, wf, payload, NULL, NULL, 0, oc->instance, oc->state, NULL, err);
        if (rc == 0)
            rc = msg_link(e, oc->instance, m, err);
        if (rc == 0)
            rc = msg_record(e, m, w->data, oc->instance, NULL, err);
        sp_end(e, rc == 0);
        if (rc != 0 && rc != CM_EDB && rc != CM_ENOMEM) {
            oc->instance[0] = '\0';
            snprintf(why, sizeof(why), "%.128s could not start: %.440s", wf, err->msg);
            cm_err_clear(err);
            rc = msg_refused(e, m, w->data, why, oc, err);
        }
        goto out;
    }
    /* the next event of a linked instance: the inbox row first, then the step */
    cm_copy_str(oc->instance, sizeof(oc->instance), m->reply_to);
    if ((rc = sp_begin(e, err)) != 0)
        goto out;
    rc = msg_record(e, m, w->data, m->reply_to, NULL, err);
    if (rc == 0)
        rc = msg_link(e, m->reply_to, m, err);
    sp_end(e, rc == 0);
    if (rc != 0)
        goto out;
    rc = deliver(e, 0, m->reply_to, m->kind, payload, false, 0, oc, err);
    if (rc == 0 || oc->kept) { /* applied, or kept for a retry: received either way */
        rc = 0;
        goto out;
    }
    if (rc == CM_EDB || rc == CM_ENOMEM)
        goto out;
    cm_copy_str(why, sizeof(why), err->msg);
    cm_err_clear(err);
    oc->result = "refused";
    cm_copy_str(oc->message, sizeof(oc->message), why);
    if ((rc = sp_begin(e, err)) == 0) {
        rc = msg_refuse_late(e, m, why, err);
        sp_end(e, rc == 0);
    }
out:
    cJSON_Delete(payload);
    return rc;
}

/* A queued submission, in its own savepoint. */
static void process_work(cm_engine *e, work *w, outcome *oc)
{
    cm_err err;
    int rc;
    oc->w = w;
    oc->kept = false;
    oc->result = NULL;
    oc->instance[0] = oc->state[0] = oc->message[0] = '\0';
    cm_err_clear(&err);
    if (w->kind == WORK_START) {
        inst in;
        rc = sp_begin(e, &err);
        if (rc == 0) {
            rc = start_instance(e, w->workflow, w->data, w->instance, NULL, 0, oc->instance,
                                oc->state, &in, &err);
            sp_end(e, rc == 0); /* a start that fails is refused: nothing is kept */
            if (rc == 0) {      /* its first event need not read it back */
                cache_put(e, &in);
                inst_clear(e, &in);
            }
        }
        if (rc != 0)
            e->stats.failed++;
    } else if (w->kind == WORK_MESSAGE) {
        rc = process_message(e, w, oc, &err);
    } else {
        cm_copy_str(oc->instance, sizeof(oc->instance), w->instance);
        rc = deliver(e, 0, w->instance, w->event, w->data, false, 0, oc, &err);
    }
    oc->status = rc;
    if (rc != 0)
        cm_copy_str(oc->message, sizeof(oc->message), err.msg);
}

/* Due timers: each becomes its event, the timer row gone in the same savepoint. */
static int process_due_timers(cm_engine *e, int room, int *done, cm_err *err)
{
    typedef struct due {
        char instance[CM_NAME_MAX], name[CM_NAME_MAX];
        cJSON *payload;
    } due;
    due items[64];
    int n = 0, rc = 0;
    if (room > 64)
        room = 64;
    {
        PREPARE(e,
                "SELECT t.instance, t.name, t.payload FROM timer t JOIN instance_base i ON "
                "i.id = t.instance WHERE t.due_ms <= ?1 ORDER BY t.due_ms, t.instance LIMIT ?2",
                err);
        sqlite3_bind_int64(st, 1, cm_clock_now_ms(e->o.clock));
        sqlite3_bind_int(st, 2, room);
        while (n < room && sqlite3_step(st) == SQLITE_ROW) {
            cm_copy_str(items[n].instance, CM_NAME_MAX, (const char *)sqlite3_column_text(st, 0));
            cm_copy_str(items[n].name, CM_NAME_MAX, (const char *)sqlite3_column_text(st, 1));
            items[n].payload = parse_column(st, 2);
            n++;
        }
        sqlite3_reset(st);
    }
    for (int i = 0; i < n; i++) {
        cm_err derr;
        if (rc == 0 && !e->broken) {
            rc = delete_timer(e, items[i].instance, items[i].name, err);
            if (rc == 0) {
                outcome doc;
                doc.kept = false;
                int drc = deliver(e, 0, items[i].instance, items[i].name, items[i].payload, true, 0,
                                  &doc, &derr);
                if (drc == CM_EDB && !doc.kept) /* the timer's row is gone with it */
                    rc = cm_err_set(err, drc, "%s", "timer delivery failed");
            }
        }
        cJSON_Delete(items[i].payload);
    }
    *done = n;
    return rc;
}

/* Due kept events (retries, held events after resume, child.done) of running instances. */
static int process_due_events(cm_engine *e, int room, int *done, cm_err *err)
{
    typedef struct due {
        long seq;
        int attempts;
        bool timer;
        char instance[CM_NAME_MAX], name[CM_NAME_MAX];
        cJSON *payload;
    } due;
    due items[64];
    int n = 0, rc = 0;
    if (room > 64)
        room = 64;
    {
        PREPARE(e,
                "SELECT v.seq, v.instance, v.name, v.payload, v.timer, v.attempts FROM event v "
                "LEFT JOIN instance_base i ON i.id = v.instance WHERE v.status = 'ready' AND "
                "v.due_ms <= ?1 AND coalesce(i.status, '') <> 'paused' "
                "ORDER BY v.due_ms, v.seq LIMIT ?2",
                err);
        sqlite3_bind_int64(st, 1, cm_clock_now_ms(e->o.clock));
        sqlite3_bind_int(st, 2, room);
        while (n < room && sqlite3_step(st) == SQLITE_ROW) {
            items[n].seq = (long)sqlite3_column_int64(st, 0);
            cm_copy_str(items[n].instance, CM_NAME_MAX, (const char *)sqlite3_column_text(st, 1));
            cm_copy_str(items[n].name, CM_NAME_MAX, (const char *)sqlite3_column_text(st, 2));
            items[n].payload = parse_column(st, 3);
            items[n].timer = sqlite3_column_int(st, 4) != 0;
            items[n].attempts = sqlite3_column_int(st, 5);
            n++;
        }
        sqlite3_reset(st);
    }
    for (int i = 0; i < n; i++) {
        cm_err derr;
        outcome doc;
        doc.kept = false;
        if (rc == 0 && !e->broken &&
            deliver(e, items[i].seq, items[i].instance, items[i].name, items[i].payload,
                    items[i].timer, items[i].attempts, &doc, &derr) == CM_EDB &&
            !doc.kept)
            rc = cm_err_set(err, CM_EDB, "%s", derr.msg);
        cJSON_Delete(items[i].payload);
    }
    *done = n;
    return rc;
}

static cm_ack ack_of(const outcome *oc)
{
    cm_ack ack = {oc->status,
                  oc->instance[0] ? oc->instance : NULL,
                  oc->status == 0 || oc->kept ? oc->state : NULL,
                  oc->status || (oc->result && oc->message[0]) ? oc->message : NULL,
                  oc->kept,
                  oc->result};
    return ack;
}

static void count_latency(cm_engine *e, uint64_t submitted_ns)
{
    double s = (double)(uv_hrtime() - submitted_ns) / 1e9;
    e->stats.latency_count++;
    e->stats.latency_sum += s;
    for (int i = 0; i < CM_ENGINE_LATENCY_BUCKETS; i++)
        if (s <= cm_engine_latency_bounds[i]) {
            e->latency_in[i]++; /* summed up to each bound by cm_engine_stats_get */
            break;
        }
}

static void tell(cm_engine *e, outcome *oc)
{
    cm_ack ack = ack_of(oc);
    e->times.submitted = (int64_t)oc->w->submitted_ns;
    count_latency(e, oc->w->submitted_ns);
    if (oc->w->cb)
        oc->w->cb(oc->w->ud, &ack);
}

/* A batch that failed: none of it is known durable (rolled back, or
** CM_EINDOUBT: committed but its sync failed), and each submitter hears rc
** and msg instead of its outcome. */
static void fail_outcomes(outcome *ocs, int n, int rc, const char *msg)
{
    for (int i = 0; i < n; i++) {
        ocs[i].status = rc;
        ocs[i].kept = false;
        cm_copy_str(ocs[i].message, sizeof(ocs[i].message), msg);
    }
}

/* Tell a batch's submitters and free their work; rc != 0: see fail_outcomes.
** An answer in doubt (CM_EINDOUBT) says nothing of what any commit holds,
** so what it makes waits for no sync (cm_engine_output_seq): the watermark
** will never reach the commit it is about. */
static void tell_batch(cm_engine *e, outcome *ocs, int n, int rc, const char *msg)
{
    if (rc != 0)
        fail_outcomes(ocs, n, rc, msg);
    bool none = e->telling_none; /* an ack may run a batch of its own */
    e->telling_none = rc == CM_EINDOUBT;
    for (int i = 0; i < n; i++) {
        tell(e, &ocs[i]);
        work_done(e, ocs[i].w);
    }
    e->telling_none = none;
}

/* ---- pipelined group commit ------------------------------------------- */

/* The allocation of a parked batch's wait: malloc; in test_engine's own
** build of this file (tests/CMakeLists.txt) the test's, which can fail it. */
#ifdef CM_TEST_PARK_ALLOC
void *cm__test_park_alloc(size_t size);
#define park_alloc cm__test_park_alloc
#else
#define park_alloc malloc
#endif

/* Keep a committed batch's outcomes and events until its sync; false when
** memory is short (the caller waits for the sync instead). */
static bool sync_park(cm_engine *e, outcome *ocs, int n)
{
    synced_wait *sw = park_alloc(sizeof(*sw));
    if (!sw)
        return false;
    sw->begun_ns = e->begun_ns;
    sw->committed_ns = (int64_t)uv_hrtime();
    sw->seq = cm_store_commit_seq(e->o.store);
    sw->ocs = ocs;
    sw->n = n;
    sw->events = e->events; /* the next transaction's events start a new list */
    sw->nevents = e->nevents;
    sw->failed = false;
    e->events = NULL;
    e->nevents = e->events_cap = 0;
    sw->next = NULL;
    if (e->wait_tail)
        e->wait_tail->next = sw;
    else
        e->wait_head = sw;
    e->wait_tail = sw;
    return true;
}

/* Tell every parked batch the store's watermark covers, in commit order;
** after a failed sync, tell every submitter of a batch it did not cover
** CM_EINDOUBT instead (and the observer nothing: none of it is known
** durable, yet it reached the WAL). A batch covered before the failure is
** durable and told so; one that rolled back keeps its own error. */
static void sync_release(cm_engine *e)
{
    cm_err err;
    int failed = cm_store_sync_status(e->o.store, &err);
    uint64_t synced = cm_store_synced_seq(e->o.store);
    while (e->wait_head && (failed || e->wait_head->seq <= synced)) {
        synced_wait *sw = e->wait_head;
        e->wait_head = sw->next; /* unlinked first: an ack may submit more work */
        if (!e->wait_head)
            e->wait_tail = NULL;
        /* a batch that rolled back is known not to be there: its own error */
        int rc = sw->failed || sw->seq <= synced ? 0 : CM_EINDOUBT;
        e->telling = sw->seq; /* what the outputs made now show (cm_engine_output_seq) */
        if (rc == 0)
            tell_list(e, sw->events, sw->nevents);
        e->stats.sync_waits++;
        e->times.begun = sw->begun_ns;
        e->times.committed = sw->committed_ns;
        e->times.released = (int64_t)uv_hrtime();
        e->times_set =
            cm_store_sync_span(e->o.store, sw->seq, &e->times.sync_start, &e->times.sync_end) == 0;
        tell_batch(e, sw->ocs, sw->n, rc, err.msg);
        e->times_set = false;
        e->telling = 0;
        free(sw->events);
        free(sw->ocs);
        free(sw);
    }
    if (failed)
        cache_clear(e); /* its entries hold steps not known durable */
}

/* Wait for every parked batch's sync and tell them (detach, destroy). */
static void sync_drain(cm_engine *e)
{
    cm_err ignored;
    if (e->wait_tail)
        cm_store_sync_wait(e->o.store, e->wait_tail->seq, &ignored);
    sync_release(e);
}

/* On the sync thread: wake the loop. */
static void sync_notify(void *ud)
{
    cm_engine *e = ud;
    uv_async_send(&e->synced);
}

static void on_synced(uv_async_t *h)
{
    cm_engine *e = h->data;
    sync_release(e);
    if (e->durable_fn)
        e->durable_fn(e->durable_ud);
}

int cm_engine_ack_times_get(const cm_engine *e, cm_engine_ack_times *out)
{
    if (!e->times_set)
        return -1;
    *out = e->times;
    return 0;
}

uint64_t cm_engine_output_seq(const cm_engine *e)
{
    if (e->telling_none) /* an answer that shows nothing need wait for no sync */
        return cm_store_synced_seq(e->o.store);
    return e->telling ? e->telling : cm_store_commit_seq(e->o.store);
}

void cm_engine_on_durable(cm_engine *e, void (*fn)(void *ud), void *ud)
{
    e->durable_fn = fn;
    e->durable_ud = ud;
}

static int batch_begin(cm_engine *e, bool deferred, cm_err *err)
{
    e->broken = 0;
    e->rerun = false;
    return deferred ? cm_store_begin_deferred(e->o.store, err) : cm_store_begin(e->o.store, err);
}

/* One run of a batch's work in the open transaction: up to queued items
** (outcomes in ocs, *n of them), then due timers and kept events (*due_n).
** Returns 0 or why the transaction cannot commit (the caller commits or
** rolls back). */
static int batch_pass(cm_engine *e, outcome *ocs, int queued, int *n, int *due_n, cm_err *err)
{
    int rc = 0;
    *n = *due_n = 0;
    /* the engine's clock (virtual in tests): a clock that jumps only cuts a
    ** batch short or lets it run to its count */
    int64_t t0 = cm_clock_now_ms(e->o.clock);
    bool late = false;
    while (e->head && *n < queued && !late) {
        work *w = e->head;
        e->head = w->next;
        if (!e->head)
            e->tail = NULL;
        w->next = NULL;
        outcome *oc = &ocs[(*n)++];
        process_work(e, w, oc);
        if (e->broken) {
            rc = cm_err_set(err, e->broken, "%s", e->broken_err.msg);
            break;
        }
        if (oc->status == CM_EDB && !oc->kept)
            break;
        cm_ack ack = ack_of(oc);
        if (e->hook && (rc = e->hook(e->hook_ud, w->cb, w->ud, &ack, err)) != 0)
            break;
        late = e->o.batch_ms > 0 && cm_clock_now_ms(e->o.clock) - t0 >= e->o.batch_ms;
    }
    int room = e->o.batch_max - *n;
    if (late && room > ENGINE_DUE_AFTER_TIME)
        room = ENGINE_DUE_AFTER_TIME; /* due work still moves, a little */
    if (rc == 0 && room > 0 && (rc = process_due_timers(e, room, due_n, err)) == 0) {
        room -= *due_n;
        int ev_n = 0;
        if (room > 0)
            rc = process_due_events(e, room, &ev_n, err);
        *due_n += ev_n;
    }
    if (rc == 0 && e->broken)
        rc = cm_err_set(err, e->broken, "%s", e->broken_err.msg);
    return rc;
}

/* Undo a run of a batch that cannot commit but may run again: the
** transaction, what memory holds of its steps (cached instances with the
** runtime's context copies, observer events, counts), and its n items go
** back to the head of the queue in their order. */
static void batch_undo(cm_engine *e, outcome *ocs, int n, const cm_engine_stats *before)
{
    cm_store_rollback(e->o.store);
    cache_clear(e);
    e->nevents = 0;
    e->stats.failed = before->failed;
    e->stats.lua_errors = before->lua_errors;
    e->stats.budget_kills = before->budget_kills;
    e->stats.cache_hits = before->cache_hits; /* the run again looks each instance up anew */
    e->stats.cache_misses = before->cache_misses;
    for (int i = n - 1; i >= 0; i--) {
        work *w = ocs[i].w;
        w->next = e->head;
        e->head = w;
        if (!e->tail)
            e->tail = w;
    }
}

/* One batch: up to batch_max items, one commit, then the acks. Returns the
** number of items, or a negative code when the batch could not commit. A
** step without a savepoint whose own rows the database refused makes the
** batch run once more with a savepoint around every step: the step fails
** alone, the others commit (a store that fails still fails the batch). */
static int run_batch(cm_engine *e, cm_err *err)
{
    int queued = 0, n = 0, due_n = 0, rc;
    for (work *w = e->head; w && queued < e->o.batch_max; w = w->next)
        queued++;
    if (queued == 0) {
        e->due_next = cm_engine_next_due(e);
        if (e->due_next > cm_clock_now_ms(e->o.clock)) {
            e->due_read = true; /* for arm_loop: nothing writes before it */
            return 0;           /* nothing ready: no transaction at all */
        }
    }
    outcome *ocs = malloc((size_t)(queued ? queued : 1) * sizeof(*ocs));
    if (!ocs)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    bool deferred = e->o.pipeline && e->attached;
    cm_engine_stats before = e->stats;
    if (deferred)
        e->begun_ns = (int64_t)uv_hrtime();
    if ((rc = batch_begin(e, deferred, err)) != 0) {
        free(ocs);
        return rc;
    }
    rc = batch_pass(e, ocs, queued, &n, &due_n, err);
    if (rc != 0 && e->rerun) {
        batch_undo(e, ocs, n, &before);
        n = due_n = 0; /* back in the queue: told by the run that takes them */
        e->every_sp = true;
        if ((rc = batch_begin(e, deferred, err)) == 0)
            rc = batch_pass(e, ocs, queued, &n, &due_n, err);
        e->every_sp = false;
    }
    if (rc == 0 && e->broken)
        rc = cm_err_set(err, e->broken, "%s", e->broken_err.msg);
    if (rc == 0)
        rc = cm_store_commit(e->o.store, err);
    else
        cm_store_rollback(e->o.store);
    if (rc != 0)
        cache_clear(e); /* entries may hold steps that never became durable */
    if (rc == 0) {
        e->stats.processed += (uint64_t)(n + due_n);
        e->stats.batches++;
    }
    /* a batch that wrote nothing has nothing to wait for, unless batches
    ** before it still wait (the acks go in commit order) */
    if (rc == 0 && deferred &&
        (e->wait_head || cm_store_commit_seq(e->o.store) > cm_store_synced_seq(e->o.store)) &&
        sync_park(e, ocs, n))
        return n + due_n;      /* told when the sync covers it */
    if (rc == 0 && deferred) { /* no memory to wait in: wait here */
        rc = cm_store_sync_wait(e->o.store, cm_store_commit_seq(e->o.store), err);
        sync_release(e); /* the batches parked before it are told first */
    }
    if (rc != 0 && e->wait_head) { /* its errors wait behind earlier batches' acks */
        e->nevents = 0;
        fail_outcomes(ocs, n, rc, err->msg);
        if (sync_park(e, ocs, n)) {
            e->wait_tail->failed = true;
            return rc;
        }
    }
    if (rc == 0)
        tell_events(e);
    else
        e->nevents = 0;
    tell_batch(e, ocs, n, rc, err->msg); /* rc: the batch is not known durable */
    free(ocs);
    return rc != 0 ? rc : n + due_n;
}

/* Tell every queued submitter err: its work will not run. */
static void fail_queued(cm_engine *e, const cm_err *err)
{
    bool none = e->telling_none;
    e->telling_none = true; /* never run: the answers wait for no sync */
    while (e->head) {
        work *w = e->head;
        e->head = w->next;
        if (!e->head)
            e->tail = NULL;
        if (w->cb) {
            cm_ack ack = {err->code, w->instance, NULL, err->msg, false, NULL};
            w->cb(w->ud, &ack);
        }
        work_free(w);
    }
    e->telling_none = none;
}

int cm_engine_run(cm_engine *e, long *processed, cm_err *err)
{
    long total = 0;
    int rc = 0;
    if (e->in_run)
        return cm_err_set(err, CM_EINVAL, "engine: run called from inside a batch");
    if ((rc = cm_store_sync_status(e->o.store, err)) != 0) {
        sync_release(e);     /* parked batches first: the acks go in order */
        fail_queued(e, err); /* the store takes no more writes: the engine has stopped */
        return rc;
    }
    e->in_run = true;
    e->due_read = false;
    /* Bounded, so a workflow that keeps making due work cannot hold the loop. */
    for (int batches = 0; batches < ENGINE_RUN_BATCHES; batches++) {
        /* acks of parked batches whose sync ended while the last one ran go
        ** out now, not after a turn of the loop: their submitters' next work
        ** joins the next batch (the sync thread's wakeup finds them told) */
        if (batches > 0 && e->wait_head)
            sync_release(e);
        rc = run_batch(e, err);
        if (rc <= 0)
            break;
        total += rc;
    }
    e->in_run = false;
    if (processed)
        *processed = total;
    if (e->attached)
        arm_loop(e);
    e->due_read = false;
    return rc < 0 ? rc : 0;
}

int64_t cm_engine_next_due(cm_engine *e)
{
    int64_t next = INT64_MAX;
    sqlite3_stmt *st = cm_store_prepare(
        e->o.store,
        "SELECT min(d) FROM (SELECT min(t.due_ms) AS d FROM timer t JOIN instance_base i ON "
        "i.id = t.instance WHERE i.status = 'running' UNION ALL SELECT min(v.due_ms) FROM event "
        "v LEFT JOIN instance_base i ON i.id = v.instance WHERE v.status = 'ready' AND "
        "coalesce(i.status, '') <> 'paused')",
        NULL);
    if (st && sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        next = sqlite3_column_int64(st, 0);
    if (st)
        sqlite3_reset(st);
    return next;
}

/* ---- submissions ------------------------------------------------------ */

static int check_name(const char *what, const char *s, cm_err *err)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len >= CM_NAME_MAX)
        return cm_err_set(err, CM_EINVAL, "%s: must be 1 to %d characters", what, CM_NAME_MAX - 1);
    return 0;
}

/* w, its data set, at the end of the queue. */
static void queue_work(cm_engine *e, work *w)
{
    w->submitted_ns = uv_hrtime();
    if (e->tail)
        e->tail->next = w;
    else
        e->head = w;
    e->tail = w;
    if (e->attached)
        uv_idle_start(&e->idle, noop_idle);
}

static int enqueue(cm_engine *e, work *w, const cJSON *data, const char *what, cm_err *err)
{
    int rc = data && !cJSON_IsObject(data)
                 ? cm_err_set(err, CM_EINVAL, "%s: must be an object", what)
                 : cm_model_doc_finite(data, what, err);
    if (rc != 0) {
        work_free(w);
        return rc;
    }
    if (!data && w->kind == WORK_SIGNAL) { /* a signal's payload is only read */
        w->data = e->empty;
        w->data_shared = true;
    } else {
        w->data = data ? cJSON_Duplicate(data, true) : cJSON_CreateObject();
    }
    if (!w->data) {
        work_free(w);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    queue_work(e, w);
    return 0;
}

int cm_engine_start(cm_engine *e, const char *workflow, const cJSON *input, const char *id,
                    cm_ack_cb cb, void *ud, cm_err *err)
{
    int rc;
    if ((rc = check_name("workflow", workflow, err)) != 0)
        return rc;
    if (id && cm_id_check(id) != 0)
        return cm_err_set(err, CM_EINVAL,
                          "instance id \"%s\": use 1 to %d letters, digits, . _ : -", id,
                          CM_ID_MAX);
    work *w = calloc(1, sizeof(*w));
    if (!w || !(w->workflow = strdup(workflow)) || (id && !(w->instance = strdup(id)))) {
        work_free(w);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    w->kind = WORK_START;
    w->cb = cb;
    w->ud = ud;
    return enqueue(e, w, input, "input", err);
}

/* A signal's item: one allocation, the item, then its two names and `more`
** bytes after them (*rest); a told item's kept (work_done) when its room
** fits them. */
static int signal_item(cm_engine *e, const char *instance, const char *event, size_t more,
                       cm_ack_cb cb, void *ud, work **out, char **rest, cm_err *err)
{
    int rc;
    if ((rc = check_name("instance", instance, err)) != 0 ||
        (rc = check_name("event", event, err)) != 0)
        return rc;
    size_t ilen = strlen(instance) + 1, elen = strlen(event) + 1, cap = ilen + elen + more;
    work *w = e->spare;
    if (w && w->names_cap >= cap) {
        e->spare = w->next;
        e->nspare--;
        cap = w->names_cap;
        memset(w, 0, sizeof(*w));
    } else {
        if (cap < ENGINE_WORK_NAMES)
            cap = ENGINE_WORK_NAMES;
        if (cap > SIZE_MAX - sizeof(*w) || !(w = calloc(1, sizeof(*w) + cap)))
            return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    w->names_cap = cap;
    w->instance = memcpy((char *)(w + 1), instance, ilen);
    w->event = memcpy(w->instance + ilen, event, elen);
    w->names_inline = true;
    w->kind = WORK_SIGNAL;
    w->cb = cb;
    w->ud = ud;
    *out = w;
    *rest = w->event + elen;
    return 0;
}

int cm_engine_signal(cm_engine *e, const char *instance, const char *event, const cJSON *payload,
                     cm_ack_cb cb, void *ud, cm_err *err)
{
    work *w;
    char *rest;
    int rc = signal_item(e, instance, event, 0, cb, ud, &w, &rest, err);
    return rc != 0 ? rc : enqueue(e, w, payload, "payload", err);
}

int cm_engine_signal_text(cm_engine *e, const char *instance, const char *event,
                          const char *payload, size_t len, cm_ack_cb cb, void *ud, cm_err *err)
{
    size_t at = cm_json_object_check(payload, len, CM_JSON_PAYLOAD_DEPTH_MAX); /* as the API */
    if (at != 0) {
        size_t i = 0;
        while (i < len && payload[i] != '\0' && strchr(" \t\r\n", payload[i]))
            i++;
        if (i == len || payload[i] != '{')
            return cm_err_set(err, CM_EINVAL, "payload: must be an object");
        int rc = cm_model_text_finite(payload, len, "payload", err); /* 1e999: named */
        return rc != 0 ? rc
                       : cm_err_set(err, CM_EINVAL, "payload: not valid JSON (at byte %zu)", at);
    }
    return cm_engine_signal_checked(e, instance, event, payload, len, cb, ud, err);
}

int cm_engine_signal_checked(cm_engine *e, const char *instance, const char *event,
                             const char *payload, size_t len, cm_ack_cb cb, void *ud, cm_err *err)
{
    work *w;
    char *text;
    int rc = signal_item(e, instance, event, len + 1, cb, ud, &w, &text, err);
    if (rc != 0)
        return rc;
    memcpy(text, payload, len);
    text[len] = '\0';
    w->raw.type = cJSON_Raw;
    w->raw.valuestring = text;
    w->data = &w->raw;
    w->data_shared = true;
    queue_work(e, w);
    return 0;
}

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

int cm_engine_receive(cm_engine *e, const cm_engine_msg *m, cm_ack_cb cb, void *ud, cm_err *err)
{
    int rc;
    if ((rc = check_name("message peer", m->peer, err)) != 0 ||
        (rc = check_name("message id", m->id, err)) != 0 ||
        (rc = check_name("message kind", m->kind, err)) != 0)
        return rc;
    work *w = calloc(1, sizeof(*w));
    msg_in *g = calloc(1, sizeof(*g));
    if (w)
        w->msg = g;
    if (!w || !g || !(g->peer = dup_or_empty(m->peer)) || !(g->id = dup_or_empty(m->id)) ||
        !(g->kind = dup_or_empty(m->kind)) || !(g->from = dup_or_empty(m->from)) ||
        !(g->to = dup_or_empty(m->to)) || !(g->purpose = dup_or_empty(m->purpose)) ||
        !(g->patient = dup_or_empty(m->patient)) || !(g->instance = dup_or_empty(m->instance)) ||
        !(g->reply_to = dup_or_empty(m->reply_to)) || !(g->prev = dup_or_empty(m->prev)) ||
        (m->classes && !(g->classes = cJSON_Duplicate(m->classes, true))) ||
        (m->record && !(g->record = cJSON_Duplicate(m->record, true)))) {
        if (!w)
            msg_free(g);
        work_free(w);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    w->kind = WORK_MESSAGE;
    w->cb = cb;
    w->ud = ud;
    return enqueue(e, w, m->payload, "message payload", err);
}

int cm_engine_post_refused(cm_engine *e, const char *instance, const char *to, const char *kind,
                           const char *purpose, const char *reason, cm_err *err)
{
    if (!cm_store_in_tx(e->o.store))
        return cm_err_set(err, CM_EINVAL, "engine: post needs an open transaction");
    return post_refused(e, instance, to, kind, purpose, reason, err);
}

void cm_engine_wake(cm_engine *e)
{
    if (e->attached && !e->in_run)
        arm_loop(e);
}

/* ---- operator actions ------------------------------------------------- */

/* Run fn(e, in, arg) on instance id in a transaction of its own, then
** also(ud, ...) in the same transaction when given. */
static int with_instance(cm_engine *e, const char *id,
                         int (*fn)(cm_engine *, inst *, const char *, cm_err *), const char *arg,
                         cm_engine_also_fn also, void *ud, cm_err *err)
{
    inst in;
    int rc = cm_store_begin(e->o.store, err);
    if (rc != 0)
        return rc;
    cache_drop(e, id); /* the row changes here, not through a step */
    rc = inst_load(e, id, &in, err);
    if (rc == 0)
        rc = fn(e, &in, arg, err);
    if (rc == 0 && also)
        rc = also(ud, in.id, in.input, err);
    if (rc == 0)
        rc = cm_store_commit(e->o.store, err);
    else
        cm_store_rollback(e->o.store);
    if (rc == 0) {
        sync_release(e); /* a synced commit covers the batches before it: theirs first */
        tell_events(e);
    } else {
        e->nevents = 0;
    }
    inst_clear(e, &in);
    if (rc == 0 && e->attached)
        arm_loop(e);
    return rc;
}

static int set_status(cm_engine *e, inst *in, const char *from, const char *to, const char *note,
                      cm_err *err)
{
    int rc;
    if (strcmp(in->status, from) != 0)
        return cm_err_set(err, CM_EINVAL, "instance %s is %s, not %s", in->id, in->status, from);
    if ((rc = insert_history(e, in, note, in->state, in->state, NULL, err)) != 0)
        return rc;
    in->steps++;
    set_inst_status(in, to);
    return save_instance(e, in, err);
}

static int do_pause(cm_engine *e, inst *in, const char *arg, cm_err *err)
{
    return set_status(e, in, "running", "paused", "paused", err);
}

static int do_resume(cm_engine *e, inst *in, const char *arg, cm_err *err)
{
    return set_status(e, in, "paused", "running", "resumed", err);
}

static int do_cancel(cm_engine *e, inst *in, const char *reason, cm_err *err)
{
    int rc;
    if (strcmp(in->status, "running") != 0 && strcmp(in->status, "paused") != 0)
        return cm_err_set(err, CM_EINVAL, "instance %s is already %s", in->id, in->status);
    if ((rc = insert_history(e, in, "cancelled", in->state, in->state, reason, err)) != 0)
        return rc;
    in->steps++;
    set_inst_status(in, "cancelled");
    if ((rc = save_instance(e, in, err)) != 0)
        return rc;
    return finish_instance(e, in, err);
}

int cm_engine_act(cm_engine *e, const char *instance, cm_engine_action action, const char *reason,
                  cm_engine_also_fn also, void *ud, cm_err *err)
{
    static int (*const fns[])(cm_engine *, inst *, const char *,
                              cm_err *) = {[CM_ENGINE_PAUSE] = do_pause,
                                           [CM_ENGINE_RESUME] = do_resume,
                                           [CM_ENGINE_CANCEL] = do_cancel};
    if ((int)action < CM_ENGINE_PAUSE || action > CM_ENGINE_CANCEL)
        return cm_err_set(err, CM_EINVAL, "engine: unknown operator action %d", (int)action);
    return with_instance(e, instance, fns[action], action == CM_ENGINE_CANCEL ? reason : NULL, also,
                         ud, err);
}

int cm_engine_queued(cm_engine *e, const char *instance, long *n, cm_err *err)
{
    *n = 0;
    PREPARE(e, "SELECT count(*) FROM event WHERE instance = ?1 AND status = 'ready'", err);
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        *n = (long)sqlite3_column_int64(st, 0);
    else
        rc = db_fail(e, err, "event");
    sqlite3_reset(st);
    return rc;
}

int cm_engine_pause(cm_engine *e, const char *instance, cm_err *err)
{
    return cm_engine_act(e, instance, CM_ENGINE_PAUSE, NULL, NULL, NULL, err);
}

int cm_engine_resume(cm_engine *e, const char *instance, cm_err *err)
{
    return cm_engine_act(e, instance, CM_ENGINE_RESUME, NULL, NULL, NULL, err);
}

int cm_engine_cancel(cm_engine *e, const char *instance, const char *reason, cm_err *err)
{
    return cm_engine_act(e, instance, CM_ENGINE_CANCEL, reason, NULL, NULL, err);
}

/* Change a parked event: retry (ready now, attempts reset) or discard (deleted). */
static int change_event(cm_engine *e, long seq, const char *sql, cm_err *err)
{
    int rc = cm_store_begin(e->o.store, err);
    if (rc != 0)
        return rc;
    sqlite3_stmt *st = cm_store_prepare(e->o.store, sql, err);
    if (!st) {
        cm_store_rollback(e->o.store);
        return err->code;
    }
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_int64(st, 2, cm_clock_now_ms(e->o.clock));
    rc = exec_kept(e, st, "event", err);
    if (rc == 0 && sqlite3_changes(cm_store_db(e->o.store)) == 0)
        rc = cm_err_set(err, CM_ENOTFOUND, "no failed event with seq %ld", seq);
    if (rc == 0)
        rc = cm_store_commit(e->o.store, err);
    else
        cm_store_rollback(e->o.store);
    if (rc == 0 && e->attached)
        arm_loop(e);
    return rc;
}

/* A parked event of an instance that ended cannot apply: its retry is
** refused (CM_ESTATE), nothing changed. */
static int check_retriable(cm_engine *e, long seq, cm_err *err)
{
    int rc = 0;
    PREPARE(e,
            "SELECT i.id, i.status FROM event ev JOIN instance_base i ON i.id = ev.instance "
            "WHERE ev.seq = ?1 AND ev.status = 'failed' AND i.status NOT IN ('running', 'paused')",
            err);
    sqlite3_bind_int64(st, 1, seq);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        rc = cm_err_set(err, CM_ESTATE,
                        "failed event %ld: instance %s has ended (%s); the event can no longer "
                        "apply: discard it",
                        seq, (const char *)sqlite3_column_text(st, 0),
                        (const char *)sqlite3_column_text(st, 1));
    else if (s != SQLITE_DONE)
        rc = db_fail(e, err, "event");
    sqlite3_reset(st);
    return rc;
}

int cm_engine_retry_event(cm_engine *e, long seq, cm_err *err)
{
    int rc = check_retriable(e, seq, err);
    if (rc != 0)
        return rc;
    return change_event(e, seq,
                        "UPDATE event SET status = 'ready', attempts = 0, due_ms = ?2 "
                        "WHERE seq = ?1 AND status = 'failed'",
                        err);
}

int cm_engine_discard_event(cm_engine *e, long seq, cm_err *err)
{
    return change_event(e, seq,
                        "DELETE FROM event WHERE seq = ?1 AND status = 'failed' AND ?2 = ?2", err);
}

/* ---- views ------------------------------------------------------------ */

/* Append rows of st as objects with the given column names to arr. */
static int rows_to_array(sqlite3_stmt *st, const char *const *names, cJSON *arr)
{
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *row = cJSON_CreateObject();
        if (!row || !cJSON_AddItemToArray(arr, row))
            return CM_ENOMEM;
        for (int c = 0; names[c]; c++) {
            cJSON *v;
            switch (sqlite3_column_type(st, c)) {
            case SQLITE_INTEGER:
            case SQLITE_FLOAT:
                v = cJSON_CreateNumber(sqlite3_column_double(st, c));
                break;
            case SQLITE_NULL:
                v = cJSON_CreateNull();
                break;
            default: {
                const char *text = (const char *)sqlite3_column_text(st, c);
                v = (text[0] == '{' || text[0] == '[') ? cJSON_Parse(text) : NULL;
                if (!v)
                    v = cJSON_CreateString(text);
            }
            }
            if (!v || !cJSON_AddItemToObject(row, names[c], v))
                return CM_ENOMEM;
        }
    }
    sqlite3_reset(st);
    return s == SQLITE_DONE ? 0 : CM_EDB;
}

int cm_engine_get(cm_engine *e, const char *instance, cJSON **out, cm_err *err)
{
    static const char *const inst_cols[] = {"id",      "workflow", "rev",     "state",
                                            "status",  "input",    "context", "parent",
                                            "created", "updated",  NULL};
    static const char *const timer_cols[] = {"name", "due_ms", "payload", "scope", NULL};
    static const char *const hist_cols[] = {"step", "at", "event", "from", "to", "note", NULL};
    cJSON *arr = cJSON_CreateArray(), *timers = cJSON_CreateArray(), *history = cJSON_CreateArray();
    int rc = (!arr || !timers || !history) ? CM_ENOMEM : 0;
    *out = NULL;
    sqlite3_stmt *q[3] = {
        cm_store_prepare(e->o.store,
                         "SELECT id, workflow, rev, state, status, input, ctx, parent, created, "
                         "updated FROM instance WHERE id = ?1",
                         err),
        cm_store_prepare(e->o.store,
                         "SELECT name, due_ms, payload, scope FROM timer WHERE instance = ?1 "
                         "ORDER BY due_ms",
                         err),
        cm_store_prepare(e->o.store,
                         "WITH RECURSIVE chain(seq) AS (SELECT hist FROM instance WHERE id = ?1 "
                         "UNION ALL SELECT h.prev FROM history h JOIN chain c ON h.seq = c.seq "
                         "WHERE h.prev IS NOT NULL) SELECT h.step, h.at, h.event, h.from_state, "
                         "h.to_state, h.note FROM chain c JOIN history h ON h.seq = c.seq "
                         "ORDER BY h.step",
                         err),
    };
    for (int i = 0; i < 3 && rc == 0; i++) {
        if (!q[i]) {
            rc = err->code;
            break;
        }
        sqlite3_bind_text(q[i], 1, instance, -1, SQLITE_STATIC);
    }
    if (rc == 0)
        rc = rows_to_array(q[0], inst_cols, arr);
    if (rc == 0 && cJSON_GetArraySize(arr) == 0)
        rc = cm_err_set(err, CM_ENOTFOUND, "no instance with id \"%s\"", instance);
    if (rc == 0)
        rc = rows_to_array(q[1], timer_cols, timers);
    if (rc == 0)
        rc = rows_to_array(q[2], hist_cols, history);
    for (int i = 0; i < 3; i++)
        if (q[i])
            sqlite3_reset(q[i]);
    if (rc == 0) {
        cJSON *obj = cJSON_DetachItemFromArray(arr, 0);
        cJSON_AddItemToObject(obj, "timers", timers);
        cJSON_AddItemToObject(obj, "history", history);
        timers = history = NULL;
        *out = obj;
    } else if (rc == CM_ENOMEM || rc == CM_EDB) {
        rc = cm_err_set(err, rc, "instance %s: cannot read it back", instance);
    }
    cJSON_Delete(arr);
    cJSON_Delete(timers);
    cJSON_Delete(history);
    return rc;
}

int cm_engine_failed(cm_engine *e, cJSON **out, cm_err *err)
{
    static const char *const cols[] = {"seq",   "instance", "name",   "attempts",
                                       "error", "status",   "due_ms", NULL};
    PREPARE(e,
            "SELECT seq, instance, name, attempts, error, status, due_ms FROM event "
            "WHERE attempts > 0 OR status = 'failed' ORDER BY seq",
            err);
    *out = cJSON_CreateArray();
    int rc = *out ? rows_to_array(st, cols, *out) : CM_ENOMEM;
    if (rc != 0) {
        cJSON_Delete(*out);
        *out = NULL;
        return cm_err_set(err, rc, "cannot list failed events");
    }
    return 0;
}

/* ---- life cycle and the loop ------------------------------------------ */

static void engine_free(cm_engine *e)
{
    for (work *w = e->spare, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    cJSON_Delete(e->empty);
    free(e->starters);
    free(e->events);
    cJSON_Delete(e->audited);
    free(e);
}

cm_engine *cm_engine_new(const cm_engine_opts *opts, cm_err *err)
{
    if (!opts || !opts->store || !opts->model || !opts->clock || !opts->runtime) {
        cm_err_set(err, CM_EINVAL, "engine: store, model, clock and runtime are required");
        return NULL;
    }
    cm_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        cm_err_set(err, CM_ENOMEM, "out of memory");
        return NULL;
    }
    if (!(e->empty = cJSON_CreateObject()) || !(e->audited = cJSON_CreateArray())) {
        cJSON_Delete(e->empty);
        free(e);
        cm_err_set(err, CM_ENOMEM, "out of memory");
        return NULL;
    }
    e->o = *opts;
    e->cache.max = e->o.cache_max ? e->o.cache_max : CM_ENGINE_CACHE_DEFAULT;
    if (e->o.batch_max <= 0)
        e->o.batch_max = ENGINE_BATCH_DEFAULT;
    if (e->o.batch_ms == 0)
        e->o.batch_ms = ENGINE_BATCH_MS_DEFAULT;
    if (e->o.max_attempts <= 0)
        e->o.max_attempts = ENGINE_ATTEMPTS_DEFAULT;
    if (e->o.retry_base_ms <= 0)
        e->o.retry_base_ms = ENGINE_RETRY_BASE_DEFAULT;
    return e;
}

void cm_engine_destroy(cm_engine **engine_p)
{
    cm_engine *e = engine_p ? *engine_p : NULL;
    if (!e)
        return;
    *engine_p = NULL;
    cm_engine_detach(e);
    /* Work never committed is never acknowledged as done: tell the submitters. */
    cm_err stopped;
    cm_err_set(&stopped, CM_EINVAL, "engine stopped before this ran");
    fail_queued(e, &stopped);
    cache_clear(e);
    free(e->cache.buckets);
    e->cache.buckets = NULL;
    if (e->closing > 0)
        e->doomed = true; /* freed by the last close callback */
    else
        engine_free(e);
}

static void on_check(uv_check_t *h)
{
    cm_engine *e = h->data;
    cm_err err;
    if (!e->head)
        uv_idle_stop(&e->idle);
    if (e->head && cm_engine_run(e, NULL, &err) != 0)
        fprintf(stderr, "caremesh engine: %s\n", err.msg);
}

static void on_timer(uv_timer_t *h)
{
    cm_engine *e = h->data;
    cm_err err;
    if (cm_engine_run(e, NULL, &err) != 0)
        fprintf(stderr, "caremesh engine: %s\n", err.msg);
}

/* Arm the uv timer for the earliest due item (virtual clocks: fire at once). */
static void arm_loop(cm_engine *e)
{
    int64_t next = e->due_read ? e->due_next : cm_engine_next_due(e);
    e->due_read = false;
    if (e->head)
        uv_idle_start(&e->idle, noop_idle);
    if (next == INT64_MAX) {
        uv_timer_stop(&e->timer);
        return;
    }
    int64_t now = cm_clock_now_ms(e->o.clock), wait = next - now;
    uv_timer_start(&e->timer, on_timer, wait > 0 ? (uint64_t)wait : 0, 0);
}

int cm_engine_attach(cm_engine *e, uv_loop_t *loop, cm_err *err)
{
    if (e->attached)
        return cm_err_set(err, CM_EINVAL, "engine: already attached to a loop");
    e->loop = loop;
    uv_idle_init(loop, &e->idle);
    uv_check_init(loop, &e->check);
    uv_timer_init(loop, &e->timer);
    uv_async_init(loop, &e->synced, on_synced);
    e->idle.data = e->check.data = e->timer.data = e->synced.data = e;
    if (e->o.pipeline)
        cm_store_on_synced(e->o.store, sync_notify, e);
    uv_check_start(&e->check, on_check);
    e->attached = true;
    uv_idle_start(&e->idle, noop_idle);
    arm_loop(e);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    cm_engine *e = h->data;
    if (--e->closing == 0 && e->doomed)
        engine_free(e);
}

void cm_engine_detach(cm_engine *e)
{
    if (!e->attached)
        return;
    if (e->o.pipeline)
        cm_store_on_synced(e->o.store, NULL, NULL); /* the sync thread no longer wakes us */
    sync_drain(e);
    e->attached = false;
    e->closing = 4;
    uv_close((uv_handle_t *)&e->idle, on_closed);
    uv_close((uv_handle_t *)&e->check, on_closed);
    uv_close((uv_handle_t *)&e->timer, on_closed);
    uv_close((uv_handle_t *)&e->synced, on_closed);
}

/* ---- for the API and /metrics ------------------------------------------ */

const double cm_engine_latency_bounds[CM_ENGINE_LATENCY_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

void cm_engine_stats_get(const cm_engine *e, cm_engine_stats *out)
{
    *out = e->stats;
    out->cache_entries = (uint64_t)e->cache.n;
    uint64_t within = 0;
    for (int i = 0; i < CM_ENGINE_LATENCY_BUCKETS; i++)
        out->latency_le[i] = within += e->latency_in[i];
}

void cm_engine_set_work_hook(cm_engine *e, cm_engine_work_hook fn, void *ud)
{
    e->hook = fn;
    e->hook_ud = ud;
}
