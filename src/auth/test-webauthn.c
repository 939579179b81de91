/* Unit tests of the WebAuthn checks: a registration and assertions made
 * here with an OpenSSL P-256 key, accepted, then each refusal. */
#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "auth/webauthn.h"
#include "basic/encoding.h"

#define ORIGIN "https://localhost:7443"
#define RP_ID "localhost"

static uint8_t challenge[WEBAUTHN_CHALLENGE_LEN] = {7, 7, 7};
static EVP_PKEY *key;
static uint8_t pub[WEBAUTHN_PUBLIC_KEY_LEN];

static void setup(void)
{
    key = EVP_EC_gen("P-256");
    cr_assert(key);
    size_t len = 0;
    cr_assert(EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub), &len) == 1 &&
              len == sizeof(pub));
}

static void teardown(void)
{
    EVP_PKEY_free(key);
}

/* clientDataJSON of TYPE for ORIGIN_ with the test challenge, into OUT. */
static size_t client_data(const char *type, const char *origin, char *out, size_t size)
{
    char b64[64];
    base64_encode(challenge, sizeof(challenge), b64, true);
    return (size_t)snprintf(out, size, "{\"type\":\"%s\",\"challenge\":\"%s\",\"origin\":\"%s\",\"crossOrigin\":false}",
                            type, b64, origin);
}

/* authenticatorData for RP with FLAGS and COUNT, with the attested
 * credential data of the test key (credential id 16 x 0xaa, COSE ALG)
 * when FLAGS has AT, into OUT. */
static size_t auth_data(const char *rp, uint8_t flags, uint32_t count, int alg, uint8_t *out)
{
    unsigned n = 0;
    EVP_Digest(rp, strlen(rp), out, &n, EVP_sha256(), NULL);
    size_t pos = 32;
    out[pos++] = flags;
    out[pos++] = (uint8_t)(count >> 24);
    out[pos++] = (uint8_t)(count >> 16);
    out[pos++] = (uint8_t)(count >> 8);
    out[pos++] = (uint8_t)count;
    if (flags & WEBAUTHN_FLAG_AT) {
        memset(out + pos, 0, 16);
        pos += 16;
        out[pos++] = 0;
        out[pos++] = 16;
        memset(out + pos, 0xaa, 16);
        pos += 16;
        const uint8_t head[] = {0xa5, 0x01, 0x02, 0x03, (uint8_t)(alg < 0 ? 0x20 + (-1 - alg) : alg), 0x20, 0x01, 0x21, 0x58, 0x20};
        memcpy(out + pos, head, sizeof(head));
        pos += sizeof(head);
        memcpy(out + pos, pub + 1, 32);
        pos += 32;
        out[pos++] = 0x22;
        out[pos++] = 0x58;
        out[pos++] = 0x20;
        memcpy(out + pos, pub + 33, 32);
        pos += 32;
    }
    return pos;
}

/* An attestation object of format "none" around AUTH into OUT. */
static size_t attestation_none(const uint8_t *auth, size_t auth_len, uint8_t *out)
{
    static const uint8_t head[] = {0xa3, 0x63, 'f', 'm', 't', 0x64, 'n', 'o', 'n', 'e', 0x67, 'a', 't', 't', 'S', 't',
                                   'm', 't', 0xa0, 0x68, 'a', 'u', 't', 'h', 'D', 'a', 't', 'a', 0x59};
    memcpy(out, head, sizeof(head));
    size_t pos = sizeof(head);
    out[pos++] = (uint8_t)(auth_len >> 8);
    out[pos++] = (uint8_t)auth_len;
    memcpy(out + pos, auth, auth_len);
    return pos + auth_len;
}

/* The DER ES256 signature by the test key of AUTH || SHA-256(CD) into SIG. */
static size_t sign(const uint8_t *auth, size_t auth_len, const char *cd, uint8_t *sig)
{
    uint8_t msg[1024], h[32];
    unsigned n = 0;
    EVP_Digest(cd, strlen(cd), h, &n, EVP_sha256(), NULL);
    memcpy(msg, auth, auth_len);
    memcpy(msg + auth_len, h, 32);
    size_t sig_len = WEBAUTHN_SIGNATURE_MAX;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    cr_assert(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
              EVP_DigestSign(md, sig, &sig_len, msg, auth_len + 32) == 1);
    EVP_MD_CTX_free(md);
    return sig_len;
}

static const webauthn_expect ex = {.origin = ORIGIN, .rp_id = RP_ID, .challenge = challenge, .require_uv = true};

static int do_register(const char *type, const char *origin, const char *rp, uint8_t flags, int alg, const char **why)
{
    char cd[512];
    uint8_t auth[512], att[600];
    client_data(type, origin, cd, sizeof(cd));
    size_t alen = auth_data(rp, flags, 0, alg, auth);
    size_t tlen = attestation_none(auth, alen, att);
    webauthn_credential c;
    int r = webauthn_register_verify((uint8_t *)cd, strlen(cd), att, tlen, &ex, &c, why);
    if (r == 0) {
        cr_expect(c.id_len == 16 && c.id[0] == 0xaa);
        cr_expect(memcmp(c.public_key, pub, sizeof(pub)) == 0);
        cr_expect_str_eq(c.format, "none");
    }
    return r;
}

#define UPUV (WEBAUTHN_FLAG_UP | WEBAUTHN_FLAG_UV)

TestSuite(webauthn, .init = setup, .fini = teardown);

Test(webauthn, registration_accepted_and_each_refusal)
{
    const char *why = NULL;
    cr_assert(do_register("webauthn.create", ORIGIN, RP_ID, UPUV | WEBAUTHN_FLAG_AT, -7, &why) == 0, "%s", why);
    cr_expect(do_register("webauthn.get", ORIGIN, RP_ID, UPUV | WEBAUTHN_FLAG_AT, -7, &why) == -EPERM);
    cr_expect(strstr(why, "type"));
    cr_expect(do_register("webauthn.create", "https://evil.localhost:7443", RP_ID, UPUV | WEBAUTHN_FLAG_AT, -7, &why) == -EPERM);
    cr_expect(strstr(why, "origin"));
    cr_expect(do_register("webauthn.create", ORIGIN, "evil.example", UPUV | WEBAUTHN_FLAG_AT, -7, &why) == -EPERM);
    cr_expect(strstr(why, "rpIdHash"));
    cr_expect(do_register("webauthn.create", ORIGIN, RP_ID, WEBAUTHN_FLAG_UV | WEBAUTHN_FLAG_AT, -7, &why) == -EPERM);
    cr_expect(strstr(why, "UP"));
    cr_expect(do_register("webauthn.create", ORIGIN, RP_ID, WEBAUTHN_FLAG_UP | WEBAUTHN_FLAG_AT, -7, &why) == -EPERM);
    cr_expect(strstr(why, "UV"));
    cr_expect(do_register("webauthn.create", ORIGIN, RP_ID, UPUV | WEBAUTHN_FLAG_AT, -8, &why) == -ENOTSUP);
    cr_expect(strstr(why, "ES256"));
    cr_expect(do_register("webauthn.create", ORIGIN, RP_ID, UPUV, -7, &why) == -EBADMSG);
}

/* An assertion with FLAGS and COUNT for RP, signed (TAMPER: one bit of the
 * signature flipped), checked against the stored count STORED. */
static int do_assert(const char *origin, const char *rp, uint8_t flags, uint32_t count, uint32_t stored, bool tamper,
                     const char **why)
{
    char cd[512];
    uint8_t auth[512], sig[WEBAUTHN_SIGNATURE_MAX];
    client_data("webauthn.get", origin, cd, sizeof(cd));
    size_t alen = auth_data(rp, flags, count, -7, auth);
    size_t slen = sign(auth, alen, cd, sig);
    if (tamper)
        sig[slen - 1] ^= 1;
    uint32_t got = 0;
    int r = webauthn_assert_verify((uint8_t *)cd, strlen(cd), auth, alen, sig, slen, &ex, pub, stored, &got, why);
    if (r == 0)
        cr_expect(got == count);
    return r;
}

Test(webauthn, assertion_accepted_and_each_refusal)
{
    const char *why = NULL;
    cr_assert(do_assert(ORIGIN, RP_ID, UPUV, 5, 4, false, &why) == 0, "%s", why);
    cr_assert(do_assert(ORIGIN, RP_ID, UPUV, 0, 0, false, &why) == 0, "%s", why); /* no counter at all */
    cr_expect(do_assert(ORIGIN, RP_ID, UPUV, 4, 4, false, &why) == -ESTALE);
    cr_expect(do_assert(ORIGIN, RP_ID, UPUV, 0, 9, false, &why) == -ESTALE);
    cr_expect(do_assert(ORIGIN, RP_ID, UPUV, 5, 4, true, &why) == -EPERM);
    cr_expect(strstr(why, "signature"));
    cr_expect(do_assert("https://localhost:7444", RP_ID, UPUV, 5, 4, false, &why) == -EPERM);
    cr_expect(do_assert(ORIGIN, "other", UPUV, 5, 4, false, &why) == -EPERM);
    cr_expect(do_assert(ORIGIN, RP_ID, WEBAUTHN_FLAG_UV, 5, 4, false, &why) == -EPERM);
    cr_expect(do_assert(ORIGIN, RP_ID, UPUV | WEBAUTHN_FLAG_AT, 5, 4, false, &why) == -EBADMSG);
}

Test(webauthn, caps_come_first)
{
    static uint8_t big[WEBAUTHN_ATTESTATION_MAX + 1];
    const char *why = NULL;
    uint8_t got[WEBAUTHN_CHALLENGE_LEN];
    webauthn_credential c;
    cr_expect(webauthn_client_data_challenge(big, WEBAUTHN_CLIENT_DATA_MAX + 1, got, &why) == -E2BIG);
    cr_expect(webauthn_register_verify(big, 10, big, sizeof(big), &ex, &c, &why) == -E2BIG);
    char cd[512];
    client_data("webauthn.get", ORIGIN, cd, sizeof(cd));
    cr_expect(webauthn_client_data_challenge((uint8_t *)cd, strlen(cd), got, &why) == 0);
    cr_expect(memcmp(got, challenge, sizeof(got)) == 0);
}
