/* The identity-aware proxy's request path (DESIGN.md, "Protect a service"):
 * for every request, find the Service by host, normalise the target once,
 * authenticate the access token (Authorization: Bearer or the
 * cloister_session cookie), decide with the in-process policy set on ctx,
 * and either refuse (401/403 with a request id, a browser sent to log in) or
 * forward exactly the decided path upstream over the thread's keep-alive connections,
 * without the client's x-cloister-* headers, our cookie and (unless the
 * Service passes it) the Authorization header, with the identity headers and
 * a signed assertion added. Every decision is an audit event.
 *
 * Runs on src/httpd's event loops: proxy_register() is the register_handlers
 * hook, proxy_thread_init()/proxy_thread_dispose() the per-thread hooks. The
 * request path is a list of named stages, a file each: see corridor.h. */
#pragma once

#include <h2o.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth/keyring.h"
#include "proxy/metrics.h"

#define PROXY_ASSERTION_TTL_S 120 /* x-cloister-assertion lifetime */
#define PROXY_RESERVED_PREFIX "/.cloister/"
#define PROXY_ATTESTATION_PATH PROXY_RESERVED_PREFIX "attestation"
#define PROXY_LOGOUT_PATH PROXY_RESERVED_PREFIX "logout" /* sign-out (logout.c) */

typedef struct proxy_settings {
    const char *domain;          /* services are <name>.<domain> */
    const char *login_url;       /* where a browser without a session is sent (?rd=<its URL> appended) */
    const char *assertion_issuer; /* iss of x-cloister-assertion */
    auth_keyring *assertion_keys; /* signs x-cloister-assertion; its JWKS is served at /.cloister/jwks.json */
    SSL_CTX *upstream_tls;       /* verifies https upstreams (client side) */
    uint64_t upstream_timeout_ms;
    uint64_t websocket_timeout_ms;
    proxy_metrics *metrics;      /* shared with the api role, which renders it; may be NULL */
    struct proxy_certs *certs;   /* service host certificates by SNI; NULL: the default certificate only */
    struct offload_pool *attest_pool; /* /.cloister/attestation's handshakes with replicas */
    const char *portal_dir;      /* the built portal app (portal_dir_locate()), or NULL: not installed */
    const char *api_url;         /* the API as this proxy reaches it (sign-out revokes sessions there) */
    const char *api_ca_file;     /* verifies the API */
    struct offload_pool *logout_pool; /* sign-outs' calls to the API */
    const char *access_dir;           /* the access-log segments (<data>/proxy/access) */
    struct offload_pool *commit_pool; /* failClosed requests waiting for their record's commit */
    struct offload_pool *plugin_pool; /* out-of-process plugin calls of the request phases */
    unsigned upstream_budget;         /* connections each thread may hold open to all its upstreams (0: no cap) */
} proxy_settings;

/* httpd hooks; USERDATA is the proxy_settings (borrowed for the server's life). */
void proxy_register(h2o_pathconf_t *pathconf, void *userdata);
void *proxy_thread_init(h2o_context_t *ctx, void *userdata);
/* Whether the thread still waits on replicas for /.cloister/attestation
 * answers (the drain lets them finish). */
bool proxy_thread_busy(void *state);
void proxy_thread_dispose(void *state);
/* Installs the SNI callback: a host name under the domain that routes to a
 * Service gets its own certificate from SETTINGS->certs (configure_tls
 * hook; USERDATA is the proxy_settings). Returns 0. */
int proxy_configure_tls(SSL_CTX *ctx, void *userdata);
