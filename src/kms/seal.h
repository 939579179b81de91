/* Sealing of the root key: the 256-bit key every key-ring key is wrapped
 * under, never written in the clear.
 *
 * Modes (the file root.json says which one sealed it):
 *   passphrase  Argon2id(passphrase, salt) -> AES-256-GCM wrap
 *   pkcs11      wrapped by an AES key that never leaves a PKCS#11 token
 *               (module path, slot, PIN)
 *   dev         wrapped by a random key kept in a 0600 file beside it, so the
 *               KMS unseals itself: for development only
 * The first unseal of an uninitialised KMS creates the root key. A wrong
 * passphrase or PIN is refused and changes nothing on disk. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/crypto.h"
#include "kms/keyring.h"

#define KMS_SECRET_MAX 1024        /* passphrase or PIN */
#define KMS_PASSPHRASE_MIN 8
#define KMS_PKCS11_LABEL "cloister-root-wrap"

typedef struct kms_seal_config {
    const char *mode;         /* "dev", "passphrase" or "pkcs11" */
    const char *root_file;    /* the sealed root key */
    const char *dev_key_file; /* dev mode: the auto-unseal key */
    const char *pkcs11_module;
    unsigned long pkcs11_slot;
} kms_seal_config;

/* Whether MODE is one of the three. */
bool kms_seal_mode_valid(const char *mode);

/* The mode ROOT_FILE was sealed with into RET_MODE (16 bytes): 0, -ENOENT
 * when the KMS is not initialised, -EINVAL when the file is malformed. */
int kms_root_mode(const char *root_file, char *ret_mode);

/* Unseals the root key into ROOT (32 bytes, locked memory), creating and
 * sealing a new one when ROOT_FILE does not exist yet (*RET_CREATED true).
 * SECRET is the passphrase or PIN (ignored in dev mode). Returns 0,
 * -EKEYREJECTED (wrong passphrase or PIN), -EMEDIUMTYPE (sealed with
 * another mode), or another negative errno, with ERR saying why. */
int kms_root_unseal(const kms_seal_config *cfg, const char *secret, size_t secret_len, uint8_t *root,
                    bool *ret_created, kms_err *err);

/* AES-GCM with the token key labelled KMS_PKCS11_LABEL in SLOT of MODULE,
 * logging in with PIN; CREATE makes the key when missing. Encrypting writes
 * N + 16 bytes (data and tag), decrypting reads N >= 16 and writes N - 16.
 * -EKEYREJECTED for a wrong PIN, -EBADMSG when the data does not authenticate. */
int kms_pkcs11_crypt(const char *module, unsigned long slot, const char *pin, size_t pin_len, bool create,
                     bool encrypt, const uint8_t iv[KMS_NONCE_BYTES], const uint8_t *aad, size_t aad_len,
                     const uint8_t *in, size_t n, uint8_t *out, kms_err *err);
