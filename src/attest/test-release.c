#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <jansson.h>
#include <string.h>

#include "attest/release.h"
#include "basic/encoding.h"

Test(release, challenges_are_single_use_and_expire)
{
    release_challenges *c = release_challenges_new();
    uint8_t a[RELEASE_NONCE_LEN], b[RELEASE_NONCE_LEN];
    cr_assert_eq(release_challenge_issue(c, 1000, a), 0);
    cr_assert_eq(release_challenge_issue(c, 1000, b), 0);
    cr_assert_neq(memcmp(a, b, sizeof(a)), 0);
    cr_assert(release_challenge_consume(c, a, sizeof(a), 1001));
    cr_assert_not(release_challenge_consume(c, a, sizeof(a), 1001), "a nonce is good once");
    cr_assert_not(release_challenge_consume(c, b, sizeof(b), 1000 + RELEASE_CHALLENGE_TTL_SECONDS), "expired");
    uint8_t never[RELEASE_NONCE_LEN] = {0};
    cr_assert_not(release_challenge_consume(c, never, sizeof(never), 1001));
    cr_assert_not(release_challenge_consume(c, a, 16, 1001));
    release_challenges_free(c);
}

Test(release, a_full_set_drops_the_oldest)
{
    release_challenges *c = release_challenges_new();
    uint8_t first[RELEASE_NONCE_LEN], n[RELEASE_NONCE_LEN];
    cr_assert_eq(release_challenge_issue(c, 1, first), 0);
    for (int i = 0; i < RELEASE_CHALLENGES_MAX; i++)
        cr_assert_eq(release_challenge_issue(c, 2 + i / 1000, n), 0);
    cr_assert_not(release_challenge_consume(c, first, sizeof(first), 10));
    cr_assert(release_challenge_consume(c, n, sizeof(n), 10));
    release_challenges_free(c);
}

/* Opens a compact ECDH-ES + A256GCM JWE with PRIV, independently of cjose
 * (RFC 7518 4.6: ECDH, Concat KDF with SHA-256, AES-256-GCM). Returns the
 * plaintext length written to OUT, or -1. */
static long open_jwe(const char *jwe, EVP_PKEY *priv, uint8_t *out, size_t cap)
{
    char part[5][4096];
    const char *p = jwe;
    for (int i = 0; i < 5; i++) {
        const char *dot = i < 4 ? strchr(p, '.') : p + strlen(p);
        cr_assert_not_null(dot);
        cr_assert_lt((size_t)(dot - p), sizeof(part[i]));
        memcpy(part[i], p, (size_t)(dot - p));
        part[i][dot - p] = 0;
        p = dot + 1;
    }
    cr_assert_str_empty(part[1], "ECDH-ES direct key agreement has no encrypted key");
    uint8_t hdr_raw[2048], iv[12], tag[16], ct[1024];
    long hn = base64_decode(part[0], strlen(part[0]), hdr_raw, sizeof(hdr_raw), true);
    cr_assert_gt(hn, 0);
    json_t *hdr = json_loadb((const char *)hdr_raw, (size_t)hn, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(hdr, "alg")), "ECDH-ES");
    cr_assert_str_eq(json_string_value(json_object_get(hdr, "enc")), "A256GCM");
    json_t *epk = json_object_get(hdr, "epk");
    const char *xs = json_string_value(json_object_get(epk, "x")), *ys = json_string_value(json_object_get(epk, "y"));
    const char *crv = json_string_value(json_object_get(epk, "crv"));
    uint8_t point[1 + 2 * 66];
    point[0] = 0x04;
    long xn = base64_decode(xs, strlen(xs), point + 1, 66, true);
    long yn = base64_decode(ys, strlen(ys), point + 1 + xn, 66, true);
    cr_assert(xn > 0 && xn == yn);
    OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)(strcmp(crv, "P-256") == 0 ? "P-256" : "P-384"), 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, (size_t)(1 + 2 * xn)),
        OSSL_PARAM_END,
    };
    EVP_PKEY_CTX *fctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *peer = NULL;
    cr_assert(EVP_PKEY_fromdata_init(fctx) == 1 && EVP_PKEY_fromdata(fctx, &peer, EVP_PKEY_PUBLIC_KEY, params) == 1);
    EVP_PKEY_CTX *dctx = EVP_PKEY_CTX_new(priv, NULL);
    uint8_t z[66];
    size_t zn = sizeof(z);
    cr_assert(EVP_PKEY_derive_init(dctx) == 1 && EVP_PKEY_derive_set_peer(dctx, peer) == 1 &&
              EVP_PKEY_derive(dctx, z, &zn) == 1);
    /* Concat KDF: SHA-256(counter || Z || len "A256GCM" || len apu || len apv || keydatalen) */
    uint8_t kdf_in[4 + 66 + 4 + 7 + 4 + 4 + 4], key[32];
    size_t k = 0;
    memcpy(kdf_in + k, "\0\0\0\1", 4), k += 4;
    memcpy(kdf_in + k, z, zn), k += zn;
    memcpy(kdf_in + k, "\0\0\0\7A256GCM", 11), k += 11;
    memcpy(kdf_in + k, "\0\0\0\0\0\0\0\0\0\0\1\0", 12), k += 12; /* empty apu, apv; 256 bits */
    SHA256(kdf_in, k, key);
    long ivn = base64_decode(part[2], strlen(part[2]), iv, sizeof(iv), true);
    long cn = base64_decode(part[3], strlen(part[3]), ct, sizeof(ct), true);
    long tn = base64_decode(part[4], strlen(part[4]), tag, sizeof(tag), true);
    cr_assert(ivn == 12 && cn >= 0 && tn == 16 && (size_t)cn <= cap);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0;
    int ok = EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
             EVP_DecryptUpdate(c, NULL, &len, (const uint8_t *)part[0], (int)strlen(part[0])) == 1 &&
             EVP_DecryptUpdate(c, out, &len, ct, (int)cn) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1 && EVP_DecryptFinal_ex(c, out + len, &fin) == 1;
    EVP_CIPHER_CTX_free(c);
    EVP_PKEY_CTX_free(dctx);
    EVP_PKEY_CTX_free(fctx);
    EVP_PKEY_free(peer);
    json_decref(hdr);
    return ok ? len + fin : -1;
}

/* Seals to a fresh key and opens with its private half. */
static void round_trip(const char *curve)
{
    EVP_PKEY *key = EVP_EC_gen(curve);
    cr_assert_not_null(key);
    unsigned char *der = NULL;
    int der_len = i2d_PUBKEY(key, &der);
    cr_assert_gt(der_len, 0);
    static const char secret[] = "{\"dataKey\":\"c2VjcmV0\"}";
    char *jwe = NULL;
    cr_assert_eq(release_seal_jwe(der, (size_t)der_len, (const uint8_t *)secret, strlen(secret), &jwe), 0);
    uint8_t out[256];
    long n = open_jwe(jwe, key, out, sizeof(out));
    cr_assert_eq(n, (long)strlen(secret));
    cr_assert_eq(memcmp(out, secret, (size_t)n), 0);
    /* a flipped bit in the ciphertext part fails authentication; its first
     * character carries six bits of data (the last may carry only padding) */
    char *ct = jwe;
    for (int dots = 0; dots < 3; dots++)
        ct = strchr(ct, '.') + 1;
    *ct = *ct == 'A' ? 'B' : 'A';
    cr_assert_eq(open_jwe(jwe, key, out, sizeof(out)), -1);
    free(jwe);
    OPENSSL_free(der);
    EVP_PKEY_free(key);
}

Test(release, jwe_opens_with_the_private_key)
{
    round_trip("P-256");
    round_trip("P-384");
}

Test(release, non_ec_or_malformed_keys_are_refused)
{
    char *jwe = NULL;
    static const uint8_t junk[] = {0x30, 0x03, 0x02, 0x01, 0x00};
    cr_assert_eq(release_seal_jwe(junk, sizeof(junk), (const uint8_t *)"x", 1, &jwe), -EINVAL);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(ed, &der);
    cr_assert_eq(release_seal_jwe(der, (size_t)n, (const uint8_t *)"x", 1, &jwe), -EINVAL);
    OPENSSL_free(der);
    EVP_PKEY_free(ed);
}
