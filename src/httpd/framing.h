/* Unambiguous HTTP framing (RFC 9112 §6, RFC 9113 §8.2). One checker the
 * proxy and the API call first on every request: a request whose body
 * length or authority two parsers could read differently is refused, never
 * repaired. h2o 2.2.5 hides most of it from a handler (its HTTP/1 parser
 * keeps one Content-Length, lets Transfer-Encoding win over it and keeps the
 * last Host, none of them in req->headers), so for HTTP/1 the checker reads
 * the request head again from the connection's input buffer, where h2o keeps
 * it until the response is sent. */
#pragma once

#include <h2o.h>
#include <stdbool.h>
#include <stddef.h>

/* One header field as the client sent it. TRAILING: bytes followed the value
 * on its line before the line end (HTTP/1 only: "chunked " or "chunked\t"). */
typedef struct framing_field {
    const char *name;
    size_t name_len; /* 0: an obsolete folded continuation line */
    const char *value;
    size_t value_len;
    bool trailing;
} framing_field;

/* The fields of one request head: NULL when its framing and authority are
 * unambiguous, else a static sentence naming the problem. HTTP2 also refuses
 * any Transfer-Encoding, which HTTP/2 forbids. */
const char *framing_check_fields(const framing_field *fields, size_t n, bool http2);

/* A raw HTTP/1 request head (request line, fields, the empty line; anything
 * after it is ignored) parsed as h2o parses it: NULL when unambiguous, a
 * static sentence when not, or when HEAD is not one complete request head. */
const char *framing_check_head(const char *head, size_t len);

/* Whether the path of TARGET (before any '?') carries a path parameter, a
 * ';' raw or percent-encoded ("/;x/admin", "/a%3Bb/c"), which servers
 * behind the proxy split off differently. */
bool framing_path_has_parameters(const char *target, size_t len);

/* Checks REQ as h2o received it, over HTTP/1 or HTTP/2, before anything of it
 * is acted on. Returns 0, or -EBADMSG with *REASON set to a static sentence
 * naming the problem; an HTTP/1 connection is then closed after the answer,
 * since the bytes that follow cannot be trusted to start a request. An
 * HTTP/2 "host" field that names :authority passes and is removed from
 * REQ's headers, as h2o itself would have dropped it. */
int httpd_framing_check(h2o_req_t *req, const char **reason);

/* Configures h2o (CONF, and HOST, its one host) before any thread runs:
 * h2o's own refusals (a body over max_request_entity_size, broken chunked
 * encoding, an unknown Transfer-Encoding) are answered as JSON
 * {"error":{"code","message"}}, 400 or 413; HTTP/2 "host" and
 * "transfer-encoding" fields are handed to the handler for
 * httpd_framing_check() instead of being dropped or failing the connection
 * (process-wide: h2o's token table); plain connections stay HTTP/1. */
void framing_configure(h2o_globalconf_t *conf, h2o_hostconf_t *host);
