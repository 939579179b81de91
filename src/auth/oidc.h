/* OpenID Connect relying party: provider discovery, JWKS, PKCE, and ID
 * token validation (signature through jwt.h with the provider's keys, then
 * iss, aud, azp, exp, iat and nonce). HTTP goes through libcurl, HTTPS
 * only, with caps on time and size; a provider may be trusted through its
 * own CA bundle (PEM) instead of the system roots. */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/jwt.h"

#define OIDC_HTTP_MAX (1024 * 1024) /* largest discovery, JWKS or token answer */
#define OIDC_RANDOM_LEN 43          /* base64url of 32 random bytes: state, nonce, PKCE verifier */
#define OIDC_MAX_KEYS 16

/* What discovery says about a provider (heap strings; end_session may be NULL). */
typedef struct oidc_metadata {
    char *issuer;
    char *authorization_endpoint;
    char *token_endpoint;
    char *jwks_uri;
    char *end_session_endpoint;
} oidc_metadata;

/* Frees M's strings; accepts an empty one. */
void oidc_metadata_done(oidc_metadata *m);
/* Reads a discovery document DOC for the provider ISSUER: its issuer must be
 * exactly ISSUER and its endpoints https URLs. Returns 0 with *RET filled,
 * -EBADMSG otherwise, or -ENOMEM. */
int oidc_metadata_parse(const json_t *doc, const char *issuer, oidc_metadata *ret);

/* GET URL (or POST FORM, application/x-www-form-urlencoded, when FORM is not
 * NULL, with HTTP Basic client authentication when CLIENT_ID is not NULL) and
 * parse the JSON answer. CA_PEM (may be NULL: system roots) is the trust
 * anchor. Returns 0 with the document in *RET_DOC and the HTTP status in
 * *RET_STATUS (any status whose body is JSON), -EIO when there is no usable
 * answer, -EBADMSG when it is not JSON, -E2BIG over OIDC_HTTP_MAX. */
int oidc_http_json(const char *url, const char *ca_pem, const char *form, const char *client_id,
                   const char *client_secret, json_t **ret_doc, long *ret_status);

/* The signature keys of a JWKS document (keys without a kid, for
 * encryption, or of unsupported types are skipped; RSA keys without alg are
 * taken as RS256). Returns the number of keys put in KEYS (capacity
 * OIDC_MAX_KEYS; the caller frees each), or -EBADMSG when none is usable. */
int oidc_jwks_parse(const json_t *jwks, jwt_key **keys);

/* A fresh random OIDC_RANDOM_LEN-character base64url string into OUT. */
int oidc_random(char out[OIDC_RANDOM_LEN + 1]);
/* The S256 PKCE challenge of VERIFIER into OUT (base64url of its SHA-256). */
void oidc_pkce_challenge(const char *verifier, char out[OIDC_RANDOM_LEN + 1]);

typedef struct oidc_expect {
    const char *issuer;
    const char *client_id;
    const char *nonce;
    int64_t now;
} oidc_expect;

/* Validates an ID token: jwt_verify() against KEYS with iss = EXPECT->issuer
 * and aud containing the client id, then iat and sub present, azp equal to
 * the client id when present (and required when there are several
 * audiences), and nonce equal to EXPECT->nonce. Returns 0 with the claims
 * (new reference), the errors of jwt_verify(), -EBADMSG (no sub or iat),
 * -EPERM (azp) or -EPROTO (nonce). */
int oidc_id_token_verify(const char *token, size_t len, jwt_key *const *keys, size_t n_keys,
                         const oidc_expect *expect, json_t **ret_claims);
/* A short reason for an error of oidc_id_token_verify(). */
const char *oidc_strerror(int r);
