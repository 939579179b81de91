/* JSON Web Tokens: JWS compact serialization signed with ES256 (our own
 * tokens), and verification of ES256, RS256, PS256 and HS256 tokens from
 * other issuers (OIDC identity providers).
 *
 * The algorithm always comes from the key, never from the token: a key is
 * imported with exactly one algorithm, and a token whose header names any
 * other ("none", HS256 with an EC key, ...) is refused before any
 * cryptography runs. Parsing is strict: exactly three parts, base64url
 * without padding and with zero unused bits, JSON objects without duplicate
 * members, no `crit` header, and a cap on the token's size. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWT_MAX_LEN 8192        /* longest compact token accepted */
#define JWT_KID_MAX 128         /* longest key id */
#define JWT_DEFAULT_LEEWAY_S 30 /* clock skew allowed on exp, nbf and iat */

typedef enum jwt_alg {
    JWT_ALG_NONE_, /* not an algorithm: "no fallback" for jwt_key_from_jwk */
    JWT_ALG_ES256,
    JWT_ALG_RS256,
    JWT_ALG_PS256,
    JWT_ALG_HS256,
} jwt_alg;

typedef struct jwt_key jwt_key;

/* Imports a JWK (public, or private for signing keys) of JSON text. Its
 * algorithm is the JWK's "alg" member, else FALLBACK, else ES256 for an EC
 * P-256 key; a key that fits no supported algorithm, RSA under 2048 bits,
 * an HMAC key under 32 bytes, `use` other than "sig" or `key_ops` without
 * "verify" are refused with -EINVAL. Returns 0 with *RET (freed with
 * jwt_key_free()) or a negative errno. */
int jwt_key_from_jwk(const char *json, size_t len, jwt_alg fallback, jwt_key **ret);
/* Same from a parsed JWK object (borrowed). */
int jwt_key_from_json(const json_t *jwk, jwt_alg fallback, jwt_key **ret);
/* A fresh ES256 signing key with key id KID. */
int jwt_key_generate_es256(const char *kid, jwt_key **ret);
/* The JWK of KEY as a new JSON object: public members only unless PRIVATE
 * (and KEY can sign). NULL on allocation failure. */
json_t *jwt_key_to_json(const jwt_key *key, bool private_part);
const char *jwt_key_kid(const jwt_key *key);
jwt_alg jwt_key_alg(const jwt_key *key);
/* Wipes and frees KEY; accepts NULL. */
void jwt_key_free(jwt_key *key);

/* Signs CLAIMS (borrowed, serialized compactly) with KEY, whose kid goes in
 * the header. Returns 0 with *RET a heap string the caller frees, -EINVAL
 * when KEY cannot sign, or another negative errno. */
int jwt_sign(const jwt_key *key, const json_t *claims, char **ret);

/* Verifies the JWS compact serialization TOKEN (LEN bytes) with the key of
 * KEYS whose kid the header names (or the only key when the header has no
 * kid and N_KEYS is 1 and !REQUIRE_KID). On success returns 0 with the
 * decoded payload in *RET_PAYLOAD (heap, NUL-terminated, caller frees) and
 * its length in *RET_LEN. Errors: -EMSGSIZE (too large), -EBADMSG
 * (malformed), -ENOKEY (unknown kid), -EPROTONOSUPPORT (the header's alg is
 * not the key's), -EKEYREJECTED (bad signature), -ENOMEM. */
int jws_verify(const char *token, size_t len, jwt_key *const *keys, size_t n_keys, bool require_kid,
               char **ret_payload, size_t *ret_len);

/* What a JWT must satisfy besides its signature. */
typedef struct jwt_expect {
    const char *issuer;   /* iss must equal it (required) */
    const char *audience; /* aud must be it or contain it (required) */
    int64_t now;          /* seconds since the epoch */
    int64_t leeway;       /* allowed clock skew in seconds */
} jwt_expect;

/* Verifies a JWT: jws_verify() with a kid required, then the claims: a JSON
 * object with integer exp (required), nbf and iat (optional), iss and aud as
 * EXPECT says. Returns 0 with the claims in *RET_CLAIMS (new reference), the
 * errors of jws_verify(), -EKEYEXPIRED (expired), -ETIME (not yet valid, or
 * issued in the future), -EACCES (wrong issuer), -EPERM (wrong audience). */
int jwt_verify(const char *token, size_t len, jwt_key *const *keys, size_t n_keys, const jwt_expect *expect,
               json_t **ret_claims);

/* A short reason for an error of jwt_verify(), for API error messages. */
const char *jwt_strerror(int r);

/* A cache of verified tokens, keyed by the SHA-256 of the token and kept
 * until the token's exp. Not thread-safe: one per thread. Only tokens
 * verified against one jwt_expect configuration may share a cache. */
typedef struct jwt_cache jwt_cache;

/* A cache of SLOTS entries (rounded up to a power of two, 2 to 65536), in
 * sets of two: a new token evicts the one of its set that expires first. */
jwt_cache *jwt_cache_new(size_t slots);
void jwt_cache_free(jwt_cache *c);
/* The claims cached for TOKEN (new reference) while NOW < exp, else NULL. */
json_t *jwt_cache_get(jwt_cache *c, const char *token, size_t len, int64_t now);
/* Remembers CLAIMS (borrowed) of the verified TOKEN until EXP. */
void jwt_cache_put(jwt_cache *c, const char *token, size_t len, const json_t *claims, int64_t exp);
/* Verifies TOKEN through the cache: a hit skips the signature; a miss runs
 * jwt_verify() and caches the result. Same returns as jwt_verify(). */
int jwt_verify_cached(jwt_cache *c, const char *token, size_t len, jwt_key *const *keys, size_t n_keys,
                      const jwt_expect *expect, json_t **ret_claims);
