/*
** crashee.c -- a process for tests/integration/test_crash.sh to kill -9 at
** any moment. It drives one instance of a counting workflow with events
** numbered from where the durable state says it stopped, and appends each
** event number to an acknowledgement log only after the engine acknowledged
** it (after the commit). Its store checkpoints every few pages, on the
** checkpoint thread and at the end by the writer. With "pipeline" the engine
** runs on a loop with group commit pipelined (an ack after the sync thread's
** fsync that covers it), every event queued at once.
** usage: crashee DB WORKFLOW.lua ACKLOG N [pipeline]
*/
#include "engine.h"
#include "lhost.h"
#include "lworkflow.h"
#include "sandbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct acklog {
    FILE *f;
    long n;
    long total;
    /* pipeline: at most 32 events outstanding, more submitted from each ack;
    ** the loop stops at the last ack */
    uv_loop_t *loop;
    cm_engine *engine;
    cJSON *payload, *num;
    long submit; /* the next event to submit */
} acklog;

static void die(const char *what, const cm_err *err)
{
    fprintf(stderr, "crashee: %s: %s\n", what, err->msg);
    exit(2);
}

static void on_ack(void *ud, const cm_ack *ack);

static void submit(acklog *log, long i)
{
    cm_err err;
    cJSON_SetNumberValue(log->num, (double)i);
    if (cm_engine_signal(log->engine, "c-1", "inc", log->payload, on_ack, log, &err) != 0)
        die("signal", &err);
}

static void top_up(acklog *log)
{
    while (log->submit <= log->total && log->submit - log->n < 32)
        submit(log, log->submit++);
}

static void on_ack(void *ud, const cm_ack *ack)
{
    acklog *log = ud;
    if (ack->status != 0) {
        fprintf(stderr, "crashee: event refused: %s\n", ack->message);
        exit(3);
    }
    fprintf(log->f, "%ld\n", log->n++);
    fflush(log->f);
    fsync(fileno(log->f));
    if (log->loop && log->n > log->total)
        uv_stop(log->loop);
    else if (log->loop)
        top_up(log);
}

int main(int argc, char **argv)
{
    cm_store_opts so;
    cm_store *store = NULL;
    cm_err err;
    bool pipeline = argc == 6 && strcmp(argv[5], "pipeline") == 0;
    if (argc != 5 && !pipeline)
        return fprintf(stderr, "usage: crashee DB WORKFLOW ACKLOG N [pipeline]\n"), 2;
    long total = strtol(argv[4], NULL, 10);
    cm_store_opts_init(&so);
    so.path = argv[1];
    so.create = true;
    so.checkpoint_pages = 8; /* checkpoints all the time: kills land during them too */
    if (cm_store_open(&store, &so, &err) != 0)
        die("store", &err);
    cm_clock *clock = cm_clock_new_system();
    cm_model *model = cm_model_new(store, clock);
    cm_sandbox *sb = cm_sandbox_new(NULL, &err);
    cm_lua_host host = {store, model, clock, "crashee", NULL, NULL, NULL, NULL};
    if (!sb || cm_lua_host_set(cm_sandbox_state(sb), &host, &err) != 0)
        die("sandbox", &err);
    cm_sandbox_preload(sb, "caremesh", cm_lua_open_caremesh);
    cm_lua_runtime *rt = cm_lua_runtime_new(sb, &err);
    cm_engine_opts eo = {.store = store,
                         .model = model,
                         .clock = clock,
                         .runtime = cm_lua_runtime_seam(rt),
                         .batch_max = 16,
                         .pipeline = pipeline};
    cm_engine *engine = cm_engine_new(&eo, &err);
    if (!engine || cm_engine_load_file(engine, argv[2], NULL, NULL, &err) != 0)
        die("engine", &err);
    /* where the durable state says we are */
    cJSON *inst = NULL;
    long next = 1;
    if (cm_engine_get(engine, "c-1", &inst, &err) == 0) {
        cJSON *last = cJSON_GetObjectItem(cJSON_GetObjectItem(inst, "context"), "last");
        next = cJSON_IsNumber(last) ? (long)last->valuedouble + 1 : 1;
        cJSON_Delete(inst);
    } else {
        if (cm_engine_start(engine, "counter", NULL, "c-1", NULL, NULL, &err) != 0 ||
            cm_engine_run(engine, NULL, &err) != 0)
            die("start", &err);
    }
    uv_loop_t loop;
    acklog log = {
        fopen(argv[3], "a"), next, total, pipeline ? &loop : NULL, engine, NULL, NULL, next};
    if (!log.f)
        return perror(argv[3]), 2;
    log.payload = cJSON_CreateObject();
    log.num = cJSON_AddNumberToObject(log.payload, "n", 0);
    if (pipeline) {
        if (uv_loop_init(&loop) != 0 || cm_engine_attach(engine, &loop, &err) != 0)
            die("attach", &err);
        top_up(&log);
        if (next <= total)
            uv_run(&loop, UV_RUN_DEFAULT);
        cm_engine_detach(engine);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    for (long i = next; !pipeline && i <= total; i++) {
        submit(&log, i);
        if (i % 7 == 0 || i == total)
            if (cm_engine_run(engine, NULL, &err) != 0)
                die("run", &err);
    }
    cJSON_Delete(log.payload);
    fclose(log.f);
    cm_engine_destroy(&engine);
    cm_lua_runtime_destroy(&rt);
    cm_sandbox_destroy(&sb);
    cm_model_destroy(&model);
    if (cm_store_close_v2(&store, &err) != 0)
        die("close", &err);
    cm_clock_destroy(&clock);
    return 0;
}
