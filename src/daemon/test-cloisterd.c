/* cloisterd's command line, through its public entry: the built cloisterd
 * (beside this test) run with each argument it must refuse exits 2 with a
 * message naming the flag and what it takes, before it touches a data dir;
 * --help prints the usage and exits 0. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "basic/macro.h"

static char dir[] = "/tmp/cloister-test-cloisterd-XXXXXX";
static char data_dir[200];

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    snprintf(data_dir, sizeof(data_dir), "%s/data", dir);
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(cloisterd, .init = setup, .fini = teardown);

/* Runs cloisterd with ARGS (NULL-terminated) after --data-dir DATA_DIR, its
 * output into *RET_OUT (malloc'd); returns its exit status. */
static int run(const char *const *args, char **ret_out)
{
    char self[PATH_MAX], exe[PATH_MAX + 32], out_path[300];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    snprintf(exe, sizeof(exe), "%s/src/daemon/cloisterd", dirname(self));
    cr_assert_eq(access(exe, X_OK), 0, "%s is built", exe);
    snprintf(out_path, sizeof(out_path), "%s/out", dir);
    const char *argv[32] = {exe, "--data-dir", data_dir};
    size_t k = 3;
    for (size_t i = 0; args[i] && k < ELEMENTSOF(argv) - 1; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        execv(exe, (char *const *)argv);
        _exit(126);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    size_t len;
    cr_assert_eq(read_file(out_path, 1 << 20, ret_out, &len), 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void expect_refused(const char *const *args, const char *message)
{
    char *out = NULL;
    cr_expect_eq(run(args, &out), 2, "%s %s", args[0], args[1] ? args[1] : "");
    cr_expect(strstr(out, message), "%s: expected \"%s\" in: %s", args[0], message, out);
    free(out);
    struct stat st;
    cr_expect_neq(stat(data_dir, &st), 0, "%s: no data dir made", args[0]);
}

Test(cloisterd, refusals_name_the_flag)
{
    expect_refused((const char *[]){NULL}, "start with --config FILE (see docs/deployment.md) or with --dev");
    expect_refused((const char *[]){"--dev", "--config", "/nonexistent.yaml", NULL}, "--dev and --config exclude");
    expect_refused((const char *[]){"--dev", "--init", NULL}, "--init takes --config FILE");
    expect_refused((const char *[]){"--dev", "--passphrase-fd", "0", NULL}, "--passphrase-fd goes with --init");
    expect_refused((const char *[]){"--dev", "--passphrase-fd", "x", NULL}, "--passphrase-fd takes a file descriptor");
    expect_refused((const char *[]){"--dev", "--api-listen", "7443", NULL}, "--api-listen '7443' is not HOST:PORT");
    expect_refused((const char *[]){"--dev", "--api-listen", "127.0.0.1:0", NULL}, "is not HOST:PORT");
    expect_refused((const char *[]){"--dev", "--api-listen", "127.0.0.1:65536", NULL}, "is not HOST:PORT");
    expect_refused((const char *[]){"--dev", "--api-listen", "127.0.0.1:80x", NULL}, "is not HOST:PORT");
    expect_refused((const char *[]){"--dev", "--proxy-listen", ":8443", NULL}, "--proxy-listen ':8443' is not HOST:PORT");
    expect_refused((const char *[]){"--dev", "--proxy-http-listen", "host:", NULL}, "--proxy-http-listen");
    expect_refused((const char *[]){"--dev", "--api-threads", "0", NULL}, "--api-threads takes a number from 1 to 64");
    expect_refused((const char *[]){"--dev", "--api-threads", "65", NULL}, "--api-threads takes");
    expect_refused((const char *[]){"--dev", "--proxy-threads", "2x", NULL}, "--proxy-threads takes");
    expect_refused((const char *[]){"--dev", "--log-level", "loud", NULL}, "--log-level takes debug, info, warn or error");
    expect_refused((const char *[]){"--dev", "--seal", "tpm", NULL}, "--seal takes dev, passphrase or pkcs11");
    expect_refused((const char *[]){"--dev", "--seal", "pkcs11", NULL}, "--seal pkcs11 needs --pkcs11-module");
    expect_refused((const char *[]){"--dev", "--pkcs11-slot", "-1", NULL}, "--pkcs11-slot takes a slot id");
    expect_refused((const char *[]){"--dev", "--pkcs11-slot", "one", NULL}, "--pkcs11-slot takes a slot id");
    expect_refused((const char *[]){"--dev", "extra", NULL}, "unexpected argument 'extra'");
    expect_refused((const char *[]){"--dev", "--no-such-flag", NULL}, "usage: cloisterd");
}

Test(cloisterd, values_longer_than_their_room)
{
    char domain[300], dir_arg[5000];
    memset(domain, 'a', sizeof(domain) - 1);
    domain[sizeof(domain) - 1] = 0;
    expect_refused((const char *[]){"--dev", "--domain", domain, NULL}, "--domain is too long");
    memset(dir_arg, 'd', sizeof(dir_arg) - 1);
    dir_arg[0] = '/';
    dir_arg[sizeof(dir_arg) - 1] = 0;
    expect_refused((const char *[]){"--dev", "--data-dir", dir_arg, NULL}, "--data-dir is too long");
}

Test(cloisterd, help)
{
    char *out = NULL;
    cr_assert_eq(run((const char *[]){"--help", NULL}, &out), 0);
    cr_assert(strstr(out, "usage: cloisterd --config FILE [--check | --init]"), "%s", out);
    cr_assert(strstr(out, "cloisterd --dev [--check]"), "%s", out);
    cr_assert(strstr(out, "--seal MODE"));
    free(out);
}
