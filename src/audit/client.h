/* The client side of the audit role's API: HTTP/JSON over its Unix socket,
 * or over TCP with mutual TLS when it runs elsewhere, with libcurl. One
 * audit_client per thread (it keeps a connection).
 * Nothing in it is audit-specific: the api role's controller reaches the
 * runner's socket with it too. */
#pragma once

#include <stddef.h>

#define AUDIT_CLIENT_RESPONSE_MAX (8 * 1024 * 1024)

typedef struct audit_client audit_client;

/* A client of role ROLE ("audit", "runner") at ADDRESS (copied): its Unix
 * socket's path, or its https://HOST:PORT when it runs elsewhere (mutual
 * TLS, daemon/peer-tls.h: the server must present ROLE's certificate).
 * Returns 0 or -ENOMEM / -ENAMETOOLONG. */
int audit_client_new(const char *role, const char *address, audit_client **ret);
void audit_client_free(audit_client *c);

/* Sends METHOD ("GET", "POST" or "DELETE") PATH ("/v1/checkpoint", ...) with BODY
 * (LEN bytes, POST only) and waits at most TIMEOUT_MS. On an answer returns
 * 0 with its status in *RET_STATUS and its body in *RET_BODY (heap,
 * NUL-terminated, caller frees; at most AUDIT_CLIENT_RESPONSE_MAX bytes).
 * -ECONNREFUSED / -EIO when the role cannot be reached, -EACCES when the TLS
 * handshake failed (a certificate refused), -E2BIG, -ENOMEM. */
int audit_client_request(audit_client *c, const char *method, const char *path, const char *body, size_t len,
                         long timeout_ms, long *ret_status, char **ret_body, size_t *ret_len);
