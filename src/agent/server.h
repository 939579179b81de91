/* The agent's attested TLS server: TLS on the listening socket the runner
 * hands over (the host reaches it through a Unix socket), with a
 * certificate carrying the sandbox's evidence (attest/atls.h), each
 * connection relayed to the workload's port on 127.0.0.1 by its own thread. */
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

#define SERVER_CONNECTIONS_MAX 64
#define SERVER_HANDSHAKE_TIMEOUT_S 10
#define SERVER_IDLE_TIMEOUT_S 120
#define SERVER_UPSTREAM_WAIT_S 10 /* how long a connection waits for the workload to listen */

/* Makes a certificate for the server's key whose evidence carries NONCE
 * (NULL: none); 0 with *RET (the caller frees it) or a negative errno. May
 * run on any connection thread at once. */
typedef int (*server_make_cert)(void *userdata, const uint8_t *nonce, size_t nonce_len, X509 **ret);

typedef struct server_config {
    int listen_fd;         /* a listening stream socket; borrowed */
    uint16_t port;         /* the workload's, on 127.0.0.1 */
    EVP_PKEY *key;         /* the certificate's key; borrowed, outlives the server */
    server_make_cert make_cert;
    void *userdata;
} server_config;

/* The server lives until the process exits: its connection threads and
 * the TLS callbacks refer to it, and the agent exits rather than stopping
 * them one by one. */
typedef struct server server;

/* A server with a first certificate (made without a nonce). Returns 0 with
 * *RET, or a negative errno (the certificate could not be made). */
int server_new(const server_config *cfg, server **ret);
/* Replaces the default certificate by a fresh one; connections already
 * open keep theirs. 0 or a negative errno (the old one stays). */
int server_refresh(server *s);
/* Accepts the connections waiting on the listening socket (non-blocking)
 * and starts a thread for each, at most SERVER_CONNECTIONS_MAX at once. */
void server_accept(server *s);
