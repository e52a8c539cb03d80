/*
** strbuf.h -- a growing text buffer: appends never fail loudly, they set oom
** and stop, so a caller builds the whole text and checks once at the end.
** The text is always NUL-terminated after the first append. Depends on
** nothing but libc.
*/
#ifndef CM_STRBUF_H
#define CM_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cm_buf {
    char *p;         /* NULL until the first append */
    size_t len, cap; /* bytes of text; bytes allocated */
    bool oom;        /* an append ran out of memory: the text is incomplete */
    bool wipe;       /* it may hold a secret or patient data: set by its owner */
} cm_buf;

/* Room for more bytes and a NUL; false (and oom set) when there is none.
** A buffer with wipe set grows by allocate, copy, wipe the old block, free
** (never realloc, which would leave the old block unwiped in freed memory). */
bool cm_buf_room(cm_buf *b, size_t more);

/* Append n bytes as they are (NULs too). */
void cm_buf_put(cm_buf *b, const char *s, size_t n);

/* Append the string s. */
void cm_buf_puts(cm_buf *b, const char *s);

/* Append printf-style text. */
void cm_buf_printf(cm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Append s as a JSON string, quotes included (RFC 8259 escapes; UTF-8 passes
** as is). */
void cm_buf_json_str(cm_buf *b, const char *s);

/* Empty the text (and clear oom), keeping the memory. */
void cm_buf_reset(cm_buf *b);

/* Empty the text, its bytes zeroed first, keeping the memory. */
void cm_buf_wipe(cm_buf *b);

/* Free the memory (its text wiped first when b->wipe) and empty b; wipe stays. */
void cm_buf_free(cm_buf *b);

#endif
