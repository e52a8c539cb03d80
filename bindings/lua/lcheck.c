/*
** lcheck.c -- `caremesh workflow check` and `graph`: run a workflow file in a
** sandbox of its own with a check-mode `caremesh` module, walk the definition
** and report every problem with its line, scanning handlers' source for the
** state names they return or go to, their effects and literal durations.
** Uses sandbox.h, lworkflow.h (durations), clock.h, model.h, text.h, fs.h.
**
** Lines come from the file's text: a small Lua lexer lists the tokens, the
** table keys (`name =`, `["name"] =`) with the constructor they sit in, and
** the block each `function` opens; a handler's tokens are found from
** lua_getinfo "S" (linedefined..lastlinedefined), and helpers of the same
** file the handler returns the value of or passes the instance to are read
** the same way (docs/workflow-tools.md says what counts). The text and its
** index are C allocations made before any Lua runs and freed after the
** sandbox closes; everything built while Lua runs (problems, edges, the
** report and the graph) lives in Lua tables and strings, and is copied out
** only after the last call.
*/
#include "lcheck.h"

#include "clock.h"
#include "fs.h"
#include "lscan.h"
#include "lworkflow.h"
#include "model.h"
#include "sandbox.h"
#include "text.h"

#include <lauxlib.h>
#include <lualib.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_MAX_FILE  ((size_t)16 * 1024 * 1024)
#define CHECK_MAX_NEST  200 /* nested functions tracked inside one handler (Lua's own limit) */
#define CHECK_MAX_HOPS  4   /* helper functions followed from a handler, call in call */
#define CHECK_MAX_CALLS 64  /* helper bodies scanned for one handler */

static const char MADE_KEY = 'w'; /* registry: weak set of tables given to cm.workflow */

/* ---- the file's text: tokens, table keys, blocks ---------------------- */

typedef enum { TK_NAME, TK_STRING, TK_NUMBER, TK_OP } tk_type;

typedef struct token {
    tk_type type;
    int line;
    const char *s; /* in the text: a name, an operator, a string's contents */
    size_t len;
    bool plain; /* a string whose contents are its value (no escapes) */
    int match;  /* '{' -> its '}'; function, if, do, repeat -> end/until; else -1 */
} token;

typedef struct tkey {
    int tok;    /* the key: a name, or the string of ["name"] */
    int value;  /* the first token of its value */
    int parent; /* the '{' of the constructor it sits in, or KEY_ASSIGNED */
} tkey;

#define KEY_ASSIGNED (-3) /* not in a constructor: `x.name = value` */
#define KEY_ANY      (-2) /* key_in: in any constructor, or assigned */

typedef struct fdef {
    int name; /* the function's name: local function f, function f, local f = function */
    int fn;   /* its `function` token */
} fdef;

typedef struct source {
    const char *path; /* borrowed */
    char *text;
    size_t len, skip; /* skip: a byte order mark or a "#" first line */
    token *toks;
    int ntoks, captoks;
    tkey *keys;
    int nkeys, capkeys;
    fdef *defs;
    int ndefs, capdefs;
} source;

static const char *const keywords[] = {"and",   "break", "do",       "else",  "elseif", "end",
                                       "false", "for",   "function", "goto",  "if",     "in",
                                       "local", "nil",   "not",      "or",    "repeat", "return",
                                       "then",  "true",  "until",    "while", NULL};

static bool name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static bool name_char(char ch)
{
    return name_start(ch) || (ch >= '0' && ch <= '9');
}

static bool in_list(const char *s, size_t len, const char *const *list)
{
    for (; *list; list++)
        if (strlen(*list) == len && memcmp(*list, s, len) == 0)
            return true;
    return false;
}

/* Token i spelled exactly text (names and operators; strings never match). */
static bool tok_is(const source *src, int i, const char *text)
{
    if (i < 0 || i >= src->ntoks || src->toks[i].type == TK_STRING)
        return false;
    return src->toks[i].len == strlen(text) && memcmp(src->toks[i].s, text, src->toks[i].len) == 0;
}

static bool tok_name(const source *src, int i)
{
    return i >= 0 && i < src->ntoks && src->toks[i].type == TK_NAME &&
           !in_list(src->toks[i].s, src->toks[i].len, keywords);
}

/* A string literal whose value the text shows as is. */
static bool tok_str(const source *src, int i)
{
    return i >= 0 && i < src->ntoks && src->toks[i].type == TK_STRING && src->toks[i].plain;
}

/* Token i (a name or a plain string) has the value s[0..len). */
static bool tok_eq(const source *src, int i, const char *s, size_t len)
{
    if (i < 0 || i >= src->ntoks)
        return false;
    const token *t = &src->toks[i];
    return (t->type == TK_NAME || (t->type == TK_STRING && t->plain)) && t->len == len &&
           memcmp(t->s, s, len) == 0;
}

/* arr (n elements of size bytes, room for *cap) with room for one more; NULL
** when memory runs out (arr is unchanged then). */
static void *grow(void *arr, int n, int *cap, size_t size)
{
    if (n < *cap)
        return arr;
    if (*cap > INT_MAX / 4)
        return NULL;
    int more = *cap ? *cap * 2 : 64;
    void *grown = realloc(arr, (size_t)more * size);
    if (grown)
        *cap = more;
    return grown;
}

static int push_token(source *src, tk_type type, int line, const char *s, size_t len, bool plain)
{
    token *toks = grow(src->toks, src->ntoks, &src->captoks, sizeof(*toks));
    if (!toks)
        return CM_ENOMEM;
    src->toks = toks;
    src->toks[src->ntoks++] = (token){type, line, s, len, plain, -1};
    return 0;
}

/* A quoted string at i: pushes it, returns the index after it. */
static size_t lex_quoted(source *src, size_t i, int *line, int *rc)
{
    const char *t = src->text;
    char quote = t[i];
    size_t j = i + 1;
    int first = *line;
    bool plain = true;
    while (j < src->len && t[j] != quote) {
        if (t[j] == '\\' && j + 1 < src->len) {
            plain = false;
            j++;
        }
        if (t[j] == '\n' || t[j] == '\r') { /* escaped, or after \z */
            j = cm_lscan_line_break(t, src->len, j);
            (*line)++;
        } else {
            j++;
        }
    }
    *rc = push_token(src, TK_STRING, first, t + i + 1, j - i - 1, plain);
    return j < src->len ? j + 1 : src->len;
}

/* A long string at i (level lvl): pushes it, returns the index after it. */
static size_t lex_long(source *src, size_t i, int lvl, int *line, int *rc)
{
    const char *t = src->text;
    size_t from = i + (size_t)lvl + 2, end;
    int first = *line;
    if (from < src->len && (t[from] == '\n' || t[from] == '\r')) { /* a first newline is dropped */
        from = cm_lscan_line_break(t, src->len, from);
        (*line)++;
    }
    end = cm_lscan_long_close(t, src->len, from, lvl, line);
    *rc = push_token(src, TK_STRING, first, t + from, end - from, true);
    return end < src->len ? end + (size_t)lvl + 2 : src->len;
}

static size_t lex_number(source *src, size_t i, int line, int *rc)
{
    const char *t = src->text;
    bool hex = i + 1 < src->len && t[i] == '0' && (t[i + 1] == 'x' || t[i + 1] == 'X');
    char e1 = hex ? 'p' : 'e', e2 = hex ? 'P' : 'E';
    size_t j = i;
    while (j < src->len && (name_char(t[j]) || t[j] == '.' ||
                            ((t[j] == '+' || t[j] == '-') && (t[j - 1] == e1 || t[j - 1] == e2))))
        j++;
    *rc = push_token(src, TK_NUMBER, line, t + i, j - i, false);
    return j;
}

static size_t lex_operator(source *src, size_t i, int line, int *rc)
{
    static const char *const ops[] = {"...", "==", "~=", "<=", ">=", "..",
                                      "::",  "//", "<<", ">>", NULL};
    const char *t = src->text;
    size_t n = 1;
    for (const char *const *op = ops; *op; op++) {
        size_t oplen = strlen(*op);
        if (i + oplen <= src->len && memcmp(t + i, *op, oplen) == 0) {
            n = oplen;
            break;
        }
    }
    *rc = push_token(src, TK_OP, line, t + i, n, false);
    return i + n;
}

/* The text from src->skip as tokens (line 1 is where the chunk starts, as for Lua). */
static int lex(source *src)
{
    const char *t = src->text;
    size_t i = src->skip;
    int line = 1, rc = 0, lvl;
    while (i < src->len && rc == 0) {
        char ch = t[i];
        if (ch == '\n' || ch == '\r') {
            i = cm_lscan_line_break(t, src->len, i);
            line++;
        } else if (ch == ' ' || ch == '\t' || ch == '\f' || ch == '\v') {
            i++;
        } else if (ch == '-' && i + 1 < src->len && t[i + 1] == '-') {
            i = cm_lscan_skip_comment(t, src->len, i + 2, &line);
        } else if (name_start(ch)) {
            size_t j = i;
            while (j < src->len && name_char(t[j]))
                j++;
            rc = push_token(src, TK_NAME, line, t + i, j - i, false);
            i = j;
        } else if ((ch >= '0' && ch <= '9') ||
                   (ch == '.' && i + 1 < src->len && t[i + 1] >= '0' && t[i + 1] <= '9')) {
            i = lex_number(src, i, line, &rc);
        } else if (ch == '"' || ch == '\'') {
            i = lex_quoted(src, i, &line, &rc);
        } else if (ch == '[' && (lvl = cm_lscan_long_level(t, src->len, i)) >= 0) {
            i = lex_long(src, i, lvl, &line, &rc);
        } else {
            i = lex_operator(src, i, line, &rc);
        }
    }
    return rc;
}

static int push_key(source *src, int tok, int value, int parent)
{
    tkey *keys = grow(src->keys, src->nkeys, &src->capkeys, sizeof(*keys));
    if (!keys)
        return CM_ENOMEM;
    src->keys = keys;
    src->keys[src->nkeys++] = (tkey){tok, value, parent};
    return 0;
}

/* If token i starts a named function definition, add it. */
static int index_function(source *src, int i)
{
    int name = -1, fn = -1;
    if (tok_is(src, i, "local") && tok_is(src, i + 1, "function") && tok_name(src, i + 2)) {
        name = i + 2; /* local function f( */
        fn = i + 1;
    } else if (tok_is(src, i, "function") && tok_name(src, i + 1) && tok_is(src, i + 2, "(") &&
               !tok_is(src, i - 1, "local")) {
        name = i + 1; /* function f( */
        fn = i;
    } else if (tok_is(src, i, "local") && tok_name(src, i + 1) && tok_is(src, i + 2, "=") &&
               tok_is(src, i + 3, "function")) {
        name = i + 1; /* local f = function( */
        fn = i + 3;
    }
    if (name < 0)
        return 0;
    fdef *defs = grow(src->defs, src->ndefs, &src->capdefs, sizeof(*defs));
    if (!defs)
        return CM_ENOMEM;
    src->defs = defs;
    src->defs[src->ndefs++] = (fdef){name, fn};
    return 0;
}

/* Does token i open a block that `end` (or `until`) closes? */
static bool opens_block(const source *src, int i)
{
    return tok_is(src, i, "function") || tok_is(src, i, "if") || tok_is(src, i, "do") ||
           tok_is(src, i, "repeat");
}

/* If token i starts a key of the constructor at open, add it. */
static int index_key(source *src, int i, int open)
{
    if (!tok_is(src, i - 1, "{") && !tok_is(src, i - 1, ",") && !tok_is(src, i - 1, ";"))
        return 0;
    if (tok_name(src, i) && tok_is(src, i + 1, "="))
        return push_key(src, i, i + 2, open);
    if (tok_is(src, i, "[") && tok_str(src, i + 1) && tok_is(src, i + 2, "]") &&
        tok_is(src, i + 3, "="))
        return push_key(src, i + 1, i + 4, open);
    return 0;
}

/* Match braces and blocks; list the keys written directly in constructors. */
static int index_source(source *src)
{
    int *stack = malloc(((size_t)src->ntoks + 1) * sizeof(*stack));
    int top = 0, rc = 0;
    if (!stack)
        return CM_ENOMEM;
    for (int i = 0; i < src->ntoks && rc == 0; i++) {
        bool brace_open = top > 0 && tok_is(src, stack[top - 1], "{");
        if ((rc = index_function(src, i)) != 0)
            break;
        if (tok_is(src, i, "{") || opens_block(src, i)) {
            stack[top++] = i;
        } else if (tok_is(src, i, "}") || tok_is(src, i, "end") || tok_is(src, i, "until")) {
            if (top > 0 && brace_open == tok_is(src, i, "}"))
                src->toks[stack[--top]].match = i;
        } else if (brace_open) {
            rc = index_key(src, i, stack[top - 1]);
        } else if (tok_is(src, i - 1, ".") && tok_name(src, i) && tok_is(src, i + 1, "=")) {
            rc = push_key(src, i, i + 2, KEY_ASSIGNED); /* states.name = { ... } */
        }
    }
    free(stack);
    return rc;
}

static void source_free(source *src)
{
    free(src->text);
    free(src->toks);
    free(src->keys);
    free(src->defs);
    memset(src, 0, sizeof(*src));
}

static int source_open(source *src, const char *path, cm_err *err)
{
    int rc;
    memset(src, 0, sizeof(*src));
    src->path = path;
    if ((rc = cm_fs_read(path, CHECK_MAX_FILE, &src->text, &src->len, err)) != 0)
        return rc;
    if (src->len >= 3 && memcmp(src->text, "\xEF\xBB\xBF", 3) == 0) /* as cm_sandbox_dofile */
        src->skip = 3;
    if (src->skip < src->len && src->text[src->skip] == '#') /* "#!" line; its newline kept */
        while (src->skip < src->len && src->text[src->skip] != '\n')
            src->skip++;
    if ((rc = lex(src)) != 0 || (rc = index_source(src)) != 0)
        return cm_err_set(err, rc, "%s: out of memory indexing the file", path);
    return 0;
}

/* The first key named name[0..len) in the constructor at open (or KEY_ANY). */
static int key_in(const source *src, int open, const char *name, size_t len)
{
    if (open == -1)
        return -1;
    for (int k = 0; k < src->nkeys; k++)
        if ((open == KEY_ANY || src->keys[k].parent == open) &&
            tok_eq(src, src->keys[k].tok, name, len))
            return k;
    return -1;
}

/* The '{' of key k's value when it is a table constructor, else -1. */
static int key_table(const source *src, int k)
{
    return k >= 0 && tok_is(src, src->keys[k].value, "{") ? src->keys[k].value : -1;
}

static int key_line(const source *src, int k, int fallback)
{
    return k >= 0 ? src->toks[src->keys[k].tok].line : fallback;
}

static int first_token_on(const source *src, int line)
{
    int lo = 0, hi = src->ntoks;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (src->toks[mid].line < line)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ---- the `caremesh` module in check mode ------------------------------- */

static int chk_workflow(lua_State *L)
{
    lua_settop(L, 1);
    if (lua_istable(L, 1)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &MADE_KEY);
        lua_pushvalue(L, 1);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    return 1; /* unchecked: check walks it and reports every problem */
}

static int chk_unavailable(lua_State *L)
{
    return luaL_error(L, "%s: records are not available while checking",
                      lua_tostring(L, lua_upvalueindex(1)));
}

static int chk_now(lua_State *L)
{
    return luaL_error(L, "cm.now: the clock is not available while checking");
}

static int open_check_module(lua_State *L)
{
    static const char *const funcs[] = {"create", "get", "update", "find", "list", "count", NULL};
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &MADE_KEY);
    lua_newtable(L);
    lua_pushstring(L, CM_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushliteral(L, "check");
    lua_setfield(L, -2, "node_id");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, chk_now);
    lua_setfield(L, -2, "now");
    lua_pushcfunction(L, chk_workflow);
    lua_setfield(L, -2, "workflow");
    for (int k = 0; k < CM_KIND__COUNT; k++) {
        const char *kind = cm_kind_name((cm_kind)k);
        lua_newtable(L);
        for (const char *const *f = funcs; *f; f++) {
            lua_pushfstring(L, "cm.%s.%s", kind, *f);
            lua_pushcclosure(L, chk_unavailable, 1);
            lua_setfield(L, -2, *f);
        }
        lua_pushstring(L, kind);
        lua_setfield(L, -2, "kind");
        cm_sandbox_push_readonly(L, -1, kind);
        /* stack: module, kindtable, view */
        lua_setfield(L, -3, kind);
        lua_pop(L, 1);
    }
    return 1;
}

/* ---- walking the definition (inside cm_sandbox_pcall) ------------------ */

typedef enum { OUT_REPORT, OUT_DOT, OUT_MERMAID } out_mode;
typedef enum { ROLE_ENTER, ROLE_EXIT, ROLE_ON, ROLE_GUARD } role;
/* How a transition is known: written as a name, a guarded name, a name a
** handler returns or goes to, or a wf:go in an enter/exit handler. */
typedef enum { EDGE_PLAIN, EDGE_GUARDED, EDGE_HANDLER, EDGE_GO } edge_kind;

typedef struct checker {
    const source *src;
    int def, problems, edges; /* stack slots: the definition, {line, text}, edge lists */
    int states;               /* stack slot of the states table, 0 when it has none */
    int def_brace;            /* the definition's '{' in the text, -1 */
    int states_brace;         /* its states' '{', -1 */
    int def_line, states_line;
} checker;

/* Where a transition or handler sits. Strings borrowed from the Lua stack. */
typedef struct site {
    const char *state, *event; /* event NULL for enter/exit */
    int state_idx;             /* stack slot of the state's name */
    int state_line, state_brace, event_line, event_brace;
    int event_key; /* the event's key in the text, -1 */
    role role;
} site;

static const char *const def_fields[] = {"name",  "version", "description", "purpose", "input",
                                         "start", "states",  "started_by",  NULL};
static const char *const state_fields[] = {"enter", "exit", "on", "final", "description", NULL};
static const char *const option_fields[] = {"to", "guard", NULL};
static const char *const effects[] = {"go",    "after", "at",   "cancel", "task", "notify",
                                      "spawn", "kpi",   "send", "now",    NULL};
static const char *const task_fields[] = {"title", "description", "organization", "patient",
                                          "owner", "role",        "priority",     "due",
                                          "note",  NULL};
static const char *const notify_fields[] = {"channel", "to", "message", "data", NULL};

static void problem(lua_State *L, const checker *c, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Add {line, message} to the problems. Control characters become spaces. */
static void problem(lua_State *L, const checker *c, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, line);
    lua_rawseti(L, -2, 1);
    lua_pushstring(L, msg);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, c->problems, (lua_Integer)lua_rawlen(L, c->problems) + 1);
}

/* "a, b, c" into buf. */
static const char *join(const char *const *names, char *buf, size_t size)
{
    size_t at = 0;
    buf[0] = '\0';
    for (; *names && at < size; names++) {
        int n = snprintf(buf + at, size - at, "%s%s", at ? ", " : "", *names);
        if (n < 0)
            break;
        at += (size_t)n;
    }
    return buf;
}

/* Push t[k] without metamethods; returns its type. */
static int rawfield(lua_State *L, int t, const char *k)
{
    lua_pushstring(L, k);
    return lua_rawget(L, t);
}

/* Is the string at idx a state of the definition? */
static bool state_exists(lua_State *L, const checker *c, int idx)
{
    if (!c->states)
        return false;
    lua_pushvalue(L, idx);
    bool ok = lua_rawget(L, c->states) == LUA_TTABLE;
    lua_pop(L, 1);
    return ok;
}

static int def_key_line(const checker *c, const char *name)
{
    return key_line(c->src, key_in(c->src, c->def_brace, name, strlen(name)), c->def_line);
}

/* Report keys of the table at t that are not in allowed. brace: its '{' in the text. */
static void check_fields(lua_State *L, const checker *c, int t, const char *const *allowed,
                         int brace, int line, const char *where)
{
    char use[256];
    lua_pushnil(L);
    while (lua_next(L, t)) {
        size_t len = 0;
        const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
        if (!key || !in_list(key, len, allowed))
            problem(L, c, key ? key_line(c->src, key_in(c->src, brace, key, len), line) : line,
                    "%s%s%s: unknown field (use %s)", where, *where ? "." : "",
                    key ? key : "(a non-name key)", join(allowed, use, sizeof(use)));
        lua_pop(L, 1);
    }
}

static void site_where(const site *s, char *buf, size_t size)
{
    if (s->role == ROLE_ENTER || s->role == ROLE_EXIT)
        snprintf(buf, size, "states.%s.%s", s->state, s->role == ROLE_ENTER ? "enter" : "exit");
    else
        snprintf(buf, size, "states.%s.on[\"%s\"]", s->state, s->event);
}

/* Add the edge s -> the state at idx to the edges: {from line, from, event line,
** label, to, kind}. */
static void add_edge(lua_State *L, const checker *c, const site *s, int idx, edge_kind kind)
{
    const char *label = s->role == ROLE_ENTER  ? "(enter)"
                        : s->role == ROLE_EXIT ? "(exit)"
                                               : s->event;
    bool in_enter_exit = s->role == ROLE_ENTER || s->role == ROLE_EXIT;
    int ev_line = in_enter_exit ? s->state_line : s->event_line;
    idx = lua_absindex(L, idx);
    lua_createtable(L, 6, 0);
    lua_pushinteger(L, s->state_line);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, s->state_idx);
    lua_rawseti(L, -2, 2);
    lua_pushinteger(L, ev_line);
    lua_rawseti(L, -2, 3);
    lua_pushstring(L, label);
    lua_rawseti(L, -2, 4);
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, 5);
    lua_pushinteger(L, in_enter_exit && kind == EDGE_HANDLER ? EDGE_GO : kind);
    lua_rawseti(L, -2, 6);
    lua_rawseti(L, c->edges, (lua_Integer)lua_rawlen(L, c->edges) + 1);
}

/* A state name in the text (token tok) that a handler returns or goes to. */
static void literal_target(lua_State *L, const checker *c, const site *s, int tok, const char *how)
{
    const token *t = &c->src->toks[tok];
    char where[256];
    luaL_checkstack(L, 10, NULL);
    lua_pushlstring(L, t->s, t->len);
    if (state_exists(L, c, -1)) {
        add_edge(L, c, s, -1, EDGE_HANDLER);
    } else {
        site_where(s, where, sizeof(where));
        problem(L, c, t->line, "%s to unknown state \"%s\" (in %s)", how, lua_tostring(L, -1),
                where);
    }
    lua_pop(L, 1);
}

/* Does a literal end at token j (so it is the whole value)? */
static bool literal_ends(const source *src, int j, int line)
{
    static const char *const enders[] = {"end", "else", "elseif", "until", "and",
                                         "or",  ",",    ";",      NULL};
    if (j >= src->ntoks || src->toks[j].line != line)
        return true;
    return src->toks[j].type != TK_STRING && in_list(src->toks[j].s, src->toks[j].len, enders);
}

/* One function body being scanned for a handler: the handler's site, the
** instance's name in this body ("" when unknown), whether its returns are the
** transition's target, how many helper calls deep it is, and how many more
** helper bodies this handler may scan. */
typedef struct scan {
    const site *s;
    const char *wf;
    bool returns;
    int hops;
    int *calls_left;
} scan;

static void scan_body(lua_State *L, const checker *c, const scan *sc, int first, int last);

/* The function of this file named like the call at token i, or -1. */
static int find_function(const source *src, int i)
{
    for (int d = 0; d < src->ndefs; d++)
        if (src->toks[src->defs[d].name].len == src->toks[i].len &&
            memcmp(src->toks[src->defs[d].name].s, src->toks[i].s, src->toks[i].len) == 0)
            return src->defs[d].fn;
    return -1;
}

/* A call `f(` at token i of a function f of this file: followed when it is
** the value of a return (f's returns are then the handler's) or when it
** passes the instance as first argument (for f's effects and wf:go). */
static void scan_call(lua_State *L, const checker *c, const scan *sc, int i, bool returned)
{
    const source *src = c->src;
    char param[64] = "";
    if (sc->hops >= CHECK_MAX_HOPS || *sc->calls_left <= 0 || !tok_name(src, i) ||
        !tok_is(src, i + 1, "(") || tok_is(src, i - 1, ".") || tok_is(src, i - 1, ":") ||
        tok_is(src, i - 1, "function"))
        return;
    bool passes_wf = *sc->wf && tok_eq(src, i + 2, sc->wf, strlen(sc->wf)) &&
                     (tok_is(src, i + 3, ",") || tok_is(src, i + 3, ")"));
    int f = returned || passes_wf ? find_function(src, i) : -1;
    if (f < 0 || src->toks[f].match <= f)
        return;
    int open = f + 1;
    while (open < src->toks[f].match && !tok_is(src, open, "("))
        open++;
    if (passes_wf && tok_name(src, open + 1) && src->toks[open + 1].len < sizeof(param))
        snprintf(param, sizeof(param), "%.*s", (int)src->toks[open + 1].len, src->toks[open + 1].s);
    scan next = {sc->s, param, returned, sc->hops + 1, sc->calls_left};
    --*sc->calls_left;
    scan_body(L, c, &next, f, src->toks[f].match);
}

/* `return "x"` (and `and "x"` / `or "x"` after it on its line; or a call of a
** function of this file there) at token i. */
static void scan_return(lua_State *L, const checker *c, const scan *sc, int i, int last)
{
    const source *src = c->src;
    int line = src->toks[i].line;
    for (int j = i + 1; j <= last && src->toks[j].line == line; j++) {
        if (tok_is(src, j, "end") || tok_is(src, j, "else") || tok_is(src, j, "elseif") ||
            tok_is(src, j, "return"))
            break;
        if (j != i + 1 && !tok_is(src, j - 1, "and") && !tok_is(src, j - 1, "or"))
            continue;
        if (tok_str(src, j) && literal_ends(src, j + 1, line))
            literal_target(L, c, sc->s, j, "transition");
        else
            scan_call(L, c, sc, j, true);
    }
}

/* The literal at tok as a C string in buf; false when it does not fit. */
static bool literal_text(const source *src, int tok, char *buf, size_t size)
{
    const token *t = &src->toks[tok];
    if (t->len >= size || memchr(t->s, '\0', t->len))
        return false;
    memcpy(buf, t->s, t->len);
    buf[t->len] = '\0';
    return true;
}

/* The literal first argument of wf:after / wf:at at token tok. */
static void check_when(lua_State *L, const checker *c, const char *wf, bool at, int tok)
{
    const token *t = &c->src->toks[tok];
    char v[128];
    bool text = literal_text(c->src, tok, v, sizeof(v));
    int shown = t->len > 60 ? 60 : (int)t->len;
    if (at && !(text && cm_time_parse(v, NULL)))
        problem(L, c, t->line,
                "%s:at(\"%.*s\"): bad time (use an ISO-8601 date or date-time with a zone)", wf,
                shown, t->s);
    else if (!at && text && !cm_duration_parse(v, NULL) && cm_time_parse(v, NULL))
        problem(L, c, t->line, "%s:after(\"%.*s\"): a time, not a duration (use %s:at)", wf, shown,
                t->s, wf);
    else if (!at && !(text && cm_duration_parse(v, NULL)))
        problem(L, c, t->line,
                "%s:after(\"%.*s\"): bad duration (use e.g. \"30m\", \"72h\", \"21d\", "
                "\"1d12h\")",
                wf, shown, t->s);
}

/* The literal fields of wf:task{...} / wf:notify{...} whose '{' is token open. */
static void check_call_fields(lua_State *L, const checker *c, const char *wf, int method, int open)
{
    const source *src = c->src;
    const token *m = &src->toks[method];
    bool task = tok_is(src, method, "task");
    const char *const *allowed = task ? task_fields : notify_fields;
    char use[256], v[128];
    for (int k = 0; k < src->nkeys; k++) {
        const tkey *key = &src->keys[k];
        const token *kt = &src->toks[key->tok];
        if (key->parent != open)
            continue;
        if (!in_list(kt->s, kt->len, allowed)) {
            problem(L, c, kt->line, "%s:%.*s{%.*s = ...}: unknown field (use %s)", wf, (int)m->len,
                    m->s, kt->len > 60 ? 60 : (int)kt->len, kt->s, join(allowed, use, sizeof(use)));
        } else if (task && tok_eq(src, key->tok, "due", 3) && tok_str(src, key->value) &&
                   (tok_is(src, key->value + 1, ",") || tok_is(src, key->value + 1, ";") ||
                    tok_is(src, key->value + 1, "}"))) {
            const token *vt = &src->toks[key->value];
            bool text = literal_text(src, key->value, v, sizeof(v));
            if (!(text && (cm_duration_parse(v, NULL) || cm_time_parse(v, NULL))))
                problem(L, c, vt->line,
                        "%s:task{due = \"%.*s\"}: neither a duration (\"1d\", \"72h\") nor an "
                        "ISO-8601 date or date-time",
                        wf, vt->len > 60 ? 60 : (int)vt->len, vt->s);
        }
    }
}

/* A method call `r:m(` / `r:m{` / `r:m"` at the ':' token i. wf: the handler's
** first parameter ("" when none). */
static void scan_method(lua_State *L, const checker *c, const scan *sc, int i)
{
    const source *src = c->src;
    const char *wf = sc->wf;
    int r = i - 1, m = i + 1, a = i + 2;
    char use[256];
    if (!tok_name(src, r) || !tok_name(src, m) ||
        !(tok_is(src, a, "(") || tok_is(src, a, "{") ||
          (a < src->ntoks && src->toks[a].type == TK_STRING)))
        return;
    if (tok_is(src, m, "go")) { /* any receiver: a literal state name is telling enough */
        int lit = tok_is(src, a, "(") ? a + 1 : a;
        if (tok_str(src, lit) && (lit == a || tok_is(src, lit + 1, ")"))) {
            char how[80];
            snprintf(how, sizeof(how), "%.*s:go",
                     src->toks[r].len > 60 ? 60 : (int)src->toks[r].len, src->toks[r].s);
            literal_target(L, c, sc->s, lit, how);
        }
    }
    if (!*wf || !tok_eq(src, r, wf, strlen(wf)))
        return;
    if (!in_list(src->toks[m].s, src->toks[m].len, effects)) {
        problem(L, c, src->toks[m].line, "unknown effect %s:%.*s (use %s)", wf,
                src->toks[m].len > 60 ? 60 : (int)src->toks[m].len, src->toks[m].s,
                join(effects, use, sizeof(use)));
    } else if ((tok_is(src, m, "after") || tok_is(src, m, "at")) && tok_is(src, a, "(") &&
               a + 1 < src->ntoks && src->toks[a + 1].type == TK_STRING &&
               (tok_is(src, a + 2, ",") || tok_is(src, a + 2, ")"))) {
        if (src->toks[a + 1].plain)
            check_when(L, c, wf, tok_is(src, m, "at"), a + 1);
    } else if (tok_is(src, m, "task") || tok_is(src, m, "notify")) {
        int open = tok_is(src, a, "{")                              ? a
                   : tok_is(src, a + 1, "{") && tok_is(src, a, "(") ? a + 1
                                                                    : -1;
        if (open >= 0)
            check_call_fields(L, c, wf, m, open);
    }
}

/* The tokens first..last of one function (`function` ... `end`). */
static void scan_body(lua_State *L, const checker *c, const scan *sc, int first, int last)
{
    const source *src = c->src;
    int ends[CHECK_MAX_NEST], depth = 0;
    for (int i = first; i <= last; i++) {
        while (depth > 0 && ends[depth - 1] < i)
            depth--;
        if (tok_is(src, i, "function") && src->toks[i].match > i && depth < CHECK_MAX_NEST)
            ends[depth++] = src->toks[i].match;
        else if (tok_is(src, i, "return") && depth == 1 && sc->returns)
            scan_return(L, c, sc, i, last);
        else if (tok_is(src, i, ":") && depth >= 1)
            scan_method(L, c, sc, i);
        else if (depth >= 1)
            scan_call(L, c, sc, i, false);
    }
}

/* Does the function whose `function` token is f span lines first..last? */
static bool function_spans(const source *src, int f, int first, int last)
{
    return tok_is(src, f, "function") && src->toks[f].line == first && src->toks[f].match > f &&
           src->toks[src->toks[f].match].line == last;
}

/* Scan the handler at fidx. hint: the key in the text whose value it is (-1
** if unknown); without it, every function of this file that starts on the
** handler's first line and ends on its last is taken (one-line neighbours
** are taken together). */
static void scan_handler(lua_State *L, const checker *c, const site *s, int fidx, int hint)
{
    const source *src = c->src;
    lua_Debug ar;
    char wf[64] = "";
    luaL_checkstack(L, 4, NULL);
    lua_pushvalue(L, fidx);
    if (!lua_getinfo(L, ">S", &ar) || strcmp(ar.what, "Lua") != 0 || ar.source[0] != '@' ||
        strcmp(ar.source + 1, src->path) != 0 || ar.linedefined <= 0)
        return;
    lua_pushvalue(L, fidx);
    const char *param = lua_getlocal(L, NULL, 1); /* parameters only; pushes nothing */
    if (param)
        snprintf(wf, sizeof(wf), "%s", param);
    lua_pop(L, 1);
    int calls_left = CHECK_MAX_CALLS;
    scan sc = {s, wf, s->role == ROLE_ON, 0, &calls_left};
    if (hint >= 0 &&
        function_spans(src, src->keys[hint].value, ar.linedefined, ar.lastlinedefined)) {
        scan_body(L, c, &sc, src->keys[hint].value, src->toks[src->keys[hint].value].match);
        return;
    }
    for (int i = first_token_on(src, ar.linedefined);
         i < src->ntoks && src->toks[i].line == ar.linedefined; i++) {
        if (function_spans(src, i, ar.linedefined, ar.lastlinedefined)) {
            scan_body(L, c, &sc, i, src->toks[i].match);
            i = src->toks[i].match;
        }
    }
}

/* A static target: the string at idx. */
static void static_target(lua_State *L, const checker *c, const site *s, int idx, edge_kind kind,
                          int line, const char *where)
{
    if (state_exists(L, c, idx))
        add_edge(L, c, s, idx, kind);
    else
        problem(L, c, line, "%s: transition to unknown state \"%s\"", where, lua_tostring(L, idx));
}

/* {to = ..., guard = ...} at t; brace: its '{' in the text or -1. */
static void check_option_table(lua_State *L, const checker *c, site *s, int t, int brace,
                               const char *where)
{
    char sub[300];
    int line;
    luaL_checkstack(L, 10, NULL);
    check_fields(L, c, t, option_fields, brace, s->event_line, where);
    int g = rawfield(L, t, "guard");
    line = key_line(c->src, key_in(c->src, brace, "guard", 5), s->event_line);
    s->role = ROLE_GUARD;
    if (g == LUA_TFUNCTION)
        scan_handler(L, c, s, lua_gettop(L), key_in(c->src, brace, "guard", 5));
    else if (g != LUA_TNIL)
        problem(L, c, line, "%s.guard: must be a function", where);
    s->role = ROLE_ON;
    int to = rawfield(L, t, "to");
    line = key_line(c->src, key_in(c->src, brace, "to", 2), s->event_line);
    snprintf(sub, sizeof(sub), "%s.to", where);
    if (to == LUA_TSTRING)
        static_target(L, c, s, -1, g == LUA_TFUNCTION ? EDGE_GUARDED : EDGE_PLAIN, line, sub);
    else if (to == LUA_TFUNCTION)
        scan_handler(L, c, s, lua_gettop(L), key_in(c->src, brace, "to", 2));
    else
        problem(L, c, line, "%s: must be a state name or a function", sub);
    lua_pop(L, 2);
}

/* One transition (string, function, {to=, guard=}) at idx. */
static void check_option(lua_State *L, const checker *c, site *s, int idx, int brace)
{
    char where[256];
    idx = lua_absindex(L, idx);
    snprintf(where, sizeof(where), "states.%s.on[\"%s\"]", s->state, s->event);
    s->role = ROLE_ON;
    if (lua_type(L, idx) == LUA_TSTRING)
        static_target(L, c, s, idx, EDGE_PLAIN, s->event_line, where);
    else if (lua_type(L, idx) == LUA_TFUNCTION)
        scan_handler(L, c, s, idx, brace == s->event_brace ? s->event_key : -1);
    else if (lua_type(L, idx) == LUA_TTABLE)
        check_option_table(L, c, s, idx, brace, where);
    else
        problem(L, c, s->event_line, "%s: must be a state name, a function or {to=, guard=}",
                where);
}

static void check_on(lua_State *L, const checker *c, site *s, int on, int on_brace, int on_line)
{
    luaL_checkstack(L, 8, NULL);
    lua_pushnil(L);
    while (lua_next(L, on)) {
        size_t len;
        if (lua_type(L, -2) != LUA_TSTRING) {
            problem(L, c, on_line, "states.%s.on: event names must be strings (found a %s)",
                    s->state, luaL_typename(L, -2));
            lua_pop(L, 1);
            continue;
        }
        s->event = lua_tolstring(L, -2, &len);
        int k = key_in(c->src, on_brace, s->event, len);
        s->event_key = k;
        s->event_line = key_line(c->src, k, on_line);
        s->event_brace = key_table(c->src, k);
        int v = lua_gettop(L);
        if (lua_type(L, v) == LUA_TTABLE && lua_rawlen(L, v) > 0) {
            for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, v); i++) {
                lua_rawgeti(L, v, i);
                check_option(L, c, s, -1, -1);
                lua_pop(L, 1);
            }
        } else {
            check_option(L, c, s, v, s->event_brace);
        }
        lua_pop(L, 1);
    }
}

/* The key of state name in the text: in the states constructor, else (states
** built outside it) the first table-valued key of that name; -1. */
static int state_key(const checker *c, const char *name, size_t len)
{
    const source *src = c->src;
    int k = key_in(src, c->states_brace, name, len);
    for (int j = 0; j < src->nkeys && k < 0; j++)
        if (tok_eq(src, src->keys[j].tok, name, len) && key_table(src, j) >= 0)
            k = j;
    return k;
}

/* The state at st, named by the string at key. Returns whether it is final. */
static bool check_state(lua_State *L, const checker *c, int key, int st)
{
    static const char *const handlers[] = {"enter", "exit"};
    const source *src = c->src;
    char where[200];
    size_t len;
    site s = {0};
    s.event_key = -1;
    luaL_checkstack(L, 8, NULL);
    s.state = lua_tolstring(L, key, &len);
    s.state_idx = key;
    int k = state_key(c, s.state, len);
    s.state_line = key_line(src, k, c->states_line);
    s.state_brace = key_table(src, k);
    snprintf(where, sizeof(where), "states.%s", s.state);
    check_fields(L, c, st, state_fields, s.state_brace, s.state_line, where);
    for (int i = 0; i < 2; i++) {
        int t = rawfield(L, st, handlers[i]);
        s.role = i ? ROLE_EXIT : ROLE_ENTER;
        int hk = key_in(src, s.state_brace, handlers[i], strlen(handlers[i]));
        if (t == LUA_TFUNCTION)
            scan_handler(L, c, &s, lua_gettop(L), hk);
        else if (t != LUA_TNIL)
            problem(L, c, key_line(src, hk, s.state_line), "%s.%s: must be a function", where,
                    handlers[i]);
        lua_pop(L, 1);
    }
    if (rawfield(L, st, "description") != LUA_TNIL && !lua_isstring(L, -1))
        problem(L, c, s.state_line, "%s.description: must be a string", where);
    bool final = rawfield(L, st, "final") != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 2);
    int on = rawfield(L, st, "on");
    int kon = key_in(src, s.state_brace, "on", 2);
    int on_line = key_line(src, kon, s.state_line);
    if (on != LUA_TNIL && on != LUA_TTABLE)
        problem(L, c, on_line, "%s.on: must be a table of event = transition", where);
    if (final && on == LUA_TTABLE)
        problem(L, c, on_line, "%s: a final state takes no events (remove 'on')", where);
    if (on == LUA_TTABLE)
        check_on(L, c, &s, lua_gettop(L), key_table(src, kon), on_line);
    lua_pop(L, 1);
    return final;
}

static int check_states(lua_State *L, const checker *c)
{
    int finals = 0;
    lua_pushnil(L);
    while (lua_next(L, c->states)) {
        int key = lua_gettop(L) - 1;
        if (lua_type(L, key) != LUA_TSTRING)
            problem(L, c, c->states_line,
                    "states: each entry must be name = { ... } (found a %s key)",
                    luaL_typename(L, key));
        else if (lua_type(L, -1) != LUA_TTABLE)
            problem(L, c, c->states_line, "states.%s: must be a table { ... }",
                    lua_tostring(L, key));
        else
            finals += check_state(L, c, key, key + 1);
        lua_pop(L, 1);
    }
    return finals;
}

/* Push the set of states reachable from the start name at start. */
static void push_reached(lua_State *L, const checker *c, int start)
{
    lua_Integer head = 1, tail = 1, n = (lua_Integer)lua_rawlen(L, c->edges);
    luaL_checkstack(L, 10, NULL);
    lua_newtable(L); /* reached: name -> true */
    int reached = lua_gettop(L);
    lua_newtable(L); /* queue of names */
    int queue = lua_gettop(L);
    lua_pushvalue(L, start);
    lua_pushboolean(L, 1);
    lua_rawset(L, reached);
    lua_pushvalue(L, start);
    lua_rawseti(L, queue, 1);
    while (head <= tail) {
        lua_rawgeti(L, queue, head++); /* stack: ..., cur */
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, c->edges, i);
            lua_rawgeti(L, -1, 2);
            lua_rawgeti(L, -2, 5); /* stack: ..., cur, edge, from, to */
            if (lua_rawequal(L, -2, -4)) {
                lua_pushvalue(L, -1);
                if (lua_rawget(L, reached) == LUA_TNIL) {
                    lua_pushvalue(L, -2);
                    lua_pushboolean(L, 1);
                    lua_rawset(L, reached);
                    lua_pushvalue(L, -2);
                    lua_rawseti(L, queue, ++tail);
                }
                lua_pop(L, 1);
            }
            lua_pop(L, 3);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1); /* the queue */
}

/* States not reachable from the start name at start (a state). */
static void check_reachable(lua_State *L, const checker *c, int start)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, c->edges);
    push_reached(L, c, start);
    int reached = lua_gettop(L);
    lua_newtable(L); /* named: states some edge leads to */
    int named = lua_gettop(L);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, c->edges, i);
        lua_rawgeti(L, -1, 5);
        lua_pushboolean(L, 1);
        lua_rawset(L, named);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, c->states)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !state_exists(L, c, -1))
            continue;
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        lua_pushvalue(L, -1);
        bool is_reached = lua_rawget(L, reached) != LUA_TNIL;
        lua_pushvalue(L, -2);
        bool is_named = lua_rawget(L, named) != LUA_TNIL;
        lua_pop(L, 2);
        if (!is_reached)
            problem(L, c, key_line(c->src, state_key(c, name, len), c->states_line),
                    "state \"%s\" is unreachable from \"%s\" (%s)", name, lua_tostring(L, start),
                    is_named ? "only unreachable states lead to it"
                             : "no transition names it; names a handler computes are not seen");
    }
    lua_pop(L, 2);
}

static void check_input(lua_State *L, const checker *c)
{
    int it = rawfield(L, c->def, "input");
    int k = key_in(c->src, c->def_brace, "input", 5);
    int line = key_line(c->src, k, c->def_line), brace = key_table(c->src, k);
    if (it != LUA_TNIL && it != LUA_TTABLE)
        problem(L, c, line, "input: must be a table of field = type");
    if (it == LUA_TTABLE) {
        int input = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, input)) {
            size_t klen = 0, tlen = 0;
            const char *field = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
            const char *type = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &tlen) : NULL;
            int fline = field ? key_line(c->src, key_in(c->src, brace, field, klen), line) : line;
            if (!field)
                problem(L, c, line, "input: field names must be strings (found a %s)",
                        luaL_typename(L, -2));
            else if (!type)
                problem(L, c, fline,
                        "input.%s: must be a type name such as \"string\" or "
                        "\"patient?\"",
                        field);
            else if (!cm_workflow_input_type_known(type, tlen))
                problem(L, c, fline,
                        "input.%s: unknown type \"%s\" (use string, number, integer, boolean, "
                        "table, date, datetime or a record kind such as patient; ? when optional)",
                        field, type);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static void check_head(lua_State *L, const checker *c)
{
    if (rawfield(L, c->def, "name") != LUA_TSTRING || cm_id_check(lua_tostring(L, -1)) != 0)
        problem(L, c, def_key_line(c, "name"),
                "name: required, letters, digits, . _ : - (at most %d)", CM_ID_MAX);
    if (rawfield(L, c->def, "version") != LUA_TNUMBER || !lua_isinteger(L, -1) ||
        lua_tointeger(L, -1) < 1)
        problem(L, c, def_key_line(c, "version"), "version: required, a whole number from 1");
    int d = rawfield(L, c->def, "description");
    if (d != LUA_TNIL && d != LUA_TSTRING)
        problem(L, c, def_key_line(c, "description"), "description: must be a string");
    int p = rawfield(L, c->def, "purpose");
    if (p != LUA_TNIL && (p != LUA_TSTRING || !cm_workflow_purpose(lua_tostring(L, -1)))) {
        char rule[256];
        problem(L, c, def_key_line(c, "purpose"), "%s",
                cm_workflow_purpose_rule(rule, sizeof(rule)));
    }
    lua_pop(L, 4);
    check_input(L, c);
}

/* Everything about the definition at c->def; problems and edges filled. */
static void check_definition(lua_State *L, checker *c)
{
    luaL_checkstack(L, 10, NULL);
    if (!lua_istable(L, c->def)) {
        problem(L, c, 0, "the file must return cm.workflow { ... } (it returned %s%s)",
                lua_isnil(L, c->def) ? "" : "a ", luaL_typename(L, c->def));
        return;
    }
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &MADE_KEY) != LUA_TTABLE) /* never required */
        lua_newtable(L);
    lua_pushvalue(L, c->def);
    if (lua_rawget(L, -2) == LUA_TNIL)
        problem(L, c, c->def_line,
                "the file must return cm.workflow { ... } (it returned a plain table)");
    lua_pop(L, 2);
    check_fields(L, c, c->def, def_fields, c->def_brace, c->def_line, "");
    check_head(L, c);
    if (rawfield(L, c->def, "states") == LUA_TTABLE)
        c->states = lua_gettop(L);
    else
        problem(L, c, c->states_line, "states: required, a table of name = { ... }");
    int start = rawfield(L, c->def, "start") == LUA_TSTRING ? lua_gettop(L) : 0;
    if (!start)
        problem(L, c, def_key_line(c, "start"), "start: required, the name of the first state");
    else if (c->states && !state_exists(L, c, start))
        problem(L, c, def_key_line(c, "start"), "start: unknown state \"%s\"",
                lua_tostring(L, start));
    if (!c->states)
        return;
    if (check_states(L, c) == 0)
        problem(L, c, c->states_line, "states: no final state (mark one final = true)");
    if (start && state_exists(L, c, start))
        check_reachable(L, c, start);
}

/* ---- rendering --------------------------------------------------------- */

/* Order of list entries {a1, a2, ...}: field by field, numbers before strings. */
static int entry_cmp(lua_State *L, int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    for (lua_Integer i = 1;; i++) {
        int ta = lua_rawgeti(L, a, i), tb = lua_rawgeti(L, b, i), r = 0;
        if (ta != tb) {
            r = ta == LUA_TNIL ? -1 : tb == LUA_TNIL ? 1 : ta == LUA_TNUMBER ? -1 : 1;
        } else if (ta == LUA_TNUMBER) {
            lua_Integer x = lua_tointeger(L, -2), y = lua_tointeger(L, -1);
            r = (x > y) - (x < y);
        } else if (ta == LUA_TSTRING) {
            size_t lx, ly;
            const char *x = lua_tolstring(L, -2, &lx), *y = lua_tolstring(L, -1, &ly);
            int m = memcmp(x, y, lx < ly ? lx : ly);
            r = m ? (m > 0) - (m < 0) : (lx > ly) - (lx < ly);
        }
        lua_pop(L, 2);
        if (r != 0 || ta == LUA_TNIL)
            return r;
    }
}

static int entry_less(lua_State *L)
{
    lua_pushboolean(L, entry_cmp(L, 1, 2) < 0);
    return 1;
}

/* Sort the list at idx with the stock table.sort. */
static void sort_list(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, LUA_TABLIBNAME);
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, idx);
    lua_pushcfunction(L, entry_less);
    lua_call(L, 2, 0);
    lua_pop(L, 2);
}

/* Is entry i of the list at idx the same as entry i - 1? */
static bool repeats(lua_State *L, int idx, lua_Integer i)
{
    if (i < 2)
        return false;
    lua_rawgeti(L, idx, i - 1);
    lua_rawgeti(L, idx, i);
    bool same = entry_cmp(L, -2, -1) == 0;
    lua_pop(L, 2);
    return same;
}

/* Push the report; returns the number of problems (duplicates dropped). */
static lua_Integer render_report(lua_State *L, const checker *c)
{
    lua_Integer n = 0, len = (lua_Integer)lua_rawlen(L, c->problems);
    luaL_Buffer b;
    luaL_checkstack(L, 10, NULL);
    sort_list(L, c->problems);
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1; i <= len; i++) {
        char num[32];
        size_t tlen;
        if (repeats(L, c->problems, i))
            continue;
        lua_rawgeti(L, c->problems, i);
        lua_rawgeti(L, -1, 1);
        snprintf(num, sizeof(num), ":%lld: ", (long long)lua_tointeger(L, -1));
        lua_rawgeti(L, -2, 2);
        const char *text = lua_tolstring(L, -1, &tlen); /* anchored by the problems list */
        lua_pop(L, 3);
        luaL_addstring(&b, c->src->path);
        luaL_addstring(&b, num);
        luaL_addlstring(&b, text, tlen);
        luaL_addchar(&b, '\n');
        n++;
    }
    luaL_pushresult(&b);
    return n;
}

/* Push the states as a sorted list of {line, name, final}. */
static void push_state_list(lua_State *L, const checker *c)
{
    luaL_checkstack(L, 10, NULL);
    lua_newtable(L);
    int list = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, c->states)) {
        size_t len;
        int st = lua_gettop(L);
        const char *name = lua_tolstring(L, st - 1, &len); /* check passed: all names */
        lua_createtable(L, 3, 0);
        lua_pushinteger(L, key_line(c->src, state_key(c, name, len), 0));
        lua_rawseti(L, -2, 1);
        lua_pushvalue(L, st - 1);
        lua_rawseti(L, -2, 2);
        bool final = rawfield(L, st, "final") != LUA_TNIL && lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_pushboolean(L, final);
        lua_rawseti(L, -2, 3);
        lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
        lua_pop(L, 1);
    }
    sort_list(L, list);
}

/* Field f of entry i of the list at idx: a string anchored by the list. */
static const char *entry_str(lua_State *L, int idx, lua_Integer i, int f, size_t *len)
{
    lua_rawgeti(L, idx, i);
    lua_rawgeti(L, -1, f);
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 2);
    return s;
}

static lua_Integer entry_int(lua_State *L, int idx, lua_Integer i, int f)
{
    lua_rawgeti(L, idx, i);
    lua_rawgeti(L, -1, f);
    lua_Integer v = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : lua_tointeger(L, -1);
    lua_pop(L, 2);
    return v;
}

/* Add s (and suffix) as one DOT quoted string. */
static void add_dot_string(luaL_Buffer *b, const char *s, size_t len, const char *suffix)
{
    luaL_addchar(b, '"');
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\')
            luaL_addchar(b, '\\');
        luaL_addchar(b, (unsigned char)s[i] < 0x20 ? ' ' : s[i]);
    }
    luaL_addstring(b, suffix);
    luaL_addchar(b, '"');
}

static void render_dot(lua_State *L, const checker *c, int slist, const char *start)
{
    lua_Integer ns = (lua_Integer)lua_rawlen(L, slist), ne = (lua_Integer)lua_rawlen(L, c->edges);
    char origin[80] = "_start";
    size_t len, olen;
    luaL_Buffer b;
    luaL_checkstack(L, 10, NULL);
    lua_pushstring(L, origin); /* a node name no state has */
    while (state_exists(L, c, -1) && strlen(origin) + 1 < sizeof(origin)) {
        memmove(origin + 1, origin, strlen(origin) + 1);
        origin[0] = '_';
        lua_pop(L, 1);
        lua_pushstring(L, origin);
    }
    lua_pop(L, 1);
    olen = strlen(origin);
    rawfield(L, c->def, "name");
    const char *name = lua_tolstring(L, -1, &len);
    luaL_buffinit(L, &b); /* the name stays below the buffer */
    luaL_addstring(&b, "digraph ");
    add_dot_string(&b, name, len, "");
    luaL_addstring(&b, " {\n    rankdir=LR;\n    node [shape=ellipse];\n    ");
    add_dot_string(&b, origin, olen, "");
    luaL_addstring(&b, " [shape=point, label=\"\"];\n    ");
    add_dot_string(&b, origin, olen, "");
    luaL_addstring(&b, " -> ");
    add_dot_string(&b, start, strlen(start), "");
    luaL_addstring(&b, ";\n");
    for (lua_Integer i = 1; i <= ns; i++) {
        const char *s = entry_str(L, slist, i, 2, &len);
        luaL_addstring(&b, "    ");
        add_dot_string(&b, s, len, "");
        luaL_addstring(&b, entry_int(L, slist, i, 3) ? " [shape=doublecircle];\n" : ";\n");
    }
    for (lua_Integer i = 1; i <= ne; i++) {
        if (repeats(L, c->edges, i))
            continue;
        lua_Integer kind = entry_int(L, c->edges, i, 6);
        const char *s = entry_str(L, c->edges, i, 2, &len);
        luaL_addstring(&b, "    ");
        add_dot_string(&b, s, len, "");
        luaL_addstring(&b, " -> ");
        s = entry_str(L, c->edges, i, 5, &len);
        add_dot_string(&b, s, len, "");
        luaL_addstring(&b, " [label=");
        s = entry_str(L, c->edges, i, 4, &len);
        add_dot_string(&b, s, len, kind == EDGE_GUARDED ? " (guard)" : "");
        luaL_addstring(&b, kind >= EDGE_HANDLER ? ", style=dashed];\n" : "];\n");
    }
    luaL_addstring(&b, "}\n");
    luaL_pushresult(&b);
    lua_remove(L, -2); /* the name */
}

static bool mermaid_plain(const char *s, size_t len)
{
    static const char *const reserved[] = {"state", "note", "end",      "direction",
                                           "class", "as",   "classDef", NULL};
    if (len == 0 || !name_start(s[0]) || in_list(s, len, reserved))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!name_char(s[i]))
            return false;
    return true;
}

/* The Mermaid id of the state named name (from the ids table at ids). */
static const char *mermaid_id(lua_State *L, int ids, const char *name, size_t len)
{
    lua_pushlstring(L, name, len);
    lua_rawget(L, ids);
    const char *id = lua_tostring(L, -1); /* anchored by ids */
    lua_pop(L, 1);
    return id;
}

static void add_mermaid_text(luaL_Buffer *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        luaL_addchar(b, (unsigned char)s[i] < 0x20 ? ' ' : s[i] == '"' ? '\'' : s[i]);
}

/* Push a table: state name -> its Mermaid id (the name, or state_N). */
static void push_mermaid_ids(lua_State *L, int slist)
{
    lua_Integer ns = (lua_Integer)lua_rawlen(L, slist);
    size_t len;
    lua_newtable(L);
    for (lua_Integer i = 1; i <= ns; i++) {
        const char *s = entry_str(L, slist, i, 2, &len);
        lua_pushlstring(L, s, len);
        if (mermaid_plain(s, len))
            lua_pushvalue(L, -1);
        else
            lua_pushfstring(L, "state_%I", i);
        lua_rawset(L, -3);
    }
}

static void render_mermaid(lua_State *L, const checker *c, int slist, const char *start)
{
    lua_Integer ns = (lua_Integer)lua_rawlen(L, slist), ne = (lua_Integer)lua_rawlen(L, c->edges);
    size_t len;
    luaL_Buffer b;
    luaL_checkstack(L, 10, NULL);
    push_mermaid_ids(L, slist);
    int ids = lua_gettop(L);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "stateDiagram-v2\n");
    for (lua_Integer i = 1; i <= ns; i++) {
        const char *s = entry_str(L, slist, i, 2, &len);
        if (mermaid_plain(s, len))
            continue;
        luaL_addstring(&b, "    state \"");
        add_mermaid_text(&b, s, len);
        luaL_addstring(&b, "\" as ");
        luaL_addstring(&b, mermaid_id(L, ids, s, len));
        luaL_addchar(&b, '\n');
    }
    luaL_addstring(&b, "    [*] --> ");
    luaL_addstring(&b, mermaid_id(L, ids, start, strlen(start)));
    luaL_addchar(&b, '\n');
    for (lua_Integer i = 1; i <= ne; i++) {
        static const char *const marks[] = {"", " (guard)", " (handler)", ""};
        if (repeats(L, c->edges, i))
            continue;
        lua_Integer kind = entry_int(L, c->edges, i, 6);
        const char *s = entry_str(L, c->edges, i, 2, &len);
        luaL_addstring(&b, "    ");
        luaL_addstring(&b, mermaid_id(L, ids, s, len));
        luaL_addstring(&b, " --> ");
        s = entry_str(L, c->edges, i, 5, &len);
        luaL_addstring(&b, mermaid_id(L, ids, s, len));
        luaL_addstring(&b, " : ");
        s = entry_str(L, c->edges, i, 4, &len);
        add_mermaid_text(&b, s, len);
        luaL_addstring(&b, marks[kind >= 0 && kind <= EDGE_GO ? kind : 0]);
        luaL_addchar(&b, '\n');
    }
    for (lua_Integer i = 1; i <= ns; i++) {
        const char *s = entry_str(L, slist, i, 2, &len);
        if (!entry_int(L, slist, i, 3))
            continue;
        luaL_addstring(&b, "    ");
        luaL_addstring(&b, mermaid_id(L, ids, s, len));
        luaL_addstring(&b, " --> [*]\n");
    }
    luaL_pushresult(&b);
    lua_remove(L, ids);
}

/* Run by cm_sandbox_pcall: checker (light userdata), the file's value, out_mode.
** Returns the report, the number of problems and the graph (nil unless asked
** for and the file is clean). */
static int analyze(lua_State *L)
{
    checker *c = lua_touserdata(L, 1);
    out_mode mode = (out_mode)lua_tointeger(L, 3);
    lua_settop(L, 3);
    c->def = 2;
    lua_newtable(L);
    c->problems = lua_gettop(L);
    lua_newtable(L);
    c->edges = lua_gettop(L);
    c->states = 0;
    check_definition(L, c);
    lua_Integer n = render_report(L, c);
    int report = lua_gettop(L);
    if (mode == OUT_REPORT || n > 0) {
        lua_pushinteger(L, n);
        lua_pushnil(L);
        return 3;
    }
    sort_list(L, c->edges);
    push_state_list(L, c);
    int slist = lua_gettop(L);
    rawfield(L, c->def, "start");
    if (mode == OUT_DOT)
        render_dot(L, c, slist, lua_tostring(L, -1));
    else
        render_mermaid(L, c, slist, lua_tostring(L, -1));
    /* stack: ..., report, slist, start, graph */
    lua_pushvalue(L, report);
    lua_pushinteger(L, n);
    lua_pushvalue(L, -3);
    return 3;
}

/* ---- the driver ---------------------------------------------------------- */

/* Where the definition and its states sit in the text. */
static void locate_definition(const source *src, checker *c)
{
    int ks = -1;
    for (int k = 0; k < src->nkeys; k++) {
        if (!tok_eq(src, src->keys[k].tok, "states", 6) || key_table(src, k) < 0)
            continue;
        if (ks < 0)
            ks = k;
        if (key_in(src, src->keys[k].parent, "start", 5) >= 0) {
            ks = k;
            break;
        }
    }
    memset(c, 0, sizeof(*c));
    c->src = src;
    c->def_brace = ks >= 0 ? src->keys[ks].parent : -1;
    c->states_brace = key_table(src, ks);
    for (int i = 0; i + 1 < src->ntoks && c->def_brace < 0; i++)
        if (tok_is(src, i, "workflow") && tok_is(src, i + 1, "{"))
            c->def_brace = i + 1;
        else if (tok_is(src, i, "workflow") && tok_is(src, i + 1, "(") && tok_is(src, i + 2, "{"))
            c->def_brace = i + 2;
    c->def_line = c->def_brace >= 0 ? src->toks[c->def_brace].line : 0;
    c->states_line = key_line(src, ks, c->def_line);
}

/* Is s[0..n) how Lua shows the chunk "@path" ("path", or "...tail" when long)? */
static bool chunk_is(const char *path, const char *s, size_t n)
{
    size_t plen = strlen(path);
    if (n == plen && memcmp(s, path, n) == 0)
        return true;
    return n > 3 && memcmp(s, "...", 3) == 0 && plen >= n - 3 &&
           memcmp(path + plen - (n - 3), s + 3, n - 3) == 0;
}

/* The one problem of a file that does not load or run, from Lua's message
** ("chunk:line: text", then a traceback). NULL on out of memory. */
static char *message_problem(const char *path, const char *msg)
{
    size_t first = strcspn(msg, "\n"), size;
    long line = 0;
    const char *text = msg;
    char *out;
    for (const char *p = msg; p < msg + first; p++) {
        const char *q = p + 1;
        if (*p != ':' || *q < '0' || *q > '9')
            continue;
        while (*q >= '0' && *q <= '9')
            q++;
        if (*q != ':')
            continue;
        if (chunk_is(path, msg, (size_t)(p - msg))) {
            line = strtol(p + 1, NULL, 10);
            line = line > INT_MAX ? 0 : line;
            text = q[1] == ' ' ? q + 2 : q + 1;
        }
        break;
    }
    first -= (size_t)(text - msg);
    size = strlen(path) + first + 32;
    if (!(out = malloc(size)))
        return NULL;
    int n = snprintf(out, size, "%s:%ld: ", path, line);
    for (size_t i = 0; i < first; i++)
        out[(size_t)n + i] = (unsigned char)text[i] < 0x20 ? ' ' : text[i];
    out[(size_t)n + first] = '\n';
    out[(size_t)n + first + 1] = '\0';
    return out;
}

static char *copy_string(lua_State *L, int idx)
{
    size_t len;
    const char *s = lua_tolstring(L, idx, &len); /* a string: never raises */
    char *out = malloc(len + 1);
    if (out) {
        memcpy(out, s, len);
        out[len] = '\0';
    }
    return out;
}

typedef struct result {
    char *report;
    int count;
    char *graph;
} result;

/* Load and run the file in sb. 0 with its value pushed; or 0 with the one
** problem in res (a syntax error, a raise, a budget or memory kill); or an error. */
static int load_file(cm_sandbox *sb, const source *src, result *res, cm_err *err)
{
    size_t size = strlen(src->path) + 2;
    char *chunkname = malloc(size);
    cm_err lerr;
    int rc;

    if (!chunkname)
        return cm_err_set(err, CM_ENOMEM, "%s: out of memory", src->path);
    snprintf(chunkname, size, "@%s", src->path);
    rc = cm_sandbox_load(sb, chunkname, src->text + src->skip, src->len - src->skip, &lerr);
    if (rc == 0)
        rc = cm_sandbox_pcall(sb, 0, 1, &lerr);
    if (rc == CM_ENOMEM) {
        rc = cm_err_set(err, CM_ENOMEM, "%s", lerr.msg);
    } else if (rc != 0) {
        res->report = message_problem(src->path, lerr.msg);
        res->count = 1;
        rc = res->report ? 0 : cm_err_set(err, CM_ENOMEM, "%s: out of memory", src->path);
    }
    free(chunkname);
    return rc;
}

/* Analyze the value on top of sb's stack (the file's); fill res. */
static int analyze_value(cm_sandbox *sb, const source *src, out_mode mode, result *res, cm_err *err)
{
    lua_State *L = cm_sandbox_state(sb);
    checker c;
    int rc;

    locate_definition(src, &c);
    if (!lua_checkstack(L, 4))
        return cm_err_set(err, CM_ENOMEM, "%s: no room on the Lua stack", src->path);
    lua_pushcfunction(L, analyze);
    lua_pushlightuserdata(L, &c);
    lua_pushvalue(L, -3);
    lua_pushinteger(L, mode);
    if ((rc = cm_sandbox_pcall(sb, 3, 3, err)) != 0)
        return cm_err_prefix(err, "%s", src->path);
    /* stack: value, report, count, graph or nil */
    res->report = copy_string(L, -3);
    res->count = (int)lua_tointeger(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING)
        res->graph = copy_string(L, -1);
    if (!res->report || (lua_type(L, -1) == LUA_TSTRING && !res->graph))
        return cm_err_set(err, CM_ENOMEM, "%s: out of memory", src->path);
    return 0;
}

/* Load and run the file in a fresh sandbox, then analyze what it returned. */
static int run_check(const char *path, out_mode mode, result *res, cm_err *err)
{
    source src;
    cm_sandbox *sb = NULL;
    int rc;

    memset(res, 0, sizeof(*res));
    if ((rc = source_open(&src, path, err)) != 0)
        goto done;
    if (!(sb = cm_sandbox_new(NULL, err))) {
        rc = err->code;
        goto done;
    }
    cm_sandbox_preload(sb, "caremesh", open_check_module);
    /* shared modules (require "lib.x") live beside the workflow file */
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    if ((rc = cm_sandbox_add_module_dir(sb, slash ? dir : ".", err)) != 0)
        goto done;
    if ((rc = load_file(sb, &src, res, err)) != 0 || res->report)
        goto done;
    rc = analyze_value(sb, &src, mode, res, err);

done:
    cm_sandbox_destroy(&sb);
    source_free(&src);
    if (rc != 0) {
        free(res->report);
        free(res->graph);
        memset(res, 0, sizeof(*res));
    }
    return rc;
}

int cm_lua_workflow_check(const char *path, char **report, cm_err *err)
{
    cm_err local;
    result res;
    int rc = run_check(path, OUT_REPORT, &res, err ? err : &local);
    *report = res.report;
    free(res.graph);
    return rc < 0 ? rc : res.count;
}

int cm_lua_workflow_graph(const char *path, bool mermaid, char **out, cm_err *err)
{
    cm_err local;
    result res;
    int rc = run_check(path, mermaid ? OUT_MERMAID : OUT_DOT, &res, err ? err : &local);
    *out = NULL;
    if (rc == 0 && res.count > 0)
        rc = cm_err_set(err, CM_EINVAL, "%.*s%s", (int)strcspn(res.report, "\n"), res.report,
                        res.count > 1 ? " (and more: run caremesh workflow check)" : "");
    if (rc == 0) {
        *out = res.graph;
        res.graph = NULL;
    }
    free(res.report);
    free(res.graph);
    return rc;
}
