/* A role's view of the configuration holds only its own paths; a role
 * confined without a user of its own (an ordinary user's start) reads and
 * writes its rooms alone (Landlock), is not dumpable, has no_new_privs and
 * cannot ptrace or mount (seccomp). Each test runs in a process of its own. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/landlock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "daemon/privsep.h"

static daemon_config cfg;

static void fill(void)
{
    char tmpl[] = "/tmp/cloister-privsep-XXXXXX";
    cr_assert_not_null(mkdtemp(tmpl));
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s", tmpl);
    snprintf(cfg.run_dir, sizeof(cfg.run_dir), "%s/run", tmpl);
    static const char *const dirs[] = {"kms", "proxy", "audit", "run/proxy"};
    char path[4400];
    for (size_t i = 0; i < sizeof(dirs) / sizeof(*dirs); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpl, dirs[i]);
        cr_assert_eq(mkdir_p(path, 0700), 0);
    }
    snprintf(cfg.kms_root_file, sizeof(cfg.kms_root_file), "%s/kms/root.json", tmpl);
    snprintf(cfg.proxy_key, sizeof(cfg.proxy_key), "%s/proxy/proxy.key", tmpl);
    snprintf(cfg.ca_key, sizeof(cfg.ca_key), "%s/ca.key", tmpl);
    snprintf(cfg.ca_cert, sizeof(cfg.ca_cert), "%s/ca.pem", tmpl);
    snprintf(cfg.audit_key, sizeof(cfg.audit_key), "%s/audit/audit.key", tmpl);
    const char *const files[] = {cfg.kms_root_file, cfg.proxy_key, cfg.ca_key, cfg.ca_cert, cfg.audit_key};
    for (size_t i = 0; i < sizeof(files) / sizeof(*files); i++)
        cr_assert_eq(write_file_atomic(files[i], "x", 1, 0600), 0);
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(path);
}

/* Removes the test's data directory, with the stand-in keys in it. */
static void empty(void)
{
    nftw(cfg.data_dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(privsep, .init = fill, .fini = empty);

Test(privsep, a_view_holds_only_the_roles_paths)
{
    daemon_config proxy = cfg, kms = cfg;
    privsep_role_view("proxy", &proxy);
    cr_assert_str_eq(proxy.proxy_key, cfg.proxy_key);
    cr_assert_str_eq(proxy.ca_cert, cfg.ca_cert, "certificates are public");
    cr_assert_str_empty(proxy.kms_root_file);
    cr_assert_str_empty(proxy.audit_key);
    cr_assert_str_empty(proxy.ca_key);
    privsep_role_view("kms", &kms);
    cr_assert_str_eq(kms.kms_root_file, cfg.kms_root_file);
    cr_assert_str_empty(kms.proxy_key);
    cr_assert_str_empty(kms.ca_key, "the CA key is the supervisor's alone");
}

static int try_open(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    close(fd);
    return 0;
}

/* The confined checks, in a child: returns 0, or the number of the first
 * check that failed. A child, and _exit(): LeakSanitizer's exit-time check
 * needs ptrace and a dumpable process, which a confined role has not (the
 * roles _exit too). */
static int confined_checks(void)
{
    if (privsep_enter("proxy", NULL, &cfg, &cfg) < 0)
        return 1;
    char fresh[4400];
    snprintf(fresh, sizeof(fresh), "%s/proxy/fresh", cfg.data_dir);
    int step = 2;
    const struct {
        int got, want;
    } checks[] = {
        {try_open(cfg.proxy_key, O_RDONLY), 0},
        {try_open(fresh, O_WRONLY | O_CREAT), 0},     /* its room is writable */
        {try_open(cfg.ca_cert, O_RDONLY), 0},         /* the CA certificate is readable */
        {try_open(cfg.kms_root_file, O_RDONLY), -EACCES}, /* root's DAC would allow these: Landlock refuses */
        {try_open(cfg.audit_key, O_RDONLY), -EACCES},
        {try_open(cfg.ca_key, O_RDONLY), -EACCES},
        {try_open(cfg.ca_cert, O_WRONLY), -EACCES},   /* certificates are read-only */
        {prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), 1},
        {prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0},
        {ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0 ? -errno : 0, -EPERM}, /* seccomp */
        {mount("none", cfg.data_dir, "tmpfs", 0, NULL) < 0 ? -errno : 0, -EPERM},
    };
    for (size_t i = 0; i < sizeof(checks) / sizeof(*checks); i++, step++)
        if (checks[i].got != checks[i].want)
            return step;
    return 0;
}

Test(privsep, a_confined_role_reaches_its_rooms_alone)
{
    if (syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) < 1)
        cr_skip_test("this kernel offers no Landlock");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(confined_checks());
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "confined check %d failed (1: entering, then in the order listed)",
                 WEXITSTATUS(status));
}
