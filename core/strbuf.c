/*
** strbuf.c -- the growing text buffer of strbuf.h.
*/
#include "strbuf.h"

#include "text.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool cm_buf_room(cm_buf *b, size_t more)
{
    if (b->oom)
        return false;
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = b->wipe ? malloc(cap) : realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    if (b->wipe && b->p) {
        memcpy(p, b->p, b->len);
        p[b->len] = '\0';
        sodium_memzero(b->p, b->cap);
        free(b->p);
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void cm_buf_put(cm_buf *b, const char *s, size_t n)
{
    if (!cm_buf_room(b, n))
        return;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void cm_buf_puts(cm_buf *b, const char *s)
{
    cm_buf_put(b, s, strlen(s));
}

void cm_buf_printf(cm_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        cm_buf_put(b, small, (size_t)n);
        return;
    }
    if (!cm_buf_room(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void cm_buf_json_str(cm_buf *b, const char *s)
{
    const char *run = s;
    char esc[6];
    cm_buf_put(b, "\"", 1);
    for (; *s; s++) {
        size_t n = cm_json_escape_byte((unsigned char)*s, esc);
        if (n == 0)
            continue;
        cm_buf_put(b, run, (size_t)(s - run));
        cm_buf_put(b, esc, n);
        run = s + 1;
    }
    cm_buf_put(b, run, (size_t)(s - run));
    cm_buf_put(b, "\"", 1);
}

void cm_buf_reset(cm_buf *b)
{
    b->len = 0;
    b->oom = false;
    if (b->p)
        b->p[0] = '\0';
}

void cm_buf_wipe(cm_buf *b)
{
    if (b->p)
        sodium_memzero(b->p, b->len);
    cm_buf_reset(b);
}

void cm_buf_free(cm_buf *b)
{
    if (b->wipe && b->p)
        sodium_memzero(b->p, b->cap);
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false; /* b->wipe stays: the owner's, for the next text */
}
