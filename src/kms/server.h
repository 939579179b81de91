/* The kms role's server: the local HTTP/JSON API on kms.sock (and
 * `cloisterd unseal`'s socket) in front of the root key and the key ring. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "basic/role.h"
#include "httpd/httpd.h"
#include "kms/seal.h"

/* What the kms role sees of the configuration; strings borrowed. */
typedef struct kms_server_config {
    const char *socket;        /* kms.sock: answers the api and runner roles only */
    httpd_mtls mtls;           /* kms.listen: the same to those roles on other machines (mutual TLS) */
    const char *unseal_socket; /* `cloisterd unseal`'s: status and unseal only */
    const char *audit_socket;  /* unseal attempts are audited there (its socket, or its https:// URL) */
    const char *data_dir;      /* named in the hint of a sealed answer */
    const char *keyring_file;
    const char *job_runs_dir;     /* the job release's run counts, one file per job digest */
    const char *platform_ca_cert; /* the roots of sandbox evidence, for the job release */
    bool dev;                     /* --dev: the built-in cloister-jobs policy accepts sandbox evidence */
    kms_seal_config seal;      /* how the root key is sealed and where it lies */
    /* the passphrase or PIN read from the configured file (malloc, SECRET_LEN bytes), or NULL:
     * kms_serve unseals with it at once, then wipes and frees it */
    char *secret;
    size_t secret_len;
    role_health *health;       /* the role's entry: ready, sealed */
    const role_health *roles;  /* the supervisor's table, for the peer check */
    size_t n_roles;
} kms_server_config;

/* Hardens the process, unseals at once in dev mode or with the configured
 * secret (else stays sealed until `cloisterd unseal`), serves until SIGTERM, then wipes the keys. Returns
 * the role's exit status. SIGTERM and SIGINT must be blocked. */
int kms_serve(const kms_server_config *cfg);
