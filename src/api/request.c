#include "api/request.h"
#include "api/span.h"

#include "api/handlers-attest.h"
#include "api/handlers-datasets.h"
#include "api/handlers-enclaves.h"
#include "api/handlers-job-runs.h"
#include "api/handlers-jobs.h"
#include "api/handlers-keys.h"
#include "api/handlers-me.h"
#include "api/handlers-notifications.h"
#include "api/handlers-passkeys.h"
#include "api/handlers-kms.h"
#include "api/handlers-audit.h"
#include "api/auth.h"
#include "api/handlers-policy.h"
#include "api/handlers-proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "audit/event.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "policy/policy.h"

/* Components that serve their own endpoints add one entry each. */
const api_endpoint_group api_endpoint_groups[] = {
    {"/v1/policy/", ROUTE_POLICY_CHECK, API_GROUP_AUTHENTICATED, api_handle_policy},
    {"/.well-known/jwks.json", ROUTE_JWKS, API_GROUP_PUBLIC, api_auth_handle_jwks},
    {"/v1/auth/keys", ROUTE_AUTH_KEYS, API_GROUP_AUTHENTICATED, api_auth_handle_keys}, /* before /v1/auth/ */
    {"/v1/auth/oidc/", ROUTE_AUTH_OIDC, API_GROUP_PUBLIC, api_oidc_handle}, /* before /v1/auth/ */
    {"/v1/auth/login", ROUTE_AUTH_LOGIN, API_GROUP_PUBLIC, api_auth_login_handle}, /* before /v1/auth/ */
    {"/v1/auth/passkey/", ROUTE_AUTH_PASSKEY, API_GROUP_PUBLIC, api_passkey_handle}, /* before /v1/auth/ */
    {"/v1/auth/", ROUTE_AUTH_TOKEN, API_GROUP_PUBLIC, api_auth_handle},
    {"/v1/sessions", ROUTE_SESSIONS, API_GROUP_PUBLIC, api_auth_handle_sessions}, /* authenticates itself */
    {"/v1/tokens", ROUTE_TOKENS, API_GROUP_AUTHENTICATED, api_auth_handle_tokens},
    {"/v1/audit/", ROUTE_AUDIT, API_GROUP_AUTHENTICATED, api_handle_audit},
    {"/v1/kms/", ROUTE_KMS, API_GROUP_AUTHENTICATED, api_handle_kms},
    {"/v1/attest/", ROUTE_ATTEST, API_GROUP_AUTHENTICATED, api_handle_attest},
    {"/v1/me/", ROUTE_ME, API_GROUP_AUTHENTICATED, api_handle_me}, /* the caller's own */
    {"/v1/notifications", ROUTE_NOTIFICATIONS, API_GROUP_AUTHENTICATED, api_handle_notifications}, /* the caller's own */
    {"/v1/job-runs/", ROUTE_JOB_RUN_IO, API_GROUP_AUTHENTICATED, api_handle_job_run_io}, /* the runner's identity only */
    {"/v1/proxy/", ROUTE_PROXY_CONFIG, API_GROUP_PUBLIC, api_handle_proxy}, /* authenticates itself; its own identity only */
    {NULL, ROUTE_OTHER, API_GROUP_PUBLIC, NULL},
};
const size_t api_n_endpoint_groups = ELEMENTSOF(api_endpoint_groups) - 1;

/* Components that serve a sub-resource of a kind's objects add one entry each. */
const api_subresource api_subresources[] = {
    {"users", "keys", ROUTE_USER_KEYS, api_handle_user_keys},
    {"users", "invite", ROUTE_USER_INVITE, api_handle_user_invite},
    {"users", "passkeys", ROUTE_USER_PASSKEYS, api_handle_user_passkeys},
    {"datasets", "data", ROUTE_DATASET_DATA, api_handle_dataset_data},
    {"enclaves", "logs", ROUTE_ENCLAVE_LOGS, api_handle_enclave_logs},
    {"enclaves", "secret-release", ROUTE_ENCLAVE_SECRET_RELEASE, api_handle_enclave_secret_release}, /* the runner's identity */
    {"jobs", "approvals", ROUTE_JOB_APPROVALS, api_handle_job_approvals},
    {"jobs", "rejections", ROUTE_JOB_REJECTIONS, api_handle_job_rejections},
    {"jobs", "vetoes", ROUTE_JOB_VETOES, api_handle_job_vetoes},
    {"jobs", "runs", ROUTE_JOB_RUNS, api_handle_job_runs},
    {"jobs", "result", ROUTE_JOB_RESULT, api_handle_job_result},
};
const size_t api_n_subresources = ELEMENTSOF(api_subresources);

void caller_clear(caller *c)
{
    json_decref(c->user);
    json_decref(c->credential);
    json_decref(c->session);
    *c = (caller){0};
}

const char *doc_name(const json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
}

const char *caller_name(const caller *c)
{
    return c->user ? doc_name(c->user) : "";
}

int api_offload(api_request *r, offload_pool *pool, offload_job *job, api_error *err)
{
    api_thread *t = httpd_thread_state(r->req);
    int e = offload_submit(pool, t->offload, r->req, job);
    if (e == -EAGAIN)
        return api_fail(err, 503, "unavailable", "too many calls to other services in progress; try again");
    if (e < 0)
        return api_fail(err, 503, "unavailable", "the server is stopping; try again");
    return 0;
}

void api_finish(api_route route, uint64_t started, int status)
{
    api_span_route(route, NULL);
    metrics_observe(route, status, time_mono_ns() - started);
}

void api_respond_json(h2o_req_t *req, api_route route, uint64_t started, int status, const json_t *value)
{
    api_span_route(route, req); /* before sending: the span may end with it */
    api_send_json(req, status, value);
    api_finish(route, started, status);
}

void api_respond_error(h2o_req_t *req, api_route route, uint64_t started, const api_error *err)
{
    api_span_route(route, req);
    api_send_error(req, err);
    api_finish(route, started, err->status);
}

bool api_method_is(const h2o_req_t *req, const char *method)
{
    return h2o_memis(req->method.base, req->method.len, method, strlen(method));
}

void api_method_not_allowed(h2o_req_t *req, api_route route, uint64_t started, const char *allowed)
{
    api_error err;
    api_fail(&err, 405, "method_not_allowed", "%.*s is not allowed here; use %s", (int)req->method.len,
             req->method.base, allowed);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allowed, strlen(allowed));
    api_respond_error(req, route, started, &err);
}

void api_origin_of(h2o_req_t *req, api_origin *o)
{
    httpd_peer_ip(req, o->ip, sizeof(o->ip));
    snprintf(o->method, sizeof(o->method), "%.*s", (int)MIN(req->method.len, sizeof(o->method) - 1),
             req->method.base);
    snprintf(o->path, sizeof(o->path), "%.*s", (int)MIN(req->path_normalized.len, sizeof(o->path) - 1),
             req->path_normalized.base);
}

void api_report_decision_at(const api_origin *o, const caller *c, const char *verb, const char *kind,
                            const char *name, const api_error *err)
{
    log_fields(LOG_LEVEL_INFO, "API request refused", "reason", err->message, "user", caller_name(c), "verb", verb,
               "kind", kind, "name", name, "ip", o->ip, NULL);
    json_t *details = json_pack("{s:s, s:s, s:i, s:s, s:{s:s, s:s, s:s}}", "method", o->method, "path", o->path,
                                "status", err->status, "reason", err->message, "api", "verb", verb, "kind", kind,
                                "name", name);
    audit_event_emit(&(audit_event){.action = "api.access", .user = c->user ? caller_name(c) : NULL, .ip = o->ip,
                                    .kind = kind[0] ? kind : NULL, .name = name[0] ? name : NULL,
                                    .outcome = "denied", .details = details});
    json_decref(details);
}

void api_report_decision(h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name,
                         const api_error *err)
{
    api_origin o;
    api_origin_of(req, &o);
    api_report_decision_at(&o, c, verb, kind, name, err);
}

/* Fills ERR with the 403 of a refused decision; returns -1. */
static int fail_forbidden(api_error *err, const caller *c, const char *verb, const char *kind, const char *name,
                          const char *reason)
{
    return api_fail(err, 403, "forbidden", "%s %s%s%s by user %s is denied: %s", verb, kind, name[0] ? "/" : "",
                    name, caller_name(c), reason);
}

int api_refuse(h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name,
               const char *reason, api_error *err)
{
    fail_forbidden(err, c, verb, kind, name, reason);
    api_report_decision(req, c, verb, kind, name, err);
    return -1;
}

int api_refuse_quietly(h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name,
                       const char *reason, api_error *err)
{
    api_refuse(req, c, verb, kind, name, reason, err);
    return fail_forbidden(err, c, verb, kind, name, POLICY_REASON_DEFAULT_DENY);
}

void api_report_refusal(h2o_req_t *req, const caller *c, const api_error *err)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(req, ip, sizeof(ip));
    log_fields(LOG_LEVEL_INFO, "API request refused", "reason", err->message, "user", caller_name(c), "ip", ip, NULL);
    json_t *details = json_pack("{s:s#, s:s#, s:i, s:s}", "method", req->method.base, (int)req->method.len, "path",
                                req->path_normalized.base, (int)MIN(req->path_normalized.len, (size_t)1024),
                                "status", err->status, "reason", err->message);
    audit_event_emit(&(audit_event){.action = "api.access", .user = c->user ? caller_name(c) : NULL, .ip = ip,
                                    .outcome = "denied", .details = details});
    json_decref(details);
}
