/* The proxy role's server: the identity-aware proxy on the HTTPS (and
 * optional plain-HTTP) listener, configured by the api role's stream. It
 * holds its TLS keys, the key signing identity assertions and a read-only
 * copy of the configuration; never the store, the KMS root key or the audit
 * key. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>

#include "proxy/metrics.h"

/* What the proxy role sees of the configuration; strings borrowed. */
typedef struct proxy_role_config {
    const char *data_dir;   /* its room is data_dir/proxy: the assertion keys */
    const char *domain;
    const char *api_url;    /* the api role, for the configuration stream and the login */
    const char *api_role_url; /* the api's listener for roles (mutual TLS): the stream goes there; "": none */
    const char *token_file; /* the proxy's token for the stream */
    const char *audit_socket;
    const char *ca_cert;          /* the cluster CA: upstreams verify against it */
    const char *api_ca_cert;      /* the API verifies against it: the cluster CA, or it and the API's own chain */
    const char *host_ca_cert;     /* the CA that signs the services' host certificates, and its key */
    const char *host_ca_key;
    const char *platform_ca_cert; /* enclaves' attestation; without it enclaves are not reached */
    const char *runner_dir;       /* the enclaves' attested sockets; the runner's plugins.sock */
    const char *plugin_dir;       /* plugins (plugin/plugin.h), or NULL: none */
    const char *plugin_trusted;   /* those loaded in process (comma-separated) */
    const char *portal_dir;       /* the built portal app (the supervisor's copy), or NULL: portal Services answer 503 */
    const char *listen, *plain_listen; /* plain_listen NULL: none */
    const char *cert_file, *key_file;
    unsigned threads;
    bool h1_front; /* HTTP/1 served by httpd's h1front, not h2o's HTTP/1 server */
    unsigned upstream_idle, upstream_conns; /* caps per upstream and thread (upstream.h); 0: the defaults */
    proxy_metrics *metrics; /* shared memory: the proxy writes, the api renders */
    _Atomic bool *ready_flag;
} proxy_role_config;

/* Serves the proxy until SIGTERM. Returns the role's exit status. SIGTERM
 * and SIGINT must be blocked. */
int proxy_serve(const proxy_role_config *cfg);
