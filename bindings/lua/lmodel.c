/*
** lmodel.c -- the record kinds in Lua: cm.<kind>.create/get/update/find/list/count.
** Each function carries its kind as upvalue 1. Arguments are converted to JSON
** first (never raising), results are pushed from a box so a memory error
** cannot leak them. Invalid records raise, naming the field; "not found" is
** the expected failure nil, message, "not_found". What is read or written of
** a patient is audited as the host's actor (a workflow instance, the CLI).
*/
#include "audit.h"
#include "lhost.h"
#include "ljson.h"

#include <lauxlib.h>
#include <stdio.h>

#define LMODEL_DEFAULT_LIMIT 100

static cm_kind check_kind(lua_State *L)
{
    return (cm_kind)lua_tointeger(L, lua_upvalueindex(1));
}

/* Raise unless argument arg is a table, naming the function: "cm.patient.create". */
static void need_table(lua_State *L, int arg, const char *fn, const char *what)
{
    if (lua_type(L, arg) != LUA_TTABLE)
        luaL_error(L, "cm.%s.%s: %s must be a table, got %s", cm_kind_name(check_kind(L)), fn, what,
                   luaL_typename(L, arg));
}

/* The host, raising when kind names patients and a workflow file is
** loading (see cm_lua_host.loading). */
static cm_lua_host *host_for(lua_State *L, cm_kind kind, const char *fn)
{
    cm_lua_host *host = cm_lua_host_get(L);
    if (host->loading && cm_kind_names_patient((int)kind))
        luaL_error(L,
                   "cm.%s.%s: no records about patients while workflow file %s loads (its top "
                   "level runs at every start and reload, for no instance): read them in handlers",
                   cm_kind_name(kind), fn, host->loading);
    return host;
}

/* Convert argument arg (a table, checked) to JSON into *box; raises naming the field. */
static void check_doc(lua_State *L, int arg, const char *what, cJSON **box)
{
    cm_err err;
    if (cm_ljson_from_lua(L, arg, what, box, &err) != 0)
        cm_lua_raise(L, &err);
}

/* Push the result held in *box, then free it. */
static int push_result(lua_State *L, cJSON **box)
{
    cm_ljson_push(L, *box);
    cJSON_Delete(*box);
    *box = NULL;
    return 1;
}

/* Audit the records about a patient in recs (one record or an array) that
** cm.<kind>.<fn> handed to Lua or wrote, as the host's actor (none: not
** audited) for its purpose (a workflow's declared one, or ""), in the caller's transaction (a
*workflow step's, a script's): a
** step that fails leaves neither its changes nor these entries, but the
** engine writes again, with outcome "error", the entries collected for it
** (host->audited): what a failed handler read may leave in its error.
** Raises when an entry cannot be written: no entry, no record. */
static void audit_records(lua_State *L, const cm_lua_host *host, cm_kind kind, const char *fn,
                          const char *action, const cJSON *recs)
{
    if (!host->actor || !recs)
        return;
    const char *kname = cm_kind_name(kind);
    char act[48], classes[64], detail[320];
    snprintf(act, sizeof(act), "%s.%s", kname, action);
    const cJSON *one = cJSON_IsArray(recs) ? recs->child : recs;
    for (const cJSON *r = one; r; r = cJSON_IsArray(recs) ? r->next : NULL) {
        const char *patient = cm_model_record_patient((int)kind, r);
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, "id"));
        cm_err err;
        if (!patient)
            continue;
        snprintf(detail, sizeof(detail), "lua cm.%s.%s %.200s", kname, fn, id ? id : "");
        cm_audit_entry e = {host->actor,
                            act,
                            patient,
                            cm_model_record_classes((int)kind, r, classes, sizeof(classes)),
                            host->purpose ? host->purpose : "",
                            "ok",
                            detail};
        /* in a step: its savepoint opens first (cm_store_nested_write), so
        ** that the entry goes with the step */
        if ((cm_store_in_tx(host->store) && cm_store_nested_write(host->store, &err) != 0) ||
            cm_audit_append(host->store, host->clock, &e, &err) != 0 ||
            (host->audited && cm_audit_collect(host->audited, &e, &err) != 0))
            cm_lua_raise(L, &err);
    }
}

static int l_create(lua_State *L)
{
    cm_kind kind = check_kind(L);
    cm_lua_host *host = host_for(L, kind, "create");
    cm_err err;
    lua_settop(L, 1);
    need_table(L, 1, "create", "the record");
    cJSON **in = cm_ljson_box(L), **out = cm_ljson_box(L);
    /* stack: doc, box_in, box_out */
    check_doc(L, 1, cm_kind_name(kind), in);
    int rc = cm_model_create(host->model, kind, *in, out, &err);
    cJSON_Delete(*in);
    *in = NULL;
    if (rc != 0)
        return cm_lua_raise(L, &err);
    audit_records(L, host, kind, "create", "create", *out);
    return push_result(L, out);
}

static int l_get(lua_State *L)
{
    cm_kind kind = check_kind(L);
    cm_lua_host *host = host_for(L, kind, "get");
    const char *id = luaL_checkstring(L, 1);
    cm_err err;
    cJSON **out = cm_ljson_box(L);
    int rc = cm_model_get(host->model, kind, id, out, &err);
    if (rc == CM_ENOTFOUND)
        return cm_lua_fail(L, &err);
    if (rc != 0)
        return cm_lua_raise(L, &err);
    audit_records(L, host, kind, "get", "read", *out);
    return push_result(L, out);
}

static int l_update(lua_State *L)
{
    cm_kind kind = check_kind(L);
    cm_lua_host *host = host_for(L, kind, "update");
    lua_settop(L, 2);
    const char *id = luaL_checkstring(L, 1);
    cm_err err;
    need_table(L, 2, "update", "the patch");
    cJSON **in = cm_ljson_box(L), **out = cm_ljson_box(L);
    check_doc(L, 2, cm_kind_name(kind), in);
    int rc = cm_model_update(host->model, kind, id, *in, out, &err);
    cJSON_Delete(*in);
    *in = NULL;
    if (rc == CM_ENOTFOUND || rc == CM_ESTATE) /* expected: no such record, a task done with */
        return cm_lua_fail(L, &err);
    if (rc != 0)
        return cm_lua_raise(L, &err);
    audit_records(L, host, kind, "update", "update", *out);
    return push_result(L, out);
}

/* find([filter [, {after=, limit=}]]) */
static int l_find(lua_State *L)
{
    cm_kind kind = check_kind(L);
    cm_lua_host *host = host_for(L, kind, "find");
    cm_err err;
    const char *after = NULL;
    lua_Integer limit = LMODEL_DEFAULT_LIMIT;
    const char *kname = cm_kind_name(kind);
    lua_settop(L, 2);
    if (!lua_isnil(L, 1))
        need_table(L, 1, "find", "the filter");
    if (!lua_isnil(L, 2)) {
        need_table(L, 2, "find", "the options");
        if (lua_getfield(L, 2, "after") != LUA_TNIL && lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "cm.%s.find: after: must be an id (a string)", kname);
        after = lua_tostring(L, -1); /* stays on the stack, so valid */
        if (lua_getfield(L, 2, "limit") != LUA_TNIL) {
            if (!lua_isinteger(L, -1))
                return luaL_error(L, "cm.%s.find: limit: must be an integer", kname);
            limit = lua_tointeger(L, -1);
        }
    }
    if (limit < 1 || limit > 1000)
        return luaL_error(L, "cm.%s.find: limit: must be from 1 to 1000", kname);
    cJSON **in = cm_ljson_box(L), **out = cm_ljson_box(L);
    if (!lua_isnil(L, 1))
        check_doc(L, 1, "filter", in);
    int rc = cm_model_find(host->model, kind, *in, after, (int)limit, out, &err);
    cJSON_Delete(*in);
    *in = NULL;
    if (rc != 0)
        return cm_lua_raise(L, &err);
    audit_records(L, host, kind, "find", "read", *out);
    return push_result(L, out);
}

/* list([{after=, limit=}]) is find with no filter. */
static int l_list(lua_State *L)
{
    lua_settop(L, 1);
    lua_pushnil(L);
    lua_insert(L, 1);
    /* stack: nil, opts */
    return l_find(L);
}

static int l_count(lua_State *L)
{
    cm_lua_host *host = cm_lua_host_get(L);
    cm_err err;
    long n = 0;
    if (cm_model_count(host->model, check_kind(L), &n, &err) != 0)
        return cm_lua_raise(L, &err);
    lua_pushinteger(L, n);
    return 1;
}

static const luaL_Reg kind_funcs[] = {
    {"create", l_create}, {"get", l_get},     {"update", l_update}, {"find", l_find},
    {"list", l_list},     {"count", l_count}, {NULL, NULL},
};

void cm__lmodel_register(lua_State *L)
{
    /* stack: module */
    for (int k = 0; k < CM_KIND__COUNT; k++) {
        lua_newtable(L);
        lua_pushinteger(L, k);
        luaL_setfuncs(L, kind_funcs, 1);
        lua_pushstring(L, cm_kind_name((cm_kind)k));
        lua_setfield(L, -2, "kind");
        /* stack: module, kindtable */
        lua_setfield(L, -2, cm_kind_name((cm_kind)k));
    }
}
