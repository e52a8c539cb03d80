/*
** ljson.h -- conversion between Lua values and cJSON documents.
** Lua -> JSON walks tables raw (no metamethods run), never raises, and names
** the path of the first value it cannot carry: functions, userdata, NaN,
** mixed or holed arrays, non-string keys, invalid UTF-8, cycles. A sequence
** 1..n becomes an array, an empty table an empty object, `cm.null` JSON null.
** Documents that must survive a Lua error (a memory error while building
** tables) are parked in a box: a userdata whose __gc deletes what it holds.
** Depends on: Lua 5.4, cJSON, error.h. Loop thread.
*/
#ifndef CM_LJSON_H
#define CM_LJSON_H

#include <cjson/cJSON.h>
#include <lua.h>
#include <stdbool.h>

#include "error.h"

/* Convert the value at idx. root names it in messages ("patient", "argument #1").
** On success *out is a new document the caller deletes. Never raises. */
int cm_ljson_from_lua(lua_State *L, int idx, const char *root, cJSON **out, cm_err *err);

/* The same conversion straight to compact JSON text: *out is a NUL-terminated
** string the caller frees, *len (may be NULL) its length. Never raises. */
int cm_ljson_encode(lua_State *L, int idx, const char *root, char **out, size_t *len, cm_err *err);

/* cm_ljson_encode, and *same: whether reading the text back
** (cm_ljson_push_object_text) gives tables that behave as the value did.
** Not when a table has a metatable or is reached twice (read back: two
** tables), when a float with an integral value is written (read back: an
** integer), or when there are more than 64 tables to tell apart. */
int cm_ljson_encode_same(lua_State *L, int idx, const char *root, char **out, size_t *len,
                         bool *same, cm_err *err);

/* Text being written by cm_ljson_encode_copy: in the caller's frame, so that
** the caller frees s (free) even when a Lua error unwound the call. Start
** it as {0}; reuse it only after freeing s. */
typedef struct cm_ljson_buf {
    char *s;
    size_t len, cap;
    bool failed;
} cm_ljson_buf;

/* cm_ljson_encode_same into buf (buf->s, NUL-terminated, when it returns 0)
** and, in the same walk, a copy of the value: new tables of the same fields
** (strings shared), which no Lua code has seen. The copy is pushed when it
** returns 0 with *same, nothing otherwise. May raise a memory error while
** it makes the tables: call it protected. */
int cm_ljson_encode_copy(lua_State *L, int idx, const char *root, cm_ljson_buf *buf, bool *same,
                         cm_err *err);

/* Push an empty box and return its slot: store a document there and Lua frees
** it if an error unwinds; set the slot to NULL after freeing it yourself.
** Raises on out of memory (before anything is owned). */
cJSON **cm_ljson_box(lua_State *L);

/* Push doc as a Lua value (may raise a memory error; doc stays the caller's,
** so keep it in a box). */
void cm_ljson_push(lua_State *L, const cJSON *doc);

/* Push the JSON object in text (NUL-terminated) as a Lua table, read straight
** from the text; the same tables as cm_ljson_push of cJSON_Parse(text). False,
** with nothing pushed, if text is not a JSON object. May raise a memory error
** or push_value's nesting error (nothing is left to free). */
bool cm_ljson_push_object_text(lua_State *L, const char *text);

/* Push the JSON null sentinel (a light userdata NULL, exposed as cm.null). */
void cm_ljson_push_null(lua_State *L);

/* Register the "caremesh.json" userdata metatable; call once per state before use. */
void cm_ljson_init(lua_State *L);

#endif
