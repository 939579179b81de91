/* Request metrics of the API in Prometheus text format: a counter per route,
 * method and status, and a latency histogram per route. Lock-free: counters
 * are atomics updated from any event loop. */
#pragma once

#include <stdint.h>

#include "basic/role.h"
#include "basic/strbuf.h"

typedef enum api_route {
    ROUTE_HEALTHZ,
    ROUTE_READYZ,
    ROUTE_METRICS,
    ROUTE_WHOAMI,
    ROUTE_APPLY,
    ROUTE_LIST,
    ROUTE_WATCH,
    ROUTE_CREATE,
    ROUTE_GET,
    ROUTE_REPLACE,
    ROUTE_DELETE,
    ROUTE_POLICY_CHECK,
    ROUTE_AUTH_TOKEN,
    ROUTE_AUTH_REFRESH,
    ROUTE_AUTH_LOGOUT,
    ROUTE_AUTH_KEYS,
    ROUTE_SESSIONS,
    ROUTE_JWKS,
    ROUTE_TOKENS,
    ROUTE_AUTH_LOGIN,
    ROUTE_AUTH_OIDC,
    ROUTE_AUTH_PASSKEY,
    ROUTE_AUDIT,
    ROUTE_KMS,
    ROUTE_ATTEST,
    ROUTE_PROXY_CONFIG,
    ROUTE_USER_KEYS,
    ROUTE_USER_INVITE,
    ROUTE_USER_PASSKEYS,
    ROUTE_AUTH_HANDOFF_TAKE,
    ROUTE_DATASET_DATA,
    ROUTE_ENCLAVE_LOGS,
    ROUTE_ENCLAVE_SECRET_RELEASE,
    ROUTE_JOB_APPROVALS,
    ROUTE_JOB_REJECTIONS,
    ROUTE_JOB_VETOES,
    ROUTE_JOB_ENGINE,
    ROUTE_JOB_RUNS,
    ROUTE_JOB_RESULT,
    ROUTE_JOB_RUN_IO,
    ROUTE_NOTIFICATIONS,
    ROUTE_ME,
    ROUTE_REFERRERS,
    ROUTE_VERSION,
    ROUTE_OTHER,
    ROUTE_COUNT_,
} api_route;

void metrics_observe(api_route route, int status, uint64_t duration_ns);
/* ROUTE's path template ("/v1/{kind}") and method ("GET", or "any"), as the
 * metrics and the spans name it. */
const char *metrics_route_path(api_route route);
const char *metrics_route_method(api_route route);
/* Counts one call of the api role to the kms role (cloister_api_kms_calls_total):
 * a refused request makes none, which tests and operators can see. */
void metrics_count_kms_call(void);
/* What becomes of notifications and their webhook deliveries (notify.h). */
typedef enum notify_metric {
    NOTIFY_METRIC_CREATED,          /* a Notification stored */
    NOTIFY_METRIC_DROPPED,          /* one refused: the queue to store them was full */
    NOTIFY_METRIC_WEBHOOK_OK,       /* a delivery the receiver accepted (2xx) */
    NOTIFY_METRIC_WEBHOOK_RETRIED,  /* a failed attempt to be tried again */
    NOTIFY_METRIC_WEBHOOK_FAILED,   /* a delivery given up (final answer, attempts spent, queue full) */
    NOTIFY_METRIC_COUNT_,
} notify_metric;
/* Counts one M (cloister_notifications_total, cloister_webhook_deliveries_total). */
void metrics_count_notify(notify_metric m);
/* Appends the exposition text to OUT. */
int metrics_render(strbuf *out);
/* Appends what the roles publish in the supervisor's table ROLES (N of
 * them; NULL: nothing) to OUT: cloister_role_ready{role},
 * cloister_role_restarts_total{role}, the KMS's cloister_kms_sealed and
 * cloister_kms_operations_total{operation,outcome}, the audit role's
 * cloister_audit_entries_appended_total (the log's size) and
 * cloister_audit_append_errors_total. Returns 0 or -ENOMEM. */
int metrics_render_roles(const role_health *roles, size_t n, strbuf *out);
