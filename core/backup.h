/*
** backup.h -- online backup of a node's database through SQLite's backup API
** (sqlite3_backup_*), from a connection of its own: the node may serve and
** write meanwhile (WAL lets a reader keep one snapshot while the writer goes
** on). The copy is one consistent snapshot taken in steps, so progress can
** be shown, of durable commits only (the source's WAL is synced once the
** snapshot is fixed); it is written to a temp file (0600) beside the target, checked
** (integrity_check, application id, schema version and node id equal to the
** source's), fsynced and renamed into place. The source is only read: never
** migrated, never locked against writers. Depends on SQLite, fs, store.
** Any one thread per cm_backup.
*/
#ifndef CM_BACKUP_H
#define CM_BACKUP_H

#include <stdint.h>

#include "error.h"

/* Pages copied per step by cm_backup_run (4 MiB at SQLite's default 4 KiB pages). */
#define CM_BACKUP_STEP_PAGES 1024

typedef struct cm_backup cm_backup;

/* What a finished backup holds (also what it was checked against). */
typedef struct cm_backup_info {
    char node_id[129];
    int schema_version;
    int64_t pages;
    int64_t bytes;
} cm_backup_info;

/* Begin a backup of the database at src into dst. dst must not exist (an
** existing file is never replaced) and must not be the database itself.
** CM_ENOTFOUND (no src), CM_ENOTCM (src is not a caremesh database),
** CM_EEXISTS (dst exists), CM_EPERM/CM_EIO (dst cannot be created). On
** failure *out is NULL and nothing is left behind. */
int cm_backup_begin(const char *src, const char *dst, cm_backup **out, cm_err *err);
/* The snapshot holds only durable commits: after it is fixed, begin syncs
** the source's WAL (a node's deferred commits may not be synced yet, and
** one sync covers every frame written before it); CM_EIO when that fails.
** This variant syncs through sync_fn (returns 0 or an errno; NULL:
** fdatasync): a test hook, as cm_store_opts.sync_fn. */
int cm_backup_begin_with_sync(const char *src, const char *dst, int (*sync_fn)(void *ud, int fd),
                              void *sync_ud, cm_backup **out, cm_err *err);

/* Copy up to pages pages (-1: all that remain). *done is set once every page
** is copied; *copied and *total (may be NULL) say where it stands. */
int cm_backup_step(cm_backup *b, int pages, int64_t *copied, int64_t *total, int *done,
                   cm_err *err);

/* After the last step: check the copy, fsync it, rename it to dst and fsync
** the directory. CM_EDB when the copy fails its checks (nothing is left at
** dst). info (may be NULL) receives what the backup holds. */
int cm_backup_finish(cm_backup *b, cm_backup_info *info, cm_err *err);

/* Release b; an unfinished backup's temp file is removed. NULLs *b_p. */
void cm_backup_destroy(cm_backup **b_p);

/* Progress callback of cm_backup_run: called after every step. */
typedef void (*cm_backup_progress)(void *ud, int64_t copied, int64_t total);

/* The whole backup: begin, steps of CM_BACKUP_STEP_PAGES, finish. */
int cm_backup_run(const char *src, const char *dst, cm_backup_progress progress, void *ud,
                  cm_backup_info *info, cm_err *err);

/* Check a database file as cm_backup_finish checks a copy (a restored file,
** a backup kept somewhere): integrity, application id, schema version, node
** id. The file is opened read-only. */
int cm_backup_verify(const char *path, cm_backup_info *info, cm_err *err);

#endif
