/* Offline verifiers of TEE evidence: AWS Nitro attestation documents, AMD
 * SEV-SNP attestation reports, Intel TDX quotes, and Cloister's own sandbox
 * documents (the Nitro COSE_Sign1 format signed by the cluster platform key).
 *
 * Nothing here reads the clock or the network: the verification time, the
 * endorsement certificate and any collateral are given by the caller. The
 * claims follow DESIGN.md "Attestation claims"; binary values are lower-case
 * hex. */
#pragma once

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

typedef enum attest_type {
    ATTEST_NITRO,
    ATTEST_SEV_SNP,
    ATTEST_TDX,
    ATTEST_SANDBOX,
    _ATTEST_TYPE_MAX,
} attest_type;

/* Bytes owned by the caller. */
typedef struct attest_blob {
    const uint8_t *data;
    size_t len;
} attest_blob;

typedef struct attest_options {
    /* Verification time, seconds since the Unix epoch: certificates, CRLs
     * and collateral must be valid at this instant. */
    int64_t time;
    /* PEM trust anchors (self-signed) and intermediates replacing the
     * built-in pinned roots. Required for ATTEST_SANDBOX: the cluster's
     * platform CA. */
    attest_blob roots;
    /* SEV-SNP: the VCEK or VLEK certificate, DER or PEM. Required. */
    attest_blob cert;
    /* TDX: CRLs (DER or PEM) for the PCK chain, e.g. the PCK CRL and the
     * root CA CRL. When any is given, every certificate of the chain must
     * be covered by a CRL valid at `time` and not revoked. */
    const attest_blob *crls;
    size_t n_crls;
} attest_options;

#define ATTEST_ERROR_MAX 256

/* Why evidence was refused, in the manner of jansson's json_error_t. */
typedef struct attest_error {
    char text[ATTEST_ERROR_MAX];
} attest_error;

/* Evidence larger than this (after base64 decoding) is refused. */
#define ATTEST_EVIDENCE_MAX (64 * 1024)

/* "nitro", "sev-snp", "tdx", "sandbox"; NULL for an unknown value. */
const char *attest_type_to_string(attest_type type);
/* Parses the names above; -EINVAL otherwise. */
int attest_type_from_string(const char *s, attest_type *ret_type);

/* Verifies EVIDENCE of TYPE (raw bytes or their base64 text) against OPTS.
 *
 * Returns 0 when the evidence verifies and sets *ret_result to a new JSON
 * object {"verified":true,"type":"…","claims":{…}} the caller decrefs.
 * Otherwise returns a negative errno and leaves *ret_result untouched:
 *   -EBADMSG      malformed evidence or certificate
 *   -EKEYREJECTED a signature, pinned value or certificate chain is wrong
 *   -EKEYEXPIRED  a certificate or CRL is not valid at opts->time
 *   -EKEYREVOKED  a certificate is revoked by a given CRL
 *   -ENOKEY       a required certificate or root was not given
 *   -EINVAL       bad arguments or unparsable options
 *   -E2BIG        evidence larger than ATTEST_EVIDENCE_MAX
 *   -ENOMEM
 * and, when ERROR is not NULL, writes the reason there, naming what failed. */
int attest_verify(attest_type type, const uint8_t *evidence, size_t len, const attest_options *opts,
                  json_t **ret_result, attest_error *error);

/* Sandbox documents: the claims a runner vouches for. PCR0 is the workload
 * bundle's measurement (SHA-384), PCR1 the Cloister runtime, PCR2 the
 * configuration; the other PCRs are zero. NULL nonce, user_data or
 * public_key are encoded as CBOR null (each at most 1,024 bytes). */
#define ATTEST_SANDBOX_PCRS 16
#define ATTEST_SANDBOX_PCR_LEN 48

typedef struct attest_sandbox_claims {
    const char *module_id;
    uint64_t timestamp_ms;
    uint8_t pcrs[ATTEST_SANDBOX_PCRS][ATTEST_SANDBOX_PCR_LEN];
    const uint8_t *nonce;
    size_t nonce_len;
    const uint8_t *user_data;
    size_t user_data_len;
    const uint8_t *public_key;
    size_t public_key_len;
} attest_sandbox_claims;

/* Issues a sandbox attestation document (untagged COSE_Sign1, ES384) for
 * CLAIMS, signed with KEY (P-384), whose certificate CERT chains through
 * CABUNDLE (N_CABUNDLE certificates, the platform CA first, as in Nitro
 * documents) to the cluster's platform CA. On success *RET is a malloc'd
 * buffer the caller frees. Returns 0, -EINVAL or -ENOMEM. */
int attest_sandbox_issue(EVP_PKEY *key, X509 *cert, X509 *const *cabundle, size_t n_cabundle,
                         const attest_sandbox_claims *claims, uint8_t **ret, size_t *ret_len);

/* The DESIGN.md document for refused evidence:
 * {"verified":false,"type":"…","claims":{},"error":REASON}. New reference,
 * NULL on allocation failure. */
json_t *attest_refusal_new(attest_type type, const char *reason);
