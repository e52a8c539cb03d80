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
** What scripts may use and the limits' messages: docs/sandbox.md.
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

/* The budget's wall-time backstop, in ms per cm_sandbox_pcall; 0 restores the
** default (1 us per budgeted instruction, at least 1 s: 10 s for the default
** budget). Some instructions cost far more than others (a call with a million
** arguments), so past this time a call fails with CM_EBUDGET "instruction
** budget of N exhausted (ran for more than T ms)". Ordinary code never gets
** near it: an instruction takes ~10 ns. */
void cm_sandbox_set_time_limit(cm_sandbox *sb, uint64_t ms);

/* The state (borrowed). Host code may push values and register functions on it:
** lua_setglobal/lua_register add globals that scripts see but cannot change
** (registry[LUA_RIDX_GLOBALS] is the sandbox's global table). Run host code
** that may raise inside a protected call; run scripts only through
** cm_sandbox_load and cm_sandbox_pcall on this (the main) thread. */
lua_State *cm_sandbox_state(cm_sandbox *sb);

/* Make `require(name)` return the value produced by open (called once, lazily,
** inside the sandbox, and cached; a table comes back as a read-only view). The
** only modules require can reach. Registering the same name again replaces the
** module. On out of memory the module stays unregistered. */
void cm_sandbox_preload(cm_sandbox *sb, const char *name, lua_CFunction open);

/* Let `require` also find Lua modules as files: "lib.cohort" is DIR/lib/cohort.lua,
** compiled as text with the sandbox's environment, run once, cached (a table
** comes back read-only). Directories are searched in the order added (at most 8);
** preloaded modules come first. CM_EINVAL when there is no room or the path is too long. */
int cm_sandbox_add_module_dir(cm_sandbox *sb, const char *dir, cm_err *err);

/* Push a read-only view of the table at idx, for bindings that hand tables to
** scripts: reads and pairs() see the table, writes (also rawset) raise
** "attempt to modify read-only table 'name' (field 'k')", getmetatable gives
** false and the table itself stays unreachable. May raise (out of memory). */
void cm_sandbox_push_readonly(lua_State *L, int idx, const char *name);

/* Compile text (never binary) as a chunk named chunkname ("@path" for files)
** with the sandbox's read-only global environment as its _ENV, and push the
** function. CM_ELUA with "file:line: message" on a syntax error (nothing pushed). */
int cm_sandbox_load(cm_sandbox *sb, const char *chunkname, const char *buf, size_t len,
                    cm_err *err);

/* lua_pcall with a traceback handler and the instruction budget armed for this
** call. On error the stack is as lua_pcall leaves it minus the error value, and
** err holds the message: CM_ELUA (a raised error, with traceback; also "stack
** overflow"), CM_EBUDGET ("instruction budget of N exhausted"), CM_EMEMCAP
** ("memory cap of N bytes exceeded"), CM_ENOMEM (the host's malloc failed).
** A budget, memory or depth kill cannot be caught by the script: the call
** fails even if the script's pcall swallowed the error. A call made from C
** code that a script called (nested) shares the outer call's budget. */
int cm_sandbox_pcall(cm_sandbox *sb, int nargs, int nresults, cm_err *err);

/* cm_sandbox_pcall for a caller that runs many calls and clears its stack
** after each: push the handler (cm_sandbox_push_msgh), then the function and
** its nargs arguments (room for them checked by the caller). On success the
** handler stays below the results, for the caller to drop with them; on
** failure the stack is cut below it, as cm_sandbox_pcall cuts it. Spares
** moving the handler under the function and out again. */
void cm_sandbox_push_msgh(cm_sandbox *sb);
int cm_sandbox_pcall_msgh(cm_sandbox *sb, int nargs, int nresults, cm_err *err);

/* Load and run a file (the file's own errors name it: "path:line: ..."); a
** first line starting with '#' is skipped. CM_EIO ("path: No such file or
** directory") when it cannot be read, CM_EMEMCAP when larger than the memory cap. */
int cm_sandbox_dofile(cm_sandbox *sb, const char *path, int nresults, cm_err *err);

/* Bytes the state holds now (for tests and metrics). */
size_t cm_sandbox_memory(cm_sandbox *sb);

/* The memory cap in bytes (cm_sandbox_limits.memory_bytes or the default). */
size_t cm_sandbox_memory_cap(cm_sandbox *sb);

#endif
