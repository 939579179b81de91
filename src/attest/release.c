#include "attest/release.h"

#include <cjose/cjose.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"

typedef struct challenge {
    uint8_t nonce[RELEASE_NONCE_LEN];
    int64_t expires; /* 0: free slot */
} challenge;

struct release_challenges {
    pthread_mutex_t lock;
    challenge slots[RELEASE_CHALLENGES_MAX];
};

release_challenges *release_challenges_new(void)
{
    release_challenges *c = calloc(1, sizeof(*c));
    if (c)
        pthread_mutex_init(&c->lock, NULL);
    return c;
}

void release_challenges_free(release_challenges *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->lock);
    explicit_bzero(c->slots, sizeof(c->slots));
    free(c);
}

int release_challenge_issue(release_challenges *c, int64_t now, uint8_t ret_nonce[RELEASE_NONCE_LEN])
{
    uint8_t nonce[RELEASE_NONCE_LEN];
    int r = random_bytes(nonce, sizeof(nonce));
    if (r < 0)
        return r;
    pthread_mutex_lock(&c->lock);
    /* a free or expired slot, else the one expiring first (the oldest) */
    challenge *pick = &c->slots[0];
    for (size_t i = 0; i < RELEASE_CHALLENGES_MAX; i++) {
        challenge *s = &c->slots[i];
        if (s->expires <= now) {
            pick = s;
            break;
        }
        if (s->expires < pick->expires)
            pick = s;
    }
    memcpy(pick->nonce, nonce, sizeof(nonce));
    pick->expires = now + RELEASE_CHALLENGE_TTL_SECONDS;
    pthread_mutex_unlock(&c->lock);
    memcpy(ret_nonce, nonce, sizeof(nonce));
    return 0;
}

bool release_challenge_consume(release_challenges *c, const uint8_t *nonce, size_t len, int64_t now)
{
    if (len != RELEASE_NONCE_LEN)
        return false;
    bool found = false;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < RELEASE_CHALLENGES_MAX; i++) {
        challenge *s = &c->slots[i];
        /* constant time per slot; the scan itself does not depend on the secret */
        if (s->expires > now && memeq_consttime(s->nonce, nonce, RELEASE_NONCE_LEN) && !found) {
            s->expires = 0;
            found = true;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

/* The JWK curve name of KEY's group, or NULL. */
static const char *jwk_curve(EVP_PKEY *key, cjose_jwk_ec_curve *ret)
{
    char group[64];
    size_t n = 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &n) != 1)
        return NULL;
    if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
        return *ret = CJOSE_JWK_EC_P_256, "P-256";
    if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
        return *ret = CJOSE_JWK_EC_P_384, "P-384";
    if (strcmp(group, "secp521r1") == 0 || strcmp(group, "P-521") == 0)
        return *ret = CJOSE_JWK_EC_P_521, "P-521";
    return NULL;
}

int release_seal_jwe(const uint8_t *spki_der, size_t spki_len, const uint8_t *plaintext, size_t len, char **ret)
{
    const unsigned char *p = spki_der;
    EVP_PKEY *key = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (!key || p != spki_der + spki_len || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) {
        EVP_PKEY_free(key);
        return -EINVAL;
    }
    cjose_jwk_ec_curve curve;
    BIGNUM *x = NULL, *y = NULL;
    int r = -EINVAL;
    cjose_jwk_t *jwk = NULL;
    cjose_header_t *hdr = NULL;
    cjose_jwe_t *jwe = NULL;
    cjose_err err;
    if (jwk_curve(key, &curve) && EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1) {
        size_t coord = (size_t)(EVP_PKEY_get_bits(key) + 7) / 8;
        uint8_t xb[66], yb[66];
        if (coord <= sizeof(xb) && BN_bn2binpad(x, xb, (int)coord) > 0 && BN_bn2binpad(y, yb, (int)coord) > 0) {
            cjose_jwk_ec_keyspec spec = {.crv = curve, .x = xb, .xlen = coord, .y = yb, .ylen = coord};
            jwk = cjose_jwk_create_EC_spec(&spec, &err);
        }
    }
    if (jwk && (hdr = cjose_header_new(&err)) && cjose_header_set(hdr, CJOSE_HDR_ALG, CJOSE_HDR_ALG_ECDH_ES, &err) &&
        cjose_header_set(hdr, CJOSE_HDR_ENC, CJOSE_HDR_ENC_A256GCM, &err) &&
        (jwe = cjose_jwe_encrypt(jwk, hdr, plaintext, len, &err))) {
        char *out = cjose_jwe_export(jwe, &err);
        if (out) {
            *ret = strdup(out);
            cjose_get_dealloc()(out);
            r = *ret ? 0 : -ENOMEM;
        } else
            r = -ENOMEM;
    } else if (jwk)
        r = -ENOMEM;
    cjose_jwe_release(jwe);
    cjose_header_release(hdr);
    cjose_jwk_release(jwk);
    BN_free(x);
    BN_free(y);
    EVP_PKEY_free(key);
    return r;
}

void release_job_nonce(const uint8_t digest[32], uint64_t run, uint8_t ret[RELEASE_NONCE_LEN])
{
    char hex[65], text[128];
    hex_encode(digest, 32, hex);
    int n = snprintf(text, sizeof(text), "cloister job run v1\n%s\n%" PRIu64 "\n", hex, run);
    SHA256((const uint8_t *)text, (size_t)n, ret);
}
