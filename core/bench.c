/*
** bench.c -- the engine benchmark. Drives many instances of a small
** referral-like workflow: each round submits one event per instance in
** batches of `batch`, runs the engine (one commit per batch) and records
** submit-to-acknowledgement latency. Then the raw SQLite insert rate with the
** same batching and durability. Uses engine, model, store and the Lua runtime.
** The federation benchmark runs two nodes' federation (fed.h) on two threads,
** each with its own loop and store, linked over loopback.
*/
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include "bench.h"

#include "clock.h"
#include "engine.h"
#include "fed.h"
#include "fs.h"
#include "keys.h"
#include "log.h"
#include "lhost.h"
#include "lworkflow.h"
#include "sandbox.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <limits.h>
#include <time.h>
#include <unistd.h>

static const char *BENCH_WORKFLOW =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'bench_referral', version = 1, start = 'requested',\n"
    "  input = { pad = 'string?' },\n"
    "  states = {\n"
    "    requested = { enter = function(wf) wf.ctx.n = 0; wf.ctx.pad = wf.input.pad\n"
    "                    wf:after('72h', 'no_response') end,\n"
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

/* CPU time of the calling thread. */
static int64_t thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* An event's submit-to-ack time in loop mode, in its parts (us): waiting for
** its batch to begin, its batch's run and commit on the loop thread, waiting
** for the sync thread (a sync of earlier commits still running), the fsync
** that covered it, and from the fsync's end to its ack (the loop busy with
** the next batch, the acks told before it). */
enum { LAT_QUEUE, LAT_BATCH, LAT_SYNC_WAIT, LAT_FSYNC, LAT_ACK, LAT_PARTS };
static const char *const lat_part_names[LAT_PARTS] = {"queue", "batch", "sync_wait", "fsync",
                                                      "ack"};

typedef struct lat {
    int64_t *us;
    long n, cap;
    int64_t *submitted; /* per instance: when its pending event was submitted */
    long instances;     /* submitted's length */
    long failed;
    /* loop mode: each acked event's latency in its parts (split_of), n of them */
    int32_t (*parts)[LAT_PARTS];
    long nparts;
    /* the most the instance cache held and the Lua state used, seen between
    ** batches (lat_peaks): what a full cache costs, as the last round ends
    ** every instance and empties it */
    uint64_t cache_peak;
    size_t lua_peak;
} lat;

/* "b-<i>", instance i's id (id holds 24 bytes at least): written by hand,
** as the driver names an instance with every event it submits on the loop
** thread, where snprintf took ~700 instructions an event. */
static void bench_id(char *id, long i)
{
    char digits[20];
    int n = 0;
    unsigned long v = (unsigned long)i;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    id[0] = 'b';
    id[1] = '-';
    int k = 2;
    while (n > 0)
        id[k++] = digits[--n];
    id[k] = '\0';
}

/* i of "b-<i>" (bench_id's); -1 for another id. */
static long bench_index(const char *id)
{
    if (!id || id[0] != 'b' || id[1] != '-' || !id[2])
        return -1;
    long i = 0;
    for (const char *p = id + 2; *p; p++) {
        if (*p < '0' || *p > '9' || i > (LONG_MAX - 9) / 10)
            return -1;
        i = i * 10 + (*p - '0');
    }
    return i;
}

/* An ack at now (us, now_us's clock): its latency noted. */
static void lat_note(lat *l, const cm_ack *ack, int64_t now)
{
    if (ack->status != 0) {
        l->failed++;
        return;
    }
    long idx = bench_index(ack->instance);
    if (idx < 0 || idx >= l->instances) {
        l->failed++;
        return;
    }
    if (l->n < l->cap)
        l->us[l->n++] = now - l->submitted[idx];
}

/* Note the cache's entries and the Lua state's memory if above the peaks. */
static void lat_peaks(lat *l, cm_engine *e, cm_sandbox *sb)
{
    cm_engine_stats st;
    cm_engine_stats_get(e, &st);
    if (st.cache_entries > l->cache_peak)
        l->cache_peak = st.cache_entries;
    if (cm_sandbox_memory(sb) > l->lua_peak)
        l->lua_peak = cm_sandbox_memory(sb);
}

static void on_ack(void *ud, const cm_ack *ack)
{
    lat_note(ud, ack, cm_mono_ns() / 1000);
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
    int64_t t0 = cm_mono_ns() / 1000;
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
    double secs = (double)(cm_mono_ns() / 1000 - t0) / 1e6;
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
    w->host = (cm_lua_host){w->store, w->model, w->clock, "bench", NULL, NULL, NULL, NULL};
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
    eo.batch_ms = o->batch_ms;
    eo.cache_max = o->cache;
    eo.pipeline = !o->run_mode; /* takes effect once attached to the driver's loop */
    if (!(w->engine = cm_engine_new(&eo, err)))
        return err->code;
    return cm_engine_load_file(w->engine, w->wf, NULL, NULL, err);
}

/* Close the world after a run that returned rc: rc, else the store's close. */
static int world_close(world *w, int rc, cm_err *err)
{
    const char *files[] = {w->db, w->raw, w->wf};
    char path[1200];
    cm_engine_destroy(&w->engine);
    cm_lua_runtime_destroy(&w->rt);
    cm_sandbox_destroy(&w->sb);
    cm_model_destroy(&w->model);
    rc = cm_store_close_after(&w->store, rc, err);
    cm_clock_destroy(&w->clock);
    for (int i = 0; i < 3; i++) {
        const char *suffix[] = {"", "-wal", "-shm"};
        for (int j = 0; j < 3; j++) {
            snprintf(path, sizeof(path), "%s%s", files[i], suffix[j]);
            unlink(path);
        }
    }
    rmdir(w->dir);
    return rc;
}

/* Event "step" of round r to instance i, its payload given as text as the
** HTTP API gives it: {} and, in the last round, {"last":true}. */
static int submit_step(world *w, const cm_bench_opts *o, long i, long r, cm_ack_cb cb, void *ud,
                       lat *l, cm_err *err)
{
    static const char step[] = "{}", last[] = "{\"last\":true}";
    char id[64];
    bench_id(id, i);
    l->submitted[i] = cm_mono_ns() / 1000;
    if (r == o->rounds - 1)
        return cm_engine_signal_text(w->engine, id, "step", last, sizeof(last) - 1, cb, ud, err);
    return cm_engine_signal_text(w->engine, id, "step", step, sizeof(step) - 1, cb, ud, err);
}

/* Submit one event to each instance, `batch` at a time, running after each chunk. */
static int drive(world *w, const cm_bench_opts *o, lat *l, cm_err *err)
{
    int rc = 0;
    for (int r = 0; r < o->rounds && rc == 0; r++) {
        for (long i = 0; i < o->instances && rc == 0;) {
            for (int j = 0; j < o->batch && i < o->instances && rc == 0; j++, i++)
                rc = submit_step(w, o, i, r, on_ack, l, l, err);
            if (rc == 0)
                rc = cm_engine_run(w->engine, NULL, err);
            lat_peaks(l, w->engine, w->sb);
        }
    }
    return rc;
}

/* The loop-driven mode: the engine attached to a loop and pipelined; at most
** `window` events outstanding, more submitted from each ack. Event k goes to
** instance k % instances in round k / instances, so an instance has at most
** one event outstanding (window <= instances). */
typedef struct driver {
    world *w;
    const cm_bench_opts *o;
    lat *l;
    uv_loop_t loop;
    long next, total, acked;
    int outstanding, window;
    int rc;
    cm_err *err;
} driver;

static void on_loop_ack(void *ud, const cm_ack *ack);

static void top_up(driver *d)
{
    while (d->rc == 0 && d->outstanding < d->window && d->next < d->total) {
        long i = d->next % d->o->instances, r = d->next / d->o->instances;
        d->rc = submit_step(d->w, d->o, i, r, on_loop_ack, d, d->l, d->err);
        d->next++;
        d->outstanding++;
    }
    if (d->rc != 0)
        uv_stop(&d->loop);
}

/* The parts of an acked event's latency, from the engine's times of it;
** now: the ack's time (uv_hrtime). */
static void split_of(lat *l, cm_engine *e, int64_t now)
{
    cm_engine_ack_times t;
    if (l->nparts >= l->cap || cm_engine_ack_times_get(e, &t) != 0)
        return;
    /* the points in order (a sync may begin just before the commit's time is
    ** read, and end before it): each part at least 0, their sum the latency */
    int64_t at[LAT_PARTS + 1] = {t.submitted, t.begun, t.committed, t.sync_start, t.sync_end, now};
    for (int i = 0; i < LAT_PARTS; i++) {
        if (at[i + 1] < at[i])
            at[i + 1] = at[i];
        l->parts[l->nparts][i] = (int32_t)((at[i + 1] - at[i]) / 1000);
    }
    l->nparts++;
}

static int cmp_total(const void *a, const void *b)
{
    const int32_t *x = a, *y = b;
    int64_t sx = 0, sy = 0;
    for (int i = 0; i < LAT_PARTS; i++) {
        sx += x[i];
        sy += y[i];
    }
    return sx < sy ? -1 : sx > sy;
}

/* The mean of each part over all split events (all) and over the slowest
** 1 % of them by their sum (tail); false when none was split. */
static bool split_means(lat *l, double all[LAT_PARTS], double tail[LAT_PARTS])
{
    if (l->nparts == 0)
        return false;
    qsort(l->parts, (size_t)l->nparts, sizeof(*l->parts), cmp_total);
    long from = (l->nparts * 99) / 100;
    for (int i = 0; i < LAT_PARTS; i++) {
        all[i] = tail[i] = 0;
        for (long k = 0; k < l->nparts; k++) {
            all[i] += l->parts[k][i];
            if (k >= from)
                tail[i] += l->parts[k][i];
        }
        all[i] /= (double)l->nparts;
        tail[i] /= (double)(l->nparts - from);
    }
    return true;
}

static void on_loop_ack(void *ud, const cm_ack *ack)
{
    driver *d = ud;
    int64_t now = (int64_t)uv_hrtime(); /* CLOCK_MONOTONIC, as cm_mono_ns */
    lat_note(d->l, ack, now / 1000);
    split_of(d->l, d->w->engine, now);
    if (d->acked % 256 == 0) /* a batch's worth: cheap beside the events */
        lat_peaks(d->l, d->w->engine, d->w->sb);
    d->acked++;
    d->outstanding--;
    if (d->acked == d->total)
        uv_stop(&d->loop);
    else
        top_up(d);
}

static int drive_loop(world *w, const cm_bench_opts *o, lat *l, uint64_t *idle_ns, cm_err *err)
{
    driver d = {.w = w, .o = o, .l = l, .err = err};
    d.total = (long)o->instances * o->rounds;
    d.window = o->outstanding > 0 ? o->outstanding : 2 * o->batch;
    if (d.window > o->instances)
        d.window = o->instances;
    if (uv_loop_init(&d.loop) != 0)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    uv_loop_configure(&d.loop, UV_METRICS_IDLE_TIME); /* the loop's time blocked in its poll */
    d.rc = cm_engine_attach(w->engine, &d.loop, err);
    top_up(&d);
    if (d.rc == 0)
        uv_run(&d.loop, UV_RUN_DEFAULT);
    *idle_ns = uv_metrics_idle_time(&d.loop); /* the drive: before detach's wait */
    cm_engine_detach(w->engine);              /* waits for the last sync: every ack told */
    uv_run(&d.loop, UV_RUN_DEFAULT);          /* the engine's handles close */
    uv_loop_close(&d.loop);
    if (d.rc == 0 && d.acked != d.total)
        d.rc = cm_err_set(err, CM_EIO, "%ld of %ld events acknowledged", d.acked, d.total);
    return d.rc;
}

int cm_bench_engine(const cm_bench_opts *o, cm_err *err)
{
    world w;
    lat l = {0};
    char id[64];
    cJSON *input = NULL;
    int rc;
    memset(&w, 0, sizeof(w));
    long events = (long)o->instances * o->rounds;
    l.cap = events;
    l.us = calloc((size_t)events, sizeof(*l.us));
    l.submitted = calloc((size_t)o->instances, sizeof(*l.submitted));
    l.parts = o->run_mode ? NULL : calloc((size_t)events, sizeof(*l.parts));
    l.instances = o->instances;
    if (!l.us || !l.submitted || (!o->run_mode && !l.parts)) {
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = world_open(&w, o, err)) != 0)
        goto done;
    int window = o->outstanding > 0 ? o->outstanding : 2 * o->batch;
    if (window > o->instances)
        window = o->instances;
    if (o->run_mode)
        printf("caremesh bench engine: %d instances x %d events, batch %d, synchronous=FULL, "
               "mode run (submit a batch, run it, wait for its fsync)\n",
               o->instances, o->rounds, o->batch);
    else
        printf("caremesh bench engine: %d instances x %d events, batch %d, synchronous=FULL, "
               "mode loop (pipelined on a loop, %d events outstanding, acks after their fsync)\n",
               o->instances, o->rounds, o->batch, window);
    /* --ctx-bytes: the input's pad, which the start state copies into the
    ** context (a larger context to keep, write and read back) */
    if (o->ctx_bytes > 0) {
        char *pad = malloc((size_t)o->ctx_bytes + 1);
        if (pad) {
            memset(pad, 'x', (size_t)o->ctx_bytes);
            pad[o->ctx_bytes] = '\0';
            if ((input = cJSON_CreateObject()) != NULL &&
                !cJSON_AddStringToObject(input, "pad", pad))
                cJSON_Delete(input), input = NULL;
        }
        free(pad);
        if (!input) {
            rc = cm_err_set(err, CM_ENOMEM, "out of memory");
            goto done;
        }
    }
    for (long i = 0; i < o->instances && rc == 0; i++) {
        bench_id(id, i);
        rc = cm_engine_start(w.engine, "bench_referral", input, id, NULL, NULL, err);
        if (rc == 0 && (i + 1) % o->batch == 0)
            rc = cm_engine_run(w.engine, NULL, err);
    }
    if (rc == 0)
        rc = cm_engine_run(w.engine, NULL, err);
    if (rc != 0)
        goto done;
    cm_engine_stats es0;
    cm_engine_stats_get(w.engine, &es0);
    uint64_t frames0, writes0, frames1, writes1;
    cm_store_wal_writes(w.store, &frames0, &writes0);
    struct rusage th0, th1;
    getrusage(RUSAGE_THREAD, &th0);
    int64_t cpu0 = thread_cpu_us(), t0 = cm_mono_ns() / 1000;
    uint64_t idle_ns = 0;
    if ((rc = o->run_mode ? drive(&w, o, &l, err) : drive_loop(&w, o, &l, &idle_ns, err)) != 0)
        goto done;
    int64_t drive_us = cm_mono_ns() / 1000 - t0, loop_cpu_us = thread_cpu_us() - cpu0;
    cm_store_wal_writes(w.store, &frames1, &writes1);
    getrusage(RUSAGE_THREAD, &th1);
    double secs = (double)drive_us / 1e6;
    /* of the loop thread's CPU, what the kernel spent for it (the WAL's writes,
    ** SQLite's locks, the loop's polls and wakeups) */
    int64_t loop_sys_us = (int64_t)(th1.ru_stime.tv_sec - th0.ru_stime.tv_sec) * 1000000 +
                          (th1.ru_stime.tv_usec - th0.ru_stime.tv_usec);
    qsort(l.us, (size_t)l.n, sizeof(*l.us), cmp64);
    int64_t p50 = l.n ? l.us[l.n / 2] : 0, p99 = l.n ? l.us[(l.n * 99) / 100] : 0;
    double eps = secs > 0 ? (double)l.n / secs : 0;
    double raw = sqlite_rate(w.raw, events, o->batch);
    struct rusage ru;
    cm_store_ckpt_stats ck;
    getrusage(RUSAGE_SELF, &ru);
    cm_store_ckpt_stats_get(w.store, &ck);
    printf("events applied: %ld (%ld failed) in %.3f s\n", l.n, l.failed, secs);
    printf("engine:  %.0f durable events/s, submit-to-ack p50 %lld us, p99 %lld us\n", eps,
           (long long)p50, (long long)p99);
    printf("sqlite:  %.0f rows/s (raw batched inserts, same batching, synchronous=FULL)\n", raw);
    cm_engine_stats es;
    cm_engine_stats_get(w.engine, &es);
    printf("instance cache: %llu hits, %llu misses, %llu evictions, at most %llu entries; "
           "contexts read from their text %lu; the Lua state at most %zu KiB (cap %zu)\n",
           (unsigned long long)es.cache_hits, (unsigned long long)es.cache_misses,
           (unsigned long long)es.cache_evictions, (unsigned long long)l.cache_peak,
           cm_lua_runtime_ctx_reads(w.rt), l.lua_peak >> 10, cm_sandbox_memory_cap(w.sb) >> 10);
    /* while the events were driven: the loop thread's CPU (how busy it was,
    ** how often the scheduler took its core) and the batches it committed */
    uint64_t batches = es.batches - es0.batches;
    printf("drive: loop thread %.0f ms of CPU in %.0f ms (%.0f%% busy), %ld involuntary "
           "switches; %llu batches, %.1f events each, %llu waited for their sync\n",
           (double)loop_cpu_us / 1e3, (double)drive_us / 1e3,
           drive_us > 0 ? 100.0 * (double)loop_cpu_us / (double)drive_us : 0.0,
           th1.ru_nivcsw - th0.ru_nivcsw, (unsigned long long)batches,
           batches ? (double)l.n / (double)batches : 0.0,
           (unsigned long long)(es.sync_waits - es0.sync_waits));
    double all[LAT_PARTS], tail[LAT_PARTS];
    bool split = split_means(&l, all, tail);
    if (split) {
        printf("submit-to-ack in parts, us (mean / slowest 1%%):");
        for (int i = 0; i < LAT_PARTS; i++)
            printf(" %s %.0f / %.0f", lat_part_names[i], all[i], tail[i]);
        printf("; loop idle %.0f ms (waiting for syncs)\n", (double)idle_ns / 1e6);
    }
    printf("{\"events_per_s\":%.0f,\"p50_us\":%lld,\"p99_us\":%lld,\"sqlite_rows_per_s\":%.0f,"
           "\"instances\":%d,\"events\":%ld,\"batch\":%d,\"failed\":%ld,\"max_rss_kb\":%ld,"
           "\"checkpoints\":%ld,\"checkpoints_inline\":%ld,\"checkpoint_db_syncs\":%ld,"
           "\"max_wal_pages\":%d,"
           "\"mode\":\"%s\",\"outstanding\":%d,\"cache_hits\":%llu,\"cache_misses\":%llu,"
           "\"loop_cpu_us_per_event\":%.2f,\"loop_sys_us_per_event\":%.2f,\"loop_busy\":%.3f,"
           "\"loop_nivcsw\":%ld,"
           "\"events_per_batch\":%.1f,\"wal_frames_per_batch\":%.1f,"
           "\"wal_writes_per_batch\":%.1f",
           eps, (long long)p50, (long long)p99, raw, o->instances, l.n, o->batch, l.failed,
           ru.ru_maxrss, ck.background, ck.inline_runs, ck.db_syncs, ck.max_wal_pages,
           o->run_mode ? "run" : "loop", o->run_mode ? o->batch : window,
           (unsigned long long)es.cache_hits, (unsigned long long)es.cache_misses,
           l.n ? (double)loop_cpu_us / (double)l.n : 0.0,
           l.n ? (double)loop_sys_us / (double)l.n : 0.0,
           drive_us > 0 ? (double)loop_cpu_us / (double)drive_us : 0.0,
           th1.ru_nivcsw - th0.ru_nivcsw, batches ? (double)l.n / (double)batches : 0.0,
           batches ? (double)(frames1 - frames0) / (double)batches : 0.0,
           batches ? (double)(writes1 - writes0) / (double)batches : 0.0);
    /* loop mode: the parts of the latency, their means over every event
    ** (lat_<part>_us) and over the slowest 1 % (p99_<part>_us) */
    printf(",\"cache_evictions\":%llu,\"cache_peak\":%llu,\"ctx_reads\":%lu,"
           "\"lua_peak_kb\":%zu,\"ctx_bytes\":%d",
           (unsigned long long)es.cache_evictions, (unsigned long long)l.cache_peak,
           cm_lua_runtime_ctx_reads(w.rt), l.lua_peak >> 10, o->ctx_bytes);
    for (int i = 0; split && i < LAT_PARTS; i++)
        printf(",\"lat_%s_us\":%.0f,\"p99_%s_us\":%.0f", lat_part_names[i], all[i],
               lat_part_names[i], tail[i]);
    if (!o->run_mode)
        printf(",\"loop_idle_ms\":%.1f", (double)idle_ns / 1e6);
    printf("}\n");
    if (l.failed)
        rc = cm_err_set(err, CM_EINVAL, "%ld events failed", l.failed);
done:
    rc = world_close(&w, rc, err);
    cJSON_Delete(input);
    free(l.us);
    free(l.submitted);
    free(l.parts);
    return rc;
}

/* ---- federation ------------------------------------------------------- */

/* One node: its store, keys, config and loop (each on its own thread). */
typedef struct fnode {
    const char *id;
    char db[1200];
    cm_clock *clock;
    cm_store *store;
    cm_config cfg;
    cm_keypair keys;
    uv_loop_t loop;
    bool loop_init;
    cm_fed *fed;
} fnode;

typedef struct fbench {
    const cm_bench_fed_opts *o;
    char dir[1024];
    fnode a, b; /* a sends (main thread), b receives (its own thread) */
    char *payload;
    /* sender side, a's loop */
    uv_check_t produce;
    uv_idle_t more; /* active while the backlog has room: the next turn does not wait */
    uv_timer_t deadline;
    bool handles, finished, done, timed_out;
    long total, queued, settled, refused, strays;
    int64_t *queued_us; /* by outbox seq: when its commit returned */
    int64_t *lat;       /* queued-to-acknowledged, measured messages */
    long nlat;
    int64_t t0, t1; /* the first measured row queued, the last one acknowledged */
    /* receiver side, b's loop */
    uv_async_t stop;
    long received, last_seq, disorder;
} fbench;

/* A free loopback TCP port (the kernel's pick), or 0. */
static int free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int fnode_open(fbench *fb, fnode *n, const char *id, cm_err *err)
{
    cm_store_opts so;
    int rc;
    n->id = id;
    snprintf(n->db, sizeof(n->db), "%s/%s.db", fb->dir, id);
    cm_store_opts_init(&so);
    so.path = n->db;
    so.create = true;
    so.synchronous = CM_SYNC_FULL;
    n->clock = cm_clock_new_system();
    cm_config_defaults(&n->cfg);
    if ((rc = cm_store_open(&n->store, &so, err)) != 0 || (rc = cm_keys_generate(&n->keys, err)))
        return rc;
    if ((rc = uv_loop_init(&n->loop)) != 0)
        return cm_err_set(err, CM_EIO, "event loop: %s", uv_strerror(rc));
    n->loop_init = true;
    return 0;
}

/* Listen on port; the other node is the one peer. */
static void fnode_link(fnode *n, int port, const fnode *peer, int peer_port)
{
    n->cfg.fed_enabled = true;
    snprintf(n->cfg.fed_listen, sizeof(n->cfg.fed_listen), "tcp://127.0.0.1:%d", port);
    n->cfg.fed_npeers = 1;
    snprintf(n->cfg.fed_peers[0].id, sizeof(n->cfg.fed_peers[0].id), "%s", peer->id);
    snprintf(n->cfg.fed_peers[0].endpoint, sizeof(n->cfg.fed_peers[0].endpoint),
             "tcp://127.0.0.1:%d", peer_port);
    snprintf(n->cfg.fed_peers[0].public_key, sizeof(n->cfg.fed_peers[0].public_key), "%s",
             peer->keys.public_key);
}

/* Close node n after a run that returned rc: rc, else its store's close. */
static int fnode_close(fnode *n, int rc, cm_err *err)
{
    const char *suffix[] = {"", "-wal", "-shm"};
    char path[1300];
    cm_fed_destroy(&n->fed);
    if (n->loop_init)
        uv_loop_close(&n->loop);
    rc = cm_store_close_after(&n->store, rc, err);
    cm_clock_destroy(&n->clock);
    cm_config_free(&n->cfg);
    cm_keys_wipe(&n->keys);
    for (int j = 0; j < 3; j++) {
        snprintf(path, sizeof(path), "%s%s", n->db, suffix[j]);
        unlink(path);
    }
    return rc;
}

/* The receiving organization, hosted on b: what a's outbox rows are routed by. */
static int fb_world(fbench *fb, cm_err *err)
{
    char doc[256];
    snprintf(doc, sizeof(doc),
             "{\"id\":\"bench-receiver\",\"name\":\"Bench receiving clinic\",\"kind\":\"clinic\","
             "\"node\":\"%s\"}",
             fb->b.id);
    cJSON *j = cJSON_Parse(doc);
    cm_model *m = cm_model_new(fb->a.store, fb->a.clock);
    int rc = j && m ? cm_model_create(m, CM_KIND_ORGANIZATION, j, NULL, err)
                    : cm_err_set(err, CM_ENOMEM, "out of memory");
    cJSON_Delete(j);
    cm_model_destroy(&m);
    if (rc == 0 && !(fb->payload = malloc((size_t)fb->o->size + 16)))
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
    if (rc == 0) { /* {"x":"xxx..."}: size bytes of JSON */
        int fill = fb->o->size > 9 ? fb->o->size - 8 : 1;
        memcpy(fb->payload, "{\"x\":\"", 6);
        memset(fb->payload + 6, 'x', (size_t)fill);
        memcpy(fb->payload + 6 + fill, "\"}", 3);
    }
    return rc;
}

/* Queue rows as an engine batch writes them (its send step binds the time
** it formats, engine.c): one transaction, then wake. */
static int fb_queue(fbench *fb, long n, cm_err *err)
{
    char at[CM_TIME_BUFSZ];
    int rc = cm_store_begin(fb->a.store, err);
    sqlite3_stmt *st =
        rc ? NULL
           : cm_store_prepare(fb->a.store,
                              "INSERT INTO outbox(receiver, kind, payload, created, sender, "
                              "purpose, classes, peer) VALUES ('bench-receiver', 'bench.note', "
                              "?1, ?3, 'bench-sender', 'care_coordination', 'notes', ?2)",
                              err);
    for (long i = 0; st && rc == 0 && i < n; i++) {
        cm_time_format(cm_clock_now_ms(fb->a.clock), at, sizeof(at));
        sqlite3_bind_text(st, 3, at, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 1, fb->payload, -1, SQLITE_STATIC);
        /* routed as the engine queues it for an organization on a peer */
        sqlite3_bind_text(st, 2, fb->b.id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = cm_store_error(fb->a.store, err, "outbox");
        sqlite3_reset(st);
        if (rc == 0 && sqlite3_last_insert_rowid(cm_store_db(fb->a.store)) != fb->queued + i + 1)
            rc = cm_err_set(err, CM_EIO, "outbox: rows are not numbered from 1");
    }
    if (rc == 0 && !st)
        rc = err->code;
    if (rc == 0)
        rc = cm_store_commit(fb->a.store, err);
    else if (cm_store_in_tx(fb->a.store))
        cm_store_rollback(fb->a.store);
    if (rc != 0)
        return rc;
    int64_t now = cm_mono_ns() / 1000;
    for (long i = 1; i <= n; i++)
        fb->queued_us[fb->queued + i] = now;
    if (fb->queued == 1 && n > 0)
        fb->t0 = now; /* the first measured row: the link is up */
    fb->queued += n;
    cm_fed_wake(fb->a.fed);
    return 0;
}

static void fb_on_stop(uv_async_t *h)
{
    fbench *fb = h->data;
    cm_fed_stop(fb->b.fed);
    uv_close((uv_handle_t *)&fb->stop, NULL);
}

static void *fb_receiver(void *arg)
{
    fbench *fb = arg;
    uv_run(&fb->b.loop, UV_RUN_DEFAULT);
    return NULL;
}

static void fb_finish(fbench *fb)
{
    if (fb->finished)
        return;
    fb->finished = true;
    cm_fed_stop(fb->a.fed);
    uv_close((uv_handle_t *)&fb->produce, NULL);
    uv_close((uv_handle_t *)&fb->more, NULL);
    uv_close((uv_handle_t *)&fb->deadline, NULL);
    uv_async_send(&fb->stop);
}

static void fb_more(uv_idle_t *h)
{
    (void)h; /* only keeps the loop from waiting; fb_produce does the work */
}

/* After each turn of a's loop: keep the outbox topped up to the backlog.
** Row 1 brings the link up; the measured rows follow once it is answered. */
static void fb_produce(uv_check_t *h)
{
    fbench *fb = h->data;
    cm_err err;
    long room = fb->o->backlog - (fb->queued - fb->settled), n = fb->total - fb->queued;
    if (fb->done) {
        fb_finish(fb);
        return;
    }
    if (fb->queued == 0)
        n = 1;
    else if (fb->settled == 0)
        n = 0;
    if (n > room)
        n = room;
    if (n > fb->o->batch)
        n = fb->o->batch;
    if (n > 0 && fb_queue(fb, n, &err) != 0) {
        fprintf(stderr, "caremesh bench federation: %s\n", err.msg);
        fb->done = true;
        fb_finish(fb);
        return;
    }
    /* room left for another batch: queue it on the next turn even if no
    ** answer wakes the loop (an engine with work ready commits batch after
    ** batch) */
    if (n > 0 && n < room && fb->queued < fb->total)
        uv_idle_start(&fb->more, fb_more);
    else
        uv_idle_stop(&fb->more);
}

static void fb_on_deadline(uv_timer_t *t)
{
    fbench *fb = t->data;
    fb->timed_out = fb->done = true;
    fb_finish(fb);
}

static void fb_settled(void *ud, const char *peer, int64_t seq, const char *result)
{
    fbench *fb = ud;
    int64_t now = cm_mono_ns() / 1000;
    (void)peer;
    if (seq < 1 || seq > fb->queued) {
        fb->strays++;
        return;
    }
    fb->settled++;
    if (strcmp(result, "refused") == 0)
        fb->refused++;
    if (seq > 1 && fb->nlat < fb->total) {
        fb->lat[fb->nlat++] = now - fb->queued_us[seq];
        fb->t1 = now;
    }
    if (fb->settled >= fb->total)
        fb->done = true;
}

/* b's thread: each message recorded, in commit order. */
static void fb_received(void *ud, const char *peer, const char *id, const char *kind,
                        const char *receiver)
{
    fbench *fb = ud;
    const char *colon = strrchr(id, ':');
    long seq = colon ? strtol(colon + 1, NULL, 10) : -1;
    (void)peer, (void)kind, (void)receiver;
    if (seq != fb->last_seq + 1)
        fb->disorder++;
    fb->last_seq = seq;
    fb->received++;
}

static int fb_start(fbench *fb, cm_err *err)
{
    int pa = free_port(), pb = free_port(), rc;
    if (!pa || !pb || pa == pb)
        return cm_err_set(err, CM_EIO, "no free loopback port");
    fnode_link(&fb->a, pa, &fb->b, pb);
    fnode_link(&fb->b, pb, &fb->a, pa);
    cm_fed_opts ob = {.loop = &fb->b.loop,
                      .store = fb->b.store,
                      .clock = fb->b.clock,
                      .cfg = &fb->b.cfg,
                      .node_id = fb->b.id,
                      .keys = &fb->b.keys,
                      .on_received = fb_received,
                      .on_received_ud = fb,
                      .proto_minor = fb->o->proto};
    cm_fed_opts oa = {.loop = &fb->a.loop,
                      .store = fb->a.store,
                      .clock = fb->a.clock,
                      .cfg = &fb->a.cfg,
                      .node_id = fb->a.id,
                      .keys = &fb->a.keys,
                      .window = fb->o->window,
                      .on_settled = fb_settled,
                      .on_settled_ud = fb};
    if ((rc = cm_fed_start(&ob, &fb->b.fed, err)) != 0 ||
        (rc = cm_fed_start(&oa, &fb->a.fed, err)) != 0)
        return rc;
    uv_async_init(&fb->b.loop, &fb->stop, fb_on_stop);
    uv_check_init(&fb->a.loop, &fb->produce);
    uv_idle_init(&fb->a.loop, &fb->more);
    uv_timer_init(&fb->a.loop, &fb->deadline);
    fb->stop.data = fb->produce.data = fb->more.data = fb->deadline.data = fb;
    fb->handles = true;
    uv_check_start(&fb->produce, fb_produce);
    uv_timer_start(&fb->deadline, fb_on_deadline, 60000 + (uint64_t)fb->o->messages, 0);
    return 0;
}

/* Stop what started when the run could not begin; the loops finish the closes. */
static void fb_abort(fbench *fb)
{
    cm_fed_stop(fb->a.fed);
    cm_fed_stop(fb->b.fed);
    if (fb->handles) {
        uv_close((uv_handle_t *)&fb->stop, NULL);
        uv_close((uv_handle_t *)&fb->produce, NULL);
        uv_close((uv_handle_t *)&fb->more, NULL);
        uv_close((uv_handle_t *)&fb->deadline, NULL);
    }
    if (fb->a.loop_init)
        uv_run(&fb->a.loop, UV_RUN_DEFAULT);
    if (fb->b.loop_init)
        uv_run(&fb->b.loop, UV_RUN_DEFAULT);
}

/* What the two databases hold once both loops are done. */
static void fb_counts(fbench *fb, long *rows, long *distinct, long *delivered, long *sends)
{
    sqlite3_stmt *st = cm_store_prepare(
        fb->b.store, "SELECT count(*), count(DISTINCT msg_id) FROM inbox WHERE peer = ?1", NULL);
    *rows = *distinct = *delivered = *sends = -1;
    if (st) {
        sqlite3_bind_text(st, 1, fb->a.id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            *rows = sqlite3_column_int64(st, 0);
            *distinct = sqlite3_column_int64(st, 1);
        }
        sqlite3_reset(st);
    }
    st = cm_store_prepare(
        fb->a.store, "SELECT count(*) FROM outbox_state WHERE status = 'delivered' AND peer = ?1",
        NULL);
    if (st) {
        sqlite3_bind_text(st, 1, fb->b.id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            *delivered = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    *sends = cm_fed_sent(fb->a.fed);
}

static int fb_report(fbench *fb, cm_err *err)
{
    long rows, distinct, delivered, sends, n = fb->o->messages, batches, batched;
    fb_counts(fb, &rows, &distinct, &delivered, &sends);
    cm_fed_batch_counts(fb->a.fed, &batches, &batched);
    qsort(fb->lat, (size_t)fb->nlat, sizeof(*fb->lat), cmp64);
    int64_t p50 = fb->nlat ? fb->lat[fb->nlat / 2] : 0;
    int64_t p99 = fb->nlat ? fb->lat[(fb->nlat * 99) / 100] : 0;
    double secs = fb->t1 > fb->t0 ? (double)(fb->t1 - fb->t0) / 1e6 : 0;
    double rate = secs > 0 ? (double)fb->nlat / secs : 0;
    bool once = rows == fb->total && distinct == fb->total && delivered == fb->total;
    bool in_order = fb->disorder == 0 && fb->received == fb->total;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("delivered and acknowledged: %ld of %ld in %.3f s (%ld refused)%s\n", fb->nlat, n, secs,
           fb->refused, fb->timed_out ? " -- timed out" : "");
    printf("federation: %.0f durable msgs/s, queued-to-acked p50 %lld us, p99 %lld us\n", rate,
           (long long)p50, (long long)p99);
    printf("receiver inbox: %ld rows, %ld distinct, %s; sender outbox: %ld delivered after %ld "
           "sends, %ld of them in %ld batches\n",
           rows, distinct, in_order ? "recorded in the order sent" : "NOT in the order sent",
           delivered, sends, batched, batches);
    printf("{\"msgs_per_s\":%.0f,\"p50_us\":%lld,\"p99_us\":%lld,\"messages\":%ld,"
           "\"received\":%ld,\"sends\":%ld,\"once\":%s,\"in_order\":%s,\"window\":%d,\"batch\":%d,"
           "\"backlog\":%d,\"size\":%d,\"receiver\":\"inbox\",\"receiver_proto\":\"1.%d\","
           "\"batches\":%ld,\"batched\":%ld,\"cpu_s\":%.2f,\"max_rss_kb\":%ld}\n",
           rate, (long long)p50, (long long)p99, fb->nlat, fb->received - 1, sends - 1,
           once ? "true" : "false", in_order ? "true" : "false", fb->o->window, fb->o->batch,
           fb->o->backlog, fb->o->size, fb->o->proto ? fb->o->proto : CM_FED_PROTO_MINOR, batches,
           batched,
           (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6,
           ru.ru_maxrss);
    if (fb->timed_out || !once || !in_order || fb->refused || fb->strays)
        return cm_err_set(err, CM_EIO,
                          "%ld of %ld acknowledged, inbox %ld rows (%ld distinct), %ld out of "
                          "order, %ld refused%s",
                          fb->nlat, n, rows, distinct, fb->disorder, fb->refused,
                          fb->timed_out ? ", timed out" : "");
    return 0;
}

int cm_bench_federation(const cm_bench_fed_opts *o, cm_err *err)
{
    fbench *fb = calloc(1, sizeof(*fb));
    const char *base = o->dir ? o->dir : getenv("TMPDIR");
    pthread_t th;
    int rc;
    if (!fb)
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    fb->o = o;
    fb->total = o->messages + 1;
    fb->queued_us = calloc((size_t)fb->total + 1, sizeof(*fb->queued_us));
    fb->lat = calloc((size_t)fb->total, sizeof(*fb->lat));
    snprintf(fb->dir, sizeof(fb->dir), "%s/caremesh-fedbench-XXXXXX",
             base && *base ? base : "/tmp");
    if (!fb->queued_us || !fb->lat) {
        rc = cm_err_set(err, CM_ENOMEM, "out of memory");
        goto done;
    }
    if (!mkdtemp(fb->dir)) {
        fb->dir[0] = '\0';
        rc = cm_err_set(err, CM_EIO, "cannot make a directory under %s", base ? base : "/tmp");
        goto done;
    }
    cm_log_set_level(CM_LOG_WARN); /* a line per message would measure the log */
    if ((rc = fnode_open(fb, &fb->a, "bench-a", err)) != 0 ||
        (rc = fnode_open(fb, &fb->b, "bench-b", err)) != 0 || (rc = fb_world(fb, err)) != 0)
        goto done;
    if ((rc = fb_start(fb, err)) != 0) {
        fb_abort(fb);
        goto done;
    }
    printf("caremesh bench federation: %ld messages of %d bytes, node to node on loopback "
           "(CURVE, ZAP), window %d, outbox rows queued %d per commit, at most %d waiting; "
           "synchronous=FULL on both nodes; receiver: inbox only (no engine)\n",
           o->messages, o->size, o->window, o->batch, o->backlog);
    if (pthread_create(&th, NULL, fb_receiver, fb) != 0) {
        rc = cm_err_set(err, CM_EIO, "cannot start the receiver's thread");
        fb_abort(fb);
        goto done;
    }
    uv_run(&fb->a.loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    rc = fb_report(fb, err);
done:
    rc = fnode_close(&fb->a, rc, err);
    rc = fnode_close(&fb->b, rc, err);
    if (fb->dir[0])
        rmdir(fb->dir);
    free(fb->payload);
    free(fb->queued_us);
    free(fb->lat);
    free(fb);
    return rc;
}
