/* The agent's egress proxy (see egress.h). */
#include "agent/egress.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "basic/socket.h"
#include "basic/timeutil.h"

#define RELAY_BUFFER 16384
#define ANSWER_MAX 512

typedef struct proxy {
    char socket[108];
    int listen_fd;
    atomic_uint tunnels;
} proxy;

static proxy the_proxy = {.listen_fd = -1};

/* Writes the LEN bytes at P to FD; 0 or a negative errno. */
static int send_all(int fd, const void *p, size_t len)
{
    const char *b = p;
    while (len) {
        ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EIO;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Answers the workload with an HTTP/1.1 STATUS and a one-line REASON body. */
static void reply(int fd, int status, const char *reason)
{
    char buf[ANSWER_MAX + 256];
    const char *text = status == 200   ? "Connection established"
                       : status == 403 ? "Forbidden"
                       : status == 400 ? "Bad Request"
                       : status == 405 ? "Method Not Allowed"
                       : status == 429 ? "Too Many Requests"
                                       : "Bad Gateway";
    int n = status == 200 ? snprintf(buf, sizeof(buf), "HTTP/1.1 200 %s\r\n\r\n", text)
                          : snprintf(buf, sizeof(buf),
                                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                                     "Connection: close\r\n\r\n%s\n",
                                     status, text, strlen(reason) + 1, reason);
    send_all(fd, buf, (size_t)MIN(n, (int)sizeof(buf) - 1));
}

/* Reads the request head from FD into HEAD (AGENT_EGRESS_HEAD_MAX) within
 * AGENT_EGRESS_HEAD_TIMEOUT_S; the bytes read in *LEN and where the head ends
 * in *END. -EBADMSG when too long, -ETIMEDOUT when too slow. */
static int read_head(int fd, char *head, size_t *len, size_t *end)
{
    size_t have = 0;
    uint64_t deadline = time_mono_ns() + (uint64_t)AGENT_EGRESS_HEAD_TIMEOUT_S * NSEC_PER_SEC;
    while (have < AGENT_EGRESS_HEAD_MAX) {
        if (time_mono_ns() > deadline)
            return -ETIMEDOUT;
        ssize_t n = recv(fd, head + have, AGENT_EGRESS_HEAD_MAX - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EIO;
        have += (size_t)n;
        for (size_t i = have - (size_t)n >= 3 ? have - (size_t)n - 3 : 0; i + 4 <= have; i++)
            if (memcmp(head + i, "\r\n\r\n", 4) == 0) {
                *len = have;
                *end = i + 4;
                return 0;
            }
    }
    return -EBADMSG;
}

/* Parses "CONNECT host:port HTTP/1.x" at the start of HEAD into HOST (at
 * least 256 bytes; IPv6 without its brackets) and PORT. */
static int parse_connect(const char *head, char *host, unsigned *port)
{
    if (strncmp(head, "CONNECT ", 8) != 0)
        return -EOPNOTSUPP;
    const char *target = head + 8, *sp = strchr(target, ' ');
    if (!sp || strncmp(sp, " HTTP/1.", 8) != 0)
        return -EBADMSG;
    const char *colon = sp;
    while (colon > target && colon[-1] != ':')
        colon--;
    if (colon == target)
        return -EBADMSG;
    const char *h = target, *h_end = colon - 1;
    if (*h == '[' && h_end > h && h_end[-1] == ']') {
        h++;
        h_end--;
    }
    size_t hn = (size_t)(h_end - h), pn = (size_t)(sp - colon);
    if (hn == 0 || hn > 253 || pn == 0 || pn > 5 || memchr(h, ' ', hn))
        return -EBADMSG;
    unsigned p = 0;
    for (size_t i = 0; i < pn; i++) {
        if (colon[i] < '0' || colon[i] > '9')
            return -EBADMSG;
        p = p * 10 + (unsigned)(colon[i] - '0');
    }
    if (p < 1 || p > 65535)
        return -EBADMSG;
    memcpy(host, h, hn);
    host[hn] = 0;
    *port = p;
    return 0;
}

/* Opens a tunnel to HOST:PORT at the runner: the connection, with the
 * runner's answer line in ANSWER (status in *STATUS), or a negative errno. */
static int open_tunnel(const char *host, unsigned port, int *status, char *answer)
{
    int fd = unix_connect(the_proxy.socket);
    if (fd < 0)
        return fd;
    char line[300];
    int n = snprintf(line, sizeof(line), "%s %u\n", host, port);
    if (send_all(fd, line, (size_t)n) < 0) {
        int e = negative_errno();
        close(fd);
        return e;
    }
    size_t len = 0;
    while (len < ANSWER_MAX - 1) { /* byte by byte: the tunnel's bytes follow the line */
        ssize_t r = recv(fd, answer + len, 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || answer[len] == '\n')
            break;
        len++;
    }
    answer[len] = 0;
    if (len < 4 || answer[3] != ' ' || sscanf(answer, "%3d", status) != 1) {
        close(fd);
        return -EBADMSG;
    }
    memmove(answer, answer + 4, len - 3);
    return fd;
}

/* Copies bytes both ways between A and B until both directions ended or an error. */
static void relay(int a, int b)
{
    char buf[RELAY_BUFFER];
    bool open_a = true, open_b = true;
    while (open_a || open_b) {
        struct pollfd p[2] = {{.fd = open_a ? a : -1, .events = POLLIN}, {.fd = open_b ? b : -1, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        for (int i = 0; i < 2; i++) {
            if (!p[i].revents)
                continue;
            int from = i ? b : a, to = i ? a : b;
            ssize_t got = recv(from, buf, sizeof(buf), 0);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0)
                return;
            if (got == 0) {
                shutdown(to, SHUT_WR);
                *(i ? &open_b : &open_a) = false;
            } else if (send_all(to, buf, (size_t)got) < 0)
                return;
        }
    }
}

/* Serves one client connection of the workload. */
static void serve(int fd)
{
    char head[AGENT_EGRESS_HEAD_MAX + 1], host[256], answer[ANSWER_MAX];
    size_t len = 0, end = 0;
    unsigned port = 0;
    struct timeval tv = {.tv_sec = AGENT_EGRESS_HEAD_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int r = read_head(fd, head, &len, &end);
    if (r < 0) {
        if (r == -EBADMSG)
            reply(fd, 400, "the request head is limited to 8192 bytes");
        return;
    }
    head[len] = 0;
    r = parse_connect(head, host, &port);
    if (r < 0) {
        reply(fd, r == -EOPNOTSUPP ? 405 : 400,
              r == -EOPNOTSUPP ? "this egress proxy tunnels CONNECT host:port only (use https:// URLs)"
                               : "expected CONNECT host:port HTTP/1.1");
        return;
    }
    int status = 0;
    int up = open_tunnel(host, port, &status, answer);
    if (up < 0) {
        log_fields(LOG_LEVEL_WARN, "cannot reach the runner's egress socket", "error", strerror(-up), NULL);
        reply(fd, 502, "the runner's egress socket does not answer");
        return;
    }
    if (status != 200) {
        reply(fd, status == 403 || status == 429 || status == 400 ? status : 502, answer);
        close(up);
        return;
    }
    reply(fd, 200, "");
    struct timeval none = {0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    if (len > end && send_all(up, head + end, len - end) < 0) { /* bytes sent right after the head */
        close(up);
        return;
    }
    relay(fd, up);
    close(up);
}

static void *conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    serve(fd);
    close(fd);
    atomic_fetch_sub(&the_proxy.tunnels, 1);
    return NULL;
}

static void *accept_main(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept4(the_proxy.listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
                continue;
            return NULL;
        }
        if (atomic_load(&the_proxy.tunnels) >= AGENT_EGRESS_TUNNELS_MAX) {
            reply(fd, 429, "too many tunnels are open");
            close(fd);
            continue;
        }
        atomic_fetch_add(&the_proxy.tunnels, 1);
        pthread_attr_t attr;
        pthread_t tid;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (pthread_create(&tid, &attr, conn_main, (void *)(intptr_t)fd) != 0) {
            atomic_fetch_sub(&the_proxy.tunnels, 1);
            close(fd);
        }
        pthread_attr_destroy(&attr);
    }
}

int agent_egress_start(const char *socket_path)
{
    if (access(socket_path, F_OK) < 0)
        return 0; /* no egress for this sandbox */
    if (strlen(socket_path) >= sizeof(the_proxy.socket))
        return -ENAMETOOLONG;
    strcpy(the_proxy.socket, socket_path);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t slen = sizeof(sin);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 64) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &slen) < 0) {
        int e = negative_errno();
        log_fields(LOG_LEVEL_ERROR, "cannot listen for the egress proxy", "error", strerror(-e), NULL);
        if (fd >= 0)
            close(fd);
        return e;
    }
    the_proxy.listen_fd = fd;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", ntohs(sin.sin_port));
    static const char *const names[] = {"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"};
    for (size_t i = 0; i < ELEMENTSOF(names); i++)
        setenv(names[i], url, 1);
    setenv("NO_PROXY", "localhost,127.0.0.1,::1", 1);
    setenv("no_proxy", "localhost,127.0.0.1,::1", 1);
    pthread_t tid;
    if (pthread_create(&tid, NULL, accept_main, NULL) != 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot start the egress proxy's thread", NULL);
        return -EAGAIN;
    }
    pthread_detach(tid);
    log_fields(LOG_LEVEL_INFO, "egress proxy listening", "proxy", url, NULL);
    return 0;
}
