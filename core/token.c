/*
** token.c -- API bearer tokens: made from libsodium randomness, kept as
** BLAKE2b-256 hashes, checked in constant time. See token.h.
*/
#include "token.h"

#include "text.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define ID_BYTES     8
#define SECRET_BYTES 32
#define HASH_LEN     crypto_generichash_BYTES

static const char *const scope_names[] = {NULL, "read", "write", "admin"};

int cm_scope_parse(const char *s)
{
    for (int i = CM_SCOPE_READ; s && i <= CM_SCOPE_ADMIN; i++)
        if (strcmp(s, scope_names[i]) == 0)
            return i;
    return -1;
}

const char *cm_scope_name(cm_scope scope)
{
    return scope >= CM_SCOPE_READ && scope <= CM_SCOPE_ADMIN ? scope_names[scope] : "?";
}

static void hash_secret(const char *secret, size_t len, unsigned char out[HASH_LEN])
{
    crypto_generichash(out, HASH_LEN, (const unsigned char *)secret, len, NULL, 0);
}

static void fill_actor(cm_token_info *info)
{
    snprintf(info->actor, sizeof(info->actor), "token:%s", info->name[0] ? info->name : info->id);
}

static int check_name(const char *name, cm_err *err)
{
    if (!name)
        return 0;
    if (strlen(name) > CM_TOKEN_NAME_MAX || cm_id_check(name) != 0)
        return cm_err_set(err, CM_EINVAL,
                          "token name: use 1 to %d letters, digits, . _ : - (got \"%.64s\")",
                          CM_TOKEN_NAME_MAX, name);
    return 0;
}

int cm_token_create(cm_store *store, const cm_clock *clock, cm_scope scope, const char *name,
                    char *text, cm_token_info *info, cm_err *err)
{
    unsigned char idb[ID_BYTES], secret[SECRET_BYTES], hash[HASH_LEN];
    char id[ID_BYTES * 2 + 1], sec[SECRET_BYTES * 2 + 1], at[CM_TIME_BUFSZ];
    int rc;
    if (scope < CM_SCOPE_READ || scope > CM_SCOPE_ADMIN)
        return cm_err_set(err, CM_EINVAL, "token scope: must be read, write or admin");
    if ((rc = check_name(name, err)) != 0)
        return rc;
    if (sodium_init() < 0)
        return cm_err_set(err, CM_EIO, "token: libsodium could not initialize");
    randombytes_buf(idb, sizeof(idb));
    randombytes_buf(secret, sizeof(secret));
    sodium_bin2hex(id, sizeof(id), idb, sizeof(idb));
    sodium_bin2hex(sec, sizeof(sec), secret, sizeof(secret));
    hash_secret(sec, strlen(sec), hash);
    cm_time_format(cm_clock_now_ms(clock), at, sizeof(at));
    sqlite3_stmt *st = cm_store_prepare(
        store, "INSERT INTO api_token(id, name, scope, hash, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        err);
    if (!st) {
        rc = err ? err->code : CM_EDB;
        goto done;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (name)
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, scope_names[scope], -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, hash, HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, at, -1, SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : cm_store_error(store, err, "api_token");
    sqlite3_reset(st);
    if (rc == CM_EEXISTS) {
        rc = cm_err_set(err, CM_EEXISTS, "a token named \"%s\" exists already", name);
        goto done;
    }
    if (rc != 0)
        goto done;
    snprintf(text, CM_TOKEN_TEXT_LEN + 1, "cmt_%s_%s", id, sec);
    memset(info, 0, sizeof(*info));
    snprintf(info->id, sizeof(info->id), "%s", id);
    snprintf(info->name, sizeof(info->name), "%s", name ? name : "");
    info->scope = scope;
    fill_actor(info);
done:
    sodium_memzero(secret, sizeof(secret));
    sodium_memzero(sec, sizeof(sec));
    return rc;
}

static bool all_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

int cm_token_check(cm_store *store, const char *text, cm_token_info *info, cm_err *err)
{
    unsigned char hash[HASH_LEN];
    char id[ID_BYTES * 2 + 1];
    int rc = CM_EPERM;
    memset(info, 0, sizeof(*info));
    if (!text || strlen(text) != CM_TOKEN_TEXT_LEN || strncmp(text, "cmt_", 4) != 0 ||
        text[4 + 16] != '_' || !all_hex(text + 4, 16) || !all_hex(text + 21, 64))
        return cm_err_set(err, CM_EPERM, "the token is not a caremesh API token");
    memcpy(id, text + 4, 16);
    id[16] = '\0';
    sqlite3_stmt *st = cm_store_prepare(
        store, "SELECT name, scope, hash, revoked FROM api_token WHERE id = ?1", err);
    if (!st)
        return err ? err->code : CM_EDB;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        hash_secret(text + 21, 64, hash);
        bool match = sqlite3_column_bytes(st, 2) == HASH_LEN &&
                     sodium_memcmp(hash, sqlite3_column_blob(st, 2), HASH_LEN) == 0;
        if (!match)
            rc = cm_err_set(err, CM_EPERM, "the token is not valid");
        else if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            rc = cm_err_set(err, CM_EPERM, "the token was revoked");
        else {
            const char *name = (const char *)sqlite3_column_text(st, 0);
            snprintf(info->id, sizeof(info->id), "%s", id);
            snprintf(info->name, sizeof(info->name), "%s", name ? name : "");
            info->scope = (cm_scope)cm_scope_parse((const char *)sqlite3_column_text(st, 1));
            fill_actor(info);
            rc = 0;
        }
    } else if (s == SQLITE_DONE) {
        rc = cm_err_set(err, CM_EPERM, "the token is not valid");
    } else {
        rc = cm_store_error(store, err, "api_token");
    }
    sqlite3_reset(st);
    return rc;
}

int cm_token_list(cm_store *store, cJSON **out, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(
        store, "SELECT id, name, scope, created, revoked FROM api_token ORDER BY created, id", err);
    static const char *const cols[] = {"id", "name", "scope", "created", "revoked"};
    int s;
    *out = NULL;
    if (!st)
        return err ? err->code : CM_EDB;
    cJSON *arr = cJSON_CreateArray();
    while (arr && (s = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *row = cJSON_CreateObject();
        if (!row || !cJSON_AddItemToArray(arr, row))
            goto oom;
        for (int c = 0; c < 5; c++) {
            const char *v = (const char *)sqlite3_column_text(st, c);
            if (!(v ? cJSON_AddStringToObject(row, cols[c], v)
                    : cJSON_AddNullToObject(row, cols[c])))
                goto oom;
        }
    }
    if (!arr)
        goto oom;
    sqlite3_reset(st);
    if (s != SQLITE_DONE) {
        cJSON_Delete(arr);
        return cm_store_error(store, err, "api_token");
    }
    *out = arr;
    return 0;
oom:
    sqlite3_reset(st);
    cJSON_Delete(arr);
    return cm_err_set(err, CM_ENOMEM, "out of memory");
}

int cm_token_revoke(cm_store *store, const cm_clock *clock, const char *id_or_name, cm_err *err)
{
    char at[CM_TIME_BUFSZ];
    cm_time_format(cm_clock_now_ms(clock), at, sizeof(at));
    sqlite3_stmt *st = cm_store_prepare(store,
                                        "UPDATE api_token SET revoked = ?2 WHERE (id = ?1 OR "
                                        "name = ?1) AND revoked IS NULL",
                                        err);
    if (!st)
        return err ? err->code : CM_EDB;
    sqlite3_bind_text(st, 1, id_or_name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, at, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : cm_store_error(store, err, "api_token");
    sqlite3_reset(st);
    if (rc == 0 && sqlite3_changes(cm_store_db(store)) == 0)
        rc = cm_err_set(err, CM_ENOTFOUND, "no active token with id or name \"%.64s\"", id_or_name);
    return rc;
}

int cm_token_count_active(cm_store *store, long *n, cm_err *err)
{
    sqlite3_stmt *st =
        cm_store_prepare(store, "SELECT count(*) FROM api_token WHERE revoked IS NULL", err);
    *n = 0;
    if (!st)
        return err ? err->code : CM_EDB;
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : cm_store_error(store, err, "api_token");
    if (rc == 0)
        *n = (long)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc;
}
