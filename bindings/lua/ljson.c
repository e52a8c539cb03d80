/*
** ljson.c -- Lua values <-> cJSON documents, with paths in every error.
*/
#include "ljson.h"

#include "text.h"

#include <lauxlib.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define LJSON_MAX_DEPTH 32
#define LJSON_BOX       "caremesh.json"

typedef struct path_buf {
    char s[512];
    size_t len;
} path_buf;

static size_t path_push_key(path_buf *p, const char *key)
{
    size_t old = p->len;
    int n = snprintf(p->s + p->len, sizeof(p->s) - p->len, ".%s", key);
    if (n > 0)
        p->len = p->len + (size_t)n < sizeof(p->s) ? p->len + (size_t)n : sizeof(p->s) - 1;
    return old;
}

static size_t path_push_index(path_buf *p, lua_Integer i)
{
    size_t old = p->len;
    int n = snprintf(p->s + p->len, sizeof(p->s) - p->len, "[%lld]", (long long)i);
    if (n > 0)
        p->len = p->len + (size_t)n < sizeof(p->s) ? p->len + (size_t)n : sizeof(p->s) - 1;
    return old;
}

static void path_pop(path_buf *p, size_t old)
{
    p->len = old;
    p->s[old] = '\0';
}

static int convert(lua_State *L, int idx, path_buf *path, int depth, cJSON **out, cm_err *err);

/* Is the table at idx a sequence 1..n with no other keys? Sets *n. Raw access only. */
static int classify_table(lua_State *L, int idx, path_buf *path, bool *is_array, lua_Integer *n,
                          cm_err *err)
{
    lua_Integer count = 0, max = 0;
    bool has_string = false, has_int = false;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        /* stack: ... key value */
        int kt = lua_type(L, -2);
        if (kt == LUA_TSTRING) {
            has_string = true;
        } else if (kt == LUA_TNUMBER && lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            has_int = true;
            if (lua_tointeger(L, -2) > max)
                max = lua_tointeger(L, -2);
        } else {
            lua_pop(L, 2);
            return cm_err_set(err, CM_EINVAL,
                              "%s: a key of type %s cannot be carried (keys are "
                              "names or array positions 1..n)",
                              path->s, lua_typename(L, kt));
        }
        count++;
        lua_pop(L, 1);
    }
    if (has_string && has_int)
        return cm_err_set(err, CM_EINVAL, "%s: table mixes array items and named fields", path->s);
    if (has_int && max != count)
        return cm_err_set(err, CM_EINVAL, "%s: array has holes (%lld items, highest index %lld)",
                          path->s, (long long)count, (long long)max);
    *is_array = has_int;
    *n = max;
    return 0;
}

static int convert_table(lua_State *L, int idx, path_buf *path, int depth, cJSON **out, cm_err *err)
{
    bool is_array = false;
    lua_Integer n = 0;
    int rc;
    cJSON *node = NULL;
    if (depth >= LJSON_MAX_DEPTH)
        return cm_err_set(err, CM_EINVAL, "%s: nested more than %d levels deep (a cycle?)", path->s,
                          LJSON_MAX_DEPTH);
    if (!lua_checkstack(L, 4))
        return cm_err_set(err, CM_ENOMEM, "%s: Lua stack exhausted", path->s);
    if ((rc = classify_table(L, idx, path, &is_array, &n, err)) != 0)
        return rc;
    node = is_array ? cJSON_CreateArray() : cJSON_CreateObject();
    if (!node)
        return cm_err_set(err, CM_ENOMEM, "%s: out of memory", path->s);
    if (is_array) {
        for (lua_Integer i = 1; i <= n; i++) {
            cJSON *child = NULL;
            size_t mark = path_push_index(path, i - 1); /* JSON positions count from 0 */
            lua_rawgeti(L, idx, i);
            rc = convert(L, lua_gettop(L), path, depth + 1, &child, err);
            lua_pop(L, 1);
            path_pop(path, mark);
            if (rc != 0 || !cJSON_AddItemToArray(node, child)) {
                cJSON_Delete(child);
                rc = rc ? rc : cm_err_set(err, CM_ENOMEM, "%s: out of memory", path->s);
                goto fail;
            }
        }
    } else {
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            /* stack: ... key value */
            cJSON *child = NULL;
            const char *key = lua_tostring(L, -2); /* a string: classify_table checked */
            size_t mark = path_push_key(path, key);
            if (strlen(key) != lua_rawlen(L, -2))
                rc = cm_err_set(err, CM_EINVAL, "%s: field name contains a NUL byte", path->s);
            else
                rc = convert(L, lua_gettop(L), path, depth + 1, &child, err);
            path_pop(path, mark);
            lua_pop(L, 1);
            if (rc != 0 || !cJSON_AddItemToObject(node, key, child)) {
                lua_pop(L, 1);
                cJSON_Delete(child);
                rc = rc ? rc : cm_err_set(err, CM_ENOMEM, "%s: out of memory", path->s);
                goto fail;
            }
        }
    }
    *out = node;
    return 0;
fail:
    cJSON_Delete(node);
    return rc;
}

static int convert(lua_State *L, int idx, path_buf *path, int depth, cJSON **out, cm_err *err)
{
    cJSON *node = NULL;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        node = cJSON_CreateBool(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        if (!isfinite(d))
            return cm_err_set(err, CM_EINVAL, "%s: number is not finite", path->s);
        if (lua_isinteger(L, idx) &&
            (lua_tointeger(L, idx) > (1LL << 53) || lua_tointeger(L, idx) < -(1LL << 53)))
            return cm_err_set(err, CM_EINVAL, "%s: integer too large for JSON (over 2^53)",
                              path->s);
        node = cJSON_CreateNumber(d);
        break;
    }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strlen(s) != len)
            return cm_err_set(err, CM_EINVAL, "%s: string contains a NUL byte", path->s);
        if (!cm_utf8_valid(s, len))
            return cm_err_set(err, CM_EINVAL, "%s: string is not valid UTF-8", path->s);
        node = cJSON_CreateString(s);
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            node = cJSON_CreateNull();
            break;
        }
        return cm_err_set(err, CM_EINVAL, "%s: a userdata cannot be carried", path->s);
    case LUA_TTABLE:
        return convert_table(L, idx, path, depth, out, err);
    default:
        return cm_err_set(err, CM_EINVAL,
                          "%s: a %s cannot be carried (only strings, numbers, "
                          "booleans, tables and cm.null)",
                          path->s, luaL_typename(L, idx));
    }
    if (!node)
        return cm_err_set(err, CM_ENOMEM, "%s: out of memory", path->s);
    *out = node;
    return 0;
}

int cm_ljson_from_lua(lua_State *L, int idx, const char *root, cJSON **out, cm_err *err)
{
    path_buf path;
    *out = NULL;
    path.len = (size_t)snprintf(path.s, sizeof(path.s), "%s", root ? root : "value");
    if (path.len >= sizeof(path.s))
        path.len = sizeof(path.s) - 1;
    return convert(L, lua_absindex(L, idx), &path, 0, out, err);
}

void cm_ljson_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, NULL);
}

static void push_value(lua_State *L, const cJSON *j, int depth)
{
    if (depth > LJSON_MAX_DEPTH * 4)
        luaL_error(L, "JSON document nested too deeply");
    luaL_checkstack(L, 3, "JSON document nested too deeply");
    if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
        bool arr = cJSON_IsArray(j);
        int n = cJSON_GetArraySize(j);
        lua_createtable(L, arr ? n : 0, arr ? 0 : n);
        lua_Integer i = 1;
        const cJSON *c;
        cJSON_ArrayForEach(c, j)
        {
            push_value(L, c, depth + 1);
            if (arr)
                lua_rawseti(L, -2, i++);
            else
                lua_setfield(L, -2, c->string);
        }
    } else if (cJSON_IsString(j)) {
        lua_pushstring(L, j->valuestring);
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) <= 9007199254740992.0)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
    } else if (cJSON_IsBool(j)) {
        lua_pushboolean(L, cJSON_IsTrue(j));
    } else {
        cm_ljson_push_null(L);
    }
}

static int box_gc(lua_State *L)
{
    cJSON **box = luaL_checkudata(L, 1, LJSON_BOX);
    cJSON_Delete(*box);
    *box = NULL;
    return 0;
}

void cm_ljson_init(lua_State *L)
{
    if (luaL_newmetatable(L, LJSON_BOX)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

cJSON **cm_ljson_box(lua_State *L)
{
    cJSON **box = lua_newuserdatauv(L, sizeof(cJSON *), 0);
    *box = NULL;
    luaL_setmetatable(L, LJSON_BOX);
    return box;
}

void cm_ljson_push(lua_State *L, const cJSON *doc)
{
    push_value(L, doc, 0);
}
