/*
** backup.c -- online backup through sqlite3_backup_*: one read snapshot of
** the source held across the steps, a private temp file, checks, rename.
*/
#define _XOPEN_SOURCE 700 /* realpath */
#include "backup.h"

#include "fs.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BACKUP_PATH_MAX 4096

struct cm_backup {
    sqlite3 *src, *dst;
    sqlite3_backup *bk;
    bool done, finished;
    char dst_path[BACKUP_PATH_MAX];
    char tmp_path[BACKUP_PATH_MAX];
    cm_backup_info want;              /* the source's node id and schema version */
    int (*sync_fn)(void *ud, int fd); /* the source WAL's sync; NULL: fdatasync */
    void *sync_ud;
};

static int db_error(sqlite3 *db, cm_err *err, const char *what)
{
    return cm_err_set(err, CM_EDB, "%s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
}

/* One text or integer value from a query on db; NULL text is "". */
static int query_one(sqlite3 *db, const char *sql, char *text, size_t textsz, int64_t *num,
                     cm_err *err)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (text) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(text, textsz, "%s", t ? (const char *)t : "");
        }
        if (num)
            *num = sqlite3_column_int64(st, 0);
        rc = 0;
    } else {
        rc = db_error(db, err, sql);
    }
    sqlite3_finalize(st);
    return rc;
}

/* What identifies a caremesh database: its application id, its schema
** version and the node id it was initialised with. */
static int read_identity(sqlite3 *db, const char *path, cm_backup_info *info, cm_err *err)
{
    int64_t app = 0, schema = 0;
    memset(info, 0, sizeof(*info));
    if (query_one(db, "PRAGMA application_id", NULL, 0, &app, err) != 0)
        return cm_err_set(err, CM_ENOTCM, "%s: not a caremesh database (%s)", path, err->msg);
    if ((uint32_t)app != CM_APPLICATION_ID)
        return cm_err_set(err, CM_ENOTCM, "%s: not a caremesh database (application_id 0x%08x)",
                          path, (unsigned)app);
    if (query_one(db, "SELECT coalesce(max(version), 0) FROM schema_version", NULL, 0, &schema,
                  err) != 0 ||
        query_one(db, "SELECT value FROM node_meta WHERE key = 'node_id'", info->node_id,
                  sizeof(info->node_id), NULL, err) != 0)
        return cm_err_prefix(err, "%s", path);
    info->schema_version = (int)schema;
    return 0;
}

static void unlink_with_sidecars(const char *path)
{
    static const char *const suffixes[] = {"", "-journal", "-wal", "-shm"};
    char p[BACKUP_PATH_MAX + 16];
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

/* dst must not be the source database nor one of its sidecar files. */
static int check_target(const char *src, const char *dst, cm_err *err)
{
    static const char *const suffixes[] = {"", "-journal", "-wal", "-shm"};
    char real_src[PATH_MAX], dir_copy[BACKUP_PATH_MAX], base_copy[BACKUP_PATH_MAX];
    char real_dir[PATH_MAX], full[PATH_MAX + 256], side[PATH_MAX + 16];
    struct stat sb;
    if (stat(dst, &sb) == 0)
        return cm_err_set(err, CM_EEXISTS,
                          "%s: already exists; a backup never replaces a file (remove it or "
                          "choose another name)",
                          dst);
    if (strlen(dst) >= sizeof(dir_copy))
        return cm_err_set(err, CM_EINVAL, "%s: path too long", dst);
    snprintf(dir_copy, sizeof(dir_copy), "%s", dst);
    snprintf(base_copy, sizeof(base_copy), "%s", dst);
    const char *dir = dirname(dir_copy), *base = basename(base_copy);
    if (!realpath(dir, real_dir))
        return cm_err_set(err, errno == EACCES ? CM_EPERM : CM_EIO, "%s: %s", dir, strerror(errno));
    if (!realpath(src, real_src))
        return cm_err_set(err, CM_ENOTFOUND, "%s: %s", src, strerror(errno));
    snprintf(full, sizeof(full), "%s/%s", real_dir, base);
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(side, sizeof(side), "%s%s", real_src, suffixes[i]);
        if (strcmp(full, side) == 0)
            return cm_err_set(err, CM_EINVAL, "%s: is the node's own database file", dst);
    }
    return 0;
}

/* The snapshot may hold deferred commits (store.h) whose frames are in the
** source's WAL file but not yet on disk: a power loss would take them from
** the node, and the backup would hold commits the node lost. One sync of
** the WAL begun after the snapshot is fixed covers every frame it reads, so
** the copy holds only durable commits, whether the node's own sync has run
** or not. No WAL: the snapshot reads only the database file. */
static int sync_source_wal(cm_backup *b, const char *src, cm_err *err)
{
    const char *path;
    int rc = cm_store_sync_wal_file(b->src, b->sync_fn, b->sync_ud, &path);
    if (rc == 0)
        return 0;
    if (!path)
        return cm_err_set(err, CM_EIO, "%s: SQLite names no WAL file for it", src);
    return cm_err_set(err, CM_EIO,
                      "%s: fdatasync failed: %s (the node's latest commits may not be on disk; "
                      "no backup was taken)",
                      path, strerror(rc));
}

/* Open the source read-only and hold one read snapshot for the whole copy,
** durable before the first page is copied. */
static int open_source(cm_backup *b, const char *src, cm_err *err)
{
    struct stat sb;
    if (stat(src, &sb) != 0)
        return cm_err_set(err, CM_ENOTFOUND, "%s: no database here (%s)", src, strerror(errno));
    if (sqlite3_open_v2(src, &b->src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        return db_error(b->src, err, src);
    sqlite3_busy_timeout(b->src, 5000);
    if (sqlite3_exec(b->src, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return db_error(b->src, err, src);
    /* the first read starts the snapshot the copy is made of */
    int rc = read_identity(b->src, src, &b->want, err);
    return rc != 0 ? rc : sync_source_wal(b, src, err);
}

int cm_backup_begin(const char *src, const char *dst, cm_backup **out, cm_err *err)
{
    return cm_backup_begin_with_sync(src, dst, NULL, NULL, out, err);
}

int cm_backup_begin_with_sync(const char *src, const char *dst, int (*sync_fn)(void *ud, int fd),
                              void *sync_ud, cm_backup **out, cm_err *err)
{
    cm_backup *b = NULL;
    int rc, fd;
    *out = NULL;
    if (!src || !dst || !*dst)
        return cm_err_set(err, CM_EINVAL, "backup: no target file given");
    if ((rc = check_target(src, dst, err)) != 0)
        return rc;
    if (!(b = calloc(1, sizeof(*b))))
        return cm_err_set(err, CM_ENOMEM, "backup: out of memory");
    b->sync_fn = sync_fn;
    b->sync_ud = sync_ud;
    if (snprintf(b->dst_path, sizeof(b->dst_path), "%s", dst) >= (int)sizeof(b->dst_path) ||
        snprintf(b->tmp_path, sizeof(b->tmp_path), "%s.tmp.%ld", dst, (long)getpid()) >=
            (int)sizeof(b->tmp_path)) {
        rc = cm_err_set(err, CM_EINVAL, "%s: path too long", dst);
        goto done;
    }
    if ((rc = open_source(b, src, err)) != 0)
        goto done;
    fd = open(b->tmp_path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = cm_err_set(err, errno == EACCES || errno == EROFS ? CM_EPERM : CM_EIO,
                        "%s: cannot create: %s", b->tmp_path, strerror(errno));
        b->tmp_path[0] = '\0'; /* not ours: never removed */
        goto done;
    }
    close(fd);
    if (sqlite3_open_v2(b->tmp_path, &b->dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        !(b->bk = sqlite3_backup_init(b->dst, "main", b->src, "main"))) {
        rc = db_error(b->dst, err, b->tmp_path);
        goto done;
    }
    *out = b;
done:
    if (rc != 0)
        cm_backup_destroy(&b);
    return rc;
}

int cm_backup_step(cm_backup *b, int pages, int64_t *copied, int64_t *total, int *done, cm_err *err)
{
    int rc = b->done ? SQLITE_DONE : sqlite3_backup_step(b->bk, pages);
    if (rc != SQLITE_OK && rc != SQLITE_DONE) /* BUSY too: the snapshot is held, nothing waits */
        return cm_err_set(err, CM_EDB, "backup to %s: %s", b->tmp_path, sqlite3_errstr(rc));
    b->done = rc == SQLITE_DONE;
    int64_t n = sqlite3_backup_pagecount(b->bk), left = sqlite3_backup_remaining(b->bk);
    if (copied)
        *copied = n - left;
    if (total)
        *total = n;
    *done = b->done;
    return 0;
}

static int fsync_file(const char *path, cm_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || fsync(fd) != 0)
        rc = cm_err_set(err, CM_EIO, "%s: fsync failed: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return rc;
}

/* The copy keeps the source's WAL flag; make it a self-contained file. */
static int make_standalone(const char *path, cm_err *err)
{
    sqlite3 *db = NULL;
    char mode[16] = "";
    int rc = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
        rc = db_error(db, err, path);
    else if ((rc = query_one(db, "PRAGMA journal_mode=DELETE", mode, sizeof(mode), NULL, err)) ==
                 0 &&
             strcmp(mode, "delete") != 0)
        rc = cm_err_set(err, CM_EDB, "%s: journal mode stays %s", path, mode);
    sqlite3_close(db);
    return rc;
}

int cm_backup_verify(const char *path, cm_backup_info *info, cm_err *err)
{
    sqlite3 *db = NULL;
    char check[256] = "";
    struct stat sb;
    int rc;
    if (stat(path, &sb) != 0)
        return cm_err_set(err, CM_ENOTFOUND, "%s: %s", path, strerror(errno));
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        rc = db_error(db, err, path);
        goto done;
    }
    if ((rc = read_identity(db, path, info, err)) != 0)
        goto done;
    if ((rc = query_one(db, "PRAGMA integrity_check(1)", check, sizeof(check), NULL, err)) != 0)
        goto done;
    if (strcmp(check, "ok") != 0) {
        rc = cm_err_set(err, CM_EDB, "%s: integrity check failed: %s", path, check);
        goto done;
    }
    if (!info->node_id[0]) {
        rc = cm_err_set(err, CM_ENOTCM, "%s: has no node id", path);
        goto done;
    }
    int64_t pages = 0;
    if ((rc = query_one(db, "PRAGMA page_count", NULL, 0, &pages, err)) != 0)
        goto done;
    info->pages = pages;
    info->bytes = (int64_t)sb.st_size;
done:
    sqlite3_close(db);
    return rc;
}

int cm_backup_finish(cm_backup *b, cm_backup_info *info, cm_err *err)
{
    cm_backup_info got;
    int rc;
    if (!b->done)
        return cm_err_set(err, CM_EINVAL, "backup to %s: not every page is copied yet",
                          b->dst_path);
    rc = sqlite3_backup_finish(b->bk);
    b->bk = NULL;
    if (rc != SQLITE_OK)
        return cm_err_set(err, CM_EDB, "backup to %s: %s", b->tmp_path, sqlite3_errstr(rc));
    sqlite3_close(b->dst);
    b->dst = NULL;
    sqlite3_exec(b->src, "COMMIT", NULL, NULL, NULL); /* ends the read snapshot */
    if ((rc = make_standalone(b->tmp_path, err)) != 0 ||
        (rc = cm_backup_verify(b->tmp_path, &got, err)) != 0)
        return rc;
    if (got.schema_version != b->want.schema_version || strcmp(got.node_id, b->want.node_id) != 0)
        return cm_err_set(err, CM_EDB,
                          "%s: the copy holds node \"%s\" schema %d, the source node \"%s\" "
                          "schema %d",
                          b->tmp_path, got.node_id, got.schema_version, b->want.node_id,
                          b->want.schema_version);
    if ((rc = fsync_file(b->tmp_path, err)) != 0)
        return rc;
    if (link(b->tmp_path, b->dst_path) != 0) /* never replaces a file that appeared meanwhile */
        return cm_err_set(err, errno == EEXIST ? CM_EEXISTS : CM_EIO, "%s: %s", b->dst_path,
                          strerror(errno));
    unlink(b->tmp_path);
    if ((rc = cm_fs_fsync_dir(b->dst_path, err)) != 0)
        return rc;
    b->finished = true;
    if (info)
        *info = got;
    return 0;
}

void cm_backup_destroy(cm_backup **b_p)
{
    cm_backup *b = b_p ? *b_p : NULL;
    if (!b)
        return;
    if (b->bk)
        sqlite3_backup_finish(b->bk);
    sqlite3_close(b->dst);
    if (b->src) {
        sqlite3_exec(b->src, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close(b->src);
    }
    if (!b->finished && b->tmp_path[0])
        unlink_with_sidecars(b->tmp_path);
    free(b);
    *b_p = NULL;
}

int cm_backup_run(const char *src, const char *dst, cm_backup_progress progress, void *ud,
                  cm_backup_info *info, cm_err *err)
{
    cm_backup *b = NULL;
    int64_t copied = 0, total = 0;
    int done = 0, rc;
    if ((rc = cm_backup_begin(src, dst, &b, err)) != 0)
        return rc;
    while (!done && rc == 0) {
        rc = cm_backup_step(b, CM_BACKUP_STEP_PAGES, &copied, &total, &done, err);
        if (rc == 0 && progress)
            progress(ud, copied, total);
    }
    if (rc == 0)
        rc = cm_backup_finish(b, info, err);
    cm_backup_destroy(&b);
    return rc;
}
