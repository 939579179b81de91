/* The token signing keys of the api role, kept in the store so that every
 * api replica on one database signs and verifies with the same keys: a token
 * minted by one verifies on every other, and each serves the same JWKS.
 *
 * One internal document (kind SigningKeyring, name "tokens"; no API route
 * reads it) holds the keys, each private JWK sealed with AES-256-GCM under a
 * key derived (HKDF-SHA256) from the api role's login handoff key, the one
 * secret every api replica already shares (docs/deployment.md, "Several
 * replicas"). A rotation replaces the document compare-and-swap on its
 * resourceVersion, so two replicas rotating at once keep one result. */
#pragma once

#include <stdint.h>

#include "api/sealed.h"
#include "auth/handoff.h"
#include "auth/keyring.h"
#include "store/store.h"

#define SIGNING_KEYS_KIND "SigningKeyring"
#define SIGNING_KEYS_NAME "tokens"

typedef struct api_signing_keys {
    store *store;
    uint8_t seal_key[API_SEAL_KEY_LEN];
    char legacy_path[4300]; /* the signing-keys.json of an earlier release, imported once */
} api_signing_keys;

/* Prepares K to keep the keys in store S (borrowed), sealed under a key
 * derived from HANDOFF_KEY; LEGACY_PATH names a key file of an earlier
 * release whose keys are taken over when the store holds none (so tokens
 * already issued keep verifying). Returns 0 or a negative errno. */
int api_signing_keys_init(api_signing_keys *k, store *s, const uint8_t handoff_key[HANDOFF_KEY_LEN],
                          const char *legacy_path);
/* Wipes K's seal key. */
void api_signing_keys_done(api_signing_keys *k);
/* The keyring backing that reads and writes K's document (shared). */
auth_keyring_backing api_signing_keys_backing(api_signing_keys *k);
