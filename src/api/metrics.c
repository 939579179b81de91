#include "api/metrics.h"

#include <stdatomic.h>
#include <string.h>

#include "audit/event.h"
#include "basic/macro.h"
#include "daemon/peer-tls.h"

static const struct {
    const char *path;
    const char *method;
} route_labels[ROUTE_COUNT_] = {
    [ROUTE_HEALTHZ] = {"/healthz", "GET"},
    [ROUTE_READYZ] = {"/readyz", "GET"},
    [ROUTE_METRICS] = {"/metrics", "GET"},
    [ROUTE_WHOAMI] = {"/v1/whoami", "GET"},
    [ROUTE_APPLY] = {"/v1/apply", "POST"},
    [ROUTE_LIST] = {"/v1/{kind}", "GET"},
    [ROUTE_WATCH] = {"/v1/{kind}?watch=1", "GET"},
    [ROUTE_CREATE] = {"/v1/{kind}", "POST"},
    [ROUTE_GET] = {"/v1/{kind}/{name}", "GET"},
    [ROUTE_REPLACE] = {"/v1/{kind}/{name}", "PUT"},
    [ROUTE_DELETE] = {"/v1/{kind}/{name}", "DELETE"},
    [ROUTE_POLICY_CHECK] = {"/v1/policy/check", "POST"},
    [ROUTE_AUTH_TOKEN] = {"/v1/auth/token", "POST"},
    [ROUTE_AUTH_REFRESH] = {"/v1/auth/refresh", "POST"},
    [ROUTE_AUTH_LOGOUT] = {"/v1/auth/logout", "POST"},
    [ROUTE_AUTH_KEYS] = {"/v1/auth/keys/rotate", "POST"},
    [ROUTE_SESSIONS] = {"/v1/sessions", "any"},
    [ROUTE_JWKS] = {"/.well-known/jwks.json", "GET"},
    [ROUTE_TOKENS] = {"/v1/tokens", "POST"},
    [ROUTE_AUTH_LOGIN] = {"/v1/auth/login", "GET"},
    [ROUTE_AUTH_OIDC] = {"/v1/auth/oidc/*", "any"},
    [ROUTE_AUTH_PASSKEY] = {"/v1/auth/passkey/*", "any"},
    [ROUTE_AUDIT] = {"/v1/audit/{endpoint}", "GET"},
    [ROUTE_KMS] = {"/v1/kms/", "any"},
    [ROUTE_ATTEST] = {"/v1/attest/challenge", "POST"},
    [ROUTE_PROXY_CONFIG] = {"/v1/proxy/config", "GET"},
    [ROUTE_USER_KEYS] = {"/v1/users/{name}/keys", "any"},
    [ROUTE_USER_INVITE] = {"/v1/users/{name}/invite", "any"},
    [ROUTE_USER_PASSKEYS] = {"/v1/users/{name}/passkeys", "any"},
    [ROUTE_AUTH_HANDOFF_TAKE] = {"/v1/auth/handoff/take", "POST"},
    [ROUTE_DATASET_DATA] = {"/v1/datasets/{name}/data", "any"},
    [ROUTE_ENCLAVE_LOGS] = {"/v1/enclaves/{name}/logs", "GET"},
    [ROUTE_ENCLAVE_SECRET_RELEASE] = {"/v1/enclaves/{name}/secret-release", "POST"},
    [ROUTE_JOB_APPROVALS] = {"/v1/jobs/{name}/approvals", "any"},
    [ROUTE_JOB_REJECTIONS] = {"/v1/jobs/{name}/rejections", "POST"},
    [ROUTE_JOB_VETOES] = {"/v1/jobs/{name}/vetoes", "POST"},
    [ROUTE_JOB_ENGINE] = {"/v1/jobs/engine", "GET"},
    [ROUTE_JOB_RUNS] = {"/v1/jobs/{name}/runs", "POST"},
    [ROUTE_JOB_RESULT] = {"/v1/jobs/{name}/result", "GET"},
    [ROUTE_JOB_RUN_IO] = {"/v1/job-runs/", "any"},
    [ROUTE_NOTIFICATIONS] = {"/v1/notifications", "any"},
    [ROUTE_ME] = {"/v1/me/services", "GET"},
    [ROUTE_REFERRERS] = {"/v1/{kind}/{name}/referrers", "GET"},
    [ROUTE_VERSION] = {"/v1/version", "GET"},
    [ROUTE_OTHER] = {"other", "any"},
};

/* The statuses the API answers with; anything else is counted as "other". */
static const int statuses[] = {200, 201, 302, 400, 401, 403, 404, 405, 409, 410, 413, 415, 429, 500, 502, 503, 507};
#define N_STATUS (ELEMENTSOF(statuses) + 1)

static const double buckets_s[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
#define N_BUCKETS ELEMENTSOF(buckets_s)

static _Atomic uint64_t requests[ROUTE_COUNT_][N_STATUS];
static _Atomic uint64_t latency_buckets[ROUTE_COUNT_][N_BUCKETS];
static _Atomic uint64_t latency_count[ROUTE_COUNT_];
static _Atomic uint64_t latency_sum_ns[ROUTE_COUNT_];
static _Atomic uint64_t kms_calls;
static _Atomic uint64_t notify_counts[NOTIFY_METRIC_COUNT_];

void metrics_count_notify(notify_metric m)
{
    atomic_fetch_add_explicit(&notify_counts[m], 1, memory_order_relaxed);
}

void metrics_count_kms_call(void)
{
    atomic_fetch_add_explicit(&kms_calls, 1, memory_order_relaxed);
}

const char *metrics_route_path(api_route route)
{
    return route_labels[route].path;
}

const char *metrics_route_method(api_route route)
{
    return route_labels[route].method;
}

void metrics_observe(api_route route, int status, uint64_t duration_ns)
{
    size_t s = ELEMENTSOF(statuses);
    for (size_t i = 0; i < ELEMENTSOF(statuses); i++)
        if (statuses[i] == status) {
            s = i;
            break;
        }
    atomic_fetch_add_explicit(&requests[route][s], 1, memory_order_relaxed);
    double secs = (double)duration_ns / 1e9;
    for (size_t b = 0; b < N_BUCKETS; b++)
        if (secs <= buckets_s[b]) {
            atomic_fetch_add_explicit(&latency_buckets[route][b], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&latency_count[route], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&latency_sum_ns[route], duration_ns, memory_order_relaxed);
}

int metrics_render(strbuf *out)
{
    int r = strbuf_puts(out, "# HELP cloister_api_requests_total API requests by route, method and status.\n"
                             "# TYPE cloister_api_requests_total counter\n");
    for (int rt = 0; rt < ROUTE_COUNT_ && r == 0; rt++)
        for (size_t s = 0; s < N_STATUS && r == 0; s++) {
            uint64_t n = atomic_load_explicit(&requests[rt][s], memory_order_relaxed);
            if (!n)
                continue;
            char status[8];
            if (s < ELEMENTSOF(statuses))
                snprintf(status, sizeof(status), "%d", statuses[s]);
            else
                snprintf(status, sizeof(status), "other");
            r = strbuf_printf(out, "cloister_api_requests_total{route=\"%s\",method=\"%s\",status=\"%s\"} %llu\n",
                              route_labels[rt].path, route_labels[rt].method, status, (unsigned long long)n);
        }
    if (r == 0)
        r = strbuf_puts(out, "# HELP cloister_api_request_duration_seconds API request latency by route.\n"
                             "# TYPE cloister_api_request_duration_seconds histogram\n");
    for (int rt = 0; rt < ROUTE_COUNT_ && r == 0; rt++) {
        uint64_t count = atomic_load_explicit(&latency_count[rt], memory_order_relaxed);
        if (!count)
            continue;
        uint64_t cumulative = 0;
        for (size_t b = 0; b < N_BUCKETS && r == 0; b++) {
            cumulative += atomic_load_explicit(&latency_buckets[rt][b], memory_order_relaxed);
            r = strbuf_printf(out,
                              "cloister_api_request_duration_seconds_bucket{route=\"%s\",method=\"%s\",le=\"%g\"} %llu\n",
                              route_labels[rt].path, route_labels[rt].method, buckets_s[b],
                              (unsigned long long)cumulative);
        }
        if (r == 0)
            r = strbuf_printf(out,
                              "cloister_api_request_duration_seconds_bucket{route=\"%s\",method=\"%s\",le=\"+Inf\"} %llu\n"
                              "cloister_api_request_duration_seconds_sum{route=\"%s\",method=\"%s\"} %.9f\n"
                              "cloister_api_request_duration_seconds_count{route=\"%s\",method=\"%s\"} %llu\n",
                              route_labels[rt].path, route_labels[rt].method, (unsigned long long)count,
                              route_labels[rt].path, route_labels[rt].method,
                              (double)atomic_load_explicit(&latency_sum_ns[rt], memory_order_relaxed) / 1e9,
                              route_labels[rt].path, route_labels[rt].method, (unsigned long long)count);
    }
    if (r == 0)
        r = strbuf_printf(out,
                          "# HELP cloister_audit_events_dropped_total Audit events that did not reach the audit role "
                          "(each was written to the log instead).\n"
                          "# TYPE cloister_audit_events_dropped_total counter\n"
                          "cloister_audit_events_dropped_total %llu\n"
                          "# HELP cloister_api_kms_calls_total Calls of the API to the KMS role (key operations, "
                          "Secret values sealed and compared).\n"
                          "# TYPE cloister_api_kms_calls_total counter\n"
                          "cloister_api_kms_calls_total %llu\n",
                          (unsigned long long)audit_event_dropped(),
                          (unsigned long long)atomic_load_explicit(&kms_calls, memory_order_relaxed));
    if (r == 0)
        r = strbuf_printf(out,
                          "# HELP cloister_peer_tls_connections_total Mutual-TLS connections the api process opened "
                          "to a role in another process (one handshake each; a kept connection serves many calls).\n"
                          "# TYPE cloister_peer_tls_connections_total counter\n"
                          "cloister_peer_tls_connections_total{role=\"kms\"} %llu\n"
                          "cloister_peer_tls_connections_total{role=\"audit\"} %llu\n"
                          "cloister_peer_tls_connections_total{role=\"runner\"} %llu\n",
                          (unsigned long long)peer_tls_connections("kms"),
                          (unsigned long long)peer_tls_connections("audit"),
                          (unsigned long long)peer_tls_connections("runner"));
#define NOTIFY_COUNT(m) (unsigned long long)atomic_load_explicit(&notify_counts[m], memory_order_relaxed)
    if (r == 0)
        r = strbuf_printf(out,
                          "# HELP cloister_notifications_total Notifications by outcome: created (stored for a "
                          "user) or dropped (the queue to store them was full).\n"
                          "# TYPE cloister_notifications_total counter\n"
                          "cloister_notifications_total{outcome=\"created\"} %llu\n"
                          "cloister_notifications_total{outcome=\"dropped\"} %llu\n"
                          "# HELP cloister_webhook_deliveries_total Webhook delivery attempts by outcome: ok "
                          "(2xx), retried (failed, tried again later), failed (given up).\n"
                          "# TYPE cloister_webhook_deliveries_total counter\n"
                          "cloister_webhook_deliveries_total{outcome=\"ok\"} %llu\n"
                          "cloister_webhook_deliveries_total{outcome=\"retried\"} %llu\n"
                          "cloister_webhook_deliveries_total{outcome=\"failed\"} %llu\n",
                          NOTIFY_COUNT(NOTIFY_METRIC_CREATED), NOTIFY_COUNT(NOTIFY_METRIC_DROPPED),
                          NOTIFY_COUNT(NOTIFY_METRIC_WEBHOOK_OK), NOTIFY_COUNT(NOTIFY_METRIC_WEBHOOK_RETRIED),
                          NOTIFY_COUNT(NOTIFY_METRIC_WEBHOOK_FAILED));
#undef NOTIFY_COUNT
    return r;
}

/* The entry of role NAME in ROLES, or NULL. */
static const role_health *role_entry(const role_health *roles, size_t n, const char *name)
{
    for (size_t i = 0; roles && i < n; i++)
        if (roles[i].name && strcmp(roles[i].name, name) == 0)
            return &roles[i];
    return NULL;
}

int metrics_render_roles(const role_health *roles, size_t n, strbuf *out)
{
    static const char *const op_names[ROLE_KMS_OPS] = ROLE_KMS_OP_NAMES;
    static const char *const outcome_names[ROLE_KMS_OUTCOMES] = ROLE_KMS_OUTCOME_NAMES;
    int r = strbuf_puts(out, "# HELP cloister_role_ready Whether a role of cloisterd serves (1) or is starting (0).\n"
                             "# TYPE cloister_role_ready gauge\n");
    for (size_t i = 0; roles && i < n && r == 0; i++)
        if (atomic_load(&roles[i].wanted))
            r = strbuf_printf(out, "cloister_role_ready{role=\"%s\"} %d\n", roles[i].name,
                              atomic_load(&roles[i].ready) ? 1 : 0);
    if (r == 0)
        r = strbuf_puts(out, "# HELP cloister_role_restarts_total Times the supervisor restarted a role that died.\n"
                             "# TYPE cloister_role_restarts_total counter\n");
    for (size_t i = 0; roles && i < n && r == 0; i++)
        if (atomic_load(&roles[i].wanted))
            r = strbuf_printf(out, "cloister_role_restarts_total{role=\"%s\"} %llu\n", roles[i].name,
                              (unsigned long long)atomic_load(&roles[i].restarts));
    const role_health *kms = role_entry(roles, n, "kms");
    if (r == 0 && kms && atomic_load(&kms->wanted)) {
        r = strbuf_printf(out,
                          "# HELP cloister_kms_sealed Whether the KMS's root key is sealed (1: every key operation "
                          "is refused until `cloisterd unseal`).\n"
                          "# TYPE cloister_kms_sealed gauge\n"
                          "cloister_kms_sealed %d\n"
                          "# HELP cloister_kms_operations_total Key operations the KMS answered, by operation and "
                          "outcome (success, refused: a 4xx, sealed, error).\n"
                          "# TYPE cloister_kms_operations_total counter\n",
                          atomic_load(&kms->sealed) ? 1 : 0);
        for (size_t op = 0; op < ROLE_KMS_OPS && r == 0; op++)
            for (size_t o = 0; o < ROLE_KMS_OUTCOMES && r == 0; o++) /* all from 0: rate() sees each first increase */
                r = strbuf_printf(out, "cloister_kms_operations_total{operation=\"%s\",outcome=\"%s\"} %llu\n",
                                  op_names[op], outcome_names[o],
                                  (unsigned long long)atomic_load_explicit(&kms->kms_ops[op][o], memory_order_relaxed));
    }
    const role_health *audit = role_entry(roles, n, "audit");
    if (r == 0 && audit && atomic_load(&audit->wanted))
        r = strbuf_printf(out,
                          "# HELP cloister_audit_entries_appended_total Entries appended to the audit log (its "
                          "size).\n"
                          "# TYPE cloister_audit_entries_appended_total counter\n"
                          "cloister_audit_entries_appended_total %llu\n"
                          "# HELP cloister_audit_append_errors_total Append batches the audit role refused because "
                          "the log could not be written.\n"
                          "# TYPE cloister_audit_append_errors_total counter\n"
                          "cloister_audit_append_errors_total %llu\n",
                          (unsigned long long)atomic_load(&audit->audit_entries),
                          (unsigned long long)atomic_load(&audit->audit_append_errors));
    return r;
}
