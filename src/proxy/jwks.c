/* GET /.cloister/jwks.json: the public keys of x-cloister-assertion, for
 * upstreams to verify it (see corridor.h). */
#include "proxy/corridor.h"

proxy_step proxy_serve_jwks(proxy_request *pr)
{
    json_t *jwks = auth_keyring_jwks(pr->t->settings->assertion_keys);
    if (!jwks)
        return proxy_fail(pr, 500, "internal", "out of memory");
    proxy_step step = proxy_send_json(pr, jwks, "max-age=60");
    json_decref(jwks);
    return step;
}
