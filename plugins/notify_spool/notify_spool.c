/*
** notify_spool.c -- a notification channel that writes each notification as
** one JSON file in a spool directory, where an SMS, e-mail or phone gateway
** picks it up. A file appears whole or not at all (written to a temporary
** name, fsync'd, renamed, the directory fsync'd), and only then does the
** host mark the notification sent. The file is named by the host's id of the
** notification, so a redelivery after a crash rewrites the same file.
** The reference for gateway plugins.
**
** config = { dir = "/var/spool/caremesh", channels = { "sms", "email" } }
*/
#include <caremesh/plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SPOOL_PATH_MAX 1024

static const cm_plugin_api *api;
static cm_plugin_ctx *self;
static char spool_dir[SPOOL_PATH_MAX];

/* Append s to buf as a JSON string (quotes included); false when it does not fit. */
static int put_json_string(char *buf, size_t cap, size_t *len, const char *s)
{
    if (*len + 1 >= cap)
        return 0;
    buf[(*len)++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        const char *piece = esc;
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof(esc), "\\%c", c);
        else if (c < 0x20)
            snprintf(esc, sizeof(esc), "\\u%04x", c);
        else
            esc[0] = (char)c, esc[1] = '\0';
        size_t n = strlen(piece);
        if (*len + n + 1 >= cap)
            return 0;
        memcpy(buf + *len, piece, n);
        *len += n;
    }
    buf[(*len)++] = '"';
    buf[*len] = '\0';
    return 1;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int deliver(void *ud, const cm_plugin_notification *n, char *err, size_t errlen)
{
    char tmp[SPOOL_PATH_MAX + 64], final[SPOOL_PATH_MAX + 64];
    size_t cap = strlen(n->message) * 6 + strlen(n->recipient) * 6 + strlen(n->data) +
                 strlen(n->instance) * 6 + 256,
           len = 0;
    char *json = malloc(cap);
    int fd = -1, rc = -1;
    if (!json)
        return snprintf(err, errlen, "out of memory"), -1;
    len = (size_t)snprintf(json, cap, "{\"id\":%ld,\"channel\":", n->id);
    if (!put_json_string(json, cap, &len, n->channel) ||
        (len += (size_t)snprintf(json + len, cap - len, ",\"to\":")) >= cap ||
        !put_json_string(json, cap, &len, n->recipient) ||
        (len += (size_t)snprintf(json + len, cap - len, ",\"message\":")) >= cap ||
        !put_json_string(json, cap, &len, n->message) ||
        (len += (size_t)snprintf(json + len, cap - len, ",\"instance\":")) >= cap ||
        !put_json_string(json, cap, &len, n->instance) ||
        (len += (size_t)snprintf(json + len, cap - len, ",\"data\":%s}\n", n->data)) >= cap) {
        snprintf(err, errlen, "notification %ld does not fit its buffer", n->id);
        goto done;
    }
    snprintf(tmp, sizeof(tmp), "%s/.%ld.tmp", spool_dir, n->id);
    snprintf(final, sizeof(final), "%s/%08ld-%s.json", spool_dir, n->id, n->channel);
    fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 || write_all(fd, json, len) != 0 || fsync(fd) != 0) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, final) != 0) {
        snprintf(err, errlen, "%s: %s", final, strerror(errno));
        goto done;
    }
    int dfd = open(spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        snprintf(err, errlen, "%s: fsync: %s", spool_dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        goto done;
    }
    close(dfd);
    rc = 0;
done:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(json);
    return rc;
}

/* Read a string value `"key":"..."` from flat JSON config text (no escapes in paths). */
static int config_string(const char *json, const char *key, char *out, size_t outsz)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    if (!p)
        return 0;
    p += strlen(pat);
    const char *end = strchr(p, '"');
    if (!end || (size_t)(end - p) >= outsz)
        return 0;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
    return 1;
}

static int spool_init(cm_plugin_ctx *ctx, const cm_plugin_api *host, char *err, size_t errlen)
{
    const char *cfg;
    struct stat sb;
    api = host;
    self = ctx;
    cfg = api->config(ctx);
    if (!config_string(cfg, "dir", spool_dir, sizeof(spool_dir)))
        return snprintf(err, errlen, "config.dir: required, the spool directory"), -1;
    if (stat(spool_dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(spool_dir, W_OK) != 0)
        return snprintf(err, errlen, "config.dir: %s is not a writable directory", spool_dir), -1;
    /* channels = { "sms", "email" }: each quoted word after "channels":[ */
    const char *list = strstr(cfg, "\"channels\":[");
    if (!list)
        return snprintf(err, errlen, "config.channels: required, e.g. { \"sms\" }"), -1;
    int count = 0;
    for (const char *p = list + 12; *p && *p != ']';) {
        const char *q = strchr(p, '"'), *e = q ? strchr(q + 1, '"') : NULL;
        char name[64];
        if (!q || !e || (size_t)(e - q - 1) >= sizeof(name))
            break;
        memcpy(name, q + 1, (size_t)(e - q - 1));
        name[e - q - 1] = '\0';
        if (api->register_channel(ctx, name, deliver, NULL) != 0)
            return snprintf(err, errlen, "channel \"%s\": taken or not a name", name), -1;
        count++;
        p = e + 1;
    }
    if (count == 0)
        return snprintf(err, errlen, "config.channels: name at least one channel"), -1;
    api->log(ctx, CM_PLUGIN_LOG_INFO, "spooling %d channel(s) to %s", count, spool_dir);
    return 0;
}

CM_PLUGIN_EXPORT const cm_plugin_desc caremesh_plugin = {
    sizeof(cm_plugin_desc),
    CM_PLUGIN_ABI_MAJOR,
    CM_PLUGIN_ABI_MINOR,
    "notify_spool",
    "0.1.0",
    spool_init,
    NULL,
};
