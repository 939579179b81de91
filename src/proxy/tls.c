/* TLS: a service host's own certificate by SNI, and the 421 for a request
 * on a connection opened for another host (see corridor.h). */
#include <arpa/inet.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "proxy/certs.h"
#include "proxy/corridor.h"

/* The listener's TLS context (proxy_configure_tls), by which the SSL of a
 * connection is recognised (ssl_of). */
static SSL_CTX *listener_tls;

/* The prefix of h2o 2.2's private struct st_h2o_socket_ssl_t (socket.c):
 * the context a connection was accepted with, then its SSL. h2o offers no
 * accessor for the SSL (nor its SNI); ssl_of() trusts this layout only
 * when the context found there is the listener's. */
struct h2o_socket_ssl_prefix {
    SSL_CTX *ssl_ctx;
    SSL *ossl;
};

/* The SSL of REQ's TLS connection, or NULL (with *RET_UNKNOWN set when
 * the connection is TLS but its SSL cannot be found). */
static SSL *ssl_of(h2o_req_t *req, bool *ret_unknown)
{
    *ret_unknown = false;
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    if (!sock || !sock->ssl)
        return NULL;
    const struct h2o_socket_ssl_prefix *p = (const void *)sock->ssl;
    if (!listener_tls || p->ssl_ctx != listener_tls || !p->ossl) {
        *ret_unknown = true;
        return NULL;
    }
    return p->ossl;
}

/* Whether NAME is an IPv4 or IPv6 address. RFC 6066 allows only host names
 * as a server name, but some clients (wrk, older libraries) send the address
 * they dialled: like no server name, it names no service. */
static bool is_ip_literal(const char *name)
{
    struct in6_addr a;
    return inet_pton(AF_INET, name, &a) == 1 || inet_pton(AF_INET6, name, &a) == 1;
}

const char *proxy_sni_misdirected(const proxy_config *c, const proxy_service *svc, const char *sni)
{
    if (!sni || is_ip_literal(sni))
        return NULL;
    if (proxy_config_route(c, sni, strlen(sni)) != svc)
        return "this TLS connection was opened (SNI) for another host than the request's Host: open a new "
               "connection to that host";
    return NULL;
}

/* Whether the TLS connection of REQ was opened (SNI) for another service
 * than SVC, the one its Host routes to in C: then the answer is 421
 * Misdirected Request (RFC 9110, 15.5.20), as a browser that reused a
 * connection for another host expects. A connection without SNI (a client
 * that dialled an address) names no service. Returns the reason, or NULL. */
const char *proxy_misdirected(h2o_req_t *req, const proxy_config *c, const proxy_service *svc)
{
    if (req->scheme != &H2O_URL_SCHEME_HTTPS)
        return NULL;
    bool unknown;
    SSL *ssl = ssl_of(req, &unknown);
    if (unknown)
        return "the proxy cannot tell which host this TLS connection was opened for";
    return proxy_sni_misdirected(c, svc, ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL);
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const proxy_settings *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    size_t len = name ? strlen(name) : 0, dlen = strlen(s->domain);
    if (!s->certs || len <= dlen + 1 || len > 253 || name[len - dlen - 1] != '.' ||
        strcasecmp(name + len - dlen, s->domain) != 0)
        return SSL_TLSEXT_ERR_OK; /* not under the domain: the default certificate */
    char lower[254];
    for (size_t i = 0; i <= len; i++)
        lower[i] = (char)tolower((unsigned char)name[i]);
    proxy_config *c = proxy_config_current();
    const proxy_service *svc = proxy_config_route(c, lower, len);
    SSL_CTX *ctx = svc ? proxy_certs_context(s->certs, lower) : NULL;
    proxy_config_unref(c);
    if (ctx)
        SSL_set_SSL_CTX(ssl, ctx);
    return SSL_TLSEXT_ERR_OK;
}

int proxy_configure_tls(SSL_CTX *ctx, void *userdata)
{
    listener_tls = ctx;
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, userdata);
    return 0;
}
