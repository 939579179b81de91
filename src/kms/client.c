#include "kms/client.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>

#include "basic/macro.h"
#include "basic/strbuf.h"

/* The kms role speaks HTTP/1.1 on its Unix socket and always answers with a
 * Content-Length (h2o). A call is one write and, for a small answer, one
 * read on a kept-alive connection: no HTTP library between them, since
 * every API key operation pays for this round trip. */
#define POOL_SIZE 16
#define HEAD_MAX 8192
#define CALL_TIMEOUT_S 30

typedef struct conn {
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
} conn;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static conn pool[POOL_SIZE];
static size_t pool_n;

/* A kept-alive connection to SOCKET from the pool into *RET (*RET_REUSED
 * true), or a new one. Returns 0, -ECONNREFUSED when nothing listens there,
 * -ENAMETOOLONG, or another negative errno. */
static int conn_take(const char *socket_path, conn *ret, bool *ret_reused)
{
    pthread_mutex_lock(&pool_lock);
    while (pool_n > 0) {
        conn c = pool[--pool_n];
        if (strcmp(c.path, socket_path) == 0) {
            pthread_mutex_unlock(&pool_lock);
            *ret = c;
            *ret_reused = true;
            return 0;
        }
        close(c.fd); /* another socket's: not used again */
    }
    pthread_mutex_unlock(&pool_lock);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return negative_errno();
    struct timeval tv = {.tv_sec = CALL_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return e == ENOENT || e == ECONNREFUSED ? -ECONNREFUSED : -e;
    }
    *ret = (conn){.fd = fd};
    strcpy(ret->path, socket_path);
    *ret_reused = false;
    return 0;
}

/* Puts C back for the next call, or closes it when the pool is full. */
static void conn_give(const conn *c)
{
    pthread_mutex_lock(&pool_lock);
    bool kept = pool_n < POOL_SIZE;
    if (kept)
        pool[pool_n++] = *c;
    pthread_mutex_unlock(&pool_lock);
    if (!kept)
        close(c->fd);
}

void kms_client_cleanup(void)
{
    pthread_mutex_lock(&pool_lock);
    while (pool_n > 0)
        close(pool[--pool_n].fd);
    pthread_mutex_unlock(&pool_lock);
}

/* Sends the N buffers of IOV whole on FD (IOV is consumed). Returns 0 or a
 * negative errno (-EPIPE: the peer closed). */
static int send_all(int fd, struct iovec *iov, size_t n)
{
    while (n > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = n};
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno == EAGAIN ? -ETIMEDOUT : negative_errno();
        size_t done = (size_t)w;
        for (; n > 0 && done >= iov->iov_len; n--, iov++)
            done -= iov->iov_len;
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

/* Receives at most SIZE bytes into BUF. Returns the count (0: the peer
 * closed) or a negative errno (-ETIMEDOUT after CALL_TIMEOUT_S). */
static ssize_t recv_some(int fd, char *buf, size_t size)
{
    for (;;) {
        ssize_t r = recv(fd, buf, size, 0);
        if (r >= 0)
            return r;
        if (errno != EINTR)
            return errno == EAGAIN ? -ETIMEDOUT : negative_errno();
    }
}

/* The answer's head HEAD (LEN bytes, the blank line excluded) checked:
 * "HTTP/1.1 NNN", exactly one Content-Length, no Transfer-Encoding. Returns
 * the status with the length in *RET_LENGTH and whether the connection
 * stays open in *RET_KEEP, or -EBADMSG. */
static int parse_head(const char *head, size_t len, size_t *ret_length, bool *ret_keep)
{
    if (len < 12 || memcmp(head, "HTTP/1.1 ", 9) != 0 || head[9] < '1' || head[9] > '5' || head[10] < '0' ||
        head[10] > '9' || head[11] < '0' || head[11] > '9' || (len > 12 && head[12] != ' ' && head[12] != '\r'))
        return -EBADMSG;
    int status = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
    bool have_length = false, keep = true;
    size_t length = 0;
    const char *p = memmem(head, len, "\r\n", 2), *end = head + len;
    while (p && p < end) {
        const char *line = p + 2, *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!eol)
            eol = end;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (!colon)
            return line == eol ? status : -EBADMSG;
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        size_t nlen = (size_t)(colon - line), vlen = (size_t)(eol - v);
        if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
            if (have_length || vlen == 0 || vlen > 9)
                return -EBADMSG;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return -EBADMSG;
                length = length * 10 + (size_t)(v[i] - '0');
            }
            have_length = true;
        } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0)
            return -EBADMSG;
        else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0 && vlen >= 5 && strncasecmp(v, "close", 5) == 0)
            keep = false;
        p = eol;
    }
    if (!have_length)
        return -EBADMSG;
    *ret_length = length;
    *ret_keep = keep;
    return status;
}

/* Reads one answer on FD: its head, then its body whole into OUT (capped at
 * KMS_RESPONSE_MAX). Returns the status (> 0) with *RET_KEEP saying whether
 * FD may serve another call; -EPIPE when the peer closed before a byte (a
 * kept-alive connection the role dropped), -EBADMSG, -E2BIG, or another
 * negative errno. Every buffer that held the body is wiped. */
static int read_answer(int fd, strbuf *out, bool *ret_keep)
{
    char buf[HEAD_MAX];
    size_t have = 0;
    const char *blank = NULL;
    int r = 0;
    while (!blank) {
        ssize_t n = have < sizeof(buf) ? recv_some(fd, buf + have, sizeof(buf) - have) : -EBADMSG;
        if (n <= 0) {
            r = n < 0 ? (int)n : have == 0 ? -EPIPE : -EBADMSG;
            break;
        }
        have += (size_t)n;
        blank = memmem(buf, have, "\r\n\r\n", 4);
    }
    size_t length = 0;
    bool keep = false;
    if (blank)
        r = parse_head(buf, (size_t)(blank - buf), &length, &keep);
    if (r > 0 && length > KMS_RESPONSE_MAX)
        r = -E2BIG;
    if (r > 0) {
        size_t start = (size_t)(blank - buf) + 4, got = MIN(have - start, length);
        if (have - start > length)
            keep = false; /* bytes past the answer: nothing was asked for them */
        if (strbuf_append(out, buf + start, got) < 0)
            r = -ENOMEM;
        while (r > 0 && got < length) {
            ssize_t n = recv_some(fd, buf, MIN(sizeof(buf), length - got));
            if (n <= 0)
                r = n < 0 ? (int)n : -EBADMSG;
            else if (strbuf_append(out, buf, (size_t)n) < 0)
                r = -ENOMEM;
            else
                got += (size_t)n;
        }
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    *ret_keep = r > 0 && keep;
    return r;
}

int kms_call(const char *socket, const char *path, const json_t *body, json_t **ret)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body && !text)
        return -ENOMEM;
    const char *payload = text ? text : "{}";
    size_t plen = strlen(payload);
    char head[512];
    int hlen = snprintf(head, sizeof(head),
                        "POST %s HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                        path, plen);
    strbuf out;
    strbuf_init_secure(&out, KMS_RESPONSE_MAX);
    int r = hlen > 0 && (size_t)hlen < sizeof(head) ? 0 : -ENAMETOOLONG;
    for (int attempt = 0; r == 0; attempt++) {
        conn c;
        bool reused, keep = false;
        if ((r = conn_take(socket, &c, &reused)) < 0)
            break;
        struct iovec iov[2] = {{head, (size_t)hlen}, {(void *)payload, plen}};
        r = send_all(c.fd, iov, 2);
        if (r == 0)
            r = read_answer(c.fd, &out, &keep);
        if (keep)
            conn_give(&c);
        else
            close(c.fd);
        if (reused && attempt == 0 && (r == -EPIPE || r == -ECONNRESET)) {
            strbuf_reset(&out); /* the role closed it meanwhile: once more, on a new one */
            r = 0;
        }
    }
    if (text) {
        /* requests carry plaintext and passphrases */
        OPENSSL_cleanse(text, plen);
        free(text);
    }
    if (r > 0) {
        json_t *doc = json_loadb(out.data ? out.data : "", out.len, 0, NULL);
        if (doc)
            *ret = doc;
        else
            r = -EBADMSG;
    }
    strbuf_free_secure(&out);
    return r;
}

void kms_json_wipe(json_t *v)
{
    const char *k;
    json_t *item;
    size_t i;
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (v->refcount == 1) /* a shared string is still in use elsewhere */
            OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
        break;
    case JSON_OBJECT:
        json_object_foreach(v, k, item) kms_json_wipe(item);
        break;
    case JSON_ARRAY:
        json_array_foreach(v, i, item) kms_json_wipe(item);
        break;
    default:
        break;
    }
}

void kms_json_wipe_decref(json_t *v)
{
    if (v && v->refcount == 1)
        kms_json_wipe(v);
    json_decref(v);
}
