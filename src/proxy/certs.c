/* The proxy's host certificates (see certs.h). */
#include "proxy/certs.h"

#include <errno.h>
#include <h2o.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "basic/log.h"
#include "pki/pki.h"

typedef struct host_cert {
    char name[254];
    SSL_CTX *ctx;
} host_cert;

struct proxy_certs {
    pthread_mutex_t lock;
    X509 *issuer;
    EVP_PKEY *issuer_key;
    host_cert *hosts;
    size_t n_hosts;
};

int proxy_certs_new(X509 *issuer, EVP_PKEY *issuer_key, proxy_certs **ret)
{
    proxy_certs *c = calloc(1, sizeof(*c));
    host_cert *hosts = calloc(PROXY_CERTS_MAX, sizeof(*hosts));
    if (!c || !hosts) {
        free(c);
        free(hosts);
        X509_free(issuer);
        EVP_PKEY_free(issuer_key);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->issuer = issuer;
    c->issuer_key = issuer_key;
    c->hosts = hosts;
    *ret = c;
    return 0;
}

void proxy_certs_free(proxy_certs *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_hosts; i++)
        SSL_CTX_free(c->hosts[i].ctx);
    free(c->hosts);
    X509_free(c->issuer);
    EVP_PKEY_free(c->issuer_key);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* A server context presenting CERT (with the issuer as chain) and KEY,
 * set up as the listener's: TLS 1.2+, no compression or renegotiation,
 * h2 and http/1.1 by ALPN. NULL on failure. */
static SSL_CTX *host_context(proxy_certs *c, X509 *cert, EVP_PKEY *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_add1_chain_cert(ctx, c->issuer) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    return ctx;
}

SSL_CTX *proxy_certs_context(proxy_certs *c, const char *name)
{
    if (!c || strlen(name) >= sizeof(c->hosts[0].name))
        return NULL;
    SSL_CTX *found = NULL;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->n_hosts && !found; i++)
        if (strcmp(c->hosts[i].name, name) == 0)
            found = c->hosts[i].ctx;
    if (!found && c->n_hosts < PROXY_CERTS_MAX) {
        X509 *cert = NULL;
        EVP_PKEY *key = NULL;
        if (pki_issue_server(c->issuer, c->issuer_key, name, &cert, &key) == 0 &&
            (found = host_context(c, cert, key))) {
            host_cert *h = &c->hosts[c->n_hosts++];
            strcpy(h->name, name);
            h->ctx = found;
            log_fields(LOG_LEVEL_INFO, "issued a certificate for a service host", "name", name, NULL);
        } else {
            log_fields(LOG_LEVEL_WARN, "cannot issue a certificate for a service host; the default one is used",
                       "name", name, NULL);
        }
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}
