/*
** ljson.c -- Lua values <-> cJSON documents, with paths in every error.
*/
#include "ljson.h"

#include "text.h"

#include <lauxlib.h>
#include <locale.h>
#include <math.h>
#include <stdbool.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define LJSON_MAX_DEPTH   32
#define LJSON_BOX         "caremesh.json"
#define LJSON_SAME_TABLES 64 /* tables cm_ljson_encode_same tells apart */

/* Where the walk is: the root's name and a segment per level, a field's
** name (borrowed from the Lua stack, where the walk keeps each key while it
** writes its value) or an array position. The text ("wf.ctx.a[0].b") is
** written only for an error (path_text): the walk itself copies nothing. */
typedef struct path_seg {
    const char *key; /* NULL: an array position */
    size_t len;      /* the name's length, or the position */
} path_seg;

typedef struct path_buf {
    const char *root;
    size_t nsegs;
    path_seg segs[LJSON_MAX_DEPTH + 1]; /* encode_table stops deeper walks */
    char s[512];
    size_t len;
} path_buf;

static inline void path_push(path_buf *p, const char *key, size_t len)
{
    if (p->nsegs < sizeof(p->segs) / sizeof(p->segs[0]))
        p->segs[p->nsegs] = (path_seg){key, len};
    p->nsegs++;
}

static inline void path_pop(path_buf *p)
{
    p->nsegs--;
}

/* Append text to the path's text, cut to fit. */
static void path_add(path_buf *p, char lead, const char *text, size_t len, char tail)
{
    size_t room = sizeof(p->s) - 1 - p->len;
    char *at = p->s + p->len;
    if (room > 0) {
        *at++ = lead;
        room--;
    }
    if (len > room)
        len = room;
    memcpy(at, text, len);
    at += len;
    room -= len;
    if (tail && room > 0)
        *at++ = tail;
    *at = '\0';
    p->len = (size_t)(at - p->s);
}

/* The path as text, for an error message: the root, ".name" for a field
** (cut at a NUL in the name, as %s cuts it), "[i]" for a position. */
static const char *path_text(path_buf *p)
{
    size_t nlen = strlen(p->root), n = p->nsegs;
    p->len = nlen < sizeof(p->s) ? nlen : sizeof(p->s) - 1;
    memcpy(p->s, p->root, p->len);
    p->s[p->len] = '\0';
    if (n > sizeof(p->segs) / sizeof(p->segs[0]))
        n = sizeof(p->segs) / sizeof(p->segs[0]);
    for (size_t i = 0; i < n; i++) {
        const path_seg *g = &p->segs[i];
        if (g->key) {
            path_add(p, '.', g->key, g->len, '\0');
            continue;
        }
        char digits[24];
        size_t nd = sizeof(digits);
        size_t v = g->len;
        do {
            digits[--nd] = (char)('0' + v % 10);
            v /= 10;
        } while (v && nd > 0);
        path_add(p, '[', digits + nd, sizeof(digits) - nd, ']');
    }
    return p->s;
}

/* Is the table at idx a sequence 1..n with no other keys? Sets *n. Raw access only. */
static int classify_table(lua_State *L, int idx, path_buf *path, bool *is_array, lua_Integer *n,
                          lua_Integer *fields, cm_err *err)
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
                              path_text(path), lua_typename(L, kt));
        }
        count++;
        lua_pop(L, 1);
    }
    if (has_string && has_int)
        return cm_err_set(err, CM_EINVAL, "%s: table mixes array items and named fields",
                          path_text(path));
    if (has_int && max != count)
        return cm_err_set(err, CM_EINVAL, "%s: array has holes (%lld items, highest index %lld)",
                          path_text(path), (long long)count, (long long)max);
    *is_array = has_int;
    *n = max;
    *fields = count;
    return 0;
}

/* The text being written: grows by doubling; `failed` once memory ran out. */
typedef cm_ljson_buf out_buf;

static bool out_room(out_buf *o, size_t n)
{
    if (o->failed)
        return false;
    if (o->cap - o->len > n)
        return true;
    size_t cap = o->cap ? o->cap : 128;
    while (cap - o->len <= n) {
        if (cap > SIZE_MAX / 2) {
            o->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *grown = realloc(o->s, cap);
    if (!grown) {
        o->failed = true;
        return false;
    }
    o->s = grown;
    o->cap = cap;
    return true;
}

/* The text is NUL-terminated once, at the end (out_room leaves a byte for it). */
static inline void out_add(out_buf *o, const char *s, size_t n)
{
    if (o->cap - o->len > n || out_room(o, n)) {
        memcpy(o->s + o->len, s, n);
        o->len += n;
    }
}

static inline void out_char(out_buf *o, char c)
{
    if (o->cap - o->len > 1 || out_room(o, 1))
        o->s[o->len++] = c;
}

/* Whether every byte of s is printable ASCII that JSON takes as it is (no
** quote, backslash, control byte, DEL or byte above 0x7f): such a string
** needs no NUL, UTF-8 or escape check and is copied whole. Sixteen bytes at
** a time where SSE2 is (every x86-64), the last sixteen read again when
** the length is not a multiple: they were plain or the answer is given. */
static bool all_plain(const char *s, size_t len)
{
    size_t i = 0;
#if defined(__SSE2__)
    if (len >= 16) {
        const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f),
                      quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
        for (;; i += 16) {
            if (i + 16 > len)
                i = len - 16;
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
            /* signed: a byte above 0x7f is below 0x20 */
            __m128i bad =
                _mm_or_si128(_mm_or_si128(_mm_cmplt_epi8(x, space), _mm_cmpeq_epi8(x, del)),
                             _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)));
            if (_mm_movemask_epi8(bad))
                return false;
            if (i + 16 == len)
                return true;
        }
    }
#endif
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    for (; i + 8 <= len; i += 8) { /* eight bytes at a time */
        uint64_t x, del;
        memcpy(&x, s + i, 8);
        del = x ^ (ones * 0x7f);
        /* a byte that ends a string's plain text (cm_json_stops8), one
        ** >= 0x80 (its high bit) or one equal to 0x7f ((v - ones) & ~v &
        ** highs: a zero byte's high bit, and a set bit only where some byte
        ** is zero or below): exact for whether there is one */
        if (cm_json_stops8(x) | ((x | ((del - ones) & ~del)) & highs))
            return false;
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            return false;
    }
    return true;
}

/* A string of plain bytes only (all_plain): quotes and the bytes. */
static void out_plain(out_buf *o, const char *s, size_t len)
{
    if (o->cap - o->len > len + 2 || out_room(o, len + 2)) {
        char *at = o->s + o->len;
        at[0] = '"';
        memcpy(at + 1, s, len);
        at[len + 1] = '"';
        o->len += len + 2;
    }
}

/* A JSON string, escaped as cm_json_escape_byte says (text.h). */
static void out_string(out_buf *o, const char *s, size_t len)
{
    out_char(o, '"');
    size_t run = 0; /* bytes not yet written that need no escape */
    for (size_t i = 0; i < len; i++) {
        char esc[6];
        size_t n = cm_json_escape_byte((unsigned char)s[i], esc);
        if (n == 0) {
            run++;
            continue;
        }
        out_add(o, s + i - run, run);
        run = 0;
        out_add(o, esc, n);
    }
    out_add(o, s + len - run, run);
    out_char(o, '"');
}

/* A number as cJSON prints one: integers exactly, others in the fewest
** digits (up to 17) that read back as the same double. */
/* Decimal digits of v into buf (at least 21 bytes); returns the length. */
static int int_text(char *buf, long long v)
{
    char digits[24];
    int nd = 0, n = 0;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do
        digits[nd++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0)
        buf[n++] = '-';
    while (nd > 0)
        buf[n++] = digits[--nd];
    return n;
}

/* An integer, written straight into the text. */
static void out_int(out_buf *o, long long v)
{
    if (o->cap - o->len > 21 || out_room(o, 21))
        o->len += (size_t)int_text(o->s + o->len, v);
}

/* A float (finite). */
static void out_double(out_buf *o, double d)
{
    char buf[32];
    int n;
    if (d == floor(d) && fabs(d) <= 9007199254740992.0) {
        out_int(o, (long long)d);
        return;
    }
    n = snprintf(buf, sizeof(buf), "%1.15g", d);
    if (strtod(buf, NULL) != d)
        n = snprintf(buf, sizeof(buf), "%1.17g", d);
    out_add(o, buf, n > 0 && (size_t)n < sizeof(buf) ? (size_t)n : 0);
}

/* Whether the text, read back, gives tables that behave as the value written
** (see cm_ljson_encode_same); NULL when nobody asks. With copy, each value
** written is also pushed as its copy (cm_ljson_encode_copy). */
typedef struct same_check {
    bool same;
    bool copy;
    int ntables;
    const void *tables[LJSON_SAME_TABLES];
} same_check;

/* A table met while writing: one with a metatable, or met before, reads
** back as something else. */
static void same_table(lua_State *L, int idx, same_check *sc)
{
    if (!sc || !sc->same)
        return;
    if (lua_getmetatable(L, idx)) {
        lua_pop(L, 1);
        sc->same = false;
        return;
    }
    const void *t = lua_topointer(L, idx);
    for (int i = 0; i < sc->ntables; i++)
        if (sc->tables[i] == t) {
            sc->same = false; /* two places, one table: read back, two */
            return;
        }
    if (sc->ntables == LJSON_SAME_TABLES)
        sc->same = false; /* too many to tell */
    else
        sc->tables[sc->ntables++] = t;
}

static int encode(lua_State *L, int idx, path_buf *path, int depth, out_buf *o, same_check *sc,
                  cm_err *err);
static int encode_value(lua_State *L, int idx, int type, path_buf *path, int depth, out_buf *o,
                        same_check *sc, cm_err *err);

/* A table with a string key first: an object, written in one walk. A key
** of another kind later is an error, as classify_table would say. With
** copy, the fields' copies gather on the stack and go into a table sized
** for them at the end (pushed). Entered with the first key and value on
** the stack. */
static int encode_object(lua_State *L, int idx, path_buf *path, int depth, out_buf *o,
                         same_check *sc, cm_err *err)
{
    bool copy = sc && sc->copy;
    int fields = 0, rc = 0;
    out_char(o, '{');
    do {
        /* stack: ... [key, copy of value]..., key, value */
        int kt = lua_type(L, -2);
        if (kt != LUA_TSTRING) {
            bool item = kt == LUA_TNUMBER && lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1;
            return item ? cm_err_set(err, CM_EINVAL, "%s: table mixes array items and named fields",
                                     path_text(path))
                        : cm_err_set(err, CM_EINVAL,
                                     "%s: a key of type %s cannot be carried (keys are "
                                     "names or array positions 1..n)",
                                     path_text(path), lua_typename(L, kt));
        }
        size_t klen;
        const char *key = lua_tolstring(L, -2, &klen);
        path_push(path, key, klen);
        bool plain = all_plain(key, klen);
        if (!plain && strlen(key) != klen)
            return cm_err_set(err, CM_EINVAL, "%s: field name contains a NUL byte",
                              path_text(path));
        if (!lua_checkstack(L, 4))
            return cm_err_set(err, CM_ENOMEM, "%s: Lua stack exhausted", path_text(path));
        if (fields++)
            out_char(o, ',');
        if (plain)
            out_plain(o, key, klen);
        else
            out_string(o, key, klen);
        out_char(o, ':');
        int vt = lua_type(L, -1);
        if ((rc = encode_value(L, lua_gettop(L), vt, path, depth + 1, o, sc, err)) != 0)
            return rc;
        path_pop(path);
        if (copy) { /* stack: key, value[, a table's copy] -> key, its copy, key */
            if (vt == LUA_TTABLE)
                lua_replace(L, -2); /* any other value is its own copy */
            lua_pushvalue(L, -2);
        } else {
            lua_pop(L, 1);
        }
    } while (lua_next(L, idx) != 0);
    out_char(o, '}');
    if (copy) { /* stack: key, copy, ... (fields pairs) */
        lua_createtable(L, 0, fields);
        lua_insert(L, -2 * fields - 1);
        int t = lua_gettop(L) - 2 * fields;
        for (int i = 0; i < fields; i++)
            lua_rawset(L, t);
    }
    return 0;
}

/* A table: an object when its first key is a name (encode_object), else an
** array of 1..n (or {} when empty), as classify_table tells. */
static int encode_table(lua_State *L, int idx, path_buf *path, int depth, out_buf *o,
                        same_check *sc, cm_err *err)
{
    bool is_array = false;
    lua_Integer n = 0, fields = 0;
    int rc, copy = 0;
    if (depth >= LJSON_MAX_DEPTH)
        return cm_err_set(err, CM_EINVAL, "%s: nested more than %d levels deep (a cycle?)",
                          path_text(path), LJSON_MAX_DEPTH);
    if (!lua_checkstack(L, 6))
        return cm_err_set(err, CM_ENOMEM, "%s: Lua stack exhausted", path_text(path));
    same_table(L, idx, sc);
    lua_pushnil(L);
    if (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING) /* a name first: an object, in one walk */
            return encode_object(L, idx, path, depth, o, sc, err);
        lua_pop(L, 2); /* array items first: counted before they are written in order */
    }
    if ((rc = classify_table(L, idx, path, &is_array, &n, &fields, err)) != 0)
        return rc;
    if (sc && sc->copy) { /* sized as the original: no rehash while it fills */
        int size = fields <= INT_MAX ? (int)fields : 0;
        lua_createtable(L, is_array ? size : 0, is_array ? 0 : size);
        copy = lua_gettop(L);
    }
    out_char(o, is_array ? '[' : '{');
    if (is_array) {
        for (lua_Integer i = 1; i <= n; i++) {
            path_push(path, NULL, (size_t)(i - 1)); /* JSON positions count from 0 */
            if (i > 1)
                out_char(o, ',');
            int vt = lua_rawgeti(L, idx, i);
            rc = encode_value(L, lua_gettop(L), vt, path, depth + 1, o, sc, err);
            path_pop(path);
            if (rc != 0)
                return rc;               /* encode_root drops what is on the stack */
            if (copy)                    /* stack: copy, value[, a table's copy] */
                lua_rawseti(L, copy, i); /* any other value is its own copy */
            if (!copy || vt == LUA_TTABLE)
                lua_pop(L, 1);
        }
    }
    out_char(o, is_array ? ']' : '}'); /* no field: an empty object */
    return 0;                          /* with copy, the copy is on top */
}

/* A table pushes its own copy; any other value is its copy. */
static int encode(lua_State *L, int idx, path_buf *path, int depth, out_buf *o, same_check *sc,
                  cm_err *err)
{
    int type = lua_type(L, idx);
    int rc = encode_value(L, idx, type, path, depth, o, sc, err);
    if (rc == 0 && sc && sc->copy && type != LUA_TTABLE)
        lua_pushvalue(L, idx);
    return rc;
}

static int encode_value(lua_State *L, int idx, int type, path_buf *path, int depth, out_buf *o,
                        same_check *sc, cm_err *err)
{
    switch (type) {
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            out_add(o, "true", 4);
        else
            out_add(o, "false", 5);
        return 0;
    case LUA_TNUMBER: {
        if (lua_isinteger(L, idx)) { /* an integer, not a float of integral value */
            lua_Integer i = lua_tointeger(L, idx);
            if (i > (1LL << 53) || i < -(1LL << 53))
                return cm_err_set(err, CM_EINVAL, "%s: integer too large for JSON (over 2^53)",
                                  path_text(path));
            out_int(o, (long long)i);
            return 0;
        }
        double d = lua_tonumber(L, idx);
        if (!isfinite(d))
            return cm_err_set(err, CM_EINVAL, "%s: number is not finite", path_text(path));
        if (sc && d == floor(d) && fabs(d) <= 9007199254740992.0)
            sc->same = false; /* written as an integer, read back as one */
        out_double(o, d);
        return 0;
    }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (all_plain(s, len)) { /* no NUL, all ASCII, nothing to escape */
            out_plain(o, s, len);
            return 0;
        }
        if (strlen(s) != len)
            return cm_err_set(err, CM_EINVAL, "%s: string contains a NUL byte", path_text(path));
        if (!cm_utf8_valid(s, len))
            return cm_err_set(err, CM_EINVAL, "%s: string is not valid UTF-8", path_text(path));
        out_string(o, s, len);
        return 0;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            out_add(o, "null", 4);
            return 0;
        }
        return cm_err_set(err, CM_EINVAL, "%s: a userdata cannot be carried", path_text(path));
    case LUA_TTABLE:
        return encode_table(L, idx, path, depth, o, sc, err);
    default:
        return cm_err_set(err, CM_EINVAL,
                          "%s: a %s cannot be carried (only strings, numbers, "
                          "booleans, tables and cm.null)",
                          path_text(path), luaL_typename(L, idx));
    }
}

int cm_ljson_encode(lua_State *L, int idx, const char *root, char **out, size_t *len, cm_err *err)
{
    return cm_ljson_encode_same(L, idx, root, out, len, NULL, err);
}

/* Encode the value at idx into o (NUL-terminated on success); sc may be NULL. */
static int encode_root(lua_State *L, int idx, const char *root, out_buf *o, same_check *sc,
                       cm_err *err)
{
    path_buf path;
    const char *name = root ? root : "value";
    int top = lua_gettop(L);
    path.root = name;
    path.nsegs = 0;
    int rc = encode(L, idx, &path, 0, o, sc, err);
    if (rc != 0)
        lua_settop(L, top); /* what an error left on the stack */
    if (rc == 0 && o->failed)
        rc = cm_err_set(err, CM_ENOMEM, "%s: out of memory", name);
    if (rc == 0)
        o->s[o->len] = '\0';
    return rc;
}

int cm_ljson_encode_same(lua_State *L, int idx, const char *root, char **out, size_t *len,
                         bool *same, cm_err *err)
{
    out_buf o = {NULL, 0, 0, false};
    same_check sc = {true, false, 0, {NULL}};
    *out = NULL;
    int rc = encode_root(L, lua_absindex(L, idx), root, &o, same ? &sc : NULL, err);
    if (same)
        *same = rc == 0 && sc.same;
    if (rc != 0) {
        free(o.s);
        return rc;
    }
    *out = o.s;
    if (len)
        *len = o.len;
    return 0;
}

int cm_ljson_encode_copy(lua_State *L, int idx, const char *root, cm_ljson_buf *buf, bool *same,
                         cm_err *err)
{
    same_check sc; /* tables[] is filled as far as ntables says */
    int top = lua_gettop(L);
    sc.same = true;
    sc.copy = true;
    sc.ntables = 0;
    int rc = encode_root(L, lua_absindex(L, idx), root, buf, &sc, err);
    *same = rc == 0 && sc.same;
    if (!*same)
        lua_settop(L, top); /* an error's leftovers, or a copy that would not behave the same */
    return rc;
}

int cm_ljson_from_lua(lua_State *L, int idx, const char *root, cJSON **out, cm_err *err)
{
    char *text;
    int rc = cm_ljson_encode(L, idx, root, &text, NULL, err);
    *out = NULL;
    if (rc != 0)
        return rc;
    *out = cJSON_Parse(text);
    free(text);
    if (!*out)
        return cm_err_set(err, CM_ENOMEM, "%s: out of memory", root ? root : "value");
    return 0;
}

void cm_ljson_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, NULL);
}

/* Documents are read as deep as cJSON reads them (CM_JSON_DEPTH_MAX, the
** root counted): an event's payload that the API or the engine took is
** never refused here (written back, a context still stops at
** LJSON_MAX_DEPTH). */
static void push_value(lua_State *L, const cJSON *j, int depth)
{
    if (depth >= CM_JSON_DEPTH_MAX)
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

/* ---- JSON text straight to Lua ------------------------------------------ */

/* The reader below turns JSON text into Lua values without a cJSON tree in
** between, and builds exactly the tables push_value builds from cJSON_Parse's
** tree (same sizes, same insertion order, same numbers and strings). It takes
** only what it is sure of: well-formed JSON without \u0000 or surrogate
** escapes, numbers up to 62 characters (rd_number's buffer), nesting within
** push_value's limit, no byte-order mark, nothing after the value. Anything
** else returns false, and cm_ljson_push_object_text lets cJSON read it, so
** the two routes never differ. */

static void rd_space(const char **pp)
{
    const char *p = *pp;
    while (*p && (unsigned char)*p <= 32) /* cJSON skips every control byte */
        p++;
    *pp = p;
}

static bool rd_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool rd_value(lua_State *L, const char **pp, int depth);

/* A string (*pp at its opening quote). */
static bool rd_string(lua_State *L, const char **pp)
{
    const char *p = *pp + 1, *start = p;
    while (*p != '"' && *p != '\\') {
        if (*p == '\0')
            return false;
        p++;
    }
    if (*p == '"') {
        lua_pushlstring(L, start, (size_t)(p - start));
        *pp = p + 1;
        return true;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, start, (size_t)(p - start));
    while (*p != '"') {
        char c = *p;
        if (c == '\0')
            return false;
        if (c != '\\') {
            luaL_addchar(&b, c);
            p++;
            continue;
        }
        int e = cm_json_unescape_short(p[1]);
        if (e >= 0) {
            luaL_addchar(&b, (char)e);
        } else if (p[1] == 'u') {
            long v = cm_hex4(p + 2);
            char u[4];
            if (v <= 0 || (v >= 0xD800 && v <= 0xDFFF))
                return false; /* bad, cut strings and surrogate pairs: cJSON's to read */
            luaL_addlstring(&b, u, cm_utf8_put((unsigned)v, u));
            p += 6;
            continue;
        } else {
            return false;
        }
        p += 2;
    }
    luaL_pushresult(&b);
    *pp = p + 1;
    return true;
}

/* A number in JSON's grammar, pushed as push_value pushes cJSON's double. */
static bool rd_number(lua_State *L, const char **pp)
{
    const char *p = *pp, *s = p;
    bool neg = *p == '-', whole = true;
    if (neg)
        p++;
    if (*p == '0')
        p++;
    else if (rd_digit(*p))
        while (rd_digit(*p))
            p++;
    else
        return false;
    if (*p == '.') {
        whole = false;
        if (!rd_digit(*++p))
            return false;
        while (rd_digit(*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        whole = false;
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!rd_digit(*p))
            return false;
        while (rd_digit(*p))
            p++;
    }
    size_t n = (size_t)(p - s);
    /* buf below holds the number and a NUL; a longer number goes to
    ** cJSON (which reads any length), so both routes push the same value */
    if (n > 62)
        return false;
    if (whole && n - neg <= 15) { /* below 2^53: exact without strtod */
        lua_Integer v = 0;
        for (const char *q = s + neg; q < p; q++)
            v = v * 10 + (*q - '0');
        lua_pushinteger(L, neg ? -v : v);
    } else {
        char buf[64], *end;
        memcpy(buf, s, n);
        buf[n] = '\0';
        char *dot = memchr(buf, '.', n);
        if (dot) /* as cJSON does: strtod reads the locale's decimal point */
            *dot = localeconv()->decimal_point[0];
        double d = strtod(buf, &end);
        if (end != buf + n)
            return false;
        if (d == floor(d) && fabs(d) <= 9007199254740992.0)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
    }
    *pp = p;
    return true;
}

/* An object or array: its items go on the stack first, so the table is made
** at its final size and filled in document order, as push_value does. */
static bool rd_container(lua_State *L, const char **pp, int depth)
{
    bool obj = **pp == '{';
    char close = obj ? '}' : ']';
    const char *p = *pp + 1;
    int base = lua_gettop(L), n = 0;
    rd_space(&p);
    if (*p != close) {
        for (;;) {
            if (!lua_checkstack(L, 4) || n == INT_MAX / 2)
                return false;
            if (obj) {
                if (*p != '"' || !rd_string(L, &p))
                    return false;
                rd_space(&p);
                if (*p++ != ':')
                    return false;
                rd_space(&p);
            }
            if (!rd_value(L, &p, depth + 1))
                return false;
            n++;
            rd_space(&p);
            if (*p != ',')
                break;
            p++;
            rd_space(&p);
        }
        if (*p != close)
            return false;
    }
    lua_createtable(L, obj ? 0 : n, obj ? n : 0);
    for (int i = 0; i < n; i++) {
        if (obj) {
            lua_pushvalue(L, base + 2 * i + 1);
            lua_pushvalue(L, base + 2 * i + 2);
            lua_rawset(L, -3);
        } else {
            lua_pushvalue(L, base + i + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
    }
    if (n > 0) { /* the table where its first item was; the items go */
        lua_replace(L, base + 1);
        lua_settop(L, base + 1);
    }
    *pp = p + 1;
    return true;
}

static bool rd_value(lua_State *L, const char **pp, int depth)
{
    const char *p = *pp;
    if (depth >= CM_JSON_DEPTH_MAX) /* push_value's limit: its error, by the other route */
        return false;
    switch (*p) {
    case '{':
    case '[':
        return rd_container(L, pp, depth);
    case '"':
        return rd_string(L, pp);
    case 't':
        if (strncmp(p, "true", 4) != 0)
            return false;
        lua_pushboolean(L, 1);
        *pp = p + 4;
        return true;
    case 'f':
        if (strncmp(p, "false", 5) != 0)
            return false;
        lua_pushboolean(L, 0);
        *pp = p + 5;
        return true;
    case 'n':
        if (strncmp(p, "null", 4) != 0)
            return false;
        cm_ljson_push_null(L);
        *pp = p + 4;
        return true;
    default:
        return rd_number(L, pp);
    }
}

bool cm_ljson_push_object_text(lua_State *L, const char *text)
{
    if (text[0] == '{' && text[1] == '}' && text[2] == '\0') {
        lua_createtable(L, 0, 0); /* an event's usual payload: what rd_container makes */
        return true;
    }
    int top = lua_gettop(L);
    const char *p = text;
    rd_space(&p);
    if (*p == '{' && lua_checkstack(L, 4) && rd_value(L, &p, 0)) {
        rd_space(&p);
        if (*p == '\0')
            return true;
    }
    lua_settop(L, top); /* not what the reader takes: cJSON decides */
    cJSON **box = cm_ljson_box(L);
    if (!(*box = cJSON_Parse(text)) || !cJSON_IsObject(*box)) {
        lua_settop(L, top); /* the box frees what was parsed */
        return false;
    }
    cm_ljson_push(L, *box);
    lua_remove(L, -2); /* the box frees the document when collected */
    return true;
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
