/*
** test_backup.c -- online backup: a copy of a node's database taken while
** another connection writes is one consistent snapshot, private, checked and
** complete; targets that exist or are the database are refused; a damaged
** source is caught; nothing is left behind by a failure.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backup.h"
#include "store.h"
#include "support.h"
#include "node.h"
#include "syncgate.h"

typedef struct fixture {
    char *dir;
    char db[1024];
    cm_store *store;
    cm_test_gate gate; /* the store's syncs, once reopen_gated */
    bool gated;
} fixture;

static void exec_ok(cm_store *s, const char *sql)
{
    cm_err err;
    if (cm_store_exec(s, sql, &err) != 0)
        fail_msg("%s: %s", sql, err.msg);
}

/* A node database with `rows` node_meta rows of 1 KiB (several backup steps). */
static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    cm_store_opts o;
    cm_err err;
    f->dir = cm_test_tmpdir();
    snprintf(f->db, sizeof(f->db), "%s/caremesh.db", f->dir);
    cm_store_opts_init(&o);
    o.path = f->db;
    o.create = true;
    assert_int_equal(cm_store_open(&f->store, &o, &err), 0);
    exec_ok(f->store, "INSERT INTO node_meta(key, value) VALUES ('node_id', 'node-a')");
    exec_ok(f->store, "CREATE TABLE filler(n INTEGER PRIMARY KEY, pad TEXT)");
    exec_ok(f->store, "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c "
                      "WHERE n < 12000) INSERT INTO filler SELECT n, randomblob(1024) FROM c");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cm_test_store_close(&f->store);
    if (f->gated)
        cm_test_gate_destroy(&f->gate);
    cm_test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static void test_backup_is_a_checked_private_snapshot_while_writes_go_on(void **state)
{
    fixture *f = *state;
    cm_backup *b = NULL;
    cm_backup_info info;
    cm_err err;
    int64_t copied = 0, total = 0;
    int done = 0, steps = 0;
    const char *dst = cm_test_path(f->dir, "b.db");
    assert_int_equal(cm_backup_begin(f->db, dst, &b, &err), 0);
    while (!done) {
        assert_int_equal(cm_backup_step(b, 256, &copied, &total, &done, &err), 0);
        /* the writer goes on between steps: not in the snapshot */
        exec_ok(f->store, "INSERT INTO filler(pad) VALUES ('later')");
        steps++;
    }
    assert_true(steps > 4);
    assert_int_equal(copied, total);
    assert_false(cm_test_mode(dst) != 0xffffu); /* not there before finish */
    assert_int_equal(cm_backup_finish(b, &info, &err), 0);
    cm_backup_destroy(&b);
    assert_string_equal(info.node_id, "node-a");
    assert_int_equal(info.schema_version, CM_SCHEMA_VERSION);
    assert_int_equal(info.pages, total);
    assert_int_equal(cm_test_mode(dst), 0600);
    cm_backup_info again;
    assert_int_equal(cm_backup_verify(dst, &again, &err), 0);
    /* exactly the rows at the start: none of the writes made during the copy */
    cm_store_opts o;
    cm_store *copy = NULL;
    cm_store_opts_init(&o);
    o.path = dst;
    assert_int_equal(cm_store_open(&copy, &o, &err), 0);
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(cm_store_db(copy), "SELECT count(*) FROM filler", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 12000);
    sqlite3_finalize(st);
    cm_test_store_close(&copy);
    /* and the source has them all */
    assert_int_equal(
        sqlite3_prepare_v2(cm_store_db(f->store), "SELECT count(*) FROM filler", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 12000 + steps);
    sqlite3_finalize(st);
}

typedef struct progress {
    int calls;
    int64_t copied, total;
} progress;

static void on_progress(void *ud, int64_t copied, int64_t total)
{
    progress *p = ud;
    assert_true(copied >= p->copied); /* never goes back */
    p->calls++;
    p->copied = copied;
    p->total = total;
}

static void test_run_reports_progress_to_the_end(void **state)
{
    fixture *f = *state;
    cm_backup_info info;
    cm_err err;
    progress p = {0, 0, 0};
    assert_int_equal(
        cm_backup_run(f->db, cm_test_path(f->dir, "r.db"), on_progress, &p, &info, &err), 0);
    assert_true(p.calls >= 3); /* 12 MiB in steps of 4 MiB */
    assert_int_equal(p.copied, p.total);
    assert_int_equal(p.total, info.pages);
    assert_true(info.bytes > (int64_t)12000 * 1024);
}

static void test_targets_that_exist_or_are_the_database_are_refused(void **state)
{
    fixture *f = *state;
    cm_backup *b = NULL;
    cm_err err;
    const char *taken = cm_test_path(f->dir, "taken.db");
    cm_test_write(taken, "keep", 4);
    assert_int_equal(cm_backup_begin(f->db, taken, &b, &err), CM_EEXISTS);
    assert_null(b);
    assert_non_null(strstr(err.msg, "already exists"));
    FILE *fp = fopen(taken, "rb");
    char buf[8] = "";
    assert_non_null(fp);
    assert_int_equal(fread(buf, 1, sizeof(buf), fp), 4);
    fclose(fp);
    assert_memory_equal(buf, "keep", 4);
    assert_int_equal(cm_backup_begin(f->db, f->db, &b, &err), CM_EEXISTS);
    char wal[1100];
    snprintf(wal, sizeof(wal), "%s/../%s/caremesh.db-journal", f->dir, strrchr(f->dir, '/') + 1);
    assert_int_equal(cm_backup_begin(f->db, wal, &b, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "the node's own database file"));
    assert_int_equal(
        cm_backup_begin(cm_test_path(f->dir, "none.db"), cm_test_path(f->dir, "x.db"), &b, &err),
        CM_ENOTFOUND);
    assert_int_equal(cm_backup_begin(f->db, "/nonexistent-dir/x.db", &b, &err), CM_EIO);
}

static void test_a_foreign_or_damaged_source_leaves_nothing(void **state)
{
    fixture *f = *state;
    cm_backup_info info;
    cm_err err;
    const char *foreign = cm_test_path(f->dir, "foreign.db");
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(foreign, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE t(x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(cm_backup_run(foreign, cm_test_path(f->dir, "f.db"), NULL, NULL, &info, &err),
                     CM_ENOTCM);
    assert_int_equal(cm_test_mode(cm_test_path(f->dir, "f.db")), 0xffffu);
    /* a copy of the database with a page overwritten */
    cm_test_store_close(&f->store);
    const char *dst = cm_test_path(f->dir, "ok.db");
    assert_int_equal(cm_backup_run(f->db, dst, NULL, NULL, &info, &err), 0);
    FILE *fp = fopen(dst, "r+b");
    assert_non_null(fp);
    fseek(fp, 4096L * 3, SEEK_SET);
    char junk[4096];
    memset(junk, 0x5a, sizeof(junk));
    fwrite(junk, 1, sizeof(junk), fp);
    fclose(fp);
    assert_int_not_equal(cm_backup_verify(dst, &info, &err), 0);
    assert_int_not_equal(cm_backup_run(dst, cm_test_path(f->dir, "d.db"), NULL, NULL, &info, &err),
                         0);
    assert_int_equal(cm_test_mode(cm_test_path(f->dir, "d.db")), 0xffffu);
    DIR *d = opendir(f->dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp."))
            fail_msg("a temp file is left: %s", e->d_name);
    closedir(d);
}

/* The node's store again, its WAL syncs through f->gate (in the fixture:
** the store's sync thread may still use it when a failed assertion leaves). */
static void reopen_gated(fixture *f)
{
    cm_store_opts o;
    cm_err err;
    cm_test_gate *g = &f->gate;
    cm_test_store_close(&f->store);
    cm_test_gate_init(g);
    f->gated = true;
    cm_store_opts_init(&o);
    o.path = f->db;
    o.sync_fn = cm_test_gate_sync;
    o.sync_ud = g;
    assert_int_equal(cm_store_open(&f->store, &o, &err), 0);
}

static void deferred_set(cm_store *s, const char *value)
{
    cm_err err;
    assert_int_equal(cm_store_begin_deferred(s, &err), 0);
    assert_int_equal(cm_store_meta_set(s, "k", value, &err), 0);
    assert_int_equal(cm_store_commit(s, &err), 0);
}

/* The backup's sync of the source's WAL (cm_backup_begin_with_sync): counts,
** then (write set) the node commits once more, after the sync began. */
typedef struct wal_sync {
    int syncs, fail;
    cm_store *write; /* the node's store, or NULL */
} wal_sync;

static int sync_then_commit(void *ud, int fd)
{
    wal_sync *w = ud;
    w->syncs++;
    int rc = w->fail ? w->fail : (fdatasync(fd) == 0 ? 0 : errno);
    if (w->write)
        deferred_set(w->write, "v3");
    return rc;
}

static char *copy_meta(const char *path, const char *key)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *v = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT value FROM node_meta WHERE key = ?1", -1, &st, NULL) ==
            SQLITE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            v = strdup((const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* A node's deferred commit whose sync is held is in the WAL file but maybe
** not on disk: a backup taken then syncs the WAL itself once its snapshot is
** fixed, so what it copies is durable (the commit made after that sync
** began is not in the copy), and it never waits for the node's sync. */
static void test_a_backup_holds_only_commits_made_durable(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = &f->gate;
    cm_backup *b = NULL;
    cm_backup_info info;
    cm_err err;
    int64_t copied, total;
    int done = 0;
    reopen_gated(f);
    cm_test_gate_hold(g, true);
    deferred_set(f->store, "v2"); /* its sync is held */
    bool held = cm_test_gate_wait_held(g, 1);
    uint64_t v2 = cm_store_commit_seq(f->store);
    wal_sync w = {0, 0, f->store};
    const char *dst = cm_test_path(f->dir, "held.db");
    int rc = cm_backup_begin_with_sync(f->db, dst, sync_then_commit, &w, &b, &err);
    while (rc == 0 && !done)
        rc = cm_backup_step(b, -1, &copied, &total, &done, &err);
    if (rc == 0)
        rc = cm_backup_finish(b, &info, &err);
    cm_backup_destroy(&b);
    bool node_synced = cm_store_synced_seq(f->store) >= v2;
    cm_test_gate_hold(g, false); /* before any assertion: a held sync hangs the close */
    assert_true(held);
    assert_int_equal(rc, 0);
    assert_false(node_synced); /* the backup did not wait for the node's sync */
    assert_int_equal(w.syncs, 1);
    char *v = copy_meta(dst, "k");
    assert_non_null(v);
    assert_string_equal(v, "v2");
    free(v);
}

/* A backup whose sync of the source's WAL fails takes nothing: CM_EIO naming
** the WAL, no file at the target, no temp file left. */
static void test_a_backup_whose_wal_sync_fails_leaves_nothing(void **state)
{
    fixture *f = *state;
    cm_backup *b = NULL;
    cm_err err;
    wal_sync w = {0, EIO, NULL};
    const char *dst = cm_test_path(f->dir, "eio.db");
    assert_int_equal(cm_backup_begin_with_sync(f->db, dst, sync_then_commit, &w, &b, &err), CM_EIO);
    assert_null(b);
    assert_int_equal(w.syncs, 1);
    assert_non_null(strstr(err.msg, "caremesh.db-wal: fdatasync failed"));
    assert_non_null(strstr(err.msg, "no backup was taken"));
    assert_int_equal(cm_test_mode(dst), 0xffffu);
    DIR *d = opendir(f->dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp."))
            fail_msg("a temp file is left: %s", e->d_name);
    closedir(d);
}

/* A source named through a symlink: SQLite keeps its WAL beside the file the
** link names, and that WAL is the one synced (not a "<link>-wal" that does
** not exist, which would take the backup for one of a source with no WAL). */
static void test_a_backup_through_a_symlink_syncs_the_sources_wal(void **state)
{
    fixture *f = *state;
    cm_backup *b = NULL;
    cm_backup_info info;
    cm_err err;
    int done = 0;
    char *ldir = cm_test_tmpdir();
    char link_path[1100];
    snprintf(link_path, sizeof(link_path), "%s/node.db", ldir);
    assert_int_equal(symlink(f->db, link_path), 0);
    wal_sync w = {0, 0, NULL};
    const char *dst = cm_test_path(f->dir, "via-link.db");
    int rc = cm_backup_begin_with_sync(link_path, dst, sync_then_commit, &w, &b, &err);
    while (rc == 0 && !done)
        rc = cm_backup_step(b, -1, NULL, NULL, &done, &err);
    if (rc == 0)
        rc = cm_backup_finish(b, &info, &err);
    cm_backup_destroy(&b);
    cm_test_rmtree(ldir);
    free(ldir);
    assert_int_equal(rc, 0);
    assert_int_equal(w.syncs, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_backup_is_a_checked_private_snapshot_while_writes_go_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_reports_progress_to_the_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_targets_that_exist_or_are_the_database_are_refused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_foreign_or_damaged_source_leaves_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_backup_holds_only_commits_made_durable, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_backup_whose_wal_sync_fails_leaves_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_backup_through_a_symlink_syncs_the_sources_wal,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
