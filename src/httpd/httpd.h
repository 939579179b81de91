/* One h2o HTTP server, as every role runs it: a listener on TCP (with TLS
 * and HTTP/2 when a certificate is given) or on a Unix socket, one event
 * loop per thread, and a drain on SIGTERM/SIGINT: stop accepting, let the
 * component finish what it has in flight, close the remaining connections,
 * return. Components plug in through hooks and keep per-thread state. */
#pragma once

#include <h2o.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/ssl.h>

/* Descriptors kept for the process's own files, sockets and event loops
 * when the connection cap is fitted under RLIMIT_NOFILE. */
#define HTTPD_FDS_RESERVED 64

typedef struct httpd_hooks {
    /* Registers the component's handlers on PATHCONF, once, before any thread runs. */
    void (*register_handlers)(h2o_pathconf_t *pathconf, void *userdata);
    /* Optional per-thread state: created on the thread's loop (CTX), asked to
     * end its long-lived responses at shutdown (drain), asked whether it still
     * waits on something (busy), and released (dispose). */
    void *(*thread_init)(h2o_context_t *ctx, void *userdata);
    void (*thread_drain)(void *state);
    bool (*thread_busy)(void *state);
    void (*thread_dispose)(void *state);
    /* Optional: adjusts the TLS context after the default certificate is
     * loaded (the proxy chooses certificates by SNI). Returns 0 or a
     * negative errno, which stops the server from starting. */
    int (*configure_tls)(SSL_CTX *ctx, void *userdata);
} httpd_hooks;

/* A role's listener for roles on other machines: "HOST:PORT" (NULL or "":
 * none), its role certificate and key, and the cluster CA its clients'
 * certificates must chain to (paths). */
typedef struct httpd_mtls {
    const char *listen;
    const char *cert_file, *key_file, *ca_file;
} httpd_mtls;

typedef struct httpd_config {
    const char *name;      /* in logs: "API", "runner" */
    const char *listen;    /* "HOST:PORT", or "unix:PATH" (mode 0600; a stale socket is replaced) */
    const char *cert_file; /* TLS when set (TCP only) */
    const char *key_file;
    const char *plain_listen;   /* an additional plain-HTTP "HOST:PORT" listener, or NULL */
    unsigned threads;           /* default 1 */
    size_t max_request_body;    /* bodies announced larger are refused by h2o (413) */
    /* open client connections at once; more are closed at accept (0: no
     * cap). Lowered at start to what RLIMIT_NOFILE allows (less
     * HTTPD_FDS_RESERVED, divided by fds_per_connection) and logged. */
    unsigned max_connections;
    unsigned fds_per_connection; /* descriptors a connection may hold (the proxy's: its upstream's too); 0: 1 */
    uint64_t request_timeout_ms; /* HTTP/1: reading a request's headers and body, and keep-alive idleness (0: h2o's 10 s) */
    uint64_t idle_timeout_ms;    /* HTTP/2: an idle connection (0: h2o's 10 s) */
    httpd_hooks hooks;
    /* The component's handlers call httpd_framing_check() first
     * (httpd/framing.h) and answer what the connection guards found in their
     * own shape. When false, httpd answers it before any handler runs: a
     * request standing in for an HTTP/1 head h2o could not parse, or one
     * whose HTTP/2 header block repeats a framing field, gets 400
     * {"error":{"code":"bad_request",…}} and never reaches a handler. */
    bool handlers_check_framing;
    /* HTTP/1 connections (plain, and TLS without h2) are served by h1front
     * (httpd/h1front.h) instead of h2o's HTTP/1 server. */
    bool h1_front;
    void *userdata;
    _Atomic bool *ready_flag; /* set once serving, may be NULL */
    /* Unix listeners only (not the ones added with httpd_listener_add()):
     * decides on each accepted connection from its SO_PEERCRED pid and uid
     * before a byte is read. Returns 0 and an identity in *RET_PEER, kept
     * with the connection (httpd_conn_peer()), to serve it; a negative errno
     * (after logging why) closes it. NULL: whoever the socket's mode lets
     * connect. */
    int (*check_peer)(const void *data, pid_t pid, uid_t uid, int *ret_peer);
    const void *peer_data;
    /* An additional TCP listener with mutual TLS (roles on other machines,
     * daemon/peer-tls.h), when mtls.listen is set: it presents mtls.cert_file
     * (with mtls.key_file) and requires a client certificate that chains to
     * mtls.ca_file, on which check_cert (with peer_data)
     * decides during the handshake: 0 and an identity in *RET_PEER (kept
     * with the connection, httpd_conn_peer()) to serve it; a negative errno
     * (after logging why) fails the handshake with a TLS alert. No session
     * is resumed: every connection shows its certificate. */
    httpd_mtls mtls;
    int (*check_cert)(const void *data, X509 *cert, int *ret_peer);
} httpd_config;

/* Serves until SIGTERM or SIGINT, which the caller must have blocked in
 * every thread. Returns 0 after a clean stop, or a negative errno when the
 * server cannot start (bad address, port in use, unreadable certificate). */
int httpd_run(const httpd_config *cfg);
/* MAX client connections, lowered to what RLIMIT_NOFILE allows when each
 * holds FDS_PER_CONNECTION descriptors (HTTPD_FDS_RESERVED kept): the cap
 * httpd_run() applies to a max_connections of MAX. */
unsigned httpd_connection_limit(unsigned max, unsigned fds_per_connection);

/* The per-thread state (thread_init's result) of the loop serving REQ. */
void *httpd_thread_state(h2o_req_t *req);
/* The client's address of REQ as text into OUT ("" when unknown). */
void httpd_peer_ip(h2o_req_t *req, char *out, size_t size);
/* The identity check_peer (or check_cert) gave REQ's connection; -1 when
 * not checked. */
int httpd_conn_peer(h2o_req_t *req);
/* Client connections open now, over every thread of the server serving REQ. */
unsigned httpd_connections(h2o_req_t *req);
/* True once the server serving REQ has begun to stop. */
bool httpd_stopping(h2o_req_t *req);
/* Objects of one SIZE that one loop thread allocates for every request and
 * reuses (httpd_recycled_alloc()): h2o's recycling allocator, at most
 * KEPT.max of them waiting. */
typedef struct httpd_recycler {
    h2o_mem_recycle_t kept;
    size_t size;
} httpd_recycler;

/* An object of R->size bytes (uninitialised) for a request of POOL, reused
 * from R or allocated: when the pool is cleared DISPOSE is called on it,
 * then it goes back to R (freed when R is full). h2o_mem_alloc_shared()
 * without a large malloc per request (malloc's thread cache holds 7 chunks
 * of a size, fewer than the requests in flight): only a small handle. */
void *httpd_recycled_alloc(httpd_recycler *r, h2o_mem_pool_t *pool, void (*dispose)(void *));
/* Frees the objects waiting in R (its thread ends). */
void httpd_recycler_clear(httpd_recycler *r);
#define HTTPD_TLS_RECORD_MAX 16384 /* the most plaintext one TLS record carries */
/* h2o's TLS sockets make a record of every buffer written: the N buffers
 * at VEC become one (copied to POOL) when together they fit one record, so
 * a small message is one record (one encryption here, one decryption at the
 * peer) as nginx and HAProxy send it. Returns the new count (1, or N). */
size_t httpd_coalesce_for_tls(h2o_mem_pool_t *pool, h2o_iovec_t *vec, size_t n);

/* Additional listeners a component opens while serving (the runner's
 * per-sandbox channels). Connections accepted on one carry its TAG, so a
 * handler knows where a request came from without trusting anything the
 * client says. */
typedef struct httpd_listener httpd_listener;

/* Binds and listens on a Unix socket of TYPE (SOCK_STREAM, SOCK_SEQPACKET)
 * at PATH (replacing a stale one), mode 0600, non-blocking, close-on-exec.
 * Returns 0 and the socket in *RET_FD, or a negative errno. */
int httpd_listen_unix(const char *path, int type, int *ret_fd);

/* Starts accepting on the listening socket FD (taken over, closed by
 * httpd_listener_close()) on the loop of CTX, which must be the context
 * thread_init() received, and from that loop's thread. Its connections are
 * served by the same handlers, count towards max_connections, and at most
 * MAX_CONNS of them (0: no own cap) are open at once; TAG must not be 0.
 * On success *RET is the listener; returns 0 or -EINVAL / -ENOMEM (FD is
 * then closed too). */
int httpd_listener_add(h2o_context_t *ctx, int fd, uint64_t tag, unsigned max_conns, httpd_listener **ret);
/* Stops accepting, closes the socket and shuts down the connections it
 * accepted; accepts NULL. Components close theirs in thread_drain() at the
 * latest. From the loop's thread only. */
void httpd_listener_close(httpd_listener *l);
/* The tag of the listener REQ's connection was accepted on; 0 for the
 * server's own listeners. */
uint64_t httpd_conn_tag(h2o_req_t *req);
