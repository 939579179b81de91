/* The proxy's side of the API's configuration stream (GET /v1/proxy/config,
 * Server-Sent Events): a thread that keeps a proxy_state current from the
 * stream's snapshot and change events and publishes a new configuration
 * snapshot after each batch. When the API is away it keeps the last good
 * configuration published, reconnects with backoff and resumes after the
 * last revision it applied (?since=), so nothing is served from a partial
 * state and nothing is lost. */
#pragma once

#include <stdint.h>

#define PROXY_STREAM_MAX (64u * 1024 * 1024) /* bytes of one event (a snapshot) */

typedef struct proxy_follow_config {
    const char *api_url;    /* "https://127.0.0.1:7443" */
    /* the api's listener for roles (api.roleListen, https://HOST:PORT): when
     * set, the stream goes there over mutual TLS with the proxy's role
     * certificate (daemon/peer-tls.h) instead of api_url with the token;
     * NULL or "": none */
    const char *api_role_url;
    const char *ca_file;    /* the cluster CA the API's certificate chains to */
    const char *token_file; /* the proxy's credential token (read at every connection; not with api_role_url) */
    const char *domain;     /* services are <name>.<domain> */
    struct proxy_metrics *metrics; /* publishes when the stream was last heard from (/readyz); may be NULL */
} proxy_follow_config;

typedef struct proxy_follower proxy_follower;

/* Starts following; CFG's strings are copied. Returns 0 with *RET or a
 * negative errno. */
int proxy_follow_start(const proxy_follow_config *cfg, proxy_follower **ret);
/* Stops the thread (within about a second) and frees F; accepts NULL. */
void proxy_follow_stop(proxy_follower *f);
