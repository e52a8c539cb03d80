/*
** text.h -- checks on text that crosses into the host: UTF-8 validity and
** the shape of ids (node ids, record ids), JSON's \u escapes both ways, a
** JSON object's text checked without a tree, and a bounded copy. No dependencies; any thread.
*/
#ifndef CM_TEXT_H
#define CM_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CM_ID_MAX 128

/* The bytes of w (8 bytes of text read as one word) that end a JSON
** string's plain text: a control byte (below 0x20), '"' or '\\', each marked
** by its high bit; a byte past ASCII is never marked. Read on a
** little-endian machine (the first byte the lowest), the lowest mark is the
** first such byte exactly (one above it may be a borrow's); 0 when none. */
static inline uint64_t cm_json_stops8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
    /* a byte below 0x20, or 0 after the XOR; ~w: its high bit, for all three */
    return ((w - ones * 0x20) | (quote - ones) | (backslash - ones)) & ~w & highs;
}

/* Is s[0..len) well-formed UTF-8 (no overlongs, surrogates or code points
** past U+10FFFF)? */
bool cm_utf8_valid(const char *s, size_t len);

/* May c appear in an id? Letters, digits, '.', '_', ':', '-'. Inline: it
** is asked of every byte of an id. */
static inline bool cm_id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

/* 0 if s is an id (1..CM_ID_MAX id characters); otherwise the 1-based
** position of the first character that may not appear, or -1 when the length
** is wrong. */
long cm_id_check(const char *s);

/* The four hex digits at p as a number, or -1 at the first byte that is not
** one (a NUL stops it: p may be shorter than four bytes). */
long cm_hex4(const char *p);

/* Nesting of arrays and objects that the JSON scanner takes: cJSON's own
** limit (CJSON_NESTING_LIMIT), so that what it takes cJSON reads. */
#define CM_JSON_DEPTH_MAX 1000

/* Nesting of an event's payload, the payload's object counted, by every
** route: the API's event body holds it as a member, and cJSON counts the
** nesting from the body's top, so one level less than CM_JSON_DEPTH_MAX;
** cm_engine_signal_text, given the payload alone, takes no more. */
#define CM_JSON_PAYLOAD_DEPTH_MAX (CM_JSON_DEPTH_MAX - 1)

/* A JSON scanner: steps over the values of text [p, end) as RFC 8259 spells
** them (space, tab, CR and LF between tokens), checking them, building
** nothing; what it takes, cJSON_Parse reads as the same. A number past a
** double's range (1e999, which cJSON reads as infinity and prints as null)
** is refused, p at its first byte (RFC 8259 section 6 lets a reader set
** the range). On a fault its
** functions return -1 with p at the first byte that does not fit (end when
** the text ends too early); on success 0 with p past what they read. */
typedef struct cm_json_scan {
    const char *p, *end;
    bool checked;      /* the text was checked already: strings stepped over by their quotes */
    bool no_nul;       /* refuse the escape \u0000 (cJSON would end its string there) */
    size_t number_max; /* the longest number taken, in characters; 0: any */
} cm_json_scan;

/* Spaces at p stepped over. */
void cm_json_scan_space(cm_json_scan *s);

/* The string at p (its opening quote): escapes checked (no unpaired
** surrogate), no raw control characters. */
int cm_json_scan_string(cm_json_scan *s);

/* The value at p (no space before it); depth: the nesting of the array or
** object holding it (0: none), so that nothing is nested past
** CM_JSON_DEPTH_MAX counted from the document's top. */
int cm_json_scan_value(cm_json_scan *s, int depth);

/* The escape \uXXXX at p (its backslash; end bounds it), a surrogate pair
** taken whole: 0 and its code point, or -1 when malformed or an unpaired
** surrogate; *next: where the escape ends, or where it stops fitting. */
int cm_json_uescape(const char *p, const char *end, unsigned *cp, const char **next);

/* Is text[0..len) one JSON object, nested at most depth_max deep (the
** object counted: CM_JSON_DEPTH_MAX for a document of its own,
** CM_JSON_PAYLOAD_DEPTH_MAX for an event's payload), with no \u0000 and no
** number past a double's range -- text that cJSON_Parse reads as that
** object, every number finite? 0 if so; otherwise the 1-based position of
** the first byte that does not fit (len + 1 when the text ends too early). */
size_t cm_json_object_check(const char *text, size_t len, int depth_max);

/* The length of the JSON object that text[0..len) opens with ('{' its first
** byte), checked as cm_json_object_check checks one (depth_max the same);
** 0 when it opens with none. What follows it is not looked at. */
size_t cm_json_object_len(const char *text, size_t len, int depth_max);

/* Code point cp (below 0x110000) as UTF-8 into out: the byte count, 1 to 4. */
size_t cm_utf8_put(unsigned cp, char out[4]);

/* How byte c is written inside a JSON string (RFC 8259): 0 when as itself;
** otherwise the length (2 or 6) of its escape, written to esc without a NUL.
** Quote, backslash and control bytes are escaped (\b \f \n \r \t short, the rest
** as \u00XX, DEL too); UTF-8 passes as is.
** Inline: the federation sender and the API escape every string they write. */
static inline size_t cm_json_escape_byte(unsigned char c, char esc[6])
{
    static const char hex[] = "0123456789abcdef";
    if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
        return 0; /* most bytes */
    esc[0] = '\\';
    switch (c) {
    case '"':
    case '\\':
        esc[1] = (char)c;
        return 2;
    case '\b':
        esc[1] = 'b';
        return 2;
    case '\f':
        esc[1] = 'f';
        return 2;
    case '\n':
        esc[1] = 'n';
        return 2;
    case '\r':
        esc[1] = 'r';
        return 2;
    case '\t':
        esc[1] = 't';
        return 2;
    default:
        break;
    }
    memcpy(esc + 1, "u00", 3);
    esc[4] = hex[c >> 4];
    esc[5] = hex[c & 15];
    return 6;
}

/* The byte a JSON short escape stands for: c is the character after the
** backslash (" \\ / b f n r t); -1 for any other (\\u is read with cm_hex4,
** anything else is not JSON). The reverse of cm_json_escape_byte's short forms. */
static inline int cm_json_unescape_short(char c)
{
    switch (c) {
    case '"':
    case '\\':
    case '/':
        return c;
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return -1;
    }
}

/* src (NULL: "") into dst of capacity n > 0, cut to fit, NUL-terminated:
** the hot paths copy names with it, cheaper than snprintf. */
static inline void cm_copy_str(char *dst, size_t n, const char *src)
{
    size_t len = src ? strlen(src) : 0;
    if (len >= n)
        len = n - 1;
    memcpy(dst, src ? src : "", len);
    dst[len] = '\0';
}

#endif
