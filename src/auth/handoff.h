/* The browser login, both halves: the links the proxy issues to start a
 * login, and the handoff the API seals at its end for the proxy to open.
 *
 * A login link: when a browser without a session reaches a service host,
 * the proxy sends it to the API's /v1/auth/login with rd (its URL), bind
 * (hex SHA-256 of a random cloister_login cookie the proxy sets in that
 * browser), exp (unix seconds, LOGIN_LINK_TTL_S ahead) and mac, an
 * HMAC-SHA256 over (rd, bind, exp) under a key derived from the handoff key
 * (HKDF-SHA256, its own label: the MAC key is not the sealing key). The API
 * starts a login with rd only for a valid, unexpired mac: an rd and bind
 * are the proxy's, never chosen by whoever sends the link.
 *
 * A handoff: after the OIDC login the API sends the browser back to rd's
 * host's /.cloister/callback with the session's access token sealed for
 * the proxy, so the service host alone sets its session cookie. It is
 * base64url (no padding) of IV(12) || AES-256-GCM ciphertext || tag(16),
 * with AAD "cloister-handoff-v1", under the 32-byte handoff key the api
 * role holds and pushes to the proxy on its configuration stream. The
 * plaintext is {"token", "host", "path", "exp", "nonce", "bind"}. The proxy
 * accepts it only from the browser holding the cloister_login cookie whose
 * hash is bind, so a handoff of someone else's login cannot be pushed into
 * a victim's browser (login CSRF). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define HANDOFF_KEY_LEN 32
#define HANDOFF_TTL_S 60          /* how long a handoff is good for */
#define HANDOFF_TTL_MAX_S 120     /* the longest the proxy accepts */
#define HANDOFF_ENCODED_MAX 8192  /* the proxy refuses longer handoffs */
#define LOGIN_RD_MAX 2048         /* bytes of a decoded rd URL */
#define LOGIN_RD_HOST_MAX 253     /* bytes of its host name */
#define LOGIN_BIND_LEN 64         /* hex SHA-256 of the proxy's login cookie */
#define LOGIN_LINK_TTL_S 600      /* how long a login link the proxy issued starts a login */
#define LOGIN_MAC_LEN 64          /* hex HMAC-SHA256 of a login link */
#define HANDOFF_NONCE_HEX_MAX 32  /* hex digits of a handoff's nonce */

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

/* The bind of login cookie value COOKIE (LEN bytes): its hex SHA-256 into
 * RET. */
void login_bind_of(const char *cookie, size_t len, char ret[LOGIN_BIND_LEN + 1]);

/* The mac of the login link (URL, BIND, EXP) under the key derived from
 * KEY: URL is the parsed rd's login_rd.url (so the API, which parses the
 * rd it is sent, checks the same bytes), BIND a valid bind. Writes
 * LOGIN_MAC_LEN hex digits into RET and returns 0, or -EINVAL (bad bind) or
 * -EIO. */
int login_link_mac(const uint8_t key[HANDOFF_KEY_LEN], const char *url, const char *bind, int64_t exp,
                   char ret[LOGIN_MAC_LEN + 1]);

/* Checks a login link at time NOW: EXP_TEXT (decimal unix seconds) and MAC
 * as received, over URL (login_rd.url of the received rd) and BIND. Returns
 * 0 when the proxy issued it and it has not expired; otherwise -EINVAL
 * (missing or malformed), -EKEYREJECTED (not issued by the proxy: any
 * part changed) or -ETIMEDOUT (expired), with *WHY pointing at a static
 * sentence. The mac is compared in constant time. */
int login_link_check(const uint8_t key[HANDOFF_KEY_LEN], const char *url, const char *bind, const char *exp_text,
                     const char *mac, int64_t now, const char **why);

/* Seals a handoff for TOKEN (the access token), HOST (the authority the
 * browser will send), PATH (where the proxy redirects after setting the
 * cookie), BIND (see above) and expiry EXP (unix seconds) under KEY, with a
 * fresh random IV and nonce. Returns 0 with the base64url text in *RET (heap, the caller
 * frees it), -E2BIG when it would be longer than the proxy accepts,
 * -ENOMEM or -EIO. The plaintext (it holds the token) is wiped. */
int handoff_seal(const uint8_t key[HANDOFF_KEY_LEN], const char *token, const char *host, const char *path,
                 const char *bind, int64_t exp, char **ret);

/* An opened handoff: every member checked present and well formed; the
 * strings live in DOC. */
typedef struct handoff_claims {
    json_t *doc;
    const char *token; /* header-safe, no ';': it goes in a Set-Cookie */
    const char *host;  /* the authority it was sealed for */
    const char *path;  /* starts with one '/', printable ASCII without spaces */
    const char *nonce; /* at most HANDOFF_NONCE_HEX_MAX characters */
    const char *bind;  /* login_bind_valid() */
    int64_t exp;
} handoff_claims;

/* Opens the handoff ENC (LEN bytes) sealed under KEY into *RET (release it
 * with handoff_claims_done()). Returns 0, -EBADMSG when it is missing,
 * malformed, too long or not sealed under KEY, or -EINVAL when its
 * plaintext lacks a member or holds one that could not go in a header;
 * *WHY (when not NULL) names the problem. The decrypted text is wiped. */
int handoff_open(const uint8_t key[HANDOFF_KEY_LEN], const char *enc, size_t len, handoff_claims *ret,
                 const char **why);

/* Releases C's document, its access token wiped first; C may be zeroed. */
void handoff_claims_done(handoff_claims *c);
