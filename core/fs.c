/*
** fs.c -- private directories, capped reads, atomic private writes.
*/
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int errno_code(int e)
{
    return e == EACCES || e == EPERM || e == EROFS ? CM_EPERM : CM_EIO;
}

bool cm_fs_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

int cm_fs_join(char *out, size_t outsz, const char *dir, const char *name, cm_err *err)
{
    int n = snprintf(out, outsz, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= outsz)
        return cm_err_set(err, CM_EINVAL, "%s/%s: path too long", dir, name);
    return 0;
}

int cm_fs_mkdir_private(const char *dir, bool *created, cm_err *err)
{
    char path[4096];
    struct stat sb;
    if (created)
        *created = false;
    if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
        return cm_err_set(err, CM_EINVAL, "%s: path too long", dir);
    /* Make the parents first (0700 too: they are ours only if we make them). */
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return cm_err_set(err, errno_code(errno), "%s: cannot create directory: %s", path,
                              strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0700) == 0) {
        if (created)
            *created = true;
    } else if (errno != EEXIST) {
        return cm_err_set(err, errno_code(errno), "%s: cannot create directory: %s", path,
                          strerror(errno));
    }
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return cm_err_set(err, CM_EIO, "%s: not a directory", path);
    if (access(path, W_OK | X_OK) != 0)
        return cm_err_set(err, CM_EPERM, "%s: directory is not writable: %s", path,
                          strerror(errno));
    return 0;
}

int cm_fs_read(const char *path, size_t max, char **out, size_t *len, cm_err *err)
{
    int rc = 0;
    char *buf = NULL;
    struct stat sb;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; we refuse it below */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    *out = NULL;
    if (fd < 0)
        return cm_err_set(err, errno == ENOENT ? CM_ENOTFOUND : errno_code(errno), "%s: %s", path,
                          strerror(errno));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = cm_err_set(err, CM_EIO, "%s: not a regular file", path);
        goto done;
    }
    if ((size_t)sb.st_size > max) {
        rc = cm_err_set(err, CM_EINVAL, "%s: file too large (%lld bytes, limit %zu)", path,
                        (long long)sb.st_size, max);
        goto done;
    }
    size_t size = (size_t)sb.st_size, got = 0;
    if (!(buf = malloc(size + 1))) {
        rc = cm_err_set(err, CM_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = cm_err_set(err, CM_EIO, "%s: read failed: %s", path,
                            n < 0 ? strerror(errno) : "file shrank");
            goto done;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    *out = buf;
    buf = NULL;
    if (len)
        *len = size;
done:
    free(buf);
    close(fd);
    return rc;
}

static int fsync_dir_of(const char *path)
{
    char copy[4096];
    snprintf(copy, sizeof(copy), "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int cm_fs_write_private(const char *path, const char *data, size_t len, cm_err *err)
{
    char tmp[4096];
    int rc = 0, fd = -1;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return cm_err_set(err, CM_EINVAL, "%s: path too long", path);
    fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return cm_err_set(err, errno_code(errno), "%s: cannot create: %s", tmp, strerror(errno));
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = cm_err_set(err, CM_EIO, "%s: write failed: %s", tmp, strerror(errno));
            goto done;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0) {
        rc = cm_err_set(err, CM_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
        goto done;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = cm_err_set(err, errno_code(errno), "%s: rename failed: %s", path, strerror(errno));
        goto done;
    }
    if (fsync_dir_of(path) != 0)
        rc = cm_err_set(err, CM_EIO, "%s: fsync of directory failed: %s", path, strerror(errno));
done:
    if (fd >= 0)
        close(fd);
    if (rc != 0)
        unlink(tmp);
    return rc;
}

int cm_fs_fsync_dir(const char *path, cm_err *err)
{
    if (fsync_dir_of(path) != 0)
        return cm_err_set(err, CM_EIO, "%s: fsync of directory failed: %s", path, strerror(errno));
    return 0;
}
