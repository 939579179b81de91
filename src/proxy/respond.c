/* The proxy's own answers: request ids, bodies, redirects and the one
 * place a refusal becomes a status and a JSON error, or for a browser an
 * HTML page (httpd/errorpage.h; see corridor.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "basic/encoding.h"
#include "httpd/errorpage.h"
#include "proxy/corridor.h"

void proxy_request_id(proxy_thread *t, char out[PROXY_REQUEST_ID_LEN + 1])
{
    uint8_t raw[16];
    memcpy(raw, t->id_prefix, 8);
    uint64_t seq = ++t->id_seq;
    memcpy(raw + 8, &seq, 8);
    hex_encode(raw, sizeof(raw), out);
}

void proxy_send_body(h2o_req_t *req, h2o_iovec_t body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.content_length = body.len;
    h2o_start_response(req, &generator);
    bool head = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    h2o_send(req, head ? NULL : &body, head ? 0 : 1, H2O_SEND_STATE_FINAL);
}

proxy_step proxy_send_json(proxy_request *pr, const json_t *value, const char *cache_control)
{
    return proxy_send_json_status(pr, 200, value, cache_control);
}

proxy_step proxy_send_json_status(proxy_request *pr, int status, const json_t *value, const char *cache_control)
{
    h2o_req_t *req = pr->req;
    char *text = json_dumps(value, JSON_COMPACT);
    if (!text)
        return proxy_fail(pr, 500, "internal", "out of memory");
    h2o_iovec_t body = h2o_strdup(&req->pool, text, SIZE_MAX);
    free(text);
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : "Service Unavailable";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, cache_control, strlen(cache_control));
    proxy_send_body(req, body);
    return PROXY_DONE;
}

void proxy_redirect(h2o_req_t *req, const char *location)
{
    h2o_iovec_t loc = h2o_strdup(&req->pool, location, SIZE_MAX);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, loc.base, loc.len);
    req->res.status = 302;
    req->res.reason = "Found";
    proxy_send_body(req, h2o_iovec_init(NULL, 0));
}

/* The reason phrase of the statuses the proxy answers with itself. */
static const char *reason_of(int status)
{
    switch (status) {
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 421:
        return "Misdirected Request";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status >= 500 ? "Error" : "Bad Request";
    }
}

h2o_iovec_t proxy_failure_prepare(proxy_request *pr, int status, const char *code, const char *message)
{
    h2o_req_t *req = pr->req;
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-cloister-request-id"), 0, NULL, pr->rec.id,
                          PROXY_REQUEST_ID_LEN);
    if (error_page_wanted(req)) {
        const proxy_page_texts *texts = &pr->page;
        return error_page_prepare(req, &(error_page){.status = status,
                                                     .message = texts->message ? texts->message : message,
                                                     .explanation = texts->explanation,
                                                     .remediation = texts->remediation,
                                                     .request_id = pr->rec.id,
                                                     .signout_url = pr->svc ? PROXY_LOGOUT_PATH : NULL});
    }
    json_t *body = json_pack("{s:{s:s, s:s}, s:s}", "error", "code", code, "message", message, "requestId",
                             pr->rec.id);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    req->res.status = status;
    req->res.reason = reason_of(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_iovec_t v = text ? h2o_strdup(&req->pool, text, SIZE_MAX) : h2o_iovec_init(H2O_STRLIT("{}"));
    free(text);
    req->res.content_length = v.len;
    return v;
}

proxy_step proxy_fail(proxy_request *pr, int status, const char *code, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    proxy_send_body(pr->req, proxy_failure_prepare(pr, status, code, message));
    return PROXY_DONE;
}

/* An output stream that sends BODY in place of what it is given. */
typedef struct swapped_body {
    h2o_ostream_t super;
    h2o_iovec_t body;
    bool sent;
} swapped_body;

static void swapped_body_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt,
                              h2o_send_state_t state)
{
    (void)bufs, (void)bufcnt;
    swapped_body *s = (swapped_body *)self;
    bool head = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    if (s->sent || head) {
        h2o_ostream_send_next(self, req, NULL, 0, state);
        return;
    }
    s->sent = true;
    h2o_ostream_send_next(self, req, &s->body, 1, state);
}

h2o_ostream_t **proxy_swap_body(h2o_req_t *req, h2o_ostream_t **slot, h2o_iovec_t body)
{
    swapped_body *s = (swapped_body *)h2o_add_ostream(req, sizeof(*s), slot);
    s->super.do_send = swapped_body_send;
    s->sent = false;
    s->body = body;
    return &s->super.next;
}
