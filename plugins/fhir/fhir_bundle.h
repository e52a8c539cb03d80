/*
** fhir_bundle.h -- a FHIR R4 Bundle read into a plan of caremesh record
** writes: the JSON parsed and checked, every entry indexed, references
** inside the bundle (fullUrl, "Type/id") and to stored records resolved,
** Practitioner + PractitionerRole joined into providers, Conditions folded
** into their patients, and the writes ordered so that every reference
** points at a record written before it. Pure: the store is reached only
** through the lookup the caller gives. Every problem is collected, with the
** entry index and the FHIR path.
*/
#ifndef CM_FHIR_BUNDLE_H
#define CM_FHIR_BUNDLE_H

#include "fhir_map.h"

#define FHIR_ENTRIES_MAX 100000
#define FHIR_DEPTH_MAX   64 /* deepest nesting inside one resource */

/* The store as the planner sees it: the stored record of kind ("patient")
** with id, as a new cJSON the planner frees; NULL when there is none. */
typedef struct fhir_store {
    cJSON *(*get)(void *ud, const char *kind, const char *id);
    void *ud;
} fhir_store;

/* One record to write. */
typedef struct fhir_write {
    const char *kind; /* caremesh kind: "organization", "provider", ... */
    cJSON *doc;       /* the record (owned by the plan) */
    int entry;        /* index of the bundle entry it comes from */
    const char *type; /* that entry's resourceType */
} fhir_write;

typedef struct fhir_plan {
    fhir_write *writes; /* in write order */
    size_t n, cap;
    size_t entries;         /* entries in the bundle */
    size_t skipped;         /* entries not imported (see notes) */
    fhir_problems problems; /* errors: any means nothing may be written */
    fhir_problems notes;    /* what was skipped and why */
} fhir_plan;

/* Read the bundle text (len bytes and a NUL after them) into plan (zeroed by the caller).
** Returns the number of problems (plan->problems); 0 means the writes are
** ready. plan is always filled and must be freed. */
size_t fhir_plan_build(const char *text, size_t len, const fhir_store *store, fhir_plan *plan);
void fhir_plan_free(fhir_plan *plan);

/* The caremesh kind a FHIR resource type is kept as; NULL when none. */
const char *fhir_kind_of(const char *type);

#endif
