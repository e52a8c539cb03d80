/*
** text.c -- UTF-8 and id checks, JSON's \u escapes.
*/
#include "text.h"

#include <stdint.h>
#include <string.h>

bool cm_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        uint64_t w; /* ASCII 8 bytes at a time: most text, a JSON body */
        if (len - i >= sizeof(w)) {
            memcpy(&w, s + i, sizeof(w));
            if (!(w & 0x8080808080808080u)) {
                i += sizeof(w);
                continue;
            }
        }
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if (i + k >= len || (s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false; /* overlong, surrogate, beyond U+10FFFF */
        i += n + 1;
    }
    return true;
}

long cm_id_check(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > CM_ID_MAX)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (!cm_id_char(s[i]))
            return (long)i + 1;
    return 0;
}

long cm_hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

size_t cm_utf8_put(unsigned cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- a JSON object's text, checked ------------------------------------- */

typedef struct jscan {
    const char *p, *end;
} jscan;

static void js_space(jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n'))
        s->p++;
}

static bool js_digits(jscan *s)
{
    const char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start;
}

/* \uXXXX at s->p (past the backslash's 'u'): its code unit, or -1. */
static long js_unit(jscan *s)
{
    if (s->end - s->p < 4)
        return -1;
    long v = cm_hex4(s->p);
    if (v >= 0)
        s->p += 4;
    return v;
}

static bool js_string(jscan *s)
{
    s->p++; /* the opening quote */
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            s->p++;
            return true;
        }
        if (c < 0x20)
            return false;
        s->p++;
        if (c != '\\')
            continue;
        if (s->p == s->end)
            return false;
        c = (unsigned char)*s->p;
        if (c != 'u') {
            if (c == '\0' || !strchr("\"\\/bfnrt", c))
                return false;
            s->p++;
            continue;
        }
        s->p++;
        long u = js_unit(s);
        if (u <= 0 || (u >= 0xDC00 && u <= 0xDFFF))
            return false; /* bad, \u0000 (cJSON would cut the string there), a lone low half */
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
                return false;
            s->p += 2;
            long low = js_unit(s);
            if (low < 0xDC00 || low > 0xDFFF)
                return false;
        }
    }
    return false;
}

static bool js_number(jscan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (s->p == s->end || *s->p < '1' || *s->p > '9' || !js_digits(s))
        return false;
    if (s->p < s->end && *s->p == '.' && (s->p++, !js_digits(s)))
        return false;
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!js_digits(s))
            return false;
    }
    return true;
}

static bool js_word(jscan *s, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return false;
    s->p += n;
    return true;
}

static bool js_value(jscan *s, int depth);

/* An object or array (s->p at its opening bracket), depth its nesting. */
static bool js_container(jscan *s, int depth)
{
    char close = *s->p == '{' ? '}' : ']';
    if (depth > CM_JSON_DEPTH_MAX)
        return false;
    s->p++;
    js_space(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return true;
    }
    for (;;) {
        if (close == '}') {
            if (s->p == s->end || *s->p != '"' || !js_string(s))
                return false;
            js_space(s);
            if (s->p == s->end || *s->p != ':')
                return false;
            s->p++;
            js_space(s);
        }
        if (!js_value(s, depth))
            return false;
        js_space(s);
        if (s->p == s->end)
            return false;
        if (*s->p == close) {
            s->p++;
            return true;
        }
        if (*s->p != ',')
            return false;
        s->p++;
        js_space(s);
    }
}

static bool js_value(jscan *s, int depth)
{
    if (s->p == s->end)
        return false;
    switch (*s->p) {
    case '{':
    case '[':
        return js_container(s, depth + 1);
    case '"':
        return js_string(s);
    case 't':
        return js_word(s, "true");
    case 'f':
        return js_word(s, "false");
    case 'n':
        return js_word(s, "null");
    default:
        return js_number(s);
    }
}

size_t cm_json_object_len(const char *text, size_t len, int depth)
{
    jscan s = {text, text + len};
    return len > 0 && *text == '{' && js_container(&s, depth) ? (size_t)(s.p - text) : 0;
}

size_t cm_json_object_check(const char *text, size_t len)
{
    jscan s = {text, text + len};
    js_space(&s);
    if (s.p < s.end && *s.p == '{' && js_container(&s, 1)) {
        js_space(&s);
        if (s.p == s.end)
            return 0;
    }
    return (size_t)(s.p - text) + 1;
}
