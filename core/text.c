/*
** text.c -- UTF-8 and id checks, JSON's \u escapes, a JSON scanner that builds nothing.
*/
#include "text.h"

#include <limits.h>
#include <stddef.h>
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

/* ---- a JSON scanner: values checked and stepped over, nothing built ---- */

/* Bytes a string cannot hold as they are: the quote, the backslash and
** control characters. */
static const unsigned char str_stop[256] = {
    [0] = 1,  [1] = 1,  [2] = 1,  [3] = 1,  [4] = 1,  [5] = 1,   [6] = 1,   [7] = 1,  [8] = 1,
    [9] = 1,  [10] = 1, [11] = 1, [12] = 1, [13] = 1, [14] = 1,  [15] = 1,  [16] = 1, [17] = 1,
    [18] = 1, [19] = 1, [20] = 1, [21] = 1, [22] = 1, [23] = 1,  [24] = 1,  [25] = 1, [26] = 1,
    [27] = 1, [28] = 1, [29] = 1, [30] = 1, [31] = 1, ['"'] = 1, ['\\'] = 1};

/* p stepped over the bytes str_stop does not hold, to the first it holds
** or to end: 8 bytes at a time (most of a string's text), then one. */
static const char *str_run(const char *p, const char *end)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (uint64_t w, stops; end - p >= (ptrdiff_t)sizeof(w); p += sizeof(w)) {
        memcpy(&w, p, sizeof(w));
        if ((stops = cm_json_stops8(w)) != 0) /* str_stop's bytes */
            return p + __builtin_ctzll(stops) / 8;
    }
#endif
    while (p < end && !str_stop[(unsigned char)*p])
        p++;
    return p;
}

void cm_json_scan_space(cm_json_scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

int cm_json_uescape(const char *p, const char *end, unsigned *cp, const char **next)
{
    long hi, lo;
    *next = p + 2;
    if (end - p < 6 || (hi = cm_hex4(p + 2)) < 0)
        return -1;
    *next = p + 6;
    if (hi >= 0xDC00 && hi <= 0xDFFF)
        return -1;
    if (hi >= 0xD800 && hi <= 0xDBFF) {
        if (end - p < 8 || p[6] != '\\' || p[7] != 'u')
            return -1;
        *next = p + 8;
        if (end - p < 12 || (lo = cm_hex4(p + 8)) < 0)
            return -1;
        *next = p + 12;
        if (lo < 0xDC00 || lo > 0xDFFF)
            return -1;
        hi = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    }
    *cp = (unsigned)hi;
    return 0;
}

/* The closing quote of a string already checked: the first one not
** escaped. */
static __attribute__((noinline)) int string_checked(cm_json_scan *s)
{
    for (const char *p = s->p + 1, *q;; p = q + 1) {
        if (!(q = memchr(p, '"', (size_t)(s->end - p))))
            return -1;
        const char *b = q;
        while (b[-1] == '\\')
            b--;
        if ((q - b) % 2 == 0) {
            s->p = q + 1;
            return 0;
        }
    }
}

/* A string from p, at the first byte of it that str_stop holds (or its
** end): its escapes stepped over and checked, to the closing quote. Out of
** line: the text of most strings needs none of it. */
static __attribute__((noinline)) int string_rest(cm_json_scan *s, const char *p)
{
    while (p < s->end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            s->p = p + 1;
            return 0;
        }
        if (c < 0x20)
            break;
        if (p + 1 < s->end && p[1] == 'u') { /* p at a backslash */
            unsigned cp;
            const char *next;
            int rc = cm_json_uescape(p, s->end, &cp, &next);
            p = next;
            if (rc != 0 || (cp == 0 && s->no_nul))
                break;
        } else {
            p++; /* the escaped character */
            if (p >= s->end || cm_json_unescape_short(*p) < 0)
                break;
            p++;
        }
        p = str_run(p, s->end);
    }
    s->p = p;
    return -1;
}

int cm_json_scan_string(cm_json_scan *s)
{
    if (s->checked)
        return string_checked(s);
    const char *p = str_run(s->p + 1, s->end);
    if (p < s->end && *p == '"') { /* plain text to the closing quote */
        s->p = p + 1;
        return 0;
    }
    return string_rest(s, p);
}

/* The least magnitude that a double rounds to infinity: 2^1024 - 2^970,
** half an ulp past DBL_MAX (the tie rounds to the even 2^1024). 309 digits. */
static const char dbl_overflow[] =
    "17976931348623158079372897140530341507993413271003782693617377898044496829276475094"
    "66490179775872070963302864166928879109465555478519404026306574886715058206819089020"
    "00708383676273854845817711531764475730270069855571366959622842914819860834936475292"
    "719074168444365510704342711559699508093042880177904174497792";

/* Is the number whose digits run from p (after any '-') to end, its
** exponent at exp (NULL: none), too large for a double -- what strtod, and
** so cJSON, reads as +-inf? Decided on the digits, without strtod, whose
** decimal point is the locale's. Cold: only numbers with an exponent or
** more than 308 integer digits come here. */
#define NUMBER_EXP_SATURATE (LLONG_MAX / 20) /* n * 10 + 9 stays below LLONG_MAX */

static __attribute__((noinline)) bool number_huge(const char *p, const char *exp, const char *end)
{
    const char *digits_end = exp ? exp : end, *q = p;
    long long e10 = 0; /* the value is 0.DDD... x 10^e10, D the first digit not 0 */
    while (q < digits_end && (*q == '0' || *q == '.'))
        q++;
    if (q == digits_end)
        return false; /* zero */
    const char *dot = memchr(p, '.', (size_t)(digits_end - p));
    e10 = dot && dot < q ? -(long long)(q - dot - 1) : (dot ? dot : digits_end) - q;
    if (exp) {
        const char *x = exp + 1;
        bool minus = *x == '-';
        long long n = 0;
        x += *x == '-' || *x == '+';
        /* saturates far past any count of digits the text can hold, so
        ** that a mantissa of a million zeros cannot offset an exponent cut
        ** short (0.<10^6 zeros>1e10000000 is inf), and cannot overflow */
        for (; x < end; x++)
            if (n < NUMBER_EXP_SATURATE)
                n = n * 10 + (*x - '0');
        e10 += minus ? -n : n;
    }
    if (e10 != (long long)sizeof(dbl_overflow) - 1)
        return e10 > (long long)sizeof(dbl_overflow) - 1;
    /* as many integer digits as the threshold: compare digit by digit */
    for (const char *t = dbl_overflow; *t; t++, q++) {
        while (q < digits_end && *q == '.')
            q++;
        char d = q < digits_end ? *q : '0';
        if (d != *t)
            return d > *t;
    }
    return true; /* the threshold itself or more */
}

static int scan_number(cm_json_scan *s)
{
    const char *p = s->p, *e = s->end, *digits, *exp = NULL;
    int rc = -1;
    if (p < e && *p == '-')
        p++;
    digits = p;
    if (p >= e || *p < '0' || *p > '9')
        goto done;
    if (*p == '0')
        p++;
    else
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    bool long_int = p - digits > (ptrdiff_t)sizeof(dbl_overflow) - 2; /* 309 digits or more */
    if (p < e && *p == '.') {
        if (++p >= e || *p < '0' || *p > '9')
            goto done;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        exp = p;
        if (++p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || *p < '0' || *p > '9')
            goto done;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    if ((s->number_max > 0 && (size_t)(p - s->p) > s->number_max) ||
        ((exp || long_int) && number_huge(digits, exp, p))) {
        p = s->p;
        goto done;
    }
    rc = 0;
done:
    s->p = p;
    return rc;
}

static int scan_word(cm_json_scan *s, const char *w, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

/* An object or array at s->p; each member's value checked in turn. */
static int scan_container(cm_json_scan *s, int depth)
{
    char close = *s->p == '{' ? '}' : ']';
    s->p++;
    cm_json_scan_space(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"' || cm_json_scan_string(s) != 0)
                return -1;
            cm_json_scan_space(s);
            if (s->p >= s->end || *s->p != ':')
                return -1;
            s->p++;
            cm_json_scan_space(s);
        }
        if (cm_json_scan_value(s, depth) != 0)
            return -1;
        cm_json_scan_space(s);
        if (s->p >= s->end)
            return -1;
        if (*s->p == close) {
            s->p++;
            return 0;
        }
        if (*s->p != ',')
            return -1;
        s->p++;
        cm_json_scan_space(s);
    }
}

int cm_json_scan_value(cm_json_scan *s, int depth)
{
    if (s->p >= s->end)
        return -1;
    switch (*s->p) {
    case '"':
        return cm_json_scan_string(s);
    case '{':
    case '[':
        return depth >= CM_JSON_DEPTH_MAX ? -1 : scan_container(s, depth + 1);
    case 't':
        return scan_word(s, "true", 4);
    case 'f':
        return scan_word(s, "false", 5);
    case 'n':
        return scan_word(s, "null", 4);
    default:
        return scan_number(s);
    }
}

/* The depth the scanner starts an object at for it to hold depth_max
** nestings, itself counted, and no more. */
static int object_depth(int depth_max)
{
    return depth_max < 1                   ? CM_JSON_DEPTH_MAX
           : depth_max > CM_JSON_DEPTH_MAX ? 0
                                           : CM_JSON_DEPTH_MAX - depth_max;
}

size_t cm_json_object_len(const char *text, size_t len, int depth_max)
{
    cm_json_scan s = {.p = text, .end = text + len, .no_nul = true};
    return len > 0 && *text == '{' && cm_json_scan_value(&s, object_depth(depth_max)) == 0
               ? (size_t)(s.p - text)
               : 0;
}

size_t cm_json_object_check(const char *text, size_t len, int depth_max)
{
    cm_json_scan s = {.p = text, .end = text + len, .no_nul = true};
    cm_json_scan_space(&s);
    if (s.p < s.end && *s.p == '{' && cm_json_scan_value(&s, object_depth(depth_max)) == 0) {
        cm_json_scan_space(&s);
        if (s.p == s.end)
            return 0;
    }
    return (size_t)(s.p - text) + 1;
}
