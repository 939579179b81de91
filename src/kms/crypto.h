/* The KMS's primitives: locked memory for key material, AES-256-GCM and
 * HKDF-SHA256 on OpenSSL. Nothing here logs or keeps state beyond the
 * locked arena. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KMS_KEY_BYTES 32
#define KMS_NONCE_BYTES 12
#define KMS_TAG_BYTES 16
#define SECMEM_SLOT_BYTES 256 /* the largest secret secmem_alloc() hands out */

/* A zeroed buffer of N bytes (at most SECMEM_SLOT_BYTES) in an arena that is
 * locked in RAM (mlock) and left out of core dumps (MADV_DONTDUMP). NULL
 * when the arena is full or N is too large. */
void *secmem_alloc(size_t n);
/* Wipes and returns a buffer from secmem_alloc(); accepts NULL. */
void secmem_free(void *p);
/* Whether the arena could be locked in RAM (false when RLIMIT_MEMLOCK forbids it). */
bool secmem_locked(void);

/* AES-256-GCM with a 96-bit nonce and a 128-bit tag. Seal writes N bytes to
 * OUT and the tag to TAG; open verifies TAG and writes N bytes to OUT, or
 * returns -EBADMSG (OUT is then wiped). -EIO when OpenSSL fails. */
int aead_seal(const uint8_t key[KMS_KEY_BYTES], const uint8_t nonce[KMS_NONCE_BYTES], const uint8_t *aad,
              size_t aad_len, const uint8_t *in, size_t n, uint8_t *out, uint8_t tag[KMS_TAG_BYTES]);
int aead_open(const uint8_t key[KMS_KEY_BYTES], const uint8_t nonce[KMS_NONCE_BYTES], const uint8_t *aad,
              size_t aad_len, const uint8_t *in, size_t n, const uint8_t tag[KMS_TAG_BYTES], uint8_t *out);
/* The same with any IV length and tag length (for test vectors only). */
int aead_open_ex(const uint8_t key[KMS_KEY_BYTES], const uint8_t *iv, size_t iv_len, const uint8_t *aad,
                 size_t aad_len, const uint8_t *in, size_t n, const uint8_t *tag, size_t tag_len, uint8_t *out);

/* HKDF-SHA256 (RFC 5869) of IKM with SALT (may be empty) and INFO into OUT
 * (at most 255 * 32 bytes). Returns 0, -EINVAL or -EIO. */
int hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len, const uint8_t *info,
                size_t info_len, uint8_t *out, size_t out_len);
