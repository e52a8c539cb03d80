/*
** token.h -- bearer tokens for the HTTP API. A token is "cmt_" + a public id
** (16 hex) + "_" + a secret (64 hex, 256 random bits from libsodium). Only
** BLAKE2b-256 of the secret is stored (table api_token); a presented token
** is checked by its id and a constant-time comparison of the hash. Scopes
** are ordered: read < write < admin. The text is shown once, at creation,
** and never logged. Depends on store, clock, libsodium, cJSON. Loop thread
** (the CLI uses it from its own process; SQLite serializes the writers).
*/
#ifndef CM_TOKEN_H
#define CM_TOKEN_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "clock.h"
#include "error.h"
#include "store.h"

typedef enum { CM_SCOPE_READ = 1, CM_SCOPE_WRITE = 2, CM_SCOPE_ADMIN = 3 } cm_scope;

#define CM_TOKEN_TEXT_LEN 85 /* "cmt_" 16 "_" 64 */
#define CM_TOKEN_NAME_MAX 64

/* "read|write|admin" -> scope; -1 if unknown. */
int cm_scope_parse(const char *s);
const char *cm_scope_name(cm_scope scope);

typedef struct cm_token_info {
    char id[17];
    char name[CM_TOKEN_NAME_MAX + 1]; /* "" when it has none */
    cm_scope scope;
    char actor[CM_TOKEN_NAME_MAX + 8]; /* "token:NAME", or "token:ID" without a name */
} cm_token_info;

/* Make a token with scope and an optional unique name (1..64 of letters,
** digits, . _ : -). text (CM_TOKEN_TEXT_LEN + 1 bytes) receives the token to
** show once. CM_EINVAL (bad name), CM_EEXISTS (name taken), CM_EDB. */
int cm_token_create(cm_store *store, const cm_clock *clock, cm_scope scope, const char *name,
                    char *text, cm_token_info *info, cm_err *err);

/* Check a presented token. 0 and *info when it is one of ours and not
** revoked; CM_EPERM otherwise (the message never repeats the text). */
int cm_token_check(cm_store *store, const char *text, cm_token_info *info, cm_err *err);

/* Every token as [{id, name, scope, created, revoked}] (no hashes). */
int cm_token_list(cm_store *store, cJSON **out, cm_err *err);

/* Revoke the token with this id or name. CM_ENOTFOUND if none is active. */
int cm_token_revoke(cm_store *store, const cm_clock *clock, const char *id_or_name, cm_err *err);

/* Tokens not revoked. */
int cm_token_count_active(cm_store *store, long *n, cm_err *err);

#endif
