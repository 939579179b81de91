/* The cluster PKI: certificate authorities created once per data dir (the
 * cluster CA for TLS, the platform CA for sandbox attestation), server
 * certificates for the roles' listeners, the runner's signing key, and the
 * proxy's name-constrained intermediate CA with the host certificates it
 * issues in memory. */
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>
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

/* A role's certificate names the role in its one DNS subjectAltName,
 * <role>.cloister.internal (also its common name): what mutual TLS between
 * roles checks a peer against. */
#define PKI_ROLE_NAME_SUFFIX ".cloister.internal"

/* Issues (or keeps, while valid for 30 more days) role ROLE's P-256
 * certificate for both ends of a TLS connection (serverAuth, clientAuth),
 * signed by the cluster CA. Returns 0 or a negative errno (logged). */
int pki_ensure_role_cert(const char *ca_cert_path, const char *ca_key_path, const char *role, const char *cert_path,
                         const char *key_path);

/* Issues (or keeps) a P-384 signing certificate for COMMON_NAME signed by
 * the CA (the runner's platform key, which signs sandbox evidence). */
int pki_ensure_signing_cert(const char *ca_cert_path, const char *ca_key_path, const char *common_name,
                            const char *cert_path, const char *key_path);

/* Issues (or keeps, while valid for 30 more days) an intermediate CA signed
 * by the CA (P-256, pathlen 0) restricted by NAME_CONSTRAINTS (OpenSSL
 * syntax: "critical,permitted;DNS:.example.com,excluded;DNS:api.example.com").
 * The proxy holds it and issues its hosts' certificates: it can never mint
 * a certificate outside the constraints. */
int pki_ensure_intermediate(const char *ca_cert_path, const char *ca_key_path, const char *common_name,
                            const char *name_constraints, const char *cert_path, const char *key_path);

/* Loads a PEM certificate (the first of the file) and its private key.
 * Returns 0 with both (the caller frees them) or -EINVAL (logged). */
int pki_load(const char *cert_path, const char *key_path, X509 **ret_cert, EVP_PKEY **ret_key);

/* Issues in memory a P-256 server certificate for the DNS name NAME signed
 * by ISSUER/ISSUER_KEY. Returns 0 with the certificate and its key (the
 * caller frees them), -EINVAL for a name that cannot be one, or -EIO. */
int pki_issue_server(X509 *issuer, EVP_PKEY *issuer_key, const char *name, X509 **ret_cert, EVP_PKEY **ret_key);
