#include "auth/webauthn.h"

#include <cbor.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <string.h>

#include "basic/cbor-scan.h"
#include "basic/encoding.h"
#include "basic/macro.h"

#define AUTH_DATA_FIXED_LEN 37 /* rpIdHash (32) || flags (1) || signCount (4) */
#define CBOR_DEPTH_MAX 8
#define COSE_KTY 1
#define COSE_ALG 3
#define COSE_EC2_CRV (-1)
#define COSE_EC2_X (-2)
#define COSE_EC2_Y (-3)
#define COSE_KTY_EC2 2
#define COSE_ALG_ES256 (-7)
#define COSE_CRV_P256 1
#define CHALLENGE_B64_MAX 64


static void pkey_freep(EVP_PKEY **p)
{
    EVP_PKEY_free(*p);
}

/* Sets *WHY and returns E. */
static int fail(const char **why, int e, const char *text)
{
    *why = text;
    return e;
}

/* Loads the one CBOR item DATA (LEN bytes, nothing after it) into *RET
 * (the caller decrefs), after the structural scan. */
static int cbor_load_strict(const uint8_t *data, size_t len, cbor_item_t **ret)
{
    size_t item_len, pos;
    cbor_scan_error e;
    if (cbor_scan_item(data, len, CBOR_DEPTH_MAX, &item_len, &e, &pos) < 0 || item_len != len)
        return -EBADMSG;
    struct cbor_load_result res;
    cbor_item_t *item = cbor_load(data, len, &res);
    if (!item || res.error.code != CBOR_ERR_NONE || res.read != len) {
        if (item)
            cbor_decref(&item);
        return res.error.code == CBOR_ERR_MEMERROR ? -ENOMEM : -EBADMSG;
    }
    *ret = item;
    return 0;
}

/* The integer value of a CBOR unsigned or negative integer item into *RET;
 * false for anything else or beyond int64_t. */
static bool cbor_int(const cbor_item_t *item, int64_t *ret)
{
    if (!cbor_isa_uint(item) && !cbor_isa_negint(item))
        return false;
    uint64_t v = cbor_get_int(item);
    if (v > INT64_MAX)
        return false;
    *ret = cbor_isa_uint(item) ? (int64_t)v : -1 - (int64_t)v;
    return true;
}

/* Whether ITEM is the definite text string S. */
static bool cbor_text_is(const cbor_item_t *item, const char *s)
{
    const char *p;
    size_t n;
    return cbor_get_text(item, &p, &n) && n == strlen(s) && memcmp(p, s, n) == 0;
}

/* The P-256 public key of the uncompressed point PUB (checked to be on the
 * curve) into *RET (the caller frees). */
static int p256_key(const uint8_t pub[WEBAUTHN_PUBLIC_KEY_LEN], EVP_PKEY **ret)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pub, WEBAUTHN_PUBLIC_KEY_LEN),
        OSSL_PARAM_END,
    };
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    int ok = ctx && EVP_PKEY_fromdata_init(ctx) == 1 && EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (ok) {
        EVP_PKEY_CTX *check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        ok = check && EVP_PKEY_public_check(check) == 1;
        EVP_PKEY_CTX_free(check);
    }
    if (!ok) {
        EVP_PKEY_free(pkey);
        return -EBADMSG;
    }
    *ret = pkey;
    return 0;
}

/* Whether SIG (DER ECDSA) verifies with PUB over DATA || CLIENT_DATA_HASH, SHA-256. */
static bool es256_verify(const uint8_t pub[WEBAUTHN_PUBLIC_KEY_LEN], const uint8_t *data, size_t data_len,
                         const uint8_t client_data_hash[32], const uint8_t *sig, size_t sig_len)
{
    _cleanup_(pkey_freep) EVP_PKEY *pkey = NULL;
    if (sig_len == 0 || sig_len > WEBAUTHN_SIGNATURE_MAX || p256_key(pub, &pkey) < 0)
        return false;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pkey) == 1 &&
              EVP_DigestVerifyUpdate(md, data, data_len) == 1 && EVP_DigestVerifyUpdate(md, client_data_hash, 32) == 1 &&
              EVP_DigestVerifyFinal(md, sig, sig_len) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

/* The ES256 COSE_Key ITEM (an EC2 map: kty 2, alg -7, crv 1, x, y, and
 * nothing else) as an uncompressed point into RET. */
static int cose_es256_key(const cbor_item_t *item, uint8_t ret[WEBAUTHN_PUBLIC_KEY_LEN], const char **why)
{
    if (!cbor_isa_map(item) || !cbor_map_is_definite(item))
        return fail(why, -EBADMSG, "the credential public key is not a COSE_Key map");
    struct cbor_pair *pairs = cbor_map_handle(item);
    int64_t kty = 0, alg = 0, crv = 0;
    const uint8_t *x = NULL, *y = NULL;
    size_t x_len = 0, y_len = 0;
    unsigned seen = 0;
    for (size_t i = 0; i < cbor_map_size(item); i++) {
        int64_t label;
        if (!cbor_int(pairs[i].key, &label))
            return fail(why, -EBADMSG, "the COSE_Key has a label that is not an integer");
        unsigned bit = label == COSE_KTY ? 1 : label == COSE_ALG ? 2 : label == COSE_EC2_CRV ? 4 : label == COSE_EC2_X ? 8
                                                                           : label == COSE_EC2_Y ? 16 : 0;
        if (!bit || (seen & bit))
            return fail(why, -EBADMSG, "the COSE_Key has an unknown or repeated label (ES256 keys are kty, alg, crv, x, y)");
        seen |= bit;
        bool ok = label == COSE_KTY   ? cbor_int(pairs[i].value, &kty)
                  : label == COSE_ALG ? cbor_int(pairs[i].value, &alg)
                  : label == COSE_EC2_CRV ? cbor_int(pairs[i].value, &crv)
                  : label == COSE_EC2_X   ? cbor_get_bytes(pairs[i].value, &x, &x_len)
                                          : cbor_get_bytes(pairs[i].value, &y, &y_len);
        if (!ok)
            return fail(why, -EBADMSG, "a COSE_Key member has the wrong type");
    }
    if (!(seen & 2))
        return fail(why, -ENOTSUP, "the credential public key names no algorithm; only ES256 (COSE -7) is accepted");
    if (alg != COSE_ALG_ES256 || kty != COSE_KTY_EC2)
        return fail(why, -ENOTSUP, "the credential public key is not ES256 (COSE alg -7, EC2): only ES256 is accepted");
    if (seen != 31 || crv != COSE_CRV_P256 || x_len != 32 || y_len != 32)
        return fail(why, -EBADMSG, "the ES256 COSE_Key must be curve P-256 (crv 1) with 32-byte x and y");
    ret[0] = 0x04;
    memcpy(ret + 1, x, 32);
    memcpy(ret + 33, y, 32);
    _cleanup_(pkey_freep) EVP_PKEY *pkey = NULL;
    if (p256_key(ret, &pkey) < 0)
        return fail(why, -EBADMSG, "the credential public key is not a point on P-256");
    return 0;
}

/* What authenticatorData says. */
typedef struct auth_data {
    uint8_t flags;
    uint32_t sign_count;
    const uint8_t *cred_id;
    size_t cred_id_len;
    uint8_t aaguid[16];
    uint8_t public_key[WEBAUTHN_PUBLIC_KEY_LEN];
} auth_data;

/* Parses authenticatorData DATA (LEN bytes) into *RET and checks it against
 * EX: rpIdHash, UP, UV when required, BS only with BE; attested credential
 * data present exactly when ATTESTED (a registration), extensions a CBOR
 * map, no byte after them. */
static int auth_data_parse(const uint8_t *data, size_t len, bool attested, const webauthn_expect *ex, auth_data *ret,
                           const char **why)
{
    if (len > WEBAUTHN_AUTH_DATA_MAX)
        return fail(why, -E2BIG, "authenticatorData is too large");
    if (len < AUTH_DATA_FIXED_LEN)
        return fail(why, -EBADMSG, "authenticatorData is shorter than 37 bytes");
    auth_data ad = {.flags = data[32],
                    .sign_count = (uint32_t)data[33] << 24 | (uint32_t)data[34] << 16 | (uint32_t)data[35] << 8 | data[36]};
    uint8_t rp_hash[32];
    unsigned hlen = 0;
    if (EVP_Digest(ex->rp_id, strlen(ex->rp_id), rp_hash, &hlen, EVP_sha256(), NULL) != 1)
        return fail(why, -ENOMEM, "cannot hash the RP ID");
    if (!memeq_consttime(rp_hash, data, 32))
        return fail(why, -EPERM, "rpIdHash is not the SHA-256 of this server's RP ID (a credential for another site)");
    if (!(ad.flags & WEBAUTHN_FLAG_UP))
        return fail(why, -EPERM, "the authenticator did not report user presence (UP flag)");
    if (ex->require_uv && !(ad.flags & WEBAUTHN_FLAG_UV))
        return fail(why, -EPERM, "the authenticator did not verify the user (UV flag): a PIN or biometric is required");
    if ((ad.flags & WEBAUTHN_FLAG_BS) && !(ad.flags & WEBAUTHN_FLAG_BE))
        return fail(why, -EBADMSG, "authenticatorData says backed up (BS) but not backup eligible (BE)");
    bool has_at = ad.flags & WEBAUTHN_FLAG_AT;
    if (has_at != attested)
        return fail(why, -EBADMSG, attested ? "the registration's authenticatorData has no attested credential data"
                                            : "an assertion's authenticatorData must not carry attested credential data");
    size_t pos = AUTH_DATA_FIXED_LEN;
    if (has_at) {
        if (len - pos < 18)
            return fail(why, -EBADMSG, "attested credential data is truncated");
        memcpy(ad.aaguid, data + pos, 16);
        size_t id_len = (size_t)data[pos + 16] << 8 | data[pos + 17];
        pos += 18;
        if (id_len == 0 || id_len > WEBAUTHN_CREDENTIAL_ID_MAX)
            return fail(why, -E2BIG, "the credential id is empty or longer than 255 bytes");
        if (len - pos < id_len)
            return fail(why, -EBADMSG, "the credential id is truncated");
        ad.cred_id = data + pos;
        ad.cred_id_len = id_len;
        pos += id_len;
        size_t key_len, epos;
        cbor_scan_error e;
        if (cbor_scan_item(data + pos, len - pos, CBOR_DEPTH_MAX, &key_len, &e, &epos) < 0)
            return fail(why, -EBADMSG, "the credential public key is not well-formed CBOR");
        _cleanup_cbor_ cbor_item_t *key = NULL;
        int r = cbor_load_strict(data + pos, key_len, &key);
        if (r < 0)
            return fail(why, r, "the credential public key does not load as CBOR");
        r = cose_es256_key(key, ad.public_key, why);
        if (r < 0)
            return r;
        pos += key_len;
    }
    if (ad.flags & WEBAUTHN_FLAG_ED) {
        size_t ext_len, epos;
        cbor_scan_error e;
        _cleanup_cbor_ cbor_item_t *ext = NULL;
        if (cbor_scan_item(data + pos, len - pos, CBOR_DEPTH_MAX, &ext_len, &e, &epos) < 0 ||
            cbor_load_strict(data + pos, ext_len, &ext) < 0 || !cbor_isa_map(ext))
            return fail(why, -EBADMSG, "the authenticator extensions are not a well-formed CBOR map");
        pos += ext_len;
    }
    if (pos != len)
        return fail(why, -EBADMSG, "authenticatorData has bytes after its last part");
    *ret = ad;
    return 0;
}

/* The challenge string of clientDataJSON object CD decoded into RET. */
static int challenge_of(const json_t *cd, uint8_t ret[WEBAUTHN_CHALLENGE_LEN], const char **why)
{
    const char *c = json_string_value(json_object_get(cd, "challenge"));
    uint8_t buf[WEBAUTHN_CHALLENGE_LEN + 4];
    if (!c || strlen(c) > CHALLENGE_B64_MAX ||
        base64_decode(c, strlen(c), buf, sizeof(buf), true) != WEBAUTHN_CHALLENGE_LEN)
        return fail(why, -EBADMSG, "clientDataJSON's challenge is not base64url of 32 bytes");
    memcpy(ret, buf, WEBAUTHN_CHALLENGE_LEN);
    return 0;
}

/* clientDataJSON (LEN bytes) parsed into *RET (new reference): a JSON
 * object without repeated members, under the cap. */
static int client_data_load(const uint8_t *json, size_t len, json_t **ret, const char **why)
{
    if (len > WEBAUTHN_CLIENT_DATA_MAX)
        return fail(why, -E2BIG, "clientDataJSON is larger than 4096 bytes");
    json_t *cd = json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(cd)) {
        json_decref(cd);
        return fail(why, -EBADMSG, "clientDataJSON is not a JSON object");
    }
    *ret = cd;
    return 0;
}

int webauthn_client_data_challenge(const uint8_t *json, size_t len, uint8_t ret[WEBAUTHN_CHALLENGE_LEN],
                                   const char **why)
{
    json_auto_t *cd = NULL;
    int r = client_data_load(json, len, &cd, why);
    return r < 0 ? r : challenge_of(cd, ret, why);
}

/* Checks clientDataJSON (LEN bytes) of a TYPE ceremony against EX: type,
 * challenge (constant time), origin exactly, crossOrigin absent or false;
 * its SHA-256 into RET_HASH. */
static int client_data_check(const uint8_t *json, size_t len, const char *type, const webauthn_expect *ex,
                             uint8_t ret_hash[32], const char **why)
{
    json_auto_t *cd = NULL;
    int r = client_data_load(json, len, &cd, why);
    if (r < 0)
        return r;
    const char *t = json_string_value(json_object_get(cd, "type"));
    if (!t || strcmp(t, type) != 0)
        return fail(why, -EPERM, strcmp(type, "webauthn.create") == 0
                                     ? "clientDataJSON's type is not webauthn.create (not a registration)"
                                     : "clientDataJSON's type is not webauthn.get (not an assertion)");
    uint8_t challenge[WEBAUTHN_CHALLENGE_LEN];
    r = challenge_of(cd, challenge, why);
    if (r < 0)
        return r;
    if (!memeq_consttime(challenge, ex->challenge, WEBAUTHN_CHALLENGE_LEN))
        return fail(why, -EPERM, "clientDataJSON's challenge is not the one this server issued");
    const char *origin = json_string_value(json_object_get(cd, "origin"));
    if (!origin || strcmp(origin, ex->origin) != 0)
        return fail(why, -EPERM, "clientDataJSON's origin is not this server's origin");
    json_t *cross = json_object_get(cd, "crossOrigin");
    if (cross && !json_is_false(cross))
        return fail(why, -EPERM, "the ceremony ran in a cross-origin frame (crossOrigin must be false)");
    if (json_object_get(cd, "topOrigin"))
        return fail(why, -EPERM, "the ceremony ran in a frame (topOrigin is set)");
    unsigned hlen = 0;
    if (EVP_Digest(json, len, ret_hash, &hlen, EVP_sha256(), NULL) != 1)
        return fail(why, -ENOMEM, "cannot hash clientDataJSON");
    return 0;
}

/* The "packed" self-attestation statement STMT (alg -7, sig; no x5c) over
 * AUTH || CD_HASH by the new credential's key PUB. */
static int packed_self_check(const cbor_item_t *stmt, const uint8_t *auth, size_t auth_len, const uint8_t cd_hash[32],
                             const uint8_t pub[WEBAUTHN_PUBLIC_KEY_LEN], const char **why)
{
    struct cbor_pair *pairs = cbor_map_handle(stmt);
    int64_t alg = 0;
    const uint8_t *sig = NULL;
    size_t sig_len = 0;
    bool has_alg = false;
    for (size_t i = 0; i < cbor_map_size(stmt); i++) {
        if (cbor_text_is(pairs[i].key, "x5c"))
            return fail(why, -ENOTSUP,
                        "packed attestation with a certificate chain (x5c) is not supported: ask for attestation \"none\"");
        if (cbor_text_is(pairs[i].key, "alg") && !has_alg && cbor_int(pairs[i].value, &alg))
            has_alg = true;
        else if (cbor_text_is(pairs[i].key, "sig") && !sig && cbor_get_bytes(pairs[i].value, &sig, &sig_len))
            continue;
        else
            return fail(why, -EBADMSG, "the packed attestation statement has an unknown, repeated or mistyped member");
    }
    if (!has_alg || alg != COSE_ALG_ES256)
        return fail(why, -ENOTSUP, "the packed attestation is not ES256 (alg -7): only ES256 is accepted");
    if (!sig || !es256_verify(pub, auth, auth_len, cd_hash, sig, sig_len))
        return fail(why, -EPERM, "the packed self-attestation signature does not verify");
    return 0;
}

int webauthn_register_verify(const uint8_t *client_data, size_t client_data_len, const uint8_t *attestation,
                             size_t attestation_len, const webauthn_expect *ex, webauthn_credential *ret,
                             const char **why)
{
    if (attestation_len > WEBAUTHN_ATTESTATION_MAX)
        return fail(why, -E2BIG, "the attestationObject is larger than 8192 bytes");
    uint8_t cd_hash[32];
    int r = client_data_check(client_data, client_data_len, "webauthn.create", ex, cd_hash, why);
    if (r < 0)
        return r;
    _cleanup_cbor_ cbor_item_t *obj = NULL;
    if (cbor_load_strict(attestation, attestation_len, &obj) < 0 || !cbor_isa_map(obj))
        return fail(why, -EBADMSG, "the attestationObject is not one well-formed CBOR map");
    const cbor_item_t *fmt = NULL, *stmt = NULL, *auth = NULL;
    struct cbor_pair *pairs = cbor_map_handle(obj);
    for (size_t i = 0; i < cbor_map_size(obj); i++) {
        const cbor_item_t **slot = cbor_text_is(pairs[i].key, "fmt")        ? &fmt
                                   : cbor_text_is(pairs[i].key, "attStmt")  ? &stmt
                                   : cbor_text_is(pairs[i].key, "authData") ? &auth
                                                                            : NULL;
        if (!slot || *slot)
            return fail(why, -EBADMSG, "the attestationObject has an unknown or repeated member");
        *slot = pairs[i].value;
    }
    const uint8_t *auth_bytes;
    size_t auth_len;
    if (!fmt || !stmt || !auth || !cbor_isa_string(fmt) || !cbor_string_is_definite(fmt) || !cbor_isa_map(stmt) ||
        !cbor_get_bytes(auth, &auth_bytes, &auth_len))
        return fail(why, -EBADMSG, "the attestationObject needs fmt (text), attStmt (map) and authData (bytes)");
    auth_data ad;
    r = auth_data_parse(auth_bytes, auth_len, true, ex, &ad, why);
    if (r < 0)
        return r;
    const char *format;
    if (cbor_text_is(fmt, "none")) {
        if (cbor_map_size(stmt) != 0)
            return fail(why, -EBADMSG, "attestation \"none\" must have an empty attStmt");
        format = "none";
    } else if (cbor_text_is(fmt, "packed")) {
        r = packed_self_check(stmt, auth_bytes, auth_len, cd_hash, ad.public_key, why);
        if (r < 0)
            return r;
        format = "packed";
    } else
        return fail(why, -ENOTSUP, "attestation format not supported: ask for attestation \"none\" (or packed self-attestation)");
    webauthn_credential c = {.id_len = ad.cred_id_len, .sign_count = ad.sign_count, .flags = ad.flags};
    memcpy(c.id, ad.cred_id, ad.cred_id_len);
    memcpy(c.public_key, ad.public_key, sizeof(c.public_key));
    memcpy(c.aaguid, ad.aaguid, sizeof(c.aaguid));
    snprintf(c.format, sizeof(c.format), "%s", format);
    *ret = c;
    return 0;
}

int webauthn_assert_verify(const uint8_t *client_data, size_t client_data_len, const uint8_t *auth_data_bytes,
                           size_t auth_data_len, const uint8_t *signature, size_t signature_len,
                           const webauthn_expect *ex, const uint8_t public_key[WEBAUTHN_PUBLIC_KEY_LEN],
                           uint32_t sign_count, uint32_t *ret_sign_count, const char **why)
{
    if (signature_len > WEBAUTHN_SIGNATURE_MAX)
        return fail(why, -E2BIG, "the signature is larger than an ES256 signature");
    uint8_t cd_hash[32];
    int r = client_data_check(client_data, client_data_len, "webauthn.get", ex, cd_hash, why);
    if (r < 0)
        return r;
    auth_data ad;
    r = auth_data_parse(auth_data_bytes, auth_data_len, false, ex, &ad, why);
    if (r < 0)
        return r;
    if (!es256_verify(public_key, auth_data_bytes, auth_data_len, cd_hash, signature, signature_len))
        return fail(why, -EPERM, "the assertion's signature does not verify with the registered public key");
    if ((sign_count != 0 || ad.sign_count != 0) && ad.sign_count <= sign_count)
        return fail(why, -ESTALE, "the signature counter did not increase: the authenticator may have been cloned");
    *ret_sign_count = ad.sign_count;
    return 0;
}
