#include "api/sealed.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "kms/crypto.h"

int api_seal_key(const uint8_t handoff_key[HANDOFF_KEY_LEN], const char *label, uint8_t ret[API_SEAL_KEY_LEN])
{
    return hkdf_sha256(handoff_key, HANDOFF_KEY_LEN, NULL, 0, (const uint8_t *)label, strlen(label), ret,
                       API_SEAL_KEY_LEN);
}

int api_seal_json(const uint8_t key[API_SEAL_KEY_LEN], const char *aad, const json_t *v, size_t max, char **ret)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        return -ENOMEM;
    size_t n = strlen(text), total = KMS_NONCE_BYTES + n + KMS_TAG_BYTES;
    int r = n <= max ? 0 : -EFBIG;
    uint8_t *buf = r == 0 ? malloc(total) : NULL;
    char *out = buf ? malloc(base64_encoded_size(total)) : NULL;
    if (r == 0)
        r = out ? random_bytes(buf, KMS_NONCE_BYTES) : -ENOMEM;
    if (r == 0)
        r = aead_seal(key, buf, (const uint8_t *)aad, strlen(aad), (const uint8_t *)text, n, buf + KMS_NONCE_BYTES,
                      buf + KMS_NONCE_BYTES + n);
    if (r == 0)
        base64_encode(buf, total, out, true);
    OPENSSL_cleanse(text, n);
    free(text);
    free(buf);
    if (r < 0) {
        free(out);
        return r;
    }
    *ret = out;
    return 0;
}

int api_open_json(const uint8_t key[API_SEAL_KEY_LEN], const char *aad, const char *sealed, size_t max,
                  json_t **ret)
{
    size_t len = strlen(sealed);
    if (len > base64_encoded_size(KMS_NONCE_BYTES + max + KMS_TAG_BYTES))
        return -EINVAL;
    _cleanup_free_ uint8_t *buf = malloc(len + 1);
    if (!buf)
        return -ENOMEM;
    long total = base64_decode(sealed, len, buf, len + 1, true);
    if (total < KMS_NONCE_BYTES + KMS_TAG_BYTES)
        return -EINVAL;
    size_t n = (size_t)total - KMS_NONCE_BYTES - KMS_TAG_BYTES;
    _cleanup_free_ char *text = malloc(n + 1);
    if (!text)
        return -ENOMEM;
    int r = aead_open(key, buf, (const uint8_t *)aad, strlen(aad), buf + KMS_NONCE_BYTES, n,
                      buf + KMS_NONCE_BYTES + n, (uint8_t *)text);
    if (r < 0)
        return r;
    json_t *v = json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    OPENSSL_cleanse(text, n);
    if (!v)
        return -EINVAL;
    *ret = v;
    return 0;
}
