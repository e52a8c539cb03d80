/*
** keys.c -- CURVE key pair: generate, save 0600, load with checks.
*/
#include "keys.h"

#include "fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

/* Zero n bytes at p in a way the compiler cannot optimise away. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

int cm_keys_generate(cm_keypair *kp, cm_err *err)
{
    if (zmq_curve_keypair(kp->public_key, kp->secret_key) != 0)
        return cm_err_set(err, CM_EIO, "cannot make a CURVE key pair: %s (libzmq without CURVE?)",
                          zmq_strerror(zmq_errno()));
    return 0;
}

int cm_keys_save(const cm_keypair *kp, const char *path, cm_err *err)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf),
                     "# caremesh node key pair (CURVE, Z85). The secret key never leaves this "
                     "file.\npublic-key = %s\nsecret-key = %s\n",
                     kp->public_key, kp->secret_key);
    int rc = cm_fs_write_private(path, buf, (size_t)n, err);
    wipe(buf, sizeof(buf));
    return rc;
}

static int parse_key_line(const char *text, const char *name, char *out, const char *path,
                          cm_err *err)
{
    const char *p = text;
    size_t nlen = strlen(name);
    while (p && *p) {
        if (strncmp(p, name, nlen) == 0 && p[nlen] == ' ' && strncmp(p + nlen, " = ", 3) == 0) {
            const char *v = p + nlen + 3;
            size_t len = strcspn(v, "\r\n");
            if (len != CM_KEY_Z85_LEN)
                return cm_err_set(err, CM_EINVAL, "%s: %s must be %d Z85 characters, found %zu",
                                  path, name, CM_KEY_Z85_LEN, len);
            memcpy(out, v, len);
            out[len] = '\0';
            return 0;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return cm_err_set(err, CM_EINVAL, "%s: no '%s = ...' line", path, name);
}

int cm_keys_load(cm_keypair *kp, const char *path, cm_err *err)
{
    struct stat sb;
    char *text = NULL;
    uint8_t raw[32];
    char derived[CM_KEY_Z85_LEN + 1];
    int rc;
    if (stat(path, &sb) != 0)
        return cm_err_set(err, CM_ENOTFOUND, "%s: no key file (run 'caremesh init')", path);
    if (sb.st_mode & 077)
        return cm_err_set(err, CM_EPERM,
                          "%s: permissions %04o are too open; the key file must be 0600", path,
                          (unsigned)(sb.st_mode & 0777));
    if ((rc = cm_fs_read(path, 4096, &text, NULL, err)) != 0)
        return rc;
    if ((rc = parse_key_line(text, "public-key", kp->public_key, path, err)) != 0 ||
        (rc = parse_key_line(text, "secret-key", kp->secret_key, path, err)) != 0)
        goto done;
    if (!zmq_z85_decode(raw, kp->public_key) || !zmq_z85_decode(raw, kp->secret_key)) {
        rc = cm_err_set(err, CM_EINVAL, "%s: a key is not valid Z85", path);
        goto done;
    }
    if (zmq_curve_public(derived, kp->secret_key) != 0 || strcmp(derived, kp->public_key) != 0) {
        rc = cm_err_set(err, CM_EINVAL, "%s: public-key does not belong to secret-key", path);
        goto done;
    }
done:
    if (text) {
        wipe(text, strlen(text));
        free(text);
    }
    wipe(raw, sizeof(raw));
    if (rc != 0)
        cm_keys_wipe(kp);
    return rc;
}

void cm_keys_wipe(cm_keypair *kp)
{
    wipe(kp->secret_key, sizeof(kp->secret_key));
}
