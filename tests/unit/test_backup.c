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

typedef struct fixture {
    char *dir;
    char db[1024];
    cm_store *store;
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
    cm_store_close(&f->store);
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
    cm_store_close(&copy);
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
    cm_store_close(&f->store);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
