/*
** test_store.c -- the SQLite store: creation modes, pragmas, migrations,
** refusal of foreign, corrupt and newer databases, kept statements.
*/
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "store.h"
#include "support.h"
#include "failvfs.h"
#include "node.h"
#include "syncgate.h"

/* What a store's sync thread told its listener (cm_store_on_synced). */
typedef struct notes {
    pthread_mutex_t mu;
    int n;
} notes;

/* The gated tests' store, its sync gate and its listener's notes live
** here, not on a test's stack: a failed assertion leaves the test while the
** sync thread may wait on the gate, and teardown releases the gate and
** closes the store (joining the thread) before any of it is freed. */
typedef struct fixture {
    char *dir;
    char *db;
    cm_store *gated; /* open_gated's store, closed by close_gated or teardown */
    cm_test_gate gate;
    bool gate_init;
    notes notes;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    pthread_mutex_init(&f->notes.mu, NULL);
    f->dir = cm_test_tmpdir();
    f->db = strdup(cm_test_path(f->dir, "caremesh.db"));
    *state = f;
    return f->dir ? 0 : -1;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f->gate_init)
        cm_test_gate_hold(&f->gate, false); /* a held sync would hang the close */
    cm_test_store_close(&f->gated);
    if (f->gate_init)
        cm_test_gate_destroy(&f->gate);
    pthread_mutex_destroy(&f->notes.mu);
    cm_test_rmtree(f->dir);
    free(f->dir);
    free(f->db);
    free(f);
    return 0;
}

/* The VFS whose syncs fail on demand (failvfs.h): static, removed in teardown. */
static cm_test_failvfs failvfs;

static int teardown_vfs(void **state)
{
    cm_test_failvfs_remove(&failvfs);
    return teardown(state);
}

static cm_store *open_store(const char *path, bool create, cm_err *err)
{
    cm_store_opts o;
    cm_store *s = NULL;
    cm_store_opts_init(&o);
    o.path = path;
    o.create = create;
    cm_store_open(&s, &o, err);
    return s;
}

/* A new store at path whose checkpoints are set by checkpoint_pages
** (cm_store_opts). */
static cm_store *open_checkpointing(const char *path, int checkpoint_pages)
{
    cm_store_opts o;
    cm_store *s = NULL;
    cm_err err;
    cm_store_opts_init(&o);
    o.path = path;
    o.create = true;
    o.checkpoint_pages = checkpoint_pages;
    assert_int_equal(cm_store_open(&s, &o, &err), 0);
    return s;
}

static int pragma_int(cm_store *s, const char *sql)
{
    sqlite3_stmt *st;
    int v = -1;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(s), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void test_create_makes_private_wal_database(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    assert_int_equal(cm_test_mode(f->db), 0600);
    assert_int_equal(pragma_int(s, "PRAGMA foreign_keys"), 1);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 2); /* FULL */
    assert_int_equal(pragma_int(s, "PRAGMA application_id"), (int)CM_APPLICATION_ID);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(cm_store_db(s), "PRAGMA journal_mode", -1, &st, NULL);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    assert_int_equal(cm_store_schema_version(s), CM_SCHEMA_VERSION);
    /* The WAL file inherits the database's private mode. */
    assert_int_equal(cm_store_exec(s, "INSERT INTO node_meta VALUES ('k','v')", &err), 0);
    assert_int_equal(cm_test_mode(cm_test_path(f->dir, "caremesh.db-wal")), 0600);
    cm_test_store_close(&s);
    assert_null(s);
}

static void test_synchronous_is_configurable(void **state)
{
    fixture *f = *state;
    cm_store_opts o;
    cm_store *s = NULL;
    cm_err err;
    cm_store_opts_init(&o);
    o.path = f->db;
    o.create = true;
    o.synchronous = CM_SYNC_NORMAL;
    assert_int_equal(cm_store_open(&s, &o, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 1);
    cm_test_store_close(&s);
    assert_int_equal(cm_sync_parse("extra"), CM_SYNC_EXTRA);
    assert_int_equal(cm_sync_parse("fast"), -1);
}

/* A nosync transaction commits at NORMAL (no fsync of its own) and keeps
** what it wrote; the level the store was opened with is back after its
** commit, its rollback, and a begin that failed; a store opened below FULL
** is left as it is. */
static void test_nosync_transaction_is_the_only_one_below_full(void **state)
{
    fixture *f = *state;
    cm_store_opts o;
    cm_store *s = NULL;
    cm_err err;
    cm_store_opts_init(&o);
    o.path = f->db;
    o.create = true;
    o.synchronous = CM_SYNC_EXTRA;
    o.busy_timeout_ms = 50;
    assert_int_equal(cm_store_open(&s, &o, &err), 0);
    assert_int_equal(cm_store_begin_nosync(s, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 1);
    assert_int_equal(cm_store_meta_set(s, "k", "kept", &err), 0);
    assert_int_equal(cm_store_commit(s, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 3);
    assert_int_equal(cm_store_begin(s, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 3);
    cm_store_rollback(s);
    assert_int_equal(cm_store_begin_nosync(s, &err), 0);
    assert_int_equal(cm_store_meta_set(s, "k", "rolled back", &err), 0);
    cm_store_rollback(s);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 3);
    /* another connection holds the write lock: begin fails, level back */
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(f->db, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(cm_store_begin_nosync(s, &err), CM_EDB);
    assert_non_null(strstr(err.msg, "write lock"));
    assert_false(cm_store_in_tx(s));
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 3);
    sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(other);
    char *v = cm_store_meta_get(s, "k", &err);
    assert_string_equal(v, "kept");
    free(v);
    cm_test_store_close(&s);
    /* opened at NORMAL: nosync changes nothing, and the level stays */
    o.synchronous = CM_SYNC_NORMAL;
    o.create = false;
    assert_int_equal(cm_store_open(&s, &o, &err), 0);
    assert_int_equal(cm_store_begin_nosync(s, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 1);
    assert_int_equal(cm_store_commit(s, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 1);
    cm_test_store_close(&s);
}

static void test_missing_database_without_create_is_not_found(void **state)
{
    fixture *f = *state;
    cm_err err;
    assert_null(open_store(f->db, false, &err));
    assert_int_equal(err.code, CM_ENOTFOUND);
    assert_non_null(strstr(err.msg, "caremesh init"));
    assert_int_equal(access(f->db, F_OK), -1); /* nothing created */
}

static void test_migrations_apply_once(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    cm_test_store_close(&s);
    s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM schema_version"), CM_SCHEMA_VERSION);
    assert_int_equal(pragma_int(s, "SELECT max(version) FROM schema_version"), CM_SCHEMA_VERSION);
    cm_test_store_close(&s);
}

static void test_newer_schema_is_refused(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_int_equal(cm_store_exec(s,
                                   "INSERT INTO schema_version(version, description) "
                                   "VALUES (99, 'from the future')",
                                   &err),
                     0);
    cm_test_store_close(&s);
    assert_null(open_store(f->db, false, &err));
    assert_int_equal(err.code, CM_ESCHEMA);
    assert_non_null(strstr(err.msg, "schema version 99 is newer"));
}

static void test_foreign_sqlite_database_is_refused(void **state)
{
    fixture *f = *state;
    sqlite3 *db;
    cm_err err;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE invoices(id INTEGER)", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_null(open_store(f->db, false, &err));
    assert_int_equal(err.code, CM_ENOTCM);
    assert_non_null(strstr(err.msg, "another application"));
    /* and it was left alone */
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_schema", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void test_corrupt_file_is_refused(void **state)
{
    fixture *f = *state;
    cm_err err;
    char junk[8192];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(i * 7 + 3);
    cm_test_write(f->db, junk, sizeof(junk));
    assert_null(open_store(f->db, false, &err));
    assert_int_equal(err.code, CM_ENOTCM);
    assert_non_null(strstr(err.msg, "not a caremesh database"));
}

static int count_nested(void *ud, cm_err *err)
{
    int *n = ud;
    return ++*n == 2 ? cm_err_set(err, CM_EDB, "refused") : 0;
}

/* The armed callback runs once, at the first nested write, and its error is
** the writer's. */
static void test_nested_write_runs_the_armed_callback_once(void **state)
{
    fixture *f = *state;
    cm_err err;
    int n = 0;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_nested_write(s, &err), 0); /* nothing armed */
    cm_store_on_nested_write(s, count_nested, &n);
    assert_int_equal(cm_store_nested_write(s, &err), 0);
    assert_int_equal(cm_store_nested_write(s, &err), 0);
    assert_int_equal(n, 1);
    cm_store_on_nested_write(s, count_nested, &n);
    assert_int_equal(cm_store_nested_write(s, &err), CM_EDB);
    assert_string_equal(err.msg, "refused");
    cm_store_on_nested_write(s, count_nested, &n);
    cm_store_on_nested_write(s, NULL, NULL); /* disarmed */
    assert_int_equal(cm_store_nested_write(s, &err), 0);
    assert_int_equal(n, 2);
    cm_test_store_close(&s);
}

static void test_prepared_statements_are_kept(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    sqlite3_stmt *a = cm_store_prepare(s, "SELECT 1", &err);
    sqlite3_stmt *b = cm_store_prepare(s, "SELECT 1", &err);
    assert_non_null(a);
    assert_ptr_equal(a, b);
    assert_null(cm_store_prepare(s, "SELEKT nonsense", &err));
    assert_int_equal(err.code, CM_EDB);
    assert_non_null(strstr(err.msg, "syntax error"));
    cm_test_store_close(&s);
}

static void test_meta_roundtrip_and_rollback(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_int_equal(cm_store_meta_set(s, "node_id", "clinic-a", &err), 0);
    char *v = cm_store_meta_get(s, "node_id", &err);
    assert_string_equal(v, "clinic-a");
    free(v);
    assert_int_equal(cm_store_begin(s, &err), 0);
    assert_true(cm_store_in_tx(s));
    assert_int_equal(cm_store_meta_set(s, "node_id", "changed", &err), 0);
    cm_store_rollback(s);
    assert_false(cm_store_in_tx(s));
    v = cm_store_meta_get(s, "node_id", &err);
    assert_string_equal(v, "clinic-a");
    free(v);
    assert_null(cm_store_meta_get(s, "absent", &err));
    assert_int_equal(err.code, CM_ENOTFOUND);
    cm_test_store_close(&s);
}

/* A reader for another thread reads what the writer committed, and
** cannot write; it needs the database to exist. */
static void test_read_only_store_reads_and_cannot_write(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store_opts o;
    cm_store *r = NULL;
    cm_store_opts_init(&o);
    o.path = f->db;
    o.read_only = true;
    o.create = true; /* ignored: a reader never creates */
    assert_int_equal(cm_store_open(&r, &o, &err), CM_ENOTFOUND);
    assert_null(r);
    cm_store *w = open_store(f->db, true, &err);
    assert_non_null(w);
    assert_int_equal(cm_store_meta_set(w, "node_id", "clinic-a", &err), 0);
    assert_int_equal(cm_store_open(&r, &o, &err), 0);
    char *v = cm_store_meta_get(r, "node_id", &err);
    assert_string_equal(v, "clinic-a");
    free(v);
    assert_int_not_equal(cm_store_meta_set(r, "node_id", "changed", &err), 0);
    assert_int_equal(pragma_int(r, "PRAGMA query_only"), 1);
    cm_test_store_close(&r);
    v = cm_store_meta_get(w, "node_id", &err);
    assert_string_equal(v, "clinic-a");
    free(v);
    cm_test_store_close(&w);
}

static void test_foreign_keys_are_enforced(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_int_not_equal(cm_store_exec(s,
                                       "INSERT INTO record_ref VALUES "
                                       "('provider','p1','organization','organization','nope')",
                                       &err),
                         0);
    assert_int_equal(err.code, CM_EREF);
    cm_test_store_close(&s);
}

static void test_database_readable_by_others_is_refused(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    cm_test_store_close(&s);
    chmod(f->db, 0644);
    assert_null(open_store(f->db, false, &err));
    assert_int_equal(err.code, CM_EPERM);
    assert_non_null(strstr(err.msg, "permissions 0644"));
}

static void test_unwritable_location_is_reported(void **state)
{
    fixture *f = *state;
    cm_err err;
    /* a regular file where a directory should be */
    cm_test_write(cm_test_path(f->dir, "file"), "x", 1);
    assert_null(open_store(cm_test_path(f->dir, "file/caremesh.db"), true, &err));
    assert_true(err.code == CM_EIO || err.code == CM_EPERM);
    assert_non_null(strstr(err.msg, "file/caremesh.db"));
}

/* Set node_meta's keys k<from> to k<from + rows - 1> to value, in the
** transaction the caller opened. */
static void put_rows(cm_store *s, int from, int rows, const char *value)
{
    cm_err err;
    for (int r = 0; r < rows; r++) {
        char key[32];
        snprintf(key, sizeof(key), "k%06d", from + r);
        assert_int_equal(cm_store_meta_set(s, key, value, &err), 0);
    }
}

/* A value of ~1 KB, every byte c. */
static void fill_kb(char value[1024], char c)
{
    memset(value, c, 1023);
    value[1023] = '\0';
}

/* Write `commits` transactions of `rows` rows of ~1 KB each into node_meta. */
static void write_rows(cm_store *s, int from, int commits, int rows)
{
    char value[1024];
    cm_err err;
    fill_kb(value, 'v');
    for (int c = 0; c < commits; c++) {
        assert_int_equal(cm_store_begin(s, &err), 0);
        put_rows(s, from + c * rows, rows, value);
        assert_int_equal(cm_store_commit(s, &err), 0);
    }
}

static int count_rows(cm_store *s)
{
    return pragma_int(s, "SELECT count(*) FROM node_meta WHERE key LIKE 'k%'");
}

/* count_rows of the database at path, opened anew (and closed). */
static int rows_after_reopen(const char *path)
{
    cm_err err;
    cm_store *s = open_store(path, false, &err);
    assert_non_null(s);
    int n = count_rows(s);
    cm_test_store_close(&s);
    return n;
}

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* Checkpoints run on the store's thread; the writer finishes the last pages
** so the WAL starts over, and the WAL stays within its bound. */
static void test_checkpoints_run_off_the_commit_path(void **state)
{
    fixture *f = *state;
    cm_store *s = NULL;
    cm_store_ckpt_stats ck;
    cm_err err;
    s = open_checkpointing(f->db, 16); /* thread from 16 pages, restart from 64, bound 128 */
    write_rows(s, 0, 300, 4);          /* ~1,200 pages through the WAL */
    cm_store_ckpt_stats_get(s, &ck);
    assert_true(ck.background > 0);
    assert_true(ck.inline_runs > 0); /* the WAL started over */
    /* the thread synced what it copied of a part of the WAL: the writer's
    ** finishing sync has only its own pages */
    assert_int_equal(ck.db_syncs, ck.partial);
    assert_true(ck.max_wal_pages >= 16); /* it did grow to need them */
    /* the bound (128 pages) plus one commit's pages */
    assert_true(ck.max_wal_pages <= 128 + 16);
    long page = pragma_int(s, "PRAGMA page_size");
    assert_true(file_size(cm_test_path(f->dir, "caremesh.db-wal")) <=
                (128 + 16) * (page + 24) + 32);
    assert_int_equal(count_rows(s), 1200);
    cm_test_store_close(&s);
    /* everything is in the database file: the WAL is gone, the rows are there */
    assert_int_equal(file_size(cm_test_path(f->dir, "caremesh.db-wal")), -1);
    assert_non_null(s = open_store(f->db, false, &err));
    assert_int_equal(count_rows(s), 1200);
    cm_test_store_close(&s);
}

/* Descriptors open on path's file, as /proc/self/fd shows them. */
static int fds_on(const char *path)
{
    struct stat want, got;
    char link[64];
    int n = 0;
    if (stat(path, &want) != 0)
        return -1;
    for (int fd = 0; fd < 1024; fd++) {
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        n += stat(link, &got) == 0 && got.st_dev == want.st_dev && got.st_ino == want.st_ino;
    }
    return n;
}

/* The checkpoint thread syncs the database file through its connection's
** own file, not a descriptor of the store's: closing one (the store's
** close, a thread that could not start) drops every POSIX lock the process
** holds on the file, SQLite's too, and another process closing its last
** connection then checkpoints and deletes the WAL this one still writes. */
static void test_checkpoint_thread_opens_no_descriptor_of_its_own(void **state)
{
    fixture *f = *state;
    cm_store *s = NULL;
    cm_store_ckpt_stats ck;
    s = open_checkpointing(f->db, 16);
    int writer = fds_on(f->db); /* the writer's connection */
    assert_true(writer >= 1);
    write_rows(s, 0, 300, 4);
    cm_store_ckpt_stats_get(s, &ck);
    assert_true(ck.background > 0);
    assert_int_equal(ck.db_syncs, ck.partial);
    assert_int_equal(fds_on(f->db), writer + 1); /* and the thread's connection: no other */
    cm_test_store_close(&s);
}

/* A reader holding an old snapshot (a backup, an API read) keeps the WAL
** from starting over; commits go on, nothing waits forever, and once the
** reader is done the WAL is checkpointed and starts over again. */
static void test_checkpoints_wait_for_no_reader(void **state)
{
    fixture *f = *state;
    cm_store *s = NULL;
    cm_store_ckpt_stats ck;
    sqlite3 *reader = NULL;
    sqlite3_stmt *st = NULL;
    s = open_checkpointing(f->db, 16);
    write_rows(s, 0, 10, 4);
    assert_int_equal(sqlite3_open_v2(f->db, &reader, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(reader, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(reader, "SELECT count(*) FROM node_meta", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int seen = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    write_rows(s, 40, 100, 4); /* past the bound while the reader holds its snapshot */
    cm_store_ckpt_stats_get(s, &ck);
    assert_true(ck.max_wal_pages > 128); /* the reader pins the WAL */
    /* what the thread copied up to the reader's snapshot, it synced */
    assert_int_equal(ck.db_syncs, ck.partial);
    /* the reader still sees its snapshot */
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), seen);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(reader, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(reader);
    long runs = ck.inline_runs;
    write_rows(s, 440, 40, 4);
    cm_store_ckpt_stats_get(s, &ck);
    assert_true(ck.inline_runs > runs);
    assert_int_equal(count_rows(s), 600);
    cm_test_store_close(&s);
}

/* Negative checkpoint_pages: SQLite's own checkpoints (from 1,000 pages),
** in the commit. */
static void test_checkpoints_inline_when_asked(void **state)
{
    fixture *f = *state;
    cm_store *s = NULL;
    cm_store_ckpt_stats ck;
    s = open_checkpointing(f->db, -1);
    uint64_t before = cm_store_commit_seq(s);
    write_rows(s, 0, 400, 4);
    assert_int_equal(cm_store_commit_seq(s), before + 400); /* the store's hook counted them */
    cm_store_ckpt_stats_get(s, &ck);
    assert_int_equal(ck.background + ck.inline_runs, 0);
    long page = pragma_int(s, "PRAGMA page_size");
    /* ~3,200 pages were written: without checkpoints the WAL would hold them all */
    assert_true(file_size(cm_test_path(f->dir, "caremesh.db-wal")) <= 1200 * (page + 24) + 32);
    assert_int_equal(count_rows(s), 1600);
    cm_test_store_close(&s);
}

/* PRAGMA wal_autocheckpoint = N on the writer would replace the store's WAL
** hook with SQLite's own, and deferred commits would go uncounted (their
** acks never told, or told before their sync): refused, naming it, however
** spelled; reading it is harmless, and commits still count after. */
static void test_wal_autocheckpoint_cannot_replace_the_store_hook(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_exec(s, "PRAGMA wal_autocheckpoint=16", &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "PRAGMA wal_autocheckpoint cannot be set"));
    assert_non_null(strstr(err.msg, "WAL hook"));
    assert_int_equal(cm_store_exec(s, "pragma main.WAL_AUTOCHECKPOINT(0)", &err), CM_EINVAL);
    assert_null(cm_store_prepare(s, "PRAGMA wal_autocheckpoint = 1", &err));
    assert_int_equal(err.code, CM_EINVAL);
    assert_true(pragma_int(s, "PRAGMA wal_autocheckpoint") >= 0);
    uint64_t before = cm_store_commit_seq(s);
    write_rows(s, 0, 2, 1);
    assert_int_equal(cm_store_commit_seq(s), before + 2);
    cm_test_store_close(&s);
}

/* With SQLite's own checkpoints, a commit that makes the WAL large enough
** checkpoints after it; a checkpoint that cannot run (here: a statement of
** the writer's still reads) changes nothing of the commit, which succeeded
** and counts, as with SQLite's default hook. */
static void test_an_inline_checkpoint_that_cannot_run_leaves_the_commit_good(void **state)
{
    fixture *f = *state;
    cm_store *s = NULL;
    cm_err err;
    s = open_checkpointing(f->db, -1);
    sqlite3_stmt *reading;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(s), "SELECT version FROM schema_version", -1,
                                        &reading, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(reading), SQLITE_ROW); /* a read stays open */
    uint64_t before = cm_store_commit_seq(s);
    assert_int_equal(cm_store_begin(s, &err), 0);
    assert_int_equal(cm_store_exec(s,
                                   "CREATE TABLE big(b BLOB);"
                                   "INSERT INTO big VALUES (zeroblob(6000000))",
                                   &err),
                     0); /* ~1500 pages: over SQLite's 1000 */
    assert_int_equal(cm_store_commit(s, &err), 0);
    assert_int_equal(cm_store_commit_seq(s), before + 1);
    assert_int_equal(cm_store_synced_seq(s), before + 1);
    sqlite3_finalize(reading);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM big"), 1);
    cm_test_store_close(&s);
}

/* Blocks freed on a thread stay in its pool until the thread ends, and are
** freed then (valgrind and LeakSanitizer would report them otherwise). */
static void *pool_thread(void *arg)
{
    void *b[10];
    for (int i = 0; i < 10; i++)
        b[i] = sqlite3_malloc(40 * (i + 1));
    for (int i = 0; i < 10; i++)
        sqlite3_free(b[i]);
    sqlite3_free(sqlite3_malloc(65544));
    return arg;
}

/* SQLite's small blocks (and the last big one) are kept per thread for the
** next request of their class (main() set the allocator up first). */
static void test_small_blocks_are_kept_per_thread(void **state)
{
    void *a = sqlite3_malloc(100);
    assert_non_null(a);
    assert_int_equal(sqlite3_msize(a), 128); /* its class */
    sqlite3_free(a);
    void *b = sqlite3_malloc(120);
    assert_ptr_equal(b, a); /* the same block, from this thread's pool */
    void *c = sqlite3_malloc(100);
    assert_ptr_not_equal(c, b);
    sqlite3_free(b);
    sqlite3_free(c);
    void *big = sqlite3_malloc(65544);
    assert_non_null(big);
    sqlite3_free(big);
    void *again = sqlite3_malloc(65544);
    assert_ptr_equal(again, big);
    sqlite3_free(again);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pool_thread, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
}

/* Migration 10: a database whose outbox was indexed by (status, peer, seq)
** keeps the last row delivered to each peer, and indexes pending rows
** alone; what the rows say is unchanged. */
static void test_outbox_index_migration_keeps_the_last_delivered(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    assert_int_equal(
        cm_store_exec(s,
                      CM_TEST_UNDO_INSTANCE_STEP /* what later versions made */
                      "DROP VIEW outbox_state;"
                      "DROP TABLE fed_delivered; DROP INDEX outbox_pending;"
                      "CREATE INDEX outbox_by_peer ON outbox(status, peer, seq);"
                      "DELETE FROM schema_version WHERE version >= 10;"
                      "INSERT INTO outbox(seq, receiver, kind, payload, created, status, peer) "
                      "VALUES (1, 'o', 'k', '{}', 't', 'delivered', 'b'),"
                      " (2, 'o', 'k', '{}', 't', 'delivered', 'c'),"
                      " (3, 'o', 'k', '{}', 't', 'delivered', 'b'),"
                      " (4, 'o', 'k', '{}', 't', 'refused', 'b'),"
                      " (5, 'o', 'k', '{}', 't', 'pending', 'b'),"
                      " (6, 'o', 'k', '{}', 't', 'pending', NULL);",
                      &err),
        0);
    cm_test_store_close(&s);
    s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_schema_version(s), CM_SCHEMA_VERSION);
    assert_int_equal(pragma_int(s, "SELECT seq FROM fed_delivered WHERE peer = 'b'"), 3);
    assert_int_equal(pragma_int(s, "SELECT seq FROM fed_delivered WHERE peer = 'c'"), 2);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM fed_delivered"), 2);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM sqlite_master WHERE name = "
                                   "'outbox_by_peer'"),
                     0);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM outbox WHERE status = 'pending' AND "
                                   "peer = 'b' AND seq > 0"),
                     1);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM outbox WHERE status = 'pending' AND "
                                   "peer IS NULL"),
                     1);
    cm_test_store_close(&s);
}

/* Migration 11: a peer's last delivered row is moved back below a row
** left pending under it (answered out of order before), to the last row
** delivered before that one; outbox_state tells a pending row at or below
** its peer's mark as delivered. */
static void test_delivered_mark_migration_keeps_rows_answered_out_of_order(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    assert_int_equal(
        cm_store_exec(s,
                      CM_TEST_UNDO_INSTANCE_STEP /* what later versions made */
                      "DROP VIEW outbox_state;"
                      "DELETE FROM schema_version WHERE version >= 11;"
                      "INSERT INTO outbox(seq, receiver, kind, payload, created, status, peer) "
                      "VALUES (1, 'o', 'k', '{}', 't', 'delivered', 'b'),"
                      " (2, 'o', 'k', '{}', 't', 'pending', 'b'),"
                      " (3, 'o', 'k', '{}', 't', 'delivered', 'b'),"
                      " (4, 'o', 'k', '{}', 't', 'pending', 'b'),"
                      " (5, 'o', 'k', '{}', 't', 'delivered', 'c'),"
                      " (6, 'o', 'k', '{}', 't', 'pending', 'c'),"
                      " (7, 'o', 'k', '{}', 't', 'refused', 'd'),"
                      " (8, 'o', 'k', '{}', 't', 'pending', 'd');"
                      "INSERT INTO fed_delivered(peer, seq) VALUES ('b', 3), ('c', 5), ('d', 9);",
                      &err),
        0);
    cm_test_store_close(&s);
    s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_schema_version(s), CM_SCHEMA_VERSION);
    assert_int_equal(pragma_int(s, "SELECT seq FROM fed_delivered WHERE peer = 'b'"), 1);
    assert_int_equal(pragma_int(s, "SELECT seq FROM fed_delivered WHERE peer = 'c'"), 5);
    assert_int_equal(pragma_int(s, "SELECT seq FROM fed_delivered WHERE peer = 'd'"), 0);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(s),
                                        "SELECT group_concat(status, ' ') FROM "
                                        "(SELECT status FROM outbox_state ORDER BY seq)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0),
                        "delivered pending delivered pending delivered pending refused pending");
    sqlite3_finalize(st);
    /* a pending row at or below its peer's mark reads as delivered */
    assert_int_equal(cm_store_exec(s, "UPDATE fed_delivered SET seq = 6 WHERE peer = 'c'", &err),
                     0);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM outbox_state WHERE seq = 6 AND "
                                   "status = 'delivered'"),
                     1);
    cm_test_store_close(&s);
}

/* ---- deferred commits: the fsync on the store's sync thread ------------ */

/* The fixture's sync gate, made ready on first use. */
static cm_test_gate *gate_of(fixture *f)
{
    if (!f->gate_init) {
        cm_test_gate_init(&f->gate);
        f->gate_init = true;
    }
    return &f->gate;
}

/* Open (creating) the store at path as f->gated, its WAL synced through
** f's gate; NULL with *err on failure. One at a time: close_gated first. */
static cm_store *open_gated(fixture *f, const char *path, cm_sync level, cm_err *err)
{
    cm_store_opts o;
    assert_null(f->gated);
    cm_store_opts_init(&o);
    o.path = path;
    o.create = true;
    o.synchronous = level;
    o.sync_fn = cm_test_gate_sync;
    o.sync_ud = gate_of(f);
    cm_store_open(&f->gated, &o, err);
    return f->gated;
}

static void close_gated(fixture *f)
{
    cm_test_store_close(&f->gated);
}

static void count_note(void *ud)
{
    notes *c = ud;
    pthread_mutex_lock(&c->mu);
    c->n++;
    pthread_mutex_unlock(&c->mu);
}

static int notes_n(notes *c)
{
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static uint64_t deferred_write(cm_store *s, const char *value)
{
    cm_err err;
    assert_int_equal(cm_store_begin_deferred(s, &err), 0);
    assert_int_equal(cm_store_meta_set(s, "k", value, &err), 0);
    assert_int_equal(cm_store_commit(s, &err), 0);
    return cm_store_commit_seq(s);
}

/* A store opened through a symlink: its WAL is beside the real file, and
** the sync thread syncs that one (before, it looked for "<link>-wal", found
** none, and every deferred commit fell back to a synced one). */
static void test_a_symlinked_store_syncs_the_wal_sqlite_uses(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    cm_err err;
    char link[1100];
    snprintf(link, sizeof(link), "%s/link.db", f->dir);
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    cm_test_store_close(&s);
    assert_int_equal(symlink(f->db, link), 0);
    s = open_gated(f, link, CM_SYNC_FULL, &err);
    assert_non_null(s);
    cm_test_gate_zero(g);
    uint64_t a = deferred_write(s, "v");
    assert_int_equal(cm_store_sync_wait(s, a, &err), 0);
    assert_int_equal(cm_test_gate_started(g), 1); /* by the thread, through the gate */
    close_gated(f);
}

/* A deferred commit is not durable until the sync thread's sync of it ends:
** held, the watermark stays below it; released, it passes it, and the
** listener hears. Its transaction ran at NORMAL; the level is back after. */
static void test_deferred_commit_is_durable_only_after_its_sync(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    notes *c = &f->notes;
    cm_err err;
    cm_store *s = open_gated(f, f->db, CM_SYNC_FULL, &err);
    assert_non_null(s);
    cm_store_on_synced(s, count_note, c);
    cm_test_gate_hold(g, true);
    uint64_t before = cm_store_commit_seq(s);
    assert_int_equal(cm_store_begin_deferred(s, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 1);
    assert_int_equal(cm_store_meta_set(s, "k", "v1", &err), 0);
    assert_int_equal(cm_store_commit(s, &err), 0);
    assert_int_equal(pragma_int(s, "PRAGMA synchronous"), 2);
    uint64_t seq = cm_store_commit_seq(s);
    assert_int_equal(seq, before + 1);
    assert_true(cm_test_gate_wait_held(g, 1));
    assert_true(cm_store_synced_seq(s) < seq);
    assert_int_equal(notes_n(c), 0);
    cm_test_gate_hold(g, false);
    assert_int_equal(cm_store_sync_wait(s, seq, &err), 0);
    assert_true(cm_store_synced_seq(s) >= seq);
    assert_int_equal(notes_n(c), 1);
    assert_int_equal(cm_test_gate_started(g), 1);
    char *v = cm_store_meta_get(s, "k", &err);
    assert_string_equal(v, "v1");
    free(v);
    cm_store_on_synced(s, NULL, NULL);
    close_gated(f);
}

/* A process killed between a deferred commit and its sync through the
** store at path: the commit is left in the WAL, unsynced. */
static void leave_an_unsynced_wal(fixture *f, const char *path)
{
    cm_err err;
    cm_store *s = open_gated(f, f->db, CM_SYNC_FULL, &err); /* created, closed cleanly */
    assert_non_null(s);
    close_gated(f);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        cm_store *k = open_gated(f, path, CM_SYNC_FULL, &err);
        cm_test_gate_hold(&f->gate, true); /* the deferred commit's sync never ends */
        if (!k || cm_store_begin_deferred(k, &err) != 0 ||
            cm_store_meta_set(k, "k", "unsynced", &err) != 0 || cm_store_commit(k, &err) != 0)
            _exit(1);
        cm_test_gate_wait_held(&f->gate, 1);
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* Open the store at path after leave_an_unsynced_wal: the WAL it found is
** synced (the file at wal) before the open returns, and the commit reads. */
static void open_syncs_the_leftover_wal(fixture *f, const char *path, const char *wal)
{
    cm_test_gate *g = gate_of(f);
    cm_err err;
    int syncs = cm_test_gate_started(g); /* the parent's own: the child's are its */
    cm_store *s = open_gated(f, path, CM_SYNC_FULL, &err);
    assert_non_null(s);
    assert_int_equal(cm_test_gate_started(g), syncs + 1); /* before the open returned */
    assert_true(cm_test_gate_synced(g, wal));
    assert_int_equal(cm_store_synced_seq(s), cm_store_commit_seq(s));
    char *v = cm_store_meta_get(s, "k", &err);
    assert_non_null(v);
    assert_string_equal(v, "unsynced");
    free(v);
    close_gated(f);
}

/* A process killed between a deferred commit and its sync leaves the commit
** in the WAL file, in the page cache only. The next open starts with every
** commit counted durable (no output waits), so it syncs the WAL it found
** before anything reads it: else a read, a send or an ack made from that
** commit could outlive it in a power loss. */
static void test_open_syncs_a_wal_left_by_a_killed_process(void **state)
{
    fixture *f = *state;
    char wal[1100];
    snprintf(wal, sizeof(wal), "%s-wal", f->db);
    leave_an_unsynced_wal(f, f->db);
    open_syncs_the_leftover_wal(f, f->db, wal);
}

/* The same through a symlinked path: the WAL left is beside the real file,
** and that one is synced at open, not a file named "<link>-wal" (one is
** put there: a store that looked beside the link would sync it instead). */
static void test_open_through_a_symlink_syncs_the_wal_beside_the_real_file(void **state)
{
    fixture *f = *state;
    char link[1100], wal[1100], decoy[1200];
    snprintf(link, sizeof(link), "%s/link.db", f->dir);
    snprintf(wal, sizeof(wal), "%s-wal", f->db);
    snprintf(decoy, sizeof(decoy), "%s-wal", link);
    assert_int_equal(symlink(f->db, link), 0);
    leave_an_unsynced_wal(f, link);
    FILE *fp = fopen(decoy, "w");
    assert_non_null(fp);
    assert_int_equal(fclose(fp), 0);
    open_syncs_the_leftover_wal(f, link, wal);
}

/* A commit made while a sync is in flight does not wait for it: a second
** sync begins at once. Commits made while both are in flight are all
** covered by the next one sync. */
static void test_commits_during_two_syncs_share_the_next_one(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    cm_err err;
    cm_store *s = open_gated(f, f->db, CM_SYNC_FULL, &err);
    assert_non_null(s);
    cm_test_gate_hold(g, true);
    uint64_t a = deferred_write(s, "a");
    assert_true(cm_test_gate_wait_held(g, 1)); /* the sync covering a is in flight */
    uint64_t b = deferred_write(s, "b");
    assert_true(cm_test_gate_wait_held(g, 2)); /* b's began beside it */
    uint64_t c = deferred_write(s, "c");
    uint64_t d = deferred_write(s, "d");
    assert_true(a < b && b < c && c < d);
    assert_true(cm_store_synced_seq(s) < a);
    cm_test_gate_hold(g, false);
    assert_int_equal(cm_store_sync_wait(s, d, &err), 0);
    assert_int_equal(cm_test_gate_started(g), 3);
    assert_true(cm_store_synced_seq(s) >= d);
    close_gated(f);
}

/* A gated store at FULL, the gate counting its syncs from here. */
static cm_store *open_gated_full(fixture *f)
{
    cm_err err;
    cm_store *s = open_gated(f, f->db, CM_SYNC_FULL, &err);
    assert_non_null(s);
    cm_test_gate_zero(gate_of(f));
    return s;
}

/* Two deferred commits on s, *a and then *b, the gate holding (as set up)
** from the first sync on; returns once both syncs have begun. */
static cm_store *two_deferred_writes(fixture *f, cm_store *s, uint64_t *a, uint64_t *b)
{
    cm_test_gate *g = gate_of(f);
    cm_test_gate_hold(g, true);
    *a = deferred_write(s, "a");
    assert_true(cm_test_gate_wait_held(g, 1));
    *b = deferred_write(s, "b");
    assert_true(cm_test_gate_wait_for(g, &g->started, 2));
    return s;
}

/* A gated store with two deferred commits, *a and then *b, the sync of *a
** held (only that one); the second sync fails with EIO when fail is set. */
static cm_store *first_sync_held(fixture *f, bool fail, uint64_t *a, uint64_t *b)
{
    cm_store *s = open_gated_full(f);
    cm_test_gate *g = gate_of(f);
    g->hold_only = 1;
    g->fail = fail ? EIO : 0;
    g->fail_at = 2;
    return two_deferred_writes(f, s, a, b);
}

/* A sync begun after an earlier one that ends first moves the watermark
** past both commits: its fdatasync covered every frame written before it
** began, the earlier commit's too. */
static void test_a_later_sync_that_ends_first_covers_the_earlier_commit(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    cm_err err;
    uint64_t a, b;
    cm_store *s = first_sync_held(f, false, &a, &b);
    assert_int_equal(cm_store_sync_wait(s, b, &err), 0); /* the first still held */
    assert_true(cm_store_synced_seq(s) >= b && b > a);
    assert_int_equal(cm_test_gate_started(g), 2);
    cm_test_gate_hold(g, false);
    assert_true(cm_test_gate_wait_done(g, 2));
    assert_true(cm_store_synced_seq(s) >= b);
    close_gated(f);
}

/* A sync that fails while one begun before it is in flight is taken in
** only after that one ended: its commit is durable (told 0), the failed
** sync's in doubt, and then every begin is refused, as with one thread. */
static void test_a_failed_sync_is_taken_in_after_the_syncs_begun_before_it(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    cm_err err;
    uint64_t a, b;
    cm_store *s = first_sync_held(f, true, &a, &b);
    assert_true(cm_test_gate_wait_done(g, 1)); /* b's sync failed; a's is held */
    assert_int_equal(cm_store_sync_status(s, &err), 0);
    assert_true(cm_store_synced_seq(s) < a);
    cm_test_gate_hold(g, false);
    assert_int_equal(cm_store_sync_wait(s, a, &err), 0);
    assert_int_equal(cm_store_sync_wait(s, b, &err), CM_EINDOUBT);
    assert_int_equal(cm_store_sync_status(s, &err), CM_EIO);
    assert_non_null(strstr(err.msg, "fdatasync failed"));
    assert_int_equal(cm_store_begin_deferred(s, &err), CM_EIO);
    close_gated(f);
}

/* A gated store with two deferred commits, *a and then *b, both syncs
** begun and held; the first fails with EIO when it goes on (errseq: the
** error is told at its start, once per descriptor, as Linux does, and the
** second is not held). */
static cm_store *two_syncs_held(fixture *f, bool errseq, uint64_t *a, uint64_t *b)
{
    cm_store *s = open_gated_full(f);
    cm_test_gate *g = gate_of(f);
    g->fail = EIO;
    g->fail_only = errseq ? 0 : 1; /* errseq: the error is told to each descriptor */
    g->errseq = errseq;
    g->hold_only = errseq ? 1 : 0;
    return two_deferred_writes(f, s, a, b);
}

/* Let every held sync go on and end; then neither commit is known durable,
** the watermark is below both, and writes are refused. */
static void end_both_in_doubt(fixture *f, cm_store *s, uint64_t a, uint64_t b)
{
    cm_test_gate *g = gate_of(f);
    cm_err err;
    cm_test_gate_hold(g, false);
    assert_true(cm_test_gate_wait_done(g, 2));
    assert_int_equal(cm_store_sync_wait(s, a, &err), CM_EINDOUBT);
    assert_int_equal(cm_store_sync_wait(s, b, &err), CM_EINDOUBT);
    assert_true(cm_store_synced_seq(s) < a);
    assert_int_equal(cm_store_sync_status(s, &err), CM_EIO);
    close_gated(f);
}

/* The first of two syncs in flight fails, and then the second ends well:
** the watermark stays below both commits. On one file Linux tells a
** writeback error to one sync only, so the second's 0 does not say that
** the first commit's pages reached the disk (they were dropped clean). */
static void test_a_good_sync_after_a_failed_one_moves_no_watermark(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    uint64_t a, b;
    cm_store *s = two_syncs_held(f, false, &a, &b);
    assert_true(cm_test_gate_wait_held(g, 2));
    cm_test_gate_release(g, 1);
    assert_true(cm_test_gate_wait_done(g, 1)); /* the first failed, the second is held */
    end_both_in_doubt(f, s, a, b);
}

/* The two sync threads each sync through a descriptor of their own: a
** writeback error is told once per open file, so through a shared one the
** first sync takes it and the second, ending first, got 0 and moved the
** watermark past the commit whose pages were lost. */
static void test_each_sync_thread_is_told_a_writeback_error(void **state)
{
    fixture *f = *state;
    uint64_t a, b;
    cm_store *s = two_syncs_held(f, true, &a, &b);
    end_both_in_doubt(f, s, a, b); /* the first held, the second told the error */
}

/* A synced commit (FULL) syncs the WAL with every earlier frame: the
** watermark passes deferred commits still waiting for the thread. A commit
** that wrote nothing synced nothing and takes no number. */
static void test_synced_commit_covers_earlier_deferred_ones(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    notes *c = &f->notes;
    cm_err err;
    cm_store *s = open_gated(f, f->db, CM_SYNC_FULL, &err);
    assert_non_null(s);
    cm_store_on_synced(s, count_note, c);
    cm_test_gate_hold(g, true);
    uint64_t a = deferred_write(s, "a");
    assert_true(cm_test_gate_wait_held(g, 1));
    assert_true(cm_store_synced_seq(s) < a);
    assert_int_equal(cm_store_begin(s, &err), 0); /* reads only */
    char *v = cm_store_meta_get(s, "k", &err);
    free(v);
    assert_int_equal(cm_store_commit(s, &err), 0);
    assert_int_equal(cm_store_commit_seq(s), a);
    assert_true(cm_store_synced_seq(s) < a);
    assert_int_equal(cm_store_begin(s, &err), 0); /* a write */
    assert_int_equal(cm_store_meta_set(s, "k2", "synced", &err), 0);
    assert_int_equal(cm_store_commit(s, &err), 0);
    assert_int_equal(cm_store_commit_seq(s), a + 1);
    assert_int_equal(cm_store_synced_seq(s), a + 1); /* the held sync has not ended */
    assert_int_equal(notes_n(c), 1);
    assert_int_equal(g->done, 0);
    cm_test_gate_hold(g, false);
    cm_store_on_synced(s, NULL, NULL);
    close_gated(f);
}

/* A failed sync is never taken for durable: waiters on a commit above the
** watermark get CM_EINDOUBT naming the WAL and the error (the commit is in
** the WAL, its fate unknown), a commit below it stays good, the watermark
** stays, and the store takes no more writes (every begin fails, CM_EIO). */
static void test_failed_sync_stops_the_store(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    notes *c = &f->notes;
    cm_err err;
    g->fail = EIO;
    cm_store *s = open_gated(f, f->db, CM_SYNC_FULL, &err);
    assert_non_null(s);
    cm_store_on_synced(s, count_note, c);
    uint64_t before = cm_store_synced_seq(s);
    uint64_t a = deferred_write(s, "lost?");
    assert_int_equal(cm_store_sync_wait(s, a, &err), CM_EINDOUBT);
    assert_non_null(strstr(err.msg, "-wal: fdatasync failed"));
    assert_non_null(strstr(err.msg, "takes no more writes"));
    assert_int_equal(cm_store_sync_wait(s, before, &err), 0); /* durable before it */
    assert_int_equal(cm_store_synced_seq(s), before);
    assert_int_equal(notes_n(c), 1);
    assert_int_equal(cm_store_sync_status(s, &err), CM_EIO);
    assert_int_equal(cm_store_begin(s, &err), CM_EIO);
    assert_int_equal(cm_store_begin_deferred(s, &err), CM_EIO);
    assert_int_equal(cm_store_begin_nosync(s, &err), CM_EIO);
    assert_false(cm_store_in_tx(s));
    cm_store_on_synced(s, NULL, NULL);
    close_gated(f);
}

/* Rows read at commit counter c are durable once the watermark reaches c:
** while a deferred commit's sync is held, its rows are not; a second
** deferred commit's rows wait for their own sync, not the first one's. */
static void test_rowmark_names_the_rows_of_durable_commits(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    cm_store_rowmark m;
    cm_err err;
    memset(&m, 0, sizeof(m));
    cm_store *s = open_gated(f, f->db, CM_SYNC_FULL, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_rowmark_update(s, &m, 10), 10); /* all durable */
    cm_test_gate_hold(g, true);
    uint64_t a = deferred_write(s, "a"); /* rows 11..20 */
    assert_true(cm_test_gate_wait_held(g, 1));
    assert_int_equal(cm_store_rowmark_update(s, &m, 20), 10);
    uint64_t b = deferred_write(s, "b"); /* rows 21..30 */
    assert_int_equal(cm_store_rowmark_update(s, &m, 30), 10);
    cm_test_gate_hold(g, false);
    assert_int_equal(cm_store_sync_wait(s, b, &err), 0);
    assert_true(cm_store_synced_seq(s) >= a);
    assert_int_equal(cm_store_rowmark_update(s, &m, 30), 30);
    close_gated(f);
}

/* Below FULL the store wants no sync: a deferred commit counts as synced at
** once, and no sync thread runs. */
static void test_deferred_commit_below_full_needs_no_sync(void **state)
{
    fixture *f = *state;
    cm_test_gate *g = gate_of(f);
    cm_err err;
    cm_store *s = open_gated(f, f->db, CM_SYNC_NORMAL, &err);
    assert_non_null(s);
    uint64_t a = deferred_write(s, "a");
    assert_int_equal(cm_store_synced_seq(s), a);
    assert_int_equal(cm_store_sync_wait(s, a, &err), 0);
    assert_int_equal(cm_test_gate_started(g), 0);
    close_gated(f);
}

/* An fsync that fails inside SQLite's own synced commit (the WAL's, at FULL:
** the non-pipelined path) takes the sync thread's path: the commit fails
** with CM_EINDOUBT naming it (it is in the WAL), waiters get CM_EINDOUBT,
** the listener hears (the daemon stops there), the watermark stays, and
** every later transaction is refused, even once the disk's syncs work
** again: never retried. */
static void test_a_failed_fsync_inside_a_synced_commit_stops_the_store(void **state)
{
    fixture *f = *state;
    cm_test_failvfs *fv = &failvfs;
    notes c = {PTHREAD_MUTEX_INITIALIZER, 0};
    cm_err err;
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    cm_store_on_synced(s, count_note, &c);
    uint64_t before = cm_store_synced_seq(s);
    assert_int_equal(cm_store_begin(s, &err), 0);
    assert_int_equal(cm_store_meta_set(s, "k", "lost?", &err), 0);
    fv->suffix = "-wal";
    assert_int_equal(cm_store_commit(s, &err), CM_EINDOUBT);
    fv->suffix = NULL;
    assert_true(fv->failed > 0);
    assert_non_null(strstr(err.msg, "an fsync inside SQLite failed"));
    assert_non_null(strstr(err.msg, "takes no more writes"));
    assert_int_equal(notes_n(&c), 1);
    assert_int_equal(cm_store_synced_seq(s), before);
    assert_int_equal(cm_store_sync_wait(s, before + 1, &err), CM_EINDOUBT);
    assert_int_equal(cm_store_sync_status(s, &err), CM_EIO);
    assert_int_equal(cm_store_begin(s, &err), CM_EIO);
    assert_int_equal(cm_store_begin_deferred(s, &err), CM_EIO);
    assert_false(cm_store_in_tx(s));
    cm_store_on_synced(s, NULL, NULL);
    cm_test_store_close(&s);
}

/* A checkpoint's failed fsync of the database file is the same: SQLite has
** counted the copied frames as in the database, and the WAL may start over
** on the next checkpoint that seems to work. The commit that ran it stays
** good; the store takes no more writes. With checkpoint_pages: inline
** (SQLite's, in the commit) or off the commit path (the thread's sync after a
** partial copy, or the writer's finishing checkpoint). */
static void checkpoint_fsync_fails(fixture *f, int checkpoint_pages)
{
    cm_test_failvfs *fv = &failvfs;
    cm_store *s = NULL;
    cm_err err;
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    s = open_checkpointing(f->db, checkpoint_pages);
    fv->suffix = "caremesh.db";
    int commits = 0;
    while (commits < 1000 && cm_store_sync_status(s, &err) == 0) {
        write_rows(s, commits * 4, 1, 4);
        commits++;
    }
    fv->suffix = NULL;
    assert_true(fv->failed > 0);
    assert_int_equal(cm_store_sync_status(s, &err), CM_EIO);
    assert_non_null(strstr(err.msg, "checkpoint"));
    assert_non_null(strstr(err.msg, "takes no more writes"));
    assert_int_equal(cm_store_begin(s, &err), CM_EIO);
    assert_int_equal(count_rows(s), commits * 4);
    cm_test_store_close(&s);
}

static void test_a_failed_checkpoint_fsync_stops_the_store(void **state)
{
    checkpoint_fsync_fails(*state, -1);
}

static void test_a_failed_fsync_of_a_background_checkpoint_stops_the_store(void **state)
{
    checkpoint_fsync_fails(*state, 16);
}

/* ---- the writer's WAL writes, gathered (store.c) ---- */

/* A plain connection of its own (the default VFS, as `caremesh backup` and
** other processes open the database): the rows written so far. */
static int rows_seen_by_another(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int n = -1;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM node_meta WHERE key LIKE 'k%'", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* A commit's frames (a header and a page each) reach the WAL file in one
** write, synced and deferred commits alike; the store counts them. */
static void test_a_commits_wal_frames_reach_the_file_in_one_write(void **state)
{
    fixture *f = *state;
    cm_test_failvfs *fv = &failvfs;
    cm_err err;
    uint64_t frames0, writes0, frames1, writes1;
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    fv->count_suffix = "-wal";
    for (int c = 0; c < 5; c++) {
        int before = fv->writes;
        cm_store_wal_writes(s, &frames0, &writes0);
        write_rows(s, c * 20, 1, 20); /* 20 rows of 1 KiB: 5 pages and more */
        cm_store_wal_writes(s, &frames1, &writes1);
        assert_int_equal(fv->writes - before, 1);
        assert_int_equal(writes1 - writes0, 1);
        assert_true(frames1 - frames0 >= 5);
    }
    /* a larger commit: a write per 124 KiB gathered (30 frames of 4 KiB pages) */
    int before_big = fv->writes;
    cm_store_wal_writes(s, &frames0, &writes0);
    write_rows(s, 100, 1, 100);
    cm_store_wal_writes(s, &frames1, &writes1);
    assert_true(frames1 - frames0 >= 60);
    assert_int_equal((uint64_t)(fv->writes - before_big), writes1 - writes0);
    assert_true(writes1 - writes0 <= (frames1 - frames0) / 30 + 1);
    int before = fv->writes;
    assert_int_equal(cm_store_begin_deferred(s, &err), 0);
    put_rows(s, 1000, 20, "deferred");
    assert_int_equal(cm_store_commit(s, &err), 0);
    assert_int_equal(fv->writes - before, 1);
    assert_int_equal(cm_store_sync_wait(s, cm_store_commit_seq(s), &err), 0);
    fv->count_suffix = NULL;
    assert_int_equal(rows_seen_by_another(f->db), 220);
    cm_test_store_close(&s);
    assert_int_equal(rows_after_reopen(f->db), 220);
}

/* The gathered write failing fails its commit: nothing of the transaction
** is seen (by the writer, by another connection, after a reopen), what was
** committed before stays, and the store goes on committing. */
static void test_a_failed_gathered_write_fails_its_commit_and_loses_nothing(void **state)
{
    fixture *f = *state;
    cm_test_failvfs *fv = &failvfs;
    cm_err err;
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    write_rows(s, 0, 2, 4);
    assert_int_equal(cm_store_begin(s, &err), 0);
    put_rows(s, 100, 40, "never");
    fv->write_suffix = "-wal";
    assert_int_not_equal(cm_store_commit(s, &err), 0);
    fv->write_suffix = NULL;
    assert_int_equal(fv->write_failed, 1); /* the commit's one write */
    assert_non_null(strstr(err.msg, f->db));
    assert_non_null(strstr(err.msg, "I/O error"));
    assert_false(cm_store_in_tx(s));
    assert_int_equal(count_rows(s), 8);
    assert_int_equal(rows_seen_by_another(f->db), 8);
    write_rows(s, 200, 1, 4);
    assert_int_equal(count_rows(s), 12);
    assert_int_equal(rows_seen_by_another(f->db), 12);
    cm_test_store_close(&s);
    s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(count_rows(s), 12);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM node_meta WHERE value = 'never'"), 0);
    cm_test_store_close(&s);
}

typedef struct reader_run {
    const char *path;
    atomic_bool done;
    int reads;
    int torn; /* reads that saw part of a transaction */
    int failed;
} reader_run;

static void *reader_main(void *arg)
{
    reader_run *r = arg;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(r->path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT count(*), count(DISTINCT value) FROM node_meta "
                           "WHERE key LIKE 'k%'",
                           -1, &st, NULL) != SQLITE_OK) {
        r->failed++;
        goto done;
    }
    sqlite3_busy_timeout(db, 5000);
    while (!atomic_load(&r->done)) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            int n = sqlite3_column_int(st, 0), values = sqlite3_column_int(st, 1);
            /* each transaction writes 20 rows with a value of its own */
            if (n % 20 != 0 || values != n / 20)
                r->torn++;
            r->reads++;
        } else {
            r->failed++;
        }
        sqlite3_reset(st);
    }
done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return NULL;
}

/* Another connection reading while the writer commits sees whole
** transactions only: no frame is published before its bytes are written. */
static void test_a_reader_sees_only_whole_transactions_while_the_writer_commits(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_checkpointing(f->db, 64);
    write_rows(s, 0, 1, 0);
    reader_run r = {.path = f->db};
    atomic_init(&r.done, false);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader_main, &r), 0);
    char value[600];
    for (int c = 0; c < 150; c++) {
        memset(value, 'a' + c % 26, sizeof(value) - 1);
        snprintf(value, 16, "%05d", c); /* a value of its own per transaction */
        value[5] = '-';
        value[sizeof(value) - 1] = '\0';
        assert_int_equal(cm_store_begin(s, &err), 0);
        put_rows(s, c * 20, 20, value);
        assert_int_equal(cm_store_commit(s, &err), 0);
    }
    atomic_store(&r.done, true);
    pthread_join(t, NULL);
    assert_int_equal(r.failed, 0);
    assert_true(r.reads > 0);
    assert_int_equal(r.torn, 0);
    assert_int_equal(rows_seen_by_another(f->db), 3000);
    cm_test_store_close(&s);
}

/* A transaction larger than the writer's page cache spills frames to the
** WAL before its commit (gathered, unpublished): read back within it,
** rolled back it leaves nothing, committed it is whole. */
static void test_a_transaction_that_spills_to_the_wal_commits_whole(void **state)
{
    fixture *f = *state;
    cm_err err;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_exec(s, "PRAGMA cache_size=8", &err), 0);
    write_rows(s, 0, 1, 4);
    for (int pass = 0; pass < 2; pass++) {
        char value[1024];
        fill_kb(value, pass ? 'c' : 'r');
        assert_int_equal(cm_store_begin(s, &err), 0);
        put_rows(s, 100, 300, value);
        assert_int_equal(count_rows(s), 304);
        if (pass == 0)
            cm_store_rollback(s);
        else
            assert_int_equal(cm_store_commit(s, &err), 0);
        assert_int_equal(count_rows(s), pass ? 304 : 4);
        assert_int_equal(rows_seen_by_another(f->db), pass ? 304 : 4);
    }
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM node_meta WHERE value LIKE 'r%'"), 0);
    cm_test_store_close(&s);
    s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(count_rows(s), 304);
    assert_int_equal(pragma_int(s, "SELECT count(*) FROM pragma_integrity_check "
                                   "WHERE integrity_check <> 'ok'"),
                     0);
    cm_test_store_close(&s);
}

/* After a transaction that spilled frames to the WAL rolled back, the next
** commit's frames go over them (past the WAL's published end): they are
** new frames, gathered and counted, one write for the commit. */
static void test_frames_over_a_rolled_back_spill_are_gathered(void **state)
{
    fixture *f = *state;
    cm_test_failvfs *fv = &failvfs;
    cm_err err;
    uint64_t frames0, writes0, frames1, writes1;
    char value[1024];
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    cm_store *s = open_checkpointing(f->db, 1000000); /* no checkpoint: the WAL only grows */
    write_rows(s, 0, 1, 4);
    assert_int_equal(cm_store_exec(s, "PRAGMA cache_size=8", &err), 0);
    fill_kb(value, 'r');
    assert_int_equal(cm_store_begin(s, &err), 0);
    put_rows(s, 100, 300, value); /* past the page cache: spilled */
    cm_store_rollback(s);
    assert_int_equal(count_rows(s), 4);
    assert_int_equal(cm_store_exec(s, "PRAGMA cache_size=-2000", &err), 0); /* as it was */
    fv->count_suffix = "-wal";
    for (int c = 0; c < 3; c++) {
        int before = fv->writes;
        cm_store_wal_writes(s, &frames0, &writes0);
        write_rows(s, 4 + c * 20, 1, 20); /* 20 rows of 1 KiB: 5 pages and more */
        cm_store_wal_writes(s, &frames1, &writes1);
        assert_int_equal(fv->writes - before, 1);
        assert_int_equal(writes1 - writes0, 1);
        assert_true(frames1 - frames0 >= 5);
    }
    fv->count_suffix = NULL;
    assert_int_equal(rows_seen_by_another(f->db), 64);
    assert_int_equal(cm_store_close_v2(&s, &err), 0);
    assert_int_equal(rows_after_reopen(f->db), 64);
}

/* A transaction that spilled frames (gathered) rolled back while the WAL
** fails its writes: the gathered write goes out as SQLite releases the
** WAL's write lock and fails there, where SQLite hears nothing. The lock
** is released all the same (another connection writes at once), and the
** write that no one heard of fails the store as a failed sync does. */
static void test_a_failed_gathered_write_at_a_lock_release_releases_the_lock(void **state)
{
    fixture *f = *state;
    cm_test_failvfs *fv = &failvfs;
    cm_err err;
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    write_rows(s, 0, 1, 300);
    /* the pages in the database file (a close checkpoints them): the
    ** transaction reads them from there, not from the WAL */
    cm_test_store_close(&s);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_exec(s, "PRAGMA cache_size=8", &err), 0);
    /* new pages past the database's end: spilled, never read back */
    assert_int_equal(cm_store_begin(s, &err), 0);
    assert_int_equal(cm_store_exec(s,
                                   "INSERT INTO node_meta(key, value) "
                                   "VALUES ('kblob', printf('r%.300000c', 'r'))",
                                   &err),
                     0);
    fv->write_suffix = "-wal";
    cm_store_rollback(s);
    fv->write_suffix = NULL;
    assert_true(fv->write_failed > 0); /* the spilled frames, gathered */
    assert_int_equal(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "BEGIN IMMEDIATE; INSERT INTO node_meta(key, value) "
                                  "VALUES ('k999999', 'x'); COMMIT",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    /* the write no one heard of fails the store */
    assert_int_equal(cm_store_sync_status(s, &err), CM_EIO);
    cm_test_store_close(&s);
    assert_int_equal(rows_seen_by_another(f->db), 301); /* no 'kblob' */
    assert_int_equal(rows_after_reopen(f->db), 301);
}

/* A page spilled to the WAL and changed again in its transaction is
** rewritten in place, and at the commit SQLite rewrites the frames'
** checksums from there to the commit frame, whose header comes last with
** no page after it. That rewrite goes straight to the file: when it fails
** the commit fails (even one that waits for no sync), and the store, told
** nothing it must stop for, commits the next transaction. */
static void test_a_failed_checksum_rewrite_fails_its_commit(void **state)
{
    fixture *f = *state;
    cm_test_failvfs *fv = &failvfs;
    cm_err err;
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    write_rows(s, 0, 1, 4);
    assert_int_equal(cm_store_exec(s, "PRAGMA cache_size=8", &err), 0);
    char value[1024];
    fill_kb(value, 'v');
    assert_int_equal(cm_store_begin_nosync(s, &err), 0);
    put_rows(s, 100, 300, value);
    fv->fail_commit_hdr = true;
    assert_int_not_equal(cm_store_commit(s, &err), 0);
    fv->fail_commit_hdr = false;
    assert_true(fv->write_failed > 0); /* the commit frame's header, rewritten */
    assert_int_equal(cm_store_sync_status(s, &err), 0);
    assert_int_equal(count_rows(s), 4);
    assert_int_equal(rows_seen_by_another(f->db), 4);
    write_rows(s, 4, 1, 1);
    assert_int_equal(count_rows(s), 5);
    cm_test_store_close(&s);
    assert_int_equal(rows_after_reopen(f->db), 5);
}

/* On a device without powersafe overwrite SQLite pads a synced commit's
** WAL to the end of a sector with copies of its commit frame, splitting the
** write that crosses the sector's end: a header may come in two pieces, a
** page in a piece of any size (24 bytes too). The store counts frames by
** where they are: as many as the WAL grew by, over commits that split
** every which way (a 512-byte sector: the split falls anywhere in a frame). */
#define WAL_HEADER_BYTES 32

static void test_wal_frames_are_counted_by_place_when_commits_pad_a_sector(void **state)
{
    fixture *f = *state;
    cm_test_failvfs *fv = &failvfs;
    uint64_t frames0, writes0, frames1, writes1;
    const long frame = 24 + 4096;
    assert_int_equal(cm_test_failvfs_install(fv), SQLITE_OK);
    fv->no_psow = true;
    fv->sector = 512;
    const char *wal = cm_test_path(f->dir, "caremesh.db-wal");
    cm_store *s = open_checkpointing(f->db, 1000000); /* no checkpoint: the WAL only grows */
    put_rows(s, 0, 1, "first");
    long size0 = file_size(wal);
    cm_store_wal_writes(s, &frames0, &writes0);
    for (int c = 1; c <= 400; c++) {
        char value[64];
        snprintf(value, sizeof(value), "%0*d", 1 + c % 40, c); /* rows of varied sizes */
        put_rows(s, c, 1, value);
    }
    cm_store_wal_writes(s, &frames1, &writes1);
    long size1 = file_size(wal);
    assert_int_equal((size1 - WAL_HEADER_BYTES) % frame, 0);
    assert_true(size1 - size0 >= 400 * frame);
    assert_int_equal(frames1 - frames0, (uint64_t)((size1 - size0) / frame));
    cm_test_store_close(&s);
    assert_int_equal(rows_after_reopen(f->db), 401);
}

/* A statement left unfinalized on the store's connection: the close says
** which (its SQL), finalizes it, and closes the connection whole before its
** VFS shim goes: the store opens again at once, and nothing leaks (the
** valgrind twin and the ASan build check that). */
static void test_a_close_with_a_statement_left_names_it_and_leaks_nothing(void **state)
{
    fixture *f = *state;
    cm_err err;
    sqlite3_stmt *left = NULL, *idle = NULL;
    cm_store *s = open_store(f->db, true, &err);
    assert_non_null(s);
    put_rows(s, 0, 3, "x");
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(s), "SELECT key FROM node_meta ORDER BY key",
                                        -1, &left, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(left), SQLITE_ROW); /* a read in progress */
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(s), "SELECT 17", -1, &idle, NULL), SQLITE_OK);
    assert_int_equal(cm_store_close_v2(&s, &err), CM_EDB);
    assert_null(s);
    if (!strstr(err.msg, "2 statement(s) not finalized") ||
        !strstr(err.msg, "\"SELECT key FROM node_meta ORDER BY key\"") ||
        !strstr(err.msg, "\"SELECT 17\""))
        fail_msg("got: %s", err.msg);
    /* the connection is closed: the store opens again and its rows are there */
    assert_int_equal(rows_after_reopen(f->db), 3);
    /* a close with nothing left answers 0 */
    s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_close_v2(&s, &err), 0);
    assert_int_equal(cm_store_close_v2(&s, &err), 0); /* closed already: nothing */
}

/* cm_store_close_after, the close of the callers that did work first: the
** work's error stands (its message kept) over the close's, and work that
** succeeded returns the close's error, naming the statement left. */
static void test_a_close_after_work_reports_the_first_error(void **state)
{
    fixture *f = *state;
    cm_err err;
    sqlite3_stmt *left = NULL;
    for (int failed = 0; failed < 2; failed++) {
        cm_store *s = open_store(f->db, true, &err);
        assert_non_null(s);
        assert_int_equal(sqlite3_prepare_v2(cm_store_db(s), "SELECT 42", -1, &left, NULL),
                         SQLITE_OK);
        int rc = failed ? cm_err_set(&err, CM_ENOTFOUND, "the work's own error") : 0;
        assert_int_equal(cm_store_close_after(&s, rc, &err), failed ? CM_ENOTFOUND : CM_EDB);
        assert_null(s);
        if (!strstr(err.msg, failed ? "the work's own error" : "1 statement(s) not finalized"))
            fail_msg("got: %s", err.msg);
    }
    cm_store *s = open_store(f->db, false, &err);
    assert_non_null(s);
    assert_int_equal(cm_store_close_after(&s, 0, &err), 0);
}

int main(void)
{
    cm_store_global_init(); /* as main() does: every test here runs on its allocator */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_makes_private_wal_database, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_close_with_a_statement_left_names_it_and_leaks_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_close_after_work_reports_the_first_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_wal_frames_are_counted_by_place_when_commits_pad_a_sector, setup, teardown_vfs),
        cmocka_unit_test_setup_teardown(test_a_commits_wal_frames_reach_the_file_in_one_write,
                                        setup, teardown_vfs),
        cmocka_unit_test_setup_teardown(
            test_a_failed_gathered_write_fails_its_commit_and_loses_nothing, setup, teardown_vfs),
        cmocka_unit_test_setup_teardown(
            test_a_reader_sees_only_whole_transactions_while_the_writer_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_failed_checksum_rewrite_fails_its_commit, setup,
                                        teardown_vfs),
        cmocka_unit_test_setup_teardown(test_frames_over_a_rolled_back_spill_are_gathered, setup,
                                        teardown_vfs),
        cmocka_unit_test_setup_teardown(test_a_transaction_that_spills_to_the_wal_commits_whole,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_failed_gathered_write_at_a_lock_release_releases_the_lock, setup, teardown_vfs),
        cmocka_unit_test_setup_teardown(test_synchronous_is_configurable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nosync_transaction_is_the_only_one_below_full, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_missing_database_without_create_is_not_found, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_migrations_apply_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_delivered_mark_migration_keeps_rows_answered_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_index_migration_keeps_the_last_delivered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_foreign_sqlite_database_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_file_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nested_write_runs_the_armed_callback_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prepared_statements_are_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoints_run_off_the_commit_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoints_wait_for_no_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_thread_opens_no_descriptor_of_its_own,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoints_inline_when_asked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wal_autocheckpoint_cannot_replace_the_store_hook,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_an_inline_checkpoint_that_cannot_run_leaves_the_commit_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta_roundtrip_and_rollback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only_store_reads_and_cannot_write, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_foreign_keys_are_enforced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_location_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_database_readable_by_others_is_refused, setup,
                                        teardown),
        cmocka_unit_test(test_small_blocks_are_kept_per_thread),
        cmocka_unit_test_setup_teardown(test_a_symlinked_store_syncs_the_wal_sqlite_uses, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_commit_is_durable_only_after_its_sync, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_commits_during_two_syncs_share_the_next_one, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_later_sync_that_ends_first_covers_the_earlier_commit,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_failed_sync_is_taken_in_after_the_syncs_begun_before_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_good_sync_after_a_failed_one_moves_no_watermark,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_each_sync_thread_is_told_a_writeback_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_synced_commit_covers_earlier_deferred_ones, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failed_sync_stops_the_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_failed_fsync_inside_a_synced_commit_stops_the_store,
                                        setup, teardown_vfs),
        cmocka_unit_test_setup_teardown(test_a_failed_checkpoint_fsync_stops_the_store, setup,
                                        teardown_vfs),
        cmocka_unit_test_setup_teardown(
            test_a_failed_fsync_of_a_background_checkpoint_stops_the_store, setup, teardown_vfs),
        cmocka_unit_test_setup_teardown(test_rowmark_names_the_rows_of_durable_commits, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_open_through_a_symlink_syncs_the_wal_beside_the_real_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_syncs_a_wal_left_by_a_killed_process, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_commit_below_full_needs_no_sync, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
