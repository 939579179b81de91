#include "api/span.h"

#include <stdio.h>
#include <string.h>

#include "basic/macro.h"
#include "httpd/httpd.h"
#include "telemetry/telemetry.h"

typedef struct request_span {
    telemetry_span *span;
    h2o_req_t *req;
} request_span;

/* The request's pool is being freed: the answer is known. */
static void request_span_end(void *p)
{
    request_span *rs = p;
    int status = rs->req->res.status;
    telemetry_span_set_attr_int(rs->span, "http.response.status_code", status);
    if (status >= 500 || status == 0)
        telemetry_span_set_status(rs->span, TELEMETRY_STATUS_ERROR, status ? "server error" : "no answer was sent");
    telemetry_span_end(rs->span); /* no longer current either */
}

static void set_iovec(telemetry_span *s, const char *key, h2o_iovec_t v)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "%.*s", (int)MIN(v.len, sizeof(buf) - 1), v.base ? v.base : "");
    telemetry_span_set_attr_str(s, key, buf);
}

void api_span_start(h2o_req_t *req)
{
    if (!telemetry_enabled())
        return;
    /* API callers are authenticated clients and the other roles: their
     * context is the parent (one trace from the runner's launch through the
     * key release); a malformed or repeated one is ignored */
    trace_context parent;
    bool has_parent = false;
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("traceparent"), -1);
    if (i >= 0 && h2o_find_header_by_str(&req->headers, H2O_STRLIT("traceparent"), i) < 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        has_parent = trace_context_parse(v.base, v.len, &parent) == 0;
    }
    char method[16];
    snprintf(method, sizeof(method), "%.*s", (int)MIN(req->method.len, sizeof(method) - 1), req->method.base);
    telemetry_span *s = telemetry_span_start(method, TELEMETRY_SPAN_SERVER, has_parent ? &parent : NULL);
    if (!s)
        return;
    telemetry_span_set_attr_str(s, "http.request.method", method);
    /* the path only: a query may hold what is not to be exported */
    set_iovec(s, "url.path", req->path_normalized);
    telemetry_span_set_attr_str(s, "url.scheme", "https");
    char ip[64];
    httpd_peer_ip(req, ip, sizeof(ip));
    telemetry_span_set_attr_str(s, "client.address", ip);
    telemetry_span_set_attr_str(s, "network.protocol.version",
                                req->version >= 0x200 ? "2" : req->version == 0x101 ? "1.1" : "1.0");
    ssize_t ua = h2o_find_header(&req->headers, H2O_TOKEN_USER_AGENT, -1);
    if (ua >= 0)
        set_iovec(s, "user_agent.original", req->headers.entries[ua].value);
    request_span *rs = h2o_mem_alloc_shared(&req->pool, sizeof(*rs), request_span_end);
    *rs = (request_span){s, req};
    telemetry_set_current(s);
}

void api_span_leave(void)
{
    telemetry_set_current(NULL);
}

void api_span_route(api_route route, const h2o_req_t *req)
{
    telemetry_span *s = telemetry_current();
    if (!s)
        return;
    const char *method = metrics_route_method(route), *path = metrics_route_path(route);
    char name[128];
    if (strcmp(method, "any") != 0)
        snprintf(name, sizeof(name), "%s %s", method, path);
    else if (req) /* a route of several methods: the request's */
        snprintf(name, sizeof(name), "%.*s %s", (int)MIN(req->method.len, (size_t)15), req->method.base, path);
    else
        name[0] = '\0';
    telemetry_span_set_attr_str(s, "http.route", path);
    if (name[0])
        telemetry_span_set_name(s, name);
}

void api_span_decision(const char *user, const char *verb, const char *kind, const char *name, bool allow)
{
    telemetry_span *s = telemetry_current();
    if (!s)
        return;
    if (user && *user)
        telemetry_span_set_attr_str(s, "enduser.id", user);
    telemetry_span_set_attr_str(s, "cloister.verb", verb);
    telemetry_span_set_attr_str(s, "cloister.kind", kind);
    telemetry_span_set_attr_str(s, "cloister.name", name ? name : "");
    telemetry_span_set_attr_str(s, "cloister.decision", allow ? "allow" : "deny");
}
