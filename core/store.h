/*
** store.h -- the caremesh store: one SQLite database in WAL mode.
** A cm_store belongs to the thread that opened it: one writer, owned by the
** loop thread, and read-only stores (opts.read_only) that worker threads open
** for their reads; the writer's checkpoint thread has a connection of its
** own, started when the WAL first needs a checkpoint. Versioned migrations are applied once each,
*in a transaction, when
** the store opens. A change is durable when cm_store_commit() returns 0
** (synchronous=FULL by default). Hot statements are prepared once and kept.
** Depends on: SQLite, error.h.
*/
#ifndef CM_STORE_H
#define CM_STORE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"

/* Highest schema version this binary knows. */
#define CM_SCHEMA_VERSION 14
/* PRAGMA application_id of a caremesh database ("CMSH"). */
#define CM_APPLICATION_ID 0x434d5348

typedef enum {
    CM_SYNC_OFF = 0,
    CM_SYNC_NORMAL = 1,
    CM_SYNC_FULL = 2,
    CM_SYNC_EXTRA = 3,
} cm_sync;

typedef struct cm_store_opts {
    const char *path;    /* database file */
    bool create;         /* create the file (mode 0600) if it does not exist */
    cm_sync synchronous; /* durability level; CM_SYNC_FULL is the default */
    int busy_timeout_ms; /* 0 selects 5000 */
    /* WAL size (pages) at which a checkpoint starts; 0 selects 1000 (SQLite's
    ** default). Checkpoints run on a thread of the store's own, with a
    ** connection of their own, so commits do not wait for the database
    ** file's copy and fsync; the writer finishes the last few pages itself
    ** (so the WAL starts over) and, past 8x this size, waits for the
    ** checkpoint thread and finishes it all (so the WAL cannot grow without
    ** bound). Negative: checkpoints inline in the commit (SQLite's own). */
    int checkpoint_pages;
    /* A reader for another thread (e.g. a worker's long read): opened read
    ** only with query_only set, no migrations (the writer applies them), no
    ** checkpoints of its own. The database must exist. */
    bool read_only;
    /* Deferred commits (cm_store_begin_deferred) are made durable by a sync
    ** thread of the store's own that calls this on its own fd of the WAL
    ** file; NULL selects fdatasync. Returns 0 or an errno. A test hook: a
    ** function that blocks holds every deferred commit unsynced, one that
    ** fails injects an fsync error. */
    int (*sync_fn)(void *ud, int fd);
    void *sync_ud;
} cm_store_opts;

typedef struct cm_store cm_store;

/* Process-wide SQLite settings, before any other SQLite call (main() runs
** it first): no global memory statistics, which would take a mutex on every
** allocation SQLite makes; and SQLite's blocks of up to 512 bytes (and the
** last freed one of 32 to 128 KB) kept per thread for reuse, as SQLite's
** lookaside would (Debian's SQLite is built without it); a thread's kept
** blocks are freed when it ends. Idempotent; a no-op once SQLite is
** initialized. */
void cm_store_global_init(void);

/* Defaults: synchronous FULL, busy timeout 5 s, no create. */
void cm_store_opts_init(cm_store_opts *opts);

/* Open (and migrate) the database. On failure *out is NULL, err says why:
** CM_ENOTFOUND (no file and !create), CM_ENOTCM (corrupt or foreign file),
** CM_ESCHEMA (newer than this binary), CM_EPERM/CM_EIO, CM_EDB. */
int cm_store_open(cm_store **out, const cm_store_opts *opts, cm_err *err);

/* Finalize kept statements, close the connection, NULL *store_p: CM_EDB
** when statements were left
** unfinalized on the connection (err names their SQL; they are finalized
** by the close, so their handles are invalid after it, and the store is
** closed and freed all the same). 0 otherwise; NULL or closed: 0. */
int cm_store_close_v2(cm_store **store_p, cm_err *err);
/* Close after work that returned rc: rc when nonzero (err as the work left
** it), else cm_store_close_v2's result. Closed and NULLed either way. */
int cm_store_close_after(cm_store **store_p, int rc, cm_err *err);

/* The connection (borrowed; valid until close). */
sqlite3 *cm_store_db(cm_store *store);

/* Schema version of the open database. */
int cm_store_schema_version(cm_store *store);

/* A statement for sql, prepared on first use and kept until close; sql must be
** a string literal (the cache keys on its address and text). The statement is
** reset with its bindings cleared. Borrowed: do not finalize. NULL on error. */
sqlite3_stmt *cm_store_prepare(cm_store *store, const char *sql, cm_err *err);

/* The same, reset but with the last use's bindings left in place (clearing
** them is ~170 instructions a statement): for a caller that binds every
** parameter of sql before each step, NULLs included. */
sqlite3_stmt *cm_store_prepare_bound(cm_store *store, const char *sql, cm_err *err);

/* Transactions: BEGIN IMMEDIATE / COMMIT / ROLLBACK. begin fails with CM_EDB
** when another process holds the write lock past the busy timeout; commit
** fails (and rolls back) when SQLite already rolled the transaction back. */
int cm_store_begin(cm_store *store, cm_err *err);
int cm_store_commit(cm_store *store, cm_err *err);
void cm_store_rollback(cm_store *store);
bool cm_store_in_tx(cm_store *store);
/* A transaction whose commit does not wait for its own fsync (SQLite's
** synchronous=NORMAL for it alone, when the store is at FULL or EXTRA; the
** level is back when it ends). Its pages are in the WAL when commit returns,
** so a killed process keeps it; they reach the disk with the next synced
** commit on this database (a WAL sync covers every frame before it) or a
** checkpoint, and an OS crash or power loss before that loses it -- whole.
** Only for records that redoing repairs and that nothing acknowledged to
** anyone depends on (federation's delivered marks: fed.c, peer_flush). */
int cm_store_begin_nosync(cm_store *store, cm_err *err);
/*
** Deferred commits: group commit with the fsync off the writer's thread.
** cm_store_begin_deferred opens a transaction like cm_store_begin_nosync
** (SQLite's synchronous=NORMAL for it: its frames are written to the WAL at
** COMMIT, not synced), and its commit hands the sync to the store's two
** sync threads, which fdatasync the WAL each on an fd of its own (a
** writeback error is told once per open file): one sync
** covers every frame written before it starts, so syncs coalesce (at most
** two in flight, a commit made during one synced at once by the other;
** the next covers every commit made while both run). Each deferred or
** synced commit takes the next number of a counter; the watermark is the
** highest number known durable: the highest a finished sync covered (a
** failure taken in only after the syncs begun before it, and no sync's
** success taken in after a failure), or a synced
** commit's (its own WAL sync covers every earlier frame). Nothing that
** depends on a commit may leave the process before the watermark reaches
** it (the output-commit rule). A failed sync is never retried (Linux may
** have dropped the pages): the watermark stops, every waiter on a commit
** above it gets CM_EINDOUBT (the commit reached the WAL: a restart may or
** may not find it), and every later begin fails with CM_EIO. The same holds
** for every fsync of the writer's files that fails: a synced commit's own
** WAL sync inside SQLite (that commit fails with CM_EINDOUBT), a
** checkpoint's sync of the WAL or
** the database file (on the writer or the checkpoint thread; the commit
** that ran it stays good). At a level below FULL the store wants no sync:
** deferred commits count as synced at once.
*/
int cm_store_begin_deferred(cm_store *store, cm_err *err);
/* The number of the latest deferred or synced commit: what an output made
** now depends on. */
uint64_t cm_store_commit_seq(cm_store *store);
/* The watermark: every commit numbered at or below it is durable. Any thread. */
uint64_t cm_store_synced_seq(cm_store *store);
/* fdatasync (or fn(ud, fd), a test's) the WAL file SQLite uses for db's
** main database, named in *path (NULL: SQLite names none, ENOENT). 0 also
** when there is no WAL file; else the errno. Any connection, any thread. */
int cm_store_sync_wal_file(sqlite3 *db, int (*fn)(void *ud, int fd), void *ud, const char **path);
/* Block until commit seq is durable: 0, or CM_EINDOUBT when a sync failed
** before it was (a commit the watermark covered stays 0). */
int cm_store_sync_wait(cm_store *store, uint64_t seq, cm_err *err);
/* 0 while syncs succeed; CM_EIO (err says why) once one failed. Any thread. */
int cm_store_sync_status(cm_store *store, cm_err *err);
/* When the sync threads' first sync to cover commit seq ran (CLOCK_MONOTONIC
** ns), if it is among the last 16; -1 if not (covered by a synced commit,
** or long ago). Any thread; for measurements. */
int cm_store_sync_span(cm_store *store, uint64_t seq, int64_t *start_ns, int64_t *end_ns);
/* fn(ud) is called when the watermark moves or a sync fails: on the sync
** thread or the checkpoint thread (so it must be thread-safe:
** uv_async_send), or on the writer's thread after a synced commit or a
** failed fsync. One listener; NULL removes it (after which it is not
** called). */
void cm_store_on_synced(cm_store *store, void (*fn)(void *ud), void *ud);

/* Which rows of a table (by their increasing key) an output may show: the
** rows at or below a key read when the commit counter was c are durable
** once the watermark reaches c. Call cm_store_rowmark_update with the
** table's largest key now (outside a transaction); it returns the largest
** key known durable. Starts zeroed. Writer's thread. */
#define CM_STORE_ROWMARK_MAX 8
typedef struct cm_store_rowmark {
    uint64_t commit[CM_STORE_ROWMARK_MAX];
    int64_t row[CM_STORE_ROWMARK_MAX];
    int n;
    int64_t durable; /* the largest key known durable */
} cm_store_rowmark;
int64_t cm_store_rowmark_update(cm_store *store, cm_store_rowmark *m, int64_t max_key);

/* Who writes inside an open transaction in a scope of its own (a plugin's
** savepoint) calls cm_store_nested_write first: it runs the one armed
** callback (the engine opens a step's savepoint only when the step's handler
** writes), which disarms itself. fn NULL disarms. */
typedef int (*cm_store_nested_fn)(void *ud, cm_err *err);
void cm_store_on_nested_write(cm_store *store, cm_store_nested_fn fn, void *ud);
int cm_store_nested_write(cm_store *store, cm_err *err);
/* True when cm_store_begin's transaction was rolled back under the holder
** (an I/O error, a full disk): writes must stop, commit will fail. */
bool cm_store_tx_lost(cm_store *store);

/* Checkpoints so far: on the checkpoint thread, by the writer after the
** thread (the last pages, or at the bound), and the pages the WAL held after
** the largest commit; the thread's checkpoints that copied part of the WAL,
** and its syncs of the database file after them (SQLite syncs it only after
** a whole WAL is copied, mostly the writer's finishing checkpoint, which
** then has only its own pages to sync). For tests and diagnostics. */
typedef struct cm_store_ckpt_stats {
    long background, inline_runs, partial, db_syncs;
    int max_wal_pages;
} cm_store_ckpt_stats;
void cm_store_ckpt_stats_get(cm_store *store, cm_store_ckpt_stats *out);

/* The writer's WAL frames written since open and the writes they took: the
** store gathers a commit's frames into one write (store.c); 0 and 0 for a
** read-only store. Loop thread. */
void cm_store_wal_writes(cm_store *store, uint64_t *frames, uint64_t *writes);

/* Run SQL with no result rows (DDL, PRAGMA, one-off writes). Setting PRAGMA
** wal_autocheckpoint is refused on the writer (CM_EINVAL, here and in
** cm_store_prepare): SQLite would replace the store's WAL hook, which counts
** deferred commits; never call sqlite3_wal_autocheckpoint or
** sqlite3_wal_hook on cm_store_db for the same reason. */
int cm_store_exec(cm_store *store, const char *sql, cm_err *err);

/* Fill err from the connection's last error; returns CM_EDB (or a more precise code). */
int cm_store_error(cm_store *store, cm_err *err, const char *what);

/* Node metadata (node id and the like): key/value, text. */
int cm_store_meta_set(cm_store *store, const char *key, const char *value, cm_err *err);
/* Returns a malloc'd copy the caller frees, or NULL (err CM_ENOTFOUND if absent). */
char *cm_store_meta_get(cm_store *store, const char *key, cm_err *err);

/* Parse "off|normal|full|extra"; -1 if unknown. */
int cm_sync_parse(const char *s);

#endif
