/* Attested TLS (aTLS): the certificate an in-enclave agent serves carries
 * the enclave's attestation evidence in a non-critical X.509 extension, and
 * that evidence binds the certificate's public key. A client that completed
 * a TLS handshake with the agent (so the peer proved it holds the private
 * key) verifies the evidence, the binding and an AttestationPolicy with
 * atls_verify() and then knows which code it is talking to.
 *
 * The extension (OID ATLS_EVIDENCE_OID) holds the DER of
 *
 *   CloisterAttestation ::= SEQUENCE {
 *       version      INTEGER (1),
 *       type         UTF8String,          -- "sandbox", "nitro", "sev-snp", "tdx"
 *       evidence     OCTET STRING,        -- raw evidence, e.g. a COSE_Sign1 document
 *       endorsement  [0] IMPLICIT OCTET STRING OPTIONAL  -- SEV-SNP: VCEK/VLEK (DER)
 *   }
 *
 * Binding: Nitro and sandbox documents carry the certificate's
 * SubjectPublicKeyInfo (DER) in `public_key` (or its SHA-256 in
 * `user_data`); SEV-SNP and TDX carry SHA-256 of it in report_data[32..64).
 *
 * Freshness: a client that wants a nonce in the evidence sends it as the
 * TLS server name (SNI) `<32 hex>.<32 hex>.nonce.atls` (the 32 bytes as 64
 * lower-case hex digits in two labels); the agent then serves a certificate
 * made for that connection, whose evidence carries the nonce. Without it
 * the agent serves a certificate whose evidence it refreshes periodically,
 * and only the evidence's age (the policy's maxAgeSeconds) says how fresh it
 * is: such a certificate passes only policies with `requireNonce: false`. */
#pragma once

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attest/attest.h"

/* Cloister's arc under the private-enterprise arc 1.3.6.1.4.1: ".1" is
 * attestation, ".1.1" this extension (version 1 of its content).
 * PLACEHOLDER: Cloister has no IANA Private Enterprise Number yet; 999999 is
 * far beyond the numbers IANA has assigned (about 65,000), so it collides
 * with nobody today, but a PEN must be registered (free, at
 * https://pen.iana.org) and this arc moved to it before a release. A
 * registration-free UUID arc (2.25.<uuid>) is not usable: its 128-bit arc
 * is refused by common X.509 parsers (python cryptography among them). */
#define ATLS_OID_ARC "1.3.6.1.4.1.999999"
#define ATLS_EVIDENCE_OID ATLS_OID_ARC ".1.1"
#define ATLS_EVIDENCE_VERSION 1
#define ATLS_ENDORSEMENT_MAX (16 * 1024)
/* The extension's content is refused beyond this (evidence, endorsement and framing). */
#define ATLS_EXTENSION_MAX (ATTEST_EVIDENCE_MAX + ATLS_ENDORSEMENT_MAX + 64)

#define ATLS_NONCE_LEN 32
#define ATLS_SNI_SUFFIX ".nonce.atls"
#define ATLS_SNI_LEN (2 * ATLS_NONCE_LEN + 1 + sizeof(ATLS_SNI_SUFFIX) - 1)

/* The content of the extension. Decoded values are owned (malloc'd) and
 * released by atls_evidence_done(); for encoding the caller's are borrowed. */
typedef struct atls_evidence {
    attest_type type;
    uint8_t *evidence;
    size_t evidence_len;
    uint8_t *endorsement; /* NULL when absent */
    size_t endorsement_len;
} atls_evidence;

/* Frees what atls_evidence_decode() allocated; E may be zeroed or NULL. */
void atls_evidence_done(atls_evidence *e);

/* DER of the extension's content for E into *RET (malloc'd, the caller
 * frees it). Returns 0, -EINVAL (unknown type, empty or oversized evidence
 * or endorsement) or -ENOMEM. */
int atls_evidence_encode(const atls_evidence *e, uint8_t **ret, size_t *ret_len);

/* Parses the extension's content strictly: DER only (it must re-encode to
 * the same bytes), version 1, a known type, non-empty evidence of at most
 * ATTEST_EVIDENCE_MAX bytes, an endorsement of at most ATLS_ENDORSEMENT_MAX.
 * On success fills *RET (release with atls_evidence_done()). Returns 0,
 * -EBADMSG with ERROR naming what was wrong, -E2BIG or -ENOMEM. */
int atls_evidence_decode(const uint8_t *der, size_t len, atls_evidence *ret, attest_error *error);

/* Finds the one evidence extension of CERT and decodes it as above.
 * -ENOENT when CERT has none, -EBADMSG when it has several or a bad one. */
int atls_certificate_evidence(X509 *cert, atls_evidence *ret, attest_error *error);

/* A self-signed certificate for KEY (EC; signed with it, ECDSA with SHA-384)
 * carrying E in the evidence extension, valid from NOW - 60 s for LIFETIME
 * seconds, with the subject CN "cloister aTLS". *RET is new; the caller
 * frees it. Returns 0, -EINVAL or -ENOMEM. */
int atls_certificate_new(EVP_PKEY *key, const atls_evidence *e, int64_t now, int64_t lifetime, X509 **ret);

/* The DER SubjectPublicKeyInfo of CERT's key into *RET (malloc'd). */
int atls_certificate_spki(X509 *cert, uint8_t **ret, size_t *ret_len);

typedef struct atls_verify_options {
    int64_t now;       /* seconds since the epoch: evidence age and certificate chains */
    attest_blob roots; /* PEM anchors; required for sandbox evidence (platform-ca.pem) */
    /* the nonce the client sent as SNI (atls_sni_from_nonce()), which the
     * evidence must carry; NULL when it sent none */
    const uint8_t *nonce;
    size_t nonce_len;
} atls_verify_options;

/* Verifies the peer certificate CERT of a completed aTLS handshake against
 * POLICY, an AttestationPolicy resource document (its "spec" is used):
 *   1. CERT carries exactly one well-formed evidence extension;
 *   2. the evidence verifies (signature, certificate chain to OPTS->roots or
 *      the built-in roots, the evidence type's format) at OPTS->now;
 *   3. the evidence binds CERT's public key, and carries OPTS->nonce if set;
 *   4. the policy holds (types, allowSandbox, allowDebug, maxAgeSeconds,
 *      requireNonce, referenceValues such as pcr0, minTcb).
 * CERT's self-signature is checked too, but the proof that the peer holds
 * its key is the TLS handshake: call this only on a handshake's peer.
 * Returns 0 when allowed, with *RET_RESULT (may be NULL) set to a new
 * reference to the verified evidence document ({"verified", "type",
 * "claims"}); otherwise, with ERROR naming the first failed check:
 *   -ENOENT       CERT has no evidence extension (not an aTLS certificate)
 *   -EBADMSG      a malformed extension or evidence
 *   -EKEYREJECTED the evidence does not verify, or binds another key or nonce
 *   -EKEYEXPIRED  a certificate of the evidence is not valid at OPTS->now
 *   -EPERM        the policy refuses the evidence
 *   -EINVAL       POLICY is not an AttestationPolicy document
 *   -ENOMEM, or another negative errno from attest_verify(). */
int atls_verify(X509 *cert, const json_t *policy, const atls_verify_options *opts, json_t **ret_result,
                attest_error *error);

/* The SNI a client sends to ask for NONCE (ATLS_NONCE_LEN bytes) into OUT
 * (at least ATLS_SNI_LEN + 1 bytes). */
void atls_sni_from_nonce(const uint8_t nonce[ATLS_NONCE_LEN], char *out);

/* Parses an SNI of that form (lower-case hex only) into RET_NONCE.
 * Returns 0, or -EINVAL when SNI is anything else. */
int atls_sni_to_nonce(const char *sni, uint8_t ret_nonce[ATLS_NONCE_LEN]);

#define ATLS_SECRET_FILE_MAX 128 /* bytes of a file name under /run/secrets */

/* Whether FILE can name a secret the agent writes under /run/secrets: one
 * plain name of [A-Za-z0-9._-], not starting with '.', at most
 * ATLS_SECRET_FILE_MAX bytes (the runner checks the launch request with it,
 * the agent its command line). */
bool atls_secret_file_valid(const char *file);
