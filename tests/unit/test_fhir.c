/*
** test_fhir.c -- the fhir plugin's mapping and bundle planning, as pure
** functions (plugins/fhir/fhir_map.c, fhir_bundle.c): no host, no store.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "fhir_bundle.h"
#include "fhir_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_placeholder(void **state)
{
    (void)state;
    assert_true(fhir_date_ok("2024-02-29"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placeholder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
