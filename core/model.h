/*
** model.h -- the care primitives: organization, provider, patient,
** partnership, consent, care team, task, immunization. Records are JSON documents (cJSON)
** whose field names and value sets follow FHIR R4 where FHIR has them; each
** kind has a declarative schema (model.c) that validates every write and names
** the field at fault ("patient.contact.email: ..."). References between
** records are kept in record_ref with real foreign keys; searchable values in
** record_index. A write is one transaction (or a savepoint inside the
** caller's), so a refused write changes nothing.
** Depends on: store.h, clock.h, cJSON. Loop thread only.
*/
#ifndef CM_MODEL_H
#define CM_MODEL_H

#include <cjson/cJSON.h>

#include "clock.h"
#include "error.h"
#include "store.h"
#include "strbuf.h"

typedef enum {
    CM_KIND_ORGANIZATION,
    CM_KIND_PROVIDER,
    CM_KIND_PATIENT,
    CM_KIND_PARTNERSHIP,
    CM_KIND_CONSENT,
    CM_KIND_CARE_TEAM,
    CM_KIND_TASK,
    CM_KIND_IMMUNIZATION,
    CM_KIND__COUNT
} cm_kind;

typedef struct cm_model cm_model;

/* A model over store (borrowed) stamping records with clock (borrowed). NULL on OOM. */
cm_model *cm_model_new(cm_store *store, const cm_clock *clock);
void cm_model_destroy(cm_model **model_p);
/* The store and clock the model was made with (borrowed). */
cm_store *cm_model_store(cm_model *model);
const cm_clock *cm_model_clock(cm_model *model);

/* "organization", "provider", "patient", "partnership", "consent", "care_team", "task",
** "immunization". */
const char *cm_kind_name(cm_kind kind);
/* The patient a record of kind is about, for the audit trail: a patient's
** own id, the "patient" of the other kinds that name one; NULL for
** organizations, providers and partnerships, and when doc names none
** (borrowed from doc). kind < 0: the doc's "patient" (an instance). */
const char *cm_model_record_patient(int kind, const cJSON *doc);
/* Do records of kind name a patient (patients, consents, care teams, tasks,
** immunizations)? */
bool cm_kind_names_patient(int kind);
/* The data classes an audit entry names for a record of kind: for a patient
** "demographics" with ",contact" and ",conditions" when doc has them (written
** in buf), "consent", "care_team", "tasks", "immunizations"; "workflow" for
** kind < 0 (an instance). */
const char *cm_model_record_classes(int kind, const cJSON *doc, char *buf, size_t bufsz);
/* Kind by name; -1 if unknown. */
int cm_kind_parse(const char *name);
/* NULL-terminated list of the keys cm_model_find accepts for kind. */
const char *const *cm_model_find_keys(cm_kind kind);
/* NULL-terminated list of the values find key `key` of kind may take; NULL
** when it is not a field of fixed values (or not a find key). */
const char *const *cm_model_find_values(cm_kind kind, const char *key);

/* Validate doc and insert it. doc must carry "id". On success *out (if not
** NULL) receives the stored record with "meta" (caller frees with cJSON_Delete).
** Errors: CM_EINVAL (validation, message names the field), CM_EEXISTS
** (duplicate id), CM_EREF (a referenced record does not exist), CM_EDB. */
int cm_model_create(cm_model *model, cm_kind kind, const cJSON *doc, cJSON **out, cm_err *err);

/* The record with id, with "meta" {versionId, created, lastUpdated}. CM_ENOTFOUND if none. */
int cm_model_get(cm_model *model, cm_kind kind, const char *id, cJSON **out, cm_err *err);

/* Apply patch (JSON merge patch, RFC 7386: null removes a field) to record id,
** validate the result as a whole and store it as the next version. "id" may
** appear only with the same value; "meta" is ignored. Same errors as create,
** plus CM_ENOTFOUND, and CM_ESTATE for a task already completed or cancelled
** (nothing is changed). */
int cm_model_update(cm_model *model, cm_kind kind, const char *id, const cJSON *patch, cJSON **out,
                    cm_err *err);

/* Records of kind matching every key/value of filter (an object of find keys to
** strings; NULL or {} lists all), ordered by id, ids > after (NULL for the
** start), at most limit (1..1000). *out receives a JSON array. Unknown filter
** keys are CM_EINVAL naming the key and the keys allowed. */
int cm_model_find(cm_model *model, cm_kind kind, const cJSON *filter, const char *after, int limit,
                  cJSON **out, cm_err *err);

/* Number of records of kind (for summaries). */
int cm_model_count(cm_model *model, cm_kind kind, long *out, cm_err *err);

/* ---- documents that hold patient data, and their memory ---- */

/* Print doc unformatted into b, emptied first, growing b as needed (b->wipe,
** set by its owner, wipes the blocks it leaves): none of the blocks a
** cJSON print would grow and free unwiped. 0, or CM_ENOMEM (b->oom). The
** owner empties b with cm_buf_wipe once the text is used. */
int cm_model_print(const cJSON *doc, cm_buf *b);

/* cJSON_Delete(doc) after its strings and numbers are zeroed (not those of
** references, which it does not own). NULL is fine. */
void cm_model_doc_free(cJSON *doc);

/* Is every number in doc finite? cJSON reads a number past a double's
** range (1e999) as infinity, which it prints as null and Lua sees as inf.
** 0 if so (NULL too); otherwise CM_EINVAL naming the first that is not by
** its path after root ("payload.a[2]: number out of range ..."; root ""
** starts the path at the member's name). Any thread. */
int cm_model_doc_finite(const cJSON *doc, const char *root, cm_err *err);
/* For text that the JSON scanner (text.h) refused: CM_EINVAL naming the
** number as cm_model_doc_finite does when cJSON reads the text and a
** number in it is out of range; 0 when the text's fault is another. */
int cm_model_text_finite(const char *text, size_t len, const char *root, cm_err *err);

#endif
