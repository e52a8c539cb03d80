/*
** cliapi.c -- CLI commands over a running node's HTTP API (cliapi.h):
** options, where the node and the token are, one request with its error
** report, paging, tables, and one function per command.
*/
#include "cliapi.h"

#include "cli.h"
#include "config.h"
#include "fs.h"
#include "httpc.h"
#include "lconfig.h"
#include "strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PATH_MAX_      4096
#define MAX_EXTRA      24
#define MAX_OPERANDS   8
#define INPUT_MAX      ((size_t)16 << 20)
#define PAGE_MAX       1000
#define CELL_MAX       60
#define TOKEN_TEXT_MAX 256

/* ---- messages ------------------------------------------------------------ */

static int say(int code, const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* "caremesh CMD: message" on stderr; returns code. */
static int say(int code, const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "caremesh %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (code == CM_EXIT_USAGE)
        fprintf(stderr, "Try 'caremesh %.*s --help'.\n", (int)strcspn(cmd, " "), cmd);
    return code;
}

static const char *or_s(const char *s, const char *dflt)
{
    return s ? s : dflt;
}

static const char *or_q(const char *s)
{
    return or_s(s, "?");
}

/* ---- text for requests ---------------------------------------------------- */

/* Percent-encode s as a path segment or query value. */
static void url_escape(cm_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
            strchr("-._~", ch))
            cm_buf_put(b, (const char *)&ch, 1);
        else
            cm_buf_printf(b, "%%%02X", ch);
    }
}

static const char *buf_text(const cm_buf *b)
{
    return b->p ? b->p : "";
}

/* ---- options ------------------------------------------------------------- */

enum {
    ALLOW_LIST = 1,    /* --limit, --progress */
    ALLOW_OFFLINE = 2, /* --offline */
};

enum {
    O_API = 1000,
    O_TOKEN,
    O_DATA,
    O_CONFIG,
    O_JSON,
    O_TIMEOUT,
    O_HELP,
    O_LIMIT,
    O_PROGRESS,
    O_OFFLINE,
    O_EXTRA = 2000,
};

typedef struct opts {
    const char *cmd; /* "patient add", for messages */
    const char *api, *token, *data, *config;
    bool json, help, progress, offline;
    long limit;     /* 0: all */
    int timeout_ms; /* one exchange */
    const char *const *extra;
    const char *val[MAX_EXTRA];
    char *operand[MAX_OPERANDS];
    int noperands;
} opts;

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* Parse the common options, the command's extra options (each takes a
** value) and operands (anywhere). Returns 0, or the exit code after saying
** what is wrong. */
static int parse_opts(opts *o, const char *cmd, int argc, char **argv, const char *const *extra,
                      unsigned allow)
{
    struct option longopts[16 + MAX_EXTRA];
    int n = 0, c;
    long v;
    memset(o, 0, sizeof(*o));
    o->cmd = cmd;
    o->extra = extra;
    o->timeout_ms = 30000;
    longopts[n++] = (struct option){"api", required_argument, NULL, O_API};
    longopts[n++] = (struct option){"token", required_argument, NULL, O_TOKEN};
    longopts[n++] = (struct option){"data", required_argument, NULL, O_DATA};
    longopts[n++] = (struct option){"config", required_argument, NULL, O_CONFIG};
    longopts[n++] = (struct option){"json", no_argument, NULL, O_JSON};
    longopts[n++] = (struct option){"timeout", required_argument, NULL, O_TIMEOUT};
    longopts[n++] = (struct option){"help", no_argument, NULL, O_HELP};
    if (allow & ALLOW_LIST) {
        longopts[n++] = (struct option){"limit", required_argument, NULL, O_LIMIT};
        longopts[n++] = (struct option){"progress", no_argument, NULL, O_PROGRESS};
    }
    if (allow & ALLOW_OFFLINE)
        longopts[n++] = (struct option){"offline", no_argument, NULL, O_OFFLINE};
    for (int i = 0; extra && extra[i] && i < MAX_EXTRA; i++)
        longopts[n++] = (struct option){extra[i], required_argument, NULL, O_EXTRA + i};
    longopts[n] = (struct option){NULL, 0, NULL, 0};
    optind = 0; /* full reinitialisation: operands are returned in place ("-") */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "-h", longopts, NULL)) != -1) {
        switch (c) {
        case 1:
            if (o->noperands == MAX_OPERANDS)
                return say(CM_EXIT_USAGE, cmd, "too many arguments");
            o->operand[o->noperands++] = optarg;
            break;
        case O_API:
            o->api = optarg;
            break;
        case O_TOKEN:
            o->token = optarg;
            break;
        case O_DATA:
            o->data = optarg;
            break;
        case O_CONFIG:
            o->config = optarg;
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_TIMEOUT:
            if (!parse_long(optarg, 1, 3600, &v))
                return say(CM_EXIT_USAGE, cmd,
                           "--timeout: \"%s\" is not a number of seconds (1-3600)", optarg);
            o->timeout_ms = (int)v * 1000;
            break;
        case 'h':
        case O_HELP:
            o->help = true;
            return 0;
        case O_LIMIT:
            if (!parse_long(optarg, 1, 100000000L, &o->limit))
                return say(CM_EXIT_USAGE, cmd, "--limit: \"%s\" is not a positive whole number",
                           optarg);
            break;
        case O_PROGRESS:
            o->progress = true;
            break;
        case O_OFFLINE:
            o->offline = true;
            break;
        default:
            if (c >= O_EXTRA && c < O_EXTRA + MAX_EXTRA) {
                o->val[c - O_EXTRA] = optarg;
                break;
            }
            return say(CM_EXIT_USAGE, cmd, "unknown option or missing value: '%s'",
                       argv[optind - 1]);
        }
    }
    if (!o->data) {
        const char *env = getenv("CAREMESH_DATA");
        o->data = env && *env ? env : NULL;
    }
    return 0;
}

/* The value of extra option name, or NULL. */
static const char *opt_val(const opts *o, const char *name)
{
    for (int i = 0; o->extra && o->extra[i]; i++)
        if (strcmp(o->extra[i], name) == 0)
            return o->val[i];
    return NULL;
}

/* What a step answers when the command goes on (every exit code is >= 0). */
enum { GO = -1 };

/* The arguments a command takes. */
typedef struct cmd_args {
    const char *help;         /* the command whose --help is printed; NULL: CM_CLIAPI_HELP */
    const char *const *extra; /* its options with a value */
    unsigned allow;           /* ALLOW_* */
    int min, max;             /* how many operands */
    const char *missing;      /* what to say when fewer than min are given */
    const char *known;        /* its subcommands, named after an unexpected argument */
} cmd_args;

/* Parse a command's arguments as a describes them: GO, or the exit code after
** its --help or the message saying what is wrong. */
static int begin(opts *o, const char *cmd, const cmd_args *a, int argc, char **argv)
{
    int rc = parse_opts(o, cmd, argc, argv, a->extra, a->allow);
    if (rc != 0)
        return rc;
    if (o->help)
        return a->help ? cm_cliapi_help(cm_cliapi_find(a->help)) : CM_CLIAPI_HELP;
    if (o->noperands > a->max && a->known)
        return say(CM_EXIT_USAGE, cmd, "unexpected argument '%s' (known %s)", o->operand[a->max],
                   a->known);
    if (o->noperands > a->max)
        return say(CM_EXIT_USAGE, cmd, "unexpected argument '%s'", o->operand[a->max]);
    if (o->noperands < a->min)
        return say(CM_EXIT_USAGE, cmd, "%s", a->missing);
    return GO;
}

/* ---- where the node is, and the token ------------------------------------ */

typedef struct client {
    const opts *o;
    cm_httpc *http;
    char *auth;                    /* "Authorization: Bearer ...\r\n"; wiped when closed */
    char addr_src[PATH_MAX_ + 32]; /* where the address came from */
    char token_src[PATH_MAX_ + 32];
} client;

/* Why no client could be made: the message, the exit code, and whether
** the database may be read instead (a data dir named, no address given). */
typedef struct why {
    char msg[1200];
    int exit;
    bool fallback;
} why;

static int why_set(why *w, int exit, bool fallback, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int why_set(why *w, int exit, bool fallback, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof(w->msg), fmt, ap);
    va_end(ap);
    w->exit = exit;
    w->fallback = fallback;
    return -1;
}

/* "HOST:PORT", "[V6]:PORT", optionally after "http://". */
static bool parse_addr(const char *s, char *host, size_t hostsz, int *port)
{
    if (strncmp(s, "http://", 7) == 0)
        s += 7;
    size_t len = strlen(s);
    char buf[300];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, s, len + 1);
    if (buf[len - 1] == '/')
        buf[--len] = '\0';
    char *colon = strrchr(buf, ':');
    long p;
    if (!colon || !parse_long(colon + 1, 1, 65535, &p))
        return false;
    *colon = '\0';
    char *h = buf;
    if (h[0] == '[') {
        size_t hl = strlen(h);
        if (hl < 3 || h[hl - 1] != ']')
            return false;
        h[hl - 1] = '\0';
        h++;
    } else if (strchr(h, ':')) {
        return false; /* an IPv6 address needs brackets */
    }
    if (!*h || strlen(h) >= hostsz)
        return false;
    snprintf(host, hostsz, "%s", h);
    *port = (int)p;
    return true;
}

/* The data dir's configuration: the API's listen address. */
static int addr_from_data(const opts *o, char *host, size_t hostsz, int *port, char *src,
                          size_t srcsz, why *w)
{
    char path[PATH_MAX_];
    cm_config cfg;
    cm_err err;
    cJSON *root = NULL;
    cm_config_defaults(&cfg);
    if (o->config)
        snprintf(path, sizeof(path), "%s", o->config);
    else if (cm_fs_join(path, sizeof(path), o->data, CM_CONFIG_FILE, &err) != 0)
        return why_set(w, CM_EXIT_USAGE, false, "--data: %s", err.msg);
    if (o->config || cm_fs_exists(path)) {
        int rc = cm_lconfig_read(path, &root, &err);
        if (rc == 0)
            rc = cm_config_apply(&cfg, root, path, &err);
        cJSON_Delete(root);
        if (rc != 0) {
            cm_config_free(&cfg);
            return why_set(w, CM_EXIT_FAIL, false, "%s", err.msg);
        }
    }
    bool enabled = cfg.api.enabled;
    snprintf(host, hostsz, "%s", cfg.api.host);
    *port = cfg.api.port;
    cm_config_free(&cfg);
    snprintf(src, srcsz, "%s", path);
    if (!enabled)
        return why_set(w, CM_EXIT_FAIL, true, "%s: the API is switched off (api.enabled = false)",
                       path);
    if (*port == 0)
        return why_set(w, CM_EXIT_FAIL, true,
                       "%s: api.listen has port 0 (the node picks one when it starts); give "
                       "--api HOST:PORT",
                       path);
    if (strcmp(host, "0.0.0.0") == 0) /* listening on every address: reach it on loopback */
        snprintf(host, hostsz, "127.0.0.1");
    else if (strcmp(host, "::") == 0)
        snprintf(host, hostsz, "::1");
    return 0;
}

/* Read a token file: private (no group or other bits), one line. */
static int token_from_file(const char *path, char **out, why *w)
{
    struct stat sb;
    char *text = NULL;
    size_t len;
    cm_err err;
    if (lstat(path, &sb) != 0) {
        if (errno == ENOENT)
            return why_set(w, CM_EXIT_USAGE, true,
                           "no API token: give --token, set CAREMESH_TOKEN, or save one in %s with "
                           "'caremesh token create --save'",
                           path);
        return why_set(w, CM_EXIT_FAIL, false, "%s: %s", path, strerror(errno));
    }
    if (!S_ISREG(sb.st_mode))
        return why_set(w, CM_EXIT_FAIL, false, "%s: not a regular file", path);
    if (sb.st_mode & 077)
        return why_set(w, CM_EXIT_FAIL, false,
                       "%s: mode %04o lets other users read the token; chmod 600 it", path,
                       (unsigned)(sb.st_mode & 0777));
    if (sb.st_uid != geteuid())
        return why_set(w, CM_EXIT_FAIL, false, "%s: owned by another user", path);
    if (cm_fs_read(path, TOKEN_TEXT_MAX, &text, &len, &err) != 0)
        return why_set(w, CM_EXIT_FAIL, false, "%s", err.msg);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = '\0';
    *out = text;
    return 0;
}

static void client_close(client *c)
{
    if (c->auth) {
        sodium_memzero(c->auth, strlen(c->auth));
        free(c->auth);
        c->auth = NULL;
    }
    cm_httpc_destroy(&c->http);
}

/* The token's text is checked for what may go into a header line. */
static bool token_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > TOKEN_TEXT_MAX)
        return false;
    for (; *t; t++)
        if (*t <= ' ' || *t > '~')
            return false;
    return true;
}

static int client_open(client *c, const opts *o, why *w)
{
    char host[256];
    int port = CM_API_DEFAULT_PORT;
    const char *env = getenv("CAREMESH_API");
    char *filetok = NULL;
    const char *token = NULL;
    memset(c, 0, sizeof(*c));
    c->o = o;
    snprintf(host, sizeof(host), "%s", CM_API_DEFAULT_HOST);
    if (o->api || (env && *env)) {
        const char *a = o->api ? o->api : env;
        snprintf(c->addr_src, sizeof(c->addr_src), "%s", o->api ? "--api" : "CAREMESH_API");
        if (!parse_addr(a, host, sizeof(host), &port))
            return why_set(w, CM_EXIT_USAGE, false,
                           "%s: \"%s\" is not HOST:PORT (e.g. 127.0.0.1:7600 or [::1]:7600)",
                           c->addr_src, a);
    } else if (o->data) {
        if (addr_from_data(o, host, sizeof(host), &port, c->addr_src, sizeof(c->addr_src), w) != 0)
            return -1;
    } else {
        snprintf(c->addr_src, sizeof(c->addr_src), "the default address");
    }
    bool may_fallback = o->data && !o->api && !(env && *env);
    const char *tenv = getenv("CAREMESH_TOKEN");
    if (o->token) {
        token = o->token;
        snprintf(c->token_src, sizeof(c->token_src), "--token");
    } else if (tenv && *tenv) {
        token = tenv;
        snprintf(c->token_src, sizeof(c->token_src), "CAREMESH_TOKEN");
    } else if (o->data) {
        cm_err err;
        if (cm_fs_join(c->token_src, sizeof(c->token_src), o->data, CM_CLI_TOKEN_FILE, &err) != 0)
            return why_set(w, CM_EXIT_USAGE, false, "--data: %s", err.msg);
        if (token_from_file(c->token_src, &filetok, w) != 0) {
            w->fallback = w->fallback && may_fallback;
            return -1;
        }
        token = filetok;
    } else {
        return why_set(w, CM_EXIT_USAGE, false,
                       "no API token: give --token, set CAREMESH_TOKEN, or --data DIR with a token "
                       "saved by 'caremesh token create --save'");
    }
    int rc = 0;
    if (!token_ok(token)) {
        rc = why_set(w, CM_EXIT_USAGE, false,
                     "the token from %s is not a token (printable "
                     "characters, no spaces)",
                     c->token_src);
    } else {
        size_t n = strlen(token) + 32;
        c->auth = malloc(n);
        c->http =
            cm_httpc_new(host, port, o->timeout_ms < 5000 ? o->timeout_ms : 5000, o->timeout_ms);
        if (!c->auth || !c->http)
            rc = why_set(w, CM_EXIT_FAIL, false, "out of memory");
        else
            snprintf(c->auth, n, "Authorization: Bearer %s\r\n", token);
    }
    if (filetok) {
        sodium_memzero(filetok, strlen(filetok));
        free(filetok);
    }
    if (rc == 0 && may_fallback)
        w->fallback = true; /* an unreachable node may be read from its database */
    if (rc != 0)
        client_close(c);
    return rc;
}

/* ---- one request --------------------------------------------------------- */

enum { UNREACHABLE = -2 };

/* Report an HTTP error answer: the API's code, message and field. */
/* Print the answer as it came (--json). */
static void print_raw(const cm_httpc_resp *r)
{
    fwrite(r->body, 1, r->len, stdout);
    if (r->len == 0 || r->body[r->len - 1] != '\n')
        fputc('\n', stdout);
}

/* The first line of msg into buf (a handler's traceback stays in --json). */
static const char *first_line(const char *msg, char *buf, size_t bufsz)
{
    size_t n = strcspn(msg, "\n");
    snprintf(buf, bufsz, "%.*s%s", (int)n, msg, msg[n] ? " [...]" : "");
    return buf;
}

static int report_http_error(client *c, const cm_httpc_resp *r)
{
    cJSON *doc = cJSON_ParseWithLength(r->body, r->len);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");
    const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "code"));
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "message"));
    const char *field = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "field"));
    const char *addr = cm_httpc_address(c->http);
    char line[1024];
    if (c->o->json && code && msg)
        print_raw(r); /* scripts get the API's error as it came */
    if (msg)
        msg = first_line(msg, line, sizeof(line));
    if (!code || !msg)
        say(0, c->o->cmd, "HTTP %d from %s: %.200s", r->status, addr, r->body);
    else if (r->status == 401)
        say(0, c->o->cmd, "the node at %s refused the token from %s (%s: %s)", addr, c->token_src,
            code, msg);
    else if (r->status == 403)
        say(0, c->o->cmd, "not allowed (%s): %s", code, msg);
    else if (field)
        say(0, c->o->cmd, "%s: %s (field %s)", code, msg, field);
    else
        say(0, c->o->cmd, "%s: %s", code, msg);
    cJSON_Delete(doc);
    return CM_EXIT_FAIL;
}

/* The exchange failed: the node was not reached, or the exchange broke. */
static int report_transport(client *c, cm_httpc_fail fail, const cm_err *err)
{
    if (fail == CM_HTTPC_UNREACHABLE)
        return say(CM_EXIT_FAIL, c->o->cmd,
                   "node not reachable: %s (address from %s); is 'caremesh serve' running?",
                   err->msg, c->addr_src);
    return say(CM_EXIT_FAIL, c->o->cmd, "%s (the request may or may not have been carried out)",
               err->msg);
}

/* method target with an optional JSON body. 0 with *r on a 2xx answer (the
** caller frees it), else the exit code after the message; UNREACHABLE
** without a message when quiet and the node could not be reached. */
static int call_ex(client *c, const char *method, const char *target, const cJSON *body,
                   cm_httpc_resp *r, bool quiet)
{
    cm_err err;
    cm_httpc_fail fail;
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    if (body && !text)
        return say(CM_EXIT_FAIL, c->o->cmd, "out of memory");
    int rc = cm_httpc_request(c->http, method, target, c->auth, text, text ? strlen(text) : 0, r,
                              &fail, &err);
    free(text);
    if (rc != 0) {
        if (fail == CM_HTTPC_UNREACHABLE && quiet)
            return UNREACHABLE;
        return report_transport(c, fail, &err);
    }
    if (r->status < 200 || r->status > 299) {
        rc = report_http_error(c, r);
        cm_httpc_resp_free(r);
        return rc;
    }
    return 0;
}

static int call(client *c, const char *method, const char *target, const cJSON *body,
                cm_httpc_resp *r)
{
    return call_ex(c, method, target, body, r, false);
}

/* A 2xx answer's JSON; NULL after saying so when it is not JSON. */
static cJSON *answer_json(client *c, const cm_httpc_resp *r)
{
    cJSON *doc = cJSON_ParseWithLength(r->body, r->len);
    if (!doc)
        say(0, c->o->cmd, "the answer from %s is not JSON: %.200s", cm_httpc_address(c->http),
            r->body);
    return doc;
}

/* Open the client for a command: 0, or the exit code after saying why not. */
static int open_client(client *c, const opts *o)
{
    why w;
    if (client_open(c, o, &w) != 0)
        return say(w.exit, o->cmd, "%s", w.msg);
    return 0;
}

/* "/v1/COLL[/ID][/SUFFIX]" with the id escaped (the caller frees it); NULL
** when out of memory. */
static char *item_target(const char *coll, const char *id, const char *suffix)
{
    cm_buf t = {0};
    cm_buf_printf(&t, "/v1/%s", coll);
    if (id) {
        cm_buf_printf(&t, "/");
        url_escape(&t, id);
    }
    if (suffix)
        cm_buf_printf(&t, "/%s", suffix);
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    return t.p;
}

/* call, then the 2xx answer: printed as it came with --json; else, when doc
** is given, its JSON in *doc (the caller deletes it). */
static int exchange(client *c, const char *method, const char *target, const cJSON *body,
                    cJSON **doc)
{
    cm_httpc_resp r;
    int rc = call(c, method, target, body, &r);
    if (rc != 0)
        return rc;
    if (c->o->json)
        print_raw(&r);
    else if (doc && !(*doc = answer_json(c, &r)))
        rc = CM_EXIT_FAIL;
    cm_httpc_resp_free(&r);
    return rc;
}

/* A command's one request to item_target(coll, id, suffix) with body (taken;
** NULL for none): opens the client, exchanges, closes. *doc as for exchange,
** else NULL. Returns 0 or the exit code after the message. */
static int send_to(const opts *o, const char *method, const char *coll, const char *id,
                   const char *suffix, cJSON *body, cJSON **doc)
{
    client c;
    char *target = item_target(coll, id, suffix);
    if (doc)
        *doc = NULL;
    int rc = target ? open_client(&c, o) : say(CM_EXIT_FAIL, o->cmd, "out of memory");
    if (rc == 0) {
        rc = exchange(&c, method, target, body, doc);
        client_close(&c);
    }
    free(target);
    cJSON_Delete(body);
    return rc;
}

/* GET the thing named by the command's operand from coll and show it as
** fields (or JSON). */
static int show_one(const opts *o, const char *coll, void (*show)(const cJSON *doc))
{
    cJSON *doc;
    int rc = send_to(o, "GET", coll, o->operand[0], NULL, NULL, &doc);
    if (doc)
        show(doc);
    cJSON_Delete(doc);
    return rc;
}

/* {name: value} when the extra option name was given, else NULL (no body). */
static cJSON *body_of_opt(const opts *o, const char *name)
{
    const char *v = opt_val(o, name);
    cJSON *body = v ? cJSON_CreateObject() : NULL;
    if (body)
        cJSON_AddStringToObject(body, name, v);
    return body;
}

/* Print doc (taken) as one line of JSON. */
static void print_json(cJSON *doc)
{
    char *text = cJSON_PrintUnformatted(doc);
    if (text)
        printf("%s\n", text);
    free(text);
    cJSON_Delete(doc);
}

/* ---- lists: paging and tables ------------------------------------------- */

/* GET path?query, following next_cursor until the end or o->limit items.
** *items receives them all; *next the cursor after the last page (or NULL). */
static int fetch_list(client *c, const char *path, const cm_buf *query, bool paged, cJSON **items,
                      char **next)
{
    cJSON *all = cJSON_CreateArray();
    char *cursor = NULL;
    long want = c->o->limit, got = 0;
    int rc = 0, pages = 0;
    bool progress = c->o->progress || (isatty(STDERR_FILENO) && !c->o->json);
    *items = NULL;
    *next = NULL;
    if (!all)
        return say(CM_EXIT_FAIL, c->o->cmd, "out of memory");
    for (;;) {
        cm_buf t = {0};
        cm_httpc_resp r;
        cm_buf_printf(&t, "%s?%s", path, buf_text(query));
        if (paged) {
            long page = want ? want - got : PAGE_MAX;
            cm_buf_printf(&t, "%slimit=%ld", query->len ? "&" : "",
                          page < PAGE_MAX ? page : PAGE_MAX);
            if (cursor) {
                cm_buf_printf(&t, "&cursor=");
                url_escape(&t, cursor);
            }
        }
        if (t.oom) {
            free(t.p);
            rc = say(CM_EXIT_FAIL, c->o->cmd, "out of memory");
            break;
        }
        rc = call(c, "GET", t.p, NULL, &r);
        free(t.p);
        if (rc != 0)
            break;
        cJSON *doc = answer_json(c, &r);
        cm_httpc_resp_free(&r);
        cJSON *page_items = cJSON_DetachItemFromObjectCaseSensitive(doc, "items");
        const char *nc = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "next_cursor"));
        free(cursor);
        cursor = nc ? strdup(nc) : NULL;
        cJSON_Delete(doc);
        if (!cJSON_IsArray(page_items)) {
            cJSON_Delete(page_items);
            rc = say(CM_EXIT_FAIL, c->o->cmd, "the answer has no \"items\" list");
            break;
        }
        cJSON *it;
        while ((it = cJSON_DetachItemFromArray(page_items, 0))) {
            cJSON_AddItemToArray(all, it);
            got++;
        }
        cJSON_Delete(page_items);
        pages++;
        if (!paged || !cursor || (want && got >= want))
            break;
        if (progress)
            fprintf(stderr, "\r%s: %ld so far...", c->o->cmd, got);
    }
    if (progress && pages > 1)
        fprintf(stderr, "\r%s: %ld in %d pages   \n", c->o->cmd, got, pages);
    if (rc != 0) {
        cJSON_Delete(all);
        free(cursor);
        return rc;
    }
    *items = all;
    *next = cursor;
    return 0;
}

typedef struct column {
    const char *head;
    const char *path; /* "a.b", "a[].b" maps over an array */
} column;

static void render(const cJSON *v, char *out, size_t outsz);

/* HumanName: given names then family, or its text. */
static bool render_name(const cJSON *v, char *out, size_t outsz)
{
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "text"));
    const char *family = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "family"));
    const cJSON *given = cJSON_GetObjectItemCaseSensitive(v, "given"), *g;
    if (text) {
        snprintf(out, outsz, "%s", text);
        return true;
    }
    if (!family)
        return false;
    size_t n = 0;
    out[0] = '\0';
    cJSON_ArrayForEach(g, given) if (cJSON_IsString(g) && n < outsz) n +=
        (size_t)snprintf(out + n, outsz - n, "%s ", g->valuestring);
    if (n < outsz)
        snprintf(out + n, outsz - n, "%s", family);
    return true;
}

static void render(const cJSON *v, char *out, size_t outsz)
{
    if (!v || cJSON_IsNull(v)) {
        snprintf(out, outsz, "-");
    } else if (cJSON_IsString(v)) {
        snprintf(out, outsz, "%s", v->valuestring);
    } else if (cJSON_IsBool(v)) {
        snprintf(out, outsz, "%s", cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == (double)(long long)d && d > -1e15 && d < 1e15)
            snprintf(out, outsz, "%lld", (long long)d);
        else
            snprintf(out, outsz, "%g", d);
    } else if (cJSON_IsObject(v) && render_name(v, out, outsz)) {
        return;
    } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0) {
        snprintf(out, outsz, "-");
    } else {
        char *t = cJSON_PrintUnformatted(v);
        snprintf(out, outsz, "%s", t ? t : "?");
        free(t);
    }
}

/* The cell at path in item. */
static void cell(const cJSON *item, const char *path, char *out, size_t outsz)
{
    char seg[64];
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    if (n >= sizeof(seg))
        n = sizeof(seg) - 1;
    memcpy(seg, path, n);
    seg[n] = '\0';
    bool map = n > 2 && strcmp(seg + n - 2, "[]") == 0;
    if (map)
        seg[n - 2] = '\0';
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, seg);
    if (map && cJSON_IsArray(v) && dot) {
        const cJSON *el;
        size_t len = 0;
        out[0] = '\0';
        cJSON_ArrayForEach(el, v)
        {
            char one[128];
            cell(el, dot + 1, one, sizeof(one));
            if (len < outsz)
                len += (size_t)snprintf(out + len, outsz - len, "%s%s", len ? "," : "", one);
        }
        if (!out[0])
            snprintf(out, outsz, "-");
    } else if (dot && cJSON_IsObject(v)) {
        cell(v, dot + 1, out, outsz);
    } else {
        render(dot ? NULL : v, out, outsz);
    }
}

/* Characters (not bytes) of UTF-8 text: what a terminal's columns show. */
static size_t text_cols(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Make a cell printable on one line and, unless it is the row's last (which
** pushes no column right: an error's file:line stays whole), at most
** CELL_MAX characters, cut on a character boundary. */
static void tidy(char *s, bool last)
{
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < ' ')
            *p = ' ';
    if (last || text_cols(s) <= CELL_MAX)
        return;
    size_t chars = 0;
    char *p = s;
    for (; *p; p++)
        if (((unsigned char)*p & 0xC0) != 0x80 && chars++ == CELL_MAX - 3)
            break;
    memcpy(p, "...", 4);
}

static void print_cell(const char *text, size_t width, bool last)
{
    if (last) {
        printf("%s\n", text);
        return;
    }
    printf("%s", text);
    for (size_t n = text_cols(text); n < width + 2; n++)
        putchar(' ');
}

static void print_table(const cJSON *items, const column *cols)
{
    int ncols = 0;
    size_t width[16];
    while (cols[ncols].head && ncols < 16)
        ncols++;
    for (int j = 0; j < ncols; j++)
        width[j] = strlen(cols[j].head);
    char buf[512];
    const cJSON *it;
    cJSON_ArrayForEach(it, items) for (int j = 0; j < ncols; j++)
    {
        cell(it, cols[j].path, buf, sizeof(buf));
        tidy(buf, j + 1 == ncols);
        if (text_cols(buf) > width[j])
            width[j] = text_cols(buf);
    }
    for (int j = 0; j < ncols; j++)
        print_cell(cols[j].head, width[j], j + 1 == ncols);
    cJSON_ArrayForEach(it, items) for (int j = 0; j < ncols; j++)
    {
        cell(it, cols[j].path, buf, sizeof(buf));
        tidy(buf, j + 1 == ncols);
        print_cell(buf, width[j], j + 1 == ncols);
    }
}

/* What a list command lists. */
typedef struct list_def {
    const char *path;           /* "/v1/tasks" */
    const char *const *filters; /* extra options, named as the API's query parameters */
    const char *const *params;  /* or mapped to these (NULL: the same names) */
    bool paged;                 /* the API pages it (next_cursor) */
    const column *cols;         /* the table */
    const char *noun;           /* "tasks": "no tasks" */
} list_def;

/* A list command: GET l->path with the filters given, as a table or JSON. */
static int run_list(client *c, const list_def *l)
{
    cm_buf q = {0};
    cJSON *items = NULL;
    char *next = NULL;
    for (int i = 0; l->filters && l->filters[i]; i++) {
        const char *v = opt_val(c->o, l->filters[i]);
        if (!v)
            continue;
        cm_buf_printf(&q, "%s%s=", q.len ? "&" : "", l->params ? l->params[i] : l->filters[i]);
        url_escape(&q, v);
    }
    int rc = q.oom ? say(CM_EXIT_FAIL, c->o->cmd, "out of memory")
                   : fetch_list(c, l->path, &q, l->paged, &items, &next);
    free(q.p);
    if (rc != 0)
        return rc;
    if (c->o->json) {
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddItemToObject(doc, "items", items);
        if (l->paged)
            next ? cJSON_AddStringToObject(doc, "next_cursor", next)
                 : cJSON_AddNullToObject(doc, "next_cursor");
        print_json(doc);
    } else {
        if (cJSON_GetArraySize(items) == 0)
            printf("no %s\n", l->noun);
        else
            print_table(items, l->cols);
        if (next)
            fprintf(stderr,
                    "(more: --limit stopped the list; the next page starts after cursor %s)\n",
                    next);
        cJSON_Delete(items);
    }
    free(next);
    return 0;
}

/* A list command's run after its arguments: open the client, list, close. */
static int list_cmd(const opts *o, const list_def *l)
{
    client c;
    int rc = open_client(&c, o);
    if (rc != 0)
        return rc;
    rc = run_list(&c, l);
    client_close(&c);
    return rc;
}

/* ---- JSON input ---------------------------------------------------------- */

/* Read all of stdin (at most INPUT_MAX bytes). */
static char *read_stdin(size_t *len, const char *cmd)
{
    cm_buf b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0) {
        if (b.len + n > INPUT_MAX) {
            free(b.p);
            say(0, cmd, "stdin: more than %zu bytes", INPUT_MAX);
            return NULL;
        }
        cm_buf_put(&b, chunk, n);
    }
    if (b.oom || ferror(stdin)) {
        free(b.p);
        say(0, cmd, "stdin: %s", b.oom ? "out of memory" : "read error");
        return NULL;
    }
    *len = b.len;
    if (!b.p)
        b.p = calloc(1, 1);
    return b.p;
}

/* A JSON object from spec: "-" for stdin, "@FILE", inline text that starts
** with '{', else a file name. Errors name the source, line and column. */
static cJSON *read_object(const char *spec, const char *what, const char *cmd)
{
    char *text = NULL, name[PATH_MAX_ + 32];
    size_t len = 0;
    cm_err err;
    const char *p = spec;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (strcmp(spec, "-") == 0) {
        snprintf(name, sizeof(name), "stdin");
        text = read_stdin(&len, cmd);
        if (!text)
            return NULL;
    } else if (*p == '{' || *p == '[') {
        snprintf(name, sizeof(name), "%s", what);
        text = strdup(spec);
        len = strlen(spec);
    } else {
        const char *path = spec[0] == '@' ? spec + 1 : spec;
        snprintf(name, sizeof(name), "%s", path);
        if (cm_fs_read(path, INPUT_MAX, &text, &len, &err) != 0) {
            say(0, cmd, "%s: %s", what, err.msg);
            return NULL;
        }
    }
    if (!text) {
        say(0, cmd, "out of memory");
        return NULL;
    }
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(text, len + 1, &end, true);
    if (!doc) {
        int line = 1, col = 1;
        const char *stop = end && end >= text && end <= text + len ? end : text + len;
        for (const char *q = text; q < stop; q++)
            *q == '\n' ? (line++, col = 1) : col++;
        bool empty = strspn(text, " \t\r\n") == len;
        say(0, cmd, "%s:%d:%d: %s", name, line, col,
            empty ? "empty input: expected a JSON object" : "malformed JSON");
    } else if (!cJSON_IsObject(doc)) {
        say(0, cmd, "%s: expected a JSON object", name);
        cJSON_Delete(doc);
        doc = NULL;
    }
    free(text);
    return doc;
}

/* stdin holds input when it is a pipe or a file, not a terminal or /dev/null. */
static bool stdin_has_input(void)
{
    struct stat sb;
    return fstat(STDIN_FILENO, &sb) == 0 && (S_ISFIFO(sb.st_mode) || S_ISREG(sb.st_mode));
}

/* ---- records ------------------------------------------------------------- */

typedef struct flag_def {
    const char *opt;  /* --opt VALUE */
    const char *path; /* member it sets: "name.family" */
    bool array;       /* the value goes in as a one-element array */
} flag_def;

typedef struct kind_def {
    const char *cmd, *coll, *label;
    const char *const *filters; /* list filters: the API's query parameters */
    const flag_def *flags;      /* add's flags */
    const column *cols;
} kind_def;

static const char *const org_filters[] = {"kind", "node", NULL};
static const flag_def org_flags[] = {{"id", "id", false},       {"name", "name", false},
                                     {"kind", "kind", false},   {"node", "node", false},
                                     {"phone", "phone", false}, {"email", "email", false},
                                     {NULL, NULL, false}};
static const column org_cols[] = {
    {"ID", "id"}, {"NAME", "name"}, {"KIND", "kind"}, {"NODE", "node"}, {NULL, NULL}};

static const char *const provider_filters[] = {"role", "organization", NULL};
static const flag_def provider_flags[] = {{"id", "id", false},
                                          {"family", "name.family", false},
                                          {"given", "name.given", true},
                                          {"role", "role", false},
                                          {"organization", "organization", false},
                                          {"specialty", "specialty", false},
                                          {"phone", "phone", false},
                                          {"email", "email", false},
                                          {NULL, NULL, false}};
static const column provider_cols[] = {{"ID", "id"},
                                       {"NAME", "name"},
                                       {"ROLE", "role"},
                                       {"ORGANIZATION", "organization"},
                                       {NULL, NULL}};

static const char *const patient_filters[] = {
    "condition",        "identifier",          "gender",    "language",
    "preferredChannel", "generalPractitioner", "birthDate", NULL};
static const flag_def patient_flags[] = {{"id", "id", false},
                                         {"family", "name.family", false},
                                         {"given", "name.given", true},
                                         {"birth-date", "birthDate", false},
                                         {"gender", "gender", false},
                                         {"phone", "phone", false},
                                         {"email", "email", false},
                                         {"language", "language", false},
                                         {"gp", "generalPractitioner", false},
                                         {NULL, NULL, false}};
static const column patient_cols[] = {{"ID", "id"},
                                      {"NAME", "name"},
                                      {"BIRTH DATE", "birthDate"},
                                      {"GENDER", "gender"},
                                      {"GP", "generalPractitioner"},
                                      {NULL, NULL}};

static const char *const partnership_filters[] = {"member", "status", NULL};
static const flag_def no_flags[] = {{NULL, NULL, false}};
static const column partnership_cols[] = {{"ID", "id"},
                                          {"NAME", "name"},
                                          {"STATUS", "status"},
                                          {"MEMBERS", "members[].organization"},
                                          {"REVIEW", "reviewCadence"},
                                          {NULL, NULL}};

static const char *const consent_filters[] = {"patient", "purpose", "organization", "decision",
                                              NULL};
static const flag_def consent_flags[] = {{"id", "id", false},
                                         {"patient", "patient", false},
                                         {"purpose", "purpose", false},
                                         {"organization", "organization", false},
                                         {"decision", "decision", false},
                                         {"note", "note", false},
                                         {NULL, NULL, false}};
static const column consent_cols[] = {{"ID", "id"},
                                      {"PATIENT", "patient"},
                                      {"PURPOSE", "purpose"},
                                      {"ORGANIZATION", "organization"},
                                      {"DECISION", "decision"},
                                      {"STATUS", "status"},
                                      {NULL, NULL}};

static const kind_def kinds[] = {
    {"org", "organizations", "organization", org_filters, org_flags, org_cols},
    {"provider", "providers", "provider", provider_filters, provider_flags, provider_cols},
    {"patient", "patients", "patient", patient_filters, patient_flags, patient_cols},
    {"partnership", "partnerships", "partnership", partnership_filters, no_flags, partnership_cols},
    {"consent", "consents", "consent", consent_filters, consent_flags, consent_cols},
};

/* Set doc's member at a dotted path to the string value (in an array when asked). */
static bool set_path(cJSON *doc, const char *path, const char *value, bool array)
{
    const char *dot = strchr(path, '.');
    if (dot) {
        char head[64];
        size_t n = (size_t)(dot - path);
        if (n >= sizeof(head))
            return false;
        memcpy(head, path, n);
        head[n] = '\0';
        cJSON *sub = cJSON_GetObjectItemCaseSensitive(doc, head);
        if (!cJSON_IsObject(sub)) {
            cJSON_DeleteItemFromObjectCaseSensitive(doc, head);
            if (!(sub = cJSON_AddObjectToObject(doc, head)))
                return false;
        }
        return set_path(sub, dot + 1, value, array);
    }
    cJSON *v = array ? cJSON_CreateStringArray(&value, 1) : cJSON_CreateString(value);
    if (!v)
        return false;
    cJSON_DeleteItemFromObjectCaseSensitive(doc, path);
    cJSON_AddItemToObject(doc, path, v);
    return true;
}

static void print_fields(const cJSON *doc)
{
    const cJSON *f;
    size_t w = 0;
    cJSON_ArrayForEach(f, doc) if (strlen(f->string) > w) w = strlen(f->string);
    cJSON_ArrayForEach(f, doc)
    {
        char *t = NULL;
        const char *shown;
        char buf[512];
        if (cJSON_IsObject(f) || cJSON_IsArray(f)) {
            if (cJSON_IsObject(f) && render_name(f, buf, sizeof(buf)))
                shown = buf;
            else
                shown = t = cJSON_PrintUnformatted(f);
        } else {
            render(f, buf, sizeof(buf));
            shown = buf;
        }
        printf("%-*s  %s\n", (int)w, f->string, shown ? shown : "?");
        free(t);
    }
}

static int record_add(const kind_def *k, int argc, char **argv)
{
    const char *names[MAX_EXTRA + 1];
    char cmd[64];
    opts o;
    cJSON *got;
    int n = 0;
    for (; k->flags[n].opt && n < MAX_EXTRA; n++)
        names[n] = k->flags[n].opt;
    names[n] = NULL;
    snprintf(cmd, sizeof(cmd), "%s add", k->cmd);
    const cmd_args args = {.help = k->cmd, .extra = names, .max = 1};
    int rc = begin(&o, cmd, &args, argc, argv);
    if (rc != GO)
        return rc;
    bool flags = false;
    for (int i = 0; i < n; i++)
        flags = flags || o.val[i];
    const char *src = o.noperands ? o.operand[0] : NULL;
    if (!src && !flags) {
        if (!stdin_has_input())
            return say(CM_EXIT_USAGE, cmd,
                       "give the %s as a JSON file, '-' for stdin, or with flags (see --help)",
                       k->label);
        src = "-";
    }
    cJSON *doc = src ? read_object(src, "the argument", cmd) : cJSON_CreateObject();
    if (!doc)
        return CM_EXIT_FAIL;
    for (int i = 0; i < n; i++)
        if (o.val[i] && !set_path(doc, k->flags[i].path, o.val[i], k->flags[i].array)) {
            cJSON_Delete(doc);
            return say(CM_EXIT_FAIL, cmd, "out of memory");
        }
    rc = send_to(&o, "POST", k->coll, NULL, NULL, doc, &got);
    if (got) {
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(got, "meta");
        printf("created %s %s (version %s)\n", k->label,
               or_q(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(got, "id"))),
               or_q(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(meta, "versionId"))));
    }
    cJSON_Delete(got);
    return rc;
}

static int record_cmd(const kind_def *k, int argc, char **argv)
{
    char cmd[64], missing[96];
    opts o;
    if (argc < 2)
        return say(CM_EXIT_USAGE, k->cmd, "missing subcommand (add, show, list)");
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0)
        return cm_cliapi_help(cm_cliapi_find(k->cmd));
    if (strcmp(sub, "add") == 0)
        return record_add(k, argc - 1, argv + 1);
    bool list = strcmp(sub, "list") == 0;
    if (!list && strcmp(sub, "show") != 0)
        return say(CM_EXIT_USAGE, k->cmd, "unknown subcommand '%s' (known: add, show, list)", sub);
    snprintf(cmd, sizeof(cmd), "%s %s", k->cmd, sub);
    snprintf(missing, sizeof(missing), "give the %s's id", k->label);
    const cmd_args args = {.help = k->cmd,
                           .extra = list ? k->filters : NULL,
                           .allow = list ? ALLOW_LIST : 0,
                           .min = list ? 0 : 1,
                           .max = list ? 0 : 1,
                           .missing = missing};
    int rc = begin(&o, cmd, &args, argc - 1, argv + 1);
    if (rc != GO)
        return rc;
    if (!list)
        return show_one(&o, k->coll, print_fields);
    char path[64], noun[64];
    snprintf(path, sizeof(path), "/v1/%s", k->coll);
    snprintf(noun, sizeof(noun), "%ss", k->label);
    const list_def l = {path, k->filters, NULL, true, k->cols, noun};
    return list_cmd(&o, &l);
}

static int cmd_org(int argc, char **argv)
{
    return record_cmd(&kinds[0], argc, argv);
}

static int cmd_provider(int argc, char **argv)
{
    return record_cmd(&kinds[1], argc, argv);
}

static int cmd_patient(int argc, char **argv)
{
    return record_cmd(&kinds[2], argc, argv);
}

static int cmd_partnership(int argc, char **argv)
{
    return record_cmd(&kinds[3], argc, argv);
}

static int cmd_consent(int argc, char **argv)
{
    return record_cmd(&kinds[4], argc, argv);
}

/* ---- instances ----------------------------------------------------------- */

static int cmd_start(int argc, char **argv)
{
    static const char *const extra[] = {"input", "id", NULL};
    static const cmd_args args = {
        .help = "start", .extra = extra, .min = 1, .max = 1, .missing = "give the workflow's name"};
    opts o;
    cJSON *doc;
    int rc = begin(&o, "start", &args, argc, argv);
    if (rc != GO)
        return rc;
    const char *input = opt_val(&o, "input"), *id = opt_val(&o, "id");
    cJSON *in = input ? read_object(input, "--input", "start") : cJSON_CreateObject();
    if (!in)
        return CM_EXIT_FAIL;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "workflow", o.operand[0]);
    cJSON_AddItemToObject(body, "input", in);
    if (id)
        cJSON_AddStringToObject(body, "id", id);
    rc = send_to(&o, "POST", "instances", NULL, NULL, body, &doc);
    if (doc)
        printf("started %s instance %s: state %s\n", o.operand[0],
               or_q(cJSON_GetStringValue(cJSON_GetObjectItem(doc, "instance"))),
               or_q(cJSON_GetStringValue(cJSON_GetObjectItem(doc, "state"))));
    cJSON_Delete(doc);
    return rc;
}

/* What a signal's answer says: applied, held (paused) or kept (handler failed). */
static int signal_outcome(client *c, const cm_httpc_resp *r, const char *instance,
                          const char *event)
{
    cJSON *doc = answer_json(c, r);
    if (!doc)
        return CM_EXIT_FAIL;
    const cJSON *e = cJSON_GetObjectItem(doc, "error");
    const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(doc, "state"));
    int rc = CM_EXIT_OK;
    if (cJSON_IsTrue(cJSON_GetObjectItem(doc, "kept")) && e) {
        if (c->o->json)
            print_raw(r);
        char line[1024];
        rc = say(CM_EXIT_FAIL, c->o->cmd,
                 "%s: %s; event %s kept for retry, not applied (see 'caremesh failed')",
                 or_s(cJSON_GetStringValue(cJSON_GetObjectItem(e, "code")), "handler_failed"),
                 first_line(or_s(cJSON_GetStringValue(cJSON_GetObjectItem(e, "message")), ""), line,
                            sizeof(line)),
                 event);
    } else if (c->o->json) {
        print_raw(r);
    } else if (cJSON_IsTrue(cJSON_GetObjectItem(doc, "held"))) {
        printf("instance %s is paused: event %s held until it resumes\n", instance, event);
    } else {
        printf("instance %s: %s -> state %s\n", instance, event, state ? state : "?");
    }
    cJSON_Delete(doc);
    return rc;
}

static int cmd_signal(int argc, char **argv)
{
    static const cmd_args args = {
        .help = "signal", .min = 2, .max = 3, .missing = "give INSTANCE EVENT [JSON]"};
    opts o;
    client c;
    cm_httpc_resp r;
    int rc = begin(&o, "signal", &args, argc, argv);
    if (rc != GO)
        return rc;
    cJSON *payload = NULL, *body = cJSON_CreateObject();
    if (o.noperands == 3 && !(payload = read_object(o.operand[2], "the payload", "signal"))) {
        cJSON_Delete(body);
        return CM_EXIT_FAIL;
    }
    cJSON_AddStringToObject(body, "event", o.operand[1]);
    if (payload)
        cJSON_AddItemToObject(body, "payload", payload);
    char *target = item_target("instances", o.operand[0], "events");
    rc = target ? open_client(&c, &o) : say(CM_EXIT_FAIL, "signal", "out of memory");
    if (rc == 0) {
        rc = call(&c, "POST", target, body, &r);
        if (rc == 0) {
            rc = signal_outcome(&c, &r, o.operand[0], o.operand[1]);
            cm_httpc_resp_free(&r);
        }
        client_close(&c);
    }
    free(target);
    cJSON_Delete(body);
    return rc;
}

static const column instance_cols[] = {
    {"ID", "id"},         {"WORKFLOW", "workflow"}, {"REV", "rev"},         {"STATE", "state"},
    {"STATUS", "status"}, {"PATIENT", "patient"},   {"UPDATED", "updated"}, {NULL, NULL}};

static int cmd_instances(int argc, char **argv)
{
    static const char *const filters[] = {"workflow", "state", "status", "patient", NULL};
    static const cmd_args args = {.help = "instances", .extra = filters, .allow = ALLOW_LIST};
    static const list_def list = {"/v1/instances", filters, NULL, true, instance_cols, "instances"};
    opts o;
    int rc = begin(&o, "instances", &args, argc, argv);
    return rc != GO ? rc : list_cmd(&o, &list);
}

/* Milliseconds since the epoch as UTC text. */
static void ms_text(double ms, char *out, size_t outsz)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !gmtime_r(&s, &tm) || strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, outsz, "%.0f", ms);
}

static void print_json_block(const char *label, const cJSON *v)
{
    char *t = v ? cJSON_Print(v) : NULL;
    printf("%s:\n", label);
    if (!t || cJSON_GetArraySize(v) == 0) {
        printf("  (none)\n");
    } else {
        /* cJSON indents with tabs and puts one after ':' (a tab inside a string is
        ** escaped): two spaces per level, one space after ':' */
        printf("  ");
        for (const char *q = t; *q; q++) {
            if (*q == '\t')
                fputs(q > t && q[-1] == ':' ? " " : "  ", stdout);
            else if (*q == '\n')
                fputs("\n  ", stdout);
            else
                fputc(*q, stdout);
        }
        fputc('\n', stdout);
    }
    free(t);
}

static void show_instance(const cJSON *doc)
{
    static const char *const head[] = {"id",     "workflow", "rev",     "state",
                                       "status", "parent",   "created", "updated"};
    char buf[512];
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); i++) {
        render(cJSON_GetObjectItem(doc, head[i]), buf, sizeof(buf));
        printf("%-9s %s\n", head[i], buf);
    }
    print_json_block("input", cJSON_GetObjectItem(doc, "input"));
    print_json_block("context", cJSON_GetObjectItem(doc, "context"));
    /* timers: due_ms as a time */
    cJSON *timers = cJSON_Duplicate(cJSON_GetObjectItem(doc, "timers"), true), *t;
    printf("timers:\n");
    if (cJSON_GetArraySize(timers) == 0) {
        printf("  (none)\n");
    } else {
        static const column cols[] = {{"NAME", "name"},
                                      {"DUE", "due"},
                                      {"SCOPE", "scope"},
                                      {"PAYLOAD", "payload"},
                                      {NULL, NULL}};
        cJSON_ArrayForEach(t, timers)
        {
            ms_text(cJSON_GetNumberValue(cJSON_GetObjectItem(t, "due_ms")), buf, sizeof(buf));
            cJSON_AddStringToObject(t, "due", buf);
        }
        print_table(timers, cols);
    }
    cJSON_Delete(timers);
    const cJSON *history = cJSON_GetObjectItem(doc, "history");
    printf("history:\n");
    if (cJSON_GetArraySize(history) == 0) {
        printf("  (none)\n");
    } else {
        static const column cols[] = {{"STEP", "step"}, {"AT", "at"}, {"EVENT", "event"},
                                      {"FROM", "from"}, {"TO", "to"}, {"NOTE", "note"},
                                      {NULL, NULL}};
        print_table(history, cols);
    }
}

static int cmd_show(int argc, char **argv)
{
    static const cmd_args args = {
        .help = "show", .min = 1, .max = 1, .missing = "give the instance's id"};
    opts o;
    int rc = begin(&o, "show", &args, argc, argv);
    return rc != GO ? rc : show_one(&o, "instances", show_instance);
}

/* pause, resume, cancel INSTANCE: operator actions. */
static int instance_action(int argc, char **argv, const char *verb)
{
    static const char *const cancel_extra[] = {"reason", NULL};
    const cmd_args args = {.help = verb,
                           .extra = strcmp(verb, "cancel") == 0 ? cancel_extra : NULL,
                           .min = 1,
                           .max = 1,
                           .missing = "give the instance's id"};
    opts o;
    cJSON *doc;
    int rc = begin(&o, verb, &args, argc, argv);
    if (rc != GO)
        return rc;
    rc = send_to(&o, "POST", "instances", o.operand[0], verb, body_of_opt(&o, "reason"), &doc);
    const cJSON *queued = doc ? cJSON_GetObjectItem(doc, "queued") : NULL;
    if (doc)
        printf("instance %s: state %s, status %s\n", o.operand[0],
               or_q(cJSON_GetStringValue(cJSON_GetObjectItem(doc, "state"))),
               or_q(cJSON_GetStringValue(cJSON_GetObjectItem(doc, "status"))));
    if (cJSON_IsNumber(queued) && queued->valuedouble > 0) /* the state is from before them */
        printf("%.0f held event(s) queued to run now; 'caremesh show %s' shows the state after "
               "them\n",
               queued->valuedouble, o.operand[0]);
    cJSON_Delete(doc);
    return rc;
}

static int cmd_pause(int argc, char **argv)
{
    return instance_action(argc, argv, "pause");
}

static int cmd_resume(int argc, char **argv)
{
    return instance_action(argc, argv, "resume");
}

static int cmd_cancel(int argc, char **argv)
{
    return instance_action(argc, argv, "cancel");
}

/* ---- tasks --------------------------------------------------------------- */

static int tasks_complete(int argc, char **argv)
{
    static const char *const extra[] = {"note", NULL};
    static const cmd_args args = {
        .help = "tasks", .extra = extra, .min = 1, .max = 1, .missing = "give the task's id"};
    opts o;
    int rc = begin(&o, "tasks complete", &args, argc, argv);
    if (rc != GO)
        return rc;
    rc = send_to(&o, "POST", "tasks", o.operand[0], "complete", body_of_opt(&o, "note"), NULL);
    if (rc == 0 && !o.json)
        printf("task %s completed\n", o.operand[0]);
    return rc;
}

static int cmd_tasks(int argc, char **argv)
{
    static const char *const filters[] = {"status", "patient", "organization",
                                          "owner",  "role",    NULL};
    static const char *const params[] = {"status", "patient", "organization", "owner", "ownerRole"};
    static const column cols[] = {{"ID", "id"},
                                  {"TITLE", "title"},
                                  {"STATUS", "status"},
                                  {"PRIORITY", "priority"},
                                  {"ORGANIZATION", "organization"},
                                  {"PATIENT", "patient"},
                                  {"OWNER", "owner"},
                                  {"ROLE", "ownerRole"},
                                  {"DUE", "due"},
                                  {NULL, NULL}};
    static const cmd_args args = {
        .help = "tasks", .extra = filters, .allow = ALLOW_LIST, .known = "subcommand: complete"};
    static const list_def list = {"/v1/tasks", filters, params, true, cols, "tasks"};
    opts o;
    if (argc >= 2 && strcmp(argv[1], "complete") == 0)
        return tasks_complete(argc - 1, argv + 1);
    int rc = begin(&o, "tasks", &args, argc, argv);
    return rc != GO ? rc : list_cmd(&o, &list);
}

/* ---- failed events -------------------------------------------------------- */

static int failed_action(int argc, char **argv, const char *verb)
{
    static const cmd_args args = {
        .help = "failed", .min = 1, .max = 1, .missing = "give the failed event's SEQ"};
    char cmd[32], seq_text[32];
    opts o;
    long seq;
    snprintf(cmd, sizeof(cmd), "failed %s", verb);
    int rc = begin(&o, cmd, &args, argc, argv);
    if (rc != GO)
        return rc;
    if (!parse_long(o.operand[0], 1, LONG_MAX, &seq))
        return say(CM_EXIT_USAGE, cmd, "\"%s\" is not a SEQ (a positive whole number)",
                   o.operand[0]);
    snprintf(seq_text, sizeof(seq_text), "%ld", seq);
    rc = send_to(&o, "POST", "failed-events", seq_text, verb, NULL, NULL);
    if (rc == 0 && !o.json)
        printf("failed event %ld: %s\n", seq,
               strcmp(verb, "retry") == 0 ? "due now, attempts reset" : "discarded");
    return rc;
}

static int cmd_failed(int argc, char **argv)
{
    static const column cols[] = {
        {"SEQ", "seq"},       {"INSTANCE", "instance"}, {"EVENT", "name"}, {"ATTEMPTS", "attempts"},
        {"STATUS", "status"}, {"ERROR", "error"},       {NULL, NULL}};
    static const cmd_args args = {
        .help = "failed", .allow = ALLOW_LIST, .known = "subcommands: retry, discard"};
    static const list_def list = {"/v1/failed-events", NULL, NULL, true, cols, "failed events"};
    opts o;
    if (argc >= 2 && (strcmp(argv[1], "retry") == 0 || strcmp(argv[1], "discard") == 0))
        return failed_action(argc - 1, argv + 1, argv[1]);
    int rc = begin(&o, "failed", &args, argc, argv);
    return rc != GO ? rc : list_cmd(&o, &list);
}

/* ---- kpi ----------------------------------------------------------------- */

static int cmd_kpi(int argc, char **argv)
{
    static const char *const filters[] = {"name", "workflow", "since", NULL};
    static const column cols[] = {{"NAME", "name"}, {"COUNT", "count"}, {"SUM", "sum"},
                                  {"MIN", "min"},   {"MAX", "max"},     {"LAST", "last_at"},
                                  {NULL, NULL}};
    static const cmd_args args = {.help = "kpi", .extra = filters};
    static const list_def list = {"/v1/kpis", filters, NULL, false, cols, "KPI observations"};
    opts o;
    int rc = begin(&o, "kpi", &args, argc, argv);
    return rc != GO ? rc : list_cmd(&o, &list);
}

/* ---- status -------------------------------------------------------------- */

/* GET path into *doc (NULL allowed to only check); the HTTP status in *status
** even when it is an error (503 from /readyz is an answer, not a failure). */
static int get_doc(client *c, const char *path, cJSON **doc, int *status, bool quiet)
{
    cm_err err;
    cm_httpc_fail fail;
    cm_httpc_resp r;
    *doc = NULL;
    if (cm_httpc_request(c->http, "GET", path, c->auth, NULL, 0, &r, &fail, &err) != 0) {
        if (quiet && fail == CM_HTTPC_UNREACHABLE)
            return UNREACHABLE;
        return report_transport(c, fail, &err);
    }
    *status = r.status;
    if (r.status == 401 || r.status == 403 || (r.status >= 400 && r.status != 503)) {
        int rc = report_http_error(c, &r);
        cm_httpc_resp_free(&r);
        return rc;
    }
    *doc = cJSON_ParseWithLength(r.body, r.len);
    cm_httpc_resp_free(&r);
    return 0;
}

static int cmd_status(int argc, char **argv)
{
    opts o;
    client c;
    cJSON *health = NULL, *ready = NULL, *wfs = NULL, *peers = NULL, *failed = NULL;
    int hs = 0, rs = 0, ws = 0, ps = 0, fs = 0;
    static const cmd_args args = {.help = "status"};
    int rc = begin(&o, "status", &args, argc, argv);
    if (rc != GO)
        return rc;
    if ((rc = open_client(&c, &o)) != 0)
        return rc;
    if ((rc = get_doc(&c, "/healthz", &health, &hs, false)) != 0 ||
        (rc = get_doc(&c, "/readyz", &ready, &rs, false)) != 0 ||
        (rc = get_doc(&c, "/v1/workflows", &wfs, &ws, false)) != 0 ||
        (rc = get_doc(&c, "/v1/peers", &peers, &ps, false)) != 0 ||
        (rc = get_doc(&c, "/v1/failed-events?limit=1000", &failed, &fs, false)) != 0)
        goto done;
    const cJSON *wl = cJSON_GetObjectItem(wfs, "items"), *pl = cJSON_GetObjectItem(peers, "items");
    const cJSON *fl = cJSON_GetObjectItem(failed, "items"), *it;
    bool more_failed = cJSON_IsString(cJSON_GetObjectItem(failed, "next_cursor"));
    if (o.json) {
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddStringToObject(doc, "address", cm_httpc_address(c.http));
        cJSON_AddItemToObject(doc, "health", health ? health : cJSON_CreateNull());
        cJSON_AddItemToObject(doc, "ready", ready ? ready : cJSON_CreateNull());
        cJSON_AddItemToObject(doc, "workflows", wfs ? wfs : cJSON_CreateNull());
        cJSON_AddItemToObject(doc, "peers", peers ? peers : cJSON_CreateNull());
        cJSON_AddNumberToObject(doc, "failed_events", cJSON_GetArraySize(fl));
        cJSON_AddBoolToObject(doc, "failed_events_more", more_failed);
        health = ready = wfs = peers = NULL;
        print_json(doc);
    } else {
        printf("node       %s: %s, %s\n", cm_httpc_address(c.http),
               hs == 200 ? "healthy" : "unhealthy", rs == 200 ? "ready" : "not ready");
        printf("workflows  %d", cJSON_GetArraySize(wl));
        int i = 0;
        cJSON_ArrayForEach(it, wl)
            printf("%s%s (rev %d)", i++ ? ", " : ": ",
                   or_q(cJSON_GetStringValue(cJSON_GetObjectItem(it, "name"))),
                   (int)cJSON_GetNumberValue(cJSON_GetObjectItem(it, "current_rev")));
        printf("\n");
        if (!cJSON_IsTrue(cJSON_GetObjectItem(peers, "federation"))) {
            printf("peers      federation not configured\n");
        } else {
            int up = 0, n = 0;
            double pending = 0;
            cJSON_ArrayForEach(it, pl)
            {
                n++;
                up += cJSON_IsTrue(cJSON_GetObjectItem(it, "up"));
                pending += cJSON_GetNumberValue(cJSON_GetObjectItem(it, "outbox_depth"));
            }
            printf("peers      %d of %d up, %.0f message(s) pending\n", up, n, pending);
        }
        printf("failed     %d%s event(s) kept with an error%s\n", cJSON_GetArraySize(fl),
               more_failed ? "+" : "", cJSON_GetArraySize(fl) ? " (caremesh failed)" : "");
    }
    rc = rs == 200 ? CM_EXIT_OK : CM_EXIT_FAIL;
done:
    cJSON_Delete(health);
    cJSON_Delete(ready);
    cJSON_Delete(wfs);
    cJSON_Delete(peers);
    cJSON_Delete(failed);
    client_close(&c);
    return rc;
}

/* ---- peers and audit: API first, the database when the node is down ------ */

/* Open a client, or tell whether the database should be read instead:
** returns 0 (client open), 1 (read the database; note given) or the exit code. */
static int open_or_fallback(client *c, const opts *o)
{
    why w;
    if (o->offline) {
        if (!o->data)
            return say(CM_EXIT_USAGE, o->cmd, "--offline needs --data DIR (or CAREMESH_DATA)");
        return 1;
    }
    if (client_open(c, o, &w) == 0)
        return 0;
    if (w.fallback) {
        fprintf(stderr, "caremesh %s: %s; reading %s directly\n", o->cmd, w.msg, o->data);
        return 1;
    }
    return say(w.exit, o->cmd, "%s", w.msg);
}

/* The first request: unreachable with a data dir means the database. */
static int first_get(client *c, const char *path, cm_httpc_resp *r, bool *offline)
{
    *offline = false;
    int rc = call_ex(c, "GET", path, NULL, r, true);
    if (rc != UNREACHABLE)
        return rc;
    if (c->o->data && c->o->api == NULL && !(getenv("CAREMESH_API") && *getenv("CAREMESH_API"))) {
        fprintf(stderr, "caremesh %s: node not reachable at %s; reading %s directly\n", c->o->cmd,
                cm_httpc_address(c->http), c->o->data);
        *offline = true;
        return 0;
    }
    return call(c, "GET", path, NULL, r); /* again, to report it */
}

/* The first GET of a command that can read the database instead: GO with
** *r and the client open, or the exit code (offline's when the database was
** read). */
static int get_or_offline(client *c, const opts *o, const char *path, cm_httpc_resp *r,
                          cm_cliapi_offline_fn offline)
{
    bool off;
    int rc = open_or_fallback(c, o);
    if (rc != 0)
        return rc == 1 ? offline(o->data, o->config, o->json) : rc;
    rc = first_get(c, path, r, &off);
    if (rc != 0 || off) {
        client_close(c);
        return rc != 0 ? rc : offline(o->data, o->config, o->json);
    }
    return GO;
}

int cm_cliapi_peers(int argc, char **argv, cm_cliapi_offline_fn offline)
{
    static const column cols[] = {{"PEER", "id"},
                                  {"ENDPOINT", "endpoint"},
                                  {"UP", "up"},
                                  {"PENDING", "outbox_depth"},
                                  {"OLDEST_S", "oldest_pending_s"},
                                  {"PARKED", "parked"},
                                  {"PUBLIC KEY", "public_key"},
                                  {NULL, NULL}};
    static const cmd_args args = {.allow = ALLOW_OFFLINE};
    opts o;
    client c;
    cm_httpc_resp r;
    int rc = begin(&o, "peers", &args, argc, argv);
    if (rc != GO || (rc = get_or_offline(&c, &o, "/v1/peers", &r, offline)) != GO)
        return rc;
    rc = 0;
    if (o.json) {
        print_raw(&r);
    } else {
        cJSON *doc = answer_json(&c, &r);
        const cJSON *items = cJSON_GetObjectItem(doc, "items");
        if (!doc)
            rc = CM_EXIT_FAIL;
        else if (!cJSON_IsTrue(cJSON_GetObjectItem(doc, "federation")))
            printf("federation is not configured (see docs/federation.md)\n");
        else if (cJSON_GetArraySize(items) == 0)
            printf("no peers configured\n");
        else
            print_table(items, cols);
        cJSON_Delete(doc);
    }
    cm_httpc_resp_free(&r);
    client_close(&c);
    return rc;
}

int cm_cliapi_audit(int argc, char **argv, cm_cliapi_offline_fn offline)
{
    static const cmd_args args = {.allow = ALLOW_OFFLINE};
    opts o;
    client c;
    cm_httpc_resp r;
    if (argc < 2 || strcmp(argv[1], "verify") != 0) {
        if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))
            return CM_CLIAPI_HELP;
        return say(CM_EXIT_USAGE, "audit", "expected 'verify'");
    }
    int rc = begin(&o, "audit verify", &args, argc - 1, argv + 1);
    if (rc != GO || (rc = get_or_offline(&c, &o, "/v1/audit/verify", &r, offline)) != GO)
        return rc;
    rc = 0;
    cJSON *doc = answer_json(&c, &r);
    long entries = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(doc, "entries"));
    bool intact = cJSON_IsTrue(cJSON_GetObjectItem(doc, "ok"));
    if (!doc) {
        rc = CM_EXIT_FAIL;
    } else if (o.json) {
        print_raw(&r);
        rc = intact ? CM_EXIT_OK : CM_EXIT_FAIL;
    } else if (intact) {
        printf("audit trail intact: %ld entr%s\n", entries, entries == 1 ? "y" : "ies");
    } else {
        rc = say(CM_EXIT_FAIL, o.cmd, "%s",
                 or_q(cJSON_GetStringValue(cJSON_GetObjectItem(doc, "problem"))));
    }
    cJSON_Delete(doc);
    cm_httpc_resp_free(&r);
    client_close(&c);
    return rc;
}

/* ---- the table of commands ------------------------------------------------ */

#define CONN_HELP                                                                                  \
    "  --api HOST:PORT  the node's API (or CAREMESH_API; default: the data dir's api.listen,\n"    \
    "                   else 127.0.0.1:7600)\n"                                                    \
    "  --token TOKEN    bearer token (or CAREMESH_TOKEN; default: DIR/cli.token, saved by\n"       \
    "                   'caremesh token create --save')\n"                                         \
    "  --data DIR       data directory for the address and token (or CAREMESH_DATA)\n"             \
    "  --config FILE    configuration file (default DIR/caremesh.conf)\n"                          \
    "  --timeout S      seconds to wait for each answer (default 30; connect: 5)\n"                \
    "  --json           print the API's JSON instead of a table\n"
#define LIST_HELP                                                                                  \
    "  --limit N        at most N items (default: every page)\n"                                   \
    "  --progress       show the count fetched on stderr while paging (default: on a terminal)\n"

#define RECORD_HELP(label, flags, filters)                                                         \
    "Records of the node: add one (a JSON document from FILE, '-' for stdin, inline JSON,\n"       \
    "or flags; flags are set over the document), show one, or list them (every page;\n"            \
    "filters are ANDed). Fields: docs/records.md.\n\n"                                             \
    "  add [FILE|-|JSON] " flags "\n"                                                              \
    "  show ID\n"                                                                                  \
    "  list " filters "\n" CONN_HELP LIST_HELP

static const cm_cliapi_cmd api_cmds[] = {
    {"status", "the running node: health, readiness, workflows, peers, failed events",
     "Ask the running node how it is: healthy, ready, the workflows loaded, peers up and\n"
     "messages pending, events kept with an error. Exit 0 when ready, 1 otherwise.\n\n" CONN_HELP,
     "status [--api HOST:PORT] [--token TOKEN] [--data DIR] [--json]", cmd_status},
    {"org", "add, show and list organizations (API)",
     RECORD_HELP("organization",
                 "[--id ID] [--name NAME] [--kind KIND] [--node NODE]\n"
                 "                    [--phone P] [--email E]",
                 "[--kind KIND] [--node NODE]"),
     "org add [FILE|-|JSON] [FLAGS] | show ID | list [FILTERS]  [CONNECTION]", cmd_org},
    {"provider", "add, show and list providers (API)",
     RECORD_HELP("provider",
                 "[--id ID] [--family NAME] [--given NAME] [--role ROLE]\n"
                 "                    [--organization ORG] [--specialty S] [--phone P] [--email E]",
                 "[--role ROLE] [--organization ORG]"),
     "provider add [FILE|-|JSON] [FLAGS] | show ID | list [FILTERS]  [CONNECTION]", cmd_provider},
    {"patient", "add, show and list patients (API)",
     RECORD_HELP(
         "patient",
         "[--id ID] [--family NAME] [--given NAME] [--birth-date YYYY-MM-DD]\n"
         "                    [--gender G] [--phone P] [--email E] [--language TAG] [--gp ORG]",
         "[--condition CODE] [--identifier V] [--gender G] [--language TAG]\n"
         "       [--preferredChannel C] [--generalPractitioner ORG] [--birthDate D]"),
     "patient add [FILE|-|JSON] [FLAGS] | show ID | list [FILTERS]  [CONNECTION]", cmd_patient},
    {"partnership", "add, show and list partnerships (API)",
     RECORD_HELP("partnership", "(a JSON document only)", "[--member ORG] [--status S]"),
     "partnership add [FILE|-|JSON] | show ID | list [FILTERS]  [CONNECTION]", cmd_partnership},
    {"consent", "add, show and list consents (API)",
     RECORD_HELP("consent",
                 "[--id ID] [--patient P] [--purpose P] [--decision permit|deny]\n"
                 "                    [--organization ORG] [--note TEXT]",
                 "[--patient P] [--purpose P] [--organization ORG] [--decision D]"),
     "consent add [FILE|-|JSON] [FLAGS] | show ID | list [FILTERS]  [CONNECTION]", cmd_consent},
    {"start", "start a workflow instance (API)",
     "Start an instance of WORKFLOW with its input, and print its id and first state once\n"
     "the start committed. JSON arguments are inline JSON, @FILE (or a file name), or '-'\n"
     "for stdin.\n\n"
     "  --input JSON     the instance's input (default {})\n"
     "  --id ID          the instance's id (default: one the node makes)\n" CONN_HELP,
     "start WORKFLOW [--input JSON|@FILE|-] [--id ID] [CONNECTION]", cmd_start},
    {"signal", "send an event to an instance (API)",
     "Send EVENT (with an optional JSON payload: inline, @FILE or '-') to INSTANCE and print\n"
     "its new state once committed. A paused instance holds the event (exit 0); when the\n"
     "handler fails the event is kept for retry ('caremesh failed') and the exit is "
     "1.\n\n" CONN_HELP,
     "signal INSTANCE EVENT [JSON|@FILE|-] [CONNECTION]", cmd_signal},
    {"instances", "list workflow instances (API)",
     "List workflow instances, oldest first, with filters (ANDed).\n\n"
     "  --workflow NAME  --state STATE  --status running|paused|done|cancelled\n"
     "  --patient ID     (the input's patient)\n" CONN_HELP LIST_HELP,
     "instances [--workflow W] [--state S] [--status S] [--patient P] [--limit N] [CONNECTION]",
     cmd_instances},
    {"show", "show one instance: state, context, timers, history (API)",
     "Show one workflow instance: its state and status, input, context, pending timers and\n"
     "history.\n\n" CONN_HELP,
     "show INSTANCE [CONNECTION]", cmd_show},
    {"pause", "pause an instance: its events and timers wait (API)",
     "Pause INSTANCE: events sent to it and its due timers are kept, not run, until it\n"
     "resumes. 409 wrong_state (exit 1) when it is not running.\n\n" CONN_HELP,
     "pause INSTANCE [CONNECTION]", cmd_pause},
    {"resume", "resume a paused instance (API)",
     "Resume INSTANCE: what it held runs now.\n\n" CONN_HELP, "resume INSTANCE [CONNECTION]",
     cmd_resume},
    {"cancel", "cancel an instance (API)",
     "Cancel INSTANCE: it ends, its timers are dropped.\n\n"
     "  --reason TEXT    why (kept in its history)\n" CONN_HELP,
     "cancel INSTANCE [--reason TEXT] [CONNECTION]", cmd_cancel},
    {"tasks", "list tasks; complete one (API)",
     "List the tasks workflows made, with filters (ANDed), or complete one.\n\n"
     "  --status S  --patient P  --organization ORG  --owner PROVIDER  --role ROLE\n"
     "  complete ID [--note TEXT]   mark a task completed\n" CONN_HELP LIST_HELP,
     "tasks [FILTERS] [--limit N] | tasks complete ID [--note TEXT]  [CONNECTION]", cmd_tasks},
    {"failed", "list events kept with an error; retry or discard one (API)",
     "List events whose handler failed (retrying with backoff, or parked), or act on one\n"
     "parked event by its SEQ.\n\n"
     "  retry SEQ       make it due now with its attempts reset\n"
     "  discard SEQ     delete it\n" CONN_HELP LIST_HELP,
     "failed [--limit N] | failed retry SEQ | failed discard SEQ  [CONNECTION]", cmd_failed},
    {"kpi", "KPI observations aggregated by name (API)",
     "KPI observations recorded by workflows, aggregated by name: count, sum, min, max and\n"
     "the time of the last.\n\n"
     "  --name NAME  --workflow NAME  --since DATE|DATETIME\n" CONN_HELP,
     "kpi [--name N] [--workflow W] [--since D] [CONNECTION]", cmd_kpi},
};

#define N_API_CMDS (sizeof(api_cmds) / sizeof(api_cmds[0]))

const cm_cliapi_cmd *cm_cliapi_find(const char *name)
{
    for (size_t i = 0; i < N_API_CMDS; i++)
        if (strcmp(api_cmds[i].name, name) == 0)
            return &api_cmds[i];
    return NULL;
}

int cm_cliapi_help(const cm_cliapi_cmd *cmd)
{
    printf("usage: caremesh %s\n\n%s", cmd->usage, cmd->summary);
    return CM_EXIT_OK;
}

void cm_cliapi_overview(FILE *out)
{
    fprintf(out, "\ncommands that talk to a running node's API (docs/cli.md):\n");
    for (size_t i = 0; i < N_API_CMDS; i++)
        fprintf(out, "  %-11s %s\n", api_cmds[i].name, api_cmds[i].brief);
}
