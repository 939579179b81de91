/* GET /.cloister/attestation: a client verifies an enclave itself (see
 * corridor.h). The handshake with a replica is done by a helper thread; its
 * answer comes back to the request's loop as a message. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attest/atls.h"
#include "basic/encoding.h"
#include "proxy/bridge.h"
#include "proxy/corridor.h"

/* A certificate fetch for one request, done by a helper thread. */
typedef struct attest_job {
    h2o_multithread_message_t msg; /* first: the message is the job */
    proxy_thread *t;
    proxy_request *pr; /* NULL once the request is gone */
    struct attest_guard *guard;
    char enclave[254], replica[72];
    json_t *policy; /* a copy */
    uint8_t nonce[ATLS_NONCE_LEN];
    int result;
    char *pem;
} attest_job;

/* Lives in the request's pool: tells the job when the request is gone. */
typedef struct attest_guard {
    attest_job *job;
} attest_guard;

static void attest_guard_dispose(void *p)
{
    attest_guard *g = p;
    if (g->job)
        g->job->pr = NULL;
}

static void *attest_main(void *arg)
{
    attest_job *j = arg;
    j->result = proxy_bridge_certificate(j->replica, j->nonce, &j->pem);
    h2o_multithread_send_message(&j->t->attest_done, &j->msg);
    return NULL;
}

/* Back on the loop: answers the request (when it is still there) with the
 * replica's certificate and the Enclave's policy, and frees the job. */
static void on_attest_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    while (!h2o_linklist_is_empty(messages)) {
        attest_job *j = H2O_STRUCT_FROM_MEMBER(attest_job, msg.link, messages->next);
        h2o_linklist_unlink(&j->msg.link);
        j->t->attest_jobs--;
        if (j->pr) {
            j->guard->job = NULL;
            if (j->result < 0) {
                proxy_fail(j->pr, 502, "bad_gateway", "replica %s of enclave %s cannot be reached: %s", j->replica,
                           j->enclave, strerror(-j->result));
            } else {
                json_t *body = json_pack("{s:s, s:s, s:s, s:O?}", "enclave", j->enclave, "replica", j->replica,
                                         "certificate", j->pem, "attestationPolicy", j->policy);
                char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
                json_decref(body);
                if (!text) {
                    proxy_fail(j->pr, 500, "internal", "out of memory");
                } else {
                    h2o_req_t *req = j->pr->req;
                    h2o_iovec_t v = h2o_strdup(&req->pool, text, SIZE_MAX);
                    free(text);
                    req->res.status = 200;
                    req->res.reason = "OK";
                    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                                   H2O_STRLIT("application/json"));
                    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
                    proxy_send_body(req, v);
                }
            }
        }
        json_decref(j->policy);
        free(j->pem);
        free(j);
    }
}

void proxy_attest_init(proxy_thread *t)
{
    t->attest_queue = h2o_multithread_create_queue(t->ctx->loop);
    h2o_multithread_register_receiver(t->attest_queue, &t->attest_done, on_attest_done);
}

void proxy_attest_dispose(proxy_thread *t)
{
    h2o_multithread_unregister_receiver(t->attest_queue, &t->attest_done);
    h2o_multithread_destroy_queue(t->attest_queue);
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
    size_t i = t->next_replica++ % svc->n_replicas;
    *j = (attest_job){.t = t, .pr = pr, .policy = json_deep_copy(svc->attestation_policy)};
    hex_decode(p + 6, 2 * ATLS_NONCE_LEN, j->nonce, sizeof(j->nonce));
    snprintf(j->enclave, sizeof(j->enclave), "%s", svc->enclave);
    snprintf(j->replica, sizeof(j->replica), "%s", svc->replica_names[i]);
    attest_guard *g = h2o_mem_alloc_shared(&pr->req->pool, sizeof(*g), attest_guard_dispose);
    g->job = j;
    j->guard = g;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&thread, &attr, attest_main, j);
    pthread_attr_destroy(&attr);
    if (e != 0) {
        g->job = NULL;
        json_decref(j->policy);
        free(j);
        return proxy_fail(pr, 503, "unavailable", "too busy to reach the enclave; retry");
    }
    t->attest_jobs++;
    return PROXY_DONE;
}
