/* The last stages: an upstream to go to, and the request sent there over
 * the thread's keep-alive connections (upstream.c; see corridor.h). */
#include <stdatomic.h>
#include <string.h>

#include "proxy/corridor.h"
#include "proxy/upstream.h"

/* Refuses when the decided request has nowhere to go: an enclave without a
 * running replica (503), a Service whose upstream this proxy cannot reach
 * or whose injected secret is not delivered (502). */
proxy_step proxy_stage_reachable(proxy_request *pr)
{
    const proxy_service *svc = pr->svc;
    if (svc->is_enclave && !svc->n_replicas)
        return proxy_fail(pr, 503, "unavailable", "service %s cannot be reached: %s", svc->name,
                          svc->unreachable ? svc->unreachable : "no replica");
    if (!svc->is_enclave && !svc->origin)
        return proxy_fail(pr, 502, "bad_gateway", "service %s has no upstream this proxy can reach", svc->name);
    if (svc->inject && svc->inject_missing)
        return proxy_fail(pr, 502, "bad_gateway", "the secret service %s injects is not available", svc->name);
    if (svc->is_enclave)
        pr->replica = pr->t->next_replica++ % svc->n_replicas; /* in turn */
    return PROXY_NEXT;
}

/* Sends the request to its Service's upstream with the decided target,
 * over this thread's keep-alive connections to the upstream URL's origin,
 * or for an enclave to the bridge of one of its running replicas in turn
 * (counted in the Enclave's load until it ends). */
proxy_step proxy_stage_forward(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    const proxy_service *svc = pr->svc;
    if (svc->is_enclave && (pr->rec.in_flight = proxy_metrics_enclave(pr->t->settings->metrics, svc->enclave)))
        atomic_fetch_add(pr->rec.in_flight, 1); /* the load its controller scales on */
    /* an upstream URL with a path prefixes the decided path */
    h2o_iovec_t base = svc->upstream.path;
    if (base.len && base.base[base.len - 1] == '/')
        base.len--;
    h2o_iovec_t path = h2o_concat(&req->pool, base, h2o_iovec_init(pr->target, strlen(pr->target)));
    proxy_upstream_forward(pr, svc->is_enclave ? svc->replicas[pr->replica] : svc->origin, svc->upstream.authority,
                           path);
    return PROXY_DONE;
}
