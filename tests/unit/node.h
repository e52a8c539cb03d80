/*
** node.h -- a fresh node for C unit tests: a store in a private temporary
** directory, a virtual clock and the record model over them; removed by
** teardown. Records made from JSON, counts read with SQL. Include after <cmocka.h>. Header-only.
*/
#ifndef CM_TEST_NODE_H
#define CM_TEST_NODE_H

#include "model.h"
#include "store.h"
#include "support.h"

#include <sqlite3.h>

/* 2026-01-01T00:00:00Z, where the tests' virtual clocks start. */
#define CM_TEST_EPOCH_MS 1767225600000LL

typedef struct cm_test_node {
    char *dir;
    cm_store *store;
    cm_clock *clock;
    cm_model *model;
} cm_test_node;

/* Close a store; the test fails, naming the statements left unfinished,
** when the close reports any (cm_store_close_v2). */
static inline void cm_test_store_close(cm_store **store_p)
{
    cm_err err = {0};
    if (cm_store_close_v2(store_p, &err) != 0)
        fail_msg("store close: %s", err.msg);
}

static inline void cm_test_node_free(cm_test_node *n)
{
    if (!n)
        return;
    cm_model_destroy(&n->model);
    cm_test_store_close(&n->store);
    cm_clock_destroy(&n->clock);
    if (n->dir)
        cm_test_rmtree(n->dir);
    free(n->dir);
    free(n);
}

/* A node whose virtual clock starts at start_ms; NULL when any part could
** not be made. */
static inline cm_test_node *cm_test_node_new_at(int64_t start_ms)
{
    cm_test_node *n = calloc(1, sizeof(*n));
    cm_store_opts o;
    cm_err err = {0};
    if (!n || !(n->dir = cm_test_tmpdir()))
        goto fail;
    cm_store_opts_init(&o);
    o.path = cm_test_path(n->dir, "caremesh.db");
    o.create = true;
    if (cm_store_open(&n->store, &o, &err) != 0 || !(n->clock = cm_clock_new_virtual(start_ms)) ||
        !(n->model = cm_model_new(n->store, n->clock)))
        goto fail;
    return n;
fail:
    cm_test_node_free(n);
    return NULL;
}

/* A node whose clock starts at CM_TEST_EPOCH_MS. */
static inline cm_test_node *cm_test_node_new(void)
{
    return cm_test_node_new_at(CM_TEST_EPOCH_MS);
}

/* cmocka setup and teardown with a cm_test_node as the state. */
static inline int cm_test_node_setup(void **state)
{
    return (*state = cm_test_node_new()) ? 0 : -1;
}

static inline int cm_test_node_teardown(void **state)
{
    cm_test_node_free(*state);
    return 0;
}

/* Create a record from JSON text; the test fails, naming it, if refused. */
static inline void cm_test_node_create(cm_test_node *n, cm_kind kind, const char *json)
{
    cm_err err = {0};
    cJSON *doc = cJSON_Parse(json);
    if (!doc)
        fail_msg("not JSON: %s", json);
    if (cm_model_create(n->model, kind, doc, NULL, &err) != 0)
        fail_msg("create %s: %s", json, err.msg);
    cJSON_Delete(doc);
}

/* The plugin tests' node: its clock at 2026-01-05T09:00Z, organization
** "clinic-a" made; NULL when it could not be made. */
static inline cm_test_node *cm_test_node_with_clinic(void)
{
    cm_test_node *n = cm_test_node_new_at(1767603600000LL);
    if (n)
        cm_test_node_create(n, CM_KIND_ORGANIZATION,
                            "{\"id\":\"clinic-a\",\"name\":\"Clinic A\",\"kind\":\"clinic\"}");
    return n;
}

/* The first column of the first row of sql in store (a count), or -1 for no row. */
static inline long cm_test_count(cm_store *store, const char *sql)
{
    sqlite3_stmt *st;
    long v = -1;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(store), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

#endif
