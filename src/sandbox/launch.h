/* Launching a workload in a measured sandbox: new user, pid, mount, network,
 * IPC, UTS and cgroup namespaces; a read-only root made of the bundle
 * (mounted at /app, the working directory) and read-only binds of the host's
 * /usr and library directories for interpreters; a private /tmp and a tmpfs
 * /run/secrets; a minimal /dev; loopback only; no_new_privs, a seccomp
 * allow-list (libseccomp), rlimits, and a cgroup v2 to start in when given
 * one (its limits set there by the caller). The only way out is a Unix socket
 * from the host bound at /run/cloister/channel.sock (the stand-in for vsock),
 * and for an Enclave with egress the runner's egress socket beside it.
 * In agent mode the runner also binds the agent executable read-only at
 * /run/cloister/agent and hands it one listening socket as fd 3.
 * Inside, the workload is root of its own user namespace, mapped to the
 * host's unprivileged `nobody`. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#define SANDBOX_CHANNEL_PATH "/run/cloister/channel.sock"
#define SANDBOX_AGENT_PATH "/run/cloister/agent"
/* an Enclave with egress: the runner's egress socket (runner/egress.h) */
#define SANDBOX_EGRESS_PATH "/run/cloister/egress.sock"
#define SANDBOX_INHERIT_FD 3

typedef struct sandbox_spec {
    const char *bundle;   /* absolute host path of the bundle directory */
    char *const *argv;    /* argv[0]: an absolute path inside the sandbox */
    char *const *envp;
    const char *channel;  /* host path of a Unix socket to expose, or NULL */
    const char *egress;   /* host path of the runner's egress socket, bound at SANDBOX_EGRESS_PATH, or NULL */
    const char *agent;    /* host path of an executable bound read-only at SANDBOX_AGENT_PATH, or NULL */
    int inherit_fd;       /* when >= 3: handed to the workload as SANDBOX_INHERIT_FD (e.g. a listening
                           * socket); otherwise nothing but stdio crosses into the sandbox */
    uint64_t memory_bytes; /* address-space limit; 0: none (with AGENT: the agent applies it to the workload) */
    uint64_t max_pids;     /* processes of the sandbox's user; 0: none */
    uint64_t max_files;    /* open files; 0: 1024 */
    int stdout_fd, stderr_fd; /* the workload's output; -1: /dev/null */
    const char *cgroup;   /* a cgroup v2 directory to start the sandbox in (its limits set there), or NULL;
                           * the sandbox's cgroup namespace is rooted at it */
} sandbox_spec;

typedef struct sandbox_error {
    char text[512];
} sandbox_error;

/* Starts SPEC's workload in a new sandbox and returns once it has been
 * exec'd (or failed to be): *RET_PID is its host pid, the caller reaps it.
 * On failure nothing is left running and ERR says which step failed. */
int sandbox_launch(const sandbox_spec *spec, pid_t *ret_pid, sandbox_error *err);
