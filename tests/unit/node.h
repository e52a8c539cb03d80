/*
** node.h -- a fresh node for C unit tests: a store in a private temporary
** directory, a virtual clock and the record model over them; removed by
** teardown. Include after <cmocka.h>. Header-only.
*/
#ifndef CM_TEST_NODE_H
#define CM_TEST_NODE_H

#include "model.h"
#include "support.h"

/* 2026-01-01T00:00:00Z, where the tests' virtual clocks start. */
#define CM_TEST_EPOCH_MS 1767225600000LL

typedef struct cm_test_node {
    char *dir;
    cm_store *store;
    cm_clock *clock;
    cm_model *model;
} cm_test_node;

static inline void cm_test_node_free(cm_test_node *n)
{
    if (!n)
        return;
    cm_model_destroy(&n->model);
    cm_store_close(&n->store);
    cm_clock_destroy(&n->clock);
    if (n->dir)
        cm_test_rmtree(n->dir);
    free(n->dir);
    free(n);
}

/* NULL when any part could not be made. */
static inline cm_test_node *cm_test_node_new(void)
{
    cm_test_node *n = calloc(1, sizeof(*n));
    cm_store_opts o;
    cm_err err = {0};
    if (!n || !(n->dir = cm_test_tmpdir()))
        goto fail;
    cm_store_opts_init(&o);
    o.path = cm_test_path(n->dir, "caremesh.db");
    o.create = true;
    if (cm_store_open(&n->store, &o, &err) != 0 ||
        !(n->clock = cm_clock_new_virtual(CM_TEST_EPOCH_MS)) ||
        !(n->model = cm_model_new(n->store, n->clock)))
        goto fail;
    return n;
fail:
    cm_test_node_free(n);
    return NULL;
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

#endif
