/* The API's attestation endpoints: challenges and key release. */
#pragma once

#include "api/request.h"
#include "store/store.h"

/* Loads the platform CA (roots of sandbox evidence) and makes the challenge
 * set; S is where Keys and AttestationPolicies are read. */
int api_attest_init(const char *platform_ca_path, store *s);
void api_attest_done(void);
/* The /v1/attest/ endpoint group: a challenge is `create` on
 * AttestationChallenge. */
int api_handle_attest(api_request *r, const char *rest, size_t len, api_error *err);
/* POST /v1/kms/keys/KEY/release: `release` on Key KEY, then the evidence
 * against the Key's spec.release policy. */
int api_attest_release(api_request *r, const char *key, api_error *err);
/* POST /v1/enclaves/ENCLAVE/secret-release {secret, key, type, evidence,
 * publicKey}: `release` on Secret SECRET (the runner's identity forwards
 * its sandboxes' calls), for a value the Enclave's spec.secrets names,
 * to evidence satisfying the Enclave's attestationPolicy. The kms role
 * opens the stored value and seals it to publicKey: {jwe} whose payload is
 * {"secret", "key", "plaintext": base64}. */
int api_handle_enclave_secret_release(api_request *r, const char *enclave, api_error *err);
