/* The runner's launcher of untrusted plugins' sandboxes (see plugins.h). */
#include "runner/plugins.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "daemon/peer.h"
#include "plugin/plugin.h"
#include "plugin/wire.h"
#include "runner/agent.h"
#include "sandbox/launch.h"

#define REQUEST_TIMEOUT_MS 2000 /* for the name, once connected */

struct runner_plugins {
    char socket_path[PATH_MAX];
    char plugin_dir[PATH_MAX];
    char host[PATH_MAX]; /* cloister-plugin-sandbox */
    peer_policy peers;
    int listen_fd;
    _Atomic bool stop;
    pthread_t thread;
    pid_t pids[RUNNER_PLUGIN_SANDBOXES_MAX];
};

/* Answers a connection whose sandbox could not be launched: READY with
 * WHY, so the proxy reports it. */
static void refuse(int fd, const char *why)
{
    strbuf b;
    strbuf_init(&b, 1024);
    if (plugin_wire_ready(&b, false, why) == 0)
        (void)plugin_write_all(fd, b.data, b.len, time_mono_ns() + 1000000000ull);
    strbuf_free(&b);
    log_fields(LOG_LEVEL_WARN, "plugin sandbox not launched", "error", why, NULL);
}

/* Reaps the sandboxes that have exited. */
static void reap(runner_plugins *rp)
{
    for (size_t i = 0; i < RUNNER_PLUGIN_SANDBOXES_MAX; i++) {
        int status;
        if (rp->pids[i] > 0 && waitpid(rp->pids[i], &status, WNOHANG) == rp->pids[i])
            rp->pids[i] = 0;
    }
}

/* Serves one connection: reads the plugin's name and launches its
 * sandbox on the connection. */
static void serve(runner_plugins *rp, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    int role;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        peer_check_hook(&rp->peers, cred.pid, cred.uid, &role) < 0)
        return;
    uint8_t hdr[2];
    char name[64] = "";
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, REQUEST_TIMEOUT_MS) != 1 || recv(fd, hdr, 2, MSG_WAITALL) != 2) {
        refuse(fd, "no plugin name sent");
        return;
    }
    size_t n = (size_t)hdr[0] | (size_t)hdr[1] << 8;
    if (n == 0 || n >= sizeof(name) || recv(fd, name, n, MSG_WAITALL) != (ssize_t)n) {
        refuse(fd, "the plugin name is missing or longer than 63 bytes");
        return;
    }
    name[n] = 0;
    char why[PLUGIN_ERROR_MAX + 128];
    if (!plugin_name_valid(name)) {
        refuse(fd, "the plugin name is not [a-z0-9][a-z0-9_-]*");
        return;
    }
    char path[PATH_MAX + 80], real[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s.so", rp->plugin_dir, name);
    if (!realpath(path, real) || strncmp(real, rp->plugin_dir, strlen(rp->plugin_dir)) != 0 ||
        real[strlen(rp->plugin_dir)] != '/') {
        snprintf(why, sizeof(why), "plugin %s: %s.so is not a file in the plugin directory %.400s", name, name,
                 rp->plugin_dir);
        refuse(fd, why);
        return;
    }
    size_t slot = RUNNER_PLUGIN_SANDBOXES_MAX;
    for (size_t i = 0; i < RUNNER_PLUGIN_SANDBOXES_MAX && slot == RUNNER_PLUGIN_SANDBOXES_MAX; i++)
        if (rp->pids[i] == 0)
            slot = i;
    if (slot == RUNNER_PLUGIN_SANDBOXES_MAX) {
        refuse(fd, "too many plugin sandboxes are running");
        return;
    }
    char *argv[] = {SANDBOX_AGENT_PATH, name, NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", NULL};
    sandbox_spec spec = {
        .bundle = rp->plugin_dir,
        .argv = argv,
        .envp = envp,
        .agent = rp->host,
        .inherit_fd = fd,
        .memory_bytes = RUNNER_PLUGIN_MEMORY_BYTES,
        .max_pids = 4,
        .max_files = 64,
        .stdout_fd = STDERR_FILENO,
        .stderr_fd = STDERR_FILENO,
    };
    sandbox_error err = {0};
    pid_t pid;
    if (sandbox_launch(&spec, &pid, &err) < 0) {
        snprintf(why, sizeof(why), "plugin %s: its sandbox could not be launched: %.500s", name, err.text);
        refuse(fd, why);
        return;
    }
    rp->pids[slot] = pid;
    log_fields(LOG_LEVEL_INFO, "plugin sandbox launched", "plugin", name, NULL);
}

static void *launcher_main(void *arg)
{
    runner_plugins *rp = arg;
    while (!atomic_load(&rp->stop)) {
        reap(rp);
        struct pollfd pfd = {.fd = rp->listen_fd, .events = POLLIN};
        if (poll(&pfd, 1, 500) != 1)
            continue;
        int fd = accept4(rp->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve(rp, fd);
        close(fd); /* the sandbox has its own copy */
    }
    return NULL;
}

int runner_plugins_start(const char *dir, const char *plugin_dir, const char *host, const role_health *roles,
                         size_t n_roles, runner_plugins **ret)
{
    if (!plugin_dir || !plugin_dir[0])
        return -ENOENT;
    runner_plugins *rp = calloc(1, sizeof(*rp));
    if (!rp)
        return -ENOMEM;
    rp->listen_fd = -1;
    rp->peers = (peer_policy){.socket = "plugins.sock", .roles = roles, .n_roles = n_roles, .uid = geteuid(),
                              .allowed = {"proxy", "runner"}};
    int r = 0;
    if (!realpath(plugin_dir, rp->plugin_dir)) {
        r = negative_errno();
        log_fields(LOG_LEVEL_ERROR, "the plugin directory cannot be used: untrusted plugins cannot run", "dir",
                   plugin_dir, "error", strerror(-r), NULL);
        goto fail;
    }
    if (host && host[0] && strlen(host) < sizeof(rp->host))
        strcpy(rp->host, host); /* the supervisor's copy in the runner's own files */
    else if ((r = runner_plugin_sandbox_locate(rp->host, sizeof(rp->host))) < 0) {
        log_fields(LOG_LEVEL_ERROR, "no cloister-plugin-sandbox next to cloisterd: untrusted plugins cannot run",
                   NULL);
        goto fail;
    }
    snprintf(rp->socket_path, sizeof(rp->socket_path), "%s/plugins.sock", dir);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(rp->socket_path) >= sizeof(sa.sun_path)) {
        r = -ENAMETOOLONG;
        goto fail;
    }
    strcpy(sa.sun_path, rp->socket_path);
    unlink(rp->socket_path);
    rp->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rp->listen_fd < 0 || bind(rp->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        chmod(rp->socket_path, 0666) < 0 || /* the proxy's user connects; the peer check decides */
        listen(rp->listen_fd, 64) < 0) {
        r = negative_errno();
        log_fields(LOG_LEVEL_ERROR, "cannot listen for plugin sandboxes", "socket", rp->socket_path, "error",
                   strerror(-r), NULL);
        goto fail;
    }
    if ((r = -pthread_create(&rp->thread, NULL, launcher_main, rp)) < 0)
        goto fail;
    *ret = rp;
    return 0;
fail:
    if (rp->listen_fd >= 0)
        close(rp->listen_fd);
    free(rp);
    return r;
}

void runner_plugins_stop(runner_plugins *rp)
{
    if (!rp)
        return;
    atomic_store(&rp->stop, true);
    pthread_join(rp->thread, NULL);
    close(rp->listen_fd);
    unlink(rp->socket_path);
    for (size_t i = 0; i < RUNNER_PLUGIN_SANDBOXES_MAX; i++)
        if (rp->pids[i] > 0) {
            kill(rp->pids[i], SIGKILL);
            waitpid(rp->pids[i], NULL, 0);
        }
    free(rp);
}
