/*
** verifyhold.c -- the test hook of caremesh_verifyhold, the build of the
** daemon that integration.api runs its audit verify check against (never
** linked into caremesh): core/api.c, built with CM_TEST_VERIFY_HOLD, calls
** cm__test_verify_hold on libuv's thread pool just before a verify reads.
** While the file $CM_VERIFY_HOLD exists, the hook writes "held" to
** $CM_VERIFY_HOLD.held and waits (at most 60 s) for the hold to go, so the
** test has other requests answered while a verify is known to be running,
** whatever the speed of the machine.
*/
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

void cm__test_verify_hold(void);

void cm__test_verify_hold(void)
{
    const char *hold = getenv("CM_VERIFY_HOLD");
    char held[4096];
    if (!hold || access(hold, F_OK) != 0 ||
        snprintf(held, sizeof(held), "%s.held", hold) >= (int)sizeof(held))
        return;
    FILE *f = fopen(held, "w");
    if (f) {
        fputs("held\n", f);
        fclose(f);
    }
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 6000 && access(hold, F_OK) == 0; i++)
        nanosleep(&tick, NULL);
}
