/* libFuzzer target: the strict decoder of KMS ciphertexts, then a decrypt
 * attempt under a fixed key ring so the authenticated path runs too. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kms/ciphertext.h"
#include "kms/crypto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t key[KMS_KEY_BYTES] = {7};
    static uint8_t out[KMS_CIPHERTEXT_MAX];
    kms_ciphertext c;
    if (kms_ciphertext_decode(data, size, &c) != 0)
        return 0;
    if (c.header_len + KMS_NONCE_BYTES + c.data_len + KMS_TAG_BYTES != size || c.version == 0 || !c.key[0])
        __builtin_trap();
    aead_open(key, c.nonce, c.header, c.header_len, c.data, c.data_len, c.tag, out);
    return 0;
}
