/*
** lcaremesh.c -- the `caremesh` Lua module: host context in the registry,
** error conventions, cm.now/cm.null/cm.node_id, and the record kinds.
** The module table is handed out read-only, so one script cannot rewire it
** under another.
*/
#include "lhost.h"
#include "ljson.h"

#include <lauxlib.h>
#include <string.h>

static const char HOST_KEY = 'h';

void cm_lua_host_set(lua_State *L, cm_lua_host *host)
{
    lua_pushlightuserdata(L, host);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &HOST_KEY);
}

cm_lua_host *cm_lua_host_get(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &HOST_KEY);
    cm_lua_host *host = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!host)
        luaL_error(L, "caremesh: no host attached to this Lua state");
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

static int l_readonly_newindex(lua_State *L)
{
    return luaL_error(L, "caremesh: the module is read-only (cannot set '%s')",
                      luaL_tolstring(L, 2, NULL));
}

static int l_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

/* pairs(proxy) walks the real table (the proxy's __index). */
static int l_readonly_pairs(lua_State *L)
{
    lua_pushcfunction(L, l_next);
    if (!lua_getmetatable(L, 1))
        return luaL_error(L, "caremesh: not a module table");
    lua_getfield(L, -1, "__index");
    lua_remove(L, -2);
    lua_pushnil(L);
    /* stack: ..., next, real, nil */
    return 3;
}

/* Replace the table on top with a read-only proxy of it. */
static void make_readonly(lua_State *L)
{
    /* stack: real */
    lua_newtable(L);
    lua_newtable(L);
    /* stack: real, proxy, mt */
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_readonly_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, l_readonly_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_remove(L, -2);
    /* stack: proxy */
}

int cm_lua_open_caremesh(lua_State *L)
{
    cm_lua_host *host = cm_lua_host_get(L);
    cm_ljson_init(L);
    lua_newtable(L);
    lua_pushstring(L, CM_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, host->node_id ? host->node_id : "");
    lua_setfield(L, -2, "node_id");
    cm_ljson_push_null(L);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, l_now);
    lua_setfield(L, -2, "now");
    cm__lmodel_register(L);
    /* Freeze each kind table, then the module. */
    for (int k = 0; k < CM_KIND__COUNT; k++) {
        lua_getfield(L, -1, cm_kind_name((cm_kind)k));
        make_readonly(L);
        lua_setfield(L, -2, cm_kind_name((cm_kind)k));
    }
    make_readonly(L);
    return 1;
}
