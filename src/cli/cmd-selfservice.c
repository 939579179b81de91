/* Self-service in the terminal: `services` (what policy lets me reach) and
 * `connect SERVICE` (a local plain-HTTP listener forwarding to the service
 * through the proxy with my session, as Teleport's `tsh proxy app`). */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "httpd/phr.h"
#include "resource/resource.h"

#define CONNECT_HEAD_MAX (64 * 1024)   /* bytes of a request head, and of a response head */
#define CONNECT_HEADERS_MAX 100        /* fields of a request head */
#define CONNECT_CONNECTIONS_MAX 64     /* local connections served at once; more get 503 */
#define CONNECT_IO_TIMEOUT_S 60        /* a local client silent this long is dropped */
#define CONNECT_TOKEN_MARGIN_S 60      /* the access token is refreshed when it has less left */
#define CONNECT_DRAIN_MS 2000          /* after the session ended, requests in flight get this long */

/* GET /v1/me/services into *RET. Returns an exit status. */
static int fetch_services(cli_ctx *ctx, json_t **ret)
{
    api_error err;
    json_t *answer = NULL;
    if (api_request(ctx, ctx->token, "GET", "/me/services", NULL, &answer, &err) < 0)
        return api_error_print(&err);
    if (!json_is_array(json_object_get(answer, "items"))) {
        json_decref(answer);
        return cli_error("the server's answer to /v1/me/services holds no items");
    }
    *ret = answer;
    return CLI_EXIT_OK;
}

/* `cloister services`: the Services the caller's policies let them reach,
 * with their URL and how to connect. */
int cmd_services(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *answer = NULL;
    if ((r = fetch_services(ctx, &answer)) != CLI_EXIT_OK)
        return r;
    json_t *items = json_object_get(answer, "items");
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(items);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(items);
    else {
        if (json_array_size(items) == 0)
            printf("no service: no policy lets you reach one yet\n");
        else
            printf("%-24s %-44s %s\n", "NAME", "URL", "CONNECT");
        size_t i;
        json_t *s;
        json_array_foreach(items, i, s) {
            char name[128], url[512], how[256];
            text_sanitize(json_string_value(json_object_get(s, "name")) ?: "", name, sizeof(name));
            text_sanitize(json_string_value(json_object_get(s, "url")) ?: "", url, sizeof(url));
            text_sanitize(json_string_value(json_object_get(json_object_get(s, "connect"), "cli")) ?: "", how,
                          sizeof(how));
            printf("%-24s %-44s %s\n", name, url, how);
        }
    }
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

/* ---- connect ---- */

/* What every connection of one `connect` shares. */
typedef struct connect_state {
    cli_ctx *ctx;
    pthread_mutex_t lock; /* CTX's token and session, refreshed by any connection */
    char *base;           /* https://<service host>[:port], no trailing '/' */
    _Atomic unsigned connections;
    _Atomic bool ended;   /* the session ended: no more requests are forwarded */
    char ended_why[600];  /* written once, before ENDED is set */
    int wake[2];          /* a byte here wakes the accept loop */
} connect_state;

/* One local connection, served by its own thread. */
typedef struct conn {
    connect_state *st;
    int fd;
    char in[CONNECT_HEAD_MAX]; /* bytes read from the client and not yet consumed */
    size_t in_len;
    /* the request body being sent */
    enum { BODY_NONE, BODY_LENGTH, BODY_CHUNKED } body;
    uint64_t body_left;                 /* BODY_LENGTH: bytes still to send */
    struct phr_chunked_decoder chunked; /* BODY_CHUNKED */
    size_t decoded_len;                 /* BODY_CHUNKED: decoded bytes at the start of IN, not yet sent */
    bool body_done;
    /* the response */
    strbuf head;          /* the response head being collected */
    bool head_sent, framed, proxy_401, write_failed;
    long status;
} conn;

/* Writes N bytes of P to the client. Returns 0 or -EIO. */
static int write_all(conn *c, const void *p, size_t n)
{
    for (const char *s = p; n;) {
        ssize_t w = write(c->fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            c->write_failed = true;
            return -EIO;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Answers the client with STATUS and the text TEXT and closes after. */
static void reply_text(conn *c, const char *status, const char *text)
{
    char buf[1024];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     status, strlen(text), text);
    write_all(c, buf, MIN((size_t)n, sizeof(buf) - 1));
}

/* Reads more from the client into c->in. Returns the bytes read, 0 at its
 * end, or a negative errno (-ETIMEDOUT after CONNECT_IO_TIMEOUT_S). */
static ssize_t read_more(conn *c)
{
    if (c->in_len == sizeof(c->in))
        return -ENOBUFS;
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : negative_errno();
        c->in_len += (size_t)n;
        return n;
    }
}

/* Drops the first N bytes of c->in. */
static void consume(conn *c, size_t n)
{
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

/* libcurl's read callback: the next bytes of the request body, as the
 * client sends them (a chunked body decoded: libcurl chunks it again). */
static size_t on_read_body(char *dst, size_t size, size_t n, void *userdata)
{
    conn *c = userdata;
    size_t cap = size * n;
    for (;;) {
        if (c->body == BODY_LENGTH) {
            if (c->body_left == 0) {
                c->body_done = true;
                return 0;
            }
            if (c->in_len == 0 && read_more(c) <= 0)
                return CURL_READFUNC_ABORT;
            size_t avail = MIN(cap, c->in_len);
            size_t k = (size_t)MIN((uint64_t)avail, c->body_left);
            memcpy(dst, c->in, k);
            consume(c, k);
            c->body_left -= k;
            return k;
        }
        /* BODY_CHUNKED: decoded bytes wait at the start of c->in */
        if (c->decoded_len) {
            size_t k = MIN(cap, c->decoded_len);
            memcpy(dst, c->in, k);
            consume(c, k);
            c->decoded_len -= k;
            return k;
        }
        if (c->body_done)
            return 0;
        if (c->in_len == 0 && read_more(c) <= 0)
            return CURL_READFUNC_ABORT;
        size_t len = c->in_len;
        ssize_t left = phr_decode_chunked(&c->chunked, c->in, &len);
        if (left == -1)
            return CURL_READFUNC_ABORT;
        if (left >= 0) { /* the end: LEFT bytes (a next request) follow the trailer */
            c->body_done = true;
            memmove(c->in + len, c->in + c->in_len - (size_t)left, (size_t)left);
            c->in_len = len + (size_t)left;
        } else
            c->in_len = len;
        c->decoded_len = len;
    }
}

/* Whether the header NAME (LEN bytes) is one hop's own, or one connect
 * sets itself: it is not forwarded. */
static bool hop_header(const char *name, size_t len)
{
    static const char *const dropped[] = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                                          "te", "trailer", "transfer-encoding", "upgrade", "host",
                                          "content-length", "authorization", "expect"};
    for (size_t i = 0; i < ELEMENTSOF(dropped); i++)
        if (len == strlen(dropped[i]) && strncasecmp(name, dropped[i], len) == 0)
            return true;
    return false;
}

/* libcurl's header callback: collects the proxy's response head and sends
 * it to the client once complete (interim 1xx heads are dropped). */
static size_t on_header(char *data, size_t size, size_t n, void *userdata)
{
    conn *c = userdata;
    size_t len = size * n;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        strbuf_reset(&c->head);
        const char *sp = memchr(data, ' ', len);
        c->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        c->framed = false;
        /* always HTTP/1.1 to the local client */
        return strbuf_printf(&c->head, "HTTP/1.1%.*s", (int)(len - (size_t)(sp ? sp - data : 0)), sp ? sp : "\r\n") == 0
                   ? len
                   : 0;
    }
    if (len <= 2 && (len == 0 || data[0] == '\r' || data[0] == '\n')) { /* the end of a head */
        if (c->status >= 100 && c->status < 200)
            return len;
        const char *close = c->framed ? "" : "Connection: close\r\n";
        if (strbuf_append(&c->head, close, strlen(close)) < 0 || strbuf_append(&c->head, "\r\n", 2) < 0 ||
            write_all(c, c->head.data, c->head.len) < 0)
            return 0;
        c->head_sent = true;
        return len;
    }
    const char *colon = memchr(data, ':', len);
    size_t name_len = colon ? (size_t)(colon - data) : 0;
    if (name_len == strlen("www-authenticate") && strncasecmp(data, "www-authenticate", name_len) == 0 &&
        memmem(data, len, "realm=\"cloister\"", 16))
        c->proxy_401 = c->status == 401; /* the proxy's refusal, not the upstream's */
    if ((name_len == strlen("content-length") && strncasecmp(data, "content-length", name_len) == 0) ||
        (name_len == strlen("transfer-encoding") && strncasecmp(data, "transfer-encoding", name_len) == 0))
        c->framed = true; /* the body is passed as framed (libcurl does not decode it) */
    if (name_len == strlen("connection") && strncasecmp(data, "connection", name_len) == 0)
        return len;
    if (name_len == strlen("keep-alive") && strncasecmp(data, "keep-alive", name_len) == 0)
        return len;
    return strbuf_append(&c->head, data, len) == 0 ? len : 0;
}

/* libcurl's write callback: the response body to the client as it comes. */
static size_t on_body(char *data, size_t size, size_t n, void *userdata)
{
    conn *c = userdata;
    return write_all(c, data, size * n) == 0 ? size * n : 0;
}

/* The session ended (WHY): no more requests are forwarded; the accept
 * loop is woken to stop. */
static void session_ended(connect_state *st, const char *why)
{
    pthread_mutex_lock(&st->lock);
    if (!atomic_load(&st->ended)) {
        snprintf(st->ended_why, sizeof(st->ended_why), "%s", why);
        atomic_store(&st->ended, true);
        if (write(st->wake[1], "x", 1) < 0) {
            /* the loop polls ENDED too */
        }
    }
    pthread_mutex_unlock(&st->lock);
}

/* A copy of a fresh access token of the session (refreshed when it has
 * less than CONNECT_TOKEN_MARGIN_S left), or NULL when the session ended
 * (then recorded). The caller wipes and frees it. */
static char *fresh_token(connect_state *st)
{
    api_error err;
    pthread_mutex_lock(&st->lock);
    int r = cli_session_fresh(st->ctx, CONNECT_TOKEN_MARGIN_S, &err);
    char *token = r == 0 ? strdup(st->ctx->token) : NULL;
    pthread_mutex_unlock(&st->lock);
    if (r < 0 && (err.status == 401 || err.status == 403))
        session_ended(st, err.message);
    else if (r < 0)
        cli_error("cannot refresh the session's access token: %s", err.message);
    return token;
}

/* After the proxy refused a request with 401: whether the session still
 * works (a refresh succeeds); else it ended (recorded). */
static void check_session(connect_state *st)
{
    api_error err;
    pthread_mutex_lock(&st->lock);
    int r = cli_session_refresh(st->ctx, &err);
    pthread_mutex_unlock(&st->lock);
    if (r < 0 && (err.status == 401 || err.status == 403))
        session_ended(st, err.message);
}

/* Frees a header list holding the token, wiping it. */
static void headers_free(struct curl_slist *l)
{
    for (struct curl_slist *p = l; p; p = p->next)
        explicit_bzero(p->data, strlen(p->data));
    curl_slist_free_all(l);
}

/* Serves one request whose head (HEAD_LEN bytes at c->in) parsed as
 * METHOD, TARGET, HTTP/1.MINOR with HEADERS. Returns true when the
 * connection may serve another. */
static bool forward_one(conn *c, const char *method, size_t method_len, const char *target, size_t target_len,
                        int minor, const struct phr_header *headers, size_t n_headers, size_t head_len)
{
    connect_state *st = c->st;
    if (target_len == 0 || target[0] != '/') {
        reply_text(c, "400 Bad Request", "cloister connect: the request target must be a path (/...)\n");
        return false;
    }
    bool keep_alive = minor >= 1;
    size_t n_length = 0, n_te = 0;
    uint64_t length = 0;
    for (size_t i = 0; i < n_headers; i++) {
        const struct phr_header *h = &headers[i];
        if (h->name_len == 14 && strncasecmp(h->name, "content-length", 14) == 0) {
            char v[24];
            snprintf(v, sizeof(v), "%.*s", (int)MIN(h->value_len, sizeof(v) - 1), h->value);
            char *end;
            length = strtoull(v, &end, 10);
            if (h->value_len == 0 || h->value_len >= sizeof(v) || *end || strspn(v, "0123456789") != h->value_len)
                n_length = 2; /* refused below */
            n_length++;
        } else if (h->name_len == 17 && strncasecmp(h->name, "transfer-encoding", 17) == 0) {
            n_te += h->value_len == 7 && strncasecmp(h->value, "chunked", 7) == 0 ? 1 : 2;
        } else if (h->name_len == 10 && strncasecmp(h->name, "connection", 10) == 0) {
            if (h->value_len == 5 && strncasecmp(h->value, "close", 5) == 0)
                keep_alive = false;
        }
    }
    if (n_length > 1 || n_te > 1 || (n_length && n_te)) {
        reply_text(c, "400 Bad Request", "cloister connect: ambiguous request framing refused (RFC 9112 6.3)\n");
        return false;
    }
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s%.*s", st->base, (int)target_len, target) < 0) {
        reply_text(c, "500 Internal Server Error", "cloister connect: out of memory\n");
        return false;
    }
    _cleanup_free_ char *method_s = strndup(method, method_len);
    struct curl_slist *list = NULL, *l;
    bool ok = method_s != NULL;
    for (size_t i = 0; ok && i < n_headers; i++) {
        if (hop_header(headers[i].name, headers[i].name_len))
            continue;
        char *line;
        if (asprintf(&line, "%.*s: %.*s", (int)headers[i].name_len, headers[i].name, (int)headers[i].value_len,
                     headers[i].value) < 0) {
            ok = false;
            break;
        }
        if ((l = curl_slist_append(list, line)))
            list = l;
        else
            ok = false;
        free(line);
    }
    char *token = ok ? fresh_token(st) : NULL;
    if (!token) {
        headers_free(list);
        if (atomic_load(&st->ended))
            reply_text(c, "401 Unauthorized",
                       "cloister connect: your session has ended; log in again and start cloister connect again\n");
        else
            reply_text(c, "502 Bad Gateway", "cloister connect: no access token (see its output)\n");
        return false;
    }
    char auth[8300];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    explicit_bzero(token, strlen(token));
    free(token);
    const char *extra[] = {auth, "Expect:", n_te ? "Transfer-Encoding: chunked" : NULL};
    for (size_t i = 0; i < ELEMENTSOF(extra); i++)
        if (extra[i] && (l = curl_slist_append(list, extra[i])))
            list = l;
    explicit_bzero(auth, sizeof(auth));

    consume(c, head_len);
    c->body = n_te ? BODY_CHUNKED : n_length && length ? BODY_LENGTH : BODY_NONE;
    c->body_left = length;
    c->body_done = c->body == BODY_NONE;
    c->chunked = (struct phr_chunked_decoder){0};
    c->decoded_len = 0;
    c->head_sent = c->framed = c->proxy_401 = c->write_failed = false;
    c->status = 0;
    strbuf_reset(&c->head);

    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *h = curl_easy_init();
    CURLcode rc = CURLE_FAILED_INIT;
    if (h) {
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        if (st->ctx->ca)
            curl_easy_setopt(h, CURLOPT_CAINFO, st->ctx->ca);
        curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method_s);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
        curl_easy_setopt(h, CURLOPT_HTTP_TRANSFER_DECODING, 0L); /* bodies pass as framed */
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)CONNECT_IO_TIMEOUT_S);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_USERAGENT, NULL);
        if (method_len == 4 && memcmp(method, "HEAD", 4) == 0)
            curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        if (c->body != BODY_NONE) {
            curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read_body);
            curl_easy_setopt(h, CURLOPT_READDATA, c);
            curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, c->body == BODY_LENGTH ? (curl_off_t)length : -1);
        }
        rc = curl_easy_perform(h);
    }
    curl_easy_cleanup(h);
    headers_free(list);
    if (rc != CURLE_OK && !c->head_sent && !c->write_failed) {
        char text[CURL_ERROR_SIZE + 200];
        snprintf(text, sizeof(text), "cloister connect: cannot reach the service through the proxy at %s: %s\n",
                 st->base, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        reply_text(c, "502 Bad Gateway", text);
        fprintf(stderr, "%s", text);
        return false;
    }
    if (c->proxy_401)
        check_session(st);
    return rc == CURLE_OK && keep_alive && c->framed && c->body_done && !atomic_load(&st->ended);
}

/* A connection's thread: requests one after the other until the client
 * closes, a request cannot be kept alive, or the session ended. */
static void *conn_main(void *arg)
{
    conn *c = arg;
    connect_state *st = c->st;
    struct timeval tv = {.tv_sec = CONNECT_IO_TIMEOUT_S};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    strbuf_init(&c->head, CONNECT_HEAD_MAX);
    for (bool more = true; more && !atomic_load(&st->ended);) {
        const char *method, *target;
        size_t method_len, target_len, n_headers = CONNECT_HEADERS_MAX;
        int minor;
        struct phr_header headers[CONNECT_HEADERS_MAX];
        int head_len = c->in_len ? phr_parse_request(c->in, c->in_len, &method, &method_len, &target, &target_len,
                                                     &minor, headers, &n_headers, 0)
                                 : -2;
        if (head_len == -2) {
            ssize_t n = read_more(c);
            if (n == -ENOBUFS)
                reply_text(c, "431 Request Header Fields Too Large", "cloister connect: the request head is too large\n");
            more = n > 0;
            continue;
        }
        if (head_len < 0) {
            reply_text(c, "400 Bad Request", "cloister connect: the request head does not parse\n");
            break;
        }
        more = forward_one(c, method, method_len, target, target_len, minor, headers, n_headers, (size_t)head_len);
    }
    strbuf_free(&c->head);
    close(c->fd);
    atomic_fetch_sub(&st->connections, 1);
    free(c);
    return NULL;
}

/* Parses --listen HOST:PORT (a loopback address: the listener forwards
 * with your session, so it must not be reachable from elsewhere) and binds
 * it. Returns the listening fd or a negative errno (-EINVAL for an address
 * that is not loopback). */
static int listen_on(const char *spec, struct sockaddr_storage *ret_addr)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec)
        return -EINVAL;
    char host[64];
    snprintf(host, sizeof(host), "%.*s", (int)MIN((size_t)(colon - spec), sizeof(host) - 1), spec);
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (*end || port > 65535 || !colon[1])
        return -EINVAL;
    struct sockaddr_storage ss = {0};
    socklen_t len;
    size_t hl = strlen(host);
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        if ((ntohl(in4->sin_addr.s_addr) >> 24) != 127)
            return -EINVAL;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        len = sizeof(*in4);
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return -EINVAL;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        len = sizeof(*in6);
    } else
        return -EINVAL;
    _cleanup_close_ int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return negative_errno();
    *ret_addr = ss;
    return TAKE_FD(fd);
}

/* Accepts local connections until the session ends; each is served by a
 * thread of its own (at most CONNECT_CONNECTIONS_MAX at once). */
static void accept_loop(connect_state *st, int lfd)
{
    while (!atomic_load(&st->ended)) {
        struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = st->wake[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        conn *c = atomic_fetch_add(&st->connections, 1) < CONNECT_CONNECTIONS_MAX ? calloc(1, sizeof(*c)) : NULL;
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (c) {
            *c = (conn){.st = st, .fd = fd};
            if (pthread_create(&thread, &attr, conn_main, c) == 0) {
                pthread_attr_destroy(&attr);
                continue;
            }
            free(c);
        }
        pthread_attr_destroy(&attr);
        atomic_fetch_sub(&st->connections, 1);
        static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        if (write(fd, busy, sizeof(busy) - 1) < 0) {
            /* the client went away */
        }
        close(fd);
    }
}

/* `cloister connect SERVICE [--listen 127.0.0.1:PORT]`: a local plain-HTTP
 * listener forwarding every request to SERVICE through the proxy with the
 * saved session's access token, refreshed before it expires. When the
 * session ends (revoked, expired, the user disabled), the request that
 * found out gets the proxy's 401, the listener closes and connect exits 1
 * naming why. */
int cmd_connect(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"listen", required_argument, NULL, 'l'},
        {},
    };
    const char *listen_spec = "127.0.0.1:0";
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "l:" CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == 'l')
            listen_spec = optarg;
        else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 1 != argc)
        return cli_usage_error(cmd, "connect takes the service's name");
    const char *service = argv[optind];
    if (!resource_name_valid(service))
        return cli_usage_error(cmd, "\"%s\" is not a valid service name", service);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    if (!ctx->session.refresh_token || !ctx->session.access_token || strcmp(ctx->token, ctx->session.access_token))
        return cli_error("connect needs a session to refresh: run cloister login (CLOISTER_TOKEN is not used)");
    json_auto_t *answer = NULL;
    if ((r = fetch_services(ctx, &answer)) != CLI_EXIT_OK)
        return r;
    const char *url = NULL;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(answer, "items"), i, s) {
        if (json_is_string(json_object_get(s, "name")) && strcmp(json_string_value(json_object_get(s, "name")), service) == 0)
            url = json_string_value(json_object_get(s, "url"));
    }
    if (!url)
        return cli_error("service %s is not among those you may reach (cloister services lists them)", service);
    if (strncmp(url, "https://", 8) != 0)
        return cli_error("the server names no https URL for service %s", service);
    struct sockaddr_storage addr;
    _cleanup_close_ int lfd = listen_on(listen_spec, &addr);
    if (lfd == -EINVAL)
        return cli_usage_error(cmd, "--listen takes a loopback HOST:PORT (127.0.0.1:8080, [::1]:8080): the "
                                    "listener forwards with your session");
    if (lfd < 0)
        return cli_error("cannot listen on %s: %s", listen_spec, strerror(-lfd));
    connect_state st = {.ctx = ctx, .wake = {-1, -1}};
    st.base = strndup(url, strlen(url) - (url[strlen(url) - 1] == '/' ? 1 : 0));
    if (!st.base || pipe2(st.wake, O_CLOEXEC) < 0 || pthread_mutex_init(&st.lock, NULL) != 0) {
        free(st.base);
        return cli_error("cannot set up: %m");
    }
    char where[80];
    if (addr.ss_family == AF_INET6)
        snprintf(where, sizeof(where), "[::1]:%u", ntohs(((struct sockaddr_in6 *)&addr)->sin6_port));
    else {
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &((struct sockaddr_in *)&addr)->sin_addr, ip, sizeof(ip));
        snprintf(where, sizeof(where), "%s:%u", ip, ntohs(((struct sockaddr_in *)&addr)->sin_port));
    }
    char clean[512];
    printf("listening on http://%s, forwarding to %s with your session (Ctrl-C stops)\n", where,
           text_sanitize(st.base, clean, sizeof(clean)));
    fflush(stdout);
    accept_loop(&st, lfd);
    /* the session ended: no new connection; those in flight get a moment */
    close(TAKE_FD(lfd));
    uint64_t deadline = time_mono_ns() + CONNECT_DRAIN_MS * NSEC_PER_MSEC;
    while (atomic_load(&st.connections) && time_mono_ns() < deadline)
        usleep(10 * 1000);
    cli_error("your session has ended (%s): requests are no longer forwarded; log in again (cloister login) "
              "and start cloister connect again",
              st.ended_why[0] ? st.ended_why : "refused");
    if (atomic_load(&st.connections)) { /* a connection still in a transfer: leave without waiting for it */
        fflush(stdout);
        fflush(stderr);
        _exit(CLI_EXIT_FAILED);
    }
    close(st.wake[0]);
    close(st.wake[1]);
    pthread_mutex_destroy(&st.lock);
    free(st.base);
    return CLI_EXIT_FAILED;
}
