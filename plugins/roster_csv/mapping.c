/*
** mapping.c -- CSV columns to patient fields: rules, defaults, resolution
** against a header, rows to documents, and the merge into a stored patient.
*/
#include "mapping.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- targets ----------------------------------------------------------- */

typedef struct target_def {
    const char *name;
    roster_target t;
    bool many;       /* several columns may give it (array fields) */
    const char *arg; /* what |ARG means; NULL when it takes none */
    const char *path;
} target_def;

static const target_def targets[] = {
    {"-", RT_IGNORE, true, NULL, NULL},
    {"id", RT_ID, false, NULL, "id"},
    {"identifier", RT_IDENTIFIER, true, "system", "identifiers"},
    {"name.family", RT_FAMILY, false, NULL, "name.family"},
    {"name.given", RT_GIVEN, true, NULL, "name.given"},
    {"name.prefix", RT_PREFIX, true, NULL, "name.prefix"},
    {"name.text", RT_NAME_TEXT, false, NULL, "name.text"},
    {"name.full", RT_NAME_FULL, false, NULL, "name"},
    {"birthDate", RT_BIRTHDATE, false, "format", "birthDate"},
    {"gender", RT_GENDER, false, NULL, "gender"},
    {"phone", RT_PHONE, false, NULL, "phone"},
    {"email", RT_EMAIL, false, NULL, "email"},
    {"address.line", RT_LINE, true, NULL, "address.line"},
    {"address.city", RT_CITY, false, NULL, "address.city"},
    {"address.state", RT_STATE, false, NULL, "address.state"},
    {"address.postalCode", RT_POSTAL, false, NULL, "address.postalCode"},
    {"address.country", RT_COUNTRY, false, NULL, "address.country"},
    {"language", RT_LANGUAGE, false, NULL, "language"},
    {"preferredChannel", RT_CHANNEL, false, NULL, "preferredChannel"},
    {"conditions", RT_CONDITIONS, true, "system", "conditions"},
    {"generalPractitioner", RT_GP, false, NULL, "generalPractitioner"},
    {"active", RT_ACTIVE, false, NULL, "active"},
};
#define NTARGETS (sizeof(targets) / sizeof(targets[0]))

/* FHIR-flavoured spellings accepted as well. */
static const struct {
    const char *alias, *name;
} target_aliases[] = {
    {"identifiers", "identifier"},
    {"telecom.phone", "phone"},
    {"telecom.email", "email"},
    {"birthdate", "birthDate"},
    {"dob", "birthDate"},
    {"sex", "gender"},
    {"family", "name.family"},
    {"given", "name.given"},
    {"name", "name.full"},
    {"ignore", "-"},
    {"address.postalcode", "address.postalCode"},
};

static const target_def *target_by_name(const char *name)
{
    for (size_t i = 0; i < sizeof(target_aliases) / sizeof(target_aliases[0]); i++)
        if (strcmp(name, target_aliases[i].alias) == 0)
            name = target_aliases[i].name;
    for (size_t i = 0; i < NTARGETS; i++)
        if (strcmp(name, targets[i].name) == 0)
            return &targets[i];
    return NULL;
}

static const target_def *target_def_of(roster_target t)
{
    for (size_t i = 0; i < NTARGETS; i++)
        if (targets[i].t == t)
            return &targets[i];
    return &targets[0];
}

/* Common header names (lower case, letters and digits only) and their field. */
static const struct {
    const char *header;
    roster_target t;
} defaults[] = {
    {"mrn", RT_IDENTIFIER},
    {"medicalrecordnumber", RT_IDENTIFIER},
    {"patientmrn", RT_IDENTIFIER},
    {"mrnumber", RT_IDENTIFIER},
    {"chartnumber", RT_IDENTIFIER},
    {"patientid", RT_IDENTIFIER},
    {"patientnumber", RT_IDENTIFIER},
    {"lastname", RT_FAMILY},
    {"last", RT_FAMILY},
    {"surname", RT_FAMILY},
    {"familyname", RT_FAMILY},
    {"patientlastname", RT_FAMILY},
    {"firstname", RT_GIVEN},
    {"first", RT_GIVEN},
    {"givenname", RT_GIVEN},
    {"patientfirstname", RT_GIVEN},
    {"middlename", RT_GIVEN},
    {"middle", RT_GIVEN},
    {"middleinitial", RT_GIVEN},
    {"prefix", RT_PREFIX},
    {"title", RT_PREFIX},
    {"name", RT_NAME_FULL},
    {"patientname", RT_NAME_FULL},
    {"fullname", RT_NAME_FULL},
    {"dob", RT_BIRTHDATE},
    {"birthdate", RT_BIRTHDATE},
    {"dateofbirth", RT_BIRTHDATE},
    {"patientdob", RT_BIRTHDATE},
    {"sex", RT_GENDER},
    {"gender", RT_GENDER},
    {"administrativesex", RT_GENDER},
    {"phone", RT_PHONE},
    {"phonenumber", RT_PHONE},
    {"homephone", RT_PHONE},
    {"mobile", RT_PHONE},
    {"mobilephone", RT_PHONE},
    {"cellphone", RT_PHONE},
    {"cell", RT_PHONE},
    {"telephone", RT_PHONE},
    {"primaryphone", RT_PHONE},
    {"email", RT_EMAIL},
    {"emailaddress", RT_EMAIL},
    {"address", RT_LINE},
    {"address1", RT_LINE},
    {"addressline1", RT_LINE},
    {"address2", RT_LINE},
    {"addressline2", RT_LINE},
    {"street", RT_LINE},
    {"streetaddress", RT_LINE},
    {"city", RT_CITY},
    {"town", RT_CITY},
    {"state", RT_STATE},
    {"province", RT_STATE},
    {"zip", RT_POSTAL},
    {"zipcode", RT_POSTAL},
    {"postalcode", RT_POSTAL},
    {"postcode", RT_POSTAL},
    {"country", RT_COUNTRY},
    {"language", RT_LANGUAGE},
    {"preferredlanguage", RT_LANGUAGE},
    {"primarylanguage", RT_LANGUAGE},
    {"preferredchannel", RT_CHANNEL},
    {"contactpreference", RT_CHANNEL},
    {"preferredcontact", RT_CHANNEL},
    {"conditions", RT_CONDITIONS},
    {"diagnoses", RT_CONDITIONS},
    {"diagnosiscodes", RT_CONDITIONS},
    {"problemlist", RT_CONDITIONS},
    {"generalpractitioner", RT_GP},
    {"active", RT_ACTIVE},
};

static roster_target default_target(const char *header)
{
    char key[64];
    size_t n = 0;
    for (const char *p = header; *p && n + 1 < sizeof(key); p++)
        if (isalnum((unsigned char)*p))
            key[n++] = (char)tolower((unsigned char)*p);
    key[n] = '\0';
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
        if (strcmp(key, defaults[i].header) == 0)
            return defaults[i].t;
    return RT_IGNORE;
}

/* ---- small text helpers ------------------------------------------------- */

static bool blank(int c)
{
    return c == ' ' || c == '\t';
}

/* s[0..*len) without the blanks at both ends. */
static const char *trim(const char *s, size_t *len)
{
    while (*len > 0 && blank((unsigned char)s[0]))
        s++, (*len)--;
    while (*len > 0 && blank((unsigned char)s[*len - 1]))
        (*len)--;
    return s;
}

static char *dup_trimmed(const char *s, size_t len)
{
    s = trim(s, &len);
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

/* Header names compare without case and surrounding blanks. */
static bool same_header(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    a = trim(a, &la);
    b = trim(b, &lb);
    if (la != lb)
        return false;
    for (size_t i = 0; i < la; i++)
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return false;
    return true;
}

bool roster_utf8_ok(const char *s, size_t len, size_t *at)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        size_t n = c < 0x80             ? 0
                   : (c & 0xe0) == 0xc0 ? 1
                   : (c & 0xf0) == 0xe0 ? 2
                   : (c & 0xf8) == 0xf0 ? 3
                                        : 9;
        uint32_t cp = n == 0 ? c : n == 1 ? c & 0x1f : n == 2 ? c & 0x0f : c & 0x07;
        if (c == 0 || n == 9 || (n > 0 && i + n >= len))
            goto bad;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                goto bad;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            goto bad;
        i += n + 1;
        continue;
    bad:
        if (at)
            *at = i;
        return false;
    }
    return true;
}

/* ---- the map ------------------------------------------------------------ */

void roster_map_init(roster_map *m)
{
    memset(m, 0, sizeof(*m));
    m->defaults = true;
}

void roster_map_clear(roster_map *m)
{
    for (size_t i = 0; i < m->nrules; i++) {
        free(m->rules[i].header);
        free(m->rules[i].arg);
    }
    free(m->rules);
    free(m->id_column);
    free(m->id_prefix);
    roster_map_init(m);
}

int roster_map_set(char **slot, const char *value)
{
    char *d = strdup(value);
    if (!d)
        return -1;
    free(*slot);
    *slot = d;
    return 0;
}

static const char *date_formats[] = {"YYYY-MM-DD", "MM/DD/YYYY", "DD/MM/YYYY", "YYYY/MM/DD",
                                     "DD.MM.YYYY", "YYYYMMDD",   NULL};

static bool known_format(const char *f)
{
    for (size_t i = 0; date_formats[i]; i++)
        if (strcmp(f, date_formats[i]) == 0)
            return true;
    return false;
}

int roster_map_rule(roster_map *m, const char *header, const char *target, bool named,
                    const char *what, char *err, size_t errlen)
{
    char name[64];
    const char *bar = strchr(target, '|');
    size_t nlen = bar ? (size_t)(bar - target) : strlen(target);
    const char *tn = trim(target, &nlen);
    size_t hlen = strlen(header);
    trim(header, &hlen);
    if (hlen == 0)
        return snprintf(err, errlen, "%s: a rule with no column name (\"=%s\")", what, target), -1;
    snprintf(name, sizeof(name), "%.*s", (int)(nlen < 63 ? nlen : 63), tn);
    const target_def *d = target_by_name(name);
    if (!d)
        return snprintf(err, errlen,
                        "%s: %s: unknown field \"%s\" (known: id, identifier, name.family, "
                        "name.given, name.prefix, name.text, name.full, birthDate, gender, phone, "
                        "email, address.line, address.city, address.state, address.postalCode, "
                        "address.country, language, preferredChannel, conditions, "
                        "generalPractitioner, active, - to ignore)",
                        what, header, name),
               -1;
    char *arg = bar ? dup_trimmed(bar + 1, strlen(bar + 1)) : NULL;
    if (bar && (!arg || !*arg || !d->arg)) {
        bool oom = !arg;
        free(arg);
        if (oom)
            return snprintf(err, errlen, "out of memory"), -1;
        return snprintf(err, errlen, "%s: %s: %s takes no |%s", what, header, d->name,
                        d->arg ? d->arg : "argument"),
               -1;
    }
    if (arg && d->t == RT_BIRTHDATE && !known_format(arg)) {
        snprintf(err, errlen,
                 "%s: %s: unknown date format \"%s\" (known: YYYY-MM-DD, MM/DD/YYYY, "
                 "DD/MM/YYYY, YYYY/MM/DD, DD.MM.YYYY, YYYYMMDD)",
                 what, header, arg);
        free(arg);
        return -1;
    }
    roster_rule *r = NULL;
    for (size_t i = 0; i < m->nrules && !r; i++)
        if (same_header(m->rules[i].header, header))
            r = &m->rules[i];
    if (!r) {
        if (m->nrules == m->cap) {
            size_t cap = m->cap ? m->cap * 2 : 16;
            roster_rule *rules = realloc(m->rules, cap * sizeof(*rules));
            if (!rules) {
                free(arg);
                return snprintf(err, errlen, "out of memory"), -1;
            }
            m->rules = rules;
            m->cap = cap;
        }
        r = &m->rules[m->nrules];
        if (!(r->header = dup_trimmed(header, strlen(header)))) {
            free(arg);
            return snprintf(err, errlen, "out of memory"), -1;
        }
        m->nrules++;
    } else {
        free(r->arg);
    }
    r->target = d->t;
    r->arg = arg;
    r->named = named;
    return 0;
}

int roster_map_parse(roster_map *m, const char *spec, const char *what, char *err, size_t errlen)
{
    const char *p = spec;
    int item = 0;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char *one = malloc(len + 1);
        if (!one)
            return snprintf(err, errlen, "out of memory"), -1;
        memcpy(one, p, len);
        one[len] = '\0';
        item++;
        char *eq = strchr(one, '=');
        int rc = 0;
        if (!eq) {
            snprintf(err, errlen, "%s: item %d \"%s\": expected COLUMN=FIELD", what, item, one);
            rc = -1;
        } else {
            *eq = '\0';
            rc = roster_map_rule(m, one, eq + 1, true, what, err, errlen);
        }
        free(one);
        if (rc != 0)
            return rc;
        p = end ? end + 1 : p + len;
    }
    if (item == 0)
        return snprintf(err, errlen, "%s: empty; expected COLUMN=FIELD,...", what), -1;
    return 0;
}

/* ---- columns ------------------------------------------------------------ */

void roster_columns_clear(roster_columns *c)
{
    for (size_t i = 0; c->names && i < c->n; i++)
        free(c->names[i]);
    free(c->names);
    free(c->target);
    free(c->arg);
    memset(c, 0, sizeof(*c));
}

const char *roster_columns_ignored(const roster_columns *c, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < c->n; i++) {
        if (c->target[i] != RT_IGNORE)
            continue;
        int w = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", c->names[i]);
        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
    return buf;
}

static int column_names(const roster_record *h, roster_columns *c, size_t *col, char *err,
                        size_t errlen)
{
    size_t at;
    c->n = h->nfields;
    c->names = calloc(h->nfields, sizeof(*c->names));
    c->target = calloc(h->nfields, sizeof(*c->target));
    c->arg = calloc(h->nfields, sizeof(*c->arg));
    if (!c->names || !c->target || !c->arg)
        return snprintf(err, errlen, "out of memory"), -1;
    for (size_t i = 0; i < h->nfields; i++) {
        *col = i;
        if (!roster_utf8_ok(h->fields[i], h->lens[i], &at))
            return snprintf(err, errlen, "header of column %zu: not valid UTF-8 (byte %zu)", i + 1,
                            at + 1),
                   -1;
        if (!(c->names[i] = dup_trimmed(h->fields[i], h->lens[i])))
            return snprintf(err, errlen, "out of memory"), -1;
        if (!c->names[i][0])
            return snprintf(err, errlen, "header of column %zu: empty (every column needs a name)",
                            i + 1),
                   -1;
        for (size_t j = 0; j < i; j++)
            if (same_header(c->names[j], c->names[i]))
                return snprintf(err, errlen,
                                "column \"%s\": twice in the header (columns %zu and %zu)",
                                c->names[i], j + 1, i + 1),
                       -1;
    }
    *col = ROSTER_NO_COL;
    return 0;
}

/* Explicit rules first; then defaults for columns no rule names, a single
** field only once and never one a rule gives. */
static int apply_rules(const roster_map *m, roster_columns *c, size_t *col, char *err,
                       size_t errlen)
{
    bool ruled[RT__COUNT] = {false};
    bool *named = calloc(c->n ? c->n : 1, sizeof(*named));
    if (!named)
        return snprintf(err, errlen, "out of memory"), -1;
    for (size_t r = 0; r < m->nrules; r++) {
        size_t i = 0;
        while (i < c->n && !same_header(c->names[i], m->rules[r].header))
            i++;
        if (i == c->n && !m->rules[r].named)
            continue; /* a standing rule for files that have the column */
        if (i == c->n) {
            char cols[1024];
            size_t used = 0;
            cols[0] = '\0';
            for (size_t k = 0; k < c->n && used < sizeof(cols); k++) {
                int w =
                    snprintf(cols + used, sizeof(cols) - used, "%s%s", k ? ", " : "", c->names[k]);
                used += w > 0 ? (size_t)w : 0;
            }
            snprintf(err, errlen, "mapped column \"%s\" is not in the header (columns: %s)",
                     m->rules[r].header, cols);
            free(named);
            return -1;
        }
        const target_def *d = target_def_of(m->rules[r].target);
        if (ruled[d->t] && !d->many) {
            *col = i;
            snprintf(err, errlen, "column \"%s\": %s is already given by another column",
                     c->names[i], d->name);
            free(named);
            return -1;
        }
        ruled[d->t] = true;
        named[i] = true;
        c->target[i] = d->t;
        c->arg[i] = m->rules[r].arg;
    }
    for (size_t i = 0; i < c->n && m->defaults; i++) {
        roster_target t = named[i] ? RT_IGNORE : default_target(c->names[i]);
        if (t == RT_IGNORE || (ruled[t] && !target_def_of(t)->many))
            continue;
        c->target[i] = t;
        ruled[t] = true;
    }
    free(named);
    return 0;
}

static size_t first_column(const roster_columns *c, roster_target t)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->target[i] == t)
            return i;
    return ROSTER_NO_COL;
}

static int check_required(const roster_map *m, roster_columns *c, size_t *col, char *err,
                          size_t errlen)
{
    size_t full = first_column(c, RT_NAME_FULL);
    static const roster_target parts[] = {RT_FAMILY, RT_GIVEN, RT_NAME_TEXT, RT_PREFIX};
    for (size_t k = 0; full != ROSTER_NO_COL && k < 4; k++)
        if ((*col = first_column(c, parts[k])) != ROSTER_NO_COL)
            return snprintf(err, errlen,
                            "column \"%s\": %s and name.full (column \"%s\") both give the name",
                            c->names[*col], target_def_of(parts[k])->name, c->names[full]),
                   -1;
    *col = ROSTER_NO_COL;
    if (full == ROSTER_NO_COL && first_column(c, RT_FAMILY) == ROSTER_NO_COL)
        return snprintf(err, errlen,
                        "no column gives name.family (or name.full): map one, e.g. --map \"Last "
                        "Name=name.family\""),
               -1;
    if (first_column(c, RT_BIRTHDATE) == ROSTER_NO_COL)
        return snprintf(
                   err, errlen,
                   "no column gives birthDate: map one, e.g. --map \"DOB=birthDate|MM/DD/YYYY\""),
               -1;
    if (first_column(c, RT_GENDER) == ROSTER_NO_COL)
        return snprintf(err, errlen, "no column gives gender: map one, e.g. --map \"Sex=gender\""),
               -1;
    if (m->id_column) {
        size_t i = 0;
        while (i < c->n && !same_header(c->names[i], m->id_column))
            i++;
        if (i == c->n)
            return snprintf(err, errlen, "id column \"%s\" is not in the header", m->id_column), -1;
        if (c->target[i] != RT_ID && c->target[i] != RT_IDENTIFIER)
            return *col = i,
                   snprintf(err, errlen, "id column \"%s\" must be mapped to id or identifier",
                            c->names[i]),
                   -1;
        c->id_col = i;
    } else if ((c->id_col = first_column(c, RT_ID)) == ROSTER_NO_COL &&
               (c->id_col = first_column(c, RT_IDENTIFIER)) == ROSTER_NO_COL) {
        return snprintf(err, errlen,
                        "no column gives the patient id: map one to identifier (e.g. --map "
                        "\"MRN=identifier\") or to id"),
               -1;
    }
    c->id_prefix = c->target[c->id_col] == RT_ID ? NULL : m->id_prefix ? m->id_prefix : "pat-";
    return 0;
}

int roster_columns_resolve(const roster_map *m, const roster_record *header, roster_columns *c,
                           size_t *col, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    *col = ROSTER_NO_COL;
    if (column_names(header, c, col, err, errlen) != 0 ||
        apply_rules(m, c, col, err, errlen) != 0 || check_required(m, c, col, err, errlen) != 0) {
        roster_columns_clear(c);
        return -1;
    }
    return 0;
}

/* ---- rows ----------------------------------------------------------------- */

void roster_row_clear(roster_row *row)
{
    cJSON_Delete(row->doc);
    free(row->origin);
    memset(row, 0, sizeof(*row));
}

/* Record that the value at path came from column col. */
static int origin_add(roster_row *row, size_t col, const char *path)
{
    if (row->norigin == row->cap) {
        size_t cap = row->cap ? row->cap * 2 : 16;
        roster_origin *o = realloc(row->origin, cap * sizeof(*o));
        if (!o)
            return -1;
        row->origin = o;
        row->cap = cap;
    }
    roster_origin *o = &row->origin[row->norigin++];
    snprintf(o->path, sizeof(o->path), "%s", path);
    o->col = col;
    return 0;
}

static int indexed(roster_row *row, size_t col, const char *key, int index)
{
    char path[64];
    snprintf(path, sizeof(path), "%s[%d]", key, index);
    return origin_add(row, col, path);
}

/* obj[key] as an object (or array), made when missing. */
static cJSON *member(cJSON *obj, const char *key, bool array)
{
    cJSON *m = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (m)
        return m;
    m = array ? cJSON_CreateArray() : cJSON_CreateObject();
    if (m && !cJSON_AddItemToObject(obj, key, m)) {
        cJSON_Delete(m);
        m = NULL;
    }
    return m;
}

/* Append a string to the array obj[key]; record where it came from. */
static int push_string(roster_row *row, cJSON *obj, const char *prefix, const char *key,
                       const char *value, size_t col)
{
    cJSON *arr = member(obj, key, true), *s = cJSON_CreateString(value);
    char path[64];
    if (!arr || !s || !cJSON_AddItemToArray(arr, s)) {
        cJSON_Delete(arr ? s : NULL);
        return -1;
    }
    snprintf(path, sizeof(path), "%s%s[%d]", prefix, key, cJSON_GetArraySize(arr) - 1);
    return origin_add(row, col, path);
}

static int set_string(roster_row *row, cJSON *obj, const char *prefix, const char *key,
                      const char *value, size_t col)
{
    char path[64];
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (!cJSON_AddStringToObject(obj, key, value))
        return -1;
    snprintf(path, sizeof(path), "%s%s", prefix, key);
    return origin_add(row, col, path);
}

static bool date_from(const char *s, const char *fmt, char out[11])
{
    int ymd[3] = {0, 0, 0};
    bool compact = !strpbrk(fmt, "/-.");
    const char *p = s;
    for (const char *f = fmt; *f;) {
        if (*f == 'Y' || *f == 'M' || *f == 'D') {
            char k = *f;
            size_t want = 0, got = 0, least;
            int v = 0;
            while (f[want] == k)
                want++;
            least = compact || k == 'Y' ? want : 1;
            while (got < want && isdigit((unsigned char)p[got]))
                v = v * 10 + (p[got++] - '0');
            if (got < least)
                return false;
            ymd[k == 'Y' ? 0 : k == 'M' ? 1 : 2] = v;
            p += got;
            f += want;
        } else if (*p++ != *f++) {
            return false;
        }
    }
    if (*p && *p != ' ' && *p != 'T') /* a time after the date is dropped */
        return false;
    snprintf(out, 11, "%04d-%02d-%02d", ymd[0], ymd[1], ymd[2]);
    return true;
}

static const char *alias(const char *v, const char *const *table)
{
    for (size_t i = 0; table[i]; i += 2)
        if (strcasecmp(v, table[i]) == 0)
            return table[i + 1];
    return v;
}

static const char *const gender_aliases[] = {
    "male", "male",  "m",       "male",    "female", "female",  "f",   "female",  "other", "other",
    "o",    "other", "unknown", "unknown", "u",      "unknown", "unk", "unknown", NULL};
static const char *const channel_aliases[] = {
    "sms",    "sms",   "text",  "sms",   "txt",    "sms",    "phone", "phone", "call",
    "phone",  "voice", "phone", "email", "email",  "e-mail", "email", "mail",  "mail",
    "letter", "mail",  "post",  "mail",  "portal", "portal", NULL};
static const char *const language_aliases[] = {
    "english",        "en",  "spanish",    "es", "french",  "fr", "german",   "de",
    "portuguese",     "pt",  "italian",    "it", "chinese", "zh", "mandarin", "zh",
    "cantonese",      "yue", "vietnamese", "vi", "korean",  "ko", "arabic",   "ar",
    "russian",        "ru",  "tagalog",    "tl", "hindi",   "hi", "japanese", "ja",
    "polish",         "pl",  "somali",     "so", "farsi",   "fa", "punjabi",  "pa",
    "haitian creole", "ht",  "urdu",       "ur", "bengali", "bn", NULL};

static int yes_no(const char *v)
{
    static const char *const yes[] = {"yes", "y", "true", "t", "1", "active", NULL};
    static const char *const no[] = {"no", "n", "false", "f", "0", "inactive", NULL};
    for (size_t i = 0; yes[i]; i++)
        if (strcasecmp(v, yes[i]) == 0)
            return 1;
    for (size_t i = 0; no[i]; i++)
        if (strcasecmp(v, no[i]) == 0)
            return 0;
    return -1;
}

/* A patient id from an identifier: prefix, then the value with every byte
** outside [A-Za-z0-9.:-] written as _XX (so different values never meet). */
static bool make_id(const char *prefix, const char *v, char id[129])
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(prefix);
    if (n >= 129)
        return false;
    memcpy(id, prefix, n);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        bool plain = isalnum(*p) || *p == '.' || *p == ':' || *p == '-';
        if (n + (plain ? 1 : 3) > 128)
            return false;
        if (plain) {
            id[n++] = (char)*p;
        } else {
            id[n++] = '_';
            id[n++] = hex[*p >> 4];
            id[n++] = hex[*p & 15];
        }
    }
    id[n] = '\0';
    return true;
}

/* "Family, Given Middle" or "Given Middle Family" into name. */
static int full_name(roster_row *row, cJSON *name, char *v, size_t col)
{
    char *comma = strchr(v, ','), *family, *given, *save = NULL;
    if (set_string(row, name, "name.", "text", v, col) != 0)
        return -1;
    char *copy = strdup(v);
    if (!copy)
        return -1;
    if (comma) {
        copy[comma - v] = '\0';
        family = copy;
        given = copy + (comma - v) + 1;
    } else {
        char *last = strrchr(copy, ' ');
        family = last ? last + 1 : copy;
        given = last ? copy : NULL;
        if (last)
            *last = '\0';
    }
    size_t flen = strlen(family);
    family = (char *)trim(family, &flen);
    family[flen] = '\0';
    int rc = flen ? set_string(row, name, "name.", "family", family, col) : 0;
    for (char *g = given ? strtok_r(given, " \t", &save) : NULL; g && rc == 0;
         g = strtok_r(NULL, " \t", &save))
        rc = push_string(row, name, "name.", "given", g, col);
    free(copy);
    return rc;
}

static int add_conditions(roster_row *row, char *v, const char *system, size_t col)
{
    char *save = NULL;
    cJSON *arr = member(row->doc, "conditions", true);
    if (!arr)
        return -1;
    for (char *code = strtok_r(v, ";,", &save); code; code = strtok_r(NULL, ";,", &save)) {
        size_t len = strlen(code);
        code = (char *)trim(code, &len);
        code[len] = '\0';
        if (!len)
            continue;
        cJSON *c = cJSON_CreateObject();
        if (!c || !cJSON_AddItemToArray(arr, c) || !cJSON_AddStringToObject(c, "code", code) ||
            (system && !cJSON_AddStringToObject(c, "system", system)) ||
            indexed(row, col, "conditions", cJSON_GetArraySize(arr) - 1) != 0)
            return -1;
    }
    return 0;
}

static int add_identifier(roster_row *row, const char *v, const char *system, size_t col)
{
    cJSON *arr = member(row->doc, "identifiers", true), *id = cJSON_CreateObject();
    if (!arr || !id || !cJSON_AddItemToArray(arr, id)) {
        cJSON_Delete(arr ? id : NULL);
        return -1;
    }
    if ((system && !cJSON_AddStringToObject(id, "system", system)) ||
        !cJSON_AddStringToObject(id, "value", v))
        return -1;
    return indexed(row, col, "identifiers", cJSON_GetArraySize(arr) - 1);
}

static int add_lines(roster_row *row, char *v, size_t col)
{
    char *save = NULL;
    cJSON *addr = member(row->doc, "address", false);
    if (!addr)
        return -1;
    for (char *l = strtok_r(v, "\r\n", &save); l; l = strtok_r(NULL, "\r\n", &save)) {
        size_t len = strlen(l);
        l = (char *)trim(l, &len);
        l[len] = '\0';
        if (len && push_string(row, addr, "address.", "line", l, col) != 0)
            return -1;
    }
    return 0;
}

/* Put cell v (trimmed, non-empty) of column i where its target says. 0; -1
** out of memory; 1 with msg for a value the column's rule cannot read. */
static int put_cell(const roster_columns *c, size_t i, char *v, roster_row *row, char *msg,
                    size_t msglen)
{
    char date[11];
    int yn;
    const char *arg = c->arg[i];
    cJSON *doc = row->doc;
    switch (c->target[i]) {
    case RT_ID:
        if (strlen(v) > 128)
            return snprintf(msg, msglen, "longer than 128 characters: too long for an id"), 1;
        return set_string(row, doc, "", "id", v, i);
    case RT_IDENTIFIER:
        return add_identifier(row, v, arg, i);
    case RT_FAMILY:
        return set_string(row, member(doc, "name", false), "name.", "family", v, i);
    case RT_GIVEN:
        return push_string(row, member(doc, "name", false), "name.", "given", v, i);
    case RT_PREFIX:
        return push_string(row, member(doc, "name", false), "name.", "prefix", v, i);
    case RT_NAME_TEXT:
        return set_string(row, member(doc, "name", false), "name.", "text", v, i);
    case RT_NAME_FULL:
        return full_name(row, member(doc, "name", false), v, i);
    case RT_BIRTHDATE:
        if (arg && !date_from(v, arg, date))
            return snprintf(msg, msglen, "\"%s\" is not a date written %s", v, arg), 1;
        return set_string(row, doc, "", "birthDate", arg ? date : v, i);
    case RT_GENDER:
        return set_string(row, doc, "", "gender", alias(v, gender_aliases), i);
    case RT_LINE:
        return add_lines(row, v, i);
    case RT_CITY:
    case RT_STATE:
    case RT_POSTAL:
    case RT_COUNTRY:
        return set_string(row, member(doc, "address", false), "address.",
                          target_def_of(c->target[i])->path + 8, v, i);
    case RT_LANGUAGE:
        return set_string(row, doc, "", "language", alias(v, language_aliases), i);
    case RT_CHANNEL:
        return set_string(row, doc, "", "preferredChannel", alias(v, channel_aliases), i);
    case RT_CONDITIONS:
        return add_conditions(row, v, arg, i);
    case RT_ACTIVE:
        if ((yn = yes_no(v)) < 0)
            return snprintf(msg, msglen,
                            "\"%s\" is neither yes nor no (yes/no, y/n, true/false, "
                            "1/0, active/inactive)",
                            v),
                   1;
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "active");
        return cJSON_AddBoolToObject(doc, "active", yn) ? origin_add(row, i, "active") : -1;
    case RT_PHONE:
    case RT_EMAIL:
    case RT_GP:
        return set_string(row, doc, "", target_def_of(c->target[i])->path, v, i);
    case RT_IGNORE:
    case RT__COUNT:
        break;
    }
    return 0;
}

/* The cell of column i, checked and trimmed, in a new string ("" when empty). */
static char *cell(const roster_record *rec, size_t i, char *msg, size_t msglen, bool *oom)
{
    size_t at;
    *oom = false;
    if (!roster_utf8_ok(rec->fields[i], rec->lens[i], &at)) {
        if (memchr(rec->fields[i], '\0', rec->lens[i]))
            snprintf(msg, msglen, "contains a NUL byte (byte %zu)", at + 1);
        else
            snprintf(msg, msglen, "not valid UTF-8 (byte %zu of the field)", at + 1);
        return NULL;
    }
    char *v = dup_trimmed(rec->fields[i], rec->lens[i]);
    *oom = !v;
    if (!v)
        snprintf(msg, msglen, "out of memory");
    return v;
}

int roster_row_build(const roster_columns *c, const roster_record *rec, roster_row *row,
                     size_t *col, char *msg, size_t msglen)
{
    memset(row, 0, sizeof(*row));
    if (!(row->doc = cJSON_CreateObject()))
        return snprintf(msg, msglen, "out of memory"), -1;
    for (size_t i = 0; i < c->n && i < rec->nfields; i++) {
        bool oom;
        int rc = 0;
        if (c->target[i] == RT_IGNORE)
            continue;
        *col = i;
        char *v = cell(rec, i, msg, msglen, &oom);
        if (!v)
            return -1;
        if (i == c->id_col && !*v) {
            snprintf(msg, msglen, "empty, and this column gives the patient id");
            rc = 1;
        } else if (i == c->id_col && c->id_prefix && !make_id(c->id_prefix, v, row->id)) {
            snprintf(msg, msglen,
                     "too long to make a patient id (at most 128 characters with the prefix "
                     "\"%s\")",
                     c->id_prefix);
            rc = 1;
        } else if (*v) {
            rc = put_cell(c, i, v, row, msg, msglen);
        }
        free(v);
        if (rc < 0)
            snprintf(msg, msglen, "out of memory");
        if (rc != 0)
            return -1;
    }
    *col = c->id_col;
    if (c->id_prefix) {
        if (!cJSON_AddStringToObject(row->doc, "id", row->id))
            return snprintf(msg, msglen, "out of memory"), -1;
    } else {
        snprintf(row->id, sizeof(row->id), "%s",
                 cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(row->doc, "id")));
    }
    *col = ROSTER_NO_COL;
    return 0;
}

/* Does path start with prefix, ending at a step boundary? */
static bool at_boundary(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '.' || path[n] == '[');
}

size_t roster_row_locate(const roster_columns *c, const roster_row *row, const char *model_msg)
{
    char path[128];
    size_t n = 0, best = ROSTER_NO_COL, best_len = 0;
    if (strncmp(model_msg, "patient.", 8) != 0)
        return ROSTER_NO_COL;
    for (const char *p = model_msg + 8;
         *p && n + 1 < sizeof(path) && (isalnum((unsigned char)*p) || strchr(".[]_", *p)); p++)
        path[n++] = *p;
    path[n] = '\0';
    if (strcmp(path, "id") == 0)
        return c->id_col;
    for (size_t i = 0; i < row->norigin; i++) {
        size_t len = strlen(row->origin[i].path);
        if (len > best_len && at_boundary(path, row->origin[i].path))
            best = row->origin[i].col, best_len = len;
    }
    for (size_t i = 0; best == ROSTER_NO_COL && i < c->n; i++) {
        const char *base = target_def_of(c->target[i])->path;
        if (base && (at_boundary(path, base) || at_boundary(base, path)))
            best = i;
    }
    return best;
}

/* ---- merge ------------------------------------------------------------------ */

static void drop_path(cJSON *doc, const char *path)
{
    const char *dot = strchr(path, '.');
    if (!dot) {
        cJSON_DeleteItemFromObjectCaseSensitive(doc, path);
        return;
    }
    char head[32];
    snprintf(head, sizeof(head), "%.*s", (int)(dot - path), path);
    cJSON *obj = cJSON_GetObjectItemCaseSensitive(doc, head);
    if (cJSON_IsObject(obj))
        cJSON_DeleteItemFromObjectCaseSensitive(obj, dot + 1);
}

static bool same_system(const cJSON *ident, const char *system)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ident, "system"));
    return s && system ? strcmp(s, system) == 0 : !s && !system;
}

/* Drop from doc what column i's rule gives (so a cell left empty removes it). */
static void drop_target(cJSON *doc, const roster_columns *c, size_t i)
{
    cJSON *ids = cJSON_GetObjectItemCaseSensitive(doc, "identifiers"), *it;
    switch (c->target[i]) {
    case RT_IGNORE:
    case RT_ID:
    case RT__COUNT:
        return;
    case RT_IDENTIFIER:
        for (int k = cJSON_GetArraySize(ids) - 1; k >= 0; k--)
            if ((it = cJSON_GetArrayItem(ids, k)) && same_system(it, c->arg[i]))
                cJSON_DeleteItemFromArray(ids, k);
        return;
    case RT_NAME_FULL:
        drop_path(doc, "name.family");
        drop_path(doc, "name.given");
        drop_path(doc, "name.text");
        return;
    default:
        drop_path(doc, target_def_of(c->target[i])->path);
    }
}

/* base.key's members replaced by row's (objects), or base.key by row's. */
static int overlay(cJSON *base, const cJSON *item)
{
    cJSON *dst = cJSON_GetObjectItemCaseSensitive(base, item->string), *m;
    if (cJSON_IsObject(item) && cJSON_IsObject(dst)) {
        cJSON_ArrayForEach(m, item)
        {
            cJSON *copy = cJSON_Duplicate(m, true);
            cJSON_DeleteItemFromObjectCaseSensitive(dst, m->string);
            if (!copy || !cJSON_AddItemToObject(dst, m->string, copy)) {
                cJSON_Delete(copy);
                return -1;
            }
        }
        return 0;
    }
    cJSON *copy = cJSON_Duplicate(item, true);
    if (!copy)
        return -1;
    cJSON_DeleteItemFromObjectCaseSensitive(base, item->string);
    if (!cJSON_AddItemToObject(base, item->string, copy)) {
        cJSON_Delete(copy);
        return -1;
    }
    return 0;
}

/* The row's identifiers, then the kept ones, then the cohort's if missing. */
static int identifiers(cJSON *base, const cJSON *row_ids, const char *cohort)
{
    cJSON *old = cJSON_DetachItemFromObjectCaseSensitive(base, "identifiers");
    cJSON *ids = row_ids ? cJSON_Duplicate(row_ids, true) : cJSON_CreateArray(), *it;
    bool has = false;
    if (!ids) {
        cJSON_Delete(old);
        return -1;
    }
    while (cJSON_IsArray(old) && (it = cJSON_DetachItemFromArray(old, 0)))
        cJSON_AddItemToArray(ids, it);
    cJSON_Delete(old);
    cJSON_ArrayForEach(it, ids)
    {
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "value"));
        has |= cohort && same_system(it, ROSTER_SYSTEM) && v && strcmp(v, cohort) == 0;
    }
    if (cohort && !has) {
        cJSON *mine = cJSON_CreateObject();
        if (!mine || !cJSON_AddItemToArray(ids, mine) ||
            !cJSON_AddStringToObject(mine, "system", ROSTER_SYSTEM) ||
            !cJSON_AddStringToObject(mine, "value", cohort)) {
            cJSON_Delete(ids);
            return -1;
        }
    }
    if (cJSON_GetArraySize(ids) == 0) {
        cJSON_Delete(ids);
        return 0;
    }
    return cJSON_AddItemToObject(base, "identifiers", ids) ? 0 : (cJSON_Delete(ids), -1);
}

static void drop_if_empty(cJSON *doc, const char *key)
{
    cJSON *obj = cJSON_GetObjectItemCaseSensitive(doc, key);
    if (obj && !obj->child)
        cJSON_DeleteItemFromObjectCaseSensitive(doc, key);
}

cJSON *roster_merge(const roster_columns *c, const cJSON *existing, const roster_row *row,
                    const char *cohort)
{
    cJSON *base = existing ? cJSON_Duplicate(existing, true) : cJSON_CreateObject(), *item;
    if (!base)
        return NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(base, "meta");
    for (size_t i = 0; i < c->n; i++)
        drop_target(base, c, i);
    cJSON_ArrayForEach(item, row->doc)
    {
        if (strcmp(item->string, "identifiers") != 0 && overlay(base, item) != 0) {
            cJSON_Delete(base);
            return NULL;
        }
    }
    if (identifiers(base, cJSON_GetObjectItemCaseSensitive(row->doc, "identifiers"), cohort) != 0) {
        cJSON_Delete(base);
        return NULL;
    }
    drop_if_empty(base, "name");
    drop_if_empty(base, "address");
    return base;
}
