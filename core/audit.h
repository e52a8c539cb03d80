/*
** audit.h -- the audit trail: one append-only, hash-chained table of who read
** or changed patient data, and of every send and arrival that carried it.
**
** Each entry's hash is BLAKE2b-256 (libsodium) over the previous entry's hash
** and this entry's fields, length-prefixed; the first entry chains from 32 zero
** bytes. cm_audit_verify walks the chain and names the first entry that was
** altered, deleted or reordered. Depends on store, clock, libsodium.
**
** Durable when: an entry is part of the caller's transaction (it commits or
** rolls back with the change it records); outside a transaction
** cm_audit_append commits it on its own.
*/
#ifndef CM_AUDIT_H
#define CM_AUDIT_H

#include <cjson/cJSON.h>

#include "clock.h"
#include "error.h"
#include "store.h"

/* One entry. Every field is text; NULL and "" are stored as "". */
typedef struct cm_audit_entry {
    const char *actor;   /* "token:ID", "instance:ID", "peer:NODE", "plugin:NAME", "cli" */
    const char *action;  /* "patient.read", "patient.write", "message.send", "message.refused",
                         ** "message.receive", ... */
    const char *patient; /* the patient whose data it was, or "" */
    const char *classes; /* data classes, comma-separated ("demographics,contact"), or "" */
    const char *purpose; /* "referral", "immunization", ... or "" */
    const char *outcome; /* "ok" | "refused" | "error" */
    const char *detail;  /* a short reason or reference; never a secret or the data itself */
} cm_audit_entry;

/* Append e with the time of clock (NULL: the system clock). In the caller's
** transaction when one is open, else in one of its own. CM_EINVAL when actor,
** action or outcome is missing. */
int cm_audit_append(cm_store *store, const cm_clock *clock, const cm_audit_entry *e, cm_err *err);

/* Add a copy of e, without its outcome, to the array *list (created when
** NULL; the caller frees it) as an object {actor, action, patient, classes,
** purpose, detail}: an entry written in a transaction that may be rolled
** back, kept to be written again (cm_audit_append_again). CM_ENOMEM. */
int cm_audit_collect(cJSON **list, const cm_audit_entry *e, cm_err *err);

/* Write again the entries list[from..] (cm_audit_collect's), whose writes a
** rollback undid, with outcome "error" and detail "DETAIL (rolled back:
** why)": what they read reached the reader all the same. Stops at the first
** that cannot be written, with its error. */
int cm_audit_append_again(cm_store *store, const cm_clock *clock, const cJSON *list, int from,
                          const char *why, cm_err *err);

/* Check the whole chain. 0 when intact (*entries receives the count); CM_EAUDIT
** with err naming the first bad entry by seq and what is wrong with it
** (altered, missing before it, out of order). */
int cm_audit_verify(cm_store *store, long *entries, cm_err *err);

/* cm_audit_verify, reading chunk entries per read transaction (unless the
** caller has one open), so a long verify holds no snapshot that keeps the
** WAL from being checkpointed. The entries written when it starts are
** checked; any entry past the recorded head when it ends is "added". */
int cm_audit_verify_chunked(cm_store *store, long chunk, long *entries, cm_err *err);

#endif
