/*
** model.c -- the care primitives as declarative schemas: one table of field
** descriptors per kind drives validation, defaults, references, the search
** index and find. Uses store.h (SQLite), clock.h and cJSON; see model.h.
*/
#include "model.h"

#include "text.h"
#include "valuesets.h"

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ID_MAX           128  /* longest id, bytes */
#define STRING_MAX       1024 /* longest short string, bytes */
#define TEXT_MAX         8192 /* longest free text (notes, descriptions), bytes */
#define ITEMS_MAX        1000 /* most items in any array */
#define FIND_LIMIT_MAX   1000
#define FIND_FILTERS_MAX 16
#define PATH_BUFSZ       256
#define SEGMENT_MAX      64 /* longest field name shown in a path */
#define SHOW_MAX         80 /* longest user value quoted in a message */
#define SHOW_BUFSZ       (SHOW_MAX + 8)
#define LIST_BUFSZ       512

struct cm_model {
    cm_store *store;       /* borrowed */
    const cm_clock *clock; /* borrowed */
    cm_buf text;           /* a record's text being stored (wiped after: patient data) */
};

/* ---- the schema language ---- */

typedef enum {
    T_ID,       /* 1..128 of [A-Za-z0-9._:-] */
    T_STRING,   /* non-blank single-line text */
    T_TEXT,     /* non-blank text, newlines and tabs allowed */
    T_KEY,      /* identifier-like name */
    T_EMAIL,    /* name@domain */
    T_PHONE,    /* digits, spaces, + - ( ) . with >= 7 digits */
    T_LANG,     /* BCP 47-ish language tag */
    T_DATE,     /* YYYY-MM-DD */
    T_DATETIME, /* date or ISO 8601 date-time with zone */
    T_ENUM,     /* one of values */
    T_REF,      /* id of an existing record of kind ref */
    T_BOOL,
    T_NUMBER,
    T_OBJECT, /* sub-fields in sub */
    T_ARRAY,  /* items described by item */
} ftype;

#define F_REQUIRED   1u /* must be present */
#define F_NOT_FUTURE 2u /* T_DATE: not after today (UTC, by the model's clock) */

typedef struct field field;
struct field {
    const char *name;          /* JSON member name; NULL ends a list */
    ftype type;                /* what the value must be */
    unsigned flags;            /* F_* */
    const char *const *values; /* T_ENUM: allowed values, NULL-terminated */
    cm_kind ref;               /* T_REF: kind of the referenced record */
    const field *sub;          /* T_OBJECT: member fields, ended by {.name = NULL} */
    const field *item;         /* T_ARRAY: what each item must be */
    size_t min_items;          /* T_ARRAY: fewest items */
    const char *unique_by;     /* T_ARRAY: "" items unique; "x" object items unique by x */
    const char *not_before;    /* date: sibling field this one may not precede */
    const char *dflt;          /* JSON text stored when the field is absent */
    const char *index;         /* find key this value is indexed under */
};

typedef struct vctx vctx;
/* Cross-field rules of a kind; runs after the fields validated; may fill defaults. */
typedef int (*rule_fn)(vctx *v, cJSON *doc);

typedef struct kind_def {
    const char *name;
    const field *fields;
    const char *const *find_keys; /* NULL-terminated; every one is some field's index */
    rule_fn rule;                 /* NULL when the kind has none */
} kind_def;

static bool key_ok(const char *s);
static bool email_ok(const char *s);
static bool phone_ok(const char *s);
static bool lang_ok(const char *s);
static bool date_ok(const char *s);
static bool datetime_ok(const char *s);

/* What each type needs: JSON shape, longest string, format check. */
static const struct type_info {
    const char *what;              /* as in "expected %s" */
    size_t max_len;                /* string types: longest value in bytes; 0: not a string */
    bool (*format)(const char *s); /* NULL: any text */
    const char *format_msg;        /* follows the quoted value when format fails */
} types[] = {
    [T_ID] = {"a string", ID_MAX, NULL, NULL},
    [T_STRING] = {"a string", STRING_MAX, NULL, NULL},
    [T_TEXT] = {"a string", TEXT_MAX, NULL, NULL},
    [T_KEY] = {"a string", 64, key_ok,
               "is not a name (letters, digits, '_', '.', '-', starting with a letter or '_')"},
    [T_EMAIL] = {"a string", 254, email_ok, "is not an email address (expected name@domain)"},
    [T_PHONE] = {"a string", 40, phone_ok,
                 "is not a phone number (digits, spaces and + - ( ) . with at least 7 digits)"},
    [T_LANG] = {"a string", 35, lang_ok,
                "is not a language tag (BCP 47, like \"en\" or \"es-MX\")"},
    [T_DATE] = {"a string", STRING_MAX, date_ok, "is not a valid date (YYYY-MM-DD)"},
    [T_DATETIME] = {"a string", STRING_MAX, datetime_ok,
                    "is not a valid date or date-time (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with "
                    "Z or an offset)"},
    [T_ENUM] = {"a string", STRING_MAX, NULL, NULL},
    [T_REF] = {"a string", ID_MAX, NULL, NULL},
    [T_BOOL] = {"true or false", 0, NULL, NULL},
    [T_NUMBER] = {"a number", 0, NULL, NULL},
    [T_OBJECT] = {"an object", 0, NULL, NULL},
    [T_ARRAY] = {"an array", 0, NULL, NULL},
};

/* ---- shared shapes ---- */

/* Two fields most kinds have: a required reference to a record of kind, and
** a required value from a set; each searchable by key. */
#define REQUIRED_REF(field_name, kind, key)                                                        \
    {                                                                                              \
        .name = field_name, .type = T_REF, .flags = F_REQUIRED, .ref = kind, .index = key          \
    }
#define REQUIRED_ENUM(field_name, set, key)                                                        \
    {                                                                                              \
        .name = field_name, .type = T_ENUM, .flags = F_REQUIRED, .values = set, .index = key       \
    }

static const field string_item = {.name = "item", .type = T_STRING};

static const field human_name[] = {
    {.name = "family", .type = T_STRING, .flags = F_REQUIRED},
    {.name = "given", .type = T_ARRAY, .item = &string_item},
    {.name = "prefix", .type = T_ARRAY, .item = &string_item},
    {.name = "text", .type = T_STRING},
    {.name = NULL},
};

static const field address[] = {
    {.name = "line", .type = T_ARRAY, .item = &string_item},
    {.name = "city", .type = T_STRING},
    {.name = "state", .type = T_STRING},
    {.name = "postalCode", .type = T_STRING},
    {.name = "country", .type = T_STRING},
    {.name = NULL},
};

/* ---- organization, provider ---- */

static const field organization_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    {.name = "name", .type = T_STRING, .flags = F_REQUIRED},
    REQUIRED_ENUM("kind", cm_values_organization_kinds, "kind"),
    {.name = "node", .type = T_STRING, .index = "node"},
    {.name = "active", .type = T_BOOL, .dflt = "true"},
    {.name = "phone", .type = T_PHONE},
    {.name = "email", .type = T_EMAIL},
    {.name = "address", .type = T_OBJECT, .sub = address},
    {.name = NULL},
};
static const char *const organization_keys[] = {"kind", "node", NULL};

static const field provider_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    {.name = "name", .type = T_OBJECT, .flags = F_REQUIRED, .sub = human_name},
    REQUIRED_ENUM("role", cm_values_provider_roles, "role"),
    REQUIRED_REF("organization", CM_KIND_ORGANIZATION, "organization"),
    {.name = "specialty", .type = T_STRING},
    {.name = "phone", .type = T_PHONE},
    {.name = "email", .type = T_EMAIL},
    {.name = "active", .type = T_BOOL, .dflt = "true"},
    {.name = NULL},
};
static const char *const provider_keys[] = {"role", "organization", NULL};

/* ---- patient ---- */

static const field condition_fields[] = {
    {.name = "code", .type = T_STRING, .flags = F_REQUIRED, .index = "condition"},
    {.name = "system", .type = T_STRING},
    {.name = "display", .type = T_STRING},
    {.name = NULL},
};
static const field condition_item = {
    .name = "condition", .type = T_OBJECT, .sub = condition_fields};

static const field identifier_fields[] = {
    {.name = "system", .type = T_STRING},
    {.name = "value", .type = T_STRING, .flags = F_REQUIRED, .index = "identifier"},
    {.name = NULL},
};
static const field identifier_item = {
    .name = "identifier", .type = T_OBJECT, .sub = identifier_fields};

static const field patient_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    {.name = "name", .type = T_OBJECT, .flags = F_REQUIRED, .sub = human_name},
    {.name = "birthDate", .type = T_DATE, .flags = F_REQUIRED | F_NOT_FUTURE, .index = "birthDate"},
    REQUIRED_ENUM("gender", cm_values_genders, "gender"),
    {.name = "phone", .type = T_PHONE},
    {.name = "email", .type = T_EMAIL},
    {.name = "address", .type = T_OBJECT, .sub = address},
    {.name = "language", .type = T_LANG, .index = "language"},
    {.name = "preferredChannel",
     .type = T_ENUM,
     .values = cm_values_channels,
     .index = "preferredChannel"},
    {.name = "conditions", .type = T_ARRAY, .item = &condition_item},
    {.name = "identifiers", .type = T_ARRAY, .item = &identifier_item},
    {.name = "generalPractitioner",
     .type = T_REF,
     .ref = CM_KIND_ORGANIZATION,
     .index = "generalPractitioner"},
    {.name = "active", .type = T_BOOL, .dflt = "true"},
    {.name = NULL},
};
static const char *const patient_keys[] = {
    "condition",        "identifier",          "gender",    "language",
    "preferredChannel", "generalPractitioner", "birthDate", NULL};

/* ---- partnership ---- */

static const field member_fields[] = {
    REQUIRED_REF("organization", CM_KIND_ORGANIZATION, "member"),
    {.name = "offers", .type = T_ARRAY, .item = &string_item, .unique_by = ""},
    {.name = "requests", .type = T_ARRAY, .item = &string_item, .unique_by = ""},
    {.name = NULL},
};
static const field member_item = {.name = "member", .type = T_OBJECT, .sub = member_fields};

static const field class_item = {.name = "class", .type = T_ENUM, .values = cm_values_data_classes};
static const field purpose_item = {.name = "purpose", .type = T_ENUM, .values = cm_values_purposes};
static const field term_fields[] = {
    {.name = "receiver", .type = T_REF, .flags = F_REQUIRED, .ref = CM_KIND_ORGANIZATION},
    {.name = "classes",
     .type = T_ARRAY,
     .flags = F_REQUIRED,
     .item = &class_item,
     .min_items = 1,
     .unique_by = ""},
    {.name = "purposes",
     .type = T_ARRAY,
     .flags = F_REQUIRED,
     .item = &purpose_item,
     .min_items = 1,
     .unique_by = ""},
    {.name = NULL},
};
static const field term_item = {.name = "term", .type = T_OBJECT, .sub = term_fields};

static const field champion_fields[] = {
    {.name = "organization", .type = T_REF, .ref = CM_KIND_ORGANIZATION},
    {.name = "champion", .type = T_REF, .flags = F_REQUIRED, .ref = CM_KIND_PROVIDER},
    {.name = "backup", .type = T_REF, .flags = F_REQUIRED, .ref = CM_KIND_PROVIDER},
    {.name = NULL},
};
static const field champion_item = {.name = "champion", .type = T_OBJECT, .sub = champion_fields};

static const field kpi_fields[] = {
    {.name = "name", .type = T_KEY, .flags = F_REQUIRED},
    {.name = "description", .type = T_TEXT},
    {.name = "target", .type = T_NUMBER},
    {.name = "unit", .type = T_STRING},
    {.name = NULL},
};
static const field kpi_item = {.name = "kpi", .type = T_OBJECT, .sub = kpi_fields};

static const field partnership_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    {.name = "name", .type = T_STRING, .flags = F_REQUIRED},
    {.name = "purpose", .type = T_TEXT, .flags = F_REQUIRED},
    {.name = "status",
     .type = T_ENUM,
     .values = cm_values_partnership_statuses,
     .dflt = "\"active\"",
     .index = "status"},
    {.name = "members",
     .type = T_ARRAY,
     .flags = F_REQUIRED,
     .item = &member_item,
     .min_items = 2,
     .unique_by = "organization"},
    {.name = "terms", .type = T_ARRAY, .item = &term_item},
    {.name = "champions", .type = T_ARRAY, .item = &champion_item},
    {.name = "kpis", .type = T_ARRAY, .item = &kpi_item, .unique_by = "name"},
    {.name = "reviewCadence", .type = T_ENUM, .flags = F_REQUIRED, .values = cm_values_cadences},
    {.name = "nextReview", .type = T_DATE},
    {.name = "start", .type = T_DATE},
    {.name = "end", .type = T_DATE, .not_before = "start"},
    {.name = NULL},
};
static const char *const partnership_keys[] = {"member", "status", NULL};

/* ---- consent, care team, task ---- */

static const field period_fields[] = {
    {.name = "start", .type = T_DATE, .flags = F_REQUIRED},
    {.name = "end", .type = T_DATE, .not_before = "start"},
    {.name = NULL},
};

static const field consent_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    REQUIRED_REF("patient", CM_KIND_PATIENT, "patient"),
    REQUIRED_ENUM("purpose", cm_values_purposes, "purpose"),
    {.name = "organization", .type = T_REF, .ref = CM_KIND_ORGANIZATION, .index = "organization"},
    REQUIRED_ENUM("decision", cm_values_decisions, "decision"),
    {.name = "period", .type = T_OBJECT, .sub = period_fields},
    {.name = "status", .type = T_ENUM, .values = cm_values_consent_statuses, .dflt = "\"active\""},
    {.name = "recorded", .type = T_DATETIME},
    {.name = "note", .type = T_TEXT},
    {.name = NULL},
};
static const char *const consent_keys[] = {"patient", "purpose", "organization", "decision", NULL};

static const field participant_fields[] = {
    REQUIRED_REF("member", CM_KIND_PROVIDER, "member"),
    {.name = "role", .type = T_STRING, .flags = F_REQUIRED},
    {.name = "onBehalfOf", .type = T_REF, .ref = CM_KIND_ORGANIZATION},
    {.name = NULL},
};
static const field participant_item = {
    .name = "participant", .type = T_OBJECT, .sub = participant_fields};

static const field care_team_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    REQUIRED_REF("patient", CM_KIND_PATIENT, "patient"),
    {.name = "name", .type = T_STRING},
    {.name = "status",
     .type = T_ENUM,
     .values = cm_values_care_team_statuses,
     .dflt = "\"active\""},
    {.name = "participants",
     .type = T_ARRAY,
     .flags = F_REQUIRED,
     .item = &participant_item,
     .min_items = 1},
    {.name = NULL},
};
static const char *const care_team_keys[] = {"patient", "member", NULL};

static const field task_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    {.name = "title", .type = T_STRING, .flags = F_REQUIRED},
    {.name = "description", .type = T_TEXT},
    {.name = "status",
     .type = T_ENUM,
     .values = cm_values_task_statuses,
     .dflt = "\"requested\"",
     .index = "status"},
    {.name = "priority", .type = T_ENUM, .values = cm_values_priorities, .dflt = "\"routine\""},
    REQUIRED_REF("organization", CM_KIND_ORGANIZATION, "organization"),
    {.name = "patient", .type = T_REF, .ref = CM_KIND_PATIENT, .index = "patient"},
    {.name = "owner", .type = T_REF, .ref = CM_KIND_PROVIDER, .index = "owner"},
    {.name = "ownerRole", .type = T_ENUM, .values = cm_values_provider_roles, .index = "ownerRole"},
    {.name = "due", .type = T_DATETIME},
    {.name = "note", .type = T_TEXT},
    {.name = NULL},
};
static const char *const task_keys[] = {"status", "patient",   "organization",
                                        "owner",  "ownerRole", NULL};

/* immunization (FHIR Immunization): one administered (or not given) dose */

static const field vaccine_fields[] = {
    {.name = "code", .type = T_STRING, .flags = F_REQUIRED, .index = "vaccine"},
    {.name = "system", .type = T_STRING},
    {.name = "display", .type = T_STRING},
    {.name = NULL},
};
static const field immunization_fields[] = {
    {.name = "id", .type = T_ID, .flags = F_REQUIRED},
    {.name = "status",
     .type = T_ENUM,
     .values = cm_values_immunization_statuses,
     .dflt = "\"completed\"",
     .index = "status"},
    REQUIRED_REF("patient", CM_KIND_PATIENT, "patient"),
    {.name = "vaccineCode", .type = T_OBJECT, .flags = F_REQUIRED, .sub = vaccine_fields},
    {.name = "occurrenceDateTime", .type = T_DATETIME, .flags = F_REQUIRED},
    REQUIRED_REF("performer", CM_KIND_ORGANIZATION, "performer"),
    {.name = "practitioner", .type = T_REF, .ref = CM_KIND_PROVIDER},
    {.name = "doseNumber", .type = T_NUMBER},
    {.name = "seriesDoses", .type = T_NUMBER},
    {.name = "series", .type = T_STRING},
    {.name = "lotNumber", .type = T_STRING},
    {.name = "note", .type = T_TEXT},
    {.name = NULL},
};
static const char *const immunization_keys[] = {"patient", "vaccine", "performer", "status", NULL};

static int partnership_rule(vctx *v, cJSON *doc);
static int care_team_rule(vctx *v, cJSON *doc);
static int task_rule(vctx *v, cJSON *doc);

static const kind_def kinds[CM_KIND__COUNT] = {
    [CM_KIND_ORGANIZATION] = {"organization", organization_fields, organization_keys, NULL},
    [CM_KIND_PROVIDER] = {"provider", provider_fields, provider_keys, NULL},
    [CM_KIND_PATIENT] = {"patient", patient_fields, patient_keys, NULL},
    [CM_KIND_PARTNERSHIP] = {"partnership", partnership_fields, partnership_keys, partnership_rule},
    [CM_KIND_CONSENT] = {"consent", consent_fields, consent_keys, NULL},
    [CM_KIND_CARE_TEAM] = {"care_team", care_team_fields, care_team_keys, care_team_rule},
    [CM_KIND_TASK] = {"task", task_fields, task_keys, task_rule},
    [CM_KIND_IMMUNIZATION] = {"immunization", immunization_fields, immunization_keys, NULL},
};

static const kind_def *kind_get(cm_kind kind)
{
    return (unsigned)kind < CM_KIND__COUNT ? &kinds[kind] : NULL;
}

/* ---- small helpers ---- */

/* s quoted for a message: at most SHOW_MAX bytes, control characters as '?'. */
static const char *show(const char *s, char *buf, size_t bufsz)
{
    size_t n = 0, i = 0;
    if (!s)
        s = "";
    buf[n++] = '"';
    for (; s[i] && i < SHOW_MAX && n + 5 < bufsz; i++)
        buf[n++] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
    if (s[i]) { /* cut: drop a partial UTF-8 sequence, mark the cut */
        while (n > 1 && ((unsigned char)buf[n - 1] & 0xc0) == 0x80)
            n--;
        if (n > 1 && (unsigned char)buf[n - 1] >= 0xc0)
            n--;
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return buf;
}

static bool ascii_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool ascii_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    return true;
}

/* ---- formats ---- */

static bool key_ok(const char *s)
{
    if (!ascii_alpha(*s) && *s != '_')
        return false;
    for (s++; *s; s++)
        if (!ascii_alpha(*s) && !ascii_digit(*s) && *s != '_' && *s != '.' && *s != '-')
            return false;
    return true;
}

static bool email_ok(const char *s)
{
    const char *at = strchr(s, '@');
    if (!at || at == s || at[1] == '\0' || strchr(at + 1, '@'))
        return false;
    return strchr(s, ' ') == NULL;
}

static bool phone_ok(const char *s)
{
    size_t digits = 0;
    for (; *s; s++) {
        if (ascii_digit(*s))
            digits++;
        else if (!strchr("+ -().", *s))
            return false;
    }
    return digits >= 7;
}

/* A primary subtag of 2-8 letters, then '-'-separated subtags of 1-8 letters or digits. */
static bool lang_ok(const char *s)
{
    size_t seg = 0, nseg = 0;
    bool letters = true;
    for (;; s++) {
        if (*s == '-' || *s == '\0') {
            if (seg == 0 || seg > 8 || (nseg == 0 && (seg < 2 || !letters)))
                return false;
            if (*s == '\0')
                return true;
            nseg++;
            seg = 0;
            letters = true;
        } else if (ascii_alpha(*s) || ascii_digit(*s)) {
            seg++;
            letters = letters && ascii_alpha(*s);
        } else {
            return false;
        }
    }
}

static bool date_ok(const char *s)
{
    return cm_date_valid(s);
}

static bool datetime_ok(const char *s)
{
    return cm_time_parse(s, NULL);
}

/* ---- paths ("partnership.members[1].organization") ---- */

typedef struct mpath {
    char buf[PATH_BUFSZ];
    size_t len;
} mpath;

static void path_append(mpath *p, const char *text)
{
    size_t room = sizeof(p->buf) - p->len;
    int n = snprintf(p->buf + p->len, room, "%s", text);
    if (n > 0)
        p->len += (size_t)n < room ? (size_t)n : room - 1;
}

/* Append ".name" (just "name" at the start); returns the mark to pop back to. */
static size_t path_field(mpath *p, const char *name)
{
    char seg[SEGMENT_MAX + 2];
    size_t mark = p->len, n = 0;
    if (p->len > 0)
        seg[n++] = '.';
    for (size_t i = 0; name && name[i] && i < SEGMENT_MAX; i++)
        seg[n++] = (unsigned char)name[i] < 0x20 ? '?' : name[i];
    seg[n] = '\0';
    path_append(p, seg);
    return mark;
}

static size_t path_index(mpath *p, size_t i)
{
    char seg[32];
    size_t mark = p->len;
    snprintf(seg, sizeof(seg), "[%zu]", i);
    path_append(p, seg);
    return mark;
}

static void path_pop(mpath *p, size_t mark)
{
    p->len = mark;
    p->buf[mark] = '\0';
}

/* ---- store access ---- */

/* Step a kept statement that returns no rows, then reset it. */
static int step_done(cm_model *m, sqlite3_stmt *st, const char *what, cm_err *err)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : cm_store_error(m->store, err, what);
    sqlite3_reset(st);
    return rc;
}

/* The code of a failed cm_store_prepare (err says why). */
static int prepare_error(const cm_err *err)
{
    return err ? err->code : CM_EDB;
}

/* Run a kept statement (NULL: its preparation failed and err says why). */
static int kept_exec(cm_model *m, sqlite3_stmt *st, const char *what, cm_err *err)
{
    return st ? step_done(m, st, what, err) : prepare_error(err);
}

/* The kept statement sql with ?1 and ?2 bound to a record's kind and id
** (borrowed until it is reset); NULL with err when it cannot be prepared. */
static sqlite3_stmt *prepare_for(cm_model *m, const char *sql, const char *kind, const char *id,
                                 cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(m->store, sql, err);
    if (st) {
        sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    }
    return st;
}

static int record_exists(cm_model *m, const kind_def *k, const char *id, bool *found, cm_err *err)
{
    sqlite3_stmt *st =
        prepare_for(m, "SELECT 1 FROM record WHERE kind = ?1 AND id = ?2", k->name, id, err);
    if (!st)
        return prepare_error(err);
    int rc = sqlite3_step(st);
    *found = rc == SQLITE_ROW;
    rc = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? 0 : cm_store_error(m->store, err, "record");
    sqlite3_reset(st);
    return rc;
}

/* The organization a provider belongs to, into buf ("" if none). */
static int provider_org(cm_model *m, const char *provider, char *buf, size_t bufsz, cm_err *err)
{
    sqlite3_stmt *st = cm_store_prepare(m->store,
                                        "SELECT json_extract(doc, '$.organization') FROM record "
                                        "WHERE kind = 'provider' AND id = ?1",
                                        err);
    if (!st)
        return prepare_error(err);
    sqlite3_bind_text(st, 1, provider, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    const unsigned char *org = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    snprintf(buf, bufsz, "%s", org ? (const char *)org : "");
    rc = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? 0 : cm_store_error(m->store, err, "provider");
    sqlite3_reset(st);
    return rc;
}

/* ---- validation ---- */

struct vctx {
    cm_model *model;
    cm_err *err;
    char today[11]; /* YYYY-MM-DD, UTC */
    mpath path;
};

__attribute__((format(printf, 3, 0))) static int vverr(vctx *v, int code, const char *fmt,
                                                       va_list ap)
{
    char msg[CM_ERR_MSG_MAX];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    return cm_err_set(v->err, code, "%s: %s", v->path.buf, msg);
}

/* An error at the current path. */
__attribute__((format(printf, 3, 4))) static int verr(vctx *v, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vverr(v, code, fmt, ap);
    va_end(ap);
    return rc;
}

/* An error at kind.array[i].name (for the cross-field rules). */
__attribute__((format(printf, 6, 7))) static int
item_err(vctx *v, int code, const char *array, size_t i, const char *name, const char *fmt, ...)
{
    va_list ap;
    size_t mark = path_field(&v->path, array);
    path_index(&v->path, i);
    path_field(&v->path, name);
    va_start(ap, fmt);
    int rc = vverr(v, code, fmt, ap);
    va_end(ap);
    path_pop(&v->path, mark);
    return rc;
}

static const field *field_find(const field *fields, const char *name)
{
    for (const field *f = fields; name && f->name; f++)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

/* Case-insensitive edit distance (names up to SEGMENT_MAX; longer ones are "far"). */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[SEGMENT_MAX + 1];
    if (la > SEGMENT_MAX || lb > SEGMENT_MAX)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            char ca = (char)(a[i - 1] | 0x20), cb = (char)(b[j - 1] | 0x20);
            size_t best = diag + (ca != cb);
            best = row[j] + 1 < best ? row[j] + 1 : best;
            best = row[j - 1] + 1 < best ? row[j - 1] + 1 : best;
            diag = row[j];
            row[j] = best;
        }
    }
    return row[lb];
}

static int unknown_field(vctx *v, const field *fields, const char *name)
{
    const field *best = NULL;
    size_t best_d = SIZE_MAX;
    for (const field *f = fields; name && f->name; f++) {
        size_t d = distance(name, f->name);
        if (d < best_d) {
            best = f;
            best_d = d;
        }
    }
    if (best && best_d <= (strlen(best->name) > 4 ? 2u : 1u))
        return verr(v, CM_EINVAL, "unknown field (did you mean \"%s\"?)", best->name);
    return verr(v, CM_EINVAL, "unknown field");
}

static int check_value(vctx *v, const field *f, cJSON *val);

/* Ids: 1..ID_MAX of [A-Za-z0-9._:-] (the length is checked by check_text). */
static int check_id_chars(vctx *v, const char *s)
{
    char shown[SHOW_BUFSZ], ch[16];
    for (size_t i = 0; s[i]; i++) {
        if (cm_id_char(s[i]))
            continue;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f)
            snprintf(ch, sizeof(ch), "'%c'", c);
        else
            snprintf(ch, sizeof(ch), "byte 0x%02x", c);
        return verr(v, CM_EINVAL,
                    "%s has a character not allowed in ids: %s at position %zu (allowed: "
                    "A-Z a-z 0-9 . _ : -)",
                    show(s, shown, sizeof(shown)), ch, i + 1);
    }
    return 0;
}

/* What every string must be: non-blank, short enough, UTF-8, no control characters. */
static int check_text(vctx *v, const field *f, const char *s)
{
    size_t len = strlen(s), max = types[f->type].max_len;
    if (blank(s))
        return verr(v, CM_EINVAL, "must not be empty");
    if (len > max)
        return verr(v, CM_EINVAL, "too long (%zu bytes, at most %zu)", len, max);
    if (!cm_utf8_valid(s, len))
        return verr(v, CM_EINVAL, "not valid UTF-8");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 && !(f->type == T_TEXT && (c == '\n' || c == '\t' || c == '\r')))
            return verr(v, CM_EINVAL, "contains a control character (0x%02x at byte %zu)", c,
                        i + 1);
    }
    return 0;
}

static int check_enum(vctx *v, const field *f, const char *s)
{
    char shown[SHOW_BUFSZ], list[LIST_BUFSZ];
    if (cm_values_listed(f->values, s))
        return 0;
    return verr(v, CM_EINVAL, "unknown value %s (expected one of: %s)",
                show(s, shown, sizeof(shown)), cm_values_join(f->values, list, sizeof(list)));
}

static int check_ref(vctx *v, const field *f, const char *id)
{
    char shown[SHOW_BUFSZ];
    bool found = false;
    int rc = check_id_chars(v, id);
    if (rc == 0)
        rc = record_exists(v->model, &kinds[f->ref], id, &found, v->err);
    if (rc == 0 && !found)
        rc = verr(v, CM_EREF, "no %s with id %s", kinds[f->ref].name,
                  show(id, shown, sizeof(shown)));
    return rc;
}

static int check_string(vctx *v, const field *f, const char *s)
{
    char shown[SHOW_BUFSZ];
    const struct type_info *t = &types[f->type];
    int rc = check_text(v, f, s);
    if (rc != 0)
        return rc;
    if (t->format && !t->format(s))
        return verr(v, CM_EINVAL, "%s %s", show(s, shown, sizeof(shown)), t->format_msg);
    switch (f->type) {
    case T_ID:
        return check_id_chars(v, s);
    case T_ENUM:
        return check_enum(v, f, s);
    case T_REF:
        return check_ref(v, f, s);
    case T_DATE:
        if ((f->flags & F_NOT_FUTURE) && strcmp(s, v->today) > 0)
            return verr(v, CM_EINVAL, "%s is in the future (today is %s)",
                        show(s, shown, sizeof(shown)), v->today);
        return 0;
    default:
        return 0;
    }
}

/* The value an item is unique by (NULL if it has none). */
static const char *unique_key(const field *f, const cJSON *item)
{
    const cJSON *k = *f->unique_by ? cJSON_GetObjectItemCaseSensitive(item, f->unique_by) : item;
    return cJSON_GetStringValue(k);
}

static int check_unique(vctx *v, const field *f, const cJSON *arr, const cJSON *item)
{
    char shown[SHOW_BUFSZ];
    const char *key = unique_key(f, item);
    size_t j = 0;
    for (const cJSON *p = arr->child; key && p != item; p = p->next, j++) {
        const char *other = unique_key(f, p);
        if (!other || strcmp(other, key) != 0)
            continue;
        size_t mark = *f->unique_by ? path_field(&v->path, f->unique_by) : v->path.len;
        int rc = verr(v, CM_EINVAL, "%s is listed twice (also at %s[%zu])",
                      show(key, shown, sizeof(shown)), f->name, j);
        path_pop(&v->path, mark);
        return rc;
    }
    return 0;
}

static int check_array(vctx *v, const field *f, cJSON *arr)
{
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    if (n < f->min_items)
        return verr(v, CM_EINVAL, "needs at least %zu item%s, got %zu", f->min_items,
                    f->min_items == 1 ? "" : "s", n);
    if (n > ITEMS_MAX)
        return verr(v, CM_EINVAL, "too many items (%zu, at most %d)", n, ITEMS_MAX);
    for (cJSON *it = arr->child; it; it = it->next, i++) {
        size_t mark = path_index(&v->path, i);
        int rc = check_value(v, f->item, it);
        if (rc == 0 && f->unique_by)
            rc = check_unique(v, f, arr, it);
        path_pop(&v->path, mark);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int add_default(vctx *v, const field *f, cJSON *obj)
{
    cJSON *d = cJSON_Parse(f->dflt);
    if (d && cJSON_AddItemToObject(obj, f->name, d))
        return 0;
    cJSON_Delete(d);
    return verr(v, CM_ENOMEM, "out of memory filling in the default");
}

/* f (present, a valid date) must not precede its sibling f->not_before. */
static int check_not_before(vctx *v, const field *f, const cJSON *obj, const cJSON *val)
{
    char shown[SHOW_BUFSZ], other_shown[SHOW_BUFSZ];
    const char *other = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, f->not_before));
    int64_t a, b;
    if (!other || !cm_time_parse(val->valuestring, &a) || !cm_time_parse(other, &b) || a >= b)
        return 0;
    return verr(v, CM_EINVAL, "%s is before %s %s", show(val->valuestring, shown, sizeof(shown)),
                f->not_before, show(other, other_shown, sizeof(other_shown)));
}

/* After the members: fill defaults, require what is required, order dates. */
static int complete_object(vctx *v, const field *fields, cJSON *obj)
{
    for (const field *f = fields; f->name; f++) {
        cJSON *m = cJSON_GetObjectItemCaseSensitive(obj, f->name);
        size_t mark = path_field(&v->path, f->name);
        int rc = 0;
        if (!m && f->dflt)
            rc = add_default(v, f, obj);
        else if (!m && (f->flags & F_REQUIRED))
            rc = verr(v, CM_EINVAL, "required");
        else if (m && f->not_before)
            rc = check_not_before(v, f, obj, m);
        path_pop(&v->path, mark);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static bool key_seen_before(const cJSON *obj, const cJSON *m)
{
    for (const cJSON *p = obj->child; p != m; p = p->next)
        if (p->string && m->string && strcmp(p->string, m->string) == 0)
            return true;
    return false;
}

/* Members in document order (the first problem wins), then what is missing. */
static int check_object(vctx *v, const field *fields, cJSON *obj)
{
    int rc = 0;
    for (cJSON *m = obj->child; m && rc == 0; m = m->next) {
        size_t mark = path_field(&v->path, m->string);
        const field *f = field_find(fields, m->string);
        if (!f)
            rc = unknown_field(v, fields, m->string);
        else if (key_seen_before(obj, m))
            rc = verr(v, CM_EINVAL, "given twice");
        else
            rc = check_value(v, f, m);
        path_pop(&v->path, mark);
    }
    return rc != 0 ? rc : complete_object(v, fields, obj);
}

/* Lua cannot tell {} from []: an empty container takes the shape the schema expects. */
static void normalize_empty(cJSON *val, ftype want)
{
    if ((cJSON_IsObject(val) || cJSON_IsArray(val)) && !val->child)
        val->type = (val->type & ~0xff) | (want == T_ARRAY ? cJSON_Array : cJSON_Object);
}

static bool has_shape(ftype t, const cJSON *val)
{
    switch (t) {
    case T_BOOL:
        return cJSON_IsBool(val);
    case T_NUMBER:
        return cJSON_IsNumber(val);
    case T_OBJECT:
        return cJSON_IsObject(val);
    case T_ARRAY:
        return cJSON_IsArray(val);
    default:
        return cJSON_IsString(val) && val->valuestring;
    }
}

static int check_value(vctx *v, const field *f, cJSON *val)
{
    if (f->type == T_OBJECT || f->type == T_ARRAY)
        normalize_empty(val, f->type);
    if (!has_shape(f->type, val))
        return verr(v, CM_EINVAL, "expected %s, got %s", types[f->type].what,
                    cm_values_type_name(val));
    switch (f->type) {
    case T_OBJECT:
        return check_object(v, f->sub, val);
    case T_ARRAY:
        return check_array(v, f, val);
    case T_BOOL:
        return 0;
    case T_NUMBER:
        return isfinite(val->valuedouble) ? 0 : verr(v, CM_EINVAL, "not a finite number");
    default:
        return check_string(v, f, val->valuestring);
    }
}

/* Validate doc (mutable: defaults are filled in, {} becomes []) as a record of kind k. */
static int validate(cm_model *m, const kind_def *k, cJSON *doc, cm_err *err)
{
    vctx v = {.model = m, .err = err};
    char now[CM_TIME_BUFSZ];
    cm_time_format(cm_clock_now_ms(m->clock), now, sizeof(now));
    memcpy(v.today, now, 10);
    v.today[10] = '\0';
    path_field(&v.path, k->name);
    int rc = check_object(&v, k->fields, doc);
    if (rc == 0 && k->rule)
        rc = k->rule(&v, doc);
    return rc;
}

/* ---- cross-field rules ---- */

static const char *str_member(const cJSON *obj, const char *name)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, name));
}

static bool is_member(const cJSON *members, const char *org)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, members)
    {
        const char *o = str_member(m, "organization");
        if (o && org && strcmp(o, org) == 0)
            return true;
    }
    return false;
}

/* The provider named in champions[i].role, of organization porg, must belong to org. */
static int check_belongs(vctx *v, size_t i, const char *role, const char *provider,
                         const char *porg, const char *org)
{
    char s1[SHOW_BUFSZ], s2[SHOW_BUFSZ], s3[SHOW_BUFSZ];
    if (strcmp(porg, org) == 0)
        return 0;
    return item_err(
        v, CM_EINVAL, "champions", i, role, "provider %s belongs to organization %s, not %s",
        show(provider, s1, sizeof(s1)), show(porg, s2, sizeof(s2)), show(org, s3, sizeof(s3)));
}

/* Champion and backup differ and belong to the entry's organization, a member; the
** organization defaults to the champion's. */
static int check_champion(vctx *v, const cJSON *members, cJSON *c, size_t i)
{
    char s1[SHOW_BUFSZ], s2[SHOW_BUFSZ], corg[ID_MAX + 1], borg[ID_MAX + 1];
    const char *champ = str_member(c, "champion"), *backup = str_member(c, "backup");
    const char *org = str_member(c, "organization");
    int rc;
    if (strcmp(champ, backup) == 0)
        return item_err(v, CM_EINVAL, "champions", i, "backup",
                        "must be a different provider from the champion (both are %s)",
                        show(champ, s1, sizeof(s1)));
    if ((rc = provider_org(v->model, champ, corg, sizeof(corg), v->err)) != 0 ||
        (rc = provider_org(v->model, backup, borg, sizeof(borg), v->err)) != 0)
        return rc;
    if (!org && !is_member(members, corg))
        return item_err(v, CM_EINVAL, "champions", i, "champion",
                        "provider %s belongs to organization %s, which is not a member of this "
                        "partnership",
                        show(champ, s1, sizeof(s1)), show(corg, s2, sizeof(s2)));
    if (!org && !cJSON_AddStringToObject(c, "organization", corg))
        return item_err(v, CM_ENOMEM, "champions", i, "organization", "out of memory");
    org = org ? org : corg;
    if (!is_member(members, org))
        return item_err(v, CM_EINVAL, "champions", i, "organization",
                        "%s is not a member of this partnership", show(org, s1, sizeof(s1)));
    if ((rc = check_belongs(v, i, "champion", champ, corg, org)) != 0)
        return rc;
    return check_belongs(v, i, "backup", backup, borg, org);
}

static int partnership_rule(vctx *v, cJSON *doc)
{
    char shown[SHOW_BUFSZ];
    const cJSON *members = cJSON_GetObjectItemCaseSensitive(doc, "members");
    const cJSON *terms = cJSON_GetObjectItemCaseSensitive(doc, "terms");
    cJSON *champions = cJSON_GetObjectItemCaseSensitive(doc, "champions");
    size_t i = 0;
    for (const cJSON *t = terms ? terms->child : NULL; t; t = t->next, i++) {
        const char *receiver = str_member(t, "receiver");
        if (!is_member(members, receiver))
            return item_err(v, CM_EINVAL, "terms", i, "receiver",
                            "%s is not a member of this partnership",
                            show(receiver, shown, sizeof(shown)));
    }
    i = 0;
    for (cJSON *c = champions ? champions->child : NULL; c; c = c->next, i++) {
        int rc = check_champion(v, members, c, i);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* A participant acts on behalf of their own organization unless told otherwise. */
static int care_team_rule(vctx *v, cJSON *doc)
{
    char org[ID_MAX + 1];
    cJSON *participants = cJSON_GetObjectItemCaseSensitive(doc, "participants"), *p;
    size_t i = 0;
    for (p = participants ? participants->child : NULL; p; p = p->next, i++) {
        if (cJSON_GetObjectItemCaseSensitive(p, "onBehalfOf"))
            continue;
        int rc = provider_org(v->model, str_member(p, "member"), org, sizeof(org), v->err);
        if (rc != 0)
            return rc;
        if (*org && !cJSON_AddStringToObject(p, "onBehalfOf", org))
            return item_err(v, CM_ENOMEM, "participants", i, "onBehalfOf", "out of memory");
    }
    return 0;
}

static int task_rule(vctx *v, cJSON *doc)
{
    if (cJSON_GetObjectItemCaseSensitive(doc, "owner") ||
        cJSON_GetObjectItemCaseSensitive(doc, "ownerRole"))
        return 0;
    path_field(&v->path, "owner");
    return verr(v, CM_EINVAL,
                "required when there is no ownerRole (a task needs an owner, an "
                "ownerRole or both)");
}

/* ---- writing: the record, its references and its index entries ---- */

typedef struct wctx {
    cm_model *model;
    const kind_def *kind;
    const char *id;
    cm_err *err;
    mpath path; /* within the document: "members[0].organization" */
} wctx;

static int insert_ref(wctx *w, cm_kind to, const char *to_id)
{
    sqlite3_stmt *st = prepare_for(w->model,
                                   "INSERT INTO record_ref(kind, id, field, to_kind, to_id) "
                                   "VALUES (?1, ?2, ?3, ?4, ?5)",
                                   w->kind->name, w->id, w->err);
    if (!st)
        return prepare_error(w->err);
    sqlite3_bind_text(st, 3, w->path.buf, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, kinds[to].name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, to_id, -1, SQLITE_STATIC);
    int rc = step_done(w->model, st, "record_ref", w->err);
    if (rc != 0 && w->err)
        cm_err_prefix(w->err, "%s.%s", w->kind->name, w->path.buf);
    return rc;
}

static int insert_index(wctx *w, const char *key, const char *value)
{
    sqlite3_stmt *st = prepare_for(
        w->model,
        "INSERT INTO record_index(kind, id, key, value) SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS "
        "(SELECT 1 FROM record_index WHERE kind = ?1 AND id = ?2 AND key = ?3 AND value = ?4)",
        w->kind->name, w->id, w->err);
    if (!st)
        return prepare_error(w->err);
    sqlite3_bind_text(st, 3, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, value, -1, SQLITE_STATIC);
    return step_done(w->model, st, "record_index", w->err);
}

static int emit_value(wctx *w, const field *f, const cJSON *val);

static int emit_object(wctx *w, const field *fields, const cJSON *obj)
{
    for (const field *f = fields; f->name; f++) {
        const cJSON *val = cJSON_GetObjectItemCaseSensitive(obj, f->name);
        if (!val)
            continue;
        size_t mark = path_field(&w->path, f->name);
        int rc = emit_value(w, f, val);
        path_pop(&w->path, mark);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Write the record_ref and record_index rows for one (validated) value. */
static int emit_value(wctx *w, const field *f, const cJSON *val)
{
    int rc = 0;
    size_t i = 0;
    const cJSON *it;
    if (f->type == T_OBJECT)
        return emit_object(w, f->sub, val);
    if (f->type == T_ARRAY) {
        cJSON_ArrayForEach(it, val)
        {
            size_t mark = path_index(&w->path, i++);
            rc = emit_value(w, f->item, it);
            path_pop(&w->path, mark);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (f->type == T_REF)
        rc = insert_ref(w, f->ref, val->valuestring);
    if (rc == 0 && f->index && cJSON_IsString(val))
        rc = insert_index(w, f->index, val->valuestring);
    return rc;
}

/* Replace the record's references and index entries with those of doc. */
static int write_links(cm_model *m, const kind_def *k, const char *id, const cJSON *doc,
                       cm_err *err)
{
    wctx w = {.model = m, .kind = k, .id = id, .err = err};
    sqlite3_stmt *st;
    int rc;
    st = prepare_for(m, "DELETE FROM record_ref WHERE kind = ?1 AND id = ?2", k->name, id, err);
    if ((rc = kept_exec(m, st, "record_ref", err)) != 0)
        return rc;
    st = prepare_for(m, "DELETE FROM record_index WHERE kind = ?1 AND id = ?2", k->name, id, err);
    if ((rc = kept_exec(m, st, "record_index", err)) != 0)
        return rc;
    return emit_object(&w, k->fields, doc);
}

/* A record as stored: the document without meta, and its meta. */
typedef struct stored {
    cJSON *doc;
    long long version;
    char created[CM_TIME_BUFSZ];
    char updated[CM_TIME_BUFSZ];
} stored;

/* Insert (s->version == 1) or update the record row from s. */
static int put_record(cm_model *m, const kind_def *k, const char *id, const stored *s, cm_err *err)
{
    sqlite3_stmt *st = NULL;
    int rc;
    if (cm_model_print(s->doc, &m->text) != 0)
        return cm_err_set(err, CM_ENOMEM, "%s %s: out of memory", k->name, id);
    const char *text = m->text.p;
    st = prepare_for(m,
                     s->version == 1
                         ? "INSERT INTO record(kind, id, doc, version, created, updated) "
                           "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                         : "UPDATE record SET doc = ?3, version = ?4, created = ?5, "
                           "updated = ?6 WHERE kind = ?1 AND id = ?2",
                     k->name, id, err);
    if (st) {
        sqlite3_bind_text(st, 3, text, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, s->version);
        sqlite3_bind_text(st, 5, s->created, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, s->updated, -1, SQLITE_STATIC);
    }
    rc = kept_exec(m, st, "record", err); /* st reset: text is not read before a new bind */
    cm_buf_wipe(&m->text);
    return rc;
}

/* Fill s from a row (doc, version, created, updated, id). */
static int read_row(sqlite3_stmt *st, const kind_def *k, stored *s, cm_err *err)
{
    const char *doc = (const char *)sqlite3_column_text(st, 0);
    const char *created = (const char *)sqlite3_column_text(st, 2);
    const char *updated = (const char *)sqlite3_column_text(st, 3);
    s->doc = doc ? cJSON_Parse(doc) : NULL;
    if (!s->doc)
        return cm_err_set(err, CM_EDB, "%s %s: stored document cannot be read", k->name,
                          (const char *)sqlite3_column_text(st, 4));
    s->version = sqlite3_column_int64(st, 1);
    snprintf(s->created, sizeof(s->created), "%s", created ? created : "");
    snprintf(s->updated, sizeof(s->updated), "%s", updated ? updated : "");
    return 0;
}

static int load_record(cm_model *m, const kind_def *k, const char *id, stored *s, cm_err *err)
{
    char shown[SHOW_BUFSZ];
    sqlite3_stmt *st = prepare_for(m,
                                   "SELECT doc, version, created, updated, id FROM record "
                                   "WHERE kind = ?1 AND id = ?2",
                                   k->name, id, err);
    if (!st)
        return prepare_error(err);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        rc = read_row(st, k, s, err);
    else if (rc == SQLITE_DONE)
        rc = cm_err_set(err, CM_ENOTFOUND, "%s %s not found", k->name,
                        show(id, shown, sizeof(shown)));
    else
        rc = cm_store_error(m->store, err, "record");
    sqlite3_reset(st);
    return rc;
}

/* The record as callers see it: s->doc (consumed) plus "meta". */
static int with_meta(stored *s, cJSON **out, cm_err *err)
{
    char vid[32];
    cJSON *meta = cJSON_CreateObject();
    snprintf(vid, sizeof(vid), "%lld", s->version);
    *out = NULL;
    if (!meta || !cJSON_AddStringToObject(meta, "versionId", vid) ||
        !cJSON_AddStringToObject(meta, "created", s->created) ||
        !cJSON_AddStringToObject(meta, "lastUpdated", s->updated) ||
        !cJSON_AddItemToObject(s->doc, "meta", meta)) {
        cJSON_Delete(meta);
        cJSON_Delete(s->doc);
        s->doc = NULL;
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    *out = s->doc;
    s->doc = NULL;
    return 0;
}

static void strip_meta(cJSON *doc)
{
    while (cJSON_GetObjectItemCaseSensitive(doc, "meta"))
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "meta");
}

/* ---- transactions: our own, or a savepoint inside the caller's ---- */

typedef struct wtx {
    bool active;
    bool own; /* we began it (BEGIN IMMEDIATE) rather than a savepoint */
} wtx;

static int tx_begin(cm_model *m, wtx *tx, cm_err *err)
{
    int rc;
    tx->active = false;
    if (cm_store_tx_lost(m->store))
        return cm_err_set(err, CM_EDB,
                          "the enclosing transaction was rolled back by an earlier "
                          "error; nothing more can be written in it");
    tx->own = !cm_store_in_tx(m->store);
    if (tx->own)
        rc = cm_store_begin(m->store, err);
    else if ((rc = cm_store_nested_write(m->store, err)) == 0)
        rc = kept_exec(m, cm_store_prepare(m->store, "SAVEPOINT cm_model", err), "savepoint", err);
    tx->active = rc == 0;
    return rc;
}

static int tx_commit(cm_model *m, wtx *tx, cm_err *err)
{
    int rc;
    if (tx->own) {
        tx->active = false; /* cm_store_commit rolls back itself on failure */
        return cm_store_commit(m->store, err);
    }
    rc = kept_exec(m, cm_store_prepare(m->store, "RELEASE cm_model", err), "release", err);
    if (rc == 0)
        tx->active = false; /* else tx_abort undoes the savepoint */
    return rc;
}

static void tx_abort(cm_model *m, wtx *tx)
{
    if (!tx->active)
        return;
    tx->active = false;
    if (tx->own) {
        cm_store_rollback(m->store);
        return;
    }
    kept_exec(m, cm_store_prepare(m->store, "ROLLBACK TO cm_model", NULL), "rollback", NULL);
    kept_exec(m, cm_store_prepare(m->store, "RELEASE cm_model", NULL), "release", NULL);
}

/* Store s (validated) as the record id, with its links; *out (if asked) gets the record. */
static int store_validated(cm_model *m, const kind_def *k, const char *id, stored *s, cJSON **out,
                           cm_err *err)
{
    int rc = put_record(m, k, id, s, err);
    if (rc == 0)
        rc = write_links(m, k, id, s->doc, err);
    if (rc == 0 && out)
        rc = with_meta(s, out, err);
    return rc;
}

/* Stamp s as updated now (a first version as created now too), store the
** validated record and commit tx. */
static int save_record(cm_model *m, wtx *tx, const kind_def *k, const char *id, stored *s,
                       cJSON **out, cm_err *err)
{
    cm_time_format(cm_clock_now_ms(m->clock), s->updated, sizeof(s->updated));
    if (s->version == 1)
        memcpy(s->created, s->updated, sizeof(s->created));
    int rc = store_validated(m, k, id, s, out, err);
    return rc == 0 ? tx_commit(m, tx, err) : rc;
}

/* The end of a create or update with rc: roll back what did not commit and
** drop the *out of a failed one. Returns rc. */
static int end_write(cm_model *m, wtx *tx, int rc, cJSON **out)
{
    tx_abort(m, tx);
    if (rc != 0 && out) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return rc;
}

/* ---- public API ---- */

const char *cm_kind_name(cm_kind kind)
{
    const kind_def *k = kind_get(kind);
    return k ? k->name : NULL;
}

bool cm_kind_names_patient(int kind)
{
    return kind != CM_KIND_ORGANIZATION && kind != CM_KIND_PROVIDER && kind != CM_KIND_PARTNERSHIP;
}

const char *cm_model_record_patient(int kind, const cJSON *doc)
{
    const char *key = kind == CM_KIND_PATIENT ? "id" : "patient";
    if (!cm_kind_names_patient(kind))
        return NULL;
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, key));
}

const char *cm_model_record_classes(int kind, const cJSON *doc, char *buf, size_t bufsz)
{
    switch (kind) {
    case CM_KIND_PATIENT:
        snprintf(buf, bufsz, "demographics%s%s",
                 cJSON_HasObjectItem(doc, "phone") || cJSON_HasObjectItem(doc, "email") ||
                         cJSON_HasObjectItem(doc, "address")
                     ? ",contact"
                     : "",
                 cJSON_HasObjectItem(doc, "conditions") ? ",conditions" : "");
        return buf;
    case CM_KIND_CONSENT:
        return "consent";
    case CM_KIND_CARE_TEAM:
        return "care_team";
    case CM_KIND_TASK:
        return "tasks";
    case CM_KIND_IMMUNIZATION:
        return "immunizations";
    default:
        return "workflow";
    }
}

int cm_kind_parse(const char *name)
{
    for (int i = 0; name && i < CM_KIND__COUNT; i++)
        if (strcmp(kinds[i].name, name) == 0)
            return i;
    return -1;
}

const char *const *cm_model_find_keys(cm_kind kind)
{
    static const char *const none[] = {NULL};
    const kind_def *k = kind_get(kind);
    return k ? k->find_keys : none;
}

static int check_kind_doc(const kind_def *k, cm_kind kind, const cJSON *doc, const char *what,
                          cm_err *err)
{
    if (!k)
        return cm_err_set(err, CM_EINVAL, "unknown record kind %d", (int)kind);
    if (!cJSON_IsObject(doc))
        return cm_err_set(err, CM_EINVAL, "%s: the %s must be a JSON object, got %s", k->name, what,
                          doc ? cm_values_type_name(doc) : "nothing");
    return 0;
}

int cm_model_create(cm_model *model, cm_kind kind, const cJSON *doc, cJSON **out, cm_err *err)
{
    const kind_def *k = kind_get(kind);
    stored s = {.version = 1};
    wtx tx = {0};
    char shown[SHOW_BUFSZ];
    const char *id;
    bool exists = false;
    int rc;
    if (out)
        *out = NULL;
    if ((rc = check_kind_doc(k, kind, doc, "record", err)) != 0)
        return rc;
    if (!(s.doc = cJSON_Duplicate(doc, true)))
        return cm_err_set(err, CM_ENOMEM, "%s: out of memory", k->name);
    strip_meta(s.doc);
    if ((rc = tx_begin(model, &tx, err)) != 0 || (rc = validate(model, k, s.doc, err)) != 0)
        goto done;
    id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(s.doc, "id"));
    if ((rc = record_exists(model, k, id, &exists, err)) != 0)
        goto done;
    if (exists) {
        rc = cm_err_set(err, CM_EEXISTS, "%s %s already exists", k->name,
                        show(id, shown, sizeof(shown)));
        goto done;
    }
    rc = save_record(model, &tx, k, id, &s, out, err);
done:
    cJSON_Delete(s.doc);
    return end_write(model, &tx, rc, out);
}

int cm_model_get(cm_model *model, cm_kind kind, const char *id, cJSON **out, cm_err *err)
{
    const kind_def *k = kind_get(kind);
    stored s = {0};
    int rc;
    *out = NULL;
    if (!k)
        return cm_err_set(err, CM_EINVAL, "unknown record kind %d", (int)kind);
    if (!id)
        return cm_err_set(err, CM_EINVAL, "%s: no id given", k->name);
    if ((rc = load_record(model, k, id, &s, err)) != 0)
        return rc;
    return with_meta(&s, out, err);
}

/* RFC 7386: the result of applying patch to target (consumed). NULL on out of memory. */
static cJSON *merge_patch(cJSON *target, const cJSON *patch)
{
    const cJSON *p;
    if (!cJSON_IsObject(patch)) {
        cJSON_Delete(target);
        return cJSON_Duplicate(patch, true);
    }
    if (!cJSON_IsObject(target)) {
        cJSON_Delete(target);
        if (!(target = cJSON_CreateObject()))
            return NULL;
    }
    cJSON_ArrayForEach(p, patch)
    {
        cJSON *cur = cJSON_GetObjectItemCaseSensitive(target, p->string), *base = NULL, *next;
        if (cJSON_IsNull(p)) {
            cJSON_DeleteItemFromObjectCaseSensitive(target, p->string);
            continue;
        }
        if (cJSON_IsObject(p) && cJSON_IsObject(cur) && !(base = cJSON_Duplicate(cur, true)))
            goto oom;
        if (!(next = merge_patch(base, p)))
            goto oom;
        if (!(cur ? cJSON_ReplaceItemInObjectCaseSensitive(target, p->string, next)
                  : cJSON_AddItemToObject(target, p->string, next))) {
            cJSON_Delete(next);
            goto oom;
        }
    }
    return target;
oom:
    cJSON_Delete(target);
    return NULL;
}

static int check_patch(const kind_def *k, cm_kind kind, const char *id, const cJSON *patch,
                       cm_err *err)
{
    char shown[SHOW_BUFSZ];
    int rc = check_kind_doc(k, kind, patch, "patch", err);
    if (rc != 0)
        return rc;
    if (!id)
        return cm_err_set(err, CM_EINVAL, "%s: no id given", k->name);
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(patch, "id");
    if (pid && !(cJSON_IsString(pid) && strcmp(pid->valuestring, id) == 0))
        return cm_err_set(err, CM_EINVAL, "%s.id: cannot be changed (the record is %s)", k->name,
                          show(id, shown, sizeof(shown)));
    return 0;
}

/* A task that is completed or cancelled is done with: no change of it is
** taken (CM_ESTATE, naming the task and its status). */
static int check_changeable(const kind_def *k, const char *id, const cJSON *doc, cm_err *err)
{
    static const char *const ended[] = {"completed", "cancelled", NULL};
    const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "status"));
    if (k != &kinds[CM_KIND_TASK] || !status || !cm_values_listed(ended, status))
        return 0;
    return cm_err_set(err, CM_ESTATE,
                      "task.status: task \"%s\" is already %s; a completed or cancelled task "
                      "takes no more changes",
                      id, status);
}

int cm_model_update(cm_model *model, cm_kind kind, const char *id, const cJSON *patch, cJSON **out,
                    cm_err *err)
{
    const kind_def *k = kind_get(kind);
    stored s = {0};
    wtx tx = {0};
    cJSON *p = NULL;
    int rc;
    if (out)
        *out = NULL;
    if ((rc = check_patch(k, kind, id, patch, err)) != 0)
        return rc;
    if (!(p = cJSON_Duplicate(patch, true)))
        return cm_err_set(err, CM_ENOMEM, "%s: out of memory", k->name);
    strip_meta(p);
    if ((rc = tx_begin(model, &tx, err)) != 0 || (rc = load_record(model, k, id, &s, err)) != 0 ||
        (rc = check_changeable(k, id, s.doc, err)) != 0)
        goto done;
    if (!(s.doc = merge_patch(s.doc, p))) {
        rc = cm_err_set(err, CM_ENOMEM, "%s: out of memory", k->name);
        goto done;
    }
    if ((rc = validate(model, k, s.doc, err)) != 0)
        goto done;
    s.version++;
    rc = save_record(model, &tx, k, id, &s, out, err);
done:
    cJSON_Delete(p);
    cJSON_Delete(s.doc);
    return end_write(model, &tx, rc, out);
}

/* ---- find ---- */

typedef struct find_filter {
    const char *key;
    const char *value;
} find_filter;

/* The field indexed under find key `key`, looked for through objects and arrays. */
static const field *index_field(const field *fs, const char *key)
{
    for (const field *f = fs; f && f->name; f++) {
        const field *hit = NULL;
        if (f->index && strcmp(f->index, key) == 0)
            return f;
        if (f->sub && (hit = index_field(f->sub, key)) != NULL)
            return hit;
        if (f->item && f->item->index && strcmp(f->item->index, key) == 0)
            return f->item;
        if (f->item && f->item->sub && (hit = index_field(f->item->sub, key)) != NULL)
            return hit;
    }
    return NULL;
}

const char *const *cm_model_find_values(cm_kind kind, const char *key)
{
    const kind_def *k = kind_get(kind);
    const field *f = k && cm_values_listed(k->find_keys, key) ? index_field(k->fields, key) : NULL;
    return f && f->type == T_ENUM ? f->values : NULL;
}

static int find_parse(const kind_def *k, const cJSON *filter, find_filter *fl, size_t *n,
                      cm_err *err)
{
    char shown[SHOW_BUFSZ], list[LIST_BUFSZ];
    const cJSON *m;
    *n = 0;
    if (!filter || cJSON_IsNull(filter) || (cJSON_IsArray(filter) && !filter->child))
        return 0;
    if (!cJSON_IsObject(filter))
        return cm_err_set(err, CM_EINVAL, "find %s: the filter must be an object, got %s", k->name,
                          cm_values_type_name(filter));
    cJSON_ArrayForEach(m, filter)
    {
        if (!cm_values_listed(k->find_keys, m->string))
            return cm_err_set(err, CM_EINVAL, "find %s: unknown key %s (expected one of: %s)",
                              k->name, show(m->string, shown, sizeof(shown)),
                              cm_values_join(k->find_keys, list, sizeof(list)));
        if (!cJSON_IsString(m) || !m->valuestring)
            return cm_err_set(err, CM_EINVAL,
                              "find %s: the value of \"%s\" must be a string, got %s", k->name,
                              m->string, cm_values_type_name(m));
        const field *f = index_field(k->fields, m->string);
        if (f && f->type == T_ENUM && !cm_values_listed(f->values, m->valuestring))
            return cm_err_set(err, CM_EINVAL, "find %s: %s: unknown value %s (expected one of: %s)",
                              k->name, m->string, show(m->valuestring, shown, sizeof(shown)),
                              cm_values_join(f->values, list, sizeof(list)));
        if (key_seen_before(filter, m) || *n == FIND_FILTERS_MAX)
            return cm_err_set(err, CM_EINVAL, "find %s: key \"%s\" given twice", k->name,
                              m->string);
        fl[*n].key = m->string;
        fl[(*n)++].value = m->valuestring;
    }
    return 0;
}

/* The find query: ?1 kind, ?2 after, ?3 limit, then key/value pairs from ?4. With filters,
** the first drives the query through record_index_lookup (kind, key, value, id), so a
** selective filter reads only its matches, already in id order; each further filter is an
** EXISTS. Index rows are distinct per record, so the join yields each record once. */
static bool find_sql(char *buf, size_t bufsz, size_t n)
{
    int len = snprintf(buf, bufsz, "SELECT r.doc, r.version, r.created, r.updated, r.id %s",
                       n == 0 ? "FROM record r WHERE r.kind = ?1 AND r.id > ?2"
                              : "FROM record_index x0 JOIN record r ON r.kind = x0.kind AND "
                                "r.id = x0.id WHERE x0.kind = ?1 AND x0.id > ?2 AND "
                                "x0.key = ?4 AND x0.value = ?5");
    for (size_t i = 1; i < n && len > 0 && (size_t)len < bufsz; i++)
        len += snprintf(buf + len, bufsz - (size_t)len,
                        " AND EXISTS (SELECT 1 FROM record_index x WHERE x.kind = r.kind AND "
                        "x.id = r.id AND x.key = ?%zu AND x.value = ?%zu)",
                        4 + 2 * i, 5 + 2 * i);
    if (len > 0 && (size_t)len < bufsz)
        len += snprintf(buf + len, bufsz - (size_t)len, " ORDER BY %s LIMIT ?3",
                        n == 0 ? "r.id" : "x0.id");
    return len > 0 && (size_t)len < bufsz;
}

static int find_rows(cm_model *m, const kind_def *k, sqlite3_stmt *st, cJSON *results, cm_err *err)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        stored s = {0};
        cJSON *rec = NULL;
        if ((rc = read_row(st, k, &s, err)) != 0 || (rc = with_meta(&s, &rec, err)) != 0)
            return rc;
        if (!cJSON_AddItemToArray(results, rec)) {
            cJSON_Delete(rec);
            return cm_err_set(err, CM_ENOMEM, "find %s: out of memory", k->name);
        }
    }
    return rc == SQLITE_DONE ? 0 : cm_store_error(m->store, err, "find");
}

int cm_model_find(cm_model *model, cm_kind kind, const cJSON *filter, const char *after, int limit,
                  cJSON **out, cm_err *err)
{
    const kind_def *k = kind_get(kind);
    find_filter fl[FIND_FILTERS_MAX];
    char sql[4096];
    sqlite3_stmt *st = NULL;
    cJSON *results = NULL;
    size_t n = 0;
    int rc;
    *out = NULL;
    if (!k)
        return cm_err_set(err, CM_EINVAL, "unknown record kind %d", (int)kind);
    if (limit < 1 || limit > FIND_LIMIT_MAX)
        return cm_err_set(err, CM_EINVAL, "find %s: limit %d out of range (1..%d)", k->name, limit,
                          FIND_LIMIT_MAX);
    if ((rc = find_parse(k, filter, fl, &n, err)) != 0)
        return rc;
    if (!find_sql(sql, sizeof(sql), n))
        return cm_err_set(err, CM_EINVAL, "find %s: too many filters", k->name);
    if (sqlite3_prepare_v2(cm_store_db(model->store), sql, -1, &st, NULL) != SQLITE_OK) {
        rc = cm_store_error(model->store, err, "find");
        goto done;
    }
    sqlite3_bind_text(st, 1, k->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, limit);
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(st, (int)(4 + 2 * i), fl[i].key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, (int)(5 + 2 * i), fl[i].value, -1, SQLITE_STATIC);
    }
    if (!(results = cJSON_CreateArray())) {
        rc = cm_err_set(err, CM_ENOMEM, "find %s: out of memory", k->name);
        goto done;
    }
    if ((rc = find_rows(model, k, st, results, err)) == 0) {
        *out = results;
        results = NULL;
    }
done:
    sqlite3_finalize(st);
    cJSON_Delete(results);
    return rc;
}

int cm_model_count(cm_model *model, cm_kind kind, long *out, cm_err *err)
{
    const kind_def *k = kind_get(kind);
    sqlite3_stmt *st;
    int rc;
    *out = 0;
    if (!k)
        return cm_err_set(err, CM_EINVAL, "unknown record kind %d", (int)kind);
    if (!(st = cm_store_prepare(model->store, "SELECT count(*) FROM record WHERE kind = ?1", err)))
        return prepare_error(err);
    sqlite3_bind_text(st, 1, k->name, -1, SQLITE_STATIC);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        *out = (long)sqlite3_column_int64(st, 0);
        rc = 0;
    } else {
        rc = cm_store_error(model->store, err, "count");
    }
    sqlite3_reset(st);
    return rc;
}

/* ---- life cycle ---- */

#ifndef NDEBUG
/* The schema tables are consistent: shapes complete, defaults valid, find keys all indexed. */
static void schema_check_field(const kind_def *k, const field *f, bool *used)
{
    assert(f->type != T_ENUM || f->values);
    assert(f->type != T_OBJECT || f->sub);
    assert(f->type != T_ARRAY || f->item);
    assert(!f->unique_by || !*f->unique_by || field_find(f->item->sub, f->unique_by));
    if (f->dflt) {
        cJSON *d = cJSON_Parse(f->dflt);
        assert(d && has_shape(f->type, d));
        assert(f->type != T_ENUM || cm_values_listed(f->values, d->valuestring));
        cJSON_Delete(d);
    }
    if (f->index) {
        size_t j = 0;
        while (k->find_keys[j] && strcmp(k->find_keys[j], f->index) != 0)
            j++;
        assert(k->find_keys[j] && types[f->type].max_len > 0);
        used[j] = true;
    }
    for (const field *s = f->type == T_OBJECT ? f->sub : NULL; s && s->name; s++)
        schema_check_field(k, s, used);
    if (f->type == T_ARRAY)
        schema_check_field(k, f->item, used);
}

static void schema_check(void)
{
    for (size_t i = 0; i < CM_KIND__COUNT; i++) {
        bool used[FIND_FILTERS_MAX] = {false};
        const field top = {.name = kinds[i].name, .type = T_OBJECT, .sub = kinds[i].fields};
        assert(kinds[i].fields[0].type == T_ID);
        schema_check_field(&kinds[i], &top, used);
        for (size_t j = 0; kinds[i].find_keys[j]; j++)
            assert(j < FIND_FILTERS_MAX && used[j]);
    }
}
#endif

cm_model *cm_model_new(cm_store *store, const cm_clock *clock)
{
    cm_model *model;
#ifndef NDEBUG
    schema_check();
#endif
    if (!store || !clock || !(model = calloc(1, sizeof(*model))))
        return NULL;
    model->store = store;
    model->clock = clock;
    model->text.wipe = true;
    return model;
}

cm_store *cm_model_store(cm_model *model)
{
    return model->store;
}

const cm_clock *cm_model_clock(cm_model *model)
{
    return model->clock;
}

void cm_model_destroy(cm_model **model_p)
{
    if (model_p && *model_p) {
        cm_buf_free(&(*model_p)->text);
        free(*model_p);
        *model_p = NULL;
    }
}

/* ---- documents that hold patient data ---- */

int cm_model_print(const cJSON *doc, cm_buf *b)
{
    cm_buf_reset(b);
    if (!doc) { /* what a failed cJSON_Create... leaves */
        b->oom = true;
        return CM_ENOMEM;
    }
    for (size_t want = b->cap > 256 ? b->cap : 256;; want = b->cap * 2) {
        if (want > INT_MAX || !cm_buf_room(b, want - 1)) {
            b->oom = true;
            return CM_ENOMEM;
        }
        /* fills what it is given, never allocating; false when it does not fit */
        if (cJSON_PrintPreallocated((cJSON *)doc, b->p, (int)b->cap, false)) {
            b->len = strlen(b->p);
            return 0;
        }
    }
}

/* Zero the strings and numbers of d, its siblings after it and their
** children (what cJSON_Delete(d) frees). */
static void doc_wipe(cJSON *d)
{
    for (; d; d = d->next) {
        if (d->type & cJSON_IsReference)
            continue;
        if (d->valuestring)
            sodium_memzero(d->valuestring, strlen(d->valuestring));
        d->valuedouble = 0;
        d->valueint = 0;
        doc_wipe(d->child);
    }
}

void cm_model_doc_free(cJSON *doc)
{
    doc_wipe(doc);
    cJSON_Delete(doc);
}

/* ---- numbers past a double's range ---- */

/* A member on the way down to a number: its item, its position in its
** parent, and the member above it (NULL at the document's top). Kept on the
** C stack while the walk is below it: the path is written only for an error. */
typedef struct doc_seg {
    const struct doc_seg *up;
    const cJSON *item;
    int index;
} doc_seg;

/* The path of s after root into out[0..cap) from n: ".name" for a member
** (no dot first when root is ""), "[i]" for an element; cut to fit. */
static size_t seg_put(const doc_seg *s, char *out, size_t cap, size_t n)
{
    if (s->up)
        n = seg_put(s->up, out, cap, n);
    int w = s->item->string ? snprintf(out + n, cap - n, "%s%s", n ? "." : "", s->item->string)
                            : snprintf(out + n, cap - n, "[%d]", s->index);
    return w < 0 || (size_t)w >= cap - n ? cap - 1 : n + (size_t)w;
}

static int doc_finite(const cJSON *j, const doc_seg *up, const char *root, cm_err *err)
{
    int i = 0;
    for (const cJSON *c = j->child; c; c = c->next, i++) {
        doc_seg seg = {up, c, i};
        if (c->child && doc_finite(c, &seg, root, err) != 0)
            return CM_EINVAL;
        if (cJSON_IsNumber(c) && !isfinite(c->valuedouble)) {
            char path[256];
            size_t n = (size_t)snprintf(path, sizeof(path), "%.64s", root);
            seg_put(&seg, path, sizeof(path), n);
            return cm_err_set(err, CM_EINVAL,
                              "%s: number out of range (beyond +-1.7976931348623157e308)", path);
        }
    }
    return 0;
}

int cm_model_doc_finite(const cJSON *doc, const char *root, cm_err *err)
{
    if (cJSON_IsNumber(doc) && !isfinite(doc->valuedouble))
        return cm_err_set(err, CM_EINVAL, "%s: number out of range", *root ? root : "value");
    return doc ? doc_finite(doc, NULL, root, err) : 0;
}

int cm_model_text_finite(const char *text, size_t len, const char *root, cm_err *err)
{
    cJSON *doc = cJSON_ParseWithLength(text, len);
    int rc = doc ? cm_model_doc_finite(doc, root, err) : 0;
    cm_model_doc_free(doc);
    return rc;
}
