#include "api/signing-keys.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/sealed.h"
#include "basic/log.h"
#include "basic/macro.h"

#define SEAL_INFO "cloister token signing keys v1"
#define SEAL_AAD "cloister token signing key|" /* then the kid */
#define SEALED_JWK_MAX 4096                    /* an ES256 private JWK is ~250 bytes */

int api_signing_keys_init(api_signing_keys *k, store *s, const uint8_t handoff_key[HANDOFF_KEY_LEN],
                          const char *legacy_path)
{
    *k = (api_signing_keys){.store = s};
    snprintf(k->legacy_path, sizeof(k->legacy_path), "%s", legacy_path ? legacy_path : "");
    return api_seal_key(handoff_key, SEAL_INFO, k->seal_key);
}

void api_signing_keys_done(api_signing_keys *k)
{
    OPENSSL_cleanse(k->seal_key, sizeof(k->seal_key));
}

/* The additional data binding a sealed key to its KID into AAD (cap bytes);
 * 0, or -EINVAL when the kid does not fit. */
static int seal_aad(const char *kid, char *aad, size_t cap)
{
    int n = snprintf(aad, cap, SEAL_AAD "%s", kid);
    return n < 0 || (size_t)n >= cap ? -EINVAL : 0;
}

/* Seals the private JWK (borrowed) under K's key into *RET (heap). */
static int jwk_seal(const api_signing_keys *k, const json_t *jwk, char **ret)
{
    const char *kid = json_string_value(json_object_get(jwk, "kid"));
    char aad[128];
    int r = kid ? seal_aad(kid, aad, sizeof(aad)) : -EINVAL;
    return r < 0 ? r : api_seal_json(k->seal_key, aad, jwk, SEALED_JWK_MAX, ret);
}

/* Opens SEALED for KID into a private JWK (new reference) in *RET: 0,
 * -EBADMSG when it was not sealed under K's key for that kid (another
 * cluster's handoff key), or a negative errno. */
static int jwk_open(const api_signing_keys *k, const char *kid, const char *sealed, json_t **ret)
{
    char aad[128];
    int r = seal_aad(kid, aad, sizeof(aad));
    json_t *jwk = NULL;
    if (r == 0)
        r = api_open_json(k->seal_key, aad, sealed, SEALED_JWK_MAX, &jwk);
    if (r == 0 && !json_is_object(jwk)) {
        json_decref(jwk);
        r = -EINVAL;
    }
    if (r == 0)
        *ret = jwk;
    return r;
}

/* The keyring's saved form of the document DOC's spec.keys, each key
 * opened (new reference) into *RET. Returns 0 or a negative errno. */
static int keys_open(const api_signing_keys *k, const json_t *doc, json_t **ret)
{
    json_t *sealed_keys = json_object_get(json_object_get(doc, "spec"), "keys");
    if (!json_is_array(sealed_keys) || json_array_size(sealed_keys) > KEYRING_MAX_KEYS)
        return -EINVAL;
    json_t *keys = json_array();
    size_t i;
    json_t *e;
    int r = keys ? 0 : -ENOMEM;
    json_array_foreach(sealed_keys, i, e)
    {
        const char *kid = json_string_value(json_object_get(e, "kid"));
        const char *sealed = json_string_value(json_object_get(e, "sealed"));
        json_t *jwk = NULL;
        r = kid && sealed ? jwk_open(k, kid, sealed, &jwk) : -EINVAL;
        json_t *opened = r == 0 ? json_pack("{s:O, s:O, s:o}", "created", json_object_get(e, "created"), "retired",
                                            json_object_get(e, "retired"), "jwk", jwk)
                                : NULL;
        if (r == 0 && (!opened || json_array_append_new(keys, opened) < 0))
            r = -ENOMEM;
        if (r < 0)
            break;
    }
    if (r < 0) {
        auth_keyring_saved_free(keys);
        return r;
    }
    *ret = keys;
    return 0;
}

/* The document's resourceVersion as a number (0 when it has none). */
static int64_t doc_version(const json_t *doc)
{
    const char *rv = json_string_value(json_object_get(json_object_get(doc, "metadata"), "resourceVersion"));
    return rv ? strtoll(rv, NULL, 10) : 0;
}

/* Reads the keys of an earlier release's key file into the store's
 * document (once, when the store has none). Returns 0, -ENOENT when there
 * is no such file, or a negative errno. */
static int legacy_import(api_signing_keys *k, json_t **ret_keys, int64_t *ret_version);

static int signing_keys_load(void *userdata, int64_t known, json_t **ret_keys, int64_t *ret_version)
{
    api_signing_keys *k = userdata;
    json_auto_t *doc = NULL;
    int r = store_get(k->store, SIGNING_KEYS_KIND, SIGNING_KEYS_NAME, &doc);
    if (r == -ENOENT && k->legacy_path[0])
        return legacy_import(k, ret_keys, ret_version);
    if (r < 0)
        return r;
    if (known && doc_version(doc) == known) {
        *ret_keys = NULL;
        *ret_version = known;
        return 0;
    }
    json_t *keys;
    r = keys_open(k, doc, &keys);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR,
                   "cannot open the token signing keys in the store: this api replica's auth/handoff.key differs "
                   "from the one that sealed them (every replica needs the same file)",
                   "error", strerror(-r), NULL);
        return r;
    }
    *ret_keys = keys;
    *ret_version = doc_version(doc);
    return 0;
}

static int signing_keys_save(void *userdata, const json_t *keys, int64_t expected, int64_t *ret_version)
{
    api_signing_keys *k = userdata;
    json_auto_t *sealed_keys = json_array();
    if (!sealed_keys)
        return -ENOMEM;
    size_t i;
    json_t *e;
    int r = 0;
    json_array_foreach(keys, i, e)
    {
        json_t *jwk = json_object_get(e, "jwk");
        char *sealed = NULL;
        r = jwk_seal(k, jwk, &sealed);
        json_t *entry = r == 0 ? json_pack("{s:O, s:O, s:O, s:s}", "created", json_object_get(e, "created"),
                                           "retired", json_object_get(e, "retired"), "kid",
                                           json_object_get(jwk, "kid"), "sealed", sealed)
                               : NULL;
        free(sealed);
        if (r == 0 && (!entry || json_array_append_new(sealed_keys, entry) < 0))
            r = -ENOMEM;
        if (r < 0)
            return r;
    }
    json_auto_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:O}}", "apiVersion", "cloister.dev/v1", "kind",
                                 SIGNING_KEYS_KIND, "metadata", "name", SIGNING_KEYS_NAME, "spec", "keys", sealed_keys);
    if (!doc)
        return -ENOMEM;
    store_op op = {.type = expected ? STORE_REPLACE : STORE_CREATE, .kind = SIGNING_KEYS_KIND,
                   .name = SIGNING_KEYS_NAME, .doc = doc, .expected_rv = expected};
    store_txn txn = {.ops = &op, .n_ops = 1};
    r = store_write(k->store, &txn);
    int64_t version = r == 0 ? doc_version(op.result) : 0;
    store_txn_clear(&txn);
    if (r == -EEXIST || r == -ENOENT)
        r = -ESTALE; /* another replica made or replaced the document first */
    if (r == 0)
        *ret_version = version;
    return r;
}

static int legacy_import(api_signing_keys *k, json_t **ret_keys, int64_t *ret_version)
{
    json_t *keys = NULL;
    int r = auth_keyring_file_read(k->legacy_path, &keys);
    if (r < 0)
        return r;
    int64_t version = 0;
    r = json_is_array(keys) ? signing_keys_save(k, keys, 0, &version) : -EINVAL;
    if (r < 0) {
        auth_keyring_saved_free(keys);
        if (r != -ESTALE)
            return r;
        k->legacy_path[0] = 0; /* another replica imported or made keys first: theirs */
        return signing_keys_load(k, 0, ret_keys, ret_version);
    }
    log_fields(LOG_LEVEL_INFO, "moved the token signing keys into the store; the old file can be deleted", "path",
               k->legacy_path, NULL);
    k->legacy_path[0] = 0;
    *ret_keys = keys;
    *ret_version = version;
    return 0;
}

auth_keyring_backing api_signing_keys_backing(api_signing_keys *k)
{
    return (auth_keyring_backing){.load = signing_keys_load, .save = signing_keys_save, .userdata = k, .shared = true};
}
