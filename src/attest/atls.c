/* Attested TLS certificates: the evidence extension, self-signed agent
 * certificates and their verification (see atls.h). */
#include "attest/atls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/asn1t.h>
#include <openssl/bn.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "attest/attest-internal.h"
#include "attest/attest-policy.h"
#include "basic/encoding.h"

/* Moves the N bytes of DER (OpenSSL's, freed here) into a malloc'd copy in
 * *RET and *RET_LEN. Returns 0 or -ENOMEM. */
static int take_der(unsigned char *der, int n, uint8_t **ret, size_t *ret_len)
{
    uint8_t *out = malloc((size_t)n);
    if (out)
        memcpy(out, der, (size_t)n);
    OPENSSL_free(der);
    if (!out)
        return -ENOMEM;
    *ret = out;
    *ret_len = (size_t)n;
    return 0;
}

/* CloisterAttestation, as OpenSSL's ASN.1 templates decode and encode it. */
typedef struct CL_ATLS_EVIDENCE_st {
    ASN1_INTEGER *version;
    ASN1_UTF8STRING *type;
    ASN1_OCTET_STRING *evidence;
    ASN1_OCTET_STRING *endorsement;
} CL_ATLS_EVIDENCE;

ASN1_SEQUENCE(CL_ATLS_EVIDENCE) = {
    ASN1_SIMPLE(CL_ATLS_EVIDENCE, version, ASN1_INTEGER),
    ASN1_SIMPLE(CL_ATLS_EVIDENCE, type, ASN1_UTF8STRING),
    ASN1_SIMPLE(CL_ATLS_EVIDENCE, evidence, ASN1_OCTET_STRING),
    ASN1_IMP_OPT(CL_ATLS_EVIDENCE, endorsement, ASN1_OCTET_STRING, 0),
} static_ASN1_SEQUENCE_END(CL_ATLS_EVIDENCE)

IMPLEMENT_STATIC_ASN1_ALLOC_FUNCTIONS(CL_ATLS_EVIDENCE)
IMPLEMENT_STATIC_ASN1_ENCODE_FUNCTIONS(CL_ATLS_EVIDENCE)

DEFINE_TRIVIAL_CLEANUP_FUNC(CL_ATLS_EVIDENCE *, CL_ATLS_EVIDENCE_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(ASN1_OBJECT *, ASN1_OBJECT_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_NAME *, X509_NAME_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(ASN1_OCTET_STRING *, ASN1_OCTET_STRING_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_EXTENSION *, X509_EXTENSION_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(BIGNUM *, BN_free)

static void openssl_freep(void *p)
{
    OPENSSL_free(*(void **)p);
}

void atls_evidence_done(atls_evidence *e)
{
    if (!e)
        return;
    free(e->evidence);
    free(e->endorsement);
    *e = (atls_evidence){0};
}

int atls_evidence_encode(const atls_evidence *e, uint8_t **ret, size_t *ret_len)
{
    const char *type = attest_type_to_string(e->type);
    if (!type || !e->evidence || e->evidence_len == 0 || e->evidence_len > ATTEST_EVIDENCE_MAX ||
        e->endorsement_len > ATLS_ENDORSEMENT_MAX || (e->endorsement && e->endorsement_len == 0))
        return -EINVAL;
    _cleanup_(CL_ATLS_EVIDENCE_freep) CL_ATLS_EVIDENCE *a = CL_ATLS_EVIDENCE_new();
    if (!a || !ASN1_INTEGER_set(a->version, ATLS_EVIDENCE_VERSION) ||
        !ASN1_STRING_set(a->type, type, (int)strlen(type)) ||
        !ASN1_OCTET_STRING_set(a->evidence, e->evidence, (int)e->evidence_len))
        return -ENOMEM;
    if (e->endorsement) {
        a->endorsement = ASN1_OCTET_STRING_new();
        if (!a->endorsement || !ASN1_OCTET_STRING_set(a->endorsement, e->endorsement, (int)e->endorsement_len))
            return -ENOMEM;
    }
    unsigned char *der = NULL;
    int n = i2d_CL_ATLS_EVIDENCE(a, &der);
    return n <= 0 ? -ENOMEM : take_der(der, n, ret, ret_len);
}

/* A malloc'd copy of S's bytes into *RET; -ENOMEM. */
static int copy_octets(const ASN1_OCTET_STRING *s, uint8_t **ret, size_t *ret_len)
{
    size_t n = (size_t)ASN1_STRING_length(s);
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return -ENOMEM;
    memcpy(p, ASN1_STRING_get0_data(s), n);
    *ret = p;
    *ret_len = n;
    return 0;
}

int atls_evidence_decode(const uint8_t *der, size_t len, atls_evidence *ret, attest_error *error)
{
    if (len > ATLS_EXTENSION_MAX)
        return attest_fail(error, -E2BIG, "the evidence extension is %zu bytes, more than %d", len,
                           ATLS_EXTENSION_MAX);
    const unsigned char *p = der;
    _cleanup_(CL_ATLS_EVIDENCE_freep) CL_ATLS_EVIDENCE *a = d2i_CL_ATLS_EVIDENCE(NULL, &p, (long)len);
    if (!a)
        return attest_fail(error, -EBADMSG, "the evidence extension is not a CloisterAttestation SEQUENCE");
    if (p != der + len)
        return attest_fail(error, -EBADMSG, "the evidence extension has %zu bytes after its SEQUENCE",
                           (size_t)(der + len - p));
    /* DER only: one encoding per value, so what is verified is what is shown */
    _cleanup_(openssl_freep) unsigned char *again = NULL;
    int n = i2d_CL_ATLS_EVIDENCE(a, &again);
    if (n < 0)
        return -ENOMEM;
    if ((size_t)n != len || memcmp(again, der, len) != 0)
        return attest_fail(error, -EBADMSG, "the evidence extension is not in DER");
    int64_t version;
    if (!ASN1_INTEGER_get_int64(&version, a->version) || version != ATLS_EVIDENCE_VERSION)
        return attest_fail(error, -EBADMSG, "the evidence extension's version is not %d", ATLS_EVIDENCE_VERSION);
    const unsigned char *t = ASN1_STRING_get0_data(a->type);
    int tn = ASN1_STRING_length(a->type);
    char type_name[16];
    attest_type type;
    if (tn <= 0 || (size_t)tn >= sizeof(type_name) || memchr(t, 0, (size_t)tn))
        return attest_fail(error, -EBADMSG, "the evidence extension's type is not nitro, sev-snp, tdx or sandbox");
    memcpy(type_name, t, (size_t)tn);
    type_name[tn] = 0;
    if (attest_type_from_string(type_name, &type) < 0)
        return attest_fail(error, -EBADMSG, "the evidence extension's type is not nitro, sev-snp, tdx or sandbox");
    int ev_len = ASN1_STRING_length(a->evidence);
    if (ev_len <= 0 || ev_len > ATTEST_EVIDENCE_MAX)
        return attest_fail(error, -EBADMSG, "the evidence extension's evidence is empty or larger than %d bytes",
                           ATTEST_EVIDENCE_MAX);
    if (a->endorsement &&
        (ASN1_STRING_length(a->endorsement) <= 0 || ASN1_STRING_length(a->endorsement) > ATLS_ENDORSEMENT_MAX))
        return attest_fail(error, -EBADMSG, "the evidence extension's endorsement is empty or larger than %d bytes",
                           ATLS_ENDORSEMENT_MAX);
    atls_evidence e = {.type = type};
    if (copy_octets(a->evidence, &e.evidence, &e.evidence_len) < 0 ||
        (a->endorsement && copy_octets(a->endorsement, &e.endorsement, &e.endorsement_len) < 0)) {
        atls_evidence_done(&e);
        return -ENOMEM;
    }
    *ret = e;
    return 0;
}

/* The extension's OID as an object the caller frees; NULL on allocation failure. */
static ASN1_OBJECT *evidence_oid(void)
{
    return OBJ_txt2obj(ATLS_EVIDENCE_OID, 1);
}

int atls_certificate_evidence(X509 *cert, atls_evidence *ret, attest_error *error)
{
    _cleanup_(ASN1_OBJECT_freep) ASN1_OBJECT *oid = evidence_oid();
    if (!oid)
        return -ENOMEM;
    int at = X509_get_ext_by_OBJ(cert, oid, -1);
    if (at < 0)
        return attest_fail(error, -ENOENT, "the certificate has no attestation evidence extension (%s)",
                           ATLS_EVIDENCE_OID);
    if (X509_get_ext_by_OBJ(cert, oid, at) >= 0)
        return attest_fail(error, -EBADMSG, "the certificate has more than one attestation evidence extension");
    const ASN1_OCTET_STRING *v = X509_EXTENSION_get_data(X509_get_ext(cert, at));
    return atls_evidence_decode(ASN1_STRING_get0_data(v), (size_t)ASN1_STRING_length(v), ret, error);
}

/* Adds the extension NID with the X509V3 config VALUE to X (self-issued). */
static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    _cleanup_(X509_EXTENSION_freep) X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    return ext && X509_add_ext(x, ext, -1) ? 0 : -ENOMEM;
}

int atls_certificate_new(EVP_PKEY *key, const atls_evidence *e, int64_t now, int64_t lifetime, X509 **ret)
{
    if (!key || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC || lifetime <= 0)
        return -EINVAL;
    _cleanup_free_ uint8_t *der = NULL;
    size_t der_len = 0;
    int r = atls_evidence_encode(e, &der, &der_len);
    if (r < 0)
        return r;
    _cleanup_(X509_freep) X509 *x = X509_new();
    _cleanup_(X509_NAME_freep) X509_NAME *name = X509_NAME_new();
    _cleanup_(ASN1_OBJECT_freep) ASN1_OBJECT *oid = evidence_oid();
    _cleanup_(ASN1_OCTET_STRING_freep) ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
    _cleanup_(BN_freep) BIGNUM *serial = BN_new();
    if (!x || !name || !oid || !value || !serial)
        return -ENOMEM;
    /* a random positive 127-bit serial number */
    if (!BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) || !X509_set_version(x, X509_VERSION_3) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"cloister aTLS", -1, -1, 0) ||
        !X509_set_subject_name(x, name) || !X509_set_issuer_name(x, name) ||
        !ASN1_TIME_set(X509_getm_notBefore(x), (time_t)(now - 60)) ||
        !ASN1_TIME_set(X509_getm_notAfter(x), (time_t)(now + lifetime)) || !X509_set_pubkey(x, key))
        return -ENOMEM;
    if (add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 || add_ext(x, NID_ext_key_usage, "serverAuth") < 0)
        return -ENOMEM;
    if (!ASN1_OCTET_STRING_set(value, der, (int)der_len))
        return -ENOMEM;
    _cleanup_(X509_EXTENSION_freep) X509_EXTENSION *ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, value);
    if (!ext || !X509_add_ext(x, ext, -1))
        return -ENOMEM;
    if (X509_sign(x, key, EVP_sha384()) <= 0)
        return -EINVAL;
    *ret = TAKE_PTR(x);
    return 0;
}

int atls_certificate_spki(X509 *cert, uint8_t **ret, size_t *ret_len)
{
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    if (!pub)
        return -EBADMSG;
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pub, &der);
    return n <= 0 ? -EBADMSG : take_der(der, n, ret, ret_len);
}

/* Checks that the evidence RESULT carries NONCE: its nonce claim (nitro,
 * sandbox) or report_data[0..32) (sev-snp, tdx). */
static int check_nonce(const json_t *result, const uint8_t *nonce, size_t nonce_len, attest_error *error)
{
    const char *type = json_string_value(json_object_get(result, "type"));
    const json_t *claims = json_object_get(result, "claims");
    bool nitro = type && (strcmp(type, "nitro") == 0 || strcmp(type, "sandbox") == 0);
    const char *got = json_string_value(json_object_get(claims, nitro ? "nonce" : "report_data"));
    _cleanup_free_ char *hex = malloc(2 * nonce_len + 1);
    if (!hex)
        return -ENOMEM;
    hex_encode(nonce, nonce_len, hex);
    if (got && (nitro ? strlen(got) == 2 * nonce_len : strlen(got) >= 2 * nonce_len) &&
        memeq_consttime(got, hex, 2 * nonce_len))
        return 0;
    return attest_fail(error, -EKEYREJECTED, "the evidence does not carry the nonce this client sent");
}

/* Checks that the evidence RESULT binds SPKI: the public_key claim equals
 * it, or user_data / report_data[32..64) is its SHA-256. */
static int check_key_binding(const json_t *result, const uint8_t *spki, size_t spki_len, attest_error *error)
{
    const char *type = json_string_value(json_object_get(result, "type"));
    const json_t *claims = json_object_get(result, "claims");
    uint8_t digest[32];
    char digest_hex[65];
    EVP_Digest(spki, spki_len, digest, NULL, EVP_sha256(), NULL);
    hex_encode(digest, sizeof(digest), digest_hex);
    if (type && (strcmp(type, "nitro") == 0 || strcmp(type, "sandbox") == 0)) {
        const char *pk = json_string_value(json_object_get(claims, "public_key"));
        const char *ud = json_string_value(json_object_get(claims, "user_data"));
        _cleanup_free_ char *hex = malloc(2 * spki_len + 1);
        if (!hex)
            return -ENOMEM;
        hex_encode(spki, spki_len, hex);
        if ((pk && strcmp(pk, hex) == 0) || (ud && strcmp(ud, digest_hex) == 0))
            return 0;
    } else {
        const char *rd = json_string_value(json_object_get(claims, "report_data"));
        if (rd && strlen(rd) == 128 && strcmp(rd + 64, digest_hex) == 0)
            return 0;
    }
    return attest_fail(error, -EKEYREJECTED, "the certificate's public key is not the key bound in the evidence");
}

int atls_verify(X509 *cert, const json_t *policy, const atls_verify_options *opts, json_t **ret_result,
                attest_error *error)
{
    const json_t *spec = json_object_get(policy, "spec");
    if (!cert || !opts || !json_is_object(spec))
        return attest_fail(error, -EINVAL, "an aTLS certificate and an AttestationPolicy document are required");
    _cleanup_(atls_evidence_done) atls_evidence e = {0};
    int r = atls_certificate_evidence(cert, &e, error);
    if (r < 0)
        return r;
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    if (!pub || X509_verify(cert, pub) != 1) {
        ERR_clear_error();
        return attest_fail(error, -EKEYREJECTED, "the certificate is not signed by its own key");
    }
    _cleanup_free_ uint8_t *spki = NULL;
    size_t spki_len = 0;
    r = atls_certificate_spki(cert, &spki, &spki_len);
    if (r < 0)
        return attest_fail(error, r, "the certificate's public key cannot be encoded");

    attest_options o = {.time = opts->now, .roots = opts->roots,
                        .cert = {e.endorsement, e.endorsement_len}};
    _cleanup_(json_decrefp) json_t *result = NULL;
    attest_error why = {{0}};
    r = attest_verify(e.type, e.evidence, e.evidence_len, &o, &result, &why);
    if (r < 0)
        return attest_fail(error, r, "the %s evidence does not verify: %s", attest_type_to_string(e.type), why.text);
    r = check_key_binding(result, spki, spki_len, error);
    if (r == 0 && opts->nonce)
        r = check_nonce(result, opts->nonce, opts->nonce_len, error);
    if (r < 0)
        return r;
    attest_expect expect = {.now = opts->now, .nonce = opts->nonce, .nonce_len = opts->nonce_len,
                            .public_key = spki, .public_key_len = spki_len};
    char reason[ATTEST_REASON_MAX] = "";
    r = attest_policy_evaluate(spec, result, &expect, reason, sizeof(reason));
    if (r == -EPERM)
        return attest_fail(error, r, "the AttestationPolicy refuses the evidence: %s", reason);
    if (r < 0)
        return attest_fail(error, r, "the AttestationPolicy is malformed");
    if (ret_result)
        *ret_result = TAKE_PTR(result);
    return 0;
}

void atls_sni_from_nonce(const uint8_t nonce[ATLS_NONCE_LEN], char *out)
{
    hex_encode(nonce, ATLS_NONCE_LEN / 2, out);
    out[ATLS_NONCE_LEN] = '.';
    hex_encode(nonce + ATLS_NONCE_LEN / 2, ATLS_NONCE_LEN / 2, out + ATLS_NONCE_LEN + 1);
    strcpy(out + 2 * ATLS_NONCE_LEN + 1, ATLS_SNI_SUFFIX);
}

int atls_sni_to_nonce(const char *sni, uint8_t ret_nonce[ATLS_NONCE_LEN])
{
    uint8_t nonce[ATLS_NONCE_LEN];
    if (!sni || strlen(sni) != ATLS_SNI_LEN || sni[ATLS_NONCE_LEN] != '.' ||
        strcmp(sni + 2 * ATLS_NONCE_LEN + 1, ATLS_SNI_SUFFIX) != 0)
        return -EINVAL;
    for (size_t i = 0; i < 2 * ATLS_NONCE_LEN + 1; i++)
        if (i != ATLS_NONCE_LEN && !((sni[i] >= '0' && sni[i] <= '9') || (sni[i] >= 'a' && sni[i] <= 'f')))
            return -EINVAL;
    if (hex_decode(sni, ATLS_NONCE_LEN, nonce, ATLS_NONCE_LEN / 2) < 0 ||
        hex_decode(sni + ATLS_NONCE_LEN + 1, ATLS_NONCE_LEN, nonce + ATLS_NONCE_LEN / 2, ATLS_NONCE_LEN / 2) < 0)
        return -EINVAL;
    memcpy(ret_nonce, nonce, sizeof(nonce));
    return 0;
}

bool atls_secret_file_valid(const char *file)
{
    size_t n = strlen(file);
    if (n == 0 || n > ATLS_SECRET_FILE_MAX || file[0] == '.')
        return false;
    for (const char *p = file; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}
