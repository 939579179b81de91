/* Bridges to enclave replicas over attested TLS (see bridge.h). */
#include "proxy/bridge.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "attest/atls.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "proxy/upstream.h"

#define HANDSHAKE_TIMEOUT_S 10
#define HANDSHAKE_ATTEMPTS 5
#define HANDSHAKE_RETRY_MS 200
#define IDLE_TIMEOUT_S 300
#define ROOTS_MAX (256 * 1024)
#define CHUNK 16384

typedef struct bridge {
    char atls_path[4400];
    char policy_digest[2 * SHA256_DIGEST_LENGTH + 1];
    char enclave[254];
    json_t *policy;
    int listen_fd;
    pthread_t thread;
    struct proxy_origin *origin; /* its listener, as the proxy's threads connect to it */
    _Atomic unsigned conns;
} bridge;

static struct {
    pthread_mutex_t lock;
    bridge *list[PROXY_BRIDGES_MAX];
    size_t n;
    SSL_CTX *tls;
    char *roots;
    size_t roots_len;
    char runner_dir[4200];
    unsigned threads; /* the proxy's, sharing each bridge's connections */
    _Atomic bool stopping;
    pthread_cond_t idle; /* live reaches 0 */
    unsigned live;       /* connection threads running, under lock */
} B = {.lock = PTHREAD_MUTEX_INITIALIZER, .idle = PTHREAD_COND_INITIALIZER};

int proxy_bridges_init(const char *roots_path, const char *runner_dir, unsigned threads)
{
    B.threads = threads;
    snprintf(B.runner_dir, sizeof(B.runner_dir), "%s", runner_dir);
    int r = read_file(roots_path, ROOTS_MAX, &B.roots, &B.roots_len);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot read the platform CA; enclaves cannot be reached", "path", roots_path,
                   "error", strerror(-r), NULL);
        return r;
    }
    B.tls = SSL_CTX_new(TLS_client_method());
    if (!B.tls)
        return -ENOMEM;
    SSL_CTX_set_min_proto_version(B.tls, TLS1_2_VERSION);
    /* the chain is not a WebPKI one: the handshake proves the key, and
     * atls_verify() checks the evidence that binds it */
    SSL_CTX_set_verify(B.tls, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(B.tls, SSL_SESS_CACHE_OFF);
    return 0;
}

/* Writes all of BUF (LEN bytes) to FD; false when the peer is gone. */
static bool write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        buf += n;
        len -= (size_t)n;
    }
    return true;
}

/* Reports a replica that failed attestation: a log line and an audit entry. */
static void refused(const bridge *b, const char *reason)
{
    const char *replica = strrchr(b->atls_path, '/');
    char name[254] = "";
    if (replica && replica > b->atls_path) { /* <runner_dir>/<replica>/atls.sock */
        const char *start = replica - 1;
        while (start > b->atls_path && start[-1] != '/')
            start--;
        snprintf(name, sizeof(name), "%.*s", (int)(replica - start), start);
    }
    log_fields(LOG_LEVEL_WARN, "an enclave replica failed attestation; requests to it are refused", "enclave",
               b->enclave, "replica", name, "reason", reason, NULL);
    json_t *details = json_pack("{s:s, s:s}", "replica", name, "reason", reason);
    audit_event_emit(&(audit_event){.action = "proxy.enclave.refused", .kind = "Enclave", .name = b->enclave,
                                    .outcome = "denied", .details = details});
    json_decref(details);
}

/* Connects to the agent serving at PATH and completes a TLS handshake
 * asking for evidence with NONCE (as the server name). Returns the TLS
 * connection (its fd in *RET_FD), or NULL when the replica is away
 * (*RET_HANDSHAKE_FAILED when it answered but the handshake failed). The
 * peer is not verified here. */
static SSL *replica_handshake(const char *path, const uint8_t nonce[ATLS_NONCE_LEN], int *ret_fd,
                              bool *ret_handshake_failed)
{
    *ret_handshake_failed = false;
    /* through /proc/self/fd: the data dir may be longer than sun_path allows */
    char dir[4400];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return NULL;
    *slash = 0;
    int dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", dirfd, slash + 1);
    struct timeval tv = {.tv_sec = HANDSHAKE_TIMEOUT_S};
    bool ok = dirfd >= 0 && fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
              setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0 &&
              connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (dirfd >= 0)
        close(dirfd);
    SSL *ssl = ok ? SSL_new(B.tls) : NULL;
    if (!ssl) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char sni[ATLS_SNI_LEN + 1];
    atls_sni_from_nonce(nonce, sni);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, sni);
    if (SSL_connect(ssl) != 1) {
        ERR_clear_error();
        *ret_handshake_failed = true;
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    *ret_fd = fd;
    return ssl;
}

/* Connects to the replica and completes a verified aTLS handshake. Returns
 * the TLS connection (its fd in *RET_FD), or NULL: the replica is away or
 * failed attestation (then reported when REPORT_HANDSHAKE or the evidence
 * was refused). Sets *RET_RETRY when the handshake itself failed (a replica
 * that is still starting). */
static SSL *attested_connect_once(bridge *b, int *ret_fd, bool report_handshake, bool *ret_retry)
{
    *ret_retry = false;
    uint8_t nonce[ATLS_NONCE_LEN];
    if (random_bytes(nonce, sizeof(nonce)) < 0)
        return NULL;
    int fd = -1;
    bool failed;
    SSL *ssl = replica_handshake(b->atls_path, nonce, &fd, &failed);
    const char *why = NULL;
    attest_error err = {{0}};
    X509 *peer = NULL;
    if (!ssl && !failed)
        return NULL; /* away */
    if (!ssl) {
        why = "the TLS handshake with the replica failed";
        *ret_retry = true;
    } else if (!(peer = SSL_get1_peer_certificate(ssl))) {
        why = "the replica presented no certificate";
    } else {
        atls_verify_options opts = {.now = (int64_t)(time_now_ns() / NSEC_PER_SEC),
                                    .roots = {(const uint8_t *)B.roots, B.roots_len},
                                    .nonce = nonce,
                                    .nonce_len = sizeof(nonce)};
        if (atls_verify(peer, b->policy, &opts, NULL, &err) < 0)
            why = err.text[0] ? err.text : "the replica's evidence does not satisfy the attestation policy";
    }
    X509_free(peer);
    ERR_clear_error();
    if (why) {
        if (!*ret_retry || report_handshake)
            refused(b, why);
        if (ssl) {
            SSL_free(ssl);
            close(fd);
        }
        return NULL;
    }
    /* from here on the pump polls: a partial TLS record never blocks it */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    *ret_fd = fd;
    return ssl;
}

/* Writes all of BUF (LEN bytes) over SSL on the non-blocking FD, waiting
 * for room as needed; false when the replica is gone or the proxy stops. */
static bool ssl_write_all(SSL *ssl, int fd, const char *buf, size_t len)
{
    while (len) {
        int n = SSL_write(ssl, buf, (int)len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        int e = SSL_get_error(ssl, n);
        struct pollfd p = {.fd = fd, .events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT};
        if ((e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) || atomic_load(&B.stopping) ||
            poll(&p, 1, IDLE_TIMEOUT_S * 1000) <= 0)
            return false;
    }
    return true;
}

/* Copies between the client (plain) and the replica (TLS on the
 * non-blocking UFD) until either closes, IDLE_TIMEOUT_S of silence, or the
 * proxy stops. */
static void pump(int cfd, SSL *ssl, int ufd)
{
    char *buf = malloc(CHUNK);
    if (!buf)
        return;
    unsigned idle_s = 0;
    for (;;) {
        struct pollfd p[2] = {{.fd = cfd, .events = POLLIN}, {.fd = ufd, .events = POLLIN}};
        int ready = SSL_pending(ssl) > 0 ? 1 : poll(p, 2, 1000);
        if (atomic_load(&B.stopping))
            break;
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            break;
        if (ready == 0) {
            if (++idle_s >= IDLE_TIMEOUT_S)
                break;
            continue;
        }
        idle_s = 0;
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(cfd, buf, CHUNK);
            if (n <= 0 || !ssl_write_all(ssl, ufd, buf, (size_t)n))
                break;
        }
        if (SSL_pending(ssl) > 0 || (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            int n = SSL_read(ssl, buf, CHUNK);
            if (n <= 0) {
                int e = SSL_get_error(ssl, n);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    continue; /* a partial record */
                break;
            }
            if (!write_all(cfd, buf, (size_t)n))
                break;
        }
    }
    OPENSSL_cleanse(buf, CHUNK);
    free(buf);
}

/* attested_connect_once(), tried again a few times while the handshake
 * itself fails: a replica just launched accepts before its agent serves. */
static SSL *attested_connect(bridge *b, int *ret_fd)
{
    for (int attempt = 1;; attempt++) {
        bool retry;
        SSL *ssl = attested_connect_once(b, ret_fd, attempt == HANDSHAKE_ATTEMPTS, &retry);
        if (ssl || !retry || attempt == HANDSHAKE_ATTEMPTS || atomic_load(&B.stopping))
            return ssl;
        usleep(HANDSHAKE_RETRY_MS * 1000);
    }
}

typedef struct carried {
    bridge *b;
    int fd;
} carried;

static void *carry_main(void *arg)
{
    carried c = *(carried *)arg;
    free(arg);
    int ufd = -1;
    SSL *ssl = attested_connect(c.b, &ufd);
    if (ssl) {
        pump(c.fd, ssl, ufd);
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(ufd);
    }
    close(c.fd);
    atomic_fetch_sub(&c.b->conns, 1);
    pthread_mutex_lock(&B.lock);
    if (--B.live == 0)
        pthread_cond_broadcast(&B.idle);
    pthread_mutex_unlock(&B.lock);
    return NULL;
}

/* Accepts the pool's connections and starts a thread carrying each. */
static void *accept_main(void *arg)
{
    bridge *b = arg;
    while (!atomic_load(&B.stopping)) {
        int fd = accept4(b->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            break; /* shut down */
        }
        /* a response read in several TLS records goes out at once, not after
         * the pool's delayed ACK */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        carried *c = malloc(sizeof(*c));
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        bool ok = c && atomic_fetch_add(&b->conns, 1) < PROXY_BRIDGE_CONNS_MAX;
        if (ok) {
            *c = (carried){b, fd};
            pthread_mutex_lock(&B.lock);
            B.live++;
            pthread_mutex_unlock(&B.lock);
            if (pthread_create(&t, &attr, carry_main, c) != 0) {
                pthread_mutex_lock(&B.lock);
                B.live--;
                pthread_mutex_unlock(&B.lock);
                ok = false;
            }
        }
        pthread_attr_destroy(&attr);
        if (!ok) {
            if (c)
                atomic_fetch_sub(&b->conns, 1);
            free(c);
            close(fd);
        }
    }
    return NULL;
}

/* The hex SHA-256 of POLICY's spec, which identifies a bridge with the
 * replica's socket. */
static void policy_digest(const json_t *policy, char out[2 * SHA256_DIGEST_LENGTH + 1])
{
    char *text = json_dumps(json_object_get(policy, "spec"), JSON_COMPACT | JSON_SORT_KEYS);
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)(text ? text : ""), text ? strlen(text) : 0, d);
    free(text);
    hex_encode(d, sizeof(d), out);
}

/* Starts bridge B: a loopback listener, its origin and its accepting thread. */
static int bridge_start(bridge *b)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    b->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (b->listen_fd < 0 || bind(b->listen_fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
        listen(b->listen_fd, 128) < 0 || getsockname(b->listen_fd, (struct sockaddr *)&sin, &len) < 0) {
        int e = negative_errno();
        if (b->listen_fd >= 0)
            close(b->listen_fd);
        return e;
    }
    /* the bridge carries PROXY_BRIDGE_CONNS_MAX at once: shared by the threads */
    unsigned threads = MAX(1u, B.threads);
    if (!(b->origin = proxy_origin_for_address((struct sockaddr *)&sin, sizeof(sin),
                                               MAX(1u, PROXY_BRIDGE_CONNS_MAX / threads)))) {
        close(b->listen_fd);
        return -ENOMEM;
    }
    if (pthread_create(&b->thread, NULL, accept_main, b) != 0) {
        close(b->listen_fd);
        return -EAGAIN;
    }
    return 0;
}

proxy_origin *proxy_bridge_origin(const char *replica, const json_t *policy, const char *enclave)
{
    char atls_path[4400];
    snprintf(atls_path, sizeof(atls_path), "%s/%s/atls.sock", B.runner_dir, replica);
    if (!B.tls || strlen(atls_path) >= sizeof(((bridge *)0)->atls_path) || !policy || strchr(replica, '/'))
        return NULL;
    char digest[2 * SHA256_DIGEST_LENGTH + 1];
    policy_digest(policy, digest);
    proxy_origin *found = NULL;
    pthread_mutex_lock(&B.lock);
    for (size_t i = 0; i < B.n && !found; i++)
        if (strcmp(B.list[i]->atls_path, atls_path) == 0 && strcmp(B.list[i]->policy_digest, digest) == 0)
            found = B.list[i]->origin;
    if (!found && B.n < PROXY_BRIDGES_MAX && !atomic_load(&B.stopping)) {
        bridge *b = calloc(1, sizeof(*b));
        if (b) {
            strcpy(b->atls_path, atls_path);
            strcpy(b->policy_digest, digest);
            snprintf(b->enclave, sizeof(b->enclave), "%s", enclave);
            b->policy = json_deep_copy(policy);
            int e = b->policy ? bridge_start(b) : -ENOMEM;
            if (e == 0) {
                B.list[B.n++] = b;
                found = b->origin;
            } else {
                log_fields(LOG_LEVEL_ERROR, "cannot start a bridge to an enclave replica", "enclave", enclave,
                           "socket", atls_path, "error", strerror(-e), NULL);
                json_decref(b->policy);
                free(b);
            }
        }
    }
    pthread_mutex_unlock(&B.lock);
    return found;
}

void proxy_bridges_shutdown(void)
{
    atomic_store(&B.stopping, true);
    pthread_mutex_lock(&B.lock);
    size_t n = B.n;
    pthread_mutex_unlock(&B.lock);
    for (size_t i = 0; i < n; i++) {
        shutdown(B.list[i]->listen_fd, SHUT_RDWR);
        pthread_join(B.list[i]->thread, NULL);
    }
    /* connection threads see the flag within a second of polling */
    pthread_mutex_lock(&B.lock);
    while (B.live > 0)
        pthread_cond_wait(&B.idle, &B.lock);
    for (size_t i = 0; i < B.n; i++) {
        close(B.list[i]->listen_fd);
        json_decref(B.list[i]->policy);
        free(B.list[i]);
    }
    B.n = 0;
    pthread_mutex_unlock(&B.lock);
    SSL_CTX_free(B.tls);
    B.tls = NULL;
    free(B.roots);
    B.roots = NULL;
}

int proxy_bridge_certificate(const char *replica, const uint8_t nonce[32], char **ret_pem)
{
    char path[4400];
    snprintf(path, sizeof(path), "%s/%s/atls.sock", B.runner_dir, replica);
    if (!B.tls || strchr(replica, '/'))
        return -EINVAL;
    int fd = -1;
    bool failed;
    SSL *ssl = replica_handshake(path, nonce, &fd, &failed);
    if (!ssl)
        return -EIO;
    X509 *peer = SSL_get1_peer_certificate(ssl);
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    if (peer && bio && PEM_write_bio_X509(bio, peer) == 1) {
        char *data;
        long len = BIO_get_mem_data(bio, &data);
        if ((pem = malloc((size_t)len + 1))) {
            memcpy(pem, data, (size_t)len);
            pem[len] = 0;
        }
    }
    BIO_free(bio);
    X509_free(peer);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    if (!pem)
        return -ENOMEM;
    *ret_pem = pem;
    return 0;
}
