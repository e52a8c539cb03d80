/*
** test_text.c -- UTF-8 validity, id shape, and the pieces of JSON's \u
** escapes (four hex digits, a code point as UTF-8), a JSON object's text checked.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

#include <cjson/cJSON.h>

static bool valid(const char *s)
{
    return cm_utf8_valid(s, strlen(s));
}

static void test_utf8_accepts_every_plane(void **state)
{
    assert_true(valid("plain ascii"));
    assert_true(valid("Jos\xc3\xa9"));      /* U+00E9 */
    assert_true(valid("\xe2\x82\xac"));     /* U+20AC */
    assert_true(valid("\xf0\x9f\x98\x80")); /* U+1F600 */
    assert_true(valid("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
    assert_true(cm_utf8_valid("a\0b", 3));  /* length, not NUL, ends the text */
}

static void test_utf8_refuses_malformed_sequences(void **state)
{
    assert_false(valid("\xff"));
    assert_false(valid("\xc3"));                    /* truncated */
    assert_false(valid("\xc0\xaf"));                /* overlong '/' */
    assert_false(valid("\xe0\x80\xaf"));            /* overlong */
    assert_false(valid("\xed\xa0\x80"));            /* surrogate U+D800 */
    assert_false(valid("\xf4\x90\x80\x80"));        /* past U+10FFFF */
    assert_false(valid("\xe2\x28\xa1"));            /* bad continuation */
    assert_false(cm_utf8_valid("\xe2\x82\xac", 2)); /* cut by the length */
}

/* ASCII is read 8 bytes at a time: a character of two bytes, a byte that
** begins none, or a sequence cut by the length, at every offset of a longer
** text (within a word, across two, in the bytes after the last whole one)
** are judged as on their own. */
static void test_utf8_judges_a_character_at_every_offset(void **state)
{
    char t[40];
    for (size_t at = 0; at + 2 <= sizeof(t); at++) {
        memset(t, 'a', sizeof(t));
        memcpy(t + at, "\xc3\xa9", 2);
        assert_true(cm_utf8_valid(t, sizeof(t)));
        assert_false(cm_utf8_valid(t, at + 1)); /* cut after its first byte */
        t[at + 1] = 'a';                        /* no continuation */
        assert_false(cm_utf8_valid(t, sizeof(t)));
        t[at] = '\xff';
        assert_false(cm_utf8_valid(t, sizeof(t)));
        assert_true(cm_utf8_valid(t, at)); /* the ASCII before it */
    }
}

static void test_ids(void **state)
{
    assert_int_equal(cm_id_check("riverside-clinic.north:2_a"), 0);
    assert_int_equal(cm_id_check("a b"), 2);
    assert_int_equal(cm_id_check("caf\xc3\xa9"), 4);
    assert_int_equal(cm_id_check(""), -1);
    assert_int_equal(cm_id_check(NULL), -1);
    char longid[CM_ID_MAX + 2];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[CM_ID_MAX] = '\0';
    assert_int_equal(cm_id_check(longid), 0);
    longid[CM_ID_MAX] = 'x';
    longid[CM_ID_MAX + 1] = '\0';
    assert_int_equal(cm_id_check(longid), -1);
}

static void test_hex4_and_utf8_put(void **state)
{
    char u[4];
    assert_int_equal(cm_hex4("00e9"), 0xe9);
    assert_int_equal(cm_hex4("FfFf"), 0xffff);
    assert_int_equal(cm_hex4("12g4"), -1);
    assert_int_equal(cm_hex4("12"), -1); /* stops at the NUL */
    assert_int_equal(cm_utf8_put(0x41, u), 1);
    assert_memory_equal(u, "A", 1);
    assert_int_equal(cm_utf8_put(0xe9, u), 2);
    assert_memory_equal(u, "\xc3\xa9", 2);
    assert_int_equal(cm_utf8_put(0x4e2d, u), 3);
    assert_memory_equal(u, "\xe4\xb8\xad", 3);
    assert_int_equal(cm_utf8_put(0x1f600, u), 4);
    assert_memory_equal(u, "\xf0\x9f\x98\x80", 4);
    for (unsigned cp = 1; cp < 0x110000; cp += 97) /* what it writes is UTF-8 */
        if (cp < 0xd800 || cp > 0xdfff)
            assert_true(cm_utf8_valid(u, cm_utf8_put(cp, u)));
}

/* Every short escape cm_json_escape_byte writes reads back to its byte, and
** the two characters JSON allows that it never writes (\/ and the quote's
** own) too; \u and anything else are not short escapes. */
static void test_short_escapes_read_back(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        char esc[6];
        size_t n = cm_json_escape_byte((unsigned char)c, esc);
        if (n == 2)
            assert_int_equal(cm_json_unescape_short(esc[1]), c);
    }
    assert_int_equal(cm_json_unescape_short('/'), '/');
    assert_int_equal(cm_json_unescape_short('"'), '"');
    assert_int_equal(cm_json_unescape_short('u'), -1);
    assert_int_equal(cm_json_unescape_short('a'), -1);
    assert_int_equal(cm_json_unescape_short('\0'), -1);
    assert_int_equal(cm_json_unescape_short('\''), -1);
}

/* A string's text is stepped over 8 bytes at a time: a quote, a control
** byte or an escape at every offset of a 40-byte string (within a word,
** across two, in the bytes after the last whole one) is found where it is,
** and the bytes beside those that stop (space, '!', '#', '[', ']', DEL, past
** ASCII) are stepped over as text. */
static void test_json_string_stops_at_every_offset(void **state)
{
    (void)state;
    static const char plain[] = " !#[]\x7f\x80\xa9\xff", stops[] = "\x00\x01\x1f";
    char t[42];
    for (size_t at = 1; at + 1 < sizeof(t); at++) {
        cm_json_scan s = {.end = t + sizeof(t)};
        memset(t, 'a', sizeof(t));
        t[0] = t[sizeof(t) - 1] = '"';
        for (size_t k = 0; k < sizeof(plain) - 1; k++) { /* text to the closing quote */
            t[at] = plain[k];
            s.p = t;
            assert_int_equal(cm_json_scan_string(&s), 0);
            assert_ptr_equal(s.p, t + sizeof(t));
        }
        t[at] = '"'; /* the quote ends it there */
        s.p = t;
        assert_int_equal(cm_json_scan_string(&s), 0);
        assert_ptr_equal(s.p, t + at + 1);
        for (size_t k = 0; k < sizeof(stops) - 1; k++) { /* a fault there, with a quote after */
            t[at] = stops[k];
            t[at + 1] = '"';
            s.p = t;
            assert_int_equal(cm_json_scan_string(&s), -1);
            assert_ptr_equal(s.p, t + at);
            t[at + 1] = 'a';
        }
        if (at + 2 < sizeof(t)) { /* an escape there: stepped over whole */
            memcpy(t + at, "\\\"", 2);
            s.p = t;
            assert_int_equal(cm_json_scan_string(&s), 0);
            assert_ptr_equal(s.p, t + sizeof(t));
        }
    }
}

/* cm_json_object_check takes one JSON object as RFC 8259 spells it, and
** only what cJSON reads as that object; it names the first byte that does
** not fit. cm_json_object_len finds the object that text opens with. */
static void test_json_object_text_is_checked(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{}",
        " \t\r\n{ } \n",
        "{\"a\":1}",
        "{\"a\":-0.5e+10,\"b\":0,\"c\":12E-3,\"d\":-7}",
        "{\"a\":[true,false,null,\"x\",{},[]]}",
        "{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"}",
        "{\"\xc3\xa9\":\"\xe2\x82\xac\"}",
        "{\"a\":{\"a\":{\"a\":{}}}, \"a\" : 2}",
    };
    static const struct {
        const char *text;
        size_t at;
    } bad[] = {
        {"", 1},
        {"   ", 4},
        {"[]", 1},
        {"\"x\"", 1},
        {"{", 2},
        {"{\"a\"}", 5},
        {"{\"a\":}", 6},
        {"{\"a\":1,}", 8},
        {"{\"a\":1 \"b\":2}", 8},
        {"{a:1}", 2},
        {"{\"a\":01}", 7},
        {"{\"a\":1.}", 8},
        {"{\"a\":.5}", 6},
        {"{\"a\":+1}", 6},
        {"{\"a\":1e}", 8},
        {"{\"a\":tru}", 6},
        {"{\"a\":nul}", 6},
        {"{\"a\":\"x}", 9},
        {"{\"a\":\"\\x\"}", 8},
        {"{\"a\":\"\\u00\"}", 9},
        {"{\"a\":\"\\u0000\"}", 13},
        {"{\"a\":\"\\ud800\"}", 13},
        {"{\"a\":\"\\udc00\"}", 13},
        {"{\"a\":\"\\ud800\\u0041\"}", 19},
        {"{\"a\":\"\x01\"}", 7},
        {"{} x", 4},
        {"{}{}", 3},
        {"{\"a\":[1,]}", 9},
        {"\xef\xbb\xbf{}", 1},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        size_t len = strlen(good[i]);
        assert_int_equal(cm_json_object_check(good[i], len, CM_JSON_DEPTH_MAX), 0);
        cJSON *doc = cJSON_ParseWithLength(good[i], len);
        assert_true(cJSON_IsObject(doc)); /* what it takes, cJSON reads */
        cJSON_Delete(doc);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t at = cm_json_object_check(bad[i].text, strlen(bad[i].text), CM_JSON_DEPTH_MAX);
        if (at != bad[i].at)
            fail_msg("\"%s\": at %zu, expected %zu", bad[i].text, at, bad[i].at);
    }
    /* a NUL inside is no JSON, and the length bounds the read */
    assert_int_equal(cm_json_object_check("{\"a\":\"\0\"}", 8, CM_JSON_DEPTH_MAX), 7);
    assert_int_equal(cm_json_object_check("{\"a\":1}", 6, CM_JSON_DEPTH_MAX), 7);
    /* nesting up to cJSON's limit, not past it */
    char deep[2 * CM_JSON_DEPTH_MAX + 8];
    size_t n = 0;
    deep[n++] = '{';
    memcpy(deep + n, "\"a\":", 4);
    n += 4;
    for (int i = 1; i < CM_JSON_DEPTH_MAX; i++)
        deep[n++] = '[';
    size_t open = n;
    for (int i = 1; i < CM_JSON_DEPTH_MAX; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    assert_int_equal(cm_json_object_check(deep, n, CM_JSON_DEPTH_MAX), 0);
    char deeper[sizeof(deep) + 2];
    memcpy(deeper, deep, open);
    deeper[open] = '[';
    memcpy(deeper + open + 1, deep + open, n - open);
    deeper[open + 1 + (n - open) - 1] = ']';
    deeper[open + 1 + (n - open)] = '}';
    assert_int_equal(cm_json_object_check(deeper, n + 1, CM_JSON_DEPTH_MAX), open + 1);
    /* as an event's payload, one level less fits, as the API's body holds it */
    assert_int_equal(cm_json_object_len(deep, n, CM_JSON_DEPTH_MAX), n);
    assert_int_equal(cm_json_object_len(deep, n, CM_JSON_PAYLOAD_DEPTH_MAX), 0);
    assert_int_equal(cm_json_object_check(deep, n, CM_JSON_PAYLOAD_DEPTH_MAX), open);
    assert_int_equal(cm_json_object_check("{\"a\":[{}]}", 10, 3), 0);
    assert_int_equal(cm_json_object_check("{\"a\":[{}]}", 10, 2), 7);
    /* the object text opens with, what follows not looked at */
    assert_int_equal(cm_json_object_len("{\"a\":{}} , x", 12, CM_JSON_DEPTH_MAX), 8);
    assert_int_equal(cm_json_object_len(" {}", 3, CM_JSON_DEPTH_MAX), 0);
    assert_int_equal(cm_json_object_len("{\"a\":", 5, CM_JSON_DEPTH_MAX), 0);
}

/* A number past a double's range, which cJSON reads as infinity (and
** prints as null), is refused at its first byte; every other is taken. The
** judge is strtod, as cJSON calls it: near the edge, at the least value
** that rounds to infinity (2^1024 - 2^970) and just under it, spelled with
** and without exponents and fractions, and far past it either way. */
static void test_json_numbers_past_a_double_are_refused(void **state)
{
    (void)state;
    static const char *const nums[] = {
        "1e308",
        "1e309",
        "-1e999",
        "1E+308",
        "1e0000308",
        "1e0000309",
        "10e308",
        "0.1e310",
        "0.01e310",
        "1.7976931348623157e308",
        "1.7976931348623158e308",
        "1.7976931348623159e308",
        "-1.7976931348623159e308",
        "1e-99999",
        "0e99999",
        "0.0e999999999999999999999",
        "0.000001e314",
        "0.000001e315",
        "1e99999999999999999999999999",
        "123456789e300",
        "123456789e301",
        "T",
        "-T",
        "T.0",
        "T0e-1",
        "M",
        "M.999999999999999999999999",
        "0.0000M9e314",
        "0.0000Te314",
        "1Z",
        "9Z",
        "1Ze-1",
        "1Ze-10",
    };
    static const char t_digits[] = /* 2^1024 - 2^970 */
        "17976931348623158079372897140530341507993413271003782693617377898044496829276475"
        "09466490179775872070963302864166928879109465555478519404026306574886715058206819"
        "08902000708383676273854845817711531764475730270069855571366959622842914819860834"
        "936475292719074168444365510704342711559699508093042880177904174497792";
    static const char m_digits[] = /* one less */
        "17976931348623158079372897140530341507993413271003782693617377898044496829276475"
        "09466490179775872070963302864166928879109465555478519404026306574886715058206819"
        "08902000708383676273854845817711531764475730270069855571366959622842914819860834"
        "936475292719074168444365510704342711559699508093042880177904174497791";
    char num[1024], text[1100];
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        size_t n = 0; /* T: the threshold's digits, M: one less, Z: 308 zeros */
        for (const char *c = nums[i]; *c; c++) {
            const char *put = *c == 'T' ? t_digits : *c == 'M' ? m_digits : NULL;
            if (*c == 'Z') {
                memset(num + n, '0', 308);
                n += 308;
            } else if (put) {
                memcpy(num + n, put, strlen(put));
                n += strlen(put);
            } else {
                num[n++] = *c;
            }
        }
        num[n] = '\0';
        bool inf = isinf(strtod(num, NULL));
        snprintf(text, sizeof(text), "{\"a\":%s}", num);
        size_t at = cm_json_object_check(text, strlen(text), CM_JSON_DEPTH_MAX);
        if (at != (inf ? 6 : 0))
            fail_msg("%s: at %zu, strtod reads %s", nums[i], at, inf ? "inf" : "a finite number");
        snprintf(text, sizeof(text), "{\"a\":[1,{\"b\":%s}]}", num);
        assert_int_equal(cm_json_object_check(text, strlen(text), CM_JSON_DEPTH_MAX), inf ? 14 : 0);
    }
}

/* A number's exponent is read in full, however many digits its mantissa
** has: 0.<a million zeros>1e10000000 is past a double's range (strtod:
** inf), 1<two million zeros>e-10000000 underflows to 0 (taken). Both fit in
** the API's default body of 1 MiB or its largest; the exponent once stopped
** counting at a million, so the first was taken and the second refused. */
static void test_json_number_exponents_are_weighed_against_long_mantissas(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        size_t zeros;
        const char *tail;
    } nums[] = {
        {"0.", 1000000, "1e10000000"}, {"-0.", 1000000, "1e+10000000"},
        {"0.", 1000000, "1e1000309"},  {"0.", 1000000, "1e1000310"},
        {"1", 2000000, "e-10000000"},  {"1", 1000000, "e-999692"},
        {"1", 1000000, "e-999691"},
    };
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        size_t hl = strlen(nums[i].head), tl = strlen(nums[i].tail);
        size_t len = 5 + hl + nums[i].zeros + tl + 1;
        char *text = malloc(len + 1);
        assert_non_null(text);
        memcpy(text, "{\"a\":", 5);
        memcpy(text + 5, nums[i].head, hl);
        memset(text + 5 + hl, '0', nums[i].zeros);
        memcpy(text + 5 + hl + nums[i].zeros, nums[i].tail, tl);
        memcpy(text + len - 1, "}", 2);
        text[len - 1] = '\0';
        bool inf = isinf(strtod(text + 5, NULL));
        text[len - 1] = '}';
        size_t at = cm_json_object_check(text, len, CM_JSON_DEPTH_MAX);
        if (at != (inf ? 6 : 0))
            fail_msg("%s<%zu zeros>%s: at %zu, strtod reads %s", nums[i].head, nums[i].zeros,
                     nums[i].tail, at, inf ? "inf" : "a finite number");
        free(text);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_accepts_every_plane),
        cmocka_unit_test(test_utf8_refuses_malformed_sequences),
        cmocka_unit_test(test_utf8_judges_a_character_at_every_offset),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_hex4_and_utf8_put),
        cmocka_unit_test(test_short_escapes_read_back),
        cmocka_unit_test(test_json_object_text_is_checked),
        cmocka_unit_test(test_json_numbers_past_a_double_are_refused),
        cmocka_unit_test(test_json_number_exponents_are_weighed_against_long_mantissas),
        cmocka_unit_test(test_json_string_stops_at_every_offset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
