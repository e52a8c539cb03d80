/*
** fhir_map.h -- FHIR R4 resources <-> caremesh records, as pure functions
** over cJSON: no store, no I/O, no plugin API. The import side reads one
** resource and fills a caremesh record, reporting every problem with its
** FHIR path ("entry[3].resource.birthDate: ..."); references go through a
** resolver the caller supplies (the bundle and the store). The export side
** turns a record the model accepted into a resource, and cannot fail but
** for lack of memory. docs/fhir.md is the mapping table, field by field.
*/
#ifndef CM_FHIR_MAP_H
#define CM_FHIR_MAP_H

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* caremesh's own code systems, extensions and identifiers in FHIR. */
#define FHIR_SYS_CM_ID       "urn:caremesh:id"
#define FHIR_SYS_INSTANCE    "urn:caremesh:instance"
#define FHIR_SYS_REFERRAL_ID "urn:caremesh:referral-id"
#define FHIR_SYS_ORG_KIND    "urn:caremesh:organization-kind"
#define FHIR_SYS_ROLE        "urn:caremesh:provider-role"
#define FHIR_SYS_PURPOSE     "urn:caremesh:purpose"
#define FHIR_SYS_STATE       "urn:caremesh:referral-state"
#define FHIR_EXT_NODE        "urn:caremesh:extension:node"
#define FHIR_EXT_CHANNEL     "urn:caremesh:extension:preferredChannel"
#define FHIR_EXT_NOTE        "urn:caremesh:extension:note"
#define FHIR_EXT_ORG         "urn:caremesh:extension:organization"

#define FHIR_PATH_MAX     320
#define FHIR_ID_MAX       64 /* longest FHIR id */
#define FHIR_ID_BUFSZ     (FHIR_ID_MAX + 1)
#define FHIR_CM_ID_MAX    128 /* longest caremesh id */
#define FHIR_PROBLEMS_MAX 1000

/* ---- problems and paths ---- */

/* Every problem of one import, in order; past FHIR_PROBLEMS_MAX only counted. */
typedef struct fhir_problems {
    char **msgs;
    size_t n, cap;
    size_t dropped;
    bool oom;
} fhir_problems;

/* A FHIR path under construction ("entry[3].resource.name[0].family"). */
typedef struct fhir_path {
    char buf[FHIR_PATH_MAX];
    size_t len;
} fhir_path;

/* Append to path (printf-style); returns the length before, for fhir_path_pop.
** A path that would not fit ends in "..." and stays so until popped. */
size_t fhir_path_push(fhir_path *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fhir_path_pop(fhir_path *p, size_t len);

/* Add "PATH: message" (just the message when at is NULL or empty). */
void fhir_problem(fhir_problems *p, const fhir_path *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void fhir_problems_free(fhir_problems *p);
/* Total reported, counted ones included. */
size_t fhir_problems_count(const fhir_problems *p);

/* ---- values ---- */

/* YYYY-MM-DD, a real calendar date (years 1000-9999). */
bool fhir_date_ok(const char *s);
/* A date, or YYYY-MM-DDThh:mm[:ss[.f...]] with Z or +-hh:mm. */
bool fhir_datetime_ok(const char *s);
/* A FHIR id: 1-64 of [A-Za-z0-9.-]. */
bool fhir_id_ok(const char *s);
/* A caremesh id: 1-128 of [A-Za-z0-9._:-]. */
bool fhir_cm_id_ok(const char *s);
/* The FHIR id for caremesh id: itself when it is a valid FHIR id; otherwise
** the id with other characters turned to '-', cut to fit, and a hash of the
** whole id appended (so two ids never meet). buf holds FHIR_ID_BUFSZ. */
const char *fhir_id_for(const char *cm_id, char *buf);

/* ---- a map of string keys to ints (entry indexes) ---- */

typedef struct fhir_keys {
    struct fhir_slot {
        char *key;
        int value;
    } * slots;
    size_t cap; /* a power of two, at least twice n */
    size_t n;
} fhir_keys;

/* Room for keys keys; false on out of memory. */
bool fhir_keys_init(fhir_keys *m, size_t keys);
void fhir_keys_free(fhir_keys *m);
/* tag, then "type/id" (or just id when type is NULL), into buf. */
char *fhir_key(char tag, const char *type, const char *id, char *buf, size_t bufsz);
/* The value of key, or -1. */
int fhir_keys_get(const fhir_keys *m, const char *key);
/* Add key -> value unless there: the value already there, -1 when added, -2
** out of memory. */
int fhir_keys_put(fhir_keys *m, const char *key, int value);

/* ---- import: FHIR resource -> caremesh record ---- */

/* What a reference resolved to: the FHIR type of the target and the
** caremesh id it has (or will have). */
typedef struct fhir_target {
    const char *type; /* "Patient", "Organization", "Practitioner", "PractitionerRole", ... */
    const char *id;   /* the caremesh id */
} fhir_target;

/* Resolve Reference.reference; 0 with *out filled (borrowed until the import
** ends), or -1 with the reason in why ("matches no entry of the bundle ..."). */
typedef int (*fhir_resolve_fn)(void *ud, const char *reference, fhir_target *out, char *why,
                               size_t whylen);

typedef struct fhir_in {
    fhir_problems *problems; /* where problems go */
    fhir_path path;          /* the resource's path: "entry[3].resource" */
    fhir_resolve_fn resolve;
    void *ud;
} fhir_in;

/* Each fills doc (a caremesh record whose "id" the caller set) from res and
** returns the number of problems it added (0: doc is complete). */
size_t fhir_import_organization(fhir_in *in, const cJSON *res, cJSON *doc);
size_t fhir_import_patient(fhir_in *in, const cJSON *res, cJSON *doc);
/* Practitioner: name, active (and phone, email when the role has none). */
size_t fhir_import_practitioner(fhir_in *in, const cJSON *res, cJSON *doc);
/* PractitionerRole: role, organization, specialty, phone, email, active. */
size_t fhir_import_practitioner_role(fhir_in *in, const cJSON *res, cJSON *doc);
size_t fhir_import_consent(fhir_in *in, const cJSON *res, cJSON *doc);
size_t fhir_import_immunization(fhir_in *in, const cJSON *res, cJSON *doc);
size_t fhir_import_task(fhir_in *in, const cJSON *res, cJSON *doc);
/* Condition: one item of the patient's "conditions" into *item (caller owns);
** the subject's caremesh id into subject (FHIR_CM_ID_MAX + 1 bytes). */
size_t fhir_import_condition(fhir_in *in, const cJSON *res, cJSON **item, char *subject);

/* The caremesh id a resource names: an identifier of system urn:caremesh:id
** (written by export when the id is not a valid FHIR id), else resource.id.
** NULL when it has neither. */
const char *fhir_resource_cm_id(const cJSON *res);

/* ---- export: caremesh record -> FHIR resource ---- */

/* Each returns a new resource (caller frees), NULL on out of memory. */
cJSON *fhir_export_organization(const cJSON *rec);
/* A provider is a Practitioner and a PractitionerRole with the same id. */
cJSON *fhir_export_practitioner(const cJSON *rec);
cJSON *fhir_export_practitioner_role(const cJSON *rec);
cJSON *fhir_export_patient(const cJSON *rec);
/* The patient's conditions[index] as a Condition. */
cJSON *fhir_export_condition(const cJSON *patient, int index);
cJSON *fhir_export_consent(const cJSON *rec);
cJSON *fhir_export_immunization(const cJSON *rec);
cJSON *fhir_export_task(const cJSON *rec);
/* A referral workflow instance ({id, state, status, input, ctx, created,
** updated}) as a ServiceRequest (the order) and a Task (its fulfilment). */
cJSON *fhir_export_referral_request(const cJSON *inst);
cJSON *fhir_export_referral_task(const cJSON *inst);
/* The FHIR Task status of a referral state (see workflows/referral.lua). */
const char *fhir_referral_task_status(const char *state);

#endif
