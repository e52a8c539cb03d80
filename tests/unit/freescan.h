/*
** freescan.h -- for a unit test linked with -Wl,--wrap=free and
** -Wl,--wrap=realloc (tests/CMakeLists.txt): every block the test's own
** code and the core library free passes through __wrap_free, which, while
** a marker is set, counts the blocks that still hold it when they are
** freed. __wrap_realloc always moves the block and frees the old one
** through the same look (a realloc may move, leaving the old block's text
** in freed memory). With -Wl,--wrap=malloc too, a block allocated while
** looking starts zeroed: what it holds when freed was written by the code
** under test, not left in the memory by an earlier owner (libzmq frees a
** message's plaintext without wiping it). Patient data wiped before its
** memory goes leaves none.
** Include once, after <cmocka.h>. Header-only.
*/
#ifndef CM_TEST_FREESCAN_H
#define CM_TEST_FREESCAN_H

#include <malloc.h>
#include <stddef.h>
#include <string.h>
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#else
#define VALGRIND_MAKE_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#endif

void __real_free(void *p);
void __wrap_free(void *p);
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);
void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);

static const char *freescan_marker; /* NULL: not looking */
static long freescan_frees;         /* blocks freed while looking */
static long freescan_dirty;         /* of them, those that held the marker */

/* mark occurs in p[0..n) */
static int freescan_holds(const unsigned char *p, size_t n, const char *mark)
{
    size_t m = strlen(mark);
    for (size_t i = 0; i + m <= n; i++)
        if (p[i] == (unsigned char)mark[0] && memcmp(p + i, mark, m) == 0)
            return 1;
    return 0;
}

void __wrap_free(void *p)
{
    if (p && freescan_marker) {
        /* read as it is: bytes never written are as good as any */
        VALGRIND_MAKE_MEM_DEFINED(p, malloc_usable_size(p));
        freescan_frees++;
        freescan_dirty += freescan_holds(p, malloc_usable_size(p), freescan_marker);
    }
    __real_free(p);
}

void *__wrap_malloc(size_t n)
{
    void *p = __real_malloc(n);
    if (p && freescan_marker)
        memset(p, 0, malloc_usable_size(p));
    return p;
}

void *__wrap_realloc(void *p, size_t n)
{
    if (!freescan_marker)
        return __real_realloc(p, n);
    if (!p)
        return __wrap_malloc(n);
    void *q = n ? __wrap_malloc(n) : NULL;
    if (n && !q)
        return NULL;
    size_t old = malloc_usable_size(p);
    if (q)
        memcpy(q, p, old < n ? old : n);
    __wrap_free(p);
    return q;
}

/* Look for marker in every block freed from now on (NULL: stop looking). */
static inline void freescan_start(const char *marker)
{
    freescan_marker = marker;
    freescan_frees = freescan_dirty = 0;
}

#endif
