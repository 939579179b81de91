/* JWS/JWT signing (through cjose) and strict verification (our parser,
 * OpenSSL's primitives): see jwt.h for the rules. Verification does not go
 * through cjose_jws_import()/cjose_jws_verify() because those take the
 * algorithm from the token header and accept looser encodings; here the
 * header is only checked against the key's one algorithm. */
#include "auth/jwt.h"

#include <cjose/cjose.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/macro.h"

#define JWK_MAX_MEMBER 1024 /* longest decoded key member (RSA n of 8192 bits) */
#define HMAC_MIN_KEY 32
#define RSA_MIN_BITS 2048

struct jwt_key {
    char kid[JWT_KID_MAX + 1];
    jwt_alg alg;
    EVP_PKEY *pkey;      /* EC or RSA public key; NULL for HMAC */
    uint8_t *secret;     /* HMAC key */
    size_t secret_len;
    cjose_jwk_t *signer; /* private ES256 key, or NULL */
    json_t *public_jwk;  /* what JWKS publishes */
};

static const char *const alg_names[] = {
    [JWT_ALG_NONE_] = NULL, [JWT_ALG_ES256] = "ES256", [JWT_ALG_RS256] = "RS256",
    [JWT_ALG_PS256] = "PS256", [JWT_ALG_HS256] = "HS256",
};

static jwt_alg alg_from_name(const char *s)
{
    for (size_t i = 1; s && i < ELEMENTSOF(alg_names); i++)
        if (strcmp(s, alg_names[i]) == 0)
            return (jwt_alg)i;
    return JWT_ALG_NONE_;
}

void jwt_key_free(jwt_key *key)
{
    if (!key)
        return;
    EVP_PKEY_free(key->pkey);
    if (key->secret) {
        OPENSSL_cleanse(key->secret, key->secret_len);
        free(key->secret);
    }
    if (key->signer)
        cjose_jwk_release(key->signer);
    json_decref(key->public_jwk);
    free(key);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(jwt_key *, jwt_key_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(OSSL_PARAM_BLD *, OSSL_PARAM_BLD_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(OSSL_PARAM *, OSSL_PARAM_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_PKEY_CTX *, EVP_PKEY_CTX_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_MD_CTX *, EVP_MD_CTX_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(BIGNUM *, BN_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(ECDSA_SIG *, ECDSA_SIG_free);

/* Decodes the base64url member NAME of JWK into OUT (capacity CAP).
 * Returns the length, or -EINVAL when absent, malformed or empty. */
static long jwk_member(const json_t *jwk, const char *name, uint8_t *out, size_t cap)
{
    const char *s = json_string_value(json_object_get(jwk, name));
    if (!s)
        return -EINVAL;
    long n = base64_decode(s, strlen(s), out, cap, true);
    return n <= 0 ? -EINVAL : n;
}

/* Builds an EVP_PKEY of KEYTYPE ("EC", "RSA") from the parameters in BLD. */
static int pkey_from_params(const char *keytype, OSSL_PARAM_BLD *bld, EVP_PKEY **ret)
{
    _cleanup_(OSSL_PARAM_freep) OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    _cleanup_(EVP_PKEY_CTX_freep) EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, keytype, NULL);
    EVP_PKEY *pkey = NULL;
    if (!params || !ctx)
        return -ENOMEM;
    if (EVP_PKEY_fromdata_init(ctx) != 1 || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        return -EINVAL;
    _cleanup_(EVP_PKEY_CTX_freep) EVP_PKEY_CTX *check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!check || EVP_PKEY_public_check(check) != 1) {
        EVP_PKEY_free(pkey);
        return -EINVAL;
    }
    *ret = pkey;
    return 0;
}

/* The public P-256 key of an EC JWK. */
static int ec_public_key(const json_t *jwk, EVP_PKEY **ret)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    if (!crv || strcmp(crv, "P-256") != 0)
        return -EINVAL;
    uint8_t point[65];
    point[0] = 0x04; /* uncompressed */
    if (jwk_member(jwk, "x", point + 1, 32) != 32 || jwk_member(jwk, "y", point + 33, 32) != 32)
        return -EINVAL;
    _cleanup_(OSSL_PARAM_BLD_freep) OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)))
        return -ENOMEM;
    return pkey_from_params("EC", bld, ret);
}

/* The public key of an RSA JWK of at least RSA_MIN_BITS. */
static int rsa_public_key(const json_t *jwk, EVP_PKEY **ret)
{
    uint8_t buf[JWK_MAX_MEMBER];
    long n_len = jwk_member(jwk, "n", buf, sizeof(buf));
    if (n_len < RSA_MIN_BITS / 8)
        return -EINVAL;
    _cleanup_(BN_freep) BIGNUM *n = BN_bin2bn(buf, (int)n_len, NULL);
    long e_len = jwk_member(jwk, "e", buf, 8);
    if (e_len < 0)
        return -EINVAL;
    _cleanup_(BN_freep) BIGNUM *e = BN_bin2bn(buf, (int)e_len, NULL);
    if (!n || !e)
        return -ENOMEM;
    if (BN_num_bits(n) < RSA_MIN_BITS)
        return -EINVAL;
    _cleanup_(OSSL_PARAM_BLD_freep) OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        return -ENOMEM;
    return pkey_from_params("RSA", bld, ret);
}

/* Whether the optional `use` and `key_ops` members allow verifying. */
static bool jwk_usable_for_signatures(const json_t *jwk)
{
    const json_t *use = json_object_get(jwk, "use");
    if (use && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0))
        return false;
    const json_t *ops = json_object_get(jwk, "key_ops");
    if (!ops)
        return true;
    size_t i;
    const json_t *op;
    json_array_foreach(ops, i, op) if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0) return true;
    return false;
}

int jwt_key_from_json(const json_t *jwk, jwt_alg fallback, jwt_key **ret)
{
    if (!json_is_object(jwk) || !jwk_usable_for_signatures(jwk))
        return -EINVAL;
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    const json_t *alg_member = json_object_get(jwk, "alg");
    const json_t *kid = json_object_get(jwk, "kid");
    if (!kty || (alg_member && !json_is_string(alg_member)) || (kid && !json_is_string(kid)))
        return -EINVAL;
    if (kid && (json_string_length(kid) == 0 || json_string_length(kid) > JWT_KID_MAX ||
                strlen(json_string_value(kid)) != json_string_length(kid)))
        return -EINVAL;
    jwt_alg alg = alg_member ? alg_from_name(json_string_value(alg_member)) : fallback;
    if (alg_member && alg == JWT_ALG_NONE_)
        return -EINVAL; /* an algorithm we do not support: never guess another */
    if (alg == JWT_ALG_NONE_ && strcmp(kty, "EC") == 0)
        alg = JWT_ALG_ES256;

    _cleanup_(jwt_key_freep) jwt_key *k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->alg = alg;
    if (kid)
        memcpy(k->kid, json_string_value(kid), json_string_length(kid) + 1);
    int r;
    if (strcmp(kty, "EC") == 0 && alg == JWT_ALG_ES256) {
        r = ec_public_key(jwk, &k->pkey);
        if (r < 0)
            return r;
        /* copies, not references: the caller may wipe JWK's strings (a private key's file) */
        k->public_jwk = json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x",
                                  json_string_value(json_object_get(jwk, "x")), "y",
                                  json_string_value(json_object_get(jwk, "y")));
        if (json_object_get(jwk, "d")) {
            _cleanup_free_ char *text = json_dumps(jwk, JSON_COMPACT);
            if (!text)
                return -ENOMEM;
            cjose_err err;
            k->signer = cjose_jwk_import(text, strlen(text), &err);
            OPENSSL_cleanse(text, strlen(text));
            if (!k->signer)
                return -EINVAL;
        }
    } else if (strcmp(kty, "RSA") == 0 && (alg == JWT_ALG_RS256 || alg == JWT_ALG_PS256)) {
        r = rsa_public_key(jwk, &k->pkey);
        if (r < 0)
            return r;
        k->public_jwk = json_pack("{s:s, s:s, s:s}", "kty", "RSA", "n", json_string_value(json_object_get(jwk, "n")),
                                  "e", json_string_value(json_object_get(jwk, "e")));
    } else if (strcmp(kty, "oct") == 0 && alg == JWT_ALG_HS256) {
        uint8_t buf[JWK_MAX_MEMBER];
        long n = jwk_member(jwk, "k", buf, sizeof(buf));
        if (n < HMAC_MIN_KEY) {
            OPENSSL_cleanse(buf, sizeof(buf));
            return -EINVAL;
        }
        k->secret = malloc((size_t)n);
        if (k->secret) {
            memcpy(k->secret, buf, (size_t)n);
            k->secret_len = (size_t)n;
        }
        OPENSSL_cleanse(buf, sizeof(buf));
        if (!k->secret)
            return -ENOMEM;
        k->public_jwk = json_object(); /* a secret key is never published */
    } else
        return -EINVAL;
    if (!k->public_jwk)
        return -ENOMEM;
    if ((k->kid[0] && json_object_set_new(k->public_jwk, "kid", json_string(k->kid)) < 0) ||
        json_object_set_new(k->public_jwk, "alg", json_string(alg_names[alg])) < 0 ||
        json_object_set_new(k->public_jwk, "use", json_string("sig")) < 0)
        return -ENOMEM;
    *ret = TAKE_PTR(k);
    return 0;
}

int jwt_key_from_jwk(const char *json, size_t len, jwt_alg fallback, jwt_key **ret)
{
    json_auto_t *v = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    if (!v)
        return -EINVAL;
    return jwt_key_from_json(v, fallback, ret);
}

int jwt_key_generate_es256(const char *kid, jwt_key **ret)
{
    if (!kid || !*kid || strlen(kid) > JWT_KID_MAX)
        return -EINVAL;
    cjose_err err;
    cjose_jwk_t *jwk = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &err);
    if (!jwk)
        return -ENOMEM;
    char *text = cjose_jwk_to_json(jwk, true, &err);
    cjose_jwk_release(jwk);
    if (!text)
        return -ENOMEM;
    json_auto_t *v = json_loads(text, 0, NULL);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    if (!v || json_object_set_new(v, "kid", json_string(kid)) < 0 ||
        json_object_set_new(v, "alg", json_string("ES256")) < 0)
        return -ENOMEM;
    int r = jwt_key_from_json(v, JWT_ALG_ES256, ret);
    const char *d = json_string_value(json_object_get(v, "d"));
    if (d)
        OPENSSL_cleanse((char *)d, strlen(d));
    return r;
}

json_t *jwt_key_to_json(const jwt_key *key, bool private_part)
{
    if (!private_part || !key->signer)
        return json_deep_copy(key->public_jwk);
    cjose_err err;
    char *text = cjose_jwk_to_json(key->signer, true, &err);
    if (!text)
        return NULL;
    json_t *v = json_loads(text, 0, NULL);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    if (v && (json_object_set_new(v, "kid", json_string(key->kid)) < 0 ||
              json_object_set_new(v, "alg", json_string(alg_names[key->alg])) < 0)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

const char *jwt_key_kid(const jwt_key *key)
{
    return key->kid;
}

jwt_alg jwt_key_alg(const jwt_key *key)
{
    return key->alg;
}

int jwt_sign(const jwt_key *key, const json_t *claims, char **ret)
{
    if (!key->signer || key->alg != JWT_ALG_ES256)
        return -EINVAL;
    _cleanup_free_ char *payload = json_dumps(claims, JSON_COMPACT | JSON_SORT_KEYS);
    if (!payload)
        return -ENOMEM;
    cjose_err err;
    cjose_header_t *hdr = cjose_header_new(&err);
    if (!hdr)
        return -ENOMEM;
    int r = -ENOMEM;
    if (cjose_header_set(hdr, CJOSE_HDR_ALG, CJOSE_HDR_ALG_ES256, &err) &&
        cjose_header_set(hdr, CJOSE_HDR_KID, key->kid, &err) && cjose_header_set(hdr, "typ", "JWT", &err)) {
        cjose_jws_t *jws = cjose_jws_sign(key->signer, hdr, (const uint8_t *)payload, strlen(payload), &err);
        const char *compact = NULL;
        if (jws && cjose_jws_export(jws, &compact, &err)) {
            char *copy = strdup(compact);
            if (copy) {
                *ret = copy;
                r = 0;
            }
        } else
            r = -EIO;
        cjose_jws_release(jws);
    }
    cjose_header_release(hdr);
    return r;
}

/* Checks SIG over DATA with KEY under KEY's algorithm. 0 or -EKEYREJECTED. */
static int verify_signature(const jwt_key *key, const uint8_t *data, size_t data_len, const uint8_t *sig,
                            size_t sig_len)
{
    if (key->alg == JWT_ALG_HS256) {
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned mac_len = 0;
        if (sig_len != SHA256_DIGEST_LENGTH ||
            !HMAC(EVP_sha256(), key->secret, (int)key->secret_len, data, data_len, mac, &mac_len) ||
            mac_len != SHA256_DIGEST_LENGTH)
            return -EKEYREJECTED;
        bool ok = memeq_consttime(mac, sig, SHA256_DIGEST_LENGTH);
        OPENSSL_cleanse(mac, sizeof(mac));
        return ok ? 0 : -EKEYREJECTED;
    }

    uint8_t der[80];
    const uint8_t *s = sig;
    size_t s_len = sig_len;
    if (key->alg == JWT_ALG_ES256) {
        /* JWS carries r || s, 32 bytes each; OpenSSL wants DER */
        if (sig_len != 64)
            return -EKEYREJECTED;
        _cleanup_(ECDSA_SIG_freep) ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, 32, NULL), *sv = BN_bin2bn(sig + 32, 32, NULL);
        if (!es || !r || !sv || !ECDSA_SIG_set0(es, r, sv)) {
            BN_free(r);
            BN_free(sv);
            return -EKEYREJECTED;
        }
        uint8_t *p = der;
        int n = i2d_ECDSA_SIG(es, NULL);
        if (n <= 0 || (size_t)n > sizeof(der) || i2d_ECDSA_SIG(es, &p) != n)
            return -EKEYREJECTED;
        s = der;
        s_len = (size_t)n;
    } else if (sig_len != (size_t)EVP_PKEY_get_size(key->pkey))
        return -EKEYREJECTED; /* RSA signatures are exactly the modulus size */

    _cleanup_(EVP_MD_CTX_freep) EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    if (!md || EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, key->pkey) != 1)
        return -EKEYREJECTED;
    if (key->alg == JWT_ALG_RS256 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
        return -EKEYREJECTED;
    if (key->alg == JWT_ALG_PS256 &&
        (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
         EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) != 1))
        return -EKEYREJECTED;
    return EVP_DigestVerify(md, s, s_len, data, data_len) == 1 ? 0 : -EKEYREJECTED;
}

/* Decodes one base64url part of a token into a fresh NUL-terminated heap
 * buffer. Empty parts decode to an empty buffer. 0 or -EBADMSG/-ENOMEM. */
static int decode_part(const char *in, size_t len, uint8_t **ret, size_t *ret_len)
{
    size_t cap = len / 4 * 3 + 3;
    uint8_t *buf = malloc(cap + 1);
    if (!buf)
        return -ENOMEM;
    long n = base64_decode(in, len, buf, cap, true);
    if (n < 0) {
        free(buf);
        return -EBADMSG;
    }
    buf[n] = 0;
    *ret = buf;
    *ret_len = (size_t)n;
    return 0;
}

/* The key KEYS offers for HEADER's kid. -ENOKEY when none fits. */
static int select_key(const json_t *header, jwt_key *const *keys, size_t n_keys, bool require_kid,
                      const jwt_key **ret)
{
    const json_t *kid = json_object_get(header, "kid");
    if (!kid) {
        if (require_kid || n_keys != 1)
            return -ENOKEY;
        *ret = keys[0];
        return 0;
    }
    if (!json_is_string(kid))
        return -EBADMSG;
    for (size_t i = 0; i < n_keys; i++)
        if (keys[i]->kid[0] && strlen(keys[i]->kid) == json_string_length(kid) &&
            memcmp(keys[i]->kid, json_string_value(kid), json_string_length(kid)) == 0) {
            *ret = keys[i];
            return 0;
        }
    return -ENOKEY;
}

int jws_verify(const char *token, size_t len, jwt_key *const *keys, size_t n_keys, bool require_kid,
               char **ret_payload, size_t *ret_len)
{
    if (len > JWT_MAX_LEN)
        return -EMSGSIZE;
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot1 || !dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) || dot1 == token ||
        dot2 + 1 == token + len)
        return -EBADMSG;

    _cleanup_free_ uint8_t *hdr_raw = NULL, *payload = NULL, *sig = NULL;
    size_t hdr_len, payload_len, sig_len;
    int r = decode_part(token, (size_t)(dot1 - token), &hdr_raw, &hdr_len);
    if (r == 0)
        r = decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload, &payload_len);
    if (r == 0)
        r = decode_part(dot2 + 1, (size_t)(token + len - dot2 - 1), &sig, &sig_len);
    if (r < 0)
        return r;

    json_auto_t *header = json_loadb((const char *)hdr_raw, hdr_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(header))
        return -EBADMSG;
    const char *alg = json_string_value(json_object_get(header, "alg"));
    if (!alg || json_object_get(header, "crit"))
        return -EBADMSG; /* no alg, or extensions we would have to understand */
    const jwt_key *key;
    r = select_key(header, keys, n_keys, require_kid, &key);
    if (r < 0)
        return r;
    if (alg_from_name(alg) != key->alg)
        return -EPROTONOSUPPORT; /* "none", HS256 with a public key, any swap */
    r = verify_signature(key, (const uint8_t *)token, (size_t)(dot2 - token), sig, sig_len);
    if (r < 0)
        return r;
    *ret_payload = (char *)TAKE_PTR(payload);
    *ret_len = payload_len;
    return 0;
}

/* An integer claim NAME of CLAIMS: 1 with *RET set, 0 when absent,
 * -EBADMSG when not an integer. */
static int int_claim(const json_t *claims, const char *name, int64_t *ret)
{
    const json_t *v = json_object_get(claims, name);
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return -EBADMSG;
    *ret = json_integer_value(v);
    return 1;
}

/* Whether the aud claim AUD is AUDIENCE or an array containing it. */
static bool audience_matches(const json_t *aud, const char *audience)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), audience) == 0;
    size_t i;
    const json_t *a;
    json_array_foreach(aud, i, a) if (json_is_string(a) && strcmp(json_string_value(a), audience) == 0) return true;
    return false;
}

int jwt_verify(const char *token, size_t len, jwt_key *const *keys, size_t n_keys, const jwt_expect *expect,
               json_t **ret_claims)
{
    _cleanup_free_ char *payload = NULL;
    size_t payload_len;
    int r = jws_verify(token, len, keys, n_keys, true, &payload, &payload_len);
    if (r < 0)
        return r;
    json_auto_t *claims = json_loadb(payload, payload_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(claims))
        return -EBADMSG;
    int64_t exp = 0, nbf = 0, iat = 0;
    int has_exp = int_claim(claims, "exp", &exp), has_nbf = int_claim(claims, "nbf", &nbf),
        has_iat = int_claim(claims, "iat", &iat);
    if (has_exp <= 0 || has_nbf < 0 || has_iat < 0)
        return -EBADMSG;
    if (expect->now >= exp + expect->leeway)
        return -EKEYEXPIRED;
    if ((has_nbf && nbf > expect->now + expect->leeway) || (has_iat && iat > expect->now + expect->leeway))
        return -ETIME;
    const char *iss = json_string_value(json_object_get(claims, "iss"));
    if (!iss || strcmp(iss, expect->issuer) != 0)
        return -EACCES;
    if (!audience_matches(json_object_get(claims, "aud"), expect->audience))
        return -EPERM;
    *ret_claims = TAKE_PTR(claims);
    return 0;
}

const char *jwt_strerror(int r)
{
    switch (r) {
    case -EMSGSIZE:
        return "token too large";
    case -EBADMSG:
        return "malformed token";
    case -ENOKEY:
        return "token signed with an unknown key";
    case -EPROTONOSUPPORT:
        return "token algorithm not allowed for its key";
    case -EKEYREJECTED:
        return "bad token signature";
    case -EKEYEXPIRED:
        return "token expired";
    case -ETIME:
        return "token not yet valid";
    case -EACCES:
        return "token from another issuer";
    case -EPERM:
        return "token for another audience";
    default:
        return "token refused";
    }
}

/* ---- cache of verified tokens ---- */

typedef struct jwt_cache_entry {
    uint8_t hash[SHA256_DIGEST_LENGTH];
    int64_t exp;
    json_t *claims;
} jwt_cache_entry;

struct jwt_cache {
    size_t mask;
    jwt_cache_entry entries[];
};

jwt_cache *jwt_cache_new(size_t slots)
{
    size_t n = 2;
    while (n < slots && n < 65536)
        n <<= 1;
    jwt_cache *c = calloc(1, sizeof(*c) + n * sizeof(jwt_cache_entry));
    if (c)
        c->mask = n - 1;
    return c;
}

void jwt_cache_free(jwt_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i <= c->mask; i++)
        json_decref(c->entries[i].claims);
    free(c);
}

/* The two-entry set of the token whose SHA-256 is HASH. */
static jwt_cache_entry *cache_set(jwt_cache *c, const uint8_t hash[SHA256_DIGEST_LENGTH])
{
    uint64_t h;
    memcpy(&h, hash, sizeof(h));
    return &c->entries[h & c->mask & ~(size_t)1];
}

json_t *jwt_cache_get(jwt_cache *c, const char *token, size_t len, int64_t now)
{
    uint8_t hash[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)token, len, hash);
    jwt_cache_entry *set = cache_set(c, hash), *e = NULL;
    for (size_t i = 0; i < 2 && !e; i++)
        if (set[i].claims && memeq_consttime(set[i].hash, hash, sizeof(hash)))
            e = &set[i];
    if (!e)
        return NULL;
    if (now >= e->exp) {
        json_decref(e->claims);
        *e = (jwt_cache_entry){0};
        return NULL;
    }
    return json_incref(e->claims);
}

void jwt_cache_put(jwt_cache *c, const char *token, size_t len, const json_t *claims, int64_t exp)
{
    uint8_t hash[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)token, len, hash);
    jwt_cache_entry *set = cache_set(c, hash);
    /* an empty entry, else the one that expires first */
    jwt_cache_entry *e = !set[0].claims ? &set[0] : !set[1].claims ? &set[1] : set[0].exp <= set[1].exp ? &set[0] : &set[1];
    json_decref(e->claims);
    memcpy(e->hash, hash, sizeof(hash));
    e->exp = exp;
    e->claims = json_incref((json_t *)claims);
}

int jwt_verify_cached(jwt_cache *c, const char *token, size_t len, jwt_key *const *keys, size_t n_keys,
                      const jwt_expect *expect, json_t **ret_claims)
{
    if (len > JWT_MAX_LEN)
        return -EMSGSIZE;
    json_t *claims = jwt_cache_get(c, token, len, expect->now);
    if (claims) {
        *ret_claims = claims;
        return 0;
    }
    int r = jwt_verify(token, len, keys, n_keys, expect, &claims);
    if (r < 0)
        return r;
    jwt_cache_put(c, token, len, claims, json_integer_value(json_object_get(claims, "exp")));
    *ret_claims = claims;
    return 0;
}
