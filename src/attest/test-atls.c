/* aTLS certificates: the evidence extension round trip and strict decoding,
 * and atls_verify() on good, wrong-key, tampered, unpinned-code and
 * nonce cases, with sandbox evidence issued here as the runner would. */
#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "attest/atls.h"
#include "basic/encoding.h"

#define NOW 1767225600 /* 2026-01-01T00:00:00Z */

/* The cluster's platform CA, the runner's certified key, and its PEM. */
static EVP_PKEY *ca_key, *runner_key;
static X509 *ca, *runner_cert;
static char *ca_pem;
static size_t ca_pem_len;

static X509 *make_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer, const char *cn, bool is_ca)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    X509V3_CTX ctx;
    cr_assert(x && name);
    cr_assert(X509_set_version(x, X509_VERSION_3));
    ASN1_INTEGER_set(X509_get_serialNumber(x), is_ca ? 1 : 2);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    ASN1_TIME_set(X509_getm_notBefore(x), NOW - 3600);
    ASN1_TIME_set(X509_getm_notAfter(x), NOW + 3600);
    X509_set_pubkey(x, key);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints,
                                              is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    cr_assert(ext && X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
    cr_assert(X509_sign(x, signer, EVP_sha384()));
    X509_NAME_free(name);
    return x;
}

static void platform_setup(void)
{
    ca_key = EVP_EC_gen("P-384");
    runner_key = EVP_EC_gen("P-384");
    cr_assert(ca_key && runner_key);
    ca = make_cert(ca_key, ca_key, NULL, "cloister platform CA", true);
    runner_cert = make_cert(runner_key, ca_key, ca, "cloister runner", false);
    BIO *bio = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio_X509(bio, ca));
    char *p;
    long n = BIO_get_mem_data(bio, &p);
    ca_pem = malloc((size_t)n);
    memcpy(ca_pem, p, (size_t)n);
    ca_pem_len = (size_t)n;
    BIO_free(bio);
}

static void platform_teardown(void)
{
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(runner_key);
    X509_free(ca);
    X509_free(runner_cert);
    free(ca_pem);
}

/* The DER SubjectPublicKeyInfo of KEY (malloc'd). */
static uint8_t *spki_of(EVP_PKEY *key, size_t *len)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(key, &der);
    cr_assert_gt(n, 0);
    uint8_t *out = malloc((size_t)n);
    memcpy(out, der, (size_t)n);
    OPENSSL_free(der);
    *len = (size_t)n;
    return out;
}

/* Sandbox evidence as the runner issues it: PCR0 = 0x11.., binding the
 * public key BOUND (SPKI) and NONCE (may be NULL). */
static atls_evidence issue(EVP_PKEY *bound, const uint8_t *nonce, size_t nonce_len)
{
    size_t spki_len;
    uint8_t *spki = spki_of(bound, &spki_len);
    attest_sandbox_claims c = {.module_id = "sandbox-scorer", .timestamp_ms = (uint64_t)NOW * 1000,
                               .public_key = spki, .public_key_len = spki_len, .nonce = nonce,
                               .nonce_len = nonce_len};
    memset(c.pcrs[0], 0x11, ATTEST_SANDBOX_PCR_LEN);
    memset(c.pcrs[1], 0x22, ATTEST_SANDBOX_PCR_LEN);
    uint8_t *doc = NULL;
    size_t len = 0;
    cr_assert_eq(attest_sandbox_issue(runner_key, runner_cert, &ca, 1, &c, &doc, &len), 0);
    free(spki);
    return (atls_evidence){.type = ATTEST_SANDBOX, .evidence = doc, .evidence_len = len};
}

/* An AttestationPolicy document pinning PCR0 to PCR0_BYTE repeated. */
static json_t *policy(uint8_t pcr0_byte, bool require_nonce)
{
    uint8_t pcr[ATTEST_SANDBOX_PCR_LEN];
    char hex[2 * sizeof(pcr) + 1];
    memset(pcr, pcr0_byte, sizeof(pcr));
    hex_encode(pcr, sizeof(pcr), hex);
    json_t *p = json_pack("{s:s, s:{s:s}, s:{s:[s], s:b, s:i, s:b, s:{s:[s]}}}", "kind", "AttestationPolicy",
                          "metadata", "name", "enclaves", "spec", "types", "sandbox", "allowSandbox", 1,
                          "maxAgeSeconds", 300, "requireNonce", require_nonce, "referenceValues", "pcr0", hex);
    cr_assert_not_null(p);
    return p;
}

static atls_verify_options options(void)
{
    return (atls_verify_options){.now = NOW + 5, .roots = {(const uint8_t *)ca_pem, ca_pem_len}};
}

TestSuite(atls, .init = platform_setup, .fini = platform_teardown);

Test(atls, extension_round_trip_through_a_certificate)
{
    EVP_PKEY *key = EVP_EC_gen("P-384");
    atls_evidence e = issue(key, NULL, 0);
    uint8_t endorsement[] = {1, 2, 3};
    e.endorsement = endorsement;
    e.endorsement_len = sizeof(endorsement);
    uint8_t *der = NULL;
    size_t len = 0;
    cr_assert_eq(atls_evidence_encode(&e, &der, &len), 0);
    atls_evidence back = {0};
    attest_error err = {{0}};
    cr_assert_eq(atls_evidence_decode(der, len, &back, &err), 0, "%s", err.text);
    cr_assert_eq(back.type, ATTEST_SANDBOX);
    cr_assert_eq(back.evidence_len, e.evidence_len);
    cr_assert_eq(memcmp(back.evidence, e.evidence, e.evidence_len), 0);
    cr_assert_eq(back.endorsement_len, 3);
    cr_assert_eq(memcmp(back.endorsement, endorsement, 3), 0);
    atls_evidence_done(&back);
    free(der);

    e.endorsement = NULL;
    e.endorsement_len = 0;
    X509 *cert = NULL;
    cr_assert_eq(atls_certificate_new(key, &e, NOW, 3600, &cert), 0);
    /* a DER round trip, as a client receives it */
    unsigned char *cder = NULL;
    int clen = i2d_X509(cert, &cder);
    const unsigned char *p = cder;
    X509 *received = d2i_X509(NULL, &p, clen);
    cr_assert_not_null(received);
    cr_assert_eq(atls_certificate_evidence(received, &back, &err), 0, "%s", err.text);
    cr_assert_eq(back.evidence_len, e.evidence_len);
    cr_assert_eq(memcmp(back.evidence, e.evidence, e.evidence_len), 0);
    cr_assert_null(back.endorsement);
    /* the extension is non-critical, named by the documented OID */
    ASN1_OBJECT *oid = OBJ_txt2obj(ATLS_EVIDENCE_OID, 1);
    int at = X509_get_ext_by_OBJ(received, oid, -1);
    cr_assert_geq(at, 0);
    cr_assert_eq(X509_EXTENSION_get_critical(X509_get_ext(received, at)), 0);
    ASN1_OBJECT_free(oid);
    atls_evidence_done(&back);
    OPENSSL_free(cder);
    X509_free(received);
    X509_free(cert);
    free(e.evidence);
    EVP_PKEY_free(key);
}

/* Encodes a CloisterAttestation by hand: VERSION, TYPE, EVIDENCE. */
static size_t hand_encode(uint8_t *out, int version, const char *type, const uint8_t *ev, size_t ev_len)
{
    size_t tl = strlen(type), body = 3 + 2 + tl + 2 + ev_len;
    cr_assert_lt(body, 128);
    size_t n = 0;
    out[n++] = 0x30;
    out[n++] = (uint8_t)body;
    out[n++] = 0x02, out[n++] = 0x01, out[n++] = (uint8_t)version;
    out[n++] = 0x0c, out[n++] = (uint8_t)tl;
    memcpy(out + n, type, tl), n += tl;
    out[n++] = 0x04, out[n++] = (uint8_t)ev_len;
    memcpy(out + n, ev, ev_len), n += ev_len;
    return n;
}

Test(atls, decoding_is_strict)
{
    uint8_t buf[256], ev[] = {0xd2, 0x84};
    atls_evidence e = {0};
    attest_error err = {{0}};
    size_t n = hand_encode(buf, 1, "sandbox", ev, sizeof(ev));
    cr_assert_eq(atls_evidence_decode(buf, n, &e, &err), 0, "%s", err.text);
    atls_evidence_done(&e);

    n = hand_encode(buf, 2, "sandbox", ev, sizeof(ev));
    cr_assert_eq(atls_evidence_decode(buf, n, &e, &err), -EBADMSG);
    cr_assert(strstr(err.text, "version"), "%s", err.text);
    n = hand_encode(buf, 1, "sgx", ev, sizeof(ev));
    cr_assert_eq(atls_evidence_decode(buf, n, &e, &err), -EBADMSG);
    cr_assert(strstr(err.text, "type"), "%s", err.text);
    n = hand_encode(buf, 1, "sandbox", ev, 0);
    cr_assert_eq(atls_evidence_decode(buf, n, &e, &err), -EBADMSG);
    cr_assert(strstr(err.text, "empty"), "%s", err.text);
    n = hand_encode(buf, 1, "sandbox", ev, sizeof(ev));
    buf[n] = 0;
    cr_assert_eq(atls_evidence_decode(buf, n + 1, &e, &err), -EBADMSG);
    cr_assert(strstr(err.text, "after"), "%s", err.text);
    cr_assert_eq(atls_evidence_decode(buf, n - 1, &e, &err), -EBADMSG, "truncated");
    /* BER, not DER: the sequence length in long form */
    uint8_t ber[260];
    n = hand_encode(buf, 1, "sandbox", ev, sizeof(ev));
    ber[0] = 0x30, ber[1] = 0x81, ber[2] = buf[1];
    memcpy(ber + 3, buf + 2, n - 2);
    cr_assert_eq(atls_evidence_decode(ber, n + 1, &e, &err), -EBADMSG);
    cr_assert(strstr(err.text, "DER"), "%s", err.text);
    cr_assert_eq(atls_evidence_decode(buf, 0, &e, &err), -EBADMSG);
    cr_assert_eq(atls_evidence_decode(buf, ATLS_EXTENSION_MAX + 1, &e, &err), -E2BIG);
    cr_assert_null(e.evidence, "nothing is written on failure");
}

Test(atls, a_good_certificate_verifies_against_the_policy)
{
    EVP_PKEY *key = EVP_EC_gen("P-384");
    atls_evidence e = issue(key, NULL, 0);
    X509 *cert = NULL;
    cr_assert_eq(atls_certificate_new(key, &e, NOW, 3600, &cert), 0);
    json_t *p = policy(0x11, false), *result = NULL;
    atls_verify_options o = options();
    attest_error err = {{0}};
    cr_assert_eq(atls_verify(cert, p, &o, &result, &err), 0, "%s", err.text);
    const json_t *claims = json_object_get(result, "claims");
    cr_assert(json_is_true(json_object_get(claims, "sandbox")));
    cr_assert_str_eq(json_string_value(json_object_get(claims, "module_id")), "sandbox-scorer");
    json_decref(result);

    /* the default policy wants a nonce, which this certificate cannot carry */
    json_t *strict = policy(0x11, true);
    cr_assert_eq(atls_verify(cert, strict, &o, NULL, &err), -EPERM);
    cr_assert(strstr(err.text, "nonce"), "%s", err.text);
    /* evidence older than maxAgeSeconds */
    o.now = NOW + 301;
    cr_assert_eq(atls_verify(cert, p, &o, NULL, &err), -EPERM);
    cr_assert(strstr(err.text, "old"), "%s", err.text);
    /* another platform's roots */
    o = options();
    o.roots = (attest_blob){0};
    cr_assert_lt(atls_verify(cert, p, &o, NULL, &err), 0);
    json_decref(strict);
    json_decref(p);
    X509_free(cert);
    free(e.evidence);
    EVP_PKEY_free(key);
}

Test(atls, a_certificate_for_another_key_is_refused)
{
    EVP_PKEY *key = EVP_EC_gen("P-384"), *other = EVP_EC_gen("P-384");
    atls_evidence e = issue(key, NULL, 0);
    X509 *cert = NULL;
    /* the evidence of KEY's enclave, replayed in a certificate of OTHER */
    cr_assert_eq(atls_certificate_new(other, &e, NOW, 3600, &cert), 0);
    json_t *p = policy(0x11, false);
    atls_verify_options o = options();
    attest_error err = {{0}};
    json_t *result = NULL;
    cr_assert_eq(atls_verify(cert, p, &o, &result, &err), -EKEYREJECTED);
    cr_assert(strstr(err.text, "not the key bound in the evidence"), "%s", err.text);
    cr_assert_null(result);
    json_decref(p);
    X509_free(cert);
    free(e.evidence);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

Test(atls, tampered_evidence_is_refused)
{
    EVP_PKEY *key = EVP_EC_gen("P-384");
    atls_evidence e = issue(key, NULL, 0);
    json_t *p = policy(0x11, false);
    atls_verify_options o = options();
    attest_error err = {{0}};
    /* the last byte is the signature's; one in the middle is the payload's */
    size_t spots[] = {e.evidence_len - 1, e.evidence_len / 2};
    for (size_t i = 0; i < 2; i++) {
        e.evidence[spots[i]] ^= 0x01;
        X509 *cert = NULL;
        cr_assert_eq(atls_certificate_new(key, &e, NOW, 3600, &cert), 0);
        int r = atls_verify(cert, p, &o, NULL, &err);
        cr_assert(r == -EKEYREJECTED || r == -EBADMSG, "byte %zu: %d %s", spots[i], r, err.text);
        cr_assert(strstr(err.text, "does not verify"), "%s", err.text);
        X509_free(cert);
        e.evidence[spots[i]] ^= 0x01;
    }
    /* a certificate whose extension changed after it was signed */
    X509 *cert = NULL;
    cr_assert_eq(atls_certificate_new(key, &e, NOW, 3600, &cert), 0);
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);
    uint8_t *at = memmem(der, (size_t)len, e.evidence + 40, 16); /* inside the payload */
    cr_assert_not_null(at);
    at[0] ^= 0x01;
    const unsigned char *q = der;
    X509 *changed = d2i_X509(NULL, &q, len);
    cr_assert_not_null(changed);
    cr_assert_eq(atls_verify(changed, p, &o, NULL, &err), -EKEYREJECTED);
    X509_free(changed);
    OPENSSL_free(der);
    X509_free(cert);
    json_decref(p);
    free(e.evidence);
    EVP_PKEY_free(key);
}

Test(atls, other_code_is_refused_by_pcr0)
{
    EVP_PKEY *key = EVP_EC_gen("P-384");
    atls_evidence e = issue(key, NULL, 0);
    X509 *cert = NULL;
    cr_assert_eq(atls_certificate_new(key, &e, NOW, 3600, &cert), 0);
    json_t *p = policy(0x33, false);
    atls_verify_options o = options();
    attest_error err = {{0}};
    cr_assert_eq(atls_verify(cert, p, &o, NULL, &err), -EPERM);
    cr_assert(strstr(err.text, "pcr0") && strstr(err.text, "reference values"), "%s", err.text);
    json_decref(p);
    X509_free(cert);
    free(e.evidence);
    EVP_PKEY_free(key);
}

Test(atls, a_client_nonce_must_be_carried)
{
    EVP_PKEY *key = EVP_EC_gen("P-384");
    uint8_t nonce[ATLS_NONCE_LEN], other[ATLS_NONCE_LEN];
    memset(nonce, 0xab, sizeof(nonce));
    memset(other, 0xcd, sizeof(other));
    atls_evidence e = issue(key, nonce, sizeof(nonce));
    X509 *cert = NULL;
    cr_assert_eq(atls_certificate_new(key, &e, NOW, 3600, &cert), 0);
    json_t *p = policy(0x11, true); /* requireNonce */
    atls_verify_options o = options();
    o.nonce = nonce;
    o.nonce_len = sizeof(nonce);
    attest_error err = {{0}};
    cr_assert_eq(atls_verify(cert, p, &o, NULL, &err), 0, "%s", err.text);
    o.nonce = other;
    cr_assert_eq(atls_verify(cert, p, &o, NULL, &err), -EKEYREJECTED);
    cr_assert(strstr(err.text, "nonce this client sent"), "%s", err.text);
    json_decref(p);
    X509_free(cert);
    free(e.evidence);
    EVP_PKEY_free(key);
}

Test(atls, plain_certificates_and_bad_arguments)
{
    EVP_PKEY *key = EVP_EC_gen("P-384");
    X509 *plain = make_cert(key, key, NULL, "plain", false);
    json_t *p = policy(0x11, false);
    atls_verify_options o = options();
    attest_error err = {{0}};
    cr_assert_eq(atls_verify(plain, p, &o, NULL, &err), -ENOENT);
    cr_assert(strstr(err.text, ATLS_EVIDENCE_OID), "%s", err.text);
    json_t *spec_only = json_incref(json_object_get(p, "spec"));
    cr_assert_eq(atls_verify(plain, spec_only, &o, NULL, &err), -EINVAL);
    json_decref(spec_only);
    atls_evidence none = {.type = ATTEST_SANDBOX};
    X509 *cert = NULL;
    cr_assert_eq(atls_certificate_new(key, &none, NOW, 3600, &cert), -EINVAL);
    cr_assert_null(cert);
    json_decref(p);
    X509_free(plain);
    EVP_PKEY_free(key);
}

Test(atls, sni_nonces_round_trip)
{
    uint8_t nonce[ATLS_NONCE_LEN], back[ATLS_NONCE_LEN];
    for (size_t i = 0; i < sizeof(nonce); i++)
        nonce[i] = (uint8_t)(i * 37);
    char sni[ATLS_SNI_LEN + 1];
    atls_sni_from_nonce(nonce, sni);
    cr_assert_eq(strlen(sni), ATLS_SNI_LEN);
    cr_assert_str_eq(sni + 2 * ATLS_NONCE_LEN + 1, ".nonce.atls");
    cr_assert_eq(atls_sni_to_nonce(sni, back), 0);
    cr_assert_eq(memcmp(nonce, back, sizeof(nonce)), 0);
    char bad[ATLS_SNI_LEN + 1];
    strcpy(bad, sni);
    bad[3] = 'A'; /* upper case */
    cr_assert_eq(atls_sni_to_nonce(bad, back), -EINVAL);
    strcpy(bad, sni);
    bad[ATLS_NONCE_LEN] = 'x';
    cr_assert_eq(atls_sni_to_nonce(bad, back), -EINVAL);
    cr_assert_eq(atls_sni_to_nonce("scorer.localhost", back), -EINVAL);
    cr_assert_eq(atls_sni_to_nonce(NULL, back), -EINVAL);
}
