/* The agent's side of the sandbox channel: HTTP/1.1 with JSON bodies over
 * the Unix socket the runner exposes in the sandbox (docs/enclaves.md,
 * "The channel protocol"). */
#pragma once

#include <jansson.h>
#include <stddef.h>

#include "basic/strbuf.h"

#define CHANNEL_DEFAULT_PATH "/run/cloister/channel.sock"
#define CHANNEL_RESPONSE_MAX (256 * 1024)
#define CHANNEL_TIMEOUT_MS 15000

/* POSTs BODY (may be NULL: "{}") to PATH on the channel at SOCKET. Returns
 * the HTTP status (> 0) with the JSON answer in *RET (a new reference),
 * or a negative errno when no JSON answer came (-ECONNREFUSED, -ETIMEDOUT,
 * -EBADMSG: not JSON, -E2BIG: over CHANNEL_RESPONSE_MAX). Safe from any
 * thread (curl_global_init() must have run). */
int channel_post(const char *socket, const char *path, const json_t *body, json_t **ret);

/* POSTs the LEN bytes of BODY (CONTENT_TYPE) to PATH on the channel at
 * SOCKET, the answer's bytes appended to ANSWER (its cap bounds them).
 * Returns the HTTP status or a negative errno as channel_post(). A job's
 * input chunks and result parts go this way. */
int channel_call(const char *socket, const char *path, const void *body, size_t len, const char *content_type,
                 strbuf *answer);

/* The message of an {"error": {"message"}} answer, or FALLBACK. */
const char *channel_error_message(const json_t *answer, const char *fallback);
