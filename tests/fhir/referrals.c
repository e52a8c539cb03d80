/*
** referrals.c -- real referral instances for the fhir plugin's tests: the
** shipped workflows/referral.lua driven through the engine on a node's
** database, to the states a clinic sees (requested, accepted, scheduled,
** declined, closed), so that `caremesh fhir export` has referrals and
** workflow-made tasks to write. usage: referrals DB REFERRAL.lua
** The patients and organizations of tests/fhir/clinic_bundle.json must be
** stored; the partnership the referrals go out under is added here.
** Prints "id state" per instance.
*/
#include "engine.h"
#include "lhost.h"
#include "lworkflow.h"
#include "sandbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_ack(void *ud, const cm_ack *ack)
{
    (void)ud;
    if (ack->status != 0) {
        fprintf(stderr, "referrals: %s refused: %s\n", ack->instance, ack->message);
        exit(3);
    }
}

static void die(const char *what, const cm_err *err)
{
    fprintf(stderr, "referrals: %s: %s\n", what, err->msg);
    exit(2);
}

/* One referral: started with input (JSON text), then each event ("name" or
** "name payload-json") in turn. */
typedef struct script {
    const char *id, *input, *events[4][2];
} script;

static const script scripts[] = {
    {"referral-garcia-cardio",
     "{\"patient\":\"pat-garcia\",\"from\":\"org-riverside\",\"to\":\"org-cardio\","
     "\"reason\":\"Worsening dyspnoea on exertion; echo requested\",\"priority\":\"urgent\","
     "\"referral_id\":\"SR-88231\"}",
     {{"referral.accepted", "{}"},
      {"referral.scheduled", "{\"appointment\":\"2030-02-03T09:30:00Z\"}"}}},
    {"referral-chen-cardio",
     "{\"patient\":\"pat-chen\",\"from\":\"org-riverside\",\"to\":\"org-cardio\","
     "\"reason\":\"Palpitations\"}",
     {{"referral.declined", "{\"reason\":\"Out of our catchment area\"}"}}},
    {"referral-tui-cardio",
     "{\"patient\":\"3e5a1c84-0d2f-4b61-a9f7-5c2e8d4b9a12\",\"from\":\"org-riverside\","
     "\"to\":\"org-cardio\",\"reason\":\"Murmur on auscultation\"}",
     {{"referral.accepted", "{}"},
      {"referral.scheduled", "{\"appointment\":\"2030-01-10T14:00:00Z\"}"},
      {"referral.consult_note", "{\"note\":\"Benign flow murmur; no follow-up needed.\"}"},
      {"close", "{\"note\":\"Reviewed.\"}"}}},
    {"referral-garcia-2",
     "{\"patient\":\"pat-garcia\",\"from\":\"org-riverside\",\"to\":\"org-cardio\","
     "\"reason\":\"Annual heart failure review\"}",
     {{NULL, NULL}}},
};

int main(int argc, char **argv)
{
    cm_store_opts so;
    cm_store *store = NULL;
    cm_err err;
    if (argc != 3)
        return fprintf(stderr, "usage: referrals DB REFERRAL.lua\n"), 2;
    cm_store_opts_init(&so);
    so.path = argv[1];
    if (cm_store_open(&store, &so, &err) != 0)
        die("store", &err);
    cm_clock *clock = cm_clock_new_system();
    cm_model *model = cm_model_new(store, clock);
    cm_sandbox *sb = cm_sandbox_new(NULL, &err);
    cm_lua_host host = {store, model, clock, "referrals", NULL, NULL, NULL, NULL};
    if (!sb || cm_lua_host_set(cm_sandbox_state(sb), &host, &err) != 0)
        die("sandbox", &err);
    cm_sandbox_preload(sb, "caremesh", cm_lua_open_caremesh);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", argv[2]);
    char *slash = strrchr(dir, '/');
    snprintf(slash ? slash : dir, sizeof(dir) - (size_t)(slash ? slash - dir : 0), "%s",
             slash ? "" : ".");
    if (cm_sandbox_add_module_dir(sb, dir, &err) != 0) /* require "lib.x": beside the file */
        die("modules", &err);
    cm_lua_runtime *rt = cm_lua_runtime_new(sb, &err);
    cm_engine_opts eo = {.store = store,
                         .model = model,
                         .clock = clock,
                         .runtime = cm_lua_runtime_seam(rt),
                         .batch_max = 16};
    cm_engine *engine = cm_engine_new(&eo, &err);
    if (!engine || cm_engine_load_file(engine, argv[2], NULL, NULL, &err) != 0)
        die("load", &err);
    cJSON *terms = cJSON_Parse(
        "{\"id\":\"pship-cardio\",\"name\":\"Riverside - Cascade cardiology referrals\","
        "\"purpose\":\"Closed-loop cardiology referrals\",\"reviewCadence\":\"quarterly\","
        "\"members\":[{\"organization\":\"org-riverside\"},{\"organization\":\"org-cardio\"}],"
        "\"terms\":[{\"receiver\":\"org-cardio\",\"classes\":[\"demographics\",\"contact\","
        "\"notes\"],"
        "\"purposes\":[\"referral\"]}]}");
    if (cm_model_create(model, CM_KIND_PARTNERSHIP, terms, NULL, &err) != 0)
        die("partnership", &err);
    cJSON_Delete(terms);
    for (size_t i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
        const script *s = &scripts[i];
        cJSON *input = cJSON_Parse(s->input), *inst = NULL;
        if (cm_engine_start(engine, "referral", input, s->id, on_ack, NULL, &err) != 0 ||
            cm_engine_run(engine, NULL, &err) != 0)
            die(s->id, &err);
        cJSON_Delete(input);
        for (size_t k = 0; k < 4 && s->events[k][0]; k++) {
            cJSON *payload = cJSON_Parse(s->events[k][1]);
            if (cm_engine_signal(engine, s->id, s->events[k][0], payload, on_ack, NULL, &err) !=
                    0 ||
                cm_engine_run(engine, NULL, &err) != 0)
                die(s->events[k][0], &err);
            cJSON_Delete(payload);
        }
        if (cm_engine_get(engine, s->id, &inst, &err) != 0)
            die(s->id, &err);
        printf("%s %s\n", s->id, cJSON_GetObjectItem(inst, "state")->valuestring);
        cJSON_Delete(inst);
    }
    cm_engine_destroy(&engine);
    cm_lua_runtime_destroy(&rt);
    cm_sandbox_destroy(&sb);
    cm_model_destroy(&model);
    if (cm_store_close_v2(&store, &err) != 0)
        die("close", &err);
    cm_clock_destroy(&clock);
    return 0;
}
