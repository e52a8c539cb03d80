/*
** terms.c -- partnership terms and consent (see terms.h).
*/
#include "terms.h"

#include <stdio.h>
#include <string.h>

static const char *const class_names[] = {"demographics",  "contact", "conditions", "medications",
                                          "immunizations", "notes",   NULL};

/* Which class each patient field belongs to (fields not listed: none). */
static const struct {
    const char *field;
    unsigned cls;
} patient_field_class[] = {
    {"name", CM_CLASS_DEMOGRAPHICS},
    {"birthDate", CM_CLASS_DEMOGRAPHICS},
    {"gender", CM_CLASS_DEMOGRAPHICS},
    {"language", CM_CLASS_DEMOGRAPHICS},
    {"identifiers", CM_CLASS_DEMOGRAPHICS},
    {"generalPractitioner", CM_CLASS_DEMOGRAPHICS},
    {"active", CM_CLASS_DEMOGRAPHICS},
    {"phone", CM_CLASS_CONTACT},
    {"email", CM_CLASS_CONTACT},
    {"address", CM_CLASS_CONTACT},
    {"preferredChannel", CM_CLASS_CONTACT},
    {"conditions", CM_CLASS_CONDITIONS},
};

unsigned cm_class_bit(const char *name)
{
    for (int i = 0; name && class_names[i]; i++)
        if (strcmp(class_names[i], name) == 0)
            return 1u << i;
    return 0;
}

const char *cm_class_list(unsigned mask, char *buf, size_t bufsz)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; class_names[i]; i++) {
        if (!(mask & (1u << i)))
            continue;
        int n = snprintf(buf + len, bufsz - len, "%s%s", len ? "," : "", class_names[i]);
        if (n < 0 || (size_t)n >= bufsz - len)
            break;
        len += (size_t)n;
    }
    return buf;
}

int cm_class_parse(const cJSON *arr, const char *what, unsigned *mask, cm_err *err)
{
    const cJSON *it;
    int i = 0;
    *mask = 0;
    if (!arr || cJSON_IsNull(arr))
        return 0;
    if (!cJSON_IsArray(arr))
        return cm_err_set(err, CM_EINVAL, "%s: must be a list of data classes", what);
    cJSON_ArrayForEach(it, arr)
    {
        unsigned bit = cJSON_IsString(it) ? cm_class_bit(it->valuestring) : 0;
        if (!bit)
            return cm_err_set(err, CM_EINVAL,
                              "%s[%d]: not a data class (one of demographics, contact, "
                              "conditions, medications, immunizations, notes)",
                              what, i + 1);
        *mask |= bit;
        i++;
    }
    return 0;
}

static const char *str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Is today within [start, end] (either may be absent)? Dates compare as text. */
static bool in_force(const cJSON *obj, const char *today)
{
    const char *start = str(obj, "start"), *end = str(obj, "end");
    return (!start || strncmp(start, today, 10) <= 0) && (!end || strncmp(end, today, 10) >= 0);
}

static bool has_string(const cJSON *arr, const char *s)
{
    const cJSON *it;
    cJSON_ArrayForEach(it,
                       arr) if (cJSON_IsString(it) && strcmp(it->valuestring, s) == 0) return true;
    return false;
}

static bool is_member(const cJSON *partnership, const char *org)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(partnership, "members"))
    {
        const char *o = str(m, "organization");
        if (o && strcmp(o, org) == 0)
            return true;
    }
    return false;
}

/* Classes the terms of p let receiver `to` get for purpose. */
static unsigned term_classes(const cJSON *p, const char *to, const char *purpose, bool *any)
{
    const cJSON *t;
    unsigned mask = 0;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(p, "terms"))
    {
        const char *rcv = str(t, "receiver");
        if (!rcv || strcmp(rcv, to) != 0 ||
            !has_string(cJSON_GetObjectItemCaseSensitive(t, "purposes"), purpose))
            continue;
        const cJSON *c;
        *any = true;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(t, "classes")) mask |=
            cJSON_IsString(c) ? cm_class_bit(c->valuestring) : 0;
    }
    return mask;
}

static int check_partnership(cm_model *model, const cm_terms_req *req, unsigned *allowed,
                             char *partnership, cm_err *err)
{
    cJSON *filter = cJSON_CreateObject(), *list = NULL;
    int rc;
    if (!filter || !cJSON_AddStringToObject(filter, "member", req->from)) {
        cJSON_Delete(filter);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    rc = cm_model_find(model, CM_KIND_PARTNERSHIP, filter, NULL, 1000, &list, err);
    cJSON_Delete(filter);
    if (rc != 0)
        return rc;
    /* The first partnership in force whose terms cover everything needed;
    ** failing that, the best reason why not. */
    const cJSON *p;
    const char *covering = NULL, *termed = NULL, *chosen = NULL;
    unsigned termed_mask = 0, mask = 0;
    char cls[128];
    cJSON_ArrayForEach(p, list)
    {
        const char *status = str(p, "status");
        if ((status && strcmp(status, "active") != 0) || !in_force(p, req->today) ||
            !is_member(p, req->to))
            continue;
        bool any = false;
        unsigned m = term_classes(p, req->to, req->purpose, &any);
        if (!covering)
            covering = str(p, "id");
        if (any && !termed) {
            termed = str(p, "id");
            termed_mask = m;
        }
        if (any && (m & req->need) == req->need) {
            chosen = str(p, "id");
            mask = m;
            break;
        }
    }
    if (chosen) {
        *allowed = req->need | (req->want & mask);
        if (partnership)
            snprintf(partnership, 129, "%s", chosen);
    } else if (termed) {
        rc = cm_err_set(err, CM_EPERM,
                        "partnership %s does not let %s receive %s for the purpose \"%s\"", termed,
                        req->to, cm_class_list(req->need & ~termed_mask, cls, sizeof(cls)),
                        req->purpose);
    } else if (covering) {
        rc = cm_err_set(err, CM_EPERM,
                        "partnership %s has no term letting %s receive data for the purpose "
                        "\"%s\"",
                        covering, req->to, req->purpose);
    } else {
        rc = cm_err_set(err, CM_EPERM, "no active partnership has both %s and %s as members",
                        req->from, req->to);
    }
    cJSON_Delete(list);
    return rc;
}

/* When a consent was given: its `recorded`, else when it was last written. */
static const char *consent_time(const cJSON *c)
{
    const char *t = str(c, "recorded");
    return t ? t : str(cJSON_GetObjectItemCaseSensitive(c, "meta"), "lastUpdated");
}

static int check_consent(cm_model *model, const cm_terms_req *req, cm_err *err)
{
    cJSON *filter = cJSON_CreateObject(), *list = NULL;
    int rc;
    if (!filter || !cJSON_AddStringToObject(filter, "patient", req->patient) ||
        !cJSON_AddStringToObject(filter, "purpose", req->purpose)) {
        cJSON_Delete(filter);
        return cm_err_set(err, CM_ENOMEM, "out of memory");
    }
    rc = cm_model_find(model, CM_KIND_CONSENT, filter, NULL, 1000, &list, err);
    cJSON_Delete(filter);
    if (rc != 0)
        return rc;
    const cJSON *c, *rule = NULL;
    bool rule_specific = false;
    cJSON_ArrayForEach(c, list)
    {
        const char *status = str(c, "status"), *org = str(c, "organization");
        if ((status && strcmp(status, "active") != 0) ||
            !in_force(cJSON_GetObjectItemCaseSensitive(c, "period"), req->today) ||
            (org && strcmp(org, req->to) != 0))
            continue;
        bool specific = org != NULL;
        const char *t = consent_time(c), *rt = rule ? consent_time(rule) : NULL;
        if (!rule || (specific && !rule_specific) ||
            (specific == rule_specific && t && (!rt || strcmp(t, rt) > 0))) {
            rule = c;
            rule_specific = specific;
        }
    }
    const char *decision = rule ? str(rule, "decision") : NULL;
    if (decision && strcmp(decision, "deny") == 0)
        rc = cm_err_set(err, CM_EPERM, "patient %s denied consent for the purpose \"%s\" %s (%s)",
                        req->patient, req->purpose,
                        rule_specific ? "to this partner" : "to all partners", str(rule, "id"));
    cJSON_Delete(list);
    return rc;
}

int cm_terms_check(cm_model *model, const cm_terms_req *req, unsigned *allowed, char *partnership,
                   cm_err *err)
{
    *allowed = 0;
    if (!req->from || !*req->from || !req->to || !*req->to || !req->purpose || !*req->purpose)
        return cm_err_set(err, CM_EPERM,
                          "a message to a partner must name its sending organization, its "
                          "receiving organization and its purpose");
    int rc = check_partnership(model, req, allowed, partnership, err);
    if (rc == 0 && req->patient && *req->patient)
        rc = check_consent(model, req, err);
    if (rc != 0)
        *allowed = 0;
    return rc;
}

cJSON *cm_terms_filter_patient(const cJSON *rec, unsigned mask)
{
    cJSON *out = cJSON_CreateObject();
    const char *id = str(rec, "id");
    if (!out || (id && !cJSON_AddStringToObject(out, "id", id))) {
        cJSON_Delete(out);
        return NULL;
    }
    for (size_t i = 0; i < sizeof(patient_field_class) / sizeof(patient_field_class[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, patient_field_class[i].field);
        if (!v || !(mask & patient_field_class[i].cls))
            continue;
        cJSON *copy = cJSON_Duplicate(v, true);
        if (!copy || !cJSON_AddItemToObject(out, patient_field_class[i].field, copy)) {
            cJSON_Delete(copy);
            cJSON_Delete(out);
            return NULL;
        }
    }
    return out;
}

unsigned cm_terms_patient_classes(const cJSON *rec)
{
    unsigned mask = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, rec)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof(patient_field_class) / sizeof(patient_field_class[0]); i++)
            if (v->string && strcmp(v->string, patient_field_class[i].field) == 0) {
                mask |= patient_field_class[i].cls;
                known = true;
            }
        if (!known && v->string && strcmp(v->string, "id") != 0 && strcmp(v->string, "meta") != 0)
            mask |= CM_CLASS_NOTES; /* a field we do not know: treat as the widest class */
    }
    return mask;
}
