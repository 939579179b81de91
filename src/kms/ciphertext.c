#include "kms/ciphertext.h"

#include <errno.h>
#include <string.h>

#include "basic/macro.h"

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static bool context_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.' || c == ':' || c == '/';
}

bool kms_key_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > KMS_KEY_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!name_char(name[i]))
            return false;
    return true;
}

int kms_ciphertext_decode(const uint8_t *in, size_t n, kms_ciphertext *ret)
{
    if (n > KMS_CIPHERTEXT_MAX)
        return -E2BIG;
    if (n < KMS_MAGIC_LEN + 1 || memcmp(in, KMS_MAGIC, KMS_MAGIC_LEN) != 0)
        return -EINVAL;
    size_t name_len = in[KMS_MAGIC_LEN];
    if (name_len == 0 || name_len > KMS_KEY_NAME_MAX)
        return -EINVAL;
    size_t header_len = KMS_MAGIC_LEN + 1 + name_len + 4;
    if (n < header_len + KMS_NONCE_BYTES + KMS_TAG_BYTES)
        return -EINVAL;
    kms_ciphertext c = {0};
    for (size_t i = 0; i < name_len; i++) {
        char ch = (char)in[KMS_MAGIC_LEN + 1 + i];
        if (!name_char(ch))
            return -EINVAL;
        c.key[i] = ch;
    }
    const uint8_t *v = in + KMS_MAGIC_LEN + 1 + name_len;
    c.version = (uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3];
    if (c.version == 0)
        return -EINVAL;
    c.header = in;
    c.header_len = header_len;
    c.nonce = in + header_len;
    c.data = c.nonce + KMS_NONCE_BYTES;
    c.data_len = n - header_len - KMS_NONCE_BYTES - KMS_TAG_BYTES;
    c.tag = c.data + c.data_len;
    *ret = c;
    return 0;
}

size_t kms_header_encode(const char *name, uint32_t version, uint8_t *out)
{
    size_t n = strlen(name);
    memcpy(out, KMS_MAGIC, KMS_MAGIC_LEN);
    out[KMS_MAGIC_LEN] = (uint8_t)n;
    memcpy(out + KMS_MAGIC_LEN + 1, name, n);
    uint8_t *v = out + KMS_MAGIC_LEN + 1 + n;
    v[0] = (uint8_t)(version >> 24);
    v[1] = (uint8_t)(version >> 16);
    v[2] = (uint8_t)(version >> 8);
    v[3] = (uint8_t)version;
    return KMS_MAGIC_LEN + 1 + n + 4;
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int kms_context_encode(const json_t *context, uint8_t *out, size_t *ret_len)
{
    if (!context || json_is_null(context)) {
        *ret_len = 0;
        return 0;
    }
    if (!json_is_object(context))
        return -EINVAL;
    size_t n = json_object_size(context);
    if (n > KMS_CONTEXT_PAIRS_MAX)
        return -E2BIG;
    const char *keys[KMS_CONTEXT_PAIRS_MAX];
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)context, k, v) keys[i++] = k;
    qsort(keys, n, sizeof(keys[0]), cmp_keys);
    size_t len = 0;
    for (i = 0; i < n; i++) {
        json_t *val = json_object_get(context, keys[i]);
        size_t klen = strlen(keys[i]);
        if (!json_is_string(val) || klen == 0)
            return -EINVAL;
        size_t vlen = json_string_length(val);
        if (klen > KMS_CONTEXT_KEY_MAX || vlen > KMS_CONTEXT_VALUE_MAX)
            return -E2BIG;
        for (size_t j = 0; j < klen; j++)
            if (!context_key_char(keys[i][j]))
                return -EINVAL;
        const char *s = json_string_value(val);
        if (memchr(s, 0, vlen))
            return -EINVAL;
        out[len++] = (uint8_t)klen;
        memcpy(out + len, keys[i], klen);
        len += klen;
        out[len++] = (uint8_t)(vlen >> 8);
        out[len++] = (uint8_t)vlen;
        memcpy(out + len, s, vlen);
        len += vlen;
    }
    *ret_len = len;
    return 0;
}
