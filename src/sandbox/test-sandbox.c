#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/launch.h"

static char bundle[64];

static void setup(void)
{
    strcpy(bundle, "/tmp/cloister-bundle-XXXXXX");
    cr_assert_not_null(mkdtemp(bundle));
    chmod(bundle, 0755);
    char path[128];
    snprintf(path, sizeof(path), "%s/enclave.yaml", bundle);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("command: [\"/bin/sh\"]\n", f);
    fclose(f);
    chmod(path, 0644);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", bundle);
    cr_assert_eq(system(cmd), 0);
}

/* Runs SCRIPT with /bin/sh in a sandbox; its stdout (and stderr) into OUT;
 * returns the exit status. */
static int run(const char *script, uint64_t memory, char *out, size_t size)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", NULL};
    sandbox_spec spec = {.bundle = bundle, .argv = argv, .envp = envp, .memory_bytes = memory,
                         .stdout_fd = fds[1], .stderr_fd = fds[1]};
    sandbox_error err = {{0}};
    pid_t pid;
    int r = sandbox_launch(&spec, &pid, &err);
    close(fds[1]);
    cr_assert_eq(r, 0, "%s", err.text);
    size_t n = 0;
    ssize_t k;
    while (n + 1 < size && (k = read(fds[0], out + n, size - 1 - n)) > 0)
        n += (size_t)k;
    out[n] = 0;
    close(fds[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TestSuite(sandbox, .init = setup, .fini = teardown);

Test(sandbox, sees_only_itself_and_its_bundle)
{
    char out[4096];
    int st = run("echo pid=$$; echo uid=$(id -u); echo host=$(hostname); echo pwd=$(pwd); ls / | tr '\\n' ' '; echo;"
                 "ls /proc | grep -c '^[0-9]'; cat enclave.yaml",
                 0, out, sizeof(out));
    cr_assert_eq(st, 0, "%s", out);
    cr_expect(strstr(out, "pid=1\n"), "%s", out);
    cr_expect(strstr(out, "uid=0\n"), "%s", out);
    cr_expect(strstr(out, "host=sandbox\n"), "%s", out);
    cr_expect(strstr(out, "pwd=/app\n"), "%s", out);
    cr_expect(strstr(out, "app bin dev lib"), "%s", out);
    cr_expect_null(strstr(out, "etc"), "no host /etc: %s", out);
    cr_expect_null(strstr(out, "home"), "%s", out);
    cr_expect(strstr(out, "command: [\"/bin/sh\"]"), "%s", out);
}

Test(sandbox, root_and_bundle_are_read_only_tmp_and_secrets_are_not)
{
    char out[4096];
    int st = run("touch /x 2>/dev/null && echo root-writable; touch /app/x 2>/dev/null && echo app-writable;"
                 "touch /usr/x 2>/dev/null && echo usr-writable; touch /tmp/x && echo tmp-ok;"
                 "echo s > /run/secrets/k && echo secrets-ok",
                 0, out, sizeof(out));
    cr_assert_eq(st, 0, "%s", out);
    cr_expect_null(strstr(out, "writable"), "%s", out);
    cr_expect(strstr(out, "tmp-ok") && strstr(out, "secrets-ok"), "%s", out);
}

Test(sandbox, loopback_only)
{
    char out[4096];
    int st = run("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '", 0, out, sizeof(out));
    cr_assert_eq(st, 0, "%s", out);
    cr_expect_str_eq(out, "lo\n");
}

Test(sandbox, seccomp_refuses_namespaces_and_mounts)
{
    char out[4096];
    int st = run("unshare -U true 2>&1; echo rc=$?; mount -t tmpfs t /tmp 2>&1; echo rc=$?", 0, out, sizeof(out));
    cr_assert_eq(st, 0, "%s", out);
    cr_expect(strstr(out, "Operation not permitted"), "%s", out);
    cr_expect_null(strstr(out, "rc=0"), "%s", out);
}

/* Only Unix and IP streams and datagrams: raw and packet sockets fail with
 * EPERM although the workload is root of the namespace owning its network. */
Test(sandbox, seccomp_refuses_raw_and_packet_sockets)
{
    char out[4096];
    int st = run("exec python3 -c '\n"
                 "import socket\n"
                 "for f, t, p in [(2, 3, 1), (10, 3, 58), (17, 3, 768), (17, 2, 768), (16, 3, 0), (2, 10, 0)]:\n"
                 "    try: socket.socket(f, t, p).close(); print(f, t, \"created\")\n"
                 "    except OSError as e: print(f, t, e.errno)\n"
                 "socket.socket(2, 1).close(); socket.socket(10, 2).close(); socket.socket(1, 5).close()\n"
                 "print(\"allowed ok\")'",
                 0, out, sizeof(out));
    cr_assert_eq(st, 0, "%s", out);
    /* AF_INET/AF_INET6 SOCK_RAW, AF_PACKET raw and dgram, AF_NETLINK, AF_INET SOCK_PACKET */
    cr_expect_str_eq(out, "2 3 1\n10 3 1\n17 3 1\n17 2 1\n16 3 1\n2 10 1\nallowed ok\n");
}

Test(sandbox, memory_limit_holds)
{
    char out[4096];
    int st = run("exec python3 -c 'b = bytearray(512 * 1024 * 1024); print(\"allocated\")'", 256ull << 20, out,
                 sizeof(out));
    cr_expect_neq(st, 0, "%s", out);
    cr_expect_null(strstr(out, "allocated"), "%s", out);
    cr_expect(strstr(out, "MemoryError"), "%s", out);
}

Test(sandbox, failures_are_reported_and_leave_nothing_running)
{
    char *argv[] = {"/nonexistent/program", NULL};
    char *envp[] = {NULL};
    sandbox_spec spec = {.bundle = bundle, .argv = argv, .envp = envp, .stdout_fd = -1, .stderr_fd = -1};
    sandbox_error err = {{0}};
    pid_t pid = 0;
    cr_assert_eq(sandbox_launch(&spec, &pid, &err), -EIO);
    cr_expect(strstr(err.text, "exec /nonexistent/program: No such file or directory"), "%s", err.text);
    cr_expect_eq(waitpid(-1, NULL, WNOHANG), -1, "no child left behind");
    spec.bundle = "relative";
    cr_assert_eq(sandbox_launch(&spec, &pid, &err), -EINVAL);
    spec.bundle = "/nonexistent-bundle";
    argv[0] = "/bin/true";
    cr_assert_eq(sandbox_launch(&spec, &pid, &err), -ENOENT);
}

/* The channel is the only way out: a host Unix socket the workload reaches
 * at SANDBOX_CHANNEL_PATH. */
Test(sandbox, the_channel_reaches_the_host)
{
    char sock_path[128];
    snprintf(sock_path, sizeof(sock_path), "%s-channel.sock", bundle);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, sock_path);
    cr_assert_eq(bind(listener, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(chmod(sock_path, 0666), 0); /* the workload is the host's nobody */
    cr_assert_eq(listen(listener, 1), 0);
    char *argv[] = {"/usr/bin/python3", "-c",
                    "import socket; s = socket.socket(socket.AF_UNIX); s.connect('" SANDBOX_CHANNEL_PATH "');"
                    " s.sendall(b'hello from the sandbox')",
                    NULL};
    char *envp[] = {NULL};
    sandbox_spec spec = {.bundle = bundle, .argv = argv, .envp = envp, .channel = sock_path, .stdout_fd = -1,
                         .stderr_fd = 2};
    sandbox_error err = {{0}};
    pid_t pid;
    cr_assert_eq(sandbox_launch(&spec, &pid, &err), 0, "%s", err.text);
    int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(c, 0);
    char buf[64] = {0};
    cr_assert_gt(read(c, buf, sizeof(buf) - 1), 0);
    cr_expect_str_eq(buf, "hello from the sandbox");
    int status;
    waitpid(pid, &status, 0);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(c);
    close(listener);
    unlink(sock_path);
}

/* Agent mode's pieces: an executable bound read-only at SANDBOX_AGENT_PATH
 * runs as the first process, and one inherited fd arrives as fd 3 while
 * every other stays out. */
Test(sandbox, the_agent_and_its_inherited_fd)
{
    int out[2], handed[2], kept[2];
    cr_assert_eq(pipe(out), 0);
    cr_assert_eq(pipe2(handed, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(kept, O_CLOEXEC), 0);
    char *argv[] = {SANDBOX_AGENT_PATH, "-c",
                    "echo agent >&3; ls /proc/self/fd | tr '\\n' ' '; : 2>/dev/null > " SANDBOX_AGENT_PATH
                    " && echo writable",
                    NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", NULL};
    sandbox_spec spec = {.bundle = bundle, .argv = argv, .envp = envp, .agent = "/bin/sh",
                         .inherit_fd = handed[1], .stdout_fd = out[1], .stderr_fd = out[1]};
    sandbox_error err = {{0}};
    pid_t pid;
    cr_assert_eq(sandbox_launch(&spec, &pid, &err), 0, "%s", err.text);
    close(out[1]);
    close(handed[1]);
    char buf[256] = {0}, fds[256] = {0};
    cr_assert_gt(read(handed[0], buf, sizeof(buf) - 1), 0);
    cr_expect_str_eq(buf, "agent\n");
    size_t n = 0;
    ssize_t k;
    while (n + 1 < sizeof(fds) && (k = read(out[0], fds + n, sizeof(fds) - 1 - n)) > 0)
        n += (size_t)k;
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    /* 0-2 and 3, and the directory ls reads (4): not the pipe kept out; and
     * the agent cannot be written */
    cr_expect_str_eq(fds, "0 1 2 3 4 ");
    close(out[0]);
    close(handed[0]);
    close(kept[0]);
    close(kept[1]);
}

/* A cgroup v2 directory this test may make (under the first cgroup2 mount),
 * written to OUT; false when there is none (a cgroup v1 host, no rights). */
static bool make_test_cgroup(char *out, size_t size)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[1024], mount[512] = "";
    while (f && !mount[0] && fgets(line, sizeof(line), f))
        if (strstr(line, " - cgroup2 ") && sscanf(line, "%*s %*s %*s %*s %511s", mount) != 1)
            mount[0] = 0;
    if (f)
        fclose(f);
    if (!mount[0])
        return false;
    snprintf(out, size, "%s/test-sandbox-%d", mount, (int)getpid());
    return mkdir(out, 0755) == 0;
}

Test(sandbox, starts_in_the_cgroup_it_is_given_with_a_namespace_rooted_there)
{
    char cgroup[600];
    if (!make_test_cgroup(cgroup, sizeof(cgroup)))
        cr_skip_test("no cgroup v2 directory can be made here");
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    char *argv[] = {"/bin/sh", "-c", "cat /proc/self/cgroup; exec sleep 30", NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", NULL};
    sandbox_spec spec = {.bundle = bundle, .argv = argv, .envp = envp, .stdout_fd = fds[1], .stderr_fd = fds[1],
                         .cgroup = cgroup};
    sandbox_error err = {{0}};
    pid_t pid;
    int r = sandbox_launch(&spec, &pid, &err);
    close(fds[1]);
    cr_assert_eq(r, 0, "%s", err.text);
    char inside[256] = "", host[1024] = "", path[64];
    ssize_t n = read(fds[0], inside, sizeof(inside) - 1);
    inside[n > 0 ? n : 0] = 0;
    snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
    {
        FILE *f = fopen(path, "re");
        size_t k = f ? fread(host, 1, sizeof(host) - 1, f) : 0;
        host[k] = 0;
        if (f)
            fclose(f);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(fds[0]);
    char leaf[64];
    snprintf(leaf, sizeof(leaf), "/test-sandbox-%d\n", (int)getpid());
    cr_expect(strstr(host, leaf), "the host sees it in %s: %s", cgroup, host);
    cr_expect(strstr(inside, "0::/\n"), "its own view is rooted there: %s", inside);
    cr_expect_eq(rmdir(cgroup), 0, "the cgroup is empty once it ended: %s", strerror(errno));
}
