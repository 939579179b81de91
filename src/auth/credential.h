/* Credential tokens: "clst_" followed by 43 URL-safe base64 characters (256
 * random bits). The prefix lets secret scanners recognise a leaked token. Only
 * the SHA-256 digest of a token is stored; the store finds a credential by a
 * lookup key made of the digest's first 96 bits, and the whole digest is then
 * compared in constant time. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CREDENTIAL_TOKEN_PREFIX "clst_"
#define CREDENTIAL_TOKEN_SECRET_LEN 43 /* base64url of 32 bytes */
#define CREDENTIAL_TOKEN_LEN (sizeof(CREDENTIAL_TOKEN_PREFIX) - 1 + CREDENTIAL_TOKEN_SECRET_LEN)
#define CREDENTIAL_DIGEST_HEX_LEN 64
#define CREDENTIAL_LOOKUP_KEY_LEN (sizeof("clst:") - 1 + 24)

/* Writes a fresh random token (CREDENTIAL_TOKEN_LEN chars + NUL) into OUT. */
int credential_token_generate(char out[CREDENTIAL_TOKEN_LEN + 1]);
/* True when TOKEN (LEN bytes) has the shape of a credential token. */
bool credential_token_well_formed(const char *token, size_t len);
/* Hex SHA-256 digest of TOKEN into DIGEST_HEX and its lookup key into LOOKUP_KEY. */
void credential_token_digest(const char *token, size_t len, char digest_hex[CREDENTIAL_DIGEST_HEX_LEN + 1],
                             char lookup_key[CREDENTIAL_LOOKUP_KEY_LEN + 1]);
/* Constant-time comparison of two hex digests. */
bool credential_digest_equal(const char *a, const char *b);
