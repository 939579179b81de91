/* The proxy's HTTP/1.1 client: per-thread keep-alive connections that stay
 * in their event loop (see upstream.h). */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <h2o/http1.h>
#include <h2o/tunnel.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "httpd/httpd.h"
#include "httpd/phr.h"
#include "proxy/cookie.h"
#include "proxy/corridor.h"

#define HEAD_MAX (64u * 1024)          /* bytes of an upstream's response head */
#define HEADERS_MAX 100                /* header fields of a response */
#define BACKLOG_MAX (1024u * 1024)     /* response bytes read ahead of the client before reading pauses */
#define COPY_MAX (16u * 1024)          /* body bytes of a response copied to its request's pool (no malloc) */

struct proxy_origin {
    char key[300];
    unsigned index; /* its slot in each thread's pools */
    bool tls;
    char host[256], port[8];
    struct sockaddr_storage addr;
    socklen_t addrlen; /* 0: HOST is resolved per connection */
    unsigned idle_max, conns_max;
};

/* ---- origins, for the process ---- */

static struct {
    pthread_mutex_t lock;
    proxy_origin *list[PROXY_ORIGINS_MAX];
    size_t n;
    unsigned idle_max, conns_max;
} O = {.lock = PTHREAD_MUTEX_INITIALIZER, .idle_max = PROXY_UPSTREAM_IDLE_MAX, .conns_max = PROXY_UPSTREAM_CONNS_MAX};

void proxy_upstream_set_caps(unsigned idle_max, unsigned conns_max)
{
    pthread_mutex_lock(&O.lock);
    if (idle_max)
        O.idle_max = idle_max;
    if (conns_max)
        O.conns_max = conns_max;
    pthread_mutex_unlock(&O.lock);
}

/* Adds ORIGIN (heap, filled but for its index and caps) under O.lock.
 * Returns it, or NULL (freed) when the list is full. */
static proxy_origin *origin_add_locked(proxy_origin *o, unsigned conns_max)
{
    if (O.n == PROXY_ORIGINS_MAX) {
        free(o);
        return NULL;
    }
    o->index = (unsigned)O.n;
    o->conns_max = conns_max ? conns_max : O.conns_max;
    o->idle_max = MIN(O.idle_max, o->conns_max);
    O.list[O.n++] = o;
    return o;
}

proxy_origin *proxy_origin_for_url(const h2o_url_t *url)
{
    char key[300];
    bool tls = url->scheme == &H2O_URL_SCHEME_HTTPS;
    uint16_t port = h2o_url_get_port(url);
    if (url->host.len >= sizeof(((proxy_origin *)0)->host))
        return NULL;
    snprintf(key, sizeof(key), "%s://%.*s:%u", tls ? "https" : "http", (int)url->host.len, url->host.base, port);
    proxy_origin *found = NULL;
    pthread_mutex_lock(&O.lock);
    for (size_t i = 0; i < O.n && !found; i++)
        if (strcmp(O.list[i]->key, key) == 0)
            found = O.list[i];
    proxy_origin *o = found ? NULL : calloc(1, sizeof(*o));
    if (o) {
        snprintf(o->key, sizeof(o->key), "%s", key);
        o->tls = tls;
        snprintf(o->host, sizeof(o->host), "%.*s", (int)url->host.len, url->host.base);
        snprintf(o->port, sizeof(o->port), "%u", port);
        /* a literal address is used as is: no resolver round trip per connection */
        struct sockaddr_in *sin = (struct sockaddr_in *)&o->addr;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&o->addr;
        if (inet_pton(AF_INET, o->host, &sin->sin_addr) == 1) {
            sin->sin_family = AF_INET;
            sin->sin_port = htons(port);
            o->addrlen = sizeof(*sin);
        } else if (inet_pton(AF_INET6, o->host, &sin6->sin6_addr) == 1) {
            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons(port);
            o->addrlen = sizeof(*sin6);
        }
        found = origin_add_locked(o, 0);
    }
    pthread_mutex_unlock(&O.lock);
    return found;
}

proxy_origin *proxy_origin_for_address(const struct sockaddr *sa, socklen_t len, unsigned conns_max)
{
    proxy_origin *o = len <= sizeof(o->addr) ? calloc(1, sizeof(*o)) : NULL;
    if (!o)
        return NULL;
    memcpy(&o->addr, sa, len);
    o->addrlen = len;
    snprintf(o->key, sizeof(o->key), "address");
    pthread_mutex_lock(&O.lock);
    proxy_origin *found = origin_add_locked(o, conns_max);
    pthread_mutex_unlock(&O.lock);
    return found;
}

void proxy_origins_free(void)
{
    pthread_mutex_lock(&O.lock);
    for (size_t i = 0; i < O.n; i++)
        free(O.list[i]);
    O.n = 0;
    pthread_mutex_unlock(&O.lock);
}

/* ---- a thread's connections ---- */

/* A thread's connections to one origin. */
typedef struct origin_pool {
    h2o_linklist_t idle;    /* upstream_conn.idle_link, the most recently used last */
    h2o_linklist_t waiting; /* exchange.wait_link: requests waiting for a connection under the cap */
    unsigned conns, n_idle; /* open (or opening), of which idle */
} origin_pool;

struct proxy_upstreams {
    h2o_loop_t *loop;
    h2o_timeout_t idle_timeout;
    unsigned conns, conns_max;      /* open (or opening) to every origin, and the thread's budget of them */
    h2o_linklist_t budget_waiting;  /* exchange.wait_link: requests under their origin's cap waiting for the budget */
    h2o_linklist_t idle_all;        /* upstream_conn.idle_all_link: every origin's idle ones, the least recent first */
    origin_pool pools[PROXY_ORIGINS_MAX]; /* by origin index; anchors set on first use */
    httpd_recycler exchanges;       /* the requests' exchanges, reused */
};

struct exchange;

/* One connection to an upstream, its reads armed for its whole life. */
typedef struct upstream_conn {
    h2o_socket_t *sock; /* NULL while its address is resolved */
    proxy_upstreams *u;
    origin_pool *pool;
    struct exchange *ex; /* the exchange it carries, or NULL when idle */
    h2o_linklist_t idle_link;
    h2o_linklist_t idle_all_link; /* in the thread's idle_all while idle */
    h2o_timeout_entry_t idle_timer;
    bool used; /* it carried an exchange to its end before */
} upstream_conn;

typedef enum framing {
    FRAMING_NONE,    /* no body */
    FRAMING_LENGTH,  /* Content-Length */
    FRAMING_CHUNKED, /* Transfer-Encoding: chunked */
    FRAMING_CLOSE,   /* until the upstream closes */
} framing;

/* One request's exchange with its upstream, from the request's pool. */
typedef struct exchange {
    h2o_generator_t super; /* first: the generator is the exchange */
    proxy_request *pr;
    h2o_req_t *req;
    proxy_upstreams *u;
    proxy_origin *origin;
    origin_pool *pool;
    upstream_conn *conn;
    h2o_hostinfo_getaddr_req_t *getaddr;
    h2o_linklist_t wait_link;
    h2o_timeout_entry_t timer;
    h2o_iovec_t bufs[2]; /* the request: head, body */
    size_t nbufs;
    bool idempotent, retried, websocket, method_head;
    bool writing;    /* the request is being written */
    bool answering;  /* bytes of the answer arrived */
    bool started;    /* the response is started (h2o_start_response) */
    bool keepalive;  /* the upstream keeps the connection after this answer */
    framing framing;
    size_t left;     /* FRAMING_LENGTH: body bytes to come */
    struct phr_chunked_decoder chunked;
    size_t decoded;  /* bytes of the connection's input already decoded as body */
    h2o_buffer_t *sending; /* body bytes in h2o's hands until proceed */
    h2o_buffer_t *rest;    /* the end of the body, taken with its connection's input */
    h2o_iovec_t tail;      /* or copied to the request's pool, when small */
    size_t copied;         /* bytes copied to the pool so far, up to COPY_MAX */
    bool in_flight, body_done, failed, paused, over;
} exchange;

static void conn_on_read(h2o_socket_t *sock, const char *err);
static void exchange_send(exchange *ex);
static void exchange_connect(exchange *ex);
static void exchange_fail(exchange *ex, int status, const char *why);

proxy_upstreams *proxy_upstreams_new(h2o_loop_t *loop, unsigned conns_max)
{
    proxy_upstreams *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->loop = loop;
    u->conns_max = conns_max ? conns_max : UINT_MAX;
    h2o_linklist_init_anchor(&u->budget_waiting);
    h2o_linklist_init_anchor(&u->idle_all);
    h2o_timeout_init(loop, &u->idle_timeout, PROXY_UPSTREAM_IDLE_MS);
    u->exchanges = (httpd_recycler){.kept = {.max = PROXY_RECYCLED_MAX}, .size = sizeof(exchange)};
    return u;
}

static origin_pool *pool_of(proxy_upstreams *u, const proxy_origin *o)
{
    origin_pool *p = &u->pools[o->index];
    if (!p->idle.next) {
        h2o_linklist_init_anchor(&p->idle);
        h2o_linklist_init_anchor(&p->waiting);
    }
    return p;
}

/* The request first in line for a connection of POOL, taken out of the
 * line (its wait timer stopped), or NULL. */
static exchange *pool_next_waiter(origin_pool *pool)
{
    if (h2o_linklist_is_empty(&pool->waiting))
        return NULL;
    exchange *next = H2O_STRUCT_FROM_MEMBER(exchange, wait_link, pool->waiting.next);
    h2o_linklist_unlink(&next->wait_link);
    h2o_timeout_unlink(&next->timer);
    return next;
}

/* Closes CONN and frees it; the socket too unless it was taken. When WAKE,
 * the request first in line for its origin gets the freed place; else (or
 * when none waits there) the first one waiting for the thread's budget. */
static void conn_close(upstream_conn *conn, bool wake)
{
    origin_pool *pool = conn->pool;
    proxy_upstreams *u = conn->u;
    if (h2o_linklist_is_linked(&conn->idle_link)) {
        h2o_linklist_unlink(&conn->idle_link);
        h2o_linklist_unlink(&conn->idle_all_link);
        pool->n_idle--;
    }
    if (h2o_timeout_is_linked(&conn->idle_timer))
        h2o_timeout_unlink(&conn->idle_timer);
    if (conn->sock)
        h2o_socket_close(conn->sock);
    pool->conns--;
    u->conns--;
    free(conn);
    exchange *next = wake ? pool_next_waiter(pool) : NULL;
    if (!next && !h2o_linklist_is_empty(&u->budget_waiting)) {
        next = H2O_STRUCT_FROM_MEMBER(exchange, wait_link, u->budget_waiting.next);
        h2o_linklist_unlink(&next->wait_link);
        if (next->pool->conns >= next->origin->conns_max) { /* its origin filled up meanwhile: its own line */
            h2o_linklist_insert(&next->pool->waiting, &next->wait_link);
            next = NULL;
        } else
            h2o_timeout_unlink(&next->timer);
    }
    if (next)
        exchange_connect(next);
}

static void conn_on_idle_timeout(h2o_timeout_entry_t *entry)
{
    conn_close(H2O_STRUCT_FROM_MEMBER(upstream_conn, idle_timer, entry), true);
}

void proxy_upstreams_free(proxy_upstreams *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < PROXY_ORIGINS_MAX; i++) {
        origin_pool *p = &u->pools[i];
        while (p->idle.next && !h2o_linklist_is_empty(&p->idle))
            conn_close(H2O_STRUCT_FROM_MEMBER(upstream_conn, idle_link, p->idle.next), false);
    }
    h2o_timeout_dispose(u->loop, &u->idle_timeout);
    httpd_recycler_clear(&u->exchanges);
    free(u);
}

/* ---- the exchange ---- */

/* Takes CONN from EX, keeping it for the next request when the exchange
 * ended cleanly and the caps allow, or handing it to the request first in
 * line for its origin; else closes it (its place going to a request
 * waiting for the thread's budget, if any). */
static void exchange_release(exchange *ex, bool reusable)
{
    upstream_conn *conn = ex->conn;
    if (!conn)
        return;
    ex->conn = NULL;
    conn->ex = NULL;
    if (h2o_timeout_is_linked(&ex->timer))
        h2o_timeout_unlink(&ex->timer);
    origin_pool *pool = conn->pool;
    if (!reusable || !ex->keepalive || ex->writing || !conn->sock || conn->sock->input->size) {
        conn_close(conn, true);
        return;
    }
    conn->used = true;
    exchange *next = pool_next_waiter(pool);
    if (next) {
        next->conn = conn;
        conn->ex = next;
        exchange_send(next);
        return;
    }
    /* not kept idle over the cap, nor while a request waits for the thread's
     * budget (closing gives it the place) */
    if (pool->n_idle >= ex->origin->idle_max || !h2o_linklist_is_empty(&conn->u->budget_waiting)) {
        conn_close(conn, false);
        return;
    }
    h2o_linklist_insert(&pool->idle, &conn->idle_link);
    h2o_linklist_insert(&conn->u->idle_all, &conn->idle_all_link);
    pool->n_idle++;
    h2o_timeout_link(conn->u->loop, &conn->u->idle_timeout, &conn->idle_timer);
}

/* The request pool's destructor: whatever EX still holds is let go. */
static void exchange_dispose(void *p)
{
    exchange *ex = p;
    ex->over = true;
    if (ex->conn)
        exchange_release(ex, false);
    if (ex->getaddr)
        h2o_hostinfo_getaddr_cancel(ex->getaddr);
    if (h2o_linklist_is_linked(&ex->wait_link))
        h2o_linklist_unlink(&ex->wait_link);
    if (h2o_timeout_is_linked(&ex->timer))
        h2o_timeout_unlink(&ex->timer);
    if (ex->sending)
        h2o_buffer_dispose(&ex->sending);
    if (ex->rest)
        h2o_buffer_dispose(&ex->rest);
}

/* (Re)arms EX's I/O timeout. */
static void exchange_touch(exchange *ex)
{
    if (h2o_timeout_is_linked(&ex->timer))
        h2o_timeout_unlink(&ex->timer);
    h2o_timeout_link(ex->u->loop, &ex->pr->t->io_timeout, &ex->timer);
}

/* The LEN bytes at the start of IN, copied to EX's request pool and
 * consumed from IN, when the request's share of copies allows; else a
 * NULL base. A small answer goes out without a buffer of its own. */
static h2o_iovec_t copy_to_pool(exchange *ex, h2o_buffer_t **in)
{
    size_t len = (*in)->size;
    if (ex->copied + len > COPY_MAX)
        return h2o_iovec_init(NULL, 0);
    char *p = h2o_mem_alloc_pool(&ex->req->pool, len);
    memcpy(p, (*in)->bytes, len);
    h2o_buffer_consume(in, len);
    ex->copied += len;
    return h2o_iovec_init(p, len);
}

/* Hands the body bytes gathered so far to h2o unless some are in flight:
 * the connection's input (copied to the pool when small, else swapped with
 * the sent buffer), or once the body is complete what was taken with the
 * connection. */
static void exchange_push(exchange *ex)
{
    if (ex->in_flight || !ex->started)
        return;
    if (ex->failed) {
        ex->in_flight = true;
        h2o_send(ex->req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (ex->body_done) {
        if (ex->rest) {
            h2o_buffer_dispose(&ex->sending);
            ex->sending = ex->rest;
            ex->rest = NULL;
        }
        h2o_iovec_t buf = ex->tail.base ? ex->tail : h2o_iovec_init(ex->sending->bytes, ex->sending->size);
        ex->in_flight = true;
        ex->over = true;
        h2o_send(ex->req, &buf, buf.len ? 1 : 0, H2O_SEND_STATE_FINAL);
        return;
    }
    upstream_conn *conn = ex->conn;
    if (!conn || !conn->sock->input->size)
        return;
    ex->decoded = 0;
    h2o_iovec_t buf = copy_to_pool(ex, &conn->sock->input);
    if (!buf.base) {
        h2o_buffer_t *full = conn->sock->input;
        conn->sock->input = ex->sending;
        ex->sending = full;
        buf = h2o_iovec_init(full->bytes, full->size);
    }
    ex->in_flight = true;
    h2o_send(ex->req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

/* The body is read to its end: the rest of it leaves with the connection's
 * input and the connection goes back (KEEP: it may be reused). */
static void exchange_body_done(exchange *ex, bool keep)
{
    ex->body_done = true;
    upstream_conn *conn = ex->conn;
    if (conn && conn->sock->input->size && !(ex->tail = copy_to_pool(ex, &conn->sock->input)).base) {
        ex->rest = conn->sock->input;
        h2o_buffer_init(&conn->sock->input, &h2o_socket_buffer_prototype);
    }
    exchange_release(ex, keep);
    exchange_push(ex);
}

/* The body broke off after the response started: the client's response
 * ends in error. */
static void exchange_body_error(exchange *ex, const char *why)
{
    log_fields(LOG_LEVEL_WARN, "an upstream's response broke off", "service", ex->pr->svc->name, "error", why, NULL);
    exchange_release(ex, false);
    ex->failed = true;
    exchange_push(ex);
}

/* h2o sent what it was given: the next bytes go, reading resumes. */
static void on_proceed(h2o_generator_t *self, h2o_req_t *req)
{
    (void)req;
    exchange *ex = (exchange *)self;
    ex->in_flight = false;
    if (ex->over)
        return;
    h2o_buffer_consume(&ex->sending, ex->sending->size);
    exchange_push(ex);
    if (ex->paused && ex->conn) {
        ex->paused = false;
        h2o_socket_read_start(ex->conn->sock, conn_on_read);
    }
}

/* The client went away mid-answer: the connection is closed, not reused. */
static void on_stop(h2o_generator_t *self, h2o_req_t *req)
{
    (void)req;
    exchange *ex = (exchange *)self;
    ex->over = true;
    exchange_release(ex, false);
}

/* Decodes the body bytes that arrived on EX's connection and passes them on. */
static void exchange_on_body(exchange *ex)
{
    h2o_buffer_t *in = ex->conn->sock->input;
    size_t fresh = in->size - ex->decoded;
    switch (ex->framing) {
    case FRAMING_LENGTH:
        if (fresh >= ex->left) {
            if (fresh > ex->left) { /* bytes past the body: the connection is not reused */
                in->size -= fresh - ex->left;
                ex->keepalive = false;
            }
            ex->left = 0;
            exchange_body_done(ex, true);
            return;
        }
        ex->left -= fresh;
        break;
    case FRAMING_CHUNKED: {
        ssize_t r = phr_decode_chunked(&ex->chunked, in->bytes + ex->decoded, &fresh);
        in->size = ex->decoded + fresh;
        if (r == -1) {
            exchange_body_error(ex, "the chunked body cannot be parsed");
            return;
        }
        if (r >= 0) {
            if (r > 0)
                ex->keepalive = false;
            exchange_body_done(ex, true);
            return;
        }
        break;
    }
    case FRAMING_CLOSE:
    case FRAMING_NONE:
        break;
    }
    ex->decoded = in->size;
    exchange_touch(ex);
    exchange_push(ex);
    if (ex->in_flight && in == ex->conn->sock->input && in->size > BACKLOG_MAX && !ex->paused) {
        ex->paused = true;
        h2o_socket_read_stop(ex->conn->sock);
    }
}

static bool name_is(const h2o_iovec_t *name, const char *s, size_t len)
{
    return name->len == len && strncasecmp(name->base, s, len) == 0;
}

/* A Location at the upstream (its scheme, authority and path prefix) as
 * the client's address for the same path; anything else as is. */
static h2o_iovec_t rewrite_location(h2o_req_t *req, const h2o_url_t *upstream, h2o_iovec_t loc)
{
    h2o_url_t u;
    if (h2o_url_parse(loc.base, loc.len, &u) != 0 || u.scheme != upstream->scheme ||
        !h2o_lcstris(u.authority.base, u.authority.len, upstream->authority.base, upstream->authority.len) ||
        u.path.len < upstream->path.len || memcmp(u.path.base, upstream->path.base, upstream->path.len) != 0)
        return loc;
    return h2o_concat(&req->pool, req->scheme->name, h2o_iovec_init(H2O_STRLIT("://")), req->authority,
                      h2o_iovec_init(H2O_STRLIT("/")),
                      h2o_iovec_init(u.path.base + upstream->path.len, u.path.len - upstream->path.len));
}

typedef struct upgrade_info {
    h2o_context_t *ctx;
    h2o_socket_t *upstream;
    h2o_timeout_t *timeout;
} upgrade_info;

/* The client has its 101 (SOCK: its connection, or NULL when it failed):
 * the two sockets become a tunnel. */
static void on_upgrade_complete(void *data, h2o_socket_t *sock, size_t reqsize)
{
    upgrade_info *info = data;
    if (sock) {
        h2o_buffer_consume(&sock->input, reqsize);
        h2o_tunnel_establish(info->ctx, sock, info->upstream, info->timeout);
    } else {
        h2o_socket_close(info->upstream);
    }
    free(info);
}

/* The upstream switched to WebSocket: its connection leaves the pool and
 * becomes one side of a tunnel once the client has its 101. */
static void exchange_upgrade(exchange *ex)
{
    upgrade_info *info = malloc(sizeof(*info));
    if (!info) {
        exchange_fail(ex, 502, "out of memory");
        return;
    }
    upstream_conn *conn = ex->conn;
    h2o_socket_t *sock = conn->sock;
    conn->sock = NULL;
    ex->conn = NULL;
    conn->ex = NULL;
    h2o_timeout_unlink(&ex->timer);
    conn_close(conn, true);
    h2o_socket_read_stop(sock);
    sock->data = NULL;
    *info = (upgrade_info){.ctx = ex->req->conn->ctx, .upstream = sock, .timeout = &ex->pr->t->websocket_timeout};
    ex->over = true;
    h2o_http1_upgrade(ex->req, NULL, 0, on_upgrade_complete, info);
}

/* Parses the response head on EX's connection; when whole, starts the
 * client's response with it. */
static void exchange_on_head(exchange *ex)
{
    h2o_socket_t *sock = ex->conn->sock;
    h2o_req_t *req = ex->req;
    struct phr_header src[HEADERS_MAX];
    size_t n;
    int minor, status, rlen;
    const char *msg;
    size_t msg_len;
    for (;;) {
        n = HEADERS_MAX;
        rlen = phr_parse_response(sock->input->bytes, sock->input->size, &minor, &status, &msg, &msg_len, src, &n, 0);
        if (rlen == -2) {
            if (sock->input->size > HEAD_MAX)
                exchange_fail(ex, 502, "its response head is too large");
            return;
        }
        if (rlen < 0) {
            exchange_fail(ex, 502, "its response cannot be parsed");
            return;
        }
        if (status >= 200 || status == 101)
            break;
        h2o_buffer_consume(&sock->input, (size_t)rlen); /* 1xx: the final answer follows */
        if (!sock->input->size)
            return;
    }
    static const char *const ours[] = {PROXY_SESSION_COOKIE, PROXY_LOGIN_COOKIE, NULL};
    const proxy_service *svc = ex->pr->svc;
    bool close = minor == 0, chunked = false, has_length = false;
    size_t length = 0;
    req->res.status = status;
    req->res.reason = h2o_strdup(&req->pool, msg, msg_len).base;
    for (size_t i = 0; i < n; i++) {
        if (!src[i].name_len) {
            exchange_fail(ex, 502, "its response folds a header line");
            return;
        }
        h2o_iovec_t name = h2o_iovec_init(src[i].name, src[i].name_len);
        h2o_iovec_t value = h2o_iovec_init(src[i].value, src[i].value_len);
        h2o_strtolower((char *)name.base, name.len);
        const h2o_token_t *token = h2o_lookup_token(name.base, name.len);
        if (token == H2O_TOKEN_CONNECTION) {
            if (h2o_contains_token(value.base, value.len, H2O_STRLIT("close"), ','))
                close = true;
            else if (h2o_contains_token(value.base, value.len, H2O_STRLIT("keep-alive"), ','))
                close = false;
            continue;
        }
        if (token == H2O_TOKEN_TRANSFER_ENCODING) {
            if (!h2o_lcstris(value.base, value.len, H2O_STRLIT("chunked"))) {
                exchange_fail(ex, 502, "its response has a transfer coding other than chunked");
                return;
            }
            chunked = true;
            continue;
        }
        if (token == H2O_TOKEN_CONTENT_LENGTH) {
            size_t v = h2o_strtosize(value.base, value.len);
            if (v == SIZE_MAX || (has_length && v != length)) {
                exchange_fail(ex, 502, "its response has an invalid Content-Length");
                return;
            }
            has_length = true;
            length = v;
            continue;
        }
        if (token && token->proxy_should_drop_for_res)
            continue;
        if (token == H2O_TOKEN_SERVER && !req->conn->ctx->globalconf->proxy.preserve_server_header)
            continue;
        if (token == H2O_TOKEN_SET_COOKIE && proxy_set_cookie_is_ours(value.base, value.len, ours)) {
            log_fields(LOG_LEVEL_WARN, "dropped an upstream's Set-Cookie of the proxy's own cookie", "service",
                       svc->name, NULL);
            continue;
        }
        value = h2o_strdup(&req->pool, value.base, value.len);
        if (token == H2O_TOKEN_LOCATION)
            value = rewrite_location(req, &svc->upstream, value);
        if (token)
            h2o_add_header(&req->pool, &req->res.headers, token, NULL, value.base, value.len);
        else
            h2o_add_header_by_str(&req->pool, &req->res.headers, h2o_strdup(&req->pool, name.base, name.len).base,
                                  name.len, 0, NULL, value.base, value.len);
    }
    if (chunked && has_length) {
        exchange_fail(ex, 502, "its response has both Content-Length and Transfer-Encoding");
        return;
    }
    ex->answering = true;
    h2o_buffer_consume(&sock->input, (size_t)rlen);
    proxy_trace_upstream_answered(ex->pr, status);
    if (status == 101) {
        if (!ex->websocket) {
            exchange_fail(ex, 502, "it switched protocols unasked");
            return;
        }
        exchange_upgrade(ex);
        return;
    }
    ex->keepalive = !close && !ex->websocket;
    if (ex->method_head || status == 204 || status == 304) {
        ex->framing = FRAMING_NONE;
        if (has_length && !chunked)
            req->res.content_length = length;
    } else if (chunked) {
        ex->framing = FRAMING_CHUNKED;
        ex->chunked.consume_trailer = 1;
    } else if (has_length) {
        ex->framing = FRAMING_LENGTH;
        ex->left = length;
        req->res.content_length = length;
    } else {
        ex->framing = FRAMING_CLOSE;
        ex->keepalive = false;
    }
    ex->started = true;
    ex->super = (h2o_generator_t){.proceed = on_proceed, .stop = on_stop};
    h2o_start_response(req, &ex->super);
    ex->decoded = 0;
    if (ex->framing == FRAMING_NONE) {
        exchange_body_done(ex, true);
        return;
    }
    exchange_on_body(ex);
}

/* Whether EX may go again on a fresh connection: its reused connection
 * broke before any byte of an answer, and it is idempotent. */
static bool exchange_retry(exchange *ex)
{
    upstream_conn *conn = ex->conn;
    if (!conn || !conn->used || ex->answering || ex->retried || !ex->idempotent)
        return false;
    ex->retried = true;
    ex->conn = NULL;
    conn->ex = NULL;
    conn_close(conn, false);
    exchange_connect(ex);
    return true;
}

/* Every read event of a connection, for its whole life: on an idle one it
 * closes it; else the answer's head or body, or the upstream breaking off
 * (a reused connection closed before any answer: retried or 502). */
static void conn_on_read(h2o_socket_t *sock, const char *err)
{
    upstream_conn *conn = sock->data;
    exchange *ex = conn->ex;
    if (!ex) { /* idle: bytes, or the upstream closing it */
        conn_close(conn, true);
        return;
    }
    if (err) {
        if (!ex->answering && sock->input->size == 0) {
            if (!exchange_retry(ex))
                exchange_fail(ex, 502, "the connection was closed before an answer");
        } else if (!ex->started) {
            exchange_fail(ex, 502, "the connection broke off in the response head");
        } else if (ex->framing == FRAMING_CLOSE) {
            exchange_body_done(ex, false);
        } else if (ex->framing == FRAMING_CHUNKED && !phr_decode_chunked_is_in_data(&ex->chunked)) {
            exchange_body_done(ex, false); /* closed after a whole chunk: taken as the end */
        } else {
            exchange_body_error(ex, "the connection broke off in the body");
        }
        return;
    }
    if (!ex->started) {
        exchange_on_head(ex);
        return;
    }
    exchange_on_body(ex);
}

/* The request is written (or could not be: retried or 502 as above). */
static void on_written(h2o_socket_t *sock, const char *err)
{
    upstream_conn *conn = sock->data;
    exchange *ex = conn->ex;
    if (!ex)
        return;
    ex->writing = false;
    if (err && !ex->started && !exchange_retry(ex))
        exchange_fail(ex, 502, "the request could not be written");
}

/* Writes EX's request on its connection; the answer comes to
 * conn_on_read(), whose reads stay armed. */
static void exchange_send(exchange *ex)
{
    upstream_conn *conn = ex->conn;
    exchange_touch(ex);
    ex->writing = true;
    if (conn->sock->ssl && ex->nbufs > 1) /* head and a small body in one record */
        ex->nbufs = httpd_coalesce_for_tls(&ex->req->pool, ex->bufs, ex->nbufs);
    h2o_socket_write(conn->sock, ex->bufs, ex->nbufs, on_written);
}

/* An https upstream's handshake is done (h2o checked the certificate and
 * that it names the host): the request goes out. */
static void on_handshake(h2o_socket_t *sock, const char *err)
{
    upstream_conn *conn = sock->data;
    exchange *ex = conn->ex;
    if (err) {
        exchange_fail(ex, 502, err == h2o_socket_error_ssl_cert_name_mismatch
                                   ? "its certificate does not name its host"
                                   : "the TLS handshake with it failed");
        return;
    }
    h2o_socket_read_start(sock, conn_on_read);
    exchange_send(ex);
}

/* A fresh connection is open: TLS first for https, then the request. */
static void on_connect(h2o_socket_t *sock, const char *err)
{
    upstream_conn *conn = sock->data;
    exchange *ex = conn->ex;
    if (err) {
        exchange_fail(ex, 502, "no connection could be made");
        return;
    }
    if (ex->origin->tls) {
        h2o_socket_ssl_handshake(sock, ex->pr->t->settings->upstream_tls, ex->origin->host, on_handshake);
        return;
    }
    h2o_socket_read_start(sock, conn_on_read);
    exchange_send(ex);
}

/* Opens a connection of EX's to ADDR. */
static void conn_dial(exchange *ex, const struct sockaddr *addr, socklen_t len)
{
    upstream_conn *conn = ex->conn;
    if (!(conn->sock = h2o_socket_connect(ex->u->loop, (struct sockaddr *)addr, len, on_connect))) {
        exchange_fail(ex, 502, "no connection could be made");
        return;
    }
    conn->sock->data = conn;
}

/* The upstream's host name resolved (h2o's resolver threads): connect. */
static void on_getaddr(h2o_hostinfo_getaddr_req_t *getaddr, const char *errstr, struct addrinfo *res, void *data)
{
    (void)getaddr;
    exchange *ex = data;
    ex->getaddr = NULL;
    if (errstr) {
        exchange_fail(ex, 502, "its host name cannot be resolved");
        return;
    }
    struct addrinfo *a = h2o_hostinfo_select_one(res);
    conn_dial(ex, a->ai_addr, a->ai_addrlen);
}

/* Opens a fresh connection for EX (counted in its origin's pool). */
static void exchange_connect(exchange *ex)
{
    upstream_conn *conn = calloc(1, sizeof(*conn));
    if (!conn) {
        exchange_fail(ex, 502, "out of memory");
        return;
    }
    conn->u = ex->u;
    conn->pool = ex->pool;
    conn->idle_timer.cb = conn_on_idle_timeout;
    conn->ex = ex;
    ex->conn = conn;
    ex->pool->conns++;
    ex->u->conns++;
    exchange_touch(ex);
    if (ex->origin->addrlen) {
        conn_dial(ex, (struct sockaddr *)&ex->origin->addr, ex->origin->addrlen);
        return;
    }
    ex->getaddr = h2o_hostinfo_getaddr(&ex->req->conn->ctx->receivers.hostinfo_getaddr,
                                       h2o_iovec_init(ex->origin->host, strlen(ex->origin->host)),
                                       h2o_iovec_init(ex->origin->port, strlen(ex->origin->port)), AF_UNSPEC,
                                       SOCK_STREAM, IPPROTO_TCP, AI_ADDRCONFIG | AI_NUMERICSERV, on_getaddr, ex);
}

/* Answers EX's request STATUS (502, 504) naming WHY its upstream failed. */
static void exchange_fail(exchange *ex, int status, const char *why)
{
    if (ex->started) {
        exchange_body_error(ex, why);
        return;
    }
    exchange_release(ex, false);
    if (ex->getaddr) {
        h2o_hostinfo_getaddr_cancel(ex->getaddr);
        ex->getaddr = NULL;
    }
    if (h2o_timeout_is_linked(&ex->timer))
        h2o_timeout_unlink(&ex->timer);
    ex->over = true;
    proxy_request *pr = ex->pr;
    proxy_trace_upstream_answered(pr, status);
    pr->page = (proxy_page_texts){.message = "The service behind this address could not be reached. Try again "
                                             "in a moment; if it keeps failing, tell its administrator."};
    h2o_req_log_error(ex->req, "proxy", "upstream of %s: %s", pr->svc->name, why);
    proxy_fail(pr, status, status == 504 ? "gateway_timeout" : "bad_gateway",
               "service %s could not be reached: the exchange with its upstream failed (%s)", pr->svc->name, why);
}

/* No answer (or no free connection) within the upstream timeout: 504. */
static void exchange_on_timeout(h2o_timeout_entry_t *entry)
{
    exchange *ex = H2O_STRUCT_FROM_MEMBER(exchange, timer, entry);
    if (h2o_linklist_is_linked(&ex->wait_link)) {
        h2o_linklist_unlink(&ex->wait_link);
        exchange_fail(ex, 504, "no connection to it came free in time");
        return;
    }
    exchange_fail(ex, 504, "it did not answer in time");
}

/* Appends the header NAME: VALUE to the request head at *P. */
static char *put_header(char *p, h2o_iovec_t name, h2o_iovec_t value)
{
    memcpy(p, name.base, name.len);
    p += name.len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, value.base, value.len);
    p += value.len;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* The request head for EX, from the request's pool: the request line, Host,
 * the rewritten headers without hop-by-hop ones, the connection's intent,
 * the body's length and the forwarding headers. */
static h2o_iovec_t build_head(exchange *ex, h2o_iovec_t host, h2o_iovec_t path)
{
    h2o_req_t *req = ex->req;
    h2o_iovec_t xff = h2o_iovec_init(ex->pr->rec.ip, strlen(ex->pr->rec.ip));
    h2o_iovec_t proto = req->scheme->name;
    char length[24];
    int length_len = req->entity.base ? snprintf(length, sizeof(length), "%zu", req->entity.len) : 0;
    size_t size = req->method.len + path.len + 64 + host.len + xff.len + proto.len + (size_t)length_len + 64;
    for (size_t i = 0; i < req->headers.size; i++)
        size += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
    char *head = h2o_mem_alloc_pool(&req->pool, size), *p = head;
    /* the request line without printf: this is every request's head */
    memcpy(p, req->method.base, req->method.len);
    p += req->method.len;
    *p++ = ' ';
    memcpy(p, path.base, path.len);
    p += path.len;
    memcpy(p, " HTTP/1.1\r\n", sizeof(" HTTP/1.1\r\n") - 1);
    p += sizeof(" HTTP/1.1\r\n") - 1;
    p = put_header(p, h2o_iovec_init(H2O_STRLIT("host")), host);
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *h = &req->headers.entries[i];
        if (h2o_iovec_is_token(h->name)) {
            const h2o_token_t *token = (const h2o_token_t *)h->name;
            if (token->proxy_should_drop_for_req || token == H2O_TOKEN_HOST || token == H2O_TOKEN_CONTENT_LENGTH ||
                token == H2O_TOKEN_TRANSFER_ENCODING || token == H2O_TOKEN_CONNECTION || token == H2O_TOKEN_UPGRADE)
                continue;
        } else if (name_is(h->name, H2O_STRLIT("keep-alive")) || name_is(h->name, H2O_STRLIT("proxy-connection"))) {
            continue;
        }
        p = put_header(p, *h->name, h->value);
    }
    if (ex->websocket)
        p = put_header(p, h2o_iovec_init(H2O_STRLIT("connection")), h2o_iovec_init(H2O_STRLIT("upgrade"))),
        p = put_header(p, h2o_iovec_init(H2O_STRLIT("upgrade")), req->upgrade);
    if (length_len)
        p = put_header(p, h2o_iovec_init(H2O_STRLIT("content-length")), h2o_iovec_init(length, (size_t)length_len));
    p = put_header(p, h2o_iovec_init(H2O_STRLIT("x-forwarded-for")), xff);
    p = put_header(p, h2o_iovec_init(H2O_STRLIT("x-forwarded-proto")), proto);
    *p++ = '\r';
    *p++ = '\n';
    return h2o_iovec_init(head, (size_t)(p - head));
}

void proxy_upstream_forward(proxy_request *pr, proxy_origin *origin, h2o_iovec_t host, h2o_iovec_t path)
{
    h2o_req_t *req = pr->req;
    proxy_upstreams *u = pr->t->upstreams;
    exchange *ex = httpd_recycled_alloc(&u->exchanges, &req->pool, exchange_dispose);
    *ex = (exchange){.pr = pr, .req = req, .u = u, .origin = origin, .pool = pool_of(u, origin)};
    ex->timer.cb = exchange_on_timeout;
    h2o_buffer_init(&ex->sending, &h2o_socket_buffer_prototype);
    h2o_iovec_t m = req->method;
    ex->method_head = h2o_memis(m.base, m.len, H2O_STRLIT("HEAD"));
    ex->idempotent = ex->method_head || h2o_memis(m.base, m.len, H2O_STRLIT("GET")) ||
                     h2o_memis(m.base, m.len, H2O_STRLIT("OPTIONS")) || h2o_memis(m.base, m.len, H2O_STRLIT("PUT")) ||
                     h2o_memis(m.base, m.len, H2O_STRLIT("DELETE"));
    ex->websocket = req->upgrade.base && h2o_lcstris(req->upgrade.base, req->upgrade.len, H2O_STRLIT("websocket"));
    ex->bufs[ex->nbufs++] = build_head(ex, host, path);
    if (req->entity.len)
        ex->bufs[ex->nbufs++] = req->entity;
    origin_pool *pool = ex->pool;
    if (!h2o_linklist_is_empty(&pool->idle)) { /* the most recently used: the likeliest alive */
        upstream_conn *conn = H2O_STRUCT_FROM_MEMBER(upstream_conn, idle_link, pool->idle.prev);
        h2o_linklist_unlink(&conn->idle_link);
        h2o_linklist_unlink(&conn->idle_all_link);
        pool->n_idle--;
        h2o_timeout_unlink(&conn->idle_timer);
        conn->ex = ex;
        ex->conn = conn;
        exchange_send(ex);
        return;
    }
    if (pool->conns < origin->conns_max && u->conns < u->conns_max) {
        exchange_connect(ex);
        return;
    }
    /* over the origin's cap: the origin's next free connection; else over
     * the thread's budget (descriptors): the next one closed anywhere, the
     * least recently used idle one (of another origin) at once if any */
    bool over_budget = pool->conns < origin->conns_max;
    h2o_linklist_insert(over_budget ? &u->budget_waiting : &pool->waiting, &ex->wait_link);
    exchange_touch(ex);
    if (over_budget && !h2o_linklist_is_empty(&u->idle_all))
        conn_close(H2O_STRUCT_FROM_MEMBER(upstream_conn, idle_all_link, u->idle_all.next), false);
}
