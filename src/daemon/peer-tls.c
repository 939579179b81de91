#include "daemon/peer-tls.h"

#include <errno.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "daemon/peer.h"

/* this process's role certificate (one role per process): written once at start, read by every client thread */
static char own_cert[4200], own_key[4200], own_ca[4200];

int peer_tls_set_identity(const char *cert, const char *key, const char *ca)
{
    if (strlen(cert) >= sizeof(own_cert) || strlen(key) >= sizeof(own_key) || strlen(ca) >= sizeof(own_ca))
        return -ENAMETOOLONG;
    strcpy(own_cert, cert);
    strcpy(own_key, key);
    strcpy(own_ca, ca);
    return 0;
}

bool peer_address_is_url(const char *address)
{
    return address && strncmp(address, "https://", 8) == 0;
}

/* The HOST:PORT of URL (https://HOST[:PORT], nothing after) into OUT, port
 * 443 when none is given. Returns 0, -EINVAL or -ENAMETOOLONG. */
static int url_host_port(const char *url, char *out, size_t size)
{
    const char *host = url + 8;
    if (!*host || strpbrk(host, "/?#@ "))
        return -EINVAL;
    const char *bracket = host[0] == '[' ? strchr(host, ']') : NULL;
    if (host[0] == '[' && !bracket)
        return -EINVAL;
    bool has_port = strchr(bracket ? bracket : host, ':') != NULL;
    int n = snprintf(out, size, "%s%s", host, has_port ? "" : ":443");
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int peer_curl_target(CURL *h, const char *address, const char *role, const char *path,
                     struct curl_slist **ret_list)
{
    char url[1024];
    int n;
    if (!peer_address_is_url(address)) {
        n = snprintf(url, sizeof(url), "http://%s%s", role, path);
        if (n < 0 || (size_t)n >= sizeof(url))
            return -ENAMETOOLONG;
        curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, address);
        curl_easy_setopt(h, CURLOPT_CONNECT_TO, NULL);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
        curl_easy_setopt(h, CURLOPT_URL, url);
        *ret_list = NULL;
        return 0;
    }
    if (!own_cert[0])
        return -ENOKEY;
    char target[600], route[700];
    int r = url_host_port(address, target, sizeof(target));
    if (r < 0)
        return r;
    /* the URL names the role, so curl checks the server's certificate for
     * <role>.cloister.internal; the connection goes to the configured peer */
    n = snprintf(url, sizeof(url), "https://%s" PEER_TLS_ROLE_SUFFIX "%s", role, path);
    if (n < 0 || (size_t)n >= sizeof(url))
        return -ENAMETOOLONG;
    n = snprintf(route, sizeof(route), "%s" PEER_TLS_ROLE_SUFFIX ":443:%s", role, target);
    if (n < 0 || (size_t)n >= sizeof(route))
        return -ENAMETOOLONG;
    struct curl_slist *list = curl_slist_append(NULL, route);
    if (!list)
        return -ENOMEM;
    curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, NULL);
    curl_easy_setopt(h, CURLOPT_CONNECT_TO, list);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CAINFO, own_ca);
    curl_easy_setopt(h, CURLOPT_CAPATH, NULL);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_SSLCERT, own_cert);
    curl_easy_setopt(h, CURLOPT_SSLKEY, own_key);
    curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    /* one call at a time per handle, as on the local socket: no HTTP/2 to negotiate */
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    *ret_list = list;
    return 0;
}

/* the roles a client calls, and how many mutual-TLS connections this process opened to each */
static const char *const peer_roles[] = {"api", "kms", "audit", "runner"};
static _Atomic uint64_t peer_connections[ELEMENTSOF(peer_roles)];

/* ROLE's index in peer_roles, or -1. */
static int peer_role_index(const char *role)
{
    for (size_t i = 0; i < ELEMENTSOF(peer_roles); i++)
        if (strcmp(peer_roles[i], role) == 0)
            return (int)i;
    return -1;
}

void peer_tls_count_connections(CURL *h, const char *address, const char *role)
{
    long opened = 0;
    int i = peer_role_index(role);
    if (i < 0 || !peer_address_is_url(address) || curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &opened) != CURLE_OK ||
        opened <= 0)
        return;
    atomic_fetch_add_explicit(&peer_connections[i], (uint64_t)opened, memory_order_relaxed);
}

uint64_t peer_tls_connections(const char *role)
{
    int i = peer_role_index(role);
    return i < 0 ? 0 : atomic_load_explicit(&peer_connections[i], memory_order_relaxed);
}

bool peer_curl_tls_refused(CURLcode c)
{
    return c == CURLE_SSL_CONNECT_ERROR || c == CURLE_PEER_FAILED_VERIFICATION || c == CURLE_SSL_CERTPROBLEM ||
           c == CURLE_SSL_CACERT_BADFILE;
}

int peer_cert_role(X509 *cert, char *out, size_t size)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int n = names ? sk_GENERAL_NAME_num(names) : 0;
    const ASN1_IA5STRING *dns = NULL;
    for (int i = 0; i < n; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS || dns) { /* a role certificate has one name, a DNS one */
            dns = NULL;
            n = -1;
            break;
        }
        dns = g->d.dNSName;
    }
    int r = -ENOENT;
    size_t suffix = strlen(PEER_TLS_ROLE_SUFFIX);
    if (n == 1 && dns) {
        const char *s = (const char *)ASN1_STRING_get0_data(dns);
        size_t len = (size_t)ASN1_STRING_length(dns);
        if (len > suffix && !memchr(s, 0, len) && memcmp(s + len - suffix, PEER_TLS_ROLE_SUFFIX, suffix) == 0 &&
            !memchr(s, '.', len - suffix)) {
            if (len - suffix >= size)
                r = -E2BIG;
            else {
                memcpy(out, s, len - suffix);
                out[len - suffix] = 0;
                r = 0;
            }
        }
    }
    GENERAL_NAMES_free(names);
    return r;
}

int peer_tls_check_hook(const void *data, X509 *cert, int *ret_peer)
{
    const peer_policy *p = data;
    char role[PEER_TLS_ROLE_MAX] = "", subject[256] = "";
    int r = peer_cert_role(cert, role, sizeof(role));
    if (r == 0)
        r = peer_check_name(p, role, ret_peer);
    if (r < 0) {
        X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
        log_fields(LOG_LEVEL_WARN, "refused a peer's certificate", "socket", p->socket, "role", role, "subject",
                   subject, "reason",
                   r == -EACCES ? "a role that may not use this socket"
                   : r == -ESRCH ? "not a role of this cluster"
                                 : "names no role (one DNS name <role>" PEER_TLS_ROLE_SUFFIX ")",
                   NULL);
    }
    return r;
}
