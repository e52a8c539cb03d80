/*
** lplugin.c -- plugin functions in Lua: require "MODULE" gives a read-only
** table of MODULE.NAME functions; a call marshals its arguments to one JSON
** array, runs the plugin's function and decodes its JSON result.
*/
#include "lplugin.h"

#include "ljson.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LPLUGIN_NAMES_MAX 64 /* functions of one module: one plugin's at most */
#define LPLUGIN_NAME_MAX  64

static const char PLUGINS_KEY = 'P';

static cm_plugin_host *plugins_of(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PLUGINS_KEY);
    cm_plugin_host *host = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return host;
}

/* The arguments 1..n as a JSON array in *box; 0, or raises "MODULE.NAME: ...". */
static void args_to_json(lua_State *L, int n, cJSON **box, const char *fname)
{
    cm_err err;
    if (!(*box = cJSON_CreateArray()))
        luaL_error(L, "%s: out of memory", fname);
    for (int i = 1; i <= n; i++) {
        char root[32];
        cJSON *v = NULL;
        snprintf(root, sizeof(root), "argument #%d", i);
        if (lua_isnil(L, i))
            v = cJSON_CreateNull(); /* keeps the positions of the others */
        else if (cm_ljson_from_lua(L, i, root, &v, &err) != 0)
            luaL_error(L, "%s: %s", fname, err.msg);
        if (!v || !cJSON_AddItemToArray(*box, v)) {
            cJSON_Delete(v);
            luaL_error(L, "%s: out of memory", fname);
        }
    }
}

/* MODULE.NAME(...): upvalue 1 is "MODULE.NAME". */
static int call_export(lua_State *L)
{
    const char *fname = lua_tostring(L, lua_upvalueindex(1));
    const char *dot = strchr(fname, '.');
    char module[LPLUGIN_NAME_MAX];
    cm_plugin_host *host = plugins_of(L);
    int n = lua_gettop(L);
    char *text, *result = NULL;
    cm_err err;
    snprintf(module, sizeof(module), "%.*s", (int)(dot - fname), fname);
    cJSON **box = cm_ljson_box(L); /* stack: args..., box */
    args_to_json(L, n, box, fname);
    text = cJSON_PrintUnformatted(*box);
    cJSON_Delete(*box);
    *box = NULL;
    if (!text)
        return luaL_error(L, "%s: out of memory", fname);
    int rc = host ? cm_plugin_host_lua_call(host, module, dot + 1, text, &result, &err)
                  : cm_err_set(&err, CM_ENOTFOUND, "%s: no plugins here", fname);
    free(text);
    if (rc != 0)
        return luaL_error(L, "%s", err.msg); /* "file:line: MODULE.NAME: message" */
    if (!result)
        return 0;
    *box = cJSON_Parse(result);
    free(result);
    if (!*box)
        return luaL_error(L, "%s: the plugin's result is not JSON", fname);
    cm_ljson_push(L, *box); /* the box frees the document if this raises */
    cJSON_Delete(*box);
    *box = NULL;
    return 1;
}

typedef struct names {
    char name[LPLUGIN_NAMES_MAX][LPLUGIN_NAME_MAX];
    int n;
} names;

static void add_name(void *ud, const char *name)
{
    names *ns = ud;
    if (ns->n < LPLUGIN_NAMES_MAX)
        snprintf(ns->name[ns->n++], LPLUGIN_NAME_MAX, "%s", name);
}

/* The opener of a plugin module (for cm_sandbox_preload): argument 1 is its name. */
static int open_module(lua_State *L)
{
    const char *module = luaL_checkstring(L, 1);
    cm_plugin_host *host = plugins_of(L);
    names *ns = lua_newuserdatauv(L, sizeof(names), 0); /* collected first: no Lua error */
    ns->n = 0;                                          /* unwinds through the host */
    if (host)
        cm_plugin_host_lua_names(host, module, add_name, ns);
    cm_ljson_init(L);
    lua_createtable(L, 0, ns->n);
    for (int i = 0; i < ns->n; i++) {
        lua_pushfstring(L, "%s.%s", module, ns->name[i]);
        lua_pushcclosure(L, call_export, 1);
        lua_setfield(L, -2, ns->name[i]);
    }
    return 1;
}

static int set_plugins(lua_State *L)
{
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PLUGINS_KEY);
    return 0;
}

static void preload(void *ud, const char *module)
{
    cm_sandbox_preload(ud, module, open_module);
}

int cm_lua_plugins_attach(cm_sandbox *sb, cm_plugin_host *host, cm_err *err)
{
    lua_State *L = cm_sandbox_state(sb);
    lua_pushcfunction(L, set_plugins);
    lua_pushlightuserdata(L, host);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return cm_err_set(err, CM_ENOMEM, "cannot attach the plugins to the Lua state");
    }
    cm_plugin_host_lua_modules(host, preload, sb);
    return 0;
}
