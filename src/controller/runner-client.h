/* The controller's client of the runner role's local API (runner.sock,
 * src/runner/server.c): list, launch and delete sandboxes. Everything the
 * controller knows of the runner's protocol is here; every answer is
 * checked before the controller sees it. Calls block (at most their
 * timeout): the controller calls them from its own thread. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define RUNNER_OWNER_MAX 128       /* the runner's cap on an owner tag, with the NUL */
#define RUNNER_PCR_HEX_LEN 96      /* a SHA-384 PCR in hex */
#define RUNNER_ITEMS_MAX 1024      /* a listing with more sandboxes or exits is refused */
#define RUNNER_MESSAGE_MAX 300     /* of a runner error quoted back */
#define RUNNER_WHY_MAX (RUNNER_MESSAGE_MAX + 64) /* the size of a WHY buffer that holds any reason */

typedef struct runner_client runner_client;

/* A sandbox of the runner's listing; strings borrowed from the listing. */
typedef struct runner_sandbox {
    const char *name;  /* a valid resource name; set to NULL to hide it from runner_view_find() */
    const char *owner; /* NULL when untagged, else shorter than RUNNER_OWNER_MAX */
    const char *pcr0;  /* NULL, or RUNNER_PCR_HEX_LEN hex digits */
    pid_t pid;         /* > 0 */
    bool ready;        /* its agent reported the workload answering on its port */
    const char *error; /* its agent's last reported error, NULL when none */
    const char *mechanism; /* how its limits are held: "cgroup2" or "rlimit"; NULL when the runner did not say */
    unsigned memory_mib, pids; /* its limits, 0: none */
    uint64_t memory_bytes;     /* its memory use at the runner's last sample */
} runner_sandbox;

/* A sandbox whose workload ended by itself. */
typedef struct runner_exit {
    const char *name, *how; /* how: "exit status N" or "signal N" */
    pid_t pid;
    int code, signal;  /* the exit status, or the signal that ended it (0: not that way) */
    const char *at;    /* RFC 3339, "" when the runner did not say */
    const char *error; /* the agent's last reported error, "" when none */
    const char *reason; /* "oomKilled" or "memoryLimit" when a memory limit ended it, else "" */
} runner_exit;

/* The runner's GET /v1/sandboxes, checked. */
typedef struct runner_view {
    json_t *json; /* owns the strings */
    runner_sandbox *items;
    size_t n_items;
    runner_exit *exits;
    size_t n_exits;
} runner_view;

/* What a replica is launched with: in agent mode always (its secrets by key
 * release, attested TLS). Borrowed. */
typedef struct runner_launch {
    const char *name, *bundle, *owner;
    const json_t *limits;  /* {"memoryMiB", "pids"} or NULL */
    const json_t *secrets; /* the agent's [{"key", "file"}] or NULL */
    const json_t *job;     /* job mode instead: {"name", "run", "digest"} (runner/agent.h), or NULL */
    const json_t *egress;  /* the Enclave's [{host, port, tls}] (runner/egress.h), or NULL */
    const json_t *plugins; /* the Enclave's egress plugins (docs/plugins.md), or NULL */
} runner_launch;

/* A client of the runner at SOCKET (copied). Returns 0 with *RET, or
 * -ENOMEM / -ENAMETOOLONG. */
int runner_client_new(const char *socket, runner_client **ret);
/* Accepts NULL. */
void runner_client_free(runner_client *rc);

/* Lists the runner's sandboxes into *RET (freed with runner_view_free()).
 * Returns 0, or a negative errno with the reason in WHY: -ECONNREFUSED /
 * -EIO when the runner cannot be reached or refuses, -EBADMSG when its
 * listing is malformed. */
int runner_client_list(runner_client *rc, runner_view *ret, char *why, size_t size);
/* Launches L. Returns 0 with the sandbox's pid in *RET_PID and its PCR0 in
 * RET_PCR0 (RUNNER_PCR_HEX_LEN + 1 bytes), or a negative errno with the
 * runner's reason in WHY. */
int runner_client_launch(runner_client *rc, const runner_launch *l, pid_t *ret_pid, char *ret_pcr0, char *why,
                         size_t size);
/* Deletes sandbox NAME. Returns 0 once it is gone (one the runner does not
 * know counts), or a negative errno with the reason in WHY. */
int runner_client_delete(runner_client *rc, const char *name, char *why, size_t size);

/* The runner's GET /v1/logs?QUERY (the workloads' recent output,
 * runner/output.h; QUERY built by the caller from checked values). Returns
 * 0 with the checked answer in *RET ({"boot": 16 hex, "next": integer >= 0,
 * "lines": [{"seq", "time", "replica", "stream", "text"}]}, a new
 * reference), or a negative errno with the reason in WHY (-EBADMSG for an
 * answer of another shape). */
int runner_client_logs(runner_client *rc, const char *query, json_t **ret, char *why, size_t size);

/* Accepts a zeroed V. */
void runner_view_free(runner_view *v);
/* The sandbox called NAME in V, or NULL. */
runner_sandbox *runner_view_find(const runner_view *v, const char *name);
/* How sandbox NAME with PID ended, if the runner still remembers; NULL
 * when it does not (it was deleted, or the runner restarted). */
const runner_exit *runner_view_exit(const runner_view *v, const char *name, pid_t pid);
