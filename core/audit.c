/*
** audit.c -- the hash-chained audit trail (see audit.h).
**
** hash(n) = BLAKE2b-256(hash(n-1) || u64 seq || for each field: u32 length,
** bytes), over at, actor, action, patient, classes, purpose, outcome, detail.
** Rows are numbered without gaps from 1; the meta key "audit_head" keeps
** "SEQ" of the last row, so a truncated tail is caught too.
*/
#include "audit.h"

#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_LEN     crypto_generichash_BYTES /* 32 */
#define AUDIT_NFIELD 8

static void absorb(crypto_generichash_state *h, const char *s)
{
    size_t n = strlen(s);
    unsigned char len[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
                            (unsigned char)(n >> 8), (unsigned char)n};
    crypto_generichash_update(h, len, sizeof(len));
    crypto_generichash_update(h, (const unsigned char *)s, n);
}

/* The hash of row seq with fields f[AUDIT_NFIELD], chained from prev. */
static void chain(const unsigned char prev[HASH_LEN], long long seq, const char *const *f,
                  unsigned char out[HASH_LEN])
{
    crypto_generichash_state h;
    unsigned char s[8];
    for (int i = 0; i < 8; i++)
        s[i] = (unsigned char)((unsigned long long)seq >> (56 - 8 * i));
    crypto_generichash_init(&h, NULL, 0, HASH_LEN);
    crypto_generichash_update(&h, prev, HASH_LEN);
    crypto_generichash_update(&h, s, sizeof(s));
    for (int i = 0; i < AUDIT_NFIELD; i++)
        absorb(&h, f[i]);
    crypto_generichash_final(&h, out, HASH_LEN);
}

static const char *or_empty(const char *s)
{
    return s ? s : "";
}

/* The last row's seq and hash (seq 0 and zero bytes when empty). */
static int head(cm_store *store, long long *seq, unsigned char hash[HASH_LEN], cm_err *err)
{
    sqlite3_stmt *st =
        cm_store_prepare(store, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", err);
    if (!st)
        return err ? err->code : CM_EDB;
    memset(hash, 0, HASH_LEN);
    *seq = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *seq = sqlite3_column_int64(st, 0);
        if (sqlite3_column_bytes(st, 1) == HASH_LEN)
            memcpy(hash, sqlite3_column_blob(st, 1), HASH_LEN);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : cm_store_error(store, err, "audit head");
}

static int append_row(cm_store *store, const cm_clock *clock, const cm_audit_entry *e, cm_err *err)
{
    char at[CM_TIME_BUFSZ], seqtext[24];
    unsigned char prev[HASH_LEN], hash[HASH_LEN];
    long long seq;
    int rc = head(store, &seq, prev, err);
    if (rc != 0)
        return rc;
    seq++;
    cm_time_format(cm_clock_now_ms(clock), at, sizeof(at));
    const char *f[AUDIT_NFIELD] = {at,
                                   e->actor,
                                   e->action,
                                   or_empty(e->patient),
                                   or_empty(e->classes),
                                   or_empty(e->purpose),
                                   e->outcome,
                                   or_empty(e->detail)};
    chain(prev, seq, f, hash);
    sqlite3_stmt *st = cm_store_prepare(
        store,
        "INSERT INTO audit(seq, at, actor, action, patient, classes, purpose, outcome, detail, "
        "hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        err);
    if (!st)
        return err ? err->code : CM_EDB;
    sqlite3_bind_int64(st, 1, seq);
    for (int i = 0; i < AUDIT_NFIELD; i++)
        sqlite3_bind_text(st, i + 2, f[i], -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 10, hash, HASH_LEN, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return cm_store_error(store, err, "audit entry");
    snprintf(seqtext, sizeof(seqtext), "%lld", seq);
    return cm_store_meta_set(store, "audit_head", seqtext, err);
}

int cm_audit_append(cm_store *store, const cm_clock *clock, const cm_audit_entry *e, cm_err *err)
{
    if (!e || !e->actor || !*e->actor || !e->action || !*e->action || !e->outcome || !*e->outcome)
        return cm_err_set(err, CM_EINVAL, "audit entry: actor, action and outcome are required");
    if (sodium_init() < 0)
        return cm_err_set(err, CM_EIO, "audit: libsodium could not initialize");
    if (cm_store_in_tx(store))
        return append_row(store, clock, e, err);
    int rc = cm_store_begin(store, err);
    if (rc != 0)
        return rc;
    if ((rc = append_row(store, clock, e, err)) != 0) {
        cm_store_rollback(store);
        return rc;
    }
    return cm_store_commit(store, err);
}

int cm_audit_collect(cJSON **list, const cm_audit_entry *e, cm_err *err)
{
    if (!*list && !(*list = cJSON_CreateArray()))
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "actor", or_empty(e->actor)) ||
        !cJSON_AddStringToObject(o, "action", or_empty(e->action)) ||
        !cJSON_AddStringToObject(o, "patient", or_empty(e->patient)) ||
        !cJSON_AddStringToObject(o, "classes", or_empty(e->classes)) ||
        !cJSON_AddStringToObject(o, "purpose", or_empty(e->purpose)) ||
        !cJSON_AddStringToObject(o, "detail", or_empty(e->detail)) ||
        !cJSON_AddItemToArray(*list, o)) {
        cJSON_Delete(o);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    return 0;
}

static const char *text_of(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

int cm_audit_append_again(cm_store *store, const cm_clock *clock, const cJSON *list, int from,
                          const char *why, cm_err *err)
{
    int n = cJSON_GetArraySize(list);
    for (int i = from; i < n; i++) {
        const cJSON *a = cJSON_GetArrayItem(list, i);
        char detail[400];
        snprintf(detail, sizeof(detail), "%s (rolled back: %s)", or_empty(text_of(a, "detail")),
                 why);
        cm_audit_entry e = {text_of(a, "actor"),
                            text_of(a, "action"),
                            text_of(a, "patient"),
                            text_of(a, "classes"),
                            text_of(a, "purpose"),
                            "error",
                            detail};
        int rc = cm_audit_append(store, clock, &e, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The recorded head: how many entries caremesh has written. */
static long long audit_head(cm_store *store)
{
    char *last = cm_store_meta_get(store, "audit_head", NULL);
    long long head = last ? strtoll(last, NULL, 10) : 0;
    free(last);
    return head;
}

/* A read transaction of our own, unless the caller has one open (then its
** snapshot serves). */
static bool read_begin(cm_store *store)
{
    sqlite3 *db = cm_store_db(store);
    return sqlite3_get_autocommit(db) && sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
}

static void read_end(cm_store *store, bool own)
{
    if (own)
        sqlite3_exec(cm_store_db(store), "COMMIT", NULL, NULL, NULL); /* read only */
}

/* Check up to chunk entries from *expect on (at most head), carrying the
** chain in prev. Returns the entries read (chunk: there may be more), or -1
** with err set. */
static long verify_chunk(cm_store *store, long long head, long chunk, long long *expect,
                         unsigned char prev[HASH_LEN], cm_err *err)
{
    unsigned char hash[HASH_LEN];
    sqlite3_stmt *st = NULL;
    long n = 0;
    int rc;
    if (sqlite3_prepare_v2(cm_store_db(store),
                           "SELECT seq, at, actor, action, patient, classes, purpose, outcome, "
                           "detail, hash FROM audit WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq "
                           "LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK) {
        cm_store_error(store, err, "audit");
        return -1;
    }
    sqlite3_bind_int64(st, 1, *expect);
    sqlite3_bind_int64(st, 2, head);
    sqlite3_bind_int64(st, 3, chunk);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        long long seq = sqlite3_column_int64(st, 0);
        const char *f[AUDIT_NFIELD];
        for (int i = 0; i < AUDIT_NFIELD; i++)
            f[i] = or_empty((const char *)sqlite3_column_text(st, i + 1));
        if (seq != *expect) {
            cm_err_set(err, CM_EAUDIT, "audit entry %lld: entries %lld..%lld are missing (deleted)",
                       seq, *expect, seq - 1);
            n = -1;
            break;
        }
        chain(prev, seq, f, hash);
        if (sqlite3_column_bytes(st, 9) != HASH_LEN ||
            sodium_memcmp(hash, sqlite3_column_blob(st, 9), HASH_LEN) != 0) {
            cm_err_set(err, CM_EAUDIT,
                       "audit entry %lld (%s, %s by %s): altered, or the entries before it "
                       "were changed or reordered",
                       seq, f[0], f[2], f[1]);
            n = -1;
            break;
        }
        memcpy(prev, hash, HASH_LEN);
        *expect = seq + 1;
        n++;
    }
    if (n >= 0 && rc != SQLITE_DONE) {
        cm_store_error(store, err, "audit");
        n = -1;
    }
    sqlite3_finalize(st);
    return n;
}

/* Entries after the recorded head, in one snapshot: not written by caremesh. */
static int verify_no_additions(cm_store *store, cm_err *err)
{
    sqlite3_stmt *st = NULL;
    bool own = read_begin(store);
    long long head = audit_head(store), last = 0;
    int rc = 0;
    if (sqlite3_prepare_v2(cm_store_db(store), "SELECT max(seq) FROM audit", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        rc = cm_store_error(store, err, "audit");
    else
        last = sqlite3_column_int64(st, 0); /* NULL (empty) reads as 0 */
    sqlite3_finalize(st);
    read_end(store, own);
    if (rc == 0 && last > head)
        rc = cm_err_set(err, CM_EAUDIT,
                        "audit entries %lld..%lld were not written by caremesh (added)", head + 1,
                        last);
    return rc;
}

int cm_audit_verify_chunked(cm_store *store, long chunk, long *entries, cm_err *err)
{
    unsigned char prev[HASH_LEN] = {0};
    long long expect = 1;
    long total = 0, got;
    *entries = 0;
    if (chunk < 1)
        return cm_err_set(err, CM_EINVAL, "audit verify: chunk must be at least 1");
    if (sodium_init() < 0)
        return cm_err_set(err, CM_EIO, "audit: libsodium could not initialize");
    long long head = audit_head(store); /* entries written later are for the next verify */
    do {
        bool own = read_begin(store);
        got = verify_chunk(store, head, chunk, &expect, prev, err);
        read_end(store, own);
        if (got < 0)
            return err->code;
        total += got;
    } while (got == chunk);
    if (head > expect - 1)
        return cm_err_set(err, CM_EAUDIT,
                          "audit trail ends at entry %lld but %lld were written: entries "
                          "%lld..%lld are missing (deleted)",
                          expect - 1, head, expect, head);
    int rc = verify_no_additions(store, err);
    if (rc == 0)
        *entries = total;
    return rc;
}

int cm_audit_verify(cm_store *store, long *entries, cm_err *err)
{
    return cm_audit_verify_chunked(store, 10000, entries, err);
}
