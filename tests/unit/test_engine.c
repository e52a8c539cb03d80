/*
** test_engine.c -- the durable workflow engine with the Lua runtime: starts,
** events, timers on a virtual clock, effects, failures kept and parked,
** pause/resume/cancel, children, hot reload, recovery and group commit.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "audit.h"
#include "engine.h"
#include "lhost.h"
#include "lworkflow.h"
#include "node.h"
#include "support.h"
#include "syncgate.h"
#include "text.h"

#define HOUR (3600 * 1000LL)
#define DAY  (24 * HOUR)

typedef struct acks {
    int n;
    int status[256];
    bool kept[256];
    char state[256][64];
    char instance[256][128];
    char message[256][512];
    const char *db_path; /* when set, each ack checks the state is already on disk */
    int on_disk_mismatch;
    /* when set, each ack notes what an answer made now may show, and the watermark */
    cm_engine *engine;
    cm_store *store;
    uint64_t output[256], synced[256];
    /* ... and the times of its event (cm_engine_ack_times_get), times_rc its answer */
    cm_engine_ack_times times[256];
    int times_rc[256];
    uint64_t batches[256]; /* batches committed when it was told */
} acks;

typedef struct fx {
    char *dir;
    char db[1024];
    cm_store *store;
    cm_clock *clock;
    cm_model *model;
    cm_sandbox *sb;
    cm_lua_host host;
    cm_lua_runtime *rt;
    cm_engine *engine;
    int batch_ms;         /* cm_engine_opts.batch_ms; 0: by count only */
    int batch_max;        /* cm_engine_opts.batch_max; 0: 16 */
    int cache_max;        /* cm_engine_opts.cache_max; 0: the default */
    size_t lua_memory;    /* the sandbox's memory cap; 0: the default */
    bool count_installed; /* the engine asks through counting_installed */
    cm_runtime seam;
    const char *peer; /* the one configured federation peer, or NULL */
    bool pipeline;    /* cm_engine_opts.pipeline, the store's syncs through gate */
    cm_test_gate gate;
    acks a;
} fx;

static const char *REFERRAL =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'referral', version = 1,\n"
    "  input = { patient = 'patient', reason = 'string', urgent = 'boolean?' },\n"
    "  start = 'requested',\n"
    "  states = {\n"
    "    requested = {\n"
    "      enter = function(wf)\n"
    "        wf.ctx.reason = wf.input.reason\n"
    "        wf:after('72h', 'no_response')\n"
    "        wf:after('30d', 'loop_deadline', nil, { keep = true })\n"
    "      end,\n"
    "      on = {\n"
    "        accepted = 'accepted',\n"
    "        declined = { to = 'declined', guard = function(wf, ev) return ev.reason ~= nil end "
    "},\n"
    "        no_response = function(wf)\n"
    "          wf:task { title = 'Call the specialist', role = 'care_coordinator',\n"
    "                    organization = 'clinic-a', patient = wf.input.patient, due = '1d' }\n"
    "          return 'escalated'\n"
    "        end,\n"
    "        boom = function(wf) wf.ctx.touched = true; error('kaput') end,\n"
    "        spin = function(wf) while true do end end,\n"
    "      },\n"
    "    },\n"
    "    escalated = { on = { accepted = 'accepted' } },\n"
    "    accepted = {\n"
    "      enter = function(wf) wf:kpi('referrals_accepted', 1, { site = 'clinic-a' }) end,\n"
    "      on = { consult_note = 'closed' },\n"
    "    },\n"
    "    declined = { final = true },\n"
    "    closed = { final = true, enter = function(wf)\n"
    "      wf:notify { channel = 'sms', to = wf.input.patient, message = 'Your referral is closed' "
    "}\n"
    "      wf:send('cardio-b', 'referral.closed', { id = wf.id },\n"
    "              { from = 'clinic-a', purpose = 'care_coordination' })\n"
    "    end },\n"
    "  },\n"
    "}\n";

static void on_ack(void *ud, const cm_ack *ack)
{
    acks *a = ud;
    int i = a->n++;
    a->status[i] = ack->status;
    a->kept[i] = ack->kept;
    snprintf(a->state[i], sizeof(a->state[i]), "%s", ack->state ? ack->state : "");
    snprintf(a->instance[i], sizeof(a->instance[i]), "%s", ack->instance ? ack->instance : "");
    snprintf(a->message[i], sizeof(a->message[i]), "%s", ack->message ? ack->message : "");
    if (a->engine) {
        a->output[i] = cm_engine_output_seq(a->engine);
        a->synced[i] = cm_store_synced_seq(a->store);
        a->times_rc[i] = cm_engine_ack_times_get(a->engine, &a->times[i]);
        cm_engine_stats st;
        cm_engine_stats_get(a->engine, &st);
        a->batches[i] = st.batches;
    }
    if (a->db_path && ack->status == 0 && ack->instance) {
        /* A second connection sees the acknowledged state: the commit came first. */
        sqlite3 *db;
        sqlite3_stmt *st;
        sqlite3_open_v2(a->db_path, &db, SQLITE_OPEN_READONLY, NULL);
        sqlite3_prepare_v2(db, "SELECT state FROM instance WHERE id = ?1", -1, &st, NULL);
        sqlite3_bind_text(st, 1, ack->instance, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW ||
            strcmp((const char *)sqlite3_column_text(st, 0), ack->state) != 0)
            a->on_disk_mismatch++;
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
}

static bool route_at_insert(void *ud, const char *node)
{
    fx *f = ud;
    return f->peer && strcmp(f->peer, node) == 0;
}

static const cm_runtime *real_seam;
static int installed_calls;

static bool counting_installed(void *ud, const char *name, int rev)
{
    installed_calls++;
    return real_seam->installed(ud, name, rev);
}

static void open_engine(fx *f)
{
    cm_store_opts so;
    cm_err err;
    cm_engine_opts eo;
    cm_store_opts_init(&so);
    so.path = f->db;
    so.create = true;
    if (f->pipeline) {
        so.sync_fn = cm_test_gate_sync;
        so.sync_ud = &f->gate;
    }
    assert_int_equal(cm_store_open(&f->store, &so, &err), 0);
    f->model = cm_model_new(f->store, f->clock);
    cm_sandbox_limits limits = {0, f->lua_memory};
    f->sb = cm_sandbox_new(&limits, &err);
    assert_non_null(f->sb);
    f->host = (cm_lua_host){f->store, f->model, f->clock, "test-node", NULL, NULL, NULL, NULL};
    assert_int_equal(cm_lua_host_set(cm_sandbox_state(f->sb), &f->host, &err), 0);
    cm_sandbox_preload(f->sb, "caremesh", cm_lua_open_caremesh);
    f->rt = cm_lua_runtime_new(f->sb, &err);
    assert_non_null(f->rt);
    memset(&eo, 0, sizeof(eo));
    eo.store = f->store;
    eo.model = f->model;
    eo.clock = f->clock;
    eo.runtime = cm_lua_runtime_seam(f->rt);
    if (f->count_installed) {
        real_seam = eo.runtime;
        f->seam = *real_seam;
        f->seam.installed = counting_installed;
        eo.runtime = &f->seam;
    }
    eo.max_attempts = 3;
    eo.retry_base_ms = 1000;
    eo.batch_max = f->batch_max ? f->batch_max : 16;
    eo.batch_ms = f->batch_ms ? f->batch_ms : -1; /* by count unless a test says */
    eo.route_at_insert = route_at_insert;
    eo.route_ud = f;
    eo.cache_max = f->cache_max;
    eo.pipeline = f->pipeline;
    f->engine = cm_engine_new(&eo, &err);
    assert_non_null(f->engine);
}

static void close_engine(fx *f)
{
    cm_engine_destroy(&f->engine);
    cm_lua_runtime_destroy(&f->rt);
    cm_sandbox_destroy(&f->sb);
    cm_model_destroy(&f->model);
    cm_test_store_close(&f->store);
}

static void seed(fx *f)
{
    cm_err err;
    const char *docs[][2] = {
        {"organization", "{\"id\":\"clinic-a\",\"name\":\"Clinic A\",\"kind\":\"clinic\"}"},
        {"organization", "{\"id\":\"cardio-b\",\"name\":\"Cardio B\",\"kind\":\"clinic\","
                         "\"node\":\"node-b\"}"},
        {"partnership",
         "{\"id\":\"ab\",\"name\":\"A-B\",\"purpose\":\"coordination\",\"reviewCadence\":"
         "\"annual\",\"members\":[{\"organization\":\"clinic-a\"},{\"organization\":"
         "\"cardio-b\"}],\"terms\":[{\"receiver\":\"cardio-b\",\"classes\":[\"notes\"],"
         "\"purposes\":[\"care_coordination\"]}]}"},
        {"patient", "{\"id\":\"pat-1\",\"name\":{\"family\":\"Rivera\",\"given\":[\"Ana\"]},"
                    "\"birthDate\":\"1958-04-12\",\"gender\":\"female\"}"},
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        cJSON *doc = cJSON_Parse(docs[i][1]);
        assert_int_equal(
            cm_model_create(f->model, (cm_kind)cm_kind_parse(docs[i][0]), doc, NULL, &err), 0);
        cJSON_Delete(doc);
    }
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    f->dir = cm_test_tmpdir();
    snprintf(f->db, sizeof(f->db), "%s/caremesh.db", f->dir);
    f->clock = cm_clock_new_virtual(1795950000000LL); /* 2026-11-29T11:00:00Z */
    open_engine(f);
    seed(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    close_engine(f);
    if (f->pipeline)
        cm_test_gate_destroy(&f->gate);
    cm_clock_destroy(&f->clock);
    cm_test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Write a workflow file and load it; returns the engine's code. */
static int load(fx *f, const char *file, const char *text, int *rev, cm_err *err)
{
    const char *path = cm_test_path(f->dir, file);
    cm_test_write(path, text, strlen(text));
    return cm_engine_load_file(f->engine, path, NULL, rev, err);
}

static void load_ok(fx *f, const char *file, const char *text)
{
    cm_err err;
    if (load(f, file, text, NULL, &err) != 0)
        fail_msg("load %s: %s", file, err.msg);
}

static void run(fx *f)
{
    cm_err err;
    if (cm_engine_run(f->engine, NULL, &err) != 0)
        fail_msg("run: %s", err.msg);
}

static void start(fx *f, const char *json, const char *id)
{
    cm_err err;
    cJSON *input = cJSON_Parse(json);
    assert_int_equal(cm_engine_start(f->engine, "referral", input, id, on_ack, &f->a, &err), 0);
    cJSON_Delete(input);
}

static void signal_ev(fx *f, const char *id, const char *event, const char *json)
{
    cm_err err;
    cJSON *payload = json ? cJSON_Parse(json) : NULL;
    assert_int_equal(cm_engine_signal(f->engine, id, event, payload, on_ack, &f->a, &err), 0);
    cJSON_Delete(payload);
}

static cJSON *get(fx *f, const char *id)
{
    cJSON *out = NULL;
    cm_err err;
    if (cm_engine_get(f->engine, id, &out, &err) != 0)
        fail_msg("get %s: %s", id, err.msg);
    return out;
}

static const char *field(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void expect_state(fx *f, const char *id, const char *state, const char *status)
{
    cJSON *inst = get(f, id);
    assert_string_equal(field(inst, "state"), state);
    assert_string_equal(field(inst, "status"), status);
    cJSON_Delete(inst);
}

static long count(fx *f, const char *sql)
{
    return cm_test_count(f->store, sql);
}

static void advance(fx *f, int64_t ms)
{
    assert_int_equal(cm_clock_advance(f->clock, ms), 0);
    run(f);
}

static const char *INPUT = "{\"patient\":\"pat-1\",\"reason\":\"chest pain on exertion\"}";

/* The referral workflow loaded, instances ref-1 to ref-n started and run. */
static void start_referrals(fx *f, int n)
{
    char id[16];
    load_ok(f, "referral.lua", REFERRAL);
    for (int i = 1; i <= n; i++) {
        snprintf(id, sizeof(id), "ref-%d", i);
        start(f, INPUT, id);
    }
    run(f);
}

static void test_start_runs_enter_and_arms_timers(void **state)
{
    fx *f = *state;
    load_ok(f, "referral.lua", REFERRAL);
    f->a.db_path = f->db;
    start(f, INPUT, "ref-1");
    assert_int_equal(f->a.n, 0); /* nothing is acknowledged before the batch commits */
    run(f);
    assert_int_equal(f->a.n, 1);
    if (f->a.status[0] != 0)
        fail_msg("start: %s", f->a.message[0]);
    assert_string_equal(f->a.state[0], "requested");
    assert_int_equal(f->a.on_disk_mismatch, 0);
    cJSON *inst = get(f, "ref-1");
    assert_string_equal(field(cJSON_GetObjectItem(inst, "context"), "reason"),
                        "chest pain on exertion");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(inst, "timers")), 2);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(inst, "history")), 1);
    cJSON_Delete(inst);
    assert_int_equal(cm_engine_next_due(f->engine), 1795950000000LL + 72 * HOUR);
}

static void test_events_change_state_after_commit(void **state)
{
    fx *f = *state;
    load_ok(f, "referral.lua", REFERRAL);
    f->a.db_path = f->db;
    start(f, INPUT, "ref-1");
    run(f);
    signal_ev(f, "ref-1", "accepted", NULL);
    run(f);
    assert_int_equal(f->a.status[1], 0);
    assert_string_equal(f->a.state[1], "accepted");
    assert_int_equal(f->a.on_disk_mismatch, 0);
    /* the 72h timer belonged to 'requested'; the 30d deadline is kept */
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE name = 'no_response'"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE name = 'loop_deadline'"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM kpi_observation WHERE name = "
                              "'referrals_accepted'"),
                     1);
    signal_ev(f, "ref-1", "consult_note", "{\"note\":\"echo normal\"}");
    run(f);
    if (f->a.status[2] != 0)
        fail_msg("consult_note: %s", f->a.message[2]);
    expect_state(f, "ref-1", "closed", "done");
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM notification WHERE channel = 'sms' AND "
                              "recipient = 'pat-1'"),
                     1);
    /* node-b is not a configured peer here: federation routes it (or refuses it) */
    assert_int_equal(
        count(f, "SELECT count(*) FROM outbox WHERE receiver = 'cardio-b' AND peer IS NULL"), 1);
    signal_ev(f, "ref-1", "accepted", NULL);
    run(f);
    assert_int_equal(f->a.status[3], CM_EINVAL);
    assert_non_null(strstr(f->a.message[3], "is done"));
}

/* A message to an organization on a configured peer is queued routed. */
static void test_send_to_a_peer_is_queued_routed(void **state)
{
    fx *f = *state;
    close_engine(f);
    f->peer = "node-b";
    open_engine(f);
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    run(f);
    signal_ev(f, "ref-1", "accepted", NULL);
    signal_ev(f, "ref-1", "consult_note", "{\"note\":\"echo normal\"}");
    run(f);
    expect_state(f, "ref-1", "closed", "done");
    assert_int_equal(count(f, "SELECT count(*) FROM outbox WHERE receiver = 'cardio-b' AND peer "
                              "= 'node-b' AND status = 'pending'"),
                     1);
}

static void test_timer_fires_on_the_virtual_clock(void **state)
{
    fx *f = *state;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    run(f);
    advance(f, 71 * HOUR);
    expect_state(f, "ref-1", "requested", "running");
    advance(f, 2 * HOUR);
    expect_state(f, "ref-1", "escalated", "running");
    cJSON *tasks = NULL;
    cm_err err;
    cJSON *filter = cJSON_Parse("{\"ownerRole\":\"care_coordinator\"}");
    assert_int_equal(cm_model_find(f->model, CM_KIND_TASK, filter, NULL, 10, &tasks, &err), 0);
    assert_int_equal(cJSON_GetArraySize(tasks), 1);
    cJSON *task = cJSON_GetArrayItem(tasks, 0);
    assert_string_equal(field(task, "patient"), "pat-1");
    assert_string_equal(field(task, "due"), "2026-12-03T12:00:00.000Z");
    cJSON_Delete(tasks);
    cJSON_Delete(filter);
    /* the deadline timer fires in a state that does not listen: noted, not an error */
    advance(f, 30 * DAY);
    expect_state(f, "ref-1", "escalated", "running");
    assert_int_equal(count(f, "SELECT count(*) FROM history WHERE note LIKE 'timer ignored%'"), 1);
    /* the history statement keeps its last bindings (cm_store_prepare_bound):
    ** the next row, a start's, has no note, no from_state and no prev */
    start(f, INPUT, "ref-2");
    run(f);
    expect_state(f, "ref-2", "requested", "running");
    assert_int_equal(count(f, "SELECT count(*) FROM history WHERE note IS NOT NULL"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM history WHERE instance = 'ref-2' AND "
                              "note IS NULL AND from_state IS NULL AND prev IS NULL"),
                     1);
}

/* A row's time is the clock's: within one second the engine writes only the
** new milliseconds of the time it formatted last, a new second in full. */
static void test_history_times_follow_the_clock(void **state)
{
    fx *f = *state;
    static const struct {
        int64_t advance;
        const char *at;
    } rows[] = {
        {0, "2026-11-29T11:00:00.000Z"},       {7, "2026-11-29T11:00:00.007Z"},
        {93, "2026-11-29T11:00:00.100Z"},      {900, "2026-11-29T11:00:01.000Z"},
        {1, "2026-11-29T11:00:01.001Z"},       {998, "2026-11-29T11:00:01.999Z"},
        {1, "2026-11-29T11:00:02.000Z"},       {HOUR + 999, "2026-11-29T12:00:02.999Z"},
        {DAY + 1, "2026-11-30T12:00:03.000Z"},
    };
    load_ok(f, "referral.lua", REFERRAL);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char id[16], sql[160];
        snprintf(id, sizeof(id), "t-%zu", i);
        assert_int_equal(cm_clock_advance(f->clock, rows[i].advance), 0);
        start(f, INPUT, id);
        run(f);
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM history WHERE instance = '%s' AND step = 1 AND at = '%s'",
                 id, rows[i].at);
        assert_int_equal(count(f, sql), 1);
    }
    /* the step's two statements keep the row time bound to the engine's
    ** buffer, which SQLite reads at each step: a step's history row and its
    ** instance's updated have the clock's time, also when the text grows a
    ** byte (year 10000: bound again with its new length; the jump also fires
    ** the instances' 72h timers, in the same run and at the same time) */
    static const struct {
        int64_t advance;
        const char *at;
    } steps[] = {
        {5, "2026-11-30T12:00:03.005Z"},   {0, "2026-11-30T12:00:03.005Z"},
        {995, "2026-11-30T12:00:04.000Z"}, {251606260796005LL, "10000-01-01T00:00:00.005Z"},
        {1, "10000-01-01T00:00:00.006Z"},
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        char id[16], sql[240];
        snprintf(id, sizeof(id), "t-%zu", i);
        assert_int_equal(cm_clock_advance(f->clock, steps[i].advance), 0);
        signal_ev(f, id, "accepted", NULL);
        run(f);
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM instance i JOIN history h ON h.seq = i.hist WHERE "
                 "i.id = '%s' AND h.step > 1 AND h.at = '%s' AND i.updated = h.at",
                 id, steps[i].at);
        assert_int_equal(count(f, sql), 1);
    }
}

static void text_of(fx *f, const char *sql, char *out, size_t n);

/* The step's short texts (the history row's instance, event and states,
** the step row's state and context) stay bound to the engine's buffers,
** which each step overwrites: in one batch, rows whose texts have the same
** lengths but other bytes, other lengths, and a context too long for a
** buffer (bound where it is) between two of the same length each get
** their own texts. */
static void test_kept_texts_hold_each_steps_own_values(void **state)
{
    fx *f = *state;
    static const char *KEPT =
        "local cm = require 'caremesh'\n"
        "local function go(wf, ev) wf.ctx.v = ev.v; return ev.to end\n"
        "local function st() return { on = { go = go, gx = go,\n"
        "  ['go.by.a.much.longer.name'] = go } } end\n"
        "return cm.workflow { name = 'kept', version = 1, start = 'aa',\n"
        "  states = { aa = st(), bb = st(), cc = st(), dddd = st(), done = { final = true } } }\n";
    char longv[260], payload[320], got[1024], want[1024];
    cm_err err;
    memset(longv, 'q', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    load_ok(f, "kept.lua", KEPT);
    for (int i = 1; i <= 3; i++) {
        char id[8];
        snprintf(id, sizeof(id), "k-%d", i);
        assert_int_equal(cm_engine_start(f->engine, "kept", NULL, id, on_ack, &f->a, &err), 0);
    }
    run(f);
    snprintf(payload, sizeof(payload), "{\"to\":\"dddd\",\"v\":\"%s\"}", longv);
    signal_ev(f, "k-1", "go", "{\"to\":\"bb\",\"v\":\"x\"}");
    signal_ev(f, "k-2", "gx", "{\"to\":\"cc\",\"v\":\"y\"}");
    signal_ev(f, "k-3", "go.by.a.much.longer.name", payload);
    signal_ev(f, "k-1", "go", "{\"to\":\"aa\",\"v\":\"z\"}");
    int commits = f->a.n;
    run(f);
    assert_int_equal(f->a.n, commits + 4);
    text_of(f,
            "SELECT group_concat(instance || ' ' || event || ' ' || from_state || ' ' || "
            "to_state, '|') FROM (SELECT * FROM history WHERE event LIKE 'g%' ORDER BY seq)",
            got, sizeof(got));
    assert_string_equal(got, "k-1 go aa bb|k-2 gx aa cc|k-3 go.by.a.much.longer.name aa dddd|"
                             "k-1 go bb aa");
    text_of(f, "SELECT group_concat(id || ' ' || state || ' ' || ctx, '|') FROM instance", got,
            sizeof(got));
    snprintf(want, sizeof(want),
             "k-1 aa {\"v\":\"z\"}|k-2 cc {\"v\":\"y\"}|k-3 dddd {\"v\":\"%s\"}", longv);
    assert_string_equal(got, want);
}

/* A told signal's work item is kept for the next signal (cm_engine_signal):
** each reused item carries its own names and payload, never the last
** one's; names longer than a kept item has room for get an item of their
** own. A signal without payload reads the engine's one empty object, which
** a payload before it does not fill. */
static void test_signal_items_are_reused_with_their_own_names_and_payload(void **state)
{
    fx *f = *state;
    char lid[101];
    memset(lid, 'l', sizeof(lid) - 1);
    lid[sizeof(lid) - 1] = '\0';
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "s");
    start(f, INPUT, lid);
    start(f, INPUT, "m-1");
    start(f, INPUT, "m-2");
    run(f);
    assert_int_equal(f->a.n, 4);
    signal_ev(f, "s", "bogus", NULL); /* refused; its item is kept */
    run(f);
    assert_int_equal(f->a.status[4], CM_EINVAL);
    assert_string_equal(f->a.instance[4], "s");
    signal_ev(f, lid, "accepted", NULL); /* longer than the kept item's room */
    run(f);
    assert_int_equal(f->a.status[5], 0);
    assert_string_equal(f->a.instance[5], lid);
    assert_string_equal(f->a.state[5], "accepted");
    signal_ev(f, "s", "accepted", NULL);     /* the long one's item, reused */
    signal_ev(f, lid, "consult_note", NULL); /* the short one's is too small */
    signal_ev(f, "m-1", "declined", "{\"reason\":\"r\"}");
    run(f);
    signal_ev(f, "m-2", "declined", NULL); /* m-1's item: its payload is gone */
    run(f);
    assert_int_equal(f->a.n, 10);
    for (int i = 6; i < 9; i++)
        assert_int_equal(f->a.status[i], 0);
    assert_string_equal(f->a.instance[6], "s");
    assert_string_equal(f->a.instance[7], lid);
    assert_string_equal(f->a.instance[8], "m-1");
    assert_string_equal(f->a.instance[9], "m-2");
    assert_int_equal(f->a.status[9], CM_EINVAL); /* the guard wants a reason */
    expect_state(f, "s", "accepted", "running");
    expect_state(f, "m-1", "declined", "done");
    expect_state(f, "m-2", "requested", "running");
    assert_int_equal(count(f, "SELECT count(*) FROM history WHERE instance = 's' AND "
                              "event = 'accepted'"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM history WHERE event = 'consult_note' AND "
                              "length(instance) = 100 AND to_state = 'closed'"),
                     1);
}

static int signal_text(fx *f, const char *id, const char *event, const char *text, cm_err *err)
{
    return cm_engine_signal_text(f->engine, id, event, text, strlen(text), on_ack, &f->a, err);
}

/* A payload given as text (cm_engine_signal_text, the HTTP API's route)
** reaches the handlers as the same table, also when held for a paused
** instance and read back from its row, also in a reused item after a long
** one; text that is not one JSON object is refused with a message naming
** what is wrong, and nothing is queued. */
static void test_payload_text_is_read_and_bad_text_refused(void **state)
{
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"", "payload: must be an object"},
        {"[{\"reason\":\"r\"}]", "payload: must be an object"},
        {" \"r\"", "payload: must be an object"},
        {"{\"reason\":}", "payload: not valid JSON (at byte 11)"},
        {"{\"reason\":\"r\",}", "payload: not valid JSON (at byte 15)"},
        {"{\"reason\":\"r\"} {}", "payload: not valid JSON (at byte 16)"},
        {"{\"reason\":\"\\ud800\"}", "payload: not valid JSON (at byte 18)"},
        {"{\"reason\":\"\\u0000\"}", "payload: not valid JSON (at byte 18)"},
        {"{\"reason\":\"r\",\"n\":[0,{\"m\":1e999}]}",
         "payload.n[1].m: number out of range (beyond +-1.7976931348623157e308)"},
        {"{\"n\":-1e309} x", /* the first fault is the one named */
         "payload.n: number out of range (beyond +-1.7976931348623157e308)"},
        {"{\"a\":tru,\"n\":-1e309}", "payload: not valid JSON (at byte 6)"},
    };
    fx *f = *state;
    cm_err err;
    char big[2048];
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "p-1");
    start(f, INPUT, "p-2");
    start(f, INPUT, "p-3");
    run(f);
    int acked = f->a.n;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(signal_text(f, "p-1", "declined", bad[i].text, &err), CM_EINVAL);
        assert_string_equal(err.msg, bad[i].msg);
    }
    assert_int_equal(signal_text(f, "", "declined", "{}", &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "instance: must be"));
    assert_int_equal(signal_text(f, "p-1", "", "{}", &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "event: must be"));
    run(f);
    assert_int_equal(f->a.n, acked); /* nothing was queued */
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 0);
    expect_state(f, "p-1", "requested", "running");
    /* the guard reads ev.reason: the text's table has it */
    assert_int_equal(signal_text(f, "p-1", "declined",
                                 " {\"x\":[1,{\"y\":null}], \"reason\" : "
                                 "\"\\u00e9t\\u00e9\"} ",
                                 &err),
                     0);
    /* held for a paused instance: kept in its row as text, read back on resume */
    assert_int_equal(cm_engine_pause(f->engine, "p-2", &err), 0);
    assert_int_equal(signal_text(f, "p-2", "declined", "{\"reason\":\"held\"}", &err), 0);
    /* a long payload's item is not kept; the next reuses a short one */
    memset(big, ' ', sizeof(big));
    memcpy(big, "{\"reason\":\"long\"", 16);
    big[sizeof(big) - 2] = '}';
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(signal_text(f, "p-3", "accepted", big, &err), 0);
    run(f);
    assert_int_equal(f->a.n, acked + 3);
    assert_int_equal(f->a.status[acked], 0);
    assert_int_equal(f->a.status[acked + 1], 0);
    assert_true(f->a.kept[acked + 1]);
    assert_int_equal(f->a.status[acked + 2], 0);
    expect_state(f, "p-1", "declined", "done");
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE payload = '{\"reason\":\"held\"}'"),
                     1);
    assert_int_equal(cm_engine_resume(f->engine, "p-2", &err), 0);
    run(f);
    expect_state(f, "p-2", "declined", "done");
    assert_int_equal(signal_text(f, "p-3", "declined", "{}", &err), 0); /* refused by the guard */
    run(f);
    assert_int_equal(f->a.status[f->a.n - 1], CM_EINVAL);
    expect_state(f, "p-3", "accepted", "running");
}

/* {"a":[[...]]} with `arrays` arrays into text: its length. */
static size_t nested_payload(char *text, int arrays)
{
    size_t n = 5;
    memcpy(text, "{\"a\":", 5);
    for (int i = 0; i < arrays; i++)
        text[n++] = '[';
    for (int i = 0; i < arrays; i++)
        text[n++] = ']';
    text[n++] = '}';
    return n;
}

/* A payload given as text nests at most CM_JSON_PAYLOAD_DEPTH_MAX deep, its
** object counted, as the API takes one: at the limit it is queued and read
** whole into the step; one level past, refused and nothing queued. */
static void test_payload_text_nests_as_deep_as_the_api_takes(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "deep.lua",
            "local cm = require 'caremesh'\n"
            "return cm.workflow {\n"
            "  name = 'deep', version = 1, start = 'a',\n"
            "  states = {\n"
            "    a = { on = { depth = function(wf, ev) local n, t = 1, ev.a\n"
            "            while type(t) == 'table' do n, t = n + 1, t[1] end\n"
            "            wf.ctx.depth = n end } },\n"
            "    z = { final = true },\n"
            "  },\n"
            "}\n");
    assert_int_equal(cm_engine_start(f->engine, "deep", NULL, "d-1", on_ack, &f->a, &err), 0);
    run(f);
    int acked = f->a.n;
    char *text = malloc(2 * CM_JSON_DEPTH_MAX + 16);
    assert_non_null(text);
    /* one past the limit: the object and CM_JSON_PAYLOAD_DEPTH_MAX arrays */
    size_t n = nested_payload(text, CM_JSON_PAYLOAD_DEPTH_MAX);
    assert_int_equal(cm_engine_signal_text(f->engine, "d-1", "depth", text, n, on_ack, &f->a, &err),
                     CM_EINVAL);
    assert_non_null(strstr(err.msg, "payload: not valid JSON (at byte"));
    run(f);
    assert_int_equal(f->a.n, acked);
    /* at the limit: one array less */
    n = nested_payload(text, CM_JSON_PAYLOAD_DEPTH_MAX - 1);
    assert_int_equal(cm_engine_signal_text(f->engine, "d-1", "depth", text, n, on_ack, &f->a, &err),
                     0);
    free(text);
    run(f);
    assert_int_equal(f->a.n, acked + 1);
    assert_int_equal(f->a.status[acked], 0);
    assert_int_equal(count(f, "SELECT ctx->>'depth' FROM instance WHERE id = 'd-1'"),
                     CM_JSON_PAYLOAD_DEPTH_MAX);
}

/* A number past a double's range (1e999: infinity in a cJSON tree, null
** when printed, inf in Lua) is refused in a start's input and in a
** signal's payload given as a tree, named by its path; nothing is queued. */
static void test_numbers_past_a_double_are_refused(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "p-1");
    run(f);
    int acked = f->a.n;
    cJSON *input = cJSON_Parse(INPUT);
    cJSON_AddItemToObject(input, "extra", cJSON_Parse("{\"k\":[1e999]}"));
    assert_int_equal(cm_engine_start(f->engine, "referral", input, "p-2", on_ack, &f->a, &err),
                     CM_EINVAL);
    assert_string_equal(err.msg,
                        "input.extra.k[0]: number out of range (beyond +-1.7976931348623157e308)");
    cJSON_Delete(input);
    cJSON *payload = cJSON_Parse("{\"reason\":\"r\",\"n\":-1e999}");
    assert_int_equal(cm_engine_signal(f->engine, "p-1", "declined", payload, on_ack, &f->a, &err),
                     CM_EINVAL);
    assert_non_null(strstr(err.msg, "payload.n: number out of range"));
    cJSON_Delete(payload);
    run(f);
    assert_int_equal(f->a.n, acked); /* nothing was queued */
    assert_int_equal(count(f, "SELECT count(*) FROM instance"), 1);
    expect_state(f, "p-1", "requested", "running");
}

/* A payload's text already checked by its caller (cm_engine_signal_checked,
** the HTTP API's event route) is queued as given and reaches the handlers as
** the same table: here the guard reads its reason; its names are still
** checked, and a name refused queues nothing. */
static void test_payload_checked_text_is_queued_as_given(void **state)
{
    static const char text[] = "{\"reason\":\"r\"} trailing bytes not given";
    fx *f = *state;
    cm_err err;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "p-1");
    run(f);
    int acked = f->a.n;
    assert_int_equal(
        cm_engine_signal_checked(f->engine, "", "declined", text, 14, on_ack, &f->a, &err),
        CM_EINVAL);
    assert_non_null(strstr(err.msg, "instance: must be"));
    assert_int_equal(cm_engine_signal_checked(f->engine, "p-1", "", text, 14, on_ack, &f->a, &err),
                     CM_EINVAL);
    assert_non_null(strstr(err.msg, "event: must be"));
    run(f);
    assert_int_equal(f->a.n, acked); /* nothing was queued */
    assert_int_equal(
        cm_engine_signal_checked(f->engine, "p-1", "declined", text, 14, on_ack, &f->a, &err), 0);
    run(f);
    assert_int_equal(f->a.n, acked + 1);
    assert_int_equal(f->a.status[acked], 0);
    expect_state(f, "p-1", "declined", "done");
}

static void test_bad_requests_are_refused_and_change_nothing(void **state)
{
    fx *f = *state;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, "{\"reason\":\"x\"}", NULL);
    start(f, "{\"patient\":\"pat-404\",\"reason\":\"x\"}", NULL);
    start(f, "{\"patient\":\"pat-1\",\"reason\":\"x\",\"colour\":\"red\"}", NULL);
    start(f, "{\"patient\":\"pat-1\",\"reason\":7}", NULL);
    run(f);
    assert_int_equal(f->a.n, 4);
    assert_non_null(strstr(f->a.message[0], "input.patient: required"));
    assert_non_null(strstr(f->a.message[1], "input.patient: "));
    assert_non_null(strstr(f->a.message[1], "pat-404"));
    if (!strstr(f->a.message[2], "input.colour: unknown field"))
        fail_msg("got: %s", f->a.message[2]);
    assert_non_null(strstr(f->a.message[3], "input.reason: expected string, got number"));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(f->a.status[i], CM_EINVAL);
        assert_false(f->a.kept[i]);
    }
    assert_int_equal(count(f, "SELECT count(*) FROM instance"), 0);
    start(f, INPUT, "ref-1");
    run(f);
    long hist = count(f, "SELECT count(*) FROM history");
    signal_ev(f, "ref-1", "bogus", NULL);
    signal_ev(f, "ref-404", "accepted", NULL);
    signal_ev(f, "ref-1", "declined", "{}"); /* the guard wants a reason */
    run(f);
    assert_int_equal(f->a.status[5], CM_EINVAL);
    assert_non_null(strstr(f->a.message[5], "has no transition for event \"bogus\""));
    assert_int_equal(f->a.status[6], CM_ENOTFOUND);
    assert_int_equal(f->a.status[7], CM_EINVAL);
    assert_int_equal(count(f, "SELECT count(*) FROM history"), hist);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 0);
    cm_err err;
    assert_int_equal(cm_engine_start(f->engine, "nope", NULL, "bad id!", NULL, NULL, &err),
                     CM_EINVAL);
    cJSON *arr = cJSON_CreateArray();
    assert_int_equal(cm_engine_signal(f->engine, "ref-1", "accepted", arr, NULL, NULL, &err),
                     CM_EINVAL);
    cJSON_Delete(arr);
}

static void test_failing_handler_is_kept_retried_and_parked(void **state)
{
    fx *f = *state;
    cm_err err;
    cJSON *failed = NULL;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    start(f, INPUT, "ref-2");
    run(f);
    signal_ev(f, "ref-1", "boom", NULL);
    signal_ev(f, "ref-2", "accepted", NULL); /* same batch, unaffected */
    run(f);
    assert_int_equal(f->a.status[2], CM_ELUA);
    assert_true(f->a.kept[2]);
    assert_non_null(strstr(f->a.message[2], "kaput"));
    assert_int_equal(f->a.status[3], 0);
    cJSON *inst = get(f, "ref-1");
    assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(inst, "context"), "touched"));
    assert_string_equal(field(inst, "state"), "requested");
    cJSON_Delete(inst);
    assert_int_equal(count(f, "SELECT attempts FROM event"), 1);
    advance(f, 1000);
    assert_int_equal(count(f, "SELECT attempts FROM event"), 2);
    advance(f, 2000);
    assert_int_equal(count(f, "SELECT attempts FROM event WHERE status = 'failed'"), 3);
    advance(f, DAY); /* parked: no more attempts */
    assert_int_equal(count(f, "SELECT attempts FROM event WHERE status = 'failed'"), 3);
    assert_int_equal(cm_engine_failed(f->engine, &failed, &err), 0);
    assert_int_equal(cJSON_GetArraySize(failed), 1);
    long seq = (long)cJSON_GetObjectItem(cJSON_GetArrayItem(failed, 0), "seq")->valuedouble;
    cJSON_Delete(failed);
    assert_int_equal(cm_engine_retry_event(f->engine, seq, &err), 0);
    run(f);
    assert_int_equal(count(f, "SELECT attempts FROM event WHERE status = 'ready'"), 1);
    assert_int_equal(cm_engine_discard_event(f->engine, seq, &err), CM_ENOTFOUND); /* not parked */
    for (int i = 0; i < 3; i++) /* one attempt per turn of the clock, then parked again */
        advance(f, 60 * 1000);
    assert_int_equal(count(f, "SELECT attempts FROM event WHERE status = 'failed'"), 3);
    assert_int_equal(cm_engine_discard_event(f->engine, seq, &err), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 0);
    expect_state(f, "ref-1", "requested", "running");
}

/* A handler stopped by the instruction budget is a kept failure, counted
** as a budget kill and not as a Lua error (caremesh_lua_budget_kills_total,
** caremesh_lua_errors_total in /metrics). */
static void test_budget_exhaustion_is_a_kept_failure(void **state)
{
    fx *f = *state;
    cm_engine_stats st0, st1;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    run(f);
    cm_engine_stats_get(f->engine, &st0);
    signal_ev(f, "ref-1", "spin", NULL);
    run(f);
    assert_int_equal(f->a.status[1], CM_EBUDGET);
    assert_true(f->a.kept[1]);
    cm_engine_stats_get(f->engine, &st1);
    assert_int_equal(st1.budget_kills, st0.budget_kills + 1);
    assert_int_equal(st1.lua_errors, st0.lua_errors);
    signal_ev(f, "ref-1", "accepted", NULL);
    run(f);
    assert_int_equal(f->a.status[2], 0);
}

/* A payload given as text (the API's route) and kept (its handler failed,
** or held for a paused instance) is stored compact, as the same text as the
** same payload given as cJSON: not with the client's spacing, nor its
** spelling of numbers and escapes; parked, it stays so. */
static void test_a_kept_text_payload_is_stored_as_the_cjson_path_stores_it(void **state)
{
    static const char spaced[] = " { \"reason\" : \"x y\" ,\n\t\"n\" : [ 1 , 2 ] } ";
    static const char spelled[] = "{\"n\": [1.50, 2E1, -0.0], \"s\": \"a\\/b\\u00e9\"}";
    fx *f = *state;
    cm_err err;
    start_referrals(f, 4);
    assert_int_equal(cm_engine_pause(f->engine, "ref-3", &err), 0);
    assert_int_equal(signal_text(f, "ref-1", "boom", spaced, &err), 0);
    assert_int_equal(signal_text(f, "ref-2", "boom", spelled, &err), 0);
    assert_int_equal(signal_text(f, "ref-3", "declined", spaced, &err), 0);
    signal_ev(f, "ref-4", "boom", spelled);
    run(f);
    assert_true(f->a.kept[4] && f->a.kept[5] && f->a.kept[6] && f->a.kept[7]);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance IN ('ref-1', 'ref-3') "
                              "AND payload = '{\"reason\":\"x y\",\"n\":[1,2]}'"),
                     2);
    assert_int_equal(count(f, "SELECT count(*) FROM event a JOIN event b ON b.payload = a.payload "
                              "WHERE a.instance = 'ref-2' AND b.instance = 'ref-4' "
                              "AND a.payload NOT LIKE '% %' AND a.payload NOT LIKE '%1.50%'"),
                     1);
    advance(f, DAY); /* retried until parked: the payload read back and kept as it is */
    advance(f, DAY);
    advance(f, DAY);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'ref-1' AND "
                              "status = 'failed' AND "
                              "payload = '{\"reason\":\"x y\",\"n\":[1,2]}'"),
                     1);
}

/* Steps of two revisions of a workflow and of another workflow, one after
** the other, each run their own definition (the runtime keeps the last one
** it looked up for the next step). */
static void test_steps_alternating_definitions_run_their_own(void **state)
{
    fx *f = *state;
    char text[600];
    const char *ids[] = {"alt-1", "alt-2", "oth-1"};
    const char *wfs[] = {"alt", "alt", "oth"}, *tags[] = {"1", "2", "o"};
    cm_err err;
    for (int i = 0; i < 3; i++) {
        snprintf(
            text, sizeof(text),
            "local cm = require 'caremesh'\n"
            "return cm.workflow {\n"
            "  name = '%s', version = 1, start = 'a',\n"
            "  states = {\n"
            "    a = { on = { tick = function(wf) wf.ctx.seen = (wf.ctx.seen or '') .. '%s' end,\n"
            "                 done = 'b' } },\n"
            "    b = { final = true },\n"
            "  },\n"
            "}\n",
            wfs[i], tags[i]);
        load_ok(f, i == 2 ? "oth.lua" : "alt.lua", text);
        assert_int_equal(cm_engine_start(f->engine, wfs[i], NULL, ids[i], on_ack, &f->a, &err), 0);
        run(f);
    }
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 3; i++) /* in one batch */
            signal_ev(f, ids[i], "tick", NULL);
        run(f);
        for (int i = 2; i >= 0; i--) { /* one at a time, the other way round */
            signal_ev(f, ids[i], "tick", NULL);
            run(f);
        }
    }
    const char *want[] = {"111111", "222222", "oooooo"};
    for (int i = 0; i < 3; i++) {
        cJSON *inst = get(f, ids[i]);
        cJSON *ctx = cJSON_GetObjectItem(inst, "context");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(ctx, "seen")), want[i]);
        cJSON_Delete(inst);
    }
}

/* In its step a handle reads its fields (ctx, id, workflow, state, event,
** input, methods); one kept past its step reads none of them. */
static void test_a_handle_kept_past_its_step_reads_nothing(void **state)
{
    fx *f = *state;
    load_ok(f, "kept.lua",
            "local cm = require 'caremesh'\n"
            "local kept\n"
            "return cm.workflow {\n"
            "  name = 'kept', version = 1, input = { n = 'integer' }, start = 'a',\n"
            "  states = {\n"
            "    a = { enter = function(wf) kept = wf\n"
            "            wf.ctx.seen = table.concat({wf.id, wf.workflow, wf.state,\n"
            "              tostring(wf.input.n), type(wf.go), tostring(wf.nope)}, ' ') end,\n"
            "          on = { next = function(wf, ev, name) wf.ctx.ev = wf.event .. '/' .. name\n"
            "                   return 'b' end } },\n"
            "    b = { on = { [\"ctx\"] = function() return kept.ctx end,\n"
            "                 [\"state\"] = function() return kept.state end,\n"
            "                 [\"go\"] = function() kept:go('a') end, done = 'c' } },\n"
            "    c = { final = true },\n"
            "  },\n"
            "}\n");
    cm_err err;
    cJSON *input = cJSON_Parse("{\"n\":7}");
    assert_int_equal(cm_engine_start(f->engine, "kept", input, "k-1", on_ack, &f->a, &err), 0);
    cJSON_Delete(input);
    run(f);
    assert_int_equal(f->a.status[0], 0);
    signal_ev(f, "k-1", "next", NULL);
    run(f);
    cJSON *inst = get(f, "k-1");
    cJSON *ctx = cJSON_GetObjectItem(inst, "context");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(ctx, "seen")),
                        "k-1 kept a 7 function nil");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(ctx, "ev")), "next/next");
    cJSON_Delete(inst);
    const char *events[] = {"ctx", "state", "go"};
    for (int i = 0; i < 3; i++) {
        signal_ev(f, "k-1", events[i], NULL);
        run(f);
        assert_int_equal(f->a.status[2 + i], CM_ELUA);
        assert_non_null(strstr(f->a.message[2 + i], "belongs to a step that is over"));
    }
    expect_state(f, "k-1", "b", "running");
}

/* wf.ctx is told by the interned string "ctx": a key built at run time
** (concatenated, from bytes, cut from a longer string) is that string and
** reads the context; a key that only starts with "ctx" and a NUL is
** another key, and reads nothing. */
static void test_wf_ctx_is_read_by_any_key_spelled_ctx(void **state)
{
    fx *f = *state;
    load_ok(f, "ctxkey.lua",
            "local cm = require 'caremesh'\n"
            "return cm.workflow {\n"
            "  name = 'ctxkey', version = 1, start = 'a',\n"
            "  states = {\n"
            "    a = { enter = function(wf) wf.ctx.n = 1\n"
            "            local c, b = 'c', 'tx'\n"
            "            local keys = { c .. b, string.char(99, 116, 120), ('xctx'):sub(2),\n"
            "                           table.concat({ 'ct', 'x' }) }\n"
            "            local seen = {}\n"
            "            for i, k in ipairs(keys) do seen[i] = tostring(wf[k] == wf.ctx) end\n"
            "            seen[#seen + 1] = tostring(wf['ctx\\0x'])\n"
            "            wf.ctx.seen = table.concat(seen, ' ') end },\n"
            "    z = { final = true },\n"
            "  },\n"
            "}\n");
    cm_err err;
    assert_int_equal(cm_engine_start(f->engine, "ctxkey", NULL, "c-1", on_ack, &f->a, &err), 0);
    run(f);
    assert_int_equal(f->a.status[0], 0);
    cJSON *inst = get(f, "c-1");
    cJSON *ctx = cJSON_GetObjectItem(inst, "context");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(ctx, "seen")),
                        "true true true true nil");
    cJSON_Delete(inst);
}

/* The handle is read-only, before and after wf.ctx is first read: replacing
** or removing wf.ctx (in a handler or a guard), setting any field, rawset:
** each fails the step, and neither the row nor the copy kept for the next
** step sees what the failed step did (a handle that cached wf.ctx as a
** plain field would have to keep all of this). */
static void test_the_handle_stays_read_only_after_wf_ctx_is_read(void **state)
{
    fx *f = *state;
    load_ok(f, "ro.lua",
            "local cm = require 'caremesh'\n"
            "return cm.workflow {\n"
            "  name = 'ro', version = 1, start = 'a',\n"
            "  states = {\n"
            "    a = { enter = function(wf) wf.ctx.n = 1 end,\n"
            "          on = { twice = function(wf) local c = wf.ctx\n"
            "                   wf.ctx.n = wf.ctx.n + 1\n"
            "                   wf.ctx.same = tostring(c == wf.ctx) end,\n"
            "                 replace = function(wf) wf.ctx.n = 50; wf.ctx = { n = 99 } end,\n"
            "                 replace_first = function(wf) wf.ctx = { n = 99 } end,\n"
            "                 drop = function(wf) local c = wf.ctx; wf.ctx = nil; c.n = 51 end,\n"
            "                 drop_read = function(wf) wf.ctx.n = 52; wf.ctx = nil\n"
            "                   wf.ctx.n = 53 end,\n"
            "                 id = function(wf) wf.ctx.n = 54; wf.id = 'x' end,\n"
            "                 raw = function(wf) wf.ctx.n = 55; rawset(wf, 'ctx', {}) end,\n"
            "                 guarded = { guard = function(wf) wf.ctx.n = 56\n"
            "                   wf.ctx = { n = 57 }; return false end, to = 'a' },\n"
            "                 check = function(wf) wf.ctx.seen = wf.ctx.n end } },\n"
            "    z = { final = true },\n"
            "  },\n"
            "}\n");
    cm_err err;
    assert_int_equal(cm_engine_start(f->engine, "ro", NULL, "ro-1", on_ack, &f->a, &err), 0);
    run(f);
    assert_int_equal(f->a.status[0], 0);
    signal_ev(f, "ro-1", "twice", NULL);
    run(f);
    assert_int_equal(f->a.status[1], 0);
    const char *bad[] = {"replace", "replace_first", "drop", "drop_read", "id", "raw", "guarded"};
    const char *says[] = {
        "wf.ctx: the instance handle is read-only", "wf.ctx: the instance handle is read-only",
        "wf.ctx: the instance handle is read-only", "wf.ctx: the instance handle is read-only",
        "wf.id: the instance handle is read-only",  "bad argument #1 to 'rawset'",
        "wf.ctx: the instance handle is read-only"};
    int n = 2;
    for (int i = 0; i < 7; i++, n++) {
        signal_ev(f, "ro-1", bad[i], NULL);
        run(f);
        assert_int_equal(f->a.status[n], CM_ELUA);
        if (!strstr(f->a.message[n], says[i]))
            fail_msg("%s: %s", bad[i], f->a.message[n]);
        /* the next step reads the context its row holds (from the kept copy
        ** or the text): the failed step's n is in neither */
        signal_ev(f, "ro-1", "check", NULL);
        run(f);
        n++;
        assert_int_equal(f->a.status[n], 0);
        cJSON *inst = get(f, "ro-1");
        cJSON *ctx = cJSON_GetObjectItem(inst, "context");
        assert_int_equal(cJSON_GetObjectItem(ctx, "n")->valueint, 2);
        assert_int_equal(cJSON_GetObjectItem(ctx, "seen")->valueint, 2);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(ctx, "same")), "true");
        cJSON_Delete(inst);
    }
    expect_state(f, "ro-1", "a", "running");
}

/* A handle kept by a step that failed, or that was killed, refuses every use
** after it, as one kept past a step that ended well does: it must not read
** the step that runs when it is used (nor what is left of the failed one),
** whether that step is another instance's (after the failed one) or its own
** instance's (after the killed one). */
static void test_a_handle_kept_past_a_failed_step_reads_nothing(void **state)
{
    fx *f = *state;
    load_ok(f, "keptf.lua",
            "local cm = require 'caremesh'\n"
            "local kept\n"
            "return cm.workflow {\n"
            "  name = 'keptf', version = 1, start = 'a',\n"
            "  states = {\n"
            "    a = { enter = function(wf) wf.ctx.n = 1 end,\n"
            "          on = { fail = function(wf) kept = wf; local _ = wf.ctx.n\n"
            "                   error('failed on purpose') end,\n"
            "                 loop = function(wf) kept = wf; local _ = wf.ctx.n\n"
            "                   while true do end end,\n"
            "                 ctx = function(wf) wf.ctx.seen = tostring(kept.ctx.n) end,\n"
            "                 id = function(wf) wf.ctx.seen = tostring(kept.id) end,\n"
            "                 go = function(wf) kept:go('b') end } },\n"
            "    b = { final = true },\n"
            "  },\n"
            "}\n");
    cm_err err;
    assert_int_equal(cm_engine_start(f->engine, "keptf", NULL, "kf-1", on_ack, &f->a, &err), 0);
    assert_int_equal(cm_engine_start(f->engine, "keptf", NULL, "kf-2", on_ack, &f->a, &err), 0);
    run(f);
    assert_int_equal(f->a.status[0], 0);
    assert_int_equal(f->a.status[1], 0);
    const char *fails[] = {"fail", "loop"};
    const char *users[] = {"kf-2", "kf-1"}; /* whose step uses the kept handle */
    const char *uses[] = {"ctx", "id", "go"};
    int n = 2;
    for (int i = 0; i < 2; i++) {
        signal_ev(f, "kf-1", fails[i], NULL);
        run(f);
        assert_int_not_equal(f->a.status[n], 0);
        n++;
        for (int j = 0; j < 3; j++) {
            signal_ev(f, users[i], uses[j], NULL);
            run(f);
            assert_int_equal(f->a.status[n], CM_ELUA);
            assert_non_null(strstr(f->a.message[n], "belongs to a step that is over"));
            n++;
        }
    }
    for (int i = 0; i < 2; i++) {
        cJSON *inst = get(f, users[i]);
        cJSON *ctx = cJSON_GetObjectItem(inst, "context");
        assert_null(cJSON_GetObjectItem(ctx, "seen"));
        assert_int_equal(cJSON_GetObjectItem(ctx, "n")->valueint, 1);
        cJSON_Delete(inst);
        expect_state(f, users[i], "a", "running");
    }
}

static void test_pause_holds_and_resume_applies(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    run(f);
    assert_int_equal(cm_engine_pause(f->engine, "ref-1", &err), 0);
    assert_int_equal(cm_engine_pause(f->engine, "ref-1", &err), CM_EINVAL);
    signal_ev(f, "ref-1", "accepted", NULL);
    run(f);
    assert_int_equal(f->a.status[1], 0);
    assert_true(f->a.kept[1]);
    expect_state(f, "ref-1", "requested", "paused");
    advance(f, 80 * HOUR); /* the 72h timer is held too */
    expect_state(f, "ref-1", "requested", "paused");
    assert_int_equal(cm_engine_resume(f->engine, "ref-1", &err), 0);
    run(f);
    /* held in order: 'accepted' came first, then the timer (ignored in accepted) */
    expect_state(f, "ref-1", "accepted", "running");
}

static void test_cancel_ends_and_drops_timers(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    run(f);
    assert_int_equal(cm_engine_cancel(f->engine, "ref-1", "patient moved away", &err), 0);
    expect_state(f, "ref-1", "requested", "cancelled");
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 0);
    assert_int_equal(cm_engine_cancel(f->engine, "ref-1", NULL, &err), CM_EINVAL);
    assert_int_equal(cm_engine_cancel(f->engine, "ref-404", NULL, &err), CM_ENOTFOUND);
    signal_ev(f, "ref-1", "accepted", NULL);
    run(f);
    assert_int_equal(f->a.status[1], CM_EINVAL);
}

/* An operator action's "also" writes a row in the action's transaction;
** failing, it takes the action back with it. */
typedef struct also_probe {
    fx *f;
    int rc; /* what to return */
    char patient[32];
    int calls;
} also_probe;

static int also_write(void *ud, const char *instance, const cJSON *input, cm_err *err)
{
    also_probe *p = ud;
    p->calls++;
    snprintf(p->patient, sizeof(p->patient), "%s",
             cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(input, "patient")));
    assert_true(cm_store_in_tx(p->f->store));
    assert_int_equal(
        cm_store_exec(p->f->store, "INSERT INTO node_meta(key, value) VALUES ('also', 'x')", err),
        0);
    return p->rc ? cm_err_set(err, p->rc, "also: refused") : 0;
}

static void test_operator_action_writes_with_its_change(void **state)
{
    fx *f = *state;
    cm_err err;
    also_probe p = {f, CM_EDB, "", 0};
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    run(f);
    long hist = count(f, "SELECT count(*) FROM history");
    /* the caller's write fails: no pause, no history row, no write */
    assert_int_equal(cm_engine_act(f->engine, "ref-1", CM_ENGINE_PAUSE, NULL, also_write, &p, &err),
                     CM_EDB);
    assert_int_equal(p.calls, 1);
    expect_state(f, "ref-1", "requested", "running");
    assert_int_equal(count(f, "SELECT count(*) FROM history"), hist);
    assert_int_equal(count(f, "SELECT count(*) FROM node_meta WHERE key = 'also'"), 0);
    /* it succeeds: both commit, and it saw the instance's input */
    p.rc = 0;
    assert_int_equal(cm_engine_act(f->engine, "ref-1", CM_ENGINE_PAUSE, NULL, also_write, &p, &err),
                     0);
    assert_string_equal(p.patient, "pat-1");
    expect_state(f, "ref-1", "requested", "paused");
    assert_int_equal(count(f, "SELECT count(*) FROM node_meta WHERE key = 'also'"), 1);
    /* refused for its state: the caller's write does not run */
    assert_int_equal(cm_engine_act(f->engine, "ref-1", CM_ENGINE_PAUSE, NULL, also_write, &p, &err),
                     CM_EINVAL);
    assert_int_equal(p.calls, 2);
    assert_int_equal(cm_engine_act(f->engine, "ref-1", (cm_engine_action)7, NULL, NULL, NULL, &err),
                     CM_EINVAL);
    assert_int_equal(cm_engine_act(f->engine, "ref-1", CM_ENGINE_CANCEL, "moved", NULL, NULL, &err),
                     0);
    expect_state(f, "ref-1", "requested", "cancelled");
}

static const char *PARENT = "local cm = require 'caremesh'\n"
                            "return cm.workflow {\n"
                            "  name = 'campaign', version = 1, start = 'running',\n"
                            "  states = {\n"
                            "    running = {\n"
                            "      enter = function(wf)\n"
                            "        wf.ctx.children = { wf:spawn('contact', { who = 'pat-1' }),\n"
                            "                            wf:spawn('contact', { who = 'pat-2' }) }\n"
                            "        wf.ctx.done = 0\n"
                            "      end,\n"
                            "      on = { ['child.done'] = function(wf, ev)\n"
                            "        wf.ctx.done = wf.ctx.done + 1\n"
                            "        wf.ctx['reached_' .. ev.context.who] = ev.state == 'reached'\n"
                            "        if wf.ctx.done == 2 then return 'finished' end\n"
                            "      end },\n"
                            "    },\n"
                            "    finished = { final = true },\n"
                            "  },\n"
                            "}\n";

static const char *CHILD =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'contact', version = 1, start = 'calling',\n"
    "  input = { who = 'string' },\n"
    "  states = {\n"
    "    calling = { enter = function(wf) wf.ctx.who = wf.input.who end,\n"
    "                on = { answered = 'reached', gave_up = 'unreached' } },\n"
    "    reached = { final = true }, unreached = { final = true },\n"
    "  },\n"
    "}\n";

static void test_children_report_to_their_parent(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "contact.lua", CHILD);
    load_ok(f, "campaign.lua", PARENT);
    assert_int_equal(cm_engine_start(f->engine, "campaign", NULL, "camp-1", on_ack, &f->a, &err),
                     0);
    run(f);
    expect_state(f, "camp-1.1.1", "calling", "running");
    signal_ev(f, "camp-1.1.1", "answered", NULL);
    signal_ev(f, "camp-1.1.2", "gave_up", NULL);
    run(f);
    expect_state(f, "camp-1", "finished", "done");
    cJSON *inst = get(f, "camp-1");
    cJSON *ctx = cJSON_GetObjectItem(inst, "context");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(ctx, "reached_pat-1")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(ctx, "reached_pat-2")));
    cJSON_Delete(inst);
}

static void test_reload_pins_running_instances(void **state)
{
    fx *f = *state;
    cm_err err;
    int rev = 0;
    char *v2 = strdup(REFERRAL);
    char *at = strstr(v2, "version = 1");
    at[10] = '2';
    at = strstr(v2, "accepted = 'accepted',");
    memcpy(at, "accepted = 'declined',", 22);
    assert_int_equal(load(f, "referral.lua", REFERRAL, &rev, &err), 0);
    assert_int_equal(rev, 1);
    assert_int_equal(load(f, "referral.lua", REFERRAL, &rev, &err), 0);
    assert_int_equal(rev, 1); /* unchanged text: same revision */
    start(f, INPUT, "old");
    run(f);
    assert_int_equal(load(f, "referral.lua", v2, &rev, &err), 0);
    assert_int_equal(rev, 2);
    start(f, INPUT, "new");
    run(f);
    signal_ev(f, "old", "accepted", NULL);
    signal_ev(f, "new", "accepted", NULL);
    run(f);
    expect_state(f, "old", "accepted", "running");
    expect_state(f, "new", "declined", "done");
    /* a broken file is refused; revision 2 keeps serving */
    assert_int_equal(load(f, "referral.lua", "return cm.workflow {", &rev, &err), CM_ELUA);
    assert_non_null(strstr(err.msg, "referral.lua:1:"));
    assert_int_equal(count(f, "SELECT max(rev) FROM workflow_def"), 2);
    start(f, INPUT, "newer");
    run(f);
    cJSON *inst = get(f, "newer");
    assert_int_equal(cJSON_GetObjectItem(inst, "rev")->valuedouble, 2);
    cJSON_Delete(inst);
    free(v2);
}

static void expect_definition_refused(fx *f, const char *text, const char *fragment)
{
    cm_err err;
    int rc = load(f, "bad.lua", text, NULL, &err);
    assert_int_not_equal(rc, 0);
    if (!strstr(err.msg, fragment))
        fail_msg("message '%s' lacks '%s'", err.msg, fragment);
}

static void test_broken_definitions_are_refused_with_place(void **state)
{
    fx *f = *state;
    const char *head = "local cm = require 'caremesh'\nreturn cm.workflow {\n";
    char text[1024];
    snprintf(text, sizeof(text),
             "%s name = 'x', version = 1, start = 'a',\n"
             " states = { a = { on = { go = 'nowhere' } }, b = { final = true } } }\n",
             head);
    expect_definition_refused(f, text,
                              "bad.lua:2: workflow: states.a.on[\"go\"]: transition "
                              "to unknown state \"nowhere\"");
    snprintf(text, sizeof(text), "%s name = 'x', version = 1, start = 'a', states = { a = {} } }\n",
             head);
    expect_definition_refused(f, text, "no final state");
    snprintf(text, sizeof(text),
             "%s name = 'x', version = 1, start = 'a', states = { a = { final = true, entr = "
             "print } } }\n",
             head);
    expect_definition_refused(f, text, "states.a.entr: unknown field");
    snprintf(text, sizeof(text),
             "%s name = 'x', start = 'a', states = { a = { final = true } } }\n", head);
    expect_definition_refused(f, text, "version: required");
    snprintf(text, sizeof(text),
             "%s name = 'x', version = 1, start = 'zz', states = { a = { final = true } } }\n",
             head);
    expect_definition_refused(f, text, "start: unknown state \"zz\"");
    snprintf(text, sizeof(text),
             "%s name = 'x', version = 1, input = { p = 'patience' }, start = 'a', states = { a = "
             "{ final = true } } }\n",
             head);
    expect_definition_refused(f, text, "input.p: must be a type name");
    expect_definition_refused(f, "return { name = 'x' }\n", "must return cm.workflow");
    assert_int_equal(count(f, "SELECT count(*) FROM workflow_def WHERE name = 'purposed'"), 0);
}

static void test_restart_recovers_timers_and_kept_events(void **state)
{
    fx *f = *state;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    start(f, INPUT, "ref-2");
    run(f);
    signal_ev(f, "ref-2", "boom", NULL);
    run(f);
    /* a crash: everything in memory is gone, the database stays */
    close_engine(f);
    open_engine(f);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'ref-2' AND "
                              "status = 'ready' AND attempts = 1"),
                     1);
    advance(f, 73 * HOUR); /* no file loaded: the pinned revision comes from the store */
    expect_state(f, "ref-1", "escalated", "running");
    expect_state(f, "ref-2", "escalated", "running");
    /* ref-2's timer moved it on first; the kept 'boom' no longer applies there: parked */
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'ref-2' AND "
                              "status = 'failed' AND error LIKE '%no transition for event%'"),
                     1);
}

static int count_commit(void *ud)
{
    (*(int *)ud)++;
    return 0; /* let it commit */
}

static void test_group_commit_batches_events(void **state)
{
    fx *f = *state;
    char id[32];
    int commits = 0;
    long processed = 0;
    cm_err err;
    load_ok(f, "referral.lua", REFERRAL);
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof(id), "ref-%d", i);
        start(f, INPUT, id);
    }
    run(f);
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof(id), "ref-%d", i);
        signal_ev(f, id, "accepted", NULL);
    }
    long before = count(f, "SELECT count(*) FROM history");
    sqlite3_commit_hook(cm_store_db(f->store), count_commit, &commits);
    assert_int_equal(cm_engine_run(f->engine, &processed, &err), 0);
    sqlite3_commit_hook(cm_store_db(f->store), NULL, NULL);
    assert_int_equal(processed, 40);
    /* 40 events in batches of 16: three commits (one fsync each), not forty */
    assert_in_range(commits, 3, 4);
    assert_int_equal(count(f, "SELECT count(*) FROM history") - before, 40);
    for (int i = 40; i < 80; i++)
        assert_int_equal(f->a.status[i], 0);
    /* every ack counted once, in each latency bound at or above its own */
    cm_engine_stats st;
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.latency_count, 80);
    for (int i = 1; i < CM_ENGINE_LATENCY_BUCKETS; i++)
        assert_true(st.latency_le[i] >= st.latency_le[i - 1]);
    assert_int_equal(st.latency_le[CM_ENGINE_LATENCY_BUCKETS - 1], 80); /* none over 2.5 s */
}

/* Each submission "takes" 4 ms of the virtual clock (the work hook runs
** after each one, inside the batch). */
static int slow_work(void *hook_ud, cm_ack_cb cb, void *submit_ud, const cm_ack *ack, cm_err *err)
{
    (void)cb;
    (void)submit_ud;
    (void)ack;
    (void)err;
    cm_clock_advance((cm_clock *)hook_ud, 4);
    return 0;
}

/* A batch takes no more submissions once batch_ms of work is done: the
** first acks come after their own commit, the rest follow in later batches. */
static void test_batches_close_by_time_as_well_as_count(void **state)
{
    fx *f = *state;
    char id[32];
    int commits = 0;
    long processed = 0;
    cm_engine_stats st0, st1;
    cm_err err;
    close_engine(f);
    f->batch_ms = 10;
    open_engine(f);
    load_ok(f, "referral.lua", REFERRAL);
    for (int i = 0; i < 12; i++) {
        snprintf(id, sizeof(id), "ref-%d", i);
        start(f, INPUT, id);
    }
    run(f);
    for (int i = 0; i < 12; i++) {
        snprintf(id, sizeof(id), "ref-%d", i);
        signal_ev(f, id, "accepted", NULL);
    }
    int acked = f->a.n;
    cm_engine_stats_get(f->engine, &st0);
    cm_engine_set_work_hook(f->engine, slow_work, f->clock);
    sqlite3_commit_hook(cm_store_db(f->store), count_commit, &commits);
    assert_int_equal(cm_engine_run(f->engine, &processed, &err), 0);
    sqlite3_commit_hook(cm_store_db(f->store), NULL, NULL);
    cm_engine_set_work_hook(f->engine, NULL, NULL);
    cm_engine_stats_get(f->engine, &st1);
    assert_int_equal(processed, 12);
    /* 12 submissions of 4 ms each, 10 ms a batch: 3 per batch (12 ms), four
    ** batches, where the count alone (16) would have made one */
    assert_int_equal(commits, 4);
    assert_int_equal(st1.batches - st0.batches, 4);
    assert_int_equal(f->a.n - acked, 12);
    for (int i = acked; i < f->a.n; i++) {
        assert_int_equal(f->a.status[i], 0);
        assert_string_equal(f->a.state[i], "accepted");
    }
    /* by count only (negative): one batch */
    close_engine(f);
    f->batch_ms = -1;
    open_engine(f);
    load_ok(f, "referral.lua", REFERRAL);
    for (int i = 0; i < 12; i++) {
        snprintf(id, sizeof(id), "late-%d", i);
        start(f, INPUT, id);
    }
    commits = 0;
    cm_engine_set_work_hook(f->engine, slow_work, f->clock);
    sqlite3_commit_hook(cm_store_db(f->store), count_commit, &commits);
    assert_int_equal(cm_engine_run(f->engine, &processed, &err), 0);
    sqlite3_commit_hook(cm_store_db(f->store), NULL, NULL);
    assert_int_equal(processed, 12);
    assert_int_equal(commits, 1);
}

static const char *GOER =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'goer', version = 1, start = 'a',\n"
    "  states = {\n"
    "    a = { enter = function(wf) wf.ctx.path = 'a'; wf:go('b') end },\n"
    "    b = { enter = function(wf) wf.ctx.path = wf.ctx.path .. 'b' end,\n"
    "          on = { leave = function(wf) wf:after('2h', 'leak'); return 'c' end,\n"
    "                 again = function(wf) wf:after('5h', 'late'); return 'b' end,\n"
    "                 stay = function(wf) wf:after('1h', 'kept') end } },\n"
    "    c = { on = { leak = 'done', kept = 'done', late = 'done' } },\n"
    "    done = { final = true },\n"
    "  },\n"
    "}\n";

static void test_go_moves_on_and_leaving_cancels_the_state_timers(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "goer.lua", GOER);
    assert_int_equal(cm_engine_start(f->engine, "goer", NULL, "g-1", on_ack, &f->a, &err), 0);
    run(f);
    assert_string_equal(f->a.state[0], "b"); /* enter of a went on to b in the same step */
    cJSON *inst = get(f, "g-1");
    assert_string_equal(field(cJSON_GetObjectItem(inst, "context"), "path"), "ab");
    cJSON_Delete(inst);
    signal_ev(f, "g-1", "stay", NULL);  /* no move: its timer stays */
    signal_ev(f, "g-1", "again", NULL); /* re-entering b drops the old visit's timers */
    run(f);
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE name = 'kept'"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE name = 'late'"), 1);
    signal_ev(f, "g-1", "leave", NULL); /* a timer started on the way out goes with b */
    run(f);
    expect_state(f, "g-1", "c", "running");
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 0);
    advance(f, 6 * HOUR);
    expect_state(f, "g-1", "c", "running");
}

/* A state's exit handler runs when the instance leaves it, before the next
** state's enter (also for a state an enter's wf:go moves on from), never at
** the start nor when a handler stays; an exit that raises fails the step
** like any handler: the event is kept and the instance is unchanged. */
static const char *EXITER =
    "local cm = require 'caremesh'\n"
    "local function log(wf, s) wf.ctx.log = (wf.ctx.log or '') .. s end\n"
    "return cm.workflow {\n"
    "  name = 'exiter', version = 1, start = 'a',\n"
    "  states = {\n"
    "    a = { enter = function(wf) log(wf, 'A') end, exit = function(wf) log(wf, 'a') end,\n"
    "          on = { stay = function(wf) log(wf, '-') end, next = 'b' } },\n"
    "    b = { enter = function(wf) log(wf, 'B'); wf:go('c') end,\n"
    "          exit = function(wf) log(wf, 'b') end },\n"
    "    c = { enter = function(wf) log(wf, 'C') end,\n"
    "          exit = function(wf) if wf.ctx.boom then error('exit of c failed') end end,\n"
    "          on = { arm = function(wf) wf.ctx.boom = true end, finish = 'done' } },\n"
    "    done = { final = true },\n"
    "  },\n"
    "}\n";

static void test_exit_runs_on_leaving_before_the_next_enter(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "exiter.lua", EXITER);
    assert_int_equal(cm_engine_start(f->engine, "exiter", NULL, "x-1", on_ack, &f->a, &err), 0);
    run(f);
    signal_ev(f, "x-1", "stay", NULL);
    run(f);
    cJSON *inst = get(f, "x-1");
    assert_string_equal(field(cJSON_GetObjectItem(inst, "context"), "log"), "A-");
    cJSON_Delete(inst);
    signal_ev(f, "x-1", "next", NULL);
    run(f);
    inst = get(f, "x-1");
    assert_string_equal(field(inst, "state"), "c");
    assert_string_equal(field(cJSON_GetObjectItem(inst, "context"), "log"), "A-aBbC");
    cJSON_Delete(inst);
    signal_ev(f, "x-1", "arm", NULL);
    signal_ev(f, "x-1", "finish", NULL);
    run(f);
    assert_int_equal(f->a.status[3], 0);
    assert_int_not_equal(f->a.status[4], 0);
    assert_true(f->a.kept[4]);
    expect_state(f, "x-1", "c", "running");
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'x-1' AND name = "
                              "'finish' AND error LIKE '%exit of c failed%'"),
                     1);
}

/* What a handler reads or writes of a patient through cm.<kind> is in the
** audit trail as the instance's ("instance:ID", the kind's action and data
** classes), in the step's transaction: a record that is no patient's leaves
** no entry. (A step that fails: see the test after this one.) */
static const char *AUDITED =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'audited', version = 1, start = 'a', input = { patient = 'patient' },\n"
    "  states = {\n"
    "    a = { enter = function(wf) wf.ctx.g = cm.patient.get(wf.input.patient).gender end,\n"
    "          on = { find = function(wf) wf.ctx.n = #cm.patient.find { gender = 'female' } end,\n"
    "                 write = function(wf) cm.patient.update(wf.input.patient, { gender = 'other' "
    "}) "
    "end,\n"
    "                 orgs = function(wf) wf.ctx.o = #cm.organization.list() end,\n"
    "                 fail = function(wf) cm.patient.get(wf.input.patient); error('after a read') "
    "end,\n"
    "                 failwrite = function(wf)\n"
    "                   cm.patient.update(wf.input.patient, { gender = 'unknown' })\n"
    "                   error('after a write') end,\n"
    "                 spin = function(wf) cm.patient.get(wf.input.patient); while true do end "
    "end,\n"
    "                 done = 'z' } },\n"
    "    z = { final = true },\n"
    "  },\n"
    "}\n";

/* AUDITED loaded, au-1 started on pat-1 and run. */
static void start_audited(fx *f)
{
    cm_err err;
    cJSON *input = cJSON_Parse("{\"patient\":\"pat-1\"}");
    load_ok(f, "audited.lua", AUDITED);
    assert_int_equal(cm_engine_start(f->engine, "audited", input, "au-1", on_ack, &f->a, &err), 0);
    cJSON_Delete(input);
    run(f);
}

/* The audit chain verifies and holds n entries. */
static void expect_chain(fx *f, long n)
{
    cm_err err;
    long entries = 0;
    assert_int_equal(cm_audit_verify(f->store, &entries, &err), 0);
    assert_int_equal(entries, n);
}

static void test_a_handlers_patient_reads_and_writes_are_audited_as_its_instance(void **state)
{
    fx *f = *state;
    start_audited(f);
    signal_ev(f, "au-1", "find", NULL);
    signal_ev(f, "au-1", "orgs", NULL);
    signal_ev(f, "au-1", "write", NULL);
    run(f);
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 3);
    assert_int_equal(
        count(f,
              "SELECT count(*) FROM audit WHERE actor = 'instance:au-1' AND patient = 'pat-1' "
              "AND outcome = 'ok' AND classes = 'demographics' AND ("
              "(seq = 1 AND action = 'patient.read' AND detail = 'lua cm.patient.get pat-1') OR "
              "(seq = 2 AND action = 'patient.read' AND detail = 'lua cm.patient.find pat-1') OR "
              "(seq = 3 AND action = 'patient.update' AND detail = 'lua cm.patient.update "
              "pat-1'))"),
        3);
    /* AUDITED declares no purpose: its entries carry none */
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE purpose = ''"), 3);
    expect_chain(f, 3);
}

/* A workflow that declares its purpose of use (cm.workflow { purpose = ...
** }) has its handlers' entries carry it, the ones a failed step writes
** again too; a workflow without one, run after it on the same engine,
** still carries none. */
static const char *PURPOSED =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'purposed', version = 1, purpose = 'referral', start = 'a',\n"
    "  input = { patient = 'patient' },\n"
    "  states = {\n"
    "    a = { enter = function(wf) cm.patient.get(wf.input.patient) end,\n"
    "          on = { fail = function(wf) cm.patient.get(wf.input.patient); error('no') end,\n"
    "                 done = 'z' } },\n"
    "    z = { final = true },\n"
    "  },\n"
    "}\n";

static void test_a_handlers_entries_carry_its_workflows_declared_purpose(void **state)
{
    fx *f = *state;
    cm_err err;
    cJSON *input = cJSON_Parse("{\"patient\":\"pat-1\"}");
    load_ok(f, "purposed.lua", PURPOSED);
    assert_int_equal(cm_engine_start(f->engine, "purposed", input, "pu-1", on_ack, &f->a, &err), 0);
    cJSON_Delete(input);
    run(f);
    signal_ev(f, "pu-1", "fail", NULL);
    run(f);
    start_audited(f);
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 3);
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE actor = 'instance:pu-1' AND "
                              "purpose = 'referral' AND ((seq = 1 AND outcome = 'ok') OR "
                              "(seq = 2 AND outcome = 'error'))"),
                     2);
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE seq = 3 AND "
                              "actor = 'instance:au-1' AND purpose = ''"),
                     1);
    expect_chain(f, 3);
}

/* A purpose that is not one of the consents' and terms' purposes fails the
** load, naming the field and the file's line; nothing is installed. */
static void test_a_workflow_with_an_unknown_purpose_does_not_load(void **state)
{
    fx *f = *state;
    cm_err err;
    static const char *const bad[] = {"'treatment'", "''", "42", "{ 'referral' }"};
    char text[512];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text),
                 "local cm = require 'caremesh'\n"
                 "return cm.workflow { name = 'purposed', version = 1, purpose = %s,\n"
                 "  start = 'a', states = { a = { final = true } } }\n",
                 bad[i]);
        assert_int_not_equal(load(f, "purposed.lua", text, NULL, &err), 0);
        if (!strstr(err.msg, "purposed.lua:2:") ||
            !strstr(err.msg, "purpose: must be one of referral, outreach, immunization, "
                             "care_coordination (the purposes of consents and partnership terms)"))
            fail_msg("purpose = %s: %s", bad[i], err.msg);
    }
    assert_int_equal(count(f, "SELECT count(*) FROM workflow_def WHERE name = 'purposed'"), 0);
}

/* A step that fails (its handler raises, or the budget stops it) is rolled
** back with the entries its handlers' reads and writes appended, but what
** it read reached it (and may be in its error, kept with the event): each
** is written again, outcome "error", the detail saying so; a write that did
** not stay is not claimed as done. The chain verifies. */
static void test_a_failed_steps_reads_are_audited_again_as_failed(void **state)
{
    fx *f = *state;
    start_audited(f);
    signal_ev(f, "au-1", "fail", NULL);
    run(f);
    assert_int_equal(f->a.status[1], CM_ELUA);
    assert_true(f->a.kept[1]);
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 2);
    assert_int_equal(
        count(f, "SELECT count(*) FROM audit WHERE seq = 2 AND actor = 'instance:au-1' AND "
                 "action = 'patient.read' AND patient = 'pat-1' AND classes = 'demographics' "
                 "AND outcome = 'error' AND detail = 'lua cm.patient.get pat-1 (rolled back: "
                 "the step failed)'"),
        1);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE error LIKE '%after a read%'"), 1);

    signal_ev(f, "au-1", "failwrite", NULL);
    signal_ev(f, "au-1", "spin", NULL);
    run(f);
    assert_int_equal(f->a.status[2], CM_ELUA);
    assert_int_equal(f->a.status[3], CM_EBUDGET);
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 4);
    /* the update did not stay: an attempt, not a change */
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE seq = 3 AND "
                              "action = 'patient.update' AND outcome = 'error' AND detail = "
                              "'lua cm.patient.update pat-1 (rolled back: the step failed)'"),
                     1);
    assert_int_equal(
        count(f, "SELECT count(*) FROM record WHERE kind = 'patient' AND id = 'pat-1' AND "
                 "json_extract(doc, '$.gender') = 'female'"),
        1);
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE seq = 4 AND "
                              "action = 'patient.read' AND outcome = 'error'"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE outcome = 'ok'"), 1);
    expect_chain(f, 4);
}

/* A workflow file's top level, which runs at every load on every node for
** no instance, reads no record about a patient: the load fails naming the
** call and the file, and leaves no audit entry; records about no patient
** (organizations) and counts stay open to it. */
static void test_a_workflow_files_top_level_reads_no_patient(void **state)
{
    fx *f = *state;
    cm_err err;
    static const char *const calls[] = {"cm.patient.get('pat-1')", "cm.patient.list()",
                                        "cm.consent.find { patient = 'pat-1' }",
                                        "cm.task.create { patient = 'pat-1' }"};
    static const char *const names[] = {"cm.patient.get", "cm.patient.find", "cm.consent.find",
                                        "cm.task.create"};
    char text[512];
    for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
        snprintf(text, sizeof(text),
                 "local cm = require 'caremesh'\nlocal p = %s\n"
                 "return cm.workflow { name = 'loader', version = 1, start = 'a',\n"
                 "  states = { a = { final = true } } }\n",
                 calls[i]);
        assert_int_not_equal(load(f, "loader.lua", text, NULL, &err), 0);
        if (!strstr(err.msg, names[i]) || !strstr(err.msg, "loader.lua") ||
            !strstr(err.msg, "no records about patients"))
            fail_msg("%s: %s", calls[i], err.msg);
    }
    load_ok(f, "loader.lua",
            "local cm = require 'caremesh'\nlocal n = #cm.organization.list() + "
            "cm.patient.count()\n"
            "return cm.workflow { name = 'loader', version = 1, start = 'a',\n"
            "  states = { a = { final = true } } }\n");
    assert_int_equal(count(f, "SELECT count(*) FROM audit"), 0);
    /* a handler of the same file reads them, audited */
    load_ok(f, "audited.lua", AUDITED);
    cJSON *input = cJSON_Parse("{\"patient\":\"pat-1\"}");
    assert_int_equal(cm_engine_start(f->engine, "audited", input, "au-2", on_ack, &f->a, &err), 0);
    cJSON_Delete(input);
    run(f);
    assert_int_equal(count(f, "SELECT count(*) FROM audit WHERE actor = 'instance:au-2'"), 1);
}

static const char *TICKER = "local cm = require 'caremesh'\n"
                            "return cm.workflow {\n"
                            "  name = 'ticker', version = 1, start = 'waiting',\n"
                            "  states = {\n"
                            "    waiting = { enter = function(wf) wf:after('1s', 'tick') end,\n"
                            "                on = { tick = 'ticked', poke = 'waiting' } },\n"
                            "    ticked = { final = true },\n"
                            "  },\n"
                            "}\n";

static void stop_loop(void *ud, const cm_ack *ack)
{
    uv_stop(ud);
}

/* Steps of a running instance start from the engine's in-memory copy: a
** failing step must not leave its changes there, nor may pause or cancel. */
static void test_kept_instances_follow_failures_and_operator_actions(void **state)
{
    static const char *COUNTER = "local cm = require 'caremesh'\n"
                                 "return cm.workflow {\n"
                                 "  name = 'counter', version = 1, start = 'counting',\n"
                                 "  states = {\n"
                                 "    counting = { enter = function(wf) wf.ctx.n = 0 end, on = {\n"
                                 "      inc = function(wf) wf.ctx.n = wf.ctx.n + 1 end,\n"
                                 "      boom = function(wf) wf.ctx.n = 99; error('kaput') end,\n"
                                 "      stop = 'stopped' } },\n"
                                 "    stopped = { final = true },\n"
                                 "  },\n"
                                 "}\n";
    fx *f = *state;
    cm_err err;
    load_ok(f, "counter.lua", COUNTER);
    assert_int_equal(cm_engine_start(f->engine, "counter", NULL, "c-1", on_ack, &f->a, &err), 0);
    run(f);
    signal_ev(f, "c-1", "inc", NULL);
    run(f);
    signal_ev(f, "c-1", "boom", NULL); /* fails in the same batch as the incs around it */
    signal_ev(f, "c-1", "inc", NULL);
    run(f);
    signal_ev(f, "c-1", "inc", NULL);
    run(f);
    assert_int_equal(f->a.status[2], CM_ELUA);
    assert_int_equal(f->a.status[3], 0);
    cJSON *inst = get(f, "c-1");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(inst, "context"), "n")->valueint, 3);
    cJSON_Delete(inst);
    assert_int_equal(cm_engine_pause(f->engine, "c-1", &err), 0);
    signal_ev(f, "c-1", "inc", NULL);
    run(f);
    assert_true(f->a.kept[5]);
    expect_state(f, "c-1", "counting", "paused");
    assert_int_equal(cm_engine_cancel(f->engine, "c-1", "test", &err), 0);
    signal_ev(f, "c-1", "inc", NULL);
    run(f);
    assert_int_equal(f->a.status[6], CM_EINVAL);
    expect_state(f, "c-1", "counting", "cancelled");
    inst = get(f, "c-1");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(inst, "context"), "n")->valueint, 3);
    cJSON_Delete(inst);
}

static void test_attached_engine_runs_on_the_loop(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    cm_err err;
    load_ok(f, "ticker.lua", TICKER);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(cm_engine_attach(f->engine, &loop, &err), 0);
    assert_int_equal(cm_engine_attach(f->engine, &loop, &err), CM_EINVAL);
    /* a submission runs in the loop's next turn and is acknowledged there */
    assert_int_equal(cm_engine_start(f->engine, "ticker", NULL, "tick-1", stop_loop, &loop, &err),
                     0);
    uv_run(&loop, UV_RUN_DEFAULT);
    expect_state(f, "tick-1", "waiting", "running");
    /* the timer is armed on the loop; once its time has come it fires there */
    cm_clock_advance(f->clock, 2000);
    for (int i = 0; i < 50; i++) {
        cJSON *inst = get(f, "tick-1");
        bool done = strcmp(field(inst, "status"), "done") == 0;
        cJSON_Delete(inst);
        if (done)
            break;
        uv_run(&loop, UV_RUN_ONCE);
    }
    expect_state(f, "tick-1", "ticked", "done");
    cm_engine_detach(f->engine);
    uv_run(&loop, UV_RUN_DEFAULT); /* let the engine's handles close */
    assert_int_equal(uv_loop_close(&loop), 0);
}

typedef struct seen {
    int n;
    char line[32][160];
    int committed_mismatch;
    sqlite3 *db; /* a second connection: what an observer is told is on disk */
} seen;

static void observe(void *ud, const cm_engine_event *ev)
{
    seen *s = ud;
    if (s->n < 32)
        snprintf(s->line[s->n++], sizeof(s->line[0]), "%d %s %s>%s %s", (int)ev->kind, ev->instance,
                 ev->from, ev->to, ev->detail);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(s->db, "SELECT count(*) FROM instance WHERE id = ?1", -1, &st, NULL);
    sqlite3_bind_text(st, 1, ev->instance, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0) != 1)
        s->committed_mismatch++;
    sqlite3_finalize(st);
}

static void test_observer_hears_committed_events_in_order(void **state)
{
    fx *f = *state;
    seen s = {0};
    cm_err err;
    sqlite3_open_v2(f->db, &s.db, SQLITE_OPEN_READONLY, NULL);
    load_ok(f, "referral.lua", REFERRAL);
    cm_engine_observe(f->engine, observe, &s);
    start(f, INPUT, "ref-1");
    run(f);
    signal_ev(f, "ref-1", "boom", NULL); /* rolled back: nothing to tell */
    run(f);
    advance(f, 73 * HOUR); /* escalation: a task and a state change */
    signal_ev(f, "ref-1", "accepted", NULL);
    run(f);
    assert_int_equal(cm_engine_cancel(f->engine, "ref-1", "moved away", &err), 0);
    sqlite3_close(s.db);
    assert_int_equal(s.committed_mismatch, 0);
    assert_int_equal(s.n, 5);
    assert_string_equal(s.line[0], "1 ref-1 >requested ");
    assert_string_equal(s.line[1], "4 ref-1 >escalated ref-1.t2.1"); /* made by that step */
    assert_string_equal(s.line[2], "2 ref-1 requested>escalated ");
    assert_string_equal(s.line[3], "2 ref-1 escalated>accepted ");
    assert_string_equal(s.line[4], "3 ref-1 >accepted cancelled");
}

/* An instance that ends (through another event, or cancelled while
** paused) with events still kept for it parks each as failed, saying why,
** and the observer hears of each; a retry of one is refused, changing
** nothing; a discard takes it. */
static void test_events_kept_when_an_instance_ends_are_parked_not_dropped(void **state)
{
    fx *f = *state;
    seen s = {0};
    cm_err err;
    char sql[128];
    sqlite3_open_v2(f->db, &s.db, SQLITE_OPEN_READONLY, NULL);
    load_ok(f, "referral.lua", REFERRAL);
    cm_engine_observe(f->engine, observe, &s);
    start(f, INPUT, "ref-1");
    start(f, INPUT, "ref-2");
    run(f);
    signal_ev(f, "ref-1", "boom", NULL); /* kept, waiting for its retry */
    run(f);
    long seq = count(f, "SELECT seq FROM event WHERE instance = 'ref-1'");
    signal_ev(f, "ref-1", "declined", "{\"reason\":\"full\"}"); /* final before the retry */
    run(f);
    expect_state(f, "ref-1", "declined", "done");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM event WHERE seq = %ld AND status = 'failed'",
             seq);
    assert_int_equal(count(f, sql), 1);
    char why[1024];
    text_of(f, "SELECT error FROM event WHERE instance = 'ref-1'", why, sizeof(why));
    if (!strstr(why, "instance ref-1 ended (done, in state declined) before the retry of this "
                     "event; it had failed: ") ||
        !strstr(why, "kaput"))
        fail_msg("got: %s", why);
    /* held while paused, then the instance is cancelled */
    assert_int_equal(cm_engine_pause(f->engine, "ref-2", &err), 0);
    signal_ev(f, "ref-2", "accepted", NULL);
    run(f);
    assert_int_equal(cm_engine_cancel(f->engine, "ref-2", "moved away", &err), 0);
    text_of(f, "SELECT error FROM event WHERE instance = 'ref-2' AND status = 'failed'", why,
            sizeof(why));
    assert_string_equal(why, "instance ref-2 ended (cancelled, in state requested) before this "
                             "event ran; it was not applied");
    sqlite3_close(s.db);
    int parked = 0;
    for (int i = 0; i < s.n; i++)
        parked += strncmp(s.line[i], "6 ", 2) == 0;
    assert_int_equal(parked, 2);
    char want[160];
    snprintf(want, sizeof(want), "6 ref-1 >declined boom (seq %ld)", seq);
    bool heard = false;
    for (int i = 0; i < s.n; i++)
        heard = heard || strcmp(s.line[i], want) == 0;
    assert_true(heard);
    /* a retry is refused and changes nothing; a discard takes it */
    long before = count(f, "SELECT total(attempts) + count(*) FROM event WHERE status = 'failed'");
    assert_int_equal(cm_engine_retry_event(f->engine, seq, &err), CM_ESTATE);
    assert_non_null(strstr(err.msg, "instance ref-1 has ended (done)"));
    run(f);
    assert_int_equal(
        count(f, "SELECT total(attempts) + count(*) FROM event WHERE status = 'failed'"), before);
    assert_int_equal(cm_engine_discard_event(f->engine, seq, &err), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 1);
}

/* The steps of a history, one line each: "step event from>to". */
static void history_lines(fx *f, const char *id, char *out, size_t n)
{
    cJSON *inst = get(f, id), *h;
    size_t used = 0;
    out[0] = '\0';
    cJSON_ArrayForEach(h, cJSON_GetObjectItem(inst, "history"))
    {
        int w =
            snprintf(out + used, n - used, "%d %s %s>%s;", cJSON_GetObjectItem(h, "step")->valueint,
                     field(h, "event"), field(h, "from"), field(h, "to"));
        assert_true(w > 0 && (size_t)w < n - used);
        used += (size_t)w;
    }
    cJSON_Delete(inst);
}

/* History rows are written in step order across instances and chained per
** instance; a database from before (rows keyed by instance and step) is
** chained when it is opened, and its instances go on from there; every row
** names an instance. */
static void test_history_is_chained_per_instance_and_upgraded(void **state)
{
    fx *f = *state;
    char h1[1024], h2[1024], again[1024];
    cm_err err;
    load_ok(f, "referral.lua", REFERRAL);
    start(f, INPUT, "ref-1");
    start(f, INPUT, "ref-2");
    run(f);
    signal_ev(f, "ref-2", "accepted", NULL);
    signal_ev(f, "ref-1", "boom", NULL); /* rolled back: no row */
    run(f);
    assert_int_equal(cm_engine_pause(f->engine, "ref-1", &err), 0);
    assert_int_equal(cm_engine_resume(f->engine, "ref-1", &err), 0);
    signal_ev(f, "ref-1", "accepted", NULL);
    signal_ev(f, "ref-2", "consult_note", NULL);
    run(f);
    history_lines(f, "ref-1", h1, sizeof(h1));
    history_lines(f, "ref-2", h2, sizeof(h2));
    assert_string_equal(h1, "1 start >requested;2 paused requested>requested;"
                            "3 resumed requested>requested;4 accepted requested>accepted;");
    assert_string_equal(h2, "1 start >requested;2 accepted requested>accepted;"
                            "3 consult_note accepted>closed;");
    /* the same database as the schema before kept it */
    assert_int_equal(
        cm_store_exec(f->store,
                      CM_TEST_UNDO_INSTANCE_STEP /* and what later versions made */
                      "CREATE TABLE h4(instance TEXT NOT NULL REFERENCES instance(id), "
                      "step INTEGER NOT NULL, at TEXT NOT NULL, event TEXT NOT NULL, "
                      "from_state TEXT, to_state TEXT NOT NULL, note TEXT, "
                      "PRIMARY KEY (instance, step)) WITHOUT ROWID;"
                      "INSERT INTO h4 SELECT instance, step, at, event, from_state, "
                      "to_state, note FROM history ORDER BY seq DESC;"
                      "DROP TABLE history; ALTER TABLE h4 RENAME TO history;"
                      "ALTER TABLE instance DROP COLUMN hist;"
                      "DROP TABLE api_token;"
                      "DROP VIEW outbox_state; DROP TABLE fed_delivered;"
                      "DROP INDEX outbox_pending;"
                      "CREATE INDEX outbox_by_peer ON outbox(status, peer, seq);"
                      "DELETE FROM schema_version WHERE version >= 7;",
                      &err),
        0);
    close_engine(f);
    open_engine(f);
    assert_int_equal(cm_store_schema_version(f->store), CM_SCHEMA_VERSION);
    history_lines(f, "ref-1", again, sizeof(again));
    assert_string_equal(again, h1);
    history_lines(f, "ref-2", again, sizeof(again));
    assert_string_equal(again, h2);
    signal_ev(f, "ref-1", "consult_note", NULL);
    run(f);
    history_lines(f, "ref-1", again, sizeof(again));
    assert_string_equal(again, "1 start >requested;2 paused requested>requested;"
                               "3 resumed requested>requested;4 accepted requested>accepted;"
                               "5 consult_note accepted>closed;");
    assert_int_equal(count(f, "SELECT count(*) FROM history"), 8);
    /* history has no foreign key (SQLite would look the instance up for
    ** every row); the engine writes rows only for instances it holds */
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_foreign_key_list('history')"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM history h WHERE NOT EXISTS "
                              "(SELECT 1 FROM instance i WHERE i.id = h.instance)"),
                     0);
}

/* The rows of every instance as the view shows them, one line each. */
static void instance_rows(fx *f, char *out, size_t n)
{
    sqlite3_stmt *st;
    size_t len = 0;
    out[0] = '\0';
    assert_int_equal(sqlite3_prepare_v2(
                         cm_store_db(f->store),
                         "SELECT seq || ' ' || id || ' ' || workflow || ' ' || rev "
                         "|| ' ' || state || ' ' || status || ' ' || input || ' ' || "
                         "ctx || ' ' || coalesce(parent, '-') || ' ' || steps || ' ' "
                         "|| created || ' ' || updated || ' ' || coalesce(hist, '-') FROM instance "
                         "ORDER BY seq",
                         -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW && len < n)
        len +=
            (size_t)snprintf(out + len, n - len, "%s;", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

/* SQL run on the engine's store, which must take it. */
static void exec_ok(fx *f, const char *sql)
{
    cm_err err;
    if (cm_store_exec(f->store, sql, &err) != 0)
        fail_msg("%s", err.msg);
}

/* Referrals ref-1 to ref-n started, and ref-2 then accepted: instances
** with kept and scoped timers, in two states, for the upgrade tests. */
static void referrals_one_accepted(fx *f, int n)
{
    load_ok(f, "referral.lua", REFERRAL);
    for (int i = 1; i <= n; i++) {
        char id[16];
        snprintf(id, sizeof(id), "ref-%d", i);
        start(f, INPUT, id);
    }
    run(f);
    signal_ev(f, "ref-2", "accepted", NULL);
    run(f);
}

/* Schema 12 splits the instance row (what a step changes in instance_step):
** after the upgrade the view shows every row as it was, the other tables'
** foreign keys name instance_base, and the engine goes on from there. */
static void test_instance_rows_are_split_and_upgraded(void **state)
{
    fx *f = *state;
    char before[4096], after[4096];
    cm_err err;
    referrals_one_accepted(f, 2);
    assert_int_equal(cm_engine_pause(f->engine, "ref-1", &err), 0);
    instance_rows(f, before, sizeof(before));
    assert_non_null(strstr(before, " ref-1 referral 1 requested paused "));
    assert_non_null(strstr(before, " ref-2 referral 1 accepted running "));
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 3); /* 2 kept + 1 scoped */
    exec_ok(f, CM_TEST_UNDO_INSTANCE_STEP "DELETE FROM schema_version WHERE version >= 12;");
    close_engine(f);
    open_engine(f);
    assert_int_equal(cm_store_schema_version(f->store), CM_SCHEMA_VERSION);
    instance_rows(f, after, sizeof(after));
    assert_string_equal(after, before);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_foreign_key_list('event') "
                              "WHERE \"table\" = 'instance_base'"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_foreign_key_check"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_table_info('instance_base') "
                              "WHERE name IN ('state', 'ctx', 'steps', 'updated', 'hist')"),
                     0);
    /* the engine reads, steps, ends and starts instances on the new rows */
    assert_int_equal(cm_engine_resume(f->engine, "ref-1", &err), 0);
    signal_ev(f, "ref-1", "accepted", NULL);
    signal_ev(f, "ref-2", "consult_note", NULL);
    start(f, INPUT, "ref-3");
    run(f);
    expect_state(f, "ref-1", "accepted", "running");
    expect_state(f, "ref-2", "closed", "done");
    expect_state(f, "ref-3", "requested", "running");
    assert_int_equal(count(f, "SELECT steps FROM instance WHERE id = 'ref-2'"), 3);
    assert_int_equal(count(f, "SELECT count(*) FROM instance_base b WHERE NOT EXISTS "
                              "(SELECT 1 FROM instance_step s WHERE s.seq = b.seq)"),
                     0);
    /* the view is read-only: a write to it is refused, and changes nothing */
    assert_int_not_equal(cm_store_exec(f->store, "UPDATE instance SET state = 'x'", &err), 0);
    expect_state(f, "ref-1", "accepted", "running");
}

/* Every instance as the API answers for it, in seq order: its row in the
** view (the list's columns and the rest) and GET /instances/{id}
** (cm_engine_get: the row, its timers and its history), one line each. */
static void instance_answers(fx *f, char *out, size_t n)
{
    sqlite3_stmt *st;
    size_t len = 0;
    instance_rows(f, out, n);
    len = strlen(out);
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(f->store),
                                        "SELECT id FROM instance ORDER BY seq", -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        cJSON *doc = get(f, (const char *)sqlite3_column_text(st, 0));
        char *text = cJSON_PrintUnformatted(doc);
        int w = snprintf(out + len, n - len, "\n%s", text);
        assert_true(w > 0 && (size_t)w < n - len);
        len += (size_t)w;
        cJSON_free(text);
        cJSON_Delete(doc);
    }
    sqlite3_finalize(st);
}

/* Schema 13 drops instance_step's steps and updated, which repeated the
** latest history row's step and at: after the upgrade from schema 12 every
** instance -- running, paused, done, cancelled, and one that nothing has
** stepped (no history: 0 steps, updated at its creation) -- reads as it
** did, in the view and through the API, history and all; the engine goes
** on from there. */
static void test_step_row_without_count_and_time_upgraded(void **state)
{
    fx *f = *state;
    static char before[16384], after[16384];
    cm_err err;
    start_referrals(f, 4);
    assert_int_equal(cm_clock_advance(f->clock, 1234), 0);
    signal_ev(f, "ref-2", "accepted", NULL);
    signal_ev(f, "ref-3", "accepted", NULL);
    run(f);
    assert_int_equal(cm_clock_advance(f->clock, HOUR + 7), 0);
    signal_ev(f, "ref-3", "consult_note", NULL);
    run(f);
    assert_int_equal(cm_engine_pause(f->engine, "ref-1", &err), 0);
    assert_int_equal(cm_clock_advance(f->clock, 5), 0);
    assert_int_equal(cm_engine_cancel(f->engine, "ref-4", "duplicate", &err), 0);
    /* back to schema 12, and an instance without history as it wrote one */
    assert_int_equal(cm_store_exec(f->store,
                                   CM_TEST_UNDO_NARROW_STEP
                                   "DELETE FROM schema_version WHERE version >= 13;"
                                   "INSERT INTO instance_base(seq, id, workflow, rev, status, "
                                   "input, created) VALUES (9, 'ref-9', 'referral', 1, "
                                   "'running', '{\"patient\":\"pat-1\"}', "
                                   "'2026-01-01T00:00:00.250Z');"
                                   "INSERT INTO instance_step(seq, state, ctx, steps, updated) "
                                   "VALUES (9, 'requested', '{}', 0, '2026-01-01T00:00:00.250Z');",
                                   &err),
                     0);
    assert_int_equal(count(f, "SELECT max(version) FROM schema_version"), 12);
    instance_answers(f, before, sizeof(before));
    assert_non_null(strstr(before, " ref-1 referral 1 requested paused "));
    assert_non_null(strstr(before, " ref-2 referral 1 accepted running "));
    assert_non_null(strstr(before, " ref-3 referral 1 closed done "));
    assert_non_null(strstr(before, " ref-4 referral 1 requested cancelled "));
    assert_non_null(strstr(before, "9 ref-9 referral 1 requested running {\"patient\":\"pat-1\"} "
                                   "{} - 0 2026-01-01T00:00:00.250Z 2026-01-01T00:00:00.250Z -;"));
    assert_non_null(strstr(before, "\"updated\":\"2026-11-29T12:00:01.246Z\""));
    close_engine(f);
    open_engine(f);
    assert_int_equal(cm_store_schema_version(f->store), CM_SCHEMA_VERSION);
    assert_int_equal(count(f, "SELECT max(version) FROM schema_version"), CM_SCHEMA_VERSION);
    instance_answers(f, after, sizeof(after));
    assert_string_equal(after, before);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_table_info('instance_step')"), 4);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_table_info('instance_step') "
                              "WHERE name IN ('steps', 'updated')"),
                     0);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_foreign_key_check"), 0);
    /* the engine steps on the narrow row: count and time from the new row */
    assert_int_equal(cm_clock_advance(f->clock, 3), 0);
    assert_int_equal(cm_engine_resume(f->engine, "ref-1", &err), 0);
    signal_ev(f, "ref-9", "accepted", NULL);
    signal_ev(f, "ref-2", "consult_note", NULL);
    run(f);
    expect_state(f, "ref-1", "requested", "running");
    expect_state(f, "ref-9", "accepted", "running");
    expect_state(f, "ref-2", "closed", "done");
    assert_int_equal(count(f, "SELECT steps FROM instance WHERE id = 'ref-9'"), 1);
    assert_int_equal(count(f, "SELECT steps FROM instance WHERE id = 'ref-1'"), 3);
    assert_int_equal(count(f, "SELECT steps FROM instance WHERE id = 'ref-2'"), 3);
    assert_int_equal(count(f, "SELECT count(*) FROM instance i JOIN history h ON h.seq = i.hist "
                              "WHERE i.id IN ('ref-1', 'ref-2', 'ref-9') AND i.updated = h.at "
                              "AND h.at = '2026-11-29T12:00:01.249Z' AND i.steps = h.step"),
                     3);
}

static void text_of(fx *f, const char *sql, char *out, size_t n)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(f->store), sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static void timer_rows(fx *f, char *out, size_t n)
{
    text_of(f,
            "SELECT group_concat(r, ';') FROM (SELECT rowid || ' ' || instance || ' ' || name || "
            "' ' || due_ms || ' ' || payload || ' ' || coalesce(scope, '-') AS r FROM timer "
            "ORDER BY rowid)",
            out, n);
}

/* Schema 14 drops the timer table's foreign key on the instance (as 9 did
** history's): a database of schema 13 is upgraded with every timer row and
** rowid kept, and its timers still fire and are cancelled as before. */
static void test_timers_without_the_instance_lookup_upgraded(void **state)
{
    fx *f = *state;
    char before[4096], after[4096];
    referrals_one_accepted(f, 3);
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 5); /* 3 kept + 2 scoped */
    exec_ok(f, CM_TEST_UNDO_UNCHECKED_TIMER "DELETE FROM schema_version WHERE version >= 14;");
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_foreign_key_list('timer') "
                              "WHERE \"table\" = 'instance_base'"),
                     1);
    timer_rows(f, before, sizeof(before));
    close_engine(f);
    open_engine(f);
    assert_int_equal(cm_store_schema_version(f->store), CM_SCHEMA_VERSION);
    assert_int_equal(count(f, "SELECT max(version) FROM schema_version"), 14);
    timer_rows(f, after, sizeof(after));
    assert_string_equal(after, before);
    assert_non_null(strstr(after, " ref-3 no_response "));
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_foreign_key_list('timer')"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_index_list('timer')"), 2);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_index_info('timer_by_due') "
                              "WHERE name = 'due_ms'"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM pragma_foreign_key_check"), 0);
    /* leaving a state deletes its timers; the others fire when due */
    signal_ev(f, "ref-1", "accepted", NULL);
    run(f);
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE instance = 'ref-1'"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE scope IS NOT NULL"), 1);
    advance(f, 73 * HOUR);
    expect_state(f, "ref-3", "escalated", "running");
    expect_state(f, "ref-1", "accepted", "running");
    expect_state(f, "ref-2", "accepted", "running");
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE scope IS NOT NULL"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 3);
}

/* The context is decoded only when a handler looks at it and written back
** only when its text changed; what a failing handler or a refusing guard did
** to it is dropped; a context that is not a JSON object is refused. */
static void test_context_is_read_on_use_and_written_on_change(void **state)
{
    static const char *KEEPER =
        "local cm = require 'caremesh'\n"
        "return cm.workflow {\n"
        "  name = 'keeper', version = 1, start = 'on',\n"
        "  input = { who = 'string' },\n"
        "  states = {\n"
        "    on = { enter = function(wf) wf.ctx.n = 1 end, on = {\n"
        "      noop = function(wf) end,\n"
        "      peek = function(wf) assert(wf.ctx.n >= 1 and wf.input.who == 'x') end,\n"
        "      inc = function(wf) wf.ctx.n = wf.ctx.n + 1 end,\n"
        "      guarded = { { to = 'off', guard = function(wf) return false, 'stale' end },\n"
        "                  { to = 'off', guard = function(wf) wf.ctx.n = 50; return false end } "
        "},\n"
        "      why = { to = 'off', guard = function(wf) return false, 'the slot is full' end },\n"
        "      long = { to = 'off', guard = function(wf) return false, string.rep('\\u{e9}', 200) "
        "end },\n"
        "      boom = function(wf) wf.ctx.n = 99; error('kaput') end,\n"
        "      list = function(wf) wf.ctx[1] = 'a'; wf.ctx.n = nil end,\n"
        "      stop = 'off' } },\n"
        "    off = { final = true },\n"
        "  },\n"
        "}\n";
    fx *f = *state;
    char ctx[256];
    cm_err err;
    cJSON *input = cJSON_Parse("{\"who\":\"x\"}");
    load_ok(f, "keeper.lua", KEEPER);
    assert_int_equal(cm_engine_start(f->engine, "keeper", input, "k-1", on_ack, &f->a, &err), 0);
    cJSON_Delete(input);
    run(f);
    /* the stored text as another writer left it: kept byte for byte until a
    ** handler looks at the context (pause and resume reload the row) */
    assert_int_equal(cm_store_exec(f->store,
                                   "UPDATE instance_step SET ctx = '{ \"n\": 1 }' WHERE seq = "
                                   "(SELECT seq FROM instance_base WHERE id = 'k-1')",
                                   &err),
                     0);
    assert_int_equal(cm_engine_pause(f->engine, "k-1", &err), 0);
    assert_int_equal(cm_engine_resume(f->engine, "k-1", &err), 0);
    signal_ev(f, "k-1", "noop", NULL);
    run(f);
    text_of(f, "SELECT ctx FROM instance WHERE id = 'k-1'", ctx, sizeof(ctx));
    assert_string_equal(ctx, "{ \"n\": 1 }");
    signal_ev(f, "k-1", "peek", NULL);
    signal_ev(f, "k-1", "guarded", NULL); /* refused: the guard's change is dropped */
    signal_ev(f, "k-1", "boom", NULL);    /* fails: its change is dropped */
    signal_ev(f, "k-1", "list", NULL);    /* a list is not a context: fails */
    signal_ev(f, "k-1", "inc", NULL);
    signal_ev(f, "k-1", "peek", NULL);
    signal_ev(f, "k-1", "why", NULL);  /* refused with the guard's reason */
    signal_ev(f, "k-1", "long", NULL); /* ... cut to fit, between characters */
    run(f);
    assert_int_equal(f->a.status[2], 0);
    assert_int_equal(f->a.status[3], CM_EINVAL);
    /* the last guard to refuse gave no reason: the first one's is not shown */
    assert_non_null(strstr(f->a.message[3], "was refused by its guard"));
    assert_null(strstr(f->a.message[3], "stale"));
    assert_int_equal(f->a.status[4], CM_ELUA);
    assert_int_equal(f->a.status[5], CM_ELUA);
    assert_non_null(strstr(f->a.message[5], "wf.ctx must have named fields"));
    assert_int_equal(f->a.status[6], 0);
    assert_int_equal(f->a.status[7], 0);
    assert_int_equal(f->a.status[8], CM_EINVAL);
    assert_non_null(
        strstr(f->a.message[8], "event \"why\" was refused by its guard: the slot is full"));
    assert_int_equal(f->a.status[9], CM_EINVAL);
    const char *cut = strstr(f->a.message[9], "guard: \xc3\xa9");
    assert_non_null(cut);
    assert_true(strlen(cut) < 200 * 2); /* cut */
    assert_true(cm_utf8_valid(f->a.message[9], strlen(f->a.message[9])));
    text_of(f, "SELECT ctx FROM instance WHERE id = 'k-1'", ctx, sizeof(ctx));
    assert_string_equal(ctx, "{\"n\":2}");
    /* a context that is not a JSON object is refused, and nothing changes */
    assert_int_equal(cm_store_exec(f->store,
                                   "UPDATE instance_step SET ctx = '[1]' WHERE seq = "
                                   "(SELECT seq FROM instance_base WHERE id = 'k-1')",
                                   &err),
                     0);
    assert_int_equal(cm_engine_pause(f->engine, "k-1", &err), CM_EDB);
    assert_non_null(strstr(err.msg, "stored input or context is not JSON"));
    expect_state(f, "k-1", "on", "running");
}

/* A message from peer as federation hands it over; prev as the sender sent it. */
static void receive(fx *f, const char *peer, const char *id, const char *prev)
{
    cJSON *payload = cJSON_CreateObject();
    cm_engine_msg m = {.peer = peer,
                       .id = id,
                       .kind = "test.note",
                       .from = "clinic-x",
                       .to = "cardio-x",
                       .purpose = "care_coordination",
                       .payload = payload,
                       .prev = prev};
    cm_err err;
    assert_int_equal(cm_engine_receive(f->engine, &m, on_ack, &f->a, &err), 0);
    cJSON_Delete(payload);
}

static void test_messages_apply_only_after_the_one_sent_before(void **state)
{
    fx *f = *state;
    /* x:2 overtakes x:1 (a window resent after a reconnect): x:2 waits */
    receive(f, "node-x", "node-x:2", "node-x:1");
    receive(f, "node-x", "node-x:1", NULL);
    run(f);
    assert_int_equal(f->a.n, 2);
    assert_int_equal(f->a.status[0], CM_ENOTFOUND); /* federation answers busy */
    assert_non_null(strstr(f->a.message[0], "node-x:2 follows node-x:1"));
    assert_int_equal(f->a.status[1], 0); /* recorded (refused: no such organizations here) */
    assert_int_equal(count(f, "SELECT count(*) FROM inbox WHERE msg_id = 'node-x:2'"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM inbox WHERE msg_id = 'node-x:1'"), 1);
    /* resent in order: x:2, then x:3 after it in the same batch */
    receive(f, "node-x", "node-x:2", "node-x:1");
    receive(f, "node-x", "node-x:3", "node-x:2");
    run(f);
    assert_int_equal(f->a.n, 4);
    assert_int_equal(f->a.status[2], 0);
    assert_int_equal(f->a.status[3], 0);
    assert_int_equal(count(f, "SELECT count(*) FROM inbox WHERE peer = 'node-x'"), 3);
    /* a duplicate is answered even when its prev is named again */
    receive(f, "node-x", "node-x:3", "node-x:2");
    /* the message before must be from the same peer */
    receive(f, "node-y", "node-y:4", "node-x:3");
    run(f);
    assert_int_equal(f->a.n, 6);
    assert_int_equal(f->a.status[4], 0);
    assert_int_equal(f->a.status[5], CM_ENOTFOUND);
    assert_int_equal(count(f, "SELECT count(*) FROM inbox"), 3);
}

/* Timer names of instance id, sorted and joined with ',' ("" when none). */
static void timers_of(fx *f, const char *id, char *out, size_t n)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT coalesce(group_concat(name, ','), '') FROM "
             "(SELECT name FROM timer WHERE instance = '%s' ORDER BY name)",
             id);
    text_of(f, sql, out, n);
}

/* How often the engine ran its scoped-timer DELETE (the same kept statement). */
static int scoped_deletes(fx *f)
{
    cm_err err;
    sqlite3_stmt *st =
        cm_store_prepare(f->store, "DELETE FROM timer WHERE instance = ?1 AND scope = ?2", &err);
    assert_non_null(st);
    return sqlite3_stmt_status(st, SQLITE_STMTSTATUS_RUN, 0);
}

static void step_and_expect_timers(fx *f, const char *event, const char *timers, int deletes)
{
    char got[256];
    int before = scoped_deletes(f);
    signal_ev(f, "s-1", event, NULL);
    run(f);
    if (f->a.status[f->a.n - 1] != 0)
        fail_msg("%s: %s", event, f->a.message[f->a.n - 1]);
    timers_of(f, "s-1", got, sizeof(got));
    if (strcmp(got, timers) != 0)
        fail_msg("after %s: timers %s, want %s", event, got, timers);
    if (scoped_deletes(f) - before != deletes)
        fail_msg("after %s (%d): %d scoped-timer DELETEs, want %d", event, f->a.n,
                 scoped_deletes(f) - before, deletes);
}

/* Leaving a state cancels its timers; the DELETE is skipped only when the
** engine knows the instance has no timer of that scope: started here, read
** back after the cache lost it, or with timers of two scopes at once. */
static void test_leaving_skips_the_delete_only_when_no_timer_has_that_scope(void **state)
{
    static const char *SCOPER =
        "local cm = require 'caremesh'\n"
        "return cm.workflow {\n"
        "  name = 'scoper', version = 1, start = 'a',\n"
        "  states = {\n"
        "    a = { enter = function(wf) wf:after('1h', 'ta') end,\n"
        "          on = { next = 'b', jump = 'g' } },\n"
        "    b = { enter = function(wf) wf:after('9h', 'tk', nil, { keep = true }) end,\n"
        "          on = { next = 'c' } },\n"
        "    c = { enter = function(wf) wf:after('1h', 'tc') end,\n"
        "          on = { next = 'd', stay = function(wf) wf:after('2h', 'tc2') end,\n"
        "                 poke = function(wf) end } },\n"
        "    d = { on = { next = 'a', finish = 'z' } },\n"
        "    z = { final = true },\n"
        "    g = { enter = function(wf) wf:after('1h', 'tg'); wf:go('c') end },\n"
        "  },\n"
        "}\n";
    fx *f = *state;
    cm_err err;
    char got[256];
    load_ok(f, "scoper.lua", SCOPER);
    assert_int_equal(cm_engine_start(f->engine, "scoper", NULL, "s-1", on_ack, &f->a, &err), 0);
    run(f);
    timers_of(f, "s-1", got, sizeof(got));
    assert_string_equal(got, "ta");
    step_and_expect_timers(f, "next", "tk", 1);    /* a had one: deleted */
    step_and_expect_timers(f, "next", "tc,tk", 0); /* b had none (tk is kept): no DELETE */
    step_and_expect_timers(f, "poke", "tc,tk", 0); /* no move, no timer */
    step_and_expect_timers(f, "next", "tk", 1);    /* c's timer is still known */
    step_and_expect_timers(f, "next", "ta,tk", 0); /* d had none */
    step_and_expect_timers(f, "next", "tk", 1);
    step_and_expect_timers(f, "next", "tc,tk", 0);
    step_and_expect_timers(f, "stay", "tc,tc2,tk", 0);
    /* pause and resume drop the kept copy: the scopes are read back */
    assert_int_equal(cm_engine_pause(f->engine, "s-1", &err), 0);
    assert_int_equal(cm_engine_resume(f->engine, "s-1", &err), 0);
    step_and_expect_timers(f, "next", "tk", 1); /* both of c's go */
    step_and_expect_timers(f, "next", "ta,tk", 0);
    /* a jump through g (its enter goes on to c): a's and g's timers go, c's
    ** stays; g's, started and left in the same step, is never written */
    step_and_expect_timers(f, "jump", "tc,tk", 1);
    step_and_expect_timers(f, "next", "tk", 1);
    assert_int_equal(cm_engine_pause(f->engine, "s-1", &err), 0);
    assert_int_equal(cm_engine_resume(f->engine, "s-1", &err), 0);
    step_and_expect_timers(f, "next", "ta,tk", 0); /* read back: no scoped timer, not d */
}

/* A step that passes through a state twice (b -> c -> b by enter handlers'
** wf:go) left b once: the timers of that first visit go, as a left state's
** do, and only the last visit's stay (also one of the same name). */
static void
test_a_state_left_and_reentered_in_one_step_keeps_only_the_last_visits_timers(void **state)
{
    static const char *LOOPER =
        "local cm = require 'caremesh'\n"
        "return cm.workflow {\n"
        "  name = 'looper', version = 1, start = 'a',\n"
        "  states = {\n"
        "    a = { on = { loop = 'b' } },\n"
        "    b = { enter = function(wf) wf.ctx.v = (wf.ctx.v or 0) + 1\n"
        "            wf:after(wf.ctx.v .. 'h', 'tb' .. wf.ctx.v)\n"
        "            wf:after(wf.ctx.v .. 'h', 'same')\n"
        "            wf:after('9h', 'kept' .. wf.ctx.v, nil, { keep = true })\n"
        "            if wf.ctx.v == 1 then wf:go('c') end end,\n"
        "          on = { go = 'd', stay = function(wf) end } },\n"
        "    c = { enter = function(wf) wf:after('2h', 'tc'); wf:go('b') end },\n"
        "    d = { final = true },\n"
        "  },\n"
        "}\n";
    fx *f = *state;
    cm_err err;
    char got[256];
    load_ok(f, "looper.lua", LOOPER);
    assert_int_equal(cm_engine_start(f->engine, "looper", NULL, "l-1", on_ack, &f->a, &err), 0);
    run(f);
    signal_ev(f, "l-1", "loop", NULL); /* a -> b -> c -> b in one step */
    run(f);
    assert_int_equal(f->a.status[1], 0);
    assert_string_equal(f->a.state[1], "b");
    timers_of(f, "l-1", got, sizeof(got));
    assert_string_equal(got, "kept1,kept2,same,tb2");
    /* the timer of the name both visits started is the second visit's (2h) */
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE name = 'same' AND due_ms = "
                              "(SELECT due_ms FROM timer WHERE name = 'tb2')"),
                     1);
    /* the same again with the instance read back from its row */
    assert_int_equal(cm_engine_pause(f->engine, "l-1", &err), 0);
    assert_int_equal(cm_engine_resume(f->engine, "l-1", &err), 0);
    signal_ev(f, "l-1", "stay", NULL);
    run(f);
    timers_of(f, "l-1", got, sizeof(got));
    assert_string_equal(got, "kept1,kept2,same,tb2");
    advance(f, 3 * HOUR); /* b has no transition for them: noted, not an error */
    expect_state(f, "l-1", "b", "running");
    timers_of(f, "l-1", got, sizeof(got));
    assert_string_equal(got, "kept1,kept2");
}

static const char *MID = "local cm = require 'caremesh'\n"
                         "return cm.workflow {\n"
                         "  name = 'mid', version = 1, start = 's',\n"
                         "  states = {\n"
                         "    s = { on = {\n"
                         "      tick = function(wf) wf.ctx.n = (wf.ctx.n or 0) + 1 end,\n"
                         "      boom = function(wf) wf.ctx.n = 99; error('kaput') end,\n"
                         "      spin = function(wf) wf.ctx.n = 98; while true do end end,\n"
                         "      arm = function(wf) wf.ctx.n = (wf.ctx.n or 0) + 10;\n"
                         "        wf:after('1h', 'tick') end,\n"
                         "      stop = 'z' } },\n"
                         "    z = { final = true },\n"
                         "  },\n"
                         "}\n";

static long ctx_n(fx *f, const char *id)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT coalesce(json_extract(ctx, '$.n'), 0) FROM instance WHERE id = '%s'", id);
    return count(f, sql);
}

/* A handler that writes records gets its step's savepoint before the first
** write: when it then fails, none of it is kept; when not, all of it is. */
static void test_a_handler_that_writes_and_fails_keeps_none_of_it(void **state)
{
    static const char *WRITER =
        "local cm = require 'caremesh'\n"
        "return cm.workflow {\n"
        "  name = 'writer', version = 1, start = 's',\n"
        "  states = {\n"
        "    s = { on = { make = function(wf, ev)\n"
        "            cm.organization.create { id = ev.id, name = 'Org', kind = 'clinic' }\n"
        "            wf.ctx.made = ev.id\n"
        "            if ev.fail then error('after the write') end end,\n"
        "          stop = 'z' } },\n"
        "    z = { final = true },\n"
        "  },\n"
        "}\n";
    fx *f = *state;
    cm_err err;
    load_ok(f, "writer.lua", WRITER);
    assert_int_equal(cm_engine_start(f->engine, "writer", NULL, "w-1", on_ack, &f->a, &err), 0);
    run(f);
    signal_ev(f, "w-1", "make", "{\"id\":\"org-1\",\"fail\":true}");
    signal_ev(f, "w-1", "make", "{\"id\":\"org-2\"}");
    run(f);
    assert_int_equal(f->a.status[1], CM_ELUA);
    assert_true(f->a.kept[1]);
    assert_int_equal(f->a.status[2], 0);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE id = 'org-1'"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE id = 'org-2'"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM instance WHERE id = 'w-1' AND "
                              "json_extract(ctx, '$.made') = 'org-2' AND steps = 2"),
                     1);
}

/* A step that spawns children rolls back whole when a later effect fails,
** though a child's start handler wrote and so opened a savepoint of its own
** inside the step's: the observer is told of no child, and none is kept. */
static void test_a_rolled_back_spawn_tells_of_no_child(void **state)
{
    static const char *QUIET =
        "local cm = require 'caremesh'\n"
        "return cm.workflow { name = 'quiet', version = 1, start = 'q',\n"
        "  states = { q = { on = { stop = 'z' } }, z = { final = true } } }\n";
    static const char *MAKER =
        "local cm = require 'caremesh'\n"
        "return cm.workflow { name = 'maker', version = 1, start = 'm',\n"
        "  states = { m = { enter = function(wf)\n"
        "      cm.organization.create { id = 'org-m', name = 'Org', kind = 'clinic' } end,\n"
        "    on = { stop = 'z' } }, z = { final = true } } }\n";
    static const char *SPAWNER =
        "local cm = require 'caremesh'\n"
        "return cm.workflow { name = 'spawner', version = 1, start = 's',\n"
        "  states = { s = { on = { go = function(wf)\n"
        "      wf:spawn('quiet', {}); wf:spawn('maker', {}); wf:spawn('nosuch', {}) end,\n"
        "    stop = 'z' } }, z = { final = true } } }\n";
    fx *f = *state;
    seen s = {0};
    cm_err err;
    sqlite3_open_v2(f->db, &s.db, SQLITE_OPEN_READONLY, NULL);
    load_ok(f, "quiet.lua", QUIET);
    load_ok(f, "maker.lua", MAKER);
    load_ok(f, "spawner.lua", SPAWNER);
    assert_int_equal(cm_engine_start(f->engine, "spawner", NULL, "sp-1", on_ack, &f->a, &err), 0);
    run(f);
    cm_engine_observe(f->engine, observe, &s);
    signal_ev(f, "sp-1", "go", NULL);
    run(f);
    sqlite3_close(s.db);
    assert_int_not_equal(f->a.status[1], 0);
    assert_int_equal(count(f, "SELECT count(*) FROM instance WHERE id <> 'sp-1'"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM record WHERE id = 'org-m'"), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.committed_mismatch, 0);
}

/* FNV-1a, as the engine's cache and its former direct-mapped table hashed ids. */
static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Instances whose ids hash alike in their low 16 bits (one slot of a table of
** up to 65536, one bucket of the cache) each stay in memory between steps:
** every event after the first round finds its instance there. */
static void test_instances_whose_ids_collide_all_stay_in_memory(void **state)
{
    fx *f = *state;
    cm_err err;
    char ids[8][16];
    int n = 0;
    uint32_t want = fnv1a("m-0") & 0xffff;
    for (long i = 0; n < 8 && i < 10000000; i++) {
        snprintf(ids[n], sizeof(ids[n]), "m-%ld", i);
        if ((fnv1a(ids[n]) & 0xffff) == want)
            n++;
    }
    assert_int_equal(n, 8);
    load_ok(f, "mid.lua", MID);
    for (int i = 0; i < 8; i++)
        assert_int_equal(cm_engine_start(f->engine, "mid", NULL, ids[i], on_ack, &f->a, &err), 0);
    run(f);
    cm_engine_stats st0, st1;
    cm_engine_stats_get(f->engine, &st0);
    assert_int_equal(st0.cache_entries, 8);
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 8; i++)
            signal_ev(f, ids[i], "tick", NULL);
        run(f);
    }
    cm_engine_stats_get(f->engine, &st1);
    assert_int_equal(st1.cache_hits - st0.cache_hits, 24);
    assert_int_equal(st1.cache_misses - st0.cache_misses, 0);
    for (int i = 0; i < 8; i++)
        assert_int_equal(ctx_n(f, ids[i]), 3);
}

/* At most cache_max running instances stay in memory: a new one makes room
** by dropping the one stepped longest ago, which is then read from its row;
** instances that end or pause are not kept. */
static void test_the_cache_is_bounded_and_drops_the_longest_idle(void **state)
{
    fx *f = *state;
    cm_err err;
    char id[16];
    cm_engine_stats st0, st;
    close_engine(f);
    f->cache_max = 4;
    open_engine(f);
    load_ok(f, "mid.lua", MID);
    for (int i = 1; i <= 6; i++) {
        snprintf(id, sizeof(id), "m-%d", i);
        assert_int_equal(cm_engine_start(f->engine, "mid", NULL, id, on_ack, &f->a, &err), 0);
    }
    run(f);
    cm_engine_stats_get(f->engine, &st0);
    assert_int_equal(st0.cache_entries, 4); /* m-3 .. m-6: m-1 and m-2 made room */
    assert_int_equal(st0.cache_evictions, 2);
    signal_ev(f, "m-3", "tick", NULL); /* kept: now the last stepped */
    run(f);
    signal_ev(f, "m-1", "tick", NULL); /* read from its row; m-4 makes room */
    run(f);
    signal_ev(f, "m-3", "tick", NULL);
    run(f);
    signal_ev(f, "m-4", "tick", NULL); /* read again; m-5 makes room */
    run(f);
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.cache_hits - st0.cache_hits, 2);
    assert_int_equal(st.cache_misses - st0.cache_misses, 2);
    assert_int_equal(st.cache_evictions, 4);
    assert_int_equal(st.cache_entries, 4);
    assert_int_equal(ctx_n(f, "m-3"), 2);
    assert_int_equal(ctx_n(f, "m-1"), 1);
    assert_int_equal(ctx_n(f, "m-4"), 1);
    /* many more instances than room: the cache never holds more */
    for (int i = 7; i <= 40; i++) {
        snprintf(id, sizeof(id), "m-%d", i);
        assert_int_equal(cm_engine_start(f->engine, "mid", NULL, id, on_ack, &f->a, &err), 0);
        signal_ev(f, id, "tick", NULL);
        run(f);
        cm_engine_stats_get(f->engine, &st);
        assert_true(st.cache_entries <= 4);
        assert_true(cm_lua_runtime_ctx_kept(f->rt) <= 4); /* no more Lua tables either */
    }
    for (int i = 1; i <= 40; i++) {
        snprintf(id, sizeof(id), "m-%d", i);
        signal_ev(f, id, "tick", NULL);
        run(f);
        assert_int_equal(ctx_n(f, id), i == 3 ? 3 : i >= 7 || i == 1 || i == 4 ? 2 : 1);
    }
    /* ended and paused instances are not kept */
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.cache_entries, 4);
    assert_int_equal(cm_engine_pause(f->engine, "m-40", &err), 0);
    for (int i = 37; i <= 39; i++) {
        snprintf(id, sizeof(id), "m-%d", i);
        signal_ev(f, id, "stop", NULL);
    }
    run(f);
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.cache_entries, 0);
    assert_int_equal(cm_lua_runtime_ctx_kept(f->rt), 0);
}

/* A negative bound (what engine.instance_cache = 0 selects) keeps nothing:
** every step reads its instance's row, no Lua table is kept for the next,
** and the steps' results are those of a cached run. */
static void test_no_instance_is_kept_when_the_cache_is_off(void **state)
{
    fx *f = *state;
    cm_err err;
    cm_engine_stats st;
    close_engine(f);
    f->cache_max = -1;
    open_engine(f);
    load_ok(f, "mid.lua", MID);
    assert_int_equal(cm_engine_start(f->engine, "mid", NULL, "m-1", on_ack, &f->a, &err), 0);
    assert_int_equal(cm_engine_start(f->engine, "mid", NULL, "m-2", on_ack, &f->a, &err), 0);
    run(f);
    for (int r = 0; r < 3; r++) {
        signal_ev(f, "m-1", "tick", NULL);
        signal_ev(f, "m-2", "tick", NULL);
        run(f);
        cm_engine_stats_get(f->engine, &st);
        assert_int_equal(st.cache_entries, 0);
        assert_int_equal(cm_lua_runtime_ctx_kept(f->rt), 0);
    }
    assert_int_equal(st.cache_hits, 0);
    assert_int_equal(st.cache_misses, 6);
    assert_int_equal(st.cache_evictions, 0);
    assert_int_equal(ctx_n(f, "m-1"), 3);
    assert_int_equal(ctx_n(f, "m-2"), 3);
}

static const char *KEEPER =
    "local cm = require 'caremesh'\n"
    "return cm.workflow {\n"
    "  name = 'keeper', version = 1, start = 's',\n"
    "  states = {\n"
    "    s = { on = {\n"
    "      tick = function(wf) wf.ctx.n = (wf.ctx.n or 0) + 1 end,\n"
    "      boom = function(wf) wf.ctx.n = 99; error('kaput') end,\n"
    "      float = function(wf) wf.ctx.f = 2.0 end,\n"
    "      ftype = function(wf) wf.ctx.ft = math.type(wf.ctx.f) end,\n"
    "      alias = function(wf) local t = { v = 1 }; wf.ctx.a = t; wf.ctx.b = t end,\n"
    "      bump = function(wf) wf.ctx.a.v = 2 end,\n"
    "      meta = function(wf)\n"
    "        wf.ctx.m = setmetatable({}, { __index = function() return 'x' end }) end,\n"
    "      look = function(wf) wf.ctx.bv = wf.ctx.b.v; wf.ctx.mz = wf.ctx.m.z or 'none' end,\n"
    "      arm = function(wf) wf:after('1h', 'peek') end,\n"
    "      peek = { to = 'z', guard = function(wf) wf.ctx.n = 77; return false end },\n"
    "      hog = function(wf) wf.ctx.n = 55; local t = {}\n"
    "        for i = 1, 100000000 do t[i] = i end end,\n"
    "      stop = 'z' } },\n"
    "    z = { final = true },\n"
    "  },\n"
    "}\n";

static void keeper_step(fx *f, const char *id, const char *event)
{
    signal_ev(f, id, event, NULL);
    run(f);
}

static void expect_ctx(fx *f, const char *id, const char *path, const char *want)
{
    char sql[300], got[128];
    snprintf(sql, sizeof(sql),
             "SELECT coalesce(json_extract(ctx, '%s'), '') FROM instance WHERE id = '%s'", path,
             id);
    text_of(f, sql, got, sizeof(got));
    assert_string_equal(got, want);
}

/* A running instance's wf.ctx stays a table between its steps, so a step
** reads no text; a step that fails drops it, and so does one whose context
** would read back as something else (a float with an integral value, one
** table in two places, a metatable): the next step sees its row. */
static void test_a_kept_context_behaves_as_its_row(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "keeper.lua", KEEPER);
    assert_int_equal(cm_engine_start(f->engine, "keeper", NULL, "k-1", on_ack, &f->a, &err), 0);
    run(f);
    unsigned long reads = cm_lua_runtime_ctx_reads(f->rt);
    for (int i = 0; i < 3; i++)
        keeper_step(f, "k-1", "tick");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 1); /* the first tick only */
    keeper_step(f, "k-1", "boom");
    assert_int_equal(f->a.status[4], CM_ELUA);
    keeper_step(f, "k-1", "tick");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 2);
    assert_int_equal(ctx_n(f, "k-1"), 4);
    /* its event, kept for retry, would come back with the clock */
    assert_int_equal(cm_store_exec(f->store, "DELETE FROM event WHERE instance = 'k-1'", &err), 0);
    keeper_step(f, "k-1", "float");
    keeper_step(f, "k-1", "ftype");
    expect_ctx(f, "k-1", "$.ft", "integer");
    keeper_step(f, "k-1", "alias");
    keeper_step(f, "k-1", "bump");
    keeper_step(f, "k-1", "meta");
    keeper_step(f, "k-1", "look");
    expect_ctx(f, "k-1", "$.bv", "1");
    expect_ctx(f, "k-1", "$.mz", "none");
    /* a timer whose guard changed wf.ctx and refused: nothing is written, and
    ** nothing of it stays */
    keeper_step(f, "k-1", "tick");
    keeper_step(f, "k-1", "arm");
    reads = cm_lua_runtime_ctx_reads(f->rt);
    advance(f, HOUR);
    assert_int_equal(count(f, "SELECT count(*) FROM history WHERE instance = 'k-1' AND "
                              "note LIKE 'timer ignored%'"),
                     1);
    keeper_step(f, "k-1", "tick");
    assert_int_equal(ctx_n(f, "k-1"), 6);
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 1);
}

/* A memory kill drops every kept context, so that the retry has the room
** the cap gives: the other instances read theirs from the text again. */
static void test_a_memory_kill_drops_every_kept_context(void **state)
{
    fx *f = *state;
    cm_err err;
    close_engine(f);
    f->lua_memory = (size_t)16 << 20;
    open_engine(f);
    load_ok(f, "keeper.lua", KEEPER);
    assert_int_equal(cm_engine_start(f->engine, "keeper", NULL, "k-1", on_ack, &f->a, &err), 0);
    assert_int_equal(cm_engine_start(f->engine, "keeper", NULL, "k-2", on_ack, &f->a, &err), 0);
    run(f);
    keeper_step(f, "k-1", "tick");
    keeper_step(f, "k-2", "tick");
    unsigned long reads = cm_lua_runtime_ctx_reads(f->rt);
    keeper_step(f, "k-2", "tick");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt), reads); /* kept */
    keeper_step(f, "k-1", "hog");
    assert_int_equal(f->a.status[f->a.n - 1], CM_EMEMCAP);
    keeper_step(f, "k-2", "tick");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 1);
    assert_int_equal(ctx_n(f, "k-2"), 3);
    assert_int_equal(ctx_n(f, "k-1"), 1);
}

/* An instance kept in memory has run a step: its definition is installed,
** and its next steps do not ask the runtime again; one read from its row
** asks once. */
static void test_a_kept_instance_does_not_ask_for_its_definition_again(void **state)
{
    fx *f = *state;
    cm_err err;
    close_engine(f);
    f->count_installed = true;
    open_engine(f);
    load_ok(f, "mid.lua", MID);
    installed_calls = 0;
    assert_int_equal(cm_engine_start(f->engine, "mid", NULL, "m-1", on_ack, &f->a, &err), 0);
    run(f);
    for (int i = 0; i < 3; i++) {
        signal_ev(f, "m-1", "tick", NULL);
        run(f);
    }
    assert_int_equal(installed_calls, 1);
    assert_int_equal(cm_engine_pause(f->engine, "m-1", &err), 0);
    assert_int_equal(cm_engine_resume(f->engine, "m-1", &err), 0);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    assert_int_equal(installed_calls, 2);
    assert_int_equal(ctx_n(f, "m-1"), 5);
}

/* A table the workflow keeps outside wf.ctx (a chunk-level local) and puts
** in it: another instance's step that changes that table must not change
** what this instance's next step sees, which is its row. */
static const char *SHARER = "local cm = require 'caremesh'\n"
                            "local shared = { v = 1 }\n"
                            "return cm.workflow {\n"
                            "  name = 'sharer', version = 1, start = 's',\n"
                            "  states = { s = { on = {\n"
                            "    share = function(wf) wf.ctx.s = shared end,\n"
                            "    poke = function(wf) shared.v = 5 end,\n"
                            "    look = function(wf) wf.ctx.seen = wf.ctx.s.v end,\n"
                            "    stop = 'z' } },\n"
                            "    z = { final = true } },\n"
                            "}\n";

static void test_a_kept_context_is_not_changed_by_another_instance(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "sharer.lua", SHARER);
    assert_int_equal(cm_engine_start(f->engine, "sharer", NULL, "s-1", on_ack, &f->a, &err), 0);
    assert_int_equal(cm_engine_start(f->engine, "sharer", NULL, "s-2", on_ack, &f->a, &err), 0);
    run(f);
    keeper_step(f, "s-1", "share");
    expect_ctx(f, "s-1", "$.s.v", "1");
    unsigned long reads = cm_lua_runtime_ctx_reads(f->rt);
    keeper_step(f, "s-2", "poke"); /* s-2's handler, s-1's context untouched */
    keeper_step(f, "s-1", "look");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 0); /* its kept copy */
    expect_ctx(f, "s-1", "$.seen", "1");
    expect_ctx(f, "s-1", "$.s.v", "1");
}

/* What is kept between steps is a copy made while wf.ctx was written, which
** no handler has seen: a handler that keeps a reference to wf.ctx, changes
** it in a later step of another instance, or changes it and then raises or
** runs out of budget, changes nothing the next step sees (its row). */
static const char *HOLDER =
    "local cm = require 'caremesh'\n"
    "local held\n"
    "return cm.workflow {\n"
    "  name = 'holder', version = 1, start = 's',\n"
    "  states = { s = { on = {\n"
    "    set = function(wf) wf.ctx.v = 1; wf.ctx.t = { w = 1 } end,\n"
    "    hold = function(wf) held = wf.ctx end,\n"
    "    mess = function(wf) held.v = 9; held.t.w = 9 end,\n"
    "    bust = function(wf) wf.ctx.v = 3; wf.ctx.t.w = 3; error('bust') end,\n"
    "    spin = function(wf) wf.ctx.v = 4; while true do end end,\n"
    "    look = function(wf) wf.ctx.seen = wf.ctx.v * 10 + wf.ctx.t.w end,\n"
    "    stop = 'z' } },\n"
    "    z = { final = true } },\n"
    "}\n";

static void test_a_kept_context_is_a_copy_no_handler_holds(void **state)
{
    fx *f = *state;
    cm_err err;
    load_ok(f, "holder.lua", HOLDER);
    assert_int_equal(cm_engine_start(f->engine, "holder", NULL, "h-1", on_ack, &f->a, &err), 0);
    assert_int_equal(cm_engine_start(f->engine, "holder", NULL, "h-2", on_ack, &f->a, &err), 0);
    run(f);
    keeper_step(f, "h-1", "set");
    keeper_step(f, "h-1", "hold");
    unsigned long reads = cm_lua_runtime_ctx_reads(f->rt);
    keeper_step(f, "h-2", "mess"); /* the table h-1's handler saw */
    keeper_step(f, "h-1", "look");
    expect_ctx(f, "h-1", "$.seen", "11");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 0); /* its copy, not its text */
    /* the same in one batch */
    signal_ev(f, "h-1", "hold", NULL);
    signal_ev(f, "h-2", "mess", NULL);
    signal_ev(f, "h-1", "look", NULL);
    run(f);
    expect_ctx(f, "h-1", "$.seen", "11");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 0);
    /* changed and then raised, or killed by the budget: the copy it was
    ** handed goes, and the next step reads the row */
    keeper_step(f, "h-1", "bust");
    assert_int_equal(f->a.status[f->a.n - 1], CM_ELUA);
    keeper_step(f, "h-1", "look");
    expect_ctx(f, "h-1", "$.seen", "11");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 1);
    keeper_step(f, "h-1", "spin");
    assert_int_equal(f->a.status[f->a.n - 1], CM_EBUDGET);
    keeper_step(f, "h-1", "look");
    expect_ctx(f, "h-1", "$.seen", "11");
    expect_ctx(f, "h-1", "$.v", "1");
    assert_int_equal(cm_lua_runtime_ctx_reads(f->rt) - reads, 2);
}

/* One batch: steps that write no effect go without a savepoint, so a handler
** that raises or runs out of budget in the middle of it must leave its
** instance as it was, its event kept with the error, and the steps around it
** (one instance twice) commit with the batch. */
static void test_a_failing_handler_in_the_middle_of_a_batch_changes_nothing(void **state)
{
    fx *f = *state;
    cm_err err;
    cm_engine_stats st0, st1;
    char id[16];
    load_ok(f, "mid.lua", MID);
    for (int i = 1; i <= 4; i++) {
        snprintf(id, sizeof(id), "m-%d", i);
        assert_int_equal(cm_engine_start(f->engine, "mid", NULL, id, on_ack, &f->a, &err), 0);
    }
    run(f);
    cm_engine_stats_get(f->engine, &st0);
    signal_ev(f, "m-1", "tick", NULL);
    signal_ev(f, "m-2", "boom", NULL);
    signal_ev(f, "m-3", "spin", NULL);
    signal_ev(f, "m-4", "tick", NULL);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    cm_engine_stats_get(f->engine, &st1);
    assert_int_equal(st1.batches - st0.batches, 1);
    assert_int_equal(f->a.status[4], 0);
    assert_int_equal(f->a.status[5], CM_ELUA);
    assert_true(f->a.kept[5]);
    assert_int_equal(f->a.status[6], CM_EBUDGET);
    assert_true(f->a.kept[6]);
    assert_int_equal(f->a.status[7], 0);
    assert_int_equal(f->a.status[8], 0);
    assert_int_equal(ctx_n(f, "m-1"), 2);
    assert_int_equal(ctx_n(f, "m-2"), 0);
    assert_int_equal(ctx_n(f, "m-3"), 0);
    assert_int_equal(ctx_n(f, "m-4"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM history WHERE instance IN ('m-2', 'm-3')"), 2);
    assert_int_equal(count(f, "SELECT steps FROM instance WHERE id = 'm-2'"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'm-2' AND "
                              "error LIKE '%kaput%' AND attempts = 1"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'm-3' AND attempts = 1"),
                     1);
    /* the next step of each starts from what was committed; a step that ends
    ** (in a savepoint) among them */
    signal_ev(f, "m-2", "tick", NULL);
    signal_ev(f, "m-1", "tick", NULL);
    signal_ev(f, "m-4", "stop", NULL);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    assert_int_equal(ctx_n(f, "m-2"), 1);
    assert_int_equal(ctx_n(f, "m-1"), 4);
    expect_state(f, "m-4", "z", "done");
    cJSON *inst = get(f, "m-1");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(inst, "history")), 5);
    cJSON_Delete(inst);
    /* every row names its instance's previous step, every instance its last */
    assert_int_equal(count(f, "SELECT count(*) FROM history h LEFT JOIN history p ON "
                              "p.seq = h.prev WHERE (h.step = 1) <> (h.prev IS NULL) OR "
                              "(h.prev IS NOT NULL AND (p.instance IS NOT h.instance OR "
                              "p.step <> h.step - 1 OR p.seq > h.seq))"),
                     0);
    assert_int_equal(count(f, "SELECT count(*) FROM instance i JOIN history h ON h.seq = i.hist "
                              "WHERE h.instance <> i.id OR h.step <> i.steps"),
                     0);
    assert_int_equal(count(f, "SELECT count(*) FROM instance WHERE hist IS NULL"), 0);
}

/* Load mid.lua and start m-1 .. m-n in one batch. */
static void start_mids(fx *f, int n)
{
    cm_err err;
    char id[16];
    load_ok(f, "mid.lua", MID);
    for (int i = 1; i <= n; i++) {
        snprintf(id, sizeof(id), "m-%d", i);
        assert_int_equal(cm_engine_start(f->engine, "mid", NULL, id, on_ack, &f->a, &err), 0);
    }
}

/* From now on the database refuses instance's history rows with
** RAISE(how, 'history refused') (a trigger named refuse). */
static void refuse_history(fx *f, const char *instance, const char *how)
{
    cm_err err;
    char sql[256];
    snprintf(sql, sizeof(sql),
             "CREATE TRIGGER refuse BEFORE INSERT ON history WHEN NEW.instance = '%s' BEGIN "
             "SELECT RAISE(%s, 'history refused'); END",
             instance, how);
    assert_int_equal(cm_store_exec(f->store, sql, &err), 0);
}

/* A step's own rows go without a savepoint: when the database refuses one
** of them, the batch runs again with a savepoint around every step. The
** refused step is kept alone with its error and attempt count, retried
** later; every other step commits once (no history, timer or context
** twice) and its submitter is acknowledged. */
static void test_a_database_error_in_a_bare_step_fails_that_step_alone(void **state)
{
    fx *f = *state;
    cm_err err;
    cm_engine_stats st0, st;
    start_mids(f, 4);
    run(f);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    long history = count(f, "SELECT count(*) FROM history");
    cm_engine_stats_get(f->engine, &st0);
    refuse_history(f, "m-2", "ABORT");
    signal_ev(f, "m-1", "tick", NULL); /* 5 */
    signal_ev(f, "m-3", "arm", NULL);  /* 6: a step with an effect (a timer) */
    signal_ev(f, "m-2", "tick", NULL); /* 7: refused */
    signal_ev(f, "m-1", "tick", NULL); /* 8 */
    signal_ev(f, "m-4", "stop", NULL); /* 9: ends, in a savepoint */
    assert_int_equal(cm_engine_run(f->engine, NULL, &err), 0);
    assert_int_equal(f->a.n, 10);
    for (int i = 5; i < 10; i++) {
        if (i == 7)
            continue;
        assert_int_equal(f->a.status[i], 0);
        assert_false(f->a.kept[i]);
    }
    assert_int_not_equal(f->a.status[7], 0);
    assert_true(f->a.kept[7]);
    assert_non_null(strstr(f->a.message[7], "history refused"));
    assert_int_equal(ctx_n(f, "m-1"), 3);
    assert_int_equal(ctx_n(f, "m-2"), 0);
    assert_int_equal(ctx_n(f, "m-3"), 10);
    expect_state(f, "m-4", "z", "done");
    assert_int_equal(count(f, "SELECT count(*) FROM history"), history + 4);
    assert_int_equal(count(f, "SELECT count(*) FROM timer WHERE instance = 'm-3'"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'm-2' AND "
                              "error LIKE '%history refused%' AND attempts = 1 AND "
                              "status = 'ready'"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 1);
    /* counted once, not once per run of the batch; the runtime keeps no
    ** context of a step that did not commit */
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.failed - st0.failed, 1);
    assert_int_equal(st.batches - st0.batches, 1);
    assert_int_equal(st.processed - st0.processed, 5);
    assert_true(cm_lua_runtime_ctx_kept(f->rt) <= st.cache_entries);
    /* the kept event is retried when due and, the database willing, applies once */
    assert_int_equal(cm_store_exec(f->store, "DROP TRIGGER refuse", &err), 0);
    advance(f, 1000);
    assert_int_equal(ctx_n(f, "m-2"), 1);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM history"), history + 5);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    assert_int_equal(ctx_n(f, "m-1"), 4);
}

/* A refused step's kept event is acknowledged with the state its instance
** is in, not the one the rolled-back step would have reached. */
static void test_a_kept_step_is_acknowledged_in_the_state_it_left(void **state)
{
    static const char *MOVER = "local cm = require 'caremesh'\n"
                               "return cm.workflow {\n"
                               "  name = 'mover', version = 1, start = 'a',\n"
                               "  states = {\n"
                               "    a = { on = { go = 'b' } },\n"
                               "    b = { on = { stop = 'z' } },\n"
                               "    z = { final = true },\n"
                               "  },\n"
                               "}\n";
    fx *f = *state;
    cm_err err;
    load_ok(f, "mover.lua", MOVER);
    assert_int_equal(cm_engine_start(f->engine, "mover", NULL, "mv-1", on_ack, &f->a, &err), 0);
    run(f);
    assert_int_equal(cm_store_exec(f->store,
                                   "CREATE TRIGGER refuse_step BEFORE UPDATE ON instance_step "
                                   "WHEN NEW.state = 'b' BEGIN SELECT RAISE(ABORT, 'step "
                                   "refused'); END",
                                   &err),
                     0);
    signal_ev(f, "mv-1", "go", NULL);
    run(f);
    assert_int_equal(f->a.n, 2);
    assert_true(f->a.kept[1]);
    assert_non_null(strstr(f->a.message[1], "step refused"));
    expect_state(f, "mv-1", "a", "running");
    assert_string_equal(f->a.state[1], "a");
}

/* A batch run again keeps a paused instance's event held once, a text
** payload of its refused step kept as given, and counts each instance
** taken from memory once. */
static void test_a_batch_run_again_holds_and_keeps_each_event_once(void **state)
{
    fx *f = *state;
    cm_err err;
    cm_engine_stats st0, st;
    start_mids(f, 3);
    run(f);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    assert_int_equal(cm_engine_pause(f->engine, "m-3", &err), 0);
    refuse_history(f, "m-2", "ABORT");
    cm_engine_stats_get(f->engine, &st0);
    assert_int_equal(signal_text(f, "m-1", "tick", "{\"k\": \"v\"}", &err), 0);
    assert_int_equal(signal_text(f, "m-3", "tick", "{\"held\": 1}", &err), 0);
    assert_int_equal(signal_text(f, "m-2", "tick", " {\"x\": [1, 2]} ", &err), 0);
    run(f);
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(f->a.n, 7);
    assert_int_equal(f->a.status[4], 0);
    assert_true(f->a.kept[5]);
    assert_true(f->a.kept[6]);
    assert_int_not_equal(f->a.status[6], 0);
    assert_int_equal(ctx_n(f, "m-1"), 2);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'm-3' AND "
                              "status = 'ready' AND json_extract(payload, '$.held') = 1"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'm-2' AND "
                              "json_extract(payload, '$.x[1]') = 2 AND attempts = 1"),
                     1);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 2);
    assert_int_equal((st.cache_hits + st.cache_misses) - (st0.cache_hits + st0.cache_misses), 3);
    /* cancelled, the paused instance's held event is parked, once */
    assert_int_equal(cm_engine_cancel(f->engine, "m-3", "test", &err), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'm-3' AND "
                              "status = 'failed'"),
                     1);
}

/* The same for a due timer: its refused step is kept as its event (the
** timer's row gone with the step that took it), retried when due. */
static void test_a_refused_timer_step_is_kept_as_its_event(void **state)
{
    fx *f = *state;
    cm_err err;
    start_mids(f, 2);
    run(f);
    signal_ev(f, "m-1", "arm", NULL);
    signal_ev(f, "m-2", "arm", NULL);
    run(f);
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 2);
    refuse_history(f, "m-1", "ABORT");
    advance(f, 3600 * 1000);
    assert_int_equal(count(f, "SELECT count(*) FROM timer"), 0);
    assert_int_equal(ctx_n(f, "m-1"), 10);
    assert_int_equal(ctx_n(f, "m-2"), 11);
    assert_int_equal(count(f, "SELECT count(*) FROM event WHERE instance = 'm-1' AND timer = 1 AND "
                              "attempts = 1 AND error LIKE '%history refused%'"),
                     1);
    assert_int_equal(cm_store_exec(f->store, "DROP TRIGGER refuse", &err), 0);
    advance(f, 1000);
    assert_int_equal(ctx_n(f, "m-1"), 11);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 0);
}

/* A refused step that cannot even be kept (its event row refused too)
** fails the batch: nothing is lost quietly, every submitter hears why. */
static void test_a_refused_step_that_cannot_be_kept_fails_the_batch(void **state)
{
    fx *f = *state;
    cm_err err;
    start_mids(f, 2);
    run(f);
    long history = count(f, "SELECT count(*) FROM history");
    refuse_history(f, "m-2", "ABORT");
    assert_int_equal(cm_store_exec(f->store,
                                   "CREATE TRIGGER refuse_kept BEFORE INSERT ON event WHEN "
                                   "NEW.instance = 'm-2' BEGIN SELECT RAISE(ABORT, 'event "
                                   "refused'); END",
                                   &err),
                     0);
    signal_ev(f, "m-1", "tick", NULL);
    signal_ev(f, "m-2", "tick", NULL);
    assert_int_not_equal(cm_engine_run(f->engine, NULL, &err), 0);
    assert_non_null(strstr(err.msg, "history refused"));
    assert_int_equal(f->a.n, 4);
    for (int i = 2; i < 4; i++) {
        assert_int_not_equal(f->a.status[i], 0);
        assert_false(f->a.kept[i]);
    }
    assert_int_equal(count(f, "SELECT count(*) FROM history"), history);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 0);
    assert_int_equal(ctx_n(f, "m-1"), 0);
}

/* When the refused write takes the whole transaction with it (the store
** failing: SQLITE_FULL or an I/O error may, as RAISE(ROLLBACK) does here),
** no step can be kept apart: nothing of the batch commits and every
** submitter hears why. */
static void test_a_store_failure_in_a_step_fails_the_whole_batch(void **state)
{
    fx *f = *state;
    cm_err err;
    start_mids(f, 2);
    run(f);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    long history = count(f, "SELECT count(*) FROM history");
    refuse_history(f, "m-2", "ROLLBACK");
    signal_ev(f, "m-1", "tick", NULL);
    signal_ev(f, "m-2", "tick", NULL);
    signal_ev(f, "m-1", "tick", NULL);
    assert_int_not_equal(cm_engine_run(f->engine, NULL, &err), 0);
    assert_non_null(strstr(err.msg, "history refused"));
    /* the batch stopped at the refused step: the two it ran are told, the
    ** third waits for the next batch */
    assert_int_equal(f->a.n, 5);
    for (int i = 3; i < 5; i++) {
        assert_int_not_equal(f->a.status[i], 0);
        assert_false(f->a.kept[i]);
        assert_non_null(strstr(f->a.message[i], "history refused"));
    }
    assert_int_equal(ctx_n(f, "m-1"), 1);
    assert_int_equal(ctx_n(f, "m-2"), 0);
    assert_int_equal(count(f, "SELECT count(*) FROM history"), history);
    assert_int_equal(count(f, "SELECT count(*) FROM event"), 0);
    /* the steps that did not commit are not remembered either */
    cm_engine_stats st;
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.cache_entries, 0);
    assert_int_equal(cm_lua_runtime_ctx_kept(f->rt), 0);
    assert_int_equal(cm_store_exec(f->store, "DROP TRIGGER refuse", &err), 0);
    signal_ev(f, "m-1", "tick", NULL);
    run(f);
    assert_int_equal(f->a.n, 7);
    assert_int_equal(f->a.status[5], 0);
    assert_int_equal(f->a.status[6], 0);
    assert_int_equal(ctx_n(f, "m-1"), 3);
    assert_int_equal(count(f, "SELECT count(*) FROM history"), history + 2);
}

/* ---- pipelined group commit ------------------------------------------- */

/* The same database, the engine pipelined and its store's syncs through the gate. */
static void reopen_pipelined(fx *f)
{
    close_engine(f);
    cm_test_gate_init(&f->gate);
    f->pipeline = true;
    open_engine(f);
    cm_test_gate_zero(&f->gate); /* the open's sync of the WAL it found */
    load_ok(f, "ticker.lua", TICKER);
}

/* reopen_pipelined, with the engine's events told to s (which reads the
** database through a connection of its own). */
static void reopen_pipelined_observed(fx *f, seen *s)
{
    reopen_pipelined(f);
    sqlite3_open_v2(f->db, &s->db, SQLITE_OPEN_READONLY, NULL);
    cm_engine_observe(f->engine, observe, s);
}

/* Attach the pipelined engine to loop; hold: the sync thread's syncs wait
** for the test (cm_test_gate_hold). */
static void attach_pipelined(fx *f, uv_loop_t *loop, bool hold)
{
    cm_err err;
    assert_int_equal(uv_loop_init(loop), 0);
    assert_int_equal(cm_engine_attach(f->engine, loop, &err), 0);
    if (hold)
        cm_test_gate_hold(&f->gate, true);
}

static void start_ticker(fx *f, const char *id)
{
    cm_err err;
    assert_int_equal(cm_engine_start(f->engine, "ticker", NULL, id, on_ack, &f->a, &err), 0);
}

/* Run the loop until n acks have come (bounded: each turn waits at most for
** the ticker's 1 s timer). */
static void loop_until_acks(fx *f, uv_loop_t *loop, int n)
{
    for (int i = 0; i < 100 && f->a.n < n; i++)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(f->a.n, n);
}

static void loop_end(fx *f, uv_loop_t *loop)
{
    cm_engine_detach(f->engine);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* Attached and pipelined, a batch commits and the loop goes on to the next
** one while its sync runs; no ack nor observer event leaves before the sync
** that covers it: nothing while the sync is held, everything after, in
** order. The second batch, committed while the first one's sync was in
** flight, is covered by the next one sync. */
static void test_pipelined_acks_wait_for_the_sync_that_covers_them(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    seen s = {0};
    cm_engine_stats st;
    reopen_pipelined_observed(f, &s);
    attach_pipelined(f, &loop, true);
    start_ticker(f, "t-1");
    start_ticker(f, "t-2");
    uv_run(&loop, UV_RUN_NOWAIT); /* the first batch commits; its sync is held */
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    assert_int_equal(count(f, "SELECT count(*) FROM instance WHERE id LIKE 't-%'"), 2);
    start_ticker(f, "t-3");
    uv_run(&loop, UV_RUN_NOWAIT); /* the next batch commits meanwhile */
    assert_int_equal(count(f, "SELECT count(*) FROM instance WHERE id LIKE 't-%'"), 3);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(f->a.n, 0);
    assert_int_equal(s.n, 0);
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.batches, 2);
    cm_test_gate_hold(&f->gate, false);
    loop_until_acks(f, &loop, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(f->a.status[i], 0);
        assert_string_equal(f->a.state[i], "waiting");
    }
    assert_string_equal(f->a.instance[0], "t-1");
    assert_string_equal(f->a.instance[2], "t-3");
    assert_int_equal(s.n, 3);
    assert_string_equal(s.line[0], "1 t-1 >waiting ");
    assert_string_equal(s.line[2], "1 t-3 >waiting ");
    assert_int_equal(s.committed_mismatch, 0);
    assert_int_equal(cm_test_gate_started(&f->gate), 2);
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.sync_waits, 2);
    sqlite3_close(s.db);
    loop_end(f, &loop);
}

/* An ack of a pipelined batch tells when its event was submitted, its
** batch began and committed, the sync that covered it ran and its acks were
** released, in that order: the held sync ends after the test let it go, and
** the second batch, committed while the first one's sync was held, is
** covered by a sync begun after it. Outside an ack, and for an
** ack of an unpipelined batch, there is nothing to tell. */
static void test_a_pipelined_ack_tells_where_its_latency_went(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    cm_engine_ack_times t;
    reopen_pipelined(f);
    f->a.engine = f->engine;
    f->a.store = f->store;
    assert_int_equal(cm_engine_ack_times_get(f->engine, &t), -1);
    attach_pipelined(f, &loop, true);
    int64_t before = (int64_t)uv_hrtime();
    start_ticker(f, "t-1");
    uv_run(&loop, UV_RUN_NOWAIT); /* the first batch commits; its sync is held */
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    start_ticker(f, "t-2");
    uv_run(&loop, UV_RUN_NOWAIT); /* the second commits while the first one's sync is held */
    int64_t released = (int64_t)uv_hrtime();
    cm_test_gate_hold(&f->gate, false);
    loop_until_acks(f, &loop, 2);
    for (int i = 0; i < 2; i++) {
        const cm_engine_ack_times *x = &f->a.times[i];
        assert_int_equal(f->a.status[i], 0);
        assert_int_equal(f->a.times_rc[i], 0);
        assert_true(before <= x->submitted);
        assert_true(x->submitted <= x->begun);
        assert_true(x->begun <= x->committed);
        assert_true(x->sync_start <= x->sync_end);
        assert_true(x->committed <= x->sync_end);
        assert_true(x->sync_end <= x->released);
    }
    assert_true(f->a.times[0].sync_end >= released); /* the held sync */
    assert_true(f->a.times[1].submitted >= f->a.times[0].committed);
    /* a sync begun at or after its commit (whose time is read just after the
    ** commit returned), not the held one; t-1's may be told as covered by
    ** either sync, whichever ended first */
    assert_true(f->a.times[1].sync_start >= f->a.times[1].begun);
    assert_int_equal(cm_engine_ack_times_get(f->engine, &t), -1);
    loop_end(f, &loop);
    start_ticker(f, "t-3"); /* detached: committed synced, nothing to tell */
    run(f);
    assert_int_equal(f->a.n, 3);
    assert_int_equal(f->a.status[2], 0);
    assert_int_equal(f->a.times_rc[2], -1);
}

/* Acks whose sync ended while a later batch ran are told before the next
** batch begins, inside the same run, not after a turn of the loop; and
** still in commit order, and only after their sync. */
static void test_acks_synced_during_a_run_are_told_between_its_batches(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    cm_err err;
    f->batch_max = 1;
    reopen_pipelined(f);
    f->a.engine = f->engine;
    f->a.store = f->store;
    attach_pipelined(f, &loop, true);
    start_ticker(f, "t-1");
    run(f); /* t-1's batch commits; its sync is held */
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    start_ticker(f, "t-2");
    start_ticker(f, "t-3");
    cm_test_gate_hold(&f->gate, false);
    assert_int_equal(cm_store_sync_wait(f->store, cm_store_commit_seq(f->store), &err), 0);
    assert_int_equal(f->a.n, 0); /* the loop has not looked yet */
    run(f);                      /* t-2's batch, then t-1's ack, then t-3's batch */
    assert_true(f->a.n >= 1);
    assert_string_equal(f->a.instance[0], "t-1");
    assert_int_equal(f->a.status[0], 0);
    assert_int_equal(f->a.batches[0], 2);
    loop_until_acks(f, &loop, 3);
    assert_string_equal(f->a.instance[1], "t-2");
    assert_string_equal(f->a.instance[2], "t-3");
    for (int i = 0; i < 3; i++)
        assert_true(f->a.synced[i] >= f->a.output[i]); /* each told after its sync */
    loop_end(f, &loop);
}

/* Pipelined, a batch that runs again because a step without a savepoint
** was refused tells the observer and the submitters only what its second
** run committed, once, after the sync that covers it. */
static void test_a_pipelined_batch_run_again_tells_each_event_once(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    seen s = {0};
    cm_err err;
    reopen_pipelined_observed(f, &s);
    attach_pipelined(f, &loop, false);
    start_mids(f, 3);
    loop_until_acks(f, &loop, 3);
    int told = s.n;
    cm_engine_stats st0, st;
    cm_engine_stats_get(f->engine, &st0);
    refuse_history(f, "m-2", "ABORT");
    signal_ev(f, "m-3", "stop", NULL); /* 3: ends; its events are told */
    signal_ev(f, "m-2", "tick", NULL); /* 4: refused, kept */
    signal_ev(f, "m-1", "tick", NULL); /* 5 */
    loop_until_acks(f, &loop, 6);
    cm_engine_stats_get(f->engine, &st);
    assert_int_equal(st.batches - st0.batches, 1); /* the three in one batch */
    assert_int_equal(st.failed - st0.failed, 1);
    assert_int_equal(f->a.status[3], 0);
    assert_true(f->a.kept[4]);
    assert_non_null(strstr(f->a.message[4], "history refused"));
    assert_int_equal(f->a.status[5], 0);
    assert_int_equal(ctx_n(f, "m-1"), 1);
    expect_state(f, "m-3", "z", "done");
    /* what the observer heard of m-3's end, once: as many lines as an end
    ** makes in a batch that ran once */
    int ended = 0;
    for (int i = told; i < s.n; i++) {
        assert_null(strstr(s.line[i], "m-2"));
        if (strstr(s.line[i], "m-3"))
            ended++;
    }
    assert_true(ended >= 1);
    assert_int_equal(s.committed_mismatch, 0);
    assert_int_equal(cm_store_exec(f->store, "DROP TRIGGER refuse", &err), 0);
    assert_int_equal(cm_engine_start(f->engine, "mid", NULL, "m-4", on_ack, &f->a, &err), 0);
    loop_until_acks(f, &loop, 7);
    told = s.n;
    signal_ev(f, "m-4", "stop", NULL);
    loop_until_acks(f, &loop, 8);
    assert_int_equal(s.n - told, ended);
    sqlite3_close(s.db);
    loop_end(f, &loop);
}

/* A synced commit by anyone (here an operator action) syncs every frame
** before it: acks of batches still waiting for the sync thread go out
** before the action's own events. */
static void test_a_synced_commit_releases_earlier_pipelined_acks(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    cm_err err;
    reopen_pipelined(f);
    attach_pipelined(f, &loop, true);
    start_ticker(f, "t-1");
    start_ticker(f, "t-2");
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    assert_int_equal(f->a.n, 0);
    assert_int_equal(cm_engine_pause(f->engine, "t-1", &err), 0);
    assert_int_equal(f->a.n, 2); /* told before the pause returned, the sync still held */
    assert_int_equal(f->a.status[0], 0);
    assert_int_equal(f->a.status[1], 0);
    assert_int_equal(f->gate.done, 0);
    cm_test_gate_hold(&f->gate, false);
    loop_end(f, &loop);
    expect_state(f, "t-1", "waiting", "paused");
}

/* A pipelined batch that wrote nothing (an event for no instance) asks no
** sync: its ack goes at once, the sync thread never involved. */
static void test_a_pipelined_batch_that_wrote_nothing_is_told_at_once(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    reopen_pipelined(f);
    attach_pipelined(f, &loop, true); /* a sync asked would hold the ack */
    signal_ev(f, "nobody", "poke", NULL);
    for (int i = 0; i < 10 && f->a.n == 0; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(f->a.n, 1);
    assert_int_equal(f->a.status[0], CM_ENOTFOUND);
    assert_int_equal(cm_test_gate_started(&f->gate), 0);
    cm_test_gate_hold(&f->gate, false);
    loop_end(f, &loop);
}

/* core/engine.c's allocation of a parked batch's wait (CM_TEST_PARK_ALLOC):
** while park_fail is set it fails, once, first releasing the gate it holds
** (the engine then waits for the sync on the loop thread). */
static cm_test_gate *park_fail;
static int park_failed;

void *cm__test_park_alloc(size_t size);

void *cm__test_park_alloc(size_t size)
{
    if (!park_fail)
        return malloc(size);
    cm_test_gate_hold(park_fail, false);
    park_fail = NULL;
    park_failed++;
    return NULL;
}

/* A batch committed while an earlier one waits for its sync, when there is
** no memory to park it in, waits for its own sync where it is and then
** tells the parked batch's submitters first, then its own: each once, in
** commit order, with its outcome; the observer too. */
static void test_a_batch_with_no_memory_to_wait_in_is_told_after_those_parked(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    seen s = {0};
    reopen_pipelined_observed(f, &s);
    attach_pipelined(f, &loop, true);
    start_ticker(f, "t-1");
    start_ticker(f, "t-2");
    uv_run(&loop, UV_RUN_NOWAIT); /* the first batch commits and parks; its sync is held */
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    start_ticker(f, "t-3");
    signal_ev(f, "nobody", "poke", NULL);
    park_fail = &f->gate;
    park_failed = 0;
    uv_run(&loop, UV_RUN_NOWAIT); /* the second batch commits: no memory to park it */
    assert_int_equal(park_failed, 1);
    assert_null(park_fail);
    /* told before the loop turned again: the sync was waited for inline */
    assert_int_equal(f->a.n, 4);
    for (int i = 0; i < 10; i++)
        uv_run(&loop, UV_RUN_NOWAIT); /* the sync thread's wakeups: nothing more to tell */
    assert_int_equal(f->a.n, 4);
    static const char *const ids[] = {"t-1", "t-2", "t-3", "nobody"};
    for (int i = 0; i < 4; i++)
        assert_string_equal(f->a.instance[i], ids[i]);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(f->a.status[i], 0);
        assert_string_equal(f->a.state[i], "waiting");
    }
    assert_int_equal(f->a.status[3], CM_ENOTFOUND);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.line[0], "1 t-1 >waiting ");
    assert_string_equal(s.line[1], "1 t-2 >waiting ");
    assert_string_equal(s.line[2], "1 t-3 >waiting ");
    assert_int_equal(s.committed_mismatch, 0);
    assert_int_equal(count(f, "SELECT count(*) FROM instance WHERE id LIKE 't-%'"), 3);
    sqlite3_close(s.db);
    loop_end(f, &loop);
}

/* Detaching waits for the sync of what was committed and tells its acks. */
static void test_detach_tells_the_acks_of_committed_batches(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    reopen_pipelined(f);
    attach_pipelined(f, &loop, true);
    start_ticker(f, "t-1");
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    cm_test_gate_hold(&f->gate, false);
    cm_engine_detach(f->engine);
    assert_int_equal(f->a.n, 1);
    assert_int_equal(f->a.status[0], 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A failed sync acknowledges nothing: every submitter of the batches it
** would have covered hears CM_EINDOUBT (committed, not known durable), the
** observer hears nothing, and the engine stops: later work is refused with
** CM_EIO, not run. */
static void test_a_failed_sync_acknowledges_nothing_and_stops_the_engine(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    seen s = {0};
    cm_err err;
    reopen_pipelined_observed(f, &s);
    f->gate.fail = EIO;
    attach_pipelined(f, &loop, false);
    f->a.engine = f->engine;
    f->a.store = f->store;
    start_ticker(f, "t-1");
    start_ticker(f, "t-2");
    loop_until_acks(f, &loop, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(f->a.status[i], CM_EINDOUBT);
        assert_false(f->a.kept[i]);
        assert_non_null(strstr(f->a.message[i], "fdatasync failed"));
        /* the API's answer (503 outcome_unknown) waits for no sync: the
        ** watermark will never reach the commit it is about */
        assert_true(f->a.output[i] <= f->a.synced[i]);
    }
    assert_int_equal(s.n, 0);
    start_ticker(f, "t-3");
    loop_until_acks(f, &loop, 3);
    assert_int_equal(f->a.status[2], CM_EIO);
    assert_non_null(strstr(f->a.message[2], "takes no more writes"));
    assert_true(f->a.output[2] <= f->a.synced[2]); /* never run: its 503 waits for nothing */
    assert_int_equal(cm_engine_run(f->engine, NULL, &err), CM_EIO);
    assert_int_equal(cm_engine_pause(f->engine, "t-1", &err), CM_EIO);
    sqlite3_close(s.db);
    loop_end(f, &loop);
}

/* A sync that fails after an earlier one succeeded, both seen by the loop
** at once: the batch the good sync covered is durable and acknowledged as
** such (its observer events told); only the next one is in doubt. */
static void test_a_batch_synced_before_a_failed_sync_is_acknowledged(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    seen s = {0};
    cm_err err;
    reopen_pipelined_observed(f, &s);
    f->gate.fail = EIO;
    f->gate.fail_at = 2; /* the first sync succeeds, the second fails */
    attach_pipelined(f, &loop, true);
    start_ticker(f, "t-1");
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(cm_test_gate_wait_held(&f->gate, 1)); /* t-1's sync, held */
    start_ticker(f, "t-2");
    uv_run(&loop, UV_RUN_NOWAIT); /* t-2's batch commits and waits for the next */
    assert_int_equal(f->a.n, 0);
    cm_test_gate_hold(&f->gate, false);
    /* both syncs end (the second failing) before the loop looks: the wait
    ** returns once the store has taken in the failure */
    assert_int_equal(cm_store_sync_wait(f->store, cm_store_commit_seq(f->store), &err),
                     CM_EINDOUBT);
    assert_int_equal(cm_test_gate_started(&f->gate), 2);
    assert_int_equal(cm_store_sync_status(f->store, &err), CM_EIO);
    loop_until_acks(f, &loop, 2);
    assert_string_equal(f->a.instance[0], "t-1");
    assert_int_equal(f->a.status[0], 0);
    assert_int_equal(f->a.status[1], CM_EINDOUBT);
    assert_non_null(strstr(f->a.message[1], "fdatasync failed"));
    assert_true(s.n >= 1); /* t-1's start, told to the observer; nothing of t-2's */
    for (int i = 0; i < s.n; i++)
        assert_non_null(strstr(s.line[i], " t-1 "));
    sqlite3_close(s.db);
    loop_end(f, &loop);
}

/* A work hook (the API's audit entry) that cannot write for instance t-2. */
static int refuse_t2(void *ud, cm_ack_cb cb, void *submit_ud, const cm_ack *ack, cm_err *err)
{
    (void)ud;
    (void)cb;
    (void)submit_ud;
    if (ack->instance && strcmp(ack->instance, "t-2") == 0)
        return cm_err_set(err, CM_EDB, "refused by the test's work hook");
    return 0;
}

/* A pipelined batch that fails (its work hook refuses: the batch rolls
** back) tells its submitters the error only after the acks of the batches
** before it, still waiting for their sync: answers go in submission order. */
static void test_a_failed_batch_is_told_after_earlier_batches_waiting_for_their_sync(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    reopen_pipelined(f);
    attach_pipelined(f, &loop, true);
    start_ticker(f, "t-1");
    uv_run(&loop, UV_RUN_NOWAIT); /* the first batch commits; its sync is held */
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    cm_engine_set_work_hook(f->engine, refuse_t2, NULL);
    start_ticker(f, "t-2");
    uv_run(&loop, UV_RUN_NOWAIT); /* the second batch fails and rolls back */
    int told_while_held = f->a.n;
    cm_test_gate_hold(&f->gate, false); /* before any assertion: a held sync hangs the close */
    assert_int_equal(told_while_held, 0);
    assert_int_equal(count(f, "SELECT count(*) FROM instance WHERE id = 't-2'"), 0);
    loop_until_acks(f, &loop, 2);
    assert_string_equal(f->a.instance[0], "t-1");
    assert_int_equal(f->a.status[0], 0);
    assert_string_equal(f->a.instance[1], "t-2");
    assert_int_equal(f->a.status[1], CM_EDB);
    assert_false(f->a.kept[1]);
    assert_non_null(strstr(f->a.message[1], "refused by the test's work hook"));
    cm_engine_set_work_hook(f->engine, NULL, NULL);
    loop_end(f, &loop);
}

/* The same, but the sync the first batch waits for fails: the first batch
** is in doubt (committed, not known durable), while the second, rolled
** back, is told its own error: it is known not to be there. */
static void test_a_rolled_back_batch_behind_a_failed_sync_keeps_its_error(void **state)
{
    fx *f = *state;
    uv_loop_t loop;
    reopen_pipelined(f);
    f->gate.fail = EIO;
    attach_pipelined(f, &loop, true);
    f->a.engine = f->engine;
    f->a.store = f->store;
    start_ticker(f, "t-1");
    uv_run(&loop, UV_RUN_NOWAIT); /* the first batch commits; its sync is held */
    assert_true(cm_test_gate_wait_held(&f->gate, 1));
    cm_engine_set_work_hook(f->engine, refuse_t2, NULL);
    start_ticker(f, "t-2");
    uv_run(&loop, UV_RUN_NOWAIT); /* the second batch fails and rolls back */
    int told_while_held = f->a.n;
    cm_test_gate_hold(&f->gate, false); /* the sync fails */
    assert_int_equal(told_while_held, 0);
    loop_until_acks(f, &loop, 2);
    assert_string_equal(f->a.instance[0], "t-1");
    assert_int_equal(f->a.status[0], CM_EINDOUBT);
    assert_true(f->a.output[0] <= f->a.synced[0]); /* its 503 waits for no sync */
    assert_string_equal(f->a.instance[1], "t-2");
    assert_int_equal(f->a.status[1], CM_EDB);
    assert_non_null(strstr(f->a.message[1], "refused by the test's work hook"));
    cm_engine_set_work_hook(f->engine, NULL, NULL);
    loop_end(f, &loop);
}

/* Without a loop a pipelined engine commits synced: every ack is told when
** cm_engine_run returns, and the sync thread is never asked. */
static void test_a_pipelined_engine_without_a_loop_commits_synced(void **state)
{
    fx *f = *state;
    reopen_pipelined(f);
    cm_test_gate_hold(&f->gate, true); /* a sync asked of the thread would hang the run */
    start_ticker(f, "t-1");
    run(f);
    assert_int_equal(f->a.n, 1);
    assert_int_equal(f->a.status[0], 0);
    assert_int_equal(cm_test_gate_started(&f->gate), 0);
    cm_test_gate_hold(&f->gate, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_start_runs_enter_and_arms_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_operator_action_writes_with_its_change, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_events_change_state_after_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_to_a_peer_is_queued_routed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_fires_on_the_virtual_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_times_follow_the_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kept_texts_hold_each_steps_own_values, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_signal_items_are_reused_with_their_own_names_and_payload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests_are_refused_and_change_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_a_kept_text_payload_is_stored_as_the_cjson_path_stores_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_handler_is_kept_retried_and_parked, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_steps_alternating_definitions_run_their_own, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wf_ctx_is_read_by_any_key_spelled_ctx, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_handle_kept_past_its_step_reads_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_the_handle_stays_read_only_after_wf_ctx_is_read, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_handle_kept_past_a_failed_step_reads_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_budget_exhaustion_is_a_kept_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_holds_and_resume_applies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_ends_and_drops_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_children_report_to_their_parent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_pins_running_instances, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broken_definitions_are_refused_with_place, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_restart_recovers_timers_and_kept_events, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_batches_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batches_close_by_time_as_well_as_count, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_context_is_read_on_use_and_written_on_change, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_instance_rows_are_split_and_upgraded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_row_without_count_and_time_upgraded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_timers_without_the_instance_lookup_upgraded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_payload_text_is_read_and_bad_text_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_payload_text_nests_as_deep_as_the_api_takes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_numbers_past_a_double_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_payload_checked_text_is_queued_as_given, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_history_is_chained_per_instance_and_upgraded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_attached_engine_runs_on_the_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_events_kept_when_an_instance_ends_are_parked_not_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_observer_hears_committed_events_in_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_rolled_back_spawn_tells_of_no_child, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kept_instances_follow_failures_and_operator_actions,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_go_moves_on_and_leaving_cancels_the_state_timers,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_exit_runs_on_leaving_before_the_next_enter, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_a_handlers_patient_reads_and_writes_are_audited_as_its_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_handlers_entries_carry_its_workflows_declared_purpose, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_workflow_with_an_unknown_purpose_does_not_load,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_failed_steps_reads_are_audited_again_as_failed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_workflow_files_top_level_reads_no_patient, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_leaving_skips_the_delete_only_when_no_timer_has_that_scope, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_state_left_and_reentered_in_one_step_keeps_only_the_last_visits_timers, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_a_failing_handler_in_the_middle_of_a_batch_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_handler_that_writes_and_fails_keeps_none_of_it,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_database_error_in_a_bare_step_fails_that_step_alone,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_refused_timer_step_is_kept_as_its_event, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_kept_step_is_acknowledged_in_the_state_it_left,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_batch_run_again_holds_and_keeps_each_event_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_refused_step_that_cannot_be_kept_fails_the_batch,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_store_failure_in_a_step_fails_the_whole_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_pipelined_batch_run_again_tells_each_event_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_pipelined_ack_tells_where_its_latency_went, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_acks_synced_during_a_run_are_told_between_its_batches,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_acks_wait_for_the_sync_that_covers_them,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_synced_commit_releases_earlier_pipelined_acks, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_a_batch_with_no_memory_to_wait_in_is_told_after_those_parked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_tells_the_acks_of_committed_batches, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_pipelined_batch_that_wrote_nothing_is_told_at_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_failed_sync_acknowledges_nothing_and_stops_the_engine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_batch_synced_before_a_failed_sync_is_acknowledged,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_failed_batch_is_told_after_earlier_batches_waiting_for_their_sync, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_a_rolled_back_batch_behind_a_failed_sync_keeps_its_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_pipelined_engine_without_a_loop_commits_synced,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_messages_apply_only_after_the_one_sent_before, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_instances_whose_ids_collide_all_stay_in_memory, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_the_cache_is_bounded_and_drops_the_longest_idle, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_instance_is_kept_when_the_cache_is_off, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_kept_context_behaves_as_its_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_memory_kill_drops_every_kept_context, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_kept_context_is_a_copy_no_handler_holds, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_kept_context_is_not_changed_by_another_instance,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_kept_instance_does_not_ask_for_its_definition_again,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
