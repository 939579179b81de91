/* The identity-aware proxy's handler: per-thread state and the list of
 * stages every request walks (see proxy.h and corridor.h). */
/* proxy_sha256() hashes with OpenSSL's SHA256_Init/Update/Final, deprecated
 * in 3.0 in favour of EVP: EVP_DigestInit_ex2() frees and allocates the
 * provider's context on every digest in 3.0, twice a request's cost */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "proxy/proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "httpd/framing.h"
#include "httpd/httpd.h"
#include "httpd/offload.h"
#include "proxy/corridor.h"
#include "proxy/upstream.h"

#define VALUES_ARENA_MAX (256u * 1024u)

/* ---- per-thread state ---- */

void *proxy_thread_init(h2o_context_t *ctx, void *userdata)
{
    const proxy_settings *s = userdata;
    proxy_thread *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ctx = ctx;
    t->settings = s;
    t->requests = (httpd_recycler){.kept = {.max = PROXY_RECYCLED_MAX}, .size = sizeof(proxy_request)};
    t->jwt = jwt_cache_new(4096);
    t->values = cel_arena_new(VALUES_ARENA_MAX);
    t->scratch = cel_arena_new(POLICY_ARENA_MAX);
    random_bytes(t->id_prefix, sizeof(t->id_prefix));
    random_bytes(&t->trace_seed, sizeof(t->trace_seed));
    h2o_timeout_init(ctx->loop, &t->io_timeout, s->upstream_timeout_ms ? s->upstream_timeout_ms : 30000);
    h2o_timeout_init(ctx->loop, &t->websocket_timeout, s->websocket_timeout_ms ? s->websocket_timeout_ms : 300000);
    proxy_access_init(t);
    proxy_login_init(t);
    if (offload_loop_new(ctx->loop, &t->offload) < 0 ||
        !(t->upstreams = proxy_upstreams_new(ctx->loop, s->upstream_budget))) {
        proxy_thread_dispose(t);
        return NULL;
    }
    return t;
}

bool proxy_thread_busy(void *state)
{
    proxy_thread *t = state;
    return t && offload_loop_in_flight(t->offload) > 0;
}

void proxy_thread_dispose(void *state)
{
    proxy_thread *t = state;
    if (!t)
        return;
    proxy_tokens_clear(t);
    proxy_assertions_clear(t);
    proxy_access_dispose(t);
    proxy_login_dispose(t);
    offload_loop_free(t->offload);
    proxy_upstreams_free(t->upstreams);
    h2o_timeout_dispose(t->ctx->loop, &t->io_timeout);
    h2o_timeout_dispose(t->ctx->loop, &t->websocket_timeout);
    jwt_cache_free(t->jwt);
    cel_arena_free(t->values);
    cel_arena_free(t->scratch);
    httpd_recycler_clear(&t->requests);
    proxy_config_unref(t->config);
    free(t);
}

void proxy_refresh_config(proxy_thread *t)
{
    uint64_t g = proxy_config_generation();
    if (g == t->generation)
        return;
    proxy_config *fresh = proxy_config_current();
    proxy_config_unref(t->config);
    t->config = fresh;
    t->generation = fresh ? fresh->generation : 0;
    if (fresh)
        proxy_metrics_config(t->settings->metrics, fresh->generation, fresh->revision);
}

void proxy_sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_LENGTH])
{
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, data, len);
    SHA256_Final(out, &c); /* and wipes C */
}

/* ---- the corridor ---- */

/* The reserved /.cloister/ paths other than the attestation (which is
 * decided like any path): the login callback, sign-out and the JWKS of the
 * assertions, served before authentication. */
static proxy_step proxy_stage_reserved(proxy_request *pr)
{
    static const size_t prefix = sizeof(PROXY_RESERVED_PREFIX) - 1;
    if (pr->attestation || pr->path_len < prefix || memcmp(pr->target, PROXY_RESERVED_PREFIX, prefix) != 0)
        return PROXY_NEXT;
    h2o_iovec_t name = h2o_iovec_init(pr->target + prefix, pr->path_len - prefix);
    if (h2o_memis(name.base, name.len, H2O_STRLIT("callback")))
        return proxy_login_callback(pr);
    if (h2o_memis(name.base, name.len, H2O_STRLIT("logout")))
        return proxy_logout(pr);
    pr->rec.decision = PROXY_DECISION_ALLOW;
    if (h2o_memis(name.base, name.len, H2O_STRLIT("jwks.json")))
        return proxy_serve_jwks(pr);
    return proxy_fail(pr, 404, "not_found", "no such path under " PROXY_RESERVED_PREFIX);
}

/* GET /healthz (live: 200 while serving) and /readyz (ready: the
 * configuration from the API present and heard from within
 * PROXY_CONFIG_MAX_AGE_S; else 503 naming what is not) for load balancers'
 * and orchestrators' probes, which dial an address: answered only on a
 * Host that names no Service, so a Service's own /healthz stays its
 * upstream's. */
static proxy_step proxy_stage_probe(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    h2o_iovec_t path = req->path_normalized;
    bool live = h2o_memis(path.base, path.len, H2O_STRLIT("/healthz"));
    if ((!live && !h2o_memis(path.base, path.len, H2O_STRLIT("/readyz"))) ||
        !(h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
          h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) ||
        (pr->c && proxy_config_route(pr->c, req->authority.base, req->authority.len)))
        return PROXY_NEXT;
    /* the guards' verdict is taken once: here for a probe, else by normalise */
    const char *why;
    if (httpd_framing_check(req, &why) < 0)
        return proxy_fail(pr, 400, "invalid", "ambiguous request refused: %s", why);
    pr->rec.decision = PROXY_DECISION_ALLOW;
    json_t *problems = json_array();
    char problem[160] = "";
    uint64_t age = 0;
    int e = pr->t->settings->metrics ? proxy_metrics_config_age(pr->t->settings->metrics, time_mono_ns(), &age) : 0;
    if (httpd_stopping(req))
        snprintf(problem, sizeof(problem), "proxy: stopping");
    else if (live)
        ;
    else if (!pr->c || e == -EAGAIN)
        snprintf(problem, sizeof(problem), "proxy: no configuration from the API yet");
    else if (e == 0 && age > PROXY_CONFIG_MAX_AGE_S * NSEC_PER_SEC)
        snprintf(problem, sizeof(problem), "proxy: no configuration from the API for %llu s",
                 (unsigned long long)(age / NSEC_PER_SEC));
    if (problem[0])
        json_array_append_new(problems, json_string(problem));
    bool ok = json_array_size(problems) == 0;
    json_t *body = json_pack("{s:s, s:o}", "status", ok ? "ok" : "unavailable", "problems", problems);
    proxy_step step = body ? proxy_send_json_status(pr, ok ? 200 : 503, body, "no-store")
                           : proxy_fail(pr, 500, "internal", "out of memory");
    json_decref(body);
    return step;
}

/* The stages, in order (corridor.h says what each does). */
static const proxy_stage stages[] = {
    proxy_stage_probe,       proxy_stage_normalise,   proxy_stage_trace,       proxy_stage_reserved,
    proxy_stage_limit,       proxy_stage_authenticate, proxy_stage_decide,      proxy_stage_plugins,
    proxy_stage_commit,
    proxy_stage_portal,      proxy_stage_reachable,   proxy_stage_attestation,
    proxy_stage_rewrite,     proxy_stage_trace_upstream, proxy_stage_forward,
};

/* The request's context, from its pool, with what is known before any
 * stage: its id, the peer, the raw method and path for the log. */
static proxy_request *request_new(proxy_thread *t, h2o_req_t *req)
{
    proxy_request *pr = httpd_recycled_alloc(&t->requests, &req->pool, proxy_access_emit);
    *pr = (proxy_request){.req = req, .t = t};
    access_record *rec = &pr->rec;
    rec->config = proxy_config_ref(t->config);
    rec->started = time_mono_ns();
    rec->received = time_now_ns();
    rec->decision = PROXY_DECISION_INVALID;
    pr->c = rec->config;
    proxy_request_id(t, rec->id);
    httpd_peer_ip(req, rec->ip, sizeof(rec->ip));
    proxy_copy_printable(rec->method, sizeof(rec->method), req->method.base, req->method.len);
    rec->path = proxy_pool_printable(&req->pool, req->path.base, req->path.len, PROXY_AUDIT_PATH_MAX);
    return pr;
}

/* Runs PR's stages from the one at FIRST until one answers. */
static void run_stages(proxy_request *pr, size_t first)
{
    for (size_t i = first; i < ELEMENTSOF(stages); i++)
        if (stages[i](pr) == PROXY_DONE)
            break;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    proxy_thread *t = httpd_thread_state(req);
    if (!t) { /* the thread's state could not be allocated at start */
        h2o_send_error_503(req, "Service Unavailable", "the proxy is out of memory", 0);
        return 0;
    }
    proxy_refresh_config(t);
    if (t->settings->metrics)
        atomic_store_explicit(&t->settings->metrics->connections, httpd_connections(req), memory_order_relaxed);
    proxy_request *pr = request_new(t, req);
    run_stages(pr, 0);
    return 0;
}

void proxy_continue_after(proxy_request *pr, proxy_stage done)
{
    size_t i = 0;
    while (i < ELEMENTSOF(stages) && stages[i] != done)
        i++;
    run_stages(pr, i + 1);
}

void proxy_register(h2o_pathconf_t *pathconf, void *userdata)
{
    h2o_handler_t *h = h2o_create_handler(pathconf, sizeof(*h));
    h->on_req = on_req;
    (void)userdata;
}
