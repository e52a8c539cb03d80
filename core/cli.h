/*
** cli.h -- the `caremesh` command line: one binary, subcommands, --help for
** each. The composition root: it wires config, store, model, sandbox and loop
** together for each command. Exit codes: 0 success, 1 the command failed
** (message on stderr naming what and where), 2 bad command line.
*/
#ifndef CM_CLI_H
#define CM_CLI_H

#define CM_EXIT_OK    0
#define CM_EXIT_FAIL  1
#define CM_EXIT_USAGE 2

/* Run the command line; returns the process exit code. */
int cm_cli_main(int argc, char **argv);

#endif
