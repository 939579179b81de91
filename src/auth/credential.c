#include "auth/credential.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/fileio.h"

int credential_token_generate(char out[CREDENTIAL_TOKEN_LEN + 1])
{
    uint8_t secret[32];
    int r = random_bytes(secret, sizeof(secret));
    if (r < 0)
        return r;
    memcpy(out, CREDENTIAL_TOKEN_PREFIX, strlen(CREDENTIAL_TOKEN_PREFIX));
    base64_encode(secret, sizeof(secret), out + strlen(CREDENTIAL_TOKEN_PREFIX), true);
    OPENSSL_cleanse(secret, sizeof(secret));
    return 0;
}

bool credential_token_well_formed(const char *token, size_t len)
{
    if (len != CREDENTIAL_TOKEN_LEN || memcmp(token, CREDENTIAL_TOKEN_PREFIX, strlen(CREDENTIAL_TOKEN_PREFIX)) != 0)
        return false;
    for (size_t i = strlen(CREDENTIAL_TOKEN_PREFIX); i < len; i++) {
        char c = token[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_'))
            return false;
    }
    return true;
}

void credential_token_digest(const char *token, size_t len, char digest_hex[CREDENTIAL_DIGEST_HEX_LEN + 1],
                             char lookup_key[CREDENTIAL_LOOKUP_KEY_LEN + 1])
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)token, len, d);
    hex_encode(d, sizeof(d), digest_hex);
    memcpy(lookup_key, "clst:", 5);
    memcpy(lookup_key + 5, digest_hex, 24);
    lookup_key[CREDENTIAL_LOOKUP_KEY_LEN] = 0;
}

bool credential_digest_equal(const char *a, const char *b)
{
    if (strlen(a) != CREDENTIAL_DIGEST_HEX_LEN || strlen(b) != CREDENTIAL_DIGEST_HEX_LEN)
        return false;
    return memeq_consttime(a, b, CREDENTIAL_DIGEST_HEX_LEN);
}
