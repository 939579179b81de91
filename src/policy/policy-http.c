/* ctx.request.http from an h2o request (see policy-http.h). */
#include "policy/policy-http.h"

#include "basic/macro.h"

/* Sets string slot V to the LEN bytes at S when they are UTF-8, else "". */
static void set_text(policy_request *pr, policy_var v, const char *s, size_t len)
{
    pr->vars[v] = policy_text_valid(s, len) ? cel_string(s, len) : cel_string("", 0);
}

int policy_request_set_http(policy_request *pr, h2o_req_t *req, h2o_iovec_t path, h2o_iovec_t query, cel_arena *a)
{
    set_text(pr, POLICY_VAR_HTTP_METHOD, req->method.base, req->method.len);
    set_text(pr, POLICY_VAR_HTTP_PATH, path.base, path.len);
    if (query.base)
        set_text(pr, POLICY_VAR_HTTP_QUERY, query.base, query.len);
    set_text(pr, POLICY_VAR_HTTP_HOST, req->authority.base, req->authority.len);
    policy_request_set_string(pr, POLICY_VAR_HTTP_SCHEME, req->scheme == &H2O_URL_SCHEME_HTTPS ? "https" : "http");
    policy_header h[H2O_MAX_HEADERS];
    size_t n = MIN(req->headers.size, (size_t)H2O_MAX_HEADERS);
    for (size_t i = 0; i < n; i++)
        h[i] = (policy_header){req->headers.entries[i].name->base, req->headers.entries[i].name->len,
                               req->headers.entries[i].value.base, req->headers.entries[i].value.len};
    return policy_request_set_headers(pr, h, n, a);
}
