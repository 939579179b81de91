/* The key ring: named keys with numbered versions, held in locked memory and
 * persisted only wrapped by a key derived from the root key.
 *
 * A key has one algorithm: aes-256-gcm (purpose encrypt), ecdsa-p256 or
 * ed25519 (purpose sign), x25519 (purpose agreement: a workspace key, whose
 * public half is an age recipient). Its primary version encrypts and signs; older
 * enabled versions still decrypt and verify. A version is enabled, disabled
 * (refuses everything until enabled again), pending destruction (refuses
 * everything; waits at least 24 hours, and can be cancelled by enabling or
 * disabling it) or destroyed (its material is gone for good). The primary
 * version can be neither disabled nor destroyed: rotate first. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "age/age.h"
#include "kms/ciphertext.h"

#define KMS_KEYS_MAX 256
#define KMS_VERSIONS_MAX 64
#define KMS_SIGNATURE_MAX 80
#define KMS_X25519_BYTES 32
/* a scheduled destruction waits at least a day, so that it can be cancelled
 * (as AWS KMS and Vault do); a week unless asked otherwise */
#define KMS_DESTROY_MIN_SECONDS (24 * 3600)
#define KMS_DESTROY_DEFAULT_SECONDS (7 * 24 * 3600)
#define KMS_DESTROY_MAX_SECONDS (366 * 24 * 3600)

typedef struct kms_keyring kms_keyring;

/* Why an operation was refused, for the caller to show. */
typedef struct kms_err {
    char message[256];
} kms_err;

typedef enum kms_state {
    KMS_STATE_ENABLED,
    KMS_STATE_DISABLED,
    KMS_STATE_SCHEDULED, /* for destruction */
    KMS_STATE_DESTROYED,
} kms_state;

/* The purpose of "aes-256-gcm", "ecdsa-p256", "ed25519", "x25519"; NULL for anything else. */
const char *kms_algorithm_purpose(const char *algorithm);

/* Loads the ring at PATH (an absent file is an empty ring), unwrapping every
 * version with a key derived from ROOT. Returns 0, -EBADMSG when a version
 * does not authenticate (another root key, or a damaged file), -EINVAL for a
 * malformed file, -ENOSPC when locked memory runs out. */
int kms_keyring_open(const char *path, const uint8_t root[KMS_KEY_BYTES], kms_keyring **ret);
/* Wipes every key and frees the ring; accepts NULL. */
void kms_keyring_free(kms_keyring *kr);

/* Makes sure key NAME exists with ALGORITHM, creating version 1 if needed.
 * -EMEDIUMTYPE when it exists with another algorithm. */
int kms_keyring_ensure(kms_keyring *kr, const char *name, const char *algorithm, kms_err *err);
/* Adds a version to NAME and makes it primary; its number into *RET_VERSION. */
int kms_keyring_rotate(kms_keyring *kr, const char *name, uint32_t *ret_version, kms_err *err);
/* Sets NAME/VERSION ENABLED or DISABLED. A version pending destruction
 * changes only when CANCEL (the caller was allowed to destroy it), which
 * cancels the destruction; -EPERM otherwise. -ENOENT no such version,
 * -EKEYEXPIRED destroyed, -EBUSY disabling the primary version. */
int kms_keyring_set_state(kms_keyring *kr, const char *name, uint32_t version, kms_state state, bool cancel,
                          kms_err *err);
/* Schedules the destruction of NAME/VERSION AFTER seconds from NOW (seconds
 * since the epoch): from then it refuses every use, and kms_keyring_tick()
 * destroys it once its time has come. -ERANGE unless AFTER is from
 * KMS_DESTROY_MIN_SECONDS to KMS_DESTROY_MAX_SECONDS; -ENOENT, -EKEYEXPIRED,
 * -EBUSY as kms_keyring_set_state(). Scheduling again moves the time. */
int kms_keyring_schedule_destroy(kms_keyring *kr, const char *name, uint32_t version, int64_t after, int64_t now,
                                 kms_err *err);
/* Destroys key NAME at once, every version: it leaves the ring, the ring is
 * rewritten durably without it, and then its material is wiped. For workspace
 * keys, whose Workspace is deleted (no waiting period: the api role decided
 * and audited the delete). *RET_EXISTED false when the ring holds no such
 * key (already destroyed: not an error). Returns 0, or a negative errno when
 * the ring cannot be written (the key then stays, whole). */
int kms_keyring_destroy_key(kms_keyring *kr, const char *name, bool *ret_existed, kms_err *err);
/* Destroys the versions whose time (at or before NOW) has come; returns how
 * many, or a negative errno. */
int kms_keyring_tick(kms_keyring *kr, int64_t now);
/* The key's public description (no material) as a new reference, or NULL
 * when there is no such key. */
json_t *kms_keyring_describe(const kms_keyring *kr, const char *name);

/* Encrypts N bytes (at most KMS_PLAINTEXT_MAX) under NAME's primary version
 * bound to the encoded context CTX. OUT holds N + KMS_CIPHERTEXT_OVERHEAD_MAX
 * bytes; the ciphertext's length goes to *RET_LEN. */
int kms_encrypt(kms_keyring *kr, const char *name, const uint8_t *ctx, size_t ctx_len, const uint8_t *in, size_t n,
                uint8_t *out, size_t *ret_len, kms_err *err);
/* Decrypts a ciphertext bound to CTX into OUT (at least N bytes); its key
 * name and version into RET_KEY (KMS_KEY_NAME_MAX + 1 bytes) and
 * *RET_VERSION. -EINVAL malformed, -ENOENT unknown key or version,
 * -EKEYREVOKED disabled or scheduled, -EKEYEXPIRED destroyed, -EBADMSG wrong
 * context or damaged. */
int kms_decrypt(kms_keyring *kr, const uint8_t *in, size_t n, const uint8_t *ctx, size_t ctx_len, uint8_t *out,
                size_t *ret_len, char *ret_key, uint32_t *ret_version, kms_err *err);
/* Signs MSG with NAME's primary version into SIG (KMS_SIGNATURE_MAX bytes):
 * DER ECDSA with SHA-256, or Ed25519. */
int kms_sign(kms_keyring *kr, const char *name, const uint8_t *msg, size_t n, uint8_t *sig, size_t *ret_len,
             uint32_t *ret_version, kms_err *err);
/* Verifies SIG over MSG with NAME/VERSION: 0 when valid, -EBADMSG when not. */
int kms_verify(kms_keyring *kr, const char *name, uint32_t version, const uint8_t *msg, size_t n,
               const uint8_t *sig, size_t sig_len, kms_err *err);

/* The raw public half of x25519 key NAME's primary version into OUT, its
 * number into *RET_VERSION. -ENOENT no such key, -EMEDIUMTYPE not an x25519
 * key, -EKEYREVOKED / -EKEYEXPIRED as the other operations. The private half
 * never leaves the ring. */
int kms_public_x25519(kms_keyring *kr, const char *name, uint8_t out[static KMS_X25519_BYTES], uint32_t *ret_version,
                      kms_err *err);

/* Opens the header of an age file (its first LEN bytes, the header at
 * least) with x25519 key NAME: the file key of the X25519 stanza addressed
 * to one of its enabled versions into RET_FILE_KEY, once the header MAC
 * verified. -ENOENT no such key (destroyed with its Workspace), -ENOKEY
 * no stanza for it, -EBADMSG a malformed header or a MAC that does not
 * verify, -EMEDIUMTYPE not an x25519 key. The private half
 * never leaves the ring; the caller wipes the file key. */
int kms_age_unwrap(kms_keyring *kr, const char *name, const uint8_t *header, size_t len,
                   uint8_t ret_file_key[static AGE_FILE_KEY_SIZE], kms_err *err);
