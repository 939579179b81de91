/* Unit tests of the workloads' output (output.c) on a real loop and real
 * pipes: lines split and kept per replica, cleaned to UTF-8, cut at their
 * cap; rings capped by lines; reads by enclave, replica, cursor and tail,
 * merged in the order the runner read them; the log file kept as before. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/macro.h"
#include "runner/output.h"

static h2o_loop_t *loop;
static runner_output *out;
static char dir[] = "/tmp/test-runner-output.XXXXXX";

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    loop = h2o_evloop_create();
    cr_assert_eq(runner_output_new(loop, dir, &out), 0);
}

static void teardown(void)
{
    runner_output_free(out);
    for (int i = 0; i < 10; i++) /* the closed sockets are freed by the loop */
        h2o_evloop_run(loop, 0);
    h2o_evloop_destroy(loop);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(output, .init = setup, .fini = teardown);

/* Launches replica NAME of ENCLAVE as far as its output goes: the test
 * keeps the write ends the sandbox would get (in RET_FDS). */
static void launch(const char *name, const char *enclave, int ret_fds[2])
{
    char owner[128];
    snprintf(owner, sizeof(owner), "enclave/%s/uid/digest", enclave);
    int o, e;
    cr_assert_eq(runner_output_open(out, name, owner, &o, &e), 0);
    ret_fds[0] = dup(o);
    ret_fds[1] = dup(e);
    runner_output_started(out, name, true);
}

static void put(int fd, const char *s)
{
    cr_assert_eq(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

/* The lines of ENCLAVE (REPLICA) after AFTER, once the loop read N of them. */
static json_t *lines_when(size_t n, const char *enclave, const char *replica, uint64_t after)
{
    for (int i = 0; i < 200; i++) {
        json_t *got = runner_output_read(out, enclave, replica, after, RUNNER_LOG_PAGE_MAX, false);
        if (json_array_size(json_object_get(got, "lines")) >= n)
            return got;
        json_decref(got);
        h2o_evloop_run(loop, 10);
    }
    cr_assert_fail("the loop never read %zu lines", n);
    return NULL;
}

static const char *text_at(const json_t *got, size_t i)
{
    return json_string_value(json_object_get(json_array_get(json_object_get(got, "lines"), i), "text"));
}

Test(output, lines_are_kept_per_stream_cleaned_and_cut)
{
    int fds[2];
    launch("web-1", "web", fds);
    put(fds[0], "one\ntwo\r\nthr");
    put(fds[0], "ee\n\xc3\xa9t\xc3\xa9 \xff\x01\tok\n");
    char long_line[RUNNER_LOG_LINE_MAX + 11];
    memset(long_line, 'x', sizeof(long_line) - 2);
    long_line[sizeof(long_line) - 2] = '\n';
    long_line[sizeof(long_line) - 1] = 0;
    put(fds[0], long_line);
    put(fds[1], "an error\n");
    json_t *got = lines_when(7, "web", NULL, 0);
    json_t *lines = json_object_get(got, "lines");
    cr_assert_eq(json_array_size(lines), 7);
    size_t i;
    json_t *l;
    const char *stdout_texts[6];
    size_t n = 0;
    json_array_foreach(lines, i, l)
    {
        cr_expect_str_eq(json_string_value(json_object_get(l, "replica")), "web-1");
        if (strcmp(json_string_value(json_object_get(l, "stream")), "stderr") == 0)
            cr_expect_str_eq(json_string_value(json_object_get(l, "text")), "an error");
        else
            stdout_texts[n++] = json_string_value(json_object_get(l, "text"));
    }
    cr_assert_eq(n, 6);
    cr_expect_str_eq(stdout_texts[0], "one");
    cr_expect_str_eq(stdout_texts[1], "two", "a CR before the LF goes");
    cr_expect_str_eq(stdout_texts[2], "three", "a line written in two pieces is one line");
    cr_expect_str_eq(stdout_texts[3], "\xc3\xa9t\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd\tok", "bad bytes and controls become U+FFFD");
    cr_expect_eq(strlen(stdout_texts[4]), RUNNER_LOG_LINE_MAX, "a long line is cut at the cap");
    cr_expect_str_eq(stdout_texts[5], "xxxxxxxxx", "and goes on in the next");
    /* a cursor answers what came after it */
    uint64_t next = (uint64_t)json_integer_value(json_object_get(got, "next"));
    put(fds[0], "later\n");
    json_t *more = lines_when(1, "web", NULL, next);
    cr_expect_str_eq(text_at(more, 0), "later");
    cr_expect_eq(json_array_size(json_object_get(more, "lines")), 1);
    json_decref(more);
    json_decref(got);
    /* the log file has the output as it was written */
    char path[200], buf[64] = "";
    snprintf(path, sizeof(path), "%s/web-1.log", dir);
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    cr_expect_eq(read(fd, buf, sizeof(buf) - 1), sizeof(buf) - 1);
    cr_expect(strstr(buf, "one\ntwo\r\nthree\n\xc3\xa9t\xc3\xa9 \xff\x01\tok\n"), "the file has the bytes as written");
    close(fd);
    close(fds[0]);
    close(fds[1]);
}

Test(output, reads_are_per_enclave_and_replica_merged_in_order_and_tailed)
{
    int a[2], b[2], c[2];
    launch("web-1", "web", a);
    launch("web-2", "web", b);
    launch("db-1", "db", c);
    put(a[0], "a1\n");
    json_decref(lines_when(1, "web", NULL, 0));
    put(b[0], "b1\n");
    json_decref(lines_when(2, "web", NULL, 0));
    put(a[0], "a2\n");
    put(c[0], "c1\n");
    json_t *got = lines_when(3, "web", NULL, 0);
    cr_expect_str_eq(text_at(got, 0), "a1");
    cr_expect_str_eq(text_at(got, 1), "b1");
    cr_expect_str_eq(text_at(got, 2), "a2");
    cr_expect_eq(json_array_size(json_object_get(got, "lines")), 3, "db's lines are not web's");
    json_decref(got);
    got = lines_when(1, "web", "web-2", 0);
    cr_expect_eq(json_array_size(json_object_get(got, "lines")), 1);
    cr_expect_str_eq(text_at(got, 0), "b1");
    json_decref(got);
    got = runner_output_read(out, "web", NULL, 0, 2, true);
    cr_expect_eq(json_array_size(json_object_get(got, "lines")), 2);
    cr_expect_str_eq(text_at(got, 0), "b1", "the last two");
    cr_expect_str_eq(text_at(got, 1), "a2");
    json_decref(got);
    got = runner_output_read(out, "web", NULL, 0, 0, true);
    cr_expect_eq(json_array_size(json_object_get(got, "lines")), 0, "tail 0: nothing, but the cursor of now");
    json_t *all = lines_when(3, "web", NULL, 0);
    cr_expect_eq(json_integer_value(json_object_get(got, "next")), json_integer_value(json_object_get(all, "next")));
    json_decref(all);
    json_decref(got);
    /* a deleted replica's lines go */
    runner_output_forget(out, "web-1");
    got = runner_output_read(out, "web", NULL, 0, 100, false);
    cr_expect_eq(json_array_size(json_object_get(got, "lines")), 1);
    json_decref(got);
    int *fds[] = {a, b, c};
    for (size_t i = 0; i < ELEMENTSOF(fds); i++) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
}

Test(output, a_ring_keeps_the_last_lines_and_outlives_its_workload)
{
    int fds[2];
    launch("web-1", "web", fds);
    FILE *f = fdopen(fds[0], "w");
    for (int i = 0; i < RUNNER_LOG_LINES_MAX + 50; i++)
        fprintf(f, "line %d\n", i);
    fclose(f);
    close(fds[1]);
    json_t *got = NULL;
    for (int i = 0; i < 500; i++) { /* until the last line is read */
        json_decref(got);
        got = runner_output_read(out, "web", NULL, 0, RUNNER_LOG_PAGE_MAX, true);
        const json_t *lines = json_object_get(got, "lines");
        const char *last = json_string_value(json_object_get(json_array_get(lines, json_array_size(lines) - 1), "text"));
        char want[32];
        snprintf(want, sizeof(want), "line %d", RUNNER_LOG_LINES_MAX + 49);
        if (last && strcmp(last, want) == 0)
            break;
        h2o_evloop_run(loop, 10);
    }
    json_decref(got);
    got = runner_output_read(out, "web", NULL, 0, RUNNER_LOG_PAGE_MAX, false);
    cr_expect_eq(json_array_size(json_object_get(got, "lines")), RUNNER_LOG_LINES_MAX);
    cr_expect_str_eq(text_at(got, 0), "line 50", "the oldest are dropped");
    json_decref(got);
    /* the same name launched again continues the ring */
    launch("web-1", "web", fds);
    put(fds[0], "again\n");
    got = lines_when(RUNNER_LOG_LINES_MAX, "web", NULL, 0);
    json_decref(got);
    for (int i = 0; i < 200; i++) {
        got = runner_output_read(out, "web", NULL, 0, 1, true);
        if (strcmp(text_at(got, 0), "again") == 0)
            break;
        json_decref(got);
        got = NULL;
        h2o_evloop_run(loop, 10);
    }
    cr_assert_not_null(got, "the relaunched replica's line is read");
    json_decref(got);
    close(fds[0]);
    close(fds[1]);
}
