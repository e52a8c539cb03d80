/*
** test_bench_api.c -- how `caremesh bench api` reads the daemon's answers
** (cm_bench_api_answer): status, length and body, the end of an answer
** found wherever a read cuts it, and what it refuses to read.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "bench_api.h"

static const char two[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          "Content-Length: 12\r\n\r\n{\"state\":1}\n"
                          "HTTP/1.1 401 Unauthorized\r\ncontent-length:3\r\n"
                          "Connection: close\r\n\r\nno!";

/* Both answers are read whole, with their status and body. */
static void test_answers_are_read_with_status_and_body(void **state)
{
    int status = 0;
    size_t body = 0, len = 0, n = sizeof(two) - 1;
    long k = cm_bench_api_answer(two, n, &status, &body, &len);
    assert_true(k > 0);
    assert_int_equal(status, 200);
    assert_int_equal(len, 12);
    assert_memory_equal(two + body, "{\"state\":1}\n", 12);
    long k2 = cm_bench_api_answer(two + k, n - (size_t)k, &status, &body, &len);
    assert_int_equal((size_t)k + (size_t)k2, n);
    assert_int_equal(status, 401);
    assert_int_equal(len, 3);
    assert_memory_equal(two + k + body, "no!", 3);
}

/* Cut anywhere before its last byte, an answer is not yet there (0); at
** its last byte it is, whatever follows. */
static void test_an_answer_cut_anywhere_waits_for_its_end(void **state)
{
    int status;
    size_t body, len, n = sizeof(two) - 1;
    long whole = cm_bench_api_answer(two, n, &status, &body, &len);
    for (size_t cut = 0; cut < (size_t)whole; cut++)
        assert_int_equal(cm_bench_api_answer(two, cut, &status, &body, &len), 0);
    for (size_t cut = (size_t)whole; cut <= n; cut++)
        assert_int_equal(cm_bench_api_answer(two, cut, &status, &body, &len), whole);
}

/* The head ends at the first CR LF CR LF, not at a CR, a CR LF or a
** CR LF CR before it. */
static void test_the_head_ends_at_its_blank_line(void **state)
{
    static const char a[] = "HTTP/1.1 200 OK\r\nX: a\rb\r\nY: \r\n\rc\r\nContent-Length: 2\r\n\r\n"
                            "\r\n";
    int status;
    size_t body, len;
    assert_int_equal(cm_bench_api_answer(a, sizeof(a) - 1, &status, &body, &len), sizeof(a) - 1);
    assert_int_equal(status, 200);
    assert_int_equal(body, sizeof(a) - 3);
    assert_int_equal(len, 2);
}

/* What the benchmark does not read is refused, not guessed at. */
static void test_what_it_cannot_read_is_refused(void **state)
{
    static const char *const bad[] = {
        "HTTP/1.1 200 OK\r\n\r\n",                                        /* no length */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", /* chunked */
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        "HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\nx",
        "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nx",
        "HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
        "HTTP/1.1 2x0 OK\r\nContent-Length: 1\r\n\r\nx",
        "HTTP/1.1 020 OK\r\nContent-Length: 1\r\n\r\nx",
        "garbage garbage garbage\r\n\r\n",
        NULL};
    int status;
    size_t body, len;
    for (int i = 0; bad[i]; i++)
        assert_int_equal(cm_bench_api_answer(bad[i], strlen(bad[i]), &status, &body, &len), -1);
    /* a head that never ends within the limit */
    char *big = malloc(CM_BENCH_API_HEAD_MAX);
    assert_non_null(big);
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    memset(big + 20, 'a', CM_BENCH_API_HEAD_MAX - 20);
    assert_int_equal(cm_bench_api_answer(big, CM_BENCH_API_HEAD_MAX - 1, &status, &body, &len), 0);
    assert_int_equal(cm_bench_api_answer(big, CM_BENCH_API_HEAD_MAX, &status, &body, &len), -1);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers_are_read_with_status_and_body),
        cmocka_unit_test(test_an_answer_cut_anywhere_waits_for_its_end),
        cmocka_unit_test(test_the_head_ends_at_its_blank_line),
        cmocka_unit_test(test_what_it_cannot_read_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
