/* The auth server's part of the API (handlers-auth.c): token exchange,
 * refresh, logout, sessions, JWKS, signing-key rotation, credential token
 * issue, and the verification of access tokens for every other endpoint. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "api/request.h"
#include "auth/handoff.h"

#define AUTH_ACCESS_TTL_S 900            /* access tokens live 15 minutes */
#define AUTH_SESSION_TTL_S (12 * 3600)   /* a session (its refresh tokens) lives 12 hours */
#define AUTH_KEY_ROTATE_S (24 * 3600)    /* the signing key rotates daily */
#define AUTH_AUDIENCE "cloister"

/* The issuer (`iss`) of the access tokens this server signs, into BUF
 * ("https://api.<domain>", cut to SIZE). */
void api_auth_issuer(const api_server *srv, char *buf, size_t size);

/* Whether TOKEN has the shape of a JWS compact serialization (three
 * base64url parts), so authenticate() hands it to the access-token path. */
bool api_token_is_jwt(const char *token, size_t len);

/* Authenticates an access token: signature, expiry, issuer and audience,
 * then its session (revoked or expired sessions are refused at once), the
 * credential that opened the session and the user. On success fills *RET
 * (references owned by the caller) and returns 0; otherwise fills ERR
 * (401, or 403 for a disabled user) and returns -1. Verified tokens and
 * what they resolve to are cached per thread while the store is unchanged. */
int api_auth_access_token(api_server *srv, const char *token, size_t len, caller *ret, api_error *err);

/* Opens a Session for USER — through CREDENTIAL (a credential token login,
 * authMethod "token"), identity provider IDP (authMethod "oidc"; CREDENTIAL
 * NULL) or a passkey (authMethod "passkey": both NULL) — ending at EXPIRES_AT,
 * and signs its first tokens. Returns 0 with the token answer in *RET (new
 * reference: access_token, refresh_token, token_type, expires_in, session)
 * or -1 with ERR. */
int api_auth_open_session(api_request *r, const json_t *user, const json_t *credential, const char *idp,
                          int64_t expires_at, json_t **ret, api_error *err);

/* Sends BODY (a token answer, consumed) with no-store caching, then wipes
 * its strings. */
void api_auth_respond_tokens(api_request *r, api_route route, json_t *body);
/* Spends one token-endpoint attempt of the client's address; fills ERR with
 * a 429 (and sets Retry-After) and returns -1 when none is left. */
int api_auth_rate_check_ip(api_request *r, api_error *err);
/* Takes the login handoff HANDOFF (its sealed text) that this api's
 * replicas made: 0 the first time across every replica, -ENOENT when it was
 * taken already (or is unknown or expired), or a negative errno. */
int api_handoff_take(api_server *srv, const char *handoff);

/* The caller of REQ from its Authorization header (credential or access
 * token), as every non-public endpoint gets it; defined in handlers.c. */
int api_authenticate(api_server *srv, h2o_req_t *req, caller *ret, api_error *err);

/* Endpoint group handlers (see api_endpoint_groups in request.c). */
int api_auth_handle(api_request *r, const char *rest, size_t rest_len, api_error *err);
int api_auth_handle_sessions(api_request *r, const char *rest, size_t rest_len, api_error *err);
int api_auth_handle_jwks(api_request *r, const char *rest, size_t rest_len, api_error *err);
int api_auth_handle_keys(api_request *r, const char *rest, size_t rest_len, api_error *err);
int api_auth_handle_tokens(api_request *r, const char *rest, size_t rest_len, api_error *err);
/* /v1/auth/oidc/: {idp}/login, callback and exchange (handlers-oidc.c). */
int api_oidc_handle(api_request *r, const char *rest, size_t rest_len, api_error *err);
/* GET /v1/auth/login?rd=URL: where the proxy sends a browser without a
 * session; starts the login at the one identity provider or lists them
 * (handlers-oidc.c). */
int api_auth_login_handle(api_request *r, const char *rest, size_t rest_len, api_error *err);
/* A login link as the proxy issued it (auth/handoff.h): the return URL,
 * the browser's bind, and the link's expiry and mac as received. */
typedef struct login_link {
    login_rd rd;
    char bind[LOGIN_BIND_LEN + 1];
    char exp[16];
    char mac[LOGIN_MAC_LEN + 1];
} login_link;

/* The login link of R's query: ?rd= percent-decoded, parsed and checked to
 * be on a Service's host, then its bind, exp and mac checked to be the
 * proxy's and unexpired, into *RET; *RET_PRESENT says whether there was an
 * rd. Returns 0, or -1 with ERR (400 naming the problem; a link the proxy
 * did not issue is also an auth.login audit entry, and spends one of the
 * address's login attempts: 429 when none is left). Used by every browser
 * login (OIDC, passkeys). */
int api_login_link_from_query(api_request *r, login_link *ret, bool *ret_present, api_error *err);

/* How a browser login ends, whatever proved the user (handlers-oidc.c). */
typedef struct api_login_end {
    const char *method; /* "oidc" or "passkey": the audit entries' details.method */
    const char *idp;    /* the IdentityProvider of an OIDC login; NULL for a passkey */
    const char *rd;     /* the return URL of a login the proxy started (login_link), or NULL/"" */
    const char *bind;   /* with rd: the proxy's bind of that browser */
    bool json;          /* answer 200 {"redirect": URL} (a page's fetch) instead of a 302 */
} api_login_end;

/* Opens the Session of a login of USER that END describes (403 for a
 * disabled user), audited as auth.login. Returns 0 with the token answer in
 * *RET_TOKENS (new reference), or -1 with ERR. */
int api_login_open(api_request *r, const json_t *user, const api_login_end *end, json_t **ret_tokens, api_error *err);
/* Answers R with the end of a browser login of USER: with END->rd, the
 * sealed handoff to the service host (auth.handoff); otherwise the API
 * host's cloister_session cookie and {user, session, expires_in}. TOKENS
 * (from api_login_open) is wiped and released. Returns 0, or -1 with ERR. */
int api_login_send(api_request *r, const json_t *user, const api_login_end *end, json_t *tokens, api_error *err);

/* The end_session_endpoint of identity provider IDP with our client_id, for
 * the browser to end its session there too (heap URL in *RET), from what
 * this process discovered of it (no network call: safe on the loop);
 * -ENOENT when the provider has none or was not discovered here. */
int api_oidc_end_session_url(api_server *srv, const char *idp, char **ret);

/* Identities bind by uid (auth/session.h). A write of a Credential (OP,
 * with the client's document) has the store record status.userUid from the
 * User its spec.user names, in the same transaction; the write fails with
 * -ENOLINK when that user does not exist. Other kinds are left alone. */
void api_auth_bind_credential(store_op *op);
/* The input of a DELETE of KIND/NAME into *RET (new reference): {"name",
 * "dependents": [[kind, name], ...]}, the documents that die with it — a
 * User's Credentials and Sessions, a Credential's Sessions — to delete in
 * the same transaction. Returns 0 or -1 with ERR. */
int api_auth_delete_input(api_server *srv, const char *kind, const char *name, json_t **ret, api_error *err);
/* Fills OPS (room for every dependent) with the deletions of the dependents
 * of INPUT (from api_auth_delete_input(); borrowed for the life of the
 * ops); returns how many. */
size_t api_auth_dependent_ops(const json_t *input, store_op *ops);
