/* Small secrets the api replicas keep in the store (the token signing keys,
 * in-flight logins), sealed: a JSON value serialized, then AES-256-GCM under
 * a key derived (HKDF-SHA256, one label per use) from the api role's handoff
 * key, which every replica shares (docs/deployment.md, "Several replicas").
 * The sealed form is base64url of nonce(12) || ciphertext || tag(16); the
 * additional data binds it to what it is for (a kid, a record's name). */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/handoff.h"

#define API_SEAL_KEY_LEN 32

/* The sealing key for LABEL into RET. Returns 0 or a negative errno. */
int api_seal_key(const uint8_t handoff_key[HANDOFF_KEY_LEN], const char *label, uint8_t ret[API_SEAL_KEY_LEN]);
/* Seals V (borrowed; at most MAX bytes serialized, else -EFBIG) under KEY
 * bound to AAD: the sealed form (heap) into *RET. The plaintext copy is
 * wiped. Returns 0 or a negative errno. */
int api_seal_json(const uint8_t key[API_SEAL_KEY_LEN], const char *aad, const json_t *v, size_t max, char **ret);
/* Opens SEALED (at most MAX plaintext bytes) under KEY and AAD into a new
 * reference *RET. Returns 0, -EBADMSG when it was not sealed under that key
 * for that AAD, -EINVAL when malformed, or a negative errno. The caller
 * wipes what it holds secret in *RET. */
int api_open_json(const uint8_t key[API_SEAL_KEY_LEN], const char *aad, const char *sealed, size_t max,
                  json_t **ret);
