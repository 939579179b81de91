/* The first stages: is the request one the proxy can decide unambiguously,
 * for which Service, on which path, within that Service's caps (see
 * corridor.h). */
#include <errno.h>
#include <string.h>

#include "basic/macro.h"
#include "httpd/framing.h"
#include "proxy/corridor.h"
#include "proxy/path.h"

/* Refuses path parameters ("/;x/admin", "/a;b/c") unless SVC opts in: the
 * proxy decides on the path as written while Tomcat-like upstreams drop the
 * parameters first. Returns a reason, or NULL. */
static const char *ambiguous_target(h2o_req_t *req, const proxy_service *svc)
{
    if (svc->allow_path_parameters || !framing_path_has_parameters(req->path.base, req->path.len))
        return NULL;
    return "a path parameter (';' in the path), which servers split off differently; a Service that needs them "
           "sets spec.allowPathParameters";
}

/* The Service C serves at AUTHORITY (proxy_config_route()), or NULL; the
 * thread remembers the last one found. */
static const proxy_service *route(proxy_thread *t, const proxy_config *c, h2o_iovec_t authority)
{
    typeof(t->last_route) *last = &t->last_route;
    if (last->svc && last->generation == c->generation && last->len == authority.len &&
        memcmp(last->authority, authority.base, authority.len) == 0)
        return last->svc;
    const proxy_service *svc = proxy_config_route(c, authority.base, authority.len);
    if (svc && authority.len <= sizeof(last->authority)) {
        memcpy(last->authority, authority.base, authority.len);
        last->len = authority.len;
        last->generation = c->generation;
        last->svc = svc;
    }
    return svc;
}

/* Refuses, in this order: no configuration yet (503); framing a front end
 * and a back end could read differently (httpd/framing.h: repeated,
 * obfuscated or aliased Content-Length and Transfer-Encoding, both at once,
 * a second Host, an HTTP/2 host other than :authority), before anything is
 * routed (400); a Host no Service is served at (404); a TLS connection
 * opened for another Service (421); path parameters (400). Then normalises
 * the target once (path.h): what is decided is what is forwarded. */
proxy_step proxy_stage_normalise(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    const proxy_config *c = pr->c;
    if (!c) {
        pr->rec.decision = PROXY_DECISION_ERROR;
        return proxy_fail(pr, 503, "unavailable",
                          "the proxy has not received its configuration from the API yet; retry shortly");
    }
    const char *why;
    if (httpd_framing_check(req, &why) < 0)
        return proxy_fail(pr, 400, "invalid", "ambiguous request refused: %s", why);
    const proxy_service *svc = route(pr->t, c, req->authority);
    if (!svc)
        return proxy_fail(pr, 404, "not_found", "no service is served at host %.*s",
                          (int)MIN(req->authority.len, 253u), req->authority.base);
    pr->svc = svc;
    pr->rec.service = svc->name;
    if ((why = proxy_misdirected(req, c, svc)))
        return proxy_fail(pr, 421, "misdirected", "%s", why);
    if ((why = ambiguous_target(req, svc)))
        return proxy_fail(pr, 400, "invalid", "ambiguous request refused: %s", why);

    char *target = h2o_mem_alloc_pool(&req->pool, req->path.len + 1);
    size_t path_len;
    int e = req->path.len > PROXY_PATH_MAX ? -E2BIG
                                           : proxy_path_normalize(req->path.base, req->path.len, target,
                                                                  req->path.len + 1, &path_len);
    if (e == -E2BIG)
        return proxy_fail(pr, 414, "too_large", "the request target is longer than %d bytes", PROXY_PATH_MAX);
    if (e < 0)
        return proxy_fail(pr, 400, "invalid",
                          "the request target is not a valid origin-form path (absolute-form, encoded '/', "
                          "control bytes and malformed escapes are refused)");
    pr->rec.path = proxy_pool_printable(&req->pool, target, path_len, PROXY_AUDIT_PATH_MAX);
    pr->target = target;
    pr->path_len = path_len;
    pr->query = target[path_len] == '?' ? target + path_len + 1 : NULL;
    pr->attestation = h2o_memis(target, path_len, H2O_STRLIT(PROXY_ATTESTATION_PATH));
    return PROXY_NEXT;
}

/* Refuses a body (413) or headers (431) beyond the Service's caps. */
proxy_step proxy_stage_limit(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    const proxy_service *svc = pr->svc;
    if (req->entity.base && req->entity.len > svc->max_body)
        return proxy_fail(pr, 413, "too_large", "the request body exceeds %llu bytes for service %s",
                          (unsigned long long)svc->max_body, svc->name);
    uint64_t header_bytes = 0;
    for (size_t i = 0; i < req->headers.size; i++)
        header_bytes += req->headers.entries[i].name->len + req->headers.entries[i].value.len;
    if (header_bytes > svc->max_header_bytes)
        return proxy_fail(pr, 431, "too_large", "the request headers exceed %llu bytes for service %s",
                          (unsigned long long)svc->max_header_bytes, svc->name);
    return PROXY_NEXT;
}
