#include "kms/crypto.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "basic/macro.h"

#define SECMEM_SLOTS 1024 /* 256 KiB, well under the usual RLIMIT_MEMLOCK */

static pthread_mutex_t secmem_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *secmem_arena;
static bool secmem_is_locked;
static uint8_t secmem_used[SECMEM_SLOTS];

/* Maps the arena on first use; called with secmem_lock held. */
static int secmem_init(void)
{
    if (secmem_arena)
        return 0;
    void *p = mmap(NULL, (size_t)SECMEM_SLOTS * SECMEM_SLOT_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return negative_errno();
    (void)madvise(p, (size_t)SECMEM_SLOTS * SECMEM_SLOT_BYTES, MADV_DONTDUMP);
    secmem_is_locked = mlock(p, (size_t)SECMEM_SLOTS * SECMEM_SLOT_BYTES) == 0;
    secmem_arena = p;
    return 0;
}

void *secmem_alloc(size_t n)
{
    if (n == 0 || n > SECMEM_SLOT_BYTES)
        return NULL;
    void *ret = NULL;
    pthread_mutex_lock(&secmem_lock);
    if (secmem_init() == 0)
        for (size_t i = 0; i < SECMEM_SLOTS; i++)
            if (!secmem_used[i]) {
                secmem_used[i] = 1;
                ret = secmem_arena + i * SECMEM_SLOT_BYTES;
                memset(ret, 0, SECMEM_SLOT_BYTES);
                break;
            }
    pthread_mutex_unlock(&secmem_lock);
    return ret;
}

void secmem_free(void *p)
{
    if (!p)
        return;
    size_t i = (size_t)((uint8_t *)p - secmem_arena) / SECMEM_SLOT_BYTES;
    OPENSSL_cleanse(p, SECMEM_SLOT_BYTES);
    pthread_mutex_lock(&secmem_lock);
    secmem_used[i] = 0;
    pthread_mutex_unlock(&secmem_lock);
}

bool secmem_locked(void)
{
    pthread_mutex_lock(&secmem_lock);
    secmem_init();
    bool r = secmem_is_locked;
    pthread_mutex_unlock(&secmem_lock);
    return r;
}

/* One GCM pass of either direction; TAG is written (seal) or checked (open). */
static int gcm(bool seal, const uint8_t *key, const uint8_t *iv, size_t iv_len, const uint8_t *aad, size_t aad_len,
               const uint8_t *in, size_t n, uint8_t *tag, size_t tag_len, uint8_t *out)
{
    if (n > INT32_MAX || aad_len > INT32_MAX || iv_len == 0 || iv_len > 1024 || tag_len > 16)
        return -EINVAL;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c)
        return -ENOMEM;
    int r = -EIO, len;
    if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, seal) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, (int)iv_len, NULL) != 1 ||
        EVP_CipherInit_ex(c, NULL, NULL, key, iv, seal) != 1)
        goto out;
    if (aad_len && EVP_CipherUpdate(c, NULL, &len, aad, (int)aad_len) != 1)
        goto out;
    if (n && EVP_CipherUpdate(c, out, &len, in, (int)n) != 1)
        goto out;
    if (seal) {
        if (EVP_CipherFinal_ex(c, out + n, &len) != 1 ||
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, (int)tag_len, tag) != 1)
            goto out;
    } else {
        if (tag_len == 0 || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, (int)tag_len, tag) != 1 ||
            EVP_CipherFinal_ex(c, out + n, &len) != 1) {
            OPENSSL_cleanse(out, n);
            r = -EBADMSG;
            goto out;
        }
    }
    r = 0;
out:
    EVP_CIPHER_CTX_free(c);
    return r;
}

int aead_seal(const uint8_t key[KMS_KEY_BYTES], const uint8_t nonce[KMS_NONCE_BYTES], const uint8_t *aad,
              size_t aad_len, const uint8_t *in, size_t n, uint8_t *out, uint8_t tag[KMS_TAG_BYTES])
{
    return gcm(true, key, nonce, KMS_NONCE_BYTES, aad, aad_len, in, n, tag, KMS_TAG_BYTES, out);
}

int aead_open(const uint8_t key[KMS_KEY_BYTES], const uint8_t nonce[KMS_NONCE_BYTES], const uint8_t *aad,
              size_t aad_len, const uint8_t *in, size_t n, const uint8_t tag[KMS_TAG_BYTES], uint8_t *out)
{
    return gcm(false, key, nonce, KMS_NONCE_BYTES, aad, aad_len, in, n, (uint8_t *)tag, KMS_TAG_BYTES, out);
}

int aead_open_ex(const uint8_t key[KMS_KEY_BYTES], const uint8_t *iv, size_t iv_len, const uint8_t *aad,
                 size_t aad_len, const uint8_t *in, size_t n, const uint8_t *tag, size_t tag_len, uint8_t *out)
{
    return gcm(false, key, iv, iv_len, aad, aad_len, in, n, (uint8_t *)tag, tag_len, out);
}

int hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len, const uint8_t *info,
                size_t info_len, uint8_t *out, size_t out_len)
{
    if (out_len == 0 || out_len > 255 * 32)
        return -EINVAL;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *c = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);
    if (!c)
        return -EIO;
    static const uint8_t empty[1];
    OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, (void *)(ikm_len ? ikm : empty), ikm_len),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, (void *)(salt_len ? salt : empty), salt_len),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_INFO, (void *)(info_len ? info : empty), info_len),
        OSSL_PARAM_END,
    };
    int r = EVP_KDF_derive(c, out, out_len, params) == 1 ? 0 : -EIO;
    EVP_KDF_CTX_free(c);
    return r;
}
