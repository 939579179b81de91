#include "httpd/framing.h"
#include "httpd/h1front.h"
#include "httpd/phr.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <h2o/http2.h>
#include <h2o/http2_internal.h>

#include "basic/macro.h"

#define FRAMING_MAX_FIELDS H2O_MAX_HEADERS

/* Whether NAME is TARGET (lower case) once case and every character that is
 * not a letter or digit are ignored: "Content_Length", "content.length" and
 * "CONTENT-LENGTH" are all "contentlength" to a CGI-style server. */
static bool squashes_to(const char *name, size_t len, const char *target)
{
    size_t t = 0, tlen = strlen(target);
    for (size_t i = 0; i < len; i++) {
        if (!isalnum((unsigned char)name[i]))
            continue;
        if (t == tlen || tolower((unsigned char)name[i]) != target[t])
            return false;
        t++;
    }
    return t == tlen;
}

static bool name_is(const framing_field *f, const char *lower)
{
    return f->name_len == strlen(lower) && h2o_lcstris(f->name, f->name_len, lower, f->name_len);
}

static bool all_digits(const char *s, size_t len)
{
    if (len == 0 || len > 19) /* 19 digits fit in 64 bits */
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

const char *framing_check_fields(const framing_field *fields, size_t n, bool http2)
{
    const framing_field *te = NULL, *cl = NULL;
    size_t n_te = 0, n_cl = 0, n_host = 0;
    for (size_t i = 0; i < n; i++) {
        const framing_field *f = &fields[i];
        if (f->name_len == 0)
            return "a folded header line (obsolete line folding, RFC 9112 §5.2)";
        if (name_is(f, "transfer-encoding")) {
            te = f;
            n_te++;
        } else if (name_is(f, "content-length")) {
            cl = f;
            n_cl++;
        } else if (name_is(f, "host"))
            n_host++;
        else if (squashes_to(f->name, f->name_len, "transferencoding"))
            return "a header name that aliases Transfer-Encoding (\"Transfer_Encoding\" and the like read as it "
                   "behind a CGI-style server)";
        else if (squashes_to(f->name, f->name_len, "contentlength"))
            return "a header name that aliases Content-Length (\"Content_Length\" and the like read as it behind a "
                   "CGI-style server)";
    }
    if (n_te > 1)
        return "more than one Transfer-Encoding header";
    if (n_cl > 1)
        return "more than one Content-Length header";
    if (n_host > 1)
        return "more than one Host header";
    if (te && http2)
        return "Transfer-Encoding in an HTTP/2 request (RFC 9113 §8.2.2)";
    if (te && cl)
        return "both Content-Length and Transfer-Encoding";
    if (te && (te->trailing || te->value_len != STRLEN("chunked") ||
               !h2o_lcstris(te->value, te->value_len, H2O_STRLIT("chunked"))))
        return "a Transfer-Encoding other than exactly \"chunked\"";
    if (cl && (cl->trailing || !all_digits(cl->value, cl->value_len)))
        return "a Content-Length that is not one decimal number";
    return NULL;
}

/* Converts the N fields picohttpparser parsed out of a head ending at END
 * into FIELDS, with whether bytes followed each value on its line. */
static void fields_from_phr(const struct phr_header *h, size_t n, const char *end, framing_field *fields)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = h[i].value + h[i].value_len;
        while (p < end && *p != '\r' && *p != '\n')
            p++;
        fields[i] = (framing_field){.name = h[i].name, .name_len = h[i].name ? h[i].name_len : 0,
                                    .value = h[i].value, .value_len = h[i].value_len,
                                    .trailing = p != h[i].value + h[i].value_len};
    }
}

const char *framing_check_parsed(const struct phr_header *h, size_t n, const char *end)
{
    framing_field fields[FRAMING_MAX_FIELDS];
    if (n > FRAMING_MAX_FIELDS)
        return "more header fields than the server reads";
    fields_from_phr(h, n, end, fields);
    return framing_check_fields(fields, n, false);
}

/* Parses the request head at HEAD into FIELDS (at most FRAMING_MAX_FIELDS,
 * pointing into HEAD) and *RET_N, with the request line's method and target.
 * Returns 0, or -EBADMSG when HEAD does not start with one complete head. */
static int parse_head(const char *head, size_t len, framing_field *fields, size_t *ret_n, h2o_iovec_t *ret_method,
                      h2o_iovec_t *ret_path)
{
    struct phr_header h[FRAMING_MAX_FIELDS];
    size_t n = ELEMENTSOF(h);
    const char *method, *path;
    size_t method_len, path_len;
    int minor;
    int r = phr_parse_request(head, MIN(len, (size_t)H2O_MAX_REQLEN), &method, &method_len, &path, &path_len,
                              &minor, h, &n, 0);
    if (r <= 0)
        return -EBADMSG;
    fields_from_phr(h, n, head + r, fields);
    *ret_n = n;
    *ret_method = h2o_iovec_init(method, method_len);
    *ret_path = h2o_iovec_init(path, path_len);
    return 0;
}

const char *framing_check_head(const char *head, size_t len)
{
    framing_field fields[FRAMING_MAX_FIELDS];
    size_t n;
    h2o_iovec_t method, path;
    if (parse_head(head, len, fields, &n, &method, &path) < 0)
        return "a request head that cannot be parsed";
    return framing_check_fields(fields, n, false);
}

/* picohttpparser's verdict on the request head at HEAD, read as h2o reads
 * it (at most H2O_MAX_REQLEN bytes, resuming after SEEN): its length, -1
 * when it will never parse, -2 when it is incomplete. */
static int head_length(const char *head, size_t len, size_t seen)
{
    struct phr_header h[FRAMING_MAX_FIELDS];
    size_t n = ELEMENTSOF(h), method_len, path_len;
    const char *method, *path;
    int minor;
    return phr_parse_request(head, MIN(len, (size_t)H2O_MAX_REQLEN), &method, &method_len, &path, &path_len, &minor,
                             h, &n, seen);
}

/* Whether LINE (LEN bytes, without its line end) is a request line as
 * picohttpparser reads one: it parses with an empty field section after it. */
static bool request_line_parses(const char *line, size_t len)
{
    char buf[FRAMING_STAND_IN_LINE_MAX + 4];
    if (len > FRAMING_STAND_IN_LINE_MAX)
        return false;
    memcpy(buf, line, len);
    memcpy(buf + len, "\r\n\r\n", 4);
    return head_length(buf, len + 4, 0) > 0;
}

/* The first problem in HEAD (which picohttpparser refused), in words, looked
 * for line by line as picohttpparser reads them. */
static const char *head_problem(const char *head, size_t len)
{
    size_t line_no = 0;
    for (size_t i = 0; i < len; line_no++) {
        const char *eol = memchr(head + i, '\n', len - i);
        size_t end = eol ? (size_t)(eol - head) : len, stop = end;
        if (eol && stop > i && head[stop - 1] == '\r')
            stop--;
        const char *line = head + i, *cr = memchr(line, '\r', stop - i);
        if (cr)
            return "a bare CR (one not followed by LF) in the request head";
        if (line_no == 0) {
            if (eol && !request_line_parses(line, stop - i))
                return "an invalid request line (send METHOD SP target SP HTTP/1.1)";
        } else if (stop == i) {
            break; /* the end of the head */
        } else if (line[0] != ' ' && line[0] != '\t') { /* a folded line is read as such */
            const char *colon = memchr(line, ':', stop - i);
            if (!colon)
                return "a header line without a colon";
            if (colon == line)
                return "a header line with an empty name";
            for (const char *c = line; c < colon; c++) {
                if (*c == ' ' || *c == '\t')
                    return "whitespace in a header name or before its colon (RFC 9112 §5.1)";
                if (!strchr("!#$%&'*+-.^_`|~", *c) && !isalnum((unsigned char)*c))
                    return "a character not allowed in a header name";
            }
            for (const char *c = colon + 1; c < head + stop; c++)
                if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f)
                    return "a control character in a header value";
        } else {
            for (const char *c = line; c < head + stop; c++)
                if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f)
                    return "a control character in a header value";
        }
        if (line_no > FRAMING_MAX_FIELDS)
            return "more header fields than the server reads";
        i = end + 1;
    }
    return "a request head that cannot be parsed";
}

const char *framing_head_unparsable(const char *head, size_t len, size_t seen, bool *ret_complete)
{
    size_t inlen = MIN(len, (size_t)H2O_MAX_REQLEN); /* as much as h2o parses */
    int r = head_length(head, inlen, seen);
    if (ret_complete)
        *ret_complete = r > 0;
    if (r > 0 || (r == -2 && inlen < (size_t)H2O_MAX_REQLEN))
        return NULL;
    if (r == -2)
        return "a request head longer than the server reads";
    return head_problem(head, inlen);
}

size_t framing_stand_in_head(const char *head, size_t len, size_t min_len, char *out, size_t size)
{
    static const char placeholder[] = "GET / HTTP/1.1", close[] = "\r\nConnection: close", end[] = "\r\n\r\n";
    const char *eol = memchr(head, '\n', len), *line = head;
    size_t line_len = eol ? (size_t)(eol - head) : 0;
    if (line_len && head[line_len - 1] == '\r')
        line_len--;
    if (!eol || memchr(head, '\r', line_len) || !request_line_parses(head, line_len)) {
        line = placeholder;
        line_len = STRLEN(placeholder);
    }
    size_t n = MAX(line_len + STRLEN(close) + STRLEN(end), min_len);
    if (n > size)
        return 0;
    memmove(out, line, line_len);
    memcpy(out + line_len, close, STRLEN(close));
    memset(out + line_len + STRLEN(close), ' ', n - line_len - STRLEN(close) - STRLEN(end));
    memcpy(out + n - STRLEN(end), end, STRLEN(end));
    return n;
}

size_t framing_request_end(h2o_req_t *req)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    if (!sock || !sock->input)
        return SIZE_MAX;
    const char *start = sock->input->bytes, *end = start + sock->input->size;
    if (req->entity.base) /* h2o reads a body (decoded, when chunked) right after its head */
        return req->entity.base >= start && req->entity.base + req->entity.len <= end
                   ? (size_t)(req->entity.base + req->entity.len - start)
                   : SIZE_MAX;
    int r = head_length(start, sock->input->size, 0);
    return r > 0 ? (size_t)r : SIZE_MAX;
}

bool framing_path_has_parameters(const char *target, size_t len)
{
    for (size_t i = 0; i < len && target[i] != '?' && target[i] != '#'; i++) {
        if (target[i] == ';')
            return true;
        if (target[i] == '%' && i + 2 < len && target[i + 1] == '3' && (target[i + 2] == 'b' || target[i + 2] == 'B'))
            return true;
    }
    return false;
}

/* An HTTP/1 request as its client sent it: h2o's connection input still
 * starts with this request's head while the request is being answered (it is
 * consumed only when the response is done). The head parsed there must be
 * the one h2o served, or nothing is decided on it. */
static const char *check_http1(h2o_req_t *req)
{
    if (h1front_owns(req->conn)) /* checked on the raw head as it was parsed */
        return h1front_verdict(req);
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    if (!sock || !sock->input)
        return "a request head that can no longer be read";
    framing_field fields[FRAMING_MAX_FIELDS];
    size_t n;
    h2o_iovec_t method, path;
    if (parse_head(sock->input->bytes, sock->input->size, fields, &n, &method, &path) < 0 ||
        !h2o_memis(method.base, method.len, req->input.method.base, req->input.method.len) ||
        !h2o_memis(path.base, path.len, req->input.path.base, req->input.path.len))
        return "a request head that cannot be read again as it was served";
    return framing_check_fields(fields, n, false);
}

/* An HTTP/2 request: its fields as h2o decoded them (framing_configure()
 * keeps "host" and "transfer-encoding" among them), its content-length,
 * which h2o keeps beside the stream, and a host that must name :authority
 * (and is then removed from REQ's headers). */
static const char *check_http2(h2o_req_t *req)
{
    framing_field fields[FRAMING_MAX_FIELDS + 1];
    size_t n = 0;
    ssize_t host = -1;
    if (req->headers.size > FRAMING_MAX_FIELDS)
        return "more header fields than the server reads";
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *h = &req->headers.entries[i];
        if (h->name == &H2O_TOKEN_HOST->buf)
            host = (ssize_t)i;
        fields[n++] = (framing_field){.name = h->name->base, .name_len = h->name->len, .value = h->value.base,
                                      .value_len = h->value.len};
    }
    const h2o_http2_stream_t *stream = H2O_STRUCT_FROM_MEMBER(h2o_http2_stream_t, req, req);
    char cl[24];
    if (stream->_expected_content_length != SIZE_MAX) {
        int len = snprintf(cl, sizeof(cl), "%zu", stream->_expected_content_length);
        fields[n++] = (framing_field){.name = "content-length", .name_len = STRLEN("content-length"), .value = cl,
                                      .value_len = (size_t)len};
    }
    const char *why = framing_check_fields(fields, n, true);
    if (why)
        return why;
    if (host >= 0) {
        h2o_iovec_t v = req->headers.entries[host].value;
        if (v.len != req->input.authority.len || strncasecmp(v.base, req->input.authority.base, v.len) != 0)
            return "a host header that differs from :authority";
        /* agreed: dropped as h2o would have, so that what follows (the
         * proxy's forwarded headers) sees one authority, :authority */
        h2o_delete_header(&req->headers, host);
    }
    return NULL;
}

/* ---- HTTP/2 header blocks, as h2o will decode them ---- */

/* An HPACK integer with a PREFIX_BITS prefix at *P, read as h2o 2.2.5 reads
 * it (at most four octets after the prefix). Returns it and advances *P, or
 * -1 when it does not fit in what is left. */
static int32_t hpack_int(const uint8_t **p, const uint8_t *end, unsigned prefix_bits)
{
    if (*p >= end)
        return -1;
    int32_t max = (1 << prefix_bits) - 1, value = **p & max;
    (*p)++;
    if (value != max)
        return value;
    if (end - *p > 4)
        end = *p + 4;
    for (int32_t mult = 1;; mult *= 128) {
        if (*p >= end)
            return -1;
        value += (**p & 127) * mult;
        if ((*(*p)++ & 128) == 0)
            return value;
    }
}

/* Skips an HPACK string literal at *P. Returns 0, or -1 when it overruns. */
static int hpack_skip_string(const uint8_t **p, const uint8_t *end)
{
    int32_t len = hpack_int(p, end, 7);
    if (len < 0 || len > end - *p)
        return -1;
    *p += len;
    return 0;
}

/* The length of the field representation at P (with any dynamic table size
 * updates before it, which h2o decodes together with it), or -1 when P does
 * not start one (h2o then fails the connection with COMPRESSION_ERROR). */
static ssize_t hpack_field_length(const uint8_t *p, const uint8_t *end)
{
    const uint8_t *start = p;
    while (p < end && (*p & 0xe0) == 0x20) /* dynamic table size update */
        if (hpack_int(&p, end, 5) < 0)
            return -1;
    if (p >= end)
        return -1;
    if (*p & 0x80) /* indexed field */
        return hpack_int(&p, end, 7) > 0 ? p - start : -1;
    unsigned prefix = *p & 0x40 ? 6 : 4; /* with incremental indexing; without / never indexed */
    if ((*p & ((1u << prefix) - 1)) == 0) {
        p++;
        if (hpack_skip_string(&p, end) < 0)
            return -1;
    } else if (hpack_int(&p, end, prefix) <= 0)
        return -1;
    return hpack_skip_string(&p, end) < 0 ? -1 : p - start;
}

/* A copy of h2o's dynamic table TABLE in *RET, sharing its names and values
 * (each one referenced once more; h2o_hpack_dispose_header_table() drops
 * the copy). Returns 0 or -ENOMEM. */
static int hpack_table_copy(const h2o_hpack_header_table_t *table, h2o_hpack_header_table_t *ret)
{
    *ret = *table;
    if (table->entry_capacity == 0)
        return 0;
    ret->entries = malloc(table->entry_capacity * sizeof(*table->entries));
    if (!ret->entries)
        return -ENOMEM;
    memcpy(ret->entries, table->entries, table->entry_capacity * sizeof(*table->entries));
    for (size_t i = 0; i < table->num_entries; i++) {
        const h2o_hpack_header_table_entry_t *e =
            &table->entries[(table->entry_start_index + i) % table->entry_capacity];
        if (!h2o_iovec_is_token(e->name))
            h2o_mem_addref_shared(e->name);
        h2o_mem_addref_shared(e->value); /* always decoded for the input table, never a static one */
    }
    return 0;
}

const char *framing_check_h2_block(const h2o_hpack_header_table_t *table, const uint8_t *block, size_t len)
{
    h2o_hpack_header_table_t copy;
    if (hpack_table_copy(table, &copy) < 0)
        return "a header block the server has no memory to check";
    h2o_req_t req; /* only its pool, input and headers are written */
    memset(&req, 0, sizeof(req));
    h2o_mem_init_pool(&req.pool);
    framing_field fields[FRAMING_MAX_FIELDS];
    size_t n = 0;
    int pseudo = 0;
    bool regular_seen = false;
    const char *why = NULL;
    const uint8_t *p = block, *end = block + len;
    /* one field at a time, so that each content-length is seen (h2o keeps
     * the last one's value beside the request, not among its headers) */
    while (p < end && !why) {
        ssize_t flen = hpack_field_length(p, end);
        size_t cl = SIZE_MAX, before = req.headers.size;
        const char *err = NULL;
        if (flen < 0)
            break; /* h2o fails the connection on it */
        int r = h2o_hpack_parse_headers(&req, &copy, p, (size_t)flen, regular_seen ? NULL : &pseudo, &cl, NULL, &err);
        if (r != 0 && r != H2O_HTTP2_ERROR_INVALID_HEADER_CHAR)
            break; /* h2o refuses the stream or the connection itself */
        p += flen;
        if (cl == SIZE_MAX && req.headers.size == before)
            continue; /* a pseudo-header */
        regular_seen = true;
        if (n == FRAMING_MAX_FIELDS) {
            why = "more header fields than the server reads";
            break;
        }
        if (cl != SIZE_MAX) { /* its value in decimal, as h2o read it */
            char *v = h2o_mem_alloc_pool(&req.pool, 24), *d = v + 24;
            do
                *--d = (char)('0' + cl % 10);
            while (cl /= 10);
            fields[n++] = (framing_field){.name = "content-length", .name_len = STRLEN("content-length"), .value = d,
                                          .value_len = (size_t)(v + 24 - d)};
        } else {
            const h2o_header_t *h = &req.headers.entries[req.headers.size - 1];
            fields[n++] = (framing_field){.name = h->name->base, .name_len = h->name->len, .value = h->value.base,
                                          .value_len = h->value.len};
        }
    }
    if (!why)
        why = framing_check_fields(fields, n, true);
    h2o_mem_clear_pool(&req.pool);
    h2o_hpack_dispose_header_table(&copy);
    return why;
}

int httpd_framing_check(h2o_req_t *req, const char **reason)
{
    const char *why = httpd_guard_verdict(req);
    if (!why)
        why = req->version >= 0x200 ? check_http2(req) : check_http1(req);
    if (!why)
        return 0;
    req->http1_is_persistent = 0;
    *reason = why;
    return -EBADMSG;
}

/* ---- h2o's own refusals, answered as JSON ---- */

/* An output stream that replaces the plain-text body h2o writes for its own
 * refusals with {"error":{"code","message"}}. */
typedef struct json_refusal {
    h2o_ostream_t super;
    bool sent;
} json_refusal;

/* Appends S to OUT (of SIZE, at *LEN) as JSON string content. */
static void json_escape(char *out, size_t size, size_t *len, const char *s, size_t n)
{
    for (size_t i = 0; i < n && *len + 7 < size; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            *len += (size_t)snprintf(out + *len, size - *len, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            *len += (size_t)snprintf(out + *len, size - *len, "\\u%04x", ch);
        else
            out[(*len)++] = (char)ch;
    }
    out[*len] = 0;
}

static void json_refusal_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt,
                              h2o_send_state_t state)
{
    json_refusal *o = (json_refusal *)self;
    if (o->sent) {
        h2o_ostream_send_next(&o->super, req, NULL, 0, state);
        return;
    }
    o->sent = true;
    /* h2o's own words ("request entity is too large", "broken chunked-encoding") */
    char said[128] = "";
    size_t said_len = 0;
    for (size_t i = 0; i < bufcnt; i++)
        json_escape(said, sizeof(said), &said_len, bufs[i].base, bufs[i].len);
    int status = req->res.status;
    const char *code = status == 413 ? "too_large" : status == 404 ? "not_found" : status < 500 ? "bad_request"
                                                                                                 : "internal";
    char message[384];
    if (status == 413)
        snprintf(message, sizeof(message), "the request body exceeds the server's limit of %zu bytes",
                 req->conn->ctx->globalconf->max_request_entity_size);
    else if (status == 400)
        snprintf(message, sizeof(message),
                 "the request's framing or headers are malformed (%s): send one Content-Length or "
                 "Transfer-Encoding: chunked, and valid header fields",
                 said);
    else
        snprintf(message, sizeof(message), "the request is refused: %s", said);
    char *body = h2o_mem_alloc_pool(&req->pool, 512);
    size_t n = (size_t)snprintf(body, 512, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, message);
    req->res.content_length = MIN(n, (size_t)511);
    h2o_iovec_t out = h2o_iovec_init(body, req->res.content_length);
    h2o_ostream_send_next(&o->super, req, &out, 1, state);
}

/* Installed on the fallback path, where h2o answers what it refuses before
 * any handler runs (a body over the limit, broken chunked encoding, a
 * Transfer-Encoding it does not know, HTTP/2 header bytes it will not take). */
static void json_refusal_setup(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    (void)self;
    json_refusal *o = (json_refusal *)h2o_add_ostream(req, sizeof(*o), slot);
    o->super.do_send = json_refusal_send;
    o->sent = false;
    if (req->res.status == 501) { /* h2o 2.2.5's word for a Transfer-Encoding other than chunked */
        req->res.status = 400;
        req->res.reason = "Bad Request";
    }
    ssize_t ct = h2o_find_header(&req->res.headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (ct >= 0)
        req->res.headers.entries[ct].value = h2o_iovec_init(H2O_STRLIT("application/json"));
    else
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    req->res.content_length = SIZE_MAX; /* set once the body is written */
    h2o_setup_next_ostream(req, &o->super.next);
}

void framing_configure(h2o_globalconf_t *conf, h2o_hostconf_t *host)
{
    /* no switch to HTTP/2 inside a plain HTTP/1 connection (Upgrade: h2c,
     * prior knowledge): its first request would be checked as HTTP/2 with
     * the HTTP/1 head h2o parsed out of sight, and its bodies unguarded */
    conf->http1.upgrade_to_http2 = 0;
    /* h2o 2.2.5 drops an HTTP/2 "host" field and fails the whole connection
     * on "transfer-encoding"; kept as ordinary fields, both reach
     * httpd_framing_check(), which answers 400 for the one request */
    H2O_TOKEN_HOST->http2_should_reject = 0;
    H2O_TOKEN_TRANSFER_ENCODING->http2_should_reject = 0;
    h2o_filter_t *f = h2o_create_filter(&host->fallback_path, sizeof(*f));
    f->on_setup_ostream = json_refusal_setup;
}
