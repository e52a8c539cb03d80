/*
** nozap.c -- a federation listener with no ZAP handler, for
** tests/integration/test_fed_nozap.sh: a ROUTER set up by the node's own
** listener setup (cm_fed_listener_setup) with the key pair of a node's data
** directory, and nothing else in the process. It prints "listening" once
** bound, and "admitted" for each message that gets through -- a node that
** fails closed lets none through. SIGTERM ends it: exit 0 when nothing was
** admitted, 1 otherwise. usage: nozap KEYFILE ENDPOINT
*/
#include "fed.h"
#include "keys.h"

#include <signal.h>
#include <stdio.h>
#include <zmq.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    cm_keypair kp;
    cm_err err;
    long admitted = 0;
    if (argc != 3)
        return fprintf(stderr, "usage: nozap KEYFILE ENDPOINT\n"), 2;
    if (cm_keys_load(&kp, argv[1], &err) != 0)
        return fprintf(stderr, "nozap: %s\n", err.msg), 2;
    signal(SIGTERM, on_term);
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    if (cm_fed_listener_setup(r, kp.secret_key, 0, &err) != 0)
        return fprintf(stderr, "nozap: %s\n", err.msg), 2;
    cm_keys_wipe(&kp);
    if (zmq_bind(r, argv[2]) != 0)
        return fprintf(stderr, "nozap: %s: %s\n", argv[2], zmq_strerror(zmq_errno())), 2;
    printf("listening\n");
    fflush(stdout);
    while (!stop) {
        zmq_pollitem_t item = {r, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) == 1) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            while (zmq_msg_recv(&part, r, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&part))
                ;
            zmq_msg_close(&part);
            admitted++;
            printf("admitted\n");
            fflush(stdout);
        }
    }
    zmq_close(r);
    zmq_ctx_term(ctx);
    printf("%ld admitted\n", admitted);
    return admitted == 0 ? 0 : 1;
}
