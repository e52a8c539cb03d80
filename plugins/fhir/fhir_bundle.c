/*
** fhir_bundle.c -- a FHIR R4 Bundle into a plan of record writes: parse,
** index the entries, resolve references, join Practitioner and
** PractitionerRole, fold Conditions into patients, order the writes. Uses
** fhir_map.c for each resource and cJSON; see fhir_bundle.h.
*/
#include "fhir_bundle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One entry of the bundle as the planner indexed it. */
typedef struct entry {
    const cJSON *res;
    const char *type;     /* resourceType (NULL: the entry is unusable) */
    const char *full_url; /* NULL when none */
    const char *fhir_id;  /* resource.id (NULL when none) */
    char cm_id[FHIR_CM_ID_MAX + 1];
    bool kept;   /* a type caremesh imports */
    int role_of; /* PractitionerRole: entry of its Practitioner, -1: a stored provider */
    int role;    /* Practitioner: entry of its PractitionerRole, -1: none */
    int write;   /* index of its write in the plan, -1 none */
} entry;

typedef struct planner {
    fhir_plan *plan;
    const fhir_store *store;
    entry *entries;
    int n;
    fhir_keys keys;
    char found[FHIR_CM_ID_MAX + 1]; /* a stored target's id (borrowed by the resolver's caller) */
} planner;

/* Resource types imported, in the order their records are written. */
static const struct kept_type {
    const char *type, *kind;
} kept_types[] = {
    {"Organization", "organization"},
    {"Practitioner", "provider"},
    {"PractitionerRole", "provider"},
    {"Patient", "patient"},
    {"Condition", "patient"},
    {"Consent", "consent"},
    {"Immunization", "immunization"},
    {"Task", "task"},
    {NULL, NULL},
};

const char *fhir_kind_of(const char *type)
{
    for (const struct kept_type *k = kept_types; type && k->type; k++)
        if (strcmp(k->type, type) == 0)
            return k->kind;
    return NULL;
}

/* ---- the plan ---- */

static fhir_write *plan_add(fhir_plan *plan, const char *kind, cJSON *doc, int entry_index,
                            const char *type)
{
    if (plan->n == plan->cap) {
        size_t cap = plan->cap ? plan->cap * 2 : 64;
        fhir_write *grown = realloc(plan->writes, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        plan->writes = grown;
        plan->cap = cap;
    }
    fhir_write *w = &plan->writes[plan->n++];
    w->kind = kind;
    w->doc = doc;
    w->entry = entry_index;
    w->type = "?"; /* a static name: the bundle's own strings go with the bundle */
    for (const struct kept_type *k = kept_types; k->type; k++)
        if (strcmp(k->type, type) == 0)
            w->type = k->type;
    return w;
}

void fhir_plan_free(fhir_plan *plan)
{
    for (size_t i = 0; i < plan->n; i++)
        cJSON_Delete(plan->writes[i].doc);
    free(plan->writes);
    fhir_problems_free(&plan->problems);
    fhir_problems_free(&plan->notes);
    memset(plan, 0, sizeof(*plan));
}

/* ---- parsing ---- */

/* Line and column (1-based) of byte offset off. */
static void line_col(const char *text, size_t off, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* Offset where nesting first passes limit (outside strings); len when never. */
static size_t too_deep_at(const char *text, size_t len, int limit)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > limit)
                return i;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return len;
}

static cJSON *parse(const char *text, size_t len, fhir_problems *problems)
{
    const char *end = NULL;
    size_t line, col, deep;
    if (len == 0) {
        fhir_problem(problems, NULL, "not JSON: the file is empty");
        return NULL;
    }
    if (memchr(text, '\0', len)) {
        fhir_problem(problems, NULL, "not JSON: the file holds a NUL byte");
        return NULL;
    }
    /* len + 1: the NUL after the text (cJSON wants it inside the length) */
    cJSON *root = cJSON_ParseWithLengthOpts(text, len + 1, &end, true);
    if (root)
        return root;
    if ((deep = too_deep_at(text, len, CJSON_NESTING_LIMIT)) < len) {
        line_col(text, deep, &line, &col);
        fhir_problem(problems, NULL, "nested deeper than %d levels (line %zu, column %zu)",
                     CJSON_NESTING_LIMIT, line, col);
        return NULL;
    }
    size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
    line_col(text, off, &line, &col);
    fhir_problem(problems, NULL, "not JSON: syntax error at line %zu, column %zu", line, col);
    return NULL;
}

/* Does v nest more than levels objects and arrays deep? */
static bool too_deep(const cJSON *v, int levels)
{
    const cJSON *c;
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v))
        return false;
    if (levels == 0)
        return true;
    cJSON_ArrayForEach(c, v)
    {
        if (too_deep(c, levels - 1))
            return true;
    }
    return false;
}

/* ---- indexing the entries ---- */

static const char *jstr(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Split ".../Type/id[/_history/n]" into type and id (into bufs); false if not that shape. */
static bool split_ref(const char *ref, char *type, size_t typesz, char *id, size_t idsz)
{
    char buf[1024];
    char *parts[8];
    int n = 0;
    if (strlen(ref) >= sizeof(buf))
        return false;
    snprintf(buf, sizeof(buf), "%s", ref);
    char *q = strchr(buf, '?');
    if (q)
        *q = '\0';
    for (char *save = NULL, *tok = strtok_r(buf, "/", &save); tok;
         tok = strtok_r(NULL, "/", &save)) {
        if (n == 8)
            memmove(parts, parts + 1, 7 * sizeof(parts[0])), n = 7;
        parts[n++] = tok;
    }
    if (n >= 4 && strcmp(parts[n - 2], "_history") == 0)
        n -= 2;
    if (n < 2 || parts[n - 2][0] < 'A' || parts[n - 2][0] > 'Z' || strlen(parts[n - 2]) >= typesz ||
        strlen(parts[n - 1]) >= idsz)
        return false;
    snprintf(type, typesz, "%s", parts[n - 2]);
    snprintf(id, idsz, "%s", parts[n - 1]);
    return true;
}

static void note(planner *p, int i, const char *msg)
{
    fhir_path at = {{0}, 0};
    fhir_path_push(&at, "entry[%d]", i);
    fhir_problem(&p->plan->notes, &at, "%s", msg);
    p->plan->skipped++;
}

/* Does a resource of a kept type stand for something caremesh does not
** import? (A Task of a referral: referrals are workflow instances.) */
static const char *not_imported(const entry *e)
{
    if (strcmp(e->type, "ServiceRequest") == 0)
        return "a ServiceRequest: referrals are instances of the referral workflow, started "
               "there, not imported; skipped";
    if (strcmp(e->type, "Task") != 0)
        return NULL;
    const cJSON *based = cJSON_GetObjectItemCaseSensitive(e->res, "basedOn"), *b;
    cJSON_ArrayForEach(b, based)
    {
        const char *ref = jstr(b, "reference");
        if (ref && strstr(ref, "ServiceRequest/"))
            return "a referral's Task: referrals are instances of the referral workflow, "
                   "started there, not imported; skipped";
    }
    return NULL;
}

/* The caremesh id of entry e: its urn:caremesh:id identifier or resource.id,
** else the id its fullUrl carries. false with a problem when none fits. */
static bool entry_id(planner *p, int i, entry *e, fhir_path *at)
{
    const cJSON *idv = cJSON_GetObjectItemCaseSensitive(e->res, "id");
    const char *id = fhir_resource_cm_id(e->res);
    char type[64], from_url[FHIR_CM_ID_MAX + 1];
    size_t before;
    if (idv && !cJSON_IsString(idv)) {
        before = fhir_path_push(at, ".id");
        fhir_problem(&p->plan->problems, at, "expected a string");
        fhir_path_pop(at, before);
        return false;
    }
    e->fhir_id = jstr(e->res, "id");
    if (!id && e->full_url) {
        if (has_prefix(e->full_url, "urn:uuid:"))
            id = e->full_url + 9;
        else if (split_ref(e->full_url, type, sizeof(type), from_url, sizeof(from_url)) &&
                 strcmp(type, e->type) == 0)
            id = from_url;
    }
    if (!id) {
        before = fhir_path_push(at, ".id");
        fhir_problem(&p->plan->problems, at,
                     "required (or a fullUrl urn:uuid:... or .../%s/ID to take it from)", e->type);
        fhir_path_pop(at, before);
        return false;
    }
    if (!fhir_cm_id_ok(id)) {
        before = fhir_path_push(at, ".id");
        fhir_problem(&p->plan->problems, at,
                     "\"%.80s\" is not a caremesh id (1 to 128 of A-Z a-z 0-9 . _ : -)", id);
        fhir_path_pop(at, before);
        return false;
    }
    snprintf(e->cm_id, sizeof(e->cm_id), "%s", id);
    return true;
}

/* A transaction or batch entry's request: POST or PUT, a PUT naming this resource. */
static void check_request(planner *p, const cJSON *ent, const entry *e, fhir_path *at)
{
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(ent, "request");
    size_t before = fhir_path_push(at, ".request");
    const char *method = jstr(req, "method"), *url = jstr(req, "url");
    char type[64], id[FHIR_CM_ID_MAX + 1];
    if (!req)
        fhir_problem(&p->plan->problems, at, "required in a transaction or batch bundle");
    else if (!cJSON_IsObject(req))
        fhir_problem(&p->plan->problems, at, "expected an object");
    else if (!method || (strcmp(method, "POST") != 0 && strcmp(method, "PUT") != 0))
        fhir_problem(&p->plan->problems, at,
                     "method: expected POST or PUT (import creates and updates records)");
    else if (!url)
        fhir_problem(&p->plan->problems, at, "url: required");
    else if (strcmp(method, "PUT") == 0 && e->type &&
             (!split_ref(url, type, sizeof(type), id, sizeof(id)) || strcmp(type, e->type) != 0 ||
              !e->fhir_id || strcmp(id, e->fhir_id) != 0))
        fhir_problem(&p->plan->problems, at, "url: \"%.80s\" does not name this resource (%s/%s)",
                     url, e->type, e->fhir_id ? e->fhir_id : "?");
    fhir_path_pop(at, before);
}

/* Index entry i; false when it cannot take part. */
static bool index_entry(planner *p, int i, const cJSON *ent, bool needs_request)
{
    entry *e = &p->entries[i];
    fhir_path at = {{0}, 0};
    fhir_path_push(&at, "entry[%d]", i);
    e->write = -1;
    e->role_of = -1;
    e->role = -1;
    if (!cJSON_IsObject(ent)) {
        fhir_problem(&p->plan->problems, &at, "expected an object");
        return false;
    }
    const cJSON *full = cJSON_GetObjectItemCaseSensitive(ent, "fullUrl");
    if (full && !cJSON_IsString(full)) {
        fhir_path_push(&at, ".fullUrl");
        fhir_problem(&p->plan->problems, &at, "expected a string");
        return false;
    }
    e->full_url = full ? full->valuestring : NULL;
    e->res = cJSON_GetObjectItemCaseSensitive(ent, "resource");
    fhir_path_push(&at, ".resource");
    if (!e->res) {
        fhir_problem(&p->plan->problems, &at, "required");
        return false;
    }
    if (!cJSON_IsObject(e->res)) {
        fhir_problem(&p->plan->problems, &at, "expected an object (a resource)");
        e->res = NULL;
        return false;
    }
    if (too_deep(e->res, FHIR_DEPTH_MAX)) {
        fhir_problem(&p->plan->problems, &at, "nested deeper than %d levels", FHIR_DEPTH_MAX);
        e->res = NULL;
        return false;
    }
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(e->res, "resourceType");
    if (!cJSON_IsString(rt) || !rt->valuestring[0]) {
        fhir_path_push(&at, ".resourceType");
        fhir_problem(&p->plan->problems, &at, rt ? "expected a string" : "required");
        return false;
    }
    e->type = rt->valuestring;
    e->fhir_id = jstr(e->res, "id");
    if (needs_request) {
        fhir_path req = {{0}, 0};
        fhir_path_push(&req, "entry[%d]", i);
        check_request(p, ent, e, &req);
    }
    const char *why = not_imported(e);
    char msg[256];
    if (why) {
        note(p, i, why);
    } else if (!fhir_kind_of(e->type)) {
        snprintf(msg, sizeof(msg),
                 "%.60s is not imported (caremesh keeps Organization, Practitioner, "
                 "PractitionerRole, Patient, Condition, Consent, Immunization, Task); skipped",
                 e->type);
        note(p, i, msg);
    } else {
        e->kept = true;
    }
    if (!e->kept)
        return true;
    return entry_id(p, i, e, &at);
}

/* Index the keys of every entry; two entries for one resource (the same
** fullUrl, or the same type and id) are a problem. */
static void index_keys(planner *p)
{
    char key[1200];
    for (int i = 0; i < p->n; i++) {
        const entry *e = &p->entries[i];
        fhir_path at = {{0}, 0};
        int was;
        if (!e->type)
            continue;
        if (e->full_url && strlen(e->full_url) < 1024 &&
            (was = fhir_keys_put(&p->keys, fhir_key('F', NULL, e->full_url, key, sizeof(key)),
                                 i)) >= 0) {
            fhir_path_push(&at, "entry[%d].fullUrl", i);
            fhir_problem(&p->plan->problems, &at, "\"%.80s\" is also entry[%d]'s fullUrl",
                         e->full_url, was);
            continue;
        }
        if (e->kept && e->cm_id[0] &&
            (was = fhir_keys_put(&p->keys, fhir_key('C', e->type, e->cm_id, key, sizeof(key)),
                                 i)) >= 0) {
            fhir_path_push(&at, "entry[%d].resource.id", i);
            fhir_problem(&p->plan->problems, &at, "%s \"%s\" is also entry[%d]", e->type, e->cm_id,
                         was);
            continue;
        }
        if (e->fhir_id && strlen(e->fhir_id) < 1024)
            fhir_keys_put(&p->keys, fhir_key('T', e->type, e->fhir_id, key, sizeof(key)), i);
    }
}

/* ---- references ---- */

static int find_entry(const planner *p, const char *type, const char *id)
{
    char key[1200];
    int at = fhir_keys_get(&p->keys, fhir_key('T', type, id, key, sizeof(key)));
    return at >= 0 ? at : fhir_keys_get(&p->keys, fhir_key('C', type, id, key, sizeof(key)));
}

static int resolve(void *ud, const char *ref, fhir_target *out, char *why, size_t whylen)
{
    planner *p = ud;
    char type[64], id[FHIR_CM_ID_MAX + 1];
    char key[1200];
    int at = -1;
    if (ref[0] == '#')
        return snprintf(why, whylen, "is a contained resource (not supported)"), -1;
    if (strlen(ref) < 1024)
        at = fhir_keys_get(&p->keys, fhir_key('F', NULL, ref, key, sizeof(key)));
    if (at < 0 && has_prefix(ref, "urn:"))
        return snprintf(why, whylen, "matches no entry's fullUrl in the bundle"), -1;
    if (at < 0 && !split_ref(ref, type, sizeof(type), id, sizeof(id)))
        return snprintf(why, whylen, "is not a reference (expected Type/id or a fullUrl)"), -1;
    if (at < 0)
        at = find_entry(p, type, id);
    if (at >= 0) {
        const entry *e = &p->entries[at];
        if (!e->kept)
            return snprintf(why, whylen, "is entry[%d], a %s that is not imported", at, e->type),
                   -1;
        if (!e->cm_id[0])
            return snprintf(why, whylen, "is entry[%d], which has problems of its own", at), -1;
        out->type = e->type;
        out->id = e->cm_id;
        return 0;
    }
    /* in the store: only records other records refer to */
    static const char *const stored_types[] = {"Organization", "Patient", "Practitioner",
                                               "PractitionerRole", NULL};
    const char *kind = NULL;
    for (size_t i = 0; stored_types[i] && !kind; i++)
        if (strcmp(stored_types[i], type) == 0) {
            kind = fhir_kind_of(type);
            out->type = stored_types[i];
        }
    cJSON *found = kind && p->store && p->store->get ? p->store->get(p->store->ud, kind, id) : NULL;
    if (!found)
        return snprintf(why, whylen, "matches no entry of the bundle and no %s in the store",
                        kind ? kind : type),
               -1;
    cJSON_Delete(found);
    snprintf(p->found, sizeof(p->found), "%s", id);
    out->id = p->found;
    return 0;
}

/* ---- building the records ---- */

static fhir_in in_for(planner *p, int i)
{
    fhir_in in = {.problems = &p->plan->problems, .resolve = resolve, .ud = p};
    fhir_path_push(&in.path, "entry[%d].resource", i);
    return in;
}

static cJSON *new_doc(const char *id)
{
    cJSON *doc = cJSON_CreateObject();
    if (doc && !cJSON_AddStringToObject(doc, "id", id)) {
        cJSON_Delete(doc);
        return NULL;
    }
    return doc;
}

/* The stored record, without meta, or NULL. */
static cJSON *stored(planner *p, const char *kind, const char *id)
{
    cJSON *doc = p->store && p->store->get ? p->store->get(p->store->ud, kind, id) : NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "meta");
    return doc;
}

typedef size_t (*import_fn)(fhir_in *in, const cJSON *res, cJSON *doc);

/* A write for each kept entry of type, through fn. */
static void build_simple(planner *p, const char *type, import_fn fn)
{
    const char *kind = fhir_kind_of(type);
    for (int i = 0; i < p->n; i++) {
        entry *e = &p->entries[i];
        if (!e->kept || !e->cm_id[0] || strcmp(e->type, type) != 0)
            continue;
        fhir_in in = in_for(p, i);
        cJSON *doc = new_doc(e->cm_id);
        if (!doc || fn(&in, e->res, doc) > 0) {
            cJSON_Delete(doc);
            continue;
        }
        if (!plan_add(p->plan, kind, doc, i, e->type)) {
            cJSON_Delete(doc);
            fhir_problem(&p->plan->problems, NULL, "out of memory");
            return;
        }
        e->write = (int)p->plan->n - 1;
    }
}

/* The Practitioner entry (or -1: a stored provider) of role entry i; -2 when
** it has none (a problem is reported). */
static int role_practitioner(planner *p, int i)
{
    fhir_in in = in_for(p, i);
    fhir_target t;
    char why[256];
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(p->entries[i].res, "practitioner");
    const char *text = jstr(ref, "reference");
    fhir_path_push(&in.path, ".practitioner");
    if (!text) {
        fhir_problem(&p->plan->problems, &in.path,
                     "required: a Reference to the Practitioner (caremesh keeps the person in "
                     "one role as one provider)");
        return -2;
    }
    fhir_path_push(&in.path, ".reference");
    if (resolve(p, text, &t, why, sizeof(why)) != 0) {
        fhir_problem(&p->plan->problems, &in.path, "\"%.80s\" %s", text, why);
        return -2;
    }
    if (strcmp(t.type, "Practitioner") != 0) {
        fhir_problem(&p->plan->problems, &in.path, "\"%.80s\" is a %s, expected Practitioner", text,
                     t.type);
        return -2;
    }
    char key[1200];
    int j = fhir_keys_get(&p->keys, fhir_key('C', "Practitioner", t.id, key, sizeof(key)));
    snprintf(p->entries[i].cm_id, sizeof(p->entries[i].cm_id), "%s", t.id);
    return j;
}

/* Each role's practitioner, so that references to roles resolve to providers;
** a second role of one practitioner is a problem. */
static void link_roles(planner *p)
{
    for (int i = 0; i < p->n; i++) {
        entry *e = &p->entries[i];
        if (!e->kept || !e->cm_id[0] || strcmp(e->type, "PractitionerRole") != 0)
            continue;
        if ((e->role_of = role_practitioner(p, i)) == -2) {
            e->cm_id[0] = '\0';
        } else if (e->role_of >= 0 && p->entries[e->role_of].role >= 0) {
            fhir_path at = {{0}, 0};
            fhir_path_push(&at, "entry[%d].resource.practitioner", i);
            fhir_problem(&p->plan->problems, &at,
                         "Practitioner \"%s\" already has a role in entry[%d] (caremesh keeps one "
                         "role per provider)",
                         e->cm_id, p->entries[e->role_of].role);
            cJSON *scratch = new_doc(e->cm_id); /* its own problems are reported too */
            fhir_in in = in_for(p, i);
            if (scratch)
                fhir_import_practitioner_role(&in, e->res, scratch);
            cJSON_Delete(scratch);
        } else if (e->role_of >= 0) {
            p->entries[e->role_of].role = i;
        }
    }
}

/* Providers: each Practitioner with its role; a role alone updates a stored provider. */
static void build_providers(planner *p)
{
    link_roles(p);
    for (int i = 0; i < p->n; i++) {
        entry *e = &p->entries[i];
        bool is_prac = e->kept && e->cm_id[0] && strcmp(e->type, "Practitioner") == 0;
        bool lone_role =
            e->kept && strcmp(e->type, "PractitionerRole") == 0 && e->role_of == -1 && e->cm_id[0];
        if (!is_prac && !lone_role)
            continue;
        cJSON *doc = stored(p, "provider", e->cm_id);
        size_t bad = 0;
        if (is_prac) {
            if (doc) /* the person's part comes from this Practitioner */
                cJSON_DeleteItemFromObjectCaseSensitive(doc, "name");
            if (!doc)
                doc = new_doc(e->cm_id);
            fhir_in in = in_for(p, i);
            bad += fhir_import_practitioner(&in, e->res, doc);
        } else if (!doc) {
            continue; /* resolve() found it in the store a moment ago */
        }
        int ri = is_prac ? e->role : i;
        if (ri >= 0) {
            fhir_in in = in_for(p, ri);
            bad += fhir_import_practitioner_role(&in, p->entries[ri].res, doc);
        } else if (!cJSON_GetObjectItemCaseSensitive(doc, "role") && bad == 0) {
            fhir_path at = {{0}, 0};
            fhir_path_push(&at, "entry[%d].resource", i);
            fhir_problem(&p->plan->problems, &at,
                         "no PractitionerRole in the bundle names this Practitioner and no "
                         "provider \"%s\" is stored (caremesh needs the role and organization)",
                         e->cm_id);
            bad++;
        }
        if (bad > 0 || !plan_add(p->plan, "provider", doc, i, e->type))
            cJSON_Delete(doc);
        else
            e->write = (int)p->plan->n - 1;
    }
}

/* Conditions into their patients' "conditions". */
static void build_conditions(planner *p)
{
    for (int i = 0; i < p->n; i++) {
        entry *e = &p->entries[i];
        char subject[FHIR_CM_ID_MAX + 1];
        cJSON *item = NULL;
        if (!e->kept || strcmp(e->type, "Condition") != 0)
            continue;
        fhir_in in = in_for(p, i);
        if (fhir_import_condition(&in, e->res, &item, subject) > 0)
            continue;
        char key[1200];
        int pe = fhir_keys_get(&p->keys, fhir_key('C', "Patient", subject, key, sizeof(key)));
        int w = pe >= 0 ? p->entries[pe].write : -1;
        if (w < 0) {
            fhir_path_push(&in.path, ".subject");
            if (pe < 0) /* else the patient has problems of its own */
                fhir_problem(&p->plan->problems, &in.path,
                             "Patient \"%s\" is not in the bundle (caremesh keeps conditions on "
                             "the patient record: import them with their Patient)",
                             subject);
            cJSON_Delete(item);
            continue;
        }
        cJSON *doc = p->plan->writes[w].doc;
        cJSON *list = cJSON_GetObjectItemCaseSensitive(doc, "conditions");
        if (!list)
            list = cJSON_AddArrayToObject(doc, "conditions");
        cJSON_AddItemToArray(list, item);
    }
}

size_t fhir_plan_build(const char *text, size_t len, const fhir_store *store, fhir_plan *plan)
{
    static const char *const bundle_types[] = {"transaction", "batch", "collection", NULL};
    planner p = {.plan = plan, .store = store};
    fhir_path at = {{0}, 0};
    cJSON *root = parse(text, len, &plan->problems);
    const char *type;
    bool type_ok = false;
    if (!root)
        goto done;
    if (!cJSON_IsObject(root)) {
        fhir_problem(&plan->problems, NULL, "not a FHIR Bundle: the document is not an object");
        goto done;
    }
    if (!(type = jstr(root, "resourceType")) || strcmp(type, "Bundle") != 0) {
        fhir_path_push(&at, "resourceType");
        fhir_problem(&plan->problems, &at, "not a FHIR Bundle: expected \"Bundle\", got %s%.60s%s",
                     type ? "\"" : "", type ? type : "none", type ? "\"" : "");
        goto done;
    }
    type = jstr(root, "type");
    for (size_t i = 0; type && bundle_types[i]; i++)
        type_ok = type_ok || strcmp(type, bundle_types[i]) == 0;
    if (!type_ok) {
        fhir_path_push(&at, "type");
        fhir_problem(&plan->problems, &at, "%s%.60s%s: expected transaction, batch or collection",
                     type ? "\"" : "", type ? type : "required", type ? "\"" : "");
        goto done;
    }
    const cJSON *entries = cJSON_GetObjectItemCaseSensitive(root, "entry");
    if (entries && !cJSON_IsArray(entries)) {
        fhir_path_push(&at, "entry");
        fhir_problem(&plan->problems, &at, "expected an array");
        goto done;
    }
    p.n = cJSON_GetArraySize(entries);
    plan->entries = (size_t)p.n;
    if (p.n > FHIR_ENTRIES_MAX) {
        fhir_path_push(&at, "entry");
        fhir_problem(&plan->problems, &at, "%d entries, more than the %d one import takes", p.n,
                     FHIR_ENTRIES_MAX);
        goto done;
    }
    if ((p.n > 0 && !(p.entries = calloc((size_t)p.n, sizeof(*p.entries)))) ||
        !fhir_keys_init(&p.keys, (size_t)p.n * 3)) {
        fhir_problem(&plan->problems, NULL, "out of memory");
        goto done;
    }
    int i = 0;
    const cJSON *ent;
    bool needs_request = strcmp(type, "collection") != 0;
    cJSON_ArrayForEach(ent, entries)
    {
        if (!index_entry(&p, i, ent, needs_request))
            p.entries[i].cm_id[0] = '\0';
        i++;
    }
    index_keys(&p);
    build_simple(&p, "Organization", fhir_import_organization);
    build_providers(&p);
    build_simple(&p, "Patient", fhir_import_patient);
    build_conditions(&p);
    build_simple(&p, "Consent", fhir_import_consent);
    build_simple(&p, "Immunization", fhir_import_immunization);
    build_simple(&p, "Task", fhir_import_task);
done:
    fhir_keys_free(&p.keys);
    free(p.entries);
    cJSON_Delete(root);
    return fhir_problems_count(&plan->problems);
}
