/* The API and the policy engine (see handlers-policy.h). */
#include "api/handlers-policy.h"
#include "api/span.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api/handlers-datasets.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "policy/policy-http.h"
#include "policy/policy-source.h"
#include "policy/policy.h"
#include "store/store.h"

#define CHECK_HEADERS_MAX 64   /* headers a what-if request may carry */
#define CTX_ARENA_MAX (256u * 1024u)

/* Fills ctx.request.http from REQ as the proxy does (policy/policy-http.h),
 * on h2o's normalised path and the raw query; values borrowed from REQ or
 * allocated from A. Returns 0 or -ENOMEM. */
static int set_http(policy_request *pr, h2o_req_t *req, cel_arena *a)
{
    h2o_iovec_t query = req->query_at != SIZE_MAX
                            ? h2o_iovec_init(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1)
                            : h2o_iovec_init(NULL, 0);
    return policy_request_set_http(pr, req, req->path_normalized, query, a);
}

/* Fills ctx.session from SESSION, the Session of the access token an API
 * call was made with: a client's, never a browser's (the API reads no
 * cookie). */
static void set_session(policy_request *pr, const json_t *session)
{
    const json_t *meta = json_object_get(session, "metadata"), *spec = json_object_get(session, "spec");
    int64_t created = 0, expires = 0;
    time_parse_rfc3339(json_string_value(json_object_get(meta, "createdAt")), &created);
    time_parse_rfc3339(json_string_value(json_object_get(spec, "expiresAt")), &expires);
    policy_request_set_session(pr, session, created, expires, false);
}

/* Decides PR with the store's current policies into *ret. Returns 0, or -1
 * with ERR filled (500) when no decision could be made. */
static int decide(api_server *srv, const policy_request *pr, policy_decision *ret, api_error *err)
{
    policy_set *set;
    int e = policy_source_get(srv->policies, &set);
    if (e < 0)
        return api_fail(err, 500, "internal", "the policies could not be loaded (%s); the request is denied",
                        strerror(-e));
    cel_arena *scratch = cel_arena_new(POLICY_ARENA_MAX);
    e = scratch ? policy_decide(set, pr, scratch, ret) : -ENOMEM;
    cel_arena_free(scratch);
    policy_set_unref(set);
    if (e < 0)
        return api_fail(err, 500, "internal", "the request could not be decided (%s); it is denied", strerror(-e));
    return 0;
}

/* Decides VERB on KIND/NAME for caller C; see api_authorize(). REPORT: a
 * refusal is an audit entry. */
static int authorize(api_server *srv, h2o_req_t *req, const caller *c, const char *verb, const char *kind,
                     const char *name, bool report, api_error *err)
{
    if (api_member_allows(srv, c, verb, kind, name, NULL)) {
        if (report)
            api_span_decision(caller_name(c), verb, kind, name, true);
        return 0; /* a workspace member's implicit rights (handlers-datasets.h) */
    }
    policy_request pr;
    policy_request_init(&pr);
    cel_arena *values = cel_arena_new(CTX_ARENA_MAX);
    if (!values)
        return api_fail(err, 500, "internal", "out of memory; the request is denied");
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(req, ip, sizeof(ip));
    policy_request_set_string(&pr, POLICY_VAR_REQUEST_IP, ip);
    policy_request_set_string(&pr, POLICY_VAR_API_VERB, verb);
    policy_request_set_string(&pr, POLICY_VAR_API_KIND, kind);
    policy_request_set_string(&pr, POLICY_VAR_API_NAME, name);
    pr.credential = c->credential ? doc_name(c->credential) : NULL;
    if (c->session)
        set_session(&pr, c->session);
    int r = 0;
    if (policy_request_set_user(&pr, c->user, values) < 0 || set_http(&pr, req, values) < 0)
        r = api_fail(err, 500, "internal", "out of memory; the request is denied");
    policy_decision d;
    if (r == 0 && decide(srv, &pr, &d, err) < 0)
        r = -1;
    cel_arena_free(values);
    if (report) /* the decision the request's span records (what-if checks are not) */
        api_span_decision(caller_name(c), verb, kind, name, r == 0 && d.allow);
    if (r == 0 && d.allow)
        return 0;
    if (r == 0)
        return report ? api_refuse(req, c, verb, kind, name, d.reason, err) : -1;
    if (report)
        api_report_decision(req, c, verb, kind, name, err);
    return -1;
}

int api_authorize(api_server *srv, h2o_req_t *req, const caller *c, const char *verb, const char *kind,
                  const char *name, api_error *err)
{
    return authorize(srv, req, c, verb, kind, name, true, err);
}

bool api_may(api_server *srv, h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name)
{
    api_error ignored;
    return authorize(srv, req, c, verb, kind, name, false, &ignored) == 0;
}

int api_fail_absent(api_server *srv, h2o_req_t *req, const caller *c, const char *verb, const char *kind,
                    const char *name, api_error *err)
{
    if (api_may(srv, req, c, "get", kind, name))
        return api_fail(err, 404, "not_found", "%s %s not found", kind, name);
    return api_refuse_quietly(req, c, verb, kind, name, "it does not exist, and the caller may not get it", err);
}

int api_check_policies(const json_t *doc, api_error *err)
{
    policy_problem p;
    int e = policy_validate_document(doc, &p);
    if (e == -ENOMEM)
        return api_fail(err, 500, "internal", "out of memory");
    if (e < 0) {
        api_fail(err, 400, "invalid", "%s: %u:%u: %s", p.field, p.line, p.column, p.message);
        snprintf(err->field, sizeof(err->field), "%s", p.field);
        return -1;
    }
    return 0;
}

/* The string member NAME of the what-if body, "" when absent; -1 with ERR
 * when present but not a string. */
static int body_string(const json_t *body, const char *name, const char **ret, api_error *err)
{
    const json_t *v = json_object_get(body, name);
    if (!v) {
        *ret = "";
        return 0;
    }
    if (!json_is_string(v) || !policy_text_valid(json_string_value(v), json_string_length(v)) ||
        json_string_length(v) > 8192)
        return api_fail(err, 400, "invalid", "%s must be a UTF-8 string of at most 8192 bytes", name);
    *ret = json_string_value(v);
    return 0;
}

/* Checks that Credential NAME, named in a what-if for USER, is USER's: the
 * rules attached to someone else's credential are not told by a check. A
 * credential that does not exist or is another user's is a 404 or 400 to a
 * caller who may get it, the 403 of a forbidden object otherwise. Returns 0
 * or -1 with ERR. */
static int check_credential(api_request *r, const char *user, const char *name, api_error *err)
{
    _cleanup_(json_decrefp) json_t *cred = NULL;
    int e = store_get(r->server->cfg->store, "Credential", name, &cred);
    if (e < 0 && e != -ENOENT)
        return api_fail_store(err, e, "Credential", name);
    const char *owner = json_string_value(json_object_get(json_object_get(cred, "spec"), "user"));
    if (owner && strcmp(owner, user) == 0)
        return 0;
    if (e == -ENOENT)
        return api_fail_absent(r->server, r->req, r->caller, "get", "Credential", name, err);
    if (api_may(r->server, r->req, r->caller, "get", "Credential", name))
        return api_fail(err, 400, "invalid", "credential %s is not user %s's", name, user);
    return api_refuse_quietly(r->req, r->caller, "get", "Credential", name,
                              "a what-if named another user's credential", err);
}

/* Fills the what-if request PR from BODY (borrowed values) and the store.
 * USER and SERVICE documents are returned for the caller to release. A
 * check for another user is decided as `check` on User U before U is looked
 * up; a user, service or credential that does not exist is told only to a
 * caller who may get it (api_fail_absent()), so no check enumerates them. */
static int check_request(api_request *r, const json_t *body, policy_request *pr, cel_arena *a, json_t **ret_user,
                         json_t **ret_service, api_error *err)
{
    api_server *srv = r->server;
    const char *user, *service, *method, *path, *ip, *credential, *query, *host, *verb, *kind, *name;
    if (body_string(body, "user", &user, err) < 0 || body_string(body, "service", &service, err) < 0 ||
        body_string(body, "method", &method, err) < 0 || body_string(body, "path", &path, err) < 0 ||
        body_string(body, "ip", &ip, err) < 0 || body_string(body, "credential", &credential, err) < 0 ||
        body_string(body, "query", &query, err) < 0 || body_string(body, "host", &host, err) < 0)
        return -1;
    const json_t *api = json_object_get(body, "api");
    if (api && !json_is_object(api))
        return api_fail(err, 400, "invalid", "api must be an object {verb, kind, name}");
    if (body_string(api, "verb", &verb, err) < 0 || body_string(api, "kind", &kind, err) < 0 ||
        body_string(api, "name", &name, err) < 0)
        return -1;
    if (!*user)
        return api_fail(err, 400, "invalid", "user is required");
    bool self = strcmp(user, caller_name(r->caller)) == 0;
    if (!self && api_authorize(srv, r->req, r->caller, "check", "User", user, err) < 0)
        return -1;
    int e = store_get(srv->cfg->store, "User", user, ret_user);
    if (e == -ENOENT)
        return api_fail_absent(srv, r->req, r->caller, "check", "User", user, err);
    if (e < 0)
        return api_fail_store(err, e, "User", user);
    if (*service) {
        e = store_get(srv->cfg->store, "Service", service, ret_service);
        if (e == -ENOENT)
            return api_fail_absent(srv, r->req, r->caller, "get", "Service", service, err);
        if (e < 0)
            return api_fail_store(err, e, "Service", service);
    }
    if (*credential && check_credential(r, user, credential, err) < 0)
        return -1;
    const json_t *headers = json_object_get(body, "headers");
    if (headers && (!json_is_object(headers) || json_object_size(headers) > CHECK_HEADERS_MAX))
        return api_fail(err, 400, "invalid", "headers must be an object of at most %d strings", CHECK_HEADERS_MAX);
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)headers, k, v) if (!json_is_string(v)) return api_fail(
        err, 400, "invalid", "headers.%s must be a string", k);
    if (policy_request_set_user(pr, *ret_user, a) < 0 ||
        (*ret_service && policy_request_set_service(pr, *ret_service, a) < 0) ||
        (headers && policy_value_from_json(headers, a, &pr->vars[POLICY_VAR_HTTP_HEADERS]) < 0))
        return api_fail(err, 500, "internal", "out of memory");
    policy_request_set_string(pr, POLICY_VAR_HTTP_METHOD, *method ? method : "GET");
    policy_request_set_string(pr, POLICY_VAR_HTTP_PATH, *path ? path : "/");
    policy_request_set_string(pr, POLICY_VAR_HTTP_QUERY, query);
    policy_request_set_string(pr, POLICY_VAR_HTTP_HOST, host);
    policy_request_set_string(pr, POLICY_VAR_HTTP_SCHEME, "https");
    policy_request_set_string(pr, POLICY_VAR_REQUEST_IP, ip);
    policy_request_set_string(pr, POLICY_VAR_API_VERB, verb);
    policy_request_set_string(pr, POLICY_VAR_API_KIND, kind);
    policy_request_set_string(pr, POLICY_VAR_API_NAME, name);
    pr->credential = *credential ? credential : NULL;
    return 0;
}

/* POST /v1/policy/check: decides a described request as the proxy or the
 * API would and answers {allow, decision, policy, rule, reason}. A check
 * for oneself needs no right; for another user, `check` on that User. */
static int handle_check(api_request *r, api_error *err)
{
    json_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    if (!json_is_object(body)) {
        json_decref(body);
        return api_fail(err, 400, "invalid", "the body must be a JSON object");
    }
    json_t *user = NULL, *service = NULL;
    policy_request pr;
    policy_request_init(&pr);
    cel_arena *values = cel_arena_new(CTX_ARENA_MAX);
    int e = values ? 0 : api_fail(err, 500, "internal", "out of memory");
    policy_decision d;
    if (e == 0)
        e = check_request(r, body, &pr, values, &user, &service, err);
    if (e == 0)
        e = decide(r->server, &pr, &d, err);
    if (e == 0) {
        json_t *out = json_pack("{s:b, s:s, s:s, s:s, s:s}", "allow", d.allow, "decision", d.allow ? "allow" : "deny",
                                "policy", d.policy, "rule", d.rule, "reason", d.reason);
        api_respond_json(r->req, r->route, r->started, 200, out);
        json_decref(out);
    }
    cel_arena_free(values);
    json_decref(user);
    json_decref(service);
    json_decref(body);
    return e;
}

int api_handle_policy(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (!h2o_memis(rest, rest_len, H2O_STRLIT("check")))
        return api_fail(err, 404, "not_found", "no such endpoint: /v1/policy/%.*s", (int)MIN(rest_len, (size_t)200),
                        rest);
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "POST");
        return 0;
    }
    return handle_check(r, err);
}

/* The entry of Service DOC in a caller's list: its name, its own host
 * <name>.<domain> and https URL there (through the proxy's PROXY_PORT, left
 * out when 0 or 443), its other hosts, and how to connect from a terminal
 * (connect.cli, connect.curl). */
static json_t *service_entry(const json_t *doc, const char *domain, unsigned proxy_port)
{
    const char *name = doc_name(doc);
    json_t *hosts = json_object_get(json_object_get(doc, "spec"), "hosts");
    char host[320], port[16] = "";
    snprintf(host, sizeof(host), "%s.%s", name, domain && *domain ? domain : "localhost");
    if (proxy_port && proxy_port != 443)
        snprintf(port, sizeof(port), ":%u", proxy_port);
    char url[360], cli[300], curl[440];
    snprintf(url, sizeof(url), "https://%s%s/", host, port);
    snprintf(cli, sizeof(cli), "cloister connect %s", name);
    snprintf(curl, sizeof(curl), "curl -H \"Authorization: Bearer $(cloister token access)\" %s", url);
    return json_pack("{s:s, s:s, s:s, s:O*, s:b, s:{s:s, s:s}}", "name", name, "host", host, "url", url, "hosts",
                     hosts, "portal",
                     json_is_true(json_object_get(json_object_get(json_object_get(doc, "spec"), "upstream"), "portal")),
                     "connect", "cli", cli, "curl", curl);
}

int api_reachable_services(api_server *srv, const caller *c, json_t **ret, int64_t *ret_revision, api_error *err)
{
    json_auto_t *items = NULL;
    int64_t revision;
    int e = store_list(srv->cfg->store, "Service", &items, &revision);
    if (e < 0)
        return api_fail_store(err, e, "Service", "*");
    json_auto_t *out = json_array();
    cel_arena *values = cel_arena_new(CTX_ARENA_MAX);
    if (!out || !values) {
        cel_arena_free(values);
        return api_fail(err, 500, "internal", "out of memory");
    }
    const char *credential = c->credential ? doc_name(c->credential) : NULL;
    size_t i;
    json_t *doc;
    json_array_foreach(items, i, doc)
    {
        cel_arena_reset(values);
        policy_request pr;
        policy_request_init(&pr);
        policy_decision d;
        char host[320];
        snprintf(host, sizeof(host), "%s.%s", doc_name(doc), srv->cfg->domain ? srv->cfg->domain : "");
        if (policy_request_set_user(&pr, c->user, values) < 0 || policy_request_set_service(&pr, doc, values) < 0) {
            e = api_fail(err, 500, "internal", "out of memory");
            break;
        }
        if (c->session)
            set_session(&pr, c->session);
        pr.credential = credential;
        policy_request_set_string(&pr, POLICY_VAR_HTTP_METHOD, "GET");
        policy_request_set_string(&pr, POLICY_VAR_HTTP_PATH, "/");
        policy_request_set_string(&pr, POLICY_VAR_HTTP_HOST, host);
        policy_request_set_string(&pr, POLICY_VAR_HTTP_SCHEME, "https");
        if ((e = decide(srv, &pr, &d, err)) < 0)
            break;
        if (d.allow && json_array_append_new(out, service_entry(doc, srv->cfg->domain, srv->cfg->proxy_port)) < 0) {
            e = api_fail(err, 500, "internal", "out of memory");
            break;
        }
    }
    cel_arena_free(values);
    if (e < 0)
        return -1;
    *ret = TAKE_PTR(out);
    if (ret_revision)
        *ret_revision = revision;
    return 0;
}
