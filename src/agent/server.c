#include "agent/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "attest/atls.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"

#define RELAY_BUFFER 16384
#define THREAD_STACK (256 * 1024)

struct server {
    server_config cfg;
    pthread_mutex_t lock;
    SSL_CTX *ctx; /* the current one, with the default certificate; under LOCK */
    _Atomic unsigned active;
};

/* One relayed connection, owned by its thread. */
typedef struct conn {
    server *s;
    SSL *ssl;
    int fd;
} conn;

/* Picks the certificate of a connection whose SNI asks for a nonce
 * (atls.h): evidence made for it, so the client knows it is fresh. Any
 * other name gets the default certificate. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    server *s = arg;
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    uint8_t nonce[ATLS_NONCE_LEN];
    if (!sni || atls_sni_to_nonce(sni, nonce) < 0)
        return SSL_TLSEXT_ERR_OK;
    X509 *cert = NULL;
    int r = s->cfg.make_cert(s->cfg.userdata, nonce, sizeof(nonce), &cert);
    bool ok = r == 0 && SSL_use_certificate(ssl, cert) == 1 && SSL_use_PrivateKey(ssl, s->cfg.key) == 1;
    X509_free(cert);
    if (!ok) {
        log_fields(LOG_LEVEL_WARN, "cannot make a certificate for a client's nonce; handshake refused", "error",
                   r < 0 ? strerror(-r) : "TLS", NULL);
        ERR_clear_error();
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* A TLS context serving CERT with the server's key; NULL on failure. */
static SSL_CTX *context_new(server *s, X509 *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* no resumption: every connection shows its certificate and evidence */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, s);
    if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, s->cfg.key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int server_refresh(server *s)
{
    X509 *cert = NULL;
    int r = s->cfg.make_cert(s->cfg.userdata, NULL, 0, &cert);
    if (r < 0)
        return r;
    SSL_CTX *ctx = context_new(s, cert);
    X509_free(cert);
    if (!ctx)
        return -ENOMEM;
    pthread_mutex_lock(&s->lock);
    SSL_CTX *old = s->ctx;
    s->ctx = ctx;
    pthread_mutex_unlock(&s->lock);
    SSL_CTX_free(old); /* connections hold their own reference */
    return 0;
}

int server_new(const server_config *cfg, server **ret)
{
    if (cfg->listen_fd < 0 || !cfg->port || !cfg->key || !cfg->make_cert)
        return -EINVAL;
    int flags = fcntl(cfg->listen_fd, F_GETFL);
    if (flags < 0 || fcntl(cfg->listen_fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return negative_errno();
    server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = *cfg;
    pthread_mutex_init(&s->lock, NULL);
    int r = server_refresh(s);
    if (r < 0) {
        pthread_mutex_destroy(&s->lock);
        free(s);
        return r;
    }
    *ret = s;
    return 0;
}

/* Waits until FD is ready for EVENTS, at most the idle timeout. */
static int wait_fd(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    while ((n = poll(&p, 1, SERVER_IDLE_TIMEOUT_S * 1000)) < 0 && errno == EINTR)
        ;
    return n > 0 ? 0 : n == 0 ? -ETIMEDOUT : negative_errno();
}

/* Writes the N bytes at P to the non-blocking socket FD. */
static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = wait_fd(fd, POLLOUT);
            if (r < 0)
                return r;
        } else
            return w < 0 ? negative_errno() : -EIO;
    }
    return 0;
}

/* Writes the N bytes at P to the client through SSL (over the non-blocking FD). */
static int ssl_write_all(SSL *ssl, int fd, const uint8_t *p, size_t n)
{
    while (n) {
        int w = SSL_write(ssl, p, (int)MIN(n, (size_t)RELAY_BUFFER));
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        int e = SSL_get_error(ssl, w);
        int r = e == SSL_ERROR_WANT_WRITE ? wait_fd(fd, POLLOUT) : e == SSL_ERROR_WANT_READ ? wait_fd(fd, POLLIN) : -EIO;
        if (r < 0)
            return r;
    }
    return 0;
}

/* A connection to the workload on 127.0.0.1:PORT, waiting a little for it
 * to start listening. Returns the (non-blocking) socket or a negative errno. */
static int connect_upstream(uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr = {.s_addr = htonl(INADDR_LOOPBACK)}};
    uint64_t deadline = time_mono_ns() + (uint64_t)SERVER_UPSTREAM_WAIT_S * NSEC_PER_SEC;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return negative_errno();
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            int one = 1; /* requests relayed in pieces go out at once */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            int flags = fcntl(fd, F_GETFL);
            if (flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0)
                return fd;
        }
        int e = negative_errno();
        close(fd);
        if (e != -ECONNREFUSED || time_mono_ns() > deadline)
            return e;
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000 * 1000}, NULL);
    }
}

/* Copies bytes both ways between the client (SSL over FD) and UP until
 * the workload closes, an error, or SERVER_IDLE_TIMEOUT_S without traffic.
 * When the client closes first, the workload still gets to answer. */
static void relay(SSL *ssl, int fd, int up)
{
    uint8_t buf[RELAY_BUFFER];
    bool client_open = true;
    for (;;) {
        bool from_client = client_open && SSL_pending(ssl) > 0, from_up = false;
        if (!from_client) {
            struct pollfd p[2] = {{.fd = client_open ? fd : -1, .events = POLLIN}, {.fd = up, .events = POLLIN}};
            int n = poll(p, 2, SERVER_IDLE_TIMEOUT_S * 1000);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return;
            from_client = p[0].revents != 0;
            from_up = p[1].revents != 0;
        }
        if (from_client) {
            int n = SSL_read(ssl, buf, sizeof(buf));
            if (n > 0) {
                if (write_all(up, buf, (size_t)n) < 0)
                    return;
            } else {
                int e = SSL_get_error(ssl, n);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                    client_open = false; /* close_notify, EOF or an error: no more requests */
                    shutdown(up, SHUT_WR);
                }
            }
        }
        if (from_up) {
            ssize_t n = read(up, buf, sizeof(buf));
            if (n > 0) {
                if (ssl_write_all(ssl, fd, buf, (size_t)n) < 0)
                    return;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                if (client_open)
                    SSL_shutdown(ssl);
                return;
            }
        }
    }
}

static void *conn_main(void *arg)
{
    conn *c = arg;
    struct timeval tv = {.tv_sec = SERVER_HANDSHAKE_TIMEOUT_S};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_accept(c->ssl) == 1) {
        int up = connect_upstream(c->s->cfg.port);
        int flags = fcntl(c->fd, F_GETFL);
        if (up < 0) {
            char port[8];
            snprintf(port, sizeof(port), "%u", c->s->cfg.port);
            log_fields(LOG_LEVEL_WARN, "the workload does not accept connections on its port", "port", port, "error",
                       strerror(-up), NULL);
        } else if (flags >= 0 && fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) == 0)
            relay(c->ssl, c->fd, up);
        if (up >= 0)
            close(up);
    }
    ERR_clear_error();
    SSL_free(c->ssl);
    close(c->fd);
    atomic_fetch_sub(&c->s->active, 1);
    free(c);
    OPENSSL_thread_stop();
    return NULL;
}

/* Starts the thread of the accepted connection FD; closes FD on failure. */
static void start_conn(server *s, int fd)
{
    conn *c = calloc(1, sizeof(*c));
    pthread_mutex_lock(&s->lock);
    SSL *ssl = c ? SSL_new(s->ctx) : NULL; /* holds its own reference to the context */
    pthread_mutex_unlock(&s->lock);
    pthread_attr_t attr;
    pthread_t tid;
    bool started = false;
    if (ssl) {
        *c = (conn){.s = s, .ssl = ssl, .fd = fd};
        atomic_fetch_add(&s->active, 1);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, THREAD_STACK);
        started = pthread_create(&tid, &attr, conn_main, c) == 0;
        pthread_attr_destroy(&attr);
        if (!started)
            atomic_fetch_sub(&s->active, 1);
    }
    if (!started) {
        log_fields(LOG_LEVEL_WARN, "cannot serve a connection", "error", "out of memory or threads", NULL);
        SSL_free(ssl);
        free(c);
        close(fd);
    }
}

void server_accept(server *s)
{
    for (;;) {
        int fd = accept4(s->cfg.listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN: nothing more waits */
        }
        if (atomic_load(&s->active) >= SERVER_CONNECTIONS_MAX) {
            close(fd); /* over the cap: refused before the handshake */
            continue;
        }
        start_conn(s, fd);
    }
}
