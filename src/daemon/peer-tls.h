/* A role-to-role connection when the peer is another process or machine:
 * HTTP/JSON over TCP with mutual TLS. Both ends present their role
 * certificate (`cloisterd --init`, pki/pki.h: issued by the cluster CA, its
 * one DNS subjectAltName <role>.cloister.internal). The server checks the
 * client's role against the same allow-list as its local socket
 * (daemon/peer.h); the client checks that the server's certificate names the
 * role it meant to reach. A role's clients take an address that is either
 * its local Unix socket's path or the peer's https://HOST:PORT URL, so one
 * call site serves both. */
#pragma once

#include <curl/curl.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PEER_TLS_ROLE_SUFFIX ".cloister.internal" /* pki.h's PKI_ROLE_NAME_SUFFIX */
#define PEER_TLS_ROLE_MAX 32                      /* a role name's bytes, with its NUL */

/* Records this process's role certificate CERT, its key KEY and the cluster
 * CA (all paths, copied) that its clients present and verify with; set once
 * at the role's start, before any client call. Returns 0 or -ENAMETOOLONG. */
int peer_tls_set_identity(const char *cert, const char *key, const char *ca);

/* Whether ADDRESS names a peer on another machine (https://HOST:PORT) rather
 * than a local Unix socket's path. */
bool peer_address_is_url(const char *address);

/* Points curl handle H at PATH ("/v1/encrypt") of role ROLE's server at
 * ADDRESS: over its Unix socket (http://ROLE/PATH), or, for an https:// URL,
 * over TCP with this process's role certificate (peer_tls_set_identity()),
 * the server verified against the cluster CA and required to name ROLE
 * (its certificate's name is checked as the URL's host while the connection
 * goes to ADDRESS's host and port). *RET_LIST is the connection's routing
 * list (NULL for a socket): the caller frees it with curl_slist_free_all()
 * after the transfer. Returns 0; -ENAMETOOLONG, -ENOMEM, -EINVAL (a URL that
 * is not https://HOST:PORT), or -ENOKEY (a URL but no identity set). */
int peer_curl_target(CURL *h, const char *address, const char *role, const char *path,
                     struct curl_slist **ret_list);

/* Adds the connections curl handle H opened for its last transfer to
 * ROLE's count when ADDRESS is a peer's https:// URL: each one was a mutual
 * TLS handshake. Call after every transfer of a peer client. */
void peer_tls_count_connections(CURL *h, const char *address, const char *role);

/* The mutual-TLS connections this process's clients opened to ROLE ("api",
 * "kms", "audit" or "runner"; 0 for another) since it started: a kept
 * connection serves many calls, so this grows far slower than the calls. */
uint64_t peer_tls_connections(const char *role);

/* Whether curl's error C means the TLS handshake with a peer failed
 * (a certificate refused by either end, or not readable). */
bool peer_curl_tls_refused(CURLcode c);

/* The role CERT names: its one DNS subjectAltName <role>.cloister.internal
 * (a certificate naming none, or several names, names no role). Returns 0
 * with the role in OUT (SIZE bytes), -ENOENT when it names none, -E2BIG
 * when OUT is too small. */
int peer_cert_role(X509 *cert, char *out, size_t size);

/* The check of a verified client certificate CERT on a server's mutual-TLS
 * listener (httpd_config.check_cert), DATA being the server's peer_policy:
 * the role CERT names must be one the policy allows. Returns 0 and the
 * role's index in the table in *RET_PEER; a negative errno after logging
 * the refusal ("refused a peer's certificate", with the socket, the role the
 * certificate names, its subject and why). */
int peer_tls_check_hook(const void *data, X509 *cert, int *ret_peer);
