/* Unit tests of the sandboxes' limits (sandbox-limits.c) that need no
 * privilege: the resident memory of a process tree, read from /proc, counts
 * a child's memory too and fails for a process that is gone; a runner
 * configured with a directory that is no cgroup falls back to rlimits and
 * makes no cgroup. */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/macro.h"
#include "runner/sandbox-limits.h"

#define CHILD_BYTES (32u << 20)

Test(tree_rss, counts_a_childs_resident_memory)
{
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    uint64_t before = 0;
    cr_assert_eq(process_tree_rss(getpid(), &before), 0);
    cr_expect_gt(before, 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        char *p = mmap(NULL, CHILD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            _exit(1);
        memset(p, 1, CHILD_BYTES); /* resident */
        ssize_t _unused_ w = write(ready[1], "x", 1);
        pause();
        _exit(0);
    }
    char c;
    cr_assert_eq(read(ready[0], &c, 1), 1);
    uint64_t with_child = 0, child_only = 0;
    cr_assert_eq(process_tree_rss(getpid(), &with_child), 0);
    cr_assert_eq(process_tree_rss(child, &child_only), 0);
    cr_expect_geq(child_only, CHILD_BYTES);
    cr_expect_geq(with_child, CHILD_BYTES);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    cr_expect_eq(process_tree_rss(child, &child_only), -ESRCH);
    close(ready[0]);
    close(ready[1]);
}

Test(mechanism, a_directory_that_is_no_cgroup_falls_back_to_rlimits)
{
    char dir[] = "/tmp/test-runner-limits.XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    runner_limits *l = NULL;
    cr_assert_eq(runner_limits_new(dir, &l), 0);
    cr_expect_eq(runner_limits_mechanism(l), LIMITS_RLIMIT);
    cr_expect_str_eq(runner_limits_mechanism_name(runner_limits_mechanism(l)), "rlimit");
    char path[64] = "unchanged";
    cr_expect_eq(runner_limits_prepare(l, "scorer-1", 64u << 20, 16, path, sizeof(path)), 0);
    cr_expect_str_eq(path, "", "no cgroup directory under rlimits");
    cr_expect_eq(runner_limits_oom_kills(l, "scorer-1"), 0);
    uint64_t used = 0;
    cr_expect_eq(runner_limits_usage(l, "scorer-1", getpid(), &used), 0, "the process tree's RSS");
    cr_expect_gt(used, 0);
    runner_limits_free(l);
    cr_expect_eq(rmdir(dir), 0, "nothing was made in it");
}
