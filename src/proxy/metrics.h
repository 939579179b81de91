/* The proxy's metrics: requests by service, decision and status class,
 * latency histograms by service, upstream errors, the configuration in use
 * and audit events dropped. They live in one fixed-size block of memory the
 * supervisor maps shared before it forks the roles: the proxy role updates
 * it (lock-free atomics) and the api role renders it on GET /metrics.
 * The latency histogram is OpenTelemetry's http.server.request.duration
 * (seconds) of each Service.
 *
 * Services take slots by name on first use (PROXY_METRICS_SERVICES of them;
 * more are counted under service="(other)"). */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "basic/strbuf.h"

#define PROXY_METRICS_SERVICES 128
#define PROXY_METRICS_NAME_MAX 64
#define PROXY_METRICS_BUCKETS 12
#define PROXY_METRICS_ENCLAVES 64 /* Enclaves whose load is tracked (the autoscaler reads it) */
#define PROXY_METRICS_PLUGINS 32  /* plugins (by name) whose calls are counted */
#define PROXY_METRICS_PLUGIN_PHASES 6   /* plugin/call.h's phases */
#define PROXY_METRICS_PLUGIN_OUTCOMES 5 /* plugin/plugin.h's outcomes */

typedef enum proxy_decision {
    PROXY_DECISION_ALLOW,
    PROXY_DECISION_DENY,
    PROXY_DECISION_UNAUTHENTICATED,
    PROXY_DECISION_INVALID, /* refused before a decision: bad target, ambiguous framing, unknown host, limits */
    PROXY_DECISION_ERROR,   /* no decision could be made: no configuration, audit unavailable, signing failed */
    PROXY_DECISION_COUNT_,
} proxy_decision;

/* Why the proxy answered a request with an error, for
 * cloister_proxy_errors_total{class}: refused before a decision (a 4xx of
 * the invalid decision), no decision could be made (the error decision), and
 * an allowed request's upstream answering or timing out as 502, 503, 504. */
typedef enum proxy_error_class {
    PROXY_ERROR_INVALID_REQUEST,
    PROXY_ERROR_INTERNAL,
    PROXY_ERROR_BAD_GATEWAY,
    PROXY_ERROR_UNAVAILABLE,
    PROXY_ERROR_TIMEOUT,
    PROXY_ERROR_COUNT_,
} proxy_error_class;

/* A table slot taken by a name on first use. */
typedef struct proxy_metrics_slot {
    _Atomic int state; /* 0 free, 1 being claimed, 2 named */
    char name[PROXY_METRICS_NAME_MAX];
} proxy_metrics_slot;

typedef struct proxy_service_metrics {
    proxy_metrics_slot slot;
    _Atomic uint64_t requests[PROXY_DECISION_COUNT_][5]; /* status class 1xx..5xx */
    _Atomic uint64_t errors[PROXY_ERROR_COUNT_];        /* the upstream ones: 502/503/504 of allowed requests */
    _Atomic uint64_t latency_buckets[PROXY_METRICS_BUCKETS];
    _Atomic uint64_t latency_count, latency_sum_ns;
} proxy_service_metrics;

/* Requests in flight to an Enclave's replicas, which its controller scales on. */
typedef struct proxy_enclave_load {
    proxy_metrics_slot slot;
    _Atomic int64_t in_flight;
} proxy_enclave_load;

/* A plugin's calls by phase: by outcome (ok, error, crash, timeout,
 * garbage), denials among the answered ones, and the time they took. */
typedef struct proxy_plugin_metrics {
    proxy_metrics_slot slot;
    _Atomic uint64_t calls[PROXY_METRICS_PLUGIN_PHASES][PROXY_METRICS_PLUGIN_OUTCOMES];
    _Atomic uint64_t denials[PROXY_METRICS_PLUGIN_PHASES];
    _Atomic uint64_t latency_sum_ns[PROXY_METRICS_PLUGIN_PHASES];
} proxy_plugin_metrics;

typedef struct proxy_metrics {
    proxy_service_metrics services[PROXY_METRICS_SERVICES + 1]; /* the last: "(other)" and no service */
    proxy_enclave_load enclaves[PROXY_METRICS_ENCLAVES];
    proxy_plugin_metrics plugins[PROXY_METRICS_PLUGINS];
    _Atomic uint64_t config_generation, config_revision, config_updates;
    /* the configuration stream (monotonic ns, 0: never): when the proxy
     * began following it (each start of the role), and when it last
     * delivered an event or a keep-alive */
    _Atomic uint64_t follow_started_ns, config_heard_ns;
    _Atomic uint64_t audit_dropped;
    _Atomic uint64_t connections;
} proxy_metrics;

/* Counts one answered request of SERVICE (NULL: none was found). */
void proxy_metrics_observe(proxy_metrics *m, const char *service, proxy_decision d, int status, uint64_t latency_ns);
/* Records the configuration now in use. */
void proxy_metrics_config(proxy_metrics *m, uint64_t generation, int64_t revision);
/* Records that the proxy begins following the API's configuration stream. */
void proxy_metrics_follow_started(proxy_metrics *m);
/* Records that the configuration stream delivered an event or a keep-alive. */
void proxy_metrics_config_heard(proxy_metrics *m);
/* /readyz (the API's and the proxy's): a proxy that has not heard from its
 * configuration stream for longer is stale (it hears at least every 5 s). */
#define PROXY_CONFIG_MAX_AGE_S 30

/* How long the proxy has gone without hearing from its configuration
 * stream at NOW (monotonic ns): 0 with *RET_AGE_NS when it heard since it
 * began following, -EAGAIN with *RET_AGE_NS the time since it began when it
 * has heard nothing yet, -ENOENT when it does not follow (not started). */
int proxy_metrics_config_age(const proxy_metrics *m, uint64_t now, uint64_t *ret_age_ns);
/* The in-flight counter of Enclave NAME (claimed on first use), for the
 * proxy to count up when it sends a request to a replica and down when the
 * request ends; NULL when M is NULL or the table is full. */
_Atomic int64_t *proxy_metrics_enclave(proxy_metrics *m, const char *name);
/* Requests in flight to Enclave NAME now (0 when unknown). */
int64_t proxy_metrics_enclave_in_flight(const proxy_metrics *m, const char *name);
/* Counts one call of plugin NAME in PHASE with OUTCOME (indexes of
 * plugin/call.h and plugin/plugin.h), DENIED when it answered DENY, which
 * took LATENCY_NS. Plugins past the table's size are not counted. */
void proxy_metrics_plugin(proxy_metrics *m, const char *name, unsigned phase, unsigned outcome, bool denied,
                          uint64_t latency_ns);
/* Appends the Prometheus exposition text of M to OUT. */
int proxy_metrics_render(const proxy_metrics *m, strbuf *out);
/* The label value of decision D. */
const char *proxy_decision_name(proxy_decision d);
