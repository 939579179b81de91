/* The REST client: one HTTPS request to the server settled in a cli_ctx,
 * JSON in and out, the server verified against the context's CA, the
 * response capped. */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cli/cli.h"

/* Largest response body accepted. */
#define CLIENT_MAX_RESPONSE ((size_t)64 << 20)

/* Why a request failed: the server's {"error": {...}} when it sent one,
 * else a description of the transport problem in MESSAGE. */
typedef struct api_error {
    long status;       /* HTTP status, 0 when no response came */
    char code[64];     /* "not_found", ... or "" */
    char message[512];
    char field[256];   /* the offending field ("spec.x"), or "" */
    long document;     /* the offending document of an apply, or -1 */
} api_error;

/* Sends METHOD PATH (below /v1, e.g. "/services/wiki") with BODY (may be
 * NULL) and TOKEN as bearer token (none when NULL). When TOKEN is the saved
 * session's access token and the server refuses it (expired, rotated out),
 * the session is refreshed once (cli_session_refresh()) and the request
 * sent again with the new token. On a 2xx answer returns 0 and stores
 * the parsed JSON body in *RET (a new reference; JSON null when empty).
 * Otherwise returns -EIO (no answer), -EPROTO (an error status), -EBADMSG
 * (an answer that is not JSON), -E2BIG (over CLIENT_MAX_RESPONSE) or
 * -ENOMEM, with ERR filled. */
int api_request(cli_ctx *ctx, const char *token, const char *method, const char *path,
                const json_t *body, json_t **ret, api_error *err);
/* api_request() to the full https:// URL (another of the cluster's
 * endpoints, such as the proxy), verified against the context's CA. */
int api_request_url(cli_ctx *ctx, const char *token, const char *method, const char *url, const json_t *body,
                    json_t **ret, api_error *err);

/* GET PATH from the server's root (/readyz, /healthz) without a token: 0
 * with the JSON object answered, whatever its status (in *RET_STATUS: 200,
 * or 503 naming what is not ready), or as api_request(). */
int api_health(cli_ctx *ctx, const char *path, long *ret_status, json_t **ret, api_error *err);

/* api_request() with CTX's token of N raw bytes of DATA
 * (application/octet-stream), the answer JSON. */
int api_request_bytes(cli_ctx *ctx, const char *method, const char *path, const void *data, size_t n, json_t **ret,
                      api_error *err);
/* GET PATH (below /v1) with CTX's token, writing a 2xx answer's body to FD
 * as it comes (not kept in memory); an error answer fills ERR. Returns 0 or
 * as api_request(). */
int api_download(cli_ctx *ctx, const char *path, int fd, api_error *err);
/* api_download() of a stream that lasts until the server ends it (a watch:
 * Server-Sent Events): no total timeout, only the stall one (a stream
 * silent for 60 s, heartbeats included, is cut). */
int api_stream(cli_ctx *ctx, const char *path, int fd, api_error *err);

/* Follows the watch stream (Server-Sent Events) at PATH below /v1 with
 * CTX's token, calling ON_EVENT(TYPE, DATA, USERDATA) for each event as it
 * comes (TYPE "ADDED", "MODIFIED", "DELETED"; DATA its parsed JSON,
 * borrowed) until the server ends the stream or ON_EVENT returns non-zero
 * (then returned). An ERROR event ends it with -EPROTO and ERR saying why;
 * otherwise returns 0 or as api_stream(). */
int api_watch(cli_ctx *ctx, const char *path, int (*on_event)(const char *type, const json_t *data, void *userdata),
              void *userdata, api_error *err);

/* Trades the saved session's refresh token for a new access token and
 * refresh token (POST /v1/auth/refresh), saves the session and makes the
 * new access token CTX's token; when another cloister process refreshed
 * the session since CTX read it, its saved tokens are taken instead (the
 * refresh token is single-use: presenting a retired one revokes the
 * session). Serialised across processes by session_lock(). Returns 0, or
 * -EPROTO/-EIO/... with ERR. */
int cli_session_refresh(cli_ctx *ctx, api_error *err);
/* Makes CTX's token an access token of the saved session valid for more
 * than MIN_VALID_S seconds: the one it holds, else cli_session_refresh().
 * Returns 0, or as cli_session_refresh(). */
int cli_session_fresh(cli_ctx *ctx, int64_t min_valid_s, api_error *err);
/* The exp claim of the access token TOKEN (a JWT), read without verifying
 * it (only to time a refresh: the server verifies). Returns 0 or -EINVAL. */
int cli_token_expiry(const char *token, int64_t *ret_exp);

/* "FIELD: MESSAGE" (or MESSAGE alone when it has no field or already
 * starts with it) into BUF; returns BUF. */
const char *api_error_message(const api_error *err, char *buf, size_t size);

/* Prints ERR as "error: [FIELD: ]MESSAGE" with a hint for 401; returns
 * CLI_EXIT_FAILED. */
int api_error_print(const api_error *err);
