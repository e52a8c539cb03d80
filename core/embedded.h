/*
** embedded.h -- files compiled into the binary: the shipped workflows (the
** .lua files of workflows/) and the modules they share (those of
** workflows/lib/), the node's default when no workflows directory exists. The table is generated
** at build time by cmake/embed.cmake. Read-only; any thread.
*/
#ifndef CM_EMBEDDED_H
#define CM_EMBEDDED_H

#include <stddef.h>

typedef struct cm_embedded_file {
    const char *path; /* relative: "referral.lua", "lib/checks.lua" */
    const char *text; /* NUL-terminated */
    size_t len;
} cm_embedded_file;

/* The shipped workflows, in path order. */
extern const cm_embedded_file cm_embedded_workflows[];
extern const size_t cm_embedded_workflows_count;

#endif
