/*
** mapping.h -- from CSV columns to patient records: the mapping rules
** (`HEADER=FIELD[|ARG]`, from the plugin's config and --map), the defaults
** for common header names, the columns of one file resolved against its
** header, one row turned into a patient document (with where each value came
** from, to name the column of a problem), and that document merged into the
** patient already stored. Pure: cJSON only, no caremesh host; one thread.
** docs/roster_csv.md is the user's reference for the mapping.
*/
#ifndef ROSTER_MAPPING_H
#define ROSTER_MAPPING_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "reader.h"

#define ROSTER_SYSTEM  "urn:caremesh:roster" /* the identifier system of a cohort */
#define ROSTER_NO_COL  ((size_t)-1)
#define ROSTER_MSG_MAX 512

typedef enum roster_target {
    RT_IGNORE,
    RT_ID,
    RT_IDENTIFIER,
    RT_FAMILY,
    RT_GIVEN,
    RT_PREFIX,
    RT_NAME_TEXT,
    RT_NAME_FULL,
    RT_BIRTHDATE,
    RT_GENDER,
    RT_PHONE,
    RT_EMAIL,
    RT_LINE,
    RT_CITY,
    RT_STATE,
    RT_POSTAL,
    RT_COUNTRY,
    RT_LANGUAGE,
    RT_CHANNEL,
    RT_CONDITIONS,
    RT_GP,
    RT_ACTIVE,
    RT__COUNT
} roster_target;

typedef struct roster_rule {
    char *header; /* as written in the rule */
    roster_target target;
    char *arg;  /* date format or code/identifier system; NULL when none */
    bool named; /* the file must have the column (--map); else a standing rule (config) */
} roster_rule;

/* What the user asked for: explicit rules, whether the defaults apply, and
** where the patient id comes from. */
typedef struct roster_map {
    roster_rule *rules;
    size_t nrules, cap;
    bool defaults;   /* map common header names (default true) */
    char *id_column; /* the column giving the id; NULL: the id column, else the first identifier */
    char *id_prefix; /* prefix of ids made from an identifier (default "pat-") */
} roster_map;

void roster_map_init(roster_map *m);
void roster_map_clear(roster_map *m);
/* Add HEADER -> TARGET[|ARG]; a later rule for the same header replaces an
** earlier one. named: a file without the column is an error (else the rule
** applies to the files that have it). 0, or -1 with err naming the problem
** (what names the source, e.g. "--map" or "config.map"). */
int roster_map_rule(roster_map *m, const char *header, const char *target, bool named,
                    const char *what, char *err, size_t errlen);
/* Add the named rules of "H=T,H=T,...". 0, or -1 with err naming the item. */
int roster_map_parse(roster_map *m, const char *spec, const char *what, char *err, size_t errlen);
/* Set a string option (id_column, id_prefix) to a copy. 0, or -1 when out of memory. */
int roster_map_set(char **slot, const char *value);

/* The columns of one file. */
typedef struct roster_columns {
    size_t n;
    char **names;          /* as in the header */
    roster_target *target; /* per column; RT_IGNORE when not mapped */
    const char **arg;      /* per column; borrowed from the map's rules */
    size_t id_col;         /* the column that gives the patient id */
    const char *id_prefix; /* borrowed; NULL when id_col is an `id` column */
} roster_columns;

/* Resolve m against the header record. 0, or -1 with err (and *col the
** column at fault, or ROSTER_NO_COL): an empty, duplicate or non-UTF-8
** header; a rule naming a column the file lacks; a field given by two
** columns; a required field (name.family, birthDate, gender, the id) that no
** column gives. */
int roster_columns_resolve(const roster_map *m, const roster_record *header, roster_columns *c,
                           size_t *col, char *err, size_t errlen);
void roster_columns_clear(roster_columns *c);
/* The header names of unmapped columns, ", "-separated, into buf. */
const char *roster_columns_ignored(const roster_columns *c, char *buf, size_t len);

/* One row as a patient document, and which column each value came from. */
typedef struct roster_origin {
    char path[64]; /* "name.given[1]" */
    size_t col;
} roster_origin;

typedef struct roster_row {
    cJSON *doc; /* only what the mapped cells give */
    char id[129];
    roster_origin *origin;
    size_t norigin, cap;
} roster_row;

/* Build row from rec. 0, or -1 with msg and *col (the column at fault):
** invalid UTF-8 or a NUL byte in a mapped cell, a date not in its column's
** format, a yes/no that is neither, an empty or unusable id. */
int roster_row_build(const roster_columns *c, const roster_record *rec, roster_row *row,
                     size_t *col, char *msg, size_t msglen);
void roster_row_clear(roster_row *row);

/* The column a model message ("patient.name.given[1]: ...") is about, or
** ROSTER_NO_COL. */
size_t roster_row_locate(const roster_columns *c, const roster_row *row, const char *model_msg);

/* The patient to store: existing (NULL when new; its meta dropped) with the
** fields the mapped columns give replaced by row's (a mapped empty cell
** removes its field), identifiers of the mapped systems replaced, other
** identifiers kept, and the cohort's identifier added when cohort is given.
** Identifiers of the row come first. NULL when out of memory. */
cJSON *roster_merge(const roster_columns *c, const cJSON *existing, const roster_row *row,
                    const char *cohort);

/* Is s[0..len) UTF-8 without NUL bytes? On false, *at is the byte offset. */
bool roster_utf8_ok(const char *s, size_t len, size_t *at);

#endif
