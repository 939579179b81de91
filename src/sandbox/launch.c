#include "sandbox/launch.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <net/if.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/macro.h"

#define STACK_SIZE (256 * 1024)
#define NEW_ROOT "/tmp" /* a tmpfs mounted here, in the sandbox's own mount namespace */
#define NOBODY 65534

/* What the parent and the child share across clone(). */
typedef struct launch {
    const sandbox_spec *spec;
    int bundle_fd;  /* child: O_PATH, opened in its namespace before /tmp is covered */
    int channel_fd; /* child: O_PATH of the channel socket, or -1 */
    int egress_fd;  /* child: O_PATH of the egress socket, or -1 */
    int agent_fd;   /* child: O_PATH of the agent executable, or -1 */
    int sync[2];    /* parent -> child: the id maps are written */
    int report[2];  /* child -> parent: an error message, or EOF at exec */
} launch;

/* In the child: reports "STEP: strerror(errno)" to the parent and exits. */
_noreturn_ static void die(const launch *l, const char *fmt, ...) _printf_(2, 3);
static void die(const launch *l, const char *fmt, ...)
{
    int e = errno;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof(msg))
        snprintf(msg + n, sizeof(msg) - (size_t)n, ": %s", strerror(e));
    ssize_t _unused_ w = write(l->report[1], msg, strlen(msg));
    _exit(127);
}

/* The flags a bind mount must keep when remounted read-only inside a user
 * namespace: the kernel locks the source's nosuid, nodev and noexec. */
static unsigned long locked_flags(const char *path)
{
    struct statvfs st;
    unsigned long f = 0;
    if (statvfs(path, &st) == 0) {
        if (st.f_flag & ST_NOSUID)
            f |= MS_NOSUID;
        if (st.f_flag & ST_NODEV)
            f |= MS_NODEV;
        if (st.f_flag & ST_NOEXEC)
            f |= MS_NOEXEC;
    }
    return f;
}

static void bind_ro(const launch *l, const char *source, const char *target)
{
    if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) < 0)
        die(l, "bind %s", target);
    if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | locked_flags(target), NULL) < 0)
        die(l, "read-only %s", target);
}

/* Gives the new root the host's DIR: the same symlink when the host has one
 * (/bin -> usr/bin on merged-/usr systems), else a read-only bind. */
static void host_dir(const launch *l, const char *dir)
{
    char target[64], link[256];
    snprintf(target, sizeof(target), NEW_ROOT "%s", dir);
    ssize_t n = readlink(dir, link, sizeof(link) - 1);
    if (n > 0) {
        link[n] = 0;
        if (symlink(link, target) < 0)
            die(l, "symlink %s", dir);
        return;
    }
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return; /* the host has none */
    if (mkdir(target, 0755) < 0)
        die(l, "mkdir %s", target);
    bind_ro(l, dir, target);
}

static void tmpfs(const launch *l, const char *target, const char *options)
{
    if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0)
        die(l, "tmpfs %s", target);
}

static void make_dir(const launch *l, const char *path, mode_t mode)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        die(l, "mkdir %s", path);
}

/* A bind of the host device node NAME into the new /dev. */
static void device(const launch *l, const char *name)
{
    char host[64], target[64];
    snprintf(host, sizeof(host), "/dev/%s", name);
    snprintf(target, sizeof(target), NEW_ROOT "/dev/%s", name);
    int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        die(l, "create %s", target);
    close(fd);
    if (mount(host, target, NULL, MS_BIND, NULL) < 0)
        die(l, "bind %s", host);
}

/* Builds the sandbox's file system and makes it the root. */
static void setup_root(launch *l)
{
    char fdpath[64];
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        die(l, "make the mounts private");
    tmpfs(l, NEW_ROOT, "mode=0755,size=1m");
    make_dir(l, NEW_ROOT "/app", 0755);
    snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", l->bundle_fd);
    bind_ro(l, fdpath, NEW_ROOT "/app");
    static const char *const host_dirs[] = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"};
    for (size_t i = 0; i < ELEMENTSOF(host_dirs); i++)
        host_dir(l, host_dirs[i]);
    make_dir(l, NEW_ROOT "/tmp", 01777);
    tmpfs(l, NEW_ROOT "/tmp", "mode=1777,size=64m");
    make_dir(l, NEW_ROOT "/run", 0755);
    make_dir(l, NEW_ROOT "/run/secrets", 0700);
    tmpfs(l, NEW_ROOT "/run/secrets", "mode=0700,size=4m");
    make_dir(l, NEW_ROOT "/run/cloister", 0755);
    if (l->channel_fd >= 0) {
        int fd = open(NEW_ROOT SANDBOX_CHANNEL_PATH, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            die(l, "create the channel");
        close(fd);
        snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", l->channel_fd);
        if (mount(fdpath, NEW_ROOT SANDBOX_CHANNEL_PATH, NULL, MS_BIND, NULL) < 0)
            die(l, "bind the channel");
    }
    if (l->egress_fd >= 0) {
        int fd = open(NEW_ROOT SANDBOX_EGRESS_PATH, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            die(l, "create the egress socket");
        close(fd);
        snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", l->egress_fd);
        if (mount(fdpath, NEW_ROOT SANDBOX_EGRESS_PATH, NULL, MS_BIND, NULL) < 0)
            die(l, "bind the egress socket");
    }
    if (l->agent_fd >= 0) {
        int fd = open(NEW_ROOT SANDBOX_AGENT_PATH, O_WRONLY | O_CREAT | O_CLOEXEC, 0755);
        if (fd < 0)
            die(l, "create the agent");
        close(fd);
        snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", l->agent_fd);
        bind_ro(l, fdpath, NEW_ROOT SANDBOX_AGENT_PATH);
    }
    make_dir(l, NEW_ROOT "/dev", 0755);
    tmpfs(l, NEW_ROOT "/dev", "mode=0755,size=64k");
    static const char *const devices[] = {"null", "zero", "full", "random", "urandom"};
    for (size_t i = 0; i < ELEMENTSOF(devices); i++)
        device(l, devices[i]);
    make_dir(l, NEW_ROOT "/proc", 0555);
    if (mount("proc", NEW_ROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        die(l, "mount /proc");
    make_dir(l, NEW_ROOT "/.old", 0700);
    if (syscall(SYS_pivot_root, NEW_ROOT, NEW_ROOT "/.old") < 0)
        die(l, "pivot_root");
    if (chdir("/") < 0 || umount2("/.old", MNT_DETACH) < 0 || rmdir("/.old") < 0)
        die(l, "detach the host's root");
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        die(l, "make / read-only");
    if (chdir("/app") < 0)
        die(l, "chdir /app");
}

/* Brings up lo, the only interface of the new network namespace. */
static void loopback_up(const launch *l)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
        die(l, "read lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
        die(l, "bring lo up");
    close(fd);
}

/* The system calls a workload (an interpreter, a server) needs; everything
 * else fails with EPERM: mount, ptrace, bpf, kexec, module loading, keyrings,
 * namespaces, raw sockets, perf, userfaultfd, clock setting, reboot... */
static const char *const allowed[] = {
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "open", "openat", "close", "close_range", "creat", "fstat", "newfstatat", "stat", "lstat", "statx", "lseek",
    "mmap", "mprotect", "munmap", "mremap", "madvise", "msync", "mincore", "brk", "rt_sigaction",
    "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo",
    "sigaltstack", "ioctl", "access", "faccessat", "faccessat2", "pipe", "pipe2", "select", "pselect6", "poll",
    "ppoll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "dup",
    "dup2", "dup3", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
    "getpid", "getppid", "gettid", "getpgid", "getpgrp", "getsid", "setsid", "setpgid", "getuid", "geteuid",
    "getgid", "getegid", "getgroups", "getresuid", "getresgid", "socket", "socketpair", "connect", "accept",
    "accept4", "bind", "listen", "getsockname", "getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "clone", "fork", "vfork", "execve", "execveat",
    "exit", "exit_group", "wait4", "waitid", "kill", "tgkill", "tkill", "uname", "fcntl", "flock", "fsync",
    "fdatasync", "truncate", "ftruncate", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "rename",
    "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link", "linkat", "unlink", "unlinkat", "symlink",
    "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "lchown",
    "umask", "getrlimit", "setrlimit", "prlimit64", "getrusage", "sysinfo", "times", "prctl", "arch_prctl",
    "set_tid_address", "set_robust_list", "get_robust_list", "futex", "sched_yield", "sched_getaffinity",
    "sched_setaffinity", "sched_getparam", "sched_getscheduler", "getrandom", "rseq", "membarrier", "eventfd",
    "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4", "inotify_init",
    "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "statfs", "fstatfs", "utimensat", "utime",
    "utimes", "futimesat", "fadvise64", "sendfile", "copy_file_range", "splice", "tee", "getpriority",
    "setpriority", "alarm", "getitimer", "setitimer", "pause", "restart_syscall", "memfd_create", "getcpu",
    "capget", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semctl", "mq_open", "mq_unlink",
    "mq_timedsend", "mq_timedreceive",
};

#define SOCKET_TYPE_MASK 0xf /* the kernel's SOCK_TYPE_MASK: the type without SOCK_NONBLOCK/SOCK_CLOEXEC */

/* Loads the seccomp filter: the allow-list, sockets limited to Unix and IP
 * streams and datagrams,
 * clone without namespace flags, clone3 reported missing so libc falls back
 * to clone, and every other call refused with EPERM. */
static void load_seccomp(const launch *l)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    if (!ctx)
        die(l, "seccomp_init");
    for (size_t i = 0; i < ELEMENTSOF(allowed); i++) {
        int nr = seccomp_syscall_resolve_name(allowed[i]);
        if (nr == __NR_SCMP_ERROR)
            continue; /* not on this architecture */
        if (strcmp(allowed[i], "socket") == 0) {
            /* stream and datagram sockets (and Unix seqpacket) only: no raw
             * or packet socket, whatever the type's flags */
            static const struct {
                int domain, type;
            } kinds[] = {{AF_UNIX, SOCK_STREAM}, {AF_UNIX, SOCK_DGRAM}, {AF_UNIX, SOCK_SEQPACKET},
                         {AF_INET, SOCK_STREAM}, {AF_INET, SOCK_DGRAM},  {AF_INET6, SOCK_STREAM},
                         {AF_INET6, SOCK_DGRAM}};
            for (size_t k = 0; k < ELEMENTSOF(kinds); k++)
                if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 2, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)kinds[k].domain),
                                     SCMP_A1(SCMP_CMP_MASKED_EQ, SOCKET_TYPE_MASK, (scmp_datum_t)kinds[k].type)) < 0)
                    die(l, "seccomp socket rule");
            continue;
        }
        if (strcmp(allowed[i], "clone") == 0) {
            static const scmp_datum_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                                                 CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP;
            if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags, 0)) < 0)
                die(l, "seccomp clone rule");
            continue;
        }
        if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) < 0)
            die(l, "seccomp rule %s", allowed[i]);
    }
    int clone3 = seccomp_syscall_resolve_name("clone3");
    if (clone3 != __NR_SCMP_ERROR && seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), clone3, 0) < 0)
        die(l, "seccomp clone3 rule");
    if (seccomp_load(ctx) < 0)
        die(l, "seccomp_load");
    seccomp_release(ctx);
}

static void set_limit(const launch *l, int resource, uint64_t value, const char *name)
{
    struct rlimit rl = {value, value};
    if (setrlimit(resource, &rl) < 0)
        die(l, "setrlimit %s", name);
}

static int child_main(void *arg)
{
    launch *l = arg;
    const sandbox_spec *s = l->spec;
    char c;
    close(l->sync[1]);
    if (read(l->sync[0], &c, 1) != 1) /* the parent failed to map our ids */
        _exit(127);
    close(l->sync[0]);
    /* the parent moved us into the cgroup: the namespace is rooted there */
    if (s->cgroup && unshare(CLONE_NEWCGROUP) < 0)
        die(l, "unshare the cgroup namespace");
    /* opened in this mount namespace, before NEW_ROOT may cover them, and
     * with the launcher's credentials, which may traverse private parents */
    if ((l->bundle_fd = open(l->spec->bundle, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        die(l, "open the bundle %s", l->spec->bundle);
    if (l->spec->channel && (l->channel_fd = open(l->spec->channel, O_PATH | O_CLOEXEC)) < 0)
        die(l, "open the channel %s", l->spec->channel);
    if (l->spec->egress && (l->egress_fd = open(l->spec->egress, O_PATH | O_CLOEXEC)) < 0)
        die(l, "open the egress socket %s", l->spec->egress);
    if (l->spec->agent && (l->agent_fd = open(l->spec->agent, O_PATH | O_CLOEXEC)) < 0)
        die(l, "open the agent %s", l->spec->agent);
    /* become the namespace's root, the host's nobody: until now we still had
     * the host's (unmapped) root credentials. Raw system calls: libc's
     * wrappers would signal every thread its copy of the launcher's thread
     * list names, and wait forever for one that was being created when we
     * were cloned (the runner has threads: its egress tunnels, its audit
     * sender); this process has one thread. */
    if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0)
        die(l, "become the sandbox's root");
    setup_root(l);
    loopback_up(l);
    if (sethostname("sandbox", 7) < 0)
        die(l, "sethostname");
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || dup2(devnull, STDIN_FILENO) < 0 ||
        dup2(s->stdout_fd >= 0 ? s->stdout_fd : devnull, STDOUT_FILENO) < 0 ||
        dup2(s->stderr_fd >= 0 ? s->stderr_fd : devnull, STDERR_FILENO) < 0)
        die(l, "set up stdio");
    /* only stdio, the inherited fd and the report pipe (close-on-exec) cross the exec */
    unsigned first_closed = 3;
    if (s->inherit_fd >= SANDBOX_INHERIT_FD) {
        /* the report pipe must not be in the way: it is needed until exec */
        if (l->report[1] == SANDBOX_INHERIT_FD && (l->report[1] = fcntl(l->report[1], F_DUPFD_CLOEXEC, 4)) < 0)
            _exit(127);
        if (s->inherit_fd == SANDBOX_INHERIT_FD ? fcntl(SANDBOX_INHERIT_FD, F_SETFD, 0) < 0
                                                : dup2(s->inherit_fd, SANDBOX_INHERIT_FD) < 0)
            die(l, "hand over fd %d", s->inherit_fd);
        first_closed = SANDBOX_INHERIT_FD + 1;
    }
    if (syscall(SYS_close_range, first_closed, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        die(l, "close_range");
    if (s->max_pids && !s->cgroup) /* else the cgroup's pids.max */
        set_limit(l, RLIMIT_NPROC, s->max_pids, "pids");
    set_limit(l, RLIMIT_NOFILE, s->max_files ? s->max_files : 1024, "files");
    set_limit(l, RLIMIT_CORE, 0, "core");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        die(l, "no_new_privs");
    load_seccomp(l);
    /* last: nothing after it may need more address space */
    /* under an agent, the agent gives the workload this limit: the agent
     * (an ASan build of it, at least) cannot run under it */
    if (s->memory_bytes && !s->agent)
        set_limit(l, RLIMIT_AS, s->memory_bytes, "memory");
    execve(s->argv[0], s->argv, s->envp);
    die(l, "exec %s", s->argv[0]);
}

/* Maps the sandbox's root to the host's nobody (writes uid_map, gid_map). */
static int write_id_maps(pid_t pid)
{
    char path[64], map[64];
    snprintf(map, sizeof(map), "0 %d 1\n", NOBODY);
    static const struct {
        const char *file, *text;
    } steps[] = {{"setgroups", "deny\n"}, {"uid_map", NULL}, {"gid_map", NULL}};
    for (size_t i = 0; i < ELEMENTSOF(steps); i++) {
        snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, steps[i].file);
        const char *text = steps[i].text ? steps[i].text : map;
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return negative_errno();
        ssize_t n = write(fd, text, strlen(text));
        int e = n == (ssize_t)strlen(text) ? 0 : negative_errno();
        close(fd);
        if (e < 0)
            return e;
    }
    return 0;
}

/* Moves PID into the cgroup v2 directory CGROUP (its cgroup.procs). */
static int enter_cgroup(const char *cgroup, pid_t pid)
{
    char path[4200], text[16];
    if ((size_t)snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup) >= sizeof(path))
        return -ENAMETOOLONG;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return negative_errno();
    snprintf(text, sizeof(text), "%d", (int)pid);
    ssize_t n = write(fd, text, strlen(text));
    int e = n == (ssize_t)strlen(text) ? 0 : n < 0 ? negative_errno() : -EIO;
    close(fd);
    return e;
}

int sandbox_launch(const sandbox_spec *spec, pid_t *ret_pid, sandbox_error *err)
{
    launch l = {.spec = spec, .bundle_fd = -1, .channel_fd = -1, .egress_fd = -1, .agent_fd = -1,
                .sync = {-1, -1}, .report = {-1, -1}};
    int e = 0;
    if (!spec->bundle || spec->bundle[0] != '/' || !spec->argv || !spec->argv[0] || spec->argv[0][0] != '/') {
        snprintf(err->text, sizeof(err->text), "the bundle and the command must be absolute paths");
        return -EINVAL;
    }
    struct stat st;
    if (stat(spec->bundle, &st) < 0)
        e = negative_errno();
    else if (!S_ISDIR(st.st_mode))
        e = -ENOTDIR;
    if (e < 0) {
        snprintf(err->text, sizeof(err->text), "bundle %s: %s", spec->bundle, strerror(-e));
        return e;
    }
    if (spec->channel && stat(spec->channel, &st) < 0) {
        e = negative_errno();
        snprintf(err->text, sizeof(err->text), "channel %s: %s", spec->channel, strerror(-e));
        return e;
    }
    if (spec->agent) {
        if (stat(spec->agent, &st) < 0)
            e = negative_errno();
        else if (!S_ISREG(st.st_mode))
            e = -EINVAL;
        if (e < 0) {
            snprintf(err->text, sizeof(err->text), "agent %s: %s", spec->agent,
                     e == -EINVAL ? "not a regular file" : strerror(-e));
            return e;
        }
    }
    char *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    pid_t pid = -1;
    if (stack == MAP_FAILED || pipe2(l.sync, O_CLOEXEC) < 0 || pipe2(l.report, O_CLOEXEC) < 0)
        e = negative_errno();
    else {
        /* with a cgroup the child makes its cgroup namespace once moved there */
        pid = clone(child_main, stack + STACK_SIZE,
                    CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                        (spec->cgroup ? 0 : CLONE_NEWCGROUP) | SIGCHLD,
                    &l);
        if (pid < 0)
            e = negative_errno();
    }
    if (e < 0)
        snprintf(err->text, sizeof(err->text), "cannot create the sandbox: %s", strerror(-e));
    else {
        close(l.sync[0]);
        close(l.report[1]);
        l.sync[0] = l.report[1] = -1;
        e = write_id_maps(pid);
        if (e < 0)
            snprintf(err->text, sizeof(err->text), "cannot map the sandbox's user: %s", strerror(-e));
        else if (spec->cgroup && (e = enter_cgroup(spec->cgroup, pid)) < 0)
            snprintf(err->text, sizeof(err->text), "cannot move the sandbox into cgroup %s: %s", spec->cgroup,
                     strerror(-e));
        else if (write(l.sync[1], "x", 1) != 1)
            e = negative_errno();
        close(l.sync[1]);
        l.sync[1] = -1;
        /* EOF: the child exec'd (the pipe is close-on-exec); text: it failed */
        char msg[sizeof(err->text)];
        ssize_t n = e == 0 ? read(l.report[0], msg, sizeof(msg) - 1) : 0;
        if (n > 0) {
            msg[n] = 0;
            snprintf(err->text, sizeof(err->text), "sandbox setup failed: %.480s", msg);
            e = -EIO;
        }
        if (e < 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (l.sync[i] >= 0)
            close(l.sync[i]);
        if (l.report[i] >= 0)
            close(l.report[i]);
    }
    if (stack != MAP_FAILED)
        munmap(stack, STACK_SIZE);
    if (e < 0)
        return e;
    *ret_pid = pid;
    return 0;
}
