/*
** syncgate.h -- a test stand-in for the store's WAL sync (cm_store_opts.sync_fn):
** it counts syncs, can hold them (the sync thread blocks until released) and
** can fail them with an errno. Header-only, for the unit tests.
*/
#ifndef CM_TEST_SYNCGATE_H
#define CM_TEST_SYNCGATE_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct cm_test_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool held;     /* syncs wait while set */
    int hold_only; /* with held: only the sync numbered (by started) this one waits; 0: all */
    int waiting;   /* syncs blocked on held now */
    int fail;      /* an errno to return instead of syncing; 0: sync */
    int fail_at;   /* with fail: only syncs numbered (by started) from this one fail */
    int fail_only; /* with fail: only the sync numbered this one fails; 0: any from fail_at */
    int released;  /* with held: syncs numbered up to this one pass all the same */
    /* with fail: the error is the kernel's writeback error, reported once
    ** per open file (errseq_t): told at a sync's start, before any hold, to
    ** the first sync through each descriptor, and a later one through the
    ** same descriptor syncs and gets 0 */
    bool errseq;
    int seen[8]; /* errseq: the descriptors told so far */
    int nseen;
    int started; /* syncs begun */
    int done;    /* syncs finished */
    dev_t dev;   /* the file the last sync was of */
    ino_t ino;
} cm_test_gate;

static inline void cm_test_gate_init(cm_test_gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->held = false;
    g->waiting = g->fail = g->fail_at = g->started = g->done = g->hold_only = 0;
    g->fail_only = g->released = g->nseen = 0;
    g->errseq = false;
    g->dev = 0;
    g->ino = 0;
}

static inline void cm_test_gate_destroy(cm_test_gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

/* Whether the nth sync (through fd) is to fail; errseq: fd is told now. Under mu. */
static inline bool cm_test_gate_fails(cm_test_gate *g, int nth, int fd)
{
    if (!g->fail || nth < g->fail_at || (g->fail_only && nth != g->fail_only))
        return false;
    if (!g->errseq)
        return true;
    for (int i = 0; i < g->nseen; i++)
        if (g->seen[i] == fd)
            return false;
    if (g->nseen < (int)(sizeof(g->seen) / sizeof(g->seen[0])))
        g->seen[g->nseen++] = fd;
    return true;
}

/* The sync function (cm_store_opts.sync_fn, ud the gate). */
static inline int cm_test_gate_sync(void *ud, int fd)
{
    cm_test_gate *g = ud;
    pthread_mutex_lock(&g->mu);
    int nth = ++g->started;
    bool told = g->errseq && cm_test_gate_fails(g, nth, fd);
    struct stat sb;
    if (fstat(fd, &sb) == 0) {
        g->dev = sb.st_dev;
        g->ino = sb.st_ino;
    }
    g->waiting++;
    pthread_cond_broadcast(&g->cv);
    while (g->held && nth > g->released && (!g->hold_only || nth == g->hold_only))
        pthread_cond_wait(&g->cv, &g->mu);
    g->waiting--;
    bool fails = g->errseq ? told : cm_test_gate_fails(g, nth, fd);
    int rc = fails ? g->fail : (fdatasync(fd) == 0 ? 0 : errno);
    g->done++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static inline void cm_test_gate_hold(cm_test_gate *g, bool held)
{
    pthread_mutex_lock(&g->mu);
    g->held = held;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Let the held syncs numbered up to nth go on. */
static inline void cm_test_gate_release(cm_test_gate *g, int nth)
{
    pthread_mutex_lock(&g->mu);
    g->released = nth;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Wait (at most 10 s) until *count (a field of g) is at least n; false on timeout. */
static inline bool cm_test_gate_wait_for(cm_test_gate *g, const int *count, int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    while (*count < n && rc == 0)
        rc = pthread_cond_timedwait(&g->cv, &g->mu, &dl);
    bool ok = *count >= n;
    pthread_mutex_unlock(&g->mu);
    return ok;
}

/* Wait (at most 10 s) until at least n syncs have begun and are held; false on timeout. */
static inline bool cm_test_gate_wait_held(cm_test_gate *g, int n)
{
    return cm_test_gate_wait_for(g, &g->waiting, n);
}

/* Wait (at most 10 s) until at least n syncs have ended; false on timeout. */
static inline bool cm_test_gate_wait_done(cm_test_gate *g, int n)
{
    return cm_test_gate_wait_for(g, &g->done, n);
}

/* Count from here (the syncs an open made are not the test's). */
static inline void cm_test_gate_zero(cm_test_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->started = g->done = 0;
    pthread_mutex_unlock(&g->mu);
}

/* Whether the last sync was of the file at path (followed if a link). */
static inline bool cm_test_gate_synced(cm_test_gate *g, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return false;
    pthread_mutex_lock(&g->mu);
    bool same = g->started > 0 && g->dev == sb.st_dev && g->ino == sb.st_ino;
    pthread_mutex_unlock(&g->mu);
    return same;
}

static inline int cm_test_gate_started(cm_test_gate *g)
{
    pthread_mutex_lock(&g->mu);
    int n = g->started;
    pthread_mutex_unlock(&g->mu);
    return n;
}

#endif
