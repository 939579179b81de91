/* The token signing keys of the auth server: ES256 keys with kids, the
 * newest signs, older ones keep verifying (and stay in the JWKS) until every
 * token they signed has expired. Keys rotate on a schedule (checked whenever
 * a token is issued) and on demand.
 *
 * The keys are kept by a backing: one JSON file, mode 0600 in a 0700
 * directory of the data dir, written atomically (auth_keyring_open()), or
 * the caller's (auth_keyring_open_backed(): the api role keeps them sealed
 * in the store, shared by its replicas, src/api/signing-keys.c). A shared
 * keyring is read again (its version first) when a token names a kid it
 * does not know and, for the JWKS, at most once a second; a rotation is saved only if no other
 * replica saved first (else theirs is taken). Thread-safe: readers share a
 * lock, rotation takes it exclusively. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth/jwt.h"

#define KEYRING_MAX_KEYS 16

typedef struct auth_keyring auth_keyring;

/* Where a keyring keeps its keys. The saved form is a JSON array
 * [{created, retired, jwk}] oldest first, jwk holding the private key. */
typedef struct auth_keyring_backing {
    /* The saved keys (new reference; the keyring wipes and releases it) and
     * their version: 0, -ENOENT when none are saved, or a negative errno.
     * When the saved version is KNOWN (not 0), 0 with *RET_KEYS NULL. */
    int (*load)(void *userdata, int64_t known, json_t **ret_keys, int64_t *ret_version);
    /* Saves KEYS (borrowed) if the saved version is still EXPECTED (0: none
     * saved yet); writes the new version. 0, -ESTALE when another saved
     * first, or a negative errno. */
    int (*save)(void *userdata, const json_t *keys, int64_t expected, int64_t *ret_version);
    void *userdata; /* the caller's; outlives the keyring */
    bool shared;    /* other processes save too: read again as described above */
} auth_keyring_backing;

/* Opens the key file at PATH, creating it (with a first key) when absent.
 * A key signs for ROTATE_EVERY seconds and verifies for RETAIN seconds more
 * (at least the longest token lifetime). Returns 0 with *RET or a negative
 * errno (-EPERM when the file is readable by others, -EINVAL when malformed). */
int auth_keyring_open(const char *path, int64_t rotate_every, int64_t retain, auth_keyring **ret);
/* Opens the keys BACKING (copied) keeps, saving a first key when it has
 * none (a replica that saved one first wins). Otherwise as above. */
int auth_keyring_open_backed(const auth_keyring_backing *backing, int64_t rotate_every, int64_t retain,
                             auth_keyring **ret);
/* Reads the key file at PATH in the saved form (new reference) into
 * *RET_KEYS: 0, -ENOENT, -EPERM when others may read it, -EINVAL. */
int auth_keyring_file_read(const char *path, json_t **ret_keys);
/* Wipes the private JWKs of KEYS (the saved form) and releases it; accepts NULL. */
void auth_keyring_saved_free(json_t *keys);
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
/* Makes a new current key now and saves it. Writes the new kid into
 * RET_KID (JWT_KID_MAX + 1 bytes). Returns 0 or a negative errno. */
int auth_keyring_rotate(auth_keyring *kr, char *ret_kid);
/* The JWKS document {"keys": [...]} of the public keys still valid (new
 * reference), or NULL on allocation failure. */
json_t *auth_keyring_jwks(auth_keyring *kr);
