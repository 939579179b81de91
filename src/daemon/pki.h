/* The cluster PKI: certificate authorities created once per data dir (the
 * cluster CA for TLS, the platform CA for sandbox attestation), server
 * certificates for the roles' listeners, and the runner's signing key. */
#pragma once

#include <stddef.h>

/* Loads the CA at CERT_PATH/KEY_PATH, creating both (key mode 0600) when
 * absent with COMMON_NAME and an EC key on CURVE ("P-256", "P-384").
 * Returns 0 or a negative errno; logs what failed. */
int pki_ensure_ca(const char *cert_path, const char *key_path, const char *common_name, const char *curve);

/* Issues a server certificate signed by the CA for the DNS names and IP
 * addresses in NAMES (N_NAMES entries, the first is the common name) unless a
 * valid one covering them already exists at CERT_PATH. The file at CERT_PATH
 * holds the leaf then the CA certificate. */
int pki_ensure_server_cert(const char *ca_cert_path, const char *ca_key_path, const char *const *names,
                           size_t n_names, const char *cert_path, const char *key_path);

/* Issues (or keeps) a P-384 signing certificate for COMMON_NAME signed by
 * the CA (the runner's platform key, which signs sandbox evidence). */
int pki_ensure_signing_cert(const char *ca_cert_path, const char *ca_key_path, const char *common_name,
                            const char *cert_path, const char *key_path);
