/*
** test_fed.c -- federation messages (every kind round-trips; bad input is
** refused by field, never half-parsed), the ZAP admission decision, and the
** libzmq behaviour the listener relies on to fail closed without a handler,
** when the engine may queue a message routed, and that a peer sending far
** more than the engine has taken cannot grow what waits in it past
** CM_FED_APPLY_MAX; a row routed late goes after the rows in flight; the
** rows delivered under a peer's mark are swept out of outbox_pending; a
** patient's record sent or read leaves nothing of itself in the memory
** federation frees or the message parts it closes. Linked with
** -Wl,--wrap=free,--wrap=realloc (freescan.h) and --wrap=zmq_msg_close.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "fed.h"
#include "freescan.h"
#include "log.h"
#include "node.h"
#include "strbuf.h"

static void decode_text(const char *text, cm_fed_msg *m)
{
    cm_err err;
    if (cm_fed_decode(text, strlen(text), m, &err) != 0)
        fail_msg("%s: %s", text, err.msg);
}

static void expect_bad(const char *text, const char *fragment)
{
    cm_fed_msg m;
    cm_err err;
    assert_int_equal(cm_fed_decode(text, strlen(text), &m, &err), CM_EINVAL);
    if (!strstr(err.msg, fragment))
        fail_msg("'%s': message '%s' lacks '%s'", text, err.msg, fragment);
    assert_null(m.payload);
}

static void test_every_kind_round_trips(void **state)
{
    cm_fed_msg m, back;
    char *text;
    memset(&m, 0, sizeof(m));
    m.type = CM_FED_HELLO;
    m.major = 1;
    m.minor = 3;
    strcpy(m.node, "clinic-a");
    text = cm_fed_encode(&m);
    assert_non_null(text);
    decode_text(text, &back);
    assert_int_equal(back.type, CM_FED_HELLO);
    assert_int_equal(back.major, 1);
    assert_int_equal(back.minor, 3);
    assert_string_equal(back.node, "clinic-a");
    assert_non_null(strstr(text, "\"caps\":[\"deliver\",\"directory\",\"indicators\"]"));
    assert_int_equal(back.caps, 0);
    free(text);
    cm_fed_msg_clear(&back);
    /* 1.2 announces batches, and a hello that does is read so */
    m.minor = 2;
    m.caps = CM_FED_CAP_BATCH;
    text = cm_fed_encode(&m);
    assert_non_null(strstr(text, "\"caps\":[\"deliver\",\"directory\",\"indicators\",\"batch\"]"));
    decode_text(text, &back);
    assert_int_equal(back.caps, CM_FED_CAP_BATCH);
    free(text);
    cm_fed_msg_clear(&back);

    memset(&m, 0, sizeof(m));
    m.type = CM_FED_DELIVER;
    strcpy(m.id, "clinic-a:42");
    strcpy(m.kind, "referral.request");
    strcpy(m.to, "heart-partners");
    m.payload = cJSON_Parse("{\"reason\":\"chest pain\",\"n\":[1,2]}");
    text = cm_fed_encode(&m);
    assert_non_null(text);
    decode_text(text, &back);
    assert_int_equal(back.type, CM_FED_DELIVER);
    assert_string_equal(back.id, "clinic-a:42");
    assert_string_equal(back.kind, "referral.request");
    assert_string_equal(back.to, "heart-partners");
    assert_true(cJSON_Compare(back.payload, m.payload, true));
    free(text);
    cm_fed_msg_clear(&back);
    cm_fed_msg_clear(&m);

    m.type = CM_FED_ACK;
    strcpy(m.id, "clinic-a:42");
    strcpy(m.result, "duplicate");
    text = cm_fed_encode(&m);
    decode_text(text, &back);
    assert_int_equal(back.type, CM_FED_ACK);
    assert_string_equal(back.result, "duplicate");
    free(text);
    cm_fed_msg_clear(&back);

    memset(&m, 0, sizeof(m));
    m.type = CM_FED_ERROR;
    strcpy(m.code, "version");
    strcpy(m.message, "protocol 2.0 is not supported");
    text = cm_fed_encode(&m);
    decode_text(text, &back);
    assert_string_equal(back.code, "version");
    assert_string_equal(back.message, "protocol 2.0 is not supported");
    assert_string_equal(back.id, "");
    free(text);
    cm_fed_msg_clear(&back);

    decode_text("{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\","
                "\"payload\":\"plain text\"}",
                &back);
    assert_string_equal(cJSON_GetStringValue(back.payload), "plain text");
    cm_fed_msg_clear(&back);

    decode_text("{\"type\":\"directory\",\"id\":\"b:directory:1\",\"organizations\":[{"
                "\"id\":\"o\",\"name\":\"O\"}]}",
                &back);
    assert_int_equal(back.type, CM_FED_DIRECTORY);
    assert_int_equal(cJSON_GetArraySize(back.payload), 1);
    text = cm_fed_encode(&back);
    assert_non_null(strstr(text, "\"organizations\":[{\"id\":\"o\",\"name\":\"O\"}]"));
    free(text);
    cm_fed_msg_clear(&back);
    decode_text("{\"type\":\"indicators\",\"id\":\"b:indicators:1\",\"indicators\":[]}", &back);
    assert_int_equal(back.type, CM_FED_INDICATORS);
    cm_fed_msg_clear(&back);
    /* 1.1's deliver fields round-trip */
    decode_text("{\"type\":\"deliver\",\"id\":\"a:2\",\"kind\":\"k\",\"to\":\"o\",\"from\":\"f\","
                "\"purpose\":\"referral\",\"classes\":[\"notes\"],\"patient\":\"p\",\"instance\":"
                "\"i\",\"reply_to\":\"r\",\"patient_record\":{\"id\":\"p\"},\"payload\":{}}",
                &back);
    text = cm_fed_encode(&back);
    for (const char *const *frag =
             (const char *const[]){"\"from\":\"f\"", "\"purpose\":\"referral\"",
                                   "\"classes\":[\"notes\"]", "\"patient\":\"p\"",
                                   "\"instance\":\"i\"", "\"reply_to\":\"r\"",
                                   "\"patient_record\":{\"id\":\"p\"}", NULL};
         *frag; frag++)
        assert_non_null(strstr(text, *frag));
    free(text);
    cm_fed_msg_clear(&back);
}

static void test_bad_messages_are_refused_by_field(void **state)
{
    cm_fed_msg m;
    cm_err err;
    char big[300];
    expect_bad("", "message of 0 bytes");
    expect_bad("\x01\x02\xff garbage", "not a JSON object");
    expect_bad("[1,2]", "not a JSON object");
    expect_bad("{\"type\":7}", "type: must be a non-empty string");
    expect_bad("{\"type\":\"gossip\"}", "unknown message type \"gossip\"");
    expect_bad("{\"type\":\"hello\",\"node\":\"a\"}", "proto: must be");
    expect_bad("{\"type\":\"hello\",\"proto\":\"one\",\"node\":\"a\"}",
               "proto: must be \"MAJOR.MINOR\"");
    expect_bad("{\"type\":\"hello\",\"proto\":\"1.0x\",\"node\":\"a\"}", "proto:");
    expect_bad("{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\"}",
               "payload: missing");
    expect_bad("{\"type\":\"deliver\",\"id\":\"\",\"kind\":\"k\",\"to\":\"o\",\"payload\":{}}",
               "id: must be a non-empty string");
    expect_bad("{\"type\":\"ack\",\"id\":\"a:1\",\"result\":\"maybe\"}", "result: must be");
    memset(big, 'x', sizeof(big));
    char text[512];
    snprintf(text, sizeof(text), "{\"type\":\"ack\",\"id\":\"%.*s\",\"result\":\"received\"}",
             (int)sizeof(big), big);
    expect_bad(text, "id: longer than");
    /* a length past the cap is refused before parsing */
    assert_int_equal(cm_fed_decode("{}", (size_t)CM_FED_MAX_MSG + 1, &m, &err), CM_EINVAL);
    /* a version with an unknown major still decodes: the caller refuses it, by name */
    decode_text("{\"type\":\"hello\",\"proto\":\"2.7\",\"node\":\"a\"}", &m);
    assert_int_equal(m.major, 2);
    assert_int_equal(m.minor, 7);
}

/* A batch (1.2): entries decode one by one; a bad one is named by its index
** and field, carries its id when it has one, and leaves its neighbours whole. */
static void test_batch_entries_decode_each_on_its_own(void **state)
{
    const char *text =
        "{\"type\":\"batch\",\"messages\":["
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":{\"n\":1}},"
        "{\"type\":\"deliver\",\"id\":\"a:2\",\"to\":\"o\",\"payload\":{}},"
        "7,"
        "{\"type\":\"batch\",\"messages\":[]},"
        "{\"type\":\"ack\",\"id\":\"a:9\",\"result\":\"received\"},"
        "{\"type\":\"deliver\",\"id\":\"a:3\",\"kind\":\"k\",\"to\":\"o\",\"prev\":\"a:1\","
        "\"payload\":\"plain\"}]}";
    cm_fed_msg m;
    cm_fed_batch b;
    cm_err err;
    char id[192];
    assert_int_equal(cm_fed_decode_any(text, strlen(text), &m, &b, &err), 0);
    assert_int_equal(m.type, CM_FED_BATCH);
    assert_int_equal(b.n, 6);
    assert_int_equal(cm_fed_batch_entry(&b, 0, &m, id, &err), 0);
    assert_int_equal(m.type, CM_FED_DELIVER);
    assert_string_equal(m.id, "a:1");
    assert_string_equal(id, "a:1");
    assert_int_equal(cJSON_GetObjectItem(m.payload, "n")->valueint, 1);
    cm_fed_msg_clear(&m);
    assert_int_equal(cm_fed_batch_entry(&b, 1, &m, id, &err), CM_EINVAL);
    assert_string_equal(err.msg, "messages[1]: kind: must be a non-empty string");
    assert_string_equal(id, "a:2"); /* the answer can name it */
    assert_null(m.payload);
    assert_int_equal(cm_fed_batch_entry(&b, 2, &m, id, &err), CM_EINVAL);
    assert_string_equal(err.msg, "messages[2]: not a JSON object");
    assert_string_equal(id, "");
    assert_int_equal(cm_fed_batch_entry(&b, 3, &m, id, &err), CM_EINVAL);
    assert_string_equal(err.msg, "messages[3]: type: a batch cannot hold a batch");
    assert_int_equal(cm_fed_batch_entry(&b, 4, &m, id, &err),
                     0); /* an answer: the reader decides */
    assert_int_equal(m.type, CM_FED_ACK);
    cm_fed_msg_clear(&m);
    assert_int_equal(cm_fed_batch_entry(&b, 5, &m, id, &err), 0);
    assert_string_equal(m.prev, "a:1");
    assert_string_equal(m.payload->valuestring, "plain");
    cm_fed_msg_clear(&m);
    /* out of order and out of range; an entry read again reads the same */
    assert_int_equal(cm_fed_batch_entry(&b, 0, &m, id, &err), 0);
    assert_string_equal(id, "a:1");
    assert_int_equal(cJSON_GetObjectItem(m.payload, "n")->valueint, 1);
    cm_fed_msg_clear(&m);
    assert_int_equal(cm_fed_batch_entry(&b, 4, &m, id, &err), 0);
    assert_string_equal(m.id, "a:9");
    cm_fed_msg_clear(&m);
    assert_int_equal(cm_fed_batch_entry(&b, 6, &m, id, &err), CM_EINVAL);
    assert_non_null(strstr(err.msg, "messages[6]: no such entry"));
    cm_fed_batch_free(&b);
    assert_null(b.entries);
}

/* A batch that is wrong as a whole is refused whole, naming what is wrong. */
static void test_bad_batches_are_refused_whole(void **state)
{
    char *many;
    size_t len = 0;
    cm_fed_msg m;
    cm_fed_batch b;
    cm_err err;
    expect_bad("{\"type\":\"batch\"}", "messages: must be an array of messages");
    expect_bad("{\"type\":\"batch\",\"messages\":{}}", "messages: must be an array of messages");
    expect_bad("{\"type\":\"batch\",\"messages\":[]}", "messages: 0 messages (1 to 1024 allowed)");
    many = malloc(8 * (CM_FED_BATCH_MAX + 1) + 64);
    assert_non_null(many);
    len += (size_t)sprintf(many, "{\"type\":\"batch\",\"messages\":[");
    for (int i = 0; i <= CM_FED_BATCH_MAX; i++)
        len += (size_t)sprintf(many + len, "%s{}", i ? "," : "");
    len += (size_t)sprintf(many + len, "]}");
    assert_int_equal(cm_fed_decode_any(many, len, &m, &b, &err), CM_EINVAL);
    assert_string_equal(err.msg, "messages: 1025 messages (1 to 1024 allowed)");
    assert_null(b.entries);
    free(many);
    /* a hello's caps must be names */
    expect_bad("{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"a\",\"caps\":\"batch\"}",
               "caps: must be an array of names");
    expect_bad("{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"a\",\"caps\":[1]}",
               "caps: must be an array of names");
}

/* Messages are read in one pass without a tree: the text must be exactly
** one JSON object, strings decode their escapes, and a batch entry's
** payload is kept as the text it came as (what the inbox stores). */
static void test_scanned_text_is_checked_and_kept_as_sent(void **state)
{
    const char *text = "{\"type\":\"batch\",\"messages\":[ {\"typ\\u0065\":\"deliver\","
                       "\"id\":\"a:1\",\"kind\":\"caf\\u00e9 \\ud83d\\ude00\\n\",\"to\":\"o\","
                       "\"kind\":\"ignored\",\"payload\" : { \"n\" : [1, 2.5e3, -0, true, null]}"
                       "} ]}";
    cm_fed_msg m;
    cm_fed_batch b;
    cm_err err;
    char id[192], deep[3000];
    assert_int_equal(cm_fed_decode_any(text, strlen(text), &m, &b, &err), 0);
    assert_int_equal(b.n, 1);
    assert_int_equal(cm_fed_batch_scan(&b, 0, &m, id, &err), 0);
    assert_int_equal(m.type, CM_FED_DELIVER);
    assert_string_equal(m.kind, "caf\xc3\xa9 \xf0\x9f\x98\x80\n"); /* the first of a name */
    assert_null(m.payload);                                        /* no tree */
    assert_int_equal(m.raw_payload.len, strlen("{ \"n\" : [1, 2.5e3, -0, true, null]}"));
    assert_memory_equal(m.raw_payload.p, "{ \"n\" : [1, 2.5e3, -0, true, null]}",
                        m.raw_payload.len);
    cm_fed_msg_clear(&m);
    assert_int_equal(cm_fed_batch_entry(&b, 0, &m, id, &err), 0); /* with the tree */
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(m.payload, "n")), 5);
    cm_fed_msg_clear(&m);
    cm_fed_batch_free(&b);

    /* anything that is not exactly one JSON object is refused whole */
    const char *bad[] = {
        "{\"type\":\"ack\",\"id\":\"a:1\",\"result\":\"received\"} x",
        "{\"type\":\"ack\",\"id\":\"a:1\",\"result\":\"received\"",
        "{\"type\":\"ack\",\"id\":\"a:1\",\"result\":\"received\",}",
        "{\"type\":\"ack\" \"id\":\"a:1\"}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":01}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":1.}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":tru}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":[1 2]}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":\"\\x\"}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":\"\\ud800\"}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"payload\":\"a\tb\"}",
        "{\"type\":\"batch\",\"messages\":[{\"type\":\"ack\"},]}",
        "{\"type\":\"batch\",\"messages\":[{\"type\":\"ack\"}]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_bad(bad[i], "not a JSON object");
    /* a number of 63 characters is read, 64 are refused (FED_NUMBER_MAX) */
    char num[256], digits[65];
    memset(digits, '7', 64);
    digits[64] = '\0';
    snprintf(num, sizeof(num),
             "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\","
             "\"payload\":{\"n\":-%.62s}}",
             digits);
    decode_text(num, &m);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(m.payload, "n")));
    cm_fed_msg_clear(&m);
    snprintf(num, sizeof(num),
             "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\","
             "\"payload\":{\"n\":-%.63s}}",
             digits);
    expect_bad(num, "not a JSON object");
    /* a number past a double's range (cJSON would read infinity) is refused,
    ** named by its path, also in a batch's entry; one just inside is read */
    expect_bad("{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\","
               "\"payload\":{\"n\":[1,-1e309]}}",
               "payload.n[1]: number out of range");
    expect_bad("{\"type\":\"batch\",\"messages\":[{\"type\":\"deliver\",\"id\":\"a:1\","
               "\"kind\":\"k\",\"to\":\"o\",\"payload\":{\"n\":1E999}}]}",
               "messages[0].payload.n: number out of range");
    decode_text("{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\","
                "\"payload\":{\"n\":-1.7976931348623157e308}}",
                &m);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(m.payload, "n")));
    cm_fed_msg_clear(&m);
    /* nesting deeper than 1000 is refused; 999 levels are read */
    memset(deep, '[', 1000);
    snprintf(deep, sizeof(deep),
             "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\","
             "\"payload\":");
    size_t len = strlen(deep);
    for (int i = 0; i < 1000; i++)
        deep[len + (size_t)i] = '[';
    for (int i = 0; i < 1000; i++)
        deep[len + 1000 + (size_t)i] = ']';
    memcpy(deep + len + 2000, "}", 2);
    expect_bad(deep, "not a JSON object");
    memmove(deep + len, deep + len + 1, strlen(deep + len + 1) + 1); /* 999 [ */
    memmove(deep + len + 999, deep + len + 1000, strlen(deep + len + 1000) + 1);
    decode_text(deep, &m);
    assert_true(cJSON_IsArray(m.payload));
    cm_fed_msg_clear(&m);
    /* a string field must not hide a NUL */
    expect_bad("{\"type\":\"ack\",\"id\":\"a:\\u0000\",\"result\":\"received\"}",
               "id: must not hold \\u0000");
}

/* Mutations of good messages (bytes changed, cut short, spliced): reading
** one never touches a byte past its end (each is copied into a buffer of
** its own length, without a NUL), and whatever is taken, cJSON parses too,
** with the same id and payload. Deterministic: a fixed seed. */
static void test_mutated_messages_are_read_safely(void **state)
{
    static const char *const good[] = {
        "{\"type\":\"batch\",\"messages\":[{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\","
        "\"to\":\"o\",\"payload\":{\"n\":[1,-2.5e+3,\"\\u00e9\\\\\"]}},{\"type\":\"ack\",\"id\":"
        "\"a:2\",\"result\":\"received\"}]}",
        "{\"type\":\"deliver\",\"id\":\"a:1\",\"kind\":\"k\",\"to\":\"o\",\"prev\":\"a:0\","
        "\"classes\":[\"notes\"],\"patient_record\":{\"id\":\"p\"},\"payload\":\"\\ud83d\\ude00\"}",
        "{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"a\",\"caps\":[\"batch\"]}",
    };
    const char alphabet[] = "{}[]\",:\\u0123456789abcdefABCDEF.-+eE truenlfs\x01\x7f\xc3\xa9";
    uint32_t seed = 12345;
    int taken = 0, refused = 0;
    for (int round = 0; round < 30000; round++) {
        const char *g = good[round % 3];
        size_t len = strlen(g), n = len;
        char text[512];
        memcpy(text, g, len);
        for (int k = 0; k < 1 + round % 3; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % n;
            switch ((seed >> 4) % 3) {
            case 0: /* a byte changed */
                text[at] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
                break;
            case 1: /* cut short */
                n = at + 1;
                break;
            default: /* a span doubled */
                if (n + 8 < sizeof(text)) {
                    memmove(text + at + 8, text + at, n - at);
                    n += 8;
                }
            }
        }
        char *buf = malloc(n);
        assert_non_null(buf);
        memcpy(buf, text, n);
        cm_fed_msg m;
        cm_fed_batch b;
        cm_err err;
        char id[192];
        if (cm_fed_decode_any(buf, n, &m, &b, &err) != 0)
            refused++;
        else {
            cJSON *tree = cJSON_ParseWithLength(buf, n);
            taken++;
            assert_non_null(tree);
            for (int i = 0; i < b.n; i++) {
                cm_fed_msg e;
                if (cm_fed_batch_entry(&b, i, &e, id, &err) == 0) {
                    cJSON *it = cJSON_GetArrayItem(cJSON_GetObjectItem(tree, "messages"), i);
                    assert_string_equal(e.id, cJSON_GetStringValue(cJSON_GetObjectItem(it, "id")));
                    if (e.payload)
                        assert_true(
                            cJSON_Compare(e.payload, cJSON_GetObjectItem(it, "payload"), 1));
                    cm_fed_msg_clear(&e);
                }
            }
            if (m.type == CM_FED_DELIVER)
                assert_true(cJSON_Compare(m.payload, cJSON_GetObjectItem(tree, "payload"), 1));
            cJSON_Delete(tree);
            cm_fed_msg_clear(&m);
            cm_fed_batch_free(&b);
        }
        free(buf);
    }
    assert_true(taken > 1000 && refused > 1000); /* both sides were tried */
}

static void test_zap_admits_only_configured_curve_keys(void **state)
{
    cm_peer_config peers[2];
    char pub[41], sec[41], other[41], z85[41];
    uint8_t raw[32];
    memset(peers, 0, sizeof(peers));
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    strcpy(peers[0].id, "a");
    strcpy(peers[0].public_key, "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID");
    strcpy(peers[1].id, "b");
    strcpy(peers[1].public_key, pub);
    assert_non_null(zmq_z85_decode(raw, pub));
    assert_int_equal(cm_fed_zap_decide(peers, 2, "caremesh", "CURVE", raw, 32, z85), 1);
    assert_string_equal(z85, pub);
    /* wrong domain, mechanism or key length: refused */
    assert_int_equal(cm_fed_zap_decide(peers, 2, "", "CURVE", raw, 32, z85), -1);
    assert_int_equal(cm_fed_zap_decide(peers, 2, "caremesh", "NULL", raw, 32, z85), -1);
    assert_int_equal(cm_fed_zap_decide(peers, 2, "caremesh", "CURVE", raw, 31, z85), -1);
    assert_string_equal(z85, "");
    assert_int_equal(cm_fed_zap_decide(peers, 2, "caremesh", "CURVE", NULL, 0, z85), -1);
    /* an unknown key: refused, and named for the log */
    assert_int_equal(zmq_curve_keypair(other, sec), 0);
    assert_non_null(zmq_z85_decode(raw, other));
    assert_int_equal(cm_fed_zap_decide(peers, 2, "caremesh", "CURVE", raw, 32, z85), -1);
    assert_string_equal(z85, other);
    /* no peers: nobody */
    assert_int_equal(cm_fed_zap_decide(peers, 0, "caremesh", "CURVE", raw, 32, z85), -1);
}

/* Does a CURVE client get a message through to a ROUTER set up by fed.c's
** own listener setup (ours) -- or by the same without ZMQ_ZAP_ENFORCE_DOMAIN
** -- with no ZAP handler in the process? */
static bool admitted_without_handler(bool ours)
{
    char pub[41], sec[41], cpub[41], csec[41], ep[64];
    size_t eplen = sizeof(ep);
    int one = 1, zero = 0;
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    assert_int_equal(zmq_curve_keypair(cpub, csec), 0);
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER), *d = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(r, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof(zero));
    if (ours) {
        cm_err err;
        assert_int_equal(cm_fed_listener_setup(r, sec, 0, &err), 0);
    } else { /* the same, without ZMQ_ZAP_ENFORCE_DOMAIN */
        assert_int_equal(zmq_setsockopt(r, ZMQ_CURVE_SERVER, &one, sizeof(one)), 0);
        assert_int_equal(zmq_setsockopt(r, ZMQ_CURVE_SECRETKEY, sec, 40), 0);
        assert_int_equal(
            zmq_setsockopt(r, ZMQ_ZAP_DOMAIN, CM_FED_ZAP_DOMAIN, strlen(CM_FED_ZAP_DOMAIN)), 0);
    }
    assert_int_equal(zmq_bind(r, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &eplen), 0);
    zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, pub, 40);
    zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, cpub, 40);
    zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, csec, 40);
    assert_int_equal(zmq_connect(d, ep), 0);
    assert_int_equal(zmq_send(d, "hi", 2, 0), 2);
    zmq_pollitem_t item = {r, 0, ZMQ_POLLIN, 0};
    bool got = zmq_poll(&item, 1, 3000) == 1;
    zmq_close(r);
    zmq_close(d);
    zmq_ctx_term(ctx);
    return got;
}

static void test_without_zap_handler_curve_fails_closed(void **state)
{
    /* fed.c's listener, with no handler in the process: refused */
    assert_false(admitted_without_handler(true));
    /* and why it sets ZMQ_ZAP_ENFORCE_DOMAIN: without it, libzmq admits any
    ** CURVE client */
    assert_true(admitted_without_handler(false));
}

static int sockopt_int(void *zs, int opt)
{
    int v = -2;
    size_t len = sizeof(v);
    assert_int_equal(zmq_getsockopt(zs, opt, &v, &len), 0);
    return v;
}

/* The listener never times a link out on heartbeats (a node behind stops
** reading on purpose): a peer whose host vanished goes through TCP instead,
** keepalive after 30 s idle (10 s apart, 3 probes) and a link whose data
** stays unacknowledged dropped after 60 s, not TCP's ~15 minutes. */
static void test_the_listener_drops_a_vanished_peer_through_tcp(void **state)
{
    char pub[41], sec[41];
    cm_err err;
    (void)state;
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    assert_int_equal(sockopt_int(r, ZMQ_TCP_KEEPALIVE), -1); /* the OS default before */
    assert_int_equal(cm_fed_listener_setup(r, sec, 0, &err), 0);
    assert_int_equal(sockopt_int(r, ZMQ_HEARTBEAT_TIMEOUT), 0);
    assert_int_equal(sockopt_int(r, ZMQ_TCP_KEEPALIVE), 1);
    assert_int_equal(sockopt_int(r, ZMQ_TCP_KEEPALIVE_IDLE), 30);
    assert_int_equal(sockopt_int(r, ZMQ_TCP_KEEPALIVE_INTVL), 10);
    assert_int_equal(sockopt_int(r, ZMQ_TCP_KEEPALIVE_CNT), 3);
    assert_int_equal(sockopt_int(r, ZMQ_TCP_MAXRT), 60000);
    zmq_close(r);
    zmq_ctx_term(ctx);
}

/* Turn the loop (bounded: 5 s) until a message to node-b may be queued routed. */
static bool turn_until_routable(uv_loop_t *loop, cm_fed *fed)
{
    for (int i = 0; i < 500; i++) {
        uv_run(loop, UV_RUN_ONCE); /* the 10 ms tick at least */
        if (cm_fed_route_at_insert(fed, "node-b"))
            return true;
    }
    return false;
}

/* Rows reach a peer's window in seq order: the engine queues a row routed
** only while no pending row waits for federation to route or refuse it. */
static void test_route_at_insert_waits_for_rows_without_a_peer(void **state)
{
    char dir[] = "/tmp/cm-test-fed-XXXXXX", db[64];
    cm_store_opts so;
    cm_store *store = NULL;
    cm_keypair keys;
    cm_config cfg;
    cm_fed_opts fo;
    cm_fed *fed = NULL;
    uv_loop_t loop;
    cm_err err;
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof(db), "%s/fed.db", dir);
    cm_store_opts_init(&so);
    so.path = db;
    so.create = true;
    assert_int_equal(cm_store_open(&store, &so, &err), 0);
    assert_int_equal(cm_keys_generate(&keys, &err), 0);
    cm_config_defaults(&cfg);
    cfg.fed_enabled = true;
    snprintf(cfg.fed_listen, sizeof(cfg.fed_listen), "tcp://127.0.0.1:*");
    cfg.fed_npeers = 1;
    snprintf(cfg.fed_peers[0].id, sizeof(cfg.fed_peers[0].id), "node-b");
    snprintf(cfg.fed_peers[0].endpoint, sizeof(cfg.fed_peers[0].endpoint), "tcp://127.0.0.1:9");
    snprintf(cfg.fed_peers[0].public_key, sizeof(cfg.fed_peers[0].public_key), "%s",
             keys.public_key);
    cm_clock *clock = cm_clock_new_system();
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(&fo, 0, sizeof(fo));
    fo.loop = &loop;
    fo.store = store;
    fo.clock = clock;
    fo.cfg = &cfg;
    fo.node_id = "node-a";
    fo.keys = &keys;
    fo.poll_ms = 10;
    assert_int_equal(cm_fed_start(&fo, &fed, &err), 0);
    assert_false(cm_fed_route_at_insert(fed, "node-b")); /* the outbox not seen yet */
    assert_true(turn_until_routable(&loop, fed));
    assert_false(cm_fed_route_at_insert(fed, "node-z")); /* not a peer: its row will wait */
    assert_false(cm_fed_route_at_insert(fed, "node-b")); /* nothing is routed past it */
    assert_int_equal(sqlite3_exec(cm_store_db(store),
                                  "INSERT INTO outbox(receiver, kind, payload, created) VALUES "
                                  "('faraway', 'test.note', '{}', '2026-11-30T00:00:00.000Z')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_true(turn_until_routable(&loop, fed)); /* a pass refused it: routable again */
    sqlite3_stmt *st;
    assert_int_equal(
        sqlite3_prepare_v2(cm_store_db(store), "SELECT status FROM outbox", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "refused");
    sqlite3_finalize(st);
    cm_fed_stop(fed);
    uv_run(&loop, UV_RUN_DEFAULT);
    cm_fed_destroy(&fed);
    assert_int_equal(uv_loop_close(&loop), 0);
    cm_clock_destroy(&clock);
    cm_config_free(&cfg);
    cm_keys_wipe(&keys);
    cm_test_store_close(&store);
    unlink(db);
    char side[80];
    snprintf(side, sizeof(side), "%s-wal", db);
    unlink(side);
    snprintf(side, sizeof(side), "%s-shm", db);
    unlink(side);
    assert_int_equal(rmdir(dir), 0);
}

/* ---- apply mode under load ------------------------------------------------ */

#define LOAD_BATCHES 5    /* batches of CM_FED_BATCH_MAX delivers the peer sends */
#define LOAD_SINGLES 1500 /* and delivers alone, between the second and third */
#define LOAD_N       (LOAD_BATCHES * CM_FED_BATCH_MAX + LOAD_SINGLES)
/* A flood past what the node parks from one peer (8,192 delivers, beside
** the engine's 2,048), and then more messages than ZeroMQ queues unread
** for a link (1,024): batches, then delivers alone. */
#define STALL_BATCHES 12
#define STALL_SINGLES 3000
#define STALL_N       (STALL_BATCHES * CM_FED_BATCH_MAX + STALL_SINGLES)
#define LOAD_CAP      STALL_N /* the most delivers a test's flood sends */
#define LOAD_ENGINE   256     /* answers per turn of the loop: the engine's batch */

/* A stand-in engine: the tickets handed to it, answered in arrival order,
** LOAD_ENGINE a turn, with the real engine's rule (the next message of the
** peer is applied, an earlier one is a duplicate, a later one waits busy). */
typedef struct load_world {
    cm_fed *fed;
    uv_idle_t engine;
    void **tickets;
    long *seqs, head, tail, cap;
    long handed, answered, peak, stats_off;
    long next_seq, dups, busy;
    long n; /* the delivers the flood sends: LOAD_N unless the test says */
    bool answered_seq[LOAD_CAP + 1];
    int acked[LOAD_CAP + 1];
    long early_acks, other_answers, hellos;
    bool hold; /* the engine answers nothing while set */
} load_world;

static void load_engine_turn(uv_idle_t *h)
{
    load_world *w = h->data;
    if (w->hold) {
        uv_idle_stop(h);
        return;
    }
    /* an answer may read more from the peer, which lands at the tail */
    for (int i = 0; i < LOAD_ENGINE && w->head < w->tail; i++) {
        long seq = w->seqs[w->head];
        void *t = w->tickets[w->head++];
        w->answered++;
        if (seq == w->next_seq) {
            w->next_seq++;
            w->answered_seq[seq] = true;
            cm_fed_answer(t, "received", NULL);
        } else if (seq < w->next_seq) {
            w->dups++;
            cm_fed_answer(t, "duplicate", NULL);
        } else {
            w->busy++;
            cm_fed_answer(t, NULL, "out of order");
        }
    }
    if (w->head == w->tail)
        uv_idle_stop(h);
}

static int load_apply(void *ud, const char *peer, const cm_fed_msg *m, void *ticket)
{
    load_world *w = ud;
    cm_fed_apply_stats st;
    const char *colon = strrchr(m->id, ':');
    if (w->tail == w->cap) {
        long cap = w->cap ? 2 * w->cap : 1024;
        void **t = realloc(w->tickets, (size_t)cap * sizeof(*t));
        if (t)
            w->tickets = t;
        long *s = realloc(w->seqs, (size_t)cap * sizeof(*s));
        if (s)
            w->seqs = s;
        if (!t || !s)
            return -1;
        w->cap = cap;
    }
    w->tickets[w->tail] = ticket;
    w->seqs[w->tail++] = colon ? strtol(colon + 1, NULL, 10) : -1;
    w->handed++;
    if (w->handed - w->answered > w->peak)
        w->peak = w->handed - w->answered;
    cm_fed_apply_stats_get(w->fed, &st);
    if (st.applying != w->handed - w->answered)
        w->stats_off++;
    uv_idle_start(&w->engine, load_engine_turn);
    return 0;
}

/* One deliver from the peer as JSON text, appended to b. */
static void load_deliver(cm_buf *b, long seq)
{
    cm_buf_printf(b,
                  "{\"type\":\"deliver\",\"id\":\"peer-x:%ld\",\"kind\":\"test.note\","
                  "\"to\":\"org-b\",\"payload\":{\"n\":%ld}",
                  seq, seq);
    if (seq > 1)
        cm_buf_printf(b, ",\"prev\":\"peer-x:%ld\"", seq - 1);
    cm_buf_put(b, "}", 1);
}

static void load_send(void *d, cm_buf *b)
{
    assert_false(b->oom);
    assert_int_equal(zmq_send(d, b->p, b->len, 0), (int)b->len);
    cm_buf_reset(b);
}

/* Read the answers waiting at the peer: count acks by message, and note any
** ack for a message the engine had not answered. */
static void load_read_answers(load_world *w, void *d)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (zmq_msg_recv(&msg, d, ZMQ_DONTWAIT) >= 0) {
        cm_fed_msg m;
        cm_fed_batch b;
        cm_err err;
        char id[192];
        if (cm_fed_decode_any(zmq_msg_data(&msg), zmq_msg_size(&msg), &m, &b, &err) != 0)
            fail_msg("the peer got a bad answer: %s", err.msg);
        bool batch = m.type == CM_FED_BATCH;
        int entries = batch ? b.n : 1;
        for (int i = 0; i < entries; i++) {
            if (batch && cm_fed_batch_entry(&b, i, &m, id, &err) != 0)
                fail_msg("the peer got a bad answer: %s", err.msg);
            const char *colon = strrchr(m.id, ':');
            long seq = colon ? strtol(colon + 1, NULL, 10) : 0;
            if (m.type == CM_FED_HELLO)
                w->hellos++;
            else if (m.type == CM_FED_ACK && strcmp(m.result, "received") == 0 && seq >= 1 &&
                     seq <= w->n) {
                w->acked[seq]++;
                if (!w->answered_seq[seq])
                    w->early_acks++;
            } else
                w->other_answers++;
            cm_fed_msg_clear(&m);
        }
        if (batch)
            cm_fed_batch_free(&b);
    }
    zmq_msg_close(&msg);
}

/* Turn the loop and read the peer's answers until done() or 60 s pass. */
static bool load_turn_until(uv_loop_t *loop, load_world *w, void *d, bool (*done)(load_world *))
{
    uv_update_time(loop);
    uint64_t until = uv_now(loop) + 60000;
    while (!done(w)) {
        uv_run(loop, UV_RUN_ONCE); /* the 10 ms tick at least */
        load_read_answers(w, d);
        if (uv_now(loop) > until)
            return false;
    }
    return true;
}

static bool load_said_hello(load_world *w)
{
    return w->hellos > 0;
}

static bool load_all_acked(load_world *w)
{
    for (long i = 1; i <= w->n; i++)
        if (w->acked[i] == 0)
            return false;
    return true;
}

/* Everything at once from the peer at d: batches of CM_FED_BATCH_MAX
** delivers, and singles delivers alone before batch at (after the last
** when at is batches); seqs from 1. */
static void load_flood_as(void *d, cm_buf *b, int batches, int singles, int at)
{
    long seq = 1;
    for (int k = 0; k <= batches; k++) {
        if (k == at)
            for (int i = 0; i < singles; i++) {
                load_deliver(b, seq++);
                load_send(d, b);
            }
        if (k == batches)
            break;
        cm_buf_puts(b, "{\"type\":\"batch\",\"messages\":[");
        for (int i = 0; i < CM_FED_BATCH_MAX; i++) {
            if (i)
                cm_buf_put(b, ",", 1);
            load_deliver(b, seq++);
        }
        cm_buf_puts(b, "]}");
        load_send(d, b);
    }
    assert_int_equal(seq, (long)batches * CM_FED_BATCH_MAX + singles + 1);
}

/* Batches, then delivers alone, then batches; LOAD_N in all. */
static void load_flood(void *d, cm_buf *b)
{
    load_flood_as(d, b, LOAD_BATCHES, LOAD_SINGLES, 2);
}

/* A bare peer: a DEALER with the key pair pub/sec, connected to the node
** at ep whose public key is server. */
static void *load_peer(void *ctx, const char *ep, const char *server, const char *pub,
                       const char *sec)
{
    int zero = 0;
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(d);
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(d, ZMQ_SNDHWM, &zero, sizeof(zero)); /* it never waits to send */
    zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, server, 40);
    zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, pub, 40);
    zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, sec, 40);
    assert_int_equal(zmq_connect(d, ep), 0);
    return d;
}

/* A node in apply mode whose engine is a load_world, listening on
** 127.0.0.1 at a port it picked (ep), with npeers bare peers configured
** (peer-x, peer-y; their keys in pub and sec), the ZeroMQ context of the
** bare peers (each closed by its test before load_node_stop) and a buffer
** for what they send. */
typedef struct load_node {
    cm_test_node *n;
    uv_loop_t loop;
    cm_config cfg;
    cm_keypair keys;
    char pub[2][41], sec[2][41], ep[256];
    void *ctx;
    cm_buf b;
} load_node;

/* Start the node, its links' heartbeat every heartbeat_ms (0: the
** default); its engine, the load_world (freed by load_node_free). */
static load_world *load_node_start_beating(load_node *ln, int npeers, int heartbeat_ms)
{
    cm_err err;
    load_world *w = calloc(1, sizeof(*w));
    memset(ln, 0, sizeof(*ln));
    ln->n = cm_test_node_new();
    assert_non_null(ln->n);
    assert_non_null(w);
    assert_non_null(ln->ctx = zmq_ctx_new());
    cm_log_set_level(CM_LOG_WARN); /* a line per message otherwise */
    assert_int_equal(cm_keys_generate(&ln->keys, &err), 0);
    cm_config_defaults(&ln->cfg);
    ln->cfg.fed_enabled = true;
    snprintf(ln->cfg.fed_listen, sizeof(ln->cfg.fed_listen), "tcp://127.0.0.1:*");
    ln->cfg.fed_npeers = npeers;
    for (int i = 0; i < npeers; i++) {
        cm_peer_config *p = &ln->cfg.fed_peers[i];
        assert_int_equal(zmq_curve_keypair(ln->pub[i], ln->sec[i]), 0);
        snprintf(p->id, sizeof(p->id), "peer-%c", "xy"[i]);
        snprintf(p->endpoint, sizeof(p->endpoint), "tcp://127.0.0.1:9");
        snprintf(p->public_key, sizeof(p->public_key), "%.40s", ln->pub[i]);
    }
    assert_int_equal(uv_loop_init(&ln->loop), 0);
    assert_int_equal(uv_idle_init(&ln->loop, &w->engine), 0);
    w->engine.data = w;
    w->next_seq = 1;
    w->n = LOAD_N;
    cm_fed_opts fo = {.loop = &ln->loop,
                      .store = ln->n->store,
                      .clock = ln->n->clock,
                      .cfg = &ln->cfg,
                      .node_id = "node-b",
                      .keys = &ln->keys,
                      .poll_ms = 10,
                      .apply = load_apply,
                      .engine_ud = w,
                      .heartbeat_ms = heartbeat_ms};
    assert_int_equal(cm_fed_start(&fo, &w->fed, &err), 0);
    assert_int_equal(cm_fed_listen_endpoint(w->fed, ln->ep, sizeof(ln->ep)), 0);
    assert_non_null(strstr(ln->ep, "tcp://127.0.0.1:"));
    return w;
}

static load_world *load_node_start(load_node *ln, int npeers)
{
    return load_node_start_beating(ln, npeers, 0);
}

/* Stop and destroy the node's federation and its engine's handle. */
static void load_fed_stop(load_node *ln, load_world *w)
{
    cm_fed_stop(w->fed);
    uv_close((uv_handle_t *)&w->engine, NULL);
    uv_run(&ln->loop, UV_RUN_DEFAULT);
    cm_fed_destroy(&w->fed);
}

/* After load_fed_stop: free the rest of what load_node_start made, and w. */
static void load_node_free(load_node *ln, load_world *w)
{
    assert_int_equal(uv_loop_close(&ln->loop), 0);
    cm_config_free(&ln->cfg);
    cm_keys_wipe(&ln->keys);
    free(w->tickets);
    free(w->seqs);
    free(w);
    cm_test_node_free(ln->n);
    free(ln->b.p);
    zmq_ctx_term(ln->ctx);
}

/* Stop and free what load_node_start made, and w. */
static void load_node_stop(load_node *ln, load_world *w)
{
    load_fed_stop(ln, w);
    load_node_free(ln, w);
}

/* peer-x (a bare DEALER with its configured key) says hello to the node
** and is answered: its DEALER. */
static void *load_peer_hello(load_node *ln, load_world *w)
{
    cm_buf *b = &ln->b;
    void *dx = load_peer(ln->ctx, ln->ep, ln->keys.public_key, ln->pub[0], ln->sec[0]);
    cm_buf_puts(b, "{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"peer-x\","
                   "\"caps\":[\"deliver\",\"batch\"]}");
    load_send(dx, b);
    assert_true(load_turn_until(&ln->loop, w, dx, load_said_hello));
    return dx;
}

/* Once the engine answered all the flood: never more than the bound with
** it; each applied once, in order, and acked once, after its answer. */
static void load_check_each_applied_once_in_order(load_world *w)
{
    assert_true(w->peak <= CM_FED_APPLY_MAX);
    assert_int_equal(w->next_seq, w->n + 1);
    assert_int_equal(w->busy, 0); /* nothing reached the engine out of order */
    for (long i = 1; i <= w->n; i++)
        if (w->acked[i] != 1)
            fail_msg("peer-x:%ld acked %d times", i, w->acked[i]);
    assert_int_equal(w->early_acks, 0);
    assert_int_equal(w->other_answers, 0);
    assert_int_equal(w->dups, 0); /* nothing was dropped, so nothing was resent */
}

/* A peer sends several times what may wait in the engine, without waiting
** for answers: the ROUTER stops reading past the mark (the rest waits in
** ZeroMQ) and reads on as the engine answers, though no new edge comes. No
** more than CM_FED_APPLY_MAX are ever with the engine unanswered; each is
** applied once, in order, and acked only after the engine answered it. */
static void test_apply_mode_bounds_what_waits_in_the_engine(void **state)
{
    load_node ln;
    cm_fed_apply_stats st;
    load_world *w = load_node_start(&ln, 1);
    void *d = load_peer_hello(&ln, w);
    load_flood(d, &ln.b);
    assert_true(load_turn_until(&ln.loop, w, d, load_all_acked));

    /* never past the bound, and the bound was reached: reading paused */
    cm_fed_apply_stats_get(w->fed, &st);
    assert_true(w->peak > CM_FED_APPLY_MAX - CM_FED_BATCH_MAX);
    assert_int_equal(st.applying_max, w->peak);
    assert_true(st.pauses > 0);
    assert_int_equal(w->stats_off, 0);
    load_check_each_applied_once_in_order(w);
    assert_int_equal(st.applying, 0);
    assert_false(st.paused);

    zmq_close(d);
    load_node_stop(&ln, w);
}

static bool load_engine_held_full(load_world *w)
{
    return w->handed > CM_FED_APPLY_MAX - CM_FED_BATCH_MAX;
}

/* Turn the loop until the bare peer at d gets an answer of type want, or
** 10 s pass; the other answers it reads are dropped. */
static bool load_turn_until_answer(uv_loop_t *loop, void *d, cm_fed_type want)
{
    uv_update_time(loop);
    uint64_t until = uv_now(loop) + 10000;
    while (uv_now(loop) <= until) {
        uv_run(loop, UV_RUN_ONCE); /* the 10 ms tick at least */
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        while (zmq_msg_recv(&msg, d, ZMQ_DONTWAIT) >= 0) {
            cm_fed_msg m;
            cm_err err;
            if (cm_fed_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), &m, &err) == 0) {
                bool found = m.type == want;
                cm_fed_msg_clear(&m);
                if (found) {
                    zmq_msg_close(&msg);
                    return true;
                }
            }
        }
        zmq_msg_close(&msg);
    }
    return false;
}

/* peer-x's delivers parked now, or -1. */
static long load_x_parked_now(load_world *w)
{
    long n;
    size_t bytes;
    return cm_fed_peer_parked(w->fed, "peer-x", &n, &bytes) == 0 ? n : -1;
}

static bool load_x_parked(load_world *w)
{
    return load_x_parked_now(w) > 0;
}

/* All of peer-x's flood the engine does not hold waits parked. */
static bool load_x_all_parked(load_world *w)
{
    return load_x_parked_now(w) == LOAD_N - w->handed;
}

/* The engine holds all it may, and what the node read of peer-x's flood
** past that waits parked. The two come apart in time: the ROUTER hands
** over the first two batches as soon as they arrive, and parks the third
** message only once ZeroMQ has it, which on a loaded machine (valgrind)
** can be turns of the loop later; until then nothing waits, and the node
** is rightly not paused. */
static bool load_engine_full_and_x_parked(load_world *w)
{
    return load_engine_held_full(w) && load_x_parked(w);
}

/* peer-x says hello and floods the node, whose engine answers nothing
** (w->hold) until the test lets it, until the engine holds all it may and
** more of the flood waits parked: peer-x's DEALER. */
static void *load_fill_engine(load_node *ln, load_world *w)
{
    w->hold = true;
    void *dx = load_peer_hello(ln, w);
    load_flood(dx, &ln->b);
    assert_true(load_turn_until(&ln->loop, w, dx, load_engine_full_and_x_parked));
    return dx;
}

/* One peer floods the node while its engine answers nothing, so what the
** engine holds reaches the mark; another peer then says hello and is
** answered at once, and a directory it shares is recorded, while the
** first peer's delivers still wait, parked, and counted as its own. Once
** the engine answers, each of them is applied once, in order, never more
** than CM_FED_APPLY_MAX at once, and none is parked any more. */
static void test_a_full_engine_does_not_hold_another_peers_hello(void **state)
{
    load_node ln;
    cm_fed_apply_stats st;
    load_world *w = load_node_start(&ln, 2);
    void *dx = load_fill_engine(&ln, w);
    cm_fed_apply_stats_get(w->fed, &st);
    assert_true(st.paused);

    /* peer-y comes while the engine holds all it may */
    void *dy = load_peer(ln.ctx, ln.ep, ln.keys.public_key, ln.pub[1], ln.sec[1]);
    cm_buf_puts(&ln.b, "{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"peer-y\","
                       "\"caps\":[\"deliver\",\"batch\"]}");
    load_send(dy, &ln.b);
    assert_true(load_turn_until_answer(&ln.loop, dy, CM_FED_HELLO));
    cm_buf_puts(&ln.b, "{\"type\":\"directory\",\"id\":\"peer-y:directory:1\",\"organizations\":"
                       "[{\"id\":\"org-y\",\"name\":\"Y\",\"node\":\"peer-y\"}]}");
    load_send(dy, &ln.b);
    assert_true(load_turn_until_answer(&ln.loop, dy, CM_FED_ACK));
    assert_int_equal(w->answered, 0); /* the engine still held everything */
    assert_true(w->handed <= CM_FED_APPLY_MAX);
    cm_fed_apply_stats_get(w->fed, &st);
    assert_true(st.paused);
    /* peer-x's delivers not handed over wait parked, each counted with its
    ** bytes (a deliver's text is more than 60); none of peer-y's */
    long parked;
    size_t parked_bytes;
    assert_int_equal(cm_fed_peer_parked(w->fed, "peer-x", &parked, &parked_bytes), 0);
    assert_true(parked > 0 && parked <= LOAD_N - w->handed);
    assert_true(parked_bytes > (size_t)parked * 60);
    assert_int_equal(cm_fed_peer_parked(w->fed, "peer-y", &parked, &parked_bytes), 0);
    assert_int_equal(parked, 0);
    assert_int_equal(parked_bytes, 0);
    assert_int_equal(cm_fed_peer_parked(w->fed, "peer-z", &parked, &parked_bytes), -1);

    /* the engine answers: each of peer-x's applied once, in order */
    w->hold = false;
    uv_idle_start(&w->engine, load_engine_turn);
    assert_true(load_turn_until(&ln.loop, w, dx, load_all_acked));
    load_check_each_applied_once_in_order(w);
    cm_fed_apply_stats_get(w->fed, &st);
    assert_int_equal(st.applying, 0);
    assert_false(st.paused);
    assert_int_equal(cm_fed_peer_parked(w->fed, "peer-x", &parked, &parked_bytes), 0);
    assert_int_equal(parked, 0);
    assert_int_equal(parked_bytes, 0);

    zmq_close(dx);
    zmq_close(dy);
    load_node_stop(&ln, w);
}

/* A node stopped and destroyed while its engine holds all it may and more
** of a peer's delivers wait parked: the parked ones are freed with it, and
** the engine's answers that come after the federation is gone free their
** tickets and batches and send nothing (ASan: no leak, no use after free). */
static void test_a_federation_destroyed_with_delivers_parked_frees_them(void **state)
{
    load_node ln;
    cm_fed_apply_stats st;
    load_world *w = load_node_start(&ln, 1);
    void *dx = load_fill_engine(&ln, w);
    /* the rest of the flood read and parked (under the bound of one peer) */
    assert_true(load_turn_until(&ln.loop, w, dx, load_x_all_parked));
    cm_fed_apply_stats_get(w->fed, &st);
    assert_true(st.paused);
    assert_true(w->handed <= CM_FED_APPLY_MAX);

    load_fed_stop(&ln, w);
    /* the engine answers after the federation is gone */
    for (long i = w->head; i < w->tail; i++)
        cm_fed_answer(w->tickets[i], "received", NULL);
    w->head = w->tail;
    zmq_close(dx);
    load_node_free(&ln, w);
}

/* peer-x's delivers parked reached the bound of one peer (FED_PARK_PEER_MAX,
** core/fed.c; docs/federation.md): the node reads no more. */
#define LOAD_PARK_PEER_MAX 8192

static bool load_x_parked_to_the_bound(load_world *w)
{
    return load_x_parked_now(w) >= LOAD_PARK_PEER_MAX;
}

/* A monitor of the bare peer's DEALER d that reports its link dropping:
** a PAIR socket to read with load_link_dropped, closed by the test. */
static void *load_peer_monitor(load_node *ln, void *d)
{
    int zero = 0;
    void *mon = zmq_socket(ln->ctx, ZMQ_PAIR);
    assert_non_null(mon);
    zmq_setsockopt(mon, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(zmq_socket_monitor(d, "inproc://load-peer-monitor", ZMQ_EVENT_DISCONNECTED),
                     0);
    assert_int_equal(zmq_connect(mon, "inproc://load-peer-monitor"), 0);
    return mon;
}

/* Whether the monitor mon has reported the link dropped (read without
** waiting: an event is its number and value, then its endpoint). */
static bool load_link_dropped(void *mon)
{
    bool dropped = false;
    uint16_t event;
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (zmq_msg_recv(&m, mon, ZMQ_DONTWAIT) >= 0)
        if (zmq_msg_more(&m) && zmq_msg_size(&m) >= sizeof(event)) {
            memcpy(&event, zmq_msg_data(&m), sizeof(event));
            dropped |= event == ZMQ_EVENT_DISCONNECTED;
        }
    zmq_msg_close(&m);
    return dropped;
}

/* A peer floods the node while its engine answers nothing, past what the
** node parks from one peer, so the node stops reading; and with more
** unread than ZeroMQ queues for a link (1,024), ZeroMQ stops reading the
** connection, the peer's PONGs with the rest. The link stays up through
** 20 heartbeats of that (100 ms each here): the ROUTER used to drop it
** after 3 unanswered PINGs, and every answer then went to a link that was
** gone (none of the flood was ever acked). Once the engine answers, each
** deliver is applied once, in order, and acked once, on the same link. */
static void test_a_router_that_stops_reading_keeps_the_link(void **state)
{
    load_node ln;
    cm_fed_apply_stats st;
    load_world *w = load_node_start_beating(&ln, 1, 100);
    w->n = STALL_N;
    w->hold = true;
    void *dx = load_peer_hello(&ln, w);
    void *mon = load_peer_monitor(&ln, dx);
    load_flood_as(dx, &ln.b, STALL_BATCHES, STALL_SINGLES, STALL_BATCHES);
    assert_true(load_turn_until(&ln.loop, w, dx, load_x_parked_to_the_bound));

    /* 20 heartbeats with reading stopped: what is under test is that
    ** nothing happens in that time, so it is a time, not a condition */
    uv_update_time(&ln.loop);
    for (uint64_t until = uv_now(&ln.loop) + 20 * 100; uv_now(&ln.loop) < until;) {
        uv_run(&ln.loop, UV_RUN_ONCE); /* the 10 ms tick at least */
        load_read_answers(w, dx);
    }
    cm_fed_apply_stats_get(w->fed, &st);
    assert_true(st.paused);
    assert_int_equal(load_x_parked_now(w), LOAD_PARK_PEER_MAX); /* no more was read */
    assert_int_equal(w->handed, CM_FED_APPLY_MAX);
    assert_false(load_link_dropped(mon));

    w->hold = false;
    uv_idle_start(&w->engine, load_engine_turn);
    assert_true(load_turn_until(&ln.loop, w, dx, load_all_acked));
    assert_false(load_link_dropped(mon));
    load_check_each_applied_once_in_order(w);
    assert_int_equal(w->hellos, 1);

    zmq_close(mon);
    zmq_close(dx);
    load_node_stop(&ln, w);
}

/* ---- a sending node and a bare peer ---------------------------------------- */

/* A node "node-a" whose one peer "node-b" is a bare ROUTER (r) on
** 127.0.0.1 at a port it picked, with the key configured for node-b. The
** test starts its federation (fo, poll 10 ms) once its rows are in. */
typedef struct send_node {
    cm_test_node *n;
    void *ctx, *r;
    cm_keypair keys;
    cm_config cfg;
    uv_loop_t loop;
    cm_fed_opts fo;
} send_node;

static void send_node_start(send_node *sn)
{
    char pub[41], sec[41], ep[256];
    size_t eplen = sizeof(ep);
    cm_err err;
    int zero = 0, one = 1;
    memset(sn, 0, sizeof(*sn));
    sn->n = cm_test_node_new();
    assert_non_null(sn->n);
    cm_log_set_level(CM_LOG_WARN);
    assert_int_equal(cm_keys_generate(&sn->keys, &err), 0);
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    sn->ctx = zmq_ctx_new();
    sn->r = zmq_socket(sn->ctx, ZMQ_ROUTER);
    assert_non_null(sn->r);
    zmq_setsockopt(sn->r, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(sn->r, ZMQ_CURVE_SERVER, &one, sizeof(one));
    zmq_setsockopt(sn->r, ZMQ_CURVE_SECRETKEY, sec, 40);
    assert_int_equal(zmq_bind(sn->r, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_getsockopt(sn->r, ZMQ_LAST_ENDPOINT, ep, &eplen), 0);
    cm_config_defaults(&sn->cfg);
    sn->cfg.fed_enabled = true;
    snprintf(sn->cfg.fed_listen, sizeof(sn->cfg.fed_listen), "tcp://127.0.0.1:*");
    sn->cfg.fed_npeers = 1;
    cm_peer_config *p = &sn->cfg.fed_peers[0];
    snprintf(p->id, sizeof(p->id), "node-b");
    snprintf(p->endpoint, sizeof(p->endpoint), "%s", ep);
    snprintf(p->public_key, sizeof(p->public_key), "%s", pub);
    assert_int_equal(uv_loop_init(&sn->loop), 0);
    sn->fo = (cm_fed_opts){.loop = &sn->loop,
                           .store = sn->n->store,
                           .clock = sn->n->clock,
                           .cfg = &sn->cfg,
                           .node_id = "node-a",
                           .keys = &sn->keys,
                           .poll_ms = 10};
}

/* Stop and destroy *fed, running its closes on the loop. */
static void send_fed_stop(send_node *sn, cm_fed **fed)
{
    cm_fed_stop(*fed);
    uv_run(&sn->loop, UV_RUN_DEFAULT);
    cm_fed_destroy(fed);
}

/* After send_fed_stop: free what send_node_start made. */
static void send_node_stop(send_node *sn)
{
    assert_int_equal(uv_loop_close(&sn->loop), 0);
    zmq_close(sn->r);
    zmq_ctx_term(sn->ctx);
    cm_config_free(&sn->cfg);
    cm_keys_wipe(&sn->keys);
    cm_test_node_free(sn->n);
}

/* ---- a row routed late, while rows after it are in flight ----------------- */

/* Turn the loop, reading what reaches the bare peer (answering its hello),
** until the text of a message it got holds want, or 10 s pass. */
static bool late_turn_until_sent(uv_loop_t *loop, void *r, const char *want)
{
    uv_update_time(loop);
    uint64_t until = uv_now(loop) + 10000;
    static const char hello[] = "{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"node-b\","
                                "\"caps\":[\"deliver\",\"batch\"]}";
    while (uv_now(loop) < until) {
        uv_run(loop, UV_RUN_ONCE); /* the 10 ms tick at least */
        zmq_msg_t rid, body;
        zmq_msg_init(&rid);
        zmq_msg_init(&body);
        while (zmq_msg_recv(&rid, r, ZMQ_DONTWAIT) >= 0 && zmq_msg_recv(&body, r, 0) >= 0) {
            size_t n = zmq_msg_size(&body);
            char *text = strndup(zmq_msg_data(&body), n);
            assert_non_null(text);
            bool found = strstr(text, want) != NULL;
            if (strstr(text, "\"hello\"")) {
                assert_int_equal(zmq_send(r, zmq_msg_data(&rid), zmq_msg_size(&rid), ZMQ_SNDMORE),
                                 (int)zmq_msg_size(&rid));
                assert_int_equal(zmq_send(r, hello, sizeof(hello) - 1, 0), (int)sizeof(hello) - 1);
            }
            free(text);
            if (found) {
                zmq_msg_close(&rid);
                zmq_msg_close(&body);
                return true;
            }
        }
        zmq_msg_close(&rid);
        zmq_msg_close(&body);
    }
    return false;
}

static int64_t late_query(cm_test_node *n, const char *sql)
{
    sqlite3_stmt *st;
    int64_t v = -1;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(n->store), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Rows 10-12 are in flight to a peer that does not answer; a row queued
** earlier (seq 5) is routed to that peer only now. The window fills after
** its last row, so row 5 would never go, and once 10-12 were delivered
** the peer's mark would count it as delivered: it takes the next seq and
** goes after them. */
static void test_a_row_routed_late_goes_after_rows_in_flight(void **state)
{
    send_node sn;
    cm_fed *fed = NULL;
    cm_err err;
    send_node_start(&sn); /* the peer never acks */
    cm_test_node *n = sn.n;
    assert_int_equal(sqlite3_exec(cm_store_db(n->store),
                                  "INSERT INTO record(kind, id, doc, created, updated) VALUES "
                                  "('organization', 'cardio', '{\"node\":\"node-b\"}', 'now', "
                                  "'now');"
                                  "INSERT INTO outbox(seq, receiver, peer, kind, payload, created) "
                                  "VALUES (10, 'cardio', 'node-b', 'test.note', '{}', 'now'), "
                                  "(11, 'cardio', 'node-b', 'test.note', '{}', 'now'), "
                                  "(12, 'cardio', 'node-b', 'test.note', '{}', 'now')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(cm_fed_start(&sn.fo, &fed, &err), 0);
    assert_true(late_turn_until_sent(&sn.loop, sn.r, "\"node-a:12\""));

    assert_int_equal(sqlite3_exec(cm_store_db(n->store),
                                  "INSERT INTO outbox(seq, receiver, kind, payload, created) "
                                  "VALUES (5, 'cardio', 'late.note', '{}', 'now')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    cm_fed_wake(fed);
    assert_true(late_turn_until_sent(&sn.loop, sn.r, "\"late.note\""));
    assert_int_equal(late_query(n, "SELECT count(*) FROM outbox WHERE seq = 5"), 0);
    int64_t seq = late_query(n, "SELECT seq FROM outbox WHERE kind = 'late.note' AND peer = "
                                "'node-b' AND status = 'pending'");
    assert_int_equal(seq, 13);

    send_fed_stop(&sn, &fed);
    send_node_stop(&sn);
}

/* ---- the sweep of rows delivered under a peer's mark ---------------------- */

#define SWEEP_UNDER 3000 /* rows of node-b under its mark: seqs 2, 4, ... 6000 */
#define SWEEP_MARK  (2 * SWEEP_UNDER)
#define SWEEP_ABOVE 3 /* rows of node-b above it: SWEEP_MARK + 2, + 4, + 6 */

static const char sweep_hello[] = "{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"node-b\","
                                  "\"caps\":[\"deliver\"]}";

/* The bare peer: a ROUTER that answers hello (announcing single delivers
** only) when answer is set, and acks every deliver received unless
** hold_acks is set; counts by seq what reached it, and the hellos, and
** keeps the routing id of the node's link. */
typedef struct sweep_peer {
    void *r;
    bool answer, hold_acks;
    int got[SWEEP_MARK + 2 * SWEEP_ABOVE + 1];
    long out_of_range, hellos;
    uint8_t rid[256];
    size_t rid_len;
    int64_t want; /* sweep_turn_until: node-b's pending rows at most this */
} sweep_peer;

/* The sending node (send_node_start) and its bare peer (free it). */
static sweep_peer *sweep_start(send_node *sn)
{
    sweep_peer *sp = calloc(1, sizeof(*sp));
    assert_non_null(sp);
    send_node_start(sn);
    sp->r = sn->r;
    return sp;
}

/* Send text to the node on the link the peer last read from. */
static void sweep_peer_send(sweep_peer *sp, const char *text)
{
    assert_int_equal(zmq_send(sp->r, sp->rid, sp->rid_len, ZMQ_SNDMORE), (int)sp->rid_len);
    assert_int_equal(zmq_send(sp->r, text, strlen(text), 0), (int)strlen(text));
}

/* Send the node an ack of its message seq. */
static void sweep_peer_ack(sweep_peer *sp, long seq)
{
    cm_fed_msg ack;
    memset(&ack, 0, sizeof(ack));
    ack.type = CM_FED_ACK;
    snprintf(ack.id, sizeof(ack.id), "node-a:%ld", seq);
    snprintf(ack.result, sizeof(ack.result), "received");
    char *text = cm_fed_encode(&ack);
    assert_non_null(text);
    sweep_peer_send(sp, text);
    free(text);
}

static void sweep_peer_read(sweep_peer *sp)
{
    zmq_msg_t rid, body;
    zmq_msg_init(&rid);
    zmq_msg_init(&body);
    while (zmq_msg_recv(&rid, sp->r, ZMQ_DONTWAIT) >= 0 && zmq_msg_recv(&body, sp->r, 0) >= 0) {
        cm_fed_msg m;
        cm_err err;
        assert_int_equal(cm_fed_decode(zmq_msg_data(&body), zmq_msg_size(&body), &m, &err), 0);
        assert_true(zmq_msg_size(&rid) <= sizeof(sp->rid));
        sp->rid_len = zmq_msg_size(&rid);
        memcpy(sp->rid, zmq_msg_data(&rid), sp->rid_len);
        if (m.type == CM_FED_HELLO) {
            sp->hellos++;
            if (sp->answer)
                sweep_peer_send(sp, sweep_hello);
        } else if (m.type == CM_FED_DELIVER) {
            const char *colon = strrchr(m.id, ':');
            long seq = colon ? strtol(colon + 1, NULL, 10) : 0;
            if (seq >= 1 && seq <= SWEEP_MARK + 2 * SWEEP_ABOVE)
                sp->got[seq]++;
            else
                sp->out_of_range++;
            if (!sp->hold_acks)
                sweep_peer_ack(sp, seq);
        }
        cm_fed_msg_clear(&m);
    }
    zmq_msg_close(&rid);
    zmq_msg_close(&body);
}

/* The rows of peer still pending, counted through outbox_pending. */
static int64_t sweep_pending(cm_test_node *n, const char *peer)
{
    char sql[200];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM outbox INDEXED BY outbox_pending "
             "WHERE peer = '%s' AND status = 'pending'",
             peer);
    return late_query(n, sql);
}

/* Turn the loop (serving the bare peer) until done, or 10 s pass. */
static bool sweep_turn(uv_loop_t *loop, cm_test_node *n, sweep_peer *sp,
                       bool (*done)(cm_test_node *, sweep_peer *))
{
    uv_update_time(loop);
    uint64_t until = uv_now(loop) + 10000;
    while (!done(n, sp)) {
        if (uv_now(loop) > until)
            return false;
        uv_run(loop, UV_RUN_ONCE); /* the 10 ms tick at least */
        sweep_peer_read(sp);
    }
    return true;
}

static bool sweep_pending_down_to_want(cm_test_node *n, sweep_peer *sp)
{
    return sweep_pending(n, "node-b") <= sp->want;
}

/* Turn the loop until node-b's pending rows in the index are at most want. */
static bool sweep_turn_until(uv_loop_t *loop, cm_test_node *n, sweep_peer *sp, int64_t want)
{
    sp->want = want;
    return sweep_turn(loop, n, sp, sweep_pending_down_to_want);
}

static void sweep_depth(cm_test_node *n, long want, double want_age)
{
    long depth;
    double age;
    cm_err err;
    assert_int_equal(
        cm_fed_outbox_depth(n->store, "node-b", cm_clock_now_ms(n->clock), &depth, &age, &err), 0);
    assert_int_equal(depth, want);
    assert_true(age == want_age);
}

/* A database as schema 11 leaves it: node-b's rows under its mark still
** pending (delivered, each an entry in outbox_pending), node-c's rows
** between them pending (no mark), three of node-b's above the mark. The
** sweep writes node-b's rows under the mark delivered, FED_SWEEP_CHUNK a
** transaction; stopped between two (as a crash would), nothing under the
** mark is sent again on restart, and nothing above it is touched; once all
** are answered and swept, the index holds no delivered row. The depth and
** oldest age of node-b's outbox are the same throughout until the rows
** above the mark are delivered. */
static void test_the_sweep_writes_rows_under_the_mark_delivered(void **state)
{
    send_node sn;
    char sql[1024], old[CM_TIME_BUFSZ], older[CM_TIME_BUFSZ];
    cm_fed *fed = NULL;
    cm_err err;
    sweep_peer *sp = sweep_start(&sn);
    cm_test_node *n = sn.n;

    cm_time_format(CM_TEST_EPOCH_MS - 3600000, older, sizeof(older));
    cm_time_format(CM_TEST_EPOCH_MS - 60000, old, sizeof(old));
    snprintf(sql, sizeof(sql),
             "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %d) "
             "INSERT INTO outbox(seq, receiver, peer, kind, payload, created) "
             "SELECT i, 'org', CASE WHEN i %% 2 = 0 THEN 'node-b' ELSE 'node-c' END, "
             "'test.note', '{}', '%s' FROM s;"
             "INSERT INTO fed_delivered(peer, seq) VALUES ('node-b', %d);"
             "UPDATE outbox SET created = '%s' WHERE seq = %d;",
             SWEEP_MARK + 2 * SWEEP_ABOVE, old, SWEEP_MARK, older, SWEEP_MARK + 2);
    assert_int_equal(sqlite3_exec(cm_store_db(n->store), sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sweep_pending(n, "node-b"), SWEEP_UNDER + SWEEP_ABOVE);
    sweep_depth(n, SWEEP_ABOVE, 3600.0);

    /* the peer does not answer hello: down, nothing in flight; the sweep
    ** runs. Stopped after its first tick, between two transactions. */
    assert_int_equal(cm_fed_start(&sn.fo, &fed, &err), 0);
    assert_true(sweep_turn_until(&sn.loop, n, sp, SWEEP_UNDER + SWEEP_ABOVE - 1));
    send_fed_stop(&sn, &fed);
    int64_t left = sweep_pending(n, "node-b") - SWEEP_ABOVE;
    assert_true(left > 0);                           /* stopped before the end */
    assert_int_equal(left % 256, SWEEP_UNDER % 256); /* whole chunks, the oldest first */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM outbox WHERE peer = 'node-b' AND status = 'delivered' "
             "AND done_at IS NOT NULL AND seq <= (SELECT min(seq) FROM outbox INDEXED BY "
             "outbox_pending WHERE peer = 'node-b' AND status = 'pending')");
    assert_int_equal(late_query(n, sql), SWEEP_UNDER - left);
    sweep_depth(n, SWEEP_ABOVE, 3600.0);
    assert_int_equal(late_query(n, "SELECT count(*) FROM outbox_state WHERE peer = 'node-b' AND "
                                   "status = 'delivered'"),
                     SWEEP_UNDER);

    /* restart with the peer answering: only the rows above the mark go,
    ** once each; the sweep finishes once they are delivered. The peer acks
    ** each as it reads it, but the node may read the acks only after a
    ** slow turn (valgrind, a loaded machine): an ack timeout longer than
    ** the test waits, so no window goes again for want of an answer read
    ** in time (that would be a correct resend, not one this test is about). */
    sp->answer = true;
    sn.fo.resend_ms = 30000;
    assert_int_equal(cm_fed_start(&sn.fo, &fed, &err), 0);
    assert_true(sweep_turn_until(&sn.loop, n, sp, 0));
    send_fed_stop(&sn, &fed);
    for (int i = 1; i <= SWEEP_MARK; i++)
        if (sp->got[i] != 0)
            fail_msg("node-a:%d, under the mark, was sent again", i);
    for (int i = 1; i <= SWEEP_ABOVE; i++)
        assert_int_equal(sp->got[SWEEP_MARK + 2 * i], 1);
    assert_int_equal(sp->out_of_range, 0);
    sweep_depth(n, 0, -1.0);
    assert_int_equal(late_query(n, "SELECT seq FROM fed_delivered WHERE peer = 'node-b'"),
                     SWEEP_MARK + 2 * SWEEP_ABOVE);
    assert_int_equal(late_query(n, "SELECT count(*) FROM outbox WHERE peer = 'node-b' AND "
                                   "(status != 'delivered' OR done_at IS NULL)"),
                     0);
    /* node-c's rows, between node-b's, untouched */
    assert_int_equal(sweep_pending(n, "node-c"), SWEEP_UNDER + SWEEP_ABOVE);
    assert_int_equal(late_query(n, "SELECT count(*) FROM outbox WHERE peer = 'node-c' AND "
                                   "done_at IS NULL"),
                     SWEEP_UNDER + SWEEP_ABOVE);
    /* the depth query reads through the index */
    sqlite3_stmt *st;
    bool indexed = false;
    assert_int_equal(sqlite3_prepare_v2(cm_store_db(n->store),
                                        "EXPLAIN QUERY PLAN SELECT count(*) FROM outbox WHERE "
                                        "peer = 'node-b' AND status = 'pending'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        indexed |= strstr((const char *)sqlite3_column_text(st, 3), "outbox_pending") != NULL;
    sqlite3_finalize(st);
    assert_true(indexed);

    free(sp);
    send_node_stop(&sn);
}

static bool hello_said_again(cm_test_node *n, sweep_peer *sp)
{
    (void)n;
    return sp->hellos >= 2;
}

static bool hello_window_sent(cm_test_node *n, sweep_peer *sp)
{
    (void)n;
    return sp->got[1] > 0 && sp->got[2] > 0 && sp->got[3] > 0;
}

static bool hello_first_delivered(cm_test_node *n, sweep_peer *sp)
{
    (void)sp;
    return late_query(n, "SELECT seq FROM fed_delivered WHERE peer = 'node-b'") == 1;
}

/* The node says hello again while the first has no answer (0.5 s), and the
** peer answers each. The first answer brings the peer up and the window
** goes; the second comes on the same link, the window in flight: it is
** not sent again (only a link that came back sends it again). The ack
** timeout is longer than the test waits, so no window goes again for want
** of an answer. */
static void test_a_second_hello_answer_does_not_send_the_window_again(void **state)
{
    send_node sn;
    cm_fed *fed = NULL;
    cm_err err;
    sweep_peer *sp = sweep_start(&sn);
    cm_test_node *n = sn.n;
    sp->hold_acks = true;
    sn.fo.resend_ms = 30000;
    assert_int_equal(sqlite3_exec(cm_store_db(n->store),
                                  "INSERT INTO outbox(seq, receiver, peer, kind, payload, created) "
                                  "VALUES (1, 'org', 'node-b', 'test.note', '{}', 'now'), "
                                  "(2, 'org', 'node-b', 'test.note', '{}', 'now'), "
                                  "(3, 'org', 'node-b', 'test.note', '{}', 'now')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(cm_fed_start(&sn.fo, &fed, &err), 0);
    assert_true(sweep_turn(&sn.loop, n, sp, hello_said_again));
    assert_int_equal(cm_fed_sent(fed), 0); /* down until answered */

    sweep_peer_send(sp, sweep_hello); /* the first answer: up, the window goes */
    assert_true(sweep_turn(&sn.loop, n, sp, hello_window_sent));
    assert_int_equal(cm_fed_sent(fed), 3);

    /* the answer to the hello said again, then the ack of the first row:
    ** the node has read both once the row's mark is written */
    sweep_peer_send(sp, sweep_hello);
    sweep_peer_ack(sp, 1);
    assert_true(sweep_turn(&sn.loop, n, sp, hello_first_delivered));
    assert_int_equal(cm_fed_sent(fed), 3);

    sweep_peer_ack(sp, 2);
    sweep_peer_ack(sp, 3);
    assert_true(sweep_turn_until(&sn.loop, n, sp, 0));
    assert_int_equal(cm_fed_sent(fed), 3);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(sp->got[i], 1);
    assert_int_equal(sp->out_of_range, 0);
    assert_int_equal(late_query(n, "SELECT seq FROM fed_delivered WHERE peer = 'node-b'"), 3);

    send_fed_stop(&sn, &fed);
    free(sp);
    send_node_stop(&sn);
}

/* ---- a patient's record leaves nothing behind ------------------------------ */

#define WIPE_MARK "Okonkwo-Chidinma-1961"

int __real_zmq_msg_close(zmq_msg_t *msg);
int __wrap_zmq_msg_close(zmq_msg_t *msg);

/* A part closed while freescan looks counts as a freed block (libzmq frees
** its memory without looking). */
int __wrap_zmq_msg_close(zmq_msg_t *msg)
{
    if (freescan_marker) {
        VALGRIND_MAKE_MEM_DEFINED(zmq_msg_data(msg), zmq_msg_size(msg));
        freescan_frees++;
        freescan_dirty += freescan_holds(zmq_msg_data(msg), zmq_msg_size(msg), freescan_marker);
    }
    return __real_zmq_msg_close(msg);
}

static bool wipe_three_acked(load_world *w)
{
    return w->acked[1] && w->acked[2] && w->acked[3];
}

/* Delivers carrying a record, alone and in a batch, read by a node in apply
** mode: the parts it closes and the blocks it frees, up to its destroy,
** hold nothing of the record. */
static void test_a_record_read_leaves_nothing_in_memory_federation_frees(void **state)
{
    static const char deliver[] =
        "{\"type\":\"deliver\",\"id\":\"peer-x:%d\",\"kind\":\"test.note\",\"to\":\"org-b\","
        "\"patient\":\"p-1\",\"classes\":[\"notes\"],\"patient_record\":{\"id\":\"p-1\","
        "\"family\":\"" WIPE_MARK "\"},\"payload\":{\"note\":\"" WIPE_MARK "\"}%s}";
    load_node ln;
    load_world *w = load_node_start(&ln, 1);
    void *d = load_peer_hello(&ln, w);
    cm_buf *b = &ln.b;
    cm_buf_printf(b, deliver, 1, "");
    load_send(d, b);
    cm_buf_puts(b, "{\"type\":\"batch\",\"messages\":[");
    cm_buf_printf(b, deliver, 2, ",\"prev\":\"peer-x:1\"");
    cm_buf_put(b, ",", 1);
    cm_buf_printf(b, deliver, 3, ",\"prev\":\"peer-x:2\"");
    cm_buf_puts(b, "]}");
    load_send(d, b);
    freescan_start(WIPE_MARK);
    assert_true(load_turn_until(&ln.loop, w, d, wipe_three_acked));
    load_fed_stop(&ln, w);
    long frees = freescan_frees, dirty = freescan_dirty;
    freescan_start(NULL);
    assert_int_equal(w->next_seq, 4); /* all three applied */
    assert_true(frees > 0);
    if (dirty != 0)
        fail_msg("%ld of %ld freed blocks or closed parts held the record", dirty, frees);
    zmq_close(d);
    load_node_free(&ln, w);
}

/* Turn the node's loop (freescan looking) and read, not looking, what
** reaches the bare peer r, answering its hello, until count delivers
** holding mark arrived or 10 s pass. */
static bool wipe_turn_until_sent(uv_loop_t *loop, void *r, const char *mark, int count)
{
    static const char hello[] = "{\"type\":\"hello\",\"proto\":\"1.2\",\"node\":\"node-b\","
                                "\"caps\":[\"deliver\",\"batch\"]}";
    int seen = 0;
    uv_update_time(loop);
    uint64_t until = uv_now(loop) + 10000;
    while (seen < count && uv_now(loop) < until) {
        freescan_marker = mark;
        uv_run(loop, UV_RUN_ONCE); /* the 10 ms tick at least */
        freescan_marker = NULL;
        zmq_msg_t rid, body;
        zmq_msg_init(&rid);
        zmq_msg_init(&body);
        while (zmq_msg_recv(&rid, r, ZMQ_DONTWAIT) >= 0 && zmq_msg_recv(&body, r, 0) >= 0) {
            const char *p = zmq_msg_data(&body), *end = p + zmq_msg_size(&body);
            if (freescan_holds((const unsigned char *)p, (size_t)(end - p), "\"hello\"")) {
                assert_int_equal(zmq_send(r, zmq_msg_data(&rid), zmq_msg_size(&rid), ZMQ_SNDMORE),
                                 (int)zmq_msg_size(&rid));
                assert_int_equal(zmq_send(r, hello, sizeof(hello) - 1, 0), (int)sizeof(hello) - 1);
            }
            for (size_t m = strlen(mark); p + m <= end; p++)
                if (memcmp(p, mark, m) == 0)
                    seen++;
        }
        zmq_msg_close(&rid);
        zmq_msg_close(&body);
    }
    freescan_marker = mark;
    return seen >= count;
}

/* Rows carrying a record, longer than the encoder's first buffer, sent to
** a peer that announced batches: the blocks federation leaves as its
** buffers grow, and those it frees when it goes, hold nothing of it. */
static void test_a_record_sent_leaves_nothing_in_memory_federation_frees(void **state)
{
    send_node sn;
    cm_fed *fed = NULL;
    cm_err err;
    char sql[16384], pad[3001];
    memset(pad, 'x', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    send_node_start(&sn);
    snprintf(sql, sizeof(sql),
             "INSERT INTO record(kind, id, doc, created, updated) VALUES ('organization', "
             "'cardio', '{\"node\":\"node-b\"}', 'now', 'now');"
             "INSERT INTO outbox(seq, receiver, peer, kind, payload, created) VALUES "
             "(1, 'cardio', 'node-b', 'test.note', '{\"note\":\"%s%s\"}', 'now'), "
             "(2, 'cardio', 'node-b', 'test.note', '{\"note\":\"%s%s\"}', 'now'), "
             "(3, 'cardio', 'node-b', 'test.note', '{\"note\":\"%s%s\"}', 'now')",
             WIPE_MARK, pad, WIPE_MARK, pad, WIPE_MARK, pad);
    assert_int_equal(sqlite3_exec(cm_store_db(sn.n->store), sql, NULL, NULL, NULL), SQLITE_OK);
    freescan_start(WIPE_MARK);
    assert_int_equal(cm_fed_start(&sn.fo, &fed, &err), 0);
    assert_true(wipe_turn_until_sent(&sn.loop, sn.r, WIPE_MARK, 3));
    send_fed_stop(&sn, &fed);
    long frees = freescan_frees, dirty = freescan_dirty;
    freescan_start(NULL);
    assert_true(frees > 0);
    if (dirty != 0)
        fail_msg("%ld of %ld freed blocks held the record", dirty, frees);
    send_node_stop(&sn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_kind_round_trips),
        cmocka_unit_test(test_bad_messages_are_refused_by_field),
        cmocka_unit_test(test_batch_entries_decode_each_on_its_own),
        cmocka_unit_test(test_bad_batches_are_refused_whole),
        cmocka_unit_test(test_scanned_text_is_checked_and_kept_as_sent),
        cmocka_unit_test(test_mutated_messages_are_read_safely),
        cmocka_unit_test(test_zap_admits_only_configured_curve_keys),
        cmocka_unit_test(test_without_zap_handler_curve_fails_closed),
        cmocka_unit_test(test_the_listener_drops_a_vanished_peer_through_tcp),
        cmocka_unit_test(test_route_at_insert_waits_for_rows_without_a_peer),
        cmocka_unit_test(test_apply_mode_bounds_what_waits_in_the_engine),
        cmocka_unit_test(test_a_full_engine_does_not_hold_another_peers_hello),
        cmocka_unit_test(test_a_federation_destroyed_with_delivers_parked_frees_them),
        cmocka_unit_test(test_a_router_that_stops_reading_keeps_the_link),
        cmocka_unit_test(test_a_row_routed_late_goes_after_rows_in_flight),
        cmocka_unit_test(test_the_sweep_writes_rows_under_the_mark_delivered),
        cmocka_unit_test(test_a_second_hello_answer_does_not_send_the_window_again),
        cmocka_unit_test(test_a_record_read_leaves_nothing_in_memory_federation_frees),
        cmocka_unit_test(test_a_record_sent_leaves_nothing_in_memory_federation_frees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
