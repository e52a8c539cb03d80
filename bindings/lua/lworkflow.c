/*
** lworkflow.c -- cm.workflow (definition checks) and the Lua runtime behind
** the engine seam: compile, install, and one step of one instance.
** Every Lua operation runs inside cm_sandbox_pcall (budget, memory cap,
** traceback); C allocations are handed over only after the last Lua call.
*/
#include "lworkflow.h"

#include "ljson.h"
#include "terms.h"
#include "text.h"
#include "valuesets.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INSTANCE_MT "caremesh.Instance"
#define MAX_HOPS    32 /* transitions one step may chain (enter handlers calling go) */

static const char SPECS_KEY = 's'; /* registry: weak set of tables made by cm.workflow */

struct cm_lua_runtime {
    cm_runtime seam;
    cm_sandbox *sb;
    int defs_ref; /* registry ref: "name@rev" -> spec; "pending:name" -> spec */
    /* Contexts kept as tables between steps (cm_step.ctx_held): registry ref
    ** to id -> table. An id belongs to one instance: a step keeps its copy
    ** under the id it was given (the engine hands an id to that instance's
    ** next step only), a new one when it was given none; ids never pass to
    ** another instance, so one dropped (released, or all of them after a
    ** memory kill) is only a miss: the step reads the text. */
    int kept_ref;
    lua_Integer kept_last;
    int mt_ref; /* registry ref: the handles' metatable (push_instance_mt) */
    /* The definition the last step looked up (steps of one workflow follow
    ** each other): its spec in the registry slot def_ref, for def_name and
    ** def_rev; def_name "" when none (and after every install). */
    int def_ref;
    char def_name[CM_NAME_MAX];
    int def_rev;
    const char *def_purpose; /* its purpose of use (def_purpose: a static string) */
    int driver_ref;          /* registry ref: step_driver's closure, its names as upvalues */
    const char *ctx_key;     /* the Lua string "ctx", kept as its upvalue DRV_CTX (inst_index) */
    unsigned long ctx_reads; /* contexts read from their text */
    /* Steps begun, and the number of the one under way (0: none): a handle
    ** reads only while its step's number is live_gen (inst_drv). */
    uint64_t step_gen, live_gen;
    /* The host attached to the state (lhost.h), looked up until one is found,
    ** then kept: a state's host is attached once (cm_lua_host_set refuses
    ** another), and the registry lookup is a cost every step would pay. */
    cm_lua_host *host;
};

/* Keep contexts only while the state holds less than this share of its cap:
** the handlers' room stays the cap less a quarter at most. */
#define KEPT_CAP_SHARE 4

/* ---- durations -------------------------------------------------------- */

bool cm_duration_parse(const char *s, int64_t *ms)
{
    int64_t total = 0;
    bool any = false;
    if (!s || !*s)
        return false;
    while (*s) {
        int64_t n = 0;
        int digits = 0;
        for (; *s >= '0' && *s <= '9'; s++, digits++) {
            if (n > 100000000)
                return false;
            n = n * 10 + (*s - '0');
        }
        int64_t unit = *s == 's'   ? 1000
                       : *s == 'm' ? 60000
                       : *s == 'h' ? 3600000
                       : *s == 'd' ? 86400000
                       : *s == 'w' ? 604800000
                                   : 0;
        if (digits == 0 || unit == 0)
            return false;
        total += n * unit;
        any = true;
        s++;
    }
    if (ms)
        *ms = total;
    return any;
}

/* ---- cm.workflow: checking a definition ------------------------------- */

static int spec_error(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Raise "file:line: workflow: <message>" at the definition's caller. */
static int spec_error(lua_State *L, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    luaL_where(L, 1);
    lua_pushfstring(L, "workflow: %s", msg);
    lua_concat(L, 2);
    return lua_error(L);
}

static bool only_fields(lua_State *L, int idx, const char *const *allowed, const char **bad)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        bool ok = false;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (const char *const *a = allowed; *a && !ok; a++)
                ok = strcmp(lua_tostring(L, -2), *a) == 0;
        if (!ok) {
            *bad = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "(a non-name key)";
            lua_pop(L, 2);
            return false;
        }
        lua_pop(L, 1);
    }
    return true;
}

static bool state_exists(lua_State *L, int states, const char *name)
{
    bool ok = lua_getfield(L, states, name) == LUA_TTABLE;
    lua_pop(L, 1);
    return ok;
}

/* One transition spec at the top of the stack (string, function, {to=, guard=}). */
static void check_target(lua_State *L, int states, const char *state, const char *event)
{
    int t = lua_gettop(L);
    if (lua_type(L, t) == LUA_TSTRING) {
        if (!state_exists(L, states, lua_tostring(L, t)))
            spec_error(L, "states.%s.on[\"%s\"]: transition to unknown state \"%s\"", state, event,
                       lua_tostring(L, t));
    } else if (lua_type(L, t) == LUA_TTABLE) {
        static const char *const fields[] = {"to", "guard", NULL};
        const char *bad;
        if (!only_fields(L, t, fields, &bad))
            spec_error(L, "states.%s.on[\"%s\"].%s: unknown field (use to, guard)", state, event,
                       bad);
        int to = lua_getfield(L, t, "to");
        if (to == LUA_TSTRING && !state_exists(L, states, lua_tostring(L, -1)))
            spec_error(L, "states.%s.on[\"%s\"].to: unknown state \"%s\"", state, event,
                       lua_tostring(L, -1));
        if (to != LUA_TSTRING && to != LUA_TFUNCTION)
            spec_error(L, "states.%s.on[\"%s\"].to: must be a state name or a function", state,
                       event);
        int g = lua_getfield(L, t, "guard");
        if (g != LUA_TNIL && g != LUA_TFUNCTION)
            spec_error(L, "states.%s.on[\"%s\"].guard: must be a function", state, event);
        lua_pop(L, 2);
    } else if (lua_type(L, t) != LUA_TFUNCTION) {
        spec_error(L, "states.%s.on[\"%s\"]: must be a state name, a function or {to=, guard=}",
                   state, event);
    }
}

static void check_transitions(lua_State *L, int states, const char *state, int on)
{
    lua_pushnil(L);
    while (lua_next(L, on)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            spec_error(L, "states.%s.on: event names must be strings", state);
        const char *event = lua_tostring(L, -2);
        if (lua_type(L, -1) == LUA_TTABLE && lua_rawlen(L, -1) > 0) {
            int list = lua_gettop(L);
            for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, list); i++) {
                lua_rawgeti(L, list, i);
                check_target(L, states, state, event);
                lua_pop(L, 1);
            }
        } else {
            check_target(L, states, state, event);
        }
        lua_pop(L, 1);
    }
}

static int check_states(lua_State *L, int states)
{
    static const char *const fields[] = {"enter", "exit", "on", "final", "description", NULL};
    int finals = 0;
    lua_pushnil(L);
    while (lua_next(L, states)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TTABLE)
            spec_error(L, "states: each entry must be name = { ... }");
        const char *name = lua_tostring(L, -2), *bad;
        int st = lua_gettop(L);
        if (!only_fields(L, st, fields, &bad))
            spec_error(L, "states.%s.%s: unknown field (use enter, exit, on, final, description)",
                       name, bad);
        for (int i = 0; i < 2; i++) {
            const char *h = i ? "exit" : "enter";
            int ht = lua_getfield(L, st, h);
            if (ht != LUA_TNIL && ht != LUA_TFUNCTION)
                spec_error(L, "states.%s.%s: must be a function", name, h);
            lua_pop(L, 1);
        }
        bool final = lua_getfield(L, st, "final") != LUA_TNIL && lua_toboolean(L, -1);
        lua_pop(L, 1);
        int on = lua_getfield(L, st, "on");
        if (on != LUA_TNIL && on != LUA_TTABLE)
            spec_error(L, "states.%s.on: must be a table of event = transition", name);
        if (final && on == LUA_TTABLE)
            spec_error(L, "states.%s: a final state takes no events (remove 'on')", name);
        if (on == LUA_TTABLE)
            check_transitions(L, states, name, lua_gettop(L));
        lua_pop(L, 2);
        finals += final;
    }
    return finals;
}

static const char *const input_types[] = {"string", "number", "integer",  "boolean",
                                          "table",  "date",   "datetime", NULL};

bool cm_workflow_input_type_known(const char *t, size_t len)
{
    char base[64];
    if (len > 0 && t[len - 1] == '?')
        len--;
    if (len == 0 || len >= sizeof(base) || memchr(t, '\0', len))
        return false;
    memcpy(base, t, len);
    base[len] = '\0';
    for (const char *const *k = input_types; *k; k++)
        if (strcmp(base, *k) == 0)
            return true;
    return cm_kind_parse(base) >= 0;
}

const char *cm_workflow_purpose(const char *s)
{
    for (size_t i = 0; s && cm_values_purposes[i]; i++)
        if (strcmp(cm_values_purposes[i], s) == 0)
            return cm_values_purposes[i];
    return NULL;
}

const char *cm_workflow_purpose_rule(char *buf, size_t n)
{
    char list[128];
    snprintf(buf, n, "purpose: must be one of %s (the purposes of consents and partnership terms)",
             cm_values_join(cm_values_purposes, list, sizeof(list)));
    return buf;
}

/* The purpose of use the definition at idx declares (cm_workflow_purpose),
** or NULL when it declares none or names no purpose of use. */
static const char *def_purpose(lua_State *L, int idx)
{
    const char *p = NULL;
    if (lua_getfield(L, idx, "purpose") == LUA_TSTRING)
        p = cm_workflow_purpose(lua_tostring(L, -1));
    lua_pop(L, 1);
    return p;
}

static int l_workflow(lua_State *L)
{
    static const char *const fields[] = {"name",  "version", "description", "purpose", "input",
                                         "start", "states",  "started_by",  NULL};
    const char *bad;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    if (!only_fields(L, 1, fields, &bad))
        return spec_error(L,
                          "%s: unknown field (use name, version, description, purpose, input, "
                          "start, states, started_by)",
                          bad);
    if (lua_getfield(L, 1, "name") != LUA_TSTRING || cm_id_check(lua_tostring(L, -1)) != 0)
        return spec_error(L, "name: required, letters, digits, . _ : - (at most %d)", CM_ID_MAX);
    if (lua_getfield(L, 1, "version") != LUA_TNUMBER || !lua_isinteger(L, -1) ||
        lua_tointeger(L, -1) < 1)
        return spec_error(L, "version: required, a whole number from 1");
    int pt = lua_getfield(L, 1, "purpose");
    if (pt != LUA_TNIL && (pt != LUA_TSTRING || !cm_workflow_purpose(lua_tostring(L, -1)))) {
        char rule[256];
        return spec_error(L, "%s", cm_workflow_purpose_rule(rule, sizeof(rule)));
    }
    int it = lua_getfield(L, 1, "input");
    if (it == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING ||
                !cm_workflow_input_type_known(lua_tostring(L, -1), lua_rawlen(L, -1)))
                return spec_error(L,
                                  "input.%s: must be a type name: string, number, integer, "
                                  "boolean, table, date, datetime or a record kind (patient, "
                                  "organization, ...), with ? when optional",
                                  lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
            lua_pop(L, 1);
        }
    } else if (it != LUA_TNIL) {
        return spec_error(L, "input: must be a table of field = type");
    }
    int sb = lua_getfield(L, 1, "started_by");
    if (sb == LUA_TTABLE) {
        lua_Integer n = luaL_len(L, -1);
        if (n < 1 || n > CM_WF_STARTERS_MAX)
            return spec_error(L, "started_by: a list of 1 to %d message kinds", CM_WF_STARTERS_MAX);
        for (lua_Integer i = 1; i <= n; i++) {
            size_t len = 0;
            if (lua_geti(L, -1, i) != LUA_TSTRING ||
                (lua_tolstring(L, -1, &len), len == 0 || len >= CM_NAME_MAX))
                return spec_error(L, "started_by[%d]: a message kind, 1 to %d characters", (int)i,
                                  CM_NAME_MAX - 1);
            lua_pop(L, 1);
        }
    } else if (sb != LUA_TNIL) {
        return spec_error(L, "started_by: a list of message kinds (e.g. { \"referral.request\" })");
    }
    if (lua_getfield(L, 1, "states") != LUA_TTABLE)
        return spec_error(L, "states: required, a table of name = { ... }");
    int states = lua_gettop(L);
    if (lua_getfield(L, 1, "start") != LUA_TSTRING)
        return spec_error(L, "start: required, the name of the first state");
    if (!state_exists(L, states, lua_tostring(L, -1)))
        return spec_error(L, "start: unknown state \"%s\"", lua_tostring(L, -1));
    if (check_states(L, states) == 0)
        return spec_error(L, "states: no final state (mark one final = true)");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &SPECS_KEY);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_settop(L, 1);
    return 1;
}

void cm__lworkflow_register(lua_State *L)
{
    /* stack: module */
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SPECS_KEY) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_newtable(L);
        lua_pushstring(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &SPECS_KEY);
    } else {
        lua_pop(L, 1);
    }
    lua_pushcfunction(L, l_workflow);
    lua_setfield(L, -2, "workflow");
}

/* ---- the instance handle ---------------------------------------------- */

/* What one step's handlers share. Lives on the C stack of rt_step. */
typedef struct drv {
    cm_step *sp;
    cm_lua_runtime *rt;
    bool ctx_read;         /* wf.ctx was made in this step */
    bool held_used;        /* ... from the table kept under sp->ctx_held */
    lua_Integer stored;    /* the copy of wf.ctx kept under this id (0: not kept) */
    cm_ljson_buf ctx_text; /* wf.ctx written (ctx_rc 0), freed by rt_step */
    int ctx_rc;
    bool ctx_same;         /* ... and read back it behaves as the table did */
    cm_err *err;           /* ctx_rc's message */
    int states;            /* stack index of the definition's states table */
    char cur[CM_NAME_MAX]; /* the state handlers run in */
    char go[CM_NAME_MAX];  /* set by wf:go */
    bool go_set;
    int spawned;
    int visit;    /* states entered so far in this step (timers note theirs) */
    bool invalid; /* the request itself is wrong (CM_EINVAL) */
} drv;

typedef struct inst_ud {
    const void *tag;    /* &instance_mt_key: what index_inst checks */
    drv *d;             /* NULL once the step is over: a kept handle does nothing */
    cm_lua_runtime *rt; /* outlives every handle */
    uint64_t gen;       /* its step's number (cm_lua_runtime.live_gen while it runs) */
} inst_ud;

/* The handles' tag: its address marks an inst_ud (index_inst checks it). */
static const char instance_mt_key = 'i';

enum { UV_CTX = 1, UV_INPUT = 2, UV_EFFECTS = 3, UV_STATES = 4 };

/* The step driver of u; an error once its step is over: ended, or failed
** (a handler's raise unwinds past the u->d = NULL of step_driver, leaving
** u->d at a frame that is gone: the step's number tells). */
static drv *inst_drv(lua_State *L, const inst_ud *u)
{
    if (!u->d || u->gen != u->rt->live_gen)
        luaL_error(L, "this instance handle belongs to a step that is over");
    return u->d;
}

static drv *check_inst(lua_State *L)
{
    return inst_drv(L, luaL_checkudata(L, 1, INSTANCE_MT));
}

/* Append the table on top to the effects list (made with the first); pops it. */
static void add_effect(lua_State *L)
{
    if (lua_getiuservalue(L, 1, UV_EFFECTS) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, 1, UV_EFFECTS); /* stack: effect, list */
    }
    lua_insert(L, -2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 1);
}

/* Push a new effect table {type = type} with room for n more fields. */
static void new_effect(lua_State *L, const char *type, int n)
{
    lua_createtable(L, 0, n + 1);
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
}

/* effect.field = argument arg, when the argument was given. */
static void opt_field(lua_State *L, int arg, const char *field)
{
    if (lua_isnoneornil(L, arg))
        return;
    lua_pushvalue(L, arg);
    lua_setfield(L, -2, field);
}

static const char *check_name_arg(lua_State *L, int arg, const char *what)
{
    size_t len;
    const char *s = luaL_checklstring(L, arg, &len);
    if (len == 0 || len >= CM_NAME_MAX)
        luaL_argerror(L, arg,
                      lua_pushfstring(L, "%s must be 1 to %d characters", what, CM_NAME_MAX - 1));
    return s;
}

static int m_go(lua_State *L)
{
    drv *d = check_inst(L);
    lua_settop(L, 2);
    const char *state = check_name_arg(L, 2, "state");
    lua_getiuservalue(L, 1, UV_STATES); /* the definition's states (stack index 3) */
    if (!state_exists(L, 3, state))
        return luaL_error(L, "wf:go: unknown state \"%s\"", state);
    cm_copy_str(d->go, sizeof(d->go), state);
    d->go_set = true;
    return 0;
}

/* wf:after(duration, name [, payload [, {keep=true}]]) and wf:at(time, ...) */
static int add_timer(lua_State *L, int64_t due)
{
    lua_settop(L, 5); /* fixed arity: later pushes must not look like arguments */
    drv *d = check_inst(L);
    const char *name = check_name_arg(L, 3, "timer name");
    bool keep = false;
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    if (!lua_isnoneornil(L, 5)) {
        luaL_checktype(L, 5, LUA_TTABLE);
        keep = lua_getfield(L, 5, "keep") != LUA_TNIL && lua_toboolean(L, -1);
    }
    new_effect(L, "timer", 4);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, (lua_Integer)due);
    lua_setfield(L, -2, "due");
    opt_field(L, 4, "payload");
    if (!keep) {
        lua_pushstring(L, d->cur);
        lua_setfield(L, -2, "scoped");
        lua_pushinteger(L, d->visit);
        lua_setfield(L, -2, "visit");
    }
    add_effect(L);
    return 0;
}

static int m_after(lua_State *L)
{
    drv *d = check_inst(L);
    int64_t ms;
    if (!cm_duration_parse(luaL_checkstring(L, 2), &ms))
        return luaL_argerror(L, 2, "bad duration (use e.g. \"30m\", \"72h\", \"21d\", \"1d12h\")");
    return add_timer(L, d->sp->now_ms + ms);
}

static int m_at(lua_State *L)
{
    int64_t ms;
    check_inst(L);
    if (!cm_time_parse(luaL_checkstring(L, 2), &ms))
        return luaL_argerror(L, 2, "bad time (use an ISO-8601 date or date-time with a zone)");
    return add_timer(L, ms);
}

static int m_cancel(lua_State *L)
{
    lua_settop(L, 2); /* fixed arity: later pushes must not look like arguments */
    check_inst(L);
    const char *name = check_name_arg(L, 2, "timer name");
    new_effect(L, "cancel", 1);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    add_effect(L);
    return 0;
}

/* Copy field `from` of the table at src to field `to` of the table on top. */
static void copy_field(lua_State *L, int src, const char *from, const char *to)
{
    lua_getfield(L, src, from);
    lua_setfield(L, -2, to);
}

static int m_task(lua_State *L)
{
    lua_settop(L, 2); /* fixed arity: later pushes must not look like arguments */
    static const char *const fields[] = {"title", "description", "organization", "patient", "owner",
                                         "role",  "priority",    "due",          "note",    NULL};
    drv *d = check_inst(L);
    const char *bad;
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!only_fields(L, 2, fields, &bad))
        return luaL_error(L, "wf:task: %s: unknown field (use %s)", bad,
                          "title, description, organization, patient, owner, role, priority, "
                          "due, note");
    char id[CM_NAME_MAX];
    lua_getiuservalue(L, 1, UV_EFFECTS);
    int n = snprintf(id, sizeof(id), "%s.t%ld.%d", d->sp->instance, d->sp->seq,
                     (int)lua_rawlen(L, -1) + 1);
    lua_pop(L, 1);
    if (n < 0 || (size_t)n >= sizeof(id))
        return luaL_error(L, "wf:task: the task's id would be too long");
    new_effect(L, "task", 1);
    lua_createtable(L, 0, 9);
    lua_pushstring(L, id);
    lua_setfield(L, -2, "id");
    /* stack: effect, task */
    copy_field(L, 2, "title", "title");
    copy_field(L, 2, "description", "description");
    copy_field(L, 2, "organization", "organization");
    copy_field(L, 2, "patient", "patient");
    copy_field(L, 2, "owner", "owner");
    copy_field(L, 2, "role", "ownerRole");
    copy_field(L, 2, "priority", "priority");
    copy_field(L, 2, "note", "note");
    if (lua_getfield(L, 2, "due") == LUA_TSTRING) {
        int64_t ms;
        if (cm_duration_parse(lua_tostring(L, -1), &ms)) {
            char when[CM_TIME_BUFSZ];
            cm_time_format(d->sp->now_ms + ms, when, sizeof(when));
            lua_pushstring(L, when);
            lua_replace(L, -2);
        }
    }
    lua_setfield(L, -2, "due");
    lua_setfield(L, -2, "task");
    add_effect(L);
    lua_pushstring(L, id);
    return 1;
}

static int m_notify(lua_State *L)
{
    lua_settop(L, 2); /* fixed arity: later pushes must not look like arguments */
    static const char *const fields[] = {"channel", "to", "message", "data", NULL};
    const char *bad;
    check_inst(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!only_fields(L, 2, fields, &bad))
        return luaL_error(L, "wf:notify: %s: unknown field (use channel, to, message, data)", bad);
    for (int i = 0; i < 3; i++)
        if (lua_getfield(L, 2, fields[i]) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
            return luaL_error(L, "wf:notify: %s: required, a string", fields[i]);
    lua_pop(L, 3);
    new_effect(L, "notify", 4);
    for (int i = 0; i < 4; i++)
        copy_field(L, 2, fields[i], fields[i]);
    add_effect(L);
    return 0;
}

static int m_spawn(lua_State *L)
{
    lua_settop(L, 3); /* fixed arity: later pushes must not look like arguments */
    drv *d = check_inst(L);
    const char *workflow = check_name_arg(L, 2, "workflow");
    char id[CM_NAME_MAX];
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    int n = snprintf(id, sizeof(id), "%s.%ld.%d", d->sp->instance, d->sp->seq, ++d->spawned);
    if (n < 0 || (size_t)n >= sizeof(id))
        return luaL_error(L, "wf:spawn: the child's id would be too long");
    new_effect(L, "spawn", 3);
    lua_pushstring(L, workflow);
    lua_setfield(L, -2, "workflow");
    lua_pushstring(L, id);
    lua_setfield(L, -2, "id");
    opt_field(L, 3, "input");
    add_effect(L);
    lua_pushstring(L, id);
    return 1;
}

static int m_kpi(lua_State *L)
{
    lua_settop(L, 4); /* fixed arity: later pushes must not look like arguments */
    check_inst(L);
    const char *name = check_name_arg(L, 2, "KPI name");
    lua_Number value = luaL_checknumber(L, 3);
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    new_effect(L, "kpi", 3);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lua_pushnumber(L, value);
    lua_setfield(L, -2, "value");
    opt_field(L, 4, "labels");
    add_effect(L);
    return 0;
}

/* opts.field (at index opts) as a list of data class names, copied into the
** effect (on top) when present. */
static void send_classes(lua_State *L, int opts, const char *field)
{
    int t = lua_getfield(L, opts, field);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (t != LUA_TTABLE)
        luaL_error(L, "wf:send: %s: must be a list of data classes", field);
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING || cm_class_bit(lua_tostring(L, -1)) == 0)
            luaL_error(L,
                       "wf:send: %s[%d]: not a data class (one of demographics, contact, "
                       "conditions, medications, immunizations, notes)",
                       field, (int)i);
        lua_pop(L, 1);
    }
    lua_setfield(L, -2, field);
}

/* opts.field as a non-empty string, copied into the effect; required or not. */
static void send_text(lua_State *L, int opts, const char *field, bool required)
{
    int t = lua_getfield(L, opts, field);
    if (t == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return;
    }
    size_t len = 0;
    if (t != LUA_TSTRING || (lua_tolstring(L, -1, &len), len == 0 || len >= CM_NAME_MAX))
        luaL_error(L, "wf:send: %s: %s, 1 to %d characters", field,
                   required ? "required" : "must be a string", CM_NAME_MAX - 1);
    lua_setfield(L, -2, field);
}

/* wf:send(to, kind, payload, {from =, purpose =, patient =, share =, classes =}) */
static int m_send(lua_State *L)
{
    static const char *const fields[] = {"from", "purpose", "patient", "share", "classes", NULL};
    const char *bad;
    lua_settop(L, 5); /* fixed arity: later pushes must not look like arguments */
    check_inst(L);
    const char *to = check_name_arg(L, 2, "receiver");
    const char *kind = check_name_arg(L, 3, "message kind");
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    if (!only_fields(L, 5, fields, &bad))
        return luaL_error(L,
                          "wf:send: %s: unknown option (use from, purpose, patient, share, "
                          "classes)",
                          bad);
    new_effect(L, "send", 3);
    send_text(L, 5, "from", true);
    send_text(L, 5, "purpose", true);
    send_text(L, 5, "patient", false);
    send_classes(L, 5, "share");
    send_classes(L, 5, "classes");
    lua_pushstring(L, to);
    lua_setfield(L, -2, "to");
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushvalue(L, 4);
    lua_setfield(L, -2, "payload");
    add_effect(L);
    return 0;
}

static int m_now(lua_State *L)
{
    drv *d = check_inst(L);
    char buf[CM_TIME_BUFSZ];
    cm_time_format(d->sp->now_ms, buf, sizeof(buf));
    lua_pushstring(L, buf);
    return 1;
}

static const luaL_Reg inst_methods[] = {
    {"go", m_go},     {"after", m_after},   {"at", m_at},       {"cancel", m_cancel},
    {"task", m_task}, {"notify", m_notify}, {"spawn", m_spawn}, {"kpi", m_kpi},
    {"send", m_send}, {"now", m_now},       {NULL, NULL},
};

/* Push the step's input as a read-only view (after the raw table when raw). */
static void push_input(lua_State *L, drv *d, bool raw)
{
    cm_ljson_push(L, d->sp->input);
    cm_sandbox_push_readonly(L, -1, "wf.input"); /* stack: raw, view */
    if (!raw)
        lua_remove(L, -2);
}

/* Push the context kept from the instance's last step; false (nothing
** pushed) when there is none. What is kept is the copy the step before made
** while it wrote wf.ctx (step_driver), which no handler has seen: no table a
** handler holds (a chunk-level local put in wf.ctx, a reference to wf.ctx
** kept past its step) is part of it. */
static bool push_held(lua_State *L, drv *d)
{
    if (!d->sp->ctx_held || !d->sp->ctx)
        return false;
    lua_rawgeti(L, LUA_REGISTRYINDEX, d->rt->kept_ref);
    if (lua_rawgeti(L, -1, (lua_Integer)d->sp->ctx_held) != LUA_TTABLE) {
        lua_pop(L, 2);
        return false;
    }
    lua_remove(L, -2);
    d->held_used = true;
    return true;
}

/* wf.ctx and wf.input are made on first use: a step whose handlers never
** look at them neither decodes nor re-encodes them (nor writes the context).
** wf.ctx is the table kept from the instance's last step when there is one. */
static void push_lazy(lua_State *L, drv *d, int uv)
{
    if (lua_getiuservalue(L, 1, uv) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    if (uv == UV_INPUT) {
        push_input(L, d, false);
    } else {
        d->ctx_read = true;
        if (!push_held(L, d)) {
            if (!cm_ljson_push_object_text(L, d->sp->ctx))
                luaL_error(L, "%s: the stored context is not a JSON object", d->sp->instance);
            d->rt->ctx_reads++;
        }
    }
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, uv);
}

/* The handle inst_index is called for: reached only as the metamethod of
** the (hidden) metatable, but checked all the same, by its size and tag
** (only step_driver makes a userdata of that size with that tag), without
** luaL_checkudata's lookup of the metatable by name on every wf.key. */
static drv *index_inst(lua_State *L)
{
    inst_ud *u = lua_touserdata(L, 1); /* NULL unless a userdata; a light one's length is 0 */
    if (!u || lua_rawlen(L, 1) != sizeof(*u) || u->tag != &instance_mt_key)
        luaL_typeerror(L, 1, INSTANCE_MT);
    return inst_drv(L, u);
}

/* wf.key: fields first, then methods (upvalue 1). wf.ctx, read on most
** steps and often more than once, is told by the address of the Lua
** string "ctx" alone: Lua 5.4 interns every short string (lstring.c,
** luaS_newlstr: up to LUAI_MAXSHORTLEN, 40 bytes), so every "ctx" in the
** state, however made, is that one string, kept alive by the driver's
** upvalue. A key that only starts "ctx\0" is not it. */
static int inst_index(lua_State *L)
{
    drv *d = index_inst(L);
    const char *key = luaL_checkstring(L, 2);
    if (key == d->rt->ctx_key) {
        push_lazy(L, d, UV_CTX);
        return 1;
    }
    switch (key[0]) { /* one strcmp per key */
    case 'i':
        if (strcmp(key, "id") == 0) {
            lua_pushstring(L, d->sp->instance);
            return 1;
        }
        if (strcmp(key, "input") == 0) {
            push_lazy(L, d, UV_INPUT);
            return 1;
        }
        break;
    case 'w':
        if (strcmp(key, "workflow") == 0) {
            lua_pushstring(L, d->sp->workflow);
            return 1;
        }
        break;
    case 's':
        if (strcmp(key, "state") == 0) {
            lua_pushstring(L, d->cur);
            return 1;
        }
        break;
    case 'e':
        if (strcmp(key, "event") == 0) {
            d->sp->event ? (void)lua_pushstring(L, d->sp->event) : lua_pushnil(L);
            return 1;
        }
        break;
    }
    lua_getfield(L, lua_upvalueindex(1), key);
    return 1;
}

static int inst_newindex(lua_State *L)
{
    return luaL_error(L, "wf.%s: the instance handle is read-only (keep data in wf.ctx)",
                      luaL_checkstring(L, 2));
}

/* The handles' metatable, made once per Lua state (a runtime keeps it in
** mt_ref, make_defs). */
static void push_instance_mt(lua_State *L)
{
    if (!luaL_newmetatable(L, INSTANCE_MT)) /* stack: mt */
        return;                             /* made already */
    lua_newtable(L);
    luaL_setfuncs(L, inst_methods, 0);
    lua_pushcclosure(L, inst_index, 1); /* upvalue: methods */
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, inst_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
}

/* ---- one step --------------------------------------------------------- */

/* Raise a request error (CM_EINVAL): nothing of the step happens. */
static int invalid(lua_State *L, drv *d, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int invalid(lua_State *L, drv *d, const char *fmt, ...)
{
    va_list ap;
    d->invalid = true;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return lua_error(L);
}

enum { INPUT_MISSING_MAX = 32 }; /* required fields a message names, past: "and N more" */

typedef struct missing_field {
    const char *name, *type; /* borrowed from the schema table */
} missing_field;

static int missing_cmp(const void *a, const void *b)
{
    return strcmp(((const missing_field *)a)->name, ((const missing_field *)b)->name);
}

/* Is the input field just pushed (of Lua type vt) absent: nil, or cm.null? */
static bool input_absent(lua_State *L, int vt)
{
    return vt == LUA_TNIL || (vt == LUA_TLIGHTUSERDATA && !lua_touserdata(L, -1));
}

/* Raise when input (stack index) lacks required fields of schema (stack
** index), naming all of them in name order: the first leads the message
** ("input.NAME: required (TYPE)"), the API's error field, the others follow. */
static void check_required(lua_State *L, drv *d, int schema, int input)
{
    missing_field miss[INPUT_MISSING_MAX];
    int n = 0, more = 0;
    lua_pushnil(L);
    while (lua_next(L, schema)) {
        const char *field = lua_tostring(L, -2), *type = lua_tostring(L, -1);
        size_t tlen = strlen(type);
        int vt = lua_getfield(L, input, field);
        if (input_absent(L, vt) && !(tlen > 0 && type[tlen - 1] == '?')) {
            if (n < INPUT_MISSING_MAX)
                miss[n++] = (missing_field){field, type};
            else
                more++;
        }
        lua_pop(L, 2);
    }
    if (n == 0)
        return;
    qsort(miss, (size_t)n, sizeof(miss[0]), missing_cmp);
    char msg[CM_ERR_MSG_MAX];
    size_t len =
        (size_t)snprintf(msg, sizeof(msg), "input.%s: required (%s)", miss[0].name, miss[0].type);
    for (int i = 1; i < n && len < sizeof(msg); i++)
        len += (size_t)snprintf(msg + len, sizeof(msg) - len, "%sinput.%s (%s)",
                                i == 1 ? "; also required: " : ", ", miss[i].name, miss[i].type);
    if (more > 0 && len < sizeof(msg))
        snprintf(msg + len, sizeof(msg) - len, " and %d more", more);
    invalid(L, d, "%s", msg);
}

/* Check the input (stack index input) against the definition's schema (spec.input). */
static void check_input(lua_State *L, drv *d, int spec, int input)
{
    cm_lua_host *host = cm_lua_host_get(L);
    if (lua_getfield(L, spec, "input") != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    int schema = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, input)) { /* no field the schema does not name */
        const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (!key || lua_getfield(L, schema, key) == LUA_TNIL)
            invalid(L, d, "input.%s: unknown field for workflow %s", key ? key : "?",
                    d->sp->workflow);
        lua_pop(L, 2);
    }
    check_required(L, d, schema, input);
    lua_pushnil(L);
    while (lua_next(L, schema)) {
        const char *field = lua_tostring(L, -2), *type = lua_tostring(L, -1);
        size_t tlen = strlen(type);
        char base[64];
        bool optional = tlen > 0 && type[tlen - 1] == '?';
        snprintf(base, sizeof(base), "%.*s", (int)(optional ? tlen - 1 : tlen), type);
        int vt = lua_getfield(L, input, field);
        if (input_absent(L, vt)) { /* optional: check_required raised for the others */
            lua_pop(L, 2);
            continue;
        }
        bool ok;
        int kind = cm_kind_parse(base);
        if (strcmp(base, "integer") == 0)
            ok = lua_isinteger(L, -1);
        else if (strcmp(base, "date") == 0)
            ok = vt == LUA_TSTRING && cm_date_valid(lua_tostring(L, -1));
        else if (strcmp(base, "datetime") == 0)
            ok = vt == LUA_TSTRING && cm_time_parse(lua_tostring(L, -1), NULL);
        else if (kind >= 0)
            ok = vt == LUA_TSTRING;
        else
            ok = strcmp(luaL_typename(L, -1), base) == 0;
        if (!ok)
            invalid(L, d, "input.%s: expected %s, got %s", field, base, luaL_typename(L, -1));
        if (kind >= 0) {
            cJSON *rec = NULL;
            cm_err err;
            int rc = cm_model_get(host->model, (cm_kind)kind, lua_tostring(L, -1), &rec, &err);
            cJSON_Delete(rec);
            if (rc != 0)
                invalid(L, d, "input.%s: %s", field, err.msg);
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
}

/* The field names a step looks up in its definition, made Lua strings once:
** the upvalues of step_driver's closure (make_defs). A lookup by one is a
** lua_gettable (metamethods as lua_getfield), without making a Lua string
** of a C string every time. Only step_driver's frame reaches them: it and
** the functions it calls (resolve, transition, run_handler). */
enum { DRV_STATES = 1, DRV_ON, DRV_FINAL, DRV_ENTER, DRV_EXIT, DRV_CTX, DRV_NAMES = DRV_CTX };

static const char *const drv_names[DRV_NAMES] = {"states", "on", "final", "enter", "exit", "ctx"};

/* Push t[name] for the driver's name number n (t: an absolute index, or -1
** for the top); returns its type. */
static int drv_get(lua_State *L, int t, int n)
{
    lua_pushvalue(L, lua_upvalueindex(n));
    return lua_gettable(L, t == -1 ? -2 : t);
}

/* Call the state's handler (DRV_ENTER, DRV_EXIT) if it has one. */
static void run_handler(lua_State *L, drv *d, int wf, int which)
{
    lua_getfield(L, d->states, d->cur);
    if (drv_get(L, -1, which) == LUA_TFUNCTION) {
        lua_pushvalue(L, wf);
        lua_call(L, 1, 0);
        lua_pop(L, 1);
    } else {
        lua_pop(L, 2);
    }
}

/* Move to state `to`: exit the current one, enter the next, follow wf:go. */
static void transition(lua_State *L, drv *d, int wf, const char *to)
{
    char next[CM_NAME_MAX];
    cm_copy_str(next, sizeof(next), to);
    for (int hops = 0;; hops++) {
        if (hops >= MAX_HOPS)
            luaL_error(L, "more than %d transitions in one step (a loop of wf:go?)", MAX_HOPS);
        if (!state_exists(L, d->states, next))
            luaL_error(L, "transition to unknown state \"%s\"", next);
        if (hops > 0 || d->sp->state)
            run_handler(L, d, wf, DRV_EXIT);
        d->sp->moved = true;
        d->visit++;
        cm_copy_str(d->cur, sizeof(d->cur), next);
        d->go_set = false;
        run_handler(L, d, wf, DRV_ENTER);
        if (!d->go_set)
            return;
        cm_copy_str(next, sizeof(next), d->go);
    }
}

/* A guard's reason src into dst of capacity n, cut to fit at a character's
** start: the message that carries it stays UTF-8 when src is. */
static void copy_reason(char *dst, size_t n, const char *src)
{
    size_t len = strlen(src);
    if (len >= n) {
        len = n - 1;
        while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80)
            len--; /* src[len], the first byte left out, continues a character */
    }
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* Resolve the transition at the top of the stack for the event (its name at
** stack index ev): returns the target name pushed (or nil pushed: stay);
** false when nothing matched. */
static bool resolve(lua_State *L, drv *d, int wf, int payload, int ev)
{
    int t = lua_gettop(L);
    if (lua_type(L, t) == LUA_TSTRING) {
        lua_pushvalue(L, t);
        return true;
    }
    if (lua_type(L, t) == LUA_TFUNCTION) {
        lua_pushvalue(L, t);
        lua_pushvalue(L, wf);
        lua_pushvalue(L, payload);
        lua_pushvalue(L, ev);
        lua_call(L, 3, 1);
        if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "the handler for \"%s\" must return a state name or nil", d->sp->event);
        return true;
    }
    /* a table: {to=, guard=} or a list of them, first whose guard passes */
    lua_Integer n = (lua_Integer)lua_rawlen(L, t), i = n > 0 ? 1 : 0;
    for (; i <= n; i++) {
        int opt = t;
        if (n > 0) {
            lua_rawgeti(L, t, i);
            opt = lua_gettop(L);
        }
        bool pass = true;
        if (lua_getfield(L, opt, "guard") == LUA_TFUNCTION) {
            lua_pushvalue(L, wf);
            lua_pushvalue(L, payload);
            lua_pushvalue(L, ev);
            lua_call(L, 3, 2);
            pass = lua_toboolean(L, -2);
            /* a refusing guard may say why: false, "slot full" */
            if (!pass && lua_type(L, -1) == LUA_TSTRING)
                copy_reason(d->sp->refusal, sizeof(d->sp->refusal), lua_tostring(L, -1));
            else if (!pass)
                d->sp->refusal[0] = '\0';
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        if (pass) {
            lua_getfield(L, opt, "to");
            if (n > 0)
                lua_remove(L, opt);
            return resolve(L, d, wf, payload, ev) ? (lua_remove(L, -2), true) : false;
        }
        if (n > 0)
            lua_pop(L, 1);
    }
    return false;
}

/* The step, run by cm_sandbox_pcall. Upvalues: the names of drv_names;
** args: lightuserdata drv, spec. */
static int step_driver(lua_State *L)
{
    drv *d = lua_touserdata(L, 1);
    cm_step *sp = d->sp;
    int spec = 2, st = 0; /* st: the stack index of sp->state's table (0: a start) */
    drv_get(L, spec, DRV_STATES);
    d->states = lua_gettop(L);
    /* the handle, with ctx, input view and effects as user values */
    inst_ud *u = lua_newuserdatauv(L, sizeof(*u), 4);
    u->tag = &instance_mt_key;
    u->d = NULL;
    u->rt = d->rt;
    u->gen = d->rt->live_gen;
    int wf = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, d->rt->mt_ref);
    lua_setmetatable(L, wf);
    lua_pushvalue(L, d->states);
    lua_setiuservalue(L, wf, UV_STATES);
    u->d = d;
    sp->handled = true;
    if (!sp->state) {
        push_input(L, d, true); /* stack: ..., raw input, view */
        lua_setiuservalue(L, wf, UV_INPUT);
        check_input(L, d, spec, lua_gettop(L));
        lua_getfield(L, spec, "start");
        cm_copy_str(d->cur, sizeof(d->cur), lua_tostring(L, -1));
        transition(L, d, wf, d->cur);
    } else {
        cm_copy_str(d->cur, sizeof(d->cur), sp->state);
        /* the state's table, looked up once: a step that does not move reads
        ** its "final" from it too */
        if (lua_getfield(L, d->states, d->cur) != LUA_TTABLE)
            invalid(L, d, "instance %s is in state \"%s\", which workflow %s does not define",
                    sp->instance, d->cur, sp->workflow);
        st = lua_gettop(L);
        if (cJSON_IsRaw(sp->payload)) { /* an object's text (cm_engine_signal_text) */
            if (!cm_ljson_push_object_text(L, sp->payload->valuestring))
                invalid(L, d, "instance %s: the payload of event \"%s\" is not a JSON object",
                        sp->instance, sp->event);
        } else if (sp->payload)
            cm_ljson_push(L, sp->payload);
        else
            lua_newtable(L);
        int payload = lua_gettop(L);
        /* the event's name made a Lua string once: the key of on[] and the
        ** handlers' third argument (what lua_getfield would make again) */
        lua_pushstring(L, sp->event);
        int ev = lua_gettop(L);
        bool has = drv_get(L, st, DRV_ON) == LUA_TTABLE &&
                   (lua_pushvalue(L, ev), lua_gettable(L, -2) != LUA_TNIL);
        if (!has || !resolve(L, d, wf, payload, ev)) {
            sp->handled = false;
            sp->guarded = has;
            u->d = NULL;
            return 0;
        }
        /* stack: ..., target or nil */
        if (lua_isnil(L, -1) && d->go_set)
            transition(L, d, wf, d->go);
        else if (!lua_isnil(L, -1))
            transition(L, d, wf, lua_tostring(L, -1));
    }
    u->d = NULL;
    if (st && !sp->moved)
        lua_pushvalue(L, st); /* still in sp->state */
    else
        lua_getfield(L, d->states, d->cur);
    drv_get(L, -1, DRV_FINAL);
    sp->final = lua_toboolean(L, -1);
    sp->visit = d->visit;
    cm_copy_str(sp->next, sizeof(sp->next), d->cur);
    /* wf.ctx written (when it was looked at) and, while there is room, copied
    ** and kept for the next step (rt_step may drop it): the copy, never the
    ** handler's table. Below a quarter of the cap neither the copy nor the
    ** kept table's growth can meet it; both happen here, protected. The
    ** result stays on the stack for rt_step: effects (nil if none). */
    lua_getiuservalue(L, wf, UV_EFFECTS);
    int effects = lua_gettop(L);
    if (lua_getiuservalue(L, wf, UV_CTX) != LUA_TNIL) {
        if (cm_sandbox_memory(d->rt->sb) <= cm_sandbox_memory_cap(d->rt->sb) / KEPT_CAP_SHARE) {
            d->ctx_rc = cm_ljson_encode_copy(L, -1, "wf.ctx", &d->ctx_text, &d->ctx_same, d->err);
            if (d->ctx_rc == 0 && d->ctx_same) { /* stack: effects, ctx, its copy */
                /* under the id the step was given (this instance's: the
                ** table there, the handler's wf.ctx or none, goes), else a
                ** new one: an existing slot is set without growing kept */
                lua_Integer id = sp->ctx_held ? (lua_Integer)sp->ctx_held : d->rt->kept_last + 1;
                lua_rawgeti(L, LUA_REGISTRYINDEX, d->rt->kept_ref);
                lua_insert(L, -2);
                lua_rawseti(L, -2, id);
                if (id > d->rt->kept_last)
                    d->rt->kept_last = id;
                d->stored = id;
            }
        } else {
            size_t len = 0;
            d->ctx_rc = cm_ljson_encode(L, -1, "wf.ctx", &d->ctx_text.s, &len, d->err);
        }
    }
    lua_settop(L, effects);
    return 1;
}

/* ---- the seam --------------------------------------------------------- */

/* Push defs[key]; returns its type. */
static int get_def(lua_State *L, cm_lua_runtime *rt, const char *key)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->defs_ref);
    int t = lua_getfield(L, -1, key);
    lua_remove(L, -2);
    return t;
}

static void def_key(char *buf, size_t n, const char *name, int rev);

/* Push the step's definition (spec) and return its type: the one the last
** step looked up when it is the same, else defs["name@rev"] (written to
** key, which then names it), kept for the next step. Allocates nothing:
** setting the registry slot make_defs made does not. */
static int push_def(lua_State *L, cm_lua_runtime *rt, const cm_step *sp, char *key, size_t n,
                    const char **purpose)
{
    if (rt->def_name[0] && sp->rev == rt->def_rev && strcmp(sp->workflow, rt->def_name) == 0) {
        *purpose = rt->def_purpose;
        return lua_rawgeti(L, LUA_REGISTRYINDEX, rt->def_ref);
    }
    def_key(key, n, sp->workflow, sp->rev);
    int t = get_def(L, rt, key);
    size_t len = strlen(sp->workflow);
    rt->def_name[0] = '\0';
    *purpose = t == LUA_TTABLE ? def_purpose(L, -1) : NULL;
    if (t == LUA_TTABLE && len > 0 && len < sizeof(rt->def_name)) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, LUA_REGISTRYINDEX, rt->def_ref);
        memcpy(rt->def_name, sp->workflow, len + 1);
        rt->def_rev = sp->rev;
        rt->def_purpose = *purpose;
    }
    return t;
}

/* "name@rev" (each step looks its definition up by it: no snprintf). */
static void def_key(char *buf, size_t n, const char *name, int rev)
{
    char digits[16];
    int nd = 0;
    unsigned v = rev < 0 ? 0u - (unsigned)rev : (unsigned)rev;
    do
        digits[nd++] = (char)('0' + v % 10);
    while ((v /= 10) && nd < (int)sizeof(digits));
    if (rev < 0)
        digits[nd++] = '-';
    size_t len = strlen(name);
    if (len + (size_t)nd + 2 > n) { /* cut to fit, as snprintf would */
        snprintf(buf, n, "%s@%d", name, rev);
        return;
    }
    memcpy(buf, name, len);
    buf[len++] = '@';
    while (nd > 0)
        buf[len++] = digits[--nd];
    buf[len] = '\0';
}

/* Drop kept[id]; setting an existing field to nil allocates nothing. */
static void kept_drop(lua_State *L, cm_lua_runtime *rt, lua_Integer id)
{
    if (!id || !lua_checkstack(L, 3))
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->kept_ref);
    if (lua_rawgeti(L, -1, id) != LUA_TNIL) {
        lua_pushnil(L);
        lua_rawseti(L, -3, id);
    }
    lua_pop(L, 2);
}

/* After a memory kill: every kept context goes, to give the handlers their room. */
static void kept_drop_all(lua_State *L, cm_lua_runtime *rt)
{
    if (!lua_checkstack(L, 4))
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->kept_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) { /* stack: kept, id, table */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -4);
    }
    lua_pop(L, 1);
}

static void rt_release(void *ud, int64_t held)
{
    cm_lua_runtime *rt = ud;
    kept_drop(cm_sandbox_state(rt->sb), rt, (lua_Integer)held);
}

/* What the step hands back in sp->ctx_held: the copy of wf.ctx made while
** it was written (d->stored, 0 when none); the one it was given when wf.ctx
** was never made (no handler saw it). One a handler saw goes. */
static void keep_result(lua_State *L, cm_lua_runtime *rt, drv *d)
{
    cm_step *sp = d->sp;
    if (!d->ctx_read)
        return; /* untouched: what it was given still equals the context */
    if ((lua_Integer)sp->ctx_held != d->stored) /* seen by the handler, or gone already */
        kept_drop(L, rt, (lua_Integer)sp->ctx_held);
    sp->ctx_held = (int64_t)d->stored;
}

/* A step that failed, or ran guards only, may have changed wf.ctx: what it
** kept or was given goes (the one given stays when wf.ctx was never made). */
static void keep_none(lua_State *L, cm_lua_runtime *rt, drv *d, bool failed)
{
    kept_drop(L, rt, d->stored);
    if (failed || d->ctx_read) {
        kept_drop(L, rt, (lua_Integer)d->sp->ctx_held);
        d->sp->ctx_held = 0;
    }
}

static int rt_step(void *ud, cm_step *sp, cm_err *err)
{
    cm_lua_runtime *rt = ud;
    lua_State *L = cm_sandbox_state(rt->sb);
    char key[CM_NAME_MAX + 16];
    drv d;
    int top = lua_gettop(L), rc;
    memset(&d, 0, sizeof(d));
    d.sp = sp;
    d.rt = rt;
    d.err = err;
    key[0] = '\0';
    if (!lua_checkstack(L, 8)) {
        keep_none(L, rt, &d, true);
        return cm_err_set(err, CM_ENOMEM, "Lua stack exhausted");
    }
    cm_sandbox_push_msgh(rt->sb); /* stays under the results: dropped with them */
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->driver_ref);
    lua_pushlightuserdata(L, &d);
    const char *purpose; /* the definition's (def_purpose), kept with def_ref */
    if (push_def(L, rt, sp, key, sizeof(key), &purpose) != LUA_TTABLE) {
        lua_settop(L, top);
        keep_none(L, rt, &d, true);
        return cm_err_set(err, CM_ENOTFOUND, "workflow %s is not installed", key);
    }
    uint64_t outer = rt->live_gen; /* a step's handles read only while it runs */
    rt->live_gen = ++rt->step_gen;
    /* the records its handlers read and write are audited as the instance's */
    if (!rt->host)
        rt->host = cm_lua_host_peek(L);
    cm_lua_host *host = rt->host;
    const char *outer_actor = host ? host->actor : NULL;
    const char *outer_purpose = host ? host->purpose : NULL;
    cJSON **outer_audited = host ? host->audited : NULL;
    /* "instance:ID", put together without snprintf: this runs every step */
    static const char actor_prefix[] = "instance:";
    char actor[sizeof(actor_prefix) + CM_ID_MAX];
    size_t idlen = strnlen(sp->instance, CM_ID_MAX);
    memcpy(actor, actor_prefix, sizeof(actor_prefix) - 1);
    memcpy(actor + sizeof(actor_prefix) - 1, sp->instance, idlen);
    actor[sizeof(actor_prefix) - 1 + idlen] = '\0';
    if (host) {
        host->actor = actor;
        host->purpose = purpose;
        host->audited = &sp->audited; /* the engine's, even when the step fails */
    }
    rc = cm_sandbox_pcall_msgh(rt->sb, 2, LUA_MULTRET, err);
    if (host) {
        host->actor = outer_actor;
        host->purpose = outer_purpose;
        host->audited = outer_audited;
    }
    rt->live_gen = outer;
    if (rc != 0) {
        free(d.ctx_text.s);
        lua_settop(L, top);
        keep_none(L, rt, &d, true);
        if (rc == CM_EMEMCAP)
            kept_drop_all(L, rt);
        if (d.invalid) { /* keep the plain message, without the traceback */
            char *nl = strchr(err->msg, '\n');
            if (nl)
                *nl = '\0';
        }
        return d.invalid ? cm_err_recode(err, CM_EINVAL)
                         : cm_err_prefix(err, "%s in state %s", sp->instance,
                                         d.cur[0] ? d.cur : "(start)");
    }
    if (!sp->handled) {
        lua_settop(L, top);
        keep_none(L, rt, &d, false); /* a guard may have changed wf.ctx: nothing is written */
        return 0;
    }
    /* stack: effects (a list) or nil; wf.ctx written in d.ctx_text (when
    ** it was looked at), its copy kept under d.stored */
    char *ctx = d.ctx_text.s;
    cJSON *effects = NULL;
    rc = d.ctx_rc;
    if (rc == 0 && ctx) {
        if (ctx[0] != '{')
            rc = cm_err_set(err, CM_ELUA, "%s: wf.ctx must have named fields, not a list",
                            sp->instance);
        else if (strcmp(ctx, sp->ctx) == 0) { /* unchanged: nothing to write */
            free(ctx);
            ctx = NULL;
        }
    }
    if (rc == 0 && lua_rawlen(L, -1) > 0)
        rc = cm_ljson_from_lua(L, -1, "effects", &effects, err);
    lua_settop(L, top);
    if (rc != 0) {
        free(ctx);
        cJSON_Delete(effects);
        keep_none(L, rt, &d, true);
        return rc == CM_EINVAL ? cm_err_recode(err, CM_ELUA) : rc;
    }
    keep_result(L, rt, &d);
    sp->ctx_out = ctx;
    sp->effects = effects;
    return 0;
}

/* Check the value a definition file returned; fill info; keep it pending. */
static int finish_compile(lua_State *L)
{
    cm_lua_runtime *rt = lua_touserdata(L, 1);
    cm_wf_info *info = lua_touserdata(L, 2);
    const char *origin = lua_tostring(L, 3);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &SPECS_KEY);
    lua_pushvalue(L, 4);
    if (!lua_istable(L, 4) || lua_rawget(L, -2) == LUA_TNIL)
        return luaL_error(L, "%s: the file must return cm.workflow { ... }", origin);
    lua_getfield(L, 4, "name");
    snprintf(info->name, sizeof(info->name), "%s", lua_tostring(L, -1));
    lua_getfield(L, 4, "version");
    info->version = (int)lua_tointeger(L, -1);
    lua_getfield(L, 4, "start");
    snprintf(info->start, sizeof(info->start), "%s", lua_tostring(L, -1));
    info->nstarted_by = 0;
    if (lua_getfield(L, 4, "started_by") == LUA_TTABLE)
        for (lua_Integer i = 1; i <= CM_WF_STARTERS_MAX && lua_geti(L, -1, i) == LUA_TSTRING; i++) {
            snprintf(info->started_by[info->nstarted_by++], CM_NAME_MAX, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->defs_ref);
    lua_pushfstring(L, "pending:%s", info->name);
    lua_pushvalue(L, 4);
    lua_rawset(L, -3);
    return 0;
}

static int rt_compile(void *ud, const char *origin, const char *source, size_t len,
                      cm_wf_info *info, cm_err *err)
{
    cm_lua_runtime *rt = ud;
    lua_State *L = cm_sandbox_state(rt->sb);
    char chunkname[1024];
    int top = lua_gettop(L), rc;
    snprintf(chunkname, sizeof(chunkname), "@%s", origin);
    if ((rc = cm_sandbox_load(rt->sb, chunkname, source, len, err)) != 0)
        return rc;
    /* the file's top level reads no patient's records (cm_lua_host.loading) */
    cm_lua_host *host = cm_lua_host_peek(L);
    const char *outer_loading = host ? host->loading : NULL;
    if (host)
        host->loading = origin;
    rc = cm_sandbox_pcall(rt->sb, 0, 1, err);
    if (host)
        host->loading = outer_loading;
    if (rc != 0) {
        lua_settop(L, top);
        return rc;
    }
    /* stack: result */
    lua_pushcfunction(L, finish_compile);
    lua_pushlightuserdata(L, rt);
    lua_pushlightuserdata(L, info);
    lua_pushstring(L, origin);
    lua_pushvalue(L, -5);
    rc = cm_sandbox_pcall(rt->sb, 4, 0, err);
    lua_settop(L, top);
    if (rc != 0) {
        char *nl = strchr(err->msg, '\n');
        if (nl)
            *nl = '\0';
        return cm_err_recode(err, CM_EINVAL);
    }
    return 0;
}

static int finish_install(lua_State *L)
{
    cm_lua_runtime *rt = lua_touserdata(L, 1);
    /* defs changes below: the next step looks its definition up, also when
    ** a later allocation here raises */
    rt->def_name[0] = '\0';
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->defs_ref);
    lua_pushfstring(L, "pending:%s", lua_tostring(L, 2));
    if (lua_rawget(L, -2) != LUA_TTABLE)
        return luaL_error(L, "workflow %s was not compiled", lua_tostring(L, 2));
    lua_pushvalue(L, 3);
    lua_insert(L, -2);
    lua_rawset(L, -3); /* defs[key] = spec */
    lua_pushfstring(L, "pending:%s", lua_tostring(L, 2));
    lua_pushnil(L);
    lua_rawset(L, -3);
    return 0;
}

static int rt_install(void *ud, const char *name, int rev, cm_err *err)
{
    cm_lua_runtime *rt = ud;
    lua_State *L = cm_sandbox_state(rt->sb);
    char key[CM_NAME_MAX + 16];
    def_key(key, sizeof(key), name, rev);
    lua_pushcfunction(L, finish_install);
    lua_pushlightuserdata(L, rt);
    lua_pushstring(L, name);
    lua_pushstring(L, key);
    return cm_sandbox_pcall(rt->sb, 3, 0, err);
}

static bool rt_installed(void *ud, const char *name, int rev)
{
    cm_lua_runtime *rt = ud;
    lua_State *L = cm_sandbox_state(rt->sb);
    char key[CM_NAME_MAX + 16];
    def_key(key, sizeof(key), name, rev);
    if (!lua_checkstack(L, 2))
        return false;
    bool ok = get_def(L, rt, key) == LUA_TTABLE;
    lua_pop(L, 1);
    return ok;
}

static int make_defs(lua_State *L)
{
    cm_lua_runtime *rt = lua_touserdata(L, 1);
    lua_newtable(L);
    rt->defs_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    rt->kept_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    push_instance_mt(L);
    rt->mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushboolean(L, 0); /* the slot push_def sets */
    rt->def_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    for (int i = 0; i < DRV_NAMES; i++)
        lua_pushstring(L, drv_names[i]);
    rt->ctx_key = lua_tostring(L, -1); /* DRV_CTX: the closure keeps it */
    lua_pushcclosure(L, step_driver, DRV_NAMES);
    rt->driver_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

cm_lua_runtime *cm_lua_runtime_new(cm_sandbox *sb, cm_err *err)
{
    cm_lua_runtime *rt = calloc(1, sizeof(*rt));
    if (!rt) {
        cm_err_set(err, CM_ENOMEM, "out of memory");
        return NULL;
    }
    rt->sb = sb;
    rt->defs_ref = LUA_NOREF;
    rt->kept_ref = LUA_NOREF;
    rt->mt_ref = LUA_NOREF;
    rt->def_ref = LUA_NOREF;
    rt->driver_ref = LUA_NOREF;
    lua_State *L = cm_sandbox_state(sb);
    lua_pushcfunction(L, make_defs);
    lua_pushlightuserdata(L, rt);
    if (cm_sandbox_pcall(sb, 1, 0, err) != 0) {
        free(rt);
        return NULL;
    }
    rt->seam.ud = rt;
    rt->seam.compile = rt_compile;
    rt->seam.install = rt_install;
    rt->seam.installed = rt_installed;
    rt->seam.step = rt_step;
    rt->seam.release = rt_release;
    return rt;
}

void cm_lua_runtime_destroy(cm_lua_runtime **rt_p)
{
    cm_lua_runtime *rt = rt_p ? *rt_p : NULL;
    if (!rt)
        return;
    luaL_unref(cm_sandbox_state(rt->sb), LUA_REGISTRYINDEX, rt->defs_ref);
    luaL_unref(cm_sandbox_state(rt->sb), LUA_REGISTRYINDEX, rt->kept_ref);
    luaL_unref(cm_sandbox_state(rt->sb), LUA_REGISTRYINDEX, rt->mt_ref);
    luaL_unref(cm_sandbox_state(rt->sb), LUA_REGISTRYINDEX, rt->def_ref);
    luaL_unref(cm_sandbox_state(rt->sb), LUA_REGISTRYINDEX, rt->driver_ref);
    free(rt);
    *rt_p = NULL;
}

const cm_runtime *cm_lua_runtime_seam(cm_lua_runtime *rt)
{
    return &rt->seam;
}

unsigned long cm_lua_runtime_ctx_reads(const cm_lua_runtime *rt)
{
    return rt->ctx_reads;
}

size_t cm_lua_runtime_ctx_kept(cm_lua_runtime *rt)
{
    lua_State *L = cm_sandbox_state(rt->sb);
    size_t n = 0;
    if (!lua_checkstack(L, 3))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->kept_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        n++;
    }
    lua_pop(L, 1);
    return n;
}
