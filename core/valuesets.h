/*
** valuesets.h -- the value sets of records' coded fields (docs/records.md),
** lookups in them, and how a JSON value's type is named in messages.
** Header-only, so that the model and the fhir plugin (which links no core
** code) check against one list. Any thread.
*/
#ifndef CM_VALUESETS_H
#define CM_VALUESETS_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Each list ends with NULL. */
static const char *const cm_values_organization_kinds[] = {"clinic",
                                                           "hospital",
                                                           "community_pharmacy",
                                                           "specialist_practice",
                                                           "public_health",
                                                           "community_org",
                                                           "payer",
                                                           "other",
                                                           NULL};
static const char *const cm_values_provider_roles[] = {"physician",
                                                       "pharmacist",
                                                       "nurse",
                                                       "nurse_practitioner",
                                                       "physician_assistant",
                                                       "dietitian",
                                                       "social_worker",
                                                       "care_coordinator",
                                                       "community_health_worker",
                                                       "pharmacy_technician",
                                                       "medical_assistant",
                                                       "other",
                                                       NULL};
static const char *const cm_values_genders[] = {"male", "female", "other", "unknown", NULL};
static const char *const cm_values_channels[] = {"phone", "sms", "email", "mail", "portal", NULL};
static const char *const cm_values_partnership_statuses[] = {"active", "suspended", "ended", NULL};
static const char *const cm_values_data_classes[] = {
    "demographics", "contact", "conditions", "medications", "immunizations", "notes", NULL};
static const char *const cm_values_purposes[] = {"referral", "outreach", "immunization",
                                                 "care_coordination", NULL};
static const char *const cm_values_cadences[] = {"monthly", "quarterly", "semiannual", "annual",
                                                 NULL};
static const char *const cm_values_decisions[] = {"permit", "deny", NULL};
static const char *const cm_values_consent_statuses[] = {"active", "inactive", NULL};
static const char *const cm_values_care_team_statuses[] = {"proposed", "active", "suspended",
                                                           "inactive", NULL};
static const char *const cm_values_task_statuses[] = {
    "draft",       "requested", "received", "accepted",  "rejected",         "ready", "cancelled",
    "in-progress", "on-hold",   "failed",   "completed", "entered-in-error", NULL};
static const char *const cm_values_priorities[] = {"routine", "urgent", "asap", "stat", NULL};
static const char *const cm_values_immunization_statuses[] = {"completed", "entered-in-error",
                                                              "not-done", NULL};
/* Not a record's: a workflow instance's status (the engine's instance rows),
** for the filters of the API and the plugins' instance queries. */
static const char *const cm_values_instance_statuses[] = {"running", "paused", "done", "cancelled",
                                                          NULL};

/* Whether s is in list (false for a NULL list or s). */
static inline bool cm_values_listed(const char *const *list, const char *s)
{
    for (size_t i = 0; list && s && list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

/* "a, b, c" into buf (truncated to fit); returns buf. */
static inline const char *cm_values_join(const char *const *list, char *buf, size_t bufsz)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; list[i]; i++) {
        int n = snprintf(buf + len, bufsz - len, "%s%s", i ? ", " : "", list[i]);
        if (n < 0 || (size_t)n >= bufsz - len)
            break;
        len += (size_t)n;
    }
    return buf;
}

/* "a string", "an object", ...: v's JSON type for "expected X, got Y". */
static inline const char *cm_values_type_name(const cJSON *v)
{
    if (cJSON_IsNull(v))
        return "null";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    return "an invalid value";
}

#endif
