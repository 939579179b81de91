/* The last stages: an upstream to go to, and the request sent there
 * through its keep-alive pool (see corridor.h). */
#include <stdatomic.h>
#include <string.h>
#include <strings.h>

#include "basic/log.h"
#include "proxy/cookie.h"
#include "proxy/corridor.h"

/* Refuses when the decided request has nowhere to go: an enclave without a
 * running replica (503), a Service whose upstream this proxy cannot reach
 * or whose injected secret is not delivered (502). */
proxy_step proxy_stage_reachable(proxy_request *pr)
{
    const proxy_service *svc = pr->svc;
    if (svc->is_enclave && !svc->n_replicas)
        return proxy_fail(pr, 503, "unavailable", "service %s cannot be reached: %s", svc->name,
                          svc->unreachable ? svc->unreachable : "no replica");
    if (!svc->is_enclave && !svc->pool)
        return proxy_fail(pr, 502, "bad_gateway", "service %s has no upstream this proxy can reach", svc->name);
    if (svc->inject && svc->inject_missing)
        return proxy_fail(pr, 502, "bad_gateway", "the secret service %s injects is not available", svc->name);
    if (svc->is_enclave)
        pr->replica = pr->t->next_replica++ % svc->n_replicas; /* in turn */
    return PROXY_NEXT;
}

/* Watches the upstream's response to a forwarded request. */
typedef struct upstream_filter {
    h2o_req_prefilter_t super; /* first: the prefilter is the filter */
    proxy_request *pr;
} upstream_filter;

/* Whether REQ's response is h2o's own answer to a failed upstream exchange
 * (h2o_send_error_502 "Gateway Error": a bare text/plain reason such as
 * "connection failed"), not one the upstream sent. */
static bool is_gateway_error(const h2o_req_t *req)
{
    return req->res.status >= 502 && req->res.status <= 504 && req->res.reason &&
           strcmp(req->res.reason, "Gateway Error") == 0 && req->res.headers.size == 1 &&
           req->res.headers.entries[0].name == &H2O_TOKEN_CONTENT_TYPE->buf;
}

/* Replaces h2o's bare gateway error in REQ (slot SLOT) by the proxy's own
 * refusal of PR: JSON, or a page for a browser, naming the service and
 * what failed. */
static h2o_ostream_t **replace_gateway_error(proxy_request *pr, h2o_req_t *req, h2o_ostream_t **slot)
{
    char message[300];
    snprintf(message, sizeof(message),
             "service %s could not be reached: the exchange with its upstream failed (no connection, or it broke "
             "off or timed out)",
             pr->svc->name);
    int status = req->res.status;
    req->res.headers = (h2o_headers_t){NULL};
    pr->page = (proxy_page_texts){.message = "The service behind this address could not be reached. Try again "
                                             "in a moment; if it keeps failing, tell its administrator."};
    return proxy_swap_body(req, slot,
                           proxy_failure_prepare(pr, status == 504 ? 504 : 502,
                                                 status == 504 ? "gateway_timeout" : "bad_gateway", message));
}

/* Drops the upstream's Set-Cookie of the proxy's own cookies from the
 * response REQ is about to send: an upstream must not put a session of its
 * choice (its own login, or a sibling service's) in the browser. h2o's own
 * bare answer to a failed exchange becomes the proxy's refusal. Ends the
 * hop's CLIENT span first. */
static void on_upstream_response(h2o_req_prefilter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    static const char *const ours[] = {PROXY_SESSION_COOKIE, PROXY_LOGIN_COOKIE, NULL};
    proxy_request *pr = ((upstream_filter *)self)->pr;
    proxy_trace_upstream_answered(pr, req->res.status);
    if (is_gateway_error(req)) {
        h2o_setup_next_prefilter(self, req, replace_gateway_error(pr, req, slot));
        return;
    }
    h2o_headers_t *h = &req->res.headers;
    size_t kept = 0;
    for (size_t i = 0; i < h->size; i++) {
        h2o_header_t *e = &h->entries[i];
        if (e->name->len == strlen("set-cookie") && strncasecmp(e->name->base, "set-cookie", e->name->len) == 0 &&
            proxy_set_cookie_is_ours(e->value.base, e->value.len, ours)) {
            log_fields(LOG_LEVEL_WARN, "dropped an upstream's Set-Cookie of the proxy's own cookie", "service",
                       pr->svc->name, NULL);
            continue;
        }
        h->entries[kept++] = *e;
    }
    h->size = kept;
    h2o_setup_next_prefilter(self, req, slot);
}

/* Sends the request to its Service's upstream with the decided target: the
 * upstream URL's pool, or for an enclave the bridge of one of its running
 * replicas in turn (counted in the Enclave's load until it ends). */
proxy_step proxy_stage_forward(proxy_request *pr)
{
    proxy_thread *t = pr->t;
    h2o_req_t *req = pr->req;
    const proxy_service *svc = pr->svc;
    if (svc->is_enclave && (pr->rec.in_flight = proxy_metrics_enclave(t->settings->metrics, svc->enclave)))
        atomic_fetch_add(pr->rec.in_flight, 1); /* the load its controller scales on */
    upstream_filter *f = (upstream_filter *)h2o_add_prefilter(req, sizeof(*f));
    f->super.on_setup_ostream = on_upstream_response;
    f->pr = pr; /* the request keeps its configuration alive */
    h2o_socketpool_t *pool = svc->is_enclave ? svc->replicas[pr->replica] : svc->pool;
    if (!pool->_interval_cb.loop)
        proxy_pool_attach(pool, t->ctx->loop);
    h2o_req_overrides_t *ov = h2o_mem_alloc_pool(&req->pool, sizeof(*ov));
    *ov = (h2o_req_overrides_t){.client_ctx = &t->client_ctx, .socketpool = pool};
    ov->location_rewrite.match = (h2o_url_t *)&svc->upstream;
    ov->location_rewrite.path_prefix = h2o_iovec_init(H2O_STRLIT("/"));
    /* an upstream URL with a path prefixes the decided path */
    h2o_iovec_t base = svc->upstream.path;
    if (base.len && base.base[base.len - 1] == '/')
        base.len--;
    h2o_iovec_t path = h2o_concat(&req->pool, base, h2o_iovec_init(pr->target, strlen(pr->target)));
    h2o_reprocess_request(req, req->method, svc->upstream.scheme, svc->upstream.authority, path, ov, 0);
    return PROXY_DONE;
}
