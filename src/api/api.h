/* The control-plane REST API (the `api` role): resources, authentication of
 * callers, health and metrics, served over HTTPS by h2o event loops. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "basic/role.h"
#include "store/store.h"

typedef struct api_config {
    const char *listen;   /* HOST:PORT */
    /* api.roleListen: HOST:PORT of the mutual-TLS listener for the proxy and
     * the runner (NULL or "": none), this process's role certificate and key
     * and the cluster CA (daemon/peer-tls.h) */
    const char *role_listen, *role_cert, *role_key, *role_ca;
    const char *cert_file; /* PEM chain of the server certificate */
    const char *key_file;
    const char *domain;
    unsigned proxy_port; /* the proxy's HTTPS port, for the URLs of /v1/me/services (0: unknown, 443) */
    store *store;
    unsigned threads;
    role_health *roles; /* table shared with the supervisor, may be NULL */
    size_t n_roles;
    _Atomic bool *ready_flag; /* set once serving, may be NULL */
    const char *audit_socket; /* the audit role's local API */
    const char *runner_socket; /* the runner's local API (enclave logs), or NULL */
    struct auth_keyring *keyring; /* token signing keys (auth/keyring.h); NULL disables access tokens */
    const struct proxy_metrics *proxy_metrics; /* the proxy role's, rendered on /metrics; may be NULL */
    struct controller *controller; /* the Enclave controller, whose Enclaves /metrics shows; may be NULL */
    /* 32 bytes sealing browser login handoffs for the proxy (handoff.h),
     * owned and wiped by the role; NULL disables logins that return to a
     * service host */
    const uint8_t *handoff_key;
    const char *seal_mode;    /* the KMS's seal, reported by /readyz */
    const char *store_driver; /* "sqlite", "postgres": reported by /readyz */
    /* the job engine bundle's PCR0 (lower-case hex of SHA-384) every job
     * digest names; NULL when no engine bundle was found */
    const char *job_engine_pcr0;
} api_config;

/* Serves until SIGTERM or SIGINT arrives, then stops accepting, drains the
 * requests in flight (at most a few seconds) and returns 0; a negative errno
 * when the server cannot start (bad listen address, certificate, port in use).
 * The caller must block SIGTERM and SIGINT in every thread before calling. */
int api_run(const api_config *cfg);

/* Appends the Prometheus text /metrics serves (the API's metrics, its
 * streams', the proxy's, the roles' and the Enclave controller's) to OUT:
 * one source for /metrics and the OTLP export. Returns 0 or strbuf's
 * negative errno. */
struct strbuf;
int api_metrics_text(const api_config *cfg, struct strbuf *out);

/* What the api role sees of the configuration; strings borrowed. */
typedef struct api_role_config {
    api_config api;               /* the server's; store, keyring and handoff_key are the role's to fill */
    const char *store_url;
    const char *auth_dir;         /* token signing keys and the login handoff key (0700, created) */
    const char *blob_dir;         /* datasets' ciphertexts (blob/blob.h; 0700, created) */
    const char *platform_ca_cert; /* verifies sandbox evidence for key release */
    const char *kms_socket;
    const char *runner_socket;    /* the Enclave controller's runner, and jobs' */
    const char *engine_bundle;    /* the runner's copy of the job engine's bundle; NULL: none */
} api_role_config;

/* The api role: opens the store and the keys, starts audit delivery, the
 * KMS and attestation clients and the Enclave controller, runs api_run(),
 * then stops them all. Returns the role's exit status. SIGTERM and SIGINT
 * must be blocked in every thread. */
int api_role_serve(const api_role_config *cfg);
