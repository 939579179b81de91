/* The portal stage: a Service whose upstream is {portal: true} is the
 * portal (docs/portal.md). Its app's static files are answered here; its
 * calls to /v1/ go to the API as the signed-in user, with the session's
 * access token as a bearer token, and only when they carry the portal's
 * CSRF header from the portal's own origin. */
#include <string.h>
#include <strings.h>

#include "portal/portal.h"
#include "proxy/corridor.h"

#define PORTAL_API_PREFIX "/v1/"
#define PORTAL_CSRF_HEADER "x-cloister-csrf"

/* The value of the request header NAME of REQ, or a NULL base. */
static h2o_iovec_t header_value(h2o_req_t *req, const char *name, size_t len)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, len, -1);
    return i < 0 ? h2o_iovec_init(NULL, 0) : req->headers.entries[i].value;
}

/* Whether NAME is a header the API must not get from the portal's browser:
 * its cookies (the session goes as the bearer token), any Authorization,
 * and headers only the proxy may set. */
static bool api_header_dropped(const h2o_iovec_t *name)
{
    static const char *const dropped[] = {"cookie", "authorization", "proxy-authorization", "forwarded", "x-real-ip"};
    for (size_t i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++)
        if (name->len == strlen(dropped[i]) && strncasecmp(name->base, dropped[i], name->len) == 0)
            return true;
    return (name->len >= 11 && strncasecmp(name->base, "x-cloister-", 11) == 0) ||
           (name->len >= 12 && strncasecmp(name->base, "x-forwarded-", 12) == 0);
}

/* A portal call to the API: refused (403) without the CSRF header or from
 * another site (Sec-Fetch-Site), else forwarded with the caller's access
 * token as Authorization and the request id. */
static proxy_step to_api(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    h2o_iovec_t csrf = header_value(req, H2O_STRLIT(PORTAL_CSRF_HEADER));
    h2o_iovec_t site = header_value(req, H2O_STRLIT("sec-fetch-site"));
    if (!h2o_memis(csrf.base, csrf.len, H2O_STRLIT("1")))
        return proxy_fail(pr, 403, "forbidden",
                          "a call to the API through the portal needs the header " PORTAL_CSRF_HEADER ": 1 "
                          "(sent by the portal app; it keeps other sites from calling the API with your session)");
    if (site.base && !h2o_memis(site.base, site.len, H2O_STRLIT("same-origin")))
        return proxy_fail(pr, 403, "forbidden", "a call to the API through the portal must come from the portal's "
                                                "own pages (Sec-Fetch-Site: same-origin)");
    h2o_iovec_t token = pr->from_cookie ? proxy_find_cookie(req, PROXY_SESSION_COOKIE)
                                        : header_value(req, H2O_STRLIT("authorization"));
    if (!pr->from_cookie && token.len > 7)
        token = h2o_iovec_init(token.base + 7, token.len - 7); /* past "Bearer " (authenticate.c checked it) */
    h2o_headers_t out = {NULL};
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *h = &req->headers.entries[i];
        if (api_header_dropped(h->name))
            continue;
        h2o_vector_reserve(&req->pool, &out, out.size + 1);
        out.entries[out.size++] = *h;
    }
    h2o_iovec_t bearer = h2o_concat(&req->pool, h2o_iovec_init(H2O_STRLIT("Bearer ")), token);
    h2o_add_header(&req->pool, &out, H2O_TOKEN_AUTHORIZATION, NULL, bearer.base, bearer.len);
    h2o_add_header_by_str(&req->pool, &out, H2O_STRLIT("x-cloister-request-id"), 0, NULL, pr->rec.id,
                          PROXY_REQUEST_ID_LEN);
    req->headers = out;
    if (proxy_stage_reachable(pr) == PROXY_DONE || proxy_stage_trace_upstream(pr) == PROXY_DONE)
        return PROXY_DONE;
    return proxy_stage_forward(pr);
}

proxy_step proxy_stage_portal(proxy_request *pr)
{
    if (!pr->svc->is_portal)
        return PROXY_NEXT;
    static const size_t api_prefix = sizeof(PORTAL_API_PREFIX) - 1;
    if (pr->path_len >= api_prefix && memcmp(pr->target, PORTAL_API_PREFIX, api_prefix) == 0)
        return to_api(pr);
    h2o_req_t *req = pr->req;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD")))
        return proxy_fail(pr, 405, "method_not_allowed", "the portal's pages are read with GET");
    const char *dir = pr->t->settings->portal_dir;
    if (!dir)
        return proxy_fail(pr, 503, "unavailable", "the portal app is not installed: build it (meson builds portal/ "
                                                  "when npm is present) or set CLOISTER_PORTAL_DIR");
    char name[128];
    if (!portal_file_name(pr->target, pr->path_len, name, sizeof(name)) || portal_send_file(req, dir, name) < 0)
        return proxy_fail(pr, 404, "not_found", "the portal has no such page; it starts at /");
    return PROXY_DONE;
}
