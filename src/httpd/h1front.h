/* Cloister's own HTTP/1.1 server side, in place of libh2o's for the
 * connections a server hands it (plain HTTP, and TLS that did not choose h2):
 * the proxy's (httpd_config.h1_front).
 *
 * Reads stay armed for the connection's life (no epoll_ctl per request):
 * bytes that arrive while a request is answered wait in the socket's input,
 * up to H1FRONT_PIPELINE_MAX, and are parsed once the response is out. Each
 * request head is parsed once with picohttpparser, copied into its request's
 * pool with its body, and served as an h2o_req_t through h2o_process_request,
 * so handlers, filters and h2o's reverse proxy see what h2o's HTTP/1 server
 * would give them. A response head and what the first send carries go out
 * in one writev.
 *
 * What the server guarantees stays: the framing verdict on the raw head
 * (httpd_framing_check asks h1front_verdict), a head picohttpparser refuses
 * served as a stand-in the handler answers 400 (framing_stand_in_head), bodies
 * over max_request_entity_size refused 413 and broken chunked bodies 400
 * through the host's fallback path (JSON there), one deadline
 * (ctx->http1.req_timeout) for a head and its body and for keep-alive
 * idleness, Expect: 100-continue, keep-alive and Connection: close, no new
 * keep-alive once the context is shutting down. A WebSocket (Upgrade)
 * request is handed, unread, to libh2o's own HTTP/1 server through the
 * caller's hand-off, which h2o's reverse proxy needs for the tunnel. */
#pragma once

#include <h2o.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "httpd/phr.h"

/* Bytes a connection buffers beyond the request being answered (pipelined
 * requests) before it stops reading until the response is out. */
#define H1FRONT_PIPELINE_MAX (64u * 1024u)

typedef enum h1front_body {
    H1FRONT_BODY_NONE,
    H1FRONT_BODY_LENGTH,
    H1FRONT_BODY_CHUNKED,
} h1front_body;

/* One parsed request head; its pointers point into the parsed bytes. */
typedef struct h1front_head {
    size_t len; /* bytes of the head, its empty line included */
    h2o_iovec_t method, target;
    int minor_version;
    struct phr_header fields[H2O_MAX_HEADERS];
    size_t n_fields;
    h2o_iovec_t expect;   /* {NULL, 0} when absent */
    h1front_body body;
    uint64_t content_length; /* H1FRONT_BODY_LENGTH */
    bool keep_alive;         /* HTTP/1.1 without "close", HTTP/1.0 with "keep-alive" */
    bool upgrade;            /* an Upgrade field named by Connection: a protocol switch */
    const char *verdict;     /* framing_check_parsed()'s, or NULL: the head may be served */
} h1front_head;

/* Parses the request head at the start of BUF (LEN bytes; LAST_LEN of them
 * parsed by an earlier call that found the head incomplete, else 0) into
 * *RET. Returns the head's length; -EAGAIN when it is incomplete (whether it
 * may still complete is the caller's: a head is never longer than
 * H2O_MAX_REQLEN); -EBADMSG when it will never parse. A head whose framing
 * is ambiguous parses, with ret->verdict naming the problem and its body
 * taken as none. */
int h1front_parse_head(const char *buf, size_t len, size_t last_len, h1front_head *ret);

/* Gives a connection whose next request h1front does not serve (a protocol
 * switch) to another HTTP/1 server, with the request unread in sock->input. */
typedef void (*h1front_handoff_cb)(h2o_accept_ctx_t *actx, h2o_socket_t *sock, struct timeval connected_at);

/* Serves SOCK (accepted for ACTX at CONNECTED_AT; bytes already in its
 * input are parsed first) until it closes, or until HANDOFF takes it. Uses
 * sock->data; leaves sock->on_close to the caller. */
void h1front_accept(h2o_accept_ctx_t *actx, h2o_socket_t *sock, struct timeval connected_at, h1front_handoff_cb handoff);

/* Whether CONN is one of h1front's connections. */
bool h1front_owns(const h2o_conn_t *conn);

/* The framing verdict on the head of REQ (a request of one of h1front's
 * connections) as its client sent it: NULL when unambiguous, else a static
 * sentence (for a stand-in, why the real head could not be parsed). */
const char *h1front_verdict(const h2o_req_t *req);
