/*
** roster_csv.c -- the roster_csv plugin: `caremesh roster import FILE`
** loads a cohort of patients from a CSV roster (an EHR or registry export)
** into the store, each row validated by the model and reported with its
** line and column; all or nothing unless --partial; --dry-run writes nothing.
** Re-importing a roster updates the same patients: ids come from a chosen
** identifier column. --cohort tags each patient with the identifier
** {system = "urn:caremesh:roster", value = COHORT}, which an outreach
** campaign selects with cohort = { roster = COHORT }.
**
** Uses reader.c (CSV over libcsv), mapping.c (columns to fields) and the
** host's record_get/record_put/tx_* (ABI 1.1). docs/roster_csv.md.
*/
#include <caremesh/plugin.h>

#include "mapping.h"
#include "reader.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_USAGE     2
#define PROGRESS_EVERY 10000
#define CHUNK          65536

static const cm_plugin_api *api;
static cm_plugin_ctx *self;

/* ---- ids seen in this file ------------------------------------------------ */

typedef struct seen_id {
    char *id;
    size_t line;
} seen_id;

typedef struct id_set {
    seen_id *slots;
    size_t cap, n;
} id_set;

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static seen_id *id_slot(seen_id *slots, size_t cap, const char *id)
{
    size_t i = hash(id) & (cap - 1);
    while (slots[i].id && strcmp(slots[i].id, id) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

/* The line id was first seen on, or 0 after adding it (line). -1 when out of memory. */
static long id_seen(id_set *set, const char *id, size_t line)
{
    if (set->n * 2 >= set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 1024;
        seen_id *slots = calloc(cap, sizeof(*slots));
        if (!slots)
            return -1;
        for (size_t i = 0; i < set->cap; i++)
            if (set->slots[i].id)
                *id_slot(slots, cap, set->slots[i].id) = set->slots[i];
        free(set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    seen_id *s = id_slot(set->slots, set->cap, id);
    if (s->id)
        return (long)s->line;
    if (!(s->id = strdup(id)))
        return -1;
    s->line = line;
    set->n++;
    return 0;
}

static void id_set_clear(id_set *set)
{
    for (size_t i = 0; i < set->cap; i++)
        free(set->slots[i].id);
    free(set->slots);
    memset(set, 0, sizeof(*set));
}

/* ---- one import ------------------------------------------------------------ */

typedef struct importer {
    const char *file;
    const char *cohort;
    bool dry_run, partial;
    roster_map map;
    roster_columns cols;
    bool have_header, in_tx, fatal;
    id_set seen;
    size_t rows, bad, created, updated, unchanged, blank;
    size_t size, fed; /* bytes, for progress */
} importer;

static void report(importer *im, size_t line, size_t col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* FILE:LINE: column "NAME": message, on stderr. */
static void report(importer *im, size_t line, size_t col, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s:%zu: ", im->file, line);
    if (col != ROSTER_NO_COL && col < im->cols.n)
        fprintf(stderr, "column \"%s\": ", im->cols.names[col]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static bool blank_record(const roster_record *rec)
{
    for (size_t i = 0; i < rec->nfields; i++)
        for (size_t k = 0; k < rec->lens[i]; k++)
            if (rec->fields[i][k] != ' ' && rec->fields[i][k] != '\t')
                return false;
    return true;
}

static int take_header(importer *im, const roster_record *rec)
{
    char err[1200], buf[256];
    size_t col;
    if (roster_columns_resolve(&im->map, rec, &im->cols, &col, err, sizeof(err)) != 0) {
        report(im, rec->line, ROSTER_NO_COL, "header: %s", err);
        im->fatal = true;
        return 1;
    }
    im->have_header = true;
    if (api->tx_begin(self, buf, sizeof(buf)) != 0) {
        report(im, rec->line, ROSTER_NO_COL, "cannot begin a transaction: %s", buf);
        im->fatal = true;
        return 1;
    }
    im->in_tx = true;
    roster_columns_ignored(&im->cols, err, sizeof(err));
    if (err[0])
        printf("roster import: %s: columns not imported: %s\n", im->file, err);
    return 0;
}

static bool count_ok(importer *im, const roster_record *rec)
{
    size_t n = im->cols.n;
    if (rec->nfields == n)
        return true;
    if (rec->nfields < n)
        report(im, rec->line, ROSTER_NO_COL,
               "%zu fields where the header has %zu: column \"%s\" and after are missing",
               rec->nfields, n, im->cols.names[rec->nfields]);
    else
        report(im, rec->line, ROSTER_NO_COL,
               "%zu fields where the header has %zu: extra fields after column \"%s\"",
               rec->nfields, n, im->cols.names[n - 1]);
    return false;
}

/* The stored patient id (meta dropped), or NULL when there is none. -1 in
** *rc for an error other than "not found". */
static cJSON *stored(importer *im, const char *id, size_t line, int *rc)
{
    char err[512] = "";
    char *text = api->record_get(self, "patient", id, err, sizeof(err));
    cJSON *doc = text ? cJSON_Parse(text) : NULL;
    *rc = 0;
    if (text)
        api->free(text);
    if (text && !doc) {
        report(im, line, ROSTER_NO_COL, "patient %s: cannot read the stored record", id);
        *rc = -1;
    } else if (!text && !strstr(err, "not found")) {
        report(im, line, ROSTER_NO_COL, "patient %s: %s", id, err);
        *rc = -1;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "meta");
    return doc;
}

/* Store the merged patient of row. 0, or 1 for a refused row (reported). */
static int store_row(importer *im, const roster_record *rec, const roster_row *row)
{
    char err[1024] = "";
    int rc = 0;
    cJSON *old = stored(im, row->id, rec->line, &rc);
    cJSON *doc = rc == 0 ? roster_merge(&im->cols, old, row, im->cohort) : NULL;
    char *text = NULL;
    if (rc != 0) {
        im->fatal = true;
        rc = 1;
    } else if (!doc || !(text = cJSON_PrintUnformatted(doc))) {
        report(im, rec->line, ROSTER_NO_COL, "out of memory");
        im->fatal = true;
        rc = 1;
    } else if (old && cJSON_Compare(old, doc, true)) {
        im->unchanged++;
    } else if (api->record_put(self, "patient", text, err, sizeof(err)) != 0) {
        report(im, rec->line, roster_row_locate(&im->cols, row, err), "%s", err);
        rc = 1;
    } else if (old) {
        im->updated++;
    } else {
        im->created++;
    }
    cJSON_free(text);
    cJSON_Delete(doc);
    cJSON_Delete(old);
    return rc;
}

static void progress(importer *im)
{
    if (im->rows % PROGRESS_EVERY != 0)
        return;
    fprintf(stderr, "roster import: %zu rows read (%zu%% of %s)\n", im->rows,
            im->size ? im->fed * 100 / im->size : 100, im->file);
}

/* A record of the file: the header, or a patient row. */
static int on_record(void *ud, const roster_record *rec)
{
    importer *im = ud;
    char msg[ROSTER_MSG_MAX];
    size_t col = ROSTER_NO_COL;
    roster_row row;
    if (!im->have_header)
        return take_header(im, rec);
    if (blank_record(rec)) { /* a row of empty cells, as spreadsheets leave at the end */
        im->blank++;
        return 0;
    }
    im->rows++;
    progress(im);
    if (!count_ok(im, rec)) {
        im->bad++;
        return 0;
    }
    int rc = roster_row_build(&im->cols, rec, &row, &col, msg, sizeof(msg));
    long first = rc == 0 ? id_seen(&im->seen, row.id, rec->line) : 0;
    if (rc != 0) {
        report(im, rec->line, col, "%s", msg);
    } else if (first < 0) {
        report(im, rec->line, ROSTER_NO_COL, "out of memory");
        im->fatal = true;
        rc = 1;
    } else if (first > 0) {
        report(im, rec->line, im->cols.id_col, "patient %s is also on line %ld", row.id, first);
        rc = 1;
    } else {
        rc = store_row(im, rec, &row);
    }
    roster_row_clear(&row);
    if (rc != 0)
        im->bad++;
    return im->fatal ? 1 : 0;
}

/* Read the file through the reader. 0, or 1 when it stopped early (reported). */
static int read_file(importer *im, int fd)
{
    roster_csv_error cerr = {0};
    roster_reader *r = roster_reader_new(on_record, im);
    static char buf[CHUNK];
    int rc = 0;
    ssize_t n;
    if (!r) {
        fprintf(stderr, "%s: out of memory\n", im->file);
        return 1;
    }
    while (rc == 0 && (n = read(fd, buf, sizeof(buf))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "%s: %s\n", im->file, strerror(errno));
            rc = 1;
            break;
        }
        im->fed += (size_t)n;
        rc = roster_reader_feed(r, buf, (size_t)n, &cerr);
    }
    if (rc == 0 && !im->fatal)
        rc = roster_reader_finish(r, &cerr);
    if (rc == ROSTER_ESYNTAX) {
        size_t col = im->have_header ? cerr.field : ROSTER_NO_COL;
        report(im, cerr.line, col, "%s", cerr.msg);
    }
    roster_reader_destroy(&r);
    return rc != 0 || im->fatal ? 1 : 0;
}

/* Commit, or roll back, and say what happened. Returns the exit code. */
static int settle(importer *im, bool stopped)
{
    char err[512];
    if (stopped || im->dry_run || (im->bad && !im->partial)) {
        if (im->in_tx)
            api->tx_rollback(self);
        if (stopped) {
            printf("roster import: %s: stopped at the error above: nothing written\n", im->file);
        } else if (im->dry_run) {
            printf("roster import: %s: dry run: %zu rows checked, %zu refused; nothing written\n",
                   im->file, im->rows, im->bad);
        } else {
            printf("roster import: %s: %zu of %zu rows refused: nothing written (--partial "
                   "writes the good rows)\n",
                   im->file, im->bad, im->rows);
        }
        return stopped || im->bad ? 1 : 0;
    }
    if (api->tx_commit(self, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: cannot commit: %s\n", im->file, err);
        printf("roster import: %s: nothing written\n", im->file);
        return 1;
    }
    printf(
        "roster import: %s: %zu rows: %zu created, %zu updated, %zu unchanged, %zu refused%s%s\n",
        im->file, im->rows, im->created, im->updated, im->unchanged, im->bad,
        im->cohort ? "; cohort " : "", im->cohort ? im->cohort : "");
    api->log(self, CM_PLUGIN_LOG_INFO,
             "roster import: %zu rows, %zu created, %zu updated, %zu unchanged, %zu refused",
             im->rows, im->created, im->updated, im->unchanged, im->bad);
    return im->bad ? 1 : 0;
}

static int import_file(importer *im)
{
    struct stat sb;
    int fd = open(im->file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        fprintf(stderr, "caremesh roster import: %s: %s\n", im->file, strerror(errno));
        return 1;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "caremesh roster import: %s: not a regular file\n", im->file);
        close(fd);
        return 1;
    }
    im->size = (size_t)sb.st_size;
    bool stopped = read_file(im, fd) != 0;
    close(fd);
    if (!stopped && !im->have_header) {
        fprintf(stderr, "%s: empty: no header row\n", im->file);
        stopped = true;
    } else if (!stopped && im->rows == 0) {
        fprintf(stderr, "%s: only a header: no patient rows\n", im->file);
        stopped = true;
    }
    return settle(im, stopped);
}

/* ---- options --------------------------------------------------------------- */

static const char import_usage[] =
    "usage: caremesh roster import FILE --data DIR [--map COLUMN=FIELD,...] [--cohort NAME]\n"
    "                              [--id-column COLUMN] [--id-prefix PREFIX] [--no-defaults]\n"
    "                              [--dry-run] [--partial]\n"
    "\n"
    "Import the patients of a CSV roster (RFC 4180, UTF-8, a header row). Every row is\n"
    "validated; each bad one is reported as FILE:LINE: column \"NAME\": problem. One\n"
    "transaction: a bad row means nothing is written, unless --partial. Re-importing\n"
    "updates the same patients (ids from the id column). docs/roster_csv.md.\n"
    "\n"
    "  --map SPEC        COLUMN=FIELD[|ARG] rules, comma-separated (repeatable), over the\n"
    "                    plugin's config.map and the default header names, e.g.\n"
    "                    \"MRN=identifier|urn:oid:1.2.3,DOB=birthDate|MM/DD/YYYY,SSN=-\"\n"
    "  --cohort NAME     tag each patient with the roster identifier NAME\n"
    "                    (outreach: cohort = { roster = NAME })\n"
    "  --id-column COL   the column giving patient ids (default: the id column, else the\n"
    "                    first identifier column)\n"
    "  --id-prefix P     prefix of ids made from an identifier (default \"pat-\")\n"
    "  --no-defaults     map only the columns named in rules\n"
    "  --dry-run         validate every row, write nothing\n"
    "  --partial         write the good rows, report the bad ones (exit 1 if any)\n";

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "caremesh roster import: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'caremesh roster import --help'.\n");
    return EXIT_USAGE;
}

static bool name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || strchr("._:-", s[i])))
            return false;
    return true;
}

/* The plugin's config section into m. 0, or -1 with err naming the key. */
static int config_map(roster_map *m, char *err, size_t errlen)
{
    cJSON *cfg = cJSON_Parse(api->config(self)), *item;
    int rc = 0;
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return snprintf(err, errlen, "config: expected a table"), -1;
    }
    cJSON_ArrayForEach(item, cfg)
    {
        const char *k = item->string;
        if (strcmp(k, "map") == 0 && (cJSON_IsObject(item) || cJSON_GetArraySize(item) == 0)) {
            cJSON *rule;
            cJSON_ArrayForEach(rule, item)
            {
                if (!cJSON_IsString(rule)) {
                    snprintf(err, errlen, "config.map[\"%s\"]: expected a field name string",
                             rule->string);
                    rc = -1;
                    break;
                }
                if ((rc = roster_map_rule(m, rule->string, rule->valuestring, false, "config.map",
                                          err, errlen)) != 0)
                    break;
            }
        } else if (strcmp(k, "defaults") == 0 && cJSON_IsBool(item)) {
            m->defaults = cJSON_IsTrue(item);
        } else if (strcmp(k, "id_column") == 0 && cJSON_IsString(item) && item->valuestring[0]) {
            rc = roster_map_set(&m->id_column, item->valuestring);
        } else if (strcmp(k, "id_prefix") == 0 && cJSON_IsString(item) &&
                   name_ok(item->valuestring, 64)) {
            rc = roster_map_set(&m->id_prefix, item->valuestring);
        } else {
            snprintf(err, errlen,
                     "config.%s: %s (known: map = { COLUMN = \"FIELD\" }, defaults = "
                     "true|false, id_column = \"COLUMN\", id_prefix = \"pat-\")",
                     k,
                     strcmp(k, "map") && strcmp(k, "defaults") && strcmp(k, "id_column") &&
                             strcmp(k, "id_prefix")
                         ? "unknown key"
                         : "wrong type or value");
            rc = -1;
        }
        if (rc != 0)
            break;
    }
    cJSON_Delete(cfg);
    return rc;
}

/* argv[i]'s value: "--opt=VALUE" or "--opt VALUE". NULL when missing. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt)
{
    size_t n = strlen(opt);
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    return *i + 1 < argc ? argv[++*i] : NULL;
}

static bool is_opt(const char *arg, const char *opt)
{
    size_t n = strlen(opt);
    return strncmp(arg, opt, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* Options into im (after its map has the config's rules). 0, -1 for --help, or the exit code. */
static int parse_import(importer *im, int argc, char **argv)
{
    char err[1200];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return -1;
        if (strcmp(a, "--dry-run") == 0) {
            im->dry_run = true;
        } else if (strcmp(a, "--partial") == 0) {
            im->partial = true;
        } else if (strcmp(a, "--no-defaults") == 0) {
            im->map.defaults = false;
        } else if (is_opt(a, "--map") || is_opt(a, "--cohort") || is_opt(a, "--id-column") ||
                   is_opt(a, "--id-prefix")) {
            const char *opt = is_opt(a, "--map")         ? "--map"
                              : is_opt(a, "--cohort")    ? "--cohort"
                              : is_opt(a, "--id-column") ? "--id-column"
                                                         : "--id-prefix";
            if (!(v = opt_value(argc, argv, &i, opt)))
                return usage("%s needs a value", opt);
            if (opt[2] == 'm' && roster_map_parse(&im->map, v, "--map", err, sizeof(err)) != 0)
                return usage("%s", err);
            if (opt[2] == 'c' && !name_ok(v, 64))
                return usage("--cohort \"%s\": 1 to 64 letters, digits, . _ : -", v);
            if (opt[2] == 'c')
                im->cohort = v;
            if (opt[5] == 'c' && roster_map_set(&im->map.id_column, v) != 0)
                return usage("%s", "out of memory");
            if (opt[5] == 'p' && (!name_ok(v, 64) || roster_map_set(&im->map.id_prefix, v) != 0))
                return usage("--id-prefix \"%s\": up to 64 letters, digits, . _ : -", v);
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage("unknown option '%s'", a);
        } else if (im->file) {
            return usage("one FILE only ('%s' is a second)", a);
        } else {
            im->file = a;
        }
    }
    if (!im->file)
        return usage("%s", "FILE is required");
    if (im->dry_run && im->partial)
        return usage("%s", "--dry-run and --partial do not go together");
    return 0;
}

static const char roster_usage[] =
    "usage: caremesh roster import FILE --data DIR [OPTIONS]\n"
    "\n"
    "Patient rosters from CSV files ('caremesh roster import --help' for the options).\n";

static int roster_command(void *ud, int argc, char **argv)
{
    importer im;
    char err[1200];
    int rc;
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0))
        return fputs(roster_usage, stdout), 0;
    if (argc < 2 || strcmp(argv[1], "import") != 0) {
        fprintf(stderr, "caremesh roster: %s\nTry 'caremesh roster --help'.\n",
                argc < 2 ? "a subcommand is required: import" : "unknown subcommand");
        return EXIT_USAGE;
    }
    memset(&im, 0, sizeof(im));
    roster_map_init(&im.map);
    if (config_map(&im.map, err, sizeof(err)) != 0) {
        fprintf(stderr, "caremesh roster import: %s\n", err);
        rc = 1;
    } else if ((rc = parse_import(&im, argc, argv)) < 0) {
        fputs(import_usage, stdout);
        rc = 0;
    } else if (rc == 0) {
        rc = import_file(&im);
    }
    roster_columns_clear(&im.cols);
    roster_map_clear(&im.map);
    id_set_clear(&im.seen);
    return rc;
}

static int roster_init(cm_plugin_ctx *ctx, const cm_plugin_api *host, char *err, size_t errlen)
{
    roster_map m;
    api = host;
    self = ctx;
    if (host->size < offsetof(cm_plugin_api, register_lua) + sizeof(host->register_lua))
        return snprintf(err, errlen, "this caremesh lacks record writes (plugin ABI 1.1)"), -1;
    roster_map_init(&m);
    int rc = config_map(&m, err, errlen);
    roster_map_clear(&m);
    if (rc != 0)
        return -1;
    if (api->register_command(ctx, "roster", "import a cohort of patients from a CSV roster",
                              roster_command, NULL) != 0)
        return snprintf(err, errlen, "cannot add the command 'roster' (taken?)"), -1;
    return 0;
}

CM_PLUGIN_EXPORT const cm_plugin_desc caremesh_plugin = {
    sizeof(cm_plugin_desc),
    CM_PLUGIN_ABI_MAJOR,
    CM_PLUGIN_ABI_MINOR,
    "roster_csv",
    "0.1.0",
    roster_init,
    NULL,
};
