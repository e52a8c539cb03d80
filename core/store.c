/*
** store.c -- SQLite store: open, pragmas, migrations, kept statements, transactions.
** Uses SQLite only. See store.h for the contract.
*/
#include "store.h"

#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CM_STMT_SLOTS 128

typedef struct cm_stmt_slot {
    const char *sql; /* the caller's literal; NULL when empty */
    sqlite3_stmt *stmt;
} cm_stmt_slot;

/* Checkpoints off the commit path (see cm_store_opts.checkpoint_pages). The
** writer's WAL hook decides after each commit; the thread runs PASSIVE
** checkpoints on its own connection when told. Under mu: busy, stop,
** done_to, last_wal, stats. */
typedef struct cm_ckpt {
    /* WAL pages: checkpoints begin; the thread copies at least this many;
    ** the writer finishes (the last few, then the WAL starts over); the bound */
    int start, step, restart, bound;
    int sync;     /* the writer's synchronous level, for the thread's connection */
    bool started; /* the thread runs (started on first need) */
    bool failed;  /* it could not be started: checkpoints stay inline */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sqlite3 *db; /* the thread's connection */
    /* the connection's database file, for the thread's own syncs of it:
    ** SQLite's, never a descriptor of ours, whose close would drop every
    ** POSIX lock the process holds on the file (SQLite's too) */
    sqlite3_file *dbfile;
    bool busy; /* a checkpoint was asked for and has not finished */
    bool stop;
    int done_to;  /* frames of the WAL the thread's last checkpoint had copied; 0: none */
    int last_wal; /* the WAL's size after the previous commit (a smaller one: it started over) */
    cm_store_ckpt_stats stats;
    struct cm_store *store; /* whose syncer hears a failed fsync (sync_fail) */
} cm_ckpt;

#define CM_SYNC_SPANS   16
#define CM_SYNC_THREADS 2

/* Deferred commits' syncs (see store.h): the threads fdatasync the WAL on an
** fd of the store's own. Under mu: want, asked, synced, running, stop,
** failed, why, notify, spans. */
typedef struct cm_syncer {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* the threads wait for work, waiters for the watermark */
    pthread_t thread[CM_SYNC_THREADS];
    int nthreads;
    bool started;     /* the threads run (started on the first deferred commit) */
    bool unavailable; /* it could not be started: deferred commits are synced inline */
    bool stop;
    /* the WAL, opened by the threads' starter, one open file each: Linux
    ** tells a writeback error once per open file, so through a shared one
    ** a sync could take the error and another, ending first, get 0 */
    int fd[CM_SYNC_THREADS]; /* -1 when none */
    dev_t dev;               /* the WAL's inode as opened: checked before each sync */
    ino_t ino;
    char *wal_path;
    uint64_t want;                     /* the highest commit number asked to be synced */
    uint64_t asked;                    /* the highest commit number a sync begun covers */
    uint64_t synced;                   /* the watermark */
    uint64_t tickets;                  /* syncs begun */
    uint64_t running[CM_SYNC_THREADS]; /* the ticket of each thread's sync in flight; 0: none */
    int failed; /* the errno of a failed sync (or EIO: the WAL was replaced); 0: none */
    char why[512];
    void (*notify)(void *ud);
    void *notify_ud;
    int (*fn)(void *ud, int fd);
    void *fn_ud;
    /* the latest syncs, oldest overwritten: what each covered and when it
    ** ran (CLOCK_MONOTONIC ns, uv_hrtime's clock), for cm_store_sync_span */
    struct {
        uint64_t target;
        int64_t start_ns, end_ns;
    } spans[CM_SYNC_SPANS];
    unsigned nspans; /* syncs finished, the next span's slot modulo CM_SYNC_SPANS */
    struct sync_arg {
        struct cm_syncer *sy;
        int slot;
    } args[CM_SYNC_THREADS];
} cm_syncer;

/* The writer's VFS, the shim that gathers its WAL writes (see "the
** writer's WAL writes, gathered"): registered under a name of its own for
** the store's life, over the VFS that was the default at open. */
typedef struct cm_gather_vfs {
    sqlite3_vfs vfs;        /* pAppData: this */
    sqlite3_vfs *base;      /* the VFS it forwards to */
    struct cm_store *store; /* whose syncer hears a write it could not report */
    bool registered;
    char name[48];
} cm_gather_vfs;

struct cm_store {
    sqlite3 *db;
    char *path;
    cm_ckpt *ckpt; /* NULL: SQLite's own checkpoints, inline */
    int schema_version;
    bool tx_held;     /* cm_store_begin ran and neither commit nor rollback since */
    int sync;         /* the synchronous level it was opened with (cm_sync) */
    bool nosync;      /* the open transaction is cm_store_begin_nosync's: NORMAL until it ends */
    bool deferred;    /* the open transaction is cm_store_begin_deferred's */
    bool writer;      /* opened to write: sy is initialized */
    uint64_t commits; /* deferred and synced commits that wrote (cm_store_commit_seq) */
    bool wrote;       /* the WAL hook saw the last commit write frames */
    bool refused;     /* the authorizer refused a PRAGMA (store_authorize) */
    cm_syncer sy;
    cm_gather_vfs gv;
    cm_store_nested_fn nested_fn; /* see cm_store_on_nested_write */
    void *nested_ud;
    cm_stmt_slot stmts[CM_STMT_SLOTS];
    /* by the address of the caller's literal: the slot it was last found in,
    ** so a kept statement is found without hashing its text */
    uint8_t hint[CM_STMT_SLOTS];
};

typedef struct cm_migration {
    int version;
    const char *description;
    const char *sql;
} cm_migration;

/* Append-only: a released migration is never edited, only followed by another. */
static const cm_migration migrations[] = {
    {1, "records, references, search index, node metadata",
     "CREATE TABLE node_meta(\n"
     "  key   TEXT PRIMARY KEY,\n"
     "  value TEXT NOT NULL\n"
     ") WITHOUT ROWID;\n"
     "CREATE TABLE record(\n"
     "  kind    TEXT NOT NULL,\n"
     "  id      TEXT NOT NULL,\n"
     "  doc     TEXT NOT NULL CHECK (json_valid(doc)),\n"
     "  version INTEGER NOT NULL DEFAULT 1,\n"
     "  created TEXT NOT NULL,\n"
     "  updated TEXT NOT NULL,\n"
     "  PRIMARY KEY (kind, id)\n"
     ") WITHOUT ROWID;\n"
     "CREATE TABLE record_ref(\n"
     "  kind    TEXT NOT NULL,\n"
     "  id      TEXT NOT NULL,\n"
     "  field   TEXT NOT NULL,\n"
     "  to_kind TEXT NOT NULL,\n"
     "  to_id   TEXT NOT NULL,\n"
     "  FOREIGN KEY (kind, id) REFERENCES record(kind, id) ON DELETE CASCADE,\n"
     "  FOREIGN KEY (to_kind, to_id) REFERENCES record(kind, id)\n"
     ");\n"
     "CREATE INDEX record_ref_from ON record_ref(kind, id);\n"
     "CREATE INDEX record_ref_to ON record_ref(to_kind, to_id);\n"
     "CREATE TABLE record_index(\n"
     "  kind  TEXT NOT NULL,\n"
     "  id    TEXT NOT NULL,\n"
     "  key   TEXT NOT NULL,\n"
     "  value TEXT NOT NULL,\n"
     "  FOREIGN KEY (kind, id) REFERENCES record(kind, id) ON DELETE CASCADE\n"
     ");\n"
     "CREATE INDEX record_index_from ON record_index(kind, id);\n"
     "CREATE INDEX record_index_lookup ON record_index(kind, key, value, id);\n"},
    /* The engine writes these tables on every step, so the schema avoids what
    ** makes SQLite build a temporary table per statement: CHECK ... IN (...)
    ** (use OR) and multi-row DELETEs on WITHOUT ROWID tables (timer). */
    {2, "workflow engine: definitions, instances, history, timers, events, effects",
     "CREATE TABLE workflow_def(\n"
     "  name      TEXT NOT NULL,\n"
     "  rev       INTEGER NOT NULL,\n"
     "  version   INTEGER NOT NULL,\n"
     "  origin    TEXT NOT NULL,\n"
     "  source    TEXT NOT NULL,\n"
     "  loaded_at TEXT NOT NULL,\n"
     "  PRIMARY KEY (name, rev)\n"
     ") WITHOUT ROWID;\n"
     "CREATE TABLE instance(\n"
     "  seq      INTEGER PRIMARY KEY,\n"
     "  id       TEXT NOT NULL UNIQUE,\n"
     "  workflow TEXT NOT NULL,\n"
     "  rev      INTEGER NOT NULL,\n"
     "  state    TEXT NOT NULL,\n"
     "  status   TEXT NOT NULL CHECK (status = 'running' OR status = 'paused' OR "
     "status = 'done' OR status = 'cancelled'),\n"
     "  input    TEXT NOT NULL,\n"
     "  ctx      TEXT NOT NULL,\n"
     "  parent   TEXT REFERENCES instance(id),\n"
     "  steps    INTEGER NOT NULL DEFAULT 0,\n"
     "  created  TEXT NOT NULL,\n"
     "  updated  TEXT NOT NULL,\n"
     "  FOREIGN KEY (workflow, rev) REFERENCES workflow_def(name, rev)\n"
     ");\n"
     "CREATE INDEX instance_by_workflow ON instance(workflow, status);\n"
     "CREATE INDEX instance_by_parent ON instance(parent);\n"
     "CREATE TABLE history(\n"
     "  instance   TEXT NOT NULL REFERENCES instance(id),\n"
     "  step       INTEGER NOT NULL,\n"
     "  at         TEXT NOT NULL,\n"
     "  event      TEXT NOT NULL,\n"
     "  from_state TEXT,\n"
     "  to_state   TEXT NOT NULL,\n"
     "  note       TEXT,\n"
     "  PRIMARY KEY (instance, step)\n"
     ") WITHOUT ROWID;\n"
     "CREATE TABLE timer(\n"
     "  instance TEXT NOT NULL REFERENCES instance(id),\n"
     "  name     TEXT NOT NULL,\n"
     "  due_ms   INTEGER NOT NULL,\n"
     "  payload  TEXT NOT NULL,\n"
     "  scope    TEXT,\n"
     "  UNIQUE (instance, name)\n"
     ");\n"
     "CREATE INDEX timer_by_due ON timer(due_ms);\n"
     "CREATE TABLE event(\n"
     "  seq      INTEGER PRIMARY KEY,\n"
     "  instance TEXT NOT NULL REFERENCES instance(id),\n"
     "  name     TEXT NOT NULL,\n"
     "  payload  TEXT NOT NULL,\n"
     "  timer    INTEGER NOT NULL DEFAULT 0,\n"
     "  status   TEXT NOT NULL CHECK (status = 'ready' OR status = 'failed'),\n"
     "  attempts INTEGER NOT NULL DEFAULT 0,\n"
     "  error    TEXT,\n"
     "  due_ms   INTEGER NOT NULL,\n"
     "  created  TEXT NOT NULL\n"
     ");\n"
     "CREATE INDEX event_by_due ON event(status, due_ms);\n"
     "CREATE INDEX event_by_instance ON event(instance);\n"
     "CREATE TABLE notification(\n"
     "  seq       INTEGER PRIMARY KEY,\n"
     "  instance  TEXT REFERENCES instance(id),\n"
     "  channel   TEXT NOT NULL,\n"
     "  recipient TEXT NOT NULL,\n"
     "  message   TEXT NOT NULL,\n"
     "  data      TEXT NOT NULL,\n"
     "  status    TEXT NOT NULL DEFAULT 'pending',\n"
     "  attempts  INTEGER NOT NULL DEFAULT 0,\n"
     "  error     TEXT,\n"
     "  next_ms   INTEGER NOT NULL DEFAULT 0,\n"
     "  sent_at   TEXT,\n"
     "  created   TEXT NOT NULL\n"
     ");\n"
     "CREATE INDEX notification_pending ON notification(status, next_ms);\n"
     "CREATE TABLE outbox(\n"
     "  seq      INTEGER PRIMARY KEY,\n"
     "  instance TEXT REFERENCES instance(id),\n"
     "  receiver TEXT NOT NULL,\n"
     "  kind     TEXT NOT NULL,\n"
     "  payload  TEXT NOT NULL,\n"
     "  status   TEXT NOT NULL DEFAULT 'pending',\n"
     "  created  TEXT NOT NULL\n"
     ");\n"
     "CREATE TABLE kpi_observation(\n"
     "  seq      INTEGER PRIMARY KEY,\n"
     "  name     TEXT NOT NULL,\n"
     "  value    REAL NOT NULL,\n"
     "  labels   TEXT NOT NULL,\n"
     "  instance TEXT REFERENCES instance(id),\n"
     "  workflow TEXT,\n"
     "  at       TEXT NOT NULL\n"
     ");\n"
     "CREATE INDEX kpi_by_name ON kpi_observation(name, at);\n"},
    /* Federation: an outbox row is routed to a peer (or refused with a
    ** reason) and stays 'pending' until the peer acknowledges it; the inbox
    ** keeps each message received from a peer once, under (peer, msg_id). */
    {3, "federation: outbox routing and delivery state, inbox",
     "ALTER TABLE outbox ADD COLUMN peer TEXT;\n"
     "ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;\n"
     "ALTER TABLE outbox ADD COLUMN reason TEXT;\n"
     "ALTER TABLE outbox ADD COLUMN done_at TEXT;\n"
     "CREATE INDEX outbox_by_peer ON outbox(status, peer, seq);\n"
     "CREATE TABLE inbox(\n"
     "  peer     TEXT NOT NULL,\n"
     "  msg_id   TEXT NOT NULL,\n"
     "  kind     TEXT NOT NULL,\n"
     "  receiver TEXT NOT NULL,\n"
     "  payload  TEXT NOT NULL,\n"
     "  status   TEXT NOT NULL DEFAULT 'received',\n"
     "  received TEXT NOT NULL,\n"
     "  PRIMARY KEY (peer, msg_id)\n"
     ") WITHOUT ROWID;\n"},
    /* The audit trail (audit.h): append-only, each row chained to the one
    ** before by its hash. */
    {4, "audit trail",
     "CREATE TABLE audit(\n"
     "  seq      INTEGER PRIMARY KEY,\n"
     "  at       TEXT NOT NULL,\n"
     "  actor    TEXT NOT NULL,\n"
     "  action   TEXT NOT NULL,\n"
     "  patient  TEXT NOT NULL,\n"
     "  classes  TEXT NOT NULL,\n"
     "  purpose  TEXT NOT NULL,\n"
     "  outcome  TEXT NOT NULL,\n"
     "  detail   TEXT NOT NULL,\n"
     "  hash     BLOB NOT NULL\n"
     ");\n"
     "CREATE INDEX audit_by_patient ON audit(patient, seq);\n"},
    /* Partnership terms on the wire: who sends for which purpose, the data
    ** classes and patient a message carries, the patient record shared (cut
    ** to the terms), and the instances at both ends a message continues. */
    {5, "federation: terms, shared records and instance links",
     "ALTER TABLE outbox ADD COLUMN sender TEXT;\n"
     "ALTER TABLE outbox ADD COLUMN purpose TEXT;\n"
     "ALTER TABLE outbox ADD COLUMN classes TEXT;\n"
     "ALTER TABLE outbox ADD COLUMN patient TEXT;\n"
     "ALTER TABLE outbox ADD COLUMN record TEXT;\n"
     "ALTER TABLE outbox ADD COLUMN reply_to TEXT;\n"
     "ALTER TABLE inbox ADD COLUMN sender TEXT;\n"
     "ALTER TABLE inbox ADD COLUMN purpose TEXT;\n"
     "ALTER TABLE inbox ADD COLUMN classes TEXT;\n"
     "ALTER TABLE inbox ADD COLUMN patient TEXT;\n"
     "ALTER TABLE inbox ADD COLUMN instance TEXT;\n"
     "ALTER TABLE inbox ADD COLUMN reason TEXT;\n"
     "CREATE TABLE instance_link(\n"
     "  instance TEXT NOT NULL REFERENCES instance(id),\n"
     "  node     TEXT NOT NULL,\n"
     "  remote   TEXT,\n"
     "  PRIMARY KEY (instance, node)\n"
     ") WITHOUT ROWID;\n"},
    /* What partner nodes share (share.h): their directory of organizations
    ** and providers, and aggregate indicators; each replaced when it comes
    ** again. */
    {6, "federation: partners' directory and indicators",
     "CREATE TABLE directory(\n"
     "  peer         TEXT NOT NULL,\n"
     "  organization TEXT NOT NULL,\n"
     "  doc          TEXT NOT NULL,\n"
     "  received     TEXT NOT NULL,\n"
     "  PRIMARY KEY (peer, organization)\n"
     ") WITHOUT ROWID;\n"
     "CREATE TABLE indicator(\n"
     "  peer        TEXT NOT NULL,\n"
     "  partnership TEXT NOT NULL,\n"
     "  name        TEXT NOT NULL,\n"
     "  doc         TEXT NOT NULL,\n"
     "  received    TEXT NOT NULL,\n"
     "  PRIMARY KEY (peer, partnership, name)\n"
     ") WITHOUT ROWID;\n"},
    /* Workflow history is written on every step and read one instance at a
    ** time. Rows keyed by (instance, step) put each step's row on its
    ** instance's page, so a batch of steps dirtied (and its commit wrote)
    ** about one page per step. Now rows go in write order (a batch fills the
    ** last pages), each names the instance's previous row, and the instance
    ** its latest (instance.hist): reading one instance's history follows the
    ** chain. */
    {7, "workflow history in write order, chained per instance",
     "CREATE TABLE history_chain(\n"
     "  seq        INTEGER PRIMARY KEY,\n"
     "  instance   TEXT NOT NULL REFERENCES instance(id),\n"
     "  step       INTEGER NOT NULL,\n"
     "  prev       INTEGER,\n"
     "  at         TEXT NOT NULL,\n"
     "  event      TEXT NOT NULL,\n"
     "  from_state TEXT,\n"
     "  to_state   TEXT NOT NULL,\n"
     "  note       TEXT\n"
     ");\n"
     "INSERT INTO history_chain(instance, step, at, event, from_state, to_state, note)\n"
     "  SELECT instance, step, at, event, from_state, to_state, note FROM history\n"
     "  ORDER BY instance, step;\n"
     "UPDATE history_chain SET prev = seq - 1 WHERE instance =\n"
     "  (SELECT p.instance FROM history_chain p WHERE p.seq = history_chain.seq - 1);\n"
     "ALTER TABLE instance ADD COLUMN hist INTEGER;\n"
     "CREATE INDEX history_chain_migrating ON history_chain(instance);\n"
     "UPDATE instance SET hist =\n"
     "  (SELECT max(h.seq) FROM history_chain h WHERE h.instance = instance.id);\n"
     "DROP INDEX history_chain_migrating;\n"
     "DROP TABLE history;\n"
     "ALTER TABLE history_chain RENAME TO history;\n"},
    /* API bearer tokens (token.h): only a hash of each secret is kept. */
    {8, "API tokens",
     "CREATE TABLE api_token(\n"
     "  id      TEXT PRIMARY KEY,\n"
     "  name    TEXT UNIQUE,\n"
     "  scope   TEXT NOT NULL CHECK (scope = 'read' OR scope = 'write' OR scope = 'admin'),\n"
     "  hash    BLOB NOT NULL,\n"
     "  created TEXT NOT NULL,\n"
     "  revoked TEXT\n"
     ") WITHOUT ROWID;\n"},
    /* History rows are written on every step, by the engine only, for an
    ** instance it has just read or written in the same transaction, and
    ** instances are never deleted; the foreign key made SQLite look the
    ** instance up in its id index on every row. The table is the same
    ** without it (rows and seq kept: instance.hist and prev name them). */
    {9, "workflow history without the per-row instance lookup",
     "CREATE TABLE history_unchecked(\n"
     "  seq        INTEGER PRIMARY KEY,\n"
     "  instance   TEXT NOT NULL,\n"
     "  step       INTEGER NOT NULL,\n"
     "  prev       INTEGER,\n"
     "  at         TEXT NOT NULL,\n"
     "  event      TEXT NOT NULL,\n"
     "  from_state TEXT,\n"
     "  to_state   TEXT NOT NULL,\n"
     "  note       TEXT\n"
     ");\n"
     "INSERT INTO history_unchecked(seq, instance, step, prev, at, event, from_state, to_state,\n"
     "                              note)\n"
     "  SELECT seq, instance, step, prev, at, event, from_state, to_state, note FROM history\n"
     "  ORDER BY seq;\n"
     "DROP TABLE history;\n"
     "ALTER TABLE history_unchecked RENAME TO history;\n"},
    /* Marking a row delivered rewrote its entry in outbox_by_peer(status,
    ** peer, seq) -- deleted and inserted again -- on every delivery. Only
    ** pending rows are looked up by peer and seq, so the index now holds
    ** them alone: a delivery deletes one entry. The last row delivered to
    ** each peer (the prev of the next message sent) is kept per peer. */
    {10, "federation: pending outbox rows indexed alone, the last delivered per peer",
     "CREATE TABLE fed_delivered(\n"
     "  peer TEXT PRIMARY KEY,\n"
     "  seq  INTEGER NOT NULL\n"
     ") WITHOUT ROWID;\n"
     "INSERT INTO fed_delivered(peer, seq)\n"
     "  SELECT peer, max(seq) FROM outbox WHERE status = 'delivered' AND peer IS NOT NULL\n"
     "  GROUP BY peer;\n"
     "DROP INDEX outbox_by_peer;\n"
     "CREATE INDEX outbox_pending ON outbox(peer, seq) WHERE status = 'pending';\n"},
    /* A delivered row is no longer written: fed_delivered moving past it
    ** says so (every pending row of a peer up to its seq is delivered), and
    ** outbox_state shows each row's status read that way. Before, a row
    ** answered out of order could be pending below the last delivered; the
    ** mark goes back to the last delivered row before the first such one. */
    {11, "federation: delivered rows told by the peer's last delivered, not written",
     "UPDATE fed_delivered SET seq = coalesce((\n"
     "    SELECT max(o.seq) FROM outbox o\n"
     "    WHERE o.peer = fed_delivered.peer AND o.status = 'delivered' AND o.seq < (\n"
     "      SELECT min(q.seq) FROM outbox q\n"
     "      WHERE q.peer = fed_delivered.peer AND q.status = 'pending')), 0)\n"
     "  WHERE EXISTS (SELECT 1 FROM outbox q WHERE q.peer = fed_delivered.peer\n"
     "                AND q.status = 'pending' AND q.seq <= fed_delivered.seq);\n"
     "CREATE VIEW outbox_state AS\n"
     "  SELECT o.seq AS seq, o.peer AS peer,\n"
     "         CASE WHEN o.status = 'pending' AND o.seq <= (SELECT d.seq FROM fed_delivered d\n"
     "                                                       WHERE d.peer = o.peer)\n"
     "              THEN 'delivered' ELSE o.status END AS status\n"
     "  FROM outbox o;\n"},
    /* A step changed the instance row, and SQLite rebuilt all of it (input,
    ** id, workflow, created...) on every step. What a step changes (state,
    ** context, steps, updated, the latest history row) now has a row of its
    ** own, keyed by the instance's seq; what it does not (the rest, and
    ** status, which changes only when an instance ends, pauses or resumes)
    ** stays in instance_base, which the other tables' foreign keys name
    ** after the rename. The view `instance` shows the row as it was, for
    ** every reader; writers write the two tables. */
    {12, "workflow instances: what a step changes in a row of its own",
     "CREATE TABLE instance_step(\n"
     "  seq     INTEGER PRIMARY KEY,\n"
     "  state   TEXT NOT NULL,\n"
     "  ctx     TEXT NOT NULL,\n"
     "  steps   INTEGER NOT NULL DEFAULT 0,\n"
     "  updated TEXT NOT NULL,\n"
     "  hist    INTEGER\n"
     ");\n"
     "INSERT INTO instance_step(seq, state, ctx, steps, updated, hist)\n"
     "  SELECT seq, state, ctx, steps, updated, hist FROM instance ORDER BY seq;\n"
     "ALTER TABLE instance DROP COLUMN state;\n"
     "ALTER TABLE instance DROP COLUMN ctx;\n"
     "ALTER TABLE instance DROP COLUMN steps;\n"
     "ALTER TABLE instance DROP COLUMN updated;\n"
     "ALTER TABLE instance DROP COLUMN hist;\n"
     "ALTER TABLE instance RENAME TO instance_base;\n"
     "CREATE VIEW instance AS\n"
     "  SELECT b.seq AS seq, b.id AS id, b.workflow AS workflow, b.rev AS rev,\n"
     "         s.state AS state, b.status AS status, b.input AS input, s.ctx AS ctx,\n"
     "         b.parent AS parent, s.steps AS steps, b.created AS created,\n"
     "         s.updated AS updated, s.hist AS hist\n"
     "  FROM instance_base b JOIN instance_step s ON s.seq = b.seq;\n"},
    /* A step wrote its count and time twice: in instance_step (steps,
    ** updated) and in the history row it adds (step, at), which
    ** instance_step.hist names. The step row keeps state, context and hist
    ** only; the view reads steps and updated from that history row, and for
    ** an instance with none (nothing has stepped it) what the row held then:
    ** 0 steps, updated at its creation. */
    {13, "workflow instances: steps and updated read from the latest history row",
     "DROP VIEW instance;\n"
     "CREATE TABLE instance_step_narrow(\n"
     "  seq   INTEGER PRIMARY KEY,\n"
     "  state TEXT NOT NULL,\n"
     "  ctx   TEXT NOT NULL,\n"
     "  hist  INTEGER\n"
     ");\n"
     "INSERT INTO instance_step_narrow(seq, state, ctx, hist)\n"
     "  SELECT seq, state, ctx, hist FROM instance_step ORDER BY seq;\n"
     "DROP TABLE instance_step;\n"
     "ALTER TABLE instance_step_narrow RENAME TO instance_step;\n"
     "CREATE VIEW instance AS\n"
     "  SELECT b.seq AS seq, b.id AS id, b.workflow AS workflow, b.rev AS rev,\n"
     "         s.state AS state, b.status AS status, b.input AS input, s.ctx AS ctx,\n"
     "         b.parent AS parent, coalesce(h.step, 0) AS steps, b.created AS created,\n"
     "         coalesce(h.at, b.created) AS updated, s.hist AS hist\n"
     "  FROM instance_base b JOIN instance_step s ON s.seq = b.seq\n"
     "  LEFT JOIN history h ON h.seq = s.hist;\n"},
    /* As history in 9: timers are written and deleted by the engine only,
    ** for an instance it has just read or written in the same transaction,
    ** and instances are never deleted. The foreign key made SQLite look the
    ** instance up in its id index for every timer written, and made each
    ** DELETE of an instance's timers (every state left that had one) a
    ** two-pass delete through a row set. Rows and rowids are kept. */
    {14, "workflow timers without the per-row instance lookup",
     "CREATE TABLE timer_unchecked(\n"
     "  instance TEXT NOT NULL,\n"
     "  name     TEXT NOT NULL,\n"
     "  due_ms   INTEGER NOT NULL,\n"
     "  payload  TEXT NOT NULL,\n"
     "  scope    TEXT,\n"
     "  UNIQUE (instance, name)\n"
     ");\n"
     "INSERT INTO timer_unchecked(rowid, instance, name, due_ms, payload, scope)\n"
     "  SELECT rowid, instance, name, due_ms, payload, scope FROM timer ORDER BY rowid;\n"
     "DROP TABLE timer;\n"
     "ALTER TABLE timer_unchecked RENAME TO timer;\n"
     "CREATE INDEX timer_by_due ON timer(due_ms);\n"},
};

#define CM_NMIGRATIONS (sizeof(migrations) / sizeof(migrations[0]))

/* ---- SQLite's small blocks ---------------------------------------------- */

/* Debian's SQLite is built without its lookaside allocator
** (SQLITE_OMIT_LOOKASIDE), so every small block a statement uses (cursors,
** records, bound text, savepoint bitmaps) is a malloc and a free, several
** per statement. Freed blocks of up to 512 bytes, in 64-byte classes, are
** kept per thread (at most MEM_KEEP of a class) for the next request of
** their class, and so is the last freed block of 32 to 128 KB (the in-memory
** statement journal takes one such chunk per savepoint) for the next request
** of its size. A thread's blocks are freed when it ends. */
#define MEM_CLASS   64
#define MEM_CLASSES 8
#define MEM_KEEP    64
#define MEM_BIG_MIN (32 * 1024)
#define MEM_BIG_MAX (128 * 1024)

typedef struct mem_pool {
    void *free[MEM_CLASSES]; /* lists linked through each block's first word */
    int n[MEM_CLASSES];
    void *big;
    bool registered; /* its thread drains it on exit (mem_key) */
} mem_pool;

static sqlite3_mem_methods mem_base;
static _Thread_local mem_pool mem_local;
static pthread_key_t mem_key;
static pthread_once_t mem_once = PTHREAD_ONCE_INIT;
static bool mem_keyed;

static void mem_drain(void *arg)
{
    mem_pool *p = arg;
    for (int c = 0; c < MEM_CLASSES; c++) {
        while (p->free[c]) {
            void *b = p->free[c];
            p->free[c] = *(void **)b;
            mem_base.xFree(b);
        }
        p->n[c] = 0;
    }
    if (p->big) /* SQLite's own xFree takes no NULL */
        mem_base.xFree(p->big);
    p->big = NULL;
    /* a block freed later on this thread (another key's destructor) keys
    ** the pool again, and POSIX runs this destructor once more */
    p->registered = false;
}

static void mem_key_make(void)
{
    mem_keyed = pthread_key_create(&mem_key, mem_drain) == 0;
}

/* This thread's pool, or NULL when its blocks could not be freed at its end. */
static mem_pool *mem_pool_get(void)
{
    mem_pool *p = &mem_local;
    if (!p->registered) {
        pthread_once(&mem_once, mem_key_make);
        if (!mem_keyed || pthread_setspecific(mem_key, p) != 0)
            return NULL;
        p->registered = true;
    }
    return p;
}

static int mem_class(int n)
{
    return n > 0 && n <= MEM_CLASS * MEM_CLASSES ? (n - 1) / MEM_CLASS : -1;
}

static void *mem_malloc(int n)
{
    mem_pool *p = mem_pool_get();
    int c = mem_class(n);
    if (c >= 0) {
        void *b = p ? p->free[c] : NULL;
        if (!b)
            return mem_base.xMalloc((c + 1) * MEM_CLASS);
        p->free[c] = *(void **)b;
        p->n[c]--;
        return b;
    }
    if (p && p->big && mem_base.xSize(p->big) == mem_base.xRoundup(n)) {
        void *b = p->big;
        p->big = NULL;
        return b;
    }
    return mem_base.xMalloc(n);
}

static void mem_free(void *b)
{
    mem_pool *p = b ? mem_pool_get() : NULL;
    int size = b ? mem_base.xSize(b) : 0;
    int c = size % MEM_CLASS == 0 ? mem_class(size) : -1;
    if (p && c >= 0 && p->n[c] < MEM_KEEP) {
        *(void **)b = p->free[c];
        p->free[c] = b;
        p->n[c]++;
    } else if (p && size >= MEM_BIG_MIN && size <= MEM_BIG_MAX) {
        if (p->big)
            mem_base.xFree(p->big);
        p->big = b;
    } else if (b) {
        mem_base.xFree(b);
    }
}

static int mem_roundup(int n)
{
    int c = mem_class(n);
    return c >= 0 ? (c + 1) * MEM_CLASS : mem_base.xRoundup(n);
}

void cm_store_global_init(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if (!mem_base.xMalloc && sqlite3_config(SQLITE_CONFIG_GETMALLOC, &mem_base) == SQLITE_OK) {
        sqlite3_mem_methods m = mem_base;
        m.xMalloc = mem_malloc;
        m.xFree = mem_free;
        m.xRoundup = mem_roundup;
        if (sqlite3_config(SQLITE_CONFIG_MALLOC, &m) != SQLITE_OK)
            memset(&mem_base, 0, sizeof(mem_base));
    }
}

void cm_store_opts_init(cm_store_opts *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->synchronous = CM_SYNC_FULL;
    opts->busy_timeout_ms = 5000;
}

int cm_sync_parse(const char *s)
{
    static const char *names[] = {"off", "normal", "full", "extra"};
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

sqlite3 *cm_store_db(cm_store *store)
{
    return store->db;
}

int cm_store_schema_version(cm_store *store)
{
    return store->schema_version;
}

static void sync_fail(cm_store *store, const char *why);
static int sync_failed(cm_syncer *sy, int code, cm_err *err);

/* An fsync that failed inside SQLite (a synced commit's WAL sync, a
** checkpoint's): the same as the sync thread's failure (store.h). */
static bool sqlite_sync_failed(int xrc)
{
    return xrc == SQLITE_IOERR_FSYNC || xrc == SQLITE_IOERR_DIR_FSYNC;
}

int cm_store_error(cm_store *store, cm_err *err, const char *what)
{
    int rc = sqlite3_extended_errcode(store->db);
    int code = CM_EDB;
    if (store->writer && sqlite_sync_failed(rc)) {
        char why[512];
        snprintf(why, sizeof(why), "%s: %s: an fsync inside SQLite failed: %s", store->path, what,
                 sqlite3_errmsg(store->db));
        sync_fail(store, why);
        return sync_failed(&store->sy, CM_EINDOUBT, err);
    }
    if (rc == SQLITE_AUTH && store->refused) {
        store->refused = false;
        return cm_err_set(err, CM_EINVAL,
                          "%s: %s: PRAGMA wal_autocheckpoint cannot be set on the store's "
                          "writer: it would replace the store's WAL hook, which counts deferred "
                          "commits and runs checkpoints (use cm_store_opts.checkpoint_pages)",
                          store->path, what);
    }
    if ((rc & 0xff) == SQLITE_NOTADB || (rc & 0xff) == SQLITE_CORRUPT)
        code = CM_ENOTCM;
    else if ((rc & 0xff) == SQLITE_READONLY || (rc & 0xff) == SQLITE_PERM ||
             (rc & 0xff) == SQLITE_CANTOPEN)
        return cm_err_set(err, CM_EPERM,
                          "%s: %s: %s (the data directory must be writable: SQLite keeps its "
                          "-wal and -shm files beside the database)",
                          store->path, what, sqlite3_errmsg(store->db));
    else if ((rc & 0xff) == SQLITE_CONSTRAINT)
        code = rc == SQLITE_CONSTRAINT_FOREIGNKEY                                     ? CM_EREF
               : rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE ? CM_EEXISTS
                                                                                      : CM_EINVAL;
    else if ((rc & 0xff) == SQLITE_NOMEM)
        code = CM_ENOMEM;
    return cm_err_set(err, code, "%s: %s: %s", store->path, what, sqlite3_errmsg(store->db));
}

/* The statement setting each cm_sync level, by level. */
static const char *const sync_sql[] = {"PRAGMA synchronous=OFF", "PRAGMA synchronous=NORMAL",
                                       "PRAGMA synchronous=FULL", "PRAGMA synchronous=EXTRA"};

int cm_store_exec(cm_store *store, const char *sql, cm_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(store->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = cm_store_error(store, err, "exec");
        sqlite3_free(msg);
        return rc;
    }
    return 0;
}

static uint32_t sql_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static sqlite3_stmt *prepare(cm_store *store, const char *sql, bool clear, cm_err *err)
{
    uint8_t *hint = &store->hint[((uintptr_t)sql >> 3) % CM_STMT_SLOTS];
    cm_stmt_slot *known = &store->stmts[*hint];
    if (known->sql == sql) {
        sqlite3_reset(known->stmt);
        if (clear)
            sqlite3_clear_bindings(known->stmt);
        return known->stmt;
    }
    uint32_t h = sql_hash(sql);
    for (uint32_t i = 0; i < CM_STMT_SLOTS; i++) {
        cm_stmt_slot *slot = &store->stmts[(h + i) % CM_STMT_SLOTS];
        if (slot->sql && (slot->sql == sql || strcmp(slot->sql, sql) == 0)) {
            sqlite3_reset(slot->stmt);
            if (clear)
                sqlite3_clear_bindings(slot->stmt);
            *hint = (uint8_t)((h + i) % CM_STMT_SLOTS);
            return slot->stmt;
        }
        if (!slot->sql) {
            if (sqlite3_prepare_v3(store->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &slot->stmt,
                                   NULL) != SQLITE_OK) {
                cm_store_error(store, err, "prepare");
                slot->stmt = NULL;
                return NULL;
            }
            slot->sql = sql;
            return slot->stmt;
        }
    }
    cm_err_set(err, CM_ENOMEM, "statement cache full (%d statements)", CM_STMT_SLOTS);
    return NULL;
}

sqlite3_stmt *cm_store_prepare(cm_store *store, const char *sql, cm_err *err)
{
    return prepare(store, sql, true, err);
}

sqlite3_stmt *cm_store_prepare_bound(cm_store *store, const char *sql, cm_err *err)
{
    return prepare(store, sql, false, err);
}

bool cm_store_in_tx(cm_store *store)
{
    return !sqlite3_get_autocommit(store->db);
}

void cm_store_on_nested_write(cm_store *store, cm_store_nested_fn fn, void *ud)
{
    store->nested_fn = fn;
    store->nested_ud = ud;
}

int cm_store_nested_write(cm_store *store, cm_err *err)
{
    cm_store_nested_fn fn = store->nested_fn;
    store->nested_fn = NULL;
    return fn ? fn(store->nested_ud, err) : 0;
}

bool cm_store_tx_lost(cm_store *store)
{
    return store->tx_held && sqlite3_get_autocommit(store->db);
}

/* ---- deferred commits' syncs -------------------------------------------- */

static void sync_notify(cm_syncer *sy)
{
    if (sy->notify)
        sy->notify(sy->notify_ud);
}

/* An fsync of the store's files failed outside the sync thread (inside
** SQLite's synced commit, a checkpoint): never retried, the same as the
** thread's failure: the watermark stops, waiters get CM_EIO, writes are
** refused, the listener hears. The first failure's why is kept. Any thread. */
static void sync_fail(cm_store *store, const char *why)
{
    cm_syncer *sy = &store->sy;
    pthread_mutex_lock(&sy->mu);
    if (!sy->failed) {
        sy->failed = EIO;
        snprintf(sy->why, sizeof(sy->why), "%s", why);
    }
    pthread_cond_broadcast(&sy->cv);
    sync_notify(sy);
    pthread_mutex_unlock(&sy->mu);
}

/* Sync the WAL once: the inode opened must still be the WAL's (SQLite never
** replaces or deletes it while the writer's connection is open; a check that
** costs a stat against a sync of milliseconds). 0 or an errno. */
static int sync_once(cm_syncer *sy, int fd, char *why, size_t whysz)
{
    struct stat sb;
    if (stat(sy->wal_path, &sb) != 0 || sb.st_dev != sy->dev || sb.st_ino != sy->ino) {
        snprintf(why, whysz, "%s: the WAL file was replaced or removed under the store",
                 sy->wal_path);
        return EIO;
    }
    int rc = sy->fn ? sy->fn(sy->fn_ud, fd) : (fdatasync(fd) == 0 ? 0 : errno);
    if (rc != 0)
        snprintf(why, whysz, "%s: fdatasync failed: %s", sy->wal_path, strerror(rc));
    return rc;
}

/* Whether a sync begun before ticket is still in flight. Under mu. */
static bool sync_earlier_running(const cm_syncer *sy, uint64_t ticket)
{
    for (int i = 0; i < sy->nthreads; i++)
        if (sy->running[i] && sy->running[i] < ticket)
            return true;
    return false;
}

/* One of the sync threads (the slot-th). A commit made while a sync is in
** flight need not wait for it: another thread syncs at once, and its
** fdatasync covers every frame written before it began, the earlier
** commits' too, so whichever sync ends first moves the watermark to what it
** covers. More commits than threads share the next sync. A failure is
** taken in only after every sync begun before it has ended, so the
** watermark and the failure come in the order of a single thread. */
static void *sync_main(void *arg)
{
    cm_syncer *sy = ((struct sync_arg *)arg)->sy;
    int slot = ((struct sync_arg *)arg)->slot;
    char why[sizeof(sy->why)];
    pthread_mutex_lock(&sy->mu);
    for (;;) {
        /* a synced commit may have moved the watermark past what was asked */
        while (!sy->stop && (sy->failed || sy->want <= sy->asked || sy->want <= sy->synced))
            pthread_cond_wait(&sy->cv, &sy->mu);
        if (sy->stop)
            break;
        /* every frame of commits up to want is written: one sync covers them all */
        uint64_t target = sy->want, ticket = ++sy->tickets;
        sy->asked = target;
        sy->running[slot] = ticket;
        pthread_mutex_unlock(&sy->mu);
        int64_t start = cm_mono_ns();
        int rc = sync_once(sy, sy->fd[slot], why, sizeof(why));
        int64_t end = cm_mono_ns();
        pthread_mutex_lock(&sy->mu);
        while (rc != 0 && sync_earlier_running(sy, ticket))
            pthread_cond_wait(&sy->cv, &sy->mu);
        sy->running[slot] = 0;
        if (rc != 0) {
            if (!sy->failed) {
                sy->failed = rc;
                memcpy(sy->why, why, sizeof(why));
            }
        } else if (!sy->failed && target > sy->synced) {
            /* once a sync failed, a later one's 0 proves nothing of the
            ** failed one's frames: Linux tells a writeback error once and
            ** drops the pages clean, so the watermark stays */
            sy->synced = target;
            unsigned k = sy->nspans++ % CM_SYNC_SPANS;
            sy->spans[k].target = target;
            sy->spans[k].start_ns = start;
            sy->spans[k].end_ns = end;
        }
        pthread_cond_broadcast(&sy->cv);
        sync_notify(sy);
    }
    pthread_mutex_unlock(&sy->mu);
    return NULL;
}

/* The WAL file SQLite uses for db's main database: beside the file a
** symlinked path names, not "<path>-wal". NULL if it names none. */
static const char *wal_file_of(sqlite3 *db)
{
    const char *main = sqlite3_db_filename(db, "main");
    const char *wal = main && *main ? sqlite3_filename_wal(main) : NULL;
    return wal && *wal ? wal : NULL;
}

int cm_store_sync_wal_file(sqlite3 *db, int (*fn)(void *ud, int fd), void *ud, const char **path)
{
    *path = wal_file_of(db);
    if (!*path)
        return ENOENT;
    int fd = open(*path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : errno;
    int rc = fn ? fn(ud, fd) : (fdatasync(fd) == 0 ? 0 : errno);
    close(fd);
    return rc;
}

static void sync_close_fds(cm_syncer *sy)
{
    for (int i = 0; i < CM_SYNC_THREADS; i++) {
        if (sy->fd[i] >= 0)
            close(sy->fd[i]);
        sy->fd[i] = -1;
    }
}

/* The threads and their fds of the WAL, on the first deferred commit; false
** if none can be had (deferred commits then commit synced). */
static bool sync_start(cm_store *store)
{
    cm_syncer *sy = &store->sy;
    if (sy->started || sy->unavailable)
        return sy->started;
    sy->unavailable = true;
    struct stat sb;
    const char *wal = wal_file_of(store->db);
    if (!wal || !(sy->wal_path = strdup(wal)))
        return false;
    /* the writer's connection holds the WAL open from its first read on */
    for (int i = 0; i < CM_SYNC_THREADS; i++) {
        sy->fd[i] = open(sy->wal_path, O_RDONLY | O_CLOEXEC);
        if (sy->fd[i] < 0 || fstat(sy->fd[i], &sb) != 0 || !S_ISREG(sb.st_mode) ||
            (i > 0 && (sb.st_dev != sy->dev || sb.st_ino != sy->ino)))
            goto fail;
        sy->dev = sb.st_dev;
        sy->ino = sb.st_ino;
    }
    sigset_t all, old;
    sigfillset(&all); /* signals stay with the threads that expect them (the loop's) */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < CM_SYNC_THREADS; i++) {
        sy->args[i].sy = sy;
        sy->args[i].slot = i;
        if (pthread_create(&sy->thread[i], NULL, sync_main, &sy->args[i]) != 0)
            break; /* fewer threads: the later commits share the next sync */
        sy->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (sy->nthreads == 0)
        goto fail;
    sy->unavailable = false;
    sy->started = true;
    return true;
fail:
    sync_close_fds(sy);
    return false;
}

/* After a commit that wrote: a deferred one asks the thread for a sync, a
** synced one moves the watermark (its WAL sync covered every earlier frame). */
static void sync_after_commit(cm_store *store, bool deferred)
{
    cm_syncer *sy = &store->sy;
    store->commits++;
    pthread_mutex_lock(&sy->mu);
    if (deferred) {
        sy->want = store->commits;
        pthread_cond_broadcast(&sy->cv);
    } else if (store->commits > sy->synced && !sy->failed) {
        sy->synced = store->commits;
        pthread_cond_broadcast(&sy->cv);
        sync_notify(sy);
    }
    pthread_mutex_unlock(&sy->mu);
}

static void sync_init(cm_store *store)
{
    for (int i = 0; i < CM_SYNC_THREADS; i++)
        store->sy.fd[i] = -1;
    pthread_mutex_init(&store->sy.mu, NULL);
    pthread_cond_init(&store->sy.cv, NULL);
    store->writer = true;
}

/* Finish what was asked (its waiters are gone; a close wants it durable),
** stop the thread, close the fd. */
static void sync_close(cm_store *store)
{
    cm_syncer *sy = &store->sy;
    if (!store->writer)
        return;
    if (sy->started) {
        cm_err ignored;
        cm_store_sync_wait(store, store->commits, &ignored);
        pthread_mutex_lock(&sy->mu);
        sy->stop = true;
        pthread_cond_broadcast(&sy->cv);
        pthread_mutex_unlock(&sy->mu);
        for (int i = 0; i < sy->nthreads; i++)
            pthread_join(sy->thread[i], NULL);
    }
    sync_close_fds(sy);
    free(sy->wal_path);
    pthread_cond_destroy(&sy->cv);
    pthread_mutex_destroy(&sy->mu);
    store->writer = false;
}

/* At open: a WAL left by a process killed between a deferred commit and its
** sync holds that commit in the page cache only, and the counter starts with
** every commit durable; sync it before anything reads it (the test hook
** too). No WAL: a clean close left nothing. */
static int sync_recovered(cm_store *store, cm_err *err)
{
    cm_syncer *sy = &store->sy;
    const char *path;
    if (store->sync < CM_SYNC_FULL)
        return 0;
    int rc = cm_store_sync_wal_file(store->db, sy->fn, sy->fn_ud, &path);
    if (rc == 0)
        return 0;
    if (!path)
        return cm_err_set(err, CM_EIO, "%s: SQLite names no WAL file for it", store->path);
    return cm_err_set(err, CM_EIO, "%s: fdatasync failed: %s", path, strerror(rc));
}

/* code: CM_EIO for what the failure refuses (a write not begun), or
** CM_EINDOUBT for a commit it leaves not known durable: the commit reached
** the WAL, so a restart may or may not find it there. */
static int sync_failed(cm_syncer *sy, int code, cm_err *err)
{
    return cm_err_set(err, code,
                      "%s; nothing committed since the last good sync is known durable, so "
                      "the store takes no more writes (restart to recover from the WAL)",
                      sy->why);
}

int cm_store_sync_status(cm_store *store, cm_err *err)
{
    cm_syncer *sy = &store->sy;
    if (!store->writer)
        return 0;
    pthread_mutex_lock(&sy->mu);
    int rc = sy->failed ? sync_failed(sy, CM_EIO, err) : 0;
    pthread_mutex_unlock(&sy->mu);
    return rc;
}

uint64_t cm_store_commit_seq(cm_store *store)
{
    return store->commits;
}

uint64_t cm_store_synced_seq(cm_store *store)
{
    if (!store->writer)
        return 0;
    pthread_mutex_lock(&store->sy.mu);
    uint64_t v = store->sy.synced;
    pthread_mutex_unlock(&store->sy.mu);
    return v;
}

int cm_store_sync_wait(cm_store *store, uint64_t seq, cm_err *err)
{
    cm_syncer *sy = &store->sy;
    if (!store->writer)
        return 0;
    pthread_mutex_lock(&sy->mu);
    /* every number above the watermark was asked of the thread at its commit */
    while (!sy->failed && sy->synced < seq && sy->started)
        pthread_cond_wait(&sy->cv, &sy->mu);
    /* a commit synced before the failure is durable all the same */
    int rc = sy->failed && sy->synced < seq ? sync_failed(sy, CM_EINDOUBT, err) : 0;
    pthread_mutex_unlock(&sy->mu);
    return rc;
}

int cm_store_sync_span(cm_store *store, uint64_t seq, int64_t *start_ns, int64_t *end_ns)
{
    cm_syncer *sy = &store->sy;
    int rc = -1;
    if (!store->writer)
        return rc;
    pthread_mutex_lock(&sy->mu);
    unsigned n = sy->nspans < CM_SYNC_SPANS ? sy->nspans : CM_SYNC_SPANS;
    for (unsigned i = 0; i < n; i++) { /* oldest first: the first to reach seq covered it */
        unsigned k = (sy->nspans - n + i) % CM_SYNC_SPANS;
        if (sy->spans[k].target >= seq) {
            *start_ns = sy->spans[k].start_ns;
            *end_ns = sy->spans[k].end_ns;
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&sy->mu);
    return rc;
}

void cm_store_on_synced(cm_store *store, void (*fn)(void *ud), void *ud)
{
    if (!store->writer)
        return;
    pthread_mutex_lock(&store->sy.mu);
    store->sy.notify = fn;
    store->sy.notify_ud = ud;
    pthread_mutex_unlock(&store->sy.mu);
}

int64_t cm_store_rowmark_update(cm_store *store, cm_store_rowmark *m, int64_t max_key)
{
    uint64_t made = cm_store_commit_seq(store), durable = cm_store_synced_seq(store);
    if (made <= durable) { /* every commit is durable: every row there is */
        m->n = 0;
        if (max_key > m->durable)
            m->durable = max_key;
        return m->durable;
    }
    int k = 0;
    while (k < m->n && m->commit[k] <= durable) {
        if (m->row[k] > m->durable)
            m->durable = m->row[k];
        k++;
    }
    memmove(m->commit, m->commit + k, (size_t)(m->n - k) * sizeof(m->commit[0]));
    memmove(m->row, m->row + k, (size_t)(m->n - k) * sizeof(m->row[0]));
    m->n -= k;
    if (max_key > m->durable) {
        if (m->n > 0 && m->commit[m->n - 1] == made)
            m->row[m->n - 1] = max_key;
        else if (m->n < CM_STORE_ROWMARK_MAX) {
            m->commit[m->n] = made;
            m->row[m->n++] = max_key;
        } else { /* full: the last entry waits for the later commit, which covers it */
            m->commit[m->n - 1] = made;
            m->row[m->n - 1] = max_key;
        }
    }
    return m->durable;
}

/* ---- transactions ------------------------------------------------------ */

static int tx_begin(cm_store *store, cm_err *err)
{
    int rc = cm_store_sync_status(store, err); /* no writes once a sync failed */
    if (rc != 0)
        return rc;
    rc = cm_store_exec(store, "BEGIN IMMEDIATE", err);
    if (rc == CM_EDB && sqlite3_errcode(store->db) == SQLITE_BUSY)
        rc = cm_err_set(err, CM_EDB, "%s: another caremesh process holds the write lock",
                        store->path);
    store->tx_held = rc == 0;
    return rc;
}

/* Set the connection's synchronous level: a PRAGMA prepared anew each time
** (SQLite applies it while preparing, so a kept statement would not). */
static int pragma_run(cm_store *store, const char *sql, cm_err *err)
{
    int rc = cm_store_exec(store, sql, err);
    return rc == 0 ? 0 : cm_err_prefix(err, "synchronous");
}

/* Back to the level the store was opened with after a nosync transaction,
** outside any transaction (SQLite refuses the change inside one). While it
** fails, store->nosync stays set and cm_store_begin tries again first. */
static int nosync_end(cm_store *store, cm_err *err)
{
    if (!store->nosync || cm_store_in_tx(store))
        return 0;
    int rc = pragma_run(store, sync_sql[store->sync], err);
    if (rc == 0)
        store->nosync = false;
    return rc;
}

int cm_store_begin(cm_store *store, cm_err *err)
{
    int rc = nosync_end(store, err); /* never a synced transaction at a lower level */
    if (rc != 0)
        return rc;
    return tx_begin(store, err);
}

int cm_store_begin_nosync(cm_store *store, cm_err *err)
{
    int rc;
    if (store->sync >= CM_SYNC_FULL && !store->nosync) {
        if ((rc = pragma_run(store, "PRAGMA synchronous=NORMAL", err)) != 0)
            return rc;
        store->nosync = true;
    }
    if ((rc = tx_begin(store, err)) != 0) {
        cm_err ignored;
        nosync_end(store, &ignored);
    }
    return rc;
}

int cm_store_commit(cm_store *store, cm_err *err)
{
    int rc;
    store->wrote = false;
    if (cm_store_tx_lost(store))
        rc = cm_err_set(err, CM_EDB,
                        "%s: the transaction was rolled back by an earlier error; "
                        "nothing of it is kept",
                        store->path);
    else
        rc = cm_store_exec(store, "COMMIT", err);
    if (rc != 0 && cm_store_in_tx(store))
        cm_store_rollback(store);
    /* a commit that wrote nothing synced nothing and needs no sync */
    if (rc == 0 && store->writer && store->wrote && (store->deferred || !store->nosync))
        sync_after_commit(store, store->deferred && store->sync >= CM_SYNC_FULL);
    store->deferred = false;
    store->tx_held = false;
    cm_err ignored; /* cm_store_begin tries again */
    nosync_end(store, &ignored);
    return rc;
}

int cm_store_begin_deferred(cm_store *store, cm_err *err)
{
    /* no thread for the syncs: the transaction commits synced, as begin's */
    if (store->sync >= CM_SYNC_FULL && !sync_start(store))
        return cm_store_begin(store, err);
    int rc = cm_store_begin_nosync(store, err);
    store->deferred = rc == 0;
    return rc;
}

void cm_store_rollback(cm_store *store)
{
    if (cm_store_in_tx(store))
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
    store->deferred = false;
    store->tx_held = false;
    cm_err ignored; /* cm_store_begin tries again */
    nosync_end(store, &ignored);
}

int cm_store_meta_set(cm_store *store, const char *key, const char *value, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(store,
                                        "INSERT INTO node_meta(key, value) VALUES (?1, ?2) "
                                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                        err);
    if (!st)
        return err ? err->code : CM_EDB;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : cm_store_error(store, err, "node_meta");
    sqlite3_reset(st);
    return rc;
}

char *cm_store_meta_get(cm_store *store, const char *key, cm_err *err)
{
    char *out = NULL;
    sqlite3_stmt *st = cm_store_prepare(store, "SELECT value FROM node_meta WHERE key = ?1", err);
    if (!st)
        return NULL;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out = strdup((const char *)sqlite3_column_text(st, 0));
        if (!out)
            cm_err_set(err, CM_ENOMEM, "node_meta %s", key);
    } else if (rc == SQLITE_DONE) {
        cm_err_set(err, CM_ENOTFOUND, "node metadata '%s' is not set", key);
    } else {
        cm_store_error(store, err, "node_meta");
    }
    sqlite3_reset(st);
    return out;
}

/* Make sure the file exists with mode 0600 before SQLite opens it. */
static int ensure_file(const char *path, bool create, cm_err *err)
{
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode))
            return cm_err_set(err, CM_ENOTCM, "%s: not a regular file", path);
        return 0;
    }
    if (errno != ENOENT)
        return cm_err_set(err, CM_EIO, "%s: %s", path, strerror(errno));
    if (!create)
        return cm_err_set(err, CM_ENOTFOUND, "%s: no database here (run 'caremesh init' first)",
                          path);
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return cm_err_set(err, errno == EACCES || errno == EROFS ? CM_EPERM : CM_EIO,
                          "%s: cannot create database: %s", path, strerror(errno));
    close(fd);
    return 0;
}

static int query_int(cm_store *store, const char *sql, int *out, cm_err *err)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(store->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        *out = 0;
        rc = 0;
    } else {
        rc = cm_store_error(store, err, sql);
    }
    sqlite3_finalize(st);
    return rc;
}

/* Recognize our own database; adopt an empty one when creating; refuse anything else. */
static int check_identity(cm_store *store, bool create, cm_err *err)
{
    int app_id = 0, ntables = 0, rc;
    if ((rc = query_int(store, "PRAGMA application_id", &app_id, err)) != 0)
        return rc == CM_ENOTCM ? cm_err_prefix(err, "not a caremesh database (corrupt or foreign "
                                                    "file)")
                               : rc;
    if ((rc = query_int(store, "SELECT count(*) FROM sqlite_schema", &ntables, err)) != 0)
        return rc;
    if ((uint32_t)app_id == CM_APPLICATION_ID)
        return 0;
    if (app_id == 0 && ntables == 0 && !create)
        return cm_err_set(err, CM_ENOTCM,
                          "%s: an empty database, not a caremesh one (an interrupted init? "
                          "remove the data directory and run 'caremesh init' again)",
                          store->path);
    if (app_id != 0 || ntables != 0)
        return cm_err_set(err, CM_ENOTCM,
                          "%s: not a caremesh database (a SQLite database of another "
                          "application, application_id 0x%08x, %d schema objects)",
                          store->path, (unsigned)app_id, ntables);
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA application_id = %d", (int)CM_APPLICATION_ID);
    return cm_store_exec(store, sql, err);
}

/* Patient data: a caremesh database others can read is refused. */
static int check_private(cm_store *store, cm_err *err)
{
    struct stat sb;
    if (stat(store->path, &sb) == 0 && (sb.st_mode & 077))
        return cm_err_set(err, CM_EPERM,
                          "%s: permissions %04o let other users read patient data; the "
                          "database must be 0600 (chmod 600 it)",
                          store->path, (unsigned)(sb.st_mode & 0777));
    return 0;
}

static int set_pragmas(cm_store *store, const cm_store_opts *opts, cm_err *err)
{
    int rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(store->db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return cm_store_error(store, err, "journal_mode=WAL");
    }
    bool wal = strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if (!wal)
        return cm_err_set(err, CM_EDB, "%s: cannot switch to WAL journal mode", store->path);
    if ((rc = cm_store_exec(store, "PRAGMA foreign_keys=ON", err)) != 0)
        return rc;
    if (opts->synchronous < CM_SYNC_OFF || opts->synchronous > CM_SYNC_EXTRA)
        return cm_err_set(err, CM_EINVAL, "synchronous level %d out of range",
                          (int)opts->synchronous);
    if ((rc = cm_store_exec(store, sync_sql[opts->synchronous], err)) != 0)
        return rc;
    sqlite3_busy_timeout(store->db, opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : 5000);
    return 0;
}

/* ---- checkpoints off the commit path ---------------------------------- */

/* An fsync of a checkpoint failed: the store stops (sync_fail). */
static void ckpt_sync_failed(cm_store *store, const char *what, const char *msg)
{
    char why[512];
    snprintf(why, sizeof(why), "%s: %s failed: %s", store->path, what, msg);
    sync_fail(store, why);
}

static void *ckpt_main(void *arg)
{
    cm_ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->busy && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop)
            break;
        pthread_mutex_unlock(&c->mu);
        int log = 0, copied = 0;
        int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
        /* SQLite syncs the database file only after a checkpoint that copied
        ** the whole WAL, which is the writer's (ckpt_hook): without this sync
        ** the writer's would flush every page copied here since the last one,
        ** megabytes, on the loop thread. */
        bool partial = rc == SQLITE_OK && copied > 0 && copied < log;
        bool want = partial && c->dbfile && c->sync > CM_SYNC_OFF;
        int src = want ? c->dbfile->pMethods->xSync(c->dbfile, SQLITE_SYNC_NORMAL) : SQLITE_OK;
        bool synced = want && src == SQLITE_OK;
        /* SQLite counts the copied frames as in the database whether or not
        ** this sync worked, and a failed sync is never retried (store.h) */
        if (want && !synced)
            ckpt_sync_failed(c->store, "the database file's sync after a checkpoint",
                             sqlite3_errstr(src));
        else if (rc != SQLITE_OK && sqlite_sync_failed(sqlite3_extended_errcode(c->db)))
            ckpt_sync_failed(c->store, "a checkpoint's fsync", sqlite3_errmsg(c->db));
        pthread_mutex_lock(&c->mu);
        c->stats.partial += partial;
        c->stats.db_syncs += synced;
        if (rc == SQLITE_OK) {
            /* a WAL that started over meanwhile is not the one copied */
            c->done_to = log <= c->last_wal ? copied : 0;
            c->stats.background++;
        }
        c->busy = false;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* The thread and its connection, on first need; false if they cannot be had. */
static bool ckpt_start(cm_store *store, cm_ckpt *c)
{
    if (c->started || c->failed)
        return c->started;
    c->failed = true;
    sigset_t all, old;
    int rc = -1;
    if (sqlite3_open_v2(store->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) ==
            SQLITE_OK &&
        sqlite3_exec(c->db, sync_sql[c->sync], NULL, NULL, NULL) == SQLITE_OK) {
        /* signals stay with the threads that expect them (the loop's) */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (sqlite3_file_control(c->db, "main", SQLITE_FCNTL_FILE_POINTER, &c->dbfile) !=
                SQLITE_OK ||
            !c->dbfile->pMethods)
            c->dbfile = NULL; /* none: SQLite's sync alone */
        rc = pthread_create(&c->thread, NULL, ckpt_main, c);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rc != 0) {
        c->dbfile = NULL;
        sqlite3_close(c->db);
        c->db = NULL;
        return false;
    }
    c->failed = false;
    c->started = true;
    return true;
}

/* A checkpoint by the writer itself, after its commit. */
static void ckpt_inline(cm_store *store, cm_ckpt *c)
{
    if (sqlite3_wal_checkpoint_v2(store->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) ==
        SQLITE_OK) {
        pthread_mutex_lock(&c->mu);
        c->stats.inline_runs++;
        c->done_to = 0;
        pthread_mutex_unlock(&c->mu);
    } else if (sqlite_sync_failed(sqlite3_extended_errcode(store->db))) {
        ckpt_sync_failed(store, "a checkpoint's fsync", sqlite3_errmsg(store->db));
    }
}

/* After each commit of the writer, with the WAL's size in pages. */
static int ckpt_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    cm_store *store = arg;
    cm_ckpt *c = store->ckpt;
    store->wrote = true;
    if (!c) { /* SQLite's own checkpoints, as its default hook runs them: what the
              ** checkpoint returns is not the commit's (it is done) */
        if (pages >= 1000 && sqlite3_wal_checkpoint(db, name) != SQLITE_OK &&
            sqlite_sync_failed(sqlite3_extended_errcode(db)))
            ckpt_sync_failed(store, "a checkpoint's fsync", sqlite3_errmsg(db));
        return SQLITE_OK;
    }
    pthread_mutex_lock(&c->mu);
    if (pages > c->stats.max_wal_pages)
        c->stats.max_wal_pages = pages;
    if (pages < c->last_wal && !c->busy)
        c->done_to = 0; /* the WAL started over: an earlier copy says nothing now */
    c->last_wal = pages;
    if (pages < c->start) {
        pthread_mutex_unlock(&c->mu);
        return SQLITE_OK;
    }
    if (!ckpt_start(store, c)) {
        pthread_mutex_unlock(&c->mu);
        ckpt_inline(store, c);
        return SQLITE_OK;
    }
    if (pages >= c->bound)
        while (c->busy) /* the bound: wait for the thread, then copy the rest here */
            pthread_cond_wait(&c->cv, &c->mu);
    /* Once the WAL is large, the writer copies the last few pages itself when
    ** the thread has copied the rest (so the whole WAL is in the database and
    ** the next transaction starts it over); at the bound, whatever is left. */
    bool finish = !c->busy && (pages >= c->bound || (pages >= c->restart && c->done_to > 0 &&
                                                     pages - c->done_to <= c->step));
    if (!finish && !c->busy && pages - c->done_to >= c->step) {
        c->busy = true;
        pthread_cond_signal(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    if (finish)
        ckpt_inline(store, c);
    return SQLITE_OK;
}

/* PRAGMA wal_autocheckpoint = N would replace the store's WAL hook with
** SQLite's own (sqlite3_wal_autocheckpoint installs one), and deferred
** commits would go uncounted: setting it is refused (cm_store_error names
** it); reading it is harmless. */
static int store_authorize(void *ud, int action, const char *a, const char *b, const char *db,
                           const char *trigger)
{
    cm_store *store = ud;
    (void)db;
    (void)trigger;
    if (action == SQLITE_PRAGMA && a && b && sqlite3_stricmp(a, "wal_autocheckpoint") == 0) {
        store->refused = true;
        return SQLITE_DENY;
    }
    return SQLITE_OK;
}

static int ckpt_setup(cm_store *store, const cm_store_opts *opts, cm_err *err)
{
    /* the hook also tells commits that wrote (sync_after_commit) */
    sqlite3_wal_hook(store->db, ckpt_hook, store); /* replaces SQLite's autocheckpoint */
    sqlite3_set_authorizer(store->db, store_authorize, store); /* ... and keeps it so */
    if (opts->checkpoint_pages < 0)
        return 0;
    cm_ckpt *c = calloc(1, sizeof(*c));
    if (!c)
        return cm_err_set(err, CM_ENOMEM, "store: out of memory");
    c->start = opts->checkpoint_pages > 0 ? opts->checkpoint_pages : 1000;
    c->step = c->start / 4 > 0 ? c->start / 4 : 1;
    c->restart = c->start * 4;
    c->bound = c->start * 8;
    c->sync = (int)opts->synchronous;
    c->store = store;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    store->ckpt = c;
    return 0;
}

/* Stop the thread and close its connection (before the writer's, whose close
** then checkpoints what is left and removes the WAL). */
static void ckpt_close(cm_store *store)
{
    cm_ckpt *c = store->ckpt;
    if (store->db)
        sqlite3_wal_hook(store->db, NULL, NULL);
    if (!c)
        return;
    if (c->started) {
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thread, NULL);
        sqlite3_close(c->db);
    }
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
    store->ckpt = NULL;
}

void cm_store_ckpt_stats_get(cm_store *store, cm_store_ckpt_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!store->ckpt)
        return;
    pthread_mutex_lock(&store->ckpt->mu);
    *out = store->ckpt->stats;
    pthread_mutex_unlock(&store->ckpt->mu);
}

/* ---- the writer's WAL writes, gathered ---------------------------------- */

/* SQLite writes each WAL frame as two writes (its 24-byte header, then the
** page), so a commit of k frames costs the loop thread 2k pwrite64 calls.
** The writer's connection opens its files through "caremesh-wal", a shim
** over "unix" that forwards every call except the WAL's xWrite: while
** SQLite appends frames, they are copied to a buffer, and the buffer goes
** out as one write (the unix file's xWrite: one pwrite64, retried on a
** short write) at the first of:
**
**   - the commit frame's end: SQLite marks a transaction's last frame
**     by a nonzero "database size after commit" in its header (bytes 4-7),
**     and writes the header, then the page. Frames are found by their
**     place in the file, never by the size of a write (gather_frame): on a
**     device without powersafe overwrite SQLite pads a synced commit to
**     the sector's end with copies of the commit frame and splits the
**     write that crosses it, so a piece of a page may be 24 bytes long.
**     The write that ends the commit frame returns the gathered write's
**     result, so a failed write fails the
**     commit as SQLite's own failed pwrite would: wal.c's walFrames
**     returns the error before walIndexWriteHdr publishes the new
**     mxFrame, the transaction rolls back, and the frames are past any
**     published mxFrame, which every reader (this process or another,
**     through the -shm) reads up to and never past;
**   - anything that reads, measures, truncates or syncs the WAL (xRead,
**     xFileSize, xTruncate, xSync, xFileControl, xClose), a write that
**     does not follow the buffer, a buffer past CM_GATHER_MAX; a write
**     of bytes already written (SQLite rewriting a frame's page of its
**     transaction, then the frames' checksums from there to the commit
**     frame) is not gathered at all: it goes straight out after the
**     buffer, and a failure fails the commit;
**   - the database file's xShmBarrier, xShmLock and xShmUnmap: walIndex-
**     WriteHdr calls xShmBarrier between its two copies of the new header
**     and readers take a header only when both copies agree; the write
**     lock is released through xShmLock. By the first rule nothing of a
**     commit is still gathered there; a transaction's earlier frames
**     (SQLite spills pages of a large transaction to the WAL before its
**     commit, unpublished) may be, and go out first.
**
** So no reader can see a frame before its bytes are in the file, and a
** commit returns only after its bytes are: the sync thread's fdatasync,
** asked for after the commit returned (sync_after_commit), covers them. A
** gathered write that fails where no error can be returned (xShmBarrier,
** xShmUnmap, an xShmLock that unlocks: only unpublished frames) leaves the WAL failed: every later
** read, write, sync or size of it returns SQLITE_IOERR_WRITE, so the
** transaction cannot commit and the store takes no writes. Other
** connections (the checkpoint thread's, `caremesh backup`, other
** processes) use "unix" and share the files, locks and -shm with it. */

/* Bytes gathered at most before they go out: one write of the unix VFS
** (its unixWrite passes at most 128 KiB - 1 bytes to a pwrite64 and fails
** a longer write as a short one), 30 frames of 4 KiB pages */
#define CM_GATHER_MAX (124 * 1024)
#define WAL_HDR       32 /* the WAL's header; frames follow it */
#define WAL_FRAME_HDR 24

typedef struct gfile gfile;
struct gfile {
    sqlite3_file base; /* pMethods: gather_methods; NULL if the open failed */
    sqlite3_file *real;
    gfile *wal;            /* the database file: its WAL while open (and gathering) */
    gfile *db;             /* the WAL: its database file */
    cm_gather_vfs *gv;     /* the VFS that opened it */
    bool is_wal;           /* opened with SQLITE_OPEN_WAL: its writes are gathered */
    uint32_t page;         /* the WAL's page size (its header's bytes 8-11); 0: not known */
    unsigned char mark[4]; /* bytes 4-7 of the header of the frame being written:
                           ** nonzero on a commit frame */
    int failed;            /* a gathered write that failed unreported: the WAL is failed */
    unsigned char *buf;
    size_t len, cap;
    sqlite3_int64 off;       /* the file offset of buf[0] */
    sqlite3_int64 end;       /* past the last byte SQLite appended (0 from a new WAL header) */
    uint64_t writes, frames; /* gathered writes made, frames they held */
};

static const sqlite3_io_methods gather_methods;

#define REAL(f) (((gfile *)(f))->real)

/* The gathered bytes to the file, one write. */
static int gather_flush(gfile *g)
{
    if (g->failed)
        return SQLITE_IOERR_WRITE;
    if (g->len == 0)
        return SQLITE_OK;
    int rc = g->real->pMethods->xWrite(g->real, g->buf, (int)g->len, g->off);
    g->writes++;
    g->len = 0;
    return rc;
}

/* A flush where its error cannot be returned: it fails the WAL and stops
** the store's writes, as a failed sync does. */
static void gather_flush_or_fail(gfile *g)
{
    if (!g || g->len == 0 || gather_flush(g) == SQLITE_OK)
        return;
    g->failed = SQLITE_IOERR_WRITE;
    char why[512];
    snprintf(why, sizeof(why), "%s: a write of the WAL failed",
             g->gv->store->path ? g->gv->store->path : "store");
    sync_fail(g->gv->store, why);
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* The WAL's page size from its header (hdr: its first 32 bytes); 0 when
** the header is not a WAL's. */
static uint32_t wal_page_size(const unsigned char *hdr)
{
    uint32_t page = be32(hdr + 8), magic = be32(hdr);
    bool pow2 = page >= 512 && page <= 65536 && (page & (page - 1)) == 0;
    return (magic == 0x377f0682 || magic == 0x377f0683) && pow2 ? page : 0;
}

/* The page size of a WAL this connection appends to but did not start
** (its header is on disk: one this shim writes is read as it goes by). */
static uint32_t wal_page_known(gfile *g)
{
    unsigned char hdr[WAL_HDR];
    if (g->page == 0 && g->real->pMethods->xRead(g->real, hdr, WAL_HDR, 0) == SQLITE_OK)
        g->page = wal_page_size(hdr);
    return g->page;
}

/* Frames by where they are, not by the size of a write: frame k's header
** is at WAL_HDR + k * (24 + page). SQLite writes a frame as its header and
** its page, but a write that crosses the point a commit must be synced to
** (padding the last sector on a device without powersafe overwrite) is
** split there, so a piece of a page may be 24 bytes and a header may come
** in two pieces. For the write [off, off + n) (within one frame, as SQLite
** writes): a frame is counted where its header's first byte is written,
** its commit mark (header bytes 4-7) is kept as its bytes go by, and true
** is returned when the write ends the frame and the frame is a commit
** frame: the transaction's last write (or a padding copy of it). */
static bool gather_frame(gfile *g, const unsigned char *p, int n, sqlite3_int64 off)
{
    sqlite3_int64 size = WAL_FRAME_HDR + (sqlite3_int64)g->page;
    sqlite3_int64 rel = (off - WAL_HDR) % size; /* where in its frame the write begins */
    if (rel == 0) {
        g->frames++;
        memset(g->mark, 0, sizeof(g->mark));
    }
    for (int i = 4; i < 8; i++)
        if (rel <= i && i < rel + n)
            g->mark[i - 4] = p[i - rel];
    return rel + n == size && (g->mark[0] | g->mark[1] | g->mark[2] | g->mark[3]) != 0;
}

static int gather_write(gfile *g, const void *p, int n, sqlite3_int64 off)
{
    int rc;
    if (g->failed)
        return g->failed;
    if (off == 0) {
        g->end = 0; /* a new WAL header: the frames start again */
        g->page = n >= WAL_HDR ? wal_page_size(p) : 0;
    }
    /* Bytes rewritten in place (a frame's page written again in its
    ** transaction; walRewriteChecksums's headers after it, the commit
    ** frame's last, with no page write after it to send it out) go straight
    ** to the file, their error to SQLite, never taken for a new frame. */
    bool in_place = off + n <= g->end;
    if (g->len > 0 &&
        (in_place || off != g->off + (sqlite3_int64)g->len || g->len + (size_t)n > CM_GATHER_MAX))
        if ((rc = gather_flush(g)) != SQLITE_OK)
            return rc;
    if (off + n > g->end)
        g->end = off + n;
    /* neither a WAL header nor a frame of a WAL whose page size is known:
    ** straight out, not gathered */
    bool frame = off >= WAL_HDR && wal_page_known(g);
    if (in_place || (size_t)n > CM_GATHER_MAX || !(frame || (off == 0 && g->page)))
        return g->real->pMethods->xWrite(g->real, p, n, off);
    if (g->len + (size_t)n > g->cap) {
        size_t cap = g->cap ? g->cap : 64 * 1024;
        while (cap < g->len + (size_t)n)
            cap *= 2;
        unsigned char *b = realloc(g->buf, cap);
        if (!b)
            return SQLITE_IOERR_NOMEM;
        g->buf = b;
        g->cap = cap;
    }
    if (g->len == 0)
        g->off = off;
    memcpy(g->buf + g->len, p, (size_t)n);
    g->len += (size_t)n;
    /* the commit frame's end: the transaction's last write goes out now */
    return frame && gather_frame(g, p, n, off) ? gather_flush(g) : SQLITE_OK;
}

static int gather_close(sqlite3_file *f)
{
    gfile *g = (gfile *)f;
    int rc = g->is_wal ? gather_flush(g) : SQLITE_OK;
    if (g->is_wal && g->db && g->db->wal == g)
        g->db->wal = NULL;
    if (!g->is_wal && g->wal)
        g->wal->db = NULL;
    int rc2 = g->real->pMethods->xClose(g->real);
    free(g->buf);
    g->buf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

static int gather_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    gfile *g = (gfile *)f;
    int rc = g->is_wal ? gather_flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xRead(g->real, p, n, off);
}

static int gather_xwrite(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    gfile *g = (gfile *)f;
    return g->is_wal ? gather_write(g, p, n, off) : g->real->pMethods->xWrite(g->real, p, n, off);
}

static int gather_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    gfile *g = (gfile *)f;
    int rc = g->is_wal ? gather_flush(g) : SQLITE_OK;
    if (g->end > size)
        g->end = size;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xTruncate(g->real, size);
}

static int gather_sync(sqlite3_file *f, int flags)
{
    gfile *g = (gfile *)f;
    int rc = g->is_wal ? gather_flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xSync(g->real, flags);
}

static int gather_size(sqlite3_file *f, sqlite3_int64 *size)
{
    gfile *g = (gfile *)f;
    int rc = g->is_wal ? gather_flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xFileSize(g->real, size);
}

static int gather_lock(sqlite3_file *f, int lock)
{
    return REAL(f)->pMethods->xLock(REAL(f), lock);
}

static int gather_unlock(sqlite3_file *f, int lock)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), lock);
}

static int gather_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int gather_fcntl(sqlite3_file *f, int op, void *arg)
{
    gfile *g = (gfile *)f;
    int rc = g->is_wal ? gather_flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xFileControl(g->real, op, arg);
}

static int gather_sector(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int gather_device(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int gather_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **out)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), page, size, extend, out);
}

static int gather_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    gfile *g = (gfile *)f;
    if (flags & SQLITE_SHM_UNLOCK) {
        /* SQLite ignores an unlock's result (walUnlockExclusive): the lock
        ** goes all the same, or no other connection could ever write; a
        ** failed write fails the WAL. (A rollback after a spill leaves its
        ** frames gathered until the write lock's release.) */
        gather_flush_or_fail(g->wal);
        /* The write transaction ends (lock 0 is WAL_WRITE_LOCK): the next
        ** one appends after the published frames and rewrites only its
        ** own, so nothing before it is bytes "already written". After a
        ** rollback that spilled, its frames lie past the published end,
        ** and the next transaction's frames go over them: without this,
        ** they were taken for rewrites and never gathered. */
        if (g->wal && offset == 0 && (flags & SQLITE_SHM_EXCLUSIVE))
            g->wal->end = 0;
    } else if (g->wal && g->wal->len > 0) {
        int rc = gather_flush(g->wal);
        if (rc != SQLITE_OK)
            return rc;
    }
    return g->real->pMethods->xShmLock(g->real, offset, n, flags);
}

static void gather_shm_barrier(sqlite3_file *f)
{
    gfile *g = (gfile *)f;
    gather_flush_or_fail(g->wal);
    g->real->pMethods->xShmBarrier(g->real);
}

static int gather_shm_unmap(sqlite3_file *f, int del)
{
    gfile *g = (gfile *)f;
    gather_flush_or_fail(g->wal);
    return g->real->pMethods->xShmUnmap(g->real, del);
}

static int gather_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **out)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, out);
}

static int gather_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods gather_methods = {
    3,
    gather_close,
    gather_read,
    gather_xwrite,
    gather_truncate,
    gather_sync,
    gather_size,
    gather_lock,
    gather_unlock,
    gather_reserved,
    gather_fcntl,
    gather_sector,
    gather_device,
    gather_shm_map,
    gather_shm_lock,
    gather_shm_barrier,
    gather_shm_unmap,
    gather_fetch,
    gather_unfetch,
};

static int gather_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags,
                       int *out_flags)
{
    sqlite3_vfs *unix_vfs = ((cm_gather_vfs *)vfs->pAppData)->base;
    gfile *g = (gfile *)f;
    memset(g, 0, sizeof(*g));
    g->real = (sqlite3_file *)(g + 1);
    g->gv = vfs->pAppData;
    int rc = unix_vfs->xOpen(unix_vfs, name, g->real, flags, out_flags);
    if (rc != SQLITE_OK || !g->real->pMethods) {
        if (g->real->pMethods) /* SQLite closes nothing whose open failed */
            g->real->pMethods->xClose(g->real);
        g->base.pMethods = NULL;
        return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
    }
    if ((flags & SQLITE_OPEN_WAL) && name) {
        sqlite3_file *db = sqlite3_database_file_object(name);
        if (db && db->pMethods == &gather_methods) {
            g->is_wal = true;
            g->db = (gfile *)db;
            g->db->wal = g;
        }
    }
    g->base.pMethods = &gather_methods;
    return SQLITE_OK;
}

/* The other calls of the VFS are the unix VFS's own. */
static int gather_delete(sqlite3_vfs *v, const char *n, int s)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xDelete(u, n, s);
}
static int gather_access(sqlite3_vfs *v, const char *n, int fl, int *out)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xAccess(u, n, fl, out);
}
static int gather_fullpath(sqlite3_vfs *v, const char *n, int sz, char *out)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xFullPathname(u, n, sz, out);
}
static void *gather_dlopen(sqlite3_vfs *v, const char *n)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xDlOpen(u, n);
}
static void gather_dlerror(sqlite3_vfs *v, int n, char *out)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    u->xDlError(u, n, out);
}
static void (*gather_dlsym(sqlite3_vfs *v, void *h, const char *s))(void)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xDlSym(u, h, s);
}
static void gather_dlclose(sqlite3_vfs *v, void *h)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    u->xDlClose(u, h);
}
static int gather_random(sqlite3_vfs *v, int n, char *out)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xRandomness(u, n, out);
}
static int gather_sleep(sqlite3_vfs *v, int us)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xSleep(u, us);
}
static int gather_time(sqlite3_vfs *v, double *out)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xCurrentTime(u, out);
}
static int gather_lasterr(sqlite3_vfs *v, int n, char *out)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xGetLastError(u, n, out);
}
static int gather_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    sqlite3_vfs *u = ((cm_gather_vfs *)v->pAppData)->base;
    return u->xCurrentTimeInt64(u, out);
}

/* Register the store's shim over the default VFS (SQLite's list of VFSes
** is the process's: a name of its own, never the default). Its name for
** the writer's open, or NULL (the default VFS, no gathering) if the default
** cannot be wrapped or registered. */
static const char *gather_vfs_open(cm_store *store)
{
    cm_gather_vfs *gv = &store->gv;
    sqlite3_vfs *base = sqlite3_vfs_find(NULL);
    if (!base || base->iVersion < 2)
        return NULL;
    snprintf(gv->name, sizeof(gv->name), "caremesh-wal-%p", (void *)store);
    gv->base = base;
    gv->store = store;
    gv->vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(gfile) + base->szOsFile,
        .mxPathname = base->mxPathname,
        .zName = gv->name,
        .pAppData = gv,
        .xOpen = gather_open,
        .xDelete = gather_delete,
        .xAccess = gather_access,
        .xFullPathname = gather_fullpath,
        .xDlOpen = gather_dlopen,
        .xDlError = gather_dlerror,
        .xDlSym = gather_dlsym,
        .xDlClose = gather_dlclose,
        .xRandomness = gather_random,
        .xSleep = gather_sleep,
        .xCurrentTime = gather_time,
        .xGetLastError = gather_lasterr,
        .xCurrentTimeInt64 = gather_time64,
    };
    gv->registered = sqlite3_vfs_register(&gv->vfs, 0) == SQLITE_OK;
    return gv->registered ? gv->name : NULL;
}

/* After the writer's connection closed. */
static void gather_vfs_close(cm_store *store)
{
    if (store->gv.registered)
        sqlite3_vfs_unregister(&store->gv.vfs);
    store->gv.registered = false;
}

/* The writer's WAL as the shim opened it, or NULL. */
static gfile *gather_wal_of(sqlite3 *db)
{
    sqlite3_file *f = NULL;
    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f) != SQLITE_OK || !f ||
        f->pMethods != &gather_methods)
        return NULL;
    return ((gfile *)f)->wal;
}

void cm_store_wal_writes(cm_store *store, uint64_t *frames, uint64_t *writes)
{
    gfile *w = store->writer ? gather_wal_of(store->db) : NULL;
    *frames = w ? w->frames : 0;
    *writes = w ? w->writes : 0;
}

static int migrate(cm_store *store, cm_err *err)
{
    int rc, current = 0;
    if ((rc = cm_store_exec(store,
                            "CREATE TABLE IF NOT EXISTS schema_version(\n"
                            "  version     INTEGER PRIMARY KEY,\n"
                            "  description TEXT NOT NULL,\n"
                            "  applied_at  TEXT NOT NULL DEFAULT "
                            "(strftime('%Y-%m-%dT%H:%M:%SZ','now'))\n"
                            ")",
                            err)) != 0)
        return rc;
    if ((rc = query_int(store, "SELECT coalesce(max(version), 0) FROM schema_version", &current,
                        err)) != 0)
        return rc;
    if (current > CM_SCHEMA_VERSION)
        return cm_err_set(err, CM_ESCHEMA,
                          "%s: database schema version %d is newer than this caremesh "
                          "(%s knows up to %d); use a newer caremesh",
                          store->path, current, CM_VERSION, CM_SCHEMA_VERSION);
    for (size_t i = 0; i < CM_NMIGRATIONS; i++) {
        const cm_migration *m = &migrations[i];
        if (m->version <= current)
            continue;
        if ((rc = cm_store_begin(store, err)) != 0)
            return rc;
        sqlite3_stmt *st = NULL;
        rc = cm_store_exec(store, m->sql, err);
        if (rc == 0 &&
            sqlite3_prepare_v2(store->db,
                               "INSERT INTO schema_version(version, description) VALUES (?1, ?2)",
                               -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_int(st, 1, m->version);
            sqlite3_bind_text(st, 2, m->description, -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE)
                rc = cm_store_error(store, err, "schema_version");
        } else if (rc == 0) {
            rc = cm_store_error(store, err, "schema_version");
        }
        sqlite3_finalize(st);
        if (rc == 0)
            rc = cm_store_commit(store, err);
        if (rc != 0) {
            cm_store_rollback(store);
            return cm_err_prefix(err, "migration %d (%s)", m->version, m->description);
        }
        current = m->version;
    }
    store->schema_version = current;
    return 0;
}

int cm_store_open(cm_store **out, const cm_store_opts *opts, cm_err *err)
{
    cm_store *store = NULL;
    int rc;
    *out = NULL;
    if (!opts || !opts->path || !*opts->path)
        return cm_err_set(err, CM_EINVAL, "store: no database path given");
    if ((rc = ensure_file(opts->path, opts->create && !opts->read_only, err)) != 0)
        return rc;
    store = calloc(1, sizeof(*store));
    if (!store || !(store->path = strdup(opts->path))) {
        free(store);
        return cm_err_set(err, CM_ENOMEM, "store: out of memory");
    }
    int flags =
        (opts->read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
    /* the writer's WAL writes go through the shim (gathered, above) */
    const char *vfs = opts->read_only ? NULL : gather_vfs_open(store);
    if (sqlite3_open_v2(opts->path, &store->db, flags, vfs) != SQLITE_OK) {
        rc = cm_store_error(store, err, "open");
        goto done;
    }
    sqlite3_extended_result_codes(store->db, 1);
    if ((rc = check_identity(store, opts->create && !opts->read_only, err)) != 0)
        goto done;
    if ((rc = check_private(store, err)) != 0)
        goto done;
    if (opts->read_only) {
        sqlite3_busy_timeout(store->db, opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : 5000);
        if ((rc = cm_store_exec(store, "PRAGMA query_only=1", err)) == 0)
            *out = store;
        goto done;
    }
    store->sync = (int)opts->synchronous;
    sync_init(store);
    store->sy.fn = opts->sync_fn;
    store->sy.fn_ud = opts->sync_ud;
    if ((rc = set_pragmas(store, opts, err)) != 0)
        goto done;
    if ((rc = sync_recovered(store, err)) != 0)
        goto done;
    if ((rc = migrate(store, err)) != 0)
        goto done;
    if ((rc = ckpt_setup(store, opts, err)) != 0)
        goto done;
    *out = store;
done:
    return rc != 0 ? cm_store_close_after(&store, rc, err)
                   : 0; /* the open's error, not the close's */
}

/* Close the connection whole. Statements a caller left unfinalized keep
** it open (SQLITE_BUSY), and with it files opened through the shim that is
** about to be unregistered and freed: they are named in err (their SQL),
** then finalized here, and the connection is closed with sqlite3_close_v2,
** so none of it outlives the store. */
static int db_close(cm_store *store, cm_err *err)
{
    char list[CM_ERR_MSG_MAX / 2] = "";
    size_t used = 0;
    int left = 0, rc = 0;
    if (sqlite3_close(store->db) == SQLITE_BUSY) {
        for (sqlite3_stmt *st = sqlite3_next_stmt(store->db, NULL); st;
             st = sqlite3_next_stmt(store->db, st), left++) {
            int n = used < sizeof(list) ? snprintf(list + used, sizeof(list) - used, "%s\"%.96s\"",
                                                   left ? ", " : "", sqlite3_sql(st))
                                        : 0;
            used += n > 0 ? (size_t)n : 0;
        }
        rc = cm_err_set(err, CM_EDB,
                        "%s: closed with %d statement(s) not finalized, finalized by the close "
                        "(a caller's leak): %s",
                        store->path, left, list);
        for (sqlite3_stmt *st; (st = sqlite3_next_stmt(store->db, NULL)) != NULL;)
            sqlite3_finalize(st);
        if (sqlite3_close_v2(store->db) != SQLITE_OK && rc == 0)
            rc = cm_store_error(store, err, "close");
    }
    store->db = NULL;
    return rc;
}

int cm_store_close_v2(cm_store **store_p, cm_err *err)
{
    cm_store *store = store_p ? *store_p : NULL;
    int rc = 0;
    if (!store)
        return 0;
    sync_close(store);
    ckpt_close(store);
    for (int i = 0; i < CM_STMT_SLOTS; i++)
        sqlite3_finalize(store->stmts[i].stmt);
    if (store->db) {
        cm_store_rollback(store);
        rc = db_close(store, err);
    }
    gather_vfs_close(store); /* after the connection: none of its files is open now */
    free(store->path);
    free(store);
    *store_p = NULL;
    return rc;
}

int cm_store_close_after(cm_store **store_p, int rc, cm_err *err)
{
    int crc = cm_store_close_v2(store_p, rc ? NULL : err);
    return rc ? rc : crc;
}
