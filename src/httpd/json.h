/* Response helpers shared by the API handlers: JSON bodies, the one mapping
 * from internal errors to HTTP statuses and error codes, and request-body
 * decoding with caps. */
#pragma once

#include <h2o.h>
#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#define API_BODY_MAX (1024 * 1024) /* bytes of JSON a request may carry */
#define API_JSON_DEPTH_MAX 32
#define API_APPLY_ITEMS_MAX 1000

typedef struct api_error {
    int status;
    const char *code;
    char message[768];
    char field[256];
    long document; /* index in an apply, -1 when not relevant */
} api_error;

/* Fills ERR; returns -1 so handlers can `return api_fail(...)`. */
int api_fail(api_error *err, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Fills ERR from a store error (-ENOENT, -EEXIST, -ESTALE, ...) about
 * KIND/NAME; a store that cannot be reached (-ECONNREFUSED, -ECONNRESET) is
 * 503 store_unavailable. */
int api_fail_store(api_error *err, int e, const char *kind, const char *name);

/* Sends VALUE (borrowed) as the JSON response with STATUS. */
void api_send_json(h2o_req_t *req, int status, const json_t *value);
/* Refuses members of the JSON object BODY not named in KNOWN (NULL-terminated):
 * -1 with ERR (400 naming the first), else 0. */
int api_only_fields(const json_t *body, const char *const *known, api_error *err);
void api_send_error(h2o_req_t *req, const api_error *err);

/* Decodes a request body: JSON only, at most API_BODY_MAX bytes and
 * API_JSON_DEPTH_MAX levels, no duplicate keys. Returns a new reference or
 * NULL with ERR filled. */
json_t *api_decode_body(const char *data, size_t len, api_error *err);

const char *http_reason(int status);

/* Copies query parameter NAME (not percent-decoded: callers accept plain
 * tokens only) into OUT; false when absent or longer than SIZE - 1. */
bool api_query_param(const h2o_req_t *req, const char *name, char *out, size_t size);
/* Query parameter NAME, when present, as a decimal number of at most MAX
 * into *RET (left alone when absent). Returns 0, or -1 with ERR filled (400
 * naming the parameter) when it is not one. */
int api_query_u64(const h2o_req_t *req, const char *name, uint64_t max, uint64_t *ret, api_error *err);
