/* GET /.cloister/attestation: a client verifies an enclave itself (see
 * corridor.h). The handshake with a replica is done on the proxy's
 * attestation pool (httpd/offload.h); its answer comes back to the
 * request's loop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attest/atls.h"
#include "basic/encoding.h"
#include "httpd/offload.h"
#include "proxy/bridge.h"
#include "proxy/corridor.h"

/* A certificate fetch for one request, run on the attestation pool. */
typedef struct attest_job {
    offload_job super;
    proxy_request *pr; /* read only once DONE has the request back */
    char enclave[254], replica[72];
    json_t *policy; /* a copy */
    uint8_t nonce[ATLS_NONCE_LEN];
    int result;
    char *pem;
} attest_job;

static void attest_work(offload_job *job)
{
    attest_job *j = (attest_job *)job;
    j->result = proxy_bridge_certificate(j->replica, j->nonce, &j->pem);
}

static void attest_job_free(attest_job *j)
{
    json_decref(j->policy);
    free(j->pem);
    free(j);
}

/* Back on the loop: answers REQ (when it is still there) with the replica's
 * certificate and the Enclave's policy, and frees the job. */
static void attest_done(offload_job *job, h2o_req_t *req)
{
    attest_job *j = (attest_job *)job;
    if (!req) {
        attest_job_free(j);
        return;
    }
    if (j->result < 0) {
        proxy_fail(j->pr, 502, "bad_gateway", "replica %s of enclave %s cannot be reached: %s", j->replica,
                   j->enclave, strerror(-j->result));
        attest_job_free(j);
        return;
    }
    json_t *body = json_pack("{s:s, s:s, s:s, s:O?}", "enclave", j->enclave, "replica", j->replica, "certificate",
                             j->pem, "attestationPolicy", j->policy);
    if (!body)
        proxy_fail(j->pr, 500, "internal", "out of memory");
    else
        proxy_send_json(j->pr, body, "no-store");
    json_decref(body);
    attest_job_free(j);
}

/* GET /.cloister/attestation?nonce=<64 hex>, decided by policy like any
 * request to its Service: the certificate one of the Service's enclave
 * replicas makes for the caller's nonce (its evidence carries it), and the
 * Enclave's AttestationPolicy, for the caller to verify with its own roots
 * and expectations (`cloister attest service`). The loop never waits on a
 * replica. Any other path goes on. */
proxy_step proxy_stage_attestation(proxy_request *pr)
{
    if (!pr->attestation)
        return PROXY_NEXT;
    proxy_thread *t = pr->t;
    const proxy_service *svc = pr->svc;
    const char *query = pr->query;
    if (!svc->is_enclave)
        return proxy_fail(pr, 404, "not_found", "service %s does not run in an enclave", svc->name);
    if (!svc->n_replicas)
        return proxy_fail(pr, 503, "unavailable", "service %s cannot be reached: %s", svc->name,
                          svc->unreachable ? svc->unreachable : "no replica");
    const char *p = query ? strstr(query, "nonce=") : NULL;
    if (p && p != query && p[-1] != '&')
        p = NULL;
    attest_job *j = calloc(1, sizeof(*j));
    if (!j)
        return proxy_fail(pr, 500, "internal", "out of memory");
    if (!p || strcspn(p + 6, "&") != 2 * ATLS_NONCE_LEN ||
        hex_decode(p + 6, 2 * ATLS_NONCE_LEN, j->nonce, sizeof(j->nonce)) < 0) {
        free(j);
        return proxy_fail(pr, 400, "invalid", "nonce must be %d hex digits (%d random bytes of yours)",
                          2 * ATLS_NONCE_LEN, ATLS_NONCE_LEN);
    }
    size_t i = pr->replica; /* chosen in turn by the reachable stage */
    *j = (attest_job){.pr = pr, .policy = json_deep_copy(svc->attestation_policy)};
    hex_decode(p + 6, 2 * ATLS_NONCE_LEN, j->nonce, sizeof(j->nonce));
    snprintf(j->enclave, sizeof(j->enclave), "%s", svc->enclave);
    snprintf(j->replica, sizeof(j->replica), "%s", svc->replica_names[i]);
    j->super = (offload_job){.work = attest_work, .done = attest_done};
    int e = offload_submit(t->settings->attest_pool, t->offload, pr->req, &j->super);
    if (e < 0) {
        json_decref(j->policy);
        free(j);
        return proxy_fail(pr, 503, "unavailable", "too busy to reach the enclave; retry");
    }
    return PROXY_DONE;
}
