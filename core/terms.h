/*
** terms.h -- partnership terms and patient consent: may organization FROM
** send organization TO data of these classes for this purpose, about this
** patient? The one check both sides of a federation link make: the sender
** before a message leaves, the receiver when it arrives.
**
** A send is allowed when an active partnership has both organizations as
** members and one of its terms lets TO (the receiver) get every class the
** message carries for the purpose; and when the patient (if any) has not
** denied consent for that purpose to TO. A consent naming TO outranks one
** for all partners; among equals the latest recorded wins; no consent means
** permit (opt-out). Depends on model, cJSON.
*/
#ifndef CM_TERMS_H
#define CM_TERMS_H

#include <cjson/cJSON.h>

#include "error.h"
#include "model.h"

/* Data classes as bits (docs/records.md, partnership.terms[].classes). */
enum {
    CM_CLASS_DEMOGRAPHICS = 1u << 0,
    CM_CLASS_CONTACT = 1u << 1,
    CM_CLASS_CONDITIONS = 1u << 2,
    CM_CLASS_MEDICATIONS = 1u << 3,
    CM_CLASS_IMMUNIZATIONS = 1u << 4,
    CM_CLASS_NOTES = 1u << 5,
};

/* The bit of class name; 0 when it is not a data class. */
unsigned cm_class_bit(const char *name);

/* "demographics,contact" for mask, into buf. */
const char *cm_class_list(unsigned mask, char *buf, size_t bufsz);

/* Parse a JSON array of class names into *mask. CM_EINVAL names the bad item
** (what: "send.classes"). NULL or an empty array is 0. */
int cm_class_parse(const cJSON *arr, const char *what, unsigned *mask, cm_err *err);

typedef struct cm_terms_req {
    const char *from;    /* sending organization */
    const char *to;      /* receiving organization */
    const char *purpose; /* "referral", "immunization", ... */
    const char *patient; /* whose data it is, or NULL */
    unsigned need;       /* classes the message must carry (all or refused) */
    unsigned want;       /* classes it would carry if allowed (the rest is left out) */
    const char *today;   /* "YYYY-MM-DD": partnerships and consents in force */
} cm_terms_req;

/* 0 when allowed: *allowed receives the classes TO may get (need | the allowed
** part of want) and partnership (if not NULL, 129 bytes) the partnership's id.
** CM_EPERM when refused, err saying why in words an operator can act on;
** other codes for a failing store. */
int cm_terms_check(cm_model *model, const cm_terms_req *req, unsigned *allowed, char *partnership,
                   cm_err *err);

/* A copy of patient record rec with only the fields of classes in mask (and
** its id); NULL when out of memory. */
cJSON *cm_terms_filter_patient(const cJSON *rec, unsigned mask);

/* The classes of the fields a patient record carries (id and meta carry none). */
unsigned cm_terms_patient_classes(const cJSON *rec);

#endif
