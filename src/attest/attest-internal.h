/* Shared pieces of the verifiers: error reporting, X.509 chains, raw ECDSA
 * signatures, pinned roots and claim encoding. Not installed. */
#pragma once

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>

#include "attest/attest.h"
#include "basic/macro.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(X509 *, X509_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_CRL *, X509_CRL_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_PKEY *, EVP_PKEY_free)

static inline void x509_stack_freep(STACK_OF(X509) **p)
{
    if (*p)
        sk_X509_pop_free(*p, X509_free);
}
#define _cleanup_x509_stack_ _cleanup_(x509_stack_freep)

static inline void x509_crl_stack_freep(STACK_OF(X509_CRL) **p)
{
    if (*p)
        sk_X509_CRL_pop_free(*p, X509_CRL_free);
}

/* Little-endian fields of the binary reports. */
static inline uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* True when all N bytes are zero. */
bool attest_all_zero(const uint8_t *p, size_t n);

/* Writes the formatted reason into ERROR (when not NULL) and returns ERR,
 * a negative errno, so that failures read `return attest_fail(...)`. */
int attest_fail(attest_error *error, int err, const char *fmt, ...) _printf_(3, 4);

/* Trust material for one verification: self-signed anchors and the other
 * certificates, usable as intermediates. */
typedef struct attest_roots {
    STACK_OF(X509) *trusted;
    STACK_OF(X509) *untrusted;
} attest_roots;

void attest_roots_done(attest_roots *roots);

/* Fills ROOTS from OPTS->roots when given, else from the built-in pinned
 * roots of TYPE (each anchor's SHA-256 fingerprint checked). The caller
 * releases them with attest_roots_done(), also on failure. -ENOKEY when TYPE
 * has no built-in roots and none were given. */
int attest_roots_load(attest_type type, const attest_options *opts, attest_roots *roots,
                      attest_error *error);

/* Parses every certificate of the PEM text (at least one, nothing else but
 * whitespace between them) into a new stack the caller frees. WHAT names
 * the input in errors. */
int attest_pem_certs(const char *what, const uint8_t *pem, size_t len, STACK_OF(X509) **ret_certs,
                     attest_error *error);

/* Parses one certificate given as DER (exactly, no trailing bytes) or PEM. */
int attest_cert_parse(const char *what, const uint8_t *data, size_t len, X509 **ret_cert,
                      attest_error *error);

/* Parses one CRL given as DER (exactly) or PEM. */
int attest_crl_parse(const uint8_t *data, size_t len, X509_CRL **ret_crl, attest_error *error);

/* Verifies the chain from LEAF through UNTRUSTED to an anchor in
 * ROOTS->trusted at time AT; ROOTS->untrusted are usable intermediates too.
 * With CRLS (may be NULL) every certificate must be covered by a valid,
 * non-revoking CRL. Errors read "certificate chain: <reason> at <AT> …". */
int attest_chain_verify(X509 *leaf, STACK_OF(X509) *untrusted, const attest_roots *roots,
                        STACK_OF(X509_CRL) *crls, int64_t at, attest_error *error);

/* Verifies an ECDSA signature given as big-endian R and S of N bytes each
 * over MSG with digest MD, by KEY which must be an EC key on curve
 * CURVE_NID. -EKEYREJECTED with "WHAT does not verify" when it does not. */
int attest_ecdsa_verify(const char *what, EVP_PKEY *key, int curve_nid, const EVP_MD *md,
                        const uint8_t *r, const uint8_t *s, size_t n, const uint8_t *msg,
                        size_t msg_len, attest_error *error);

/* Sets OBJ[KEY] to the lower-case hex of the N bytes; -ENOMEM on failure. */
int attest_json_set_hex(json_t *obj, const char *key, const uint8_t *p, size_t n);
/* Sets OBJ[KEY] to VALUE, taking the reference; -ENOMEM when VALUE is NULL
 * or cannot be stored. */
int attest_json_set_new(json_t *obj, const char *key, json_t *value);

/* The verifiers: EVIDENCE is raw (already base64-decoded) and at most
 * ATTEST_EVIDENCE_MAX bytes. Each returns 0 and a new claims object in
 * *ret_claims, or a negative errno with the reason in ERROR. */
int attest_nitro_verify(const uint8_t *doc, size_t len, bool sandbox, const attest_options *opts,
                        json_t **ret_claims, attest_error *error);
int attest_sev_snp_verify(const uint8_t *report, size_t len, const attest_options *opts,
                          json_t **ret_claims, attest_error *error);
int attest_tdx_verify(const uint8_t *quote, size_t len, const attest_options *opts,
                      json_t **ret_claims, attest_error *error);
