/* WebAuthn (W3C Web Authentication Level 2/3) relying-party checks for
 * passkeys, done here in C: clientDataJSON, authenticatorData, the
 * attestationObject of a registration (formats "none" and "packed"
 * self-attestation) and ES256 assertion signatures. ES256 (COSE alg -7,
 * EC2 P-256) is the only algorithm accepted. Every input has a size cap,
 * checked before anything else; CBOR is scanned (basic/cbor-scan.h)
 * before libcbor loads it. Nothing here keeps state: the caller keeps the
 * challenges (single use, short-lived) and the stored credentials. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WEBAUTHN_CHALLENGE_LEN 32          /* random bytes of a challenge */
#define WEBAUTHN_CLIENT_DATA_MAX 4096      /* bytes of clientDataJSON */
#define WEBAUTHN_AUTH_DATA_MAX 2048        /* bytes of authenticatorData */
#define WEBAUTHN_ATTESTATION_MAX 8192      /* bytes of an attestationObject */
#define WEBAUTHN_CREDENTIAL_ID_MAX 255     /* bytes of a credential id we store */
#define WEBAUTHN_SIGNATURE_MAX 72          /* DER ECDSA P-256 */
#define WEBAUTHN_PUBLIC_KEY_LEN 65         /* uncompressed P-256 point: 04 || x || y */
#define WEBAUTHN_ORIGIN_MAX 255

/* authenticatorData flags (W3C WebAuthn §6.1). */
#define WEBAUTHN_FLAG_UP 0x01 /* user present */
#define WEBAUTHN_FLAG_UV 0x04 /* user verified */
#define WEBAUTHN_FLAG_BE 0x08 /* backup eligible */
#define WEBAUTHN_FLAG_BS 0x10 /* backed up */
#define WEBAUTHN_FLAG_AT 0x40 /* attested credential data included */
#define WEBAUTHN_FLAG_ED 0x80 /* extensions included */

/* What a ceremony must match. */
typedef struct webauthn_expect {
    const char *origin;                            /* exactly, e.g. "https://api.example.com:7443" */
    const char *rp_id;                             /* its SHA-256 must be the rpIdHash */
    const uint8_t *challenge;                      /* WEBAUTHN_CHALLENGE_LEN bytes */
    bool require_uv;                               /* refuse without the UV flag */
} webauthn_expect;

/* A credential made by a registration. */
typedef struct webauthn_credential {
    uint8_t id[WEBAUTHN_CREDENTIAL_ID_MAX];
    size_t id_len;
    uint8_t public_key[WEBAUTHN_PUBLIC_KEY_LEN];
    uint32_t sign_count;
    uint8_t flags;
    uint8_t aaguid[16];
    char format[8]; /* "none" or "packed" */
} webauthn_credential;

/* The challenge that clientDataJSON (LEN bytes) names, decoded into RET,
 * so the caller can find the ceremony it belongs to. Returns 0, or
 * -EBADMSG with *WHY (static text) when the JSON is malformed or over
 * WEBAUTHN_CLIENT_DATA_MAX, or its challenge is not base64url of
 * WEBAUTHN_CHALLENGE_LEN bytes. */
int webauthn_client_data_challenge(const uint8_t *json, size_t len, uint8_t ret[WEBAUTHN_CHALLENGE_LEN],
                                   const char **why);

/* Verifies a registration (navigator.credentials.create()): CLIENT_DATA
 * (type "webauthn.create", challenge, origin, crossOrigin), then the
 * ATTESTATION object (fmt "none" with an empty attStmt, or "packed"
 * self-attestation with alg -7 and a signature by the new key; a packed
 * statement with a certificate chain is refused), its authenticatorData
 * (rpIdHash, UP, UV when required, attested credential data holding an
 * ES256 COSE_Key on P-256). Returns 0 with *RET filled, or a negative
 * errno with *WHY (static text): -E2BIG over a cap, -EBADMSG malformed,
 * -EPERM a check failed, -ENOTSUP another algorithm or format. */
int webauthn_register_verify(const uint8_t *client_data, size_t client_data_len, const uint8_t *attestation,
                             size_t attestation_len, const webauthn_expect *ex, webauthn_credential *ret,
                             const char **why);

/* Verifies an assertion (navigator.credentials.get()) by a credential whose
 * PUBLIC_KEY and stored SIGN_COUNT the caller holds: CLIENT_DATA (type
 * "webauthn.get", challenge, origin, crossOrigin), AUTH_DATA (rpIdHash, UP,
 * UV when required; no attested credential data), the DER ECDSA
 * SIGNATURE over AUTH_DATA || SHA-256(CLIENT_DATA), then the counter: when
 * either the stored or the new count is non-zero, the new one must be
 * greater (a cloned authenticator otherwise: -ESTALE). Returns 0 with the
 * new count in *RET_SIGN_COUNT, or a negative errno with *WHY as above. */
int webauthn_assert_verify(const uint8_t *client_data, size_t client_data_len, const uint8_t *auth_data,
                           size_t auth_data_len, const uint8_t *signature, size_t signature_len,
                           const webauthn_expect *ex, const uint8_t public_key[WEBAUTHN_PUBLIC_KEY_LEN],
                           uint32_t sign_count, uint32_t *ret_sign_count, const char **why);
