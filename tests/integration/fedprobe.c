/*
** fedprobe.c -- a hand-driven federation client for tests/integration/test_fed.sh:
** connects one CURVE DEALER to a node with a key pair from a key file, sends
** each MESSAGE as one frame and prints the reply (or "(no reply)" after 3 s).
** A MESSAGE "@big:N" is N bytes of 'x'. Lets the test speak what a real node
** never would: another protocol version, garbage, oversized messages.
** A MESSAGE "@flood:N[:B]" sends N test.note delivers from clinic to cardio
** (ids flood:1.., each naming the one before as prev) in batches of B
** (default and most CM_FED_BATCH_MAX), all at once without waiting, then
** reads the answers until each has one (or none came for 60 s) and prints
** their count by result.
** usage: fedprobe ENDPOINT SERVER_PUBLIC_KEY KEYFILE MESSAGE...
*/
#include "fed.h"
#include "keys.h"
#include "strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* One reply (a message or a batch of them): count each answer by result. */
static long flood_count(zmq_msg_t *msg, long *received, long *duplicate, long *busy)
{
    cm_fed_msg m;
    cm_fed_batch b;
    cm_err err;
    char id[192];
    if (cm_fed_decode_any(zmq_msg_data(msg), zmq_msg_size(msg), &m, &b, &err) != 0)
        return 1; /* counted as other */
    bool batch = m.type == CM_FED_BATCH;
    int n = batch ? b.n : 1;
    for (int i = 0; i < n; i++) {
        if (batch && cm_fed_batch_entry(&b, i, &m, id, &err) != 0)
            continue;
        if (m.type == CM_FED_ACK && strcmp(m.result, "received") == 0)
            (*received)++;
        else if (m.type == CM_FED_ACK && strcmp(m.result, "duplicate") == 0)
            (*duplicate)++;
        else if (m.type == CM_FED_ERROR && strcmp(m.code, "busy") == 0)
            (*busy)++;
        cm_fed_msg_clear(&m);
    }
    if (batch)
        cm_fed_batch_free(&b);
    return n;
}

/* @flood:N[:B] (see the top). 0, or -1 when a send failed. */
static int flood(void *s, const char *arg)
{
    char *end;
    long n = strtol(arg, &end, 10), per = *end == ':' ? strtol(end + 1, NULL, 10) : 0;
    if (per <= 0 || per > CM_FED_BATCH_MAX)
        per = CM_FED_BATCH_MAX;
    cm_buf b = {0};
    long received = 0, duplicate = 0, busy = 0, answers = 0;
    for (long seq = 1; seq <= n;) {
        cm_buf_reset(&b);
        cm_buf_puts(&b, "{\"type\":\"batch\",\"messages\":[");
        for (int i = 0; i < per && seq <= n; i++, seq++) {
            cm_buf_printf(&b,
                          "%s{\"type\":\"deliver\",\"id\":\"flood:%ld\",\"kind\":\"test.note\","
                          "\"to\":\"cardio\",\"from\":\"clinic\",\"purpose\":"
                          "\"care_coordination\",\"classes\":[\"notes\"],\"payload\":{\"n\":%ld}",
                          i ? "," : "", seq, seq);
            if (seq > 1)
                cm_buf_printf(&b, ",\"prev\":\"flood:%ld\"", seq - 1);
            cm_buf_put(&b, "}", 1);
        }
        cm_buf_puts(&b, "]}");
        if (b.oom || zmq_send(s, b.p, b.len, 0) < 0) {
            free(b.p);
            return -1;
        }
    }
    free(b.p);
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (answers < n) {
        zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 60000) != 1 || zmq_msg_recv(&msg, s, 0) < 0)
            break;
        answers += flood_count(&msg, &received, &duplicate, &busy);
    }
    zmq_msg_close(&msg);
    printf("flood: %ld sent, %ld received, %ld duplicate, %ld busy, %ld other\n", n, received,
           duplicate, busy, answers - received - duplicate - busy);
    return 0;
}

int main(int argc, char **argv)
{
    cm_keypair kp;
    cm_err err;
    int rc = 1, linger = 0;
    void *ctx = NULL, *s = NULL;
    if (argc < 5) {
        fprintf(stderr, "usage: fedprobe ENDPOINT SERVER_PUBLIC_KEY KEYFILE MESSAGE...\n");
        return 2;
    }
    if (cm_keys_load(&kp, argv[3], &err) != 0) {
        fprintf(stderr, "fedprobe: %s\n", err.msg);
        return 1;
    }
    ctx = zmq_ctx_new();
    s = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, argv[2], 40) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, kp.public_key, 40) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, kp.secret_key, 40) != 0 ||
        zmq_connect(s, argv[1]) != 0) {
        fprintf(stderr, "fedprobe: %s\n", zmq_strerror(zmq_errno()));
        goto done;
    }
    for (int i = 4; i < argc; i++) {
        char *big = NULL, buf[4096];
        size_t len = strlen(argv[i]);
        const char *body = argv[i];
        if (strncmp(argv[i], "@flood:", 7) == 0) {
            if (flood(s, argv[i] + 7) != 0)
                goto done;
            fflush(stdout);
            continue;
        }
        if (strncmp(argv[i], "@big:", 5) == 0) {
            len = strtoul(argv[i] + 5, NULL, 10);
            if (!(big = malloc(len ? len : 1)))
                goto done;
            memset(big, 'x', len);
            body = big;
        }
        int sent = zmq_send(s, body, len, 0);
        free(big);
        if (sent < 0)
            goto done;
        zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 3000) == 1) {
            int n = zmq_recv(s, buf, sizeof(buf) - 1, 0);
            buf[n < 0 ? 0 : (n > (int)sizeof(buf) - 1 ? (int)sizeof(buf) - 1 : n)] = '\0';
            printf("%s\n", buf);
        } else {
            printf("(no reply)\n");
        }
        fflush(stdout);
    }
    rc = 0;
done:
    cm_keys_wipe(&kp);
    if (s)
        zmq_close(s);
    if (ctx)
        zmq_ctx_term(ctx);
    return rc;
}
