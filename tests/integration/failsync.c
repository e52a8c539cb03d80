/*
** failsync.c -- an LD_PRELOAD shim for tests (never linked into caremesh):
** fsync and fdatasync of a file whose name ends in "-wal" fail with EIO
** once the file $CM_FAILSYNC exists. The first such call from a thread
** other than the process's first (the store's sync thread) may be held:
** while $CM_FAILSYNC.hold exists it creates $CM_FAILSYNC.held and waits
** (at most 30 s) for the hold to go, so a test can act while a batch waits
** for its sync. Every other call goes to libc's.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int fsync(int fd);
int fdatasync(int fd);

static atomic_bool held_once;

static bool exists(const char *base, const char *suffix)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s%s", base, suffix) >= (int)sizeof(path))
        return false;
    return access(path, F_OK) == 0;
}

/* fd names a "-wal" file and the failure is armed. */
static bool wal_fails(int fd)
{
    const char *arm = getenv("CM_FAILSYNC");
    char link[64], path[4096];
    if (!arm || !exists(arm, ""))
        return false;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n < 4)
        return false;
    path[n] = '\0';
    return path[n - 4] == '-' && path[n - 3] == 'w' && path[n - 2] == 'a' && path[n - 1] == 'l';
}

/* The hold: once, off the main thread, while $CM_FAILSYNC.hold exists. */
static void maybe_hold(void)
{
    const char *arm = getenv("CM_FAILSYNC");
    char held[4096];
    if ((pid_t)syscall(SYS_gettid) == getpid() || !exists(arm, ".hold") ||
        atomic_exchange(&held_once, true))
        return;
    snprintf(held, sizeof(held), "%s.held", arm);
    int fd = open(held, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 3000 && exists(arm, ".hold"); i++)
        nanosleep(&tick, NULL);
}

static int sync_via(const char *name, int fd)
{
    if (wal_fails(fd)) {
        maybe_hold();
        errno = EIO;
        return -1;
    }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    return real ? real(fd) : (errno = ENOSYS, -1);
}

int fsync(int fd)
{
    return sync_via("fsync", fd);
}

int fdatasync(int fd)
{
    return sync_via("fdatasync", fd);
}
