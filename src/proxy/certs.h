/* The proxy's certificates for its service hosts: issued on first use, in
 * memory, by the proxy's own intermediate CA (name-constrained to the
 * cluster domain by the cluster CA; see pki_ensure_intermediate), and kept
 * for the life of the process. The TLS handshake picks one by SNI. */
#pragma once

#include <openssl/ssl.h>

#define PROXY_CERTS_MAX 4096 /* host names with a certificate at once */

typedef struct proxy_certs proxy_certs;

/* A cache issuing with ISSUER and ISSUER_KEY (owned by the cache from now
 * on, also on failure). Returns 0 with *RET or -ENOMEM. */
int proxy_certs_new(X509 *issuer, EVP_PKEY *issuer_key, proxy_certs **ret);
void proxy_certs_free(proxy_certs *c);
/* The TLS context serving NAME (lower case), issued now when it is the
 * first time; NULL when it cannot be (cache full, issuance failed: the
 * handshake then goes on with the default certificate). Thread-safe; the
 * context stays valid until the cache is freed. */
SSL_CTX *proxy_certs_context(proxy_certs *c, const char *name);
