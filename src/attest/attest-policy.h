/* Evaluation of verified evidence against an AttestationPolicy: may this
 * workload have what it asks for? Default deny: every check must pass. */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* What the relying party expects beyond the policy. */
typedef struct attest_expect {
    int64_t now; /* seconds since the epoch */
    /* the challenge the evidence must carry (NULL: none issued) */
    const uint8_t *nonce;
    size_t nonce_len;
    /* the public key the evidence must bind (NULL: none) */
    const uint8_t *public_key;
    size_t public_key_len;
} attest_expect;

#define ATTEST_REASON_MAX 256

/* Decides whether RESULT (attest_verify()'s document, which must say
 * "verified": true) satisfies the AttestationPolicy SPEC (validated by the
 * resource schema) under EXPECT. Returns 0 when allowed; -EPERM when not,
 * with REASON naming the first failed check; -EINVAL for a result or spec
 * of the wrong shape. Binding rules:
 *   nitro, sandbox: claims.nonce == nonce; claims.public_key == key or
 *                   claims.user_data == SHA-256(key);
 *   sev-snp, tdx:   report_data == nonce (32 bytes) || SHA-256(key). */
int attest_policy_evaluate(const json_t *spec, const json_t *result, const attest_expect *expect, char *reason,
                           size_t reason_size);
