/* GET /.cloister/jwks.json: the public keys of x-cloister-assertion, for
 * upstreams to verify it (see corridor.h). */
#include <stdlib.h>

#include "proxy/corridor.h"

proxy_step proxy_serve_jwks(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    json_t *jwks = auth_keyring_jwks(pr->t->settings->assertion_keys);
    char *text = jwks ? json_dumps(jwks, JSON_COMPACT) : NULL;
    json_decref(jwks);
    if (!text)
        return proxy_fail(pr, 500, "internal", "out of memory");
    h2o_iovec_t body = h2o_strdup(&req->pool, text, SIZE_MAX);
    free(text);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("max-age=60"));
    proxy_send_body(req, body);
    return PROXY_DONE;
}
