#include "kms/respond.h"

#include <openssl/crypto.h>
#include <string.h>


typedef struct wiped_body {
    h2o_generator_t super;
    size_t len;
    char data[];
} wiped_body;

static void wiped_body_dispose(void *p)
{
    wiped_body *b = p;
    OPENSSL_cleanse(b->data, b->len);
}

static void body_proceed(h2o_generator_t *g, h2o_req_t *req)
{
}

static void body_stop(h2o_generator_t *g, h2o_req_t *req)
{
}

void kms_send_json_wiped(h2o_req_t *req, const json_t *value)
{
    static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
    char *text = json_dumps(value, JSON_COMPACT);
    if (!text) {
        req->res.status = 500;
        req->res.reason = "Internal Server Error";
        req->res.content_length = sizeof(oom) - 1;
        h2o_send_inline(req, oom, sizeof(oom) - 1);
        return;
    }
    size_t len = strlen(text);
    wiped_body *b = h2o_mem_alloc_shared(&req->pool, sizeof(*b) + len, wiped_body_dispose);
    b->super = (h2o_generator_t){body_proceed, body_stop};
    b->len = len;
    memcpy(b->data, text, len);
    OPENSSL_cleanse(text, len);
    free(text);
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_start_response(req, &b->super);
    h2o_iovec_t buf = h2o_iovec_init(b->data, len);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}
