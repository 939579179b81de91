/* Key release support: single-use challenge nonces, and sealing a secret
 * to the public key bound in verified evidence as a JWE (ECDH-ES, A256GCM),
 * the way Confidential Containers' key broker releases keys. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RELEASE_NONCE_LEN 32
#define RELEASE_CHALLENGES_MAX 4096
#define RELEASE_CHALLENGE_TTL_SECONDS 300

typedef struct release_challenges release_challenges;

/* A set of outstanding challenges (thread-safe). NULL on allocation failure. */
release_challenges *release_challenges_new(void);
void release_challenges_free(release_challenges *c);
/* Issues a fresh random nonce valid until NOW + RELEASE_CHALLENGE_TTL_SECONDS.
 * When the set is full, expired ones go first, then the oldest. */
int release_challenge_issue(release_challenges *c, int64_t now, uint8_t ret_nonce[RELEASE_NONCE_LEN]);
/* Consumes NONCE: true exactly once per issued, unexpired nonce. */
bool release_challenge_consume(release_challenges *c, const uint8_t *nonce, size_t len, int64_t now);

/* Encrypts PLAINTEXT (LEN bytes) to the EC public key SPKI_DER (a DER
 * SubjectPublicKeyInfo of a P-256, P-384 or P-521 key) as a compact JWE with
 * alg ECDH-ES and enc A256GCM. *RET is malloc'd; the caller frees it.
 * Returns 0, -EINVAL (not an EC public key), or -ENOMEM. */
int release_seal_jwe(const uint8_t *spki_der, size_t spki_len, const uint8_t *plaintext, size_t len, char **ret);

/* The challenge a job run's evidence carries instead of a nonce from
 * /v1/attest/challenge (docs/kms.md "Job release"): SHA-256 of
 * "cloister job run v1\n" || lower-case hex(DIGEST) || "\n" || decimal RUN || "\n",
 * so evidence made for one run of one job fits no other. */
void release_job_nonce(const uint8_t digest[32], uint64_t run, uint8_t ret[RELEASE_NONCE_LEN]);
