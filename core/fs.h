/*
** fs.h -- the few file operations the host needs done carefully: private
** directories (0700), whole-file reads with a size cap, and atomic private
** writes (temp file 0600, fsync, rename, fsync of the directory).
** Depends on: POSIX, error.h. Any thread.
*/
#ifndef CM_FS_H
#define CM_FS_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* Create dir (and missing parents) with mode 0700. *created tells whether the
** last component was made now. An existing directory must be writable. */
int cm_fs_mkdir_private(const char *dir, bool *created, cm_err *err);

/* Read a whole file (at most max bytes) into a NUL-terminated malloc'd buffer. */
int cm_fs_read(const char *path, size_t max, char **out, size_t *len, cm_err *err);

/* Write data to path atomically with mode 0600, replacing any file there:
** temp file in the same directory, fsync, rename, fsync of the directory. */
int cm_fs_write_private(const char *path, const char *data, size_t len, cm_err *err);

/* fsync the directory holding path (after a rename into it). */
int cm_fs_fsync_dir(const char *path, cm_err *err);

/* Join dir and name into out (capacity outsz); CM_EINVAL if it does not fit. */
int cm_fs_join(char *out, size_t outsz, const char *dir, const char *name, cm_err *err);

bool cm_fs_exists(const char *path);

#endif
