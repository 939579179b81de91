/* Issuing sandbox attestation documents: the Nitro document format (so one
 * parser verifies both), signed with ES384 by the runner's platform key. */
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <string.h>

#include <cbor.h>

#include "attest/attest.h"
#include "basic/macro.h"

static void cbor_decref_one(cbor_item_t *item)
{
    cbor_decref(&item);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(cbor_item_t *, cbor_decref_one)

/* Adds KEY: VALUE to MAP, taking VALUE's reference; false on failure. */
static bool put(cbor_item_t *map, const char *key, cbor_item_t *value)
{
    if (!value)
        return false;
    cbor_item_t *k = cbor_build_string(key);
    bool ok = k && cbor_map_add(map, (struct cbor_pair){.key = k, .value = value});
    if (k)
        cbor_decref(&k);
    cbor_decref(&value);
    return ok;
}

static bool push(cbor_item_t *array, cbor_item_t *value)
{
    if (!value)
        return false;
    bool ok = cbor_array_push(array, value);
    cbor_decref(&value);
    return ok;
}

static cbor_item_t *bytes_or_null(const uint8_t *p, size_t n)
{
    return p ? cbor_build_bytestring(p, n) : cbor_new_null();
}

static cbor_item_t *cert_bytes(X509 *x)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    if (n <= 0)
        return NULL;
    cbor_item_t *item = cbor_build_bytestring(der, (size_t)n);
    OPENSSL_free(der);
    return item;
}

/* Serializes ITEM into a malloc'd buffer; 0 or -ENOMEM. */
static int serialize(cbor_item_t *item, uint8_t **ret, size_t *ret_len)
{
    unsigned char *buf = NULL;
    size_t cap = 0, n = cbor_serialize_alloc(item, &buf, &cap);
    if (n == 0) {
        free(buf);
        return -ENOMEM;
    }
    *ret = buf;
    *ret_len = n;
    return 0;
}

/* The document's payload map (a new item) for CLAIMS signed under CERT. */
static cbor_item_t *build_payload(const attest_sandbox_claims *c, X509 *cert, X509 *const *bundle, size_t n_bundle)
{
    cbor_item_t *pcrs = cbor_new_definite_map(ATTEST_SANDBOX_PCRS);
    for (uint8_t i = 0; pcrs && i < ATTEST_SANDBOX_PCRS; i++) {
        cbor_item_t *k = cbor_build_uint8(i), *v = cbor_build_bytestring(c->pcrs[i], ATTEST_SANDBOX_PCR_LEN);
        bool ok = k && v && cbor_map_add(pcrs, (struct cbor_pair){.key = k, .value = v});
        if (k)
            cbor_decref(&k);
        if (v)
            cbor_decref(&v);
        if (!ok) {
            cbor_decref(&pcrs);
            return NULL;
        }
    }
    cbor_item_t *cabundle = cbor_new_definite_array(n_bundle);
    for (size_t i = 0; cabundle && i < n_bundle; i++)
        if (!push(cabundle, cert_bytes(bundle[i])))
            cbor_decref(&cabundle);
    cbor_item_t *payload = cbor_new_definite_map(9);
    if (!payload) {
        if (pcrs)
            cbor_decref(&pcrs);
        if (cabundle)
            cbor_decref(&cabundle);
        return NULL;
    }
    /* put() always consumes its value, so every one runs and ok accumulates */
    bool ok = put(payload, "module_id", cbor_build_string(c->module_id));
    ok = put(payload, "digest", cbor_build_string("SHA384")) && ok;
    ok = put(payload, "timestamp", cbor_build_uint64(c->timestamp_ms)) && ok;
    ok = put(payload, "pcrs", pcrs) && ok;
    ok = put(payload, "certificate", cert_bytes(cert)) && ok;
    ok = put(payload, "cabundle", cabundle) && ok;
    ok = put(payload, "public_key", bytes_or_null(c->public_key, c->public_key_len)) && ok;
    ok = put(payload, "user_data", bytes_or_null(c->user_data, c->user_data_len)) && ok;
    ok = put(payload, "nonce", bytes_or_null(c->nonce, c->nonce_len)) && ok;
    if (!ok)
        cbor_decref(&payload);
    return ok ? payload : NULL;
}

/* ES384 over TBS with KEY as raw r||s (96 bytes), COSE's encoding. */
static int sign_es384(EVP_PKEY *key, const uint8_t *tbs, size_t tbs_len, uint8_t sig[96])
{
    unsigned char der[160];
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha384(), NULL, key) == 1 &&
             EVP_DigestSign(md, der, &der_len, tbs, tbs_len) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return -EINVAL;
    const unsigned char *p = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    ok = s && BN_bn2binpad(ECDSA_SIG_get0_r(s), sig, 48) == 48 && BN_bn2binpad(ECDSA_SIG_get0_s(s), sig + 48, 48) == 48;
    ECDSA_SIG_free(s);
    return ok ? 0 : -EINVAL;
}

int attest_sandbox_issue(EVP_PKEY *key, X509 *cert, X509 *const *cabundle, size_t n_cabundle,
                         const attest_sandbox_claims *claims, uint8_t **ret, size_t *ret_len)
{
    if (!key || EVP_PKEY_get_bits(key) != 384 || !cert || !claims->module_id ||
        (claims->nonce && claims->nonce_len > 1024) || (claims->user_data && claims->user_data_len > 1024) ||
        (claims->public_key && claims->public_key_len > 1024))
        return -EINVAL;
    static const uint8_t protected_header[] = {0xa1, 0x01, 0x38, 0x22}; /* {1: -35} = ES384 */
    _cleanup_(cbor_decref_onep) cbor_item_t *payload = build_payload(claims, cert, cabundle, n_cabundle);
    if (!payload)
        return -ENOMEM;
    _cleanup_free_ uint8_t *body = NULL, *tbs = NULL;
    size_t body_len, tbs_len;
    int r = serialize(payload, &body, &body_len);
    if (r < 0)
        return r;
    /* Sig_structure = ["Signature1", protected, external_aad = h'', payload] */
    _cleanup_(cbor_decref_onep) cbor_item_t *sig_structure = cbor_new_definite_array(4);
    if (!sig_structure || !push(sig_structure, cbor_build_string("Signature1")) ||
        !push(sig_structure, cbor_build_bytestring(protected_header, sizeof(protected_header))) ||
        !push(sig_structure, cbor_build_bytestring(protected_header, 0)) ||
        !push(sig_structure, cbor_build_bytestring(body, body_len)))
        return -ENOMEM;
    r = serialize(sig_structure, &tbs, &tbs_len);
    if (r < 0)
        return r;
    uint8_t sig[96];
    r = sign_es384(key, tbs, tbs_len, sig);
    if (r < 0)
        return r;
    _cleanup_(cbor_decref_onep) cbor_item_t *cose = cbor_new_definite_array(4);
    if (!cose || !push(cose, cbor_build_bytestring(protected_header, sizeof(protected_header))) ||
        !push(cose, cbor_new_definite_map(0)) || !push(cose, cbor_build_bytestring(body, body_len)) ||
        !push(cose, cbor_build_bytestring(sig, sizeof(sig))))
        return -ENOMEM;
    return serialize(cose, ret, ret_len);
}
