/*
** test_roster_csv.c -- the roster_csv plugin's parts without a host: the CSV
** reader (line numbers over embedded newlines, CRLF/LF/CR, a BOM split over
** feeds, strict quoting, the field cap, random bytes fed in random pieces
** giving the same records as fed whole) and the mapping (rules, defaults,
** ids from identifiers, dates, the column of a model message, the merge into
** a stored patient).
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mapping.h"
#include "reader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the reader ---------------------------------------------------------- */

/* What the reader told, as text: "LINE:f1|f2|...\n" per record. */
typedef struct seen {
    char text[65536];
    size_t len;
    int stop_at; /* stop (return 7) at this record (1-based); 0 never */
    int records;
} seen;

static int collect(void *ud, const roster_record *rec)
{
    seen *s = ud;
    s->records++;
    int n = snprintf(s->text + s->len, sizeof(s->text) - s->len, "%zu:", rec->line);
    s->len += n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < rec->nfields && s->len + rec->lens[i] + 2 < sizeof(s->text); i++) {
        if (i)
            s->text[s->len++] = '|';
        memcpy(s->text + s->len, rec->fields[i], rec->lens[i]);
        s->len += rec->lens[i];
    }
    if (s->len + 1 < sizeof(s->text))
        s->text[s->len++] = '\n';
    s->text[s->len] = '\0';
    return s->records == s->stop_at ? 7 : 0;
}

/* Parse data fed in pieces of step bytes (0: whole). The return of the last call. */
static int parse(const char *data, size_t len, size_t step, seen *s, roster_csv_error *err)
{
    roster_reader *r = roster_reader_new(collect, s);
    int rc = 0;
    assert_non_null(r);
    for (size_t off = 0; off < len && rc == 0; off += step ? step : len)
        rc = roster_reader_feed(r, data + off, step && len - off > step ? step : len - off, err);
    if (rc == 0)
        rc = roster_reader_finish(r, err);
    roster_reader_destroy(&r);
    assert_null(r);
    return rc;
}

static void lines_are_physical(void **state)
{
    /* a BOM; CRLF; a quoted field over two lines (CRLF inside); a blank line;
    ** embedded commas and doubled quotes; LF; a CR-only line end; no final newline */
    static const char csv[] = "\xef\xbb\xbf"
                              "MRN,Name,Address\r\n"
                              "1,\"Rivera, Ana\",\"12 Main St\r\nApt 4\"\r\n"
                              "\r\n"
                              "2,\"O\"\"Brien\",x\n"
                              "3,Lee,\"a\nb\nc\"\n"
                              "4,Ng,y\r"
                              "5,Kim,z";
    static const char want[] = "1:MRN|Name|Address\n"
                               "2:1|Rivera, Ana|12 Main St\r\nApt 4\n"
                               "5:2|O\"Brien|x\n"
                               "6:3|Lee|a\nb\nc\n"
                               "9:4|Ng|y\n"
                               "10:5|Kim|z\n";
    for (size_t step = 0; step <= 7; step++) {
        seen s = {0};
        roster_csv_error err = {0};
        assert_int_equal(parse(csv, sizeof(csv) - 1, step, &s, &err), 0);
        assert_string_equal(s.text, want);
    }
}

static void bom_only_at_the_start(void **state)
{
    seen s = {0};
    roster_csv_error err = {0};
    /* not a BOM: the bytes are data (and a lone \xef is kept as it is) */
    assert_int_equal(parse("\xef"
                           "a,b\n\xef\xbb\xbf"
                           "c,d\n",
                           12, 1, &s, &err),
                     0);
    assert_string_equal(s.text, "1:\xef"
                                "a|b\n2:\xef\xbb\xbf"
                                "c|d\n");
    seen t = {0};
    assert_int_equal(parse("\xef\xbb", 2, 1, &t, &err), 0);
    assert_string_equal(t.text, "1:\xef\xbb\n");
}

static void quoting_errors_name_line_and_field(void **state)
{
    seen s = {0};
    roster_csv_error err = {0};
    static const char open[] = "a,b,c\n1,2,3\n4,\"never closed,6\n7,8,9\n";
    assert_int_equal(parse(open, sizeof(open) - 1, 0, &s, &err), ROSTER_ESYNTAX);
    assert_int_equal(err.line, 3);
    assert_int_equal(err.field, 1);
    assert_non_null(strstr(err.msg, "never closed"));
    assert_string_equal(s.text, "1:a|b|c\n2:1|2|3\n");

    seen t = {0};
    static const char stray[] = "a,b,c\n\"x\ny\",2,3\n4,5\"6,7\n";
    assert_int_equal(parse(stray, sizeof(stray) - 1, 3, &t, &err), ROSTER_ESYNTAX);
    assert_int_equal(err.line, 4);
    assert_int_equal(err.field, 1);
    assert_non_null(strstr(err.msg, "malformed quoting"));

    seen u = {0};
    static const char after[] = "a,b\n\"x\"y,2\n";
    assert_int_equal(parse(after, sizeof(after) - 1, 0, &u, &err), ROSTER_ESYNTAX);
    assert_int_equal(err.line, 2);
    assert_int_equal(err.field, 0);
}

static void a_callback_stops_the_stream(void **state)
{
    seen s = {0};
    roster_csv_error err = {0};
    s.stop_at = 2;
    assert_int_equal(parse("a\nb\nc\nd\n", 8, 0, &s, &err), 7);
    assert_int_equal(s.records, 2);
}

static void a_field_past_the_cap_stops(void **state)
{
    size_t n = ROSTER_FIELD_MAX + 100000;
    char *data = malloc(n + 16);
    assert_non_null(data);
    memcpy(data, "h\n\"", 3);
    memset(data + 3, 'x', n);
    memcpy(data + 3 + n, "\"\n", 2);
    seen s = {0};
    roster_csv_error err = {0};
    assert_int_equal(parse(data, n + 5, 65536, &s, &err), ROSTER_ESYNTAX);
    assert_int_equal(err.line, 2);
    assert_non_null(strstr(err.msg, "longer than 1048576"));
    /* just under the cap is a field like any other */
    n = ROSTER_FIELD_MAX - 10;
    memset(data + 3, 'y', n);
    memcpy(data + 3 + n, "\"\n", 2);
    seen t = {0};
    roster_reader *r = roster_reader_new(collect, &t);
    assert_int_equal(roster_reader_feed(r, data, n + 5, &err), 0);
    assert_int_equal(roster_reader_finish(r, &err), 0);
    assert_int_equal(t.records, 2);
    roster_reader_destroy(&r);
    free(data);
}

/* Random bytes, weighted toward quotes, commas and line ends: never a crash,
** and the same records and error however the bytes are cut into feeds. */
static void random_bytes_parse_the_same_in_any_pieces(void **state)
{
    static const char alphabet[] = "\"\",,\r\n\n ab\xef\xbb\xbf\xff";
    char data[600];
    srand(20260105);
    for (int round = 0; round < 3000; round++) {
        size_t len = (size_t)(rand() % (int)sizeof(data));
        for (size_t i = 0; i < len; i++)
            data[i] = rand() % 3 ? alphabet[rand() % (int)(sizeof(alphabet) - 1)] : (char)rand();
        seen whole = {0}, pieces = {0};
        roster_csv_error e1 = {0}, e2 = {0};
        int r1 = parse(data, len, 0, &whole, &e1);
        int r2 = parse(data, len, 1 + (size_t)(rand() % 17), &pieces, &e2);
        assert_int_equal(r1, r2);
        assert_string_equal(whole.text, pieces.text);
        if (r1 != 0) {
            assert_int_equal(e1.line, e2.line);
            assert_int_equal(e1.field, e2.field);
            assert_string_equal(e1.msg, e2.msg);
        }
    }
}

/* ---- the mapping ------------------------------------------------------------- */

/* A record from "a,b,c" (no quoting: test data only). */
typedef struct fake {
    char buf[1024];
    const char *fields[32];
    size_t lens[32];
    roster_record rec;
} fake;

static const roster_record *record(fake *f, size_t line, const char *csv)
{
    size_t n = 0;
    snprintf(f->buf, sizeof(f->buf), "%s", csv);
    for (char *p = f->buf;; p++) {
        char *end = strchr(p, ',');
        f->fields[n] = p;
        f->lens[n] = end ? (size_t)(end - p) : strlen(p);
        n++;
        if (!end)
            break;
        *end = '\0';
        p = end;
    }
    f->rec = (roster_record){line, n, f->fields, f->lens};
    return &f->rec;
}

static void rules_are_checked(void **state)
{
    roster_map m;
    char err[1200];
    roster_map_init(&m);
    assert_int_equal(roster_map_parse(&m, "MRN=identifier|urn:oid:1.2,DOB=birthDate|DD/MM/YYYY",
                                      "--map", err, sizeof(err)),
                     0);
    assert_int_equal(m.nrules, 2);
    assert_string_equal(m.rules[0].arg, "urn:oid:1.2");
    assert_int_equal(roster_map_parse(&m, "dob=dob|YYYYMMDD", "--map", err, sizeof(err)), 0);
    assert_int_equal(m.nrules, 2); /* the same column, case aside: replaced */
    assert_string_equal(m.rules[1].arg, "YYYYMMDD");
    assert_int_equal(roster_map_parse(&m, "A=name.middle", "--map", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown field \"name.middle\""));
    assert_int_equal(roster_map_parse(&m, "A=gender|x", "--map", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "gender takes no |argument"));
    assert_int_equal(roster_map_parse(&m, "A=birthDate|D/M/Y", "--map", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown date format"));
    assert_int_equal(roster_map_parse(&m, "MRN=id,nothing", "--map", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "item 2 \"nothing\""));
    assert_int_equal(roster_map_parse(&m, "=phone", "--map", err, sizeof(err)), -1);
    assert_int_equal(roster_map_parse(&m, "", "--map", err, sizeof(err)), -1);
    roster_map_clear(&m);
}

static void columns_resolve_with_defaults(void **state)
{
    roster_map m;
    roster_columns c;
    fake f;
    size_t col;
    char err[1200], ign[256];
    roster_map_init(&m);
    assert_int_equal(roster_map_parse(&m, "Cell=phone", "--map", err, sizeof(err)), 0);
    assert_int_equal(
        roster_columns_resolve(&m,
                               record(&f, 1,
                                      "Patient MRN,LAST_NAME,First Name,Middle,D.O.B.,Sex,Home "
                                      "Phone,Cell,SSN"),
                               &c, &col, err, sizeof(err)),
        0);
    assert_int_equal(c.target[0], RT_IDENTIFIER);
    assert_int_equal(c.target[1], RT_FAMILY);
    assert_int_equal(c.target[2], RT_GIVEN);
    assert_int_equal(c.target[3], RT_GIVEN);
    assert_int_equal(c.target[4], RT_BIRTHDATE);
    assert_int_equal(c.target[5], RT_GENDER);
    assert_int_equal(c.target[6], RT_IGNORE); /* phone is the rule's Cell */
    assert_int_equal(c.target[7], RT_PHONE);
    assert_int_equal(c.id_col, 0);
    assert_string_equal(c.id_prefix, "pat-");
    assert_string_equal(roster_columns_ignored(&c, ign, sizeof(ign)), "Home Phone, SSN");
    roster_columns_clear(&c);

    m.defaults = false;
    assert_int_equal(roster_columns_resolve(&m, record(&f, 1, "MRN,Last,DOB,Sex,Cell"), &c, &col,
                                            err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "no column gives name.family"));
    roster_map_clear(&m);
}

static void header_problems_are_named(void **state)
{
    roster_map m;
    roster_columns c;
    fake f;
    size_t col;
    char err[1200];
    roster_map_init(&m);
    assert_int_equal(
        roster_columns_resolve(&m, record(&f, 1, "MRN,Last,,DOB,Sex"), &c, &col, err, sizeof(err)),
        -1);
    assert_non_null(strstr(err, "header of column 3: empty"));
    assert_int_equal(col, 2);
    assert_int_equal(roster_columns_resolve(&m, record(&f, 1, "MRN,Last,DOB,Sex,last"), &c, &col,
                                            err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "twice in the header (columns 2 and 5)"));
    assert_int_equal(
        roster_columns_resolve(&m, record(&f, 1, "Last,DOB,Sex"), &c, &col, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no column gives the patient id"));
    assert_int_equal(roster_map_parse(&m, "A=name.full", "--map", err, sizeof(err)), 0);
    assert_int_equal(
        roster_columns_resolve(&m, record(&f, 1, "MRN,A,Last,DOB,Sex"), &c, &col, err, sizeof(err)),
        -1);
    assert_non_null(strstr(err, "name.family and name.full"));
    assert_int_equal(roster_map_parse(&m, "B=gender,C=gender", "--map", err, sizeof(err)), 0);
    assert_int_equal(
        roster_columns_resolve(&m, record(&f, 1, "MRN,A,B,C,DOB"), &c, &col, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "gender is already given by another column"));
    roster_map_clear(&m);
}

/* The map of the last build: its columns borrow the rules' arguments. */
static roster_map held;

/* Resolve header with spec, build the row. */
static int build(const char *spec, const char *header, const char *line, roster_columns *c,
                 roster_row *row, size_t *col, char *msg)
{
    fake fh, fr;
    char err[1200];
    roster_map_init(&held);
    if (spec)
        assert_int_equal(roster_map_parse(&held, spec, "--map", err, sizeof(err)), 0);
    assert_int_equal(
        roster_columns_resolve(&held, record(&fh, 1, header), c, col, err, sizeof(err)), 0);
    return roster_row_build(c, record(&fr, 2, line), row, col, msg, ROSTER_MSG_MAX);
}

static void done(roster_columns *c, roster_row *row)
{
    roster_row_clear(row);
    roster_columns_clear(c);
    roster_map_clear(&held);
}

static const char *str_at(const cJSON *doc, const char *a, const char *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, a);
    if (b)
        v = cJSON_GetObjectItemCaseSensitive(v, b);
    return cJSON_GetStringValue(v);
}

static void rows_become_patients(void **state)
{
    roster_columns c;
    roster_row row;
    size_t col;
    char msg[ROSTER_MSG_MAX];
    assert_int_equal(build(NULL, "Patient Name,MRN,DOB,Sex,Language,Preferred Contact,Active",
                           "  RIVERA; ANA MARIA ,A/1,1958-04-12,F,Spanish,Text,no", &c, &row, &col,
                           msg),
                     0);
    /* the fake record splits on commas only: "RIVERA; ANA MARIA" has no comma */
    assert_string_equal(row.id, "pat-A_2F1");
    assert_string_equal(str_at(row.doc, "id", NULL), "pat-A_2F1");
    assert_string_equal(str_at(row.doc, "name", "family"), "MARIA");
    assert_string_equal(str_at(row.doc, "name", "text"), "RIVERA; ANA MARIA");
    assert_string_equal(str_at(row.doc, "gender", NULL), "female");
    assert_string_equal(str_at(row.doc, "language", NULL), "es");
    assert_string_equal(str_at(row.doc, "preferredChannel", NULL), "sms");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(row.doc, "active")));
    done(&c, &row);

    /* an id written _XX never meets one that had the byte */
    assert_int_equal(build(NULL, "MRN,Last,DOB,Sex", "A_2F1,X,1958-04-12,m", &c, &row, &col, msg),
                     0);
    assert_string_equal(row.id, "pat-A_5F2F1");
    assert_string_equal(str_at(row.doc, "gender", NULL), "male");
    done(&c, &row);

    assert_int_equal(build("DOB=birthDate|DD/MM/YYYY,Dx=conditions|http://hl7.org/fhir/sid/icd-10",
                           "MRN,Last,DOB,Sex,Dx", "7,Ng,3/1/1950 00:00,female,E11; I10 ;", &c, &row,
                           &col, msg),
                     0);
    assert_string_equal(str_at(row.doc, "birthDate", NULL), "1950-01-03");
    const cJSON *conds = cJSON_GetObjectItemCaseSensitive(row.doc, "conditions");
    assert_int_equal(cJSON_GetArraySize(conds), 2);
    assert_string_equal(str_at(cJSON_GetArrayItem(conds, 1), "code", NULL), "I10");
    assert_string_equal(str_at(cJSON_GetArrayItem(conds, 1), "system", NULL),
                        "http://hl7.org/fhir/sid/icd-10");
    done(&c, &row);
}

static void row_problems_name_their_column(void **state)
{
    roster_columns c;
    roster_row row;
    size_t col;
    char msg[ROSTER_MSG_MAX];
    assert_int_equal(build("DOB=birthDate|MM/DD/YYYY", "MRN,Last,DOB,Sex", "1,Ng,1950-01-03,F", &c,
                           &row, &col, msg),
                     -1);
    assert_int_equal(col, 2);
    assert_string_equal(msg, "\"1950-01-03\" is not a date written MM/DD/YYYY");
    done(&c, &row);
    assert_int_equal(
        build(NULL, "MRN,Last,DOB,Sex,Active", " ,Ng,1950-01-03,F,yes", &c, &row, &col, msg), -1);
    assert_int_equal(col, 0);
    assert_non_null(strstr(msg, "gives the patient id"));
    done(&c, &row);
    assert_int_equal(
        build(NULL, "MRN,Last,DOB,Sex,Active", "1,Ng,1950-01-03,F,maybe", &c, &row, &col, msg), -1);
    assert_int_equal(col, 4);
    assert_non_null(strstr(msg, "neither yes nor no"));
    done(&c, &row);
    assert_int_equal(
        build(NULL, "MRN,Last,DOB,Sex", "1,Ng\xc3\x28,1950-01-03,F", &c, &row, &col, msg), -1);
    assert_int_equal(col, 1);
    assert_string_equal(msg, "not valid UTF-8 (byte 3 of the field)");
    done(&c, &row);
}

static void model_messages_find_their_column(void **state)
{
    roster_columns c;
    roster_row row;
    size_t col;
    char msg[ROSTER_MSG_MAX];
    assert_int_equal(build(NULL, "MRN,First,Middle,Last,DOB,Sex,Street,Zip",
                           "1,Ana,Q,Ng,1950-01-03,F,12 Main,", &c, &row, &col, msg),
                     0);
    assert_int_equal(roster_row_locate(&c, &row, "patient.name.given[1]: bad"), 2);
    assert_int_equal(roster_row_locate(&c, &row, "patient.name.given[0]: bad"), 1);
    assert_int_equal(roster_row_locate(&c, &row, "patient.birthDate: \"x\" bad"), 4);
    assert_int_equal(roster_row_locate(&c, &row, "patient.address.line[0]: bad"), 6);
    assert_int_equal(roster_row_locate(&c, &row, "patient.address.postalCode: bad"), 7);
    assert_int_equal(roster_row_locate(&c, &row, "patient.identifiers[0].value: bad"), 0);
    assert_int_equal(roster_row_locate(&c, &row, "patient.id: bad"), 0);
    assert_int_equal(roster_row_locate(&c, &row, "patient.email: bad"), ROSTER_NO_COL);
    assert_int_equal(roster_row_locate(&c, &row, "patient \"x\" already exists"), ROSTER_NO_COL);
    done(&c, &row);
}

static void merge_keeps_what_the_roster_does_not_give(void **state)
{
    roster_columns c;
    roster_row row;
    size_t col;
    char msg[ROSTER_MSG_MAX];
    cJSON *old = cJSON_Parse(
        "{\"id\":\"pat-1\",\"name\":{\"family\":\"Old\",\"given\":[\"A\",\"B\"],\"prefix\":"
        "[\"Dr\"]},\"birthDate\":\"1950-01-01\",\"gender\":\"male\",\"phone\":\"555 0100 "
        "000\",\"email\":\"a@b.c\",\"identifiers\":[{\"value\":\"1\"},{\"system\":\"urn:other\","
        "\"value\":\"x\"},{\"system\":\"urn:caremesh:roster\",\"value\":\"old-cohort\"}],"
        "\"meta\":{\"versionId\":\"3\"},\"active\":true}");
    assert_non_null(old);
    assert_int_equal(
        build(NULL, "MRN,Last,First,DOB,Sex,Phone", "1,New,Cy,1950-01-02,F,", &c, &row, &col, msg),
        0);
    cJSON *doc = roster_merge(&c, old, &row, "flu-2026");
    cJSON *want = cJSON_Parse(
        "{\"id\":\"pat-1\",\"name\":{\"prefix\":[\"Dr\"],\"family\":\"New\",\"given\":["
        "\"Cy\"]},\"email\":\"a@b.c\",\"active\":true,\"birthDate\":\"1950-01-02\","
        "\"gender\":\"female\",\"identifiers\":[{\"value\":\"1\"},{\"system\":\"urn:other\","
        "\"value\":\"x\"},{\"system\":\"urn:caremesh:roster\",\"value\":\"old-cohort\"},{"
        "\"system\":\"urn:caremesh:roster\",\"value\":\"flu-2026\"}]}");
    assert_non_null(want);
    assert_true(cJSON_Compare(doc, want, true));
    /* merging again changes nothing: the re-import is a no-op */
    cJSON *again = roster_merge(&c, doc, &row, "flu-2026");
    assert_true(cJSON_Compare(doc, again, true));
    cJSON_Delete(want);
    cJSON_Delete(again);
    cJSON_Delete(doc);
    cJSON_Delete(old);
    done(&c, &row);
}

static void utf8_check(void **state)
{
    size_t at = 99;
    assert_true(roster_utf8_ok("Nguy\xe1\xbb\x85n \xf0\x9f\x98\x80", 13, &at));
    assert_false(roster_utf8_ok("ab\xc0\xaf", 4, &at)); /* overlong */
    assert_int_equal(at, 2);
    assert_false(roster_utf8_ok("\xed\xa0\x80", 3, &at)); /* a surrogate */
    assert_false(roster_utf8_ok("ab\xe1\xbb", 4, &at));   /* cut short */
    assert_int_equal(at, 2);
    assert_false(roster_utf8_ok("a\0b", 3, &at));
    assert_int_equal(at, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lines_are_physical),
        cmocka_unit_test(bom_only_at_the_start),
        cmocka_unit_test(quoting_errors_name_line_and_field),
        cmocka_unit_test(a_callback_stops_the_stream),
        cmocka_unit_test(a_field_past_the_cap_stops),
        cmocka_unit_test(random_bytes_parse_the_same_in_any_pieces),
        cmocka_unit_test(rules_are_checked),
        cmocka_unit_test(columns_resolve_with_defaults),
        cmocka_unit_test(header_problems_are_named),
        cmocka_unit_test(rows_become_patients),
        cmocka_unit_test(row_problems_name_their_column),
        cmocka_unit_test(model_messages_find_their_column),
        cmocka_unit_test(merge_keeps_what_the_roster_does_not_give),
        cmocka_unit_test(utf8_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
