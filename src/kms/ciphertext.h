/* Self-describing KMS ciphertexts and encryption contexts.
 *
 * A ciphertext (format 1) is
 *     "clk" 0x01 | name length (1 byte) | key name | key version (u32, big
 *     endian) | nonce (12) | encrypted data | tag (16)
 * and everything before the nonce is authenticated together with the
 * encryption context: AAD = header | encoded context. The context is a set
 * of K=V pairs, encoded sorted by key as u8 len | key | u16 len | value, so
 * the same pairs in any order give the same AAD. */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/crypto.h"

#define KMS_MAGIC "clk\x01"
#define KMS_MAGIC_LEN 4
#define KMS_KEY_NAME_MAX 64
#define KMS_PLAINTEXT_MAX (64 * 1024)
#define KMS_CONTEXT_PAIRS_MAX 16
#define KMS_CONTEXT_KEY_MAX 64
#define KMS_CONTEXT_VALUE_MAX 256
#define KMS_CONTEXT_ENCODED_MAX (KMS_CONTEXT_PAIRS_MAX * (3 + KMS_CONTEXT_KEY_MAX + KMS_CONTEXT_VALUE_MAX))
#define KMS_HEADER_MAX (KMS_MAGIC_LEN + 1 + KMS_KEY_NAME_MAX + 4)
#define KMS_CIPHERTEXT_OVERHEAD_MAX (KMS_HEADER_MAX + KMS_NONCE_BYTES + KMS_TAG_BYTES)
#define KMS_CIPHERTEXT_MAX (KMS_PLAINTEXT_MAX + KMS_CIPHERTEXT_OVERHEAD_MAX)

/* A decoded ciphertext: pointers into the buffer it was decoded from. */
typedef struct kms_ciphertext {
    char key[KMS_KEY_NAME_MAX + 1];
    uint32_t version;
    const uint8_t *header; /* the authenticated header */
    size_t header_len;
    const uint8_t *nonce;
    const uint8_t *data;
    size_t data_len;
    const uint8_t *tag;
} kms_ciphertext;

/* Whether NAME can name a key in a ciphertext: 1..64 of [a-z0-9_-]. */
bool kms_key_name_valid(const char *name);

/* Decodes IN strictly: magic, a valid name, a version >= 1, room for nonce
 * and tag, at most KMS_CIPHERTEXT_MAX bytes. Returns 0 or -EINVAL / -E2BIG. */
int kms_ciphertext_decode(const uint8_t *in, size_t n, kms_ciphertext *ret);

/* Writes the header of a ciphertext under NAME/VERSION to OUT (at least
 * KMS_HEADER_MAX bytes); returns its length. NAME must be valid. */
size_t kms_header_encode(const char *name, uint32_t version, uint8_t *out);

/* Encodes CONTEXT (a JSON object of strings, or NULL for none) into OUT (at
 * least KMS_CONTEXT_ENCODED_MAX bytes). Returns 0 with *RET_LEN set, or
 * -EINVAL (not an object of strings, a key outside [A-Za-z0-9._:/-], a NUL)
 * or -E2BIG (more than the caps). */
int kms_context_encode(const json_t *context, uint8_t *out, size_t *ret_len);
