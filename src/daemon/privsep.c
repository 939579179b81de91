#include "daemon/privsep.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/background.h"
#include "basic/log.h"
#include "basic/macro.h"

/* What each role owns under the data dir. The runner's directory is
 * traversable by all (0711): the proxy reaches an enclave's attested TLS
 * socket in runner/<replica>/atls.sock, which the agent's attestation, not
 * the file's mode, authenticates. */
typedef struct role_room {
    const char *role;
    const char *dirs[2]; /* its subtrees of the data dir; an unused slot is NULL */
    mode_t mode;
} role_room;

static const role_room rooms[] = {
    {"api", {"api", "auth"}, 0700},  {"proxy", {"proxy"}, 0700},    {"kms", {"kms"}, 0700},
    {"audit", {"audit"}, 0700},      {"runner", {"runner"}, 0711},
};

/* The capabilities the runner keeps (docs/security.md): CAP_SETUID and
 * CAP_SETGID to map a sandbox's root to the host's nobody (uid_map,
 * gid_map of a user namespace it creates), CAP_CHOWN to hand a sandbox's
 * channel socket to that nobody. Namespaces themselves (user, mount, pid,
 * net, ipc, uts, cgroup) need none: the runner creates the user namespace
 * that owns the others. */
static const int runner_caps[] = {CAP_SETUID, CAP_SETGID, CAP_CHOWN};

static const role_room *room_of(const char *role)
{
    for (size_t i = 0; i < ELEMENTSOF(rooms); i++)
        if (strcmp(rooms[i].role, role) == 0)
            return &rooms[i];
    return NULL;
}

/* Runs useradd for system user USER (no home, no login shell); returns 0
 * or a negative errno. */
static int add_system_user(const char *user)
{
    pid_t pid = fork();
    if (pid < 0)
        return negative_errno();
    if (pid == 0) {
        char *const argv[] = {"useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                              "--shell", "/usr/sbin/nologin", (char *)user, NULL};
        execv("/usr/sbin/useradd", argv);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return negative_errno();
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* The ids of system user cloister-ROLE, created when missing. */
static int role_user(const char *role, privsep_ids *ret)
{
    char user[64];
    snprintf(user, sizeof(user), "cloister-%s", role);
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        int r = add_system_user(user);
        if (r < 0 || !(pw = getpwnam(user))) {
            log_fields(LOG_LEVEL_ERROR, "cannot create a role's system user; run scripts/setup.sh or useradd it",
                       "user", user, NULL);
            return r < 0 ? r : -ENOENT;
        }
        log_fields(LOG_LEVEL_INFO, "created a role's system user", "user", user, NULL);
    }
    if (pw->pw_uid == 0) {
        log_fields(LOG_LEVEL_ERROR, "a role's system user is root; give it its own uid", "user", user, NULL);
        return -EPERM;
    }
    *ret = (privsep_ids){pw->pw_uid, pw->pw_gid};
    return 0;
}

/* nftw() passes its callback no context: the owner chown_tree() gives, set
 * by the supervisor's single thread before each walk. */
static privsep_ids chown_to;

/* Gives one entry to chown_to. Modes are left alone: a role refuses a key
 * others may read (and says so) rather than have it quietly repaired. */
static int chown_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return lchown(path, chown_to.uid, chown_to.gid) < 0 ? -1 : 0;
}

/* Makes every entry of DIR (not following symlinks) owned by IDS. */
static int chown_tree(const char *dir, privsep_ids ids)
{
    chown_to = ids;
    return nftw(dir, chown_one, 16, FTW_PHYS) == 0 ? 0 : negative_errno();
}

/* Each ancestor of DIR must let other users through, or no role reaches
 * its subtree. */
static int check_reachable(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s", dir);
    for (char *slash = strrchr(path, '/'); slash; slash = strrchr(path, '/')) {
        *slash = 0;
        struct stat st;
        const char *p = path[0] ? path : "/";
        if (stat(p, &st) == 0 && !(st.st_mode & S_IXOTH)) {
            log_fields(LOG_LEVEL_ERROR,
                       "the roles' users cannot reach the data dir: a parent directory is closed to others "
                       "(chmod o+x it, or use a data dir under /var/lib)",
                       "directory", p, "data_dir", dir, NULL);
            return -EACCES;
        }
    }
    return 0;
}

static int chmod_if_exists(const char *path, mode_t mode)
{
    return chmod(path, mode) < 0 && errno != ENOENT ? negative_errno() : 0;
}

int privsep_prepare(const daemon_config *cfg, const char *const *names, size_t n_roles, privsep_ids *ret_ids)
{
    int r = check_reachable(cfg->data_dir);
    for (size_t i = 0; r == 0 && i < n_roles; i++)
        r = role_user(names[i], &ret_ids[i]);
    if (r < 0)
        return r;
    char path[4400];
    /* the top and tls/ are traversable; certificates are public; the CA
     * keys and the admin token stay root's (0600) */
    snprintf(path, sizeof(path), "%s/tls", cfg->data_dir);
    const char *const certs[] = {cfg->ca_cert, cfg->platform_ca_cert, cfg->api_cert, cfg->proxy_cert,
                                 cfg->proxy_ca_cert, cfg->runner_cert};
    r = chmod(cfg->data_dir, 0711) < 0 || chmod(path, 0755) < 0 || chmod(cfg->run_dir, 0755) < 0 ? negative_errno()
                                                                                                   : 0;
    for (size_t i = 0; r == 0 && i < ELEMENTSOF(certs); i++)
        r = chmod_if_exists(certs[i], 0644);
    for (size_t i = 0; r == 0 && i < n_roles; i++) {
        const role_room *room = room_of(names[i]);
        for (size_t d = 0; r == 0 && room && d < ELEMENTSOF(room->dirs) && room->dirs[d]; d++) {
            snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, room->dirs[d]);
            r = chown_tree(path, ret_ids[i]);
            if (r == 0 && chmod(path, room->mode) < 0)
                r = negative_errno();
        }
        snprintf(path, sizeof(path), "%s/%s", cfg->run_dir, names[i]);
        if (r == 0 && (lchown(path, ret_ids[i].uid, ret_ids[i].gid) < 0 || chmod(path, 0711) < 0))
            r = negative_errno();
    }
    /* the supervisor's own, root's even in a data dir an ordinary user started */
    const char *const roots[] = {cfg->ca_key, cfg->platform_ca_key, cfg->admin_token};
    for (size_t i = 0; r == 0 && i < ELEMENTSOF(roots); i++)
        if (lchown(roots[i], 0, 0) < 0 && errno != ENOENT)
            r = negative_errno();
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot give the roles their rooms of the data dir", "path", path, "error",
                   strerror(-r), NULL);
    return r;
}

/* Empties every path of VIEW but those role NAME uses. */
void privsep_role_view(const char *name, daemon_config *view)
{
    const daemon_config all = *view;
#define CLEAR(f) view->f[0] = 0
#define KEEP(f) memcpy(view->f, all.f, sizeof(view->f))
    /* the supervisor's alone */
    CLEAR(ca_key);
    CLEAR(platform_ca_key);
    CLEAR(admin_token);
    /* one role's each */
    CLEAR(api_key);
    CLEAR(store_url);
    CLEAR(proxy_key);
    CLEAR(proxy_ca_key);
    CLEAR(proxy_token);
    CLEAR(runner_token);
    CLEAR(runner_key);
    CLEAR(audit_db);
    CLEAR(audit_key);
    CLEAR(audit_pub);
    CLEAR(kms_root_file);
    CLEAR(kms_dev_key_file);
    CLEAR(kms_keyring_file);
    CLEAR(kms_unseal_socket);
    CLEAR(pkcs11_module);
    /* the supervisor's: copied into place, or read by the kms child before it drops privileges */
    CLEAR(api_tls_key);
    CLEAR(proxy_tls_key);
    CLEAR(seal_secret_file);
    if (strcmp(name, "api") == 0) {
        KEEP(api_key);
        KEEP(store_url);
    } else if (strcmp(name, "proxy") == 0) {
        KEEP(proxy_key);
        KEEP(proxy_ca_key);
        KEEP(proxy_token);
    } else if (strcmp(name, "kms") == 0) {
        KEEP(kms_root_file);
        KEEP(kms_dev_key_file);
        KEEP(kms_keyring_file);
        KEEP(kms_unseal_socket);
        KEEP(pkcs11_module);
    } else if (strcmp(name, "audit") == 0) {
        KEEP(audit_db);
        KEEP(audit_key);
        KEEP(audit_pub);
    } else if (strcmp(name, "runner") == 0) {
        KEEP(runner_token);
        KEEP(runner_key);
    }
#undef CLEAR
#undef KEEP
}

/* Drops every capability from the bounding set but KEEP (N_KEEP), while
 * still root. */
static int drop_bounding(const int *keep, size_t n_keep)
{
    for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++) {
        bool kept = false;
        for (size_t i = 0; i < n_keep; i++)
            kept = kept || keep[i] == cap;
        if (!kept && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return negative_errno();
    }
    return 0;
}

/* Sets the permitted and effective capabilities to KEEP (N_KEEP), the
 * inheritable and ambient ones to none. */
static int set_caps(const int *keep, size_t n_keep)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct data[2] = {0};
    for (size_t i = 0; i < n_keep; i++) {
        data[keep[i] / 32].permitted |= 1U << (keep[i] % 32);
        data[keep[i] / 32].effective |= 1U << (keep[i] % 32);
    }
    if (syscall(SYS_capset, &hdr, data) < 0)
        return negative_errno();
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return negative_errno();
    return 0;
}

/* Becomes IDS with only KEEP (N_KEEP) of root's capabilities. */
static int become(const privsep_ids *ids, const int *keep, size_t n_keep)
{
    int r = drop_bounding(keep, n_keep);
    if (r < 0)
        return r;
    if (n_keep && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        return negative_errno();
    if (setgroups(0, NULL) < 0 || setresgid(ids->gid, ids->gid, ids->gid) < 0 ||
        setresuid(ids->uid, ids->uid, ids->uid) < 0)
        return negative_errno();
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
        return negative_errno();
    return set_caps(keep, n_keep);
}

/* The seccomp allow-lists: one base every role shares, and each role's
 * additions, in one table (docs/security.md). Found by tracing each role
 * through the integration tests (strace -f, the ASan build), widened to the
 * neighbours of each call a library may pick instead (openat/open,
 * epoll_wait/epoll_pwait, ...), so that a libc or OpenSSL update does not
 * turn into EPERM. Nothing here reads another process, changes the kernel,
 * mounts, or changes identity. */
static const char *const calls_base[] = {
    /* files: each role reads and writes its own room */
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "open",
    "openat", "openat2", "close", "close_range", "creat", "fstat", "newfstatat", "stat", "lstat", "statx", "lseek",
    "access", "faccessat", "faccessat2", "fcntl", "flock", "fsync", "fdatasync", "truncate", "ftruncate", "fallocate",
    "getdents64", "getcwd", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
    "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "umask", "statfs", "fstatfs", "fadvise64", "dup", "dup2",
    "dup3", "ioctl", "pipe", "pipe2",
    /* memory */
    "mmap", "munmap", "mprotect", "mremap", "madvise", "msync", "mincore", "brk",
    /* signals (to its own threads only: tgkill, tkill), time, waiting */
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "rt_sigpending", "rt_sigsuspend",
    "sigaltstack", "tgkill", "tkill", "restart_syscall", "nanosleep", "clock_nanosleep", "clock_gettime",
    "clock_getres", "gettimeofday", "time", "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "timerfd_create",
    "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4", "futex", "futex_waitv",
    /* sockets: each role serves one; socket() itself is ruled by the domain below */
    "socketpair", "accept", "accept4", "bind", "listen", "getsockname", "getpeername", "setsockopt", "getsockopt",
    "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown",
    /* the process and its threads */
    "exit", "exit_group", "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups",
    "getresuid", "getresgid", "getpgrp", "getpgid", "getsid", "uname", "sysinfo", "times", "getrusage",
    "getrlimit", "prlimit64", "prctl", "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list",
    "sched_yield", "sched_getaffinity", "sched_getparam", "sched_getscheduler", "getpriority", "getrandom", "rseq",
    "membarrier", "getcpu", "capget",
};
/* A client of other roles and of the network: connect, and the resolver's
 * batched DNS queries. */
static const char *const calls_client[] = {"connect", "sendmmsg", "recvmmsg"};
/* The kms: connects to the audit role only (resolving its name when it runs
 * elsewhere); locks its key memory. */
static const char *const calls_kms[] = {"connect", "sendmmsg", "recvmmsg", "mlock", "munlock"};
/* The audit role: copies the proxy's access-log bytes from the spool file
 * whose descriptor the proxy hands it (audit/segment.h's spool channel). */
static const char *const calls_audit[] = {"copy_file_range"};
/* The runner's own, for itself and its sandboxes (a sandbox inherits this
 * filter and adds its own, src/sandbox/launch.c): the network, children and
 * their signals, namespaces, mounts, the sandbox's root and its filter,
 * exec, and what launch.c lets workloads do. */
static const char *const calls_runner[] = {
    "connect", "sendmmsg", "recvmmsg", "kill", "wait4", "waitid", "rt_sigqueueinfo", "memfd_create", "sendfile",
    "copy_file_range", "link", "linkat", "utimensat", "chdir", "fchdir", "mlock", "munlock", "clone3", "fork",
    "vfork", "execve", "execveat", "unshare", "mount", "umount2", "pivot_root", "sethostname", "setresuid",
    "setresgid", "setgroups", "setuid", "setgid", "seccomp", "setrlimit", "chown", "fchown", "fchownat", "lchown",
    "symlink", "symlinkat", "setsid", "setpgid", "sched_setaffinity", "alarm", "getitimer", "setitimer", "pause",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "utime", "utimes", "futimesat",
    "splice", "tee", "setpriority", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semctl", "mq_open",
    "mq_unlink", "mq_timedsend", "mq_timedreceive",
};

/* Each role's filter: calls_base, its additions, and what its sockets may
 * be. Only the api, the proxy and the runner open IP sockets (the api and
 * proxy resolve names over netlink too); the kms and audit speak only over
 * Unix sockets unless they talk to roles on other machines (talks_tcp()).
 * Only the runner makes processes (clone without CLONE_THREAD) and
 * namespaces. */
typedef struct seccomp_role {
    const char *role;
    const char *const *calls;
    size_t n_calls;
    bool inet;  /* AF_INET, AF_INET6, AF_NETLINK besides AF_UNIX */
    bool spawn; /* processes and namespaces: clone and clone3 unrestricted */
} seccomp_role;

#define CALLS(list) list, ELEMENTSOF(list)
static const seccomp_role seccomp_roles[] = {
    {"api", CALLS(calls_client), true, false},   {"proxy", CALLS(calls_client), true, false},
    {"kms", CALLS(calls_kms), false, false},     {"audit", CALLS(calls_audit), false, false},
    {"runner", CALLS(calls_runner), true, true},
};
#undef CALLS

bool privsep_may_connect_ip(const char *name)
{
    for (size_t i = 0; i < ELEMENTSOF(seccomp_roles); i++)
        if (strcmp(seccomp_roles[i].role, name) == 0)
            return seccomp_roles[i].inet;
    return false;
}

static int allow_all_of(scmp_filter_ctx ctx, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int nr = seccomp_syscall_resolve_name(names[i]);
        if (nr == __NR_SCMP_ERROR)
            continue; /* not on this architecture */
        int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Allows socket() in the domains role R may open; IP ones too with TCP
 * (a role that talks to roles on other machines). */
static int allow_sockets(scmp_filter_ctx ctx, const seccomp_role *r, bool tcp)
{
    if (r->spawn)
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 0);
    static const int inet[] = {AF_INET, AF_INET6, AF_NETLINK};
    int k = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
    for (size_t i = 0; k == 0 && (r->inet || tcp) && i < ELEMENTSOF(inet); i++)
        k = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)inet[i]));
    return k;
}

/* Loads role NAME's seccomp allow-list (after no_new_privs); every other
 * call fails with EPERM. A thread may lower its priority to
 * BACKGROUND_NICE (basic/background.h). Only the runner may clone processes and
 * namespaces; the others clone threads only (CLONE_THREAD set, no namespace
 * flag), and clone3, whose flags live in memory a filter cannot read,
 * answers them ENOSYS so that libc falls back to clone. Returns 0, -EINVAL
 * for a role the table lacks, or a negative errno. */
static int load_seccomp(const char *name, bool tcp)
{
    const seccomp_role *role = NULL;
    for (size_t i = 0; i < ELEMENTSOF(seccomp_roles); i++)
        if (strcmp(seccomp_roles[i].role, name) == 0)
            role = &seccomp_roles[i];
    if (!role)
        return -EINVAL;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    if (!ctx)
        return -ENOMEM;
    int r = allow_all_of(ctx, calls_base, ELEMENTSOF(calls_base));
    if (r == 0)
        r = allow_all_of(ctx, role->calls, role->n_calls);
    if (r == 0)
        r = allow_sockets(ctx, role, tcp);
    static const scmp_datum_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
                                         CLONE_NEWNET | CLONE_NEWCGROUP;
    if (r == 0)
        r = role->spawn ? seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 0)
                        : seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                                           SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags | CLONE_THREAD, CLONE_THREAD));
    if (r == 0 && !role->spawn)
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    /* a thread may lower its own priority to BACKGROUND_NICE, and only that
     * (the runner, which sets its workloads', may do more) */
    if (r == 0 && !role->spawn)
        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(setpriority), 2, SCMP_A0(SCMP_CMP_EQ, PRIO_PROCESS),
                             SCMP_A2(SCMP_CMP_MASKED_EQ, 0xffffffffu, BACKGROUND_NICE));
    if (r == 0)
        r = seccomp_load(ctx);
    seccomp_release(ctx);
    return r;
}

#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif

#define LL_READ (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR)

/* Allows ACCESS beneath PATH in ruleset FD; a missing PATH is skipped. */
static int ll_allow(int fd, const char *path, __u64 access, __u64 handled)
{
    _cleanup_close_ int pfd = open(path, O_PATH | O_CLOEXEC);
    if (pfd < 0)
        return errno == ENOENT ? 0 : negative_errno();
    struct stat st;
    if (fstat(pfd, &st) < 0)
        return negative_errno();
    if (!S_ISDIR(st.st_mode)) /* a file takes only the rights that apply to files */
        access &= LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_WRITE_FILE |
                  LANDLOCK_ACCESS_FS_TRUNCATE;
    struct landlock_path_beneath_attr pb = {.allowed_access = access & handled, .parent_fd = pfd};
    return syscall(SYS_landlock_add_rule, fd, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) < 0 ? negative_errno() : 0;
}

/* Confines role NAME with Landlock: the system read-only, its rooms and
 * its socket directory read-write, the certificates read-only. Returns 0
 * when applied, -EOPNOTSUPP when the kernel offers no Landlock, or a
 * negative errno. */
static int landlock_role(const char *name, const daemon_config *cfg)
{
    int abi = (int)syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 1)
        return -EOPNOTSUPP;
    __u64 handled = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1; /* ABI 1 */
    if (abi >= 2)
        handled |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3)
        handled |= LANDLOCK_ACCESS_FS_TRUNCATE;
    struct landlock_ruleset_attr attr = {.handled_access_fs = handled};
    _cleanup_close_ int fd = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
    if (fd < 0)
        return negative_errno();
    static const char *const system_ro[] = {"/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys",
                                            "/dev/urandom", "/dev/null"};
    int r = 0;
    for (size_t i = 0; r == 0 && i < ELEMENTSOF(system_ro); i++)
        r = ll_allow(fd, system_ro[i], LL_READ, handled);
    char path[4400];
    snprintf(path, sizeof(path), "%s/tls", cfg->data_dir);
    const char *const public[] = {cfg->ca_cert, cfg->platform_ca_cert, path, cfg->runner_cert, cfg->plugin_dir};
    for (size_t i = 0; r == 0 && i < ELEMENTSOF(public); i++)
        r = public[i][0] ? ll_allow(fd, public[i], LL_READ, handled) : 0;
    const role_room *room = room_of(name);
    for (size_t d = 0; r == 0 && room && d < ELEMENTSOF(room->dirs) && room->dirs[d]; d++) {
        snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, room->dirs[d]);
        r = ll_allow(fd, path, handled, handled);
    }
    snprintf(path, sizeof(path), "%s/%s", cfg->run_dir, name);
    if (r == 0)
        r = ll_allow(fd, path, handled, handled);
    if (r == 0 && syscall(SYS_landlock_restrict_self, fd, 0) < 0)
        r = negative_errno();
    return r;
}

/* The start-up evidence that Landlock holds (it has no /proc field to read
 * from outside): confined role NAME tries to open files it must not reach,
 * the cluster CA's key and another role's key, named by ALL (the
 * supervisor's whole configuration). Each refusal is logged; a file that
 * opens means the confinement does not hold and the role must not run.
 * Returns 0, or -EPERM when one opened (logged). */
static int landlock_self_check(const char *name, const daemon_config *all)
{
    const char *other = strcmp(name, "proxy") == 0 || strcmp(name, "audit") == 0 ? all->kms_root_file
                        : strcmp(name, "api") == 0 || strcmp(name, "kms") == 0  ? all->audit_key
                                                                                 : "";
    const char *const probes[] = {all->ca_key, other};
    for (size_t i = 0; i < ELEMENTSOF(probes); i++) {
        if (!probes[i][0])
            continue;
        int fd = open(probes[i], O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0) {
            close(fd);
            log_fields(LOG_LEVEL_ERROR, "landlock self-check: a file outside the role's rooms opened; it does not run",
                       "path", probes[i], NULL);
            return -EPERM;
        }
        if (errno == ENOENT) /* not made yet (another role's first start): nothing to show */
            continue;
        char msg[4400];
        snprintf(msg, sizeof(msg), "landlock self-check: %s refused (%s)", probes[i],
                 errno == EACCES ? "EACCES" : strerror(errno));
        log_fields(LOG_LEVEL_INFO, msg, "path", probes[i], NULL);
    }
    return 0;
}

/* Whether role NAME, which may otherwise keep to Unix sockets (the kms, the
 * audit), talks to roles on other machines under CFG: it listens for them
 * (kms.listen, audit.listen) or reaches the audit role at its URL. */
static bool talks_tcp(const char *name, const daemon_config *cfg)
{
    if (strcmp(name, "kms") == 0)
        return cfg->kms_listen[0] || strncmp(cfg->audit_socket, "https://", 8) == 0;
    return strcmp(name, "audit") == 0 && cfg->audit_listen[0];
}

int privsep_enter(const char *name, const privsep_ids *ids, const daemon_config *cfg, const daemon_config *all)
{
    bool runner = strcmp(name, "runner") == 0;
    const char *step = "drop privileges";
    int r = 0;
    if (ids)
        r = become(ids, runner ? runner_caps : NULL, runner ? ELEMENTSOF(runner_caps) : 0);
    struct rlimit none = {0, 0};
    if (r == 0 && setrlimit(RLIMIT_CORE, &none) < 0) {
        step = "disable core dumps";
        r = negative_errno();
    }
    /* the runner is made dumpable again (a change of uid cleared it): it
     * writes its sandboxes' uid_map, which a non-dumpable parent's child has
     * owned by root; roles of other uids cannot read its memory either way */
    if (r == 0 && prctl(PR_SET_DUMPABLE, runner ? 1 : 0, 0, 0, 0) < 0) {
        step = "make the role not dumpable";
        r = negative_errno();
    }
    if (r == 0 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        step = "set no_new_privs";
        r = negative_errno();
    }
    if (r == 0 && ids == NULL) {
        /* an ordinary user's start: Landlock confines the role where it can;
         * the runner mounts its sandboxes, which Landlock forbids */
        if (runner)
            log_fields(LOG_LEVEL_WARN, "Landlock not applied: the runner mounts its sandboxes' file systems", NULL);
        else if ((r = landlock_role(name, cfg)) == -EOPNOTSUPP) {
            log_fields(LOG_LEVEL_WARN, "Landlock is unavailable in this kernel; the role sees the whole data dir",
                       NULL);
            r = 0;
        } else if (r == 0) {
            log_fields(LOG_LEVEL_INFO, "Landlock applied: the role reads and writes only its own subtree", "rooms",
                       room_of(name) ? room_of(name)->dirs[0] : name, NULL);
            if ((r = landlock_self_check(name, all)) < 0)
                step = "check Landlock";
        } else
            step = "apply Landlock";
    }
    if (r == 0 && (r = load_seccomp(name, talks_tcp(name, cfg))) < 0)
        step = "load the seccomp filter";
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot confine the role; it does not run", "step", step, "error", strerror(-r),
                   NULL);
    return r;
}
