/* Intel TDX quotes, versions 4 and 5 (Intel TDX DCAP Quoting Library API,
 * appendix "TD Quote Format"): a 48-byte header, the TD report body (v5:
 * after a type and size), then the ECDSA P-256 quote signature data. The
 * attestation key signs header and body; the QE report binds that key and
 * is signed by the PCK certificate, whose chain runs to the Intel SGX root.
 *
 * Bytes after the signature data are not signed and are ignored: quote
 * buffers are commonly handed over padded. */
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <string.h>

#include "attest/attest-internal.h"

#define HEADER_SIZE 48
#define BODY_DESC_SIZE 6 /* v5: u16 type, u32 size */
#define BODY_TD10_SIZE 584
#define BODY_TD15_SIZE 648
#define BODY_TYPE_TD10 2
#define BODY_TYPE_TD15 3
#define ATT_KEY_TYPE_ECDSA_P256 2
#define TEE_TYPE_TDX 0x81
#define CERT_TYPE_PCK_CHAIN 5
#define CERT_TYPE_QE_REPORT 6
#define P256_SIG_SIZE 64
#define P256_KEY_SIZE 64
#define QE_REPORT_SIZE 384
#define CERT_DATA_HEADER_SIZE 6 /* u16 type, u32 size */

/* header */
#define HDR_VERSION 0
#define HDR_ATT_KEY_TYPE 2
#define HDR_TEE_TYPE 4
#define HDR_QE_VENDOR_ID 12

/* TD report body */
#define TD_TEE_TCB_SVN 0
#define TD_ATTRIBUTES 120
#define TD_MR_TD 136
#define TD_MR_CONFIG_ID 184
#define TD_RTMR0 328
#define TD_REPORT_DATA 520
#define TD_ATTRIBUTES_DEBUG 0x01 /* TUD.DEBUG, bit 0 */

/* QE report (an SGX report body) */
#define QE_ATTRIBUTES 48
#define QE_MR_SIGNER 128
#define QE_ISV_PROD_ID 256
#define QE_REPORT_DATA 320
#define SGX_ATTRIBUTES_DEBUG 0x02
#define TD_QE_ISV_PROD_ID 2

static const uint8_t intel_qe_vendor_id[16] = {0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9,
                                               0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07};
/* MRSIGNER of Intel's quoting enclaves */
static const uint8_t intel_qe_mr_signer[32] = {
    0xdc, 0x9e, 0x2a, 0x7c, 0x6f, 0x94, 0x8f, 0x17, 0x47, 0x4e, 0x34, 0xa7, 0xfc, 0x43, 0xed, 0x03,
    0x0f, 0x7c, 0x15, 0x63, 0xf1, 0xba, 0xbd, 0xdf, 0x63, 0x40, 0xc8, 0x2e, 0x0e, 0x54, 0xa8, 0xc5};

#define PCK_CN "Intel SGX PCK Certificate"

/* A quote's parts, pointing into the caller's buffer. */
typedef struct tdx_quote {
    unsigned version;
    const uint8_t *body;    /* TD report body, at least BODY_TD10_SIZE */
    size_t signed_len;      /* header and body (and v5 descriptor) */
    const uint8_t *sig;     /* attestation key signature, r‖s big-endian */
    const uint8_t *att_key; /* x‖y */
    const uint8_t *qe_report;
    const uint8_t *qe_sig;
    const uint8_t *qe_auth;
    size_t qe_auth_len;
    const uint8_t *pck_chain; /* PEM */
    size_t pck_chain_len;
} tdx_quote;

/* Reads a certification data header at P (AVAIL bytes left) and checks its
 * type is WANT and its size is exactly the rest of AVAIL. */
static int cert_data(const char *what, const uint8_t *p, size_t avail, unsigned want,
                     size_t *ret_size, attest_error *error)
{
    if (avail < CERT_DATA_HEADER_SIZE)
        return attest_fail(error, -EBADMSG, "quote %s: truncated", what);
    unsigned type = le16(p);
    uint32_t size = le32(p + 2);
    if (type != want)
        return attest_fail(error, -EBADMSG, "quote %s: certification data type %u, expected %u",
                           what, type, want);
    if (size != avail - CERT_DATA_HEADER_SIZE)
        return attest_fail(error, -EBADMSG, "quote %s: size %u, but %zu bytes follow", what, size,
                           avail - CERT_DATA_HEADER_SIZE);
    *ret_size = size;
    return 0;
}

/* Splits the quote into Q, checking every fixed value, length and offset. */
static int parse_quote(const uint8_t *p, size_t len, tdx_quote *q, attest_error *error)
{
    size_t body_off = HEADER_SIZE, body_len = BODY_TD10_SIZE, pos;

    if (len < HEADER_SIZE)
        return attest_fail(error, -EBADMSG, "quote: %zu bytes, shorter than its header", len);
    q->version = le16(p + HDR_VERSION);
    if (q->version != 4 && q->version != 5)
        return attest_fail(error, -EBADMSG, "quote header version: %u, expected 4 or 5", q->version);
    if (le16(p + HDR_ATT_KEY_TYPE) != ATT_KEY_TYPE_ECDSA_P256)
        return attest_fail(error, -EBADMSG,
                           "quote header attestation key type: %u, expected 2 (ECDSA P-256)",
                           le16(p + HDR_ATT_KEY_TYPE));
    if (le32(p + HDR_TEE_TYPE) != TEE_TYPE_TDX)
        return attest_fail(error, -EBADMSG, "quote header tee type: 0x%x, expected 0x81 (TDX)",
                           le32(p + HDR_TEE_TYPE));
    if (memcmp(p + HDR_QE_VENDOR_ID, intel_qe_vendor_id, sizeof(intel_qe_vendor_id)) != 0)
        return attest_fail(error, -EBADMSG, "quote header QE vendor: not Intel");

    if (q->version == 5) {
        if (len < HEADER_SIZE + BODY_DESC_SIZE)
            return attest_fail(error, -EBADMSG, "quote: truncated body descriptor");
        unsigned type = le16(p + HEADER_SIZE);
        uint32_t size = le32(p + HEADER_SIZE + 2);
        if (type == BODY_TYPE_TD10)
            body_len = BODY_TD10_SIZE;
        else if (type == BODY_TYPE_TD15)
            body_len = BODY_TD15_SIZE;
        else
            return attest_fail(error, -EBADMSG, "quote body type: %u, expected 2 or 3 (TDX)", type);
        if (size != body_len)
            return attest_fail(error, -EBADMSG, "quote body size: %u, expected %zu", size, body_len);
        body_off += BODY_DESC_SIZE;
    }
    pos = body_off + body_len;
    if (len < pos + 4)
        return attest_fail(error, -EBADMSG, "quote: %zu bytes, truncated in the body", len);
    q->body = p + body_off;
    q->signed_len = pos;

    uint32_t sig_len = le32(p + pos);
    pos += 4;
    if (sig_len > len - pos)
        return attest_fail(error, -EBADMSG, "quote signature data: %u bytes, only %zu present",
                           sig_len, len - pos);
    size_t avail = sig_len;
    if (avail < P256_SIG_SIZE + P256_KEY_SIZE)
        return attest_fail(error, -EBADMSG, "quote signature data: %zu bytes, truncated", avail);
    q->sig = p + pos;
    q->att_key = p + pos + P256_SIG_SIZE;
    pos += P256_SIG_SIZE + P256_KEY_SIZE;
    avail -= P256_SIG_SIZE + P256_KEY_SIZE;

    size_t size;
    int r = cert_data("signature data", p + pos, avail, CERT_TYPE_QE_REPORT, &size, error);
    if (r < 0)
        return r;
    pos += CERT_DATA_HEADER_SIZE;
    avail = size;
    if (avail < QE_REPORT_SIZE + P256_SIG_SIZE + 2)
        return attest_fail(error, -EBADMSG, "quote QE report data: %zu bytes, truncated", avail);
    q->qe_report = p + pos;
    q->qe_sig = p + pos + QE_REPORT_SIZE;
    pos += QE_REPORT_SIZE + P256_SIG_SIZE;
    avail -= QE_REPORT_SIZE + P256_SIG_SIZE;
    q->qe_auth_len = le16(p + pos);
    pos += 2;
    avail -= 2;
    if (q->qe_auth_len > avail)
        return attest_fail(error, -EBADMSG, "quote QE authentication data: %zu bytes, only %zu present",
                           q->qe_auth_len, avail);
    q->qe_auth = p + pos;
    pos += q->qe_auth_len;
    avail -= q->qe_auth_len;

    r = cert_data("QE certification data", p + pos, avail, CERT_TYPE_PCK_CHAIN, &size, error);
    if (r < 0)
        return r;
    q->pck_chain = p + pos + CERT_DATA_HEADER_SIZE;
    q->pck_chain_len = size;
    return 0;
}

/* The attestation key as a P-256 public key; -EBADMSG when not on the curve. */
static int att_key_load(const uint8_t *xy, EVP_PKEY **ret_key, attest_error *error)
{
    uint8_t point[1 + P256_KEY_SIZE] = {0x04};
    EVP_PKEY *key = NULL;
    memcpy(point + 1, xy, P256_KEY_SIZE);

    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)),
        OSSL_PARAM_END,
    };
    int ok = ctx && EVP_PKEY_fromdata_init(ctx) == 1 &&
             EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        return attest_fail(error, -EBADMSG, "quote attestation key: not a P-256 point");
    *ret_key = key;
    return 0;
}

/* Checks the QE report: signed by the PCK key, from an Intel quoting
 * enclave that is not in debug mode, binding the attestation key:
 * report_data = SHA-256(attestation key ‖ QE authentication data) ‖ 0^32. */
static int check_qe_report(const tdx_quote *q, X509 *pck, attest_error *error)
{
    const uint8_t *rep = q->qe_report;
    uint8_t digest[SHA256_DIGEST_LENGTH];
    int r;

    r = attest_ecdsa_verify("QE report signature", X509_get0_pubkey(pck), NID_X9_62_prime256v1,
                            EVP_sha256(), q->qe_sig, q->qe_sig + 32, 32, rep, QE_REPORT_SIZE, error);
    if (r < 0)
        return r;

    if (memcmp(rep + QE_MR_SIGNER, intel_qe_mr_signer, sizeof(intel_qe_mr_signer)) != 0)
        return attest_fail(error, -EKEYREJECTED, "QE report field mr_signer: not Intel's");
    if (le16(rep + QE_ISV_PROD_ID) != TD_QE_ISV_PROD_ID)
        return attest_fail(error, -EKEYREJECTED, "QE report field isv_prod_id: %u, expected %d (TD QE)",
                           le16(rep + QE_ISV_PROD_ID), TD_QE_ISV_PROD_ID);
    if (rep[QE_ATTRIBUTES] & SGX_ATTRIBUTES_DEBUG)
        return attest_fail(error, -EKEYREJECTED, "QE report field attributes: debug enclave");

    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(md, q->att_key, P256_KEY_SIZE) == 1 &&
              EVP_DigestUpdate(md, q->qe_auth, q->qe_auth_len) == 1 &&
              EVP_DigestFinal_ex(md, digest, NULL) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return attest_fail(error, -ENOMEM, "out of memory");
    if (memcmp(rep + QE_REPORT_DATA, digest, sizeof(digest)) != 0 ||
        !attest_all_zero(rep + QE_REPORT_DATA + 32, 32))
        return attest_fail(error, -EKEYREJECTED,
                           "QE report field report_data: does not bind the attestation key");
    return 0;
}

/* Parses OPTS's CRLs into a new stack, NULL when none are given. */
static int load_crls(const attest_options *opts, STACK_OF(X509_CRL) **ret, attest_error *error)
{
    STACK_OF(X509_CRL) *crls = NULL;
    if (opts->n_crls == 0) {
        *ret = NULL;
        return 0;
    }
    if (!opts->crls)
        return attest_fail(error, -EINVAL, "crls: %zu given without data", opts->n_crls);
    crls = sk_X509_CRL_new_null();
    if (!crls)
        return attest_fail(error, -ENOMEM, "out of memory");
    for (size_t i = 0; i < opts->n_crls; i++) {
        X509_CRL *crl;
        int r = attest_crl_parse(opts->crls[i].data, opts->crls[i].len, &crl, error);
        if (r < 0 || !sk_X509_CRL_push(crls, crl)) {
            if (r >= 0)
                X509_CRL_free(crl);
            x509_crl_stack_freep(&crls);
            return r < 0 ? r : attest_fail(error, -ENOMEM, "out of memory");
        }
    }
    *ret = crls;
    return 0;
}

/* Checks the PCK chain (leaf first, in the quote) to the Intel root at the
 * verification time, against the CRLs when given. Returns the leaf in
 * *ret_pck (the caller frees it). */
static int check_pck_chain(const tdx_quote *q, const attest_options *opts, X509 **ret_pck,
                           attest_error *error)
{
    _cleanup_x509_stack_ STACK_OF(X509) *chain = NULL;
    _cleanup_(x509_crl_stack_freep) STACK_OF(X509_CRL) *crls = NULL;
    _cleanup_(attest_roots_done) attest_roots roots = {};
    _cleanup_(X509_freep) X509 *pck = NULL;
    char cn[64] = "";
    int r;

    r = attest_pem_certs("PCK certificate chain", q->pck_chain, q->pck_chain_len, &chain, error);
    if (r < 0)
        return r;
    pck = sk_X509_shift(chain);
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(pck), NID_commonName, cn, sizeof(cn)) < 0 ||
        strcmp(cn, PCK_CN) != 0)
        return attest_fail(error, -EKEYREJECTED, "PCK certificate: subject CN is \"%s\"", cn);
    r = load_crls(opts, &crls, error);
    if (r < 0)
        return r;
    r = attest_roots_load(ATTEST_TDX, opts, &roots, error);
    if (r < 0)
        return r;
    r = attest_chain_verify(pck, chain, &roots, crls, opts->time, error);
    if (r < 0)
        return r;
    *ret_pck = TAKE_PTR(pck);
    return 0;
}

/* The claims of DESIGN.md. */
static int make_claims(const tdx_quote *q, json_t **ret)
{
    static const char *const rtmr[] = {"rtmr0", "rtmr1", "rtmr2", "rtmr3"};
    _cleanup_(json_decrefp) json_t *claims = json_object();
    if (!claims)
        return -ENOMEM;
    if (attest_json_set_new(claims, "version", json_integer(q->version)) < 0 ||
        attest_json_set_hex(claims, "mr_td", q->body + TD_MR_TD, 48) < 0 ||
        attest_json_set_hex(claims, "mr_config_id", q->body + TD_MR_CONFIG_ID, 48) < 0 ||
        attest_json_set_hex(claims, "report_data", q->body + TD_REPORT_DATA, 64) < 0 ||
        attest_json_set_new(claims, "debug",
                            json_boolean(q->body[TD_ATTRIBUTES] & TD_ATTRIBUTES_DEBUG)) < 0 ||
        attest_json_set_hex(claims, "tee_tcb_svn", q->body + TD_TEE_TCB_SVN, 16) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < ELEMENTSOF(rtmr); i++)
        if (attest_json_set_hex(claims, rtmr[i], q->body + TD_RTMR0 + 48 * i, 48) < 0)
            return -ENOMEM;
    *ret = TAKE_PTR(claims);
    return 0;
}

int attest_tdx_verify(const uint8_t *quote, size_t len, const attest_options *opts,
                      json_t **ret_claims, attest_error *error)
{
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *att_key = NULL;
    _cleanup_(X509_freep) X509 *pck = NULL;
    tdx_quote q = {};
    int r;

    r = parse_quote(quote, len, &q, error);
    if (r < 0)
        return r;
    r = att_key_load(q.att_key, &att_key, error);
    if (r < 0)
        return r;
    r = attest_ecdsa_verify("quote signature", att_key, NID_X9_62_prime256v1, EVP_sha256(), q.sig,
                            q.sig + 32, 32, quote, q.signed_len, error);
    if (r < 0)
        return r;
    r = check_pck_chain(&q, opts, &pck, error);
    if (r < 0)
        return r;
    r = check_qe_report(&q, pck, error);
    if (r < 0)
        return r;

    r = make_claims(&q, ret_claims);
    if (r < 0)
        return attest_fail(error, r, "out of memory");
    return 0;
}
