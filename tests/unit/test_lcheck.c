/*
** test_lcheck.c -- `caremesh workflow check` and `graph` behind the CLI:
** every problem of a definition with its file and line, syntax and load
** errors as one problem, handlers never run, and the state machine as DOT
** and Mermaid.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "lcheck.h"
#include "support.h"

typedef struct fx {
    char *dir;
    char path[1024]; /* the file written last */
    char *out;       /* the last report or graph; teardown frees it */
} fx;

static const char *CLEAN =
    "local cm = require 'caremesh'\n"
    "-- a referral, as the engine tests have it\n"
    "return cm.workflow {\n"
    "  name = 'referral', version = 1,\n"
    "  input = { patient = 'patient', reason = 'string', urgent = 'boolean?' },\n"
    "  start = 'requested',\n"
    "  states = {\n"
    "    requested = {\n"
    "      enter = function(wf)\n"
    "        wf:after('72h', 'no_response')\n"
    "        wf:after('30d', 'loop_deadline', nil, { keep = true })\n"
    "      end,\n"
    "      on = {\n"
    "        accepted = 'accepted',\n"
    "        declined = { to = 'declined', guard = function(wf, ev) return ev.reason ~= nil end "
    "},\n"
    "        no_response = function(wf)\n"
    "          wf:task { title = 'Call the specialist', role = 'care_coordinator',\n"
    "                    organization = 'clinic-a', patient = wf.input.patient, due = '1d' }\n"
    "          return 'escalated'\n"
    "        end,\n"
    "        ['referral.cancelled'] = function(wf) wf:go('closed') end,\n"
    "      },\n"
    "    },\n"
    "    escalated = { on = { accepted = 'accepted' } },\n"
    "    accepted = {\n"
    "      enter = function(wf) wf:kpi('referrals_accepted', 1, { site = 'clinic-a' }) end,\n"
    "      on = { consult_note = 'closed' },\n"
    "    },\n"
    "    declined = { final = true },\n"
    "    closed = { final = true, enter = function(wf)\n"
    "      wf:notify { channel = 'sms', to = wf.input.patient, message = 'Closed' }\n"
    "      wf:send('cardio-b', 'referral.closed', { id = wf.id })\n"
    "    end },\n"
    "  },\n"
    "}\n";

/* Seven problems; the line of each is in the comment at its end. */
static const char *BROKEN = "local cm = require 'caremesh'\n"
                            "return cm.workflow {\n"
                            "  name = 'broken', version = 1,\n"
                            "  start = 'new',\n"
                            "  states = {\n" /* 5: no final state */
                            "    new = {\n"
                            "      enter = function(wf)\n"
                            "        wf:after('3 days', 'remind')\n"           /* 8 */
                            "        wf:taks { title = 'Call the patient' }\n" /* 9 */
                            "      end,\n"
                            "      on = {\n"
                            "        remind = 'reminded',\n" /* 12 */
                            "        answered = function(wf, ev)\n"
                            "          if ev.ok then return 'done' end\n"
                            "          return 'lost'\n" /* 15 */
                            "        end,\n"
                            "      },\n"
                            "      colour = 'blue',\n" /* 18 */
                            "    },\n"
                            "    done = { on = { reopen = 'new' } },\n"
                            "    orphan = { on = { ping = 'done' } },\n" /* 21 */
                            "  },\n"
                            "}\n";

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    f->dir = cm_test_tmpdir();
    assert_non_null(f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    cm_test_rmtree(f->dir);
    free(f->dir);
    free(f->out);
    free(f);
    return 0;
}

/* Save text as name in the test's directory; f->path names it. */
static const char *write_file(fx *f, const char *name, const char *text)
{
    snprintf(f->path, sizeof(f->path), "%s", cm_test_path(f->dir, name));
    cm_test_write(f->path, text, strlen(text));
    return f->path;
}

/* Check text saved as name, asserting it has n problems; the report is f->out. */
static const char *check(fx *f, const char *name, const char *text, int n)
{
    cm_err err;
    write_file(f, name, text);
    free(f->out);
    f->out = NULL;
    assert_int_equal(cm_lua_workflow_check(f->path, &f->out, &err), n);
    assert_non_null(f->out);
    return f->out;
}

/* The graph of the file written last, as DOT or Mermaid; it is f->out. */
static const char *graph(fx *f, bool mermaid)
{
    cm_err err;
    free(f->out);
    f->out = NULL;
    assert_int_equal(cm_lua_workflow_graph(f->path, mermaid, &f->out, &err), 0);
    assert_non_null(f->out);
    return f->out;
}

/* Report line number n (0-based), without its newline, into buf. */
static const char *report_line(const char *report, int n, char *buf, size_t size)
{
    for (; n > 0 && report; n--) {
        report = strchr(report, '\n');
        report = report ? report + 1 : NULL;
    }
    if (!report || !*report)
        return "";
    snprintf(buf, size, "%.*s", (int)strcspn(report, "\n"), report);
    return buf;
}

/* Line n of the last report starts with "path:line: " and contains fragment. */
static void expect_problem(const fx *f, int n, int line, const char *fragment)
{
    char got[1024], want[sizeof(f->path) + 32];
    report_line(f->out, n, got, sizeof(got));
    snprintf(want, sizeof(want), "%s:%d: ", f->path, line);
    if (strncmp(got, want, strlen(want)) != 0 || !strstr(got, fragment))
        fail_msg("problem %d: want \"%s...%s\", got \"%s\"", n, want, fragment, got);
}

static void test_clean_definition_has_no_problems(void **state)
{
    assert_string_equal(check(*state, "referral.lua", CLEAN, 0), "");
}

static void test_every_problem_is_reported_with_its_line(void **state)
{
    fx *f = *state;
    const char *report = check(f, "broken.lua", BROKEN, 7);
    expect_problem(f, 0, 5, "states: no final state");
    expect_problem(f, 1, 8, "wf:after(\"3 days\"): bad duration");
    expect_problem(f, 2, 9, "unknown effect wf:taks");
    expect_problem(f, 3, 12, "states.new.on[\"remind\"]: transition to unknown state \"reminded\"");
    expect_problem(f, 4, 15, "transition to unknown state \"lost\"");
    expect_problem(f, 5, 18, "states.new.colour: unknown field");
    expect_problem(f, 6, 21, "state \"orphan\" is unreachable from \"new\"");
    /* "done" is reached through the handler's literal: no false report */
    assert_null(strstr(report, "\"done\" is unreachable"));
    assert_int_equal(report[strlen(report) - 1], '\n');
}

static void test_definition_level_problems_name_their_field(void **state)
{
    fx *f = *state;
    check(f, "head.lua",
          "local cm = require 'caremesh'\n"
          "return cm.workflow {\n"
          "  name = 'bad name!', version = 0,\n"
          "  descripton = 'typo',\n"
          "  input = { who = 'patient', when = 'dat' },\n"
          "  start = 'nowhere',\n"
          "  states = {\n"
          "    a = { final = true, on = { x = 'a' } },\n"
          "  },\n"
          "}\n",
          6);
    expect_problem(f, 0, 3, "name: required");
    expect_problem(f, 1, 3, "version: required, a whole number from 1");
    expect_problem(f, 2, 4, "descripton: unknown field");
    expect_problem(f, 3, 5, "input.when: unknown type \"dat\"");
    expect_problem(f, 4, 6, "start: unknown state \"nowhere\"");
    expect_problem(f, 5, 8, "states.a: a final state takes no events");
}

static void test_literal_durations_times_and_task_fields_are_checked(void **state)
{
    fx *f = *state;
    check(f, "when.lua",
          "local cm = require 'caremesh'\n"
          "return cm.workflow { name = 'when', version = 1, start = 'a',\n"
          "  states = {\n"
          "    a = { enter = function(w)\n"
          "      w:after('2026-03-01', 'x')\n"
          "      w:at('2026-02-30', 'y')\n"
          "      w:task { title = 't', due = 'soon', owner = 'p' }\n"
          "      w:task { title = 't', due = '2026-03-01' }\n"
          "      w:notify { channel = 'sms', to = 'p', mesage = 'm' }\n"
          "      local s = ('x'):upper()\n"
          "    end, on = { x = 'b' } },\n"
          "    b = { final = true },\n"
          "  },\n"
          "}\n",
          4);
    expect_problem(f, 0, 5, "w:after(\"2026-03-01\"): a time, not a duration");
    expect_problem(f, 1, 6, "w:at(\"2026-02-30\"): bad time");
    expect_problem(f, 2, 7, "w:task{due = \"soon\"}: neither a duration");
    expect_problem(f, 3, 9, "w:notify{mesage = ...}: unknown field");
}

static void test_syntax_error_is_one_problem_with_its_line(void **state)
{
    fx *f = *state;
    const char *report = check(f, "syntax.lua",
                               "local cm = require 'caremesh'\n"
                               "return cm.workflow {\n"
                               "  name = 'x' version = 1, start = 'a',\n"
                               "  states = { a = { final = true } },\n"
                               "}\n",
                               1);
    expect_problem(f, 0, 3, "'}' expected");
    assert_string_equal(strchr(report, '\n'), "\n"); /* one line, no traceback */
}

static void test_load_time_errors_are_one_problem(void **state)
{
    fx *f = *state;
    const char *report = check(f, "records.lua",
                               "local cm = require 'caremesh'\n"
                               "local p = cm.patient.get('pat-1')\n"
                               "return cm.workflow { name = 'x', version = 1, start = 'a',\n"
                               "  states = { a = { final = true } } }\n",
                               1);
    expect_problem(f, 0, 2, "records are not available while checking");
    assert_null(strstr(report, "traceback"));
    check(f, "plain.lua", "return 42\n", 1);
    expect_problem(f, 0, 0, "the file must return cm.workflow { ... }");
}

static void test_check_never_runs_handlers(void **state)
{
    fx *f = *state;
    const char *report = check(f, "spin.lua",
                               "local cm = require 'caremesh'\n"
                               "return cm.workflow { name = 'spin', version = 1, start = 'a',\n"
                               "  states = {\n"
                               "    a = { enter = function(wf) while true do end end,\n"
                               "          exit = function(wf) error('ran exit') end,\n"
                               "          on = { go = { to = 'b', guard = function() error('ran "
                               "guard') end } } },\n"
                               "    b = { final = true },\n"
                               "  },\n"
                               "}\n",
                               0);
    assert_string_equal(report, "");
}

static void test_missing_file_is_an_error_naming_the_path(void **state)
{
    fx *f = *state;
    const char *path = cm_test_path(f->dir, "absent.lua");
    char *report = (char *)"untouched";
    cm_err err;
    int rc = cm_lua_workflow_check(path, &report, &err);
    assert_true(rc < 0);
    assert_null(report);
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(cm_lua_workflow_check(path, &report, NULL), rc); /* err is optional */
}

static void test_graph_as_dot(void **state)
{
    fx *f = *state;
    write_file(f, "referral.lua", CLEAN);
    const char *out = graph(f, false);
    assert_non_null(strstr(out, "digraph \"referral\" {\n    rankdir=LR;\n"));
    assert_non_null(strstr(out, "\"_start\" [shape=point, label=\"\"];"));
    assert_non_null(strstr(out, "\"_start\" -> \"requested\";"));
    assert_non_null(strstr(out, "\"requested\" -> \"accepted\" [label=\"accepted\"];"));
    assert_non_null(strstr(out, "\"requested\" -> \"declined\" [label=\"declined (guard)\"];"));
    assert_non_null(
        strstr(out, "\"requested\" -> \"escalated\" [label=\"no_response\", style=dashed];"));
    assert_non_null(
        strstr(out, "\"requested\" -> \"closed\" [label=\"referral.cancelled\", style=dashed];"));
    assert_non_null(strstr(out, "\"escalated\" -> \"accepted\" [label=\"accepted\"];"));
    assert_non_null(strstr(out, "\"accepted\" -> \"closed\" [label=\"consult_note\"];"));
    assert_non_null(strstr(out, "\"closed\" [shape=doublecircle];"));
    assert_non_null(strstr(out, "\"declined\" [shape=doublecircle];"));
    assert_non_null(strstr(out, "    \"escalated\";\n"));
    assert_string_equal(out + strlen(out) - 2, "}\n");
}

static void test_graph_as_mermaid(void **state)
{
    fx *f = *state;
    write_file(f, "referral.lua", CLEAN);
    const char *out = graph(f, true);
    assert_int_equal(strncmp(out, "stateDiagram-v2\n    [*] --> requested\n", 38), 0);
    assert_non_null(strstr(out, "\n    requested --> accepted : accepted\n"));
    assert_non_null(strstr(out, "\n    requested --> declined : declined (guard)\n"));
    assert_non_null(strstr(out, "\n    requested --> escalated : no_response (handler)\n"));
    assert_non_null(strstr(out, "\n    accepted --> closed : consult_note\n"));
    assert_non_null(strstr(out, "\n    closed --> [*]\n"));
    assert_non_null(strstr(out, "\n    declined --> [*]\n"));
}

static void test_graph_names_odd_states_and_enter_moves(void **state)
{
    fx *f = *state;
    write_file(f, "odd.lua",
               "local cm = require 'caremesh'\n"
               "return cm.workflow { name = 'odd', version = 1, start = 'a',\n"
               "  states = {\n"
               "    a = { enter = function(wf) if wf.ctx.skip then wf:go('b') end "
               "end,\n"
               "          on = { ['to.odd'] = 'the \"end\"' } },\n"
               "    b = { final = true },\n"
               "    ['the \"end\"'] = { final = true },\n"
               "  },\n"
               "}\n");
    const char *out = graph(f, false);
    assert_non_null(strstr(out, "\"a\" -> \"b\" [label=\"(enter)\", style=dashed];"));
    assert_non_null(strstr(out, "\"a\" -> \"the \\\"end\\\"\" [label=\"to.odd\"];"));
    out = graph(f, true);
    assert_non_null(strstr(out, "    state \"the 'end'\" as state_3\n"));
    assert_non_null(strstr(out, "    a --> state_3 : to.odd\n"));
    assert_non_null(strstr(out, "    a --> b : (enter)\n"));
}

static void test_graph_refuses_a_broken_file(void **state)
{
    fx *f = *state;
    const char *path = write_file(f, "broken.lua", BROKEN);
    char *out = (char *)"untouched";
    char want[1024];
    cm_err err;
    assert_int_equal(cm_lua_workflow_graph(path, false, &out, &err), CM_EINVAL);
    assert_null(out);
    snprintf(want, sizeof(want), "%s:5: states: no final state", path);
    assert_int_equal(strncmp(err.msg, want, strlen(want)), 0);
    assert_int_equal(cm_lua_workflow_graph(path, true, &out, &err), CM_EINVAL);
    assert_null(out);
}

int main(void)
{
#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)
    const struct CMUnitTest tests[] = {
        TEST(test_clean_definition_has_no_problems),
        TEST(test_every_problem_is_reported_with_its_line),
        TEST(test_definition_level_problems_name_their_field),
        TEST(test_literal_durations_times_and_task_fields_are_checked),
        TEST(test_syntax_error_is_one_problem_with_its_line),
        TEST(test_load_time_errors_are_one_problem),
        TEST(test_check_never_runs_handlers),
        TEST(test_missing_file_is_an_error_naming_the_path),
        TEST(test_graph_as_dot),
        TEST(test_graph_as_mermaid),
        TEST(test_graph_names_odd_states_and_enter_moves),
        TEST(test_graph_refuses_a_broken_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
