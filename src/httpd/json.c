#include "httpd/json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>

#include "basic/macro.h"
#include "httpd/errorpage.h"

const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 421: return "Misdirected Request";
    case 431: return "Request Header Fields Too Large";
    case 429: return "Too Many Requests";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status >= 500 ? "Internal Server Error" : "Error";
    }
}

int api_fail(api_error *err, int status, const char *code, const char *fmt, ...)
{
    err->status = status;
    err->code = code;
    err->field[0] = 0;
    err->document = -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -1;
}

int api_fail_store(api_error *err, int e, const char *kind, const char *name)
{
    switch (e) {
    case -ENOENT:
        return api_fail(err, 404, "not_found", "%s %s not found", kind, name);
    case -EEXIST:
        return api_fail(err, 409, "already_exists", "%s %s already exists", kind, name);
    case -ESTALE:
        return api_fail(err, 409, "conflict",
                        "%s %s was changed since resourceVersion given; get it again and retry", kind, name);
    case -ENOLINK:
        return api_fail(err, 400, "invalid", "%s %s names a User that does not exist; create the User first", kind,
                        name);
    case -ENOSPC:
        return api_fail(err, 507, "insufficient_storage", "the store is out of disk space");
    case -ECONNREFUSED: /* only a PostgreSQL store has a connection to lose */
    case -ECONNRESET:
        return api_fail(err, 503, "store_unavailable",
                        "the PostgreSQL store cannot be reached (%s): the database is down or restarting; nothing "
                        "was written, retry once it is back (GET /readyz shows the store)",
                        strerror(-e));
    default:
        return api_fail(err, 500, "internal", "the store failed (%s); see the server log", strerror(-e));
    }
}

void api_send_json(h2o_req_t *req, int status, const json_t *value)
{
    char *body = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    req->res.status = status;
    req->res.reason = http_reason(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    if (!body) {
        req->res.status = 500;
        req->res.reason = http_reason(500);
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        req->res.content_length = sizeof(oom) - 1;
        h2o_send_inline(req, oom, sizeof(oom) - 1);
        return;
    }
    /* a known length keeps HTTP/1.1 connections alive for every status (h2o's
     * chunked encoder closes them for non-200 responses of unknown length) */
    req->res.content_length = strlen(body);
    h2o_send_inline(req, body, strlen(body));
    free(body);
}

/* The request id the proxy gave REQ (x-cloister-request-id, 32 hex digits:
 * the proxy replaces any a client sends), or NULL. */
static const char *proxy_request_id(h2o_req_t *req)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-cloister-request-id"), -1);
    if (i < 0)
        return NULL;
    h2o_iovec_t v = req->headers.entries[i].value;
    if (v.len != 32)
        return NULL;
    char *id = h2o_strdup(&req->pool, v.base, v.len).base;
    return strspn(id, "0123456789abcdef") == 32 ? id : NULL;
}

void api_send_error(h2o_req_t *req, const api_error *err)
{
    if (error_page_wanted(req)) { /* a browser: the same error as a page */
        if (err->status == 401)
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                           H2O_STRLIT("Bearer realm=\"cloister\""));
        error_page_send(req, &(error_page){.status = err->status, .message = err->message,
                                           .request_id = proxy_request_id(req)});
        return;
    }
    json_t *e = json_pack("{s:s, s:s}", "code", err->code, "message", err->message);
    if (err->field[0])
        json_object_set_new(e, "field", json_string(err->field));
    if (err->document >= 0)
        json_object_set_new(e, "document", json_integer(err->document));
    json_t *body = json_pack("{s:o}", "error", e);
    if (err->status == 401)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                       H2O_STRLIT("Bearer realm=\"cloister\""));
    api_send_json(req, err->status, body);
    json_decref(body);
}

/* Depth of nested arrays and objects in V, stopping early past LIMIT. */
static size_t json_depth(const json_t *v, size_t limit)
{
    if (limit == 0)
        return 1;
    size_t deepest = 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *child;
        json_object_foreach((json_t *)v, k, child) deepest = MAX(deepest, json_depth(child, limit - 1));
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) deepest = MAX(deepest, json_depth(child, limit - 1));
    } else
        return 0;
    return deepest + 1;
}

json_t *api_decode_body(const char *data, size_t len, api_error *err)
{
    if (len > API_BODY_MAX) {
        api_fail(err, 413, "too_large", "request body is %zu bytes; the limit is %d bytes", len, API_BODY_MAX);
        return NULL;
    }
    if (len == 0) {
        api_fail(err, 400, "invalid", "request body is empty; send a JSON document");
        return NULL;
    }
    json_error_t jerr;
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        api_fail(err, 400, "invalid", "request body is not valid JSON: %s at line %d column %d", jerr.text,
                 jerr.line, jerr.column);
        return NULL;
    }
    if (json_depth(v, API_JSON_DEPTH_MAX + 1) > API_JSON_DEPTH_MAX) {
        json_decref(v);
        api_fail(err, 400, "invalid", "request body nests deeper than %d levels", API_JSON_DEPTH_MAX);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        api_fail(err, 400, "invalid", "request body must be a JSON object");
        return NULL;
    }
    return v;
}

int api_only_fields(const json_t *body, const char *const *known, api_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; known[i] && !ok; i++)
            ok = strcmp(known[i], key) == 0;
        if (!ok)
            return api_fail(err, 400, "invalid", "unknown field %.64s", key);
    }
    return 0;
}

/* Finds query parameter NAME of REQ: its value in *RET_VALUE (not
 * NUL-terminated) and *RET_LEN. False when absent. */
static bool query_value(const h2o_req_t *req, const char *name, const char **ret_value, size_t *ret_len)
{
    if (req->query_at == SIZE_MAX)
        return false;
    const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    size_t nlen = strlen(name);
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) >= nlen && memcmp(p, name, nlen) == 0 && (p + nlen == stop || p[nlen] == '=')) {
            *ret_value = p + nlen == stop ? stop : p + nlen + 1;
            *ret_len = (size_t)(stop - *ret_value);
            return true;
        }
        p = stop + 1;
    }
    return false;
}

bool api_query_param(const h2o_req_t *req, const char *name, char *out, size_t size)
{
    const char *v;
    size_t len;
    if (!query_value(req, name, &v, &len) || len >= size)
        return false;
    memcpy(out, v, len);
    out[len] = 0;
    return true;
}

int api_query_u64(const h2o_req_t *req, const char *name, uint64_t max, uint64_t *ret, api_error *err)
{
    const char *s;
    size_t len;
    if (!query_value(req, name, &s, &len))
        return 0;
    uint64_t v = 0;
    bool ok = len > 0 && len <= 20;
    for (size_t i = 0; ok && i < len; i++) {
        ok = s[i] >= '0' && s[i] <= '9' && (uint64_t)(s[i] - '0') <= max && v <= (max - (uint64_t)(s[i] - '0')) / 10;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (!ok)
        return api_fail(err, 400, "invalid", "%s must be a decimal number of at most %llu", name,
                        (unsigned long long)max);
    *ret = v;
    return 0;
}
