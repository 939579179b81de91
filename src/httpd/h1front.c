#include "httpd/h1front.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "httpd/framing.h"
#include "httpd/httpd.h"

/* ---- the request head ---- */

static bool field_is(const struct phr_header *f, const char *lower, size_t len)
{
    return f->name && f->name_len == len && h2o_lcstris(f->name, f->name_len, lower, len);
}

int h1front_parse_head(const char *buf, size_t len, size_t last_len, h1front_head *ret)
{
    const char *method, *target;
    size_t method_len, target_len;
    int minor;
    ret->n_fields = ELEMENTSOF(ret->fields);
    int r = phr_parse_request(buf, MIN(len, (size_t)H2O_MAX_REQLEN), &method, &method_len, &target, &target_len,
                              &minor, ret->fields, &ret->n_fields, last_len);
    if (r == -2)
        return -EAGAIN;
    if (r < 0)
        return -EBADMSG;
    ret->len = (size_t)r;
    ret->method = h2o_iovec_init(method, method_len);
    ret->target = h2o_iovec_init(target, target_len);
    ret->minor_version = minor;
    ret->expect = h2o_iovec_init(NULL, 0);
    ret->body = H1FRONT_BODY_NONE;
    ret->content_length = 0;
    ret->upgrade = false;
    ret->verdict = framing_check_parsed(ret->fields, ret->n_fields, buf + r);
    if (ret->verdict) { /* refused by the handler, then closed: no body is read */
        ret->keep_alive = false;
        return r;
    }
    bool close = false, keep_alive = false, upgrade_named = false, has_upgrade = false;
    for (size_t i = 0; i < ret->n_fields; i++) {
        const struct phr_header *f = &ret->fields[i];
        if (field_is(f, H2O_STRLIT("transfer-encoding")))
            ret->body = H1FRONT_BODY_CHUNKED; /* the verdict let exactly "chunked" through */
        else if (field_is(f, H2O_STRLIT("content-length"))) {
            ret->body = H1FRONT_BODY_LENGTH; /* at most 19 digits, the verdict says */
            for (size_t k = 0; k < f->value_len; k++)
                ret->content_length = ret->content_length * 10 + (uint64_t)(f->value[k] - '0');
        } else if (field_is(f, H2O_STRLIT("connection"))) {
            close = close || h2o_contains_token(f->value, f->value_len, H2O_STRLIT("close"), ',');
            keep_alive = keep_alive || h2o_contains_token(f->value, f->value_len, H2O_STRLIT("keep-alive"), ',');
            upgrade_named = upgrade_named || h2o_contains_token(f->value, f->value_len, H2O_STRLIT("upgrade"), ',');
        } else if (field_is(f, H2O_STRLIT("upgrade")))
            has_upgrade = true;
        else if (field_is(f, H2O_STRLIT("expect")))
            ret->expect = h2o_iovec_init(f->value, f->value_len);
    }
    ret->keep_alive = minor >= 1 ? !close : keep_alive && !close;
    ret->upgrade = has_upgrade && upgrade_named;
    return r;
}

/* ---- the connection ---- */

typedef enum conn_state {
    READING_HEAD, /* waiting for a request head (keep-alive idleness included) */
    READING_BODY, /* the head is in the request; its body comes */
    ANSWERING,    /* the request is the handler's, or being refused */
} conn_state;

typedef struct h1f_conn {
    h2o_conn_t super; /* first: req->conn leads here */
    h2o_socket_t *sock;
    h2o_accept_ctx_t *actx;
    h1front_handoff_cb handoff;
    /* a head and its body must be in within req_timeout of the request's
     * start (and an idle connection is closed after it) */
    h2o_timeout_entry_t read_deadline;
    h2o_timeout_entry_t deferred; /* a send with nothing to write: completed from the loop */
    conn_state state;
    size_t parsed; /* bytes of the head in progress already parsed */
    uint64_t body_length;
    bool chunked;
    size_t decoded; /* chunked: bytes at the start of the input decoded so far */
    struct phr_chunked_decoder decoder;
    const char *verdict; /* the request's framing verdict (h1front_verdict) */
    void (*after_continue)(struct h1f_conn *); /* waits for the 100 Continue to be written */
    bool continue_writing;
    bool req_live;      /* req was initialised and not disposed */
    bool head_sent;     /* the response head is written */
    bool sending_last;  /* the write in flight ends the response */
    bool reads_paused;  /* over H1FRONT_PIPELINE_MAX while answering */
    bool peer_done;     /* the client closed its side: close once what it sent is answered */
    uint64_t index;     /* requests begun on the connection */
    h2o_ostream_t final;
    h2o_req_t req; /* last: large, with its own pool */
} h1f_conn;

static void read_head(h1f_conn *c);
static void on_read(h2o_socket_t *sock, const char *err);

static const h2o_conn_callbacks_t callbacks;

bool h1front_owns(const h2o_conn_t *conn)
{
    return conn && conn->callbacks == &callbacks;
}

const char *h1front_verdict(const h2o_req_t *req)
{
    return ((const h1f_conn *)req->conn)->verdict;
}

/* Closes C's socket and frees C, with its request if one is live. */
static void close_conn(h1f_conn *c)
{
    if (h2o_timeout_is_linked(&c->read_deadline))
        h2o_timeout_unlink(&c->read_deadline);
    if (h2o_timeout_is_linked(&c->deferred))
        h2o_timeout_unlink(&c->deferred);
    if (c->req_live)
        h2o_dispose_request(&c->req);
    h2o_socket_t *sock = c->sock;
    sock->data = NULL;
    free(c);
    h2o_socket_close(sock);
}

static void on_read_deadline(h2o_timeout_entry_t *entry)
{
    h1f_conn *c = H2O_STRUCT_FROM_MEMBER(h1f_conn, read_deadline, entry);
    close_conn(c); /* a head or body too slow, or a keep-alive connection idle too long */
}

/* The last write of the response is done (or there was nothing to write):
 * the connection goes on to the next request, or closes. */
static void response_done(h1f_conn *c)
{
    c->req.timestamps.response_end_at = *h2o_get_timestamp(c->super.ctx, NULL, NULL);
    h2o_buffer_t *in = c->sock->input;
    if (!c->req.http1_is_persistent || (c->peer_done && in->size == 0)) {
        close_conn(c);
        return;
    }
    h2o_dispose_request(&c->req);
    c->req_live = false;
    c->state = READING_HEAD;
    c->parsed = 0;
    c->verdict = NULL;
    if (in->size == 0 && in->capacity) {
        /* an idle connection keeps no input buffer */
        h2o_buffer_dispose(&c->sock->input);
        h2o_buffer_init(&c->sock->input, &h2o_socket_buffer_prototype);
    }
    h2o_timeout_link(c->super.ctx->loop, &c->super.ctx->http1.req_timeout, &c->read_deadline);
    if (c->reads_paused && !c->peer_done) {
        c->reads_paused = false;
        h2o_socket_read_start(c->sock, on_read);
    }
    if (c->sock->input->size)
        read_head(c);
}

/* A write of the response is out: the next part is asked for, or the
 * response is done. A failed write closes the connection (the request and
 * its generator with it, as h2o's server does). */
static void on_written(h2o_socket_t *sock, const char *err)
{
    h1f_conn *c = sock->data;
    if (err) {
        close_conn(c);
        return;
    }
    if (c->sending_last)
        response_done(c);
    else
        h2o_proceed_response(&c->req);
}

static void on_deferred(h2o_timeout_entry_t *entry)
{
    h1f_conn *c = H2O_STRUCT_FROM_MEMBER(h1f_conn, deferred, entry);
    on_written(c->sock, NULL);
}

/* Appends S (N bytes) at *P. */
static void put(char **p, const char *s, size_t n)
{
    memcpy(*p, s, n);
    *p += n;
}

/* The response head of REQ, from its pool. */
static h2o_iovec_t response_head(h1f_conn *c, h2o_req_t *req)
{
    h2o_context_t *ctx = c->super.ctx;
    h2o_timestamp_t ts;
    h2o_get_timestamp(ctx, &req->pool, &ts);
    const char *reason = req->res.reason ? req->res.reason : "";
    const char *connection = req->http1_is_persistent ? "keep-alive" : "close";
    h2o_iovec_t server = ctx->globalconf->server_name;
    size_t size = sizeof("HTTP/1.1 999 \r\nDate: \r\nConnection: \r\nContent-Length: \r\nServer: \r\n\r\n") +
                  strlen(reason) + H2O_TIMESTR_RFC1123_LEN + strlen(connection) + sizeof(H2O_UINT64_LONGEST_STR) +
                  server.len;
    for (size_t i = 0; i < req->res.headers.size; i++)
        size += req->res.headers.entries[i].name->len + req->res.headers.entries[i].value.len + 4;
    char *head = h2o_mem_alloc_pool(&req->pool, size), *p = head;
    int status = req->res.status >= 100 && req->res.status <= 999 ? req->res.status : 500;
    /* without sprintf: this is every response's head */
    char code[3] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10), (char)('0' + status % 10)};
    put(&p, "HTTP/1.1 ", 9);
    put(&p, code, 3);
    put(&p, " ", 1);
    put(&p, reason, strlen(reason));
    put(&p, "\r\nDate: ", 8);
    put(&p, ts.str->rfc1123, strlen(ts.str->rfc1123));
    put(&p, "\r\nConnection: ", 14);
    put(&p, connection, strlen(connection));
    put(&p, "\r\n", 2);
    if (req->res.content_length != SIZE_MAX) {
        char digits[sizeof(H2O_UINT64_LONGEST_STR)], *d = digits + sizeof(digits);
        size_t length = req->res.content_length;
        do
            *--d = (char)('0' + length % 10);
        while (length /= 10);
        put(&p, "Content-Length: ", 16);
        put(&p, d, (size_t)(digits + sizeof(digits) - d));
        put(&p, "\r\n", 2);
    }
    if (server.len) {
        put(&p, "Server: ", 8);
        put(&p, server.base, server.len);
        put(&p, "\r\n", 2);
    }
    for (size_t i = 0; i < req->res.headers.size; i++) {
        const h2o_header_t *h = &req->res.headers.entries[i];
        put(&p, h->name->base, h->name->len);
        put(&p, ": ", 2);
        put(&p, h->value.base, h->value.len);
        put(&p, "\r\n", 2);
    }
    put(&p, "\r\n", 2);
    return h2o_iovec_init(head, (size_t)(p - head));
}

/* The last output stream of every response: the head goes out with the
 * first bytes of the body in one write. */
static void final_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt, h2o_send_state_t state)
{
    h1f_conn *c = H2O_STRUCT_FROM_MEMBER(h1f_conn, final, self);
    h2o_iovec_t *vec = alloca(sizeof(*vec) * (bufcnt + 1));
    size_t n = 0;
    if (!c->head_sent) {
        req->timestamps.response_start_at = *h2o_get_timestamp(c->super.ctx, NULL, NULL);
        vec[n++] = response_head(c, req);
        c->head_sent = true;
    }
    for (size_t i = 0; i < bufcnt; i++) {
        if (!bufs[i].len)
            continue;
        vec[n++] = bufs[i];
        if (!req->bytes_counted_by_ostream)
            req->bytes_sent += bufs[i].len;
    }
    if (state == H2O_SEND_STATE_ERROR)
        req->http1_is_persistent = 0;
    c->sending_last = !h2o_send_state_is_in_progress(state);
    if (n > 1 && c->sock->ssl)
        n = httpd_coalesce_for_tls(&req->pool, vec, n);
    if (n)
        h2o_socket_write(c->sock, vec, n, on_written);
    else
        h2o_timeout_link(c->super.ctx->loop, &c->super.ctx->zero_timeout, &c->deferred);
}

/* Runs STEP now, or once the 100 Continue being written is out (a response
 * may not be written while it is). */
static void when_writable(h1f_conn *c, void (*step)(h1f_conn *))
{
    if (c->continue_writing)
        c->after_continue = step;
    else
        step(c);
}

static void process(h1f_conn *c)
{
    h2o_process_request(&c->req);
}

static void refuse_too_large(h1f_conn *c)
{
    c->super.ctx->emitted_error_status[H2O_STATUS_ERROR_413]++;
    h2o_send_error_generic(&c->req, 413, "Request Entity Too Large", "request entity is too large",
                           H2O_SEND_ERROR_HTTP1_CLOSE_CONNECTION);
}

static void refuse_broken_chunks(h1f_conn *c)
{
    h2o_send_error_400(&c->req, "Invalid Request", "broken chunked-encoding", H2O_SEND_ERROR_HTTP1_CLOSE_CONNECTION);
}

static void refuse_expectation(h1f_conn *c)
{
    h2o_send_error_417(&c->req, "Expectation Failed", "unknown expectation", H2O_SEND_ERROR_HTTP1_CLOSE_CONNECTION);
}

/* The request is read (or refused): it is the handler's from here (STEP). */
static void answer(h1f_conn *c, void (*step)(h1f_conn *))
{
    c->state = ANSWERING;
    if (h2o_timeout_is_linked(&c->read_deadline))
        h2o_timeout_unlink(&c->read_deadline);
    when_writable(c, step);
}

/* The 100 Continue is out: what waited for it (the request's answer,
 * once its body is in) goes on. */
static void on_continue_written(h2o_socket_t *sock, const char *err)
{
    h1f_conn *c = sock->data;
    c->continue_writing = false;
    if (err) {
        close_conn(c); /* nothing of the request reached a handler yet */
        return;
    }
    void (*step)(h1f_conn *) = c->after_continue;
    c->after_continue = NULL;
    if (step)
        step(c);
}

/* The body at the start of the input, as much of it as is in. */
static void read_body(h1f_conn *c)
{
    h2o_buffer_t *in = c->sock->input;
    size_t max = c->super.ctx->globalconf->max_request_entity_size, len;
    if (!c->chunked) {
        if (in->size < c->body_length)
            return;
        len = (size_t)c->body_length;
    } else {
        size_t n = in->size - c->decoded;
        if (n == 0)
            return;
        ssize_t left = phr_decode_chunked(&c->decoder, in->bytes + c->decoded, &n);
        in->size = c->decoded + n;
        c->decoded = in->size;
        if (left != -1 && c->decoded > max) {
            answer(c, refuse_too_large);
            return;
        }
        if (left == -2)
            return;
        if (left == -1) {
            answer(c, refuse_broken_chunks);
            return;
        }
        len = c->decoded;
        in->size += (size_t)left; /* what follows the body: the next request's */
    }
    char *body = h2o_mem_alloc_pool(&c->req.pool, len ? len : 1);
    if (len) /* an empty input may have no buffer at all */
        memcpy(body, in->bytes, len);
    c->req.entity = h2o_iovec_init(body, len);
    h2o_buffer_consume(&c->sock->input, len);
    answer(c, process);
}

/* Lower-cases the N bytes at S. */
static void lower(char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s[i] = h2o_tolower(s[i]);
}

/* Starts the request whose head H was parsed at BASE: a copy of the head in
 * its pool (then the first CONSUMED bytes of the input are dropped), its
 * fields as h2o's HTTP/1 server gives them (Host as the authority;
 * Content-Length, Transfer-Encoding, Expect and Upgrade read here and not
 * passed on), then its body, or the handler. */
static void start_request(h1f_conn *c, const h1front_head *h, const char *base, size_t consumed)
{
    h2o_context_t *ctx = c->super.ctx;
    h2o_req_t *req = &c->req;
    h2o_init_request(req, &c->super, NULL);
    c->req_live = true;
    c->head_sent = false;
    c->index++;
    req->_ostr_top = &c->final;
    req->timestamps.request_begin_at = *h2o_get_timestamp(ctx, NULL, NULL);
    char *copy = h2o_mem_alloc_pool(&req->pool, h->len);
    memcpy(copy, base, h->len);
#define IN_COPY(p) (copy + ((const char *)(p) - base))
    req->input.method = h2o_iovec_init(IN_COPY(h->method.base), h->method.len);
    req->input.path = h2o_iovec_init(IN_COPY(h->target.base), h->target.len);
    req->input.scheme = c->sock->ssl ? &H2O_URL_SCHEME_HTTPS : &H2O_URL_SCHEME_HTTP;
    req->version = 0x100 | (h->minor_version != 0);
    h2o_vector_reserve(&req->pool, &req->headers, h->n_fields);
    for (size_t i = 0; i < h->n_fields; i++) {
        const struct phr_header *f = &h->fields[i];
        if (!f->name) /* a folded line: the verdict refuses the request */
            continue;
        char *name = IN_COPY(f->name), *value = IN_COPY(f->value);
        lower(name, f->name_len);
        const h2o_token_t *token = h2o_lookup_token(name, f->name_len);
        if (token == H2O_TOKEN_HOST)
            req->input.authority = h2o_iovec_init(value, f->value_len);
        else if (token == H2O_TOKEN_CONTENT_LENGTH || token == H2O_TOKEN_TRANSFER_ENCODING ||
                 token == H2O_TOKEN_EXPECT || token == H2O_TOKEN_UPGRADE)
            continue;
        else if (token)
            h2o_add_header(&req->pool, &req->headers, token, NULL, value, f->value_len);
        else
            h2o_add_header_by_str(&req->pool, &req->headers, name, f->name_len, 0, NULL, value, f->value_len);
    }
#undef IN_COPY
    h2o_buffer_consume(&c->sock->input, consumed);
    req->http1_is_persistent = h->keep_alive && !ctx->shutdown_requested;
    c->verdict = h->verdict;
    if (h->verdict || h->body == H1FRONT_BODY_NONE) {
        answer(c, process);
        return;
    }
    req->timestamps.request_body_begin_at = *h2o_get_timestamp(ctx, NULL, NULL);
    if (h->expect.base && !h2o_lcstris(h->expect.base, h->expect.len, H2O_STRLIT("100-continue"))) {
        answer(c, refuse_expectation);
        return;
    }
    if (h->body == H1FRONT_BODY_LENGTH && h->content_length > ctx->globalconf->max_request_entity_size) {
        answer(c, refuse_too_large);
        return;
    }
    c->state = READING_BODY;
    c->chunked = h->body == H1FRONT_BODY_CHUNKED;
    c->body_length = h->content_length;
    c->decoded = 0;
    memset(&c->decoder, 0, sizeof(c->decoder));
    c->decoder.consume_trailer = 1;
    if (h->expect.base) { /* sent even when the body came with the head, as h2o does */
        static const h2o_iovec_t cont = {H2O_STRLIT("HTTP/1.1 100 Continue\r\n\r\n")};
        c->continue_writing = true;
        h2o_socket_write(c->sock, (h2o_iovec_t *)&cont, 1, on_continue_written);
    }
    read_body(c);
}

/* A head picohttpparser refuses: served as a stand-in (its request line when
 * that parses, Connection: close) whose verdict says why, so that the
 * handler answers 400 in its own shape and the connection closes. */
static void serve_stand_in(h1f_conn *c)
{
    h2o_buffer_t *in = c->sock->input;
    const char *why = framing_head_unparsable(in->bytes, in->size, 0, NULL);
    char buf[FRAMING_STAND_IN_LINE_MAX + 64];
    size_t n = why ? framing_stand_in_head(in->bytes, in->size, 0, buf, sizeof(buf)) : 0;
    h1front_head h;
    if (n == 0 || h1front_parse_head(buf, n, 0, &h) <= 0) {
        close_conn(c); /* nothing a handler could answer (only line ends) */
        return;
    }
    h.verdict = why;
    h.keep_alive = false;
    h.body = H1FRONT_BODY_NONE;
    in->size = 0; /* nothing after it is read */
    start_request(c, &h, buf, 0);
}

/* A request head at the start of the input, as much of it as is in. */
static void read_head(h1f_conn *c)
{
    h2o_buffer_t *in = c->sock->input;
    if (in->size == 0)
        return;
    h1front_head h;
    int r = h1front_parse_head(in->bytes, in->size, c->parsed, &h);
    c->parsed = MIN(in->size, (size_t)H2O_MAX_REQLEN);
    if (r == -EAGAIN && in->size < H2O_MAX_REQLEN) {
        if (c->peer_done)
            close_conn(c); /* the rest of it will never come */
        return;
    }
    if (r < 0) {
        serve_stand_in(c);
        return;
    }
    if (h.upgrade && !h.verdict) {
        /* h2o's reverse proxy tunnels a protocol switch only on its own
         * HTTP/1 connection: the request goes there unread */
        h2o_socket_t *sock = c->sock;
        h2o_accept_ctx_t *actx = c->actx;
        struct timeval connected_at = c->super.connected_at;
        h1front_handoff_cb handoff = c->handoff;
        if (h2o_timeout_is_linked(&c->read_deadline))
            h2o_timeout_unlink(&c->read_deadline);
        sock->data = NULL;
        free(c);
        handoff(actx, sock, connected_at);
        return;
    }
    start_request(c, &h, in->bytes, h.len);
}

/* Bytes came in (reads stay armed): a head or a body goes on; while a
 * request is answered they wait in the input, and past
 * H1FRONT_PIPELINE_MAX reading pauses until the answer is out. The client's
 * end of input closes an idle connection at once, and one being answered
 * once its answer is out. */
static void on_read(h2o_socket_t *sock, const char *err)
{
    h1f_conn *c = sock->data;
    if (err) {
        if (c->state != ANSWERING) {
            close_conn(c);
            return;
        }
        /* the request is the handler's until it is answered */
        c->peer_done = true;
        h2o_socket_read_stop(sock);
        return;
    }
    switch (c->state) {
    case READING_HEAD:
        read_head(c);
        break;
    case READING_BODY:
        read_body(c);
        break;
    case ANSWERING:
        if (sock->input->size > H1FRONT_PIPELINE_MAX && !c->reads_paused) {
            c->reads_paused = true;
            h2o_socket_read_stop(sock);
        }
        break;
    }
}

static socklen_t get_sockname(h2o_conn_t *conn, struct sockaddr *sa)
{
    return h2o_socket_getsockname(((h1f_conn *)conn)->sock, sa);
}

static socklen_t get_peername(h2o_conn_t *conn, struct sockaddr *sa)
{
    return h2o_socket_getpeername(((h1f_conn *)conn)->sock, sa);
}

static h2o_socket_t *get_socket(h2o_conn_t *conn)
{
    return ((h1f_conn *)conn)->sock;
}

static h2o_iovec_t log_tls_version(h2o_req_t *req)
{
    return h2o_socket_log_ssl_protocol_version(((h1f_conn *)req->conn)->sock, &req->pool);
}

static h2o_iovec_t log_tls_reused(h2o_req_t *req)
{
    return h2o_socket_log_ssl_session_reused(((h1f_conn *)req->conn)->sock, &req->pool);
}

static h2o_iovec_t log_tls_cipher(h2o_req_t *req)
{
    return h2o_socket_log_ssl_cipher(((h1f_conn *)req->conn)->sock, &req->pool);
}

static h2o_iovec_t log_tls_cipher_bits(h2o_req_t *req)
{
    return h2o_socket_log_ssl_cipher_bits(((h1f_conn *)req->conn)->sock, &req->pool);
}

static h2o_iovec_t log_request_index(h2o_req_t *req)
{
    char *s = h2o_mem_alloc_pool(&req->pool, sizeof(H2O_UINT64_LONGEST_STR));
    int n = snprintf(s, sizeof(H2O_UINT64_LONGEST_STR), "%" PRIu64, ((h1f_conn *)req->conn)->index);
    return h2o_iovec_init(s, (size_t)n);
}

static const h2o_conn_callbacks_t callbacks = {
    .get_sockname = get_sockname,
    .get_peername = get_peername,
    .get_socket = get_socket,
    .log_ = {{.ssl = {.protocol_version = log_tls_version, .session_reused = log_tls_reused,
                      .cipher = log_tls_cipher, .cipher_bits = log_tls_cipher_bits},
              .http1 = {.request_index = log_request_index}}},
};

void h1front_accept(h2o_accept_ctx_t *actx, h2o_socket_t *sock, struct timeval connected_at, h1front_handoff_cb handoff)
{
    h1f_conn *c = (h1f_conn *)h2o_create_connection(sizeof(*c), actx->ctx, actx->hosts, connected_at, &callbacks);
    /* everything after the h2o_conn_t starts zeroed */
    memset((char *)c + sizeof(c->super), 0, sizeof(*c) - sizeof(c->super));
    c->sock = sock;
    c->actx = actx;
    c->handoff = handoff;
    c->read_deadline.cb = on_read_deadline;
    c->deferred.cb = on_deferred;
    c->final.do_send = final_send;
    c->state = READING_HEAD;
    sock->data = c;
    h2o_timeout_link(actx->ctx->loop, &actx->ctx->http1.req_timeout, &c->read_deadline);
    h2o_socket_read_start(sock, on_read);
    if (sock->input->size)
        read_head(c);
}
