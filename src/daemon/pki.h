/* The cluster PKI: an ECDSA P-256 certificate authority created once per
 * data dir, and server certificates it issues for the roles' listeners. */
#pragma once

#include <stddef.h>

/* Loads the CA at CERT_PATH/KEY_PATH, creating both (key mode 0600) when
 * absent. Returns 0 or a negative errno; logs what failed. */
int pki_ensure_ca(const char *cert_path, const char *key_path);

/* Issues a server certificate signed by the CA for the DNS names and IP
 * addresses in NAMES (N_NAMES entries, the first is the common name) unless a
 * valid one covering them already exists at CERT_PATH. The file at CERT_PATH
 * holds the leaf then the CA certificate. */
int pki_ensure_server_cert(const char *ca_cert_path, const char *ca_key_path, const char *const *names,
                           size_t n_names, const char *cert_path, const char *key_path);
