/*
** reader.h -- CSV records from a byte stream, parsed by libcsv (RFC 4180:
** quoted fields with embedded commas, quotes and newlines; CRLF, LF or CR
** line ends; a leading UTF-8 BOM dropped), each told with the physical line
** it starts on (embedded newlines counted). Strict: a stray quote, text after
** a closing quote or a quote left open at the end is an error that stops the
** stream, with its line and the field it is in. Blank lines are skipped.
** Pure: no caremesh host, no I/O; one thread.
*/
#ifndef ROSTER_READER_H
#define ROSTER_READER_H

#include <stdbool.h>
#include <stddef.h>

#define ROSTER_FIELD_MAX  (1024 * 1024)     /* longest field, bytes */
#define ROSTER_RECORD_MAX (4 * 1024 * 1024) /* longest record, bytes */
#define ROSTER_FIELDS_MAX 1000              /* most fields in a record */

/* One record: fields[i] is NUL-terminated, lens[i] its length (a field may
** hold NUL bytes, so trust lens). Borrowed for the callback. */
typedef struct roster_record {
    size_t line; /* the physical line (1-based) the record starts on */
    size_t nfields;
    const char *const *fields;
    const size_t *lens;
} roster_record;

/* Told each record in order; non-zero stops the stream (feed returns it). */
typedef int (*roster_record_fn)(void *ud, const roster_record *rec);

/* Why the stream stopped: a line, the 0-based field index in that record,
** and a message ("unterminated quoted field (opened on line 4)"). */
typedef struct roster_csv_error {
    size_t line;
    size_t field;
    char msg[256];
} roster_csv_error;

typedef struct roster_reader roster_reader;

/* NULL when out of memory. */
roster_reader *roster_reader_new(roster_record_fn fn, void *ud);
void roster_reader_destroy(roster_reader **r_p);

/* Parse len more bytes. 0; ROSTER_ESYNTAX with *err filled for bad CSV
** (the reader is then done); or what the callback returned. */
int roster_reader_feed(roster_reader *r, const void *buf, size_t len, roster_csv_error *err);
/* The end of the stream: the last record (without a final newline) is
** told; an open quote is an error. Same returns as feed. */
int roster_reader_finish(roster_reader *r, roster_csv_error *err);

/* Physical lines seen so far (for progress). */
size_t roster_reader_lines(const roster_reader *r);

#define ROSTER_ESYNTAX (-100)

#endif
