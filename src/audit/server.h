/* The audit role's server: the log's local HTTP/JSON API on audit.sock,
 * the only holder of the log's signing key. */
#pragma once

#include <stddef.h>

#include "basic/role.h"
#include "httpd/httpd.h"

/* What the audit role sees of the configuration; strings borrowed. */
typedef struct audit_server_config {
    const char *socket;     /* audit.sock: the api, proxy, kms and runner roles */
    httpd_mtls mtls;        /* audit.listen: the same to those roles on other machines (mutual TLS) */
    const char *db;         /* the log (SQLite) */
    const char *key;        /* the Ed25519 signing key, created on first start */
    const char *pub;        /* where the verifier key is published */
    const char *domain;     /* the checkpoints' origin is <domain>/cloister/audit */
    role_health *health;    /* the role's entry: ready */
    const role_health *roles; /* the supervisor's table: peer checks, appenders' names */
    size_t n_roles;
    unsigned access_retention_days; /* access-log segments not written for this long are removed; 0: kept */
} audit_server_config;

/* Opens the log and its key, serves until SIGTERM, then drains the appends
 * in flight. Returns the role's exit status. SIGTERM and SIGINT must be
 * blocked. */
int audit_serve(const audit_server_config *cfg);
