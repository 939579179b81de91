/* What the proxy serves with: an immutable snapshot of the routes (Services),
 * the policy set, the users, credentials and live sessions, the access-token
 * verification keys and the secrets Services inject, built from the state the
 * API's configuration stream keeps current (follow.c).
 *
 * A snapshot is reference counted and never changes once built, so worker
 * threads use it without locks; publishing a new one swaps it atomically and
 * each thread picks it up before its next request. Keep-alive pools to the
 * upstreams outlive snapshots (one origin per scheme://host:port, for the
 * life of the process: upstream.h), so a configuration change does not drop upstream connections. */
#pragma once

#include <h2o.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth/jwt.h"
#include "policy/policy-docs.h"
#include "policy/policy.h"

#define PROXY_MAX_SERVICES 4096
#define PROXY_ENCLAVE_REPLICAS_MAX 16
#define PROXY_DEFAULT_MAX_BODY (16u * 1024 * 1024)   /* bytes of a request body */
#define PROXY_DEFAULT_MAX_HEADER_BYTES (64u * 1024)  /* bytes of request header names and values */

/* What the configuration stream has delivered so far (owned by the follower). */
typedef struct proxy_state {
    policy_docs *docs; /* Policy, User, Group, Credential, Service */
    json_t *sessions;  /* name -> Session document */
    json_t *jwks;      /* {"keys": [...]} verifying access tokens */
    json_t *secrets;   /* "<secret>/<key>" -> value, those Services inject */
    json_t *enclaves;  /* name -> Enclave document (with its status: the replicas) */
    json_t *attestation_policies; /* name -> AttestationPolicy document */
    char issuer[256], audience[64];
    uint8_t handoff_key[32]; /* decrypts browser login handoffs (AES-256-GCM) */
    bool has_handoff_key;
    int64_t revision;
    uint64_t epoch; /* the store's, as the last snapshot named it (0: unknown) */
    bool policies_changed; /* a document policy sets depend on changed since the last build */
} proxy_state;

/* An empty state. Returns 0 or -ENOMEM. */
int proxy_state_init(proxy_state *st);
void proxy_state_done(proxy_state *st);

typedef enum proxy_inject {
    PROXY_INJECT_NONE,
    PROXY_INJECT_HEADER, /* bearer and basic become an Authorization header */
} proxy_inject;

/* One Service, resolved for the request path. */
typedef struct proxy_service {
    const char *name;  /* borrowed from DOC */
    size_t name_len;
    const json_t *attrs; /* spec.attrs (borrowed from DOC), or NULL: ctx.service.attrs */
    json_t *doc;       /* the Service document (a reference) */
    char *upstream_text; /* the upstream URL; UPSTREAM's strings point into it */
    h2o_url_t upstream;
    struct proxy_origin *origin; /* the upstream (upstream.h; process lifetime) */
    bool is_enclave;        /* upstream {enclave}: REPLICAS are bridges to its running replicas */
    bool is_portal;         /* upstream {portal: true}: the portal app, /v1/ to the API (portal.c) */
    const char *enclave;    /* its name (borrowed from DOC) */
    struct proxy_origin *replicas[PROXY_ENCLAVE_REPLICAS_MAX]; /* their bridges */
    char replica_names[PROXY_ENCLAVE_REPLICAS_MAX][72];
    size_t n_replicas;
    json_t *attestation_policy; /* the Enclave's AttestationPolicy document (a reference), or NULL */
    const char *unreachable; /* why an enclave upstream has no replica to go to (static text), or NULL */
    bool pass_authorization, fail_closed;
    bool allow_path_parameters; /* spec.allowPathParameters: ';' in the path is forwarded, not refused */
    bool trust_trace_context;   /* spec.trustTraceContext: a client's valid traceparent is continued, not linked */
    uint64_t max_body, max_header_bytes;
    proxy_inject inject;
    h2o_iovec_t inject_name;  /* lower-case header name */
    h2o_iovec_t inject_value; /* "Bearer …", "Basic …" or the raw value; wiped when freed */
    bool inject_missing;      /* the Secret value is not (yet) delivered: requests fail */
    struct proxy_plugin *plugins; /* spec.plugins, in order (plugins.c) */
    size_t n_plugins;
    unsigned plugin_phases;       /* bit (1 << phase) set: some plugin runs in that phase */
} proxy_service;

/* Builds S's plugins from its spec.plugins (PLUGINS, may be NULL): each
 * one's `when` compiled and its instance (plugin/plugin.h) taken; a plugin
 * that cannot be loaded is kept with its error and fails as configured.
 * Returns 0 or -ENOMEM. proxy_plugins_clear() releases them (plugins.c). */
int proxy_plugins_build(proxy_service *s, const json_t *plugins);
void proxy_plugins_clear(proxy_service *s);

typedef struct proxy_config {
    _Atomic unsigned refs;
    uint64_t generation; /* increases with every published snapshot */
    int64_t revision;    /* the store revision it reflects */
    char *issuer, *audience;
    policy_set *policies;
    jwt_key **keys;
    size_t n_keys;
    json_t *users, *credentials, *sessions; /* name -> document (shallow copies) */
    json_t *policy_docs; /* name -> Policy document (a shallow copy): a denial's explanation and remediation */
    proxy_service *services;
    size_t n_services;
    json_t *hosts; /* lower-case host -> index into SERVICES */
    uint8_t handoff_key[32];
    bool has_handoff_key;
} proxy_config;

/* Builds a snapshot of ST for the cluster DOMAIN (portal Services go to the
 * API at API_URL). The policy set of PREV (may
 * be NULL) is shared when no document it depends on changed. Returns 0 and a snapshot with one reference in *RET, or a negative errno
 * (-ENOMEM, or the policy set's errors). Problems of single Services (bad
 * upstream URL, unloadable certificate) are logged and the Service skipped. */
int proxy_config_build(proxy_state *st, const proxy_config *prev, const char *domain, const char *api_url,
                       proxy_config **ret);
proxy_config *proxy_config_ref(proxy_config *c);
/* Drops a reference; the last frees the snapshot and wipes injected secrets. */
void proxy_config_unref(proxy_config *c);

/* The Service serving HOST (LEN bytes, any case, an optional ":port" and
 * trailing dot ignored), or NULL. */
const proxy_service *proxy_config_route(const proxy_config *c, const char *host, size_t len);

/* Makes SNAP (consumed) the current snapshot. */
void proxy_config_publish(proxy_config *snap);
/* The current snapshot as a new reference, or NULL before the first. */
proxy_config *proxy_config_current(void);
/* The generation of the current snapshot (0 before the first): cheap enough
 * to check on every request. */
uint64_t proxy_config_generation(void);
/* Drops the current snapshot and frees the upstream origins (at exit). */
void proxy_config_shutdown(void);
