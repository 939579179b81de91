/* The token signing keys of the auth server: ES256 keys with kids, the
 * newest signs, older ones keep verifying (and stay in the JWKS) until every
 * token they signed has expired. Keys rotate on a schedule (checked whenever
 * a token is issued) and on demand.
 *
 * The keys are kept in one JSON file, mode 0600 in a 0700 directory of the
 * data dir, written atomically. (They move to KMS envelope ciphertexts once
 * the KMS role exists.) Thread-safe: readers share a lock, rotation takes it
 * exclusively. */
#pragma once

#include <jansson.h>
#include <stdint.h>

#include "auth/jwt.h"

#define KEYRING_MAX_KEYS 16

typedef struct auth_keyring auth_keyring;

/* Opens the key file at PATH, creating it (with a first key) when absent.
 * A key signs for ROTATE_EVERY seconds and verifies for RETAIN seconds more
 * (at least the longest token lifetime). Returns 0 with *RET or a negative
 * errno (-EPERM when the file is readable by others, -EINVAL when malformed). */
int auth_keyring_open(const char *path, int64_t rotate_every, int64_t retain, auth_keyring **ret);
/* Wipes every key; accepts NULL. */
void auth_keyring_free(auth_keyring *kr);

/* Signs CLAIMS with the current key, rotating first when it is due.
 * Returns 0 with *RET (heap) or a negative errno. */
int auth_keyring_sign(auth_keyring *kr, const json_t *claims, char **ret);
/* jwt_verify() against the keys still valid at EXPECT->now. */
int auth_keyring_verify(auth_keyring *kr, const char *token, size_t len, const jwt_expect *expect,
                        json_t **ret_claims);
/* Same through CACHE (the caller's own, see jwt_cache). */
int auth_keyring_verify_cached(auth_keyring *kr, jwt_cache *cache, const char *token, size_t len,
                               const jwt_expect *expect, json_t **ret_claims);
/* Makes a new current key now and saves the file. Writes the new kid into
 * RET_KID (JWT_KID_MAX + 1 bytes). Returns 0 or a negative errno. */
int auth_keyring_rotate(auth_keyring *kr, char *ret_kid);
/* The JWKS document {"keys": [...]} of the public keys still valid (new
 * reference), or NULL on allocation failure. */
json_t *auth_keyring_jwks(auth_keyring *kr);
