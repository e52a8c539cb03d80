/*
** cliapi.h -- the CLI commands that talk to a running node over its HTTP API
** (status, records, start, signal, instances, show, tasks, failed, kpi, and
** peers/audit verify with a database fallback). Address and token come from
** --api/--token, CAREMESH_API/CAREMESH_TOKEN, or the data directory (its
** config's api.listen, its cli.token file). Uses httpc, config, lconfig,
** cJSON. cli.c dispatches to it; see docs/cli.md.
*/
#ifndef CM_CLIAPI_H
#define CM_CLIAPI_H

#include <stdbool.h>
#include <stdio.h>

/* The name of the token file in a data directory (mode 0600). */
#define CM_CLI_TOKEN_FILE "cli.token"

typedef struct cm_cliapi_cmd {
    const char *name;
    const char *brief;   /* one line for the overview */
    const char *summary; /* --help text after the usage line */
    const char *usage;
    int (*run)(int argc, char **argv);
} cm_cliapi_cmd;

/* The command named name, or NULL. */
const cm_cliapi_cmd *cm_cliapi_find(const char *name);

/* Print cmd's --help; returns the exit code (0). */
int cm_cliapi_help(const cm_cliapi_cmd *cmd);

/* The overview lines of these commands (for `caremesh --help`). */
void cm_cliapi_overview(FILE *out);

/* Reading a data directory's database directly, for commands that work with
** the node down: data dir, config file (or NULL), --json. Returns the exit code. */
typedef int (*cm_cliapi_offline_fn)(const char *data, const char *config, bool json);

/* What cm_cliapi_peers/audit return for --help: the caller prints its help. */
#define CM_CLIAPI_HELP 100

/* `caremesh peers` and `caremesh audit verify`: through the API; when no API
** address was given and the node named by the data directory cannot be
** reached (or has no token saved), through offline (with a note on stderr).
** --offline goes to the database directly. argv[0] is the command name. */
int cm_cliapi_peers(int argc, char **argv, cm_cliapi_offline_fn offline);
int cm_cliapi_audit(int argc, char **argv, cm_cliapi_offline_fn offline);

#endif
