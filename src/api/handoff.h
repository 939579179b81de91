/* The browser login handoff: after an OIDC login that started at a service
 * host (the proxy sent the browser to /v1/auth/login?rd=<its URL>), the API
 * sends the browser back to that host's /.cloister/callback with the
 * session's access token sealed for the proxy, so the service host alone
 * sets its session cookie.
 *
 * A handoff is base64url (no padding) of IV(12) || AES-256-GCM ciphertext ||
 * tag(16), with AAD "cloister-handoff-v1", under the 32-byte handoff key the
 * api role holds and pushes to the proxy on its configuration stream. The
 * plaintext is {"token", "host", "path", "exp", "nonce", "bind"} (see
 * src/proxy/proxy.c, handoff_open, for the other side). "bind" ties the
 * handoff to the browser that started the login: the proxy set that
 * browser a random cloister_login cookie and sent bind = hex SHA-256 of it
 * along with rd; the proxy accepts the handoff only with that cookie, so a
 * handoff of someone else's login cannot be pushed into a victim's browser
 * (login CSRF). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HANDOFF_KEY_LEN 32
#define HANDOFF_TTL_S 60          /* how long a handoff is good for (the proxy accepts at most 120 s) */
#define HANDOFF_ENCODED_MAX 8192  /* the proxy refuses longer handoffs */
#define LOGIN_RD_MAX 2048         /* bytes of a decoded rd URL */
#define LOGIN_RD_HOST_MAX 253     /* bytes of its host name */
#define LOGIN_BIND_LEN 64         /* hex SHA-256 of the proxy's login cookie */

/* A parsed return URL: where the browser goes back to after its login. */
typedef struct login_rd {
    char url[LOGIN_RD_MAX + 1];             /* scheme://authority/path?query, the fragment dropped */
    char scheme[6];                         /* "http" or "https" */
    char authority[LOGIN_RD_HOST_MAX + 7];  /* host[:port] exactly as the browser will send it */
    char host[LOGIN_RD_HOST_MAX + 1];       /* lower case, without port and trailing dot */
    char path[LOGIN_RD_MAX + 1];            /* path and query; "/" when empty */
} login_rd;

/* Parses TEXT (LEN bytes, already percent-decoded) as an absolute http(s)
 * URL whose authority is a host name with an optional port: no userinfo,
 * IP literal, backslash, control byte or space, a path that starts with
 * one '/' (never "//"), at most LOGIN_RD_MAX bytes. Fills *RET and returns
 * 0; otherwise returns -EINVAL and points *WHY (when not NULL) at a static
 * sentence naming the problem. Whether the host is a Service's is the
 * caller's business. */
int login_rd_parse(const char *text, size_t len, login_rd *ret, const char **why);

/* Whether TEXT is a bind: LOGIN_BIND_LEN lower-case hex digits. */
bool login_bind_valid(const char *text);

/* Seals a handoff for TOKEN (the access token), HOST (the authority the
 * browser will send), PATH (where the proxy redirects after setting the
 * cookie), BIND (see above) and expiry EXP (unix seconds) under KEY, with a
 * fresh random IV and nonce. Returns 0 with the base64url text in *RET (heap, the caller
 * frees it), -E2BIG when it would be longer than the proxy accepts,
 * -ENOMEM or -EIO. The plaintext (it holds the token) is wiped. */
int handoff_seal(const uint8_t key[HANDOFF_KEY_LEN], const char *token, const char *host, const char *path,
                 const char *bind, int64_t exp, char **ret);
