/*
** fhir_map.c -- FHIR R4 resources <-> caremesh records: one importer and one
** exporter per resource, built from shared pieces (HumanName, Address,
** ContactPoint, Identifier, Coding, Reference, extensions). Pure: cJSON only.
** See fhir_map.h; docs/fhir.md holds the table this code implements.
*/
#include "fhir_map.h"
#include "valuesets.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHOW_MAX 80 /* longest input value quoted in a message */

/* ---- problems and paths ---- */

size_t fhir_path_push(fhir_path *p, const char *fmt, ...)
{
    size_t before = p->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->buf + p->len, sizeof(p->buf) - p->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(p->buf) - p->len) {
        memcpy(p->buf + sizeof(p->buf) - 4, "...", 4);
        p->len = sizeof(p->buf) - 1;
    } else {
        p->len += (size_t)n;
    }
    return before;
}

void fhir_path_pop(fhir_path *p, size_t len)
{
    if (len < sizeof(p->buf)) {
        p->len = len;
        p->buf[len] = '\0';
    }
}

void fhir_problem(fhir_problems *p, const fhir_path *at, const char *fmt, ...)
{
    char msg[FHIR_PATH_MAX + 512];
    size_t off = 0;
    va_list ap;
    if (p->n >= FHIR_PROBLEMS_MAX || p->oom) {
        p->dropped++;
        return;
    }
    if (at && at->len > 0)
        off = (size_t)snprintf(msg, sizeof(msg), "%s: ", at->buf);
    va_start(ap, fmt);
    vsnprintf(msg + off, sizeof(msg) - off, fmt, ap);
    va_end(ap);
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        char **grown = realloc(p->msgs, cap * sizeof(*grown));
        if (!grown) {
            p->oom = true;
            p->dropped++;
            return;
        }
        p->msgs = grown;
        p->cap = cap;
    }
    if (!(p->msgs[p->n] = strdup(msg))) {
        p->oom = true;
        p->dropped++;
        return;
    }
    p->n++;
}

void fhir_problems_free(fhir_problems *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->msgs[i]);
    free(p->msgs);
    memset(p, 0, sizeof(*p));
}

size_t fhir_problems_count(const fhir_problems *p)
{
    return p->n + p->dropped;
}

/* ---- values ---- */

static bool digits(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static int num(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

static bool date_prefix_ok(const char *s)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' || !digits(s + 8, 2))
        return false;
    int y = num(s, 4), m = num(s + 5, 2), d = num(s + 8, 2);
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1000 || m < 1 || m > 12 || d < 1)
        return false;
    return d <= days[m - 1] + (m == 2 && leap);
}

bool fhir_date_ok(const char *s)
{
    return s && strlen(s) == 10 && date_prefix_ok(s);
}

bool fhir_datetime_ok(const char *s)
{
    if (!s || strlen(s) < 10 || !date_prefix_ok(s))
        return false;
    if (s[10] == '\0')
        return true;
    const char *t = s + 10;
    if (t[0] != 'T' || !digits(t + 1, 2) || t[3] != ':' || !digits(t + 4, 2) ||
        num(t + 1, 2) > 23 || num(t + 4, 2) > 59)
        return false;
    t += 6;
    if (t[0] == ':') {
        if (!digits(t + 1, 2) || num(t + 1, 2) > 60)
            return false;
        t += 3;
        if (t[0] == '.') {
            t++;
            if (*t < '0' || *t > '9')
                return false;
            while (*t >= '0' && *t <= '9')
                t++;
        }
    }
    if (strcmp(t, "Z") == 0)
        return true;
    return (t[0] == '+' || t[0] == '-') && digits(t + 1, 2) && t[3] == ':' && digits(t + 4, 2) &&
           t[6] == '\0' && num(t + 1, 2) <= 14 && num(t + 4, 2) <= 59;
}

static bool id_chars_ok(const char *s, size_t max, bool cm)
{
    size_t n = 0;
    if (!s)
        return false;
    for (; s[n]; n++) {
        char c = s[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || (cm && (c == '_' || c == ':'));
        if (!ok || n >= max)
            return false;
    }
    return n > 0;
}

bool fhir_id_ok(const char *s)
{
    return id_chars_ok(s, FHIR_ID_MAX, false);
}

bool fhir_cm_id_ok(const char *s)
{
    return id_chars_ok(s, FHIR_CM_ID_MAX, true);
}

static uint32_t key_hash(const char *s);

const char *fhir_id_for(const char *cm_id, char *buf)
{
    size_t n = 0, keep = FHIR_ID_MAX - 9;
    if (fhir_id_ok(cm_id)) {
        snprintf(buf, FHIR_ID_BUFSZ, "%s", cm_id);
        return buf;
    }
    uint32_t h = key_hash(cm_id);
    for (; cm_id[n] && n < keep; n++) {
        char c = cm_id[n];
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.';
        buf[n] = ok ? c : '-';
    }
    snprintf(buf + n, FHIR_ID_BUFSZ - n, "-%08x", (unsigned)h);
    return buf;
}

/* "..." quoted and cut for messages. */
static const char *show(const char *s, char *buf, size_t bufsz)
{
    size_t n = strlen(s);
    if (n <= SHOW_MAX)
        snprintf(buf, bufsz, "\"%s\"", s);
    else
        snprintf(buf, bufsz, "\"%.*s...\"", SHOW_MAX, s);
    return buf;
}

/* HL7 code systems and the caremesh values they stand for. */
#define SYS_ORG_TYPE  "http://terminology.hl7.org/CodeSystem/organization-type"
#define SYS_PRAC_ROLE "http://terminology.hl7.org/CodeSystem/practitioner-role"
#define SYS_BCP47     "urn:ietf:bcp:47"

typedef struct code_pair {
    const char *cm, *hl7;
} code_pair;

/* Export writes the first pair of a caremesh value; import reads any. */
static const code_pair org_types[] = {
    {"clinic", "prov"},
    {"hospital", "prov"},
    {"community_pharmacy", "prov"},
    {"specialist_practice", "prov"},
    {"public_health", "govt"},
    {"community_org", "cg"},
    {"payer", "pay"},
    {"payer", "ins"},
    {"other", "other"},
    {NULL, NULL},
};
static const code_pair prac_roles[] = {
    {"physician", "doctor"},      {"nurse", "nurse"}, {"nurse_practitioner", "nurse"},
    {"pharmacist", "pharmacist"}, {NULL, NULL},
};

/* The caremesh value of an HL7 code, when only one caremesh value has it
** (import) or the HL7 code of a caremesh value (export). NULL when none. */
static const char *hl7_to_cm(const code_pair *t, const char *hl7)
{
    const char *found = NULL;
    for (; t->cm; t++) {
        if (strcmp(t->hl7, hl7) != 0)
            continue;
        if (found)
            return NULL; /* ambiguous: several caremesh values */
        found = t->cm;
    }
    return found;
}

static const char *cm_to_hl7(const code_pair *t, const char *cm)
{
    for (; t->cm; t++)
        if (strcmp(t->cm, cm) == 0)
            return t->hl7;
    return NULL;
}

/* ---- the key map ---- */

/* FNV-1a */
static uint32_t key_hash(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h;
}

bool fhir_keys_init(fhir_keys *m, size_t keys)
{
    m->cap = 64;
    m->n = 0;
    while (m->cap < keys * 2)
        m->cap *= 2;
    m->slots = calloc(m->cap, sizeof(*m->slots));
    return m->slots != NULL;
}

void fhir_keys_free(fhir_keys *m)
{
    for (size_t i = 0; m->slots && i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

char *fhir_key(char tag, const char *type, const char *id, char *buf, size_t bufsz)
{
    if (type)
        snprintf(buf, bufsz, "%c%s/%s", tag, type, id);
    else
        snprintf(buf, bufsz, "%c%s", tag, id);
    return buf;
}

/* The entry of key, or -1. */
int fhir_keys_get(const fhir_keys *m, const char *key)
{
    if (!m->slots)
        return -1;
    for (size_t i = key_hash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->slots[i].key)
            return -1;
        if (strcmp(m->slots[i].key, key) == 0)
            return m->slots[i].value;
    }
}

static bool keys_grow(fhir_keys *m)
{
    fhir_keys bigger = {calloc(m->cap * 2, sizeof(*m->slots)), m->cap * 2, 0};
    if (!bigger.slots)
        return false;
    for (size_t i = 0; i < m->cap; i++) {
        struct fhir_slot *s = &m->slots[i];
        if (!s->key)
            continue;
        size_t j = key_hash(s->key) & (bigger.cap - 1);
        while (bigger.slots[j].key)
            j = (j + 1) & (bigger.cap - 1);
        bigger.slots[j] = *s;
        bigger.n++;
    }
    free(m->slots);
    *m = bigger;
    return true;
}

int fhir_keys_put(fhir_keys *m, const char *key, int value)
{
    if (!m->slots || ((m->n + 1) * 2 > m->cap && !keys_grow(m)))
        return -2;
    for (size_t i = key_hash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->slots[i].key) {
            if (!(m->slots[i].key = strdup(key)))
                return -2;
            m->slots[i].value = value;
            m->n++;
            return -1;
        }
        if (strcmp(m->slots[i].key, key) == 0)
            return m->slots[i].value;
    }
}

/* ---- import: reading members with their paths ---- */

enum { J_STRING, J_OBJECT, J_ARRAY, J_BOOL, J_NUMBER };
static const char *const j_names[] = {"a string", "an object", "an array", "true or false",
                                      "a number"};

static size_t problem_at(fhir_in *in, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A problem at path + ".name" (name NULL: at path). Returns 1. */
static size_t problem_at(fhir_in *in, const char *name, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    size_t before = name ? fhir_path_push(&in->path, ".%s", name) : in->path.len;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fhir_problem(in->problems, &in->path, "%s", msg);
    fhir_path_pop(&in->path, before);
    return 1;
}

static bool is_kind(const cJSON *v, int want)
{
    switch (want) {
    case J_STRING:
        return cJSON_IsString(v);
    case J_OBJECT:
        return cJSON_IsObject(v);
    case J_ARRAY:
        return cJSON_IsArray(v);
    case J_BOOL:
        return cJSON_IsBool(v);
    default:
        return cJSON_IsNumber(v);
    }
}

/* obj.name when it is of kind want; NULL when absent (a problem when
** required) or of another kind (a problem). *bad counts problems. */
static const cJSON *get(fhir_in *in, const cJSON *obj, const char *name, int want, bool required,
                        size_t *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v) {
        if (required)
            *bad += problem_at(in, name, "required");
        return NULL;
    }
    if (!is_kind(v, want)) {
        *bad += problem_at(in, name, "expected %s, got %s", j_names[want], cm_values_type_name(v));
        return NULL;
    }
    if (want == J_STRING && v->valuestring[0] == '\0') {
        *bad += problem_at(in, name, "empty string");
        return NULL;
    }
    return v;
}

static const char *get_str(fhir_in *in, const cJSON *obj, const char *name, bool required,
                           size_t *bad)
{
    const cJSON *v = get(in, obj, name, J_STRING, required, bad);
    return v ? v->valuestring : NULL;
}

/* Copy obj.name (a string) to doc.as when present. */
static void copy_str(fhir_in *in, const cJSON *obj, const char *name, cJSON *doc, const char *as,
                     bool required, size_t *bad)
{
    const char *s = get_str(in, obj, name, required, bad);
    if (s)
        cJSON_AddStringToObject(doc, as, s);
}

static void copy_bool(fhir_in *in, const cJSON *obj, const char *name, cJSON *doc, size_t *bad)
{
    const cJSON *v = get(in, obj, name, J_BOOL, false, bad);
    if (v)
        cJSON_AddBoolToObject(doc, name, cJSON_IsTrue(v));
}

/* A code from a list: obj.name -> doc.as. */
static void copy_code(fhir_in *in, const cJSON *obj, const char *name, const char *const *allowed,
                      cJSON *doc, const char *as, bool required, size_t *bad)
{
    char shown[SHOW_MAX + 8], list[256];
    const char *s = get_str(in, obj, name, required, bad);
    if (!s)
        return;
    if (!cm_values_listed(allowed, s)) {
        cm_values_join(allowed, list, sizeof(list));
        *bad += problem_at(in, name, "%s is not one of %s", show(s, shown, sizeof(shown)), list);
        return;
    }
    cJSON_AddStringToObject(doc, as, s);
}

static void copy_date(fhir_in *in, const cJSON *obj, const char *name, cJSON *doc, const char *as,
                      bool datetime, bool required, size_t *bad)
{
    char shown[SHOW_MAX + 8];
    const char *s = get_str(in, obj, name, required, bad);
    if (!s)
        return;
    if (datetime ? !fhir_datetime_ok(s) : !fhir_date_ok(s)) {
        *bad += problem_at(in, name, "%s is not a %s", show(s, shown, sizeof(shown)),
                           datetime ? "date or date-time (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)"
                                    : "date (YYYY-MM-DD)");
        return;
    }
    cJSON_AddStringToObject(doc, as, s);
}

/* Iterate the objects of array obj.name, path at "name[i]"; a non-object
** item is a problem. Returns the item count seen. */
typedef void (*each_fn)(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad);

static int each(fhir_in *in, const cJSON *obj, const char *name, each_fn fn, void *ud, size_t *bad)
{
    const cJSON *arr = get(in, obj, name, J_ARRAY, false, bad), *item;
    int i = 0;
    cJSON_ArrayForEach(item, arr)
    {
        size_t before = fhir_path_push(&in->path, ".%s[%d]", name, i);
        if (!cJSON_IsObject(item))
            *bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(item));
        else
            fn(in, item, i, ud, bad);
        fhir_path_pop(&in->path, before);
        i++;
    }
    return i;
}

/* Array of strings obj.name -> doc.as. */
static void copy_strings(fhir_in *in, const cJSON *obj, const char *name, cJSON *doc,
                         const char *as, size_t *bad)
{
    const cJSON *arr = get(in, obj, name, J_ARRAY, false, bad), *item;
    cJSON *out;
    int i = 0;
    if (!arr)
        return;
    out = cJSON_AddArrayToObject(doc, as);
    cJSON_ArrayForEach(item, arr)
    {
        if (!cJSON_IsString(item) || !item->valuestring[0]) {
            size_t before = fhir_path_push(&in->path, ".%s[%d]", name, i);
            *bad += problem_at(in, NULL, "expected a non-empty string, got %s",
                               cm_values_type_name(item));
            fhir_path_pop(&in->path, before);
        } else if (out) {
            cJSON_AddItemToArray(out, cJSON_CreateString(item->valuestring));
        }
        i++;
    }
}

/* ---- import: shared datatypes ---- */

static void read_name(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad)
{
    cJSON *doc = ud, *name;
    (void)i;
    if (cJSON_GetObjectItemCaseSensitive(doc, "name"))
        return; /* the first name is caremesh's; the others are not kept */
    if (!(name = cJSON_AddObjectToObject(doc, "name")))
        return;
    copy_str(in, item, "family", name, "family", true, bad);
    copy_strings(in, item, "given", name, "given", bad);
    copy_strings(in, item, "prefix", name, "prefix", bad);
    copy_str(in, item, "text", name, "text", false, bad);
}

/* HumanName[] -> doc.name: the first name (required). */
static void import_name(fhir_in *in, const cJSON *res, cJSON *doc, size_t *bad)
{
    if (each(in, res, "name", read_name, doc, bad) == 0 &&
        !cJSON_GetObjectItemCaseSensitive(res, "name"))
        *bad += problem_at(in, "name", "required (caremesh keeps a name with a family name)");
    else if (!cJSON_GetObjectItemCaseSensitive(doc, "name") && *bad == 0)
        *bad += problem_at(in, "name", "required (caremesh keeps a name with a family name)");
}

static void read_telecom(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad)
{
    cJSON *doc = ud;
    size_t was = *bad;
    (void)i;
    const char *sys = get_str(in, item, "system", false, bad);
    const char *value = get_str(in, item, "value", false, bad);
    if (*bad != was || !sys || !value)
        return;
    if ((strcmp(sys, "phone") == 0 || strcmp(sys, "email") == 0) &&
        !cJSON_GetObjectItemCaseSensitive(doc, sys))
        cJSON_AddStringToObject(doc, sys, value);
}

/* ContactPoint[] -> doc.phone, doc.email: the first of each. */
static void import_telecom(fhir_in *in, const cJSON *res, cJSON *doc, size_t *bad)
{
    each(in, res, "telecom", read_telecom, doc, bad);
}

static void read_address(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad)
{
    static const char *const parts[] = {"city", "state", "postalCode", "country"};
    cJSON *doc = ud, *addr;
    if (i > 0 || !(addr = cJSON_AddObjectToObject(doc, "address")))
        return;
    copy_strings(in, item, "line", addr, "line", bad);
    for (size_t k = 0; k < sizeof(parts) / sizeof(parts[0]); k++)
        copy_str(in, item, parts[k], addr, parts[k], false, bad);
}

static void import_address(fhir_in *in, const cJSON *res, cJSON *doc, size_t *bad)
{
    each(in, res, "address", read_address, doc, bad);
}

static void read_identifier(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad)
{
    cJSON *list = ud, *out;
    (void)i;
    const char *sys = get_str(in, item, "system", false, bad);
    const char *value = get_str(in, item, "value", true, bad);
    if (!value || (sys && strcmp(sys, FHIR_SYS_CM_ID) == 0))
        return;
    if ((out = cJSON_CreateObject())) {
        if (sys)
            cJSON_AddStringToObject(out, "system", sys);
        cJSON_AddStringToObject(out, "value", value);
        cJSON_AddItemToArray(list, out);
    }
}

const char *fhir_resource_cm_id(const cJSON *res)
{
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(res, "identifier"), *item;
    cJSON_ArrayForEach(item, ids)
    {
        const cJSON *sys = cJSON_GetObjectItemCaseSensitive(item, "system");
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(item, "value");
        if (cJSON_IsString(sys) && strcmp(sys->valuestring, FHIR_SYS_CM_ID) == 0 &&
            cJSON_IsString(value))
            return value->valuestring;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(res, "id");
    return cJSON_IsString(id) ? id->valuestring : NULL;
}

/* The value[x] of the extension with url, checked to be of kind want. */
static const cJSON *extension(fhir_in *in, const cJSON *res, const char *url, const char *value,
                              int want, size_t *bad)
{
    const cJSON *exts = get(in, res, "extension", J_ARRAY, false, bad), *item;
    int i = 0;
    cJSON_ArrayForEach(item, exts)
    {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(item, "url");
        if (cJSON_IsString(u) && strcmp(u->valuestring, url) == 0) {
            size_t before = fhir_path_push(&in->path, ".extension[%d]", i);
            const cJSON *v = get(in, item, value, want, true, bad);
            fhir_path_pop(&in->path, before);
            return v;
        }
        i++;
    }
    return NULL;
}

/* Resolve Reference ref (at the current path) to one of the FHIR types in
** want (NULL-terminated); the target's caremesh id, or NULL with a problem. */
static const char *resolve_ref(fhir_in *in, const cJSON *ref, const char *const *want, size_t *bad,
                               const char **type)
{
    char why[256], shown[SHOW_MAX + 8], list[128];
    fhir_target t = {0};
    if (!cJSON_IsObject(ref)) {
        *bad += problem_at(in, NULL, "expected a Reference (an object), got %s",
                           cm_values_type_name(ref));
        return NULL;
    }
    const char *text = get_str(in, ref, "reference", true, bad);
    if (!text)
        return NULL;
    if (in->resolve(in->ud, text, &t, why, sizeof(why)) != 0) {
        *bad += problem_at(in, "reference", "%s %s", show(text, shown, sizeof(shown)), why);
        return NULL;
    }
    if (!cm_values_listed(want, t.type)) {
        cm_values_join(want, list, sizeof(list));
        *bad += problem_at(in, "reference", "%s is a %s, expected %s",
                           show(text, shown, sizeof(shown)), t.type, list);
        return NULL;
    }
    if (type)
        *type = t.type;
    return t.id;
}

/* Resolve obj.name (a Reference); NULL when absent (a problem if required). */
static const char *reference(fhir_in *in, const cJSON *obj, const char *name,
                             const char *const *want, bool required, size_t *bad, const char **type)
{
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(obj, name);
    const char *id = NULL;
    if (!ref) {
        if (required)
            *bad += problem_at(in, name, "required");
        return NULL;
    }
    size_t before = fhir_path_push(&in->path, ".%s", name);
    id = resolve_ref(in, ref, want, bad, type);
    fhir_path_pop(&in->path, before);
    return id;
}

static const char *const to_patient[] = {"Patient", NULL};
static const char *const to_org[] = {"Organization", NULL};
static const char *const to_actor[] = {"Organization", "Practitioner", "PractitionerRole", NULL};
static const char *const to_any[] = {"Organization", "Practitioner", "PractitionerRole", "Patient",
                                     NULL};

/* The coding of a CodeableConcept obj.name in system (path reported at it). */
static const cJSON *coding_in(const cJSON *cc, const char *system, int *index)
{
    const cJSON *item;
    int i = 0;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(cc, "coding"))
    {
        const cJSON *sys = cJSON_GetObjectItemCaseSensitive(item, "system");
        if (cJSON_IsString(sys) && strcmp(sys->valuestring, system) == 0) {
            *index = i;
            return item;
        }
        i++;
    }
    return NULL;
}

/* Check the shape of CodeableConcept cc at the current path: coding[] objects
** with string system/code/display, text a string. */
static void check_concept(fhir_in *in, const cJSON *cc, size_t *bad)
{
    const cJSON *codings = get(in, cc, "coding", J_ARRAY, false, bad), *item;
    int i = 0;
    get_str(in, cc, "text", false, bad);
    cJSON_ArrayForEach(item, codings)
    {
        size_t before = fhir_path_push(&in->path, ".coding[%d]", i++);
        if (!cJSON_IsObject(item)) {
            *bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(item));
        } else {
            get_str(in, item, "system", false, bad);
            get_str(in, item, "code", false, bad);
            get_str(in, item, "display", false, bad);
        }
        fhir_path_pop(&in->path, before);
    }
}

/* A caremesh code from CodeableConcept cc: the coding of system cm_sys
** (checked against allowed), else an HL7 coding (hl7_sys, via table), else
** NULL. Problems are reported at the current path (cc's). */
static const char *concept_code(fhir_in *in, const cJSON *cc, const char *cm_sys,
                                const char *const *allowed, const char *hl7_sys,
                                const code_pair *table, size_t *bad)
{
    char shown[SHOW_MAX + 8], list[320];
    int i = 0;
    size_t was = *bad;
    check_concept(in, cc, bad);
    if (*bad != was)
        return NULL;
    const cJSON *c = coding_in(cc, cm_sys, &i);
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(c, "code");
    if (c && cJSON_IsString(code)) {
        if (cm_values_listed(allowed, code->valuestring))
            return code->valuestring;
        size_t before = fhir_path_push(&in->path, ".coding[%d].code", i);
        cm_values_join(allowed, list, sizeof(list));
        *bad += problem_at(in, NULL, "%s is not one of %s",
                           show(code->valuestring, shown, sizeof(shown)), list);
        fhir_path_pop(&in->path, before);
        return NULL;
    }
    if (hl7_sys && (c = coding_in(cc, hl7_sys, &i)) &&
        cJSON_IsString(code = cJSON_GetObjectItemCaseSensitive(c, "code")))
        return hl7_to_cm(table, code->valuestring);
    return NULL;
}

/* ---- import: the resources ---- */

size_t fhir_import_organization(fhir_in *in, const cJSON *res, cJSON *doc)
{
    size_t bad = 0;
    const cJSON *types = get(in, res, "type", J_ARRAY, false, &bad), *cc;
    const char *kind = NULL;
    int i = 0;
    copy_str(in, res, "name", doc, "name", true, &bad);
    cJSON_ArrayForEach(cc, types)
    {
        size_t before = fhir_path_push(&in->path, ".type[%d]", i++);
        if (!cJSON_IsObject(cc))
            bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(cc));
        else if (!kind)
            kind = concept_code(in, cc, FHIR_SYS_ORG_KIND, cm_values_organization_kinds,
                                SYS_ORG_TYPE, org_types, &bad);
        fhir_path_pop(&in->path, before);
    }
    cJSON_AddStringToObject(doc, "kind", kind ? kind : "other");
    const cJSON *node = extension(in, res, FHIR_EXT_NODE, "valueString", J_STRING, &bad);
    if (node)
        cJSON_AddStringToObject(doc, "node", node->valuestring);
    copy_bool(in, res, "active", doc, &bad);
    import_telecom(in, res, doc, &bad);
    import_address(in, res, doc, &bad);
    return bad;
}

static void read_language(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad)
{
    cJSON *doc = ud;
    const cJSON *pref = get(in, item, "preferred", J_BOOL, false, bad);
    const cJSON *lang = get(in, item, "language", J_OBJECT, true, bad);
    const cJSON *have = cJSON_GetObjectItemCaseSensitive(doc, "language");
    int k = 0;
    if (!lang || (have && !cJSON_IsTrue(pref)))
        return; /* the preferred language, else the first */
    (void)i;
    size_t before = fhir_path_push(&in->path, ".language");
    check_concept(in, lang, bad);
    const cJSON *c = coding_in(lang, SYS_BCP47, &k);
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(c, "code");
    if (!cJSON_IsString(code))
        code = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(lang, "coding"), 0), "code");
    if (cJSON_IsString(code) && code->valuestring[0]) {
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "language");
        cJSON_AddStringToObject(doc, "language", code->valuestring);
    } else {
        *bad += problem_at(in, NULL, "expected a coding with a language code (urn:ietf:bcp:47)");
    }
    fhir_path_pop(&in->path, before);
}

static void read_general_practitioner(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad)
{
    cJSON *doc = ud;
    const char *type = NULL, *id = resolve_ref(in, item, to_any, bad, &type);
    (void)i;
    /* caremesh keeps the primary-care organization; practitioners are not kept */
    if (id && strcmp(type, "Organization") == 0 &&
        !cJSON_GetObjectItemCaseSensitive(doc, "generalPractitioner"))
        cJSON_AddStringToObject(doc, "generalPractitioner", id);
}

size_t fhir_import_patient(fhir_in *in, const cJSON *res, cJSON *doc)
{
    size_t bad = 0;
    import_name(in, res, doc, &bad);
    copy_date(in, res, "birthDate", doc, "birthDate", false, true, &bad);
    copy_code(in, res, "gender", cm_values_genders, doc, "gender", true, &bad);
    import_telecom(in, res, doc, &bad);
    import_address(in, res, doc, &bad);
    each(in, res, "communication", read_language, doc, &bad);
    const cJSON *ch = extension(in, res, FHIR_EXT_CHANNEL, "valueCode", J_STRING, &bad);
    if (ch && cm_values_listed(cm_values_channels, ch->valuestring))
        cJSON_AddStringToObject(doc, "preferredChannel", ch->valuestring);
    else if (ch)
        bad += problem_at(in, "extension",
                          "preferredChannel \"%s\" is not one of phone, sms, "
                          "email, mail, portal",
                          ch->valuestring);
    cJSON *ids = cJSON_CreateArray();
    each(in, res, "identifier", read_identifier, ids, &bad);
    if (cJSON_GetArraySize(ids) > 0)
        cJSON_AddItemToObject(doc, "identifiers", ids);
    else
        cJSON_Delete(ids);
    each(in, res, "generalPractitioner", read_general_practitioner, doc, &bad);
    copy_bool(in, res, "active", doc, &bad);
    return bad;
}

size_t fhir_import_practitioner(fhir_in *in, const cJSON *res, cJSON *doc)
{
    size_t bad = 0;
    cJSON *telecom = cJSON_CreateObject();
    import_name(in, res, doc, &bad);
    copy_bool(in, res, "active", doc, &bad);
    if (telecom) { /* the role's phone and email come first: keep these aside */
        import_telecom(in, res, telecom, &bad);
        const cJSON *v;
        cJSON_ArrayForEach(v, telecom)
        {
            if (!cJSON_GetObjectItemCaseSensitive(doc, v->string))
                cJSON_AddStringToObject(doc, v->string, v->valuestring);
        }
        cJSON_Delete(telecom);
    }
    return bad;
}

size_t fhir_import_practitioner_role(fhir_in *in, const cJSON *res, cJSON *doc)
{
    size_t bad = 0;
    const cJSON *codes = get(in, res, "code", J_ARRAY, false, &bad), *cc;
    const char *role = NULL, *org;
    int i = 0;
    cJSON_ArrayForEach(cc, codes)
    {
        size_t before = fhir_path_push(&in->path, ".code[%d]", i++);
        if (!cJSON_IsObject(cc))
            bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(cc));
        else if (!role)
            role = concept_code(in, cc, FHIR_SYS_ROLE, cm_values_provider_roles, SYS_PRAC_ROLE,
                                prac_roles, &bad);
        fhir_path_pop(&in->path, before);
    }
    if (role) {
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "role");
        cJSON_AddStringToObject(doc, "role", role);
    } else if (bad == 0 && !cJSON_GetObjectItemCaseSensitive(doc, "role"))
        bad += problem_at(in, "code",
                          "required: a coding of %s (physician, pharmacist, ...) or "
                          "of %s (doctor, nurse, pharmacist)",
                          FHIR_SYS_ROLE, SYS_PRAC_ROLE);
    if ((org = reference(in, res, "organization", to_org,
                         !cJSON_GetObjectItemCaseSensitive(doc, "organization"), &bad, NULL))) {
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "organization");
        cJSON_AddStringToObject(doc, "organization", org);
    }
    const cJSON *specs = get(in, res, "specialty", J_ARRAY, false, &bad);
    const cJSON *spec = cJSON_GetArrayItem(specs, 0);
    if (spec) {
        size_t before = fhir_path_push(&in->path, ".specialty[0]");
        if (!cJSON_IsObject(spec))
            bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(spec));
        else {
            const char *text = get_str(in, spec, "text", false, &bad);
            const cJSON *c0 =
                cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(spec, "coding"), 0);
            const cJSON *disp = cJSON_GetObjectItemCaseSensitive(c0, "display");
            if (!text && cJSON_IsString(disp))
                text = disp->valuestring;
            if (text) {
                cJSON_DeleteItemFromObjectCaseSensitive(doc, "specialty");
                cJSON_AddStringToObject(doc, "specialty", text);
            }
        }
        fhir_path_pop(&in->path, before);
    }
    cJSON *telecom = cJSON_CreateObject();
    if (telecom) { /* the role's contact points replace the person's */
        import_telecom(in, res, telecom, &bad);
        const cJSON *v;
        cJSON_ArrayForEach(v, telecom)
        {
            cJSON_DeleteItemFromObjectCaseSensitive(doc, v->string);
            cJSON_AddStringToObject(doc, v->string, v->valuestring);
        }
        cJSON_Delete(telecom);
    }
    const cJSON *active = get(in, res, "active", J_BOOL, false, &bad);
    if (cJSON_IsFalse(active)) {
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "active");
        cJSON_AddFalseToObject(doc, "active");
    }
    return bad;
}

size_t fhir_import_consent(fhir_in *in, const cJSON *res, cJSON *doc)
{
    size_t bad = 0;
    const char *id;
    char shown[SHOW_MAX + 8], list[128];
    copy_code(in, res, "status", cm_values_consent_statuses, doc, "status", true, &bad);
    if ((id = reference(in, res, "patient", to_patient, true, &bad, NULL)))
        cJSON_AddStringToObject(doc, "patient", id);
    copy_date(in, res, "dateTime", doc, "recorded", true, false, &bad);
    const cJSON *note = extension(in, res, FHIR_EXT_NOTE, "valueString", J_STRING, &bad);
    if (note)
        cJSON_AddStringToObject(doc, "note", note->valuestring);
    const cJSON *prov = get(in, res, "provision", J_OBJECT, true, &bad);
    if (!prov)
        return bad;
    size_t before = fhir_path_push(&in->path, ".provision");
    copy_code(in, prov, "type", cm_values_decisions, doc, "decision", true, &bad);
    /* purpose: a Coding of urn:caremesh:purpose, or a caremesh purpose code */
    const cJSON *items = get(in, prov, "purpose", J_ARRAY, true, &bad), *c;
    const char *purpose = NULL;
    int i = 0, at = -1;
    cJSON_ArrayForEach(c, items)
    {
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(c, "code");
        const cJSON *sys = cJSON_GetObjectItemCaseSensitive(c, "system");
        if (!purpose && cJSON_IsString(code) &&
            (!cJSON_IsString(sys) || strcmp(sys->valuestring, FHIR_SYS_PURPOSE) == 0)) {
            purpose = code->valuestring;
            at = i;
        }
        i++;
    }
    if (items && !purpose)
        bad += problem_at(in, "purpose",
                          "required: a Coding of %s (referral, outreach, "
                          "immunization, care_coordination)",
                          FHIR_SYS_PURPOSE);
    else if (purpose && !cm_values_listed(cm_values_purposes, purpose)) {
        cm_values_join(cm_values_purposes, list, sizeof(list));
        size_t b2 = fhir_path_push(&in->path, ".purpose[%d].code", at);
        bad +=
            problem_at(in, NULL, "%s is not one of %s", show(purpose, shown, sizeof(shown)), list);
        fhir_path_pop(&in->path, b2);
    } else if (purpose) {
        cJSON_AddStringToObject(doc, "purpose", purpose);
    }
    /* the recipient: the first actor that is an Organization */
    const cJSON *actors = get(in, prov, "actor", J_ARRAY, false, &bad), *a;
    i = 0;
    cJSON_ArrayForEach(a, actors)
    {
        const char *type = NULL;
        size_t b2 = fhir_path_push(&in->path, ".actor[%d]", i++);
        if (!cJSON_IsObject(a)) {
            bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(a));
        } else if ((id = reference(in, a, "reference", to_any, true, &bad, &type)) &&
                   strcmp(type, "Organization") == 0 &&
                   !cJSON_GetObjectItemCaseSensitive(doc, "organization")) {
            cJSON_AddStringToObject(doc, "organization", id);
        }
        fhir_path_pop(&in->path, b2);
    }
    const cJSON *period = get(in, prov, "period", J_OBJECT, false, &bad);
    if (period) {
        size_t b2 = fhir_path_push(&in->path, ".period");
        cJSON *p = cJSON_AddObjectToObject(doc, "period");
        copy_date(in, period, "start", p, "start", false, true, &bad);
        copy_date(in, period, "end", p, "end", false, false, &bad);
        fhir_path_pop(&in->path, b2);
    }
    fhir_path_pop(&in->path, before);
    return bad;
}

/* A positiveInt element or its String form holding a number. */
static void copy_dose(fhir_in *in, const cJSON *pa, const char *base, cJSON *doc, const char *as,
                      size_t *bad)
{
    char name[64], shown[SHOW_MAX + 8];
    snprintf(name, sizeof(name), "%sPositiveInt", base);
    const cJSON *v = get(in, pa, name, J_NUMBER, false, bad);
    if (v) {
        if (v->valuedouble < 1 || v->valuedouble != floor(v->valuedouble))
            *bad += problem_at(in, name, "%g is not a positive integer", v->valuedouble);
        else
            cJSON_AddNumberToObject(doc, as, v->valuedouble);
        return;
    }
    snprintf(name, sizeof(name), "%sString", base);
    const char *s = get_str(in, pa, name, false, bad);
    char *end = NULL;
    double d = s ? strtod(s, &end) : 0;
    if (s && end && end != s && *end == '\0' && isfinite(d))
        cJSON_AddNumberToObject(doc, as, d);
    else if (s && strcmp(s, "unknown") != 0)
        *bad += problem_at(in, name, "%s is not a number (caremesh keeps dose numbers)",
                           show(s, shown, sizeof(shown)));
}

static void read_performer(fhir_in *in, const cJSON *item, int i, void *ud, size_t *bad)
{
    cJSON *doc = ud;
    const char *type = NULL;
    (void)i;
    const char *id = reference(in, item, "actor", to_actor, true, bad, &type);
    if (!id)
        return;
    const char *as = strcmp(type, "Organization") == 0 ? "performer" : "practitioner";
    if (!cJSON_GetObjectItemCaseSensitive(doc, as))
        cJSON_AddStringToObject(doc, as, id);
}

/* note[0].text -> doc.note */
static void import_note(fhir_in *in, const cJSON *res, cJSON *doc, size_t *bad)
{
    const cJSON *notes = get(in, res, "note", J_ARRAY, false, bad);
    const cJSON *n0 = cJSON_GetArrayItem(notes, 0);
    if (!n0)
        return;
    size_t before = fhir_path_push(&in->path, ".note[0]");
    if (!cJSON_IsObject(n0))
        *bad += problem_at(in, NULL, "expected an Annotation (an object), got %s",
                           cm_values_type_name(n0));
    else
        copy_str(in, n0, "text", doc, "note", true, bad);
    fhir_path_pop(&in->path, before);
}

size_t fhir_import_immunization(fhir_in *in, const cJSON *res, cJSON *doc)
{
    size_t bad = 0;
    const char *id;
    copy_code(in, res, "status", cm_values_immunization_statuses, doc, "status", true, &bad);
    const cJSON *vc = get(in, res, "vaccineCode", J_OBJECT, true, &bad);
    if (vc) {
        size_t before = fhir_path_push(&in->path, ".vaccineCode");
        size_t was = bad;
        check_concept(in, vc, &bad);
        const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(vc, "coding"), 0);
        if (bad == was && !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(c0, "code"))) {
            bad += problem_at(in, "coding", "required: a coding with a code (e.g. CVX 208)");
        } else if (bad == was) {
            cJSON *v = cJSON_AddObjectToObject(doc, "vaccineCode");
            static const char *const parts[] = {"code", "system", "display"};
            for (size_t k = 0; v && k < 3; k++) {
                const cJSON *s = cJSON_GetObjectItemCaseSensitive(c0, parts[k]);
                if (cJSON_IsString(s))
                    cJSON_AddStringToObject(v, parts[k], s->valuestring);
            }
        }
        fhir_path_pop(&in->path, before);
    }
    if ((id = reference(in, res, "patient", to_patient, true, &bad, NULL)))
        cJSON_AddStringToObject(doc, "patient", id);
    if (!cJSON_GetObjectItemCaseSensitive(res, "occurrenceDateTime") &&
        cJSON_GetObjectItemCaseSensitive(res, "occurrenceString"))
        bad += problem_at(in, "occurrenceString",
                          "caremesh needs occurrenceDateTime (a date or date-time)");
    else
        copy_date(in, res, "occurrenceDateTime", doc, "occurrenceDateTime", true, true, &bad);
    each(in, res, "performer", read_performer, doc, &bad);
    if (bad == 0 && !cJSON_GetObjectItemCaseSensitive(doc, "performer"))
        bad += problem_at(in, "performer",
                          "required: an actor that is an Organization (the site that gave the "
                          "dose)");
    copy_str(in, res, "lotNumber", doc, "lotNumber", false, &bad);
    const cJSON *pas = get(in, res, "protocolApplied", J_ARRAY, false, &bad);
    const cJSON *pa = cJSON_GetArrayItem(pas, 0);
    if (pa) {
        size_t before = fhir_path_push(&in->path, ".protocolApplied[0]");
        if (!cJSON_IsObject(pa)) {
            bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(pa));
        } else {
            copy_dose(in, pa, "doseNumber", doc, "doseNumber", &bad);
            copy_dose(in, pa, "seriesDoses", doc, "seriesDoses", &bad);
            copy_str(in, pa, "series", doc, "series", false, &bad);
        }
        fhir_path_pop(&in->path, before);
    }
    import_note(in, res, doc, &bad);
    return bad;
}

size_t fhir_import_task(fhir_in *in, const cJSON *res, cJSON *doc)
{
    size_t bad = 0;
    const char *id, *type = NULL;
    copy_code(in, res, "status", cm_values_task_statuses, doc, "status", true, &bad);
    copy_code(in, res, "priority", cm_values_priorities, doc, "priority", false, &bad);
    const cJSON *code = get(in, res, "code", J_OBJECT, true, &bad);
    if (code) {
        size_t before = fhir_path_push(&in->path, ".code");
        copy_str(in, code, "text", doc, "title", true, &bad);
        fhir_path_pop(&in->path, before);
    }
    copy_str(in, res, "description", doc, "description", false, &bad);
    if ((id = reference(in, res, "for", to_patient, false, &bad, NULL)))
        cJSON_AddStringToObject(doc, "patient", id);
    if ((id = reference(in, res, "owner", to_actor, false, &bad, &type))) {
        cJSON_AddStringToObject(doc, strcmp(type, "Organization") == 0 ? "organization" : "owner",
                                id);
    }
    const cJSON *ext = extension(in, res, FHIR_EXT_ORG, "valueReference", J_OBJECT, &bad);
    if (ext) {
        size_t before = fhir_path_push(&in->path, ".extension.valueReference");
        if ((id = resolve_ref(in, ext, to_org, &bad, NULL)) &&
            !cJSON_GetObjectItemCaseSensitive(doc, "organization"))
            cJSON_AddStringToObject(doc, "organization", id);
        fhir_path_pop(&in->path, before);
    }
    if (bad == 0 && !cJSON_GetObjectItemCaseSensitive(doc, "organization"))
        bad += problem_at(in, "owner",
                          "caremesh needs the organization whose work it is: an "
                          "Organization owner, or the extension %s",
                          FHIR_EXT_ORG);
    const cJSON *pts = get(in, res, "performerType", J_ARRAY, false, &bad), *cc;
    int i = 0;
    cJSON_ArrayForEach(cc, pts)
    {
        size_t before = fhir_path_push(&in->path, ".performerType[%d]", i++);
        const char *role = cJSON_IsObject(cc)
                               ? concept_code(in, cc, FHIR_SYS_ROLE, cm_values_provider_roles,
                                              SYS_PRAC_ROLE, prac_roles, &bad)
                               : NULL;
        if (!cJSON_IsObject(cc))
            bad += problem_at(in, NULL, "expected an object, got %s", cm_values_type_name(cc));
        if (role && !cJSON_GetObjectItemCaseSensitive(doc, "ownerRole"))
            cJSON_AddStringToObject(doc, "ownerRole", role);
        fhir_path_pop(&in->path, before);
    }
    const cJSON *restr = get(in, res, "restriction", J_OBJECT, false, &bad);
    const cJSON *period = restr ? get(in, restr, "period", J_OBJECT, false, &bad) : NULL;
    if (period) {
        size_t before = fhir_path_push(&in->path, ".restriction.period");
        copy_date(in, period, "end", doc, "due", true, false, &bad);
        fhir_path_pop(&in->path, before);
    }
    import_note(in, res, doc, &bad);
    return bad;
}

size_t fhir_import_condition(fhir_in *in, const cJSON *res, cJSON **item, char *subject)
{
    size_t bad = 0;
    const char *id;
    *item = NULL;
    subject[0] = '\0';
    if ((id = reference(in, res, "subject", to_patient, true, &bad, NULL)))
        snprintf(subject, FHIR_CM_ID_MAX + 1, "%s", id);
    const cJSON *code = get(in, res, "code", J_OBJECT, true, &bad);
    if (!code)
        return bad;
    size_t before = fhir_path_push(&in->path, ".code");
    size_t was = bad;
    check_concept(in, code, &bad);
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(code, "coding"), 0);
    if (bad == was && !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(c0, "code")))
        bad += problem_at(in, "coding", "required: a coding with a code (e.g. ICD-10 E11)");
    fhir_path_pop(&in->path, before);
    if (bad)
        return bad;
    static const char *const parts[] = {"code", "system", "display"};
    if (!(*item = cJSON_CreateObject()))
        return bad;
    for (size_t k = 0; k < 3; k++) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(c0, parts[k]);
        if (cJSON_IsString(s))
            cJSON_AddStringToObject(*item, parts[k], s->valuestring);
    }
    return bad;
}

/* ---- export: shared datatypes ---- */

#define SYS_CONSENT_SCOPE "http://terminology.hl7.org/CodeSystem/consentscope"
#define SYS_LOINC         "http://loinc.org"
#define SYS_ACT_CODE      "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#define SYS_PARTICIPATION "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

static const char *str(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Copy rec.name (any JSON value) to res.as when present. */
static void put(cJSON *res, const char *as, const cJSON *rec, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, name);
    if (v)
        cJSON_AddItemToObject(res, as, cJSON_Duplicate(v, true));
}

/* {"reference": "Type/ID"} with the FHIR id of caremesh id cm_id. */
static cJSON *ref_to(const char *type, const char *cm_id)
{
    char id[FHIR_ID_BUFSZ], text[96];
    cJSON *ref = cJSON_CreateObject();
    snprintf(text, sizeof(text), "%s/%s", type, fhir_id_for(cm_id, id));
    cJSON_AddStringToObject(ref, "reference", text);
    return ref;
}

static void put_ref(cJSON *res, const char *as, const char *type, const char *cm_id)
{
    if (cm_id)
        cJSON_AddItemToObject(res, as, ref_to(type, cm_id));
}

static cJSON *coding(const char *system, const char *code, const char *display)
{
    cJSON *c = cJSON_CreateObject();
    if (system)
        cJSON_AddStringToObject(c, "system", system);
    cJSON_AddStringToObject(c, "code", code);
    if (display)
        cJSON_AddStringToObject(c, "display", display);
    return c;
}

/* {"coding": [{system, code}]}; a second coding when hl7 is not NULL. */
static cJSON *concept(const char *system, const char *code, const char *hl7_sys, const char *hl7)
{
    cJSON *cc = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(cc, "coding");
    cJSON_AddItemToArray(list, coding(system, code, NULL));
    if (hl7)
        cJSON_AddItemToArray(list, coding(hl7_sys, hl7, NULL));
    return cc;
}

/* A record's code {code, system?, display?} as a CodeableConcept. */
static cJSON *concept_of(const cJSON *code)
{
    cJSON *cc = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(cc, "coding");
    cJSON_AddItemToArray(list,
                         coding(str(code, "system"), str(code, "code"), str(code, "display")));
    return cc;
}

/* [{"text": s}] under res.as */
static void put_text_list(cJSON *res, const char *as, const char *s)
{
    if (!s)
        return;
    cJSON *list = cJSON_AddArrayToObject(res, as), *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "text", s);
    cJSON_AddItemToArray(list, item);
}

static void put_extension(cJSON *res, const char *url, const char *value_name, cJSON *value)
{
    if (!value)
        return;
    cJSON *list = cJSON_GetObjectItemCaseSensitive(res, "extension");
    if (!list)
        list = cJSON_AddArrayToObject(res, "extension");
    cJSON *ext = cJSON_CreateObject();
    cJSON_AddStringToObject(ext, "url", url);
    cJSON_AddItemToObject(ext, value_name, value);
    cJSON_AddItemToArray(list, ext);
}

static cJSON *string_or_null(const char *s)
{
    return s ? cJSON_CreateString(s) : NULL;
}

/* {resourceType, id} and, when the caremesh id is not a FHIR id, an
** identifier that keeps it. */
static cJSON *resource(const char *type, const char *cm_id)
{
    char id[FHIR_ID_BUFSZ];
    if (!cm_id)
        cm_id = "?"; /* the model never stores a record without one */
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "resourceType", type);
    cJSON_AddStringToObject(res, "id", fhir_id_for(cm_id, id));
    if (strcmp(id, cm_id) != 0) {
        cJSON *ids = cJSON_AddArrayToObject(res, "identifier"), *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "system", FHIR_SYS_CM_ID);
        cJSON_AddStringToObject(item, "value", cm_id);
        cJSON_AddItemToArray(ids, item);
    }
    return res;
}

static void put_name(cJSON *res, const cJSON *rec)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(rec, "name");
    if (name)
        cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "name"), cJSON_Duplicate(name, true));
}

static void put_telecom(cJSON *res, const cJSON *rec)
{
    static const char *const systems[] = {"phone", "email"};
    cJSON *list = NULL;
    for (size_t i = 0; i < 2; i++) {
        const char *v = str(rec, systems[i]);
        if (!v)
            continue;
        if (!list)
            list = cJSON_AddArrayToObject(res, "telecom");
        cJSON *cp = cJSON_CreateObject();
        cJSON_AddStringToObject(cp, "system", systems[i]);
        cJSON_AddStringToObject(cp, "value", v);
        cJSON_AddItemToArray(list, cp);
    }
}

static void put_address(cJSON *res, const cJSON *rec)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(rec, "address");
    if (cJSON_IsObject(a) && a->child)
        cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "address"), cJSON_Duplicate(a, true));
}

/* A number as a positiveInt element, or as its String form. */
static void put_dose(cJSON *pa, const char *base, const cJSON *v)
{
    char name[64], text[32];
    if (!cJSON_IsNumber(v))
        return;
    if (v->valuedouble >= 1 && v->valuedouble <= 2147483647.0 &&
        v->valuedouble == floor(v->valuedouble)) {
        snprintf(name, sizeof(name), "%sPositiveInt", base);
        cJSON_AddNumberToObject(pa, name, v->valuedouble);
    } else {
        snprintf(name, sizeof(name), "%sString", base);
        snprintf(text, sizeof(text), "%.17g", v->valuedouble);
        cJSON_AddStringToObject(pa, name, text);
    }
}

/* ---- export: the resources ---- */

cJSON *fhir_export_organization(const cJSON *rec)
{
    const char *kind = str(rec, "kind");
    cJSON *res = resource("Organization", str(rec, "id"));
    put_extension(res, FHIR_EXT_NODE, "valueString", string_or_null(str(rec, "node")));
    put(res, "active", rec, "active");
    if (kind)
        cJSON_AddItemToArray(
            cJSON_AddArrayToObject(res, "type"),
            concept(FHIR_SYS_ORG_KIND, kind, SYS_ORG_TYPE, cm_to_hl7(org_types, kind)));
    put(res, "name", rec, "name");
    put_telecom(res, rec);
    put_address(res, rec);
    return res;
}

cJSON *fhir_export_practitioner(const cJSON *rec)
{
    cJSON *res = resource("Practitioner", str(rec, "id"));
    put(res, "active", rec, "active");
    put_name(res, rec);
    return res;
}

cJSON *fhir_export_practitioner_role(const cJSON *rec)
{
    const char *role = str(rec, "role");
    cJSON *res = resource("PractitionerRole", str(rec, "id"));
    put(res, "active", rec, "active");
    put_ref(res, "practitioner", "Practitioner", str(rec, "id"));
    put_ref(res, "organization", "Organization", str(rec, "organization"));
    if (role)
        cJSON_AddItemToArray(
            cJSON_AddArrayToObject(res, "code"),
            concept(FHIR_SYS_ROLE, role, SYS_PRAC_ROLE, cm_to_hl7(prac_roles, role)));
    put_text_list(res, "specialty", str(rec, "specialty"));
    put_telecom(res, rec);
    return res;
}

cJSON *fhir_export_patient(const cJSON *rec)
{
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(rec, "identifiers"), *item;
    const char *lang = str(rec, "language");
    cJSON *res = resource("Patient", str(rec, "id"));
    put_extension(res, FHIR_EXT_CHANNEL, "valueCode", string_or_null(str(rec, "preferredChannel")));
    if (cJSON_GetArraySize(ids) > 0) {
        cJSON *list = cJSON_GetObjectItemCaseSensitive(res, "identifier");
        if (!list)
            list = cJSON_AddArrayToObject(res, "identifier");
        cJSON_ArrayForEach(item, ids) cJSON_AddItemToArray(list, cJSON_Duplicate(item, true));
    }
    put(res, "active", rec, "active");
    put_name(res, rec);
    put_telecom(res, rec);
    put(res, "gender", rec, "gender");
    put(res, "birthDate", rec, "birthDate");
    put_address(res, rec);
    if (lang) {
        cJSON *comm = cJSON_CreateObject(), *cc = cJSON_AddObjectToObject(comm, "language");
        cJSON_AddItemToArray(cJSON_AddArrayToObject(cc, "coding"), coding(SYS_BCP47, lang, NULL));
        cJSON_AddTrueToObject(comm, "preferred");
        cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "communication"), comm);
    }
    if (str(rec, "generalPractitioner"))
        cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "generalPractitioner"),
                             ref_to("Organization", str(rec, "generalPractitioner")));
    return res;
}

cJSON *fhir_export_condition(const cJSON *patient, int index)
{
    char cm_id[FHIR_CM_ID_MAX + 32], id[FHIR_ID_BUFSZ];
    const char *pid = str(patient, "id");
    const cJSON *cond =
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(patient, "conditions"), index);
    if (!cond || !pid)
        return NULL;
    snprintf(cm_id, sizeof(cm_id), "%s.c%d", pid, index + 1);
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "resourceType", "Condition");
    cJSON_AddStringToObject(res, "id", fhir_id_for(cm_id, id));
    cJSON_AddItemToObject(res, "code", concept_of(cond));
    cJSON_AddItemToObject(res, "subject", ref_to("Patient", pid));
    return res;
}

cJSON *fhir_export_consent(const cJSON *rec)
{
    const char *decision = str(rec, "decision"), *purpose = str(rec, "purpose");
    cJSON *res = resource("Consent", str(rec, "id"));
    put_extension(res, FHIR_EXT_NOTE, "valueString", string_or_null(str(rec, "note")));
    put(res, "status", rec, "status");
    cJSON_AddItemToObject(res, "scope", concept(SYS_CONSENT_SCOPE, "patient-privacy", NULL, NULL));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "category"),
                         concept(SYS_LOINC, "59284-0", NULL, NULL));
    put_ref(res, "patient", "Patient", str(rec, "patient"));
    put(res, "dateTime", rec, "recorded");
    if (decision)
        cJSON_AddItemToObject(
            res, "policyRule",
            concept(SYS_ACT_CODE, strcmp(decision, "deny") == 0 ? "OPTOUT" : "OPTIN", NULL, NULL));
    cJSON *prov = cJSON_AddObjectToObject(res, "provision");
    put(prov, "type", rec, "decision");
    put(prov, "period", rec, "period");
    if (str(rec, "organization")) {
        cJSON *actor = cJSON_CreateObject();
        cJSON_AddItemToObject(actor, "role", concept(SYS_PARTICIPATION, "IRCP", NULL, NULL));
        cJSON_AddItemToObject(actor, "reference", ref_to("Organization", str(rec, "organization")));
        cJSON_AddItemToArray(cJSON_AddArrayToObject(prov, "actor"), actor);
    }
    if (purpose)
        cJSON_AddItemToArray(cJSON_AddArrayToObject(prov, "purpose"),
                             coding(FHIR_SYS_PURPOSE, purpose, NULL));
    return res;
}

cJSON *fhir_export_immunization(const cJSON *rec)
{
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(rec, "vaccineCode");
    const cJSON *dose = cJSON_GetObjectItemCaseSensitive(rec, "doseNumber");
    const cJSON *doses = cJSON_GetObjectItemCaseSensitive(rec, "seriesDoses");
    cJSON *res = resource("Immunization", str(rec, "id"));
    put(res, "status", rec, "status");
    if (vc)
        cJSON_AddItemToObject(res, "vaccineCode", concept_of(vc));
    put_ref(res, "patient", "Patient", str(rec, "patient"));
    put(res, "occurrenceDateTime", rec, "occurrenceDateTime");
    put(res, "lotNumber", rec, "lotNumber");
    cJSON *perf = cJSON_AddArrayToObject(res, "performer");
    static const char *const who[][2] = {{"performer", "Organization"},
                                         {"practitioner", "Practitioner"}};
    for (size_t i = 0; i < 2; i++) {
        if (!str(rec, who[i][0]))
            continue;
        cJSON *p = cJSON_CreateObject();
        cJSON_AddItemToObject(p, "actor", ref_to(who[i][1], str(rec, who[i][0])));
        cJSON_AddItemToArray(perf, p);
    }
    put_text_list(res, "note", str(rec, "note"));
    if (dose || doses || str(rec, "series")) {
        cJSON *pa = cJSON_CreateObject();
        put(pa, "series", rec, "series");
        if (dose)
            put_dose(pa, "doseNumber", dose);
        else /* FHIR requires a dose number; caremesh reads "unknown" as none */
            cJSON_AddStringToObject(pa, "doseNumberString", "unknown");
        put_dose(pa, "seriesDoses", doses);
        cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "protocolApplied"), pa);
    }
    return res;
}

cJSON *fhir_export_task(const cJSON *rec)
{
    const char *owner = str(rec, "owner"), *org = str(rec, "organization");
    cJSON *res = resource("Task", str(rec, "id"));
    if (owner && org)
        put_extension(res, FHIR_EXT_ORG, "valueReference", ref_to("Organization", org));
    put(res, "status", rec, "status");
    cJSON_AddStringToObject(res, "intent", "order");
    put(res, "priority", rec, "priority");
    if (str(rec, "title")) {
        cJSON *code = cJSON_AddObjectToObject(res, "code");
        put(code, "text", rec, "title");
    }
    put(res, "description", rec, "description");
    put_ref(res, "for", "Patient", str(rec, "patient"));
    if (owner)
        put_ref(res, "owner", "Practitioner", owner);
    else
        put_ref(res, "owner", "Organization", org);
    if (str(rec, "ownerRole"))
        cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "performerType"),
                             concept(FHIR_SYS_ROLE, str(rec, "ownerRole"), NULL, NULL));
    if (str(rec, "due")) {
        cJSON *r = cJSON_AddObjectToObject(res, "restriction");
        cJSON *p = cJSON_AddObjectToObject(r, "period");
        put(p, "end", rec, "due");
    }
    put_text_list(res, "note", str(rec, "note"));
    return res;
}

/* ---- export: referral instances ---- */

static const struct referral_state {
    const char *state, *task, *request;
} referral_states[] = {
    {"requested", "requested", "active"},
    {"accepted", "accepted", "active"},
    {"scheduled", "in-progress", "active"},
    {"no_show", "on-hold", "active"},
    {"consult_received", "completed", "active"},
    {"closed", "completed", "completed"},
    {"declined", "rejected", "revoked"},
    {"cancelled", "cancelled", "revoked"},
    {"not_sent", "failed", "revoked"}, /* the host refused to send it (partnership terms) */
    {NULL, NULL, NULL},
};

static const struct referral_state *referral_state(const char *state)
{
    const struct referral_state *s = referral_states;
    while (s->state && (!state || strcmp(s->state, state) != 0))
        s++;
    return s->state ? s : NULL;
}

const char *fhir_referral_task_status(const char *state)
{
    const struct referral_state *s = referral_state(state);
    return s ? s->task : "in-progress";
}

/* The parts both referral resources share. */
static cJSON *referral_resource(const char *type, const cJSON *inst)
{
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(inst, "input");
    const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(inst, "ctx");
    const char *id = str(inst, "id"), *prio = str(ctx, "priority");
    char fid[FHIR_ID_BUFSZ];
    cJSON *res = cJSON_CreateObject(), *ids, *item;
    cJSON_AddStringToObject(res, "resourceType", type);
    cJSON_AddStringToObject(res, "id", fhir_id_for(id ? id : "referral", fid));
    ids = cJSON_AddArrayToObject(res, "identifier");
    item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "system", FHIR_SYS_INSTANCE);
    cJSON_AddStringToObject(item, "value", id ? id : "");
    cJSON_AddItemToArray(ids, item);
    if (str(input, "referral_id")) {
        item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "system", FHIR_SYS_REFERRAL_ID);
        cJSON_AddStringToObject(item, "value", str(input, "referral_id"));
        cJSON_AddItemToArray(ids, item);
    }
    if (!prio)
        prio = str(input, "priority");
    cJSON_AddStringToObject(res, "intent", "order");
    cJSON_AddStringToObject(
        res, "priority", prio && cm_values_listed(cm_values_priorities, prio) ? prio : "routine");
    return res;
}

cJSON *fhir_export_referral_request(const cJSON *inst)
{
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(inst, "input");
    const struct referral_state *s = referral_state(str(inst, "state"));
    cJSON *res = referral_resource("ServiceRequest", inst);
    cJSON_AddStringToObject(res, "status", s ? s->request : "unknown");
    put_ref(res, "subject", "Patient", str(input, "patient"));
    put(res, "authoredOn", inst, "created");
    put_ref(res, "requester", "Organization", str(input, "from"));
    if (str(input, "to"))
        cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "performer"),
                             ref_to("Organization", str(input, "to")));
    put_text_list(res, "reasonCode", str(input, "reason"));
    return res;
}

cJSON *fhir_export_referral_task(const cJSON *inst)
{
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(inst, "input");
    const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(inst, "ctx");
    const char *state = str(inst, "state"), *why = str(ctx, "decline_reason");
    cJSON *res = referral_resource("Task", inst);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "basedOn"),
                         ref_to("ServiceRequest", str(inst, "id") ? str(inst, "id") : "referral"));
    cJSON_AddStringToObject(res, "status", fhir_referral_task_status(state));
    if (state) {
        cJSON *bs = concept(FHIR_SYS_STATE, state, NULL, NULL);
        cJSON_AddStringToObject(bs, "text", state);
        cJSON_AddItemToObject(res, "businessStatus", bs);
    }
    if (!why)
        why = str(ctx, "cancel_reason");
    if (why) {
        cJSON *sr = cJSON_AddObjectToObject(res, "statusReason");
        cJSON_AddStringToObject(sr, "text", why);
    }
    put_ref(res, "for", "Patient", str(input, "patient"));
    put(res, "authoredOn", inst, "created");
    put(res, "lastModified", inst, "updated");
    put_ref(res, "requester", "Organization", str(input, "from"));
    put_ref(res, "owner", "Organization", str(input, "to"));
    if (str(ctx, "close_by")) {
        cJSON *r = cJSON_AddObjectToObject(res, "restriction");
        cJSON *p = cJSON_AddObjectToObject(r, "period");
        put(p, "end", ctx, "close_by");
    }
    return res;
}
