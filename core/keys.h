/*
** keys.h -- the node's CURVE key pair (Z85 text, 40 characters each), made
** once by `caremesh init` and kept in DATA/node.key with mode 0600. Loading
** refuses a key file that others can read. Depends on libzmq, fs.h.
*/
#ifndef CM_KEYS_H
#define CM_KEYS_H

#include "error.h"

#define CM_KEY_Z85_LEN 40
#define CM_KEY_FILE    "node.key"

typedef struct cm_keypair {
    char public_key[CM_KEY_Z85_LEN + 1];
    char secret_key[CM_KEY_Z85_LEN + 1];
} cm_keypair;

/* Make a fresh key pair. CM_EIO if libzmq has no CURVE support. */
int cm_keys_generate(cm_keypair *kp, cm_err *err);

/* Write kp to path (mode 0600, atomically). */
int cm_keys_save(const cm_keypair *kp, const char *path, cm_err *err);

/* Read and check a key file: mode must be 0600 or stricter, both keys valid
** Z85 and the public key must belong to the secret key. */
int cm_keys_load(cm_keypair *kp, const char *path, cm_err *err);

/* Clear the secret from memory. */
void cm_keys_wipe(cm_keypair *kp);

#endif
