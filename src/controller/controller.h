/* The Enclave controller of the api role: it keeps each Enclave's replicas
 * running on the runner.
 *
 * It runs on a thread of its own, never on an API event loop. It follows the
 * store's change feed for Enclave and, every second (sooner when a restart
 * is due), compares each Enclave with the runner's GET /v1/sandboxes:
 *
 *   - replicas `<enclave>-1` .. `<enclave>-<desired>` that do not run are
 *     launched (POST /v1/sandboxes with the bundle and limits); those above
 *     desired, and every sandbox of a deleted Enclave, are deleted;
 *   - a replica whose workload exited is restarted after a backoff of 250 ms
 *     doubling up to 30 s, back to 250 ms once it had run for 60 s; a launch
 *     that fails (a bundle that cannot be measured, a bad enclave.yaml, a
 *     full runner) is retried on the same backoff and shown in the status;
 *   - after a change of the spec (anything but replicas and scaling) the replicas are
 *     replaced one at a time, each only while every other one runs;
 *   - each launch, crash, restart and stop is an audit event
 *     (enclave.replica.launched|crashed|restarted|stopped, actor
 *     "system:controller"), and what it sees is written to the Enclave's
 *     status: {pcr0, replicas: [{name, pid, state, restarts, startedAt,
 *     limits, lastExit, lastError}], ready, desired, restarts, lastEvent,
 *     lastEventAt};
 *   - desired follows spec.scaling: requests in flight per ready replica
 *     and the replicas' memory use against their limit (decide.h).
 *
 * The sandboxes it launches carry the runner owner tag
 * "enclave/<name>/<uid>/<digest of the spec without replicas and scaling>"; it never
 * touches a sandbox without its tag, and after a restart of the api role it
 * finds its replicas again by the tag. Its decisions are pure functions
 * (controller/decide.h), and it reaches the runner only through
 * controller/runner-client.h. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "basic/strbuf.h"
#include "store/store.h"

#define CONTROLLER_ENCLAVES_MAX 256     /* Enclaves reconciled; more are logged and left alone */
#define CONTROLLER_INTERVAL_MS 1000     /* between passes */
/* One controller at a time among processes sharing a store: the one that
 * holds this lease (renewed at a third of its TTL) reconciles; its status
 * writes carry the lease's fencing token, so a deposed one's are refused. */
#define CONTROLLER_LEASE "controller"
#define CONTROLLER_LEASE_TTL_MS 15000

typedef struct controller controller;

typedef struct controller_config {
    store *store;              /* borrowed; must outlive the controller */
    const char *runner_socket; /* the runner's local API (copied) */
    unsigned interval_ms;      /* 0: CONTROLLER_INTERVAL_MS */
    /* the runner role's readiness (the supervisor's shared table), or NULL:
     * while it is false (the runner starts, restarts or stops) nothing is
     * reconciled, so its empty list is not taken for crashes */
    const _Atomic bool *runner_ready;
    /* the proxy's metrics (shared memory), whose requests in flight to an
     * Enclave scale its replicas between min and max (with their memory
     * use, which the runner lists); NULL: memory alone */
    const struct proxy_metrics *load;
    /* names this instance among the processes sharing the store (with the
     * host name): the api's listen address; NULL when it is alone */
    const char *instance;
} controller_config;

/* Starts the controller thread. Returns 0 with *RET (freed by
 * controller_stop()), or -ENOMEM / -ENAMETOOLONG / a pthread error as a
 * negative errno. */
int controller_start(const controller_config *cfg, controller **ret);
/* Stops the thread (after the runner call in flight, if any) and frees C.
 * Replicas keep running: the runner owns them. Accepts NULL. */
void controller_stop(controller *c);

/* Asks for DESIRED replicas of the Enclave NAME: the hook of an autoscaler.
 * The controller clamps it to the Enclave's [replicas.min, replicas.max],
 * keeps it (in status.desired, so it survives a restart) until the next
 * request or a change of those bounds re-clamps it, and acts on it within a
 * pass. Safe from any thread. Returns the clamped count it will keep, or
 * -ENOENT when the controller does not reconcile NAME. */
int controller_set_desired(controller *c, const char *name, unsigned desired);

/* Appends to OUT the Prometheus text of the Enclaves C reconciles, as of
 * its last pass: cloister_enclave_replicas_desired, _replicas_ready,
 * _restarts_total, _replicas_crash_looping and _memory_limit_bytes, each
 * labelled enclave (at most CONTROLLER_ENCLAVES_MAX). Safe from any
 * thread; C may be NULL (nothing). Returns 0 or -ENOMEM. */
int controller_metrics_render(controller *c, strbuf *out);
