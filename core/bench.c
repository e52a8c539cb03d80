/*
** bench.c -- the engine benchmark. Drives many instances of a small
** referral-like workflow: each round submits one event per instance in
** batches of `batch`, runs the engine (one commit per batch) and records
** submit-to-acknowledgement latency. Then the raw SQLite insert rate with the
** same batching and durability. Uses engine, model, store and the Lua runtime.
*/
#include "bench.h"

#include "engine.h"
#include "fs.h"
#include "lhost.h"
#include "lworkflow.h"
#include "sandbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static const char *BENCH_WORKFLOW =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'bench_referral', version = 1, start = 'requested',\n"
    "  states = {\n"
    "    requested = { enter = function(wf) wf.ctx.n = 0; wf:after('72h', 'no_response') end,\n"
    "                  on = { step = function(wf, ev) wf.ctx.n = wf.ctx.n + 1\n"
    "                           if ev.last then return 'closed' end\n"
    "                           if wf.ctx.n == 1 then return 'accepted' end end } },\n"
    "    accepted = { on = { step = function(wf, ev) wf.ctx.n = wf.ctx.n + 1\n"
    "                           wf.ctx.appointment = '2026-12-01T09:00:00Z'\n"
    "                           if ev.last then return 'closed' end\n"
    "                           return 'scheduled' end } },\n"
    "    scheduled = { on = { step = function(wf, ev) wf.ctx.n = wf.ctx.n + 1\n"
    "                           if ev.last then return 'closed' end end } },\n"
    "    closed = { final = true },\n"
    "  },\n"
    "}\n";

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct lat {
    int64_t *us;
    long n, cap;
    int64_t *submitted; /* per instance: when its pending event was submitted */
    long failed;
} lat;

static void on_ack(void *ud, const cm_ack *ack)
{
    lat *l = ud;
    if (ack->status != 0) {
        l->failed++;
        return;
    }
    long idx = strtol(strrchr(ack->instance, '-') + 1, NULL, 10);
    if (l->n < l->cap)
        l->us[l->n++] = now_us() - l->submitted[idx];
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Raw SQLite: the same durability and batching, one ~100-byte row per event. */
static double sqlite_rate(const char *path, long rows, int batch)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    char payload[100];
    memset(payload, 'x', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return 0;
    sqlite3_exec(db,
                 "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                 "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v TEXT)",
                 NULL, NULL, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO t(k, v) VALUES (?1, ?2)", -1, &st, NULL);
    int64_t t0 = now_us();
    for (long i = 0; i < rows;) {
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        for (int j = 0; j < batch && i < rows; j++, i++) {
            sqlite3_bind_int64(st, 1, i);
            sqlite3_bind_text(st, 2, payload, -1, SQLITE_STATIC);
            sqlite3_step(st);
            sqlite3_reset(st);
        }
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    double secs = (double)(now_us() - t0) / 1e6;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return secs > 0 ? (double)rows / secs : 0;
}

typedef struct world {
    char dir[1024], db[1100], wf[1100], raw[1100];
    cm_clock *clock;
    cm_store *store;
    cm_model *model;
    cm_sandbox *sb;
    cm_lua_host host;
    cm_lua_runtime *rt;
    cm_engine *engine;
} world;

static int world_open(world *w, const cm_bench_opts *o, cm_err *err)
{
    cm_store_opts so;
    cm_engine_opts eo;
    int rc;
    const char *base = o->dir ? o->dir : getenv("TMPDIR");
    snprintf(w->dir, sizeof(w->dir), "%s/caremesh-bench-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(w->dir))
        return cm_err_set(err, CM_EIO, "cannot make %s", w->dir);
    snprintf(w->db, sizeof(w->db), "%s/bench.db", w->dir);
    snprintf(w->wf, sizeof(w->wf), "%s/bench_referral.lua", w->dir);
    snprintf(w->raw, sizeof(w->raw), "%s/raw.db", w->dir);
    if ((rc = cm_fs_write_private(w->wf, BENCH_WORKFLOW, strlen(BENCH_WORKFLOW), err)) != 0)
        return rc;
    cm_store_opts_init(&so);
    so.path = w->db;
    so.create = true;
    so.synchronous = CM_SYNC_FULL;
    w->clock = cm_clock_new_system();
    if ((rc = cm_store_open(&w->store, &so, err)) != 0)
        return rc;
    w->model = cm_model_new(w->store, w->clock);
    if (!(w->sb = cm_sandbox_new(NULL, err)))
        return err->code;
    w->host = (cm_lua_host){w->store, w->model, w->clock, "bench"};
    if ((rc = cm_lua_host_set(cm_sandbox_state(w->sb), &w->host, err)) != 0)
        return rc;
    cm_sandbox_preload(w->sb, "caremesh", cm_lua_open_caremesh);
    if (!(w->rt = cm_lua_runtime_new(w->sb, err)))
        return err->code;
    memset(&eo, 0, sizeof(eo));
    eo.store = w->store;
    eo.model = w->model;
    eo.clock = w->clock;
    eo.runtime = cm_lua_runtime_seam(w->rt);
    eo.batch_max = o->batch;
    if (!(w->engine = cm_engine_new(&eo, err)))
        return err->code;
    return cm_engine_load_file(w->engine, w->wf, NULL, NULL, err);
}

static void world_close(world *w)
{
    const char *files[] = {w->db, w->raw, w->wf};
    char path[1200];
    cm_engine_destroy(&w->engine);
    cm_lua_runtime_destroy(&w->rt);
    cm_sandbox_destroy(&w->sb);
    cm_model_destroy(&w->model);
    cm_store_close(&w->store);
    cm_clock_destroy(&w->clock);
    for (int i = 0; i < 3; i++) {
        const char *suffix[] = {"", "-wal", "-shm"};
        for (int j = 0; j < 3; j++) {
            snprintf(path, sizeof(path), "%s%s", files[i], suffix[j]);
            unlink(path);
        }
    }
    rmdir(w->dir);
}

/* Submit one event to each instance, `batch` at a time, running after each chunk. */
static int drive(world *w, const cm_bench_opts *o, lat *l, cm_err *err)
{
    char id[64];
    cJSON *step = cJSON_CreateObject(), *last = cJSON_Parse("{\"last\":true}");
    int rc = (!step || !last) ? cm_err_set(err, CM_ENOMEM, "out of memory") : 0;
    for (int r = 0; r < o->rounds && rc == 0; r++) {
        for (long i = 0; i < o->instances && rc == 0;) {
            for (int j = 0; j < o->batch && i < o->instances && rc == 0; j++, i++) {
                snprintf(id, sizeof(id), "b-%ld", i);
                l->submitted[i] = now_us();
                rc = cm_engine_signal(w->engine, id, "step", r == o->rounds - 1 ? last : step,
                                      on_ack, l, err);
            }
            if (rc == 0)
                rc = cm_engine_run(w->engine, NULL, err);
        }
    }
    cJSON_Delete(step);
    cJSON_Delete(last);
    return rc;
}

int cm_bench_engine(const cm_bench_opts *o, cm_err *err)
{
    world w;
    lat l = {0};
    char id[64];
    int rc;
    memset(&w, 0, sizeof(w));
    long events = (long)o->instances * o->rounds;
    l.cap = events;
    l.us = calloc((size_t)events, sizeof(*l.us));
    l.submitted = calloc((size_t)o->instances, sizeof(*l.submitted));
    if (!l.us || !l.submitted) {
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = world_open(&w, o, err)) != 0)
        goto done;
    printf("caremesh bench engine: %d instances x %d events, batch %d, synchronous=FULL\n",
           o->instances, o->rounds, o->batch);
    for (long i = 0; i < o->instances && rc == 0; i++) {
        snprintf(id, sizeof(id), "b-%ld", i);
        rc = cm_engine_start(w.engine, "bench_referral", NULL, id, NULL, NULL, err);
        if (rc == 0 && (i + 1) % o->batch == 0)
            rc = cm_engine_run(w.engine, NULL, err);
    }
    if (rc == 0)
        rc = cm_engine_run(w.engine, NULL, err);
    if (rc != 0)
        goto done;
    int64_t t0 = now_us();
    if ((rc = drive(&w, o, &l, err)) != 0)
        goto done;
    double secs = (double)(now_us() - t0) / 1e6;
    qsort(l.us, (size_t)l.n, sizeof(*l.us), cmp64);
    int64_t p50 = l.n ? l.us[l.n / 2] : 0, p99 = l.n ? l.us[(l.n * 99) / 100] : 0;
    double eps = secs > 0 ? (double)l.n / secs : 0;
    double raw = sqlite_rate(w.raw, events, o->batch);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("events applied: %ld (%ld failed) in %.3f s\n", l.n, l.failed, secs);
    printf("engine:  %.0f durable events/s, submit-to-commit p50 %lld us, p99 %lld us\n", eps,
           (long long)p50, (long long)p99);
    printf("sqlite:  %.0f rows/s (raw batched inserts, same batching, synchronous=FULL)\n", raw);
    printf("{\"events_per_s\":%.0f,\"p50_us\":%lld,\"p99_us\":%lld,\"sqlite_rows_per_s\":%.0f,"
           "\"instances\":%d,\"events\":%ld,\"batch\":%d,\"failed\":%ld,\"max_rss_kb\":%ld}\n",
           eps, (long long)p50, (long long)p99, raw, o->instances, l.n, o->batch, l.failed,
           ru.ru_maxrss);
    if (l.failed)
        rc = cm_err_set(err, CM_EINVAL, "%ld events failed", l.failed);
done:
    world_close(&w);
    free(l.us);
    free(l.submitted);
    return rc;
}
