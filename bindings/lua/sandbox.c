/*
** sandbox.c -- a Lua 5.4 state for untrusted code: allow-listed read-only
** globals, an instruction budget and a memory cap. Uses Lua 5.4, error.h.
**
** What a script sees (_ENV, also reachable as _G) is an empty proxy table
** whose metatable (protected: getmetatable gives false) reads from a backing
** table scripts cannot reach and refuses every write. The backing table holds
** assert error getmetatable ipairs next pairs rawequal rawget rawlen select
** tonumber tostring type _VERSION; our own pcall xpcall setmetatable rawset
** print load collectgarbage require; read-only proxies of copies of string,
** table, math, utf8, coroutine, and os with time clock date difftime only.
** Never opened or reachable: package, io, debug, dofile, loadfile,
** string.dump, math.randomseed (one generator serves every chunk of the
** state: no script may make another's numbers predictable). The backing table
** is also registry[LUA_RIDX_GLOBALS], so the host's lua_setglobal adds
** globals that scripts see read-only.
**
** Choices:
** - load(chunk [, name [, mode [, env]]]) loads text only: chunk must be a
**   string (no reader function), the mode is always "t" whatever is asked,
**   and the default environment is the sandbox's (never the host's). An
**   explicit env is honoured: it holds only values the calling script
**   already reaches, so it grants nothing.
** - collectgarbage("count") only; any other option raises.
** - print writes its arguments (luaL_tolstring, tab-separated) to stdout.
** - setmetatable refuses a metatable with a __gc field: finalizers run with
**   hooks off (unmetered) and even at lua_close. rawset refuses a table whose
**   metatable is protected (every read-only proxy). Undefined globals read nil.
** - require returns only modules given to cm_sandbox_preload, cached; a table
**   module comes back as a read-only view, so no script rewires another's.
** - string.rep and table.move are our own: the stock ones loop in C without
**   bound (string.rep("", 1e18); table.move over 2^40 indices).
**
** Budget: a count hook every `step` instructions charges the call. Past the
** budget it raises "instruction budget of N exhausted" and re-arms with a
** count of 1, so a pcall that catches it dies again at the next instruction;
** pcall, xpcall, coroutine.resume/close and wrapped coroutines re-raise a kill
** as soon as they return. Every error the hook raises is such a kill, for Lua
** leaves hooks off after an error raised in a hook until the next pcall
** boundary: a script's xpcall handler is skipped for a kill, and a coroutine
** that died of one is never closed (its __close handlers would run
** unmetered). New threads inherit the hook and coroutine.create/wrap/resume
** set it. The same hook kills a call nested deeper than SANDBOX_MAX_DEPTH
** calls ("stack overflow", CM_ELUA: Lua's own limit needs ~100 MiB of frames)
** and a call running longer than its wall-time backstop (budget x 1 us, at
** least 1 s, see cm_sandbox_set_time_limit; only instructions of
** pathological cost get there, such as a tail call that adds an argument
** each time, or a much slower machine, e.g. under valgrind). Known limit: one call of a C
** library function counts as one instruction and is not interrupted; its
** work is bounded by the memory cap, except Lua pattern matching, which can
** backtrack for a very long time on a short subject.
**
** Memory: the allocator refuses growth past the cap. Lua retries a refused
** allocation once after an emergency collection; a refusal that is not
** retried, or whose retry is refused too, kills the call with CM_EMEMCAP even
** if the script caught the "not enough memory" error.
*/
#include "sandbox.h"

#include "clock.h"
#include "fs.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#define SANDBOX_DEFAULT_INSTRUCTIONS 10000000u
#define SANDBOX_MODDIRS              8
#define SANDBOX_MODNAME_MAX          64
#define BUFFER_MT                    "caremesh.buffer"
#define SANDBOX_DEFAULT_MEMORY       ((size_t)64 * 1024 * 1024)
#define SANDBOX_HOOK_STEP            1000  /* instructions between budget checks */
#define SANDBOX_MAX_DEPTH            10000 /* nested calls (Lua's own limit needs ~100 MiB) */
#define SANDBOX_FRAME_BYTES          48    /* less than any call frame costs (CallInfo + slot) */
#define SANDBOX_NS_PER_INSTRUCTION   1000  /* wall-time backstop: ~100x an instruction */
#define SANDBOX_MIN_TIME_NS          1000000000u /* ... but never less than 1 s */
#define SANDBOX_POOL_STEP            16          /* size classes of the small-block lists */
#define SANDBOX_POOL_MAX             256         /* largest block kept in them */
#define SANDBOX_POOL_CLASSES         (SANDBOX_POOL_MAX / SANDBOX_POOL_STEP)
/* Under AddressSanitizer every block goes to malloc and free, so that a
** use after free or an overrun in Lua's blocks is seen, not hidden by the
** lists or a class's slack. */
#if defined(__SANITIZE_ADDRESS__)
#define SANDBOX_POOL_LIMIT 0
#else
#define SANDBOX_POOL_LIMIT SANDBOX_POOL_MAX
#endif
#define SANDBOX_POOL_KEEP ((size_t)1 << 20) /* bytes they hold at most */

/* Why a call is being killed. Every error the hook raises is a kill: Lua
** leaves hooks off after it until a pcall boundary, so nothing may catch it
** and go on (see xpcall_handler, sb_co_wrapped). */
typedef enum { KILL_NONE = 0, KILL_BUDGET, KILL_TIME, KILL_MEMORY, KILL_DEPTH } kill_reason;

struct cm_sandbox {
    lua_State *L;
    uint64_t budget; /* instructions per outermost cm_sandbox_pcall */
    size_t mem_cap;
    size_t mem_used;
    int step;            /* count-hook period, <= budget */
    int depth;           /* nesting of cm_sandbox_pcall */
    bool armed;          /* inside cm_sandbox_pcall: budget and kills apply */
    uint64_t used;       /* instructions charged to this call */
    uint64_t time_limit; /* ns: the budget's wall-time backstop */
    uint64_t deadline;   /* ns on CLOCK_MONOTONIC for this call */
    kill_reason kill;
    char kill_where[160]; /* "chunk:line: " where the call was first killed */
    /* A growth refused at the cap that Lua has not retried yet (see sandbox_alloc). */
    bool pending;
    void *pending_ptr;
    size_t pending_osize, pending_nsize;
    unsigned long refusals; /* growths refused at the cap, ever */
    /* Freed small blocks kept for reuse, one list per size class (pool_*). */
    void *pool[SANDBOX_POOL_CLASSES];
    size_t pool_bytes;
    /* Directories `require` looks in for Lua modules ("lib.x" -> DIR/lib/x.lua). */
    char moddirs[SANDBOX_MODDIRS][512];
    int nmoddirs;
};

/* Registry keys (addresses only). */
static const char env_key = 'e';      /* the read-only global proxy */
static const char preload_key = 'p';  /* name -> lua_CFunction */
static const char modnames_key = 'n'; /* registered names, in order */
static const char loaded_key = 'l';   /* name -> module value (cache) */
static const char killed_key = 'k';   /* weak set of coroutines that died of a kill */

static cm_sandbox *sandbox_of(lua_State *L)
{
    return *(cm_sandbox **)lua_getextraspace(L);
}

/* ---------------------------------------------------------------------------
** Memory
*/

/* Lua's small blocks (tables, strings, closures, userdata of a step) come
** and go by the thousand a second: freed ones of up to SANDBOX_POOL_MAX
** bytes are kept in lists by size class (16-byte steps) and handed out
** again before asking malloc. A block of a class is always as large as
** its class, so a resize within the class keeps its block. What the lists
** hold is bounded (SANDBOX_POOL_KEEP) and freed with the sandbox; it is
** outside mem_used, which counts what Lua asked for, as before. */
static size_t pool_class(size_t n)
{
    return (n + SANDBOX_POOL_STEP - 1) / SANDBOX_POOL_STEP - 1;
}

static void *pool_get(cm_sandbox *sb, size_t n)
{
    size_t c = pool_class(n);
    void *block = sb->pool[c];
    if (block) {
        sb->pool[c] = *(void **)block;
        sb->pool_bytes -= (c + 1) * SANDBOX_POOL_STEP;
        return block;
    }
    return malloc((c + 1) * SANDBOX_POOL_STEP);
}

static void pool_put(cm_sandbox *sb, void *block, size_t n)
{
    size_t c = pool_class(n);
    if (sb->pool_bytes >= SANDBOX_POOL_KEEP) {
        free(block);
        return;
    }
    *(void **)block = sb->pool[c];
    sb->pool[c] = block;
    sb->pool_bytes += (c + 1) * SANDBOX_POOL_STEP;
}

static void pool_drain(cm_sandbox *sb)
{
    for (size_t c = 0; c < SANDBOX_POOL_CLASSES; c++)
        while (sb->pool[c]) {
            void *block = sb->pool[c];
            sb->pool[c] = *(void **)block;
            free(block);
        }
    sb->pool_bytes = 0;
}

/* Free a block of old bytes (old > 0). */
static void block_free(cm_sandbox *sb, void *ptr, size_t old)
{
    if (old <= SANDBOX_POOL_LIMIT)
        pool_put(sb, ptr, old);
    else
        free(ptr);
}

/* realloc for Lua's blocks: ptr holds old bytes (0: none), nsize > 0. */
static void *block_resize(cm_sandbox *sb, void *ptr, size_t old, size_t nsize)
{
    bool small_old = old > 0 && old <= SANDBOX_POOL_LIMIT, small_new = nsize <= SANDBOX_POOL_LIMIT;
    if (!ptr)
        return small_new ? pool_get(sb, nsize) : malloc(nsize);
    if (!small_old && !small_new)
        return realloc(ptr, nsize);
    if (small_old && small_new && pool_class(old) == pool_class(nsize))
        return ptr; /* its class's size holds both */
    void *block = small_new ? pool_get(sb, nsize) : malloc(nsize);
    if (!block)
        return nsize < old ? ptr : NULL; /* a shrink never fails: the larger block serves */
    memcpy(block, ptr, old < nsize ? old : nsize);
    block_free(sb, ptr, old);
    return block;
}

static void kill_for_memory(cm_sandbox *sb)
{
    if (sb->armed && sb->kill == KILL_NONE)
        sb->kill = KILL_MEMORY;
}

/* A refused growth that Lua did not retry at once is final. */
static void settle_refusal(cm_sandbox *sb)
{
    if (sb->pending) {
        sb->pending = false;
        kill_for_memory(sb);
    }
}

static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    cm_sandbox *sb = ud;
    size_t old = ptr ? osize : 0;
    bool retry;
    void *block;

    if (nsize == 0) { /* frees always succeed, whatever the cap */
        if (ptr)
            block_free(sb, ptr, old);
        sb->mem_used -= old;
        return NULL;
    }
    /* Lua retries a refused allocation, with the same arguments, right after
    ** an emergency collection (which only frees): anything else means the
    ** refusal stood. */
    retry = sb->pending && ptr == sb->pending_ptr && osize == sb->pending_osize &&
            nsize == sb->pending_nsize;
    if (sb->pending && !retry)
        settle_refusal(sb);
    sb->pending = false;
    if (nsize > old && (sb->mem_used > sb->mem_cap || nsize - old > sb->mem_cap - sb->mem_used)) {
        sb->refusals++;
        if (retry) {
            kill_for_memory(sb);
        } else {
            sb->pending = true;
            sb->pending_ptr = ptr;
            sb->pending_osize = osize;
            sb->pending_nsize = nsize;
        }
        return NULL;
    }
    block = block_resize(sb, ptr, old, nsize);
    if (block)
        sb->mem_used = sb->mem_used - old + nsize;
    return block;
}

/* ---------------------------------------------------------------------------
** Budget and kills
*/

static void budget_hook(lua_State *L, lua_Debug *ar);

static void kill_headline(const cm_sandbox *sb, char *buf, size_t size)
{
    if (sb->kill == KILL_BUDGET)
        snprintf(buf, size, "instruction budget of %llu exhausted", (unsigned long long)sb->budget);
    else if (sb->kill == KILL_TIME)
        snprintf(buf, size, "instruction budget of %llu exhausted (ran for more than %llu ms)",
                 (unsigned long long)sb->budget, (unsigned long long)(sb->time_limit / 1000000));
    else if (sb->kill == KILL_DEPTH)
        snprintf(buf, size, "stack overflow (more than %d nested calls)", SANDBOX_MAX_DEPTH);
    else
        snprintf(buf, size, "memory cap of %zu bytes exceeded", sb->mem_cap);
}

/* Deeper than SANDBOX_MAX_DEPTH? A state too small to hold that many frames
** is not, which spares the walk down the stack nearly always. */
static bool too_deep(const cm_sandbox *sb, lua_State *L)
{
    lua_Debug ar;

    if (sb->mem_used / SANDBOX_FRAME_BYTES <= SANDBOX_MAX_DEPTH)
        return false;
    return lua_getstack(L, SANDBOX_MAX_DEPTH, &ar) != 0;
}

/* Raise the kill error at `level` (0 in a hook, 1 in a C function) and make
** this thread's hook fire at its next instruction, so catching is useless. */
static int kill_raise(lua_State *L, int level)
{
    cm_sandbox *sb = sandbox_of(L);
    char headline[96];
    const char *where;

    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    kill_headline(sb, headline, sizeof(headline));
    luaL_where(L, level);
    where = lua_tostring(L, -1);
    if (sb->kill_where[0] == '\0')
        snprintf(sb->kill_where, sizeof(sb->kill_where), "%s", where);
    lua_pushstring(L, headline);
    lua_concat(L, 2);
    return lua_error(L);
}

/* Every `step` instructions: charge them, and kill the call past its budget,
** past its wall-time backstop (some instructions, such as a call with a
** million arguments, cost far more than others), or too deep. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    cm_sandbox *sb = sandbox_of(L);
    int count;

    (void)ar;
    if (!sb->armed)
        return;
    settle_refusal(sb);
    if (sb->kill == KILL_NONE) {
        count = lua_gethookcount(L);
        sb->used += (uint64_t)count;
        if (sb->used >= sb->budget)
            sb->kill = KILL_BUDGET;
        else if ((uint64_t)cm_mono_ns() > sb->deadline)
            sb->kill = KILL_TIME;
        else if (too_deep(sb, L))
            sb->kill = KILL_DEPTH;
        else {
            if (count != sb->step) /* back from a kill in an earlier call */
                lua_sethook(L, budget_hook, LUA_MASKCOUNT, sb->step);
            return;
        }
    }
    kill_raise(L, 0);
}

/* Give thread co the budget hook unless it has it (re-setting would restart
** its count, letting a coroutine that yields often run uncharged). */
static void hook_thread(lua_State *L, lua_State *co)
{
    cm_sandbox *sb = sandbox_of(L);

    if (sb->kill != KILL_NONE)
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, 1);
    else if (lua_gethook(co) != budget_hook)
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, sb->step);
}

/* Charge n instructions for work a C function does in a loop. */
static void charge(lua_State *L, uint64_t n)
{
    cm_sandbox *sb = sandbox_of(L);

    if (!sb->armed)
        return;
    if (sb->kill == KILL_NONE && sb->used < sb->budget && n < sb->budget - sb->used) {
        sb->used += n;
        return;
    }
    if (sb->kill == KILL_NONE)
        sb->kill = KILL_BUDGET;
    kill_raise(L, 1);
}

/* After a call that may have caught a kill: raise it again in the caller. */
static int guard_finish(lua_State *L, int status, lua_KContext ctx)
{
    cm_sandbox *sb = sandbox_of(L);

    (void)status;
    (void)ctx;
    if (sb->armed) {
        settle_refusal(sb);
        if (sb->kill != KILL_NONE)
            return kill_raise(L, 1);
    }
    return lua_gettop(L);
}

/* Call upvalue 1 with all arguments, then guard_finish (also after a yield). */
static int guard_call(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, guard_finish);
    return guard_finish(L, LUA_OK, 0);
}

/* ---------------------------------------------------------------------------
** Read-only proxies
*/

static int readonly_newindex(lua_State *L)
{
    const char *table = lua_tostring(L, lua_upvalueindex(1));
    const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;

    if (table == NULL && key)
        return luaL_error(L,
                          "attempt to assign to global '%s' (the sandbox's globals are "
                          "read-only; use local)",
                          key);
    if (table == NULL)
        return luaL_error(L, "attempt to assign to the sandbox's read-only globals (%s key)",
                          luaL_typename(L, 2));
    if (key)
        return luaL_error(L, "attempt to modify read-only table '%s' (field '%s')", table, key);
    return luaL_error(L, "attempt to modify read-only table '%s' (%s key)", table,
                      luaL_typename(L, 2));
}

/* The iterator of pairs(proxy): walks the backing table (upvalue 1)
** without handing it out. */
static int readonly_next(lua_State *L)
{
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 2);
    if (lua_next(L, 3)) /* stack: proxy, key, backing, nextkey, value */
        return 2;
    lua_pushnil(L);
    return 1;
}

static int readonly_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, readonly_next, 1);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Push a read-only proxy of the table at index backing. name is the table's
** name for error messages; NULL makes it the global environment. */
static void push_readonly(lua_State *L, int backing, const char *name)
{
    backing = lua_absindex(L, backing);
    lua_newtable(L);          /* proxy */
    lua_createtable(L, 0, 4); /* its metatable */
    lua_pushvalue(L, backing);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name); /* nil when name is NULL */
    lua_pushcclosure(L, readonly_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, backing);
    lua_pushcclosure(L, readonly_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2); /* stack: ..., proxy */
}

void cm_sandbox_push_readonly(lua_State *L, int idx, const char *name)
{
    push_readonly(L, idx, name ? name : "?");
}

/* ---------------------------------------------------------------------------
** Globals of our own
*/

static int sb_print(lua_State *L)
{
    int n = lua_gettop(L);

    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1)
            fputc('\t', stdout);
        fwrite(s, 1, len, stdout);
        lua_pop(L, 1);
    }
    fputc('\n', stdout);
    fflush(stdout);
    return 0;
}

static int sb_collectgarbage(lua_State *L)
{
    const char *opt = luaL_optstring(L, 1, "collect");

    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage('%s') is not allowed in the sandbox (only 'count')",
                          opt);
    lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT, 0) +
                          (lua_Number)lua_gc(L, LUA_GCCOUNTB, 0) / 1024);
    return 1;
}

static int sb_load(lua_State *L)
{
    size_t len;
    const char *chunk = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, chunk);
    bool has_env = !lua_isnone(L, 4);
    int status;

    luaL_optstring(L, 3, "t"); /* accepted, but the mode is always "t" */
    status = luaL_loadbufferx(L, chunk, len, name, "t");
    if (status == LUA_ERRMEM)
        return lua_error(L);
    if (status != LUA_OK) { /* stack: ..., message */
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (has_env)
        lua_pushvalue(L, 4);
    else
        lua_rawgetp(L, LUA_REGISTRYINDEX, &env_key);
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    return 1;
}

static int sb_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);

    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_argerror(L, 2, "__gc metamethods are not allowed in the sandbox");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static int sb_rawset(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL) /* read-only proxies have one */
        return luaL_argerror(L, 1, "the table's metatable is protected");
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

static int sb_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    return guard_call(L);
}

/* The message handler given to the stock xpcall (upvalue 1: the script's).
** An error raised by the budget hook leaves hooks off until a pcall boundary,
** so the script's handler must not run for a kill. */
static int xpcall_handler(lua_State *L)
{
    cm_sandbox *sb = sandbox_of(L);

    if (sb->armed && sb->kill != KILL_NONE)
        return 1; /* the error, unchanged */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int sb_xpcall(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, xpcall_handler, 1);
    lua_replace(L, 2);
    return guard_call(L);
}

static int module_not_found(lua_State *L, const char *name)
{
    luaL_Buffer b;
    lua_Integer n;
    int names;

    lua_rawgetp(L, LUA_REGISTRYINDEX, &modnames_key);
    names = lua_gettop(L);
    n = luaL_len(L, names);
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addstring(&b, ", ");
        lua_rawgeti(L, names, i);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    if (n == 0)
        return luaL_error(L, "module '%s' not found (the sandbox offers no modules)", name);
    return luaL_error(L, "module '%s' not found (the sandbox offers: %s)", name,
                      lua_tostring(L, -1));
}

static int read_file(const char *path, size_t max, char **buf_p, size_t *len_p, cm_err *err);

/* Is name a module name for files: words of [A-Za-z0-9_] joined by '.'? */
static bool module_name_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > SANDBOX_MODNAME_MAX || name[0] == '.' || name[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool word =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (!word && !(c == '.' && name[i + 1] != '.'))
            return false;
    }
    return true;
}

static int buffer_gc(lua_State *L)
{
    char **box = luaL_checkudata(L, 1, BUFFER_MT);
    free(*box);
    *box = NULL;
    return 0;
}

/* Push the function of module `name` found in a module directory (text only,
** the sandbox's environment), or return false when no directory has it. The
** file's text is held in a box, so an error while compiling cannot leak it. */
static bool load_module_file(lua_State *L, const char *name)
{
    cm_sandbox *sb = sandbox_of(L);
    char rel[SANDBOX_MODNAME_MAX + 8], path[600];
    if (!module_name_ok(name))
        return false;
    snprintf(rel, sizeof(rel), "%s", name);
    for (char *p = rel; *p; p++)
        if (*p == '.')
            *p = '/';
    for (int i = 0; i < sb->nmoddirs; i++) {
        snprintf(path, sizeof(path), "%s/%s.lua", sb->moddirs[i], rel);
        if (access(path, R_OK) != 0)
            continue;
        char **box = lua_newuserdatauv(L, sizeof(char *), 0);
        size_t len = 0;
        cm_err err;
        *box = NULL;
        luaL_setmetatable(L, BUFFER_MT);
        if (read_file(path, sb->mem_cap, box, &len, &err) != 0)
            luaL_error(L, "module '%s': %s", name, err.msg);
        lua_pushfstring(L, "@%s", path);
        if (luaL_loadbufferx(L, *box, len, lua_tostring(L, -1), "t") != LUA_OK)
            lua_error(L); /* the syntax error names the file and line */
        free(*box);
        *box = NULL;
        lua_rawgetp(L, LUA_REGISTRYINDEX, &env_key);
        lua_setupvalue(L, -2, 1);
        /* stack: ..., box, chunkname, function */
        lua_replace(L, -3);
        lua_pop(L, 1);
        return true;
    }
    return false;
}

static int sb_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);

    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key); /* 2 */
    if (lua_getfield(L, 2, name) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &preload_key); /* 3 */
    if (lua_getfield(L, 3, name) != LUA_TFUNCTION) { /* 4 */
        lua_pop(L, 1);
        if (!load_module_file(L, name))
            return module_not_found(L, name);
    }
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1); /* stack: name, loaded, preload, module */
    if (lua_isnil(L, 4)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    } else if (lua_type(L, 4) == LUA_TTABLE) {
        push_readonly(L, 4, name);
        lua_replace(L, 4);
    }
    lua_pushvalue(L, 4);
    lua_setfield(L, 2, name);
    return 1;
}

/* ---------------------------------------------------------------------------
** Library functions of our own
*/

/* string.rep, as the stock one except that an empty result costs nothing
** (the stock one loops n times, n up to 2^63, to build ""). Results are
** limited to INT_MAX bytes, as in stock Lua 5.4. */
static int sb_string_rep(lua_State *L)
{
    size_t len, seplen, total;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &seplen);
    luaL_Buffer b;
    char *p;

    if (n <= 0 || (len == 0 && (seplen == 0 || n == 1))) {
        lua_pushliteral(L, "");
        return 1;
    }
    if (len + seplen < len || len + seplen > (size_t)INT_MAX / (lua_Unsigned)n)
        return luaL_error(L, "resulting string too large");
    total = (size_t)n * len + (size_t)(n - 1) * seplen;
    p = luaL_buffinitsize(L, &b, total);
    for (; n > 1; n--) {
        memcpy(p, s, len);
        p += len;
        memcpy(p, sep, seplen);
        p += seplen;
    }
    memcpy(p, s, len);
    luaL_pushresultsize(&b, total);
    return 1;
}

/* Can the value at arg be read (or written) like a table? As the stock
** table library decides. */
static void check_table_like(lua_State *L, int arg, const char *metafield)
{
    if (lua_type(L, arg) == LUA_TTABLE)
        return;
    if (lua_getmetatable(L, arg)) {
        bool ok = lua_getfield(L, -1, metafield) != LUA_TNIL;
        lua_pop(L, 2);
        if (ok)
            return;
    }
    luaL_checktype(L, arg, LUA_TTABLE); /* raises */
}

/* table.move, as the stock one, charged one instruction per element (the
** loop runs in C, where the count hook does not see it). */
static int sb_table_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int tt = !lua_isnoneornil(L, 5) ? 5 : 1; /* destination table */
    lua_Integer n;

    check_table_like(L, 1, "__index");
    check_table_like(L, tt, "__newindex");
    if (e >= f) {
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        charge(L, (uint64_t)n);
        if (t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ))) {
            for (lua_Integer i = 0; i < n; i++) {
                lua_geti(L, 1, f + i);
                lua_seti(L, tt, t + i);
            }
        } else {
            for (lua_Integer i = n - 1; i >= 0; i--) {
                lua_geti(L, 1, f + i);
                lua_seti(L, tt, t + i);
            }
        }
    }
    lua_pushvalue(L, tt);
    return 1;
}

/* A coroutine that died of a kill may still hold to-be-closed variables,
** and Lua left hooks off in it (an error raised by a hook does that until a
** pcall boundary, which a dead coroutine never reaches): running its
** __close handlers would run unmetered code. Such threads are never closed. */
static void mark_killed_thread(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &killed_key);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

static bool is_killed_thread(lua_State *L, int idx)
{
    bool killed;

    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &killed_key);
    lua_pushvalue(L, idx);
    killed = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return killed;
}

static bool thread_died(lua_State *co)
{
    int status = lua_status(co);
    return status != LUA_OK && status != LUA_YIELD;
}

static int sb_co_create(lua_State *L)
{
    lua_State *co;

    luaL_checktype(L, 1, LUA_TFUNCTION);
    co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    hook_thread(L, co);
    return 1;
}

/* coroutine.resume: upvalue 1 is the stock one. */
static int sb_co_resume(lua_State *L)
{
    cm_sandbox *sb = sandbox_of(L);
    lua_State *co = lua_tothread(L, 1);

    luaL_argexpected(L, co, 1, "coroutine");
    hook_thread(L, co);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_pushvalue(L, 2);
    lua_insert(L, 1); /* stack: co, resume, co, args */
    lua_call(L, lua_gettop(L) - 2, LUA_MULTRET);
    if (sb->armed && sb->kill != KILL_NONE && thread_died(co))
        mark_killed_thread(L, 1);
    lua_remove(L, 1); /* stack: true, results / false, error */
    return guard_finish(L, LUA_OK, 0);
}

/* coroutine.close: upvalue 1 is the stock one. */
static int sb_co_close(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    lua_Debug ar;

    luaL_argexpected(L, co, 1, "coroutine");
    guard_finish(L, LUA_OK, 0); /* raises if the call is being killed */
    if (co == L)
        return luaL_error(L, "cannot close a running coroutine");
    if (lua_status(co) == LUA_OK && lua_getstack(co, 0, &ar))
        return luaL_error(L, "cannot close a normal coroutine");
    if (is_killed_thread(L, 1)) {
        luaL_pushfail(L);
        lua_pushliteral(L, "cannot close a coroutine killed by the sandbox's limits");
        return 2;
    }
    hook_thread(L, co);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET); /* runs its __close handlers */
    return guard_finish(L, LUA_OK, 0);
}

/* The function coroutine.wrap returns (upvalue 1: its thread): the stock
** one, except that a thread that died of a kill is not closed. */
static int sb_co_wrapped(lua_State *L)
{
    cm_sandbox *sb = sandbox_of(L);
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int nargs = lua_gettop(L), nres, status;
    bool killed;

    hook_thread(L, co);
    if (!lua_checkstack(co, nargs))
        return luaL_error(L, "too many arguments to resume");
    lua_xmove(L, co, nargs);
    status = lua_resume(co, L, nargs, &nres);
    if (status == LUA_OK || status == LUA_YIELD) {
        if (!lua_checkstack(L, nres + 1)) {
            lua_pop(co, nres);
            return luaL_error(L, "too many results to resume");
        }
        lua_xmove(co, L, nres);
        guard_finish(L, LUA_OK, 0);
        return nres;
    }
    lua_xmove(co, L, 1); /* the error */
    lua_pushvalue(L, lua_upvalueindex(1));
    if (sb->armed && sb->kill != KILL_NONE && thread_died(co))
        mark_killed_thread(L, -1);
    killed = is_killed_thread(L, -1); /* now or in an earlier call */
    lua_pop(L, 1);
    guard_finish(L, LUA_OK, 0);
    if (thread_died(co) && !killed) {
#if LUA_VERSION_RELEASE_NUM >= 50406
        status = lua_closethread(co, L); /* close its to-be-closed variables */
#else
        status = lua_resetthread(co);
#endif
        lua_xmove(co, L, 1);
    }
    if (status != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int sb_co_wrap(lua_State *L)
{
    sb_co_create(L);
    lua_pushcclosure(L, sb_co_wrapped, 1);
    return 1;
}

/* ---------------------------------------------------------------------------
** Building the environment (runs in protected mode, see cm_sandbox_new)
*/

static const luaL_Reg opened_libs[] = {
    {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
    {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
    {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_COLIBNAME, luaopen_coroutine},
    {LUA_OSLIBNAME, luaopen_os},     {NULL, NULL},
};

static const char *const base_allowed[] = {
    "assert", "error",  "getmetatable", "ipairs", "next",     "pairs",    "rawequal", "rawget",
    "rawlen", "select", "tonumber",     "type",   "tostring", "_VERSION", NULL,
};

static const char *const os_allowed[] = {"time", "clock", "date", "difftime", NULL};

static const luaL_Reg own_globals[] = {
    {"print", sb_print},   {"collectgarbage", sb_collectgarbage},
    {"load", sb_load},     {"setmetatable", sb_setmetatable},
    {"rawset", sb_rawset}, {"require", sb_require},
    {NULL, NULL},
};

/* Copy fields names of the table at src into the table on top. */
static void copy_fields(lua_State *L, int src, const char *const *names)
{
    for (; *names; names++) {
        lua_getfield(L, src, *names);
        lua_setfield(L, -2, *names);
    }
}

/* Push a shallow copy of the table at src. */
static void push_copy(lua_State *L, int src)
{
    src = lua_absindex(L, src);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, src)) { /* stack: copy, key, value */
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

/* Replace field name of the table on top by closure f over the old value. */
static void wrap_field(lua_State *L, const char *name, lua_CFunction f)
{
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, f, 1);
    lua_setfield(L, -2, name);
}

/* Set field name of table `into` to a read-only proxy of the table on top (popped). */
static void set_readonly_field(lua_State *L, int into, const char *name)
{
    push_readonly(L, -1, name);
    lua_setfield(L, into, name);
    lua_pop(L, 1);
}

/* The real string table: also the string metatable's __index, which scripts
** cannot reach because that metatable is protected. */
static void patch_string_library(lua_State *L, int string)
{
    lua_pushvalue(L, string);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pushcfunction(L, sb_string_rep);
    lua_setfield(L, -2, "rep");
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Add the library proxies to the backing table at g; loaded is _LOADED. */
static void add_libraries(lua_State *L, int g, int loaded)
{
    lua_getfield(L, loaded, LUA_STRLIBNAME);
    patch_string_library(L, lua_gettop(L));
    push_copy(L, -1);
    set_readonly_field(L, g, LUA_STRLIBNAME);
    lua_pop(L, 1);

    lua_getfield(L, loaded, LUA_TABLIBNAME);
    push_copy(L, -1);
    lua_pushcfunction(L, sb_table_move);
    lua_setfield(L, -2, "move");
    set_readonly_field(L, g, LUA_TABLIBNAME);
    lua_pop(L, 1);

    lua_getfield(L, loaded, LUA_MATHLIBNAME);
    push_copy(L, -1);
    lua_pushnil(L);
    lua_setfield(L, -2, "randomseed");
    set_readonly_field(L, g, LUA_MATHLIBNAME);
    lua_pop(L, 1);

    lua_getfield(L, loaded, LUA_UTF8LIBNAME);
    push_copy(L, -1);
    set_readonly_field(L, g, LUA_UTF8LIBNAME);
    lua_pop(L, 1);

    lua_getfield(L, loaded, LUA_COLIBNAME);
    push_copy(L, -1);
    lua_pushcfunction(L, sb_co_create);
    lua_setfield(L, -2, "create");
    lua_pushcfunction(L, sb_co_wrap);
    lua_setfield(L, -2, "wrap");
    wrap_field(L, "resume", sb_co_resume);
    wrap_field(L, "close", sb_co_close);
    set_readonly_field(L, g, LUA_COLIBNAME);
    lua_pop(L, 1);

    lua_getfield(L, loaded, LUA_OSLIBNAME);
    lua_createtable(L, 0, 4);
    copy_fields(L, -2, os_allowed);
    lua_pushvalue(L, -1);
    lua_setfield(L, loaded, LUA_OSLIBNAME); /* _LOADED names functions in tracebacks */
    set_readonly_field(L, g, LUA_OSLIBNAME);
    lua_pop(L, 1);
}

static void new_registry_table(lua_State *L, const void *key, const char *mode)
{
    lua_newtable(L);
    if (mode) {
        lua_createtable(L, 0, 1);
        lua_pushstring(L, mode);
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

static int setup_env(lua_State *L)
{
    int loaded, base, g;

    for (const luaL_Reg *lib = opened_libs; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 0);
        lua_pop(L, 1);
    }
    new_registry_table(L, &killed_key, "k");
    new_registry_table(L, &preload_key, NULL);
    if (luaL_newmetatable(L, BUFFER_MT)) {
        lua_pushcfunction(L, buffer_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    new_registry_table(L, &modnames_key, NULL);
    new_registry_table(L, &loaded_key, NULL);

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    loaded = lua_gettop(L);
    lua_getfield(L, loaded, LUA_GNAME); /* the stock globals, with load, dofile, ... */
    base = lua_gettop(L);
    lua_newtable(L); /* the backing table of the sandbox's globals */
    g = lua_gettop(L);

    copy_fields(L, base, base_allowed);
    luaL_setfuncs(L, own_globals, 0);
    lua_getfield(L, base, "pcall");
    lua_pushcclosure(L, sb_pcall, 1);
    lua_setfield(L, g, "pcall");
    lua_getfield(L, base, "xpcall");
    lua_pushcclosure(L, sb_xpcall, 1);
    lua_setfield(L, g, "xpcall");
    add_libraries(L, g, loaded);

    push_readonly(L, g, NULL);
    lua_pushvalue(L, -1);
    lua_setfield(L, g, LUA_GNAME);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &env_key);

    lua_pushvalue(L, g);
    lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_pushvalue(L, g);
    lua_setfield(L, loaded, LUA_GNAME); /* the stock globals become garbage */
    return 0;
}

/* ---------------------------------------------------------------------------
** API
*/

cm_sandbox *cm_sandbox_new(const cm_sandbox_limits *limits, cm_err *err)
{
    cm_sandbox *sb = calloc(1, sizeof(*sb));
    int status;

    if (!sb) {
        cm_err_set(err, CM_ENOMEM, "sandbox: out of memory");
        return NULL;
    }
    sb->budget =
        limits && limits->instructions ? limits->instructions : SANDBOX_DEFAULT_INSTRUCTIONS;
    sb->mem_cap = limits && limits->memory_bytes ? limits->memory_bytes : SANDBOX_DEFAULT_MEMORY;
    sb->step = sb->budget < SANDBOX_HOOK_STEP ? (int)sb->budget : SANDBOX_HOOK_STEP;
    cm_sandbox_set_time_limit(sb, 0);
    sb->L = lua_newstate(sandbox_alloc, sb);
    if (!sb->L) {
        if (sb->refusals)
            cm_err_set(err, CM_EMEMCAP, "sandbox: memory cap of %zu bytes is too small",
                       sb->mem_cap);
        else
            cm_err_set(err, CM_ENOMEM, "sandbox: out of memory creating a Lua state");
        goto fail;
    }
    *(cm_sandbox **)lua_getextraspace(sb->L) = sb;
    lua_pushcfunction(sb->L, setup_env);
    status = lua_pcall(sb->L, 0, 0, 0);
    if (status == LUA_ERRMEM && sb->refusals) {
        cm_err_set(err, CM_EMEMCAP, "sandbox: memory cap of %zu bytes is too small", sb->mem_cap);
        goto fail;
    }
    if (status != LUA_OK) {
        cm_err_set(err, status == LUA_ERRMEM ? CM_ENOMEM : CM_ELUA, "sandbox: setup failed: %s",
                   lua_type(sb->L, -1) == LUA_TSTRING ? lua_tostring(sb->L, -1) : "?");
        goto fail;
    }
    return sb;

fail:
    cm_sandbox_destroy(&sb);
    return NULL;
}

void cm_sandbox_destroy(cm_sandbox **sb_p)
{
    cm_sandbox *sb = sb_p ? *sb_p : NULL;

    if (!sb)
        return;
    sb->armed = false;
    sb->mem_cap = SIZE_MAX; /* nothing may fail while closing */
    if (sb->L)
        lua_close(sb->L);
    pool_drain(sb);
    free(sb);
    *sb_p = NULL;
}

void cm_sandbox_set_time_limit(cm_sandbox *sb, uint64_t ms)
{
    if (ms == 0) {
        sb->time_limit = sb->budget > UINT64_MAX / 2 / SANDBOX_NS_PER_INSTRUCTION
                             ? UINT64_MAX / 2
                             : sb->budget * SANDBOX_NS_PER_INSTRUCTION;
        if (sb->time_limit < SANDBOX_MIN_TIME_NS)
            sb->time_limit = SANDBOX_MIN_TIME_NS;
    } else {
        sb->time_limit = ms > UINT64_MAX / 2 / 1000000 ? UINT64_MAX / 2 : ms * 1000000;
    }
}

lua_State *cm_sandbox_state(cm_sandbox *sb)
{
    return sb->L;
}

size_t cm_sandbox_memory(cm_sandbox *sb)
{
    return sb->mem_used;
}

size_t cm_sandbox_memory_cap(cm_sandbox *sb)
{
    return sb->mem_cap;
}

struct preload_args {
    const char *name;
    lua_CFunction open;
};

static int preload_register(lua_State *L)
{
    const struct preload_args *args = lua_touserdata(L, 1);

    lua_rawgetp(L, LUA_REGISTRYINDEX, &preload_key);
    if (lua_getfield(L, -1, args->name) == LUA_TNIL) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &modnames_key);
        lua_pushstring(L, args->name);
        lua_rawseti(L, -2, luaL_len(L, -2) + 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, args->open);
    lua_setfield(L, -2, args->name);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key); /* a new opener replaces the module */
    lua_pushnil(L);
    lua_setfield(L, -2, args->name);
    return 0;
}

void cm_sandbox_preload(cm_sandbox *sb, const char *name, lua_CFunction open)
{
    struct preload_args args = {name, open};

    if (!lua_checkstack(sb->L, 2))
        return;
    lua_pushcfunction(sb->L, preload_register);
    lua_pushlightuserdata(sb->L, &args);
    if (lua_pcall(sb->L, 1, 0, 0) != LUA_OK)
        lua_pop(sb->L, 1); /* out of memory: the module stays unknown to require */
}

int cm_sandbox_add_module_dir(cm_sandbox *sb, const char *dir, cm_err *err)
{
    if (!dir || strlen(dir) >= sizeof(sb->moddirs[0]) - SANDBOX_MODNAME_MAX - 8)
        return cm_err_set(err, CM_EINVAL, "module directory: path too long");
    for (int i = 0; i < sb->nmoddirs; i++)
        if (strcmp(sb->moddirs[i], dir) == 0)
            return 0;
    if (sb->nmoddirs >= SANDBOX_MODDIRS)
        return cm_err_set(err, CM_EINVAL, "at most %d module directories", SANDBOX_MODDIRS);
    snprintf(sb->moddirs[sb->nmoddirs++], sizeof(sb->moddirs[0]), "%s", dir);
    return 0;
}

/* How Lua shows a chunk name: "@path" and "=name" without their mark. */
static const char *chunk_display(const char *chunkname)
{
    if (!chunkname)
        return "?";
    return chunkname[0] == '@' || chunkname[0] == '=' ? chunkname + 1 : chunkname;
}

int cm_sandbox_load(cm_sandbox *sb, const char *chunkname, const char *buf, size_t len, cm_err *err)
{
    lua_State *L = sb->L;
    unsigned long refusals = sb->refusals;
    const char *msg;
    int status, rc;

    if (!lua_checkstack(L, 2))
        return cm_err_set(err, CM_ENOMEM, "%s: no room on the Lua stack", chunk_display(chunkname));
    status = luaL_loadbufferx(L, buf, len, chunkname, "t");
    if (status == LUA_OK) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &env_key);
        if (!lua_setupvalue(L, -2, 1))
            lua_pop(L, 1);
        return 0;
    }
    msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    if (status == LUA_ERRMEM && sb->refusals != refusals)
        rc = cm_err_set(err, CM_EMEMCAP, "%s: memory cap of %zu bytes exceeded while loading",
                        chunk_display(chunkname), sb->mem_cap);
    else if (status == LUA_ERRMEM)
        rc =
            cm_err_set(err, CM_ENOMEM, "%s: out of memory while loading", chunk_display(chunkname));
    else if (len > 0 && buf[0] == LUA_SIGNATURE[0]) /* Lua's message has no name */
        rc = cm_err_set(err, CM_ELUA, "%s: %s", chunk_display(chunkname), msg);
    else
        rc = cm_err_set(err, CM_ELUA, "%s", msg);
    lua_pop(L, 1);
    return rc;
}

static int traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (msg == NULL) {
        if (sandbox_of(L)->kill == KILL_NONE && luaL_callmeta(L, 1, "__tostring") &&
            lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void arm(cm_sandbox *sb)
{
    sb->armed = true;
    sb->used = 0;
    sb->deadline = (uint64_t)cm_mono_ns() + sb->time_limit;
    sb->kill = KILL_NONE;
    sb->kill_where[0] = '\0';
    sb->pending = false;
    lua_sethook(sb->L, budget_hook, LUA_MASKCOUNT, sb->step);
}

static void disarm(cm_sandbox *sb)
{
    sb->armed = false;
    sb->kill = KILL_NONE;
    sb->pending = false;
    lua_sethook(sb->L, NULL, 0, 0);
}

/* The outcome of a call that ended with status; the error value is on top
** when status is not LUA_OK. */
static int call_result(cm_sandbox *sb, int status, unsigned long refusals, cm_err *err)
{
    lua_State *L = sb->L;
    const char *msg = NULL, *trace = NULL;
    char headline[96];

    if (status != LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
        msg = lua_tostring(L, -1);
        trace = strstr(msg, "\nstack traceback:");
    }
    if (sb->kill != KILL_NONE) {
        static const int codes[] = {[KILL_BUDGET] = CM_EBUDGET,
                                    [KILL_TIME] = CM_EBUDGET,
                                    [KILL_MEMORY] = CM_EMEMCAP,
                                    [KILL_DEPTH] = CM_ELUA};
        kill_headline(sb, headline, sizeof(headline));
        return cm_err_set(err, codes[sb->kill], "%s%s%s", sb->kill_where, headline,
                          trace ? trace : "");
    }
    if (status == LUA_OK)
        return 0;
    if (status == LUA_ERRMEM && sb->refusals != refusals)
        return cm_err_set(err, CM_EMEMCAP, "memory cap of %zu bytes exceeded", sb->mem_cap);
    if (status == LUA_ERRMEM)
        return cm_err_set(err, CM_ENOMEM, "out of memory (the host's allocator failed)");
    return cm_err_set(err, CM_ELUA, "%s", msg ? msg : "(error object is not a string)");
}

/* lua_pcall of the function above the traceback handler at stack index h,
** the budget armed when it is the outermost call; on failure the stack is
** cut below h. */
static int pcall_at(cm_sandbox *sb, int h, int nargs, int nresults, cm_err *err)
{
    lua_State *L = sb->L;
    bool outer = sb->depth == 0;
    unsigned long refusals = sb->refusals;
    int status, rc;

    if (outer)
        arm(sb);
    sb->depth++;
    status = lua_pcall(L, nargs, nresults, h);
    sb->depth--;
    if (sb->armed)
        settle_refusal(sb);
    rc = call_result(sb, status, refusals, err);
    if (rc != 0)
        lua_settop(L, h - 1); /* also drops results of a call that swallowed a kill */
    if (outer)
        disarm(sb);
    return rc;
}

int cm_sandbox_pcall(cm_sandbox *sb, int nargs, int nresults, cm_err *err)
{
    lua_State *L = sb->L;
    int base = lua_gettop(L) - nargs; /* the function */
    int rc;

    if (!lua_checkstack(L, 1)) {
        lua_settop(L, base - 1);
        return cm_err_set(err, CM_ENOMEM, "no room on the Lua stack for the call");
    }
    lua_pushcfunction(L, traceback_handler);
    lua_insert(L, base); /* stack: handler, function, args */
    rc = pcall_at(sb, base, nargs, nresults, err);
    if (rc == 0)
        lua_remove(L, base);
    return rc;
}

void cm_sandbox_push_msgh(cm_sandbox *sb)
{
    lua_pushcfunction(sb->L, traceback_handler);
}

int cm_sandbox_pcall_msgh(cm_sandbox *sb, int nargs, int nresults, cm_err *err)
{
    return pcall_at(sb, lua_gettop(sb->L) - nargs - 1, nargs, nresults, err);
}

/* Read the whole file at path (a regular file: never a FIFO or a device that
** would block) into a malloc'd buffer of at most max bytes. */
static int read_file(const char *path, size_t max, char **buf_p, size_t *len_p, cm_err *err)
{
    int rc = cm_fs_read(path, max, buf_p, len_p, err);
    if (rc == CM_EINVAL) /* too large */
        return cm_err_set(err, CM_EMEMCAP,
                          "%s: the file is larger than the sandbox's memory cap of %zu bytes", path,
                          max);
    return rc == 0 ? 0 : cm_err_recode(err, CM_EIO);
}

int cm_sandbox_dofile(cm_sandbox *sb, const char *path, int nresults, cm_err *err)
{
    char *buf = NULL, *chunkname = NULL;
    const char *src;
    size_t len = 0, skip = 0;
    int rc;

    rc = read_file(path, sb->mem_cap, &buf, &len, err);
    if (rc)
        goto done;
    chunkname = malloc(strlen(path) + 2);
    if (!chunkname) {
        rc = cm_err_set(err, CM_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    snprintf(chunkname, strlen(path) + 2, "@%s", path);
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) /* UTF-8 byte order mark */
        skip = 3;
    if (skip < len && buf[skip] == '#') /* "#!" line: skipped, its newline kept */
        while (skip < len && buf[skip] != '\n')
            skip++;
    src = buf + skip;
    rc = cm_sandbox_load(sb, chunkname, src, len - skip, err);
    if (rc)
        goto done;
    rc = cm_sandbox_pcall(sb, 0, nresults, err);

done:
    free(chunkname);
    free(buf);
    return rc;
}
