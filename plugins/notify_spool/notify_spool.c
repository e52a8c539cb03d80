/*
** notify_spool.c -- a notification channel that writes each notification as
** one JSON file in a spool directory, where an SMS, e-mail or phone gateway
** picks it up. A file appears whole or not at all (written to a temporary
** name, fsync'd, renamed, the directory fsync'd), and only then does the
** host mark the notification sent. The file is named by the host's id of the
** notification, so a redelivery after a crash rewrites the same file.
** The reference for gateway plugins.
**
** config = { dir = "/var/spool/caremesh", channels = { "sms", "email" },
**            mode = 416 -- optional: file mode for the gateway's group (0640); default 0600 }
** A gateway must deduplicate by the notification's id: after a crash, or when
** the host could not record a success, the same notification comes again and
** its file is written again.
*/
#include <caremesh/plugin.h>

#include <cjson/cJSON.h>
#include <stdbool.h>

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
static mode_t spool_mode = 0600;

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

/* The file's document, built with cJSON: every string escaped, data kept as
** the object the host checked. NULL on out of memory or bad data. */
static char *document(const cm_plugin_notification *n)
{
    cJSON *doc = cJSON_CreateObject(), *data = cJSON_Parse(n->data);
    char *text = NULL;
    if (doc && cJSON_IsObject(data) && cJSON_AddNumberToObject(doc, "id", (double)n->id) &&
        cJSON_AddStringToObject(doc, "channel", n->channel) &&
        cJSON_AddStringToObject(doc, "to", n->recipient) &&
        cJSON_AddStringToObject(doc, "message", n->message) &&
        cJSON_AddStringToObject(doc, "instance", n->instance)) {
        cJSON_AddItemToObject(doc, "data", data);
        data = NULL;
        text = cJSON_PrintUnformatted(doc);
    }
    cJSON_Delete(data);
    cJSON_Delete(doc);
    return text;
}

static int deliver(void *ud, const cm_plugin_notification *n, char *err, size_t errlen)
{
    char tmp[SPOOL_PATH_MAX + 64], final[SPOOL_PATH_MAX + 64];
    char *json = document(n);
    int fd = -1, rc = -1;
    bool tmp_made = false;
    if (!json)
        return snprintf(err, errlen, "notification %lld: cannot build its JSON", (long long)n->id),
               -1;
    snprintf(tmp, sizeof(tmp), "%s/.%lld.tmp", spool_dir, (long long)n->id);
    snprintf(final, sizeof(final), "%s/%08lld-%s.json", spool_dir, (long long)n->id, n->channel);
    unlink(tmp); /* a leftover of an interrupted attempt; never follow what is there */
    fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, spool_mode);
    tmp_made = fd >= 0;
    if (fd < 0 || write_all(fd, json, strlen(json)) != 0 || write_all(fd, "\n", 1) != 0 ||
        fsync(fd) != 0) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, final) != 0) {
        snprintf(err, errlen, "%s: %s", final, strerror(errno));
        goto done;
    }
    tmp_made = false;
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
    if (fd >= 0)
        close(fd);
    if (tmp_made)
        unlink(tmp);
    cJSON_free(json);
    return rc;
}

static int spool_init(cm_plugin_ctx *ctx, const cm_plugin_api *host, char *err, size_t errlen)
{
    struct stat sb;
    int rc = -1, count = 0;
    api = host;
    self = ctx;
    cJSON *cfg = cJSON_Parse(api->config(ctx)), *item;
    const cJSON *dir = cJSON_GetObjectItemCaseSensitive(cfg, "dir");
    const cJSON *channels = cJSON_GetObjectItemCaseSensitive(cfg, "channels");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(cfg, "mode");
    if (!cJSON_IsString(dir) || strlen(dir->valuestring) >= sizeof(spool_dir)) {
        snprintf(err, errlen, "config.dir: required, the spool directory");
        goto done;
    }
    snprintf(spool_dir, sizeof(spool_dir), "%s", dir->valuestring);
    if (stat(spool_dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(spool_dir, W_OK) != 0) {
        snprintf(err, errlen, "config.dir: %s is not a writable directory", spool_dir);
        goto done;
    }
    spool_mode = 0600;
    if (mode && (!cJSON_IsNumber(mode) || mode->valuedouble < 0 || mode->valuedouble > 0666)) {
        snprintf(err, errlen, "config.mode: a file mode such as 416 (0640), at most 0666");
        goto done;
    }
    if (mode)
        spool_mode = (mode_t)mode->valuedouble;
    if (!cJSON_IsArray(channels) || cJSON_GetArraySize(channels) == 0) {
        snprintf(err, errlen, "config.channels: required, a list of names, e.g. { \"sms\" }");
        goto done;
    }
    cJSON_ArrayForEach(item, channels)
    {
        if (!cJSON_IsString(item) ||
            api->register_channel(ctx, item->valuestring, deliver, NULL) != 0) {
            snprintf(err, errlen, "config.channels[%d]: not a channel name, or taken", count);
            goto done;
        }
        count++;
    }
    api->log(ctx, CM_PLUGIN_LOG_INFO, "spooling %d channel(s) to %s", count, spool_dir);
    rc = 0;
done:
    cJSON_Delete(cfg);
    return rc;
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
