/*
** sandbox.h -- a Lua 5.4 state that runs untrusted workflow and admin code.
** Only an allow-list of globals and library functions; no io, os (but
** time/clock/date/difftime), debug, package, dofile/loadfile, binary chunks,
** string.dump, collectgarbage control. Globals are read-only; the shared
** string metatable cannot be reached for change. Every call runs under an
** instruction budget (count hook, stays armed so pcall cannot swallow it) and
** the state under a memory cap (lua_Alloc). Lua errors never unwind through C
** frames of the caller: cm_sandbox_pcall turns them into cm_err.
** Depends on: Lua 5.4, error.h. One thread (the loop thread) per sandbox.
*/
#ifndef CM_SANDBOX_H
#define CM_SANDBOX_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct cm_sandbox_limits {
    uint64_t instructions; /* per cm_sandbox_pcall; 0 selects the default (10,000,000) */
    size_t memory_bytes;   /* whole state; 0 selects the default (64 MiB) */
} cm_sandbox_limits;

typedef struct cm_sandbox cm_sandbox;

/* A fresh sandbox. limits may be NULL for the defaults. NULL on failure (err says why). */
cm_sandbox *cm_sandbox_new(const cm_sandbox_limits *limits, cm_err *err);
void cm_sandbox_destroy(cm_sandbox **sb_p);

/* The state (borrowed). Host code may push values and register functions on it. */
lua_State *cm_sandbox_state(cm_sandbox *sb);

/* Make `require(name)` return the value produced by open (called once, lazily,
** inside the sandbox). The only modules require can reach. */
void cm_sandbox_preload(cm_sandbox *sb, const char *name, lua_CFunction open);

/* Compile text (never binary) as a chunk named chunkname ("@path" for files)
** with the sandbox's read-only global environment as its _ENV, and push the
** function. CM_ELUA with "file:line: message" on a syntax error (nothing pushed). */
int cm_sandbox_load(cm_sandbox *sb, const char *chunkname, const char *buf, size_t len,
                    cm_err *err);

/* lua_pcall with a traceback handler and the instruction budget armed for this
** call. On error the stack is as lua_pcall leaves it minus the error value, and
** err holds the message: CM_ELUA (a raised error, with traceback), CM_EBUDGET
** ("instruction budget of N exhausted"), CM_EMEMCAP ("memory cap of N bytes exceeded"). */
int cm_sandbox_pcall(cm_sandbox *sb, int nargs, int nresults, cm_err *err);

/* Load and run a file (the file's own errors name it: "path:line: ..."). */
int cm_sandbox_dofile(cm_sandbox *sb, const char *path, int nresults, cm_err *err);

/* Bytes the state holds now (for tests and metrics). */
size_t cm_sandbox_memory(cm_sandbox *sb);

#endif
