/*
** lshare.c -- what partner nodes shared, in Lua: cm.directory.find/get (their
** organizations, providers and services) and cm.indicators (their aggregate
** KPIs). Read-only; no patient data is in either (core/share.h).
*/
#include "lhost.h"
#include "ljson.h"
#include "sandbox.h"

#include <lauxlib.h>
#include <sqlite3.h>
#include <string.h>

/* Optional string field key of the filter table at idx (NULL if absent). */
static const char *filter_str(lua_State *L, int idx, const char *key, const char *fn)
{
    if (lua_isnoneornil(L, idx))
        return NULL;
    int t = lua_getfield(L, idx, key);
    const char *s = NULL;
    if (t == LUA_TSTRING)
        s = lua_tostring(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "%s: %s: must be a string", fn, key);
    lua_pop(L, 1); /* the string stays alive in the filter table */
    return s;
}

static bool has_string(const cJSON *arr, const char *s)
{
    const cJSON *it;
    cJSON_ArrayForEach(it,
                       arr) if (cJSON_IsString(it) && strcmp(it->valuestring, s) == 0) return true;
    return false;
}

/* Push the row's doc (column 1) with "peer" (column 0) added; false when it
** does not pass the filter. */
static bool push_doc(lua_State *L, sqlite3_stmt *st, const char *kind, const char *service)
{
    cJSON *doc = cJSON_Parse((const char *)sqlite3_column_text(st, 1));
    if (!doc)
        return false;
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(doc, "kind");
    if ((kind && (!cJSON_IsString(k) || strcmp(k->valuestring, kind) != 0)) ||
        (service && !has_string(cJSON_GetObjectItemCaseSensitive(doc, "services"), service))) {
        cJSON_Delete(doc);
        return false;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "peer");
    cJSON_AddStringToObject(doc, "peer", (const char *)sqlite3_column_text(st, 0));
    cm_ljson_push(L, doc);
    cJSON_Delete(doc);
    return true;
}

static int query_error(lua_State *L, const char *fn, cm_err *err)
{
    return luaL_error(L, "%s: %s", fn, err->msg);
}

/* cm.directory.find([{peer =, kind =, service =}]) -> list of organizations */
static int l_directory_find(lua_State *L)
{
    cm_lua_host *host = cm_lua_host_get(L);
    cm_err err;
    lua_settop(L, 1);
    if (!lua_isnil(L, 1))
        luaL_checktype(L, 1, LUA_TTABLE);
    const char *peer = filter_str(L, 1, "peer", "cm.directory.find");
    const char *kind = filter_str(L, 1, "kind", "cm.directory.find");
    const char *service = filter_str(L, 1, "service", "cm.directory.find");
    sqlite3_stmt *st = cm_store_prepare(host->store,
                                        "SELECT peer, doc FROM directory WHERE (?1 IS NULL OR "
                                        "peer = ?1) ORDER BY organization, peer",
                                        &err);
    if (!st)
        return query_error(L, "cm.directory.find", &err);
    if (peer)
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
    lua_newtable(L);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW)
        if (push_doc(L, st, kind, service))
            lua_rawseti(L, -2, ++n);
    sqlite3_reset(st);
    return 1;
}

/* cm.directory.get(id) -> the partner organization, or nil */
static int l_directory_get(lua_State *L)
{
    cm_lua_host *host = cm_lua_host_get(L);
    cm_err err;
    const char *id = luaL_checkstring(L, 1);
    sqlite3_stmt *st = cm_store_prepare(
        host->store, "SELECT peer, doc FROM directory WHERE organization = ?1 ORDER BY peer", &err);
    if (!st)
        return query_error(L, "cm.directory.get", &err);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    bool found = sqlite3_step(st) == SQLITE_ROW && push_doc(L, st, NULL, NULL);
    sqlite3_reset(st);
    if (!found)
        lua_pushnil(L);
    return 1;
}

/* cm.indicators([{peer =, partnership =, name =}]) -> list of indicators */
static int l_indicators(lua_State *L)
{
    cm_lua_host *host = cm_lua_host_get(L);
    cm_err err;
    lua_settop(L, 1);
    if (!lua_isnil(L, 1))
        luaL_checktype(L, 1, LUA_TTABLE);
    const char *peer = filter_str(L, 1, "peer", "cm.indicators");
    const char *ship = filter_str(L, 1, "partnership", "cm.indicators");
    const char *name = filter_str(L, 1, "name", "cm.indicators");
    sqlite3_stmt *st = cm_store_prepare(
        host->store,
        "SELECT peer, doc FROM indicator WHERE (?1 IS NULL OR peer = ?1) AND (?2 IS NULL OR "
        "partnership = ?2) AND (?3 IS NULL OR name = ?3) ORDER BY partnership, name, peer",
        &err);
    if (!st)
        return query_error(L, "cm.indicators", &err);
    if (peer)
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
    if (ship)
        sqlite3_bind_text(st, 2, ship, -1, SQLITE_TRANSIENT);
    if (name)
        sqlite3_bind_text(st, 3, name, -1, SQLITE_TRANSIENT);
    lua_newtable(L);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW)
        if (push_doc(L, st, NULL, NULL))
            lua_rawseti(L, -2, ++n);
    sqlite3_reset(st);
    return 1;
}

void cm__lshare_register(lua_State *L)
{
    static const luaL_Reg dir[] = {
        {"find", l_directory_find}, {"get", l_directory_get}, {NULL, NULL}};
    /* stack: the caremesh module */
    luaL_newlib(L, dir);
    cm_sandbox_push_readonly(L, -1, "caremesh.directory");
    lua_setfield(L, -3, "directory");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_indicators);
    lua_setfield(L, -2, "indicators");
}
