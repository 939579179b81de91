/* The verifiers against real evidence from $CLOISTER_VECTORS/attestation:
 * each document verifies at its documented time with the documented claims,
 * and is refused after its certificates expire, with a flipped bit, with the
 * wrong roots, or truncated. The evidence files are found by listing the
 * folders, not by name. */
#include <cbor.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <glob.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

#include "attest/attest.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"

#define VECTOR_MAX (1024 * 1024)

typedef struct blob {
    uint8_t *data;
    size_t len;
} blob;

static void blob_free(blob *b)
{
    free(b->data);
    *b = (blob){};
}

static int64_t at(const char *rfc3339)
{
    int64_t t;
    cr_assert_eq(time_parse_rfc3339(rfc3339, &t), 0, "bad time %s", rfc3339);
    return t;
}

/* The files of attestation/DIR matching PATTERN, sorted; at least one. */
static glob_t vector_files(const char *dir, const char *pattern)
{
    const char *root = getenv("CLOISTER_VECTORS");
    char path[4096];
    glob_t g;
    cr_assert(root, "CLOISTER_VECTORS is not set");
    snprintf(path, sizeof(path), "%s/attestation/%s/%s", root, dir, pattern);
    cr_assert_eq(glob(path, 0, NULL, &g), 0, "no vector matches %s", path);
    cr_assert_gt(g.gl_pathc, 0);
    return g;
}

static blob read_blob(const char *path)
{
    char *data;
    size_t len;
    cr_assert_eq(read_file(path, VECTOR_MAX, &data, &len), 0, "cannot read %s", path);
    return (blob){(uint8_t *)data, len};
}

/* The one file of DIR matching PATTERN. */
static blob read_vector(const char *dir, const char *pattern)
{
    glob_t g = vector_files(dir, pattern);
    cr_assert_eq(g.gl_pathc, 1, "expected one %s in %s", pattern, dir);
    blob b = read_blob(g.gl_pathv[0]);
    globfree(&g);
    return b;
}

static blob copy_blob(const uint8_t *p, size_t n)
{
    blob b = {malloc(n ? n : 1), n};
    cr_assert(b.data);
    memcpy(b.data, p, n);
    return b;
}

/* Verifies and returns the result (or NULL), the errno in *ret_r. */
static json_t *verify(attest_type type, const blob *ev, const attest_options *o, int *ret_r,
                      attest_error *err)
{
    json_t *result = NULL;
    *ret_r = attest_verify(type, ev->data, ev->len, o, &result, err);
    if (*ret_r == 0)
        cr_assert(result);
    else
        cr_assert_null(result);
    return result;
}

static void expect_refused(attest_type type, const blob *ev, const attest_options *o, int want,
                           const char *reason)
{
    attest_error err = {};
    int r;
    json_t *result = verify(type, ev, o, &r, &err);
    json_decref(result);
    cr_assert_lt(r, 0, "verified, expected \"%s\"", reason);
    if (want)
        cr_assert_eq(r, want, "errno %d, expected %d: %s", r, want, err.text);
    if (reason)
        cr_assert(strstr(err.text, reason), "error \"%s\", expected \"%s\"", err.text, reason);
}

static const char *claim_str(json_t *result, const char *name)
{
    json_t *v = json_object_get(json_object_get(result, "claims"), name);
    cr_assert(json_is_string(v), "claim %s is not a string", name);
    return json_string_value(v);
}

/* Decodes base64 text evidence to its raw bytes. */
static blob raw_from_base64(const blob *text)
{
    blob raw = {malloc(text->len), 0};
    size_t n = text->len;
    while (n > 0 && (text->data[n - 1] == '\n' || text->data[n - 1] == '\r'))
        n--;
    long r = base64_decode((const char *)text->data, n, raw.data, text->len, false);
    cr_assert_gt(r, 0, "vector is not base64");
    raw.len = (size_t)r;
    return raw;
}

/* ---- AWS Nitro ---- */

#define NITRO_VALID "2024-09-07T14:37:40Z"

static blob nitro_evidence(void)
{
    return read_vector("nitro", "*.b64");
}

Test(nitro, verifies_with_claims)
{
    glob_t g = vector_files("nitro", "*.b64");
    for (size_t i = 0; i < g.gl_pathc; i++) {
        blob ev = read_blob(g.gl_pathv[i]);
        attest_options o = {.time = at(NITRO_VALID)};
        attest_error err = {};
        int r;
        json_t *res = verify(ATTEST_NITRO, &ev, &o, &r, &err);
        cr_assert_eq(r, 0, "%s: %s", g.gl_pathv[i], err.text);
        cr_assert(json_is_true(json_object_get(res, "verified")));
        cr_assert_str_eq(json_string_value(json_object_get(res, "type")), "nitro");
        cr_assert_str_eq(claim_str(res, "module_id"), "i-0a22e5c5f24d22174-enc0191cceb4289903f");
        cr_assert_str_eq(claim_str(res, "digest"), "SHA384");
        json_t *claims = json_object_get(res, "claims");
        cr_assert_eq(json_integer_value(json_object_get(claims, "timestamp")), 1725719859545);
        json_t *pcrs = json_object_get(claims, "pcrs");
        cr_assert_eq(json_object_size(pcrs), 16);
        const char *pcr0 = json_string_value(json_object_get(pcrs, "0"));
        cr_assert(pcr0 && strlen(pcr0) == 96);
        cr_assert_eq(strncmp(pcr0, "e72a46ca80a260fb044a1254", 24), 0, "PCR0 %s", pcr0);
        cr_assert_eq(strlen(claim_str(res, "user_data")), 2048);
        cr_assert_eq(strlen(claim_str(res, "nonce")), 2048);
        cr_assert_eq(strlen(claim_str(res, "public_key")), 2048);
        cr_assert_null(json_object_get(claims, "sandbox"));
        json_decref(res);
        blob_free(&ev);
    }
    globfree(&g);
}

Test(nitro, raw_and_tagged_forms_verify)
{
    blob text = nitro_evidence(), raw = raw_from_base64(&text);
    attest_options o = {.time = at(NITRO_VALID)};
    attest_error err = {};
    json_t *res = NULL;

    cr_assert_eq(attest_verify(ATTEST_NITRO, raw.data, raw.len, &o, &res, &err), 0, "%s", err.text);
    json_decref(res);

    blob tagged = {malloc(raw.len + 1), raw.len + 1};
    tagged.data[0] = 0xd2; /* tag 18, COSE_Sign1 */
    memcpy(tagged.data + 1, raw.data, raw.len);
    res = NULL;
    cr_assert_eq(attest_verify(ATTEST_NITRO, tagged.data, tagged.len, &o, &res, &err), 0, "%s",
                 err.text);
    json_decref(res);

    tagged.data[0] = 0xd1; /* tag 17, COSE_Mac0 */
    expect_refused(ATTEST_NITRO, &tagged, &o, -EBADMSG, NULL);

    blob tagged2 = {malloc(raw.len + 2), raw.len + 2};
    tagged2.data[0] = 0xd8; /* tag 18 in two bytes */
    tagged2.data[1] = 18;
    memcpy(tagged2.data + 2, raw.data, raw.len);
    res = NULL;
    cr_assert_eq(attest_verify(ATTEST_NITRO, tagged2.data, tagged2.len, &o, &res, &err), 0, "%s",
                 err.text);
    json_decref(res);
    tagged2.data[1] = 17;
    expect_refused(ATTEST_NITRO, &tagged2, &o, -EBADMSG, "tag 17, expected 18");
    blob_free(&tagged2);
    blob_free(&tagged);
    blob_free(&raw);
    blob_free(&text);
}

Test(nitro, refused_outside_certificate_validity)
{
    blob ev = nitro_evidence();
    attest_options o = {.time = at("2024-09-08T00:00:00Z")};
    expect_refused(ATTEST_NITRO, &ev, &o, -EKEYEXPIRED,
                   "certificate chain: certificate has expired (checked at 2024-09-08T00:00:00Z");
    o.time = at("2019-01-01T00:00:00Z");
    expect_refused(ATTEST_NITRO, &ev, &o, -EKEYEXPIRED, "certificate is not yet valid");
    blob_free(&ev);
}

/* Offset of the first occurrence of NEEDLE in HAY. */
static size_t find(const blob *hay, const uint8_t *needle, size_t n)
{
    for (size_t i = 0; i + n <= hay->len; i++)
        if (memcmp(hay->data + i, needle, n) == 0)
            return i;
    cr_assert_fail("bytes not found");
    return 0;
}

Test(nitro, refused_with_a_flipped_bit)
{
    blob text = nitro_evidence(), raw = raw_from_base64(&text);
    attest_options o = {.time = at(NITRO_VALID)};
    static const uint8_t pcr0[] = {0xe7, 0x2a, 0x46, 0xca, 0x80, 0xa2, 0x60, 0xfb};
    static const uint8_t module_id[] = "i-0a22e5c5f24d22174";

    /* signature: the last 96 bytes */
    blob b = copy_blob(raw.data, raw.len);
    b.data[b.len - 10] ^= 0x01;
    expect_refused(ATTEST_NITRO, &b, &o, -EKEYREJECTED, "signature does not verify");
    blob_free(&b);

    /* payload: PCR0 and the module id */
    b = copy_blob(raw.data, raw.len);
    b.data[find(&b, pcr0, sizeof(pcr0)) + 3] ^= 0x80;
    expect_refused(ATTEST_NITRO, &b, &o, -EKEYREJECTED, "signature does not verify");
    blob_free(&b);
    b = copy_blob(raw.data, raw.len);
    b.data[find(&b, module_id, sizeof(module_id) - 1) + 5] ^= 0x02;
    expect_refused(ATTEST_NITRO, &b, &o, -EKEYREJECTED, "signature does not verify");
    blob_free(&b);

    /* every byte of the leaf certificate (inside the signed payload) */
    static const uint8_t cert_start[] = {0x30, 0x82, 0x02, 0x7b, 0x30, 0x82};
    size_t cert = find(&raw, cert_start, sizeof(cert_start));
    for (size_t i = 0; i < 639; i += 7) {
        b = copy_blob(raw.data, raw.len);
        b.data[cert + i] ^= 0x10;
        expect_refused(ATTEST_NITRO, &b, &o, 0, NULL);
        blob_free(&b);
    }
    blob_free(&raw);
    blob_free(&text);
}

Test(nitro, refused_with_wrong_roots)
{
    blob ev = nitro_evidence(), intel = read_vector("tdx", "*.pem"), aws = read_vector("nitro", "*.pem");
    attest_options o = {.time = at(NITRO_VALID), .roots = {intel.data, intel.len}};
    expect_refused(ATTEST_NITRO, &ev, &o, -EKEYREJECTED, "certificate chain: ");

    /* the same root given explicitly is accepted */
    o.roots = (attest_blob){aws.data, aws.len};
    attest_error err = {};
    json_t *res = NULL;
    cr_assert_eq(attest_verify(ATTEST_NITRO, ev.data, ev.len, &o, &res, &err), 0, "%s", err.text);
    json_decref(res);
    blob_free(&ev);
    blob_free(&intel);
    blob_free(&aws);
}

Test(nitro, refused_when_malformed)
{
    blob text = nitro_evidence(), raw = raw_from_base64(&text);
    attest_options o = {.time = at(NITRO_VALID)};

    for (size_t n = 0; n < raw.len; n += (n < 64 ? 1 : 37)) {
        blob b = copy_blob(raw.data, n);
        expect_refused(ATTEST_NITRO, &b, &o, -EBADMSG, NULL);
        blob_free(&b);
    }
    for (size_t n = 1; n < text.len; n += 101) {
        blob b = copy_blob(text.data, n);
        expect_refused(ATTEST_NITRO, &b, &o, 0, NULL);
        blob_free(&b);
    }

    blob b = {malloc(raw.len + 1), raw.len + 1};
    memcpy(b.data, raw.data, raw.len);
    b.data[raw.len] = 0x00;
    expect_refused(ATTEST_NITRO, &b, &o, -EBADMSG, "1 trailing bytes");
    blob_free(&b);

    /* protected header {1: -35} → {1: -7} (ES256) */
    static const uint8_t prot[] = {0x44, 0xa1, 0x01, 0x38, 0x22};
    b = copy_blob(raw.data, raw.len);
    size_t p = find(&b, prot, sizeof(prot));
    b.data[p + 3] = 0x26;
    b.data[p + 4] = 0x00; /* keeps the length: -7 then a stray 0, caught as trailing */
    expect_refused(ATTEST_NITRO, &b, &o, -EBADMSG, "COSE protected header");
    b.data[p + 3] = 0x38;
    b.data[p + 4] = 0x06; /* -7 in two bytes */
    expect_refused(ATTEST_NITRO, &b, &o, -EKEYREJECTED, "alg is not ES384");
    blob_free(&b);

    /* an indefinite-length array instead of the definite one */
    b = copy_blob(raw.data, raw.len);
    b.data[0] = 0x9f;
    expect_refused(ATTEST_NITRO, &b, &o, -EBADMSG, "unsupported CBOR item");
    blob_free(&b);

    blob_free(&raw);
    blob_free(&text);
}

Test(sandbox, same_format_with_caller_roots)
{
    blob ev = nitro_evidence(), aws = read_vector("nitro", "*.pem");
    attest_options o = {.time = at(NITRO_VALID)};
    expect_refused(ATTEST_SANDBOX, &ev, &o, -ENOKEY, "needs roots");

    o.roots = (attest_blob){aws.data, aws.len};
    attest_error err = {};
    json_t *res = NULL;
    cr_assert_eq(attest_verify(ATTEST_SANDBOX, ev.data, ev.len, &o, &res, &err), 0, "%s", err.text);
    cr_assert_str_eq(json_string_value(json_object_get(res, "type")), "sandbox");
    cr_assert(json_is_true(json_object_get(json_object_get(res, "claims"), "sandbox")));
    json_decref(res);
    blob_free(&ev);
    blob_free(&aws);
}

/* A sandbox document made here: the cluster platform CA signs a runner
 * certificate, whose key signs the COSE_Sign1 as the runner will. */

#define SANDBOX_NOW 1767225600 /* 2026-01-01T00:00:00Z */

static X509 *make_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer, const char *cn, bool ca)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    X509V3_CTX ctx;
    cr_assert(x && name);
    cr_assert(X509_set_version(x, X509_VERSION_3));
    ASN1_INTEGER_set(X509_get_serialNumber(x), ca ? 1 : 2);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    ASN1_TIME_set(X509_getm_notBefore(x), SANDBOX_NOW - 3600);
    ASN1_TIME_set(X509_getm_notAfter(x), SANDBOX_NOW + 3600);
    X509_set_pubkey(x, key);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints,
                                              ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    cr_assert(ext && X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
    cr_assert(X509_sign(x, signer, EVP_sha384()));
    X509_NAME_free(name);
    return x;
}

/* Builds a signed sandbox document and the platform CA's PEM. */
static void make_sandbox(blob *ret_doc, blob *ret_ca_pem)
{
    EVP_PKEY *ca_key = EVP_EC_gen("P-384"), *leaf_key = EVP_EC_gen("P-384");
    cr_assert(ca_key && leaf_key);
    X509 *ca = make_cert(ca_key, ca_key, NULL, "cloister platform CA", true);
    X509 *leaf = make_cert(leaf_key, ca_key, ca, "cloister runner", false);

    attest_sandbox_claims claims = {.module_id = "sandbox-scorer-0",
                                    .timestamp_ms = (uint64_t)SANDBOX_NOW * 1000,
                                    .nonce = (const uint8_t *)"n0nce",
                                    .nonce_len = 5,
                                    .user_data = (const uint8_t *)"",
                                    .user_data_len = 0};
    for (uint8_t i = 0; i < ATTEST_SANDBOX_PCRS; i++)
        memset(claims.pcrs[i], i, ATTEST_SANDBOX_PCR_LEN);
    uint8_t *doc = NULL;
    size_t doc_len = 0;
    cr_assert_eq(attest_sandbox_issue(leaf_key, leaf, &ca, 1, &claims, &doc, &doc_len), 0);
    *ret_doc = (blob){doc, doc_len};

    BIO *bio = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio_X509(bio, ca));
    char *pem;
    long pem_len = BIO_get_mem_data(bio, &pem);
    *ret_ca_pem = copy_blob((const uint8_t *)pem, (size_t)pem_len);
    BIO_free(bio);
    X509_free(ca);
    X509_free(leaf);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(leaf_key);
}

Test(sandbox, own_platform_document_with_null_fields)
{
    blob doc, ca;
    make_sandbox(&doc, &ca);
    attest_options o = {.time = SANDBOX_NOW, .roots = {ca.data, ca.len}};
    attest_error err = {};
    json_t *res = NULL;
    cr_assert_eq(attest_verify(ATTEST_SANDBOX, doc.data, doc.len, &o, &res, &err), 0, "%s", err.text);
    json_t *claims = json_object_get(res, "claims");
    cr_assert(json_is_true(json_object_get(claims, "sandbox")));
    cr_assert(json_is_null(json_object_get(claims, "public_key")));
    cr_assert_str_eq(claim_str(res, "user_data"), "");
    cr_assert_str_eq(claim_str(res, "nonce"), "6e306e6365");
    cr_assert_str_eq(claim_str(res, "module_id"), "sandbox-scorer-0");
    cr_assert_eq(strncmp(json_string_value(json_object_get(json_object_get(claims, "pcrs"), "15")),
                         "0f0f0f", 6), 0);
    json_decref(res);

    /* not Nitro evidence: the AWS root does not sign it */
    attest_options nitro = {.time = SANDBOX_NOW};
    expect_refused(ATTEST_NITRO, &doc, &nitro, -EKEYREJECTED, "certificate chain");
    /* after the runner certificate expires */
    o.time = SANDBOX_NOW + 7200;
    expect_refused(ATTEST_SANDBOX, &doc, &o, -EKEYEXPIRED, "certificate has expired");
    /* one flipped bit in the nonce */
    o.time = SANDBOX_NOW;
    static const uint8_t nonce[] = "n0nce";
    blob b = copy_blob(doc.data, doc.len);
    b.data[find(&b, nonce, 5)] ^= 0x01;
    expect_refused(ATTEST_SANDBOX, &b, &o, -EKEYREJECTED, "signature does not verify");
    blob_free(&b);
    blob_free(&doc);
    blob_free(&ca);
}

/* ---- AMD SEV-SNP ---- */

#define SNP_VALID "2024-01-01T00:00:00Z"

static blob snp_report(void)
{
    return read_vector("sev-snp", "*.bin");
}

static blob snp_cert(void)
{
    return read_vector("sev-snp", "*.der");
}

Test(sev_snp, verifies_with_claims)
{
    glob_t g = vector_files("sev-snp", "*.bin");
    blob cert = snp_cert();
    for (size_t i = 0; i < g.gl_pathc; i++) {
        blob ev = read_blob(g.gl_pathv[i]);
        attest_options o = {.time = at(SNP_VALID), .cert = {cert.data, cert.len}};
        attest_error err = {};
        int r;
        json_t *res = verify(ATTEST_SEV_SNP, &ev, &o, &r, &err);
        cr_assert_eq(r, 0, "%s: %s", g.gl_pathv[i], err.text);
        json_t *claims = json_object_get(res, "claims");
        cr_assert_str_eq(json_string_value(json_object_get(res, "type")), "sev-snp");
        cr_assert_eq(json_integer_value(json_object_get(claims, "version")), 2);
        cr_assert(json_is_false(json_object_get(claims, "debug")));
        cr_assert_eq(json_integer_value(json_object_get(claims, "policy")), 0x3001f);
        cr_assert_eq(strncmp(claim_str(res, "measurement"), "a1f39304132...", 11), 0);
        cr_assert_eq(strlen(claim_str(res, "measurement")), 96);
        cr_assert_eq(strncmp(claim_str(res, "chip_id"), "c38427a30d4c7af9", 16), 0);
        cr_assert_eq(strlen(claim_str(res, "report_data")), 128);
        cr_assert_eq(strlen(claim_str(res, "host_data")), 64);
        json_t *tcb = json_object_get(claims, "reported_tcb");
        cr_assert_eq(json_integer_value(json_object_get(tcb, "bootloader")), 3);
        cr_assert_eq(json_integer_value(json_object_get(tcb, "tee")), 0);
        cr_assert_eq(json_integer_value(json_object_get(tcb, "snp")), 8);
        cr_assert_eq(json_integer_value(json_object_get(tcb, "microcode")), 115);
        json_decref(res);
        blob_free(&ev);
    }
    blob_free(&cert);
    globfree(&g);
}

Test(sev_snp, accepts_pem_certificate_and_given_chain)
{
    blob ev = snp_report(), der = snp_cert(), chain = read_vector("sev-snp", "*.pem");
    const unsigned char *p = der.data;
    X509 *x = d2i_X509(NULL, &p, (long)der.len);
    cr_assert(x);
    BIO *bio = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio_X509(bio, x));
    char *pem;
    long pem_len = BIO_get_mem_data(bio, &pem);

    attest_options o = {.time = at(SNP_VALID),
                        .cert = {(const uint8_t *)pem, (size_t)pem_len},
                        .roots = {chain.data, chain.len}};
    attest_error err = {};
    json_t *res = NULL;
    cr_assert_eq(attest_verify(ATTEST_SEV_SNP, ev.data, ev.len, &o, &res, &err), 0, "%s", err.text);
    json_decref(res);
    BIO_free(bio);
    X509_free(x);
    blob_free(&ev);
    blob_free(&der);
    blob_free(&chain);
}

Test(sev_snp, refused_outside_certificate_validity)
{
    blob ev = snp_report(), cert = snp_cert();
    attest_options o = {.time = at("2030-02-01T00:00:00Z"), .cert = {cert.data, cert.len}};
    expect_refused(ATTEST_SEV_SNP, &ev, &o, -EKEYEXPIRED, "certificate has expired (checked at 2030-02-01");
    o.time = at("2023-01-01T00:00:00Z");
    expect_refused(ATTEST_SEV_SNP, &ev, &o, -EKEYEXPIRED, "certificate is not yet valid");
    blob_free(&ev);
    blob_free(&cert);
}

Test(sev_snp, refused_with_a_flipped_bit)
{
    blob ev = snp_report(), cert = snp_cert();
    attest_options o = {.time = at(SNP_VALID), .cert = {cert.data, cert.len}};

    /* every byte of the signed report and of the signature's r and s */
    for (size_t i = 0; i < 0x2A0 + 48; i++) {
        if (i >= 0x2A0 && i < 0x2A0 + 48) {
            blob b = copy_blob(ev.data, ev.len);
            b.data[i] ^= 0x04;
            expect_refused(ATTEST_SEV_SNP, &b, &o, 0, NULL);
            b.data[0x2E8 + (i - 0x2A0)] ^= 0x04;
            blob_free(&b);
            continue;
        }
        blob b = copy_blob(ev.data, ev.len);
        b.data[i] ^= 0x01;
        expect_refused(ATTEST_SEV_SNP, &b, &o, 0, NULL);
        blob_free(&b);
    }
    blob b = copy_blob(ev.data, ev.len);
    b.data[0x90] ^= 0x01; /* measurement */
    expect_refused(ATTEST_SEV_SNP, &b, &o, -EKEYREJECTED, "signature does not verify");
    blob_free(&b);
    b = copy_blob(ev.data, ev.len);
    b.data[0x2A0 + 60] ^= 0x01; /* r beyond 48 bytes */
    expect_refused(ATTEST_SEV_SNP, &b, &o, -EBADMSG, "reserved bytes at 0x2d0");
    blob_free(&b);

    /* the certificate: its key, its signature */
    for (size_t i = 300; i < cert.len; i += 53) {
        blob c = copy_blob(cert.data, cert.len);
        c.data[i] ^= 0x01;
        o.cert = (attest_blob){c.data, c.len};
        expect_refused(ATTEST_SEV_SNP, &ev, &o, 0, NULL);
        blob_free(&c);
    }
    blob c = copy_blob(cert.data, cert.len);
    c.data[c.len - 5] ^= 0x01;
    o.cert = (attest_blob){c.data, c.len};
    expect_refused(ATTEST_SEV_SNP, &ev, &o, -EKEYREJECTED, "certificate chain: certificate signature failure");
    blob_free(&c);
    blob_free(&ev);
    blob_free(&cert);
}

Test(sev_snp, refused_with_wrong_roots_or_no_certificate)
{
    blob ev = snp_report(), cert = snp_cert(), aws = read_vector("nitro", "*.pem");
    attest_options o = {.time = at(SNP_VALID), .cert = {cert.data, cert.len}, .roots = {aws.data, aws.len}};
    expect_refused(ATTEST_SEV_SNP, &ev, &o, -EKEYREJECTED, "certificate chain");
    o = (attest_options){.time = at(SNP_VALID)};
    expect_refused(ATTEST_SEV_SNP, &ev, &o, -ENOKEY, "VCEK or VLEK");
    blob_free(&ev);
    blob_free(&cert);
    blob_free(&aws);
}

Test(sev_snp, refused_when_malformed)
{
    blob ev = snp_report(), cert = snp_cert();
    attest_options o = {.time = at(SNP_VALID), .cert = {cert.data, cert.len}};
    for (size_t n = 1; n < ev.len; n += 13) {
        blob b = copy_blob(ev.data, n);
        expect_refused(ATTEST_SEV_SNP, &b, &o, -EBADMSG, "report:");
        blob_free(&b);
    }
    blob b = copy_blob(ev.data, ev.len);
    b.data[0] = 4;
    expect_refused(ATTEST_SEV_SNP, &b, &o, -EBADMSG, "report field version: 4");
    b.data[0] = 2;
    b.data[0x48] = 7 << 2; /* signing key: none */
    expect_refused(ATTEST_SEV_SNP, &b, &o, -EKEYREJECTED, "signing_key: 7");
    blob_free(&b);
    blob_free(&ev);
    blob_free(&cert);
}

/* ---- Intel TDX ---- */

#define TDX_VALID "2023-07-01T01:00:00Z"

static blob tdx_quote(void)
{
    return read_vector("tdx", "*.dat");
}

/* The CRLs of the folder: every file that parses as a DER CRL. */
static void tdx_crls(blob crls[2], attest_blob views[2])
{
    glob_t g = vector_files("tdx", "*");
    size_t n = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        blob b = read_blob(g.gl_pathv[i]);
        const unsigned char *p = b.data;
        X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)b.len);
        if (crl && n < 2) {
            crls[n] = b;
            views[n] = (attest_blob){b.data, b.len};
            n++;
        } else
            blob_free(&b);
        X509_CRL_free(crl);
    }
    globfree(&g);
    cr_assert_eq(n, 2, "expected the PCK and root CRLs");
}

Test(tdx, verifies_with_claims)
{
    glob_t g = vector_files("tdx", "*.dat");
    for (size_t i = 0; i < g.gl_pathc; i++) {
        blob ev = read_blob(g.gl_pathv[i]);
        attest_options o = {.time = at(TDX_VALID)};
        attest_error err = {};
        int r;
        json_t *res = verify(ATTEST_TDX, &ev, &o, &r, &err);
        cr_assert_eq(r, 0, "%s: %s", g.gl_pathv[i], err.text);
        json_t *claims = json_object_get(res, "claims");
        cr_assert_str_eq(json_string_value(json_object_get(res, "type")), "tdx");
        cr_assert_eq(json_integer_value(json_object_get(claims, "version")), 4);
        cr_assert(json_is_false(json_object_get(claims, "debug")));
        cr_assert_eq(strncmp(claim_str(res, "mr_td"), "6363b8043668a3ad", 16), 0);
        cr_assert_eq(strlen(claim_str(res, "mr_td")), 96);
        cr_assert_eq(strlen(claim_str(res, "rtmr3")), 96);
        cr_assert_eq(strlen(claim_str(res, "mr_config_id")), 96);
        cr_assert_eq(strlen(claim_str(res, "report_data")), 128);
        cr_assert_str_eq(claim_str(res, "tee_tcb_svn"), "03000400000000000000000000000000");
        json_decref(res);
        blob_free(&ev);
    }
    globfree(&g);
}

Test(tdx, crls_are_checked_when_given)
{
    blob ev = tdx_quote(), crls[2];
    attest_blob views[2];
    tdx_crls(crls, views);
    attest_options o = {.time = at(TDX_VALID), .crls = views, .n_crls = 2};
    attest_error err = {};
    json_t *res = NULL;
    cr_assert_eq(attest_verify(ATTEST_TDX, ev.data, ev.len, &o, &res, &err), 0, "%s", err.text);
    json_decref(res);

    /* the PCK CRL's next update is 2023-07-08 */
    o.time = at("2023-07-10T00:00:00Z");
    expect_refused(ATTEST_TDX, &ev, &o, -EKEYEXPIRED, "CRL has expired");
    /* one CRL alone does not cover the chain */
    o.time = at(TDX_VALID);
    o.n_crls = 1;
    expect_refused(ATTEST_TDX, &ev, &o, -EKEYREJECTED, "unable to get certificate CRL");
    /* a CRL that is not one */
    attest_blob junk = {(const uint8_t *)"junk", 4};
    o.crls = &junk;
    expect_refused(ATTEST_TDX, &ev, &o, -EBADMSG, "CRL");
    blob_free(&crls[0]);
    blob_free(&crls[1]);
    blob_free(&ev);
}

Test(tdx, refused_outside_certificate_validity)
{
    blob ev = tdx_quote();
    attest_options o = {.time = at("2029-10-01T00:00:00Z")};
    expect_refused(ATTEST_TDX, &ev, &o, -EKEYEXPIRED, "certificate has expired (checked at 2029-10-01");
    o.time = at("2022-01-01T00:00:00Z");
    expect_refused(ATTEST_TDX, &ev, &o, -EKEYEXPIRED, "certificate is not yet valid");
    blob_free(&ev);
}

Test(tdx, refused_with_a_flipped_bit)
{
    blob ev = tdx_quote();
    attest_options o = {.time = at(TDX_VALID)};
    /* header, body, signature, attestation key, QE report and its
     * signature, authentication data: every 3rd byte */
    size_t pck_pem = 0x302 + 384 + 64 + 2 + 32 + 6;
    for (size_t i = 0; i < pck_pem; i += 3) {
        blob b = copy_blob(ev.data, ev.len);
        b.data[i] ^= 0x01;
        expect_refused(ATTEST_TDX, &b, &o, 0, NULL);
        blob_free(&b);
    }
    blob b = copy_blob(ev.data, ev.len);
    b.data[0xB8] ^= 0x01; /* mr_td */
    expect_refused(ATTEST_TDX, &b, &o, -EKEYREJECTED, "quote signature does not verify");
    blob_free(&b);
    b = copy_blob(ev.data, ev.len);
    b.data[0x302 + 320] ^= 0x01; /* QE report data */
    expect_refused(ATTEST_TDX, &b, &o, -EKEYREJECTED, "QE report signature does not verify");
    blob_free(&b);
    /* the PCK certificate's signature, in its PEM text */
    b = copy_blob(ev.data, ev.len);
    static const char end[] = "-----END CERTIFICATE-----";
    size_t e = find(&b, (const uint8_t *)end, STRLEN(end));
    b.data[e - 10] = b.data[e - 10] == 'A' ? 'B' : 'A';
    expect_refused(ATTEST_TDX, &b, &o, 0, NULL);
    blob_free(&b);
    blob_free(&ev);
}

Test(tdx, refused_with_wrong_roots)
{
    blob ev = tdx_quote(), aws = read_vector("nitro", "*.pem");
    attest_options o = {.time = at(TDX_VALID), .roots = {aws.data, aws.len}};
    expect_refused(ATTEST_TDX, &ev, &o, -EKEYREJECTED, "certificate chain");
    blob_free(&ev);
    blob_free(&aws);
}

Test(tdx, refused_when_malformed)
{
    blob ev = tdx_quote();
    attest_options o = {.time = at(TDX_VALID)};
    for (size_t n = 1; n < 0x27C + 4299; n += 11) {
        blob b = copy_blob(ev.data, n);
        expect_refused(ATTEST_TDX, &b, &o, -EBADMSG, "quote");
        blob_free(&b);
    }
    blob b = copy_blob(ev.data, ev.len);
    b.data[0] = 3;
    expect_refused(ATTEST_TDX, &b, &o, -EBADMSG, "quote header version: 3");
    b.data[0] = 4;
    b.data[4] = 0; /* SGX */
    expect_refused(ATTEST_TDX, &b, &o, -EBADMSG, "tee type: 0x0");
    blob_free(&b);
    blob_free(&ev);
}

/* ---- common ---- */

Test(attest, types_and_refusal_document)
{
    attest_type t;
    cr_assert_eq(attest_type_from_string("sev-snp", &t), 0);
    cr_assert_eq(t, ATTEST_SEV_SNP);
    cr_assert_eq(attest_type_from_string("sgx", &t), -EINVAL);
    cr_assert_str_eq(attest_type_to_string(ATTEST_SANDBOX), "sandbox");
    cr_assert_null(attest_type_to_string(_ATTEST_TYPE_MAX));

    json_t *doc = attest_refusal_new(ATTEST_TDX, "signature does not verify");
    char *s = json_dumps(doc, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert_str_eq(s, "{\"claims\":{},\"error\":\"signature does not verify\",\"type\":\"tdx\","
                        "\"verified\":false}");
    free(s);
    json_decref(doc);

    attest_options o = {};
    json_t *res = NULL;
    cr_assert_eq(attest_verify(ATTEST_NITRO, (const uint8_t *)"", 0, &o, &res, NULL), -EBADMSG);
    cr_assert_eq(attest_verify(_ATTEST_TYPE_MAX, (const uint8_t *)"x", 1, &o, &res, NULL), -EINVAL);
    cr_assert_null(res);
}

/* Median of N verifications of EV, in microseconds. */
static double median_us(attest_type type, const blob *ev, const attest_options *o, int n)
{
    double *t = calloc((size_t)n, sizeof(double));
    for (int i = 0; i < n; i++) {
        json_t *res = NULL;
        uint64_t start = time_mono_ns();
        cr_assert_eq(attest_verify(type, ev->data, ev->len, o, &res, NULL), 0);
        t[i] = (double)(time_mono_ns() - start) / 1e3;
        json_decref(res);
    }
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    double m = t[n / 2];
    free(t);
    return m;
}

Test(attest, verification_time)
{
    blob nitro = nitro_evidence(), snp = snp_report(), cert = snp_cert(), tdx = tdx_quote();
    attest_options on = {.time = at(NITRO_VALID)};
    attest_options os = {.time = at(SNP_VALID), .cert = {cert.data, cert.len}};
    attest_options ot = {.time = at(TDX_VALID)};
    double n = median_us(ATTEST_NITRO, &nitro, &on, 21);
    double s = median_us(ATTEST_SEV_SNP, &snp, &os, 21);
    double t = median_us(ATTEST_TDX, &tdx, &ot, 21);
    printf("attest verification, median of 21: nitro %.0f us, sev-snp %.0f us, tdx %.0f us\n", n, s, t);
    blob_free(&nitro);
    blob_free(&snp);
    blob_free(&cert);
    blob_free(&tdx);
}
