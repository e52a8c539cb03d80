/*
** fedprobe.c -- a hand-driven federation client for tests/integration/test_fed.sh:
** connects one CURVE DEALER to a node with a key pair from a key file, sends
** each MESSAGE as one frame and prints the reply (or "(no reply)" after 3 s).
** A MESSAGE "@big:N" is N bytes of 'x'. Lets the test speak what a real node
** never would: another protocol version, garbage, oversized messages.
** usage: fedprobe ENDPOINT SERVER_PUBLIC_KEY KEYFILE MESSAGE...
*/
#include "keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

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
