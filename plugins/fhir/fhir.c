/*
** fhir.c -- the fhir plugin: `caremesh fhir import BUNDLE.json [--dry-run]`
** writes the records of a FHIR R4 Bundle in one transaction (all or
** nothing); `caremesh fhir export [--patient ID | --all] [--kinds ...]
** [-o FILE]` writes patients, referrals, tasks, consents and immunizations
** as a Bundle of type collection. Records are read and written only through
** the host (record_get, record_find, record_put, instances), which audits
** every access to patient data. The mapping is fhir_map.c; the bundle
** planning fhir_bundle.c; the commands and their I/O are here.
**
** config = { base = "https://clinic.example/fhir" } -- optional: exported
**          entries get fullUrl BASE/Type/id
*/
#include <caremesh/plugin.h>

#include "fhir_bundle.h"
#include "fhir_map.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FHIR_FILE_MAX (64u << 20) /* largest bundle read, bytes */
#define FHIR_PAGE     1000        /* records per record_find call */
#define FHIR_PROGRESS 1000        /* a progress line every this many records */
#define ERRBUF        512
#define BASE_MAX      512

static const cm_plugin_api *api;
static cm_plugin_ctx *self;
static char base_url[BASE_MAX];

/* ---- small pieces ---- */

/* The stored record as cJSON (audited by the host), or NULL. */
static cJSON *get_record(void *ud, const char *kind, const char *id)
{
    char err[ERRBUF];
    (void)ud;
    char *text = api->record_get(self, kind, id, err, sizeof(err));
    cJSON *doc = text ? cJSON_Parse(text) : NULL;
    api->free(text);
    return doc;
}

/* Read path whole into a NUL-terminated buffer; NULL with a message on stderr. */
static char *read_file(const char *path, size_t *len)
{
    struct stat sb;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f || fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "caremesh fhir import: %s: %s\n", path,
                f ? "not a regular file" : strerror(errno));
        goto fail;
    }
    if ((size_t)sb.st_size > FHIR_FILE_MAX) {
        fprintf(stderr,
                "caremesh fhir import: %s: %lld bytes, more than the %u MiB one import takes "
                "(split the bundle)\n",
                path, (long long)sb.st_size, FHIR_FILE_MAX >> 20);
        goto fail;
    }
    if (!(buf = malloc((size_t)sb.st_size + 1)) ||
        fread(buf, 1, (size_t)sb.st_size, f) != (size_t)sb.st_size) {
        fprintf(stderr, "caremesh fhir import: %s: cannot read it\n", path);
        goto fail;
    }
    buf[sb.st_size] = '\0';
    *len = (size_t)sb.st_size;
    fclose(f);
    return buf;
fail:
    free(buf);
    if (f)
        fclose(f);
    return NULL;
}

static void print_problems(const char *file, const fhir_problems *p)
{
    for (size_t i = 0; i < p->n; i++)
        fprintf(stderr, "%s: %s\n", file, p->msgs[i]);
    if (p->dropped)
        fprintf(stderr, "%s: ... and %zu more problems\n", file, p->dropped);
}

/* ---- import ---- */

static const char *const import_usage =
    "usage: caremesh fhir import BUNDLE.json --data DIR [--dry-run]\n\n"
    "Import a FHIR R4 JSON Bundle (type transaction, batch or collection): Organization,\n"
    "Practitioner + PractitionerRole (a provider), Patient with its Conditions, Consent,\n"
    "Immunization and Task become caremesh records; a record that exists is replaced by\n"
    "its next version. Every problem is reported with the entry and the FHIR path; if\n"
    "there is any, nothing is written. Other resource types are skipped with a note.\n\n"
    "  --dry-run   check everything as an import would, then write nothing\n";

/* Write the plan in one transaction; problems into plan->problems. Returns
** the number written (all, or none when a write was refused). */
static size_t write_plan(fhir_plan *plan, bool dry_run)
{
    char err[ERRBUF];
    size_t written = 0;
    if (api->tx_begin(self, err, sizeof(err)) != 0) {
        fhir_problem(&plan->problems, NULL, "%s", err);
        return 0;
    }
    for (size_t i = 0; i < plan->n; i++) {
        const fhir_write *w = &plan->writes[i];
        char *json = cJSON_PrintUnformatted(w->doc);
        fhir_path at = {{0}, 0};
        fhir_path_push(&at, "entry[%d].resource", w->entry);
        if (!json) {
            fhir_problem(&plan->problems, &at, "out of memory");
        } else if (api->record_put(self, w->kind, json, err, sizeof(err)) != 0) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(w->doc, "id");
            fhir_problem(&plan->problems, &at, "%s \"%s\" refused by caremesh: %s", w->type,
                         cJSON_IsString(id) ? id->valuestring : "?", err);
        } else {
            written++;
        }
        cJSON_free(json);
        if (plan->n > FHIR_PROGRESS && (i + 1) % FHIR_PROGRESS == 0)
            fprintf(stderr, "fhir import: %zu/%zu records %s\n", i + 1, plan->n,
                    dry_run ? "checked" : "written");
    }
    if (plan->problems.n > 0 || dry_run) {
        api->tx_rollback(self);
        return 0;
    }
    if (api->tx_commit(self, err, sizeof(err)) != 0) {
        fhir_problem(&plan->problems, NULL, "%s", err);
        return 0;
    }
    return written;
}

/* "3 organization, 4 provider, ..." of the plan's writes, into buf. */
static void count_kinds(const fhir_plan *plan, char *buf, size_t bufsz)
{
    static const char *const kinds[] = {"organization", "provider",     "patient",
                                        "consent",      "immunization", "task"};
    size_t len = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        size_t n = 0;
        for (size_t i = 0; i < plan->n; i++)
            n += strcmp(plan->writes[i].kind, kinds[k]) == 0;
        if (n == 0)
            continue;
        int w = snprintf(buf + len, bufsz - len, "%s%zu %s", len ? ", " : "", n, kinds[k]);
        if (w < 0 || (size_t)w >= bufsz - len)
            break;
        len += (size_t)w;
    }
}

static int cmd_import(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dry-run", no_argument, NULL, 'n'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool dry_run = false;
    int c, rc = 1;
    size_t len = 0;
    char kinds[256];
    fhir_plan plan = {0};
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'n') {
            dry_run = true;
        } else if (c == 'h') {
            fputs(import_usage, stdout);
            return 0;
        } else {
            fprintf(stderr,
                    "caremesh fhir import: unknown option '%s'\nTry 'caremesh fhir "
                    "import --help'.\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "caremesh fhir import: %s\nTry 'caremesh fhir import --help'.\n",
                optind == argc ? "which bundle? (BUNDLE.json)" : "one bundle at a time");
        return 2;
    }
    const char *file = argv[optind];
    char *text = read_file(file, &len);
    if (!text)
        return 1;
    fhir_store store = {get_record, NULL};
    fhir_plan_build(text, len, &store, &plan);
    free(text);
    for (size_t i = 0; i < plan.notes.n; i++)
        fprintf(stderr, "%s: note: %s\n", file, plan.notes.msgs[i]);
    size_t written = plan.problems.n == 0 ? write_plan(&plan, dry_run) : 0;
    count_kinds(&plan, kinds, sizeof(kinds));
    if (fhir_problems_count(&plan.problems) > 0) {
        print_problems(file, &plan.problems);
        fprintf(stderr, "fhir import: %s: %zu problem(s) in %zu entries; nothing written\n", file,
                fhir_problems_count(&plan.problems), plan.entries);
    } else if (dry_run) {
        fprintf(stderr,
                "fhir import: %s: dry run: %zu entries valid, %zu record(s) would be written "
                "(%s), %zu skipped; nothing written\n",
                file, plan.entries, plan.n, plan.n ? kinds : "none", plan.skipped);
        rc = 0;
    } else {
        fprintf(stderr, "fhir import: %s: %zu entries, %zu record(s) written (%s), %zu skipped\n",
                file, plan.entries, written, written ? kinds : "none", plan.skipped);
        rc = 0;
    }
    fhir_plan_free(&plan);
    return rc;
}

/* ---- export ---- */

static const char *const export_usage =
    "usage: caremesh fhir export --data DIR (--patient ID | --all) [--kinds LIST] [-o FILE]\n\n"
    "Export as a FHIR R4 Bundle of type collection: patients (Patient and a Condition for\n"
    "each of their conditions), referrals (a ServiceRequest and a Task for each instance\n"
    "of the referral workflow), tasks (Task), consents (Consent) and immunizations\n"
    "(Immunization), with the Organizations, Practitioners and PractitionerRoles they\n"
    "refer to. Every patient record read is audited.\n\n"
    "  --patient ID   one patient and what concerns them\n"
    "  --all          every patient and record of the kinds\n"
    "  --kinds LIST   comma-separated, of patients, referrals, tasks, consents,\n"
    "                 immunizations, organizations, providers (default: all; with\n"
    "                 --patient, organizations and providers are those referred to)\n"
    "  -o FILE        write the bundle to FILE (mode 0600, replaced whole), not stdout\n";

enum {
    K_PATIENTS = 1,
    K_REFERRALS = 2,
    K_TASKS = 4,
    K_CONSENTS = 8,
    K_IMMUNIZATIONS = 16,
    K_ORGANIZATIONS = 32,
    K_PROVIDERS = 64,
    K_ALL = 127
};

typedef struct exporter {
    cJSON *entries;   /* the bundle's entry array (borrowed from the bundle) */
    fhir_keys seen;   /* "Otype/id" of resources in the bundle */
    fhir_keys wanted; /* organizations ("O") and providers ("P") referred to */
    cJSON *refs;      /* [[kind, id], ...] in the order first referred to */
    size_t counts[9]; /* per resource type written, see type_names */
    bool failed;
} exporter;

static const char *const type_names[] = {"Patient",      "Condition",    "ServiceRequest",
                                         "Task",         "Consent",      "Immunization",
                                         "Organization", "Practitioner", "PractitionerRole"};

/* Append resource (taken) as an entry; false on out of memory. */
static bool add_entry(exporter *x, cJSON *res, const cJSON *rec)
{
    char key[256], url[BASE_MAX + 128];
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(rec, "meta");
    cJSON *entry = cJSON_CreateObject();
    if (!res || !entry) {
        cJSON_Delete(res);
        cJSON_Delete(entry);
        x->failed = true;
        return false;
    }
    const char *type = cJSON_GetObjectItemCaseSensitive(res, "resourceType")->valuestring;
    const char *id = cJSON_GetObjectItemCaseSensitive(res, "id")->valuestring;
    if (fhir_keys_put(&x->seen, fhir_key('O', type, id, key, sizeof(key)), 1) >= 0) {
        cJSON_Delete(res); /* already in the bundle */
        cJSON_Delete(entry);
        return true;
    }
    if (meta) { /* FHIR meta: the version and when it was last written */
        cJSON *m = cJSON_CreateObject();
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, "versionId");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(meta, "lastUpdated");
        if (cJSON_IsString(v))
            cJSON_AddStringToObject(m, "versionId", v->valuestring);
        if (cJSON_IsString(t))
            cJSON_AddStringToObject(m, "lastUpdated", t->valuestring);
        cJSON_AddItemToObject(res, "meta", m);
    }
    if (base_url[0]) {
        snprintf(url, sizeof(url), "%s/%s/%s", base_url, type, id);
        cJSON_AddStringToObject(entry, "fullUrl", url);
    }
    cJSON_AddItemToObject(entry, "resource", res);
    cJSON_AddItemToArray(x->entries, entry);
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (strcmp(type_names[i], type) == 0)
            x->counts[i]++;
    return true;
}

/* Remember that rec.field names an organization ('O') or provider ('P'). */
static void want(exporter *x, char tag, const cJSON *rec, const char *field)
{
    char key[256];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, field);
    if (!cJSON_IsString(v) ||
        fhir_keys_put(&x->wanted, fhir_key(tag, NULL, v->valuestring, key, sizeof(key)), 1) != -1)
        return;
    cJSON *pair = cJSON_CreateArray();
    cJSON_AddItemToArray(pair, cJSON_CreateString(tag == 'O' ? "organization" : "provider"));
    cJSON_AddItemToArray(pair, cJSON_CreateString(v->valuestring));
    cJSON_AddItemToArray(x->refs, pair);
}

/* Call fn for every record of kind matching query (JSON text), page by page. */
typedef void (*record_fn)(exporter *x, const cJSON *rec);

static int each_record(exporter *x, const char *kind, const char *query, record_fn fn)
{
    char err[ERRBUF], after[FHIR_CM_ID_MAX + 1] = "";
    for (;;) {
        char *text = api->record_find(self, kind, query, after[0] ? after : NULL, FHIR_PAGE, err,
                                      sizeof(err));
        cJSON *page = text ? cJSON_Parse(text) : NULL, *rec;
        api->free(text);
        if (!page) {
            fprintf(stderr, "caremesh fhir export: %s: %s\n", kind, text ? "bad JSON" : err);
            return -1;
        }
        int n = cJSON_GetArraySize(page);
        cJSON_ArrayForEach(rec, page)
        {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(rec, "id");
            fn(x, rec);
            if (cJSON_IsString(id))
                snprintf(after, sizeof(after), "%s", id->valuestring);
        }
        cJSON_Delete(page);
        if (n < FHIR_PAGE)
            return 0;
    }
}

static void on_patient(exporter *x, const cJSON *rec)
{
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(rec, "conditions"));
    want(x, 'O', rec, "generalPractitioner");
    add_entry(x, fhir_export_patient(rec), rec);
    for (int i = 0; i < n; i++)
        add_entry(x, fhir_export_condition(rec, i), NULL);
}

static void on_consent(exporter *x, const cJSON *rec)
{
    want(x, 'O', rec, "organization");
    add_entry(x, fhir_export_consent(rec), rec);
}

static void on_immunization(exporter *x, const cJSON *rec)
{
    want(x, 'O', rec, "performer");
    want(x, 'P', rec, "practitioner");
    add_entry(x, fhir_export_immunization(rec), rec);
}

static void on_task(exporter *x, const cJSON *rec)
{
    want(x, 'O', rec, "organization");
    want(x, 'P', rec, "owner");
    add_entry(x, fhir_export_task(rec), rec);
}

static void on_organization(exporter *x, const cJSON *rec)
{
    add_entry(x, fhir_export_organization(rec), rec);
}

static void on_provider(exporter *x, const cJSON *rec)
{
    want(x, 'O', rec, "organization");
    add_entry(x, fhir_export_practitioner(rec), rec);
    add_entry(x, fhir_export_practitioner_role(rec), rec);
}

/* Referral instances (of patient, or all when NULL), page by page. */
static int each_referral(exporter *x, const char *patient)
{
    char err[ERRBUF], after[FHIR_CM_ID_MAX + 1] = "";
    for (;;) {
        char *text = api->instances(self, "{\"workflow\":\"referral\"}", after[0] ? after : NULL,
                                    FHIR_PAGE, err, sizeof(err));
        cJSON *page = text ? cJSON_Parse(text) : NULL, *inst;
        api->free(text);
        if (!page) {
            fprintf(stderr, "caremesh fhir export: referrals: %s\n", text ? "bad JSON" : err);
            return -1;
        }
        int n = cJSON_GetArraySize(page);
        cJSON_ArrayForEach(inst, page)
        {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(inst, "id");
            const cJSON *input = cJSON_GetObjectItemCaseSensitive(inst, "input");
            const cJSON *who = cJSON_GetObjectItemCaseSensitive(input, "patient");
            if (cJSON_IsString(id))
                snprintf(after, sizeof(after), "%s", id->valuestring);
            if (patient && (!cJSON_IsString(who) || strcmp(who->valuestring, patient) != 0))
                continue;
            want(x, 'O', input, "from");
            want(x, 'O', input, "to");
            add_entry(x, fhir_export_referral_request(inst), NULL);
            add_entry(x, fhir_export_referral_task(inst), NULL);
        }
        cJSON_Delete(page);
        if (n < FHIR_PAGE)
            return 0;
    }
}

/* The organizations and providers referred to (and the providers' organizations). */
static int add_referred(exporter *x)
{
    for (int i = 0; i < cJSON_GetArraySize(x->refs); i++) { /* grows as providers add orgs */
        const cJSON *pair = cJSON_GetArrayItem(x->refs, i);
        const char *kind = cJSON_GetArrayItem(pair, 0)->valuestring;
        const char *id = cJSON_GetArrayItem(pair, 1)->valuestring;
        cJSON *rec = get_record(NULL, kind, id);
        if (!rec) {
            fprintf(stderr, "caremesh fhir export: %s \"%s\" is referred to but not stored\n", kind,
                    id);
            return -1;
        }
        if (strcmp(kind, "provider") == 0)
            on_provider(x, rec);
        else
            on_organization(x, rec);
        cJSON_Delete(rec);
    }
    return 0;
}

static int parse_kinds(const char *list)
{
    static const char *const names[] = {"patients",      "referrals",     "tasks",    "consents",
                                        "immunizations", "organizations", "providers"};
    char buf[256];
    int kinds = 0;
    if (strlen(list) >= sizeof(buf))
        return -1;
    snprintf(buf, sizeof(buf), "%s", list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int bit = 0;
        for (int i = 0; i < 7; i++)
            if (strcmp(tok, names[i]) == 0)
                bit = 1 << i;
        if (!bit) {
            fprintf(stderr,
                    "caremesh fhir export: --kinds: unknown kind \"%s\" (patients, referrals, "
                    "tasks, consents, immunizations, organizations, providers)\n",
                    tok);
            return -1;
        }
        kinds |= bit;
    }
    return kinds;
}

/* Write text to path whole or not at all: a temporary file (0600), fsync, rename. */
static int write_file(const char *path, const char *text)
{
    char tmp[4096];
    size_t len = strlen(text), off = 0;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid()) >= sizeof(tmp))
        return errno = ENAMETOOLONG, -1;
    int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    int saved = errno;
    if (off != len || fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        saved = errno ? errno : saved;
        if (off != len || fcntl(fd, F_GETFD) != -1)
            close(fd);
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

/* The bundle of what the options ask for; NULL when something failed (said on stderr). */
static cJSON *build_bundle(const char *patient, int kinds, exporter *x)
{
    char query[FHIR_CM_ID_MAX * 2 + 32];
    cJSON *bundle = cJSON_CreateObject();
    int rc = 0;
    cJSON_AddStringToObject(bundle, "resourceType", "Bundle");
    cJSON_AddStringToObject(bundle, "type", "collection");
    x->entries = cJSON_AddArrayToObject(bundle, "entry");
    x->refs = cJSON_CreateArray();
    if (!fhir_keys_init(&x->seen, 1024) || !fhir_keys_init(&x->wanted, 256) || !x->entries ||
        !x->refs)
        goto fail;
    if (patient) {
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "patient", patient);
        char *text = cJSON_PrintUnformatted(q);
        snprintf(query, sizeof(query), "%s", text ? text : "{}");
        cJSON_free(text);
        cJSON_Delete(q);
        cJSON *rec = get_record(NULL, "patient", patient);
        if (!rec) {
            fprintf(stderr, "caremesh fhir export: no patient \"%s\"\n", patient);
            goto fail;
        }
        if (kinds & K_PATIENTS)
            on_patient(x, rec);
        cJSON_Delete(rec);
    } else {
        snprintf(query, sizeof(query), "{}");
        if (kinds & K_PATIENTS)
            rc |= each_record(x, "patient", NULL, on_patient);
    }
    if (kinds & K_CONSENTS)
        rc |= each_record(x, "consent", query, on_consent);
    if (kinds & K_IMMUNIZATIONS)
        rc |= each_record(x, "immunization", query, on_immunization);
    if (kinds & K_TASKS)
        rc |= each_record(x, "task", query, on_task);
    if (kinds & K_REFERRALS)
        rc |= each_referral(x, patient);
    if (!patient && (kinds & K_ORGANIZATIONS))
        rc |= each_record(x, "organization", NULL, on_organization);
    if (!patient && (kinds & K_PROVIDERS))
        rc |= each_record(x, "provider", NULL, on_provider);
    if (rc != 0 || add_referred(x) != 0)
        goto fail;
    if (x->failed) {
        fprintf(stderr, "caremesh fhir export: out of memory\n");
        goto fail;
    }
    return bundle;
fail:
    cJSON_Delete(bundle);
    return NULL;
}

static int cmd_export(int argc, char **argv)
{
    static const struct option opts[] = {
        {"patient", required_argument, NULL, 'p'}, {"all", no_argument, NULL, 'a'},
        {"kinds", required_argument, NULL, 'k'},   {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    const char *patient = NULL, *out = NULL;
    bool all = false;
    int c, kinds = K_ALL, rc = 1;
    exporter x = {0};
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            patient = optarg;
            break;
        case 'a':
            all = true;
            break;
        case 'k':
            if ((kinds = parse_kinds(optarg)) <= 0)
                return 2;
            break;
        case 'o':
            out = optarg;
            break;
        case 'h':
            fputs(export_usage, stdout);
            return 0;
        default:
            fprintf(stderr,
                    "caremesh fhir export: unknown option or missing value: '%s'\nTry "
                    "'caremesh fhir export --help'.\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind != argc || (patient != NULL) == all) {
        fprintf(stderr, "caremesh fhir export: %s\nTry 'caremesh fhir export --help'.\n",
                optind != argc ? "unexpected argument" : "give --patient ID or --all");
        return 2;
    }
    cJSON *bundle = build_bundle(patient, kinds, &x);
    char *text = bundle ? cJSON_Print(bundle) : NULL;
    if (bundle && !text) {
        fprintf(stderr, "caremesh fhir export: out of memory\n");
    } else if (text && out && write_file(out, text) != 0) {
        fprintf(stderr, "caremesh fhir export: %s: %s\n", out, strerror(errno));
    } else if (text) {
        if (!out)
            fputs(text, stdout), fputc('\n', stdout);
        fprintf(stderr, "fhir export: %d resources:", cJSON_GetArraySize(x.entries));
        for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
            if (x.counts[i])
                fprintf(stderr, " %zu %s", x.counts[i], type_names[i]);
        fprintf(stderr, "%s%s\n", out ? " to " : "", out ? out : "");
        rc = 0;
    }
    cJSON_free(text);
    cJSON_Delete(bundle);
    cJSON_Delete(x.refs);
    fhir_keys_free(&x.seen);
    fhir_keys_free(&x.wanted);
    return rc;
}

/* ---- the command and the plugin ---- */

static int cmd_fhir(void *ud, int argc, char **argv)
{
    (void)ud;
    if (argc >= 2 && strcmp(argv[1], "import") == 0)
        return cmd_import(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "export") == 0)
        return cmd_export(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0)) {
        printf("usage: caremesh fhir import BUNDLE.json --data DIR [--dry-run]\n"
               "       caremesh fhir export --data DIR (--patient ID | --all) [--kinds LIST] "
               "[-o FILE]\n\nFHIR R4 JSON Bundles in and out (docs/fhir.md). 'caremesh fhir "
               "import --help' and\n'caremesh fhir export --help' tell more.\n");
        return 0;
    }
    fprintf(stderr, "caremesh fhir: %s%s%s\nTry 'caremesh fhir --help'.\n",
            argc >= 2 ? "unknown subcommand '" : "which subcommand? (import or export)",
            argc >= 2 ? argv[1] : "", argc >= 2 ? "' (import or export)" : "");
    return 2;
}

static int fhir_init(cm_plugin_ctx *ctx, const cm_plugin_api *host, char *err, size_t errlen)
{
    int rc = -1;
    api = host;
    self = ctx;
    cJSON *cfg = cJSON_Parse(api->config(ctx));
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(cfg, "base");
    base_url[0] = '\0';
    if (base && (!cJSON_IsString(base) || strlen(base->valuestring) >= sizeof(base_url) ||
                 strncmp(base->valuestring, "http", 4) != 0)) {
        snprintf(err, errlen, "config.base: an http(s) URL of at most %d bytes", BASE_MAX - 1);
        goto done;
    }
    if (base) {
        snprintf(base_url, sizeof(base_url), "%s", base->valuestring);
        size_t n = strlen(base_url);
        while (n > 0 && base_url[n - 1] == '/')
            base_url[--n] = '\0';
    }
    if (api->register_command(ctx, "fhir", "FHIR R4 bundles: import records, export them", cmd_fhir,
                              NULL) != 0) {
        snprintf(err, errlen, "cannot add the command 'fhir' (taken?)");
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(cfg);
    return rc;
}

CM_PLUGIN_EXPORT const cm_plugin_desc caremesh_plugin = {
    sizeof(cm_plugin_desc),
    CM_PLUGIN_ABI_MAJOR,
    CM_PLUGIN_ABI_MINOR,
    "fhir",
    "0.1.0",
    fhir_init,
    NULL,
};
