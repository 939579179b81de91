#include "kms/seal.h"

#include <argon2.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"

#define ARGON2_T 3
#define ARGON2_M_KIB (64 * 1024)
#define ARGON2_P 1
#define SALT_BYTES 16
#define ROOT_FILE_MAX 4096

static const char *const modes[] = {"dev", "passphrase", "pkcs11"};

bool kms_seal_mode_valid(const char *mode)
{
    for (size_t i = 0; i < ELEMENTSOF(modes); i++)
        if (mode && strcmp(mode, modes[i]) == 0)
            return true;
    return false;
}

static int seal_fail(kms_err *err, int e, const char *msg)
{
    if (err)
        snprintf(err->message, sizeof(err->message), "%s", msg);
    return e;
}

/* The AAD binding a sealed root key to its mode. */
static size_t root_aad(const char *mode, uint8_t *out)
{
    return (size_t)snprintf((char *)out, 64, "cloister-kms root v1|%s", mode);
}

/* Reads and checks ROOT_FILE into a new JSON reference. */
static int root_load(const char *root_file, json_t **ret)
{
    char *text = NULL;
    size_t len;
    int r = read_file(root_file, ROOT_FILE_MAX, &text, &len);
    if (r < 0)
        return r;
    json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    free(text);
    if (!json_is_object(doc) || json_integer_value(json_object_get(doc, "format")) != 1 ||
        !kms_seal_mode_valid(json_string_value(json_object_get(doc, "mode"))) ||
        !json_is_string(json_object_get(doc, "nonce")) || !json_is_string(json_object_get(doc, "wrapped"))) {
        json_decref(doc);
        return -EINVAL;
    }
    *ret = doc;
    return 0;
}

int kms_root_mode(const char *root_file, char *ret_mode)
{
    json_t *doc;
    int r = root_load(root_file, &doc);
    if (r < 0)
        return r;
    snprintf(ret_mode, 16, "%s", json_string_value(json_object_get(doc, "mode")));
    json_decref(doc);
    return 0;
}

/* Derives the passphrase wrapping key into OUT (32 bytes). */
static int passphrase_key(const char *secret, size_t len, const uint8_t *salt, uint32_t t, uint32_t m, uint32_t p,
                          uint8_t *out)
{
    return argon2id_hash_raw(t, m, p, secret, len, salt, SALT_BYTES, out, KMS_KEY_BYTES) == ARGON2_OK ? 0 : -EIO;
}

/* The dev-mode wrapping key from its file, created when CREATE. */
static int dev_key(const char *path, bool create, uint8_t *out, kms_err *err)
{
    char *text = NULL;
    size_t len;
    int r = read_file(path, 256, &text, &len);
    if (r == -ENOENT && create) {
        uint8_t k[KMS_KEY_BYTES];
        char hex[2 * KMS_KEY_BYTES + 2];
        if ((r = random_bytes(k, sizeof(k))) < 0)
            return seal_fail(err, r, "no randomness");
        hex_encode(k, sizeof(k), hex);
        strcat(hex, "\n");
        r = write_file_atomic(path, hex, strlen(hex), 0600);
        memcpy(out, k, KMS_KEY_BYTES);
        OPENSSL_cleanse(k, sizeof(k));
        OPENSSL_cleanse(hex, sizeof(hex));
        return r < 0 ? seal_fail(err, r, "cannot write the dev auto-unseal file") : 0;
    }
    if (r < 0)
        return seal_fail(err, r == -ENOENT ? -ENOKEY : r, "cannot read the dev auto-unseal file");
    r = len >= 2 * KMS_KEY_BYTES ? hex_decode(text, 2 * KMS_KEY_BYTES, out, KMS_KEY_BYTES) : -EINVAL;
    OPENSSL_cleanse(text, len);
    free(text);
    return r < 0 ? seal_fail(err, -EINVAL, "the dev auto-unseal file is damaged") : 0;
}

/* Wraps or unwraps 32 bytes with the mode's wrapping key. IO is the sealed
 * form (32 + 16 bytes: data and tag), ROOT the clear key. */
static int root_crypt(const kms_seal_config *cfg, bool seal, const char *secret, size_t secret_len, json_t *kdf,
                      const uint8_t *nonce, uint8_t *io, uint8_t *root, kms_err *err)
{
    uint8_t aad[64];
    size_t aad_len = root_aad(cfg->mode, aad);
    if (strcmp(cfg->mode, "pkcs11") == 0) {
        int r = seal ? kms_pkcs11_crypt(cfg->pkcs11_module, cfg->pkcs11_slot, secret, secret_len, true, true, nonce,
                                        aad, aad_len, root, KMS_KEY_BYTES, io, err)
                     : kms_pkcs11_crypt(cfg->pkcs11_module, cfg->pkcs11_slot, secret, secret_len, false, false, nonce,
                                        aad, aad_len, io, KMS_KEY_BYTES + KMS_TAG_BYTES, root, err);
        return r;
    }
    uint8_t *wrap = secmem_alloc(KMS_KEY_BYTES);
    if (!wrap)
        return seal_fail(err, -ENOSPC, "out of locked memory");
    int r;
    if (strcmp(cfg->mode, "dev") == 0)
        r = dev_key(cfg->dev_key_file, seal, wrap, err);
    else {
        uint8_t salt[SALT_BYTES];
        json_int_t t = json_integer_value(json_object_get(kdf, "t")), m = json_integer_value(json_object_get(kdf, "m")),
                   p = json_integer_value(json_object_get(kdf, "p"));
        const char *s = json_string_value(json_object_get(kdf, "salt"));
        if (!s || base64_decode(s, strlen(s), salt, sizeof(salt), false) != SALT_BYTES || t < 1 || t > 16 ||
            m < 8 * 1024 || m > 1024 * 1024 || p < 1 || p > 16)
            r = seal_fail(err, -EINVAL, "the sealed root key has bad KDF parameters");
        else if ((r = passphrase_key(secret, secret_len, salt, (uint32_t)t, (uint32_t)m, (uint32_t)p, wrap)) < 0)
            seal_fail(err, r, "Argon2id failed");
    }
    if (r == 0) {
        if (seal)
            r = aead_seal(wrap, nonce, aad, aad_len, root, KMS_KEY_BYTES, io, io + KMS_KEY_BYTES);
        else {
            r = aead_open(wrap, nonce, aad, aad_len, io, KMS_KEY_BYTES, io + KMS_KEY_BYTES, root);
            if (r == -EBADMSG)
                r = seal_fail(err, strcmp(cfg->mode, "dev") == 0 ? -EBADMSG : -EKEYREJECTED,
                              strcmp(cfg->mode, "dev") == 0 ? "the dev auto-unseal file does not open the root key"
                                                            : "wrong passphrase");
        }
    }
    secmem_free(wrap);
    return r;
}

/* Creates a root key, seals it and writes ROOT_FILE. */
static int root_create(const kms_seal_config *cfg, const char *secret, size_t secret_len, uint8_t *root,
                       kms_err *err)
{
    if (strcmp(cfg->mode, "passphrase") == 0 && secret_len < KMS_PASSPHRASE_MIN)
        return seal_fail(err, -EINVAL, "the passphrase that initialises the KMS needs at least 8 characters");
    uint8_t nonce[KMS_NONCE_BYTES], salt[SALT_BYTES], io[KMS_KEY_BYTES + KMS_TAG_BYTES];
    int r;
    if ((r = random_bytes(root, KMS_KEY_BYTES)) < 0 || (r = random_bytes(nonce, sizeof(nonce))) < 0 ||
        (r = random_bytes(salt, sizeof(salt))) < 0)
        return seal_fail(err, r, "no randomness");
    char salt64[32], nonce64[32], io64[80];
    base64_encode(salt, sizeof(salt), salt64, false);
    base64_encode(nonce, sizeof(nonce), nonce64, false);
    json_t *kdf = strcmp(cfg->mode, "passphrase") == 0
                      ? json_pack("{s:s, s:i, s:i, s:i, s:s}", "algorithm", "argon2id", "t", ARGON2_T, "m",
                                  ARGON2_M_KIB, "p", ARGON2_P, "salt", salt64)
                      : NULL;
    r = root_crypt(cfg, true, secret, secret_len, kdf, nonce, io, root, err);
    if (r == 0) {
        base64_encode(io, sizeof(io), io64, false);
        json_t *doc = json_pack("{s:i, s:s, s:s, s:s}", "format", 1, "mode", cfg->mode, "nonce", nonce64, "wrapped",
                                io64);
        if (kdf)
            json_object_set(doc, "kdf", kdf);
        if (strcmp(cfg->mode, "pkcs11") == 0)
            json_object_set_new(doc, "label", json_string(KMS_PKCS11_LABEL));
        char *text = doc ? json_dumps(doc, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
        json_decref(doc);
        r = text ? write_file_atomic(cfg->root_file, text, strlen(text), 0600) : -ENOMEM;
        free(text);
        if (r < 0)
            seal_fail(err, r, "cannot write the sealed root key");
    }
    json_decref(kdf);
    if (r < 0)
        OPENSSL_cleanse(root, KMS_KEY_BYTES);
    return r;
}

int kms_root_unseal(const kms_seal_config *cfg, const char *secret, size_t secret_len, uint8_t *root,
                    bool *ret_created, kms_err *err)
{
    if (!kms_seal_mode_valid(cfg->mode))
        return seal_fail(err, -EINVAL, "unknown seal mode");
    if (secret_len > KMS_SECRET_MAX)
        return seal_fail(err, -E2BIG, "the passphrase or PIN is too long");
    json_t *doc = NULL;
    int r = root_load(cfg->root_file, &doc);
    if (r == -ENOENT) {
        r = root_create(cfg, secret, secret_len, root, err);
        if (r == 0)
            *ret_created = true;
        return r;
    }
    if (r < 0)
        return seal_fail(err, r, "cannot read the sealed root key");
    const char *mode = json_string_value(json_object_get(doc, "mode"));
    if (strcmp(mode, cfg->mode) != 0) {
        if (err)
            snprintf(err->message, sizeof(err->message), "the root key is sealed with mode %s, not %s; start with --seal %s",
                     mode, cfg->mode, mode);
        json_decref(doc);
        return -EMEDIUMTYPE;
    }
    uint8_t nonce[KMS_NONCE_BYTES], io[KMS_KEY_BYTES + KMS_TAG_BYTES];
    const char *n64 = json_string_value(json_object_get(doc, "nonce")), *w64 = json_string_value(json_object_get(doc, "wrapped"));
    if (base64_decode(n64, strlen(n64), nonce, sizeof(nonce), false) != KMS_NONCE_BYTES ||
        base64_decode(w64, strlen(w64), io, sizeof(io), false) != (long)sizeof(io))
        r = seal_fail(err, -EINVAL, "the sealed root key is malformed");
    else
        r = root_crypt(cfg, false, secret, secret_len, json_object_get(doc, "kdf"), nonce, io, root, err);
    json_decref(doc);
    if (r == 0)
        *ret_created = false;
    return r;
}
