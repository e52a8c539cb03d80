/*
** reader.c -- CSV records with their line numbers, over libcsv.
** libcsv says where a record ends but not on which line it began, so the
** bytes go to it in segments that end at each CR or LF: a record can only
** end at such a byte, and between segments the reader knows the line.
*/
#include "reader.h"

#include <csv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 65536 /* libcsv grows its field buffer by this much */

struct roster_reader {
    struct csv_parser csv;
    roster_record_fn fn;
    void *ud;
    size_t line;     /* the line of the next byte */
    size_t rec_line; /* the line the record being read started on */
    bool at_start;   /* no byte of the next record seen yet */
    bool last_cr;    /* the last byte fed was a CR */
    size_t bom;      /* bytes of a leading BOM matched so far; 3 when decided */
    bool done;       /* stopped: an error or the end */
    int stop;        /* what a callback asked to return */
    roster_csv_error *err;
    /* the record being read: fields back to back, each NUL-terminated */
    char *buf;
    size_t used, cap;
    size_t *offs, *lens;
    const char **fields;
    size_t nfields, fcap;
};

static const unsigned char BOM[3] = {0xef, 0xbb, 0xbf};

/* libcsv's allocator: refuses past the longest field, so a runaway field
** (a quote never closed in a large file) stops instead of eating memory. */
static void *capped_realloc(void *p, size_t n)
{
    return n > (size_t)ROSTER_FIELD_MAX + BLOCK ? NULL : realloc(p, n);
}

static int no_space(unsigned char c)
{
    return 0; /* RFC 4180: spaces are part of a field */
}

static int fail(roster_reader *r, size_t line, const char *msg)
{
    r->done = true;
    r->stop = ROSTER_ESYNTAX;
    if (r->err) {
        r->err->line = line;
        r->err->field = r->nfields;
        snprintf(r->err->msg, sizeof(r->err->msg), "%s", msg);
    }
    return ROSTER_ESYNTAX;
}

/* Room for need bytes in the record buffer and need_fields fields. */
static bool reserve(roster_reader *r, size_t need, size_t need_fields)
{
    if (need > r->cap) {
        size_t n = r->cap ? r->cap : 256;
        while (n < need)
            n *= 2;
        char *b = realloc(r->buf, n);
        if (!b)
            return false;
        r->buf = b;
        r->cap = n;
    }
    if (need_fields > r->fcap) {
        size_t n = r->fcap ? r->fcap * 2 : 16;
        size_t *o = realloc(r->offs, n * sizeof(*o));
        if (o)
            r->offs = o;
        size_t *l = o ? realloc(r->lens, n * sizeof(*l)) : NULL;
        if (l)
            r->lens = l;
        const char **f = l ? realloc(r->fields, n * sizeof(*f)) : NULL;
        if (!f)
            return false;
        r->fields = f;
        r->fcap = n;
    }
    return true;
}

static void on_field(void *s, size_t len, void *ud)
{
    roster_reader *r = ud;
    if (r->stop)
        return;
    if (r->nfields >= ROSTER_FIELDS_MAX) {
        fail(r, r->rec_line, "more than 1000 fields in a record");
        return;
    }
    if (r->used + len + 1 > ROSTER_RECORD_MAX) {
        fail(r, r->rec_line, "record longer than 4194304 bytes (4 MiB)");
        return;
    }
    if (!reserve(r, r->used + len + 1, r->nfields + 1)) {
        fail(r, r->rec_line, "out of memory");
        return;
    }
    if (len)
        memcpy(r->buf + r->used, s, len);
    r->buf[r->used + len] = '\0';
    r->offs[r->nfields] = r->used;
    r->lens[r->nfields] = len;
    r->used += len + 1;
    r->nfields++;
}

static void on_record(int c, void *ud)
{
    roster_reader *r = ud;
    if (!r->stop && r->nfields > 0) {
        for (size_t i = 0; i < r->nfields; i++)
            r->fields[i] = r->buf + r->offs[i];
        roster_record rec = {r->rec_line, r->nfields, r->fields, r->lens};
        r->stop = r->fn(r->ud, &rec);
        if (r->stop)
            r->done = true;
    }
    r->used = 0;
    r->nfields = 0;
    r->at_start = true;
}

roster_reader *roster_reader_new(roster_record_fn fn, void *ud)
{
    roster_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    if (csv_init(&r->csv, CSV_STRICT | CSV_STRICT_FINI) != 0) {
        free(r);
        return NULL;
    }
    csv_set_realloc_func(&r->csv, capped_realloc);
    csv_set_free_func(&r->csv, free);
    csv_set_space_func(&r->csv, no_space);
    csv_set_blk_size(&r->csv, BLOCK);
    r->fn = fn;
    r->ud = ud;
    r->line = 1;
    r->at_start = true;
    return r;
}

void roster_reader_destroy(roster_reader **r_p)
{
    roster_reader *r = r_p ? *r_p : NULL;
    if (!r)
        return;
    csv_free(&r->csv);
    free(r->buf);
    free(r->offs);
    free(r->lens);
    free(r->fields);
    free(r);
    *r_p = NULL;
}

size_t roster_reader_lines(const roster_reader *r)
{
    return r->line - 1;
}

/* Why libcsv stopped, as the reader's error. */
static int parse_error(roster_reader *r, size_t line)
{
    int e = csv_error(&r->csv);
    if (e == CSV_ENOMEM && csv_get_buffer_size(&r->csv) + BLOCK > ROSTER_FIELD_MAX)
        return fail(r, line, "field longer than 1048576 bytes (1 MiB)");
    if (e == CSV_EPARSE)
        return fail(r, line,
                    "malformed quoting: a quote inside an unquoted field, or text after a "
                    "closing quote (a quote inside a quoted field is written twice: \"\")");
    return fail(r, line, csv_strerror(e));
}

/* Feed one segment: bytes up to and including the first CR or LF. */
static int feed_segment(roster_reader *r, const unsigned char *p, size_t n)
{
    unsigned char last = p[n - 1];
    if (r->at_start && p[0] != '\r' && p[0] != '\n') {
        r->rec_line = r->line;
        r->at_start = false;
    }
    if (csv_parse(&r->csv, p, n, on_field, on_record, r) != n && !r->stop)
        return parse_error(r, r->line);
    if (last == '\r' || (last == '\n' && !(n == 1 && r->last_cr)))
        r->line++;
    r->last_cr = last == '\r';
    return r->stop;
}

int roster_reader_feed(roster_reader *r, const void *buf, size_t len, roster_csv_error *err)
{
    const unsigned char *p = buf;
    r->err = err;
    if (r->done)
        return r->stop ? r->stop : ROSTER_ESYNTAX;
    while (r->bom < 3 && len > 0) { /* a BOM may come split over feeds */
        if (*p != BOM[r->bom]) {
            size_t held = r->bom;
            r->bom = 3;
            if (held && feed_segment(r, BOM, held) != 0)
                return r->stop;
            break;
        }
        r->bom++, p++, len--;
    }
    while (len > 0) {
        size_t n = 0;
        while (n < len && p[n] != '\r' && p[n] != '\n')
            n++;
        n = n < len ? n + 1 : len;
        int rc = feed_segment(r, p, n);
        if (rc != 0)
            return rc;
        p += n;
        len -= n;
    }
    return 0;
}

int roster_reader_finish(roster_reader *r, roster_csv_error *err)
{
    r->err = err;
    if (r->done)
        return r->stop ? r->stop : ROSTER_ESYNTAX;
    if (r->bom > 0 && r->bom < 3) { /* the stream was a BOM's first bytes: data */
        size_t held = r->bom;
        r->bom = 3;
        if (feed_segment(r, BOM, held) != 0)
            return r->stop;
    }
    if (csv_fini(&r->csv, on_field, on_record, r) != 0 && !r->stop) {
        size_t line = r->at_start ? r->line : r->rec_line;
        if (csv_error(&r->csv) == CSV_EPARSE)
            return fail(r, line, "a quoted field is never closed (a quote is missing)");
        return parse_error(r, line);
    }
    r->done = true;
    return r->stop;
}
