/* Certificates, chains and raw ECDSA signatures, on top of OpenSSL. */
#include <errno.h>
#include <limits.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <string.h>

#include "attest/attest-internal.h"
#include "basic/timeutil.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(BIO *, BIO_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_STORE *, X509_STORE_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_STORE_CTX *, X509_STORE_CTX_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(ECDSA_SIG *, ECDSA_SIG_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_MD_CTX *, EVP_MD_CTX_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(BIGNUM *, BN_free)

/* More certificates than this in one PEM input is refused. */
#define PEM_CERTS_MAX 16

static void opensslfreep(unsigned char **p)
{
    OPENSSL_free(*p);
}

/* Frees the stack but not the certificates it points to. */
static void x509_stack_shallow_freep(STACK_OF(X509) **p)
{
    sk_X509_free(*p);
}

static bool looks_like_pem(const uint8_t *p, size_t len)
{
    static const char begin[] = "-----BEGIN ";
    while (len > 0 && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
        p++;
        len--;
    }
    return len >= STRLEN(begin) && memcmp(p, begin, STRLEN(begin)) == 0;
}

int attest_pem_certs(const char *what, const uint8_t *pem, size_t len, STACK_OF(X509) **ret_certs,
                     attest_error *error)
{
    _cleanup_x509_stack_ STACK_OF(X509) *certs = NULL;
    _cleanup_(BIO_freep) BIO *bio = NULL;

    if (len == 0 || len > INT_MAX)
        return attest_fail(error, -EBADMSG, "%s: %zu bytes of PEM", what, len);
    bio = BIO_new_mem_buf(pem, (int)len);
    certs = sk_X509_new_null();
    if (!bio || !certs)
        return attest_fail(error, -ENOMEM, "%s: out of memory", what);

    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!x) {
            unsigned long e = ERR_peek_last_error();
            bool end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
            ERR_clear_error();
            if (end && sk_X509_num(certs) > 0)
                break;
            return attest_fail(error, -EBADMSG, "%s: certificate %d is not valid PEM", what,
                               sk_X509_num(certs));
        }
        if (sk_X509_num(certs) >= PEM_CERTS_MAX || !sk_X509_push(certs, x)) {
            X509_free(x);
            return attest_fail(error, -EBADMSG, "%s: more than %d certificates", what,
                               PEM_CERTS_MAX);
        }
    }
    *ret_certs = TAKE_PTR(certs);
    return 0;
}

int attest_cert_parse(const char *what, const uint8_t *data, size_t len, X509 **ret_cert,
                      attest_error *error)
{
    if (looks_like_pem(data, len)) {
        _cleanup_x509_stack_ STACK_OF(X509) *certs = NULL;
        int r = attest_pem_certs(what, data, len, &certs, error);
        if (r < 0)
            return r;
        if (sk_X509_num(certs) != 1)
            return attest_fail(error, -EBADMSG, "%s: %d certificates, expected 1", what,
                               sk_X509_num(certs));
        *ret_cert = sk_X509_shift(certs);
        return 0;
    }

    if (len == 0 || len > LONG_MAX)
        return attest_fail(error, -EBADMSG, "%s: %zu bytes of DER", what, len);
    const unsigned char *p = data;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    ERR_clear_error();
    if (!x)
        return attest_fail(error, -EBADMSG, "%s: not a DER certificate", what);
    if ((size_t)(p - data) != len) {
        size_t extra = len - (size_t)(p - data);
        X509_free(x);
        return attest_fail(error, -EBADMSG, "%s: %zu trailing bytes after the certificate", what,
                           extra);
    }
    *ret_cert = x;
    return 0;
}

int attest_crl_parse(const uint8_t *data, size_t len, X509_CRL **ret_crl, attest_error *error)
{
    X509_CRL *crl = NULL;
    size_t used = len;

    if (len == 0 || len > INT_MAX)
        return attest_fail(error, -EBADMSG, "CRL: %zu bytes", len);
    if (looks_like_pem(data, len)) {
        _cleanup_(BIO_freep) BIO *bio = BIO_new_mem_buf(data, (int)len);
        if (!bio)
            return attest_fail(error, -ENOMEM, "CRL: out of memory");
        crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
    } else {
        const unsigned char *p = data;
        crl = d2i_X509_CRL(NULL, &p, (long)len);
        used = (size_t)(p - data);
    }
    ERR_clear_error();
    if (!crl)
        return attest_fail(error, -EBADMSG, "CRL: neither DER nor PEM");
    if (used != len) {
        X509_CRL_free(crl);
        return attest_fail(error, -EBADMSG, "CRL: %zu trailing bytes", len - used);
    }
    *ret_crl = crl;
    return 0;
}

/* Maps an X509_V_ERR_* to the errno attest_verify() documents. */
static int chain_errno(int verify_error)
{
    switch (verify_error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID:
        return -EKEYEXPIRED;
    case X509_V_ERR_CERT_REVOKED:
        return -EKEYREVOKED;
    case X509_V_ERR_OUT_OF_MEM:
        return -ENOMEM;
    default:
        return -EKEYREJECTED;
    }
}

int attest_chain_verify(X509 *leaf, STACK_OF(X509) *untrusted, const attest_roots *roots,
                        STACK_OF(X509_CRL) *crls, int64_t at, attest_error *error)
{
    _cleanup_(X509_STORE_freep) X509_STORE *store = X509_STORE_new();
    _cleanup_(X509_STORE_CTX_freep) X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    _cleanup_(x509_stack_shallow_freep) STACK_OF(X509) *pool = sk_X509_new_null();
    /* not X509_V_FLAG_X509_STRICT: the Nitro and AMD leaves have no AKID */
    unsigned long flags = 0;

    if (!store || !ctx || !pool)
        return attest_fail(error, -ENOMEM, "certificate chain: out of memory");
    for (int i = 0; i < sk_X509_num(roots->trusted); i++)
        if (!X509_STORE_add_cert(store, sk_X509_value(roots->trusted, i)))
            return attest_fail(error, -ENOMEM, "certificate chain: out of memory");
    for (int i = 0; i < sk_X509_num(untrusted); i++)
        if (!sk_X509_push(pool, sk_X509_value(untrusted, i)))
            return attest_fail(error, -ENOMEM, "certificate chain: out of memory");
    for (int i = 0; i < sk_X509_num(roots->untrusted); i++)
        if (!sk_X509_push(pool, sk_X509_value(roots->untrusted, i)))
            return attest_fail(error, -ENOMEM, "certificate chain: out of memory");

    if (!X509_STORE_CTX_init(ctx, store, leaf, pool))
        return attest_fail(error, -ENOMEM, "certificate chain: out of memory");
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(ctx);
    /* sets X509_V_FLAG_USE_CHECK_TIME: never the wall clock */
    X509_VERIFY_PARAM_set_time(param, (time_t)at);
    if (crls) {
        X509_STORE_CTX_set0_crls(ctx, crls);
        flags |= X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL;
    }
    X509_VERIFY_PARAM_set_flags(param, flags);

    int ok = X509_verify_cert(ctx);
    ERR_clear_error();
    if (ok == 1)
        return 0;

    int e = X509_STORE_CTX_get_error(ctx);
    X509 *cur = X509_STORE_CTX_get_current_cert(ctx);
    char when[32], subject[160] = "?";
    if (cur)
        X509_NAME_oneline(X509_get_subject_name(cur), subject, sizeof(subject));
    time_format_rfc3339(at, when, sizeof(when));
    return attest_fail(error, chain_errno(e), "certificate chain: %s (checked at %s; depth %d, %s)",
                       X509_verify_cert_error_string(e), when,
                       X509_STORE_CTX_get_error_depth(ctx), subject);
}

int attest_ecdsa_verify(const char *what, EVP_PKEY *key, int curve_nid, const EVP_MD *md,
                        const uint8_t *r, const uint8_t *s, size_t n, const uint8_t *msg,
                        size_t msg_len, attest_error *error)
{
    _cleanup_(ECDSA_SIG_freep) ECDSA_SIG *sig = NULL;
    _cleanup_(BN_freep) BIGNUM *br = NULL, *bs = NULL;
    _cleanup_(EVP_MD_CTX_freep) EVP_MD_CTX *mdctx = NULL;
    _cleanup_(opensslfreep) unsigned char *der = NULL;
    char group[64];
    size_t group_len = 0;

    if (!key || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC ||
        !EVP_PKEY_get_group_name(key, group, sizeof(group), &group_len) ||
        OBJ_sn2nid(group) != curve_nid) {
        ERR_clear_error();
        return attest_fail(error, -EKEYREJECTED, "%s: the key is not an EC %s key", what,
                           OBJ_nid2sn(curve_nid));
    }

    sig = ECDSA_SIG_new();
    br = BN_bin2bn(r, (int)n, NULL);
    bs = BN_bin2bn(s, (int)n, NULL);
    if (!sig || !br || !bs || !ECDSA_SIG_set0(sig, br, bs))
        return attest_fail(error, -ENOMEM, "%s: out of memory", what);
    br = bs = NULL; /* owned by sig now */
    int der_len = i2d_ECDSA_SIG(sig, &der);
    mdctx = EVP_MD_CTX_new();
    if (der_len <= 0 || !mdctx || EVP_DigestVerifyInit(mdctx, NULL, md, NULL, key) != 1) {
        ERR_clear_error();
        return attest_fail(error, -ENOMEM, "%s: cannot set up verification", what);
    }
    int ok = EVP_DigestVerify(mdctx, der, (size_t)der_len, msg, msg_len);
    ERR_clear_error();
    if (ok != 1)
        return attest_fail(error, -EKEYREJECTED, "%s does not verify", what);
    return 0;
}
