/*
** lcaremesh.c -- the `caremesh` Lua module: host context in the registry,
** error conventions, cm.now/cm.null/cm.node_id, and the record kinds.
** The module and its kind tables are read-only to scripts, so one script
** cannot rewire them under another.
*/
#include "lhost.h"
#include "ljson.h"
#include "lworkflow.h"
#include "sandbox.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

static const char HOST_KEY = 'h';

static int set_host(lua_State *L)
{
    lua_rawsetp(L, LUA_REGISTRYINDEX, &HOST_KEY); /* may grow the registry */
    return 0;
}

int cm_lua_host_set(lua_State *L, cm_lua_host *host, cm_err *err)
{
    cm_lua_host *had = cm_lua_host_peek(L);
    if (had && had != host) /* the workflow runtime keeps the first (lworkflow.c) */
        return cm_err_set(err, CM_EINVAL, "a host is already attached to this Lua state");
    lua_pushcfunction(L, set_host);
    lua_pushlightuserdata(L, host);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return cm_err_set(err, CM_ENOMEM, "cannot attach the host to the Lua state");
    }
    return 0;
}

cm_lua_host *cm_lua_host_peek(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &HOST_KEY);
    cm_lua_host *host = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return host;
}

cm_lua_host *cm_lua_host_get(lua_State *L)
{
    cm_lua_host *host = cm_lua_host_peek(L);
    if (!host || !host->model)
        luaL_error(L, "caremesh: records are not available here (no store attached)");
    return host;
}

static const char *code_name(int code)
{
    switch (code) {
    case CM_ENOTFOUND:
        return "not_found";
    case CM_EEXISTS:
        return "exists";
    case CM_EREF:
        return "missing_reference";
    case CM_EINVAL:
        return "invalid";
    case CM_EPERM:
        return "refused";
    case CM_ESTATE:
        return "wrong_state";
    default:
        return "error";
    }
}

int cm_lua_raise(lua_State *L, const cm_err *err)
{
    luaL_where(L, 1);
    lua_pushstring(L, err->msg);
    lua_concat(L, 2);
    return lua_error(L);
}

int cm_lua_fail(lua_State *L, const cm_err *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err->msg);
    lua_pushstring(L, code_name(err->code));
    return 3;
}

static int l_now(lua_State *L)
{
    char buf[CM_TIME_BUFSZ];
    cm_time_format(cm_clock_now_ms(cm_lua_host_get(L)->clock), buf, sizeof(buf));
    lua_pushstring(L, buf);
    return 1;
}

int cm_lua_open_caremesh(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &HOST_KEY);
    const cm_lua_host *host = lua_touserdata(L, -1);
    lua_pop(L, 1);
    cm_ljson_init(L);
    lua_newtable(L);
    lua_pushstring(L, CM_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, host && host->node_id ? host->node_id : "");
    lua_setfield(L, -2, "node_id");
    cm_ljson_push_null(L);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, l_now);
    lua_setfield(L, -2, "now");
    cm__lmodel_register(L);
    cm__lworkflow_register(L);
    cm__lshare_register(L);
    /* Freeze each kind table; the sandbox's require hands the module itself
    ** out as a read-only view. */
    for (int k = 0; k < CM_KIND__COUNT; k++) {
        char name[64];
        snprintf(name, sizeof(name), "caremesh.%s", cm_kind_name((cm_kind)k));
        lua_getfield(L, -1, cm_kind_name((cm_kind)k));
        cm_sandbox_push_readonly(L, -1, name);
        /* stack: module, kindtable, view */
        lua_setfield(L, -3, cm_kind_name((cm_kind)k));
        lua_pop(L, 1);
    }
    return 1;
}
