/*
** support.h -- helpers shared by the C unit tests: private temp directories
** that are removed afterwards, and small file helpers. Header-only.
*/
#ifndef CM_TEST_SUPPORT_H
#define CM_TEST_SUPPORT_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* SQL that takes a database back from schema 14 to 13: the timer table
** with its foreign key on the instance (rows and rowids kept). */
#define CM_TEST_UNDO_UNCHECKED_TIMER                                                               \
    "CREATE TABLE timer13(instance TEXT NOT NULL REFERENCES instance_base(id), "                   \
    "name TEXT NOT NULL, due_ms INTEGER NOT NULL, payload TEXT NOT NULL, scope TEXT, "             \
    "UNIQUE (instance, name));"                                                                    \
    "INSERT INTO timer13(rowid, instance, name, due_ms, payload, scope) SELECT rowid, instance, "  \
    "name, due_ms, payload, scope FROM timer;"                                                     \
    "DROP TABLE timer;"                                                                            \
    "ALTER TABLE timer13 RENAME TO timer;"                                                         \
    "CREATE INDEX timer_by_due ON timer(due_ms);"

/* SQL that takes a database back from schema 14 (through 13) to schema
** 12's instance_step, with the steps and updated columns that schema 13
** reads from the latest history row (0 and created for an instance without
** one), and schema 12's view. */
#define CM_TEST_UNDO_NARROW_STEP                                                                   \
    CM_TEST_UNDO_UNCHECKED_TIMER                                                                   \
    "DROP VIEW instance;"                                                                          \
    "CREATE TABLE instance_step12(seq INTEGER PRIMARY KEY, state TEXT NOT NULL, "                  \
    "ctx TEXT NOT NULL, steps INTEGER NOT NULL DEFAULT 0, updated TEXT NOT NULL, hist INTEGER);"   \
    "INSERT INTO instance_step12(seq, state, ctx, steps, updated, hist) SELECT s.seq, s.state, "   \
    "s.ctx, coalesce(h.step, 0), coalesce(h.at, b.created), s.hist FROM instance_step s "          \
    "JOIN instance_base b ON b.seq = s.seq LEFT JOIN history h ON h.seq = s.hist;"                 \
    "DROP TABLE instance_step;"                                                                    \
    "ALTER TABLE instance_step12 RENAME TO instance_step;"                                         \
    "CREATE VIEW instance AS SELECT b.seq AS seq, b.id AS id, b.workflow AS workflow, "            \
    "b.rev AS rev, s.state AS state, b.status AS status, b.input AS input, s.ctx AS ctx, "         \
    "b.parent AS parent, s.steps AS steps, b.created AS created, s.updated AS updated, "           \
    "s.hist AS hist FROM instance_base b JOIN instance_step s ON s.seq = b.seq;"

/* SQL that takes a database back from schema 14 to the single instance
** table of schemas 2 to 11, for tests of the migrations before it. */
#define CM_TEST_UNDO_INSTANCE_STEP                                                                 \
    CM_TEST_UNDO_NARROW_STEP                                                                       \
    "DROP VIEW instance;"                                                                          \
    "ALTER TABLE instance_base ADD COLUMN state TEXT NOT NULL DEFAULT '';"                         \
    "ALTER TABLE instance_base ADD COLUMN ctx TEXT NOT NULL DEFAULT '{}';"                         \
    "ALTER TABLE instance_base ADD COLUMN steps INTEGER NOT NULL DEFAULT 0;"                       \
    "ALTER TABLE instance_base ADD COLUMN updated TEXT NOT NULL DEFAULT '';"                       \
    "ALTER TABLE instance_base ADD COLUMN hist INTEGER;"                                           \
    "UPDATE instance_base SET (state, ctx, steps, updated, hist) = (SELECT s.state, s.ctx, "       \
    "s.steps, s.updated, s.hist FROM instance_step s WHERE s.seq = instance_base.seq);"            \
    "DROP TABLE instance_step;"                                                                    \
    "ALTER TABLE instance_base RENAME TO instance;"

/* mkdtemp under $TMPDIR or /tmp; the caller frees and removes. */

static inline char *cm_test_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof(tmpl), "%s/caremesh-test-XXXXXX", base && *base ? base : "/tmp");
    char *dir = mkdtemp(tmpl);
    return dir ? strdup(dir) : NULL;
}

/* Remove dir and what it holds (one level: test dirs are flat, or two). */
static inline void cm_test_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    struct stat sb;
    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path))
            continue;
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            cm_test_rmtree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static inline char *cm_test_path(const char *dir, const char *name)
{
    static char buf[4][1024];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
    return p;
}

static inline void cm_test_write(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, len, f);
        fclose(f);
    }
}

static inline unsigned cm_test_mode(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (unsigned)(sb.st_mode & 0777) : 0xffffu;
}

#endif
