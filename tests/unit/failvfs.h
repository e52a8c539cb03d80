/*
** failvfs.h -- a test VFS over the default one whose fsyncs of chosen files
** fail (SQLITE_IOERR_FSYNC), as a disk that lost writes would make them:
** for the fsyncs SQLite makes itself (a synced commit's WAL sync, a
** checkpoint's), which cm_store_opts.sync_fn does not see; whose writes of
** chosen files fail (SQLITE_IOERR_WRITE); and that counts the writes that
** reach chosen files. Registered as the default VFS while a test needs it
** (the store's writer wraps the default VFS at open). Header-only, for the
** unit tests.
*/
#ifndef CM_TEST_FAILVFS_H
#define CM_TEST_FAILVFS_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct cm_test_failvfs {
    sqlite3_vfs vfs;
    sqlite3_vfs *base;
    const char *suffix;       /* files whose name ends so fail their syncs; NULL: none */
    int failed;               /* syncs failed so far */
    const char *write_suffix; /* files whose name ends so fail their writes; NULL: none */
    int write_failed;         /* writes failed so far */
    const char *count_suffix; /* files whose name ends so have their writes counted */
    int writes;               /* writes counted so far */
    bool fail_commit_hdr;     /* fail a WAL write of a commit frame's header alone */
    /* a device without powersafe overwrite (SQLITE_IOCAP_POWERSAFE_OVERWRITE
    ** cleared), of this sector size (0: the base VFS's): SQLite pads a synced
    ** commit's WAL to the sector's end, splitting the write that crosses it */
    bool no_psow;
    int sector;
    bool installed;
} cm_test_failvfs;

typedef struct cm_test_failfile {
    sqlite3_file file; /* pMethods: cm_test_failvfs_io */
    cm_test_failvfs *fv;
    char name[64]; /* the file's name, without its directory */
    /* the base VFS's file follows */
} cm_test_failfile;

static inline sqlite3_file *cm_test_failfile_base(sqlite3_file *f)
{
    return (sqlite3_file *)((cm_test_failfile *)f + 1);
}

#define CM_FAILVFS_BASE(f) cm_test_failfile_base(f)

static inline int cm_failvfs_close(sqlite3_file *f)
{
    return CM_FAILVFS_BASE(f)->pMethods->xClose(CM_FAILVFS_BASE(f));
}
static inline int cm_failvfs_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
    return CM_FAILVFS_BASE(f)->pMethods->xRead(CM_FAILVFS_BASE(f), b, n, o);
}
/* The file's name ends with sfx (NULL: no file's does). */
static inline bool cm_failvfs_named(cm_test_failfile *ff, const char *sfx)
{
    size_t n = strlen(ff->name), m = sfx ? strlen(sfx) : 0;
    return sfx && n >= m && strcmp(ff->name + n - m, sfx) == 0;
}
static inline int cm_failvfs_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    cm_test_failfile *ff = (cm_test_failfile *)f;
    if (cm_failvfs_named(ff, ff->fv->count_suffix))
        ff->fv->writes++;
    const unsigned char *h = b;
    if (ff->fv->fail_commit_hdr && n == 24 && cm_failvfs_named(ff, "-wal") &&
        (h[4] | h[5] | h[6] | h[7]) != 0) {
        ff->fv->write_failed++;
        return SQLITE_IOERR_WRITE;
    }
    if (cm_failvfs_named(ff, ff->fv->write_suffix)) {
        ff->fv->write_failed++;
        return SQLITE_IOERR_WRITE;
    }
    return CM_FAILVFS_BASE(f)->pMethods->xWrite(CM_FAILVFS_BASE(f), b, n, o);
}
static inline int cm_failvfs_truncate(sqlite3_file *f, sqlite3_int64 n)
{
    return CM_FAILVFS_BASE(f)->pMethods->xTruncate(CM_FAILVFS_BASE(f), n);
}
static inline int cm_failvfs_sync(sqlite3_file *f, int flags)
{
    cm_test_failfile *ff = (cm_test_failfile *)f;
    if (cm_failvfs_named(ff, ff->fv->suffix)) {
        ff->fv->failed++;
        return SQLITE_IOERR_FSYNC;
    }
    return CM_FAILVFS_BASE(f)->pMethods->xSync(CM_FAILVFS_BASE(f), flags);
}
static inline int cm_failvfs_size(sqlite3_file *f, sqlite3_int64 *n)
{
    return CM_FAILVFS_BASE(f)->pMethods->xFileSize(CM_FAILVFS_BASE(f), n);
}
static inline int cm_failvfs_lock(sqlite3_file *f, int l)
{
    return CM_FAILVFS_BASE(f)->pMethods->xLock(CM_FAILVFS_BASE(f), l);
}
static inline int cm_failvfs_unlock(sqlite3_file *f, int l)
{
    return CM_FAILVFS_BASE(f)->pMethods->xUnlock(CM_FAILVFS_BASE(f), l);
}
static inline int cm_failvfs_reserved(sqlite3_file *f, int *out)
{
    return CM_FAILVFS_BASE(f)->pMethods->xCheckReservedLock(CM_FAILVFS_BASE(f), out);
}
static inline int cm_failvfs_fcntl(sqlite3_file *f, int op, void *arg)
{
    return CM_FAILVFS_BASE(f)->pMethods->xFileControl(CM_FAILVFS_BASE(f), op, arg);
}
static inline int cm_failvfs_sector(sqlite3_file *f)
{
    cm_test_failfile *ff = (cm_test_failfile *)f;
    return ff->fv->sector ? ff->fv->sector
                          : CM_FAILVFS_BASE(f)->pMethods->xSectorSize(CM_FAILVFS_BASE(f));
}
static inline int cm_failvfs_devchar(sqlite3_file *f)
{
    cm_test_failfile *ff = (cm_test_failfile *)f;
    int dc = CM_FAILVFS_BASE(f)->pMethods->xDeviceCharacteristics(CM_FAILVFS_BASE(f));
    return ff->fv->no_psow ? dc & ~SQLITE_IOCAP_POWERSAFE_OVERWRITE : dc;
}
static inline int cm_failvfs_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **p)
{
    return CM_FAILVFS_BASE(f)->pMethods->xShmMap(CM_FAILVFS_BASE(f), pg, sz, ext, p);
}
static inline int cm_failvfs_shmlock(sqlite3_file *f, int off, int n, int flags)
{
    return CM_FAILVFS_BASE(f)->pMethods->xShmLock(CM_FAILVFS_BASE(f), off, n, flags);
}
static inline void cm_failvfs_shmbarrier(sqlite3_file *f)
{
    CM_FAILVFS_BASE(f)->pMethods->xShmBarrier(CM_FAILVFS_BASE(f));
}
static inline int cm_failvfs_shmunmap(sqlite3_file *f, int del)
{
    return CM_FAILVFS_BASE(f)->pMethods->xShmUnmap(CM_FAILVFS_BASE(f), del);
}
static inline int cm_failvfs_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p)
{
    return CM_FAILVFS_BASE(f)->pMethods->xFetch(CM_FAILVFS_BASE(f), o, n, p);
}
static inline int cm_failvfs_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p)
{
    return CM_FAILVFS_BASE(f)->pMethods->xUnfetch(CM_FAILVFS_BASE(f), o, p);
}

static const sqlite3_io_methods cm_test_failvfs_io = {
    3,
    cm_failvfs_close,
    cm_failvfs_read,
    cm_failvfs_write,
    cm_failvfs_truncate,
    cm_failvfs_sync,
    cm_failvfs_size,
    cm_failvfs_lock,
    cm_failvfs_unlock,
    cm_failvfs_reserved,
    cm_failvfs_fcntl,
    cm_failvfs_sector,
    cm_failvfs_devchar,
    cm_failvfs_shmmap,
    cm_failvfs_shmlock,
    cm_failvfs_shmbarrier,
    cm_failvfs_shmunmap,
    cm_failvfs_fetch,
    cm_failvfs_unfetch,
};

static inline int cm_failvfs_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f,
                                  int flags, int *out_flags)
{
    cm_test_failvfs *fv = (cm_test_failvfs *)vfs;
    cm_test_failfile *ff = (cm_test_failfile *)f;
    const char *base_name = name ? strrchr(name, '/') : NULL;
    ff->fv = fv;
    snprintf(ff->name, sizeof(ff->name), "%s", base_name ? base_name + 1 : "");
    int rc = fv->base->xOpen(fv->base, name, cm_test_failfile_base(f), flags, out_flags);
    /* the base file's methods are set even when it fails (SQLite closes it) */
    f->pMethods = cm_test_failfile_base(f)->pMethods ? &cm_test_failvfs_io : NULL;
    return rc;
}

/* Wrap the default VFS and make the wrapper the default. fv must outlive
** every connection opened meanwhile (static: a failed assertion leaves the
** test early), and be removed in the test's teardown. */
static inline int cm_test_failvfs_install(cm_test_failvfs *fv)
{
    memset(fv, 0, sizeof(*fv));
    fv->base = sqlite3_vfs_find(NULL);
    if (!fv->base)
        return SQLITE_ERROR;
    fv->vfs = *fv->base;
    fv->vfs.zName = "cm_test_failvfs";
    fv->vfs.pNext = NULL;
    fv->vfs.szOsFile = (int)sizeof(cm_test_failfile) + fv->base->szOsFile;
    fv->vfs.xOpen = cm_failvfs_open;
    int rc = sqlite3_vfs_register(&fv->vfs, 1);
    fv->installed = rc == SQLITE_OK;
    return rc;
}

/* The default VFS back as it was (after every connection through fv
** closed); nothing when it is not installed. */
static inline void cm_test_failvfs_remove(cm_test_failvfs *fv)
{
    if (!fv->installed)
        return;
    sqlite3_vfs_unregister(&fv->vfs);
    sqlite3_vfs_register(fv->base, 1);
    fv->installed = false;
}

#endif
