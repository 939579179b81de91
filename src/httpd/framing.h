/* Unambiguous HTTP framing (RFC 9112 §6, RFC 9113 §8.2). One checker the
 * proxy and the API call first on every request: a request whose body
 * length or authority two parsers could read differently is refused, never
 * repaired. h2o 2.2.5 hides most of it from a handler (its HTTP/1 parser
 * keeps one Content-Length, lets Transfer-Encoding win over it and keeps the
 * last Host, none of them in req->headers), so for HTTP/1 the checker reads
 * the request head again from the connection's input buffer, where h2o keeps
 * it until the response is sent. What h2o settles before any handler runs
 * (a head it cannot parse, which it answers with a plain-text 400 of its
 * own; a second HTTP/2 content-length, which it drops) is found by httpd.c's connection guards with the
 * functions below and handed to the checker (httpd_guard_verdict). */
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

/* The N fields picohttpparser parsed out of an HTTP/1 request head that ends
 * at END (H pointing into it), checked as framing_check_fields() checks them:
 * NULL when unambiguous, else a static sentence. */
struct phr_header;
const char *framing_check_parsed(const struct phr_header *h, size_t n, const char *end);

/* A raw HTTP/1 request head (request line, fields, the empty line; anything
 * after it is ignored) parsed as h2o parses it: NULL when unambiguous, a
 * static sentence when not, or when HEAD is not one complete request head. */
const char *framing_check_head(const char *head, size_t len);

/* Why the bytes at HEAD (LEN of them: the start of an HTTP/1 connection's
 * input) will never parse as a request head, which h2o 2.2.5 answers with a
 * bare plain-text 400 of its own: NULL when they parse, or may once more arrive
 * (incomplete, under H2O_MAX_REQLEN); else a static sentence naming the
 * first problem (a space before a colon, a control character, a bare CR, an
 * invalid request line, too many fields, a head too long). SEEN is how much
 * of HEAD was parsed before (0: none), as h2o passes it to picohttpparser:
 * an incomplete head is then not parsed again, and the answer is h2o's.
 * *RET_COMPLETE (when not NULL) tells whether HEAD starts with a complete
 * head that parses. */
const char *framing_head_unparsable(const char *head, size_t len, size_t seen, bool *ret_complete);

/* The longest request line a stand-in head keeps. */
#define FRAMING_STAND_IN_LINE_MAX 2048

/* Writes into OUT (SIZE bytes; OUT may be HEAD) the request head that takes
 * the place of the unparsable one at HEAD (LEN bytes) so that h2o serves it
 * and the handler refuses it: HEAD's request line when it parses (so that
 * logs name the method and target), else "GET / HTTP/1.1", and
 * "Connection: close" padded with spaces to at least MIN_LEN bytes in all.
 * Returns its length, or 0 when OUT is too small. */
size_t framing_stand_in_head(const char *head, size_t len, size_t min_len, char *out, size_t size);

/* Where HTTP/1 request REQ ends in its connection's input (its head and the
 * body h2o read into the input), i.e. where a request pipelined behind it
 * starts; SIZE_MAX when that cannot be told. */
size_t framing_request_end(h2o_req_t *req);

/* An HTTP/2 request's header block (BLOCK, LEN bytes: HEADERS and any
 * CONTINUATION payloads) decoded with h2o's own decoder on a copy of the
 * connection's dynamic table TABLE as it stands before the block (TABLE is
 * not changed), one field at a time so that every content-length is seen,
 * which h2o 2.2.5 reduces to the last one. NULL when its fields pass
 * framing_check_fields() (or h2o itself will refuse the block), else a
 * static sentence naming the problem. */
struct st_h2o_hpack_header_table_t; /* h2o/http2_internal.h, which needs httpd's compat headers */
const char *framing_check_h2_block(const struct st_h2o_hpack_header_table_t *table, const uint8_t *block, size_t len);

/* Whether the path of TARGET (before any '?') carries a path parameter, a
 * ';' raw or percent-encoded ("/;x/admin", "/a%3Bb/c"), which servers
 * behind the proxy split off differently. */
bool framing_path_has_parameters(const char *target, size_t len);

/* What httpd.c's connection guards, which read the client's bytes before
 * h2o does, found about REQ: a static sentence when REQ stands in for an
 * HTTP/1 head h2o could not parse, or when its HTTP/2 header block carries
 * fields h2o does not show (a second content-length); else NULL. Each
 * finding is handed out once. On a connection of httpd's own HTTP/1 front
 * end (h1front.h), which is its own guard: its verdict on the raw head,
 * every time it is asked. */
const char *httpd_guard_verdict(h2o_req_t *req);

/* Checks REQ as h2o received it, over HTTP/1 or HTTP/2, before anything of it
 * is acted on, with what the connection guards found first
 * (httpd_guard_verdict). Returns 0, or -EBADMSG with *REASON set to a static sentence
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
