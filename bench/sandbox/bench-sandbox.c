/* Sandbox launch to ready: the time from sandbox_launch() to the workload's
 * exec (sandbox_launch returns once the exec happened), over N launches of
 * /bin/true with a small bundle; the sandboxes are reaped after timing. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/timeutil.h"
#include "sandbox/launch.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    if (n < 1 || n > 10000)
        return 2;
    char bundle[] = "/tmp/cloister-bench-bundle-XXXXXX";
    if (!mkdtemp(bundle) || chmod(bundle, 0755) < 0)
        return 1;
    char *cmd[] = {"/bin/true", NULL}, *envp[] = {NULL};
    sandbox_spec spec = {.bundle = bundle, .argv = cmd, .envp = envp, .stdout_fd = -1, .stderr_fd = -1};
    uint64_t *t = calloc((size_t)n, sizeof(*t));
    for (int i = 0; i < n; i++) {
        sandbox_error err;
        pid_t pid;
        uint64_t start = time_mono_ns();
        if (sandbox_launch(&spec, &pid, &err) < 0) {
            fprintf(stderr, "%s\n", err.text);
            return 1;
        }
        t[i] = time_mono_ns() - start;
        waitpid(pid, NULL, 0);
    }
    qsort(t, (size_t)n, sizeof(*t), cmp_u64);
    printf("cloister median %.2f ms  p99 %.2f ms  (%d launches; target <= 50 ms)\n", (double)t[n / 2] / 1e6,
           (double)t[n * 99 / 100] / 1e6, n);
    rmdir(bundle);
    free(t);
    return 0;
}
