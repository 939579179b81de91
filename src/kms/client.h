/* The client side of the kms role's API: JSON over HTTP on its Unix socket,
 * or over TCP with mutual TLS when the kms role runs elsewhere
 * (daemon/peer-tls.h), with kept-alive connections reused across calls and
 * threads. */
#pragma once

#include <jansson.h>

#define KMS_RESPONSE_MAX (2 * 1024 * 1024)

/* POSTs BODY (borrowed, may be NULL) to PATH ("/v1/encrypt") on the kms role
 * at ADDRESS (its socket's path, or its https:// URL). Returns the HTTP
 * status (> 0) with the parsed answer in *RET (a new reference), or a
 * negative errno when no valid answer came (-ECONNREFUSED: the role is not
 * running; -EACCES: the TLS handshake failed, a certificate refused either
 * way; -EBADMSG: not JSON; -E2BIG: over KMS_RESPONSE_MAX). Safe from any
 * thread. */
int kms_call(const char *address, const char *path, const json_t *body, json_t **ret);

/* Closes the pooled connections (at process exit). */
void kms_client_cleanup(void);

/* Overwrites every string inside V (keys excepted) that nothing else holds
 * a reference to with zeros, so freeing it leaves no secret behind. */
void kms_json_wipe(json_t *v);

/* Wipes then releases V; for _cleanup_(kms_json_wipe_decrefp). */
void kms_json_wipe_decref(json_t *v);
static inline void kms_json_wipe_decrefp(json_t **v)
{
    if (*v)
        kms_json_wipe_decref(*v);
}
