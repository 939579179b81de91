#include "httpd/httpd.h"
#include "httpd/framing.h"
#include "httpd/h1front.h"
#include "httpd/json.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <h2o/http1.h>
#include <h2o/http2.h>
#include <h2o/http2_internal.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"

#define DRAIN_TIMEOUT_NS (5 * NSEC_PER_SEC)

typedef struct httpd_server httpd_server;

/* One event loop thread. The h2o context comes first so that a request's
 * req->conn->ctx leads back here. */
typedef struct httpd_thread {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx[3]; /* the main listener's, the plain-HTTP one's, the mutual-TLS one's */
    httpd_server *server;
    void *state;          /* the component's, from hooks.thread_init */
    h2o_linklist_t conns; /* open client connections, closed at shutdown */
    h2o_socket_t *listener[3];
    pthread_t tid;
} httpd_thread;

struct httpd_server {
    const httpd_config *cfg;
    h2o_globalconf_t globalconf;
    SSL_CTX *ssl_ctx;
    SSL_CTX *mtls_ctx;       /* the mutual-TLS listener's, NULL without one */
    int listen_fd, plain_fd; /* plain_fd: -1 without a plain-HTTP listener */
    int mtls_fd;             /* -1 without a mutual-TLS listener */
    httpd_thread *threads;
    unsigned n_threads;
    unsigned max_conns; /* cfg's cap fitted under the descriptor limit; 0: none */
    _Atomic unsigned n_conns;
    _Atomic bool stopping;
};

void *httpd_thread_state(h2o_req_t *req)
{
    return ((httpd_thread *)req->conn->ctx)->state;
}

/* The IPv4 address A in dotted decimal into OUT (at least INET_ADDRSTRLEN
 * bytes), as inet_ntop writes it without its sprintf: the proxy writes the
 * peer's address on every request. */
static void ipv4_text(const struct in_addr *a, char *out)
{
    const uint8_t *octet = (const uint8_t *)&a->s_addr;
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = octet[i];
        if (i)
            *p++ = '.';
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
    }
    *p = 0;
}

/* The address SS (LEN bytes; 0: unknown) as text into OUT ("" when unknown). */
static void address_text(const struct sockaddr_storage *ss, socklen_t len, char *out, size_t size)
{
    out[0] = 0;
    if (len == 0)
        return;
    if (ss->ss_family == AF_INET && size >= INET_ADDRSTRLEN)
        ipv4_text(&((const struct sockaddr_in *)ss)->sin_addr, out);
    else if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, (socklen_t)size);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, out, (socklen_t)size);
}

void httpd_peer_ip(h2o_req_t *req, char *out, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    address_text(&ss, len, out, size);
}

unsigned httpd_connections(h2o_req_t *req)
{
    return atomic_load(&((httpd_thread *)req->conn->ctx)->server->n_conns);
}

bool httpd_stopping(h2o_req_t *req)
{
    return atomic_load(&((httpd_thread *)req->conn->ctx)->server->stopping);
}

/* What a pool's shared entry holds for httpd_recycled_alloc(). */
typedef struct recycled_handle {
    void *object;
    void (*dispose)(void *);
    httpd_recycler *recycler;
} recycled_handle;

static void recycled_release(void *p)
{
    recycled_handle *h = p;
    h->dispose(h->object);
    h2o_mem_free_recycle(&h->recycler->kept, h->object);
}

void *httpd_recycled_alloc(httpd_recycler *r, h2o_mem_pool_t *pool, void (*dispose)(void *))
{
    void *object = h2o_mem_alloc_recycle(&r->kept, r->size);
    recycled_handle *h = h2o_mem_alloc_shared(pool, sizeof(*h), recycled_release);
    *h = (recycled_handle){.object = object, .dispose = dispose, .recycler = r};
    return object;
}

void httpd_recycler_clear(httpd_recycler *r)
{
    while (r->kept.cnt) /* taken back from the allocator, then freed */
        free(h2o_mem_alloc_recycle(&r->kept, r->size));
}

/* One TLS record per small message: see httpd.h. */
size_t httpd_coalesce_for_tls(h2o_mem_pool_t *pool, h2o_iovec_t *vec, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += vec[i].len;
    if (total > HTTPD_TLS_RECORD_MAX)
        return n;
    char *one = h2o_mem_alloc_pool(pool, total), *p = one;
    for (size_t i = 0; i < n; i++) {
        memcpy(p, vec[i].base, vec[i].len);
        p += vec[i].len;
    }
    vec[0] = h2o_iovec_init(one, total);
    return 1;
}

int httpd_listen_unix(const char *path, int type, int *ret_fd)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return negative_errno();
    unlink(path);
    mode_t old = umask(0077);
    int e = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1024) < 0 ? negative_errno() : 0;
    umask(old);
    if (e == 0 && chmod(path, 0600) < 0)
        e = negative_errno();
    if (e < 0) {
        close(fd);
        return e;
    }
    *ret_fd = fd;
    return 0;
}

/* Splits "HOST:PORT" ("[::1]:7443" for IPv6; PORT decimal, at most 65535:
 * getaddrinfo() would take 99999 as 34463) and binds a listening socket. */
static int listen_tcp(const char *addr, int *ret_fd)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1] || (size_t)(colon - addr) >= sizeof(host) ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(colon + 1) > 5 || atoi(colon + 1) > 65535)
        return -EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = 0;
        h++;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *res = NULL;
    if (getaddrinfo(h, colon + 1, &hints, &res) != 0 || !res)
        return -EINVAL;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), on = 1;
    int e = 0;
    if (fd < 0)
        e = negative_errno();
    else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
             bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0)
        e = negative_errno();
    freeaddrinfo(res);
    if (e < 0) {
        if (fd >= 0)
            close(fd);
        return e;
    }
    *ret_fd = fd;
    return 0;
}

static SSL_CTX *tls_context(const httpd_config *cfg)
{
    const char *cert = cfg->cert_file, *key = cfg->key_file;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        char buf[256];
        ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
        log_fields(LOG_LEVEL_ERROR, "cannot load the server certificate", "cert", cert, "key", key, "error", buf,
                   NULL);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle connections keep no record buffers */
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    if (cfg->hooks.configure_tls) {
        int e = cfg->hooks.configure_tls(ctx, cfg->userdata);
        if (e < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot configure TLS", "server", cfg->name, "error", strerror(-e), NULL);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

/* The handshake's check of the client's certificate chain: a chain that
 * verified up to the cluster CA, whose leaf (depth 0) check_cert accepts. */
static int verify_client(int preverify_ok, X509_STORE_CTX *store)
{
    if (!preverify_ok || X509_STORE_CTX_get_error_depth(store) != 0)
        return preverify_ok;
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    const httpd_config *cfg = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    int peer;
    if (cfg->check_cert(cfg->peer_data, X509_STORE_CTX_get_current_cert(store), &peer) < 0) {
        X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    return 1;
}

/* The mutual-TLS listener's context: the role's certificate, a client
 * certificate required and verified against the cluster CA and check_cert,
 * no session resumption (each connection is checked afresh). NULL (logged)
 * when a file cannot be loaded. */
static SSL_CTX *mtls_context(const httpd_config *cfg)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    STACK_OF(X509_NAME) *cas = SSL_load_client_CA_file(cfg->mtls.ca_file);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->mtls.cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, cfg->mtls.key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1 || SSL_CTX_load_verify_locations(ctx, cfg->mtls.ca_file, NULL) != 1 ||
        !cas) {
        char buf[256];
        ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
        log_fields(LOG_LEVEL_ERROR, "cannot load the role certificate or the cluster CA for mutual TLS", "server",
                   cfg->name, "cert", cfg->mtls.cert_file, "ca", cfg->mtls.ca_file, "error", buf, NULL);
        sk_X509_NAME_pop_free(cas, X509_NAME_free);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_client_CA_list(ctx, cas);
    SSL_CTX_set_app_data(ctx, (void *)cfg);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_client);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    return ctx;
}

/* The prefix of h2o 2.2's private struct st_h2o_socket_ssl_t (socket.c):
 * the context a connection was accepted with, then its SSL (h2o offers no
 * accessor for the SSL). Trusted only when the context found there is CTX. */
struct h2o_socket_ssl_prefix {
    SSL_CTX *ssl_ctx;
    SSL *ossl;
};

/* The identity check_cert gives the client certificate of SOCK, a
 * connection of the mutual-TLS listener whose handshake ended with ERR
 * (NULL: it succeeded). A handshake that failed other than by check_cert's
 * refusal (logged there) is logged: no certificate, one the cluster CA did
 * not issue. Returns 0 and the identity in *RET_PEER, or a negative errno. */
static int mtls_peer(const httpd_server *srv, h2o_socket_t *sock, const char *err, int *ret_peer)
{
    const struct h2o_socket_ssl_prefix *p = (const void *)sock->ssl;
    SSL *ssl = p && p->ssl_ctx == srv->mtls_ctx ? p->ossl : NULL;
    long verified = ssl ? SSL_get_verify_result(ssl) : X509_V_ERR_UNSPECIFIED;
    X509 *cert = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    if (!err && cert && verified == X509_V_OK)
        return srv->cfg->check_cert(srv->cfg->peer_data, cert, ret_peer);
    if (verified != X509_V_ERR_APPLICATION_VERIFICATION) {
        struct sockaddr_storage ss;
        char ip[INET6_ADDRSTRLEN];
        address_text(&ss, h2o_socket_getpeername(sock, (struct sockaddr *)&ss), ip, sizeof(ip));
        log_fields(LOG_LEVEL_WARN, "refused a peer: the mutual TLS handshake failed", "server", srv->cfg->name,
                   "peer", ip, "reason",
                   !cert && ssl ? "no client certificate"
                   : verified != X509_V_OK ? X509_verify_cert_error_string(verified)
                                           : (err ? err : "handshake failed"),
                   NULL);
    }
    return -EACCES;
}

/* A listener added with httpd_listener_add(). It lives until it is closed
 * and the last connection it accepted is gone. */
struct httpd_listener {
    httpd_thread *thread;
    h2o_socket_t *sock; /* NULL once closed */
    h2o_accept_ctx_t actx;
    uint64_t tag;
    unsigned max_conns, n_conns;
};

/* HTTP/2 streams answered 413 while their client still sends the body: their
 * DATA frames are read and dropped until the client is told to stop (see
 * h2_guard_read). */
#define H2_REFUSED_MAX 8
/* Streams whose header block framing_check_h2_block() refused, until their
 * handler asks (httpd_guard_verdict) or h2o closes them. */
#define H2_VERDICTS_MAX 8
typedef struct h2_guard {
    ssize_t (*inner)(h2o_http2_conn_t *conn, const uint8_t *src, size_t len, const char **err_desc);
    uint32_t refused[H2_REFUSED_MAX];
    size_t n_refused;
    struct {
        uint32_t stream_id;
        const char *why;
    } verdicts[H2_VERDICTS_MAX];
    size_t n_verdicts;
} h2_guard;

/* What the HTTP/1 head guard keeps about a connection (see h1_guard_read). */
typedef struct h1_guard {
    h2o_socket_cb read, write; /* h2o's callbacks the guard's wrap */
    size_t next_at;            /* where the request being answered ends in the input; SIZE_MAX: unknown */
    size_t seen;               /* how much of a head in progress h2o's parser has seen (its last_len) */
    bool head_read;            /* the head at the start of the input is complete: h2o reads its body now */
    const char *refusal;       /* why the head at the start of the input stands in for an unparsable one */
} h1_guard;

/* An accepted connection, known until h2o closes its socket. */
typedef struct tracked_conn {
    h2o_linklist_t link;
    h2o_socket_t *sock;
    httpd_server *server;
    httpd_listener *from; /* NULL: one of the server's own listeners */
    int peer;             /* check_peer's identity, -1 when not checked */
    h2_guard h2;          /* TLS connections speaking HTTP/2 */
    h1_guard h1;          /* the others */
    unsigned busy;        /* h2o callbacks running under a guard: the socket may close inside them */
    bool closed;          /* closed while busy: freed when the guard returns */
} tracked_conn;

static void on_conn_close(void *data)
{
    tracked_conn *c = data;
    atomic_fetch_sub(&c->server->n_conns, 1);
    h2o_linklist_unlink(&c->link);
    if (c->from && --c->from->n_conns == 0 && !c->from->sock)
        free(c->from);
    if (c->busy)
        c->closed = true;
    else
        free(c);
}

/* Ends a guard's call into h2o begun with C->busy++. Returns false when the
 * connection closed meanwhile (C is then freed). */
static bool conn_unbusy(tracked_conn *c)
{
    if (--c->busy == 0 && c->closed) {
        free(c);
        return false;
    }
    return !c->closed;
}

/* Asks the server's check_peer about the process at the other end of the
 * Unix socket FD (check_peer logs its refusals). Returns 0 and its identity
 * in *RET_PEER, or a negative errno. */
static int check_peer(const httpd_config *cfg, int fd, int *ret_peer)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        int e = negative_errno();
        log_fields(LOG_LEVEL_WARN, "refused a local peer whose credentials cannot be read", "server", cfg->name,
                   "error", strerror(-e), NULL);
        return e;
    }
    return cfg->check_peer(cfg->peer_data, cred.pid, cred.uid, ret_peer);
}

/* ---- HTTP/2 bodies over the limit: a 413 answer, not a refused stream ----
 *
 * h2o 2.2.5 buffers a request body before any handler runs and answers a
 * body over max_request_entity_size with RST_STREAM(REFUSED_STREAM), which
 * tells a client the request was not processed and may be retried as is
 * (curl does, five times). The guard reads each frame before h2o does: a
 * stream whose announced content-length or received body passes the limit
 * is answered 413 (JSON, framing.c) at once, the rest of its body is read
 * and dropped, and once the answer is out the client is asked to stop with
 * RST_STREAM(NO_ERROR) (RFC 9113 §8.1). */

/* Credits CONSUMED bytes back to WINDOW as h2o does for the bytes it keeps. */
static void h2_grant(h2o_http2_conn_t *conn, uint32_t stream_id, h2o_http2_window_t *window, size_t consumed)
{
    h2o_http2_window_consume_window(window, consumed);
    ssize_t avail = h2o_http2_window_get_window(window);
    if (avail * 2 < (ssize_t)H2O_HTTP2_SETTINGS_HOST.initial_window_size) {
        int32_t delta = (int32_t)(H2O_HTTP2_SETTINGS_HOST.initial_window_size - avail);
        h2o_http2_encode_window_update_frame(&conn->_write.buf, stream_id, delta);
        h2o_http2_conn_request_write(conn);
        h2o_http2_window_update(window, delta);
    }
}

/* Answers STREAM, still receiving its body, now: with 413, or (TO_HANDLER)
 * by handing it to its handler at once, which refuses it for the verdict
 * the guard recorded. Returns false when the guard has no room left to
 * remember it (h2o then goes on receiving the body). */
static bool h2_refuse(h2o_http2_conn_t *conn, h2_guard *g, h2o_http2_stream_t *stream, bool to_handler)
{
    if (g->n_refused == H2_REFUSED_MAX)
        return false;
    g->refused[g->n_refused++] = stream->stream_id;
    h2o_http2_stream_set_state(conn, stream, H2O_HTTP2_STREAM_STATE_REQ_PENDING);
    h2o_http2_stream_set_state(conn, stream, H2O_HTTP2_STREAM_STATE_SEND_HEADERS);
    if (to_handler)
        h2o_process_request(&stream->req);
    else
        h2o_send_error_generic(&stream->req, 413, "Payload Too Large", "request entity is too large", 0);
    return true;
}

/* Handles a DATA frame before h2o when it belongs to a refused stream or
 * carries a body past the limit. Returns true when it consumed the frame. */
static bool h2_guard_data(h2o_http2_conn_t *conn, h2_guard *g, const h2o_http2_frame_t *frame)
{
    if (conn->state >= H2O_HTTP2_CONN_STATE_HALF_CLOSED || conn->_headers_unparsed)
        return false; /* closing, or a CONTINUATION is due: h2o's to handle */
    h2o_http2_stream_t *stream = h2o_http2_conn_get_stream(conn, frame->stream_id);
    size_t i = 0;
    while (i < g->n_refused && g->refused[i] != frame->stream_id)
        i++;
    if (i == g->n_refused) {
        h2o_http2_data_payload_t payload;
        const char *err;
        if (!stream || stream->state != H2O_HTTP2_STREAM_STATE_RECV_BODY ||
            h2o_http2_decode_data_payload(&payload, frame, &err) != 0 ||
            stream->_req_body->size + payload.length <= conn->super.ctx->globalconf->max_request_entity_size ||
            !h2_refuse(conn, g, stream, false))
            return false;
        stream = h2o_http2_conn_get_stream(conn, frame->stream_id); /* an answer may have closed it */
    }
    h2_grant(conn, 0, &conn->_input_window, frame->length);
    if (stream) {
        h2_grant(conn, stream->stream_id, &stream->input_window, frame->length);
        return true;
    }
    /* answered and closed: the client may stop sending; DATA still in flight
     * after this goes to h2o, which answers it with RST_STREAM(STREAM_CLOSED) */
    h2o_http2__encode_rst_stream_frame(&conn->_write.buf, frame->stream_id, -H2O_HTTP2_ERROR_NONE);
    h2o_http2_conn_request_write(conn);
    g->refused[i] = g->refused[--g->n_refused];
    return true;
}

/* ---- HTTP/2 header blocks: what h2o's decoder does not show ----
 *
 * h2o 2.2.5 decodes a request's header block and keeps only the last of its
 * content-length fields. The guard decodes every new request's block just
 * before h2o does, with h2o's own decoder on a copy of h2o's dynamic table
 * (framing_check_h2_block), so the two cannot drift apart; trailers and
 * blocks h2o does not decode are left alone. A refused request is answered
 * by its handler (httpd_framing_check asks httpd_guard_verdict): at once
 * when it has a body, whose DATA are then dropped as for a 413. */

/* The complete header block of a new request that FRAME ends, as h2o will
 * decode it next: the HEADERS payload, or the CONTINUATION fragments h2o
 * buffered with FRAME's (copied to *OWNED, which the caller frees). Returns
 * 1 with *RET, 0 when FRAME ends no such block, -ENOMEM. */
static int h2_request_block(h2o_http2_conn_t *conn, const h2o_http2_frame_t *frame, h2o_iovec_t *ret, uint8_t **owned)
{
    *owned = NULL;
    if (!(frame->flags & H2O_HTTP2_FRAME_FLAG_END_HEADERS) || conn->state >= H2O_HTTP2_CONN_STATE_HALF_CLOSED)
        return 0;
    h2o_http2_stream_t *stream = h2o_http2_conn_get_stream(conn, frame->stream_id);
    if (frame->type == H2O_HTTP2_FRAME_TYPE_HEADERS) {
        h2o_http2_headers_payload_t payload;
        const char *err;
        if (conn->_headers_unparsed || (frame->stream_id & 1) == 0 ||
            (frame->stream_id <= conn->pull_stream_ids.max_open &&
             (!stream || stream->state != H2O_HTTP2_STREAM_STATE_IDLE)) || /* a trailer, or refused */
            h2o_http2_decode_headers_payload(&payload, frame, &err) != 0)
            return 0;
        *ret = h2o_iovec_init(payload.headers, payload.headers_len);
        return 1;
    }
    if (frame->type != H2O_HTTP2_FRAME_TYPE_CONTINUATION || !conn->_headers_unparsed || !stream ||
        stream->state != H2O_HTTP2_STREAM_STATE_RECV_HEADERS)
        return 0;
    size_t before = conn->_headers_unparsed->size, len = before + frame->length;
    if (len > H2O_MAX_REQLEN) /* h2o refuses the stream */
        return 0;
    if (!(*owned = malloc(len ? len : 1)))
        return -ENOMEM;
    memcpy(*owned, conn->_headers_unparsed->bytes, before);
    memcpy(*owned + before, frame->payload, frame->length);
    *ret = h2o_iovec_init(*owned, len);
    return 1;
}

/* Checks the header block FRAME ends, if it is a new request's, and records
 * a refusal for its stream. Returns the refusal (NULL: none), or sets
 * *RET_ERR to an h2o connection error when it cannot be checked or
 * remembered. */
static const char *h2_check_block(h2o_http2_conn_t *conn, h2_guard *g, const h2o_http2_frame_t *frame, int *ret_err,
                                  const char **err_desc)
{
    h2o_iovec_t block;
    _cleanup_free_ uint8_t *owned = NULL;
    int r = h2_request_block(conn, frame, &block, &owned);
    if (r <= 0) {
        if (r < 0) {
            *ret_err = H2O_HTTP2_ERROR_INTERNAL;
            *err_desc = "out of memory checking a header block";
        }
        return NULL;
    }
    const char *why = framing_check_h2_block(&conn->_input_header_table, (const uint8_t *)block.base, block.len);
    if (!why)
        return NULL;
    for (size_t i = 0; i < g->n_verdicts;) /* forget streams h2o has closed */
        if (!h2o_http2_conn_get_stream(conn, g->verdicts[i].stream_id))
            g->verdicts[i] = g->verdicts[--g->n_verdicts];
        else
            i++;
    if (g->n_verdicts == H2_VERDICTS_MAX) {
        *ret_err = H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM;
        *err_desc = "too many ambiguous requests pending";
        return NULL;
    }
    g->verdicts[g->n_verdicts].stream_id = frame->stream_id;
    g->verdicts[g->n_verdicts++].why = why;
    return why;
}

/* The connection's frame reader, wrapping h2o's (which h2o swaps as its
 * state changes: the guard follows). */
static ssize_t h2_guard_read(h2o_http2_conn_t *conn, const uint8_t *src, size_t len, const char **err_desc)
{
    h2_guard *g = &((tracked_conn *)conn->sock->on_close.data)->h2;
    h2o_http2_frame_t frame;
    const char *err, *refused = NULL;
    ssize_t flen = h2o_http2_decode_frame(&frame, src, len, &H2O_HTTP2_SETTINGS_HOST, &err);
    if (flen > 0 && frame.type == H2O_HTTP2_FRAME_TYPE_DATA && h2_guard_data(conn, g, &frame))
        return flen;
    bool headers =
        flen > 0 && (frame.type == H2O_HTTP2_FRAME_TYPE_HEADERS || frame.type == H2O_HTTP2_FRAME_TYPE_CONTINUATION);
    if (headers) {
        int conn_err = 0;
        refused = h2_check_block(conn, g, &frame, &conn_err, err_desc);
        if (conn_err)
            return conn_err;
    }
    ssize_t ret = g->inner(conn, src, len, err_desc);
    if (conn->_read_expect != h2_guard_read) {
        g->inner = conn->_read_expect;
        conn->_read_expect = h2_guard_read;
    }
    if (ret > 0 && headers) {
        /* a refused request or a content-length past the limit is answered
         * before any DATA (one without a body was answered by h2o's call) */
        h2o_http2_stream_t *stream = h2o_http2_conn_get_stream(conn, frame.stream_id);
        if (stream && stream->state == H2O_HTTP2_STREAM_STATE_RECV_BODY) {
            if (refused)
                h2_refuse(conn, g, stream, true);
            else if (stream->_expected_content_length != SIZE_MAX &&
                     stream->_expected_content_length > conn->super.ctx->globalconf->max_request_entity_size)
                h2_refuse(conn, g, stream, false);
        }
    }
    return ret;
}

/* ---- HTTP/1 heads h2o cannot parse: the server's own 400 ----
 *
 * h2o 2.2.5 answers a request head picohttpparser refuses (a space before a
 * colon, a control character, a bare CR, an invalid request line, a head too
 * long) with a bare text/plain "400 Bad Request" written straight to the
 * socket, past every filter and handler: no JSON, no reason, no access log
 * record, nothing the component decides. The guard reads the head
 * at the start of the input before h2o does (its read callback wraps h2o's)
 * and, before h2o moves on to a request pipelined behind an answered one,
 * that one too. A head that will never parse is replaced by a stand-in
 * (framing_stand_in_head: its request line when that parses, and
 * "Connection: close") which h2o serves as usual: the handler's framing
 * check gets the reason from httpd_guard_verdict and answers 400 in its own
 * shape, then h2o closes the connection. Timeouts and limits stay h2o's. */

/* Puts the stand-in for the unparsable head at offset AT of C's input in
 * its place, dropping every byte after it, and records WHY. When AT is 0
 * nothing of the input is in use and the buffer may grow; otherwise the
 * request before it still points into the buffer, and the stand-in is
 * written only where the buffer has room (else h2o answers as before). */
static void h1_stand_in(tracked_conn *c, size_t at, const char *why)
{
    h2o_buffer_t **input = &c->sock->input;
    size_t len = (*input)->size - at, min_len = 0;
    if (at == 0) {
        /* at least as long as the input h2o already looked at: its parser
         * resumes from where it stopped */
        min_len = len;
        h2o_buffer_reserve(input, FRAMING_STAND_IN_LINE_MAX + 64);
    }
    char *start = (*input)->bytes + at;
    size_t room = (size_t)((*input)->_buf + (*input)->capacity - start);
    size_t n = framing_stand_in_head(start, len, min_len, start, room);
    if (n == 0)
        return;
    (*input)->size = at + n;
    c->h1.refusal = why;
}

static void h1_guard_read(h2o_socket_t *sock, const char *err);

/* Puts the guard back in front of h2o's read callback when h2o has set its
 * own, as it does for each new request after parsing what of it is already
 * in the input. HEAD_COMPLETE: the head h2o just parsed was whole, so what
 * comes in now is its body (h2o reads it with the same callback), never a
 * head to check; the next head is checked once its response is out. */
static void h1_guard_arm(tracked_conn *c, bool head_complete)
{
    h2o_socket_t *sock = c->sock;
    if (sock->_cb.read && sock->_cb.read != h1_guard_read) {
        c->h1.read = sock->_cb.read;
        sock->_cb.read = h1_guard_read;
        c->h1.seen = MIN(sock->input->size, (size_t)H2O_MAX_REQLEN);
        c->h1.head_read = head_complete;
    }
}

/* Bytes came in: a head at the start of the input that will never parse is
 * replaced before h2o reads it. The guard parses as h2o does, resuming where
 * the last parse stopped, so a head sent byte by byte costs no more than
 * h2o's own parse. */
static void h1_guard_read(h2o_socket_t *sock, const char *err)
{
    tracked_conn *c = sock->on_close.data;
    if (!err && !c->h1.refusal && !c->h1.head_read) {
        const char *why =
            framing_head_unparsable(sock->input->bytes, sock->input->size, c->h1.seen, &c->h1.head_read);
        c->h1.seen = MIN(sock->input->size, (size_t)H2O_MAX_REQLEN);
        if (why)
            h1_stand_in(c, 0, why);
    }
    c->h1.read(sock, err);
}

/* The last bytes of a response are out: h2o goes on to the next request in
 * the input, if any, which is checked first; then the guard is put back in
 * front of the read callback h2o sets for the request after it. */
static void h1_guard_wrote(h2o_socket_t *sock, const char *err)
{
    tracked_conn *c = sock->on_close.data;
    h2o_socket_cb inner = c->h1.write;
    size_t at = c->h1.next_at;
    c->h1.write = NULL;
    c->h1.next_at = SIZE_MAX;
    bool complete = false;
    if (!err && at < sock->input->size) {
        const char *why = framing_head_unparsable(sock->input->bytes + at, sock->input->size - at, 0, &complete);
        if (why)
            h1_stand_in(c, at, why);
    }
    c->busy++;
    inner(sock, err);
    if (conn_unbusy(c))
        h1_guard_arm(c, complete);
}

/* An output stream on every HTTP/1 response: once its last bytes are handed
 * to the socket, the write's completion goes through h1_guard_wrote. */
static void h1_guard_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt,
                          h2o_send_state_t state)
{
    h2o_ostream_send_next(self, req, bufs, bufcnt, state);
    if (h2o_send_state_is_in_progress(state))
        return;
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    tracked_conn *c = sock ? sock->on_close.data : NULL;
    if (!c || !sock->_cb.write || sock->_cb.write == h1_guard_wrote)
        return;
    c->h1.write = sock->_cb.write;
    sock->_cb.write = h1_guard_wrote;
    c->h1.next_at = req->http1_is_persistent ? framing_request_end(req) : SIZE_MAX;
}

static void h1_guard_setup(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    (void)self;
    if (req->version < 0x200 && !h1front_owns(req->conn)) {
        h2o_ostream_t *o = h2o_add_ostream(req, sizeof(*o), slot);
        o->do_send = h1_guard_send;
        slot = &o->next;
    }
    h2o_setup_next_ostream(req, slot);
}

/* The first handler of a server whose component's handlers do not check
 * framing themselves: what the guards found is refused here. */
static int guard_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    const char *why = httpd_guard_verdict(req);
    if (!why)
        return -1; /* the component's */
    api_error err;
    api_fail(&err, 400, "bad_request", "malformed request refused: %s", why);
    req->http1_is_persistent = 0;
    api_send_error(req, &err);
    return 0;
}

/* h2o_http1_accept(), with the guard: input that came with the handshake is
 * checked first. */
static void h1_accept(h2o_accept_ctx_t *actx, h2o_socket_t *sock, struct timeval connected_at)
{
    tracked_conn *c = sock->on_close.data;
    c->h1.next_at = SIZE_MAX;
    bool complete = false;
    const char *why =
        sock->input->size ? framing_head_unparsable(sock->input->bytes, sock->input->size, 0, &complete) : NULL;
    if (why)
        h1_stand_in(c, 0, why);
    c->busy++;
    h2o_http1_accept(actx, sock, connected_at);
    if (conn_unbusy(c))
        h1_guard_arm(c, complete);
}

const char *httpd_guard_verdict(h2o_req_t *req)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    tracked_conn *c = sock ? sock->on_close.data : NULL;
    const char *why = NULL;
    if (!c)
        return NULL;
    if (h1front_owns(req->conn)) /* the front end is the guard */
        return h1front_verdict(req);
    if (req->version < 0x200) {
        why = c->h1.refusal;
        c->h1.refusal = NULL;
        return why;
    }
    h2_guard *g = &c->h2;
    uint32_t id = H2O_STRUCT_FROM_MEMBER(h2o_http2_stream_t, req, req)->stream_id;
    for (size_t i = 0; i < g->n_verdicts; i++)
        if (g->verdicts[i].stream_id == id) {
            why = g->verdicts[i].why;
            g->verdicts[i] = g->verdicts[--g->n_verdicts];
            break;
        }
    return why;
}

/* An HTTP/1 connection's server: h1front's when the config asks for it
 * (a protocol switch is handed on to h2o's), else h2o's, guarded. */
static void serve_http1(h2o_accept_ctx_t *actx, h2o_socket_t *sock, struct timeval connected_at)
{
    const tracked_conn *c = sock->on_close.data;
    if (c->server->cfg->h1_front)
        h1front_accept(actx, sock, connected_at, h1_accept);
    else
        h1_accept(actx, sock, connected_at);
}

/* A TLS handshake in progress (h2o_accept()'s, with the guard added). */
typedef struct tls_accept {
    h2o_accept_ctx_t *actx;
    h2o_socket_t *sock;
    h2o_timeout_entry_t timeout;
    struct timeval connected_at;
} tls_accept;

/* The client did not finish its TLS handshake within h2o's handshake
 * timeout: the connection is closed. */
static void on_handshake_timeout(h2o_timeout_entry_t *entry)
{
    tls_accept *a = H2O_STRUCT_FROM_MEMBER(tls_accept, timeout, entry);
    h2o_socket_t *sock = a->sock;
    free(a);
    h2o_socket_close(sock);
}

/* Hands a connection whose TLS handshake ended to h2o's HTTP/1 or, as ALPN
 * chose, HTTP/2 server, the latter with the body guard in its frame reader
 * before it reads a frame. */
static void on_handshake(h2o_socket_t *sock, const char *err)
{
    tls_accept *a = sock->data;
    sock->data = NULL;
    h2o_timeout_unlink(&a->timeout);
    h2o_accept_ctx_t *actx = a->actx;
    struct timeval connected_at = a->connected_at;
    free(a);
    tracked_conn *c = sock->on_close.data;
    if (c->server->mtls_ctx && actx->ssl_ctx == c->server->mtls_ctx && mtls_peer(c->server, sock, err, &c->peer) < 0)
        err = "the peer's certificate names no role this server serves";
    if (err) {
        h2o_socket_close(sock);
        return;
    }
    h2o_iovec_t proto = h2o_socket_ssl_get_selected_protocol(sock);
    bool h2 = false;
    for (const h2o_iovec_t *id = h2o_http2_alpn_protocols; id->len; id++)
        h2 = h2 || h2o_memis(proto.base, proto.len, id->base, id->len);
    if (!h2) {
        serve_http1(actx, sock, connected_at);
        return;
    }
    /* the frames that came with the handshake wait until the guard is in */
    h2o_buffer_t *pending = sock->input;
    h2o_buffer_init(&sock->input, &h2o_socket_buffer_prototype);
    h2o_http2_accept(actx, sock, connected_at);
    h2o_http2_conn_t *conn = sock->data;
    h2_guard *g = &((tracked_conn *)sock->on_close.data)->h2;
    g->inner = conn->_read_expect;
    conn->_read_expect = h2_guard_read;
    h2o_buffer_dispose(&sock->input);
    sock->input = pending;
    if (sock->input->size != 0)
        sock->_cb.read(sock, NULL);
}

/* h2o_accept(), with HTTP/2 connections guarded. */
static void accept_conn(h2o_accept_ctx_t *actx, h2o_socket_t *sock)
{
    tls_accept *a = actx->ssl_ctx ? calloc(1, sizeof(*a)) : NULL;
    if (!a) {
        if (actx->ssl_ctx)
            h2o_socket_close(sock);
        else /* plain HTTP/1 */
            serve_http1(actx, sock, *h2o_get_timestamp(actx->ctx, NULL, NULL));
        return;
    }
    *a = (tls_accept){.actx = actx, .sock = sock, .timeout = {.cb = on_handshake_timeout},
                      .connected_at = *h2o_get_timestamp(actx->ctx, NULL, NULL)};
    h2o_timeout_link(actx->ctx->loop, &actx->ctx->handshake_timeout, &a->timeout);
    sock->data = a;
    h2o_socket_ssl_handshake(sock, actx->ssl_ctx, NULL, on_handshake);
}

/* Accepts one connection on LISTENER for ACTX; FROM is the added listener
 * it came through, or NULL. */
static void accept_one(h2o_socket_t *listener, h2o_accept_ctx_t *actx, httpd_listener *from)
{
    httpd_thread *t = (httpd_thread *)actx->ctx;
    h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
    if (!sock)
        return;
    httpd_server *srv = t->server;
    unsigned cap = srv->max_conns;
    tracked_conn *c = NULL;
    int peer = -1;
    if ((cap && atomic_load(&srv->n_conns) >= cap) || (from && from->max_conns && from->n_conns >= from->max_conns) ||
        (!from && !(srv->mtls_ctx && actx->ssl_ctx == srv->mtls_ctx) && srv->cfg->check_peer &&
         check_peer(srv->cfg, h2o_socket_get_fd(sock), &peer) < 0) ||
        !(c = calloc(1, sizeof(*c)))) {
        h2o_socket_close(sock); /* over the cap, or not a peer it serves: refused before any byte is read */
        return;
    }
    atomic_fetch_add(&srv->n_conns, 1);
    c->sock = sock;
    c->server = srv;
    c->from = from;
    c->peer = peer;
    if (from)
        from->n_conns++;
    h2o_linklist_insert(&t->conns, &c->link);
    sock->on_close.cb = on_conn_close; /* unused by h2o for accepted sockets */
    sock->on_close.data = c;
    accept_conn(actx, sock);
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    if (!err)
        accept_one(listener, listener->data, NULL);
}

static void on_accept_added(h2o_socket_t *listener, const char *err)
{
    httpd_listener *l = listener->data;
    if (!err)
        accept_one(listener, &l->actx, l);
}

int httpd_listener_add(h2o_context_t *ctx, int fd, uint64_t tag, unsigned max_conns, httpd_listener **ret)
{
    httpd_listener *l = tag && fd >= 0 ? calloc(1, sizeof(*l)) : NULL;
    if (!l) {
        if (fd >= 0)
            close(fd);
        return tag && fd >= 0 ? -ENOMEM : -EINVAL;
    }
    httpd_thread *t = (httpd_thread *)ctx;
    *l = (httpd_listener){.thread = t, .tag = tag, .max_conns = max_conns,
                          .actx = {.ctx = ctx, .hosts = t->server->globalconf.hosts}};
    l->sock = h2o_evloop_socket_create(ctx->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    l->sock->data = l;
    h2o_socket_read_start(l->sock, on_accept_added);
    *ret = l;
    return 0;
}

void httpd_listener_close(httpd_listener *l)
{
    if (!l || !l->sock)
        return;
    h2o_socket_read_stop(l->sock);
    h2o_socket_close(l->sock);
    l->sock = NULL;
    httpd_thread *t = l->thread;
    for (h2o_linklist_t *n = t->conns.next; n != &t->conns; n = n->next) {
        tracked_conn *c = H2O_STRUCT_FROM_MEMBER(tracked_conn, link, n);
        if (c->from == l)
            shutdown(h2o_socket_get_fd(c->sock), SHUT_RDWR);
    }
    if (l->n_conns == 0)
        free(l);
}

uint64_t httpd_conn_tag(h2o_req_t *req)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    const tracked_conn *c = sock ? sock->on_close.data : NULL;
    return c && c->from ? c->from->tag : 0;
}

int httpd_conn_peer(h2o_req_t *req)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    const tracked_conn *c = sock ? sock->on_close.data : NULL;
    return c ? c->peer : -1;
}

static bool thread_busy(httpd_thread *t)
{
    const httpd_hooks *h = &t->server->cfg->hooks;
    return h->thread_busy && h->thread_busy(t->state);
}

static bool has_conns(httpd_thread *t)
{
    return !h2o_linklist_is_empty(&t->conns);
}

/* Runs T's loop while CONDITION(T) holds, until DEADLINE (monotonic ns). */
static void run_while(httpd_thread *t, bool (*condition)(httpd_thread *), uint64_t deadline)
{
    while (condition(t) && time_mono_ns() < deadline)
        h2o_evloop_run(t->ctx.loop, 20);
}

/* Half-closes every client connection: h2o then sees end of input and
 * closes each one itself, through its normal paths. */
static void shutdown_conns(httpd_thread *t)
{
    for (h2o_linklist_t *n = t->conns.next; n != &t->conns; n = n->next) {
        tracked_conn *c = H2O_STRUCT_FROM_MEMBER(tracked_conn, link, n);
        shutdown(h2o_socket_get_fd(c->sock), SHUT_RDWR);
    }
}

static void *thread_main(void *arg)
{
    httpd_thread *t = arg;
    httpd_server *srv = t->server;
    const httpd_hooks *hooks = &srv->cfg->hooks;
    h2o_evloop_t *loop = h2o_evloop_create();
    h2o_context_init(&t->ctx, loop, &srv->globalconf);
    h2o_linklist_init_anchor(&t->conns);
    if (hooks->thread_init)
        t->state = hooks->thread_init(&t->ctx, srv->cfg->userdata);
    int fds[3] = {srv->listen_fd, srv->plain_fd, srv->mtls_fd};
    SSL_CTX *tls[3] = {srv->ssl_ctx, NULL, srv->mtls_ctx};
    for (size_t i = 0; i < 3; i++) {
        if (fds[i] < 0)
            continue;
        t->accept_ctx[i] = (h2o_accept_ctx_t){.ctx = &t->ctx, .hosts = srv->globalconf.hosts, .ssl_ctx = tls[i]};
        t->listener[i] = h2o_evloop_socket_create(loop, dup(fds[i]), H2O_SOCKET_FLAG_DONT_READ);
        t->listener[i]->data = &t->accept_ctx[i];
        h2o_socket_read_start(t->listener[i], on_accept);
    }

    while (!atomic_load(&srv->stopping))
        h2o_evloop_run(loop, 100);

    /* drain: no new connections, long-lived responses ended, work in flight
     * finished, then the connections closed so the context can be disposed */
    for (size_t i = 0; i < 3; i++) {
        if (!t->listener[i])
            continue;
        h2o_socket_read_stop(t->listener[i]);
        h2o_socket_close(t->listener[i]);
        t->listener[i] = NULL;
    }
    if (hooks->thread_drain)
        hooks->thread_drain(t->state);
    h2o_context_request_shutdown(&t->ctx);
    run_while(t, thread_busy, time_mono_ns() + DRAIN_TIMEOUT_NS);
    run_while(t, has_conns, time_mono_ns() + 200 * NSEC_PER_MSEC);
    shutdown_conns(t);
    run_while(t, has_conns, time_mono_ns() + 2 * NSEC_PER_SEC);
    return NULL;
}

/* CFG's connection cap lowered to what RLIMIT_NOFILE leaves once
 * HTTPD_FDS_RESERVED descriptors are kept (half the limit when it is
 * smaller), each connection taking fds_per_connection, so that accept()
 * never fails with EMFILE (which would leave the listener readable and the
 * loop spinning); 0 when CFG sets no cap. Logs the cap in force ("<name>
 * connection cap"), so that an operator sees why connections past it are
 * closed. */
unsigned httpd_connection_limit(unsigned max, unsigned fds_per_connection)
{
    unsigned per = fds_per_connection ? fds_per_connection : 1;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return max;
    rlim_t usable = rl.rlim_cur > 2 * HTTPD_FDS_RESERVED ? rl.rlim_cur - HTTPD_FDS_RESERVED : rl.rlim_cur / 2;
    rlim_t fit = usable / per ? usable / per : 1;
    return (unsigned)MIN((rlim_t)max, fit);
}

static unsigned connection_cap(const httpd_config *cfg)
{
    if (!cfg->max_connections)
        return 0;
    unsigned cap = httpd_connection_limit(cfg->max_connections, cfg->fds_per_connection);
    struct rlimit rl;
    char nofile[24] = "unlimited";
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        snprintf(nofile, sizeof(nofile), "%llu", (unsigned long long)rl.rlim_cur);
    char msg[64], text[16];
    snprintf(msg, sizeof(msg), "%s connection cap", cfg->name);
    snprintf(text, sizeof(text), "%u", cap);
    log_fields(LOG_LEVEL_INFO, msg, "maxConnections", text, "descriptorLimit", nofile, NULL);
    return cap;
}

/* Waits for SIGTERM or SIGINT (blocked in every thread) and flags the stop. */
static void *signal_main(void *arg)
{
    httpd_server *srv = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    sigwait(&set, &sig);
    log_fields(LOG_LEVEL_INFO, "stopping: draining requests", "server", srv->cfg->name, "signal", strsignal(sig),
               NULL);
    atomic_store(&srv->stopping, true);
    return NULL;
}

/* Closes SRV's listening sockets (a Unix one's file removed) and frees
 * its TLS contexts. */
static void close_listeners(httpd_server *srv, const httpd_config *cfg)
{
    int *fds[] = {&srv->listen_fd, &srv->plain_fd, &srv->mtls_fd};
    if (srv->listen_fd >= 0 && strncmp(cfg->listen, "unix:", 5) == 0)
        unlink(cfg->listen + 5);
    for (size_t i = 0; i < ELEMENTSOF(fds); i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    SSL_CTX_free(srv->ssl_ctx);
    SSL_CTX_free(srv->mtls_ctx);
    srv->ssl_ctx = srv->mtls_ctx = NULL;
}

int httpd_run(const httpd_config *cfg)
{
    httpd_server srv = {.cfg = cfg, .listen_fd = -1, .plain_fd = -1, .mtls_fd = -1, .max_conns = connection_cap(cfg)};
    bool is_unix = strncmp(cfg->listen, "unix:", 5) == 0;
    bool mtls = cfg->mtls.listen && cfg->mtls.listen[0];
    if ((cfg->check_peer && (!is_unix || cfg->plain_listen)) ||
        (mtls && (!cfg->check_cert || !cfg->mtls.cert_file || !cfg->mtls.key_file || !cfg->mtls.ca_file)))
        return -EINVAL; /* local peers are known on Unix sockets only; remote ones by their certificate */
    int e = is_unix ? httpd_listen_unix(cfg->listen + 5, SOCK_STREAM, &srv.listen_fd) : listen_tcp(cfg->listen, &srv.listen_fd);
    /* a socket whose peers are checked is open to every uid: roles run as
     * users of their own, and the check, not the file's mode, decides */
    if (e == 0 && is_unix && cfg->check_peer && chmod(cfg->listen + 5, 0666) < 0)
        e = negative_errno();
    const char *failed = cfg->listen;
    if (e == 0 && cfg->plain_listen && (e = listen_tcp(cfg->plain_listen, &srv.plain_fd)) < 0)
        failed = cfg->plain_listen;
    if (e == 0 && mtls && (e = listen_tcp(cfg->mtls.listen, &srv.mtls_fd)) < 0)
        failed = cfg->mtls.listen;
    if (e == 0 && ((cfg->cert_file && !is_unix && !(srv.ssl_ctx = tls_context(cfg))) ||
                   (mtls && !(srv.mtls_ctx = mtls_context(cfg)))))
        e = -EINVAL; /* logged */
    else if (e < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot listen; check the address (HOST:PORT) and that it is free", "server",
                   cfg->name, "listen", failed, "error", strerror(-e), NULL);
    if (e < 0) {
        close_listeners(&srv, cfg);
        return e;
    }

    h2o_config_init(&srv.globalconf);
    srv.globalconf.server_name = h2o_iovec_init(H2O_STRLIT("cloister"));
    if (cfg->max_request_body)
        srv.globalconf.max_request_entity_size = cfg->max_request_body;
    if (cfg->request_timeout_ms)
        srv.globalconf.http1.req_timeout = cfg->request_timeout_ms;
    if (cfg->idle_timeout_ms)
        srv.globalconf.http2.idle_timeout = cfg->idle_timeout_ms;
    h2o_hostconf_t *host = h2o_config_register_host(&srv.globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    framing_configure(&srv.globalconf, host);
    h2o_pathconf_t *root = h2o_config_register_path(host, "/", 0);
    h2o_create_filter(root, sizeof(h2o_filter_t))->on_setup_ostream = h1_guard_setup;
    if (!cfg->handlers_check_framing)
        h2o_create_handler(root, sizeof(h2o_handler_t))->on_req = guard_on_req;
    cfg->hooks.register_handlers(root, cfg->userdata);

    srv.n_threads = cfg->threads ? cfg->threads : 1;
    srv.threads = calloc(srv.n_threads, sizeof(*srv.threads));
    if (!srv.threads) {
        close_listeners(&srv, cfg);
        return -ENOMEM;
    }
    pthread_t sig_thread;
    pthread_create(&sig_thread, NULL, signal_main, &srv);
    for (unsigned i = 0; i < srv.n_threads; i++) {
        srv.threads[i].server = &srv;
        pthread_create(&srv.threads[i].tid, NULL, thread_main, &srv.threads[i]);
    }
    log_fields(LOG_LEVEL_INFO, "listening", "server", cfg->name, "listen", cfg->listen, "plain_http",
               cfg->plain_listen ? cfg->plain_listen : "", "mutual_tls", mtls ? cfg->mtls.listen : "", "http1",
               cfg->h1_front ? "h1front" : "h2o", NULL);
    if (cfg->ready_flag)
        atomic_store(cfg->ready_flag, true);

    for (unsigned i = 0; i < srv.n_threads; i++)
        pthread_join(srv.threads[i].tid, NULL);
    pthread_join(sig_thread, NULL);
    for (unsigned i = 0; i < srv.n_threads; i++) {
        httpd_thread *t = &srv.threads[i];
        if (cfg->hooks.thread_dispose)
            cfg->hooks.thread_dispose(t->state);
        /* h2o cannot dispose a context that still has connections; a peer
         * that ignored the shutdown keeps its memory until the process exits */
        /* h2o_context_request_shutdown() schedules HTTP/2's GOAWAY resend a
         * second later even without connections; the drain is over sooner */
        if (h2o_timeout_is_linked(&t->ctx.http2._graceful_shutdown_timeout))
            h2o_timeout_unlink(&t->ctx.http2._graceful_shutdown_timeout);
        if (has_conns(t))
            log_fields(LOG_LEVEL_WARN, "a client connection did not close", "server", cfg->name, NULL);
        else
            h2o_context_dispose(&t->ctx);
    }
    free(srv.threads);
    close_listeners(&srv, cfg);
    log_fields(LOG_LEVEL_INFO, "stopped", "server", cfg->name, NULL);
    return 0;
}
